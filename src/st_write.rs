//! Writing safetensors files: tensors are given as raw little-endian bytes with a dtype and shape.
//! Files are written to a temporary name beside the destination, flushed to disk (fsync), renamed
//! at the end and the directory flushed, so a crash or power loss never leaves a half-written
//! file under the final name.

use anyhow::{bail, Context, Result};
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
    /// A tensor read from a safetensors file, copied as it is stored.
    pub fn copy_of(name: impl Into<String>, t: &TensorView) -> Self {
        Self { name: name.into(), dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data().to_vec() }
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
    sync_file(&tmp)?;
    rename_synced(&tmp, path)
}

/// Write a file atomically (temp + fsync + rename + fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("{}: cannot write", tmp.display()))?;
    drop(f);
    rename_synced(&tmp, path)
}

/// Rename `from` to `to` and flush the directory entry.
fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("{}: cannot rename into place", to.display()))?;
    sync_dir(to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Flush a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot flush to disk", path.display()))
}

/// Flush a directory's entries (new names, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot flush to disk", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
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

/// Every float tensor of the output is finite (a non-finite source weight, or a finite one that
/// overflows --float-dtype f16, would otherwise be written and only show up as NaN at eval).
pub fn check_finite_output(tensors: &[OutTensor]) -> Result<()> {
    for t in tensors {
        if let Some(i) = crate::weights::first_non_finite(t.dtype, &t.data) {
            bail!(
                "{}: non-finite value at index {i} in the output; a source value is not finite or does not fit {:?} (choose a wider float type)",
                crate::escape::text(&t.name),
                t.dtype
            );
        }
    }
    Ok(())
}
