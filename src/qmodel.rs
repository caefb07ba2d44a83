//! Opening checkpoints that may be quantized, and describing them (`lowbit inspect`).

use crate::config::ModelConfig;
use crate::model::Model;
use crate::weights::{dtype_size, Checkpoint};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Open a plain or quantized checkpoint for the forward pass. Packed linears are dequantized
/// from their packed bytes each time a layer is loaded.
pub fn open(dir: &Path) -> Result<Model> {
    Model::open_dense(dir)
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
    pub bits_per_weight: f64,
    pub quantization: Option<serde_json::Value>,
    pub dtypes: BTreeMap<String, DtypeStat>,
    pub tensors: Vec<TensorReport>,
}

pub fn inspect(dir: &Path) -> Result<InspectReport> {
    let cfg = ModelConfig::load(&dir.join("config.json"))?;
    let ck = Checkpoint::open(dir)?;
    let mut dtypes: BTreeMap<String, DtypeStat> = BTreeMap::new();
    let mut tensors = Vec::new();
    let (mut params, mut bytes) = (0usize, 0usize);
    for (name, info) in ck.tensors() {
        let b = info.shape.iter().product::<usize>() * dtype_size(info.dtype).unwrap_or(0);
        let e = dtypes.entry(format!("{:?}", info.dtype)).or_default();
        e.tensors += 1;
        e.bytes += b;
        bytes += b;
        let n = info.shape.iter().product::<usize>();
        params += n;
        tensors.push(TensorReport { name: name.clone(), dtype: format!("{:?}", info.dtype), shape: info.shape.clone(), params: n, bits_per_weight: 8.0 * b as f64 / n.max(1) as f64 });
    }
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
        bits_per_weight: 8.0 * bytes as f64 / params.max(1) as f64,
        quantization: cfg.raw.get("quantization_config").cloned(),
        dtypes,
        tensors,
    })
}

impl InspectReport {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let w = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
        w(&mut s, "model", self.model.clone());
        w(&mut s, "architecture", format!("{} ({} layers, hidden {}, ffn {}, heads {}/{} kv, head_dim {})", self.model_type, self.layers, self.hidden_size, self.intermediate_size, self.heads, self.kv_heads, self.head_dim));
        w(&mut s, "vocab", format!("{}{}", self.vocab_size, if self.tie_word_embeddings { " (tied embeddings)" } else { "" }));
        w(&mut s, "parameters", format!("{}", self.parameters));
        w(&mut s, "size", format!("{} ({:.3} bits per weight)", crate::mem::fmt_bytes(self.total_bytes as u64), self.bits_per_weight));
        if let Some(q) = &self.quantization {
            w(&mut s, "quantization", q.to_string());
        }
        for (d, st) in &self.dtypes {
            w(&mut s, &format!("  {d}"), format!("{} tensors, {}", st.tensors, crate::mem::fmt_bytes(st.bytes as u64)));
        }
        s
    }
}
