//! AutoAWQ's GEMM layout (`WQLinear_GEMM`, `"version": "gemm"`), 4-bit affine only.
//!
//! * `qweight` I32 `[in, out/8]`: word `[i][j]` holds the codes of output channels `8j..8j+8`
//!   at input `i`, nibble `p` (bits `4p..4p+4`) holding channel `8j + AWQ_ORDER[p]` with
//!   `AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`;
//! * `qzeros` I32 `[in/g, out/8]`: the zero points, interleaved the same way, stored as is;
//! * `scales` F16 `[in/g, out]`.
//!
//! `w[o][i] = (q - z) * s` with the group `i / g`.

use super::{check_groupq, f16_tensor, fetch, g_idx_is_trivial, le_f16s, le_i32s, matmul_decoded, mul, scales_to_f16, shape_of};
use super::{HfQuantMeta, PackedLayout, TensorSource};
use crate::codes::{grid_value, Grid, GroupQ};
use crate::st_write::OutTensor;
use anyhow::{bail, ensure, Result};
use half::f16;
use safetensors::tensor::Dtype;

/// Nibble `p` of a packed word holds channel `AWQ_ORDER[p]` of its block of 8.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Channel `c` of a block of 8 sits in nibble `AWQ_REVERSE_ORDER[c]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

#[derive(Clone, Debug, PartialEq)]
pub struct AwqPacked {
    pub out_features: usize,
    pub in_features: usize,
    pub group_size: usize,
    /// `[in][out/8]`.
    pub qweight: Vec<i32>,
    /// `[in/g][out/8]`.
    pub qzeros: Vec<i32>,
    /// `[in/g][out]`.
    pub scales: Vec<f16>,
}

/// Packs 8 channel values (each `< 16`) into one word in AWQ order.
fn pack8(v: impl Fn(usize) -> u8) -> i32 {
    (0..8).fold(0u32, |w, p| w | (v(AWQ_ORDER[p]) as u32) << (4 * p)) as i32
}

/// Channel `c` (`0..8`) of an AWQ-packed word.
#[inline]
fn nibble(word: i32, c: usize) -> u8 {
    ((word as u32) >> (4 * AWQ_REVERSE_ORDER[c]) & 15) as u8
}

impl AwqPacked {
    fn n_groups(&self) -> usize {
        self.in_features / self.group_size
    }

    /// The `quantization_config` AutoAWQ writes for this layout.
    pub fn quantization_config(group_size: usize) -> serde_json::Value {
        serde_json::json!({
            "quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": true, "version": "gemm"
        })
    }
}

impl PackedLayout for AwqPacked {
    type Meta = HfQuantMeta;

    fn pack(q: &GroupQ) -> Result<Self> {
        check_groupq(q)?;
        let (o, i, g) = (q.out_features, q.in_features, q.group_size);
        ensure!(q.bits == 4, "AWQ GEMM layout holds 4-bit codes only, got {} bits", q.bits);
        ensure!(q.grid == Grid::Affine, "AWQ GEMM layout holds the affine grid only, got {:?}", q.grid);
        ensure!(g_idx_is_trivial(q), "AWQ GEMM layout has no g_idx (act-order); this tensor's input columns are permuted");
        ensure!(i % g == 0, "AWQ GEMM layout needs in_features ({i}) divisible by group_size ({g})");
        ensure!(o % 8 == 0, "AWQ GEMM layout needs out_features ({o}) divisible by 8");
        let ng = i / g;
        if let Some(z) = q.zeros.iter().find(|&&z| z > 15) {
            bail!("AWQ GEMM layout stores 4-bit zero points, got {z}");
        }
        let ow = o / 8;
        let qweight = (0..i * ow).map(|k| pack8(|c| q.codes[(8 * (k % ow) + c) * i + k / ow])).collect();
        let qzeros = (0..ng * ow).map(|k| pack8(|c| q.zeros[(8 * (k % ow) + c) * ng + k / ow])).collect();
        let st: Vec<f32> = (0..ng * o).map(|k| q.scales[(k % o) * ng + k / o]).collect();
        Ok(Self { out_features: o, in_features: i, group_size: g, qweight, qzeros, scales: scales_to_f16(&st)? })
    }

    fn unpack(&self) -> Result<GroupQ> {
        let (o, i, ng, ow) = (self.out_features, self.in_features, self.n_groups(), self.out_features / 8);
        let mut q = GroupQ::new(o, i, 4, self.group_size, Grid::Affine, ng);
        for r in 0..o {
            for c in 0..i {
                q.codes[r * i + c] = nibble(self.qweight[c * ow + r / 8], r % 8);
            }
            for gi in 0..ng {
                q.zeros[r * ng + gi] = nibble(self.qzeros[gi * ow + r / 8], r % 8);
                q.scales[r * ng + gi] = self.scales[gi * o + r].to_f32();
            }
        }
        Ok(q)
    }

    fn to_tensors(&self, prefix: &str) -> Vec<OutTensor> {
        let (o, i, ng) = (self.out_features, self.in_features, self.n_groups());
        vec![
            OutTensor::i32(format!("{prefix}.qweight"), vec![i, o / 8], &self.qweight),
            OutTensor::i32(format!("{prefix}.qzeros"), vec![ng, o / 8], &self.qzeros),
            f16_tensor(format!("{prefix}.scales"), vec![ng, o], &self.scales),
        ]
    }

    fn from_tensors(src: &dyn TensorSource, prefix: &str, meta: &HfQuantMeta) -> Result<Self> {
        let qw_name = format!("{prefix}.qweight");
        ensure!(meta.bits == 4, "{qw_name}: AWQ GEMM layout is 4-bit, config says {} bits", meta.bits);
        let sh = shape_of(src, &qw_name)?;
        let &[i, ow] = sh.as_slice() else { bail!("{qw_name}: shape {sh:?} is not 2-D") };
        ensure!(i > 0 && ow > 0, "{qw_name}: empty shape {sh:?}");
        let (o, g) = (mul(ow, 8, &qw_name)?, meta.group_size_for(i));
        ensure!(g > 0 && i % g == 0, "{qw_name}: in_features {i} not divisible by group_size {g}");
        let ng = i / g;
        let qweight = le_i32s(fetch(src, &qw_name, Dtype::I32, &[i, ow])?);
        let qzeros = le_i32s(fetch(src, &format!("{prefix}.qzeros"), Dtype::I32, &[ng, ow])?);
        let scales = le_f16s(fetch(src, &format!("{prefix}.scales"), Dtype::F16, &[ng, o])?);
        Ok(Self { out_features: o, in_features: i, group_size: g, qweight, qzeros, scales })
    }

    fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (o, ow, g) = (self.out_features, self.out_features / 8, self.group_size);
        matmul_decoded(x, rows, self.shape(), |r, w| {
            let (j, c) = (r / 8, r % 8);
            for (col, wv) in w.iter_mut().enumerate() {
                let gi = col / g;
                let code = nibble(self.qweight[col * ow + j], c);
                let z = nibble(self.qzeros[gi * ow + j], c);
                *wv = grid_value(Grid::Affine, 4, code, self.scales[gi * o + r].to_f32(), z);
            }
        })
    }

    fn storage_bits(&self) -> u64 {
        32 * (self.qweight.len() + self.qzeros.len()) as u64 + 16 * self.scales.len() as u64
    }

    fn shape(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }
}
