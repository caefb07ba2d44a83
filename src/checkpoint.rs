//! Crash-safe progress of `lowbit quantize`. After every decoder layer (a step) the temporary
//! output directory gets that layer's packed tensors (`layer-NNNN.safetensors`) and the
//! calibration hidden states after it (`hidden-NNNN.f32`, a new file per step, so the committed
//! one is never overwritten), both flushed to disk with the directory; then `state.json` is
//! replaced atomically: the commit point. It records the input fingerprint, the running totals,
//! and the size and xxh3-128 hash of every file of the committed steps, plus a hash of itself.
//! A kill anywhere leaves either the old state with its files intact, or the new one.
//!
//! `--resume` continues after the last committed step once every recorded file matches its
//! hash; a changed, missing or truncated file, a torn state or other inputs are refused. The
//! result is byte-identical to an uninterrupted run.

use crate::escape;
use crate::outdir::test_crash;
use crate::pack::LowbitQuantConfig;
use crate::st_write::{sync_dir, write_atomic, write_safetensors, OutTensor};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// Version of the state file layout; part of the fingerprint too.
pub const FORMAT: u32 = 2;
const STATE: &str = "state.json";

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

/// Size and xxh3-128 (hex) of a checkpoint file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub xxh3: String,
}

#[derive(Serialize, Deserialize)]
struct Body {
    format: u32,
    fingerprint: String,
    state: State,
    files: BTreeMap<String, FileSum>,
}

pub struct Checkpointer {
    pub dir: PathBuf,
    pub fingerprint: String,
    /// The files of the committed steps.
    files: BTreeMap<String, FileSum>,
    /// Steps committed (0: none yet).
    layers_done: usize,
}

/// xxh3-128 of `bytes` as 32 hex digits.
pub fn hash_hex(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// Size and hash of a file, streamed.
fn file_sum(p: &Path) -> Result<FileSum> {
    let mut f = std::fs::File::open(p).with_context(|| format!("{}: cannot read checkpoint", escape::path(p)))?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: cannot read checkpoint", escape::path(p)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum { bytes, xxh3: format!("{:032x}", h.digest128()) })
}

fn layer_name(i: usize) -> String {
    format!("layer-{i:04}.safetensors")
}

fn hidden_name(i: usize) -> String {
    format!("hidden-{i:04}.f32")
}

/// `state.json`: the JSON of the body on the first line, the xxh3-128 of exactly those bytes on
/// the second (a torn or edited state file is refused).
fn state_bytes(body: &Body) -> Result<Vec<u8>> {
    let json = serde_json::to_string(body)?;
    Ok(format!("{json}\n{}\n", hash_hex(json.as_bytes())).into_bytes())
}

fn parse_state(bytes: &[u8]) -> Result<Body> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("not UTF-8"))?;
    let (json, check) = text.trim_end_matches('\n').rsplit_once('\n').ok_or_else(|| anyhow!("no check line"))?;
    if hash_hex(json.as_bytes()) != check {
        bail!("its check hash does not match");
    }
    Ok(serde_json::from_str(json)?)
}

impl Checkpointer {
    /// A fresh checkpoint in `dir` (nothing committed).
    pub fn new(dir: &Path, fingerprint: &str) -> Self {
        Checkpointer { dir: dir.to_path_buf(), fingerprint: fingerprint.to_string(), files: BTreeMap::new(), layers_done: 0 }
    }

    /// The committed state in `dir` of an interrupted run of a model with `num_layers` layers, if
    /// it has one: refused unless its inputs had this fingerprint and every recorded file is
    /// intact.
    pub fn load(dir: &Path, fp: &str, num_layers: usize) -> Result<Option<(Checkpointer, State)>> {
        let p = dir.join(STATE);
        let shown = escape::path(&p);
        let redo = "rerun without --resume to start over";
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&p).with_context(|| format!("{shown}: cannot read"))?;
        let body = parse_state(&text).map_err(|e| anyhow!("{shown}: corrupt checkpoint state ({e}); {redo}"))?;
        if body.format != FORMAT {
            bail!("{shown}: checkpoint of another lowbit version (format {}); {redo}", body.format);
        }
        if body.fingerprint != fp {
            bail!("{}: the interrupted run had other inputs (model, calibration or flags); {redo}", escape::path(dir));
        }
        let n = body.state.layers_done;
        if n == 0 || n > num_layers {
            bail!("{shown}: records {n} finished layers of a {num_layers}-layer model; {redo}");
        }
        let mut want: Vec<String> = (0..n).map(layer_name).collect();
        want.push(hidden_name(n - 1));
        want.sort();
        if body.files.keys().cloned().collect::<Vec<_>>() != want {
            bail!("{shown}: does not list the files of {n} finished layers; {redo}");
        }
        for (name, sum) in &body.files {
            let f = dir.join(name);
            let got = file_sum(&f).map_err(|e| anyhow!("{e:#}; {redo}"))?;
            if &got != sum {
                bail!(
                    "{}: does not match the checkpoint's record ({} bytes, hash {}; recorded {} bytes, hash {}): changed since it was written; {redo}",
                    escape::path(&f),
                    got.bytes,
                    got.xxh3,
                    sum.bytes,
                    sum.xxh3
                );
            }
        }
        for m in body.state.meta.modules.keys().chain(body.state.meta.vq_modules.keys()) {
            let layer = m.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
            if layer.is_none_or(|l| l >= n) {
                bail!("{shown}: records module {} outside the {n} finished layers; {redo}", escape::text(m));
            }
        }
        let ck = Checkpointer { dir: dir.to_path_buf(), fingerprint: fp.to_string(), files: body.files, layers_done: n };
        Ok(Some((ck, body.state)))
    }

    /// Write layer `i`'s tensors only (no hidden states, no state: a run that cannot resume).
    pub fn write_tensors(&self, i: usize, tensors: &[OutTensor]) -> Result<()> {
        write_safetensors(&self.dir.join(layer_name(i)), tensors, None)
    }

    /// Commit layer `i`: its tensors and the hidden states after it, flushed, then the state.
    pub fn write_layer(&mut self, i: usize, tensors: &[OutTensor], hidden: &[f32], state: &State) -> Result<()> {
        if i != self.layers_done || state.layers_done != i + 1 {
            bail!("checkpoint: layer {i} committed out of order (after {} layers)", self.layers_done);
        }
        let layer = self.dir.join(layer_name(i));
        write_safetensors(&layer, tensors, None)?;
        test_crash(&format!("after-layer-file:{i}"));
        let bytes: Vec<u8> = hidden.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hid = hidden_name(i);
        write_atomic(&self.dir.join(&hid), &bytes)?;
        sync_dir(&self.dir)?;
        let mut files = self.files.clone();
        if i > 0 {
            files.remove(&hidden_name(i - 1));
        }
        files.insert(layer_name(i), file_sum(&layer)?);
        files.insert(hid, FileSum { bytes: bytes.len() as u64, xxh3: hash_hex(&bytes) });
        drop(bytes);
        test_crash(&format!("before-commit:{i}"));
        let body = Body { format: FORMAT, fingerprint: self.fingerprint.clone(), state: state.clone(), files };
        write_atomic(&self.dir.join(STATE), &state_bytes(&body)?)?;
        test_crash(&format!("after-commit:{i}"));
        self.files = body.files;
        self.layers_done = i + 1;
        if i > 0 {
            // No longer referenced by the committed state.
            let _ = std::fs::remove_file(self.dir.join(hidden_name(i - 1)));
        }
        Ok(())
    }

    /// Layer `i`'s tensors, in the order they were written; checked against the recorded hash
    /// when the layer was committed.
    pub fn read_layer(&self, i: usize) -> Result<Vec<OutTensor>> {
        let p = self.dir.join(layer_name(i));
        let shown = escape::path(&p);
        let bytes = std::fs::read(&p).with_context(|| format!("{shown}: cannot read checkpoint"))?;
        if let Some(sum) = self.files.get(&layer_name(i)) {
            if sum.bytes != bytes.len() as u64 || sum.xxh3 != hash_hex(&bytes) {
                bail!("{shown}: changed since it was written (hash does not match the checkpoint's record)");
            }
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{shown}: corrupt checkpoint: {e}"))?;
        // Keep the order the tensors were written in (names sort the same way within a layer).
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = st.tensor(&n).map_err(|e| anyhow!("{shown}: {}: {e}", escape::text(&n)))?;
                Ok(OutTensor::copy_of(n.clone(), &t))
            })
            .collect()
    }

    /// The `n` hidden states after the last committed layer (checked against the record).
    pub fn read_hidden(&self, n: usize) -> Result<Vec<f32>> {
        let name = hidden_name(self.layers_done.checked_sub(1).ok_or_else(|| anyhow!("checkpoint: no committed layer"))?);
        let p = self.dir.join(&name);
        let shown = escape::path(&p);
        let b = std::fs::read(&p).with_context(|| format!("{shown}: cannot read checkpoint"))?;
        if self.files.get(&name).is_none_or(|s| s.bytes != b.len() as u64 || s.xxh3 != hash_hex(&b)) {
            bail!("{shown}: changed since it was written (hash does not match the checkpoint's record)");
        }
        if b.len() != n * 4 {
            bail!("{shown}: checkpoint holds {} bytes of hidden states, expected {}", b.len(), n * 4);
        }
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Remove the checkpoint files from a temporary directory before it becomes the output.
pub fn remove_checkpoints(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", escape::path(dir)))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = (name.starts_with("layer-") && (name.ends_with(".safetensors") || name.ends_with(".safetensors.tmp")))
            || (name.starts_with("hidden-") && (name.ends_with(".f32") || name.ends_with(".f32.tmp")))
            || matches!(name, "state.json" | "state.json.tmp");
        if ours {
            std::fs::remove_file(&p).with_context(|| format!("{}: cannot remove", escape::path(&p)))?;
        }
    }
    Ok(())
}
