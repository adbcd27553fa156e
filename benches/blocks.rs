//! Criterion benches of the shared blocks on CPU at tiny and base sizes: attention, the BERT
//! layer (with and without cross-attention), the ViT block and the VLMo multiway block.
//! Run: `source scripts/env.sh && cargo bench --bench blocks`.
use criterion::{criterion_group, criterion_main, Criterion};
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::attention::{AttentionConfig, MultiHeadAttention, QkvLayout};
use vlp_core::layers::bert::{BertConfig, BertLayer, CrossInput};
use vlp_core::layers::multiway::{Modality, MomeBlock, MomeBlockConfig};
use vlp_core::layers::vit::{VitBlock, VitBlockConfig};
use vlp_core::layers::Activation;

struct Size {
    name: &'static str,
    dim: i64,
    heads: i64,
    batch: i64,
    text_len: i64,
    img_tokens: i64,
}

const SIZES: &[Size] = &[
    Size {
        name: "tiny",
        dim: 64,
        heads: 4,
        batch: 2,
        text_len: 16,
        img_tokens: 17,
    },
    Size {
        name: "base",
        dim: 768,
        heads: 12,
        batch: 2,
        text_len: 30,
        img_tokens: 197,
    },
];

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    let _guard = tch::no_grad_guard();
    let mut g = c.benchmark_group("blocks");
    g.sample_size(10);
    for s in SIZES {
        let vs = VarStore::new(Device::Cpu);
        let att = MultiHeadAttention::new(
            &vs.root(),
            &AttentionConfig::new(s.dim, s.heads, QkvLayout::Fused { bias: true }),
        );
        let img = randn(&[s.batch, s.img_tokens, s.dim]);
        g.bench_function(format!("attention/{}", s.name), |b| {
            b.iter(|| att.forward_t(&img, None, None, false))
        });

        let mut bc = BertConfig {
            hidden_size: s.dim,
            num_attention_heads: s.heads,
            intermediate_size: 4 * s.dim,
            ..Default::default()
        };
        bc.encoder_width = Some(s.dim);
        let layer = BertLayer::new(&(vs.root() / "bert"), &bc.layer_config(true));
        let txt = randn(&[s.batch, s.text_len, s.dim]);
        g.bench_function(format!("bert_layer/{}", s.name), |b| {
            b.iter(|| layer.forward_t(&txt, None, None, false))
        });
        g.bench_function(format!("bert_layer_cross/{}", s.name), |b| {
            b.iter(|| {
                layer.forward_t(
                    &txt,
                    None,
                    Some(CrossInput {
                        states: &img,
                        mask: None,
                    }),
                    false,
                )
            })
        });

        let vit = VitBlock::new(
            &(vs.root() / "vit"),
            &VitBlockConfig {
                dim: s.dim,
                num_heads: s.heads,
                mlp_hidden: 4 * s.dim,
                qkv: QkvLayout::Fused { bias: true },
                eps: 1e-6,
                layer_scale: None,
                drop_path: 0.0,
                act: Activation::Gelu,
                init_std: vlp_core::layers::INIT_STD,
            },
        );
        g.bench_function(format!("vit_block/{}", s.name), |b| {
            b.iter(|| vit.forward_t(&img, None, false))
        });

        let mome = MomeBlock::new(
            &(vs.root() / "mome"),
            &MomeBlockConfig {
                dim: s.dim,
                num_heads: s.heads,
                mlp_hidden: 4 * s.dim,
                eps: 1e-6,
                layer_scale: Some(0.1),
                drop_path: 0.0,
                with_vl_ffn: true,
            },
        );
        let joint = Tensor::cat(&[&txt, &img], 1);
        g.bench_function(format!("mome_block_split/{}", s.name), |b| {
            b.iter(|| {
                mome.forward_t(
                    &joint,
                    None,
                    Modality::Split {
                        text_len: s.text_len,
                    },
                    false,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
