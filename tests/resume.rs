//! A quantize run killed with SIGKILL resumes from its last finished layer and produces the same
//! bytes as an uninterrupted run; a resume with other inputs is refused.
mod common;
use common::*;
use std::path::Path;
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

/// Start a run and SIGKILL it once at least one layer is committed.
fn kill_after_first_layer(out: &Path) {
    let partial = out.with_file_name(format!(".{}.lowbit-partial", out.file_name().unwrap().to_str().unwrap()));
    let mut child = Command::new(lowbit_bin()).args(args(out, "0")).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while !partial.join("state.json").exists() {
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
    // Other inputs are refused.
    let o = Command::new(lowbit_bin()).args(args(&out, "1")).arg("--resume").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("other inputs"), "{}", String::from_utf8_lossy(&o.stderr));
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
    assert!(!tmp.path().join(".resumed.lowbit-partial").exists(), "partial directory left behind");
}
