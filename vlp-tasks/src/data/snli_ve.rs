//! SNLI-VE: does the image entail, contradict or leave open (neutral) the hypothesis?
//!
//! Accepted files (detected from the text):
//! - ALBEF/BLIP `ve_{train,dev,test}.json`: a JSON array of
//!   `{"image": "2248275918.jpg", "sentence": "…", "label": "entailment"}`;
//! - the official `snli_ve_{train,dev,test}.jsonl`: one
//!   `{"Flickr30K_ID": "2248275918", "sentence2": "…", "gold_label": "entailment", "pairID": "…", …}`
//!   per line; the image is `{Flickr30K_ID}.jpg` and `pairID` is the identifier.
//!
//! Labels are indexed as ALBEF's `ve_dataset`: contradiction 0, neutral 1, entailment 2.
use super::json::{Record, Source};
use super::loader::Dataset;
use super::{Collector, Loaded, ReadOptions, TextPrep};
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::Result;

/// An SNLI-VE label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VeLabel {
    /// `contradiction` (0).
    Contradiction,
    /// `neutral` (1).
    Neutral,
    /// `entailment` (2).
    Entailment,
}

impl VeLabel {
    /// All labels by index.
    pub const ALL: [VeLabel; 3] = [
        VeLabel::Contradiction,
        VeLabel::Neutral,
        VeLabel::Entailment,
    ];

    /// ALBEF's class index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label's name.
    pub fn name(self) -> &'static str {
        ["contradiction", "neutral", "entailment"][self as usize]
    }

    /// Parses a name (any case) or a class index.
    pub fn parse(v: &Value) -> Option<VeLabel> {
        match v {
            Value::String(s) => Self::ALL
                .into_iter()
                .find(|l| l.name().eq_ignore_ascii_case(s.trim())),
            Value::Number(n) => n.as_u64().and_then(|i| Self::ALL.get(i as usize).copied()),
            _ => None,
        }
    }
}

/// One SNLI-VE example.
#[derive(Debug, Clone, PartialEq)]
pub struct VeExample {
    /// `pairID` (official files) or `identifier`.
    pub identifier: Option<String>,
    /// Image path as written (or derived from `Flickr30K_ID`).
    pub image_rel: String,
    /// Image path resolved against the image root.
    pub image: PathBuf,
    /// The hypothesis.
    pub sentence: String,
    /// The label.
    pub label: VeLabel,
}

fn label(r: &Record<'_>, key: &str) -> Result<VeLabel> {
    let v = r.req(key)?;
    VeLabel::parse(v).ok_or_else(|| {
        r.err(
            key,
            format!(
                "expected entailment, neutral or contradiction, found {}",
                super::json::show(v)
            ),
        )
    })
}

/// Reads an SNLI-VE file (ALBEF JSON array or official JSON lines).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Loaded<VeExample>> {
    let src = Source::read(path)?;
    let mut out = Collector::new(path, opts);
    for rec in src.records()? {
        out.push(rec.and_then(|r| {
            let official = r.get("Flickr30K_ID")?.is_some() || r.get("sentence2")?.is_some();
            let (image_rel, sentence, label, identifier) = if official {
                let id = r
                    .opt_string("Flickr30K_ID")?
                    .ok_or_else(|| r.err("Flickr30K_ID", "missing"))?;
                if id.trim().is_empty() {
                    return Err(r.err("Flickr30K_ID", "empty"));
                }
                (
                    format!("{id}.jpg"),
                    r.string("sentence2")?,
                    label(&r, "gold_label")?,
                    r.opt_string("pairID")?,
                )
            } else {
                (
                    r.string("image")?,
                    r.string("sentence")?,
                    label(&r, "label")?,
                    r.opt_string("identifier")?,
                )
            };
            Ok(VeExample {
                identifier,
                image: opts.image_path(&image_rel),
                image_rel,
                sentence,
                label,
            })
        }))?;
    }
    Ok(out.finish())
}

/// An SNLI-VE sample.
#[derive(Debug)]
pub struct VeSample {
    /// The transformed image.
    pub image: Tensor,
    /// The preprocessed hypothesis.
    pub sentence: String,
    /// The label.
    pub label: VeLabel,
}

/// An SNLI-VE data set.
#[derive(Debug, Clone)]
pub struct VeDataset {
    examples: Arc<Vec<VeExample>>,
    transform: ImageTransform,
    prep: TextPrep,
}

impl VeDataset {
    /// A data set over read examples.
    pub fn new(examples: Vec<VeExample>, transform: ImageTransform, prep: TextPrep) -> Self {
        VeDataset {
            examples: Arc::new(examples),
            transform,
            prep,
        }
    }
}

impl Dataset for VeDataset {
    type Sample = VeSample;
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<VeSample> {
        let e = &self.examples[i];
        Ok(VeSample {
            image: self.transform.apply_path(&e.image, rng)?,
            sentence: self.prep.caption(&e.sentence),
            label: e.label,
        })
    }
}
