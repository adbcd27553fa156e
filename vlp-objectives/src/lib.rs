//! vlp-objectives: the pretraining objectives of the vlp-rs zoo, as composable pieces.
//!
//! Every objective is a small struct with a `weight` and a `loss` over explicit tensors, so a model
//! computes its features/logits and hands them over; nothing here owns a model. Random choices
//! (MLM masking, ITM hard negatives) live in separate samplers whose draws are plain tensors, so
//! they can be injected (for parity with recorded official draws) or drawn with torch's global
//! generator (`tch::manual_seed`), which reproduces the official random stream.
//!
//! - [`itc`]: image-text contrastive loss with momentum distillation and (multi-positive) targets
//!   (ALBEF/BLIP), CLIP-style symmetric loss (VLMo/BEiT-3), the alpha ramp.
//! - [`itm`]: hard-negative sampler (vectorised `multinomial`, robust to batches of one and to
//!   rows without any valid negative) and the 3B-row ITM cross-entropy.
//! - [`mlm`]: ALBEF-style masker (`ALBEF.mask()`) and MLM loss with soft-label distillation.
//! - [`lm`]: shifted language-modelling loss with label smoothing (BLIP decoder).
//! - [`word_swap`]: ITM on word-swapped captions (NegCLIP-style counterfactual negatives).
//! - [`momentum`]: momentum (EMA) update and copy over `VarStore` prefixes, feature/idx queues.
//!
//! Losses are returned *unweighted* by `loss`; `weighted_loss` multiplies by `weight`. All shape
//! checks are done by `try_*` variants returning [`vlp_core::Result`]; the plain variants panic with
//! the same message.
#![deny(missing_docs)]

pub mod itc;
pub mod itm;
pub mod lm;
pub mod mlm;
pub mod momentum;
mod util;
pub mod word_swap;

pub use itc::{
    alpha_ramp, clip_loss, diagonal_targets, itc_with_queue, multi_positive_targets, try_clip_loss,
    Itc, ItcInputs, ItcQueueInputs, ItcQueueOutput,
};
pub use itm::{same_id_positives, HardNegativeSampler, Itm, NegativeDraws};
pub use lm::{lm_loss, try_lm_loss};
pub use mlm::{Mlm, MlmDraws, MlmMasker};
pub use momentum::{copy_params, enqueue, enqueue_idx, enqueue_shared, momentum_update};
pub use word_swap::{word_swap_itm_loss, SwappedText, WordSwap};
