//! Causal grouped-query attention, optionally limited to a sliding window, computed
//! flash-attention style: for a tile of query positions and all query heads that share one KV
//! head, the keys are visited in blocks; each block's scores `S = Q·Kᵀ` and its contribution
//! `P·V` are GEMMs (faer's sequential kernel), and the softmax is carried across blocks online
//! (running row max and row sum, earlier output rescaled when the max grows). Key blocks that the
//! causal or window mask hides entirely are never computed; scores never exceed one
//! `(heads per KV head × BQ) × BK` tile per task.

use crate::linalg::{exp_fast, matmul_bt_seq, matmul_seq, max8, simd_fn, sum8};
use rayon::prelude::*;

/// Query positions per task.
pub const BQ: usize = 64;
/// Keys per block.
pub const BK: usize = 256;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub head_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Query i sees keys j with i − window < j ≤ i (transformers' sliding mask); `None`: all j ≤ i.
    pub window: Option<usize>,
}

/// Attention over `rows / seq_len` independent sequences: `q` is `[rows][heads·hd]`, `k` and `v`
/// `[rows][kv_heads·hd]` (RoPE already applied); returns `[rows][heads·hd]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], rows: usize, seq_len: usize, d: Dims) -> Vec<f32> {
    let Dims { head_dim: hd, heads: nh, kv_heads: nkv, window } = d;
    let (qd, kd) = (nh * hd, nkv * hd);
    assert!(nkv > 0 && nh % nkv == 0 && rows.is_multiple_of(seq_len));
    assert!(q.len() == rows * qd && k.len() == rows * kd && v.len() == rows * kd);
    let n_seq = rows / seq_len;
    // Each (sequence, KV head)'s keys and values contiguous: [seq_len][hd].
    let gather = |src: &[f32], s: usize, g: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(seq_len * hd);
        for t in 0..seq_len {
            let r = s * seq_len + t;
            out.extend_from_slice(&src[r * kd + g * hd..r * kd + (g + 1) * hd]);
        }
        out
    };
    let kvs: Vec<(Vec<f32>, Vec<f32>)> =
        (0..n_seq * nkv).into_par_iter().map(|i| (gather(k, i / nkv, i % nkv), gather(v, i / nkv, i % nkv))).collect();
    let mut out = vec![0f32; rows * qd];
    let n_blocks = seq_len.div_ceil(BQ);
    // One task per (sequence, query block): it owns those output rows, for every head. Later
    // blocks see more keys, so they go first (rayon splits the list from the front).
    let mut blocks: Vec<(usize, &mut [f32])> = out
        .chunks_mut(seq_len * qd)
        .enumerate()
        .flat_map(|(s, so)| so.chunks_mut(BQ * qd).enumerate().map(move |(b, o)| (s * n_blocks + b, o)))
        .collect();
    blocks.reverse();
    blocks.into_par_iter().for_each(|(task, o)| {
        let (s, b) = (task / n_blocks, task % n_blocks);
        let r0 = b * BQ;
        let m = o.len() / qd;
        let group = nh / nkv;
        let mut tile = Tile::new(group * m, hd);
        for g in 0..nkv {
            let (kh, vh) = &kvs[s * nkv + g];
            // Q of the group's heads stacked: row hi·m + i is head g·group + hi at position r0 + i.
            for hi in 0..group {
                let h = g * group + hi;
                for i in 0..m {
                    let r = s * seq_len + r0 + i;
                    tile.q[(hi * m + i) * hd..(hi * m + i + 1) * hd].copy_from_slice(&q[r * qd + h * hd..r * qd + (h + 1) * hd]);
                }
            }
            tile.run(kh, vh, r0, m, hd, window);
            for hi in 0..group {
                let h = g * group + hi;
                for i in 0..m {
                    o[i * qd + h * hd..i * qd + (h + 1) * hd].copy_from_slice(&tile.o[(hi * m + i) * hd..(hi * m + i + 1) * hd]);
                }
            }
        }
    });
    out
}

/// Buffers of one query tile (`n` stacked query rows).
struct Tile {
    q: Vec<f32>,
    o: Vec<f32>,
    s: Vec<f32>,
    mx: Vec<f32>,
    l: Vec<f32>,
    corr: Vec<f32>,
}

impl Tile {
    fn new(n: usize, hd: usize) -> Self {
        Tile { q: vec![0.0; n * hd], o: vec![0.0; n * hd], s: vec![0.0; n * BK], mx: vec![0.0; n], l: vec![0.0; n], corr: vec![0.0; n] }
    }

    /// `o = softmax(q·kᵀ/√hd, masked)·v` for the stacked rows in `q` (positions `r0 + row % m`).
    fn run(&mut self, kh: &[f32], vh: &[f32], r0: usize, m: usize, hd: usize, window: Option<usize>) {
        let n = self.q.len() / hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let win = window.unwrap_or(usize::MAX);
        let r1 = r0 + m;
        // Keys needed by any row of the tile: from the first row's window start to the last row.
        let k_start = (r0 + 1).saturating_sub(win);
        self.o.fill(0.0);
        self.mx.fill(f32::NEG_INFINITY);
        self.l.fill(0.0);
        let mut kb = k_start;
        while kb < r1 {
            let kn = BK.min(r1 - kb);
            let s = &mut self.s[..n * kn];
            matmul_bt_seq(s, &self.q, n, hd, &kh[kb * hd..(kb + kn) * hd], kn);
            let rescale = softmax_block(s, kn, m, r0, kb, win, scale, &mut self.mx, &mut self.l, &mut self.corr);
            if rescale {
                scale_rows(&mut self.o, &self.corr, hd);
            }
            matmul_seq(&mut self.o, s, n, kn, &vh[kb * hd..(kb + kn) * hd], hd, true);
            kb += kn;
        }
        let inv: Vec<f32> = self.l.iter().map(|&l| 1.0 / l).collect();
        scale_rows(&mut self.o, &inv, hd);
    }
}

simd_fn! {
    /// Online-softmax step over one key block: `s` holds `kn` raw scores per stacked row (row `ri`
    /// is query position `r0 + ri % m`, keys `kb..kb + kn`). Masked scores become 0, live ones
    /// `e^(scale·s − max)` with the row's running max `mx` updated; the running sum `l` is
    /// rescaled and extended, and `corr` gets the factor earlier outputs must be scaled by.
    /// Returns whether any factor differs from 1.
    #[allow(clippy::too_many_arguments)]
    fn softmax_block(s: &mut [f32], kn: usize, m: usize, r0: usize, kb: usize, win: usize, scale: f32,
                     mx: &mut [f32], l: &mut [f32], corr: &mut [f32]) -> bool {
        let mut rescale = false;
        for (ri, row) in s.chunks_mut(kn).enumerate() {
            let p = r0 + ri % m;
            let lo = (p + 1).saturating_sub(win).max(kb);
            let hi = (p + 1).min(kb + kn);
            if lo >= hi {
                row.fill(0.0);
                corr[ri] = 1.0;
                continue;
            }
            let (a, e) = (lo - kb, hi - kb);
            let live = &mut row[a..e];
            let block_max = max8(live) * scale;
            let m_old = mx[ri];
            let m_new = if block_max > m_old { block_max } else { m_old };
            live.iter_mut().for_each(|x| *x = exp_fast(*x * scale - m_new));
            let c = if m_new == m_old { 1.0 } else { exp_fast(m_old - m_new) };
            l[ri] = l[ri] * c + sum8(live);
            mx[ri] = m_new;
            corr[ri] = c;
            rescale |= c != 1.0;
            row[..a].fill(0.0);
            row[e..].fill(0.0);
        }
        rescale
    }
}

simd_fn! {
    /// Multiply each `hd`-wide row of `o` by its factor.
    fn scale_rows(o: &mut [f32], f: &[f32], hd: usize) {
        for (row, &c) in o.chunks_mut(hd).zip(f) {
            row.iter_mut().for_each(|x| *x *= c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Textbook attention in f64: full score rows, mask, softmax, weighted sum of values.
    fn reference(q: &[f32], k: &[f32], v: &[f32], rows: usize, seq_len: usize, d: Dims) -> Vec<f64> {
        let (hd, nh, nkv) = (d.head_dim, d.heads, d.kv_heads);
        let (qd, kd) = (nh * hd, nkv * hd);
        let mut out = vec![0f64; rows * qd];
        for s in 0..rows / seq_len {
            for h in 0..nh {
                let g = h / (nh / nkv);
                for i in 0..seq_len {
                    let qi = &q[(s * seq_len + i) * qd + h * hd..][..hd];
                    let keys: Vec<usize> = (0..=i).filter(|&j| d.window.is_none_or(|w| i - j < w)).collect();
                    let sc: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            let kj = &k[(s * seq_len + j) * kd + g * hd..][..hd];
                            qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (&j, w) in keys.iter().zip(&e) {
                        let vj = &v[(s * seq_len + j) * kd + g * hd..][..hd];
                        for t in 0..hd {
                            out[(s * seq_len + i) * qd + h * hd + t] += w / z * vj[t] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// Sequences longer than one key block and than one query tile, grouped heads, with and
    /// without a window that starts inside a key block: within 1e-5 of the f64 reference.
    #[test]
    fn matches_textbook_attention_across_blocks() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (seq_len, n_seq, window) in [(BK + BQ + 37, 2, None), (2 * BK + 11, 1, Some(BK / 2 + 3)), (40, 3, Some(7)), (BQ, 1, Some(1))] {
            let d = Dims { head_dim: 16, heads: 6, kv_heads: 2, window };
            let rows = seq_len * n_seq;
            // Scores spread over several units, so the running max changes across blocks.
            let mut gen = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| (rng.random::<f32>() - 0.5) * s).collect() };
            let q = gen(rows * 96, 6.0);
            let k = gen(rows * 32, 6.0);
            let v = gen(rows * 32, 2.0);
            let got = attention(&q, &k, &v, rows, seq_len, d);
            let want = reference(&q, &k, &v, rows, seq_len, d);
            let err = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(err < 1e-5, "seq {seq_len} window {window:?}: max abs error {err:e}");
        }
    }
}
