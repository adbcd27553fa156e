//! ALBEF for SNLI-VE (visual entailment), `models/model_ve.py:ALBEF`: the 12-layer text encoder
//! cross-attends to the image from `fusion_layer` on (`mode='multi_modal'`), and
//! `cls_head = Linear(D, D) → ReLU → Linear(D, 3)` reads the fused `[CLS]`. With `distill`, the
//! training loss is `(1 - α)·CE + α·soft-CE` against the momentum model's logits, after the
//! momentum update (`momentum` is hard-coded 0.995 in the official class).
//!
//! Keys: `visual_encoder.*`, `text_encoder.*` (`BertModel`, no pooler), `cls_head.{0,2}.*`, and
//! with `distill` `visual_encoder_m.*`, `text_encoder_m.*`, `cls_head_m.*`.
use super::{
    check_image, check_text, classifier_train_loss, cls_token, drop_prefixes, has_pretrain_layout,
    init_momentum, input_on, interpolate_pos_embeds, rename_pretrain_text, resize_patch_embeds,
    scalar_input, AlbefBert, AlbefConfig, ClsHead, MomentumPairs, PRETRAIN_ONLY_PREFIXES,
};
use crate::common::{var_store_accessors, POS_EMBED_KEYS};
use crate::{Tensors, VlpModel};
use tch::{nn::VarStore, Device, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::CrossInput;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};

/// The online/momentum module pairs of `model_ve.py`.
pub const VE_PAIRS: MomentumPairs = &[
    ("visual_encoder.", "visual_encoder_m."),
    ("text_encoder.", "text_encoder_m."),
    ("cls_head.", "cls_head_m."),
];

/// The momentum copies of a fine-tuning classifier (`distill=True`).
#[derive(Debug)]
pub struct ClassifierMomentum {
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `text_encoder_m.*`.
    pub text_encoder_m: AlbefBert,
    /// `cls_head_m.*`.
    pub cls_head_m: ClsHead,
}

/// `models/model_ve.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefVe {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*`.
    pub text_encoder: AlbefBert,
    /// `cls_head.*` (3 classes: entailment / neutral / contradiction as in the dataset).
    pub cls_head: ClsHead,
    /// Momentum copies (with `distill`).
    pub momentum: Option<ClassifierMomentum>,
    /// Dropout on (off by default).
    pub train: bool,
}

/// Outputs of a VE / NLVR2 evaluation (`train=False`) and training (`train=True`) forward.
#[derive(Debug)]
pub struct ClassifierOutput {
    /// `[B, 1+N, D]` ViT output (all images).
    pub image_embeds: Tensor,
    /// `[B, C]` `cls_head` logits.
    pub logits: Tensor,
}

impl AlbefVe {
    /// Builds the model on `device` (momentum copies = online weights when `distill`).
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit();
        let d = cfg.bert.hidden_size;
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = AlbefBert::new(&(&r / "text_encoder"), &cfg.bert)?;
        let cls_head = ClsHead::new(&(&r / "cls_head"), d, 3);
        let momentum = if cfg.distill {
            Some(ClassifierMomentum {
                visual_encoder_m: VisionTransformer::new(&(&r / "visual_encoder_m"), &vit),
                text_encoder_m: AlbefBert::new(&(&r / "text_encoder_m"), &cfg.bert)?,
                cls_head_m: ClsHead::new(&(&r / "cls_head_m"), d, 3),
            })
        } else {
            None
        };
        if momentum.is_some() {
            init_momentum(&vs, VE_PAIRS)?;
        }
        Ok(AlbefVe {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            cls_head,
            momentum,
            train: false,
        })
    }

    fn logits_of(
        vit: &VisionTransformer,
        bert: &AlbefBert,
        head: &ClsHead,
        image: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let image_embeds = vit.forward_t(image, train);
        let cross = [CrossInput {
            states: &image_embeds,
            mask: None,
            rows: None,
        }];
        let h = bert.multimodal(ids, mask, &cross, train);
        let logits = head.forward(&cls_token(&h));
        (image_embeds, logits)
    }

    /// Evaluation forward (`train=False`): image embeddings and `[B, 3]` logits.
    pub fn forward(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        check_image(image, "image")?;
        check_text(input_ids, attention_mask, "input_ids")?;
        if image.size()[0] != input_ids.size()[0] {
            return Err(VlpError::input(
                "input_ids",
                format!(
                    "{} texts for {} images",
                    input_ids.size()[0],
                    image.size()[0]
                ),
            ));
        }
        let (image_embeds, logits) = Self::logits_of(
            &self.visual_encoder,
            &self.text_encoder,
            &self.cls_head,
            image,
            input_ids,
            attention_mask,
            self.train,
        );
        Ok(ClassifierOutput {
            image_embeds,
            logits,
        })
    }

    /// Training loss (`train=True`): CE, distilled from the momentum model (after its update)
    /// when `distill`.
    pub fn train_loss(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        targets: &Tensor,
        alpha: f64,
    ) -> Result<Tensor> {
        let out = self.forward(image, input_ids, attention_mask)?;
        let momentum_logits = self.momentum.as_ref().map(|m| {
            move || {
                Self::logits_of(
                    &m.visual_encoder_m,
                    &m.text_encoder_m,
                    &m.cls_head_m,
                    image,
                    input_ids,
                    attention_mask,
                    self.train,
                )
                .1
            }
        });
        classifier_train_loss(
            &self.vs,
            VE_PAIRS,
            &out.logits,
            targets,
            alpha,
            momentum_logits,
        )
    }
}

impl VlpModel for AlbefVe {
    var_store_accessors!();
    /// `VE.py`: `visual_encoder(_m).pos_embed` interpolated to the model's grid; a pretraining
    /// checkpoint (`text_encoder.bert.*`) gets `bert.` removed from its keys, and the modules the
    /// VE class lacks (MLM head, ITC projections/queues, ITM head), which the official
    /// `strict=False` load ignores, are dropped. `cls_head(_m)` are then missing (the official
    /// code leaves them at their init): load such a checkpoint with `LoadMode::Partial`.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        if has_pretrain_layout(&sd) {
            rename_pretrain_text(&mut sd);
            drop_prefixes(&mut sd, PRETRAIN_ONLY_PREFIXES);
        }
        if self.momentum.is_none() {
            drop_prefixes(
                &mut sd,
                &["visual_encoder_m.", "text_encoder_m.", "cls_head_m."],
            );
        }
        Ok(sd)
    }
    /// Inputs: `image`, `input_ids`, `attention_mask`, optional `targets` and `alpha`. Outputs:
    /// `image_embeds`, `logits`, and `train_loss` when `targets` are given.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
        tch::no_grad(|| {
            let out = self.forward(&image, &ids, &mask)?;
            let mut t = Tensors::new();
            if let Some(targets) = inputs.get("targets") {
                let loss = self.train_loss(&image, &ids, &mask, &targets.to_device(dev), alpha)?;
                t.insert("train_loss".into(), loss);
            }
            t.insert("image_embeds".into(), out.image_embeds);
            t.insert("logits".into(), out.logits);
            Ok(t)
        })
    }
}
