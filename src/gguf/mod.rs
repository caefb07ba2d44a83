//! GGUF (llama.cpp) reader and importer.
//!
//! [`Gguf::open`] memory-maps a GGUF v2/v3 file and parses its header: metadata key/values, tensor
//! infos and the aligned data section. Every count and length read from the file is checked
//! against the bytes that remain before anything is allocated, and every tensor's data range is
//! checked against the file length, so a malformed file yields an error naming the file, never a
//! panic or a huge allocation. [`Gguf::tensor_f32`] dequantizes F32, F16, BF16 and every block
//! type of [`blocks`] (Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, Q2_K).
//!
//! Submodules: [`blocks`] (block layouts and decode formulas), [`import`] (`import-gguf`),
//! [`write`] (the GGUF v3 writer), [`export`] (`quantize --format gguf`: names, metadata,
//! tokenizer), [`load`] (a .gguf file as a model for `eval` / `inspect`) and `dequant` (tensor bytes
//! to f32, [`dequantize`]).

pub mod blocks;
mod dequant;
pub mod export;
pub mod import;
pub mod load;
pub mod write;

pub use dequant::dequantize;
pub use import::{build_config, hf_name, import_gguf, unpermute_rows, ImportOptions, ImportReport};

use crate::weights::FileBytes;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// File magic, "GGUF" as little-endian bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml supports at most this many dimensions.
const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are rejected (bounds recursion on hostile input).
const MAX_ARRAY_DEPTH: usize = 4;

// ---------------------------------------------------------------------------------------------
// Types

/// A ggml tensor type id, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    /// (name, elements per block, bytes per block) for every type llama.cpp can store in a file.
    fn traits(self) -> Option<(&'static str, usize, usize)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 40),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            _ => return None,
        })
    }

    /// Type name as llama.cpp spells it ("Q4_1"), or "type#N" for an unknown id.
    pub fn name(self) -> String {
        self.traits().map_or_else(|| format!("type#{}", self.0), |t| t.0.to_string())
    }

    /// (elements per block, bytes per block), or None for an unknown id.
    pub fn block(self) -> Option<(usize, usize)> {
        self.traits().map(|(_, n, b)| (n, b))
    }

    /// Whether [`Gguf::tensor_f32`] can decode this type.
    pub fn dequantizable(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16) || blocks::Kind::of(self).is_some()
    }

    /// Parse a type name as llama.cpp spells it, case-insensitively ("q4_k", "Q8_0", "f16").
    pub fn parse(s: &str) -> Option<Self> {
        (0..64).map(Self).find(|t| t.traits().is_some_and(|(n, _, _)| n.eq_ignore_ascii_case(s)))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// GGUF strings are UTF-8; invalid sequences are replaced (U+FFFD).
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type as i128 (lossless), so callers can range-check into their own type.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
    /// A float (F32 or F64) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
    /// GGUF type name of this value, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost first (`dims[0]` is the number of columns).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Absolute byte range of the tensor data in the file.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Shape in Hugging Face order (outermost first, i.e. `[rows, cols]` for a matrix).
    pub fn hf_shape(&self) -> Vec<usize> {
        // dims were validated to fit usize when the file was opened
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn n_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

/// Bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl fmt::Display) -> anyhow::Error {
        anyhow!("{}: {msg} (at byte {})", self.file, self.pos)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format_args!("truncated file: {what} needs {n} bytes, only {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Read a count and check that `count * min_item_bytes` bytes remain.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let need = usize::try_from(n).ok().and_then(|n| n.checked_mul(min_item_bytes));
        match need {
            Some(need) if need <= self.remaining() => Ok(n as usize),
            _ => Err(self.err(format_args!(
                "truncated or corrupt file: {what} {n} needs at least {n}×{min_item_bytes} bytes, only {} left",
                self.remaining()
            ))),
        }
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format_args!("invalid bool byte {b}"))),
            },
            8 => Value::String(self.string("string length")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32("array element type")?;
                let min = value_min_size(elem).ok_or_else(|| self.err(format_args!("unknown array element type {elem}")))?;
                let n = self.count("array length", min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(self.err(format_args!("unknown metadata value type {t}"))),
        })
    }
}

/// Smallest encoding of a value of GGUF type `ty` (used to bound array lengths).
fn value_min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // length prefix
        9 => 4 + 8, // element type + length
        10..=12 => 8,
        _ => return None,
    })
}

/// A memory-mapped, fully validated GGUF file.
pub struct Gguf {
    path: PathBuf,
    bytes: FileBytes,
    pub version: u32,
    pub alignment: usize,
    /// Absolute offset of the (aligned) data section.
    pub data_start: usize,
    meta: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("kv", &self.meta.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-map and parse `path`. The header is fully validated here; tensor data is only
    /// touched by [`Gguf::tensor_f32`] / [`Gguf::tensor_bytes`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
        if len < 24 {
            bail!("{}: truncated file: {len} bytes is shorter than a GGUF header", path.display());
        }
        Self::parse(path.to_path_buf(), FileBytes::map(&file, path)?)
    }

    /// Parse a GGUF file held in memory, with the same checks as [`Gguf::open`]; `path` only
    /// names the file in errors. Used by the fuzz targets and tests.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: FileBytes) -> Result<Self> {
        let file = crate::escape::path(&path);
        let mut c = Cursor { buf: &bytes, pos: 0, file: &file };
        let magic = c.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            bail!("{file}: not a GGUF file (magic {:?}, expected \"GGUF\")", String::from_utf8_lossy(&magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if (2..=3).contains(&version.swap_bytes()) { " (big-endian file?)" } else { "" };
            bail!("{file}: unsupported GGUF version {version}{hint}; only versions 2 and 3 are supported");
        }
        // Minimal encodings: tensor info = name len (8) + n_dims (4) + 1 dim (8) + type (4) +
        // offset (8); kv = key len (8) + type (4) + 1-byte value.
        let n_tensors = c.count("tensor count", 32)?;
        let n_kv = c.count("metadata kv count", 13)?;

        let mut meta = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("metadata key length")?;
            let ty = c.u32("metadata value type")?;
            let v = c.value(ty, 0).map_err(|e| anyhow!("{e} in value of key {}", crate::escape::text(&key)))?;
            if meta_index.insert(key.clone(), meta.len()).is_some() {
                bail!("{file}: duplicate metadata key {}", crate::escape::text(&key));
            }
            meta.push((key, v));
        }
        let alignment = match meta_index.get("general.alignment").map(|&i| &meta[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => *a as usize,
            Some(v) => bail!("{file}: general.alignment must be a power-of-two u32, got {}", crate::escape::debug(v)),
        };

        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name length")?;
            let n_dims = c.u32("tensor n_dims")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                bail!("{file}: tensor {} has {n_dims} dimensions (1..={MAX_DIMS} supported)", crate::escape::text(&name));
            }
            let dims = (0..n_dims).map(|_| c.u64("tensor dim")).collect::<Result<Vec<_>>>()?;
            let ty = GgmlType(c.u32("tensor type")?);
            let offset = c.u64("tensor offset")?;
            infos.push((name, dims, ty, offset));
        }
        let data_start = c.pos.checked_next_multiple_of(alignment).unwrap_or(usize::MAX);
        let file_len = bytes.len();
        if data_start > file_len && n_tensors > 0 {
            bail!("{file}: truncated file: data section would start at {data_start}, file length is {file_len}");
        }

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for (name, dims, ty, offset) in infos {
            let n = crate::escape::text(&name);
            let (blk, blk_bytes) = ty.block().ok_or_else(|| anyhow!("{file}: tensor {n} has unknown ggml type id {}", ty.0))?;
            let n_el = dims
                .iter()
                .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
                .filter(|&n| n.checked_mul(blk_bytes).is_some())
                .ok_or_else(|| anyhow!("{file}: tensor {n} dims {dims:?} overflow"))?;
            if !(dims[0] as usize).is_multiple_of(blk) {
                bail!("{file}: tensor {n} row length {} is not a multiple of the {} block size {blk}", dims[0], ty);
            }
            if !offset.is_multiple_of(alignment as u64) {
                bail!("{file}: tensor {n} offset {offset} is not a multiple of the alignment {alignment}");
            }
            let size = n_el / blk * blk_bytes;
            let start = usize::try_from(offset).ok().and_then(|o| data_start.checked_add(o));
            let range = match start.and_then(|s| Some(s..s.checked_add(size)?)) {
                Some(r) if r.end <= file_len => r,
                _ => bail!(
                    "{file}: tensor {n} data [{}..{}) exceeds file length {file_len}",
                    data_start as u128 + offset as u128,
                    data_start as u128 + offset as u128 + size as u128
                ),
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                bail!("{file}: duplicate tensor name {n}");
            }
            tensors.push(TensorInfo { name, dims, ty, offset, range });
        }
        Ok(Self { path, bytes, version, alignment, data_start, meta, meta_index, tensors, tensor_index })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fail(&self, msg: impl fmt::Display) -> anyhow::Error {
        anyhow!("{}: {msg}", crate::escape::path(&self.path))
    }

    // --- metadata -----------------------------------------------------------------------------

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.meta
    }
    /// Raw metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.meta[i].1)
    }
    /// Typed lookup: Ok(None) when absent, Err (naming file and key) when present with the wrong type.
    fn get_as<'a, T>(&'a self, key: &str, want: &str, f: impl FnOnce(&'a Value) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                self.fail(format_args!(
                    "metadata {}: expected {want}, found {} {}",
                    crate::escape::text(key),
                    v.type_name(),
                    crate::escape::debug(v)
                ))
            }),
        }
    }
    /// Any integer value that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get_as(key, "u32", |v| v.as_int().and_then(|i| u32::try_from(i).ok()))
    }
    /// Any integer value that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get_as(key, "u64", |v| v.as_int().and_then(|i| u64::try_from(i).ok()))
    }
    /// Any integer value that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.get_as(key, "i64", |v| v.as_int().and_then(|i| i64::try_from(i).ok()))
    }
    /// An F32 value (F64 is narrowed).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get_as(key, "f32", |v| v.as_f64().map(|x| x as f32))
    }
    /// An F32 or F64 value.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get_as(key, "f64", Value::as_f64)
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_as(key, "bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get_as(key, "string", Value::as_str)
    }
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.get_as(key, "array of strings", |v| v.as_array()?.iter().map(Value::as_str).collect())
    }
    /// Array of numbers (ints or floats) as f64.
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get_as(key, "array of numbers", |v| {
            v.as_array()?.iter().map(|x| x.as_f64().or_else(|| x.as_int().map(|i| i as f64))).collect()
        })
    }
    /// Array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.get_as(key, "array of integers", |v| v.as_array()?.iter().map(|x| x.as_int().and_then(|i| i64::try_from(i).ok())).collect())
    }

    // --- tensors ------------------------------------------------------------------------------

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name).ok_or_else(|| self.fail(format_args!("no tensor named {}", crate::escape::text(name))))
    }
    /// Raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        Ok(&self.bytes[self.info_or_err(name)?.range.clone()])
    }

    /// Dequantize a tensor to f32. Returns the HF shape (outermost first, `[rows, cols]`) and the
    /// row-major values.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info_or_err(name)?;
        let bytes = &self.bytes[info.range.clone()];
        let out = dequantize(info.ty, bytes, info.n_elements())
            .map_err(|e| self.fail(format_args!("tensor {}: {e}", crate::escape::text(name))))?;
        Ok((info.hf_shape(), out))
    }
}
