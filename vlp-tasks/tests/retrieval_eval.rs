//! The retrieval evaluator against a brute-force N×N scorer, with a mock model on a tiny gallery:
//! same score matrices and ranks when k ≥ N, and the counted fused passes at smaller k.
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use tch::{Kind, Tensor};
use vlp_core::image::{ImageTransform, ImageTransformConfig, Normalize};
use vlp_core::Result;
use vlp_tasks::data::karpathy::RetrievalGallery;
use vlp_tasks::data::loader::LoaderConfig;
use vlp_tasks::eval::retrieval::{
    brute_force_scores, evaluate, evaluate_gallery, itc_matrix, Fusion, RetrievalEvalConfig,
    RetrievalModel, NOT_RERANKED,
};
use vlp_tasks::metrics::retrieval::{itm_eval, top_k, ScoreMatrix};

/// A model with fixed random unimodal features and an ITM score that favours ground-truth pairs
/// and disagrees with ITC elsewhere; it counts the pairs it is asked to score.
struct Mock {
    img: Tensor,
    txt: Tensor,
    itm: Vec<Vec<f64>>,
    pairs: u64,
    calls: u64,
    max_batch: usize,
    scored: Vec<(usize, usize)>,
}

impl Mock {
    fn new(ni: usize, nt: usize, txt2img: &[usize]) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut feats = |n: usize| {
            let v: Vec<f32> = (0..n * 8).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let t = Tensor::from_slice(&v).view([n as i64, 8]);
            &t / t.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        };
        let img = feats(ni);
        let txt = feats(nt);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let itm = (0..ni)
            .map(|i| {
                (0..nt)
                    .map(|t| rng.gen_range(-2.0..2.0) + if txt2img[t] == i { 1.5 } else { 0.0 })
                    .collect()
            })
            .collect();
        Mock {
            img,
            txt,
            itm,
            pairs: 0,
            calls: 0,
            max_batch: 0,
            scored: Vec::new(),
        }
    }
}

impl RetrievalModel for Mock {
    fn encode_images(&mut self, ids: &[usize], pixels: &Tensor) -> Result<Tensor> {
        assert_eq!(pixels.size()[0], ids.len() as i64);
        let idx = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
        Ok(self.img.index_select(0, &idx))
    }
    fn encode_texts(&mut self, ids: &[usize], texts: &[String]) -> Result<Tensor> {
        assert_eq!(ids.len(), texts.len());
        let idx = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
        Ok(self.txt.index_select(0, &idx))
    }
    fn itm_scores(&mut self, image_idx: &[usize], text_idx: &[usize]) -> Result<Vec<f64>> {
        self.calls += 1;
        self.pairs += image_idx.len() as u64;
        self.max_batch = self.max_batch.max(image_idx.len());
        self.scored
            .extend(image_idx.iter().copied().zip(text_idx.iter().copied()));
        Ok(image_idx
            .iter()
            .zip(text_idx)
            .map(|(&i, &t)| self.itm[i][t])
            .collect())
    }
}

/// 7 images, 12 texts (1 or 2 per image).
fn gallery() -> (Vec<Vec<usize>>, Vec<usize>, Vec<String>) {
    let per_image = [2, 1, 2, 2, 1, 2, 2];
    let (mut img2txt, mut txt2img) = (Vec::new(), Vec::new());
    for (i, &n) in per_image.iter().enumerate() {
        img2txt.push((txt2img.len()..txt2img.len() + n).collect());
        txt2img.extend(std::iter::repeat_n(i, n));
    }
    let texts = (0..txt2img.len()).map(|t| format!("text {t}")).collect();
    (img2txt, txt2img, texts)
}

fn image_batches(ni: usize, bs: usize) -> Vec<Result<(Vec<usize>, Tensor)>> {
    (0..ni)
        .step_by(bs)
        .map(|s| {
            let ids: Vec<usize> = (s..(s + bs).min(ni)).collect();
            Ok((
                ids.clone(),
                Tensor::zeros([ids.len() as i64, 3, 4, 4], (Kind::Float, tch::Device::Cpu)),
            ))
        })
        .collect()
}

fn brute(m: &mut Mock, fusion: Fusion) -> ScoreMatrix {
    let (img, txt) = (m.img.shallow_clone(), m.txt.shallow_clone());
    let itc = itc_matrix(m, &img, &txt).unwrap();
    brute_force_scores(m, &itc, fusion).unwrap()
}

#[test]
fn k_at_least_n_gives_the_brute_force_ranks() {
    let (img2txt, txt2img, texts) = gallery();
    let (ni, nt) = (img2txt.len(), texts.len());
    for fusion in [Fusion::ItmOnly, Fusion::ItmPlusItc, Fusion::ItcOnly] {
        let mut m = Mock::new(ni, nt, &txt2img);
        let mut cfg = RetrievalEvalConfig::new(20, fusion);
        cfg.itm_batch_size = 10;
        cfg.text_batch_size = 5;
        let r = evaluate(
            &mut m,
            image_batches(ni, 3),
            &texts,
            &img2txt,
            &txt2img,
            &cfg,
        )
        .unwrap();
        let (passes, max_batch) = (m.pairs, m.max_batch);
        assert!(max_batch <= 10);
        let b = brute(&mut m, fusion);
        assert_eq!(r.i2t, b, "{fusion:?}");
        assert_eq!(r.t2i, b.transpose(), "{fusion:?}");
        let want = itm_eval(&b, &b.transpose(), &img2txt, &txt2img).unwrap();
        assert_eq!(r.metrics, want, "{fusion:?}");
        // Every pair both ways: N_img·N_txt + N_txt·N_img fused passes (none for ITC only).
        let expected = if fusion == Fusion::ItcOnly {
            0
        } else {
            2 * (ni * nt) as u64
        };
        assert_eq!((r.fused_passes, passes), (expected, expected), "{fusion:?}");
    }
}

#[test]
fn smaller_k_costs_n_times_k_fused_passes() {
    let (img2txt, txt2img, texts) = gallery();
    let (ni, nt) = (img2txt.len(), texts.len());
    let k = 3;
    let mut m = Mock::new(ni, nt, &txt2img);
    let mut cfg = RetrievalEvalConfig::new(k, Fusion::ItmPlusItc);
    cfg.itm_batch_size = 4;
    let r = evaluate(
        &mut m,
        image_batches(ni, 4),
        &texts,
        &img2txt,
        &txt2img,
        &cfg,
    )
    .unwrap();
    // N_img·k + N_txt·k = 7·3 + 12·3.
    assert_eq!(r.fused_passes, (ni * k + nt * k) as u64);
    assert_eq!(m.pairs, 57);
    // Batches of at most 4 pairs, flushed at the end of each direction: ⌈21/4⌉ + ⌈36/4⌉.
    assert_eq!(m.calls, 6 + 9);
    assert!(m.max_batch <= 4);
    // The reranked pairs are the ITC top-k of each query, scored ITM + ITC; the rest keep −100.
    let (img, txt) = (m.img.shallow_clone(), m.txt.shallow_clone());
    let itc = itc_matrix(&mut m, &img, &txt).unwrap();
    for i in 0..ni {
        let top = top_k(itc.row(i), k);
        for t in 0..nt {
            let v = r.i2t.get(i, t);
            if top.contains(&t) {
                assert_eq!(v, m.itm[i][t] + itc.get(i, t));
            } else {
                assert_eq!(v, NOT_RERANKED);
            }
        }
    }
    let itct = itc.transpose();
    for t in 0..nt {
        let top = top_k(itct.row(t), k);
        assert_eq!(
            (0..ni).filter(|&i| r.t2i.get(t, i) != NOT_RERANKED).count(),
            k
        );
        assert!(top
            .iter()
            .all(|&i| r.t2i.get(t, i) == m.itm[i][t] + itc.get(i, t)));
    }
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["fused_passes"], 57);
    assert_eq!(j["fusion"], "itm_plus_itc");
    assert!(j["r_mean"].is_number() && j["txt_r10"].is_number());
}

#[test]
fn evaluates_a_gallery_of_real_images_through_the_loader() {
    let ev = vlp_tasks::data::easy_vqa::EasyVqa::package().unwrap();
    let files: Vec<PathBuf> = ev
        .image_files(vlp_tasks::data::easy_vqa::Split::Test)
        .unwrap()
        .into_iter()
        .take(6)
        .map(|(_, p)| p)
        .collect();
    let g = RetrievalGallery {
        images: files,
        texts: (0..12).map(|t| format!("caption {t}")).collect(),
        img2txt: (0..6).map(|i| vec![2 * i, 2 * i + 1]).collect(),
        txt2img: (0..12).map(|t| t / 2).collect(),
    };
    let mut m = Mock::new(6, 12, &g.txt2img);
    let t = ImageTransform::new(ImageTransformConfig::eval(16, Normalize::default())).unwrap();
    let mut lc = LoaderConfig::new(4);
    lc.num_workers = 2;
    let mut cfg = RetrievalEvalConfig::new(2, Fusion::ItmOnly);
    cfg.progress = true;
    let r = evaluate_gallery(&mut m, &g, t, &lc, &cfg).unwrap();
    assert_eq!(r.fused_passes, 6 * 2 + 12 * 2);
    assert!(r.metrics.r_mean >= 0.0 && r.metrics.r_mean <= 100.0);
    let dir = std::env::temp_dir().join(format!("vlp-tasks-retrieval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("retrieval.json");
    r.write_json(&out).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(j["txt_r1"].as_f64(), Some(r.metrics.txt_r1));
    std::fs::remove_dir_all(&dir).ok();
}
