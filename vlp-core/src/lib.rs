//! vlp-core: the parts every model of the vlp-rs zoo shares.
//!
//! - [`attention`]: multi-head attention over `scaled_dot_product_attention` (self/cross, padding and
//!   causal masks, additive bias, fused `qkv` or separate `query/key/value`).
//! - [`layers`]: transformer blocks (BERT layer with optional cross-attention, ViT block, multiway /
//!   mixture-of-modality-experts block), embeddings, MLPs, drop-path.
//! - [`checkpoint`]: PyTorch `.pth`/`.bin` (zip + pickle) and `.safetensors` reading, strict loading
//!   into a `VarStore` with a full report, atomic safetensors writing.
//! - [`text`], [`image`]: tokenisation and image preprocessing as the official loaders do them.
//! - [`config`]: serde configs that reject unknown fields with the field's name and position.
pub mod assets;
pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod generation;
pub mod image;
pub mod layers;
pub mod text;

pub use error::{Result, VlpError};
