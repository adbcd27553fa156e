//! Learning-rate schedules: linear warmup, then cosine or linear decay to `min_lr` (or constant),
//! stepped per optimizer step (BEiT-3, VLMo) or per epoch (BLIP); and ALBEF's own stepping of
//! timm's `CosineLRScheduler` (`style: albef`).
//!
//! **`style: plain`** (default). With `t` the step (or epoch) index, `W` the warmup length and `T`
//! the total:
//!
//! - warmup, `t < W`: `warmup_lr + (base_lr - warmup_lr) * t / W`;
//! - decay, `p = (t - W) / (T - W)` clamped to [0, 1]:
//!   - cosine: `min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`,
//!   - linear: `min_lr + (base_lr - min_lr) * (1 - p)`,
//!   - constant: `base_lr`.
//!
//! This is HF `get_cosine_schedule_with_warmup` with a floor.
//!
//! **`style: albef`** (`kind: cosine`, `per: epoch`) reproduces salesforce/ALBEF exactly
//! (`scheduler/cosine_lr.py`, `scheduler_factory.py`, and the stepping in `Pretrain.py`,
//! `Pretrain_nlvr.py`, `VQA.py`, `Retrieval.py`, `NLVR.py`, `VE.py`). timm's
//! `CosineLRScheduler` value at `t` (`W` = `warmup` = ALBEF's `warmup_epochs`, `T` = `total` =
//! `t_initial` = the epochs, `cycle_limit` 1, `t_mul` 1, no noise) is
//!
//! - `t < W`: `warmup_lr + t * ((base_lr - warmup_lr) / W)`;
//! - else `u = t - W` with `warmup_prefix` (ALBEF's vendored default, `true`) or `u = t` without
//!   (timm 0.4.12's default); `u < T`: `min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * u / T))`;
//!   `u >= T`: `min_lr` (`decay_rate` only scales later cycles, which `cycle_limit` 1 forbids).
//!
//! ALBEF evaluates it at `t = min((k - 1) / step_size, W)` for optimizer step `k >= 1` of epoch 0
//! (its in-epoch warmup: `scheduler.step(i // step_size)` after every `step_size`-th iteration up
//! to `W * step_size`, `step_size` = 100; step 0 runs at the scheduler's initial value,
//! `warmup_lr`, or `base_lr` without warmup) and at `t = epoch + W` for every step of a later
//! epoch. The lr is thus a pure function of (epoch, step within the epoch); the fixture
//! `tests/data/train/albef_schedule_case.json` (`scripts/fixtures/make_albef_schedule_case.py`,
//! timm 0.4.12, cross-checked against ALBEF's own scheduler) pins it per iteration.
use serde::{Deserialize, Serialize};
use vlp_core::{Result, VlpError};

/// The decay after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half-cosine from `base_lr` to `min_lr`.
    #[default]
    Cosine,
    /// Straight line from `base_lr` to `min_lr`.
    Linear,
    /// `base_lr` throughout (after the warmup, if any).
    Constant,
}

/// What the schedule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulePer {
    /// Optimizer steps: the lr changes every step.
    #[default]
    Step,
    /// Epochs: the lr is constant within an epoch.
    Epoch,
}

/// How the schedule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleStyle {
    /// Warmup then decay over the rest of `total` (see the module doc).
    #[default]
    Plain,
    /// ALBEF: timm's per-epoch `CosineLRScheduler` with ALBEF's in-epoch warmup (module doc).
    Albef,
}

/// ALBEF's stepping parameters, resolved (`style: albef`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlbefStepping {
    /// Optimizer steps between two warmup updates in epoch 0 (ALBEF's `step_size`, 100).
    pub step_size: u64,
    /// timm's `warmup_prefix`: the cosine starts after the warmup (ALBEF: `true`).
    pub warmup_prefix: bool,
}

impl Default for AlbefStepping {
    fn default() -> Self {
        Self {
            step_size: 100,
            warmup_prefix: true,
        }
    }
}

/// The `schedule` section of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `cosine` (default), `linear` or `constant`.
    pub kind: ScheduleKind,
    /// `step` (default) or `epoch`: the unit of `warmup` and `total`.
    pub per: SchedulePer,
    /// Warmup length in steps or epochs (0: none).
    pub warmup: u64,
    /// Learning rate at the start of the warmup (timm's `warmup_lr_init`; 0 by default).
    pub warmup_lr: f64,
    /// Floor of the decay (0 by default).
    pub min_lr: f64,
    /// Length of the schedule in steps or epochs; default: the run's total steps (or epochs).
    pub total: Option<u64>,
    /// `plain` (default) or `albef` (ALBEF's timm cosine with its in-epoch warmup; needs
    /// `kind: cosine` and `per: epoch`; `warmup` is then ALBEF's `warmup_epochs`).
    pub style: ScheduleStyle,
    /// `style: albef` only: optimizer steps per warmup update in epoch 0 (default 100, ALBEF's
    /// `step_size`).
    pub step_size: Option<u64>,
    /// `style: albef` only: timm's `warmup_prefix` (default `true`, ALBEF's vendored
    /// `cosine_lr.py`; `false` is timm 0.4.12's default).
    pub warmup_prefix: Option<bool>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            per: SchedulePer::Step,
            warmup: 0,
            warmup_lr: 0.0,
            min_lr: 0.0,
            total: None,
            style: ScheduleStyle::Plain,
            step_size: None,
            warmup_prefix: None,
        }
    }
}

/// A resolved schedule: a pure function of the step, the epoch and the step within the epoch, so
/// its state is just its parameters (saved in checkpoints for reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The decay.
    pub kind: ScheduleKind,
    /// What `t` counts.
    pub per: SchedulePer,
    /// Warmup length.
    pub warmup: u64,
    /// Learning rate at `t = 0` of the warmup.
    pub warmup_lr: f64,
    /// Total length.
    pub total: u64,
    /// Floor of the decay.
    pub min_lr: f64,
    /// Peak learning rate (the optimizer's `lr`).
    pub base_lr: f64,
    /// `Some` for `style: albef` (absent in checkpoints of plain schedules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub albef: Option<AlbefStepping>,
}

impl LrSchedule {
    /// Resolves `cfg` for a run of `total_steps` optimizer steps over `total_epochs` epochs.
    pub fn from_config(
        cfg: &ScheduleConfig,
        base_lr: f64,
        total_steps: u64,
        total_epochs: Option<u64>,
    ) -> Result<Self> {
        let total = match (cfg.total, cfg.per) {
            (Some(t), _) => t,
            (None, SchedulePer::Step) => total_steps,
            (None, SchedulePer::Epoch) => total_epochs.ok_or_else(|| {
                VlpError::Msg(
                    "schedule.per = epoch needs `epochs` (or schedule.total) in the config".into(),
                )
            })?,
        };
        let albef = match cfg.style {
            ScheduleStyle::Plain => {
                if cfg.step_size.is_some() || cfg.warmup_prefix.is_some() {
                    return Err(VlpError::Msg(
                        "schedule.step_size and schedule.warmup_prefix need schedule.style = albef"
                            .into(),
                    ));
                }
                None
            }
            ScheduleStyle::Albef => {
                if cfg.kind != ScheduleKind::Cosine || cfg.per != SchedulePer::Epoch {
                    return Err(VlpError::Msg(format!(
                        "schedule.style = albef needs kind: cosine and per: epoch (got kind: {:?}, per: {:?})",
                        cfg.kind, cfg.per
                    )));
                }
                let d = AlbefStepping::default();
                Some(AlbefStepping {
                    step_size: cfg.step_size.unwrap_or(d.step_size),
                    warmup_prefix: cfg.warmup_prefix.unwrap_or(d.warmup_prefix),
                })
            }
        };
        let s = LrSchedule {
            kind: cfg.kind,
            per: cfg.per,
            warmup: cfg.warmup,
            warmup_lr: cfg.warmup_lr,
            total,
            min_lr: cfg.min_lr,
            base_lr,
            albef,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the values (positive lr, `min_lr <= base_lr`, finite numbers).
    pub fn validate(&self) -> Result<()> {
        let finite = [self.base_lr, self.min_lr, self.warmup_lr]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0);
        if !finite || self.base_lr <= 0.0 {
            return Err(VlpError::Msg(format!(
                "schedule: learning rates must be finite, >= 0 and base_lr > 0 (got {self:?})"
            )));
        }
        if let Some(a) = &self.albef {
            if a.step_size == 0 || self.total == 0 {
                return Err(VlpError::Msg(format!(
                    "schedule (style albef): step_size and total must be > 0 (got {} and {})",
                    a.step_size, self.total
                )));
            }
        }
        if self.min_lr > self.base_lr {
            return Err(VlpError::Msg(format!(
                "schedule.min_lr ({}) exceeds the base lr ({})",
                self.min_lr, self.base_lr
            )));
        }
        Ok(())
    }

    /// The learning rate at index `t` (a step or an epoch, per [`LrSchedule::per`]).
    pub fn lr_at(&self, t: u64) -> f64 {
        if t < self.warmup {
            return self.warmup_lr
                + (self.base_lr - self.warmup_lr) * t as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup);
        let p = if span == 0 {
            1.0
        } else {
            ((t - self.warmup) as f64 / span as f64).clamp(0.0, 1.0)
        };
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Linear => self.min_lr + (self.base_lr - self.min_lr) * (1.0 - p),
            ScheduleKind::Cosine => {
                self.min_lr
                    + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }

    /// timm `CosineLRScheduler._get_lr(t)` with `t_initial = total`, `warmup_t = warmup`,
    /// `cycle_limit` 1, `t_mul` 1 (the operations in timm's order, so the values are bitwise
    /// Python's).
    pub fn timm_cosine_at(&self, t: u64, warmup_prefix: bool) -> f64 {
        if t < self.warmup {
            let s = (self.base_lr - self.warmup_lr) / self.warmup as f64;
            return self.warmup_lr + t as f64 * s;
        }
        let t = if warmup_prefix { t - self.warmup } else { t };
        // (`total` is > 0 for a validated albef schedule.)
        let i = t.checked_div(self.total).unwrap_or(1);
        if i >= 1 {
            return self.min_lr;
        }
        let t_curr = t - self.total * i;
        self.min_lr
            + 0.5
                * (self.base_lr - self.min_lr)
                * (1.0 + (std::f64::consts::PI * t_curr as f64 / self.total as f64).cos())
    }

    /// The learning rate of optimizer step `step` (counted from the start of the run), the
    /// `step_in_epoch`-th step of epoch `epoch` (both 0-based).
    pub fn lr(&self, step: u64, epoch: u64, step_in_epoch: u64) -> f64 {
        if let Some(a) = &self.albef {
            let t = if epoch > 0 {
                epoch + self.warmup
            } else if step_in_epoch == 0 {
                // The scheduler's initial value: `warmup_lr_init`, or the base lr without warmup.
                if self.warmup > 0 {
                    return self.warmup_lr;
                }
                return self.base_lr;
            } else {
                ((step_in_epoch - 1) / a.step_size).min(self.warmup)
            };
            return self.timm_cosine_at(t, a.warmup_prefix);
        }
        match self.per {
            SchedulePer::Step => self.lr_at(step),
            SchedulePer::Epoch => self.lr_at(epoch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn cosine_per_step_hand_computed() {
        let cfg = ScheduleConfig {
            warmup: 4,
            min_lr: 1e-5,
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, 1e-4, 14, None).unwrap();
        // Warmup from 0: t/4 of 1e-4.
        close(s.lr_at(0), 0.0);
        close(s.lr_at(1), 2.5e-5);
        close(s.lr_at(3), 7.5e-5);
        // Decay over 10 steps: p = (t - 4) / 10.
        close(s.lr_at(4), 1e-4);
        // p = 0.5: min + (base - min) / 2 = 5.5e-5.
        close(s.lr_at(9), 5.5e-5);
        // p = 0.2: cos(0.2 pi) = 0.8090169943749475.
        close(
            s.lr_at(6),
            1e-5 + 9e-5 * 0.5 * (1.0 + 0.809_016_994_374_947_5),
        );
        close(s.lr_at(14), 1e-5);
        close(s.lr_at(100), 1e-5);
        close(s.lr(9, 0, 9), 5.5e-5);
    }

    #[test]
    fn linear_constant_and_per_epoch() {
        let cfg = ScheduleConfig {
            kind: ScheduleKind::Linear,
            warmup: 2,
            warmup_lr: 1e-6,
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, 1e-3, 12, None).unwrap();
        close(s.lr_at(0), 1e-6);
        close(s.lr_at(1), 1e-6 + (1e-3 - 1e-6) / 2.0);
        close(s.lr_at(2), 1e-3);
        close(s.lr_at(7), 5e-4);
        close(s.lr_at(12), 0.0);

        let cfg = ScheduleConfig {
            kind: ScheduleKind::Constant,
            warmup: 3,
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, 2e-4, 100, None).unwrap();
        close(s.lr_at(1), 2e-4 / 3.0);
        close(s.lr_at(3), 2e-4);
        close(s.lr_at(99), 2e-4);

        // BLIP: cosine per epoch over 6 epochs, no warmup, floor 0.
        let cfg = ScheduleConfig {
            per: SchedulePer::Epoch,
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, 2e-5, 600, Some(6)).unwrap();
        assert_eq!(s.total, 6);
        close(s.lr(0, 0, 0), 2e-5);
        close(
            s.lr(250, 2, 50),
            2e-5 * 0.5 * (1.0 + (std::f64::consts::PI / 3.0).cos()),
        );
        close(s.lr(299, 2, 99), s.lr(200, 2, 0));
        close(s.lr(350, 3, 50), 1e-5);
        assert!(LrSchedule::from_config(&cfg, 2e-5, 600, None).is_err());
        let bad = ScheduleConfig {
            min_lr: 1.0,
            ..Default::default()
        };
        assert!(LrSchedule::from_config(&bad, 1e-4, 10, None).is_err());
    }

    #[test]
    fn albef_style_hand_computed() {
        // VQA-like: lr 2e-5, 8 epochs, warmup 4 epochs from 1e-5, floor 1e-6, step_size 100.
        let cfg = ScheduleConfig {
            per: SchedulePer::Epoch,
            style: ScheduleStyle::Albef,
            warmup: 4,
            warmup_lr: 1e-5,
            min_lr: 1e-6,
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, 2e-5, 10_000, Some(8)).unwrap();
        assert_eq!(
            s.albef,
            Some(AlbefStepping {
                step_size: 100,
                warmup_prefix: true
            })
        );
        // Epoch 0: warmup_lr for steps 0..=100, then +2.5e-6 per 100 steps, base after 400.
        close(s.lr(0, 0, 0), 1e-5);
        close(s.lr(100, 0, 100), 1e-5);
        close(s.lr(101, 0, 101), 1.25e-5);
        close(s.lr(301, 0, 301), 1.75e-5);
        close(s.lr(400, 0, 400), 1.75e-5);
        close(s.lr(401, 0, 401), 2e-5);
        close(s.lr(5000, 0, 5000), 2e-5);
        // Epoch e > 0: t = e + 4, cosine from the end of the warmup: u = e over 8 epochs.
        let cos = |u: f64| 1e-6 + 0.5 * 19e-6 * (1.0 + (std::f64::consts::PI * u / 8.0).cos());
        close(s.lr(7000, 1, 0), cos(1.0));
        close(s.lr(7099, 1, 99), cos(1.0));
        close(s.lr(9000, 4, 3), 1.05e-5);
        close(s.lr(9999, 7, 999), cos(7.0));
        // timm's default (no prefix): u = e + 4; u >= 8 gives min_lr.
        let s = LrSchedule::from_config(
            &ScheduleConfig {
                warmup_prefix: Some(false),
                ..cfg.clone()
            },
            2e-5,
            10_000,
            Some(8),
        )
        .unwrap();
        close(s.lr(401, 0, 401), cos(4.0));
        close(s.lr(7000, 1, 0), cos(5.0));
        close(s.lr(9000, 4, 0), 1e-6);
        // No warmup: step 0 is the base lr; the cosine at t = 0 after it.
        let s = LrSchedule::from_config(
            &ScheduleConfig {
                warmup: 0,
                ..cfg.clone()
            },
            2e-5,
            10_000,
            Some(8),
        )
        .unwrap();
        assert_eq!(s.lr(0, 0, 0), 2e-5);
        close(s.lr(1, 0, 1), 2e-5);
        // Errors: the albef style needs cosine per epoch; its fields need the style.
        for bad in [
            ScheduleConfig {
                per: SchedulePer::Step,
                ..cfg.clone()
            },
            ScheduleConfig {
                kind: ScheduleKind::Linear,
                ..cfg.clone()
            },
            ScheduleConfig {
                step_size: Some(0),
                ..cfg.clone()
            },
            ScheduleConfig {
                step_size: Some(100),
                ..Default::default()
            },
        ] {
            assert!(
                LrSchedule::from_config(&bad, 2e-5, 100, Some(8)).is_err(),
                "{bad:?}"
            );
        }
        // A plain schedule serialises as before (no `albef` key): old checkpoints compare equal.
        let plain = LrSchedule::from_config(&ScheduleConfig::default(), 1e-4, 10, None).unwrap();
        let v = serde_json::to_value(&plain).unwrap();
        assert!(v.get("albef").is_none());
        assert_eq!(serde_json::from_value::<LrSchedule>(v).unwrap(), plain);
    }
}
