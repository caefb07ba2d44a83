//! The GPU runner: opens the device, loads kernel images (prebuilt or NVRTC), uploads layers,
//! binds activations/output/workspace for a batch size and launches.

use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

use super::compile::{compile_family, compute_arch, prebuilt_dir, prebuilt_image, Variant};
use super::layer::PackedOnGpu;
use super::probe::{gpu_available, quiet_catch};
use super::upload::{host_layer, HostLayer, KArg, KernelPath, LaunchPlan, XMap, GEMM_BN, GEMV_MAX_BATCH, WARPS};

/// Device information used for the bandwidth figures and the split-K sizing.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub cc: (i32, i32),
    pub sms: u32,
    /// Peak DRAM bandwidth from the device attributes (memory clock x bus width x 2), GB/s; 0 if
    /// the driver does not report it.
    pub peak_gbps: f64,
    pub l2_bytes: usize,
    pub max_smem_optin: usize,
}

/// Compiles or loads the kernels (lazily per variant), uploads layers and runs them.
pub struct GpuVerifier {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Option<cudarc::cublas::CudaBlas>,
    pub(crate) blas_error: Option<String>,
    arch: &'static str,
    pub(crate) info: DeviceInfo,
    kernel_dir: Option<PathBuf>,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    loaded_from: Mutex<Vec<String>>,
    /// Timed repetitions (median is reported).
    pub iters: usize,
    /// Launches between one pair of events when timing.
    pub launches_per_pair: usize,
    /// Output in fp16 (true) or fp32 (false).
    pub out_f16: bool,
    /// Which kernels run the layers (`$LOWBIT_KERNELS`, default tiled).
    pub path: KernelPath,
}

/// A layer resident on the device.
pub struct DeviceLayer {
    pub label: String,
    pub out: usize,
    pub inf: usize,
    /// Bytes of the uploaded arrays.
    pub bytes: usize,
    bufs: Vec<CudaSlice<u8>>,
    launches: Vec<LaunchPlan>,
}

/// A [`DeviceLayer`] bound to a batch size: activations, output and split-K workspace allocated,
/// kernels loaded, launch geometry fixed.
pub struct Bound<'a> {
    pub layer: &'a DeviceLayer,
    pub batch: usize,
    parts: Vec<BoundLaunch>,
}

enum ArgVal {
    P(u64),
    I(i32),
}

struct BoundLaunch {
    func: CudaFunction,
    cfg: LaunchConfig,
    args: Vec<ArgVal>,
    xmap: XMap,
    inf: usize,
    x: CudaSlice<u16>,
    y: CudaSlice<u8>,
    _ws: CudaSlice<f32>,
    _counters: CudaSlice<i32>,
    entry: String,
}

pub(crate) fn dptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _g) = s.device_ptr(stream);
    p
}

impl GpuVerifier {
    /// Opens device `ordinal`. Errors (never panics) when there is no usable GPU. cuBLAS is
    /// optional (only the baseline needs it): without it [`Self::blas_error`] says why.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !gpu_available() {
            bail!("no CUDA GPU available (libcuda missing or no device)");
        }
        let kernel_dir = prebuilt_dir()?;
        let path = KernelPath::from_env()?;
        let ctx = quiet_catch(|| CudaContext::new(ordinal))
            .ok_or_else(|| anyhow!("CudaContext::new panicked"))?
            .context("creating CUDA context")?;
        let stream = ctx.default_stream();
        let (blas, blas_error) = match quiet_catch({
            let s = stream.clone();
            move || cudarc::cublas::CudaBlas::new(s)
        }) {
            Some(Ok(b)) => (Some(b), None),
            Some(Err(e)) => (None, Some(format!("cuBLAS init failed: {e:?}"))),
            None => (None, Some("libcublas could not be loaded".to_string())),
        };
        let cc = ctx.compute_capability()?;
        if cc.0 < 8 {
            bail!("kernels need sm_80 or newer, device is sm_{}{}", cc.0, cc.1);
        }
        let attr = |a| ctx.attribute(a).unwrap_or(0);
        use sys::CUdevice_attribute::*;
        let clock_khz = attr(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) as f64;
        let bus_bits = attr(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) as f64;
        let info = DeviceInfo {
            name: ctx.name().unwrap_or_else(|_| "?".into()),
            cc,
            sms: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).max(1) as u32,
            peak_gbps: clock_khz * 1e3 * 2.0 * bus_bits / 8.0 / 1e9,
            l2_bytes: attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE).max(0) as usize,
            max_smem_optin: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).max(48 * 1024) as usize,
        };
        Ok(GpuVerifier {
            arch: compute_arch(cc.0, cc.1),
            ctx,
            stream,
            blas,
            blas_error,
            info,
            kernel_dir,
            modules: Default::default(),
            loaded_from: Default::default(),
            iters: 20,
            launches_per_pair: 10,
            out_f16: false,
            path,
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// Why the cuBLAS baseline is unavailable (None when it is available).
    pub fn blas_error(&self) -> Option<&str> {
        self.blas_error.as_deref()
    }

    /// Where each loaded kernel image came from (prebuilt file or NVRTC), one line per variant.
    pub fn kernel_origins(&self) -> Vec<String> {
        self.loaded_from.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn module(&self, v: &Variant) -> Result<Arc<CudaModule>> {
        let key = v.stem();
        let mut m = self.modules.lock().map_err(|_| anyhow!("module cache poisoned"))?;
        if let Some(md) = m.get(&key) {
            return Ok(md.clone());
        }
        let (image, origin) = match &self.kernel_dir {
            Some(dir) => match prebuilt_image(dir, v, self.info.cc)? {
                Some((path, img)) => (img, path.display().to_string()),
                None => bail!(
                    "{}: no kernel image for {key} usable on sm_{}{} (expected {key}.sm_{}{}.cubin or a PTX file)",
                    dir.display(),
                    self.info.cc.0,
                    self.info.cc.1,
                    self.info.cc.0,
                    self.info.cc.1
                ),
            },
            None => (compile_family(v.family, self.arch, &v.defines)?, format!("NVRTC {}", self.arch)),
        };
        let md = self.ctx.load_module(image).with_context(|| format!("loading kernel image {origin}"))?;
        if let Ok(mut l) = self.loaded_from.lock() {
            l.push(format!("{key}: {origin}"));
        }
        m.insert(key, md.clone());
        Ok(md)
    }

    fn function(&self, v: &Variant, name: &str) -> Result<CudaFunction> {
        self.module(v)?.load_function(name).with_context(|| format!("kernel {name} not found in {}", v.stem()))
    }

    /// Uploads a layer (its kernel arrangement) to the device.
    pub fn upload(&self, layer: &PackedOnGpu) -> Result<DeviceLayer> {
        self.upload_host(host_layer(layer, self.path, self.info.max_smem_optin)?)
    }

    pub(crate) fn upload_host(&self, h: HostLayer) -> Result<DeviceLayer> {
        let s = &self.stream;
        let bufs = h
            .bufs
            .iter()
            .map(|b| if b.is_empty() { s.alloc_zeros::<u8>(16) } else { s.clone_htod(b.as_slice()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceLayer { label: h.label.clone(), out: h.out, inf: h.inf, bytes: h.bytes(), bufs, launches: h.launches })
    }

    /// A second copy of an uploaded layer in fresh device memory (the benchmark's rotating set).
    pub fn replicate(&self, l: &DeviceLayer) -> Result<DeviceLayer> {
        let s = &self.stream;
        let mut bufs = Vec::with_capacity(l.bufs.len());
        for b in &l.bufs {
            let mut c = unsafe { s.alloc::<u8>(b.len()) }?;
            s.memcpy_dtod(b, &mut c)?;
            bufs.push(c);
        }
        Ok(DeviceLayer { label: l.label.clone(), out: l.out, inf: l.inf, bytes: l.bytes, bufs, launches: l.launches.clone() })
    }

    /// Binds `l` to a batch size.
    pub fn bind<'a>(&self, l: &'a DeviceLayer, batch: usize) -> Result<Bound<'a>> {
        if batch == 0 {
            bail!("batch must be at least 1");
        }
        let s = &self.stream;
        let bn = if batch <= GEMV_MAX_BATCH { 8 } else { GEMM_BN };
        let mut parts = Vec::new();
        for p in &l.launches {
            let entry = p.entry(batch).to_string();
            let func = self.function(&p.variant, &entry)?;
            let mut smem = p.smem;
            let granted =
                (smem as usize) + 16 * 1024 <= self.info.max_smem_optin || (p.persistent && smem as usize <= self.info.max_smem_optin);
            if p.persistent && !granted {
                bail!("{entry}: needs {smem} bytes of shared memory, the device allows {}", self.info.max_smem_optin);
            }
            if !granted {
                smem = 0;
            } else if smem > 0 {
                func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
            }
            let tiles_x = p.out.div_ceil(p.rows) as u32;
            let tiles_y = batch.div_ceil(bn) as u32;
            let per_sm = func.occupancy_max_active_blocks_per_multiprocessor(32 * WARPS, smem as usize, None).unwrap_or(1).max(1);
            let target = per_sm * self.info.sms;
            if p.persistent && per_sm == 0 {
                bail!("{entry}: does not fit on an SM with {smem} bytes of shared memory");
            }
            let ks = ksplit_for(target, tiles_x * tiles_y, p.units, p.min_units_per_split);
            let items = tiles_x * tiles_y * ks;
            let grid_dim = if p.persistent { (items.min(target), 1, 1) } else { (tiles_x, tiles_y, ks) };
            let x = s.alloc_zeros::<u16>((batch * p.inf).max(1))?;
            let y = s.alloc_zeros::<u8>(batch * p.out * if self.out_f16 { 2 } else { 4 })?;
            let ws = s.alloc_zeros::<f32>(batch * p.out)?;
            let counters = s.alloc_zeros::<i32>((tiles_x * tiles_y) as usize)?;
            let args = p
                .args
                .iter()
                .map(|a| match *a {
                    KArg::Buf(i) => ArgVal::P(dptr(&l.bufs[i], s)),
                    KArg::Null => ArgVal::P(0),
                    KArg::I(v) => ArgVal::I(v),
                    KArg::X => ArgVal::P(dptr(&x, s)),
                    KArg::Y => ArgVal::P(dptr(&y, s)),
                    KArg::Ws => ArgVal::P(dptr(&ws, s)),
                    KArg::Counters => ArgVal::P(dptr(&counters, s)),
                    KArg::Batch => ArgVal::I(batch as i32),
                    KArg::OutF16 => ArgVal::I(self.out_f16 as i32),
                    KArg::SmemFlag => ArgVal::I(granted as i32),
                    KArg::Items => ArgVal::I(items as i32),
                    KArg::NSplit => ArgVal::I(ks as i32),
                    KArg::NTileY => ArgVal::I(tiles_y as i32),
                })
                .collect();
            let cfg = LaunchConfig { grid_dim, block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: smem };
            parts.push(BoundLaunch { func, cfg, args, xmap: p.xmap.clone(), inf: p.inf, x, y, _ws: ws, _counters: counters, entry });
        }
        Ok(Bound { layer: l, batch, parts })
    }

    /// Copies the activations `x` (`[batch, in]`) to the device (through each launch's map).
    pub fn set_x(&self, b: &mut Bound<'_>, x: &[f16]) -> Result<()> {
        if x.len() != b.batch * b.layer.inf {
            bail!("x has {} elements, expected batch*in = {}", x.len(), b.batch * b.layer.inf);
        }
        for p in &mut b.parts {
            let xm = p.xmap.apply(x, b.batch, b.layer.inf);
            debug_assert_eq!(xm.len(), b.batch * p.inf);
            let bits: Vec<u16> = xm.iter().map(|v| v.to_bits()).collect();
            if !bits.is_empty() {
                self.stream.memcpy_htod(&bits, &mut p.x)?;
            }
        }
        Ok(())
    }

    /// Enqueues every launch of the bound layer (no synchronisation).
    pub fn launch(&self, b: &Bound<'_>) -> Result<()> {
        for p in &b.parts {
            let mut a = self.stream.launch_builder(&p.func);
            for arg in &p.args {
                match arg {
                    ArgVal::P(v) => a.arg(v),
                    ArgVal::I(v) => a.arg(v),
                };
            }
            // SAFETY: the argument list matches the kernel signature documented in kernels/*.cu
            // (built by upload.rs for this entry point); every pointer is a live allocation owned
            // by the bound layer or by `p`.
            unsafe { a.launch(p.cfg) }.map_err(|e| anyhow!("launch of {} failed: {e:?}", p.entry))?;
        }
        Ok(())
    }

    /// Waits for the stream and reads `y` (`[batch, out]` as f32; the sum of the launches).
    pub fn read_y(&self, b: &Bound<'_>) -> Result<Vec<f32>> {
        self.stream.synchronize().context("kernel execution")?;
        let mut y = vec![0f32; b.batch * b.layer.out];
        for p in &b.parts {
            let raw: Vec<u8> = self.stream.clone_dtoh(&p.y)?;
            for (acc, v) in y.iter_mut().zip(bytes_to_f32(&raw, self.out_f16)) {
                *acc += v;
            }
        }
        Ok(y)
    }

    /// Entry points and grids of the bound launches, e.g. `lowbit_affine_b4_gemv (256,1,3)`.
    pub fn describe(&self, b: &Bound<'_>) -> String {
        b.parts.iter().map(|p| format!("{} {:?}", p.entry, p.cfg.grid_dim)).collect::<Vec<_>>().join(" + ")
    }
}

/// Split-K factor for `target` resident blocks over `tiles` output tiles: `ceil(target / tiles)`,
/// at most `units / min_units` (each split keeps `min_units` work units) and at most 64.
pub fn ksplit_for(target: u32, tiles: u32, units: usize, min_units: usize) -> u32 {
    let max_split = (units / min_units.max(1)).clamp(1, 64) as u32;
    target.div_ceil(tiles.max(1)).clamp(1, max_split)
}

fn bytes_to_f32(raw: &[u8], f16_out: bool) -> Vec<f32> {
    if f16_out {
        raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    } else {
        raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}
