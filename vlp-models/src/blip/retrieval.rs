//! BLIP image-text retrieval: `models/blip_retrieval.py:BLIP_Retrieval` (fine-tuning forward),
//! `models/blip_itm.py:BLIP_ITM` (the `itm` / `itc` heads of a retrieval checkpoint) and
//! `train_retrieval.py:evaluation` (the ranking rule).
//!
//! - [`BlipRetrieval::itm_cls`]: `BLIP_ITM.forward(match_head='itm')`, the image-grounded encoder
//!   over the caption **with `[CLS]` at position 0** (`blip_itm.py` does not swap in `[ENC]`,
//!   like HF's `BlipForImageTextRetrieval`), `itm_head` on position 0.
//! - [`BlipRetrieval::itc`]: `match_head='itc'`, `normalize(vision_proj(img[:,0])) @
//!   normalize(text_proj(text[:,0])).T` without temperature (`mode='text'`).
//! - [`BlipRetrieval::evaluate`]: ITC similarities of every image and text; for each query the
//!   `k_test` best candidates by ITC are re-scored with the ITM head over **`[ENC]`** ids; the
//!   final score is **`itm_logit[:, 1] + itc_sim`** (`train_retrieval.py:134,155`, unlike ALBEF),
//!   every other entry -100.
//! - [`BlipRetrieval::train_forward`]: momentum update first, ITC with multi-positive targets over
//!   `[idx ; idx_queue]` and distillation, enqueue (features and ids, one pointer `ptr_queue`),
//!   ITM with negatives drawn from the **in-batch online** similarities `softmax(feat @ feat.T /
//!   temp)` with every same-id pair zeroed (no epsilon).
//!
//! Keys: `visual_encoder.*`, `text_encoder.*`, `vision_proj`, `text_proj`, `itm_head`, `temp`, the
//! momentum copies `*_m.*`, `image_queue`, `text_queue`, `idx_queue` `[1, Q]` and `ptr_queue`
//! (sic, not `queue_ptr`).
use super::{opt_input, with_first_token, BlipConfig, BlipTokens, MedBert};
use crate::albef::pretrain::PRETRAIN_PAIRS;
use crate::albef::{
    check_image, check_text, cls_token, init_momentum, interpolate_pos_embeds, scalar_input,
    MomentumPairs,
};
use crate::common::{
    itm_hard_negatives, k_test, momentum_features, named, project_cls, register_queues,
    var_store_accessors, ItmStep, POS_EMBED_KEYS,
};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::linear_torch;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::itc::{itc_with_queue, ItcQueueInputs};
use vlp_objectives::itm::{same_id_positives, HardNegativeSampler, NegativeDraws};

/// The online/momentum module pairs of `blip_retrieval.py` (same as pretraining).
pub const RETRIEVAL_PAIRS: MomentumPairs = PRETRAIN_PAIRS;

/// The inference modules of `models/blip_itm.py:BLIP_ITM`, which are also the online half of
/// `BLIP_Retrieval`: ViT, text encoder, ITC projections and the ITM head, with the inference entry
/// points (features, ITM/ITC heads, the evaluation rule).
#[derive(Debug)]
pub struct ItmHeads {
    /// Special tokens (`[ENC]`).
    pub tokens: BlipTokens,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*`.
    pub text_encoder: MedBert,
    /// `vision_proj.*`.
    pub vision_proj: nn::Linear,
    /// `text_proj.*`.
    pub text_proj: nn::Linear,
    /// `itm_head.*`.
    pub itm_head: nn::Linear,
    /// Dropout on (off by default).
    pub train: bool,
}

/// `models/blip_itm.py:BLIP_ITM` (registry variant `itm`): [`ItmHeads`] in their own `VarStore`.
#[derive(Debug)]
pub struct BlipItm {
    vs: VarStore,
    /// The configuration.
    pub cfg: BlipConfig,
    /// The modules (also reachable through `Deref`).
    pub heads: ItmHeads,
}

/// `models/blip_retrieval.py:BLIP_Retrieval`: [`ItmHeads`] (reachable through `Deref`) plus
/// `temp`, the momentum copies and the queues.
#[derive(Debug)]
pub struct BlipRetrieval {
    vs: VarStore,
    /// The configuration.
    pub cfg: BlipConfig,
    /// The online modules.
    pub heads: ItmHeads,
    /// `temp` (clamped to [0.001, 0.5] by the training forward).
    pub temp: Tensor,
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `vision_proj_m.*`.
    pub vision_proj_m: nn::Linear,
    /// `text_encoder_m.*`.
    pub text_encoder_m: MedBert,
    /// `text_proj_m.*`.
    pub text_proj_m: nn::Linear,
    /// `image_queue` `[E, Q]`.
    pub image_queue: Tensor,
    /// `text_queue` `[E, Q]`.
    pub text_queue: Tensor,
    /// `idx_queue` `[1, Q]` int64 (image ids, -100 = empty).
    pub idx_queue: Tensor,
    /// `ptr_queue` `[1]` int64, shared by the three queues.
    pub ptr_queue: Tensor,
}

impl std::ops::Deref for BlipRetrieval {
    type Target = ItmHeads;
    fn deref(&self) -> &ItmHeads {
        &self.heads
    }
}

impl std::ops::DerefMut for BlipRetrieval {
    fn deref_mut(&mut self) -> &mut ItmHeads {
        &mut self.heads
    }
}

impl std::ops::Deref for BlipItm {
    type Target = ItmHeads;
    fn deref(&self) -> &ItmHeads {
        &self.heads
    }
}

impl std::ops::DerefMut for BlipItm {
    fn deref_mut(&mut self) -> &mut ItmHeads {
        &mut self.heads
    }
}

pub use crate::outputs::{RetrievalBatch, RetrievalScores, RetrievalTrainOutput};

impl ItmHeads {
    /// Builds the modules under `r` (the root) for `variant`'s ViT.
    pub fn new(r: &nn::Path, cfg: &BlipConfig, variant: &str) -> Result<Self> {
        let vit = cfg.vit_for(variant, false);
        let dv = vit.embed_dim;
        let med = cfg.med_for(Some(dv), cfg.text_vocab(false));
        let (dt, e) = (med.hidden_size, cfg.embed_dim);
        Ok(ItmHeads {
            tokens: cfg.tokens(false),
            visual_encoder: VisionTransformer::new(&(r / "visual_encoder"), &vit),
            text_encoder: MedBert::new(&(r / "text_encoder"), &med)?,
            vision_proj: linear_torch(r / "vision_proj", dv, e),
            text_proj: linear_torch(r / "text_proj", dt, e),
            itm_head: linear_torch(r / "itm_head", dt, 2),
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

    /// `[N, 2]` ITM logits of `N` pairs: the image-grounded encoder over `ids` `[N, L]` (used as
    /// given: `[ENC]` or `[CLS]` at position 0) and image states `[N, 1+P, D]`, `itm_head` on
    /// position 0.
    pub fn itm_logits(&self, ids: &Tensor, mask: &Tensor, image_embeds: &Tensor) -> Result<Tensor> {
        check_text(ids, mask, "input_ids")?;
        if image_embeds.size()[0] != ids.size()[0] {
            return Err(VlpError::input(
                "image_embeds",
                format!(
                    "{} images for {} texts",
                    image_embeds.size()[0],
                    ids.size()[0]
                ),
            ));
        }
        let h = self
            .text_encoder
            .multimodal(ids, mask, image_embeds, None, self.train);
        Ok(cls_token(&h).apply(&self.itm_head))
    }

    /// `BLIP_ITM.forward(image, caption, match_head='itm')`: `[B, 2]` logits of image `b` vs
    /// caption `b`, position 0 left as `[CLS]`.
    pub fn itm_cls(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let (emb, _) = self.image_features(image)?;
        self.itm_logits(input_ids, attention_mask, &emb)
    }

    /// `BLIP_ITM.forward(image, caption, match_head='itc')`: `[B_img, B_txt]` cosine similarities.
    pub fn itc(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let (_, fi) = self.image_features(image)?;
        let (_, ft) = self.text_features(input_ids, attention_mask)?;
        Ok(fi.matmul(&ft.tr()))
    }

    /// `train_retrieval.py:evaluation` on a gallery of images and texts (`[CLS]` ids, `max_length`
    /// 35): ITC similarities, then per query the top `k` candidates re-scored as ITM logit
    /// (`[ENC]` ids) + ITC sim, -100 elsewhere. `k` is capped at the number of candidates (the
    /// official `topk` would fail).
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
        let (_, text_feat) = self.text_features(input_ids, attention_mask)?;
        let enc_ids = with_first_token(input_ids, self.tokens.enc);
        let sims = image_feat.matmul(&text_feat.tr());
        let (ni, nt) = (sims.size()[0], sims.size()[1]);
        let dev = sims.device();
        let i2t = Tensor::full([ni, nt], -100.0, (Kind::Float, dev));
        let ki = k.min(nt);
        for i in 0..ni {
            let (top_sim, top) = sims.get(i).topk(ki, 0, true, true);
            let img = image_embeds.narrow(0, i, 1).repeat([ki, 1, 1]);
            let logit = self.itm_logits(
                &enc_ids.index_select(0, &top),
                &attention_mask.index_select(0, &top),
                &img,
            )?;
            let score = logit.select(1, 1) + top_sim;
            let _ = i2t.get(i).index_copy_(0, &top, &score.to_kind(Kind::Float));
        }
        let sims_t = sims.tr();
        let t2i = Tensor::full([nt, ni], -100.0, (Kind::Float, dev));
        let kt = k.min(ni);
        for t in 0..nt {
            let (top_sim, top) = sims_t.get(t).topk(kt, 0, true, true);
            let ids = enc_ids.narrow(0, t, 1).repeat([kt, 1]);
            let msk = attention_mask.narrow(0, t, 1).repeat([kt, 1]);
            let logit = self.itm_logits(&ids, &msk, &image_embeds.index_select(0, &top))?;
            let score = logit.select(1, 1) + top_sim;
            let _ = t2i.get(t).index_copy_(0, &top, &score.to_kind(Kind::Float));
        }
        Ok(RetrievalScores { sims, i2t, t2i })
    }
}

impl BlipItm {
    /// Builds `BLIP_ITM` on `device`.
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let heads = ItmHeads::new(&vs.root(), cfg, "retrieval")?;
        Ok(BlipItm {
            vs,
            cfg: cfg.clone(),
            heads,
        })
    }
}

impl BlipRetrieval {
    /// Builds the model on `device` (momentum copies = online weights, queues random unit columns,
    /// `idx_queue` -100, pointer 0, `temp` 0.07).
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let heads = ItmHeads::new(&r, cfg, "retrieval")?;
        let vit_m = cfg.vit_for("retrieval", true);
        let dv = vit_m.embed_dim;
        let med = heads.text_encoder.cfg.clone();
        let (dt, e, q) = (med.hidden_size, cfg.embed_dim, cfg.queue_size);
        let visual_encoder_m = VisionTransformer::new(&(&r / "visual_encoder_m"), &vit_m);
        let vision_proj_m = linear_torch(&r / "vision_proj_m", dv, e);
        let text_encoder_m = MedBert::new(&(&r / "text_encoder_m"), &med)?;
        let text_proj_m = linear_torch(&r / "text_proj_m", dt, e);
        let queues = register_queues(&r, e, q, true, "ptr_queue");
        let temp = r.var("temp", &[], nn::Init::Const(0.07));
        init_momentum(&vs, RETRIEVAL_PAIRS)?;
        Ok(BlipRetrieval {
            vs,
            cfg: cfg.clone(),
            heads,
            temp,
            visual_encoder_m,
            vision_proj_m,
            text_encoder_m,
            text_proj_m,
            image_queue: queues.image,
            text_queue: queues.text,
            idx_queue: queues.idx.expect("registered with_idx"),
            ptr_queue: queues.ptr,
        })
    }

    /// The fine-tuning forward `model(image, caption, alpha, idx)`: `temp` clamp, momentum update
    /// first, ITC over `[idx ; idx_queue]` targets with distillation, enqueue of features and ids,
    /// ITM on hard negatives from the online in-batch similarities (drawn unless `negatives` is
    /// given). Updates the queues in place. Single process: `negative_all_rank` gathers nothing.
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
        let train = self.train;
        tch::no_grad(|| {
            let _ = self.temp.shallow_clone().clamp_(0.001, 0.5);
        });
        let (image_embeds, image_feat) = self.image_features(image)?;
        let (_, text_feat) = self.text_features(input_ids, attention_mask)?;
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
        let loss_ita = itc_with_queue(&ItcQueueInputs {
            image_feat: &image_feat,
            text_feat: &text_feat,
            image_feat_m: &image_feat_m,
            text_feat_m: &text_feat_m,
            image_queue: &self.image_queue,
            text_queue: &self.text_queue,
            idx: Some((&idx, &self.idx_queue)),
            queue_ptr: &self.ptr_queue,
            temp: &temp,
            alpha,
            distill: true,
        })?
        .loss;

        let enc_ids = with_first_token(input_ids, self.tokens.enc);
        // Negatives from the in-batch online similarities (no queue columns, no epsilon).
        let (s_i2t, s_t2i) = tch::no_grad(|| {
            (
                image_feat.matmul(&text_feat.tr()) / &temp,
                text_feat.matmul(&image_feat.tr()) / &temp,
            )
        });
        let itm = itm_hard_negatives(
            ItmStep {
                sampler: HardNegativeSampler::albef(),
                sim_i2t: &s_i2t,
                sim_t2i: &s_t2i,
                positives: Some(&same_id_positives(&idx)),
                draws: negatives,
                text: &enc_ids,
                mask: attention_mask,
                image_embeds: &image_embeds,
                itm_head: &self.itm_head,
            },
            |ids, m, i, rows| self.text_encoder.multimodal_rows(ids, m, i, rows, train),
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

/// Modules of the pretraining class that `BLIP_Retrieval` does not have (ignored by the official
/// `strict=False` load).
pub const PRETRAIN_ONLY_PREFIXES: &[&str] = &["text_decoder.", "queue_ptr"];

/// Replaces the `sd` entries named in `keys` that are missing or whose shape differs from the
/// model's variable by the model's current value (what the official `load_checkpoint` leaves:
/// it drops mis-shaped keys and loads with `strict=False`). Returns how many were filled.
pub(crate) fn fill_from_model(vs: &VarStore, sd: &mut StateDict, keys: &[&str]) -> usize {
    let vars = vs.variables();
    let mut n = 0;
    for k in keys {
        let Some(v) = vars.get(*k) else { continue };
        let ok = sd.get(k).is_some_and(|t| t.size() == v.size());
        if !ok {
            sd.insert(*k, v.detach().to_device(Device::Cpu).copy());
            n += 1;
        }
    }
    n
}

impl ItmHeads {
    /// The inference probes of [`VlpModel::forward_named`] (see [`BlipRetrieval`]'s): features,
    /// `itm_logits_cls`, `itc_sim`, `itm_logits_enc_pairs` and the gallery evaluation.
    pub fn forward_named_inference(
        &self,
        inputs: &Tensors,
        extra: &serde_json::Value,
        k_default: Option<i64>,
    ) -> Result<Tensors> {
        let dev = self.visual_encoder_device();
        let get = |n: &str| opt_input(inputs, n, dev);
        let mut out = Tensors::new();
        tch::no_grad(|| -> Result<()> {
            if let (Some(image), Some(ids), Some(mask)) =
                (get("image"), get("input_ids"), get("attention_mask"))
            {
                let (image_embeds, image_feat) = self.image_features(&image)?;
                let (text_embeds, text_feat) = self.text_features(&ids, &mask)?;
                out.insert("itc_sim".into(), image_feat.matmul(&text_feat.tr()));
                if ids.size()[0] == image.size()[0] {
                    out.insert(
                        "itm_logits_cls".into(),
                        self.itm_logits(&ids, &mask, &image_embeds)?,
                    );
                }
                if let (Some(pi), Some(pt)) = (get("itm_pair_image_idx"), get("itm_pair_text_idx"))
                {
                    let enc = get("itm_enc_input_ids")
                        .unwrap_or_else(|| with_first_token(&ids, self.tokens.enc));
                    let logits = self.itm_logits(
                        &enc.index_select(0, &pt),
                        &mask.index_select(0, &pt),
                        &image_embeds.index_select(0, &pi),
                    )?;
                    out.insert("itm_logits_enc_pairs".into(), logits);
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
                let k = k_test(inputs, extra, k_default)?;
                let s = self.evaluate(&gi, &gids, &gmask, k)?;
                out.insert("gallery_sims_matrix".into(), s.sims);
                out.insert("score_matrix_i2t".into(), s.i2t);
                out.insert("score_matrix_t2i".into(), s.t2i);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn visual_encoder_device(&self) -> Device {
        self.vision_proj.ws.device()
    }
}

/// Keys of `BLIP_Retrieval` / pretraining checkpoints that `BLIP_ITM` does not have (ignored by
/// the official `strict=False` load).
pub const NOT_IN_ITM_PREFIXES: &[&str] = &[
    "visual_encoder_m.",
    "vision_proj_m.",
    "text_encoder_m.",
    "text_proj_m.",
    "text_decoder.",
    "image_queue",
    "text_queue",
    "idx_queue",
    "ptr_queue",
    "queue_ptr",
    "temp",
];

impl VlpModel for BlipItm {
    var_store_accessors!();
    /// `blip_itm(pretrained=...)` through `blip.py:load_checkpoint`: `visual_encoder.pos_embed`
    /// interpolated; the momentum copies, queues, `temp` and a pretraining decoder (keys the class
    /// lacks, ignored by the official `strict=False` load) dropped.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, &["visual_encoder.pos_embed"], grid)?;
        sd.retain(|k, _| !NOT_IN_ITM_PREFIXES.iter().any(|p| k.starts_with(p)));
        Ok(sd)
    }
    /// The inference inputs/outputs of [`BlipRetrieval`]'s `forward_named`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        self.heads
            .forward_named_inference(inputs, extra, self.cfg.k_test)
    }
}

impl VlpModel for BlipRetrieval {
    var_store_accessors!();
    /// `blip.py:load_checkpoint`: `visual_encoder(_m).pos_embed` interpolated to the model's
    /// grid. A pretraining checkpoint loses `text_decoder.*` and `queue_ptr` (not in this class);
    /// queues it lacks or whose shape differs (another `queue_size`) keep the class's
    /// initial values, as the official mismatch-dropping `strict=False` load leaves them.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        sd.retain(|k, _| !PRETRAIN_ONLY_PREFIXES.iter().any(|p| k.starts_with(p)));
        fill_from_model(
            &self.vs,
            &mut sd,
            &["image_queue", "text_queue", "idx_queue", "ptr_queue"],
        );
        Ok(sd)
    }
    /// Inputs (each group optional): `image`, `input_ids`, `attention_mask` (`[CLS]` ids) with
    /// `itm_enc_input_ids` (else derived), `itm_pair_image_idx`, `itm_pair_text_idx`;
    /// evaluation `gallery_images`, `gallery_input_ids`, `gallery_attention_mask` with `k_test`
    /// (input, MANIFEST or config); training `train_input_ids`, `train_attention_mask`,
    /// `train_idx`, `alpha`, optional `train_itm_neg_image_idx`/`train_itm_neg_text_idx`.
    /// Outputs: `image_embeds`, `text_embeds`, `image_feat`, `text_feat`, `itm_logits_cls`,
    /// `itc_sim`, `itm_logits_enc_pairs`, `gallery_sims_matrix`, `score_matrix_i2t`,
    /// `score_matrix_t2i`, `train_*`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let get = |n: &str| opt_input(inputs, n, dev);
        let mut out = self
            .heads
            .forward_named_inference(inputs, extra, self.cfg.k_test)?;
        if let (Some(image), Some(ids), Some(mask), Some(idx)) = (
            get("image"),
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
                image: &image,
                input_ids: &ids,
                attention_mask: &mask,
                idx: &idx,
            };
            let t = tch::no_grad(|| self.train_forward(&batch, alpha, neg))?;
            out.extend(named([
                ("train_loss_ita", t.loss_ita),
                ("train_loss_itm", t.loss_itm),
                ("train_itm_logits", t.itm_logits),
                ("train_itm_weights_t2i", t.itm_weights_t2i),
                ("train_itm_weights_i2t", t.itm_weights_i2t),
                ("train_image_feat_m", t.image_feat_m),
                ("train_text_feat_m", t.text_feat_m),
            ]));
        }
        Ok(out)
    }
}
