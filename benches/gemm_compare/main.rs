//! GEMM candidates for the CPU forward pass: `y[rows][out] = x[rows][in] · W[out][in]ᵀ` in f32 (W
//! row-major as in HF checkpoints), on SmolLM2-135M shapes. Candidates: faer 0.24 (what
//! `src/linalg.rs` uses), the `gemm` 0.19 crate called directly, ndarray 0.16 `general_mat_mul`
//! (matrixmultiply backend), and the system OpenBLAS through `cblas_sgemm`.
//!
//! This file is not part of the lowbit crate's dependency set: `bash benches/gemm_compare.sh` copies
//! it into a throwaway cargo project (which has the four candidates as dependencies and enables the
//! `compare` feature), builds it with `--release` and runs it. Built inside lowbit (cargo
//! auto-discovers `benches/*/main.rs`) it compiles to a stub.
//!
//! Protocol: for each of `--rounds` rounds and each thread count (1, 2), the parent process starts a
//! worker process with `RAYON_NUM_THREADS`, `MATMUL_NUM_THREADS` and `OPENBLAS_NUM_THREADS` set
//! (matrixmultiply reads `MATMUL_NUM_THREADS` once per process, else uses every physical core). In
//! the first round a worker checks every candidate's output against an f64 reference (sampled
//! entries) and against faer (all entries) and exits non-zero above 1e-3 relative (max |diff| /
//! max |ref|). One-thread workers also record the calling thread's CPU time (a second table) and
//! warn if the process used more CPU than that thread. Every worker times each
//! candidate on each shape (order rotated by round and shape): warm-up calls, then at least 5 timed
//! calls (more for small shapes, up to ~0.3 s), keeping the fastest call. Rounds interleave the
//! candidates in time, so a load spike from other processes does not hit one candidate only. The
//! best over all rounds is reported as GFLOP/s = 2·rows·in·out / time, as markdown tables.
//!
//! Options: `--rounds N` (default 3), `--threads 1,2`, `--quick` (3 shapes only).
//! Env `GEMM_V4_EXE`: path of a second build of this file with gemm's `x86-v4` feature (AVX-512
//! kernels); the parent then also runs it for a "gemm 0.19 (x86-v4)" column. If OpenBLAS detects a
//! core without AVX-512 on an AVX-512 machine (Debian's 0.3.21 calls a model-207 Xeon "Prescott"),
//! it is also run with `OPENBLAS_CORETYPE=SkylakeX`; the OpenBLAS column names the core it used.
#![allow(unexpected_cfgs)]

#[cfg(not(feature = "compare"))]
fn main() {
    eprintln!("gemm_compare: run `bash benches/gemm_compare.sh` (builds this file in a throwaway crate)");
}

#[cfg(feature = "compare")]
fn main() {
    bench::main()
}

#[cfg(feature = "compare")]
mod bench {
    use openblas_src as _; // links libopenblas
    use std::collections::BTreeMap;
    use std::os::raw::{c_char, c_int};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    extern "C" {
        fn openblas_set_num_threads(n: c_int);
        fn openblas_get_num_threads() -> c_int;
        fn openblas_get_corename() -> *const c_char;
        fn openblas_get_config() -> *const c_char;
    }

    #[derive(Clone, Copy)]
    struct Shape {
        name: &'static str,
        rows: usize,
        inn: usize,
        out: usize,
    }

    impl Shape {
        fn flops(&self) -> f64 {
            2.0 * (self.rows * self.inn * self.out) as f64
        }
    }

    const SHAPES: &[Shape] = &[
        Shape {
            name: "q/o",
            rows: 2048,
            inn: 576,
            out: 576,
        },
        Shape {
            name: "k/v",
            rows: 2048,
            inn: 576,
            out: 192,
        },
        Shape {
            name: "gate/up",
            rows: 2048,
            inn: 576,
            out: 1536,
        },
        Shape {
            name: "down",
            rows: 2048,
            inn: 1536,
            out: 576,
        },
        Shape {
            name: "lm_head chunk",
            rows: 256,
            inn: 576,
            out: 49152,
        },
        Shape {
            name: "gate/up",
            rows: 64,
            inn: 576,
            out: 1536,
        },
        Shape {
            name: "gate/up",
            rows: 1,
            inn: 576,
            out: 1536,
        },
    ];

    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Cand {
        Faer,
        Gemm,
        Ndarray,
        OpenBlas,
    }
    const CANDS: [Cand; 4] = [Cand::Faer, Cand::Gemm, Cand::Ndarray, Cand::OpenBlas];

    fn label(c: Cand) -> String {
        match c {
            Cand::Faer => "faer 0.24".into(),
            Cand::Gemm if cfg!(feature = "gemm-v4") => "gemm 0.19 (x86-v4)".into(),
            Cand::Gemm => "gemm 0.19".into(),
            Cand::Ndarray => "ndarray 0.16 (matrixmultiply)".into(),
            Cand::OpenBlas => format!("OpenBLAS ({})", unsafe { cstr(openblas_get_corename()) }),
        }
    }

    fn run(c: Cand, threads: usize, y: &mut [f32], x: &[f32], w: &[f32], s: Shape) {
        let (rows, inn, out) = (s.rows, s.inn, s.out);
        match c {
            Cand::Faer => {
                use faer::linalg::matmul::matmul;
                use faer::{Accum, MatMut, MatRef, Par};
                let par = match threads {
                    1 => Par::Seq,
                    n => Par::Rayon(std::num::NonZeroUsize::new(n).unwrap()),
                };
                // Same calls as lowbit's `linalg::matmul_bt_into`.
                let xm = MatRef::from_row_major_slice(x, rows, inn);
                let wt = MatRef::from_column_major_slice(w, inn, out);
                let ym = MatMut::from_row_major_slice_mut(y, rows, out);
                matmul(ym, Accum::Replace, xm, wt, 1.0f32, par);
            }
            Cand::Gemm => {
                let par = match threads {
                    1 => gemm::Parallelism::None,
                    n => gemm::Parallelism::Rayon(n),
                };
                // gemm: dst = alpha·dst + beta·lhs·rhs; read_dst = false ignores alpha.
                // lhs = x (m×k, row-major), rhs = Wᵀ (k×n): rhs[kk][j] = w[j*inn + kk].
                unsafe {
                    gemm::gemm(
                        rows,
                        out,
                        inn,
                        y.as_mut_ptr(),
                        1,
                        out as isize,
                        false,
                        x.as_ptr(),
                        1,
                        inn as isize,
                        w.as_ptr(),
                        inn as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
            Cand::Ndarray => {
                use ndarray::{ArrayView2, ArrayViewMut2};
                let xv = ArrayView2::from_shape((rows, inn), x).unwrap();
                let wv = ArrayView2::from_shape((out, inn), w).unwrap();
                let mut yv = ArrayViewMut2::from_shape((rows, out), y).unwrap();
                // The same product as `xv.dot(&wv.t())`, written into the preallocated output.
                ndarray::linalg::general_mat_mul(1.0f32, &xv, &wv.t(), 0.0f32, &mut yv);
            }
            Cand::OpenBlas => unsafe {
                use cblas_sys::*;
                cblas_sgemm(
                    CblasRowMajor,
                    CblasNoTrans,
                    CblasTrans,
                    rows as c_int,
                    out as c_int,
                    inn as c_int,
                    1.0,
                    x.as_ptr(),
                    inn as c_int,
                    w.as_ptr(),
                    inn as c_int,
                    0.0,
                    y.as_mut_ptr(),
                    out as c_int,
                );
            },
        }
    }

    /// Deterministic uniform values in [-1, 1) (xorshift64*), scaled.
    fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * scale
            })
            .collect()
    }

    fn max_rel(a: &[f32], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter().zip(b).fold(0f64, |m, (&p, &q)| m.max((p as f64 - q).abs())) / scale
    }

    /// Fastest single call, after `warm` untimed calls: at least `min_calls` timed calls, more while
    /// under `budget` (capped at `max_calls`).
    /// Returns (fastest wall time, smallest CPU time of the calling thread) in seconds, and the
    /// process's and the calling thread's total CPU time over the timed calls. With one thread, the
    /// thread CPU time leaves out the time the thread was descheduled by other processes.
    fn best_time(
        mut f: impl FnMut(),
        warm: usize,
        min_calls: usize,
        budget: Duration,
        max_calls: usize,
    ) -> ((f64, f64), (f64, f64)) {
        for _ in 0..warm {
            f();
        }
        let (p0, t0) = (cpu_time(CLOCK_PROCESS_CPUTIME_ID), cpu_time(CLOCK_THREAD_CPUTIME_ID));
        let start = Instant::now();
        let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        let mut n = 0;
        while n < min_calls || (start.elapsed() < budget && n < max_calls) {
            let c = thread_cpu_time();
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(thread_cpu_time() - c);
            n += 1;
        }
        let (p1, t1) = (cpu_time(CLOCK_PROCESS_CPUTIME_ID), cpu_time(CLOCK_THREAD_CPUTIME_ID));
        ((best, best_cpu), (p1 - p0, t1 - t0))
    }

    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
    }

    const CLOCK_PROCESS_CPUTIME_ID: c_int = 2; // Linux
    const CLOCK_THREAD_CPUTIME_ID: c_int = 3;

    fn thread_cpu_time() -> f64 {
        cpu_time(CLOCK_THREAD_CPUTIME_ID)
    }

    fn cpu_time(clock: c_int) -> f64 {
        let mut ts = Timespec { sec: 0, nsec: 0 };
        unsafe { clock_gettime(clock, &mut ts) };
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }

    fn arg_value(args: &[String], name: &str) -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    }

    fn shapes(quick: bool) -> Vec<Shape> {
        if quick {
            vec![SHAPES[2], SHAPES[5], SHAPES[6]]
        } else {
            SHAPES.to_vec()
        }
    }

    fn worker(args: &[String]) {
        let threads: usize = arg_value(args, "--threads").unwrap().parse().unwrap();
        let round: usize = arg_value(args, "--round").map_or(0, |v| v.parse().unwrap());
        let check = args.iter().any(|a| a == "--check");
        let quick = args.iter().any(|a| a == "--quick");
        let only = arg_value(args, "--only");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .unwrap();
        unsafe { openblas_set_num_threads(threads as c_int) };
        let timed: Vec<Cand> = match only.as_deref() {
            Some("gemm") => vec![Cand::Gemm],
            Some("openblas") => vec![Cand::OpenBlas],
            Some(o) => panic!("--only {o}: `gemm` or `openblas`"),
            None => CANDS.to_vec(),
        };
        let shapes = shapes(quick);
        let data: Vec<(Vec<f32>, Vec<f32>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let x = fill(s.rows * s.inn, 1 + 2 * i as u64, 1.0);
                let w = fill(s.out * s.inn, 2 + 2 * i as u64, 1.0 / (s.inn as f32).sqrt());
                (x, w)
            })
            .collect();

        // Numerical check: every candidate (with this worker's thread count) against an f64
        // reference on sampled entries, and against faer on all entries.
        let mut failed = false;
        for (si, (s, (x, w))) in shapes.iter().zip(&data).enumerate().filter(|_| check) {
            let n_samples = (s.rows * s.out).min(4096);
            let idx: Vec<(usize, usize)> = fill(2 * n_samples, 1000 + si as u64, 1.0)
                .chunks(2)
                .enumerate()
                .map(|(t, p)| {
                    if s.rows * s.out <= 4096 {
                        (t / s.out, t % s.out)
                    } else {
                        let i = (((p[0] + 1.0) * 0.5 * s.rows as f32) as usize).min(s.rows - 1);
                        let j = (((p[1] + 1.0) * 0.5 * s.out as f32) as usize).min(s.out - 1);
                        (i, j)
                    }
                })
                .collect();
            let exact: Vec<f64> = idx
                .iter()
                .map(|&(i, j)| {
                    let xr = &x[i * s.inn..(i + 1) * s.inn];
                    let wr = &w[j * s.inn..(j + 1) * s.inn];
                    xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum()
                })
                .collect();
            let mut y_faer = vec![0f32; s.rows * s.out];
            run(Cand::Faer, threads, &mut y_faer, x, w, *s);
            let y_faer64: Vec<f64> = y_faer.iter().map(|&v| v as f64).collect();
            let mut checked = vec![Cand::Faer];
            checked.extend(timed.iter().copied().filter(|&c| c != Cand::Faer));
            for c in checked {
                let mut y = vec![f32::NAN; s.rows * s.out];
                run(c, threads, &mut y, x, w, *s);
                let sampled: Vec<f32> = idx.iter().map(|&(i, j)| y[i * s.out + j]).collect();
                let e_exact = max_rel(&sampled, &exact);
                let e_faer = if y.iter().all(|v| v.is_finite()) {
                    max_rel(&y, &y_faer64)
                } else {
                    f64::INFINITY
                };
                let e = e_exact.max(e_faer);
                if !(e <= 1e-3) {
                    failed = true;
                }
                println!(
                    "CHECK\t{threads}\t{}\t{}\t{}\t{}\t{}\t{e_exact:.3e}\t{e_faer:.3e}",
                    s.name,
                    s.rows,
                    s.inn,
                    s.out,
                    label(c)
                );
            }
        }
        if failed {
            eprintln!("gemm_compare: numerical check FAILED (relative error above 1e-3)");
            std::process::exit(1);
        }

        let mut best: BTreeMap<(usize, Cand), (f64, f64)> = BTreeMap::new();
        let mut ys: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0f32; s.rows * s.out]).collect();
        {
            let r = round;
            for (si, s) in shapes.iter().enumerate() {
                let (x, w) = &data[si];
                let flops = s.flops();
                // ~0.3 s per measurement for small shapes, at least 5 calls for large ones.
                let budget = Duration::from_millis(300);
                for k in 0..timed.len() {
                    let c = timed[(k + r + si) % timed.len()];
                    let y = &mut ys[si];
                    let warm = if flops < 1e9 { 20 } else { 2 };
                    let (t, (proc_cpu, thread_cpu)) =
                        best_time(|| run(c, threads, y, x, w, *s), warm, 5, budget, 20_000);
                    // With one thread everything must run on the calling thread, or its CPU time
                    // (and the single-thread comparison) means nothing.
                    if threads == 1 && proc_cpu > 1.1 * thread_cpu + 2e-3 {
                        eprintln!(
                            "gemm_compare: WARNING: {} on {} {}x{}->{} used {:.3} s of process CPU but {:.3} s on the calling thread (not single-threaded?)",
                            label(c), s.name, s.rows, s.inn, s.out, proc_cpu, thread_cpu
                        );
                    }
                    best.insert((si, c), t);
                }
            }
        }
        for ((si, c), (t, cpu)) in best {
            let s = shapes[si];
            println!(
                "TIME\t{threads}\t{}\t{}\t{}\t{}\t{}\t{t:.6e}\t{cpu:.6e}",
                s.name,
                s.rows,
                s.inn,
                s.out,
                label(c)
            );
        }
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }

    fn cstr(p: *const c_char) -> String {
        if p.is_null() {
            return "?".into();
        }
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_string()
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--worker") {
            return worker(&args[1..]);
        }
        let rounds = arg_value(&args, "--rounds").unwrap_or_else(|| "3".into());
        let quick = args.iter().any(|a| a == "--quick");
        let thread_list: Vec<usize> = arg_value(&args, "--threads")
            .unwrap_or_else(|| "1,2".into())
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect();
        let v4_exe = std::env::var("GEMM_V4_EXE").ok().filter(|p| !p.is_empty());
        let self_exe = std::env::current_exe().unwrap();

        let (core, config, nt) = unsafe {
            (
                cstr(openblas_get_corename()),
                cstr(openblas_get_config()),
                openblas_get_num_threads(),
            )
        };
        eprintln!("OpenBLAS: core {core}; config: {config}; default threads {nt}");
        // OpenBLAS 0.3.21 does not know newer Xeons (e.g. model 207) and falls back to its generic
        // Prescott (SSE3) kernels: then also measure it with its AVX-512 kernels forced.
        let avx512 = std::is_x86_feature_detected!("avx512f");
        let want_skx = avx512 && !["SkylakeX", "Cooperlake", "SapphireRapids"].contains(&core.as_str());

        // (threads, shape key, column label) -> (best wall s, best thread-CPU s); check errors per label.
        let mut times: BTreeMap<(usize, usize, String), (f64, f64)> = BTreeMap::new();
        let mut columns: Vec<String> = Vec::new();
        let mut errs: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let mut loads: Vec<String> = Vec::new();
        let shape_list = shapes(quick);
        let n_rounds: usize = rounds.parse().expect("--rounds N");
        for round in 0..n_rounds {
            let round_load = loadavg();
            for &t in &thread_list {
                // (binary, timed candidate subset, extra environment, description)
                let mut jobs: Vec<(std::path::PathBuf, Option<&str>, Vec<(&str, &str)>, String)> =
                    vec![(self_exe.clone(), None, vec![], format!("threads={t}"))];
                if let Some(v4) = &v4_exe {
                    jobs.push((
                        v4.into(),
                        Some("gemm"),
                        vec![],
                        format!("threads={t} (gemm, x86-v4 build)"),
                    ));
                }
                if want_skx {
                    jobs.push((
                        self_exe.clone(),
                        Some("openblas"),
                        vec![("OPENBLAS_CORETYPE", "SkylakeX")],
                        format!("threads={t} (OpenBLAS, OPENBLAS_CORETYPE=SkylakeX)"),
                    ));
                }
                let nj = jobs.len();
                jobs.rotate_left(round % nj);
                for (exe, only, env, what) in jobs {
                    let mut cmd = Command::new(&exe);
                    cmd.arg("--worker")
                        .arg("--threads")
                        .arg(t.to_string())
                        .arg("--round")
                        .arg(round.to_string());
                    if round == 0 {
                        cmd.arg("--check");
                    }
                    if quick {
                        cmd.arg("--quick");
                    }
                    if let Some(o) = only {
                        cmd.arg("--only").arg(o);
                    }
                    cmd.envs(env);
                    cmd.env("RAYON_NUM_THREADS", t.to_string())
                        .env("MATMUL_NUM_THREADS", t.to_string()) // matrixmultiply's variable
                        .env("OPENBLAS_NUM_THREADS", t.to_string())
                        .stderr(Stdio::inherit());
                    let out = cmd.output().expect("failed to start worker");
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    for line in stdout.lines() {
                        let f: Vec<&str> = line.split('\t').collect();
                        let key = shape_list
                            .iter()
                            .position(|s| s.name == f[2] && s.rows.to_string() == f[3] && s.out.to_string() == f[5])
                            .unwrap_or(usize::MAX);
                        match f[0] {
                            "CHECK" => {
                                let e = errs.entry(f[6].to_string()).or_insert((0.0, 0.0));
                                e.0 = e.0.max(f[7].parse().unwrap());
                                e.1 = e.1.max(f[8].parse().unwrap());
                                if !f[7].parse::<f64>().map_or(false, |v| v <= 1e-3)
                                    || !f[8].parse::<f64>().map_or(false, |v| v <= 1e-3)
                                {
                                    eprintln!("CHECK FAILED: {line}");
                                }
                            }
                            "TIME" => {
                                let label = f[6].to_string();
                                if !columns.contains(&label) {
                                    columns.push(label.clone());
                                }
                                // Best wall time and best thread CPU time over rounds, separately.
                                let v: (f64, f64) = (f[7].parse().unwrap(), f[8].parse().unwrap());
                                let e = times.entry((t, key, label)).or_insert(v);
                                e.0 = e.0.min(v.0);
                                e.1 = e.1.min(v.1);
                            }
                            _ => {}
                        }
                    }
                    if !out.status.success() {
                        eprintln!("gemm_compare: worker {what} failed ({})", out.status);
                        std::process::exit(1);
                    }
                }
            }
            let line = format!(
                "round {}/{n_rounds}: load average {round_load} at start, {} at end",
                round + 1,
                loadavg()
            );
            eprintln!("  {line}");
            loads.push(line);
        }

        println!("OpenBLAS as detected: core `{core}`; config: `{config}`\n");
        let mut tables: Vec<(usize, bool)> = thread_list.iter().map(|&t| (t, false)).collect();
        if thread_list.contains(&1) {
            tables.push((1, true));
        }
        for (t, cpu) in tables {
            let what = if cpu {
                "thread CPU time (time descheduled by other processes left out)"
            } else {
                "wall time"
            };
            println!(
                "**{t} thread{}, {what}** — GFLOP/s (2·rows·in·out / best time; best of ≥5 calls after warm-up, best of {rounds} rounds)\n",
                if t == 1 { "" } else { "s" }
            );
            print!("| shape | rows | in→out |");
            for c in &columns {
                print!(" {c} |");
            }
            println!(" fastest |");
            print!("| --- | ---: | --- |");
            for _ in &columns {
                print!(" ---: |");
            }
            println!(" --- |");
            for (k, s) in shape_list.iter().enumerate() {
                print!("| {} | {} | {}→{} |", s.name, s.rows, s.inn, s.out);
                let mut fastest: Option<(&str, f64)> = None;
                let vals: Vec<Option<f64>> = columns
                    .iter()
                    .map(|c| {
                        times
                            .get(&(t, k, c.clone()))
                            .map(|v| s.flops() / if cpu { v.1 } else { v.0 } / 1e9)
                    })
                    .collect();
                let top = vals.iter().flatten().fold(0f64, |m, &v| m.max(v));
                for (c, v) in columns.iter().zip(&vals) {
                    match v {
                        Some(g) => {
                            if *g == top {
                                print!(" **{g:.1}** |");
                            } else {
                                print!(" {g:.1} |");
                            }
                            if fastest.map_or(true, |(_, b)| *g > b) {
                                fastest = Some((c, *g));
                            }
                        }
                        None => print!(" – |"),
                    }
                }
                println!(" {} |", fastest.map_or("–", |f| f.0));
            }
            println!();
        }
        println!("Numerical check (all shapes and thread counts; max |diff| / max |ref|; limit 1e-3):\n");
        println!("| candidate | vs f64 reference (sampled) | vs faer (all entries) |");
        println!("| --- | ---: | ---: |");
        for (c, (a, b)) in &errs {
            println!("| {c} | {a:.1e} | {b:.1e} |");
        }
        println!();
        for l in loads {
            println!("- {l}");
        }
    }
}
