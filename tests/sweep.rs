//! `lowbit sweep` and `lowbit eval --reference` on stories260K: one record per combination with
//! every field, skips reported, each combination byte-identical to what `lowbit quantize` writes
//! for it, scores equal to `lowbit eval`'s, KL divergence 0 for the float model against itself and
//! growing as bits drop, and a well-formed plot.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> String {
    p.display().to_string()
}

const CALIB: [&str; 6] = ["--calib-samples", "16", "--calib-seqlen", "128", "--group-size", "32"];

fn sweep(out: &Path, methods: &str, bits: &str, extra: &[&str]) -> Value {
    let (m, c, t) = (s(&stories()), s(&shared("data/tinyshakespeare/input.txt")), s(&tinystories_text()));
    let mut args = vec!["sweep", "--model", &m, "--methods", methods, "--bits", bits, "--calib", &c, "--eval-text", &t];
    args.extend(CALIB);
    let o = s(out);
    args.extend(["--eval-ctx", "256", "--max-windows", "3", "--out", &o, "--json"]);
    args.extend(extra);
    let (code, stdout, err) = lowbit(&args);
    assert_eq!(code, 0, "sweep failed: {err}");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, on_disk, "--json prints results.json");
    on_disk
}

fn eval_vs_fp(model: &Path) -> Value {
    let (m, r, t) = (s(model), s(&stories()), s(&tinystories_text()));
    let args = ["eval", "--model", &m, "--reference", &r, "--text", &t, "--ctx", "256", "--max-windows", "3", "--json"];
    let (code, out, err) = lowbit(&args);
    assert_eq!(code, 0, "eval failed: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn record<'a>(r: &'a Value, method: &str, bits: u64) -> &'a Value {
    r["records"].as_array().unwrap().iter().find(|x| x["method"] == method && x["bits"] == bits).unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn kld_of_the_float_model_against_itself_is_zero() {
    let r = eval_vs_fp(&stories());
    assert_eq!(f(&r, "kld"), 0.0);
    assert_eq!(f(&r, "top1_agreement"), 1.0);
}

#[test]
fn sweep_records_match_quantize_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sw");
    let r = sweep(&out, "rtn,statsq-aware,gptq,vptq,shift", "2,3,4,5", &[]);
    let recs = r["records"].as_array().unwrap();
    assert_eq!(recs.len(), 5 * 4, "one record per combination");
    let fields = ["bpw", "model_bpw", "size_mb", "ppl", "delta_ppl_pct", "kld", "top1_agreement", "quantize_seconds"];
    for x in recs {
        if x["method"] == "vptq" && x["bits"] == 5 {
            assert!(x["skipped"].as_str().unwrap().contains("2, 3 or 4 bits"), "{x}");
            continue;
        }
        assert!(x.get("skipped").is_none(), "{x}");
        for k in fields {
            assert!(f(x, k).is_finite(), "{k} in {x}");
        }
        // Scales and zeros cost at most 1 bit per weight at g32 (VPTQ's codebooks are large
        // next to stories260K's matrices, so it is only bounded by the float size).
        let (bpw, bits) = (f(x, "bpw"), x["bits"].as_u64().unwrap() as f64);
        if x["method"] != "vptq" {
            assert!(bpw > bits && bpw < bits + 1.0, "{x}");
        }
        let dir = out.join(x["dir"].as_str().unwrap());
        let file = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64;
        let size = f(x, "size_mb") * 1e6;
        assert!(size <= file && size > file - 32e3, "size {size} vs file {file}");
    }
    // The float model's score is lowbit eval's.
    let fp = eval_vs_fp(&stories());
    assert!((f(&r["fp"], "ppl") - f(&fp, "ppl")).abs() < 1e-9 * f(&fp, "ppl"));

    // KL divergence and top-1 disagreement grow as bits drop.
    for m in ["rtn", "statsq-aware", "gptq"] {
        let (k2, k3, k4) = (f(record(&r, m, 2), "kld"), f(record(&r, m, 3), "kld"), f(record(&r, m, 4), "kld"));
        assert!(k2 > k3 && k3 > k4 && k4 > 0.0, "{m}: KLD {k2} {k3} {k4}");
        let (t2, t4) = (f(record(&r, m, 2), "top1_agreement"), f(record(&r, m, 4), "top1_agreement"));
        assert!(t2 < t4 && t4 < 1.0, "{m}: top-1 {t2} {t4}");
    }

    // Each combination's checkpoint scores as the sweep says under lowbit eval --reference.
    for (m, b) in [("rtn", 3), ("gptq", 2), ("vptq", 3)] {
        let x = record(&r, m, b);
        let e = eval_vs_fp(&out.join(x["dir"].as_str().unwrap()));
        for k in ["ppl", "kld", "top1_agreement"] {
            assert!((f(&e, k) - f(x, k)).abs() <= 1e-9 * f(x, k).abs().max(1e-12), "{m}{b} {k}: eval {} sweep {}", e[k], x[k]);
        }
    }

    // ... and is byte for byte what lowbit quantize writes with the same settings (GPTQ as
    // --propagate-fp: the sweep calibrates every layer on the float activations).
    let (m, c) = (s(&stories()), s(&shared("data/tinyshakespeare/input.txt")));
    for (method, bits, extra) in [("rtn", "3", None), ("statsq-aware", "2", None), ("gptq", "3", Some("--propagate-fp"))] {
        let q = tmp.path().join(format!("q-{method}"));
        let qs = s(&q);
        let mut args = vec!["quantize", "--model", &m, "--out", &qs, "--method", method, "--bits", bits, "--calib", &c];
        args.extend(CALIB);
        args.extend(extra);
        let (code, _, err) = lowbit(&args);
        assert_eq!(code, 0, "quantize failed: {err}");
        let x = record(&r, method, bits.parse().unwrap());
        let swept = out.join(x["dir"].as_str().unwrap());
        for file in ["model.safetensors", "config.json"] {
            assert!(std::fs::read(q.join(file)).unwrap() == std::fs::read(swept.join(file)).unwrap(), "{method}{bits}: {file} differs");
        }
    }

    // results.md has a row per record; plot.svg is well-formed SVG with labelled axes and one
    // line per method plus the float model's.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 2 + recs.len(), "{md}");
    assert!(md.contains("skipped: VPTQ runs at 2, 3 or 4 bits"));
    let svg = std::fs::read_to_string(out.join("plot.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("plot.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> =
        doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(|t| t.trim().to_string()).collect();
    assert!(texts.iter().any(|t| t.starts_with("stored bits per weight")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("perplexity")), "{texts:?}");
    for m in ["rtn", "statsq-aware", "gptq", "vptq", "shift"] {
        assert!(texts.iter().any(|t| t == m), "legend lacks {m}: {texts:?}");
    }
    let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
    assert!(lines >= 6, "{lines} polylines");
}

#[test]
fn sweep_overrides_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    // Mixed precision applies to every combination and shows in bpw.
    let plain = sweep(&tmp.path().join("a"), "rtn", "3", &[]);
    let mixed = sweep(&tmp.path().join("b"), "rtn", "3", &["--override", "down_proj=rtn:8"]);
    let (p, m) = (record(&plain, "rtn", 3), record(&mixed, "rtn", 3));
    assert!(f(m, "bpw") > f(p, "bpw") + 1.0, "{p} vs {m}");
    assert!(f(m, "kld") < f(p, "kld"), "{p} vs {m}");
    assert_eq!(mixed["overrides"][0], "down_proj=rtn:8");

    // Scoring one model per pass (no memory for more) gives the same numbers as one pass.
    let split = sweep(&tmp.path().join("d"), "rtn", "3,4", &["--score-memory-mb", "0"]);
    for k in ["ppl", "kld", "top1_agreement"] {
        assert_eq!(record(&split, "rtn", 3)[k], p[k], "{k}");
    }
    assert_eq!(split["fp"]["ppl"], plain["fp"]["ppl"]);

    // Calibrating on the eval text is refused, and nothing is written.
    let (mm, t) = (s(&stories()), s(&tinystories_text()));
    let out = tmp.path().join("c");
    let o = s(&out);
    let (code, _, err) =
        lowbit(&["sweep", "--model", &mm, "--calib", &t, "--eval-text", &t, "--out", &o, "--methods", "rtn", "--bits", "4"]);
    assert_eq!(code, 2);
    assert!(err.contains("calibration text is the eval text"), "{err}");
    assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty(), "{:?}", lowbit_litter(tmp.path()));

    // An existing output directory is kept unless --force.
    let a = s(&tmp.path().join("a"));
    let (code, _, err) = lowbit(&["sweep", "--model", &mm, "--eval-text", &t, "--out", &a, "--methods", "rtn", "--bits", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("output directory exists (use --force"), "{err}");
    assert!(tmp.path().join("a").join("results.json").exists());

    // Every combination skipped: an error, not an empty report.
    let (code, _, err) = lowbit(&["sweep", "--model", &mm, "--eval-text", &t, "--out", &o, "--methods", "vptq", "--bits", "8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to sweep"), "{err}");
    assert!(!out.exists());
}

#[test]
fn sweep_scores_every_eval_text() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("two");
    let ptb = s(&shared("data/ptb/ptb.test.txt"));
    let r = sweep(&out, "rtn,awq+gptq", "3", &["--eval-text", &ptb, "--true-sequential"]);
    assert_eq!(r["more_eval"].as_array().unwrap().len(), 1);
    assert_eq!(r["more_eval"][0]["eval_text"], ptb.as_str());
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains(&format!("Eval `{ptb}`")), "{md}");
    for m in ["rtn", "awq+gptq"] {
        let rec = record(&r, m, 3);
        let second = &rec["more_eval"][0];
        // The same numbers as `lowbit eval --reference` on the second text.
        let dir = s(&out.join(rec["dir"].as_str().unwrap()));
        let st = s(&stories());
        let (code, o, err) =
            lowbit(&["eval", "--model", &dir, "--reference", &st, "--text", &ptb, "--ctx", "256", "--max-windows", "3", "--json"]);
        assert_eq!(code, 0, "{err}");
        let e: Value = serde_json::from_str(o.trim()).unwrap();
        assert_eq!(f(second, "ppl"), f(&e, "ppl"), "{m}");
        assert_eq!(f(second, "kld"), f(&e, "kld"), "{m}");
        assert!(f(second, "kld") > 0.0);
        // And the first text's scores are unchanged in place.
        assert!(f(rec, "kld") > 0.0 && f(rec, "kld") != f(second, "kld"));
    }
}
