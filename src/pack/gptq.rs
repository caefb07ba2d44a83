//! The GPTQ v1 layout (`"checkpoint_format": "gptq"` of AutoGPTQ / GPTQModel), 2, 3, 4 or 8 bits.
//!
//! * `qweight` I32 `[in*bits/32, out]`: column `o` is the little-endian bit stream (see
//!   [`super::stream_word`]) of the codes `q[o][0..in]`; for 2/4/8 bits each word holds
//!   `32/bits` whole codes, for 3 bits 32 codes span 3 words and codes 10 and 21 straddle words;
//! * `qzeros` I32 `[n_groups, out*bits/32]`: row `g` is the bit stream of the fields
//!   `(zero[0..out][g] - 1) mod 2^bits` (AutoGPTQ's v1 convention; readers add 1 back per field,
//!   modulo `2^bits`, as GPTQModel's `_correct_gptq_v1_qzeros` and AutoGPTQ's torch kernels do);
//! * `scales` F16 `[n_groups, out]`, `n_groups = ceil(in / group_size)`;
//! * `g_idx` I32 `[in]`: the group of every input column (`i / group_size` without act-order).
//!
//! A zero point of 0 (a group whose weights are all `>= 0`) is stored as the all-ones field. Where
//! the group leaves its top code unused, [`GptqPacked::pack`] first moves it to the equivalent
//! zero point 1 (every code + 1), so that the file also reads correctly through GPTQModel's
//! word-wide v1→v2 conversion (which adds `0x11111111` to each 32-bit word and would carry out of
//! an all-ones field into its neighbour). Only a group spanning both code 0 and the top code
//! with zero point 0 keeps the all-ones field (see docs/formats.md).
//!
//! AutoGPTQ sizes the packed tensors with `in / 32 * bits` and `out / 32 * bits`, so both
//! dimensions must be multiples of 32. `w[o][i] = (q - z) * s` with the group `g_idx[i]`.

use super::{
    check_groupq, f16_tensor, fetch, g_idx_is_trivial, le_f16s, le_i32s, matmul_decoded, mul, read_g_idx, scales_to_f16, shape_of,
};
use super::{stream_code, stream_word, HfQuantMeta, PackedLayout, TensorSource};
use crate::codes::{Grid, GroupQ};
use crate::st_write::OutTensor;
use anyhow::{bail, ensure, Result};
use half::f16;
use safetensors::tensor::Dtype;

/// The zero point a `bits`-wide qzeros field stands for: the field plus one, modulo `2^bits`.
#[inline]
pub fn zero_of_field(field: u32, bits: u32) -> u32 {
    (field + 1) & ((1u32 << bits) - 1)
}

#[derive(Clone, Debug, PartialEq)]
pub struct GptqPacked {
    pub out_features: usize,
    pub in_features: usize,
    pub bits: u8,
    pub group_size: usize,
    /// `[in*bits/32][out]`.
    pub qweight: Vec<i32>,
    /// `[n_groups][out*bits/32]`, zero points minus one.
    pub qzeros: Vec<i32>,
    /// `[n_groups][out]`.
    pub scales: Vec<f16>,
    /// `[in]`.
    pub g_idx: Vec<u32>,
}

impl GptqPacked {
    fn n_groups(&self) -> usize {
        self.in_features.div_ceil(self.group_size)
    }

    /// The `quantization_config` GPTQ readers expect (`desc_act`: act-order g_idx; `sym`:
    /// every zero point is `2^(bits-1)`).
    ///
    /// `modules` lists every decoder linear with its `(bits, group_size)`, `None` for one kept in
    /// float. Modules that differ from the base `bits` / `group_size` get an entry in GPTQModel's
    /// `dynamic` map (`"+:REGEX": {"bits", "group_size"}`), float ones a `"-:REGEX"` entry; each
    /// REGEX is the module's full name, anchored and escaped.
    pub fn quantization_config(
        bits: u8,
        group_size: usize,
        desc_act: bool,
        sym: bool,
        modules: &[(String, Option<(u8, usize)>)],
    ) -> serde_json::Value {
        let mut c = serde_json::json!({
            "quant_method": "gptq", "bits": bits, "group_size": group_size,
            "desc_act": desc_act, "sym": sym, "checkpoint_format": "gptq"
        });
        let mut dynamic = serde_json::Map::new();
        for (name, plan) in modules {
            let re = format!("^{}$", regex::escape(name));
            match plan {
                None => {
                    dynamic.insert(format!("-:{re}"), serde_json::json!({}));
                }
                Some((b, g)) if (*b, *g) != (bits, group_size) => {
                    dynamic.insert(format!("+:{re}"), serde_json::json!({ "bits": b, "group_size": g }));
                }
                Some(_) => {}
            }
        }
        if !dynamic.is_empty() {
            c["dynamic"] = dynamic.into();
        }
        c
    }

    /// Zero point of output channel `o` in group `g`.
    #[inline]
    fn zero(&self, g: usize, o: usize) -> u32 {
        let (zw, b) = (self.out_features * self.bits as usize / 32, self.bits as usize);
        zero_of_field(stream_code(|k| self.qzeros[g * zw + k] as u32, b, o), b as u32)
    }

    /// Number of (output channel, group) pairs whose zero point is stored as the all-ones field
    /// (zero point 0): the ones a word-wide v1→v2 conversion misreads.
    pub fn wrapped_zeros(&self) -> usize {
        let (o, ng) = (self.out_features, self.n_groups());
        (0..ng).map(|g| (0..o).filter(|&r| self.zero(g, r) == 0).count()).sum()
    }
}

impl PackedLayout for GptqPacked {
    type Meta = HfQuantMeta;

    fn pack(q: &GroupQ) -> Result<Self> {
        check_groupq(q)?;
        let (o, i, b, g) = (q.out_features, q.in_features, q.bits as usize, q.group_size);
        ensure!(matches!(b, 2 | 3 | 4 | 8), "GPTQ v1 layout holds 2, 3, 4 or 8-bit codes, got {b} bits");
        ensure!(q.grid == Grid::Affine, "GPTQ v1 layout holds the affine grid only, got {:?}", q.grid);
        ensure!(
            i % 32 == 0 && o % 32 == 0,
            "GPTQ v1 layout packs in 32-element runs: in_features ({i}) and out_features ({o}) must be multiples of 32"
        );
        let ng = i.div_ceil(g);
        ensure!(q.n_groups() == ng, "GPTQ v1 layout stores ceil(in/group_size) = {ng} groups, g_idx uses {}", q.n_groups());
        let maxq = (1u32 << b) - 1;
        if let Some(&z) = q.zeros.iter().find(|&&z| z as u32 > maxq) {
            bail!("GPTQ v1 layout stores {b}-bit zero points; got {z}");
        }
        // Zero point 0 with the top code unused: the same weights with every code and the zero
        // point one higher (no all-ones qzeros field, see the module docs).
        let mut codes = std::borrow::Cow::Borrowed(&q.codes);
        let mut zeros = std::borrow::Cow::Borrowed(&q.zeros);
        for r in 0..o {
            for gi in 0..ng {
                if q.zeros[r * ng + gi] != 0 {
                    continue;
                }
                let cols = (0..i).filter(|&c| q.group_of(c) == gi);
                if cols.clone().all(|c| (q.codes[r * i + c] as u32) < maxq) {
                    let cm = codes.to_mut();
                    cols.for_each(|c| cm[r * i + c] += 1);
                    zeros.to_mut()[r * ng + gi] = 1;
                }
            }
        }
        let (codes, zeros) = (codes.as_slice(), zeros.as_slice());
        let (iw, zw) = (i * b / 32, o * b / 32);
        let qweight = (0..iw * o).map(|k| stream_word(|c| codes[(k % o) * i + c] as u32, i, b, k / o) as i32).collect();
        let qzeros =
            (0..ng * zw).map(|k| stream_word(|r| (zeros[r * ng + k / zw] as u32).wrapping_sub(1) & maxq, o, b, k % zw) as i32).collect();
        let st: Vec<f32> = (0..ng * o).map(|k| q.scales[(k % o) * ng + k / o]).collect();
        let g_idx = (0..i).map(|c| q.group_of(c) as u32).collect();
        Ok(Self { out_features: o, in_features: i, bits: b as u8, group_size: g, qweight, qzeros, scales: scales_to_f16(&st)?, g_idx })
    }

    fn unpack(&self) -> Result<GroupQ> {
        let (o, i, b, ng) = (self.out_features, self.in_features, self.bits as usize, self.n_groups());
        let mut q = GroupQ::new(o, i, self.bits, self.group_size, Grid::Affine, ng);
        q.g_idx = Some(self.g_idx.clone());
        if g_idx_is_trivial(&q) {
            q.g_idx = None;
        }
        for r in 0..o {
            for c in 0..i {
                q.codes[r * i + c] = stream_code(|k| self.qweight[k * o + r] as u32, b, c) as u8;
            }
            for g in 0..ng {
                q.zeros[r * ng + g] = self.zero(g, r) as u8;
                q.scales[r * ng + g] = self.scales[g * o + r].to_f32();
            }
        }
        Ok(q)
    }

    fn to_tensors(&self, prefix: &str) -> Vec<OutTensor> {
        let (o, i, b, ng) = (self.out_features, self.in_features, self.bits as usize, self.n_groups());
        let g_idx: Vec<i32> = self.g_idx.iter().map(|&g| g as i32).collect();
        vec![
            OutTensor::i32(format!("{prefix}.qweight"), vec![i * b / 32, o], &self.qweight),
            OutTensor::i32(format!("{prefix}.qzeros"), vec![ng, o * b / 32], &self.qzeros),
            f16_tensor(format!("{prefix}.scales"), vec![ng, o], &self.scales),
            OutTensor::i32(format!("{prefix}.g_idx"), vec![i], &g_idx),
        ]
    }

    fn from_tensors(src: &dyn TensorSource, prefix: &str, meta: &HfQuantMeta) -> Result<Self> {
        let qw_name = format!("{prefix}.qweight");
        let b = meta.bits as usize;
        ensure!(matches!(b, 2 | 3 | 4 | 8), "{qw_name}: GPTQ v1 layout holds 2, 3, 4 or 8 bits, config says {b}");
        let sh = shape_of(src, &qw_name)?;
        let &[iw, o] = sh.as_slice() else { bail!("{qw_name}: shape {sh:?} is not 2-D") };
        ensure!(iw > 0 && o > 0, "{qw_name}: empty shape {sh:?}");
        let in_bits = mul(iw, 32, &qw_name)?;
        let (i, g) = (in_bits / b, meta.group_size_for(in_bits / b));
        ensure!(in_bits % b == 0 && i % 32 == 0 && o % 32 == 0, "{qw_name}: shape {sh:?} is not a {b}-bit GPTQ qweight");
        ensure!(g > 0, "{qw_name}: group_size 0");
        let ng = i.div_ceil(g);
        let qweight = le_i32s(fetch(src, &qw_name, Dtype::I32, &[iw, o])?);
        let qzeros = le_i32s(fetch(src, &format!("{prefix}.qzeros"), Dtype::I32, &[ng, mul(o, b, &qw_name)? / 32])?);
        let scales = le_f16s(fetch(src, &format!("{prefix}.scales"), Dtype::F16, &[ng, o])?);
        let gi_name = format!("{prefix}.g_idx");
        let g_idx = match src.raw(&gi_name) {
            Some(_) => read_g_idx(fetch(src, &gi_name, Dtype::I32, &[i])?, &gi_name, ng)?,
            None => (0..i).map(|c| (c / g) as u32).collect(),
        };
        ensure!(g_idx.iter().max().map_or(0, |&m| m as usize + 1) == ng, "{gi_name}: uses fewer than the {ng} stored groups");
        Ok(Self { out_features: o, in_features: i, bits: b as u8, group_size: g, qweight, qzeros, scales, g_idx })
    }

    fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (o, ng, b) = (self.out_features, self.n_groups(), self.bits as usize);
        matmul_decoded(x, rows, self.shape(), |r, w| {
            let sz: Vec<(f32, u32)> = (0..ng).map(|g| (self.scales[g * o + r].to_f32(), self.zero(g, r))).collect();
            for (c, wv) in w.iter_mut().enumerate() {
                let code = stream_code(|k| self.qweight[k * o + r] as u32, b, c);
                let (s, z) = sz[self.g_idx[c] as usize];
                *wv = (code as f32 - z as f32) * s;
            }
        })
    }

    fn storage_bits(&self) -> u64 {
        32 * (self.qweight.len() + self.qzeros.len() + self.g_idx.len()) as u64 + 16 * self.scales.len() as u64
    }

    fn shape(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }
}
