//! Tests of the training core (`vlp_tasks::train`): AdamW parity with torch, accumulation,
//! clipping, freezing, non-finite losses, the fp16 scaler on CPU, kill-and-resume exactness,
//! atomic checkpoints and the run directory.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{read_state_dict, ReadOptions};
use vlp_tasks::train::{
    clip_grad_norm, run_dir::read_metrics, trainer::read_train_records, AdamW, EvalContext,
    InMemorySource, LossTerms, OptimizerConfig, StepContext, StepRecord, TrainConfig, Trainable,
    Trainer,
};

/// torch's generator is process-global and every trainer re-seeds it per step: tests that draw
/// random numbers run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlp-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// ------------------------------------------------------------------------------------------------
// AdamW parity with torch.optim.AdamW (fixture from scripts/fixtures/make_adamw_case.py).
// ------------------------------------------------------------------------------------------------

const NAMES: [&str; 5] = [
    "encoder.layer.0.dense.weight",
    "encoder.layer.0.dense.bias",
    "encoder.layer.0.LayerNorm.weight",
    "head.weight",
    "head.bias",
];

#[test]
fn adamw_matches_torch_fixture() {
    let _serial = serial();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/train/adamw_case.safetensors");
    let sd = read_state_dict(&path, &ReadOptions::default()).unwrap();
    let get = |k: &str| {
        sd.get(k)
            .unwrap_or_else(|| panic!("fixture lacks {k}"))
            .copy()
    };
    let params: Vec<(String, Tensor)> = NAMES
        .iter()
        .map(|n| (n.to_string(), get(&format!("init/{n}"))))
        .collect();
    let handles: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let cfg = OptimizerConfig {
        lr: 1e-3,
        weight_decay: 0.05,
        betas: [0.9, 0.98],
        eps: 1e-6,
        lr_mult: BTreeMap::from([("head".to_string(), 10.0)]),
        ..Default::default()
    };
    let mut opt = AdamW::from_named(params, &cfg).unwrap();
    // Groups as timm's create_optimizer: no decay on biases and 1-D params; head lr x10.
    let groups: Vec<(String, f64, f64)> = opt
        .params()
        .map(|p| (p.name.clone(), p.weight_decay, p.lr_mult))
        .collect();
    assert_eq!(
        groups,
        [
            ("encoder.layer.0.dense.weight".to_string(), 0.05, 1.0),
            ("encoder.layer.0.dense.bias".to_string(), 0.0, 1.0),
            ("encoder.layer.0.LayerNorm.weight".to_string(), 0.0, 1.0),
            ("head.weight".to_string(), 0.05, 10.0),
            ("head.bias".to_string(), 0.0, 10.0),
        ]
    );
    let mut worst: f64 = 0.0;
    for t in 0..5 {
        let lr = sd.get(&format!("lr/{t}")).unwrap().double_value(&[0]);
        let grads: Vec<Option<Tensor>> = NAMES
            .iter()
            .map(|n| Some(get(&format!("grad/{t}/{n}"))))
            .collect();
        opt.step(lr, &grads).unwrap();
        for (n, p) in NAMES.iter().zip(&handles) {
            let d = max_abs_diff(p, &get(&format!("param/{t}/{n}")));
            worst = worst.max(d);
            assert!(d <= 1e-6, "step {t} {n}: max |diff| {d:e}");
        }
    }
    eprintln!("AdamW parity: max |param - torch| over 5 steps = {worst:e}");
    // The state matches torch's too, and survives a save/load round trip.
    let state = opt.state_dict();
    for n in NAMES {
        for k in ["exp_avg", "exp_avg_sq"] {
            let d = max_abs_diff(
                state.get(&format!("{n}.{k}")).unwrap(),
                &get(&format!("{k}/{n}")),
            );
            assert!(d <= 1e-6, "{n}.{k}: {d:e}");
        }
        assert_eq!(
            state.get(&format!("{n}.step")).unwrap().int64_value(&[0]),
            5
        );
        assert_eq!(get(&format!("step/{n}")).double_value(&[0]), 5.0);
    }
    let copies: Vec<(String, Tensor)> = NAMES
        .iter()
        .zip(&handles)
        .map(|(n, p)| (n.to_string(), p.copy()))
        .collect();
    let copy_handles: Vec<Tensor> = copies.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mut opt2 = AdamW::from_named(copies, &cfg).unwrap();
    opt2.load_state_dict(&state).unwrap();
    let grads: Vec<Option<Tensor>> = NAMES
        .iter()
        .map(|n| Some(get(&format!("grad/4/{n}"))))
        .collect();
    opt.step(1e-3, &grads).unwrap();
    opt2.step(1e-3, &grads).unwrap();
    for (a, b) in handles.iter().zip(&copy_handles) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    // A state for an unknown parameter is an error.
    let mut bad = opt.state_dict();
    bad.insert(
        "nope.exp_avg",
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    assert!(opt2
        .load_state_dict(&bad)
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

#[test]
fn param_groups_freeze_and_pattern_errors() {
    let _serial = serial();
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let _a = nn::linear(&root / "text_encoder" / "layer", 3, 3, Default::default());
    let _b = nn::layer_norm(
        &root / "text_encoder" / "LayerNorm",
        vec![3],
        Default::default(),
    );
    let _c = nn::linear(&root / "vqa_head", 3, 2, Default::default());
    let _d = nn::linear(
        &root / "visual" / "blocks" / "0" / "mlp",
        3,
        3,
        Default::default(),
    );
    // A tied weight: one tensor under two paths (as `new_sharing_kv` registers it).
    let dec = nn::linear(&root / "dec", 3, 3, Default::default());
    let _ = (&root / "tied").add("weight", dec.ws.shallow_clone(), false);
    let cfg = OptimizerConfig {
        freeze: vec!["visual.*".into()],
        lr_mult: BTreeMap::from([("vqa_head".to_string(), 10.0)]),
        ..Default::default()
    };
    let opt = AdamW::new(&vs, &cfg).unwrap();
    let info: BTreeMap<String, (f64, f64)> = opt
        .params()
        .map(|p| (p.name.clone(), (p.weight_decay, p.lr_mult)))
        .collect();
    assert_eq!(info["text_encoder.layer.weight"], (0.02, 1.0));
    assert_eq!(info["text_encoder.layer.bias"], (0.0, 1.0));
    assert_eq!(info["text_encoder.LayerNorm.weight"], (0.0, 1.0));
    assert_eq!(info["vqa_head.weight"], (0.02, 10.0));
    assert_eq!(info["vqa_head.bias"], (0.0, 10.0));
    let dec_w = opt.params().find(|p| p.name == "dec.weight").unwrap();
    assert_eq!(dec_w.aliases, ["tied.weight"]);
    assert!(
        opt.params().all(|p| p.name != "tied.weight"),
        "tied weight listed twice"
    );
    assert_eq!(
        opt.frozen(),
        ["visual.blocks.0.mlp.bias", "visual.blocks.0.mlp.weight"]
    );
    assert!(!vs.variables()["visual.blocks.0.mlp.weight"].requires_grad());
    assert!(opt.summary().contains("2 frozen"), "{}", opt.summary());

    let typo = OptimizerConfig {
        lr_mult: BTreeMap::from([("vqa_haed".to_string(), 10.0)]),
        ..Default::default()
    };
    let e = AdamW::new(&vs, &typo).unwrap_err().to_string();
    assert!(e.contains("vqa_haed") && e.contains("match no"), "{e}");
    let ambiguous = OptimizerConfig {
        lr_mult: BTreeMap::from([("vqa_head".to_string(), 10.0), ("*.bias".to_string(), 2.0)]),
        ..Default::default()
    };
    let e = AdamW::new(&vs, &ambiguous).unwrap_err().to_string();
    assert!(e.contains("vqa_head.bias") && e.contains("both"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Clipping.
// ------------------------------------------------------------------------------------------------

#[test]
fn clip_grad_norm_semantics() {
    let _serial = serial();
    // Norm of (3, 4, 12) = 13.
    let mut g = vec![
        Some(Tensor::from_slice(&[3.0f32, 4.0])),
        None,
        Some(Tensor::from_slice(&[12.0f32])),
    ];
    let n = clip_grad_norm(&mut g, 1.3).unwrap();
    assert!((n - 13.0).abs() < 1e-6, "{n}");
    let coef = 1.3 / (13.0 + 1e-6);
    let a = Vec::<f32>::try_from(g[0].as_ref().unwrap()).unwrap();
    let b = Vec::<f32>::try_from(g[2].as_ref().unwrap()).unwrap();
    for (got, want) in a.iter().chain(&b).zip([3.0, 4.0, 12.0]) {
        assert!(
            (*got as f64 - want * coef).abs() < 1e-6,
            "{got} vs {}",
            want * coef
        );
    }
    // Below the threshold: unchanged (coefficient clamped to 1).
    let mut g = vec![Some(Tensor::from_slice(&[3.0f32, 4.0]))];
    assert!((clip_grad_norm(&mut g, 10.0).unwrap() - 5.0).abs() < 1e-6);
    assert_eq!(
        Vec::<f32>::try_from(g[0].as_ref().unwrap()).unwrap(),
        [3.0, 4.0]
    );
}

// ------------------------------------------------------------------------------------------------
// Small models.
// ------------------------------------------------------------------------------------------------

/// y = x W + b with a mean-squared loss.
struct LinearModel {
    vs: nn::VarStore,
    lin: nn::Linear,
}

impl LinearModel {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "lin", 4, 2, Default::default());
        Self { vs, lin }
    }
}

impl Trainable for LinearModel {
    type Batch = (Tensor, Tensor);
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn train_step(
        &mut self,
        (x, y): &(Tensor, Tensor),
        _ctx: &StepContext<'_>,
    ) -> vlp_core::Result<LossTerms> {
        let loss = self.lin.forward(x).mse_loss(y, tch::Reduction::Mean);
        Ok(LossTerms::new().with("mse", loss))
    }
}

fn linear_data(n: usize, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let x = Tensor::randn([n as i64, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0, 0.0, 1.0, 1.0, -1.0]).reshape([4, 2]);
    let y = x.matmul(&w) + 0.1 * Tensor::randn([n as i64, 2], (Kind::Float, Device::Cpu));
    (x, y)
}

fn chunks((x, y): &(Tensor, Tensor), size: i64) -> Vec<(Tensor, Tensor)> {
    let n = x.size()[0];
    (0..n / size)
        .map(|i| (x.narrow(0, i * size, size), y.narrow(0, i * size, size)))
        .collect()
}

fn base_config(yaml: &str) -> TrainConfig {
    let mut c = TrainConfig::from_yaml(yaml).unwrap();
    c.progress = false;
    c
}

#[test]
fn accumulation_equals_big_batch() {
    let _serial = serial();
    let data = linear_data(24, 3);
    let run = |accum: usize, bs: i64, name: &str| {
        let cfg = base_config(&format!(
            "name: {name}\nepochs: 2\ngrad_accum: {accum}\nlog_every: 1\nckpt_every: 0\nschedule: {{kind: constant}}\noptimizer: {{lr: 0.01, weight_decay: 0.1}}\n"
        ));
        let mut model = LinearModel::new(11);
        let mut src = InMemorySource::new(chunks(&data, bs), bs as usize);
        let mut t = Trainer::new(cfg, Some(tmp(name))).unwrap();
        let out = t.fit(&mut model, &mut src, None).unwrap();
        (out, model)
    };
    let (a, ma) = run(4, 2, "accum4x2");
    let (b, mb) = run(1, 8, "accum1x8");
    assert_eq!(a.step, 6);
    assert_eq!(b.step, 6);
    assert_eq!(a.history.len(), 6);
    for (ra, rb) in a.history.iter().zip(&b.history) {
        assert!(
            (ra.loss - rb.loss).abs() < 1e-6 * rb.loss,
            "loss {} vs {}",
            ra.loss,
            rb.loss
        );
        let (ga, gb) = (ra.grad_norm.unwrap(), rb.grad_norm.unwrap());
        assert!(
            (ga - gb).abs() < 1e-5 * gb.max(1.0),
            "grad norm {ga} vs {gb}"
        );
        assert_eq!(ra.samples, rb.samples);
    }
    for (k, v) in ma.vs.variables() {
        let d = max_abs_diff(&v, &mb.vs.variables()[&k]);
        assert!(d < 1e-6, "{k}: {d:e}");
    }
    // A partial last step (3 micro-batches of 2 per epoch with accum 2: steps of 2 then 1).
    let cfg = base_config("name: partial\nepochs: 1\ngrad_accum: 2\nlog_every: 1\nckpt_every: 0\n");
    let mut model = LinearModel::new(11);
    let mut src = InMemorySource::new(chunks(&linear_data(6, 4), 2), 2);
    let out = Trainer::new(cfg, Some(tmp("partial")))
        .unwrap()
        .fit(&mut model, &mut src, None)
        .unwrap();
    assert_eq!((out.step, out.epoch), (2, 1));
    assert_eq!(out.history.last().unwrap().samples, 6);
}

/// Two linears; `enc` can be frozen.
struct TwoLayer {
    vs: nn::VarStore,
    enc: nn::Linear,
    head: nn::Linear,
}

impl Trainable for TwoLayer {
    type Batch = (Tensor, Tensor);
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn train_step(
        &mut self,
        (x, y): &(Tensor, Tensor),
        _ctx: &StepContext<'_>,
    ) -> vlp_core::Result<LossTerms> {
        let out = self.head.forward(&self.enc.forward(x).tanh());
        Ok(LossTerms::new().with("mse", out.mse_loss(y, tch::Reduction::Mean)))
    }
}

#[test]
fn frozen_parameters_get_no_grad_and_no_update() {
    let _serial = serial();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = nn::linear(vs.root() / "enc", 4, 4, Default::default());
    let head = nn::linear(vs.root() / "head", 4, 2, Default::default());
    let mut model = TwoLayer { vs, enc, head };
    let before: BTreeMap<String, Tensor> = model
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    let cfg = base_config(
        "name: freeze\nmax_steps: 5\nckpt_every: 0\noptimizer: {lr: 0.01, freeze: [enc]}\n",
    );
    let mut src = InMemorySource::new(chunks(&linear_data(8, 1), 4), 4);
    Trainer::new(cfg, Some(tmp("freeze")))
        .unwrap()
        .fit(&mut model, &mut src, None)
        .unwrap();
    for (k, v) in model.vs.variables() {
        let changed = max_abs_diff(&v, &before[&k]) > 0.0;
        if k.starts_with("enc.") {
            assert!(!changed, "{k} changed");
            assert!(!v.requires_grad(), "{k} requires grad");
            assert!(!v.grad().defined(), "{k} has a grad");
        } else {
            assert!(changed, "{k} did not change");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Non-finite losses and the fp16 scaler.
// ------------------------------------------------------------------------------------------------

/// Two terms; `itm` turns into `bad` at step index `bad_at`.
struct Flaky {
    inner: LinearModel,
    bad_at: u64,
    bad: f64,
}

impl Trainable for Flaky {
    type Batch = (Tensor, Tensor);
    fn var_store(&self) -> &nn::VarStore {
        &self.inner.vs
    }
    fn train_step(
        &mut self,
        (x, y): &(Tensor, Tensor),
        ctx: &StepContext<'_>,
    ) -> vlp_core::Result<LossTerms> {
        let out = self.inner.lin.forward(x);
        let itc = out.mse_loss(y, tch::Reduction::Mean);
        let mut itm = out.abs().mean(Kind::Float);
        if ctx.step == self.bad_at {
            itm *= self.bad;
        }
        let mut lt = LossTerms::new();
        lt.push("itc", itc).push_weighted("itm", itm, 0.5);
        Ok(lt)
    }
}

#[test]
fn non_finite_loss_names_step_terms_and_checkpoint() {
    let _serial = serial();
    let dir = tmp("nan");
    let cfg = base_config("name: nan\nmax_steps: 10\nckpt_every: 2\nlog_every: 1\n");
    let mut model = Flaky {
        inner: LinearModel::new(1),
        bad_at: 3,
        bad: f64::NAN,
    };
    let mut src = InMemorySource::new(chunks(&linear_data(8, 1), 4), 4);
    let e = Trainer::new(cfg, Some(dir.clone()))
        .unwrap()
        .fit(&mut model, &mut src, None)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(e.contains("non-finite loss at step 4"), "{e}");
    assert!(e.contains("itm = NaN (weight 0.5)"), "{e}");
    assert!(e.contains("itc = "), "{e}");
    assert!(e.contains("step-00000002"), "{e}");
    assert!(e.contains("--resume"), "{e}");
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert!(log.contains("ERROR non-finite loss at step 4"), "{log}");
    // Before any checkpoint: says so.
    let cfg = base_config("name: nan0\nmax_steps: 10\nckpt_every: 5\n");
    let mut model = Flaky {
        inner: LinearModel::new(1),
        bad_at: 0,
        bad: f64::INFINITY,
    };
    let mut src = InMemorySource::new(chunks(&linear_data(8, 1), 4), 4);
    let e = Trainer::new(cfg, Some(tmp("nan0")))
        .unwrap()
        .fit(&mut model, &mut src, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at step 1 ") && e.contains("itm = inf") && e.contains("none"),
        "{e}"
    );
}

#[test]
fn fp16_scaler_on_cpu_skips_bad_steps_and_is_exact_otherwise() {
    let _serial = serial();
    let run = |precision: &str, bad_at: u64, name: &str| {
        let cfg = base_config(&format!(
            "name: {name}\nmax_steps: 5\nckpt_every: 0\nlog_every: 1\nprecision: {precision}\nscaler: {{on_cpu: true, growth_interval: 3}}\n"
        ));
        let mut model = Flaky {
            inner: LinearModel::new(2),
            bad_at,
            bad: f64::INFINITY,
        };
        let mut src = InMemorySource::new(chunks(&linear_data(8, 1), 4), 4);
        let out = Trainer::new(cfg, Some(tmp(name)))
            .unwrap()
            .fit(&mut model, &mut src, None)
            .unwrap();
        let w = model.inner.vs.variables()["lin.weight"].copy();
        (out, w)
    };
    // Scaling by 2^16 and unscaling is exact: same losses and weights as fp32.
    let (a, wa) = run("fp32", 99, "fp32");
    let (b, wb) = run("fp16", 99, "fp16");
    for (ra, rb) in a.history.iter().zip(&b.history) {
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
    }
    assert_eq!(max_abs_diff(&wa, &wb), 0.0);
    assert_eq!(b.history[0].scale, Some(65536.0));
    let log = std::fs::read_to_string(b.run_dir.join("train.log")).unwrap();
    assert!(
        log.contains("autocast is CUDA-only") && log.contains("with loss scaling"),
        "{log}"
    );
    assert_eq!(
        b.history[2].scale,
        Some(131072.0),
        "growth after 3 good steps"
    );
    // An inf loss at step index 1: skipped, scale halved, no error.
    let (c, _) = run("fp16", 1, "fp16skip");
    assert_eq!(c.skipped_steps, 1);
    let s: Vec<(u64, Option<f64>)> = c.history.iter().map(|r| (r.skipped, r.scale)).collect();
    assert_eq!(
        s,
        [
            (0, Some(65536.0)),
            (1, Some(32768.0)),
            (0, Some(32768.0)),
            (0, Some(32768.0)),
            (0, Some(65536.0))
        ]
    );
    assert!(c.history[1].loss.is_infinite());
}

// ------------------------------------------------------------------------------------------------
// Kill and resume: bit-identical continuation.
// ------------------------------------------------------------------------------------------------

/// An MLP with dropout, a noisy objective and a second one, for mixed runs.
struct Noisy {
    vs: nn::VarStore,
    l1: nn::Linear,
    l2: nn::Linear,
    after_steps: u64,
}

impl Noisy {
    fn new(init_seed: i64) -> Self {
        tch::manual_seed(init_seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let l1 = nn::linear(vs.root() / "l1", 4, 16, Default::default());
        let l2 = nn::linear(vs.root() / "l2", 16, 2, Default::default());
        let _queue = vs.root().zeros_no_train("queue", &[3]);
        Self {
            vs,
            l1,
            l2,
            after_steps: 0,
        }
    }
}

impl Trainable for Noisy {
    type Batch = (Tensor, Tensor);
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn train_step(
        &mut self,
        (x, y): &(Tensor, Tensor),
        ctx: &StepContext<'_>,
    ) -> vlp_core::Result<LossTerms> {
        assert!(ctx.group.is_some() && ctx.objectives.len() == 1);
        let h = self.l1.forward(x).relu().dropout(0.3, ctx.train);
        let out = self.l2.forward(&h);
        let mut lt = LossTerms::new();
        if ctx.is_active("reg") {
            let noise = Tensor::randn_like(&out) * 0.1;
            lt.push("reg", (&out - y - noise).square().mean(Kind::Float));
        }
        if ctx.is_active("aux") {
            lt.push("aux", out.abs().mean(Kind::Float) * ctx.warmup_ramp());
        }
        lt.metric("ramp", ctx.warmup_ramp());
        Ok(lt)
    }
    fn after_optimizer_step(&mut self, _ctx: &StepContext<'_>) -> vlp_core::Result<()> {
        // A buffer updated outside the optimizer (like a momentum queue).
        self.after_steps += 1;
        tch::no_grad(|| {
            let mut q = self.vs.variables()["queue"].shallow_clone();
            let _ = q.g_add_scalar_(1.0);
        });
        Ok(())
    }
    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "after_steps": self.after_steps })
    }
    fn load_extra_state(&mut self, s: &serde_json::Value) -> vlp_core::Result<()> {
        self.after_steps = s["after_steps"].as_u64().unwrap();
        Ok(())
    }
}

const RESUME_CFG: &str = "name: resume
epochs: 4
grad_accum: 2
clip_grad_norm: 0.5
log_every: 1
ckpt_every: 4
plot_every: 3
seed: 7
schedule: {kind: cosine, warmup: 2, min_lr: 1.0e-4}
optimizer: {lr: 0.01, weight_decay: 0.05}
objectives: {reg: 1.0, aux: 0.3}
mix:
  - {name: reg, ratio: 2}
  - {name: aux, ratio: 1}
";

fn noisy_source() -> InMemorySource<(Tensor, Tensor)> {
    // 6 batches of 3 per epoch, shuffled per epoch: 3 steps per epoch, 12 steps.
    InMemorySource::new(chunks(&linear_data(18, 9), 3), 3).shuffled(5)
}

/// (step, epoch, loss bits, term bits, grad-norm bits, lr bits).
type Key = (u64, u64, u64, Vec<(String, u64)>, Option<u64>, u64);

fn key(r: &StepRecord) -> Key {
    (
        r.step,
        r.epoch,
        r.loss.to_bits(),
        r.terms
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect(),
        r.grad_norm.map(f64::to_bits),
        r.lr.to_bits(),
    )
}

#[test]
fn kill_and_resume_reproduces_the_uninterrupted_run_exactly() {
    let _serial = serial();
    let evaluator = |m: &mut Noisy, ctx: &EvalContext| -> vlp_core::Result<BTreeMap<String, f64>> {
        let (x, y) = linear_data(6, 100);
        let out = m.l2.forward(&m.l1.forward(&x).relu());
        Ok(BTreeMap::from([
            (
                "mse".to_string(),
                out.mse_loss(&y, tch::Reduction::Mean).double_value(&[]),
            ),
            ("epoch".to_string(), ctx.epoch as f64),
        ]))
    };

    // Uninterrupted.
    let full_dir = tmp("resume-full");
    let mut model = Noisy::new(1);
    let mut ev = evaluator;
    let full = Trainer::new(base_config(RESUME_CFG), Some(full_dir.clone()))
        .unwrap()
        .fit(&mut model, &mut noisy_source(), Some(&mut ev))
        .unwrap();
    assert_eq!((full.step, full.epoch), (12, 4));
    assert_eq!(full.history.len(), 12);
    assert_eq!(full.evals.len(), 4, "one evaluation per epoch");
    let groups: u64 = full.history.iter().flat_map(|r| r.groups.values()).sum();
    assert_eq!(groups, 12);
    let full_vars: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    drop(model);

    // Killed after step 7 (last checkpoint: step 4).
    let dir = tmp("resume-killed");
    let mut model = Noisy::new(1);
    let mut ev = evaluator;
    let mut t = Trainer::new(base_config(RESUME_CFG), Some(dir.clone())).unwrap();
    t.halt_at(7);
    let first = t
        .fit(&mut model, &mut noisy_source(), Some(&mut ev))
        .unwrap();
    assert!(first.halted);
    assert_eq!(first.step, 7);
    assert_eq!(
        read_train_records(&dir.join("metrics.jsonl"))
            .unwrap()
            .len(),
        7
    );
    drop((t, model));

    // Resume with a differently initialised model and a fresh source.
    let mut model = Noisy::new(999);
    let mut ev = evaluator;
    let mut t = Trainer::resume(&dir, &[]).unwrap();
    let second = t
        .fit(&mut model, &mut noisy_source(), Some(&mut ev))
        .unwrap();
    assert_eq!(
        second.history.first().unwrap().step,
        5,
        "continues after the step-4 checkpoint"
    );
    assert_eq!(second.step, 12);
    assert_eq!(model.after_steps, 12);

    // In memory: the first 4 steps of the killed run, then the resumed run.
    let a: Vec<_> = full.history.iter().map(key).collect();
    let b: Vec<_> = first.history[..4]
        .iter()
        .chain(&second.history)
        .map(key)
        .collect();
    assert_eq!(a, b, "loss sequences differ");
    // On disk: metrics.jsonl reads as the uninterrupted run's.
    let a: Vec<_> = read_train_records(&full_dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(key)
        .collect();
    let b: Vec<_> = read_train_records(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(key)
        .collect();
    assert_eq!(a, b, "metrics.jsonl differ");
    for (k, v) in model.vs.variables() {
        assert!(v.equal(&full_vars[&k]), "{k} differs after resume");
    }
    assert_eq!(model.vs.variables()["queue"].double_value(&[0]), 12.0);
    // The evaluations match too (and the killed run's extra records were dropped).
    let evals = |d: &Path| -> Vec<String> {
        read_metrics(&d.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r["type"] == "eval")
            .map(|r| format!("{} {}", r["step"], r["metrics"]))
            .collect()
    };
    assert_eq!(evals(&full_dir), evals(&dir));
}

// ------------------------------------------------------------------------------------------------
// Checkpoint files and the run directory.
// ------------------------------------------------------------------------------------------------

#[test]
fn checkpoints_are_atomic_and_latest_errors_are_clear() {
    let _serial = serial();
    let dir = tmp("ckpt");
    let cfg = base_config("name: ckpt\nmax_steps: 7\nckpt_every: 2\nkeep_checkpoints: 2\n");
    let mut model = LinearModel::new(3);
    let mut src = InMemorySource::new(chunks(&linear_data(8, 1), 4), 4);
    let out = Trainer::new(cfg, Some(dir.clone()))
        .unwrap()
        .fit(&mut model, &mut src, None)
        .unwrap();
    let ck = dir.join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["latest", "step-00000006", "step-00000007"],
        "temp files or extra checkpoints left"
    );
    assert_eq!(
        std::fs::read_to_string(ck.join("latest")).unwrap().trim(),
        "step-00000007"
    );
    assert_eq!(
        out.last_checkpoint.as_deref(),
        Some(ck.join("step-00000007").as_path())
    );
    for n in &names[1..] {
        let mut files: Vec<String> = std::fs::read_dir(ck.join(n))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "model.safetensors",
                "optimizer.safetensors",
                "trainer_state.json"
            ]
        );
    }
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ck.join("step-00000007/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 7);
    assert_eq!(state["data_position"]["index"], 1);
    let opt = read_state_dict(
        &ck.join("step-00000007/optimizer.safetensors"),
        &ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(opt.get("lin.weight.step").unwrap().int64_value(&[0]), 7);

    // A finished run can be extended by resuming with a new max_steps.
    let mut t = Trainer::resume(&dir, &["max_steps=9"]).unwrap();
    let more = t
        .fit(
            &mut LinearModel::new(4),
            &mut InMemorySource::new(chunks(&linear_data(8, 1), 4), 4),
            None,
        )
        .unwrap();
    assert_eq!(more.step, 9);

    // Corrupted, dangling and missing `latest`.
    std::fs::write(ck.join("latest"), b"\x00garbage/..").unwrap();
    let e = Trainer::resume(&dir, &[]).unwrap_err().to_string();
    assert!(e.contains("latest") && e.contains("corrupted"), "{e}");
    std::fs::write(ck.join("latest"), b"step-00000099\n").unwrap();
    let e = Trainer::resume(&dir, &[]).unwrap_err().to_string();
    assert!(e.contains("step-00000099") && e.contains("missing"), "{e}");
    std::fs::remove_file(ck.join("latest")).unwrap();
    let e = Trainer::resume(&dir, &[]).unwrap_err().to_string();
    assert!(
        e.contains("no `latest`") && e.contains("step-00000009"),
        "{e}"
    );
    // Starting a new run over an existing one is refused.
    let e = Trainer::new(base_config("max_steps: 1\n"), Some(dir.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
    // A directory that is not a run.
    let e = Trainer::resume(tmp("not-a-run"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a run directory"), "{e}");
}

#[test]
fn run_directory_contents() {
    let _serial = serial();
    let dir = tmp("rundir");
    let yaml = "name: rundir\nepochs: 3\nlog_every: 2\nckpt_every: 0\nplot_every: 2\neval_every: 3\nschedule: {per: epoch, kind: linear}\noptimizer: {lr: 0.001}\n";
    let cfg = base_config(yaml);
    let mut model = LinearModel::new(3);
    let mut src = InMemorySource::new(chunks(&linear_data(16, 1), 4), 4);
    let mut ev =
        |_m: &mut LinearModel, ctx: &EvalContext| -> vlp_core::Result<BTreeMap<String, f64>> {
            Ok(BTreeMap::from([(
                "acc".to_string(),
                ctx.step as f64 / 12.0,
            )]))
        };
    let out = Trainer::new(cfg.clone(), Some(dir.clone()))
        .unwrap()
        .fit(&mut model, &mut src, Some(&mut ev))
        .unwrap();
    assert_eq!(out.step, 12);
    // The resolved config round-trips.
    let back = TrainConfig::load(dir.join("config.yaml")).unwrap();
    assert_eq!(back, cfg);
    // metrics.jsonl: every line is a JSON object with a type.
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<&serde_json::Value> = recs.iter().filter(|r| r["type"] == "train").collect();
    let evals: Vec<&serde_json::Value> = recs.iter().filter(|r| r["type"] == "eval").collect();
    assert_eq!(train.len(), 6);
    assert_eq!(evals.len(), 4, "steps 3, 6, 9 and the end");
    assert_eq!(evals.last().unwrap()["step"], 12);
    // Per-epoch linear schedule: lr constant within an epoch (4 steps), 1e-3 * (1 - e/3).
    let lrs: Vec<f64> = train.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    let want = [
        1e-3,
        1e-3,
        1e-3 * 2.0 / 3.0,
        1e-3 * 2.0 / 3.0,
        1e-3 / 3.0,
        1e-3 / 3.0,
    ];
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
    for r in &train {
        assert!(r["loss"].is_f64() && r["terms"]["mse"].is_f64() && r["samples_per_s"].is_f64());
    }
    // Plots decode.
    for p in ["loss.png", "eval.png"] {
        let img = image::open(dir.join("plots").join(p)).unwrap();
        assert!(img.width() >= 400 && img.height() >= 300, "{p}");
        // Not blank: some dark pixels (axes, text).
        let dark = img
            .to_rgb8()
            .pixels()
            .filter(|px| px.0.iter().all(|&c| c < 80))
            .count();
        assert!(dark > 100, "{p} looks blank");
    }
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert!(
        log.contains("AdamW") && log.contains("done: 12 steps"),
        "{log}"
    );
}

#[test]
fn config_defaults_errors_and_docs_example() {
    let _serial = serial();
    let c = TrainConfig::from_yaml("max_steps: 10\n").unwrap();
    assert_eq!(c.grad_accum, 1);
    assert_eq!(c.seed, 42);
    assert_eq!(c.optimizer.betas, [0.9, 0.999]);
    assert_eq!(c.scaler.init_scale, 65536.0);
    assert_eq!(c.scaler.growth_interval, 2000);
    let e =
        TrainConfig::from_yaml("max_steps: 10\noptimizer:\n  lr: 1.0e-4\n  wieght_decay: 0.1\n")
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("optimizer.wieght_decay") && e.contains("line 4"),
        "{e}"
    );
    let e = TrainConfig::from_yaml("optimizer: {lr: 1.0e-4}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("epochs") && e.contains("max_steps"), "{e}");
    let e = TrainConfig::from_yaml("max_steps: 1\nprecision: fp8\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("precision"), "{e}");
    let e = TrainConfig::from_yaml(
        "max_steps: 1\nobjectives: {itc: 1}\nmix: [{name: itm, ratio: 1}]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("mix.itm") && e.contains("`itm`"), "{e}");

    // Every ```yaml block of docs/training.md parses.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/training.md"))
            .unwrap();
    let mut n = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        TrainConfig::from_yaml(yaml)
            .unwrap_or_else(|e| panic!("docs/training.md example {n}: {e}\n{yaml}"));
        n += 1;
    }
    assert!(n >= 3, "expected yaml examples in docs/training.md");
}

// ------------------------------------------------------------------------------------------------
// CUDA (skipped without a GPU).
// ------------------------------------------------------------------------------------------------

#[test]
fn cuda_autocast_and_fp16_training() {
    let _serial = serial();
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    use vlp_tasks::train::{amp::autocast, amp::cuda_autocast_dtype, Precision};
    let dev = Device::Cuda(0);
    let a = Tensor::randn([8, 8], (Kind::Float, dev));
    assert_eq!(
        autocast(Precision::Bf16, dev, || a.matmul(&a)).kind(),
        Kind::BFloat16
    );
    assert_eq!(
        autocast(Precision::Fp16, dev, || a.matmul(&a)).kind(),
        Kind::Half
    );
    assert_eq!(
        autocast(Precision::Fp32, dev, || a.matmul(&a)).kind(),
        Kind::Float
    );
    assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast left on");
    assert_eq!(
        cuda_autocast_dtype(),
        Some(Kind::Half),
        "dtype not restored"
    );

    for precision in ["bf16", "fp16"] {
        let cfg = base_config(&format!(
            "name: cuda-{precision}\nmax_steps: 6\nckpt_every: 3\nlog_every: 1\nprecision: {precision}\nclip_grad_norm: 1.0\n"
        ));
        tch::manual_seed(0);
        let vs = nn::VarStore::new(dev);
        let lin = nn::linear(vs.root() / "lin", 4, 2, Default::default());
        let mut model = LinearModel { vs, lin };
        let (x, y) = linear_data(16, 1);
        let batches = chunks(&(x.to_device(dev), y.to_device(dev)), 4);
        let dir = tmp(&format!("cuda-{precision}"));
        let out = Trainer::new(cfg, Some(dir.clone()))
            .unwrap()
            .fit(&mut model, &mut InMemorySource::new(batches, 4), None)
            .unwrap();
        assert_eq!(out.step, 6);
        assert!(out.history.iter().all(|r| r.loss.is_finite()));
        assert_eq!(out.history[0].scale.is_some(), precision == "fp16");
        assert!(out.history.last().unwrap().loss < out.history[0].loss);
        let mut t = Trainer::resume(&dir, &["max_steps=8"]).unwrap();
        assert_eq!(
            t.fit(
                &mut model,
                &mut InMemorySource::new(
                    chunks(&linear_data(16, 1), 4)
                        .into_iter()
                        .map(|(x, y)| (x.to_device(dev), y.to_device(dev)))
                        .collect(),
                    4
                ),
                None
            )
            .unwrap()
            .step,
            8
        );
    }
}

// ------------------------------------------------------------------------------------------------
// ALBEF's learning-rate schedule (`schedule.style: albef`).
// ------------------------------------------------------------------------------------------------

/// Every iteration of ALBEF's recipes, replayed with timm 0.4.12's `CosineLRScheduler` and the
/// stepping of ALBEF's training scripts (fixture from
/// scripts/fixtures/make_albef_schedule_case.py, cross-checked against ALBEF's own scheduler).
#[test]
fn albef_schedule_matches_timm_fixture() {
    use vlp_tasks::train::{LrSchedule, ScheduleConfig, SchedulePer, ScheduleStyle};
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/train/albef_schedule_case.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(fx["timm"], "0.4.12");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut worst = 0.0f64;
    let (mut n_checked, mut n_bitwise) = (0u64, 0u64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let f = |k: &str| case[k].as_f64().unwrap();
        let u = |k: &str| case[k].as_u64().unwrap();
        let (epochs, iters) = (u("epochs"), u("iters_per_epoch"));
        let cfg = ScheduleConfig {
            per: SchedulePer::Epoch,
            style: ScheduleStyle::Albef,
            warmup: u("warmup_epochs"),
            warmup_lr: f("warmup_lr"),
            min_lr: f("min_lr"),
            step_size: Some(u("step_size")),
            warmup_prefix: Some(case["warmup_prefix"].as_bool().unwrap()),
            ..Default::default()
        };
        let s = LrSchedule::from_config(&cfg, f("lr"), epochs * iters, Some(epochs)).unwrap();
        let mut want = Vec::new();
        for run in case["runs"].as_array().unwrap() {
            // The bit pattern (serde_json's decimal parsing may be 1 ulp off); the decimal agrees.
            let (count, dec) = (run[0].as_u64().unwrap(), run[1].as_f64().unwrap());
            let lr = f64::from_bits(u64::from_str_radix(run[2].as_str().unwrap(), 16).unwrap());
            assert!((lr - dec).abs() <= 1e-12 * lr, "{name}: {run}");
            want.extend(std::iter::repeat_n(lr, count as usize));
        }
        assert_eq!(want.len() as u64, epochs * iters, "{name}");
        for (step, want) in want.iter().enumerate() {
            let step = step as u64;
            let (epoch, k) = (step / iters, step % iters);
            let got = s.lr(step, epoch, k);
            let d = (got - want).abs();
            worst = worst.max(d);
            n_bitwise += u64::from(got.to_bits() == want.to_bits());
            assert!(
                d <= 1e-12,
                "{name}: epoch {epoch} step {k}: {got:e} vs timm {want:e}"
            );
        }
        n_checked += want.len() as u64;
    }
    println!("{n_checked} iterations, {n_bitwise} bitwise equal, max |lr - timm| = {worst:e}");
}

const ALBEF_SCHED_CFG: &str = "name: albef-sched
epochs: 3
grad_accum: 2
log_every: 1
ckpt_every: 2
seed: 3
schedule: {kind: cosine, per: epoch, style: albef, warmup: 3, warmup_lr: 1.0e-4, min_lr: 1.0e-5, step_size: 1}
optimizer: {lr: 1.0e-3, weight_decay: 0.02}
";

/// The trainer feeds the ALBEF schedule the step within the epoch (in optimizer steps), and a
/// run killed in the middle of epoch 0's warmup resumes on the same learning rates.
#[test]
fn albef_schedule_in_the_trainer_and_on_resume() {
    let _serial = serial();
    // 8 batches, 2 per step: 4 steps per epoch, 12 steps.
    let source = || InMemorySource::new(chunks(&linear_data(16, 4), 2), 2);
    let full_dir = tmp("albef-sched-full");
    let mut model = LinearModel::new(2);
    let full = Trainer::new(base_config(ALBEF_SCHED_CFG), Some(full_dir))
        .unwrap()
        .fit(&mut model, &mut source(), None)
        .unwrap();
    assert_eq!(full.step, 12);
    let lrs: Vec<f64> = full.history.iter().map(|r| r.lr).collect();
    // Epoch 0: warmup_lr at steps 0 and 1 (the first update comes after step 1 with
    // step_size 1), then t = 1, 2 of the 3-epoch warmup; epochs 1, 2: t = e + 3, the cosine from
    // the end of the warmup over 3 epochs: 1e-5 + 0.5 * 9.9e-4 * (1 + cos(pi e / 3)).
    let want = [
        1e-4, 1e-4, 4e-4, 7e-4, 7.525e-4, 7.525e-4, 7.525e-4, 7.525e-4, 2.575e-4, 2.575e-4,
        2.575e-4, 2.575e-4,
    ];
    assert_eq!(lrs.len(), want.len());
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }

    // Killed after 3 steps, in epoch 0's warmup (last checkpoint: 2 steps done, so the resumed
    // run starts at step 2 of epoch 0; records count steps from 1).
    let dir = tmp("albef-sched-killed");
    let mut model = LinearModel::new(2);
    let mut t = Trainer::new(base_config(ALBEF_SCHED_CFG), Some(dir.clone())).unwrap();
    t.halt_at(3);
    let first = t.fit(&mut model, &mut source(), None).unwrap();
    assert!(first.halted);
    drop((t, model));
    let mut model = LinearModel::new(2);
    let second = Trainer::resume(&dir, &[])
        .unwrap()
        .fit(&mut model, &mut source(), None)
        .unwrap();
    assert_eq!(second.history.first().unwrap().step, 3);
    let b: Vec<(u64, u64)> = first.history[..2]
        .iter()
        .chain(&second.history)
        .map(|r| (r.step, r.lr.to_bits()))
        .collect();
    let a: Vec<(u64, u64)> = full
        .history
        .iter()
        .map(|r| (r.step, r.lr.to_bits()))
        .collect();
    assert_eq!(a, b, "learning rates differ after resume");
}

/// The ALBEF recipes under configs/albef/ use the ALBEF schedule with the official
/// `schedular` values (ALBEF's configs/*.yaml: warmup_lr 1e-5; warmup_epochs 20 for
/// pre-training, 4 for VQA, 1 otherwise).
#[test]
fn albef_recipes_use_the_albef_schedule() {
    use vlp_tasks::pipeline::config::ExperimentConfig;
    use vlp_tasks::train::{AlbefStepping, LrSchedule};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/albef");
    for (file, epochs, warmup, lr, min_lr) in [
        ("pretrain.yaml", 30, 20, 1e-4, 1e-5),
        ("retrieval_coco.yaml", 5, 1, 1e-5, 1e-6),
        ("retrieval_flickr.yaml", 10, 1, 1e-5, 1e-6),
        ("vqa.yaml", 8, 4, 2e-5, 1e-6),
        ("nlvr.yaml", 10, 1, 2e-5, 1e-6),
        ("pretrain_nlvr.yaml", 1, 1, 2e-5, 1e-5),
        ("ve.yaml", 5, 1, 2e-5, 1e-6),
    ] {
        let exp = ExperimentConfig::parse(root.join(file), &[]).unwrap();
        let t = &exp.train;
        assert_eq!(t.epochs, Some(epochs), "{file}");
        let s = LrSchedule::from_config(&t.schedule, t.optimizer.lr, 1_000_000, t.epochs).unwrap();
        assert_eq!(s.albef, Some(AlbefStepping::default()), "{file}");
        assert_eq!(
            (s.warmup, s.warmup_lr, s.base_lr, s.min_lr, s.total),
            (warmup, 1e-5, lr, min_lr, epochs),
            "{file}"
        );
    }
}
