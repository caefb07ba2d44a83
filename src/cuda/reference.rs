//! CPU references for the GPU runner: an element-by-element decoder of the raw arrays of every
//! layout (written from docs/formats.md, independent of the kernels' bit tricks and of the
//! packers in src/pack/), an f64-accumulated matmul, and the error metric.

use half::f16;
use rayon::prelude::*;

use super::layer::{lowbit_groups, stream_row_bytes, GpuGrid, PackedOnGpu};

/// `n` bits at stream bit `bit` of a little-endian byte stream.
pub(crate) fn bits_u8(stream: &[u8], bit: usize, n: u32) -> u32 {
    let mut v = 0u32;
    for k in 0..n as usize {
        let b = bit + k;
        v |= ((stream[b / 8] >> (b % 8)) as u32 & 1) << k;
    }
    v
}
/// `n` bits at stream bit `bit` of the stream of column `col` in a `[rows, stride]` word matrix.
pub(crate) fn bits_u32(words: &[i32], stride: usize, col: usize, bit: usize, n: u32) -> u32 {
    let mut v = 0u32;
    for k in 0..n as usize {
        let b = bit + k;
        let w = words[(b / 32) * stride + col] as u32;
        v |= ((w >> (b % 32)) & 1) << k;
    }
    v
}
/// Output channel `c` (0..8) of an AWQ word sits in nibble `AWQ_REV[c]`.
const AWQ_REV: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

impl PackedOnGpu {
    /// CPU reference: the dequantized weight `[out][in]` in f32, decoded element by element from the
    /// raw arrays (independent of the kernels' bit tricks).
    pub fn dequantize(&self) -> Vec<f32> {
        let (o_n, i_n) = self.shape();
        let mut w = vec![0f32; o_n * i_n];
        if i_n == 0 {
            return w;
        }
        w.par_chunks_mut(i_n).enumerate().for_each(|(o, row)| self.dequantize_row(o, row));
        w
    }

    /// CPU reference for one output row `o` (`w.len() == in`).
    pub fn dequantize_row(&self, o: usize, w: &mut [f32]) {
        let (_, i_n) = self.shape();
        match self {
            PackedOnGpu::Awq { out, group_size, qweight, qzeros, scales, .. } => {
                let ow = out / 8;
                let nib = 4 * AWQ_REV[o % 8];
                for (i, wi) in w.iter_mut().enumerate().take(i_n) {
                    let gr = i / group_size;
                    let q = (qweight[i * ow + o / 8] as u32 >> nib) & 15;
                    let z = (qzeros[gr * ow + o / 8] as u32 >> nib) & 15;
                    *wi = (q as f32 - z as f32) * scales[gr * out + o].to_f32();
                }
            }
            PackedOnGpu::Gptq { out, bits, group_size, qweight, qzeros, scales, g_idx, .. } => {
                let b = *bits as usize;
                let zw = out * b / 32;
                for (i, wi) in w.iter_mut().enumerate().take(i_n) {
                    let gr = g_idx.as_ref().map_or(i / group_size, |g| g[i] as usize);
                    let q = bits_u32(qweight, *out, o, i * b, *bits);
                    let zs = bits_u32(&qzeros[gr * zw..(gr + 1) * zw], 1, 0, o * b, *bits);
                    *wi = (q as f32 - crate::pack::gptq::zero_of_field(zs, *bits) as f32) * scales[gr * out + o].to_f32();
                }
            }
            PackedOnGpu::Lowbit { in_features, bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
                let rb = stream_row_bytes(*in_features, *bits);
                let ng = lowbit_groups(*in_features, *group_size, g_idx.as_deref());
                let b = *bits;
                let row = &qweight[o * rb..(o + 1) * rb];
                for (i, wi) in w.iter_mut().enumerate().take(i_n) {
                    let gr = g_idx.as_ref().map_or(i / group_size, |g| g[i] as usize);
                    let q = bits_u8(row, i * b as usize, b);
                    let s = scales[o * ng + gr].to_f32();
                    // Decoded here from the formulas, not by codes::grid_value: this is the
                    // independent reference the kernels and the pack decoders are checked against.
                    *wi = match grid {
                        GpuGrid::Affine => {
                            let z = qzeros.as_ref().map_or(0, |z| z[o * ng + gr]) as f32;
                            (q as f32 - z) * s
                        }
                        GpuGrid::HalfInt => {
                            let n = (1u32 << (b - 1)) as f32;
                            s * (q as f32 - n + 0.5) / n
                        }
                        GpuGrid::Shift => {
                            let p = q & ((1 << (b - 1)) - 1);
                            let v = s * (-(p as f32)).exp2();
                            if q >> (b - 1) & 1 == 1 {
                                -v
                            } else {
                                v
                            }
                        }
                    };
                }
            }
            PackedOnGpu::Vq { out, v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers, .. } => {
                let nvec = out / v;
                let (j, e) = (o / v, o % v);
                let rb = stream_row_bytes(nvec, *idx_bits);
                for (i, wi) in w.iter_mut().enumerate().take(i_n) {
                    let outlier = outliers.as_ref().and_then(|ol| ol.cols.binary_search(&(i as i32)).ok().map(|p| (ol, p)));
                    let val = match outlier {
                        Some((ol, p)) => {
                            let orb = stream_row_bytes(nvec, ol.idx_bits);
                            let k = bits_u8(&ol.indices[p * orb..(p + 1) * orb], j * ol.idx_bits as usize, ol.idx_bits) as usize;
                            ol.codebook[k * v + e].to_f32()
                        }
                        None => {
                            let k = bits_u8(&indices[i * rb..(i + 1) * rb], j * *idx_bits as usize, *idx_bits) as usize;
                            let mut val = codebook[k * v + e].to_f32();
                            if let Some(r) = residual {
                                let rrb = stream_row_bytes(nvec, r.idx_bits);
                                let rk = bits_u8(&r.indices[i * rrb..(i + 1) * rrb], j * r.idx_bits as usize, r.idx_bits) as usize;
                                val += r.codebook[rk * v + e].to_f32();
                            }
                            val
                        }
                    };
                    let s = col_scale.as_ref().map_or(1.0, |s| s[i].to_f32());
                    let bb = col_bias.as_ref().map_or(0.0, |s| s[i].to_f32());
                    *wi = val * s + bb;
                }
            }
        }
    }
}

/// Reference `y = x · Wᵀ` in f64 accumulation from a dequantized `[out][in]` weight; x is `[batch][in]`.
pub fn reference_matmul(w: &[f32], x: &[f16], batch: usize, out: usize, inf: usize) -> Vec<f32> {
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut y = vec![0f32; batch * out];
    if out == 0 {
        return y;
    }
    y.par_chunks_mut(out).enumerate().for_each(|(n, yr)| {
        let xr = &xf[n * inf..(n + 1) * inf];
        for (o, yo) in yr.iter_mut().enumerate() {
            let wr = &w[o * inf..(o + 1) * inf];
            *yo = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    });
    y
}

/// Relative error `max |got - want| / max |want|` (the absolute error when `want` is all zero).
///
/// NaN-aware: any non-finite value in `got` or `want` (NaN or ±inf), or a length mismatch, gives
/// `f64::INFINITY`, so an all-NaN output can never pass a `err < tolerance` check (`f64::max`
/// would silently drop NaN and score it 0).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut num = 0f64;
    let mut den = 0f64;
    for (&a, &b) in got.iter().zip(want) {
        if !a.is_finite() || !b.is_finite() {
            return f64::INFINITY;
        }
        num = num.max((a as f64 - b as f64).abs());
        den = den.max((b as f64).abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// True when `err` is a finite error below `tol` (false for NaN and infinity).
pub fn err_ok(err: f64, tol: f64) -> bool {
    err.is_finite() && err < tol
}
