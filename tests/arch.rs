//! Model coverage: every config variant in ../shared/testdata/arch (and the extra fixtures in
//! tests/fixtures/arch, made the same way) runs exactly as transformers runs it, and survives a
//! quantize → eval round trip; variants lowbit does not implement are refused by name.
mod common;
use common::*;
use lowbit::weights::Checkpoint;
use std::path::{Path, PathBuf};

/// Every fixture directory: the shared ones and the repository's own.
fn fixtures() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in [shared("testdata/arch"), PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch"))] {
        let rd =
            std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e} (the tests need ../shared beside the checkout)", root.display()));
        for e in rd {
            let p = e.unwrap().path();
            if p.join("reference.safetensors").exists() {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    dirs
}

fn max_logit_err(dir: &Path) -> f64 {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = r.tensor("token_ids").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    let ids: Vec<u32> = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let l = r.tensor("logits").unwrap();
    assert_eq!(l.dtype(), safetensors::Dtype::F32);
    let lshape = l.shape().to_vec();
    let want: Vec<f32> = l.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let model = lowbit::qmodel::open(dir).unwrap();
    let h = model.hidden(&ids, ids.len()).unwrap();
    let got = model.logits(&h, ids.len()).unwrap();
    assert_eq!(lshape, vec![1, ids.len(), model.cfg.vocab_size]);
    got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max)
}

#[test]
fn logits_match_transformers_for_every_variant() {
    let dirs = fixtures();
    assert!(dirs.len() >= 16, "found only {} fixtures", dirs.len());
    let mut failed = Vec::new();
    for d in &dirs {
        let e = max_logit_err(d);
        eprintln!("{:<40} max abs logit error {e:.2e}", d.file_name().unwrap().to_string_lossy());
        if e.is_nan() || e > 1e-4 {
            failed.push(format!("{}: {e:.3e}", d.display()));
        }
    }
    assert!(failed.is_empty(), "logits differ from transformers: {failed:?}");
}

/// A variant's key changes the logits: running the same weights without it must not pass
/// (guards against a fixture whose key is a no-op, which would make the test above vacuous).
#[test]
fn each_variant_key_matters() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, strip) in [
        ("llama3-rope", &["rope_scaling"][..]),
        ("llama-rope-linear", &["rope_scaling"]),
        ("qwen2-yarn", &["rope_scaling"]),
        ("mistral-swa", &["sliding_window"]),
    ] {
        let src = shared("testdata/arch").join(name);
        let dst = tmp.path().join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["model.safetensors", "reference.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        for k in strip {
            cfg[*k] = serde_json::Value::Null;
        }
        std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
        let e = max_logit_err(&dst);
        assert!(e > 1e-2, "{name}: without {strip:?} the logits still match ({e:.2e})");
    }
}

/// The repository's fixtures carry no tokenizer (they share stories260K's vocabulary): a copy
/// in `tmp` with stories260K's tokenizer.json, for commands that read text.
fn with_tokenizer(d: &Path, tmp: &Path) -> PathBuf {
    if d.join("tokenizer.json").exists() {
        return d.to_path_buf();
    }
    let dst = tmp.join(format!("{}-tok", d.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(d.join(f), dst.join(f)).unwrap();
    }
    std::fs::copy(stories().join("tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    dst
}

fn ppl(model: &Path, text: &Path, ctx: &str) -> f64 {
    let (code, out, err) = lowbit(&["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", ctx, "--json"]);
    assert_eq!(code, 0, "eval {}: {err}", model.display());
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    j["ppl"].as_f64().unwrap()
}

fn quantize(model: &Path, out: &Path, method: &str, bits: &str, format: &str, extra: &[&str]) {
    let calib = shared("data/tinyshakespeare/input.txt");
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        method,
        "--bits",
        bits,
        "--group-size",
        "32",
        "--format",
        format,
        "--calib",
        calib.to_str().unwrap(),
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "96",
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 0, "quantize {} ({method} {bits}-bit, {format}): {err}", model.display());
}

/// AWQ 8-bit g32 stays within 1% of the float ppl on every variant: scales folded through biases,
/// q/k norms or windows the wrong way would move it far more. The biases and q/k norms the config
/// asks for are in the output, and the AutoAWQ and GPTQ layouts carry them too: their exports of
/// the same 4-bit codes score what the lowbit layout scores.
#[test]
fn awq_round_trip_keeps_ppl() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tinystories_text();
    for d in fixtures() {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let d = with_tokenizer(&d, tmp.path());
        let fp = ppl(&d, &text, "96");
        let out = tmp.path().join(format!("{name}-awq8"));
        quantize(&d, &out, "awq", "8", "lowbit", &[]);
        let (code, js, err) = lowbit(&[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--reference",
            d.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "96",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let j: serde_json::Value = serde_json::from_str(&js).unwrap();
        let (q, kld) = (j["ppl"].as_f64().unwrap(), j["kld"].as_f64().unwrap());
        eprintln!("{name:<40} fp {fp:.4}  awq8 {q:.4}  KLD {kld:.2e}");
        assert!(fp.is_finite() && (q / fp - 1.0).abs() < 0.01, "{name}: fp {fp} vs awq8 {q}");
        // 8-bit AWQ is near-lossless (KLD ~5e-4 here); a scale folded into a producer without its
        // bias moves it past 1e-2.
        assert!(kld < 3e-3, "{name}: KLD {kld} of awq8 against fp");
        let ck = Checkpoint::open(&out).unwrap();
        let cfg = lowbit::config::ModelConfig::load(&d.join("config.json")).unwrap();
        for spec in cfg.family.linears() {
            let b = format!("model.layers.0.{}.bias", spec.name);
            assert_eq!(ck.contains(&b), cfg.has_bias(spec.name), "{name}: {b}");
        }
        assert_eq!(ck.contains("model.layers.1.self_attn.q_norm.weight"), cfg.qk_norm, "{name}: q_norm");
        // 4-bit: the same codes in three layouts. The GPTQ layout keeps linears narrower than its
        // packing in float (modules_to_not_convert); the lowbit run skips the same ones.
        let gptq_out = tmp.path().join(format!("{name}-rtn-gptq"));
        quantize(&d, &gptq_out, "rtn", "4", "gptq", &["--sym"]);
        let gcfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(gptq_out.join("config.json")).unwrap()).unwrap();
        let kept: Vec<String> = gcfg["quantization_config"]["modules_to_not_convert"]
            .as_array()
            .map(|a| a.iter().map(|m| format!("{}$", m.as_str().unwrap())).collect())
            .unwrap_or_default();
        let mut rtn_args = vec!["--sym"];
        for k in &kept {
            rtn_args.extend(["--skip", k.as_str()]);
        }
        let mut scores = Vec::new();
        for (method, format, extra) in [("awq", "lowbit", &[][..]), ("awq", "awq", &[]), ("rtn", "lowbit", &rtn_args[..])] {
            let out = tmp.path().join(format!("{name}-{method}-{format}"));
            quantize(&d, &out, method, "4", format, extra);
            scores.push(ppl(&out, &text, "96"));
        }
        scores.push(ppl(&gptq_out, &text, "96"));
        eprintln!("{name:<40} awq4 lowbit {:.4} awq {:.4}   rtn4 sym lowbit {:.4} gptq {:.4}", scores[0], scores[1], scores[2], scores[3]);
        assert!((scores[0] / scores[1] - 1.0).abs() < 1e-4, "{name}: AutoAWQ layout {} vs lowbit {}", scores[1], scores[0]);
        assert!((scores[2] / scores[3] - 1.0).abs() < 1e-4, "{name}: GPTQ layout {} vs lowbit {}", scores[3], scores[2]);
    }
}

fn write_variant(tmp: &Path, base: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = shared("testdata/arch").join(base);
    let dst = tmp.join(format!("{base}-edited"));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

/// Configs lowbit does not implement exit 2 with one line naming what was refused.
#[test]
fn unimplemented_variants_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tinystories_text();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("llama3-rope", Box::new(|c| c["rope_scaling"]["rope_type"] = "longrope".into()), "longrope"),
        ("llama3-rope", Box::new(|c| c["rope_scaling"]["rope_type"] = "su".into()), "\"su\""),
        ("llama-bias", Box::new(|c| c["model_type"] = "gemma2".into()), "gemma2"),
        ("llama-bias", Box::new(|c| c["partial_rotary_factor"] = 0.5.into()), "partial_rotary_factor"),
        ("llama-bias", Box::new(|c| c["final_logit_softcapping"] = 30.0.into()), "final_logit_softcapping"),
        ("llama-bias", Box::new(|c| c["hidden_act"] = "gelu".into()), "hidden_act"),
        ("llama-rope-linear", Box::new(|c| c["rope_scaling"]["mrope_section"] = serde_json::json!([16, 24, 24])), "mrope_section"),
        ("llama-bias", Box::new(|c| c["attention_bias"] = false.into()), "bias"),
        (
            "qwen2-bias",
            Box::new(|c| c["rope_parameters"] = serde_json::json!({"full_attention": {"rope_type": "default"}})),
            "rope_parameters",
        ),
    ];
    for (base, edit, needle) in cases {
        let d = write_variant(tmp.path(), base, edit);
        let (code, _, err) = lowbit(&["eval", "--model", d.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "96"]);
        assert_eq!(code, 2, "{base}/{needle}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{base}/{needle}: {err}");
        assert!(lines[0].contains(needle), "{base}/{needle}: {err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Sequences longer than the model's position limit are refused before any work, with the limit.
#[test]
fn position_limit_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tinystories_text();
    let s = stories();
    let (code, _, err) = lowbit(&["eval", "--model", s.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "4096"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ctx 4096") && err.contains("2048"), "{err}");
    let out = tmp.path().join("q");
    let calib = shared("data/tinyshakespeare/input.txt");
    let (code, _, err) = lowbit(&[
        "quantize",
        "--model",
        s.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "gptq",
        "--bits",
        "4",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-seqlen",
        "100000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--calib-seqlen 100000") && err.contains("2048"), "{err}");
    assert!(!out.exists());
    // Dynamic NTK exists to run past max_position_embeddings (48 here) by its factor (3).
    let d = with_tokenizer(&PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch/llama-rope-dynamic")), tmp.path());
    assert!(ppl(&d, &text, "144").is_finite());
    let (code, _, err) = lowbit(&["eval", "--model", d.to_str().unwrap(), "--text", text.to_str().unwrap(), "--ctx", "145"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("144"), "{err}");
}
