//! AdamW on tensors with parameter groups chosen by path pattern: no weight decay on biases,
//! norm weights and 1-D parameters, per-pattern learning-rate multipliers, a freeze list, and a
//! state (`exp_avg`, `exp_avg_sq`, `step` per parameter) that saves to a [`StateDict`].
//!
//! The update is `torch.optim.AdamW`'s single-tensor algorithm, op for op (decoupled weight
//! decay `p *= 1 - lr * wd`, `exp_avg.lerp_(g, 1 - beta1)`, `exp_avg_sq = beta2 * exp_avg_sq +
//! (1 - beta2) * g * g`, bias corrections in f64 from the step count, `p -= step_size *
//! exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps)`); a parameter without gradient at a step is
//! skipped (its step count does not advance), as torch skips `p.grad is None`.
//!
//! ## Path patterns
//!
//! A pattern with `*` or `?` is a glob over the whole dotted path (`*` matches any run of
//! characters, dots included: `text_encoder.*`, `*.bias`, `*norm*`). A pattern without them
//! matches whole path components: `bias` matches `x.bias`, `vqa_head` matches `vqa_head.0.weight`
//! and `m.vqa_head.bias`, `encoder.layer.0` matches `bert.encoder.layer.0.attention...` but not
//! `encoder.layer.01`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::{Result, VlpError};

/// Default `no_decay` patterns: biases and normalisation weights under the usual names
/// (`LayerNorm`, `layer_norm`, `norm`, `norm1`, `ln_1`, `ln_post`, `ln`, ...).
pub const DEFAULT_NO_DECAY: &[&str] = &[
    "*.bias",
    "bias",
    "*LayerNorm*",
    "*layernorm*",
    "*layer_norm*",
    "*norm*",
    "ln",
    "ln_*",
    "*.ln_*",
    "*.ln.*",
];

/// The `optimizer` section of a training config (AdamW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate (the schedule's `base_lr`). Default 1e-4.
    pub lr: f64,
    /// Decoupled weight decay of the decay group. Default 0.02 (ALBEF, BLIP).
    pub weight_decay: f64,
    /// Adam betas. Default [0.9, 0.999].
    pub betas: [f64; 2],
    /// Adam epsilon. Default 1e-8.
    pub eps: f64,
    /// Path patterns of parameters without weight decay. Default [`DEFAULT_NO_DECAY`].
    pub no_decay: Vec<String>,
    /// Also exclude every parameter with at most one dimension from weight decay (timm's
    /// `create_optimizer`, used by ALBEF and BLIP). Default true.
    pub no_decay_1d: bool,
    /// Learning-rate multipliers by path pattern, e.g. `{vqa_head: 10}` (UNITER) or
    /// `{"head.*": 20}` (VLMo). A parameter matched by two patterns is an error; a pattern that
    /// matches no parameter too (a typo).
    pub lr_mult: BTreeMap<String, f64>,
    /// Path patterns of frozen parameters: no gradient, no update. A pattern that matches no
    /// parameter is an error.
    pub freeze: Vec<String>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.02,
            betas: [0.9, 0.999],
            eps: 1e-8,
            no_decay: DEFAULT_NO_DECAY.iter().map(|s| s.to_string()).collect(),
            no_decay_1d: true,
            lr_mult: BTreeMap::new(),
            freeze: Vec::new(),
        }
    }
}

impl OptimizerConfig {
    /// Checks the numbers (lr > 0, betas in [0, 1), eps > 0, weight decay and multipliers >= 0).
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(VlpError::Msg(format!("optimizer: {m}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return err(format!("lr must be > 0, got {}", self.lr));
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return err(format!("betas must lie in [0, 1), got {:?}", self.betas));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return err(format!("eps must be > 0, got {}", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return err(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        for (p, m) in &self.lr_mult {
            if !(m.is_finite() && *m >= 0.0) {
                return err(format!("lr_mult `{p}` must be >= 0, got {m}"));
            }
        }
        Ok(())
    }
}

/// Whether `pattern` matches the parameter path `path` (see the module docs).
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        path == pattern
            || path
                .strip_prefix(pattern)
                .is_some_and(|r| r.starts_with('.'))
            || path.strip_suffix(pattern).is_some_and(|r| r.ends_with('.'))
            || path.contains(&format!(".{pattern}."))
    }
}

/// Glob with `*` (any run, dots included) and `?` (one character), iterative with backtracking.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What the optimizer does with one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// The parameter's path in the `VarStore` (the first, for tied weights).
    pub name: String,
    /// Other paths of the same tensor (tied weights), updated once under `name`.
    pub aliases: Vec<String>,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Learning-rate multiplier (1 unless an `lr_mult` pattern matched).
    pub lr_mult: f64,
    /// Weight decay applied (0 for the no-decay group).
    pub weight_decay: f64,
}

struct Slot {
    info: ParamInfo,
    param: Tensor,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    step: u64,
}

/// AdamW over named parameters; see the module docs.
pub struct AdamW {
    betas: [f64; 2],
    eps: f64,
    slots: Vec<Slot>,
    frozen: Vec<String>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("betas", &self.betas)
            .field("eps", &self.eps)
            .field("params", &self.slots.len())
            .field("frozen", &self.frozen.len())
            .finish()
    }
}

impl AdamW {
    /// An optimizer over the trainable variables of `vs` (sorted by path). Parameters matched by
    /// `cfg.freeze` get `requires_grad = false` and are left out.
    pub fn new(vs: &VarStore, cfg: &OptimizerConfig) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_named(named, cfg)
    }

    /// An optimizer over the given parameters, in the given order (see [`AdamW::new`]). Paths
    /// of one tensor (tied weights) make one parameter; a pattern matching any of its paths
    /// applies to it.
    pub fn from_named(params: Vec<(String, Tensor)>, cfg: &OptimizerConfig) -> Result<Self> {
        cfg.validate()?;
        let mut used_freeze = vec![false; cfg.freeze.len()];
        let mut used_mult: BTreeMap<&str, bool> =
            cfg.lr_mult.keys().map(|k| (k.as_str(), false)).collect();
        let mut slots = Vec::new();
        let mut frozen = Vec::new();
        // Tied weights (one tensor registered under several paths) are one parameter, as in
        // torch's `parameters()`: the first path is its name, the others its aliases.
        let mut groups: Vec<(Vec<String>, Tensor)> = Vec::new();
        let mut by_ptr: std::collections::HashMap<usize, usize> = Default::default();
        for (name, param) in params {
            if !matches!(
                param.kind(),
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                return Err(VlpError::Msg(format!(
                    "optimizer: parameter `{name}` has non-floating kind {:?}",
                    param.kind()
                )));
            }
            let key = (param.numel() > 0).then(|| param.data_ptr() as usize);
            match key.and_then(|k| by_ptr.get(&k)) {
                Some(&i) if groups[i].1.size() == param.size() => groups[i].0.push(name),
                _ => {
                    if let Some(k) = key {
                        by_ptr.insert(k, groups.len());
                    }
                    groups.push((vec![name], param));
                }
            }
        }
        for (names, param) in groups {
            let name = names[0].clone();
            let mut freeze = false;
            for (i, p) in cfg.freeze.iter().enumerate() {
                if names.iter().any(|n| pattern_matches(p, n)) {
                    used_freeze[i] = true;
                    freeze = true;
                }
            }
            if freeze {
                let _ = param.set_requires_grad(false);
                frozen.extend(names);
                continue;
            }
            let mut mult = None;
            for (p, m) in &cfg.lr_mult {
                if names.iter().any(|n| pattern_matches(p, n)) {
                    used_mult.insert(p.as_str(), true);
                    if let Some((q, _)) = mult {
                        return Err(VlpError::Msg(format!(
                            "optimizer.lr_mult: parameter `{name}` matches both `{q}` and `{p}`"
                        )));
                    }
                    mult = Some((p.as_str(), *m));
                }
            }
            let shape = param.size();
            let no_decay = (cfg.no_decay_1d && shape.len() <= 1)
                || cfg
                    .no_decay
                    .iter()
                    .any(|p| names.iter().any(|n| pattern_matches(p, n)));
            slots.push(Slot {
                info: ParamInfo {
                    name,
                    aliases: names[1..].to_vec(),
                    shape,
                    lr_mult: mult.map_or(1.0, |m| m.1),
                    weight_decay: if no_decay { 0.0 } else { cfg.weight_decay },
                },
                param,
                exp_avg: None,
                exp_avg_sq: None,
                step: 0,
            });
        }
        let unused: Vec<&str> = cfg
            .freeze
            .iter()
            .zip(&used_freeze)
            .filter(|(_, u)| !**u)
            .map(|(p, _)| p.as_str())
            .chain(used_mult.iter().filter(|(_, u)| !**u).map(|(p, _)| *p))
            .collect();
        if !unused.is_empty() {
            return Err(VlpError::Msg(format!(
                "optimizer: pattern(s) {unused:?} in freeze/lr_mult match no trainable parameter"
            )));
        }
        Ok(Self {
            betas: cfg.betas,
            eps: cfg.eps,
            slots,
            frozen,
        })
    }

    /// The optimised parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &ParamInfo> {
        self.slots.iter().map(|s| &s.info)
    }

    /// The optimised parameter tensors, in order (the inputs of the backward pass).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// Number of optimised parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is optimised.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Paths of the frozen parameters.
    pub fn frozen(&self) -> &[String] {
        &self.frozen
    }

    /// Steps taken by parameter `name` (0 before its first gradient).
    pub fn param_step(&self, name: &str) -> Option<u64> {
        self.slots
            .iter()
            .find(|s| s.info.name == name)
            .map(|s| s.step)
    }

    /// A few lines describing the groups (for `train.log`).
    pub fn summary(&self) -> String {
        let count = |f: &dyn Fn(&ParamInfo) -> bool| -> (usize, i64) {
            self.slots
                .iter()
                .filter(|s| f(&s.info))
                .fold((0, 0), |(n, e), s| {
                    (n + 1, e + s.info.shape.iter().product::<i64>())
                })
        };
        let (nd, ne) = count(&|p| p.weight_decay > 0.0);
        let (zd, ze) = count(&|p| p.weight_decay == 0.0);
        let mut out = format!(
            "AdamW betas={:?} eps={}: {nd} tensors ({ne} values) with weight decay, {zd} tensors ({ze} values) without; {} frozen",
            self.betas,
            self.eps,
            self.frozen.len()
        );
        let mut mults: BTreeMap<String, usize> = BTreeMap::new();
        for s in self.slots.iter().filter(|s| s.info.lr_mult != 1.0) {
            *mults.entry(format!("x{}", s.info.lr_mult)).or_default() += 1;
        }
        for (m, n) in mults {
            out.push_str(&format!("; lr {m}: {n} tensors"));
        }
        out
    }

    /// One AdamW step at base learning rate `lr` (each parameter uses `lr * lr_mult`) with the
    /// given gradients, aligned with [`AdamW::params`]; `None` skips that parameter.
    pub fn step(&mut self, lr: f64, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(VlpError::Msg(format!(
                "optimizer: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        let [beta1, beta2] = self.betas;
        let eps = self.eps;
        tch::no_grad(|| -> Result<()> {
            for (slot, grad) in self.slots.iter_mut().zip(grads) {
                let Some(grad) = grad else { continue };
                if grad.size() != slot.info.shape {
                    return Err(VlpError::Msg(format!(
                        "optimizer: gradient of `{}` has shape {:?}, parameter {:?}",
                        slot.info.name,
                        grad.size(),
                        slot.info.shape
                    )));
                }
                let plr = lr * slot.info.lr_mult;
                let grad = grad.to_kind(slot.param.kind());
                let exp_avg = slot.exp_avg.get_or_insert_with(|| slot.param.zeros_like());
                let exp_avg_sq = slot
                    .exp_avg_sq
                    .get_or_insert_with(|| slot.param.zeros_like());
                slot.step += 1;
                let p = &mut slot.param;
                if slot.info.weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - plr * slot.info.weight_decay)?;
                }
                let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                // addcmul_(g, g, value=1-beta2) == addcmul_(g * (1-beta2), g): same rounding.
                let _ = exp_avg_sq
                    .f_mul_scalar_(beta2)?
                    .f_addcmul_(&(&grad * (1.0 - beta2)), &grad)?;
                let step = slot.step as f64;
                let bc1 = 1.0 - beta1.powf(step);
                let bc2 = 1.0 - beta2.powf(step);
                let step_size = plr / bc1;
                let denom = (exp_avg_sq.f_sqrt()? / bc2.powf(0.5)).f_add_scalar_(eps)?;
                let _ = p.f_addcdiv_(&(&*exp_avg * (-step_size)), &denom)?;
            }
            Ok(())
        })
    }

    /// [`AdamW::step`] with the gradients accumulated in the parameters' `.grad` (tch style).
    pub fn step_with_param_grads(&mut self, lr: f64) -> Result<()> {
        let grads: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| Some(s.param.grad()).filter(Tensor::defined))
            .collect();
        self.step(lr, &grads)
    }

    /// The state: `<path>.exp_avg`, `<path>.exp_avg_sq` and `<path>.step` (a 1-element int64
    /// tensor) for every parameter that has taken a step.
    pub fn state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        for s in &self.slots {
            if let (Some(m), Some(v)) = (&s.exp_avg, &s.exp_avg_sq) {
                sd.insert(format!("{}.exp_avg", s.info.name), m.shallow_clone());
                sd.insert(format!("{}.exp_avg_sq", s.info.name), v.shallow_clone());
                sd.insert(
                    format!("{}.step", s.info.name),
                    Tensor::from_slice(&[s.step as i64]),
                );
            }
        }
        sd
    }

    /// Restores a state saved by [`AdamW::state_dict`]. Parameters absent from `sd` restart from
    /// a fresh state (as torch creates state lazily); an entry for an unknown parameter, a
    /// partial entry or a shape mismatch is an error.
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let err = |m: String| VlpError::Msg(format!("optimizer state: {m}"));
        let mut seen = 0;
        for s in &mut self.slots {
            let n = &s.info.name;
            let keys = [
                format!("{n}.exp_avg"),
                format!("{n}.exp_avg_sq"),
                format!("{n}.step"),
            ];
            let found: Vec<Option<&Tensor>> = keys.iter().map(|k| sd.get(k)).collect();
            match (found[0], found[1], found[2]) {
                (None, None, None) => {
                    s.exp_avg = None;
                    s.exp_avg_sq = None;
                    s.step = 0;
                }
                (Some(m), Some(v), Some(st)) => {
                    for (k, t) in [(&keys[0], m), (&keys[1], v)] {
                        if t.size() != s.info.shape {
                            return Err(err(format!(
                                "`{k}` has shape {:?}, parameter {:?}",
                                t.size(),
                                s.info.shape
                            )));
                        }
                    }
                    let to =
                        |t: &Tensor| t.to_device(s.param.device()).to_kind(s.param.kind()).copy();
                    s.exp_avg = Some(to(m));
                    s.exp_avg_sq = Some(to(v));
                    s.step = u64::try_from(st.int64_value(&[0]))
                        .map_err(|_| err(format!("`{}` is negative", keys[2])))?;
                    seen += 3;
                }
                _ => return Err(err(format!("incomplete state for `{n}` (need {keys:?})"))),
            }
        }
        if seen != sd.len() {
            let known: std::collections::HashSet<&str> =
                self.slots.iter().map(|s| s.info.name.as_str()).collect();
            let extra: Vec<&String> = sd
                .keys()
                .filter(|k| {
                    let base = k
                        .strip_suffix(".exp_avg_sq")
                        .or_else(|| k.strip_suffix(".exp_avg"))
                        .or_else(|| k.strip_suffix(".step"))
                        .unwrap_or(k);
                    !known.contains(base)
                })
                .take(5)
                .collect();
            return Err(err(format!(
                "{} entries for parameters this optimizer does not have (frozen or renamed?), e.g. {extra:?}",
                sd.len() - seen
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*.bias", "a.b.bias"));
        assert!(!pattern_matches("*.bias", "bias"));
        assert!(pattern_matches("bias", "bias"));
        assert!(pattern_matches("bias", "a.bias"));
        assert!(!pattern_matches("bias", "a.biases"));
        assert!(pattern_matches("vqa_head", "vqa_head.0.weight"));
        assert!(pattern_matches("vqa_head", "m.vqa_head.bias"));
        assert!(!pattern_matches("vqa_head", "m.vqa_head2.bias"));
        assert!(pattern_matches("encoder.layer.0", "bert.encoder.layer.0.x"));
        assert!(!pattern_matches(
            "encoder.layer.0",
            "bert.encoder.layer.01.x"
        ));
        assert!(pattern_matches("*norm*", "visual.blocks.0.norm1.weight"));
        assert!(pattern_matches("*LayerNorm*", "a.LayerNorm.weight"));
        assert!(pattern_matches("text_encoder.*", "text_encoder.x.y"));
        assert!(pattern_matches("a?c", "abc"));
        assert!(!pattern_matches("a?c", "abbc"));
        assert!(pattern_matches("*a*b*c", "xxaxxbxxc"));
        assert!(!pattern_matches("*a*b*c", "xxaxxbxxcd"));
        assert!(pattern_matches("ln_*", "ln_post.weight"));
    }
}
