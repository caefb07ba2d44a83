//! The `lowbit quantize` driver: checks, plan, calibration tokens, checkpoint or resume, the
//! layer loop, then the output (a directory, a GGUF file, or with `--dry-run` only the counts).

use super::gguf::gguf_fallbacks;
use super::layers::{check_finite_tail, Run, RunOut};
use super::output::{check_gguf_out, write_output};
use super::plan::{packed_modules, plan_layers, plan_tables};
use super::{budget, resume, validate, Format, Options, DEFAULT_GGUF_TYPE};
use crate::escape;
use crate::events::Events;
use crate::model::Model;
use crate::outdir::{OutDir, Source};
use crate::pack::SizeCount;
use crate::st_write::check_finite_output;
use crate::stats::Needs;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub out: String,
    pub method: String,
    pub format: String,
    pub bits: u8,
    pub group_size: usize,
    pub seconds: f64,
    pub calib_tokens: usize,
    /// Seconds spent in the calibration forward pass itself (one FP forward over the calibration
    /// tokens, statistics excluded): the yardstick of the benchmark ratios.
    pub forward_seconds: f64,
    /// Seconds in AWQ's scale and clip searches (0 for other methods).
    pub search_seconds: f64,
    pub bytes: u64,
    /// Stored bits per weight of the quantized linears (scales, zeros and indices included).
    pub linear_bpw: f64,
    /// Stored bits per parameter of the whole checkpoint.
    pub model_bpw: f64,
    pub quantized_linears: usize,
    pub peak_rss_bytes: Option<u64>,
    pub dry_run: bool,
    /// GGUF: tensors stored in another type than asked for (llama.cpp's fallbacks), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// `--target-bpw`: the chosen plan and its predicted loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<budget::Plan>,
}

/// Quantize the checkpoint in `model_dir` with the options `o` (`dry_run`: plan and count, write
/// nothing); progress, warnings and notes go to `ev`.
pub fn quantize(model_dir: &Path, o: &Options, dry_run: bool, ev: &mut dyn Events) -> Result<Summary> {
    if o.target_bpw.is_some() || o.target_size.is_some() {
        // Plan first (a sensitivity pass), then write the plan as per-linear overrides.
        let plan = budget::plan(model_dir, o, ev)?;
        let mut s = quantize(model_dir, &budget::apply(o, &plan)?, dry_run, ev)?;
        s.method = format!("{} (planned)", o.method.name());
        s.plan = Some(plan);
        return Ok(s);
    }
    validate(o)?;
    let t0 = Instant::now();
    let model = Model::open_dense(model_dir)?;
    if model.cfg.raw.get("quantization_config").is_some() {
        bail!("{}: already quantized (has quantization_config)", escape::path(model_dir));
    }
    if o.calib.is_some() {
        model.cfg.check_positions(o.calib_seqlen, "--calib-seqlen").map_err(|e| anyhow!("{}: {e}", model_dir.display()))?;
    }
    check_finite_tail(&model)?;
    let gguf_out = o.format == Format::Gguf;
    if gguf_out {
        crate::gguf::export::check_exportable(&model.cfg, &model_dir.join("config.json"))?;
        if !dry_run {
            check_gguf_out(&o.out, o.force, model_dir, o.calib.as_ref().map(|c| c.files()).unwrap_or_default())?;
        }
        if o.resume {
            bail!("--resume is not available with --format gguf (the file is written in one piece at the end)");
        }
    }
    // The output is checked against the inputs and locked before any work (--dry-run writes
    // nothing; a GGUF file is checked above and written whole at the end).
    let mut od = if dry_run || gguf_out {
        None
    } else {
        let mut inputs = vec![Source::new(model_dir, "model directory")];
        for c in o.calib.iter().flat_map(|c| c.files()) {
            inputs.push(Source::new(c, "calibration text"));
        }
        Some(OutDir::begin(&o.out, "quantize", o.force, &inputs)?)
    };
    let tok = Tokenizer::from_dir(model_dir)?;
    let plans = plan_layers(&model, o, ev)?;
    let tables = plan_tables(&model, o)?;
    let needs = plans.iter().flatten().flatten().fold(Needs::default(), |n, p| n.union(p.method.needs(o)));
    let (tokens, seqlen) = match (&o.calib, needs) {
        (Some(p), n) if n.any() => {
            crate::calib::check_budget(o.calib_samples, o.calib_seqlen, model.cfg.hidden_size)?;
            (crate::calib::sample_calib(&tok, p, o.calib_samples, o.calib_seqlen, o.seed, ev)?, o.calib_seqlen)
        }
        _ => (Vec::new(), 0),
    };
    let (mut ckpt, resume_from) = match &mut od {
        Some(od) => {
            let fp = resume::fingerprint(model_dir, &model.ck, o, &tokens)?;
            let (ck, st) = resume::open(od, o, &fp, model.cfg.num_layers, ev)?;
            (Some(ck), st)
        }
        None => (None, None),
    };
    let run = Run { model: &model, o, tokens: &tokens, seqlen, plans: &plans, tables: &tables, needs, dry_run };
    let RunOut { tensors, meta, forward_seconds, search_seconds } = run.layers(ckpt.as_mut(), resume_from, ev)?;
    // Whole-checkpoint accounting: the count inspect makes of the written files.
    let size = SizeCount::of(
        tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice(), t.data.len() as u64)),
        &packed_modules(&model, &plans, &tables),
    );
    let mut summary = Summary {
        out: o.out.display().to_string(),
        method: o.method.name().into(),
        format: o.format.name().into(),
        bits: o.bits,
        group_size: o.group_size,
        seconds: t0.elapsed().as_secs_f64(),
        calib_tokens: tokens.len(),
        forward_seconds,
        search_seconds,
        bytes: size.bytes,
        linear_bpw: size.linear_bpw(),
        model_bpw: size.model_bpw(),
        quantized_linears: plans.iter().flatten().filter(|p| p.is_some()).count(),
        peak_rss_bytes: crate::mem::peak_rss_bytes(),
        dry_run,
        fallbacks: gguf_fallbacks(&model, o, &plans),
        plan: None,
    };
    if dry_run {
        if gguf_out {
            // The file the real run writes, serialized in memory: its exact length.
            let base = o.gguf_type.unwrap_or(DEFAULT_GGUF_TYPE);
            let (_, w) = crate::gguf::export::build_model(model_dir, &model, &tensors, base, o.token_embd_type, o.output_type)?;
            summary.bytes = w.tensor_bytes;
            summary.model_bpw = 8.0 * w.tensor_bytes as f64 / w.params.max(1) as f64;
            summary.fallbacks.extend(w.fallbacks);
        }
        return Ok(summary);
    }
    check_finite_output(&tensors)?;
    if gguf_out {
        let base = o.gguf_type.unwrap_or(DEFAULT_GGUF_TYPE);
        let w = crate::gguf::export::write_model(model_dir, &model, &tensors, base, o.token_embd_type, o.output_type, &o.out)?;
        // Tensor data bytes, as for a safetensors output and as llama.cpp's BPW counts them.
        summary.bytes = w.tensor_bytes;
        summary.model_bpw = 8.0 * w.tensor_bytes as f64 / w.params.max(1) as f64;
        summary.fallbacks.extend(w.fallbacks);
        summary.seconds = t0.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let od = od.expect("an output directory unless dry-run or gguf");
    write_output(model_dir, &model, o, od.tmp(), &tensors, &meta, &plans)?;
    od.commit(ev)?;
    Ok(summary)
}
