//! The run directory: everything a run writes.
//!
//! ```text
//! runs/<name>-<YYYYmmdd-HHMMSS>/     (or --out DIR)
//!   config.yaml       the resolved config
//!   metrics.jsonl     one JSON object per logged step ("type": "train") and evaluation ("eval")
//!   train.log         timestamped log lines
//!   plots/loss.png    loss terms against step (redrawn every `plot_every` steps)
//!   plots/eval.png    evaluation metrics against step
//!   checkpoints/      see `checkpoint`
//! ```
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use vlp_core::{Result, VlpError};

use super::checkpoint::{write_atomic, LATEST_FILE};
use super::config::TrainConfig;

/// The config file name.
pub const CONFIG_FILE: &str = "config.yaml";
/// The metrics file name.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The log file name.
pub const LOG_FILE: &str = "train.log";

/// `YYYYmmdd-HHMMSS` of `t` in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `YYYY-mm-dd HH:MM:SS.mmm` (UTC) of now, for log lines.
fn log_stamp() -> String {
    let now = SystemTime::now();
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = utc_stamp(now);
    format!(
        "{}-{}-{} {}:{}:{}.{:03}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15],
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    log: File,
    metrics: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VlpError + '_ {
    move |e| VlpError::io(path, e)
}

impl RunDir {
    /// `runs/<name>-<YYYYmmdd-HHMMSS>` (UTC, now).
    pub fn default_path(name: &str) -> PathBuf {
        PathBuf::from("runs").join(format!("{name}-{}", utc_stamp(SystemTime::now())))
    }

    /// Creates a new run directory at `path` and writes `config.yaml`. An existing directory is
    /// accepted only when it holds no run (no metrics, no checkpoint): continue a run with
    /// [`RunDir::open`] (`--resume`).
    pub fn create(path: impl Into<PathBuf>, config: &TrainConfig) -> Result<Self> {
        let root = path.into();
        if root.join(METRICS_FILE).exists() || root.join("checkpoints").join(LATEST_FILE).exists() {
            return Err(VlpError::Msg(format!(
                "{} already holds a run: resume it (--resume {0}) or choose another --out",
                root.display()
            )));
        }
        std::fs::create_dir_all(root.join("checkpoints")).map_err(io(&root))?;
        std::fs::create_dir_all(root.join("plots")).map_err(io(&root))?;
        write_atomic(&root.join(CONFIG_FILE), config.to_yaml()?.as_bytes())?;
        Self::open_files(root)
    }

    /// Opens an existing run directory (to resume it).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let root = path.into();
        if !root.join(CONFIG_FILE).is_file() {
            return Err(VlpError::Msg(format!(
                "{} is not a run directory (no {CONFIG_FILE})",
                root.display()
            )));
        }
        std::fs::create_dir_all(root.join("plots")).map_err(io(&root))?;
        Self::open_files(root)
    }

    fn open_files(root: PathBuf) -> Result<Self> {
        let append = |p: PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| VlpError::io(p, e))
        };
        Ok(Self {
            log: append(root.join(LOG_FILE))?,
            metrics: append(root.join(METRICS_FILE))?,
            root,
        })
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.yaml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    /// `train.log`.
    pub fn log_path(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `plots/`.
    pub fn plots_dir(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// Appends a timestamped line to `train.log` (and emits it as a tracing event).
    pub fn log(&mut self, msg: &str) {
        tracing::info!(target: "vlp::train", "{msg}");
        let _ = writeln!(self.log, "{} {msg}", log_stamp());
        let _ = self.log.flush();
    }

    /// Appends one JSON object to `metrics.jsonl`.
    pub fn append_metrics(&mut self, record: &serde_json::Value) -> Result<()> {
        let p = self.metrics_path();
        writeln!(self.metrics, "{record}").map_err(io(&p))?;
        self.metrics.flush().map_err(io(&p))
    }

    /// Drops the records after `step` from `metrics.jsonl` (what a killed run logged past its
    /// last checkpoint, before resuming from it); returns the records kept.
    pub fn truncate_metrics_after(&mut self, step: u64) -> Result<Vec<serde_json::Value>> {
        let p = self.metrics_path();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(VlpError::io(&p, e)),
        };
        // Kept lines are copied verbatim (re-serialising could change the last digit of floats).
        let mut kept_text = String::new();
        let mut kept = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v.get("step")
                .and_then(|s| s.as_u64())
                .is_none_or(|s| s <= step)
            {
                kept_text.push_str(line);
                kept_text.push('\n');
                kept.push(v);
            }
        }
        write_atomic(&p, kept_text.as_bytes())?;
        self.metrics = OpenOptions::new().append(true).open(&p).map_err(io(&p))?;
        Ok(kept)
    }
}

/// Reads every record of a `metrics.jsonl` file (a torn last line, from a kill mid-write, is
/// skipped; any other bad line is an error naming its number).
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VlpError::io(path, e)),
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(io(path))?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == n => {}
            Err(e) => {
                return Err(VlpError::Msg(format!(
                    "{}:{}: invalid JSON: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        // 2024-02-29 13:45:07 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_214_307);
        assert_eq!(utc_stamp(t), "20240229-134507");
        assert!(RunDir::default_path("albef")
            .to_string_lossy()
            .starts_with("runs/albef-"));
    }
}
