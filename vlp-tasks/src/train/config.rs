//! The training configuration: [`TrainConfig`], read from YAML/JSON with
//! `vlp_core::config::load_config` (unknown fields are errors naming the field path, line and
//! column). Every field has a default except what a run cannot guess (`epochs` or `max_steps`).
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vlp_core::{Result, VlpError};

pub use super::amp::{Precision, ScalerConfig};
pub use super::optim::OptimizerConfig;
pub use super::schedule::ScheduleConfig;

/// One group of objectives of a mixed run (UNITER-style task sampling): each optimizer step picks
/// one group with probability proportional to its `ratio` (seeded by the run's seed and the step
/// number, so resumes pick the same groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixGroup {
    /// Group name (passed to the data source and the model in the step context).
    pub name: String,
    /// The objectives the model computes for this group; default `[name]`.
    #[serde(default)]
    pub objectives: Vec<String>,
    /// Relative sampling weight (> 0).
    pub ratio: f64,
}

impl MixGroup {
    /// The group's objectives (`[name]` when none are listed).
    pub fn objective_names(&self) -> Vec<String> {
        if self.objectives.is_empty() {
            vec![self.name.clone()]
        } else {
            self.objectives.clone()
        }
    }
}

/// A training run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: the default run directory is `runs/<name>-<YYYYmmdd-HHMMSS>` (UTC).
    #[serde(default = "default_name")]
    pub name: String,
    /// AdamW settings, parameter groups, freeze list.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Number of epochs (needs a data source that knows its length, unless `max_steps` is set).
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Number of optimizer steps; with `epochs` too, the run stops at whichever comes first.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Samples per micro-batch (for the data loader that reads this config; the trainer counts
    /// what the data source reports).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients are averaged over them). Default 1.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip gradients to this global L2 norm (`clip_grad_norm_`); none by default.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// `fp32` (default), `bf16` or `fp16` (autocast on CUDA; fp32 on CPU).
    #[serde(default)]
    pub precision: Precision,
    /// The fp16 loss scaler.
    #[serde(default)]
    pub scaler: ScalerConfig,
    /// Seed of everything random: torch's generator is re-seeded from (seed, step) at every
    /// step, and the mix sampler draws from (seed, step). Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Log (metrics.jsonl, train.log, progress bar) every N steps, averaging over them. Default 50.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Checkpoint every N steps (0: only at the end). A checkpoint is always written at the end.
    /// Default 1000.
    #[serde(default = "default_ckpt_every")]
    pub ckpt_every: u64,
    /// Keep only the last N checkpoints (none: keep all).
    #[serde(default)]
    pub keep_checkpoints: Option<usize>,
    /// Evaluate every N steps; none (default): at the end of every epoch and of the run.
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Redraw the PNG plots every N steps (and at the end). Default 500.
    #[serde(default = "default_plot_every")]
    pub plot_every: u64,
    /// Show the progress bar (on a terminal). Default true.
    #[serde(default = "yes")]
    pub progress: bool,
    /// Weight of each objective (loss term name → weight). Empty: every term the model returns
    /// counts with its own weight; otherwise a returned term missing here is an error, and a
    /// weight of 0 logs the term without training on it.
    #[serde(default)]
    pub objectives: BTreeMap<String, f64>,
    /// Objective groups sampled per step by ratio (UNITER); empty: every step trains all.
    #[serde(default)]
    pub mix: Vec<MixGroup>,
}

fn default_name() -> String {
    "train".into()
}
fn default_batch_size() -> usize {
    32
}
fn one() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_log_every() -> u64 {
    50
}
fn default_ckpt_every() -> u64 {
    1000
}
fn default_plot_every() -> u64 {
    500
}
fn yes() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        vlp_core::config::from_str_yaml("{}").expect("every field has a default")
    }
}

impl TrainConfig {
    /// Reads a YAML or JSON file (by extension).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let c: Self = vlp_core::config::load_config(path)?;
        c.validate()?;
        Ok(c)
    }

    /// Reads a file and applies `--set a.b=value` overrides.
    pub fn load_with_overrides(path: impl AsRef<Path>, sets: &[&str]) -> Result<Self> {
        let c: Self = vlp_core::config::load_config_with_overrides(path, sets)?;
        c.validate()?;
        Ok(c)
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let c: Self = vlp_core::config::from_str_yaml(text)?;
        c.validate()?;
        Ok(c)
    }

    /// The config as YAML (what the run directory's `config.yaml` holds).
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| VlpError::Msg(format!("serialising config: {e}")))
    }

    /// Checks values serde cannot: ranges, the mix groups against `objectives`, a stop criterion.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VlpError::Msg(format!("train config: {m}")));
        self.optimizer.validate()?;
        if self.epochs.is_none() && self.max_steps.is_none() {
            return err("set `epochs` or `max_steps`".into());
        }
        if self.epochs == Some(0) || self.max_steps == Some(0) {
            return err("`epochs` and `max_steps` must be > 0".into());
        }
        if self.grad_accum == 0 {
            return err("`grad_accum` must be >= 1".into());
        }
        if self.log_every == 0 || self.plot_every == 0 {
            return err("`log_every` and `plot_every` must be >= 1".into());
        }
        if self.eval_every == Some(0) {
            return err("`eval_every` must be >= 1 (or absent: per epoch)".into());
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return err(format!("`clip_grad_norm` must be > 0, got {c}"));
            }
        }
        if self.keep_checkpoints == Some(0) {
            return err("`keep_checkpoints` must be >= 1".into());
        }
        for (k, w) in &self.objectives {
            if !w.is_finite() {
                return err(format!("objectives.{k}: weight {w} is not finite"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.mix {
            if !names.insert(g.name.as_str()) {
                return err(format!("mix: group `{}` appears twice", g.name));
            }
            if !(g.ratio.is_finite() && g.ratio > 0.0) {
                return err(format!(
                    "mix.{}: ratio must be > 0, got {}",
                    g.name, g.ratio
                ));
            }
            if !self.objectives.is_empty() {
                for o in g.objective_names() {
                    if !self.objectives.contains_key(&o) {
                        return err(format!(
                            "mix.{}: objective `{o}` is not in `objectives` ({:?})",
                            g.name,
                            self.objectives.keys().collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
