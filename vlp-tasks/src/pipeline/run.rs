//! One experiment, one command: `vlp pretrain|finetune|eval --config FILE`. Reads the
//! experiment, builds the model (loading `model.init` through the model's `adapt_state_dict`),
//! the data loader and the evaluator, runs the [`Trainer`], and writes the run directory:
//! the trainer's files plus `experiment.yaml` (the resolved experiment, from which `--resume`
//! continues) and `eval.json` (the final metrics).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tch::Device;
use vlp_core::{Result, VlpError};

use super::albef::{
    albef_config, check_task, eval_data, evaluate, load_init, tokenizer, train_loader, transform,
    AlbefBatch, AlbefModel, AlbefTrainable, EvalSetup, TextEncoder,
};
use super::blip::{self, BlipBatch, BlipEvalSetup, BlipModel, BlipText, BlipTrainable};
use super::config::{ExperimentConfig, InitMode};
use crate::train::{EvalContext, LoaderSource, RunDir, TrainOutcome, Trainer};
use vlp_core::checkpoint::LoadReport;

/// The resolved experiment in a run directory.
pub const EXPERIMENT_FILE: &str = "experiment.yaml";
/// The final metrics in a run directory.
pub const EVAL_FILE: &str = "eval.json";

/// What to do with an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Train a `pretrain` variant.
    Pretrain,
    /// Train a fine-tuning variant (usually from a pretraining checkpoint in `model.init`).
    Finetune,
    /// Evaluate `model.init` (or a run's latest checkpoint with `--resume DIR`).
    Eval,
}

impl Command {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Command::Pretrain => "pretrain",
            Command::Finetune => "finetune",
            Command::Eval => "eval",
        }
    }
}

/// Options of a run (the CLI's flags).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The experiment file (not needed with `resume`).
    pub config: Option<PathBuf>,
    /// `--set key=value` overrides (`train.max_steps=10`, `data.root=...`).
    pub sets: Vec<String>,
    /// The run directory (default `runs/<train.name>-<stamp>`).
    pub out: Option<PathBuf>,
    /// Continue the run in this directory (training), or evaluate its latest checkpoint (eval).
    pub resume: Option<PathBuf>,
    /// The device.
    pub device: Device,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimizer steps completed (0 for `eval`).
    pub step: u64,
    /// The final metrics (also in `eval.json`).
    pub metrics: BTreeMap<String, f64>,
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Models the pipeline trains and evaluates.
pub const PIPELINE_MODELS: &[&str] = &["albef", "blip"];

/// The variants `vlp pretrain` trains (`pretrain_nlvr`: ALBEF's NLVR2 text assignment).
pub const PRETRAIN_VARIANTS: &[&str] = &["pretrain", "pretrain_nlvr"];

/// Checks that the pipeline can run `model.name` / `model.variant` for `cmd`.
pub fn check_model(exp: &ExperimentConfig, cmd: Command) -> Result<()> {
    let src = &exp.source;
    let name = exp.model.name.as_str();
    let variants: &[&str] = match name {
        "albef" => super::albef::PIPELINE_VARIANTS,
        "blip" => blip::VARIANTS,
        other => {
            let known: Vec<&str> = vlp_models::registry::models()
                .iter()
                .map(|m| m.name)
                .collect();
            return Err(if known.contains(&other) {
                VlpError::Unsupported {
                    what: format!(
                        "`vlp {}` for model `{other}` ({}): only {} have a pipeline",
                        cmd.name(),
                        src.display(),
                        PIPELINE_MODELS.join(", ")
                    ),
                }
            } else {
                cfg_err(
                    src,
                    format!(
                        "field `model.name`: unknown model `{other}` (registered: {})",
                        known.join(", ")
                    ),
                )
            });
        }
    };
    let v = exp.model.variant.as_str();
    if !variants.contains(&v) {
        return Err(cfg_err(
            src,
            format!(
                "field `model.variant`: unknown or untrainable {name} variant `{v}` (available: {})",
                variants.join(", ")
            ),
        ));
    }
    match cmd {
        Command::Pretrain if !PRETRAIN_VARIANTS.contains(&v) => {
            return Err(cfg_err(
                src,
                format!("field `model.variant`: `vlp pretrain` trains the pre-training variants ({}), not `{v}` (use `vlp finetune`)", PRETRAIN_VARIANTS.join(", ")),
            ))
        }
        Command::Finetune if PRETRAIN_VARIANTS.contains(&v) => {
            let others: Vec<&str> = variants.iter().copied().filter(|x| !PRETRAIN_VARIANTS.contains(x)).collect();
            return Err(cfg_err(
                src,
                format!(
                    "field `model.variant`: `vlp finetune` trains a fine-tuning variant ({}); use `vlp pretrain`",
                    others.join(", ")
                ),
            ))
        }
        _ => {}
    }
    let checked = if name == "blip" {
        blip::check_task(v, exp.data.task)
    } else {
        check_task(v, exp.data.task)
    };
    checked.map_err(|e| cfg_err(src, e.to_string()))?;
    if v == "pretrain_nlvr" && has_eval_split(exp) {
        return Err(cfg_err(
            src,
            "field `data.val_file`: `pretrain_nlvr` (text assignment) has no evaluation; leave the validation split out",
        ));
    }
    Ok(())
}

/// The experiment as written into a run directory: the model config resolved inline and
/// `data.root` absolute, so that `--resume` works from any directory.
pub(crate) fn resolved(exp: &ExperimentConfig) -> Result<ExperimentConfig> {
    let mut e = exp.clone();
    let cfg = match exp.model.name.as_str() {
        "blip" => serde_yaml::to_value(blip::blip_config(exp)?),
        _ => serde_yaml::to_value(albef_config(exp)?),
    };
    e.model.config = Some(cfg.map_err(|x| VlpError::Msg(format!("model config: {x}")))?);
    let root = exp.data.root.clone().unwrap_or_else(|| PathBuf::from("."));
    e.data.root = Some(std::fs::canonicalize(&root).map_err(|x| VlpError::io(&root, x))?);
    if let Some(init) = &exp.model.init {
        e.model.init = std::fs::canonicalize(init).ok().or(Some(init.clone()));
    }
    e.train = exp.train_config();
    e.eval.every = None;
    Ok(e)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    crate::train::checkpoint::write_atomic(path, text.as_bytes())
}

fn write_eval(
    dir: &Path,
    exp: &ExperimentConfig,
    step: Option<u64>,
    checkpoint: Option<&Path>,
    metrics: &BTreeMap<String, f64>,
) -> Result<()> {
    let v = serde_json::json!({
        "model": exp.model.name,
        "variant": exp.model.variant,
        "preset": exp.model.preset.name(),
        "task": exp.data.task.name(),
        "split": exp.eval.split,
        "step": step,
        "checkpoint": checkpoint.map(|p| p.display().to_string()),
        "metrics": metrics,
    });
    let text = serde_json::to_string_pretty(&v).map_err(|e| VlpError::Msg(e.to_string()))?;
    write_text(&dir.join(EVAL_FILE), &(text + "\n"))
}

fn report_init(rep: LoadReport, init: &Path, mode: InitMode) -> Result<String> {
    let mut s = format!(
        "init: loaded {} tensors from {} ({:?})",
        rep.loaded.len(),
        init.display(),
        mode
    );
    if !rep.is_clean() {
        s += &format!(
            "; missing {} (left at their initialisation), unexpected {} (ignored), mismatched {}",
            rep.missing.len(),
            rep.unexpected.len(),
            rep.mismatched.len()
        );
    }
    Ok(s)
}

fn has_eval_split(exp: &ExperimentConfig) -> bool {
    exp.data.task == super::config::Task::EasyVqa || !exp.split_files(&exp.eval.split).is_empty()
}

/// The BLIP model, tokenizer text settings and config of an experiment (the tokenizer's `[DEC]` /
/// `[ENC]` ids in the config).
fn blip_parts(
    exp: &ExperimentConfig,
    device: Device,
) -> Result<(BlipModel, BlipText, vlp_models::blip::BlipConfig)> {
    let (tok, tokens) = blip::blip_tokenizer(exp)?;
    let cfg = blip::with_tokens(exp, blip::blip_config(exp)?, tokens)?;
    // The initial weights and queues draw from torch's generator: seed it for reproducible runs.
    tch::manual_seed(exp.train.seed as i64);
    let model = BlipModel::build(&exp.model.variant, &cfg, &tok, device)?;
    let text = BlipText {
        tokenizer: Arc::new(tok),
        tokens: model.tokens(),
        max_len: exp.data.max_text_len,
        prompt: (exp.model.variant == "captioning").then(|| cfg.prompt.clone()),
    };
    Ok((model, text, cfg))
}

fn blip_eval_setup(
    exp: &ExperimentConfig,
    text: &BlipText,
    cfg: &vlp_models::blip::BlipConfig,
) -> Result<BlipEvalSetup> {
    let size = blip::image_size(cfg, &exp.model.variant);
    Ok(BlipEvalSetup {
        text: BlipText {
            prompt: None,
            ..text.clone()
        },
        transform: blip::transform(exp, size, false)?,
        k_test: exp.eval.k_test,
        batch_size: exp.eval.batch_size,
        num_workers: exp.data.num_workers,
    })
}

fn log_line(trainer: &Trainer, line: &str) {
    eprintln!("{line}");
    let log = trainer.run_dir().log_path();
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

fn eval_setup(exp: &ExperimentConfig, enc: TextEncoder) -> Result<EvalSetup> {
    let cfg = albef_config(exp)?;
    Ok(EvalSetup {
        enc,
        transform: transform(exp, &cfg, false)?,
        k_test: exp.eval.k_test,
        batch_size: exp.eval.batch_size,
        num_workers: exp.data.num_workers,
        groups: None,
    })
}

/// Runs `cmd` (see the module docs).
pub fn run(cmd: Command, opts: &RunOptions) -> Result<RunSummary> {
    match cmd {
        Command::Eval => run_eval(opts),
        _ => run_train(cmd, opts),
    }
}

fn set_refs(opts: &RunOptions) -> Vec<&str> {
    opts.sets.iter().map(String::as_str).collect()
}

fn run_train(cmd: Command, opts: &RunOptions) -> Result<RunSummary> {
    let sets = set_refs(opts);
    let (exp, mut trainer, resuming) = match &opts.resume {
        Some(dir) => {
            let f = dir.join(EXPERIMENT_FILE);
            if !f.is_file() {
                return Err(VlpError::Msg(format!(
                    "--resume {}: no {EXPERIMENT_FILE} (not a run directory of `vlp {}`)",
                    dir.display(),
                    cmd.name()
                )));
            }
            let exp = ExperimentConfig::load(&f, &sets)?;
            check_model(&exp, cmd)?;
            let train_sets: Vec<&str> = sets
                .iter()
                .filter_map(|s| s.strip_prefix("train."))
                .collect();
            let trainer = Trainer::resume(dir, &train_sets)?;
            if !sets.is_empty() {
                write_text(&f, &resolved(&exp)?.to_yaml()?)?;
            }
            (exp, trainer, true)
        }
        None => {
            let config = opts.config.as_ref().ok_or_else(|| {
                VlpError::Msg(format!(
                    "`vlp {}` needs --config FILE (or --resume DIR)",
                    cmd.name()
                ))
            })?;
            let exp = ExperimentConfig::parse(config, &sets)?;
            check_model(&exp, cmd)?;
            exp.validate()?;
            let res = resolved(&exp)?;
            let trainer = Trainer::new(exp.train_config(), opts.out.clone())?;
            write_text(
                &trainer.run_dir().root().join(EXPERIMENT_FILE),
                &res.to_yaml()?,
            )?;
            (exp, trainer, false)
        }
    };
    let outcome = match exp.model.name.as_str() {
        "blip" => train_blip(&exp, &mut trainer, resuming, opts.device)?,
        _ => train_albef(&exp, &mut trainer, resuming, opts.device)?,
    };
    let metrics = outcome
        .evals
        .last()
        .map(|e| e.metrics.clone())
        .unwrap_or_default();
    write_eval(
        &outcome.run_dir,
        &exp,
        Some(outcome.step),
        outcome.last_checkpoint.as_deref(),
        &metrics,
    )?;
    Ok(RunSummary {
        run_dir: outcome.run_dir,
        step: outcome.step,
        metrics,
    })
}

fn train_albef(
    exp: &ExperimentConfig,
    trainer: &mut Trainer,
    resuming: bool,
    device: Device,
) -> Result<TrainOutcome> {
    let cfg = albef_config(exp)?;
    // The initial weights and queues draw from torch's generator: seed it for reproducible runs.
    tch::manual_seed(exp.train.seed as i64);
    let mut model = AlbefModel::build_for(exp, &cfg, device)?;
    if !resuming {
        if let Some(init) = &exp.model.init {
            let rep = load_init(&mut model, init, exp.model.init_mode)?;
            log_line(trainer, &report_init(rep, init, exp.model.init_mode)?);
        }
    }
    let enc = TextEncoder {
        tokenizer: Arc::new(tokenizer(exp)?),
        max_len: exp.data.max_text_len,
    };
    let loader = train_loader(exp, &cfg, enc.clone())?;
    let mut source = LoaderSource::new(loader, |b: &AlbefBatch| b.len());
    let mut trainable = AlbefTrainable {
        model,
        alpha: cfg.alpha,
        word_swap: crate::pipeline::albef::word_swap(exp)?,
    };
    if has_eval_split(exp) {
        let data = eval_data(exp)?;
        let setup = eval_setup(exp, enc)?;
        let mut evaluator =
            |m: &mut AlbefTrainable, _ctx: &EvalContext| evaluate(&mut m.model, &data, &setup);
        trainer.fit(&mut trainable, &mut source, Some(&mut evaluator))
    } else {
        trainer.fit(&mut trainable, &mut source, None)
    }
}

fn train_blip(
    exp: &ExperimentConfig,
    trainer: &mut Trainer,
    resuming: bool,
    device: Device,
) -> Result<TrainOutcome> {
    let (mut model, text, cfg) = blip_parts(exp, device)?;
    if !resuming {
        if let Some(init) = &exp.model.init {
            let rep = blip::load_init(&mut model, init, exp.model.init_mode)?;
            log_line(trainer, &report_init(rep, init, exp.model.init_mode)?);
        }
    }
    let size = blip::image_size(&cfg, &exp.model.variant);
    let loader = blip::train_loader(exp, size, text.clone())?;
    let mut source = LoaderSource::new(loader, |b: &BlipBatch| b.len());
    let mut trainable = BlipTrainable {
        model,
        alpha: cfg.alpha,
    };
    if has_eval_split(exp) {
        let data = blip::eval_data(exp)?;
        let setup = blip_eval_setup(exp, &text, &cfg)?;
        let mut evaluator =
            |m: &mut BlipTrainable, _ctx: &EvalContext| blip::evaluate(&mut m.model, &data, &setup);
        trainer.fit(&mut trainable, &mut source, Some(&mut evaluator))
    } else {
        trainer.fit(&mut trainable, &mut source, None)
    }
}

/// The model `vlp eval` evaluates.
enum EvalModel {
    Albef(AlbefModel),
    Blip(BlipModel, BlipText, Box<vlp_models::blip::BlipConfig>),
}

fn run_eval(opts: &RunOptions) -> Result<RunSummary> {
    let sets = set_refs(opts);
    let exp = match (&opts.config, &opts.resume) {
        (Some(c), _) => ExperimentConfig::parse(c, &sets)?,
        (None, Some(dir)) => ExperimentConfig::parse(dir.join(EXPERIMENT_FILE), &sets)?,
        (None, None) => {
            return Err(VlpError::Msg(
                "`vlp eval` needs --config FILE or --resume RUN_DIR".into(),
            ))
        }
    };
    check_model(&exp, Command::Eval)?;
    exp.validate()?;
    let mut model = match exp.model.name.as_str() {
        "blip" => {
            let (model, text, cfg) = blip_parts(&exp, opts.device)?;
            EvalModel::Blip(model, text, Box::new(cfg))
        }
        _ => {
            let cfg = albef_config(&exp)?;
            // The initial weights and queues draw from torch's generator: seed it for
            // reproducible runs.
            tch::manual_seed(exp.train.seed as i64);
            EvalModel::Albef(AlbefModel::build_for(&exp, &cfg, opts.device)?)
        }
    };
    let ckpt: Option<PathBuf> = match (&opts.resume, &exp.model.init) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(init)) => Some(init.clone()),
        (None, None) => None,
    };
    match &ckpt {
        Some(p) => {
            let mode = if opts.resume.is_some() {
                InitMode::Strict
            } else {
                exp.model.init_mode
            };
            let rep = match &mut model {
                EvalModel::Albef(m) => load_init(m, p, mode)?,
                EvalModel::Blip(m, ..) => blip::load_init(m, p, mode)?,
            };
            eprintln!("{}", report_init(rep, p, mode)?);
        }
        None => eprintln!(
            "warning: no model.init: evaluating a randomly initialised {} model",
            exp.model.variant
        ),
    }
    let out = match (&opts.out, &opts.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => RunDir::default_path(&format!("{}-eval", exp.train.name)),
    };
    std::fs::create_dir_all(&out).map_err(|e| VlpError::io(&out, e))?;
    if opts.resume.as_deref() != Some(out.as_path()) {
        write_text(&out.join(EXPERIMENT_FILE), &resolved(&exp)?.to_yaml()?)?;
    }
    let metrics = match &mut model {
        EvalModel::Albef(m) => {
            let enc = TextEncoder {
                tokenizer: Arc::new(tokenizer(&exp)?),
                max_len: exp.data.max_text_len,
            };
            let data = eval_data(&exp)?;
            let setup = eval_setup(&exp, enc)?;
            evaluate(m, &data, &setup)?
        }
        EvalModel::Blip(m, text, cfg) => {
            let data = blip::eval_data(&exp)?;
            let setup = blip_eval_setup(&exp, text, cfg)?;
            blip::evaluate(m, &data, &setup)?
        }
    };
    let resolved_ckpt = ckpt
        .as_deref()
        .map(super::albef::resolve_init)
        .transpose()?;
    write_eval(&out, &exp, None, resolved_ckpt.as_deref(), &metrics)?;
    Ok(RunSummary {
        run_dir: out,
        step: 0,
        metrics,
    })
}
