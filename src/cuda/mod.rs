//! GPU dequant-matmul runner for the packed layouts (cudarc 0.19, dynamic loading; kernels from
//! prebuilt images or NVRTC; cuBLAS baseline). One file per concern:
//!
//! * [`probe`]: libcuda / libnvrtc / libcublas present? which versions? Never panics.
//! * [`compile`]: kernel sources (`kernels/*.cu`, embedded), variants, NVRTC, prebuilt images.
//! * [`layer`]: [`PackedOnGpu`], a packed layer as raw host arrays, with the kernels' constraints;
//!   [`from_pack`] builds it from the pack types of src/pack/.
//! * [`reference`]: the CPU decoder of those arrays, the f64 reference matmul, the NaN-aware error.
//! * [`synth`]: random layers of every layout for tests and the benchmark.
//! * [`arrange`], [`vqt`]: the GPU-side arrangements made at upload for the bandwidth kernels.
//! * [`upload`]: what is uploaded per layer and how each kernel is launched.
//! * [`runner`]: [`GpuVerifier`]: device, module cache, upload, bind, launch, read back.
//! * [`timing`]: events around back-to-back launches, cuBLAS baseline, copy ceiling.
//!
//! Without a GPU (or without libcuda / libnvrtc) every fallible function returns an error; nothing
//! here panics on a machine without CUDA. See docs/kernels.md for the kernel design.

pub mod arrange;
pub mod compile;
pub mod from_pack;
pub mod layer;
pub mod probe;
pub mod reference;
pub mod runner;
pub mod synth;
pub mod timing;
pub mod upload;
pub mod vqt;

pub use compile::{compile_family, compute_arch, kernel_source, kernel_sources_hash, Variant, COMMON_CUH, KERNEL_FAMILIES};
pub use layer::{stream_row_bytes, trivial_g_idx, GpuGrid, PackedOnGpu, VqOutliers, VqResidual};
pub use probe::{gpu_available, library_versions, nvrtc_available, pip_cuda_dir, preload_nvrtc};
pub use reference::{err_ok, max_rel_err, reference_matmul};
pub use runner::{Bound, DeviceInfo, DeviceLayer, GpuVerifier};
pub use timing::{Run, Timing};
pub use upload::{KernelPath, GEMM_BN, GEMV_MAX_BATCH, WARPS};
