//! `vlp capfilt`: BLIP's CapFilt (Li et al. 2022, §3.3) over a caption annotation file.
//!
//! The captioner (`BlipDecoder`, registry variant `captioning`) writes one synthetic caption per
//! distinct image (beam search, or nucleus sampling with `--sample`, from the prompt
//! `"a picture of "`, which is stripped from the decoded text); the filter (`BlipItm`, variant
//! `itm`, ITM head on `[CLS]`) scores every original caption and every synthetic one by the ITM
//! match probability `softmax(itm_logits)[:, 1]`; captions scoring at least the threshold are
//! kept. The output is an annotation file in the ALBEF/BLIP format (one record per kept caption,
//! the other fields of the source record kept) plus a summary (`OUT.json.summary.json`).
//! `docs/capfilt.md` describes the command.
use crate::data::karpathy::{self, CaptionEntry};
use crate::data::ReadOptions;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{load_state_dict, read_state_dict, LoadMode, Wrapper};
use vlp_core::image::{ImageTransform, ImageTransformConfig, Normalize};
use vlp_core::text::{EncodeOptions, Tokenizer};
use vlp_core::{Result, VlpError};
use vlp_models::blip::caption::GenerateOptions;
use vlp_models::blip::{BlipConfig, BlipDecoder, BlipItm};
use vlp_models::VlpModel;

/// Maximum text length (tokens, special tokens included) of the filtered captions, as
/// `BLIP_ITM.forward` tokenises them (`max_length=35`).
pub const ITM_MAX_LENGTH: usize = 35;

/// The arguments of `vlp capfilt`.
#[derive(Debug, Clone, clap::Args)]
pub struct CapfiltArgs {
    /// Caption annotation file (`[{"image", "caption", ...}]`, ALBEF/BLIP format).
    #[arg(long)]
    pub annotations: PathBuf,
    /// Directory the image paths of the annotation file are relative to.
    #[arg(long, default_value = ".")]
    pub image_root: PathBuf,
    /// Captioner config (BLIP JSON config, variant `captioning`).
    #[arg(long)]
    pub captioner_config: PathBuf,
    /// Captioner checkpoint.
    #[arg(long)]
    pub captioner: PathBuf,
    /// Filter config (BLIP JSON config, loaded into the `itm` variant).
    #[arg(long)]
    pub filter_config: PathBuf,
    /// Filter checkpoint (ITM or retrieval).
    #[arg(long)]
    pub filter: PathBuf,
    /// WordPiece `vocab.txt` or `tokenizer.json` (`[DEC]`, `[ENC]` are appended).
    #[arg(long)]
    pub vocab: PathBuf,
    /// Output annotation file (the summary goes to `OUT.json.summary.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Beams of beam search.
    #[arg(long, default_value_t = 3)]
    pub num_beams: i64,
    /// Maximum generated length (prompt included).
    #[arg(long, default_value_t = 20)]
    pub max_length: i64,
    /// Minimum generated length (prompt included).
    #[arg(long, default_value_t = 5)]
    pub min_length: i64,
    /// Nucleus sampling instead of beam search.
    #[arg(long)]
    pub sample: bool,
    /// `top_p` of nucleus sampling.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Seed of nucleus sampling (default: libtorch's global generator).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generation prompt (stripped from the generated captions).
    #[arg(long, default_value = "a picture of ")]
    pub prompt: String,
    /// Keep captions whose ITM match probability is at least this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Input resolution of both models (default: their configs'); position embeddings of the
    /// checkpoints are interpolated.
    #[arg(long)]
    pub image_size: Option<i64>,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

/// How the captioner generates.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptionMode {
    /// Beam search (`sample=False`).
    Beam {
        /// Beams.
        num_beams: i64,
        /// Maximum length, prompt included.
        max_length: i64,
        /// Minimum length, prompt included.
        min_length: i64,
    },
    /// Nucleus sampling (`sample=True`).
    Sample {
        /// `top_p`.
        top_p: f64,
        /// Maximum length, prompt included.
        max_length: i64,
        /// Minimum length, prompt included.
        min_length: i64,
        /// Private generator seed (`None`: libtorch's global generator).
        seed: Option<u64>,
    },
}

/// CapFilt options.
#[derive(Debug, Clone, PartialEq)]
pub struct CapfiltOptions {
    /// Generation mode.
    pub mode: CaptionMode,
    /// Generation prompt.
    pub prompt: String,
    /// ITM match-probability threshold.
    pub threshold: f64,
    /// Images per batch.
    pub batch: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// The captioner, the filter, the tokenizer and the image transforms.
#[derive(Debug)]
pub struct CapfiltModels {
    /// The captioner.
    pub captioner: BlipDecoder,
    /// The filter.
    pub filter: BlipItm,
    /// BLIP's tokenizer (`[DEC]`, `[ENC]` added).
    pub tokenizer: Tokenizer,
    /// The captioner's evaluation transform.
    pub captioner_transform: ImageTransform,
    /// The filter's evaluation transform.
    pub filter_transform: ImageTransform,
}

/// Counts of a CapFilt run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapfiltSummary {
    /// Distinct images.
    pub images: usize,
    /// Original captions kept.
    pub originals_kept: usize,
    /// Original captions removed.
    pub originals_removed: usize,
    /// Synthetic captions kept.
    pub synthetic_kept: usize,
    /// Synthetic captions removed.
    pub synthetic_removed: usize,
}

impl std::fmt::Display for CapfiltSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images; originals kept {} removed {}; synthetic kept {} removed {}",
            self.images,
            self.originals_kept,
            self.originals_removed,
            self.synthetic_kept,
            self.synthetic_removed
        )
    }
}

/// One scored caption.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredCaption {
    /// Index of the source record in the annotation file.
    pub record: usize,
    /// The caption.
    pub caption: String,
    /// Generated by the captioner.
    pub synthetic: bool,
    /// ITM match probability.
    pub score: f64,
    /// `score >= threshold`.
    pub kept: bool,
}

/// The result of [`capfilt`].
#[derive(Debug, Clone, PartialEq)]
pub struct CapfiltOutput {
    /// The output annotation records (one per kept caption).
    pub records: Vec<Value>,
    /// Every scored caption, kept or not, image by image.
    pub scored: Vec<ScoredCaption>,
    /// The synthetic caption of each distinct image (first-appearance order), with its image.
    pub synthetic: Vec<(String, String)>,
    /// The counts.
    pub summary: CapfiltSummary,
}

fn read_config(path: &Path, image_size: Option<i64>) -> Result<BlipConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| VlpError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut cfg = BlipConfig::from_json(&v).map_err(|e| VlpError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    if let Some(n) = image_size {
        cfg.image_size = Some(n);
        if let Some(v) = cfg.vision.as_mut() {
            v.img_size = n;
        }
    }
    Ok(cfg)
}

fn load_into(model: &mut dyn VlpModel, ckpt: &Path) -> Result<()> {
    let sd = read_state_dict(
        ckpt,
        &vlp_core::checkpoint::ReadOptions {
            wrapper: Wrapper::Auto,
            ..Default::default()
        },
    )?;
    let sd = model.adapt_state_dict(sd)?;
    load_state_dict(
        model.var_store_mut(),
        &sd,
        LoadMode::Strict,
        &ckpt.display().to_string(),
    )?;
    Ok(())
}

fn eval_transform(size: i64) -> Result<ImageTransform> {
    ImageTransform::new(ImageTransformConfig::eval(size as u32, Normalize::Clip))
}

impl CapfiltModels {
    /// Builds and strictly loads both models (`image_size` overrides both configs), and BLIP's
    /// tokenizer from `vocab`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        captioner_config: &Path,
        captioner: &Path,
        filter_config: &Path,
        filter: &Path,
        vocab: &Path,
        image_size: Option<i64>,
        device: Device,
    ) -> Result<Self> {
        let ccfg = read_config(captioner_config, image_size)?;
        let mut cap = BlipDecoder::new(&ccfg, device)?;
        load_into(&mut cap, captioner)?;
        let fcfg = read_config(filter_config, image_size)?;
        let mut filt = BlipItm::new(&fcfg, device)?;
        load_into(&mut filt, filter)?;
        let mut tokenizer = Tokenizer::from_file(vocab)?;
        tokenizer.add_special_tokens(&["[DEC]", "[ENC]"]);
        let captioner_transform = eval_transform(cap.visual_encoder.cfg.img_size)?;
        let filter_transform = eval_transform(filt.visual_encoder.cfg.img_size)?;
        Ok(CapfiltModels {
            captioner: cap,
            filter: filt,
            tokenizer,
            captioner_transform,
            filter_transform,
        })
    }
}

/// Captions a batch of images `[B, 3, H, W]` with `mode` from `prompt`, the prompt stripped from
/// the decoded text (by its length in characters, as `BLIP_Decoder.generate` does).
pub fn generate_captions(
    captioner: &mut BlipDecoder,
    tokenizer: &Tokenizer,
    images: &Tensor,
    prompt: &str,
    mode: &CaptionMode,
) -> Result<Vec<String>> {
    let _guard = tch::no_grad_guard();
    let prompt_ids = captioner.prompt_ids(tokenizer, prompt)?;
    let ids = match mode {
        CaptionMode::Beam {
            num_beams,
            max_length,
            min_length,
        } => {
            let opts = GenerateOptions {
                num_beams: *num_beams,
                max_length: *max_length,
                min_length: *min_length,
                ..captioner.generate_options()
            };
            captioner.generate(images, &prompt_ids, &opts)?
        }
        CaptionMode::Sample {
            top_p,
            max_length,
            min_length,
            seed,
        } => {
            captioner.cfg.max_length = *max_length;
            captioner.cfg.min_length = *min_length;
            captioner.sample(images, &prompt_ids, *top_p, *seed)?
        }
    };
    let skip = prompt.chars().count();
    (0..ids.size()[0])
        .map(|i| {
            let row = Vec::<i64>::try_from(ids.get(i).to_device(Device::Cpu))?;
            let text = tokenizer.decode(&row, true)?;
            Ok(text.chars().skip(skip).collect())
        })
        .collect()
}

/// ITM match probabilities `softmax(itm_logits)[:, 1]` of `captions[i]` against image
/// `image_of[i]` of `images` `[B, 3, H, W]` (`[CLS]` first, truncated to [`ITM_MAX_LENGTH`]).
pub fn itm_scores(
    filter: &BlipItm,
    tokenizer: &Tokenizer,
    images: &Tensor,
    captions: &[&str],
    image_of: &[i64],
) -> Result<Vec<f64>> {
    if captions.is_empty() {
        return Ok(Vec::new());
    }
    let _guard = tch::no_grad_guard();
    let (emb, _) = filter.image_features(images)?;
    let device = emb.device();
    let idx = Tensor::from_slice(image_of).to_device(device);
    let emb = emb.index_select(0, &idx);
    let batch = tokenizer
        .encode_batch(captions, &EncodeOptions::longest(ITM_MAX_LENGTH))?
        .to_device(device);
    let logits = filter.itm_logits(&batch.input_ids, &batch.attention_mask, &emb)?;
    let p = logits
        .to_kind(Kind::Float)
        .softmax(-1, Kind::Float)
        .select(1, 1)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    Ok(Vec::<f64>::try_from(p)?)
}

fn load_batch(transform: &ImageTransform, paths: &[&Path], device: Device) -> Result<Tensor> {
    let mut rng = rand::thread_rng();
    let ts = paths
        .iter()
        .map(|p| transform.apply_path(p, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    Ok(vlp_core::image::batch(&ts)?.to_device(device))
}

fn progress(n: u64, on: bool) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "capfilt {bar:40} {pos}/{len} images ({per_sec}, {elapsed}, eta {eta})",
    ) {
        b.set_style(style);
    }
    b
}

/// Runs CapFilt over `entries` (read by [`karpathy::read`]) and their raw records `raw` (same
/// order; their fields other than `caption` are copied to the output records). The synthetic
/// record of an image copies the fields of its first record.
pub fn capfilt(
    models: &mut CapfiltModels,
    entries: &[CaptionEntry],
    raw: &[Value],
    opts: &CapfiltOptions,
) -> Result<CapfiltOutput> {
    if entries.len() != raw.len() {
        return Err(VlpError::Msg(format!(
            "{} entries for {} raw records",
            entries.len(),
            raw.len()
        )));
    }
    // distinct images, first-appearance order, with their records
    let mut order: Vec<usize> = Vec::new();
    let mut records_of: HashMap<&Path, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let v = records_of.entry(e.image.as_path()).or_default();
        if v.is_empty() {
            order.push(i);
        }
        v.push(i);
    }
    let device = models.filter.var_store().device();
    let bar = progress(order.len() as u64, opts.progress);
    let mut out = CapfiltOutput {
        records: Vec::new(),
        scored: Vec::new(),
        synthetic: Vec::new(),
        summary: CapfiltSummary {
            images: order.len(),
            ..Default::default()
        },
    };
    for chunk in order.chunks(opts.batch.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(|&i| entries[i].image.as_path()).collect();
        let cap_images = load_batch(&models.captioner_transform, &paths, device)?;
        let generated = generate_captions(
            &mut models.captioner,
            &models.tokenizer,
            &cap_images,
            &opts.prompt,
            &opts.mode,
        )?;
        let filt_images = if models.filter_transform == models.captioner_transform {
            cap_images
        } else {
            load_batch(&models.filter_transform, &paths, device)?
        };
        // pairs: the originals of each image, then its synthetic caption
        let mut pairs: Vec<ScoredCaption> = Vec::new();
        let mut image_of: Vec<i64> = Vec::new();
        for (j, &first) in chunk.iter().enumerate() {
            for &r in &records_of[entries[first].image.as_path()] {
                for c in &entries[r].captions {
                    pairs.push(ScoredCaption {
                        record: r,
                        caption: c.clone(),
                        synthetic: false,
                        score: 0.0,
                        kept: false,
                    });
                    image_of.push(j as i64);
                }
            }
            pairs.push(ScoredCaption {
                record: first,
                caption: generated[j].clone(),
                synthetic: true,
                score: 0.0,
                kept: false,
            });
            image_of.push(j as i64);
            out.synthetic
                .push((entries[first].image_rel.clone(), generated[j].clone()));
        }
        let texts: Vec<&str> = pairs.iter().map(|p| p.caption.as_str()).collect();
        let scores = itm_scores(
            &models.filter,
            &models.tokenizer,
            &filt_images,
            &texts,
            &image_of,
        )?;
        for (mut p, s) in pairs.into_iter().zip(scores) {
            p.score = s;
            p.kept = s >= opts.threshold;
            let s = &mut out.summary;
            match (p.synthetic, p.kept) {
                (false, true) => s.originals_kept += 1,
                (false, false) => s.originals_removed += 1,
                (true, true) => s.synthetic_kept += 1,
                (true, false) => s.synthetic_removed += 1,
            }
            if p.kept {
                let mut rec = match &raw[p.record] {
                    Value::Object(m) => m.clone(),
                    _ => Map::new(),
                };
                rec.insert("caption".into(), Value::String(p.caption.clone()));
                out.records.push(Value::Object(rec));
            }
            out.scored.push(p);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Reads an annotation file: the entries (validated by [`karpathy::read`], whose errors name the
/// file, line and field) and the raw records.
pub fn read_annotations(path: &Path, image_root: &Path) -> Result<(Vec<CaptionEntry>, Vec<Value>)> {
    let entries = karpathy::read(path, &ReadOptions::new(image_root))?.items;
    let text = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
    let raw: Vec<Value> = serde_json::from_str(&text).map_err(|e| VlpError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok((entries, raw))
}

/// The summary path of an output file: `OUT.json.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".summary.json");
    PathBuf::from(s)
}

/// Writes the records (a JSON array) and the summary next to them.
pub fn write_output(out: &Path, output: &CapfiltOutput) -> Result<()> {
    let body = serde_json::to_string_pretty(&output.records)
        .map_err(|e| VlpError::Msg(format!("{}: {e}", out.display())))?;
    std::fs::write(out, body).map_err(|e| VlpError::io(out, e))?;
    let sp = summary_path(out);
    let body = serde_json::to_string_pretty(&output.summary)
        .map_err(|e| VlpError::Msg(format!("{}: {e}", sp.display())))?;
    std::fs::write(&sp, body).map_err(|e| VlpError::io(&sp, e))?;
    Ok(())
}

/// `vlp capfilt`: loads the models, filters the file, writes `out` and its summary, prints the
/// summary.
pub fn run(args: &CapfiltArgs, device: Device) -> Result<CapfiltSummary> {
    let (entries, raw) = read_annotations(&args.annotations, &args.image_root)?;
    let mut models = CapfiltModels::load(
        &args.captioner_config,
        &args.captioner,
        &args.filter_config,
        &args.filter,
        &args.vocab,
        args.image_size,
        device,
    )?;
    let mode = if args.sample {
        CaptionMode::Sample {
            top_p: args.top_p,
            max_length: args.max_length,
            min_length: args.min_length,
            seed: args.seed,
        }
    } else {
        CaptionMode::Beam {
            num_beams: args.num_beams,
            max_length: args.max_length,
            min_length: args.min_length,
        }
    };
    let opts = CapfiltOptions {
        mode,
        prompt: args.prompt.clone(),
        threshold: args.threshold,
        batch: args.batch,
        progress: true,
    };
    let output = capfilt(&mut models, &entries, &raw, &opts)?;
    write_output(&args.out, &output)?;
    println!("{}", output.summary);
    println!(
        "wrote {} records to {} (summary {})",
        output.records.len(),
        args.out.display(),
        summary_path(&args.out).display()
    );
    Ok(output.summary)
}
