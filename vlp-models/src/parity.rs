//! The parity runner behind `vlp parity`: runs fixture cases (format:
//! `shared/fixtures/FORMAT.md`) through the registry and compares every probe.
//!
//! A case directory holds `MANIFEST.json`, `config.json`, the checkpoint (`checkpoint.pth`, or the
//! MANIFEST's `checkpoint` reference, e.g. `venv:<package>/<file>`), `inputs.safetensors` and
//! `outputs.safetensors`. For every probe the runner takes, in order: the model's own output of
//! that name; for `momentum_updated.<key>` and `<buffer>_after`, the variable after the forward;
//! for `<key>_loaded`, the variable as loading left it. A probe none of these yields fails.
//! A case whose model or variant is not implemented is skipped (its probes are counted skipped).
//!
//! Known fixture discrepancies: a root directory may hold `KNOWN_DISCREPANCIES.json`
//! (`[{"case": "albef/retrieval_1", "probe": "...", "reason": "..."}]`) listing probes whose
//! recorded value is believed wrong, each with its evidence. Such a probe that fails is printed
//! `XFAIL` and not counted as a failure; one that passes is printed `XPASS` and counted as a
//! failure, so the list cannot go stale. `vlp parity --strict` ignores the file.
use crate::{registry, Tensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{load_state_dict, read_state_dict, LoadMode, ReadOptions, Wrapper};
use vlp_core::{Result, VlpError};

/// Options of a parity run.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    /// Device the models run on (the comparison happens on CPU).
    pub device: Device,
    /// Ignore `KNOWN_DISCREPANCIES.json` files.
    pub strict: bool,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions {
            device: Device::Cpu,
            strict: false,
        }
    }
}

/// One entry of `KNOWN_DISCREPANCIES.json`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDiscrepancy {
    /// Case name as printed (`<model>/<case>`).
    pub case: String,
    /// Probe name.
    pub probe: String,
    /// Why the recorded value is believed wrong.
    pub reason: String,
}

/// Reads the `KNOWN_DISCREPANCIES.json` found in each root or in one of its ancestors (so that
/// `vlp parity tests/fixtures/albef` sees `tests/fixtures/KNOWN_DISCREPANCIES.json`); each file
/// is read once.
pub fn read_known(roots: &[PathBuf]) -> Result<Vec<KnownDiscrepancy>> {
    let mut out = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for r in roots {
        let abs = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
        let Some(f) = abs
            .ancestors()
            .map(|a| a.join("KNOWN_DISCREPANCIES.json"))
            .find(|f| f.is_file())
        else {
            continue;
        };
        if seen.insert(f.clone()) {
            let s = std::fs::read_to_string(&f).map_err(|e| VlpError::io(&f, e))?;
            let v: Vec<KnownDiscrepancy> = serde_json::from_str(&s)
                .map_err(|e| VlpError::Msg(format!("{}: {e}", f.display())))?;
            out.extend(v);
        }
    }
    Ok(out)
}

/// Result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Probe name.
    pub probe: String,
    /// Max absolute difference, when both tensors were available with equal shapes.
    pub max_abs_diff: Option<f64>,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed (empty when it passed).
    pub note: String,
}

/// Result of one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// Case name (`<model>/<case>`).
    pub case: String,
    /// `Some(reason)` when skipped.
    pub skipped: Option<String>,
    /// Number of probes the MANIFEST lists.
    pub num_probes: usize,
    /// Per-probe results (empty when skipped).
    pub probes: Vec<ProbeResult>,
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParitySummary {
    /// Probes that matched.
    pub passed: usize,
    /// Probes that did not match or could not be computed.
    pub failed: usize,
    /// Probes of skipped cases.
    pub skipped: usize,
    /// Listed known fixture discrepancies that failed as expected (not counted as failures).
    pub xfailed: usize,
}

impl std::fmt::Display for ParitySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.xfailed > 0 {
            writeln!(f, "{} known fixture discrepancies (XFAIL)", self.xfailed)?;
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Every directory under `roots` (recursively, sorted) that holds a `MANIFEST.json`.
pub fn find_cases(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        if dir.join("MANIFEST.json").is_file() {
            out.push(dir.to_path_buf());
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| VlpError::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
        Ok(())
    }
    let mut out = vec![];
    for r in roots {
        if !r.is_dir() {
            return Err(VlpError::Msg(format!("{}: not a directory", r.display())));
        }
        walk(r, &mut out)?;
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| VlpError::Msg(format!("{}: {e}", path.display())))
}

fn read_tensors(path: &Path) -> Result<Tensors> {
    let sd = read_state_dict(
        path,
        &ReadOptions {
            wrapper: Wrapper::None,
            ..Default::default()
        },
    )?;
    Ok(sd
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect())
}

fn case_name(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Compares `got` with `want` under `|got - want| <= atol + rtol * |want|` (exact for integer and
/// bool tensors). Returns (ok, max abs diff or None, note).
pub fn compare(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> (bool, Option<f64>, String) {
    let got = got.to_device(Device::Cpu);
    if got.size() != want.size() {
        return (
            false,
            None,
            format!("shape {:?}, expected {:?}", got.size(), want.size()),
        );
    }
    if want.numel() == 0 {
        return (true, Some(0.0), String::new());
    }
    let is_float = matches!(
        want.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    );
    let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let diff = (&g - &w).abs();
    let max = diff.max().double_value(&[]);
    if !is_float {
        let ok = max == 0.0;
        return (
            ok,
            Some(max),
            if ok {
                String::new()
            } else {
                "integer values differ".into()
            },
        );
    }
    if g.isnan().any().int64_value(&[]) != 0 && w.isnan().any().int64_value(&[]) == 0 {
        return (false, Some(f64::NAN), "NaN in output".into());
    }
    let bound = w.abs() * rtol + atol;
    let ok = diff.le_tensor(&bound).all().int64_value(&[]) != 0;
    (
        ok,
        Some(max),
        if ok {
            String::new()
        } else {
            format!("exceeds atol {atol:e} + rtol {rtol:e}·|ref|")
        },
    )
}

/// Runs one case directory.
pub fn run_case(dir: &Path, opts: &ParityOptions) -> CaseOutcome {
    let case = case_name(dir);
    let manifest = read_json(&dir.join("MANIFEST.json"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    let (manifest, outputs) = match (manifest, outputs) {
        (Ok(m), Ok(o)) => (m, o),
        (Err(e), _) | (_, Err(e)) => {
            return CaseOutcome {
                case,
                skipped: None,
                num_probes: 1,
                probes: vec![ProbeResult {
                    probe: "<case>".into(),
                    max_abs_diff: None,
                    ok: false,
                    note: e.to_string(),
                }],
            }
        }
    };
    let fail_all = |note: String| CaseOutcome {
        case: case.clone(),
        skipped: None,
        num_probes: outputs.len(),
        probes: outputs
            .keys()
            .map(|k| ProbeResult {
                probe: k.clone(),
                max_abs_diff: None,
                ok: false,
                note: note.clone(),
            })
            .collect(),
    };
    match run_case_inner(dir, &manifest, opts) {
        Err(VlpError::Unsupported { what }) => CaseOutcome {
            case: case.clone(),
            skipped: Some(what),
            num_probes: outputs.len(),
            probes: vec![],
        },
        Err(e) => fail_all(e.to_string()),
        Ok((got, loaded, after_vars)) => {
            let tol = &manifest["tolerance"];
            let atol = tol["atol"].as_f64().unwrap_or(1e-4);
            let rtol = tol["rtol"].as_f64().unwrap_or(1e-4);
            let probes = outputs
                .iter()
                .map(|(name, want)| {
                    let cand = got.get(name).or_else(|| {
                        if let Some(k) = name.strip_prefix("momentum_updated.") {
                            after_vars.get(k)
                        } else if let Some(k) = name.strip_suffix("_loaded") {
                            loaded.get(k)
                        } else if let Some(k) = name.strip_suffix("_after") {
                            after_vars.get(k)
                        } else {
                            None
                        }
                    });
                    match cand {
                        None => ProbeResult {
                            probe: name.clone(),
                            max_abs_diff: None,
                            ok: false,
                            note: "not computed by the port".into(),
                        },
                        Some(t) => {
                            let (ok, d, note) = compare(t, want, atol, rtol);
                            ProbeResult {
                                probe: name.clone(),
                                max_abs_diff: d,
                                ok,
                                note,
                            }
                        }
                    }
                })
                .collect();
            CaseOutcome {
                case,
                skipped: None,
                num_probes: outputs.len(),
                probes,
            }
        }
    }
}

type CaseTensors = (Tensors, Tensors, Tensors);

fn run_case_inner(
    dir: &Path,
    manifest: &serde_json::Value,
    opts: &ParityOptions,
) -> Result<CaseTensors> {
    let field = |k: &str| {
        manifest[k].as_str().map(str::to_owned).ok_or_else(|| {
            VlpError::Msg(format!("{}: MANIFEST field `{k}` missing", dir.display()))
        })
    };
    let (model_name, variant) = (field("model")?, field("variant")?);
    let config = read_json(&dir.join("config.json"))?;
    let cfg_path = dir.join("config.json");
    let mut model =
        registry::build(&model_name, &variant, &config, opts.device).map_err(|e| match e {
            VlpError::Unsupported { .. } => e,
            e => VlpError::Msg(format!("{}: {e}", cfg_path.display())),
        })?;
    let ckpt = match manifest["checkpoint"].as_str() {
        Some(r) => vlp_core::assets::resolve(r, dir)?,
        None => dir.join("checkpoint.pth"),
    };
    let wrapper = match manifest["checkpoint_wrapper"].as_str() {
        None => Wrapper::Auto,
        Some("") => Wrapper::None,
        Some(k) => Wrapper::Key(k.to_string()),
    };
    let sd = read_state_dict(
        &ckpt,
        &ReadOptions {
            wrapper,
            ..Default::default()
        },
    )?;
    let sd = model.adapt_state_dict(sd)?;
    load_state_dict(
        model.var_store_mut(),
        &sd,
        LoadMode::Strict,
        &ckpt.display().to_string(),
    )?;
    let loaded: Tensors = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    let inputs = read_tensors(&dir.join("inputs.safetensors"))?;
    let got = model.forward_named(&inputs, manifest)?;
    let after: Tensors = model
        .var_store()
        .variables()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    Ok((got, loaded, after))
}

/// Runs every case under `roots`, calling `line` with one line per probe (and per skipped case),
/// and returns the totals.
pub fn run_all(
    roots: &[PathBuf],
    opts: &ParityOptions,
    mut line: impl FnMut(&str),
) -> Result<ParitySummary> {
    let mut s = ParitySummary::default();
    let known = if opts.strict {
        vec![]
    } else {
        read_known(roots)?
    };
    if !known.is_empty() {
        line(&format!(
            "({} known fixture discrepancies listed in KNOWN_DISCREPANCIES.json)",
            known.len()
        ));
    }
    for dir in find_cases(roots)? {
        let out = run_case(&dir, opts);
        if let Some(why) = &out.skipped {
            s.skipped += out.num_probes;
            line(&format!(
                "{}  ({} probes)  SKIP  {}",
                out.case, out.num_probes, why
            ));
            continue;
        }
        for p in &out.probes {
            let d = p
                .max_abs_diff
                .map(|d| format!("{d:.3e}"))
                .unwrap_or_else(|| "-".into());
            let k = known
                .iter()
                .find(|k| k.case == out.case && k.probe == p.probe);
            let (status, counts_ok, note) = match (k, p.ok) {
                (None, true) => ("OK", true, String::new()),
                (None, false) => ("FAIL", false, format!("  ({})", p.note)),
                (Some(k), false) => (
                    "XFAIL",
                    true,
                    format!("  (known fixture discrepancy: {})", k.reason),
                ),
                (Some(_), true) => (
                    "XPASS",
                    false,
                    "  (listed as a known discrepancy but passes: remove it from the list)".into(),
                ),
            };
            line(&format!(
                "{}  {}  {}  {}{}",
                out.case, p.probe, d, status, note
            ));
            if counts_ok && p.ok {
                s.passed += 1;
            } else if counts_ok {
                s.xfailed += 1;
            } else {
                s.failed += 1;
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_applies_atol_and_rtol_and_exact_integers() {
        let want = Tensor::from_slice(&[1.0f32, 100.0]);
        let ok = Tensor::from_slice(&[1.00005f32, 100.009]);
        assert!(compare(&ok, &want, 1e-4, 1e-4).0);
        let bad = Tensor::from_slice(&[1.0f32, 100.03]);
        assert!(!compare(&bad, &want, 1e-4, 1e-4).0);
        let shape = Tensor::from_slice(&[1.0f32]);
        assert!(!compare(&shape, &want, 1e-4, 1e-4).0);
        let wi = Tensor::from_slice(&[3i64, 4]);
        assert!(compare(&wi, &wi, 0.0, 0.0).0);
        assert!(!compare(&Tensor::from_slice(&[3i64, 5]), &wi, 10.0, 10.0).0);
    }
}
