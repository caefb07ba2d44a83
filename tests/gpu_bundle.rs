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
