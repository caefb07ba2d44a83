//! StatsQ and DenseShift: hand-derived codes, the zero-free property, exact round trips through
//! the lowbit layout, the multiplication-free matmul and the activation-aware scale searches.

use lowbit::pack::{LowbitPacked, PackedLayout};
use lowbit::quant::shift::{mul_pow2_neg, shift, shift_code, shift_matmul};
use lowbit::quant::statsq::{statsq, statsq_code, MIN_SCALE};
use lowbit::quant::{grid_value, Grid, GroupQ};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Standard normal samples (Box-Muller).
fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// Gaussian weights with a few large outliers, like an LLM linear layer.
fn llm_like(rng: &mut ChaCha8Rng, out: usize, inn: usize) -> Vec<f32> {
    let mut w: Vec<f32> = normal(rng, out * inn).iter().map(|x| 0.02 * x).collect();
    for _ in 0..(out * inn / 64).max(1) {
        let k = rng.random_range(0..w.len());
        w[k] *= 8.0;
    }
    w
}

/// `Σ_r Σ_c imp_c·(w - Q(w))²`.
fn weighted_err(w: &[f32], q: &GroupQ, imp: &[f32]) -> f64 {
    let d = q.dequantize();
    let i = q.in_features;
    w.iter().zip(&d).enumerate().map(|(k, (a, b))| imp[k % i] as f64 * ((a - b) as f64).powi(2)).sum()
}

// ---------------------------------------------------------------------------------------------
// StatsQ by hand. n = 2^(b-1); x = clamp(w/s, -1, 1-1e-6); k = round_half_even(x·n - 0.5);
// code = k + n; value = s·(k + 0.5)/n.

#[test]
fn statsq_2bit_by_hand() {
    let w = [
        0.5, -0.25, 0.125, -1.125, // row 0
        3.0, -3.0, 1.0, 1.0, // row 1
    ];
    let q = statsq(&w, 2, 4, 2, 4, None);
    // row 0: mean|w| = 2.0/4 = 0.5, s = 1.0, n = 2
    //   0.5:    0.5·2 - 0.5 =  0.5  -> tie, even -> k =  0 -> code 2 (value  0.25)
    //  -0.25:  -0.5  - 0.5 = -1.0           -> k = -1 -> code 1 (value -0.25)
    //   0.125:  0.25 - 0.5 = -0.25          -> k =  0 -> code 2 (value  0.25)
    //  -1.125: clamp -1 -> -2 - 0.5 = -2.5 -> tie, even -> k = -2 -> code 0 (value -0.75)
    // row 1: mean|w| = 8/4 = 2, s = 4; x = 0.75, -0.75, 0.25, 0.25
    //   0.75·2 - 0.5 = 1 -> code 3;  -1.5 - 0.5 = -2 -> code 0;  0.5 - 0.5 = 0 -> code 2 (x2)
    assert_eq!(q.codes, vec![2, 1, 2, 0, 3, 0, 2, 2]);
    assert_eq!(q.scales, vec![1.0, 4.0]);
    assert_eq!(q.zeros, vec![0, 0]);
    assert_eq!((q.grid, q.bits, q.group_size, q.g_idx.clone()), (Grid::HalfInt, 2, 4, None));
    // row 1 is reproduced exactly: 4·1.5/2 = 3, 4·(-1.5)/2 = -3, 4·0.5/2 = 1
    assert_eq!(q.dequantize(), vec![0.25, -0.25, 0.25, -0.75, 3.0, -3.0, 1.0, 1.0]);
    // the aware search keeps the plain scale when no importance tells it otherwise
    assert_eq!(statsq(&w, 2, 4, 2, 4, Some(&[0.0; 4])), q);
}

#[test]
fn statsq_3bit_by_hand() {
    let w = [0.3, -0.7, 1.5, 0.0];
    // per row: mean|w| = 2.5/4 = 0.625, s = 1.25, n = 4; x = 0.24, -0.56, 1.2, 0
    //   0.24·4 - 0.5 = 0.46 -> k = 0 -> code 4;   -2.24 - 0.5 = -2.74 -> k = -3 -> code 1
    //   clamp 0.999999 -> 3.999996 - 0.5 = 3.499996 -> k = 3 -> code 7
    //   0 - 0.5 = -0.5 -> tie, even -> k = 0 -> code 4 (value 1.25·0.5/4 = 0.15625, not 0)
    let q = statsq(&w, 1, 4, 3, 128, None);
    assert_eq!(q.codes, vec![4, 1, 7, 4]);
    assert_eq!(q.scales, vec![1.25]);
    assert_eq!(q.dequantize(), vec![0.15625, -0.78125, 1.09375, 0.15625]);
    // groups of 2: [0.3, -0.7]: mean 0.5, s = 1.0: 1.2 - 0.5 = 0.7 -> k = 1 -> code 5;
    //                                              -2.8 - 0.5 = -3.3 -> k = -3 -> code 1
    //              [1.5, 0.0]:  mean 0.75, s = 1.5: x = 1 -> clamp -> code 7; 0 -> code 4
    let q = statsq(&w, 1, 4, 3, 2, None);
    assert_eq!(q.codes, vec![5, 1, 7, 4]);
    assert_eq!(q.scales, vec![1.0, 1.5]);
    assert_eq!(q.dequantize(), vec![0.375, -0.625, 1.3125, 0.1875]);
    // the code formula is the nearest level; OFQ's ties-to-even on a level midpoint
    assert_eq!(statsq_code(0.25, 1.0, 3), 4); // 0.25·4 - 0.5 = 0.5 -> 0 (even)
    assert_eq!(statsq_code(0.75, 1.0, 3), 6); // 2.5 -> 2 (even)
    assert_eq!(statsq_code(-0.75, 1.0, 3), 0); // -3.5 -> -4 (even)
}

// ---------------------------------------------------------------------------------------------
// DenseShift by hand. Code = sign bit (top, 1 = negative) | p, value = ±s·2^-p. Exact nearest
// level: with levels L_p = s·2^-p the thresholds are the midpoints 0.75·s·2^-p, ties go up.

#[test]
fn shift_codes_at_fixed_scale_by_hand() {
    // 3 bits, s = 1: levels 1, 0.5, 0.25, 0.125; midpoints 0.75, 0.375, 0.1875
    let c = |w| shift_code(w, 1.0, 3);
    assert_eq!(c(5.0), 0b000); // above s -> p = 0
    assert_eq!(c(0.75), 0b000); // on the midpoint: the larger level
    assert_eq!(c(0.74), 0b001); // 0.375 <= 0.74 < 0.75 -> p = 1
    assert_eq!(c(-0.4), 0b101); // negative, p = 1
    assert_eq!(c(0.2), 0b010); // 0.1875 <= 0.2 < 0.375 -> p = 2
    assert_eq!(c(0.1875), 0b010);
    assert_eq!(c(0.18), 0b011); // below 0.1875 -> smallest level, p = 3
    assert_eq!(c(-0.1), 0b111);
    assert_eq!(c(0.0), 0b011); // zero -> +s/8: there is no zero level
                               // 2 bits, s = 1: levels 1, 0.5; midpoint 0.75
    assert_eq!(shift_code(0.7, 1.0, 2), 0b01);
    assert_eq!(shift_code(-0.8, 1.0, 2), 0b10);
    assert_eq!(shift_code(-0.01, 1.0, 2), 0b11);
    // 3 bits, s = 3: levels 3, 1.5, 0.75, 0.375; midpoints 2.25, 1.125, 0.5625
    assert_eq!(shift_code(1.2, 3.0, 3), 0b001);
    assert_eq!(shift_code(-0.6, 3.0, 3), 0b110);
    assert_eq!(grid_value(Grid::Shift, 3, 0b110, 3.0, 0), -0.75);
}

#[test]
fn shift_by_hand() {
    // 2 bits, one group per row. Rows of exact ±s·2^-p have zero error at exactly one scale
    // among the candidates (max|w| = s is always tried), so the search must land on it.
    // [1, -0.5, 0.5, -1]: s = 1 -> codes 0b00, 0b11, 0b01, 0b10
    let q = shift(&[1.0, -0.5, 0.5, -1.0], 1, 4, 2, 4, None);
    assert_eq!((q.codes.clone(), q.scales.clone()), (vec![0, 3, 1, 2], vec![1.0]));
    assert_eq!((q.grid, q.zeros.clone()), (Grid::Shift, vec![0]));
    // 3 bits: [2, -1, 0.5, -0.25] = 2·[2^0, -2^-1, 2^-2, -2^-3] -> codes 0b000, 0b101, 0b010, 0b111
    let q = shift(&[2.0, -1.0, 0.5, -0.25], 1, 4, 3, 4, None);
    assert_eq!((q.codes.clone(), q.scales.clone()), (vec![0, 5, 2, 7], vec![2.0]));
    assert_eq!(q.dequantize(), vec![2.0, -1.0, 0.5, -0.25]);
    // 2 bits, groups of 2: [4, 2 | -0.5, 0.25] -> s = 4: codes 0b00, 0b01; s = 0.5: 0b10, 0b01
    let q = shift(&[4.0, 2.0, -0.5, 0.25], 1, 4, 2, 2, None);
    assert_eq!((q.codes.clone(), q.scales.clone()), (vec![0, 1, 2, 1], vec![4.0, 0.5]));
    // 3 bits, ragged last group: [1, -0.125, 0.25 | 8] -> s = 1: 0b000, 0b111, 0b010; s = 8: 0b000
    let q = shift(&[1.0, -0.125, 0.25, 8.0], 1, 4, 3, 3, None);
    assert_eq!((q.codes.clone(), q.scales.clone()), (vec![0, 7, 2, 0], vec![1.0, 8.0]));
}

#[test]
fn shift_scale_search_by_hand() {
    // 2 bits, w = [1, 1, 1, 0.6]. For s in (0.8, 4/3] the ones map to s and 0.6 to s/2:
    // err(s) = 3(1-s)² + (0.6-s/2)², minimised at s = 6.6/6.5 = 1.0154. Candidates near it:
    //   2^0      = 1        -> err = 0 + 0.1²                                  = 0.0100
    //   2^(1/64) = 1.010889 -> f16 1035/1024 = 1.0107422
    //                       -> err = 3·0.0107422² + (0.6-0.5053711)²          = 0.0093007
    //   2^(2/64) = 1.021897 -> f16 1046/1024 = 1.0214844
    //                       -> err = 3·0.0214844² + (0.6-0.5107422)²          = 0.0093520
    // so s = 1035/1024 and codes 0b00, 0b00, 0b00, 0b01.
    let w = [1.0, 1.0, 1.0, 0.6];
    let q = shift(&w, 1, 4, 2, 4, None);
    assert_eq!(q.scales, vec![1035.0 / 1024.0]);
    assert_eq!(q.codes, vec![0, 0, 0, 1]);
    // Aware, importance [1, 1, 1, 0]: only the ones count, so s = 1 (zero error); 0.6 -> s/2.
    let q = shift(&w, 1, 4, 2, 4, Some(&[1.0, 1.0, 1.0, 0.0]));
    assert_eq!((q.scales.clone(), q.codes.clone()), (vec![1.0], vec![0, 0, 0, 1]));
    // All-zero importance falls back to the plain search.
    let q0 = shift(&w, 1, 4, 2, 4, Some(&[0.0; 4]));
    assert_eq!(q0, shift(&w, 1, 4, 2, 4, None));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn no_code_dequantizes_to_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (out, inn) = (5, 37);
    let mut mixed = llm_like(&mut rng, out, inn);
    for k in (0..mixed.len()).step_by(3) {
        mixed[k] = 0.0;
    }
    let inputs: Vec<Vec<f32>> = vec![
        vec![0.0; out * inn],
        vec![-0.0; out * inn],
        vec![1e-30; out * inn],
        (0..out * inn).map(|k| if k % 2 == 0 { 1e-38 } else { -3e5 }).collect(),
        mixed,
    ];
    let imp_skew: Vec<f32> = (0..inn).map(|c| if c % 5 == 0 { 100.0 } else { 0.0 }).collect();
    let imps: [Option<&[f32]>; 3] = [None, Some(&imp_skew), Some(&[0.0; 37])];
    for w in &inputs {
        for imp in imps {
            for group in [8, 37, 1000] {
                for bits in 2..=8 {
                    for q in [statsq(w, out, inn, bits, group, imp), shift(w, out, inn, bits, group, imp)] {
                        let d = q.dequantize();
                        assert!(d.iter().all(|v| *v != 0.0 && v.is_finite()), "{:?} {bits} bits: {d:?}", q.grid);
                    }
                }
            }
        }
    }
    // Every code of both grids is non-zero at the smallest stored scale.
    for bits in 2..=8u8 {
        for code in 0..(1u16 << bits) {
            for grid in [Grid::HalfInt, Grid::Shift] {
                assert_ne!(grid_value(grid, bits, code as u8, MIN_SCALE, 0), 0.0, "{grid:?} {bits} {code}");
            }
        }
    }
}

#[test]
fn lowbit_layout_round_trip() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (out, inn, group) in [(3, 64, 16), (4, 50, 16), (2, 33, 1024), (1, 7, 3)] {
        let w = llm_like(&mut rng, out, inn);
        let imp: Vec<f32> = (0..inn).map(|_| rng.random::<f32>()).collect();
        for bits in 2..=8 {
            for imp in [None, Some(&imp[..])] {
                for q in [statsq(&w, out, inn, bits, group, imp), shift(&w, out, inn, bits, group, imp)] {
                    let p = LowbitPacked::pack(&q).unwrap();
                    assert_eq!(p.grid, q.grid);
                    assert!(p.qzeros.is_none());
                    assert_eq!(p.unpack().unwrap(), q, "{:?} {bits} bits {out}x{inn} g{group}", q.grid);
                    // the packed reference matmul decodes the same values
                    let x = normal(&mut rng, 2 * inn);
                    let (y, r) = (p.dequant_matmul(&x, 2), ref_matmul(&q, &x, 2));
                    for (a, b) in y.iter().zip(&r) {
                        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
                    }
                }
            }
        }
    }
}

/// Dequantize-then-matmul, in f64.
fn ref_matmul(q: &GroupQ, x: &[f32], rows: usize) -> Vec<f32> {
    let (o, i, w) = (q.out_features, q.in_features, q.dequantize());
    (0..rows * o)
        .map(|k| {
            let (r, c) = (k / o, k % o);
            (0..i).map(|j| x[r * i + j] as f64 * w[c * i + j] as f64).sum::<f64>() as f32
        })
        .collect()
}

#[test]
fn mul_pow2_neg_is_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let special = [0u32, 0x8000_0000, 1, 0x8000_0001, 0x007f_ffff, 0x0080_0000, 0x0040_0000, 0x00c0_0000, 0x7f7f_ffff];
    let mut xs = special.to_vec();
    for k in 0..6000 {
        let b = rng.random::<u32>();
        xs.push(if k % 3 == 0 { b & 0x81ff_ffff } else { b }); // a third with exponent field < 4
    }
    for &b in &xs {
        let x = f32::from_bits(b);
        for p in 0..128u32 {
            let got = f32::from_bits(mul_pow2_neg(b, p));
            let want = x * (-(p as f32)).exp2();
            if x.is_nan() {
                assert!(got.is_nan());
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{x:e} (0x{b:08x}) * 2^-{p}");
            }
        }
    }
}

#[test]
fn shift_matmul_equals_dequant_matmul() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (out, inn, group) in [(6, 64, 16), (5, 70, 32), (3, 19, 1000)] {
        let w = llm_like(&mut rng, out, inn);
        let rows = 3;
        let mut x = normal(&mut rng, rows * inn);
        x[0] = 0.0;
        x[1] = -0.0;
        x[2] = 1e-39; // subnormal
        x[3] = -3e-38; // underflows to subnormal / 0 for large p
        x[4] = 1e4;
        for bits in 2..=8 {
            let q = shift(&w, out, inn, bits, group, None);
            let (y, r) = (shift_matmul(&q, &x, rows), ref_matmul(&q, &x, rows));
            let dq = q.dequantize();
            for (k, (a, b)) in y.iter().zip(&r).enumerate() {
                let (rr, o) = (k / out, k % out);
                let mag: f32 = (0..inn).map(|j| (x[rr * inn + j] * dq[o * inn + j]).abs()).sum();
                assert!((a - b).abs() <= 1e-5 * mag + 1e-30, "{bits} bits: {a} vs {b} (|.| {mag})");
            }
        }
    }
    // g_idx: columns regrouped out of order
    let (out, inn) = (4, 12);
    let w = llm_like(&mut rng, out, inn);
    let mut q = shift(&w, out, inn, 3, 4, None);
    q.g_idx = Some((0..inn as u32).map(|c| (c * 7 % 12) / 4).collect());
    let x = normal(&mut rng, 2 * inn);
    for (a, b) in shift_matmul(&q, &x, 2).iter().zip(ref_matmul(&q, &x, 2)) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn aware_variants_reduce_weighted_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (out, inn) = (32, 256);
    let w = llm_like(&mut rng, out, inn);
    // heavily skewed importance: log-normal with a few dominant channels
    let imp: Vec<f32> = normal(&mut rng, inn).iter().map(|z| (2.0 * z).exp()).collect();
    for group in [64, 256] {
        for bits in 2..=4 {
            let (p, a) = (statsq(&w, out, inn, bits, group, None), statsq(&w, out, inn, bits, group, Some(&imp)));
            let (ep, ea) = (weighted_err(&w, &p, &imp), weighted_err(&w, &a, &imp));
            eprintln!("statsq {bits} bits g{group}: plain {ep:.4e} aware {ea:.4e} ({:.3})", ea / ep);
            assert!(ea < 0.95 * ep, "statsq {bits} bits g{group}: aware {ea} vs plain {ep}");
            // per group the aware scale is never worse on its own objective
            let ng = inn.div_ceil(group);
            for r in 0..out {
                for g in 0..ng {
                    let cols = g * group..((g + 1) * group).min(inn);
                    let e = |q: &GroupQ| -> f64 {
                        cols.clone()
                            .map(|c| {
                                let v = q.value(q.codes[r * inn + c], q.scales[r * ng + g], 0);
                                imp[c] as f64 * ((w[r * inn + c] - v) as f64).powi(2)
                            })
                            .sum()
                    };
                    assert!(e(&a) <= e(&p), "row {r} group {g}");
                }
            }
            let (p, a) = (shift(&w, out, inn, bits, group, None), shift(&w, out, inn, bits, group, Some(&imp)));
            let (ep, ea) = (weighted_err(&w, &p, &imp), weighted_err(&w, &a, &imp));
            eprintln!("shift  {bits} bits g{group}: plain {ep:.4e} aware {ea:.4e} ({:.3})", ea / ep);
            assert!(ea < 0.95 * ep, "shift {bits} bits g{group}: aware {ea} vs plain {ep}");
            // and plain shift minimises the unweighted error better than aware does
            let ones = vec![1.0; inn];
            assert!(weighted_err(&w, &p, &ones) <= weighted_err(&w, &a, &ones));
        }
    }
}

#[test]
fn plain_statsq_matches_ofq_formula() {
    // OFQ on random rows: s = 2·mean|w| (here rounded to f16), then the clamp/round formula;
    // codes are also the nearest level.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (out, inn) = (8, 96);
    let w = llm_like(&mut rng, out, inn);
    for bits in 2..=4u8 {
        let q = statsq(&w, out, inn, bits, inn, None);
        let n = (1u32 << (bits - 1)) as f32;
        for r in 0..out {
            let row = &w[r * inn..(r + 1) * inn];
            let mean = row.iter().map(|x| x.abs() as f64).sum::<f64>() / inn as f64;
            let s = half::f16::from_f32((2.0 * mean) as f32).to_f32();
            assert_eq!(q.scales[r], s);
            for (c, &x) in row.iter().enumerate() {
                let k = ((x / s).clamp(-1.0, 1.0 - 1e-6) * n - 0.5).round_ties_even();
                assert_eq!(q.codes[r * inn + c] as f32, k + n);
                let v = q.value(q.codes[r * inn + c], s, 0);
                let best = (0..1u8 << bits).map(|k| (x - q.value(k, s, 0)).abs()).fold(f32::INFINITY, f32::min);
                assert_eq!((x - v).abs(), best, "row {r} col {c}: {x} -> {v}");
            }
        }
    }
}
