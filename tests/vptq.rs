//! VPTQ, k-means and the VQ layout against independent references: clusters with a known
//! answer, hand-derived packed bytes, a naive dequantize-then-matmul, a naive (unblocked, f64)
//! second-order error-feedback loop, and thread-count determinism.

use lowbit::pack::vq::{row_bytes, VqModuleMeta, VqPacked};
use lowbit::pack::TensorSource;
use lowbit::quant::kmeans::{kmeans, KMeansConfig};
use lowbit::quant::vptq::{index_bits, vptq, VptqConfig, VptqReport};
use lowbit::quant::VqQ;
use lowbit::st_write::OutTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Roughly normal samples (sum of uniforms).
fn gauss(r: &mut ChaCha8Rng) -> f32 {
    (0..4).map(|_| r.random::<f32>() - 0.5).sum::<f32>() * 1.7
}

fn f16r(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Hessian `2/n·XᵀX` of `n` correlated inputs of width `inn` (a random mix of `inn/4` factors
/// plus noise, a few channels much louder than the rest).
fn hessian(inn: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    let f = (inn / 4).max(1);
    let mix: Vec<f32> = (0..f * inn).map(|_| gauss(&mut r)).collect();
    let mut h = vec![0f64; inn * inn];
    let mut x = vec![0f32; inn];
    for _ in 0..n {
        let z: Vec<f32> = (0..f).map(|_| gauss(&mut r)).collect();
        for (c, xc) in x.iter_mut().enumerate() {
            let s: f32 = (0..f).map(|q| z[q] * mix[q * inn + c]).sum::<f32>() + 0.2 * gauss(&mut r);
            *xc = if c % 11 == 3 { 5.0 * s } else { s };
        }
        for i in 0..inn {
            for j in 0..inn {
                h[i * inn + j] += (x[i] * x[j]) as f64;
            }
        }
    }
    h.iter_mut().for_each(|v| *v *= 2.0 / n as f64);
    h
}

fn weight(out: usize, inn: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..out * inn).map(|_| 0.05 * gauss(&mut r)).collect()
}

/// `tr(E H Eᵀ)`, naive.
fn h_err(w: &[f32], q: &[f32], out: usize, inn: usize, h: &[f64]) -> f64 {
    let mut s = 0.0;
    for o in 0..out {
        let e: Vec<f64> = (0..inn).map(|i| (w[o * inn + i] - q[o * inn + i]) as f64).collect();
        for i in 0..inn {
            for j in 0..inn {
                s += e[i] * h[i * inn + j] * e[j];
            }
        }
    }
    s
}

/// Naive dequantization straight from the VqQ fields (independent of `VqQ::dequantize`).
fn naive_dequant(q: &VqQ) -> Vec<f32> {
    let (o, i, v) = (q.out_features, q.in_features, q.vector_len);
    let nv = o / v;
    let mut w = vec![0f32; o * i];
    for c in 0..i {
        let op = q.outlier_cols.iter().position(|&x| x as usize == c);
        for j in 0..nv {
            for t in 0..v {
                let mut x = match op {
                    Some(p) => {
                        let oi = q.outlier_indices.as_ref().unwrap()[p * nv + j] as usize;
                        q.outlier_centroids.as_ref().unwrap()[oi * v + t]
                    }
                    None => {
                        let m = q.indices[c * nv + j] as usize;
                        let mut x = q.centroids[m * v + t];
                        if let Some(rc) = &q.res_centroids {
                            x += rc[q.res_indices.as_ref().unwrap()[c * nv + j] as usize * v + t];
                        }
                        x
                    }
                };
                if let Some(s) = &q.col_scale {
                    x *= s[c];
                }
                if let Some(b) = &q.col_bias {
                    x += b[c];
                }
                w[(j * v + t) * i + c] = x;
            }
        }
    }
    w
}

// ---------------------------------------------------------------------------------------------
// k-means

/// Eight well-separated clusters in 4-D (centres ≥ 10 apart, noise ±0.2): k-means with k = 8
/// must put exactly the points of each true cluster together, with or without weights.
#[test]
fn kmeans_recovers_separated_clusters() {
    let (dim, per, kc) = (4, 40, 8);
    let mut r = rng(7);
    let centres: Vec<[f32; 4]> = (0..kc)
        .map(|c| {
            let mut x = [0f32; 4];
            for (t, xt) in x.iter_mut().enumerate() {
                *xt = if (c >> (t % 3)) & 1 == 1 { 10.0 } else { -10.0 } + if t == 3 { 30.0 * c as f32 } else { 0.0 };
            }
            x
        })
        .collect();
    let mut pts = Vec::new();
    let mut truth = Vec::new();
    for p in 0..kc * per {
        let c = (p * 5) % kc; // interleaved, so clusters are not contiguous
        for &x in &centres[c] {
            pts.push(x + 0.4 * (r.random::<f32>() - 0.5));
        }
        truth.push(c);
    }
    let weights: Vec<f32> = (0..kc * per).map(|i| 0.5 + (i % 3) as f32).collect();
    for w in [None, Some(&weights[..])] {
        for seed in 0..5 {
            let km = kmeans(&pts, dim, w, &KMeansConfig { k: kc, iters: 20, seed, f16_centroids: false }).unwrap();
            let mut map = vec![u32::MAX; kc];
            for (p, &c) in truth.iter().enumerate() {
                if map[c] == u32::MAX {
                    map[c] = km.labels[p];
                }
                assert_eq!(km.labels[p], map[c], "seed {seed}: point {p} of cluster {c} split off");
            }
            let mut used = map.clone();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), kc, "seed {seed}: two true clusters merged");
            // Centroids are the (weighted) cluster means, within the noise.
            for (c, centre) in centres.iter().enumerate() {
                let got = km.codebook.centroid(map[c]);
                for (t, (g, want)) in got.iter().zip(centre).enumerate() {
                    assert!((g - want).abs() < 0.2, "centroid {c}[{t}] = {g} vs {want}");
                }
            }
        }
    }
}

/// Labels are exact nearest centroids (brute force), also with f16 rounding and many clusters.
#[test]
fn kmeans_labels_are_nearest_stored_centroids() {
    let mut r = rng(3);
    let dim = 3;
    let pts: Vec<f32> = (0..3000 * dim).map(|_| gauss(&mut r)).collect();
    let km = kmeans(&pts, dim, None, &KMeansConfig { k: 300, iters: 8, seed: 1, f16_centroids: true }).unwrap();
    assert!(km.codebook.centroids.iter().all(|&c| c == f16r(c)), "centroids not f16-exact");
    for (p, x) in pts.chunks(dim).enumerate() {
        let d = |j: usize| (0..dim).map(|t| (x[t] - km.codebook.centroids[j * dim + t]).powi(2)).sum::<f32>();
        let best = (0..300).map(d).fold(f32::INFINITY, f32::min);
        assert_eq!(d(km.labels[p] as usize), best, "point {p}");
    }
}

#[test]
fn kmeans_refuses_more_centroids_than_points() {
    let e = kmeans(&[0.0; 12], 4, None, &KMeansConfig { k: 4, iters: 1, seed: 0, f16_centroids: false }).unwrap_err();
    assert!(e.to_string().contains("4 centroids requested for only 3 vectors"), "{e}");
}

#[test]
fn index_widths() {
    for (k, b) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (256, 8), (257, 9), (4096, 12), (65536, 16)] {
        assert_eq!(index_bits(k), b, "k = {k}");
    }
}

// ---------------------------------------------------------------------------------------------
// VQ layout

/// A VqQ with every optional part, random but consistent.
#[allow(clippy::too_many_arguments)]
fn random_vq(out: usize, inn: usize, v: usize, k: usize, kr: usize, outl: &[u32], ko: usize, seed: u64) -> VqQ {
    let mut r = rng(seed);
    let nv = out / v;
    let book = |r: &mut ChaCha8Rng, k: usize| (0..k * v).map(|_| f16r(gauss(r))).collect::<Vec<f32>>();
    let mut indices: Vec<u32> = (0..inn * nv).map(|_| r.random_range(0..k as u32)).collect();
    let mut res_indices: Vec<u32> = (0..inn * nv).map(|_| r.random_range(0..kr.max(1) as u32)).collect();
    for &c in outl {
        for j in 0..nv {
            indices[c as usize * nv + j] = 0;
            res_indices[c as usize * nv + j] = 0;
        }
    }
    VqQ {
        out_features: out,
        in_features: inn,
        vector_len: v,
        centroids: book(&mut r, k),
        n_centroids: k,
        indices,
        res_centroids: (kr > 0).then(|| book(&mut r, kr)),
        n_res_centroids: kr,
        res_indices: (kr > 0).then_some(res_indices),
        col_scale: Some((0..inn).map(|_| f16r(0.5 + r.random::<f32>())).collect()),
        col_bias: Some((0..inn).map(|_| f16r(0.1 * gauss(&mut r))).collect()),
        outlier_cols: outl.to_vec(),
        outlier_centroids: (!outl.is_empty()).then(|| book(&mut r, ko)),
        n_outlier_centroids: if outl.is_empty() { 0 } else { ko },
        outlier_indices: (!outl.is_empty()).then(|| (0..outl.len() * nv).map(|_| r.random_range(0..ko as u32)).collect()),
    }
}

fn tensor<'a>(t: &'a [OutTensor], name: &str) -> &'a OutTensor {
    t.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} not written"))
}

/// out = 24, v = 3 (8 vectors per column), k = 8 (3-bit indices). Column 0 holds indices
/// 0..7: 24 bits = octal 76543210 = 0xFAC688 → bytes 88 C6 FA, padded to 4 bytes with 00.
/// Column 1 holds 7,6,...,0: octal 01234567 = 0x053977 → 77 39 05 00.
#[test]
fn vq_indices_hand_derived() {
    let mut q = random_vq(24, 2, 3, 8, 0, &[], 0, 1);
    q.indices = (0..8).chain((0..8).rev()).collect();
    q.col_scale = None;
    q.col_bias = None;
    let p = VqPacked::pack(&q).unwrap();
    let t = p.to_tensors("l");
    let idx = tensor(&t, "l.vq_indices");
    assert_eq!(idx.shape, vec![2, 4]);
    assert_eq!(idx.data, vec![0x88, 0xC6, 0xFA, 0x00, 0x77, 0x39, 0x05, 0x00]);
    let c = tensor(&t, "l.centroids");
    assert_eq!(c.shape, vec![8, 3]);
    let first = half::f16::from_le_bytes([c.data[0], c.data[1]]).to_f32();
    assert_eq!(first, q.centroids[0]);
    assert_eq!(t.len(), 2, "no optional tensors expected");
    assert_eq!(row_bytes(8, 3), 4);
    assert_eq!(row_bytes(11, 3), 8);
}

#[test]
fn vq_pack_unpack_and_tensors_round_trip_exactly() {
    for (out, inn, v, k, kr, outl, ko) in [
        (24, 10, 3, 8, 0, vec![], 0),
        (48, 20, 4, 37, 5, vec![0u32, 7, 19], 6),
        (30, 9, 6, 1, 2, vec![4], 1),
        (64, 33, 8, 300, 16, vec![], 0),
    ] {
        let q = random_vq(out, inn, v, k, kr, &outl, ko, out as u64);
        let p = VqPacked::pack(&q).unwrap();
        assert_eq!(p.unpack().unwrap(), q, "unpack({out}x{inn}, k={k})");
        assert_eq!(p.storage_bits(), q.storage_bits());
        let meta = p.meta("vptq");
        let json = serde_json::to_string(&meta).unwrap();
        let meta2: VqModuleMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(meta2, meta);
        let tensors = p.to_tensors("model.layers.0.mlp.up_proj");
        let bytes: u64 = tensors.iter().map(|t| 8 * t.data.len() as u64).sum();
        assert_eq!(bytes, p.storage_bits(), "storage_bits counts exactly the tensor bytes");
        let back = VqPacked::from_tensors(&tensors, "model.layers.0.mlp.up_proj", &meta2).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.unpack().unwrap(), q);
    }
}

#[test]
fn vq_layout_refusals() {
    let q = random_vq(24, 4, 3, 5, 0, &[], 0, 2);
    let p = VqPacked::pack(&q).unwrap();
    let meta = p.meta("vptq");
    // Index 7 with k = 5 (3-bit field) is out of range.
    let mut t = p.to_tensors("x");
    t.iter_mut().find(|t| t.name == "x.vq_indices").unwrap().data[0] = 0x07;
    let e = VqPacked::from_tensors(&t, "x", &meta).unwrap_err();
    assert!(e.to_string().contains("index 7"), "{e}");
    // Wrong shape.
    let mut m2 = meta.clone();
    m2.n_centroids = 9;
    assert!(VqPacked::from_tensors(&p.to_tensors("x"), "x", &m2).is_err());
    // Missing residual tensors.
    let mut m3 = meta.clone();
    m3.n_res_centroids = 4;
    let e = VqPacked::from_tensors(&p.to_tensors("x"), "x", &m3).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    // Scale without bias.
    let mut q2 = q.clone();
    q2.col_bias = None;
    assert!(VqPacked::pack(&q2).is_err());
    // Outlier column with a non-zero main index.
    let mut q3 = random_vq(24, 4, 3, 5, 0, &[1], 3, 3);
    q3.indices[8] = 2;
    assert!(VqPacked::pack(&q3).is_err());
    // A source that lacks everything.
    let empty: Vec<OutTensor> = Vec::new();
    assert!(empty.raw("x.vq_indices").is_none());
    assert!(VqPacked::from_tensors(&empty, "x", &meta).is_err());
}

/// The packed matmul equals a naive dequantize-then-matmul.
#[test]
fn vq_dequant_matmul_matches_naive() {
    for (out, inn, v, k, kr, outl, ko) in [(48, 20, 4, 37, 5, vec![0u32, 7, 19], 6), (36, 17, 6, 64, 0, vec![], 0)] {
        let q = random_vq(out, inn, v, k, kr, &outl, ko, 11);
        let p = VqPacked::pack(&q).unwrap();
        let w = naive_dequant(&q);
        assert_eq!(q.dequantize(), w);
        let rows = 5;
        let mut r = rng(5);
        let x: Vec<f32> = (0..rows * inn).map(|_| gauss(&mut r)).collect();
        let y = p.dequant_matmul(&x, rows);
        for row in 0..rows {
            for o in 0..out {
                let want: f64 = (0..inn).map(|i| x[row * inn + i] as f64 * w[o * inn + i] as f64).sum();
                let got = y[row * out + o] as f64;
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "y[{row}][{o}] = {got}, want {want}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VPTQ

/// Independent reference of the second-order pass: f64, no blocks, naive Cholesky, brute-force
/// nearest centroid, the codebook taken from the run under test.
fn reference_vptq(w: &[f32], out: usize, inn: usize, h: &[f64], v: usize, cents: &[f32], damp: f64) -> Vec<f32> {
    let k = cents.len() / v;
    let mut hd = h.to_vec();
    for i in 0..inn {
        if hd[i * inn + i] == 0.0 {
            hd[i * inn + i] = 1.0;
        }
    }
    let mean = (0..inn).map(|i| hd[i * inn + i]).sum::<f64>() / inn as f64;
    for i in 0..inn {
        hd[i * inn + i] += damp * mean;
    }
    let chol = |a: &[f64]| {
        let mut l = vec![0f64; inn * inn];
        for i in 0..inn {
            for j in 0..=i {
                let s: f64 = a[i * inn + j] - (0..j).map(|p| l[i * inn + p] * l[j * inn + p]).sum::<f64>();
                l[i * inn + j] = if i == j { s.sqrt() } else { s / l[j * inn + j] };
            }
        }
        l
    };
    // H⁻¹ by solving L Lᵀ X = I column by column.
    let l = chol(&hd);
    let mut inv = vec![0f64; inn * inn];
    for c in 0..inn {
        let mut y = vec![0f64; inn];
        for i in 0..inn {
            let b = if i == c { 1.0 } else { 0.0 };
            y[i] = (b - (0..i).map(|p| l[i * inn + p] * y[p]).sum::<f64>()) / l[i * inn + i];
        }
        for i in (0..inn).rev() {
            inv[i * inn + c] = (y[i] - (i + 1..inn).map(|p| l[p * inn + i] * inv[p * inn + c]).sum::<f64>()) / l[i * inn + i];
        }
    }
    let li = chol(&inv); // H⁻¹ = Li Liᵀ, U = Liᵀ
    let u = |i: usize, j: usize| li[j * inn + i];
    let mut wt: Vec<f64> = (0..inn * out).map(|x| w[(x % out) * inn + x / out] as f64).collect();
    for i in 0..inn {
        if h[i * inn + i] == 0.0 {
            wt[i * out..(i + 1) * out].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let mut q = vec![0f32; out * inn];
    for i in 0..inn {
        let mut err = vec![0f64; out];
        for j in 0..out / v {
            let x = &wt[i * out + j * v..i * out + j * v + v];
            let d = |c: usize| (0..v).map(|t| (x[t] - cents[c * v + t] as f64).powi(2)).sum::<f64>();
            let best = (0..k).min_by(|&a, &b| d(a).total_cmp(&d(b))).unwrap();
            for t in 0..v {
                q[(j * v + t) * inn + i] = cents[best * v + t];
                err[j * v + t] = (x[t] - cents[best * v + t] as f64) / u(i, i);
            }
        }
        for jc in i + 1..inn {
            for o in 0..out {
                wt[jc * out + o] -= err[o] * u(i, jc);
            }
        }
    }
    q
}

/// Plain nearest-centroid assignment of the original weight vectors (no error feedback).
fn plain_assign(w: &[f32], out: usize, inn: usize, v: usize, cents: &[f32]) -> Vec<f32> {
    let k = cents.len() / v;
    let mut q = vec![0f32; out * inn];
    for i in 0..inn {
        for j in 0..out / v {
            let d = |c: usize| (0..v).map(|t| (w[(j * v + t) * inn + i] - cents[c * v + t]).powi(2)).sum::<f32>();
            let best = (0..k).min_by(|&a, &b| d(a).total_cmp(&d(b))).unwrap();
            for t in 0..v {
                q[(j * v + t) * inn + i] = cents[best * v + t];
            }
        }
    }
    q
}

#[test]
fn vptq_beats_plain_assignment_and_matches_reference() {
    let (out, inn, v) = (48, 64, 4);
    let w = weight(out, inn, 1);
    let h = hessian(inn, 512, 2);
    let cfg = VptqConfig { vector_len: v, centroids: 32, kmeans_iters: 15, block: 16, ..Default::default() };
    let (q, rep) = vptq(&w, out, inn, &h, &cfg).unwrap();
    let deq = naive_dequant(&q);
    let err = h_err(&w, &deq, out, inn, &h);
    let plain = h_err(&w, &plain_assign(&w, out, inn, v, &q.centroids), out, inn, &h);
    let reference = h_err(&w, &reference_vptq(&w, out, inn, &h, v, &q.centroids, cfg.damp), out, inn, &h);
    eprintln!("vptq {err:.5} reference {reference:.5} plain {plain:.5} report {rep:?}");
    assert!(err < 0.8 * plain, "VPTQ error {err} not clearly below plain assignment {plain}");
    assert!((err - reference).abs() <= 0.03 * reference, "VPTQ {err} vs naive reference {reference}");
    assert!((rep.h_weighted_error - err).abs() <= 1e-4 * err, "report {} vs {err}", rep.h_weighted_error);
    assert!((rep.h_weighted_error_init - plain).abs() <= 1e-4 * plain, "report init {} vs {plain}", rep.h_weighted_error_init);
    assert!(rep.rel_error > 0.0 && rep.rel_error < 1.0);
}

/// Blocked lazy updates give the same answer as no blocking (up to rounding).
#[test]
fn vptq_block_size_does_not_matter() {
    let (out, inn) = (32, 80);
    let w = weight(out, inn, 4);
    let h = hessian(inn, 400, 5);
    let run = |block| {
        let cfg = VptqConfig { vector_len: 4, centroids: 16, block, ..Default::default() };
        vptq(&w, out, inn, &h, &cfg).unwrap().1.h_weighted_error
    };
    let (a, b, c) = (run(1), run(7), run(1000));
    assert!((a - c).abs() <= 0.02 * c && (b - c).abs() <= 0.02 * c, "block 1: {a}, 7: {b}, 1000: {c}");
}

#[test]
fn vptq_residual_outliers_and_normalisation() {
    let (out, inn, v) = (64, 96, 4);
    let w = weight(out, inn, 6);
    let h = hessian(inn, 600, 7);
    let base = VptqConfig { vector_len: v, centroids: 64, ..Default::default() };
    let (_, r0) = vptq(&w, out, inn, &h, &base).unwrap();
    let full = VptqConfig { res_centroids: 16, outlier_pct: 3.0, outlier_centroids: 32, normalize: true, ..base.clone() };
    let (q, r1) = vptq(&w, out, inn, &h, &full).unwrap();
    assert_eq!(q.outlier_cols.len(), 3);
    assert_eq!(r1.n_outlier_cols, 3);
    // Outliers are the columns with the largest H_ii·|W[:,i]|².
    let score = |i: usize| h[i * inn + i] * (0..out).map(|o| (w[o * inn + i] as f64).powi(2)).sum::<f64>();
    let min_out = q.outlier_cols.iter().map(|&c| score(c as usize)).fold(f64::INFINITY, f64::min);
    for i in (0..inn).filter(|i| !q.outlier_cols.contains(&(*i as u32))) {
        assert!(score(i) <= min_out, "column {i} scores above an outlier column");
    }
    assert!(r1.h_weighted_error < r0.h_weighted_error, "residual stage did not help: {r1:?} vs {r0:?}");
    // Everything stored is f16-exact, so the packed layout round-trips the quantizer output.
    for c in [&q.centroids, q.res_centroids.as_ref().unwrap(), q.outlier_centroids.as_ref().unwrap()] {
        assert!(c.iter().all(|&x| x == f16r(x)));
    }
    let p = VqPacked::pack(&q).unwrap();
    assert_eq!(p.unpack().unwrap(), q);
    assert_eq!(naive_dequant(&q), q.dequantize());
    // Honest size: what the layout stores, and what the config predicts.
    for (cfg, rep, qq) in [(&full, &r1, Some(&q)), (&base, &r0, None)] {
        let want = cfg.bits_per_weight(out, inn);
        assert!((rep.bits_per_weight - want).abs() < 1e-12, "{} vs {want}", rep.bits_per_weight);
        if let Some(qq) = qq {
            let stored = VqPacked::pack(qq).unwrap().storage_bits() as f64 / (out * inn) as f64;
            assert_eq!(rep.bits_per_weight, stored);
        }
    }
    // By hand for the base config: 8-row index streams of 16 vectors × 6 bits = 96 bits per
    // column, 64 centroids × 4 × 16 bits.
    assert_eq!(r0.bits_per_weight, (96.0 * 96.0 + 64.0 * 4.0 * 16.0) / (64.0 * 96.0));
}

#[test]
fn vptq_dead_channels_are_harmless() {
    let (out, inn) = (16, 24);
    let w = weight(out, inn, 8);
    let mut h = hessian(inn, 200, 9);
    for j in 0..inn {
        h[5 * inn + j] = 0.0;
        h[j * inn + 5] = 0.0;
    }
    let (q, rep) = vptq(&w, out, inn, &h, &VptqConfig { vector_len: 2, centroids: 16, ..Default::default() }).unwrap();
    assert!(rep.h_weighted_error.is_finite() && rep.rel_error < 1.0);
    q.validate().unwrap();
}

#[test]
fn vptq_errors_are_clear() {
    let (out, inn) = (12, 8);
    let w = weight(out, inn, 1);
    let h = hessian(inn, 100, 2);
    let err = |cfg: VptqConfig, h: &[f64]| vptq(&w, out, inn, h, &cfg).unwrap_err().to_string();
    let e = err(VptqConfig { vector_len: 4, centroids: 25, ..Default::default() }, &h);
    assert!(e.contains("25 centroids but only 24 vectors"), "{e}");
    let e = err(VptqConfig { vector_len: 5, centroids: 4, ..Default::default() }, &h);
    assert!(e.contains("vector length 5 does not divide out_features 12"), "{e}");
    // Indefinite H: [[1, 2], [2, 1]] blocks on the diagonal (eigenvalue -1 survives damping).
    let mut bad = vec![0f64; inn * inn];
    for b in 0..inn / 2 {
        let (i, j) = (2 * b, 2 * b + 1);
        bad[i * inn + i] = 1.0;
        bad[j * inn + j] = 1.0;
        bad[i * inn + j] = 2.0;
        bad[j * inn + i] = 2.0;
    }
    let e = err(VptqConfig { vector_len: 2, centroids: 4, ..Default::default() }, &bad);
    assert!(e.contains("not positive definite"), "{e}");
    assert!(!e.contains('\n'), "one-line message: {e}");
    let e = err(VptqConfig { vector_len: 2, centroids: 4, ..Default::default() }, &h[1..]);
    assert!(e.contains("Hessian has"), "{e}");
    let e = err(VptqConfig { vector_len: 2, centroids: 4, res_centroids: 100, ..Default::default() }, &h);
    assert!(e.contains("100 residual centroids"), "{e}");
    let mut wn = w.clone();
    wn[3] = f32::NAN;
    assert!(vptq(&wn, out, inn, &h, &VptqConfig { vector_len: 2, centroids: 4, ..Default::default() }).is_err());
}

#[test]
fn vptq_is_identical_on_one_and_two_threads() {
    let (out, inn) = (96, 160);
    let w = weight(out, inn, 12);
    let h = hessian(inn, 500, 13);
    let cfg =
        VptqConfig { vector_len: 4, centroids: 128, res_centroids: 16, outlier_pct: 2.0, normalize: true, seed: 42, ..Default::default() };
    let run = |threads: usize| -> (VqQ, VptqReport) {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| vptq(&w, out, inn, &h, &cfg).unwrap())
    };
    let (q1, r1) = run(1);
    let (q2, r2) = run(2);
    assert_eq!(q1, q2);
    assert_eq!(r1.h_weighted_error.to_bits(), r2.h_weighted_error.to_bits());
    assert_eq!(r1.h_weighted_error_init.to_bits(), r2.h_weighted_error_init.to_bits());
    assert_eq!(r1.kmeans_inertia.to_bits(), r2.kmeans_inertia.to_bits());
    // And a different seed gives a different codebook.
    let (q3, _) = vptq(&w, out, inn, &h, &VptqConfig { seed: 43, ..cfg.clone() }).unwrap();
    assert_ne!(q3.centroids, q1.centroids);
}
