//! `lowbit quantize --format gguf`: one GGUF v3 file that llama.cpp loads as its own, from the
//! quantized layers of the pipeline (the blocks of every linear, carried as
//! [`crate::pack::gguf`] tensors), the float norms, and the token embedding / output tensors
//! quantized here with their own types.
//!
//! Written as llama.cpp's `convert_hf_to_gguf.py` + `llama-quantize` write a Llama:
//! * tensor names `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output` (absent when the
//!   embeddings are tied); 1-D tensors in F32;
//! * Q and K rows permuted per head (`reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`), which
//!   [`super::unpermute_rows`] undoes; rows are independent blocks, so quantized rows are moved
//!   whole;
//! * `llama.*` hyperparameters, rope (`rope.freq_base`, linear scaling as
//!   `rope.scaling.type/factor`, llama3 scaling as the `rope_freqs` tensor);
//! * the tokenizer from tokenizer.json: GPT-2 style byte-level BPE (`gpt2`, tokens, types,
//!   merges, `pre` recognised from the pre-tokenizer) or SentencePiece-style byte-fallback BPE
//!   (`llama`, tokens, scores from the merge ranks, types), special ids from
//!   tokenizer_config.json, `add_bos_token` from what the tokenizer itself does.
//!
//! Families other than llama / mistral, and config keys llama.cpp's llama architecture cannot
//! express (biases, sliding window, rope scaling other than linear / llama3), are refused by name.

use super::write::{GgufWriter, WTensor};
use super::{GgmlType, Value};
use crate::config::ModelConfig;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::path::Path;

/// llama.cpp's name of an HF Llama tensor (`model.layers.3.mlp.up_proj.weight` → `blk.3.ffn_up.weight`).
pub fn gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match stem {
        "model.embed_tokens" => Some("token_embd"),
        "model.norm" => Some("output_norm"),
        "lm_head" => Some("output"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{suffix}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match part {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// The row order llama.cpp's converter gives Q (`n_head`) or K (`n_head_kv`): GGUF row `i` is
/// HF row `perm[i]` (GGUF row `h·hd + 2j + i` holds HF row `h·hd + i·hd/2 + j`).
pub fn qk_row_perm(rows: usize, n_head: usize) -> Vec<usize> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut perm = vec![0; rows];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                perm[h * hd + 2 * j + i] = h * hd + i * half + j;
            }
        }
    }
    perm
}

/// Heads whose rows the converter permutes for a linear (`None`: not permuted).
pub fn permuted_heads(cfg: &ModelConfig, linear: &str) -> Option<usize> {
    match linear {
        "self_attn.q_proj" => Some(cfg.num_heads),
        "self_attn.k_proj" => Some(cfg.num_kv_heads),
        _ => None,
    }
}

/// The rope-scaling object of a config: `rope_scaling`, or transformers 5's `rope_parameters`
/// when its `rope_type` is not `default`.
fn rope_scaling(raw: &Json) -> Option<&Json> {
    let typ = |v: &Json| v.get("rope_type").or_else(|| v.get("type")).and_then(Json::as_str).map(str::to_string);
    raw.get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| raw.get("rope_parameters").filter(|v| typ(v).is_some_and(|t| t != "default")))
}

/// Refuse what llama.cpp's llama architecture (as lowbit writes it) cannot express, naming the
/// config key. `cfg_path` names config.json in the message.
pub fn check_exportable(cfg: &ModelConfig, cfg_path: &Path) -> Result<()> {
    let p = cfg_path.display();
    let raw = &cfg.raw;
    let mt = raw.get("model_type").and_then(Json::as_str).unwrap_or("");
    if !matches!(mt, "llama" | "mistral") {
        bail!("{p}: model_type \"{mt}\": GGUF export supports the llama family only (llama, mistral)");
    }
    for k in ["attention_bias", "mlp_bias"] {
        if raw.get(k).and_then(Json::as_bool) == Some(true) {
            bail!("{p}: {k} true: GGUF export of biased llama layers is not implemented");
        }
    }
    if let Some(w) = raw.get("sliding_window").filter(|v| !v.is_null()) {
        bail!("{p}: sliding_window {w}: llama.cpp's llama architecture has no sliding-window attention; refusing to export");
    }
    if let Some(rs) = rope_scaling(raw) {
        let t = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str).unwrap_or("");
        if !matches!(t, "linear" | "llama3" | "default") {
            bail!("{p}: rope_scaling.rope_type \"{t}\": GGUF export writes linear and llama3 rope scaling only");
        }
        if t == "linear" && rs.get("factor").and_then(Json::as_f64).is_none() {
            bail!("{p}: rope_scaling.factor missing for linear rope scaling");
        }
    }
    Ok(())
}

/// `general.file_type` (llama_ftype) for a base block type.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11, // Q3_K_S: "mostly Q3_K"
        GgmlType::Q4_K => 14, // Q4_K_S
        GgmlType::Q5_K => 16, // Q5_K_S
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// Architecture and hyperparameters (`general.*`, `llama.*`).
pub fn put_hparams(w: &mut GgufWriter, cfg: &ModelConfig, name: &str, base: GgmlType) {
    let raw = &cfg.raw;
    w.str("general.architecture", "llama");
    w.str("general.type", "model");
    w.str("general.name", name);
    w.u32("general.quantization_version", 2);
    w.u32("general.file_type", file_type(base));
    let ctx = raw.get("max_position_embeddings").and_then(Json::as_u64).unwrap_or(2048);
    w.u32("llama.context_length", ctx as u32);
    w.u32("llama.embedding_length", cfg.hidden_size as u32);
    w.u32("llama.block_count", cfg.num_layers as u32);
    w.u32("llama.feed_forward_length", cfg.intermediate_size as u32);
    w.u32("llama.attention.head_count", cfg.num_heads as u32);
    w.u32("llama.attention.head_count_kv", cfg.num_kv_heads as u32);
    w.f32("llama.rope.freq_base", cfg.rope_theta);
    w.f32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps);
    w.u32("llama.vocab_size", cfg.vocab_size as u32);
    w.u32("llama.rope.dimension_count", cfg.head_dim as u32);
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        w.u32("llama.attention.key_length", cfg.head_dim as u32);
        w.u32("llama.attention.value_length", cfg.head_dim as u32);
    }
    if let Some(rs) = rope_scaling(raw) {
        let t = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str).unwrap_or("");
        if t == "linear" {
            w.str("llama.rope.scaling.type", "linear");
            w.f32("llama.rope.scaling.factor", rs.get("factor").and_then(Json::as_f64).unwrap_or(1.0) as f32);
        }
    }
}

/// The llama3 rope-scaling factors (`rope_freqs.weight`, `head_dim / 2` values) as llama.cpp's
/// converter computes them from `rope_scaling`; `None` unless the config asks for llama3 scaling.
pub fn llama3_rope_freqs(cfg: &ModelConfig) -> Option<WTensor> {
    let rs = rope_scaling(&cfg.raw)?;
    if rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str) != Some("llama3") {
        return None;
    }
    let f = |k: &str, d: f64| rs.get(k).and_then(Json::as_f64).unwrap_or(d);
    let (factor, lo, hi, old) =
        (f("factor", 8.0), f("low_freq_factor", 1.0), f("high_freq_factor", 4.0), f("original_max_position_embeddings", 8192.0));
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f64;
    let (lo_wl, hi_wl) = (old / lo, old / hi);
    let vals: Vec<f32> = (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let v = if wl < hi_wl {
                1.0
            } else if wl > lo_wl {
                factor
            } else {
                let smooth = (old / wl - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            v as f32
        })
        .collect();
    Some(WTensor {
        name: "rope_freqs.weight".into(),
        dims: vec![vals.len() as u64],
        ty: GgmlType::F32,
        data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn token_content(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// The tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) from the model
/// directory's tokenizer.json (+ tokenizer_config.json). `vocab_size` is the embedding's row
/// count (rows past the tokenizer's vocabulary become unused `[PADn]` tokens).
pub fn put_tokenizer(w: &mut GgufWriter, model_dir: &Path, vocab_size: usize) -> Result<()> {
    let tpath = model_dir.join("tokenizer.json");
    let tp = tpath.display();
    let text = std::fs::read_to_string(&tpath).with_context(|| format!("{tp}: cannot read"))?;
    let tj: Json = serde_json::from_str(&text).map_err(|e| anyhow!("{tp}: invalid JSON: {e}"))?;
    let cpath = model_dir.join("tokenizer_config.json");
    let tc: Json = match std::fs::read_to_string(&cpath) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| anyhow!("{}: invalid JSON: {e}", cpath.display()))?,
        Err(_) => Json::Null,
    };
    let model = tj.get("model").ok_or_else(|| anyhow!("{tp}: no \"model\""))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    if mtype != "BPE" {
        bail!("{tp}: model.type \"{mtype}\": GGUF export reads BPE tokenizers only (byte-level or byte-fallback)");
    }
    let vocab = model.get("vocab").and_then(Json::as_object).ok_or_else(|| anyhow!("{tp}: model.vocab missing"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size.max(vocab.len())];
    let mut put = |tok: &str, id: u64| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| anyhow!("{tp}: token id {id} ({tok:?}) beyond the vocabulary"))?;
        *slot = Some(tok.to_string());
        Ok(())
    };
    for (tok, id) in vocab {
        put(tok, id.as_u64().ok_or_else(|| anyhow!("{tp}: token {tok:?} has a non-integer id"))?)?;
    }
    let added = tj.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
    let mut special_ids = std::collections::HashSet::new();
    let mut user_ids = std::collections::HashSet::new();
    for a in &added {
        let (Some(c), Some(id)) = (a.get("content").and_then(Json::as_str), a.get("id").and_then(Json::as_u64)) else { continue };
        put(c, id)?;
        if a.get("special").and_then(Json::as_bool) == Some(true) {
            special_ids.insert(id as usize);
        } else {
            user_ids.insert(id as usize);
        }
    }
    if tokens.len() > vocab_size {
        bail!("{tp}: {} tokens, more than the embedding's {vocab_size} rows", tokens.len());
    }
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool) == Some(true);
    let unk = token_content(tc.get("unk_token")).or_else(|| model.get("unk_token").and_then(Json::as_str));
    let id_of = |s: &str| tokens.iter().position(|t| t.as_deref() == Some(s));
    // Merges as "a b" strings, in rank order (tokenizer.json holds "a b" or ["a", "b"]).
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Json::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|x| match x {
                    Json::String(s) => Some(s.clone()),
                    Json::Array(p) if p.len() == 2 => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    let mut types = Vec::with_capacity(tokens.len());
    let mut names = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let (name, ty) = match t {
            None => (format!("[PAD{i}]"), UNUSED),
            Some(t) => {
                let ty = if Some(t.as_str()) == unk && byte_fallback {
                    UNKNOWN
                } else if special_ids.contains(&i) {
                    CONTROL
                } else if user_ids.contains(&i) {
                    USER_DEFINED
                } else if byte_fallback && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                    BYTE
                } else {
                    NORMAL
                };
                (t.clone(), ty)
            }
        };
        names.push(name);
        types.push(ty);
    }

    if byte_fallback {
        // SentencePiece-style: llama.cpp merges the adjacent pair whose concatenation has the
        // highest score; the score of a token is minus the rank of the merge that makes it.
        w.str("tokenizer.ggml.model", "llama");
        let mut scores = vec![0f32; names.len()];
        for (rank, m) in merges.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                if let Some(id) = id_of(&format!("{a}{b}")) {
                    if scores[id] == 0.0 {
                        scores[id] = -(rank as f32) - 1.0;
                    }
                }
            }
        }
        w.kv("tokenizer.ggml.tokens", Value::Array(names.into_iter().map(Value::String).collect()));
        w.kv("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()));
        w.kv("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    } else {
        let pre = gpt2_pre(tj.get("pre_tokenizer")).ok_or_else(|| {
            anyhow!("{tp}: pre_tokenizer not recognised (known: GPT-2 byte-level, SmolLM digits + byte-level, Llama 3 split); GGUF export cannot name llama.cpp's tokenizer.ggml.pre for it")
        })?;
        w.str("tokenizer.ggml.model", "gpt2");
        w.str("tokenizer.ggml.pre", pre);
        w.kv("tokenizer.ggml.tokens", Value::Array(names.into_iter().map(Value::String).collect()));
        w.kv("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
        if merges.is_empty() {
            bail!("{tp}: byte-level BPE without merges");
        }
        w.kv("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
    }
    for (key, field) in [("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")] {
        if let Some(id) = token_content(tc.get(field)).and_then(id_of) {
            w.u32(&format!("tokenizer.ggml.{key}_token_id"), id as u32);
        }
    }
    // add_bos from what the tokenizer does (its post-processor), as lowbit's eval does.
    let tok = crate::tokenizer::Tokenizer::from_file(&tpath)?;
    w.bool("tokenizer.ggml.add_bos_token", tok.default_bos()?.is_some());
    w.bool("tokenizer.ggml.add_eos_token", tc.get("add_eos_token").and_then(Json::as_bool).unwrap_or(false));
    if let Some(t) = tc.get("chat_template").and_then(Json::as_str) {
        w.str("tokenizer.chat_template", t);
    }
    Ok(())
}

/// llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE pre-tokenizer, recognised by structure.
fn gpt2_pre(p: Option<&Json>) -> Option<&'static str> {
    let p = p?;
    let ty = p.get("type").and_then(Json::as_str)?;
    let is_bytelevel = |x: &Json| x.get("type").and_then(Json::as_str) == Some("ByteLevel");
    match ty {
        "ByteLevel" if p.get("use_regex").and_then(Json::as_bool) != Some(false) => Some("gpt-2"),
        "Sequence" => {
            let items = p.get("pretokenizers").and_then(Json::as_array)?;
            let digits = |x: &Json| {
                x.get("type").and_then(Json::as_str) == Some("Digits") && x.get("individual_digits").and_then(Json::as_bool) == Some(true)
            };
            if items.len() == 2 && digits(&items[0]) && is_bytelevel(&items[1]) {
                return Some("smollm");
            }
            let split = |x: &Json| {
                x.get("type").and_then(Json::as_str) == Some("Split")
                    && x.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str).is_some_and(|r| r.contains("\\p{N}{1,3}"))
            };
            if items.len() == 2 && split(&items[0]) && is_bytelevel(&items[1]) {
                return Some("llama-bpe");
            }
            None
        }
        _ => None,
    }
}

/// What [`write_model`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// Bytes of the whole file.
    pub bytes: u64,
    /// Bytes of the tensor data (what llama.cpp's "model size" and BPW count, and
    /// `lowbit inspect`'s total).
    pub tensor_bytes: u64,
    /// Logical weights in the file (every tensor's elements).
    pub params: u64,
    /// Token embedding / output tensors stored in another type than asked for.
    pub fallbacks: Vec<String>,
}

/// The types of the token embedding and output tensors: the asked type after llama.cpp's
/// fallbacks (a float type is kept as is). Tied embeddings are one tensor, `token_embd`, which
/// llama.cpp quantizes as the output: `--token-embedding-type`, else `--output-tensor-type`, else
/// Q6_K. Untied: the embedding defaults to the linears' type, the output to Q6_K.
pub fn embd_output_types(base: GgmlType, embd: Option<GgmlType>, output: Option<GgmlType>, tied: bool) -> (GgmlType, GgmlType) {
    let e = if tied { embd.or(output).unwrap_or(GgmlType::Q6_K) } else { embd.unwrap_or(base) };
    (e, output.unwrap_or(GgmlType::Q6_K))
}

/// Encode a float matrix `[rows][cols]` as `ty` (a float type, or a block type quantized by
/// RTN on its grid after the fallbacks; no 32-block fits → F16). Returns the stored type.
fn encode_float(name: &str, w: &[f32], rows: usize, cols: usize, ty: GgmlType, fallbacks: &mut Vec<String>) -> (GgmlType, Vec<u8>) {
    let ty = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ty,
        t => {
            let got = super::blocks::fallback(t, cols).unwrap_or(GgmlType::F16);
            if got != t {
                fallbacks.push(format!("{name}: {} -> {} ({cols} columns)", t.name(), got.name()));
            }
            got
        }
    };
    let data = match ty {
        GgmlType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        t => crate::quant::gguf::quantize(t, w, rows, cols, None).data,
    };
    (ty, data)
}

/// Write the GGUF file `out` from the pipeline's tensors (HF names; quantized linears as
/// [`crate::pack::gguf`] tensors, everything else float) and the model's embedding / output.
pub fn write_model(
    model_dir: &Path,
    model: &crate::model::Model,
    tensors: &[crate::st_write::OutTensor],
    base: GgmlType,
    embd: Option<GgmlType>,
    output: Option<GgmlType>,
    out: &Path,
) -> Result<Written> {
    let (w, mut written) = build_model(model_dir, model, tensors, base, embd, output)?;
    written.bytes = w.write(out)?;
    Ok(written)
}

/// The GGUF file [`write_model`] writes, in memory, with its parameter count and fallbacks
/// (`bytes` is left 0; `--dry-run` takes the serialized length).
pub fn build_model(
    model_dir: &Path,
    model: &crate::model::Model,
    tensors: &[crate::st_write::OutTensor],
    base: GgmlType,
    embd: Option<GgmlType>,
    output: Option<GgmlType>,
) -> Result<(GgufWriter, Written)> {
    let cfg = &model.cfg;
    let mut w = GgufWriter::default();
    // " (lowbit)" marks the file as lowbit's, so that --force may replace it later.
    let name = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    put_hparams(&mut w, cfg, &format!("{name} (lowbit)"), base);
    put_tokenizer(&mut w, model_dir, cfg.vocab_size)?;
    let mut written = Written::default();
    let tied = cfg.tie_word_embeddings;
    let (embd_ty, out_ty) = embd_output_types(base, embd, output, tied);
    let (v, d) = (cfg.vocab_size, cfg.hidden_size);
    let push = |w: &mut GgufWriter, name: String, shape: &[usize], ty: GgmlType, data: Vec<u8>| {
        w.tensors.push(WTensor { name, dims: shape.iter().rev().map(|&x| x as u64).collect(), ty, data });
    };
    let e = model.ck.f32_shaped("model.embed_tokens.weight", &[v, d])?;
    let (ty, data) = encode_float("token_embd.weight", &e, v, d, embd_ty, &mut written.fallbacks);
    push(&mut w, "token_embd.weight".into(), &[v, d], ty, data);
    drop(e);
    if let Some(t) = llama3_rope_freqs(cfg) {
        w.tensors.push(t);
    }
    for t in tensors {
        if t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight" {
            continue;
        }
        if let Some((prefix, q)) = crate::pack::gguf::from_tensor(t)? {
            let linear = prefix.split_once(".layers.").and_then(|(_, r)| r.split_once('.')).map(|(_, l)| l).unwrap_or("");
            let q = match permuted_heads(cfg, linear) {
                Some(h) => q.permute_rows(&qk_row_perm(q.rows, h)),
                None => q,
            };
            let gname = gguf_name(&format!("{prefix}.weight")).ok_or_else(|| anyhow!("{prefix}: no llama.cpp tensor name"))?;
            push(&mut w, gname, &[q.rows, q.cols], q.ty, q.data);
            continue;
        }
        let gname = gguf_name(&t.name).ok_or_else(|| anyhow!("{}: no llama.cpp tensor name", t.name))?;
        let mut vals = crate::weights::to_f32(t.dtype, &t.data).map_err(|e| anyhow!("{}: {e}", t.name))?;
        if t.shape.len() == 1 {
            push(&mut w, gname, &t.shape, GgmlType::F32, vals.iter().flat_map(|v| v.to_le_bytes()).collect());
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let linear =
            t.name.split_once(".layers.").and_then(|(_, r)| r.split_once('.')).map(|(_, l)| l.trim_end_matches(".weight")).unwrap_or("");
        if let Some(h) = permuted_heads(cfg, linear) {
            vals = qk_row_perm(rows, h).iter().flat_map(|&r| vals[r * cols..(r + 1) * cols].to_vec()).collect();
        }
        let ty = match t.dtype {
            safetensors::Dtype::F16 => GgmlType::F16,
            safetensors::Dtype::BF16 => GgmlType::BF16,
            _ => GgmlType::F32,
        };
        let (ty, data) = encode_float(&gname, &vals, rows, cols, ty, &mut written.fallbacks);
        push(&mut w, gname, &[rows, cols], ty, data);
    }
    if !tied {
        let o = model.ck.f32_shaped("lm_head.weight", &[v, d])?;
        let (ty, data) = encode_float("output.weight", &o, v, d, out_ty, &mut written.fallbacks);
        push(&mut w, "output.weight".into(), &[v, d], ty, data);
    }
    written.params = w.tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum();
    written.tensor_bytes = w.tensors.iter().map(|t| t.data.len() as u64).sum();
    Ok((w, written))
}
