//! Streaming statistics of a linear layer's input, accumulated chunk by chunk during the
//! calibration forward pass. Which statistics are gathered is chosen by the method
//! ([`Needs`]): AWQ needs per-channel mean |x| and a subsample of rows; GPTQ/VPTQ need X·Xᵀ.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef};

#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    pub mean_abs: bool,
    /// Per-channel mean x² (= diag(H)/2): importance of the activation-aware StatsQ/shift.
    pub mean_sq: bool,
    pub hessian: bool,
    /// Keep every row of about this many tokens' worth of whole calibration windows, evenly
    /// spaced over the windows (AWQ's scale search runs attention over them).
    pub window_tokens: usize,
    /// Keep about this many rows strided over every calibration token, the positions rotated from
    /// window to window so that no position is kept more often than another (AWQ's clip search).
    pub strided_rows: usize,
}

impl Needs {
    /// Whether a calibration pass is needed at all.
    pub fn any(self) -> bool {
        self.mean_abs || self.mean_sq || self.hessian || self.window_tokens > 0 || self.strided_rows > 0
    }

    pub fn union(self, o: Needs) -> Needs {
        Needs {
            mean_abs: self.mean_abs || o.mean_abs,
            mean_sq: self.mean_sq || o.mean_sq,
            hessian: self.hessian || o.hessian,
            window_tokens: self.window_tokens.max(o.window_tokens),
            strided_rows: self.strided_rows.max(o.strided_rows),
        }
    }
}

/// Statistics of one input (shared by every linear that reads it).
pub struct InputStats {
    pub dim: usize,
    /// Rows observed so far.
    pub rows: usize,
    abs_sum: Vec<f64>,
    sq_sum: Vec<f64>,
    /// Σ x·xᵀ (`dim × dim`), f64 accumulation of f32 per-chunk products.
    xtx: Vec<f64>,
    /// Rows per calibration window.
    pub seq_len: usize,
    /// Which calibration windows [`InputStats::windows`] keeps.
    keep_window: Vec<bool>,
    stride: usize,
    /// Every row of the kept windows, in order: `[n][dim]`, whole windows of `seq_len` rows.
    pub windows: Vec<f32>,
    /// The strided rows, `[n][dim]`.
    pub strided: Vec<f32>,
    /// Global row index of every strided row.
    pub strided_index: Vec<usize>,
    needs: Needs,
}

/// The windows kept for `tokens` tokens' worth out of `n_seq`: `ceil(tokens / seq_len)` of them
/// (at most all), evenly spaced.
pub fn kept_windows(n_seq: usize, seq_len: usize, tokens: usize) -> Vec<bool> {
    let n = tokens.div_ceil(seq_len.max(1)).min(n_seq);
    let mut keep = vec![false; n_seq];
    for i in 0..n {
        keep[i * n_seq / n] = true;
    }
    keep
}

/// Whether global row `r` (position `r % seq_len` of window `r / seq_len`) is a strided row:
/// every `stride`-th row, shifted by one more at each window, so that a window whose length is a
/// multiple of the stride does not keep the same positions (the attention sink at position 0, say)
/// as the window before it.
pub fn is_strided(r: usize, seq_len: usize, stride: usize) -> bool {
    (r + r / seq_len).is_multiple_of(stride)
}

impl InputStats {
    /// `total_rows` is the number of rows that will be observed, in windows of `seq_len`.
    pub fn new(dim: usize, total_rows: usize, seq_len: usize, needs: Needs) -> Self {
        let seq_len = seq_len.max(1);
        let stride = total_rows.div_ceil(needs.strided_rows.max(1)).max(1);
        let keep_window =
            if needs.window_tokens > 0 { kept_windows(total_rows / seq_len, seq_len, needs.window_tokens) } else { Vec::new() };
        Self {
            dim,
            rows: 0,
            abs_sum: if needs.mean_abs { vec![0.0; dim] } else { Vec::new() },
            sq_sum: if needs.mean_sq { vec![0.0; dim] } else { Vec::new() },
            xtx: if needs.hessian { vec![0.0; dim * dim] } else { Vec::new() },
            seq_len,
            keep_window,
            stride,
            windows: Vec::new(),
            strided: Vec::new(),
            strided_index: Vec::new(),
            needs,
        }
    }

    pub fn observe(&mut self, x: &[f32], rows: usize) {
        let d = self.dim;
        debug_assert_eq!(x.len(), rows * d);
        if self.needs.mean_abs {
            for r in x.chunks(d) {
                self.abs_sum.iter_mut().zip(r).for_each(|(a, v)| *a += v.abs() as f64);
            }
        }
        if self.needs.mean_sq {
            for r in x.chunks(d) {
                self.sq_sum.iter_mut().zip(r).for_each(|(a, v)| *a += (v * v) as f64);
            }
        }
        if self.needs.hessian {
            // Lower triangle of xᵀx for this chunk in f32 (≤ 4096 rows, a symmetric rank-k
            // update: half a GEMM), accumulated across chunks in f64 so that the sum over all
            // calibration tokens does not lose the small contributions of late chunks.
            let mut p = vec![0f32; d * d];
            let xt = MatRef::from_column_major_slice(x, d, rows); // x row-major [rows][d] = xᵀ col-major
            let xm = MatRef::from_row_major_slice(x, rows, d);
            let pm = MatMut::from_column_major_slice_mut(&mut p, d, d);
            triangular::matmul(
                pm,
                BlockStructure::TriangularLower,
                Accum::Replace,
                xt,
                BlockStructure::Rectangular,
                xm,
                BlockStructure::Rectangular,
                1.0f32,
                crate::linalg::par(),
            );
            for c in 0..d {
                for r in c..d {
                    self.xtx[c * d + r] += p[c * d + r] as f64;
                }
            }
        }
        for r in 0..rows {
            let g = self.rows + r;
            let row = &x[r * d..(r + 1) * d];
            if self.keep_window.get(g / self.seq_len).copied().unwrap_or(false) {
                self.windows.extend_from_slice(row);
            }
            if self.needs.strided_rows > 0 && is_strided(g, self.seq_len, self.stride) {
                self.strided.extend_from_slice(row);
                self.strided_index.push(g);
            }
        }
        self.rows += rows;
    }

    /// Mean |x| per input channel.
    pub fn mean_abs(&self) -> Vec<f32> {
        self.abs_sum.iter().map(|&s| (s / self.rows.max(1) as f64) as f32).collect()
    }

    /// Mean x² per input channel.
    pub fn mean_sq(&self) -> Vec<f32> {
        self.sq_sum.iter().map(|&s| (s / self.rows.max(1) as f64) as f32).collect()
    }

    /// The GPTQ Hessian `H = (2/n)·Σ x·xᵀ` (`dim × dim`, f64, symmetric).
    pub fn hessian(&self) -> Vec<f64> {
        let (d, f) = (self.dim, 2.0 / self.rows.max(1) as f64);
        let mut h = vec![0f64; d * d];
        for c in 0..d {
            for r in c..d {
                let v = self.xtx[c * d + r] * f;
                h[r * d + c] = v;
                h[c * d + r] = v;
            }
        }
        h
    }

    /// Rows in [`InputStats::windows`].
    pub fn window_rows(&self) -> usize {
        self.windows.len() / self.dim
    }

    /// Rows in [`InputStats::strided`].
    pub fn strided_rows(&self) -> usize {
        self.strided.len() / self.dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_matches_direct_sum() {
        let (d, n) = (5, 37);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let mut st = InputStats::new(d, n, n, Needs { mean_abs: true, hessian: true, ..Needs::default() });
        st.observe(&x[..20 * d], 20);
        st.observe(&x[20 * d..], n - 20);
        let h = st.hessian();
        for a in 0..d {
            for b in 0..d {
                let want: f64 = (0..n).map(|r| x[r * d + a] as f64 * x[r * d + b] as f64).sum::<f64>() * 2.0 / n as f64;
                assert!((h[a * d + b] - want).abs() < 1e-5, "{a},{b}: {} vs {want}", h[a * d + b]);
            }
        }
        let m = st.mean_abs();
        let want0: f64 = (0..n).map(|r| x[r * d].abs() as f64).sum::<f64>() / n as f64;
        assert!((m[0] as f64 - want0).abs() < 1e-6);
    }

    #[test]
    fn windows_and_strided_rows() {
        // 6 windows of 8 rows; row r holds the value r in every channel.
        let (d, seq, n_seq) = (3, 8, 6);
        let x: Vec<f32> = (0..seq * n_seq).flat_map(|r| [r as f32; 3]).collect();
        let needs = Needs { window_tokens: 20, strided_rows: 12, ..Needs::default() };
        let mut st = InputStats::new(d, seq * n_seq, seq, needs);
        // Chunks that do not end on window boundaries.
        st.observe(&x[..13 * d], 13);
        st.observe(&x[13 * d..], seq * n_seq - 13);
        // ceil(20 / 8) = 3 windows out of 6, evenly spaced: 0, 2, 4.
        let rows: Vec<usize> = st.windows.chunks(d).map(|r| r[0] as usize).collect();
        let want: Vec<usize> = [0, 2, 4].iter().flat_map(|w| w * seq..(w + 1) * seq).collect();
        assert_eq!(rows, want);
        assert_eq!(st.window_rows(), 24);
        // Stride ceil(48 / 12) = 4, shifted by one row per window: positions 0,4 | 3,7 | 2,6 |
        // 1,5 | 0,4 | 3,7, so no position is kept in every window.
        let want = [0, 4, 11, 15, 18, 22, 25, 29, 32, 36, 43, 47];
        assert_eq!(st.strided_index, want);
        let rows: Vec<usize> = st.strided.chunks(d).map(|r| r[0] as usize).collect();
        assert_eq!(rows, want);
    }
}
