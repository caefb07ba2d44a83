//! The GPU runner's layers built from the pack types of src/pack/ (the same tensors a checkpoint
//! stores, copied as they are: the runner's own arrangement for the kernels is made at upload).

use super::layer::{PackedOnGpu, VqOutliers, VqResidual};
use crate::pack::scheme::Stored;
use crate::pack::vq::VqPacked;
use crate::pack::Packed;

fn g_idx_i32(g: &[u32]) -> Vec<i32> {
    g.iter().map(|&x| x as i32).collect()
}

impl From<&Packed> for PackedOnGpu {
    fn from(p: &Packed) -> Self {
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
                g_idx: Some(g_idx_i32(&g.g_idx)),
            },
            Packed::Lowbit(l) => PackedOnGpu::Lowbit {
                out: l.out_features,
                in_features: l.in_features,
                bits: l.bits as u32,
                group_size: l.group_size,
                grid: l.grid,
                qweight: l.qweight.clone(),
                scales: l.scales.clone(),
                qzeros: l.qzeros.clone(),
                g_idx: l.g_idx.as_deref().map(g_idx_i32),
            },
        }
    }
}

impl From<&VqPacked> for PackedOnGpu {
    fn from(v: &VqPacked) -> Self {
        PackedOnGpu::Vq {
            out: v.out_features,
            in_features: v.in_features,
            v: v.vector_len,
            idx_bits: v.indices.bits as u32,
            indices: v.indices.data.clone(),
            codebook: v.centroids.clone(),
            residual: match (&v.res_indices, &v.res_centroids) {
                (Some(i), Some(c)) => Some(VqResidual { idx_bits: i.bits as u32, indices: i.data.clone(), codebook: c.clone() }),
                _ => None,
            },
            col_scale: v.col_scale.clone(),
            col_bias: v.col_bias.clone(),
            outliers: match (&v.outlier_indices, &v.outlier_centroids) {
                (Some(i), Some(c)) if !v.outlier_cols.is_empty() => Some(VqOutliers {
                    cols: v.outlier_cols.iter().map(|&c| c as i32).collect(),
                    idx_bits: i.bits as u32,
                    indices: i.data.clone(),
                    codebook: c.clone(),
                }),
                _ => None,
            },
        }
    }
}

impl From<&Stored> for PackedOnGpu {
    fn from(s: &Stored) -> Self {
        match s {
            Stored::Group(p) => p.into(),
            Stored::Vq(v) => v.into(),
        }
    }
}
