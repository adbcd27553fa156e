//! Checkpoint I/O: PyTorch `torch.save` files and `.safetensors`, read into a [`StateDict`];
//! strict or partial loading into a `VarStore` with a full [`LoadReport`]; atomic safetensors
//! writing.
//!
//! `torch.save` files (`.pth`, `.pt`, `.bin`) are read without Python: the zip archive's
//! `data.pkl` runs through a small pickle virtual machine, and each storage under `data/` becomes
//! one flat tensor that every tensor viewing it shares (tied weights stay tied; views with offsets
//! and strides come out as `as_strided` views). The legacy non-zip format is read too. The format
//! is chosen from the file's first bytes, not its extension. See `docs/checkpoints.md`.
mod load;
mod pickle;
mod pth;
mod safetensors_io;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::{Result, VlpError};

pub use load::{load_state_dict, state_dict_of, KeyShape, LoadMode, LoadReport, Mismatch};

/// True for the floating-point kinds (the ones [`ReadOptions::cast`] converts).
pub(crate) fn is_floating(k: Kind) -> bool {
    matches!(
        k,
        Kind::Half
            | Kind::Float
            | Kind::Double
            | Kind::BFloat16
            | Kind::Float8e5m2
            | Kind::Float8e4m3fn
            | Kind::Float8e5m2fnuz
            | Kind::Float8e4m3fnuz
    )
}

/// Named tensors ordered by key, as a PyTorch `state_dict` holds them.
#[derive(Default)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
}

impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.tensors.iter().map(|(k, t)| {
                let kind = t.f_kind().map(|k| format!("{k:?}")).unwrap_or_default();
                (k, format!("{kind}{:?}", t.size()))
            }))
            .finish()
    }
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Inserts `t` under `key`, returning the tensor it replaces.
    pub fn insert(&mut self, key: impl Into<String>, t: Tensor) -> Option<Tensor> {
        self.tensors.insert(key.into(), t)
    }

    /// Removes and returns the tensor under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// Renames every key starting with `from` to start with `to` instead; returns how many were
    /// renamed. A renamed key replaces an existing entry of the same name.
    pub fn rename_prefix(&mut self, from: &str, to: &str) -> usize {
        let keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        let moved: Vec<(String, Tensor)> = keys
            .into_iter()
            .filter_map(|k| {
                let t = self.tensors.remove(&k)?;
                Some((format!("{to}{}", &k[from.len()..]), t))
            })
            .collect();
        let n = moved.len();
        self.tensors.extend(moved);
        n
    }

    /// Keeps only the entries for which `f(key, tensor)` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &Tensor) -> bool) {
        self.tensors.retain(|k, t| f(k, t));
    }

    /// A copy with every tensor moved to `device` (tensors already there are shared, not copied).
    pub fn to_device(&self, device: Device) -> StateDict {
        StateDict {
            tensors: self
                .tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.to_device(device)))
                .collect(),
        }
    }
}

impl IntoIterator for StateDict {
    type Item = (String, Tensor);
    type IntoIter = std::collections::btree_map::IntoIter<String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl FromIterator<(String, Tensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        StateDict {
            tensors: iter.into_iter().collect(),
        }
    }
}

/// Where the state dict sits inside a pickled checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Wrapper {
    /// Under the first of `model`, `state_dict`, `module` that holds a dict; else the top level.
    #[default]
    Auto,
    /// Under this top-level key (an error naming it and the keys present when it is absent).
    Key(String),
    /// The top level is the state dict.
    None,
}

/// Options of [`read_state_dict`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadOptions {
    /// Where the state dict sits (pickled checkpoints only: safetensors files are flat).
    pub wrapper: Wrapper,
    /// Convert floating-point tensors to this kind (integer and bool tensors keep theirs).
    pub cast: Option<Kind>,
    /// Strip a leading `module.` from every key (DeepSpeed / DataParallel checkpoints).
    pub strip_module_prefix: bool,
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The container formats [`read_state_dict`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

fn sniff(path: &Path) -> Result<Format> {
    let mut f = std::fs::File::open(path).map_err(|e| VlpError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| VlpError::io(path, e))?.len();
    let mut head = Vec::with_capacity(512);
    f.by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| VlpError::io(path, e))?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Format::TorchZip);
    }
    if head.len() >= 9 {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        let n = u64::from_le_bytes(n);
        if head[8] == b'{' && n.checked_add(8).is_some_and(|e| e <= file_len) {
            return Ok(Format::Safetensors);
        }
    }
    if head.first() == Some(&0x80) {
        return Ok(Format::TorchLegacy);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Err(ckpt_err(
            path,
            "the tar-based torch.save format (PyTorch < 0.4) is not supported",
        ));
    }
    Err(ckpt_err(
        path,
        "unrecognised format: not a torch.save zip or legacy file, nor a safetensors file",
    ))
}

/// Reads the state dict of a checkpoint file: a `torch.save` file (zip or legacy format) or a
/// `.safetensors` file, recognised from its first bytes.
///
/// Non-tensor entries next to the weights (numbers, strings, `argparse.Namespace`, ...) are
/// skipped. Tensors keep their dtype unless `opts.cast` names one (floating tensors only).
pub fn read_state_dict(path: &Path, opts: &ReadOptions) -> Result<StateDict> {
    let mut sd = match sniff(path)? {
        Format::TorchZip => pth::read_zip(path, opts)?,
        Format::TorchLegacy => pth::read_legacy(path, opts)?,
        Format::Safetensors => safetensors_io::read(path, opts)?,
    };
    if opts.strip_module_prefix {
        let keys: Vec<String> = sd
            .keys()
            .filter(|k| k.starts_with("module."))
            .cloned()
            .collect();
        for k in keys {
            let new = k["module.".len()..].to_string();
            if sd.contains_key(&new) {
                return Err(ckpt_err(
                    path,
                    format!(
                        "stripping `module.` from `{k}` collides with the existing key `{new}`"
                    ),
                ));
            }
            let t = sd.remove(&k).expect("listed above");
            sd.insert(new, t);
        }
    }
    tracing::debug!(path = %path.display(), tensors = sd.len(), "read state dict");
    Ok(sd)
}

/// Writes `sd` to a `.safetensors` file atomically (a temporary file `<path>.tmp-<pid>` in the
/// same directory, fsync, rename). Non-contiguous and shared tensors are written as contiguous
/// copies.
pub fn write_safetensors(sd: &StateDict, path: &Path) -> Result<()> {
    safetensors_io::write(sd, path)
}
