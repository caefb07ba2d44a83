//! Kernel sources and how they become device code: prebuilt images from a bundle
//! (scripts/gpu-bundle.sh: NVRTC 12.9 PTX, ptxas 12.9 cubins for sm_80 and sm_90) or NVRTC at run
//! time. A kernel *variant* is one family (`kernels/<family>.cu`) with a set of `-D` defines.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use super::probe::{nvrtc_available, quiet_catch};

/// Shared header, pasted in front of every kernel file before NVRTC sees it.
pub const COMMON_CUH: &str = include_str!("../../kernels/common.cuh");
/// Kernel families: (name, source). Each `kernels/<name>.cu` compiles standalone with nvcc too.
pub const KERNEL_FAMILIES: [(&str, &str); 6] = [
    ("awq", include_str!("../../kernels/awq.cu")),
    ("gptq", include_str!("../../kernels/gptq.cu")),
    ("lowbit", include_str!("../../kernels/lowbit.cu")),
    ("vq", include_str!("../../kernels/vq.cu")),
    ("gq", include_str!("../../kernels/gq.cu")),
    ("vqt", include_str!("../../kernels/vqt.cu")),
];

/// Environment variable naming a directory of prebuilt kernel images (written by
/// scripts/gpu-bundle.sh); when set, images are required (no silent fallback to NVRTC).
pub const KERNEL_DIR_ENV: &str = "LOWBIT_KERNEL_DIR";
/// File in that directory recording which kernel sources the images were built from.
pub const KERNEL_MANIFEST: &str = "MANIFEST";

/// One compiled unit: a family and its `-D` defines.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub family: &'static str,
    pub defines: Vec<String>,
}

impl Variant {
    pub fn new(family: &'static str, defines: &[String]) -> Self {
        Variant { family, defines: defines.to_vec() }
    }
    /// File stem of its images, e.g. `lowbit-LOWBIT_BITS_4`.
    pub fn stem(&self) -> String {
        let mut s = self.family.to_string();
        for d in &self.defines {
            s.push('-');
            s.extend(d.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
        }
        s
    }
}

/// Every variant the runner can ask for (the bundle precompiles exactly these).
pub fn all_variants() -> Vec<Variant> {
    let mut v = vec![Variant::new("awq", &[]), Variant::new("gptq", &[]), Variant::new("vq", &[]), Variant::new("vqt", &[])];
    for b in 2..=8 {
        v.push(Variant::new("lowbit", &[format!("LOWBIT_BITS={b}")]));
        v.push(Variant::new("gq", &[format!("GQ_BITS={b}")]));
    }
    v
}

/// SHA-256 (hex) of the kernel sources compiled into this binary; prebuilt images must carry the
/// same value in their MANIFEST.
pub fn kernel_sources_hash() -> String {
    let mut h = Sha256::new();
    for (name, src) in std::iter::once(("common.cuh", COMMON_CUH)).chain(KERNEL_FAMILIES.iter().map(|(n, s)| (*n, *s))) {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((src.len() as u64).to_le_bytes());
        h.update(src.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

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

/// Writes the PTX of every variant for `arch` (e.g. `compute_90`) into `dir` as
/// `<stem>.<arch>.ptx`, plus the MANIFEST; returns the files written.
pub fn emit_ptx(dir: &Path, archs: &[&'static str]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for arch in archs {
        for v in all_variants() {
            let ptx = compile_family(v.family, arch, &v.defines)?;
            let p = dir.join(format!("{}.{arch}.ptx", v.stem()));
            std::fs::write(&p, ptx.to_src()).with_context(|| format!("writing {}", p.display()))?;
            written.push(p);
        }
    }
    let m = dir.join(KERNEL_MANIFEST);
    std::fs::write(&m, format!("kernel-sources-sha256 {}\n", kernel_sources_hash())).with_context(|| format!("writing {}", m.display()))?;
    written.push(m);
    Ok(written)
}

/// Where prebuilt images live, when `$LOWBIT_KERNEL_DIR` is set: checks its MANIFEST against the
/// kernel sources of this binary and refuses a stale directory.
pub fn prebuilt_dir() -> Result<Option<PathBuf>> {
    let Some(d) = std::env::var_os(KERNEL_DIR_ENV) else { return Ok(None) };
    let d = PathBuf::from(d);
    let m = d.join(KERNEL_MANIFEST);
    let text = std::fs::read_to_string(&m).with_context(|| format!("{}: cannot read ({KERNEL_DIR_ENV} is set)", m.display()))?;
    let want = kernel_sources_hash();
    let got = text.lines().find_map(|l| l.strip_prefix("kernel-sources-sha256 ")).map(str::trim);
    match got {
        Some(g) if g == want => Ok(Some(d)),
        Some(g) => {
            bail!("{}: stale kernel images (built from kernel sources {g}, this binary has {want}); rebuild the bundle", m.display())
        }
        None => bail!("{}: no kernel-sources-sha256 line", m.display()),
    }
}

/// The image to load for `v` on a device of compute capability `cc` from a prebuilt directory:
/// the cubin for that exact SM if present, else the newest PTX not above the device (JIT by the
/// driver). `None` when the directory holds nothing usable for this device.
pub fn prebuilt_image(dir: &Path, v: &Variant, cc: (i32, i32)) -> Result<Option<(PathBuf, cudarc::nvrtc::Ptx)>> {
    let stem = v.stem();
    let cubin = dir.join(format!("{stem}.sm_{}{}.cubin", cc.0, cc.1));
    if cubin.is_file() {
        let bytes = std::fs::read(&cubin).with_context(|| format!("reading {}", cubin.display()))?;
        return Ok(Some((cubin, cudarc::nvrtc::Ptx::from_binary(bytes))));
    }
    let dev = cc.0 * 10 + cc.1;
    for a in [90, 80] {
        let ptx = dir.join(format!("{stem}.compute_{a}.ptx"));
        if a <= dev && ptx.is_file() {
            let src = std::fs::read_to_string(&ptx).with_context(|| format!("reading {}", ptx.display()))?;
            return Ok(Some((ptx, cudarc::nvrtc::Ptx::from_src(src))));
        }
    }
    Ok(None)
}
