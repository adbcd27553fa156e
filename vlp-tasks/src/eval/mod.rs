//! Evaluation loops that drive a model.
pub mod retrieval;
