//! CPU emulation of the bandwidth kernels (kernels/gq.cu, kernels/vqt.cu) on the arrangements made
//! at upload (src/cuda/arrange.rs, src/cuda/vqt.rs), written from the kernel sources and the PTX
//! ISA's fragment layouts (mma.m16n8k16, ldmatrix .trans), independent of src/cuda/reference.rs:
//!
//! * decode: every weight the kernel's registers hold (window extraction, magic-number fp16
//!   tricks, shift-grid bit building, meta words, ldmatrix addressing) equals the CPU reference
//!   decoder's value for that (row, column) — exactly on the factored path, to fp16 rounding
//!   where the kernel rounds;
//! * GEMV/GEMM: a lane-by-lane emulation of the whole kernel (warp and split-K partition, group
//!   counters, cp.async ring order, x fragments, mma, epilogue row map) matches the f64 reference
//!   product, for batch 1, 3 and 11 and several split-K factors;
//! * the group index by multiplication and shift (FastDiv) equals integer division.
//!
//! No GPU needed. Synthetic layers of every layout and real stories260K layers are covered.
// Lane-indexed loops mirror the kernels' per-lane code.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;
use half::f16;
use lowbit::cuda::arrange::{arrange_gq, FastDiv, GqLayout, GroupRows, GQ_CHUNK};
use lowbit::cuda::vqt::{arrange_indices, vqt_col, vqt_segment, VqStage, VQT_STEPS};
use lowbit::cuda::{reference_matmul, synth, GpuGrid, PackedOnGpu};

// ---------------------------------------------------------------------------------------------
// fp16 / PTX helpers, as the kernels use them

fn h(bits: u32) -> f64 {
    f16::from_bits(bits as u16).to_f64()
}
fn hb(v: f64) -> u32 {
    f16::from_f64(v).to_bits() as u32
}
/// Lane-wise f16x2 operation with one rounding (f64 holds every exact sum/product of two halves).
fn h2(a: u32, b: u32, f: impl Fn(f64, f64) -> f64) -> u32 {
    hb(f(h(a & 0xFFFF), h(b & 0xFFFF))) | hb(f(h(a >> 16), h(b >> 16))) << 16
}
fn hsub2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x - y)
}
fn hadd2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x + y)
}
fn hmul2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x * y)
}
/// `__byte_perm(a, b, sel)` (selector nibbles 0..7, no sign mode).
fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let bytes = (a as u64) | (b as u64) << 32;
    (0..4).fold(0u32, |r, i| r | (((bytes >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) as u32) << (8 * i))
}

/// The kernel's grid values (common.cuh: biased_pair, raw_pair, shift_pair, grid_pair).
fn biased_pair(b: u32, win: u64, j: u32) -> u32 {
    let m = (1u64 << b) - 1;
    (((win >> (j * b)) & m) as u32) | ((((win >> ((j + 4) * b)) & m) as u32) << 16) | 0x6400_6400
}
fn raw_pair(b: u32, win: u64, j: u32) -> u32 {
    biased_pair(b, win, j) & !0x6400_6400
}
fn shift_bits1(b: u32, code: u32) -> u32 {
    let p = code & ((1 << (b - 1)) - 1);
    let s = ((code >> (b - 1)) & 1) << 15;
    let mag = if p <= 14 {
        (15 - p) << 10
    } else if p <= 24 {
        1 << (24 - p)
    } else {
        0
    };
    mag | s
}
fn shift_pair(b: u32, raw: u32) -> u32 {
    if b <= 4 {
        let pm2 = ((1u32 << (b - 1)) - 1) * 0x10001;
        let sgn = (raw << (16 - b)) & 0x8000_8000;
        (0x3C00_3C00u32.wrapping_sub((raw & pm2) << 10)) | sgn
    } else {
        shift_bits1(b, raw & 0xFFFF) | shift_bits1(b, raw >> 16) << 16
    }
}
fn grid_pair(b: u32, grid: GpuGrid, win: u64, j: u32, zz: u32) -> u32 {
    match grid {
        GpuGrid::Affine => hsub2(biased_pair(b, win, j), zz),
        GpuGrid::HalfInt => {
            let nn = (0x6400 | (1 << (b - 1))) * 0x10001;
            hadd2(hsub2(biased_pair(b, win, j), nn), 0x3800_3800)
        }
        GpuGrid::Shift => shift_pair(b, raw_pair(b, win, j)),
    }
}
fn grid_mult(b: u32, grid: GpuGrid, s: f32) -> f32 {
    if grid == GpuGrid::HalfInt {
        s * (1.0 / (1u32 << (b - 1)) as f32)
    } else {
        s
    }
}

/// A lane's chunk words and window (gq.cu: gq_window).
fn gq_words(lay: &GqLayout, m: usize, ch: usize, l: usize) -> Vec<u32> {
    (0..4 * lay.bits as usize).map(|k| lay.qa[lay.qa_index(m, ch, l, k)]).collect()
}
fn gq_window(w: &[u32], b: u32, t: usize, hf: usize) -> u64 {
    let bit = 16 * b as usize * t + 8 * b as usize * hf;
    let (wi, sh) = (bit >> 5, bit & 31);
    let mut v = w[wi] as u64;
    if wi + 1 < w.len() {
        v |= (w[wi + 1] as u64) << 32;
    }
    if sh != 0 {
        v >>= sh;
        if wi + 2 < w.len() {
            v |= (w[wi + 2] as u64) << (64 - sh);
        }
    }
    v
}
fn meta(lay: &GqLayout, m: usize, grp: usize, g: usize) -> [u32; 2] {
    let i = lay.meta_index(m, grp, g, 0);
    [lay.meta[i], if lay.meta_words == 2 { lay.meta[i + 1] } else { 0x6400_6400 }]
}
/// gq.cu's per-column scale and zero pairs for pair p of a lane.
fn percol_pairs(lay: &GqLayout, m: usize, g: usize, col: usize) -> ([u32; 4], [u32; 4], [u32; 4], [u32; 4]) {
    let mut sw = [0u32; 8];
    let mut zw = [0u32; 8];
    for j in 0..8 {
        let cc = col + j;
        let gi = if cc < lay.inf {
            match &lay.g_idx {
                Some(gx) => gx[cc] as usize,
                None => lay.div.div(cc as u32) as usize,
            }
        } else {
            0
        };
        let mw = meta(lay, m, gi, g);
        sw[j] = mw[0];
        zw[j] = mw[1];
    }
    let (mut sc0, mut sc1, mut zc0, mut zc1) = ([0u32; 4], [0u32; 4], [0u32; 4], [0u32; 4]);
    for p in 0..4 {
        sc0[p] = prmt(sw[p], sw[p + 4], 0x5410);
        sc1[p] = prmt(sw[p], sw[p + 4], 0x7632);
        zc0[p] = prmt(zw[p], zw[p + 4], 0x5410);
        zc1[p] = prmt(zw[p], zw[p + 4], 0x7632);
        if lay.grid == GpuGrid::HalfInt {
            let inv = (0x3C00u32 - ((lay.bits - 1) << 10)) * 0x10001;
            sc0[p] = hmul2(sc0[p], inv);
            sc1[p] = hmul2(sc1[p], inv);
        }
    }
    (sc0, sc1, zc0, zc1)
}

// ---------------------------------------------------------------------------------------------
// Decode proof for gq

/// Every weight as the gq kernel's registers hold it, `[out][in]`.
fn gq_decode(lay: &GqLayout) -> Vec<f32> {
    let (out, inf, b) = (lay.out, lay.inf, lay.bits);
    let mut w = vec![f32::NAN; out * inf];
    for m in 0..lay.mtiles {
        for ch in 0..lay.nch {
            for l in 0..32 {
                let (g, tq) = (l / 4, l % 4);
                let words = gq_words(lay, m, ch, l);
                for t in 0..8 {
                    let col = ch * GQ_CHUNK + 32 * t + 8 * tq;
                    if col >= inf {
                        continue;
                    }
                    let wins = [gq_window(&words, b, t, 0), gq_window(&words, b, t, 1)];
                    for (hf, win) in wins.iter().enumerate() {
                        let row = m * 16 + g + 8 * hf;
                        for p in 0..4u32 {
                            let (lo_c, hi_c) = (col + p as usize, col + p as usize + 4);
                            let vals: [f32; 2] = if !lay.percol {
                                // The group of the window: contiguous groups, group_size % 32 == 0.
                                let grp = lay.div.div(col as u32) as usize;
                                let mw = meta(lay, m, grp, g);
                                let zz = prmt(mw[1], mw[1], if hf == 0 { 0x1010 } else { 0x3232 });
                                let s = h(if hf == 0 { mw[0] & 0xFFFF } else { mw[0] >> 16 }) as f32;
                                let a = grid_pair(b, lay.grid, *win, p, zz);
                                let mult = grid_mult(b, lay.grid, s);
                                [h(a & 0xFFFF) as f32 * mult, h(a >> 16) as f32 * mult]
                            } else {
                                let (sc0, sc1, zc0, zc1) = percol_pairs(lay, m, g, col);
                                let (sc, zc) = if hf == 0 { (sc0, zc0) } else { (sc1, zc1) };
                                let a = hmul2(grid_pair(b, lay.grid, *win, p, zc[p as usize]), sc[p as usize]);
                                [h(a & 0xFFFF) as f32, h(a >> 16) as f32]
                            };
                            for (c, v) in [(lo_c, vals[0]), (hi_c, vals[1])] {
                                if row < out && c < inf {
                                    w[row * inf + c] = v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    w
}

fn check_gq_decode(name: &str, l: &PackedOnGpu) -> GqLayout {
    l.validate().unwrap();
    let r = GroupRows::from_layer(l).unwrap();
    let lay = arrange_gq(&r);
    let got = gq_decode(&lay);
    let want = l.dequantize();
    let smax = r.scales.iter().fold(0f32, |a, s| a.max(s.to_f32().abs()));
    let mut worst = 0f32;
    for (k, (&a, &e)) in got.iter().zip(&want).enumerate() {
        // Factored: exact, except the shift grid's 2^-p below fp16's smallest subnormal (p > 24).
        // Per-column: the kernel rounds the product to fp16 (and s/n for halfint): half an ulp,
        // 2^-25 absolute in fp16's subnormal range.
        let tol = if lay.percol { e.abs() / 1024.0 + smax * 6e-8 + 3.0e-8 } else { smax * 6e-8 };
        let d = (a - e).abs();
        assert!(d <= tol, "{name} {}: w[{}][{}] decodes to {a}, reference {e}", l.label(), k / lay.inf, k % lay.inf);
        worst = worst.max(d);
    }
    if !lay.percol && l.label().contains("affine") {
        assert_eq!(worst, 0.0, "{name}: the factored affine path must decode exactly");
    }
    lay
}

#[test]
fn gq_arrangement_decodes_exactly_what_was_packed() {
    let mut n = 0;
    for l in synth::coverage_layers().iter().filter(|l| !matches!(l, PackedOnGpu::Vq { .. })) {
        check_gq_decode("coverage", l);
        n += 1;
    }
    // Bench-like shapes, smaller: several chunks, every width and grid.
    for b in 2..=8 {
        for grid in [GpuGrid::Affine, GpuGrid::HalfInt, GpuGrid::Shift] {
            check_gq_decode("wide", &synth::lowbit(48, 1100, b, 128, grid, false, 7 + b as u64));
        }
    }
    check_gq_decode("awq", &synth::awq(64, 512, 128, 3));
    check_gq_decode("gptq8", &synth::gptq(32, 544, 8, 32, false, 4));
    assert!(n > 25);
}

// ---------------------------------------------------------------------------------------------
// Whole-kernel emulation

type Frag4 = [[f32; 4]; 32];

/// One mma.m16n8k16 (f16 in, f32 accumulate) from the 32 lanes' registers, PTX fragment layout.
fn mma(a: &[[u32; 4]; 32], b: &[[u32; 2]; 32], d: &mut Frag4) {
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    for l in 0..32 {
        let (g, tq) = (l / 4, l % 4);
        for (r, (row, k)) in [(g, 2 * tq), (g + 8, 2 * tq), (g, 2 * tq + 8), (g + 8, 2 * tq + 8)].iter().enumerate() {
            am[*row][*k] = h(a[l][r] & 0xFFFF);
            am[*row][*k + 1] = h(a[l][r] >> 16);
        }
        bm[2 * tq][g] = h(b[l][0] & 0xFFFF);
        bm[2 * tq + 1][g] = h(b[l][0] >> 16);
        bm[2 * tq + 8][g] = h(b[l][1] & 0xFFFF);
        bm[2 * tq + 9][g] = h(b[l][1] >> 16);
    }
    for l in 0..32 {
        let (g, tq) = (l / 4, l % 4);
        for (i, (row, col)) in [(g, 2 * tq), (g, 2 * tq + 1), (g + 8, 2 * tq), (g + 8, 2 * tq + 1)].iter().enumerate() {
            d[l][i] += (0..16).map(|k| am[*row][k] * bm[k][*col]).sum::<f64>() as f32;
        }
    }
}

/// common.cuh load_x8: x[n, c..c+8] as 4 words (0 outside).
fn load_x8(x: &[f16], n: usize, batch: usize, inf: usize, c: usize) -> [u32; 4] {
    let mut w = [0u32; 4];
    if n >= batch {
        return w;
    }
    for j in 0..8 {
        if c + j < inf {
            w[j / 2] |= (x[n * inf + c + j].to_bits() as u32) << (16 * (j % 2));
        }
    }
    w
}
fn x_frag(xv: &[u32; 4], hh: usize) -> [u32; 2] {
    let (a, b) = if hh == 1 { (xv[1], xv[3]) } else { (xv[0], xv[2]) };
    [prmt(a, b, 0x5410), prmt(a, b, 0x7632)]
}
fn k_range(units: usize, z: usize, nz: usize) -> (usize, usize) {
    (units * z / nz, units * (z + 1) / nz)
}

/// gq_body for every block of the grid (mtiles x batch tiles x ksplit), lane by lane.
fn emulate_gq(lay: &GqLayout, x: &[f16], batch: usize, ksplit: usize) -> Vec<f32> {
    let nt = if batch <= 8 { 1 } else { 4 };
    let (out, inf, b) = (lay.out, lay.inf, lay.bits);
    let n_kb = inf.div_ceil(32);
    let kbpg = lay.group_size / 32;
    let mut y = vec![0f32; batch * out];
    for m in 0..lay.mtiles {
        for ty in 0..batch.div_ceil(8 * nt) {
            let n0 = ty * 8 * nt;
            for z in 0..ksplit {
                let (cb0, cb1) = k_range(lay.nch, z, ksplit);
                for warp in 0..4 {
                    let c0 = cb0 + (cb1 - cb0) * warp / 4;
                    let c1 = cb0 + (cb1 - cb0) * (warp + 1) / 4;
                    let mut acc = vec![[[0f32; 4]; 32]; nt];
                    let mut tmp = vec![[[0f32; 4]; 32]; nt];
                    // Per-lane group state (uniform across lanes except the meta values).
                    let (mut grp, mut left) = (0usize, 0usize);
                    let mut m01 = [[0f32; 2]; 32];
                    let mut zz = [[0x6400_6400u32; 2]; 32];
                    let mut nxt = [[0u32, 0x6400_6400]; 32];
                    let load = |mw: [u32; 2]| {
                        let s = |v: u32| grid_mult(b, lay.grid, h(v) as f32);
                        ([s(mw[0] & 0xFFFF), s(mw[0] >> 16)], [prmt(mw[1], mw[1], 0x1010), prmt(mw[1], mw[1], 0x3232)])
                    };
                    if !lay.percol && c0 < c1 {
                        let kb0 = c0 * 8;
                        grp = lay.div.div((kb0 * 32) as u32) as usize;
                        left = kbpg - (kb0 - grp * kbpg);
                        for l in 0..32 {
                            (m01[l], zz[l]) = load(meta(lay, m, grp, l / 4));
                            if grp + 1 < lay.n_groups {
                                nxt[l] = meta(lay, m, grp + 1, l / 4);
                            }
                        }
                    }
                    for c in c0..c1 {
                        let words: Vec<Vec<u32>> = (0..32).map(|l| gq_words(lay, m, c, l)).collect();
                        for t in 0..8 {
                            let kb = c * 8 + t;
                            if kb >= n_kb {
                                break;
                            }
                            if !lay.percol {
                                if left == 0 {
                                    for (ntile, tm) in tmp.iter_mut().enumerate() {
                                        for l in 0..32 {
                                            for i in 0..4 {
                                                acc[ntile][l][i] += m01[l][i / 2] * tm[l][i];
                                                tm[l][i] = 0.0;
                                            }
                                        }
                                    }
                                    grp += 1;
                                    left = kbpg;
                                    for l in 0..32 {
                                        (m01[l], zz[l]) = load(nxt[l]);
                                        if grp + 1 < lay.n_groups {
                                            nxt[l] = meta(lay, m, grp + 1, l / 4);
                                        }
                                    }
                                }
                                left -= 1;
                            }
                            for hh in 0..2u32 {
                                let mut a = [[0u32; 4]; 32];
                                for l in 0..32 {
                                    let (g, tq) = (l / 4, l % 4);
                                    let col = kb * 32 + 8 * tq;
                                    let (w0, w1) = (gq_window(&words[l], b, t, 0), gq_window(&words[l], b, t, 1));
                                    let (pl, ph) = (2 * hh, 2 * hh + 1);
                                    a[l] = if !lay.percol {
                                        [
                                            grid_pair(b, lay.grid, w0, pl, zz[l][0]),
                                            grid_pair(b, lay.grid, w1, pl, zz[l][1]),
                                            grid_pair(b, lay.grid, w0, ph, zz[l][0]),
                                            grid_pair(b, lay.grid, w1, ph, zz[l][1]),
                                        ]
                                    } else {
                                        let (sc0, sc1, zc0, zc1) = percol_pairs(lay, m, g, col);
                                        let (pl, ph) = (pl as usize, ph as usize);
                                        [
                                            hmul2(grid_pair(b, lay.grid, w0, pl as u32, zc0[pl]), sc0[pl]),
                                            hmul2(grid_pair(b, lay.grid, w1, pl as u32, zc1[pl]), sc1[pl]),
                                            hmul2(grid_pair(b, lay.grid, w0, ph as u32, zc0[ph]), sc0[ph]),
                                            hmul2(grid_pair(b, lay.grid, w1, ph as u32, zc1[ph]), sc1[ph]),
                                        ]
                                    };
                                }
                                for ntile in 0..nt {
                                    let mut bf = [[0u32; 2]; 32];
                                    for (l, bl) in bf.iter_mut().enumerate() {
                                        let (g, tq) = (l / 4, l % 4);
                                        *bl = x_frag(&load_x8(x, n0 + ntile * 8 + g, batch, inf, kb * 32 + 8 * tq), hh as usize);
                                    }
                                    mma(&a, &bf, if lay.percol { &mut acc[ntile] } else { &mut tmp[ntile] });
                                }
                            }
                        }
                    }
                    if !lay.percol {
                        for (ntile, tm) in tmp.iter().enumerate() {
                            for l in 0..32 {
                                for i in 0..4 {
                                    acc[ntile][l][i] += m01[l][i / 2] * tm[l][i];
                                }
                            }
                        }
                    }
                    // Epilogue: row g / g+8 of the m-tile, batch column n0 + 8*nt + 2tq + (i&1).
                    for (ntile, a) in acc.iter().enumerate() {
                        for l in 0..32 {
                            for i in 0..4 {
                                let o = m * 16 + l / 4 + 8 * (i / 2);
                                let n = n0 + ntile * 8 + 2 * (l % 4) + (i & 1);
                                if o < out && n < batch {
                                    y[n * out + o] += a[l][i];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

fn check_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len());
    let den = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| if a.is_finite() { m.max((*a as f64 - *b as f64).abs()) } else { f64::INFINITY });
    assert!(err / den < tol, "{name}: max rel err {:.3e} (tolerance {tol:e})", err / den);
}

#[test]
fn gq_kernel_emulation_matches_the_reference_product() {
    let layers = vec![
        synth::lowbit(40, 300, 4, 64, GpuGrid::Affine, false, 1),
        synth::lowbit(24, 1100, 3, 128, GpuGrid::Shift, false, 2),
        synth::lowbit(17, 520, 2, 32, GpuGrid::HalfInt, false, 3),
        synth::lowbit(32, 600, 5, 256, GpuGrid::Affine, false, 4),
        synth::lowbit(32, 256, 4, 128, GpuGrid::Affine, true, 5),
        synth::lowbit(48, 200, 6, 40, GpuGrid::HalfInt, false, 6),
        synth::lowbit(16, 700, 8, 96, GpuGrid::Affine, false, 7),
        synth::awq(64, 1024, 128, 8),
        synth::gptq(32, 576, 3, 64, false, 9),
        synth::gptq(64, 256, 4, 64, true, 10),
        synth::gptq(32, 96, 4, 16, false, 11),
    ];
    for l in layers {
        let lay = arrange_gq(&GroupRows::from_layer(&l).unwrap());
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 11] {
            let x = synth::activations(batch, i, 40 + batch as u64);
            let want = reference_matmul(&w, &x, batch, o, i);
            for ksplit in [1usize, 2, 3] {
                let got = emulate_gq(&lay, &x, batch, ksplit);
                check_close(&format!("{} batch {batch} ksplit {ksplit}", l.label()), &got, &want, if lay.percol { 2e-3 } else { 1e-5 });
            }
        }
    }
}

#[test]
fn fastdiv_equals_integer_division() {
    for d in 1..=1024u32 {
        let f = FastDiv::new(d);
        for n in 0..1u32 << 16 {
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
    let mut r = Rng(12345);
    for d in [16u32, 32, 40, 64, 96, 100, 128, 192, 256, 1000, 4096, 11008, 65535, (1 << 20) + 7, (1 << 31) - 1] {
        let f = FastDiv::new(d);
        for n in (0..1u32 << 22).step_by(7).chain((0..100_000).map(|_| r.below(1 << 31) as u32)).chain([(1 << 31) - 1]) {
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// vqt

/// ldmatrix.x4.trans: lane l supplies the address (in halves) of stored row l%8 of matrix l/8;
/// lane (g, tq) receives from each matrix the elements (stored row 2tq, col g), (2tq+1, g).
fn ldsm_x4_trans(smem: &[u16], addr: &[usize; 32]) -> [[u32; 4]; 32] {
    let mut r = [[0u32; 4]; 32];
    for (l, rl) in r.iter_mut().enumerate() {
        let (g, tq) = (l / 4, l % 4);
        for (mi, reg) in rl.iter_mut().enumerate() {
            let lo = smem[addr[8 * mi + 2 * tq] + g] as u32;
            let hi = smem[addr[8 * mi + 2 * tq + 1] + g] as u32;
            *reg = lo | hi << 16;
        }
    }
    r
}

/// Lane stream of indices (vqt.cu: IdxStream) for (m-tile, chunk).
fn lane_indices(words: &[u32], nch: usize, ib: usize, m: usize, ch: usize, l: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let (mut bits, mut n, mut w) = (0u64, 0usize, 0usize);
    for _ in 0..VQT_STEPS {
        if n < ib {
            bits |= (words[((m * nch + ch) * ib + w) * 32 + l] as u64) << n;
            w += 1;
            n += 32;
        }
        out.push((bits as u32) & ((1 << ib) - 1));
        bits >>= ib;
        n -= ib;
    }
    out
}

/// One vqt launch (stage, optional residual, scale, bias) over every work item, lane by lane.
#[allow(clippy::too_many_arguments)]
fn emulate_vqt(
    out: usize,
    inf: usize,
    v: usize,
    main: &VqStage,
    res: Option<&VqStage>,
    cs: Option<&[f16]>,
    cb: Option<&[f16]>,
    x: &[f16],
    batch: usize,
    nsplit: usize,
) -> Vec<f32> {
    let nt = if batch <= 8 { 1 } else { 4 };
    let (v8, mt, nch, n_step) = (v / 8, out.div_ceil(16), inf.div_ceil(16 * VQT_STEPS), inf.div_ceil(16));
    let mw = arrange_indices(main, out, inf, v);
    let rw = res.map(|r| arrange_indices(r, out, inf, v));
    // Shared memory as the kernel fills it: main codebook, then the residual one (in halves).
    let mut smem: Vec<u16> = main.codebook.iter().map(|h| h.to_bits()).collect();
    let rbase = smem.len();
    if let Some(r) = res {
        smem.extend(r.codebook.iter().map(|h| h.to_bits()));
    }
    let x2 = |arr: &[f16], n: usize, c: usize| -> u32 {
        let g = |c: usize| if c < inf { arr[n * inf + c].to_bits() as u32 } else { 0 };
        g(c) | g(c + 1) << 16
    };
    let mut y = vec![0f32; batch * out];
    let ntile_y = batch.div_ceil(8 * nt);
    for it in 0..mt * ntile_y * nsplit {
        let (z, tile) = (it % nsplit, it / nsplit);
        let (ty, m) = (tile % ntile_y, tile / ntile_y);
        let n0 = ty * 8 * nt;
        let (cz0, cz1) = k_range(nch, z, nsplit);
        for warp in 0..4 {
            let c0 = cz0 + (cz1 - cz0) * warp / 4;
            let c1 = cz0 + (cz1 - cz0) * (warp + 1) / 4;
            let mut acc = vec![[[0f32; 4]; 32]; nt];
            for c in c0..c1 {
                let mi: Vec<Vec<u32>> = (0..32).map(|l| lane_indices(&mw, nch, main.idx_bits as usize, m, c, l)).collect();
                let ri: Option<Vec<Vec<u32>>> =
                    rw.as_ref().map(|rw| (0..32).map(|l| lane_indices(rw, nch, res.unwrap().idx_bits as usize, m, c, l)).collect());
                for s in 0..VQT_STEPS {
                    let step = c * VQT_STEPS + s;
                    if step >= n_step {
                        break;
                    }
                    let seg = |l: usize| vqt_segment(m, l) % v8;
                    let addr: [usize; 32] = std::array::from_fn(|l| (mi[l][s] as usize * v8 + seg(l)) * 8);
                    let mut a = ldsm_x4_trans(&smem, &addr);
                    if let Some(ri) = &ri {
                        let raddr: [usize; 32] = std::array::from_fn(|l| rbase + (ri[l][s] as usize * v8 + seg(l)) * 8);
                        let r = ldsm_x4_trans(&smem, &raddr);
                        for l in 0..32 {
                            for k in 0..4 {
                                a[l][k] = hadd2(a[l][k], r[l][k]);
                            }
                        }
                    }
                    for (ntile, acc_t) in acc.iter_mut().enumerate() {
                        let mut bx = [[0u32; 2]; 32];
                        let mut bb = [[0u32; 2]; 32];
                        for l in 0..32 {
                            let (g, tq) = (l / 4, l % 4);
                            let n = n0 + ntile * 8 + g;
                            let (ca, cbb) = (step * 16 + 2 * tq, step * 16 + 2 * tq + 8);
                            let (xa, xb) = if n < batch { (x2(x, n, ca), x2(x, n, cbb)) } else { (0, 0) };
                            bx[l] = match cs {
                                Some(cs) => [hmul2(xa, x2(cs, 0, ca)), hmul2(xb, x2(cs, 0, cbb))],
                                None => [xa, xb],
                            };
                            if let Some(cb) = cb {
                                bb[l] = [hmul2(xa, x2(cb, 0, ca)), hmul2(xb, x2(cb, 0, cbb))];
                            }
                        }
                        mma(&a, &bx, acc_t);
                        if cb.is_some() {
                            mma(&[[0x3C00_3C00; 4]; 32], &bb, acc_t);
                        }
                    }
                }
            }
            for (ntile, a) in acc.iter().enumerate() {
                for l in 0..32 {
                    for i in 0..4 {
                        let o = m * 16 + l / 4 + 8 * (i / 2);
                        let n = n0 + ntile * 8 + 2 * (l % 4) + (i & 1);
                        if o < out && n < batch {
                            y[n * out + o] += a[l][i];
                        }
                    }
                }
            }
        }
    }
    y
}

/// A VQ layer through the host's launches (main + outliers, with their x maps), emulated.
fn emulate_vq_layer(l: &PackedOnGpu, x: &[f16], batch: usize, nsplit: usize) -> Vec<f32> {
    let PackedOnGpu::Vq { out, in_features, v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers } = l else { panic!() };
    let (out, inf, v) = (*out, *in_features, *v);
    let main = VqStage { idx_bits: *idx_bits, indices, codebook };
    let res = residual.as_ref().map(|r| VqStage { idx_bits: r.idx_bits, indices: &r.indices, codebook: &r.codebook });
    let mut xm = x.to_vec();
    if let Some(ol) = outliers {
        for n in 0..batch {
            for &c in &ol.cols {
                xm[n * inf + c as usize] = f16::ZERO;
            }
        }
    }
    let mut y = emulate_vqt(out, inf, v, &main, res.as_ref(), col_scale.as_deref(), col_bias.as_deref(), &xm, batch, nsplit);
    if let Some(ol) = outliers {
        let k = ol.cols.len();
        let pick = |s: &Option<Vec<f16>>| s.as_ref().map(|s| ol.cols.iter().map(|&c| s[c as usize]).collect::<Vec<f16>>());
        let xg: Vec<f16> = (0..batch).flat_map(|n| ol.cols.iter().map(move |&c| x[n * inf + c as usize])).collect();
        let st = VqStage { idx_bits: ol.idx_bits, indices: &ol.indices, codebook: &ol.codebook };
        let yo = emulate_vqt(out, k, v, &st, None, pick(col_scale).as_deref(), pick(col_bias).as_deref(), &xg, batch, nsplit);
        y.iter_mut().zip(yo).for_each(|(a, b)| *a += b);
    }
    y
}

#[test]
fn vqt_arrangement_and_kernel_emulation_match_the_reference() {
    let layers = vec![
        synth::vq(48, 600, 8, 12, true, true, 12),
        synth::vq(64, 300, 16, 8, false, true, 13),
        synth::vq(96, 200, 8, 10, false, false, 9),
        synth::vq(40, 1100, 8, 7, true, false, 14),
        synth::vq_outliers(64, 96, 8, 8, 5, 14),
        synth::vq(24, 64, 24, 5, true, true, 15),
    ];
    for l in layers {
        assert!(
            lowbit::cuda::vqt::host_layer(&l, lowbit::cuda::vqt::DEFAULT_SMEM_LIMIT).unwrap().is_some(),
            "{} must take the tiled path",
            l.label()
        );
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 11] {
            let x = synth::activations(batch, i, 60 + batch as u64);
            let want = reference_matmul(&w, &x, batch, o, i);
            for nsplit in [1usize, 2] {
                // fp16 rounding of cb + rcb and of x * col_scale, as on the GPU.
                check_close(&format!("{} batch {batch} nsplit {nsplit}", l.label()), &emulate_vq_layer(&l, &x, batch, nsplit), &want, 3e-3);
            }
        }
    }
    // The addressing itself, element by element: every (row, column) an A fragment holds is the
    // codebook entry the reference decoder uses (no scale, bias or residual: exact).
    let l = synth::vq(32, 1040, 8, 9, false, false, 21);
    let PackedOnGpu::Vq { out, in_features: inf, v, idx_bits, indices, codebook, .. } = &l else { panic!() };
    let st = VqStage { idx_bits: *idx_bits, indices, codebook };
    let words = arrange_indices(&st, *out, *inf, *v);
    let nch = inf.div_ceil(16 * VQT_STEPS);
    let smem: Vec<u16> = codebook.iter().map(|h| h.to_bits()).collect();
    let w = l.dequantize();
    let mut seen = vec![false; out * inf];
    for m in 0..out.div_ceil(16) {
        for ch in 0..nch {
            let idx: Vec<Vec<u32>> = (0..32).map(|ln| lane_indices(&words, nch, *idx_bits as usize, m, ch, ln)).collect();
            for s in 0..VQT_STEPS {
                let addr: [usize; 32] = std::array::from_fn(|ln| (idx[ln][s] as usize * (v / 8) + vqt_segment(m, ln) % (v / 8)) * 8);
                let a = ldsm_x4_trans(&smem, &addr);
                for ln in 0..32 {
                    let (g, tq) = (ln / 4, ln % 4);
                    for (r, (row, k)) in [(g, 2 * tq), (g + 8, 2 * tq), (g, 2 * tq + 8), (g + 8, 2 * tq + 8)].iter().enumerate() {
                        for (half, kk) in [(0, *k), (1, *k + 1)] {
                            let (o, c) = (m * 16 + row, (ch * VQT_STEPS + s) * 16 + kk);
                            if o < *out && c < *inf {
                                let got = h(a[ln][r] >> (16 * half) & 0xFFFF) as f32;
                                assert_eq!(got, w[o * inf + c], "w[{o}][{c}]");
                                seen[o * inf + c] = true;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|&s| s), "every weight is covered by some fragment");
    let _ = vqt_col(0, 0, 0);
}

// ---------------------------------------------------------------------------------------------
// Real layers

fn quantize(out: &std::path::Path, extra: &[&str]) {
    let m = stories();
    let c = shared("data/tinyshakespeare/input.txt");
    let args = [
        &["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--calib", c.to_str().unwrap()][..],
        &["--calib-samples", "8", "--calib-seqlen", "64"],
        extra,
    ]
    .concat();
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn real_stories260k_layers_through_the_emulated_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("lb4", vec!["--method", "rtn", "--bits", "4", "--group-size", "32"]),
        ("gptq3act", vec!["--method", "gptq", "--bits", "3", "--group-size", "16", "--act-order"]),
        ("awq", vec!["--method", "awq", "--bits", "4", "--group-size", "32", "--format", "awq"]),
        ("gptqfmt", vec!["--method", "gptq", "--bits", "4", "--group-size", "32", "--format", "gptq", "--act-order", "--sym"]),
        ("shift", vec!["--method", "shift", "--bits", "3", "--group-size", "64"]),
        (
            "vq8",
            vec![
                "--method",
                "vptq",
                "--vector-len",
                "8",
                "--centroids",
                "64",
                "--res-centroids",
                "16",
                "--vq-normalize",
                "--outlier-pct",
                "3",
                "--override",
                "gate_proj|up_proj=rtn:4:32",
            ],
        ),
    ];
    let mut n = 0;
    for (name, args) in cases {
        let d = tmp.path().join(name);
        quantize(&d, &args);
        for s in lowbit::verify::select(&d, None).unwrap() {
            let cfg = lowbit::config::ModelConfig::load(&d.join("config.json")).unwrap();
            let scheme = lowbit::qmodel::QuantScheme::from_config(&d, &cfg.raw).unwrap().unwrap();
            let ck = lowbit::weights::Checkpoint::open(&d).unwrap();
            let stored = scheme.read_any(&ck, &s.prefix).unwrap().unwrap();
            let l = PackedOnGpu::from(&stored);
            let (o, i) = l.shape();
            let x = synth::activations(2, i, 3);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            // The checkpoint's own CPU product (src/pack) is the reference here.
            let want = stored.dequant_matmul(&xf, 2);
            let got = match &l {
                PackedOnGpu::Vq { .. } => emulate_vq_layer(&l, &x, 2, 2),
                _ => {
                    let lay = check_gq_decode(name, &l);
                    emulate_gq(&lay, &x, 2, 2)
                }
            };
            check_close(&format!("{name} {} ({o}x{i})", s.prefix), &got, &want, 3e-3);
            n += 1;
        }
    }
    assert!(n >= 60, "{n} layers");
}
