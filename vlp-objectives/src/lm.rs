//! Causal language-modelling loss (BLIP decoder, `med.py` `BertLMHeadModel`).
use tch::{Kind, Reduction, Tensor};
use vlp_core::{Result, VlpError};

use crate::util::{as_compute, expect_dims, expect_shape, unwrap_or_panic};

/// Shifted LM cross-entropy: position `t` of `logits` predicts `labels[:, t + 1]`.
///
/// `logits`: `[B, L, V]`; `labels`: `[B, L]` int64 with -100 = ignored (pads, prompt);
/// `label_smoothing`: BLIP 0.1 (HF's default 0). Returns, as `CrossEntropyLoss(reduction=...,
/// label_smoothing=...)` over `logits[:, :-1]` and `labels[:, 1:]` does:
/// - `reduction_per_sequence == false`: the scalar mean over non-ignored targets (NaN when every
///   target is ignored, as in torch);
/// - `reduction_per_sequence == true`: `[B]` per-sequence sums (`reduction='none'` then
///   `.view(B, -1).sum(1)`, ignored targets count 0), as BLIP's VQA/rank path uses.
///
/// Panics on bad shapes; see [`try_lm_loss`].
pub fn lm_loss(
    logits: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    reduction_per_sequence: bool,
) -> Tensor {
    unwrap_or_panic(
        "lm_loss",
        try_lm_loss(logits, labels, label_smoothing, reduction_per_sequence),
    )
}

/// [`lm_loss`] with shape errors returned.
pub fn try_lm_loss(
    logits: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    reduction_per_sequence: bool,
) -> Result<Tensor> {
    let size = expect_dims("lm_logits", logits, 3, "[B, L, V] logits")?;
    expect_shape("lm_labels", labels, &size[..2], "[B, L] labels")?;
    let (b, l, v) = (size[0], size[1], size[2]);
    if l < 2 {
        return Err(VlpError::input(
            "lm_logits",
            format!("need at least 2 positions to shift, got {size:?}"),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(VlpError::input(
            "label_smoothing",
            format!("must lie in [0, 1], got {label_smoothing}"),
        ));
    }
    let x = as_compute(logits).narrow(1, 0, l - 1).reshape([-1, v]);
    let t = labels
        .to_device(x.device())
        .to_kind(Kind::Int64)
        .narrow(1, 1, l - 1)
        .reshape([-1]);
    if reduction_per_sequence {
        let per = x.cross_entropy_loss::<Tensor>(&t, None, Reduction::None, -100, label_smoothing);
        let kind = per.kind();
        Ok(per.reshape([b, l - 1]).sum_dim_intlist(1, false, kind))
    } else {
        Ok(x.cross_entropy_loss::<Tensor>(&t, None, Reduction::Mean, -100, label_smoothing))
    }
}
