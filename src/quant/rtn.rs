//! Round-to-nearest group quantization on the integer grid `w = (q - z)·s`.
//!
//! Asymmetric: `s = (max - min) / (2^b - 1)`, `z = clamp(round(-min / s), 0, 2^b - 1)` (AutoAWQ's
//! pseudo_quantize_tensor), by default with the range widened to include 0 as GPTQ does, so that
//! the zero point is always representable ([`Range`]). Symmetric: `s = max|w| / (2^(b-1) - 1)`,
//! `z = 2^(b-1)`.

use super::{Grid, GroupQ};

/// The values an asymmetric group's grid spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Range {
    /// `[min(min, 0), max(max, 0)]` (GPTQ's convention): 0 is always a grid point.
    #[default]
    #[value(name = "with-zero")]
    WithZero,
    /// `[min, max]` of the group (AutoAWQ's pseudo_quantize_tensor): a finer grid when the group
    /// does not straddle 0 evenly; the zero point is clamped to the code range.
    #[value(name = "min-max")]
    MinMax,
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
    let ng = inn.div_ceil(group);
    let mut q = GroupQ {
        out_features: out,
        in_features: inn,
        bits,
        group_size: group,
        grid: Grid::Affine,
        codes: vec![0; out * inn],
        scales: vec![0.0; out * ng],
        zeros: vec![0; out * ng],
        g_idx: None,
    };
    for r in 0..out {
        let row = &w[r * inn..(r + 1) * inn];
        for (g, (a, b)) in groups(inn, group).enumerate() {
            let p = params_in(&row[a..b], bits, sym, range);
            q.scales[r * ng + g] = p.scale;
            q.zeros[r * ng + g] = p.zero;
            for (code, &w) in q.codes[r * inn + a..r * inn + b].iter_mut().zip(&row[a..b]) {
                *code = quantize_value(w, p, bits);
            }
        }
    }
    q
}

pub fn minmax(v: &[f32]) -> (f32, f32) {
    v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)))
}

/// Quantize-dequantize ("fake quantization") of one group in place.
pub fn fake_quant_group(v: &mut [f32], bits: u8, sym: bool) {
    fake_quant_group_in(v, bits, sym, Range::WithZero)
}

/// [`fake_quant_group`] on a grid spanning `range`.
pub fn fake_quant_group_in(v: &mut [f32], bits: u8, sym: bool, range: Range) {
    let p = params_in(v, bits, sym, range);
    for x in v.iter_mut() {
        *x = dequantize_value(quantize_value(*x, p, bits), p);
    }
}

/// Fake-quantize a whole `[out][inn]` matrix in place.
pub fn fake_quant(w: &mut [f32], inn: usize, bits: u8, group: usize, sym: bool) {
    use rayon::prelude::*;
    w.par_chunks_mut(inn).for_each(|row| {
        for (a, b) in groups(inn, group) {
            fake_quant_group(&mut row[a..b], bits, sym);
        }
    });
}
