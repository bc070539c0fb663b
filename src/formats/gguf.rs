//! A reader for GGUF files (llama.cpp's model format): header, metadata, tensor table
//! and tensor data, memory-mapped.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64,
//! metadata count u64, the metadata key/values, the tensor infos (name, dims innermost
//! first, type, offset), then the tensor data at the next multiple of
//! `general.alignment` (32 by default). Every length and offset is checked against the
//! file size before use, so a truncated or corrupt file gives an error, never a panic.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::{self, GgmlType};
use crate::error::{Error, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// A number as f64. An f32 becomes the f64 of its shortest decimal form, so an
    /// `rms_norm_eps` of `1e-5` reads as `1e-5`, as in the model's `config.json`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in PyTorch order (outermost first): a GGUF `[in, out]` matrix is the
    /// `(out, in)` weight of `y = x·Wᵀ`.
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Refuse absurd counts before allocating for them.
const MAX_ARRAY: u64 = 1 << 28;
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.corrupt(format!(
                "{what} at byte {} runs past the end of the file ({} bytes)",
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.buf.len() as u64 {
            return Err(self.corrupt(format!("{what}: string length {len} exceeds the file")));
        }
        let bytes = self.take(len as usize, what)?;
        // Token strings are UTF-8 in every GGUF we know; stay lossless where they are.
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt(format!("{key}: arrays nested too deeply")));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY || n > (self.buf.len() - self.pos) as u64 {
                    return Err(
                        self.corrupt(format!("{key}: array of {n} elements exceeds the file"))
                    );
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.corrupt(format!("{key}: unknown metadata value type {other}")));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays on disk until asked for.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed underneath us while open can give
        // wrong values but not memory unsafety beyond what any reader of a mutated file has.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path,
        };
        if mmap.len() < 4 || &mmap[..4] != MAGIC {
            return Err(Error::Format {
                path: path.into(),
                reason: "missing GGUF magic bytes".into(),
            });
        }
        c.pos = 4;
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Format {
                path: path.into(),
                reason: format!("GGUF version {version} (supported: 2, 3)"),
            });
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > MAX_ARRAY || n_kv > MAX_ARRAY {
            return Err(c.corrupt(format!("{n_tensors} tensors / {n_kv} metadata entries")));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.corrupt(format!("tensor {name}: {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let ty = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(32);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(c.corrupt(format!("general.alignment {alignment}")));
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let gguf = GgufFile {
            path: path.into(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            mmap,
        };
        for t in &gguf.tensors {
            gguf.check_extent(t)?;
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Checks that a tensor's bytes lie inside the file (types we cannot decode are
    /// checked when read).
    fn check_extent(&self, t: &TensorInfo) -> Result<()> {
        let numel = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                self.corrupt(format!(
                    "tensor {}: dimensions {:?} overflow",
                    t.name, t.dims
                ))
            })?;
        if t.ty.block_layout().is_none() {
            return Ok(());
        }
        let bytes = t.ty.bytes_for(numel as usize).ok_or_else(|| {
            self.corrupt(format!(
                "tensor {}: {numel} elements is not a whole number of {} blocks",
                t.name, t.ty
            ))
        })? as u64;
        let end = self.data_offset + t.offset + bytes;
        if end > self.mmap.len() as u64 {
            return Err(self.corrupt(format!(
                "tensor {} ({}, {:?}) ends at byte {end}, past the end of the file ({} bytes)",
                t.name,
                t.ty,
                t.dims,
                self.mmap.len()
            )));
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A metadata string, or a clear error naming the missing key.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing_key(key))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing_key(key))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.missing_key(key))
    }

    fn missing_key(&self, key: &str) -> Error {
        Error::Format {
            path: self.path.clone(),
            reason: format!("metadata key {key} is missing or has the wrong type"),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor as stored.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let bytes =
            t.ty.bytes_for(t.numel() as usize)
                .ok_or_else(|| Error::UnsupportedType {
                    name: t.name.clone(),
                    dtype: t.ty.name(),
                })?;
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.mmap[start..start + bytes])
    }

    /// Dequantizes a tensor to `f32`, in GGUF element order (innermost dimension first).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; t.numel() as usize];
        self.dequantize_into(t, &mut out)?;
        Ok(out)
    }

    /// Dequantizes a tensor into `out`, which must hold exactly its element count.
    pub fn dequantize_into(&self, t: &TensorInfo, out: &mut [f32]) -> Result<()> {
        let bytes = self.tensor_bytes(t)?;
        if out.len() as u64 != t.numel() || !quant::dequantize(t.ty, bytes, out) {
            return Err(Error::UnsupportedType {
                name: t.name.clone(),
                dtype: t.ty.name(),
            });
        }
        Ok(())
    }
}

/// A tensor to write: its GGUF name, dims (innermost first), type and raw bytes.
pub struct TensorOut<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Writes GGUF v3 files. Output goes to a temporary file renamed into place, so an
/// interrupted write never leaves a half-written model under the final name.
pub struct GgufWriter<'a> {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorOut<'a>>,
    pub alignment: u64,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array's element type is not recoverable; u32 is as good as any.
            out.extend(items.first().map_or(4, value_type).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) {
        self.metadata.push((key.into(), value));
    }

    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
        data: impl Into<std::borrow::Cow<'a, [u8]>>,
    ) {
        self.tensors.push(TensorOut {
            name: name.into(),
            dims,
            ty,
            data: data.into(),
        });
    }

    /// Writes the file to `path` via a unique temporary ([`crate::output::temp_path`])
    /// and a rename. SIGINT and SIGTERM are held meanwhile: the write stops between two
    /// tensors, the temporary is removed and [`Error::Interrupted`] returned.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        let path = path.as_ref();
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut head = Vec::new();
        head.extend(MAGIC);
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend(value_type(v).to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        head.resize(align(head.len() as u64) as usize, 0);
        let _held = crate::output::HoldSignals::new();
        let tmp = crate::output::temp_path(path);
        let write = || -> Result<()> {
            let io = |e: std::io::Error| Error::io(path, e);
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
            f.write_all(&head).map_err(io)?;
            for t in &self.tensors {
                crate::output::interrupted()?;
                f.write_all(&t.data).map_err(io)?;
                let pad = align(t.data.len() as u64) - t.data.len() as u64;
                f.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            }
            f.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)?;
            crate::output::interrupted()?;
            std::fs::rename(&tmp, path).map_err(io)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}
