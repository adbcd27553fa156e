//! Criterion benches of the shared blocks on CPU at tiny and base sizes: attention, the BERT
//! layer (with and without cross-attention), the ViT block and the VLMo multiway block; and one
//! training step (forward + backward) of a fusion layer over many texts per image, the images
//! gathered per text before the layer against shared through `CrossInput::rows`.
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
                        rows: None,
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

/// 128 questions about 8 images (16 each), the quickstart's easy-VQA step at the `small` preset:
/// forward + backward of a cross-attention BERT layer.
fn bench_shared_images(c: &mut Criterion) {
    tch::set_num_threads(2);
    let mut g = c.benchmark_group("fusion_step_16_texts_per_image");
    g.sample_size(10);
    let (dim, heads, images, per_image, text_len, img_tokens) = (128, 4, 8, 16, 12, 65);
    let vs = VarStore::new(Device::Cpu);
    let mut bc = BertConfig {
        hidden_size: dim,
        num_attention_heads: heads,
        intermediate_size: 4 * dim,
        ..Default::default()
    };
    bc.encoder_width = Some(dim);
    let layer = BertLayer::new(&vs.root(), &bc.layer_config(true));
    let txt = randn(&[images * per_image, text_len, dim]);
    let img = randn(&[images, img_tokens, dim]).set_requires_grad(true);
    let rows = Tensor::arange(images, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(
        per_image,
        None::<i64>,
        None::<i64>,
    );
    let step = |cross: CrossInput| {
        let y = layer.forward_t(&txt, None, Some(cross), true);
        y.sum(Kind::Float).backward();
    };
    g.bench_function("gathered_before", |b| {
        b.iter(|| {
            let per_text = img.index_select(0, &rows);
            step(CrossInput::new(&per_text, None))
        })
    });
    g.bench_function("shared_rows", |b| {
        b.iter(|| step(CrossInput::gathered(&img, Some(&rows))))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_shared_images);
criterion_main!(benches);
