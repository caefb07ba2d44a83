//! What `lowbit quantize` writes: the tables and tail tensors, the output directory's files
//! (safetensors, config.json with quantization_config, tokenizer files), the checks on a GGUF
//! output path and on the output's values, and the reading of a lowbit output's metadata.

use super::{Format, LinearPlan, Options};
use crate::checkpoint;
use crate::escape;
use crate::model::Model;
use crate::pack::{LowbitModuleMeta, LowbitQuantConfig, PackedLayout};
use crate::quant::{grid, rtn};
use crate::st_write::{write_atomic, write_safetensors, OutTensor};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A GGUF output is one file: it must not be, or lie inside, an input, and an existing file is
/// replaced (with --force) only when it is a GGUF file that lowbit wrote (its `general.name`
/// ends in " (lowbit)"); anything else is refused with what was found.
pub(crate) fn check_gguf_out(out: &Path, force: bool, model_dir: &Path, calib: Vec<&Path>) -> Result<()> {
    let shown = escape::path(out);
    if out.is_dir() {
        bail!("{shown}: is a directory; --format gguf writes one file");
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let canon_parent = std::fs::canonicalize(parent).ok();
    let canon_out = canon_parent.as_ref().and_then(|p| out.file_name().map(|n| p.join(n)));
    let inputs =
        std::iter::once((Some(model_dir), "the model directory")).chain(calib.into_iter().map(|c| (Some(c), "the calibration text")));
    for (input, what) in inputs {
        let (Some(i), Some(co)) = (input.and_then(|i| std::fs::canonicalize(i).ok()), &canon_out) else { continue };
        if co == &i || co.starts_with(&i) {
            bail!("--out {shown} is, or is inside, {what} {}; write the output somewhere else", escape::path(input.unwrap()));
        }
    }
    if std::fs::symlink_metadata(out).is_ok() {
        if !force {
            bail!("{shown}: exists (--force replaces it only if lowbit wrote it)");
        }
        let ours = crate::gguf::Gguf::open(out)
            .ok()
            .and_then(|g| g.get_str("general.name").ok().flatten().map(|n| n.ends_with(" (lowbit)")))
            .unwrap_or(false);
        if !ours {
            bail!("{shown}: exists and is not a GGUF file lowbit wrote; refusing to replace it, even with --force");
        }
    }
    Ok(())
}

/// The tensors outside the decoder layers and the lowbit metadata of the packed tables.
pub(crate) struct TailOut {
    pub tensors: Vec<OutTensor>,
    pub meta: Vec<(String, LowbitModuleMeta)>,
}

/// Embeddings, final norm and lm_head in the output float type, or for a table `tables` plans,
/// packed in the lowbit layout (`--dry-run`: zero tensors of the layout's exact shapes); with
/// the lowbit metadata of the packed tables.
pub(crate) fn tail_tensors(model: &Model, o: &Options, tables: &[(&'static str, LinearPlan)], dry_run: bool) -> Result<TailOut> {
    let c = &model.cfg;
    let (v, d, fd) = (c.vocab_size, c.hidden_size, o.float_dtype);
    let mut out = Vec::new();
    let mut meta = Vec::new();
    let mut names = vec!["model.embed_tokens", "model.norm"];
    if !c.tie_word_embeddings {
        names.push("lm_head");
    }
    for n in names {
        match tables.iter().find(|t| t.0 == n) {
            None => out.push(model.ck.converted(&format!("{n}.weight"), fd)?),
            Some((_, p)) if dry_run => {
                for (suffix, dt, shape) in Format::Lowbit.tensor_specs(&p.want(o), v, d) {
                    let len = crate::pack::spec_bytes(dt, &shape);
                    out.push(OutTensor { name: format!("{n}.{suffix}"), dtype: dt, shape, data: vec![0; len] });
                }
            }
            Some((_, p)) => {
                let w = model.ck.f32_shaped(&format!("{n}.weight"), &[v, d])?;
                // Round to nearest on the method's grid (tables get no calibration statistics).
                let g = grid::scalar(p.method.grid(), p.bits, p.group_size, o.sym, rtn::Range::WithZero);
                let q = grid::quantize(&*g, &w, v, d, None);
                let packed = crate::pack::LowbitPacked::pack(&q).with_context(|| format!("{n}: cannot pack"))?;
                meta.push((n.to_string(), packed.meta(p.method.name())));
                out.extend(packed.to_tensors(n));
            }
        }
        model.ck.release_pages();
    }
    Ok(TailOut { tensors: out, meta })
}

/// Write the output files into the temporary directory `tmp` (tensors, config.json with
/// quantization_config, tokenizer files) and drop the checkpoints; the caller moves it into place.
pub(crate) fn write_output(
    model_dir: &Path,
    model: &Model,
    o: &Options,
    tmp: &Path,
    tensors: &[OutTensor],
    meta: &LowbitQuantConfig,
    plans: &[Vec<Option<LinearPlan>>],
) -> Result<()> {
    let c = &model.cfg;
    write_safetensors(&tmp.join("model.safetensors"), tensors, None)?;
    let mut cfg = model.cfg.raw.clone();
    // Every decoder linear in table order with its (bits, group size), None when kept in float.
    let modules: Vec<(String, Option<(u8, usize)>)> = (0..c.num_layers)
        .flat_map(|i| {
            c.family
                .linears()
                .iter()
                .zip(&plans[i])
                .map(move |(s, p)| (format!("model.layers.{i}.{}", s.name), p.map(|p| (p.bits, p.group_size))))
        })
        .collect();
    cfg["quantization_config"] = match o.format {
        Format::Lowbit => serde_json::to_value(meta)?,
        f => f.hf_quantization_config(o.bits, o.group_size, o.act_order && !o.static_groups, o.sym, c.num_layers, &modules),
    };
    if let Some(p) = &o.plan_note {
        // The plan without the pass's wall time: the output's bytes depend only on the inputs.
        let mut p = p.clone();
        if let Some(m) = p.as_object_mut() {
            m.remove("seconds");
        }
        cfg["quantization_config"]["plan"] = p;
    }
    cfg["torch_dtype"] = format!("{:?}", o.float_dtype)
        .to_lowercase()
        .replace("f16", "float16")
        .replace("bf16", "bfloat16")
        .replace("f32", "float32")
        .into();
    write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
        let src = model_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f)).with_context(|| format!("{}: cannot copy", src.display()))?;
            crate::st_write::plain_permissions(&tmp.join(f))?;
        }
    }
    checkpoint::remove_checkpoints(tmp)
}

/// Per-module metadata of a lowbit output, for inspect.
pub fn module_meta(cfg: &serde_json::Value) -> Option<BTreeMap<String, LowbitModuleMeta>> {
    serde_json::from_value::<LowbitQuantConfig>(cfg.get("quantization_config")?.clone()).ok().map(|q| q.modules)
}
