//! Weighted k-means for vector-quantization codebooks, and the exact nearest-centroid search
//! shared by k-means and the VPTQ error-feedback pass.
//!
//! * Initialisation: weighted k-means++ (`P(pick x) ∝ w·D(x)²`) on a seeded subsample of at
//!   most `max(k, 2^24 / k)` points (so at most ~`max(k², 2^24)·dim` work); above 16384
//!   centroids, `k` distinct points drawn uniformly.
//! * Iterations: Lloyd with Hamerly's bounds (an upper bound on the distance to the assigned
//!   centroid, a lower bound on the distance to every other one, and half the distance from each
//!   centroid to its nearest neighbour) to skip points whose assignment provably cannot change.
//!   The others are reassigned by a greedy descent on a 64-nearest-neighbour graph of the
//!   centroids ([`Codebook::descend`]), which is exact whenever the graph proves it (most
//!   points) and otherwise a local minimum; this keeps an iteration at ~`n·64·dim` work instead
//!   of `n·k·dim`. The returned labels are exact nearest centroids.
//! * Empty clusters (zero total weight) are re-seeded at the points with the largest weighted
//!   error; the loop stops after `iters` updates or when no label changes.
//! * Optionally the centroids are rounded to f16 (the stored precision) at the end and the
//!   labels recomputed, so that every label is the nearest *stored* centroid.
//!
//! Everything is deterministic for a given seed: parallel loops only map points independently,
//! and every sum is taken sequentially in point order, so the result does not depend on the
//! number of rayon threads.

use anyhow::{bail, ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Lanes of the centroid scan (8 f32 = one AVX2 register).
const LANES: usize = 8;
/// Length of the nearest-neighbour list kept for every centroid.
const NBR: usize = 64;
/// Largest codebook for which neighbour lists are built (`k²·dim` work per build).
const NBR_MAX_K: usize = 16384;

/// A codebook laid out for fast exact nearest-centroid search.
///
/// Besides a transposed copy for the exhaustive scan, every centroid `a` keeps the list of its
/// `m` nearest other centroids and `cover[a]`, the distance of the nearest centroid left out.
/// For a point `x` at distance `u` from `c_a`, every centroid `c` outside the list has
/// `|x − c| ≥ cover[a] − u`, so when `2u < cover[a]` the nearest centroid is `a` or in the list
/// (triangle inequality) and only the list is scanned. All paths evaluate distances with the same
/// arithmetic, so they agree exactly.
#[derive(Clone, Debug)]
pub struct Codebook {
    pub dim: usize,
    pub k: usize,
    /// `[k][dim]` row-major.
    pub centroids: Vec<f32>,
    /// `[dim][kp]` transposed copy, `kp = k` rounded up to [`LANES`], padding `+inf`.
    soa: Vec<f32>,
    kp: usize,
    /// List length (a multiple of [`LANES`]; 0 = no lists).
    m: usize,
    /// `[k][m]` neighbour ids by increasing distance (padding `u32::MAX`).
    nbr: Vec<u32>,
    /// `[k][dim][m]` the neighbours' coordinates, transposed per list (padding `+inf`).
    nbr_soa: Vec<f32>,
    /// `[k]` see above (`+inf` when the list holds every other centroid).
    cover: Vec<f32>,
    /// Half the distance from each centroid to its nearest other centroid (0 without lists):
    /// a point this close to `c_a` has `a` as its nearest centroid.
    pub half_gap: Vec<f32>,
}

impl Codebook {
    /// Builds the search structures (neighbour lists for `1 < k <= 16384`).
    pub fn new(centroids: Vec<f32>, dim: usize) -> Self {
        assert!(dim > 0 && centroids.len().is_multiple_of(dim), "codebook of {} values is not [k][{dim}]", centroids.len());
        let k = centroids.len() / dim;
        let kp = k.div_ceil(LANES) * LANES;
        let mut soa = vec![f32::INFINITY; dim * kp];
        for (j, c) in centroids.chunks_exact(dim).enumerate() {
            for (t, &x) in c.iter().enumerate() {
                soa[t * kp + j] = x;
            }
        }
        let mut cb =
            Self { dim, k, centroids, soa, kp, m: 0, nbr: Vec::new(), nbr_soa: Vec::new(), cover: Vec::new(), half_gap: vec![0.0; k] };
        if k > 1 && k <= NBR_MAX_K {
            cb.build_lists();
        }
        cb
    }

    fn build_lists(&mut self) {
        let (k, dim) = (self.k, self.dim);
        let m = NBR.min(k - 1).div_ceil(LANES) * LANES;
        let lists: Vec<(Vec<u32>, f32)> = (0..k)
            .into_par_iter()
            .map_init(
                || (vec![0f32; self.kp], Vec::with_capacity(k)),
                |(d, pairs), a| {
                    dists_soa(&self.soa, self.kp, dim, self.centroid(a as u32), d);
                    pairs.clear();
                    pairs.extend((0..k).filter(|&j| j != a).map(|j| (d[j], j as u32)));
                    let cmp = |x: &(f32, u32), y: &(f32, u32)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
                    let keep = m.min(pairs.len());
                    let cover = if keep < pairs.len() {
                        pairs.select_nth_unstable_by(keep, cmp);
                        pairs[keep].0.sqrt()
                    } else {
                        f32::INFINITY
                    };
                    pairs.truncate(keep);
                    pairs.sort_unstable_by(cmp);
                    (pairs.iter().map(|p| p.1).collect(), cover)
                },
            )
            .collect();
        self.m = m;
        self.nbr = vec![u32::MAX; k * m];
        self.nbr_soa = vec![f32::INFINITY; k * dim * m];
        self.cover = vec![0.0; k];
        for (a, (ids, cover)) in lists.into_iter().enumerate() {
            self.cover[a] = cover;
            self.half_gap[a] = 0.5 * self.dist2(self.centroid(a as u32), ids[0]).sqrt();
            for (l, &j) in ids.iter().enumerate() {
                self.nbr[a * m + l] = j;
                for t in 0..dim {
                    self.nbr_soa[(a * dim + t) * m + l] = self.centroids[j as usize * dim + t];
                }
            }
        }
    }

    #[inline]
    pub fn centroid(&self, j: u32) -> &[f32] {
        &self.centroids[j as usize * self.dim..][..self.dim]
    }

    /// Squared distance from `x` to centroid `j`, summed over coordinates in order (the same
    /// arithmetic as the scans, so all paths give bit-identical distances).
    #[inline]
    pub fn dist2(&self, x: &[f32], j: u32) -> f32 {
        dist2(x, self.centroid(j))
    }

    /// Nearest centroid by exhaustive scan: `(index, d², second-smallest d²)`. Ties go to the
    /// lowest index.
    #[inline]
    pub fn scan(&self, x: &[f32]) -> (u32, f32, f32) {
        scan_soa(&self.soa, self.kp, self.dim, x)
    }

    /// Greedy descent on the neighbour graph from centroid `a`: moves to the best of `a` and its
    /// list until `a` itself is best (at most 32 moves). Returns `(index, distance, lower bound
    /// on the distance to any other centroid, proven)`: `proven` when the cover test shows the
    /// index is the exact nearest centroid.
    pub fn descend(&self, x: &[f32], mut a: u32) -> (u32, f32, f32, bool) {
        let (m, dim) = (self.m, self.dim);
        let mut u2 = self.dist2(x, a);
        for _ in 0..32 {
            let ai = a as usize;
            let u = u2.sqrt();
            let hg = self.half_gap[ai];
            if u <= hg {
                return (a, u, 2.0 * hg - u, true);
            }
            if m == 0 {
                let (j, d1, d2) = self.scan(x);
                return (j, d1.sqrt(), d2.sqrt(), true);
            }
            let (l, d1, d2) = scan_soa(&self.nbr_soa[ai * dim * m..(ai + 1) * dim * m], m, dim, x);
            let id = self.nbr[ai * m + l as usize];
            let outside = self.cover[ai] - u;
            if (u2, a) <= (d1, id) {
                return (a, u, d1.sqrt().min(outside), 2.0 * u < self.cover[ai]);
            }
            if d1 == u2 && d2 == u2 {
                // Several equidistant candidates: stop walking to avoid cycling.
                return (id, u, 0.0, false);
            }
            (a, u2) = (id, d1);
        }
        (a, u2.sqrt(), 0.0, false)
    }

    /// Exact nearest centroid of `x`, searched from centroid `a` (typically the previous
    /// assignment): `(index, distance, lower bound on the distance to any other centroid)`.
    /// Falls back to the exhaustive scan when the neighbour lists cannot prove the answer.
    pub fn search(&self, x: &[f32], a: u32) -> (u32, f32, f32) {
        let r = self.descend(x, a);
        if r.3 {
            return (r.0, r.1, r.2);
        }
        let (j, d1, d2) = self.scan(x);
        (j, d1.sqrt(), d2.sqrt())
    }

    /// Nearest centroid, searched around `guess` when given, else by exhaustive scan.
    #[inline]
    pub fn nearest(&self, x: &[f32], guess: Option<u32>) -> u32 {
        match guess.filter(|&g| (g as usize) < self.k) {
            Some(g) => self.search(x, g).0,
            None => self.scan(x).0,
        }
    }
}

/// `(index, d², second d²)` of the nearest of the `stride` points stored transposed in `soa`
/// (`[dim][stride]`, `stride` a multiple of [`LANES`]).
#[inline]
fn scan_soa(soa: &[f32], stride: usize, dim: usize, x: &[f32]) -> (u32, f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above). The AVX2 build runs the same
        // sequence of IEEE operations (no FMA contraction), so it returns identical results.
        return unsafe { scan_soa_avx2(soa, stride, dim, x) };
    }
    scan_soa_impl(soa, stride, dim, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_soa_avx2(soa: &[f32], stride: usize, dim: usize, x: &[f32]) -> (u32, f32, f32) {
    scan_soa_impl(soa, stride, dim, x)
}

/// Written lane-wise so that it vectorises: lane `l` tracks the best and second-best distances
/// among points `l, l+8, l+16, ...`, then the lanes are merged.
#[inline(always)]
fn scan_soa_impl(soa: &[f32], stride: usize, dim: usize, x: &[f32]) -> (u32, f32, f32) {
    let mut b1 = [f32::INFINITY; LANES];
    let mut b2 = [f32::INFINITY; LANES];
    let mut bi = [0u32; LANES];
    for blk in 0..stride / LANES {
        let mut acc = [0f32; LANES];
        for (t, &xt) in x.iter().enumerate().take(dim) {
            let row: &[f32; LANES] = soa[t * stride + blk * LANES..][..LANES].try_into().expect("lane slice");
            for l in 0..LANES {
                let d = xt - row[l];
                acc[l] += d * d;
            }
        }
        for l in 0..LANES {
            let d = acc[l];
            let better = d < b1[l];
            b2[l] = if better {
                b1[l]
            } else if d < b2[l] {
                d
            } else {
                b2[l]
            };
            b1[l] = if better { d } else { b1[l] };
            bi[l] = if better { (blk * LANES + l) as u32 } else { bi[l] };
        }
    }
    let mut best = 0;
    for l in 1..LANES {
        if (b1[l], bi[l]) < (b1[best], bi[best]) {
            best = l;
        }
    }
    let mut second = b2[best];
    for (l, &d) in b1.iter().enumerate() {
        if l != best && d < second {
            second = d;
        }
    }
    (bi[best], b1[best], second)
}

/// Squared distances from `x` to all `stride` points of `soa` (layout as in [`scan_soa`]).
#[inline]
fn dists_soa(soa: &[f32], stride: usize, dim: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available; same operations as the portable build.
        return unsafe { dists_soa_avx2(soa, stride, dim, x, out) };
    }
    dists_soa_impl(soa, stride, dim, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dists_soa_avx2(soa: &[f32], stride: usize, dim: usize, x: &[f32], out: &mut [f32]) {
    dists_soa_impl(soa, stride, dim, x, out)
}

#[inline(always)]
fn dists_soa_impl(soa: &[f32], stride: usize, dim: usize, x: &[f32], out: &mut [f32]) {
    let out = &mut out[..stride];
    out.iter_mut().for_each(|o| *o = 0.0);
    for (t, &xt) in x.iter().enumerate().take(dim) {
        for (o, &c) in out.iter_mut().zip(&soa[t * stride..(t + 1) * stride]) {
            let d = xt - c;
            *o += d * d;
        }
    }
}

/// k-means settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KMeansConfig {
    pub k: usize,
    /// Maximum number of Lloyd updates after initialisation.
    pub iters: usize,
    pub seed: u64,
    /// Round the final centroids to f16 and reassign.
    pub f16_centroids: bool,
}

/// k-means result.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub codebook: Codebook,
    /// Exact nearest centroid of every point (with the final, possibly f16-rounded, centroids;
    /// ties to the lowest index).
    pub labels: Vec<u32>,
    /// `Σ w·|x - c(x)|²`.
    pub inertia: f64,
    /// Lloyd updates run.
    pub iters_run: usize,
}

/// Weighted k-means of the `n = points.len() / dim` points (`[n][dim]` row-major). `weights`
/// (one per point, `>= 0`) default to 1; zero-weight points are assigned but do not move
/// centroids. Errors when `k` is 0 or exceeds the number of points.
pub fn kmeans(points: &[f32], dim: usize, weights: Option<&[f32]>, cfg: &KMeansConfig) -> Result<KMeans> {
    ensure!(dim > 0, "k-means: vector length is 0");
    ensure!(points.len().is_multiple_of(dim), "k-means: {} values are not a whole number of {dim}-vectors", points.len());
    let n = points.len() / dim;
    let k = cfg.k;
    ensure!(k > 0, "k-means: 0 centroids requested");
    ensure!(k <= n, "k-means: {k} centroids requested for only {n} vectors");
    ensure!(k as u64 <= 1 << 32, "k-means: {k} centroids do not fit 32-bit indices");
    let ones;
    let w = match weights {
        Some(w) => {
            ensure!(w.len() == n, "k-means: {} weights for {n} vectors", w.len());
            if let Some(x) = w.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                bail!("k-means: weight {x} is not a finite non-negative number");
            }
            // All-zero weights carry no information: fall back to uniform.
            if w.iter().all(|&x| x == 0.0) {
                ones = vec![1f32; n];
                &ones[..]
            } else {
                w
            }
        }
        None => {
            ones = vec![1f32; n];
            &ones[..]
        }
    };
    if let Some(x) = points.iter().find(|x| !x.is_finite()) {
        bail!("k-means: input value {x} is not finite");
    }
    let pt = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);

    let mut cent = init_centroids(points, dim, w, k, &mut rng);
    let mut cb = Codebook::new(cent.clone(), dim);

    // Initial assignment: nearest of the first (well spread, k-means++) centroids, then a
    // descent on the neighbour graph.
    let mut labels = vec![0u32; n];
    let mut upper = vec![0f32; n];
    let mut lower = vec![0f32; n];
    let coarse = Codebook::new(cent[..k.min(64) * dim].to_vec(), dim);
    labels.par_iter_mut().zip(upper.par_iter_mut()).zip(lower.par_iter_mut()).enumerate().for_each(|(i, ((a, u), l))| {
        (*a, *u, *l, _) = cb.descend(pt(i), coarse.scan(pt(i)).0);
    });
    let mut iters_run = 0;
    let mut sums = vec![0f64; k * dim];
    let mut wsum = vec![0f64; k];
    for _ in 0..cfg.iters {
        // Update: weighted means, summed sequentially in point order.
        sums.iter_mut().for_each(|s| *s = 0.0);
        wsum.iter_mut().for_each(|s| *s = 0.0);
        for i in 0..n {
            let (a, wi) = (labels[i] as usize, w[i] as f64);
            wsum[a] += wi;
            for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(pt(i)) {
                *s += wi * x as f64;
            }
        }
        let mut new = cent.clone();
        let mut empty = Vec::new();
        for j in 0..k {
            if wsum[j] > 0.0 {
                for t in 0..dim {
                    new[j * dim + t] = (sums[j * dim + t] / wsum[j]) as f32;
                }
            } else {
                empty.push(j);
            }
        }
        if !empty.is_empty() {
            reseed(&mut new, dim, &empty, points, w, &upper);
        }
        iters_run += 1;
        let changed = move_and_reassign(&mut cent, new, &mut cb, points, &mut labels, &mut upper, &mut lower);
        if changed == 0 && empty.is_empty() {
            break;
        }
    }
    if cfg.f16_centroids {
        let rounded: Vec<f32> = cent.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        if let Some(x) = rounded.iter().find(|x| !x.is_finite()) {
            bail!("k-means: centroid value {x} overflows f16");
        }
        move_and_reassign(&mut cent, rounded, &mut cb, points, &mut labels, &mut upper, &mut lower);
    }
    // Final labels: exact nearest centroid (the iterations may leave a graph-descent answer for
    // points far from every centroid).
    labels.par_iter_mut().enumerate().for_each(|(i, a)| *a = cb.search(pt(i), *a).0);
    let err: Vec<f64> = (0..n).into_par_iter().map(|i| w[i] as f64 * cb.dist2(pt(i), labels[i]) as f64).collect();
    Ok(KMeans { codebook: cb, labels, inertia: err.iter().sum(), iters_run })
}

/// Initial centroids: weighted k-means++ when `k <= 16384`, else (where k-means++ would cost
/// `k²` distance evaluations) `k` distinct points drawn uniformly.
fn init_centroids(points: &[f32], dim: usize, w: &[f32], k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    if k <= NBR_MAX_K {
        return init_plus_plus(points, dim, w, k, rng);
    }
    let n = w.len();
    let mut pos: Vec<usize> = (0..n).filter(|&i| w[i] > 0.0).collect();
    pos.extend((0..n).filter(|&i| w[i] <= 0.0));
    let nz = pos.iter().filter(|&&i| w[i] > 0.0).count();
    // Partial Fisher-Yates over the positive-weight points, topped up in order with the rest.
    for i in 0..k.min(nz) {
        let j = rng.random_range(i..nz);
        pos.swap(i, j);
    }
    pos[..k].iter().flat_map(|&i| points[i * dim..(i + 1) * dim].iter().copied()).collect()
}

/// Weighted k-means++ seeding on a seeded subsample of the points with positive weight
/// (at most `max(k, 2^24 / k)` of them).
fn init_plus_plus(points: &[f32], dim: usize, w: &[f32], k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = w.len();
    // Candidates: positive-weight points first, then zero-weight ones (only used when fewer
    // than k points carry weight).
    let mut pos: Vec<usize> = (0..n).filter(|&i| w[i] > 0.0).collect();
    let s = k.max((1usize << 24) / k).min(n);
    if pos.len() > s {
        // Partial Fisher-Yates: a uniform subsample of size s, then back to point order.
        for i in 0..s {
            let j = rng.random_range(i..pos.len());
            pos.swap(i, j);
        }
        pos.truncate(s);
        pos.sort_unstable();
    }
    if pos.len() < k {
        pos.extend((0..n).filter(|&i| w[i] <= 0.0).take(k - pos.len()));
    }
    let s = pos.len();
    // Candidates transposed ([dim][s]) so the distance update vectorises.
    let mut soa = vec![0f32; dim * s];
    for (c, &i) in pos.iter().enumerate() {
        for t in 0..dim {
            soa[t * s + c] = points[i * dim + t];
        }
    }
    // Zero-weight candidates get a tiny weight so they can fill leftover slots.
    let cw: Vec<f64> = pos.iter().map(|&i| if w[i] > 0.0 { w[i] as f64 } else { 1e-30 }).collect();
    let pick = |rng: &mut ChaCha8Rng, score: &[f64]| -> usize {
        let total: f64 = score.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return rng.random_range(0..score.len());
        }
        let mut r = rng.random::<f64>() * total;
        for (c, &sc) in score.iter().enumerate() {
            if r < sc {
                return c;
            }
            r -= sc;
        }
        // Rounding left r >= 0: the last candidate with a positive score.
        score.iter().rposition(|&sc| sc > 0.0).unwrap_or(0)
    };
    let mut cent = Vec::with_capacity(k * dim);
    let mut d2 = vec![f32::INFINITY; s];
    let mut nd = vec![0f32; s];
    let mut score = cw.clone();
    for _ in 0..k {
        let c = pick(rng, &score);
        let newc: Vec<f32> = (0..dim).map(|t| soa[t * s + c]).collect();
        dists_soa(&soa, s, dim, &newc, &mut nd);
        for ((d, &x), (sc, &wc)) in d2.iter_mut().zip(&nd).zip(score.iter_mut().zip(&cw)) {
            *d = d.min(x);
            *sc = wc * *d as f64;
        }
        cent.extend_from_slice(&newc);
    }
    cent
}

#[inline]
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in a.iter().zip(b) {
        let d = x - y;
        acc += d * d;
    }
    acc
}

/// Moves empty clusters onto the points with the largest weighted error bound (distinct points
/// with positive error only; a cluster with no such point left keeps its centroid).
fn reseed(cent: &mut [f32], dim: usize, empty: &[usize], points: &[f32], w: &[f32], upper: &[f32]) {
    let mut cand: Vec<(f32, usize)> = (0..w.len()).map(|i| (w[i] * upper[i] * upper[i], i)).filter(|&(e, _)| e > 0.0).collect();
    cand.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (&j, &(_, i)) in empty.iter().zip(&cand) {
        cent[j * dim..(j + 1) * dim].copy_from_slice(&points[i * dim..(i + 1) * dim]);
    }
}

/// Replaces the centroids by `new`, loosens the bounds by how far each centroid moved and
/// reassigns every point whose bounds no longer prove its label. Returns how many labels changed.
#[allow(clippy::too_many_arguments)]
fn move_and_reassign(
    cent: &mut Vec<f32>,
    new: Vec<f32>,
    cb: &mut Codebook,
    points: &[f32],
    labels: &mut [u32],
    upper: &mut [f32],
    lower: &mut [f32],
) -> usize {
    let dim = cb.dim;
    let moved: Vec<f32> = cent.chunks_exact(dim).zip(new.chunks_exact(dim)).map(|(a, b)| dist2(a, b).sqrt()).collect();
    // Largest and second-largest move, for the lower bounds.
    let (mut m1, mut m2, mut a1) = (0f32, 0f32, usize::MAX);
    for (j, &m) in moved.iter().enumerate() {
        if m > m1 {
            (m2, m1, a1) = (m1, m, j);
        } else if m > m2 {
            m2 = m;
        }
    }
    *cent = new;
    *cb = Codebook::new(cent.clone(), dim);
    let cb = &*cb;
    labels
        .par_iter_mut()
        .zip(upper.par_iter_mut())
        .zip(lower.par_iter_mut())
        .enumerate()
        .map(|(i, ((a, u), l))| {
            let x = &points[i * dim..(i + 1) * dim];
            let ai = *a as usize;
            *u += moved[ai];
            *l -= if ai == a1 { m2 } else { m1 };
            let m = l.max(cb.half_gap[ai]);
            if *u <= m {
                return 0;
            }
            *u = cb.dist2(x, *a).sqrt();
            if *u <= m {
                return 0;
            }
            let (j, d1, d2, _) = cb.descend(x, *a);
            let changed = (j != *a) as usize;
            (*a, *u, *l) = (j, d1, d2);
            changed
        })
        .sum()
}
