//! Accuracy of NLVR2 and SNLI-VE predictions.
//!
//! NLVR2 as the official `nlvr2/eval/metrics.py`: accuracy over all labelled examples (labels
//! compared case-insensitively), and consistency: the fraction of sentences (identifiers with their
//! third part blanked) whose examples are all predicted correctly. Both are reported here in
//! percent.
use serde::Serialize;
use std::collections::BTreeMap;

/// Accuracy of a classification task, in percent, with the counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// Correct / total × 100.
    pub accuracy: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Examples.
    pub total: usize,
    /// Per-class accuracy (percent) keyed by the true label, where meaningful.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_class: BTreeMap<String, f64>,
    /// NLVR2 consistency (percent), when the examples have official identifiers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<f64>,
}

/// Accuracy of `(truth, prediction)` pairs with per-class accuracy keyed by `name(truth)`.
pub fn accuracy<T: PartialEq>(pairs: &[(T, T)], name: impl Fn(&T) -> String) -> Accuracy {
    let total = pairs.len();
    let correct = pairs.iter().filter(|(t, p)| t == p).count();
    let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (t, p) in pairs {
        let e = by.entry(name(t)).or_default();
        e.1 += 1;
        if t == p {
            e.0 += 1;
        }
    }
    Accuracy {
        accuracy: if total == 0 {
            0.0
        } else {
            100.0 * correct as f64 / total as f64
        },
        correct,
        total,
        per_class: by
            .into_iter()
            .map(|(k, (c, n))| (k, 100.0 * c as f64 / n as f64))
            .collect(),
        consistency: None,
    }
}

/// The sentence key of an official NLVR2 identifier (`dev-850-0-1` → `dev-850--1`, as
/// `metrics.py` blanks the third part).
pub fn nlvr2_sentence_key(identifier: &str) -> String {
    let mut parts: Vec<&str> = identifier.split('-').collect();
    if parts.len() > 2 {
        parts[2] = "";
    }
    parts.join("-")
}

/// NLVR2 consistency (percent) of `(identifier, correct)` pairs.
pub fn nlvr2_consistency<'a>(items: impl IntoIterator<Item = (&'a str, bool)>) -> Option<f64> {
    let mut by: BTreeMap<String, bool> = BTreeMap::new();
    for (id, ok) in items {
        let e = by.entry(nlvr2_sentence_key(id)).or_insert(true);
        *e &= ok;
    }
    if by.is_empty() {
        return None;
    }
    Some(100.0 * by.values().filter(|v| **v).count() as f64 / by.len() as f64)
}
