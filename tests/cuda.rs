//! CUDA kernel tests. Each test prints a visible `SKIP:` line and passes when its requirement
//! (libnvrtc for the compile test, a GPU for the correctness test) is missing.
//! `LOWBIT_REQUIRE_NVRTC=1` / `LOWBIT_REQUIRE_GPU=1` turn those skips into failures (used by
//! scripts/ci-kernels.sh --nvrtc and scripts/gpu-check.sh).

use lowbit::cuda::{self, synth, GpuGrid, GpuVerifier, PackedOnGpu};

fn require(var: &str) -> bool {
    std::env::var(var).map(|v| v == "1").unwrap_or(false)
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if !cuda::nvrtc_available() {
        assert!(!require("LOWBIT_REQUIRE_NVRTC"), "LOWBIT_REQUIRE_NVRTC=1 but libnvrtc was not found");
        eprintln!("SKIP: nvrtc_compiles_every_kernel: libnvrtc not found (run scripts/ci-kernels.sh to install it into ~/.cache/lowbit-cuda, or set LOWBIT_NVRTC=/path/libnvrtc.so.12)");
        return;
    }
    if let Some(p) = cuda::preload_nvrtc() {
        eprintln!("NVRTC from {}", p.display());
    }
    // lowbit is compiled once per bit width (as the runner does) to keep it quick; the full file
    // (all widths) is what nvcc checks in scripts/ci-kernels.sh.
    let mut jobs: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        ("awq", vec![], vec!["awq_gemv".into(), "awq_gemm".into()]),
        ("gptq", vec![], vec!["gptq_b3_gemv".into(), "gptq_b8_gemm_pc".into()]),
        ("vq", vec![], vec!["vq_gemv".into(), "vq_gemm".into()]),
    ];
    for b in 2..=8 {
        jobs.push((
            "lowbit",
            vec![format!("LOWBIT_BITS={b}")],
            vec![format!("lowbit_affine_b{b}_gemv"), format!("lowbit_halfint_b{b}_gemm"), format!("lowbit_shift_b{b}_gemv_pc")],
        ));
    }
    for arch in ["compute_80", "compute_90"] {
        for (fam, defs, names) in &jobs {
            let t = std::time::Instant::now();
            let ptx = cuda::compile_family(fam, arch, defs).unwrap_or_else(|e| panic!("{fam} {defs:?} {arch}: {e:#}"));
            let src = ptx.to_src();
            for n in names {
                assert!(src.contains(&format!(".entry {n}(")), "{fam}: entry {n} missing from PTX");
            }
            assert!(src.contains("mma.sync.aligned.m16n8k16"), "{fam}: no tensor-core mma in PTX");
            eprintln!("nvrtc ok: {fam:7} {:16} {arch} {:6} bytes PTX {:.1} s", defs.join(","), src.len(), t.elapsed().as_secs_f64());
        }
    }
}

#[test]
fn gpu_available_does_not_panic() {
    // Must return normally on machines without libcuda.
    let has = cuda::gpu_available();
    eprintln!("gpu_available() = {has}");
    if !has {
        let err = GpuVerifier::new(0).err().expect("GpuVerifier::new must fail without a GPU");
        eprintln!("GpuVerifier::new(0) without a GPU: {err:#}");
    }
}

/// Layers covering every layout and the awkward shapes (ragged in / out, short last group,
/// act-order, per-column paths, residual VQ, multi-word windows).
fn test_layers() -> Vec<PackedOnGpu> {
    let mut v = vec![
        synth::awq(192, 256, 64, 1),
        synth::awq(64, 128, 128, 2),
        synth::gptq(96, 256, 4, 128, false, 3),
        synth::gptq(64, 320, 3, 64, false, 4),
        synth::gptq(64, 256, 2, 32, false, 5),
        synth::gptq(64, 256, 8, 128, false, 6),
        synth::gptq(96, 256, 4, 64, true, 7),
        synth::gptq(64, 192, 3, 32, true, 8),
        synth::vq(96, 200, 8, 10, false, false, 9),
        synth::vq(64, 130, 4, 8, true, true, 10),
        synth::vq(96, 64, 2, 12, false, true, 11),
    ];
    let mut seed = 100;
    for bits in 2..=8u32 {
        for grid in [GpuGrid::Affine, GpuGrid::HalfInt, GpuGrid::Shift] {
            seed += 1;
            // ragged: out not a multiple of 16, in not a multiple of 128, short last group
            v.push(synth::lowbit(40, 300, bits, 64, grid, false, seed));
        }
        v.push(synth::lowbit(32, 256, bits, 128, GpuGrid::Affine, true, seed + 50));
        v.push(synth::lowbit(48, 200, bits, 40, GpuGrid::Shift, false, seed + 60));
    }
    v
}

#[test]
fn packing_roundtrip_cpu() {
    // The synthetic packers and the CPU reference must agree with each other on values that are
    // easy to check independently: every dequantized value is finite and within the grid's range.
    for l in test_layers() {
        l.validate().unwrap_or_else(|e| panic!("{}: {e:#}", l.label()));
        let (o, i) = l.shape();
        let w = l.dequantize();
        assert_eq!(w.len(), o * i);
        assert!(w.iter().all(|v| v.is_finite()), "{}", l.label());
        assert!(w.iter().any(|&v| v != 0.0), "{}: all zero", l.label());
    }
    // Spot checks of exact decodes.
    let l = synth::lowbit(1, 16, 4, 16, GpuGrid::Shift, false, 1);
    if let PackedOnGpu::Lowbit { qweight, scales, .. } = &l {
        let w = l.dequantize();
        for (c, wv) in w.iter().enumerate() {
            let code = (qweight[c / 2] >> (4 * (c % 2))) & 15;
            let mag = scales[0].to_f32() / (1u32 << (code & 7)) as f32;
            assert_eq!(*wv, if code & 8 != 0 { -mag } else { mag });
        }
    }
}

#[test]
fn gpu_kernels_match_cpu_reference() {
    if !cuda::gpu_available() {
        assert!(!require("LOWBIT_REQUIRE_GPU"), "LOWBIT_REQUIRE_GPU=1 but no GPU was found");
        eprintln!("SKIP: gpu_kernels_match_cpu_reference: no CUDA GPU (libcuda missing or no device)");
        return;
    }
    let mut gv = GpuVerifier::new(0).expect("GPU present but GpuVerifier::new failed");
    gv.iters = 2;
    let mut failures = Vec::new();
    for l in test_layers() {
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 8, 13, 40] {
            let x = synth::activations(batch, i, 7 + batch as u64);
            let want = cuda::reference_matmul(&w, &x, batch, o, i);
            match gv.run_with_dequant(&l, &x, batch, &w) {
                Ok((got, t)) => {
                    let err = cuda::max_rel_err(&got, &want);
                    let ok = err < 5e-3;
                    eprintln!(
                        "{} {:<28} batch {batch:3}: max rel err {err:.2e} (vs cuBLAS {:.2e}) grid {:?}",
                        if ok { "ok  " } else { "FAIL" },
                        l.label(),
                        t.err_vs_cublas,
                        t.grid
                    );
                    if !ok {
                        failures.push(format!("{} batch {batch}: err {err:.3e}", l.label()));
                    }
                }
                Err(e) => failures.push(format!("{} batch {batch}: {e:#}", l.label())),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
