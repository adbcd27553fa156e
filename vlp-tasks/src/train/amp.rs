//! Mixed precision: autocast (bf16 or fp16, CUDA only) and a dynamic loss scaler for fp16 written
//! on libtorch's AMP ops (`_amp_foreach_non_finite_check_and_unscale_`, `_amp_update_scale_`),
//! with `torch.cuda.amp.GradScaler` semantics.
//!
//! On CPU autocast is off (the forward runs in fp32) and so is the scaler, unless
//! [`ScalerConfig::on_cpu`] asks for it (both AMP ops have CPU kernels: this is how the scaler's
//! logic is tested without a GPU).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use vlp_core::{Result, VlpError};

/// Numeric precision of the forward pass. Parameters, gradients and optimizer state stay fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// bf16 autocast on CUDA (no loss scaling needed); fp32 on CPU.
    Bf16,
    /// fp16 autocast on CUDA with the dynamic loss scaler; fp32 on CPU.
    Fp16,
}

impl Precision {
    /// The autocast dtype, `None` for fp32.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }

    /// Whether this precision actually autocasts on `device` (CUDA only).
    pub fn autocasts_on(self, device: Device) -> bool {
        self != Precision::Fp32 && device.is_cuda()
    }
}

// `at::autocast::{get,set}_autocast_dtype(c10::DeviceType, c10::ScalarType)`: tch exposes the
// autocast switch but not its dtype (CUDA's default is fp16). Both enums are `int8_t`-backed, so
// the C calling convention matches. The symbols live in libtorch_cpu, which torch-sys links.
extern "C" {
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device_type: i8) -> i8;
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
}

/// `c10::DeviceType::CUDA`.
const DEVICE_TYPE_CUDA: i8 = 1;

fn scalar_type_code(kind: Kind) -> Option<i8> {
    match kind {
        Kind::Half => Some(5),
        Kind::Float => Some(6),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

fn kind_of_code(code: i8) -> Option<Kind> {
    match code {
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        15 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// The dtype CUDA autocast casts to (`torch.get_autocast_dtype("cuda")`); `None` for a dtype
/// other than fp16/bf16/fp32. Safe to call without a GPU (it reads a global setting).
pub fn cuda_autocast_dtype() -> Option<Kind> {
    // SAFETY: reads a global of libtorch; the argument is a valid DeviceType.
    kind_of_code(unsafe { at_get_autocast_dtype(DEVICE_TYPE_CUDA) })
}

/// Sets the dtype CUDA autocast casts to (fp16 or bf16). Safe to call without a GPU.
pub fn set_cuda_autocast_dtype(kind: Kind) -> Result<()> {
    let code = scalar_type_code(kind)
        .filter(|_| matches!(kind, Kind::Half | Kind::BFloat16))
        .ok_or_else(|| {
            VlpError::Msg(format!("autocast dtype must be fp16 or bf16, not {kind:?}"))
        })?;
    // SAFETY: writes a global of libtorch; both arguments are valid enum values.
    unsafe { at_set_autocast_dtype(DEVICE_TYPE_CUDA, code) };
    Ok(())
}

/// Runs `f` under autocast for `precision` when `device` is CUDA (bf16 or fp16), restoring the
/// previous autocast dtype afterwards; on CPU, or for fp32, runs `f` as is.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    let Some(kind) = precision.autocast_kind().filter(|_| device.is_cuda()) else {
        return f();
    };
    let prev = cuda_autocast_dtype();
    if set_cuda_autocast_dtype(kind).is_err() {
        return f();
    }
    let out = tch::autocast(true, f);
    if let Some(prev) = prev {
        let _ = set_cuda_autocast_dtype(prev);
    }
    out
}

/// Settings of the dynamic loss scaler (fp16 only), as `torch.amp.GradScaler`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalerConfig {
    /// Initial scale (2^16).
    pub init_scale: f64,
    /// Factor the scale grows by after `growth_interval` consecutive good steps (2).
    pub growth_factor: f64,
    /// Factor the scale shrinks by on a step with inf/NaN gradients (0.5).
    pub backoff_factor: f64,
    /// Consecutive good steps before the scale grows (2000).
    pub growth_interval: i64,
    /// Stop with an error after this many consecutive skipped steps (100): the loss itself is
    /// probably non-finite, which no scale fixes. 0 disables the check.
    pub max_consecutive_skips: u64,
    /// Run the scaler on CPU too (autocast stays off there): for tests and debugging of the
    /// skip/backoff logic without a GPU. Default false.
    pub on_cpu: bool,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            max_consecutive_skips: 100,
            on_cpu: false,
        }
    }
}

/// The saved state of a [`GradScaler`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// The current scale.
    pub scale: f64,
    /// Consecutive good steps since the last growth or backoff.
    pub growth_tracker: i64,
}

/// Dynamic loss scaler with `GradScaler` semantics: multiply the loss by `scale` before
/// backward, unscale the gradients while checking them for inf/NaN, skip the optimizer step when
/// any is found, then update the scale (backoff on a bad step, growth after `growth_interval`
/// good ones).
#[derive(Debug)]
pub struct GradScaler {
    cfg: ScalerConfig,
    scale: Tensor,
    growth_tracker: Tensor,
}

impl GradScaler {
    /// A scaler at `cfg.init_scale` whose state tensors live on `device`.
    pub fn new(cfg: &ScalerConfig, device: Device) -> Result<Self> {
        if cfg.init_scale <= 0.0
            || cfg.growth_factor <= 1.0
            || !(0.0..1.0).contains(&cfg.backoff_factor)
            || cfg.growth_interval < 1
        {
            return Err(VlpError::Msg(format!(
                "scaler: need init_scale > 0, growth_factor > 1, 0 <= backoff_factor < 1, growth_interval >= 1 (got {cfg:?})"
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            scale: Tensor::from_slice(&[cfg.init_scale as f32]).to_device(device),
            growth_tracker: Tensor::from_slice(&[0i32]).to_device(device),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ScalerConfig {
        &self.cfg
    }

    /// The current scale (synchronises with the device).
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    /// `loss * scale` (what to call backward on).
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.to_device(loss.device())
    }

    /// Unscales the gradients in place (divides by `scale * divisor`; `divisor` folds in the
    /// 1/m of gradient accumulation, 1 otherwise) and returns the `found_inf` flag tensor (1.0
    /// when any gradient holds an inf or NaN), for [`GradScaler::update`].
    pub fn unscale_(&self, grads: &mut [Option<Tensor>], divisor: f64) -> Result<Tensor> {
        let device = self.scale.device();
        let mut found_inf = Tensor::zeros([1], (Kind::Float, device));
        // As GradScaler: the reciprocal in double, then float.
        let inv_scale = (self.scale.to_kind(Kind::Double) * divisor)
            .reciprocal()
            .to_kind(Kind::Float);
        for g in grads.iter_mut().flatten() {
            if g.device() != device {
                return Err(VlpError::Msg(format!(
                    "scaler: gradient on {:?}, scaler on {device:?}",
                    g.device()
                )));
            }
            g.f_internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale)?;
        }
        Ok(found_inf)
    }

    /// True when `found_inf` (from [`GradScaler::unscale_`]) flags a non-finite gradient: the
    /// optimizer step must be skipped.
    pub fn found_inf(found_inf: &Tensor) -> bool {
        found_inf.double_value(&[0]) > 0.0
    }

    /// Updates the scale from `found_inf` (`_amp_update_scale_`): ×`backoff_factor` and reset
    /// of the tracker on a bad step; ×`growth_factor` after `growth_interval` good steps.
    pub fn update(&mut self, found_inf: &Tensor) -> Result<()> {
        let found = found_inf.to_device(self.scale.device());
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            &found,
            self.cfg.growth_factor,
            self.cfg.backoff_factor,
            self.cfg.growth_interval,
        )?;
        Ok(())
    }

    /// The state to checkpoint.
    pub fn state(&self) -> ScalerState {
        ScalerState {
            scale: self.scale.double_value(&[0]),
            growth_tracker: self.growth_tracker.int64_value(&[0]),
        }
    }

    /// Restores a saved state.
    pub fn load_state(&mut self, st: &ScalerState) {
        let device = self.scale.device();
        self.scale = Tensor::from_slice(&[st.scale as f32]).to_device(device);
        self.growth_tracker = Tensor::from_slice(&[st.growth_tracker as i32]).to_device(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_dtype_roundtrip_without_gpu() {
        let prev = cuda_autocast_dtype();
        assert_eq!(prev, Some(Kind::Half), "CUDA autocast defaults to fp16");
        set_cuda_autocast_dtype(Kind::BFloat16).unwrap();
        assert_eq!(cuda_autocast_dtype(), Some(Kind::BFloat16));
        set_cuda_autocast_dtype(Kind::Half).unwrap();
        assert_eq!(cuda_autocast_dtype(), Some(Kind::Half));
        assert!(set_cuda_autocast_dtype(Kind::Int64).is_err());
        // On CPU autocast is a no-op.
        let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let y = autocast(Precision::Bf16, Device::Cpu, || x.matmul(&x));
        assert_eq!(y.kind(), Kind::Float);
    }

    #[test]
    fn scaler_unscale_skip_backoff_growth() {
        let cfg = ScalerConfig {
            growth_interval: 3,
            ..Default::default()
        };
        let mut s = GradScaler::new(&cfg, Device::Cpu).unwrap();
        assert_eq!(s.scale(), 65536.0);
        // Finite gradients: unscaled by scale * divisor.
        let mut g = vec![Some(Tensor::from_slice(&[65536.0f32, 131072.0])), None];
        let fi = s.unscale_(&mut g, 2.0).unwrap();
        assert!(!GradScaler::found_inf(&fi));
        assert_eq!(
            Vec::<f32>::try_from(g[0].as_ref().unwrap()).unwrap(),
            [0.5, 1.0]
        );
        s.update(&fi).unwrap();
        assert_eq!(
            s.state(),
            ScalerState {
                scale: 65536.0,
                growth_tracker: 1
            }
        );
        // A non-finite gradient: found, backoff, tracker reset.
        let mut g = vec![Some(Tensor::from_slice(&[1.0f32, f32::INFINITY]))];
        let fi = s.unscale_(&mut g, 1.0).unwrap();
        assert!(GradScaler::found_inf(&fi));
        s.update(&fi).unwrap();
        assert_eq!(
            s.state(),
            ScalerState {
                scale: 32768.0,
                growth_tracker: 0
            }
        );
        // NaN counts too.
        let mut g = vec![Some(Tensor::from_slice(&[f32::NAN]))];
        let fi = s.unscale_(&mut g, 1.0).unwrap();
        assert!(GradScaler::found_inf(&fi));
        s.update(&fi).unwrap();
        assert_eq!(s.scale(), 16384.0);
        // growth_interval good steps: growth by 2.
        for i in 1..=3 {
            let mut g = vec![Some(Tensor::from_slice(&[1.0f32]))];
            let fi = s.unscale_(&mut g, 1.0).unwrap();
            s.update(&fi).unwrap();
            let want = if i < 3 { 16384.0 } else { 32768.0 };
            assert_eq!(s.scale(), want, "after {i} good steps");
        }
        assert_eq!(s.state().growth_tracker, 0);
        // State round trip.
        let st = s.state();
        let mut t = GradScaler::new(&cfg, Device::Cpu).unwrap();
        t.load_state(&st);
        assert_eq!(t.state(), st);
        assert_eq!(
            Vec::<f32>::try_from(s.scale_loss(&Tensor::from_slice(&[2.0f32]))).unwrap(),
            [65536.0]
        );
    }
}
