//! A quantize run killed with SIGKILL resumes from its last committed layer and produces the same
//! bytes as an uninterrupted run, wherever the kill lands; a resume with other inputs (any byte of
//! the model) or from a checkpoint that changed is refused, never a wrong model.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn args(out: &Path, seed: &str) -> Vec<String> {
    let m = stories();
    let c = shared("data/tinyshakespeare/input.txt");
    ["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "awq", "--bits", "3", "--group-size", "32"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            ["--calib", c.to_str().unwrap(), "--calib-samples", "400", "--calib-seqlen", "256", "--seed", seed]
                .iter()
                .map(|s| s.to_string()),
        )
        .collect()
}

/// The temporary directories beside `out`.
fn temps(out: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.lowbit-tmp-", out.file_name().unwrap().to_str().unwrap());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
        .collect()
}

/// Start a run and SIGKILL it once at least one layer is committed.
fn kill_after_first_layer(out: &Path) {
    let mut child = Command::new(lowbit_bin()).args(args(out, "0")).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while !temps(out).iter().any(|t| t.join("state.json").exists()) {
        assert!(child.try_wait().unwrap().is_none(), "run ended before its first checkpoint");
        assert!(t.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists());
}

#[test]
fn killed_run_resumes_to_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("resumed");
    kill_after_first_layer(&out);
    // Other inputs are refused, and the checkpoint is kept.
    let o = Command::new(lowbit_bin()).args(args(&out, "1")).arg("--resume").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("other inputs"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(temps(&out).len(), 1);
    let o = Command::new(lowbit_bin()).args(args(&out, "0")).arg("--resume").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming after layer"), "{err}");
    let full = tmp.path().join("full");
    let o = Command::new(lowbit_bin()).args(args(&full, "0")).output().unwrap();
    assert!(o.status.success());
    for f in ["model.safetensors", "config.json"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(full.join(f)).unwrap(), "{f} differs after resume");
    }
    assert!(lowbit_litter(tmp.path()).is_empty(), "left behind: {:?}", lowbit_litter(tmp.path()));
}

/// GPTQ (each layer calibrated on the previous quantized layer's outputs, so the hidden states
/// matter), small enough to run many times.
fn gptq_args(model: &Path, out: &Path) -> Vec<String> {
    let c = shared("data/tinyshakespeare/input.txt");
    let v = ["quantize", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "gptq", "--bits", "3"];
    let w = ["--group-size", "32", "--calib", c.to_str().unwrap(), "--calib-samples", "8", "--calib-seqlen", "64"];
    v.iter().chain(w.iter()).map(|s| s.to_string()).collect()
}

fn run(args: &[String], env: &[(&str, &str)]) -> (i32, String) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = lowbit_env(Path::new("."), env, &a);
    (code, err)
}

/// Kill the run with SIGKILL at `point` (the test hook `LOWBIT_TEST_CRASH`), as `kill -9` landing
/// exactly there would.
fn crash_at(args: &[String], point: &str) {
    let (code, err) = run(args, &[("LOWBIT_TEST_CRASH", point)]);
    assert_eq!(code, -1, "expected SIGKILL at {point}: {err}");
}

/// Every commit boundary of the checkpoint protocol: after a layer's tensors are written, after
/// its hidden states are written but before the state commits (the point where the old code
/// resumed from the wrong hidden states), and after the commit. The first layer, a middle one
/// and the last one; each resume is byte-identical to an uninterrupted run.
#[test]
fn kill_at_every_commit_boundary_resumes_to_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let (code, err) = run(&gptq_args(&stories(), &full), &[]);
    assert_eq!(code, 0, "{err}");
    let want = std::fs::read(full.join("model.safetensors")).unwrap();
    let want_cfg = std::fs::read(full.join("config.json")).unwrap();
    for layer in [0, 2, 4] {
        for point in ["after-layer-file", "before-commit", "after-commit"] {
            let out = tmp.path().join(format!("o-{point}-{layer}"));
            let a = gptq_args(&stories(), &out);
            crash_at(&a, &format!("{point}:{layer}"));
            assert!(!out.exists());
            assert_eq!(temps(&out).len(), 1);
            let mut r = a.clone();
            r.push("--resume".into());
            let (code, err) = run(&r, &[]);
            assert_eq!(code, 0, "{point}:{layer}: {err}");
            let committed = if point == "after-commit" { layer + 1 } else { layer };
            if committed == 0 {
                assert!(err.contains("no finished layer to resume from; starting over"), "{err}");
            } else {
                assert!(err.contains(&format!("resuming after layer {committed} of 5")), "{point}:{layer}: {err}");
            }
            assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want, "{point}:{layer}: model differs after resume");
            assert!(std::fs::read(out.join("config.json")).unwrap() == want_cfg, "{point}:{layer}: config differs after resume");
            assert!(temps(&out).is_empty());
        }
    }
    assert!(lowbit_litter(tmp.path()).is_empty(), "left behind: {:?}", lowbit_litter(tmp.path()));
}

/// A checkpoint that changed after it was written (a layer file, the hidden states, the state
/// file) is refused with a one-line error, never resumed into a different model or a panic; a
/// run without --resume then starts over and succeeds.
#[test]
fn changed_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    assert_eq!(run(&gptq_args(&stories(), &full), &[]).0, 0);
    let want = std::fs::read(full.join("model.safetensors")).unwrap();
    type Tamper = fn(&Path);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "layer file byte",
            |d| {
                let p = d.join("layer-0001.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len();
                b[n - 3] ^= 0x40;
                std::fs::write(&p, b).unwrap();
            },
            "layer-0001.safetensors: does not match the checkpoint's record",
        ),
        (
            "hidden states truncated",
            |d| {
                let p = d.join("hidden-0002.f32");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 4]).unwrap();
            },
            "hidden-0002.f32: does not match the checkpoint's record",
        ),
        ("layer file missing", |d| std::fs::remove_file(d.join("layer-0000.safetensors")).unwrap(), "layer-0000.safetensors: cannot read"),
        (
            "state edited",
            |d| {
                let p = d.join("state.json");
                let s = std::fs::read_to_string(&p).unwrap().replace("\"layers_done\":3", "\"layers_done\":4");
                std::fs::write(&p, s).unwrap();
            },
            "corrupt checkpoint state",
        ),
        ("state torn", |d| std::fs::write(d.join("state.json"), "{\"format\":2,\"finger").unwrap(), "corrupt checkpoint state"),
        // Edits with the check line recomputed (an xxh3-128 of the JSON line, as docs/formats.md
        // describes): refused by the state's own consistency checks.
        ("state claims 99 layers", |d| edit_state(d, "\"layers_done\":99"), "records 99 finished layers of a 5-layer model"),
        ("state claims 4 layers", |d| edit_state(d, "\"layers_done\":4"), "does not list the files of 4 finished layers"),
    ];
    for (what, tamper, msg) in cases {
        let out = tmp.path().join(format!("t-{}", what.replace(' ', "-")));
        let a = gptq_args(&stories(), &out);
        crash_at(&a, "after-commit:2");
        let t = temps(&out);
        assert_eq!(t.len(), 1);
        tamper(&t[0]);
        let mut r = a.clone();
        r.push("--resume".into());
        let (code, err) = run(&r, &[]);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains(msg) && err.contains("rerun without --resume"), "{what}: {err}");
        assert!(!err.contains("panicked") && err.lines().count() == 1, "{what}: {err}");
        assert!(!out.exists());
        // Starting over works and gives the uninterrupted bytes.
        let (code, err) = run(&a, &[]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want, "{what}");
        assert!(temps(&out).is_empty());
    }
}

/// Replace `"layers_done":3` in a checkpoint's state.json and write a matching check line.
fn edit_state(dir: &Path, with: &str) {
    let p = dir.join("state.json");
    let s = std::fs::read_to_string(&p).unwrap();
    let json = s.lines().next().unwrap().replace("\"layers_done\":3", with);
    let check = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(json.as_bytes()));
    std::fs::write(&p, format!("{json}\n{check}\n")).unwrap();
}

/// The fingerprint covers every byte of the model: one weight changed deep inside the file (past
/// the first 4 KiB of its tensor, in a tensor the old sampled fingerprint skipped) makes a resume
/// refuse.
#[test]
fn resume_notices_an_edited_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&stories(), &model);
    let out = tmp.path().join("q");
    let a = gptq_args(&model, &out);
    crash_at(&a, "after-commit:1");
    poke_f32(&model.join("model.safetensors"), "model.layers.4.mlp.down_proj.weight", 64 * 172 - 1, 0.125);
    let mut r = a.clone();
    r.push("--resume".into());
    let (code, err) = run(&r, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("other inputs"), "{err}");
    assert!(!out.exists());
}
