//! GPTQ v1 export (`--format gptq`), asymmetric and with act-order, read back by an unpacker
//! written here from the GPTQ loaders' own rules (GPTQModel's `model_dequant.py`: `unpack_rows`
//! of qweight, `unpack_cols` of qzeros after `_correct_gptq_v1_qzeros`, i.e. every zero field
//! plus one modulo 2^bits, then `(q - zeros[g_idx]) * scales[g_idx]`), not with lowbit's own
//! unpack; and per-module bits / group size through GPTQModel's `dynamic` map.
mod common;
use common::*;
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

fn i32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<u32>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
    assert_eq!(t.dtype(), safetensors::Dtype::I32, "{name}");
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
}

fn f16s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F16, "{name}");
    t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

/// Bits and group size of module `prefix` by the GPTQModel rules: the first `dynamic` entry
/// whose regex matches from the start of the name overrides the base values.
fn module_bits(qc: &serde_json::Value, prefix: &str) -> (usize, usize) {
    let (mut b, mut g) = (qc["bits"].as_u64().unwrap() as usize, qc["group_size"].as_i64().unwrap());
    if let Some(d) = qc.get("dynamic").and_then(|d| d.as_object()) {
        for (k, v) in d {
            let re = k.strip_prefix("+:").or(k.strip_prefix("-:")).unwrap_or(k);
            if regex::Regex::new(&format!("^(?:{re})")).unwrap().is_match(prefix) {
                assert!(!k.starts_with("-:"), "{prefix} is packed but dynamic says {k}");
                b = v.get("bits").and_then(|x| x.as_u64()).map_or(b, |x| x as usize);
                g = v.get("group_size").and_then(|x| x.as_i64()).unwrap_or(g);
                break;
            }
        }
    }
    (b, g as usize)
}

/// Field `k` (`bits` wide) of a run of 32-bit words. 2/4/8 bits: word `k / (32/bits)`, shifted
/// by `bits * (k % (32/bits))`, as GPTQ's `unpack_rows` / `unpack_cols` do. 3 bits: GPTQModel's
/// `_unpack_cols_3bit` scheme, 32 fields per 3 words: fields 0..10 at `3j` of word 0, field 10
/// = word 0 bits 30..31 + word 1 bit 0, fields 11..21 at `3(j-11)+1` of word 1, field 21 = word 1
/// bit 31 + word 2 bits 0..1, fields 22..32 at `3(j-22)+2` of word 2.
fn field(words: impl Fn(usize) -> u32, bits: usize, k: usize) -> u32 {
    if bits == 3 {
        let (w, j) = (3 * (k / 32), k % 32);
        return match j {
            0..=9 => (words(w) >> (3 * j)) & 7,
            10 => (words(w) >> 30) & 3 | (words(w + 1) & 1) << 2,
            11..=20 => (words(w + 1) >> (3 * (j - 11) + 1)) & 7,
            21 => (words(w + 1) >> 31) & 1 | (words(w + 2) & 3) << 1,
            _ => (words(w + 2) >> (3 * (j - 22) + 2)) & 7,
        };
    }
    let per = 32 / bits;
    (words(k / per) >> (bits * (k % per))) & ((1 << bits) - 1)
}

/// Rebuilds a float checkpoint from a GPTQ v1 directory: every packed module becomes
/// `W[o][i] = (q[i][o] - zero[g_idx[i]][o]) * scale[g_idx[i]][o]`. Returns the rebuilt
/// directory and the number of packed modules.
fn rebuild(q: &Path, out: &Path) -> usize {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    assert_eq!(qc["quant_method"], "gptq");
    assert_eq!(qc["checkpoint_format"], "gptq");
    let bytes = std::fs::read(q.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut rebuilt = Vec::new();
    let mut n = 0;
    for name in st.names() {
        if let Some(prefix) = name.strip_suffix(".qweight") {
            n += 1;
            let (b, g) = module_bits(qc, prefix);
            let (qs, qw) = i32s(&st, name);
            let (zs, qz) = i32s(&st, &format!("{prefix}.qzeros"));
            let (_, gi) = i32s(&st, &format!("{prefix}.g_idx"));
            let scales = f16s(&st, &format!("{prefix}.scales"));
            let (inn, out) = (qs[0] * 32 / b, qs[1]);
            let ng = inn.div_ceil(g);
            assert_eq!(zs, vec![ng, out * b / 32], "{prefix}: qzeros shape for {b}-bit g{g}");
            assert_eq!(scales.len(), ng * out);
            let mut w = vec![0f32; out * inn];
            for i in 0..inn {
                let gr = gi[i] as usize;
                for o in 0..out {
                    let code = field(|k| qw[k * out + o], b, i);
                    let zero = (field(|k| qz[gr * zs[1] + k], b, o) + 1) & ((1 << b) - 1);
                    w[o * inn + i] = (code as f32 - zero as f32) * scales[gr * out + o];
                }
            }
            rebuilt.push(lowbit::st_write::OutTensor::f32(format!("{prefix}.weight"), vec![out, inn], &w));
        } else if ![".qzeros", ".scales", ".g_idx"].iter().any(|s| name.ends_with(s)) {
            let t = st.tensor(name).unwrap();
            rebuilt.push(lowbit::st_write::OutTensor::copy_of(name, &t));
        }
    }
    std::fs::create_dir_all(out).unwrap();
    lowbit::st_write::write_safetensors(&out.join("model.safetensors"), &rebuilt, None).unwrap();
    let mut plain = cfg.clone();
    plain.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(out.join("config.json"), plain.to_string()).unwrap();
    std::fs::copy(q.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    n
}

fn quantize(model: &Path, out: &Path, format: &str, extra: &[&str]) -> String {
    let c = shared("data/tinyshakespeare/input.txt");
    let o = Command::new(lowbit_bin())
        .args(["quantize", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--method", "gptq", "--format", format])
        .args(["--calib", c.to_str().unwrap(), "--calib-samples", "8", "--calib-seqlen", "128"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "quantize {format} {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ppl(d: &Path, ctx: &str) -> f64 {
    let t = tinystories_text();
    let (code, out, err) = lowbit(&["eval", "--model", d.to_str().unwrap(), "--text", t.to_str().unwrap(), "--ctx", ctx, "--json"]);
    assert_eq!(code, 0, "eval {}: {err}", d.display());
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["ppl"].as_f64().unwrap()
}

/// Asymmetric GPTQ, with and without act-order, on stories260K (MLP 172 wide: skipped in both
/// outputs) and on the qwen2 fixture with q/k/v biases: the GPTQ directory, the same codes in
/// lowbit's layout, and the float model rebuilt by the loader-rule unpacker all evaluate alike.
#[test]
fn asymmetric_gptq_export_reads_back_by_the_loader_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let models = [
        (stories(), "256", vec!["--group-size", "32", "--skip", r"mlp\."]),
        (shared("testdata/arch/qwen2-bias"), "96", vec!["--group-size", "32"]),
        // 3-bit: AutoGPTQ's cross-word packing (codes 10 and 21 of every 32 straddle two words).
        (shared("testdata/arch/qwen2-bias"), "96", vec!["--bits", "3", "--group-size", "32"]),
    ];
    for (m, ctx, base) in &models {
        let tag = format!("{}{}", m.file_name().unwrap().to_string_lossy(), if base.contains(&"3") { "-3bit" } else { "" });
        for act in [false, true] {
            let mut extra: Vec<&str> = base.clone();
            if act {
                extra.push("--act-order");
            }
            let name = format!("{tag}-{}", if act { "act" } else { "plain" });
            let (g, l, f) = (
                tmp.path().join(format!("{name}-gptq")),
                tmp.path().join(format!("{name}-lowbit")),
                tmp.path().join(format!("{name}-rebuilt")),
            );
            quantize(m, &g, "gptq", &extra);
            quantize(m, &l, "lowbit", &extra);
            let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(g.join("config.json")).unwrap()).unwrap();
            assert_eq!(cfg["quantization_config"]["sym"], false);
            assert_eq!(cfg["quantization_config"]["desc_act"], act);
            let n = rebuild(&g, &f);
            assert_eq!(n, if tag == "stories260K" { 20 } else { 14 }, "{name}: packed modules");
            assert_eq!(cfg["quantization_config"]["bits"], if tag.ends_with("3bit") { 3 } else { 4 });
            let (pg, pl, pf) = (ppl(&g, ctx), ppl(&l, ctx), ppl(&f, ctx));
            eprintln!("{name}: gptq dir {pg}, lowbit dir {pl}, loader-rule rebuild {pf}");
            assert!(pg.is_finite() && pg > 1.0, "{name}: ppl {pg}");
            assert_eq!(pg, pl, "{name}: GPTQ export vs lowbit layout of the same codes");
            assert!((pg - pf).abs() <= 1e-9 * pg, "{name}: {pg} vs rebuilt {pf}");
        }
    }
}

/// `--override` that changes bits and group size: GPTQ writes GPTQModel's `dynamic` entries, and
/// the loader-rule unpacker reading each module with its own bits / group size reproduces the
/// model lowbit evaluates; AutoAWQ (one bits / group size per file) refuses before any work,
/// naming the module.
#[test]
fn per_module_overrides_in_hf_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let m = shared("testdata/arch/qwen2-bias");
    let (g, f) = (tmp.path().join("gptq-mixed"), tmp.path().join("rebuilt"));
    quantize(
        &m,
        &g,
        "gptq",
        &[
            "--group-size",
            "32",
            "--override",
            r"mlp\.down_proj=gptq:8:64",
            "--override",
            r"layers\.1\.self_attn\.q_proj=rtn:2",
            "--skip",
            r"layers\.0\.mlp\.up_proj",
        ],
    );
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(g.join("config.json")).unwrap()).unwrap();
    let d = cfg["quantization_config"]["dynamic"].as_object().unwrap();
    assert_eq!(d[r"+:^model\.layers\.0\.mlp\.down_proj$"], serde_json::json!({"bits": 8, "group_size": 64}));
    assert_eq!(d[r"+:^model\.layers\.1\.self_attn\.q_proj$"], serde_json::json!({"bits": 2, "group_size": 32}));
    assert!(d.contains_key(r"-:^model\.layers\.0\.mlp\.up_proj$"));
    assert_eq!(d.len(), 4, "{d:?}");
    assert_eq!(rebuild(&g, &f), 13);
    let (pg, pf) = (ppl(&g, "96"), ppl(&f, "96"));
    assert!((pg - pf).abs() <= 1e-9 * pg, "{pg} vs rebuilt {pf}");

    let c = shared("data/tinyshakespeare/input.txt");
    for (ov, what) in [(r"self_attn\.o_proj=awq:4:64", "4-bit g64"), (r"down_proj=rtn:8", "down_proj")] {
        let out = tmp.path().join("awq-mixed");
        let (code, _, err) = lowbit(&[
            "quantize",
            "--model",
            m.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            "awq",
            "--group-size",
            "32",
            "--calib",
            c.to_str().unwrap(),
            "--override",
            ov,
        ]);
        assert_ne!(code, 0, "{ov}");
        assert!(err.contains(what), "{ov}: {err}");
        assert!(!out.exists() && !err.contains("quantizing"), "{ov}: refused before any work: {err}");
    }
}
