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
    /// Keep about this many rows (tokens) of the input, evenly strided, for loss evaluation.
    pub sample_rows: usize,
}

impl Needs {
    /// Whether a calibration pass is needed at all.
    pub fn any(self) -> bool {
        self.mean_abs || self.mean_sq || self.hessian || self.sample_rows > 0
    }

    pub fn union(self, o: Needs) -> Needs {
        Needs {
            mean_abs: self.mean_abs || o.mean_abs,
            mean_sq: self.mean_sq || o.mean_sq,
            hessian: self.hessian || o.hessian,
            sample_rows: self.sample_rows.max(o.sample_rows),
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
    stride: usize,
    /// Kept rows, `[n][dim]`.
    pub sample: Vec<f32>,
    needs: Needs,
}

impl InputStats {
    /// `total_rows` is the number of rows that will be observed (sets the sampling stride).
    pub fn new(dim: usize, total_rows: usize, needs: Needs) -> Self {
        let stride = total_rows.checked_div(needs.sample_rows).map_or(usize::MAX, |s| s.max(1));
        Self {
            dim,
            rows: 0,
            abs_sum: if needs.mean_abs { vec![0.0; dim] } else { Vec::new() },
            sq_sum: if needs.mean_sq { vec![0.0; dim] } else { Vec::new() },
            xtx: if needs.hessian { vec![0.0; dim * dim] } else { Vec::new() },
            stride,
            sample: Vec::new(),
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
        if self.needs.sample_rows > 0 {
            for r in 0..rows {
                if (self.rows + r).is_multiple_of(self.stride) && self.sample.len() / d < self.needs.sample_rows {
                    self.sample.extend_from_slice(&x[r * d..(r + 1) * d]);
                }
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

    pub fn sample_rows(&self) -> usize {
        self.sample.len() / self.dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_matches_direct_sum() {
        let (d, n) = (5, 37);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let mut st = InputStats::new(d, n, Needs { mean_abs: true, mean_sq: false, hessian: true, sample_rows: 4 });
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
        // Rows 0, 9, 18, 27, 36 are sampled (stride 37/4 = 9), capped at 4.
        assert_eq!(st.sample_rows(), 4);
        assert_eq!(&st.sample[d..2 * d], &x[9 * d..10 * d]);
    }
}
