//! Library probing: libcuda, libnvrtc and libcublas are loaded at run time (cudarc's dynamic
//! loading), so every probe here returns a plain answer and never panics on a machine without them.

use std::path::PathBuf;

use cudarc::driver::{sys, CudaContext};

extern "C" {
    fn dlopen(filename: *const std::os::raw::c_char, flag: std::os::raw::c_int) -> *mut std::ffi::c_void;
}
const RTLD_NOW: std::os::raw::c_int = 2;
const RTLD_GLOBAL: std::os::raw::c_int = 0x100;

/// Where the PyPI CUDA wheels of scripts/ci-kernels.sh live (`$LOWBIT_CUDA_DIR`, default
/// `~/.cache/lowbit-cuda`).
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

/// Runs `f`, turning a panic (cudarc panics when a library or symbol is missing) into `None`
/// without printing the panic message.
pub(crate) fn quiet_catch<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
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

/// `major.minor` of an encoded CUDA version (`1000 * major + 10 * minor`).
pub fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// One line per library: what is loaded and which version it reports (for the first lines of
/// scripts/gpu-check.sh and `lowbit verify`). Never panics; a missing library says so.
pub fn library_versions() -> Vec<String> {
    let mut out = Vec::new();
    let driver = quiet_catch(|| {
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        let mut v = 0i32;
        // SAFETY: writes one int.
        let r = unsafe { sys::cuDriverGetVersion(&mut v) };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
    })
    .flatten();
    out.push(match driver {
        Some(v) => format!("libcuda: driver API {}", version_string(v)),
        None => "libcuda: not loaded".into(),
    });
    let nvrtc = if nvrtc_available() {
        quiet_catch(|| {
            let (mut a, mut b) = (0i32, 0i32);
            // SAFETY: writes two ints.
            let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
            (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{a}.{b}"))
        })
        .flatten()
    } else {
        None
    };
    out.push(match nvrtc {
        Some(v) => format!("libnvrtc: {v} (used only when no prebuilt kernel image matches the device)"),
        None => "libnvrtc: not loaded (fine when prebuilt kernel images are used)".into(),
    });
    let cublas = quiet_catch(|| {
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return None;
        }
        // SAFETY: cublasGetProperty writes one int per call.
        let get = |p| {
            let mut v = 0i32;
            let r = unsafe { cudarc::cublas::sys::cublasGetProperty(p, &mut v) };
            (r == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
        };
        use cudarc::cublas::sys::libraryPropertyType::*;
        Some(format!("{}.{}.{}", get(MAJOR_VERSION)?, get(MINOR_VERSION)?, get(PATCH_LEVEL)?))
    })
    .flatten();
    out.push(match cublas {
        Some(v) => format!("libcublas: {v}"),
        None => "libcublas: not loaded".into(),
    });
    out
}
