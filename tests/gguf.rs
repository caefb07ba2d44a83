//! GGUF reader and importer: stories260K import equality, known-answer dequantization, a
//! hand-built GGUF round trip, malformed files, and the Q/K unpermutation.

use lowbit::events::Quiet;
use lowbit::gguf::{dequantize, hf_name, import_gguf, unpermute_rows, GgmlType, Gguf, ImportOptions, Value};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const STORIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models/stories260K");

fn stories(file: &str) -> PathBuf {
    Path::new(STORIES).join(file)
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer (little-endian, v3 by default).

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_F64: u32 = 12;

fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

struct Builder {
    version: u32,
    align: usize,
    n_kv: u64,
    kvs: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Self { version: 3, align: 32, n_kv: 0, kvs: vec![], n_tensors: 0, infos: vec![], data: vec![] }
    }
    fn kv(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
        self.n_kv += 1;
        self.kvs.extend(gstr(key));
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend_from_slice(payload);
        self
    }
    fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv(key, T_U32, &v.to_le_bytes())
    }
    fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv(key, T_F32, &v.to_le_bytes())
    }
    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv(key, T_STRING, &gstr(v))
    }
    fn str_array(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let mut p = T_STRING.to_le_bytes().to_vec();
        p.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| p.extend(gstr(s)));
        self.kv(key, T_ARRAY, &p)
    }
    /// Append a tensor; `dims` in GGUF order (innermost first).
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        while !self.data.len().is_multiple_of(self.align) {
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
    fn f32_tensor(&mut self, name: &str, dims: &[u64], v: &[f32]) -> &mut Self {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, dims, 0, &b)
    }
    fn build(&self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(self.version.to_le_bytes());
        f.extend(self.n_tensors.to_le_bytes());
        f.extend(self.n_kv.to_le_bytes());
        f.extend_from_slice(&self.kvs);
        f.extend_from_slice(&self.infos);
        while !f.len().is_multiple_of(self.align) {
            f.push(0);
        }
        f.extend_from_slice(&self.data);
        f
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Opening must fail with a one-line error that names the file and contains `needle`.
fn open_err(path: &Path, needle: &str) -> String {
    let msg = format!("{:#}", Gguf::open(path).expect_err("malformed file must not open"));
    let fname = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(fname), "error does not name the file: {msg}");
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    assert!(msg.contains(needle), "error {msg:?} lacks {needle:?}");
    msg
}

fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

// ---------------------------------------------------------------------------------------------
// stories260K: the GGUF must import to exactly the shipped safetensors.

fn st_tensors(bytes: &[u8]) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), Dtype::F32, "{name}");
            let vals = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, (v.shape().to_vec(), vals))
        })
        .collect()
}

#[test]
fn stories_import_matches_shipped_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stories-f32");
    let opts = ImportOptions { tokenizer: Some(stories("tokenizer.json")), ..Default::default() };
    let rep = import_gguf(&stories("stories260K.gguf"), &out, &opts, &mut Quiet).unwrap();
    assert_eq!(rep.tensors, 48);
    assert!(!rep.tied_embeddings);
    assert_eq!(rep.ggml_types.get("F32"), Some(&48));

    let got = st_tensors(&std::fs::read(out.join("model.safetensors")).unwrap());
    let want = st_tensors(&std::fs::read(stories("model.safetensors")).unwrap());
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, (shape, vals)) in &want {
        let (gs, gv) = &got[name];
        assert_eq!(gs, shape, "{name} shape");
        let bitwise = gv.iter().zip(vals).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(bitwise, "{name} differs from the shipped safetensors");
    }

    // config.json built from metadata matches the shipped key fields.
    let cfg: Json = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let ship: Json = serde_json::from_slice(&std::fs::read(stories("config.json")).unwrap()).unwrap();
    for k in [
        "model_type",
        "architectures",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "torch_dtype",
    ] {
        assert_eq!(cfg[k], ship[k], "config key {k}");
    }
    // Tokenizer files copied verbatim.
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(stories(f)).unwrap(), "{f}");
    }
    // No temp dirs left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("stories-f32")]);
}

#[test]
fn stories_metadata_getters() {
    let g = Gguf::open(stories("stories260K.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count").unwrap(), Some(5));
    assert_eq!(g.get_u64("llama.attention.head_count_kv").unwrap(), Some(4));
    assert_eq!(g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), Some(1e-5));
    let toks = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!((toks.len(), toks[1], toks[2]), (512, "<s>", "</s>"));
    assert_eq!(g.get_f64_array("tokenizer.ggml.scores").unwrap().unwrap().len(), 512);
    assert_eq!(g.get_i64_array("tokenizer.ggml.token_type").unwrap().unwrap()[..2], [2, 3]);
    assert_eq!(g.get_u32("no.such.key").unwrap(), None);
    // Wrong type: an error naming the file and key, not a silent None.
    let e = g.get_u32("general.name").unwrap_err().to_string();
    assert!(e.contains("stories260K.gguf") && e.contains("general.name"), "{e}");
    let (shape, v) = g.tensor_f32("blk.0.ffn_down.weight").unwrap();
    assert_eq!((shape, v.len()), (vec![64, 172], 64 * 172));
    let e = g.tensor_f32("nope").unwrap_err().to_string();
    assert!(e.contains("stories260K.gguf") && e.contains("nope"), "{e}");
}

#[test]
fn import_builds_output_with_f16_and_respects_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let gg = stories("stories260K.gguf");
    // No tokenizer: still works (with a warning), config torch_dtype follows the dtype.
    let opts = ImportOptions { dtype: Dtype::F16, ..Default::default() };
    let rep = import_gguf(&gg, &out, &opts, &mut Quiet).unwrap();
    assert!(!rep.tokenizer_copied && rep.config_from_metadata);
    assert!(!out.join("tokenizer.json").exists());
    let cfg: Json = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "float16");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("model.norm.weight").unwrap().dtype(), Dtype::F16);

    // Existing output: refused without force, naming the path.
    let e = import_gguf(&gg, &out, &opts, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("exists (use --force") && e.contains("out"), "{e}");
    // With force and a given config: replaced, config copied verbatim.
    let opts = ImportOptions { force: true, config: Some(stories("config.json")), ..Default::default() };
    let rep = import_gguf(&gg, &out, &opts, &mut Quiet).unwrap();
    assert!(!rep.config_from_metadata);
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), std::fs::read(stories("config.json")).unwrap());
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    assert_eq!(SafeTensors::deserialize(&bytes).unwrap().tensor("model.norm.weight").unwrap().dtype(), Dtype::F32);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp/backup dirs left behind");
}

// ---------------------------------------------------------------------------------------------
// Known-answer dequantization (expected values worked out by hand).

fn q8_0_block() -> Vec<u8> {
    // d = 0.5; qs = -128, -1, 0, 1, 127, then 3 for the remaining 27.
    let mut b = f16_bits(0.5).to_vec();
    b.extend([-128i8, -1, 0, 1, 127].map(|q| q as u8));
    b.extend([3u8; 27]);
    b
}

fn q4_0_block() -> Vec<u8> {
    // d = 2.0; byte j has low nibble j and high nibble 15 - j.
    let mut b = f16_bits(2.0).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

fn q4_1_block() -> Vec<u8> {
    // d = 0.25, m = -1.0; byte j has low nibble j and high nibble 15 - j.
    let mut b = f16_bits(0.25).to_vec();
    b.extend(f16_bits(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

#[test]
fn q8_0_known_answer() {
    let v = dequantize(GgmlType::Q8_0, &q8_0_block(), 32).unwrap();
    assert_eq!(v[..5], [-64.0, -0.5, 0.0, 0.5, 63.5]);
    assert!(v[5..].iter().all(|&x| x == 1.5));
}

#[test]
fn q4_0_known_answer() {
    let v = dequantize(GgmlType::Q4_0, &q4_0_block(), 32).unwrap();
    // elements 0..16 from low nibbles: (j - 8) * 2
    assert_eq!(v[..16], [-16., -14., -12., -10., -8., -6., -4., -2., 0., 2., 4., 6., 8., 10., 12., 14.]);
    // elements 16..32 from high nibbles: (15 - j - 8) * 2
    assert_eq!(v[16..], [14., 12., 10., 8., 6., 4., 2., 0., -2., -4., -6., -8., -10., -12., -14., -16.]);
}

#[test]
fn q4_1_known_answer() {
    let v = dequantize(GgmlType::Q4_1, &q4_1_block(), 32).unwrap();
    // nibble * 0.25 - 1
    let lo = [-1., -0.75, -0.5, -0.25, 0., 0.25, 0.5, 0.75, 1., 1.25, 1.5, 1.75, 2., 2.25, 2.5, 2.75];
    assert_eq!(v[..16], lo);
    let hi: Vec<f32> = lo.iter().rev().copied().collect();
    assert_eq!(v[16..], hi[..]);
}

#[test]
fn quantized_tensors_in_a_file() {
    // A [2, 32] Q8_0 tensor (two blocks, one per row) and a [1, 64] Q4_1 tensor (two blocks).
    let dir = tempfile::tempdir().unwrap();
    let mut q8 = q8_0_block();
    let mut second = f16_bits(-1.0).to_vec();
    second.extend([2u8; 32]);
    q8.extend(second);
    let mut q41 = q4_1_block();
    q41.extend(q4_1_block());
    let mut b = Builder::new();
    b.tensor("q8", &[32, 2], 8, &q8).tensor("q41", &[64, 1], 3, &q41).tensor("q40", &[32], 2, &q4_0_block());
    let p = write(dir.path(), "q.gguf", &b.build());
    let g = Gguf::open(&p).unwrap();
    let (shape, v) = g.tensor_f32("q8").unwrap();
    assert_eq!(shape, [2, 32]);
    assert_eq!(v[..2], [-64.0, -0.5]);
    assert!(v[32..].iter().all(|&x| x == -2.0), "second row = 2 * -1");
    let (shape, v) = g.tensor_f32("q41").unwrap();
    assert_eq!(shape, [1, 64]);
    assert_eq!((v[0], v[15], v[31], v[32], v[47], v[63]), (-1.0, 2.75, -1.0, -1.0, 2.75, -1.0));
    let (shape, v) = g.tensor_f32("q40").unwrap();
    assert_eq!((shape, v[0], v[31]), (vec![32], -16.0, -16.0));
}

#[test]
fn unsupported_type_names_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new();
    b.tensor("blk.0.ffn_up.weight", &[256, 1], 23, &[0u8; 136]); // one IQ4_XS block
    let p = write(dir.path(), "k.gguf", &b.build());
    let g = Gguf::open(&p).unwrap();
    assert_eq!(g.tensors()[0].ty.name(), "IQ4_XS");
    let e = g.tensor_f32("blk.0.ffn_up.weight").unwrap_err().to_string();
    assert!(e.contains("k.gguf") && e.contains("blk.0.ffn_up.weight") && e.contains("IQ4_XS"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Hand-built round trip.

#[test]
fn hand_built_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect(); // [2, 3]
    let h = [1.0f32, -2.5, 65504.0, 0.0009765625]; // exact in f16
    let h_bytes: Vec<u8> = h.iter().flat_map(|&x| f16_bits(x)).collect();
    let bf = [1.5f32, -3.0];
    let bf_bytes: Vec<u8> = bf.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let mut nested = T_ARRAY.to_le_bytes().to_vec(); // array of 2 arrays of u8
    nested.extend(2u64.to_le_bytes());
    for xs in [[1u8, 2], [3, 4]] {
        nested.extend(T_U8.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        nested.extend(xs);
    }
    let mut b = Builder::new();
    b.version = 2;
    b.str("general.architecture", "llama")
        .u32("answer", 42)
        .kv("neg", T_I32, &(-7i32).to_le_bytes())
        .kv("big", T_U64, &(1u64 << 40).to_le_bytes())
        .f32("pi", 3.25)
        .kv("e", T_F64, &2.5f64.to_le_bytes())
        .kv("flag", T_BOOL, &[1])
        .str_array("words", &["a", "ünï", ""])
        .kv("nested", T_ARRAY, &nested)
        .f32_tensor("m", &[3, 2], &m)
        .tensor("h", &[4], 1, &h_bytes)
        .tensor("bf", &[2], 30, &bf_bytes);
    let p = write(dir.path(), "tiny.gguf", &b.build());
    let g = Gguf::open(&p).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.metadata().len(), 9);
    assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.get_u32("answer").unwrap(), Some(42));
    assert_eq!(g.get_i64("neg").unwrap(), Some(-7));
    assert!(g.get_u32("neg").is_err(), "negative value does not fit u32");
    assert_eq!(g.get_u64("big").unwrap(), Some(1 << 40));
    assert!(g.get_u32("big").is_err());
    assert_eq!(g.get_f32("pi").unwrap(), Some(3.25));
    assert_eq!(g.get_f64("e").unwrap(), Some(2.5));
    assert_eq!(g.get_bool("flag").unwrap(), Some(true));
    assert_eq!(g.get_str_array("words").unwrap().unwrap(), ["a", "ünï", ""]);
    let want = Value::Array(vec![Value::Array(vec![Value::U8(1), Value::U8(2)]), Value::Array(vec![Value::U8(3), Value::U8(4)])]);
    assert_eq!(g.get("nested"), Some(&want));
    assert_eq!(g.tensor_f32("m").unwrap(), (vec![2, 3], m));
    assert_eq!(g.tensor_f32("h").unwrap(), (vec![4], h.to_vec()));
    assert_eq!(g.tensor_f32("bf").unwrap(), (vec![2], bf.to_vec()));
    assert_eq!(g.tensor_info("m").unwrap().dims, [3, 2]);
    assert_eq!(g.tensor_bytes("h").unwrap(), &h_bytes[..]);
}

#[test]
fn custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new();
    b.align = 64;
    b.u32("general.alignment", 64).f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).f32_tensor("b", &[1], &[4.0]);
    let p = write(dir.path(), "al.gguf", &b.build());
    let g = Gguf::open(&p).unwrap();
    assert_eq!((g.alignment, g.data_start % 64), (64, 0));
    assert_eq!(g.tensor_info("b").unwrap().offset, 64);
    assert_eq!(g.tensor_f32("b").unwrap().1, [4.0]);
    // A non-power-of-two alignment is rejected.
    let mut b = Builder::new();
    b.u32("general.alignment", 48);
    open_err(&write(dir.path(), "al48.gguf", &b.build()), "alignment");
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

fn small_valid() -> Builder {
    let mut b = Builder::new();
    b.str("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .str_array("tokenizer.ggml.tokens", &["<s>", "hi"])
        .f32_tensor("token_embd.weight", &[4, 2], &[0.5; 8])
        .tensor("blk.0.attn_q.weight", &[32, 1], 8, &q8_0_block());
    b
}

#[test]
fn every_truncation_of_a_small_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = small_valid().build();
    assert!(Gguf::open(write(dir.path(), "ok.gguf", &full)).is_ok());
    for n in 0..full.len() {
        let p = write(dir.path(), "cut.gguf", &full[..n]);
        let msg = format!("{:#}", Gguf::open(&p).expect_err(&format!("prefix of {n} bytes opened")));
        assert!(msg.contains("cut.gguf") && !msg.contains('\n'), "{msg}");
    }
}

#[test]
fn truncated_stories_errors_with_data_range() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(stories("stories260K.gguf")).unwrap();
    let n = full.len() - 1;
    let msg = open_err(&write(dir.path(), "stories.gguf", &full[..n]), "exceeds file length");
    assert!(msg.contains("blk.4.ffn_norm.weight") && msg.contains(&n.to_string()), "{msg}");
    for n in [0, 3, 4, 10, 23, 24, 1000, 14151] {
        open_err(&write(dir.path(), "stories.gguf", &full[..n]), "truncated");
    }
}

#[test]
fn bad_magic_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = small_valid().build();
    f[..4].copy_from_slice(b"GGML");
    open_err(&write(dir.path(), "magic.gguf", &f), "not a GGUF file");
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut b = small_valid();
        b.version = v;
        let msg = open_err(&write(dir.path(), "ver.gguf", &b.build()), "unsupported GGUF version");
        assert_eq!(msg.contains("big-endian"), v == 0x0300_0000, "{msg}");
    }
}

#[test]
fn tensor_offset_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new();
    b.f32_tensor("t", &[8], &[0.0; 8]);
    // Rewrite the offset (last 8 bytes of the tensor info) to point past the end.
    let k = b.infos.len() - 8;
    b.infos[k..].copy_from_slice(&4096u64.to_le_bytes());
    let msg = open_err(&write(dir.path(), "off.gguf", &b.build()), "tensor t data [");
    assert!(msg.contains("exceeds file length"), "{msg}");
    // An offset near u64::MAX must not overflow.
    b.infos[k..].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    open_err(&write(dir.path(), "off2.gguf", &b.build()), "exceeds file length");
    // Misaligned offset.
    b.infos[k..].copy_from_slice(&4u64.to_le_bytes());
    open_err(&write(dir.path(), "off3.gguf", &b.build()), "alignment");
}

#[test]
fn absurd_counts_error_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let huge = 1u64 << 60;
    let base = small_valid().build();
    // Header counts: bytes 8..16 tensor count, 16..24 kv count.
    for (at, needle) in [(8, "tensor count"), (16, "kv count")] {
        let mut f = base.clone();
        f[at..at + 8].copy_from_slice(&huge.to_le_bytes());
        open_err(&write(dir.path(), "count.gguf", &f), needle);
        f[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        open_err(&write(dir.path(), "count.gguf", &f), needle);
    }
    // Key string length.
    let mut f = base.clone();
    f[24..32].copy_from_slice(&huge.to_le_bytes());
    open_err(&write(dir.path(), "strlen.gguf", &f), "metadata key length");
    // String value length.
    let mut b = Builder::new();
    let mut p = huge.to_le_bytes().to_vec();
    p.extend(b"abc");
    b.kv("s", T_STRING, &p);
    open_err(&write(dir.path(), "sval.gguf", &b.build()), "string length");
    // Array length, for each element kind.
    for elem in [T_U8, T_U32, T_STRING, T_ARRAY] {
        let mut b = Builder::new();
        let mut p = elem.to_le_bytes().to_vec();
        p.extend(huge.to_le_bytes());
        b.kv("a", T_ARRAY, &p);
        open_err(&write(dir.path(), "arr.gguf", &b.build()), "array length");
    }
    // Tensor dims whose product overflows, and too many dims.
    let mut b = Builder::new();
    b.tensor("t", &[huge, huge], 0, &[]);
    open_err(&write(dir.path(), "dims.gguf", &b.build()), "overflow");
    let mut b = Builder::new();
    b.tensor("t", &[1; 5], 0, &[0; 4]);
    open_err(&write(dir.path(), "ndims.gguf", &b.build()), "dimensions");
    let mut b = Builder::new();
    b.tensor("t", &[huge], 0, &[]);
    open_err(&write(dir.path(), "bigdim.gguf", &b.build()), "exceeds file length");
}

#[test]
fn other_malformed_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new();
    b.kv("x", 13, &[0; 8]);
    open_err(&write(dir.path(), "vtype.gguf", &b.build()), "unknown metadata value type 13");
    let mut b = Builder::new();
    b.kv("x", T_BOOL, &[2]);
    open_err(&write(dir.path(), "bool.gguf", &b.build()), "invalid bool");
    let mut b = Builder::new();
    b.u32("x", 1).u32("x", 2);
    open_err(&write(dir.path(), "dupkey.gguf", &b.build()), "duplicate metadata key x");
    let mut b = Builder::new();
    b.f32_tensor("t", &[1], &[1.0]).f32_tensor("t", &[1], &[1.0]);
    open_err(&write(dir.path(), "duptensor.gguf", &b.build()), "duplicate tensor name t");
    let mut b = Builder::new();
    b.tensor("t", &[1], 99, &[0; 4]);
    open_err(&write(dir.path(), "ttype.gguf", &b.build()), "unknown ggml type id 99");
    let mut b = Builder::new();
    b.tensor("t", &[16], 8, &[0; 34]); // Q8_0 row shorter than a block
    open_err(&write(dir.path(), "blk.gguf", &b.build()), "block size");
    // Arrays nested deeper than the reader allows.
    let mut p = Vec::new();
    for _ in 0..64 {
        p.extend(T_ARRAY.to_le_bytes());
        p.extend(1u64.to_le_bytes());
    }
    p.extend(T_U8.to_le_bytes());
    p.extend(0u64.to_le_bytes());
    let mut b = Builder::new();
    b.kv("deep", T_ARRAY, &p);
    open_err(&write(dir.path(), "deep.gguf", &b.build()), "nested too deeply");
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let base = small_valid().build();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..1500 {
        let mut f = base.clone();
        for _ in 0..1 + rnd() % 4 {
            let i = (rnd() % f.len() as u64) as usize;
            f[i] = rnd() as u8;
        }
        let p = write(dir.path(), "fuzz.gguf", &f);
        if let Ok(g) = Gguf::open(&p) {
            for t in g.tensors() {
                let _ = g.tensor_f32(&t.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q/K unpermutation and name mapping.

#[test]
fn unpermute_by_hand() {
    // 2 heads of head_dim 4 (half = 2): llama.cpp stores HF rows of each head in order
    // [0, 2, 1, 3] (interleaving the two rotary halves). Rows are tagged with their HF index.
    let cols = 3;
    let gguf_order = [0, 2, 1, 3, 4, 6, 5, 7];
    let permuted: Vec<f32> = gguf_order.iter().flat_map(|&r| (0..cols).map(move |c| (r * 10 + c) as f32)).collect();
    let hf = unpermute_rows(&permuted, 8, cols, 2).unwrap();
    let want: Vec<f32> = (0..8).flat_map(|r| (0..cols).map(move |c| (r * 10 + c) as f32)).collect();
    assert_eq!(hf, want);
    // head_dim 6 (half = 3), one head, bias-like single column: GGUF row 2j+i = HF row 3i+j.
    let hf = unpermute_rows(&[0., 3., 1., 4., 2., 5.], 6, 1, 1).unwrap();
    assert_eq!(hf, [0., 1., 2., 3., 4., 5.]);
    assert!(unpermute_rows(&[0.; 6], 6, 1, 2).is_err(), "odd head_dim");
}

/// A tensor with 0 columns and 2^57 rows holds no data, yet the unpermutation looped over
/// every row (a hang in `import-gguf`). Found by `cargo fuzz run gguf`
/// (fuzz/regressions/gguf/unpermute-zero-columns-huge-rows).
#[test]
fn unpermute_empty_tensor_with_huge_rows_returns_at_once() {
    let t = std::time::Instant::now();
    assert_eq!(unpermute_rows(&[], 1 << 57, 0, 2).unwrap(), Vec::<f32>::new());
    assert!(t.elapsed().as_secs() < 1);
    assert!(unpermute_rows(&[0.0; 4], 4, 1, usize::MAX).is_err(), "2 * n_head overflows");
}

#[test]
fn name_mapping() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.12.attn_norm.weight", "model.layers.12.input_layernorm.weight"),
        ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
        ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight"),
        ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
    ];
    for (g, h) in cases {
        assert_eq!(hf_name(g).as_deref(), Some(h), "{g}");
    }
    for bad in ["blk.x.attn_q.weight", "blk.0.attn_qq.weight", "token_embd.scale", "rope_freqs"] {
        assert_eq!(hf_name(bad), None, "{bad}");
    }
}

#[test]
fn import_of_hand_built_model_unpermutes_qk_and_ties() {
    // One layer, hidden 4, 2 heads (head_dim 2), 1 kv head, no output.weight (tied).
    let dir = tempfile::tempdir().unwrap();
    let ramp = |n: usize, base: f32| -> Vec<f32> { (0..n).map(|i| base + i as f32).collect() };
    let mut b = Builder::new();
    b.str("general.architecture", "llama")
        .u32("llama.embedding_length", 4)
        .u32("llama.feed_forward_length", 8)
        .u32("llama.block_count", 1)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .u32("llama.context_length", 128)
        .f32("llama.rope.freq_base", 500000.0)
        .u32("tokenizer.ggml.bos_token_id", 7)
        .f32_tensor("token_embd.weight", &[4, 6], &ramp(24, 0.0))
        .f32_tensor("output_norm.weight", &[4], &[1.0; 4])
        .f32_tensor("blk.0.attn_q.weight", &[4, 4], &ramp(16, 100.0))
        .f32_tensor("blk.0.attn_q.bias", &[4], &[0., 1., 2., 3.])
        .f32_tensor("blk.0.attn_k.weight", &[4, 2], &ramp(8, 200.0))
        .f32_tensor("rope_freqs.weight", &[1], &[1.0]);
    let p = write(dir.path(), "tiny.gguf", &b.build());
    let out = dir.path().join("hf");
    let rep = import_gguf(&p, &out, &ImportOptions::default(), &mut Quiet).unwrap();
    assert!(rep.tied_embeddings);
    assert_eq!(rep.skipped, ["rope_freqs.weight"]);
    let got = st_tensors(&std::fs::read(out.join("model.safetensors")).unwrap());
    assert!(!got.contains_key("lm_head.weight"));
    assert_eq!(got["model.embed_tokens.weight"].0, [6, 4]);
    // head_dim 2 => half 1: the permutation is the identity within each head.
    assert_eq!(got["model.layers.0.self_attn.q_proj.weight"].1, ramp(16, 100.0));
    assert_eq!(got["model.layers.0.self_attn.q_proj.bias"].1, [0., 1., 2., 3.]);
    // k: 1 kv head of head_dim 2 => rows unchanged too; shape [2, 4].
    assert_eq!(got["model.layers.0.self_attn.k_proj.weight"], (vec![2, 4], ramp(8, 200.0)));
    let cfg: Json = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["vocab_size"], 6);
    assert_eq!(cfg["head_dim"], 2);
    assert_eq!(cfg["num_key_value_heads"], 1);
    assert_eq!(cfg["rope_theta"], 500000.0);
    assert_eq!(cfg["max_position_embeddings"], 128);
    assert_eq!(cfg["bos_token_id"], 7);
    assert_eq!(cfg["attention_bias"], true);
    assert!(cfg.get("eos_token_id").is_none());

    // A k tensor with 4 rows and 1 kv head (head_dim 4) is reordered [0, 2, 1, 3].
    let mut b = Builder::new();
    b.str("general.architecture", "llama")
        .u32("llama.embedding_length", 1)
        .u32("llama.feed_forward_length", 1)
        .u32("llama.block_count", 1)
        .u32("llama.attention.head_count", 1)
        .f32_tensor("token_embd.weight", &[1, 1], &[0.0])
        .f32_tensor("blk.0.attn_k.weight", &[1, 4], &[10., 12., 11., 13.]);
    let p = write(dir.path(), "k4.gguf", &b.build());
    let out = dir.path().join("hf2");
    import_gguf(&p, &out, &ImportOptions::default(), &mut Quiet).unwrap();
    let got = st_tensors(&std::fs::read(out.join("model.safetensors")).unwrap());
    assert_eq!(got["model.layers.0.self_attn.k_proj.weight"].1, [10., 11., 12., 13.]);
}

#[test]
fn import_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new();
    b.str("general.architecture", "gpt2");
    let p = write(dir.path(), "arch.gguf", &b.build());
    let e = import_gguf(&p, &dir.path().join("o"), &ImportOptions::default(), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("arch.gguf") && e.contains("gpt2"), "{e}");
    let mut b = Builder::new();
    b.str("general.architecture", "llama")
        .u32("llama.attention.head_count", 1)
        .f32_tensor("token_embd.weight", &[1, 1], &[0.0])
        .f32_tensor("blk.0.weird.weight", &[1], &[0.0]);
    let p = write(dir.path(), "weird.gguf", &b.build());
    let e = import_gguf(&p, &dir.path().join("o"), &ImportOptions::default(), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("weird.gguf") && e.contains("blk.0.weird.weight"), "{e}");
    // Missing required metadata (only needed when no config is given).
    let mut b = Builder::new();
    b.str("general.architecture", "llama").u32("llama.attention.head_count", 1).f32_tensor("token_embd.weight", &[1, 1], &[0.0]);
    let p = write(dir.path(), "nometa.gguf", &b.build());
    let e = import_gguf(&p, &dir.path().join("o"), &ImportOptions::default(), &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("nometa.gguf") && e.contains("llama.embedding_length"), "{e}");
    let opts = ImportOptions { config: Some(stories("config.json")), ..Default::default() };
    import_gguf(&p, &dir.path().join("o"), &opts, &mut Quiet).unwrap();
    // A missing tokenizer path fails before any output appears.
    let opts = ImportOptions { tokenizer: Some(dir.path().join("nope.json")), config: opts.config, ..Default::default() };
    let e = format!("{:#}", import_gguf(&p, &dir.path().join("o2"), &opts, &mut Quiet).unwrap_err());
    assert!(e.contains("nope.json") && !e.contains('\n'), "{e}");
    assert!(!dir.path().join("o2").exists());
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["arch.gguf", "nometa.gguf", "o", "weird.gguf"], "no temp dirs left behind");
}

/// Keys, values and tensor names from a GGUF file reach messages escaped and cut short: a 2 MB
/// string with terminal control sequences where a count belongs, a huge array, a tensor name
/// with ESC/BEL/CR/NUL. The CLI's error is one short line without a raw control character.
#[test]
fn untrusted_gguf_text_is_escaped_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let evil = format!("\u{1b}[2J\u{7}\r\0{}", "A".repeat(2 << 20));
    let cases: Vec<(&str, Builder, &str)> = vec![
        (
            "string where a count belongs",
            {
                let mut b = Builder::new();
                b.str("general.architecture", "llama").str("llama.attention.head_count", &evil).f32_tensor(
                    "token_embd.weight",
                    &[1, 1],
                    &[0.0],
                );
                b
            },
            "metadata llama.attention.head_count: expected",
        ),
        (
            "huge array where a count belongs",
            {
                let mut b = Builder::new();
                let many: Vec<String> = (0..200_000).map(|i| format!("tok{i}")).collect();
                let refs: Vec<&str> = many.iter().map(String::as_str).collect();
                b.str("general.architecture", "llama").str_array("llama.attention.head_count", &refs).f32_tensor(
                    "token_embd.weight",
                    &[1, 1],
                    &[0.0],
                );
                b
            },
            "metadata llama.attention.head_count: expected",
        ),
        (
            "tensor name",
            {
                let mut b = Builder::new();
                b.str("general.architecture", "llama")
                    .u32("llama.attention.head_count", 1)
                    .f32_tensor("token_embd.weight", &[1, 1], &[0.0])
                    .f32_tensor(&format!("blk.0.\u{1b}]0;pwned\u{7}\r\0{}", "x".repeat(100_000)), &[1], &[0.0]);
                b
            },
            "has no Hugging Face Llama equivalent",
        ),
        (
            "architecture",
            {
                let mut b = Builder::new();
                b.str("general.architecture", &evil).f32_tensor("token_embd.weight", &[1, 1], &[0.0]);
                b
            },
            "not supported (only llama)",
        ),
    ];
    for (i, (what, b, frag)) in cases.into_iter().enumerate() {
        let p = write(dir.path(), &format!("evil{i}.gguf"), &b.build());
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lowbit"))
            .args(["import-gguf", p.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", &err[..err.len().min(500)]);
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{what}: no error line"));
        assert!(line.contains(frag), "{what}: {}", &line[..line.len().min(500)]);
        assert!(line.len() < 2000, "{what}: error line is {} bytes", line.len());
        assert!(!err.trim_end_matches('\n').chars().any(|c| c.is_control() && c != '\n'), "{what}: raw control character");
        assert!(!line.contains('\u{1b}') && (what.contains("array") || line.contains("\\u{1b}")), "{what}: {line}");
        assert!(!dir.path().join("o").exists());
    }
}
