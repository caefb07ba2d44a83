//! The Hessian preparation GPTQ and VPTQ share (IST-DASLab's `fasterquant`): dead input channels
//! (`H[i][i] == 0`) count with a unit diagonal, `λ = damp · mean(diag H)` is added to the
//! diagonal, and the damped matrix is factored as `H_d = L·Lᵀ` and `H_d⁻¹ = Uᵀ·U` (`U` upper
//! triangular, the factor the error feedback walks). Sequential faer kernels, so the result does
//! not depend on the thread count.

use anyhow::{anyhow, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::{Mat, MatMut, Par};

/// The damped Hessian's factors.
pub struct Prepared {
    /// The damping added to the diagonal.
    pub lambda: f64,
    /// `H_d = L·Lᵀ`, lower triangular (the error reports' metric).
    pub l: Mat<f64>,
    /// `H_d⁻¹ = Uᵀ·U`, row-major `n × n`, upper triangular.
    pub u: Vec<f64>,
}

/// The input channels whose Hessian diagonal is 0 (`h` row-major `n × n`).
pub fn dead(h: &[f64], n: usize) -> Vec<bool> {
    (0..n).map(|i| h[i * n + i] == 0.0).collect()
}

/// The one error of a Hessian that cannot be factored: `what` says which factorisation failed.
pub fn not_pd(damp: f64, what: &str) -> anyhow::Error {
    anyhow!("Hessian is not positive definite after damping {damp} ({what}); increase --damp or use more calibration data")
}

/// Prepare the Hessian `h(i, j)` (`n × n`, in original channel order, `dead` channels from
/// [`dead`]) for a walk over the channels in order `perm`: the damped matrix in walk order and its
/// factors. `λ` sums the diagonal in original order.
pub fn prepare(n: usize, h: impl Fn(usize, usize) -> f64, dead: &[bool], perm: &[usize], damp: f64) -> Result<Prepared> {
    let diag = |i: usize| if dead[i] { 1.0 } else { h(i, i) };
    let lambda = damp * (0..n).map(diag).sum::<f64>() / n as f64;
    let mut l = Mat::from_fn(n, n, |i, j| {
        let (a, b) = (perm[i], perm[j]);
        if a == b {
            diag(a) + lambda
        } else if j <= i {
            h(a, b)
        } else {
            0.0
        }
    });
    let par = Par::Seq;
    let req = llt::factor::cholesky_in_place_scratch::<f64>(n, par, Default::default()).or(llt::inverse::inverse_scratch::<f64>(n, par));
    let mut mem = MemBuffer::new(req);
    let stack = MemStack::new(&mut mem);
    llt::factor::cholesky_in_place(l.as_mut(), Default::default(), par, stack, Default::default())
        .map_err(|_| not_pd(damp, "Cholesky of H failed"))?;
    for j in 1..n {
        for i in 0..j {
            l[(i, j)] = 0.0;
        }
    }
    // H⁻¹ and its Cholesky factor L' are computed straight in `u`'s buffer, viewed column-major:
    // column i of L' is then row i of U = L'ᵀ, with no second n×n matrix (n² f64 is 1.6 GB for
    // an 8B model's down_proj).
    let mut u = vec![0f64; n * n];
    let mut inv = MatMut::from_column_major_slice_mut(&mut u, n, n);
    llt::inverse::inverse(inv.as_mut(), l.as_ref(), par, stack);
    llt::factor::cholesky_in_place(inv.as_mut(), Default::default(), par, stack, Default::default())
        .map_err(|_| not_pd(damp, "Cholesky of H⁻¹ failed"))?;
    // U's strictly lower part (L''s strictly upper part, left over from the inverse) is zero.
    for j in 1..n {
        for i in 0..j {
            inv[(i, j)] = 0.0;
        }
    }
    Ok(Prepared { lambda, l, u })
}
