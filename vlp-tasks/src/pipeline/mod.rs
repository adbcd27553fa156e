//! The experiment pipeline: one config file per experiment, one command, a run directory.
//!
//! - [`config`]: the [`ExperimentConfig`] (`model`, `data`, `train`, `eval` sections; unknown
//!   fields are errors naming the field, file and line; `--set` overrides).
//! - [`albef`]: ALBEF presets (`base`, `small`, `tiny`), data sets and batches of every task,
//!   the [`Trainable`](crate::train::Trainable) implementation of the five variants and their
//!   evaluation with the real metrics.
//! - [`blip`]: BLIP presets, BLIP's tokenisation of every task (`[ENC]`/`[DEC]`, the captioning
//!   prompt), the [`Trainable`](crate::train::Trainable) implementation of its five trainable
//!   variants (pretrain, retrieval, captioning, vqa, nlvr2) and their evaluation.
//! - [`run`]: `vlp pretrain|finetune|eval` — build, load `model.init`, train with the
//!   [`Trainer`](crate::train::Trainer), evaluate, write `experiment.yaml` and `eval.json`.
//!
//! - [`ablate`]: `vlp ablate`, one pre-training per objective mix, fine-tuned and tabulated.
//! - [`bench`]: `vlp bench step`, the time of one training step on synthetic batches.
//!
//! `docs/experiments.md` describes the config format, the commands and the run directory.
pub mod ablate;
pub mod albef;
pub mod bench;
pub mod blip;
pub mod config;
pub mod run;

pub use config::{
    DataSection, EvalSection, ExperimentConfig, InitMode, ModelSection, Preset, Task,
};
pub use run::{run, Command, RunOptions, RunSummary, EVAL_FILE, EXPERIMENT_FILE};
