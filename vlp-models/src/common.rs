//! Model-side pieces shared by the ALBEF and BLIP ports (the project rule: ITC with queue and
//! distillation, ITM hard negatives and momentum parts are reused, not copied). The tensor-only
//! steps live in `vlp_objectives` ([`vlp_objectives::itc::itc_with_queue`],
//! [`HardNegativeSampler`], [`Itm`]); what needs a model's fusion encoder is here.
use crate::albef::{cls_token, momentum_update, normalize, MomentumPairs};
use crate::Tensors;
use tch::{nn, Device, Kind, Tensor};
use vlp_core::{Result, VlpError};
use vlp_objectives::itm::{HardNegativeSampler, Itm, NegativeDraws};

/// The inputs of one ITM-with-hard-negatives step ([`itm_hard_negatives`]). `B` = batch.
#[derive(Debug)]
pub(crate) struct ItmStep<'a> {
    /// The sampler (its epsilon: BLIP pretraining `1e-4`, the others 0).
    pub sampler: HardNegativeSampler,
    /// `[B, B]` in-batch image-to-text logits: the weights of each image's negative texts.
    pub sim_i2t: &'a Tensor,
    /// `[B, B]` in-batch text-to-image logits: the weights of each text's negative images.
    pub sim_t2i: &'a Tensor,
    /// `[B, B]` bool pairs never drawn (same image id); `None` = the diagonal.
    pub positives: Option<&'a Tensor>,
    /// Recorded draws (fixtures); `None` = drawn with torch's global generator.
    pub draws: Option<NegativeDraws>,
    /// `[B, L, ...]` the text side handed to the fusion: ALBEF text states `[B, L, D]`, BLIP
    /// `[ENC]` ids `[B, L]`.
    pub text: &'a Tensor,
    /// `[B, L]` text padding mask.
    pub mask: &'a Tensor,
    /// `[B, 1+P, D]` image states.
    pub image_embeds: &'a Tensor,
    /// `itm_head` (hidden → 2) applied to the fused `[CLS]`.
    pub itm_head: &'a nn::Linear,
}

/// What [`itm_hard_negatives`] computes.
#[derive(Debug)]
pub(crate) struct ItmStepOutput {
    /// `[B, B]` multinomial weights of the negative images of each text.
    pub weights_t2i: Tensor,
    /// `[B, B]` multinomial weights of the negative texts of each image.
    pub weights_i2t: Tensor,
    /// The negatives used (with the `valid` mask of degenerate rows).
    pub negatives: NegativeDraws,
    /// `[B, L, D]` fusion output of the positive pairs.
    pub fusion_pos: Tensor,
    /// `[2B, L, D]` fusion output of `[text ; text[neg_text]]` × `[image[neg_image] ; image]`.
    pub fusion_neg: Tensor,
    /// `[3B, 2]` ITM logits, rows `[pos B ; neg-image B ; neg-text B]`.
    pub logits: Tensor,
    /// ITM loss, the rows of invalid (absent) negatives dropped.
    pub loss: Tensor,
}

/// Checks `[B]` negative indices in `0..b`.
pub(crate) fn check_negatives(neg: &NegativeDraws, b: i64) -> Result<()> {
    for (name, idx) in [
        ("itm_neg_image_idx", &neg.neg_image_idx),
        ("itm_neg_text_idx", &neg.neg_text_idx),
    ] {
        let ok = idx.size() == [b]
            && (b == 0 || (idx.min().int64_value(&[]) >= 0 && idx.max().int64_value(&[]) < b));
        if !ok {
            return Err(VlpError::input(
                name,
                format!("expected [{b}] indices in 0..{b}, got {:?}", idx.size()),
            ));
        }
    }
    Ok(())
}

/// The ITM loss over the logits, dropping the rows of invalid (absent) negatives.
pub(crate) fn itm_loss(logits: &Tensor, neg: &NegativeDraws) -> Result<Tensor> {
    let itm = Itm::default();
    if neg.all_valid() {
        itm.try_loss(logits, None)
    } else {
        itm.try_loss(
            logits,
            Some(&neg.itm_keep_mask().to_device(logits.device())),
        )
    }
}

/// ITM with hard negatives (ALBEF/BLIP pretraining and retrieval fine-tuning), in the official
/// order: fusion of the positive pairs, sampling weights, draws (unless injected), fusion of the
/// `2B` negative pairs, `itm_head` on the `[CLS]` of `[pos ; neg]`, loss.
/// `fuse(text, mask, image_states, rows) -> [N, L, D]` is the model's fusion encoder; text row
/// `n` is about image `rows[n]` (`None`: image row `n`), so the negatives' images are encoded by
/// the cross-attention once each instead of once per pair.
pub(crate) fn itm_hard_negatives(
    x: ItmStep,
    fuse: impl Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor,
) -> Result<ItmStepOutput> {
    let fusion_pos = fuse(x.text, x.mask, x.image_embeds, None);
    let weights_i2t = x.sampler.try_weights(x.sim_i2t, x.positives)?;
    let weights_t2i = x.sampler.try_weights(x.sim_t2i, x.positives)?;
    let negatives = match x.draws {
        Some(d) => d,
        None => x.sampler.sample(&weights_t2i, &weights_i2t)?,
    };
    check_negatives(&negatives, x.text.size()[0])?;
    let dev = x.text.device();
    let ni = negatives.neg_image_idx.to_device(dev);
    let nt = negatives.neg_text_idx.to_device(dev);
    let b = x.image_embeds.size()[0];
    let image_rows = Tensor::cat(&[ni, Tensor::arange(b, (Kind::Int64, dev))], 0);
    let text_all = Tensor::cat(&[x.text.shallow_clone(), x.text.index_select(0, &nt)], 0);
    let mask_all = Tensor::cat(&[x.mask.shallow_clone(), x.mask.index_select(0, &nt)], 0);
    let fusion_neg = fuse(&text_all, &mask_all, x.image_embeds, Some(&image_rows));
    let vl = Tensor::cat(&[cls_token(&fusion_pos), cls_token(&fusion_neg)], 0);
    let logits = vl.apply(x.itm_head);
    let loss = itm_loss(&logits, &negatives)?;
    Ok(ItmStepOutput {
        weights_t2i,
        weights_i2t,
        negatives,
        fusion_pos,
        fusion_neg,
        logits,
        loss,
    })
}

/// Implements [`crate::VlpModel::var_store`] / [`crate::VlpModel::var_store_mut`] over the
/// model's `vs: VarStore` field (use inside `impl VlpModel for ...`).
macro_rules! var_store_accessors {
    () => {
        fn var_store(&self) -> &tch::nn::VarStore {
            &self.vs
        }
        fn var_store_mut(&mut self) -> &mut tch::nn::VarStore {
            &mut self.vs
        }
    };
}
pub(crate) use var_store_accessors;

/// The ViT position embeddings of a model with momentum copies, interpolated to the model's
/// patch grid by every ALBEF/BLIP loader (`interpolate_pos_embed`).
pub(crate) const POS_EMBED_KEYS: &[&str] =
    &["visual_encoder.pos_embed", "visual_encoder_m.pos_embed"];

/// `normalize(proj(states[:, 0]))`: the `[B, E]` ITC feature of `[B, L, D]` encoder states.
pub(crate) fn project_cls(states: &Tensor, proj: &nn::Linear) -> Tensor {
    normalize(&cls_token(states).apply(proj))
}

/// A `[E, Q]` queue of random unit columns (`normalize(randn(E, Q), dim=0)`).
pub(crate) fn random_queue(e: i64, q: i64, device: Device) -> Tensor {
    let r = Tensor::randn([e, q], (Kind::Float, device));
    &r / r
        .norm_scalaropt_dim(2.0, [0i64].as_slice(), true)
        .clamp_min(1e-12)
}

/// The ITC queue buffers of ALBEF/BLIP pretraining and retrieval fine-tuning.
#[derive(Debug)]
pub(crate) struct QueueBuffers {
    /// `image_queue` `[E, Q]`: random unit columns.
    pub image: Tensor,
    /// `text_queue` `[E, Q]`: random unit columns.
    pub text: Tensor,
    /// `idx_queue` `[1, Q]` int64 image ids, all -100 (retrieval only).
    pub idx: Option<Tensor>,
    /// The shared pointer `[1]` int64, 0.
    pub ptr: Tensor,
}

/// Registers the queue buffers under `r` in the official order (`image_queue`, `text_queue`,
/// `idx_queue` when `with_idx`, then the pointer named `ptr_name`: `queue_ptr`, or BLIP
/// retrieval's `ptr_queue`). `e`: embed dim, `q`: queue size.
pub(crate) fn register_queues(
    r: &nn::Path,
    e: i64,
    q: i64,
    with_idx: bool,
    ptr_name: &str,
) -> QueueBuffers {
    let device = r.device();
    let image = r.add("image_queue", random_queue(e, q, device), false);
    let text = r.add("text_queue", random_queue(e, q, device), false);
    let idx = with_idx.then(|| {
        r.add(
            "idx_queue",
            Tensor::full([1, q], -100, (Kind::Int64, device)),
            false,
        )
    });
    let ptr = r.add(ptr_name, Tensor::zeros([1], (Kind::Int64, device)), false);
    QueueBuffers {
        image,
        text,
        idx,
        ptr,
    }
}

/// The momentum half of the ITC step, without gradient: the EMA update of `pairs` first (as the
/// official forwards do), then `image_m()` (`[B, 1+N, D]` momentum ViT states) and `text_m()`
/// (`[B, L, D]` momentum text states) projected by [`project_cls`]. Returns `(image_embeds_m,
/// image_feat_m, text_feat_m)`.
pub(crate) fn momentum_features(
    vs: &tch::nn::VarStore,
    pairs: MomentumPairs,
    momentum: f64,
    image_m: impl FnOnce() -> Tensor,
    vision_proj_m: &nn::Linear,
    text_m: impl FnOnce() -> Tensor,
    text_proj_m: &nn::Linear,
) -> Result<(Tensor, Tensor, Tensor)> {
    tch::no_grad(|| {
        momentum_update(vs, pairs, momentum)?;
        let image_embeds_m = image_m();
        let image_feat_m = project_cls(&image_embeds_m, vision_proj_m);
        let text_feat_m = project_cls(&text_m(), text_proj_m);
        Ok((image_embeds_m, image_feat_m, text_feat_m))
    })
}

/// Collects `(probe name, tensor)` pairs into [`Tensors`] (the `forward_named` outputs).
pub(crate) fn named<const N: usize>(pairs: [(&str, Tensor); N]) -> Tensors {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The retrieval `k_test`: a `k_test` input tensor, else the fixture MANIFEST's (`extra`), else
/// `default` (the config's); errors when none is given.
pub(crate) fn k_test(
    inputs: &Tensors,
    extra: &serde_json::Value,
    default: Option<i64>,
) -> Result<i64> {
    inputs
        .get("k_test")
        .map(|t| t.int64_value(&[]))
        .or_else(|| extra.get("k_test").and_then(|v| v.as_i64()))
        .or(default)
        .ok_or_else(|| VlpError::input("k_test", "not given by the inputs, MANIFEST or config"))
}
