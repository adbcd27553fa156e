//! Hard-negative sampler: distribution, positives never drawn, degenerate batches.
mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use vlp_objectives::itm::{same_id_positives, HardNegativeSampler, Itm, NegativeDraws};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Pearson chi-square of observed counts against expected probabilities (categories with
/// probability 0 must have 0 counts).
fn chi_square(counts: &[f64], probs: &[f64]) -> f64 {
    let n: f64 = counts.iter().sum();
    let mut chi = 0.0;
    for (c, p) in counts.iter().zip(probs) {
        if *p == 0.0 {
            assert_eq!(*c, 0.0, "drew a zero-weight column");
        } else {
            chi += (c - n * p).powi(2) / (n * p);
        }
    }
    chi
}

/// Empirical frequencies follow the weights (many rows in one vectorised call).
#[test]
fn frequencies_follow_weights() {
    let _g = rng_lock();
    tch::manual_seed(5);
    let sim = Tensor::from_slice(&[
        0.0f32, 1.0, 0.5, -1.0, //
        2.0, 0.0, 1.5, 0.2, //
        0.3, 0.3, 0.0, 0.3, //
        -0.5, 1.0, 2.0, 0.0,
    ])
    .reshape([4, 4]);
    let s = HardNegativeSampler::albef();
    let w = s.weights(&sim, None);
    let reps = 20_000;
    let big = w.repeat([reps, 1]); // [4 * reps, 4], row r has the weights of row r % 4
    let d = s.sample(&big, &big).unwrap();
    assert!(d.all_valid());
    let idx = ints(&d.neg_image_idx);
    for row in 0..4usize {
        let mut counts = [0.0f64; 4];
        for r in (row..idx.len()).step_by(4) {
            counts[idx[r] as usize] += 1.0;
        }
        let raw = floats(&w.get(row as i64));
        let z: f64 = raw.iter().sum();
        let probs: Vec<f64> = raw.iter().map(|v| v / z).collect();
        let chi = chi_square(&counts, &probs);
        // 3 free categories -> 2 degrees of freedom; P(chi2_2 > 18.4) = 1e-4.
        eprintln!("row {row}: counts {counts:?} probs {probs:?} chi2 {chi:.2}");
        assert!(chi < 18.4, "row {row}: chi2 {chi}");
        assert_eq!(counts[row], 0.0, "positive drawn");
    }
    // The two directions use independent draws.
    assert_ne!(ints(&d.neg_image_idx), ints(&d.neg_text_idx));
}

/// Diagonal and same-id positives are never drawn.
#[test]
fn positives_never_drawn() {
    let _g = rng_lock();
    tch::manual_seed(11);
    let s = HardNegativeSampler::blip_pretrain();
    // Diagonal, with the positive strongly preferred by the logits.
    let b = 64;
    let sim = Tensor::randn([b, b], CPU) + Tensor::eye(b, CPU) * 20.0;
    for _ in 0..50 {
        let w = s.weights(&sim, None);
        let d = s.sample(&w, &w).unwrap();
        let ar: Vec<i64> = (0..b).collect();
        for (r, (i, t)) in ints(&d.neg_image_idx)
            .iter()
            .zip(ints(&d.neg_text_idx))
            .enumerate()
        {
            assert_ne!(*i, ar[r]);
            assert_ne!(t, ar[r]);
        }
    }
    // Same image ids: idx = [0,0,1,1,1,2,3,3].
    let idx = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 2, 3, 3]);
    let pos = same_id_positives(&idx);
    assert_eq!(
        ints(&pos.to_kind(Kind::Int64).get(2)),
        vec![0, 0, 1, 1, 1, 0, 0, 0]
    );
    let ids = ints(&idx);
    let sim = Tensor::randn([8, 8], CPU) * 3.0;
    let w = s.weights(&sim, Some(&pos));
    for _ in 0..500 {
        let d = s.sample(&w, &w).unwrap();
        assert!(d.all_valid());
        for (r, n) in ints(&d.neg_image_idx).iter().enumerate() {
            assert_ne!(ids[r], ids[*n as usize], "row {r} drew a same-id image {n}");
        }
    }
}

/// A batch of one has no negative: no crash, the row is marked invalid and dropped from the loss.
#[test]
fn batch_of_one() {
    let s = HardNegativeSampler::albef();
    let sim = Tensor::from_slice(&[3.0f32]).reshape([1, 1]);
    let w = s.weights(&sim, None);
    assert_eq!(floats(&w), vec![0.0]);
    let d = s.sample(&w, &w).unwrap();
    assert_eq!(ints(&d.neg_image_idx), vec![0]);
    assert_eq!(ints(&d.valid.to_kind(Kind::Int64)), vec![0]);
    assert!(!d.all_valid());
    let keep = d.itm_keep_mask();
    assert_eq!(ints(&keep.to_kind(Kind::Int64)), vec![1, 0, 0]);
    // ITM loss over the kept (positive) row only.
    let logits = Tensor::from_slice(&[0.0f32, 1.0, 5.0, -5.0, 5.0, -5.0]).reshape([3, 2]);
    let l = Itm { weight: 1.0 }.loss_masked(&logits, &keep);
    let expected = (1.0f64 + (-1.0f64).exp()).ln(); // -log softmax([0,1])[1]
    assert!((l.double_value(&[]) - expected).abs() < 1e-6);
}

/// Every sample sharing one image id: all rows invalid, no crash.
#[test]
fn all_same_id() {
    let s = HardNegativeSampler::albef();
    let idx = Tensor::from_slice(&[7i64, 7, 7]);
    let w = s.weights(&Tensor::randn([3, 3], CPU), Some(&same_id_positives(&idx)));
    let d = s.sample(&w, &w).unwrap();
    assert_eq!(ints(&d.valid.to_kind(Kind::Int64)), vec![0, 0, 0]);
    assert_eq!(ints(&d.neg_image_idx), vec![0, 1, 2]);
}

/// Rows whose negatives all underflow get uniform weights over the non-positive columns; mixed
/// batches keep their valid rows.
#[test]
fn underflow_rows() {
    let _g = rng_lock();
    tch::manual_seed(3);
    let s = HardNegativeSampler::albef();
    // Row 0: positive at 0 dominates by 300 (exp(-300) underflows in f32).
    let sim = Tensor::from_slice(&[
        300.0f32, 0.0, 0.0, 0.0, //
        0.0, 1.0, 2.0, 0.0, //
        0.0, 0.0, 300.0, -5.0, //
        1.0, 1.0, 1.0, 1.0,
    ])
    .reshape([4, 4]);
    let w = s.weights(&sim, None);
    let r0 = floats(&w.get(0));
    assert_eq!(r0[0], 0.0);
    for v in &r0[1..] {
        assert!((v - 1.0 / 3.0).abs() < 1e-6, "{r0:?}");
    }
    let r2 = floats(&w.get(2));
    assert_eq!(
        r2,
        [1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0]
            .iter()
            .map(|v| (*v as f32) as f64)
            .collect::<Vec<_>>()
    );
    // Ordinary rows untouched.
    let r1 = floats(&w.get(1));
    assert_eq!(r1[1], 0.0);
    assert!((r1.iter().sum::<f64>() - (1.0 - softmax_at(&[0.0, 1.0, 2.0, 0.0], 1))).abs() < 1e-6);
    let d = s.sample(&w, &w).unwrap();
    assert!(d.all_valid());

    // Externally built weights with an all-zero row: that row is invalid, the others are drawn.
    let w2 = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 0.0, 0.0, 0.0]).reshape([2, 3]);
    let d = s.sample(&w2, &w2).unwrap();
    assert_eq!(ints(&d.valid.to_kind(Kind::Int64)), vec![1, 0]);
    assert_eq!(ints(&d.neg_image_idx), vec![1, 1]);
}

fn softmax_at(x: &[f64], i: usize) -> f64 {
    let z: f64 = x.iter().map(|v| v.exp()).sum();
    x[i].exp() / z
}

#[test]
fn bad_weights_are_errors() {
    let s = HardNegativeSampler::albef();
    let ok = Tensor::ones([2, 2], CPU);
    let nan = Tensor::from_slice(&[f32::NAN, 1.0, 1.0, 0.0]).reshape([2, 2]);
    let neg = Tensor::from_slice(&[-1.0f32, 1.0, 1.0, 0.0]).reshape([2, 2]);
    for bad in [&nan, &neg] {
        let e = s.sample(bad, &ok).unwrap_err().to_string();
        assert!(e.contains("weights_t2i"), "{e}");
    }
    let e = s
        .sample(&ok, &Tensor::ones([3, 2], CPU))
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights_i2t"), "{e}");
    let e = s
        .try_weights(&Tensor::ones([2], CPU), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sim"), "{e}");
}

/// Recorded draws wrap as all-valid; the keep mask then selects every row.
#[test]
fn recorded_draws_and_labels() {
    let d = NegativeDraws::from_indices(
        Tensor::from_slice(&[1i64, 0]),
        Tensor::from_slice(&[1i64, 0]),
    );
    assert!(d.all_valid());
    assert_eq!(ints(&d.itm_keep_mask().to_kind(Kind::Int64)), vec![1; 6]);
    assert_eq!(ints(&Itm::labels(2, Device::Cpu)), vec![1, 1, 0, 0, 0, 0]);
    let logits = Tensor::randn([6, 2], CPU);
    let itm = Itm { weight: 2.0 };
    let a = itm.loss(&logits);
    let b = itm.loss_masked(&logits, &d.itm_keep_mask());
    assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-7);
    assert!(
        (itm.weighted_loss(&logits).double_value(&[]) - 2.0 * a.double_value(&[])).abs() < 1e-6
    );
    assert!(itm.try_loss(&Tensor::ones([4, 2], CPU), None).is_err());
}

/// One vectorised call for a large batch (no per-row loop): 200k rows of 8 candidates, which a
/// per-row `multinomial` loop (400k calls) could not do in well under a second.
#[test]
fn large_batch_is_vectorised() {
    let _g = rng_lock();
    let s = HardNegativeSampler::albef();
    let w = Tensor::rand([200_000, 8], CPU);
    let t = std::time::Instant::now();
    let d = s.sample(&w, &w).unwrap();
    let el = t.elapsed();
    eprintln!("sample 2 x 200000 rows: {el:?}");
    assert_eq!(d.neg_image_idx.size(), vec![200_000]);
    assert!(el.as_secs_f64() < 2.0, "{el:?}");
}
