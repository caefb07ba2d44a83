//! Per-core throughput of the forward pass's pieces against the core's measured FMA peak (docs/speed.md).
//! `cargo bench --bench forward_kernels` — one thread, timed in thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so time lost to other processes on a shared machine is left out.
//!
//! * FMA peak: independent chains of 512-bit (and 256-bit) fused multiply-adds, i.e. what the
//!   core's FMA pipes can retire; the reference for "% of peak".
//! * The linears of SmolLM2-135M (and Llama-3.2-1B / 3.1-8B shapes) as the forward pass runs
//!   them: `y = x·Wᵀ` with faer's sequential kernel on a row block of 256 rows, and on 2048 rows.
//! * Attention of one layer at ctx 2048 (SmolLM2 heads) through `lowbit::attention`.

use lowbit::linalg::matmul_bt_into;
use std::time::Instant;

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain syscall writing into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of `reps` (thread CPU seconds, wall seconds) per call of `f`, after a warm-up.
fn time(mut f: impl FnMut(), reps: usize) -> (f64, f64) {
    f();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let (c, w) = (thread_cpu(), Instant::now());
        f();
        let (c, w) = (thread_cpu() - c, w.elapsed().as_secs_f64());
        if c < best.0 {
            best = (c, w);
        }
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    /// 12 independent accumulators × `iters` FMAs of 16 lanes: 384·iters flops.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-7)));
        for _ in 0..std::hint::black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm512_set1_ps(0.0);
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }
    /// The same with 256-bit vectors: 192·iters flops.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(std::hint::black_box(1e-7)));
        for _ in 0..std::hint::black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut s = _mm256_set1_ps(0.0);
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

fn main() {
    // One thread: everything below runs on the single rayon worker (so its thread CPU time
    // covers the parallel iterators inside the attention as well).
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().ok();
    rayon::scope(|_| run());
}

fn run() {
    let mut peak_gflops = 0.0;
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 20_000_000;
        if std::is_x86_feature_detected!("avx512f") {
            let mut sink = 0.0;
            // SAFETY: feature detected above.
            let (c, _) = time(|| sink += unsafe { peak::fma512(iters) }, 5);
            peak_gflops = 384.0 * iters as f64 / c / 1e9;
            println!("FMA peak, 512-bit, 1 thread: {peak_gflops:.1} GFLOP/s (thread CPU time) [{sink:.1}]");
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let mut sink = 0.0;
            // SAFETY: features detected above.
            let (c, _) = time(|| sink += unsafe { peak::fma256(iters) }, 5);
            let g = 192.0 * iters as f64 / c / 1e9;
            println!("FMA peak, 256-bit, 1 thread: {g:.1} GFLOP/s [{sink:.1}]");
            if peak_gflops == 0.0 {
                peak_gflops = g;
            }
        }
    }
    println!();
    println!("| model | linear | rows | in→out | GFLOP/s (CPU time) | % of peak | GFLOP/s (wall) |");
    println!("|---|---|---:|---|---:|---:|---:|");
    let shapes: &[(&str, &str, usize, usize)] = &[
        ("SmolLM2-135M", "q/o", 576, 576),
        ("SmolLM2-135M", "k/v", 576, 192),
        ("SmolLM2-135M", "gate/up", 576, 1536),
        ("SmolLM2-135M", "down", 1536, 576),
        ("SmolLM2-135M", "lm_head", 576, 49152),
        ("Llama-3.2-1B", "gate/up", 2048, 8192),
        ("Llama-3.1-8B", "gate/up", 4096, 14336),
    ];
    let mut total = (0.0, 0.0);
    for &(model, name, inn, out) in shapes {
        for rows in [256usize, 2048] {
            if (name == "lm_head" || model != "SmolLM2-135M") && rows == 2048 {
                continue;
            }
            let x: Vec<f32> = (0..rows * inn).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let w: Vec<f32> = (0..out * inn).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
            let mut y = vec![0f32; rows * out];
            let flops = 2.0 * (rows * inn * out) as f64;
            let reps = ((2e10 / flops) as usize).clamp(3, 50);
            let (c, wall) = time(|| matmul_bt_into(&mut y, &x, rows, inn, &w, out, faer::Par::Seq), reps);
            let g = flops / c / 1e9;
            if model == "SmolLM2-135M" && rows == 256 && name != "lm_head" {
                let n = if name == "k/v" || name == "gate/up" || name == "q/o" { 2.0 } else { 1.0 };
                total.0 += n * flops;
                total.1 += n * c;
            }
            println!("| {model} | {name} | {rows} | {inn}→{out} | {g:.1} | {:.0}% | {:.1} |", 100.0 * g / peak_gflops, flops / wall / 1e9);
        }
    }
    let g = total.0 / total.1 / 1e9;
    println!("\nSmolLM2 decoder-layer linears (row block 256, flop-weighted): {g:.1} GFLOP/s = {:.0}% of peak", 100.0 * g / peak_gflops);
    // Attention of one SmolLM2 layer at ctx 2048.
    let (seq, hd, nh, nkv) = (2048usize, 64usize, 9usize, 3usize);
    let q: Vec<f32> = (0..seq * nh * hd).map(|i| ((i * 31) % 97) as f32 * 0.01 - 0.48).collect();
    let k: Vec<f32> = (0..seq * nkv * hd).map(|i| ((i * 17) % 89) as f32 * 0.01 - 0.44).collect();
    let v = k.clone();
    let d = lowbit::attention::Dims { head_dim: hd, heads: nh, kv_heads: nkv, window: None };
    let (c, _) = time(
        || {
            std::hint::black_box(lowbit::attention::attention(&q, &k, &v, seq, seq, d));
        },
        5,
    );
    // Causal: Q·Kᵀ and P·V over the lower triangle.
    let flops = 2.0 * 2.0 * (nh * hd) as f64 * (seq * (seq + 1) / 2) as f64;
    let g = flops / c / 1e9;
    println!(
        "attention, SmolLM2 layer, ctx 2048 causal: {:.1} ms, {g:.1} GFLOP/s useful = {:.0}% of peak",
        c * 1e3,
        100.0 * g / peak_gflops
    );
}
