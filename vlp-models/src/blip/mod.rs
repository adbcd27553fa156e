//! BLIP — "BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language
//! Understanding and Generation" (Li, Li, Xiong, Hoi; ICML 2022).
//!
//! Official code: <https://github.com/salesforce/BLIP> (ported from commit `056a169`; no code
//! copied, the architecture and the numerics were reproduced and checked against the parity
//! fixtures of `tests/fixtures/blip/`). Documentation: `docs/models/blip.md`.
//!
//! Classes mirrored (parameter paths = official state-dict keys):
//!
//! | variant | official class | Rust type |
//! |---|---|---|
//! | `pretrain` | `models/blip_pretrain.py:BLIP_Pretrain` | [`pretrain::BlipPretrain`] |
//! | `retrieval` | `models/blip_retrieval.py:BLIP_Retrieval` + `train_retrieval.py:evaluation` (+ the `BLIP_ITM` heads) | [`retrieval::BlipRetrieval`] |
//! | `itm` | `models/blip_itm.py:BLIP_ITM` | [`retrieval::BlipItm`] |
//! | `captioning` | `models/blip.py:BLIP_Decoder` (forward + beam-search `generate`) | [`caption::BlipDecoder`] |
//! | `vqa` | `models/blip_vqa.py:BLIP_VQA` (train loss, `rank_answer`, generate) | [`vqa::BlipVqa`] |
//! | `nlvr2` | `models/blip_nlvr.py:BLIP_NLVR` + `models/nlvr_encoder.py` | [`nlvr::BlipNlvr`] |
//! | `hf_retrieval` | HF `BlipForImageTextRetrieval` (`Salesforce/blip-itm-*`) | [`hf::HfBlipRetrieval`] |
//! | `hf_captioning` | HF `BlipForConditionalGeneration` (`Salesforce/blip-image-captioning-*`) | [`hf::HfBlipCaptioning`] |
//!
//! Building blocks: the ViT of `models/vit.py` ([`VisionTransformer`](vlp_core::layers::vit::VisionTransformer)), the MED text transformer
//! of `models/med.py` ([`MedBert`]: BERT without token-type embeddings, cross-attention in every
//! layer, used in `mode='text'` (no cross-attention, `[CLS]`), as the image-grounded encoder
//! (`[ENC]` at position 0) and as the causal decoder (`[DEC]` at position 0)), `BertLMHeadModel`
//! ([`MedLm`], LM head tied to the word embeddings).
//!
//! Checkpoints loaded (strictly, after [`crate::VlpModel::adapt_state_dict`]): `model_base.pth`,
//! `model_base_14M.pth`, `model_base_capfilt_large.pth`, `model_large.pth` (pretraining);
//! `model_{base,large}_retrieval_{coco,flickr}.pth`; `model_base_caption_capfilt_large.pth`,
//! `model_large_caption.pth`; `model_base_vqa_capfilt_large.pth`, `model_vqa.pth`;
//! `model_base_nlvr.pth` (all `{'model': state_dict}`), plus a pretraining checkpoint loaded into
//! a fine-tuning class with the renames/drops of the official loaders (`load_checkpoint`:
//! `pos_embed` interpolation, keys the class lacks dropped, NLVR2's key duplication).
//!
//! Tied tensors: every `cls.predictions.decoder.{weight,bias}` is the word-embedding matrix /
//! `cls.predictions.bias`; the pretraining decoder shares everything with the encoder except its
//! self-attention (`tie_encoder_decoder_weights(..., '/attention')`). The official state dicts list
//! every name; here the second name of each tie is a `VarStore` entry holding the *same tensor*
//! (registered non-trainable, so an optimiser and the momentum update see it once), and
//! `adapt_state_dict` checks that the checkpoint's copies are equal (or fills an omitted copy).
use crate::albef::{causal_text_mask, text_mask, MlmHead};
use crate::Tensors;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};
use vlp_core::attention::{
    padding_mask, AttentionConfig, MultiHeadAttention, QkvLayout, BERT_MASK_VALUE,
};
use vlp_core::layers::bert::{BertConfig, BertEmbeddings, BertEncoder, CrossInput};
use vlp_core::layers::vit::VitConfig;
use vlp_core::layers::{layer_norm, linear_std, Activation};
use vlp_core::{Result, VlpError};

pub mod caption;
pub mod hf;
pub mod nlvr;
pub mod pretrain;
pub mod retrieval;
pub mod vqa;

pub use caption::BlipDecoder;
pub use nlvr::BlipNlvr;
pub use pretrain::BlipPretrain;
pub use retrieval::{BlipItm, BlipRetrieval};
pub use vqa::BlipVqa;

/// The registry's variant names.
pub const VARIANTS: &[&str] = &[
    "pretrain",
    "retrieval",
    "itm",
    "captioning",
    "vqa",
    "nlvr2",
    "hf_retrieval",
    "hf_captioning",
];

/// The vocabulary of `med_config.json`: bert-base-uncased (30522) + `[DEC]` + `[ENC]`.
pub const MED_VOCAB_SIZE: i64 = 30524;

/// BLIP's configuration: the `med_config.json` / `bert_config.json` contents under `med`, the ViT
/// constructor arguments under `vision` (the official `create_vit` hard-codes ViT-B/16 or
/// ViT-L/16; `None` = the preset named by `vit` at `image_size`), and the training YAML keys the
/// classes read. Unknown keys are an error; YAML keys only the training scripts read are accepted
/// and ignored. `Default` = BLIP base (`med_config.json`, ViT-B/16, `embed_dim` 256, queue 57600,
/// momentum 0.995, alpha 0.4, prompt `'a picture of '`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlipConfig {
    /// The MED config (`configs/med_config.json`; pretraining: `configs/bert_config.json`).
    pub med: BertConfig,
    /// ViT constructor arguments; `None` = the `vit` preset at `image_size`.
    pub vision: Option<VitConfig>,
    /// Input resolution (`image_size`); `None` = the class default (pretrain 224, retrieval and
    /// captioning 384, VQA and NLVR2 480).
    pub image_size: Option<i64>,
    /// `base` (ViT-B/16) or `large` (ViT-L/16).
    pub vit: String,
    /// ITC embedding width (`embed_dim`).
    pub embed_dim: i64,
    /// ITC queue length (`queue_size`).
    pub queue_size: i64,
    /// EMA momentum of the momentum encoders (`momentum`).
    pub momentum: f64,
    /// Distillation weight (`alpha`), used when a call does not pass one.
    pub alpha: f64,
    /// Retrieval: draw ITM negatives from all ranks (`negative_all_rank`; single process here).
    pub negative_all_rank: bool,
    /// Retrieval / VQA evaluation top-k (`k_test`).
    pub k_test: Option<i64>,
    /// Captioning prompt (`prompt`).
    pub prompt: String,
    /// Generation: beams (`num_beams`).
    pub num_beams: i64,
    /// Generation: maximum length in tokens, prompt included (`max_length`).
    pub max_length: i64,
    /// Generation: minimum length in tokens, prompt included (`min_length`).
    pub min_length: i64,
    /// Generation: repetition penalty of beam search (`repetition_penalty`; sampling uses 1.1).
    pub repetition_penalty: f64,
    /// Nucleus-sampling `top_p`.
    pub top_p: f64,
    /// Label smoothing of every LM loss (`med.py` hard-codes 0.1; HF's `text_config` defaults to
    /// 0.0).
    pub label_smoothing: f64,
    /// VQA inference mode (`rank` or `generate`).
    pub inference: Option<String>,
    /// `len(tokenizer)` when it is not the default (pretraining resizes the text embeddings to
    /// it; `None` = `med.vocab_size` for the fine-tuning classes, `med.vocab_size + 2` for
    /// pretraining with a `bert_config.json`-style vocabulary).
    pub tokenizer_len: Option<i64>,
    /// Special-token ids; `None` = derived from the tokenizer length ([`BlipTokens::for_vocab`]).
    pub special_tokens: Option<BlipTokens>,
    /// Image size the checkpoint was made at (metadata: `pos_embed` is interpolated from the
    /// checkpoint's own shape).
    pub checkpoint_image_size: Option<i64>,
    /// Ignored (fixture note).
    pub med_note: Option<serde_json::Value>,
    /// Ignored (training script).
    pub vit_grad_ckpt: Option<serde_json::Value>,
    /// Ignored (training script).
    pub vit_ckpt_layer: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size_train: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size_test: Option<serde_json::Value>,
    /// Ignored (training script).
    pub init_lr: Option<serde_json::Value>,
    /// Ignored (training script).
    pub min_lr: Option<serde_json::Value>,
    /// Ignored (training script).
    pub warmup_lr: Option<serde_json::Value>,
    /// Ignored (training script).
    pub lr_decay_rate: Option<serde_json::Value>,
    /// Ignored (training script).
    pub weight_decay: Option<serde_json::Value>,
    /// Ignored (training script).
    pub max_epoch: Option<serde_json::Value>,
    /// Ignored (training script).
    pub warmup_steps: Option<serde_json::Value>,
    /// Ignored (training data).
    pub train_file: Option<serde_json::Value>,
    /// Ignored (training data).
    pub train_files: Option<serde_json::Value>,
    /// Ignored (training data).
    pub laion_path: Option<serde_json::Value>,
    /// Ignored (training data).
    pub image_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub ann_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub dataset: Option<serde_json::Value>,
    /// Ignored (training data).
    pub coco_gt_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub vqa_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub vg_root: Option<serde_json::Value>,
    /// Ignored (the checkpoint to start from).
    pub pretrained: Option<serde_json::Value>,
}

impl Default for BlipConfig {
    fn default() -> Self {
        BlipConfig {
            med: BertConfig {
                vocab_size: MED_VOCAB_SIZE,
                encoder_width: Some(768),
                add_cross_attention: true,
                ..BertConfig::default()
            },
            vision: None,
            image_size: None,
            vit: "base".into(),
            embed_dim: 256,
            queue_size: 57600,
            momentum: 0.995,
            alpha: 0.4,
            negative_all_rank: false,
            k_test: None,
            prompt: "a picture of ".into(),
            num_beams: 3,
            max_length: 20,
            min_length: 5,
            repetition_penalty: 1.0,
            top_p: 0.9,
            label_smoothing: LM_LABEL_SMOOTHING,
            inference: None,
            tokenizer_len: None,
            special_tokens: None,
            checkpoint_image_size: None,
            med_note: None,
            vit_grad_ckpt: None,
            vit_ckpt_layer: None,
            batch_size: None,
            batch_size_train: None,
            batch_size_test: None,
            init_lr: None,
            min_lr: None,
            warmup_lr: None,
            lr_decay_rate: None,
            weight_decay: None,
            max_epoch: None,
            warmup_steps: None,
            train_file: None,
            train_files: None,
            laion_path: None,
            image_root: None,
            ann_root: None,
            dataset: None,
            coco_gt_root: None,
            vqa_root: None,
            vg_root: None,
            pretrained: None,
        }
    }
}

impl BlipConfig {
    /// Parses a JSON value (a fixture `config.json`); errors name the offending field.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let cfg: BlipConfig = vlp_core::config::from_str_json(&v.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what the port relies on; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(VlpError::Msg(format!("blip config field `{f}`: {m}")));
        self.med.validate()?;
        if self.vision.is_none() && self.vit != "base" && self.vit != "large" {
            return bad(
                "vit",
                format!("`{}` is neither `base` nor `large`", self.vit),
            );
        }
        if self.med.fusion_layer.is_some() {
            return bad(
                "med.fusion_layer",
                "BLIP's MED has cross-attention in every layer".into(),
            );
        }
        if self.queue_size < 1 {
            return bad("queue_size", format!("{} < 1", self.queue_size));
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(
                "label_smoothing",
                format!("{} outside [0, 1]", self.label_smoothing),
            );
        }
        if let Some(t) = &self.special_tokens {
            let v = self.text_vocab(false);
            for (n, id) in [
                ("pad", t.pad),
                ("cls", t.cls),
                ("sep", t.sep),
                ("bos", t.bos),
                ("enc", t.enc),
            ] {
                if id < 0 || id >= v.max(self.text_vocab(true)) {
                    return bad(
                        &format!("special_tokens.{n}"),
                        format!("{id} outside the vocabulary"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The class default image size of a variant (`BLIP_*.__init__` defaults).
    pub fn default_image_size(variant: &str) -> i64 {
        match variant {
            "pretrain" => 224,
            "vqa" | "nlvr2" => 480,
            _ => 384,
        }
    }

    /// The ViT a variant builds: `vision` if given, else ViT-B/16 (`vit: base`) or ViT-L/16
    /// (`large`, drop-path 0.1 as `create_vit` forces) at `image_size`. `drop_path_rate` is the
    /// class's (`create_vit(..., drop_path_rate)`: 0.1 for VQA/NLVR2's online ViT) unless
    /// `vision.drop_path_rate` is set; `momentum` = the momentum copy (`create_vit(vit, size)`).
    pub fn vit_for(&self, variant: &str, momentum: bool) -> VitConfig {
        let class_dpr = if self.vit == "large" || (!momentum && matches!(variant, "vqa" | "nlvr2"))
        {
            0.1
        } else {
            0.0
        };
        let size = self
            .image_size
            .unwrap_or_else(|| Self::default_image_size(variant));
        match &self.vision {
            Some(v) => {
                let mut v = v.clone();
                if v.drop_path_rate == 0.0 {
                    v.drop_path_rate = class_dpr;
                }
                v
            }
            None if self.vit == "large" => VitConfig {
                img_size: size,
                ..VitConfig::large()
            },
            None => VitConfig {
                img_size: size,
                drop_path_rate: class_dpr,
                ..VitConfig::default()
            },
        }
    }

    /// The width of the image tokens (`vision_width`).
    pub fn vision_width(&self) -> i64 {
        self.vit_for("retrieval", false).embed_dim
    }

    /// The text vocabulary: `tokenizer_len` if set; else pretraining (`resize_token_embeddings(
    /// len(tokenizer))` over a `bert_config.json`) `med.vocab_size + 2` unless it already is the
    /// MED size 30524; else `med.vocab_size`.
    pub fn text_vocab(&self, pretrain: bool) -> i64 {
        match self.tokenizer_len {
            Some(n) => n,
            None if pretrain && self.med.vocab_size != MED_VOCAB_SIZE => self.med.vocab_size + 2,
            None => self.med.vocab_size,
        }
    }

    /// The MED config of a text module: no token-type embeddings, cross-attention in every layer
    /// over states of width `encoder_width` (`None` = the JSON value), vocabulary `vocab`.
    pub fn med_for(&self, encoder_width: Option<i64>, vocab: i64) -> BertConfig {
        let mut c = self.med.clone();
        c.add_type_embeddings = Some(false);
        c.add_cross_attention = true;
        c.vocab_size = vocab;
        if let Some(w) = encoder_width {
            c.encoder_width = Some(w);
        }
        c
    }

    /// The special tokens (`special_tokens`, else derived from the vocabulary size).
    pub fn tokens(&self, pretrain: bool) -> BlipTokens {
        self.special_tokens.unwrap_or_else(|| {
            BlipTokens::for_vocab(self.text_vocab(pretrain), self.med.pad_token_id)
        })
    }
}

/// Ids of BLIP's special tokens (`init_tokenizer`: bert-base-uncased + bos `[DEC]` + additional
/// `[ENC]`, appended after the WordPiece vocabulary). `Default` = bert-base-uncased (`[PAD]` 0,
/// `[CLS]` 101, `[SEP]` 102, `[DEC]` 30522, `[ENC]` 30523).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlipTokens {
    /// `[PAD]`.
    pub pad: i64,
    /// `[CLS]` (ITC text).
    pub cls: i64,
    /// `[SEP]` (end of text, generation EOS).
    pub sep: i64,
    /// `[DEC]` (decoder BOS).
    pub bos: i64,
    /// `[ENC]` (image-grounded encoder).
    pub enc: i64,
}

impl Default for BlipTokens {
    fn default() -> Self {
        BlipTokens::for_vocab(MED_VOCAB_SIZE, 0)
    }
}

impl BlipTokens {
    /// The tokens for a tokenizer of length `len` (`[DEC]` = len-2, `[ENC]` = len-1): bert-base
    /// `[CLS]`/`[SEP]` (101/102) for the 30522-entry vocabulary, else the layout of a minimal
    /// `vocab.txt` (`[PAD] [UNK] [CLS] [SEP] [MASK] ...`: 2/3). Use
    /// [`BlipTokens::from_vocab_file`] for any other vocabulary.
    pub fn for_vocab(len: i64, pad: i64) -> Self {
        let (cls, sep) = if len >= MED_VOCAB_SIZE {
            (101, 102)
        } else {
            (2, 3)
        };
        BlipTokens {
            pad,
            cls,
            sep,
            bos: len - 2,
            enc: len - 1,
        }
    }

    /// Reads `[PAD]`/`[CLS]`/`[SEP]` from a WordPiece `vocab.txt` (id = line number); `[DEC]`
    /// and `[ENC]` are appended after its last entry, as `init_tokenizer` does.
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let find = |tok: &str| {
            lines
                .iter()
                .position(|l| *l == tok)
                .map(|i| i as i64)
                .ok_or_else(|| VlpError::Msg(format!("{}: token {tok} not found", path.display())))
        };
        let n = lines.len() as i64;
        Ok(BlipTokens {
            pad: find("[PAD]")?,
            cls: find("[CLS]")?,
            sep: find("[SEP]")?,
            bos: n,
            enc: n + 1,
        })
    }
}

/// Replaces position 0 of every row of `ids` `[B, L]` with `token` (`[ENC]` / `[DEC]` swaps).
pub fn with_first_token(ids: &Tensor, token: i64) -> Tensor {
    let out = ids.copy();
    let _ = out.narrow(1, 0, 1).fill_(token);
    out
}

/// LM targets: `ids` with `pad` → -100.
pub fn lm_targets(ids: &Tensor, pad: i64) -> Tensor {
    ids.masked_fill(&ids.eq(pad), -100)
}

/// An additive cross-attention mask `[B, 1, 1, Lk]` from a keep-mask `[B, Lk]` (HF's
/// `invert_attention_mask` uses `finfo.min`; -10000 gives the same softmax in fp32 and stays
/// finite in half precision).
pub fn cross_mask(keep: &Tensor, kind: Kind) -> Tensor {
    padding_mask(keep, BERT_MASK_VALUE, kind)
}

/// The `med.py` `BertModel` (without pooler): `embeddings.{word_embeddings, position_embeddings,
/// LayerNorm, position_ids}` (no token type) and `encoder.layer.N` with self-attention,
/// cross-attention (all layers) and FFN. Modes: [`MedBert::text`] (`mode='text'`, cross-attention
/// skipped), [`MedBert::multimodal`] (the default mode, bidirectional) and [`MedBert::decode`]
/// (`is_decoder=True`: causal self-attention).
#[derive(Debug)]
pub struct MedBert {
    /// `embeddings.*`.
    pub embeddings: BertEmbeddings,
    /// `encoder.layer.N.*`.
    pub encoder: BertEncoder,
    /// The configuration (`add_type_embeddings` false).
    pub cfg: BertConfig,
}

impl MedBert {
    /// Builds the model under `p` (`text_encoder`, `text_decoder.bert`) from a config made by
    /// [`BlipConfig::med_for`].
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(MedBert {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg, true),
            encoder: BertEncoder::new(&(p / "encoder"), cfg),
            cfg: cfg.clone(),
        })
    }

    /// Embeds `ids` `[B, L]` at positions `past..past+L`.
    pub fn embed(&self, ids: &Tensor, past: i64, train: bool) -> Tensor {
        self.embeddings.forward_t(ids, None, past, train)
    }

    /// `mode='text'`: all layers without cross-attention; `mask` `[B, L]` 1 = token.
    pub fn text(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let x = self.embed(ids, 0, train);
        let m = text_mask(mask, x.kind());
        self.encoder.forward_t(&x, Some(&m), None, train)
    }

    /// `mode='multimodal'`: bidirectional self-attention and cross-attention to `states`
    /// `[B, Lk, encoder_width]` (`states_mask` `[B, Lk]`, `None` = all attended, as for images).
    pub fn multimodal(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        states: &Tensor,
        states_mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.multimodal_over(ids, mask, states, states_mask, None, train)
    }

    /// [`multimodal`](Self::multimodal) over images shared between texts: text `b` attends to
    /// `states[rows[b]]` (all of it), each image's keys/values projected once.
    pub fn multimodal_rows(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        states: &Tensor,
        rows: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.multimodal_over(ids, mask, states, None, rows, train)
    }

    fn multimodal_over(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        states: &Tensor,
        states_mask: Option<&Tensor>,
        rows: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let x = self.embed(ids, 0, train);
        let m = text_mask(mask, x.kind());
        let cm = states_mask.map(|k| cross_mask(k, x.kind()));
        let cross = CrossInput {
            states,
            mask: cm.as_ref(),
            rows,
        };
        self.encoder.forward_t(&x, Some(&m), Some(cross), train)
    }

    /// `is_decoder=True`: causal self-attention (combined with the padding `mask`) and
    /// cross-attention to `states`.
    pub fn decode(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        states: &Tensor,
        states_mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let x = self.embed(ids, 0, train);
        let m = causal_text_mask(mask, x.kind());
        let cm = states_mask.map(|k| cross_mask(k, x.kind()));
        let cross = CrossInput {
            states,
            mask: cm.as_ref(),
            rows: None,
        };
        self.encoder.forward_t(&x, Some(&m), Some(cross), train)
    }
}

/// `med.py` `BertLMHeadModel`: `bert.*` ([`MedBert`]) + `cls.predictions.*` (decoder tied to
/// the word embeddings). Loss: shifted cross-entropy with label smoothing 0.1
/// ([`vlp_objectives::lm`]).
#[derive(Debug)]
pub struct MedLm {
    /// `bert.*`.
    pub bert: MedBert,
    /// `cls.*`.
    pub cls: MlmHead,
}

/// BLIP's LM label smoothing (`CrossEntropyLoss(label_smoothing=0.1)` in `med.py`).
pub const LM_LABEL_SMOOTHING: f64 = 0.1;

impl MedLm {
    /// Builds `bert` and `cls` under `p` (`text_decoder`).
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        let bert = MedBert::new(&(p / "bert"), cfg)?;
        let cls = MlmHead::new(&(p / "cls"), cfg, &bert.embeddings.word_embeddings.ws);
        Ok(MedLm { bert, cls })
    }

    /// Decoder logits `[B, L, V]` of `ids` (causal, padding `mask`) cross-attending to `states`.
    pub fn logits(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        states: &Tensor,
        states_mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.cls
            .forward(&self.bert.decode(ids, mask, states, states_mask, train))
    }
}

/// A BERT attention block built from public pieces: `LayerNorm(x + dense(MHA(x[, ctx])))` with
/// the `self.{query,key,value}` / `output.{dense,LayerNorm}` names (the pretraining decoder's own
/// self-attention, NLVR2's twin cross-attention branches).
#[derive(Debug)]
pub struct AttnBlock {
    /// `self.*` (or `self0`/`self1`).
    pub attn: MultiHeadAttention,
    dense: nn::Linear,
    norm: nn::LayerNorm,
    dropout: f64,
}

impl AttnBlock {
    /// Builds `p/self` and `p/output/{dense,LayerNorm}` (`kv_dim`: cross-attention width).
    pub fn new(p: &nn::Path, cfg: &BertConfig, kv_dim: Option<i64>) -> Self {
        let d = cfg.hidden_size;
        AttnBlock {
            attn: mha(&(p / "self"), cfg, kv_dim),
            dense: linear_std(p / "output" / "dense", d, d, cfg.initializer_range),
            norm: layer_norm(p / "output" / "LayerNorm", d, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// Applies the block (cross-attention when `context` is given).
    pub fn forward_t(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let h = self.attn.forward_t(x, context, mask, train);
        (h.apply(&self.dense).dropout(self.dropout, train) + x).apply(&self.norm)
    }
}

/// BERT attention heads with `query`/`key`/`value` names under `p` (`kv_dim`: cross width).
pub(crate) fn mha(p: &nn::Path, cfg: &BertConfig, kv_dim: Option<i64>) -> MultiHeadAttention {
    let mut ac = AttentionConfig::new(cfg.hidden_size, cfg.num_attention_heads, QkvLayout::bert());
    ac.kv_dim = kv_dim;
    ac.attn_dropout = cfg.attention_probs_dropout_prob;
    ac.init_std = cfg.initializer_range;
    MultiHeadAttention::new(p, &ac)
}

/// BERT's feed-forward block `LayerNorm(h + output.dense(act(intermediate.dense(h))))`, either
/// with its own variables or over existing tensors (the pretraining decoder's tied FFN).
#[derive(Debug)]
pub struct Ffn {
    intermediate: nn::Linear,
    output: nn::Linear,
    norm_weight: Tensor,
    norm_bias: Tensor,
    eps: f64,
    act: Activation,
    dropout: f64,
}

impl Ffn {
    /// Builds `p/intermediate/dense` and `p/output/{dense,LayerNorm}` (`p` = the layer).
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = layer_norm(p / "output" / "LayerNorm", d, cfg.layer_norm_eps);
        Ffn {
            intermediate: linear_std(p / "intermediate" / "dense", d, i, cfg.initializer_range),
            output: linear_std(p / "output" / "dense", i, d, cfg.initializer_range),
            norm_weight: norm.ws.expect("affine LayerNorm"),
            norm_bias: norm.bs.expect("affine LayerNorm"),
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// The FFN whose tensors are the variables `{layer}.intermediate.dense.*`,
    /// `{layer}.output.dense.*`, `{layer}.output.LayerNorm.*` of `vars` (same tensors, so
    /// gradients and loads reach them).
    pub fn from_vars(
        vars: &std::collections::HashMap<String, Tensor>,
        layer: &str,
        cfg: &BertConfig,
    ) -> Result<Self> {
        let get = |k: &str| {
            let key = format!("{layer}.{k}");
            vars.get(&key)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| VlpError::Msg(format!("tied FFN: variable `{key}` not found")))
        };
        Ok(Ffn {
            intermediate: nn::Linear {
                ws: get("intermediate.dense.weight")?,
                bs: Some(get("intermediate.dense.bias")?),
            },
            output: nn::Linear {
                ws: get("output.dense.weight")?,
                bs: Some(get("output.dense.bias")?),
            },
            norm_weight: get("output.LayerNorm.weight")?,
            norm_bias: get("output.LayerNorm.bias")?,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Applies the block.
    pub fn forward_t(&self, h: &Tensor, train: bool) -> Tensor {
        let y = self
            .act
            .apply(&h.apply(&self.intermediate))
            .apply(&self.output)
            .dropout(self.dropout, train)
            + h;
        let d = *y.size().last().expect("non-scalar");
        y.layer_norm(
            [d],
            Some(&self.norm_weight),
            Some(&self.norm_bias),
            self.eps,
            false,
        )
    }
}

/// Registers `tensor` in the `VarStore` of `root` under the dotted `key`, non-trainable (the
/// second name of a tied pair); returns the same tensor.
pub(crate) fn register_alias(root: &nn::Path, key: &str, tensor: &Tensor) -> Tensor {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let p = parts.iter().fold(root.clone(), |acc, c| acc.sub(*c));
    p.add(last, tensor.shallow_clone(), false)
}

/// Fetches an optional named input on `device`.
pub(crate) fn opt_input(inputs: &Tensors, name: &str, device: Device) -> Option<Tensor> {
    inputs.get(name).map(|t| t.to_device(device))
}

/// Builds one BLIP variant (the registry's builder).
pub fn build(
    variant: &str,
    config: &serde_json::Value,
    device: Device,
) -> Result<Box<dyn crate::VlpModel>> {
    match variant {
        "hf_retrieval" => {
            return Ok(Box::new(hf::HfBlipRetrieval::from_hf_config(
                config, device,
            )?))
        }
        "hf_captioning" => {
            return Ok(Box::new(hf::HfBlipCaptioning::from_hf_config(
                config, device,
            )?))
        }
        _ => {}
    }
    let cfg = BlipConfig::from_json(config)?;
    Ok(match variant {
        "pretrain" => Box::new(BlipPretrain::new(&cfg, device)?),
        "retrieval" => Box::new(BlipRetrieval::new(&cfg, device)?),
        "itm" => Box::new(BlipItm::new(&cfg, device)?),
        "captioning" => Box::new(BlipDecoder::new(&cfg, device)?),
        "vqa" => Box::new(BlipVqa::new(&cfg, device)?),
        "nlvr2" => Box::new(BlipNlvr::new(&cfg, device)?),
        other => {
            return Err(VlpError::Unsupported {
                what: format!(
                    "variant `{other}` of `blip` (available: {})",
                    VARIANTS.join(", ")
                ),
            })
        }
    })
}
