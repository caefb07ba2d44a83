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
pub mod scheme;
pub mod vq;

pub use awq::AwqPacked;
pub use gptq::GptqPacked;
pub use lowbit::{LowbitModuleMeta, LowbitPacked, LowbitQuantConfig};

use crate::codes::{Grid, GroupQ};
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

/// The on-disk layout of a quantized checkpoint (`--format`). Each layout owns its rules: which
/// linears it can hold ([`Layout::check`], from the plan and the shape alone), the tensors it
/// stores for one ([`Layout::tensor_specs`], exact sizes for `--dry-run`), and which stored
/// tensors belong to a packed module ([`is_packed_tensor`]). GGUF linears are written by
/// `crate::gguf::export`; in a lowbit directory GGUF codes use the lowbit layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// lowbit's own layout (any method, 2..8 bits); docs/formats.md.
    Lowbit,
    /// AutoAWQ GEMM (4-bit), loadable by transformers and vLLM.
    Awq,
    /// GPTQ v1 (2/3/4/8-bit; per-module bits and group size in GPTQModel's `dynamic`).
    Gptq,
    /// One llama.cpp GGUF v3 file (block type from --gguf-type); --out names the file.
    Gguf,
}

impl crate::named::Named for Layout {
    const ALL: &'static [Self] = &[Layout::Lowbit, Layout::Awq, Layout::Gptq, Layout::Gguf];
    fn name(self) -> &'static str {
        Layout::name(self)
    }
    fn help(self) -> &'static str {
        match self {
            Layout::Lowbit => "lowbit's own layout (any method, 2..8 bits); docs/formats.md",
            Layout::Awq => "AutoAWQ GEMM (4-bit), loadable by transformers and vLLM",
            Layout::Gptq => "GPTQ v1 (2/3/4/8-bit; per-module bits and group size in GPTQModel's `dynamic`)",
            Layout::Gguf => "One llama.cpp GGUF v3 file (block type from --gguf-type); --out names the file",
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "awq" => Layout::Awq,
            "gptq" => Layout::Gptq,
            "lowbit" => Layout::Lowbit,
            "gguf" => Layout::Gguf,
            _ => bail!("unknown packed layout {s:?} (expected awq, gptq, lowbit or gguf)"),
        })
    }
}

/// What a plan asks of a layout for one linear: code width, group size, grid, whether the input
/// columns are regrouped (GPTQ act-order: a g_idx), and whether it is vector-quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub bits: u8,
    pub group_size: usize,
    pub grid: Grid,
    pub g_idx: bool,
    pub vq: bool,
}

/// One stored tensor of a packed module: name suffix, dtype, shape.
pub type TensorSpec = (&'static str, Dtype, Vec<usize>);

/// Bytes of one bit-stream row of `n` codes of `bits` bits, padded to whole 32-bit words (the
/// lowbit layout's code rows and the VQ layout's index rows; the GPU kernels read the same).
pub fn stream_row_bytes(n: usize, bits: usize) -> usize {
    4 * (n * bits).div_ceil(32)
}

/// Stored bytes of a tensor of `dtype` and `shape` (what `--dry-run` and the size planner count).
pub fn spec_bytes(dtype: Dtype, shape: &[usize]) -> usize {
    shape.iter().product::<usize>() * dtype.bitsize() / 8
}

impl Layout {
    /// The `--format` value.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Lowbit => "lowbit",
            Layout::Awq => "awq",
            Layout::Gptq => "gptq",
            Layout::Gguf => "gguf",
        }
    }

    /// The layout group-quantized codes are packed in (a lowbit directory for GGUF codes).
    pub fn group_layout(self) -> Layout {
        match self {
            Layout::Gguf => Layout::Lowbit,
            l => l,
        }
    }

    /// Whether this layout can store an `out × inn` linear quantized as `w`; the error says why
    /// not (without the module name, which the caller adds). Decided from the plan and the shape
    /// only: any codes the plan can produce are then packed (GPTQ zero points of 0 included).
    pub fn check(self, w: &Want, out: usize, inn: usize) -> std::result::Result<(), String> {
        let (b, g) = (w.bits, w.group_size);
        if g == 0 {
            return Err("group size 0".into());
        }
        match self.group_layout() {
            Layout::Lowbit => {
                if !w.vq && !(2..=8).contains(&b) {
                    return Err(format!("the lowbit layout holds 2..=8-bit codes, not {b}"));
                }
            }
            Layout::Awq => {
                if w.vq {
                    return Err("AutoAWQ's GEMM layout holds no vector-quantized weights (use --format lowbit)".into());
                }
                if b != 4 {
                    return Err(format!("AutoAWQ's GEMM layout holds 4-bit codes only, not {b}"));
                }
                if w.grid != Grid::Affine {
                    return Err(format!("AutoAWQ's GEMM layout holds the affine grid only, not {}", lowbit::grid_name::name(w.grid)));
                }
                if w.g_idx && inn.div_ceil(g) > 1 {
                    return Err("AutoAWQ's GEMM layout has no g_idx (act-order regroups the input columns)".into());
                }
                if !inn.is_multiple_of(g) {
                    return Err(format!("AutoAWQ's GEMM layout needs in_features ({inn}) divisible by the group size ({g})"));
                }
                if !out.is_multiple_of(8) {
                    return Err(format!("AutoAWQ's GEMM layout needs out_features ({out}) divisible by 8"));
                }
            }
            Layout::Gptq => {
                if w.vq {
                    return Err("the GPTQ layout holds no vector-quantized weights (use --format lowbit)".into());
                }
                if !matches!(b, 2 | 3 | 4 | 8) {
                    return Err(format!("the GPTQ v1 layout holds 2, 3, 4 or 8-bit codes, not {b}"));
                }
                if w.grid != Grid::Affine {
                    return Err(format!("the GPTQ v1 layout holds the affine grid only, not {}", lowbit::grid_name::name(w.grid)));
                }
                if !inn.is_multiple_of(32) || !out.is_multiple_of(32) {
                    return Err(format!(
                        "the GPTQ v1 layout packs in 32-element runs: in_features ({inn}) and out_features ({out}) must be multiples of 32"
                    ));
                }
            }
            Layout::Gguf => unreachable!("group_layout maps GGUF to lowbit"),
        }
        Ok(())
    }

    /// The tensors this layout stores for an `out × inn` group-quantized linear planned as `w`
    /// (which [`Layout::check`] accepted): exact dtypes and shapes, so `--dry-run` sizes are
    /// the written sizes.
    pub fn tensor_specs(self, w: &Want, out: usize, inn: usize) -> Vec<TensorSpec> {
        let (b, g) = (w.bits as usize, w.group_size);
        let ng = inn.div_ceil(g);
        match self.group_layout() {
            Layout::Lowbit => {
                let mut t = vec![("qweight", Dtype::U8, vec![out, lowbit::row_bytes(inn, w.bits)]), ("scales", Dtype::F16, vec![out, ng])];
                if w.grid == Grid::Affine {
                    t.push(("qzeros", Dtype::U8, vec![out, ng]));
                }
                if w.g_idx && ng > 1 {
                    t.push(("g_idx", Dtype::I32, vec![inn]));
                }
                t
            }
            Layout::Awq => vec![
                ("qweight", Dtype::I32, vec![inn, out / 8]),
                ("qzeros", Dtype::I32, vec![inn / g, out / 8]),
                ("scales", Dtype::F16, vec![inn / g, out]),
            ],
            Layout::Gptq => vec![
                ("qweight", Dtype::I32, vec![inn * b / 32, out]),
                ("qzeros", Dtype::I32, vec![ng, out * b / 32]),
                ("scales", Dtype::F16, vec![ng, out]),
                ("g_idx", Dtype::I32, vec![inn]),
            ],
            Layout::Gguf => unreachable!("group_layout maps GGUF to lowbit"),
        }
    }
}

impl Layout {
    /// The `quantization_config` of an HF layout (AWQ, GPTQ) for a checkpoint whose decoder
    /// linears are `modules` (full name, `(bits, group_size)` or `None` when kept in float;
    /// `n_layers` layers): the layout's own header (GPTQ with GPTQModel's per-module `dynamic`
    /// entries), plus `modules_to_not_convert` for the float ones. transformers matches these
    /// names as substrings, so a linear kept in float in every layer is listed by its short name,
    /// otherwise by full name. The planner refused what a header cannot say (AWQ mixtures).
    pub fn hf_quantization_config(
        self,
        bits: u8,
        group_size: usize,
        desc_act: bool,
        sym: bool,
        n_layers: usize,
        modules: &[(String, Option<(u8, usize)>)],
    ) -> serde_json::Value {
        let mut c = match self {
            Layout::Awq => AwqPacked::quantization_config(group_size),
            Layout::Gptq => GptqPacked::quantization_config(bits, group_size, desc_act, sym, modules),
            Layout::Lowbit | Layout::Gguf => unreachable!("{} is not an HF layout", self.name()),
        };
        let float: Vec<&str> = modules.iter().filter(|m| m.1.is_none()).map(|m| m.0.as_str()).collect();
        if !float.is_empty() {
            // The linear's name within its layer: what follows "model.layers.N.".
            let within =
                |n: &str| n.strip_prefix("model.layers.").and_then(|r| r.split_once('.')).map_or(n.to_string(), |(_, l)| l.to_string());
            let mut kinds: Vec<String> = Vec::new();
            for m in modules {
                let k = within(&m.0);
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            let mut names: Vec<String> = Vec::new();
            for k in kinds {
                let layers: Vec<&str> = float.iter().copied().filter(|f| within(f) == k).collect();
                if layers.len() == n_layers {
                    names.push(k.rsplit('.').next().unwrap_or(&k).to_string());
                } else {
                    names.extend(layers.into_iter().map(str::to_string));
                }
            }
            c["modules_to_not_convert"] = names.into();
        }
        c
    }
}

/// Name suffixes of the tensors that make up a packed module, in any layout (group layouts and
/// lowbit's VQ layout; GGUF block tensors end in `.ggml_TYPE`); a module's other tensors
/// (`.bias`) are plain float tensors.
pub const PACKED_SUFFIXES: [&str; 13] = [
    "qweight",
    "qzeros",
    "scales",
    "g_idx",
    "vq_indices",
    "centroids",
    "vq_res_indices",
    "res_centroids",
    "col_scale",
    "col_bias",
    "outlier_cols",
    "outlier_indices",
    "outlier_centroids",
];

/// The module prefix of a tensor that belongs to a packed module (`None` for a float tensor).
/// `is_module(prefix)` says whether `prefix` is a packed module of the checkpoint.
pub fn packed_module_of(name: &str, is_module: impl Fn(&str) -> bool) -> Option<&str> {
    let (prefix, suffix) = name.rsplit_once('.')?;
    (PACKED_SUFFIXES.contains(&suffix) || suffix.starts_with("ggml_")).then_some(prefix).filter(|p| is_module(p))
}

/// Sizes of a checkpoint, the one count behind every bits-per-weight figure lowbit prints
/// (quantize, `--dry-run`, inspect, sweep): every stored byte, every parameter (a packed
/// module counts its `out × in` weights, a float tensor its elements), and the packed modules'
/// bytes and weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SizeCount {
    pub bytes: u64,
    pub params: u64,
    pub linear_bytes: u64,
    pub linear_weights: u64,
}

impl SizeCount {
    /// Counts tensors `(name, shape, stored bytes)`; `modules` maps each packed module's prefix
    /// to its `(out, in)` shape.
    pub fn of<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize], u64)>,
        modules: &std::collections::BTreeMap<String, (usize, usize)>,
    ) -> Self {
        let mut c = SizeCount::default();
        for (name, shape, bytes) in tensors {
            c.bytes += bytes;
            match packed_module_of(name, |p| modules.contains_key(p)) {
                Some(_) => c.linear_bytes += bytes,
                None => c.params += shape.iter().product::<usize>() as u64,
            }
        }
        for &(o, i) in modules.values() {
            c.params += (o * i) as u64;
            c.linear_weights += (o * i) as u64;
        }
        c
    }

    /// Stored bits per weight of the packed modules (scales, zeros, indices and codebooks included).
    pub fn linear_bpw(&self) -> f64 {
        8.0 * self.linear_bytes as f64 / self.linear_weights.max(1) as f64
    }

    /// Every stored byte × 8 / every parameter.
    pub fn model_bpw(&self) -> f64 {
        8.0 * self.bytes as f64 / self.params.max(1) as f64
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
            Layout::Lowbit | Layout::Gguf => Packed::Lowbit(LowbitPacked::pack(q)?),
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
