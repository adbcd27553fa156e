//! `itc_with_queue`: equals the hand-assembled ITC step (sims against `[feat_m.T ; queue]`,
//! `Itc::loss`, `enqueue_shared`).
use tch::{Device, Kind, Tensor};
use vlp_objectives::itc::{itc_with_queue, multi_positive_targets, Itc, ItcInputs, ItcQueueInputs};

fn unit(b: i64, e: i64) -> Tensor {
    let x = Tensor::randn([b, e], (Kind::Float, Device::Cpu));
    &x / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
}

#[test]
fn matches_hand_assembled_step_and_enqueues() {
    tch::manual_seed(0);
    let (b, e, q) = (3, 8, 6);
    let (fi, ft, fim, ftm) = (unit(b, e), unit(b, e), unit(b, e), unit(b, e));
    let iq = unit(q, e).tr().contiguous();
    let tq = unit(q, e).tr().contiguous();
    let idx = Tensor::from_slice(&[4i64, 7, 4]);
    let idx_q = Tensor::full([1, q], -100, (Kind::Int64, Device::Cpu));
    let ptr = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
    let temp = Tensor::from(0.07f64).to_kind(Kind::Float);
    let alpha = 0.4;

    let i_all = Tensor::cat(&[fim.tr(), iq.copy()], 1);
    let t_all = Tensor::cat(&[ftm.tr(), tq.copy()], 1);
    let targets = multi_positive_targets(&idx, &Tensor::cat(&[idx.view([1, -1]), idx_q.copy()], 1));
    let (si, st) = (fi.matmul(&t_all) / &temp, ft.matmul(&i_all) / &temp);
    let (sim, stm) = (fim.matmul(&t_all) / &temp, ftm.matmul(&i_all) / &temp);
    let want = Itc::default().loss(&ItcInputs {
        sim_i2t: &si,
        sim_t2i: &st,
        sim_i2t_m: Some(&sim),
        sim_t2i_m: Some(&stm),
        targets: Some(&targets),
        alpha,
    });

    let out = itc_with_queue(&ItcQueueInputs {
        image_feat: &fi,
        text_feat: &ft,
        image_feat_m: &fim,
        text_feat_m: &ftm,
        image_queue: &iq,
        text_queue: &tq,
        idx: Some((&idx, &idx_q)),
        queue_ptr: &ptr,
        temp: &temp,
        alpha,
        distill: true,
    })
    .unwrap();
    assert!(out.loss.allclose(&want, 1e-6, 1e-6, false));
    assert!(out.sim_i2t.allclose(&si, 1e-6, 1e-6, false));
    assert!(out.sim_t2i_m.allclose(&stm, 1e-6, 1e-6, false));
    // Enqueued at the shared pointer 0, which moves to B.
    assert_eq!(ptr.int64_value(&[0]), b);
    assert!(iq.narrow(1, 0, b).allclose(&fim.tr(), 0.0, 0.0, false));
    assert!(tq.narrow(1, 0, b).allclose(&ftm.tr(), 0.0, 0.0, false));
    assert_eq!(
        Vec::<i64>::try_from(idx_q.narrow(1, 0, b).reshape([-1])).unwrap(),
        vec![4, 7, 4]
    );
}
