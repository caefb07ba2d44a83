//! lowbit's own layout: any width 2..=8, any `in_features` (short last group), all three grids,
//! optional g_idx. Full specification in `docs/formats.md`; in short:
//!
//! * `qweight` U8 `[out, row_bytes]`: row `o` is the little-endian bit stream of `q[o][0..in]`
//!   (code `c` in stream bits `[c*b, c*b+b)`, stream bit `k` = bit `k % 8` of byte `k / 8`),
//!   `row_bytes = ceil(in*b/8)` rounded up to a multiple of 4, padding bits zero;
//! * `scales` F16 `[out, n_groups]`;
//! * `qzeros` U8 `[out, n_groups]`, affine grid only;
//! * `g_idx` I32 `[in]`, only when the input columns are regrouped.
//!
//! Bits, group size, grid and shape live in config.json ([`LowbitModuleMeta`]).

use super::{check_groupq, f16_tensor, fetch, le_f16s, matmul_decoded, mul, read_g_idx, scales_to_f16};
use super::{stream_code, stream_word, PackedLayout, TensorSource};
use crate::codes::{grid_value, Grid, GroupQ};
use crate::st_write::OutTensor;
use anyhow::{bail, ensure, Result};
use half::f16;
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `quantization_config.modules[prefix]` in config.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowbitModuleMeta {
    pub bits: u8,
    pub group_size: usize,
    #[serde(with = "grid_name")]
    pub grid: Grid,
    /// The quantization method that produced the codes ("rtn", "gptq", "awq", "statsq", ...).
    pub method: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// `quantization_config` of a lowbit checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowbitQuantConfig {
    /// Always `"lowbit"`.
    pub quant_method: String,
    pub format_version: u32,
    /// Keyed by tensor prefix, e.g. `model.layers.0.self_attn.q_proj`.
    pub modules: BTreeMap<String, LowbitModuleMeta>,
    /// Vector-quantized modules (docs/formats.md, "VQ layout").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vq_modules: BTreeMap<String, crate::pack::vq::VqModuleMeta>,
}

impl Default for LowbitQuantConfig {
    fn default() -> Self {
        Self { quant_method: "lowbit".into(), format_version: 1, modules: BTreeMap::new(), vq_modules: BTreeMap::new() }
    }
}

/// Grid names in config.json: "affine", "halfint", "shift".
pub mod grid_name {
    use crate::codes::Grid;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn name(g: Grid) -> &'static str {
        g.name()
    }
    pub fn parse(s: &str) -> Option<Grid> {
        [Grid::Affine, Grid::HalfInt, Grid::Shift].into_iter().find(|&g| name(g) == s)
    }
    pub fn serialize<S: Serializer>(g: &Grid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*g))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Grid, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| D::Error::custom(format!("unknown grid {s:?} (expected affine, halfint or shift)")))
    }
}

/// Bytes per packed row: `ceil(in*bits/8)` rounded up to a multiple of 4.
pub fn row_bytes(in_features: usize, bits: u8) -> usize {
    super::stream_row_bytes(in_features, bits as usize)
}

#[derive(Clone, Debug, PartialEq)]
pub struct LowbitPacked {
    pub out_features: usize,
    pub in_features: usize,
    pub bits: u8,
    pub group_size: usize,
    pub grid: Grid,
    pub n_groups: usize,
    /// `[out][row_bytes]`.
    pub qweight: Vec<u8>,
    /// `[out][n_groups]`.
    pub scales: Vec<f16>,
    /// `[out][n_groups]`, affine grid only.
    pub qzeros: Option<Vec<u8>>,
    /// `[in]`.
    pub g_idx: Option<Vec<u32>>,
}

impl LowbitPacked {
    /// This tensor's entry in `quantization_config.modules`.
    pub fn meta(&self, method: &str) -> LowbitModuleMeta {
        LowbitModuleMeta {
            bits: self.bits,
            group_size: self.group_size,
            grid: self.grid,
            method: method.into(),
            in_features: self.in_features,
            out_features: self.out_features,
        }
    }

    fn row_bytes(&self) -> usize {
        row_bytes(self.in_features, self.bits)
    }

    #[inline]
    fn code(&self, row: &[u8], c: usize) -> u8 {
        stream_code(|k| u32::from_le_bytes([row[4 * k], row[4 * k + 1], row[4 * k + 2], row[4 * k + 3]]), self.bits as usize, c) as u8
    }

    fn group_of(&self, c: usize) -> usize {
        self.g_idx.as_ref().map_or(c / self.group_size, |g| g[c] as usize)
    }
}

impl PackedLayout for LowbitPacked {
    type Meta = LowbitModuleMeta;

    /// Zero points are kept for the affine grid only (they mean nothing on the others).
    fn pack(q: &GroupQ) -> Result<Self> {
        check_groupq(q)?;
        let (o, i, b) = (q.out_features, q.in_features, q.bits);
        ensure!((2..=8).contains(&b), "lowbit layout holds 2..=8-bit codes, got {b} bits");
        let rb = row_bytes(i, b);
        let mut qweight = vec![0u8; o * rb];
        if rb > 0 {
            qweight.par_chunks_mut(rb).enumerate().for_each(|(r, row)| {
                let codes = &q.codes[r * i..(r + 1) * i];
                for (k, w) in row.chunks_exact_mut(4).enumerate() {
                    w.copy_from_slice(&stream_word(|c| codes[c] as u32, i, b as usize, k).to_le_bytes());
                }
            });
        }
        Ok(Self {
            out_features: o,
            in_features: i,
            bits: b,
            group_size: q.group_size,
            grid: q.grid,
            n_groups: q.n_groups(),
            qweight,
            scales: scales_to_f16(&q.scales)?,
            qzeros: (q.grid == Grid::Affine).then(|| q.zeros.clone()),
            g_idx: q.g_idx.clone(),
        })
    }

    fn unpack(&self) -> Result<GroupQ> {
        let (o, i, rb, ng) = (self.out_features, self.in_features, self.row_bytes(), self.n_groups);
        let codes = (0..o * i).map(|k| self.code(&self.qweight[k / i * rb..], k % i)).collect();
        let mut q = GroupQ::new(o, i, self.bits, self.group_size, self.grid, ng);
        q.codes = codes;
        q.scales = self.scales.iter().map(|s| s.to_f32()).collect();
        if let Some(z) = &self.qzeros {
            q.zeros.clone_from(z);
        }
        q.g_idx.clone_from(&self.g_idx);
        Ok(q)
    }

    fn to_tensors(&self, prefix: &str) -> Vec<OutTensor> {
        let (o, ng) = (self.out_features, self.n_groups);
        let mut t = vec![
            OutTensor::u8(format!("{prefix}.qweight"), vec![o, self.row_bytes()], self.qweight.clone()),
            f16_tensor(format!("{prefix}.scales"), vec![o, ng], &self.scales),
        ];
        if let Some(z) = &self.qzeros {
            t.push(OutTensor::u8(format!("{prefix}.qzeros"), vec![o, ng], z.clone()));
        }
        if let Some(g) = &self.g_idx {
            let g: Vec<i32> = g.iter().map(|&x| x as i32).collect();
            t.push(OutTensor::i32(format!("{prefix}.g_idx"), vec![self.in_features], &g));
        }
        t
    }

    fn from_tensors(src: &dyn TensorSource, prefix: &str, meta: &LowbitModuleMeta) -> Result<Self> {
        let (o, i, b, gs) = (meta.out_features, meta.in_features, meta.bits, meta.group_size);
        ensure!((2..=8).contains(&b), "{prefix}: lowbit layout holds 2..=8 bits, config says {b}");
        ensure!(gs > 0, "{prefix}: group_size 0 in config");
        ensure!(o > 0 && i > 0, "{prefix}: empty {o}x{i} weight in config");
        // row_bytes(i, b) without overflow: ceil(i*b/32) words of 4 bytes.
        let rb = mul(i, b as usize, prefix)?.div_ceil(32) * 4;
        let gi_name = format!("{prefix}.g_idx");
        let sc_name = format!("{prefix}.scales");
        let (g_idx, ng) = match src.raw(&gi_name) {
            None => (None, i.div_ceil(gs)),
            Some(_) => {
                let Some(sc) = src.raw(&sc_name) else { bail!("{sc_name}: tensor missing") };
                let &[_, ng] = sc.shape.as_slice() else { bail!("{sc_name}: shape {:?} is not 2-D", sc.shape) };
                let g = read_g_idx(fetch(src, &gi_name, Dtype::I32, &[i])?, &gi_name, ng)?;
                ensure!(g.iter().max().map_or(0, |&m| m as usize + 1) == ng, "{gi_name}: uses fewer groups than {sc_name} holds ({ng})");
                (Some(g), ng)
            }
        };
        let qweight = fetch(src, &format!("{prefix}.qweight"), Dtype::U8, &[o, rb])?.to_vec();
        let scales = le_f16s(fetch(src, &sc_name, Dtype::F16, &[o, ng])?);
        let qzeros = match meta.grid {
            Grid::Affine => Some(fetch(src, &format!("{prefix}.qzeros"), Dtype::U8, &[o, ng])?.to_vec()),
            _ => None,
        };
        Ok(Self { out_features: o, in_features: i, bits: b, group_size: gs, grid: meta.grid, n_groups: ng, qweight, scales, qzeros, g_idx })
    }

    fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (rb, ng) = (self.row_bytes(), self.n_groups);
        matmul_decoded(x, rows, self.shape(), |r, w| {
            let row = &self.qweight[r * rb..(r + 1) * rb];
            let s = &self.scales[r * ng..(r + 1) * ng];
            let z = self.qzeros.as_ref().map(|z| &z[r * ng..(r + 1) * ng]);
            for (c, wv) in w.iter_mut().enumerate() {
                let g = self.group_of(c);
                *wv = grid_value(self.grid, self.bits, self.code(row, c), s[g].to_f32(), z.map_or(0, |z| z[g]));
            }
        })
    }

    fn storage_bits(&self) -> u64 {
        let per_group = 16 + if self.qzeros.is_some() { 8 } else { 0 };
        let g_idx = self.g_idx.as_ref().map_or(0, |g| 32 * g.len() as u64);
        8 * self.qweight.len() as u64 + (per_group * self.out_features * self.n_groups) as u64 + g_idx
    }

    fn shape(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }
}
