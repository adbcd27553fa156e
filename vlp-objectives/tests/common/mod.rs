//! Shared helpers of the vlp-objectives integration tests.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tch::Tensor;

/// `tests/fixtures/<model>/<case>` at the repository root.
pub fn fixture_dir(model: &str, case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(model)
        .join(case)
}

/// `vlp-objectives/tests/data/<name>`.
pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// All tensors of a safetensors file by name.
pub fn load(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// (inputs, outputs) of a fixture case.
pub fn fixture(model: &str, case: &str) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let d = fixture_dir(model, case);
    (
        load(d.join("inputs.safetensors")),
        load(d.join("outputs.safetensors")),
    )
}

/// The derived checkpoint buffers of a case (see tests/data/make_test_data.py).
pub fn buffers(model: &str, case: &str) -> HashMap<String, Tensor> {
    load(data_path(&format!("{model}_{case}_buffers.safetensors")))
}

/// Named tensor or a panic naming it.
pub fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    m.get(k).unwrap_or_else(|| panic!("missing tensor `{k}`"))
}

/// max |a - b| in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Asserts `max |a - b| <= tol`, prints and returns the difference.
pub fn check_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let d = max_abs_diff(a, b);
    eprintln!("[diff] {what}: max abs diff {d:.3e}");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
    d
}

/// Int64 values of a tensor.
pub fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.reshape([-1]).to_kind(tch::Kind::Int64)).unwrap()
}

/// f64 values of a tensor.
pub fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.reshape([-1]).to_kind(tch::Kind::Double)).unwrap()
}

/// Serialises tests that use torch's global generator within one test binary.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}
