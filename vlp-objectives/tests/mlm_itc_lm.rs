//! MLM masker rates and special tokens, MLM/ITC/LM losses on hand-checked values.
mod common;

use common::*;
use tch::{Device, Kind, Tensor};
use vlp_objectives::itc::{
    alpha_ramp, clip_loss, diagonal_targets, multi_positive_targets, Itc, ItcInputs,
};
use vlp_objectives::lm::{lm_loss, try_lm_loss};
use vlp_objectives::mlm::{Mlm, MlmDraws, MlmMasker};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

fn bert_masker() -> MlmMasker {
    MlmMasker {
        probability: 0.15,
        mask_id: 103,
        pad_id: 0,
        cls_id: 101,
        vocab_size: 30522,
    }
}

/// ~15% of maskable tokens masked, 80/10/10 split, [PAD]/[CLS] never touched.
#[test]
fn masker_rates_and_specials() {
    let _g = rng_lock();
    tch::manual_seed(2024);
    let (b, l) = (512i64, 64i64);
    // Words in [1000, 2000) (never [MASK]); [CLS] first; the last 14 positions of every row pads.
    let ids = Tensor::randint_low(1000, 2000, [b, l], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 0, 1).fill_(101);
    let _ = ids.narrow(1, l - 14, 14).fill_(0);
    let m = bert_masker();
    let (out, labels) = m.mask(&ids);
    let special = ids.eq(0).logical_or(&ids.eq(101));
    // Specials: never masked, never changed.
    assert_eq!(
        labels
            .masked_select(&special)
            .ne(-100)
            .sum(Kind::Int64)
            .int64_value(&[]),
        0
    );
    assert!(out
        .masked_select(&special)
        .equal(&ids.masked_select(&special)));
    let masked = labels.ne(-100);
    // Labels are the original ids where masked; unmasked ids unchanged.
    assert!(labels
        .masked_select(&masked)
        .equal(&ids.masked_select(&masked)));
    let unmasked = masked.logical_not();
    assert!(out
        .masked_select(&unmasked)
        .equal(&ids.masked_select(&unmasked)));

    let maskable = (b * (l - 15)) as f64;
    let n_masked = masked.sum(Kind::Int64).int64_value(&[]) as f64;
    let rate = n_masked / maskable;
    let o = out.masked_select(&masked);
    let orig = ids.masked_select(&masked);
    let frac_mask = o.eq(103).sum(Kind::Int64).int64_value(&[]) as f64 / n_masked;
    let frac_kept = o.eq_tensor(&orig).sum(Kind::Int64).int64_value(&[]) as f64 / n_masked;
    let frac_random = 1.0 - frac_mask - frac_kept;
    eprintln!(
        "masked {rate:.4} of {maskable}; [MASK] {frac_mask:.4}, random {frac_random:.4}, kept {frac_kept:.4}"
    );
    // Binomial standard deviations: 0.0023 (rate), 0.0074 (80%), 0.0056 (10%); 5 sigma.
    assert!((rate - 0.15).abs() < 0.012, "rate {rate}");
    assert!((frac_mask - 0.8).abs() < 0.037, "[MASK] {frac_mask}");
    assert!((frac_random - 0.1).abs() < 0.028, "random {frac_random}");
    assert!((frac_kept - 0.1).abs() < 0.028, "kept {frac_kept}");
}

/// Hand-built draws: every rule of ALBEF.mask(), including [SEP] being maskable.
#[test]
fn masker_apply_rules() {
    let m = MlmMasker {
        probability: 0.15,
        mask_id: 4,
        pad_id: 0,
        cls_id: 2,
        vocab_size: 64,
    };
    // [CLS] w w w w [SEP] [PAD]
    let ids = Tensor::from_slice(&[2i64, 10, 11, 12, 13, 3, 0]).reshape([1, 7]);
    let f = |v: &[f32]| Tensor::from_slice(v).reshape([1, 7]);
    let d = MlmDraws {
        masked: f(&[1., 1., 1., 1., 0., 1., 1.]),
        replaced: f(&[1., 1., 0., 0., 1., 0., 1.]),
        random: f(&[1., 1., 1., 0., 1., 0., 1.]),
        random_words: Tensor::from_slice(&[50i64, 51, 52, 53, 54, 55, 56]).reshape([1, 7]),
    };
    let (out, labels) = m.apply(&ids, &d);
    // pos0 CLS: untouched; pos1 masked+replaced -> [MASK]; pos2 masked+random -> 52;
    // pos3 masked, kept; pos4 not masked; pos5 [SEP] masked, kept; pos6 PAD untouched.
    assert_eq!(ints(&out), vec![2, 4, 52, 12, 13, 3, 0]);
    assert_eq!(ints(&labels), vec![-100, 10, 11, 12, -100, 3, -100]);
    let bad = MlmDraws {
        masked: Tensor::zeros([1, 6], F32),
        ..d
    };
    assert!(m.try_apply(&ids, &bad).is_err());
}

/// MLM loss: CE over masked tokens, distillation term, no masked token -> 0 (not NaN).
#[test]
fn mlm_loss_values() {
    let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 1.0, 0.0, 0.0]).reshape([1, 2, 3]);
    let labels = Tensor::from_slice(&[2i64, -100]).reshape([1, 2]);
    let mlm = Mlm { weight: 0.5 };
    let lse = (1.0f64.exp() + 2.0f64.exp() + 1.0).ln();
    let ce = lse - 2.0;
    let l = mlm.loss(&logits, &labels, None, 0.3).double_value(&[]);
    assert!((l - ce).abs() < 1e-6);
    // Soft labels = softmax(zeros) = uniform 1/3 -> distill = lse - mean(logits row 0) = lse - 1.
    let soft = Tensor::zeros([1, 2, 3], F32);
    let l = mlm
        .loss(&logits, &labels, Some(&soft), 0.3)
        .double_value(&[]);
    let expected = 0.7 * ce + 0.3 * (lse - 1.0);
    assert!((l - expected).abs() < 1e-6, "{l} vs {expected}");
    let w = mlm
        .weighted_loss(&logits, &labels, Some(&soft), 0.3)
        .double_value(&[]);
    assert!((w - 0.5 * expected).abs() < 1e-6);
    let none = Tensor::full([1, 2], -100i64, (Kind::Int64, Device::Cpu));
    assert_eq!(
        mlm.loss(&logits, &none, Some(&soft), 0.3).double_value(&[]),
        0.0
    );
    assert!(mlm
        .try_loss(
            &logits,
            &Tensor::zeros([2, 2], (Kind::Int64, Device::Cpu)),
            None,
            0.0
        )
        .is_err());
}

/// ITC: diagonal targets, alpha = 0 equals the plain CE, distillation with alpha = 1 equals the
/// soft cross-entropy; multi-positive targets; gradient flows to the online sims only.
#[test]
fn itc_values() {
    let t = diagonal_targets(2, 4, Device::Cpu);
    assert_eq!(floats(&t), vec![1., 0., 0., 0., 0., 1., 0., 0.]);
    let sim = Tensor::from_slice(&[1.0f32, 0.0, 0.5, -1.0, 0.2, 2.0, 0.0, 0.0])
        .reshape([2, 4])
        .set_requires_grad(true);
    let sim_m = Tensor::from_slice(&[0.5f32, 0.1, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
        .reshape([2, 4])
        .set_requires_grad(true);
    let itc = Itc { weight: 1.0 };
    let ce = |row: &[f64], label: usize| {
        let z: f64 = row.iter().map(|v| v.exp()).sum();
        z.ln() - row[label]
    };
    let plain = (ce(&[1.0, 0.0, 0.5, -1.0], 0) + ce(&[0.2, 2.0, 0.0, 0.0], 1)) / 2.0;
    let l = itc.loss(&ItcInputs::new(&sim, &sim)).double_value(&[]);
    assert!((l - plain).abs() < 1e-6);
    let x = ItcInputs {
        sim_i2t: &sim,
        sim_t2i: &sim,
        sim_i2t_m: Some(&sim_m),
        sim_t2i_m: Some(&sim_m),
        targets: None,
        alpha: 0.0,
    };
    assert!((itc.loss(&x).double_value(&[]) - plain).abs() < 1e-6);
    let x1 = ItcInputs { alpha: 1.0, ..x };
    let soft_ce: f64 = (0..2)
        .map(|r| {
            let s = floats(&sim.get(r));
            let m = floats(&sim_m.get(r));
            let zs: f64 = s.iter().map(|v| v.exp()).sum();
            let zm: f64 = m.iter().map(|v| v.exp()).sum();
            (0..4)
                .map(|j| -(m[j].exp() / zm) * (s[j] - zs.ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / 2.0;
    let l = itc.loss(&x1);
    assert!((l.double_value(&[]) - soft_ce).abs() < 1e-6);
    l.backward();
    assert!(sim.grad().defined());
    assert!(
        !sim_m.grad().defined(),
        "momentum logits must get no gradient"
    );

    let mp = multi_positive_targets(
        &Tensor::from_slice(&[3i64, 5]),
        &Tensor::from_slice(&[3i64, 5, 3, 3, 9]).reshape([1, 5]),
    );
    let third = (1.0f32 / 3.0) as f64;
    assert_eq!(
        floats(&mp),
        vec![third, 0., third, third, 0., 0., 1., 0., 0., 0.]
    );
    assert!(itc
        .try_loss(&ItcInputs {
            targets: Some(&mp),
            ..ItcInputs::new(&sim, &sim)
        })
        .is_err());
    let half = ItcInputs {
        sim_i2t_m: Some(&sim_m),
        ..ItcInputs::new(&sim, &sim)
    };
    assert!(itc
        .try_loss(&half)
        .unwrap_err()
        .to_string()
        .contains("sim_t2i_m"));
}

#[test]
fn alpha_ramp_schedules() {
    // ALBEF: epoch 0 ramps i/len, then constant.
    assert_eq!(alpha_ramp(0.4, 0, 0, 100, 1), 0.0);
    assert!((alpha_ramp(0.4, 0, 50, 100, 1) - 0.2).abs() < 1e-12);
    assert_eq!(alpha_ramp(0.4, 1, 0, 100, 1), 0.4);
    assert_eq!(alpha_ramp(0.4, 3, 7, 100, 1), 0.4);
    // BLIP: (epoch*len + i) / (2*len).
    assert!((alpha_ramp(0.4, 0, 50, 100, 2) - 0.1).abs() < 1e-12);
    assert!((alpha_ramp(0.4, 1, 50, 100, 2) - 0.3).abs() < 1e-12);
    assert_eq!(alpha_ramp(0.4, 2, 0, 100, 2), 0.4);
    assert_eq!(alpha_ramp(0.4, 0, 3, 100, 0), 0.4);
    assert_eq!(alpha_ramp(0.4, 0, 3, 0, 1), 0.4);
}

#[test]
fn clip_loss_values() {
    let l = Tensor::from_slice(&[2.0f32, 0.0, 1.0, 3.0]).reshape([2, 2]);
    let ce = |row: [f64; 2], y: usize| (row[0].exp() + row[1].exp()).ln() - row[y];
    let i2t = (ce([2.0, 0.0], 0) + ce([1.0, 3.0], 1)) / 2.0;
    let t2i = (ce([2.0, 1.0], 0) + ce([0.0, 3.0], 1)) / 2.0;
    assert!((clip_loss(&l).double_value(&[]) - (i2t + t2i) / 2.0).abs() < 1e-6);
    assert!(vlp_objectives::itc::try_clip_loss(&Tensor::zeros([2, 3], F32)).is_err());
}

/// Shifted LM loss: mean over non-ignored targets, per-sequence sums, label smoothing.
#[test]
fn lm_loss_values() {
    // B=1, L=3, V=2: positions 0,1 predict labels 1,2.
    let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0]).reshape([1, 3, 2]);
    let labels = Tensor::from_slice(&[-100i64, 1, 0]).reshape([1, 3]);
    let nll = |row: [f64; 2], y: usize| (row[0].exp() + row[1].exp()).ln() - row[y];
    let a = nll([0.0, 1.0], 1);
    let b = nll([2.0, 0.0], 0);
    assert!((lm_loss(&logits, &labels, 0.0, false).double_value(&[]) - (a + b) / 2.0).abs() < 1e-6);
    let per = lm_loss(&logits, &labels, 0.0, true);
    assert_eq!(per.size(), vec![1]);
    assert!((per.double_value(&[0]) - (a + b)).abs() < 1e-6);
    // Label smoothing eps: (1-eps)*nll + eps*mean_v(-log p_v).
    let eps = 0.1;
    let smooth = |row: [f64; 2], y: usize| {
        let lse = (row[0].exp() + row[1].exp()).ln();
        (1.0 - eps) * (lse - row[y]) + eps * ((lse - row[0]) + (lse - row[1])) / 2.0
    };
    let s = (smooth([0.0, 1.0], 1) + smooth([2.0, 0.0], 0)) / 2.0;
    assert!((lm_loss(&logits, &labels, eps, false).double_value(&[]) - s).abs() < 1e-6);
    // Ignoring the last target: only position 0 counts.
    let labels2 = Tensor::from_slice(&[-100i64, 1, -100]).reshape([1, 3]);
    assert!((lm_loss(&logits, &labels2, 0.0, false).double_value(&[]) - a).abs() < 1e-6);
    assert!(try_lm_loss(&logits.narrow(1, 0, 1), &labels.narrow(1, 0, 1), 0.0, false).is_err());
}
