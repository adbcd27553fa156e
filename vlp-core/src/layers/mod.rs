//! Transformer building blocks shared by the zoo, each parameterised by the real differences
//! between papers (pre-/post-LN, LayerNorm eps, GELU variant, layer scale, drop-path).
//!
//! - [`bert`]: BERT embeddings (with/without token type) and the BERT layer with optional
//!   cross-attention (ALBEF, BLIP, UNITER's encoder), post-LN.
//! - [`vit`]: ViT patch embedding with bicubic position-embedding interpolation, the pre-LN ViT
//!   block (fused `qkv`, optional `q_bias`/`v_bias`, optional layer scale) and the timm-0.4-style
//!   vision transformer of ALBEF/BLIP.
//! - [`multiway`]: the mixture-of-modality-experts block of VLMo (shared attention, per-modality FFN
//!   and LayerNorm chosen by token span) and the generic A/B [`multiway::Multiway`] wrapper of BEiT-3.
//!
//! Dropout and drop-path take a `train` flag and are identity when it is false.
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

pub mod bert;
pub mod multiway;
pub mod vit;

/// Activation functions, named as the official configs name them (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// Exact GELU with erf (HF `"gelu"`, timm `nn.GELU`).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// Exact GELU computed in fp32 and cast back (BEiT-3 / torchscale `gelu` under autocast).
    #[serde(rename = "gelu_fp32")]
    GeluFp32,
    /// CLIP's `x * sigmoid(1.702 x)`.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::GeluFp32 => x.to_kind(Kind::Float).gelu("none").to_kind(x.kind()),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Relu => x.relu(),
        }
    }
}

/// Stochastic depth: drops the whole residual branch per sample with probability `p` during
/// training and rescales the kept ones by `1/(1-p)` (timm `drop_path`). Identity in eval.
pub fn drop_path(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - p;
    let mut shape = vec![x.size()[0]];
    shape.extend(std::iter::repeat_n(1, x.dim() - 1));
    let mask = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep);
    x * mask / keep
}

/// A LayerNorm over the last dimension with the given eps (`weight`, `bias` under `p`).
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// Standard deviation of the initial Linear weights: BERT's `initializer_range` and timm ViT's
/// `trunc_normal_(std=.02)`, the `_init_weights` of every model of the zoo (only what is trained
/// from scratch depends on it; a loaded checkpoint overwrites it).
pub const INIT_STD: f64 = 0.02;

/// The [`nn::LinearConfig`] of the official `_init_weights`: weights N(0, [`INIT_STD`]²), biases
/// zero. (tch's default — Kaiming-uniform for ReLU, std √(2/fan_in), 0.125 at width 128, and
/// uniform biases — is six times wider: a model trained from scratch with it barely moves from
/// its initialisation in a few hundred steps.)
pub fn linear_config(bias: bool) -> nn::LinearConfig {
    linear_config_std(bias, INIT_STD)
}

/// [`linear_config`] with weights N(0, `std`²) (BERT's `initializer_range` when a config sets
/// one other than [`INIT_STD`]).
pub fn linear_config_std(bias: bool, std: f64) -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: bias.then_some(nn::Init::Const(0.0)),
        bias,
    }
}

/// A Linear with bias, `weight` and `bias` under `p` ([`linear_config`] initialisation).
pub fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, linear_config(true))
}

/// [`linear`] with weights N(0, `std`²).
pub fn linear_std(p: nn::Path, i: i64, o: i64, std: f64) -> nn::Linear {
    nn::linear(p, i, o, linear_config_std(true, std))
}

/// A Linear at PyTorch's `nn.Linear` default: weight and bias uniform in ±1/√`i`. For the heads
/// that the official code creates as plain `nn.Linear` and never re-initialises (ALBEF / BLIP
/// `vision_proj`, `text_proj`, `itm_head`, `cls_head`, …).
pub fn linear_torch(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let bound = 1.0 / (i as f64).sqrt();
    let u = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: u,
            bs_init: Some(u),
            bias: true,
        },
    )
}

/// A Linear without bias ([`linear_config`] initialisation).
pub fn linear_no_bias(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, linear_config(false))
}

/// Two-layer MLP `fc2(drop(act(fc1(x))))` with timm's names `fc1`/`fc2`, optionally with an inner
/// LayerNorm after the activation (BEiT-3's Sub-LN `ffn_layernorm`).
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    inner_norm: Option<nn::LayerNorm>,
    act: Activation,
    dropout: f64,
}

impl Mlp {
    /// `fc1: dim → hidden`, `fc2: hidden → dim` under `p`.
    pub fn new(p: &nn::Path, dim: i64, hidden: i64, act: Activation, dropout: f64) -> Self {
        Self::new_std(p, dim, hidden, act, dropout, INIT_STD)
    }

    /// [`new`](Self::new) with weights N(0, `std`²).
    pub fn new_std(
        p: &nn::Path,
        dim: i64,
        hidden: i64,
        act: Activation,
        dropout: f64,
        std: f64,
    ) -> Self {
        Mlp {
            fc1: linear_std(p / "fc1", dim, hidden, std),
            fc2: linear_std(p / "fc2", hidden, dim, std),
            inner_norm: None,
            act,
            dropout,
        }
    }
    /// Adds the inner LayerNorm (over `hidden`) named `name` (BEiT-3: `ffn_layernorm`).
    pub fn with_inner_norm(mut self, p: &nn::Path, name: &str, hidden: i64, eps: f64) -> Self {
        self.inner_norm = Some(layer_norm(p / name, hidden, eps));
        self
    }
    /// Applies the MLP.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.act.apply(&x.apply(&self.fc1));
        if let Some(n) = &self.inner_norm {
            h = h.apply(n);
        }
        h.dropout(self.dropout, train)
            .apply(&self.fc2)
            .dropout(self.dropout, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn activations_follow_their_definitions() {
        let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.0, 0.5, 2.0]);
        let erf = Activation::Gelu.apply(&x);
        let manual = &x * 0.5 * ((&x / 2f64.sqrt()).erf() + 1.0);
        assert!(erf.allclose(&manual, 1e-6, 1e-6, false));
        let tanh = Activation::GeluTanh.apply(&x);
        assert!(!tanh.allclose(&erf, 1e-6, 1e-6, false));
        assert!(tanh.allclose(&erf, 1e-2, 1e-2, false));
        let a: Activation = serde_json::from_str("\"gelu_pytorch_tanh\"").unwrap();
        assert_eq!(a, Activation::GeluTanh);
    }

    #[test]
    fn drop_path_is_identity_in_eval_and_per_sample_in_training() {
        tch::manual_seed(0);
        let x = Tensor::ones([1000, 3, 4], (Kind::Float, Device::Cpu));
        assert!(drop_path(&x, 0.3, false).equal(&x));
        let y = drop_path(&x, 0.3, true);
        // each sample is either all zero or all 1/0.7
        let per = y.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
        let kept = per
            .gt(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((kept - 0.7).abs() < 0.06, "kept fraction {kept}");
        let max = y.max().double_value(&[]);
        assert!((max - 1.0 / 0.7).abs() < 1e-5);
    }
}
