//! Synthetic layers: random codes packed into each layout by small bit writers of their own (not
//! src/pack/), used by the tests, the benchmark and the GPU check.

use half::f16;

use super::layer::{stream_row_bytes, GpuGrid, PackedOnGpu, VqOutliers, VqResidual};

/// Small deterministic PRNG (xorshift64*).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn put_bits_u8(stream: &mut [u8], bit: usize, n: u32, v: u32) {
    for k in 0..n as usize {
        if v >> k & 1 == 1 {
            stream[(bit + k) / 8] |= 1 << ((bit + k) % 8);
        }
    }
}
fn put_bits_words(words: &mut [u32], stride: usize, col: usize, bit: usize, n: u32, v: u32) {
    for k in 0..n as usize {
        if v >> k & 1 == 1 {
            let b = bit + k;
            words[(b / 32) * stride + col] |= 1 << (b % 32);
        }
    }
}
fn scale(rng: &mut Rng) -> f16 {
    f16::from_f32(0.002 + 0.02 * (rng.unit() + 1.0))
}

/// Random activations `[batch][in]` in [-1, 1).
pub fn activations(batch: usize, inf: usize, seed: u64) -> Vec<f16> {
    let mut r = Rng::new(seed);
    (0..batch * inf).map(|_| f16::from_f32(r.unit())).collect()
}

/// AutoAWQ GEMM 4-bit layer with random codes and zeros.
pub fn awq(out: usize, inf: usize, group: usize, seed: u64) -> PackedOnGpu {
    let mut r = Rng::new(seed);
    let ow = out / 8;
    let ng = inf / group;
    let mut qweight = vec![0i32; inf * ow];
    for i in 0..inf {
        for w in 0..ow {
            // random codes in every nibble; which column a nibble stands for is the reader's
            // business (AWQ_REV in dequantize, the row map in awq.cu)
            qweight[i * ow + w] = (0..8).fold(0u32, |acc, j| acc | r.below(16) << (4 * j)) as i32;
        }
    }
    let qzeros: Vec<i32> = (0..ng * ow).map(|_| (0..8).fold(0u32, |acc, j| acc | r.below(16) << (4 * j)) as i32).collect();
    let scales = (0..ng * out).map(|_| scale(&mut r)).collect();
    PackedOnGpu::Awq { out, in_features: inf, group_size: group, qweight, qzeros, scales }
}

/// GPTQ v1 layer; `act_order` makes a random (non-trivial) g_idx.
pub fn gptq(out: usize, inf: usize, bits: u32, group: usize, act_order: bool, seed: u64) -> PackedOnGpu {
    let mut r = Rng::new(seed);
    let ng = inf.div_ceil(group);
    let mut qw = vec![0u32; inf * bits as usize / 32 * out];
    for o in 0..out {
        for i in 0..inf {
            put_bits_words(&mut qw, out, o, i * bits as usize, bits, r.below(1 << bits));
        }
    }
    let zw = out * bits as usize / 32;
    let mut qz = vec![0u32; ng * zw];
    for gr in 0..ng {
        for o in 0..out {
            // stored (zero - 1) mod 2^bits: zero 0 (all-ones field) included
            let z = r.below(1 << bits);
            put_bits_words(&mut qz[gr * zw..(gr + 1) * zw], 1, 0, o * bits as usize, bits, z.wrapping_sub(1) & ((1 << bits) - 1));
        }
    }
    let scales = (0..ng * out).map(|_| scale(&mut r)).collect();
    let g_idx: Vec<i32> =
        if act_order { (0..inf).map(|_| r.below(ng as u32) as i32).collect() } else { (0..inf).map(|i| (i / group) as i32).collect() };
    PackedOnGpu::Gptq {
        out,
        in_features: inf,
        bits,
        group_size: group,
        qweight: qw.into_iter().map(|w| w as i32).collect(),
        qzeros: qz.into_iter().map(|w| w as i32).collect(),
        scales,
        g_idx: Some(g_idx),
    }
}

/// lowbit layer with random codes; `with_g_idx` adds a random g_idx.
pub fn lowbit(out: usize, inf: usize, bits: u32, group: usize, grid: GpuGrid, with_g_idx: bool, seed: u64) -> PackedOnGpu {
    let mut r = Rng::new(seed);
    let rb = stream_row_bytes(inf, bits);
    let ng = inf.div_ceil(group);
    let mut qweight = vec![0u8; out * rb];
    for o in 0..out {
        for i in 0..inf {
            put_bits_u8(&mut qweight[o * rb..(o + 1) * rb], i * bits as usize, bits, r.below(1 << bits));
        }
    }
    let scales = (0..out * ng).map(|_| scale(&mut r)).collect();
    let qzeros = (grid == GpuGrid::Affine).then(|| (0..out * ng).map(|_| r.below(1 << bits) as u8).collect());
    let g_idx = with_g_idx.then(|| {
        let mut g: Vec<i32> = (0..inf).map(|i| (i % ng) as i32).collect();
        for i in (1..inf).rev() {
            g.swap(i, r.below(i as u32 + 1) as usize);
        }
        g
    });
    PackedOnGpu::Lowbit { out, in_features: inf, bits, group_size: group, grid, qweight, scales, qzeros, g_idx }
}

/// VQ layer: codebook of 2^idx_bits vectors of length v, optional residual and scale/bias.
pub fn vq(out: usize, inf: usize, v: usize, idx_bits: u32, residual: bool, scale_bias: bool, seed: u64) -> PackedOnGpu {
    let mut r = Rng::new(seed);
    let nvec = out / v;
    let mk_idx = |r: &mut Rng, ib: u32| {
        let rb = stream_row_bytes(nvec, ib);
        let mut idx = vec![0u8; inf * rb];
        for i in 0..inf {
            for j in 0..nvec {
                put_bits_u8(&mut idx[i * rb..(i + 1) * rb], j * ib as usize, ib, r.below(1 << ib));
            }
        }
        idx
    };
    let indices = mk_idx(&mut r, idx_bits);
    let codebook = (0..(1usize << idx_bits) * v).map(|_| f16::from_f32(0.05 * r.unit())).collect();
    let res = residual.then(|| {
        let rib = 8.min(idx_bits);
        VqResidual {
            idx_bits: rib,
            indices: mk_idx(&mut r, rib),
            codebook: (0..(1usize << rib) * v).map(|_| f16::from_f32(0.01 * r.unit())).collect(),
        }
    });
    let (col_scale, col_bias) = if scale_bias {
        (
            Some((0..inf).map(|_| f16::from_f32(0.5 + 0.5 * (r.unit() + 1.0))).collect()),
            Some((0..inf).map(|_| f16::from_f32(0.01 * r.unit())).collect()),
        )
    } else {
        (None, None)
    };
    PackedOnGpu::Vq { out, in_features: inf, v, idx_bits, indices, codebook, residual: res, col_scale, col_bias, outliers: None }
}

/// [`vq`] with `n_cols` outlier columns (spread over the input) decoded from their own codebook.
pub fn vq_outliers(out: usize, inf: usize, v: usize, idx_bits: u32, n_cols: usize, seed: u64) -> PackedOnGpu {
    let mut l = vq(out, inf, v, idx_bits, true, true, seed);
    let mut r = Rng::new(seed ^ 0x5eed);
    let nvec = out / v;
    let ib = 6u32;
    let rb = stream_row_bytes(nvec, ib);
    let n = n_cols.clamp(1, inf);
    let cols: Vec<i32> = (0..n).map(|k| (k * inf / n) as i32).collect();
    let mut indices = vec![0u8; n * rb];
    for p in 0..n {
        for j in 0..nvec {
            put_bits_u8(&mut indices[p * rb..(p + 1) * rb], j * ib as usize, ib, r.below(1 << ib));
        }
    }
    let codebook = (0..(1usize << ib) * v).map(|_| f16::from_f32(0.2 * r.unit())).collect();
    if let PackedOnGpu::Vq { outliers, .. } = &mut l {
        *outliers = Some(VqOutliers { cols, idx_bits: ib, indices, codebook });
    }
    l
}

/// Layers covering every layout and the awkward shapes (ragged in / out, short last group,
/// act-order, per-column paths, residual VQ, outlier columns, multi-word windows): the GPU
/// correctness suite of tests/cuda.rs and `kernels --check`.
pub fn coverage_layers() -> Vec<PackedOnGpu> {
    let mut v = vec![
        awq(192, 256, 64, 1),
        awq(64, 128, 128, 2),
        awq(136, 96, 32, 3),
        gptq(96, 256, 4, 128, false, 3),
        gptq(64, 320, 3, 64, false, 4),
        gptq(64, 256, 2, 32, false, 5),
        gptq(64, 256, 8, 128, false, 6),
        gptq(96, 256, 4, 64, true, 7),
        gptq(64, 192, 3, 32, true, 8),
        gptq(32, 96, 4, 16, false, 9),
        vq(96, 200, 8, 10, false, false, 9),
        vq(64, 130, 4, 8, true, true, 10),
        vq(96, 64, 2, 12, false, true, 11),
        vq(48, 600, 8, 12, true, true, 12),
        vq(64, 300, 16, 8, false, true, 13),
        vq_outliers(64, 96, 8, 8, 5, 14),
        vq_outliers(36, 50, 4, 6, 3, 15),
    ];
    let mut seed = 100;
    for bits in 2..=8u32 {
        for grid in [GpuGrid::Affine, GpuGrid::HalfInt, GpuGrid::Shift] {
            seed += 1;
            // ragged: out not a multiple of 16, in not a multiple of 128, short last group
            v.push(lowbit(40, 300, bits, 64, grid, false, seed));
        }
        v.push(lowbit(32, 256, bits, 128, GpuGrid::Affine, true, seed + 50));
        v.push(lowbit(48, 200, bits, 40, GpuGrid::Shift, false, seed + 60));
        v.push(lowbit(24, 520, bits, 256, GpuGrid::HalfInt, false, seed + 70));
    }
    v
}
