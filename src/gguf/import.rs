//! `lowbit import-gguf`: a llama-architecture GGUF file to a Hugging Face style checkpoint
//! directory (`model.safetensors`, `config.json`, tokenizer files): tensors renamed, the Q/K row
//! permutation of llama.cpp's converter undone, a config built from `llama.*` metadata unless one
//! is given.

use super::Gguf;
use crate::events::Events;
use crate::outdir::{OutDir, Source};
use crate::st_write::{write_atomic, write_safetensors, OutTensor};
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Map a llama.cpp tensor name to its Hugging Face Llama name.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undo llama.cpp's Q/K row permutation. `w` is `[rows, cols]` row-major (cols = 1 for a bias).
///
/// convert_hf_to_gguf computes `w.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2)`, so GGUF
/// row `h*hd + 2*j + i` holds HF row `h*hd + i*hd/2 + j`; this maps it back.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    let heads_even = n_head.checked_mul(2).is_some_and(|h2| h2 > 0 && rows.is_multiple_of(h2));
    if !heads_even || rows.checked_mul(cols) != Some(w.len()) {
        bail!("cannot unpermute {rows}x{cols} rows for {n_head} heads (rows must split into heads of even size)");
    }
    if w.is_empty() {
        // Nothing to move, and with 0 columns `rows` (read from the file) is unbounded.
        return Ok(Vec::new());
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let dst = (h * hd + i * half + j) * cols;
                let src = (h * hd + 2 * j + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Ok(out)
}

/// Options for [`import_gguf`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// tokenizer.json to copy (a tokenizer_config.json beside it is copied too).
    pub tokenizer: Option<PathBuf>,
    /// config.json to copy verbatim instead of building one from metadata.
    pub config: Option<PathBuf>,
    /// Output float dtype: F32 (default), F16 or BF16.
    pub dtype: Dtype,
    /// Replace `out` if it exists.
    pub force: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { tokenizer: None, config: None, dtype: Dtype::F32, force: false }
    }
}

/// What [`import_gguf`] did (`import-gguf --json` prints it as one object).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    pub tensors: usize,
    pub params: u64,
    /// Count of source tensors per ggml type name.
    pub ggml_types: BTreeMap<String, usize>,
    /// GGUF tensors that were skipped (not model weights, e.g. rope_freqs).
    pub skipped: Vec<String>,
    pub tied_embeddings: bool,
    pub config_from_metadata: bool,
    pub tokenizer_copied: bool,
    /// Size of the written model.safetensors.
    pub safetensors_bytes: u64,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<String> = self.ggml_types.iter().map(|(t, n)| format!("{t}×{n}")).collect();
        write!(
            f,
            "{}: {} tensors, {} params (from {}), {:.1} MB safetensors, config {}{}",
            self.out.display(),
            self.tensors,
            self.params,
            types.join(" "),
            self.safetensors_bytes as f64 / 1e6,
            if self.config_from_metadata { "built from metadata" } else { "copied" },
            if self.tied_embeddings { ", tied embeddings" } else { "" },
        )
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Import a llama-architecture GGUF file into an HF checkpoint directory `out`
/// (`model.safetensors`, `config.json`, and the tokenizer files if given).
///
/// Everything is written into a temporary directory beside `out` and renamed into place at the
/// end; `out` must not exist unless `opts.force`. Warnings and the skipped tensors go to `ev`.
pub fn import_gguf(gguf: &Path, out: &Path, opts: &ImportOptions, ev: &mut dyn Events) -> Result<ImportReport> {
    if !matches!(opts.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        bail!("{}: output dtype {:?} not supported (F32, F16 or BF16)", out.display(), opts.dtype);
    }
    // The output is checked against the inputs and locked before any work.
    let tok_cfg = opts.tokenizer.as_ref().map(|p| p.with_file_name("tokenizer_config.json"));
    let mut inputs = vec![Source::new(gguf, "GGUF file")];
    if let Some(p) = &opts.tokenizer {
        inputs.push(Source::new(p, "tokenizer"));
    }
    if let Some(p) = &tok_cfg {
        inputs.push(Source::new(p, "tokenizer config"));
    }
    if let Some(p) = &opts.config {
        inputs.push(Source::new(p, "config"));
    }
    let mut od = OutDir::begin(out, "import-gguf", opts.force, &inputs)?;
    let g = Gguf::open(gguf)?;
    let arch = g.get_str("general.architecture")?.unwrap_or("");
    if arch != "llama" {
        return Err(g.fail(format_args!("architecture \"{}\" not supported (only llama)", crate::escape::text(arch))));
    }
    let req_u32 =
        |key: &str| -> Result<usize> { Ok(g.get_u32(key)?.ok_or_else(|| g.fail(format_args!("missing metadata {key}")))? as usize) };
    let n_head = req_u32("llama.attention.head_count")?;
    let n_head_kv = g.get_u32("llama.attention.head_count_kv")?.map_or(n_head, |v| v as usize);

    // Map every name up front (None = skipped) so an unknown tensor fails before the slow part.
    let plan = g
        .tensors()
        .iter()
        .map(|info| {
            let name = &info.name;
            if name == "rope_freqs.weight" || name.ends_with(".attn_rot_embd") {
                return Ok((info, None));
            }
            let hf = hf_name(name)
                .ok_or_else(|| g.fail(format_args!("tensor {} has no Hugging Face Llama equivalent", crate::escape::text(name))))?;
            Ok((info, Some(hf)))
        })
        .collect::<Result<Vec<_>>>()?;
    let embd = g.tensor_info("token_embd.weight").ok_or_else(|| g.fail("no token_embd.weight tensor"))?;
    let tied = g.tensor_info("output.weight").is_none();
    // Read/build the small files first so a bad path fails before the slow part.
    let config = match &opts.config {
        Some(p) => std::fs::read(p).with_context(|| format!("{}: cannot read config", p.display()))?,
        None => {
            let vocab = embd.hf_shape()[0];
            let mut c = serde_json::to_string_pretty(&build_config(&g, opts.dtype, vocab, tied)?)?.into_bytes();
            c.push(b'\n');
            c
        }
    };
    let tok = match &opts.tokenizer {
        Some(p) => {
            let json = std::fs::read(p).with_context(|| format!("{}: cannot read tokenizer", p.display()))?;
            let cfg_path = tok_cfg.clone().unwrap_or_default();
            let cfg = match cfg_path.is_file() {
                true => Some(std::fs::read(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?),
                false => None,
            };
            Some((json, cfg))
        }
        None => {
            ev.warn(&format!(
                "{}: no --tokenizer given; copy a tokenizer.json into {} before `lowbit eval` or `lowbit quantize` reads text",
                crate::escape::path(gguf),
                crate::escape::path(out)
            ));
            None
        }
    };

    // Dequantize and rename tensor by tensor.
    let mut outs = Vec::with_capacity(g.tensors().len());
    let mut report = ImportReport {
        out: out.to_path_buf(),
        tensors: 0,
        params: 0,
        ggml_types: BTreeMap::new(),
        skipped: Vec::new(),
        tied_embeddings: tied,
        config_from_metadata: opts.config.is_none(),
        tokenizer_copied: opts.tokenizer.is_some(),
        safetensors_bytes: 0,
    };
    for (info, hf) in plan {
        let name = &info.name;
        let Some(hf) = hf else {
            ev.note(&format!("{}: skipping {} (not a model weight)", crate::escape::path(gguf), crate::escape::text(name)));
            report.skipped.push(name.clone());
            continue;
        };
        let (shape, mut data) = g.tensor_f32(name)?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(g.fail(format_args!("tensor {}: non-finite value {} at index {i}", crate::escape::text(name), data[i])));
        }
        let heads = if name.contains(".attn_q.") {
            Some(n_head)
        } else if name.contains(".attn_k.") {
            Some(n_head_kv)
        } else {
            None
        };
        if let Some(h) = heads {
            let cols = shape.get(1).copied().unwrap_or(1);
            data =
                unpermute_rows(&data, shape[0], cols, h).map_err(|e| g.fail(format_args!("tensor {}: {e}", crate::escape::text(name))))?;
        }
        *report.ggml_types.entry(info.ty.name()).or_default() += 1;
        report.params += data.len() as u64;
        outs.push(OutTensor::float(hf, opts.dtype, shape, &data));
    }
    report.tensors = outs.len();

    // Write into a temporary directory beside `out`, then move it into place.
    let tmp = od.create_tmp(ev)?.to_path_buf();
    let st = tmp.join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    crate::st_write::check_finite_output(&outs)?;
    write_safetensors(&st, &outs, Some(meta))?;
    drop(outs);
    report.safetensors_bytes = std::fs::metadata(&st).map(|m| m.len()).unwrap_or(0);
    write_atomic(&tmp.join("config.json"), &config)?;
    if let Some((json, cfg)) = tok {
        write_atomic(&tmp.join("tokenizer.json"), &json)?;
        if let Some(cfg) = cfg {
            write_atomic(&tmp.join("tokenizer_config.json"), &cfg)?;
        }
    }
    od.commit(ev)?;
    Ok(report)
}

/// Build an HF LlamaConfig (config.json) from `llama.*` metadata, as [`import_gguf`] does when
/// no config is given; `vocab` is the embedding's row count.
pub fn build_config(g: &Gguf, dtype: Dtype, vocab: usize, tied: bool) -> Result<Json> {
    let req = |key: &str| -> Result<u64> { g.get_u64(key)?.ok_or_else(|| g.fail(format_args!("missing metadata {key}"))) };
    let hidden = req("llama.embedding_length")?;
    let heads = req("llama.attention.head_count")?;
    if heads == 0 {
        return Err(g.fail("llama.attention.head_count is 0"));
    }
    let kv_heads = g.get_u64("llama.attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = g.get_u64("llama.attention.key_length")?.unwrap_or(hidden / heads);
    let eps = g.get_f32("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    let theta = g.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0);
    let mut c = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": req("llama.feed_forward_length")?,
        "num_hidden_layers": req("llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": f64::from(eps),
        "rope_theta": f64::from(theta),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype_name(dtype),
        "attention_bias": g.tensor_info("blk.0.attn_q.bias").is_some(),
        "mlp_bias": false,
    });
    let obj = c.as_object_mut().expect("json! object");
    if let Some(ctx) = g.get_u64("llama.context_length")? {
        obj.insert("max_position_embeddings".into(), ctx.into());
    }
    for (hf, key) in [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")] {
        if let Some(id) = g.get_u64(key)? {
            obj.insert(hf.into(), id.into());
        }
    }
    Ok(c)
}
