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

    #[allow(clippy::too_many_arguments)]
    fn logits_of(
        vit: &VisionTransformer,
        bert: &AlbefBert,
        head: &ClsHead,
        image: &Tensor,
        rows: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let image_embeds = vit.forward_t(image, train);
        let cross = [CrossInput::gathered(&image_embeds, rows)];
        let h = bert.multimodal(ids, mask, &cross, train);
        let logits = head.forward(&cls_token(&h));
        (image_embeds, logits)
    }

    /// [`Self::logits_of`] with this model's (not the momentum model's) modules.
    fn own_logits(
        &self,
        image: &Tensor,
        rows: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
    ) -> (Tensor, Tensor) {
        Self::logits_of(
            &self.visual_encoder,
            &self.text_encoder,
            &self.cls_head,
            image,
            rows,
            ids,
            mask,
            self.train,
        )
    }

    /// Checks `B` texts against the images: one image per text without `image_index`; with it,
    /// `image_index` is `[B]` with values in `0..P` (returned as Int64 on the images' device).
    fn check_grouped(
        image: &Tensor,
        image_index: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Option<Tensor>> {
        check_image(image, "image")?;
        check_text(ids, mask, "input_ids")?;
        let Some(ix) = image_index else {
            if image.size()[0] != ids.size()[0] {
                return Err(VlpError::input(
                    "input_ids",
                    format!("{} texts for {} images", ids.size()[0], image.size()[0]),
                ));
            }
            return Ok(None);
        };
        super::check_row_index(
            ix,
            ids.size()[0],
            image.size()[0],
            "image_index",
            "one image row per hypothesis",
            image.device(),
        )
        .map(Some)
    }

    /// Evaluation forward (`train=False`): image embeddings and `[B, 3]` logits.
    pub fn forward(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        self.forward_grouped(image, None, input_ids, attention_mask)
    }

    /// [`AlbefVe::forward`] for `B` hypotheses about `P ≤ B` images, each image encoded once:
    /// hypothesis `b` is about image `image_index[b]` (`None`: `P = B`). Image embeddings
    /// `[P, 1+N, D]`.
    pub fn forward_grouped(
        &self,
        image: &Tensor,
        image_index: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        let idx = Self::check_grouped(image, image_index, input_ids, attention_mask)?;
        let (image_embeds, logits) =
            self.own_logits(image, idx.as_ref(), input_ids, attention_mask);
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
        self.train_loss_grouped(image, None, input_ids, attention_mask, targets, alpha)
    }

    /// [`AlbefVe::train_loss`] over grouped hypotheses (see [`AlbefVe::forward_grouped`]).
    pub fn train_loss_grouped(
        &self,
        image: &Tensor,
        image_index: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        targets: &Tensor,
        alpha: f64,
    ) -> Result<Tensor> {
        let idx = Self::check_grouped(image, image_index, input_ids, attention_mask)?;
        let (_, logits) = self.own_logits(image, idx.as_ref(), input_ids, attention_mask);
        let momentum_logits = self.momentum.as_ref().map(|m| {
            let idx = idx.as_ref();
            move || {
                Self::logits_of(
                    &m.visual_encoder_m,
                    &m.text_encoder_m,
                    &m.cls_head_m,
                    image,
                    idx,
                    input_ids,
                    attention_mask,
                    self.train,
                )
                .1
            }
        });
        classifier_train_loss(&self.vs, VE_PAIRS, &logits, targets, alpha, momentum_logits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn grouped_images_equal_one_image_per_hypothesis() {
        tch::manual_seed(0);
        let m = AlbefVe::new(&super::super::tiny_test_config(4, 2), Device::Cpu).unwrap();
        let (k, opts) = (Kind::Float, (Kind::Int64, Device::Cpu));
        // Two images; five hypotheses about images 1, 0, 0, 1, 1.
        let img = Tensor::randn([2, 3, 32, 32], (k, Device::Cpu));
        let which = Tensor::from_slice(&[1i64, 0, 0, 1, 1]);
        let ids = Tensor::randint(50, [5, 6], opts).clamp_min(1);
        let mask = Tensor::ones([5, 6], opts);
        let a = m.forward_grouped(&img, Some(&which), &ids, &mask).unwrap();
        let per = img.index_select(0, &which);
        let b = m.forward(&per, &ids, &mask).unwrap();
        assert_eq!(a.logits.size(), [5, 3]);
        assert_eq!(a.image_embeds.size()[0], 2);
        assert!(a.logits.allclose(&b.logits, 1e-5, 1e-6, false));
        let targets = Tensor::from_slice(&[2i64, 0, 1, 1, 0]);
        let la = m
            .train_loss_grouped(&img, Some(&which), &ids, &mask, &targets, 0.0)
            .unwrap();
        let lb = m.train_loss(&per, &ids, &mask, &targets, 0.0).unwrap();
        assert!((la.double_value(&[]) - lb.double_value(&[])).abs() < 1e-5);
        for (bad, what) in [
            (Tensor::from_slice(&[0i64, 2, 1, 0, 1]), "0..2"),
            (
                Tensor::from_slice(&[0i64, 1]),
                "one image row per hypothesis",
            ),
        ] {
            let e = m
                .forward_grouped(&img, Some(&bad), &ids, &mask)
                .unwrap_err();
            assert!(
                e.to_string().contains("image_index") && e.to_string().contains(what),
                "{e}"
            );
        }
        let e = m.forward(&img, &ids, &mask).unwrap_err();
        assert!(e.to_string().contains("5 texts for 2 images"), "{e}");
    }
}
