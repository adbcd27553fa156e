//! NLVR2: a sentence about a pair of images, true or false.
//!
//! Accepted files (detected from the text):
//! - ALBEF/BLIP `nlvr_{train,dev,test}.json`: a JSON array of
//!   `{"images": ["dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"], "sentence": "…", "label": "True"}`
//!   (an `identifier` field is kept when present);
//! - the official NLVR2 JSON lines (`train.json`, `dev.json`, `test1.json`): one
//!   `{"identifier": "dev-850-0-0", "sentence": "…", "label": "True", "directory": 34 (train only), …}`
//!   per line; the images are `{split}/{directory}/{id}-img0.png` and `…-img1.png` (train) or
//!   `{split}/{id}-img0.png` (dev, test1), where `{id}` is the identifier without its last part.
//!
//! Labels: `"True"`/`"False"` (any case), booleans, or 1/0.
use super::json::{Record, Source};
use super::loader::Dataset;
use super::{Collector, Loaded, ReadOptions, TextPrep};
use rand::rngs::StdRng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::Result;

/// One NLVR2 example.
#[derive(Debug, Clone, PartialEq)]
pub struct Nlvr2Example {
    /// `identifier` (official files; optional in ALBEF files).
    pub identifier: Option<String>,
    /// The two image paths as written (or derived).
    pub image_rels: [String; 2],
    /// The two image paths resolved against the image root.
    pub images: [PathBuf; 2],
    /// The sentence.
    pub sentence: String,
    /// Whether the sentence is true of the pair.
    pub label: bool,
}

/// Parses an NLVR2 label value.
pub fn parse_label(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn label(r: &Record<'_>) -> Result<bool> {
    let v = r.req("label")?;
    parse_label(v).ok_or_else(|| {
        r.err(
            "label",
            format!(
                "expected \"True\" or \"False\", found {}",
                super::json::show(v)
            ),
        )
    })
}

/// The image pair of an official identifier (`dev-850-0-0` → `dev/dev-850-0-img0.png`, …).
pub fn official_images(identifier: &str, directory: Option<u64>) -> Option<[String; 2]> {
    let (stem, _) = identifier.rsplit_once('-')?;
    let split = identifier.split('-').next()?;
    let dir = match directory {
        Some(d) => format!("{split}/{d}"),
        None => split.to_string(),
    };
    Some([
        format!("{dir}/{stem}-img0.png"),
        format!("{dir}/{stem}-img1.png"),
    ])
}

/// Reads an NLVR2 file (ALBEF JSON array or official JSON lines).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Loaded<Nlvr2Example>> {
    let src = Source::read(path)?;
    let mut out = Collector::new(path, opts);
    for rec in src.records()? {
        out.push(rec.and_then(|r| {
            let sentence = r.string("sentence")?;
            let label = label(&r)?;
            let identifier = r.opt_string("identifier")?;
            let image_rels: [String; 2] = match r.get("images")? {
                Some(Value::Array(items)) => {
                    if items.len() != 2 {
                        return Err(r.err(
                            "images",
                            format!("expected 2 images, found {}", items.len()),
                        ));
                    }
                    let s = r.strings("images")?;
                    [s[0].clone(), s[1].clone()]
                }
                Some(v) => {
                    return Err(r.err(
                        "images",
                        format!(
                            "expected a list of 2 image paths, found {}",
                            super::json::kind(v)
                        ),
                    ))
                }
                None => {
                    let id = identifier.as_deref().ok_or_else(|| {
                        r.err(
                            "images",
                            "missing (and no `identifier` to derive them from)",
                        )
                    })?;
                    let directory = r.opt_uint("directory")?;
                    official_images(id, directory).ok_or_else(|| {
                        r.err(
                            "identifier",
                            format!("`{id}` is not of the form split-set-sentence-pair"),
                        )
                    })?
                }
            };
            let images = [
                opts.image_path(&image_rels[0]),
                opts.image_path(&image_rels[1]),
            ];
            Ok(Nlvr2Example {
                identifier,
                image_rels,
                images,
                sentence,
                label,
            })
        }))?;
    }
    Ok(out.finish())
}

/// An NLVR2 sample.
#[derive(Debug)]
pub struct Nlvr2Sample {
    /// The two transformed images.
    pub images: [Tensor; 2],
    /// The preprocessed sentence.
    pub sentence: String,
    /// The label.
    pub label: bool,
}

/// An NLVR2 data set.
#[derive(Debug, Clone)]
pub struct Nlvr2Dataset {
    examples: Arc<Vec<Nlvr2Example>>,
    transform: ImageTransform,
    prep: TextPrep,
}

impl Nlvr2Dataset {
    /// A data set over read examples.
    pub fn new(examples: Vec<Nlvr2Example>, transform: ImageTransform, prep: TextPrep) -> Self {
        Nlvr2Dataset {
            examples: Arc::new(examples),
            transform,
            prep,
        }
    }
}

impl Dataset for Nlvr2Dataset {
    type Sample = Nlvr2Sample;
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<Nlvr2Sample> {
        let e = &self.examples[i];
        let a = self.transform.apply_path(&e.images[0], rng)?;
        let b = self.transform.apply_path(&e.images[1], rng)?;
        Ok(Nlvr2Sample {
            images: [a, b],
            sentence: self.prep.caption(&e.sentence),
            label: e.label,
        })
    }
}
