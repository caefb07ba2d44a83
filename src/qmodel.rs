//! Opening checkpoints that may be quantized, and describing them (`lowbit inspect`).

use crate::config::ModelConfig;
use crate::model::Model;
use crate::pack::vq::VqPacked;
use crate::pack::{AwqPacked, GptqPacked, HfQuantMeta, LowbitPacked, LowbitQuantConfig, Packed, PackedLayout, RawTensor, TensorSource};
use crate::weights::Checkpoint;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

impl TensorSource for Checkpoint {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let (info, data) = Checkpoint::raw(self, name).ok()?;
        Some(RawTensor { dtype: info.dtype, shape: info.shape.clone(), data })
    }
}

/// How the packed linears of a checkpoint are stored, from its quantization_config.
#[derive(Clone, Debug)]
pub enum QuantScheme {
    Lowbit(LowbitQuantConfig),
    Awq(HfQuantMeta),
    /// The base bits / group size and GPTQModel's per-module `dynamic` rules, in order.
    Gptq(HfQuantMeta, Vec<DynamicRule>),
}

/// One entry of GPTQModel's `quantization_config.dynamic`: `"+:REGEX"` (or a bare `REGEX`)
/// overrides bits / group size of the modules it matches, `"-:REGEX"` leaves them unquantized.
/// The first matching rule applies; REGEX matches from the start of the module name (Python's
/// `re.match`).
#[derive(Clone, Debug)]
pub struct DynamicRule {
    pub skip: bool,
    pub pattern: regex::Regex,
    pub bits: Option<u8>,
    pub group_size: Option<i64>,
}

/// Parses `quantization_config.dynamic`; keys other than bits, group_size, desc_act and sym
/// (which do not change how the tensors are read) are refused by name.
fn parse_dynamic(v: Option<&serde_json::Value>, bad: &dyn Fn(&str) -> anyhow::Error) -> Result<Vec<DynamicRule>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let map = v.as_object().ok_or_else(|| bad("dynamic is not an object"))?;
    let mut rules = Vec::new();
    for (k, o) in map {
        let (skip, re) = match (k.strip_prefix("-:"), k.strip_prefix("+:")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => (false, k.as_str()),
        };
        let pattern = regex::Regex::new(&format!("^(?:{re})")).map_err(|e| bad(&format!("dynamic {k:?}: invalid regex: {e}")))?;
        let o = o.as_object().ok_or_else(|| bad(&format!("dynamic {k:?}: not an object")))?;
        let (mut bits, mut group_size) = (None, None);
        for (key, val) in o {
            match key.as_str() {
                "bits" => {
                    let b = val.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or_else(|| bad(&format!("dynamic {k:?}: bits {val}")))?;
                    bits = Some(b);
                }
                "group_size" => group_size = Some(val.as_i64().ok_or_else(|| bad(&format!("dynamic {k:?}: group_size {val}")))?),
                "desc_act" | "sym" => {}
                other => return Err(bad(&format!("dynamic {k:?}: key \"{other}\" is not supported (bits, group_size, desc_act, sym)"))),
            }
        }
        rules.push(DynamicRule { skip, pattern, bits, group_size });
    }
    Ok(rules)
}

impl QuantScheme {
    pub fn from_config(dir: &Path, cfg: &serde_json::Value) -> Result<Option<Self>> {
        let Some(q) = cfg.get("quantization_config") else { return Ok(None) };
        let bad = |what: &str| anyhow!("{}: quantization_config: {what}", dir.join("config.json").display());
        let method = q.get("quant_method").and_then(|m| m.as_str()).ok_or_else(|| bad("missing quant_method"))?;
        let hf = || -> Result<HfQuantMeta> {
            let bits = q.get("bits").and_then(|b| b.as_u64()).ok_or_else(|| bad("missing bits"))?;
            let bits = u8::try_from(bits).map_err(|_| bad(&format!("bits {bits} out of range")))?;
            let group_size = q.get("group_size").and_then(|b| b.as_i64()).ok_or_else(|| bad("missing group_size"))?;
            Ok(HfQuantMeta { bits, group_size })
        };
        Ok(Some(match method {
            "lowbit" => QuantScheme::Lowbit(serde_json::from_value(q.clone()).map_err(|e| bad(&e.to_string()))?),
            "awq" => QuantScheme::Awq(hf()?),
            "gptq" => QuantScheme::Gptq(hf()?, parse_dynamic(q.get("dynamic"), &bad)?),
            m => return Err(bad(&format!("unsupported quant_method \"{m}\" (lowbit, awq, gptq)"))),
        }))
    }

    /// Read the stored tensors of one quantized linear (None when it is not quantized).
    pub fn read_any(&self, src: &dyn TensorSource, prefix: &str) -> Result<Option<Stored>> {
        if let QuantScheme::Lowbit(c) = self {
            if let Some(meta) = c.vq_modules.get(prefix) {
                return Ok(Some(Stored::Vq(VqPacked::from_tensors(src, prefix, meta)?)));
            }
        }
        Ok(self.read(src, prefix)?.map(Stored::Group))
    }

    /// Read the packed tensors of one group-quantized linear (None when it is not packed).
    pub fn read(&self, src: &dyn TensorSource, prefix: &str) -> Result<Option<Packed>> {
        if src.raw(&format!("{prefix}.qweight")).is_none() {
            return Ok(None);
        }
        Ok(Some(match self {
            QuantScheme::Lowbit(c) => {
                let meta =
                    c.modules.get(prefix).ok_or_else(|| anyhow!("{prefix}: packed but not listed in quantization_config.modules"))?;
                Packed::Lowbit(LowbitPacked::from_tensors(src, prefix, meta)?)
            }
            QuantScheme::Awq(m) => Packed::Awq(AwqPacked::from_tensors(src, prefix, m)?),
            QuantScheme::Gptq(m, dynamic) => {
                let mut m = *m;
                match dynamic.iter().find(|r| r.pattern.is_match(prefix)) {
                    Some(r) if r.skip => anyhow::bail!("{prefix}: packed, but quantization_config.dynamic leaves it unquantized"),
                    Some(r) => m = HfQuantMeta { bits: r.bits.unwrap_or(m.bits), group_size: r.group_size.unwrap_or(m.group_size) },
                    None => {}
                }
                Packed::Gptq(GptqPacked::from_tensors(src, prefix, &m)?)
            }
        }))
    }
}

/// A quantized linear as stored: a group-quantized layout or the VQ layout.
pub enum Stored {
    Group(Packed),
    Vq(VqPacked),
}

impl Stored {
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Stored::Group(p) => p.unpack()?.dequantize(),
            Stored::Vq(v) => v.unpack()?.dequantize(),
        })
    }
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Stored::Group(p) => p.shape(),
            Stored::Vq(v) => v.shape(),
        }
    }
    pub fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self {
            Stored::Group(p) => p.dequant_matmul(x, rows),
            Stored::Vq(v) => v.dequant_matmul(x, rows),
        }
    }
    /// A short description, e.g. `lowbit 4-bit g128 affine` or `vq v4 k256`.
    pub fn kind(&self) -> String {
        match self {
            Stored::Group(Packed::Lowbit(l)) => {
                format!("lowbit {}-bit g{} {}", l.bits, l.group_size, crate::pack::lowbit::grid_name::name(l.grid))
            }
            Stored::Group(Packed::Awq(a)) => format!("awq 4-bit g{}", a.group_size),
            Stored::Group(Packed::Gptq(g)) => format!("gptq {}-bit g{}", g.bits, g.group_size),
            Stored::Vq(v) => {
                let m = v.meta("");
                format!(
                    "vq v{} k{}{}",
                    m.vector_len,
                    m.n_centroids,
                    if m.n_res_centroids > 0 { format!(" +res{}", m.n_res_centroids) } else { String::new() }
                )
            }
        }
    }
}

/// Open a plain or quantized checkpoint for the forward pass. Packed linears are dequantized
/// from their packed bytes each time a layer is loaded.
pub fn open(dir: &Path) -> Result<Model> {
    if crate::gguf::load::is_gguf(dir) {
        return crate::gguf::load::open(dir);
    }
    crate::model::check_model_dir(dir)?;
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let scheme = QuantScheme::from_config(dir, &cfg.raw)?;
    let m = Model::open_dense_unchecked(dir)?;
    let m = match scheme {
        None => m,
        Some(s) => {
            let d = dir.display().to_string();
            m.with_packed(Box::new(move |ck: &Checkpoint, prefix: &str| -> Result<Option<Vec<f32>>> {
                match s.read_any(ck, prefix).map_err(|e| anyhow!("{d}: {e:#}"))? {
                    None => Ok(None),
                    Some(p) => Ok(Some(p.dequantize().map_err(|e| anyhow!("{d}: {prefix}: {e:#}"))?)),
                }
            }))
        }
    };
    m.check_tensors()?;
    Ok(m)
}

#[derive(Serialize, Default)]
pub struct DtypeStat {
    pub tensors: usize,
    pub bytes: usize,
}

#[derive(Serialize)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Logical weights this entry stands for.
    pub params: usize,
    /// Stored bits (all tensors of the entry) per logical weight.
    pub bits_per_weight: f64,
}

#[derive(Serialize)]
pub struct InspectReport {
    pub model: String,
    pub model_type: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub parameters: usize,
    pub total_bytes: usize,
    /// Every stored byte × 8 / every parameter ([`crate::pack::SizeCount`], as quantize counts).
    pub bits_per_weight: f64,
    /// Stored bits per weight of the packed linears (absent without any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linear_bits_per_weight: Option<f64>,
    pub quantization: Option<serde_json::Value>,
    pub dtypes: BTreeMap<String, DtypeStat>,
    pub tensors: Vec<TensorReport>,
}

pub fn inspect(dir: &Path) -> Result<InspectReport> {
    if crate::gguf::load::is_gguf(dir) {
        return crate::gguf::load::inspect(dir);
    }
    crate::model::check_model_dir(dir)?;
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let ck = Checkpoint::open(dir)?;
    let scheme = QuantScheme::from_config(dir, &cfg.raw)?;
    let mut dtypes: BTreeMap<String, DtypeStat> = BTreeMap::new();
    let mut tensors = Vec::new();
    // Packed modules: the prefixes of `.qweight` / `.vq_indices` tensors, read through the
    // quantization_config for their shapes.
    let mut modules: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let prefixes: Vec<String> =
        ck.names().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".vq_indices"))).map(str::to_owned).collect();
    if let Some(s) = &scheme {
        for prefix in prefixes {
            let p = s
                .read_any(&ck, &prefix)
                .map_err(|e| anyhow!("{}: {e:#}", dir.display()))?
                .ok_or_else(|| anyhow!("{prefix}: not listed in quantization_config"))?;
            modules.insert(prefix.clone(), p.shape());
            kinds.insert(prefix, p.kind());
        }
    }
    let mut module_bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, info) in ck.tensors() {
        let b = info.nbytes();
        let e = dtypes.entry(format!("{:?}", info.dtype)).or_default();
        e.tensors += 1;
        e.bytes += b;
        if let Some(p) = crate::pack::packed_module_of(name, |p| modules.contains_key(p)) {
            *module_bytes.entry(p).or_default() += b as u64;
            continue;
        }
        let n = info.shape.iter().product::<usize>();
        tensors.push(TensorReport {
            name: name.clone(),
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            params: n,
            bits_per_weight: 8.0 * b as f64 / n.max(1) as f64,
        });
    }
    for (prefix, bytes) in module_bytes {
        let (o, i) = modules[prefix];
        tensors.push(TensorReport {
            name: prefix.to_string(),
            dtype: kinds[prefix].clone(),
            shape: vec![o, i],
            params: o * i,
            bits_per_weight: 8.0 * bytes as f64 / (o * i) as f64,
        });
    }
    let size = crate::pack::SizeCount::of(ck.tensors().iter().map(|(n, t)| (n.as_str(), t.shape.as_slice(), t.nbytes() as u64)), &modules);
    let (params, bytes) = (size.params as usize, size.bytes as usize);
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(InspectReport {
        model: dir.display().to_string(),
        model_type: cfg.raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string(),
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        heads: cfg.num_heads,
        kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        vocab_size: cfg.vocab_size,
        tie_word_embeddings: cfg.tie_word_embeddings,
        parameters: params,
        total_bytes: bytes,
        bits_per_weight: size.model_bpw(),
        linear_bits_per_weight: (size.linear_weights > 0).then(|| size.linear_bpw()),
        quantization: cfg.raw.get("quantization_config").map(|q| {
            let mut q = q.clone();
            if let Some(o) = q.as_object_mut() {
                o.remove("modules");
                o.remove("vq_modules");
            }
            q
        }),
        dtypes,
        tensors,
    })
}

impl InspectReport {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let w = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
        w(&mut s, "model", self.model.clone());
        w(
            &mut s,
            "architecture",
            format!(
                "{} ({} layers, hidden {}, ffn {}, heads {}/{} kv, head_dim {})",
                self.model_type, self.layers, self.hidden_size, self.intermediate_size, self.heads, self.kv_heads, self.head_dim
            ),
        );
        w(&mut s, "vocab", format!("{}{}", self.vocab_size, if self.tie_word_embeddings { " (tied embeddings)" } else { "" }));
        w(&mut s, "parameters", format!("{}", self.parameters));
        w(&mut s, "size", format!("{} ({:.3} bits per weight)", crate::mem::fmt_bytes(self.total_bytes as u64), self.bits_per_weight));
        if let Some(q) = &self.quantization {
            w(&mut s, "quantization", q.to_string());
        }
        for (d, st) in &self.dtypes {
            w(&mut s, &format!("  {d}"), format!("{} tensors, {}", st.tensors, crate::mem::fmt_bytes(st.bytes as u64)));
        }
        let packed: Vec<&TensorReport> = self.tensors.iter().filter(|t| t.dtype.contains("-bit") || t.dtype.starts_with("vq ")).collect();
        if !packed.is_empty() {
            let n: usize = packed.iter().map(|t| t.params).sum();
            let bpw = self.linear_bits_per_weight.unwrap_or(0.0);
            w(&mut s, "packed linears", format!("{} modules, {} weights, {:.3} bits per weight", packed.len(), n, bpw));
            for t in packed.iter().take(7) {
                s.push_str(&format!("  {:<40}{} {:?} {:.3} bpw\n", t.name, t.dtype, t.shape, t.bits_per_weight));
            }
            if packed.len() > 7 {
                w(&mut s, "  ...", "(--json lists every tensor)".into());
            }
        }
        s
    }
}
