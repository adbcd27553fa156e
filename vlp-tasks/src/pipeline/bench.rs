//! `vlp bench step`: the time of one full training step (forward, backward, AdamW) of a model
//! variant on synthetic batches of the experiment's preset: median step time, samples/s and the
//! process's peak resident memory.
use std::path::PathBuf;

use serde::Serialize;
use tch::{Device, Kind, Tensor};
use vlp_core::{Result, VlpError};

use super::albef::{albef_config, AlbefBatch, AlbefModel, AlbefTrainable};
use super::blip::{self, BlipModel, BlipTrainable};
use super::config::ExperimentConfig;
use crate::train::{BatchClone, InMemorySource, TrainConfig, TrainOutcome, Trainer};

impl BatchClone for AlbefBatch {
    fn batch_clone(&self) -> Self {
        let c = Tensor::shallow_clone;
        match self {
            AlbefBatch::Pairs {
                image,
                input_ids,
                attention_mask,
                idx,
            } => AlbefBatch::Pairs {
                image: c(image),
                input_ids: c(input_ids),
                attention_mask: c(attention_mask),
                idx: c(idx),
            },
            AlbefBatch::Vqa {
                image,
                question_ids,
                question_mask,
                answer_ids,
                answer_mask,
                counts,
                weights,
                image_index,
                targets,
            } => AlbefBatch::Vqa {
                image: c(image),
                question_ids: c(question_ids),
                question_mask: c(question_mask),
                answer_ids: c(answer_ids),
                answer_mask: c(answer_mask),
                counts: c(counts),
                weights: c(weights),
                image_index: image_index.as_ref().map(c),
                targets: targets.clone(),
            },
            AlbefBatch::Classify {
                image,
                input_ids,
                attention_mask,
                targets,
                image_index,
            } => AlbefBatch::Classify {
                image: c(image),
                input_ids: c(input_ids),
                attention_mask: c(attention_mask),
                targets: c(targets),
                image_index: image_index.as_ref().map(c),
            },
        }
    }
}

/// Options of `vlp bench step`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The experiment file (its model preset/config and train section are used).
    pub config: PathBuf,
    /// `--set` overrides.
    pub sets: Vec<String>,
    /// Model name (must match the config's unless the config is overridden).
    pub model: Option<String>,
    /// Variant (overrides `model.variant`).
    pub variant: Option<String>,
    /// Samples per step.
    pub batch: usize,
    /// Steps timed (after one warm-up step).
    pub steps: usize,
    /// Text length of the synthetic batches.
    pub text_len: i64,
    /// Device.
    pub device: Device,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Model and variant.
    pub model: String,
    /// Variant.
    pub variant: String,
    /// Preset.
    pub preset: String,
    /// Batch size.
    pub batch: usize,
    /// Steps timed.
    pub steps: usize,
    /// Median step time (seconds).
    pub median_step_s: f64,
    /// Samples per second at the median step time.
    pub samples_per_s: f64,
    /// Peak resident memory of the process (MiB, Linux `VmHWM`), when known.
    pub peak_rss_mib: Option<f64>,
    /// Device.
    pub device: String,
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A synthetic batch of `variant` (random images and token ids).
pub fn synthetic_batch(variant: &str, b: i64, res: i64, len: i64) -> Result<AlbefBatch> {
    let img = |n: i64| Tensor::randn([n, 3, res, res], (Kind::Float, Device::Cpu));
    let ids = |n: i64, l: i64| {
        let body = Tensor::randint_low(1000, 2000, [n, l - 1], (Kind::Int64, Device::Cpu));
        Tensor::cat(
            &[Tensor::full([n, 1], 101, (Kind::Int64, Device::Cpu)), body],
            1,
        )
    };
    let ones = |n: i64, l: i64| Tensor::ones([n, l], (Kind::Int64, Device::Cpu));
    Ok(match variant {
        "pretrain" | "retrieval" | "captioning" => AlbefBatch::Pairs {
            image: img(b),
            input_ids: ids(b, len),
            attention_mask: ones(b, len),
            idx: Tensor::arange(b, (Kind::Int64, Device::Cpu)),
        },
        "vqa" => {
            let a = ids(b, 3);
            let a = Tensor::cat(
                &[a, Tensor::full([b, 1], 102, (Kind::Int64, Device::Cpu))],
                1,
            );
            AlbefBatch::Vqa {
                image: img(b),
                question_ids: ids(b, len),
                question_mask: ones(b, len),
                answer_ids: a,
                answer_mask: ones(b, 4),
                counts: Tensor::ones([b], (Kind::Int64, Device::Cpu)),
                weights: Tensor::ones([b], (Kind::Float, Device::Cpu)),
                image_index: None,
                targets: (0..b).map(|i| vec![(i as usize % 3, 1.0)]).collect(),
            }
        }
        "nlvr2" | "ve" => {
            let (n_img, classes) = if variant == "nlvr2" {
                (2 * b, 2)
            } else {
                (b, 3)
            };
            AlbefBatch::Classify {
                image: img(n_img),
                input_ids: ids(b, len),
                attention_mask: ones(b, len),
                targets: Tensor::randint(classes, [b], (Kind::Int64, Device::Cpu)),
                image_index: None,
            }
        }
        other => {
            return Err(VlpError::Unsupported {
                what: format!("bench of variant `{other}`"),
            })
        }
    })
}

fn bench_albef(
    exp: &ExperimentConfig,
    opts: &BenchOptions,
    t: TrainConfig,
    dir: &std::path::Path,
) -> Result<TrainOutcome> {
    let cfg = albef_config(exp)?;
    tch::manual_seed(exp.train.seed as i64);
    let model = AlbefModel::build_for(exp, &cfg, opts.device)?;
    let batch = synthetic_batch(
        &exp.model.variant,
        opts.batch as i64,
        cfg.image_res,
        opts.text_len,
    )?;
    let mut trainer = Trainer::new(t, Some(dir.to_path_buf()))?;
    let mut data = InMemorySource::new(vec![batch], opts.batch);
    let mut trainable = AlbefTrainable {
        model,
        alpha: cfg.alpha,
        word_swap: crate::pipeline::albef::word_swap(exp)?,
    };
    trainer.fit(&mut trainable, &mut data, None)
}

fn bench_blip(
    exp: &ExperimentConfig,
    opts: &BenchOptions,
    t: TrainConfig,
    dir: &std::path::Path,
) -> Result<TrainOutcome> {
    let (tok, tokens) = blip::blip_tokenizer(exp)?;
    let cfg = blip::with_tokens(exp, blip::blip_config(exp)?, tokens)?;
    tch::manual_seed(exp.train.seed as i64);
    let model = BlipModel::build(&exp.model.variant, &cfg, &tok, opts.device)?;
    let batch = synthetic_batch(
        &exp.model.variant,
        opts.batch as i64,
        blip::image_size(&cfg, &exp.model.variant),
        opts.text_len,
    )?;
    let mut trainer = Trainer::new(t, Some(dir.to_path_buf()))?;
    let mut data = InMemorySource::new(vec![batch], opts.batch);
    let mut trainable = BlipTrainable {
        model,
        alpha: cfg.alpha,
    };
    trainer.fit(&mut trainable, &mut data, None)
}

/// Times `steps` training steps (plus one warm-up) of the variant with the trainer (AdamW, the
/// config's objectives), on one fixed synthetic batch.
pub fn bench_step(opts: &BenchOptions) -> Result<BenchResult> {
    let sets: Vec<&str> = opts.sets.iter().map(String::as_str).collect();
    let mut exp: ExperimentConfig =
        vlp_core::config::load_config_with_overrides(&opts.config, &sets)?;
    exp.source = opts.config.clone();
    if let Some(m) = &opts.model {
        if *m != exp.model.name {
            return Err(VlpError::Msg(format!(
                "`vlp bench step --model {m}`: {} is a `{}` config",
                opts.config.display(),
                exp.model.name
            )));
        }
    }
    if let Some(v) = &opts.variant {
        exp.model.variant = v.clone();
    }
    if !super::run::PIPELINE_MODELS.contains(&exp.model.name.as_str()) {
        return Err(VlpError::Unsupported {
            what: format!(
                "`vlp bench step` for model `{}` (available: {})",
                exp.model.name,
                super::run::PIPELINE_MODELS.join(", ")
            ),
        });
    }
    let mut t = exp.train.clone();
    t.max_steps = Some(opts.steps as u64 + 1);
    t.epochs = None;
    t.log_every = 1;
    t.ckpt_every = 0;
    t.plot_every = 1_000_000;
    t.progress = false;
    t.eval_every = None;
    t.grad_accum = 1;
    if exp.model.variant != "pretrain" && exp.model.variant != "retrieval" {
        t.objectives.clear();
    } else if exp.model.variant == "retrieval" {
        t.objectives.retain(|k, _| k == "itc" || k == "itm");
    }
    t.mix.clear();
    let dir = std::env::temp_dir().join(format!("vlp-bench-{}", std::process::id()));
    let out = if exp.model.name == "blip" {
        bench_blip(&exp, opts, t, &dir)?
    } else {
        bench_albef(&exp, opts, t, &dir)?
    };
    let _ = std::fs::remove_dir_all(&dir);
    let mut times: Vec<f64> = out
        .history
        .iter()
        .skip(1)
        .map(|r| opts.batch as f64 / r.samples_per_s)
        .collect();
    if times.is_empty() {
        return Err(VlpError::Msg("bench: no step was timed".into()));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    Ok(BenchResult {
        model: exp.model.name.clone(),
        variant: exp.model.variant.clone(),
        preset: exp.model.preset.name().into(),
        batch: opts.batch,
        steps: times.len(),
        median_step_s: median,
        samples_per_s: opts.batch as f64 / median,
        peak_rss_mib: peak_rss_mib(),
        device: format!("{:?}", opts.device),
    })
}
