//! ALBEF with a **classifier** VQA head — a vlp-rs addition, not an official ALBEF class.
//!
//! The official ALBEF answers with a 6-layer answer decoder ranked over an answer list
//! ([`super::vqa::AlbefVqa`]); ViLT, VLMo, BEiT-3 and UNITER instead classify the fused `[CLS]`
//! over a fixed answer vocabulary. This type puts that head on ALBEF's encoders: the
//! multimodal text encoder cross-attends to the image from `fusion_layer` on, and
//! `vqa_head = Linear(D, 2D) → LayerNorm(2D) → GELU → Linear(2D, n_answers)` (ViLT's / VLMo's
//! `vqa_classifier` layout) reads the fused `[CLS]`. Training uses, by default, the soft-score
//! binary cross-entropy of ViLT/VLMo (`BCE-with-logits(mean) × n_answers`) against targets built
//! from the annotators' answers ([`soft_target_bce`]), or the softmax cross-entropy against the
//! normalised soft targets ([`soft_target_ce`], [`VqaLoss::SoftmaxCe`]), which learns much faster
//! in few steps (BCE first pushes every one of the `n` logits down).
//!
//! A classifier learns in hundreds of steps what the decoder needs thousands for, which is what
//! a CPU budget affords (the quickstart uses it, see `docs/quickstart.md`).
//!
//! Keys: `visual_encoder.*`, `text_encoder.*` (as the fine-tuned ALBEF classes), `vqa_head.{0,1,3}.*`.
//! A pretraining checkpoint loads with the official fine-tuning renames (`text_encoder.bert.` →
//! `text_encoder.`); its pretraining-only modules, momentum copies and an ALBEF VQA checkpoint's
//! `text_decoder.*` are dropped; `vqa_head` then stays at its initialisation (load with
//! `LoadMode::Partial`).
use super::{
    check_image, check_text, cls_token, drop_prefixes, has_pretrain_layout, input_on,
    interpolate_pos_embeds, rename_pretrain_text, resize_patch_embeds, AlbefBert, AlbefConfig,
    PRETRAIN_ONLY_PREFIXES,
};
use crate::common::{var_store_accessors, POS_EMBED_KEYS};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::CrossInput;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::layers::{layer_norm, linear};
use vlp_core::{Result, VlpError};

/// `vqa_head = Sequential(Linear(D, 2D), LayerNorm(2D), GELU, Linear(2D, n))`
/// (`vqa_head.0.*`, `vqa_head.1.*`, `vqa_head.3.*`).
#[derive(Debug)]
pub struct VqaHead {
    fc0: nn::Linear,
    ln1: nn::LayerNorm,
    fc3: nn::Linear,
}

impl VqaHead {
    /// Builds under `p` for hidden size `d` and `n` answers (LayerNorm eps `eps`).
    pub fn new(p: &nn::Path, d: i64, n: i64, eps: f64) -> Self {
        VqaHead {
            fc0: linear(p / "0", d, 2 * d),
            ln1: layer_norm(p / "1", 2 * d, eps),
            fc3: linear(p / "3", 2 * d, n),
        }
    }

    /// Logits `[B, n]` of `[B, D]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.fc0)
            .apply(&self.ln1)
            .gelu("none")
            .apply(&self.fc3)
    }
}

/// The training loss of the classifier head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VqaLoss {
    /// ViLT / VLMo / BEiT-3: [`soft_target_bce`].
    #[default]
    Bce,
    /// Softmax cross-entropy against the soft targets normalised to sum 1 ([`soft_target_ce`]).
    SoftmaxCe,
}

/// ALBEF encoders + a classifier over `num_answers` answers (see the module documentation).
#[derive(Debug)]
pub struct AlbefVqaClassifier {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (multimodal from `fusion_layer` on).
    pub text_encoder: AlbefBert,
    /// `vqa_head.*`.
    pub vqa_head: VqaHead,
    /// Size of the answer vocabulary.
    pub num_answers: i64,
    /// The training loss (default [`VqaLoss::Bce`]).
    pub loss: VqaLoss,
    /// Dropout on (off by default).
    pub train: bool,
}

impl AlbefVqaClassifier {
    /// Builds the model on `device` for `num_answers` answers (no momentum copies: the
    /// classifier is trained without distillation).
    pub fn new(cfg: &AlbefConfig, num_answers: i64, device: Device) -> Result<Self> {
        cfg.validate()?;
        if num_answers < 1 {
            return Err(VlpError::input(
                "num_answers",
                format!("must be at least 1, got {num_answers}"),
            ));
        }
        let vs = VarStore::new(device);
        let r = vs.root();
        let d = cfg.bert.hidden_size;
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &cfg.vit());
        let text_encoder = AlbefBert::new(&(&r / "text_encoder"), &cfg.bert)?;
        let vqa_head = VqaHead::new(&(&r / "vqa_head"), d, num_answers, cfg.bert.layer_norm_eps);
        Ok(AlbefVqaClassifier {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            vqa_head,
            num_answers,
            loss: VqaLoss::default(),
            train: false,
        })
    }

    /// ViT output `[B, 1+N, D]` of `[B, 3, H, W]` images.
    pub fn image_embeds(&self, image: &Tensor) -> Result<Tensor> {
        check_image(image, "image")?;
        Ok(self.visual_encoder.forward_t(image, self.train))
    }

    /// Logits `[B, n_answers]` of questions over already encoded images (`image_embeds`
    /// `[B, 1+N, D]`, one row per question).
    pub fn logits(
        &self,
        image_embeds: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
    ) -> Result<Tensor> {
        check_text(question_ids, question_mask, "question_ids")?;
        if image_embeds.size()[0] != question_ids.size()[0] {
            return Err(VlpError::input(
                "question_ids",
                format!(
                    "{} questions for {} image rows",
                    question_ids.size()[0],
                    image_embeds.size()[0]
                ),
            ));
        }
        Ok(self.logits_gathered(image_embeds, None, question_ids, question_mask))
    }

    /// Logits of questions over images encoded once each: question `q` cross-attends to
    /// `image_embeds[rows[q]]` (checked by the caller), so each image's cross-attention
    /// keys/values are projected once.
    fn logits_gathered(
        &self,
        image_embeds: &Tensor,
        rows: Option<&Tensor>,
        question_ids: &Tensor,
        question_mask: &Tensor,
    ) -> Tensor {
        let cross = [CrossInput::gathered(image_embeds, rows)];
        let h = self
            .text_encoder
            .multimodal(question_ids, question_mask, &cross, self.train);
        self.vqa_head.forward(&cls_token(&h))
    }

    /// Logits of `B` questions about `B` images (one image per question).
    pub fn forward(
        &self,
        image: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
    ) -> Result<Tensor> {
        let emb = self.image_embeds(image)?;
        self.logits(&emb, question_ids, question_mask)
    }

    /// Logits of `Q` questions about `B ≤ Q` images, each image encoded once: question `q` is
    /// about image `image_index[q]`.
    pub fn forward_grouped(
        &self,
        image: &Tensor,
        image_index: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
    ) -> Result<Tensor> {
        let idx = super::check_row_index(
            image_index,
            question_ids.size()[0],
            image.size()[0],
            "image_index",
            "one image row per question",
            image.device(),
        )?;
        check_text(question_ids, question_mask, "question_ids")?;
        let emb = self.image_embeds(image)?;
        Ok(self.logits_gathered(&emb, Some(&idx), question_ids, question_mask))
    }

    /// The training loss of `logits` against soft `targets` `[B, n_answers]` (by
    /// [`AlbefVqaClassifier::loss`]).
    pub fn train_loss(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if targets.size() != logits.size() {
            return Err(VlpError::input(
                "targets",
                format!(
                    "expected {:?} (questions × answers), got {:?}",
                    logits.size(),
                    targets.size()
                ),
            ));
        }
        Ok(match self.loss {
            VqaLoss::Bce => soft_target_bce(logits, targets),
            VqaLoss::SoftmaxCe => soft_target_ce(logits, targets),
        })
    }
}

/// ViLT / VLMo's VQA loss: `binary_cross_entropy_with_logits(logits, targets) · n_answers`
/// (mean over every element, so the sum over answers averaged over questions).
pub fn soft_target_bce(logits: &Tensor, targets: &Tensor) -> Tensor {
    let n = logits.size().last().copied().unwrap_or(1) as f64;
    logits
        .to_kind(Kind::Float)
        .binary_cross_entropy_with_logits::<Tensor>(
            &targets.to_kind(Kind::Float),
            None,
            None,
            tch::Reduction::Mean,
        )
        * n
}

/// `mean_q( -Σ_a t̂_qa · log_softmax(z_q)_a )` with `t̂_q = t_q / Σ_a t_qa`; questions without
/// any target (no answer in the vocabulary) are left out of the mean (0 when there are none).
pub fn soft_target_ce(logits: &Tensor, targets: &Tensor) -> Tensor {
    let t = targets.to_kind(Kind::Float);
    let mass = t.sum_dim_intlist(1, true, Kind::Float);
    let keep = mass.gt(0.0).to_kind(Kind::Float);
    let norm = &t / mass.clamp_min(1e-12);
    let per_q = -(norm * logits.to_kind(Kind::Float).log_softmax(1, Kind::Float)).sum_dim_intlist(
        1,
        true,
        Kind::Float,
    );
    (per_q * &keep).sum(Kind::Float) / keep.sum(Kind::Float).clamp_min(1.0)
}

impl VlpModel for AlbefVqaClassifier {
    var_store_accessors!();
    /// `visual_encoder.pos_embed` interpolated to the model's grid; a pretraining checkpoint
    /// gets the official fine-tuning renames (`text_encoder.bert.` → `text_encoder.`); the
    /// modules this class lacks (pretraining heads and queues, momentum copies, an ALBEF VQA
    /// checkpoint's `text_decoder.*`) are dropped.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        if has_pretrain_layout(&sd) {
            rename_pretrain_text(&mut sd);
            drop_prefixes(&mut sd, PRETRAIN_ONLY_PREFIXES);
        }
        drop_prefixes(
            &mut sd,
            &[
                "visual_encoder_m.",
                "text_encoder_m.",
                "text_decoder.",
                "text_decoder_m.",
            ],
        );
        Ok(sd)
    }
    /// Inputs: `image`, `question_ids`, `question_mask`, optional `image_index` (grouped) and
    /// `targets` (`[B, n]` soft scores). Outputs: `logits`, and `loss` with `targets`.
    fn forward_named(&mut self, inputs: &Tensors, _extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "question_ids", dev)?;
        let mask = input_on(inputs, "question_mask", dev)?;
        tch::no_grad(|| {
            let logits = match inputs.get("image_index") {
                Some(ix) => self.forward_grouped(&image, ix, &ids, &mask)?,
                None => self.forward(&image, &ids, &mask)?,
            };
            let mut t = Tensors::new();
            if let Some(targets) = inputs.get("targets") {
                t.insert(
                    "loss".into(),
                    self.train_loss(&logits, &targets.to_device(dev))?,
                );
            }
            t.insert("logits".into(), logits);
            Ok(t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> AlbefConfig {
        super::super::tiny_test_config(2, 1)
    }

    #[test]
    fn grouped_forward_equals_one_image_per_question() {
        tch::manual_seed(0);
        let m = AlbefVqaClassifier::new(&tiny(), 7, Device::Cpu).unwrap();
        let img = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let which = Tensor::from_slice(&[0i64, 1, 1, 0, 1]);
        let ids = Tensor::randint(50, [5, 6], (Kind::Int64, Device::Cpu)).clamp_min(1);
        let mask = Tensor::ones([5, 6], (Kind::Int64, Device::Cpu));
        let a = m.forward_grouped(&img, &which, &ids, &mask).unwrap();
        let b = m
            .forward(&img.index_select(0, &which), &ids, &mask)
            .unwrap();
        assert_eq!(a.size(), [5, 7]);
        assert!(a.allclose(&b, 1e-5, 1e-6, false));
        let bad = Tensor::from_slice(&[0i64, 2, 1, 0, 1]);
        let e = m.forward_grouped(&img, &bad, &ids, &mask).unwrap_err();
        assert!(e.to_string().contains("image_index"), "{e}");
    }

    #[test]
    fn soft_bce_matches_its_definition_and_targets_are_checked() {
        let logits = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 0.3, 0.6]).view([2, 2]);
        let got = soft_target_bce(&logits, &targets).double_value(&[]);
        let l = [0.5f64, -1.0, 2.0, 0.0];
        let t = [1.0f64, 0.0, 0.3, 0.6];
        let want: f64 = l
            .iter()
            .zip(t)
            .map(|(&x, y)| x.max(0.0) - x * y + (1.0 + (-x.abs()).exp()).ln())
            .sum::<f64>()
            / 4.0
            * 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let m = AlbefVqaClassifier::new(&tiny(), 2, Device::Cpu).unwrap();
        assert!(m.train_loss(&logits, &targets.view([4])).is_err());
    }

    #[test]
    fn soft_ce_normalises_targets_and_skips_unlabelled_questions() {
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0, 0.5, 0.5]).view([3, 2]);
        // q0: one answer; q1: 0.3 / 0.6 (normalised to 1/3, 2/3); q2: no target.
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 0.3, 0.6, 0.0, 0.0]).view([3, 2]);
        let got = soft_target_ce(&logits, &targets).double_value(&[]);
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let q0 = -(1.0 - lse(1.0, 0.0));
        let q1 = -((0.0 - lse(0.0, 2.0)) / 3.0 + 2.0 * (2.0 - lse(0.0, 2.0)) / 3.0);
        assert!((got - (q0 + q1) / 2.0).abs() < 1e-6, "{got}");
        let none = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        assert_eq!(
            soft_target_ce(&logits.narrow(0, 0, 2), &none).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn a_pretraining_checkpoint_loads_all_but_the_head() {
        tch::manual_seed(0);
        let cfg = tiny();
        let pre = super::super::AlbefPretrain::new(&cfg, Device::Cpu).unwrap();
        let sd = vlp_core::checkpoint::state_dict_of(pre.var_store());
        let mut m = AlbefVqaClassifier::new(&cfg, 4, Device::Cpu).unwrap();
        let sd = m.adapt_state_dict(sd).unwrap();
        let report = vlp_core::checkpoint::load_state_dict(
            m.var_store_mut(),
            &sd,
            vlp_core::checkpoint::LoadMode::Partial,
            "pretrain",
        )
        .unwrap();
        assert!(report.unexpected.is_empty(), "{report}");
        assert!(
            report
                .missing
                .iter()
                .all(|k| k.key.starts_with("vqa_head.")),
            "{report}"
        );
        assert!(!report.missing.is_empty());
    }
}
