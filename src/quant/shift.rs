//! DenseShift-style power-of-two ("shift") quantization (Li et al., ICCV 2023), post-training.
//!
//! Zero-free grid ([`Grid::Shift`]): a `b`-bit code is one sign bit (the top bit, 1 = negative)
//! and `b-1` exponent bits `p`, and means `±s·2^(-p)`, `p in 0..2^(b-1)`. 2 bits give
//! `{±s, ±s/2}`, 3 bits `{±s, ±s/2, ±s/4, ±s/8}`. No code means 0.
//!
//! Codes: exact nearest value (not nearest in the log domain). With the stored scale `s`, `|w|`
//! takes the exponent `p` of the level `s·2^(-p)` closest to it; the decision thresholds are the
//! midpoints `0.75·s·2^(-p)`, a tie goes to the larger level, and the sign is the sign of `w`
//! (`+` for 0). Everything below the smallest level maps to it, everything above `s` to `s`.
//!
//! Scale: per group (a whole output row when `group >= in_features`) the one that minimises
//! `Σ_i imp_i·(w_i - Q(w_i))²` with `imp = 1` (plain) or the caller's per-input-channel
//! importance (activation-aware). Candidates, each rounded to f16 before the codes are chosen,
//! are `max|w|·2^(k/64)`: quarter-octave steps (`k = 16·m`) from `0.5·mean|w|` up to
//! `2^(1/4)·max|w|`, then the 3 candidates either side of the best at steps of 4, then of 1
//! (about 30 evaluations per group; scales above `4/3·max|w|` never use their top level, so half
//! the scale does at least as well). `max|w|` itself is a candidate, so rows made of exact
//! powers of two are reproduced exactly.
//!
//! [`shift_matmul`] is the multiplication-free reference product: `x·2^(-p)` is an integer
//! subtraction on the exponent field of `x`'s f32 bits, the sign an XOR, and the only float
//! multiply is one per group by the group scale.

use super::grid::{self, GroupGrid, Params, ScalarGrid};
use super::recipe::Recipe;
use super::statsq::stored_scale;
use super::{grid_value, Grid, GroupQ};
use rayon::prelude::*;

/// `shift`: the scale by plain MSE.
pub const SHIFT: Recipe = Recipe::round("shift", "DenseShift: ±s·2^-p, no zero code, MSE-optimal scale per group", Grid::Shift, false);
/// `shift-aware`: the scale by importance-weighted MSE.
pub const SHIFT_AWARE: Recipe =
    Recipe::round("shift-aware", "Shift with the scale chosen to minimise the E[x²]-weighted error", Grid::Shift, true);

/// `2^(-p)` for every exponent a code can hold (`p <= 127`): exact powers of two, so equal to
/// [`super::grid_value`]'s `exp2(-p)` and `s * POW[p]` is bit-identical to the dequantized value
/// (2^-127 is the subnormal with bit 22 set).
const POW: [f32; 128] = {
    let mut t = [0f32; 128];
    let mut p = 0;
    while p < 128 {
        t[p] = if p < 127 { f32::from_bits((127 - p as u32) << 23) } else { f32::from_bits(1 << 22) };
        p += 1;
    }
    t
};

/// The levels `s·2^(-p)` of one scale and the midpoints between neighbours (a buffer reused
/// across the candidate scales of a search).
struct Levels {
    n: usize,
    lv: [f32; 128],
    /// `mid[p + 1]` is the midpoint between levels `p` and `p + 1`; `mid[0] = +inf` and
    /// `mid[n] = 0` stand for "no level above" / "no level below".
    mid: [f32; 129],
    /// `1 / (0.75·s)`, for the first guess of `p`.
    inv: f32,
}

impl Levels {
    fn new(bits: u8) -> Self {
        let mut mid = [0f32; 129];
        mid[0] = f32::INFINITY;
        Self { n: 1 << (bits - 1), lv: [0.0; 128], mid, inv: 0.0 }
    }

    fn set(&mut self, s: f32, pow: &[f32; 128]) {
        let n = self.n;
        for (l, &f) in self.lv[..n].iter_mut().zip(pow) {
            *l = s * f;
        }
        for p in 1..n {
            self.mid[p] = 0.5 * (self.lv[p - 1] + self.lv[p]);
        }
        self.inv = 1.0 / (0.75 * s);
    }

    /// Exponent of the level nearest to `a = |w|` (ties to the larger level).
    #[inline]
    fn nearest(&self, a: f32) -> usize {
        // a / (0.75 s) in [2^e, 2^(e+1)) puts a between the midpoints around level -e; the
        // division rounds, so the guess can be one off: one branch-free step fixes that.
        let e = ((a * self.inv).to_bits() >> 23 & 0xff) as i32 - 127;
        let p = (-e).clamp(0, self.n as i32 - 1) as usize;
        let step = (a < self.mid[p + 1]) as isize - (a >= self.mid[p]) as isize;
        let p = (p as isize + step).clamp(0, self.n as isize - 1) as usize;
        if a >= self.mid[p + 1] && a < self.mid[p] {
            return p;
        }
        // Only reachable with subnormal levels (inexact midpoints), Inf or NaN: search outright.
        self.mid[1..self.n].iter().take_while(|&&m| a < m).count()
    }

    #[inline]
    fn code(&self, w: f32, bits: u8) -> u8 {
        ((w < 0.0) as u8) << (bits - 1) | self.nearest(w.abs()) as u8
    }
}

/// The shift code of `w` for the (already stored) scale `scale`: exact nearest level.
pub fn shift_code(w: f32, scale: f32, bits: u8) -> u8 {
    let mut l = Levels::new(bits);
    l.set(scale, &POW);
    l.code(w, bits)
}

/// The scale of one group `v` minimising the `imp`-weighted squared error.
fn best_scale(v: &[f32], imp: impl Fn(usize) -> f32, bits: u8, pow: &[f32; 128]) -> f32 {
    let max = v.iter().fold(0f32, |m, &x| m.max(x.abs()));
    if max.is_nan() || max <= 0.0 {
        return stored_scale(0.0);
    }
    let mean = (v.iter().map(|&x| x.abs() as f64).sum::<f64>() / v.len() as f64) as f32;
    let mut l = Levels::new(bits);
    let mut err = |s: f32| -> f64 {
        l.set(s, pow);
        v.iter()
            .enumerate()
            .map(|(k, &w)| {
                let a = w.abs();
                let d = (a - l.lv[l.nearest(a)]) as f64;
                imp(k) as f64 * d * d
            })
            .sum()
    };
    // Scales are max|w|·2^(k/64): k = 16·m (quarter octaves, k = 0 included) from
    // 64·log2(0.5·mean/max) up to 16, then the 3 steps either side of the best at 4, then at 1
    // (reaching 2^(31/64) > 4/3; past 4/3·max only smaller scales help).
    let at = |k: i32| stored_scale(max * (k as f32 / 64.0).exp2());
    let k_lo = ((64.0 * (0.5 * mean / max).log2()).floor() as i32).clamp(-768, 0);
    let mut best = (f64::INFINITY, 0, at(0));
    let mut try_k = |k: i32, best: &mut (f64, i32, f32)| {
        let s = at(k);
        let e = err(s);
        if e < best.0 {
            *best = (e, k, s);
        }
    };
    for k in (k_lo.div_euclid(16)..=1).map(|m| 16 * m) {
        try_k(k, &mut best);
    }
    for step in [4, 1] {
        let kc = best.1;
        for d in [-3, -2, -1, 1, 2, 3] {
            try_k(kc + d * step, &mut best);
        }
    }
    best.2
}

/// DenseShift-quantize `w[out][inn]` with `bits`-bit codes (2..=8) in groups of `group` input
/// columns. `weight = None`: scale by plain (unweighted) MSE; `Some(imp)` (one non-negative
/// importance per input column, e.g. mean |x| or diag(H)): by importance-weighted MSE; a group
/// whose importances are all 0 (or negative / NaN, which count as 0) falls back to plain.
/// Zero points are unused on this grid and filled with 0.
pub fn shift(w: &[f32], out: usize, inn: usize, bits: u8, group: usize, weight: Option<&[f32]>) -> GroupQ {
    assert!((2..=8).contains(&bits), "shift: bits {bits} outside 2..=8");
    assert!(group > 0, "shift: group size 0");
    assert_eq!(w.len(), out * inn, "shift: weight is not {out}x{inn}");
    if let Some(v) = weight {
        assert_eq!(v.len(), inn, "shift: {} importances for {inn} input columns", v.len());
    }
    grid::quantize(&Shift { bits, group }, w, out, inn, weight)
}

/// The shift grid of `bits`-bit codes in groups of `group`: the scale by plain MSE without
/// importances, by importance-weighted MSE with them (a group whose importances are all 0, or
/// negative / NaN, falls back to plain); exact nearest codes.
#[derive(Clone, Copy, Debug)]
pub struct Shift {
    pub bits: u8,
    pub group: usize,
}

impl GroupGrid for Shift {
    type Params = Params;
    fn group(&self) -> usize {
        self.group
    }
    fn fit(&self, v: &[f32], imp: Option<&[f32]>) -> Params {
        let scale = match imp.filter(|x| x.iter().any(|&i| i > 0.0)) {
            Some(x) => best_scale(v, |k| x[k].max(0.0), self.bits, &POW),
            None => best_scale(v, |_| 1.0, self.bits, &POW),
        };
        Params { scale, zero: 0 }
    }
    #[inline]
    fn code(&self, w: f32, p: &Params, _k: usize) -> u8 {
        shift_code(w, p.scale, self.bits)
    }
    #[inline]
    fn value(&self, code: u8, p: &Params, _k: usize) -> f32 {
        grid_value(Grid::Shift, self.bits, code, p.scale, 0)
    }
    fn code_group(&self, v: &[f32], p: &Params, out: &mut [u8]) {
        let mut l = Levels::new(self.bits);
        l.set(p.scale, &POW);
        for (q, &x) in out.iter_mut().zip(v) {
            *q = l.code(x, self.bits);
        }
    }
}

impl ScalarGrid for Shift {
    fn kind(&self) -> Grid {
        Grid::Shift
    }
    fn bits(&self) -> u8 {
        self.bits
    }
}

/// `x·2^(-p)` on f32 bit patterns, without a float multiply: the exponent field is decremented
/// by `p`; when the result leaves the normal range the significand is shifted right instead and
/// rounded to nearest, ties to even (so the result is bit-identical to `x * 2^(-p)` in f32).
/// Zeros keep their sign, subnormal inputs are handled, Inf and NaN pass through.
#[inline]
pub fn mul_pow2_neg(bits: u32, p: u32) -> u32 {
    let sign = bits & 0x8000_0000;
    let e = bits >> 23 & 0xff;
    if e == 0xff || p == 0 {
        return bits;
    }
    if e > p {
        return bits - (p << 23);
    }
    // Subnormal (or zero) result: value = sig·2^(max(e,1) - 150 - p) = (sig >> k)·2^-149.
    let sig = if e == 0 { bits & 0x7f_ffff } else { bits & 0x7f_ffff | 0x80_0000 };
    let k = p + 1 - e.max(1);
    if k > 24 {
        return sign; // below half the smallest subnormal: rounds to 0
    }
    let (q, rem, half) = (sig >> k, sig & ((1 << k) - 1), 1 << (k - 1));
    // A carry out of the significand lands in the exponent field: 2^-126, still correct.
    sign | (q + (rem > half || (rem == half && q & 1 == 1)) as u32)
}

/// Reference `y = x·Wᵀ` (`x` is `[rows][in]`, `y` is `[rows][out]`) for a [`Grid::Shift`]
/// weight, computed without multiplying by weights: each term `±x·2^(-p)` comes from
/// [`mul_pow2_neg`] and an XOR of the sign bit, terms are summed per group, and each group sum is
/// multiplied once by its scale. Honours `g_idx`. Equals dequantize-then-matmul up to the
/// order of float summation.
pub fn shift_matmul(q: &GroupQ, x: &[f32], rows: usize) -> Vec<f32> {
    assert_eq!(q.grid, Grid::Shift, "shift_matmul needs a shift-grid weight");
    let (o, i, ng) = (q.out_features, q.in_features, q.n_groups());
    assert_eq!(x.len(), rows * i, "shift_matmul: x is not {rows}x{i}");
    let (sb, pmask) = (q.bits - 1, (1u8 << (q.bits - 1)) - 1);
    let mut y = vec![0f32; rows * o];
    if o == 0 {
        return y;
    }
    y.par_chunks_mut(o).enumerate().for_each(|(r, yr)| {
        let xb: Vec<u32> = x[r * i..(r + 1) * i].iter().map(|v| v.to_bits()).collect();
        let mut acc = vec![0f32; ng];
        for (oo, yo) in yr.iter_mut().enumerate() {
            acc.fill(0.0);
            for (c, (&code, &xv)) in q.codes[oo * i..(oo + 1) * i].iter().zip(&xb).enumerate() {
                let t = mul_pow2_neg(xv, (code & pmask) as u32) ^ ((code >> sb) as u32) << 31;
                acc[q.group_of(c)] += f32::from_bits(t);
            }
            *yo = acc.iter().zip(&q.scales[oo * ng..(oo + 1) * ng]).map(|(a, s)| a * s).sum();
        }
    });
    y
}

#[cfg(test)]
mod tests {
    #[test]
    fn pow_table_is_exp2() {
        for (p, &v) in super::POW.iter().enumerate() {
            assert_eq!(v.to_bits(), (-(p as f32)).exp2().to_bits(), "2^-{p}");
        }
    }
}
