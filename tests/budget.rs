//! --target-bpw: the knapsack choice against brute force, and end to end on stories260K: the
//! written checkpoint's whole-model bits per weight (from its files) are within the target, the
//! plan in config.json is what was stored, --dry-run writes nothing, and the plan beats uniform
//! GPTQ of the same size on KL divergence on two texts.
mod common;
use common::*;
use lowbit::quantize::budget::choose;
use serde_json::Value;
use std::path::Path;

fn brute(loss: &[Vec<f64>], bytes: &[Vec<u64>], budget: u64) -> Option<f64> {
    let n = loss.len();
    let mut best: Option<f64> = None;
    let mut idx = vec![0usize; n];
    loop {
        let b: u64 = idx.iter().zip(bytes).map(|(&k, r)| r[k]).sum();
        if b <= budget {
            let l: f64 = idx.iter().zip(loss).map(|(&k, r)| r[k]).sum();
            best = Some(best.map_or(l, |x: f64| x.min(l)));
        }
        let mut i = 0;
        loop {
            if i == n {
                return best;
            }
            idx[i] += 1;
            if idx[i] < loss[i].len() {
                break;
            }
            idx[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn choice_fits_and_equals_brute_force() {
    let mut rng = Rng(0x5eed);
    let mut worst_gap: f64 = 0.0;
    for case in 0..300 {
        let n = 2 + (rng.below(4) as usize);
        let k = 2 + (rng.below(3) as usize);
        // Each linear: sizes growing with the option, losses falling (as more bits do), with noise.
        let mut loss = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..n {
            let base = 10 + rng.below(50);
            let scale = 0.01 + (rng.f32().abs() as f64) * 10.0;
            let b: Vec<u64> = (0..k as u64).map(|j| base * (j + 2) + rng.below(5)).collect();
            let l: Vec<f64> = (0..k).map(|j| scale * 0.25f64.powi(j as i32) * (1.0 + 0.3 * rng.f32() as f64)).collect();
            bytes.push(b);
            loss.push(l);
        }
        let min: u64 = bytes.iter().map(|r| *r.iter().min().unwrap()).sum();
        let max: u64 = bytes.iter().map(|r| *r.iter().max().unwrap()).sum();
        let budget = min + rng.below(max - min + 1);
        let c = choose(&loss, &bytes, budget).expect("the smallest plan fits");
        let used: u64 = c.iter().zip(&bytes).map(|(&k, r)| r[k]).sum();
        assert!(used <= budget, "case {case}: {used} > {budget}");
        let got: f64 = c.iter().zip(&loss).map(|(&k, r)| r[k]).sum();
        // No single change that fits lowers the loss.
        for i in 0..n {
            for j in 0..k {
                let b2 = used - bytes[i][c[i]] + bytes[i][j];
                if b2 <= budget {
                    assert!(loss[i][j] >= loss[i][c[i]] - 1e-12, "case {case}: linear {i} option {j} fits and is better");
                }
            }
        }
        let opt = brute(&loss, &bytes, budget).unwrap();
        assert!(got >= opt - 1e-12);
        worst_gap = worst_gap.max(got / opt - 1.0);
    }
    // Budgets under 100000 bytes are solved exactly.
    assert!(worst_gap < 1e-9, "{worst_gap}");
    // Below the smallest plan: none.
    assert_eq!(choose(&[vec![1.0, 0.5]], &[vec![10, 20]], 9), None);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

const CALIB: [&str; 10] = [
    "--calib",
    "../shared/data/ptb/ptb.valid.txt",
    "--calib",
    "../shared/data/tinyshakespeare/input.txt",
    "--calib-samples",
    "32",
    "--calib-seqlen",
    "256",
    "--method",
    "gptq",
];

fn quantize(out: &Path, extra: &[&str]) -> Value {
    let (m, o) = (s(&stories()), s(out));
    let mut args = vec!["quantize", "--model", &m, "--out", &o, "--json"];
    args.extend(CALIB);
    args.extend(extra);
    let (code, stdout, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(stdout.trim()).unwrap()
}

fn kld(model: &Path, text: &str) -> f64 {
    let (m, r, t) = (s(model), s(&stories()), s(&shared(text)));
    let (code, o, err) = lowbit(&["eval", "--model", &m, "--reference", &r, "--text", &t, "--ctx", "256", "--max-windows", "20", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(o.trim()).unwrap()["kld"].as_f64().unwrap()
}

/// Whole-model bits per weight from the files: every stored byte of model.safetensors × 8 over
/// the float model's parameter count.
fn file_bpw(dir: &Path) -> f64 {
    let params: usize = {
        let fp = lowbit::weights::Checkpoint::open(&stories()).unwrap();
        fp.tensors().values().map(|t| t.shape.iter().product::<usize>()).sum()
    };
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    8.0 * (st.len() - 8 - header) as f64 / params as f64
}

#[test]
fn target_bpw_end_to_end_on_stories260k() {
    let tmp = tempfile::tempdir().unwrap();
    // Uniform GPTQ 4-bit g128 sets the size; the plan gets the same budget.
    let uni = tmp.path().join("uniform");
    let u = quantize(&uni, &["--bits", "4", "--group-size", "128"]);
    let target = u["model_bpw"].as_f64().unwrap();
    assert!((file_bpw(&uni) - target).abs() < 1e-9);
    let t = format!("{target}");
    // --dry-run: the plan and nothing written.
    let dry = tmp.path().join("dry");
    let (m, d) = (s(&stories()), s(&dry));
    let mut args = vec!["quantize", "--model", &m, "--out", &d, "--target-bpw", &t, "--dry-run"];
    args.extend(CALIB);
    let (code, out, err) = lowbit(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!dry.exists());
    assert!(out.contains("model.layers.4.mlp.down_proj") && out.contains("predicted loss"), "{out}");
    let plan_line = out.lines().find(|l| l.starts_with("plan: ")).unwrap();
    // The real run.
    let planned = tmp.path().join("planned");
    let p = quantize(&planned, &["--target-bpw", &t]);
    let bpw = file_bpw(&planned);
    assert!(bpw <= target + 1e-9 && bpw > target - 0.05, "{bpw} vs {target}");
    assert_eq!(p["model_bpw"].as_f64().unwrap(), bpw);
    assert_eq!(p["plan"]["model_bpw"].as_f64().unwrap(), bpw, "the plan's size is the written size");
    assert!(plan_line.contains(&format!("{:.4} bpw", bpw)), "{plan_line}");
    // config.json carries the plan, and it is what the modules store.
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(planned.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    let linears = q["plan"]["linears"].as_array().unwrap();
    assert_eq!(linears.len(), 5 * 7);
    let mut widths = std::collections::BTreeSet::new();
    for l in linears {
        let meta = &q["modules"][l["name"].as_str().unwrap()];
        assert_eq!(meta["bits"], l["bits"], "{l}");
        assert_eq!(meta["group_size"], l["group_size"], "{l}");
        widths.insert(l["bits"].as_u64().unwrap());
    }
    assert!(widths.len() > 1, "a mixed plan: {widths:?}");
    // Better than uniform GPTQ of the same size on both texts.
    for text in ["data/tinystories/TinyStories-valid.partial.txt", "data/wikitext2/wiki.test.raw"] {
        let (a, b) = (kld(&planned, text), kld(&uni, text));
        eprintln!("{text}: plan KLD {a:.5}, uniform gptq 4-bit g128 {b:.5}");
        assert!(a < b, "{text}: plan {a} vs uniform {b}");
    }
}

#[test]
fn target_bpw_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, o) = (s(&stories()), s(&tmp.path().join("o")));
    let cases: [(&[&str], &str); 5] = [
        (
            &["--target-bpw", "6", "--method", "gptq", "--calib", "../shared/data/ptb/ptb.valid.txt", "--skip", "down_proj"],
            "--override or --skip",
        ),
        (&["--target-bpw", "2", "--method", "gptq", "--calib", "../shared/data/ptb/ptb.valid.txt"], "below the smallest plan"),
        (&["--target-bpw", "6", "--method", "awq", "--calib", "../shared/data/ptb/ptb.valid.txt"], "plans --method rtn, gptq or awq+gptq"),
        (&["--target-bpw", "6", "--method", "gptq"], "give --calib"),
        (
            &["--target-bpw", "6", "--method", "gptq", "--calib", "../shared/data/ptb/ptb.valid.txt", "--format", "gptq"],
            "--format lowbit only",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["quantize", "--model", &m, "--out", &o];
        args.extend(extra);
        let (code, _, err) = lowbit(&args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(want) && err.trim().lines().count() == 1, "{extra:?}: {err}");
        assert!(!tmp.path().join("o").exists());
    }
}

#[test]
fn sensitivity_cache_is_reused_only_for_the_same_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("sens.json");
    let (m, c) = (s(&stories()), s(&cache));
    let run = |calib: &str, target: &str| {
        let o = s(&tmp.path().join("o"));
        lowbit(&[
            "quantize",
            "--model",
            &m,
            "--out",
            &o,
            "--method",
            "gptq",
            "--calib",
            calib,
            "--calib-samples",
            "8",
            "--calib-seqlen",
            "128",
            "--target-bpw",
            target,
            "--sensitivity-cache",
            &c,
            "--dry-run",
            "--json",
        ])
    };
    let ptb = "../shared/data/ptb/ptb.valid.txt";
    let (code, a, err) = run(ptb, "7");
    assert_eq!(code, 0, "{err}");
    let a: Value = serde_json::from_str(a.trim()).unwrap();
    assert!(cache.exists() && a["plan"]["seconds"].as_f64().unwrap() > 0.0);
    // Another budget: the measurements are read back (no pass), the same losses.
    let (code, b, err) = run(ptb, "7.3");
    assert_eq!(code, 0, "{err}");
    let b: Value = serde_json::from_str(b.trim()).unwrap();
    assert_eq!(b["plan"]["seconds"].as_f64().unwrap(), 0.0);
    // (JSON keeps the losses to the last bit or so.)
    for (x, y) in a["plan"]["uniform"].as_array().unwrap().iter().zip(b["plan"]["uniform"].as_array().unwrap()) {
        assert_eq!((&x["bits"], &x["group_size"], &x["model_bpw"]), (&y["bits"], &y["group_size"], &y["model_bpw"]));
        let (p, q) = (f64_of(&x["predicted_loss"]), f64_of(&y["predicted_loss"]));
        assert!((p - q).abs() <= 1e-12 * p.abs(), "{p} vs {q}");
    }
    // Other calibration text: refused, and the file is left as it was.
    let before = std::fs::read(&cache).unwrap();
    let (code, _, err) = run("../shared/data/tinyshakespeare/input.txt", "7");
    assert_eq!(code, 2);
    assert!(err.contains("measured on another model, calibration or candidate list"), "{err}");
    assert_eq!(std::fs::read(&cache).unwrap(), before);
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// Spearman's rank correlation of two equally long lists (no ties expected).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    1.0 - 6.0 * ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / (n * (n * n - 1.0))
}

#[test]
fn target_bpw_plans_the_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("sens.json");
    let (m, c) = (s(&stories()), s(&cache));
    // 5 bpw is below what the linears can reach with float tables (they alone are 3.6 bpw of
    // stories260K, so the floor is 5.45): refused with --float-tables, planned without.
    let dry = s(&tmp.path().join("dry"));
    let mut args = vec!["quantize", "--model", &m, "--out", &dry, "--target-bpw", "5", "--float-tables", "--dry-run"];
    args.extend(CALIB);
    let (code, _, err) = lowbit(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("below the smallest plan"), "{err}");
    let planned = tmp.path().join("planned");
    let p = quantize(&planned, &["--target-bpw", "5", "--sensitivity-cache", &c]);
    let bpw = file_bpw(&planned);
    assert!(bpw <= 5.0 && bpw > 4.95, "{bpw}");
    // The tables' choices are in the plan and are what config.json's modules store.
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(planned.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    let tables = q["plan"]["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "stories260K's lm_head is not tied: {tables:?}");
    let mut quantized_tables = 0;
    for t in tables {
        let name = t["name"].as_str().unwrap();
        match t["bits"].as_u64() {
            Some(b) => {
                quantized_tables += 1;
                assert_eq!(q["modules"][name]["bits"].as_u64(), Some(b), "{name}");
                assert_eq!(q["modules"][name]["group_size"], t["group_size"], "{name}");
            }
            None => assert!(q["modules"][name].is_null(), "{name} kept in float"),
        }
    }
    assert!(quantized_tables > 0, "at 5 bpw a table must be quantized: {tables:?}");
    // The table losses: 0 in float, falling with the bits at a fixed group size, and ranking the
    // settings as the measured KL divergence of the model with only that table quantized does.
    let sens: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    for t in sens["tables"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let settings = t["settings"].as_array().unwrap();
        let loss: Vec<f64> = t["loss"].as_array().unwrap().iter().map(f64_of).collect();
        assert!(settings[0].is_null() && loss[0] == 0.0);
        let (mut predicted, mut measured) = (Vec::new(), Vec::new());
        for (k, st) in settings.iter().enumerate().skip(1) {
            let (b, g) = (st["bits"].as_u64().unwrap(), st["group_size"].as_u64().unwrap());
            if g != 128 || b == 8 {
                continue;
            }
            predicted.push(loss[k]);
            let d = tmp.path().join(format!("{}-{b}", name.replace('.', "_")));
            let ov = format!("^{}$=rtn:{b}:128", regex::escape(name));
            quantize(&d, &["--skip", ".*", "--override", &ov]);
            measured.push(kld(&d, "data/tinystories/TinyStories-valid.partial.txt"));
        }
        eprintln!("{name}: predicted {predicted:?}, measured KLD {measured:?}");
        assert!(predicted.len() >= 4 && predicted.windows(2).all(|w| w[0] > w[1]), "{name}: {predicted:?}");
        assert!(spearman(&predicted, &measured) > 0.99, "{name}: {predicted:?} vs {measured:?}");
    }
    // Better than every linear and table at one setting of no larger size, on two texts.
    let uni = p["plan"]["uniform"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| f64_of(&u["model_bpw"]) <= 5.0)
        .max_by(|a, b| f64_of(&a["model_bpw"]).total_cmp(&f64_of(&b["model_bpw"])))
        .unwrap()
        .clone();
    let (b, g) = (uni["bits"].to_string(), uni["group_size"].to_string());
    let table = format!("rtn:{b}:{g}");
    let ud = tmp.path().join("uniform");
    let u = quantize(
        &ud,
        &["--bits", &b, "--group-size", &g, "--override", &format!("embed_tokens={table}"), "--override", &format!("lm_head={table}")],
    );
    assert!((f64_of(&u["model_bpw"]) - f64_of(&uni["model_bpw"])).abs() < 1e-9, "the plan's size count of the uniform setting");
    for text in ["data/tinystories/TinyStories-valid.partial.txt", "data/wikitext2/wiki.test.raw"] {
        let (a, b) = (kld(&planned, text), kld(&ud, text));
        eprintln!("{text}: plan KLD {a:.5}, uniform {uni} {b:.5}");
        assert!(a < b, "{text}: plan {a} vs uniform {b}");
    }
}

#[test]
fn target_size_is_a_byte_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("sized");
    let p = quantize(&d, &["--target-size", "150kB"]);
    assert_eq!(p["plan"]["target_size"].as_u64(), Some(150_000));
    let st = std::fs::read(d.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let tensor_bytes = st.len() - 8 - header;
    assert!(tensor_bytes <= 150_000 && tensor_bytes > 147_000, "{tensor_bytes}");
    // Units, and refusals that name the flag.
    let (m, o) = (s(&stories()), s(&tmp.path().join("o")));
    for (size, want) in [("1x", "unknown unit"), ("0MB", "at least one byte"), ("MB", "expected a size")] {
        let (code, _, err) = lowbit(&["quantize", "--model", &m, "--out", &o, "--target-size", size]);
        assert_eq!(code, 2, "{size}: {err}");
        assert!(err.contains("--target-size") && err.contains(want), "{size}: {err}");
    }
    let (code, _, err) = lowbit(&["quantize", "--model", &m, "--out", &o, "--target-size", "1MiB", "--target-bpw", "4"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    assert!(!tmp.path().join("o").exists());
}
