//! Writing safetensors files: tensors are given as raw little-endian bytes with a dtype and shape.
//! Files are written to a temporary name beside the destination and renamed at the end, so a
//! crash never leaves a half-written file under the final name.

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// One tensor to write.
#[derive(Clone)]
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OutTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        Self { name: name.into(), dtype: Dtype::F32, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
    pub fn f16(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        let data = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        Self { name: name.into(), dtype: Dtype::F16, shape, data }
    }
    pub fn bf16(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        let data = v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        Self { name: name.into(), dtype: Dtype::BF16, shape, data }
    }
    pub fn i32(name: impl Into<String>, shape: Vec<usize>, v: &[i32]) -> Self {
        Self { name: name.into(), dtype: Dtype::I32, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
    pub fn u8(name: impl Into<String>, shape: Vec<usize>, v: Vec<u8>) -> Self {
        Self { name: name.into(), dtype: Dtype::U8, shape, data: v }
    }
    /// Float tensor in the requested float dtype (F32, F16 or BF16).
    pub fn float(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>, v: &[f32]) -> Self {
        match dtype {
            Dtype::F16 => Self::f16(name, shape, v),
            Dtype::BF16 => Self::bf16(name, shape, v),
            _ => Self::f32(name, shape, v),
        }
    }
}

/// Write `tensors` as one safetensors file at `path` (atomically: temp file + rename).
pub fn write_safetensors(path: &Path, tensors: &[OutTensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let v = TensorView::new(t.dtype, t.shape.clone(), &t.data).map_err(|e| anyhow::anyhow!("tensor {}: {e:?}", t.name))?;
            Ok((t.name.clone(), v))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, metadata, &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    plain_permissions(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

/// Write a file atomically (temp + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

/// rw-r--r-- (less the umask's bits): the safetensors writer creates files owner-only, and copies
/// of read-only inputs (tokenizer files) would stay read-only.
pub fn plain_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("{}: cannot set permissions", path.display()))?;
    }
    Ok(())
}
