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

/// An image pair with some of its sentences (see [`GroupedNlvr2Dataset`]).
#[derive(Debug)]
pub struct GroupedNlvr2Sample {
    /// The two transformed images.
    pub images: [Tensor; 2],
    /// Preprocessed sentences with their labels (at least one).
    pub sentences: Vec<(String, bool)>,
}

/// An image pair (two paths) with its labelled sentences.
type PairGroup = ([PathBuf; 2], Vec<(String, bool)>);

/// An NLVR2 data set whose items are image pairs, each with up to `per_pair` of its sentences
/// (drawn without replacement from the sample's RNG), so that a model encodes each pair once
/// for all of them and sees a pair's true and false sentences in the same step. Pairs are the
/// distinct `images` of the examples, in order of first appearance.
#[derive(Debug, Clone)]
pub struct GroupedNlvr2Dataset {
    pairs: Arc<Vec<PairGroup>>,
    per_pair: usize,
    transform: ImageTransform,
    prep: TextPrep,
}

impl GroupedNlvr2Dataset {
    /// Groups `examples` by image pair; each sample carries at most `per_pair` (≥ 1) sentences.
    pub fn new(
        examples: Vec<Nlvr2Example>,
        per_pair: usize,
        transform: ImageTransform,
        prep: TextPrep,
    ) -> Self {
        let pairs: Vec<PairGroup> =
            super::grouped::group_by_first_appearance(examples, |e| e.images.clone())
                .into_iter()
                .map(|(k, es)| (k, es.into_iter().map(|e| (e.sentence, e.label)).collect()))
                .collect();
        GroupedNlvr2Dataset {
            pairs: Arc::new(pairs),
            per_pair: per_pair.max(1),
            transform,
            prep,
        }
    }

    /// Number of sentences over all pairs.
    pub fn num_sentences(&self) -> usize {
        self.pairs.iter().map(|(_, s)| s.len()).sum()
    }
}

impl Dataset for GroupedNlvr2Dataset {
    type Sample = GroupedNlvr2Sample;
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<GroupedNlvr2Sample> {
        let (paths, all) = &self.pairs[i];
        let a = self.transform.apply_path(&paths[0], rng)?;
        let b = self.transform.apply_path(&paths[1], rng)?;
        let picked = super::grouped::pick_up_to(all, self.per_pair, rng);
        Ok(GroupedNlvr2Sample {
            images: [a, b],
            sentences: picked
                .into_iter()
                .map(|(s, l)| (self.prep.caption(s), *l))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use vlp_core::image::{ImageTransformConfig, Normalize};

    #[test]
    fn groups_by_pair_and_draws_at_most_per_pair_sentences() {
        let dir = std::env::temp_dir().join(format!("vlp-nlvr2-grouped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = |name: &str| {
            let p = dir.join(name);
            image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
                .save(&p)
                .unwrap();
            p
        };
        let (a, b, c) = (img("a.png"), img("b.png"), img("c.png"));
        let ex = |l: &PathBuf, r: &PathBuf, s: &str, label: bool| Nlvr2Example {
            identifier: None,
            image_rels: [l.display().to_string(), r.display().to_string()],
            images: [l.clone(), r.clone()],
            sentence: s.into(),
            label,
        };
        // (a, b) has four sentences, (b, a) — another pair, order matters — one, (a, c) two.
        let examples = vec![
            ex(&a, &b, "ab0", true),
            ex(&b, &a, "ba0", false),
            ex(&a, &b, "ab1", false),
            ex(&a, &c, "ac0", true),
            ex(&a, &b, "ab2", true),
            ex(&a, &c, "ac1", false),
            ex(&a, &b, "ab3", false),
        ];
        let tf = ImageTransform::new(ImageTransformConfig::eval(8, Normalize::Clip)).unwrap();
        let ds = GroupedNlvr2Dataset::new(examples, 3, tf, TextPrep::Raw);
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.num_sentences(), 7);
        let mut rng = StdRng::seed_from_u64(0);
        let s = ds.get(0, &mut rng).unwrap();
        assert_eq!(s.images[0].size(), [3, 8, 8]);
        assert_eq!(s.sentences.len(), 3);
        let mut seen = std::collections::BTreeSet::new();
        for (text, label) in &s.sentences {
            assert!(text.starts_with("ab"), "{text}");
            let j: usize = text[2..].parse().unwrap();
            assert_eq!(*label, j.is_multiple_of(2), "{text}");
            assert!(seen.insert(text.clone()), "{text} drawn twice");
        }
        assert_eq!(
            ds.get(1, &mut rng).unwrap().sentences,
            vec![("ba0".to_string(), false)]
        );
        assert_eq!(ds.get(2, &mut rng).unwrap().sentences.len(), 2);
        let draw = |seed| {
            ds.get(0, &mut StdRng::seed_from_u64(seed))
                .unwrap()
                .sentences
        };
        assert_eq!(draw(7), draw(7));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
