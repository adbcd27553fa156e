//! Training from scratch starts where the official code starts: Linear weights N(0, 0.02²) with
//! zero biases (BERT's `initializer_range`, timm's `trunc_normal_(std=.02)`), the ViT patch
//! projection at PyTorch's Conv2d default (uniform in ±1/√fan_in) — not tch's Kaiming-uniform
//! default, six times wider.
use tch::{nn, Device, Kind, Tensor};
use vlp_core::attention::{AttentionConfig, MultiHeadAttention, QkvLayout};
use vlp_core::layers::{linear, linear_no_bias, vit::PatchEmbed, INIT_STD};

fn std_of(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).std(true).double_value(&[])
}

fn abs_max(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn linears_and_attention_start_at_the_official_initialisation() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let a = linear(&root / "a", 256, 256);
    let b = linear_no_bias(&root / "b", 256, 512);
    let attn = MultiHeadAttention::new(
        &(&root / "attn"),
        &AttentionConfig::new(128, 4, QkvLayout::bert()),
    );
    let fused = MultiHeadAttention::new(
        &(&root / "fused"),
        &AttentionConfig::new(128, 4, QkvLayout::Fused { bias: true }),
    );
    let _ = (attn, fused);
    for (name, w) in vs.variables() {
        if name.ends_with("weight") {
            let s = std_of(&w);
            assert!((s - INIT_STD).abs() < 0.002, "{name}: std {s}");
        } else if name.ends_with("bias") {
            assert_eq!(abs_max(&w), 0.0, "{name}");
        }
    }
    assert!(a.bs.is_some() && b.bs.is_none());
}

#[test]
fn the_patch_projection_starts_at_pytorch_conv_default() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _pe = PatchEmbed::new(&(vs.root() / "patch_embed"), 3, 128, 8);
    let bound = 1.0 / ((3 * 8 * 8) as f64).sqrt();
    for (name, w) in vs.variables() {
        let m = abs_max(&w);
        assert!(
            m <= bound && m > 0.9 * bound,
            "{name}: |w| max {m}, bound {bound}"
        );
    }
}
