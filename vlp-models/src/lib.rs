//! vlp-models: the vision-language pretraining zoo, one module per paper.
//!
//! Every model is built from its official configuration at a `VarStore` path tree that mirrors
//! the official checkpoint keys, so an official file loads strictly (see
//! [`vlp_core::checkpoint`]). Models are reached by name through the [`registry`]; the CLI
//! (`vlp forward`, `vlp parity`) and the tests go through it.
//!
//! | module | paper | status |
//! |---|---|---|
//! | [`albef`] | ALBEF (Li et al., NeurIPS 2021): pretrain, retrieval, VQA, NLVR2, SNLI-VE | parity with salesforce/ALBEF on tiny fixtures |
//! | [`blip`] | BLIP (Li et al., ICML 2022): pretrain, retrieval, captioning, VQA, NLVR2 | parity with salesforce/BLIP on tiny fixtures |
//! | [`bert`] | BERT (Devlin et al. 2019), the text backbone of ALBEF/BLIP/UNITER | encoder + pooler, parity with HF on all-MiniLM-L6-v2 |
pub mod albef;
pub mod bert;
pub mod blip;
mod common;
pub mod outputs;
pub mod parity;
pub mod registry;

use std::collections::BTreeMap;
use tch::{nn::VarStore, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::Result;

/// Named tensors: the inputs and outputs of [`VlpModel::forward_named`].
pub type Tensors = BTreeMap<String, Tensor>;

/// What every model of the zoo offers to the CLI, the parity runner and the tests.
pub trait VlpModel {
    /// The model's parameters and buffers, at paths equal to the official checkpoint keys.
    fn var_store(&self) -> &VarStore;
    /// Mutable access (loading, device moves).
    fn var_store_mut(&mut self) -> &mut VarStore;
    /// The documented key adaptations applied to an official state dict before strict loading
    /// (e.g. ALBEF's `text_encoder.bert.` → `text_encoder.` for fine-tuned models). Default: none.
    fn adapt_state_dict(&self, sd: StateDict) -> Result<StateDict> {
        Ok(sd)
    }
    /// Runs the model on named inputs (`extra` carries non-tensor call arguments, e.g. the
    /// fixture MANIFEST) and returns every named output it computes.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors>;
}

/// Fetches a required named input, with an error naming it.
pub fn input<'a>(inputs: &'a Tensors, name: &str) -> Result<&'a Tensor> {
    inputs
        .get(name)
        .ok_or_else(|| vlp_core::VlpError::input(name, "missing from the inputs"))
}
