//! Momentum encoders and feature queues (ALBEF/BLIP).
//!
//! - [`momentum_update`] / [`copy_params`]: EMA / copy from every floating-point variable under an
//!   online prefix of a `VarStore` to the variable of the same name under the momentum prefix
//!   (`"visual_encoder."` -> `"visual_encoder_m."`). The official code zips `parameters()` of the
//!   two modules; here the pairing is by name, so a missing or mis-shaped counterpart is an error
//!   that names the key instead of a silent misalignment.
//! - [`enqueue`], [`enqueue_idx`], [`enqueue_shared`]: `_dequeue_and_enqueue`: write the batch at
//!   `queue_ptr` and advance it modulo the queue size. ALBEF's image/text (and retrieval idx)
//!   queues share ONE pointer: use [`enqueue_shared`] for them (calling [`enqueue`] once per queue
//!   would advance the shared pointer several times).
//!
//! Multi-GPU: the official code enqueues `concat_all_gather(feat)`; gather before calling these.
use std::collections::{HashMap, HashSet};

use tch::nn::VarStore;
use tch::Tensor;
use vlp_core::{Result, VlpError};

use crate::util::is_integer;

/// Appends a `.` unless the prefix already ends with one, so `"vision_proj"` does not also match
/// `"vision_proj_m.weight"`.
fn norm_prefix(p: &str) -> String {
    if p.is_empty() || p.ends_with('.') {
        p.to_string()
    } else {
        format!("{p}.")
    }
}

/// Resolves `(online, momentum)` tensor pairs for every prefix pair, checking both directions.
/// Tensors sharing storage (tied weights registered under several names) are paired once.
fn resolve_pairs(vs: &VarStore, pairs: &[(&str, &str)]) -> Result<Vec<(Tensor, Tensor)>> {
    let vars: HashMap<String, Tensor> = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut out = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    for (online, momentum) in pairs {
        let on = norm_prefix(online);
        let mo = norm_prefix(momentum);
        if on == mo {
            return Err(VlpError::input(
                "pairs",
                format!("online and momentum prefixes are the same: `{on}`"),
            ));
        }
        let mut matched = 0usize;
        for name in &names {
            let t = &vars[*name];
            if !t.is_floating_point() {
                continue;
            }
            if let Some(rest) = name.strip_prefix(on.as_str()) {
                // `on` may be a prefix of `mo` (e.g. "" or "a." vs "a.m."): skip momentum names.
                if name.starts_with(mo.as_str()) {
                    continue;
                }
                let key_m = format!("{mo}{rest}");
                let Some(t_m) = vars.get(&key_m) else {
                    return Err(VlpError::input(
                        name.as_str(),
                        format!("no momentum counterpart `{key_m}` in the VarStore"),
                    ));
                };
                if t.size() != t_m.size() {
                    return Err(VlpError::input(
                        key_m,
                        format!(
                            "shape {:?} differs from `{name}`'s {:?}",
                            t_m.size(),
                            t.size()
                        ),
                    ));
                }
                matched += 1;
                let ptr = t_m.data_ptr() as usize;
                if t_m.numel() > 0 && !seen.insert(ptr) {
                    continue; // tied: this momentum storage is already paired
                }
                out.push((t.shallow_clone(), t_m.shallow_clone()));
            } else if let Some(rest) = name.strip_prefix(mo.as_str()) {
                let key = format!("{on}{rest}");
                if !vars.contains_key(&key) {
                    return Err(VlpError::input(
                        name.as_str(),
                        format!("no online counterpart `{key}` in the VarStore"),
                    ));
                }
            }
        }
        if matched == 0 {
            return Err(VlpError::input(
                "pairs",
                format!("no floating-point variable under the online prefix `{on}`"),
            ));
        }
    }
    Ok(out)
}

/// EMA update `p_m = m * p_m + (1 - m) * p` (in place, no gradient) for every floating-point
/// variable `p` of `vs` under each `online` prefix and its counterpart `p_m` under the matching
/// `momentum` prefix (`pairs`, e.g. `[("visual_encoder", "visual_encoder_m"), ("vision_proj",
/// "vision_proj_m"), ...]`; a trailing `.` is added when missing). Integer variables are skipped.
/// Returns the number of tensors updated (tied weights count once). Errors name the first key
/// without a counterpart (either direction), a shape mismatch, or a prefix with no variable.
/// ALBEF/BLIP: `m = 0.995`, applied before the momentum forward.
pub fn momentum_update(vs: &VarStore, pairs: &[(&str, &str)], m: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&m) {
        return Err(VlpError::input(
            "momentum",
            format!("must lie in [0, 1], got {m}"),
        ));
    }
    let plan = resolve_pairs(vs, pairs)?;
    tch::no_grad(|| {
        for (p, p_m) in &plan {
            let mut p_m = p_m.shallow_clone();
            let _ = p_m.f_mul_scalar_(m)?;
            let _ = p_m.f_add_(&(p.to_device(p_m.device()) * (1.0 - m)))?;
        }
        Ok::<(), VlpError>(())
    })?;
    Ok(plan.len())
}

/// Copies every online variable into its momentum counterpart (the official `copy_params()` at
/// construction). Same pairing rules and errors as [`momentum_update`]; returns the number of
/// tensors copied. The momentum variables should be created non-trainable by the model.
pub fn copy_params(vs: &VarStore, pairs: &[(&str, &str)]) -> Result<usize> {
    let plan = resolve_pairs(vs, pairs)?;
    tch::no_grad(|| {
        for (p, p_m) in &plan {
            p_m.shallow_clone().f_copy_(p)?;
        }
        Ok::<(), VlpError>(())
    })?;
    Ok(plan.len())
}

/// Reads and checks the pointer: `[1]` (or scalar) integer in `[0, q)`.
fn read_ptr(ptr: &Tensor, q: i64) -> Result<i64> {
    if ptr.numel() != 1 || !is_integer(ptr.kind()) {
        return Err(VlpError::input(
            "queue_ptr",
            format!(
                "expected a [1] integer tensor, got {:?} {:?}",
                ptr.size(),
                ptr.kind()
            ),
        ));
    }
    let p = ptr.reshape([-1]).int64_value(&[0]);
    if p < 0 || p >= q {
        return Err(VlpError::input(
            "queue_ptr",
            format!("{p} is outside the queue [0, {q})"),
        ));
    }
    Ok(p)
}

/// Writes `feats` (`[B, D]`) into `queue` (`[D, Q]`) at columns `ptr..ptr+B` and advances `ptr`
/// (`[1]` int64) to `(ptr + B) % Q`, in place. Errors (nothing written) when `Q % B != 0` (the
/// official assertion: use `drop_last=True` and a queue size that is a multiple of the global
/// batch), when the write would run past the end, or on shape mismatch. Only for a queue with its
/// own pointer; see [`enqueue_shared`].
pub fn enqueue(queue: &Tensor, ptr: &Tensor, feats: &Tensor) -> Result<()> {
    enqueue_shared(&[(queue, feats)], ptr)
}

/// Writes the image ids `idx` (`[B]`) into `idx_queue` (`[1, Q]`) at `ptr..ptr+B` and advances
/// `ptr`, like [`enqueue`]. ALBEF retrieval keeps idx, image and text queues on one pointer: call
/// [`enqueue_shared`] with `(idx_queue, idx)` among the entries instead of this.
pub fn enqueue_idx(idx_queue: &Tensor, ptr: &Tensor, idx: &Tensor) -> Result<()> {
    enqueue_shared(&[(idx_queue, idx)], ptr)
}

/// Writes every `(queue [D, Q], feats [B, D])` entry at the same pointer and advances the shared
/// `ptr` once (ALBEF/BLIP `_dequeue_and_enqueue`). A 1-D `feats` of length `B` is taken as
/// `[B, 1]` (the idx queue `[1, Q]`). All entries are checked before anything is written.
pub fn enqueue_shared(entries: &[(&Tensor, &Tensor)], ptr: &Tensor) -> Result<()> {
    let Some((q0, f0)) = entries.first() else {
        return Ok(());
    };
    let q = *q0.size().last().unwrap_or(&0);
    let b = f0.size().first().copied().unwrap_or(0);
    let mut cols = Vec::with_capacity(entries.len());
    for (i, (queue, feats)) in entries.iter().enumerate() {
        let qs = queue.size();
        if qs.len() != 2 {
            return Err(VlpError::input(
                format!("queue[{i}]"),
                format!("expected [D, Q], got {qs:?}"),
            ));
        }
        let f = match feats.dim() {
            1 => feats.unsqueeze(1),
            2 => feats.shallow_clone(),
            _ => {
                return Err(VlpError::input(
                    format!("feats[{i}]"),
                    format!("expected [B, D], got {:?}", feats.size()),
                ))
            }
        };
        let fs = f.size();
        if qs[1] != q {
            return Err(VlpError::input(
                format!("queue[{i}]"),
                format!("queue size {} differs from queue[0]'s {q}", qs[1]),
            ));
        }
        if fs[0] != b {
            return Err(VlpError::input(
                format!("feats[{i}]"),
                format!("batch {} differs from feats[0]'s {b}", fs[0]),
            ));
        }
        if fs[1] != qs[0] {
            return Err(VlpError::input(
                format!("feats[{i}]"),
                format!(
                    "feature dim {} differs from the queue's {} ({qs:?})",
                    fs[1], qs[0]
                ),
            ));
        }
        cols.push(f);
    }
    if b == 0 || q == 0 {
        return Err(VlpError::input(
            "feats",
            format!("empty batch or queue (B = {b}, Q = {q})"),
        ));
    }
    if q % b != 0 {
        return Err(VlpError::input(
            "feats",
            format!(
                "queue size {q} is not a multiple of the batch size {b}: use drop_last=True in \
                 the data loader (a ragged last batch) and a queue size divisible by the global \
                 batch"
            ),
        ));
    }
    let p = read_ptr(ptr, q)?;
    if p + b > q {
        return Err(VlpError::input(
            "queue_ptr",
            format!("{p} + batch {b} runs past the queue size {q} (pointer not a multiple of B)"),
        ));
    }
    tch::no_grad(|| {
        for ((queue, _), f) in entries.iter().zip(&cols) {
            let mut dst = queue.narrow(1, p, b);
            dst.f_copy_(&f.tr())?;
        }
        let _ = ptr.shallow_clone().f_fill_((p + b) % q)?;
        Ok::<(), VlpError>(())
    })
}
