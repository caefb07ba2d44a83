//! GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers", 2022), following IST-DASLab's `gptq.py` (`fasterquant`).
//!
//! The weight is `W[out][in]` (HF layout); GPTQ walks the input channels ("columns") one at a
//! time, rounds column `j` of every row to the grid and spreads the rounding error over the
//! columns not yet quantized through the upper Cholesky factor `U` of `H⁻¹`
//! (`W[:, j+1..] -= (w_j - q_j) / U[j][j] · U[j][j+1..]`). Updates to columns past the current
//! block are batched into one GEMM per block ("lazy batch updates").
//!
//! * Dead input channels (`H[i][i] == 0`) get `H[i][i] = 1` and `W[:, i] = 0`.
//! * Damping: `λ = damp · mean(diag H)` is added to the diagonal.
//! * `act_order`: columns are visited in order of decreasing `diag(H)`.
//! * Grids: the affine grid of [`rtn`] (GPTQ proper), or the zero-free StatsQ (`HalfInt`) and
//!   shift grids (`gptq+statsq`, `gptq+shift`), whose group scale is the aware StatsQ / shift
//!   search weighted by the group's `diag(H)` and whose code is the nearest level.
//! * Affine group parameters are exactly [`rtn::params_of`] (f16-rounded scales), so the returned
//!   [`GroupQ`] reproduces the weights GPTQ computed with. By default they are refitted on the
//!   current (already error-compensated) weights when the walk enters a new group, in walk order;
//!   with `static_groups` they come from the original weight's natural groups before the walk.
//!
//! One departure from `gptq.py`: it refits a group from the weight as it stood at the start of
//! the block, which misses the in-block updates when the group is narrower than the block
//! (e.g. g32 in blocks of 128). We keep every block a whole number of groups instead, so a group
//! is always fitted on fully updated weights. For the default g128 / block 128 both agree, and the
//! result equals the column-by-column algorithm without lazy batching (tests/gptq.rs).
//!
//! Known weak spot: rtn's symmetric 2-bit grid is ternary in practice (`s = max|w|`), and
//! refitting `s` on error-compensated weights inflates it. On synthetic correlated inputs, plain
//! 2-bit symmetric GPTQ ends above RTN, while static groups or act-order stay well below it
//! (tests/gptq.rs).
//!
//! Arithmetic: the Hessian factorisation and the column walk run in f64 (W is widened to f64)
//! for headroom on ill-conditioned Hessians. Values are narrowed to f32 only where they meet the
//! grid (`rtn` works on f32). A 1536×1536 layer takes about 0.43 CPU-seconds in all
//! (docs/linalg.md).
//!
//! Parallelism: every output row is quantized independently (its group parameters and its
//! updates involve only that row), so rows are cut into fixed chunks of `ROWS` (32) that run the
//! whole walk in parallel, each with sequential faer kernels. The chunking does not depend on
//! the thread count, so the result is bit-identical for any number of threads.

use super::grid::{self, GroupGrid, ScalarGrid};
use super::hessian;
use super::recipe::{Core, Recipe};
use super::rtn::{self, Range};
use super::{Grid, GroupQ};
use anyhow::{ensure, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::time::Instant;

/// `gptq`: GPTQ on the affine grid.
pub const GPTQ: Recipe = Recipe {
    name: "gptq",
    help: "GPTQ: second-order error compensation through the Cholesky factor of H⁻¹ (IST-DASLab)",
    awq: false,
    core: Core::Gptq(Grid::Affine),
    propagates: true,
};

/// `gptq+X`: GPTQ's error feedback on the grid of method `grid` (its scales from the grid's
/// diag(H)-weighted fit).
pub const fn on(grid: Recipe, name: &'static str, help: &'static str) -> Recipe {
    Recipe { name, help, awq: false, core: Core::Gptq(grid.grid()), propagates: true }
}

/// Output rows per parallel work item (fixed, so results do not depend on the thread count).
const ROWS: usize = 32;

#[derive(Clone, Copy, Debug)]
pub struct GptqConfig {
    /// Bits per code, 1..=8.
    pub bits: u8,
    /// Input channels per group; `>= in_features` gives one group per row.
    pub group_size: usize,
    /// Symmetric grid (zero point `2^(b-1)`), as [`rtn::params`].
    pub sym: bool,
    /// Visit columns by decreasing `diag(H)` (GPTQ's `--act-order` / `desc_act`).
    pub act_order: bool,
    /// Fit every group's parameters on the original weight before the walk.
    pub static_groups: bool,
    /// Dampening as a fraction of the mean Hessian diagonal (GPTQ's `percdamp`).
    pub damp: f64,
    /// Columns per lazy-update block (GPTQ's `blocksize`).
    pub block: usize,
    /// The grid columns are rounded to: `Affine` (RTN's params, GPTQ proper), or the zero-free
    /// `HalfInt` (StatsQ) / `Shift` grids, whose group scales come from the aware StatsQ / shift
    /// search weighted by `diag(H)` (`gptq+statsq`, `gptq+shift`).
    pub grid: Grid,
    /// [`gptq_on`]: also quantize without error feedback for [`GptqReport::rtn_error`] (NaN
    /// otherwise; [`gptq`] always reports it).
    pub report_baseline: bool,
}

impl GptqConfig {
    /// GPTQ's defaults: no act-order, groups refitted in walk order, damp 0.01, blocks of 128.
    pub fn new(bits: u8, group_size: usize, sym: bool) -> Self {
        Self {
            bits,
            group_size,
            sym,
            act_order: false,
            static_groups: false,
            damp: 0.01,
            block: 128,
            grid: Grid::Affine,
            report_baseline: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqReport {
    /// `tr((W - Q)·H·(W - Q)ᵀ)` of the GPTQ result, with the undamped `H` as given (dead
    /// channels, whose rows of `H` are zero, left out).
    pub h_weighted_error: f64,
    /// The same without error feedback at the same bits / group: plain RTN ([`rtn::quantize`])
    /// on the affine grid, the diag(H)-weighted StatsQ / shift on the zero-free grids.
    pub rtn_error: f64,
    /// Wall time of the whole call (including both error evaluations).
    pub seconds: f64,
}

/// GPTQ-quantize `w[out][inn]` given the layer's input Hessian `h[inn][inn]`
/// (`(2/n)·Σ x·xᵀ`, see [`crate::stats::InputStats::hessian`]). Fails on malformed shapes or
/// settings, non-finite inputs, and a Hessian that is not positive definite after damping.
pub fn gptq(w: &[f32], out: usize, inn: usize, h: &[f64], cfg: &GptqConfig) -> Result<(GroupQ, GptqReport)> {
    let (bits, g) = (cfg.bits, cfg.group_size);
    ensure!((1..=8).contains(&bits), "gptq: bits must be in 1..=8, got {bits}");
    ensure!(cfg.grid == Grid::Affine || bits >= 2, "gptq: the {:?} grid needs at least 2 bits", cfg.grid);
    gptq_with(w, out, inn, h, cfg, &*grid::scalar(cfg.grid, bits, g, cfg.sym, Range::WithZero))
}

/// [`gptq`] on any scalar grid (groups of `grid.group()` columns; `cfg.grid`, `bits`, `sym` and
/// `group_size` unused): the codes and parameters as a [`GroupQ`], with a g_idx under act-order.
pub fn gptq_with<G: ScalarGrid + ?Sized>(
    w: &[f32],
    out: usize,
    n: usize,
    h: &[f64],
    cfg: &GptqConfig,
    cg: &G,
) -> Result<(GroupQ, GptqReport)> {
    let t0 = Instant::now();
    let g = cg.group();
    let mut wk = walk(w, out, n, h, cfg, cg)?;
    let ng = n.div_ceil(g.max(1));
    let mut q = GroupQ::new(out, n, cg.bits(), g, cg.kind(), ng);
    q.codes = std::mem::take(&mut wk.codes);
    for (k, p) in wk.params.iter().enumerate() {
        q.scales[k] = p.scale;
        q.zeros[k] = p.zero;
    }
    debug_assert_eq!(q.scales.len(), out * ng);
    if cfg.act_order && !cfg.static_groups && ng > 1 {
        // Groups follow walk order: original column perm[j] is in group j / g.
        let mut g_idx = vec![0u32; n];
        for (j, &col) in wk.perm.iter().enumerate() {
            g_idx[col] = (j / g) as u32;
        }
        q.g_idx = Some(g_idx);
    }
    let h_weighted_error = wk.err_sq - wk.lambda * wk.sq_norm(w, &q.dequantize());
    let rtn_q = grid::quantize(cg, w, out, n, Some(&wk.imp)).dequantize();
    let rtn_error = l_error(w, &rtn_q, &wk.perm, &wk.dead, &wk.l) - wk.lambda * wk.sq_norm(w, &rtn_q);
    Ok((q, GptqReport { h_weighted_error, rtn_error, seconds: t0.elapsed().as_secs_f64() }))
}

/// GPTQ's walk on any [`GroupGrid`] (the GGUF block grids): the codes `[out][inn]`, the fitted
/// parameters `[out][inn / group]` (groups in natural column order: act-order needs
/// `static_groups`, since the grid has no g_idx) and the error report (the baseline is the grid's
/// own fit on the original weight, without error feedback). `cfg.group_size` is ignored.
pub fn gptq_on<G: GroupGrid + ?Sized>(
    w: &[f32],
    out: usize,
    inn: usize,
    h: &[f64],
    cfg: &GptqConfig,
    grid: &G,
) -> Result<(Vec<u8>, Vec<G::Params>, GptqReport)> {
    let t0 = Instant::now();
    let g = grid.group();
    ensure!(!cfg.act_order || cfg.static_groups, "gptq: act-order on a grid without g_idx needs static groups");
    ensure!(g > 0 && inn.is_multiple_of(g), "gptq: {inn} columns do not split into groups of {g}");
    let wk = walk(w, out, inn, h, cfg, grid)?;
    let ng = inn / g;
    let deq_of = |codes: &[u8], params: &[G::Params]| -> Vec<f32> {
        let mut d = vec![0f32; out * inn];
        d.par_chunks_mut(inn).enumerate().for_each(|(r, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                *v = grid.value(codes[r * inn + c], &params[r * ng + c / g], c % g);
            }
        });
        d
    };
    let deq = deq_of(&wk.codes, &wk.params);
    let h_weighted_error = wk.err_sq - wk.lambda * wk.sq_norm(w, &deq);
    if !cfg.report_baseline {
        return Ok((wk.codes, wk.params, GptqReport { h_weighted_error, rtn_error: f64::NAN, seconds: t0.elapsed().as_secs_f64() }));
    }
    // Baseline: the grid's fit of every group of the original weight, nearest codes.
    let (base_codes, base_params) = grid::fit_rows(grid, w, out, inn, Some(&wk.imp));
    let base = deq_of(&base_codes, &base_params);
    let rtn_error = l_error(w, &base, &wk.perm, &wk.dead, &wk.l) - wk.lambda * wk.sq_norm(w, &base);
    Ok((wk.codes, wk.params, GptqReport { h_weighted_error, rtn_error, seconds: t0.elapsed().as_secs_f64() }))
}

/// What the column walk leaves: codes, per-(row, group) parameters and what the error reports need.
struct Walk<P> {
    codes: Vec<u8>,
    params: Vec<P>,
    /// Σ err² over the walk (GPTQ's own loss in the damped metric).
    err_sq: f64,
    lambda: f64,
    perm: Vec<usize>,
    dead: Vec<bool>,
    imp: Vec<f32>,
    l: Mat<f64>,
}

impl<P> Walk<P> {
    /// `‖W − deq‖²` over live channels.
    fn sq_norm(&self, w: &[f32], deq: &[f32]) -> f64 {
        let n = self.dead.len();
        w.chunks(n)
            .zip(deq.chunks(n))
            .map(|(a, b)| (0..n).filter(|&i| !self.dead[i]).map(|i| (a[i] as f64 - b[i] as f64).powi(2)).sum::<f64>())
            .sum()
    }
}

fn walk<G: GroupGrid + ?Sized>(w: &[f32], out: usize, inn: usize, h: &[f64], cfg: &GptqConfig, cg: &G) -> Result<Walk<G::Params>> {
    let (n, g) = (inn, cg.group());
    ensure!(out > 0 && n > 0, "gptq: empty weight ({out}x{n})");
    ensure!(w.len() == out * n, "gptq: weight has {} values, expected {out}x{n}", w.len());
    ensure!(h.len() == n * n, "gptq: Hessian has {} values, expected {n}x{n}", h.len());
    ensure!(g > 0 && cfg.block > 0, "gptq: group size and block size must be at least 1");
    ensure!(cfg.damp.is_finite() && cfg.damp >= 0.0, "gptq: damp must be finite and >= 0, got {}", cfg.damp);
    ensure!(w.iter().all(|v| v.is_finite()), "gptq: weight has non-finite values");
    ensure!(h.iter().all(|v| v.is_finite()), "gptq: Hessian has non-finite values");
    let ng = n.div_ceil(g);
    let sub = cg.sub().clamp(1, g);

    // Dead channels, walk order, damped Hessian in walk order, and U = chol(H⁻¹)ᵀ.
    let dead = hessian::dead(h, n);
    let diag = |i: usize| if dead[i] { 1.0 } else { h[i * n + i] };
    // diag(H) per original column (0 on dead ones), the zero-free grids' importance.
    let imp: Vec<f32> = (0..n).map(|i| if dead[i] { 0.0 } else { h[i * n + i] as f32 }).collect();
    let mut perm: Vec<usize> = (0..n).collect();
    if cfg.act_order {
        perm.sort_by(|&a, &b| diag(b).total_cmp(&diag(a))); // stable: ties keep index order
    }
    let hessian::Prepared { lambda, l, u } = hessian::prepare(n, |a, b| h[a * n + b], &dead, &perm, cfg.damp)?;

    // Walk order: group of walk position j, and whether params are refitted there.
    let refit = !cfg.static_groups;
    let group_at = |j: usize| if refit { j / g } else { perm[j] / g };
    // Position of walk column j inside its group.
    let pos_at = |j: usize| if refit { j % g } else { perm[j] % g };
    // A whole number of groups per block, so refits see fully updated weights (module docs).
    let bs = if refit && ng > 1 {
        if g >= cfg.block {
            g
        } else {
            cfg.block / g * g
        }
    } else {
        cfg.block
    };

    let mut codes_all = vec![0u8; out * n];
    let mut params_all: Vec<Option<G::Params>> = vec![None; out * ng];
    // Σ err² per chunk, err_j = (w_j - q_j) / U[j][j] (see the error report below).
    let err_sq: Vec<f64> = codes_all
        .par_chunks_mut(ROWS * n)
        .zip(params_all.par_chunks_mut(ROWS * ng))
        .enumerate()
        .map(|(c, (codes, params))| {
            let m = codes.len() / n;
            let w = &w[c * ROWS * n..(c * ROWS + m) * n];
            // This chunk's rows in walk order, dead channels zeroed.
            let mut wc: Vec<f64> = (0..m * n)
                .map(|k| {
                    let col = perm[k % n];
                    if dead[col] {
                        0.0
                    } else {
                        w[k / n * n + col] as f64
                    }
                })
                .collect();
            if !refit {
                for (r, row) in w.chunks(n).enumerate() {
                    let row: Vec<f32> = row.iter().enumerate().map(|(i, &v)| if dead[i] { 0.0 } else { v }).collect();
                    for (k, (a, b)) in rtn::groups(n, g).enumerate() {
                        params[r * ng + k] = Some(cg.fit(&row[a..b], Some(&imp[a..b])));
                    }
                }
            }
            let mut err = vec![0f64; m * bs];
            let mut err_sq = 0f64;
            for i1 in (0..n).step_by(bs) {
                let i2 = (i1 + bs).min(n);
                let b = i2 - i1;
                for r in 0..m {
                    let row = &mut wc[r * n..(r + 1) * n];
                    for j in i1..i2 {
                        let k = r * ng + group_at(j);
                        if refit && j % g == 0 {
                            let end = (j + g).min(n);
                            let cur: Vec<f32> = row[j..end].iter().map(|&v| v as f32).collect();
                            let cur_imp: Vec<f32> = perm[j..end].iter().map(|&c| imp[c]).collect();
                            params[k] = Some(cg.fit(&cur, Some(&cur_imp)));
                        } else if refit && j % sub == 0 {
                            let end = (j + sub).min(n);
                            let cur: Vec<f32> = row[j..end].iter().map(|&v| v as f32).collect();
                            let cur_imp: Vec<f32> = perm[j..end].iter().map(|&c| imp[c]).collect();
                            cg.refit_sub(params[k].as_mut().expect("group fitted"), (j % g) / sub, &cur, &cur_imp);
                        }
                        let p = params[k].as_ref().expect("group fitted");
                        let pos = pos_at(j);
                        let code = cg.code(row[j] as f32, p, pos);
                        codes[r * n + perm[j]] = code;
                        let e = (row[j] - cg.value(code, p, pos) as f64) / u[j * n + j];
                        err[r * b + j - i1] = e;
                        for (x, &hij) in row[j + 1..i2].iter_mut().zip(&u[j * n + j + 1..j * n + i2]) {
                            *x -= e * hij;
                        }
                    }
                }
                // Lazy batch update of the columns after the block: W[:, i2..] -= Err · U[i1..i2, i2..].
                if i2 < n {
                    let dst = MatMut::from_row_major_slice_mut(&mut wc, m, n).submatrix_mut(0, i2, m, n - i2);
                    let lhs = MatRef::from_row_major_slice(&err[..m * b], m, b);
                    let rhs = MatRef::from_row_major_slice(&u, n, n).submatrix(i1, i2, b, n - i2);
                    matmul(dst, Accum::Add, lhs, rhs, -1.0, Par::Seq);
                }
                err_sq += err[..m * b].iter().map(|e| e * e).sum::<f64>();
            }
            err_sq
        })
        .collect();
    let params = params_all.into_iter().map(|p| p.expect("every group fitted")).collect();

    // Errors in the undamped metric through the damped H_d = H + λI (dead diagonals 1 + λ, where
    // E is taken as zero): tr(E·H·Eᵀ) = tr(E·H_d·Eᵀ) - λ‖E‖². For GPTQ, E = Err·U exactly
    // (column k receives err_j·U[j][k] from every j < k, so w_k - q_k = Σ_{j≤k} err_j·U[j][k]),
    // and H_d = U⁻¹·U⁻ᵀ gives tr(E·H_d·Eᵀ) = ‖Err‖²: GPTQ's own loss, at no extra cost. For RTN,
    // tr(E·H_d·Eᵀ) = ‖E·L‖² with H_d = L·Lᵀ, half the work of E·H.
    Ok(Walk { codes: codes_all, params, err_sq: err_sq.iter().sum(), lambda, perm, dead, imp, l })
}

/// `‖E·L‖²` for `E = a - b` (`[out][n]`, dead channels zeroed) in walk order `perm` and the lower
/// triangular `L`: column block `[c0, c1)` of `E·L` only needs `E[:, c0..]·L[c0.., c0..c1]`.
/// Fixed row chunks with sequential kernels, summed in order.
fn l_error(a: &[f32], b: &[f32], perm: &[usize], dead: &[bool], l: &Mat<f64>) -> f64 {
    const COLS: usize = 128;
    let n = perm.len();
    let per_chunk: Vec<f64> = a
        .par_chunks(ROWS * n)
        .zip(b.par_chunks(ROWS * n))
        .map(|(a, b)| {
            let m = a.len() / n;
            let e: Vec<f64> = (0..m * n)
                .map(|k| {
                    let c = perm[k % n];
                    if dead[c] {
                        0.0
                    } else {
                        a[k / n * n + c] as f64 - b[k / n * n + c] as f64
                    }
                })
                .collect();
            let em = MatRef::from_row_major_slice(&e, m, n);
            let mut el = Mat::<f64>::zeros(m, COLS);
            (0..n)
                .step_by(COLS)
                .map(|c0| {
                    let c1 = (c0 + COLS).min(n);
                    let dst = el.as_mut().submatrix_mut(0, 0, m, c1 - c0);
                    matmul(
                        dst,
                        Accum::Replace,
                        em.submatrix(0, c0, m, n - c0),
                        l.as_ref().submatrix(c0, c0, n - c0, c1 - c0),
                        1.0,
                        Par::Seq,
                    );
                    el.as_ref().submatrix(0, 0, m, c1 - c0).squared_norm_l2()
                })
                .sum::<f64>()
        })
        .collect();
    per_chunk.iter().sum()
}
