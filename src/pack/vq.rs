//! lowbit's VQ layout for vector-quantized weights ([`VqQ`], VPTQ). Full specification in
//! `docs/formats.md` ("VQ layout"); in short, with `nv = out / v` vectors per input column:
//!
//! * `vq_indices` U8 `[in, row_bytes(nv, b)]`: row `c` is the little-endian bit stream of the
//!   main-codebook indices of column `c`'s vectors (`b = max(1, ceil(log2 k))`, index `j` in
//!   stream bits `[j*b, j*b+b)`), rows padded with zero bits to a multiple of 32 bits;
//! * `centroids` F16 `[k, v]`;
//! * optional residual stage: `vq_res_indices` U8 `[in, row_bytes(nv, b_res)]`,
//!   `res_centroids` F16 `[k_res, v]`;
//! * optional normalisation: `col_scale`, `col_bias` F16 `[in]`;
//! * optional outliers: `outlier_cols` I32 `[n_out]`, `outlier_centroids` F16 `[k_out, v]`,
//!   `outlier_indices` U8 `[n_out, row_bytes(nv, b_out)]`.
//!
//! `W[j*v + t][c] = base[t]·col_scale[c] + col_bias[c]` with `base` the outlier centroid for an
//! outlier column, else `centroids[idx] + res_centroids[res_idx]`. Sizes and the presence of each
//! optional part live in config.json ([`VqModuleMeta`]).

use super::{f16_tensor, fetch, le_f16s, le_i32s, mul, scales_to_f16, stream_code, stream_word, TensorSource};
use crate::codes::{dequant_value, index_bits};
use crate::codes::{VqQ, VqSizes};
use crate::st_write::OutTensor;
use anyhow::{bail, ensure, Result};
use half::f16;
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

/// `quantization_config.modules[prefix]` of a VQ layer in config.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VqModuleMeta {
    /// Always `"vq"` (distinguishes VQ entries from group-quantized ones).
    pub layout: String,
    /// The quantizer that produced it ("vptq").
    pub method: String,
    pub in_features: usize,
    pub out_features: usize,
    pub vector_len: usize,
    pub n_centroids: usize,
    /// 0 = no residual stage.
    #[serde(default)]
    pub n_res_centroids: usize,
    /// 0 = no outlier columns.
    #[serde(default)]
    pub n_outlier_centroids: usize,
    #[serde(default)]
    pub n_outlier_cols: usize,
    /// `col_scale` and `col_bias` are present.
    #[serde(default)]
    pub col_norm: bool,
}

/// Bytes of one packed index row: `n` indices of `bits` bits, rounded up to whole 32-bit words.
pub fn row_bytes(n: usize, bits: usize) -> usize {
    super::stream_row_bytes(n, bits)
}

impl VqQ {
    /// Exact bits stored by the VQ layout: index rows (padding included), f16 codebooks, f16
    /// column scale/bias, 32-bit outlier column ids.
    pub fn storage_bits(&self) -> u64 {
        let (i, v, nv) = (self.in_features as u64, self.vector_len as u64, self.vectors_per_col());
        let rb = |k: usize| 8 * row_bytes(nv, index_bits(k)) as u64;
        let mut bits = i * rb(self.n_centroids) + 16 * self.n_centroids as u64 * v;
        if self.res_centroids.is_some() {
            bits += i * rb(self.n_res_centroids) + 16 * self.n_res_centroids as u64 * v;
        }
        bits += 16 * i * (self.col_scale.is_some() as u64 + self.col_bias.is_some() as u64);
        if self.outlier_centroids.is_some() {
            let n = self.outlier_cols.len() as u64;
            bits += 32 * n + n * rb(self.n_outlier_centroids) + 16 * self.n_outlier_centroids as u64 * v;
        }
        bits
    }
}

/// The tensors the VQ layout stores for an `out × inn` linear quantized with `cfg` (suffix,
/// dtype, shape: the same as [`VqPacked::to_tensors`] writes), known before quantizing.
pub fn tensor_specs(cfg: &dyn VqSizes, out: usize, inn: usize) -> Vec<super::TensorSpec> {
    let cfg = cfg.vq_shape(out, inn);
    let v = cfg.vector_len.max(1);
    let nv = out / v;
    let idx = |k: usize| row_bytes(nv, index_bits(k));
    let mut t = vec![("vq_indices", Dtype::U8, vec![inn, idx(cfg.centroids)]), ("centroids", Dtype::F16, vec![cfg.centroids, v])];
    if cfg.res_centroids > 0 {
        t.push(("vq_res_indices", Dtype::U8, vec![inn, idx(cfg.res_centroids)]));
        t.push(("res_centroids", Dtype::F16, vec![cfg.res_centroids, v]));
    }
    if cfg.normalize {
        t.push(("col_scale", Dtype::F16, vec![inn]));
        t.push(("col_bias", Dtype::F16, vec![inn]));
    }
    let (n_out, k_out) = (cfg.n_outlier_cols, cfg.outlier_centroids);
    if n_out > 0 && k_out > 0 {
        t.push(("outlier_cols", Dtype::I32, vec![n_out]));
        t.push(("outlier_indices", Dtype::U8, vec![n_out, idx(k_out)]));
        t.push(("outlier_centroids", Dtype::F16, vec![k_out, v]));
    }
    t
}

/// Packed index rows of one codebook: `rows × row_bytes(nv, bits)` bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedIndices {
    pub bits: usize,
    pub row_bytes: usize,
    pub data: Vec<u8>,
}

impl PackedIndices {
    fn pack(idx: &[u32], rows: usize, nv: usize, k: usize) -> Self {
        let bits = index_bits(k);
        let rb = row_bytes(nv, bits);
        let mut data = vec![0u8; rows * rb];
        if rb > 0 {
            data.par_chunks_mut(rb).enumerate().for_each(|(r, row)| {
                let ix = &idx[r * nv..(r + 1) * nv];
                for (w, out) in row.chunks_exact_mut(4).enumerate() {
                    out.copy_from_slice(&stream_word(|c| ix[c], nv, bits, w).to_le_bytes());
                }
            });
        }
        Self { bits, row_bytes: rb, data }
    }

    /// Index `j` of row `r`.
    #[inline]
    pub fn get(&self, r: usize, j: usize) -> u32 {
        let row = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
        stream_code(|w| u32::from_le_bytes([row[4 * w], row[4 * w + 1], row[4 * w + 2], row[4 * w + 3]]), self.bits, j)
    }

    fn unpack(&self, rows: usize, nv: usize) -> Vec<u32> {
        (0..rows * nv).map(|x| self.get(x / nv, x % nv)).collect()
    }

    /// Checks every index of `rows × nv` is below `k`.
    fn check(&self, rows: usize, nv: usize, k: usize, name: &str) -> Result<()> {
        for r in 0..rows {
            for j in 0..nv {
                let x = self.get(r, j);
                ensure!((x as usize) < k, "{name}: index {x} at row {r}, vector {j} outside 0..{k}");
            }
        }
        Ok(())
    }
}

/// A [`VqQ`] in the lowbit VQ layout.
#[derive(Clone, Debug, PartialEq)]
pub struct VqPacked {
    pub out_features: usize,
    pub in_features: usize,
    pub vector_len: usize,
    pub n_centroids: usize,
    pub indices: PackedIndices,
    /// `[k][v]`.
    pub centroids: Vec<f16>,
    pub n_res_centroids: usize,
    pub res_indices: Option<PackedIndices>,
    pub res_centroids: Option<Vec<f16>>,
    /// `[in]` each.
    pub col_scale: Option<Vec<f16>>,
    pub col_bias: Option<Vec<f16>>,
    pub outlier_cols: Vec<u32>,
    pub n_outlier_centroids: usize,
    pub outlier_indices: Option<PackedIndices>,
    pub outlier_centroids: Option<Vec<f16>>,
}

impl VqPacked {
    /// Packs a [`VqQ`]; codebooks and column scale/bias are stored as f16 (exact when the
    /// quantizer rounded them to f16, as VPTQ does). Refuses inconsistent tensors, values f16
    /// cannot hold and a scale without a bias (or the reverse).
    pub fn pack(q: &VqQ) -> Result<Self> {
        q.validate()?;
        ensure!(q.col_scale.is_some() == q.col_bias.is_some(), "VQ layout stores col_scale and col_bias together; got only one of them");
        let (i, nv) = (q.in_features, q.vectors_per_col());
        let n_out = q.outlier_cols.len();
        let f16s = |x: &[f32]| scales_to_f16(x);
        Ok(Self {
            out_features: q.out_features,
            in_features: i,
            vector_len: q.vector_len,
            n_centroids: q.n_centroids,
            indices: PackedIndices::pack(&q.indices, i, nv, q.n_centroids),
            centroids: f16s(&q.centroids)?,
            n_res_centroids: q.n_res_centroids,
            res_indices: q.res_indices.as_ref().map(|r| PackedIndices::pack(r, i, nv, q.n_res_centroids)),
            res_centroids: q.res_centroids.as_deref().map(f16s).transpose()?,
            col_scale: q.col_scale.as_deref().map(f16s).transpose()?,
            col_bias: q.col_bias.as_deref().map(f16s).transpose()?,
            outlier_cols: q.outlier_cols.clone(),
            n_outlier_centroids: q.n_outlier_centroids,
            outlier_indices: q.outlier_indices.as_ref().map(|r| PackedIndices::pack(r, n_out, nv, q.n_outlier_centroids)),
            outlier_centroids: q.outlier_centroids.as_deref().map(f16s).transpose()?,
        })
    }

    pub fn unpack(&self) -> Result<VqQ> {
        let (i, nv) = (self.in_features, self.out_features / self.vector_len);
        let f32s = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
        let q = VqQ {
            out_features: self.out_features,
            in_features: i,
            vector_len: self.vector_len,
            centroids: f32s(&self.centroids),
            n_centroids: self.n_centroids,
            indices: self.indices.unpack(i, nv),
            res_centroids: self.res_centroids.as_deref().map(f32s),
            n_res_centroids: self.n_res_centroids,
            res_indices: self.res_indices.as_ref().map(|r| r.unpack(i, nv)),
            col_scale: self.col_scale.as_deref().map(f32s),
            col_bias: self.col_bias.as_deref().map(f32s),
            outlier_cols: self.outlier_cols.clone(),
            outlier_centroids: self.outlier_centroids.as_deref().map(f32s),
            n_outlier_centroids: self.n_outlier_centroids,
            outlier_indices: self.outlier_indices.as_ref().map(|r| r.unpack(self.outlier_cols.len(), nv)),
        };
        q.validate()?;
        Ok(q)
    }

    /// This tensor's entry in `quantization_config.modules`.
    pub fn meta(&self, method: &str) -> VqModuleMeta {
        VqModuleMeta {
            layout: "vq".into(),
            method: method.into(),
            in_features: self.in_features,
            out_features: self.out_features,
            vector_len: self.vector_len,
            n_centroids: self.n_centroids,
            n_res_centroids: if self.res_indices.is_some() { self.n_res_centroids } else { 0 },
            n_outlier_centroids: if self.outlier_indices.is_some() { self.n_outlier_centroids } else { 0 },
            n_outlier_cols: self.outlier_cols.len(),
            col_norm: self.col_scale.is_some(),
        }
    }

    pub fn to_tensors(&self, prefix: &str) -> Vec<OutTensor> {
        let (i, v) = (self.in_features, self.vector_len);
        let idx =
            |name: &str, p: &PackedIndices, rows: usize| OutTensor::u8(format!("{prefix}.{name}"), vec![rows, p.row_bytes], p.data.clone());
        let book = |name: &str, c: &[f16]| f16_tensor(format!("{prefix}.{name}"), vec![c.len() / v, v], c);
        let mut t = vec![idx("vq_indices", &self.indices, i), book("centroids", &self.centroids)];
        if let (Some(p), Some(c)) = (&self.res_indices, &self.res_centroids) {
            t.push(idx("vq_res_indices", p, i));
            t.push(book("res_centroids", c));
        }
        if let (Some(s), Some(b)) = (&self.col_scale, &self.col_bias) {
            t.push(f16_tensor(format!("{prefix}.col_scale"), vec![i], s));
            t.push(f16_tensor(format!("{prefix}.col_bias"), vec![i], b));
        }
        if let (Some(p), Some(c)) = (&self.outlier_indices, &self.outlier_centroids) {
            let cols: Vec<i32> = self.outlier_cols.iter().map(|&c| c as i32).collect();
            t.push(OutTensor::i32(format!("{prefix}.outlier_cols"), vec![cols.len()], &cols));
            t.push(idx("outlier_indices", p, cols.len()));
            t.push(book("outlier_centroids", c));
        }
        t
    }

    /// Reads the tensors of one layer, checking dtypes, shapes and index ranges against `meta`.
    pub fn from_tensors(src: &dyn TensorSource, prefix: &str, meta: &VqModuleMeta) -> Result<Self> {
        ensure!(meta.layout == "vq", "{prefix}: layout {:?} is not \"vq\"", meta.layout);
        let (o, i, v, k) = (meta.out_features, meta.in_features, meta.vector_len, meta.n_centroids);
        ensure!(v > 0 && o.is_multiple_of(v), "{prefix}: vector_len {v} does not divide out_features {o}");
        ensure!(k > 0, "{prefix}: n_centroids is 0");
        ensure!(o > 0 && i > 0, "{prefix}: empty {o}x{i} weight in config");
        let nv = o / v;
        let name = |n: &str| format!("{prefix}.{n}");
        let read_idx = |n: &str, rows: usize, k: usize| -> Result<PackedIndices> {
            let bits = index_bits(k);
            // row_bytes(nv, bits) without overflow: ceil(nv*bits/32) words of 4 bytes.
            let rb = mul(nv, bits, &name(n))?.div_ceil(32) * 4;
            let data = fetch(src, &name(n), Dtype::U8, &[rows, rb])?.to_vec();
            let p = PackedIndices { bits, row_bytes: rb, data };
            p.check(rows, nv, k, &name(n))?;
            Ok(p)
        };
        let read_book = |n: &str, k: usize| -> Result<Vec<f16>> {
            let c = le_f16s(fetch(src, &name(n), Dtype::F16, &[k, v])?);
            if let Some(x) = c.iter().find(|x| !x.is_finite()) {
                bail!("{}: centroid value {x} is not finite", name(n));
            }
            Ok(c)
        };
        let indices = read_idx("vq_indices", i, k)?;
        let centroids = read_book("centroids", k)?;
        let (res_indices, res_centroids) = match meta.n_res_centroids {
            0 => (None, None),
            kr => (Some(read_idx("vq_res_indices", i, kr)?), Some(read_book("res_centroids", kr)?)),
        };
        let (col_scale, col_bias) = if meta.col_norm {
            (
                Some(le_f16s(fetch(src, &name("col_scale"), Dtype::F16, &[i])?)),
                Some(le_f16s(fetch(src, &name("col_bias"), Dtype::F16, &[i])?)),
            )
        } else {
            (None, None)
        };
        let n_out = meta.n_outlier_cols;
        let (outlier_cols, outlier_indices, outlier_centroids) = match (meta.n_outlier_centroids, n_out) {
            (0, 0) => (Vec::new(), None, None),
            (0, _) | (_, 0) => bail!(
                "{prefix}: n_outlier_cols {n_out} and n_outlier_centroids {} must be both zero or both positive",
                meta.n_outlier_centroids
            ),
            (ko, _) => {
                let cols = le_i32s(fetch(src, &name("outlier_cols"), Dtype::I32, &[n_out])?);
                ensure!(
                    cols.windows(2).all(|p| p[0] < p[1]) && cols.iter().all(|&c| c >= 0 && (c as usize) < i),
                    "{}: column ids must be strictly increasing within 0..{i}",
                    name("outlier_cols")
                );
                let cols = cols.into_iter().map(|c| c as u32).collect();
                (cols, Some(read_idx("outlier_indices", n_out, ko)?), Some(read_book("outlier_centroids", ko)?))
            }
        };
        Ok(Self {
            out_features: o,
            in_features: i,
            vector_len: v,
            n_centroids: k,
            indices,
            centroids,
            n_res_centroids: meta.n_res_centroids,
            res_indices,
            res_centroids,
            col_scale,
            col_bias,
            outlier_cols,
            n_outlier_centroids: meta.n_outlier_centroids,
            outlier_indices,
            outlier_centroids,
        })
    }

    /// `y[rows][out] = x[rows][in] · Wᵀ`, decoding each vector from the packed indices:
    /// parallel over output vectors, each producing `v` output channels.
    pub fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (o, i, v) = (self.out_features, self.in_features, self.vector_len);
        assert_eq!(x.len(), rows * i, "dequant_matmul: x has {} values, expected {rows}x{i}", x.len());
        if rows == 0 || o == 0 {
            return vec![0.0; rows * o];
        }
        let f32s = |c: &[f16]| c.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
        let main = f32s(&self.centroids);
        let res = self.res_centroids.as_deref().map(f32s);
        let outl = self.outlier_centroids.as_deref().map(f32s);
        let scale = self.col_scale.as_deref().map(f32s);
        let bias = self.col_bias.as_deref().map(f32s);
        let mut opos = vec![u32::MAX; i];
        for (p, &c) in self.outlier_cols.iter().enumerate() {
            opos[c as usize] = p as u32;
        }
        let mut yt = vec![0f32; o * rows];
        yt.par_chunks_mut(v * rows).enumerate().for_each_init(
            || (vec![0f32; v * i], vec![0f32; v]),
            |(wv, base), (j, yj)| {
                // wv[t][c] = W[j*v + t][c]
                for c in 0..i {
                    if opos[c] != u32::MAX {
                        let (oc, oi) = (outl.as_ref().expect("outlier codebook"), self.outlier_indices.as_ref());
                        let m = oi.expect("outlier indices").get(opos[c] as usize, j) as usize;
                        base.copy_from_slice(&oc[m * v..(m + 1) * v]);
                    } else {
                        let m = self.indices.get(c, j) as usize;
                        base.copy_from_slice(&main[m * v..(m + 1) * v]);
                        if let (Some(rc), Some(ri)) = (&res, &self.res_indices) {
                            let r = ri.get(c, j) as usize;
                            base.iter_mut().zip(&rc[r * v..(r + 1) * v]).for_each(|(a, b)| *a += b);
                        }
                    }
                    let (s, b) = (scale.as_ref().map_or(1.0, |s| s[c]), bias.as_ref().map_or(0.0, |b| b[c]));
                    for (t, &bv) in base.iter().enumerate() {
                        wv[t * i + c] = dequant_value(bv, s, b, scale.is_some(), bias.is_some());
                    }
                }
                for (t, yrow) in yj.chunks_exact_mut(rows).enumerate() {
                    let wrow = &wv[t * i..(t + 1) * i];
                    for (r, y) in yrow.iter_mut().enumerate() {
                        *y = x[r * i..(r + 1) * i].iter().zip(wrow).map(|(a, b)| a * b).sum();
                    }
                }
            },
        );
        let mut y = vec![0f32; rows * o];
        for (oo, col) in yt.chunks_exact(rows).enumerate() {
            for (r, &val) in col.iter().enumerate() {
                y[r * o + oo] = val;
            }
        }
        y
    }

    /// Exact bits stored, from the packed buffers (equals [`VqQ::storage_bits`]).
    pub fn storage_bits(&self) -> u64 {
        let b = |p: &Option<PackedIndices>| p.as_ref().map_or(0, |p| 8 * p.data.len() as u64);
        let h = |c: &Option<Vec<f16>>| c.as_ref().map_or(0, |c| 16 * c.len() as u64);
        8 * self.indices.data.len() as u64
            + 16 * self.centroids.len() as u64
            + b(&self.res_indices)
            + h(&self.res_centroids)
            + h(&self.col_scale)
            + h(&self.col_bias)
            + b(&self.outlier_indices)
            + h(&self.outlier_centroids)
            + if self.outlier_indices.is_some() { 32 * self.outlier_cols.len() as u64 } else { 0 }
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }
}
