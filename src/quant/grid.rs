//! The grid interface every quantizer is written against (after IST-DASLab's `quant.py`, whose
//! quantizer GPTQ calls without knowing it): a grid fits one group's parameters, codes a value
//! and decodes a code. The affine grid ([`super::rtn::Affine`]), StatsQ's half-integer grid
//! ([`super::statsq::HalfInt`]), the shift grid ([`super::shift::Shift`]) and every llama.cpp
//! block type ([`super::gguf::BlockGrid`]) implement it; round-to-nearest ([`quantize`],
//! [`fit_rows`]), AWQ's fake quantization ([`fake_quant_row`]) and GPTQ's column walk
//! ([`super::gptq::gptq_on`]) take any of them.
//!
//! A new scalar grid is one file implementing [`ScalarGrid`] plus its line in [`scalar`].

use super::rtn::{self, groups, Range};
use super::{shift, statsq};
use crate::codes::{Grid, GroupQ};
use rayon::prelude::*;

pub use super::rtn::Params;

/// A quantization grid: how a group's parameters are fitted, which code a value gets and which
/// value a code stands for. `k` is the value's position inside its group.
pub trait GroupGrid: Send + Sync {
    type Params: Clone + Send + Sync;
    /// Values (input columns) that share fitted parameters.
    fn group(&self) -> usize;
    /// Values of a sub-group whose parameters [`GroupGrid::refit_sub`] may refit on updated
    /// weights (GPTQ's walk entering it); the group itself by default: no refit.
    fn sub(&self) -> usize {
        self.group()
    }
    /// The parameters of one group `v`; `imp` (one per value) is the importance an aware fit
    /// weights the error by, `None` for the plain fit.
    fn fit(&self, v: &[f32], imp: Option<&[f32]>) -> Self::Params;
    fn refit_sub(&self, _p: &mut Self::Params, _s: usize, _v: &[f32], _imp: &[f32]) {}
    fn code(&self, w: f32, p: &Self::Params, k: usize) -> u8;
    fn value(&self, code: u8, p: &Self::Params, k: usize) -> f32;
    /// The codes of a whole group (a grid may share work across the values).
    fn code_group(&self, v: &[f32], p: &Self::Params, out: &mut [u8]) {
        for (k, (q, &w)) in out.iter_mut().zip(v).enumerate() {
            *q = self.code(w, p, k);
        }
    }
}

/// A grid whose group parameters are one scale and one integer zero point: what a [`GroupQ`]
/// stores, tagged with [`ScalarGrid::kind`].
pub trait ScalarGrid: GroupGrid<Params = Params> {
    fn kind(&self) -> Grid;
    fn bits(&self) -> u8;
}

/// The scalar grid of a [`Grid`] tag: `b`-bit codes in groups of `group`; `sym` and `range`
/// shape the affine grid only. One line per grid.
pub fn scalar(kind: Grid, bits: u8, group: usize, sym: bool, range: Range) -> Box<dyn ScalarGrid> {
    match kind {
        Grid::Affine => Box::new(rtn::Affine { bits, group, sym, range }),
        Grid::HalfInt => Box::new(statsq::HalfInt { bits, group }),
        Grid::Shift => Box::new(shift::Shift { bits, group }),
    }
}

/// Round to nearest on any grid: every row of `w[out][inn]` cut into groups (the last one shorter
/// when the group does not divide `inn`), each fitted (with `imp[a..b]` when given) and coded.
/// Returns the codes `[out][inn]` and parameters `[out][n_groups]`.
pub fn fit_rows<G: GroupGrid + ?Sized>(grid: &G, w: &[f32], out: usize, inn: usize, imp: Option<&[f32]>) -> (Vec<u8>, Vec<G::Params>) {
    let group = grid.group();
    let mut codes = vec![0u8; out * inn];
    if inn == 0 {
        return (codes, Vec::new());
    }
    let params: Vec<Vec<G::Params>> = codes
        .par_chunks_mut(inn)
        .enumerate()
        .map(|(r, qr)| {
            let row = &w[r * inn..(r + 1) * inn];
            groups(inn, group)
                .map(|(a, b)| {
                    let p = grid.fit(&row[a..b], imp.map(|x| &x[a..b]));
                    grid.code_group(&row[a..b], &p, &mut qr[a..b]);
                    p
                })
                .collect()
        })
        .collect();
    (codes, params.into_iter().flatten().collect())
}

/// [`fit_rows`] on a scalar grid, as a [`GroupQ`].
pub fn quantize<G: ScalarGrid + ?Sized>(grid: &G, w: &[f32], out: usize, inn: usize, imp: Option<&[f32]>) -> GroupQ {
    let group = grid.group();
    let mut q = GroupQ::new(out, inn, grid.bits(), group, grid.kind(), inn.div_ceil(group));
    let (codes, params) = fit_rows(grid, w, out, inn, imp);
    q.codes = codes;
    for (k, p) in params.iter().enumerate() {
        q.scales[k] = p.scale;
        q.zeros[k] = p.zero;
    }
    q
}

/// Quantize-dequantize ("fake quantization") of one row in place, group by group.
pub fn fake_quant_row<G: GroupGrid + ?Sized>(grid: &G, row: &mut [f32], imp: Option<&[f32]>) {
    let group = grid.group();
    let mut codes = vec![0u8; group.min(row.len())];
    for (a, b) in groups(row.len(), group) {
        let p = grid.fit(&row[a..b], imp.map(|x| &x[a..b]));
        let c = &mut codes[..b - a];
        grid.code_group(&row[a..b], &p, c);
        for (k, (x, &q)) in row[a..b].iter_mut().zip(c.iter()).enumerate() {
            *x = grid.value(q, &p, k);
        }
    }
}
