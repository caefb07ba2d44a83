//! Fuzz harnesses: every reader of untrusted files, fed arbitrary bytes.
//!
//! Each harness parses its input like the real reader does, then exercises everything that can
//! be reached from the parsed value (accessors, dequantization, re-encoding) and asserts the
//! invariants that must hold for any input that parsed. Errors are the expected outcome for
//! most inputs; a panic, a hang or an allocation out of proportion to the input is a bug.
//!
//! Driven by the cargo-fuzz targets in `fuzz/` (see `fuzz/README.md`) and, on the committed
//! seed corpora, by `tests/fuzz_corpus.rs`, which also regenerates those seeds.

use crate::config::ModelConfig;
use crate::gguf::{build_config, hf_name, unpermute_rows, Gguf, Value};
use crate::pack::vq::VqPacked;
use crate::pack::{AwqPacked, GptqPacked, HfQuantMeta, LowbitPacked, Packed, PackedLayout};
use crate::qmodel::{QuantScheme, Stored};
use crate::st_write::OutTensor;
use crate::weights::Checkpoint;
use safetensors::Dtype;
use std::collections::BTreeSet;
use std::path::Path;

/// Separates the parts of a multi-part input (index JSON and shards; config and tensors).
pub const SPLIT: &[u8] = b"\n%%\n";

/// Largest tensor (elements) the harnesses decode to f32: inputs are small, but packed and VQ
/// layouts legitimately expand a few bytes into many weights.
pub const MAX_DECODE: usize = 1 << 20;

/// Most tensors or modules one input exercises.
const MAX_ITEMS: usize = 16;

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    // Byte by byte rather than `w == SPLIT`: a slice comparison per position is a memcmp call,
    // which libFuzzer intercepts (slowly) on every call.
    let is_split = |w: &[u8]| w.iter().zip(SPLIT).all(|(a, b)| a == b);
    while let Some(p) = rest.windows(SPLIT.len()).position(is_split) {
        parts.push(&rest[..p]);
        rest = &rest[p + SPLIT.len()..];
    }
    parts.push(rest);
    parts
}

fn dir() -> &'static Path {
    Path::new("fuzz-model")
}

/// A checkpoint directory: one `model.safetensors`, or, when the input starts with `{`,
/// `model.safetensors.index.json` followed by the shards (parts separated by [`SPLIT`]; the
/// shards named by the index take the parts in turn).
pub fn safetensors_dir(data: &[u8]) {
    let ck = if data.first() == Some(&b'{') {
        let parts = split(data);
        let Ok(index) = std::str::from_utf8(parts[0]) else { return };
        let Ok(names) = Checkpoint::index_shards(&dir().join("model.safetensors.index.json"), index) else { return };
        if parts.len() < 2 {
            return;
        }
        let shards = names.iter().take(4).enumerate().map(|(k, n)| (dir().join(n), parts[1 + k % (parts.len() - 1)].to_vec())).collect();
        Checkpoint::from_buffers(dir(), shards)
    } else {
        Checkpoint::from_buffers(dir(), vec![(dir().join("model.safetensors"), data.to_vec())])
    };
    let Ok(ck) = ck else { return };
    let _ = ck.bytes_by_dtype();
    for name in ck.names().take(MAX_ITEMS) {
        let (info, bytes) = ck.raw(name).expect("listed tensor");
        let numel: usize = info.shape.iter().product();
        assert_eq!(bytes.len(), numel * crate::weights::dtype_size(info.dtype).expect("checked dtype"), "{name}");
        if let Ok((shape, v)) = ck.f32(name) {
            assert_eq!((shape.as_slice(), v.len()), (info.shape.as_slice(), numel));
            assert!(ck.f32_shaped(name, &shape).is_ok());
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let t = ck.converted(name, dtype).expect("float tensor converts");
                assert_eq!(t.data.len(), numel * crate::weights::dtype_size(dtype).expect("float"));
            }
        }
        if let Ok((_, v)) = ck.i32s(name) {
            assert_eq!(v.len(), numel);
        }
        let _ = ck.check_shape(name, &[numel]);
    }
}

/// A GGUF file: metadata, tensor table, dequantization of every tensor (up to [`MAX_DECODE`]
/// elements), the Q/K unpermutation and the config the importer would build.
pub fn gguf(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    // Every typed getter on a few keys (a mismatch formats the value into the error, which is
    // slow for big arrays), and the getter that fits on every key.
    for (n, (k, v)) in g.metadata().iter().enumerate() {
        if n < 4 {
            let _ = (g.get_u32(k), g.get_u64(k), g.get_i64(k), g.get_f32(k), g.get_f64(k), g.get_bool(k), g.get_str(k));
            let _ = (g.get_str_array(k), g.get_f64_array(k), g.get_i64_array(k));
        }
        let ok = match v {
            Value::String(_) => g.get_str(k).is_ok(),
            Value::Bool(_) => g.get_bool(k).is_ok(),
            Value::F32(_) | Value::F64(_) => g.get_f64(k).is_ok(),
            Value::Array(a) if a.iter().all(|x| x.as_str().is_some()) => g.get_str_array(k).is_ok(),
            Value::Array(_) => true,
            _ => g.get_i64(k).is_ok() || g.get_u64(k).is_ok(),
        };
        assert!(ok, "metadata {k}: {} value not readable as its own type", v.type_name());
    }
    let heads = g.get_u32("llama.attention.head_count").ok().flatten().unwrap_or(1) as usize;
    for t in g.tensors().iter().take(MAX_ITEMS) {
        let _ = hf_name(&t.name);
        let bytes = g.tensor_bytes(&t.name).expect("listed tensor");
        assert_eq!(bytes.len(), t.range.len());
        let shape = t.hf_shape();
        if t.n_elements() > MAX_DECODE {
            continue;
        }
        if let Ok((s, v)) = g.tensor_f32(&t.name) {
            assert_eq!((s.as_slice(), v.len()), (shape.as_slice(), t.n_elements()));
            if s.len() <= 2 {
                let _ = unpermute_rows(&v, s[0], s.get(1).copied().unwrap_or(1), heads);
            }
        }
    }
    let vocab = g.tensor_info("token_embd.weight").map_or(0, |t| t.hf_shape()[0]);
    if let Ok(cfg) = build_config(&g, Dtype::F32, vocab, g.tensor_info("output.weight").is_none()) {
        let _ = ModelConfig::from_json(cfg);
    }
}

/// A config.json: the model config and its quantization_config.
pub fn config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(c) = ModelConfig::from_json(v.clone()) {
        assert!(c.q_dim() > 0 && c.kv_dim() > 0 && c.num_heads.is_multiple_of(c.num_kv_heads));
        let _ = c.family.scale_groups(c.num_kv_heads != c.num_heads);
    }
    if let Ok(Some(QuantScheme::Lowbit(q))) = QuantScheme::from_config(dir(), &v) {
        let back: crate::pack::LowbitQuantConfig = serde_json::from_value(serde_json::to_value(&q).expect("serializes")).expect("reparses");
        assert_eq!(back, q);
    }
    let _ = crate::quantize::module_meta(&v);
}

/// A quantized checkpoint in miniature: config JSON (with a `quantization_config`), [`SPLIT`],
/// then a safetensors file. Every packed module is read, dequantized (up to [`MAX_DECODE`]
/// weights), multiplied by a vector, and its tensors written and read back unchanged.
pub fn packed(data: &[u8]) {
    let parts = split(data);
    let [cfg, st] = parts[..] else { return };
    let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(cfg) else { return };
    let Ok(Some(scheme)) = QuantScheme::from_config(dir(), &cfg) else { return };
    let Ok(ck) = Checkpoint::from_buffers(dir(), vec![(dir().join("model.safetensors"), st.to_vec())]) else { return };
    let mut prefixes: BTreeSet<String> =
        ck.names().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".vq_indices"))).map(str::to_owned).collect();
    if let QuantScheme::Lowbit(c) = &scheme {
        prefixes.extend(c.modules.keys().chain(c.vq_modules.keys()).take(MAX_ITEMS).cloned());
    }
    for prefix in prefixes.iter().take(MAX_ITEMS) {
        let Ok(Some(s)) = scheme.read_any(&ck, prefix) else { continue };
        let _ = s.kind();
        round_trip(&s);
        let (o, i) = s.shape();
        assert!(o > 0 && i > 0, "{prefix}: empty {o}x{i}");
        if o.checked_mul(i).is_none_or(|n| n > MAX_DECODE) {
            continue;
        }
        if let Ok(w) = s.dequantize() {
            assert_eq!(w.len(), o * i, "{prefix}");
        }
        assert_eq!(s.dequant_matmul(&vec![1.0; i], 1).len(), o, "{prefix}");
        if let Stored::Group(p) = &s {
            let _ = p.storage_bits();
            // Repacking what was unpacked gives the same codes, scales and zero points (GPTQ may
            // move a zero point of 0 to the equivalent 1 with every code one higher: the same
            // weights).
            if let Ok(q) = p.unpack() {
                let layout = match p {
                    Packed::Awq(_) => crate::pack::Layout::Awq,
                    Packed::Gptq(_) => crate::pack::Layout::Gptq,
                    Packed::Lowbit(_) => crate::pack::Layout::Lowbit,
                };
                if let Ok(again) = Packed::pack(layout, &q) {
                    let q2 = again.unpack().expect("a packed GroupQ unpacks");
                    if layout == crate::pack::Layout::Gptq {
                        assert_eq!(q2.scales.len(), q.scales.len(), "{prefix}");
                        if o.checked_mul(i).is_some_and(|n| n <= MAX_DECODE) {
                            let (a, b) = (q2.dequantize(), q.dequantize());
                            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())), "{prefix}");
                        }
                    } else {
                        assert_eq!((&q2.codes, &q2.zeros, q2.scales.len()), (&q.codes, &q.zeros, q.scales.len()), "{prefix}");
                    }
                }
            }
        }
    }
}

/// Writes the tensors of `s` and reads them back: the bytes must come back unchanged.
fn round_trip(s: &Stored) {
    let p = "rt";
    let (t, back): (Vec<OutTensor>, Vec<OutTensor>) = match s {
        Stored::Group(Packed::Awq(a)) => {
            let t = a.to_tensors(p);
            let m = HfQuantMeta { bits: 4, group_size: a.group_size as i64 };
            let back = AwqPacked::from_tensors(&t, p, &m).expect("AWQ tensors read back").to_tensors(p);
            (t, back)
        }
        Stored::Group(Packed::Gptq(g)) => {
            let t = g.to_tensors(p);
            let m = HfQuantMeta { bits: g.bits, group_size: g.group_size as i64 };
            let back = GptqPacked::from_tensors(&t, p, &m).expect("GPTQ tensors read back").to_tensors(p);
            (t, back)
        }
        Stored::Group(Packed::Lowbit(l)) => {
            let t = l.to_tensors(p);
            let back = LowbitPacked::from_tensors(&t, p, &l.meta("rtn")).expect("lowbit tensors read back").to_tensors(p);
            (t, back)
        }
        Stored::Vq(v) => {
            let t = v.to_tensors(p);
            let back = VqPacked::from_tensors(&t, p, &v.meta("vptq")).expect("VQ tensors read back").to_tensors(p);
            (t, back)
        }
    };
    let key = |t: &[OutTensor]| t.iter().map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data.clone())).collect::<Vec<_>>();
    assert!(key(&t) == key(&back), "tensors of a packed module change when written and read back");
}
