//! Packed on-disk layouts for group-quantized linear weights ([`GroupQ`]), one file per layout:
//!
//! * [`awq`]: AutoAWQ's GEMM layout (4-bit, codes interleaved along `out`);
//! * [`gptq`]: the AutoGPTQ / GPTQModel v1 `gptq` layout (2/3/4/8-bit, codes packed along `in`);
//! * [`lowbit`]: our own layout (any width 2..=8, any grid, short last group), see
//!   `docs/formats.md`.
//!
//! Every layout packs and unpacks exactly (scales are stored as f16, so they round-trip exactly
//! when the quantizer already rounded them to f16), writes and reads its safetensors tensors,
//! reports its exact storage size and multiplies by activations straight from the packed words.
//!
//! The shared bit stream ([`stream_word`], [`stream_code`]) is the one GPTQ uses along `in` and
//! lowbit uses along each row: code `i` of width `b` occupies stream bits `[i*b, i*b+b)`, and
//! stream bit `k` is bit `k % 32` of 32-bit word `k / 32` (equivalently bit `k % 8` of byte `k / 8`
//! when the words are stored little-endian).

pub mod awq;
pub mod gguf;
pub mod gptq;
pub mod lowbit;
pub mod vq;

pub use awq::AwqPacked;
pub use gptq::GptqPacked;
pub use lowbit::{LowbitModuleMeta, LowbitPacked, LowbitQuantConfig};

use crate::quant::GroupQ;
use crate::st_write::OutTensor;
use anyhow::{bail, ensure, Result};
use half::f16;
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use std::collections::HashMap;

/// A tensor as read from a safetensors file: dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Anything tensors can be looked up in by name.
pub trait TensorSource {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>>;
}

impl TensorSource for safetensors::SafeTensors<'_> {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let v = self.tensor(name).ok()?;
        Some(RawTensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data() })
    }
}

impl TensorSource for HashMap<String, RawTensor<'_>> {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        self.get(name).cloned()
    }
}

impl TensorSource for Vec<OutTensor> {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let t = self.iter().find(|t| t.name == name)?;
        Some(RawTensor { dtype: t.dtype, shape: t.shape.clone(), data: &t.data })
    }
}

/// What a layout needs besides a [`GroupQ`]: pack, unpack, tensors in and out, matmul, size.
pub trait PackedLayout: Sized {
    /// Per-tensor facts that live in config.json rather than in the tensors.
    type Meta;
    fn pack(q: &GroupQ) -> Result<Self>;
    fn unpack(&self) -> Result<GroupQ>;
    fn to_tensors(&self, prefix: &str) -> Vec<OutTensor>;
    fn from_tensors(src: &dyn TensorSource, prefix: &str, meta: &Self::Meta) -> Result<Self>;
    /// `y[rows][out] = x[rows][in] · Wᵀ`, decoding the codes from the packed words.
    fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32>;
    /// Exact number of bits stored for this tensor (qweight + scales + zeros + g_idx).
    fn storage_bits(&self) -> u64;
    /// `(out_features, in_features)`.
    fn shape(&self) -> (usize, usize);
}

/// The `bits` / `group_size` fields of an HF `quantization_config` (AWQ, GPTQ);
/// `group_size <= 0` (HF writes -1) means one group per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HfQuantMeta {
    pub bits: u8,
    pub group_size: i64,
}

impl HfQuantMeta {
    pub fn group_size_for(&self, in_features: usize) -> usize {
        if self.group_size <= 0 {
            in_features
        } else {
            self.group_size as usize
        }
    }
}

/// Which layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Awq,
    Gptq,
    Lowbit,
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "awq" => Layout::Awq,
            "gptq" => Layout::Gptq,
            "lowbit" => Layout::Lowbit,
            _ => bail!("unknown packed layout {s:?} (expected awq, gptq or lowbit)"),
        })
    }
}

/// A packed tensor in any layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Packed {
    Awq(AwqPacked),
    Gptq(GptqPacked),
    Lowbit(LowbitPacked),
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Packed::Awq($p) => $e,
            Packed::Gptq($p) => $e,
            Packed::Lowbit($p) => $e,
        }
    };
}

impl Packed {
    pub fn pack(layout: Layout, q: &GroupQ) -> Result<Self> {
        Ok(match layout {
            Layout::Awq => Packed::Awq(AwqPacked::pack(q)?),
            Layout::Gptq => Packed::Gptq(GptqPacked::pack(q)?),
            Layout::Lowbit => Packed::Lowbit(LowbitPacked::pack(q)?),
        })
    }
    pub fn unpack(&self) -> Result<GroupQ> {
        each!(self, p => p.unpack())
    }
    pub fn to_tensors(&self, prefix: &str) -> Vec<OutTensor> {
        each!(self, p => p.to_tensors(prefix))
    }
    pub fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        each!(self, p => p.dequant_matmul(x, rows))
    }
    pub fn storage_bits(&self) -> u64 {
        each!(self, p => p.storage_bits())
    }
    pub fn shape(&self) -> (usize, usize) {
        each!(self, p => p.shape())
    }
}

/// Average stored bits per weight of an `out × in` tensor.
pub fn bits_per_weight(storage_bits: u64, out_features: usize, in_features: usize) -> f64 {
    storage_bits as f64 / (out_features * in_features) as f64
}

// ---------------------------------------------------------------------------------------------
// Bit stream

/// Word `k` of the little-endian stream of `n` codes of width `bits` (`code(i)` gives code `i`,
/// already `< 2^bits`); bits past the last code are zero.
#[inline]
pub fn stream_word(code: impl Fn(usize) -> u32, n: usize, bits: usize, k: usize) -> u32 {
    let (lo, hi) = (32 * k, 32 * k + 32);
    let mut w = 0u32;
    for i in lo / bits..hi.div_ceil(bits).min(n) {
        let pos = (i * bits) as isize - lo as isize;
        w |= if pos >= 0 { code(i) << pos } else { code(i) >> -pos };
    }
    w
}

/// Code `i` of width `bits` from the stream whose 32-bit words are `word(k)`.
#[inline]
pub fn stream_code(word: impl Fn(usize) -> u32, bits: usize, i: usize) -> u32 {
    let bit = i * bits;
    let (k, sh) = (bit / 32, bit % 32);
    let mut v = (word(k) as u64) >> sh;
    if sh + bits > 32 {
        v |= (word(k + 1) as u64) << (32 - sh);
    }
    (v & ((1u64 << bits) - 1)) as u32
}

// ---------------------------------------------------------------------------------------------
// Shared helpers for the layouts

/// Checks that a [`GroupQ`] is self-consistent (lengths, code range, g_idx).
pub(crate) fn check_groupq(q: &GroupQ) -> Result<()> {
    let (o, i) = (q.out_features, q.in_features);
    ensure!((1..=8).contains(&q.bits), "bits {} outside 1..=8", q.bits);
    ensure!(q.group_size > 0, "group_size is 0");
    ensure!(q.codes.len() == o * i, "codes: {} values for a {o}x{i} weight", q.codes.len());
    if let Some(g) = &q.g_idx {
        ensure!(g.len() == i, "g_idx: {} entries for {i} input columns", g.len());
    }
    let ng = q.n_groups();
    ensure!(q.scales.len() == o * ng, "scales: {} values, expected {o}x{ng}", q.scales.len());
    ensure!(q.zeros.len() == o * ng, "zeros: {} values, expected {o}x{ng}", q.zeros.len());
    let max = ((1u16 << q.bits) - 1) as u8;
    if let Some(c) = q.codes.iter().find(|&&c| c > max) {
        bail!("code {c} does not fit in {} bits", q.bits);
    }
    Ok(())
}

/// True when `g_idx` is absent or equal to the default `i / group_size`.
pub(crate) fn g_idx_is_trivial(q: &GroupQ) -> bool {
    q.g_idx.as_ref().is_none_or(|g| g.iter().enumerate().all(|(i, &x)| x as usize == i / q.group_size))
}

/// f32 scales rounded to f16, refusing values f16 cannot hold.
pub(crate) fn scales_to_f16(s: &[f32]) -> Result<Vec<f16>> {
    s.iter()
        .map(|&x| {
            let h = f16::from_f32(x);
            ensure!(h.is_finite(), "scale {x} is not representable in f16");
            Ok(h)
        })
        .collect()
}

pub(crate) fn f16_tensor(name: String, shape: Vec<usize>, v: &[f16]) -> OutTensor {
    OutTensor { name, dtype: Dtype::F16, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}

/// Looks up `name`, checking its dtype and shape.
pub(crate) fn fetch<'a>(src: &'a dyn TensorSource, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8]> {
    let Some(t) = src.raw(name) else { bail!("{name}: tensor missing") };
    ensure!(t.dtype == dtype, "{name}: dtype {:?}, expected {dtype:?}", t.dtype);
    ensure!(t.shape == shape, "{name}: shape {:?}, expected {shape:?}", t.shape);
    let bits = shape.iter().try_fold(dtype.bitsize(), |n, &d| n.checked_mul(d));
    ensure!(bits.map(|b| b.div_ceil(8)) == Some(t.data.len()), "{name}: {} bytes do not match shape {shape:?}", t.data.len());
    Ok(t.data)
}

/// `a * b`, or an error saying which product of declared sizes overflows.
pub(crate) fn mul(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| anyhow::anyhow!("{what}: {a} × {b} overflows"))
}

/// Shape of `name`, or an error naming it.
pub(crate) fn shape_of(src: &dyn TensorSource, name: &str) -> Result<Vec<usize>> {
    src.raw(name).map(|t| t.shape).ok_or_else(|| anyhow::anyhow!("{name}: tensor missing"))
}

pub(crate) fn le_i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) fn le_f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()
}

/// Reads a g_idx tensor (I32 `[in]`), checking every entry is in `0..n_groups`.
pub(crate) fn read_g_idx(b: &[u8], name: &str, n_groups: usize) -> Result<Vec<u32>> {
    le_i32s(b)
        .into_iter()
        .map(|g| {
            ensure!(g >= 0 && (g as usize) < n_groups, "{name}: group index {g} outside 0..{n_groups}");
            Ok(g as u32)
        })
        .collect()
}

/// `y[rows][out] = x[rows][in] · Wᵀ` where `decode(o, w)` writes row `o` of `W` (`in` values)
/// into `w`. Parallel over output channels.
pub(crate) fn matmul_decoded(x: &[f32], rows: usize, (out_f, in_f): (usize, usize), decode: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    assert_eq!(x.len(), rows * in_f, "dequant_matmul: x has {} values, expected {rows}x{in_f}", x.len());
    if rows == 0 || out_f == 0 {
        return vec![0.0; rows * out_f];
    }
    let mut yt = vec![0f32; out_f * rows];
    yt.par_chunks_mut(rows).enumerate().for_each_init(
        || vec![0f32; in_f],
        |w, (o, yo)| {
            decode(o, w);
            for (r, y) in yo.iter_mut().enumerate() {
                *y = x[r * in_f..(r + 1) * in_f].iter().zip(w.iter()).map(|(a, b)| a * b).sum();
            }
        },
    );
    let mut y = vec![0f32; rows * out_f];
    for (o, col) in yt.chunks_exact(rows).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            y[r * out_f + o] = v;
        }
    }
    y
}
