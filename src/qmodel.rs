//! Opening checkpoints that may be quantized, and describing them (`lowbit inspect`).

use crate::config::ModelConfig;
use crate::model::Model;
use crate::pack::{RawTensor, TensorSource};
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

pub use crate::pack::scheme::{DynamicRule, QuantScheme, Stored};

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
