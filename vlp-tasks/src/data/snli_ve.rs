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

/// An image with some of its hypotheses (see [`GroupedVeDataset`]).
#[derive(Debug)]
pub struct GroupedVeSample {
    /// The transformed image.
    pub image: Tensor,
    /// Preprocessed hypotheses with their labels (at least one).
    pub hypotheses: Vec<(String, VeLabel)>,
}

/// An image (its path) with its labelled hypotheses.
type ImageGroup = (PathBuf, Vec<(String, VeLabel)>);

/// An SNLI-VE data set whose items are images, each with up to `per_image` of its hypotheses
/// (drawn without replacement from the sample's RNG), so that a model encodes each image once
/// for all of them and sees an image's entailed and contradicted hypotheses in the same step.
/// Images in order of first appearance.
#[derive(Debug, Clone)]
pub struct GroupedVeDataset {
    images: Arc<Vec<ImageGroup>>,
    per_image: usize,
    transform: ImageTransform,
    prep: TextPrep,
}

impl GroupedVeDataset {
    /// Groups `examples` by image; each sample carries at most `per_image` (≥ 1) hypotheses.
    pub fn new(
        examples: Vec<VeExample>,
        per_image: usize,
        transform: ImageTransform,
        prep: TextPrep,
    ) -> Self {
        let images = super::grouped::group_by_first_appearance(examples, |e| e.image.clone())
            .into_iter()
            .map(|(k, es)| (k, es.into_iter().map(|e| (e.sentence, e.label)).collect()))
            .collect();
        GroupedVeDataset {
            images: Arc::new(images),
            per_image: per_image.max(1),
            transform,
            prep,
        }
    }

    /// Number of hypotheses over all images.
    pub fn num_hypotheses(&self) -> usize {
        self.images.iter().map(|(_, h)| h.len()).sum()
    }
}

impl Dataset for GroupedVeDataset {
    type Sample = GroupedVeSample;
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<GroupedVeSample> {
        let (path, all) = &self.images[i];
        let image = self.transform.apply_path(path, rng)?;
        let picked = super::grouped::pick_up_to(all, self.per_image, rng);
        Ok(GroupedVeSample {
            image,
            hypotheses: picked
                .into_iter()
                .map(|(h, l)| (self.prep.caption(h), *l))
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
    fn groups_by_image_and_draws_at_most_per_image_hypotheses() {
        let dir = std::env::temp_dir().join(format!("vlp-ve-grouped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = |name: &str| {
            let p = dir.join(name);
            image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
                .save(&p)
                .unwrap();
            p
        };
        let (a, b) = (img("a.png"), img("b.png"));
        let ex = |p: &PathBuf, s: &str, label: VeLabel| VeExample {
            identifier: None,
            image_rel: p.display().to_string(),
            image: p.clone(),
            sentence: s.into(),
            label,
        };
        use VeLabel::{Contradiction as C, Entailment as E, Neutral as N};
        let examples = vec![
            ex(&a, "a0", E),
            ex(&b, "b0", N),
            ex(&a, "a1", N),
            ex(&a, "a2", C),
            ex(&a, "a3", E),
        ];
        let tf = ImageTransform::new(ImageTransformConfig::eval(8, Normalize::Clip)).unwrap();
        let ds = GroupedVeDataset::new(examples, 3, tf, TextPrep::Raw);
        assert_eq!((ds.len(), ds.num_hypotheses()), (2, 5));
        let mut rng = StdRng::seed_from_u64(0);
        let s = ds.get(0, &mut rng).unwrap();
        assert_eq!(s.image.size(), [3, 8, 8]);
        assert_eq!(s.hypotheses.len(), 3);
        let want = [E, N, C, E];
        let mut seen = std::collections::BTreeSet::new();
        for (text, label) in &s.hypotheses {
            let j: usize = text.strip_prefix('a').unwrap().parse().unwrap();
            assert_eq!(*label, want[j], "{text}");
            assert!(seen.insert(text.clone()), "{text} drawn twice");
        }
        assert_eq!(
            ds.get(1, &mut rng).unwrap().hypotheses,
            vec![("b0".to_string(), N)]
        );
        let draw = |seed| {
            ds.get(0, &mut StdRng::seed_from_u64(seed))
                .unwrap()
                .hypotheses
        };
        assert_eq!(draw(7), draw(7));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
