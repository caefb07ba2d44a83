//! Dense kernels of the forward pass: `y = x·Wᵀ` on row-major f32 slices through faer's GEMM
//! (chosen over matrixmultiply/gemm/OpenBLAS: see docs/gemm.md), RMSNorm, RoPE, SiLU.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// All rayon threads (sequential when there is one).
pub fn par() -> Par {
    match rayon::current_num_threads() {
        1 => Par::Seq,
        n => Par::Rayon(std::num::NonZeroUsize::new(n).unwrap()),
    }
}

/// `y[rows][out] = x[rows][inn] · w[out][inn]ᵀ` (the HF linear convention).
pub fn matmul_bt(x: &[f32], rows: usize, inn: usize, w: &[f32], out: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    matmul_bt_into(&mut y, x, rows, inn, w, out, par());
    y
}

/// As [`matmul_bt`] into a preallocated output, with an explicit parallelism.
pub fn matmul_bt_into(y: &mut [f32], x: &[f32], rows: usize, inn: usize, w: &[f32], out: usize, par: Par) {
    assert_eq!(x.len(), rows * inn, "matmul_bt: x has {} values, expected {rows}x{inn}", x.len());
    assert_eq!(w.len(), out * inn, "matmul_bt: w has {} values, expected {out}x{inn}", w.len());
    assert_eq!(y.len(), rows * out);
    if rows == 0 || out == 0 {
        return;
    }
    let xm = MatRef::from_row_major_slice(x, rows, inn);
    // W stored [out][inn] row-major is Wᵀ stored column-major [inn][out].
    let wt = MatRef::from_column_major_slice(w, inn, out);
    let ym = MatMut::from_row_major_slice_mut(y, rows, out);
    matmul(ym, Accum::Replace, xm, wt, 1.0f32, par);
}

/// `c[m][n] = a[m][k] · b[k][n]` (all row-major), sequential: for use inside parallel loops.
pub fn matmul_seq(c: &mut [f32], a: &[f32], m: usize, k: usize, b: &[f32], n: usize, accumulate: bool) {
    let am = MatRef::from_row_major_slice(a, m, k);
    let bm = MatRef::from_row_major_slice(b, k, n);
    let cm = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(cm, if accumulate { Accum::Add } else { Accum::Replace }, am, bm, 1.0f32, Par::Seq);
}

/// `c[m][n] = a[m][k] · b[n][k]ᵀ`, sequential.
pub fn matmul_bt_seq(c: &mut [f32], a: &[f32], m: usize, k: usize, b: &[f32], n: usize) {
    matmul_bt_into(c, a, m, k, b, n, Par::Seq);
}

/// RMSNorm of each `dim`-wide row of `x` with weight `w`, out of place.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut y = vec![0f32; x.len()];
    for (yr, xr) in y.chunks_mut(dim).zip(x.chunks(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
    y
}

/// `e^x` for the softmax and SiLU hot loops: branch-free (so it vectorises) and without libm's
/// slow underflow path, which dominated attention at long context. Cody-Waite reduction
/// `x = n·ln2 + r`, `|r| ≤ ln2/2`, and a degree-6 Taylor polynomial: relative error < 2e-7.
/// Inputs below -87 return `e^-87` ≈ 1.6e-38 (treated as zero by every caller).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // Compare-and-select (not `clamp`, whose NaN rules keep the loop scalar).
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // Round to nearest by the 1.5·2^23 trick: plain adds, so the loop vectorises on baseline
    // x86-64 (`f32::round` is a libm call there).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// Sum with 8 independent accumulators, so the loop vectorises (a plain fold is a serial chain).
#[inline]
pub fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}
