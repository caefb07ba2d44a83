//! `lowbit verify` without a GPU: which layers it selects (every packed layer of every layout,
//! VQ included), what it refuses before looking for a GPU (no layer selected, bad batch sizes,
//! layers the kernels cannot run), and how it judges results (non-finite errors fail).
mod common;
use common::*;
use lowbit::pack::{AwqPacked, PackedLayout};
use lowbit::quant::{Grid, GroupQ};
use lowbit::verify::{self, VerifyRow};
use std::collections::BTreeSet;
use std::path::Path;

fn quantize(out: &Path, extra: &[&str]) {
    let m = stories();
    let c = shared("data/tinyshakespeare/input.txt");
    let (code, _, err) = lowbit(
        &[
            &["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()][..],
            &["--calib", c.to_str().unwrap()],
            &["--calib-samples", "8", "--calib-seqlen", "64"],
            extra,
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
}

/// Module names listed in config.json's quantization_config (read here with serde_json only).
fn listed_modules(dir: &Path) -> BTreeSet<String> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    ["modules", "vq_modules"].iter().filter_map(|k| q[k].as_object()).flat_map(|m| m.keys().cloned()).collect()
}

#[test]
fn verify_selects_every_packed_layer_including_vq() {
    let tmp = tempfile::tempdir().unwrap();
    let vq = tmp.path().join("vq");
    quantize(
        &vq,
        &["--method", "vptq", "--vector-len", "4", "--centroids", "16", "--res-centroids", "4", "--vq-normalize", "--outlier-pct", "5"],
    );
    let listed = listed_modules(&vq);
    assert!(listed.len() >= 10, "{listed:?}");
    let sel = verify::select(&vq, None).unwrap();
    let got: BTreeSet<String> = sel.iter().map(|s| s.prefix.clone()).collect();
    assert_eq!(got, listed, "verify must select exactly the packed layers config.json lists");
    assert!(sel.iter().all(|s| s.kind.starts_with("vq-v4-")), "{sel:?}");
    assert!(sel.iter().any(|s| s.kind.contains("-outl")), "outlier columns expected with --outlier-pct 5: {sel:?}");
    // A regex narrows the selection; one matching nothing is refused before any GPU question,
    // with exit code 2 (also on a machine with a GPU).
    let re = regex::Regex::new(r"layers\.1\.mlp").unwrap();
    let sub = verify::select(&vq, Some(&re)).unwrap();
    assert_eq!(sub.len(), 3, "{sub:?}");
    let (code, out, err) = lowbit(&["verify", "--model", vq.to_str().unwrap(), "--layers", "no_such_layer"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("matches none of the") && err.contains("packed layers"), "{err}");
    assert!(out.is_empty(), "{out}");

    // Group layouts are selected the same way.
    let lb = tmp.path().join("lb");
    quantize(&lb, &["--method", "rtn", "--bits", "3", "--group-size", "32"]);
    let sel = verify::select(&lb, None).unwrap();
    assert_eq!(sel.iter().map(|s| s.prefix.clone()).collect::<BTreeSet<_>>(), listed_modules(&lb));
    assert!(sel.iter().all(|s| s.kind == "lowbit-affine-b3"), "{sel:?}");

    // Batch sizes are checked first: 0 is refused with exit 2 (not 3, the no-GPU code).
    for bad in ["0", "1,0,8", "5000"] {
        let (code, _, err) = lowbit(&["verify", "--model", lb.to_str().unwrap(), "--batch", bad]);
        assert_eq!(code, 2, "--batch {bad}: {err}");
        assert!(err.contains("--batch"), "{err}");
    }
}

/// A quantized-looking checkpoint with the given quantization_config and tensors.
fn write_checkpoint(dir: &Path, qc: serde_json::Value, tensors: &[lowbit::st_write::OutTensor]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stories().join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"] = qc;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    lowbit::st_write::write_safetensors(&dir.join("model.safetensors"), tensors, None).unwrap();
}

#[test]
fn verify_refuses_checkpoints_it_cannot_check_before_the_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    // No packed layer at all: the float tensors of stories260K under an empty lowbit config.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(stories().join("model.safetensors"), empty.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stories().join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"] = serde_json::json!({"quant_method": "lowbit", "format_version": 1, "modules": {}});
    std::fs::write(empty.join("config.json"), cfg.to_string()).unwrap();
    let (code, out, err) = lowbit(&["verify", "--model", empty.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no packed layers"), "{err}");

    // An AutoAWQ checkpoint with group size 16 (valid for the format, not for the AWQ kernel,
    // whose k-blocks are 32 columns): refused naming the layer, before any GPU work.
    let (o, i, g) = (64usize, 64usize, 16usize);
    let q = GroupQ {
        out_features: o,
        in_features: i,
        bits: 4,
        group_size: g,
        grid: Grid::Affine,
        codes: (0..o * i).map(|k| (k % 16) as u8).collect(),
        scales: vec![0.01; o * i / g],
        zeros: vec![8; o * i / g],
        g_idx: None,
    };
    let awq = tmp.path().join("awq16");
    let prefix = "model.layers.0.self_attn.q_proj";
    write_checkpoint(&awq, AwqPacked::quantization_config(g), &AwqPacked::pack(&q).unwrap().to_tensors(prefix));
    let e = format!("{:#}", verify::select(&awq, None).unwrap_err());
    assert!(e.contains(prefix) && e.contains("multiple of 32") && e.contains("(got 16)"), "{e}");
    let (code, _, err) = lowbit(&["verify", "--model", awq.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(prefix), "{err}");
}

#[test]
fn awq_format_refuses_group_sizes_the_kernel_cannot_run_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let m = stories();
    for (extra, what) in
        [(vec!["--group-size", "16"], "got 16"), (vec!["--group-size", "32", "--override", "mlp=rtn:4:48"], "modules matching 'mlp'")]
    {
        let (code, _, err) = lowbit(
            &[
                &[
                    "quantize",
                    "--model",
                    m.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--method",
                    "rtn",
                    "--bits",
                    "4",
                    "--format",
                    "awq",
                ][..],
                &extra,
            ]
            .concat(),
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--format awq needs a group size that is a multiple of 32") && err.contains(what), "{err}");
        assert!(!out.exists(), "nothing may be written");
    }
}

fn row(err: f64, after: f64) -> VerifyRow {
    VerifyRow {
        layer: "l".into(),
        kind: "k".into(),
        batch: 1,
        max_rel_err: err,
        max_rel_err_after_timing: after,
        kernel_us: 1.0,
        cublas_us: None,
        speedup: None,
        gbps: 1.0,
        pct_of_peak: 1.0,
        ok: lowbit::cuda::err_ok(err, verify::TOLERANCE) && lowbit::cuda::err_ok(after, verify::TOLERANCE),
    }
}

#[test]
fn verify_judges_non_finite_errors_as_failures() {
    assert!(verify::judge(&[row(1e-4, 2e-4)]).is_ok());
    assert!(verify::judge(&[]).is_err(), "no rows is a failure, not a pass");
    for (e, a) in [(f64::NAN, 0.0), (0.0, f64::NAN), (f64::INFINITY, 0.0), (0.5, 0.0), (0.0, 0.02)] {
        let err = verify::judge(&[row(1e-4, 1e-4), row(e, a)]).unwrap_err().to_string();
        assert!(err.contains("1 of 2 results"), "{err}");
    }
    // The metric behind it: an all-NaN kernel output is infinitely wrong.
    let want = vec![1.0f32; 8];
    assert!(!row(lowbit::cuda::max_rel_err(&[f32::NAN; 8], &want), 0.0).ok);
    verify::check_batches(&[1, 8, 64]).unwrap();
    assert!(verify::check_batches(&[]).is_err());
}
