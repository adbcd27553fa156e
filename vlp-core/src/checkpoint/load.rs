//! Loading a [`StateDict`] into a `VarStore`, strictly or partially, with a full report.
use std::fmt;

use tch::nn::VarStore;

use super::StateDict;
use crate::{Result, VlpError};

/// A key with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShape {
    /// The variable / state-dict key.
    pub key: String,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// A key present on both sides with different shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The key.
    pub key: String,
    /// The shape of the model's variable.
    pub expected: Vec<i64>,
    /// The shape found in the state dict.
    pub found: Vec<i64>,
}

/// What loading a state dict into a model did (or would do), key by key; every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys copied into the model (or that would be, when strict loading failed).
    pub loaded: Vec<String>,
    /// Model variables the state dict lacks (shape: the model's).
    pub missing: Vec<KeyShape>,
    /// State-dict entries the model has no variable for (shape: the state dict's).
    pub unexpected: Vec<KeyShape>,
    /// Keys on both sides whose shapes differ.
    pub mismatched: Vec<Mismatch>,
}

impl LoadReport {
    /// True when nothing is missing, unexpected or mis-shaped.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.missing {
            writeln!(
                f,
                "  missing (in model, not in checkpoint): {} {:?}",
                m.key, m.shape
            )?;
        }
        for u in &self.unexpected {
            writeln!(
                f,
                "  unexpected (in checkpoint, not in model): {} {:?}",
                u.key, u.shape
            )?;
        }
        for m in &self.mismatched {
            writeln!(
                f,
                "  shape mismatch: {} model {:?} checkpoint {:?}",
                m.key, m.expected, m.found
            )?;
        }
        write!(
            f,
            "{} loaded, {} missing, {} unexpected, {} mis-shaped",
            self.loaded.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )
    }
}

/// How [`load_state_dict`] treats keys that do not line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Any missing, unexpected or mis-shaped key is an error and nothing is copied.
    Strict,
    /// Copy what matches in name and shape; report the rest.
    Partial,
}

/// Compares `sd` against the variables of `vs` (trainable or not).
fn compare(vs: &VarStore, sd: &StateDict) -> (LoadReport, Vec<(String, tch::Tensor)>) {
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = LoadReport::default();
    let mut to_copy = Vec::new();
    for (name, var) in vars {
        let expected = var.size();
        match sd.get(&name) {
            None => report.missing.push(KeyShape {
                key: name,
                shape: expected,
            }),
            Some(src) => {
                let found = src.size();
                if found == expected {
                    report.loaded.push(name.clone());
                    to_copy.push((name, var));
                } else {
                    report.mismatched.push(Mismatch {
                        key: name,
                        expected,
                        found,
                    });
                }
            }
        }
    }
    let names = vs.variables();
    for (k, t) in sd.iter() {
        if !names.contains_key(k) {
            report.unexpected.push(KeyShape {
                key: k.clone(),
                shape: t.size(),
            });
        }
    }
    (report, to_copy)
}

/// Loads `sd` into the variables of `vs` (trainable and non-trainable, such as registered
/// buffers), converting dtype and device to each variable's.
///
/// `Strict`: any missing, unexpected or mis-shaped key gives `VlpError::Load` naming
/// `source_name` with the formatted report, and no variable is modified. `Partial`: every key
/// that matches in name and shape is copied. Either way the report lists everything.
pub fn load_state_dict(
    vs: &mut VarStore,
    sd: &StateDict,
    mode: LoadMode,
    source_name: &str,
) -> Result<LoadReport> {
    let (report, to_copy) = compare(vs, sd);
    if mode == LoadMode::Strict && !report.is_clean() {
        return Err(VlpError::Load {
            source_name: source_name.to_string(),
            report: report.to_string(),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in to_copy {
            let src = sd.get(&name).expect("compared above");
            var.f_copy_(src).map_err(|e| VlpError::Load {
                source_name: source_name.to_string(),
                report: format!("copying `{name}`: {e}"),
            })?;
        }
        Ok(())
    })?;
    Ok(report)
}

/// A state dict of every variable of `vs` (trainable or not), as shallow copies sharing memory.
pub fn state_dict_of(vs: &VarStore) -> StateDict {
    let mut sd = StateDict::new();
    for (k, t) in vs.variables() {
        sd.insert(k, t);
    }
    sd
}
