//! Quantization methods. Each method lives in its own file and turns an f32 weight matrix
//! `[out_features, in_features]` (row-major, as stored in HF checkpoints) into a [`QTensor`].

pub mod awq;
pub mod gguf;
pub mod gptq;
pub mod kmeans;
pub mod rtn;
pub mod shift;
pub mod statsq;
pub mod vptq;

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
    Gguf(gguf::BlockQ),
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
