//! A model-agnostic captioning evaluator: one caption per image from a [`CaptionModel`], written
//! as the COCO result list `[{"image_id", "caption"}]` ([`CaptionReport::write_results`], what
//! pycocoevalcap and `vlp score caption` read) and, when the images have reference captions,
//! scored with BLEU-1..4, ROUGE-L and CIDEr-D as pycocoevalcap ([`crate::metrics::caption`]).
//!
//! The images come from Karpathy-split entries ([`images_of`]): entries of the same image are
//! merged (training files hold one caption per record), and the image id is the one BLIP's
//! `coco_karpathy_caption_eval` uses (the number at the end of the file name, or the integer
//! `image_id`), else the file's `image_id`. [`write_references`] writes the references as a COCO
//! captions annotation file, for `vlp score caption --references`.
use super::{image_batches, progress_bar, write_json, EvalOptions};
use crate::data::karpathy::{CaptionEntry, ImageId};
use crate::metrics::caption::{caption_metrics, CaptionMetrics};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// What a model offers the captioning evaluator.
pub trait CaptionModel {
    /// One caption per image of `images` `[B, 3, H, W]` (transformed, on the CPU), as the model
    /// decodes it (the prompt stripped).
    fn generate(&mut self, images: &Tensor) -> Result<Vec<String>>;
}

/// One image to caption.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionImage {
    /// The image file.
    pub image: PathBuf,
    /// The id written to the result file.
    pub image_id: ImageId,
    /// Reference captions (empty when unknown).
    pub references: Vec<String>,
}

/// The images of Karpathy-split entries, in first-appearance order: entries with the same image
/// file are merged (their captions become the references). The id is
/// [`CaptionEntry::numeric_id`] (BLIP's COCO id), else the entry's `image_id`; two images with
/// one id, or an image with none, are errors.
pub fn images_of(entries: &[CaptionEntry]) -> Result<Vec<CaptionImage>> {
    let mut out: Vec<CaptionImage> = Vec::new();
    let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
    let mut by_id: HashMap<ImageId, PathBuf> = HashMap::new();
    for e in entries {
        if let Some(&i) = by_path.get(&e.image) {
            out[i].references.extend(e.captions.iter().cloned());
            continue;
        }
        let id = match (e.numeric_id(), &e.image_id) {
            (Some(n), _) => ImageId::Int(n),
            (None, Some(id)) => id.clone(),
            (None, None) => {
                return Err(VlpError::input(
                    "entries",
                    format!(
                    "{}: no image id (neither a number at the end of the file name nor `image_id`)",
                    e.image_rel
                ),
                ))
            }
        };
        if let Some(other) = by_id.insert(id.clone(), e.image.clone()) {
            return Err(VlpError::input(
                "entries",
                format!(
                    "images {} and {} have the same image_id {id}",
                    other.display(),
                    e.image.display()
                ),
            ));
        }
        by_path.insert(e.image.clone(), out.len());
        out.push(CaptionImage {
            image: e.image.clone(),
            image_id: id,
            references: e.captions.clone(),
        });
    }
    Ok(out)
}

/// One line of the COCO result file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptionResult {
    /// `image_id` (an integer, or the string id of the annotation file).
    pub image_id: ImageId,
    /// The generated caption.
    pub caption: String,
}

/// The evaluator's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionReport {
    /// Images captioned.
    pub images: usize,
    /// `Bleu_1` … `Bleu_4`, `ROUGE_L`, `CIDEr` (pycocoevalcap's names); `None` without
    /// references.
    #[serde(flatten)]
    pub metrics: Option<CaptionMetrics>,
    /// One caption per image, in image order.
    #[serde(skip)]
    pub results: Vec<CaptionResult>,
}

impl CaptionReport {
    /// Writes the COCO result list `[{"image_id", "caption"}]`.
    pub fn write_results(&self, path: &Path) -> Result<()> {
        write_json(path, &self.results)
    }

    /// Writes the report (count and metrics) as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Writes the references of `images` as a COCO captions annotation file
/// (`{"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}`).
pub fn write_references(path: &Path, images: &[CaptionImage]) -> Result<()> {
    let mut anns = Vec::new();
    for im in images {
        for c in &im.references {
            anns.push(json!({"image_id": im.image_id, "id": anns.len(), "caption": c}));
        }
    }
    let imgs: Vec<_> = images.iter().map(|im| json!({"id": im.image_id})).collect();
    write_json(path, &json!({"images": imgs, "annotations": anns}))
}

/// Captions every image of `images` with `model` and scores the captions when every image has
/// references (an error when only some have).
pub fn evaluate<M: CaptionModel + ?Sized>(
    model: &mut M,
    images: &[CaptionImage],
    transform: ImageTransform,
    opts: &EvalOptions,
) -> Result<CaptionReport> {
    if images.is_empty() {
        return Err(VlpError::input("images", "no images"));
    }
    let with_refs = images.iter().filter(|i| !i.references.is_empty()).count();
    if with_refs > 0 && with_refs < images.len() {
        let i = images
            .iter()
            .find(|i| i.references.is_empty())
            .map(|i| i.image.display().to_string())
            .unwrap_or_default();
        return Err(VlpError::input(
            "images",
            format!("{i} has no reference caption but {with_refs} images have"),
        ));
    }
    let paths: Vec<Vec<PathBuf>> = images.iter().map(|i| vec![i.image.clone()]).collect();
    let loader = image_batches(paths, transform, opts)?;
    let pb = progress_bar(opts.progress, images.len() as u64, "captions");
    let mut captions: Vec<Option<String>> = vec![None; images.len()];
    for batch in loader.epoch(0) {
        let (idx, imgs) = batch?;
        let got = model.generate(&imgs[0])?;
        if got.len() != idx.len() {
            return Err(VlpError::input(
                "CaptionModel::generate",
                format!("{} captions for {} images", got.len(), idx.len()),
            ));
        }
        for (&i, c) in idx.iter().zip(got) {
            captions[i] = Some(c);
        }
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let results: Vec<CaptionResult> = images
        .iter()
        .zip(captions)
        .map(|(im, c)| {
            Ok(CaptionResult {
                image_id: im.image_id.clone(),
                caption: c.ok_or_else(|| {
                    VlpError::Msg(format!("{} was never captioned", im.image.display()))
                })?,
            })
        })
        .collect::<Result<_>>()?;
    let metrics = (with_refs > 0).then(|| {
        let pairs: Vec<(String, Vec<String>)> = results
            .iter()
            .zip(images)
            .map(|(r, im)| (r.caption.clone(), im.references.clone()))
            .collect();
        caption_metrics(&pairs)
    });
    Ok(CaptionReport {
        images: images.len(),
        metrics,
        results,
    })
}
