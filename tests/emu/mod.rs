//! Emulation of the bandwidth kernels for tests/gpu_emulation.rs: the fp16 and PTX operations the
//! kernels use, the PTX fragment semantics (mma.m16n8k16, ldmatrix .trans), and the two kernels
//! lane by lane (gq.rs, vqt.rs). Written from the kernel sources and the PTX ISA, independent of
//! src/cuda/reference.rs.
#![allow(dead_code, clippy::needless_range_loop)]
pub mod gq;
pub mod vqt;

use half::f16;
use lowbit::cuda::GpuGrid;

// ---------------------------------------------------------------------------------------------
// fp16 / PTX helpers, as the kernels use them

pub fn h(bits: u32) -> f64 {
    f16::from_bits(bits as u16).to_f64()
}
pub fn hb(v: f64) -> u32 {
    f16::from_f64(v).to_bits() as u32
}
/// Lane-wise f16x2 operation with one rounding (f64 holds every exact sum/product of two halves).
pub fn h2(a: u32, b: u32, f: impl Fn(f64, f64) -> f64) -> u32 {
    hb(f(h(a & 0xFFFF), h(b & 0xFFFF))) | hb(f(h(a >> 16), h(b >> 16))) << 16
}
pub fn hsub2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x - y)
}
pub fn hadd2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x + y)
}
pub fn hmul2(a: u32, b: u32) -> u32 {
    h2(a, b, |x, y| x * y)
}
/// `__byte_perm(a, b, sel)` (selector nibbles 0..7, no sign mode).
pub fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let bytes = (a as u64) | (b as u64) << 32;
    (0..4).fold(0u32, |r, i| r | (((bytes >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) as u32) << (8 * i))
}

/// The kernel's grid values (common.cuh: biased_pair, raw_pair, shift_pair, grid_pair).
pub fn biased_pair(b: u32, win: u64, j: u32) -> u32 {
    let m = (1u64 << b) - 1;
    (((win >> (j * b)) & m) as u32) | ((((win >> ((j + 4) * b)) & m) as u32) << 16) | 0x6400_6400
}
pub fn raw_pair(b: u32, win: u64, j: u32) -> u32 {
    biased_pair(b, win, j) & !0x6400_6400
}
pub fn shift_bits1(b: u32, code: u32) -> u32 {
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
pub fn shift_pair(b: u32, raw: u32) -> u32 {
    if b <= 4 {
        let pm2 = ((1u32 << (b - 1)) - 1) * 0x10001;
        let sgn = (raw << (16 - b)) & 0x8000_8000;
        (0x3C00_3C00u32.wrapping_sub((raw & pm2) << 10)) | sgn
    } else {
        shift_bits1(b, raw & 0xFFFF) | shift_bits1(b, raw >> 16) << 16
    }
}
pub fn grid_pair(b: u32, grid: GpuGrid, win: u64, j: u32, zz: u32) -> u32 {
    match grid {
        GpuGrid::Affine => hsub2(biased_pair(b, win, j), zz),
        GpuGrid::HalfInt => {
            let nn = (0x6400 | (1 << (b - 1))) * 0x10001;
            hadd2(hsub2(biased_pair(b, win, j), nn), 0x3800_3800)
        }
        GpuGrid::Shift => shift_pair(b, raw_pair(b, win, j)),
    }
}
pub fn grid_mult(b: u32, grid: GpuGrid, s: f32) -> f32 {
    if grid == GpuGrid::HalfInt {
        s * (1.0 / (1u32 << (b - 1)) as f32)
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Whole-kernel emulation

pub type Frag4 = [[f32; 4]; 32];

/// One mma.m16n8k16 (f16 in, f32 accumulate) from the 32 lanes' registers, PTX fragment layout.
pub fn mma(a: &[[u32; 4]; 32], b: &[[u32; 2]; 32], d: &mut Frag4) {
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
pub fn load_x8(x: &[f16], n: usize, batch: usize, inf: usize, c: usize) -> [u32; 4] {
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
pub fn k_range(units: usize, z: usize, nz: usize) -> (usize, usize) {
    (units * z / nz, units * (z + 1) / nz)
}

/// gq_body for every block of the grid (mtiles x batch tiles x ksplit), lane by lane.
pub fn check_close(name: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len());
    let den = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| if a.is_finite() { m.max((*a as f64 - *b as f64).abs()) } else { f64::INFINITY });
    assert!(err / den < tol, "{name}: max rel err {:.3e} (tolerance {tol:e})", err / den);
}
