//! Outputs are safe: `--force` never deletes what lowbit did not write, `--out` keeps clear of
//! the inputs, one writer per output (flock), temporary directories of killed runs are cleaned
//! or named, broken models (NaN, extra layers, eps ≤ 0) are refused, eval fails on a non-finite
//! result, and messages escape the control characters of untrusted names.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn calib() -> PathBuf {
    shared("data/tinyshakespeare/input.txt")
}

/// A work directory holding a writable copy of stories260K (with its .gguf) and user files.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    copy_dir(&stories(), &work.join("model"));
    std::fs::write(work.join("notes.txt"), "the user's notes").unwrap();
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("sub").join("data.bin"), [1u8, 2, 3]).unwrap();
    (tmp, work)
}

/// Expect exit 2 with `frag` in stderr.
fn refused(cwd: &Path, args: &[&str], frag: &str) {
    let (code, _, err) = lowbit_env(cwd, &[], args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(err.contains(frag), "{args:?}: stderr {err:?} lacks {frag:?}");
}

/// `--out` that is, contains, or lies inside the model or an input file is refused, with or
/// without --force, for quantize, sweep and import-gguf; nothing changes on disk.
#[test]
fn out_may_not_overlap_the_inputs() {
    let (tmp, work) = workspace();
    let before = snapshot(tmp.path());
    let c = calib();
    for out in [".", "./", "model", "model/", "model/q4", "model/./q4", s(&work)] {
        refused(&work, &["quantize", "--model", "model", "--out", out, "--method", "rtn", "--force"], "the model directory");
    }
    // `..` from a subdirectory: the work directory, which holds the model.
    refused(
        &work.join("sub"),
        &["quantize", "--model", "../model", "--out", "..", "--method", "rtn", "--force"],
        "contains the model directory",
    );
    refused(
        &work.join("sub"),
        &["quantize", "--model", "../model", "--out", "../..", "--method", "rtn", "--force"],
        "contains the model directory",
    );
    // The calibration text inside --out.
    std::fs::copy(&c, work.join("sub").join("calib.txt")).unwrap();
    refused(
        &work,
        &["quantize", "--model", "model", "--out", "sub", "--method", "awq", "--calib", "sub/calib.txt", "--force"],
        "contains the calibration text",
    );
    // sweep: the model and the eval text.
    let t = tinystories_text();
    refused(
        &work,
        &["sweep", "--model", "model", "--eval-text", s(&t), "--out", ".", "--methods", "rtn", "--bits", "4", "--force"],
        "the model directory",
    );
    refused(
        &work,
        &["sweep", "--model", "model", "--eval-text", "sub/calib.txt", "--out", "sub", "--methods", "rtn", "--bits", "4", "--force"],
        "contains the eval text",
    );
    // import-gguf into the folder holding the .gguf, or onto the .gguf itself.
    refused(&work, &["import-gguf", "model/stories260K.gguf", "--out", "model", "--force"], "contains the GGUF file");
    refused(&work, &["import-gguf", "model/stories260K.gguf", "--out", "model/stories260K.gguf", "--force"], "is the GGUF file");
    // The tokenizer inside --out.
    copy_dir(&work.join("model"), &work.join("sub").join("tok"));
    let before_calib = snapshot(tmp.path());
    refused(
        &work,
        &["import-gguf", "model/stories260K.gguf", "--out", "sub", "--tokenizer", "sub/tok/tokenizer.json", "--force"],
        "contains the tokenizer",
    );
    refused(
        &work,
        &["import-gguf", "model/stories260K.gguf", "--out", "sub/tok/tokenizer.json", "--tokenizer", "sub/tok/tokenizer.json", "--force"],
        "is the tokenizer",
    );
    assert_eq!(snapshot(tmp.path()), before_calib, "a refused command changed files");
    std::fs::remove_file(work.join("sub").join("calib.txt")).unwrap();
    std::fs::remove_dir_all(work.join("sub").join("tok")).unwrap();
    assert_eq!(snapshot(tmp.path()), before);
}

/// `--force` replaces only a directory lowbit wrote and that holds nothing else; anything else is
/// refused with a message naming what was found, and left exactly as it was.
#[test]
fn force_replaces_only_what_lowbit_wrote() {
    let (tmp, work) = workspace();
    let quantize = |out: &str, method: &str| -> (i32, String) {
        let (code, _, err) = lowbit_env(&work, &[], &["quantize", "--model", "model", "--out", out, "--method", method, "--force"]);
        (code, err)
    };
    // A folder of the user's files: refused, named, untouched.
    std::fs::create_dir_all(work.join("mine")).unwrap();
    std::fs::write(work.join("mine").join("a.txt"), "a").unwrap();
    let before = snapshot(tmp.path());
    let (code, err) = quantize("mine", "rtn");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not written by lowbit (no lowbit-output.json; it holds 1 entries: a.txt)"), "{err}");
    // An empty folder is not lowbit's either.
    std::fs::create_dir_all(work.join("empty")).unwrap();
    let (code, err) = quantize("empty", "rtn");
    assert!(code == 2 && err.contains("it is empty"), "{err}");
    // A file.
    let (code, err) = quantize("notes.txt", "rtn");
    assert!(code == 2 && err.contains("is a file, not a directory"), "{err}");
    std::fs::remove_dir(work.join("empty")).unwrap();
    assert_eq!(snapshot(tmp.path()), before);

    // A lowbit output is replaced, with the same bytes a fresh run writes.
    assert_eq!(quantize("q", "rtn").0, 0);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("q/lowbit-output.json")).unwrap()).unwrap();
    assert_eq!(manifest["written_by"], "lowbit");
    assert_eq!(manifest["command"], "quantize");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(manifest["files"][f].as_u64().unwrap(), std::fs::metadata(work.join("q").join(f)).unwrap().len(), "{f}");
    }
    let (code, err) = quantize("q", "statsq");
    assert_eq!(code, 0, "{err}");
    let fresh = tmp.path().join("fresh");
    let (code, _, err) = lowbit_env(&work, &[], &["quantize", "--model", "model", "--out", s(&fresh), "--method", "statsq"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(work.join("q/model.safetensors")).unwrap(), std::fs::read(fresh.join("model.safetensors")).unwrap());
    assert!(lowbit_litter(&work).is_empty(), "{:?}", lowbit_litter(&work));

    // The user added a file to it: refused, naming the file; nothing removed.
    std::fs::write(work.join("q").join("my-eval.txt"), "results").unwrap();
    let before = snapshot(tmp.path());
    let (code, err) = quantize("q", "rtn");
    assert_eq!(code, 2);
    assert!(err.contains("my-eval.txt: not written by lowbit"), "{err}");
    assert_eq!(snapshot(tmp.path()), before);
    std::fs::remove_file(work.join("q").join("my-eval.txt")).unwrap();
    // ... or a subdirectory ...
    std::fs::create_dir(work.join("q").join("runs")).unwrap();
    let (code, err) = quantize("q", "rtn");
    assert!(code == 2 && err.contains("runs: not written by lowbit"), "{err}");
    std::fs::remove_dir(work.join("q").join("runs")).unwrap();
    // ... or changed one of its files.
    std::fs::write(work.join("q").join("config.json"), "{}").unwrap();
    let before = snapshot(tmp.path());
    let (code, err) = quantize("q", "rtn");
    assert!(code == 2 && err.contains("config.json: changed since lowbit wrote it (2 bytes"), "{err}");
    assert_eq!(snapshot(tmp.path()), before);

    // A forged manifest that lists a file outside the directory.
    std::fs::create_dir(work.join("forged")).unwrap();
    let forged = r#"{"written_by":"lowbit","lowbit_version":"0","command":"quantize","files":{"../notes.txt":16}}"#;
    std::fs::write(work.join("forged/lowbit-output.json"), forged).unwrap();
    let before = snapshot(tmp.path());
    let (code, err) = quantize("forged", "rtn");
    assert!(code == 2 && err.contains("not a plain relative path"), "{err}");
    assert_eq!(snapshot(tmp.path()), before);

    // A symbolic link to a lowbit output is not replaced (nor followed).
    assert_eq!(quantize("q2", "rtn").0, 0);
    std::os::unix::fs::symlink(work.join("q2"), work.join("link")).unwrap();
    let before = snapshot(tmp.path());
    let (code, err) = quantize("link", "rtn");
    assert!(code == 2 && err.contains("is a symbolic link"), "{err}");
    assert_eq!(snapshot(tmp.path()), before);

    // sweep and import-gguf use the same rules.
    let t = tinystories_text();
    let (code, _, err) = lowbit_env(
        &work,
        &[],
        &["sweep", "--model", "model", "--eval-text", s(&t), "--out", "mine", "--methods", "rtn", "--bits", "4", "--force"],
    );
    assert!(code == 2 && err.contains("not written by lowbit"), "{err}");
    let (code, _, err) = lowbit_env(&work, &[], &["import-gguf", "model/stories260K.gguf", "--out", "mine", "--force"]);
    assert!(code == 2 && err.contains("not written by lowbit"), "{err}");
    let sweep = |extra: &[&str]| {
        let mut a = vec!["sweep", "--model", "model", "--eval-text", s(&t), "--out", "sw", "--methods", "rtn", "--bits", "4"];
        a.extend(["--eval-ctx", "64", "--max-windows", "2"]);
        a.extend(extra);
        lowbit_env(&work, &[], &a)
    };
    assert_eq!(sweep(&[]).0, 0);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join("sw/lowbit-output.json")).unwrap()).unwrap();
    assert!(m["files"]["results.json"].is_u64() && m["files"]["rtn-w4g128/model.safetensors"].is_u64(), "{m}");
    let (code, _, err) = sweep(&["--force"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(work.join("sw/rtn-w4g128/notes.md"), "mine").unwrap();
    let (code, _, err) = sweep(&["--force"]);
    assert!(code == 2 && err.contains("rtn-w4g128/notes.md: not written by lowbit"), "{err}");
    assert!(work.join("sw/rtn-w4g128/notes.md").exists());
    assert!(lowbit_litter(&work).is_empty(), "{:?}", lowbit_litter(&work));
}

/// A second run on an output that a run is writing exits 2 at once naming the holder's pid, and
/// writes nothing; the first run's output is all its own.
#[test]
fn one_writer_per_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let lock = tmp.path().join(".q.lowbit-lock");
    let c = calib();
    let m = stories();
    let args = |method: &str, out: &Path| -> Vec<String> {
        let a = ["quantize", "--model", s(&m), "--out", s(out), "--method", method, "--bits", "4", "--group-size", "32"];
        let b = ["--calib", s(&c), "--calib-samples", "150", "--calib-seqlen", "256"];
        a.iter().chain(b.iter()).map(|s| s.to_string()).collect()
    };
    // Held by another process (here: this test, with flock, as any lowbit run holds it).
    {
        let f = std::fs::File::create(&lock).unwrap();
        f.lock().unwrap();
        std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        let t = Instant::now();
        let a = args("rtn", &out);
        let (code, _, err) = lowbit_env(tmp.path(), &[], &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("another lowbit run (pid {}) is writing this output", std::process::id())), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(!out.exists());
        assert_eq!(lowbit_litter(tmp.path()), vec![".q.lowbit-lock".to_string()], "only the holder's lock file");
    }
    std::fs::remove_file(&lock).unwrap();

    // Two real runs: AWQ starts, GPTQ is refused while it runs.
    let a = args("awq", &out);
    let mut first = std::process::Command::new(lowbit_bin())
        .args(&a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |s| s.trim() != first.id().to_string()) {
        assert!(first.try_wait().unwrap().is_none(), "first run ended before it was seen holding the lock");
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = args("gptq", &out);
    let (code, _, err) = lowbit_env(tmp.path(), &[], &b.iter().map(String::as_str).collect::<Vec<_>>());
    let still_running = first.try_wait().unwrap().is_none();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("another lowbit run (pid {}) is writing this output", first.id())), "{err}");
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(still_running, "the first run should still have been running when the second was refused");
    // The output is the AWQ run's alone: the same bytes as an AWQ run on its own.
    let alone = tmp.path().join("alone");
    let (code, _, err) = lowbit_env(tmp.path(), &[], &args("awq", &alone).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    for f in ["model.safetensors", "config.json"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(alone.join(f)).unwrap(), "{f} is not the AWQ run's");
    }
    assert!(lowbit_litter(tmp.path()).is_empty(), "{:?}", lowbit_litter(tmp.path()));
}

/// Temporary directories of killed runs (`kill -9` just before the final rename) are removed by
/// the next run on the same output; a directory that only looks like one is named and kept.
#[test]
fn stale_temporary_directories_are_cleaned_or_named() {
    let (tmp, work) = workspace();
    let _ = tmp;
    let crash = [("LOWBIT_TEST_CRASH", "before-rename")];
    let (code, _, err) = lowbit_env(&work, &crash, &["import-gguf", "model/stories260K.gguf", "--out", "g"]);
    assert_eq!(code, -1, "expected SIGKILL: {err}");
    let temps = || -> Vec<String> { lowbit_litter(&work).into_iter().filter(|n| n.starts_with(".g.lowbit-tmp-")).collect() };
    let first = temps();
    assert_eq!(first.len(), 1, "{first:?}");
    // The next run removes it (and is killed too, leaving its own).
    let (code, _, err) = lowbit_env(&work, &crash, &["quantize", "--model", "model", "--out", "g", "--method", "rtn"]);
    assert_eq!(code, -1, "expected SIGKILL: {err}");
    let second = temps();
    assert!(second.len() == 1 && second != first, "{first:?} {second:?}");
    assert!(!work.join("g").exists());
    // Not lowbit's: no marker, holds a file.
    let fake = work.join(".g.lowbit-tmp-mine");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("keep.txt"), "mine").unwrap();
    let (code, _, err) = lowbit_env(&work, &[], &["import-gguf", "model/stories260K.gguf", "--out", "g"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(".g.lowbit-tmp-mine: left in place"), "{err}");
    assert_eq!(std::fs::read_to_string(fake.join("keep.txt")).unwrap(), "mine");
    assert_eq!(lowbit_litter(&work), vec![".g.lowbit-tmp-mine".to_string()]);
    assert!(work.join("g/model.safetensors").exists());
}

/// NaN or ±inf in the embeddings, the final norm, lm_head or a layer norm: quantize refuses,
/// naming the tensor, and writes nothing; eval of such a model exits non-zero.
#[test]
fn non_finite_weights_are_refused_and_fail_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tinystories_text();
    // A token of the first eval window, so the NaN embedding row is read.
    let tok = lowbit::tokenizer::Tokenizer::from_dir(&stories()).unwrap();
    let first_token = tok.encode(&std::fs::read_to_string(&t).unwrap()[..400], true).unwrap()[3] as usize;
    for (tensor, index, v) in [
        ("lm_head.weight", 517, f32::NAN),
        ("model.norm.weight", 3, f32::INFINITY),
        ("model.embed_tokens.weight", 64 * first_token + 7, f32::NAN),
        ("model.layers.2.post_attention_layernorm.weight", 5, f32::NEG_INFINITY),
    ] {
        let m = tmp.path().join(format!("m-{tensor}"));
        copy_dir(&stories(), &m);
        poke_f32(&m.join("model.safetensors"), tensor, index, v);
        let out = tmp.path().join("q");
        let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn"]);
        assert_eq!(code, 2, "{tensor}: {err}");
        assert!(err.contains(tensor) && err.contains("non-finite value") && err.contains(&format!("index {index}")), "{tensor}: {err}");
        assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty());
        // eval: the exit code says the model is broken (the numbers are still printed).
        let (code, stdout, err) = lowbit(&["eval", "--model", s(&m), "--text", s(&t), "--ctx", "64", "--max-windows", "2"]);
        assert_eq!(code, 2, "{tensor}: {stdout} {err}");
        assert!(err.contains("is not finite"), "{tensor}: {err}");
        let (code, _, err) =
            lowbit(&["eval", "--model", s(&stories()), "--reference", s(&m), "--text", s(&t), "--ctx", "64", "--max-windows", "2"]);
        assert_eq!(code, 2, "{tensor}: {err}");
        assert!(err.contains("KL divergence NaN is not finite") || err.contains("KL divergence inf"), "{tensor}: {err}");
    }
    // A finite weight that overflows the output's f16: caught before writing, fine in f32.
    let m = tmp.path().join("m-big");
    copy_dir(&stories(), &m);
    poke_f32(&m.join("model.safetensors"), "lm_head.weight", 100, 1e6);
    let out = tmp.path().join("q");
    let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn"]);
    assert!(code == 2 && err.contains("lm_head.weight: non-finite value at index 100 in the output") && err.contains("F16"), "{err}");
    assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty());
    let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn", "--float-dtype", "f32"]);
    assert_eq!(code, 0, "{err}");
    // The healthy model evaluates with exit 0.
    let (code, _, err) = lowbit(&["eval", "--model", s(&stories()), "--text", s(&t), "--ctx", "64", "--max-windows", "2"]);
    assert_eq!(code, 0, "{err}");
}

/// config.json must describe the tensors exactly: a layer beyond num_hidden_layers is refused,
/// not dropped; rms_norm_eps must be positive.
#[test]
fn config_must_match_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let edit = |name: &str, from: &str, to: &str| -> PathBuf {
        let m = tmp.path().join(name);
        copy_dir(&stories(), &m);
        let c = std::fs::read_to_string(m.join("config.json")).unwrap();
        assert!(c.contains(from));
        std::fs::write(m.join("config.json"), c.replace(from, to)).unwrap();
        m
    };
    let out = tmp.path().join("q");
    let m = edit("four", "\"num_hidden_layers\": 5", "\"num_hidden_layers\": 4");
    let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tensor model.layers.4.") && err.contains("beyond num_hidden_layers 4"), "{err}");
    let (code, _, err) = lowbit(&["inspect", "--model", s(&m)]);
    assert_eq!(code, 0, "inspect reports what is there: {err}");
    let t = tinystories_text();
    let (code, _, err) = lowbit(&["eval", "--model", s(&m), "--text", s(&t), "--ctx", "64", "--max-windows", "1"]);
    assert!(code == 2 && err.contains("beyond num_hidden_layers 4"), "{err}");
    for (name, eps) in [("neg", "-1e-05"), ("zero", "0.0"), ("tiny", "1e-60")] {
        let m = edit(name, "\"rms_norm_eps\": 9.999999747378752e-06", &format!("\"rms_norm_eps\": {eps}"));
        let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn"]);
        assert_eq!(code, 2, "{eps}: {err}");
        assert!(err.contains("\"rms_norm_eps\" must be a positive number"), "{eps}: {err}");
    }
    let m = edit("str", "\"rms_norm_eps\": 9.999999747378752e-06", "\"rms_norm_eps\": \"1e-5\"");
    let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&out), "--method", "rtn"]);
    assert!(code == 2 && err.contains("\"rms_norm_eps\" is not a number"), "{err}");
    assert!(!out.exists());
}

/// Absurd calibration sizes are clean errors (exit 2, one line, the numbers), not an abort.
#[test]
fn absurd_calibration_sizes_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let c = calib();
    let huge = usize::MAX.to_string();
    for (samples, seqlen, frag) in [
        ("1000000000", "512", "--calib-samples 1000000000 × --calib-seqlen 512: 512000000000 calibration tokens need"),
        // Past the model's position limit (2048), refused before any size arithmetic.
        ("1", "1000000000000000", "exceeds the model's position limit of 2048"),
        (huge.as_str(), "4", "more bytes than fit in 64 bits"),
    ] {
        let (code, _, err) = lowbit(&[
            "quantize",
            "--model",
            s(&stories()),
            "--out",
            s(&out),
            "--method",
            "awq",
            "--calib",
            s(&c),
            "--calib-samples",
            samples,
            "--calib-seqlen",
            seqlen,
        ]);
        assert_eq!(code, 2, "{samples}×{seqlen}: {err}");
        assert!(err.contains(frag) && (err.contains("of memory") || err.contains("position limit")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out.exists() && lowbit_litter(tmp.path()).is_empty());
    }
    let t = tinystories_text();
    let (code, _, err) = lowbit(&[
        "sweep",
        "--model",
        s(&stories()),
        "--eval-text",
        s(&t),
        "--out",
        s(&out),
        "--methods",
        "awq",
        "--bits",
        "4",
        "--calib",
        s(&c),
        "--calib-samples",
        "1000000000",
    ]);
    assert!(code == 2 && err.contains("calibration tokens need"), "{err}");
}

/// File names with terminal control characters are escaped in messages, never echoed raw.
#[test]
fn control_characters_in_names_are_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("evil\u{1b}[2J\u{7}\r.txt");
    let (code, _, err) =
        lowbit(&["quantize", "--model", s(&stories()), "--out", s(&tmp.path().join("q")), "--method", "awq", "--calib", s(&bad)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("evil\\u{1b}[2J\\u{7}\\r.txt"), "{err:?}");
    assert!(!err.trim_end_matches('\n').chars().any(|c| c.is_control()), "raw control character in {err:?}");
    // A model directory so named.
    let m = tmp.path().join("m\u{1b}]0;owned\u{7}");
    copy_dir(&stories(), &m);
    poke_f32(&m.join("model.safetensors"), "model.norm.weight", 0, f32::NAN);
    let (code, _, err) = lowbit(&["quantize", "--model", s(&m), "--out", s(&tmp.path().join("q")), "--method", "rtn"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("m\\u{1b}]0;owned\\u{7}"), "{err:?}");
    assert!(!err.trim_end_matches('\n').chars().any(|c| c.is_control()), "raw control character in {err:?}");
}
