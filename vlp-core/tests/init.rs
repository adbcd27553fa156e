//! Training from scratch starts where the official code starts: Linear weights N(0, 0.02²) with
//! zero biases (BERT's `initializer_range`, timm's `trunc_normal_(std=.02)`), the ViT patch
//! projection at PyTorch's Conv2d default (uniform in ±1/√fan_in) — not tch's Kaiming-uniform
//! default, six times wider. The ViT's optional mimetic initialisation (`VitInit::Mimetic`) gives
//! its attention the structure the paper prescribes and leaves everything else official.
use tch::{nn, Device, Kind, Tensor};
use vlp_core::attention::{AttentionConfig, MultiHeadAttention, QkvLayout};
use vlp_core::layers::vit::{PatchEmbed, VisionTransformer, VitConfig, VitInit, MIMETIC};
use vlp_core::layers::{linear, linear_no_bias, INIT_STD};

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

fn vit_with(init: VitInit) -> (nn::VarStore, VitConfig) {
    vit_with_std(init, INIT_STD)
}

fn vit_with_std(init: VitInit, init_std: f64) -> (nn::VarStore, VitConfig) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 128,
        depth: 2,
        num_heads: 4,
        init,
        init_std,
        ..VitConfig::default()
    };
    let _vit = VisionTransformer::new(&(vs.root() / "visual_encoder"), &cfg);
    (vs, cfg)
}

fn var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()
        .remove(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_kind(Kind::Double)
}

#[test]
fn the_vit_keeps_the_official_initialisation_unless_asked() {
    let (vs, _) = vit_with(VitInit::Official);
    for b in 0..2 {
        for n in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"] {
            let w = var(&vs, &format!("visual_encoder.blocks.{b}.{n}.weight"));
            let s = std_of(&w);
            assert!((s - INIT_STD).abs() < 0.002, "block {b} {n}: std {s}");
        }
    }
}

#[test]
fn mimetic_initialisation_gives_the_attention_its_target_structure() {
    let [a1, b1, a2, b2] = MIMETIC;
    let (vs, cfg) = vit_with(VitInit::Mimetic);
    let d = cfg.embed_dim;
    let hd = d / cfg.num_heads;
    let eye = Tensor::eye(d, (Kind::Double, Device::Cpu));
    for b in 0..2 {
        let qkv = var(&vs, &format!("visual_encoder.blocks.{b}.attn.qkv.weight"));
        let proj = var(&vs, &format!("visual_encoder.blocks.{b}.attn.proj.weight"));
        // Value then output projection: x ↦ x W_vᵀ W_projᵀ = x (α₂Z − β₂I) exactly, Z ~ N(0, 1/D).
        let m = qkv
            .narrow(0, 2 * d, d)
            .transpose(0, 1)
            .matmul(&proj.transpose(0, 1));
        let z = (&m + &eye * b2) * ((d as f64).sqrt() / a2);
        let (mean, s) = (z.mean(Kind::Double).double_value(&[]), std_of(&z));
        assert!(
            mean.abs() < 0.02 && (s - 1.0).abs() < 0.03,
            "block {b} value: Z mean {mean} std {s}"
        );
        // Each head: W_qᵀ W_k is the best rank-hd approximation of α₁Z + β₁I: rank hd, and its
        // trace carries the identity part (β₁·D·hd/D on average, ~0 for the official init).
        for h in 0..cfg.num_heads {
            let wq = qkv.narrow(0, h * hd, hd);
            let wk = qkv.narrow(0, d + h * hd, hd);
            let p = wq.transpose(0, 1).matmul(&wk);
            let sv = p.svd(true, false).1;
            let tail = sv.narrow(0, hd, d - hd).max().double_value(&[]);
            assert!(tail < 1e-9, "block {b} head {h}: rank above {hd} ({tail})");
            let tr = p.trace().double_value(&[]);
            let want = b1 * hd as f64;
            assert!(
                tr > 0.5 * want && tr < 2.0 * want,
                "block {b} head {h}: trace {tr}, identity part {want} (α₁ {a1})"
            );
        }
        // The MLP keeps the official initialisation.
        let fc1 = var(&vs, &format!("visual_encoder.blocks.{b}.mlp.fc1.weight"));
        assert!((std_of(&fc1) - INIT_STD).abs() < 0.002);
    }
}

#[test]
fn bert_layers_start_at_the_configured_initializer_range() {
    // HF's `_init_weights`: every Linear of the text side N(0, initializer_range²), biases zero
    // (self- and cross-attention, their output dense, the FFN), and the embeddings too.
    use vlp_core::layers::bert::{BertConfig, BertEmbeddings, BertEncoder};
    for range in [INIT_STD, 0.12] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = BertConfig {
            hidden_size: 128,
            num_attention_heads: 4,
            intermediate_size: 256,
            num_hidden_layers: 2,
            fusion_layer: Some(1),
            encoder_width: Some(96),
            initializer_range: range,
            ..BertConfig::tiny()
        };
        cfg.validate().unwrap();
        let _enc = BertEncoder::new(&(vs.root() / "encoder"), &cfg);
        let _emb = BertEmbeddings::new(&(vs.root() / "embeddings"), &cfg, false);
        let vars = vs.variables();
        assert!(vars.contains_key("encoder.layer.1.crossattention.self.key.weight"));
        let mut weights = 0;
        for (name, w) in vars {
            if name.contains("LayerNorm") {
                continue;
            }
            if name.ends_with("weight") {
                let s = std_of(&w);
                assert!(
                    (s - range).abs() < 0.1 * range,
                    "{name}: std {s}, want {range}"
                );
                weights += 1;
            } else if name.ends_with("bias") {
                assert_eq!(abs_max(&w), 0.0, "{name}");
            }
        }
        // 2 × (q, k, v, dense, intermediate, output) + 4 cross-attention + 3 embeddings.
        assert_eq!(weights, 19);
    }
    let bad = BertConfig {
        initializer_range: 0.0,
        ..BertConfig::tiny()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("initializer_range"), "{e}");
}

#[test]
fn the_vit_blocks_start_at_the_configured_std() {
    let build = |init, init_std| vit_with_std(init, init_std).0;
    for init in [VitInit::Official, VitInit::Mimetic] {
        let vs = build(init, 0.3);
        let narrow = build(init, INIT_STD).variables();
        let mut checked = 0;
        for (name, w) in vs.variables() {
            if !(name.contains(".blocks.") && name.ends_with("weight") && !name.contains("norm")) {
                continue;
            }
            let s = std_of(&w);
            if init == VitInit::Mimetic && name.contains(".attn.") {
                // The mimetic rule sets the attention whatever the std (its scale comes from
                // the width alone).
                let n = std_of(&narrow[&name]);
                assert!((s - n).abs() < 0.2 * n, "{name}: std {s} vs {n} at 0.02");
            } else {
                assert!((s - 0.3).abs() < 0.03, "{name}: std {s}, want 0.3");
            }
            checked += 1;
        }
        assert_eq!(checked, 8, "qkv, proj, fc1, fc2 of two blocks");
        // The class token and position table keep timm's initialisation.
        assert!(std_of(&var(&vs, "visual_encoder.pos_embed")) < 0.03);
    }
}
