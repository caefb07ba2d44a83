//! GPU-side weight arrangements made at upload (kernels/gq.cu, kernels/vqt.cu), as Marlin and
//! vLLM's GPTQ/AWQ repacking do: every lane's 128-bit load is exactly the code words its mma
//! fragments need, in the order they are consumed, and group metadata is laid per m-tile so one
//! load serves both rows of a lane. docs/kernels.md describes the layouts; tests/gpu_emulation.rs
//! decodes them the way the kernels do and compares with the CPU reference decoder.

use half::f16;
use rayon::prelude::*;

use super::layer::{gptq_groups, lowbit_groups, stream_row_bytes, trivial_g_idx, GpuGrid, PackedOnGpu};
use super::reference::{bits_u32, bits_u8};

/// Output rows per m-tile (one warp's mma rows).
pub const GQ_ROWS: usize = 16;
/// Input columns per chunk (8 k-blocks of 32): a lane's `B` 128-bit loads cover one chunk.
pub const GQ_CHUNK: usize = 256;

/// `n / d` as `umulhi(n, mul) >> shr` (exact for `n < 2^31`, any `1 <= d < 2^31`); `mul == 0`
/// means `d == 1`. The kernels get group indices this way instead of dividing at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDiv {
    pub mul: u32,
    pub shr: u32,
}

impl FastDiv {
    pub fn new(d: u32) -> Self {
        assert!((1..1 << 31).contains(&d), "FastDiv: divisor {d} outside 1..2^31");
        if d == 1 {
            return FastDiv { mul: 0, shr: 0 };
        }
        let l = 32 - (d - 1).leading_zeros(); // ceil(log2 d)
        let p = 31 + l;
        let m = (1u64 << p).div_ceil(d as u64);
        FastDiv { mul: m as u32, shr: p - 32 }
    }
    /// What the kernel computes (`__umulhi(n, mul) >> shr`).
    pub fn div(&self, n: u32) -> u32 {
        if self.mul == 0 {
            n
        } else {
            (((n as u64 * self.mul as u64) >> 32) as u32) >> self.shr
        }
    }
}

/// A group-quantized layer decoded to plain rows: the common input of the tiled arrangement,
/// whichever checkpoint layout it came from.
#[derive(Clone, Debug)]
pub struct GroupRows {
    pub out: usize,
    pub inf: usize,
    pub bits: u32,
    pub grid: GpuGrid,
    pub group_size: usize,
    pub n_groups: usize,
    /// Per-column group; None when column `c` is in group `c / group_size`.
    pub g_idx: Option<Vec<i32>>,
    /// `[out][in]` codes.
    pub codes: Vec<u8>,
    /// `[out][n_groups]`.
    pub scales: Vec<f16>,
    /// `[out][n_groups]` integer zero points (affine only, else empty), up to 256.
    pub zeros: Vec<u16>,
}

const AWQ_REV: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

impl GroupRows {
    /// The rows of a group layout (None for VQ). The layer must have passed `validate()`.
    pub fn from_layer(l: &PackedOnGpu) -> Option<Self> {
        let (out, inf) = l.shape();
        let transpose = |s: &[f16], ng: usize| -> Vec<f16> { (0..out * ng).map(|k| s[(k % ng) * out + k / ng]).collect() };
        Some(match l {
            PackedOnGpu::Awq { group_size, qweight, qzeros, scales, .. } => {
                let (ow, ng) = (out / 8, inf / group_size);
                let nib = |w: i32, o: usize| ((w as u32 >> (4 * AWQ_REV[o % 8])) & 15) as u16;
                GroupRows {
                    out,
                    inf,
                    bits: 4,
                    grid: GpuGrid::Affine,
                    group_size: *group_size,
                    n_groups: ng,
                    g_idx: None,
                    codes: (0..out * inf).map(|k| nib(qweight[(k % inf) * ow + (k / inf) / 8], k / inf) as u8).collect(),
                    scales: transpose(scales, ng),
                    zeros: (0..out * ng).map(|k| nib(qzeros[(k % ng) * ow + (k / ng) / 8], k / ng)).collect(),
                }
            }
            PackedOnGpu::Gptq { bits, group_size, qweight, qzeros, scales, g_idx, .. } => {
                let b = *bits as usize;
                let ng = gptq_groups(inf, *group_size, g_idx.as_deref());
                let zw = out * b / 32;
                GroupRows {
                    out,
                    inf,
                    bits: *bits,
                    grid: GpuGrid::Affine,
                    group_size: *group_size,
                    n_groups: ng,
                    g_idx: g_idx.clone().filter(|g| !trivial_g_idx(g, *group_size, inf)),
                    codes: (0..out * inf).map(|k| bits_u32(qweight, out, k / inf, (k % inf) * b, *bits) as u8).collect(),
                    scales: transpose(scales, ng),
                    zeros: (0..out * ng)
                        .map(|k| {
                            let (o, gr) = (k / ng, k % ng);
                            crate::pack::gptq::zero_of_field(bits_u32(&qzeros[gr * zw..(gr + 1) * zw], 1, 0, o * b, *bits), *bits) as u16
                        })
                        .collect(),
                }
            }
            PackedOnGpu::Lowbit { bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
                let rb = stream_row_bytes(inf, *bits);
                let ng = lowbit_groups(inf, *group_size, g_idx.as_deref());
                GroupRows {
                    out,
                    inf,
                    bits: *bits,
                    grid: *grid,
                    group_size: *group_size,
                    n_groups: ng,
                    g_idx: g_idx.clone(),
                    codes: (0..out * inf).map(|k| bits_u8(&qweight[(k / inf) * rb..], (k % inf) * *bits as usize, *bits) as u8).collect(),
                    scales: scales.clone(),
                    zeros: match (grid, qzeros) {
                        (GpuGrid::Affine, Some(z)) => z.iter().map(|&v| v as u16).collect(),
                        _ => Vec::new(),
                    },
                }
            }
            PackedOnGpu::Vq { .. } => return None,
        })
    }

    /// Per-column path needed: act-order groups or groups that are not whole k-blocks.
    pub fn percol(&self) -> bool {
        self.g_idx.is_some() || !self.group_size.is_multiple_of(32)
    }
}

/// The tiled arrangement of kernels/gq.cu.
#[derive(Clone, Debug)]
pub struct GqLayout {
    pub out: usize,
    pub inf: usize,
    pub bits: u32,
    pub grid: GpuGrid,
    pub group_size: usize,
    pub n_groups: usize,
    pub mtiles: usize,
    pub nch: usize,
    pub percol: bool,
    /// Meta words per (m-tile, group, lane-row): 2 for affine, 1 otherwise.
    pub meta_words: usize,
    /// `[mtiles][nch][bits][32 lanes][4]` words.
    pub qa: Vec<u32>,
    /// `[mtiles][n_groups][8][meta_words]`.
    pub meta: Vec<u32>,
    pub g_idx: Option<Vec<i32>>,
    pub div: FastDiv,
}

impl GqLayout {
    /// Index in `qa` of stream word `k` (0..4B) of lane `l` for (m-tile, chunk).
    pub fn qa_index(&self, m: usize, ch: usize, l: usize, k: usize) -> usize {
        (((m * self.nch + ch) * self.bits as usize + k / 4) * 32 + l) * 4 + k % 4
    }
    /// Index in `meta` of word `w` for (m-tile, group, lane-row g).
    pub fn meta_index(&self, m: usize, grp: usize, g: usize, w: usize) -> usize {
        ((m * self.n_groups + grp) * 8 + g) * self.meta_words + w
    }
}

/// Window slot of the lane's column `j` (0..8): AutoAWQ's interleave, so that slots `p` and
/// `p + 4` (one magic-number pair, one A register) hold columns `2p` and `2p + 1`.
pub fn gq_slot(j: usize) -> usize {
    j / 2 + 4 * (j % 2)
}

/// Stream bit of the code of column `j` (0..8) of the window (k-block `t`, row half `hf`) in a
/// lane's chunk stream.
pub fn gq_stream_bit(bits: u32, t: usize, hf: usize, j: usize) -> usize {
    let b = bits as usize;
    16 * b * t + 8 * b * hf + gq_slot(j) * b
}

/// Arranges group rows for kernels/gq.cu.
pub fn arrange_gq(r: &GroupRows) -> GqLayout {
    let b = r.bits as usize;
    let mtiles = r.out.div_ceil(GQ_ROWS);
    let nch = r.inf.div_ceil(GQ_CHUNK);
    let affine = r.grid == GpuGrid::Affine;
    let mw = if affine { 2 } else { 1 };
    let mut lay = GqLayout {
        out: r.out,
        inf: r.inf,
        bits: r.bits,
        grid: r.grid,
        group_size: r.group_size,
        n_groups: r.n_groups,
        mtiles,
        nch,
        percol: r.percol(),
        meta_words: mw,
        qa: Vec::new(),
        meta: Vec::new(),
        g_idx: r.g_idx.clone(),
        div: FastDiv::new(r.group_size as u32),
    };
    let tile_words = nch * b * 32 * 4;
    let mut qa = vec![0u32; mtiles * tile_words];
    qa.par_chunks_mut(tile_words.max(1)).enumerate().for_each(|(m, tile)| {
        for ch in 0..nch {
            for l in 0..32 {
                let (g, tq) = (l / 4, l % 4);
                for t in 0..8 {
                    for hf in 0..2 {
                        let row = m * GQ_ROWS + g + 8 * hf;
                        for j in 0..8 {
                            let col = ch * GQ_CHUNK + 32 * t + 8 * tq + j;
                            if row >= r.out || col >= r.inf {
                                continue;
                            }
                            let code = r.codes[row * r.inf + col] as u32;
                            let bit = gq_stream_bit(r.bits, t, hf, j);
                            for k in 0..b {
                                if code >> k & 1 == 1 {
                                    let sw = (bit + k) / 32;
                                    tile[((ch * b + sw / 4) * 32 + l) * 4 + sw % 4] |= 1 << ((bit + k) % 32);
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    lay.qa = qa;
    let ng = r.n_groups;
    let mut meta = vec![0u32; mtiles * ng * 8 * mw];
    for m in 0..mtiles {
        for grp in 0..ng {
            for g in 0..8 {
                let (r0, r1) = (m * GQ_ROWS + g, m * GQ_ROWS + g + 8);
                let s = |row: usize| if row < r.out { r.scales[row * ng + grp].to_bits() as u32 } else { 0 };
                let z = |row: usize| 0x6400 + if row < r.out && affine { r.zeros[row * ng + grp] as u32 } else { 0 };
                let i = lay.meta_index(m, grp, g, 0);
                meta[i] = s(r0) | s(r1) << 16;
                if affine {
                    meta[i + 1] = z(r0) | z(r1) << 16;
                }
            }
        }
    }
    lay.meta = meta;
    lay
}
