//! Readers of the downstream data sets in their official formats, the [`Dataset`](loader::Dataset)
//! trait and the threaded [`DataLoader`](loader::DataLoader).
//!
//! Every reader takes [`ReadOptions`]: the image root that image paths in the annotation files are
//! relative to, and `skip_bad_samples`. A bad record stops the reader with a
//! `VlpError::Data` naming the file, the line and column where the record
//! starts and the field (`[12].caption`); with `skip_bad_samples: true` the record is skipped
//! instead, counted in the [`ReadReport`], and the count is printed to stderr when the file is done.
//! Nothing is skipped silently. A JSON syntax error is never skipped (nothing after it can be
//! trusted); in a JSON-lines file a line that is not JSON is a bad record like any other.
pub mod easy_vqa;
pub mod grouped;
pub mod json;
pub mod karpathy;
pub mod loader;
pub mod nlvr2;
pub mod snli_ve;
pub mod vqa;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use vlp_core::{Result, VlpError};

/// Options every reader takes (a `data:` section of a task config).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    /// Directory the image paths of the annotation files are relative to (absolute paths in the
    /// files are kept as they are).
    #[serde(default)]
    pub image_root: PathBuf,
    /// Skip bad records (and, in the loader, unreadable images), count them and report the count,
    /// instead of stopping at the first.
    #[serde(default)]
    pub skip_bad_samples: bool,
}

impl ReadOptions {
    /// Options with an image root, stopping at the first bad record.
    pub fn new(image_root: impl Into<PathBuf>) -> Self {
        ReadOptions {
            image_root: image_root.into(),
            skip_bad_samples: false,
        }
    }

    /// The same options with `skip_bad_samples` set.
    pub fn skipping(mut self, skip: bool) -> Self {
        self.skip_bad_samples = skip;
        self
    }

    /// An image path of an annotation file resolved against the image root.
    pub fn image_path(&self, rel: &str) -> PathBuf {
        self.image_root.join(rel)
    }
}

/// What a reader read: records seen, kept, skipped (with their errors).
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Records seen.
    pub records: usize,
    /// Records kept.
    pub kept: usize,
    /// The errors of the skipped records, in file order (their count is the skipped count).
    pub skipped: Vec<String>,
}

impl ReadReport {
    /// Number of skipped records.
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// Adds another report (several annotation files read into one set).
    pub fn merge(&mut self, other: ReadReport) {
        self.files.extend(other.files);
        self.records += other.records;
        self.kept += other.kept;
        self.skipped.extend(other.skipped);
    }
}

impl std::fmt::Display for ReadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "{}: {} records, {} kept, {} skipped",
            files.join(", "),
            self.records,
            self.kept,
            self.skipped.len()
        )?;
        if let Some(first) = self.skipped.first() {
            write!(f, " (first: {first})")?;
        }
        Ok(())
    }
}

/// Records read from one or more files, with the report.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The records kept.
    pub items: Vec<T>,
    /// What was read and skipped.
    pub report: ReadReport,
}

/// Applies the skip policy record by record and prints the count of skipped records at the end.
pub(crate) struct Collector<T> {
    skip: bool,
    items: Vec<T>,
    report: ReadReport,
}

impl<T> Collector<T> {
    pub(crate) fn new(path: &Path, opts: &ReadOptions) -> Self {
        Collector {
            skip: opts.skip_bad_samples,
            items: Vec::new(),
            report: ReadReport {
                files: vec![path.to_path_buf()],
                ..Default::default()
            },
        }
    }

    /// Keeps `Ok`; for an error, skips and counts it when skipping, else returns it.
    pub(crate) fn push(&mut self, r: Result<T>) -> Result<()> {
        self.report.records += 1;
        match r {
            Ok(t) => {
                self.items.push(t);
                self.report.kept += 1;
                Ok(())
            }
            Err(e @ VlpError::Data { .. }) if self.skip => {
                self.report.skipped.push(e.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The records kept and the report; prints the skipped count to stderr when there is one.
    pub(crate) fn finish(self) -> Loaded<T> {
        if !self.report.skipped.is_empty() {
            eprintln!(
                "warning: skipped bad records (skip_bad_samples: true): {}",
                self.report
            );
        }
        Loaded {
            items: self.items,
            report: self.report,
        }
    }
}

/// How captions and questions are cleaned before tokenisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TextPrep {
    /// As written in the file.
    #[default]
    Raw,
    /// ALBEF's `pre_caption` / `pre_question` (`dataset/utils.py`), keeping `max_words` words.
    Albef {
        /// Words kept.
        max_words: usize,
    },
    /// BLIP's `pre_caption` / `pre_question` (`data/utils.py`), keeping `max_words` words.
    Blip {
        /// Words kept.
        max_words: usize,
    },
}

impl TextPrep {
    /// A caption (or an NLVR2 / SNLI-VE sentence) cleaned.
    pub fn caption(&self, s: &str) -> String {
        match *self {
            TextPrep::Raw => s.to_string(),
            TextPrep::Albef { max_words } => vlp_core::text::pre_caption(s, max_words),
            TextPrep::Blip { max_words } => vlp_core::text::pre_caption_blip(s, max_words),
        }
    }

    /// A question cleaned.
    pub fn question(&self, s: &str) -> String {
        match *self {
            TextPrep::Raw => s.to_string(),
            TextPrep::Albef { max_words } => vlp_core::text::pre_question(s, max_words),
            TextPrep::Blip { max_words } => vlp_core::text::pre_question_blip(s, max_words),
        }
    }
}
