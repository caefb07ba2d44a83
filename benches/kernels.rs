//! Kernel benchmark: every packed layout on 4096x4096 and 11008x4096 (out x in) layers, batch 1/8/64.
//! Prints max relative error against a CPU reference dequant-matmul (element-by-element decode of the
//! raw arrays + f64 accumulation), kernel time, GB/s of packed weight + activation + output bytes,
//! % of the DRAM peak from the device attributes, and the speedup over cuBLAS fp16 GEMM on the
//! dequantized weight. Writes JSON to `$OUT/kernels.json` (or `--json PATH`).
//!
//! Run: `cargo bench --bench kernels` (needs `[[bench]] name = "kernels" harness = false`), or the
//! built binary directly. Options: `--quick` (4096x4096 only), `--json PATH`.
#![cfg_attr(test, allow(dead_code))]

use lowbit::cuda::{self, synth, GpuGrid, GpuVerifier, PackedOnGpu};

fn layers(out: usize, inf: usize) -> Vec<PackedOnGpu> {
    let s = (out * 31 + inf) as u64;
    vec![
        synth::awq(out, inf, 128, s + 1),
        synth::gptq(out, inf, 4, 128, false, s + 2),
        synth::gptq(out, inf, 3, 128, false, s + 3),
        synth::gptq(out, inf, 2, 64, false, s + 4),
        synth::gptq(out, inf, 8, 128, false, s + 5),
        synth::gptq(out, inf, 4, 128, true, s + 6),
        synth::lowbit(out, inf, 4, 128, GpuGrid::Affine, false, s + 7),
        synth::lowbit(out, inf, 3, 128, GpuGrid::Affine, false, s + 8),
        synth::lowbit(out, inf, 2, 64, GpuGrid::HalfInt, false, s + 9),
        synth::lowbit(out, inf, 4, 128, GpuGrid::HalfInt, false, s + 10),
        synth::lowbit(out, inf, 3, 128, GpuGrid::Shift, false, s + 11),
        synth::lowbit(out, inf, 4, 128, GpuGrid::Shift, false, s + 12),
        synth::lowbit(out, inf, 8, 128, GpuGrid::Affine, false, s + 13),
        synth::lowbit(out, inf, 4, 128, GpuGrid::Affine, true, s + 14),
        synth::vq(out, inf, 8, 12, true, true, s + 15),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("OUT").ok().map(|d| format!("{d}/kernels.json")));

    let required = std::env::var("LOWBIT_REQUIRE_GPU").map(|v| v == "1").unwrap_or(false);
    if !cuda::gpu_available() {
        eprintln!("SKIP: kernels bench: no CUDA GPU (libcuda missing or no device)");
        std::process::exit(if required { 1 } else { 0 });
    }
    let mut gv = match GpuVerifier::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIP: kernels bench: {e:#}");
            return;
        }
    };
    gv.iters = 20;
    let dev = gv.device().clone();
    println!("device: {} (sm_{}{}), {} SMs, peak DRAM {:.0} GB/s", dev.name, dev.cc.0, dev.cc.1, dev.sms, dev.peak_gbps);
    println!(
        "{:<24} {:>11} {:>5} {:>10} {:>10} {:>9} {:>7} {:>10} {:>8} {:>8}",
        "layout", "out x in", "batch", "kernel_us", "cublas_us", "GB/s", "%peak", "speedup", "err_ref", "err_cub"
    );
    let shapes: &[(usize, usize)] = if quick { &[(4096, 4096)] } else { &[(4096, 4096), (11008, 4096)] };
    let mut rows = Vec::new();
    let mut worst = 0f64;
    let mut failures = 0usize;
    for &(out, inf) in shapes {
        for layer in layers(out, inf) {
            let w = layer.dequantize();
            for batch in [1usize, 8, 64] {
                let x = synth::activations(batch, inf, batch as u64 + 99);
                let want = cuda::reference_matmul(&w, &x, batch, out, inf);
                match gv.run_with_dequant(&layer, &x, batch, &w) {
                    Ok((got, t)) => {
                        let err = cuda::max_rel_err(&got, &want);
                        worst = worst.max(err);
                        if err >= 5e-3 {
                            failures += 1;
                        }
                        println!(
                            "{:<24} {:>11} {:>5} {:>10.2} {:>10.2} {:>9.1} {:>6.1}% {:>9.2}x {:>8.1e} {:>8.1e}",
                            layer.label(),
                            format!("{out}x{inf}"),
                            batch,
                            t.kernel_us,
                            t.cublas_us,
                            t.gbps,
                            t.pct_peak,
                            t.speedup,
                            err,
                            t.err_vs_cublas
                        );
                        rows.push(serde_json::json!({
                            "layout": layer.label(), "out": out, "in": inf, "batch": batch,
                            "kernel": t.kernel, "grid": [t.grid.0, t.grid.1, t.grid.2],
                            "kernel_us": t.kernel_us, "cublas_us": t.cublas_us, "speedup": t.speedup,
                            "bytes": t.bytes, "gbps": t.gbps, "peak_gbps": t.peak_gbps, "pct_peak": t.pct_peak,
                            "max_rel_err_vs_cpu": err, "max_rel_err_vs_cublas": t.err_vs_cublas,
                        }));
                    }
                    Err(e) => {
                        failures += 1;
                        println!("{:<24} {:>11} {:>5} ERROR {e:#}", layer.label(), format!("{out}x{inf}"), batch);
                        rows.push(serde_json::json!({
                            "layout": layer.label(), "out": out, "in": inf, "batch": batch, "error": format!("{e:#}"),
                        }));
                    }
                }
            }
        }
    }
    println!("worst max rel err vs CPU reference: {worst:.2e}; {failures} failures (err >= 5e-3 or error)");
    if let Some(p) = json_path {
        let doc = serde_json::json!({
            "device": dev.name, "cc": [dev.cc.0, dev.cc.1], "sms": dev.sms, "peak_gbps": dev.peak_gbps,
            "results": rows, "worst_rel_err": worst, "failures": failures,
        });
        match std::fs::write(&p, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            Ok(()) => println!("wrote {p}"),
            Err(e) => eprintln!("could not write {p}: {e}"),
        }
    }
    if failures > 0 {
        std::process::exit(1);
    }
}
