//! vlp-tasks: the downstream tasks of vlp-rs: data, metrics and evaluation.
//!
//! - [`data`]: readers of the official data formats (COCO / Flickr30k Karpathy splits as
//!   ALBEF/BLIP/LAVIS ship them, VQA v2 official files and ALBEF/BLIP `vqa_*.json`, NLVR2,
//!   SNLI-VE, easy-VQA) resolving images against a configurable root; bad records name the file,
//!   line and field, and are either fatal or skipped and counted (`skip_bad_samples`);
//!   [`data::loader`]: a threaded, prefetching, deterministic and resumable data loader over a
//!   [`data::loader::Dataset`].
//! - [`metrics`]: VQA accuracy (official `vqaEval.py`) and soft-score targets, retrieval recall
//!   (ALBEF/BLIP `itm_eval`), NLVR2 / SNLI-VE accuracy, BLEU-1..4, ROUGE-L and CIDEr-D with PTB
//!   tokenisation (pycocoevalcap).
//! - [`eval`]: model-agnostic evaluators — retrieval (ITC top-k, batched ITM rerank, fusion
//!   rule), VQA (classifier or answer ranking; writes the official result file), captioning
//!   (COCO result JSON), NLVR2 / SNLI-VE — and the ALBEF / BLIP models behind their traits.
//! - [`score`]: `vlp score`, the metrics of saved predictions.
//!
//! `docs/tasks.md` lists, per task, the accepted file formats, the metric and its convention, and
//! the command.
pub mod capfilt;
pub mod data;
pub mod eval;
pub mod metrics;
pub mod pipeline;
pub mod quickstart;
pub mod score;
pub mod shapes;
pub mod train;
