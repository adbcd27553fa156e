//! COCO and Flickr30k Karpathy splits as ALBEF, BLIP and LAVIS ship them (`coco_train.json`,
//! `coco_karpathy_test.json`, `flickr30k_train.json`, …): a JSON array of records
//! `{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": "…" | ["…", …], "image_id": "coco_391895" | 0}`.
//! Training files hold one caption per record (a string), evaluation files all captions of an
//! image (a list) and usually no `image_id`. Used for retrieval and captioning.
use super::json::Source;
use super::loader::Dataset;
use super::{Collector, Loaded, ReadOptions, TextPrep};
use rand::rngs::StdRng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::Result;

/// An `image_id` as the files have it: a string (`"coco_391895"`, COCO files) or an integer
/// (Flickr30k files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ImageId {
    /// An integer id.
    Int(u64),
    /// A string id.
    Str(String),
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageId::Int(i) => write!(f, "{i}"),
            ImageId::Str(s) => f.write_str(s),
        }
    }
}

/// One record of a Karpathy-split file.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionEntry {
    /// The image path as written in the file.
    pub image_rel: String,
    /// The image path resolved against the image root.
    pub image: PathBuf,
    /// The `image_id` field, when there is one.
    pub image_id: Option<ImageId>,
    /// The captions (one for training records).
    pub captions: Vec<String>,
}

impl CaptionEntry {
    /// The numeric COCO image id BLIP derives from the file name for caption evaluation
    /// (`COCO_val2014_000000391895.jpg` → 391895), or the integer `image_id`.
    pub fn numeric_id(&self) -> Option<u64> {
        if let Some(ImageId::Int(i)) = self.image_id {
            return Some(i);
        }
        let name = self.image_rel.rsplit('/').next()?;
        let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
        stem.rsplit('_').next()?.parse().ok()
    }
}

/// Reads one Karpathy-split file.
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Loaded<CaptionEntry>> {
    let src = Source::read(path)?;
    let mut out = Collector::new(path, opts);
    for rec in src.records()? {
        out.push(rec.and_then(|r| {
            let image_rel = r.string("image")?;
            let captions = r.strings("caption")?;
            for (i, c) in captions.iter().enumerate() {
                if c.trim().is_empty() {
                    return Err(r.err(&format!("caption[{i}]"), "empty caption"));
                }
            }
            let image_id = match r.get("image_id")? {
                None => None,
                Some(serde_json::Value::String(s)) => Some(ImageId::Str(s.clone())),
                Some(v) => Some(ImageId::Int(v.as_u64().ok_or_else(|| {
                    r.err(
                        "image_id",
                        format!(
                            "expected a string or a non-negative integer, found {}",
                            super::json::show(v)
                        ),
                    )
                })?)),
            };
            Ok(CaptionEntry {
                image: opts.image_path(&image_rel),
                image_rel,
                image_id,
                captions,
            })
        }))?;
    }
    Ok(out.finish())
}

/// Reads several files into one set (ALBEF's `train_file` is a list).
pub fn read_many(paths: &[PathBuf], opts: &ReadOptions) -> Result<Loaded<CaptionEntry>> {
    let mut all = Loaded {
        items: Vec::new(),
        report: Default::default(),
    };
    for p in paths {
        let l = read(p, opts)?;
        all.items.extend(l.items);
        all.report.merge(l.report);
    }
    Ok(all)
}

/// For each entry, the index of its image among the distinct images in first-appearance order
/// (`image_id` when present, else the image path), as ALBEF/BLIP's `img_ids` for ITC positives.
pub fn image_indices(entries: &[CaptionEntry]) -> Vec<usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    entries
        .iter()
        .map(|e| {
            let key = e
                .image_id
                .as_ref()
                .map(|i| format!("id:{i}"))
                .unwrap_or_else(|| format!("path:{}", e.image_rel));
            let n = ids.len();
            *ids.entry(key).or_insert(n)
        })
        .collect()
}

/// An evaluation gallery: images, all their captions as texts, and the ground truth both ways,
/// built as ALBEF/BLIP's `re_eval_dataset`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalGallery {
    /// Image files, one per entry.
    pub images: Vec<PathBuf>,
    /// All captions (preprocessed), entry by entry.
    pub texts: Vec<String>,
    /// For each image, the indices of its texts.
    pub img2txt: Vec<Vec<usize>>,
    /// For each text, the index of its image.
    pub txt2img: Vec<usize>,
}

impl RetrievalGallery {
    /// The gallery of evaluation entries, captions passed through `prep`.
    pub fn from_entries(entries: &[CaptionEntry], prep: TextPrep) -> Self {
        let mut g = RetrievalGallery {
            images: Vec::new(),
            texts: Vec::new(),
            img2txt: Vec::new(),
            txt2img: Vec::new(),
        };
        for (i, e) in entries.iter().enumerate() {
            g.images.push(e.image.clone());
            let mut ids = Vec::new();
            for c in &e.captions {
                ids.push(g.texts.len());
                g.texts.push(prep.caption(c));
                g.txt2img.push(i);
            }
            g.img2txt.push(ids);
        }
        g
    }
}

/// An image–caption training sample.
#[derive(Debug)]
pub struct CaptionSample {
    /// The transformed image `[3, H, W]`.
    pub image: Tensor,
    /// The preprocessed caption.
    pub caption: String,
    /// The image's index among distinct images ([`image_indices`]).
    pub image_index: usize,
}

/// Retrieval / captioning training set: one sample per (image, caption) pair.
#[derive(Debug, Clone)]
pub struct CaptionDataset {
    entries: Arc<Vec<CaptionEntry>>,
    pairs: Vec<(usize, usize)>,
    image_index: Vec<usize>,
    transform: ImageTransform,
    prep: TextPrep,
}

impl CaptionDataset {
    /// A dataset over all captions of `entries`.
    pub fn new(entries: Vec<CaptionEntry>, transform: ImageTransform, prep: TextPrep) -> Self {
        let pairs = entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| (0..e.captions.len()).map(move |c| (i, c)))
            .collect();
        let image_index = image_indices(&entries);
        CaptionDataset {
            entries: Arc::new(entries),
            pairs,
            image_index,
            transform,
            prep,
        }
    }
}

impl Dataset for CaptionDataset {
    type Sample = CaptionSample;
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<CaptionSample> {
        let (e, c) = self.pairs[i];
        let entry = &self.entries[e];
        let image = self.transform.apply_path(&entry.image, rng)?;
        Ok(CaptionSample {
            image,
            caption: self.prep.caption(&entry.captions[c]),
            image_index: self.image_index[e],
        })
    }
}

/// The images of a gallery, for the retrieval evaluator: samples are `(index, image)`.
#[derive(Debug, Clone)]
pub struct GalleryImages {
    images: Vec<PathBuf>,
    transform: ImageTransform,
}

impl GalleryImages {
    /// The images of `gallery` with an evaluation transform.
    pub fn new(gallery: &RetrievalGallery, transform: ImageTransform) -> Self {
        GalleryImages {
            images: gallery.images.clone(),
            transform,
        }
    }
}

impl Dataset for GalleryImages {
    type Sample = (usize, Tensor);
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<(usize, Tensor)> {
        Ok((i, self.transform.apply_path(&self.images[i], rng)?))
    }
}
