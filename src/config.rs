//! `config.json` of a HF checkpoint, reduced to what the forward pass needs.

use crate::arch::Family;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    /// The raw JSON, kept so outputs can copy it with a quantization_config added.
    pub raw: Value,
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
        Self::from_json(raw).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    pub fn from_json(raw: Value) -> Result<Self> {
        let model_type = raw.get("model_type").and_then(Value::as_str).ok_or_else(|| anyhow!("missing field \"model_type\""))?;
        let family = Family::from_model_type(model_type)?;
        let int = |k: &str| -> Result<usize> {
            raw.get(k).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| anyhow!("missing or non-integer field \"{k}\""))
        };
        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        let num_kv_heads = raw.get("num_key_value_heads").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(num_heads);
        let head_dim = match raw.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None => hidden_size / num_heads.max(1),
        };
        let rope_theta = raw
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| raw.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10000.0) as f32;
        let cfg = Self {
            family,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: int("vocab_size")?,
            rms_norm_eps: match raw.get("rms_norm_eps") {
                None => 1e-6,
                Some(v) => v.as_f64().ok_or_else(|| anyhow!("\"rms_norm_eps\" is not a number"))? as f32,
            },
            rope_theta,
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            raw,
        };
        if cfg.num_heads == 0 || cfg.num_kv_heads == 0 || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads) {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", cfg.num_heads, cfg.num_kv_heads);
        }
        if !cfg.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even for RoPE", cfg.head_dim);
        }
        for (k, v) in [("hidden_size", cfg.hidden_size), ("intermediate_size", cfg.intermediate_size), ("vocab_size", cfg.vocab_size)] {
            if v == 0 {
                bail!("\"{k}\" is 0");
            }
        }
        // RMSNorm divides by sqrt(mean(x²) + eps): eps ≤ 0 can divide by zero (or take the root
        // of a negative number) on a zero row.
        if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
            bail!("\"rms_norm_eps\" must be a positive number that fits f32 (got {})", cfg.raw["rms_norm_eps"]);
        }
        if cfg.head_dim == 0 {
            bail!("head_dim is 0 (hidden_size {} < num_attention_heads {}?)", cfg.hidden_size, cfg.num_heads);
        }
        // Every weight the forward pass forms must have an f32 size that fits in memory's
        // address space; overflowing products would otherwise wrap.
        let f32_bytes = |a: usize, b: usize| a.checked_mul(b).and_then(|n| n.checked_mul(4));
        let q_dim = cfg.num_heads.checked_mul(cfg.head_dim);
        let kv_dim = cfg.num_kv_heads.checked_mul(cfg.head_dim);
        let fits = match (q_dim, kv_dim) {
            (Some(q), Some(kv)) => {
                [(q, cfg.hidden_size), (kv, cfg.hidden_size), (cfg.intermediate_size, cfg.hidden_size), (cfg.vocab_size, cfg.hidden_size)]
                    .iter()
                    .all(|&(a, b)| f32_bytes(a, b).is_some())
            }
            _ => false,
        };
        if !fits {
            bail!(
                "dimensions too large: hidden_size {}, intermediate_size {}, vocab_size {}, {} heads of head_dim {}",
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.vocab_size,
                cfg.num_heads,
                cfg.head_dim
            );
        }
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
