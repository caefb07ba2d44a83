//! AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization"), following AutoAWQ:
//! for every scale group of the architecture table, search `s = mean|x|^α` (or the duo form
//! `mean|x|^α / mean|ŵ|^(1-α)`) over a grid of α, scoring each candidate by the output of the
//! module the group feeds (the attention block for q/k/v, the MLP for gate/up, the linear itself
//! otherwise); fold the best `s` into the producer of the group's input; then search a per-group
//! clipping range for every linear but q/k. Departures from AutoAWQ are listed in docs/awq.md.

use super::grid::{self, GroupGrid};
use super::recipe::{Core, Recipe};
use super::rtn::{self, Range};
use crate::arch::{Input, Inspect, Producer, ScaleGroup};
use crate::codes::Grid;
use crate::linalg::matmul_bt;
use crate::model::{LayerWeights, Model};
use crate::stats::InputStats;
use rayon::prelude::*;
use std::collections::HashMap;

/// `awq`: AWQ's scale and clip search, then RTN on the grid spanning `--awq-range`; later layers
/// see its quantized outputs.
pub const AWQ: Recipe = Recipe {
    name: "awq",
    help: "Activation-aware scaling + clip search, then RTN",
    awq: true,
    core: Core::Round { grid: Grid::Affine, aware: false },
    propagates: true,
};

/// `awq+X`: AWQ's scale search (and clip search, on the affine grid) in front of method `core`.
pub const fn then(core: Recipe, name: &'static str, help: &'static str) -> Recipe {
    Recipe { name, help, awq: true, ..core }
}

/// Rows of the clip search's sample, strided over every calibration token. AutoAWQ's
/// `n_sample_token` is 512; 4096 (every token at 4 × 512 or 8 × 512 calibration tokens) measured
/// better on SmolLM2 at 3 bits (docs/awq.md). The clip error goes through the group's Gram matrix,
/// so more rows cost only the Gram's `n·gs·in` multiply-adds per linear.
pub const CLIP_TOKENS: usize = 4096;

/// Coarse step of the α search for the groups scored by the MLP's or a linear's output, whose
/// loss is smooth and unimodal in α (docs/awq.md): 7 + 4 of the 20 grid points instead of 20. The
/// attention block's loss is not (3-bit q/k rounding makes it jump between neighbouring α), so
/// its group is searched on every grid point.
pub const SMOOTH_COARSE: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct AwqConfig {
    pub bits: u8,
    pub group: usize,
    pub sym: bool,
    /// The span of an asymmetric group's grid (search, clip and final quantization alike).
    pub range: Range,
    /// Number of α values in [0, 1).
    pub n_grid: usize,
    /// Step of the first pass over the α grid (1: every grid point). With a step `c > 1`, every
    /// `c`-th point is scored, then the `c - 1` neighbours on each side of the best of them.
    pub coarse: usize,
    /// Divide by a weight statistic too (AutoAWQ's `duo_scaling`).
    pub duo: bool,
    /// Run the clip search.
    pub clip: bool,
    /// Largest range shrink tried by the clip search (AutoAWQ: 10 steps of 5%, i.e. up to 45%).
    pub clip_steps: usize,
    /// Shrink the two ends of a group's range separately (coordinate search after AutoAWQ's
    /// symmetric one); `false` is AutoAWQ's symmetric clip.
    pub clip_asym: bool,
}

impl AwqConfig {
    pub fn new(bits: u8, group: usize, sym: bool, range: Range) -> Self {
        Self { bits, group, sym, range, n_grid: 20, coarse: 1, duo: true, clip: true, clip_steps: 10, clip_asym: true }
    }
}

/// Mean over output rows of `|w| / max|w|` of its group (AutoAWQ's `w_mean`), per input channel.
fn weight_mean(ws: &[&[f32]], inn: usize, group: usize) -> Vec<f32> {
    let mut acc = vec![0f64; inn];
    let mut rows = 0usize;
    for w in ws {
        for row in w.chunks(inn) {
            for (a, b) in rtn::groups(inn, group) {
                let m = row[a..b].iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                for c in a..b {
                    acc[c] += (row[c].abs() / m) as f64;
                }
            }
            rows += 1;
        }
    }
    acc.iter().map(|v| (v / rows as f64) as f32).collect()
}

/// Fake quantization of one weight row (`inn` values, already multiplied by the candidate
/// channel scales `s`, the second argument) by the method that follows the search.
pub type RowFakeQuant<'a> = &'a (dyn Fn(&mut [f32], &[f32]) + Sync);

/// An owned [`RowFakeQuant`].
pub type BoxedRowFakeQuant = Box<dyn Fn(&mut [f32], &[f32]) + Sync>;

/// Fake quantization of a row on `grid`, group by group, the grid's fit weighted by `imp(s)` of
/// the candidate scales `s` (`None`: the plain fit): the quantizer a search scores against.
pub fn grid_row<G: GroupGrid + ?Sized + 'static>(
    grid: Box<G>,
    imp: impl Fn(&[f32]) -> Option<Vec<f32>> + Sync + 'static,
) -> BoxedRowFakeQuant {
    Box::new(move |row: &mut [f32], s: &[f32]| grid::fake_quant_row(&*grid, row, imp(s).as_deref()))
}

/// RTN fake quantization of a row, group by group: the quantizer AWQ itself uses.
pub fn rtn_row(bits: u8, group: usize, sym: bool, range: Range) -> impl Fn(&mut [f32], &[f32]) + Sync {
    let g = rtn::Affine { bits, group, sym, range };
    move |row: &mut [f32], _s: &[f32]| grid::fake_quant_row(&g, row, None)
}

/// The loss of one candidate: the group's fake-quantized weights (one `[out][inn]` matrix per
/// linear, in the group's order) → a number to minimise.
pub type Loss<'a> = dyn FnMut(&[Vec<f32>]) -> f64 + 'a;

/// Search the input-channel scales of one group over the α grid. `ws` are the group's weights;
/// every candidate `Q(W·diag(s))·diag(s)⁻¹` (with `fq`, the quantizer the weights will get: RTN
/// for AWQ, aware StatsQ or shift for `awq+statsq`/`awq+shift`) is scored by `loss`. Returns the
/// best `s` (all ones when no candidate has a finite loss) and its loss.
pub fn search_scale(cfg: &AwqConfig, x_mean: &[f32], ws: &[&[f32]], inn: usize, fq: RowFakeQuant, loss: &mut Loss) -> (Vec<f32>, f64) {
    let w_mean = if cfg.duo { weight_mean(ws, inn, cfg.group) } else { vec![1.0; inn] };
    let mut cand: Vec<Vec<f32>> = ws.iter().map(|w| w.to_vec()).collect();
    let mut losses = vec![f64::NAN; cfg.n_grid];
    let mut score = |k: usize, losses: &mut [f64]| {
        if k >= cfg.n_grid || !losses[k].is_nan() {
            return;
        }
        let s = grid_scales(cfg, k, x_mean, &w_mean);
        for (c, w) in cand.iter_mut().zip(ws) {
            c.copy_from_slice(w);
            c.par_chunks_mut(inn).for_each(|row| {
                row.iter_mut().zip(&s).for_each(|(w, s)| *w *= s);
                fq(row, &s);
                row.iter_mut().zip(&s).for_each(|(w, s)| *w /= s);
            });
        }
        losses[k] = loss(&cand);
    };
    let step = cfg.coarse.max(1);
    for k in (0..cfg.n_grid).step_by(step) {
        score(k, &mut losses);
    }
    // The best scored grid point (the first of equals; NaN losses never win).
    let argmin = |losses: &[f64]| -> Option<usize> {
        (0..losses.len()).filter(|&k| losses[k].is_finite()).fold(None, |b: Option<usize>, k| match b {
            Some(b) if losses[b] <= losses[k] => Some(b),
            _ => Some(k),
        })
    };
    if step > 1 {
        // Then the neighbours of the coarse pass's best, within one coarse step.
        if let Some(b) = argmin(&losses) {
            for d in 1..step {
                if let Some(k) = b.checked_sub(d) {
                    score(k, &mut losses);
                }
                score(b + d, &mut losses);
            }
        }
    }
    match argmin(&losses) {
        Some(k) => (grid_scales(cfg, k, x_mean, &w_mean), losses[k]),
        None => (vec![1.0; inn], f64::INFINITY),
    }
}

/// The candidate scales of grid point `k`: `s = max(x̄^α / (w̄^(1-α) + 1e-4), 1e-4)` (or `x̄^α`
/// without duo scaling), `α = k / n_grid`, normalised by `sqrt(max(s)·min(s))`.
fn grid_scales(cfg: &AwqConfig, k: usize, x_mean: &[f32], w_mean: &[f32]) -> Vec<f32> {
    let a = k as f32 / cfg.n_grid as f32;
    let mut s: Vec<f32> = x_mean
        .iter()
        .zip(w_mean)
        .map(|(&x, &w)| {
            let v = if cfg.duo { x.powf(a) / (w.powf(1.0 - a) + 1e-4) } else { x.powf(a) };
            let v = v.max(1e-4);
            // AutoAWQ sets non-finite scales to 1.
            if v.is_finite() {
                v
            } else {
                1.0
            }
        })
        .collect();
    let (mn, mx) = rtn::minmax(&s);
    let norm = (mn * mx).sqrt();
    s.iter_mut().for_each(|v| *v /= norm);
    s
}

/// Mean squared difference of two equally long outputs, in f64.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    a.par_chunks(1 << 14)
        .zip(b.par_chunks(1 << 14))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>())
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// The loss AutoAWQ scores a group's candidates by: the MSE of the output of the module the group
/// feeds ([`ScaleGroup::inspect`]), the candidate weights in place of the float ones, against the
/// float layer `lw`'s. `x` holds the group's input rows: whole windows of `seq_len` tokens for the
/// attention block, any rows otherwise.
pub fn module_loss<'a>(model: &'a Model, lw: &LayerWeights, g: &ScaleGroup, x: &'a [f32], seq_len: usize) -> Box<Loss<'a>> {
    let g = *g;
    match g.inspect {
        Inspect::Linears => {
            let ws: Vec<&[f32]> = g.linears.iter().map(|n| lw.get(n).w.as_slice()).collect();
            let inn = lw.get(g.linears[0]).inn;
            let n = x.len() / inn;
            let cat = move |ws: &[&[f32]]| -> (Vec<f32>, usize) {
                let w: Vec<f32> = ws.iter().flat_map(|w| w.iter().copied()).collect();
                let out = w.len() / inn;
                (w, out)
            };
            let (w, out) = cat(&ws);
            let y = matmul_bt(x, n, inn, &w, out);
            Box::new(move |cand: &[Vec<f32>]| {
                let refs: Vec<&[f32]> = cand.iter().map(|c| c.as_slice()).collect();
                let (wq, out) = cat(&refs);
                mse(&y, &matmul_bt(x, n, inn, &wq, out))
            })
        }
        Inspect::Attention | Inspect::Mlp => {
            let run = move |l: &LayerWeights| match g.inspect {
                Inspect::Attention => model.attention_output(l, x, seq_len),
                _ => model.mlp_output(l, x),
            };
            let y = run(lw);
            let mut scratch = lw.clone();
            let names = g.linears;
            Box::new(move |cand: &[Vec<f32>]| {
                for (n, c) in names.iter().zip(cand) {
                    scratch.get_mut(n).w.copy_from_slice(c);
                }
                mse(&y, &run(&scratch))
            })
        }
    }
}

/// AWQ's scale stage of one layer, in AutoAWQ's order: every scale group of the family for which
/// `search_of` gives a config and quantizer is searched ([`search_scale`]; coarse-to-fine with
/// [`SMOOTH_COARSE`] but for the attention group), each candidate scored by [`module_loss`]
/// against the float layer on the group input's whole sampled windows; then the best scales are
/// folded into `lw`. Returns the scales folded per input.
pub fn scale_layer(
    model: &Model,
    lw: &mut LayerWeights,
    stats: &HashMap<Input, InputStats>,
    search_of: &dyn Fn(&ScaleGroup) -> Option<(AwqConfig, BoxedRowFakeQuant)>,
) -> HashMap<Input, Vec<f32>> {
    let gqa = model.cfg.num_kv_heads != model.cfg.num_heads;
    let fp = lw.clone();
    let mut found = Vec::new();
    for g in model.cfg.family.scale_groups(gqa) {
        let Some((cfg, fq)) = search_of(&g) else { continue };
        let cfg = AwqConfig { coarse: if g.inspect == Inspect::Attention { 1 } else { SMOOTH_COARSE }, ..cfg };
        let st = &stats[&g.input];
        let ws: Vec<&[f32]> = g.linears.iter().map(|n| fp.get(n).w.as_slice()).collect();
        let mut loss = module_loss(model, &fp, &g, &st.windows, st.seq_len);
        let (s, _) = search_scale(&cfg, &st.mean_abs(), &ws, st.dim, fq.as_ref(), &mut loss);
        found.push((g, s));
    }
    let mut folded = HashMap::new();
    for (g, s) in found {
        apply_scale(lw, &g, &s);
        folded.insert(g.input, s);
    }
    folded
}

/// AWQ's clip stage of one layer: every linear of `lw` but q/k ([`clips`]) for which `clip_of`
/// gives a config, whether or not a scale group covers it (o_proj under GQA is in none), is
/// clipped ([`clip`]) on the strided sample of its input (every calibration window), divided by
/// the scales `folded` into that input.
pub fn clip_layer(
    lw: &mut LayerWeights,
    stats: &HashMap<Input, InputStats>,
    folded: &HashMap<Input, Vec<f32>>,
    clip_of: &dyn Fn(&str) -> Option<AwqConfig>,
) {
    for l in lw.linears.iter_mut() {
        let Some(cfg) = clip_of(l.spec.name).filter(|c| c.clip && clips(l.spec.name)) else { continue };
        let st = &stats[&l.spec.input];
        let mut x = st.strided.clone();
        if let Some(s) = folded.get(&l.spec.input) {
            x.par_chunks_mut(st.dim).for_each(|r| r.iter_mut().zip(s).for_each(|(v, s)| *v /= s));
        }
        clip(&cfg, &mut l.w, st.dim, &x, st.strided_rows());
    }
}

/// Fold `s` into the layer: the group's linears' input columns ×s, the producer ÷s.
pub fn apply_scale(lw: &mut LayerWeights, g: &ScaleGroup, s: &[f32]) {
    for name in g.linears {
        let l = lw.get_mut(name);
        let inn = l.inn;
        l.w.par_chunks_mut(inn).for_each(|row| row.iter_mut().zip(s).for_each(|(w, s)| *w *= s));
    }
    match g.producer {
        Producer::Norm(n) => lw.norm_mut(n).iter_mut().zip(s).for_each(|(w, s)| *w /= s),
        Producer::Linear(n) => {
            let l = lw.get_mut(n);
            let inn = l.inn;
            for (r, row) in l.w.chunks_mut(inn).enumerate() {
                row.iter_mut().for_each(|w| *w /= s[r]);
            }
            if let Some(b) = &mut l.bias {
                b.iter_mut().zip(s).for_each(|(b, s)| *b /= s);
            }
        }
    }
}

/// Per (row, group) clipping search: clamp each group to `[-(1 - i/20)·m, (1 - j/20)·m]`,
/// `m = max|w|`, for shrinks `i, j` in 0..clip_steps, and keep the pair minimising
/// `E_x[(x_g·(Q(w_g) - w_g))²]` over the `n` rows of `x`, evaluated through the group's Gram
/// matrix `X_gᵀX_g` (`dᵀ·G·d` for `d = Q(w_g) - w_g`, all rows and candidates of a block in one
/// GEMM). The pairs tried: AutoAWQ's symmetric `i = j`; with [`AwqConfig::clip_asym`], then every
/// `i` with the best `j`, then every `j` with the new `i`. Applies the clamp to `w` in place.
pub fn clip(cfg: &AwqConfig, w: &mut [f32], inn: usize, x: &[f32], n: usize) {
    /// Output rows per task.
    const BLOCK: usize = 32;
    let grams: Vec<(usize, usize, Vec<f32>)> = rtn::groups(inn, cfg.group)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(a, b)| {
            let gs = b - a;
            let mut xt = vec![0f32; gs * n];
            for r in 0..n {
                for c in a..b {
                    xt[(c - a) * n + r] = x[r * inn + c];
                }
            }
            let mut g = vec![0f32; gs * gs];
            crate::linalg::matmul_bt_seq(&mut g, &xt, gs, n, &xt, gs);
            (a, b, g)
        })
        .collect();
    let (bits, sym, range, steps) = (cfg.bits, cfg.sym, cfg.range, cfg.clip_steps);
    let shrink = |i: usize| 1.0 - i as f32 / 20.0;
    w.par_chunks_mut(BLOCK * inn).for_each(|blk| {
        let rows = blk.len() / inn;
        for (a, b, g) in &grams {
            let gs = b - a;
            let maxes: Vec<f32> = (0..rows).map(|r| blk[r * inn + a..r * inn + b].iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
            // The error dᵀ·G·d, d = Q(clamp(w, -lo·m, hi·m)) - w, of candidate shrinks (lo, hi)
            // for every row, all rows and candidates in one GEMM.
            let errors = |cands: &[Vec<(usize, usize)>]| -> Vec<Vec<f64>> {
                let nc = cands[0].len();
                let mut d = vec![0f32; rows * nc * gs];
                for r in 0..rows {
                    let orig = &blk[r * inn + a..r * inn + b];
                    for (ci, &(i, j)) in cands[r].iter().enumerate() {
                        let (lo, hi) = (-maxes[r] * shrink(i), maxes[r] * shrink(j));
                        let q = &mut d[(r * nc + ci) * gs..(r * nc + ci + 1) * gs];
                        q.iter_mut().zip(orig).for_each(|(q, w)| *q = w.clamp(lo, hi));
                        rtn::fake_quant_group_in(q, bits, sym, range);
                        q.iter_mut().zip(orig).for_each(|(q, w)| *q -= w);
                    }
                }
                let mut e = vec![0f32; rows * nc * gs];
                crate::linalg::matmul_bt_seq(&mut e, &d, rows * nc, gs, g, gs);
                (0..rows)
                    .map(|r| {
                        (0..nc)
                            .map(|ci| {
                                let k = (r * nc + ci) * gs;
                                d[k..k + gs].iter().zip(&e[k..k + gs]).map(|(a, b)| (a * b) as f64).sum()
                            })
                            .collect()
                    })
                    .collect()
            };
            // First of the smallest errors.
            let pick = |cands: &[Vec<(usize, usize)>], errs: &[Vec<f64>]| -> Vec<(usize, usize)> {
                (0..rows)
                    .map(|r| {
                        let mut best = 0;
                        for ci in 1..errs[r].len() {
                            if errs[r][ci] < errs[r][best] {
                                best = ci;
                            }
                        }
                        cands[r][best]
                    })
                    .collect()
            };
            // AutoAWQ's symmetric shrinks; then, for the asymmetric search, the low end with the
            // high one fixed, and the high end with the new low one fixed.
            let sym_c: Vec<Vec<(usize, usize)>> = vec![(0..steps).map(|i| (i, i)).collect(); rows];
            let mut best = pick(&sym_c, &errors(&sym_c));
            if cfg.clip_asym {
                let lo_c: Vec<Vec<(usize, usize)>> = best.iter().map(|&(_, j)| (0..steps).map(|i| (i, j)).collect()).collect();
                best = pick(&lo_c, &errors(&lo_c));
                let hi_c: Vec<Vec<(usize, usize)>> = best.iter().map(|&(i, _)| (0..steps).map(|j| (i, j)).collect()).collect();
                best = pick(&hi_c, &errors(&hi_c));
            }
            for (r, &(i, j)) in best.iter().enumerate() {
                let (lo, hi) = (-maxes[r] * shrink(i), maxes[r] * shrink(j));
                blk[r * inn + a..r * inn + b].iter_mut().for_each(|w| *w = w.clamp(lo, hi));
            }
        }
    });
}

/// Whether the clip search runs for a linear (AutoAWQ skips q and k: their error is shaped by
/// the softmax, not by a plain output MSE).
pub fn clips(name: &str) -> bool {
    !matches!(name, "self_attn.q_proj" | "self_attn.k_proj")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Needs;

    /// `search_scale` on a loss that is a known function of α: channel means `[e, 1]` without
    /// duo scaling give `s₀/s₁ = e^α`, which the quantizer callback sees. Returns the chosen α
    /// and every α scored.
    fn search_on(coarse: usize, loss_of: impl Fn(f64) -> f64) -> (f64, Vec<f64>) {
        let cfg = AwqConfig { duo: false, coarse, ..AwqConfig::new(4, 2, false, Range::WithZero) };
        let seen = std::sync::Mutex::new(Vec::new());
        let fq = |_: &mut [f32], s: &[f32]| *seen.lock().unwrap() = s.to_vec();
        let alpha = |s: &[f32]| (s[0] as f64 / s[1] as f64).ln();
        let mut scored = Vec::new();
        let w = [0.5f32, -0.25];
        let mut loss = |_: &[Vec<f32>]| {
            let a = alpha(&seen.lock().unwrap());
            scored.push(a);
            loss_of(a)
        };
        let (s, _) = search_scale(&cfg, &[std::f32::consts::E, 1.0], &[&w], 2, &fq, &mut loss);
        (alpha(&s), scored)
    }

    #[test]
    fn coarse_search_finds_the_grid_minimum_of_a_unimodal_loss() {
        for target in [0.0, 0.12, 0.37, 0.5, 0.62, 0.81, 0.97] {
            let loss = |a: f64| (a - target).powi(2);
            let (full, n_full) = search_on(1, loss);
            let (coarse, n_coarse) = search_on(3, loss);
            // The grid point nearest the target, by hand.
            let want = (target * 20.0).round().min(19.0) / 20.0;
            assert!((full - want).abs() < 1e-4 && (coarse - want).abs() < 1e-4, "target {target}: full {full}, coarse {coarse}");
            assert_eq!(n_full.len(), 20);
            assert!(n_coarse.len() <= 11, "{} evaluations", n_coarse.len());
        }
    }

    #[test]
    fn search_keeps_the_first_of_equal_losses_and_skips_non_finite_ones() {
        // Flat loss: α = 0, as AutoAWQ's strict `<` keeps.
        assert!(search_on(1, |_| 1.0).0.abs() < 1e-6);
        // NaN everywhere but α = 0.5.
        let (a, _) = search_on(1, |a| if (a - 0.5).abs() < 1e-4 { 2.0 } else { f64::NAN });
        assert!((a - 0.5).abs() < 1e-4);
    }

    /// On a GQA model (where o_proj is in no scale group), the clip stage clamps every linear but
    /// q and k: each of their groups is left alone or clamped to `[-(1 − i/20)·m, (1 − j/20)·m]`,
    /// `m = max|w|`, for some i, j in 0..10 (AutoAWQ's clip grid; i = j for the symmetric clip),
    /// and at least one group of each is clamped.
    #[test]
    fn clip_stage_clamps_every_linear_but_q_and_k() {
        for asym in [false, true] {
            clip_stage_check(asym);
        }
    }

    fn clip_stage_check(asym: bool) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/arch/llama-headdim");
        let model = Model::open_dense(&dir).unwrap();
        assert_ne!(model.cfg.num_kv_heads, model.cfg.num_heads, "the fixture must use GQA");
        let (seq, n_seq) = (32, 6);
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let tokens: Vec<u32> = (0..seq * n_seq)
            .map(|_| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                (r % model.cfg.vocab_size as u64) as u32
            })
            .collect();
        let mut h = model.embed(&tokens).unwrap();
        let mut lw = model.load_layer(0).unwrap();
        let needs = Needs { mean_abs: true, window_tokens: seq * n_seq, strided_rows: 64, ..Needs::default() };
        let (stats, _) = crate::quantize::calibrate_layer(&model, &lw, &mut h, seq, needs).unwrap();
        // The clip sample is strided over every window.
        for st in stats.values() {
            let mut wins: Vec<usize> = st.strided_index.iter().map(|r| r / seq).collect();
            wins.dedup();
            assert_eq!(wins, (0..n_seq).collect::<Vec<_>>());
        }
        let cfg = AwqConfig { clip_asym: asym, ..AwqConfig::new(3, 32, false, Range::WithZero) };
        let search_of = |_: &ScaleGroup| Some((cfg, Box::new(rtn_row(3, 32, false, Range::WithZero)) as BoxedRowFakeQuant));
        let folded = scale_layer(&model, &mut lw, &stats, &search_of);
        assert!(!folded.contains_key(&Input::AttnOut), "no scale group covers o_proj under GQA");
        let before = lw.clone();
        clip_layer(&mut lw, &stats, &folded, &|_| Some(cfg));
        for (a, b) in before.linears.iter().zip(&lw.linears) {
            let name = a.spec.name;
            if matches!(name, "self_attn.q_proj" | "self_attn.k_proj") {
                assert_eq!(a.w, b.w, "{name} must not be clipped");
                continue;
            }
            let mut clamped = 0;
            for (ra, rb) in a.w.chunks(a.inn).zip(b.w.chunks(b.inn)) {
                for (s, e) in rtn::groups(a.inn, 32) {
                    let (ga, gb) = (&ra[s..e], &rb[s..e]);
                    if ga == gb {
                        continue;
                    }
                    let mx = ga.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let shrink = |i: usize| 1.0 - i as f32 / 20.0;
                    let ok = (0..10)
                        .flat_map(|i| (0..10).map(move |j| (i, j)))
                        .filter(|&(i, j)| asym || i == j)
                        .any(|(i, j)| ga.iter().zip(gb).all(|(x, y)| x.clamp(-mx * shrink(i), mx * shrink(j)) == *y));
                    assert!(ok, "{name}: a group changed by something other than a clip-grid clamp (asymmetric: {asym})");
                    clamped += 1;
                }
            }
            assert!(clamped > 0, "{name} is not clipped (asymmetric: {asym})");
        }
    }
}
