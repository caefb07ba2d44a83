//! VPTQ (Liu et al., "VPTQ: Extreme Low-bit Vector Post-Training Quantization for Large
//! Language Models", 2024): vector quantization of a linear weight with second-order error
//! feedback.
//!
//! The weight `W[out][in]` is cut into vectors of `v` consecutive output channels of each input
//! column (`W[j*v..j*v+v][i]`), and every vector is replaced by the index of a centroid in a
//! codebook of `k` centroids shared by the whole layer. The steps:
//!
//! 1. optional per-input-column normalisation `w = ŵ·s_i + b_i` (mean / standard deviation of
//!    the column, stored f16); the proxy loss is then taken with `H' = diag(s) H diag(s)`;
//! 2. optional outlier columns: the top `outlier_pct` percent of columns by `H_ii·|W[:,i]|²` get
//!    a codebook of their own;
//! 3. codebook initialisation by k-means weighted by `H_ii` of each vector's column (the
//!    paper's Hessian-weighted centroid initialisation), centroids rounded to f16;
//! 4. channel-independent second-order optimisation: columns are quantized one at a time, each
//!    vector to its nearest centroid, and the error `(w_i − q_i) / U_ii` is propagated to the
//!    columns not yet quantized through the upper Cholesky factor `U` of `H⁻¹`, in blocks of
//!    `block` columns (lazy batch updates, GPTQ-style; dead channels and damping as in GPTQ);
//! 5. optional residual codebook: k-means on the residual of step 4, then step 4 again from the
//!    original weight with both codebooks (main index, then residual index of `w − c_main`).
//!
//! The work is split into fixed chunks of output vectors (error feedback never mixes output
//! channels), each processed sequentially, so results do not depend on the thread count.

use super::hessian;
use super::kmeans::{kmeans, Codebook, KMeansConfig};
use super::recipe::{Core, Recipe};
use crate::codes::VqQ;
pub use crate::codes::{dequant_value, index_bits};
use anyhow::{bail, ensure, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::time::Instant;

/// `vptq`: vector quantization; later layers see its quantized outputs.
pub const VPTQ: Recipe = Recipe {
    name: "vptq",
    help: "VPTQ: vector quantization with a Hessian-weighted k-means codebook and second-order error feedback (`--vector-len`, `--centroids`, ...; `--bits` is ignored)",
    awq: false,
    core: Core::Vptq,
    propagates: true,
};

/// VPTQ settings.
#[derive(Clone, Debug, PartialEq)]
pub struct VptqConfig {
    /// Vector length `v` (along the output dimension); must divide `out_features`.
    pub vector_len: usize,
    /// Main codebook size `k`.
    pub centroids: usize,
    /// Residual codebook size (0 = no residual stage).
    pub res_centroids: usize,
    /// Percentage (0..100) of input columns treated as outliers (0 = none).
    pub outlier_pct: f64,
    /// Outlier codebook size; 0 = `min(centroids, 256, outlier vectors)`.
    pub outlier_centroids: usize,
    /// Lloyd iterations of every k-means run (stops earlier once no label changes).
    pub kmeans_iters: usize,
    pub seed: u64,
    /// Dampening: `damp · mean(diag H)` is added to the diagonal.
    pub damp: f64,
    /// Columns per lazy-update block.
    pub block: usize,
    /// Per-input-column normalisation (scale and bias per column, stored f16).
    pub normalize: bool,
}

impl Default for VptqConfig {
    /// About 2 bits per weight on small models: `v = 4`, `k = 256` (8-bit indices = 2 bpw, plus
    /// a 16 Kib codebook: 2.02 bpw on 1536×576, 2.05 on 576×576, 2.15 on 192×576). On
    /// SmolLM2-135M this beat `v = 6, k = 2048` (2.06 bpw) and `v = 8, k = 4096` (2.09 bpw) in
    /// proxy loss; large models can afford longer vectors and bigger codebooks.
    fn default() -> Self {
        Self {
            vector_len: 4,
            centroids: 256,
            res_centroids: 0,
            outlier_pct: 0.0,
            outlier_centroids: 0,
            kmeans_iters: 10,
            seed: 0,
            damp: 0.01,
            block: 128,
            normalize: false,
        }
    }
}

impl crate::codes::VqSizes for VptqConfig {
    fn vq_shape(&self, out: usize, inn: usize) -> crate::codes::VqShape {
        crate::codes::VqShape {
            vector_len: self.vector_len,
            centroids: self.centroids,
            res_centroids: self.res_centroids,
            normalize: self.normalize,
            n_outlier_cols: self.n_outlier_cols(inn),
            outlier_centroids: self.outlier_codebook(out, inn),
        }
    }
}

impl VptqConfig {
    /// Whether an `out × in` weight can be quantized with these settings (vector length, codebook
    /// sizes against the number of vectors, outlier share); checked before any work.
    pub fn check_shape(&self, out: usize, inn: usize) -> Result<()> {
        let v = self.vector_len;
        ensure!(v > 0, "VPTQ: vector length 0");
        ensure!(out.is_multiple_of(v), "VPTQ: vector length {v} does not divide out_features {out}");
        ensure!(self.centroids > 0, "VPTQ: 0 centroids");
        ensure!((0.0..100.0).contains(&self.outlier_pct), "VPTQ: outlier_pct {} outside [0, 100)", self.outlier_pct);
        let (nv, n_out) = (out / v, self.n_outlier_cols(inn));
        ensure!(n_out < inn, "VPTQ: outlier_pct {} leaves no ordinary columns", self.outlier_pct);
        let (n_main_vec, k) = ((inn - n_out) * nv, self.centroids);
        ensure!(k <= n_main_vec, "VPTQ: {k} centroids but only {n_main_vec} vectors of length {v} to quantize ({out}x{inn} weight)");
        ensure!(
            self.res_centroids <= n_main_vec,
            "VPTQ: {} residual centroids but only {n_main_vec} vectors of length {v}",
            self.res_centroids
        );
        let k_out = self.outlier_codebook(out, inn);
        ensure!(k_out <= n_out * nv, "VPTQ: {k_out} outlier centroids but only {} outlier vectors", n_out * nv);
        Ok(())
    }

    /// Number of outlier columns of an `in`-column layer: `ceil(outlier_pct / 100 · in)`.
    pub fn n_outlier_cols(&self, inn: usize) -> usize {
        if self.outlier_pct > 0.0 {
            ((self.outlier_pct / 100.0) * inn as f64).ceil() as usize
        } else {
            0
        }
    }

    /// Outlier codebook size actually used for an `out × in` layer (0 without outliers).
    pub fn outlier_codebook(&self, out: usize, inn: usize) -> usize {
        let n = self.n_outlier_cols(inn) * (out / self.vector_len.max(1));
        match (n, self.outlier_centroids) {
            (0, _) => 0,
            (_, 0) => self.centroids.min(256).min(n),
            (_, x) => x,
        }
    }

    /// Bits per weight the VQ layout will store for an `out × in` layer with these settings
    /// (the same count as [`VqQ::storage_bits`], known before quantizing: use it to pick `v`
    /// and `k` per layer).
    pub fn bits_per_weight(&self, out: usize, inn: usize) -> f64 {
        let v = self.vector_len.max(1);
        let n_out = self.n_outlier_cols(inn);
        let k_out = self.outlier_codebook(out, inn);
        let opt = |k: usize| if k > 0 { Some(vec![0f32; k * v]) } else { None };
        let q = VqQ {
            out_features: out,
            in_features: inn,
            vector_len: v,
            centroids: Vec::new(),
            n_centroids: self.centroids,
            indices: Vec::new(),
            res_centroids: opt(self.res_centroids),
            n_res_centroids: self.res_centroids,
            res_indices: None,
            col_scale: self.normalize.then(Vec::new),
            col_bias: self.normalize.then(Vec::new),
            outlier_cols: vec![0; n_out],
            outlier_centroids: opt(k_out),
            n_outlier_centroids: k_out,
            outlier_indices: None,
        };
        q.storage_bits() as f64 / (out * inn) as f64
    }
}

/// What a VPTQ run achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct VptqReport {
    /// Stored bits per weight: indices (32-bit aligned rows), residual indices, codebooks,
    /// column scale/bias and outliers, all amortised over `out·in` (see [`VqQ::storage_bits`]).
    pub bits_per_weight: f64,
    /// Proxy loss `tr((W−Q) H (W−Q)ᵀ)` of the result, with the undamped `H`.
    pub h_weighted_error: f64,
    /// The same loss for plain nearest-centroid assignment with the initial codebook(s) and no
    /// error feedback (the k-means labels): what step 4 improves on.
    pub h_weighted_error_init: f64,
    /// `h_weighted_error / tr(W H Wᵀ)`.
    pub rel_error: f64,
    /// Mean squared weight error `|W−Q|² / (out·in)`.
    pub weight_mse: f64,
    /// Weighted k-means inertia of the main codebook (normalised domain).
    pub kmeans_inertia: f64,
    /// Lloyd updates the main k-means ran.
    pub kmeans_iters_run: usize,
    pub n_outlier_cols: usize,
    /// Seconds in k-means (all codebooks) and in total.
    pub kmeans_seconds: f64,
    pub seconds: f64,
}

/// Quantizes `w` (`[out][inn]` row-major) with VPTQ against the Hessian `h` (`inn × inn`,
/// row-major, e.g. [`crate::stats::InputStats::hessian`]).
pub fn vptq(w: &[f32], out: usize, inn: usize, h: &[f64], cfg: &VptqConfig) -> Result<(VqQ, VptqReport)> {
    let t0 = Instant::now();
    let v = cfg.vector_len;
    ensure!(out > 0 && inn > 0, "VPTQ: empty {out}x{inn} weight");
    ensure!(w.len() == out * inn, "VPTQ: weight has {} values, expected {out}x{inn}", w.len());
    ensure!(h.len() == inn * inn, "VPTQ: Hessian has {} values, expected {inn}x{inn}", h.len());
    cfg.check_shape(out, inn)?;
    ensure!(cfg.block > 0, "VPTQ: block size 0");
    ensure!(cfg.damp.is_finite() && cfg.damp >= 0.0, "VPTQ: damp {} must be a finite non-negative number", cfg.damp);
    if let Some(x) = w.iter().find(|x| !x.is_finite()) {
        bail!("VPTQ: weight value {x} is not finite");
    }
    if let Some(x) = h.iter().find(|x| !x.is_finite()) {
        bail!("VPTQ: Hessian value {x} is not finite");
    }
    let nv = out / v;

    // Outlier columns: top outlier_pct % by H_ii·|W[:,i]|² (original weight and Hessian).
    let n_out = cfg.n_outlier_cols(inn);
    let mut outlier_cols: Vec<u32> = Vec::new();
    if n_out > 0 {
        let score: Vec<f64> = (0..inn).map(|i| h[i * inn + i] * (0..out).map(|o| (w[o * inn + i] as f64).powi(2)).sum::<f64>()).collect();
        let mut order: Vec<usize> = (0..inn).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        outlier_cols = order[..n_out].iter().map(|&c| c as u32).collect();
        outlier_cols.sort_unstable();
    }
    let mut opos = vec![u32::MAX; inn];
    for (p, &c) in outlier_cols.iter().enumerate() {
        opos[c as usize] = p as u32;
    }
    let main_cols: Vec<usize> = (0..inn).filter(|&c| opos[c] == u32::MAX).collect();
    let k = cfg.centroids;
    let k_out = cfg.outlier_codebook(out, inn);

    // Transposed working copy: column i of W is wt[i*out..(i+1)*out].
    let mut wt = vec![0f32; inn * out];
    for o in 0..out {
        for i in 0..inn {
            wt[i * out + o] = w[o * inn + i];
        }
    }
    // Dead inputs (H_ii = 0) carry no signal: zero their weights (GPTQ).
    let dead = hessian::dead(h, inn);
    for i in (0..inn).filter(|&i| dead[i]) {
        wt[i * out..(i + 1) * out].iter_mut().for_each(|x| *x = 0.0);
    }

    // Normalisation: ŵ = (w − b)/s with f16-exact s, b; H' = diag(s) H diag(s).
    let (col_scale, col_bias) = if cfg.normalize {
        let mut sc = vec![1f32; inn];
        let mut bi = vec![0f32; inn];
        for i in 0..inn {
            let col = &wt[i * out..(i + 1) * out];
            let mean = col.iter().map(|&x| x as f64).sum::<f64>() / out as f64;
            let var = col.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / out as f64;
            let s = half::f16::from_f64(var.sqrt()).to_f32();
            let b = half::f16::from_f64(mean).to_f32();
            ensure!(b.is_finite(), "VPTQ: column {i} mean {mean} overflows f16");
            sc[i] = if s > 0.0 && s.is_finite() { s } else { 1.0 };
            bi[i] = b;
            for x in &mut wt[i * out..(i + 1) * out] {
                *x = (*x - b) / sc[i];
            }
        }
        (Some(sc), Some(bi))
    } else {
        (None, None)
    };
    let s_of = |i: usize| col_scale.as_ref().map_or(1.0, |s| s[i] as f64);
    let hn = |a: usize, b: usize| h[a * inn + b] * s_of(a) * s_of(b);
    let diag_w: Vec<f32> = (0..inn).map(|i| hn(i, i).max(0.0) as f32).collect();

    // Damped Hessian → upper Cholesky factor of its inverse (f32).
    let order: Vec<usize> = (0..inn).collect();
    let u: Vec<f32> = hessian::prepare(inn, hn, &dead, &order, cfg.damp)?.u.iter().map(|&x| x as f32).collect();
    if let Some(i) = (0..inn).find(|&i| !(u[i * inn + i].is_finite() && u[i * inn + i] > 0.0)) {
        return Err(hessian::not_pd(cfg.damp, &format!("zero pivot at column {i}")));
    }

    // Codebooks by weighted k-means on the (normalised) weight vectors.
    let tk = Instant::now();
    let gather = |src: &[f32], cols: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let pts = cols.iter().flat_map(|&c| src[c * out..(c + 1) * out].iter().copied()).collect();
        let wts = cols.iter().flat_map(|&c| std::iter::repeat_n(diag_w[c], nv)).collect();
        (pts, wts)
    };
    let kcfg = |k: usize, salt: u64| KMeansConfig { k, iters: cfg.kmeans_iters, seed: cfg.seed ^ salt, f16_centroids: true };
    let (pts, wts) = gather(&wt, &main_cols);
    let km = kmeans(&pts, v, Some(&wts), &kcfg(k, 0))?;
    let outlier_list: Vec<usize> = outlier_cols.iter().map(|&c| c as usize).collect();
    let okm = if n_out > 0 {
        let (pts, wts) = gather(&wt, &outlier_list);
        Some(kmeans(&pts, v, Some(&wts), &kcfg(k_out, 0x6f75_746c_6965_7273))?)
    } else {
        None
    };
    let mut kmeans_seconds = tk.elapsed().as_secs_f64();
    // Plain nearest-centroid assignment = the k-means labels, laid out [in][nv].
    let mut guess = vec![0u32; inn * nv];
    for (p, &c) in main_cols.iter().enumerate() {
        guess[c * nv..(c + 1) * nv].copy_from_slice(&km.labels[p * nv..(p + 1) * nv]);
    }
    let mut oguess = vec![0u32; n_out * nv];
    if let Some(okm) = &okm {
        oguess.copy_from_slice(&okm.labels);
    }

    let books = Books { main: &km.codebook, res: None, outlier: okm.as_ref().map(|o| &o.codebook) };
    let ctx = Ctx { out, inn, v, u: &u, opos: &opos, block: cfg.block };
    let mut pass = ctx.feedback(&wt, &books, &guess, &oguess, cfg.res_centroids > 0);
    let res_book = if cfg.res_centroids > 0 {
        let tk = Instant::now();
        let qerr = pass.qerr.take().expect("residual requested");
        let (pts, wts) = gather(&qerr, &main_cols);
        let rkm = kmeans(&pts, v, Some(&wts), &kcfg(cfg.res_centroids, 0x7265_7369_6475_616c))?;
        kmeans_seconds += tk.elapsed().as_secs_f64();
        let books = Books { res: Some(&rkm.codebook), ..books };
        let (g, og) = (pass.idx.clone(), pass.oidx.clone());
        pass = ctx.feedback(&wt, &books, &g, &og, false);
        Some(rkm.codebook)
    } else {
        None
    };

    let q = VqQ {
        out_features: out,
        in_features: inn,
        vector_len: v,
        centroids: km.codebook.centroids.clone(),
        n_centroids: k,
        indices: pass.idx,
        res_centroids: res_book.as_ref().map(|b| b.centroids.clone()),
        n_res_centroids: res_book.as_ref().map_or(0, |b| b.k),
        res_indices: pass.ridx,
        col_scale,
        col_bias,
        outlier_cols,
        outlier_centroids: okm.as_ref().map(|o| o.codebook.centroids.clone()),
        n_outlier_centroids: k_out,
        outlier_indices: okm.as_ref().map(|_| pass.oidx),
    };
    q.validate()?;
    let deq = q.dequantize();
    let h_err = h_error(w, &deq, out, inn, h);
    // Initial (k-means) assignment, for comparison: same codebooks, no residual, no feedback.
    let init = VqQ {
        indices: guess,
        res_centroids: None,
        n_res_centroids: 0,
        res_indices: None,
        outlier_indices: q.outlier_indices.as_ref().map(|_| oguess),
        ..q.clone()
    };
    let h_err_init = h_error(w, &init.dequantize(), out, inn, h);
    let zero = vec![0f32; out * inn];
    let h_ref = h_error(w, &zero, out, inn, h);
    let mse = w.iter().zip(&deq).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / (out * inn) as f64;
    let report = VptqReport {
        bits_per_weight: q.storage_bits() as f64 / (out * inn) as f64,
        h_weighted_error: h_err,
        h_weighted_error_init: h_err_init,
        rel_error: if h_ref > 0.0 { h_err / h_ref } else { 0.0 },
        weight_mse: mse,
        kmeans_inertia: km.inertia,
        kmeans_iters_run: km.iters_run,
        n_outlier_cols: n_out,
        kmeans_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((q, report))
}

/// `tr((W−Q) H (W−Q)ᵀ) = Σ_o e_o·H·e_oᵀ`: `E·H` by an f32 GEMM over fixed chunks of rows,
/// the products `(E·H)∘E` summed in f64 and the chunks summed in order.
pub fn h_error(w: &[f32], q: &[f32], out: usize, inn: usize, h: &[f64]) -> f64 {
    const CH: usize = 64;
    let h32: Vec<f32> = h.iter().map(|&x| x as f32).collect();
    let hm = MatRef::from_row_major_slice(&h32, inn, inn);
    let parts: Vec<f64> = (0..out.div_ceil(CH))
        .into_par_iter()
        .map(|c| {
            let (r0, r1) = (c * CH, ((c + 1) * CH).min(out));
            let e: Vec<f32> = (r0 * inn..r1 * inn).map(|x| w[x] - q[x]).collect();
            let mut eh = vec![0f32; (r1 - r0) * inn];
            let em = MatRef::from_row_major_slice(&e, r1 - r0, inn);
            matmul(MatMut::from_row_major_slice_mut(&mut eh, r1 - r0, inn), Accum::Replace, em, hm, 1.0, Par::Seq);
            eh.iter().zip(&e).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

struct Books<'a> {
    main: &'a Codebook,
    res: Option<&'a Codebook>,
    outlier: Option<&'a Codebook>,
}

/// Shape and factor shared by the chunks of one error-feedback pass.
struct Ctx<'a> {
    out: usize,
    inn: usize,
    v: usize,
    /// Upper Cholesky factor of the damped `H⁻¹`, row-major.
    u: &'a [f32],
    opos: &'a [u32],
    block: usize,
}

/// Result of one pass: `[in][nv]` main and residual indices, `[n_out][nv]` outlier indices and
/// optionally the `[in][out]` residual `w_updated − q` (for the residual k-means).
struct Pass {
    idx: Vec<u32>,
    ridx: Option<Vec<u32>>,
    oidx: Vec<u32>,
    qerr: Option<Vec<f32>>,
}

impl Ctx<'_> {
    /// One channel-independent second-order pass over all columns, in parallel over fixed
    /// chunks of output vectors.
    fn feedback(&self, wt: &[f32], books: &Books, guess: &[u32], oguess: &[u32], want_err: bool) -> Pass {
        let (out, inn, v) = (self.out, self.inn, self.v);
        let nv = out / v;
        let n_out = oguess.len() / nv.max(1);
        // Fixed chunking (depends on the shape only): ~16 chunks of at least 8 vectors.
        let cv = nv.div_ceil(16).max(8).min(nv);
        let chunks: Vec<(usize, usize)> = (0..nv.div_ceil(cv)).map(|c| (c * cv, ((c + 1) * cv).min(nv))).collect();
        let results: Vec<Pass> = chunks.par_iter().map(|&(j0, j1)| self.chunk(wt, books, guess, oguess, j0, j1, want_err)).collect();
        let mut p = Pass {
            idx: vec![0; inn * nv],
            ridx: books.res.map(|_| vec![0; inn * nv]),
            oidx: vec![0; n_out * nv],
            qerr: want_err.then(|| vec![0f32; inn * out]),
        };
        for (&(j0, j1), r) in chunks.iter().zip(results) {
            let m = j1 - j0;
            for i in 0..inn {
                p.idx[i * nv + j0..i * nv + j1].copy_from_slice(&r.idx[i * m..(i + 1) * m]);
                if let (Some(d), Some(s)) = (&mut p.ridx, &r.ridx) {
                    d[i * nv + j0..i * nv + j1].copy_from_slice(&s[i * m..(i + 1) * m]);
                }
                if let (Some(d), Some(s)) = (&mut p.qerr, &r.qerr) {
                    d[i * out + j0 * v..i * out + j1 * v].copy_from_slice(&s[i * m * v..(i + 1) * m * v]);
                }
            }
            for o in 0..n_out {
                p.oidx[o * nv + j0..o * nv + j1].copy_from_slice(&r.oidx[o * m..(o + 1) * m]);
            }
        }
        p
    }

    /// The pass restricted to output vectors `j0..j1` (rows `j0*v..j1*v`), sequential.
    #[allow(clippy::too_many_arguments)]
    fn chunk(&self, wt: &[f32], books: &Books, guess: &[u32], oguess: &[u32], j0: usize, j1: usize, want_err: bool) -> Pass {
        let (out, inn, v, u) = (self.out, self.inn, self.v, self.u);
        let nv = out / v;
        let (m, rows) = (j1 - j0, (j1 - j0) * v);
        let n_out = oguess.len() / nv.max(1);
        let mut w = vec![0f32; inn * rows];
        for i in 0..inn {
            w[i * rows..(i + 1) * rows].copy_from_slice(&wt[i * out + j0 * v..i * out + j1 * v]);
        }
        let mut p = Pass {
            idx: vec![0; inn * m],
            ridx: books.res.map(|_| vec![0; inn * m]),
            oidx: vec![0; n_out * m],
            qerr: want_err.then(|| vec![0f32; inn * rows]),
        };
        let mut e = vec![0f32; self.block.min(inn) * rows];
        let mut q = vec![0f32; rows];
        let mut r = vec![0f32; v];
        for b0 in (0..inn).step_by(self.block) {
            let b1 = (b0 + self.block).min(inn);
            for i in b0..b1 {
                let (head, tail) = w.split_at_mut((i + 1) * rows);
                let col = &head[i * rows..];
                // Quantize every vector of the column.
                for jj in 0..m {
                    let x = &col[jj * v..(jj + 1) * v];
                    let qv = &mut q[jj * v..(jj + 1) * v];
                    let op = self.opos[i];
                    if op != u32::MAX {
                        let ob = books.outlier.expect("outlier codebook");
                        let c = ob.nearest(x, Some(oguess[op as usize * nv + j0 + jj]));
                        p.oidx[op as usize * m + jj] = c;
                        qv.copy_from_slice(ob.centroid(c));
                    } else {
                        let c = books.main.nearest(x, Some(guess[i * nv + j0 + jj]));
                        p.idx[i * m + jj] = c;
                        qv.copy_from_slice(books.main.centroid(c));
                        if let (Some(rb), Some(ri)) = (books.res, &mut p.ridx) {
                            r.iter_mut().zip(x.iter().zip(qv.iter())).for_each(|(d, (a, b))| *d = a - b);
                            let rc = rb.scan(&r).0;
                            ri[i * m + jj] = rc;
                            qv.iter_mut().zip(rb.centroid(rc)).for_each(|(a, b)| *a += b);
                        }
                    }
                }
                let d = u[i * inn + i];
                let ei = &mut e[(i - b0) * rows..(i - b0 + 1) * rows];
                for ((er, &x), &qx) in ei.iter_mut().zip(col).zip(&q) {
                    *er = (x - qx) / d;
                }
                if let Some(qe) = &mut p.qerr {
                    for ((o, &x), &qx) in qe[i * rows..(i + 1) * rows].iter_mut().zip(col).zip(&q) {
                        *o = x - qx;
                    }
                }
                // Rank-1 update of the rest of the block.
                for j in i + 1..b1 {
                    let uij = u[i * inn + j];
                    let wj = &mut tail[(j - i - 1) * rows..(j - i) * rows];
                    wj.iter_mut().zip(ei.iter()).for_each(|(a, &b)| *a -= uij * b);
                }
            }
            // Lazy batch update of the columns after the block: W[b1..] -= U[b0..b1, b1..]ᵀ · E.
            if b1 < inn {
                let a = MatRef::from_row_major_slice_with_stride(&u[b0 * inn + b1..], b1 - b0, inn - b1, inn);
                let em = MatRef::from_row_major_slice(&e[..(b1 - b0) * rows], b1 - b0, rows);
                let c = MatMut::from_row_major_slice_mut(&mut w[b1 * rows..], inn - b1, rows);
                matmul(c, Accum::Add, a.transpose(), em, -1.0f32, Par::Seq);
            }
        }
        p
    }
}
