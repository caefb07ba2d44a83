//! GGUF export: every block type against hand-computed bytes and values; the block-grid quantizer
//! and llama.cpp's fallbacks; stories260K exported at Q8_0 / Q4_0 / Q4_K and re-read by lowbit with
//! the same perplexity as the lowbit-format output of the same codes; a GGUF decoder written here
//! from the spec (not lowbit's reader) reproducing every tensor of an exported file; bad inputs.

mod common;

use common::{lowbit, shared, stories, tinystories_text, Rng};
use half::f16;
use lowbit::gguf::blocks::{self, Block, Kind};
use lowbit::gguf::{dequantize, GgmlType, Gguf};
use lowbit::quant::gguf as qg;
use lowbit::st_write::{write_safetensors, OutTensor};
use serde_json::Value as Json;
use std::path::Path;

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// A hand-specified block: the expected bytes and values, and the fields that should encode to them.
struct Case {
    ty: GgmlType,
    block: Block,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn blk(ty: GgmlType, d: f32, dmin: f32, sc: &[i16], mn: &[u8], q: Vec<u8>) -> Block {
    let mut b = Block { ty, d: f16::from_f32(d).to_bits(), dmin: f16::from_f32(dmin).to_bits(), sc: [0; 16], mn: [0; 16], q };
    b.sc[..sc.len()].copy_from_slice(sc);
    b.mn[..mn.len()].copy_from_slice(mn);
    b
}

/// Byte layouts worked out by hand from ggml-common.h's structs and ggml-quants.c's
/// dequantize_row_* (the same examples as docs/formats.md).
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Q8_0: d = 0.5, q = i - 16 (int8).
    let mut bytes = h(0.5).to_vec();
    bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
    v.push(Case {
        ty: GgmlType::Q8_0,
        block: blk(GgmlType::Q8_0, 0.5, 0.0, &[], &[], (0..32).map(|i| (i + 112) as u8).collect()),
        bytes,
        values: (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect(),
    });
    // Q4_0: d = 2, codes i % 16: byte j = code j | code j+16 << 4 = j·0x11.
    let mut bytes = h(2.0).to_vec();
    bytes.extend((0..16).map(|j| (j * 0x11) as u8));
    v.push(Case {
        ty: GgmlType::Q4_0,
        block: blk(GgmlType::Q4_0, 2.0, 0.0, &[], &[], (0..32).map(|i| (i % 16) as u8).collect()),
        bytes,
        values: (0..32).map(|i| ((i % 16) as f32 - 8.0) * 2.0).collect(),
    });
    // Q4_1: d = 0.25, m = -1, codes 15 - i % 16.
    let mut bytes = h(0.25).to_vec();
    bytes.extend(h(-1.0));
    bytes.extend((0..16).map(|j| ((15 - j) * 0x11) as u8));
    v.push(Case {
        ty: GgmlType::Q4_1,
        block: blk(GgmlType::Q4_1, 0.25, -1.0, &[], &[], (0..32).map(|i| (15 - i % 16) as u8).collect()),
        bytes,
        values: (0..32).map(|i| (15 - i % 16) as f32 * 0.25 - 1.0).collect(),
    });
    // Q5_0: d = 1, codes i: low nibbles j·0x11, 5th bits set for elements 16..32 → qh = 0xFFFF0000.
    let mut bytes = h(1.0).to_vec();
    bytes.extend([0x00, 0x00, 0xFF, 0xFF]);
    bytes.extend((0..16).map(|j| (j * 0x11) as u8));
    v.push(Case {
        ty: GgmlType::Q5_0,
        block: blk(GgmlType::Q5_0, 1.0, 0.0, &[], &[], (0..32).map(|i| i as u8).collect()),
        bytes,
        values: (0..32).map(|i| i as f32 - 16.0).collect(),
    });
    // Q5_1: d = 0.5, m = 2, codes 31 - i: 5th bits set for elements 0..16 → qh = 0x0000FFFF.
    let mut bytes = h(0.5).to_vec();
    bytes.extend(h(2.0));
    bytes.extend([0xFF, 0xFF, 0x00, 0x00]);
    bytes.extend((0..16).map(|j| ((15 - j) * 0x11) as u8));
    v.push(Case {
        ty: GgmlType::Q5_1,
        block: blk(GgmlType::Q5_1, 0.5, 2.0, &[], &[], (0..32).map(|i| (31 - i) as u8).collect()),
        bytes,
        values: (0..32).map(|i| (31 - i) as f32 * 0.5 + 2.0).collect(),
    });
    // Codes (e % 128) / 32 for the 2-bit planes: every qs byte is 0|1<<2|2<<4|3<<6 = 0xE4.
    let plane = |e: usize| ((e % 128) / 32) as u8;
    // Q2_K: scales byte s = s | (15 - s) << 4, d = 1, dmin = 0.5.
    let sc: Vec<i16> = (0..16).collect();
    let mn: Vec<u8> = (0..16).map(|s| 15 - s).collect();
    let mut bytes: Vec<u8> = (0..16).map(|s| (s | ((15 - s) << 4)) as u8).collect();
    bytes.extend([0xE4; 64]);
    bytes.extend(h(1.0));
    bytes.extend(h(0.5));
    v.push(Case {
        ty: GgmlType::Q2_K,
        block: blk(GgmlType::Q2_K, 1.0, 0.5, &sc, &mn, (0..256).map(plane).collect()),
        bytes,
        values: (0..256).map(|e| (e / 16) as f32 * plane(e) as f32 - 0.5 * (15 - e / 16) as f32).collect(),
    });
    // Q3_K: codes plane | (e / 128) << 2 (high bit set in the second half: hmask bytes 0xF0),
    // scales s - 8 packed as worked out in docs/formats.md, d = 0.25.
    let sc: Vec<i16> = (0..16).map(|s| s - 8).collect();
    let mut bytes = vec![0xF0; 32];
    bytes.extend([0xE4; 64]);
    bytes.extend([0x08, 0x19, 0x2A, 0x3B, 0x4C, 0x5D, 0x6E, 0x7F, 0xA5, 0xA5, 0xA5, 0xA5]);
    bytes.extend(h(0.25));
    let q3 = |e: usize| plane(e) | (((e / 128) as u8) << 2);
    v.push(Case {
        ty: GgmlType::Q3_K,
        block: blk(GgmlType::Q3_K, 0.25, 0.0, &sc, &[], (0..256).map(q3).collect()),
        bytes,
        values: (0..256).map(|e| 0.25 * ((e / 16) as i32 - 8) as f32 * (q3(e) as f32 - 4.0)).collect(),
    });
    // Q4_K / Q5_K: scales 9j, mins 63 - 9j (bytes worked out in docs/formats.md), d = 1, dmin = 2;
    // Q4_K codes e % 16 (qs byte l: (l % 16)·0x11), Q5_K codes e % 32 (5th bits: qh[l] = 0xFF for l ≥ 16).
    let sc: Vec<i16> = (0..8).map(|j| 9 * j).collect();
    let mn: Vec<u8> = (0..8).map(|j| 63 - 9 * j).collect();
    let scale_bytes = [0x80, 0x89, 0xD2, 0xDB, 0x7F, 0x76, 0x2D, 0x24, 0xB4, 0x2D, 0x96, 0x0F];
    let qs: Vec<u8> = (0..128).map(|k| ((k % 16) * 0x11) as u8).collect();
    let mut bytes = h(1.0).to_vec();
    bytes.extend(h(2.0));
    bytes.extend(scale_bytes);
    bytes.extend(&qs);
    v.push(Case {
        ty: GgmlType::Q4_K,
        block: blk(GgmlType::Q4_K, 1.0, 2.0, &sc, &mn, (0..256).map(|e| (e % 16) as u8).collect()),
        bytes,
        values: (0..256).map(|e| (9 * (e / 32)) as f32 * (e % 16) as f32 - 2.0 * (63 - 9 * (e / 32)) as f32).collect(),
    });
    let mut bytes = h(1.0).to_vec();
    bytes.extend(h(2.0));
    bytes.extend(scale_bytes);
    bytes.extend((0..32).map(|l| if l >= 16 { 0xFF } else { 0x00 }));
    bytes.extend(&qs);
    v.push(Case {
        ty: GgmlType::Q5_K,
        block: blk(GgmlType::Q5_K, 1.0, 2.0, &sc, &mn, (0..256).map(|e| (e % 32) as u8).collect()),
        bytes,
        values: (0..256).map(|e| (9 * (e / 32)) as f32 * (e % 32) as f32 - 2.0 * (63 - 9 * (e / 32)) as f32).collect(),
    });
    // Q6_K: codes e % 64 (ql byte l: (l % 16)·0x11; qh byte l: 0x88 for l < 16, 0xDD after),
    // scales 8s - 64 (int8), d = 0.5.
    let sc: Vec<i16> = (0..16).map(|s| 8 * s - 64).collect();
    let mut bytes: Vec<u8> = (0..128).map(|k| ((k % 16) * 0x11) as u8).collect();
    bytes.extend((0..64).map(|k| if k % 32 < 16 { 0x88 } else { 0xDD }));
    bytes.extend(sc.iter().map(|&s| s as i8 as u8));
    bytes.extend(h(0.5));
    v.push(Case {
        ty: GgmlType::Q6_K,
        block: blk(GgmlType::Q6_K, 0.5, 0.0, &sc, &[], (0..256).map(|e| (e % 64) as u8).collect()),
        bytes,
        values: (0..256).map(|e| 0.5 * (8 * (e / 16) - 64) as f32 * ((e % 64) as f32 - 32.0)).collect(),
    });
    v
}

#[test]
fn every_block_type_matches_hand_computed_bytes_and_values() {
    let cases = cases();
    assert_eq!(cases.len(), blocks::WRITABLE.len());
    for c in cases {
        let kind = Kind::of(c.ty).unwrap();
        assert_eq!(c.bytes.len(), kind.bytes, "{}: block size", c.ty);
        assert_eq!(c.ty.block(), Some((kind.block, kind.bytes)), "{}: traits", c.ty);
        let mut enc = vec![0u8; kind.bytes];
        blocks::encode(&kind, &c.block, &mut enc);
        assert_eq!(enc, c.bytes, "{}: encoded bytes", c.ty);
        assert_eq!(blocks::decode(&kind, &c.bytes), c.block, "{}: decoded fields", c.ty);
        // Two rows of the same block: the reader's dequantize equals the hand formula exactly.
        let two: Vec<u8> = c.bytes.iter().chain(&c.bytes).copied().collect();
        let vals = dequantize(c.ty, &two, 2 * kind.block).unwrap();
        for (i, (&got, &want)) in vals.iter().zip(c.values.iter().chain(&c.values)).enumerate() {
            assert_eq!(got, want, "{}: element {i}", c.ty);
        }
    }
}

#[test]
fn quantizer_lands_on_the_grid_and_falls_back_like_llama_cpp() {
    let mut rng = Rng(7);
    let (rows, cols) = (4, 512);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 0.05).collect();
    let norm: f64 = w.iter().map(|&x| (x as f64).powi(2)).sum();
    // Relative squared error bounds: about 4^-bits of a uniform range, with margin.
    for (ty, bound) in [
        (GgmlType::Q8_0, 1e-4),
        (GgmlType::Q6_K, 1e-3),
        (GgmlType::Q5_K, 4e-3),
        (GgmlType::Q5_1, 4e-3),
        (GgmlType::Q5_0, 4e-3),
        (GgmlType::Q4_K, 1.5e-2),
        (GgmlType::Q4_1, 1.5e-2),
        (GgmlType::Q4_0, 1.5e-2),
        (GgmlType::Q3_K, 6e-2),
        (GgmlType::Q2_K, 0.25),
    ] {
        let q = qg::quantize(ty, &w, rows, cols, None);
        assert_eq!(q.data.len(), rows * Kind::of(ty).unwrap().row_bytes(cols));
        // The stored values are what the reader decodes from the bytes.
        let deq = dequantize(ty, &q.data, rows * cols).unwrap();
        assert_eq!(deq, q.dequantize(), "{ty}");
        let err: f64 = w.iter().zip(&deq).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / norm;
        assert!(err < bound, "{ty}: relative squared error {err} ≥ {bound}");
    }
    use lowbit::gguf::blocks::fallback;
    // llama.cpp's table (llama-quant.cpp): Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→IQ4_NL
    // (Q4_0 here), F16 when no 32-block fits.
    assert_eq!(fallback(GgmlType::Q4_K, 576), Some(GgmlType::Q5_0));
    assert_eq!(fallback(GgmlType::Q5_K, 576), Some(GgmlType::Q5_1));
    assert_eq!(fallback(GgmlType::Q6_K, 64), Some(GgmlType::Q8_0));
    assert_eq!(fallback(GgmlType::Q3_K, 576), Some(GgmlType::Q4_0));
    assert_eq!(fallback(GgmlType::Q2_K, 1536), Some(GgmlType::Q2_K));
    assert_eq!(fallback(GgmlType::Q8_0, 172), None);
    assert_eq!(fallback(GgmlType::Q4_K, 172), None);
    // A row that needs the fallback: 64 columns asked as Q4_K are stored as Q5_0 blocks, whose
    // bytes decode as Q5_0 (d, qh, qs) by the hand rules above.
    let row: Vec<f32> = (0..64).map(|i| i as f32 - 32.0).collect();
    let t = fallback(GgmlType::Q4_K, 64).unwrap();
    let q = qg::quantize(t, &row, 1, 64, None);
    assert_eq!(q.data.len(), 2 * 22);
    let deq = dequantize(t, &q.data, 64).unwrap();
    let d0 = f16::from_le_bytes([q.data[0], q.data[1]]).to_f32();
    let qh = u32::from_le_bytes(q.data[2..6].try_into().unwrap());
    for (i, &v) in deq.iter().enumerate().take(16) {
        let lo = (q.data[6 + i] & 0xF) as u32 | ((qh >> i) & 1) << 4;
        assert_eq!(v, (lo as i32 - 16) as f32 * d0);
    }
    assert!(row.iter().zip(&deq).all(|(a, b)| (a - b).abs() <= 1.0), "{deq:?}");
}

#[test]
fn gptq_on_block_grids_beats_the_block_rtn_in_the_hessian_metric() {
    let mut rng = Rng(11);
    let (rows, cols, n) = (16, 256, 512);
    // Correlated inputs: x = z·M with a random mixing M.
    let m: Vec<f32> = (0..cols * cols).map(|_| rng.f32()).collect();
    let mut x = vec![0f32; n * cols];
    for r in 0..n {
        let z: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        for c in 0..cols {
            x[r * cols + c] = (0..8).map(|k| z[(c + k) % cols] * m[k * cols + c]).sum::<f32>() + 0.1 * z[c];
        }
    }
    let mut hess = vec![0f64; cols * cols];
    for r in 0..n {
        for i in 0..cols {
            for j in 0..cols {
                hess[i * cols + j] += 2.0 * (x[r * cols + i] * x[r * cols + j]) as f64 / n as f64;
            }
        }
    }
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 0.1).collect();
    for ty in [GgmlType::Q4_K, GgmlType::Q3_K, GgmlType::Q2_K, GgmlType::Q4_0, GgmlType::Q6_K] {
        let cfg = lowbit::quant::gptq::GptqConfig::new(8, 32, false);
        let (codes, params, rep) = lowbit::quant::gptq::gptq_on(&w, rows, cols, &hess, &cfg, &qg::BlockGrid::new(ty)).unwrap();
        assert!(rep.h_weighted_error < 0.9 * rep.rtn_error, "{ty}: gptq {} vs rtn {}", rep.h_weighted_error, rep.rtn_error);
        // The codes and blocks encode to bytes that decode to what GPTQ computed with.
        let q = qg::encode_matrix(ty, rows, cols, &codes, &params);
        let deq = dequantize(ty, &q.data, rows * cols).unwrap();
        let err = |d: &[f32]| -> f64 {
            let e: Vec<f64> = w.iter().zip(d).map(|(&a, &b)| a as f64 - b as f64).collect();
            (0..rows)
                .map(|r| {
                    (0..cols).map(|i| (0..cols).map(|j| e[r * cols + i] * hess[i * cols + j] * e[r * cols + j]).sum::<f64>()).sum::<f64>()
                })
                .sum()
        };
        let e = err(&deq);
        assert!((e - rep.h_weighted_error).abs() <= 1e-3 * e.max(1e-12), "{ty}: decoded error {e} vs reported {}", rep.h_weighted_error);
    }
}

// ---------------------------------------------------------------------------------------------
// CLI: stories260K

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn run_ok(args: &[&str]) -> String {
    let (code, out, err) = lowbit(args);
    assert_eq!(code, 0, "lowbit {args:?} failed:\n{err}");
    out
}

fn ppl(model: &Path, tokenizer: Option<&Path>) -> f64 {
    let text = tinystories_text();
    let mut args =
        vec!["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "256", "--max-windows", "20", "--json"];
    if let Some(t) = tokenizer {
        args.extend(["--tokenizer", t.to_str().unwrap()]);
    }
    let out = run_ok(&args);
    let v: Json = serde_json::from_str(out.trim()).unwrap();
    v["ppl"].as_f64().unwrap()
}

#[test]
fn stories_gguf_ppl_equals_the_lowbit_format_of_the_same_codes() {
    let d = tmp();
    let s = stories();
    let tok = s.join("tokenizer.json");
    let fp = ppl(&s, None);
    // stories260K's rows are 64 and 172 wide: Q4_K falls back to Q5_0 (64) and F16 (172).
    for (ty, lowbit_ty) in [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q4_k", "q5_0")] {
        let g = d.path().join(format!("{ty}.gguf"));
        let out = run_ok(&[
            "quantize",
            "--model",
            s.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
            "--method",
            "rtn",
            "--format",
            "gguf",
            "--gguf-type",
            ty,
            "--float-dtype",
            "f32",
            "--token-embedding-type",
            "f32",
            "--output-tensor-type",
            "f32",
            "--json",
        ]);
        let summary: Json = serde_json::from_str(out.trim()).unwrap();
        let fallbacks: Vec<&str> = summary["fallbacks"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(fallbacks.iter().any(|f| f.starts_with("mlp.down_proj in 5 layer(s)") && f.contains("-> F16")), "{fallbacks:?}");
        if ty == "q4_k" {
            assert!(fallbacks.iter().any(|f| f.starts_with("self_attn.q_proj in 5 layer(s): Q4_K -> Q5_0")), "{fallbacks:?}");
        }
        let l = d.path().join(format!("{ty}-lowbit"));
        run_ok(&[
            "quantize",
            "--model",
            s.to_str().unwrap(),
            "--out",
            l.to_str().unwrap(),
            "--method",
            "rtn",
            "--format",
            "lowbit",
            "--gguf-type",
            lowbit_ty,
            "--float-dtype",
            "f32",
        ]);
        let (pg, pl) = (ppl(&g, Some(&tok)), ppl(&l, None));
        assert_eq!(pg, pl, "{ty}: gguf ppl {pg} vs lowbit-format ppl {pl}");
        assert!(pg < fp * 1.2 && pg > fp * 0.9, "{ty}: ppl {pg} vs float {fp}");
        // inspect reads the file: the linears' types.
        let ins = run_ok(&["inspect", "--model", g.to_str().unwrap(), "--json"]);
        let ins: Json = serde_json::from_str(&ins).unwrap();
        let want = if ty == "q4_k" { "Q5_0" } else { &ty.to_uppercase() };
        assert!(ins["dtypes"][want]["tensors"].as_u64().unwrap() >= 30, "{ins}");
    }
}

#[test]
fn gptq_and_awq_export_gguf_from_calibration() {
    let d = tmp();
    let s = stories();
    let calib = tinystories_text();
    let mut p = Vec::new();
    for m in ["rtn", "awq", "gptq"] {
        let g = d.path().join(format!("{m}.gguf"));
        run_ok(&[
            "quantize",
            "--model",
            s.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
            "--method",
            m,
            "--format",
            "gguf",
            "--gguf-type",
            "q4_0",
            "--calib",
            calib.to_str().unwrap(),
            "--calib-samples",
            "64",
            "--calib-seqlen",
            "256",
        ]);
        p.push(ppl(&g, Some(&s.join("tokenizer.json"))));
    }
    // GPTQ's error feedback on the Q4_0 grid beats plain rounding on the same grid.
    assert!(p[2] < p[0], "gptq {} vs rtn {}", p[2], p[0]);
    assert!(p[1].is_finite() && p[1] < p[0] * 1.1, "awq {} vs rtn {}", p[1], p[0]);
}

#[test]
fn bad_inputs_exit_2_naming_the_problem() {
    let d = tmp();
    let s = stories();
    let out = d.path().join("x.gguf");
    let base = ["quantize", "--model", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn", "--format", "gguf"];
    let mut args = base.to_vec();
    args.extend(["--gguf-type", "q7_k"]);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("q7_k") && err.contains("unknown GGUF block type"), "{err}");
    // An explicit type no row of the tensor can take (172 columns, Q8_0 needs multiples of 32).
    let mut args = base.to_vec();
    args.extend(["--override", "mlp.down_proj=rtn:q8_0"]);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 2, "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("model.layers.0.mlp.down_proj") && line.contains("172") && line.contains("Q8_0"), "{err}");
    // A family other than llama.
    let q = shared("testdata/arch/qwen2-bias");
    let (code, _, err) =
        lowbit(&["quantize", "--model", q.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn", "--format", "gguf"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model_type \"qwen2\"") && err.contains("config.json"), "{err}");
    // A method that has no block grid.
    let mut args = base.to_vec();
    args[7] = "statsq";
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("statsq"), "{err}");
    assert!(!out.exists(), "no output after errors");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "nothing left beside the output");
}

// ---------------------------------------------------------------------------------------------
// A GGUF decoder from the spec (docs/formats.md, ggml-common.h), independent of lowbit's reader.

struct SpecTensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

struct SpecFile {
    kv: std::collections::HashMap<String, (u32, Vec<u8>)>,
    tensors: Vec<SpecTensor>,
}

fn spec_read(path: &Path) -> SpecFile {
    let b = std::fs::read(path).unwrap();
    let mut p = 0usize;
    let take = |n: usize, p: &mut usize| {
        let s = b[*p..*p + n].to_vec();
        *p += n;
        s
    };
    let u32_ = |v: Vec<u8>| u32::from_le_bytes(v.try_into().unwrap());
    let u64_ = |v: Vec<u8>| u64::from_le_bytes(v.try_into().unwrap());
    assert_eq!(take(4, &mut p), b"GGUF");
    assert_eq!(u32_(take(4, &mut p)), 3);
    let nt = u64_(take(8, &mut p));
    let nkv = u64_(take(8, &mut p));
    fn skip_value(b: &[u8], p: &mut usize, ty: u32) {
        let fixed = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
        match ty {
            8 => {
                let n = u64::from_le_bytes(b[*p..*p + 8].try_into().unwrap()) as usize;
                *p += 8 + n;
            }
            9 => {
                let et = u32::from_le_bytes(b[*p..*p + 4].try_into().unwrap());
                let n = u64::from_le_bytes(b[*p + 4..*p + 12].try_into().unwrap());
                *p += 12;
                for _ in 0..n {
                    skip_value(b, p, et);
                }
            }
            t => *p += fixed[t as usize],
        }
    }
    let mut kv = std::collections::HashMap::new();
    for _ in 0..nkv {
        let n = u64_(take(8, &mut p)) as usize;
        let key = String::from_utf8(take(n, &mut p)).unwrap();
        let ty = u32_(take(4, &mut p));
        let start = p;
        skip_value(&b, &mut p, ty);
        kv.insert(key, (ty, b[start..p].to_vec()));
    }
    let mut infos = Vec::new();
    for _ in 0..nt {
        let n = u64_(take(8, &mut p)) as usize;
        let name = String::from_utf8(take(n, &mut p)).unwrap();
        let nd = u32_(take(4, &mut p));
        let dims: Vec<u64> = (0..nd).map(|_| u64_(take(8, &mut p))).collect();
        let ty = u32_(take(4, &mut p));
        let off = u64_(take(8, &mut p));
        infos.push((name, dims, ty, off));
    }
    let data_start = p.div_ceil(32) * 32;
    let tensors = infos
        .into_iter()
        .map(|(name, dims, ty, off)| {
            let n: u64 = dims.iter().product();
            let (blk, bytes) = spec_sizes(ty);
            let len = n as usize / blk * bytes;
            let s = data_start + off as usize;
            assert_eq!(off % 32, 0, "{name}: unaligned");
            SpecTensor { name, dims, ty, data: b[s..s + len].to_vec() }
        })
        .collect();
    SpecFile { kv, tensors }
}

fn spec_sizes(ty: u32) -> (usize, usize) {
    match ty {
        0 => (1, 4),
        1 => (1, 2),
        30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        t => panic!("type {t}"),
    }
}

fn f16at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml's dequantize_row_* for one block, written from the spec in its own loop order.
fn spec_block(ty: u32, x: &[u8], y: &mut Vec<f32>) {
    match ty {
        0 => y.push(f32::from_le_bytes(x[..4].try_into().unwrap())),
        1 => y.push(f16at(x, 0)),
        30 => y.push(f32::from_bits((u16::from_le_bytes([x[0], x[1]]) as u32) << 16)),
        8 => {
            let d = f16at(x, 0);
            y.extend(x[2..34].iter().map(|&q| (q as i8) as f32 * d));
        }
        2 | 3 => {
            let d = f16at(x, 0);
            let (m, qs) = if ty == 3 { (f16at(x, 2), &x[4..20]) } else { (0.0, &x[2..18]) };
            let mut out = [0f32; 32];
            for j in 0..16 {
                let (x0, x1) = ((qs[j] & 0x0F) as i32, (qs[j] >> 4) as i32);
                if ty == 2 {
                    out[j] = (x0 - 8) as f32 * d;
                    out[j + 16] = (x1 - 8) as f32 * d;
                } else {
                    out[j] = x0 as f32 * d + m;
                    out[j + 16] = x1 as f32 * d + m;
                }
            }
            y.extend(out);
        }
        6 | 7 => {
            let d = f16at(x, 0);
            let (m, o) = if ty == 7 { (f16at(x, 2), 4) } else { (0.0, 2) };
            let qh = u32::from_le_bytes(x[o..o + 4].try_into().unwrap());
            let qs = &x[o + 4..o + 20];
            let mut out = [0f32; 32];
            for j in 0..16 {
                let xh0 = (((qh >> j) << 4) & 0x10) as i32;
                let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
                let (x0, x1) = ((qs[j] & 0x0F) as i32 | xh0, (qs[j] >> 4) as i32 | xh1);
                if ty == 6 {
                    out[j] = (x0 - 16) as f32 * d;
                    out[j + 16] = (x1 - 16) as f32 * d;
                } else {
                    out[j] = x0 as f32 * d + m;
                    out[j + 16] = x1 as f32 * d + m;
                }
            }
            y.extend(out);
        }
        10 => {
            let (sc, qs) = (&x[0..16], &x[16..80]);
            let (d, min) = (f16at(x, 80), f16at(x, 82));
            let mut is = 0;
            for n in 0..2 {
                let q = &qs[32 * n..];
                for j in 0..4 {
                    for half in 0..2 {
                        let s = sc[is];
                        is += 1;
                        let (dl, ml) = (d * (s & 0xF) as f32, min * (s >> 4) as f32);
                        for l in 0..16 {
                            y.push(dl * ((q[l + 16 * half] >> (2 * j)) & 3) as f32 - ml);
                        }
                    }
                }
            }
        }
        11 => {
            let (hm, qs, sr) = (&x[0..32], &x[32..96], &x[96..108]);
            let d = f16at(x, 108);
            // 6-bit scales: low 4 bits from bytes 0..8 (low nibbles, then high nibbles), top 2 bits
            // from bytes 8..12 two at a time.
            let sc: Vec<i32> = (0..16)
                .map(|s| {
                    let lo = if s < 8 { sr[s] & 0xF } else { sr[s - 8] >> 4 };
                    let hi = (sr[8 + s % 4] >> (2 * (s / 4))) & 3;
                    (lo | (hi << 4)) as i32 - 32
                })
                .collect();
            let mut is = 0;
            let mut m = 1u8;
            for n in 0..2 {
                let q = &qs[32 * n..];
                for j in 0..4 {
                    for half in 0..2 {
                        let dl = d * sc[is] as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * half;
                            let v = ((q[k] >> (2 * j)) & 3) as i32 - if hm[k] & m != 0 { 0 } else { 4 };
                            y.push(dl * v as f32);
                        }
                    }
                    m <<= 1;
                }
            }
        }
        12 | 13 => {
            let (d, min) = (f16at(x, 0), f16at(x, 2));
            let s = &x[4..16];
            let get = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
                }
            };
            let (qh, ql) = if ty == 13 { (&x[16..48], &x[48..176]) } else { (&x[0..0], &x[16..144]) };
            for c in 0..4 {
                let (s1, m1) = get(2 * c);
                let (s2, m2) = get(2 * c + 1);
                let (d1, mm1, d2, mm2) = (d * s1 as f32, min * m1 as f32, d * s2 as f32, min * m2 as f32);
                let q = &ql[32 * c..];
                for l in 0..32 {
                    let hbit = if ty == 13 && qh[l] & (1 << (2 * c)) != 0 { 16 } else { 0 };
                    y.push(d1 * ((q[l] & 0xF) + hbit) as f32 - mm1);
                }
                for l in 0..32 {
                    let hbit = if ty == 13 && qh[l] & (2 << (2 * c)) != 0 { 16 } else { 0 };
                    y.push(d2 * ((q[l] >> 4) + hbit) as f32 - mm2);
                }
            }
        }
        14 => {
            let (ql, qh, sc) = (&x[0..128], &x[128..192], &x[192..208]);
            let d = f16at(x, 208);
            for n in 0..2 {
                let mut out = [0f32; 128];
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
                y.extend(out);
            }
        }
        t => panic!("type {t}"),
    }
}

fn spec_decode(t: &SpecTensor) -> Vec<f32> {
    let (blk, bytes) = spec_sizes(t.ty);
    let mut y = Vec::new();
    for x in t.data.chunks_exact(bytes) {
        spec_block(t.ty, x, &mut y);
    }
    assert_eq!(y.len(), t.dims.iter().product::<u64>() as usize * blk / blk);
    y
}

/// A random llama checkpoint wide enough for every k-quant (hidden 256, ffn 512, 2 layers), with
/// stories260K's tokenizer.
fn wide_llama(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (d, f, v, layers) = (256usize, 512usize, 512usize, 2usize);
    let cfg = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": d, "intermediate_size": f,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": v,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": false,
        "hidden_act": "silu",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(stories().join(f), dir.join(f)).unwrap();
    }
    let mut rng = Rng(5);
    let mut ts: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut mat = |name: String, r: usize, c: usize| ts.push((name, vec![r, c], (0..r * c).map(|_| rng.f32() * 0.08).collect()));
    mat("model.embed_tokens.weight".into(), v, d);
    mat("lm_head.weight".into(), v, d);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        mat(format!("{p}.self_attn.q_proj.weight"), d, d);
        mat(format!("{p}.self_attn.k_proj.weight"), d / 2, d);
        mat(format!("{p}.self_attn.v_proj.weight"), d / 2, d);
        mat(format!("{p}.self_attn.o_proj.weight"), d, d);
        mat(format!("{p}.mlp.gate_proj.weight"), f, d);
        mat(format!("{p}.mlp.up_proj.weight"), f, d);
        mat(format!("{p}.mlp.down_proj.weight"), d, f);
    }
    for i in 0..layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            ts.push((format!("model.layers.{i}.{n}.weight"), vec![d], vec![1.0; d]));
        }
    }
    ts.push(("model.norm.weight".into(), vec![d], vec![1.0; d]));
    let outs: Vec<OutTensor> = ts.iter().map(|(n, s, v)| OutTensor::f32(n.clone(), s.clone(), v)).collect();
    write_safetensors(&dir.join("model.safetensors"), &outs, None).unwrap();
    ts
}

/// llama.cpp's converter permutation of Q/K rows, written from its reshape/swapaxes.
fn convert_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; w.len()];
    // reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): new index (h, j, i) takes old (h, i, j).
    for hh in 0..n_head {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let src = hh * hd + i * (hd / 2) + j;
                let dst = hh * hd + j * 2 + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name_of(hf: &str) -> String {
    let m = [
        ("model.embed_tokens", "token_embd"),
        ("lm_head", "output"),
        ("model.norm", "output_norm"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("model.layers", "blk"),
    ];
    let mut s = hf.to_string();
    for (a, b) in m {
        s = s.replace(a, b);
    }
    s
}

#[test]
fn a_decoder_from_the_spec_reproduces_every_tensor() {
    let d = tmp();
    let model = d.path().join("wide");
    std::fs::create_dir(&model).unwrap();
    let ts = wide_llama(&model);
    for (ty, code, bound) in [
        ("q8_0", 8u32, 0.01),
        ("q6_k", 14, 0.03),
        ("q5_k", 13, 0.06),
        ("q5_1", 7, 0.06),
        ("q5_0", 6, 0.06),
        ("q4_k", 12, 0.12),
        ("q4_1", 3, 0.12),
        ("q4_0", 2, 0.12),
        ("q3_k", 11, 0.25),
        ("q2_k", 10, 0.6),
    ] {
        let out = d.path().join(format!("{ty}.gguf"));
        run_ok(&[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "rtn",
            "--format",
            "gguf",
            "--gguf-type",
            ty,
            "--token-embedding-type",
            ty,
            "--output-tensor-type",
            ty,
        ]);
        let f = spec_read(&out);
        let arch = &f.kv["general.architecture"].1;
        assert_eq!(&arch[8..], b"llama");
        assert_eq!(f.kv["llama.attention.head_count_kv"].1, 2u32.to_le_bytes());
        assert_eq!(f.tensors.len(), ts.len());
        let g = Gguf::open(&out).unwrap();
        for (name, shape, w) in &ts {
            let gname = gguf_name_of(name);
            let t = f.tensors.iter().find(|t| t.name == gname).unwrap_or_else(|| panic!("{gname} missing"));
            let dims: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
            assert_eq!(t.dims, dims, "{gname}");
            let y = spec_decode(t);
            // Bit-equal to lowbit's reader.
            assert_eq!(y, g.tensor_f32(&gname).unwrap().1, "{ty} {gname}");
            if shape.len() == 1 {
                assert_eq!(t.ty, 0, "{gname}: 1-D tensors are F32");
                assert_eq!(&y, w);
                continue;
            }
            assert_eq!(t.ty, code, "{ty} {gname}: stored type");
            // Close to the float weight in llama.cpp's row order.
            let (r, c) = (shape[0], shape[1]);
            let want = if name.contains("q_proj") {
                convert_permute(w, r, c, 4)
            } else if name.contains("k_proj") {
                convert_permute(w, r, c, 2)
            } else {
                w.clone()
            };
            let num: f64 = y.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            assert!(rel < bound, "{ty} {gname}: relative error {rel} ≥ {bound}");
        }
    }
}

#[test]
fn tokenizer_metadata_matches_llama_cpp_converter_output() {
    // stories260K.gguf was written by llama.cpp's converter: lowbit's export must carry the same
    // tokens, token types and special ids, and scores that order the merged tokens the same way.
    let d = tmp();
    let out = d.path().join("s.gguf");
    run_ok(&[
        "quantize",
        "--model",
        stories().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "rtn",
        "--format",
        "gguf",
        "--gguf-type",
        "q8_0",
    ]);
    let mine = Gguf::open(&out).unwrap();
    let refg = Gguf::open(stories().join("stories260K.gguf")).unwrap();
    assert_eq!(mine.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    assert_eq!(mine.get_str_array("tokenizer.ggml.tokens").unwrap(), refg.get_str_array("tokenizer.ggml.tokens").unwrap());
    assert_eq!(mine.get_i64_array("tokenizer.ggml.token_type").unwrap(), refg.get_i64_array("tokenizer.ggml.token_type").unwrap());
    for k in ["bos", "eos", "unknown"] {
        let key = format!("tokenizer.ggml.{k}_token_id");
        assert_eq!(mine.get_u32(&key).unwrap(), refg.get_u32(&key).unwrap(), "{key}");
    }
    assert_eq!(mine.get_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(true));
    let toks = mine.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    let (a, b) =
        (mine.get_f64_array("tokenizer.ggml.scores").unwrap().unwrap(), refg.get_f64_array("tokenizer.ggml.scores").unwrap().unwrap());
    // Merged (multi-character, non-byte, non-special) tokens in the same score order.
    let merged: Vec<usize> = (0..toks.len()).filter(|&i| a[i] != 0.0).collect();
    assert!(merged.len() > 100, "{}", merged.len());
    for w in merged.windows(2) {
        let (i, j) = (w[0], w[1]);
        assert_eq!(a[i] > a[j], b[i] > b[j], "score order of {:?} and {:?}", toks[i], toks[j]);
    }
    for k in [
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.dimension_count",
        "llama.context_length",
    ] {
        assert_eq!(mine.get_u64(k).unwrap(), refg.get_u64(k).unwrap(), "{k}");
    }
}

#[test]
fn llama_variants_write_their_rope_and_head_metadata_or_are_refused() {
    let d = tmp();
    let export = |name: &str| {
        let out = d.path().join(format!("{name}.gguf"));
        let m = shared(&format!("testdata/arch/{name}"));
        let r = lowbit(&[
            "quantize",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "rtn",
            "--format",
            "gguf",
            "--gguf-type",
            "q8_0",
        ]);
        (r, out)
    };
    let ((code, _, err), out) = export("llama-rope-linear");
    assert_eq!(code, 0, "{err}");
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.get_str("llama.rope.scaling.type").unwrap(), Some("linear"));
    assert_eq!(g.get_f32("llama.rope.scaling.factor").unwrap(), Some(4.0));
    let ((code, _, err), out) = export("llama-headdim");
    assert_eq!(code, 0, "{err}");
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.get_u32("llama.attention.key_length").unwrap(), Some(32));
    assert_eq!(g.get_u32("llama.rope.dimension_count").unwrap(), Some(32));
    // llama3 rope scaling: the converter's per-frequency factors, 1 for wavelengths below
    // original_ctx / high_freq_factor, the factor above original_ctx / low_freq_factor.
    let ((code, _, err), out) = export("llama3-rope");
    assert_eq!(code, 0, "{err}");
    let g = Gguf::open(&out).unwrap();
    let (shape, f) = g.tensor_f32("rope_freqs.weight").unwrap();
    assert_eq!(shape, [8]);
    let (theta, dim, old, factor) = (500000f64, 16f64, 64f64, 8f64);
    for (i, &v) in f.iter().enumerate() {
        let wl = 2.0 * std::f64::consts::PI * theta.powf(2.0 * i as f64 / dim);
        if wl < old / 4.0 {
            assert_eq!(v, 1.0, "{i}");
        } else if wl > old {
            assert_eq!(v, factor as f32, "{i}");
        } else {
            assert!(v > 1.0 && v < factor as f32, "{i}: {v}");
        }
    }
    let ((code, _, err), out) = export("mistral-swa");
    assert_eq!(code, 2);
    assert!(err.contains("sliding_window") && err.contains("config.json"), "{err}");
    assert!(!out.exists());
    let ((code, _, err), _) = export("llama-bias");
    assert_eq!(code, 2);
    assert!(err.contains("attention_bias"), "{err}");
}

/// A GGUF output is one file: an existing one is replaced only with --force and only when lowbit
/// wrote it; a foreign file is left untouched even with --force, and the model directory is no
/// place for the output.
#[test]
fn gguf_output_replaces_only_what_lowbit_wrote() {
    let d = tmp();
    let s = stories();
    let out = d.path().join("m.gguf");
    let args = |o: &Path, force: bool| {
        let mut a: Vec<String> =
            ["quantize", "--model", s.to_str().unwrap(), "--out", o.to_str().unwrap(), "--method", "rtn", "--format", "gguf"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        if force {
            a.push("--force".into());
        }
        a
    };
    let run = |a: Vec<String>| lowbit(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(args(&out, false)).0, 0);
    let (code, _, err) = run(args(&out, false));
    assert!(code == 2 && err.contains("exists"), "{err}");
    let (code, _, err) = run(args(&out, true));
    assert_eq!(code, 0, "{err}");
    let foreign = d.path().join("notes.gguf");
    std::fs::write(&foreign, b"my own notes").unwrap();
    let (code, _, err) = run(args(&foreign, true));
    assert!(code == 2 && err.contains("not a GGUF file lowbit wrote"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"my own notes");
    let inside = s.join("out.gguf");
    let (code, _, err) = run(args(&inside, false));
    assert!(code == 2 && err.contains("model directory"), "{err}");
    assert!(!inside.exists());
}
