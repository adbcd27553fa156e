//! The training core: a generic loop for every vlp-rs model.
//!
//! - [`Trainable`]: what a model implements (its `VarStore` and a `train_step` returning named
//!   [`LossTerms`]); [`DataSource`]: where batches come from, with a resumable position.
//! - [`Trainer`]: AdamW ([`optim`]) with parameter groups by path pattern (no weight decay on
//!   biases, norms and 1-D parameters; `lr_mult`; freeze list), the learning-rate [`schedule`]
//!   (warmup + cosine/linear/constant, per step or per epoch), gradient accumulation, clipping by
//!   global norm, mixed precision on CUDA ([`amp`]: bf16/fp16 autocast, fp16 dynamic loss
//!   scaler), objective weights and UNITER-style mixing, non-finite loss detection.
//! - The run directory ([`run_dir`]): resolved `config.yaml`, `metrics.jsonl`, `train.log`, PNG
//!   [`plot`]s, a progress bar, and atomic [`checkpoint`]s from which [`Trainer::resume`]
//!   continues a killed run — bit-identically on CPU with the same seed: torch's generator is
//!   re-seeded from `(seed, step)` at every step, and the data position, optimizer state, scaler
//!   and counters are all saved.
//!
//! ```no_run
//! use vlp_tasks::train::{InMemorySource, LossTerms, StepContext, TrainConfig, Trainable, Trainer};
//! use tch::{nn, nn::Module, Tensor};
//!
//! struct Linear { vs: nn::VarStore, lin: nn::Linear }
//! impl Trainable for Linear {
//!     type Batch = (Tensor, Tensor);
//!     fn var_store(&self) -> &nn::VarStore { &self.vs }
//!     fn train_step(&mut self, (x, y): &(Tensor, Tensor), _ctx: &StepContext<'_>)
//!         -> vlp_core::Result<LossTerms> {
//!         let loss = self.lin.forward(x).mse_loss(y, tch::Reduction::Mean);
//!         Ok(LossTerms::new().with("mse", loss))
//!     }
//! }
//!
//! # fn main() -> vlp_core::Result<()> {
//! let cfg = TrainConfig::from_yaml("name: demo\nmax_steps: 100\noptimizer: {lr: 1.0e-3}\n")?;
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let lin = nn::linear(vs.root() / "lin", 4, 1, Default::default());
//! let mut model = Linear { vs, lin };
//! let batches = vec![(Tensor::randn([8, 4], tch::kind::FLOAT_CPU), Tensor::zeros([8, 1], tch::kind::FLOAT_CPU))];
//! let mut data = InMemorySource::new(batches, 8);
//! let mut trainer = Trainer::new(cfg, None)?;
//! let outcome = trainer.fit(&mut model, &mut data, None)?;
//! println!("{} steps, run in {}", outcome.step, outcome.run_dir.display());
//! # Ok(()) }
//! ```
//!
//! See `docs/training.md` for the configuration reference and the recipes of the official
//! implementations.
pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod optim;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod source;
pub mod trainer;

pub use amp::{GradScaler, Precision, ScalerConfig, ScalerState};
pub use checkpoint::{Checkpointer, LoadedCheckpoint, TrainerState};
pub use config::{MixGroup, TrainConfig};
pub use optim::{pattern_matches, AdamW, OptimizerConfig, ParamInfo};
pub use run_dir::RunDir;
pub use schedule::{
    AlbefStepping, LrSchedule, ScheduleConfig, ScheduleKind, SchedulePer, ScheduleStyle,
};
pub use source::{BatchClone, DataSource, GroupedSource, InMemorySource, LoaderSource};
pub use trainer::{
    clip_grad_norm, grad_norm, step_seed, EvalContext, EvalRecord, Evaluator, LossTerm, LossTerms,
    StepContext, StepRecord, TrainOutcome, Trainable, Trainer,
};
