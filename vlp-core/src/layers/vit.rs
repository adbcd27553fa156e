//! Vision Transformer parts (Dosovitskiy et al. 2021) in the timm-0.4 layout that ALBEF and BLIP
//! ship (`models/vit.py`): `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1, attn.qkv,
//! attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`. The block also covers the BEiT/VLMo variants
//! (`q_bias`/`v_bias`, layer scale `gamma_1`/`gamma_2`).
use super::{drop_path, layer_norm, linear_std, Activation, Mlp};
use crate::attention::{AttentionConfig, MultiHeadAttention, QkvLayout};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// ViT constructor arguments, named as the official code's keyword arguments. `Default` =
/// ViT-B/16 at 224 px as ALBEF/BLIP build it (qkv bias, LN eps 1e-6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitConfig {
    /// Input resolution (square).
    pub img_size: i64,
    /// Patch size.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Width.
    pub embed_dim: i64,
    /// Number of blocks.
    pub depth: i64,
    /// Heads.
    pub num_heads: i64,
    /// MLP width = `mlp_ratio * embed_dim`.
    pub mlp_ratio: f64,
    /// Whether `qkv` has a bias.
    pub qkv_bias: bool,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Stochastic-depth rate of the last block (linearly increasing from 0).
    pub drop_path_rate: f64,
    /// Layer-scale init (`gamma_1`/`gamma_2` exist when set).
    pub layer_scale_init_value: Option<f64>,
    /// How the attention weights start when the encoder is trained from random weights (a
    /// loaded checkpoint overwrites them either way). Not an argument of the official code,
    /// whose ViTs always start from a pre-trained checkpoint (DeiT, ImageNet).
    pub init: VitInit,
    /// Std of the blocks' initial Linear weights (qkv, proj, MLP; timm's `trunc_normal_(std=.02)`
    /// by default). Only what is trained from random weights depends on it; with
    /// [`VitInit::Mimetic`] it sets the MLPs' (the attention follows the mimetic rule).
    pub init_std: f64,
}

/// Initialisation of the ViT's attention weights ([`VitConfig::init`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VitInit {
    /// timm's `_init_weights`: every Linear N(0, 0.02²) (the official code's, before it loads
    /// DeiT). Attention starts uniform: its logits are ~0.05 at width 128.
    #[default]
    Official,
    /// Mimetic initialisation (Trockman & Kolter, "Mimetic Initialization of Self-Attention
    /// Layers", ICML 2023) for training a ViT from scratch on little data: per head
    /// `W_q^T W_k ≈ α₁Z + β₁I` and `W_v^T W_proj^T ≈ α₂Z − β₂I` ([`mimetic_init_`]), the
    /// structure of pre-trained ViTs' attention. The MLPs keep the official initialisation.
    Mimetic,
}

/// Coefficients of the mimetic initialisation (the paper's values: α₁ = β₁ = 0.7, α₂ = β₂ =
/// 0.4).
pub const MIMETIC: [f64; 4] = [0.7, 0.7, 0.4, 0.4];

/// Writes the mimetic initialisation into one attention layer, in place: `q`, `k`, `v` `[D, D]`
/// (as [`MultiHeadAttention::qkv_weights`] gives them) and the output projection `proj`
/// `[D, D]`, with `heads` heads. With `Z` of N(0, 1/D) entries (drawn from torch's generator)
/// and the SVD `U S Vᵀ` of the target, each head's `W_q^h = √S_k U_kᵀ`, `W_k^h = √S_k V_kᵀ` over
/// the top `D/heads` components of `α₁Z + β₁I` (a fresh `Z` per head), and
/// `W_v = √S Uᵀ`, `W_proj = V √S` of `α₂Z − β₂I`, so that `W_q^hᵀ W_k^h ≈ α₁Z + β₁I` and
/// `W_vᵀ W_projᵀ = α₂Z − β₂I` exactly.
pub fn mimetic_init_(q: &Tensor, k: &Tensor, v: &Tensor, proj: &Tensor, heads: i64, c: [f64; 4]) {
    let d = q.size()[0];
    let hd = d / heads;
    let _g = tch::no_grad_guard();
    let opts = (Kind::Double, tch::Device::Cpu);
    let target = |alpha: f64, beta: f64| {
        Tensor::randn([d, d], opts) * (alpha / (d as f64).sqrt()) + Tensor::eye(d, opts) * beta
    };
    let put = |dst: &Tensor, src: &Tensor| {
        let mut dst = dst.shallow_clone();
        dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
    };
    for h in 0..heads {
        let (u, s, rv) = target(c[0], c[1]).svd(true, true);
        let root = s.narrow(0, 0, hd).sqrt().unsqueeze(1);
        put(
            &q.narrow(0, h * hd, hd),
            &(&root * u.narrow(1, 0, hd).transpose(0, 1)),
        );
        put(
            &k.narrow(0, h * hd, hd),
            &(&root * rv.narrow(1, 0, hd).transpose(0, 1)),
        );
    }
    let (u, s, rv) = target(c[2], -c[3]).svd(true, true);
    let root = s.sqrt();
    put(v, &(root.unsqueeze(1) * u.transpose(0, 1)));
    put(proj, &(rv * root.unsqueeze(0)));
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            drop_path_rate: 0.0,
            layer_scale_init_value: None,
            init: VitInit::Official,
            init_std: crate::layers::INIT_STD,
        }
    }
}

impl VitConfig {
    /// ViT-L/16 (BLIP large).
    pub fn large() -> Self {
        VitConfig {
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            drop_path_rate: 0.1,
            ..Default::default()
        }
    }
    /// A tiny ViT for tests (32 px, patch 16, width 32, 2 blocks).
    pub fn tiny() -> Self {
        VitConfig {
            img_size: 32,
            patch_size: 16,
            embed_dim: 32,
            depth: 2,
            num_heads: 4,
            ..Default::default()
        }
    }
    /// Patches per side at `img_size`.
    pub fn grid(&self) -> i64 {
        self.img_size / self.patch_size
    }
}

/// Resizes a position-embedding table `[1, extra + g*g, D]` to a new patch grid with bicubic
/// interpolation (`align_corners=False`), leaving the first `extra` rows (class token) as they are
/// — what ALBEF/BLIP's `interpolate_pos_embed` does when a checkpoint meets another image size.
pub fn interpolate_pos_embed(pos_embed: &Tensor, extra: i64, new_grid: (i64, i64)) -> Tensor {
    let (n, d) = (pos_embed.size()[1], pos_embed.size()[2]);
    let old = ((n - extra) as f64).sqrt().round() as i64;
    assert_eq!(
        old * old,
        n - extra,
        "pos_embed rows {} - {extra} is not a square grid",
        n
    );
    if (old, old) == new_grid {
        return pos_embed.shallow_clone();
    }
    let head = pos_embed.narrow(1, 0, extra);
    let grid = pos_embed
        .narrow(1, extra, n - extra)
        .reshape([1, old, old, d])
        .permute([0, 3, 1, 2]);
    let kind = grid.kind();
    let resized = grid
        .to_kind(Kind::Float)
        .upsample_bicubic2d([new_grid.0, new_grid.1], false, None, None)
        .to_kind(kind)
        .permute([0, 2, 3, 1])
        .reshape([1, new_grid.0 * new_grid.1, d]);
    Tensor::cat(&[head, resized], 1)
}

/// FlexiViT's PI-resize (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023,
/// eq. 3) of a patch-embedding kernel `[D, C, p, p]` to `[D, C, q, q]`: the least-squares kernel
/// `ŵ = pinv(Bᵀ) w` with `⟨x, w⟩ = ⟨B x, ŵ⟩` for every `p×p` patch `x`, `B` the bilinear resize
/// (`align_corners=False`, no antialiasing) from `p×p` to `q×q`. From 8 to 4 that is the sum of
/// each 2×2 block: a token of a 4×4 patch reads it as the 8×8 checkpoint read a patch of the image
/// at twice the size (the position embedding is interpolated to the finer grid beside it). The
/// bias is unaffected. Returns the kernel unchanged when the sizes agree.
pub fn resize_patch_kernel(w: &Tensor, new: i64) -> Tensor {
    let size = w.size();
    let old = size[size.len() - 1];
    if old == new || size.len() != 4 || size[2] != old {
        return w.shallow_clone();
    }
    let opts = (Kind::Double, tch::Device::Cpu);
    // Row j of `bt` is the j-th basis patch resized: Bᵀ, [p², q²].
    let bt = Tensor::eye(old * old, opts)
        .view([old * old, 1, old, old])
        .upsample_bilinear2d([new, new], false, None, None)
        .view([old * old, new * new]);
    // ŵ (per output channel, as a row) = w · pinv(Bᵀ)ᵀ.
    let pinv = bt.linalg_pinv(1e-10, false);
    let flat = w
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Double)
        .view([-1, old * old]);
    flat.matmul(&pinv.tr())
        .view([size[0], size[1], new, new])
        .to_kind(w.kind())
        .to_device(w.device())
}

/// Conv patch embedding `patch_embed.proj` (kernel = stride = patch size), flattened to
/// `[B, N, D]`.
#[derive(Debug)]
pub struct PatchEmbed {
    proj: nn::Conv2D,
    /// Patch size.
    pub patch_size: i64,
}

impl PatchEmbed {
    /// Builds `…/proj` under `p` (`…/patch_embed`).
    pub fn new(p: &nn::Path, in_chans: i64, dim: i64, patch: i64) -> Self {
        // PyTorch's Conv2d default (the official ViTs leave the patch projection to it):
        // weight and bias uniform in ±1/√fan_in.
        let bound = 1.0 / ((in_chans * patch * patch) as f64).sqrt();
        let cc = nn::ConvConfig {
            stride: patch,
            ws_init: nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
            bs_init: nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
            ..Default::default()
        };
        PatchEmbed {
            proj: nn::conv2d(p / "proj", in_chans, dim, patch, cc),
            patch_size: patch,
        }
    }
    /// `[B, C, H, W]` → (`[B, N, D]`, grid `(H/p, W/p)`).
    pub fn forward(&self, images: &Tensor) -> (Tensor, (i64, i64)) {
        let x = images.apply(&self.proj);
        let (gh, gw) = (x.size()[2], x.size()[3]);
        (x.flatten(2, 3).transpose(1, 2), (gh, gw))
    }
}

/// Hyper-parameters of one pre-LN [`VitBlock`].
#[derive(Debug, Clone, PartialEq)]
pub struct VitBlockConfig {
    /// Width.
    pub dim: i64,
    /// Heads.
    pub num_heads: i64,
    /// MLP width.
    pub mlp_hidden: i64,
    /// q/k/v layout (`Fused{bias}` for timm ViT, `FusedQv` for BEiT/VLMo).
    pub qkv: QkvLayout,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Layer-scale init (`gamma_1`, `gamma_2` exist when set).
    pub layer_scale: Option<f64>,
    /// Stochastic-depth rate of this block.
    pub drop_path: f64,
    /// Activation of the MLP.
    pub act: Activation,
    /// Std of the initial Linear weights (qkv, proj, MLP).
    pub init_std: f64,
}

/// A ViT block: `x + dp(γ1·proj(attn(norm1(x))))`, `x + dp(γ2·mlp(norm2(x)))`.
#[derive(Debug)]
pub struct VitBlock {
    norm1: nn::LayerNorm,
    attn: MultiHeadAttention,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    gamma_1: Option<Tensor>,
    gamma_2: Option<Tensor>,
    drop_path: f64,
}

impl VitBlock {
    /// Builds a block under `p` (`…/blocks/N`).
    pub fn new(p: &nn::Path, cfg: &VitBlockConfig) -> Self {
        let mut ac = AttentionConfig::new(cfg.dim, cfg.num_heads, cfg.qkv.clone());
        ac.init_std = cfg.init_std;
        let gamma = |name: &str| {
            cfg.layer_scale
                .map(|v| p.var(name, &[cfg.dim], nn::Init::Const(v)))
        };
        VitBlock {
            norm1: layer_norm(p / "norm1", cfg.dim, cfg.eps),
            attn: MultiHeadAttention::new(&(p / "attn"), &ac),
            proj: linear_std(p / "attn" / "proj", cfg.dim, cfg.dim, cfg.init_std),
            norm2: layer_norm(p / "norm2", cfg.dim, cfg.eps),
            mlp: Mlp::new_std(
                &(p / "mlp"),
                cfg.dim,
                cfg.mlp_hidden,
                cfg.act,
                0.0,
                cfg.init_std,
            ),
            gamma_1: gamma("gamma_1"),
            gamma_2: gamma("gamma_2"),
            drop_path: cfg.drop_path,
        }
    }

    /// Applies the block with an optional additive attention mask/bias.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = self
            .attn
            .forward_t(&x.apply(&self.norm1), None, mask, train)
            .apply(&self.proj);
        if let Some(g) = &self.gamma_1 {
            h *= g;
        }
        let x = x + drop_path(&h, self.drop_path, train);
        let mut h = self.mlp.forward_t(&x.apply(&self.norm2), train);
        if let Some(g) = &self.gamma_2 {
            h *= g;
        }
        &x + drop_path(&h, self.drop_path, train)
    }
}

/// The timm-0.4-style Vision Transformer of ALBEF and BLIP (`models/vit.py`): patch embedding,
/// class token, absolute position embedding (interpolated on the fly for other image sizes),
/// pre-LN blocks and a final LayerNorm over every token. No pooler.
#[derive(Debug)]
pub struct VisionTransformer {
    cls_token: Tensor,
    pos_embed: Tensor,
    patch_embed: PatchEmbed,
    blocks: Vec<VitBlock>,
    norm: nn::LayerNorm,
    /// The configuration it was built with.
    pub cfg: VitConfig,
}

impl VisionTransformer {
    /// Builds the encoder under `p` (`visual_encoder` in ALBEF/BLIP).
    pub fn new(p: &nn::Path, cfg: &VitConfig) -> Self {
        let d = cfg.embed_dim;
        let n = cfg.grid() * cfg.grid();
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let blocks = (0..cfg.depth)
            .map(|i| {
                let dp = if cfg.depth > 1 {
                    cfg.drop_path_rate * i as f64 / (cfg.depth - 1) as f64
                } else {
                    0.0
                };
                let bc = VitBlockConfig {
                    dim: d,
                    num_heads: cfg.num_heads,
                    mlp_hidden: (d as f64 * cfg.mlp_ratio) as i64,
                    qkv: QkvLayout::Fused { bias: cfg.qkv_bias },
                    eps: cfg.layer_norm_eps,
                    layer_scale: cfg.layer_scale_init_value,
                    drop_path: dp,
                    act: Activation::Gelu,
                    init_std: cfg.init_std,
                };
                let block = VitBlock::new(&(p / "blocks" / i), &bc);
                if cfg.init == VitInit::Mimetic {
                    let [q, k, v] = block.attn.qkv_weights();
                    mimetic_init_(&q, &k, &v, &block.proj.ws, cfg.num_heads, MIMETIC);
                }
                block
            })
            .collect();
        VisionTransformer {
            cls_token: p.var("cls_token", &[1, 1, d], init),
            pos_embed: p.var("pos_embed", &[1, n + 1, d], init),
            patch_embed: PatchEmbed::new(&(p / "patch_embed"), cfg.in_chans, d, cfg.patch_size),
            blocks,
            norm: layer_norm(p / "norm", d, cfg.layer_norm_eps),
            cfg: cfg.clone(),
        }
    }

    /// The embedded tokens before the blocks: `[cls; patches] + pos_embed` (interpolated when
    /// the image grid differs from the table's).
    pub fn embed(&self, images: &Tensor) -> Tensor {
        let (x, grid) = self.patch_embed.forward(images);
        let b = x.size()[0];
        let cls = self.cls_token.expand([b, -1, -1], false);
        let pos = interpolate_pos_embed(&self.pos_embed, 1, grid);
        Tensor::cat(&[cls, x], 1) + pos
    }

    /// `[B, 3, H, W]` → `[B, 1 + N, D]` after the final norm.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let mut x = self.embed(images);
        for b in &self.blocks {
            x = b.forward_t(&x, None, train);
        }
        x.apply(&self.norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn interpolation_keeps_cls_and_is_identity_on_same_grid() {
        let pe = Tensor::randn([1, 1 + 16, 8], (Kind::Float, Device::Cpu));
        assert!(interpolate_pos_embed(&pe, 1, (4, 4)).equal(&pe));
        let up = interpolate_pos_embed(&pe, 1, (6, 6));
        assert_eq!(up.size(), vec![1, 37, 8]);
        assert!(up.narrow(1, 0, 1).equal(&pe.narrow(1, 0, 1)));
        // a constant grid stays constant under bicubic resampling
        let c = Tensor::ones([1, 17, 2], (Kind::Float, Device::Cpu));
        let r = interpolate_pos_embed(&c, 1, (3, 3));
        assert!(r.allclose(
            &Tensor::ones([1, 10, 2], (Kind::Float, Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
    }

    #[test]
    fn pi_resize_halves_a_kernel_into_its_block_sums_and_keeps_the_patch_response() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([5, 3, 8, 8], opts);
        assert!(resize_patch_kernel(&w, 8).equal(&w));
        let r = resize_patch_kernel(&w, 4);
        assert_eq!(r.size(), vec![5, 3, 4, 4]);
        // 8 → 4: the sum of each 2×2 block.
        let sums = w.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>) * 4.0;
        assert!(r.allclose(&sums, 1e-4, 1e-5, false), "{r} vs {sums}");
        // A patch that is constant on 2×2 blocks gives the same response through the old kernel
        // and, downsampled, through the new one: ⟨x, w⟩ = ⟨B x, ŵ⟩.
        let small = Tensor::randn([2, 3, 4, 4], opts);
        let x = small.upsample_nearest2d([8, 8], None, None);
        let old = x.conv2d(&w, None::<Tensor>, [8, 8], [0, 0], [1, 1], 1);
        let new = small.conv2d(&r, None::<Tensor>, [4, 4], [0, 0], [1, 1], 1);
        assert!(old.allclose(&new, 1e-4, 1e-4, false));
        // Upsizing (4 → 8) keeps the response of every 4×4 patch to its bilinear upsampling.
        let up = resize_patch_kernel(&r, 8);
        let xs = Tensor::randn([2, 3, 4, 4], opts);
        let xb = xs.upsample_bilinear2d([8, 8], false, None, None);
        let a = xs.conv2d(&r, None::<Tensor>, [4, 4], [0, 0], [1, 1], 1);
        let b = xb.conv2d(&up, None::<Tensor>, [8, 8], [0, 0], [1, 1], 1);
        assert!(a.allclose(&b, 1e-3, 1e-3, false), "{a} vs {b}");
    }

    #[test]
    fn vit_runs_at_other_resolutions_and_names_keys_like_timm() {
        let vs = VarStore::new(Device::Cpu);
        let vit = VisionTransformer::new(&(vs.root() / "visual_encoder"), &VitConfig::tiny());
        let keys = vs.variables();
        for k in [
            "visual_encoder.cls_token",
            "visual_encoder.pos_embed",
            "visual_encoder.patch_embed.proj.weight",
            "visual_encoder.blocks.1.attn.qkv.bias",
            "visual_encoder.blocks.1.attn.proj.weight",
            "visual_encoder.blocks.0.mlp.fc2.bias",
            "visual_encoder.norm.weight",
        ] {
            assert!(keys.contains_key(k), "missing {k}");
        }
        let y = vit.forward_t(
            &Tensor::randn([2, 3, 48, 48], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![2, 10, 32]);
    }
}
