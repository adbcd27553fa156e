//! Metrics of the downstream tasks, each matching the official evaluation code named in its
//! module.
pub mod caption;
pub mod classification;
pub mod retrieval;
pub mod vqa;
