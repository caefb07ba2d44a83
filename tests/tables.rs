//! Quantized token embeddings and lm_head (`--override 'embed_tokens=rtn:8'`, `lm_head=...`) in
//! the lowbit layout: eval reads them exactly as an unpacker written here from docs/formats.md
//! does, tied embeddings are stored once, inspect and --dry-run count them; and the planner's
//! refusals: tables in layouts whose loaders read none, overrides or skips matching nothing,
//! `vptq:BITS`.
mod common;
use common::*;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Code `c` of a lowbit qweight row: stream bits `[c*b, c*b+b)`, stream bit `k` = bit `k % 8` of
/// byte `k / 8` (docs/formats.md).
fn code(row: &[u8], b: usize, c: usize) -> u32 {
    (0..b).map(|j| ((row[(c * b + j) / 8] >> ((c * b + j) % 8)) & 1) as u32).enumerate().map(|(j, bit)| bit << j).sum()
}

/// The float table `[out][in]` of a lowbit affine module: `(q - z) * s`, group `i / g`.
fn unpack_lowbit(st: &SafeTensors, prefix: &str, meta: &Value) -> Vec<f32> {
    let (b, g) = (meta["bits"].as_u64().unwrap() as usize, meta["group_size"].as_u64().unwrap() as usize);
    let (o, i) = (meta["out_features"].as_u64().unwrap() as usize, meta["in_features"].as_u64().unwrap() as usize);
    assert_eq!(meta["grid"], "affine");
    let qw = st.tensor(&format!("{prefix}.qweight")).unwrap();
    let rb = qw.shape()[1];
    let sc: Vec<f32> = st
        .tensor(&format!("{prefix}.scales"))
        .unwrap()
        .data()
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    let z = st.tensor(&format!("{prefix}.qzeros")).unwrap().data().to_vec();
    let ng = i.div_ceil(g);
    let mut w = vec![0f32; o * i];
    for r in 0..o {
        let row = &qw.data()[r * rb..(r + 1) * rb];
        for c in 0..i {
            let k = r * ng + c / g;
            w[r * i + c] = (code(row, b, c) as f32 - z[k] as f32) * sc[k];
        }
    }
    w
}

/// A copy of the lowbit output `q` with its packed tables replaced by float tables unpacked by
/// [`unpack_lowbit`] (and their entries dropped from quantization_config.modules).
fn rebuild_tables(q: &Path, out: &Path) -> usize {
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(q.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    let mut n = 0;
    for name in st.names() {
        let table = ["model.embed_tokens.", "lm_head."].iter().find(|p| name.starts_with(*p)).map(|p| p.trim_end_matches('.'));
        match table {
            Some(p) if name.ends_with(".qweight") => {
                let meta = cfg["quantization_config"]["modules"][p].clone();
                let w = unpack_lowbit(&st, p, &meta);
                let shape = vec![meta["out_features"].as_u64().unwrap() as usize, meta["in_features"].as_u64().unwrap() as usize];
                tensors.push(lowbit::st_write::OutTensor::f32(format!("{p}.weight"), shape, &w));
                cfg["quantization_config"]["modules"].as_object_mut().unwrap().remove(p);
                n += 1;
            }
            Some(_) if !name.ends_with(".weight") => {}
            _ => {
                let t = st.tensor(name).unwrap();
                tensors.push(lowbit::st_write::OutTensor::copy_of(name, &t));
            }
        }
    }
    std::fs::create_dir_all(out).unwrap();
    lowbit::st_write::write_safetensors(&out.join("model.safetensors"), &tensors, None).unwrap();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(q.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    n
}

fn quantize(model: &Path, out: &Path, args: &[&str]) -> (i32, String, String) {
    let (m, o) = (s(model), s(out));
    let mut a = vec!["quantize", "--model", &m, "--out", &o, "--method", "rtn", "--bits", "4", "--group-size", "32", "--json"];
    a.extend(args);
    lowbit(&a)
}

fn ppl(d: &Path, ctx: &str) -> f64 {
    let t = tinystories_text();
    let (code, out, err) = lowbit(&["eval", "--model", &s(d), "--text", &s(&t), "--ctx", ctx, "--json"]);
    assert_eq!(code, 0, "eval {}: {err}", d.display());
    serde_json::from_str::<Value>(&out).unwrap()["ppl"].as_f64().unwrap()
}

#[test]
fn quantized_tables_untied_and_tied() {
    let tmp = tempfile::tempdir().unwrap();
    // stories260K: untied embedding and lm_head, each with its own plan.
    let (q, plain, f) = (tmp.path().join("q"), tmp.path().join("plain"), tmp.path().join("f"));
    let ov = ["--override", "embed_tokens=rtn:8", "--override", "lm_head=rtn:6:16"];
    let (code, dry, err) = quantize(&stories(), &q, &[&ov[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, real, err) = quantize(&stories(), &q, &ov);
    assert_eq!(code, 0, "{err}");
    let (dry, real): (Value, Value) = (serde_json::from_str(&dry).unwrap(), serde_json::from_str(&real).unwrap());
    for k in ["bytes", "linear_bpw", "model_bpw"] {
        assert_eq!(dry[k], real[k], "{k}");
    }
    let (code, p, _) = quantize(&stories(), &plain, &[]);
    assert_eq!(code, 0);
    let p: Value = serde_json::from_str(&p).unwrap();
    assert!(real["model_bpw"].as_f64().unwrap() < p["model_bpw"].as_f64().unwrap() - 1.0, "{real} vs {p}");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    let m = &cfg["quantization_config"]["modules"];
    assert_eq!(
        (m["model.embed_tokens"]["bits"].as_u64(), m["lm_head"]["bits"].as_u64(), m["lm_head"]["group_size"].as_u64()),
        (Some(8), Some(6), Some(16))
    );
    let (code, rep, err) = lowbit(&["inspect", "--model", &s(&q), "--json"]);
    assert_eq!(code, 0, "{err}");
    let rep: Value = serde_json::from_str(&rep).unwrap();
    assert_eq!(rep["bits_per_weight"], real["model_bpw"]);
    assert_eq!(rep["linear_bits_per_weight"], real["linear_bpw"]);
    assert_eq!(rep["parameters"], p_params(&stories()));
    assert_eq!(rebuild_tables(&q, &f), 2);
    let (pq, pf, pp) = (ppl(&q, "256"), ppl(&f, "256"), ppl(&plain, "256"));
    eprintln!("stories260K rtn 4-bit g32: float tables {pp}, embed 8-bit + lm_head 6-bit {pq}, rebuilt {pf}");
    assert!((pq - pf).abs() <= 1e-9 * pq, "{pq} vs {pf}");
    assert!(pq != pp && pq < pp * 1.1, "{pq} vs {pp}");

    // qwen2 fixture: tied embeddings, stored once whichever name the override gives.
    let d = shared("testdata/arch/qwen2-bias");
    let (t, tf) = (tmp.path().join("tied"), tmp.path().join("tied-f"));
    let (code, _, err) = quantize(&d, &t, &["--override", "lm_head=rtn:8"]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(t.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("model.embed_tokens.qweight").is_ok());
    assert!(st.names().iter().all(|n| !n.starts_with("lm_head") && *n != "model.embed_tokens.weight"), "{:?}", st.names());
    assert_eq!(rebuild_tables(&t, &tf), 1);
    let (a, b) = (ppl(&t, "96"), ppl(&tf, "96"));
    assert!((a - b).abs() <= 1e-9 * a, "{a} vs {b}");
    let (code, _, err) = quantize(&d, &tmp.path().join("x"), &["--override", "lm_head=rtn:8", "--override", "embed_tokens=rtn:6"]);
    assert_eq!(code, 2);
    assert!(err.contains("tied"), "{err}");

    // A pattern that also matches decoder linears applies to them only; the tables stay float.
    let b = tmp.path().join("broad");
    let (code, _, err) = quantize(&stories(), &b, &["--override", ".*=rtn:8"]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(b.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("model.embed_tokens.weight").is_ok() && st.tensor("lm_head.weight").is_ok());
    assert!(st.tensor("model.layers.0.mlp.down_proj.qweight").is_ok());
}

fn p_params(model: &Path) -> Value {
    let (_, rep, _) = lowbit(&["inspect", "--model", &s(model), "--json"]);
    serde_json::from_str::<Value>(&rep).unwrap()["parameters"].clone()
}

#[test]
fn planner_refusals_name_the_module() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let c = s(&shared("data/tinyshakespeare/input.txt"));
    for (args, want) in [
        (vec!["--format", "gptq", "--override", "embed_tokens=rtn:8"], "model.embed_tokens (--override 'embed_tokens'): --format gptq keeps"),
        (vec!["--override", "lm_head=awq:4", "--calib", &c], "lm_head (--override 'lm_head'): --method awq needs calibration"),
        (vec!["--override", "donw_proj=rtn:8"], "--override pattern 'donw_proj' matches no linear"),
        (vec!["--skip", "q_porj"], "--skip pattern 'q_porj' matches no linear"),
        (vec!["--override", "down_proj=vptq:4"], "vptq takes no BITS"),
        (vec!["--format", "gptq", "--override", r"layers\.0\.mlp\.down_proj=rtn:4"], "model.layers.0.mlp.down_proj (--override 'layers\\.0\\.mlp\\.down_proj'): --format gptq cannot store this module (64x172)"),
        (vec!["--format", "gptq", "--override", "q_proj=rtn:5"], "--format gptq supports 2, 3, 4 or 8 bits"),
        (vec!["--format", "gptq", "--override", "proj=statsq:4"], "model.layers.0.self_attn.q_proj (--override 'proj'): --format gptq cannot store --method statsq here: the GPTQ v1 layout holds the affine grid only"),
    ] {
        let (code, _, err) = quantize(&stories(), &out, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty(), "{args:?}");
    }
    // --allow-unmatched: a warning, and the output is written.
    let (code, _, err) = quantize(&stories(), &out, &["--override", "donw_proj=rtn:8", "--allow-unmatched"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --override pattern 'donw_proj' matches no linear"), "{err}");
    // VPTQ in an override without BITS is accepted (its size comes from --vector-len / --centroids).
    let (code, _, err) =
        quantize(&stories(), &tmp.path().join("v"), &["--override", "layers\\.0\\.self_attn\\.q_proj=vptq", "--calib", &c, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn import_gguf_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("imp");
    let (code, js, err) = lowbit(&[
        "import-gguf",
        &s(&shared("models/stories260K/stories260K.gguf")),
        "--out",
        &s(&out),
        "--tokenizer",
        &s(&shared("models/stories260K/tokenizer.json")),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&js).expect("one JSON object on stdout");
    assert_eq!(r["out"], s(&out));
    assert_eq!(r["params"], p_params(&out));
    assert_eq!(r["safetensors_bytes"].as_u64().unwrap(), std::fs::metadata(out.join("model.safetensors")).unwrap().len());
    assert_eq!(r["tokenizer_copied"], true);
}
