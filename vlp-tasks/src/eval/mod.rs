//! Evaluation loops that drive a model, model-agnostic: each evaluator defines the trait a model
//! implements, decodes the images on the loader's worker threads, writes the result file the
//! official evaluation (and `vlp score`) reads, and computes the official metric when the ground
//! truth is known.
//!
//! - [`retrieval`]: image–text retrieval (ITC top-k, batched ITM rerank, fusion rule).
//! - [`vqa`]: VQA, classifier over an answer vocabulary or ranking over an answer list; writes
//!   `[{"question_id", "answer"}]`.
//! - [`caption`]: captioning; writes COCO results `[{"image_id", "caption"}]`, BLEU / CIDEr-D.
//! - [`classify`]: NLVR2 and SNLI-VE; writes `[{"identifier"|"pairID"|"index", "prediction"}]`.
//! - [`models`]: the ALBEF and BLIP models of `vlp-models` behind these traits.
pub mod caption;
pub mod classify;
pub mod models;
pub mod retrieval;
pub mod vqa;

use crate::data::loader::{stack_images, DataLoader, Dataset, LoaderConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// Settings shared by the VQA, captioning and classification evaluators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalOptions {
    /// Examples per model call.
    pub batch_size: usize,
    /// Loader threads decoding images (0 = on the calling thread).
    #[serde(default)]
    pub num_workers: usize,
    /// Show a progress bar (indicatif) on stderr.
    #[serde(default)]
    pub progress: bool,
}

impl EvalOptions {
    /// `batch_size` examples per call, images decoded on the calling thread, no progress bar.
    pub fn new(batch_size: usize) -> Self {
        EvalOptions {
            batch_size,
            num_workers: 0,
            progress: false,
        }
    }
}

/// A progress bar with rate and ETA on stderr, hidden unless `show`.
pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>14} [{bar:30}] {pos}/{len} {per_sec} {elapsed_precise} eta {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b
}

/// Writes `value` as pretty JSON (and a final newline) to `path`.
pub(crate) fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| VlpError::Msg(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| VlpError::io(dir, e))?;
    }
    std::fs::write(path, text + "\n").map_err(|e| VlpError::io(path, e))
}

/// Examples whose images (one or more per example, a fixed number) are decoded and transformed.
pub(crate) struct ImageTuples {
    paths: Arc<Vec<Vec<PathBuf>>>,
    transform: ImageTransform,
}

impl Dataset for ImageTuples {
    type Sample = (usize, Vec<Tensor>);
    fn len(&self) -> usize {
        self.paths.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<(usize, Vec<Tensor>)> {
        let imgs = self.paths[i]
            .iter()
            .map(|p| self.transform.apply_path(p, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok((i, imgs))
    }
}

/// One batch of examples: their indices and, per image slot, the images `[B, 3, H, W]`.
pub(crate) type ImageBatch = (Vec<usize>, Vec<Tensor>);

/// Batches of the examples' images in order (no shuffling, nothing skipped: a missing or corrupt
/// image is an error naming the file), decoded on `opts.num_workers` threads. Every example must
/// have the same number of images.
pub(crate) fn image_batches(
    paths: Vec<Vec<PathBuf>>,
    transform: ImageTransform,
    opts: &EvalOptions,
) -> Result<DataLoader<ImageTuples, ImageBatch>> {
    if opts.batch_size == 0 {
        return Err(VlpError::Config {
            path: "<eval>".into(),
            msg: "batch_size must be positive".into(),
        });
    }
    let slots = paths.first().map_or(0, Vec::len);
    if let Some(i) = paths.iter().position(|p| p.len() != slots) {
        return Err(VlpError::input(
            "images",
            format!(
                "example {i} has {} images, expected {slots}",
                paths[i].len()
            ),
        ));
    }
    let mut lc = LoaderConfig::new(opts.batch_size);
    lc.shuffle = false;
    lc.drop_last = false;
    lc.skip_bad_samples = false;
    lc.num_workers = opts.num_workers;
    DataLoader::new(
        ImageTuples {
            paths: Arc::new(paths),
            transform,
        },
        move |samples: Vec<(usize, Vec<Tensor>)>| {
            let ids: Vec<usize> = samples.iter().map(|s| s.0).collect();
            let mut per_slot: Vec<Vec<Tensor>> = (0..slots).map(|_| Vec::new()).collect();
            for (_, imgs) in samples {
                for (s, t) in imgs.into_iter().enumerate() {
                    per_slot[s].push(t);
                }
            }
            let stacked = per_slot
                .into_iter()
                .map(stack_images)
                .collect::<Result<Vec<_>>>()?;
            Ok((ids, stacked))
        },
        lc,
    )
}

/// The argmax of each row of `[B, C]` logits (`C` = `classes`), checked against `b` rows.
pub(crate) fn argmax_rows(
    logits: &Tensor,
    b: usize,
    classes: usize,
    who: &str,
) -> Result<Vec<usize>> {
    let size = logits.size();
    if size != [b as i64, classes as i64] {
        return Err(VlpError::input(
            who,
            format!("expected logits [{b}, {classes}], got {size:?}"),
        ));
    }
    let am = logits.argmax(1, false).to_device(tch::Device::Cpu);
    Ok(Vec::<i64>::try_from(&am)?
        .into_iter()
        .map(|x| x as usize)
        .collect())
}
