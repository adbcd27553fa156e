//! ALBEF image-text retrieval, `models/model_retrieval.py:ALBEF` (fine-tuning forward) and
//! `Retrieval.py:evaluation` (the ranking rule).
//!
//! Training differs from pretraining in four ways: no MLM, no `temp` clamp, an `idx_queue` of
//! image ids next to the feature queues so that the ITC targets are multi-positive
//! (`pos_idx / pos_idx.sum(1)` over `[idx ; idx_queue]`), and ITM negatives are drawn from
//! `softmax(sim[:, :B] + 1e-4)` with every same-image pair zeroed. Distillation is optional
//! (`distill`).
//!
//! Evaluation ([`AlbefRetrieval::evaluate`]): ITC similarities of every image and text, then for
//! each query the `k_test` best candidates by ITC are re-scored by the ITM head; **the final score
//! is the ITM logit `itm_head(...)[:, 1]` alone** (`Retrieval.py:137`), every other entry is
//! -100.
//!
//! Keys: as pretraining but `text_encoder.*` is a `BertModel` (no `bert.` infix, no MLM head),
//! plus the buffer `idx_queue` `[1, Q]`.
use super::pretrain::PRETRAIN_PAIRS;
use super::{
    check_image, check_text, cls_token, drop_prefixes, has_pretrain_layout, init_momentum,
    interpolate_pos_embeds, rename_pretrain_text, resize_patch_embeds, scalar_input, AlbefBert,
    AlbefConfig, MomentumPairs,
};
use crate::common::{
    itm_hard_negatives, k_test, momentum_features, named, project_cls, register_queues,
    var_store_accessors, ItmStep, POS_EMBED_KEYS,
};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::CrossInput;
use vlp_core::layers::linear_torch;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::itc::{itc_with_queue, ItcQueueInputs, ItcQueueOutput};
use vlp_objectives::itm::{same_id_positives, HardNegativeSampler, NegativeDraws};

/// The online/momentum module pairs of `model_retrieval.py` (same as pretraining).
pub const RETRIEVAL_PAIRS: MomentumPairs = PRETRAIN_PAIRS;

/// `models/model_retrieval.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefRetrieval {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (`BertModel`, no pooler).
    pub text_encoder: AlbefBert,
    /// `vision_proj.*`.
    pub vision_proj: nn::Linear,
    /// `text_proj.*`.
    pub text_proj: nn::Linear,
    /// `temp` (not clamped by this class).
    pub temp: Tensor,
    /// `itm_head.*`.
    pub itm_head: nn::Linear,
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `vision_proj_m.*`.
    pub vision_proj_m: nn::Linear,
    /// `text_encoder_m.*`.
    pub text_encoder_m: AlbefBert,
    /// `text_proj_m.*`.
    pub text_proj_m: nn::Linear,
    /// `image_queue` `[E, Q]`.
    pub image_queue: Tensor,
    /// `text_queue` `[E, Q]`.
    pub text_queue: Tensor,
    /// `idx_queue` `[1, Q]` int64 (image ids, -100 = empty).
    pub idx_queue: Tensor,
    /// `queue_ptr` `[1]` int64, shared by the three queues.
    pub queue_ptr: Tensor,
    /// Dropout on (off by default).
    pub train: bool,
}

pub use crate::outputs::{RetrievalBatch, RetrievalScores, RetrievalTrainOutput};

impl AlbefRetrieval {
    /// Builds the model on `device` (momentum copies = online weights, queues random unit columns,
    /// `idx_queue` -100, pointer 0).
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit();
        let (dv, dt, e, q) = (
            cfg.vision_width,
            cfg.bert.hidden_size,
            cfg.embed_dim,
            cfg.queue_size,
        );
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = AlbefBert::new(&(&r / "text_encoder"), &cfg.bert)?;
        let vision_proj = linear_torch(&r / "vision_proj", dv, e);
        let text_proj = linear_torch(&r / "text_proj", dt, e);
        let temp = r.var("temp", &[], nn::Init::Const(cfg.temp));
        let itm_head = linear_torch(&r / "itm_head", dt, 2);
        let visual_encoder_m = VisionTransformer::new(&(&r / "visual_encoder_m"), &vit);
        let vision_proj_m = linear_torch(&r / "vision_proj_m", dv, e);
        let text_encoder_m = AlbefBert::new(&(&r / "text_encoder_m"), &cfg.bert)?;
        let text_proj_m = linear_torch(&r / "text_proj_m", dt, e);
        let queues = register_queues(&r, e, q, true, "queue_ptr");
        init_momentum(&vs, RETRIEVAL_PAIRS)?;
        Ok(AlbefRetrieval {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            vision_proj,
            text_proj,
            temp,
            itm_head,
            visual_encoder_m,
            vision_proj_m,
            text_encoder_m,
            text_proj_m,
            image_queue: queues.image,
            text_queue: queues.text,
            idx_queue: queues.idx.expect("registered with_idx"),
            queue_ptr: queues.ptr,
            train: false,
        })
    }

    /// `(image_embeds [B, 1+N, D], image_feat [B, E])`: ViT output and normalised projection.
    pub fn image_features(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        check_image(image, "image")?;
        let emb = self.visual_encoder.forward_t(image, self.train);
        let feat = project_cls(&emb, &self.vision_proj);
        Ok((emb, feat))
    }

    /// `(text_embeds [B, L, D], text_feat [B, E])`: `mode='text'` output and normalised projection.
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        check_text(input_ids, attention_mask, "input_ids")?;
        let emb = self
            .text_encoder
            .text(input_ids, attention_mask, self.train);
        let feat = project_cls(&emb, &self.text_proj);
        Ok((emb, feat))
    }

    /// `[N, 2]` ITM logits of `N` pairs: fusion (`mode='fusion'`) of text states `[N, L, D]`
    /// (mask `[N, L]`) with image states `[N, 1+P, D]`, `itm_head` on `[CLS]`.
    pub fn itm_logits(
        &self,
        text_embeds: &Tensor,
        text_mask: &Tensor,
        image_embeds: &Tensor,
    ) -> Tensor {
        let cross = [CrossInput {
            states: image_embeds,
            mask: None,
            rows: None,
        }];
        let h = self
            .text_encoder
            .fusion(text_embeds, text_mask, &cross, self.train);
        cls_token(&h).apply(&self.itm_head)
    }

    /// `Retrieval.py:evaluation` on a gallery: ITC similarities, then per query the top `k`
    /// candidates re-scored by the ITM logit (final score = ITM logit only, -100 elsewhere).
    /// `k` is capped at the number of candidates (the official `topk` would fail).
    pub fn evaluate(
        &self,
        images: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        k: i64,
    ) -> Result<RetrievalScores> {
        if k < 1 {
            return Err(VlpError::input("k_test", format!("must be >= 1, got {k}")));
        }
        let (image_embeds, image_feat) = self.image_features(images)?;
        let (text_embeds, text_feat) = self.text_features(input_ids, attention_mask)?;
        let sims = image_feat.matmul(&text_feat.tr());
        let (ni, nt) = (sims.size()[0], sims.size()[1]);
        let dev = sims.device();
        let i2t = Tensor::full([ni, nt], -100.0, (Kind::Float, dev));
        let ki = k.min(nt);
        for i in 0..ni {
            let (_, top) = sims.get(i).topk(ki, 0, true, true);
            let img = image_embeds.narrow(0, i, 1).repeat([ki, 1, 1]);
            let score = self
                .itm_logits(
                    &text_embeds.index_select(0, &top),
                    &attention_mask.index_select(0, &top),
                    &img,
                )
                .select(1, 1);
            let _ = i2t.get(i).index_copy_(0, &top, &score.to_kind(Kind::Float));
        }
        let sims_t = sims.tr();
        let t2i = Tensor::full([nt, ni], -100.0, (Kind::Float, dev));
        let kt = k.min(ni);
        for t in 0..nt {
            let (_, top) = sims_t.get(t).topk(kt, 0, true, true);
            let txt = text_embeds.narrow(0, t, 1).repeat([kt, 1, 1]);
            let msk = attention_mask.narrow(0, t, 1).repeat([kt, 1]);
            let score = self
                .itm_logits(&txt, &msk, &image_embeds.index_select(0, &top))
                .select(1, 1);
            let _ = t2i.get(t).index_copy_(0, &top, &score.to_kind(Kind::Float));
        }
        Ok(RetrievalScores { sims, i2t, t2i })
    }

    /// The fine-tuning forward `model(image, text, alpha, idx)`: momentum update first, ITC with
    /// multi-positive targets over `[idx ; idx_queue]`, enqueue of features and ids, ITM on hard
    /// negatives (drawn unless `negatives` is given). Updates the queues in place.
    pub fn train_forward(
        &mut self,
        batch: &RetrievalBatch,
        alpha: f64,
        negatives: Option<NegativeDraws>,
    ) -> Result<RetrievalTrainOutput> {
        let RetrievalBatch {
            image,
            input_ids,
            attention_mask,
            idx,
        } = *batch;
        let (image_embeds, image_feat) = self.image_features(image)?;
        let (text_embeds, text_feat) = self.text_features(input_ids, attention_mask)?;
        let b = image_embeds.size()[0];
        if input_ids.size()[0] != b || idx.size() != [b] {
            return Err(VlpError::input(
                "idx",
                format!(
                    "expected [{b}] ids and {b} texts, got idx {:?}, texts {:?}",
                    idx.size(),
                    input_ids.size()
                ),
            ));
        }
        let train = self.train;
        let idx = idx.to_device(image.device()).to_kind(Kind::Int64);
        let temp = self.temp.shallow_clone();
        let (_, image_feat_m, text_feat_m) = momentum_features(
            &self.vs,
            RETRIEVAL_PAIRS,
            self.cfg.momentum,
            || self.visual_encoder_m.forward_t(image, train),
            &self.vision_proj_m,
            || self.text_encoder_m.text(input_ids, attention_mask, train),
            &self.text_proj_m,
        )?;
        let ItcQueueOutput {
            loss: loss_ita,
            sim_i2t,
            sim_t2i,
            ..
        } = itc_with_queue(&ItcQueueInputs {
            image_feat: &image_feat,
            text_feat: &text_feat,
            image_feat_m: &image_feat_m,
            text_feat_m: &text_feat_m,
            image_queue: &self.image_queue,
            text_queue: &self.text_queue,
            idx: Some((&idx, &self.idx_queue)),
            queue_ptr: &self.queue_ptr,
            temp: &temp,
            alpha,
            distill: self.cfg.distill,
        })?;

        // `softmax(sim[:, :bs] + 1e-4)`: the shift is kept for bit-faithfulness.
        let itm = itm_hard_negatives(
            ItmStep {
                sampler: HardNegativeSampler::albef(),
                sim_i2t: &(sim_i2t.narrow(1, 0, b) + 1e-4),
                sim_t2i: &(sim_t2i.narrow(1, 0, b) + 1e-4),
                positives: Some(&same_id_positives(&idx)),
                draws: negatives,
                text: &text_embeds,
                mask: attention_mask,
                image_embeds: &image_embeds,
                itm_head: &self.itm_head,
            },
            |t, m, i, rows| {
                let cross = [CrossInput::gathered(i, rows)];
                self.text_encoder.fusion(t, m, &cross, train)
            },
        )?;
        Ok(RetrievalTrainOutput {
            loss_ita,
            loss_itm: itm.loss,
            itm_logits: itm.logits,
            itm_weights_t2i: itm.weights_t2i,
            itm_weights_i2t: itm.weights_i2t,
            negatives: itm.negatives,
            image_feat_m,
            text_feat_m,
        })
    }
}

impl VlpModel for AlbefRetrieval {
    var_store_accessors!();
    /// `Retrieval.py`: `visual_encoder(_m).pos_embed` interpolated to the model's grid. A
    /// pretraining checkpoint (`text_encoder.bert.*`) gets `bert.` removed from its keys and its
    /// MLM heads (`text_encoder(_m).cls.*`, ignored by the official `strict=False` load) dropped;
    /// a checkpoint without `idx_queue` gets the class's initial one (all -100), as the official
    /// load leaves it.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        if has_pretrain_layout(&sd) {
            rename_pretrain_text(&mut sd);
            drop_prefixes(&mut sd, &["text_encoder.cls.", "text_encoder_m.cls."]);
        }
        if !sd.contains_key("idx_queue") {
            sd.insert(
                "idx_queue",
                Tensor::full([1, self.cfg.queue_size], -100, (Kind::Int64, Device::Cpu)),
            );
        }
        Ok(sd)
    }
    /// Inputs (each group optional): inference `image`, `input_ids`, `attention_mask` (+
    /// `itm_pair_image_idx`, `itm_pair_text_idx`); evaluation `gallery_images`,
    /// `gallery_input_ids`, `gallery_attention_mask` with `k_test` (input, MANIFEST or config);
    /// training `train_input_ids`, `train_attention_mask`, `train_idx`, `alpha`, optional
    /// `train_itm_neg_image_idx`/`train_itm_neg_text_idx`. Outputs: `image_embeds`,
    /// `text_embeds`, `image_feat`, `text_feat`, `itc_sim`, `itm_logits_pairs`,
    /// `gallery_sims_matrix`, `score_matrix_i2t`, `score_matrix_t2i`, `train_*`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let get = |n: &str| inputs.get(n).map(|t| t.to_device(dev));
        let mut out = Tensors::new();
        tch::no_grad(|| -> Result<()> {
            let image = get("image");
            if let (Some(image), Some(ids), Some(mask)) =
                (&image, get("input_ids"), get("attention_mask"))
            {
                let (image_embeds, image_feat) = self.image_features(image)?;
                let (text_embeds, text_feat) = self.text_features(&ids, &mask)?;
                out.insert("itc_sim".into(), image_feat.matmul(&text_feat.tr()));
                if let (Some(pi), Some(pt)) = (get("itm_pair_image_idx"), get("itm_pair_text_idx"))
                {
                    let logits = self.itm_logits(
                        &text_embeds.index_select(0, &pt),
                        &mask.index_select(0, &pt),
                        &image_embeds.index_select(0, &pi),
                    );
                    out.insert("itm_logits_pairs".into(), logits);
                }
                out.insert("image_embeds".into(), image_embeds);
                out.insert("text_embeds".into(), text_embeds);
                out.insert("image_feat".into(), image_feat);
                out.insert("text_feat".into(), text_feat);
            }
            if let (Some(gi), Some(gids), Some(gmask)) = (
                get("gallery_images"),
                get("gallery_input_ids"),
                get("gallery_attention_mask"),
            ) {
                let k = k_test(inputs, extra, self.cfg.k_test)?;
                let s = self.evaluate(&gi, &gids, &gmask, k)?;
                out.insert("gallery_sims_matrix".into(), s.sims);
                out.insert("score_matrix_i2t".into(), s.i2t);
                out.insert("score_matrix_t2i".into(), s.t2i);
            }
            if let (Some(image), Some(ids), Some(mask), Some(idx)) = (
                &image,
                get("train_input_ids"),
                get("train_attention_mask"),
                get("train_idx"),
            ) {
                let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
                let neg = match (
                    get("train_itm_neg_image_idx"),
                    get("train_itm_neg_text_idx"),
                ) {
                    (Some(i), Some(t)) => Some(NegativeDraws::from_indices(i, t)),
                    _ => None,
                };
                let batch = RetrievalBatch {
                    image,
                    input_ids: &ids,
                    attention_mask: &mask,
                    idx: &idx,
                };
                let t = self.train_forward(&batch, alpha, neg)?;
                out.extend(named([
                    ("train_loss_ita", t.loss_ita),
                    ("train_loss_itm", t.loss_itm),
                    ("train_itm_logits", t.itm_logits),
                    ("train_itm_weights_t2i", t.itm_weights_t2i),
                    ("train_itm_weights_i2t", t.itm_weights_i2t),
                    ("train_itm_neg_image_idx", t.negatives.neg_image_idx),
                    ("train_itm_neg_text_idx", t.negatives.neg_text_idx),
                    ("train_image_feat_m", t.image_feat_m),
                    ("train_text_feat_m", t.text_feat_m),
                    ("train_idx_queue_after", self.idx_queue.copy()),
                    ("train_queue_ptr_after", self.queue_ptr.copy()),
                ]));
            }
            Ok(())
        })?;
        if out.is_empty() {
            return Err(VlpError::input(
                "image",
                "no complete input group (inference, gallery or train_*)",
            ));
        }
        Ok(out)
    }
}
