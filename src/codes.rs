//! The code types quantization methods produce and packed layouts store, with their decode:
//! group-quantized weights on a scalar grid ([`GroupQ`]), vector-quantized weights ([`VqQ`]),
//! llama.cpp blocks ([`BlockQ`]), and [`QTensor`], any of them. Methods (`quant/`) build them,
//! layouts (`pack/`) and the GPU path (`cuda/`) read them; this module depends on neither.

use crate::gguf::blocks::{self, Kind};
use crate::gguf::GgmlType;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// How an integer code maps back to a real number inside one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// `w = (q - z) * s`, integer zero point `z` (RTN, AWQ, GPTQ). Symmetric = `z = 2^(b-1)`.
    Affine,
    /// StatsQ's zero-free half-integer grid: `w = s * (q - n + 0.5) / n`, `n = 2^(b-1)`.
    HalfInt,
    /// DenseShift: top bit of the code is the sign, the low `b-1` bits an exponent `p`:
    /// `w = ±s * 2^(-p)`. No zero code.
    Shift,
}

impl Grid {
    /// The grid's name in lowbit's quantization_config and the GPU kernels' names.
    pub fn name(self) -> &'static str {
        match self {
            Grid::Affine => "affine",
            Grid::HalfInt => "halfint",
            Grid::Shift => "shift",
        }
    }
}

/// A group-quantized linear weight: every `out` row is cut into groups along `in`
/// (`group_size` wide, the last one shorter when it does not divide `in_features`).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupQ {
    pub out_features: usize,
    pub in_features: usize,
    pub bits: u8,
    pub group_size: usize,
    pub grid: Grid,
    /// `[out][in]` codes, each `< 2^bits`.
    pub codes: Vec<u8>,
    /// `[out][n_groups]` scales.
    pub scales: Vec<f32>,
    /// `[out][n_groups]` integer zero points (only meaningful for [`Grid::Affine`]).
    pub zeros: Vec<u8>,
    /// Optional group index of every input column (GPTQ act-order with static groups off);
    /// `None` means column `i` is in group `i / group_size`.
    pub g_idx: Option<Vec<u32>>,
}

impl GroupQ {
    /// An `out × inn` weight in groups of `group_size` on `grid` with `n_groups` groups per row,
    /// every code, scale and zero point 0 and natural groups (no g_idx): the one constructor,
    /// whose fields the producer then fills.
    pub fn new(out: usize, inn: usize, bits: u8, group_size: usize, grid: Grid, n_groups: usize) -> Self {
        GroupQ {
            out_features: out,
            in_features: inn,
            bits,
            group_size,
            grid,
            codes: vec![0; out * inn],
            scales: vec![0.0; out * n_groups],
            zeros: vec![0; out * n_groups],
            g_idx: None,
        }
    }

    pub fn n_groups(&self) -> usize {
        match &self.g_idx {
            Some(g) => g.iter().map(|&x| x as usize + 1).max().unwrap_or(0),
            None => self.in_features.div_ceil(self.group_size),
        }
    }

    #[inline]
    pub fn group_of(&self, col: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[col] as usize,
            None => col / self.group_size,
        }
    }

    /// The real value of one code.
    #[inline]
    pub fn value(&self, code: u8, scale: f32, zero: u8) -> f32 {
        grid_value(self.grid, self.bits, code, scale, zero)
    }

    /// Dequantized `[out][in]` f32 weight.
    pub fn dequantize(&self) -> Vec<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let ng = self.n_groups();
        let mut w = vec![0f32; o * i];
        for r in 0..o {
            for c in 0..i {
                let g = self.group_of(c);
                w[r * i + c] = self.value(self.codes[r * i + c], self.scales[r * ng + g], self.zeros[r * ng + g]);
            }
        }
        w
    }
}

/// The value a code stands for on a grid.
#[inline]
pub fn grid_value(grid: Grid, bits: u8, code: u8, scale: f32, zero: u8) -> f32 {
    match grid {
        Grid::Affine => (code as f32 - zero as f32) * scale,
        Grid::HalfInt => {
            let n = (1u32 << (bits - 1)) as f32;
            scale * (code as f32 - n + 0.5) / n
        }
        Grid::Shift => {
            let p = (code & ((1u8 << (bits - 1)) - 1)) as i32;
            let neg = code >> (bits - 1) & 1 == 1;
            let v = scale * (-(p as f32)).exp2();
            if neg {
                -v
            } else {
                v
            }
        }
    }
}

/// A vector-quantized linear weight (VPTQ): the weight is cut into vectors of `vector_len`
/// consecutive elements along the output dimension of each input column.
#[derive(Clone, Debug, PartialEq)]
pub struct VqQ {
    pub out_features: usize,
    pub in_features: usize,
    pub vector_len: usize,
    /// `[k][vector_len]` main codebook.
    pub centroids: Vec<f32>,
    pub n_centroids: usize,
    /// `[in][out/vector_len]` index of each vector in the main codebook.
    pub indices: Vec<u32>,
    /// Optional residual codebook `[k_res][vector_len]` and its indices.
    pub res_centroids: Option<Vec<f32>>,
    pub n_res_centroids: usize,
    pub res_indices: Option<Vec<u32>>,
    /// Optional per-input-channel scale and bias (normalisation), applied as `w*scale + bias`.
    pub col_scale: Option<Vec<f32>>,
    pub col_bias: Option<Vec<f32>>,
    /// Outlier input columns kept with their own codebook: column ids and their [`VqQ`] part.
    pub outlier_cols: Vec<u32>,
    pub outlier_centroids: Option<Vec<f32>>,
    pub n_outlier_centroids: usize,
    pub outlier_indices: Option<Vec<u32>>,
}

/// Any quantized linear weight.
#[derive(Clone, Debug, PartialEq)]
pub enum QTensor {
    Group(GroupQ),
    Vq(VqQ),
    /// llama.cpp blocks (GGUF export).
    Gguf(BlockQ),
}

impl QTensor {
    /// Dequantized `[out][in]` f32 weight.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            QTensor::Group(g) => g.dequantize(),
            QTensor::Vq(v) => v.dequantize(),
            QTensor::Gguf(b) => b.dequantize(),
        }
    }

    pub fn shape(&self) -> (usize, usize) {
        match self {
            QTensor::Group(g) => (g.out_features, g.in_features),
            QTensor::Vq(v) => (v.out_features, v.in_features),
            QTensor::Gguf(b) => (b.rows, b.cols),
        }
    }
}

/// The sizes of a VQ weight's parts for an `out × inn` linear, known before quantizing (what a
/// layout needs to describe its tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VqShape {
    pub vector_len: usize,
    pub centroids: usize,
    /// 0: no residual codebook.
    pub res_centroids: usize,
    /// Per-column scale and bias.
    pub normalize: bool,
    pub n_outlier_cols: usize,
    /// 0: no outlier codebook.
    pub outlier_centroids: usize,
}

/// Settings that fix a [`VqShape`] per linear shape (VPTQ's configuration).
pub trait VqSizes {
    fn vq_shape(&self, out: usize, inn: usize) -> VqShape;
}

/// Index width of a codebook of `k` centroids: `max(1, ceil(log2 k))`.
pub fn index_bits(k: usize) -> usize {
    (usize::BITS - k.saturating_sub(1).leading_zeros()).max(1) as usize
}

impl VqQ {
    /// Number of vectors per input column, `out_features / vector_len`.
    pub fn vectors_per_col(&self) -> usize {
        self.out_features / self.vector_len
    }

    /// Position of every input column in `outlier_cols` (`u32::MAX` for non-outlier columns).
    pub fn outlier_pos(&self) -> Vec<u32> {
        let mut p = vec![u32::MAX; self.in_features];
        for (k, &c) in self.outlier_cols.iter().enumerate() {
            if let Some(x) = p.get_mut(c as usize) {
                *x = k as u32;
            }
        }
        p
    }

    /// Checks lengths, index ranges, outlier columns (strictly increasing, in range) and that
    /// the main/residual indices of outlier columns are 0.
    pub fn validate(&self) -> Result<()> {
        let (o, i, v) = (self.out_features, self.in_features, self.vector_len);
        ensure!(v > 0 && o.is_multiple_of(v), "VQ: vector length {v} does not divide out_features {o}");
        let nv = o / v;
        let book = |name: &str, c: Option<&[f32]>, k: usize, idx: Option<&[u32]>, rows: usize| -> Result<()> {
            match (c, idx) {
                (None, None) => ensure!(k == 0, "VQ: {name}: {k} centroids declared but no codebook"),
                (Some(c), Some(idx)) => {
                    ensure!(k > 0 && c.len() == k * v, "VQ: {name} codebook has {} values, expected {k}x{v}", c.len());
                    ensure!(idx.len() == rows * nv, "VQ: {name} indices: {} values, expected {rows}x{nv}", idx.len());
                    if let Some(x) = idx.iter().find(|&&x| x as usize >= k) {
                        bail!("VQ: {name} index {x} outside 0..{k}");
                    }
                    if let Some(x) = c.iter().find(|x| !x.is_finite()) {
                        bail!("VQ: {name} centroid value {x} is not finite");
                    }
                }
                _ => bail!("VQ: {name}: codebook and indices must be both present or both absent"),
            }
            Ok(())
        };
        book("main", Some(&self.centroids), self.n_centroids, Some(&self.indices), i)?;
        book("residual", self.res_centroids.as_deref(), self.n_res_centroids, self.res_indices.as_deref(), i)?;
        let n_out = self.outlier_cols.len();
        let (oc, oi) = (self.outlier_centroids.as_deref(), self.outlier_indices.as_deref());
        book("outlier", oc, self.n_outlier_centroids, oi, n_out)?;
        ensure!(
            (n_out > 0) == self.outlier_centroids.is_some(),
            "VQ: {n_out} outlier columns but {} outlier codebook",
            if n_out > 0 { "no" } else { "an" }
        );
        ensure!(
            self.outlier_cols.windows(2).all(|p| p[0] < p[1]) && self.outlier_cols.iter().all(|&c| (c as usize) < i),
            "VQ: outlier columns must be strictly increasing and below in_features {i}"
        );
        for (name, s) in [("col_scale", &self.col_scale), ("col_bias", &self.col_bias)] {
            if let Some(s) = s {
                ensure!(s.len() == i, "VQ: {name} has {} values for {i} columns", s.len());
            }
        }
        for &c in &self.outlier_cols {
            let c = c as usize;
            let zero = |x: &[u32]| x[c * nv..(c + 1) * nv].iter().all(|&x| x == 0);
            ensure!(zero(&self.indices), "VQ: main indices of outlier column {c} must be 0");
            ensure!(self.res_indices.as_deref().is_none_or(zero), "VQ: residual indices of outlier column {c} must be 0");
        }
        Ok(())
    }

    /// Column `c`, vector `j` (`v` values) in the normalised domain, before scale and bias.
    #[inline]
    pub fn base_vector(&self, c: usize, j: usize, opos: u32, out: &mut [f32]) {
        let (v, nv) = (self.vector_len, self.vectors_per_col());
        if opos != u32::MAX {
            let oc = self.outlier_centroids.as_deref().expect("outlier codebook");
            let oi = self.outlier_indices.as_deref().expect("outlier indices")[opos as usize * nv + j] as usize;
            out.copy_from_slice(&oc[oi * v..(oi + 1) * v]);
            return;
        }
        let m = self.indices[c * nv + j] as usize;
        out.copy_from_slice(&self.centroids[m * v..(m + 1) * v]);
        if let (Some(rc), Some(ri)) = (&self.res_centroids, &self.res_indices) {
            let r = ri[c * nv + j] as usize;
            out.iter_mut().zip(&rc[r * v..(r + 1) * v]).for_each(|(a, b)| *a += b);
        }
    }

    /// Dequantized `[out][in]` weight: `w[j*v+t][c] = base[t]·scale[c] + bias[c]`, where `base`
    /// is the outlier centroid of an outlier column, else main centroid + residual centroid.
    pub fn dequantize(&self) -> Vec<f32> {
        let (o, i, v) = (self.out_features, self.in_features, self.vector_len);
        let opos = self.outlier_pos();
        let mut w = vec![0f32; o * i];
        let mut buf = vec![0f32; v];
        for c in 0..i {
            let s = self.col_scale.as_ref().map_or(1.0, |s| s[c]);
            let b = self.col_bias.as_ref().map_or(0.0, |b| b[c]);
            for j in 0..o / v {
                self.base_vector(c, j, opos[c], &mut buf);
                for (t, &x) in buf.iter().enumerate() {
                    w[(j * v + t) * i + c] = dequant_value(x, s, b, self.col_scale.is_some(), self.col_bias.is_some());
                }
            }
        }
        w
    }
}

/// `x·s + b`, skipping the parts that are absent (so that an absent scale is exactly 1 and an
/// absent bias exactly 0, with no rounding).
#[inline]
pub fn dequant_value(x: f32, s: f32, b: f32, has_s: bool, has_b: bool) -> f32 {
    let y = if has_s { x * s } else { x };
    if has_b {
        y + b
    } else {
        y
    }
}

/// A matrix `[rows][cols]` stored as ggml blocks: row `r` is `cols / block` blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockQ {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl BlockQ {
    pub fn kind(&self) -> Kind {
        Kind::of(self.ty).expect("BlockQ holds a block type")
    }
    pub fn row_bytes(&self) -> usize {
        self.kind().row_bytes(self.cols)
    }
    /// Dequantized `[rows][cols]` values (the decode llama.cpp applies).
    pub fn dequantize(&self) -> Vec<f32> {
        let kind = self.kind();
        let mut out = vec![0f32; self.rows * self.cols];
        let rb = self.row_bytes();
        if rb == 0 {
            return out;
        }
        out.par_chunks_mut(self.cols).zip(self.data.par_chunks(rb)).for_each(|(o, b)| blocks::dequantize_row(&kind, b, o));
        out
    }
    /// Exact storage in bits.
    pub fn storage_bits(&self) -> u64 {
        8 * self.data.len() as u64
    }
    /// Reorder rows: row `i` of the result is row `perm[i]` of `self`.
    pub fn permute_rows(&self, perm: &[usize]) -> BlockQ {
        let rb = self.row_bytes();
        let mut data = Vec::with_capacity(self.data.len());
        for &r in perm {
            data.extend_from_slice(&self.data[r * rb..(r + 1) * rb]);
        }
        BlockQ { data, ..self.clone() }
    }
}
