//! Timing on the device: CUDA events around N back-to-back launches (no host synchronisation
//! between them), the cuBLAS fp16 baseline on the dequantized weight, and a device-to-device copy
//! as the practical bandwidth ceiling.

use anyhow::{anyhow, bail, Result};
use half::f16;

use cudarc::driver::{sys, CudaSlice};

use super::layer::PackedOnGpu;
use super::reference::max_rel_err;
use super::runner::{dptr, GpuVerifier};

/// Timing of one layer at one batch size.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// Entry points and grids.
    pub kernel: String,
    /// Median time per launch in microseconds (N back-to-back launches per event pair).
    pub kernel_us: f64,
    /// The same for cuBLAS fp16 GEMM on the dequantized weight; None without cuBLAS.
    pub cublas_us: Option<f64>,
    /// cublas_us / kernel_us
    pub speedup: Option<f64>,
    /// Bytes the launch streams: the uploaded weight arrays + activations + output.
    pub bytes: usize,
    /// bytes / kernel time, in GB/s (1e9).
    pub gbps: f64,
    /// Peak DRAM bandwidth from the device attributes, GB/s (0 when unknown).
    pub peak_gbps: f64,
    /// 100 * gbps / peak_gbps
    pub pct_peak: f64,
    /// Max relative error of the kernel against cuBLAS on the same dequantized weight.
    pub err_vs_cublas: Option<f64>,
}

/// Output of [`GpuVerifier::run_with_dequant`].
#[derive(Clone, Debug)]
pub struct Run {
    /// `y` of the first launch.
    pub y: Vec<f32>,
    /// `y` read again after the timed launches (split-K workspace and counters must have reset
    /// themselves: this must match the reference as well as `y` does).
    pub y_after_timing: Vec<f32>,
    pub timing: Timing,
}

/// fp16 copies of a dequantized weight `[out][in]` on the device, for the cuBLAS baseline.
pub struct Fp16Weights {
    pub out: usize,
    pub inf: usize,
    copies: Vec<CudaSlice<u16>>,
}

impl GpuVerifier {
    /// Median time per call of `f(i)` in microseconds: `reps` event pairs, each around `n`
    /// back-to-back calls `f(0), f(1), ...` (the caller rotates through its buffers with `i`),
    /// after one untimed round of `n` calls.
    pub fn time_per_launch(&self, n: usize, reps: usize, f: &mut dyn FnMut(usize) -> Result<()>) -> Result<f64> {
        let s = &self.stream;
        let n = n.max(1);
        for i in 0..n {
            f(i)?;
        }
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps.max(1));
        let mut k = 0usize;
        for _ in 0..reps.max(1) {
            let e0 = self.ctx.new_event(flags)?;
            let e1 = self.ctx.new_event(flags)?;
            e0.record(s)?;
            for _ in 0..n {
                f(k)?;
                k += 1;
            }
            e1.record(s)?;
            times.push(e0.elapsed_ms(&e1)? as f64 * 1e3 / n as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Device-to-device copy bandwidth (bytes read + bytes written per second, GB/s) of a
    /// `bytes`-sized buffer: the practical ceiling of a streaming kernel.
    pub fn copy_ceiling_gbps(&self, bytes: usize) -> Result<f64> {
        let s = &self.stream;
        let words = bytes / 4;
        let src = s.alloc_zeros::<u32>(words)?;
        let mut dst = s.alloc_zeros::<u32>(words)?;
        let us = self.time_per_launch(5, 5, &mut |_| s.memcpy_dtod(&src, &mut dst).map_err(|e| anyhow!("memcpy_dtod: {e:?}")))?;
        Ok(2.0 * (4 * words) as f64 / (us * 1e-6) / 1e9)
    }

    /// Uploads `copies` fp16 copies of a dequantized weight; errors without cuBLAS.
    pub fn upload_fp16(&self, w: &[f32], out: usize, inf: usize, copies: usize) -> Result<Fp16Weights> {
        if self.blas.is_none() {
            bail!("{}", self.blas_error.as_deref().unwrap_or("no cuBLAS"));
        }
        let w16: Vec<u16> = w.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let first = self.stream.clone_htod(&w16)?;
        let mut v = vec![first];
        for _ in 1..copies.max(1) {
            let mut c = unsafe { self.stream.alloc::<u16>(w16.len()) }?;
            self.stream.memcpy_dtod(&v[0], &mut c)?;
            v.push(c);
        }
        Ok(Fp16Weights { out, inf, copies: v })
    }

    /// Times cuBLAS `y = x · Wᵀ` (fp16 in/out, fp32 compute) rotating over the copies in `w`;
    /// returns (µs per call, y of the first copy).
    pub fn time_cublas(&self, w: &Fp16Weights, x: &[f16], batch: usize) -> Result<(f64, Vec<f32>)> {
        let blas = self.blas.as_ref().ok_or_else(|| anyhow!("{}", self.blas_error.as_deref().unwrap_or("no cuBLAS")))?;
        let s = &self.stream;
        let (out, inf) = (w.out, w.inf);
        let x16: Vec<u16> = x.iter().map(|v| v.to_bits()).collect();
        let xd = s.clone_htod(&x16)?;
        let yd = s.alloc_zeros::<u16>(batch * out)?;
        let (xp, yp) = (dptr(&xd, s), dptr(&yd, s));
        let ptrs: Vec<u64> = w.copies.iter().map(|c| dptr(c, s)).collect();
        let gemm = |wp: u64| -> Result<()> {
            let (alpha, beta) = (1.0f32, 0.0f32);
            // y^T [out x batch] (col-major, ld out) = W [out x in] (row-major = col-major [in x out],
            // op T) times x^T [in x batch] (col-major, ld in).
            // SAFETY: sizes match the allocations above.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *blas.handle(),
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
        gemm(ptrs[0])?;
        s.synchronize()?;
        let y: Vec<u16> = s.clone_dtoh(&yd)?;
        let y = y.iter().map(|&v| f16::from_bits(v).to_f32()).collect();
        let n = self.launches_per_pair.max(ptrs.len());
        let us = self.time_per_launch(n, self.iters, &mut |i| gemm(ptrs[i % ptrs.len()]))?;
        Ok((us, y))
    }

    /// Runs the packed layer on `x` (`[batch][in]` f16, row-major), times it and the cuBLAS
    /// baseline (single layer, no rotation: small layers stay in L2, so the GB/s are not DRAM
    /// figures; the benchmark rotates).
    pub fn run(&self, layer: &PackedOnGpu, x: &[f16], batch: usize) -> Result<Run> {
        let w = layer.dequantize();
        self.run_with_dequant(layer, x, batch, &w)
    }

    /// [`Self::run`] with the CPU-dequantized weight (`[out][in]`, from [`PackedOnGpu::dequantize`])
    /// supplied by the caller, so repeated runs of one layer decode it once.
    pub fn run_with_dequant(&self, layer: &PackedOnGpu, x: &[f16], batch: usize, w: &[f32]) -> Result<Run> {
        let (out, inf) = layer.shape();
        if w.len() != out * inf {
            bail!("dequantized weight has {} elements, expected {}", w.len(), out * inf);
        }
        let dl = self.upload(layer)?;
        let mut b = self.bind(&dl, batch)?;
        self.set_x(&mut b, x)?;
        self.launch(&b)?;
        let y = self.read_y(&b)?;
        let kernel_us = self.time_per_launch(self.launches_per_pair, self.iters, &mut |_| self.launch(&b))?;
        let y_after_timing = self.read_y(&b)?;
        let (cublas_us, err_vs_cublas) = match self.blas.is_some() {
            true => {
                let fw = self.upload_fp16(w, out, inf, 1)?;
                let (us, yb) = self.time_cublas(&fw, x, batch)?;
                (Some(us), Some(max_rel_err(&y, &yb)))
            }
            false => (None, None),
        };
        let bytes = dl.bytes + 2 * x.len() + batch * out * if self.out_f16 { 2 } else { 4 };
        let gbps = bytes as f64 / (kernel_us * 1e-6) / 1e9;
        let peak = self.info.peak_gbps;
        let timing = Timing {
            kernel: self.describe(&b),
            kernel_us,
            cublas_us,
            speedup: cublas_us.map(|c| c / kernel_us),
            bytes,
            gbps,
            peak_gbps: peak,
            pct_peak: if peak > 0.0 { 100.0 * gbps / peak } else { 0.0 },
            err_vs_cublas,
        };
        Ok(Run { y, y_after_timing, timing })
    }
}
