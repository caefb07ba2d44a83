//! GPU dequant-matmul runner for the packed layouts (cudarc 0.19, NVRTC at run time, cuBLAS baseline).
//!
//! * [`gpu_available`] / [`nvrtc_available`]: probe the driver / NVRTC libraries without panicking.
//! * [`compile_family`]: compile one kernel family (`kernels/*.cu`, embedded with `include_str!`) with
//!   NVRTC to PTX.
//! * [`PackedOnGpu`]: a packed layer as raw host arrays (no dependency on other modules' types), with
//!   a plain CPU reference ([`PackedOnGpu::dequantize`]) and synthetic generators ([`synth`]).
//! * [`GpuVerifier`]: uploads a layer, launches the GEMV (batch <= 8) or GEMM kernel, times it against
//!   cuBLAS fp16 GEMM on the dequantized weight and reports bandwidth.
//!
//! Without a GPU (or without libcuda / libnvrtc) every fallible function returns an error; nothing
//! here panics on a machine without CUDA. See docs/kernels.md for the kernel design.

use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

/// Shared header, pasted in front of every kernel file before NVRTC sees it.
pub const COMMON_CUH: &str = include_str!("../kernels/common.cuh");
/// Kernel families: (name, source). Each `kernels/<name>.cu` compiles standalone with nvcc too.
pub const KERNEL_FAMILIES: [(&str, &str); 4] = [
    ("awq", include_str!("../kernels/awq.cu")),
    ("gptq", include_str!("../kernels/gptq.cu")),
    ("lowbit", include_str!("../kernels/lowbit.cu")),
    ("vq", include_str!("../kernels/vq.cu")),
];
/// Warps per block (`LB_WARPS` in common.cuh).
pub const WARPS: u32 = 4;
/// Batch columns per block of the GEMM kernels (`8 * LB_GEMM_NT`).
pub const GEMM_BN: usize = 32;
/// Largest batch served by the GEMV kernels.
pub const GEMV_MAX_BATCH: usize = 8;

// ------------------------------------------------------------------------------------------------
// Library probing

extern "C" {
    fn dlopen(filename: *const std::os::raw::c_char, flag: std::os::raw::c_int) -> *mut std::ffi::c_void;
}
const RTLD_NOW: std::os::raw::c_int = 2;
const RTLD_GLOBAL: std::os::raw::c_int = 0x100;

/// Where the PyPI NVRTC wheel of scripts/ci-kernels.sh lives.
pub fn pip_cuda_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LOWBIT_CUDA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/lowbit-cuda")
}

/// Loads libnvrtc by absolute path from known places (`$LOWBIT_NVRTC` or the PyPI wheel installed by
/// scripts/ci-kernels.sh) so that cudarc's later `dlopen("libnvrtc.so.12")` finds it already loaded
/// without LD_LIBRARY_PATH. Returns the path that was loaded.
pub fn preload_nvrtc() -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("LOWBIT_NVRTC") {
        cands.push(PathBuf::from(p));
    }
    cands.push(pip_cuda_dir().join("py/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
    for p in cands {
        if !p.is_file() {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(p.to_string_lossy().as_bytes()) else { continue };
        // SAFETY: plain dlopen of a shared library by path; the handle is intentionally leaked.
        let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
        if !h.is_null() {
            return Some(p);
        }
    }
    None
}

fn quiet_catch<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f).ok();
    std::panic::set_hook(prev);
    r
}

/// True when libnvrtc can be loaded (after [`preload_nvrtc`]).
pub fn nvrtc_available() -> bool {
    preload_nvrtc();
    quiet_catch(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// True when libcuda loads, initialises and reports at least one device. Checks
/// `is_culib_present()` before anything else (creating a context without libcuda panics); never
/// panics.
pub fn gpu_available() -> bool {
    let present = quiet_catch(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return false;
    }
    quiet_catch(|| cudarc::driver::result::init().is_ok() && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)).unwrap_or(false)
}

// ------------------------------------------------------------------------------------------------
// NVRTC

/// The source NVRTC compiles for a family: common.cuh pasted in place of its `#include`.
pub fn kernel_source(family: &str) -> Result<String> {
    let (_, src) = KERNEL_FAMILIES.iter().find(|(n, _)| *n == family).ok_or_else(|| anyhow!("unknown kernel family {family}"))?;
    let inc = "#include \"common.cuh\"";
    if !src.contains(inc) {
        bail!("{family}.cu does not include common.cuh");
    }
    Ok(src.replacen(inc, COMMON_CUH, 1))
}

/// Virtual architecture name for NVRTC (PTX is JIT-compiled by the driver for the real device).
pub fn compute_arch(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        (m, _) if m >= 9 => "compute_90",
        _ => "compute_80",
    }
}

/// Compiles one kernel family to PTX with NVRTC. `defines` become `-DNAME=VALUE`
/// (e.g. `LOWBIT_BITS=4` instantiates a single bit width of lowbit.cu).
pub fn compile_family(family: &str, arch: &'static str, defines: &[String]) -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_available() {
        bail!("libnvrtc not found (set LD_LIBRARY_PATH or LOWBIT_NVRTC, or run scripts/ci-kernels.sh)");
    }
    let src = kernel_source(family)?;
    let mut options = vec!["-std=c++17".to_string()];
    options.extend(defines.iter().map(|d| format!("-D{d}")));
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), options, name: Some(format!("{family}.cu")), ..Default::default() };
    let res = quiet_catch(move || cudarc::nvrtc::compile_ptx_with_opts(src, opts))
        .ok_or_else(|| anyhow!("NVRTC panicked (library missing a symbol?)"))?;
    res.map_err(|e| anyhow!("NVRTC failed for {family}.cu ({arch}): {e:?}"))
}

// ------------------------------------------------------------------------------------------------
// Layers

/// Value grid of the lowbit layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuGrid {
    /// `w = (q - z) * s`
    Affine,
    /// `w = s * (q - n + 0.5) / n`, `n = 2^(b-1)`
    HalfInt,
    /// `w = ±s * 2^-p` (top bit sign, low b-1 bits p)
    Shift,
}

impl GpuGrid {
    pub fn name(self) -> &'static str {
        match self {
            GpuGrid::Affine => "affine",
            GpuGrid::HalfInt => "halfint",
            GpuGrid::Shift => "shift",
        }
    }
}

/// A packed linear layer `W [out, in]` as raw host arrays, exactly as the kernels read them
/// (see the layout comments at the top of each kernels/*.cu).
#[derive(Clone, Debug)]
pub enum PackedOnGpu {
    /// AutoAWQ GEMM, 4-bit: qweight `[in, out/8]`, qzeros `[in/g, out/8]`, scales `[in/g, out]`.
    Awq { out: usize, in_features: usize, group_size: usize, qweight: Vec<i32>, qzeros: Vec<i32>, scales: Vec<f16> },
    /// GPTQ v1: qweight `[in*bits/32, out]`, qzeros `[n_groups, out*bits/32]` (zero-1),
    /// scales `[n_groups, out]`, g_idx `[in]` (None = i / group_size).
    Gptq {
        out: usize,
        in_features: usize,
        bits: u32,
        group_size: usize,
        qweight: Vec<i32>,
        qzeros: Vec<i32>,
        scales: Vec<f16>,
        g_idx: Option<Vec<i32>>,
    },
    /// lowbit: qweight `[out, row_bytes]`, scales `[out, n_groups]`, qzeros `[out, n_groups]`
    /// (affine only), g_idx `[in]` optional.
    Lowbit {
        out: usize,
        in_features: usize,
        bits: u32,
        group_size: usize,
        grid: GpuGrid,
        qweight: Vec<u8>,
        scales: Vec<f16>,
        qzeros: Option<Vec<u8>>,
        g_idx: Option<Vec<i32>>,
    },
    /// VQ: indices `[in, idx_row_bytes]`, codebook `[k, v]`, optional residual, per-column scale/bias.
    Vq {
        out: usize,
        in_features: usize,
        v: usize,
        idx_bits: u32,
        indices: Vec<u8>,
        codebook: Vec<f16>,
        residual: Option<VqResidual>,
        col_scale: Option<Vec<f16>>,
        col_bias: Option<Vec<f16>>,
    },
}

/// Residual codebook of a [`PackedOnGpu::Vq`] layer.
#[derive(Clone, Debug)]
pub struct VqResidual {
    pub idx_bits: u32,
    pub indices: Vec<u8>,
    pub codebook: Vec<f16>,
}

/// Bytes of one bit-stream row holding `n` codes of `bits` bits: ceil(n*bits/8) rounded up to 4.
pub fn stream_row_bytes(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8).div_ceil(4) * 4
}

fn bits_u8(stream: &[u8], bit: usize, n: u32) -> u32 {
    let mut v = 0u32;
    for k in 0..n as usize {
        let b = bit + k;
        v |= ((stream[b / 8] >> (b % 8)) as u32 & 1) << k;
    }
    v
}
fn bits_u32(words: &[i32], stride: usize, col: usize, bit: usize, n: u32) -> u32 {
    // stream of column `col` in a [rows, stride] word matrix
    let mut v = 0u32;
    for k in 0..n as usize {
        let b = bit + k;
        let w = words[(b / 32) * stride + col] as u32;
        v |= ((w >> (b % 32)) & 1) << k;
    }
    v
}
const AWQ_REV: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

impl PackedOnGpu {
    pub fn shape(&self) -> (usize, usize) {
        match self {
            PackedOnGpu::Awq { out, in_features, .. }
            | PackedOnGpu::Gptq { out, in_features, .. }
            | PackedOnGpu::Lowbit { out, in_features, .. }
            | PackedOnGpu::Vq { out, in_features, .. } => (*out, *in_features),
        }
    }

    /// Short human-readable name, e.g. `lowbit-shift-b4`.
    pub fn label(&self) -> String {
        match self {
            PackedOnGpu::Awq { .. } => "awq-b4".into(),
            PackedOnGpu::Gptq { bits, g_idx, group_size, in_features, .. } => {
                let act = g_idx.as_ref().is_some_and(|g| !trivial_g_idx(g, *group_size, *in_features));
                format!("gptq-b{bits}{}", if act { "-actorder" } else { "" })
            }
            PackedOnGpu::Lowbit { bits, grid, g_idx, .. } => {
                format!("lowbit-{}-b{bits}{}", grid.name(), if g_idx.is_some() { "-gidx" } else { "" })
            }
            PackedOnGpu::Vq { v, idx_bits, residual, .. } => {
                format!("vq-v{v}-i{idx_bits}{}", if residual.is_some() { "-res" } else { "" })
            }
        }
    }

    /// Bytes the kernel has to stream for the weight (packed codes, scales, zeros, codebooks).
    pub fn packed_bytes(&self) -> usize {
        match self {
            PackedOnGpu::Awq { qweight, qzeros, scales, .. } => 4 * qweight.len() + 4 * qzeros.len() + 2 * scales.len(),
            PackedOnGpu::Gptq { qweight, qzeros, scales, g_idx, .. } => {
                4 * qweight.len() + 4 * qzeros.len() + 2 * scales.len() + g_idx.as_ref().map_or(0, |g| 4 * g.len())
            }
            PackedOnGpu::Lowbit { qweight, scales, qzeros, g_idx, .. } => {
                qweight.len() + 2 * scales.len() + qzeros.as_ref().map_or(0, |z| z.len()) + g_idx.as_ref().map_or(0, |g| 4 * g.len())
            }
            PackedOnGpu::Vq { indices, codebook, residual, col_scale, col_bias, .. } => {
                indices.len()
                    + 2 * codebook.len()
                    + residual.as_ref().map_or(0, |r| r.indices.len() + 2 * r.codebook.len())
                    + col_scale.as_ref().map_or(0, |s| 2 * s.len())
                    + col_bias.as_ref().map_or(0, |s| 2 * s.len())
            }
        }
    }

    /// Checks the array sizes and the constraints of the kernels.
    pub fn validate(&self) -> Result<()> {
        match self {
            PackedOnGpu::Awq { out, in_features: inf, group_size: g, qweight, qzeros, scales } => {
                let (o, i, g) = (*out, *inf, *g);
                if o % 8 != 0 || g == 0 || g % 32 != 0 || i % g != 0 {
                    bail!("awq: need out % 8 == 0, group_size % 32 == 0, in % group_size == 0 (out={o} in={i} g={g})");
                }
                check_len("awq qweight", qweight.len(), i * o / 8)?;
                check_len("awq qzeros", qzeros.len(), i / g * o / 8)?;
                check_len("awq scales", scales.len(), i / g * o)?;
            }
            PackedOnGpu::Gptq { out, in_features: inf, bits, group_size: g, qweight, qzeros, scales, g_idx } => {
                let (o, i, b, g) = (*out, *inf, *bits as usize, (*g).max(1));
                if ![2, 3, 4, 8].contains(&b) || i % 32 != 0 || (o * b) % 32 != 0 {
                    bail!("gptq: need bits in 2,3,4,8, in % 32 == 0, out*bits % 32 == 0");
                }
                let ng = gptq_groups(i, g, g_idx.as_deref());
                check_len("gptq qweight", qweight.len(), i * b / 32 * o)?;
                check_len("gptq qzeros", qzeros.len(), ng * o * b / 32)?;
                check_len("gptq scales", scales.len(), ng * o)?;
                if let Some(gi) = g_idx {
                    check_len("gptq g_idx", gi.len(), i)?;
                    if gi.iter().any(|&x| x < 0 || x as usize >= ng) {
                        bail!("gptq g_idx out of range");
                    }
                }
            }
            PackedOnGpu::Lowbit { out, in_features: inf, bits, group_size, grid, qweight, scales, qzeros, g_idx } => {
                let (o, i, b) = (*out, *inf, *bits);
                if !(2..=8).contains(&b) || *group_size == 0 {
                    bail!("lowbit: bits must be 2..8 and group_size > 0");
                }
                let ng = lowbit_groups(i, *group_size, g_idx.as_deref());
                check_len("lowbit qweight", qweight.len(), o * stream_row_bytes(i, b))?;
                check_len("lowbit scales", scales.len(), o * ng)?;
                if *grid == GpuGrid::Affine {
                    let z = qzeros.as_ref().ok_or_else(|| anyhow!("lowbit affine needs qzeros"))?;
                    check_len("lowbit qzeros", z.len(), o * ng)?;
                }
                if let Some(gi) = g_idx {
                    check_len("lowbit g_idx", gi.len(), i)?;
                    if gi.iter().any(|&x| x < 0 || x as usize >= ng) {
                        bail!("lowbit g_idx out of range");
                    }
                }
            }
            PackedOnGpu::Vq { out, in_features: inf, v, idx_bits, indices, codebook, residual, col_scale, col_bias } => {
                let (o, i, v) = (*out, *inf, *v);
                if v == 0 || o % v != 0 || !(1..=16).contains(idx_bits) {
                    bail!("vq: need out % v == 0 and idx_bits in 1..=16");
                }
                check_len("vq indices", indices.len(), i * stream_row_bytes(o / v, *idx_bits))?;
                if codebook.is_empty() || codebook.len() % v != 0 || codebook.len() / v > 1 << idx_bits {
                    bail!("vq codebook must be [k, v] with k <= 2^idx_bits");
                }
                if let Some(r) = residual {
                    if !(1..=16).contains(&r.idx_bits) {
                        bail!("vq residual idx_bits in 1..=16");
                    }
                    check_len("vq residual indices", r.indices.len(), i * stream_row_bytes(o / v, r.idx_bits))?;
                    if r.codebook.is_empty() || r.codebook.len() % v != 0 || r.codebook.len() / v > 1 << r.idx_bits {
                        bail!("vq residual codebook must be [k, v] with k <= 2^idx_bits");
                    }
                }
                if let Some(s) = col_scale {
                    check_len("vq col_scale", s.len(), i)?;
                }
                if let Some(s) = col_bias {
                    check_len("vq col_bias", s.len(), i)?;
                }
            }
        }
        Ok(())
    }

    /// CPU reference: the dequantized weight `[out][in]` in f32, decoded element by element from the
    /// raw arrays (independent of the kernels' bit tricks).
    pub fn dequantize(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let (o_n, i_n) = self.shape();
        let mut w = vec![0f32; o_n * i_n];
        // Rows are independent: decode them in parallel, each row with the per-element code below.
        let chunk = 64usize;
        w.par_chunks_mut(chunk * i_n.max(1)).enumerate().for_each(|(ci, wc)| {
            let rows = wc.len() / i_n.max(1);
            for r in 0..rows {
                let o = ci * chunk + r;
                self.dequantize_row(o, &mut wc[r * i_n..(r + 1) * i_n]);
            }
        });
        w
    }

    /// CPU reference for one output row `o` (`w_row.len() == in`).
    pub fn dequantize_row(&self, o: usize, w_row: &mut [f32]) {
        let (_, i_n) = self.shape();
        let o_n = o + 1;
        let w = w_row;
        let o_base = o;
        match self {
            PackedOnGpu::Awq { out, group_size, qweight, qzeros, scales, .. } => {
                let ow = out / 8;
                for o in o_base..o_n {
                    let nib = 4 * AWQ_REV[o % 8];
                    for i in 0..i_n {
                        let gr = i / group_size;
                        let q = (qweight[i * ow + o / 8] as u32 >> nib) & 15;
                        let z = (qzeros[gr * ow + o / 8] as u32 >> nib) & 15;
                        let s = scales[gr * out + o].to_f32();
                        w[(o - o_base) * i_n + i] = (q as f32 - z as f32) * s;
                    }
                }
            }
            PackedOnGpu::Gptq { out, bits, group_size, qweight, qzeros, scales, g_idx, .. } => {
                let zw = out * *bits as usize / 32;
                for o in o_base..o_n {
                    for i in 0..i_n {
                        let gr = g_idx.as_ref().map_or(i / group_size, |g| g[i] as usize);
                        let q = bits_u32(qweight, *out, o, i * *bits as usize, *bits);
                        let zs = bits_u32(&qzeros[gr * zw..(gr + 1) * zw], 1, 0, o * *bits as usize, *bits);
                        let s = scales[gr * out + o].to_f32();
                        w[(o - o_base) * i_n + i] = (q as f32 - (zs + 1) as f32) * s;
                    }
                }
            }
            PackedOnGpu::Lowbit { in_features, bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
                let rb = stream_row_bytes(*in_features, *bits);
                let ng = lowbit_groups(*in_features, *group_size, g_idx.as_deref());
                let b = *bits;
                for o in o_base..o_n {
                    let row = &qweight[o * rb..(o + 1) * rb];
                    for i in 0..i_n {
                        let gr = g_idx.as_ref().map_or(i / group_size, |g| g[i] as usize);
                        let q = bits_u8(row, i * b as usize, b);
                        let s = scales[o * ng + gr].to_f32();
                        w[(o - o_base) * i_n + i] = match grid {
                            GpuGrid::Affine => {
                                let z = qzeros.as_ref().map_or(0, |z| z[o * ng + gr]) as f32;
                                (q as f32 - z) * s
                            }
                            GpuGrid::HalfInt => {
                                let n = (1u32 << (b - 1)) as f32;
                                s * (q as f32 - n + 0.5) / n
                            }
                            GpuGrid::Shift => {
                                let p = q & ((1 << (b - 1)) - 1);
                                let v = s * (-(p as f32)).exp2();
                                if q >> (b - 1) & 1 == 1 {
                                    -v
                                } else {
                                    v
                                }
                            }
                        };
                    }
                }
            }
            PackedOnGpu::Vq { out, v, idx_bits, indices, codebook, residual, col_scale, col_bias, .. } => {
                let nvec = out / v;
                let rb = stream_row_bytes(nvec, *idx_bits);
                for i in 0..i_n {
                    let row = &indices[i * rb..(i + 1) * rb];
                    let s = col_scale.as_ref().map_or(1.0, |s| s[i].to_f32());
                    let bb = col_bias.as_ref().map_or(0.0, |s| s[i].to_f32());
                    for o in o_base..o_n {
                        let (j, e) = (o / v, o % v);
                        let k = bits_u8(row, j * *idx_bits as usize, *idx_bits) as usize;
                        let mut val = codebook[k * v + e].to_f32();
                        if let Some(r) = residual {
                            let rrb = stream_row_bytes(nvec, r.idx_bits);
                            let rk = bits_u8(&r.indices[i * rrb..(i + 1) * rrb], j * r.idx_bits as usize, r.idx_bits) as usize;
                            val += r.codebook[rk * v + e].to_f32();
                        }
                        w[(o - o_base) * i_n + i] = val * s + bb;
                    }
                }
            }
        }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("{what}: {got} elements, expected {want}");
    }
    Ok(())
}
fn gptq_groups(i: usize, g: usize, g_idx: Option<&[i32]>) -> usize {
    match g_idx {
        Some(gi) => gi.iter().map(|&x| x.max(0) as usize + 1).max().unwrap_or(0).max(i.div_ceil(g)),
        None => i.div_ceil(g),
    }
}
fn lowbit_groups(i: usize, g: usize, g_idx: Option<&[i32]>) -> usize {
    match g_idx {
        Some(gi) => gi.iter().map(|&x| x.max(0) as usize + 1).max().unwrap_or(0),
        None => i.div_ceil(g),
    }
}
/// True when `g_idx[i] == i / group_size` for every column.
pub fn trivial_g_idx(g: &[i32], group_size: usize, in_features: usize) -> bool {
    g.len() == in_features && g.iter().enumerate().all(|(i, &x)| x as usize == i / group_size.max(1))
}

/// Reference `y = x · Wᵀ` in f64 accumulation from a dequantized `[out][in]` weight; x is `[batch][in]`.
pub fn reference_matmul(w: &[f32], x: &[f16], batch: usize, out: usize, inf: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut y = vec![0f32; batch * out];
    y.par_chunks_mut(out).enumerate().for_each(|(n, yr)| {
        let xr = &xf[n * inf..(n + 1) * inf];
        for (o, yo) in yr.iter_mut().enumerate() {
            let wr = &w[o * inf..(o + 1) * inf];
            *yo = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    });
    y
}

/// max |a - b| / max |b| (0 when both are 0).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for (&a, &b) in got.iter().zip(want) {
        num = num.max((a as f64 - b as f64).abs());
        den = den.max((b as f64).abs());
    }
    if !num.is_finite() || got.len() != want.len() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

// ------------------------------------------------------------------------------------------------
// Synthetic layers (random codes packed into each layout); used by tests and the benchmark.

pub mod synth {
    use super::*;

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
                // stored zero - 1, zero in 1 ..= 2^bits - 1 so the stored value never underflows
                let z = 1 + r.below((1 << bits) - 1);
                put_bits_words(&mut qz[gr * zw..(gr + 1) * zw], 1, 0, o * bits as usize, bits, z - 1);
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
        PackedOnGpu::Vq { out, in_features: inf, v, idx_bits, indices, codebook, residual: res, col_scale, col_bias }
    }
}

// ------------------------------------------------------------------------------------------------
// Runner

/// Timing of one [`GpuVerifier::run`].
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub kernel: String,
    pub grid: (u32, u32, u32),
    /// Median kernel time in microseconds.
    pub kernel_us: f64,
    /// Median cuBLAS fp16 GEMM time on the dequantized weight (microseconds).
    pub cublas_us: f64,
    /// cublas_us / kernel_us
    pub speedup: f64,
    /// Packed weight bytes + activation bytes + output bytes streamed by the kernel.
    pub bytes: usize,
    /// bytes / kernel time, in GB/s (1e9).
    pub gbps: f64,
    /// Peak DRAM bandwidth from the device attributes (memory clock x bus width x 2), GB/s; 0 if
    /// the driver does not report it.
    pub peak_gbps: f64,
    /// 100 * gbps / peak_gbps
    pub pct_peak: f64,
    /// Max relative error of the kernel against cuBLAS on the same dequantized weight
    /// (max |a-b| / max |b|).
    pub err_vs_cublas: f64,
}

/// Device information used for the bandwidth figures.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub cc: (i32, i32),
    pub sms: u32,
    pub peak_gbps: f64,
}

/// Compiles the kernels (NVRTC, lazily per family/variant), uploads layers and times them.
pub struct GpuVerifier {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    arch: &'static str,
    info: DeviceInfo,
    modules: std::sync::Mutex<std::collections::HashMap<String, Arc<CudaModule>>>,
    /// Timed repetitions (median is reported).
    pub iters: usize,
    /// Output in fp16 (true) or fp32 (false).
    pub out_f16: bool,
}

struct Uploaded {
    bufs: Vec<CudaSlice<u8>>,
}

impl Uploaded {
    fn put<T: Copy>(&mut self, stream: &Arc<CudaStream>, data: &[T]) -> Result<u64> {
        // SAFETY: T is plain data (i32/u8/f16); viewing it as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
        let buf = if bytes.is_empty() { stream.alloc_zeros::<u8>(16)? } else { stream.clone_htod(bytes)? };
        let p = {
            let (p, _g) = buf.device_ptr(stream);
            p
        };
        self.bufs.push(buf);
        Ok(p)
    }
}

fn dptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _g) = s.device_ptr(stream);
    p
}

/// One kernel argument (pointers as raw device addresses, so optional buffers can be null).
#[derive(Clone, Copy, Debug)]
enum KArg {
    P(u64),
    I(i32),
    /// The per-tile arrival counters, allocated by the launcher.
    Counters,
}

impl GpuVerifier {
    /// Opens device `ordinal`. Errors (never panics) when there is no usable GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !gpu_available() {
            bail!("no CUDA GPU available (libcuda missing or no device)");
        }
        let ctx = quiet_catch(|| CudaContext::new(ordinal))
            .ok_or_else(|| anyhow!("CudaContext::new panicked"))?
            .context("creating CUDA context")?;
        let stream = ctx.default_stream();
        let blas = quiet_catch({
            let s = stream.clone();
            move || cudarc::cublas::CudaBlas::new(s)
        })
        .ok_or_else(|| anyhow!("cuBLAS could not be loaded (libcublas missing?)"))?
        .map_err(|e| anyhow!("cuBLAS init: {e:?}"))?;
        let cc = ctx.compute_capability()?;
        if cc.0 < 8 {
            bail!("kernels need sm_80 or newer, device is sm_{}{}", cc.0, cc.1);
        }
        let attr = |a| ctx.attribute(a).unwrap_or(0);
        let clock_khz = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) as f64;
        let bus_bits = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) as f64;
        let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).max(1) as u32;
        let info = DeviceInfo {
            name: ctx.name().unwrap_or_else(|_| "?".into()),
            cc,
            sms,
            peak_gbps: clock_khz * 1e3 * 2.0 * bus_bits / 8.0 / 1e9,
        };
        Ok(GpuVerifier { arch: compute_arch(cc.0, cc.1), ctx, stream, blas, info, modules: Default::default(), iters: 20, out_f16: false })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    fn function(&self, family: &str, defines: &[String], name: &str) -> Result<CudaFunction> {
        let key = format!("{family}|{}", defines.join(","));
        let module = {
            let mut m = self.modules.lock().map_err(|_| anyhow!("module cache poisoned"))?;
            match m.get(&key) {
                Some(md) => md.clone(),
                None => {
                    let ptx = compile_family(family, self.arch, defines)?;
                    let md = self.ctx.load_module(ptx).with_context(|| format!("loading {family} PTX"))?;
                    m.insert(key, md.clone());
                    md
                }
            }
        };
        module.load_function(name).with_context(|| format!("kernel {name} not found"))
    }

    fn ksplit(&self, tiles: u32, units: usize) -> u32 {
        let target = 4 * self.info.sms;
        let want = target.div_ceil(tiles.max(1));
        let max_split = (units / (2 * WARPS as usize)).max(1) as u32;
        want.clamp(1, max_split.min(64))
    }

    /// Runs the packed layer on `x` (`[batch][in]` f16, row-major) and returns `y` (`[batch][out]`,
    /// as f32) and the timing against cuBLAS fp16 GEMM on the dequantized weight.
    pub fn run(&self, layer: &PackedOnGpu, x: &[f16], batch: usize) -> Result<(Vec<f32>, Timing)> {
        layer.validate()?;
        let w = layer.dequantize();
        self.run_with_dequant(layer, x, batch, &w)
    }

    /// [`Self::run`] with the CPU-dequantized weight (`[out][in]`, from [`PackedOnGpu::dequantize`])
    /// supplied by the caller, so repeated runs of one layer decode it once.
    pub fn run_with_dequant(&self, layer: &PackedOnGpu, x: &[f16], batch: usize, w: &[f32]) -> Result<(Vec<f32>, Timing)> {
        layer.validate()?;
        let (o_chk, i_chk) = layer.shape();
        if w.len() != o_chk * i_chk {
            bail!("dequantized weight has {} elements, expected {}", w.len(), o_chk * i_chk);
        }
        let (out, inf) = layer.shape();
        if batch == 0 || x.len() != batch * inf {
            bail!("x has {} elements, expected batch*in = {}", x.len(), batch * inf);
        }
        let s = &self.stream;
        let gemv = batch <= GEMV_MAX_BATCH;
        let bn = if gemv { 8 } else { GEMM_BN };
        let path = if gemv { "gemv" } else { "gemm" };
        let mut up = Uploaded { bufs: Vec::new() };
        let x_d = up.put(s, x)?;
        let y_bytes = batch * out * if self.out_f16 { 2 } else { 4 };
        let y_buf = s.alloc_zeros::<u8>(y_bytes)?;
        let y_d = dptr(&y_buf, s);
        let ws_buf = s.alloc_zeros::<f32>(batch * out)?;
        let ws_d = dptr(&ws_buf, s);
        let (out_i, in_i, batch_i, of16) = (out as i32, inf as i32, batch as i32, self.out_f16 as i32);
        let null = 0u64;

        match layer {
            PackedOnGpu::Awq { group_size, qweight, qzeros, scales, .. } => {
                let f = self.function("awq", &[], &format!("awq_{path}"))?;
                let (qw, qz, sc) = (up.put(s, qweight)?, up.put(s, qzeros)?, up.put(s, scales)?);
                let g = *group_size as i32;
                self.launch_and_time(
                    layer,
                    w,
                    x,
                    batch,
                    f,
                    64,
                    bn,
                    inf.div_ceil(32),
                    0,
                    y_buf,
                    ws_buf,
                    up,
                    vec![
                        KArg::P(qw),
                        KArg::P(qz),
                        KArg::P(sc),
                        KArg::P(x_d),
                        KArg::P(y_d),
                        KArg::P(ws_d),
                        KArg::Counters,
                        KArg::I(out_i),
                        KArg::I(in_i),
                        KArg::I(batch_i),
                        KArg::I(g),
                        KArg::I(of16),
                    ],
                )
            }
            PackedOnGpu::Gptq { bits, group_size, qweight, qzeros, scales, g_idx, .. } => {
                let pc = match g_idx {
                    Some(gi) => !trivial_g_idx(gi, *group_size, inf) || group_size % 32 != 0,
                    None => group_size % 32 != 0,
                };
                let name = format!("gptq_b{bits}_{path}{}", if pc { "_pc" } else { "" });
                let f = self.function("gptq", &[], &name)?;
                let (qw, qz, sc) = (up.put(s, qweight)?, up.put(s, qzeros)?, up.put(s, scales)?);
                let gi = match (pc, g_idx) {
                    (true, Some(gi)) => up.put(s, gi)?,
                    _ => null,
                };
                let ng = gptq_groups(inf, *group_size, g_idx.as_deref()) as i32;
                let g = *group_size as i32;
                self.launch_and_time(
                    layer,
                    w,
                    x,
                    batch,
                    f,
                    32,
                    bn,
                    inf / 32,
                    0,
                    y_buf,
                    ws_buf,
                    up,
                    vec![
                        KArg::P(qw),
                        KArg::P(qz),
                        KArg::P(sc),
                        KArg::P(gi),
                        KArg::P(x_d),
                        KArg::P(y_d),
                        KArg::P(ws_d),
                        KArg::Counters,
                        KArg::I(out_i),
                        KArg::I(in_i),
                        KArg::I(batch_i),
                        KArg::I(ng),
                        KArg::I(g),
                        KArg::I(of16),
                    ],
                )
            }
            PackedOnGpu::Lowbit { bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
                let pc = g_idx.is_some() || group_size % 32 != 0;
                let name = format!("lowbit_{}_b{bits}_{path}{}", grid.name(), if pc { "_pc" } else { "" });
                let f = self.function("lowbit", &[format!("LOWBIT_BITS={bits}")], &name)?;
                let qw = up.put(s, qweight)?;
                let sc = up.put(s, scales)?;
                let qz = match qzeros {
                    Some(z) => up.put(s, z)?,
                    None => null,
                };
                let gi = match g_idx {
                    Some(g) => up.put(s, g)?,
                    None => null,
                };
                let row_words = (stream_row_bytes(inf, *bits) / 4) as i32;
                let ng = lowbit_groups(inf, *group_size, g_idx.as_deref()) as i32;
                let g = *group_size as i32;
                self.launch_and_time(
                    layer,
                    w,
                    x,
                    batch,
                    f,
                    16,
                    bn,
                    inf.div_ceil(128),
                    0,
                    y_buf,
                    ws_buf,
                    up,
                    vec![
                        KArg::P(qw),
                        KArg::P(sc),
                        KArg::P(qz),
                        KArg::P(gi),
                        KArg::P(x_d),
                        KArg::P(y_d),
                        KArg::P(ws_d),
                        KArg::Counters,
                        KArg::I(out_i),
                        KArg::I(in_i),
                        KArg::I(batch_i),
                        KArg::I(row_words),
                        KArg::I(ng),
                        KArg::I(g),
                        KArg::I(of16),
                    ],
                )
            }
            PackedOnGpu::Vq { v, idx_bits, indices, codebook, residual, col_scale, col_bias, .. } => {
                let f = self.function("vq", &[], &format!("vq_{path}"))?;
                let idx = up.put(s, indices)?;
                let cb = up.put(s, codebook)?;
                let (ridx, rcb, rib, n_rcb, rrw) = match residual {
                    Some(r) => (
                        up.put(s, &r.indices)?,
                        up.put(s, &r.codebook)?,
                        r.idx_bits as i32,
                        (r.codebook.len() / v) as i32,
                        (stream_row_bytes(out / v, r.idx_bits) / 4) as i32,
                    ),
                    None => (null, null, 0, 0, 0),
                };
                let cs = match col_scale {
                    Some(c) => up.put(s, c)?,
                    None => null,
                };
                let cbias = match col_bias {
                    Some(c) => up.put(s, c)?,
                    None => null,
                };
                let cb_bytes = 2 * (codebook.len() + residual.as_ref().map_or(0, |r| r.codebook.len()));
                let max_optin =
                    self.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).unwrap_or(48 * 1024)
                        as usize;
                let static_smem = 4 * (WARPS as usize) * (bn / 8) * 4 * 32 + 64;
                let in_smem = cb_bytes + static_smem <= max_optin;
                let dyn_smem = if in_smem { cb_bytes as u32 } else { 0 };
                if dyn_smem > 48 * 1024 - static_smem as u32 {
                    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dyn_smem as i32)?;
                }
                let (vv, ib, irw, ncb, insm) = (
                    *v as i32,
                    *idx_bits as i32,
                    (stream_row_bytes(out / v, *idx_bits) / 4) as i32,
                    (codebook.len() / v) as i32,
                    in_smem as i32,
                );
                self.launch_and_time(
                    layer,
                    w,
                    x,
                    batch,
                    f,
                    16,
                    bn,
                    inf.div_ceil(32),
                    dyn_smem,
                    y_buf,
                    ws_buf,
                    up,
                    vec![
                        KArg::P(idx),
                        KArg::P(cb),
                        KArg::P(ridx),
                        KArg::P(rcb),
                        KArg::P(cs),
                        KArg::P(cbias),
                        KArg::P(x_d),
                        KArg::P(y_d),
                        KArg::P(ws_d),
                        KArg::Counters,
                        KArg::I(out_i),
                        KArg::I(in_i),
                        KArg::I(batch_i),
                        KArg::I(vv),
                        KArg::I(ib),
                        KArg::I(irw),
                        KArg::I(ncb),
                        KArg::I(rib),
                        KArg::I(rrw),
                        KArg::I(n_rcb),
                        KArg::I(insm),
                        KArg::I(of16),
                    ],
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_and_time(
        &self,
        layer: &PackedOnGpu,
        w_deq: &[f32],
        x: &[f16],
        batch: usize,
        func: CudaFunction,
        rows: usize,
        bn: usize,
        units: usize,
        smem: u32,
        y_buf: CudaSlice<u8>,
        _ws_buf: CudaSlice<f32>,
        up: Uploaded,
        mut args: Vec<KArg>,
    ) -> Result<(Vec<f32>, Timing)> {
        let s = &self.stream;
        let (out, inf) = layer.shape();
        let tiles_x = out.div_ceil(rows) as u32;
        let tiles_y = batch.div_ceil(bn) as u32;
        let ks = self.ksplit(tiles_x * tiles_y, units);
        let counters = s.alloc_zeros::<i32>((tiles_x * tiles_y) as usize)?;
        let cnt_d = dptr(&counters, s);
        let cfg = LaunchConfig { grid_dim: (tiles_x, tiles_y, ks), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: smem };
        for a in args.iter_mut() {
            if let KArg::Counters = a {
                *a = KArg::P(cnt_d);
            }
        }
        let launch = || -> Result<()> {
            let mut a = s.launch_builder(&func);
            for arg in &args {
                match arg {
                    KArg::P(p) => a.arg(p),
                    KArg::I(i) => a.arg(i),
                    KArg::Counters => unreachable!("counters patched above"),
                };
            }
            // SAFETY: argument list matches the kernel signature documented in kernels/*.cu; all
            // pointers are live device allocations owned by `up`, `y_buf`, `ws_buf`, `counters`.
            unsafe { a.launch(cfg) }.map(|_| ()).map_err(|e| anyhow!("launch failed: {e:?}"))
        };
        launch()?;
        s.synchronize().context("kernel execution")?;
        let y_raw: Vec<u8> = s.clone_dtoh(&y_buf)?;
        let y = bytes_to_f32(&y_raw, self.out_f16);

        let kernel_us = self.time_us(&launch)?;

        // cuBLAS baseline on the dequantized fp16 weight.
        let w16: Vec<u16> = w_deq.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let x16: Vec<u16> = x.iter().map(|v| v.to_bits()).collect();
        let w_d = s.clone_htod(&w16)?;
        let xb_d = s.clone_htod(&x16)?;
        let mut yb_d = s.alloc_zeros::<u16>(batch * out)?;
        let (wp, xp, yp) = (dptr(&w_d, s), dptr(&xb_d, s), dptr(&yb_d, s));
        let gemm = || -> Result<()> {
            let (alpha, beta) = (1.0f32, 0.0f32);
            // y^T [out x batch] (col-major, ld out) = W^T^T: A = W viewed col-major [in x out] -> op T.
            // SAFETY: sizes match the allocations above.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    out as i32,
                    batch as i32,
                    inf as i32,
                    &alpha as *const f32 as *const _,
                    wp as *const _,
                    cudarc::cublas::sys::cudaDataType_t::CUDA_R_16F,
                    inf as i32,
                    xp as *const _,
                    cudarc::cublas::sys::cudaDataType_t::CUDA_R_16F,
                    inf as i32,
                    &beta as *const f32 as *const _,
                    yp as *mut _,
                    cudarc::cublas::sys::cudaDataType_t::CUDA_R_16F,
                    out as i32,
                    cudarc::cublas::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| anyhow!("cublasGemmEx: {e:?}"))
        };
        gemm()?;
        s.synchronize()?;
        let yb: Vec<u16> = s.clone_dtoh(&yb_d)?;
        let yb: Vec<f32> = yb.iter().map(|&v| f16::from_bits(v).to_f32()).collect();
        let cublas_us = self.time_us(&gemm)?;
        let _ = &mut yb_d;

        let bytes = layer.packed_bytes() + 2 * x.len() + y_raw.len();
        let gbps = bytes as f64 / (kernel_us * 1e-6) / 1e9;
        let peak = self.info.peak_gbps;
        let name = func_name(layer, batch);
        drop(up);
        Ok((
            y.clone(),
            Timing {
                kernel: name,
                grid: cfg.grid_dim,
                kernel_us,
                cublas_us,
                speedup: cublas_us / kernel_us,
                bytes,
                gbps,
                peak_gbps: peak,
                pct_peak: if peak > 0.0 { 100.0 * gbps / peak } else { 0.0 },
                err_vs_cublas: max_rel_err(&y, &yb),
            },
        ))
    }

    /// Median time of `f` in microseconds over `iters` runs (3 warm-ups), CUDA events.
    fn time_us(&self, f: &dyn Fn() -> Result<()>) -> Result<f64> {
        let s = &self.stream;
        for _ in 0..3 {
            f()?;
        }
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(self.iters);
        for _ in 0..self.iters.max(1) {
            let e0 = self.ctx.new_event(flags)?;
            let e1 = self.ctx.new_event(flags)?;
            e0.record(s)?;
            f()?;
            e1.record(s)?;
            times.push(e0.elapsed_ms(&e1)? as f64 * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Ok(times[times.len() / 2])
    }
}

fn func_name(layer: &PackedOnGpu, batch: usize) -> String {
    format!("{}-{}", layer.label(), if batch <= GEMV_MAX_BATCH { "gemv" } else { "gemm" })
}

fn bytes_to_f32(raw: &[u8], f16_out: bool) -> Vec<f32> {
    if f16_out {
        raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    } else {
        raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}
