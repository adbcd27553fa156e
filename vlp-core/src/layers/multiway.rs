//! Multiway transformers: shared self-attention, modality-specific experts chosen by token span.
//!
//! - [`MomeBlock`]: VLMo's mixture-of-modality-experts block (Bao et al. 2022,
//!   `vlmo/modules/multiway_transformer.py`): pre-LN, shared `norm1` + attention (`qkv.weight`,
//!   `q_bias`, `v_bias`), layer scale `gamma_1`/`gamma_2`, and FFN experts `mlp_text`/`norm2_text`,
//!   `mlp_imag`/`norm2_imag`, plus `mlp_vl`/`norm2_vl` in the top layers. In a joint sequence the
//!   text comes first.
//! - [`Multiway`]: torchscale's generic `MultiwayNetwork` used by BEiT-3 — every wrapped module has
//!   an `A` (vision) and a `B` (language) copy; tokens before the split position go through `A`,
//!   the rest through `B`.
use super::{drop_path, layer_norm, linear, Activation, Mlp};
use crate::attention::{AttentionConfig, MultiHeadAttention, QkvLayout};
use tch::{nn, Tensor};

/// Which experts a [`MomeBlock`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// Text only: language expert.
    Text,
    /// Image only: vision expert.
    Image,
    /// Joint `[text ; image]`: the first `text_len` tokens go to the language expert, the rest to
    /// the vision expert (VLMo below `vlffn_start_layer_index`).
    Split {
        /// Number of leading text tokens.
        text_len: i64,
    },
    /// Joint sequence through the vision-language expert `mlp_vl` (top layers).
    VisionLanguage,
}

/// Hyper-parameters of a [`MomeBlock`].
#[derive(Debug, Clone, PartialEq)]
pub struct MomeBlockConfig {
    /// Width.
    pub dim: i64,
    /// Heads.
    pub num_heads: i64,
    /// FFN width.
    pub mlp_hidden: i64,
    /// LayerNorm epsilon (VLMo: 1e-6).
    pub eps: f64,
    /// Layer-scale init (VLMo base/large: 0.1; `None` = no `gamma_*`).
    pub layer_scale: Option<f64>,
    /// Stochastic depth of this block.
    pub drop_path: f64,
    /// Whether the block has the vision-language expert.
    pub with_vl_ffn: bool,
}

struct Expert {
    norm: nn::LayerNorm,
    mlp: Mlp,
}

impl std::fmt::Debug for Expert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expert")
    }
}

impl Expert {
    fn new(p: &nn::Path, suffix: &str, cfg: &MomeBlockConfig) -> Self {
        Expert {
            norm: layer_norm(p / format!("norm2_{suffix}"), cfg.dim, cfg.eps),
            mlp: Mlp::new(
                &(p / format!("mlp_{suffix}")),
                cfg.dim,
                cfg.mlp_hidden,
                Activation::Gelu,
                0.0,
            ),
        }
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.mlp.forward_t(&x.apply(&self.norm), train)
    }
}

/// VLMo's MoME block (see the module docs).
#[derive(Debug)]
pub struct MomeBlock {
    norm1: nn::LayerNorm,
    attn: MultiHeadAttention,
    proj: nn::Linear,
    text: Expert,
    imag: Expert,
    vl: Option<Expert>,
    gamma_1: Option<Tensor>,
    gamma_2: Option<Tensor>,
    drop_path: f64,
}

impl MomeBlock {
    /// Builds the block under `p` (`transformer.blocks.N`).
    pub fn new(p: &nn::Path, cfg: &MomeBlockConfig) -> Self {
        let ac = AttentionConfig::new(cfg.dim, cfg.num_heads, QkvLayout::FusedQv);
        let gamma = |n: &str| {
            cfg.layer_scale
                .map(|v| p.var(n, &[cfg.dim], nn::Init::Const(v)))
        };
        MomeBlock {
            norm1: layer_norm(p / "norm1", cfg.dim, cfg.eps),
            attn: MultiHeadAttention::new(&(p / "attn"), &ac),
            proj: linear(p / "attn" / "proj", cfg.dim, cfg.dim),
            text: Expert::new(p, "text", cfg),
            imag: Expert::new(p, "imag", cfg),
            vl: cfg.with_vl_ffn.then(|| Expert::new(p, "vl", cfg)),
            gamma_1: gamma("gamma_1"),
            gamma_2: gamma("gamma_2"),
            drop_path: cfg.drop_path,
        }
    }

    /// Whether this block has the vision-language expert.
    pub fn has_vl_ffn(&self) -> bool {
        self.vl.is_some()
    }

    /// Applies the block. `mask`: additive mask + relative-position bias, broadcastable to
    /// `[B, H, L, L]`. Errors (as a message) when `VisionLanguage` is asked of a block without it.
    pub fn forward_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        modality: Modality,
        train: bool,
    ) -> crate::Result<Tensor> {
        let mut h = self
            .attn
            .forward_t(&x.apply(&self.norm1), None, mask, train)
            .apply(&self.proj);
        if let Some(g) = &self.gamma_1 {
            h *= g;
        }
        let x = x + drop_path(&h, self.drop_path, train);
        let mut h = match modality {
            Modality::Text => self.text.forward_t(&x, train),
            Modality::Image => self.imag.forward_t(&x, train),
            Modality::Split { text_len } => {
                let l = x.size()[1];
                let t = self.text.forward_t(&x.narrow(1, 0, text_len), train);
                let i = self
                    .imag
                    .forward_t(&x.narrow(1, text_len, l - text_len), train);
                Tensor::cat(&[t, i], 1)
            }
            Modality::VisionLanguage => match &self.vl {
                Some(e) => e.forward_t(&x, train),
                None => {
                    return Err(crate::VlpError::Msg(
                        "this multiway block has no vision-language expert (mlp_vl)".into(),
                    ))
                }
            },
        };
        if let Some(g) = &self.gamma_2 {
            h *= g;
        }
        Ok(&x + drop_path(&h, self.drop_path, train))
    }
}

/// Where a joint sequence is split between the `A` and `B` experts of a [`Multiway`] module
/// (torchscale `split_position`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Everything through `A` (torchscale `-1`: vision only).
    AllA,
    /// Everything through `B` (torchscale `0`: language only).
    AllB,
    /// The first `n` tokens through `A`, the rest through `B`.
    At(i64),
}

/// torchscale's `MultiwayNetwork`: two copies `A` and `B` of a module, applied by token span.
#[derive(Debug)]
pub struct Multiway<M> {
    /// The vision expert (`…/A`).
    pub a: M,
    /// The language expert (`…/B`).
    pub b: M,
}

impl<M> Multiway<M> {
    /// Builds `A` and `B` under `p` with `build`.
    pub fn new(p: &nn::Path, build: impl Fn(&nn::Path) -> M) -> Self {
        Multiway {
            a: build(&(p / "A")),
            b: build(&(p / "B")),
        }
    }

    /// Applies `f` with `A` to the tokens before the split and with `B` to the rest, along
    /// dimension `dim` (1 for `[B, L, D]`).
    pub fn apply(
        &self,
        x: &Tensor,
        split: Split,
        dim: i64,
        f: impl Fn(&M, &Tensor) -> Tensor,
    ) -> Tensor {
        match split {
            Split::AllA => f(&self.a, x),
            Split::AllB => f(&self.b, x),
            Split::At(n) => {
                let l = x.size()[dim as usize];
                let xa = x.narrow(dim, 0, n);
                let xb = x.narrow(dim, n, l - n);
                Tensor::cat(&[f(&self.a, &xa), f(&self.b, &xb)], dim)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::Module, nn::VarStore, Device, Kind};

    fn cfg(vl: bool) -> MomeBlockConfig {
        MomeBlockConfig {
            dim: 16,
            num_heads: 2,
            mlp_hidden: 32,
            eps: 1e-6,
            layer_scale: Some(0.1),
            drop_path: 0.0,
            with_vl_ffn: vl,
        }
    }

    #[test]
    fn split_mode_routes_tokens_to_their_experts() {
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let blk = MomeBlock::new(&(vs.root() / "blocks" / 0), &cfg(false));
        let keys = vs.variables();
        for k in [
            "blocks.0.gamma_1",
            "blocks.0.attn.q_bias",
            "blocks.0.attn.qkv.weight",
            "blocks.0.mlp_imag.fc1.weight",
            "blocks.0.norm2_text.weight",
        ] {
            assert!(keys.contains_key(k), "missing {k}");
        }
        assert!(!keys.contains_key("blocks.0.mlp_vl.fc1.weight"));
        // with attention restricted to each segment (block-diagonal mask), Split equals running the
        // text and image parts on their own
        let text = Tensor::randn([1, 3, 16], (Kind::Float, Device::Cpu));
        let img = Tensor::randn([1, 4, 16], (Kind::Float, Device::Cpu));
        let joint = Tensor::cat(&[&text, &img], 1);
        let m = Tensor::full([7, 7], -1e9, (Kind::Float, Device::Cpu));
        let _ = m.narrow(0, 0, 3).narrow(1, 0, 3).fill_(0.0);
        let _ = m.narrow(0, 3, 4).narrow(1, 3, 4).fill_(0.0);
        let out = blk
            .forward_t(&joint, Some(&m), Modality::Split { text_len: 3 }, false)
            .unwrap();
        let t = blk.forward_t(&text, None, Modality::Text, false).unwrap();
        let i = blk.forward_t(&img, None, Modality::Image, false).unwrap();
        assert!(out.allclose(&Tensor::cat(&[t, i], 1), 1e-5, 1e-5, false));
        assert!(blk
            .forward_t(&joint, None, Modality::VisionLanguage, false)
            .is_err());
    }

    #[test]
    fn multiway_applies_a_then_b() {
        let vs = VarStore::new(Device::Cpu);
        let mw = Multiway::new(&(vs.root() / "fc"), |p| linear(p.clone(), 4, 4));
        assert!(
            vs.variables().contains_key("fc.A.weight") && vs.variables().contains_key("fc.B.bias")
        );
        let x = Tensor::randn([2, 5, 4], (Kind::Float, Device::Cpu));
        let y = mw.apply(&x, Split::At(2), 1, |m, t| m.forward(t));
        assert!(y
            .narrow(1, 0, 2)
            .allclose(&mw.a.forward(&x.narrow(1, 0, 2)), 1e-6, 1e-6, false));
        assert!(y
            .narrow(1, 2, 3)
            .allclose(&mw.b.forward(&x.narrow(1, 2, 3)), 1e-6, 1e-6, false));
        assert!(mw.apply(&x, Split::AllB, 1, |m, t| m.forward(t)).allclose(
            &mw.b.forward(&x),
            1e-6,
            1e-6,
            false
        ));
    }
}
