//! The GPU runner's view of every packed layout (src/cuda/reference.rs decodes the same bytes on
//! the host for its reference) agrees with the packers of src/pack/: two decoders written separately from
//! the docs must give the same weights. No GPU needed.
mod common;
use common::*;
use lowbit::cuda::PackedOnGpu;
use lowbit::qmodel::QuantScheme;
use lowbit::weights::Checkpoint;
use std::process::Command;

fn quantize(out: &std::path::Path, extra: &[&str]) {
    let m = stories();
    let c = shared("data/tinyshakespeare/input.txt");
    let o = Command::new(lowbit_bin())
        .args(["quantize", "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--calib", c.to_str().unwrap(), "--calib-samples", "8", "--calib-seqlen", "128"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn gpu_layout_decoders_agree_with_packers() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("lowbit3", vec!["--method", "rtn", "--bits", "3", "--group-size", "32"]),
        ("statsq2", vec!["--method", "statsq", "--bits", "2", "--group-size", "32"]),
        ("shift3", vec!["--method", "shift", "--bits", "3", "--group-size", "32"]),
        ("awq4", vec!["--method", "rtn", "--bits", "4", "--format", "awq", "--group-size", "32"]),
        ("gptq-act", vec!["--method", "gptq", "--bits", "4", "--act-order", "--group-size", "16"]),
        ("vq", vec!["--method", "vptq", "--vector-len", "2", "--centroids", "16", "--res-centroids", "4", "--vq-normalize"]),
    ];
    for (name, args) in cases {
        let d = tmp.path().join(name);
        quantize(&d, &args);
        let cfg = lowbit::config::ModelConfig::load(&d.join("config.json")).unwrap();
        let scheme = QuantScheme::from_config(&d, &cfg.raw).unwrap().unwrap();
        let ck = Checkpoint::open(&d).unwrap();
        let prefixes: Vec<String> =
            ck.names().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".vq_indices"))).map(str::to_owned).collect();
        assert!(!prefixes.is_empty(), "{name}: nothing packed");
        for p in prefixes {
            let stored = scheme.read_any(&ck, &p).unwrap().unwrap();
            let gpu = PackedOnGpu::from(&stored);
            gpu.validate().unwrap();
            let (a, b) = (stored.dequantize().unwrap(), gpu.dequantize());
            assert_eq!(a.len(), b.len(), "{name} {p}");
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(err <= 1e-3 * scale.max(1e-6), "{name} {p}: GPU-side decode differs by {err} (max |w| {scale})");
        }
    }
}
