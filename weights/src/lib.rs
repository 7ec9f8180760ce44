//! `caption-weights`: weight import without Python: PyTorch checkpoints (zip format of torch >= 1.6 and the
//! legacy format of older `torch.save`) and safetensors.
//!
//! The checkpoint reader is written by hand: no maintained crate reads both PyTorch
//! formats (the zip-only readers refuse the legacy format that
//! `efficientnet-lite0-57934424.pth` and torchvision's `vgg16-397923af.pth` use), and a
//! state dict needs only a small, safe subset of pickle: no code is ever executed, and
//! only the few globals a state dict names are understood.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A stored tensor's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    fn from_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A tensor read from a weights file, converted to f32, contiguous, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The dtype it was stored as.
    pub stored_as: DType,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("weights {path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("weights {path}: {what}")]
    Zip {
        path: PathBuf,
        what: String,
        source: zip::result::ZipError,
    },
    #[error("weights {path} do not fit {network}: {problem}")]
    Mismatch {
        path: PathBuf,
        network: String,
        problem: String,
    },
}

fn format_err(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Format {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Read every tensor of a weights file: `.safetensors`, or a PyTorch checkpoint in either
/// format (told apart by content, not by name).
pub fn read_weights(path: &Path) -> Result<HashMap<String, WeightTensor>, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_weights(path, &bytes)
}

/// [`read_weights`] on bytes already in memory; `path` only names them in errors.
pub fn parse_weights(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, WeightTensor>, WeightsError> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip_checkpoint(path, bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy_checkpoint(path, bytes)
    } else {
        read_safetensors(path, bytes)
    }
}

fn read_safetensors(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, WeightTensor>, WeightsError> {
    use safetensors::Dtype as S;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        format_err(
            path,
            format!("neither a PyTorch checkpoint nor valid safetensors ({e})"),
        )
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            S::I16 => DType::I16,
            S::I8 => DType::I8,
            S::U8 => DType::U8,
            S::BOOL => DType::Bool,
            other => {
                return Err(format_err(
                    path,
                    format!("tensor {name:?} has unsupported dtype {other:?}"),
                ))
            }
        };
        let shape = view.shape().to_vec();
        let data = convert(view.data(), dtype);
        out.insert(
            name,
            WeightTensor {
                shape,
                data,
                stored_as: dtype,
            },
        );
    }
    Ok(out)
}

fn convert(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let n = dtype.size();
    bytes
        .chunks_exact(n)
        .map(|c| match dtype {
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            DType::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
            DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
            DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f32,
            DType::I8 => c[0] as i8 as f32,
            DType::U8 | DType::Bool => c[0] as f32,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The pickle subset of PyTorch state dicts.

// Payloads the state-dict walk never reads are kept for Debug output.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage named by a persistent id: key and element type.
    Storage(String, DType),
    /// A tensor view into a storage.
    Tensor(TensorRef),
    /// A call we do not interpret (kept so unrelated entries do not stop the load).
    Opaque,
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: String,
    dtype: DType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("truncated pickle")?;
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

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle line")?;
        self.pos += end + 1;
        String::from_utf8(rest[..end].to_vec()).map_err(|_| "non-UTF-8 pickle line".into())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack empty".into())
    }

    /// Run until STOP and return the unpickled object.
    fn load(&mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)?));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or("pickle memo key missing")?;
                    self.stack.push(v);
                }
                b'J' => {
                    let b = self.take(4)?;
                    self.stack.push(Value::Int(
                        i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                    ));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        // Only the protocol's magic number is this long; its value is unused.
                        self.stack.push(Value::Opaque);
                    } else {
                        let mut buf = [0u8; 8];
                        buf[..n].copy_from_slice(b);
                        if n > 0 && b[n - 1] & 0x80 != 0 {
                            buf[n..].fill(0xff);
                        }
                        self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                    }
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| "bad INT")?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(b.try_into().expect("8"))));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => {
                            let b = self.take(8)?;
                            u64::from_le_bytes(b.try_into().expect("8")) as usize
                        }
                    };
                    let s = String::from_utf8(self.take(n)?.to_vec())
                        .map_err(|_| "non-UTF-8 pickle string")?;
                    self.stack.push(Value::Str(s));
                }
                b'T' | b'U' | b'B' | b'C' => {
                    let n = if op == b'T' || op == b'B' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(match op {
                        b'T' | b'U' => Value::Str(String::from_utf8_lossy(&b).into_owned()),
                        _ => Value::Bytes(b),
                    });
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: object state (e.g. a state dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = pairs(self.pop_mark()?)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(items),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND on a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS on a non-list".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(pid)?);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn as_usizes(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                _ => Err("tensor size/stride must be non-negative integers".to_string()),
            })
            .collect(),
        _ => Err("tensor size/stride must be a tuple".into()),
    }
}

/// `('storage', <StorageType>, key, location, numel[, view_metadata])`.
fn persistent_load(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(_, storage_type), key, ..] if kind == "storage" => {
            let dtype = DType::from_storage_name(storage_type)
                .ok_or_else(|| format!("unsupported storage type {storage_type}"))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err("storage key must be a string".into()),
            };
            Ok(Value::Storage(key, dtype))
        }
        _ => Err("unsupported persistent id (expected a storage)".into()),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Opaque);
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Opaque),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [Value::Storage(key, dtype), Value::Int(offset), size, stride, ..] =
                args.as_slice()
            else {
                return Err(format!("{module}.{name} with unexpected arguments"));
            };
            Ok(Value::Tensor(TensorRef {
                storage: key.clone(),
                dtype: *dtype,
                offset: (*offset)
                    .try_into()
                    .map_err(|_| "negative storage offset")?,
                size: as_usizes(size)?,
                stride: as_usizes(stride)?,
            }))
        }
        ("torch._utils", "_rebuild_parameter") => args
            .into_iter()
            .next()
            .ok_or_else(|| "_rebuild_parameter without data".to_string()),
        _ => Ok(Value::Opaque),
    }
}

/// Pick the tensors out of an unpickled state dict (or a checkpoint dict that holds one
/// under `state_dict`/`model`).
fn state_dict(root: Value) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(entries) = root else {
        return Err("the checkpoint is not a dict of tensors".into());
    };
    let has_tensors = entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if !has_tensors {
        for (k, v) in &entries {
            if let (Value::Str(k), Value::Dict(_)) = (k, v) {
                if k == "state_dict" || k == "model" {
                    return state_dict(v.clone());
                }
            }
        }
        return Err("the checkpoint holds no tensors".into());
    }
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some((k, t)),
            _ => None,
        })
        .collect())
}

/// Materialise a strided view of a storage as a contiguous f32 tensor.
fn materialise(t: &TensorRef, storage: &[u8]) -> Result<WeightTensor, String> {
    let elem = t.dtype.size();
    let count: usize = t.size.iter().product();
    if t.size.len() != t.stride.len() {
        return Err("size and stride lengths differ".into());
    }
    let max_index = t.offset
        + t.size
            .iter()
            .zip(&t.stride)
            .map(|(s, st)| s.saturating_sub(1) * st)
            .sum::<usize>();
    if count > 0 && (max_index + 1) * elem > storage.len() {
        return Err("tensor view reaches past its storage".into());
    }
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (s, st) in t.size.iter().zip(&t.stride).rev() {
            if *s != 1 && *st != expect {
                ok = false;
            }
            expect *= s;
        }
        ok
    };
    let data = if contiguous {
        convert(
            &storage[t.offset * elem..(t.offset + count) * elem],
            t.dtype,
        )
    } else {
        let mut out = Vec::with_capacity(count);
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..count {
            let pos = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend(convert(&storage[pos * elem..(pos + 1) * elem], t.dtype));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    };
    Ok(WeightTensor {
        shape: t.size.clone(),
        data,
        stored_as: t.dtype,
    })
}

fn read_zip_checkpoint(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, WeightTensor>, WeightsError> {
    let err = |p: String| format_err(path, p);
    let zip_err = |what: String| {
        move |source| WeightsError::Zip {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(zip_err("broken zip checkpoint".into()))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_owned()))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| err("zip checkpoint without data.pkl".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(zip_err(format!("cannot read {pkl_name}")))?;
    let root = Unpickler::new(&pkl)
        .load()
        .map_err(|e| err(format!("{pkl_name}: {e}")))?;
    let tensors = state_dict(root).map_err(err)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    for (name, t) in tensors {
        if !storages.contains_key(&t.storage) {
            let entry = format!("{prefix}data/{}", t.storage);
            let mut buf = Vec::new();
            zip.by_name(&entry)
                .and_then(|mut f| f.read_to_end(&mut buf).map_err(Into::into))
                .map_err(zip_err(format!("cannot read storage {entry}")))?;
            storages.insert(t.storage.clone(), buf);
        }
        let w = materialise(&t, &storages[&t.storage])
            .map_err(|e| err(format!("tensor {name:?}: {e}")))?;
        out.insert(name, w);
    }
    Ok(out)
}

fn read_legacy_checkpoint(
    path: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, WeightTensor>, WeightsError> {
    let err = |p: String| format_err(path, p);
    let mut up = Unpickler::new(bytes);
    // Magic number, protocol version and system info come first, each its own pickle.
    for what in ["magic number", "protocol version", "system info"] {
        up.load()
            .map_err(|e| err(format!("legacy header ({what}): {e}")))?;
        up.stack.clear();
        up.memo.clear();
    }
    let root = up
        .load()
        .map_err(|e| err(format!("legacy state dict: {e}")))?;
    up.stack.clear();
    up.memo.clear();
    let keys = match up
        .load()
        .map_err(|e| err(format!("legacy storage keys: {e}")))?
    {
        Value::List(keys) => keys
            .into_iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s),
                _ => Err(err("legacy storage key is not a string".into())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(err("legacy storage keys are not a list".into())),
    };
    let tensors = state_dict(root).map_err(err)?;
    let dtypes: HashMap<&str, DType> = tensors
        .iter()
        .map(|(_, t)| (t.storage.as_str(), t.dtype))
        .collect();
    // Storages follow in key order: an i64 element count, then the raw elements.
    let mut pos = up.pos;
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in &keys {
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| err(format!("storage {key} truncated")))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8")) as usize;
        pos += 8;
        let elem = dtypes.get(key.as_str()).map(|d| d.size()).unwrap_or(4);
        let len = count
            .checked_mul(elem)
            .ok_or_else(|| err(format!("storage {key} size overflows")))?;
        let data = bytes
            .get(pos..pos + len)
            .ok_or_else(|| err(format!("storage {key} truncated")))?;
        storages.insert(key.as_str(), data);
        pos += len;
    }
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let storage = storages.get(t.storage.as_str()).ok_or_else(|| {
            err(format!(
                "tensor {name:?} names missing storage {}",
                t.storage
            ))
        })?;
        let w = materialise(&t, storage).map_err(|e| err(format!("tensor {name:?}: {e}")))?;
        out.insert(name, w);
    }
    Ok(out)
}

/// Check a file's tensors against the parameters a network expects. Extra buffers named
/// `*.num_batches_tracked` are ignored (BatchNorm bookkeeping, unused at inference).
pub fn check_against(
    path: &Path,
    network: &str,
    tensors: &HashMap<String, WeightTensor>,
    expected: &[(String, Vec<usize>)],
) -> Result<(), WeightsError> {
    let expected_names: std::collections::HashSet<&str> =
        expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !tensors.contains_key(*n))
        .collect();
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !expected_names.contains(n) && !n.ends_with("num_batches_tracked"))
        .collect();
    let mut mismatched: Vec<String> = expected
        .iter()
        .filter_map(|(n, shape)| {
            let t = tensors.get(n)?;
            (t.shape != *shape).then(|| format!("{n} is {:?}, expected {shape:?}", t.shape))
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    missing.sort_unstable();
    unexpected.sort_unstable();
    mismatched.sort_unstable();
    // Name the first few of each kind: a whole wrong checkpoint would list hundreds.
    fn listing<S: AsRef<str>>(what: &str, names: &[S], sep: &str) -> String {
        const SHOWN: usize = 12;
        let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
        let more = names.len().saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        format!("{what} ({}): {}{tail}", names.len(), shown.join(sep))
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(listing("missing keys", &missing, ", "));
    }
    if !unexpected.is_empty() {
        problems.push(listing("unexpected keys", &unexpected, ", "));
    }
    if !mismatched.is_empty() {
        problems.push(listing("shape mismatches", &mismatched, "; "));
    }
    Err(WeightsError::Mismatch {
        path: path.to_owned(),
        network: network.to_owned(),
        problem: problems.join("; "),
    })
}

/// Write tensors as safetensors (used to convert checkpoints and by tests).
pub fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, WeightTensor>,
) -> Result<(), WeightsError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = names
        .into_iter()
        .map(|n| {
            let t = &tensors[n];
            let data = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), data, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, d, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| format_err(path, format!("tensor {n:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, &None, path).map_err(|e| format_err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_format_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.pth");
        std::fs::write(&p, b"not a checkpoint at all").unwrap();
        let msg = read_weights(&p).unwrap_err().to_string();
        assert!(msg.contains("junk.pth"), "{msg}");
        let p = dir.path().join("trunc.pth");
        std::fs::write(&p, [0x80, 0x02, 0x8a]).unwrap();
        let msg = read_weights(&p).unwrap_err().to_string();
        assert!(
            msg.contains("trunc.pth") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_owned(),
            WeightTensor {
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                stored_as: DType::F32,
            },
        );
        write_safetensors(&p, &m).unwrap();
        assert_eq!(read_weights(&p).unwrap(), m);
    }

    #[test]
    fn mismatches_list_every_offending_name() {
        let mut m = HashMap::new();
        let t = |shape: Vec<usize>| WeightTensor {
            data: vec![0.0; shape.iter().product()],
            shape,
            stored_as: DType::F32,
        };
        m.insert("a".to_owned(), t(vec![2]));
        m.insert("extra".to_owned(), t(vec![1]));
        m.insert("bn.num_batches_tracked".to_owned(), t(vec![]));
        let expected = vec![("a".to_owned(), vec![3]), ("b".to_owned(), vec![1])];
        let msg = check_against(Path::new("w.pth"), "net", &m, &expected)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing keys (1): b"), "{msg}");
        assert!(msg.contains("unexpected keys (1): extra"), "{msg}");
        assert!(msg.contains("a is [2], expected [3]"), "{msg}");
        assert!(!msg.contains("num_batches_tracked"), "{msg}");
    }

    #[test]
    fn strided_views_are_gathered() {
        // A transposed 2x3 view of a 3x2 storage.
        let storage: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let t = TensorRef {
            storage: "0".into(),
            dtype: DType::F32,
            offset: 0,
            size: vec![2, 3],
            stride: vec![1, 2],
        };
        let w = materialise(&t, &storage).unwrap();
        assert_eq!(w.data, [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    }
}
