//! The fuzz harnesses of `lowbit::fuzz` on the committed seed corpora (`fuzz/corpus/<target>/`)
//! and crash reproducers (`fuzz/regressions/<target>/`), on stable Rust without libFuzzer.
//! Seeds (`seed-*`) must also still parse, so a format change cannot silently turn the corpus
//! into noise.
//!
//! `cargo test --release --test fuzz_corpus -- --ignored regenerate_seed_corpus` rewrites the
//! seeds from the generators below.

mod common;
use common::Rng;
use lowbit::fuzz::SPLIT;
use lowbit::gguf::Gguf;
use lowbit::pack::vq::VqPacked;
use lowbit::pack::{AwqPacked, GptqPacked, LowbitPacked, LowbitQuantConfig, PackedLayout};
use lowbit::qmodel::QuantScheme;
use lowbit::quant::{rtn, Grid, GroupQ, VqQ};
use lowbit::st_write::OutTensor;
use lowbit::weights::Checkpoint;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const TARGETS: [&str; 4] = ["safetensors_dir", "gguf", "config", "packed"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn harness(target: &str) -> fn(&[u8]) {
    match target {
        "safetensors_dir" => lowbit::fuzz::safetensors_dir,
        "gguf" => lowbit::fuzz::gguf,
        "config" => lowbit::fuzz::config,
        "packed" => lowbit::fuzz::packed,
        t => panic!("unknown target {t}"),
    }
}

/// Runs every corpus and regression file of `target` through its harness.
fn run_target(target: &str) {
    let seeds = files(&fuzz_dir().join("corpus").join(target));
    assert!(!seeds.is_empty(), "no seed corpus for {target}");
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    for f in seeds.iter().chain(&regressions) {
        let data = std::fs::read(f).unwrap();
        harness(target)(&data);
        let name = f.file_name().unwrap().to_string_lossy();
        if name.starts_with("seed-") {
            check_seed(target, &name, &data);
        }
    }
}

/// A generated seed still parses (its `-bad` variants are meant not to).
fn check_seed(target: &str, name: &str, data: &[u8]) {
    if name.contains("-bad") {
        return;
    }
    let dir = Path::new("seed");
    match target {
        "safetensors_dir" => {
            if data.first() != Some(&b'{') {
                Checkpoint::from_buffers(dir, vec![(dir.join("model.safetensors"), data.to_vec())]).unwrap();
            }
        }
        "gguf" => {
            Gguf::from_bytes(name, data.to_vec()).unwrap();
        }
        "config" => {
            let v: Value = serde_json::from_slice(data).unwrap();
            lowbit::config::ModelConfig::from_json(v.clone()).unwrap();
            QuantScheme::from_config(dir, &v).unwrap();
        }
        "packed" => {
            let parts: Vec<&[u8]> = split(data);
            let cfg: Value = serde_json::from_slice(parts[0]).unwrap();
            let scheme = QuantScheme::from_config(dir, &cfg).unwrap().unwrap();
            let ck = Checkpoint::from_buffers(dir, vec![(dir.join("model.safetensors"), parts[1].to_vec())]).unwrap();
            let prefixes: Vec<&str> =
                ck.names().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".vq_indices"))).collect();
            assert!(!prefixes.is_empty(), "{name}");
            for p in prefixes {
                let s = scheme.read_any(&ck, p).unwrap_or_else(|e| panic!("{name}: {e:#}")).unwrap();
                s.dequantize().unwrap();
            }
        }
        t => panic!("unknown target {t}"),
    }
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let p = data.windows(SPLIT.len()).position(|w| w == SPLIT).expect("two parts");
    vec![&data[..p], &data[p + SPLIT.len()..]]
}

#[test]
fn corpus_safetensors_dir() {
    run_target("safetensors_dir");
}

#[test]
fn corpus_gguf() {
    run_target("gguf");
}

#[test]
fn corpus_config() {
    run_target("config");
}

#[test]
fn corpus_packed() {
    run_target("packed");
}

/// The committed corpus stays small (the issue asks for < 1 MB in all).
#[test]
fn corpus_is_small() {
    let total: u64 = TARGETS
        .iter()
        .flat_map(|t| files(&fuzz_dir().join("corpus").join(t)).into_iter().chain(files(&fuzz_dir().join("regressions").join(t))))
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(total < 1 << 20, "committed fuzz corpus is {total} bytes");
}

// ---------------------------------------------------------------------------------------------
// Seed generators

fn safetensors_bytes(tensors: &[OutTensor], meta: Option<&[(&str, &str)]>) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    let meta = meta.map(|m| m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    safetensors::serialize(views, meta).unwrap()
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, p) in parts.iter().enumerate() {
        if k > 0 {
            v.extend_from_slice(SPLIT);
        }
        v.extend_from_slice(p);
    }
    v
}

fn safetensors_seeds(r: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let raw = |name: &str, dtype, shape: Vec<usize>, data: Vec<u8>| OutTensor { name: name.into(), dtype, shape, data };
    let mixed = vec![
        OutTensor::f32("model.norm.weight", vec![4], &r.f32s(4)),
        OutTensor::f16("model.embed_tokens.weight", vec![3, 4], &r.f32s(12)),
        OutTensor::bf16("lm_head.weight", vec![2, 2], &r.f32s(4)),
        OutTensor::i32("layer.g_idx", vec![3], &[0, 1, 2]),
        OutTensor::u8("layer.qweight", vec![2, 4], r.bytes(8)),
        raw("scalar", Dtype::F32, vec![], 1.5f32.to_le_bytes().to_vec()),
        raw("empty", Dtype::F16, vec![0, 3], vec![]),
        raw("wide", Dtype::F64, vec![2], r.bytes(16)),
        raw("flags", Dtype::BOOL, vec![2], vec![0, 1]),
    ];
    let shard_a = vec![OutTensor::f32("model.norm.weight", vec![2], &[1.0, -1.0]), OutTensor::f16("a.weight", vec![2, 2], &r.f32s(4))];
    let shard_b = vec![OutTensor::bf16("b.weight", vec![3], &r.f32s(3)), OutTensor::i32("b.ids", vec![2], &[7, -7])];
    let index = json!({
        "metadata": {"total_size": 30},
        "weight_map": {
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
            "b.ids": "model-00002-of-00002.safetensors"
        }
    })
    .to_string();
    let (a, b) = (safetensors_bytes(&shard_a, None), safetensors_bytes(&shard_b, None));
    let mut truncated = safetensors_bytes(&mixed, None);
    truncated.truncate(truncated.len() - 3);
    vec![
        ("seed-mixed-dtypes".into(), safetensors_bytes(&mixed, Some(&[("format", "pt")]))),
        ("seed-one-f32".into(), safetensors_bytes(&[OutTensor::f32("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0])], None)),
        ("seed-empty".into(), safetensors_bytes(&[], None)),
        ("seed-bad-truncated".into(), truncated),
        ("seed-sharded".into(), join(&[index.as_bytes(), &a, &b])),
    ]
}

// A minimal GGUF v3 writer.
fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

#[derive(Default)]
struct GgufBuilder {
    /// Data alignment (`general.alignment`); 0 means the default, 32.
    align: usize,
    n_kv: u64,
    kvs: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
}

impl GgufBuilder {
    fn kv(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
        self.n_kv += 1;
        self.kvs.extend(gstr(key));
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend_from_slice(payload);
        self
    }
    fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv(key, 4, &v.to_le_bytes())
    }
    fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv(key, 6, &v.to_le_bytes())
    }
    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv(key, 8, &gstr(v))
    }
    fn array(&mut self, key: &str, elem: u32, items: &[Vec<u8>]) -> &mut Self {
        let mut p = elem.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|i| p.extend_from_slice(i));
        self.kv(key, 9, &p)
    }
    /// `dims` in GGUF order (innermost first).
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        while !self.data.len().is_multiple_of(self.align.max(32)) {
            self.data.push(0);
        }
        self.n_tensors += 1;
        self.infos.extend(gstr(name));
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend_from_slice(bytes);
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(self.n_tensors.to_le_bytes());
        f.extend(self.n_kv.to_le_bytes());
        f.extend_from_slice(&self.kvs);
        f.extend_from_slice(&self.infos);
        while !f.len().is_multiple_of(self.align.max(32)) {
            f.push(0);
        }
        f.extend_from_slice(&self.data);
        f
    }
}

/// `n` blocks of a block-quantized type whose leading f16 scale(s) are small and finite.
fn blocks(r: &mut Rng, n: usize, block_bytes: usize, scales: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut b = r.bytes(block_bytes);
        for s in 0..scales {
            b[2 * s..2 * s + 2].copy_from_slice(&half::f16::from_f32(0.01 * (s + 1) as f32).to_le_bytes());
        }
        v.extend(b);
    }
    v
}

fn gguf_seeds(r: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f16b = |v: &[f32]| v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>();
    let bf16b = |v: &[f32]| v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>();
    // A one-layer llama (hidden 32, 2 heads, 1 kv head, ffn 32, vocab 4) in six tensor types.
    let mut g = GgufBuilder::default();
    g.str("general.architecture", "llama")
        .u32("general.alignment", 32)
        .u32("llama.block_count", 1)
        .u32("llama.context_length", 64)
        .u32("llama.embedding_length", 32)
        .u32("llama.feed_forward_length", 32)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0)
        .array("tokenizer.ggml.tokens", 8, &[gstr("<s>"), gstr("a"), gstr("b"), gstr("c")])
        .array("tokenizer.ggml.scores", 6, &[0f32, -1.0, -2.0, -3.0].map(|x| x.to_le_bytes().to_vec()))
        .array("tokenizer.ggml.token_type", 5, &[3i32, 1, 1, 1].map(|x| x.to_le_bytes().to_vec()))
        .u32("tokenizer.ggml.bos_token_id", 0)
        .kv("general.flag", 7, &[1])
        .kv("general.big", 10, &u64::MAX.to_le_bytes())
        .kv("general.nested", 9, &{
            let mut p = 9u32.to_le_bytes().to_vec();
            p.extend(1u64.to_le_bytes());
            p.extend(0u32.to_le_bytes());
            p.extend(2u64.to_le_bytes());
            p.extend([1, 2]);
            p
        });
    g.tensor("token_embd.weight", &[32, 4], 0, &f32b(&r.f32s(128)))
        .tensor("output_norm.weight", &[32], 1, &f16b(&r.f32s(32)))
        .tensor("blk.0.attn_norm.weight", &[32], 30, &bf16b(&r.f32s(32)))
        .tensor("blk.0.ffn_norm.weight", &[32], 0, &f32b(&[1.0; 32]))
        .tensor("blk.0.attn_q.weight", &[32, 32], 8, &blocks(r, 32, 34, 1))
        .tensor("blk.0.attn_k.weight", &[32, 16], 2, &blocks(r, 16, 18, 1))
        .tensor("blk.0.attn_v.weight", &[32, 16], 3, &blocks(r, 16, 20, 2))
        .tensor("blk.0.attn_output.weight", &[32, 32], 8, &blocks(r, 32, 34, 1))
        .tensor("blk.0.ffn_gate.weight", &[32, 32], 2, &blocks(r, 32, 18, 1))
        .tensor("blk.0.ffn_up.weight", &[32, 32], 3, &blocks(r, 32, 20, 2))
        .tensor("blk.0.ffn_down.weight", &[256, 4], 12, &blocks(r, 4, 144, 2))
        .tensor("rope_freqs.weight", &[2, 2, 2, 2], 0, &f32b(&[1.0; 16]));
    let llama = g.build();
    let mut minimal = GgufBuilder { align: 64, ..Default::default() };
    minimal.u32("general.alignment", 64).tensor("t", &[4], 0, &f32b(&[1.0, 2.0, 3.0, 4.0]));
    let mut trunc = llama.clone();
    trunc.truncate(trunc.len() - 40);
    let mut v2 = minimal.build();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    vec![
        ("seed-llama-mixed-types".into(), llama),
        ("seed-minimal".into(), minimal.build()),
        ("seed-v2".into(), v2),
        ("seed-empty".into(), GgufBuilder::default().build()),
        ("seed-bad-truncated".into(), trunc),
    ]
}

fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 64,
        "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "max_position_embeddings": 2048, "torch_dtype": "float32"
    })
}

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("seed-llama".to_string(), llama_config())];
    let mut c = llama_config();
    c["model_type"] = "mistral".into();
    c.as_object_mut().unwrap().remove("head_dim");
    c.as_object_mut().unwrap().remove("rope_theta");
    c["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
    c["tie_word_embeddings"] = true.into();
    out.push(("seed-mistral-tied".into(), c));
    let mut c = llama_config();
    c["model_type"] = "qwen2".into();
    c["num_key_value_heads"] = 8.into();
    out.push(("seed-qwen2".into(), c));
    let mut c = llama_config();
    c["quantization_config"] = AwqPacked::quantization_config(128);
    out.push(("seed-awq".into(), c));
    let mut c = llama_config();
    c["quantization_config"] = GptqPacked::quantization_config(3, 128, true, false, &[]);
    out.push(("seed-gptq".into(), c));
    let mut c = llama_config();
    c["quantization_config"] = json!({
        "quant_method": "lowbit", "format_version": 1,
        "modules": {
            "model.layers.0.self_attn.q_proj": {"bits": 4, "group_size": 32, "grid": "affine", "method": "rtn", "in_features": 64, "out_features": 64},
            "model.layers.0.mlp.up_proj": {"bits": 2, "group_size": 16, "grid": "shift", "method": "shift", "in_features": 64, "out_features": 172}
        },
        "vq_modules": {
            "model.layers.0.mlp.down_proj": {"layout": "vq", "method": "vptq", "in_features": 172, "out_features": 64, "vector_len": 8,
                "n_centroids": 256, "n_res_centroids": 16, "n_outlier_centroids": 4, "n_outlier_cols": 2, "col_norm": true}
        }
    });
    out.push(("seed-lowbit".into(), c));
    out.into_iter().map(|(n, v)| (n, serde_json::to_vec_pretty(&v).unwrap())).collect()
}

fn group_q(r: &mut Rng, out: usize, inn: usize, bits: u8, gs: usize, grid: Grid) -> GroupQ {
    let mut q = rtn::quantize(&r.f32s(out * inn), out, inn, bits, gs, false);
    q.grid = grid;
    q
}

fn packed_seed(quant_config: Value, tensors: &[OutTensor]) -> Vec<u8> {
    let cfg = json!({"model_type": "llama", "quantization_config": quant_config}).to_string();
    join(&[cfg.as_bytes(), &safetensors_bytes(tensors, None)])
}

fn packed_seeds(r: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let p = "model.layers.0.mlp.up_proj";
    let mut out = Vec::new();
    // AWQ GEMM 4-bit, 16 out x 64 in, group 32.
    let awq = AwqPacked::pack(&group_q(r, 16, 64, 4, 32, Grid::Affine)).unwrap();
    out.push(("seed-awq".to_string(), packed_seed(AwqPacked::quantization_config(32), &awq.to_tensors(p))));
    // GPTQ v1: 4-bit with trivial g_idx, 3-bit with act-order g_idx, 8-bit one group per row.
    let gptq = GptqPacked::pack(&group_q(r, 32, 64, 4, 32, Grid::Affine)).unwrap();
    out.push(("seed-gptq-4bit".into(), packed_seed(GptqPacked::quantization_config(4, 32, false, false, &[]), &gptq.to_tensors(p))));
    let mut q = group_q(r, 32, 96, 3, 32, Grid::Affine);
    q.g_idx = Some((0..96).map(|c| ((c * 7) % 96 / 32) as u32).collect());
    let gptq3 = GptqPacked::pack(&q).unwrap();
    out.push((
        "seed-gptq-3bit-act-order".into(),
        packed_seed(GptqPacked::quantization_config(3, 32, true, false, &[]), &gptq3.to_tensors(p)),
    ));
    let gptq8 = GptqPacked::pack(&group_q(r, 32, 32, 8, 32, Grid::Affine)).unwrap();
    let mut cfg8 = GptqPacked::quantization_config(8, 32, false, true, &[]);
    cfg8["group_size"] = (-1).into();
    out.push(("seed-gptq-8bit-per-row".into(), packed_seed(cfg8, &gptq8.to_tensors(p))));
    // lowbit: affine 4-bit with a short last group, halfint 3-bit, shift 2-bit with g_idx.
    let mut lq = LowbitQuantConfig::default();
    let mut tensors = Vec::new();
    for (k, (bits, inn, gs, grid)) in
        [(4u8, 40usize, 16usize, Grid::Affine), (3, 24, 8, Grid::HalfInt), (2, 16, 8, Grid::Shift)].into_iter().enumerate()
    {
        let mut q = group_q(r, 4, inn, bits, gs, grid);
        if grid == Grid::Shift {
            q.g_idx = Some((0..inn).map(|c| (c % 2) as u32).collect());
        }
        let l = LowbitPacked::pack(&q).unwrap();
        let prefix = format!("model.layers.{k}.mlp.up_proj");
        lq.modules.insert(prefix.clone(), l.meta("rtn"));
        tensors.extend(l.to_tensors(&prefix));
    }
    // VQ: 8 out x 6 in, vectors of 4, 4 centroids, a residual stage, column norm, one outlier.
    let vq = VqQ {
        out_features: 8,
        in_features: 6,
        vector_len: 4,
        centroids: r.f32s(16),
        n_centroids: 4,
        indices: vec![0, 0, 1, 2, 3, 0, 2, 1, 0, 3, 1, 1],
        res_centroids: Some(r.f32s(8)),
        n_res_centroids: 2,
        res_indices: Some(vec![0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0]),
        col_scale: Some(vec![1.0, 0.5, 2.0, 1.0, 0.25, 1.0]),
        col_bias: Some(vec![0.0, 0.1, -0.1, 0.0, 0.0, 0.5]),
        outlier_cols: vec![0],
        outlier_centroids: Some(r.f32s(8)),
        n_outlier_centroids: 2,
        outlier_indices: Some(vec![1, 0]),
    };
    let vp = VqPacked::pack(&vq).unwrap();
    let vq_prefix = "model.layers.0.mlp.down_proj";
    lq.vq_modules.insert(vq_prefix.into(), vp.meta("vptq"));
    tensors.extend(vp.to_tensors(vq_prefix));
    out.push(("seed-lowbit-and-vq".into(), packed_seed(serde_json::to_value(&lq).unwrap(), &tensors)));
    out
}

/// Rewrites `fuzz/corpus/<target>/seed-*` (run with `--ignored`).
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let sets = [
        ("safetensors_dir", safetensors_seeds(&mut r)),
        ("gguf", gguf_seeds(&mut r)),
        ("config", config_seeds()),
        ("packed", packed_seeds(&mut r)),
    ];
    for (target, seeds) in sets {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in files(&dir).into_iter().filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("seed-")) {
            std::fs::remove_file(old).unwrap();
        }
        for (name, data) in seeds {
            check_seed(target, &name, &data);
            harness(target)(&data);
            std::fs::write(dir.join(&name), data).unwrap();
        }
    }
}

/// Eight 2^61-byte tensors whose data offsets end 8 bytes short of 2^64: safetensors 0.8.0 adds
/// the header length to that end unchecked (a panic with overflow checks, as in fuzz builds; see
/// fuzz/Cargo.toml). Release builds must report a clean error naming the file.
#[test]
fn safetensors_offset_sum_overflow_is_a_clean_error() {
    let data = std::fs::read(fuzz_dir().join("regressions/safetensors_dir/offsets-sum-overflows-usize")).unwrap();
    let dir = Path::new("m");
    let e = Checkpoint::from_buffers(dir, vec![(dir.join("model.safetensors"), data)]).err().expect("must not open");
    let msg = format!("{e:#}");
    assert!(msg.starts_with("m/model.safetensors: ") && !msg.contains('\n'), "{msg}");
}
