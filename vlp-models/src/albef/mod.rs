//! ALBEF — "Align before Fuse: Vision and Language Representation Learning with Momentum
//! Distillation" (Li, Selvaraju, Gotmare, Joty, Xiong, Hoi; NeurIPS 2021).
//!
//! Official code: <https://github.com/salesforce/ALBEF> (ported from commit `b9727e4`; no code
//! copied, the architecture and the numerics were reproduced and checked against the parity
//! fixtures of `tests/fixtures/albef/`). Documentation: `docs/models/albef.md`.
//!
//! Classes mirrored (one Rust type per official class, parameter paths = official state-dict keys):
//!
//! | variant | official class | Rust type |
//! |---|---|---|
//! | `pretrain` | `models/model_pretrain.py:ALBEF` | [`pretrain::AlbefPretrain`] |
//! | `retrieval` | `models/model_retrieval.py:ALBEF` + `Retrieval.py:evaluation` | [`retrieval::AlbefRetrieval`] |
//! | `vqa` | `models/model_vqa.py:ALBEF` (incl. `rank_answer`) | [`vqa::AlbefVqa`] |
//! | `nlvr2` | `models/model_nlvr.py:ALBEF` | [`nlvr::AlbefNlvr`] |
//! | `pretrain_nlvr` | `models/model_pretrain_nlvr.py:ALBEF` (NLVR2 text assignment) | [`nlvr_pretrain::AlbefNlvrPretrain`] |
//! | `ve` | `models/model_ve.py:ALBEF` | [`ve::AlbefVe`] |
//! | (`vqa_cls`, vlp-rs addition, not in the registry) | none: ViLT/VLMo-style classifier head on ALBEF's encoders | [`vqa_cls::AlbefVqaClassifier`] |
//!
//! Building blocks: the timm-0.4 ViT of `models/vit.py` ([`VisionTransformer`](vlp_core::layers::vit::VisionTransformer)), the xbert BERT
//! with `text`/`fusion`/`multi_modal` modes ([`AlbefBert`]), xbert's `BertOnlyMLMHead`
//! ([`MlmHead`], decoder tied to the word embeddings) and the fine-tuning `cls_head`
//! ([`ClsHead`]).
//!
//! Checkpoints loaded (strictly, after [`crate::VlpModel::adapt_state_dict`]):
//! - pretraining: `ALBEF.pth` (14M), `ALBEF_4M.pth` (`{'model': state_dict}`);
//! - fine-tuned: `mscoco.pth` / `flickr30k.pth` (retrieval), `vqa.pth`, NLVR2 and SNLI-VE
//!   checkpoints saved by the official fine-tuning scripts;
//! - the pretraining layout (`text_encoder.bert.*`) into a fine-tuned model, with the renames of
//!   the official fine-tuning loaders (see each variant's `adapt_state_dict`).
//!
//! Tied tensors: the MLM/LM head's `cls.predictions.decoder.weight` is the word-embedding matrix
//! and `cls.predictions.decoder.bias` is `cls.predictions.bias`; NLVR2 ties the cross-attention
//! key/value of layers (6,7), (8,9), …, (16,17). The official state dicts list every name; here the
//! second name of each tie is a `VarStore` entry sharing the first one's tensor (so strict loading
//! and per-key probes work), and the momentum update visits each tensor once.
use crate::Tensors;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::attention::{padding_mask, BERT_MASK_VALUE};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::{BertConfig, BertEmbeddings, BertEncoder, BertLayer, CrossInput};
use vlp_core::layers::vit::{interpolate_pos_embed, VitConfig};
use vlp_core::layers::{layer_norm, linear_std, linear_torch, Activation};
use vlp_core::{Result, VlpError};

pub mod nlvr;
pub mod nlvr_pretrain;
pub mod pretrain;
pub mod retrieval;
pub mod ve;
pub mod vqa;
pub mod vqa_cls;

pub use nlvr::AlbefNlvr;
pub use nlvr_pretrain::AlbefNlvrPretrain;
pub use pretrain::AlbefPretrain;
pub use retrieval::AlbefRetrieval;
pub use ve::AlbefVe;
pub use vqa::AlbefVqa;
pub use vqa_cls::AlbefVqaClassifier;

/// The registry's variant names.
pub const VARIANTS: &[&str] = &[
    "pretrain",
    "retrieval",
    "vqa",
    "nlvr2",
    "pretrain_nlvr",
    "ve",
];

/// The momentum of the fine-tuning classes (`model_vqa.py`, `model_nlvr.py`, `model_ve.py`
/// hard-code `self.momentum = 0.995`; only pretraining and retrieval read `config['momentum']`).
pub const FINETUNE_MOMENTUM: f64 = 0.995;

/// ALBEF's configuration: the official `config_bert.json` under `bert`, the ViT constructor
/// arguments under `vision` (the official classes hard-code ViT-B/16; `None` = ViT-B/16 at
/// `image_res`), and the training YAML keys the models read. Unknown keys are an error; the
/// YAML keys only the training scripts read are accepted and ignored. `Default` = the paper's
/// base model (ViT-B/16 at 256 px, BERT-base with `fusion_layer` 6, `embed_dim` 256, queue 65536,
/// momentum 0.995, temperature 0.07, alpha 0.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlbefConfig {
    /// The BERT config (`configs/config_bert.json`, with `fusion_layer` and `encoder_width`).
    pub bert: BertConfig,
    /// ViT constructor arguments; `None` = ViT-B/16 (`patch 16, 768, depth 12, 12 heads`) at
    /// `image_res`.
    pub vision: Option<VitConfig>,
    /// Input resolution (`image_res`).
    pub image_res: i64,
    /// Width of the image tokens (`vision_width`).
    pub vision_width: i64,
    /// ITC embedding width (`embed_dim`).
    pub embed_dim: i64,
    /// Initial ITC temperature (`temp`); checkpoints carry their own learned `temp`.
    pub temp: f64,
    /// MLM masking probability (`mlm_probability`).
    pub mlm_probability: f64,
    /// ITC queue length (`queue_size`).
    pub queue_size: i64,
    /// EMA momentum of the momentum encoders (`momentum`; pretraining and retrieval only).
    pub momentum: f64,
    /// Distillation weight (`alpha`), used when a call does not pass one.
    pub alpha: f64,
    /// Whether the fine-tuning models have momentum copies and distil (`distill`).
    pub distill: bool,
    /// Retrieval / VQA evaluation top-k (`k_test`: coco 256, flickr 128, VQA 128).
    pub k_test: Option<i64>,
    /// VQA answer end-of-sequence string appended by the dataset (`eos`, `'[SEP]'`).
    pub eos: Option<String>,
    /// Maximum number of text tokens (accepted; the official tokenisation is done by the caller).
    pub max_tokens: Option<i64>,
    /// Image size the checkpoint was made at (fixture metadata: `pos_embed` is interpolated from
    /// the checkpoint's own shape, this key only documents it).
    pub checkpoint_image_res: Option<i64>,
    /// vlp-rs addition: the NLVR2 text encoder's layer count. `None` = the official layout
    /// (forced to 18 layers, key/value tied in pairs (6,7)…(16,17), pretraining layer `n ≥ 6`
    /// copied to `2(n-6)+6`, `2(n-6)+7`). `Some(n)`: `n` layers laid out the same way from
    /// `fusion_layer` `f` on — pairs `(f+2k, f+2k+1)`, layer `n ≥ f` copied to `2(n-f)+f`,
    /// `2(n-f)+f+1` — so that a smaller model (the `small` preset: `f` 2, 4 layers → 6) gets
    /// every fusion layer twice as the base model does (`f + 2 (L - f)`; 18 at base).
    pub nlvr_layers: Option<i64>,
    /// Ignored (training script: path of `config_bert.json`).
    pub bert_config: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size_train: Option<serde_json::Value>,
    /// Ignored (training script).
    pub batch_size_test: Option<serde_json::Value>,
    /// Ignored (training script).
    pub warm_up: Option<serde_json::Value>,
    /// Ignored (training script).
    pub eval_ema: Option<serde_json::Value>,
    /// Ignored (training script).
    pub optimizer: Option<serde_json::Value>,
    /// Ignored (training script).
    pub schedular: Option<serde_json::Value>,
    /// Ignored (training data).
    pub train_file: Option<serde_json::Value>,
    /// Ignored (training data).
    pub val_file: Option<serde_json::Value>,
    /// Ignored (training data).
    pub test_file: Option<serde_json::Value>,
    /// Ignored (training data).
    pub image_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub answer_list: Option<serde_json::Value>,
    /// Ignored (training data).
    pub vqa_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub vg_root: Option<serde_json::Value>,
    /// Ignored (training data).
    pub refcoco_data: Option<serde_json::Value>,
    /// Ignored (training data).
    pub det_file: Option<serde_json::Value>,
    /// Ignored (training data).
    pub coco_file: Option<serde_json::Value>,
}

impl Default for AlbefConfig {
    fn default() -> Self {
        AlbefConfig {
            bert: BertConfig {
                fusion_layer: Some(6),
                encoder_width: Some(768),
                ..BertConfig::default()
            },
            vision: None,
            image_res: 256,
            vision_width: 768,
            embed_dim: 256,
            temp: 0.07,
            mlm_probability: 0.15,
            queue_size: 65536,
            momentum: 0.995,
            alpha: 0.4,
            distill: true,
            k_test: None,
            eos: None,
            max_tokens: None,
            checkpoint_image_res: None,
            nlvr_layers: None,
            bert_config: None,
            batch_size: None,
            batch_size_train: None,
            batch_size_test: None,
            warm_up: None,
            eval_ema: None,
            optimizer: None,
            schedular: None,
            train_file: None,
            val_file: None,
            test_file: None,
            image_root: None,
            answer_list: None,
            vqa_root: None,
            vg_root: None,
            refcoco_data: None,
            det_file: None,
            coco_file: None,
        }
    }
}

impl AlbefConfig {
    /// Parses a JSON value (a fixture `config.json`); errors name the offending field.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let cfg: AlbefConfig = vlp_core::config::from_str_json(&v.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The ViT the official classes build (`vision`, or ViT-B/16 at `image_res`).
    pub fn vit(&self) -> VitConfig {
        self.vision.clone().unwrap_or_else(|| VitConfig {
            img_size: self.image_res,
            ..VitConfig::default()
        })
    }

    /// `bert.fusion_layer` (validated to be set).
    pub fn fusion_layer(&self) -> usize {
        self.bert
            .fusion_layer
            .unwrap_or(self.bert.num_hidden_layers) as usize
    }

    /// Checks what the port relies on; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(VlpError::Msg(format!("albef config field `{f}`: {m}")));
        self.bert.validate()?;
        if self.bert.fusion_layer.is_none() {
            return bad(
                "bert.fusion_layer",
                "missing (ALBEF splits text and fusion layers)".into(),
            );
        }
        let vit = self.vit();
        if !(vit.init_std.is_finite() && vit.init_std > 0.0) {
            return bad(
                "vision.init_std",
                format!("{} is not a positive std", vit.init_std),
            );
        }
        if vit.embed_dim != self.vision_width {
            return bad(
                "vision_width",
                format!(
                    "{} differs from the ViT width {}",
                    self.vision_width, vit.embed_dim
                ),
            );
        }
        let ew = self.bert.encoder_width.unwrap_or(self.bert.hidden_size);
        if ew != self.vision_width {
            return bad(
                "bert.encoder_width",
                format!("{ew} differs from vision_width {}", self.vision_width),
            );
        }
        if self.queue_size < 1 {
            return bad("queue_size", format!("{} < 1", self.queue_size));
        }
        Ok(())
    }
}

/// Ids of the special tokens the models need (MLM masking, VQA padding). `Default` =
/// bert-base-uncased (`[PAD]` 0, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `[PAD]`.
    pub pad: i64,
    /// `[CLS]` (also the VQA decoder's BOS).
    pub cls: i64,
    /// `[SEP]`.
    pub sep: i64,
    /// `[MASK]`.
    pub mask: i64,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens {
            pad: 0,
            cls: 101,
            sep: 102,
            mask: 103,
        }
    }
}

impl SpecialTokens {
    /// Reads the ids from a WordPiece `vocab.txt` (one token per line, id = line number).
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
        let find = |tok: &str| {
            text.lines()
                .position(|l| l.trim_end() == tok)
                .map(|i| i as i64)
                .ok_or_else(|| VlpError::Msg(format!("{}: token {tok} not found", path.display())))
        };
        Ok(SpecialTokens {
            pad: find("[PAD]")?,
            cls: find("[CLS]")?,
            sep: find("[SEP]")?,
            mask: find("[MASK]")?,
        })
    }
}

/// L2 normalisation over the last dimension (`F.normalize(x, dim=-1)`, eps 1e-12).
pub fn normalize(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
        .clamp_min(1e-12)
}

/// xbert's encoder self-attention mask: `(1 - mask) * -10000` as `[B, 1, 1, L]`.
pub fn text_mask(mask: &Tensor, kind: Kind) -> Tensor {
    padding_mask(mask, BERT_MASK_VALUE, kind)
}

/// xbert's decoder self-attention mask (`is_decoder=True`): `(1 - causal * mask) * -10000` as
/// `[B, 1, L, L]`.
pub fn causal_text_mask(mask: &Tensor, kind: Kind) -> Tensor {
    let l = mask.size()[1];
    let causal = Tensor::ones([l, l], (Kind::Float, mask.device())).tril(0);
    let keep = causal.view([1, 1, l, l]) * mask.to_kind(Kind::Float).unsqueeze(1).unsqueeze(1);
    ((keep.ones_like() - keep) * BERT_MASK_VALUE).to_kind(kind)
}

/// The xbert `BertModel` of ALBEF without pooler (`embeddings.*`, `encoder.layer.N.*`), with the
/// official forward modes: `text` (layers `[0, fusion)`), `fusion` (layers `[fusion, L)` over
/// given text states) and `multi_modal` (all layers). Layer `i >= fusion` cross-attends to image
/// `(i - fusion) % n` of the `n` cross inputs (one image, or NLVR2's two).
#[derive(Debug)]
pub struct AlbefBert {
    /// `embeddings.*` (with the `position_ids` buffer the checkpoints carry).
    pub embeddings: BertEmbeddings,
    /// `encoder.layer.N.*`.
    pub encoder: BertEncoder,
    /// First layer with cross-attention.
    pub fusion_layer: usize,
    /// The configuration.
    pub cfg: BertConfig,
}

impl AlbefBert {
    /// Builds the model under `p` (`text_encoder` or `text_encoder.bert`).
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(AlbefBert {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg, true),
            encoder: BertEncoder::new(&(p / "encoder"), cfg),
            fusion_layer: cfg.fusion_layer.unwrap_or(cfg.num_hidden_layers) as usize,
            cfg: cfg.clone(),
        })
    }

    /// Builds the embeddings under `p` around layers built by the caller (NLVR2's tied layers).
    pub fn with_layers(p: &nn::Path, cfg: &BertConfig, layers: Vec<BertLayer>) -> Result<Self> {
        cfg.validate()?;
        Ok(AlbefBert {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg, true),
            encoder: BertEncoder { layers },
            fusion_layer: cfg.fusion_layer.unwrap_or(cfg.num_hidden_layers) as usize,
            cfg: cfg.clone(),
        })
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// Embeds ids `[B, L]` (token type 0).
    pub fn embed(&self, input_ids: &Tensor, train: bool) -> Tensor {
        self.embeddings.forward_t(input_ids, None, 0, train)
    }

    /// Runs layers `range` over `x` with the additive self-attention mask `self_mask`; layer
    /// `i >= fusion_layer` cross-attends to `cross[(i - fusion_layer) % cross.len()]`.
    pub fn run(
        &self,
        x: &Tensor,
        range: Range<usize>,
        self_mask: &Tensor,
        cross: &[CrossInput],
        train: bool,
    ) -> Tensor {
        let f = self.fusion_layer;
        let pick = |i: usize| -> Option<CrossInput> {
            let d = i.checked_sub(f)?;
            (!cross.is_empty()).then(|| cross[d % cross.len()])
        };
        self.encoder
            .forward_range(x, range, Some(self_mask), &pick, train)
    }

    /// `mode='text'`: the text-only layers over `input_ids` with padding `mask` (`[B, L]`).
    pub fn text(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let x = self.embed(input_ids, train);
        let m = text_mask(mask, x.kind());
        self.run(&x, 0..self.fusion_layer, &m, &[], train)
    }

    /// `mode='fusion'`: the fusion layers over text states `text_embeds` (`encoder_embeds`).
    pub fn fusion(
        &self,
        text_embeds: &Tensor,
        mask: &Tensor,
        cross: &[CrossInput],
        train: bool,
    ) -> Tensor {
        let m = text_mask(mask, text_embeds.kind());
        self.run(
            text_embeds,
            self.fusion_layer..self.num_layers(),
            &m,
            cross,
            train,
        )
    }

    /// `mode='multi_modal'` (the default): all layers over `input_ids`.
    pub fn multimodal(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        cross: &[CrossInput],
        train: bool,
    ) -> Tensor {
        let x = self.embed(input_ids, train);
        let m = text_mask(mask, x.kind());
        self.run(&x, 0..self.num_layers(), &m, cross, train)
    }

    /// All layers as a causal decoder (`is_decoder=True`, VQA answer decoder).
    pub fn decode(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        cross: &[CrossInput],
        train: bool,
    ) -> Tensor {
        let x = self.embed(input_ids, train);
        let m = causal_text_mask(mask, x.kind());
        self.run(&x, 0..self.num_layers(), &m, cross, train)
    }
}

/// xbert's `BertOnlyMLMHead` (`cls.predictions.*`): dense → GELU → LayerNorm → decoder, whose
/// weight is the word-embedding matrix and whose bias is `cls.predictions.bias` (both tied names
/// are registered, sharing storage).
#[derive(Debug)]
pub struct MlmHead {
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    act: Activation,
    decoder_weight: Tensor,
    /// `cls.predictions.bias` `[V]` (= `decoder.bias`).
    pub bias: Tensor,
}

impl MlmHead {
    /// Builds `predictions.*` under `p` (`…/cls`), tying the decoder to `word_embeddings` `[V, D]`.
    pub fn new(p: &nn::Path, cfg: &BertConfig, word_embeddings: &Tensor) -> Self {
        let p = p / "predictions";
        let d = cfg.hidden_size;
        let bias = p.zeros("bias", &[cfg.vocab_size]);
        let dec = &p / "decoder";
        let _ = dec.add("weight", word_embeddings.shallow_clone(), false);
        let _ = dec.add("bias", bias.shallow_clone(), false);
        MlmHead {
            dense: linear_std(&p / "transform" / "dense", d, d, cfg.initializer_range),
            layer_norm: layer_norm(&p / "transform" / "LayerNorm", d, cfg.layer_norm_eps),
            act: cfg.hidden_act,
            decoder_weight: word_embeddings.shallow_clone(),
            bias,
        }
    }

    /// Logits `[…, V]` of hidden states `[…, D]`.
    pub fn forward(&self, h: &Tensor) -> Tensor {
        let t = self
            .act
            .apply(&h.apply(&self.dense))
            .apply(&self.layer_norm);
        t.linear(&self.decoder_weight, Some(&self.bias))
    }
}

/// xbert's `BertForMaskedLM` / `BertLMHeadModel` layout: `bert.*` + `cls.predictions.*`.
#[derive(Debug)]
pub struct AlbefMaskedLm {
    /// `bert.*`.
    pub bert: AlbefBert,
    /// `cls.*`.
    pub cls: MlmHead,
}

impl AlbefMaskedLm {
    /// Builds `bert` and `cls` under `p` (`text_encoder`, `text_decoder`).
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        let bert = AlbefBert::new(&(p / "bert"), cfg)?;
        let cls = MlmHead::new(&(p / "cls"), cfg, &bert.embeddings.word_embeddings.ws);
        Ok(AlbefMaskedLm { bert, cls })
    }
}

/// The fine-tuning classifier `cls_head = Sequential(Linear(D, D), ReLU, Linear(D, n))`
/// (`cls_head.0.*`, `cls_head.2.*`).
#[derive(Debug)]
pub struct ClsHead {
    fc0: nn::Linear,
    fc2: nn::Linear,
}

impl ClsHead {
    /// Builds under `p` (`cls_head`, `cls_head_m`).
    pub fn new(p: &nn::Path, d: i64, n: i64) -> Self {
        ClsHead {
            fc0: linear_torch(p / "0", d, d),
            fc2: linear_torch(p / "2", d, n),
        }
    }
    /// Logits `[B, n]` of `[B, D]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.fc0).relu().apply(&self.fc2)
    }
}

/// `x[:, 0]` of `[B, L, D]`.
pub(crate) fn cls_token(x: &Tensor) -> Tensor {
    x.select(1, 0)
}

/// The (online prefix, momentum prefix) pairs of a model, e.g. `("visual_encoder.",
/// "visual_encoder_m.")`.
pub type MomentumPairs = &'static [(&'static str, &'static str)];

/// Copies every online parameter into its momentum copy (`copy_params`) and marks the momentum
/// copies as not requiring gradients, as the official constructors do.
pub(crate) fn init_momentum(vs: &VarStore, pairs: MomentumPairs) -> Result<()> {
    vlp_objectives::momentum::copy_params(vs, pairs)?;
    for (k, v) in vs.variables() {
        if pairs.iter().any(|(_, m)| k.starts_with(m)) && v.is_floating_point() {
            let _ = v.set_requires_grad(false);
        }
    }
    Ok(())
}

/// The EMA update `p_m = m * p_m + (1 - m) * p` over every parameter of the pairs, in place
/// (`_momentum_update`; tied tensors are updated once, as `parameters()` lists them once).
pub(crate) fn momentum_update(vs: &VarStore, pairs: MomentumPairs, m: f64) -> Result<usize> {
    vlp_objectives::momentum::momentum_update(vs, pairs, m)
}

/// Interpolates the `pos_embed` entries of `sd` named in `keys` to `grid` (the model's patch grid)
/// as the official loaders' `interpolate_pos_embed` does (bicubic, class token kept); entries
/// already at the grid are left alone. Returns how many were resized.
pub(crate) fn interpolate_pos_embeds(
    sd: &mut StateDict,
    keys: &[&str],
    grid: i64,
) -> Result<usize> {
    let mut n = 0;
    for k in keys {
        let Some(pe) = sd.get(k) else { continue };
        let rows = pe.size()[1];
        let old = (((rows - 1) as f64).sqrt()) as i64;
        if old * old != rows - 1 {
            return Err(VlpError::Msg(format!(
                "{k}: {rows} rows are not 1 + a square grid"
            )));
        }
        if old != grid {
            let new = tch::no_grad(|| interpolate_pos_embed(pe, 1, (grid, grid)));
            sd.insert(*k, new);
            n += 1;
        }
    }
    Ok(n)
}

/// The ViT patch-embedding kernels of a model and its momentum copy.
pub(crate) const PATCH_EMBED_KEYS: &[&str] = &[
    "visual_encoder.patch_embed.proj.weight",
    "visual_encoder_m.patch_embed.proj.weight",
];

/// A checkpoint's ViT patch-embedding kernels resized to the model's `patch` size with
/// FlexiViT's PI-resize ([`vlp_core::layers::vit::resize_patch_kernel`]), so that a checkpoint
/// loads into a model of another `vision.patch_size` (its position embeddings interpolated to
/// the new grid by [`interpolate_pos_embeds`]). Returns how many kernels were resized.
pub(crate) fn resize_patch_embeds(sd: &mut StateDict, patch: i64) -> usize {
    let mut n = 0;
    for k in PATCH_EMBED_KEYS {
        let Some(w) = sd.get(k) else { continue };
        let size = w.size();
        if size.len() == 4 && size[2] == size[3] && size[3] != patch {
            let new = tch::no_grad(|| vlp_core::layers::vit::resize_patch_kernel(w, patch));
            sd.insert(*k, new);
            n += 1;
        }
    }
    n
}

/// Whether a state dict has the pretraining layout (`text_encoder.bert.*`).
pub(crate) fn has_pretrain_layout(sd: &StateDict) -> bool {
    sd.keys()
        .any(|k| k.starts_with("text_encoder.bert.") || k.starts_with("text_encoder_m.bert."))
}

/// The fine-tuning loaders' rename of a pretraining checkpoint (`Retrieval.py`, `VE.py`,
/// `VQA.py`: `key.replace('bert.', '')` for every key containing `bert`):
/// `text_encoder.bert.` → `text_encoder.` and `text_encoder_m.bert.` → `text_encoder_m.`.
/// Returns how many keys were renamed.
pub fn rename_pretrain_text(sd: &mut StateDict) -> usize {
    sd.rename_prefix("text_encoder.bert.", "text_encoder.")
        + sd.rename_prefix("text_encoder_m.bert.", "text_encoder_m.")
}

/// Modules of the pretraining class that the VE / NLVR2 / VQA classes do not have (the official
/// `strict=False` loads ignore them).
pub const PRETRAIN_ONLY_PREFIXES: &[&str] = &[
    "text_encoder.cls.",
    "text_encoder_m.cls.",
    "vision_proj.",
    "vision_proj_m.",
    "text_proj.",
    "text_proj_m.",
    "itm_head.",
    "temp",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
];

/// Removes every key starting with one of `prefixes` (keys the official `strict=False` loaders
/// ignore because the fine-tuned class has no such module). Returns how many were removed.
pub(crate) fn drop_prefixes(sd: &mut StateDict, prefixes: &[&str]) -> usize {
    let before = sd.len();
    sd.retain(|k, _| !prefixes.iter().any(|p| k.starts_with(p)));
    before - sd.len()
}

/// Reads a named float scalar input (`alpha`), else the MANIFEST's, else `default`.
pub(crate) fn scalar_input(
    inputs: &Tensors,
    extra: &serde_json::Value,
    name: &str,
    default: f64,
) -> f64 {
    inputs
        .get(name)
        .map(|t| t.double_value(&[]))
        .or_else(|| extra.get(name).and_then(|v| v.as_f64()))
        .unwrap_or(default)
}

/// Fetches a named input on `device`.
pub(crate) fn input_on(inputs: &Tensors, name: &str, device: Device) -> Result<Tensor> {
    Ok(crate::input(inputs, name)?.to_device(device))
}

/// Checks a `[B, L]` id/mask pair.
/// A row index (`name`, `[rows]`, values in `0..n`, one per text row: `what`) as Int64 on
/// `device`; errors name the input.
pub(crate) fn check_row_index(
    index: &Tensor,
    rows: i64,
    n: i64,
    name: &str,
    what: &str,
    device: Device,
) -> Result<Tensor> {
    let idx = index.to_kind(Kind::Int64).to_device(device);
    if idx.dim() != 1 || idx.size()[0] != rows {
        return Err(VlpError::input(
            name,
            format!("expected [{rows}] ({what}), got {:?}", idx.size()),
        ));
    }
    if idx.numel() > 0 {
        let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
        if lo < 0 || hi >= n {
            return Err(VlpError::input(
                name,
                format!("values must lie in 0..{n}, got {lo}..={hi}"),
            ));
        }
    }
    Ok(idx)
}

pub(crate) fn check_text(ids: &Tensor, mask: &Tensor, name: &str) -> Result<()> {
    if ids.dim() != 2 || ids.size() != mask.size() {
        return Err(VlpError::input(
            name,
            format!(
                "ids {:?} and mask {:?} must both be [B, L]",
                ids.size(),
                mask.size()
            ),
        ));
    }
    Ok(())
}

/// Checks an image batch `[B, 3, H, W]`.
pub(crate) fn check_image(image: &Tensor, name: &str) -> Result<()> {
    if image.dim() != 4 {
        return Err(VlpError::input(
            name,
            format!("expected [B, 3, H, W], got {:?}", image.size()),
        ));
    }
    Ok(())
}

/// Checks that the tensors named `a` and `b` of two tied entries are equal (NLVR2's tied
/// cross-attention, the MLM head's decoder), with an error naming both.
pub(crate) fn check_tied(sd: &StateDict, a: &str, b: &str) -> Result<()> {
    if let (Some(x), Some(y)) = (sd.get(a), sd.get(b)) {
        if x.size() != y.size() || !x.to_kind(Kind::Double).equal(&y.to_kind(Kind::Double)) {
            return Err(VlpError::Msg(format!(
                "tied checkpoint entries `{a}` and `{b}` differ"
            )));
        }
    }
    Ok(())
}

/// The tied-name pairs of an MLM/LM head under `prefix` (`text_encoder.`, `text_decoder_m.`).
pub(crate) fn mlm_tied_pairs(prefix: &str) -> [(String, String); 2] {
    [
        (
            format!("{prefix}bert.embeddings.word_embeddings.weight"),
            format!("{prefix}cls.predictions.decoder.weight"),
        ),
        (
            format!("{prefix}cls.predictions.bias"),
            format!("{prefix}cls.predictions.decoder.bias"),
        ),
    ]
}

/// Fills a tied entry that a state dict omits from its partner (checkpoints written by tools
/// that de-duplicate shared tensors, e.g. safetensors conversions), after checking present pairs
/// are equal.
pub(crate) fn complete_tied(sd: &mut StateDict, pairs: &[(String, String)]) -> Result<()> {
    for (a, b) in pairs {
        check_tied(sd, a, b)?;
        match (sd.contains_key(a), sd.contains_key(b)) {
            (true, false) => {
                let t = sd.get(a).expect("checked").shallow_clone();
                sd.insert(b.clone(), t);
            }
            (false, true) => {
                let t = sd.get(b).expect("checked").shallow_clone();
                sd.insert(a.clone(), t);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The distilled classification loss of the fine-tuning heads (`model_ve.py`, `model_nlvr.py`):
/// `(1 - alpha) * CE(pred, targets) - alpha * mean(sum(log_softmax(pred) * softmax(pred_m)))`;
/// without momentum logits the plain cross-entropy.
pub fn distilled_ce(
    pred: &Tensor,
    targets: &Tensor,
    pred_m: Option<&Tensor>,
    alpha: f64,
) -> Tensor {
    let ce = pred.cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::Mean, -100, 0.0);
    match pred_m {
        None => ce,
        Some(pm) => {
            let soft = pm.detach().softmax(1, Kind::Float);
            let kd = (pred.log_softmax(1, Kind::Float) * soft)
                .sum_dim_intlist(1, false, Kind::Float)
                .mean(Kind::Float);
            ce * (1.0 - alpha) - kd * alpha
        }
    }
}

/// Builds one ALBEF variant (the registry's builder).
pub fn build(
    variant: &str,
    config: &serde_json::Value,
    device: Device,
) -> Result<Box<dyn crate::VlpModel>> {
    let cfg = AlbefConfig::from_json(config)?;
    Ok(match variant {
        "pretrain" => Box::new(AlbefPretrain::new(&cfg, device)?),
        "retrieval" => Box::new(AlbefRetrieval::new(&cfg, device)?),
        "nlvr2" => Box::new(AlbefNlvr::new(&cfg, device)?),
        "pretrain_nlvr" => Box::new(AlbefNlvrPretrain::new(&cfg, device)?),
        "vqa" => Box::new(AlbefVqa::new(&cfg, device)?),
        "ve" => Box::new(AlbefVe::new(&cfg, device)?),
        other => {
            return Err(VlpError::Unsupported {
                what: format!(
                    "variant `{other}` of `albef` (available: {})",
                    VARIANTS.join(", ")
                ),
            })
        }
    })
}

/// The VE / NLVR2 training loss (`train=True`): checks `targets` (`[B]` class ids), then, when the
/// model has momentum copies, updates them (`pairs`, [`FINETUNE_MOMENTUM`]) and runs
/// `momentum_logits` without gradient; returns [`distilled_ce`] of `logits` `[B, C]`.
pub(crate) fn classifier_train_loss(
    vs: &VarStore,
    pairs: MomentumPairs,
    logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    momentum_logits: Option<impl FnOnce() -> Tensor>,
) -> Result<Tensor> {
    if targets.size() != [logits.size()[0]] {
        return Err(VlpError::input(
            "targets",
            format!("expected [B], got {:?}", targets.size()),
        ));
    }
    let pred_m = match momentum_logits {
        None => None,
        Some(f) => Some(tch::no_grad(|| -> Result<Tensor> {
            momentum_update(vs, pairs, FINETUNE_MOMENTUM)?;
            Ok(f())
        })?),
    };
    Ok(distilled_ce(logits, targets, pred_m.as_ref(), alpha))
}

/// A tiny config for unit tests: 32 px images, width 32, one ViT block, `layers` text layers
/// cross-attending from `fusion`, a 50-word vocabulary, no distillation.
#[cfg(test)]
pub(crate) fn tiny_test_config(layers: i64, fusion: i64) -> AlbefConfig {
    let base = AlbefConfig::default();
    let mut bert = base.bert.clone();
    bert.hidden_size = 32;
    bert.num_hidden_layers = layers;
    bert.num_attention_heads = 2;
    bert.intermediate_size = 64;
    bert.fusion_layer = Some(fusion);
    bert.encoder_width = Some(32);
    bert.max_position_embeddings = 16;
    bert.vocab_size = 50;
    AlbefConfig {
        image_res: 32,
        vision: Some(VitConfig {
            img_size: 32,
            patch_size: 16,
            embed_dim: 32,
            depth: 1,
            num_heads: 2,
            ..VitConfig::default()
        }),
        vision_width: 32,
        embed_dim: 16,
        queue_size: 8,
        distill: false,
        bert,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_the_paper_base_and_unknown_keys_fail() {
        let c = AlbefConfig::default();
        assert_eq!(c.vit().img_size, 256);
        assert_eq!(c.vit().embed_dim, 768);
        assert_eq!(c.fusion_layer(), 6);
        assert_eq!((c.embed_dim, c.queue_size), (256, 65536));
        c.validate().unwrap();
        let err = AlbefConfig::from_json(&serde_json::json!({"image_res": 384, "queue_szie": 3}))
            .unwrap_err();
        assert!(err.to_string().contains("queue_szie"), "{err}");
        let ok = AlbefConfig::from_json(
            &serde_json::json!({"image_res": 384, "k_test": 256, "batch_size_train": 32}),
        )
        .unwrap();
        assert_eq!(ok.vit().img_size, 384);
    }

    #[test]
    fn causal_mask_matches_xbert() {
        let m = Tensor::from_slice(&[1i64, 1, 0]).view([1, 3]);
        let c = causal_text_mask(&m, Kind::Float);
        let want =
            Tensor::from_slice(&[0f32, -1e4, -1e4, 0., 0., -1e4, 0., 0., -1e4]).view([1, 1, 3, 3]);
        assert!(c.equal(&want));
    }
}
