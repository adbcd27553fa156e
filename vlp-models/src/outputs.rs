//! Typed batches and outputs shared by models whose official code has the same call: the
//! retrieval fine-tuning forward `model(image, text, alpha, idx)` and the retrieval evaluation of
//! ALBEF (`Retrieval.py`) and BLIP (`train_retrieval.py`).
use tch::Tensor;
use vlp_objectives::itm::NegativeDraws;

/// One retrieval fine-tuning batch.
#[derive(Debug, Clone, Copy)]
pub struct RetrievalBatch<'a> {
    /// `[B, 3, H, W]` normalised images.
    pub image: &'a Tensor,
    /// `[B, L]` caption ids (`[CLS]` first; ALBEF max_length 30, BLIP 35).
    pub input_ids: &'a Tensor,
    /// `[B, L]` caption mask.
    pub attention_mask: &'a Tensor,
    /// `[B]` image ids (captions of one image share it).
    pub idx: &'a Tensor,
}

/// Outputs of the retrieval fine-tuning forward `model(image, text, alpha, idx)`.
#[derive(Debug)]
pub struct RetrievalTrainOutput {
    /// ITC loss (multi-positive targets, distilled when `distill`).
    pub loss_ita: Tensor,
    /// ITM loss.
    pub loss_itm: Tensor,
    /// `[3B, 2]` ITM logits.
    pub itm_logits: Tensor,
    /// `[B, B]` negative-image weights of each text.
    pub itm_weights_t2i: Tensor,
    /// `[B, B]` negative-text weights of each image.
    pub itm_weights_i2t: Tensor,
    /// The negatives used.
    pub negatives: NegativeDraws,
    /// `[B, E]` momentum image features (enqueued).
    pub image_feat_m: Tensor,
    /// `[B, E]` momentum text features (enqueued).
    pub text_feat_m: Tensor,
}

/// The score matrices of the official retrieval evaluation. The fusion rule differs by model:
/// ALBEF scores a top-k candidate with the ITM logit only, BLIP with ITM logit + ITC sim.
#[derive(Debug)]
pub struct RetrievalScores {
    /// `[Ni, Nt]` ITC similarities `image_feat @ text_feat.T`.
    pub sims: Tensor,
    /// `[Ni, Nt]`: the fused score of each image's top-k texts, -100 elsewhere.
    pub i2t: Tensor,
    /// `[Nt, Ni]`: the fused score of each text's top-k images, -100 elsewhere.
    pub t2i: Tensor,
}
