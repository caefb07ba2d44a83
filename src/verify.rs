//! `lowbit verify`: run every packed layer's CUDA kernel (group-quantized and VQ layouts alike) on
//! random activations, compare with the CPU reference dequant-matmul of `src/pack/`, and time it
//! against cuBLAS fp16 on the dequantized weight.
//!
//! Order of checks: arguments (batch sizes), then the checkpoint (every selected layer is read
//! and checked against the kernels' constraints, naming the layer), then the GPU. Nothing is run
//! when no layer is selected.

use crate::cuda::{self, GpuVerifier, PackedOnGpu};
use crate::pack::scheme::{QuantScheme, Stored};
use crate::weights::Checkpoint;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// Exit code of `lowbit verify` when no GPU is present (distinct from input errors, which exit 2).
pub const EXIT_NO_GPU: i32 = 3;
/// Exit code when a kernel's result differs from the CPU reference (or is not finite).
pub const EXIT_MISMATCH: i32 = 1;
/// Largest relative error accepted against the CPU reference.
pub const TOLERANCE: f64 = 1e-2;
/// Largest batch size accepted (rows of activations).
pub const MAX_BATCH: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct VerifyRow {
    pub layer: String,
    pub kind: String,
    pub batch: usize,
    /// Max relative error against the CPU reference (infinite when any output is NaN or inf).
    pub max_rel_err: f64,
    /// The same for the output read again after the timed launches.
    pub max_rel_err_after_timing: f64,
    pub kernel_us: f64,
    pub cublas_us: Option<f64>,
    pub speedup: Option<f64>,
    pub gbps: f64,
    pub pct_of_peak: f64,
    pub ok: bool,
}

/// Refuses an empty batch list and batch sizes outside 1..=MAX_BATCH (before any other work).
pub fn check_batches(batches: &[usize]) -> Result<()> {
    if batches.is_empty() {
        bail!("--batch: give at least one batch size");
    }
    if let Some(b) = batches.iter().find(|&&b| b == 0 || b > MAX_BATCH) {
        bail!("--batch: batch size {b} outside 1..={MAX_BATCH}");
    }
    Ok(())
}

/// A selected layer: its prefix and what the runner will call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub prefix: String,
    pub kind: String,
    pub shape: (usize, usize),
}

/// Every packed layer of the checkpoint: tensors ending in `.qweight` or `.vq_indices`, and every
/// module listed in a lowbit quantization_config (so a listed module with missing tensors is an
/// error, not a silent skip).
fn packed_prefixes(ck: &Checkpoint, scheme: &QuantScheme) -> BTreeSet<String> {
    let mut p: BTreeSet<String> =
        ck.names().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".vq_indices"))).map(str::to_owned).collect();
    if let QuantScheme::Lowbit(c) = scheme {
        p.extend(c.modules.keys().cloned());
        p.extend(c.vq_modules.keys().cloned());
    }
    p
}

fn open(dir: &Path) -> Result<(QuantScheme, Checkpoint)> {
    let cfg = crate::config::ModelConfig::load(&dir.join("config.json"))?;
    let scheme = QuantScheme::from_config(dir, &cfg.raw)?
        .ok_or_else(|| anyhow!("{}: not a quantized checkpoint (no quantization_config)", dir.display()))?;
    Ok((scheme, Checkpoint::open(dir)?))
}

fn read_layer(scheme: &QuantScheme, ck: &Checkpoint, dir: &Path, prefix: &str) -> Result<(Stored, PackedOnGpu)> {
    let stored = scheme
        .read_any(ck, prefix)
        .with_context(|| format!("{}: layer {prefix}", dir.display()))?
        .ok_or_else(|| anyhow!("{}: layer {prefix}: listed in quantization_config but has no packed tensors", dir.display()))?;
    let g = PackedOnGpu::from(&stored);
    g.validate().with_context(|| format!("{}: layer {prefix} cannot run on the GPU kernels", dir.display()))?;
    Ok((stored, g))
}

/// The layers `verify` would run: every packed layer whose prefix matches `layers`, each read
/// and checked against the kernels' constraints. Errors when none is selected.
pub fn select(dir: &Path, layers: Option<&regex::Regex>) -> Result<Vec<Selected>> {
    let (scheme, ck) = open(dir)?;
    let all = packed_prefixes(&ck, &scheme);
    if all.is_empty() {
        bail!("{}: no packed layers (nothing to verify)", dir.display());
    }
    let picked: Vec<&String> = all.iter().filter(|p| layers.is_none_or(|r| r.is_match(p))).collect();
    if picked.is_empty() {
        let re = layers.map_or(String::new(), |r| r.as_str().to_string());
        bail!("{}: --layers '{re}' matches none of the {} packed layers (e.g. {})", dir.display(), all.len(), all.iter().next().unwrap());
    }
    picked
        .into_iter()
        .map(|p| {
            let (_, g) = read_layer(&scheme, &ck, dir, p)?;
            Ok(Selected { prefix: p.clone(), kind: g.label(), shape: g.shape() })
        })
        .collect()
}

/// Runs the selected layers on the GPU at each batch size; `on_row` sees each row as it is made.
pub fn verify(
    gpu: &GpuVerifier,
    dir: &Path,
    layers: &[Selected],
    batches: &[usize],
    on_row: &mut dyn FnMut(&VerifyRow),
) -> Result<Vec<VerifyRow>> {
    let (scheme, ck) = open(dir)?;
    let mut rows = Vec::new();
    for sel in layers {
        let (stored, g) = read_layer(&scheme, &ck, dir, &sel.prefix)?;
        let (_, inn) = g.shape();
        let w = g.dequantize();
        for &b in batches {
            let x = cuda::synth::activations(b, inn, 17 + b as u64);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let want = stored.dequant_matmul(&xf, b);
            let run = gpu.run_with_dequant(&g, &x, b, &w).with_context(|| format!("{}: layer {} batch {b}", dir.display(), sel.prefix))?;
            let (e0, e1) = (cuda::max_rel_err(&run.y, &want), cuda::max_rel_err(&run.y_after_timing, &want));
            let t = run.timing;
            let row = VerifyRow {
                layer: sel.prefix.clone(),
                kind: sel.kind.clone(),
                batch: b,
                max_rel_err: e0,
                max_rel_err_after_timing: e1,
                kernel_us: t.kernel_us,
                cublas_us: t.cublas_us,
                speedup: t.speedup,
                gbps: t.gbps,
                pct_of_peak: t.pct_peak,
                ok: cuda::err_ok(e0, TOLERANCE) && cuda::err_ok(e1, TOLERANCE),
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Ok when every row passed; otherwise an error naming the failures (non-finite errors included).
pub fn judge(rows: &[VerifyRow]) -> Result<()> {
    if rows.is_empty() {
        bail!("no layer was verified");
    }
    let bad: Vec<&VerifyRow> = rows.iter().filter(|r| !r.ok).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "{} ({}, batch {}): error {:.3e}, after timing {:.3e}",
                r.layer, r.kind, r.batch, r.max_rel_err, r.max_rel_err_after_timing
            )
        })
        .collect();
    bail!(
        "{} of {} results differ from the CPU reference by more than {TOLERANCE:e} or are not finite: {}{}",
        bad.len(),
        rows.len(),
        list.join("; "),
        if bad.len() > 5 { "; ..." } else { "" }
    )
}
