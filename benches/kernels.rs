//! Kernel benchmark and GPU correctness suite.
//!
//! `kernels` (default): every packed layout on 4096x4096 and 11008x4096 (out x in) layers, batch 1
//! and 8. Methodology:
//! * weights in DRAM: each layer is uploaded once and replicated on the device until the rotating
//!   set is at least 4x the L2 cache; consecutive launches use consecutive replicas;
//! * N back-to-back launches (one per replica, no host synchronisation) between one pair of CUDA
//!   events, median over repetitions;
//! * the practical ceiling: a device-to-device copy of a 1 GiB buffer (bytes read + written);
//! * the cuBLAS fp16 baseline rotates over fp16 copies of the dequantized weight the same way;
//! * every replica's output is read back after the timed launches and compared with the CPU
//!   reference (element-by-element decode + f64 accumulation); NaN or inf counts as a failure;
//! * a verdict per goal at the end (int4 GEMV >= 85% of the copy ceiling and >= 3.3x cuBLAS at
//!   batch 1; VQ >= 70%), naming each kernel and its measured fraction.
//!
//! Options: `--quick` (4096x4096 only), `--batches 1,8,64`, `--json PATH` (default
//! `$OUT/kernels.json`). Other modes: `--check` runs the GPU correctness suite (the synthetic
//! coverage layers of tests/cuda.rs at batch 1, 3, 8, 13, 40); `--emit-ptx DIR` compiles every
//! kernel variant with NVRTC for compute_80 and compute_90 into DIR (used by scripts/gpu-bundle.sh;
//! no GPU needed); `--versions` prints the library versions and the device and loads one kernel
//! image (the GPU check's first step). Exit status: 0 when every result matches the reference, 1 otherwise, 2 on bad
//! arguments or when the device cannot be used.
#![cfg_attr(test, allow(dead_code))]

use lowbit::cuda::{self, synth, GpuGrid, GpuVerifier, PackedOnGpu};
use std::path::PathBuf;

const TOL: f64 = 5e-3;

/// Per batch size: (batch, replicas, µs per launch, max error, kernel description).
type Measured = (usize, usize, f64, f64, String);
/// A goal: name, which layouts it covers, the measured value of a row, threshold, unit.
type Goal<'a> = (&'a str, &'a dyn Fn(&str) -> bool, &'a dyn Fn(&Row) -> Option<f64>, f64, &'a str);

fn layers(out: usize, inf: usize) -> Vec<PackedOnGpu> {
    let s = (out * 31 + inf) as u64;
    vec![
        synth::lowbit(out, inf, 4, 128, GpuGrid::Affine, false, s + 7),
        synth::awq(out, inf, 128, s + 1),
        synth::gptq(out, inf, 4, 128, false, s + 2),
        synth::gptq(out, inf, 3, 128, false, s + 3),
        synth::gptq(out, inf, 2, 64, false, s + 4),
        synth::gptq(out, inf, 8, 128, false, s + 5),
        synth::gptq(out, inf, 4, 128, true, s + 6),
        synth::lowbit(out, inf, 3, 128, GpuGrid::Affine, false, s + 8),
        synth::lowbit(out, inf, 2, 64, GpuGrid::HalfInt, false, s + 9),
        synth::lowbit(out, inf, 4, 128, GpuGrid::HalfInt, false, s + 10),
        synth::lowbit(out, inf, 3, 128, GpuGrid::Shift, false, s + 11),
        synth::lowbit(out, inf, 4, 128, GpuGrid::Shift, false, s + 12),
        synth::lowbit(out, inf, 8, 128, GpuGrid::Affine, false, s + 13),
        synth::lowbit(out, inf, 4, 128, GpuGrid::Affine, true, s + 14),
        synth::vq(out, inf, 8, 12, true, true, s + 15),
        synth::vq(out, inf, 8, 8, false, false, s + 16),
    ]
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

struct Row {
    layout: String,
    shape: (usize, usize),
    batch: usize,
    kernel_us: f64,
    gbps: f64,
    frac_copy: f64,
    cublas_us: Option<f64>,
    err: f64,
    kernel: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(dir) = arg_value(&args, "--emit-ptx") {
        match cuda::compile::emit_ptx(&PathBuf::from(&dir), &["compute_80", "compute_90"]) {
            Ok(files) => println!("wrote {} files to {dir}", files.len()),
            Err(e) => die(&format!("{e:#}")),
        }
        return;
    }
    for l in cuda::library_versions() {
        println!("{l}");
    }
    if !cuda::gpu_available() {
        die("kernels bench: no CUDA GPU (libcuda missing or no device)");
    }
    let mut gv = GpuVerifier::new(0).unwrap_or_else(|e| die(&format!("kernels bench: {e:#}")));
    let dev = gv.device().clone();
    println!(
        "device: {} (sm_{}{}), {} SMs, L2 {} MiB, peak DRAM {:.0} GB/s (attributes)",
        dev.name,
        dev.cc.0,
        dev.cc.1,
        dev.sms,
        dev.l2_bytes >> 20,
        dev.peak_gbps
    );
    if args.iter().any(|a| a == "--versions") {
        // Load one kernel image to prove the images fit this device and driver.
        let l = synth::lowbit(16, 64, 4, 32, GpuGrid::Affine, false, 1);
        match gv.upload(&l).and_then(|d| gv.bind(&d, 1).map(|b| gv.describe(&b))) {
            Ok(k) => println!("kernel images load: {k}"),
            Err(e) => die(&format!("kernel images do not load: {e:#}")),
        }
        for o in gv.kernel_origins() {
            println!("kernel image {o}");
        }
        return;
    }
    let failures = if args.iter().any(|a| a == "--check") { check(&mut gv) } else { bench(&mut gv, &args) };
    for o in gv.kernel_origins() {
        println!("kernel image {o}");
    }
    if failures > 0 {
        std::process::exit(1);
    }
}

/// The GPU correctness suite: every coverage layer at batch 1, 3, 8, 13, 40.
fn check(gv: &mut GpuVerifier) -> usize {
    gv.iters = 2;
    let mut failures = 0;
    let mut n = 0;
    for l in synth::coverage_layers() {
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 8, 13, 40] {
            n += 1;
            let x = synth::activations(batch, i, 7 + batch as u64);
            let want = cuda::reference_matmul(&w, &x, batch, o, i);
            match gv.run_with_dequant(&l, &x, batch, &w) {
                Ok(r) => {
                    let err = cuda::max_rel_err(&r.y, &want).max(cuda::max_rel_err(&r.y_after_timing, &want));
                    let ok = cuda::err_ok(err, TOL);
                    failures += !ok as usize;
                    println!(
                        "{} {:<28} {o:>4}x{i:<4} batch {batch:3}: max rel err {err:.2e}  {}",
                        if ok { "ok  " } else { "FAIL" },
                        l.label(),
                        r.timing.kernel
                    );
                }
                Err(e) => {
                    failures += 1;
                    println!("FAIL {:<28} {o:>4}x{i:<4} batch {batch:3}: {e:#}", l.label());
                }
            }
        }
    }
    println!("correctness: {} of {n} cases within {TOL:e} of the CPU reference", n - failures);
    failures
}

fn bench(gv: &mut GpuVerifier, args: &[String]) -> usize {
    let quick = args.iter().any(|a| a == "--quick");
    let batches: Vec<usize> = arg_value(args, "--batches")
        .map(|s| {
            s.split(',')
                .map(|b| b.trim().parse::<usize>().ok().filter(|&b| b > 0).unwrap_or_else(|| die(&format!("--batches {s}"))))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 8]);
    let json_path = arg_value(args, "--json").or_else(|| std::env::var("OUT").ok().map(|d| format!("{d}/kernels.json")));
    let dev = gv.device().clone();
    let l2 = if dev.l2_bytes > 0 { dev.l2_bytes } else { 60 << 20 };
    let rotate_bytes = 4 * l2;
    gv.iters = 7;
    let copy = gv.copy_ceiling_gbps(1 << 30).unwrap_or_else(|e| die(&format!("copy ceiling: {e:#}")));
    println!(
        "device-to-device copy of 1 GiB: {copy:.0} GB/s (the practical ceiling; {:.0}% of the attribute peak)",
        100.0 * copy / dev.peak_gbps.max(1.0)
    );
    if let Some(e) = gv.blas_error() {
        println!("cuBLAS baseline unavailable: {e}");
    }
    println!("rotating set per layer: >= {} MiB (4x L2)", rotate_bytes >> 20);
    println!(
        "{:<24} {:>11} {:>5} {:>5} {:>10} {:>9} {:>7} {:>10} {:>8} {:>9}  kernel",
        "layout", "out x in", "batch", "reps", "kernel_us", "GB/s", "%copy", "cublas_us", "speedup", "max_err"
    );
    let shapes: &[(usize, usize)] = if quick { &[(4096, 4096)] } else { &[(4096, 4096), (11008, 4096)] };
    let mut rows: Vec<Row> = Vec::new();
    let mut json = Vec::new();
    let mut failures = 0usize;
    for &(out, inf) in shapes {
        // cuBLAS fp16 time depends on the shape only: measured once per shape and batch.
        let mut cublas: Vec<Option<f64>> = vec![None; batches.len()];
        for (li, layer) in layers(out, inf).into_iter().enumerate() {
            let w = layer.dequantize();
            if li == 0 {
                let copies = rotate_bytes.div_ceil(2 * out * inf).max(2);
                if let Ok(fw) = gv.upload_fp16(&w, out, inf, copies) {
                    for (bi, &b) in batches.iter().enumerate() {
                        let x = synth::activations(b, inf, 5);
                        cublas[bi] = gv.time_cublas(&fw, &x, b).ok().map(|t| t.0);
                    }
                }
            }
            let res = (|| -> anyhow::Result<(usize, Vec<Measured>)> {
                let first = gv.upload(&layer)?;
                let dev_bytes = first.bytes;
                let copies = rotate_bytes.div_ceil(first.bytes).clamp(2, 256);
                let mut reps = vec![first];
                for _ in 1..copies {
                    reps.push(gv.replicate(&reps[0])?);
                }
                let mut out_rows = Vec::new();
                for &b in &batches {
                    let x = synth::activations(b, inf, b as u64 + 99);
                    let want = cuda::reference_matmul(&w, &x, b, out, inf);
                    let mut bound = Vec::new();
                    for r in &reps {
                        let mut bd = gv.bind(r, b)?;
                        gv.set_x(&mut bd, &x)?;
                        bound.push(bd);
                    }
                    gv.launch(&bound[0])?;
                    let mut err = cuda::max_rel_err(&gv.read_y(&bound[0])?, &want);
                    let n = bound.len();
                    let us = gv.time_per_launch(n, gv.iters, &mut |i| gv.launch(&bound[i % n]))?;
                    // Re-check every replica after the timed launches.
                    for bd in &bound {
                        err = err.max(cuda::max_rel_err(&gv.read_y(bd)?, &want));
                    }
                    out_rows.push((b, n, us, err, gv.describe(&bound[0])));
                }
                Ok((dev_bytes, out_rows))
            })();
            match res {
                Ok((dev_bytes, rs)) => {
                    for (b, n, us, err, kernel) in rs {
                        let bi = batches.iter().position(|&x| x == b).unwrap_or(0);
                        let bytes = dev_bytes + 2 * b * inf + 4 * b * out;
                        let gbps = bytes as f64 / (us * 1e-6) / 1e9;
                        let ok = cuda::err_ok(err, TOL);
                        failures += !ok as usize;
                        let row = Row {
                            layout: layer.label(),
                            shape: (out, inf),
                            batch: b,
                            kernel_us: us,
                            gbps,
                            frac_copy: gbps / copy,
                            cublas_us: cublas[bi],
                            err,
                            kernel,
                        };
                        println!(
                            "{:<24} {:>11} {:>5} {:>5} {:>10.2} {:>9.1} {:>6.1}% {:>10} {:>8} {:>9.1e}{} {}",
                            row.layout,
                            format!("{out}x{inf}"),
                            b,
                            n,
                            us,
                            gbps,
                            100.0 * row.frac_copy,
                            row.cublas_us.map_or("-".into(), |c| format!("{c:.2}")),
                            row.cublas_us.map_or("-".into(), |c| format!("{:.2}x", c / us)),
                            err,
                            if ok { "" } else { " FAIL" },
                            row.kernel
                        );
                        json.push(serde_json::json!({
                            "layout": row.layout, "out": out, "in": inf, "batch": b, "replicas": n, "kernel": row.kernel,
                            "kernel_us": us, "bytes": bytes, "gbps": gbps, "frac_of_copy": row.frac_copy,
                            "cublas_us": row.cublas_us, "speedup": row.cublas_us.map(|c| c / us), "max_rel_err": err, "ok": ok,
                        }));
                        rows.push(row);
                    }
                }
                Err(e) => {
                    failures += 1;
                    println!("{:<24} {:>11} ERROR {e:#}", layer.label(), format!("{out}x{inf}"));
                    json.push(serde_json::json!({"layout": layer.label(), "out": out, "in": inf, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let goals = verdicts(&rows, copy);
    println!("{failures} results outside {TOL:e} of the CPU reference (NaN/inf included) or failed to run");
    if let Some(p) = json_path {
        let doc = serde_json::json!({
            "device": dev.name, "cc": [dev.cc.0, dev.cc.1], "sms": dev.sms, "peak_gbps": dev.peak_gbps, "l2_bytes": dev.l2_bytes,
            "copy_gbps": copy, "results": json, "failures": failures, "goals": goals,
        });
        match std::fs::write(&p, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            Ok(()) => println!("wrote {p}"),
            Err(e) => eprintln!("could not write {p}: {e}"),
        }
    }
    failures
}

/// Prints one verdict per goal and returns them as JSON. Fractions are of the measured copy
/// ceiling; each goal names every kernel it covers with its worst (lowest) value.
fn verdicts(rows: &[Row], copy: f64) -> serde_json::Value {
    let int4 = |l: &str| l == "lowbit-affine-b4" || l == "awq-b4" || l == "gptq-b4";
    let vq = |l: &str| l.starts_with("vq-");
    let goals: [Goal; 3] = [
        ("int4 GEMV >= 85% of DRAM bandwidth (batch 1)", &int4, &|r: &Row| Some(r.frac_copy), 0.85, "%"),
        ("int4 GEMV >= 3.3x cuBLAS fp16 (batch 1)", &int4, &|r: &Row| r.cublas_us.map(|c| c / r.kernel_us), 3.3, "x"),
        ("VQ GEMV >= 70% of DRAM bandwidth (batch 1)", &vq, &|r: &Row| Some(r.frac_copy), 0.70, "%"),
    ];
    println!("== goals (bandwidth as a fraction of the measured device-to-device copy, {copy:.0} GB/s)");
    let mut out = Vec::new();
    for (name, sel, pick, thr, unit) in goals {
        let mut worst: std::collections::BTreeMap<String, (f64, String)> = Default::default();
        let mut missing = false;
        for r in rows.iter().filter(|r| r.batch == 1 && sel(&r.layout)) {
            match pick(r) {
                Some(v) => {
                    let e = worst.entry(r.layout.clone()).or_insert((f64::INFINITY, String::new()));
                    if v < e.0 {
                        *e = (v, format!("{}x{}", r.shape.0, r.shape.1));
                    }
                }
                None => missing = true,
            }
        }
        let fmt = |v: f64| if unit == "%" { format!("{:.1}%", 100.0 * v) } else { format!("{v:.2}x") };
        let list: Vec<String> = worst.iter().map(|(k, (v, s))| format!("{k} {} at {s}", fmt(*v))).collect();
        let verdict = if worst.is_empty() || missing {
            "NOT MEASURED"
        } else if worst.values().all(|(v, _)| *v >= thr) {
            "MET"
        } else {
            "NOT MET"
        };
        println!("{name}: {verdict}: {}{}", list.join(", "), if missing { " (cuBLAS unavailable)" } else { "" });
        out.push(serde_json::json!({"goal": name, "verdict": verdict, "threshold": thr,
            "kernels": worst.iter().map(|(k, (v, s))| serde_json::json!({"layout": k, "value": v, "shape": s})).collect::<Vec<_>>()}));
    }
    serde_json::Value::Array(out)
}
