//! BLIP NLVR2, `models/blip_nlvr.py:BLIP_NLVR` with the text encoder of
//! `models/nlvr_encoder.py`: every layer's cross-attention is a twin — `crossattention.self0`
//! over the first image and `crossattention.self1` over the second, projected by
//! `crossattention.output.dense0` / `dense1` — whose two branch outputs are **averaged** in layers
//! `< 6` and **merged** by `crossattention.output.merge_layer(cat(b0, b1))` (Linear 2H→H, no
//! activation) in layers `>= 6` (the threshold 6 is hard-coded), before the shared
//! `crossattention.output.LayerNorm` residual. The text starts with `[ENC]`; the head `cls_head`
//! (Linear-ReLU-Linear(2)) reads position 0.
//!
//! Images come as one batch `[image0 batch (B) ; image1 batch (B)]`, as in the official forward.
//!
//! Loading (`blip_nlvr.py:load_checkpoint`): a checkpoint with plain cross-attention (a
//! pretraining checkpoint) gets every `crossattention.self.*` duplicated into `self0`/`self1` and
//! every `crossattention.output.dense.*` into `dense0`/`dense1`; keys the class lacks are dropped
//! and the ones a pretraining checkpoint lacks (`merge_layer`, `cls_head`) keep their initial
//! values (the official `strict=False` load); see [`duplicate_twin_keys`].
use super::retrieval::fill_from_model;
use super::{mha, opt_input, AttnBlock, BlipConfig, BlipTokens, Ffn};
use crate::albef::{
    check_image, check_text, cls_token, input_on, interpolate_pos_embeds, text_mask, ClsHead,
};
use crate::common::var_store_accessors;
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Tensor};
use vlp_core::attention::MultiHeadAttention;
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::{BertConfig, BertEmbeddings};
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::layers::{layer_norm, linear_std};
use vlp_core::{Result, VlpError};

/// First layer whose twin cross-attention uses `merge_layer` (`layer_num >= 6` in
/// `nlvr_encoder.py`).
pub const MERGE_FROM_LAYER: i64 = 6;

/// The twin cross-attention of one NLVR2 layer (`crossattention.*`).
#[derive(Debug)]
pub struct TwinCrossAttention {
    self0: MultiHeadAttention,
    self1: MultiHeadAttention,
    dense0: nn::Linear,
    dense1: nn::Linear,
    merge_layer: Option<nn::Linear>,
    norm: nn::LayerNorm,
    dropout: f64,
}

impl TwinCrossAttention {
    /// Builds `p/self{0,1}`, `p/output/{dense0,dense1,LayerNorm}` and, when `merge`,
    /// `p/output/merge_layer`.
    pub fn new(p: &nn::Path, cfg: &BertConfig, merge: bool) -> Self {
        let d = cfg.hidden_size;
        let w = cfg.encoder_width.unwrap_or(d);
        let o = p / "output";
        TwinCrossAttention {
            self0: mha(&(p / "self0"), cfg, Some(w)),
            self1: mha(&(p / "self1"), cfg, Some(w)),
            dense0: linear_std(&o / "dense0", d, d, cfg.initializer_range),
            dense1: linear_std(&o / "dense1", d, d, cfg.initializer_range),
            merge_layer: merge
                .then(|| linear_std(&o / "merge_layer", 2 * d, d, cfg.initializer_range)),
            norm: layer_norm(&o / "LayerNorm", d, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// `x` `[B, L, D]` attending to `image0` and `image1` (`[B, Lk, W]`, all tokens attended).
    pub fn forward_t(&self, x: &Tensor, image0: &Tensor, image1: &Tensor, train: bool) -> Tensor {
        let b0 = self
            .self0
            .forward_t(x, Some(image0), None, train)
            .apply(&self.dense0);
        let b1 = self
            .self1
            .forward_t(x, Some(image1), None, train)
            .apply(&self.dense1);
        let h = match &self.merge_layer {
            Some(m) => Tensor::cat(&[b0, b1], -1).apply(m),
            None => (b0 + b1) / 2.0,
        };
        (h.dropout(self.dropout, train) + x).apply(&self.norm)
    }
}

/// One `nlvr_encoder.py` `BertLayer`: self-attention → twin cross-attention → FFN.
#[derive(Debug)]
pub struct NlvrLayer {
    /// `attention.*`.
    pub attention: AttnBlock,
    /// `crossattention.*`.
    pub crossattention: TwinCrossAttention,
    ffn: Ffn,
}

impl NlvrLayer {
    /// Builds layer `i` under `p` (`…/layer/i`).
    pub fn new(p: &nn::Path, cfg: &BertConfig, i: i64) -> Self {
        NlvrLayer {
            attention: AttnBlock::new(&(p / "attention"), cfg, None),
            crossattention: TwinCrossAttention::new(
                &(p / "crossattention"),
                cfg,
                i >= MERGE_FROM_LAYER,
            ),
            ffn: Ffn::new(p, cfg),
        }
    }

    /// Applies the layer (`mask`: additive self-attention mask).
    pub fn forward_t(
        &self,
        x: &Tensor,
        mask: &Tensor,
        image0: &Tensor,
        image1: &Tensor,
        train: bool,
    ) -> Tensor {
        let h = self.attention.forward_t(x, None, Some(mask), train);
        let h = self.crossattention.forward_t(&h, image0, image1, train);
        self.ffn.forward_t(&h, train)
    }
}

/// `models/blip_nlvr.py:BLIP_NLVR`.
#[derive(Debug)]
pub struct BlipNlvr {
    vs: VarStore,
    /// The configuration.
    pub cfg: BlipConfig,
    /// Special tokens (`[ENC]`).
    pub tokens: BlipTokens,
    /// `visual_encoder.*` (drop-path 0.1 in training).
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.embeddings.*`.
    pub embeddings: BertEmbeddings,
    /// `text_encoder.encoder.layer.N.*`.
    pub layers: Vec<NlvrLayer>,
    /// `cls_head.{0,2}.*`.
    pub cls_head: ClsHead,
    /// Dropout / drop-path on (off by default).
    pub train: bool,
}

/// Outputs of [`BlipNlvr::forward`].
#[derive(Debug)]
pub struct NlvrOutput {
    /// `[2B, 1+N, D]` ViT output of `[image0 ; image1]`.
    pub image_embeds: Tensor,
    /// `[B, L, H]` text-encoder output.
    pub hidden: Tensor,
    /// `[B, 2]` logits.
    pub logits: Tensor,
}

impl BlipNlvr {
    /// Builds the model on `device`.
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit_for("nlvr2", false);
        let med = cfg.med_for(Some(vit.embed_dim), cfg.text_vocab(false));
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let te = &r / "text_encoder";
        let embeddings = BertEmbeddings::new(&(&te / "embeddings"), &med, true);
        let pl = &te / "encoder" / "layer";
        let layers = (0..med.num_hidden_layers)
            .map(|i| NlvrLayer::new(&(&pl / i), &med, i))
            .collect();
        let cls_head = ClsHead::new(&(&r / "cls_head"), med.hidden_size, 2);
        Ok(BlipNlvr {
            tokens: cfg.tokens(false),
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            embeddings,
            layers,
            cls_head,
            train: false,
        })
    }

    /// `model(image, text, targets, train=False)`: `image` `[2B, 3, H, W]` (`[image0 ; image1]`),
    /// `input_ids` `[B, L]` with `[ENC]` at position 0 (`mask` `[B, L]`).
    pub fn forward(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<NlvrOutput> {
        check_image(image, "image")?;
        check_text(input_ids, attention_mask, "input_ids")?;
        let b = input_ids.size()[0];
        if image.size()[0] != 2 * b {
            return Err(VlpError::input(
                "image",
                format!(
                    "expected 2 x {b} images ([image0 ; image1]), got {}",
                    image.size()[0]
                ),
            ));
        }
        let train = self.train;
        let image_embeds = self.visual_encoder.forward_t(image, train);
        let (image0, image1) = (image_embeds.narrow(0, 0, b), image_embeds.narrow(0, b, b));
        let mut h = self.embeddings.forward_t(input_ids, None, 0, train);
        let m = text_mask(attention_mask, h.kind());
        for l in &self.layers {
            h = l.forward_t(&h, &m, &image0, &image1, train);
        }
        let logits = self.cls_head.forward(&cls_token(&h));
        Ok(NlvrOutput {
            image_embeds,
            hidden: h,
            logits,
        })
    }

    /// The training loss `cross_entropy(logits, targets)` (`train=True`).
    pub fn loss(logits: &Tensor, targets: &Tensor) -> Tensor {
        logits.cross_entropy_loss::<Tensor>(
            &targets.to_device(logits.device()),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )
    }
}

/// `blip_nlvr.py:load_checkpoint`'s key duplication: every `crossattention.self.` key is copied
/// to `self0.` and `self1.`, every `crossattention.output.dense.` key to `dense0.` and
/// `dense1.`; the originals are removed (the twin class has no such module). Returns how many keys
/// were duplicated.
pub fn duplicate_twin_keys(sd: &mut StateDict) -> usize {
    let keys: Vec<String> = sd.keys().cloned().collect();
    let mut n = 0;
    for k in keys {
        let twins = if k.contains("crossattention.self.") {
            Some((
                k.replace("crossattention.self.", "crossattention.self0."),
                k.replace("crossattention.self.", "crossattention.self1."),
            ))
        } else if k.contains("crossattention.output.dense.") {
            Some((
                k.replace(
                    "crossattention.output.dense.",
                    "crossattention.output.dense0.",
                ),
                k.replace(
                    "crossattention.output.dense.",
                    "crossattention.output.dense1.",
                ),
            ))
        } else {
            None
        };
        if let Some((k0, k1)) = twins {
            let t = sd.remove(&k).expect("listed");
            sd.insert(k0, t.shallow_clone());
            sd.insert(k1, t);
            n += 1;
        }
    }
    n
}

impl VlpModel for BlipNlvr {
    var_store_accessors!();
    /// `blip_nlvr.py:load_checkpoint`: `visual_encoder.pos_embed` interpolated, the twin-key
    /// duplication ([`duplicate_twin_keys`]), keys outside `visual_encoder.` / `text_encoder.` /
    /// `cls_head.` dropped, and `merge_layer` / `cls_head` entries a (pretraining) checkpoint
    /// lacks kept at the model's initial values.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, &["visual_encoder.pos_embed"], grid)?;
        sd.retain(|k, _| {
            ["visual_encoder.", "text_encoder.", "cls_head."]
                .iter()
                .any(|p| k.starts_with(p))
        });
        duplicate_twin_keys(&mut sd);
        let vars = self.vs.variables();
        let fill: Vec<&str> = vars
            .keys()
            .filter(|k| {
                (k.contains(".merge_layer.") || k.starts_with("cls_head.")) && !sd.contains_key(k)
            })
            .map(String::as_str)
            .collect();
        fill_from_model(&self.vs, &mut sd, &fill);
        Ok(sd)
    }
    /// Inputs: `image` `[2B, 3, H, W]`, `input_ids` (`[ENC]` first), `attention_mask`, optional
    /// `targets` `[B]`. Outputs: `image_embeds`, `logits`, `train_loss` (with targets).
    fn forward_named(&mut self, inputs: &Tensors, _extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let out = tch::no_grad(|| self.forward(&image, &ids, &mask))?;
        let mut t = Tensors::new();
        if let Some(targets) = opt_input(inputs, "targets", dev) {
            t.insert("train_loss".into(), Self::loss(&out.logits, &targets));
        }
        t.insert("image_embeds".into(), out.image_embeds);
        t.insert("logits".into(), out.logits);
        Ok(t)
    }
}
