//! `config.json` of a HF checkpoint, reduced to what the forward pass needs.

use crate::arch::Family;
use crate::rope::RopeScaling;
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
    /// The rope scaling rule (`rope_scaling` / `rope_parameters`).
    pub rope: RopeScaling,
    /// The model's position limit, if the config states one.
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v, on o, and on the MLP linears (from `attention_bias`/`mlp_bias`, or fixed by
    /// the family: qwen2's q/k/v always have one).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before rope (qwen3's `q_norm`/`k_norm`).
    pub qk_norm: bool,
    /// Sliding-window attention: the window and which layers use it.
    pub sliding: Sliding,
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
        // As transformers: the rope object in use (rope_scaling, else rope_parameters) keeps its own
        // rope_theta; the top-level rope_theta fills it in; 10000 is the class default.
        let rope_obj = ["rope_scaling", "rope_parameters"].iter().find_map(|k| raw.get(*k).filter(|v| !v.is_null()));
        let rope_theta = rope_obj
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| raw.get("rope_theta").and_then(Value::as_f64))
            .unwrap_or(10000.0);
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            bail!("\"rope_theta\" is {rope_theta}, expected a positive number");
        }
        let rope_theta = rope_theta as f32;
        check_keys(family, &raw)?;
        let max_position_embeddings = opt_usize(&raw, "max_position_embeddings")?;
        if max_position_embeddings == Some(0) {
            bail!("\"max_position_embeddings\" is 0");
        }
        let rope = RopeScaling::from_config(&raw, max_position_embeddings)?;
        let flag = |k: &str| -> Result<bool> {
            match raw.get(k) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => bail!("\"{k}\" is {v}, expected true or false"),
            }
        };
        let (attention_bias, mlp_bias) = (flag("attention_bias")?, flag("mlp_bias")?);
        let (qkv_bias, o_bias, mlp_bias) = match family {
            Family::Llama => (attention_bias, attention_bias, mlp_bias),
            Family::Qwen3 => (attention_bias, attention_bias, false),
            Family::Mistral => (false, false, false),
            Family::Qwen2 => (true, false, false),
        };
        let sliding = Sliding::from_config(family, &raw)?;
        let eps = match raw.get("rms_norm_eps") {
            None | Some(Value::Null) => 1e-6,
            Some(v) => v.as_f64().ok_or_else(|| anyhow!("\"rms_norm_eps\" is not a number"))?,
        };
        let cfg = Self {
            family,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: int("vocab_size")?,
            rms_norm_eps: eps as f32,
            rope_theta,
            rope,
            max_position_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: family == Family::Qwen3,
            sliding,
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

    /// Whether the decoder-layer linear `name` (e.g. `self_attn.q_proj`) has a bias.
    pub fn has_bias(&self, name: &str) -> bool {
        match name {
            "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => self.qkv_bias,
            "self_attn.o_proj" => self.o_bias,
            _ => self.mlp_bias,
        }
    }

    /// The longest sequence the model is defined for: `max_position_embeddings` (which already
    /// includes the extension of linear, llama3 and yarn scaling in the configs that carry them),
    /// times the factor for dynamic NTK, which exists to run past it. `None` when the config
    /// states no limit.
    pub fn max_positions(&self) -> Option<usize> {
        let p = self.max_position_embeddings?;
        Some(match self.rope {
            RopeScaling::Dynamic { factor, .. } => (p as f64 * factor.max(1.0)) as usize,
            _ => p,
        })
    }

    /// Refuse `n` positions per sequence beyond the model's limit; `what` names the option.
    pub fn check_positions(&self, n: usize, what: &str) -> Result<()> {
        match self.max_positions() {
            Some(lim) if n > lim => bail!(
                "{what} {n} exceeds the model's position limit of {lim} (max_position_embeddings{}); use at most {lim}",
                if matches!(self.rope, RopeScaling::Dynamic { .. }) { " × dynamic rope factor" } else { "" }
            ),
            _ => Ok(()),
        }
    }

    /// The attention window of layer `i` (`None`: full causal attention).
    pub fn window(&self, i: usize) -> Option<usize> {
        self.sliding.window(i)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn opt_usize(raw: &Value, k: &str) -> Result<Option<usize>> {
    match raw.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| anyhow!("\"{k}\" is {v}, expected a non-negative integer")),
    }
}

/// Sliding-window attention as the families configure it: mistral windows every layer when
/// `sliding_window` is set (class default 4096); qwen2/qwen3 window the layers from
/// `max_window_layers` on when `use_sliding_window` is true, or the layers an explicit
/// `layer_types` marks `sliding_attention`. A query at position i sees keys j with i − W < j ≤ i.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sliding {
    pub window: Option<usize>,
    /// Layers below this index attend fully (qwen2's `max_window_layers`).
    pub from_layer: usize,
    /// Explicit per-layer types (`true` = sliding), when the config lists them.
    pub layer_types: Option<Vec<bool>>,
}

impl Sliding {
    fn from_config(family: Family, raw: &Value) -> Result<Self> {
        let window = opt_usize(raw, "sliding_window")?;
        if window == Some(0) {
            bail!("\"sliding_window\" is 0");
        }
        let layer_types = match raw.get("layer_types") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(false),
                        Some("sliding_attention") => Ok(true),
                        _ => bail!("\"layer_types\" holds {t}, which lowbit does not implement (full_attention, sliding_attention)"),
                    })
                    .collect::<Result<Vec<bool>>>()?,
            ),
            Some(v) => bail!("\"layer_types\" is {v}, expected a list"),
        };
        Ok(match family {
            Family::Llama => {
                if window.is_some() {
                    bail!("\"sliding_window\" is set, but transformers' llama ignores it; lowbit refuses it rather than guess");
                }
                if layer_types.as_ref().is_some_and(|t| t.iter().any(|&s| s)) {
                    bail!("\"layer_types\" marks sliding layers, which the llama family does not have");
                }
                Sliding::default()
            }
            Family::Mistral => {
                if layer_types.is_some() {
                    bail!(
                        "\"layer_types\" on a mistral config is ignored by transformers' MistralModel; lowbit refuses it rather than guess"
                    );
                }
                // MistralConfig's class default is 4096 when the key is absent.
                let window = if raw.get("sliding_window").is_none() { Some(4096) } else { window };
                Sliding { window, from_layer: 0, layer_types: None }
            }
            Family::Qwen2 | Family::Qwen3 => {
                let use_sw = match raw.get("use_sliding_window") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => bail!("\"use_sliding_window\" is {v}, expected true or false"),
                };
                // The class default window (4096) applies when the key is absent.
                let window = if raw.get("sliding_window").is_none() { Some(4096) } else { window };
                let window = if use_sw { window } else { None };
                let from_layer = opt_usize(raw, "max_window_layers")?.unwrap_or(28);
                match (window, layer_types) {
                    (None, Some(t)) if t.iter().any(|&s| s) => {
                        bail!("\"layer_types\" marks sliding layers but \"use_sliding_window\"/\"sliding_window\" set no window")
                    }
                    (w, t) => Sliding { window: w, from_layer, layer_types: t },
                }
            }
        })
    }

    /// The window of layer `i`.
    pub fn window(&self, i: usize) -> Option<usize> {
        let w = self.window?;
        let sliding = match &self.layer_types {
            Some(t) => t.get(i).copied().unwrap_or(false),
            None => i >= self.from_layer,
        };
        sliding.then_some(w)
    }
}

/// Keys that do not change a causal LM's fp32 logits: ids, dtypes, bookkeeping, generation
/// defaults and training-only settings (dropout, init, tensor-parallel plans).
const INERT_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "_name_or_path",
    "_model_name_or_path",
    "name_or_path",
    "auto_map",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "hidden_dropout",
    "embd_pdrop",
    "resid_pdrop",
    "pretraining_tp",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "tokenizer_class",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "torchscript",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "cross_attention_hidden_size",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "task_specific_params",
    "prefix",
    "pruned_heads",
    "tf_legacy_loss",
    "use_bfloat16",
    "keys_to_ignore_at_inference",
    "base_model_tp_plan",
    "base_model_pp_plan",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "diversity_penalty",
    "transformers.js_config",
    "is_llama_config",
    "_attn_implementation_autoset",
    "attn_implementation",
    // Handled: the model's shape and the keys read above.
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "hidden_act",
    "quantization_config",
];

/// Refuse every key that would change the math and that lowbit does not implement. A key that is
/// not in [`INERT_KEYS`] passes only when it is null or false (i.e. switched off).
fn check_keys(family: Family, raw: &Value) -> Result<()> {
    let Some(obj) = raw.as_object() else { bail!("config is not a JSON object") };
    if let Some(act) = obj.get("hidden_act") {
        if act.as_str() != Some("silu") {
            bail!("\"hidden_act\" is {act}; lowbit implements silu only");
        }
    }
    if let Some(p) = obj.get("partial_rotary_factor") {
        if !(p.is_null() || p.as_f64() == Some(1.0)) {
            bail!("\"partial_rotary_factor\" is {p}; lowbit implements full rotary (1.0) only");
        }
    }
    if family == Family::Mistral && obj.get("attention_bias").is_some_and(|v| v.as_bool() == Some(true)) {
        bail!("\"attention_bias\" is true, but transformers' mistral has no attention biases; lowbit refuses it rather than guess");
    }
    if family == Family::Qwen2 && obj.get("attention_bias").is_some_and(|v| v.as_bool() == Some(false)) {
        bail!("\"attention_bias\" is false, but qwen2's q/k/v always carry biases; lowbit refuses it rather than guess");
    }
    for (k, v) in obj {
        if INERT_KEYS.contains(&k.as_str()) || k.starts_with("lowbit") || k == "partial_rotary_factor" {
            continue;
        }
        if matches!(v, Value::Null | Value::Bool(false)) {
            continue;
        }
        bail!(
            "config key \"{k}\" = {} is not implemented by lowbit's {} forward; refusing rather than ignoring it",
            crate::config::short(v),
            family.name()
        );
    }
    Ok(())
}

/// A JSON value for an error message, truncated to 80 characters.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}
