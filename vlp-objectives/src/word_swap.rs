//! ITM on word-swapped captions: counterfactual hard negatives made from the positive caption.
//!
//! ALBEF's hard negatives are other captions of the batch, picked by ITC similarity. When
//! captions differ from each other in many words, ITM can be solved on the easiest one (in
//! Shapes, colour) and a word class that never decides a pair (shape) stays ungrounded.
//! Swapping one word of the positive caption for another of its class ("a red circle" →
//! "a red triangle") gives a negative that differs *only* in that word, so the image must be
//! compared with that word: the caption-side hard negatives of NegCLIP (Yuksekgonul et al.
//! 2023, "When and why vision-language models behave like bags-of-words"), here as an extra ITM
//! term (a ranking of the two captions by ITM) rather than extra ITC columns.
//!
//! [`WordSwap`] holds the classes (groups of interchangeable token ids) and draws the swaps with
//! torch's global generator (like the other samplers of this crate, so a seeded step is
//! reproducible); [`word_swap_itm_loss`] ranks each image's own caption above its swapped copy
//! by their ITM margins, over the rows that had a word to swap.
use std::collections::HashMap;

use tch::{Device, Kind, Tensor};
use vlp_core::{Result, VlpError};

use crate::util::{as_compute, expect_dims};

/// Groups of interchangeable token ids (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct WordSwap {
    groups: Vec<Vec<i64>>,
    group_of: HashMap<i64, usize>,
}

/// The captions with one word swapped, and which rows had a word to swap.
#[derive(Debug)]
pub struct SwappedText {
    /// `[B, L]` int64 ids: row `b` with one word replaced (unchanged where not `valid`).
    pub input_ids: Tensor,
    /// `[B]` bool: whether row `b` had a swappable word.
    pub valid: Tensor,
    /// `[B]` int64: the swapped position (`-1` where not `valid`).
    pub position: Tensor,
}

impl WordSwap {
    /// Groups of at least two distinct token ids each; an id may belong to one group only.
    pub fn new(groups: Vec<Vec<i64>>) -> Result<Self> {
        let mut group_of = HashMap::new();
        for (g, ids) in groups.iter().enumerate() {
            if ids.len() < 2 {
                return Err(VlpError::input(
                    "word_swap",
                    format!(
                        "group {g} has {} token(s); a swap needs at least two",
                        ids.len()
                    ),
                ));
            }
            for &id in ids {
                if let Some(other) = group_of.insert(id, g) {
                    return Err(VlpError::input(
                        "word_swap",
                        format!("token id {id} is in groups {other} and {g}"),
                    ));
                }
            }
        }
        Ok(WordSwap { groups, group_of })
    }

    /// The groups.
    pub fn groups(&self) -> &[Vec<i64>] {
        &self.groups
    }

    /// Swaps one word per row of `input_ids` (`[B, L]` int64): a position holding a member of
    /// some group, chosen uniformly among such positions, gets another member of its group,
    /// chosen uniformly. Draws `[B, 2]` uniforms from torch's global generator. The result is
    /// on `input_ids`' device.
    pub fn swap(&self, input_ids: &Tensor) -> Result<SwappedText> {
        let size = expect_dims("input_ids", input_ids, 2, "[B, L] token ids")?;
        let (b, l) = (size[0], size[1]);
        let device = input_ids.device();
        let ids: Vec<i64> = Vec::<i64>::try_from(
            input_ids
                .to_device(Device::Cpu)
                .to_kind(Kind::Int64)
                .reshape([-1]),
        )
        .map_err(|e| VlpError::input("input_ids", e.to_string()))?;
        let u: Vec<f64> =
            Vec::<f64>::try_from(Tensor::rand([b, 2], (Kind::Double, Device::Cpu)).reshape([-1]))
                .map_err(|e| VlpError::Msg(format!("word swap draws: {e}")))?;
        let mut out = ids.clone();
        let mut valid = vec![false; b as usize];
        let mut position = vec![-1i64; b as usize];
        for r in 0..b as usize {
            let row = &ids[r * l as usize..(r + 1) * l as usize];
            let cands: Vec<usize> = (0..row.len())
                .filter(|&j| self.group_of.contains_key(&row[j]))
                .collect();
            if cands.is_empty() {
                continue;
            }
            let pick = |x: f64, n: usize| ((x * n as f64) as usize).min(n - 1);
            let j = cands[pick(u[2 * r], cands.len())];
            let group = &self.groups[self.group_of[&row[j]]];
            let others: Vec<i64> = group.iter().copied().filter(|&t| t != row[j]).collect();
            out[r * l as usize + j] = others[pick(u[2 * r + 1], others.len())];
            valid[r] = true;
            position[r] = j as i64;
        }
        Ok(SwappedText {
            input_ids: Tensor::from_slice(&out).view([b, l]).to_device(device),
            valid: Tensor::from_slice(&valid).to_device(device),
            position: Tensor::from_slice(&position).to_device(device),
        })
    }
}

/// The ranking loss of a caption against its word-swapped copy on the same image:
/// `softplus(s_swap - s_pos)` = `-log σ(s_pos - s_swap)`, with `s = logit[:, 1] - logit[:, 0]`
/// the ITM "matched" margin of the `[B, 2]` logits `pos` (the positive pairs, the first `B`
/// rows of ALBEF's ITM logits) and `swap` (the swapped captions with the same images), averaged
/// over the `valid` rows (`[B]` bool); 0 (still in the graph) when none is valid.
///
/// A ranking rather than a "not matched" label: swapped captions look like real ones, so a
/// cross-entropy toward "not matched" can also be lowered by predicting "not matched" for every
/// caption (ITM's prior), which fights the positives; the ranking only asks that the image
/// prefer its own caption, which is what the swap is meant to teach (and what a zero-shot
/// probe asks). `ln 2` when the two are scored alike.
pub fn word_swap_itm_loss(pos: &Tensor, swap: &Tensor, valid: &Tensor) -> Result<Tensor> {
    let size = expect_dims("itm_logits", swap, 2, "[B, 2] ITM logits")?;
    if size[1] != 2 || pos.size() != size || valid.size() != [size[0]] {
        return Err(VlpError::input(
            "itm_logits",
            format!(
                "expected [B, 2] positive and swapped logits and a [B] valid mask, got {:?}, {size:?} and {:?}",
                pos.size(),
                valid.size()
            ),
        ));
    }
    let (pos, swap) = (as_compute(pos), as_compute(swap));
    let margin = |t: &Tensor| t.select(1, 1) - t.select(1, 0);
    let per_row = (margin(&swap) - margin(&pos)).softplus();
    let keep = valid.to_device(pos.device()).to_kind(pos.kind());
    Ok((per_row * &keep).sum(pos.kind()) / keep.sum(pos.kind()).clamp_min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_one_word_of_its_group_per_row() {
        let ws = WordSwap::new(vec![vec![10, 11, 12], vec![20, 21]]).unwrap();
        tch::manual_seed(0);
        let ids = Tensor::from_slice(&[1i64, 10, 20, 0, 1, 5, 6, 0, 1, 21, 7, 0]).view([3, 4]);
        for _ in 0..20 {
            let s = ws.swap(&ids).unwrap();
            let out = Vec::<i64>::try_from(s.input_ids.reshape([-1])).unwrap();
            let valid = Vec::<bool>::try_from(&s.valid).unwrap();
            let pos = Vec::<i64>::try_from(&s.position).unwrap();
            assert_eq!(valid, [true, false, true]);
            // Row 1 has nothing to swap: unchanged, position -1.
            assert_eq!(&out[4..8], &[1, 5, 6, 0]);
            assert_eq!(pos[1], -1);
            for r in [0usize, 2] {
                let (a, b) = (&ids_row(&ids, r), &out[r * 4..r * 4 + 4]);
                let diff: Vec<usize> = (0..4).filter(|&j| a[j] != b[j]).collect();
                assert_eq!(
                    diff,
                    vec![pos[r] as usize],
                    "exactly the drawn position changes"
                );
                let j = diff[0];
                let g = ws.group_of[&a[j]];
                assert_eq!(ws.group_of.get(&b[j]), Some(&g), "same group");
            }
        }
    }

    fn ids_row(ids: &Tensor, r: usize) -> Vec<i64> {
        Vec::<i64>::try_from(ids.get(r as i64)).unwrap()
    }

    #[test]
    fn draws_every_candidate_and_replacement() {
        let ws = WordSwap::new(vec![vec![10, 11, 12], vec![20, 21]]).unwrap();
        tch::manual_seed(1);
        let ids = Tensor::from_slice(&[10i64, 20]).view([1, 2]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let out = Vec::<i64>::try_from(ws.swap(&ids).unwrap().input_ids.reshape([-1])).unwrap();
            seen.insert(out);
        }
        let want: std::collections::BTreeSet<Vec<i64>> = [vec![11, 20], vec![12, 20], vec![10, 21]]
            .into_iter()
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn bad_groups_are_named() {
        let e = WordSwap::new(vec![vec![1]]).unwrap_err().to_string();
        assert!(e.contains("group 0"), "{e}");
        let e = WordSwap::new(vec![vec![1, 2], vec![2, 3]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("token id 2"), "{e}");
    }

    #[test]
    fn loss_ranks_each_caption_above_its_swap_over_valid_rows() {
        let pos = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 1.0, 0.5, 0.0]).view([3, 2]);
        let swap = Tensor::from_slice(&[1.0f32, 0.0, 9.0, 9.0, 0.0, 3.0]).view([3, 2]);
        let valid = Tensor::from_slice(&[true, false, true]);
        let l = f64::try_from(word_swap_itm_loss(&pos, &swap, &valid).unwrap()).unwrap();
        let sp = |x: f64| (1.0 + x.exp()).ln();
        // Margins: row 0 pos 2, swap -1; row 2 pos -0.5, swap 3.
        let want = (sp(-1.0 - 2.0) + sp(3.0 + 0.5)) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        // Alike scores: ln 2, whatever the prior.
        let l = f64::try_from(word_swap_itm_loss(&pos, &pos, &valid).unwrap()).unwrap();
        assert!((l - 2f64.ln()).abs() < 1e-6, "{l}");
        let none = Tensor::from_slice(&[false, false, false]);
        let l = f64::try_from(word_swap_itm_loss(&pos, &swap, &none).unwrap()).unwrap();
        assert_eq!(l, 0.0);
        assert!(word_swap_itm_loss(&pos, &swap, &Tensor::from_slice(&[true])).is_err());
        assert!(word_swap_itm_loss(&pos.narrow(0, 0, 2), &swap, &valid).is_err());
    }
}
