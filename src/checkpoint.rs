//! Crash-safe progress of `lowbit quantize`: after every decoder layer the partial output
//! directory gets that layer's packed tensors, the calibration hidden states after it, and a
//! state file (written last, atomically: the commit point). `--resume` continues after the last
//! committed layer and produces the same bytes as an uninterrupted run.

use crate::pack::LowbitQuantConfig;
use crate::st_write::{write_atomic, write_safetensors, OutTensor};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub layers_done: usize,
    pub meta: LowbitQuantConfig,
    pub lin_bits: u64,
    pub lin_weights: u64,
    pub forward_seconds: f64,
    #[serde(default)]
    pub search_seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    fingerprint: String,
    state: State,
}

pub struct Checkpointer {
    pub dir: PathBuf,
    pub fingerprint: String,
}

pub fn write_fingerprint(dir: &Path, fp: &str) -> Result<()> {
    write_atomic(&dir.join("fingerprint"), fp.as_bytes())
}

/// The committed state of an interrupted run, if its inputs had this fingerprint.
pub fn load_state(dir: &Path, fp: &str) -> Result<Option<State>> {
    let f = dir.join("fingerprint");
    let got = std::fs::read_to_string(&f).unwrap_or_default();
    if got != fp {
        bail!(
            "{}: the interrupted run had other inputs (model, calibration or flags); rerun without --resume to start over",
            dir.display()
        );
    }
    let p = dir.join("state.json");
    if !p.exists() {
        return Ok(None);
    }
    let sf: StateFile = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?)
        .map_err(|e| anyhow!("{}: corrupt checkpoint state: {e}", p.display()))?;
    if sf.fingerprint != fp {
        bail!("{}: checkpoint state belongs to other inputs", p.display());
    }
    Ok(Some(sf.state))
}

impl Checkpointer {
    fn layer_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("layer-{i:04}.safetensors"))
    }

    /// Write layer `i`'s tensors only (no hidden states, no state: a run that cannot resume).
    pub fn write_tensors(&self, i: usize, tensors: &[OutTensor]) -> Result<()> {
        write_safetensors(&self.layer_path(i), tensors, None)
    }

    /// Commit layer `i`: its tensors, the hidden states after it, then the state.
    pub fn write_layer(&self, i: usize, tensors: &[&OutTensor], hidden: &[f32], state: &State) -> Result<()> {
        let owned: Vec<OutTensor> = tensors
            .iter()
            .map(|t| OutTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data: t.data.clone() })
            .collect();
        write_safetensors(&self.layer_path(i), &owned, None)?;
        let bytes: Vec<u8> = hidden.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&self.dir.join("hidden.f32"), &bytes)?;
        let sf = StateFile { fingerprint: self.fingerprint.clone(), state: state.clone() };
        write_atomic(&self.dir.join("state.json"), serde_json::to_string(&sf)?.as_bytes())
    }

    pub fn read_layer(&self, i: usize) -> Result<Vec<OutTensor>> {
        let p = self.layer_path(i);
        let bytes = std::fs::read(&p).with_context(|| format!("{}: cannot read checkpoint", p.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: corrupt checkpoint: {e}", p.display()))?;
        // Keep the order the tensors were written in (names sort the same way within a layer).
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = st.tensor(&n).map_err(|e| anyhow!("{}: {n}: {e}", p.display()))?;
                Ok(OutTensor { name: n.clone(), dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data().to_vec() })
            })
            .collect()
    }

    pub fn read_hidden(&self, n: usize) -> Result<Vec<f32>> {
        let p = self.dir.join("hidden.f32");
        let b = std::fs::read(&p).with_context(|| format!("{}: cannot read checkpoint", p.display()))?;
        if b.len() != n * 4 {
            bail!("{}: checkpoint holds {} bytes of hidden states, expected {}", p.display(), b.len(), n * 4);
        }
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Remove the checkpoint files from a partial directory before it becomes the output.
pub fn remove_checkpoints(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("layer-") || matches!(name, "hidden.f32" | "state.json" | "fingerprint") {
            std::fs::remove_file(&p).with_context(|| format!("{}: cannot remove", p.display()))?;
        }
    }
    Ok(())
}
