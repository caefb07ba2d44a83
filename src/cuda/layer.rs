//! A packed layer as the GPU runner sees it: raw host arrays exactly as the checkpoint layouts
//! store them (see the layout comments at the top of each kernels/*.cu and docs/formats.md), with
//! the shape checks and kernel constraints. Built from the pack types in [`super::from_pack`].

use anyhow::{anyhow, bail, Result};
use half::f16;

/// Value grid of the lowbit layout: the code types' [`crate::codes::Grid`].
pub use crate::codes::Grid as GpuGrid;

/// A packed linear layer `W [out, in]` as raw host arrays.
#[derive(Clone, Debug)]
pub enum PackedOnGpu {
    /// AutoAWQ GEMM, 4-bit: qweight `[in, out/8]`, qzeros `[in/g, out/8]`, scales `[in/g, out]`.
    Awq { out: usize, in_features: usize, group_size: usize, qweight: Vec<i32>, qzeros: Vec<i32>, scales: Vec<f16> },
    /// GPTQ v1: qweight `[in*bits/32, out]`, qzeros `[n_groups, out*bits/32]` ((zero-1) mod 2^bits),
    /// scales `[n_groups, out]`, g_idx `[in]` (None = i / group_size).
    Gptq {
        out: usize,
        in_features: usize,
        bits: u32,
        group_size: usize,
        qweight: Vec<i32>,
        qzeros: Vec<i32>,
        scales: Vec<f16>,
        g_idx: Option<Vec<i32>>,
    },
    /// lowbit: qweight `[out, row_bytes]`, scales `[out, n_groups]`, qzeros `[out, n_groups]`
    /// (affine only), g_idx `[in]` optional.
    Lowbit {
        out: usize,
        in_features: usize,
        bits: u32,
        group_size: usize,
        grid: GpuGrid,
        qweight: Vec<u8>,
        scales: Vec<f16>,
        qzeros: Option<Vec<u8>>,
        g_idx: Option<Vec<i32>>,
    },
    /// VQ: indices `[in, idx_row_bytes]`, codebook `[k, v]`, optional residual, per-column
    /// scale/bias, optional outlier columns with their own codebook.
    Vq {
        out: usize,
        in_features: usize,
        v: usize,
        idx_bits: u32,
        indices: Vec<u8>,
        codebook: Vec<f16>,
        residual: Option<VqResidual>,
        col_scale: Option<Vec<f16>>,
        col_bias: Option<Vec<f16>>,
        outliers: Option<VqOutliers>,
    },
}

/// Residual codebook of a [`PackedOnGpu::Vq`] layer.
#[derive(Clone, Debug)]
pub struct VqResidual {
    pub idx_bits: u32,
    pub indices: Vec<u8>,
    pub codebook: Vec<f16>,
}

/// Outlier columns of a [`PackedOnGpu::Vq`] layer: input columns `cols` (strictly increasing) are
/// decoded from their own codebook (`indices [n_cols, row_bytes]`, no residual); the main
/// indices of those columns are ignored. The runner computes them as a second VQ product over
/// the gathered columns and adds it.
#[derive(Clone, Debug)]
pub struct VqOutliers {
    pub cols: Vec<i32>,
    pub idx_bits: u32,
    pub indices: Vec<u8>,
    pub codebook: Vec<f16>,
}

/// Bytes of one bit-stream row holding `n` codes of `bits` bits ([`crate::pack::stream_row_bytes`]).
pub fn stream_row_bytes(n: usize, bits: u32) -> usize {
    crate::pack::stream_row_bytes(n, bits as usize)
}

/// Groups of a GPTQ layer: `ceil(in / g)`, or more when g_idx names a higher group.
pub(crate) fn gptq_groups(i: usize, g: usize, g_idx: Option<&[i32]>) -> usize {
    match g_idx {
        Some(gi) => gi.iter().map(|&x| x.max(0) as usize + 1).max().unwrap_or(0).max(i.div_ceil(g)),
        None => i.div_ceil(g),
    }
}
/// Groups of a lowbit layer: `ceil(in / g)`, or `max(g_idx) + 1`.
pub(crate) fn lowbit_groups(i: usize, g: usize, g_idx: Option<&[i32]>) -> usize {
    match g_idx {
        Some(gi) => gi.iter().map(|&x| x.max(0) as usize + 1).max().unwrap_or(0),
        None => i.div_ceil(g),
    }
}
/// True when `g_idx[i] == i / group_size` for every column.
pub fn trivial_g_idx(g: &[i32], group_size: usize, in_features: usize) -> bool {
    g.len() == in_features && g.iter().enumerate().all(|(i, &x)| x as usize == i / group_size.max(1))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("{what}: {got} elements, expected {want}");
    }
    Ok(())
}

fn check_codebook(what: &str, cb: &[f16], v: usize, bits: u32) -> Result<()> {
    if !(1..=16).contains(&bits) {
        bail!("{what}: index bits {bits} outside 1..=16");
    }
    if cb.is_empty() || !cb.len().is_multiple_of(v) || cb.len() / v > 1 << bits {
        bail!("{what}: codebook must be [k, v] with 0 < k <= 2^index_bits");
    }
    Ok(())
}

impl PackedOnGpu {
    pub fn shape(&self) -> (usize, usize) {
        match self {
            PackedOnGpu::Awq { out, in_features, .. }
            | PackedOnGpu::Gptq { out, in_features, .. }
            | PackedOnGpu::Lowbit { out, in_features, .. }
            | PackedOnGpu::Vq { out, in_features, .. } => (*out, *in_features),
        }
    }

    /// Short human-readable name, e.g. `lowbit-shift-b4`.
    pub fn label(&self) -> String {
        match self {
            PackedOnGpu::Awq { .. } => "awq-b4".into(),
            PackedOnGpu::Gptq { bits, g_idx, group_size, in_features, .. } => {
                let act = g_idx.as_ref().is_some_and(|g| !trivial_g_idx(g, *group_size, *in_features));
                format!("gptq-b{bits}{}", if act { "-actorder" } else { "" })
            }
            PackedOnGpu::Lowbit { bits, grid, g_idx, .. } => {
                format!("lowbit-{}-b{bits}{}", grid.name(), if g_idx.is_some() { "-gidx" } else { "" })
            }
            PackedOnGpu::Vq { v, idx_bits, residual, outliers, .. } => {
                format!(
                    "vq-v{v}-i{idx_bits}{}{}",
                    if residual.is_some() { "-res" } else { "" },
                    if outliers.is_some() { "-outl" } else { "" }
                )
            }
        }
    }

    /// Checks the array sizes and the constraints of the kernels.
    pub fn validate(&self) -> Result<()> {
        let (o, i) = self.shape();
        if o == 0 || i == 0 {
            bail!("{}: empty {o}x{i} weight", self.label());
        }
        match self {
            PackedOnGpu::Awq { group_size: g, qweight, qzeros, scales, .. } => {
                let g = *g;
                if o % 8 != 0 || g == 0 || i % g != 0 {
                    bail!("awq: need out % 8 == 0 and in % group_size == 0 (out={o} in={i} group_size={g})");
                }
                if g % 32 != 0 {
                    bail!("awq: the AWQ kernel needs a group size that is a multiple of 32 (got {g})");
                }
                check_len("awq qweight", qweight.len(), i * o / 8)?;
                check_len("awq qzeros", qzeros.len(), i / g * o / 8)?;
                check_len("awq scales", scales.len(), i / g * o)?;
            }
            PackedOnGpu::Gptq { bits, group_size: g, qweight, qzeros, scales, g_idx, .. } => {
                let (b, g) = (*bits as usize, *g);
                if ![2, 3, 4, 8].contains(&b) || i % 32 != 0 || (o * b) % 32 != 0 || g == 0 {
                    bail!("gptq: need bits in 2,3,4,8, in % 32 == 0, out*bits % 32 == 0, group_size > 0");
                }
                let ng = gptq_groups(i, g, g_idx.as_deref());
                check_len("gptq qweight", qweight.len(), i * b / 32 * o)?;
                check_len("gptq qzeros", qzeros.len(), ng * o * b / 32)?;
                check_len("gptq scales", scales.len(), ng * o)?;
                if let Some(gi) = g_idx {
                    check_len("gptq g_idx", gi.len(), i)?;
                    if gi.iter().any(|&x| x < 0 || x as usize >= ng) {
                        bail!("gptq g_idx out of range");
                    }
                }
            }
            PackedOnGpu::Lowbit { bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
                let b = *bits;
                if !(2..=8).contains(&b) || *group_size == 0 {
                    bail!("lowbit: bits must be 2..8 and group_size > 0");
                }
                let ng = lowbit_groups(i, *group_size, g_idx.as_deref());
                check_len("lowbit qweight", qweight.len(), o * stream_row_bytes(i, b))?;
                check_len("lowbit scales", scales.len(), o * ng)?;
                if *grid == GpuGrid::Affine {
                    let z = qzeros.as_ref().ok_or_else(|| anyhow!("lowbit affine needs qzeros"))?;
                    check_len("lowbit qzeros", z.len(), o * ng)?;
                }
                if let Some(gi) = g_idx {
                    check_len("lowbit g_idx", gi.len(), i)?;
                    if gi.iter().any(|&x| x < 0 || x as usize >= ng) {
                        bail!("lowbit g_idx out of range");
                    }
                }
            }
            PackedOnGpu::Vq { v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers, .. } => {
                let v = *v;
                if v == 0 || o % v != 0 {
                    bail!("vq: need out % v == 0 (out={o} v={v})");
                }
                check_codebook("vq", codebook, v, *idx_bits)?;
                check_len("vq indices", indices.len(), i * stream_row_bytes(o / v, *idx_bits))?;
                if let Some(r) = residual {
                    check_codebook("vq residual", &r.codebook, v, r.idx_bits)?;
                    check_len("vq residual indices", r.indices.len(), i * stream_row_bytes(o / v, r.idx_bits))?;
                }
                if let Some(s) = col_scale {
                    check_len("vq col_scale", s.len(), i)?;
                }
                if let Some(s) = col_bias {
                    check_len("vq col_bias", s.len(), i)?;
                }
                if let Some(ol) = outliers {
                    check_codebook("vq outliers", &ol.codebook, v, ol.idx_bits)?;
                    check_len("vq outlier indices", ol.indices.len(), ol.cols.len() * stream_row_bytes(o / v, ol.idx_bits))?;
                    if ol.cols.is_empty() || !ol.cols.windows(2).all(|p| p[0] < p[1]) || ol.cols.iter().any(|&c| c < 0 || c as usize >= i) {
                        bail!("vq outlier columns must be non-empty, strictly increasing and within 0..{i}");
                    }
                }
            }
        }
        Ok(())
    }
}
