//! Image-text contrastive (ITC) objectives.
//!
//! - [`Itc`]: ALBEF/BLIP's ITC with a feature queue and momentum distillation. The model computes
//!   the similarity logits (already divided by the temperature, columns = in-batch momentum
//!   features followed by the queue) and hands them over in [`ItcInputs`]; per direction the loss is
//!   `-sum(log_softmax(sim, 1) * targets, 1).mean()` with
//!   `targets = alpha * softmax(sim_m, 1) + (1 - alpha) * hard_targets`, and the result is the mean
//!   of the image-to-text and text-to-image losses (ALBEF `model_pretrain.py`, BLIP
//!   `blip_pretrain.py`).
//! - [`diagonal_targets`] (pretraining: the positive of row `b` is column `b`) and
//!   [`multi_positive_targets`] (retrieval fine-tuning: every column with the same image id is a
//!   positive, weights normalised per row).
//! - [`clip_loss`]: the queue-free symmetric cross-entropy of VLMo / BEiT-3.
//! - [`alpha_ramp`]: the distillation-weight warm-up of ALBEF (1 epoch) and BLIP (2 epochs).
use tch::{Device, Kind, Reduction, Tensor};
use vlp_core::{Result, VlpError};

use crate::util::{as_compute, expect_dims, expect_shape, unwrap_or_panic};

/// The ITC objective (ALBEF/BLIP form: queue columns, optional momentum distillation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Itc {
    /// Factor applied by [`Itc::weighted_loss`] (ALBEF/BLIP: 1).
    pub weight: f64,
}

impl Default for Itc {
    fn default() -> Self {
        Itc { weight: 1.0 }
    }
}

/// The tensors of one ITC evaluation. `B` = batch, `N` = candidate columns (`B` in-batch momentum
/// features followed by the queue in ALBEF/BLIP, so `N = B + Q`).
#[derive(Debug)]
pub struct ItcInputs<'a> {
    /// `[B, N]` image-to-text logits, already divided by the temperature
    /// (`image_feat @ text_feat_all / temp`).
    pub sim_i2t: &'a Tensor,
    /// `[B, N]` text-to-image logits, already divided by the temperature.
    pub sim_t2i: &'a Tensor,
    /// `[B, N]` momentum-encoder image-to-text logits (distillation); `None` = no distillation.
    /// Must be given together with `sim_t2i_m`. Used without gradient.
    pub sim_i2t_m: Option<&'a Tensor>,
    /// `[B, N]` momentum-encoder text-to-image logits (distillation).
    pub sim_t2i_m: Option<&'a Tensor>,
    /// `[B, N]` hard targets shared by both directions (rows sum to 1), for example from
    /// [`multi_positive_targets`]; `None` = one-hot on the diagonal ([`diagonal_targets`]).
    pub targets: Option<&'a Tensor>,
    /// Distillation weight in `[0, 1]`; ignored when no momentum logits are given.
    pub alpha: f64,
}

impl<'a> ItcInputs<'a> {
    /// Inputs without distillation and with diagonal targets. `sim_*`: `[B, N]`, `N >= B`.
    pub fn new(sim_i2t: &'a Tensor, sim_t2i: &'a Tensor) -> Self {
        ItcInputs {
            sim_i2t,
            sim_t2i,
            sim_i2t_m: None,
            sim_t2i_m: None,
            targets: None,
            alpha: 0.0,
        }
    }
}

impl Itc {
    /// The unweighted ITC loss `(loss_i2t + loss_t2i) / 2` (scalar, differentiable w.r.t.
    /// `sim_i2t`/`sim_t2i`). Panics on inconsistent shapes; see [`Itc::try_loss`].
    pub fn loss(&self, x: &ItcInputs) -> Tensor {
        unwrap_or_panic("Itc::loss", self.try_loss(x))
    }

    /// `weight * loss(x)`.
    pub fn weighted_loss(&self, x: &ItcInputs) -> Tensor {
        self.loss(x) * self.weight
    }

    /// [`Itc::loss`] with shape errors returned (each names the offending input).
    pub fn try_loss(&self, x: &ItcInputs) -> Result<Tensor> {
        let size = expect_dims("sim_i2t", x.sim_i2t, 2, "[B, N] logits")?;
        expect_shape(
            "sim_t2i",
            x.sim_t2i,
            &size,
            "[B, N] logits (same as sim_i2t)",
        )?;
        let (b, n) = (size[0], size[1]);
        let distill = match (x.sim_i2t_m, x.sim_t2i_m) {
            (Some(i), Some(t)) => {
                expect_shape("sim_i2t_m", i, &size, "[B, N] momentum logits")?;
                expect_shape("sim_t2i_m", t, &size, "[B, N] momentum logits")?;
                Some((i, t))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(VlpError::input(
                    "sim_t2i_m",
                    "missing while sim_i2t_m is given (distillation needs both directions)",
                ))
            }
            (None, Some(_)) => {
                return Err(VlpError::input(
                    "sim_i2t_m",
                    "missing while sim_t2i_m is given (distillation needs both directions)",
                ))
            }
        };
        if !x.alpha.is_finite() {
            return Err(VlpError::input("alpha", format!("not finite: {}", x.alpha)));
        }
        let sim_i2t = as_compute(x.sim_i2t);
        let sim_t2i = as_compute(x.sim_t2i);
        let kind = sim_i2t.kind();
        let hard = match x.targets {
            Some(t) => {
                expect_shape("targets", t, &size, "[B, N] hard targets")?;
                t.detach().to_device(sim_i2t.device()).to_kind(kind)
            }
            None => {
                if n < b {
                    return Err(VlpError::input(
                        "sim_i2t",
                        format!(
                            "diagonal targets need N >= B, got shape {size:?} (pass `targets`)"
                        ),
                    ));
                }
                diagonal_targets(b, n, sim_i2t.device()).to_kind(kind)
            }
        };
        let (t_i2t, t_t2i) = match distill {
            Some((i_m, t_m)) => {
                let dev = sim_i2t.device();
                let soft = |s: &Tensor| s.detach().to_device(dev).to_kind(kind).softmax(1, kind);
                (
                    soft(i_m) * x.alpha + &hard * (1.0 - x.alpha),
                    soft(t_m) * x.alpha + &hard * (1.0 - x.alpha),
                )
            }
            None => (hard.shallow_clone(), hard),
        };
        let one_way = |sim: &Tensor, t: &Tensor| {
            -(sim.log_softmax(1, kind) * t)
                .sum_dim_intlist(1, false, kind)
                .mean(kind)
        };
        Ok((one_way(&sim_i2t, &t_i2t) + one_way(&sim_t2i, &t_t2i)) / 2.0)
    }
}

/// `[B, N]` float one-hot targets with a 1 at column `b` of row `b` (the in-batch positive; the
/// queue columns `B..N` are all negatives). Needs `n >= b`.
pub fn diagonal_targets(b: i64, n: i64, device: Device) -> Tensor {
    Tensor::eye_m(b, n, (Kind::Float, device))
}

/// Multi-positive targets of ALBEF/BLIP retrieval fine-tuning: `pos = (idx[:, None] ==
/// idx_all[None, :])`, each row divided by its number of positives.
///
/// `idx`: `[B]` integer image ids of the batch; `idx_all`: `[N]` (or `[1, N]`) ids of every
/// candidate column, i.e. `cat([idx, idx_queue])` in the official code (so each row has at least
/// its own positive). Returns `[B, N]` f32. A row without any positive (only possible when
/// `idx_all` does not contain the batch) is all zeros instead of the official NaN.
pub fn multi_positive_targets(idx: &Tensor, idx_all: &Tensor) -> Tensor {
    let pos = idx
        .reshape([-1, 1])
        .eq_tensor(&idx_all.reshape([1, -1]))
        .to_kind(Kind::Float);
    let count = pos.sum_dim_intlist(1, true, Kind::Float).clamp_min(1.0);
    pos / count
}

/// The ramped distillation weight at step `step` (0-based, within the epoch) of epoch `epoch`:
/// `alpha * min(1, (epoch * steps_per_epoch + step) / (ramp_epochs * steps_per_epoch))`.
///
/// ALBEF (`Pretrain.py`): `ramp_epochs = 1` (epoch 0 ramps as `i / len(loader)`, later epochs use
/// `alpha`). BLIP (`pretrain.py`): `ramp_epochs = 2`. `ramp_epochs == 0` or
/// `steps_per_epoch == 0` means no ramp (returns `alpha`).
pub fn alpha_ramp(
    alpha: f64,
    epoch: usize,
    step: usize,
    steps_per_epoch: usize,
    ramp_epochs: usize,
) -> f64 {
    if ramp_epochs == 0 || steps_per_epoch == 0 {
        return alpha;
    }
    let done = (epoch * steps_per_epoch + step) as f64;
    let total = (ramp_epochs * steps_per_epoch) as f64;
    alpha * (done / total).min(1.0)
}

/// CLIP-style symmetric contrastive loss without queue (VLMo `compute_itc`, BEiT-3):
/// `(CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2`.
///
/// `logits_per_image`: `[B, B]` image-by-text logits, already scaled (`logit_scale.exp() *
/// image_feat @ text_feat.T`); computed in f32 when given in half precision. Panics unless
/// square; see [`try_clip_loss`].
pub fn clip_loss(logits_per_image: &Tensor) -> Tensor {
    unwrap_or_panic("clip_loss", try_clip_loss(logits_per_image))
}

/// [`clip_loss`] with the shape error returned.
pub fn try_clip_loss(logits_per_image: &Tensor) -> Result<Tensor> {
    let size = expect_dims("logits_per_image", logits_per_image, 2, "[B, B] logits")?;
    if size[0] != size[1] {
        return Err(VlpError::input(
            "logits_per_image",
            format!("expected a square [B, B] matrix, got {size:?}"),
        ));
    }
    let l = as_compute(logits_per_image);
    let labels = Tensor::arange(size[0], (Kind::Int64, l.device()));
    let ce = |x: &Tensor| x.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
    Ok((ce(&l) + ce(&l.tr())) / 2.0)
}

/// The inputs of one ITC-with-queue step ([`itc_with_queue`]), the ALBEF/BLIP
/// `model_pretrain.py` / `model_retrieval.py` / `blip_pretrain.py` / `blip_retrieval.py` block
/// between the momentum features and the ITM part. `B` = batch, `E` = embed dim, `Q` = queue size.
#[derive(Debug)]
pub struct ItcQueueInputs<'a> {
    /// `[B, E]` normalised online image features (carry the gradient).
    pub image_feat: &'a Tensor,
    /// `[B, E]` normalised online text features.
    pub text_feat: &'a Tensor,
    /// `[B, E]` normalised momentum image features (computed after the momentum update).
    pub image_feat_m: &'a Tensor,
    /// `[B, E]` normalised momentum text features.
    pub text_feat_m: &'a Tensor,
    /// `[E, Q]` image feature queue (buffer, updated in place by the enqueue).
    pub image_queue: &'a Tensor,
    /// `[E, Q]` text feature queue (buffer, updated in place).
    pub text_queue: &'a Tensor,
    /// Retrieval fine-tuning: `[B]` image ids of the batch and the `[1, Q]` id queue; the targets
    /// are then [`multi_positive_targets`] over `[idx ; idx_queue]` and the ids are enqueued with
    /// the features. `None` (pretraining) = [`diagonal_targets`].
    pub idx: Option<(&'a Tensor, &'a Tensor)>,
    /// `[1]` int64 pointer shared by the queues (`queue_ptr` / BLIP retrieval's `ptr_queue`).
    pub queue_ptr: &'a Tensor,
    /// Scalar temperature; every similarity is divided by it.
    pub temp: &'a Tensor,
    /// Distillation weight of [`ItcInputs::alpha`].
    pub alpha: f64,
    /// Whether the momentum similarities are used as soft targets (ALBEF retrieval's `distill`;
    /// pretraining and BLIP: always). The momentum similarities are returned either way.
    pub distill: bool,
}

/// What [`itc_with_queue`] computes. `N = B + Q` columns: the in-batch momentum features, then
/// the queue (as it was before the enqueue).
#[derive(Debug)]
pub struct ItcQueueOutput {
    /// The ITC loss `(loss_i2t + loss_t2i) / 2` (scalar, differentiable w.r.t. the online features).
    pub loss: Tensor,
    /// `[B, N]` `image_feat @ [text_feat_m.T ; text_queue] / temp`.
    pub sim_i2t: Tensor,
    /// `[B, N]` `text_feat @ [image_feat_m.T ; image_queue] / temp`.
    pub sim_t2i: Tensor,
    /// `[B, N]` momentum image-to-text logits (no gradient).
    pub sim_i2t_m: Tensor,
    /// `[B, N]` momentum text-to-image logits (no gradient).
    pub sim_t2i_m: Tensor,
}

/// One ITC step with a feature queue (ALBEF/BLIP pretraining and retrieval fine-tuning): the
/// similarities of the online features against `[in-batch momentum features ; queue]` (momentum
/// ones without gradient), the distilled loss with diagonal or multi-positive targets (see
/// [`ItcQueueInputs::idx`]), then the enqueue of the momentum features (and ids) at the shared
/// pointer ([`crate::momentum::enqueue_shared`]). Errors on inconsistent shapes or queues.
pub fn itc_with_queue(x: &ItcQueueInputs) -> Result<ItcQueueOutput> {
    let targets = x.idx.map(|(idx, idx_queue)| {
        let idx_all = Tensor::cat(&[idx.view([1, -1]), idx_queue.copy()], 1);
        multi_positive_targets(idx, &idx_all)
    });
    let (image_feat_all, text_feat_all) = tch::no_grad(|| {
        (
            Tensor::cat(&[x.image_feat_m.tr(), x.image_queue.copy()], 1),
            Tensor::cat(&[x.text_feat_m.tr(), x.text_queue.copy()], 1),
        )
    });
    let (sim_i2t_m, sim_t2i_m) = tch::no_grad(|| {
        (
            x.image_feat_m.matmul(&text_feat_all) / x.temp,
            x.text_feat_m.matmul(&image_feat_all) / x.temp,
        )
    });
    let sim_i2t = x.image_feat.matmul(&text_feat_all) / x.temp;
    let sim_t2i = x.text_feat.matmul(&image_feat_all) / x.temp;
    let loss = Itc::default().try_loss(&ItcInputs {
        sim_i2t: &sim_i2t,
        sim_t2i: &sim_t2i,
        sim_i2t_m: x.distill.then_some(&sim_i2t_m),
        sim_t2i_m: x.distill.then_some(&sim_t2i_m),
        targets: targets.as_ref(),
        alpha: x.alpha,
    })?;
    let mut entries = vec![
        (x.image_queue, x.image_feat_m),
        (x.text_queue, x.text_feat_m),
    ];
    if let Some((idx, idx_queue)) = x.idx {
        entries.push((idx_queue, idx));
    }
    crate::momentum::enqueue_shared(&entries, x.queue_ptr)?;
    Ok(ItcQueueOutput {
        loss,
        sim_i2t,
        sim_t2i,
        sim_i2t_m,
        sim_t2i_m,
    })
}
