//! Round-to-nearest group quantization on the integer grid `w = (q - z)·s`.
//!
//! Asymmetric: `s = (max - min) / (2^b - 1)`, `z = clamp(round(-min / s), 0, 2^b - 1)` (AutoAWQ's
//! pseudo_quantize_tensor), by default with the range widened to include 0 as GPTQ does, so that
//! the zero point is always representable ([`Range`]). Symmetric: `s = max|w| / (2^(b-1) - 1)`,
//! `z = 2^(b-1)`.

use super::grid::{self, GroupGrid, ScalarGrid};
use super::recipe::Recipe;
use super::{Grid, GroupQ};

/// `rtn`: the affine grid, nearest codes.
pub const RTN: Recipe = Recipe::round("rtn", "Round to nearest, per group", Grid::Affine, false);

/// The values an asymmetric group's grid spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Range {
    /// `[min(min, 0), max(max, 0)]` (GPTQ's convention): 0 is always a grid point.
    #[default]
    WithZero,
    /// `[min, max]` of the group (AutoAWQ's pseudo_quantize_tensor): a finer grid when the group
    /// does not straddle 0 evenly; the zero point is clamped to the code range.
    MinMax,
}

impl crate::named::Named for Range {
    const ALL: &'static [Self] = &[Range::WithZero, Range::MinMax];
    fn name(self) -> &'static str {
        match self {
            Range::WithZero => "with-zero",
            Range::MinMax => "min-max",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Range::WithZero => "`[min(min, 0), max(max, 0)]` (GPTQ's convention): 0 is always a grid point",
            Range::MinMax => {
                "`[min, max]` of the group (AutoAWQ's pseudo_quantize_tensor): a finer grid when the group does not straddle 0 evenly; the zero point is clamped to the code range"
            }
        }
    }
}

/// Quantization parameters of one group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub scale: f32,
    pub zero: u8,
}

/// Round a scale to the f16 value it will be stored as, so codes are chosen for the stored scale.
#[inline]
pub fn f16_round(s: f32) -> f32 {
    half::f16::from_f32(s).to_f32()
}

/// Scale and zero for values spanning `[min, max]`; the scale is rounded to f16 first.
pub fn params(min: f32, max: f32, bits: u8, sym: bool) -> Params {
    if sym {
        let m = min.abs().max(max.abs());
        let half = ((1u32 << (bits - 1)) - 1).max(1) as f32;
        Params { scale: f16_round((m / half).max(1e-7)), zero: 1u8 << (bits - 1) }
    } else {
        let qmax = ((1u32 << bits) - 1) as f32;
        let scale = f16_round(((max - min).max(1e-5)) / qmax);
        let zero = (-(min / scale).round()).clamp(0.0, qmax) as u8;
        Params { scale, zero }
    }
}

/// Params of a slice of values.
pub fn params_of(v: &[f32], bits: u8, sym: bool) -> Params {
    params_in(v, bits, sym, Range::WithZero)
}

/// Params of a slice of values on a grid spanning `range`.
pub fn params_in(v: &[f32], bits: u8, sym: bool, range: Range) -> Params {
    let (mn, mx) = minmax(v);
    match range {
        Range::WithZero => params(mn.min(0.0), mx.max(0.0), bits, sym),
        Range::MinMax => params(mn, mx, bits, sym),
    }
}

#[inline]
pub fn quantize_value(w: f32, p: Params, bits: u8) -> u8 {
    let qmax = ((1u32 << bits) - 1) as f32;
    ((w / p.scale).round() + p.zero as f32).clamp(0.0, qmax) as u8
}

#[inline]
pub fn dequantize_value(q: u8, p: Params) -> f32 {
    (q as f32 - p.zero as f32) * p.scale
}

/// Group boundaries along a row of `n` values.
pub fn groups(n: usize, group: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n.div_ceil(group)).map(move |g| (g * group, ((g + 1) * group).min(n)))
}

/// Quantize `w[out][inn]` per row-group.
pub fn quantize(w: &[f32], out: usize, inn: usize, bits: u8, group: usize, sym: bool) -> GroupQ {
    quantize_in(w, out, inn, bits, group, sym, Range::WithZero)
}

/// [`quantize`] with the groups' grids spanning `range`.
pub fn quantize_in(w: &[f32], out: usize, inn: usize, bits: u8, group: usize, sym: bool, range: Range) -> GroupQ {
    grid::quantize(&Affine { bits, group, sym, range }, w, out, inn, None)
}

/// The affine grid `w = (q - z)·s` of `bits`-bit codes in groups of `group` ([`params_in`]; the
/// fit ignores importances).
#[derive(Clone, Copy, Debug)]
pub struct Affine {
    pub bits: u8,
    pub group: usize,
    pub sym: bool,
    pub range: Range,
}

impl GroupGrid for Affine {
    type Params = Params;
    fn group(&self) -> usize {
        self.group
    }
    fn fit(&self, v: &[f32], _imp: Option<&[f32]>) -> Params {
        params_in(v, self.bits, self.sym, self.range)
    }
    #[inline]
    fn code(&self, w: f32, p: &Params, _k: usize) -> u8 {
        quantize_value(w, *p, self.bits)
    }
    #[inline]
    fn value(&self, code: u8, p: &Params, _k: usize) -> f32 {
        dequantize_value(code, *p)
    }
}

impl ScalarGrid for Affine {
    fn kind(&self) -> Grid {
        Grid::Affine
    }
    fn bits(&self) -> u8 {
        self.bits
    }
}

pub fn minmax(v: &[f32]) -> (f32, f32) {
    v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)))
}

/// Quantize-dequantize ("fake quantization") of one group in place, on a grid spanning `range`.
pub fn fake_quant_group_in(v: &mut [f32], bits: u8, sym: bool, range: Range) {
    let p = params_in(v, bits, sym, range);
    for x in v.iter_mut() {
        *x = dequantize_value(quantize_value(*x, p, bits), p);
    }
}
