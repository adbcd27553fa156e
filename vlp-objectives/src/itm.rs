//! Image-text matching (ITM) with hard negatives.
//!
//! The official ALBEF/BLIP/VLMo code turns the in-batch ITC logits into sampling weights
//! (`softmax(sim[:, :B], 1)`, BLIP pretraining adds `1e-4` after the softmax, positives zeroed),
//! then draws one negative image per text and one negative text per image with
//! `torch.multinomial(weights[b], 1)` in a Python loop. [`HardNegativeSampler`] does the same with
//! one vectorised `multinomial` call per direction (same random stream as the loop on CPU: the
//! per-row draws are identical for the same seed), and never crashes:
//!
//! - a row whose weights all underflow to 0 while it still has non-positive columns gets uniform
//!   weights over those columns (in [`HardNegativeSampler::weights`], which knows the positives);
//! - a row without any non-positive column (a batch of one, or every sample sharing one image id)
//!   has no negative: [`HardNegativeSampler::sample`] returns the row's own index `b` for it and
//!   marks it `false` in [`NegativeDraws::valid`]; callers drop those pairs from the loss with
//!   [`NegativeDraws::itm_keep_mask`] and [`Itm::loss_masked`]. The official code raises
//!   "invalid multinomial distribution" there (ALBEF#18/#93/#131, BLIP#76).
//!
//! [`Itm`] is the cross-entropy over the `[pos B; neg-image B; neg-text B]` logits rows with labels
//! `[1]*B + [0]*2B`.
use tch::{Device, Kind, Reduction, Tensor};
use vlp_core::{Result, VlpError};

use crate::util::{as_compute, expect_dims, expect_shape, unwrap_or_panic};

/// One hard-negative draw per row and direction.
#[derive(Debug)]
pub struct NegativeDraws {
    /// `[B]` int64: for text `b`, the index of its negative image (column of `weights_t2i`).
    pub neg_image_idx: Tensor,
    /// `[B]` int64: for image `b`, the index of its negative text (column of `weights_i2t`).
    pub neg_text_idx: Tensor,
    /// `[B]` bool: `true` where row `b` had a real negative in **both** directions (rows of
    /// `weights_t2i` and `weights_i2t` with positive mass). Where `false` the drawn index is `b`
    /// itself (a placeholder, never a negative): drop those pairs from the ITM loss
    /// ([`NegativeDraws::itm_keep_mask`]).
    pub valid: Tensor,
}

impl NegativeDraws {
    /// Wraps recorded draws (for example the official `itm_neg_*` fixture inputs), all valid.
    /// `neg_image_idx`, `neg_text_idx`: `[B]` int64.
    pub fn from_indices(neg_image_idx: Tensor, neg_text_idx: Tensor) -> Self {
        let valid = Tensor::ones(neg_image_idx.size(), (Kind::Bool, neg_image_idx.device()));
        NegativeDraws {
            neg_image_idx,
            neg_text_idx,
            valid,
        }
    }

    /// Whether every row has a negative (one device sync). When true, the plain [`Itm::loss`] is
    /// the official loss.
    pub fn all_valid(&self) -> bool {
        self.valid.numel() == 0 || self.valid.all().int64_value(&[]) != 0
    }

    /// `[3B]` bool keep-mask for the ITM logits rows `[pos B; neg-image B; neg-text B]`:
    /// positives always kept, negatives kept where [`NegativeDraws::valid`].
    pub fn itm_keep_mask(&self) -> Tensor {
        let ones = self.valid.ones_like();
        Tensor::cat(&[&ones, &self.valid, &self.valid], 0)
    }
}

/// Hard-negative sampler (weights from ITC logits, one multinomial draw per row).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HardNegativeSampler {
    /// Added to the softmax before the positives are zeroed: BLIP pretraining `1e-4`; ALBEF,
    /// ALBEF retrieval (its `+1e-4` is *inside* the softmax, a no-op), BLIP retrieval, VLMo: `0`.
    pub epsilon_after_softmax: f64,
}

impl HardNegativeSampler {
    /// ALBEF / VLMo / BLIP retrieval: no epsilon.
    pub fn albef() -> Self {
        HardNegativeSampler {
            epsilon_after_softmax: 0.0,
        }
    }

    /// BLIP pretraining: `softmax + 1e-4`.
    pub fn blip_pretrain() -> Self {
        HardNegativeSampler {
            epsilon_after_softmax: 1e-4,
        }
    }

    /// Sampling weights `softmax(sim, 1) + epsilon` (f32, no gradient) with the positives set to 0.
    ///
    /// `sim`: `[B, M]` logits of the `B` queries against `M` in-batch candidates; for ALBEF/BLIP
    /// pretraining this is `sim_t2i[:, :B]` (resp. `sim_i2t[:, :B]`), the in-batch columns of the
    /// queue logits, never the queue columns. `positives`: `[B, M]` bool, `true` = never draw
    /// (same image, see [`same_id_positives`]); `None` = the diagonal (`M >= B`).
    /// A row whose non-positive weights all underflow to 0 gets uniform weights over its
    /// non-positive columns; a row with no non-positive column stays all zeros (see
    /// [`HardNegativeSampler::sample`]). Panics on bad shapes; see
    /// [`HardNegativeSampler::try_weights`].
    pub fn weights(&self, sim: &Tensor, positives: Option<&Tensor>) -> Tensor {
        unwrap_or_panic(
            "HardNegativeSampler::weights",
            self.try_weights(sim, positives),
        )
    }

    /// [`HardNegativeSampler::weights`] with shape errors returned.
    pub fn try_weights(&self, sim: &Tensor, positives: Option<&Tensor>) -> Result<Tensor> {
        let size = expect_dims("sim", sim, 2, "[B, M] logits")?;
        let (b, m) = (size[0], size[1]);
        let pos = match positives {
            Some(p) => {
                expect_shape("positives", p, &size, "[B, M] bool mask")?;
                p.to_device(sim.device()).to_kind(Kind::Bool)
            }
            None => {
                if m < b {
                    return Err(VlpError::input(
                        "sim",
                        format!("diagonal positives need M >= B, got {size:?} (pass `positives`)"),
                    ));
                }
                Tensor::eye_m(b, m, (Kind::Bool, sim.device()))
            }
        };
        Ok(tch::no_grad(|| {
            let s = as_compute(&sim.detach());
            let kind = s.kind();
            let w = s.softmax(1, kind);
            let w = if self.epsilon_after_softmax != 0.0 {
                w + self.epsilon_after_softmax
            } else {
                w
            };
            let w = w.masked_fill(&pos, 0.0);
            // Underflow fallback: uniform over the non-positive columns.
            let neg = pos.logical_not();
            let n_neg = neg.sum_dim_intlist(1, true, kind);
            let empty = w
                .sum_dim_intlist(1, true, kind)
                .le(0.0)
                .logical_and(&n_neg.gt(0.0));
            let uniform = neg.to_kind(kind) / n_neg.clamp_min(1.0);
            uniform.where_self(&empty, &w)
        }))
    }

    /// Draws one negative image per text (row of `weights_t2i`) and one negative text per image
    /// (row of `weights_i2t`) with torch's global generator: one vectorised
    /// `multinomial(weights, 1)` per direction, t2i first as in the official loops, so on CPU the
    /// draws equal the official per-row draws for the same seed.
    ///
    /// `weights_t2i`, `weights_i2t`: `[B, M]` non-negative weights (rows need not sum to 1), e.g.
    /// from [`HardNegativeSampler::weights`]. Rows with zero mass yield index `b` and
    /// `valid[b] = false`. Errors on bad shapes, negative or non-finite weights.
    pub fn sample(&self, weights_t2i: &Tensor, weights_i2t: &Tensor) -> Result<NegativeDraws> {
        let s1 = expect_dims("weights_t2i", weights_t2i, 2, "[B, M] weights")?;
        let s2 = expect_dims("weights_i2t", weights_i2t, 2, "[B, M] weights")?;
        if s1[0] != s2[0] {
            return Err(VlpError::input(
                "weights_i2t",
                format!(
                    "batch {} differs from weights_t2i's {} (shapes {s2:?} vs {s1:?})",
                    s2[0], s1[0]
                ),
            ));
        }
        let (neg_image_idx, v1) = draw_rows("weights_t2i", weights_t2i)?;
        let (neg_text_idx, v2) = draw_rows("weights_i2t", weights_i2t)?;
        Ok(NegativeDraws {
            neg_image_idx,
            neg_text_idx,
            valid: v1.logical_and(&v2),
        })
    }
}

/// One multinomial draw per row; rows without mass get a point mass at a placeholder column so
/// the single call never fails, and are reported invalid.
fn draw_rows(name: &str, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let size = w.size();
    let (b, m) = (size[0], size[1]);
    let dev = w.device();
    if b == 0 {
        let e = Tensor::zeros([0], (Kind::Int64, dev));
        return Ok((e.shallow_clone(), e.to_kind(Kind::Bool)));
    }
    if m == 0 {
        return Err(VlpError::input(
            name,
            format!("no candidate column: {size:?}"),
        ));
    }
    tch::no_grad(|| {
        let w = as_compute(&w.detach());
        let kind = w.kind();
        // Two reductions and one sync: any negative, NaN or infinite weight is an error.
        let bad = w
            .min()
            .lt(0.0)
            .logical_or(&w.sum(kind).isfinite().logical_not());
        if bad.int64_value(&[]) != 0 {
            return Err(VlpError::input(
                name,
                "weights must be finite and non-negative (NaN/inf/negative found)",
            ));
        }
        let valid = w.sum_dim_intlist(1, false, kind).gt(0.0);
        let placeholder = Tensor::arange(b, (Kind::Int64, dev))
            .remainder(m)
            .unsqueeze(1);
        // Give rows without mass a point mass at the placeholder column (cheap scatter, no
        // [B, M] temporary beyond the copy).
        let fill =
            w.gather(1, &placeholder, false) + valid.logical_not().unsqueeze(1).to_kind(kind);
        let safe = w.scatter(1, &placeholder, &fill);
        let drawn = safe
            .f_multinomial(1, false)
            .map_err(|e| VlpError::input(name, format!("multinomial: {e}")))?;
        let placeholder = placeholder.squeeze_dim(1);
        Ok((drawn.squeeze_dim(1).where_self(&valid, &placeholder), valid))
    })
}

/// `[B, B]` bool mask `idx[:, None] == idx[None, :]`: every pair showing the same image is a
/// positive (ALBEF/BLIP retrieval `masked_fill(idx == idx.T, 0)`). `idx`: `[B]` integer ids.
pub fn same_id_positives(idx: &Tensor) -> Tensor {
    let i = idx.reshape([-1]);
    i.unsqueeze(1).eq_tensor(&i.unsqueeze(0))
}

/// The ITM objective: 2-way cross-entropy over `3B` fused pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Itm {
    /// Factor applied by [`Itm::weighted_loss`] (ALBEF/BLIP/VLMo: 1).
    pub weight: f64,
}

impl Default for Itm {
    fn default() -> Self {
        Itm { weight: 1.0 }
    }
}

impl Itm {
    /// `[3B]` int64 labels `[1]*B + [0]*2B` (rows: positives, text-vs-negative-image,
    /// negative-text-vs-image).
    pub fn labels(b: i64, device: Device) -> Tensor {
        Tensor::cat(
            &[
                Tensor::ones([b], (Kind::Int64, device)),
                Tensor::zeros([2 * b], (Kind::Int64, device)),
            ],
            0,
        )
    }

    /// Unweighted mean cross-entropy of `logits` (`[3B, 2]`, rows `[pos B; neg-image B;
    /// neg-text B]`, column 1 = match) against [`Itm::labels`]. Panics unless the row count is a
    /// multiple of 3; see [`Itm::try_loss`].
    pub fn loss(&self, logits: &Tensor) -> Tensor {
        unwrap_or_panic("Itm::loss", self.try_loss(logits, None))
    }

    /// Like [`Itm::loss`] but averaged over the rows where `keep` (`[3B]` bool, e.g.
    /// [`NegativeDraws::itm_keep_mask`]) is true; equals [`Itm::loss`] when all rows are kept.
    pub fn loss_masked(&self, logits: &Tensor, keep: &Tensor) -> Tensor {
        unwrap_or_panic("Itm::loss_masked", self.try_loss(logits, Some(keep)))
    }

    /// `weight * loss(logits)`.
    pub fn weighted_loss(&self, logits: &Tensor) -> Tensor {
        self.loss(logits) * self.weight
    }

    /// [`Itm::loss`] / [`Itm::loss_masked`] with shape errors returned.
    pub fn try_loss(&self, logits: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
        let size = expect_dims("itm_logits", logits, 2, "[3B, 2] logits")?;
        if size[0] % 3 != 0 || size[1] != 2 {
            return Err(VlpError::input(
                "itm_logits",
                format!("expected [3B, 2] (rows pos B, neg B, neg B), got {size:?}"),
            ));
        }
        let l = as_compute(logits);
        let mut labels = Itm::labels(size[0] / 3, l.device());
        if let Some(k) = keep {
            expect_shape("keep", k, &[size[0]], "[3B] bool mask")?;
            labels = labels.masked_fill(
                &k.to_device(l.device()).to_kind(Kind::Bool).logical_not(),
                -100,
            );
        }
        Ok(l.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0))
    }
}
