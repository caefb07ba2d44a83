//! Dense kernels of the forward pass: `y = x·Wᵀ` on row-major f32 slices through faer's GEMM
//! (chosen over matrixmultiply/gemm/OpenBLAS: see docs/gemm.md), RMSNorm, RoPE, SiLU, and the
//! row kernels of the attention softmax.
//!
//! Elementwise kernels are written once as plain loops and compiled three times by [`simd_fn!`]:
//! for AVX-512, for AVX2+FMA and for baseline x86-64; the widest the CPU has is picked at run
//! time (the crate itself is built for baseline x86-64, where the loops vectorise to SSE only).
//! No multiply-add is contracted to an FMA, so the three builds give bit-identical results.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Define `fn name(args) -> ret { body }` compiled for AVX-512, AVX2+FMA and baseline, dispatched
/// on the CPU's features at each call (a cached atomic load).
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the features v4 is compiled for were detected on this CPU.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("bmi2") {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

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

/// Multiply-adds below which a parallel product is not split further (about 0.2 ms on one core).
const TILE_FMAS: usize = 1 << 24;
/// Rows and columns of a parallel tile are kept at least this large (the kernels' efficiency
/// drops on thinner tiles, and every tile packs its own panel of the other operand).
const TILE_MIN_ROWS: usize = 128;
const TILE_MIN_COLS: usize = 256;

/// As [`matmul_bt`] into a preallocated output, with an explicit parallelism.
///
/// With `Par::Rayon` the product is cut into independent tiles (halving the longer side,
/// rows or output columns, down to about 16 M multiply-adds) and each tile runs faer's
/// sequential kernel: no barrier inside a product, so a busy core delays only its own tiles
/// (faer's own parallel GEMM synchronises its threads at every panel; measured in docs/speed.md).
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
    match par {
        Par::Seq => matmul(ym, Accum::Replace, xm, wt, 1.0f32, Par::Seq),
        _ => tiled(ym, xm, wt),
    }
}

/// `y = x·wt` split into tiles run by rayon (see [`matmul_bt_into`]).
fn tiled(y: MatMut<'_, f32>, x: MatRef<'_, f32>, wt: MatRef<'_, f32>) {
    let (m, n, k) = (y.nrows(), y.ncols(), x.ncols());
    let rows_ok = m >= 2 * TILE_MIN_ROWS;
    let cols_ok = n >= 2 * TILE_MIN_COLS;
    if m * n * k <= TILE_FMAS || !(rows_ok || cols_ok) {
        matmul(y, Accum::Replace, x, wt, 1.0f32, Par::Seq);
        return;
    }
    // Cut the side with more room (in units of its minimum), at a multiple of 16.
    if rows_ok && (!cols_ok || m * TILE_MIN_COLS >= n * TILE_MIN_ROWS) {
        let mid = (m / 2).next_multiple_of(16).min(m - TILE_MIN_ROWS);
        let (y0, y1) = y.split_at_row_mut(mid);
        let (x0, x1) = x.split_at_row(mid);
        rayon::join(|| tiled(y0, x0, wt), || tiled(y1, x1, wt));
    } else {
        let mid = (n / 2).next_multiple_of(16).min(n - TILE_MIN_COLS);
        let (y0, y1) = y.split_at_col_mut(mid);
        let (w0, w1) = wt.split_at_col(mid);
        rayon::join(|| tiled(y0, x, w0), || tiled(y1, x, w1));
    }
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
    let mut y = vec![0f32; x.len()];
    rms_norm_into(&mut y, x, w, eps);
    y
}

simd_fn! {
    /// RMSNorm of each `w.len()`-wide row of `x` into `y` (same length): `y = w ⊙ x / √(mean x² + eps)`.
    pub fn rms_norm_into(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let dim = w.len();
        for (yr, xr) in y.chunks_mut(dim).zip(x.chunks(dim)) {
            let ms = sum_sq8(xr) / dim as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = g * (v * r);
            }
        }
    }
}

simd_fn! {
    /// RMSNorm in place of each `w.len()`-wide row (qwen3's per-head q/k norms).
    pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
        let dim = w.len();
        for xr in x.chunks_mut(dim) {
            let ms = sum_sq8(xr) / dim as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for (v, &g) in xr.iter_mut().zip(w) {
                *v = g * (*v * r);
            }
        }
    }
}

simd_fn! {
    /// The SwiGLU gate in place: `g = silu(g) · u`.
    pub fn silu_mul(g: &mut [f32], u: &[f32]) {
        g.iter_mut().zip(u).for_each(|(a, b)| *a = silu(*a) * b);
    }
}

simd_fn! {
    /// `y += x` elementwise.
    pub fn add_assign(y: &mut [f32], x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(a, b)| *a += b);
    }
}

simd_fn! {
    /// `ln Σ e^x` of a row, shifted by its max; exponentials in f32 ([`exp_fast`], relative
    /// error < 2e-7), summed in f64 blocks of 512 (so the sum's rounding stays below 1e-7 relative
    /// for any vocabulary size).
    pub fn log_sum_exp(row: &[f32]) -> f64 {
        let mx = max8(row);
        if !mx.is_finite() {
            // Infinite logits (or none finite): the plain f64 formula, whose NaN/inf result the
            // callers report.
            let mx = mx as f64;
            return row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
        }
        let mut total = 0f64;
        for blk in row.chunks(512) {
            let mut acc = [0f32; 16];
            let mut it = blk.chunks_exact(16);
            for c in &mut it {
                for i in 0..16 {
                    acc[i] += exp_fast(c[i] - mx);
                }
            }
            let tail: f32 = it.remainder().iter().map(|&x| exp_fast(x - mx)).sum();
            total += (acc.iter().sum::<f32>() + tail) as f64;
        }
        total.ln() + mx as f64
    }
}

/// Largest value of a slice (`-inf` when empty). NaNs are skipped, as by `fold(f32::max)`.
#[inline(always)]
pub fn max8(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            // Compare-and-select (vectorises; `f32::max` does not).
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let mut m = it.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Sum of squares with 8 independent accumulators (vectorises).
#[inline(always)]
pub fn sum_sq8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().map(|x| x * x).sum::<f32>()
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

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}
