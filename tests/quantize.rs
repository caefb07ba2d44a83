//! `lowbit quantize` end to end on stories260K: RTN and AWQ score sensibly, AWQ beats RTN at
//! 3 bits, output is deterministic across thread counts, bad input is refused, and a killed run
//! leaves no output directory.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn calib() -> String {
    shared("data/tinyshakespeare/input.txt").display().to_string()
}

fn quantize(out: &Path, method: &str, bits: u32, extra: &[&str]) {
    let m = stories();
    let b = bits.to_string();
    let mut args = vec![
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        method,
        "--bits",
        &b,
        "--group-size",
        "32",
    ];
    let c = calib();
    args.extend(["--calib", &c, "--calib-samples", "32", "--calib-seqlen", "256"]);
    args.extend(extra);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 0, "quantize failed: {err}");
}

fn ppl(model: &Path) -> f64 {
    let t = tinystories_text();
    let (code, out, err) = lowbit(&["eval", "--model", model.to_str().unwrap(), "--text", t.to_str().unwrap(), "--ctx", "256", "--json"]);
    assert_eq!(code, 0, "eval failed: {err}");
    serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["ppl"].as_f64().unwrap()
}

#[test]
fn rtn_and_awq_at_4_and_3_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let fp = 5.7351;
    let mut r = std::collections::HashMap::new();
    for bits in [4, 3] {
        for m in ["rtn", "awq"] {
            let out = tmp.path().join(format!("{m}{bits}"));
            quantize(&out, m, bits, &[]);
            // down_proj (in 172) is packed with a short last group in the lowbit layout.
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
            let d = &cfg["quantization_config"]["modules"]["model.layers.0.mlp.down_proj"];
            assert_eq!(d["in_features"], 172);
            assert_eq!(d["bits"], bits);
            let p = ppl(&out);
            eprintln!("{m} {bits}-bit g32: ppl {p:.4}");
            r.insert((m, bits), p);
        }
    }
    assert!(r[&("rtn", 4)] < fp * 1.2 && r[&("awq", 4)] < fp * 1.2, "{r:?}");
    assert!(r[&("awq", 3)] <= r[&("rtn", 3)], "AWQ 3-bit must not be worse than RTN: {r:?}");
    assert!(r[&("awq", 3)] > fp, "{r:?}");
}

#[test]
fn deterministic_across_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("t1"), tmp.path().join("t2"));
    quantize(&a, "awq", 3, &["--threads", "1"]);
    quantize(&b, "awq", 3, &["--threads", "2"]);
    let fa = std::fs::read(a.join("model.safetensors")).unwrap();
    let fb = std::fs::read(b.join("model.safetensors")).unwrap();
    assert!(fa == fb, "outputs differ between 1 and 2 threads");
    assert_eq!(std::fs::read(a.join("config.json")).unwrap(), std::fs::read(b.join("config.json")).unwrap());
}

fn expect_refusal(args: &[&str], fragment: &str) {
    let (code, _, err) = lowbit(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty() && !is_progress(l)).count(), 1, "{err}");
    assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
}

#[test]
fn bad_quantize_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = stories();
    let m = m.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let c = calib();
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["quantize", "--model", m, "--out", o, "--calib", &c].iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str], frag: &str| {
        let v = base(extra);
        let a: Vec<&str> = v.iter().map(String::as_str).collect();
        expect_refusal(&a, frag);
        assert!(!out.exists());
    };
    run(&["--bits", "9"], "9 is not in 2..=8");
    run(&["--bits", "1"], "1 is not in 2..=8");
    run(&["--bits", "300"], "300 is not in 2..=8");
    run(&["--group-size", "0"], "--group-size");
    run(&["--calib-samples", "0"], "--calib-samples");
    run(&["--calib-seqlen", "1"], "--calib-seqlen");
    run(&["--format", "awq", "--bits", "3"], "4-bit only");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    expect_refusal(&["quantize", "--model", m, "--out", o, "--calib", empty.to_str().unwrap()], "empty.txt: calibration text is empty");
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "Once upon a time.").unwrap();
    expect_refusal(
        &["quantize", "--model", m, "--out", o, "--calib", short.to_str().unwrap(), "--calib-seqlen", "64"],
        "short.txt: calibration text has",
    );
    // A directory lowbit did not write: refused, and the hint does not point at --force.
    std::fs::create_dir_all(&out).unwrap();
    expect_refusal(&["quantize", "--model", m, "--out", o, "--calib", &c, "--method", "rtn"], "not written by lowbit");
    let (_, _, err) = lowbit(&["quantize", "--model", m, "--out", o, "--calib", &c, "--method", "rtn"]);
    assert!(!err.contains("use --force"), "{err}");
}

/// Calibration text shorter than --calib-samples × --calib-seqlen is the documented downgrade:
/// a one-line warning, overlapping windows, and a normal run.
#[test]
fn short_calibration_text_warns_and_overlaps() {
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.txt");
    let text = std::fs::read_to_string(tinystories_text()).unwrap();
    std::fs::write(&short, &text[..1500]).unwrap();
    let (m, o) = (stories(), tmp.path().join("o"));
    let args = ["quantize", "--model", m.to_str().unwrap(), "--out", o.to_str().unwrap(), "--method", "awq", "--bits", "4"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--group-size", "32", "--calib", short.to_str().unwrap(), "--calib-samples", "64", "--calib-seqlen", "64"]);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
    let warn: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warn.len(), 1, "{err}");
    assert!(warn[0].contains("short.txt") && warn[0].contains("less than --calib-samples 64 × --calib-seqlen 64"), "{err}");
    assert!(warn[0].contains("will overlap"), "{err}");
    assert!(o.join("model.safetensors").exists());
}

#[test]
fn killed_run_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let m = stories();
    let c = calib();
    let mut child = Command::new(lowbit_bin())
        .args(["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "awq", "--bits", "3"])
        .args(["--group-size", "32", "--calib", &c, "--calib-samples", "2000", "--calib-seqlen", "256"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run left {}", out.display());
}

#[test]
fn statsq_and_shift_at_2_and_3_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let fp = 5.7351;
    for m in ["statsq", "statsq-aware", "awq+statsq", "gptq+statsq", "shift", "shift-aware", "awq+shift", "gptq+shift"] {
        for bits in [3, 2] {
            let out = tmp.path().join(format!("{m}{bits}"));
            quantize(&out, m, bits, &[]);
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
            let grid = if m.contains("statsq") { "halfint" } else { "shift" };
            assert_eq!(cfg["quantization_config"]["modules"]["model.layers.2.self_attn.q_proj"]["grid"], grid);
            let p = ppl(&out);
            eprintln!("{m} {bits}-bit g32: ppl {p:.4}");
            assert!(p.is_finite() && p > fp && p < 200.0, "{m} {bits}: ppl {p}");
        }
    }
}

#[test]
fn mixed_precision_overrides_and_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixed");
    quantize(
        &out,
        "rtn",
        3,
        &["--override", "down_proj=rtn:8", "--override", r"layers\.4\.mlp\.down_proj=rtn:4:16", "--skip", r"layers\.0\.self_attn\.q_proj"],
    );
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let m = &cfg["quantization_config"]["modules"];
    assert_eq!(m["model.layers.0.mlp.down_proj"]["bits"], 8);
    assert_eq!(m["model.layers.4.mlp.down_proj"]["bits"], 4);
    assert_eq!(m["model.layers.4.mlp.down_proj"]["group_size"], 16);
    assert_eq!(m["model.layers.0.mlp.up_proj"]["bits"], 3);
    assert!(m.get("model.layers.0.self_attn.q_proj").is_none());
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(st.tensor("model.layers.0.self_attn.q_proj.weight").is_ok(), "skipped linear kept in float");
    assert!(ppl(&out) < 5.7351 * 2.0);
}

#[test]
fn vptq_about_2_bpw_beats_rtn_2_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let vq = tmp.path().join("vq");
    quantize(&vq, "vptq", 2, &["--vector-len", "2", "--centroids", "16"]);
    let (code, out, err) = lowbit(&["inspect", "--model", vq.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let q: Vec<&serde_json::Value> =
        rep["tensors"].as_array().unwrap().iter().filter(|t| t["dtype"].as_str().unwrap().starts_with("vq ")).collect();
    assert_eq!(q.len(), 35);
    let (bits, n) = q.iter().fold((0.0, 0.0), |(b, n), t| {
        (b + t["bits_per_weight"].as_f64().unwrap() * t["params"].as_f64().unwrap(), n + t["params"].as_f64().unwrap())
    });
    let bpw = bits / n;
    assert!((1.9..2.3).contains(&bpw), "VPTQ stored {bpw} bits per weight");
    let rtn = tmp.path().join("rtn2");
    quantize(&rtn, "rtn", 2, &[]);
    let (pv, pr) = (ppl(&vq), ppl(&rtn));
    eprintln!("vptq {bpw:.3} bpw: ppl {pv:.3}; rtn 2-bit g32 (2.78 bpw): ppl {pr:.3}");
    assert!(pv < pr, "VPTQ {pv} vs RTN {pr}");
}

#[test]
fn gptq_3_bit_beats_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let (g, a, r) = (tmp.path().join("gptq3"), tmp.path().join("gptq3-act"), tmp.path().join("rtn3"));
    quantize(&g, "gptq", 3, &[]);
    quantize(&a, "gptq", 3, &["--act-order"]);
    quantize(&r, "rtn", 3, &[]);
    let (pg, pa, pr) = (ppl(&g), ppl(&a), ppl(&r));
    eprintln!("gptq 3-bit g32: {pg:.4}, with act-order {pa:.4}; rtn {pr:.4}");
    assert!(pg < pr && pa < pr, "GPTQ {pg} / {pa} vs RTN {pr}");
    // act-order with refit groups stores a g_idx.
    let st = std::fs::read(a.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(st.names().iter().any(|n| n.ends_with(".g_idx")));
}

#[test]
fn dry_run_predicts_the_size_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let m = stories();
    let (code, dry, err) = lowbit(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "rtn",
        "--bits",
        "3",
        "--group-size",
        "32",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.exists());
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    let (code, real, _) = lowbit(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "rtn",
        "--bits",
        "3",
        "--group-size",
        "32",
        "--json",
    ]);
    assert_eq!(code, 0);
    let real: serde_json::Value = serde_json::from_str(&real).unwrap();
    assert_eq!(dry["bytes"], real["bytes"]);
    assert_eq!(dry["linear_bpw"], real["linear_bpw"]);
    let on_disk = std::fs::metadata(out.join("model.safetensors")).unwrap().len();
    assert!(on_disk >= real["bytes"].as_u64().unwrap(), "tensor bytes exceed the file");
}

/// With stderr captured (not a terminal), progress is plain lines, ending with the last step;
/// stdout holds only the result.
#[test]
fn progress_is_plain_lines_in_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p");
    let m = stories();
    let (code, stdout, err) =
        lowbit(&["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn", "--bits", "4", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(stdout.trim()).expect("stdout is one JSON document");
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| is_progress(l)), "{err}");
    assert!(lines.last().unwrap().starts_with("writing: 5/5 ("), "{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "terminal control characters in a log: {err:?}");
    assert!(!is_progress("error: model.safetensors: 1/2 (0 s)") && is_progress("eval: 12/16 (539 s)"));
}
