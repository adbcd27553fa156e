//! The training loop: a [`Trainer`] drives any [`Trainable`] model over a [`DataSource`] with
//! AdamW, the schedule, gradient accumulation and clipping, mixed precision, objective weights
//! and mixing, logging, plots, evaluation and atomic checkpoints; [`Trainer::resume`] continues a
//! killed run exactly.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::{Result, VlpError};

use super::amp::{self, GradScaler, Precision};
use super::checkpoint::{restore_vars, Checkpointer, LoadedCheckpoint, TrainerState, MODEL_FILE};
use super::config::TrainConfig;
use super::optim::AdamW;
use super::plot::{plot_series, Series};
use super::run_dir::{RunDir, CONFIG_FILE};
use super::schedule::LrSchedule;
use super::source::DataSource;

/// One named loss term: a scalar tensor (with grad) and the model's weight for it.
#[derive(Debug)]
pub struct LossTerm {
    /// Objective name (`itc`, `itm`, `mlm`, `lm`, `vqa`, ...).
    pub name: String,
    /// The scalar loss (any float kind; autocast outputs are fine).
    pub value: Tensor,
    /// The model's own weight; the config's `objectives` weight multiplies it.
    pub weight: f64,
}

/// What [`Trainable::train_step`] returns: the loss terms, plus optional scalar metrics that are
/// logged but not trained on (accuracies, queue fill, ...).
#[derive(Debug, Default)]
pub struct LossTerms {
    terms: Vec<LossTerm>,
    metrics: Vec<(String, f64)>,
}

impl LossTerms {
    /// No term yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a term of weight 1.
    pub fn push(&mut self, name: impl Into<String>, value: Tensor) -> &mut Self {
        self.push_weighted(name, value, 1.0)
    }

    /// Adds a term with the model's weight (ALBEF's `mlm_weight`, BLIP's loss mix, ...).
    pub fn push_weighted(
        &mut self,
        name: impl Into<String>,
        value: Tensor,
        weight: f64,
    ) -> &mut Self {
        self.terms.push(LossTerm {
            name: name.into(),
            value,
            weight,
        });
        self
    }

    /// Builder form of [`LossTerms::push`].
    pub fn with(mut self, name: impl Into<String>, value: Tensor) -> Self {
        self.push(name, value);
        self
    }

    /// Adds a logged-only scalar.
    pub fn metric(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.metrics.push((name.into(), value));
        self
    }

    /// The terms.
    pub fn terms(&self) -> &[LossTerm] {
        &self.terms
    }

    /// The logged-only metrics.
    pub fn metrics(&self) -> &[(String, f64)] {
        &self.metrics
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// True when there is no term.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// What the model knows about the step it computes.
#[derive(Debug, Clone)]
pub struct StepContext<'a> {
    /// 0-based index of the optimizer step being computed (= steps completed before it).
    pub step: u64,
    /// Index of this micro-batch within the step (0..grad_accum).
    pub micro_step: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// 0-based index of this micro-batch within the epoch.
    pub iter_in_epoch: u64,
    /// Micro-batches per epoch, when the data source knows.
    pub iters_per_epoch: Option<u64>,
    /// Learning rate of this step (before `lr_mult`).
    pub lr: f64,
    /// Always true in `train_step` (kept for models that share code with evaluation).
    pub train: bool,
    /// The objective group sampled for this step (mixed runs).
    pub group: Option<&'a str>,
    /// The objectives to compute this step: the group's, or every configured one (empty when
    /// the config lists none: compute all).
    pub objectives: &'a [String],
    /// The config's objective weights (empty: the model's own weights only).
    pub weights: &'a BTreeMap<String, f64>,
    /// The seed torch's generator was set to for this step.
    pub seed: u64,
    /// The model's device.
    pub device: Device,
    /// The configured precision (autocast is already active around `train_step` on CUDA).
    pub precision: Precision,
}

impl StepContext<'_> {
    /// ALBEF's distillation ramp: `min(1, i / len)` over the first epoch (i the micro-batch
    /// index), 1 afterwards or when the epoch length is unknown. Multiply `alpha` by it.
    pub fn warmup_ramp(&self) -> f64 {
        match (self.epoch, self.iters_per_epoch) {
            (0, Some(n)) if n > 0 => (self.iter_in_epoch as f64 / n as f64).min(1.0),
            _ => 1.0,
        }
    }

    /// Whether `objective` is to be computed this step.
    pub fn is_active(&self, objective: &str) -> bool {
        self.objectives.is_empty() || self.objectives.iter().any(|o| o == objective)
    }

    /// The config's weight of `objective` (1 when the config lists no objectives).
    pub fn weight(&self, objective: &str) -> f64 {
        if self.weights.is_empty() {
            1.0
        } else {
            self.weights.get(objective).copied().unwrap_or(0.0)
        }
    }
}

/// A model the [`Trainer`] can train.
pub trait Trainable {
    /// What one micro-batch is.
    type Batch;
    /// The model's variables: the trainable ones are optimised (less the frozen), all of them
    /// (buffers, queues, momentum copies) are checkpointed.
    fn var_store(&self) -> &VarStore;
    /// Forward pass of one micro-batch in training mode (dropout on), returning the loss terms.
    /// Runs under autocast on CUDA when the precision asks for it; must not call backward.
    fn train_step(&mut self, batch: &Self::Batch, ctx: &StepContext<'_>) -> Result<LossTerms>;
    /// Called after each applied optimizer step (not after steps the fp16 scaler skipped):
    /// momentum-encoder updates and the like. Default: nothing.
    fn after_optimizer_step(&mut self, _ctx: &StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// State outside the VarStore to checkpoint (counters, ...). Default: none.
    fn extra_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores [`Trainable::extra_state`]. Default: nothing.
    fn load_extra_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// When an evaluation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalContext {
    /// Steps completed.
    pub step: u64,
    /// The epoch that just ended (end of epoch) or the current one.
    pub epoch: u64,
    /// True at the end of an epoch.
    pub end_of_epoch: bool,
    /// True for the evaluation at the end of the run.
    pub final_eval: bool,
}

/// Evaluates the model during training (runs under `no_grad`); returns named metrics, logged to
/// `metrics.jsonl` and plotted. Closures `FnMut(&mut M, &EvalContext) -> Result<BTreeMap<String,
/// f64>>` implement it.
pub trait Evaluator<M> {
    /// Computes the metrics.
    fn evaluate(&mut self, model: &mut M, ctx: &EvalContext) -> Result<BTreeMap<String, f64>>;
}

impl<M, F> Evaluator<M> for F
where
    F: FnMut(&mut M, &EvalContext) -> Result<BTreeMap<String, f64>>,
{
    fn evaluate(&mut self, model: &mut M, ctx: &EvalContext) -> Result<BTreeMap<String, f64>> {
        self(model, ctx)
    }
}

/// JSON has no inf/NaN: serde_json writes them as `null`; read `null` back as NaN.
mod lenient {
    use serde::{Deserialize, Deserializer};
    use std::collections::BTreeMap;

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
            .collect())
    }
}

/// A logged training record (averaged over the steps since the previous one); one line of
/// `metrics.jsonl` with `"type": "train"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed.
    pub step: u64,
    /// Epoch of the last step.
    pub epoch: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Weighted total loss (mean over steps and micro-batches; non-finite values are written
    /// as `null`).
    #[serde(deserialize_with = "lenient::f64")]
    pub loss: f64,
    /// Unweighted loss terms (means).
    #[serde(deserialize_with = "lenient::map")]
    pub terms: BTreeMap<String, f64>,
    /// Logged-only metrics (means).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient::map"
    )]
    pub metrics: BTreeMap<String, f64>,
    /// Global gradient norm of the last step (before clipping), when computed.
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// Loss scale (fp16).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Steps skipped by the fp16 scaler since the previous record.
    #[serde(default)]
    pub skipped: u64,
    /// Steps per mix group since the previous record (mixed runs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, u64>,
    /// Training throughput since the previous record.
    pub samples_per_s: f64,
    /// Samples consumed since the start of the run.
    pub samples: u64,
    /// Unix time (seconds).
    pub time: f64,
}

/// An evaluation record (`"type": "eval"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps completed.
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// The metrics.
    #[serde(deserialize_with = "lenient::map")]
    pub metrics: BTreeMap<String, f64>,
    /// Unix time (seconds).
    pub time: f64,
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Steps completed (in total, including before a resume).
    pub step: u64,
    /// Epoch reached.
    pub epoch: u64,
    /// Training records logged by this call.
    pub history: Vec<StepRecord>,
    /// Evaluations run by this call.
    pub evals: Vec<EvalRecord>,
    /// The newest checkpoint.
    pub last_checkpoint: Option<PathBuf>,
    /// True when stopped by [`Trainer::halt_at`] (no final checkpoint, as after a kill).
    pub halted: bool,
    /// Steps skipped by the fp16 scaler (in total).
    pub skipped_steps: u64,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// splitmix64.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed torch's global generator gets at the start of step `step` (non-negative).
pub fn step_seed(seed: u64, step: u64) -> u64 {
    splitmix(splitmix(seed) ^ step) >> 1
}

/// Global L2 norm of the gradients (`None`s skipped), as `clip_grad_norm_` computes it: the norm
/// of the per-tensor norms.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let norms: Vec<Tensor> = grads
        .iter()
        .flatten()
        .map(|g| g.f_norm().map(|n| n.to_kind(Kind::Float)))
        .collect::<std::result::Result<_, _>>()?;
    if norms.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::f_stack(&norms, 0)?.f_norm()?.double_value(&[]))
}

/// `torch.nn.utils.clip_grad_norm_(max_norm)`: scales every gradient by
/// `min(1, max_norm / (total_norm + 1e-6))` and returns the total norm (before clipping).
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norms: Vec<Tensor> = grads
        .iter()
        .flatten()
        .map(|g| g.f_norm().map(|n| n.to_kind(Kind::Float)))
        .collect::<std::result::Result<_, _>>()?;
    if norms.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coef = (total.f_add_scalar(1e-6)?.f_reciprocal()? * max_norm).f_clamp_max(1.0)?;
    for g in grads.iter_mut().flatten() {
        let c = coef.to_device(g.device()).to_kind(g.kind());
        let _ = g.f_mul_(&c)?;
    }
    Ok(total.double_value(&[]))
}

struct Mixer {
    groups: Vec<(String, Vec<String>)>,
    dist: Option<WeightedIndex<f64>>,
}

impl Mixer {
    fn new(cfg: &TrainConfig) -> Result<Self> {
        let groups: Vec<(String, Vec<String>)> = cfg
            .mix
            .iter()
            .map(|g| (g.name.clone(), g.objective_names()))
            .collect();
        let dist = if cfg.mix.is_empty() {
            None
        } else {
            Some(
                WeightedIndex::new(cfg.mix.iter().map(|g| g.ratio))
                    .map_err(|e| VlpError::Msg(format!("mix ratios: {e}")))?,
            )
        };
        Ok(Self { groups, dist })
    }

    /// The group of step `step`: drawn from a generator seeded by (seed, step), so it needs no
    /// saved state.
    fn sample(&self, seed: u64, step: u64) -> Option<usize> {
        let dist = self.dist.as_ref()?;
        let mut rng = StdRng::seed_from_u64(splitmix(splitmix(seed ^ 0x4D49_5845) ^ step));
        Some(dist.sample(&mut rng))
    }
}

#[derive(Default)]
struct Window {
    steps: u64,
    loss: f64,
    terms: BTreeMap<String, f64>,
    metrics: BTreeMap<String, f64>,
    samples: u64,
    skipped: u64,
    groups: BTreeMap<String, u64>,
    grad_norm: Option<f64>,
}

#[derive(Default)]
struct PlotData {
    loss: BTreeMap<String, Vec<(f64, f64)>>,
    eval: BTreeMap<String, Vec<(f64, f64)>>,
}

impl PlotData {
    fn add_train(&mut self, r: &StepRecord) {
        let x = r.step as f64;
        self.loss
            .entry("loss".into())
            .or_default()
            .push((x, r.loss));
        for (k, v) in &r.terms {
            self.loss.entry(k.clone()).or_default().push((x, *v));
        }
        self.loss.entry("lr".into()).or_default().push((x, r.lr));
        if let Some(g) = r.grad_norm {
            self.loss
                .entry("grad_norm".into())
                .or_default()
                .push((x, g));
        }
    }

    fn add_eval(&mut self, r: &EvalRecord) {
        for (k, v) in &r.metrics {
            self.eval
                .entry(k.clone())
                .or_default()
                .push((r.step as f64, *v));
        }
    }

    fn series(
        map: &BTreeMap<String, Vec<(f64, f64)>>,
        first: &[&str],
        last: &[&str],
    ) -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        let mk = |k: &String, v: &Vec<(f64, f64)>| Series {
            name: k.clone(),
            points: v.clone(),
        };
        for f in first {
            if let Some((k, v)) = map.get_key_value(*f) {
                out.push(mk(k, v));
            }
        }
        for (k, v) in map {
            if !first.contains(&k.as_str()) && !last.contains(&k.as_str()) {
                out.push(mk(k, v));
            }
        }
        for l in last {
            if let Some((k, v)) = map.get_key_value(*l) {
                out.push(mk(k, v));
            }
        }
        out
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn fmt_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

/// Per-run counters (the non-tensor state of a checkpoint).
#[derive(Debug, Clone, Default)]
struct Counters {
    step: u64,
    epoch: u64,
    iter_in_epoch: u64,
    skipped_steps: u64,
    consecutive_skips: u64,
    samples_seen: u64,
}

/// The values of one micro-batch's terms.
struct TermValues {
    total: Tensor,
    total_value: f64,
    /// (name, value, effective weight).
    terms: Vec<(String, f64, f64)>,
}

fn combine(lt: &LossTerms, weights: &BTreeMap<String, f64>, step: u64) -> Result<TermValues> {
    let mut total: Option<Tensor> = None;
    let mut detached = Vec::with_capacity(lt.len() + 1);
    let mut names = Vec::with_capacity(lt.len());
    for t in lt.terms() {
        let cw = if weights.is_empty() {
            1.0
        } else {
            *weights.get(&t.name).ok_or_else(|| {
                VlpError::Msg(format!(
                    "step {}: the model returned loss term `{}`, which is not in the config's `objectives` ({:?})",
                    step + 1,
                    t.name,
                    weights.keys().collect::<Vec<_>>()
                ))
            })?
        };
        if t.value.numel() != 1 {
            return Err(VlpError::Msg(format!(
                "step {}: loss term `{}` is not a scalar (shape {:?})",
                step + 1,
                t.name,
                t.value.size()
            )));
        }
        let v = t.value.to_kind(Kind::Float).reshape([] as [i64; 0]);
        let w = t.weight * cw;
        if w != 0.0 {
            let contrib = if w == 1.0 { v.shallow_clone() } else { &v * w };
            total = Some(match total {
                None => contrib,
                Some(acc) => acc + contrib,
            });
        }
        detached.push(v.detach());
        names.push((t.name.clone(), w));
    }
    let total = total.ok_or_else(|| {
        VlpError::Msg(format!(
            "step {}: the model returned no loss term with a non-zero weight (terms: {:?})",
            step + 1,
            names.iter().map(|n| &n.0).collect::<Vec<_>>()
        ))
    })?;
    if !total.requires_grad() {
        return Err(VlpError::Msg(format!(
            "step {}: the loss does not require grad (did train_step run under no_grad, or are all its parameters frozen?)",
            step + 1
        )));
    }
    detached.push(total.detach());
    let values: Vec<f64> = Vec::<f64>::try_from(
        Tensor::f_stack(&detached, 0)?
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )?;
    let total_value = *values.last().expect("total pushed");
    let terms = names
        .into_iter()
        .zip(values)
        .map(|((n, w), v)| (n, v, w))
        .collect();
    Ok(TermValues {
        total,
        total_value,
        terms,
    })
}

/// Runs training; see the module docs and `docs/training.md`.
pub struct Trainer {
    cfg: TrainConfig,
    run: RunDir,
    ckpt: Checkpointer,
    resume_from: Option<LoadedCheckpoint>,
    halt_at: Option<u64>,
    plots: PlotData,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run", &self.run.root())
            .field("resuming", &self.resume_from.as_ref().map(|c| &c.dir))
            .finish()
    }
}

impl Trainer {
    /// A new run of `cfg` in `out` (default `runs/<name>-<YYYYmmdd-HHMMSS>`): creates the run
    /// directory and writes `config.yaml`.
    pub fn new(cfg: TrainConfig, out: Option<PathBuf>) -> Result<Self> {
        cfg.validate()?;
        let root = out.unwrap_or_else(|| RunDir::default_path(&cfg.name));
        let mut run = RunDir::create(&root, &cfg)?;
        run.log(&format!(
            "new run in {} (config {})",
            root.display(),
            CONFIG_FILE
        ));
        Ok(Self {
            ckpt: Checkpointer::new(run.checkpoints_dir()),
            cfg,
            run,
            resume_from: None,
            halt_at: None,
            plots: PlotData::default(),
        })
    }

    /// Continues the run in `run_dir` from its `latest` checkpoint, with the run's
    /// `config.yaml` plus `sets` overrides (`max_steps=20000`, ...; the resolved config is
    /// written back). A missing or corrupted `latest` is an error naming the file.
    pub fn resume(run_dir: impl Into<PathBuf>, sets: &[&str]) -> Result<Self> {
        let root: PathBuf = run_dir.into();
        let mut run = RunDir::open(&root)?;
        let cfg = TrainConfig::load_with_overrides(run.config_path(), sets)?;
        if !sets.is_empty() {
            super::checkpoint::write_atomic(&run.config_path(), cfg.to_yaml()?.as_bytes())?;
            run.log(&format!("resume overrides: {sets:?}"));
        }
        let ckpt = Checkpointer::new(run.checkpoints_dir());
        let loaded = ckpt.load_latest()?;
        Ok(Self {
            ckpt,
            cfg,
            run,
            resume_from: Some(loaded),
            halt_at: None,
            plots: PlotData::default(),
        })
    }

    /// Stops [`Trainer::fit`] when `step` steps are completed, without a final checkpoint or
    /// evaluation — what a kill at that point leaves behind (for tests of resuming).
    pub fn halt_at(&mut self, step: u64) {
        self.halt_at = Some(step);
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// The checkpoints.
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.ckpt
    }

    fn redraw_plots(&self) -> Result<()> {
        let dir = self.run.plots_dir();
        let loss = PlotData::series(&self.plots.loss, &["loss"], &["grad_norm", "lr"]);
        plot_series(
            &dir.join("loss.png"),
            &format!("{}: training", self.cfg.name),
            "step",
            &loss,
        )?;
        if !self.plots.eval.is_empty() {
            let ev = PlotData::series(&self.plots.eval, &[], &[]);
            plot_series(
                &dir.join("eval.png"),
                &format!("{}: evaluation", self.cfg.name),
                "step",
                &ev,
            )?;
        }
        Ok(())
    }

    fn nonfinite_error(
        &mut self,
        what: &str,
        c: &Counters,
        micro: usize,
        tv: &[(String, f64, f64)],
        total: f64,
        last_ckpt: &Option<PathBuf>,
    ) -> VlpError {
        let terms: Vec<String> = tv
            .iter()
            .map(|(n, v, w)| format!("{n} = {} (weight {w})", fmt_value(*v)))
            .collect();
        let ck = match last_ckpt {
            Some(d) => format!(
                "last good checkpoint: {} (continue with `--resume {}` once the cause is fixed)",
                d.display(),
                self.run.root().display()
            ),
            None => {
                "last good checkpoint: none (no checkpoint was written before this step)".into()
            }
        };
        let msg = format!(
            "non-finite {what} at step {} (epoch {}, micro-batch {}/{}): total loss = {}; terms: {}; {ck}",
            c.step + 1,
            c.epoch,
            micro + 1,
            self.cfg.grad_accum,
            fmt_value(total),
            terms.join(", ")
        );
        self.run.log(&format!("ERROR {msg}"));
        VlpError::Msg(msg)
    }

    #[allow(clippy::too_many_arguments)]
    fn save<M: Trainable, D: DataSource>(
        &mut self,
        model: &M,
        opt: &AdamW,
        scaler: &Option<GradScaler>,
        data: &D,
        c: &Counters,
        schedule: &LrSchedule,
        lr: f64,
    ) -> Result<PathBuf> {
        let state = TrainerState {
            version: 1,
            step: c.step,
            epoch: c.epoch,
            iter_in_epoch: c.iter_in_epoch,
            seed: self.cfg.seed,
            data_position: data.position(),
            schedule: schedule.clone(),
            last_lr: lr,
            scaler: scaler.as_ref().map(GradScaler::state),
            skipped_steps: c.skipped_steps,
            consecutive_skips: c.consecutive_skips,
            samples_seen: c.samples_seen,
            model_extra: model.extra_state(),
            saved_unix: unix_now() as u64,
        };
        let dir = self
            .ckpt
            .save(model.var_store(), &opt.state_dict(), &state)?;
        if let Some(k) = self.cfg.keep_checkpoints {
            self.ckpt.prune(k)?;
        }
        self.run
            .log(&format!("step {}: checkpoint {}", c.step, dir.display()));
        Ok(dir)
    }

    fn evaluate<M>(
        &mut self,
        model: &mut M,
        evaluator: &mut Option<&mut dyn Evaluator<M>>,
        ctx: EvalContext,
        evals: &mut Vec<EvalRecord>,
    ) -> Result<bool> {
        let Some(ev) = evaluator.as_deref_mut() else {
            return Ok(false);
        };
        let t0 = Instant::now();
        let metrics = tch::no_grad(|| ev.evaluate(model, &ctx))?;
        let rec = EvalRecord {
            step: ctx.step,
            epoch: ctx.epoch,
            metrics,
            time: unix_now(),
        };
        let mut json = serde_json::to_value(&rec).map_err(|e| VlpError::Msg(e.to_string()))?;
        json["type"] = "eval".into();
        self.run.append_metrics(&json)?;
        let shown: Vec<String> = rec
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        self.run.log(&format!(
            "step {} eval ({:.1}s): {}",
            ctx.step,
            t0.elapsed().as_secs_f64(),
            shown.join(", ")
        ));
        self.plots.add_eval(&rec);
        evals.push(rec);
        Ok(true)
    }

    /// Trains `model` on `data` until `max_steps` or `epochs`, evaluating with `evaluator`
    /// (every `eval_every` steps, or at the end of every epoch, and at the end), logging,
    /// plotting and checkpointing as configured. Continues from the checkpoint when the trainer
    /// came from [`Trainer::resume`].
    pub fn fit<M, D>(
        &mut self,
        model: &mut M,
        data: &mut D,
        mut evaluator: Option<&mut dyn Evaluator<M>>,
    ) -> Result<TrainOutcome>
    where
        M: Trainable,
        D: DataSource<Batch = M::Batch>,
    {
        let cfg = self.cfg.clone();
        let device = model.var_store().device();
        let mut opt = AdamW::new(model.var_store(), &cfg.optimizer)?;
        let summary = opt.summary();
        self.run.log(&summary);
        if opt.is_empty() {
            return Err(VlpError::Msg(
                "nothing to train: every parameter is frozen".into(),
            ));
        }
        let params = opt.tensors();
        let accum = cfg.grad_accum as u64;
        let bpe = data.batches_per_epoch();
        if bpe == Some(0) {
            return Err(VlpError::Msg("the data source has no batch".into()));
        }
        let spe = bpe.map(|n| n.div_ceil(accum));
        let total_steps = match (cfg.max_steps, cfg.epochs, spe) {
            (Some(m), Some(e), Some(s)) => m.min(e * s),
            (Some(m), _, _) => m,
            (None, Some(e), Some(s)) => e * s,
            (None, Some(_), None) => {
                return Err(VlpError::Msg(
                    "`epochs` needs a data source that knows its length; set `max_steps`".into(),
                ))
            }
            (None, None, _) => return Err(VlpError::Msg("set `epochs` or `max_steps`".into())),
        };
        let total_epochs = cfg.epochs.or_else(|| spe.map(|s| total_steps.div_ceil(s)));
        let schedule =
            LrSchedule::from_config(&cfg.schedule, cfg.optimizer.lr, total_steps, total_epochs)?;
        if cfg.precision != Precision::Fp32 && !device.is_cuda() {
            self.run.log(&format!(
                "precision {:?}: autocast is CUDA-only, the forward runs in fp32 on {device:?}",
                cfg.precision
            ));
        }
        let use_scaler =
            cfg.precision == Precision::Fp16 && (device.is_cuda() || cfg.scaler.on_cpu);
        let mut scaler = if use_scaler {
            Some(GradScaler::new(&cfg.scaler, device)?)
        } else {
            None
        };
        let mixer = Mixer::new(&cfg)?;
        let all_objectives: Vec<String> = cfg.objectives.keys().cloned().collect();

        let mut c = Counters::default();
        let mut last_ckpt: Option<PathBuf> = None;
        let mut last_lr = schedule.lr(0, 0, 0);
        if let Some(ck) = self.resume_from.take() {
            restore_vars(model.var_store(), &ck.model, &ck.dir.join(MODEL_FILE))?;
            opt.load_state_dict(&ck.optimizer)?;
            match (&mut scaler, &ck.state.scaler) {
                (Some(s), Some(st)) => s.load_state(st),
                (Some(_), None) => self
                    .run
                    .log("the checkpoint has no scaler state: the fp16 scaler starts afresh"),
                _ => {}
            }
            model.load_extra_state(&ck.state.model_extra)?;
            data.resume(&ck.state.data_position)?;
            if ck.state.seed != cfg.seed {
                self.run.log(&format!(
                    "warning: seed changed from {} to {}: the continuation will differ from the original run",
                    ck.state.seed, cfg.seed
                ));
            }
            if ck.state.schedule != schedule {
                self.run.log(&format!(
                    "note: schedule changed from {:?} to {schedule:?}",
                    ck.state.schedule
                ));
            }
            c = Counters {
                step: ck.state.step,
                epoch: ck.state.epoch,
                iter_in_epoch: ck.state.iter_in_epoch,
                skipped_steps: ck.state.skipped_steps,
                consecutive_skips: ck.state.consecutive_skips,
                samples_seen: ck.state.samples_seen,
            };
            last_lr = ck.state.last_lr;
            for r in self.run.truncate_metrics_after(c.step)? {
                match r.get("type").and_then(|t| t.as_str()) {
                    Some("train") => {
                        if let Ok(s) = serde_json::from_value::<StepRecord>(r) {
                            self.plots.add_train(&s);
                        }
                    }
                    Some("eval") => {
                        if let Ok(e) = serde_json::from_value::<EvalRecord>(r) {
                            self.plots.add_eval(&e);
                        }
                    }
                    _ => {}
                }
            }
            self.run.log(&format!(
                "resumed from {} at step {} (epoch {})",
                ck.dir.display(),
                c.step,
                c.epoch
            ));
            last_ckpt = Some(ck.dir);
        } else {
            data.start_epoch(0)?;
        }
        self.run.log(&format!(
            "training {} steps ({} epochs, {} micro-batches per step), precision {:?}{}, device {device:?}",
            total_steps,
            total_epochs.map_or("?".into(), |e| e.to_string()),
            accum,
            cfg.precision,
            if scaler.is_some() { " with loss scaling" } else { "" },
        ));

        let pb = if cfg.progress {
            ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} (ETA {eta}) {msg}",
            )
            .map_err(|e| VlpError::Msg(e.to_string()))?,
        );
        pb.set_position(c.step);

        let finished =
            |c: &Counters| c.step >= total_steps || cfg.epochs.is_some_and(|e| c.epoch >= e);
        let mut history = Vec::new();
        let mut evals = Vec::new();
        let mut window = Window::default();
        let mut window_start = Instant::now();
        let mut halted = false;
        let mut last_eval_step = None;
        let mut last_saved_step = last_ckpt.as_ref().map(|_| c.step);
        let n = params.len();

        'steps: while !finished(&c) {
            if self.halt_at == Some(c.step) {
                halted = true;
                break;
            }
            let seed = step_seed(cfg.seed, c.step);
            tch::manual_seed(seed as i64);
            let gi = mixer.sample(cfg.seed, c.step);
            let (group, objectives): (Option<&str>, &[String]) = match gi {
                Some(i) => (Some(mixer.groups[i].0.as_str()), &mixer.groups[i].1),
                None => (None, &all_objectives),
            };
            // Steps start at multiples of `accum` micro-batches within an epoch.
            let mut lr = schedule.lr(c.step, c.epoch, c.iter_in_epoch / accum);
            let mut acc: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
            let mut m = 0usize;
            let mut step_loss = 0.0;
            let mut step_terms: BTreeMap<String, f64> = BTreeMap::new();
            let mut step_metrics: BTreeMap<String, f64> = BTreeMap::new();
            let mut epoch_done = false;
            while m < cfg.grad_accum {
                let batch = match data.next_batch(group)? {
                    Some(b) => b,
                    None if m > 0 => {
                        epoch_done = true;
                        break;
                    }
                    None => {
                        if c.iter_in_epoch == 0 {
                            return Err(VlpError::Msg(format!(
                                "the data source yielded no batch in epoch {}",
                                c.epoch
                            )));
                        }
                        // The epoch ended at a step boundary (a source of unknown length).
                        self.end_epoch(
                            model,
                            data,
                            &mut evaluator,
                            &mut c,
                            &mut evals,
                            &mut last_eval_step,
                            &finished,
                        )?;
                        if finished(&c) {
                            break 'steps;
                        }
                        // No micro-batch of this step has run yet: it is step 0 of the new epoch.
                        lr = schedule.lr(c.step, c.epoch, 0);
                        continue;
                    }
                };
                let ctx = StepContext {
                    step: c.step,
                    micro_step: m,
                    grad_accum: cfg.grad_accum,
                    epoch: c.epoch,
                    iter_in_epoch: c.iter_in_epoch,
                    iters_per_epoch: bpe,
                    lr,
                    train: true,
                    group,
                    objectives,
                    weights: &cfg.objectives,
                    seed,
                    device,
                    precision: cfg.precision,
                };
                let terms =
                    amp::autocast(cfg.precision, device, || model.train_step(&batch, &ctx))?;
                c.iter_in_epoch += 1;
                let ns = data.samples_in(&batch) as u64;
                c.samples_seen += ns;
                window.samples += ns;
                drop(batch);
                let tv = combine(&terms, &cfg.objectives, c.step)?;
                if !tv.total_value.is_finite() && scaler.is_none() {
                    pb.abandon();
                    return Err(self.nonfinite_error(
                        "loss",
                        &c,
                        m,
                        &tv.terms,
                        tv.total_value,
                        &last_ckpt,
                    ));
                }
                step_loss += tv.total_value;
                for (name, v, _) in &tv.terms {
                    *step_terms.entry(name.clone()).or_default() += v;
                }
                for (name, v) in terms.metrics() {
                    *step_metrics.entry(name.clone()).or_default() += v;
                }
                let root = match &scaler {
                    Some(s) => s.scale_loss(&tv.total),
                    None => tv.total.shallow_clone(),
                };
                drop(terms);
                let grads = Tensor::f_run_backward(&[&root], &params, false, false)?;
                for (a, g) in acc.iter_mut().zip(grads) {
                    if !g.defined() {
                        continue;
                    }
                    match a {
                        Some(a) => {
                            let _ = a.f_add_(&g)?;
                        }
                        None => *a = Some(g),
                    }
                }
                m += 1;
                if bpe.is_some_and(|b| c.iter_in_epoch >= b) {
                    epoch_done = true;
                    break;
                }
            }
            if m == 0 {
                break;
            }

            // Unscale / average, clip, step.
            let mut found_inf = None;
            if let Some(s) = &scaler {
                found_inf = Some(s.unscale_(&mut acc, m as f64)?);
            } else if m > 1 {
                for g in acc.iter_mut().flatten() {
                    let _ = g.f_div_scalar_(m as f64)?;
                }
            }
            let skip = found_inf.as_ref().is_some_and(GradScaler::found_inf);
            if !skip && acc.iter().all(Option::is_none) {
                return Err(VlpError::Msg(format!(
                    "step {}: no parameter received a gradient",
                    c.step + 1
                )));
            }
            let log_now = (c.step + 1) % cfg.log_every == 0;
            let gnorm = if skip {
                None
            } else if let Some(max) = cfg.clip_grad_norm {
                Some(clip_grad_norm(&mut acc, max)?)
            } else if log_now {
                Some(grad_norm(&acc)?)
            } else {
                None
            };
            if let Some(g) = gnorm.filter(|g| !g.is_finite()) {
                let terms: Vec<(String, f64, f64)> = step_terms
                    .iter()
                    .map(|(k, v)| (k.clone(), v / m as f64, f64::NAN))
                    .collect();
                pb.abandon();
                let what = format!("gradient norm ({})", fmt_value(g));
                return Err(self.nonfinite_error(
                    &what,
                    &c,
                    m - 1,
                    &terms,
                    step_loss / m as f64,
                    &last_ckpt,
                ));
            }
            if !skip {
                opt.step(lr, &acc)?;
            }
            drop(acc);
            if let (Some(s), Some(fi)) = (&mut scaler, &found_inf) {
                s.update(fi)?;
            }
            if skip {
                c.skipped_steps += 1;
                c.consecutive_skips += 1;
                window.skipped += 1;
                let max = cfg.scaler.max_consecutive_skips;
                if max > 0 && c.consecutive_skips >= max {
                    let terms: Vec<(String, f64, f64)> = step_terms
                        .iter()
                        .map(|(k, v)| (k.clone(), v / m as f64, f64::NAN))
                        .collect();
                    pb.abandon();
                    let what = format!(
                        "gradients for {} consecutive steps (loss scale now {})",
                        c.consecutive_skips,
                        scaler.as_ref().map_or(0.0, GradScaler::scale)
                    );
                    return Err(self.nonfinite_error(
                        &what,
                        &c,
                        m - 1,
                        &terms,
                        step_loss / m as f64,
                        &last_ckpt,
                    ));
                }
            } else {
                c.consecutive_skips = 0;
                let ctx = StepContext {
                    step: c.step,
                    micro_step: m - 1,
                    grad_accum: cfg.grad_accum,
                    epoch: c.epoch,
                    iter_in_epoch: c.iter_in_epoch.saturating_sub(1),
                    iters_per_epoch: bpe,
                    lr,
                    train: true,
                    group,
                    objectives,
                    weights: &cfg.objectives,
                    seed,
                    device,
                    precision: cfg.precision,
                };
                model.after_optimizer_step(&ctx)?;
            }
            c.step += 1;
            last_lr = lr;
            pb.set_position(c.step);

            // Window sums.
            let mf = m as f64;
            window.steps += 1;
            window.loss += step_loss / mf;
            for (k, v) in step_terms {
                *window.terms.entry(k).or_default() += v / mf;
            }
            for (k, v) in step_metrics {
                *window.metrics.entry(k).or_default() += v / mf;
            }
            if let Some(g) = group {
                *window.groups.entry(g.to_string()).or_default() += 1;
            }
            if gnorm.is_some() {
                window.grad_norm = gnorm;
            }
            let step_epoch = c.epoch;
            if epoch_done {
                self.end_epoch(
                    model,
                    data,
                    &mut evaluator,
                    &mut c,
                    &mut evals,
                    &mut last_eval_step,
                    &finished,
                )?;
            }
            let done = finished(&c);

            if log_now || done {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let w = std::mem::take(&mut window);
                let k = w.steps.max(1) as f64;
                let rec = StepRecord {
                    step: c.step,
                    epoch: step_epoch,
                    lr,
                    loss: w.loss / k,
                    terms: w.terms.into_iter().map(|(n, v)| (n, v / k)).collect(),
                    metrics: w.metrics.into_iter().map(|(n, v)| (n, v / k)).collect(),
                    grad_norm: w.grad_norm,
                    scale: scaler.as_ref().map(GradScaler::scale),
                    skipped: w.skipped,
                    groups: w.groups,
                    samples_per_s: w.samples as f64 / secs,
                    samples: c.samples_seen,
                    time: unix_now(),
                };
                window_start = Instant::now();
                let mut json =
                    serde_json::to_value(&rec).map_err(|e| VlpError::Msg(e.to_string()))?;
                json["type"] = "train".into();
                self.run.append_metrics(&json)?;
                let terms: Vec<String> = rec
                    .terms
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                let mut line = format!(
                    "ep {} | loss {:.4} | {} | lr {:.3e} | {:.1} samples/s",
                    rec.epoch,
                    rec.loss,
                    terms.join(" "),
                    rec.lr,
                    rec.samples_per_s
                );
                if let Some(g) = rec.grad_norm {
                    line.push_str(&format!(" | grad {g:.3}"));
                }
                if let Some(s) = rec.scale {
                    line.push_str(&format!(" | scale {s} skipped {}", rec.skipped));
                }
                pb.set_message(line.clone());
                self.run
                    .log(&format!("step {}/{} {line}", c.step, total_steps));
                self.plots.add_train(&rec);
                history.push(rec);
            }
            if let Some(every) = cfg.eval_every {
                if c.step % every == 0 && !done && last_eval_step != Some(c.step) {
                    let ctx = EvalContext {
                        step: c.step,
                        epoch: c.epoch,
                        end_of_epoch: false,
                        final_eval: false,
                    };
                    if self.evaluate(model, &mut evaluator, ctx, &mut evals)? {
                        last_eval_step = Some(c.step);
                    }
                }
            }
            if c.step % cfg.plot_every == 0 && !done {
                self.redraw_plots()?;
            }
            if cfg.ckpt_every > 0 && c.step % cfg.ckpt_every == 0 && !done {
                last_ckpt = Some(self.save(model, &opt, &scaler, data, &c, &schedule, last_lr)?);
                last_saved_step = Some(c.step);
            }
        }

        if !halted {
            if last_eval_step != Some(c.step) {
                let ctx = EvalContext {
                    step: c.step,
                    epoch: c.epoch,
                    end_of_epoch: false,
                    final_eval: true,
                };
                self.evaluate(model, &mut evaluator, ctx, &mut evals)?;
            }
            if last_saved_step != Some(c.step) {
                last_ckpt = Some(self.save(model, &opt, &scaler, data, &c, &schedule, last_lr)?);
            }
            self.redraw_plots()?;
            self.run.log(&format!(
                "done: {} steps, {} epochs, {} samples{}",
                c.step,
                c.epoch,
                c.samples_seen,
                if c.skipped_steps > 0 {
                    format!(", {} steps skipped by the loss scaler", c.skipped_steps)
                } else {
                    String::new()
                }
            ));
            pb.finish_and_clear();
        } else {
            self.run.log(&format!("halted at step {}", c.step));
            pb.abandon();
        }
        Ok(TrainOutcome {
            step: c.step,
            epoch: c.epoch,
            history,
            evals,
            last_checkpoint: last_ckpt,
            halted,
            skipped_steps: c.skipped_steps,
            run_dir: self.run.root().to_path_buf(),
        })
    }

    /// The end of an epoch: the per-epoch evaluation (when `eval_every` is unset), then the next
    /// epoch starts (unless the run is finished).
    #[allow(clippy::too_many_arguments)]
    fn end_epoch<M, D>(
        &mut self,
        model: &mut M,
        data: &mut D,
        evaluator: &mut Option<&mut dyn Evaluator<M>>,
        c: &mut Counters,
        evals: &mut Vec<EvalRecord>,
        last_eval_step: &mut Option<u64>,
        finished: &dyn Fn(&Counters) -> bool,
    ) -> Result<()>
    where
        M: Trainable,
        D: DataSource<Batch = M::Batch>,
    {
        self.run
            .log(&format!("epoch {} done at step {}", c.epoch, c.step));
        if self.cfg.eval_every.is_none() {
            let ctx = EvalContext {
                step: c.step,
                epoch: c.epoch,
                end_of_epoch: true,
                final_eval: false,
            };
            if self.evaluate(model, evaluator, ctx, evals)? {
                *last_eval_step = Some(c.step);
            }
        }
        c.epoch += 1;
        c.iter_in_epoch = 0;
        if !finished(c) {
            data.start_epoch(c.epoch)?;
        }
        Ok(())
    }
}

/// Reads the `"type": "train"` records of a run's `metrics.jsonl`.
pub fn read_train_records(path: &Path) -> Result<Vec<StepRecord>> {
    super::run_dir::read_metrics(path)?
        .into_iter()
        .filter(|r| r.get("type").and_then(|t| t.as_str()) == Some("train"))
        .map(|r| {
            serde_json::from_value(r)
                .map_err(|e| VlpError::Msg(format!("{}: bad train record: {e}", path.display())))
        })
        .collect()
}
