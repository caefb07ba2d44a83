//! Quantization onto llama.cpp's block grids (GGUF export): the codes, scales and mins of every
//! block are chosen against the exact decode of the block type ([`crate::gguf::blocks`]),
//! including the f16 rounding of `d` / `dmin` and the integer sub-block scales of the k-quants.
//!
//! * [`fit_block`]: a block from its weights, minimising the (importance-)weighted squared error:
//!   a per-sub-block scale (and min) search with least-squares refits, then the k-quants' integer
//!   sub-scales under an f16 super-block scale, then a ±1 search of every integer sub-scale / min
//!   with the codes re-chosen on the final grid. RTN uses it with unit weights; AWQ after its
//!   channel scaling with `E[x²]` weights (as llama.cpp's imatrix).
//! * [`BlockGrid`]: the same grid for GPTQ's column walk ([`super::gptq::gptq_on`]): a block is
//!   fitted when the walk enters it, and each k-quant sub-block's integer scale and min are
//!   refitted (under the block's fixed `d` / `dmin`) when the walk enters that sub-block, on the
//!   error-compensated weights.
//! * [`BlockQ`]: a quantized matrix as the bytes of its blocks, row by row.

pub use crate::codes::BlockQ;
use crate::gguf::blocks::{self, code_value, Block, Kind};
use crate::gguf::GgmlType;
use half::f16;
use rayon::prelude::*;

#[inline]
fn f16r(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Nearest code of `x` in a sub-block decoding as `(a, b)`.
#[inline]
pub fn nearest(kind: &Kind, a: f32, b: f32, x: f32) -> u8 {
    if a == 0.0 || !a.is_finite() {
        return kind.off;
    }
    let t = (x - if kind.has_min { b } else { 0.0 }) / a + kind.off as f32;
    t.round().clamp(0.0, kind.max_code() as f32) as u8
}

/// Weighted squared error of `x` against its nearest codes under `(a, b)`; writes the codes.
fn sub_error(kind: &Kind, a: f32, b: f32, x: &[f32], w: &[f32], q: &mut [u8]) -> f64 {
    let mut e = 0f64;
    for ((q, &x), &w) in q.iter_mut().zip(x).zip(w) {
        *q = nearest(kind, a, b, x);
        let d = (x - code_value(kind, a, b, *q)) as f64;
        e += w as f64 * d * d;
    }
    e
}

/// Scale (and offset) of one group of values in floating point, on a grid of `kind`'s codes:
/// `round` is applied to a candidate before it is scored (f16 for the 32-blocks, whose `d` / `m`
/// are the stored values; identity for k-quant sub-blocks, whose scales are quantized later).
/// Returns `(a, b)` with value `a·(q − off) + b`; `b ≤ 0` for the k-quants (their mins are
/// subtracted), `b = 0` for the symmetric types.
fn fit_group(kind: &Kind, x: &[f32], w: &[f32], round: fn(f32) -> f32) -> (f32, f32) {
    let n = x.len();
    let mut q = vec![0u8; n];
    let (lo, hi) = (-(kind.off as i32) as f32, (kind.max_code() as i32 - kind.off as i32) as f32);
    let mut best = (f64::INFINITY, 0f32, 0f32);
    let consider = |a: f32, b: f32, q: &mut [u8], best: &mut (f64, f32, f32)| {
        let (a, b) = (round(a), if kind.has_min { round(b) } else { 0.0 });
        if !a.is_finite() || !b.is_finite() {
            return;
        }
        let e = sub_error(kind, a, b, x, w, q);
        if e < best.0 {
            *best = (e, a, b);
        }
    };
    if !kind.has_min {
        // Symmetric: the largest-magnitude value on the most negative level (as llama.cpp), on
        // the most positive one, and shrunk versions; each followed by a least-squares refit.
        let m = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if m == 0.0 {
            return (0.0, 0.0);
        }
        let mut cands: Vec<f32> = Vec::new();
        for k in 0..8 {
            let t = 1.0 - 0.04 * k as f32;
            cands.push(m / (lo * t));
            cands.push(m / (hi * t));
        }
        for a0 in cands {
            consider(a0, 0.0, &mut q, &mut best);
            // LS refit of the scale for the codes just chosen.
            let (mut sxq, mut sqq) = (0f64, 0f64);
            for ((&x, &w), &c) in x.iter().zip(w).zip(&q) {
                let l = (c as i32 - kind.off as i32) as f64;
                sxq += (w * x) as f64 * l;
                sqq += w as f64 * l * l;
            }
            if sqq > 0.0 {
                consider((sxq / sqq) as f32, 0.0, &mut q, &mut best);
            }
        }
    } else {
        // Affine: value = a·q + b over [min, max] (min clamped to ≤ 0 for the k-quants), the
        // range shrunk from either end, each followed by a least-squares refit of (a, b).
        let (mut mn, mx) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if kind.is_k() {
            mn = mn.min(0.0);
        }
        if mx <= mn {
            return (0.0, if kind.is_k() { 0.0 } else { mn });
        }
        let nmax = hi;
        let r = mx - mn;
        for (i, j) in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 2), (3, 1), (1, 3), (3, 3)] {
            let (l, h) = (mn + 0.03 * i as f32 * r, mx - 0.03 * j as f32 * r);
            let l = if kind.is_k() { l.min(0.0) } else { l };
            if h <= l {
                continue;
            }
            let a0 = (h - l) / nmax;
            consider(a0, l, &mut q, &mut best);
            // LS refit of (a, b) for these codes.
            let (mut sw, mut sq, mut sqq, mut sx, mut sxq) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for ((&x, &w), &c) in x.iter().zip(w).zip(&q) {
                let (w, c, x) = (w as f64, c as f64, x as f64);
                sw += w;
                sq += w * c;
                sqq += w * c * c;
                sx += w * x;
                sxq += w * x * c;
            }
            let det = sw * sqq - sq * sq;
            if det > 0.0 {
                let mut a = (sw * sxq - sq * sx) / det;
                let mut b = (sqq * sx - sq * sxq) / det;
                if kind.is_k() && b > 0.0 {
                    b = 0.0;
                    a = if sqq > 0.0 { sxq / sqq } else { a };
                }
                if a > 0.0 {
                    consider(a as f32, b as f32, &mut q, &mut best);
                }
            }
        }
    }
    if best.0.is_infinite() {
        return (0.0, 0.0);
    }
    (best.1, best.2)
}

fn ones(n: usize) -> Vec<f32> {
    vec![1.0; n]
}

/// Refit sub-block `s` of a k-quant block (`d` / `dmin` fixed) on values `x` with weights `w`:
/// the integer scale (and min) nearest the sub-block's float fit and their ±1 neighbours, the
/// best by weighted error; its codes are re-chosen. For the 32-blocks it only re-chooses codes.
pub fn refit_sub(kind: &Kind, blk: &mut Block, s: usize, x: &[f32], w: &[f32]) {
    let sub = kind.sub;
    let qs = s * sub..(s + 1) * sub;
    if !kind.is_k() {
        let (a, b) = blk.sub_affine(kind, s);
        sub_error(kind, a, b, x, w, &mut blk.q[qs]);
        return;
    }
    let d = f16::from_bits(blk.d).to_f32();
    let dm = f16::from_bits(blk.dmin).to_f32();
    let (a, b) = fit_group(kind, x, w, |v| v);
    let (slo, shi) = kind.sc_range;
    let sc0 = if d != 0.0 { (a / d).round().clamp(slo as f32, shi as f32) as i32 } else { 0 };
    let (mlo, mhi) = kind.min_range();
    let m0 = if kind.has_min && dm != 0.0 { (-b / dm).round().clamp(mlo as f32, mhi as f32) as i32 } else { 0 };
    let mut best = (f64::INFINITY, sc0, m0);
    let mut q = vec![0u8; sub];
    let mrange: &[i32] = if kind.has_min { &[0, -1, 1] } else { &[0] };
    for ds in [0, -1, 1] {
        let sc = sc0 + ds;
        if sc < slo || sc > shi {
            continue;
        }
        for &dmn in mrange {
            let m = m0 + dmn;
            if m < mlo || m > mhi {
                continue;
            }
            blk.sc[s] = sc as i16;
            blk.mn[s] = m as u8;
            let (a, b) = blk.sub_affine(kind, s);
            let e = sub_error(kind, a, b, x, w, &mut q);
            if e < best.0 {
                best = (e, sc, m);
            }
        }
    }
    blk.sc[s] = best.1 as i16;
    blk.mn[s] = best.2 as u8;
    let (a, b) = blk.sub_affine(kind, s);
    sub_error(kind, a, b, x, w, &mut blk.q[qs]);
}

/// Quantize one block (`kind.block` values `x`, importance `w`, or unit weights) onto the grid.
pub fn fit_block(kind: &Kind, x: &[f32], w: Option<&[f32]>) -> Block {
    let owned;
    let w = match w {
        Some(w) => w,
        None => {
            owned = ones(x.len());
            &owned
        }
    };
    let mut blk = Block::zero(kind);
    if !kind.is_k() {
        let (a, b) = fit_group(kind, x, w, f16r);
        blk.d = f16::from_f32(a).to_bits();
        blk.dmin = if kind.has_min { f16::from_f32(b).to_bits() } else { 0 };
        refit_sub(kind, &mut blk, 0, x, w);
        return blk;
    }
    let sub = kind.sub;
    let fits: Vec<(f32, f32)> =
        (0..kind.n_sub()).map(|s| fit_group(kind, &x[s * sub..(s + 1) * sub], &w[s * sub..(s + 1) * sub], |v| v)).collect();
    let (slo, shi) = kind.sc_range;
    if slo < 0 {
        // Signed sub-scales: the largest-magnitude scale on the most negative integer.
        let big = fits.iter().fold(0f32, |m, &(a, _)| if a.abs() > m.abs() { a } else { m });
        blk.d = f16::from_f32(big / slo as f32).to_bits();
    } else {
        let amax = fits.iter().fold(0f32, |m, &(a, _)| m.max(a));
        blk.d = f16::from_f32(amax / shi as f32).to_bits();
        if kind.has_min {
            let bmax = fits.iter().fold(0f32, |m, &(_, b)| m.max(-b));
            blk.dmin = f16::from_f32(bmax / kind.min_range().1 as f32).to_bits();
        }
    }
    for s in 0..kind.n_sub() {
        refit_sub(kind, &mut blk, s, &x[s * sub..(s + 1) * sub], &w[s * sub..(s + 1) * sub]);
    }
    blk
}

/// Quantize a `[rows][cols]` matrix block by block (`cols` a multiple of the block size) on
/// [`BlockGrid`]; `imp` is a per-column importance (e.g. `E[x²]`), or `None` for unit weights (RTN).
pub fn quantize(ty: GgmlType, w: &[f32], rows: usize, cols: usize, imp: Option<&[f32]>) -> BlockQ {
    let grid = BlockGrid::new(ty);
    assert!(cols.is_multiple_of(grid.kind.block), "{cols} columns do not split into {ty} blocks");
    let (codes, params) = super::grid::fit_rows(&grid, w, rows, cols, imp);
    encode_matrix(ty, rows, cols, &codes, &params)
}

/// A block grid for GPTQ's column walk: groups are blocks, refitted per sub-block.
#[derive(Clone, Copy, Debug)]
pub struct BlockGrid {
    pub kind: Kind,
}

impl BlockGrid {
    pub fn new(ty: GgmlType) -> Self {
        Self { kind: Kind::of(ty).expect("block type") }
    }
}

impl super::grid::GroupGrid for BlockGrid {
    type Params = Block;
    fn group(&self) -> usize {
        self.kind.block
    }
    fn sub(&self) -> usize {
        self.kind.sub
    }
    fn fit(&self, v: &[f32], imp: Option<&[f32]>) -> Block {
        fit_block(&self.kind, v, imp)
    }
    fn refit_sub(&self, p: &mut Block, s: usize, v: &[f32], imp: &[f32]) {
        if self.kind.is_k() {
            refit_sub(&self.kind, p, s, v, imp);
        }
    }
    #[inline]
    fn code(&self, w: f32, p: &Block, k: usize) -> u8 {
        let (a, b) = p.sub_affine(&self.kind, k / self.kind.sub);
        nearest(&self.kind, a, b, w)
    }
    #[inline]
    fn value(&self, code: u8, p: &Block, k: usize) -> f32 {
        let (a, b) = p.sub_affine(&self.kind, k / self.kind.sub);
        code_value(&self.kind, a, b, code)
    }
    /// The fit already chose every code of the block (the nearest on its final grid).
    fn code_group(&self, _v: &[f32], p: &Block, out: &mut [u8]) {
        out.copy_from_slice(&p.q);
    }
}

/// Encode codes `[rows][cols]` with their blocks (`[rows][cols / block]`, codes taken from
/// `codes`, not from the blocks' own `q`).
pub fn encode_matrix(ty: GgmlType, rows: usize, cols: usize, codes: &[u8], params: &[Block]) -> BlockQ {
    let kind = Kind::of(ty).expect("block type");
    let nb = cols / kind.block;
    let rb = kind.row_bytes(cols);
    let mut data = vec![0u8; rows * rb];
    if rb > 0 {
        data.par_chunks_mut(rb).enumerate().for_each(|(r, row)| {
            for (k, o) in row.chunks_exact_mut(kind.bytes).enumerate().take(nb) {
                let mut blk = params[r * nb + k].clone();
                blk.q.copy_from_slice(&codes[r * cols + k * kind.block..r * cols + (k + 1) * kind.block]);
                blocks::encode(&kind, &blk, o);
            }
        });
    }
    BlockQ { ty, rows, cols, data }
}
