//! Masked language modelling (ALBEF form).
//!
//! [`MlmMasker`] reproduces `ALBEF.mask()` (model_pretrain.py) split in two: [`MlmMasker::draw`]
//! makes the four raw random draws in the official order on torch's global CPU generator
//! (`bernoulli(p)`, `bernoulli(0.8)`, `bernoulli(0.5)`, `randint(vocab)`, all over the whole
//! `[B, L]` shape), and [`MlmMasker::apply`] turns any draws (fresh or recorded) into masked ids and
//! labels. [`Mlm`] is the loss, with ALBEF's soft-label distillation from the momentum model
//! (xbert.py `BertForMaskedLM.forward`, `soft_labels` branch).
use tch::{Device, Kind, Reduction, Tensor};
use vlp_core::{Result, VlpError};

use crate::util::{as_compute, expect_dims, expect_shape, is_integer, unwrap_or_panic};

/// The raw random draws of one masking call, each the shape of the ids (`[B, L]`), before the
/// `[PAD]`/`[CLS]` exclusion.
#[derive(Debug)]
pub struct MlmDraws {
    /// f32 0/1: `bernoulli(probability)`, 1 = candidate for masking.
    pub masked: Tensor,
    /// f32 0/1: `bernoulli(0.8)`, 1 = replace by `[MASK]` (where masked).
    pub replaced: Tensor,
    /// f32 0/1: `bernoulli(0.5)`, 1 = replace by a random word (where masked and not replaced).
    pub random: Tensor,
    /// int64 in `[0, vocab_size)`: `randint(vocab_size)`, the random words.
    pub random_words: Tensor,
}

/// ALBEF's MLM masker: probability `p` per token, never `[PAD]` or `[CLS]` (`[SEP]` can be masked),
/// 80% `[MASK]`, 10% random word, 10% unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlmMasker {
    /// Masking probability (ALBEF `mlm_probability`: 0.15).
    pub probability: f64,
    /// `[MASK]` id (BERT uncased: 103).
    pub mask_id: i64,
    /// `[PAD]` id (never masked).
    pub pad_id: i64,
    /// `[CLS]` id (never masked).
    pub cls_id: i64,
    /// Vocabulary size: random words are drawn from `[0, vocab_size)` (the text encoder's
    /// `config.vocab_size`, as in the official call).
    pub vocab_size: i64,
}

impl MlmMasker {
    /// Draws the four raw masks for `input_ids` (`[B, L]`, any integer kind) with torch's global
    /// CPU generator (seed with `tch::manual_seed`), in the order of `ALBEF.mask()`, then moves
    /// them to `input_ids`' device (the official code also draws on CPU).
    pub fn draw(&self, input_ids: &Tensor) -> MlmDraws {
        let shape = input_ids.size();
        let dev = input_ids.device();
        let cpu = (Kind::Float, Device::Cpu);
        let bern = |p: f64| Tensor::full(shape.as_slice(), p, cpu).bernoulli();
        let masked = bern(self.probability);
        let replaced = bern(0.8);
        let random = bern(0.5);
        let random_words = Tensor::randint(
            self.vocab_size,
            shape.as_slice(),
            (Kind::Int64, Device::Cpu),
        );
        MlmDraws {
            masked: masked.to_device(dev),
            replaced: replaced.to_device(dev),
            random: random.to_device(dev),
            random_words: random_words.to_device(dev),
        }
    }

    /// Applies draws to `input_ids` (`[B, L]` integer ids): returns `(masked_ids, labels)`, both
    /// `[B, L]` int64. `masked = draws.masked` except at `[PAD]` and `[CLS]`; `labels` = original id
    /// where masked, -100 elsewhere; masked ids become `[MASK]` where `replaced`, the random word
    /// where `random & !replaced`, and stay unchanged otherwise. Panics on shape mismatch; see
    /// [`MlmMasker::try_apply`].
    pub fn apply(&self, input_ids: &Tensor, d: &MlmDraws) -> (Tensor, Tensor) {
        unwrap_or_panic("MlmMasker::apply", self.try_apply(input_ids, d))
    }

    /// [`MlmMasker::apply`] with shape errors returned.
    pub fn try_apply(&self, input_ids: &Tensor, d: &MlmDraws) -> Result<(Tensor, Tensor)> {
        let size = expect_dims("input_ids", input_ids, 2, "[B, L] ids")?;
        if !is_integer(input_ids.kind()) {
            return Err(VlpError::input(
                "input_ids",
                format!("expected integer ids, got {:?}", input_ids.kind()),
            ));
        }
        expect_shape("draws.masked", &d.masked, &size, "the ids' shape")?;
        expect_shape("draws.replaced", &d.replaced, &size, "the ids' shape")?;
        expect_shape("draws.random", &d.random, &size, "the ids' shape")?;
        expect_shape(
            "draws.random_words",
            &d.random_words,
            &size,
            "the ids' shape",
        )?;
        let dev = input_ids.device();
        let ids = input_ids.to_kind(Kind::Int64);
        let flag = |t: &Tensor| t.to_device(dev).ne(0.0);
        let masked = flag(&d.masked)
            .logical_and(&ids.ne(self.pad_id))
            .logical_and(&ids.ne(self.cls_id));
        let labels = ids.masked_fill(&masked.logical_not(), -100);
        let replaced = flag(&d.replaced).logical_and(&masked);
        let random = flag(&d.random)
            .logical_and(&masked)
            .logical_and(&replaced.logical_not());
        let out = ids.masked_fill(&replaced, self.mask_id);
        let words = d.random_words.to_device(dev).to_kind(Kind::Int64);
        Ok((words.where_self(&random, &out), labels))
    }

    /// `draw` then `apply`: a fresh masking of `input_ids` (`[B, L]`), returns
    /// `(masked_ids, labels)`.
    pub fn mask(&self, input_ids: &Tensor) -> (Tensor, Tensor) {
        let d = self.draw(input_ids);
        self.apply(input_ids, &d)
    }
}

/// The MLM objective (cross-entropy over masked tokens, optional soft-label distillation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mlm {
    /// Factor applied by [`Mlm::weighted_loss`] (ALBEF: 1; VLMo: 0.25).
    pub weight: f64,
}

impl Default for Mlm {
    fn default() -> Self {
        Mlm { weight: 1.0 }
    }
}

impl Mlm {
    /// Unweighted MLM loss. `logits`: `[B, L, V]` online logits; `labels`: `[B, L]` int64, -100 =
    /// not masked; `soft_logits_m`: `[B, L, V]` momentum logits whose softmax are the soft labels
    /// (used without gradient), `None` = plain cross-entropy.
    ///
    /// `CE = mean over masked tokens of -log p(label)`; with distillation
    /// `(1 - alpha) * CE + alpha * mean over masked tokens of -sum_v softmax(soft)_v *
    /// log_softmax(logits)_v` (xbert.py: `loss_distill[labels != -100].mean()`).
    /// Deviation: with no masked token at all the official loss is NaN (0/0); this returns 0.
    /// Panics on bad shapes; see [`Mlm::try_loss`].
    pub fn loss(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        soft_logits_m: Option<&Tensor>,
        alpha: f64,
    ) -> Tensor {
        unwrap_or_panic(
            "Mlm::loss",
            self.try_loss(logits, labels, soft_logits_m, alpha),
        )
    }

    /// `weight * loss(..)`.
    pub fn weighted_loss(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        soft_logits_m: Option<&Tensor>,
        alpha: f64,
    ) -> Tensor {
        self.loss(logits, labels, soft_logits_m, alpha) * self.weight
    }

    /// [`Mlm::loss`] with shape errors returned.
    pub fn try_loss(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        soft_logits_m: Option<&Tensor>,
        alpha: f64,
    ) -> Result<Tensor> {
        let size = expect_dims("mlm_logits", logits, 3, "[B, L, V] logits")?;
        expect_shape("mlm_labels", labels, &size[..2], "[B, L] labels")?;
        let v = size[2];
        let l = as_compute(logits);
        let kind = l.kind();
        let lab = labels.to_device(l.device()).to_kind(Kind::Int64);
        let is_masked = lab.ne(-100);
        let count = is_masked.sum(kind).clamp_min(1.0);
        let ce = l.reshape([-1, v]).cross_entropy_loss::<Tensor>(
            &lab.reshape([-1]),
            None,
            Reduction::Sum,
            -100,
            0.0,
        ) / &count;
        let Some(soft) = soft_logits_m else {
            return Ok(ce);
        };
        expect_shape("mlm_logits_m", soft, &size, "[B, L, V] momentum logits")?;
        let soft = soft
            .detach()
            .to_device(l.device())
            .to_kind(kind)
            .softmax(-1, kind);
        let per_token = -(l.log_softmax(-1, kind) * soft).sum_dim_intlist(-1, false, kind);
        let distill = (per_token * is_masked.to_kind(kind)).sum(kind) / &count;
        Ok(ce * (1.0 - alpha) + distill * alpha)
    }
}
