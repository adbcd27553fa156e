//! The error type of vlp-rs library crates: every variant names the file, key or field at fault.
use std::path::PathBuf;

/// Errors raised by vlp-core (and re-used by the other library crates).
#[derive(Debug, thiserror::Error)]
pub enum VlpError {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file that cannot be parsed.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Strict loading failed: lists every missing, unexpected and mis-shaped key.
    #[error("loading {source_name} failed:\n{report}")]
    Load {
        /// Where the state dict came from (a file name, usually).
        source_name: String,
        /// The formatted report.
        report: String,
    },
    /// A configuration file or value that is invalid.
    #[error("config {path}: {msg}")]
    Config {
        /// The config file (or `<string>`).
        path: PathBuf,
        /// What is wrong, naming the field.
        msg: String,
    },
    /// A tokenizer failure.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An image that cannot be read or decoded.
    #[error("image {path}: {msg}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An input tensor of the wrong shape or kind, or a missing named input.
    #[error("input `{name}`: {msg}")]
    Input {
        /// The input's name.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A model, variant or feature that vlp-rs does not implement (yet); parity counts it as
    /// skipped, not failed.
    #[error("not implemented: {what}")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// A bad record in a data file (annotations, results, answer lists): names the file, the line
    /// and column where the record (or the bad value) starts, and the field at fault
    /// (`questions[12].question_id`, `caption`, …).
    #[error("{path}:{line}:{column}: field `{field}`: {msg}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in bytes), useful for one-line JSON files.
        column: usize,
        /// The field at fault, with the record's position (`[3].caption`), or `<json>`.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Anything else, with a message.
    #[error("{0}")]
    Msg(String),
}

/// Result alias of vlp-rs library crates.
pub type Result<T, E = VlpError> = std::result::Result<T, E>;

impl VlpError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VlpError::Io {
            path: path.into(),
            source,
        }
    }
    /// A bad named input.
    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        VlpError::Input {
            name: name.into(),
            msg: msg.into(),
        }
    }
}
