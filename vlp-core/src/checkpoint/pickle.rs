//! A small pickle virtual machine: enough of Python's `pickle` to read what `torch.save` writes.
//!
//! It runs every opcode of protocols 0 to 5 except the extension registry (`EXT1/2/4`) and
//! out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`). Nothing is executed: calls to globals are
//! interpreted for the handful of callables a `state_dict` uses (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2/v3`, `_rebuild_parameter`, ...) and any other call is kept as
//! an opaque [`Object`], so that an `argparse.Namespace` or an optimizer state next to the weights
//! does not abort reading the file.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

/// A storage named by a persistent id: raw data that lives outside the pickle.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The storage key (the file name under `data/` in the zip format).
    pub key: String,
    /// The element type; `None` for `torch.UntypedStorage` (bytes).
    pub kind: Option<Kind>,
    /// Number of elements (of `kind`, or bytes when untyped).
    pub numel: i64,
    /// Offset in elements into the root storage (legacy storage views), 0 otherwise.
    pub base_offset: i64,
}

/// A tensor as `_rebuild_tensor_v2/v3` describes it; its data is read later, on demand.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// Offset in elements into the storage.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides in elements.
    pub stride: Vec<i64>,
    /// Element type given explicitly (`_rebuild_tensor_v3`), else the storage's.
    pub dtype: Option<Kind>,
}

/// The hashable keys of a dict (others are kept in order but not indexed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
}

/// An insertion-ordered dict.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

impl Dict {
    fn key_of(v: &Value) -> Option<DictKey> {
        match v {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(*b as i64)),
            _ => None,
        }
    }

    /// Inserts or replaces `k`.
    pub fn insert(&mut self, k: Value, v: Value) {
        match Self::key_of(&k) {
            Some(dk) => {
                if let Some(&i) = self.index.get(&dk) {
                    self.entries[i].1 = v;
                } else {
                    self.index.insert(dk, self.entries.len());
                    self.entries.push((k, v));
                }
            }
            None => self.entries.push((k, v)),
        }
    }

    /// The value under the string key `k`.
    pub fn get_str(&self, k: &str) -> Option<&Value> {
        self.index
            .get(&DictKey::Str(Rc::from(k)))
            .map(|&i| &self.entries[i].1)
    }

    /// Entries in insertion order.
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The result of calling (or instantiating) a global the VM does not interpret.
#[derive(Debug)]
pub(crate) struct Object {
    /// The callable, usually a [`Value::Global`].
    pub callable: Value,
    /// Its arguments (kept for `Debug` output).
    #[allow(dead_code)]
    pub args: Value,
    /// State set by `BUILD`, if any.
    pub state: Option<Value>,
    /// Items added by `APPEND(S)` / `ADDITEMS`.
    pub list_items: Vec<Value>,
    /// Items added by `SETITEM(S)` (dict subclasses).
    pub dict_items: Dict,
}

/// A Python value as the VM represents it.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    /// Payloads only shown by `Debug` (and checked by tests) are not otherwise read.
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    #[allow(dead_code)]
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Dict>>),
    /// `module.name`, not resolved.
    Global(Rc<(String, String)>),
    Object(Rc<RefCell<Object>>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A value that could not be built (an unsupported storage type or dtype, say): an error only
    /// if it ends up among the tensors collected.
    Invalid(Rc<str>),
}

impl Value {
    /// A short description for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("global {}.{}", g.0, g.1),
            Value::Object(o) => match &o.borrow().callable {
                Value::Global(g) => format!("{}.{}", g.0, g.1),
                other => format!("object made by {}", other.type_name()),
            },
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Invalid(_) => "unreadable value".into(),
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn as_int_tuple(&self) -> Option<Vec<i64>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_int).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_int).collect(),
            _ => None,
        }
    }

    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }
}

fn new_dict() -> Value {
    Value::Dict(Rc::new(RefCell::new(Dict::default())))
}

fn new_list(v: Vec<Value>) -> Value {
    Value::List(Rc::new(RefCell::new(v)))
}

fn global_module(m: &str) -> &str {
    // Python 2 pickles name the builtins module `__builtin__`.
    if m == "__builtin__" {
        "builtins"
    } else {
        m
    }
}

/// The element type of a legacy typed storage class such as `torch.FloatStorage`
/// (`torch.cuda.FloatStorage` too); `Some(None)` for `UntypedStorage`.
pub(crate) fn storage_kind(module: &str, name: &str) -> Option<Option<Kind>> {
    if !(module == "torch" || module == "torch.cuda" || module == "torch.storage") {
        return None;
    }
    let kind = match name {
        "UntypedStorage" | "_UntypedStorage" => return Some(None),
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        "QInt8Storage" => Kind::QInt8,
        "QUInt8Storage" => Kind::QUInt8,
        "QInt32Storage" => Kind::QInt32,
        _ => return None,
    };
    Some(Some(kind))
}

/// The element type named by a dtype global such as `torch.float16`.
pub(crate) fn dtype_kind(module: &str, name: &str) -> Result<Kind, String> {
    if module != "torch" {
        return Err(format!("`{module}.{name}` is not a torch dtype"));
    }
    Ok(match name {
        "float32" | "float" => Kind::Float,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float64" | "double" => Kind::Double,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "complex32" | "chalf" => Kind::ComplexHalf,
        "complex64" | "cfloat" => Kind::ComplexFloat,
        "complex128" | "cdouble" => Kind::ComplexDouble,
        "qint8" => Kind::QInt8,
        "quint8" => Kind::QUInt8,
        "qint32" => Kind::QInt32,
        "float8_e5m2" => Kind::Float8e5m2,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2fnuz" => Kind::Float8e5m2fnuz,
        "float8_e4m3fnuz" => Kind::Float8e4m3fnuz,
        other => {
            return Err(format!(
                "dtype torch.{other} is not supported by libtorch bindings"
            ))
        }
    })
}

/// Builds the tensor description of `_rebuild_tensor(_v2|_v3)` from its arguments.
fn rebuild_tensor(name: &str, args: &[Value]) -> Result<Value, String> {
    let want = if name == "_rebuild_tensor" { 4 } else { 6 };
    if args.len() < want {
        return Err(format!(
            "torch._utils.{name} expects at least {want} arguments, got {}",
            args.len()
        ));
    }
    let storage = match &args[0] {
        Value::Storage(s) => s.as_ref().clone(),
        Value::Invalid(m) => return Err(m.to_string()),
        other => {
            return Err(format!(
                "torch._utils.{name}: first argument is a {}, not a storage",
                other.type_name()
            ))
        }
    };
    let offset = args[1]
        .as_int()
        .ok_or_else(|| format!("torch._utils.{name}: storage offset is not an int"))?;
    let size = args[2]
        .as_int_tuple()
        .ok_or_else(|| format!("torch._utils.{name}: size is not a tuple of ints"))?;
    let stride = args[3]
        .as_int_tuple()
        .ok_or_else(|| format!("torch._utils.{name}: stride is not a tuple of ints"))?;
    if size.len() != stride.len() {
        return Err(format!(
            "torch._utils.{name}: size {size:?} and stride {stride:?} differ in length"
        ));
    }
    let dtype = if name == "_rebuild_tensor_v3" {
        match args.get(6) {
            Some(Value::Global(g)) => Some(dtype_kind(&g.0, &g.1)?),
            Some(other) => {
                return Err(format!(
                    "torch._utils._rebuild_tensor_v3: dtype argument is a {}",
                    other.type_name()
                ))
            }
            None => return Err("torch._utils._rebuild_tensor_v3: missing dtype argument".into()),
        }
    } else {
        None
    };
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage,
        offset,
        size,
        stride,
        dtype,
    })))
}

/// Interprets a call `callable(*args)`; unknown callables give an opaque [`Object`].
fn call(callable: Value, args: Value) -> Result<Value, String> {
    let opaque = |callable: Value, args: Value| {
        Value::Object(Rc::new(RefCell::new(Object {
            callable,
            args,
            state: None,
            list_items: Vec::new(),
            dict_items: Dict::default(),
        })))
    };
    let g = match &callable {
        Value::Global(g) => g.clone(),
        _ => return Ok(opaque(callable, args)),
    };
    let (module, name) = (global_module(&g.0), g.1.as_str());
    let argv = args.items().unwrap_or_default();
    let v = match (module, name) {
        ("collections", "OrderedDict") | ("builtins", "dict") => {
            let d = new_dict();
            if let (Value::Dict(dd), Some(init)) = (&d, argv.first()) {
                // OrderedDict([(k, v), ...]) or dict({...})
                match init {
                    Value::Dict(src) => {
                        for (k, v) in src.borrow().entries() {
                            dd.borrow_mut().insert(k.clone(), v.clone());
                        }
                    }
                    other => {
                        for pair in other.items().unwrap_or_default() {
                            if let Some(kv) = pair.items() {
                                if kv.len() == 2 {
                                    dd.borrow_mut().insert(kv[0].clone(), kv[1].clone());
                                }
                            }
                        }
                    }
                }
            }
            d
        }
        ("collections", "defaultdict") => new_dict(),
        ("torch._utils", "_rebuild_tensor")
        | ("torch._utils", "_rebuild_tensor_v2")
        | ("torch._utils", "_rebuild_tensor_v3") => {
            // A tensor that cannot be described is an error only if it is collected.
            rebuild_tensor(name, &argv).unwrap_or_else(|m| Value::Invalid(Rc::from(m)))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match argv.first() {
            Some(t) => t.clone(),
            None => return Err(format!("torch._utils.{name} called without arguments")),
        },
        ("torch._tensor", "_rebuild_from_type_v2") | ("torch._tensor", "_rebuild_from_type") => {
            // (func, new_type, args, state): a tensor subclass; rebuild the plain tensor.
            match (argv.first(), argv.get(2)) {
                (Some(f), Some(a)) => call(f.clone(), a.clone())?,
                _ => return Err(format!("torch._tensor.{name}: bad arguments")),
            }
        }
        ("torch", "Size") => match argv.first() {
            Some(t @ Value::Tuple(_)) => t.clone(),
            _ => Value::Tuple(Rc::new(Vec::new())),
        },
        ("_codecs", "encode") => match argv.first() {
            // How protocol-2 pickles spell bytes: _codecs.encode(str, 'latin1').
            Some(Value::Str(s)) => Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
            _ => opaque(callable, args),
        },
        ("builtins", "set") | ("builtins", "frozenset") | ("builtins", "list") => {
            new_list(argv.first().and_then(Value::items).unwrap_or_default())
        }
        ("builtins", "tuple") => Value::Tuple(Rc::new(
            argv.first().and_then(Value::items).unwrap_or_default(),
        )),
        ("builtins", "bytearray") | ("builtins", "bytes") => match argv.first() {
            Some(b @ Value::Bytes(_)) => b.clone(),
            None => Value::Bytes(Rc::from(Vec::new())),
            _ => opaque(callable, args),
        },
        _ => opaque(callable, args),
    };
    Ok(v)
}

/// The persistent-load hook: maps a persistent id to a value (a storage, usually).
pub(crate) type PersistentLoad<'a> = dyn FnMut(&Value) -> Result<Value, String> + 'a;

/// Runs pickles from a byte buffer, one after the other.
pub(crate) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Unpickler<'a> {
    /// A VM over `data`, starting at its beginning.
    pub fn new(data: &'a [u8]) -> Self {
        Unpickler { data, pos: 0 }
    }

    /// The position just after the last `STOP` run.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated: wanted {n} bytes at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| format!("length {n} too large"))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("pickle truncated: unterminated line at offset {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| format!("non-UTF-8 text at offset {}", self.pos))?;
        self.pos += n + 1;
        Ok(s.strip_suffix('\r').unwrap_or(s))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, String> {
        let at = self.pos;
        let b = self.take(n)?;
        let s =
            std::str::from_utf8(b).map_err(|_| format!("invalid UTF-8 string at offset {at}"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    /// A Python 2 `str` (bytes): decoded as UTF-8 when valid, else Latin-1.
    fn py2_str(b: &[u8]) -> Value {
        match std::str::from_utf8(b) {
            Ok(s) => Value::Str(Rc::from(s)),
            Err(_) => Value::Str(Rc::from(b.iter().map(|&c| c as char).collect::<String>())),
        }
    }

    /// Runs one pickle up to its `STOP` and returns the value it built.
    pub fn load(&mut self, persistent_load: &mut PersistentLoad<'_>) -> Result<Value, String> {
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();

        fn pop(stack: &mut Vec<Value>, op: u8, at: usize) -> Result<Value, String> {
            stack
                .pop()
                .ok_or_else(|| format!("stack underflow at opcode 0x{op:02x} (offset {at})"))
        }
        fn top(stack: &mut [Value], op: u8, at: usize) -> Result<&mut Value, String> {
            stack
                .last_mut()
                .ok_or_else(|| format!("stack underflow at opcode 0x{op:02x} (offset {at})"))
        }
        fn pop_mark(
            stack: &mut Vec<Value>,
            marks: &mut Vec<usize>,
            op: u8,
            at: usize,
        ) -> Result<Vec<Value>, String> {
            let m = marks
                .pop()
                .ok_or_else(|| format!("no MARK for opcode 0x{op:02x} (offset {at})"))?;
            if m > stack.len() {
                return Err(format!("corrupt MARK at opcode 0x{op:02x} (offset {at})"));
            }
            Ok(stack.split_off(m))
        }
        fn append(target: &Value, items: Vec<Value>, at: usize) -> Result<(), String> {
            match target {
                Value::List(l) => l.borrow_mut().extend(items),
                Value::Object(o) => o.borrow_mut().list_items.extend(items),
                other => return Err(format!("APPEND to a {} (offset {at})", other.type_name())),
            }
            Ok(())
        }
        fn set_items(target: &Value, items: Vec<Value>, at: usize) -> Result<(), String> {
            if !items.len().is_multiple_of(2) {
                return Err(format!(
                    "SETITEMS with an odd number of items (offset {at})"
                ));
            }
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                match target {
                    Value::Dict(d) => d.borrow_mut().insert(k, v),
                    Value::Object(o) => o.borrow_mut().dict_items.insert(k, v),
                    other => {
                        return Err(format!("SETITEM on a {} (offset {at})", other.type_name()))
                    }
                }
            }
            Ok(())
        }

        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p}"));
                    }
                }
                // FRAME
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    return pop(&mut stack, op, at);
                }
                // MARK
                b'(' => marks.push(stack.len()),
                // POP
                b'0' => {
                    if marks.last() == Some(&stack.len()) {
                        marks.pop();
                    } else {
                        pop(&mut stack, op, at)?;
                    }
                }
                // POP_MARK
                b'1' => {
                    pop_mark(&mut stack, &mut marks, op, at)?;
                }
                // DUP
                b'2' => {
                    let v = top(&mut stack, op, at)?.clone();
                    stack.push(v);
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                // INT (text): also "00"/"01" for False/True
                b'I' => {
                    let l = self.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            l.parse()
                                .map_err(|_| format!("bad INT {l:?} at offset {at}"))?,
                        ),
                    };
                    stack.push(v);
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    stack.push(Value::Int(v as i64));
                }
                // LONG (text)
                b'L' => {
                    let l = self.line()?;
                    let l = l.strip_suffix('L').unwrap_or(l);
                    let v = match l.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::BigInt(Rc::from(l.as_bytes())),
                    };
                    stack.push(v);
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32()? as i32;
                        usize::try_from(n).map_err(|_| format!("negative LONG4 length {n}"))?
                    };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let neg = b[n - 1] & 0x80 != 0;
                        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
                        a[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(a))
                    } else {
                        Value::BigInt(Rc::from(b))
                    };
                    stack.push(v);
                }
                // FLOAT (text), BINFLOAT (big-endian)
                b'F' => {
                    let l = self.line()?;
                    let f = l
                        .parse::<f64>()
                        .map_err(|_| format!("bad FLOAT {l:?} at offset {at}"))?;
                    stack.push(Value::Float(f));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                // STRING (text, quoted repr), BINSTRING, SHORT_BINSTRING
                b'S' => {
                    let l = self.line()?;
                    let q = l
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| l.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                        .ok_or_else(|| format!("bad STRING at offset {at}"))?;
                    stack.push(Value::Str(Rc::from(q)));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    stack.push(Self::py2_str(b));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    stack.push(Self::py2_str(b));
                }
                // UNICODE (text, raw-unicode-escape; taken verbatim)
                b'V' => {
                    let l = self.line()?;
                    stack.push(Value::Str(Rc::from(l)));
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    stack.push(v);
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    stack.push(Value::Bytes(Rc::from(b)));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    stack.push(Value::Bytes(Rc::from(b)));
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?;
                    stack.push(Value::Bytes(Rc::from(b)));
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1/2/3
                b')' => stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(format!("stack underflow at TUPLE{n} (offset {at})"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(Rc::new(items)));
                }
                // EMPTY_LIST, LIST, APPEND, APPENDS
                b']' => stack.push(new_list(Vec::new())),
                b'l' => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    stack.push(new_list(items));
                }
                b'a' => {
                    let v = pop(&mut stack, op, at)?;
                    append(top(&mut stack, op, at)?, vec![v], at)?;
                }
                b'e' => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    append(top(&mut stack, op, at)?, items, at)?;
                }
                // EMPTY_DICT, DICT, SETITEM, SETITEMS
                b'}' => stack.push(new_dict()),
                b'd' => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    let d = new_dict();
                    set_items(&d, items, at)?;
                    stack.push(d);
                }
                b's' => {
                    let v = pop(&mut stack, op, at)?;
                    let k = pop(&mut stack, op, at)?;
                    set_items(top(&mut stack, op, at)?, vec![k, v], at)?;
                }
                b'u' => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    set_items(top(&mut stack, op, at)?, items, at)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET (kept as lists)
                0x8f => stack.push(new_list(Vec::new())),
                0x90 => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    append(top(&mut stack, op, at)?, items, at)?;
                }
                0x91 => {
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    stack.push(new_list(items));
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    stack.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = pop(&mut stack, op, at)?;
                    let module = pop(&mut stack, op, at)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            stack.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))
                        }
                        _ => {
                            return Err(format!("STACK_GLOBAL with non-string names (offset {at})"))
                        }
                    }
                }
                // REDUCE, NEWOBJ, NEWOBJ_EX
                b'R' | 0x81 => {
                    let args = pop(&mut stack, op, at)?;
                    let callable = pop(&mut stack, op, at)?;
                    stack.push(call(callable, args)?);
                }
                0x92 => {
                    let _kwargs = pop(&mut stack, op, at)?;
                    let args = pop(&mut stack, op, at)?;
                    let callable = pop(&mut stack, op, at)?;
                    stack.push(call(callable, args)?);
                }
                // INST (protocol 0), OBJ (protocol 1)
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let items = pop_mark(&mut stack, &mut marks, op, at)?;
                    let g = Value::Global(Rc::new((module, name)));
                    stack.push(call(g, Value::Tuple(Rc::new(items)))?);
                }
                b'o' => {
                    let mut items = pop_mark(&mut stack, &mut marks, op, at)?;
                    if items.is_empty() {
                        return Err(format!("OBJ without a class (offset {at})"));
                    }
                    let cls = items.remove(0);
                    stack.push(call(cls, Value::Tuple(Rc::new(items)))?);
                }
                // BUILD
                b'b' => {
                    let state = pop(&mut stack, op, at)?;
                    if let Value::Object(o) = top(&mut stack, op, at)? {
                        o.borrow_mut().state = Some(state);
                    }
                    // Dicts (OrderedDict's `_metadata`), tensors (hooks) and the rest: ignored.
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| format!("bad PUT index {l:?}"))?;
                    memo.insert(i, top(&mut stack, op, at)?.clone());
                }
                b'q' => {
                    let i = self.u8()? as u64;
                    memo.insert(i, top(&mut stack, op, at)?.clone());
                }
                b'r' => {
                    let i = self.u32()? as u64;
                    memo.insert(i, top(&mut stack, op, at)?.clone());
                }
                0x94 => {
                    let i = memo.len() as u64;
                    memo.insert(i, top(&mut stack, op, at)?.clone());
                }
                // GET, BINGET, LONG_BINGET
                b'g' | b'h' | b'j' => {
                    let i = match op {
                        b'g' => {
                            let l = self.line()?;
                            l.parse().map_err(|_| format!("bad GET index {l:?}"))?
                        }
                        b'h' => self.u8()? as u64,
                        _ => self.u32()? as u64,
                    };
                    let v = memo
                        .get(&i)
                        .ok_or_else(|| format!("memo key {i} not found (offset {at})"))?
                        .clone();
                    stack.push(v);
                }
                // PERSID, BINPERSID
                b'P' => {
                    let l = self.line()?;
                    let v = persistent_load(&Value::Str(Rc::from(l)))?;
                    stack.push(v);
                }
                b'Q' => {
                    let pid = pop(&mut stack, op, at)?;
                    let v = persistent_load(&pid)?;
                    stack.push(v);
                }
                0x82..=0x84 => {
                    return Err(format!(
                        "pickle opcode EXT{} (extension registry) is not supported (offset {at})",
                        1 << (op - 0x82)
                    ))
                }
                0x97 | 0x98 => {
                    return Err(format!(
                        "out-of-band pickle buffers are not supported (offset {at})"
                    ))
                }
                _ => return Err(format!("unknown pickle opcode 0x{op:02x} at offset {at}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> Result<Value, String> {
        let mut no_pid = |_: &Value| -> Result<Value, String> { Err("no persistent ids".into()) };
        Unpickler::new(data).load(&mut no_pid)
    }

    #[test]
    fn scalars_and_containers() {
        // pickle.dumps({'a': [1, -2, 300, 70000, 1.5, True, None], 'b': ('x', b'yz')}, protocol=2)
        // written out by hand with the opcodes protocol 2 uses.
        let mut p = vec![
            0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 1,
        ];
        p.extend([b'(', b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.extend([b'M']);
        p.extend(300u16.to_le_bytes());
        p.extend([b'J']);
        p.extend(70000i32.to_le_bytes());
        p.extend([b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([0x88, b'N', b'e']);
        p.extend([
            0x8c, 1, b'b', 0x8c, 1, b'x', b'C', 2, b'y', b'z', 0x86, b'u', b'.',
        ]);
        let v = run(&p).unwrap();
        let Value::Dict(d) = v else {
            panic!("not a dict")
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        let Value::List(l) = d.get_str("a").unwrap() else {
            panic!()
        };
        let l = l.borrow();
        assert!(matches!(l[0], Value::Int(1)));
        assert!(matches!(l[1], Value::Int(-2)));
        assert!(matches!(l[2], Value::Int(300)));
        assert!(matches!(l[3], Value::Int(70000)));
        assert!(matches!(l[4], Value::Float(f) if f == 1.5));
        assert!(matches!(l[5], Value::Bool(true)));
        assert!(matches!(l[6], Value::None));
        let Value::Tuple(t) = d.get_str("b").unwrap() else {
            panic!()
        };
        assert!(matches!(&t[0], Value::Str(s) if &**s == "x"));
        assert!(matches!(&t[1], Value::Bytes(b) if &**b == b"yz"));
    }

    #[test]
    fn long1_and_memo_share_mutations() {
        // l = []; pickle.dumps([l, l]) then append after memoization: the memo must alias.
        let p = [
            0x80, 2, b']', b'q', 0, b'h', 0, b'K', 7, b'a', b'h', 0, 0x86, 0x8a, 2, 0x00, 0xff,
            0x86, b'.',
        ];
        let v = run(&p).unwrap();
        let Value::Tuple(t) = v else { panic!() };
        let Value::Tuple(inner) = &t[0] else { panic!() };
        let Value::List(a) = &inner[0] else { panic!() };
        let Value::List(b) = &inner[1] else { panic!() };
        assert!(Rc::ptr_eq(a, b));
        assert_eq!(a.borrow().len(), 1);
        assert!(matches!(t[1], Value::Int(-256)));
    }

    #[test]
    fn unknown_global_is_opaque() {
        // argparse.Namespace via NEWOBJ + BUILD
        let mut p = vec![0x80, 2];
        p.extend(b"cargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrG");
        p.extend(0.1f64.to_be_bytes());
        p.extend(b"sb.");
        let v = run(&p).unwrap();
        assert_eq!(v.type_name(), "argparse.Namespace");
        let Value::Object(o) = v else { panic!() };
        assert!(o.borrow().state.is_some());
    }

    #[test]
    fn truncated_and_unknown_opcodes_fail() {
        assert!(run(&[0x80, 2, b'X', 10, 0, 0, 0, b'a'])
            .unwrap_err()
            .contains("truncated"));
        assert!(run(&[0x80, 2, 0xff])
            .unwrap_err()
            .contains("unknown pickle opcode"));
        assert!(run(&[0x80, 2, b'h', 3]).unwrap_err().contains("memo"));
    }
}
