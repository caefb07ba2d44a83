//! The GPU bundle guard, without a GPU: scripts/gpu-check.sh must refuse a bundle built from other
//! sources (stale) or missing pieces, and accept one whose SOURCE_HASH matches the tree. Runs on a
//! copy of the hashed part of the checkout, so the real tree is never touched.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn run(script: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new("bash").arg(script).args(args).env_remove("LOWBIT_BUNDLE").output().unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn hash(tree: &Path) -> String {
    let (code, out) = run(&tree.join("scripts/source-hash.sh"), &[tree.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let h = out.trim().to_string();
    assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()), "{h}");
    h
}

#[test]
fn gpu_check_refuses_stale_or_incomplete_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    for d in ["src", "kernels", "benches", "scripts"] {
        copy_dir(&root().join(d), &t.join(d));
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root().join(f), t.join(f)).unwrap();
    }
    // The copy hashes like the checkout (the hash covers contents and names, not locations).
    let h = hash(&t);
    assert_eq!(h, hash(&root()));

    // A minimal bundle that claims to be built from this tree.
    let b = t.join("target/gpu-bundle");
    for d in ["bin", "kernels", "checkpoints/x"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    for f in ["bin/lowbit", "bin/kernels"] {
        std::fs::write(b.join(f), "#!/bin/sh\nexit 0\n").unwrap();
        Command::new("chmod").arg("+x").arg(b.join(f)).status().unwrap();
    }
    std::fs::write(b.join("kernels/MANIFEST"), "kernel-sources-sha256 0\n").unwrap();
    std::fs::write(b.join("kernels/gq.sm_90.cubin"), "x").unwrap();
    std::fs::write(b.join("checkpoints/x/config.json"), "{}").unwrap();
    std::fs::write(b.join("SOURCE_HASH"), format!("{h}\n")).unwrap();
    let check = t.join("scripts/gpu-check.sh");
    let (code, out) = run(&check, &["--check-bundle"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bundle ok"), "{out}");

    // One changed byte in a kernel source makes the bundle stale.
    let k = t.join("kernels/common.cuh");
    let orig = std::fs::read(&k).unwrap();
    let mut changed = orig.clone();
    changed.extend_from_slice(b"\n// edited after the bundle was built\n");
    std::fs::write(&k, &changed).unwrap();
    assert_ne!(hash(&t), h);
    let (code, out) = run(&check, &["--check-bundle"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("stale bundle"), "{out}");
    // ... and so does a new file under src/ (a module the bundle's binaries do not have).
    std::fs::write(&k, &orig).unwrap();
    std::fs::write(t.join("src/new_module.rs"), "// new\n").unwrap();
    let (code, out) = run(&check, &["--check-bundle"]);
    assert!(code != 0 && out.contains("stale bundle"), "{out}");
    std::fs::remove_file(t.join("src/new_module.rs")).unwrap();
    assert_eq!(run(&check, &["--check-bundle"]).0, 0);

    // A missing piece is named.
    std::fs::remove_file(b.join("bin/kernels")).unwrap();
    let (code, out) = run(&check, &["--check-bundle"]);
    assert!(code != 0 && out.contains("incomplete") && out.contains("bin/kernels"), "{out}");
    // No bundle at all.
    std::fs::remove_dir_all(&b).unwrap();
    let (code, out) = run(&check, &["--check-bundle"]);
    assert!(code != 0 && out.contains("no bundle"), "{out}");
}

/// The control flow of gpu-check.sh with stand-in binaries (no GPU): all steps run and a summary
/// with the verdicts comes out; a verifier that cannot start stops the script at once (non-zero,
/// no benchmark); a mismatch is reported and makes the exit status non-zero.
#[test]
fn gpu_check_runs_every_step_and_fails_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    for d in ["src", "kernels", "benches", "scripts"] {
        copy_dir(&root().join(d), &t.join(d));
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root().join(f), t.join(f)).unwrap();
    }
    let b = t.join("target/gpu-bundle");
    for d in ["bin", "kernels", "checkpoints/tiny-a", "checkpoints/tiny-b"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    let lowbit = r#"#!/bin/sh
[ "$1" = verify ] || exit 2
echo "layer kernel batch err"
echo "model.layers.0.self_attn.q_proj lowbit-affine-b4 1 1.0e-4 ok"
echo "model.layers.0.self_attn.k_proj lowbit-affine-b4 1 1.0e-4 ok"
exit ${FAKE_VERIFY_RC:-0}
"#;
    let kernels = r#"#!/bin/sh
case "$1" in
  --versions) echo "libcuda: driver API 12.8"; echo "device: fake"; exit 0 ;;
  --check) echo "ok   fake"; echo "correctness: 85 of 85 cases within 5e-3 of the CPU reference"; exit 0 ;;
esac
echo "device: fake GPU"
echo "device-to-device copy of 1 GiB: 4000 GB/s"
echo "layout out x in batch"
echo "lowbit-affine-b4 4096x4096 1 ..."
echo "== goals (bandwidth as a fraction of the measured device-to-device copy, 4000 GB/s)"
echo "int4 GEMV >= 85% of DRAM bandwidth (batch 1): NOT MET: lowbit-affine-b4 50.0% at 4096x4096"
echo "0 results outside 5e-3 of the CPU reference (NaN/inf included) or failed to run"
exit 0
"#;
    for (f, body) in [("bin/lowbit", lowbit), ("bin/kernels", kernels)] {
        std::fs::write(b.join(f), body).unwrap();
        Command::new("chmod").arg("+x").arg(b.join(f)).status().unwrap();
    }
    std::fs::write(b.join("kernels/MANIFEST"), "kernel-sources-sha256 0\n").unwrap();
    std::fs::write(b.join("kernels/gq.sm_90.cubin"), "x").unwrap();
    std::fs::write(b.join("SOURCE_HASH"), hash(&t)).unwrap();
    let check = t.join("scripts/gpu-check.sh");
    let out = tmp.path().join("out");
    let go = |rc: &str| {
        let o = Command::new("bash").arg(&check).env("OUT", &out).env("FAKE_VERIFY_RC", rc).env_remove("LOWBIT_BUNDLE").output().unwrap();
        (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (code, text) = go("0");
    assert_eq!(code, 0, "{text}");
    for want in [
        "== driver and libraries",
        "bundle ok",
        "tiny-a",
        "ok (2 results)",
        "kernels --check",
        "== kernels (benchmark)",
        "== summary",
        "NOT MET: lowbit-affine-b4 50.0%",
        "status 0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("SKIP"), "{text}");
    // Library versions come before everything else the script runs.
    assert!(text.find("== driver and libraries").unwrap() < text.find("== bundle").unwrap());

    // The verifier cannot start (exit 3: no GPU): stop at once, non-zero, no benchmark.
    let (code, text) = go("3");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("could not run") && !text.contains("== kernels (benchmark)"), "{text}");

    // A mismatch: every step still runs, the status is non-zero and the summary says so.
    let (code, text) = go("1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("MISMATCH") && text.contains("== summary") && text.contains("status 1"), "{text}");
}
