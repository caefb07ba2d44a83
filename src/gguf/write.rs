//! GGUF v3 writer: header, metadata key/values, tensor infos, and the data section with every
//! tensor at a multiple of the alignment (32, `general.alignment` is not written). The file is
//! assembled in memory and written to a temporary name renamed into place at the end.

use super::{GgmlType, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use anyhow::{bail, Result};
use std::path::Path;

/// One tensor to write: GGUF-order dims (innermost first) and the encoded bytes.
#[derive(Clone, Debug)]
pub struct WTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// A GGUF file under construction.
#[derive(Default)]
pub struct GgufWriter {
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<WTensor>,
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
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(a) => {
            let Some(first) = a.first() else { bail!("metadata {key}: empty arrays are not written (no element type)") };
            let et = value_type(first);
            if a.iter().any(|x| value_type(x) != et) {
                bail!("metadata {key}: array elements of mixed types");
            }
            out.extend(et.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, key, x)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    pub fn kv(&mut self, key: &str, v: Value) {
        self.kvs.push((key.to_string(), v));
    }
    pub fn u32(&mut self, key: &str, v: u32) {
        self.kv(key, Value::U32(v));
    }
    pub fn f32(&mut self, key: &str, v: f32) {
        self.kv(key, Value::F32(v));
    }
    pub fn str(&mut self, key: &str, v: &str) {
        self.kv(key, Value::String(v.to_string()));
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        self.kv(key, Value::Bool(v));
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = DEFAULT_ALIGNMENT;
        let mut out = Vec::new();
        out.extend(GGUF_MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend(value_type(v).to_le_bytes());
            put_value(&mut out, k, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            let (blk, bytes) = t.ty.block().ok_or_else(|| anyhow::anyhow!("tensor {}: unknown type {}", t.name, t.ty))?;
            let n: u64 = t.dims.iter().product();
            if t.dims.is_empty() || !(t.dims[0] as usize).is_multiple_of(blk) || n as usize / blk * bytes != t.data.len() {
                bail!("tensor {}: {} bytes do not hold dims {:?} of {}", t.name, t.data.len(), t.dims, t.ty);
            }
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ty.0.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(align as u64);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    /// Write to `path` atomically (temporary name, then rename).
    pub fn write(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes()?;
        crate::st_write::write_atomic(path, &bytes)?;
        crate::st_write::plain_permissions(path)?;
        Ok(bytes.len() as u64)
    }
}
