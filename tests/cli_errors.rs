//! Bad input: one-line error naming the file and the problem, exit code 2, no panic, no output.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(lowbit_bin()).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// Expect exit 2 and a single stderr line (besides progress lines) containing every fragment.
fn expect_error(args: &[&str], fragments: &[&str]) {
    let (code, _, err) = run(args);
    assert_eq!(code, 2, "args {args:?}: exit {code}, stderr {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !is_progress(l)).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for f in fragments {
        assert!(err.contains(f), "stderr {err:?} lacks {f:?}");
    }
}

/// A copy of stories260K's config and tokenizer with a given model.safetensors.
fn model_dir(tmp: &Path, name: &str, safetensors: &[u8]) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(stories().join(f), d.join(f)).unwrap();
    }
    std::fs::write(d.join("model.safetensors"), safetensors).unwrap();
    d
}

fn st_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn text() -> String {
    tinystories_text().display().to_string()
}

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::read(stories().join("model.safetensors")).unwrap();
    let d = model_dir(tmp.path(), "m", &full[..full.len() / 2]);
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text(), "--ctx", "64"], &["model.safetensors", "out of range"]);
    let d = model_dir(tmp.path(), "tiny", &full[..5]);
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text()], &["model.safetensors", "truncated"]);
}

#[test]
fn header_offsets_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let h = r#"{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#;
    let d = model_dir(tmp.path(), "m", &st_with_header(h, &[0u8; 16]));
    expect_error(&["inspect", "--model", d.to_str().unwrap()], &["model.safetensors"]);
}

#[test]
fn unknown_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let h = r#"{"model.norm.weight":{"dtype":"Q9","shape":[4],"data_offsets":[0,4]}}"#;
    let d = model_dir(tmp.path(), "m", &st_with_header(h, &[0u8; 4]));
    expect_error(&["inspect", "--model", d.to_str().unwrap()], &["model.safetensors", "header"]);
}

#[test]
fn missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let h = r#"{"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let d = model_dir(tmp.path(), "m", &st_with_header(h, &[0u8; 4]));
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text()], &["missing tensor model.embed_tokens.weight"]);
}

fn with_config(tmp: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let d = model_dir(tmp, "m", &std::fs::read(stories().join("model.safetensors")).unwrap());
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    d
}

#[test]
fn config_missing_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = with_config(tmp.path(), |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text()], &["config.json", "hidden_size"]);
}

#[test]
fn unknown_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    let d = with_config(tmp.path(), |c| c["model_type"] = "gpt_neox".into());
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text()], &["config.json", "gpt_neox", "llama, mistral, qwen2"]);
}

#[test]
fn malformed_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("bad.gguf");
    let mut bytes = std::fs::read(stories().join("stories260K.gguf")).unwrap();
    bytes.truncate(1000);
    std::fs::write(&g, &bytes).unwrap();
    let out = tmp.path().join("out");
    expect_error(&["import-gguf", g.to_str().unwrap(), "--out", out.to_str().unwrap()], &["bad.gguf"]);
    assert!(!out.exists());
    std::fs::write(&g, b"GGUX not a gguf file at all").unwrap();
    expect_error(&["import-gguf", g.to_str().unwrap(), "--out", out.to_str().unwrap()], &["bad.gguf", "magic"]);
}

#[test]
fn empty_text_and_short_text() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let m = stories();
    expect_error(&["eval", "--model", m.to_str().unwrap(), "--text", empty.to_str().unwrap()], &["empty.txt", "empty"]);
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "Once upon a time there was a cat.").unwrap();
    expect_error(
        &["eval", "--model", m.to_str().unwrap(), "--text", short.to_str().unwrap(), "--ctx", "256"],
        &["short.txt", "shorter than one window"],
    );
}

#[test]
fn eval_json_is_one_object() {
    let m = stories();
    let (code, out, _) = run(&["eval", "--model", m.to_str().unwrap(), "--text", &text(), "--ctx", "128", "--max-windows", "2", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["tokens_scored"], 2 * 127);
    assert!(v["ppl"].as_f64().unwrap() > 1.0);
}

#[test]
fn verify_without_gpu_exits_3() {
    if lowbit::cuda::gpu_available() {
        eprintln!("SKIP: a GPU is present; the no-GPU path is not exercised");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    let m = stories();
    let (code, _, err) = run(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group-size",
        "32",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["verify", "--model", q.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no CUDA GPU"), "{err}");
    // A plain checkpoint is refused as such, before the GPU question.
    expect_error(&["verify", "--model", m.to_str().unwrap()], &["not a quantized checkpoint"]);
}

/// stories260K's tensors, to edit and write back.
fn stories_tensors() -> Vec<lowbit::st_write::OutTensor> {
    let bytes = std::fs::read(stories().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            lowbit::st_write::OutTensor::copy_of(n.to_string(), &t)
        })
        .collect()
}

#[test]
fn non_finite_weight_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = stories_tensors();
    let up = tensors.iter_mut().find(|t| t.name == "model.layers.2.mlp.up_proj.weight").unwrap();
    up.data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let d = model_dir(tmp.path(), "nan", &[]);
    lowbit::st_write::write_safetensors(&d.join("model.safetensors"), &tensors, None).unwrap();
    let out = tmp.path().join("q");
    expect_error(
        &["quantize", "--model", d.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn"],
        &["model.layers.2.mlp.up_proj.weight", "non-finite"],
    );
    assert!(!out.exists());
}

/// Finite weights whose activations overflow: layer 1's input RMSNorm weight scaled to ~1e38
/// makes the normed hidden state (and everything after it) Inf/NaN during calibration. The
/// error names the layer and where the activations stopped being finite; nothing is written.
#[test]
fn non_finite_activation_names_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = stories_tensors();
    let norm = tensors.iter_mut().find(|t| t.name == "model.layers.1.input_layernorm.weight").unwrap();
    for w in norm.data.chunks_exact_mut(4) {
        let v = f32::from_le_bytes(w.try_into().unwrap());
        w.copy_from_slice(&(v.signum() * 1e38).to_le_bytes());
    }
    let d = model_dir(tmp.path(), "overflow", &[]);
    lowbit::st_write::write_safetensors(&d.join("model.safetensors"), &tensors, None).unwrap();
    let out = tmp.path().join("q");
    expect_error(
        &[
            "quantize",
            "--model",
            d.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "gptq",
            "--calib",
            &text(),
            "--calib-samples",
            "2",
            "--calib-seqlen",
            "32",
        ],
        &["model.layers.1:", "non-finite activation", "self_attn.q_proj"],
    );
    assert!(!out.exists());
}

/// Sizes in config.json are checked against the tensors before anything is sized by them:
/// an absurd num_hidden_layers used to build the list of needed tensor names for every layer
/// up front (out of memory), an absurd hidden_size made quantize allocate a probe weight of
/// 64 × 2^40 floats (abort) before any shape was compared.
#[test]
fn absurd_config_sizes_are_checked_against_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = with_config(tmp.path(), |c| c["num_hidden_layers"] = (1u64 << 40).into());
    expect_error(&["eval", "--model", d.to_str().unwrap(), "--text", &text()], &["missing tensor model.layers.5.input_layernorm.weight"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = with_config(tmp.path(), |c| c["hidden_size"] = (1u64 << 40).into());
    let out = tmp.path().join("q");
    expect_error(
        &["quantize", "--model", d.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "rtn"],
        &["model.safetensors", "model.embed_tokens.weight has shape [512, 64], expected [512, 1099511627776]"],
    );
    assert!(!out.exists());
    let d = with_config(tmp.path(), |c| c["vocab_size"] = (1u64 << 62).into());
    expect_error(&["inspect", "--model", d.to_str().unwrap()], &["config.json", "dimensions too large"]);
}
