//! One size count: for every method × layout on stories260K, `quantize --dry-run` predicts the
//! bytes, linear bits per weight and whole-model bits per weight the real run reports, the real
//! run's bytes are the tensor bytes of the written file, and `inspect` reports the same figures;
//! a combination a layout cannot hold is refused the same way with and without --dry-run,
//! writing nothing. `sweep` records the same figures as `quantize` for every method.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

const METHODS: [&str; 13] = [
    "rtn",
    "awq",
    "statsq",
    "statsq-aware",
    "awq+statsq",
    "gptq+statsq",
    "shift",
    "shift-aware",
    "awq+shift",
    "gptq+shift",
    "gptq",
    "awq+gptq",
    "vptq",
];

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Tensor bytes of a safetensors file: its length less the 8-byte length and the JSON header.
fn tensor_bytes(file: &Path) -> u64 {
    let b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b.len() as u64 - 8 - n
}

fn quantize(out: &Path, method: &str, format: &str, extra: &[&str]) -> (i32, Option<Value>, String) {
    let (m, c, o) = (s(&stories()), s(&shared("data/tinyshakespeare/input.txt")), s(out));
    let mut args = vec!["quantize", "--model", &m, "--out", &o, "--method", method, "--format", format, "--bits", "4"];
    args.extend(["--group-size", "32", "--calib", &c, "--calib-samples", "4", "--calib-seqlen", "64", "--json"]);
    args.extend(extra);
    let (code, stdout, err) = lowbit(&args);
    (code, (code == 0).then(|| serde_json::from_str(&stdout).unwrap()), err)
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").to_string()
}

#[test]
fn dry_run_quantize_and_inspect_agree_for_every_method_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut written = 0;
    for format in ["lowbit", "awq", "gptq", "gguf"] {
        for method in METHODS {
            for extra in [&[][..], &["--act-order"][..]] {
                if !extra.is_empty() && !method.contains("gptq") {
                    continue;
                }
                let name = format!("{format}-{}{}", method.replace('+', "-"), extra.join(""));
                let out = tmp.path().join(if format == "gguf" { format!("{name}.gguf") } else { name.clone() });
                let (dc, dry, derr) = quantize(&out, method, format, &[&["--dry-run"][..], extra].concat());
                assert!(!out.exists(), "{name}: --dry-run wrote {}", out.display());
                let (rc, real, rerr) = quantize(&out, method, format, extra);
                let (Some(dry), Some(real)) = (dry, real) else {
                    // Refused: the same refusal either way, before any output.
                    assert_eq!((dc, last_line(&derr)), (rc, last_line(&rerr)), "{name}");
                    assert_eq!(rc, 2, "{name}: {rerr}");
                    assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty(), "{name}");
                    eprintln!("{name}: refused: {}", last_line(&rerr));
                    continue;
                };
                written += 1;
                for k in ["bytes", "linear_bpw", "model_bpw", "quantized_linears"] {
                    assert_eq!(dry[k], real[k], "{name}: {k} --dry-run vs written");
                }
                let (code, rep, err) = lowbit(&["inspect", "--model", &s(&out), "--json"]);
                assert_eq!(code, 0, "{name}: {err}");
                let rep: Value = serde_json::from_str(&rep).unwrap();
                assert_eq!(rep["bits_per_weight"], real["model_bpw"], "{name}: whole-model bpw, inspect vs quantize");
                assert_eq!(rep["total_bytes"], real["bytes"], "{name}: tensor bytes, inspect vs quantize");
                if format != "gguf" {
                    assert_eq!(rep["linear_bits_per_weight"], real["linear_bpw"], "{name}: linear bpw, inspect vs quantize");
                    assert_eq!(tensor_bytes(&out.join("model.safetensors")), real["bytes"].as_u64().unwrap(), "{name}: file");
                }
                eprintln!("{name}: {} bytes, {:.4} linear bpw, {:.4} model bpw", real["bytes"], real["linear_bpw"], real["model_bpw"]);
            }
        }
    }
    assert!(written >= 20, "only {written} combinations written");
}

#[test]
fn sweep_reports_the_bpw_quantize_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, c, t, o) = (s(&stories()), s(&shared("data/tinyshakespeare/input.txt")), s(&tinystories_text()), s(&tmp.path().join("sw")));
    let methods = METHODS.join(",");
    let args = [
        "sweep",
        "--model",
        &m,
        "--methods",
        &methods,
        "--bits",
        "4",
        "--group-size",
        "32",
        "--calib",
        &c,
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "64",
        "--eval-text",
        &t,
        "--eval-ctx",
        "64",
        "--max-windows",
        "1",
        "--out",
        &o,
        "--json",
    ];
    let (code, stdout, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let recs = r["records"].as_array().unwrap();
    assert_eq!(recs.len(), METHODS.len());
    for x in recs {
        let method = x["method"].as_str().unwrap();
        assert!(x.get("skipped").is_none(), "{x}");
        let mut extra = vec!["--dry-run"];
        // sweep picks VPTQ's vector length and codebook from --bits (4 bits: the defaults here).
        if method == "vptq" {
            extra.extend(["--vector-len", "2", "--centroids", "256"]);
        }
        let (_, q, err) = quantize(&tmp.path().join("q"), method, "lowbit", &extra);
        let q = q.unwrap_or_else(|| panic!("{method}: {err}"));
        assert_eq!(x["bpw"], q["linear_bpw"], "{method}: sweep vs quantize linear bpw");
        assert_eq!(x["model_bpw"], q["model_bpw"], "{method}: sweep vs quantize model bpw");
    }
}
