//! Memory-mapped HF checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors are converted to f32 one at a time on access; the
//! model is never copied into RAM as a whole.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The bytes of a file: memory-mapped, or owned (files parsed from memory, e.g. by the fuzzers).
pub(crate) enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl FileBytes {
    /// Memory-map `file` read-only.
    pub(crate) fn map(file: &File, path: &Path) -> Result<Self> {
        // SAFETY: the map is read-only; lowbit never writes into a file it reads, and as with any
        // mmap the file must not be truncated or rewritten while the mapping is alive.
        let mmap = unsafe { Mmap::map(file) }.with_context(|| format!("{}: cannot mmap", path.display()))?;
        Ok(FileBytes::Mapped(mmap))
    }
}

struct Shard {
    path: PathBuf,
    bytes: FileBytes,
    data_start: usize,
}

/// Where a tensor lives: shard, dtype, shape, byte range inside the shard's data section.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// Stored size in bytes.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// Little-endian F32/F16/BF16 bytes as f32 values.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        d => bail!("dtype {d:?}, expected a float type"),
    })
}

/// The index of the first value of little-endian F32/F16/BF16 `bytes` that is not finite (NaN or
/// ±inf), if any; other dtypes have none.
pub fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    match dtype {
        // All exponent bits set.
        Dtype::F32 => bytes.chunks_exact(4).position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000),
        Dtype::F16 => bytes.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => bytes.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}

/// A set of memory-mapped safetensors files addressed by tensor name.
pub struct Checkpoint {
    pub dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

pub fn dtype_size(d: Dtype) -> Option<usize> {
    Some(match d {
        Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        Dtype::U8 | Dtype::I8 | Dtype::BOOL => 1,
        Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        _ => return None,
    })
}

impl Checkpoint {
    /// Open the safetensors of a checkpoint directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
            Self::index_shards(&index, &text)?.into_iter().map(|n| dir.join(n)).collect()
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        };
        let mut ck = Checkpoint { dir: dir.to_owned(), shards: Vec::new(), tensors: BTreeMap::new() };
        for f in files {
            let file = File::open(&f).with_context(|| format!("{}: cannot open", f.display()))?;
            let bytes = FileBytes::map(&file, &f)?;
            ck.add_shard(f, bytes)?;
        }
        Ok(ck)
    }

    /// The shard file names listed in the `weight_map` of a `model.safetensors.index.json`
    /// (`text`, read from `index`): sorted and deduplicated, each a plain name inside the
    /// checkpoint directory.
    pub fn index_shards(index: &Path, text: &str) -> Result<Vec<String>> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| anyhow!("{}: invalid JSON: {e}", index.display()))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow!("{}: missing \"weight_map\"", index.display()))?;
        let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_owned)).collect();
        names.sort();
        names.dedup();
        if names.iter().any(|n| n.is_empty() || n.contains('/') || n.contains('\\') || n.contains("..")) {
            bail!("{}: weight_map names a file outside the directory", index.display());
        }
        Ok(names)
    }

    /// A checkpoint over safetensors files held in memory, one `(path, bytes)` per shard, with
    /// the same checks as [`Checkpoint::open`]; the paths only name the shards in errors. Used
    /// by the fuzz targets and tests.
    pub fn from_buffers(dir: &Path, shards: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let mut ck = Checkpoint { dir: dir.to_owned(), shards: Vec::new(), tensors: BTreeMap::new() };
        for (path, bytes) in shards {
            ck.add_shard(path, FileBytes::Owned(bytes))?;
        }
        Ok(ck)
    }

    fn add_shard(&mut self, path: PathBuf, bytes: FileBytes) -> Result<()> {
        let p = crate::escape::path(&path);
        if bytes.len() < 8 {
            bail!("{p}: truncated safetensors file ({} bytes, no header)", bytes.len());
        }
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                anyhow!("{p}: truncated: tensor data offsets in the header are out of range of the file ({} bytes)", bytes.len())
            }
            e => anyhow!("{p}: invalid safetensors header: {e}"),
        })?;
        let data_start = 8 + header_len;
        let data_len = bytes.len() - data_start;
        let shard = self.shards.len();
        for (name, info) in meta.tensors() {
            let n = crate::escape::text(&name);
            let dtype = info.dtype;
            let size = dtype_size(dtype).ok_or_else(|| anyhow!("{p}: tensor {n} has unsupported dtype {dtype:?}"))?;
            let (start, end) = info.data_offsets;
            let nbytes = info.shape.iter().try_fold(size, |n, &d| n.checked_mul(d));
            if end < start || Some(end - start) != nbytes {
                bail!("{p}: tensor {n}: byte range {start}..{end} does not match shape {:?} of {dtype:?}", info.shape);
            }
            if end > data_len {
                bail!("{p}: tensor {n}: data offsets {start}..{end} out of range (file has {data_len} data bytes; truncated?)");
            }
            if self.tensors.contains_key(&name) {
                bail!("{p}: tensor {n} is also stored in another shard");
            }
            self.tensors.insert(name, TensorInfo { dtype, shape: info.shape.clone(), shard, start, end });
        }
        self.shards.push(Shard { path, bytes, data_start });
        Ok(())
    }

    /// Every safetensors file of the checkpoint with all its bytes (header included).
    pub fn files(&self) -> impl Iterator<Item = (&Path, &[u8])> {
        self.shards.iter().map(|s| (s.path.as_path(), &s.bytes[..]))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    fn shard_path(&self, info: &TensorInfo) -> &Path {
        &self.shards[info.shard].path
    }

    /// Raw little-endian bytes of a tensor (borrowed from the mapping).
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor {name}", self.dir.display()))?;
        let s = &self.shards[info.shard];
        Ok((info, &s.bytes[s.data_start + info.start..s.data_start + info.end]))
    }

    /// A float tensor converted to f32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.raw(name)?;
        let v = to_f32(info.dtype, bytes).map_err(|e| anyhow!("{}: tensor {name}: {e}", self.shard_path(info).display()))?;
        Ok((info.shape.clone(), v))
    }

    /// A float tensor re-encoded as `dtype` (F32/F16/BF16) for output, element by element: no
    /// f32 copy of the whole tensor is made (the embedding is the largest tensor of small models).
    pub fn converted(&self, name: &str, dtype: Dtype) -> Result<crate::st_write::OutTensor> {
        let (info, bytes) = self.raw(name)?;
        let p = self.shard_path(info).display();
        let es = dtype_size(info.dtype).unwrap_or(0);
        let mut data = Vec::with_capacity(bytes.len() / es.max(1) * dtype_size(dtype).unwrap_or(4));
        if info.dtype == dtype {
            data.extend_from_slice(bytes);
        } else {
            for chunk in bytes.chunks(es * 4096) {
                let v = to_f32(info.dtype, chunk).map_err(|e| anyhow!("{p}: tensor {name}: {e}"))?;
                match dtype {
                    Dtype::F16 => v.iter().for_each(|&x| data.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())),
                    Dtype::BF16 => v.iter().for_each(|&x| data.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
                    Dtype::F32 => v.iter().for_each(|&x| data.extend_from_slice(&x.to_le_bytes())),
                    d => bail!("{p}: cannot write tensor {name} as {d:?}"),
                }
            }
        }
        Ok(crate::st_write::OutTensor { name: name.to_string(), dtype, shape: info.shape.clone(), data })
    }

    /// Checks that tensor `name` exists and has exactly `shape`.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let info = self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor {name}", self.dir.display()))?;
        if info.shape != shape {
            bail!("{}: tensor {name} has shape {:?}, expected {shape:?}", self.shard_path(info).display(), info.shape);
        }
        Ok(())
    }

    /// A float tensor that must have exactly `shape`.
    pub fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_shape(name, shape)?;
        Ok(self.f32(name)?.1)
    }

    /// An integer tensor (I32/U8/...) as i32 values.
    pub fn i32s(&self, name: &str) -> Result<(Vec<usize>, Vec<i32>)> {
        let (info, bytes) = self.raw(name)?;
        let v = match info.dtype {
            Dtype::I32 | Dtype::U32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i32).collect(),
            d => bail!("{}: tensor {name} has dtype {d:?}, expected an integer type", self.shard_path(info).display()),
        };
        Ok((info.shape.clone(), v))
    }

    /// Drop the mapped pages from this process's resident set (they stay in the page cache and
    /// are faulted back in on the next access). Layer-streaming callers release after each layer
    /// so resident memory holds about one layer of weights, not the whole file.
    pub fn release_pages(&self) {
        for s in &self.shards {
            // SAFETY: MADV_DONTNEED on a private read-only file mapping only discards clean
            // pages; later reads fault them back from the file, which lowbit never modifies.
            #[cfg(unix)]
            if let FileBytes::Mapped(m) = &s.bytes {
                unsafe {
                    let _ = m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed);
                }
            }
        }
    }

    /// Total bytes of all tensors, by dtype.
    pub fn bytes_by_dtype(&self) -> HashMap<String, (usize, usize)> {
        let mut m: HashMap<String, (usize, usize)> = HashMap::new();
        for t in self.tensors.values() {
            let e = m.entry(format!("{:?}", t.dtype)).or_default();
            e.0 += 1;
            e.1 += t.end - t.start;
        }
        m
    }
}
