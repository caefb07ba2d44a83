//! AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization"), following AutoAWQ:
//! for every scale group of the architecture table, search `s = mean|x|^α` (or the duo form
//! `mean|x|^α / mean|ŵ|^(1-α)`) over a grid of α, fold the best `s` into the producer of the
//! group's input, then search a per-group clipping range for every linear but q/k.
//! Departures from AutoAWQ are listed in docs/awq.md.

use super::rtn;
use crate::arch::{Input, Producer, ScaleGroup};
use crate::linalg::matmul_bt;
use crate::model::LayerWeights;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AwqConfig {
    pub bits: u8,
    pub group: usize,
    pub sym: bool,
    /// Number of α values in [0, 1).
    pub n_grid: usize,
    /// Divide by a weight statistic too (AutoAWQ's `duo_scaling`).
    pub duo: bool,
    /// Run the clip search.
    pub clip: bool,
    /// Largest range shrink tried by the clip search (AutoAWQ: 10 steps of 5%, i.e. up to 45%).
    pub clip_steps: usize,
}

impl AwqConfig {
    pub fn new(bits: u8, group: usize, sym: bool) -> Self {
        Self { bits, group, sym, n_grid: 20, duo: true, clip: true, clip_steps: 10 }
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

/// RTN fake quantization of a row, group by group: the quantizer AWQ itself uses.
pub fn rtn_row(bits: u8, group: usize, sym: bool) -> impl Fn(&mut [f32], &[f32]) + Sync {
    move |row: &mut [f32], _s: &[f32]| {
        let n = row.len();
        for (a, b) in rtn::groups(n, group) {
            rtn::fake_quant_group(&mut row[a..b], bits, sym);
        }
    }
}

/// Search the input-channel scales of one group. `x` holds `n` sampled input rows; `fq` is the
/// quantizer the weights will get (RTN for AWQ, aware StatsQ or shift for `awq+statsq`/`awq+shift`).
pub fn search_scale(cfg: &AwqConfig, x: &[f32], n: usize, x_mean: &[f32], ws: &[&[f32]], inn: usize, fq: RowFakeQuant) -> (Vec<f32>, f32) {
    let outs: Vec<usize> = ws.iter().map(|w| w.len() / inn).collect();
    let wcat: Vec<f32> = ws.iter().flat_map(|w| w.iter().copied()).collect();
    let out: usize = outs.iter().sum();
    let y = matmul_bt(x, n, inn, &wcat, out);
    let w_mean = if cfg.duo { weight_mean(ws, inn, cfg.group) } else { vec![1.0; inn] };
    let mut best = (f32::INFINITY, vec![1f32; inn]);
    for k in 0..cfg.n_grid {
        let a = k as f32 / cfg.n_grid as f32;
        let mut s: Vec<f32> = (0..inn)
            .map(|c| {
                let v = if cfg.duo { x_mean[c].powf(a) / (w_mean[c].powf(1.0 - a) + 1e-4) } else { x_mean[c].powf(a) };
                v.max(1e-4)
            })
            .collect();
        let (mn, mx) = rtn::minmax(&s);
        let norm = (mn * mx).sqrt();
        s.iter_mut().for_each(|v| *v /= norm);
        // Q(W·diag(s))·diag(s)⁻¹ applied to x.
        let mut wq = wcat.clone();
        wq.par_chunks_mut(inn).for_each(|row| {
            row.iter_mut().zip(&s).for_each(|(w, s)| *w *= s);
            fq(row, &s);
            row.iter_mut().zip(&s).for_each(|(w, s)| *w /= s);
        });
        let yq = matmul_bt(x, n, inn, &wq, out);
        let loss = y.iter().zip(&yq).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / y.len().max(1) as f64;
        if (loss as f32) < best.0 {
            best = (loss as f32, s);
        }
    }
    (best.1, best.0)
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

/// Per (row, group) clipping search: clamp each group to ±(1 - i/20)·max|w| for i in
/// 0..clip_steps and keep the value minimising `E_x[(x_g·(Q(w_g) - w_g))²]`, evaluated through the
/// group's Gram matrix `X_gᵀX_g` of the sampled rows. Applies the clamp to `w` in place.
pub fn clip(cfg: &AwqConfig, w: &mut [f32], inn: usize, x: &[f32], n: usize) {
    let grams: Vec<(usize, usize, Vec<f32>)> = rtn::groups(inn, cfg.group)
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
    let (bits, sym, steps) = (cfg.bits, cfg.sym, cfg.clip_steps);
    w.par_chunks_mut(inn).for_each(|row| {
        for (a, b, g) in &grams {
            let orig = row[*a..*b].to_vec();
            let mx = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (mut best_err, mut best_m) = (f64::INFINITY, mx);
            let mut q = vec![0f32; orig.len()];
            let mut d = vec![0f32; orig.len()];
            for i in 0..steps {
                let m = mx * (1.0 - i as f32 / 20.0);
                q.iter_mut().zip(&orig).for_each(|(q, w)| *q = w.clamp(-m, m));
                rtn::fake_quant_group(&mut q, bits, sym);
                d.iter_mut().zip(q.iter().zip(&orig)).for_each(|(d, (q, w))| *d = q - w);
                let gs = d.len();
                let mut err = 0f64;
                for r in 0..gs {
                    let gr = &g[r * gs..(r + 1) * gs];
                    let dot: f32 = gr.iter().zip(&d).map(|(a, b)| a * b).sum();
                    err += (d[r] * dot) as f64;
                }
                if err < best_err {
                    best_err = err;
                    best_m = m;
                }
            }
            row[*a..*b].iter_mut().for_each(|w| *w = w.clamp(-best_m, best_m));
        }
    });
}

/// Whether the clip search runs for a linear (AutoAWQ skips q and k: their error is shaped by
/// the softmax, not by a plain output MSE).
pub fn clips(name: &str) -> bool {
    !matches!(name, "self_attn.q_proj" | "self_attn.k_proj")
}

/// The inputs whose statistics AWQ reads.
pub fn inputs() -> [Input; 4] {
    [Input::AttnIn, Input::AttnOut, Input::MlpIn, Input::MlpAct]
}
