//! Streaming statistics of a linear layer's input, accumulated chunk by chunk during the
//! calibration forward pass. Which statistics are gathered is chosen by the method
//! ([`Needs`]): AWQ needs per-channel mean |x| and a subsample of rows; GPTQ/VPTQ need X·Xᵀ.

use crate::linalg::matmul_bt_into;

#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    pub mean_abs: bool,
    pub hessian: bool,
    /// Keep about this many rows (tokens) of the input, evenly strided, for loss evaluation.
    pub sample_rows: usize,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs { mean_abs: self.mean_abs || o.mean_abs, hessian: self.hessian || o.hessian, sample_rows: self.sample_rows.max(o.sample_rows) }
    }
}

/// Statistics of one input (shared by every linear that reads it).
pub struct InputStats {
    pub dim: usize,
    /// Rows observed so far.
    pub rows: usize,
    abs_sum: Vec<f64>,
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
        let stride = if needs.sample_rows == 0 { usize::MAX } else { (total_rows / needs.sample_rows).max(1) };
        Self {
            dim,
            rows: 0,
            abs_sum: if needs.mean_abs { vec![0.0; dim] } else { Vec::new() },
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
        if self.needs.hessian {
            // xᵀx of this chunk in f32 (≤ 4096 rows), accumulated across chunks in f64.
            let mut xt = vec![0f32; d * rows];
            for (r, row) in x.chunks(d).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    xt[c * rows + r] = v;
                }
            }
            let mut p = vec![0f32; d * d];
            matmul_bt_into(&mut p, &xt, d, rows, &xt, d, faer::Par::rayon(0));
            self.xtx.iter_mut().zip(&p).for_each(|(a, &b)| *a += b as f64);
        }
        if self.needs.sample_rows > 0 {
            for r in 0..rows {
                if (self.rows + r) % self.stride == 0 && self.sample.len() / d < self.needs.sample_rows {
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

    /// The GPTQ Hessian `H = (2/n)·Σ x·xᵀ` (`dim × dim`, f64).
    pub fn hessian(&self) -> Vec<f64> {
        let f = 2.0 / self.rows.max(1) as f64;
        self.xtx.iter().map(|v| v * f).collect()
    }

    pub fn sample_rows(&self) -> usize {
        self.sample.len() / self.dim
    }
}
