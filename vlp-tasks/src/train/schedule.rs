//! Learning-rate schedules: linear warmup, then cosine or linear decay to `min_lr` (or constant),
//! stepped per optimizer step (BEiT-3, VLMo) or per epoch (ALBEF, BLIP).
//!
//! With `t` the step (or epoch) index, `W` the warmup length and `T` the total:
//!
//! - warmup, `t < W`: `warmup_lr + (base_lr - warmup_lr) * t / W`;
//! - decay, `p = (t - W) / (T - W)` clamped to [0, 1]:
//!   - cosine: `min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`,
//!   - linear: `min_lr + (base_lr - min_lr) * (1 - p)`,
//!   - constant: `base_lr`.
//!
//! This is HF `get_cosine_schedule_with_warmup` / timm `CosineLRScheduler(warmup_prefix=True)`
//! with a floor. (timm without `warmup_prefix`, ALBEF's setting, measures the cosine from `t = 0`
//! rather than from the end of the warmup; with ALBEF's per-epoch warmup of 1-20 epochs of
//! 30 this shifts the curve slightly.)
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
        }
    }
}

/// A resolved schedule: a pure function of the step (or epoch) index, so its state is just its
/// parameters (saved in checkpoints for reference).
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
        let s = LrSchedule {
            kind: cfg.kind,
            per: cfg.per,
            warmup: cfg.warmup,
            warmup_lr: cfg.warmup_lr,
            total,
            min_lr: cfg.min_lr,
            base_lr,
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

    /// The learning rate of optimizer step `step` taken during epoch `epoch`.
    pub fn lr(&self, step: u64, epoch: u64) -> f64 {
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
        close(s.lr(9, 0), 5.5e-5);
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
        close(s.lr(0, 0), 2e-5);
        close(
            s.lr(250, 2),
            2e-5 * 0.5 * (1.0 + (std::f64::consts::PI / 3.0).cos()),
        );
        close(s.lr(299, 2), s.lr(200, 2));
        close(s.lr(350, 3), 1e-5);
        assert!(LrSchedule::from_config(&cfg, 2e-5, 600, None).is_err());
        let bad = ScheduleConfig {
            min_lr: 1.0,
            ..Default::default()
        };
        assert!(LrSchedule::from_config(&bad, 1e-4, 10, None).is_err());
    }
}
