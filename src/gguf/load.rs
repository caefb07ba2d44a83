//! A llama-architecture .gguf file as a [`Model`] (`lowbit eval --model file.gguf`) and as an
//! inspect report. Every tensor is decoded to f32 (all block types of [`super::blocks`]), renamed
//! to its Hugging Face name, Q/K rows un-permuted, and held in an in-memory checkpoint; the
//! config comes from the `llama.*` metadata ([`super::build_config`]) plus linear rope scaling.
//! A `rope_freqs` tensor (llama3 rope scaling) is refused: its factors cannot be turned back
//! into the config lowbit's forward pass reads.

use super::{build_config, hf_name, unpermute_rows, Gguf};
use crate::config::ModelConfig;
use crate::model::Model;
use crate::qmodel::{DtypeStat, InspectReport, TensorReport};
use crate::weights::Checkpoint;
use anyhow::{anyhow, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// Whether `path` names a GGUF file (by extension, or by its magic when it is a file).
pub fn is_gguf(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    path.is_file()
        && std::fs::File::open(path).ok().and_then(|mut f| {
            let mut m = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut m).ok()?;
            Some(m == super::GGUF_MAGIC)
        }) == Some(true)
}

fn open_llama(path: &Path) -> Result<Gguf> {
    let g = Gguf::open(path)?;
    let arch = g.get_str("general.architecture")?.unwrap_or("");
    if arch != "llama" {
        return Err(g.fail(format_args!("general.architecture \"{arch}\" not supported (lowbit reads llama GGUF files)")));
    }
    Ok(g)
}

/// The config.json lowbit builds for a GGUF file.
fn config_of(g: &Gguf) -> Result<ModelConfig> {
    let embd = g.tensor_info("token_embd.weight").ok_or_else(|| g.fail("no token_embd.weight tensor"))?;
    let tied = g.tensor_info("output.weight").is_none();
    let mut cfg = build_config(g, Dtype::F32, embd.hf_shape()[0], tied)?;
    if let Some(t) = g.get_str("llama.rope.scaling.type")? {
        match t {
            "none" => {}
            "linear" => {
                let f = g.get_f32("llama.rope.scaling.factor")?.ok_or_else(|| g.fail("llama.rope.scaling.factor missing"))?;
                cfg["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": f});
            }
            t => return Err(g.fail(format_args!("llama.rope.scaling.type \"{t}\" not supported (none, linear)"))),
        }
    }
    ModelConfig::from_json(cfg).map_err(|e| g.fail(e))
}

/// Open a .gguf file for the forward pass (eval).
pub fn open(path: &Path) -> Result<Model> {
    let g = open_llama(path)?;
    let cfg = config_of(&g)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for info in g.tensors() {
        let name = &info.name;
        if name == "rope_freqs.weight" {
            return Err(g.fail("tensor rope_freqs.weight (llama3 rope scaling) is not supported by lowbit's GGUF reader"));
        }
        let hf = hf_name(name).ok_or_else(|| g.fail(format_args!("tensor {name} has no Hugging Face Llama equivalent")))?;
        let (shape, mut data) = g.tensor_f32(name)?;
        let heads = if name.contains(".attn_q.") {
            Some(cfg.num_heads)
        } else if name.contains(".attn_k.") {
            Some(cfg.num_kv_heads)
        } else {
            None
        };
        if let Some(h) = heads {
            let cols = shape.get(1).copied().unwrap_or(1);
            data = unpermute_rows(&data, shape[0], cols, h).map_err(|e| g.fail(format_args!("tensor {name}: {e}")))?;
        }
        tensors.push((hf, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views = tensors
        .iter()
        .map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d).map_err(|e| anyhow!("{n}: {e:?}"))?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| g.fail(format_args!("cannot build the in-memory checkpoint: {e:?}")))?;
    drop(tensors);
    let ck = Checkpoint::from_buffers(path, vec![(path.to_path_buf(), bytes)])?;
    let m = Model::from_parts(cfg, ck);
    m.check_tensors().map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    Ok(m)
}

/// `lowbit inspect` of a .gguf file: tensors by ggml type, bits per weight of each tensor and
/// of the whole file.
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let g = open_llama(path)?;
    let cfg = config_of(&g)?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    let mut dtypes: BTreeMap<String, DtypeStat> = BTreeMap::new();
    let mut tensors = Vec::new();
    let (mut params, mut bytes) = (0usize, 0usize);
    for info in g.tensors() {
        let b = info.range.len();
        let n = info.n_elements();
        let e = dtypes.entry(info.ty.name()).or_default();
        e.tensors += 1;
        e.bytes += b;
        bytes += b;
        params += n;
        tensors.push(TensorReport {
            name: info.name.clone(),
            dtype: info.ty.name(),
            shape: info.hf_shape(),
            params: n,
            bits_per_weight: 8.0 * b as f64 / n.max(1) as f64,
        });
    }
    let meta = |k: &str| g.get(k).map(|v| format!("{v:?}"));
    Ok(InspectReport {
        model: path.display().to_string(),
        model_type: "llama (gguf)".into(),
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
        linear_bits_per_weight: None,
        quantization: Some(serde_json::json!({
            "format": "gguf",
            "version": g.version,
            "file_bytes": file_bytes,
            "file_bits_per_weight": 8.0 * file_bytes as f64 / params.max(1) as f64,
            "file_type": meta("general.file_type"),
            "tokenizer": meta("tokenizer.ggml.model"),
        })),
        dtypes,
        tensors,
    })
}
