//! The ALBEF and BLIP models of `vlp-models` behind the evaluators' traits: views that borrow a
//! model (in evaluation mode: `train = false`, the default) with its text encoding, move the
//! inputs to the model's device and run without gradients.
//!
//! | model | retrieval ([`RetrievalModel`](crate::eval::retrieval::RetrievalModel)) | VQA | captioning | NLVR2 | SNLI-VE |
//! |---|---|---|---|---|---|
//! | ALBEF | pretrain / retrieval, [`Fusion::ItmOnly`](crate::eval::retrieval::Fusion) | `AlbefVqa` (ranking), `AlbefVqaClassifier` (classifier) | — | `AlbefNlvr` | `AlbefVe` |
//! | BLIP | pretrain / retrieval / itm, [`Fusion::ItmPlusItc`](crate::eval::retrieval::Fusion) | `BlipVqa` (ranking) | `BlipDecoder` | `BlipNlvr` | — |
pub mod albef;
pub mod blip;

use vlp_core::{Result, VlpError};

/// The error of a view built over a model left in training mode (dropout on).
pub(crate) fn check_eval_mode(train: bool, what: &str) -> Result<()> {
    if train {
        return Err(VlpError::input(
            what,
            "the model is in training mode (train = true, dropout on); set train = false before evaluating",
        ));
    }
    Ok(())
}
