//! `.safetensors` reading and atomic writing.
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use super::{is_floating, ReadOptions, StateDict};
use crate::{Result, VlpError};

fn ckpt_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::C64 => Kind::ComplexFloat,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        _ => return None,
    })
}

fn dtype_of(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::ComplexFloat => Dtype::C64,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        _ => return None,
    })
}

/// Reads a `.safetensors` file. Safetensors files are flat: the wrapper option does not apply.
pub(crate) fn read(path: &Path, opts: &ReadOptions) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| VlpError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ckpt_err(path, format!("invalid safetensors file: {e}")))?;
    let mut sd = StateDict::new();
    for (name, view) in st.iter() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            ckpt_err(
                path,
                format!("key `{name}`: dtype {:?} is not supported", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let numel: i64 = shape.iter().product();
        let t = if numel == 0 {
            Tensor::empty(shape.as_slice(), (kind, Device::Cpu))
        } else {
            Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| ckpt_err(path, format!("key `{name}`: {e}")))?
        };
        let t = match opts.cast {
            Some(c) if c != kind && is_floating(kind) => t
                .f_to_kind(c)
                .map_err(|e| ckpt_err(path, format!("key `{name}`: cast: {e}")))?,
            _ => t,
        };
        sd.insert(name, t);
    }
    Ok(sd)
}

/// A contiguous CPU copy of a tensor, as safetensors wants it.
struct Blob {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Blob {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The temporary file a write goes through.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `sd` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub(crate) fn write(sd: &StateDict, path: &Path) -> Result<()> {
    let mut blobs = Vec::with_capacity(sd.len());
    for (k, t) in sd.iter() {
        let kind = t
            .f_kind()
            .map_err(|e| ckpt_err(path, format!("key `{k}`: {e}")))?;
        let dtype = dtype_of(kind).ok_or_else(|| {
            ckpt_err(
                path,
                format!("key `{k}`: dtype {kind:?} cannot be stored in safetensors"),
            )
        })?;
        let c = t
            .f_to_device(Device::Cpu)
            .and_then(|c| c.f_contiguous())
            .map_err(|e| ckpt_err(path, format!("key `{k}`: {e}")))?;
        let numel = c.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        if numel > 0 {
            c.f_copy_data_u8(&mut data, numel)
                .map_err(|e| ckpt_err(path, format!("key `{k}`: {e}")))?;
        }
        let shape = c.size().iter().map(|&d| d as usize).collect();
        blobs.push((k.clone(), Blob { dtype, shape, data }));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(blobs.iter().map(|(k, b)| (k.as_str(), b)), Some(meta))
        .map_err(|e| ckpt_err(path, format!("serializing: {e}")))?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VlpError::io(path, e));
    }
    // Make the rename durable (best effort: not every platform can open a directory).
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
