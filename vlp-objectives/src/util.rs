//! Small shared helpers: shape checks with named errors, compute dtype.
use tch::{Kind, Tensor};
use vlp_core::{Result, VlpError};

/// Errors unless `t` has `dims` dimensions; returns its size.
pub(crate) fn expect_dims(name: &str, t: &Tensor, dims: usize, what: &str) -> Result<Vec<i64>> {
    let size = t.size();
    if size.len() != dims {
        return Err(VlpError::input(
            name,
            format!("expected {what} ({dims} dims), got shape {size:?}"),
        ));
    }
    Ok(size)
}

/// Errors unless `t` has exactly `shape`.
pub(crate) fn expect_shape(name: &str, t: &Tensor, shape: &[i64], what: &str) -> Result<()> {
    let size = t.size();
    if size != shape {
        return Err(VlpError::input(
            name,
            format!("expected {what} of shape {shape:?}, got {size:?}"),
        ));
    }
    Ok(())
}

/// The dtype losses are computed in: the input's own float kind, upcast to f32 when it is a
/// reduced-precision float (half/bfloat16), as the official code does with `.float()`.
pub(crate) fn compute_kind(t: &Tensor) -> Kind {
    match t.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

/// `t` in its compute dtype (no copy when it already is).
pub(crate) fn as_compute(t: &Tensor) -> Tensor {
    let k = compute_kind(t);
    if t.kind() == k {
        t.shallow_clone()
    } else {
        t.to_kind(k)
    }
}

/// Panics with the error's message (the non-`try_` variants of the public API).
pub(crate) fn unwrap_or_panic<T>(ctx: &str, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{ctx}: {e}"),
    }
}

/// Integer kinds accepted for ids/indices.
pub(crate) fn is_integer(k: Kind) -> bool {
    matches!(
        k,
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64
    )
}
