//! CPU emulation of the bandwidth kernels (kernels/gq.cu, kernels/vqt.cu) on the arrangements made
//! at upload (src/cuda/arrange.rs, src/cuda/vqt.rs); the emulator (tests/emu/) is written from the
//! kernel sources and the PTX ISA's fragment layouts (mma.m16n8k16, ldmatrix .trans), independent
//! of src/cuda/reference.rs:
//!
//! * decode: every weight the kernel's registers hold (window extraction, magic-number fp16
//!   tricks, shift-grid bit building, meta words, ldmatrix addressing) equals the CPU reference
//!   decoder's value for that (row, column) — exactly on the factored path, to fp16 rounding
//!   where the kernel rounds;
//! * GEMV/GEMM: a lane-by-lane emulation of the whole kernel (warp and split-K partition, group
//!   counters, x fragments, mma, epilogue row map) matches the f64 reference product, for batch
//!   1, 3 and 11 and several split-K factors;
//! * the group index by multiplication and shift (FastDiv) equals integer division.
//!
//! No GPU needed. Synthetic layers of every layout and real stories260K layers are covered.
// Lane-indexed loops mirror the kernels' per-lane code.
#![allow(clippy::needless_range_loop)]
mod common;
mod emu;
use common::*;
use emu::gq::{emulate_gq, gq_decode};
use emu::vqt::{emulate_vq_layer, lane_indices, ldsm_x4_trans};
use emu::{check_close, h};
use lowbit::cuda::arrange::{arrange_gq, FastDiv, GqLayout, GroupRows};
use lowbit::cuda::vqt::{arrange_indices, vqt_segment, VqStage, VQT_STEPS};
use lowbit::cuda::{reference_matmul, synth, GpuGrid, PackedOnGpu};

fn check_gq_decode(name: &str, l: &PackedOnGpu) -> GqLayout {
    l.validate().unwrap();
    let r = GroupRows::from_layer(l).unwrap();
    let lay = arrange_gq(&r);
    let got = gq_decode(&lay);
    let want = l.dequantize();
    let smax = r.scales.iter().fold(0f32, |a, s| a.max(s.to_f32().abs()));
    let mut worst = 0f32;
    for (k, (&a, &e)) in got.iter().zip(&want).enumerate() {
        // Factored: exact, except the shift grid's 2^-p below fp16's smallest subnormal (p > 24).
        // Per-column: the kernel rounds the product to fp16 (and s/n for halfint): half an ulp,
        // 2^-25 absolute in fp16's subnormal range.
        let tol = if lay.percol { e.abs() / 1024.0 + smax * 6e-8 + 3.0e-8 } else { smax * 6e-8 };
        let d = (a - e).abs();
        assert!(d <= tol, "{name} {}: w[{}][{}] decodes to {a}, reference {e}", l.label(), k / lay.inf, k % lay.inf);
        worst = worst.max(d);
    }
    if !lay.percol && l.label().contains("affine") {
        assert_eq!(worst, 0.0, "{name}: the factored affine path must decode exactly");
    }
    lay
}

#[test]
fn gq_arrangement_decodes_exactly_what_was_packed() {
    let mut n = 0;
    for l in synth::coverage_layers().iter().filter(|l| !matches!(l, PackedOnGpu::Vq { .. })) {
        check_gq_decode("coverage", l);
        n += 1;
    }
    // Bench-like shapes, smaller: several chunks, every width and grid.
    for b in 2..=8 {
        for grid in [GpuGrid::Affine, GpuGrid::HalfInt, GpuGrid::Shift] {
            check_gq_decode("wide", &synth::lowbit(48, 1100, b, 128, grid, false, 7 + b as u64));
        }
    }
    check_gq_decode("awq", &synth::awq(64, 512, 128, 3));
    check_gq_decode("gptq8", &synth::gptq(32, 544, 8, 32, false, 4));
    assert!(n > 25);
}

#[test]
fn gq_kernel_emulation_matches_the_reference_product() {
    let layers = vec![
        synth::lowbit(40, 300, 4, 64, GpuGrid::Affine, false, 1),
        synth::lowbit(24, 1100, 3, 128, GpuGrid::Shift, false, 2),
        synth::lowbit(17, 520, 2, 32, GpuGrid::HalfInt, false, 3),
        synth::lowbit(32, 600, 5, 256, GpuGrid::Affine, false, 4),
        synth::lowbit(32, 256, 4, 128, GpuGrid::Affine, true, 5),
        synth::lowbit(48, 200, 6, 40, GpuGrid::HalfInt, false, 6),
        synth::lowbit(16, 700, 8, 96, GpuGrid::Affine, false, 7),
        synth::awq(64, 1024, 128, 8),
        synth::gptq(32, 576, 3, 64, false, 9),
        synth::gptq(64, 256, 4, 64, true, 10),
        synth::gptq(32, 96, 4, 16, false, 11),
    ];
    for l in layers {
        let lay = arrange_gq(&GroupRows::from_layer(&l).unwrap());
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 11] {
            let x = synth::activations(batch, i, 40 + batch as u64);
            let want = reference_matmul(&w, &x, batch, o, i);
            for ksplit in [1usize, 2, 3] {
                let got = emulate_gq(&lay, &x, batch, ksplit);
                check_close(&format!("{} batch {batch} ksplit {ksplit}", l.label()), &got, &want, if lay.percol { 2e-3 } else { 1e-5 });
            }
        }
    }
}

#[test]
fn fastdiv_equals_integer_division() {
    for d in 1..=1024u32 {
        let f = FastDiv::new(d);
        for n in 0..1u32 << 16 {
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
    let mut r = Rng(12345);
    for d in [16u32, 32, 40, 64, 96, 100, 128, 192, 256, 1000, 4096, 11008, 65535, (1 << 20) + 7, (1 << 31) - 1] {
        let f = FastDiv::new(d);
        for n in (0..1u32 << 22).step_by(7).chain((0..100_000).map(|_| r.below(1 << 31) as u32)).chain([(1 << 31) - 1]) {
            assert_eq!(f.div(n), n / d, "{n} / {d}");
        }
    }
}

#[test]
fn vqt_arrangement_and_kernel_emulation_match_the_reference() {
    let layers = vec![
        synth::vq(48, 600, 8, 12, true, true, 12),
        synth::vq(64, 300, 16, 8, false, true, 13),
        synth::vq(96, 200, 8, 10, false, false, 9),
        synth::vq(40, 1100, 8, 7, true, false, 14),
        synth::vq_outliers(64, 96, 8, 8, 5, 14),
        synth::vq(24, 64, 24, 5, true, true, 15),
    ];
    for l in layers {
        assert!(
            lowbit::cuda::vqt::host_layer(&l, lowbit::cuda::vqt::DEFAULT_SMEM_LIMIT).unwrap().is_some(),
            "{} must take the tiled path",
            l.label()
        );
        let (o, i) = l.shape();
        let w = l.dequantize();
        for batch in [1usize, 3, 11] {
            let x = synth::activations(batch, i, 60 + batch as u64);
            let want = reference_matmul(&w, &x, batch, o, i);
            for nsplit in [1usize, 2] {
                // fp16 rounding of cb + rcb and of x * col_scale, as on the GPU.
                check_close(&format!("{} batch {batch} nsplit {nsplit}", l.label()), &emulate_vq_layer(&l, &x, batch, nsplit), &want, 3e-3);
            }
        }
    }
    // The addressing itself, element by element: every (row, column) an A fragment holds is the
    // codebook entry the reference decoder uses (no scale, bias or residual: exact).
    let l = synth::vq(32, 1040, 8, 9, false, false, 21);
    let PackedOnGpu::Vq { out, in_features: inf, v, idx_bits, indices, codebook, .. } = &l else { panic!() };
    let st = VqStage { idx_bits: *idx_bits, indices, codebook };
    let words = arrange_indices(&st, *out, *inf, *v);
    let nch = inf.div_ceil(16 * VQT_STEPS);
    let smem: Vec<u16> = codebook.iter().map(|h| h.to_bits()).collect();
    let w = l.dequantize();
    let mut seen = vec![false; out * inf];
    for m in 0..out.div_ceil(16) {
        for ch in 0..nch {
            let idx: Vec<Vec<u32>> = (0..32).map(|ln| lane_indices(&words, nch, *idx_bits as usize, m, ch, ln)).collect();
            for s in 0..VQT_STEPS {
                let addr: [usize; 32] = std::array::from_fn(|ln| (idx[ln][s] as usize * (v / 8) + vqt_segment(m, ln) % (v / 8)) * 8);
                let a = ldsm_x4_trans(&smem, &addr);
                for ln in 0..32 {
                    let (g, tq) = (ln / 4, ln % 4);
                    for (r, (row, k)) in [(g, 2 * tq), (g + 8, 2 * tq), (g, 2 * tq + 8), (g + 8, 2 * tq + 8)].iter().enumerate() {
                        for (half, kk) in [(0, *k), (1, *k + 1)] {
                            let (o, c) = (m * 16 + row, (ch * VQT_STEPS + s) * 16 + kk);
                            if o < *out && c < *inf {
                                let got = h(a[ln][r] >> (16 * half) & 0xFFFF) as f32;
                                assert_eq!(got, w[o * inf + c], "w[{o}][{c}]");
                                seen[o * inf + c] = true;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|&s| s), "every weight is covered by some fragment");
}

// ---------------------------------------------------------------------------------------------
// Real layers

fn quantize(out: &std::path::Path, extra: &[&str]) {
    let m = stories();
    let c = shared("data/tinyshakespeare/input.txt");
    let args = [
        &["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--calib", c.to_str().unwrap()][..],
        &["--calib-samples", "8", "--calib-seqlen", "64"],
        extra,
    ]
    .concat();
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn real_stories260k_layers_through_the_emulated_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("lb4", vec!["--method", "rtn", "--bits", "4", "--group-size", "32"]),
        ("gptq3act", vec!["--method", "gptq", "--bits", "3", "--group-size", "16", "--act-order"]),
        ("awq", vec!["--method", "awq", "--bits", "4", "--group-size", "32", "--format", "awq"]),
        ("gptqfmt", vec!["--method", "gptq", "--bits", "4", "--group-size", "32", "--format", "gptq", "--act-order", "--sym"]),
        ("shift", vec!["--method", "shift", "--bits", "3", "--group-size", "64"]),
        (
            "vq8",
            vec![
                "--method",
                "vptq",
                "--vector-len",
                "8",
                "--centroids",
                "64",
                "--res-centroids",
                "16",
                "--vq-normalize",
                "--outlier-pct",
                "3",
                "--override",
                "gate_proj|up_proj=rtn:4:32",
            ],
        ),
    ];
    let mut n = 0;
    for (name, args) in cases {
        let d = tmp.path().join(name);
        quantize(&d, &args);
        for s in lowbit::verify::select(&d, None).unwrap() {
            let cfg = lowbit::config::ModelConfig::load(&d.join("config.json")).unwrap();
            let scheme = lowbit::qmodel::QuantScheme::from_config(&d, &cfg.raw).unwrap().unwrap();
            let ck = lowbit::weights::Checkpoint::open(&d).unwrap();
            let stored = scheme.read_any(&ck, &s.prefix).unwrap().unwrap();
            let l = PackedOnGpu::from(&stored);
            let (o, i) = l.shape();
            let x = synth::activations(2, i, 3);
            let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            // The checkpoint's own CPU product (src/pack) is the reference here.
            let want = stored.dequant_matmul(&xf, 2);
            let got = match &l {
                PackedOnGpu::Vq { .. } => emulate_vq_layer(&l, &x, 2, 2),
                _ => {
                    let lay = check_gq_decode(name, &l);
                    emulate_gq(&lay, &x, 2, 2)
                }
            };
            check_close(&format!("{name} {} ({o}x{i})", s.prefix), &got, &want, 3e-3);
            n += 1;
        }
    }
    assert!(n >= 60, "{n} layers");
}
