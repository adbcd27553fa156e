//! ALBEF pretraining, `models/model_pretrain.py:ALBEF`: image-text contrastive learning with a
//! feature queue and momentum distillation (ITC), image-text matching on hard negatives (ITM) and
//! masked language modelling with distillation (MLM).
//!
//! One [`AlbefPretrain::forward`] does, in the official order: clamp `temp` to `[0.001, 0.5]` (in
//! place), online image/text features, **momentum update first**, then the momentum features,
//! the similarities against `[in-batch momentum features ; queue]`, the ITC loss, the enqueue of the
//! momentum features, ITM on `[positives ; text vs hard-negative image ; hard-negative text vs
//! image]`, and the MLM loss on all 12 (text + fusion) layers. Hard negatives and MLM masks are
//! drawn with torch's global generator unless recorded draws are injected ([`PretrainDraws`]).
//!
//! Keys: `visual_encoder.*`, `text_encoder.bert.*`, `text_encoder.cls.predictions.*`,
//! `vision_proj.*`, `text_proj.*`, `itm_head.*`, `temp`, the momentum copies `*_m.*`, and the
//! buffers `image_queue` `[E, Q]`, `text_queue`, `queue_ptr` `[1]`.
use super::{
    check_image, check_text, complete_tied, init_momentum, input_on, interpolate_pos_embeds,
    mlm_tied_pairs, resize_patch_embeds, scalar_input, AlbefConfig, AlbefMaskedLm, MomentumPairs,
    SpecialTokens,
};
use crate::common::{
    itm_hard_negatives, momentum_features, named, project_cls, register_queues,
    var_store_accessors, ItmStep, POS_EMBED_KEYS,
};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::CrossInput;
use vlp_core::layers::linear_torch;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::itc::{itc_with_queue, ItcQueueInputs, ItcQueueOutput};
use vlp_objectives::itm::{HardNegativeSampler, NegativeDraws};
use vlp_objectives::mlm::{Mlm, MlmDraws, MlmMasker};

/// The online/momentum module pairs of `model_pretrain.py` (`self.model_pairs`).
pub const PRETRAIN_PAIRS: MomentumPairs = &[
    ("visual_encoder.", "visual_encoder_m."),
    ("vision_proj.", "vision_proj_m."),
    ("text_encoder.", "text_encoder_m."),
    ("text_proj.", "text_proj_m."),
];

/// One pretraining batch.
#[derive(Debug, Clone, Copy)]
pub struct PretrainBatch<'a> {
    /// `[B, 3, H, W]` normalised images.
    pub image: &'a Tensor,
    /// `[B, L]` token ids (`[CLS]` first; ALBEF's tokenizer adds no `[SEP]`).
    pub input_ids: &'a Tensor,
    /// `[B, L]` 1 = token, 0 = pad.
    pub attention_mask: &'a Tensor,
}

/// Where the MLM inputs of a forward come from.
#[derive(Debug, Default)]
pub enum MlmInput {
    /// Draw fresh masks with torch's global generator (`ALBEF.mask()`).
    #[default]
    Sample,
    /// Apply recorded raw draws (the four draws of `ALBEF.mask()`).
    Draws(MlmDraws),
    /// Use already-masked ids and their labels (-100 = not masked).
    Masked {
        /// `[B, L]` masked ids.
        input_ids: Tensor,
        /// `[B, L]` labels.
        labels: Tensor,
    },
}

/// The random draws of one forward: `None` / [`MlmInput::Sample`] = draw them.
#[derive(Debug, Default)]
pub struct PretrainDraws {
    /// ITM hard negatives (`torch.multinomial` draws).
    pub negatives: Option<NegativeDraws>,
    /// MLM masking.
    pub mlm: MlmInput,
}

/// Everything one pretraining forward computes (names = the fixture probes).
#[derive(Debug)]
pub struct PretrainOutput {
    /// ITC loss (with distillation).
    pub loss_ita: Tensor,
    /// ITM loss.
    pub loss_itm: Tensor,
    /// MLM loss (with distillation).
    pub loss_mlm: Tensor,
    /// `[B, 1+N, D]` ViT output.
    pub image_embeds: Tensor,
    /// `[B, L, D]` text-mode output.
    pub text_embeds: Tensor,
    /// `[B, E]` normalised image features.
    pub image_feat: Tensor,
    /// `[B, E]` normalised text features.
    pub text_feat: Tensor,
    /// `[B, 1+N, D]` momentum ViT output (after the update).
    pub image_embeds_m: Tensor,
    /// `[B, E]` momentum image features (enqueued).
    pub image_feat_m: Tensor,
    /// `[B, E]` momentum text features (enqueued).
    pub text_feat_m: Tensor,
    /// `[B, B+Q]` image-to-text logits.
    pub sim_i2t: Tensor,
    /// `[B, B+Q]` text-to-image logits.
    pub sim_t2i: Tensor,
    /// `[B, B+Q]` momentum image-to-text logits.
    pub sim_i2t_m: Tensor,
    /// `[B, B+Q]` momentum text-to-image logits.
    pub sim_t2i_m: Tensor,
    /// `[B, B]` multinomial weights of the negative images of each text.
    pub itm_weights_t2i: Tensor,
    /// `[B, B]` multinomial weights of the negative texts of each image.
    pub itm_weights_i2t: Tensor,
    /// The hard negatives used.
    pub negatives: NegativeDraws,
    /// `[B, L, D]` fusion output of the positive pairs.
    pub fusion_pos: Tensor,
    /// `[2B, L, D]` fusion output of the negative pairs.
    pub fusion_neg: Tensor,
    /// `[3B, 2]` ITM logits.
    pub itm_logits: Tensor,
    /// `[B, L]` masked ids seen by the MLM forward.
    pub mlm_input_ids: Tensor,
    /// `[B, L]` MLM labels.
    pub mlm_labels: Tensor,
    /// `[B, L, V]` online MLM logits.
    pub mlm_logits: Tensor,
    /// `[B, L, V]` momentum MLM logits (soft labels = their softmax).
    pub mlm_logits_m: Tensor,
    /// `temp` after the clamp.
    pub temp: Tensor,
}

impl PretrainOutput {
    /// The training loss `loss_mlm + loss_ita + loss_itm` (Pretrain.py).
    pub fn loss(&self) -> Tensor {
        &self.loss_mlm + &self.loss_ita + &self.loss_itm
    }

    /// The outputs by probe name (plus the draws used).
    pub fn into_named(self) -> Tensors {
        let v = self.mlm_logits.size()[2];
        let sel = self
            .mlm_labels
            .reshape([-1])
            .ne(-100)
            .nonzero()
            .squeeze_dim(1);
        let masked = self.mlm_logits.reshape([-1, v]).index_select(0, &sel);
        named([
            ("loss_ita", self.loss_ita),
            ("loss_itm", self.loss_itm),
            ("loss_mlm", self.loss_mlm),
            ("image_embeds", self.image_embeds),
            ("text_embeds", self.text_embeds),
            ("image_feat", self.image_feat),
            ("text_feat", self.text_feat),
            ("image_embeds_m", self.image_embeds_m),
            ("image_feat_m", self.image_feat_m),
            ("text_feat_m", self.text_feat_m),
            ("sim_i2t", self.sim_i2t),
            ("sim_t2i", self.sim_t2i),
            ("sim_i2t_m", self.sim_i2t_m),
            ("sim_t2i_m", self.sim_t2i_m),
            ("itm_weights_t2i", self.itm_weights_t2i),
            ("itm_weights_i2t", self.itm_weights_i2t),
            ("itm_neg_image_idx", self.negatives.neg_image_idx),
            ("itm_neg_text_idx", self.negatives.neg_text_idx),
            ("fusion_pos", self.fusion_pos),
            ("fusion_neg", self.fusion_neg),
            ("itm_logits", self.itm_logits),
            ("mlm_input_ids", self.mlm_input_ids),
            ("mlm_labels", self.mlm_labels),
            ("mlm_logits", self.mlm_logits),
            ("mlm_logits_masked", masked),
            ("mlm_logits_m", self.mlm_logits_m),
            ("temp_after_clamp", self.temp),
        ])
    }
}

/// `models/model_pretrain.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefPretrain {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (`BertForMaskedLM`).
    pub text_encoder: AlbefMaskedLm,
    /// `vision_proj.*` (vision width → embed_dim).
    pub vision_proj: nn::Linear,
    /// `text_proj.*`.
    pub text_proj: nn::Linear,
    /// `itm_head.*` (hidden → 2).
    pub itm_head: nn::Linear,
    /// `temp` (learned, clamped to [0.001, 0.5] at each forward).
    pub temp: Tensor,
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `vision_proj_m.*`.
    pub vision_proj_m: nn::Linear,
    /// `text_encoder_m.*`.
    pub text_encoder_m: AlbefMaskedLm,
    /// `text_proj_m.*`.
    pub text_proj_m: nn::Linear,
    /// `image_queue` `[E, Q]` (buffer).
    pub image_queue: Tensor,
    /// `text_queue` `[E, Q]` (buffer).
    pub text_queue: Tensor,
    /// `queue_ptr` `[1]` int64 (buffer).
    pub queue_ptr: Tensor,
    /// Special token ids for MLM masking (default bert-base-uncased).
    pub tokens: SpecialTokens,
    /// Dropout on (the official scripts train with dropout); off by default.
    pub train: bool,
}

impl AlbefPretrain {
    /// Builds the model (momentum copies initialised from the online weights, queues random
    /// unit columns, `queue_ptr` 0) on `device`.
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit();
        let (dv, dt, e) = (cfg.vision_width, cfg.bert.hidden_size, cfg.embed_dim);
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = AlbefMaskedLm::new(&(&r / "text_encoder"), &cfg.bert)?;
        let vision_proj = linear_torch(&r / "vision_proj", dv, e);
        let text_proj = linear_torch(&r / "text_proj", dt, e);
        let temp = r.var("temp", &[], nn::Init::Const(cfg.temp));
        let itm_head = linear_torch(&r / "itm_head", dt, 2);
        let visual_encoder_m = VisionTransformer::new(&(&r / "visual_encoder_m"), &vit);
        let vision_proj_m = linear_torch(&r / "vision_proj_m", dv, e);
        let text_encoder_m = AlbefMaskedLm::new(&(&r / "text_encoder_m"), &cfg.bert)?;
        let text_proj_m = linear_torch(&r / "text_proj_m", dt, e);
        let queues = register_queues(&r, e, cfg.queue_size, false, "queue_ptr");
        init_momentum(&vs, PRETRAIN_PAIRS)?;
        Ok(AlbefPretrain {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            vision_proj,
            text_proj,
            itm_head,
            temp,
            visual_encoder_m,
            vision_proj_m,
            text_encoder_m,
            text_proj_m,
            image_queue: queues.image,
            text_queue: queues.text,
            queue_ptr: queues.ptr,
            tokens: SpecialTokens::default(),
            train: false,
        })
    }

    /// The MLM masker of this model (`mlm_probability`, its special tokens, the BERT vocab).
    pub fn masker(&self) -> MlmMasker {
        MlmMasker {
            probability: self.cfg.mlm_probability,
            mask_id: self.tokens.mask,
            pad_id: self.tokens.pad,
            cls_id: self.tokens.cls,
            vocab_size: self.cfg.bert.vocab_size,
        }
    }

    /// `[B, 2]` ITM logits of captions `input_ids` (`[B, L]`, padding `mask`) against the
    /// images whose ViT output is `image_embeds` (`[B, 1+N, D]`, e.g.
    /// [`PretrainOutput::image_embeds`]): the text-only layers, the fusion layers and
    /// `itm_head` on the `[CLS]` state, as for ALBEF's ITM pairs. For extra negatives such as
    /// word-swapped captions ([`vlp_objectives::word_swap`]).
    pub fn itm_logits(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        image_embeds: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        check_text(input_ids, mask, "input_ids")?;
        if image_embeds.size().first() != input_ids.size().first() {
            return Err(VlpError::input(
                "image_embeds",
                format!(
                    "batch of {:?} differs from the captions' {:?}",
                    image_embeds.size(),
                    input_ids.size()
                ),
            ));
        }
        let text = self.text_encoder.bert.text(input_ids, mask, train);
        let cross = [CrossInput {
            states: image_embeds,
            mask: None,
            rows: None,
        }];
        let h = self.text_encoder.bert.fusion(&text, mask, &cross, train);
        Ok(h.select(1, 0).apply(&self.itm_head))
    }

    /// One pretraining step's forward (`model(image, text, alpha)`), updating the momentum
    /// encoders, `temp` (clamp) and the queues in place. Run it under `tch::no_grad` for
    /// evaluation; the online parts carry gradients otherwise.
    pub fn forward(
        &mut self,
        batch: &PretrainBatch,
        alpha: f64,
        draws: PretrainDraws,
    ) -> Result<PretrainOutput> {
        let (image, ids, mask) = (batch.image, batch.input_ids, batch.attention_mask);
        check_image(image, "image")?;
        check_text(ids, mask, "input_ids")?;
        let b = image.size()[0];
        if ids.size()[0] != b {
            return Err(VlpError::input(
                "input_ids",
                format!("batch {} differs from the images' {b}", ids.size()[0]),
            ));
        }
        let train = self.train;
        tch::no_grad(|| {
            let _ = self.temp.shallow_clone().clamp_(0.001, 0.5);
        });
        let temp = self.temp.shallow_clone();

        let image_embeds = self.visual_encoder.forward_t(image, train);
        let image_feat = project_cls(&image_embeds, &self.vision_proj);
        let text_embeds = self.text_encoder.bert.text(ids, mask, train);
        let text_feat = project_cls(&text_embeds, &self.text_proj);

        let (image_embeds_m, image_feat_m, text_feat_m) = momentum_features(
            &self.vs,
            PRETRAIN_PAIRS,
            self.cfg.momentum,
            || self.visual_encoder_m.forward_t(image, train),
            &self.vision_proj_m,
            || self.text_encoder_m.bert.text(ids, mask, train),
            &self.text_proj_m,
        )?;
        let ItcQueueOutput {
            loss: loss_ita,
            sim_i2t,
            sim_t2i,
            sim_i2t_m,
            sim_t2i_m,
        } = itc_with_queue(&ItcQueueInputs {
            image_feat: &image_feat,
            text_feat: &text_feat,
            image_feat_m: &image_feat_m,
            text_feat_m: &text_feat_m,
            image_queue: &self.image_queue,
            text_queue: &self.text_queue,
            idx: None,
            queue_ptr: &self.queue_ptr,
            temp: &temp,
            alpha,
            distill: true,
        })?;

        // ITM with hard negatives.
        let itm = itm_hard_negatives(
            ItmStep {
                sampler: HardNegativeSampler::albef(),
                sim_i2t: &sim_i2t.narrow(1, 0, b),
                sim_t2i: &sim_t2i.narrow(1, 0, b),
                positives: None,
                draws: draws.negatives,
                text: &text_embeds,
                mask,
                image_embeds: &image_embeds,
                itm_head: &self.itm_head,
            },
            |t, m, i, rows| {
                let cross = [CrossInput::gathered(i, rows)];
                self.text_encoder.bert.fusion(t, m, &cross, train)
            },
        )?;
        let cross = [CrossInput {
            states: &image_embeds,
            mask: None,
            rows: None,
        }];

        // MLM with distillation.
        let masker = self.masker();
        let (mlm_input_ids, mlm_labels) = match draws.mlm {
            MlmInput::Masked { input_ids, labels } => {
                check_text(&input_ids, &labels, "mlm_input_ids")?;
                (
                    input_ids.to_device(ids.device()),
                    labels.to_device(ids.device()),
                )
            }
            MlmInput::Draws(d) => masker.try_apply(ids, &d)?,
            MlmInput::Sample => {
                let d = masker.draw(ids);
                masker.try_apply(ids, &d)?
            }
        };
        let mlm_logits_m = tch::no_grad(|| {
            let cross_m = [CrossInput {
                states: &image_embeds_m,
                mask: None,
                rows: None,
            }];
            let h = self
                .text_encoder_m
                .bert
                .multimodal(&mlm_input_ids, mask, &cross_m, train);
            self.text_encoder_m.cls.forward(&h)
        });
        let h = self
            .text_encoder
            .bert
            .multimodal(&mlm_input_ids, mask, &cross, train);
        let mlm_logits = self.text_encoder.cls.forward(&h);
        let loss_mlm =
            Mlm::default().try_loss(&mlm_logits, &mlm_labels, Some(&mlm_logits_m), alpha)?;

        Ok(PretrainOutput {
            loss_ita,
            loss_mlm,
            image_embeds,
            text_embeds,
            image_feat,
            text_feat,
            image_embeds_m,
            image_feat_m,
            text_feat_m,
            sim_i2t,
            sim_t2i,
            sim_i2t_m,
            sim_t2i_m,
            loss_itm: itm.loss,
            itm_weights_t2i: itm.weights_t2i,
            itm_weights_i2t: itm.weights_i2t,
            negatives: itm.negatives,
            fusion_pos: itm.fusion_pos,
            fusion_neg: itm.fusion_neg,
            itm_logits: itm.logits,
            mlm_input_ids,
            mlm_labels,
            mlm_logits,
            mlm_logits_m,
            temp: self.temp.detach().copy(),
        })
    }
}

/// Reads the recorded draws of a fixture (`itm_neg_*`, `mlm_input_ids`/`mlm_labels` or the raw
/// `mlm_draw_*`), on `device`.
pub(crate) fn named_draws(inputs: &Tensors, prefix: &str, device: Device) -> PretrainDraws {
    let get = |n: &str| {
        inputs
            .get(&format!("{prefix}{n}"))
            .map(|t| t.to_device(device))
    };
    let negatives = match (get("itm_neg_image_idx"), get("itm_neg_text_idx")) {
        (Some(i), Some(t)) => Some(NegativeDraws::from_indices(i, t)),
        _ => None,
    };
    let mlm = match (get("mlm_input_ids"), get("mlm_labels")) {
        (Some(input_ids), Some(labels)) => MlmInput::Masked { input_ids, labels },
        _ => match (
            get("mlm_draw_masked"),
            get("mlm_draw_replaced"),
            get("mlm_draw_random"),
            get("mlm_draw_random_words"),
        ) {
            (Some(masked), Some(replaced), Some(random), Some(random_words)) => {
                MlmInput::Draws(MlmDraws {
                    masked,
                    replaced,
                    random,
                    random_words,
                })
            }
            _ => MlmInput::Sample,
        },
    };
    PretrainDraws { negatives, mlm }
}

impl VlpModel for AlbefPretrain {
    var_store_accessors!();
    /// `Pretrain.py` (not resuming): `visual_encoder(_m).pos_embed` interpolated to the model's
    /// patch grid. Tied entries a checkpoint omits (`cls.predictions.decoder.*`) are filled from
    /// their partners; present ones must equal them.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        let mut pairs = mlm_tied_pairs("text_encoder.").to_vec();
        pairs.extend(mlm_tied_pairs("text_encoder_m."));
        complete_tied(&mut sd, &pairs)?;
        Ok(sd)
    }
    /// Inputs: `image`, `input_ids`, `attention_mask`, `alpha` (else the MANIFEST's / config's),
    /// optional recorded draws `itm_neg_image_idx`, `itm_neg_text_idx`, `mlm_input_ids` +
    /// `mlm_labels` (or `mlm_draw_*`). Outputs: [`PretrainOutput::into_named`].
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
        let draws = named_draws(inputs, "", dev);
        let batch = PretrainBatch {
            image: &image,
            input_ids: &ids,
            attention_mask: &mask,
        };
        let out = tch::no_grad(|| self.forward(&batch, alpha, draws))?;
        Ok(out.into_named())
    }
}
