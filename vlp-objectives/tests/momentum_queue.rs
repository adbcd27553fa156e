//! Momentum update / copy on a tiny VarStore and the queues, with hand-computed values.
mod common;

use common::*;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vlp_objectives::momentum::{
    copy_params, enqueue, enqueue_idx, enqueue_shared, momentum_update,
};

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).reshape(shape)
}

/// enc.{w, b}, enc_m.{w, b}, proj.w, proj_m.w, and an integer buffer enc.ids / enc_m.ids.
fn tiny_store() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let r = vs.root();
    let enc = &r / "enc";
    let enc_m = &r / "enc_m";
    let _ = enc.add("w", t(&[1., 2., 3., 4.], &[2, 2]), true);
    let _ = enc.add("b", t(&[10., -10.], &[2]), true);
    let _ = enc_m.add("w", t(&[0., 0., 1., 1.], &[2, 2]), false);
    let _ = enc_m.add("b", t(&[0., 0.], &[2]), false);
    let _ = enc.add("ids", Tensor::from_slice(&[1i64, 2]), false);
    let _ = enc_m.add("ids", Tensor::from_slice(&[7i64, 8]), false);
    let _ = (&r / "proj").add("w", t(&[2.], &[1]), true);
    let _ = (&r / "proj_m").add("w", t(&[4.], &[1]), false);
    vs
}

#[test]
fn momentum_update_by_hand() {
    let vs = tiny_store();
    let n = momentum_update(&vs, &[("enc", "enc_m"), ("proj.", "proj_m.")], 0.9).unwrap();
    assert_eq!(n, 3);
    let v = vs.variables();
    // p_m = 0.9 p_m + 0.1 p
    let close = |a: &Tensor, e: &[f64]| {
        let f = floats(a);
        assert_eq!(f.len(), e.len());
        for (x, y) in f.iter().zip(e) {
            assert!((x - y).abs() < 1e-6, "{f:?} vs {e:?}");
        }
    };
    close(&v["enc_m.w"], &[0.1, 0.2, 1.2, 1.3]);
    close(&v["enc_m.b"], &[1.0, -1.0]);
    close(&v["proj_m.w"], &[3.8]);
    // Online untouched; integer buffers skipped.
    close(&v["enc.w"], &[1., 2., 3., 4.]);
    assert_eq!(ints(&v["enc_m.ids"]), vec![7, 8]);
    // The online variables keep their gradient flag; the update itself is not recorded.
    assert!(v["enc.w"].requires_grad());
    assert!(!v["enc_m.w"].requires_grad());

    // Second step compounds.
    momentum_update(&vs, &[("proj", "proj_m")], 0.5).unwrap();
    close(&vs.variables()["proj_m.w"], &[2.9]);
}

#[test]
fn copy_params_by_hand() {
    let vs = tiny_store();
    assert_eq!(
        copy_params(&vs, &[("enc", "enc_m"), ("proj", "proj_m")]).unwrap(),
        3
    );
    let v = vs.variables();
    assert!(v["enc_m.w"].equal(&v["enc.w"]));
    assert!(v["enc_m.b"].equal(&v["enc.b"]));
    assert!(v["proj_m.w"].equal(&v["proj.w"]));
    assert_eq!(ints(&v["enc_m.ids"]), vec![7, 8]);
}

#[test]
fn momentum_errors_name_the_key() {
    // Online variable without momentum counterpart.
    let vs = tiny_store();
    let _ = (&vs.root() / "enc").add("extra", t(&[1.], &[1]), true);
    let e = momentum_update(&vs, &[("enc", "enc_m")], 0.9)
        .unwrap_err()
        .to_string();
    assert!(e.contains("enc.extra") && e.contains("enc_m.extra"), "{e}");
    // Momentum variable without online counterpart.
    let vs = tiny_store();
    let _ = (&vs.root() / "enc_m").add("orphan", t(&[1.], &[1]), false);
    let e = copy_params(&vs, &[("enc", "enc_m")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("enc_m.orphan"), "{e}");
    // Shape mismatch.
    let vs = VarStore::new(Device::Cpu);
    let _ = (&vs.root() / "a").add("w", t(&[1., 2.], &[2]), true);
    let _ = (&vs.root() / "a_m").add("w", t(&[1.], &[1]), false);
    let e = momentum_update(&vs, &[("a", "a_m")], 0.9)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a_m.w"), "{e}");
    // Unknown prefix, bad momentum.
    let vs = tiny_store();
    let e = momentum_update(&vs, &[("nope", "nope_m")], 0.9)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope."), "{e}");
    assert!(momentum_update(&vs, &[("enc", "enc_m")], 1.5).is_err());
    // Nothing was modified by the failed calls.
    assert_eq!(floats(&vs.variables()["enc_m.w"]), vec![0., 0., 1., 1.]);
}

/// A weight tied under two names (one storage) is updated once, not twice.
#[test]
fn tied_weights_update_once() {
    let vs = VarStore::new(Device::Cpu);
    let r = vs.root();
    let w = (&r / "dec").add("emb", t(&[1.], &[1]), true);
    let _ = (&r / "dec").add("head", w.shallow_clone(), true);
    let w_m = (&r / "dec_m").add("emb", t(&[0.], &[1]), false);
    let _ = (&r / "dec_m").add("head", w_m.shallow_clone(), false);
    assert_eq!(momentum_update(&vs, &[("dec", "dec_m")], 0.5).unwrap(), 1);
    assert_eq!(floats(&vs.variables()["dec_m.head"]), vec![0.5]);
}

#[test]
fn enqueue_wraps_and_checks() {
    let q = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    let ptr = Tensor::from_slice(&[0i64]);
    let f1 = t(&[1., 2., 3., 4.], &[2, 2]); // two features of dim 2: (1,2), (3,4)
    enqueue(&q, &ptr, &f1).unwrap();
    assert_eq!(floats(&q), vec![1., 3., 0., 0., 2., 4., 0., 0.]);
    assert_eq!(ints(&ptr), vec![2]);
    let f2 = t(&[5., 6., 7., 8.], &[2, 2]);
    enqueue(&q, &ptr, &f2).unwrap();
    assert_eq!(floats(&q), vec![1., 3., 5., 7., 2., 4., 6., 8.]);
    assert_eq!(ints(&ptr), vec![0], "pointer wraps to 0");
    enqueue(&q, &ptr, &t(&[9., 9., 9., 9.], &[2, 2])).unwrap();
    assert_eq!(floats(&q), vec![9., 9., 5., 7., 9., 9., 6., 8.]);
    assert_eq!(ints(&ptr), vec![2]);

    // Q % B != 0: error mentioning drop_last, nothing written, pointer unchanged.
    let before = q.copy();
    let e = enqueue(&q, &ptr, &t(&[1., 1., 1., 1., 1., 1.], &[3, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("drop_last"), "{e}");
    assert!(q.equal(&before));
    assert_eq!(ints(&ptr), vec![2]);
    // Wrong feature dim, pointer out of range / misaligned.
    assert!(enqueue(&q, &ptr, &t(&[1., 1., 1.], &[1, 3])).is_err());
    assert!(enqueue(&q, &Tensor::from_slice(&[4i64]), &f1).is_err());
    assert!(enqueue(&q, &Tensor::from_slice(&[3i64]), &f1).is_err());
}

/// Image, text and idx queues share one pointer, advanced once.
#[test]
fn shared_pointer_and_idx_queue() {
    let iq = Tensor::zeros([1, 6], (Kind::Float, Device::Cpu));
    let tq = Tensor::zeros([1, 6], (Kind::Float, Device::Cpu));
    let idq = Tensor::full([1, 6], -100i64, (Kind::Int64, Device::Cpu));
    let ptr = Tensor::from_slice(&[3i64]);
    let img = t(&[1., 2., 3.], &[3, 1]);
    let txt = t(&[4., 5., 6.], &[3, 1]);
    let idx = Tensor::from_slice(&[7i64, 8, 9]);
    enqueue_shared(&[(&iq, &img), (&tq, &txt), (&idq, &idx)], &ptr).unwrap();
    assert_eq!(floats(&iq), vec![0., 0., 0., 1., 2., 3.]);
    assert_eq!(floats(&tq), vec![0., 0., 0., 4., 5., 6.]);
    assert_eq!(ints(&idq), vec![-100, -100, -100, 7, 8, 9]);
    assert_eq!(ints(&ptr), vec![0]);
    // enqueue_idx alone advances its own pointer.
    let p2 = Tensor::from_slice(&[0i64]);
    enqueue_idx(&idq, &p2, &Tensor::from_slice(&[1i64, 2, 3])).unwrap();
    assert_eq!(ints(&idq), vec![1, 2, 3, 7, 8, 9]);
    assert_eq!(ints(&p2), vec![3]);
    // Mismatched batches across entries are rejected before writing.
    let e = enqueue_shared(&[(&iq, &img), (&tq, &t(&[1., 2.], &[2, 1]))], &ptr);
    assert!(e.is_err());
    assert_eq!(floats(&iq), vec![0., 0., 0., 1., 2., 3.]);
}
