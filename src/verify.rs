//! `lowbit verify`: run every packed layer's CUDA kernel on random activations, compare with the
//! CPU reference dequant-matmul of `src/pack/`, and time it against cuBLAS fp16 on the
//! dequantized weight.

use crate::cuda::{self, GpuGrid, GpuVerifier, PackedOnGpu};
use crate::pack::Packed;
use crate::qmodel::QuantScheme;
use crate::quant::Grid;
use crate::weights::Checkpoint;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::path::Path;

/// Exit code of `lowbit verify` when no GPU is present (distinct from errors, which exit 2).
pub const EXIT_NO_GPU: i32 = 3;

#[derive(Serialize)]
pub struct VerifyRow {
    pub layer: String,
    pub kind: String,
    pub batch: usize,
    pub max_rel_err: f64,
    pub kernel_us: f64,
    pub cublas_us: f64,
    pub speedup: f64,
    pub gbps: f64,
    pub pct_of_peak: f64,
}

/// The same packed tensors, as the GPU runner wants them.
pub fn to_gpu(p: &Packed) -> PackedOnGpu {
    let gi = |g: &[u32]| g.iter().map(|&x| x as i32).collect::<Vec<i32>>();
    match p {
        Packed::Awq(a) => PackedOnGpu::Awq {
            out: a.out_features,
            in_features: a.in_features,
            group_size: a.group_size,
            qweight: a.qweight.clone(),
            qzeros: a.qzeros.clone(),
            scales: a.scales.clone(),
        },
        Packed::Gptq(g) => PackedOnGpu::Gptq {
            out: g.out_features,
            in_features: g.in_features,
            bits: g.bits as u32,
            group_size: g.group_size,
            qweight: g.qweight.clone(),
            qzeros: g.qzeros.clone(),
            scales: g.scales.clone(),
            g_idx: Some(gi(&g.g_idx)),
        },
        Packed::Lowbit(l) => PackedOnGpu::Lowbit {
            out: l.out_features,
            in_features: l.in_features,
            bits: l.bits as u32,
            group_size: l.group_size,
            grid: match l.grid {
                Grid::Affine => GpuGrid::Affine,
                Grid::HalfInt => GpuGrid::HalfInt,
                Grid::Shift => GpuGrid::Shift,
            },
            qweight: l.qweight.clone(),
            scales: l.scales.clone(),
            qzeros: l.qzeros.clone(),
            g_idx: l.g_idx.as_deref().map(gi),
        },
    }
}

/// A VQ layer for the GPU runner; `None` when it has outlier columns (the kernel leaves those to
/// the caller, so there is nothing of the layer's own to compare).
pub fn vq_to_gpu(v: &crate::pack::vq::VqPacked) -> Option<PackedOnGpu> {
    if !v.outlier_cols.is_empty() {
        return None;
    }
    Some(PackedOnGpu::Vq {
        out: v.out_features,
        in_features: v.in_features,
        v: v.vector_len,
        idx_bits: v.indices.bits as u32,
        indices: v.indices.data.clone(),
        codebook: v.centroids.clone(),
        residual: match (&v.res_indices, &v.res_centroids) {
            (Some(i), Some(c)) => Some(cuda::VqResidual { idx_bits: i.bits as u32, indices: i.data.clone(), codebook: c.clone() }),
            _ => None,
        },
        col_scale: v.col_scale.clone(),
        col_bias: v.col_bias.clone(),
    })
}

/// Verify the packed layers of `dir` whose names match `layers`, at each batch size.
pub fn verify(dir: &Path, layers: Option<&regex::Regex>, batches: &[usize], on_row: &mut dyn FnMut(&VerifyRow)) -> Result<Vec<VerifyRow>> {
    let cfg = crate::config::ModelConfig::load(&dir.join("config.json"))?;
    let scheme = QuantScheme::from_config(dir, &cfg.raw)?
        .ok_or_else(|| anyhow!("{}: not a quantized checkpoint (no quantization_config)", dir.display()))?;
    let ck = Checkpoint::open(dir)?;
    let gpu = GpuVerifier::new(0)?;
    let mut rows = Vec::new();
    let prefixes: Vec<String> =
        ck.names().filter_map(|n| n.strip_suffix(".qweight")).filter(|p| layers.is_none_or(|r| r.is_match(p))).map(str::to_owned).collect();
    for prefix in prefixes {
        let packed = scheme.read(&ck, &prefix)?.ok_or_else(|| anyhow!("{prefix}: no qweight"))?;
        let g = to_gpu(&packed);
        let (_, inn) = packed.shape();
        for &b in batches {
            let x = cuda::synth::activations(b, inn, 17);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let want = packed.dequant_matmul(&xf, b);
            let (got, t) = gpu.run(&g, &x, b)?;
            let row = VerifyRow {
                layer: prefix.clone(),
                kind: g.label(),
                batch: b,
                max_rel_err: cuda::max_rel_err(&got, &want),
                kernel_us: t.kernel_us,
                cublas_us: t.cublas_us,
                speedup: t.speedup,
                gbps: t.gbps,
                pct_of_peak: t.pct_peak,
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}
