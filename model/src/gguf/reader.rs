//! Reading a GGUF file (llama.cpp's model format): header, metadata key/values, tensor infos.
//!
//! Layout (little-endian): magic `GGUF`, version u32 (2 or 3), tensor count u64, metadata count
//! u64, then the metadata (key string, value type u32, value), then one info per tensor (name, rank
//! u32, dims u64 with the fastest-varying first, ggml type u32, offset u64 into the data section),
//! then padding to `general.alignment` (default 32) and the tensor data.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::Path;

use super::dequant::GgmlType;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Any integer type as u64 (negative values fail).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x as u64),
            MetaValue::U16(x) => Some(x as u64),
            MetaValue::U32(x) => Some(x as u64),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x as f64),
            MetaValue::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor's data lies and how it is encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (GGUF lists dims fastest-first; this is reversed to match HF/PyTorch).
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the file.
    pub offset: usize,
    /// Encoded size in bytes.
    pub size: usize,
}

/// A parsed GGUF file. The data section stays memory-mapped (or owned, for bytes made in memory).
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    data: Bytes,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only mapping of a file we do not modify while it is mapped.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        GgufFile::parse(Bytes::Mapped(map))
            .with_context(|| format!("{} is not a valid GGUF file", path.display()))
    }

    /// Parses GGUF bytes held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(Bytes::Owned(bytes)).context("not a valid GGUF file")
    }

    fn parse(data: Bytes) -> Result<GgufFile> {
        let buf: &[u8] = match &data {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        };
        let mut r = Cursor { buf, pos: 0 };
        if r.take(4)? != b"GGUF" {
            bail!("the file does not start with the GGUF magic");
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (expected 2 or 3)");
        }
        let n_tensors = r.u64()? as usize;
        let n_kv = r.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r
                .value(ty, 0)
                .with_context(|| format!("metadata key {key}"))?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => {
                v.as_u64()
                    .filter(|a| *a > 0 && a.is_power_of_two())
                    .context("general.alignment must be a power of two")? as usize
            }
        };
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 20));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let rank = r.u32()? as usize;
            if rank == 0 || rank > 4 {
                bail!("tensor {name} has rank {rank} (expected 1 to 4)");
            }
            let mut dims = Vec::with_capacity(rank);
            for _ in 0..rank {
                dims.push(r.u64()? as usize);
            }
            let ty = r.u32()?;
            let offset = r.u64()? as usize;
            raw.push((name, dims, ty, offset));
        }
        let data_start = r.pos.next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty).with_context(|| {
                format!("tensor {name} has ggml type {ty}, which is not supported")
            })?;
            let numel = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .with_context(|| format!("tensor {name} dims {dims:?} overflow"))?;
            if !dims[0].is_multiple_of(ggml_type.block_len()) {
                bail!(
                    "tensor {name}: row length {} is not a multiple of the {ggml_type:?} block of {}",
                    dims[0],
                    ggml_type.block_len()
                );
            }
            let size = numel / ggml_type.block_len() * ggml_type.block_bytes();
            if !offset.is_multiple_of(alignment) {
                bail!("tensor {name} is not aligned to {alignment} bytes");
            }
            let start = data_start + offset;
            if start.checked_add(size).is_none_or(|end| end > buf.len()) {
                bail!(
                    "tensor {name} ({size} bytes at offset {offset}) runs past the end of the file"
                );
            }
            let shape = dims.iter().rev().copied().collect();
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset: start,
                size,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    /// The encoded bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes()[info.offset..info.offset + info.size]
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor decoded to f32, row-major in [`TensorInfo::shape`].
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        super::dequant::dequantize(info.ggml_type, self.tensor_bytes(info))
            .with_context(|| format!("tensor {}", info.name))
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A required integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .with_context(|| format!("GGUF metadata has no `{key}`"))?;
        v.as_u64()
            .with_context(|| format!("GGUF metadata `{key}` = {v:?} is not an integer"))
    }

    /// A required float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self
            .get(key)
            .with_context(|| format!("GGUF metadata has no `{key}`"))?;
        v.as_f64()
            .with_context(|| format!("GGUF metadata `{key}` = {v:?} is not a number"))
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self
            .get(key)
            .with_context(|| format!("GGUF metadata has no `{key}`"))?;
        v.as_str()
            .with_context(|| format!("GGUF metadata `{key}` = {v:?} is not a string"))
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self
            .get(key)
            .with_context(|| format!("GGUF metadata has no `{key}`"))?;
        v.as_array()
            .and_then(|a| a.iter().map(MetaValue::as_str).collect::<Option<Vec<_>>>())
            .with_context(|| format!("GGUF metadata `{key}` is not an array of strings"))
    }
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Arrays nested deeper than this are refused (a malformed file could otherwise recurse forever).
const MAX_DEPTH: usize = 4;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .with_context(|| {
                format!(
                    "unexpected end of file at byte {} (wanted {n} more)",
                    self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).context("a string is not valid UTF-8")
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>()?[0]),
            1 => MetaValue::I8(self.arr::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => MetaValue::Bool(match self.arr::<1>()?[0] {
                0 => false,
                1 => true,
                b => bail!("bool value {b} is neither 0 nor 1"),
            }),
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("arrays nested more than {MAX_DEPTH} deep");
                }
                let item_ty = self.u32()?;
                let n = self.u64()? as usize;
                // Every item takes at least one byte: a count beyond the file is corrupt.
                if n > self.buf.len() - self.pos {
                    bail!("array of {n} items is longer than the file");
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}
