//! The Hessians GPTQ-style methods quantize a linear against, once AWQ-style transforms have
//! rescaled its input: the calibration statistics' `H` seen through the folded channel scales,
//! or (`--true-sequential`) `H` collected anew on the layer with its earlier linears quantized.

use crate::arch::Input;
use crate::model::{LayerWeights, Model};
use crate::quant::QTensor;
use crate::stats::{InputStats, Needs};
use anyhow::Result;

/// `H` of an input whose channels were divided by `s` (AWQ folded `s` into the input's producer
/// and multiplied the readers' weight columns by it): `H'ᵢⱼ = Hᵢⱼ / (sᵢ·sⱼ)`. `None`: unchanged.
pub(crate) fn scaled_hessian(mut h: Vec<f64>, s: Option<&[f32]>) -> Vec<f64> {
    if let Some(s) = s {
        let d = s.len();
        debug_assert_eq!(h.len(), d * d);
        for (i, row) in h.chunks_mut(d).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= s[i] as f64 * s[j] as f64;
            }
        }
    }
    h
}

/// The Hessian of `input` collected by running layer `lw` (its transforms applied) over the
/// layer's input hidden states `h_in` (whole windows of `seq_len` tokens), with every linear of
/// `done` (table order; `None` or absent: float) replaced by its dequantized weight: the inputs
/// the later linears see once the earlier ones are quantized (GPTQ's `--true-sequential`).
pub(crate) fn hessian_after(
    model: &Model,
    lw: &LayerWeights,
    done: &[Option<QTensor>],
    h_in: &[f32],
    seq_len: usize,
    input: Input,
) -> Result<Vec<f64>> {
    let mut scratch = lw.clone();
    for (l, q) in scratch.linears.iter_mut().zip(done) {
        if let Some(q) = q {
            l.w = q.dequantize();
        }
    }
    let c = &model.cfg;
    let dim = match input {
        Input::AttnIn | Input::MlpIn => c.hidden_size,
        Input::AttnOut => c.q_dim(),
        Input::MlpAct => c.intermediate_size,
    };
    let rows = h_in.len() / c.hidden_size;
    let mut st = InputStats::new(dim, rows, seq_len, Needs { hessian: true, ..Needs::default() });
    let mut h = h_in.to_vec();
    model.forward_layer(&scratch, &mut h, seq_len, &mut |inp, x, r| {
        if inp == input {
            st.observe(x, r);
        }
    });
    Ok(st.hessian())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_hessian_is_the_hessian_of_the_scaled_inputs() {
        // H of rows x, and of rows x / s, computed directly.
        let (d, n) = (3, 5);
        let x: Vec<f64> = (0..n * d).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
        let s = [2.0f32, 0.5, 4.0];
        let gram = |x: &[f64]| -> Vec<f64> {
            let mut h = vec![0.0; d * d];
            for r in x.chunks(d) {
                for i in 0..d {
                    for j in 0..d {
                        h[i * d + j] += 2.0 * r[i] * r[j] / n as f64;
                    }
                }
            }
            h
        };
        let xs: Vec<f64> = x.chunks(d).flat_map(|r| r.iter().zip(&s).map(|(v, s)| v / *s as f64).collect::<Vec<_>>()).collect();
        let got = scaled_hessian(gram(&x), Some(&s));
        for (a, b) in got.iter().zip(gram(&xs)) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert_eq!(scaled_hessian(gram(&x), None), gram(&x));
    }
}
