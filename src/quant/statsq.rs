//! StatsQ (OFQ, Liu et al. 2023): a statistics-derived scale and a zero-free half-integer grid.
//!
//! Per group (a whole output row when `group >= in_features`) the scale is `s = 2·mean|w|`;
//! a weight is mapped to the level
//!
//! ```text
//! x = clamp(w / s, -1, 1 - 1e-6)          (OFQ's clip_val = 2, minus OFQ's epsilon)
//! k = round_half_even(x·n - 0.5)          (torch.round rounds ties to even)
//! Q = s·(k + 0.5) / n,   n = 2^(b-1),  k in -n..=n-1,  code q = k + n
//! ```
//!
//! which is [`Grid::HalfInt`]: `w = s·(q - n + 0.5)/n`. Every level is an odd multiple of
//! `s/(2n)`, so no code means 0. For this grid the formula picks the nearest level (ties to the
//! level with even `k`), so the codes are also "round to nearest". The scale is rounded to f16
//! (its stored precision) before the codes are chosen, and kept at least [`MIN_SCALE`].
//!
//! Activation-aware variant (not in OFQ): given a per-input-channel importance `imp` (mean |x|,
//! diag(H), ...), the scale of each group is the one among `2·mean|w| · 2^(j/20)` that minimises
//! `Σ_i imp_i·(w_i - Q(w_i))²`, every candidate rounded to f16 first. `j` runs from -20 (0.5×)
//! up to 20 (2×), or further, up to 80 (16×), while the top level `s·(n-0.5)/n` is still below
//! `max|w|` (groups with outliers, where `2·mean|w|` clips hard). The search is coarse to fine:
//! every 4th `j` first, then the 3 steps either side of the best. `j = 0` (the plain scale) is
//! tried first and only a strictly smaller error replaces it, so the aware scale is never worse
//! than the plain one on that objective.

use super::grid::{self, GroupGrid, Params, ScalarGrid};
use super::recipe::Recipe;
use super::rtn::f16_round;
use super::{grid_value, Grid, GroupQ};

/// `statsq`: OFQ's plain StatsQ.
pub const STATSQ: Recipe =
    Recipe::round("statsq", "StatsQ: zero-free half-integer grid, scale 2·mean|W| per group (OFQ)", Grid::HalfInt, false);
/// `statsq-aware`: the importance-weighted scale search.
pub const STATSQ_AWARE: Recipe =
    Recipe::round("statsq-aware", "StatsQ with the scale chosen to minimise the E[x²]-weighted error", Grid::HalfInt, true);

/// OFQ's upper clip margin: `w/s` is clamped to `[-1, 1 - CLIP_EPS]`.
pub const CLIP_EPS: f32 = 1e-6;
/// Smallest stored scale (2^-22, an f16 subnormal): an all-zero group gets this scale, so that
/// its codes still decode to tiny non-zero values.
pub const MIN_SCALE: f32 = 1.0 / 4_194_304.0;
/// The aware search steps the scale by `2^(1/SEARCH_STEPS)`...
const SEARCH_STEPS: i32 = 20;
/// ... after a coarse pass over every `COARSE`-th step.
const COARSE: i32 = 4;

/// Round a scale to its stored f16 value, kept inside `[MIN_SCALE, f16::MAX]`.
pub(crate) fn stored_scale(s: f32) -> f32 {
    f16_round(if s.is_nan() { MIN_SCALE } else { s.clamp(MIN_SCALE, 65504.0) })
}

/// OFQ's plain StatsQ scale of one group, `2·mean|w|`, as stored (f16).
pub fn statsq_scale(v: &[f32]) -> f32 {
    let mean = v.iter().map(|&x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64;
    stored_scale((2.0 * mean) as f32)
}

/// The StatsQ code of `w` for scale `scale` (OFQ's clamp and round-half-even).
#[inline]
pub fn statsq_code(w: f32, scale: f32, bits: u8) -> u8 {
    let n = (1u32 << (bits - 1)) as f32;
    let x = (w / scale).clamp(-1.0, 1.0 - CLIP_EPS);
    let k = round_even(x * n - 0.5).clamp(-n, n - 1.0);
    (k + n) as u8
}

/// `round_ties_even(y)` for `|y| < 2^22` (here `|y| <= n + 0.5`) without a libm call: adding
/// and removing `1.5·2^23` leaves the rounding, to nearest with ties to even, to the FPU.
#[inline]
fn round_even(y: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (y + M) - M
}

/// `Σ imp_c·(w_c - Q(w_c))²` of one group `v` with importances `imp`, for one scale (negative
/// and NaN importances count as 0).
fn group_err(v: &[f32], imp: &[f32], scale: f32, bits: u8) -> f64 {
    let mut lv = [0f32; 256];
    for (c, l) in lv.iter_mut().enumerate().take(1 << bits) {
        *l = grid_value(Grid::HalfInt, bits, c as u8, scale, 0);
    }
    v.iter()
        .zip(imp)
        .map(|(&w, &i)| {
            let d = (w - lv[statsq_code(w, scale, bits) as usize]) as f64;
            i.max(0.0) as f64 * d * d
        })
        .sum()
}

/// The aware scale of group `v` with importances `imp`: the best candidate around the plain one.
fn aware_scale(v: &[f32], imp: &[f32], bits: u8) -> f32 {
    let plain = statsq_scale(v);
    // Past the scale whose top level s·(n - 0.5)/n reaches max|w| nothing is clipped any more.
    let n = (1u32 << (bits - 1)) as f32;
    let max = v.iter().fold(0f32, |m, &x| m.max(x.abs()));
    let j_hi = (SEARCH_STEPS as f32 * (max * n / ((n - 0.5) * plain)).log2()).ceil();
    let j_hi = if j_hi.is_nan() { SEARCH_STEPS } else { (j_hi as i32).clamp(SEARCH_STEPS, 4 * SEARCH_STEPS) };
    let at = |j: i32| stored_scale(plain * (j as f32 / SEARCH_STEPS as f32).exp2());
    // Coarse pass over every COARSE-th step (j = 0, the plain scale, first), then the steps
    // around the best coarse one.
    let mut best = (group_err(v, imp, plain, bits), 0, plain);
    let try_j = |j: i32, best: &mut (f64, i32, f32)| {
        let s = at(j);
        let e = group_err(v, imp, s, bits);
        if e < best.0 {
            *best = (e, j, s);
        }
    };
    for j in (-SEARCH_STEPS..=j_hi).step_by(COARSE as usize).filter(|&j| j != 0) {
        try_j(j, &mut best);
    }
    let jc = best.1;
    for j in (jc - COARSE + 1..jc + COARSE).filter(|&j| j != jc && (-SEARCH_STEPS..=j_hi).contains(&j)) {
        try_j(j, &mut best);
    }
    best.2
}

/// StatsQ-quantize `w[out][inn]` with `bits`-bit codes (2..=4 intended; up to 8 accepted) in
/// groups of `group` input columns. `weight = None`: OFQ's plain StatsQ; `Some(imp)` (one
/// non-negative importance per input column): the activation-aware scale search (module docs).
/// Zero points are unused on this grid and filled with 0.
pub fn statsq(w: &[f32], out: usize, inn: usize, bits: u8, group: usize, weight: Option<&[f32]>) -> GroupQ {
    assert!((2..=8).contains(&bits), "statsq: bits {bits} outside 2..=8");
    assert!(group > 0, "statsq: group size 0");
    assert_eq!(w.len(), out * inn, "statsq: weight is not {out}x{inn}");
    if let Some(v) = weight {
        assert_eq!(v.len(), inn, "statsq: {} importances for {inn} input columns", v.len());
    }
    grid::quantize(&HalfInt { bits, group }, w, out, inn, weight)
}

/// StatsQ's half-integer grid of `bits`-bit codes in groups of `group`: the plain scale
/// `2·mean|w|` without importances, the aware search with them; nearest codes.
#[derive(Clone, Copy, Debug)]
pub struct HalfInt {
    pub bits: u8,
    pub group: usize,
}

impl GroupGrid for HalfInt {
    type Params = Params;
    fn group(&self) -> usize {
        self.group
    }
    fn fit(&self, v: &[f32], imp: Option<&[f32]>) -> Params {
        Params { scale: imp.map_or_else(|| statsq_scale(v), |imp| aware_scale(v, imp, self.bits)), zero: 0 }
    }
    #[inline]
    fn code(&self, w: f32, p: &Params, _k: usize) -> u8 {
        statsq_code(w, p.scale, self.bits)
    }
    #[inline]
    fn value(&self, code: u8, p: &Params, _k: usize) -> f32 {
        grid_value(Grid::HalfInt, self.bits, code, p.scale, 0)
    }
}

impl ScalarGrid for HalfInt {
    fn kind(&self) -> Grid {
        Grid::HalfInt
    }
    fn bits(&self) -> u8 {
        self.bits
    }
}
