//! Image–text retrieval recall as ALBEF/BLIP's `itm_eval`: for each image, the rank of its best
//! ranked ground-truth caption among all texts (text retrieval, `txt_r*`); for each text, the rank
//! of its image among all images (image retrieval, `img_r*`); R@K is the percentage of queries
//! ranked below K; `*_r_mean` the mean of R@1, R@5, R@10; `r_mean` the mean of the two means.
//!
//! Ranks follow `np.argsort(scores)[::-1]` with a stable sort: a candidate ranks after every
//! candidate with a higher score and after every candidate with an equal score and a higher index.
use serde::{Deserialize, Serialize};
use vlp_core::{Result, VlpError};

/// A dense row-major score matrix (`rows` queries × `cols` candidates).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMatrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values, row by row.
    pub data: Vec<f64>,
}

impl ScoreMatrix {
    /// A matrix filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: f64) -> Self {
        ScoreMatrix {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    /// A matrix from rows (all the same length).
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Self> {
        let cols = rows.first().map(Vec::len).unwrap_or(0);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
            return Err(VlpError::input(
                "scores",
                format!("row {i} has {} values, row 0 has {cols}", r.len()),
            ));
        }
        Ok(ScoreMatrix {
            rows: rows.len(),
            cols,
            data: rows.concat(),
        })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Element `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Sets element `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut t = ScoreMatrix::filled(self.cols, self.rows, 0.0);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.set(j, i, self.get(i, j));
            }
        }
        t
    }
}

/// The 0-based rank of candidate `target` in `scores` (see the module docs for ties).
pub fn rank_of(scores: &[f64], target: usize) -> usize {
    let s = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &v)| v > s || (v == s && j > target))
        .count()
}

/// Indices of the `k` best candidates, best first (same order as the ranks).
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a)));
    idx.truncate(k);
    idx
}

/// ALBEF/BLIP's retrieval metrics (percentages), serialised with their names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Text retrieval R@1.
    pub txt_r1: f64,
    /// Text retrieval R@5.
    pub txt_r5: f64,
    /// Text retrieval R@10.
    pub txt_r10: f64,
    /// Mean of the text retrieval recalls.
    pub txt_r_mean: f64,
    /// Image retrieval R@1.
    pub img_r1: f64,
    /// Image retrieval R@5.
    pub img_r5: f64,
    /// Image retrieval R@10.
    pub img_r10: f64,
    /// Mean of the image retrieval recalls.
    pub img_r_mean: f64,
    /// Mean of the two means.
    pub r_mean: f64,
}

fn recalls(ranks: &[usize]) -> (f64, f64, f64) {
    let n = ranks.len() as f64;
    let at = |k: usize| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / n;
    (at(1), at(5), at(10))
}

/// `itm_eval`: `i2t` is images × texts, `t2i` texts × images; `img2txt[i]` are the texts of image
/// `i`, `txt2img[t]` the image of text `t`. Scores must not be NaN.
pub fn itm_eval(
    i2t: &ScoreMatrix,
    t2i: &ScoreMatrix,
    img2txt: &[Vec<usize>],
    txt2img: &[usize],
) -> Result<RetrievalMetrics> {
    let (ni, nt) = (i2t.rows, i2t.cols);
    if ni == 0 || nt == 0 {
        return Err(VlpError::input("scores", "empty score matrix"));
    }
    if t2i.rows != nt || t2i.cols != ni {
        return Err(VlpError::input(
            "scores_t2i",
            format!("shape {}x{}, expected {nt}x{ni}", t2i.rows, t2i.cols),
        ));
    }
    if img2txt.len() != ni || txt2img.len() != nt {
        return Err(VlpError::input(
            "gt",
            format!(
                "{} images and {} texts in the ground truth, {ni} x {nt} scores",
                img2txt.len(),
                txt2img.len()
            ),
        ));
    }
    if let Some(p) = i2t.data.iter().chain(&t2i.data).position(|v| v.is_nan()) {
        return Err(VlpError::input("scores", format!("NaN score (value {p})")));
    }
    let mut tr = Vec::with_capacity(ni);
    for (i, gts) in img2txt.iter().enumerate() {
        if gts.is_empty() {
            return Err(VlpError::input("img2txt", format!("image {i} has no text")));
        }
        let mut best = usize::MAX;
        for &t in gts {
            if t >= nt {
                return Err(VlpError::input(
                    "img2txt",
                    format!("image {i}: text {t} out of range ({nt} texts)"),
                ));
            }
            best = best.min(rank_of(i2t.row(i), t));
        }
        tr.push(best);
    }
    let mut ir = Vec::with_capacity(nt);
    for (t, &i) in txt2img.iter().enumerate() {
        if i >= ni {
            return Err(VlpError::input(
                "txt2img",
                format!("text {t}: image {i} out of range ({ni} images)"),
            ));
        }
        ir.push(rank_of(t2i.row(t), i));
    }
    let (tr1, tr5, tr10) = recalls(&tr);
    let (ir1, ir5, ir10) = recalls(&ir);
    let tr_mean = (tr1 + tr5 + tr10) / 3.0;
    let ir_mean = (ir1 + ir5 + ir10) / 3.0;
    Ok(RetrievalMetrics {
        txt_r1: tr1,
        txt_r5: tr5,
        txt_r10: tr10,
        txt_r_mean: tr_mean,
        img_r1: ir1,
        img_r5: ir5,
        img_r10: ir10,
        img_r_mean: ir_mean,
        r_mean: (tr_mean + ir_mean) / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_rank_higher_index_first() {
        let s = [0.5, 0.9, 0.5, 0.1];
        assert_eq!(rank_of(&s, 1), 0);
        assert_eq!(rank_of(&s, 2), 1);
        assert_eq!(rank_of(&s, 0), 2);
        assert_eq!(top_k(&s, 3), vec![1, 2, 0]);
    }
}
