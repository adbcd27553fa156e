//! Shapes: a built-in, seeded vision-language benchmark small enough to pre-train and fine-tune
//! on a CPU in minutes.
//!
//! [`generate`] renders scenes of 1–4 flat shapes (6 shapes × 8 colours × 2 sizes, free
//! non-overlapping positions) to 64 × 64 PNGs and writes, in the official formats, a
//! pre-training caption list, Karpathy-style retrieval splits, VQA v2 questions/annotations
//! (plus the ALBEF/BLIP lists), NLVR2 pairs, SNLI-VE hypotheses, COCO caption references,
//! UNITER-style region features and the ground-truth scenes. Everything is a pure function of
//! [`ShapesConfig`]: same configuration → same bytes in every file.
//!
//! The parts:
//!
//! - [`scene`]: attributes, the sampler, spatial relations with a dead band, referring
//!   expressions;
//! - [`render`]: the rasteriser (supersampled anti-aliasing, Gaussian pixel noise);
//! - [`captions`], [`vqa`], [`nlvr2`], [`ve`]: the text generators, each with a structural
//!   representation ([`vqa::Question`], [`nlvr2::Statement`], [`ve::Hypothesis`]) whose label is
//!   computed from the scene by one evaluator;
//! - [`regions`]: simulated detector output;
//! - [`formats`]: the on-disk records;
//! - [`cli`]: `vlp shapes generate`.
//!
//! See `docs/shapes.md` for every rule and file.
#![warn(missing_docs)]

pub mod captions;
pub mod cli;
pub mod formats;
pub mod nlvr2;
pub mod regions;
pub mod render;
pub mod rng;
pub mod scene;
pub mod ve;
pub mod vqa;

use formats::*;
use rayon::prelude::*;
use rng::{Purpose, Stream};
use scene::{Colour, Relation, Scene, SceneParams, Shape, Size};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use vlp_core::error::{Result, VlpError};

/// Format version of the generated data set (recorded in `shapes.json`).
pub const SHAPES_VERSION: u32 = 2;

/// Generator configuration. Every field has a default; unknown fields are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapesConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Side of the square images, pixels (32–1024).
    pub image_size: u32,
    /// Train images (`--images`).
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Test images (the retrieval test split: `test_images × captions_per_image`).
    pub test_images: usize,
    /// Fewest objects per image (≥ 1).
    pub min_objects: usize,
    /// Most objects per image (≤ 5); counts are drawn with probability ∝ n.
    pub max_objects: usize,
    /// 4 × 4 supersampled anti-aliasing.
    pub antialias: bool,
    /// Standard deviation of the Gaussian pixel noise (0–255 units; 0 = none).
    pub noise_std: f32,
    /// Probability that an image gets a random light (pastel, 225–255 per channel) background
    /// instead of the dark grey one (0 = every image dark, the original data). Drawn from its own
    /// stream: scenes, texts and labels do not change.
    pub light_backgrounds: f64,
    /// Captions per image (1–7).
    pub captions_per_image: usize,
    /// VQA questions per image (0–10).
    pub questions_per_image: usize,
    /// Probability that a simulated annotator answers with a confusion (wrong answers are
    /// capped at 4 of 10).
    pub answer_noise: f64,
    /// NLVR2 statements per image (each image is the left image of this many pairs).
    pub nlvr2_per_image: usize,
    /// NLVR2 statements per pair in the **train** split (≥ 1; validation and test keep one):
    /// each pair then carries this many statements, half of them true (for an even count), in
    /// true/false couples of one family where the pair has them, so that a model trained on a
    /// pair's statements together must tell them apart by the images.
    /// With 1 the data are those of earlier versions, byte for byte.
    pub nlvr2_train_per_pair: usize,
    /// The NLVR2 statement families drawn from (names of [`nlvr2::FAMILIES`]; default all
    /// seven). With all seven the data are those of earlier versions, byte for byte.
    pub nlvr2_families: Vec<String>,
    /// SNLI-VE hypotheses per image (3 = one of each label).
    pub ve_per_image: usize,
    /// Write region features.
    pub regions: bool,
    /// Region feature size.
    pub region_dim: usize,
    /// Most spurious boxes per image (1–this many are added; 0 = none).
    pub region_extra_max: usize,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            seed: 0,
            image_size: 64,
            train_images: 5000,
            val_images: 1000,
            test_images: 1000,
            min_objects: 1,
            max_objects: 4,
            antialias: true,
            noise_std: 0.0,
            light_backgrounds: 0.0,
            captions_per_image: 5,
            questions_per_image: 5,
            answer_noise: 0.15,
            nlvr2_per_image: 1,
            nlvr2_train_per_pair: 1,
            nlvr2_families: nlvr2::FAMILIES.iter().map(|f| f.to_string()).collect(),
            ve_per_image: 3,
            regions: true,
            region_dim: 2048,
            region_extra_max: 3,
        }
    }
}

fn config_error(msg: String) -> VlpError {
    VlpError::Config {
        path: PathBuf::from("<shapes config>"),
        msg,
    }
}

impl ShapesConfig {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(config_error(msg.into()))
            }
        };
        check(
            (32..=1024).contains(&self.image_size),
            "image_size: expected 32..=1024",
        )?;
        check(self.min_objects >= 1, "min_objects: expected >= 1")?;
        check(
            self.min_objects <= self.max_objects && self.max_objects <= 5,
            "max_objects: expected min_objects <= max_objects <= 5",
        )?;
        check(
            (1..=captions::MAX_CAPTIONS).contains(&self.captions_per_image),
            "captions_per_image: expected 1..=7",
        )?;
        check(
            self.questions_per_image <= 10,
            "questions_per_image: expected 0..=10",
        )?;
        check(
            (0.0..1.0).contains(&self.answer_noise),
            "answer_noise: expected [0, 1)",
        )?;
        check(
            self.noise_std.is_finite() && self.noise_std >= 0.0,
            "noise_std: expected a finite value >= 0",
        )?;
        check(
            (0.0..=1.0).contains(&self.light_backgrounds),
            "light_backgrounds: expected a probability in [0, 1]",
        )?;
        check(self.region_dim >= 1, "region_dim: expected >= 1")?;
        check(
            (1..=16).contains(&self.nlvr2_train_per_pair),
            "nlvr2_train_per_pair: expected 1–16",
        )?;
        check(
            !self.nlvr2_families.is_empty(),
            "nlvr2_families: expected at least one family",
        )?;
        for f in &self.nlvr2_families {
            check(
                nlvr2::FAMILIES.contains(&f.as_str()),
                &format!(
                    "nlvr2_families: unknown family `{f}` (expected some of {})",
                    nlvr2::FAMILIES.join(", ")
                ),
            )?;
        }
        let total = self.train_images + self.val_images + self.test_images;
        check(
            total < 100_000_000,
            "train_images + val_images + test_images: expected < 1e8",
        )?;
        Ok(())
    }

    /// Reads a JSON configuration (unknown fields rejected, missing ones defaulted).
    pub fn from_json_file(path: &Path) -> Result<ShapesConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| VlpError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| VlpError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    fn scene_params(&self) -> SceneParams {
        SceneParams {
            image_size: self.image_size,
            min_objects: self.min_objects,
            max_objects: self.max_objects,
        }
    }

    fn split_len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_images,
            Split::Val => self.val_images,
            Split::Test => self.test_images,
        }
    }

    /// The integer id of image `index` of a split. Ids start at 1 with the test split, then
    /// val, then train, so val and test ids do not depend on the number of train images.
    pub fn image_id(&self, split: Split, index: usize) -> u64 {
        let base = match split {
            Split::Test => 0,
            Split::Val => self.test_images,
            Split::Train => self.test_images + self.val_images,
        };
        (base + index + 1) as u64
    }
}

/// Data splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// Training split (also the pre-training corpus).
    Train,
    /// Validation split.
    Val,
    /// Test split.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// "train", "val" or "test".
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn code(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }
}

/// A VQA item of an image: the question, its answer and the ten annotator answers.
#[derive(Clone, Debug)]
pub struct VqaItem {
    /// The question.
    pub question: vqa::Question,
    /// Its answer on the scene.
    pub answer: String,
    /// Ten simulated annotator answers.
    pub humans: Vec<vqa::HumanAnswer>,
}

/// Everything generated for one image (before writing).
#[derive(Clone, Debug)]
pub struct ImageRecord {
    /// The split.
    pub split: Split,
    /// Index in the split.
    pub index: usize,
    /// Integer image id.
    pub image_id: u64,
    /// Image path relative to the output directory.
    pub image: String,
    /// Region file path relative to the output directory.
    pub regions_file: String,
    /// The scene.
    pub scene: Scene,
    /// Captions (the first describes every object).
    pub captions: Vec<String>,
    /// Region descriptions (short partial texts, [`captions::region_descriptions`]).
    pub region_texts: Vec<String>,
    /// VQA items.
    pub vqa: Vec<VqaItem>,
    /// SNLI-VE hypotheses and their labels.
    pub ve: Vec<(ve::Hypothesis, ve::VeLabel)>,
}

/// Builds the text of image `index` of a split: scene, captions, questions, hypotheses (no
/// pixels, no files).
pub fn build_image(cfg: &ShapesConfig, split: Split, index: usize) -> ImageRecord {
    let stream = |p: Purpose| Stream::new(cfg.seed, p, split.code(), index as u64);
    let scene = scene::sample_scene(&cfg.scene_params(), &mut stream(Purpose::Scene));
    let captions = captions::captions(
        &scene,
        cfg.captions_per_image,
        &mut stream(Purpose::Captions),
    );
    let region_texts = captions::region_descriptions(&scene, &mut stream(Purpose::RegionTexts));
    let mut qrng = stream(Purpose::Vqa);
    let vqa = vqa::questions(&scene, cfg.questions_per_image, &mut qrng)
        .into_iter()
        .map(|(question, answer)| {
            let humans = vqa::annotate(&question, &answer, cfg.answer_noise, &mut qrng);
            VqaItem {
                question,
                answer,
                humans,
            }
        })
        .collect();
    let ve = ve::hypotheses(
        &scene,
        cfg.ve_per_image,
        index % 3,
        &mut stream(Purpose::Ve),
    );
    let image_id = cfg.image_id(split, index);
    ImageRecord {
        split,
        index,
        image_id,
        image: format!("images/{}_{image_id}.png", split.name()),
        regions_file: format!("regions/{}_{image_id}.safetensors", split.name()),
        scene,
        captions,
        region_texts,
        vqa,
        ve,
    }
}

/// Renders a scene of image `index` of a split to RGB8 bytes (deterministic pixel noise).
pub fn render_image(cfg: &ShapesConfig, split: Split, index: usize, scene: &Scene) -> Vec<u8> {
    let background = if cfg.light_backgrounds > 0.0 {
        let mut bg = Stream::new(cfg.seed, Purpose::Background, split.code(), index as u64);
        if bg.chance(cfg.light_backgrounds) {
            [0, 1, 2].map(|_| bg.between(225, 255) as u8)
        } else {
            render::BACKGROUND
        }
    } else {
        render::BACKGROUND
    };
    let params = render::RenderParams {
        supersample: if cfg.antialias { 4 } else { 1 },
        noise_std: cfg.noise_std,
        background,
    };
    let mut rng = Stream::new(cfg.seed, Purpose::Pixels, split.code(), index as u64);
    render::render(scene, &params, &mut rng)
}

/// One NLVR2 example: the two image indices in the split, the statement and its truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Nlvr2Item {
    /// Index of the left image in the split.
    pub left: usize,
    /// Index of the right image in the split.
    pub right: usize,
    /// The statement.
    pub statement: nlvr2::Statement,
    /// Its truth on the pair.
    pub label: bool,
}

/// The NLVR2 examples of a split, given its scenes (`nlvr2_per_image` pairs per image; none
/// when the split has fewer than 2 images or `nlvr2_families` names no known family). Labels
/// are exactly balanced (a shuffled half/half list over the pairs); each pair's right image is
/// another random image of the split. In the train split each pair carries
/// `nlvr2_train_per_pair` statements, consecutive, the `j`-th of truth `label(pair) xor (j odd)`
/// and, for odd `j`, of the family of statement `j − 1` where the pair allows (minimal pairs);
/// distinct statements where the pair has enough.
pub fn build_nlvr2(cfg: &ShapesConfig, split: Split, scenes: &[Scene]) -> Vec<Nlvr2Item> {
    let n = scenes.len();
    if n < 2 {
        return Vec::new();
    }
    let total = n * cfg.nlvr2_per_image;
    let per_pair = if split == Split::Train {
        cfg.nlvr2_train_per_pair.max(1)
    } else {
        1
    };
    let families: Vec<&'static str> = nlvr2::FAMILIES
        .iter()
        .copied()
        .filter(|f| cfg.nlvr2_families.iter().any(|g| g == f))
        .collect();
    if families.is_empty() {
        // No known family (a config that skipped `validate`): no statement can be drawn.
        return Vec::new();
    }
    let mut labels: Vec<bool> = (0..total).map(|k| k % 2 == 0).collect();
    Stream::new(cfg.seed, Purpose::Nlvr2, split.code(), u64::MAX).shuffle(&mut labels);
    let pairs: Vec<Vec<Nlvr2Item>> = (0..total)
        .into_par_iter()
        .map(|k| {
            let mut rng = Stream::new(cfg.seed, Purpose::Nlvr2, split.code(), k as u64);
            let left = k % n;
            'pair: loop {
                let right = (left + 1 + rng.below(n - 1)) % n;
                let mut items: Vec<Nlvr2Item> = Vec::with_capacity(per_pair);
                for j in 0..per_pair {
                    let target = labels[k] ^ (j % 2 == 1);
                    // An odd statement is of its predecessor's family when the pair has one of
                    // the other truth there (a minimal pair: a per-family text prior cannot
                    // tell the two apart), else of any family.
                    let own: Vec<&'static str> = match j % 2 {
                        1 => vec![items[j - 1].statement.family()],
                        _ => Vec::new(),
                    };
                    let draw = |rng: &mut Stream| {
                        let (l, r) = (&scenes[left], &scenes[right]);
                        (!own.is_empty())
                            .then(|| nlvr2::statement_of(&own, l, r, target, rng))
                            .flatten()
                            .or_else(|| nlvr2::statement_of(&families, l, r, target, rng))
                    };
                    let Some(mut statement) = draw(&mut rng) else {
                        continue 'pair;
                    };
                    // A few more draws for a statement the pair does not have yet.
                    for _ in 0..8 {
                        if !items.iter().any(|i| i.statement == statement) {
                            break;
                        }
                        match draw(&mut rng) {
                            Some(s) => statement = s,
                            None => break,
                        }
                    }
                    items.push(Nlvr2Item {
                        left,
                        right,
                        statement,
                        label: target,
                    });
                }
                return items;
            }
        })
        .collect();
    pairs.into_iter().flatten().collect()
}

/// Counts of one split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Images.
    pub images: usize,
    /// Objects over all images.
    pub objects: usize,
    /// Captions.
    pub captions: usize,
    /// VQA questions.
    pub vqa_questions: usize,
    /// VQA questions per answer type ("yes/no", "number", "other").
    pub vqa_answer_types: BTreeMap<String, usize>,
    /// VQA questions per family.
    pub vqa_families: BTreeMap<String, usize>,
    /// NLVR2 examples.
    pub nlvr2: usize,
    /// NLVR2 examples labelled True.
    pub nlvr2_true: usize,
    /// NLVR2 examples per statement family.
    pub nlvr2_families: BTreeMap<String, usize>,
    /// SNLI-VE examples.
    pub ve: usize,
    /// SNLI-VE examples per label.
    pub ve_labels: BTreeMap<String, usize>,
    /// Fraction of the split's captions whose exact text also describes another image.
    pub duplicate_caption_fraction: f64,
}

/// What [`generate`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapesSummary {
    /// The output directory.
    pub out: PathBuf,
    /// Counts of the train split.
    pub train: SplitCounts,
    /// Counts of the val split.
    pub val: SplitCounts,
    /// Counts of the test split.
    pub test: SplitCounts,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Fraction of captions whose exact text is also a caption of another image.
pub fn duplicate_caption_fraction(captions: &[Vec<String>]) -> f64 {
    let mut owners: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (i, cs) in captions.iter().enumerate() {
        for c in cs {
            owners.entry(c.as_str()).or_default().insert(i);
        }
    }
    let total: usize = captions.iter().map(Vec::len).sum();
    if total == 0 {
        return 0.0;
    }
    let dup: usize = captions
        .iter()
        .flat_map(|cs| cs.iter())
        .filter(|c| owners[c.as_str()].len() > 1)
        .count();
    dup as f64 / total as f64
}

struct Writer {
    files: AtomicU64,
    bytes: AtomicU64,
}

impl Writer {
    fn write(&self, path: &Path, data: &[u8]) -> Result<()> {
        std::fs::write(path, data).map_err(|source| VlpError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let data = serde_json::to_vec(value)
            .map_err(|e| VlpError::Msg(format!("{}: {e}", path.display())))?;
        self.write(path, &data)
    }
}

fn encode_png(rgb: &[u8], side: u32, path: &Path) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(rgb, side, side, image::ExtendedColorType::Rgb8)
        .map_err(|e| VlpError::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    Ok(buf)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The safetensors bytes of one image's regions (`features`, `norm_bb`, `conf`, `soft_labels`,
/// all F32).
pub fn regions_safetensors(r: &regions::Regions) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let data = [
        ("conf", f32_bytes(&r.conf), vec![r.n]),
        ("features", f32_bytes(&r.features), vec![r.n, r.dim]),
        ("norm_bb", f32_bytes(&r.norm_bb), vec![r.n, 7]),
        (
            "soft_labels",
            f32_bytes(&r.soft_labels),
            vec![r.n, regions::NUM_CLASSES],
        ),
    ];
    let views = data
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| VlpError::Msg(format!("regions: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| VlpError::Msg(format!("regions: {e}")))
}

fn info_block(split: Split, what: &str) -> (VqaInfo, VqaLicense) {
    (
        VqaInfo {
            description: format!(
                "Shapes synthetic {what} ({} split), generated by vlp-rs",
                split.name()
            ),
            url: "https://example.invalid/vlp-rs/shapes".into(),
            version: SHAPES_VERSION.to_string(),
            year: 2025,
            contributor: "vlp-rs shapes generator".into(),
            date_created: "2025-01-01 00:00:00".into(),
        },
        VqaLicense {
            url: "https://creativecommons.org/publicdomain/zero/1.0/".into(),
            name: "CC0".into(),
        },
    )
}

fn counts(records: &[ImageRecord], nlvr: &[Nlvr2Item]) -> SplitCounts {
    let mut c = SplitCounts {
        images: records.len(),
        nlvr2: nlvr.len(),
        ..Default::default()
    };
    for r in records {
        c.objects += r.scene.objects.len();
        c.captions += r.captions.len();
        c.vqa_questions += r.vqa.len();
        for q in &r.vqa {
            *c.vqa_answer_types
                .entry(q.question.answer_type().into())
                .or_default() += 1;
            *c.vqa_families
                .entry(q.question.family().into())
                .or_default() += 1;
        }
        c.ve += r.ve.len();
        for (_, l) in &r.ve {
            *c.ve_labels.entry(l.name().into()).or_default() += 1;
        }
    }
    for e in nlvr {
        c.nlvr2_true += e.label as usize;
        *c.nlvr2_families
            .entry(e.statement.family().into())
            .or_default() += 1;
    }
    let caps: Vec<Vec<String>> = records.iter().map(|r| r.captions.clone()).collect();
    c.duplicate_caption_fraction = duplicate_caption_fraction(&caps);
    c
}

/// `shapes.json`: configuration, version, vocabulary and counts.
#[derive(Serialize)]
struct Manifest<'a> {
    name: &'static str,
    version: u32,
    config: &'a ShapesConfig,
    shapes: Vec<&'static str>,
    colours: Vec<&'static str>,
    sizes: Vec<&'static str>,
    relations: Vec<&'static str>,
    region_classes: Vec<&'static str>,
    answer_list_size: usize,
    counts: BTreeMap<&'static str, &'a SplitCounts>,
    files: Vec<String>,
}

/// Generates the data set into `out` (created if needed; files of an earlier run with the same
/// names are overwritten, others are left alone). Shows a progress bar on a terminal when more
/// than 10 000 images are generated.
pub fn generate(cfg: &ShapesConfig, out: &Path) -> Result<ShapesSummary> {
    cfg.validate()?;
    let start = Instant::now();
    for dir in [out.to_path_buf(), out.join("images"), out.join("regions")] {
        if dir.ends_with("regions") && !cfg.regions {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|source| VlpError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let w = Writer {
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let total: usize = Split::ALL.iter().map(|s| cfg.split_len(*s)).sum();
    let bar = if total > 10_000 {
        let b = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "shapes {bar:40} {pos}/{len} images ({elapsed}, eta {eta})",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let proj = if cfg.regions {
        regions::projection(cfg.seed, cfg.region_dim)
    } else {
        Vec::new()
    };
    let mut per_split: Vec<(Split, Vec<ImageRecord>, Vec<Nlvr2Item>)> = Vec::new();
    for split in Split::ALL {
        let records = (0..cfg.split_len(split))
            .into_par_iter()
            .map(|i| {
                let rec = build_image(cfg, split, i);
                let rgb = render_image(cfg, split, i, &rec.scene);
                let path = out.join(&rec.image);
                w.write(&path, &encode_png(&rgb, cfg.image_size, &path)?)?;
                if cfg.regions {
                    let mut rng = Stream::new(cfg.seed, Purpose::Regions, split.code(), i as u64);
                    let r = regions::regions(&rec.scene, &proj, cfg.region_extra_max, &mut rng);
                    w.write(&out.join(&rec.regions_file), &regions_safetensors(&r)?)?;
                }
                bar.inc(1);
                Ok(rec)
            })
            .collect::<Result<Vec<_>>>()?;
        let scenes: Vec<Scene> = records.iter().map(|r| r.scene.clone()).collect();
        let nlvr = build_nlvr2(cfg, split, &scenes);
        per_split.push((split, records, nlvr));
    }
    bar.finish_and_clear();

    let mut files: Vec<String> = Vec::new();
    let mut emit = |name: String, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        f(&out.join(&name))?;
        files.push(name);
        Ok(())
    };
    let mut all_counts: BTreeMap<&'static str, SplitCounts> = BTreeMap::new();
    for (split, records, nlvr) in &per_split {
        let (split, s) = (*split, split.name());
        let region_path = |r: &ImageRecord| cfg.regions.then(|| r.regions_file.clone());
        emit(format!("scenes_{s}.json"), &|p| {
            let v: Vec<SceneEntry> = records
                .iter()
                .map(|r| SceneEntry {
                    image_id: r.image_id,
                    image: r.image.clone(),
                    regions: region_path(r),
                    scene: r.scene.clone(),
                })
                .collect();
            w.json(p, &v)
        })?;
        if split == Split::Train {
            emit("pretrain.json".into(), &|p| {
                let v: Vec<PretrainEntry> = records
                    .iter()
                    .map(|r| PretrainEntry {
                        image: r.image.clone(),
                        caption: r.captions.clone(),
                    })
                    .collect();
                w.json(p, &v)
            })?;
            emit("pretrain_regions.json".into(), &|p| {
                let v: Vec<PretrainEntry> = records
                    .iter()
                    .map(|r| PretrainEntry {
                        image: r.image.clone(),
                        caption: r.region_texts.clone(),
                    })
                    .collect();
                w.json(p, &v)
            })?;
            emit(format!("retrieval_{s}.json"), &|p| {
                let v: Vec<RetrievalTrainEntry> = records
                    .iter()
                    .flat_map(|r| {
                        r.captions.iter().map(|c| RetrievalTrainEntry {
                            image: r.image.clone(),
                            caption: c.clone(),
                            image_id: r.image_id,
                        })
                    })
                    .collect();
                w.json(p, &v)
            })?;
        } else {
            emit(format!("retrieval_{s}.json"), &|p| {
                let v: Vec<RetrievalEvalEntry> = records
                    .iter()
                    .map(|r| RetrievalEvalEntry {
                        image: r.image.clone(),
                        caption: r.captions.clone(),
                        image_id: r.image_id,
                    })
                    .collect();
                w.json(p, &v)
            })?;
            emit(format!("caption_{s}_gt.json"), &|p| {
                let (info, _) = info_block(split, "captions");
                let v = CocoCaptionsFile {
                    info,
                    licenses: Vec::new(),
                    kind: "captions".into(),
                    images: records
                        .iter()
                        .map(|r| CocoImage {
                            id: r.image_id,
                            file_name: r.image.clone(),
                            width: cfg.image_size,
                            height: cfg.image_size,
                        })
                        .collect(),
                    annotations: records
                        .iter()
                        .flat_map(|r| {
                            r.captions.iter().enumerate().map(|(k, c)| CocoCaption {
                                image_id: r.image_id,
                                id: r.image_id * 10 + k as u64,
                                caption: c.clone(),
                            })
                        })
                        .collect(),
                };
                w.json(p, &v)
            })?;
        }
        let qid = |r: &ImageRecord, k: usize| r.image_id * 10 + k as u64;
        emit(format!("vqa_{s}_questions.json"), &|p| {
            let (info, license) = info_block(split, "VQA");
            let v = VqaQuestionsFile {
                info,
                task_type: "Open-Ended".into(),
                data_type: "shapes".into(),
                license,
                data_subtype: s.into(),
                questions: records
                    .iter()
                    .flat_map(|r| {
                        r.vqa.iter().enumerate().map(|(k, q)| VqaQuestion {
                            image_id: r.image_id,
                            question: q.question.text(),
                            question_id: qid(r, k),
                        })
                    })
                    .collect(),
            };
            w.json(p, &v)
        })?;
        emit(format!("vqa_{s}_annotations.json"), &|p| {
            let (info, license) = info_block(split, "VQA");
            let v = VqaAnnotationsFile {
                info,
                license,
                data_subtype: s.into(),
                data_type: "shapes".into(),
                annotations: records
                    .iter()
                    .flat_map(|r| {
                        r.vqa.iter().enumerate().map(|(k, q)| VqaAnnotation {
                            question_type: q.question.question_type().into(),
                            multiple_choice_answer: q.answer.clone(),
                            answers: q
                                .humans
                                .iter()
                                .enumerate()
                                .map(|(j, h)| VqaAnswer {
                                    answer: h.answer.clone(),
                                    answer_confidence: h.confidence.into(),
                                    answer_id: j as u32 + 1,
                                })
                                .collect(),
                            image_id: r.image_id,
                            answer_type: q.question.answer_type().into(),
                            question_id: qid(r, k),
                        })
                    })
                    .collect(),
            };
            w.json(p, &v)
        })?;
        emit(format!("vqa_{s}.json"), &|p| {
            let v: Vec<AlbefVqaEntry> = records
                .iter()
                .flat_map(|r| {
                    r.vqa.iter().enumerate().map(move |(k, q)| AlbefVqaEntry {
                        question_id: qid(r, k),
                        question: q.question.text(),
                        answer: (split != Split::Test)
                            .then(|| q.humans.iter().map(|h| h.answer.clone()).collect()),
                        image: r.image.clone(),
                        dataset: "vqa".into(),
                    })
                })
                .collect();
            w.json(p, &v)
        })?;
        emit(format!("nlvr2_{s}.json"), &|p| {
            let v: Vec<Nlvr2Entry> = nlvr
                .iter()
                .map(|e| Nlvr2Entry {
                    images: [
                        records[e.left].image.clone(),
                        records[e.right].image.clone(),
                    ],
                    sentence: e.statement.text(),
                    label: if e.label { "True" } else { "False" }.into(),
                })
                .collect();
            w.json(p, &v)
        })?;
        emit(format!("ve_{s}.json"), &|p| {
            let v: Vec<VeEntry> = records
                .iter()
                .flat_map(|r| {
                    r.ve.iter().map(|(h, l)| VeEntry {
                        image: r.image.clone(),
                        sentence: h.text(),
                        label: l.name().into(),
                    })
                })
                .collect();
            w.json(p, &v)
        })?;
        all_counts.insert(s, counts(records, nlvr));
    }
    let answers = vqa::answer_list();
    emit("answer_list.json".into(), &|p| w.json(p, &answers))?;
    files.push("shapes.json".into());
    let manifest = Manifest {
        name: "shapes",
        version: SHAPES_VERSION,
        config: cfg,
        shapes: Shape::ALL.iter().map(|s| s.name()).collect(),
        colours: Colour::ALL.iter().map(|c| c.name()).collect(),
        sizes: Size::ALL.iter().map(|s| s.name()).collect(),
        relations: Relation::ALL.iter().map(|r| r.phrase()).collect(),
        region_classes: regions::CLASS_NAMES.to_vec(),
        answer_list_size: answers.len(),
        counts: all_counts.iter().map(|(k, v)| (*k, v)).collect(),
        files,
    };
    w.json(&out.join("shapes.json"), &manifest)?;
    let take = |s: &str| all_counts.get(s).cloned().unwrap_or_default();
    Ok(ShapesSummary {
        out: out.to_path_buf(),
        train: take("train"),
        val: take("val"),
        test: take("test"),
        files: w.files.load(Ordering::Relaxed),
        bytes: w.bytes.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    })
}
