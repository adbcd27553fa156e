//! `torch.save` files: the zip format (PyTorch >= 1.6) and the legacy non-zip format.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use super::pickle::{storage_kind, Dict, StorageRef, TensorRef, Unpickler, Value};
use super::{is_floating, ReadOptions, StateDict, Wrapper};
use crate::{Result, VlpError};

/// The keys `Wrapper::Auto` looks under, in order.
pub(crate) const AUTO_KEYS: [&str; 3] = ["model", "state_dict", "module"];

fn ckpt_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Where the raw bytes of storages come from.
trait StorageSource {
    /// The raw bytes of storage `key`; `nbytes` is what the pickle says it holds.
    fn bytes(&mut self, key: &str, nbytes: usize) -> std::result::Result<Vec<u8>, String>;
}

/// Storages of a zip archive: `<prefix>data/<key>`.
struct ZipStorages {
    archive: zip::ZipArchive<BufReader<File>>,
    prefix: String,
}

impl StorageSource for ZipStorages {
    fn bytes(&mut self, key: &str, nbytes: usize) -> std::result::Result<Vec<u8>, String> {
        let name = format!("{}data/{}", self.prefix, key);
        let mut f = self
            .archive
            .by_name(&name)
            .map_err(|e| format!("storage `{name}`: {e}"))?;
        let size = f.size() as usize;
        if size < nbytes {
            return Err(format!(
                "storage `{name}` holds {size} bytes, the pickle expects {nbytes}"
            ));
        }
        let mut buf = Vec::with_capacity(size);
        f.read_to_end(&mut buf)
            .map_err(|e| format!("reading storage `{name}`: {e}"))?;
        buf.truncate(nbytes);
        Ok(buf)
    }
}

/// Storages of a legacy file: byte ranges after the pickles.
struct LegacyStorages {
    data: Rc<Vec<u8>>,
    ranges: HashMap<String, (usize, usize)>,
}

impl StorageSource for LegacyStorages {
    fn bytes(&mut self, key: &str, nbytes: usize) -> std::result::Result<Vec<u8>, String> {
        let &(start, len) = self
            .ranges
            .get(key)
            .ok_or_else(|| format!("storage `{key}` is not in the file"))?;
        if len < nbytes {
            return Err(format!(
                "storage `{key}` holds {len} bytes, the pickle expects {nbytes}"
            ));
        }
        Ok(self.data[start..start + nbytes].to_vec())
    }
}

/// Persistent-id hook shared by both formats. `('storage', type, key, location, numel[, view])`.
fn storage_from_pid(
    pid: &Value,
    seen: &RefCell<BTreeMap<String, Option<Kind>>>,
) -> std::result::Result<Value, String> {
    let items: Vec<Value> = match pid {
        Value::Tuple(t) => t.as_ref().clone(),
        other => {
            return Err(format!(
                "persistent id is a {}, not a tuple",
                other.type_name()
            ))
        }
    };
    match items.first() {
        Some(Value::Str(s)) if &**s == "storage" => {}
        Some(Value::Str(s)) => {
            // e.g. ('module', ...) in legacy whole-model pickles: keep it opaque.
            return Ok(Value::Str(Rc::from(format!("<persistent {s}>"))));
        }
        _ => return Err("persistent id without a type name".into()),
    }
    if items.len() < 5 {
        return Err(format!(
            "storage persistent id has {} fields, expected 5",
            items.len()
        ));
    }
    let kind = match &items[1] {
        Value::Global(g) => match storage_kind(&g.0, &g.1) {
            Some(k) => k,
            // An error only if a tensor on it is collected.
            None => {
                return Ok(Value::Invalid(Rc::from(format!(
                    "unsupported storage type {}.{}",
                    g.0, g.1
                ))))
            }
        },
        other => return Err(format!("storage type is a {}", other.type_name())),
    };
    let key = match &items[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is a {}", other.type_name())),
    };
    let numel = match &items[4] {
        Value::Int(i) if *i >= 0 => *i,
        _ => return Err(format!("storage `{key}`: bad element count")),
    };
    // Legacy storage views: (view_key, offset, view_size) into the root storage.
    let (numel, base_offset) = match items.get(5) {
        Some(Value::Tuple(v)) if v.len() == 3 => match (&v[1], &v[2]) {
            (Value::Int(off), Value::Int(n)) => (*off + *n, *off),
            _ => return Err(format!("storage `{key}`: bad view metadata")),
        },
        _ => (numel, 0),
    };
    {
        let mut seen = seen.borrow_mut();
        let e = seen.entry(key.clone()).or_insert(kind);
        if e.is_none() {
            *e = kind;
        }
    }
    Ok(Value::Storage(Rc::new(StorageRef {
        key,
        kind,
        numel,
        base_offset,
    })))
}

/// Turns tensor descriptions into tensors, one flat tensor per storage (so views share memory).
struct Materializer<'a> {
    source: &'a mut dyn StorageSource,
    cast: Option<Kind>,
    flats: HashMap<(String, Kind), (Tensor, i64)>,
}

impl Materializer<'_> {
    fn tensor(&mut self, t: &TensorRef) -> std::result::Result<Tensor, String> {
        let s = &t.storage;
        let kind = t
            .dtype
            .or(s.kind)
            .ok_or_else(|| format!("storage `{}` is untyped and no dtype is given", s.key))?;
        let elt = kind.elt_size_in_bytes() as i64;
        let cache_key = (s.key.clone(), kind);
        if !self.flats.contains_key(&cache_key) {
            let nbytes = match s.kind {
                Some(k) => s.numel * k.elt_size_in_bytes() as i64,
                None => s.numel,
            };
            let n = nbytes / elt;
            let bytes = self.source.bytes(&s.key, nbytes as usize)?;
            let flat = if n == 0 {
                Tensor::empty([0], (kind, tch::Device::Cpu))
            } else {
                Tensor::f_from_data_size(&bytes[..(n * elt) as usize], &[n], kind)
                    .map_err(|e| format!("storage `{}`: {e}", s.key))?
            };
            let flat = match self.cast {
                Some(c) if c != kind && is_floating(kind) => flat
                    .f_to_kind(c)
                    .map_err(|e| format!("storage `{}`: cast: {e}", s.key))?,
                _ => flat,
            };
            self.flats.insert(cache_key.clone(), (flat, n));
        }
        let (flat, n) = &self.flats[&cache_key];
        let offset = t.offset + s.base_offset;
        if offset < 0 || t.stride.iter().any(|&st| st < 0) || t.size.iter().any(|&d| d < 0) {
            return Err(format!(
                "negative offset, size or stride (offset {offset}, size {:?}, stride {:?})",
                t.size, t.stride
            ));
        }
        let numel: i64 = t.size.iter().product();
        if numel > 0 {
            let last: i64 = offset
                + t.size
                    .iter()
                    .zip(&t.stride)
                    .map(|(&d, &st)| (d - 1) * st)
                    .sum::<i64>();
            if last >= *n {
                return Err(format!(
                    "view (offset {offset}, size {:?}, stride {:?}) runs past storage `{}` of {n} elements",
                    t.size, t.stride, s.key
                ));
            }
        }
        flat.f_as_strided(t.size.as_slice(), t.stride.as_slice(), offset)
            .map_err(|e| format!("as_strided: {e}"))
    }
}

/// The dict-like contents of a value, if it is one.
fn dict_of(v: &Value) -> Option<Rc<RefCell<Dict>>> {
    match v {
        Value::Dict(d) => Some(d.clone()),
        Value::Object(o) => {
            let o = o.borrow();
            if o.dict_items.len() > 0 {
                let d = Dict::default();
                let d = Rc::new(RefCell::new(d));
                for (k, v) in o.dict_items.entries() {
                    d.borrow_mut().insert(k.clone(), v.clone());
                }
                Some(d)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn key_list(d: &Dict) -> String {
    let keys: Vec<String> = d
        .entries()
        .iter()
        .map(|(k, v)| match k {
            Value::Str(s) => format!("`{s}` ({})", v.type_name()),
            other => format!("<{}> ({})", other.type_name(), v.type_name()),
        })
        .collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// Picks the dict that holds the weights according to `wrapper`.
fn unwrap(top: &Value, wrapper: &Wrapper) -> std::result::Result<Rc<RefCell<Dict>>, String> {
    let d = dict_of(top).ok_or_else(|| {
        format!(
            "the top-level object is a {}, not a dict (a whole pickled module? save `model.state_dict()` instead)",
            top.type_name()
        )
    })?;
    let inner = |key: &str| -> Option<std::result::Result<Rc<RefCell<Dict>>, String>> {
        let b = d.borrow();
        let v = b.get_str(key)?;
        Some(dict_of(v).ok_or_else(|| {
            format!(
                "wrapper key `{key}` holds a {}, not a state dict",
                v.type_name()
            )
        }))
    };
    match wrapper {
        Wrapper::None => Ok(d.clone()),
        Wrapper::Key(k) => inner(k).unwrap_or_else(|| {
            Err(format!(
                "wrapper key `{k}` not found; top-level keys: {}",
                key_list(&d.borrow())
            ))
        }),
        Wrapper::Auto => {
            for k in AUTO_KEYS {
                let b = d.borrow();
                if let Some(v) = b.get_str(k) {
                    if let Some(inner) = dict_of(v) {
                        return Ok(inner);
                    }
                }
            }
            Ok(d.clone())
        }
    }
}

/// Collects the tensors of `top` (after unwrapping) into a state dict.
fn collect(
    path: &Path,
    top: &Value,
    source: &mut dyn StorageSource,
    opts: &ReadOptions,
) -> Result<StateDict> {
    let d = unwrap(top, &opts.wrapper).map_err(|m| ckpt_err(path, m))?;
    let d = d.borrow();
    let mut m = Materializer {
        source,
        cast: opts.cast,
        flats: HashMap::new(),
    };
    let mut sd = StateDict::new();
    let mut skipped = Vec::new();
    for (k, v) in d.entries() {
        let key = match k {
            Value::Str(s) => s.to_string(),
            other => {
                skipped.push(format!("<{}>", other.type_name()));
                continue;
            }
        };
        match v {
            Value::Tensor(t) => {
                let t = m
                    .tensor(t)
                    .map_err(|e| ckpt_err(path, format!("key `{key}`: {e}")))?;
                sd.insert(key, t);
            }
            Value::Invalid(m) => return Err(ckpt_err(path, format!("key `{key}`: {m}"))),
            Value::Object(o) => {
                if let Value::Global(g) = &o.borrow().callable {
                    if g.0.starts_with("torch") && g.1.starts_with("_rebuild") {
                        return Err(ckpt_err(
                            path,
                            format!(
                                "key `{key}`: unsupported tensor encoding {}.{} (quantized, sparse, meta or numpy-backed tensors are not read)",
                                g.0, g.1
                            ),
                        ));
                    }
                }
                skipped.push(key);
            }
            _ => skipped.push(key),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(
            path = %path.display(),
            "skipped non-tensor entries: {}",
            skipped.join(", ")
        );
    }
    if sd.is_empty() && d.len() > 0 {
        return Err(ckpt_err(
            path,
            format!(
                "no tensors found (wrapper {:?}); keys there: {}",
                opts.wrapper,
                key_list(&d)
            ),
        ));
    }
    Ok(sd)
}

/// Reads a zip-format `torch.save` file.
pub(crate) fn read_zip(path: &Path, opts: &ReadOptions) -> Result<StateDict> {
    let file = File::open(path).map_err(|e| VlpError::io(path, e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ckpt_err(path, format!("not a readable zip archive: {e}")))?;
    let pkl_name = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            ckpt_err(
                path,
                "zip archive without a `data.pkl`: not a torch.save file (a TorchScript archive?)",
            )
        })?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
    let byteorder_name = format!("{prefix}byteorder");
    if let Ok(mut f) = archive.by_name(&byteorder_name) {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        if s.trim() == "big" {
            return Err(ckpt_err(
                path,
                "big-endian checkpoints (byteorder `big`) are not supported",
            ));
        }
    }
    let mut pkl = Vec::new();
    archive
        .by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(|e| ckpt_err(path, format!("reading `{pkl_name}`: {e}")))?;
    let seen = RefCell::new(BTreeMap::new());
    let top = {
        let mut pl = |pid: &Value| storage_from_pid(pid, &seen);
        Unpickler::new(&pkl)
            .load(&mut pl)
            .map_err(|e| ckpt_err(path, format!("`{pkl_name}`: {e}")))?
    };
    let mut source = ZipStorages { archive, prefix };
    collect(path, &top, &mut source, opts)
}

/// `0x1950a86a20f9469cfc6c`, the magic number the legacy format pickles first.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads a legacy (non-zip, `_use_new_zipfile_serialization=False`) `torch.save` file.
pub(crate) fn read_legacy(path: &Path, opts: &ReadOptions) -> Result<StateDict> {
    let data = Rc::new(std::fs::read(path).map_err(|e| VlpError::io(path, e))?);
    let legacy = |m: String| {
        ckpt_err(
            path,
            format!("not a legacy torch.save file (nor a zip or safetensors one): {m}"),
        )
    };
    let mut up = Unpickler::new(&data);
    let mut no_pid = |_: &Value| -> std::result::Result<Value, String> {
        Err("unexpected persistent id in the header".into())
    };
    let magic = up.load(&mut no_pid).map_err(legacy)?;
    match &magic {
        Value::BigInt(b) if **b == LEGACY_MAGIC => {}
        _ => {
            return Err(legacy(
                "a plain pickle without the torch magic number".into(),
            ))
        }
    }
    let proto = up.load(&mut no_pid).map_err(legacy)?;
    if !matches!(proto, Value::Int(1001)) {
        return Err(ckpt_err(
            path,
            format!("unsupported legacy protocol version {proto:?}"),
        ));
    }
    let sys_info = up.load(&mut no_pid).map_err(legacy)?;
    if let Some(d) = dict_of(&sys_info) {
        if let Some(Value::Bool(false)) = d.borrow().get_str("little_endian") {
            return Err(ckpt_err(path, "big-endian checkpoints are not supported"));
        }
    }
    let seen = RefCell::new(BTreeMap::new());
    let top = {
        let mut pl = |pid: &Value| storage_from_pid(pid, &seen);
        up.load(&mut pl)
            .map_err(|e| ckpt_err(path, format!("main pickle: {e}")))?
    };
    let keys = up
        .load(&mut no_pid)
        .map_err(|e| ckpt_err(path, format!("storage key list: {e}")))?;
    let keys: Vec<String> = match keys {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                other => Err(ckpt_err(
                    path,
                    format!("storage key is a {}", other.type_name()),
                )),
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(ckpt_err(
                path,
                format!("storage key list is a {}", other.type_name()),
            ))
        }
    };
    // Each storage: an i64 element count, then its bytes.
    let seen = seen.into_inner();
    let mut pos = up.position();
    let mut ranges = HashMap::new();
    for key in keys {
        let kind = seen
            .get(&key)
            .copied()
            .ok_or_else(|| ckpt_err(path, format!("storage `{key}` is listed but never used")))?;
        let elt = kind.map_or(1, |k| k.elt_size_in_bytes());
        let head = data
            .get(pos..pos + 8)
            .ok_or_else(|| ckpt_err(path, format!("storage `{key}`: file truncated")))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(head);
        let numel = usize::try_from(i64::from_le_bytes(a))
            .map_err(|_| ckpt_err(path, format!("storage `{key}`: bad size")))?;
        let len = numel
            .checked_mul(elt)
            .filter(|&l| pos + 8 + l <= data.len())
            .ok_or_else(|| ckpt_err(path, format!("storage `{key}`: file truncated")))?;
        ranges.insert(key, (pos + 8, len));
        pos += 8 + len;
    }
    let mut source = LegacyStorages {
        data: data.clone(),
        ranges,
    };
    collect(path, &top, &mut source, opts)
}
