//! Training checkpoints, written atomically.
//!
//! Layout under a run's `checkpoints/`:
//!
//! ```text
//! checkpoints/
//!   step-00001000/
//!     model.safetensors      every variable of the VarStore (buffers and queues included)
//!     optimizer.safetensors  AdamW state keyed by parameter path
//!     trainer_state.json     step, epoch, data position, seed, schedule, scaler, counters
//!   latest                   the name of the newest complete checkpoint ("step-00001000")
//! ```
//!
//! A checkpoint is written into `.tmp-step-…-<pid>/` (each file synced), the directory is renamed
//! into place, and only then is `latest` replaced (temporary file + rename). A crash at any point
//! leaves either the previous `latest` or the new one, never a half-written checkpoint behind it;
//! stale `.tmp-*` directories are removed by the next save.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use vlp_core::checkpoint::{
    read_state_dict, state_dict_of, write_safetensors, ReadOptions, StateDict,
};
use vlp_core::{Result, VlpError};

use super::amp::ScalerState;
use super::schedule::LrSchedule;

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";
/// The pointer to the newest checkpoint.
pub const LATEST_FILE: &str = "latest";

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version (1).
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Micro-batches consumed in the current epoch.
    pub iter_in_epoch: u64,
    /// The run's seed (torch's generator is re-seeded from (seed, step) every step; the mix
    /// sampler draws from (seed, step): nothing else random is kept by the trainer).
    pub seed: u64,
    /// The data source's position (opaque to the trainer).
    pub data_position: serde_json::Value,
    /// The schedule in force (for reference: it is a pure function of step/epoch).
    pub schedule: LrSchedule,
    /// Learning rate of the last step.
    pub last_lr: f64,
    /// The fp16 scaler, when in use.
    pub scaler: Option<ScalerState>,
    /// Steps skipped by the scaler so far.
    pub skipped_steps: u64,
    /// Consecutive skipped steps at the time of saving.
    pub consecutive_skips: u64,
    /// Samples consumed so far.
    pub samples_seen: u64,
    /// The model's own extra state ([`super::Trainable::extra_state`]).
    #[serde(default)]
    pub model_extra: serde_json::Value,
    /// Unix time of the save.
    pub saved_unix: u64,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// The model's variables.
    pub model: StateDict,
    /// The optimizer state.
    pub optimizer: StateDict,
    /// The trainer state.
    pub state: TrainerState,
}

/// Writes and finds checkpoints under one directory (a run's `checkpoints/`).
#[derive(Debug, Clone)]
pub struct Checkpointer {
    root: PathBuf,
}

fn io_err(path: &Path, e: std::io::Error) -> VlpError {
    VlpError::io(path, e)
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The directory name of the checkpoint at `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| ckpt_err(path, "not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

impl Checkpointer {
    /// Checkpoints under `root` (created on the first save).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory holding the checkpoints.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Saves a checkpoint for `state.step`: the variables of `vs`, the optimizer state and the
    /// trainer state; then points `latest` at it. Returns its directory.
    pub fn save(
        &self,
        vs: &VarStore,
        optimizer: &StateDict,
        state: &TrainerState,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.root).map_err(|e| io_err(&self.root, e))?;
        self.remove_stale_temps();
        let name = checkpoint_name(state.step);
        let fin = self.root.join(&name);
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        let res = (|| -> Result<()> {
            write_safetensors(&state_dict_of(vs), &tmp.join(MODEL_FILE))?;
            write_safetensors(optimizer, &tmp.join(OPTIMIZER_FILE))?;
            let json = serde_json::to_vec_pretty(state)
                .map_err(|e| ckpt_err(&tmp, format!("serialising trainer state: {e}")))?;
            write_atomic(&tmp.join(STATE_FILE), &json)?;
            sync_dir(&tmp);
            if fin.exists() {
                // Re-saving a step (after a resume): move the old one aside first.
                let old = self
                    .root
                    .join(format!(".tmp-old-{name}-{}", std::process::id()));
                std::fs::rename(&fin, &old).map_err(|e| io_err(&fin, e))?;
                std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, e))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, e))?;
            }
            sync_dir(&self.root);
            write_atomic(&self.root.join(LATEST_FILE), format!("{name}\n").as_bytes())
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(fin)
    }

    fn remove_stale_temps(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if n.starts_with('.') && n.contains(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The complete checkpoints, sorted by step.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                let step = n.strip_prefix("step-")?.parse().ok()?;
                e.path()
                    .join(STATE_FILE)
                    .is_file()
                    .then(|| (step, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Removes all but the newest `keep` checkpoints (never the one `latest` names).
    pub fn prune(&self, keep: usize) -> Result<()> {
        let latest = self.latest().ok();
        let all = self.list();
        let n = all.len().saturating_sub(keep);
        for (_, dir) in all.into_iter().take(n) {
            if Some(&dir) != latest.as_ref() {
                std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            }
        }
        Ok(())
    }

    /// The directory `latest` points to, with a clear error when it is missing, empty, or names
    /// a checkpoint that is not there.
    pub fn latest(&self) -> Result<PathBuf> {
        let p = self.root.join(LATEST_FILE);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let found = self.list();
                let hint = match found.last() {
                    Some((_, d)) => format!(
                        "; {} checkpoint directories exist (newest {}): restore `latest` by writing its name into it",
                        found.len(),
                        d.display()
                    ),
                    None => " and no checkpoint directory exists (was the run stopped before its first checkpoint?)".to_string(),
                };
                return Err(ckpt_err(
                    &p,
                    format!("no `latest` checkpoint pointer{hint}"),
                ));
            }
            Err(e) => return Err(io_err(&p, e)),
        };
        let name = std::str::from_utf8(&text)
            .ok()
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && n.starts_with("step-"))
            .ok_or_else(|| {
                let shown: String = String::from_utf8_lossy(&text).chars().take(60).collect();
                ckpt_err(&p, format!("corrupted: expected a checkpoint name like `step-00001000`, found {shown:?}"))
            })?;
        let dir = self.root.join(name);
        for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            if !dir.join(f).is_file() {
                return Err(ckpt_err(
                    &p,
                    format!(
                        "points to `{name}`, but {} is missing",
                        dir.join(f).display()
                    ),
                ));
            }
        }
        Ok(dir)
    }

    /// Reads the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<LoadedCheckpoint> {
        let opts = ReadOptions::default();
        let model = read_state_dict(&dir.join(MODEL_FILE), &opts)?;
        let optimizer = read_state_dict(&dir.join(OPTIMIZER_FILE), &opts)?;
        let sp = dir.join(STATE_FILE);
        let text = std::fs::read(&sp).map_err(|e| io_err(&sp, e))?;
        let state: TrainerState = serde_json::from_slice(&text)
            .map_err(|e| ckpt_err(&sp, format!("invalid trainer state: {e}")))?;
        Ok(LoadedCheckpoint {
            dir: dir.to_path_buf(),
            model,
            optimizer,
            state,
        })
    }

    /// Reads the checkpoint `latest` points to.
    pub fn load_latest(&self) -> Result<LoadedCheckpoint> {
        Self::load(&self.latest()?)
    }
}

/// Copies `sd` into the variables of `vs` (trainable or not), strictly: every variable must be
/// present with its shape, and no entry may be left over.
pub fn restore_vars(vs: &VarStore, sd: &StateDict, source: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut problems = Vec::new();
    for (k, v) in &vars {
        match sd.get(k) {
            None => problems.push(format!("missing `{k}`")),
            Some(t) if t.size() != v.size() => problems.push(format!(
                "`{k}`: checkpoint {:?}, model {:?}",
                t.size(),
                v.size()
            )),
            _ => {}
        }
    }
    for k in sd.keys() {
        if !vars.contains_key(k) {
            problems.push(format!("unexpected `{k}`"));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(VlpError::Load {
            source_name: source.display().to_string(),
            report: problems.join("\n"),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (k, mut v) in vars {
            v.f_copy_(sd.get(&k).expect("checked"))?;
        }
        Ok(())
    })
}
