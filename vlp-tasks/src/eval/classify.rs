//! Model-agnostic NLVR2 and SNLI-VE evaluators: the model gives class logits, the evaluator takes
//! the argmax, writes the predictions in the format `vlp score nlvr2|ve` reads
//! ([`ClassifyReport::write_results`]: `[{"identifier"|"pairID"|"index", "prediction"}]`) and
//! computes accuracy and per-class accuracy as [`crate::metrics::classification`] (NLVR2: plus
//! the official consistency when every example has an official identifier).
//!
//! - NLVR2 ([`Nlvr2Model`]): two images per example, passed as `[image0 (B) ; image1 (B)]`
//!   `[2B, 3, H, W]` as ALBEF's and BLIP's NLVR models take them; logits `[B, 2]`, class 1 =
//!   `True` (ALBEF/BLIP targets). Predictions are written as `"True"` / `"False"`.
//! - SNLI-VE ([`VeModel`]): logits `[B, 3]` in ALBEF's order (contradiction 0, neutral 1,
//!   entailment 2); predictions are written as the label names.
//!
//! Examples with an identifier are keyed by it (`identifier` for NLVR2, `pairID` for SNLI-VE),
//! the others by their position in the annotation file (`index`).
use super::{argmax_rows, image_batches, progress_bar, write_json, EvalOptions};
use crate::data::nlvr2::Nlvr2Example;
use crate::data::snli_ve::{VeExample, VeLabel};
use crate::data::TextPrep;
use crate::metrics::classification::{accuracy, nlvr2_consistency, Accuracy};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// What an NLVR2 model offers the evaluator.
pub trait Nlvr2Model {
    /// `[B, 2]` logits (class 1 = `True`) of `images` `[2B, 3, H, W]` = `[image0 ; image1]`
    /// (transformed, on the CPU) and the `B` preprocessed sentences.
    fn logits(&mut self, images: &Tensor, sentences: &[String]) -> Result<Tensor>;
}

/// What an SNLI-VE model offers the evaluator.
pub trait VeModel {
    /// `[B, 3]` logits (contradiction, neutral, entailment) of `images` `[B, 3, H, W]`
    /// (transformed, on the CPU) and the `B` preprocessed hypotheses.
    fn logits(&mut self, images: &Tensor, sentences: &[String]) -> Result<Tensor>;
}

/// Which task a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyTask {
    /// NLVR2.
    Nlvr2,
    /// SNLI-VE.
    Ve,
}

/// The evaluator's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyReport {
    /// The task.
    pub task: ClassifyTask,
    /// `accuracy`, `correct`, `total`, `per_class` (percent) and, for NLVR2 with official
    /// identifiers, `consistency` — the keys `vlp score` prints.
    #[serde(flatten)]
    pub metrics: Accuracy,
    /// The predicted class per example, in annotation order.
    #[serde(skip)]
    pub predictions: Vec<usize>,
    /// One result record per example (`{"identifier"|"pairID"|"index", "prediction"}`).
    #[serde(skip)]
    pub results: Vec<Value>,
}

impl ClassifyReport {
    /// Writes the predictions `[{"identifier"|"pairID"|"index": …, "prediction": …}]`, the JSON
    /// format `vlp score nlvr2|ve --results` reads.
    pub fn write_results(&self, path: &Path) -> Result<()> {
        write_json(path, &self.results)
    }

    /// Writes the report (the metrics) as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Runs `logits` over batches of the examples' images and returns the argmax per example.
fn predict(
    paths: Vec<Vec<PathBuf>>,
    sentences: &[String],
    classes: usize,
    transform: ImageTransform,
    opts: &EvalOptions,
    what: &str,
    mut logits: impl FnMut(&Tensor, &[String]) -> Result<Tensor>,
) -> Result<Vec<usize>> {
    let n = paths.len();
    if n == 0 {
        return Err(VlpError::input("examples", "no examples"));
    }
    let loader = image_batches(paths, transform, opts)?;
    let pb = progress_bar(opts.progress, n as u64, what);
    let mut out: Vec<Option<usize>> = vec![None; n];
    for batch in loader.epoch(0) {
        let (idx, imgs) = batch?;
        let images = if imgs.len() == 1 {
            imgs[0].shallow_clone()
        } else {
            Tensor::cat(&imgs, 0)
        };
        let s: Vec<String> = idx.iter().map(|&i| sentences[i].clone()).collect();
        let l = logits(&images, &s)?;
        let am = argmax_rows(&l, idx.len(), classes, what)?;
        for (&i, p) in idx.iter().zip(am) {
            out[i] = Some(p);
        }
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    out.into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| VlpError::Msg(format!("example {i} was never predicted"))))
        .collect()
}

fn key(id: &Option<String>, id_key: &str, index: usize) -> Value {
    match id {
        Some(s) => json!({ id_key: s }),
        None => json!({ "index": index }),
    }
}

/// Evaluates an NLVR2 model on `examples` (`prep` preprocesses the sentences, e.g. ALBEF's
/// `pre_caption`).
pub fn evaluate_nlvr2<M: Nlvr2Model + ?Sized>(
    model: &mut M,
    examples: &[Nlvr2Example],
    transform: ImageTransform,
    prep: TextPrep,
    opts: &EvalOptions,
) -> Result<ClassifyReport> {
    let paths = examples.iter().map(|e| e.images.to_vec()).collect();
    let sentences: Vec<String> = examples.iter().map(|e| prep.caption(&e.sentence)).collect();
    let preds = predict(paths, &sentences, 2, transform, opts, "NLVR2", |i, s| {
        model.logits(i, s)
    })?;
    let pairs: Vec<(bool, bool)> = examples
        .iter()
        .zip(&preds)
        .map(|(e, &p)| (e.label, p == 1))
        .collect();
    let name = |b: &bool| if *b { "True" } else { "False" }.to_string();
    let mut metrics = accuracy(&pairs, name);
    if examples.iter().all(|e| e.identifier.is_some()) {
        metrics.consistency = nlvr2_consistency(
            examples
                .iter()
                .zip(&pairs)
                .map(|(e, (t, p))| (e.identifier.as_deref().unwrap_or(""), t == p)),
        );
    }
    let results = examples
        .iter()
        .zip(&pairs)
        .enumerate()
        .map(|(i, (e, (_, p)))| {
            let mut v = key(&e.identifier, "identifier", i);
            v["prediction"] = json!(name(p));
            v
        })
        .collect();
    Ok(ClassifyReport {
        task: ClassifyTask::Nlvr2,
        metrics,
        predictions: preds,
        results,
    })
}

/// Evaluates an SNLI-VE model on `examples` (`prep` preprocesses the hypotheses).
pub fn evaluate_ve<M: VeModel + ?Sized>(
    model: &mut M,
    examples: &[VeExample],
    transform: ImageTransform,
    prep: TextPrep,
    opts: &EvalOptions,
) -> Result<ClassifyReport> {
    let paths = examples.iter().map(|e| vec![e.image.clone()]).collect();
    let sentences: Vec<String> = examples.iter().map(|e| prep.caption(&e.sentence)).collect();
    let preds = predict(paths, &sentences, 3, transform, opts, "SNLI-VE", |i, s| {
        model.logits(i, s)
    })?;
    let pairs: Vec<(VeLabel, VeLabel)> = examples
        .iter()
        .zip(&preds)
        .map(|(e, &p)| (e.label, VeLabel::ALL[p]))
        .collect();
    let metrics = accuracy(&pairs, |l| l.name().to_string());
    let results = examples
        .iter()
        .zip(&pairs)
        .enumerate()
        .map(|(i, (e, (_, p)))| {
            let mut v = key(&e.identifier, "pairID", i);
            v["prediction"] = json!(p.name());
            v
        })
        .collect();
    Ok(ClassifyReport {
        task: ClassifyTask::Ve,
        metrics,
        predictions: preds,
        results,
    })
}
