//! A model-agnostic image–text retrieval evaluator, as ALBEF / BLIP / VLMo / BEiT-3 evaluate
//! retrieval: unimodal features for every image and text, the ITC similarity matrix, the top-`k`
//! candidates of every query by ITC, a batched ITM rerank of those candidates, and a fusion rule
//! that turns ITC and ITM into the final score ([`Fusion`]). Candidates outside the top `k` keep
//! the score −100 (ALBEF's fill value). Then `itm_eval` ([`crate::metrics::retrieval`]).
//!
//! Cost: `N_img · min(k, N_txt) + N_txt · min(k, N_img)` fused (ITM) passes, counted in
//! [`RetrievalReport::fused_passes`]; [`Fusion::ItcOnly`] needs none.
use crate::data::karpathy::{GalleryImages, RetrievalGallery};
use crate::data::loader::{stack_images, DataLoader, LoaderConfig};
use crate::metrics::retrieval::{itm_eval, top_k, RetrievalMetrics, ScoreMatrix};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// What a model offers the retrieval evaluator.
///
/// Indices are gallery indices (image `i` of `N_img`, text `t` of `N_txt`). A model keeps
/// whatever its ITM head needs (image tokens, text ids) from the `encode_*` calls.
pub trait RetrievalModel {
    /// Unimodal (projected, normalised) features `[B, D]` of a batch of images: `ids` are their
    /// gallery indices, `pixels` the transformed images `[B, 3, H, W]`.
    fn encode_images(&mut self, ids: &[usize], pixels: &Tensor) -> Result<Tensor>;
    /// Unimodal features `[B, D]` of a batch of texts (`ids` are their gallery indices).
    fn encode_texts(&mut self, ids: &[usize], texts: &[String]) -> Result<Tensor>;
    /// The ITC similarity `[N_img, N_txt]` of all image and text features (default: the dot
    /// product, as ALBEF/BLIP's `image_feat @ text_feat.t()`).
    fn itc_similarity(&mut self, image_feats: &Tensor, text_feats: &Tensor) -> Result<Tensor> {
        Ok(image_feats.matmul(&text_feats.tr()))
    }
    /// ITM scores (the positive-class logit for ALBEF/BLIP) of the pairs
    /// `(image_idx[j], text_idx[j])`, one fused pass each, in one batch.
    fn itm_scores(&mut self, image_idx: &[usize], text_idx: &[usize]) -> Result<Vec<f64>>;
}

/// How ITC and ITM make the final score of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// The ITM score alone (ALBEF).
    ItmOnly,
    /// ITM score + ITC similarity (BLIP, VLMo).
    ItmPlusItc,
    /// The ITC similarity alone, no rerank (BEiT-3).
    ItcOnly,
}

impl Fusion {
    /// The final score of a candidate.
    pub fn fuse(self, itc: f64, itm: f64) -> f64 {
        match self {
            Fusion::ItmOnly => itm,
            Fusion::ItmPlusItc => itm + itc,
            Fusion::ItcOnly => itc,
        }
    }
}

/// Evaluator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalEvalConfig {
    /// Candidates reranked per query (`k_test`: 256 in ALBEF/BLIP COCO configs, 128 Flickr).
    pub k: usize,
    /// The fusion rule.
    pub fusion: Fusion,
    /// Pairs per ITM batch.
    #[serde(default = "default_itm_batch")]
    pub itm_batch_size: usize,
    /// Texts per encoding batch.
    #[serde(default = "default_text_batch")]
    pub text_batch_size: usize,
    /// Show progress bars on stderr.
    #[serde(default)]
    pub progress: bool,
}

fn default_itm_batch() -> usize {
    128
}
fn default_text_batch() -> usize {
    256
}

impl RetrievalEvalConfig {
    /// Settings with `k` and `fusion`, default batch sizes, no progress bars.
    pub fn new(k: usize, fusion: Fusion) -> Self {
        RetrievalEvalConfig {
            k,
            fusion,
            itm_batch_size: default_itm_batch(),
            text_batch_size: default_text_batch(),
            progress: false,
        }
    }
}

/// The evaluator's result; serialises as the metrics plus `fused_passes`, `k`, `fusion`.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    /// `txt_r1` … `r_mean`.
    #[serde(flatten)]
    pub metrics: RetrievalMetrics,
    /// ITM passes run.
    pub fused_passes: u64,
    /// `k` asked for.
    pub k: usize,
    /// The fusion rule.
    pub fusion: Fusion,
    /// Final image→text scores `[N_img, N_txt]`.
    #[serde(skip)]
    pub i2t: ScoreMatrix,
    /// Final text→image scores `[N_txt, N_img]`.
    #[serde(skip)]
    pub t2i: ScoreMatrix,
}

impl RetrievalReport {
    /// Writes the JSON of the report (metrics with their ALBEF names).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| VlpError::Msg(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| VlpError::io(path, e))
    }
}

/// ALBEF's fill value for candidates that are not reranked.
pub const NOT_RERANKED: f64 = -100.0;

fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b
}

fn to_matrix(t: &Tensor) -> Result<ScoreMatrix> {
    let size = t.size();
    if size.len() != 2 {
        return Err(VlpError::input(
            "itc_similarity",
            format!("expected [N_img, N_txt], got {size:?}"),
        ));
    }
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous()
        .view([-1]);
    let data = Vec::<f64>::try_from(&flat)?;
    Ok(ScoreMatrix {
        rows: size[0] as usize,
        cols: size[1] as usize,
        data,
    })
}

/// Runs ITM on pending pairs and writes the fused scores.
struct Reranker<'a, M: RetrievalModel> {
    model: &'a mut M,
    fusion: Fusion,
    batch: usize,
    pending: Vec<(usize, usize)>,
    passes: u64,
}

impl<M: RetrievalModel> Reranker<'_, M> {
    /// Scores `pairs` (image, text) and writes `fuse(itc, itm)` into `out` at (row, col) given by
    /// `pos(image, text)`.
    fn flush(&mut self, sim: &ScoreMatrix, out: &mut ScoreMatrix, transpose: bool) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (imgs, txts): (Vec<usize>, Vec<usize>) = self.pending.iter().copied().unzip();
        let scores = self.model.itm_scores(&imgs, &txts)?;
        if scores.len() != imgs.len() {
            return Err(VlpError::input(
                "itm_scores",
                format!("{} scores for {} pairs", scores.len(), imgs.len()),
            ));
        }
        self.passes += imgs.len() as u64;
        for ((i, t), s) in self.pending.drain(..).zip(scores) {
            let v = self.fusion.fuse(sim.get(i, t), s);
            if transpose {
                out.set(t, i, v);
            } else {
                out.set(i, t, v);
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        pair: (usize, usize),
        sim: &ScoreMatrix,
        out: &mut ScoreMatrix,
        transpose: bool,
    ) -> Result<()> {
        self.pending.push(pair);
        if self.pending.len() >= self.batch {
            self.flush(sim, out, transpose)?;
        }
        Ok(())
    }
}

/// Evaluates retrieval: `image_batches` yields `(gallery indices, pixels [B, 3, H, W])` covering
/// every image once; `texts` are all texts in gallery order.
pub fn evaluate<M: RetrievalModel>(
    model: &mut M,
    image_batches: impl IntoIterator<Item = Result<(Vec<usize>, Tensor)>>,
    texts: &[String],
    img2txt: &[Vec<usize>],
    txt2img: &[usize],
    cfg: &RetrievalEvalConfig,
) -> Result<RetrievalReport> {
    let (ni, nt) = (img2txt.len(), texts.len());
    if ni == 0 || nt == 0 {
        return Err(VlpError::input("gallery", "no images or no texts"));
    }
    if cfg.k == 0 || cfg.itm_batch_size == 0 || cfg.text_batch_size == 0 {
        return Err(VlpError::Config {
            path: "<retrieval eval>".into(),
            msg: "k and the batch sizes must be positive".into(),
        });
    }
    // Unimodal features.
    let pb = bar(cfg.progress, ni as u64, "images");
    let mut image_feats: Vec<Option<Tensor>> = (0..ni).map(|_| None).collect();
    for b in image_batches {
        let (ids, pixels) = b?;
        let f = model.encode_images(&ids, &pixels)?;
        if f.size().first().copied() != Some(ids.len() as i64) {
            return Err(VlpError::input(
                "encode_images",
                format!("{:?} features for {} images", f.size(), ids.len()),
            ));
        }
        for (j, &i) in ids.iter().enumerate() {
            if i >= ni {
                return Err(VlpError::input(
                    "image_batches",
                    format!("image index {i} out of range ({ni} images)"),
                ));
            }
            image_feats[i] = Some(f.get(j as i64));
        }
        pb.inc(ids.len() as u64);
    }
    pb.finish_and_clear();
    if let Some(i) = image_feats.iter().position(Option::is_none) {
        return Err(VlpError::input(
            "image_batches",
            format!("image {i} was never encoded"),
        ));
    }
    let image_feats = Tensor::stack(&image_feats.into_iter().flatten().collect::<Vec<_>>(), 0);
    let pb = bar(cfg.progress, nt as u64, "texts");
    let mut text_feats = Vec::new();
    for start in (0..nt).step_by(cfg.text_batch_size) {
        let end = (start + cfg.text_batch_size).min(nt);
        let ids: Vec<usize> = (start..end).collect();
        text_feats.push(model.encode_texts(&ids, &texts[start..end])?);
        pb.inc((end - start) as u64);
    }
    pb.finish_and_clear();
    let text_feats = Tensor::cat(&text_feats, 0);
    let sim = to_matrix(&model.itc_similarity(&image_feats, &text_feats)?)?;
    if sim.rows != ni || sim.cols != nt {
        return Err(VlpError::input(
            "itc_similarity",
            format!("{}x{}, expected {ni}x{nt}", sim.rows, sim.cols),
        ));
    }
    let (i2t, t2i, passes) = if cfg.fusion == Fusion::ItcOnly {
        (sim.clone(), sim.transpose(), 0)
    } else {
        let mut i2t = ScoreMatrix::filled(ni, nt, NOT_RERANKED);
        let mut t2i = ScoreMatrix::filled(nt, ni, NOT_RERANKED);
        let mut rr = Reranker {
            model,
            fusion: cfg.fusion,
            batch: cfg.itm_batch_size,
            pending: Vec::new(),
            passes: 0,
        };
        let pb = bar(cfg.progress, (ni + nt) as u64, "ITM rerank");
        for i in 0..ni {
            for t in top_k(sim.row(i), cfg.k.min(nt)) {
                rr.push((i, t), &sim, &mut i2t, false)?;
            }
            pb.inc(1);
        }
        rr.flush(&sim, &mut i2t, false)?;
        let simt = sim.transpose();
        for t in 0..nt {
            for i in top_k(simt.row(t), cfg.k.min(ni)) {
                rr.push((i, t), &sim, &mut t2i, true)?;
            }
            pb.inc(1);
        }
        rr.flush(&sim, &mut t2i, true)?;
        pb.finish_and_clear();
        (i2t, t2i, rr.passes)
    };
    let metrics = itm_eval(&i2t, &t2i, img2txt, txt2img)?;
    Ok(RetrievalReport {
        metrics,
        fused_passes: passes,
        k: cfg.k,
        fusion: cfg.fusion,
        i2t,
        t2i,
    })
}

/// Evaluates retrieval on a gallery, decoding its images with `transform` on the loader's
/// worker threads (no shuffling).
pub fn evaluate_gallery<M: RetrievalModel>(
    model: &mut M,
    gallery: &RetrievalGallery,
    transform: ImageTransform,
    loader: &LoaderConfig,
    cfg: &RetrievalEvalConfig,
) -> Result<RetrievalReport> {
    let mut lc = loader.clone();
    lc.shuffle = false;
    lc.drop_last = false;
    lc.skip_bad_samples = false;
    let dl = DataLoader::new(
        GalleryImages::new(gallery, transform),
        |s: Vec<(usize, Tensor)>| {
            let (ids, imgs): (Vec<usize>, Vec<Tensor>) = s.into_iter().unzip();
            Ok((ids, stack_images(imgs)?))
        },
        lc,
    )?;
    evaluate(
        model,
        dl.epoch(0),
        &gallery.texts,
        &gallery.img2txt,
        &gallery.txt2img,
        cfg,
    )
}

/// The brute-force reference: every (image, text) pair scored by ITM (one batch per image) and
/// fused with ITC, `[N_img, N_txt]`; used to check the evaluator.
pub fn brute_force_scores<M: RetrievalModel>(
    model: &mut M,
    itc: &ScoreMatrix,
    fusion: Fusion,
) -> Result<ScoreMatrix> {
    let mut out = ScoreMatrix::filled(itc.rows, itc.cols, 0.0);
    for i in 0..itc.rows {
        let texts: Vec<usize> = (0..itc.cols).collect();
        let itm = if fusion == Fusion::ItcOnly {
            vec![0.0; itc.cols]
        } else {
            model.itm_scores(&vec![i; itc.cols], &texts)?
        };
        for (t, s) in itm.into_iter().enumerate() {
            out.set(i, t, fusion.fuse(itc.get(i, t), s));
        }
    }
    Ok(out)
}

/// The ITC matrix of already computed features, through the model (helper for checks).
pub fn itc_matrix<M: RetrievalModel>(
    model: &mut M,
    image_feats: &Tensor,
    text_feats: &Tensor,
) -> Result<ScoreMatrix> {
    to_matrix(&model.itc_similarity(image_feats, text_feats)?)
}
