//! `lowbit quantize`: stream calibration activations through the model one decoder layer at a
//! time, quantize every linear of the layer with the chosen method, pack, and write an HF-style
//! directory (atomically: everything goes to a temporary directory renamed at the end).

pub mod budget;
mod compose;
pub mod gguf;
mod sequential;

pub use crate::quant::methods::Method;
use compose::{pack, quantize_layer};

pub use gguf::{parse_block_type, parse_tensor_type, DEFAULT_GGUF_TYPE};

use crate::arch::Input;
use crate::checkpoint;
use crate::escape;
use crate::gguf::GgmlType;
use crate::model::{LayerWeights, Model};
use crate::outdir::{OutDir, Source};
use crate::pack::{LowbitModuleMeta, LowbitQuantConfig, Packed, PackedLayout, SizeCount, Want};
use crate::quant::recipe::Core;
use crate::quant::{gguf as qgguf, rtn, shift, statsq, vptq, Grid, QTensor};
use crate::st_write::{write_atomic, write_safetensors, OutTensor};
use crate::stats::{InputStats, Needs};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use gguf::{gguf_fallback, gguf_fallbacks, validate_gguf};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

impl LinearPlan {
    /// What this plan asks of the output layout (the codes' width, group size and grid, a
    /// g_idx for GPTQ's act-order, vector quantization).
    pub fn want(&self, o: &Options) -> Want {
        let r = self.method.recipe();
        // awq+gptq is left out as before, although its GPTQ writes a g_idx under --act-order (the
        // --dry-run size then misses the g_idx tensors): a known discrepancy, kept by the #17 refactor.
        let gptq = matches!(r.core, Core::Gptq(_)) && !r.awq;
        Want { bits: self.bits, group_size: self.group_size, grid: r.grid(), g_idx: gptq && o.act_order && !o.static_groups, vq: r.is_vq() }
    }
}

/// How one linear is quantized: method, bits and group size (after `--override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearPlan {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    /// A llama.cpp block type: the codes live on its grid (`bits` / `group_size` unused).
    pub ty: Option<GgmlType>,
}

/// `--override 'REGEX=METHOD:BITS[:GROUP]'`, `'REGEX=METHOD:TYPE'` (a GGUF block type, e.g.
/// `q6_k`) or `'REGEX=vptq'`: linears whose full name matches get this plan.
#[derive(Clone, Debug)]
pub struct Override {
    pub pattern: regex::Regex,
    pub method: Method,
    pub bits: u8,
    pub group_size: Option<usize>,
    pub ty: Option<GgmlType>,
}

impl std::str::FromStr for Override {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow!("--override {s:?}: expected REGEX=METHOD:BITS[:GROUP], e.g. 'down_proj=rtn:8'");
        let (re, rest) = s.rsplit_once('=').ok_or_else(bad)?;
        let pattern = regex::Regex::new(re).map_err(|e| anyhow!("--override {s:?}: invalid regex: {e}"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let method = Method::parse(parts[0]).ok_or_else(|| anyhow!("--override {s:?}: unknown method {:?}", parts[0]))?;
        if method.is_vq() {
            // VPTQ's size comes from --vector-len / --centroids, not from a code width.
            if parts.len() > 1 {
                bail!(
                    "--override {s:?}: vptq takes no BITS or GROUP (its size is set by --vector-len, --centroids, ...); write '{re}=vptq'"
                );
            }
            return Ok(Override { pattern, method, bits: 0, group_size: None, ty: None });
        }
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        if !parts[1].starts_with(|c: char| c.is_ascii_digit()) {
            let ty = parse_block_type(parts[1]).map_err(|e| anyhow!("--override {s:?}: {e}"))?;
            if parts.len() > 2 {
                return Err(bad());
            }
            return Ok(Override { pattern, method, bits: 0, group_size: None, ty: Some(ty) });
        }
        let bits: u8 = parts[1].parse().map_err(|_| bad())?;
        let group_size = parts.get(2).map(|g| g.parse::<usize>()).transpose().map_err(|_| bad())?;
        Ok(Override { pattern, method, bits, group_size, ty: None })
    }
}

/// `--format`: the packed layout of the output (one type with [`crate::pack::Layout`], which
/// owns each layout's rules, tensors and sizes).
pub use crate::pack::Layout as Format;

pub use crate::quant::recipe::AwareWeight;

#[derive(Clone, Debug)]
pub struct Options {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    pub sym: bool,
    /// Calibration texts (one file, a mix, or a recipe's; [`crate::calib::Calib`]).
    pub calib: Option<crate::calib::Calib>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub seed: u64,
    pub format: Format,
    pub out: PathBuf,
    pub force: bool,
    /// Float type of embeddings, norms and lm_head in the output.
    pub float_dtype: Dtype,
    /// Calibration tokens (whole windows) kept for AWQ's scale search.
    pub search_tokens: usize,
    /// The span of AWQ's asymmetric grids.
    pub awq_range: rtn::Range,
    /// AWQ: AutoAWQ's symmetric clip search instead of the two-sided one.
    pub awq_symmetric_clip: bool,
    /// Per-linear exceptions; the last matching override wins.
    pub overrides: Vec<Override>,
    /// Linears whose full name matches one of these stay in float.
    pub skip: Vec<regex::Regex>,
    /// An `--override` or `--skip` that matches no linear is a warning, not an error.
    pub allow_unmatched: bool,
    /// Continue from the checkpoints of an interrupted run with the same inputs.
    pub resume: bool,
    /// VPTQ settings.
    pub vptq: vptq::VptqConfig,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal.
    pub act_order: bool,
    /// GPTQ: within a layer, collect each input's Hessian on the outputs of the linears already
    /// quantized (q/k/v, then o, then gate/up, then down), as the reference's `--true-sequential`.
    pub true_sequential: bool,
    /// Feed later layers the float layer's outputs even for AWQ/GPTQ/VPTQ (one forward per layer
    /// instead of two; the default re-runs each layer with its quantized weights).
    pub propagate_fp: bool,
    /// GPTQ with act-order: group parameters from the natural column groups (no g_idx).
    pub static_groups: bool,
    /// Importance weighting of the -aware methods.
    pub aware_weight: AwareWeight,
    /// GGUF block type of the linears (`--gguf-type`; `--format gguf` defaults to Q4_K).
    pub gguf_type: Option<GgmlType>,
    /// GGUF: type of the token embedding / output tensor (None: llama.cpp's defaults).
    pub token_embd_type: Option<GgmlType>,
    pub output_type: Option<GgmlType>,
    /// `--target-bpw`: whole-model bits per weight to plan per-linear settings for ([`budget`]).
    pub target_bpw: Option<f64>,
    /// The bit widths and group sizes `--target-bpw` chooses from.
    pub plan_bits: Vec<u8>,
    pub plan_groups: Vec<usize>,
    /// `--target-bpw`: a file holding the sensitivity pass's measurements (read when it matches
    /// the inputs, written otherwise), so that several budgets share one pass.
    pub sensitivity_cache: Option<PathBuf>,
    /// The plan that produced the overrides, written as `quantization_config.plan`.
    pub plan_note: Option<serde_json::Value>,
}

impl Options {
    /// The plan of one linear (`None`: kept in float).
    pub fn plan(&self, prefix: &str) -> Option<LinearPlan> {
        if self.skip.iter().any(|r| r.is_match(prefix)) {
            return None;
        }
        let base_ty = self.gguf_type.or((self.format == Format::Gguf).then_some(DEFAULT_GGUF_TYPE));
        let mut p = LinearPlan { method: self.method, bits: self.bits, group_size: self.group_size, ty: base_ty };
        for o in self.overrides.iter().filter(|o| o.pattern.is_match(prefix)) {
            p = match o.ty {
                Some(t) => LinearPlan { method: o.method, ty: Some(t), ..p },
                None => LinearPlan { method: o.method, bits: o.bits, group_size: o.group_size.unwrap_or(p.group_size), ty: base_ty },
            };
        }
        if let Some(t) = p.ty {
            p.group_size = crate::gguf::blocks::Kind::of(t).map_or(32, |k| k.block);
        }
        Some(p)
    }
}

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

/// Validate options before any work.
pub fn validate(o: &Options) -> Result<()> {
    let gguf_plans = o.gguf_type.is_some() || o.format == Format::Gguf || o.overrides.iter().any(|v| v.ty.is_some());
    if gguf_plans {
        validate_gguf(o)?;
    }
    let plans = std::iter::once(LinearPlan { method: o.method, bits: o.bits, group_size: o.group_size, ty: None }).chain(
        o.overrides.iter().filter(|v| v.ty.is_none()).map(|v| LinearPlan {
            method: v.method,
            bits: v.bits,
            group_size: v.group_size.unwrap_or(o.group_size),
            ty: None,
        }),
    );
    for p in plans {
        if p.method.is_vq() && o.format != Format::Lowbit {
            bail!("--method {} writes the VQ layout: use --format lowbit", p.method.name());
        }
        if !(2..=8).contains(&p.bits) && !p.method.is_vq() {
            bail!("--bits must be between 2 and 8 (got {})", p.bits);
        }
        if p.group_size == 0 {
            bail!("--group-size must be at least 1");
        }
        if o.format == Format::Awq && p.bits != 4 {
            let at = o
                .overrides
                .iter()
                .find(|v| v.ty.is_none() && v.bits == p.bits)
                .map(|v| format!(" (--override for modules matching '{}')", v.pattern));
            bail!("--format awq is the AutoAWQ GEMM layout, which is 4-bit only (got --bits {}{})", p.bits, at.unwrap_or_default());
        }
        if o.format == Format::Awq && p.group_size % 32 != 0 {
            let at = o
                .overrides
                .iter()
                .find(|v| v.group_size == Some(p.group_size))
                .map(|v| format!(" (--override for modules matching '{}')", v.pattern));
            bail!(
                "--format awq needs a group size that is a multiple of 32 (AWQ GEMM kernels work in k-blocks of 32); got {}{}",
                p.group_size,
                at.unwrap_or_default()
            );
        }
        if o.format == Format::Gptq && ![2, 3, 4, 8].contains(&p.bits) {
            bail!("--format gptq supports 2, 3, 4 or 8 bits (got --bits {})", p.bits);
        }
        if p.method.is_vq() && o.format != Format::Lowbit {
            bail!("--method {} writes the VQ layout: use --format lowbit", p.method.name());
        }
        if p.method.needs(o).any() && o.calib.is_none() {
            bail!("--method {} needs --calib FILE (calibration text)", p.method.name());
        }
    }
    Ok(())
}

/// Every linear's plan, layer by layer, decided before any work from the options and the
/// shapes (never from quantized values):
///
/// * a plan the layout cannot hold whatever the shape (bits, grid, VQ) is an error naming the
///   module, as is a module an `--override` names that the layout cannot hold in its shape;
/// * a linear the base plan cannot hold in its shape is kept in float (and listed in
///   modules_to_not_convert), with one warning per kind;
/// * an `--override` or `--skip` that matches no linear is an error (a warning with
///   `--allow-unmatched`);
/// * AutoAWQ's config holds one bits / group size for every module: a mixture is refused.
pub(crate) fn plan_layers(model: &Model, o: &Options) -> Result<Vec<Vec<Option<LinearPlan>>>> {
    let c = &model.cfg;
    let mut plans: Vec<Vec<Option<LinearPlan>>> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut used_override = vec![false; o.overrides.len()];
    let mut used_skip = vec![false; o.skip.len()];
    let fmt = o.format.name();
    for i in 0..c.num_layers {
        let mut row = Vec::new();
        for spec in c.family.linears() {
            let prefix = format!("model.layers.{i}.{}", spec.name);
            for (k, r) in o.skip.iter().enumerate() {
                used_skip[k] |= r.is_match(&prefix);
            }
            let matched: Vec<usize> = (0..o.overrides.len()).filter(|&k| o.overrides[k].pattern.is_match(&prefix)).collect();
            for &k in &matched {
                used_override[k] = true;
            }
            let mut plan = o.plan(&prefix);
            if let Some(p) = plan.filter(|p| p.ty.is_some()) {
                plan = gguf_fallback(o, p, model.linear_shape(spec).1, &prefix)?;
            } else if let Some(p) = plan {
                let (out, inn) = model.linear_shape(spec);
                let want = p.want(o);
                let by = matched.last().map(|&k| format!(" (--override '{}')", o.overrides[k].pattern)).unwrap_or_default();
                // A shape every layout accepts for this group size: what fails there fails everywhere.
                let any = 256 * p.group_size.max(1);
                if let Err(e) = o.format.check(&want, any, any) {
                    bail!("{prefix}{by}: --format {fmt} cannot store --method {} here: {e}", p.method.name());
                }
                if let Err(e) = o.format.check(&want, out, inn) {
                    if !matched.is_empty() {
                        bail!("{prefix}{by}: --format {fmt} cannot store this module ({out}x{inn}): {e}");
                    }
                    let msg = format!("model.layers.*.{}: {e}", spec.name);
                    if !refused.contains(&msg) {
                        eprintln!("warning: {msg}; keeping {} unquantized", spec.name);
                        refused.push(msg);
                    }
                    plan = None;
                }
            }
            row.push(plan);
        }
        plans.push(row);
    }
    for (k, v) in o.overrides.iter().enumerate() {
        used_override[k] |= TABLES.iter().any(|t| v.pattern.is_match(t));
    }
    let unmatched: Vec<String> = o
        .overrides
        .iter()
        .zip(&used_override)
        .filter(|(_, u)| !**u)
        .map(|(v, _)| format!("--override pattern '{}'", v.pattern))
        .chain(o.skip.iter().zip(&used_skip).filter(|(_, u)| !**u).map(|(r, _)| format!("--skip pattern '{r}'")))
        .collect();
    for u in &unmatched {
        let names = c.family.linears().iter().map(|l| l.name).collect::<Vec<_>>().join(", ");
        let msg = format!("{u} matches no linear (names look like model.layers.0.{})", names.split(", ").next().unwrap_or(""));
        if o.allow_unmatched {
            eprintln!("warning: {msg}");
        } else {
            bail!("{msg}; linears are model.layers.N.{{{names}}} (--allow-unmatched makes this a warning)");
        }
    }
    if o.format == Format::Awq {
        // AutoAWQ's quantization_config has one bits / group_size for every module.
        let base = (o.bits, o.group_size);
        for (i, row) in plans.iter().enumerate() {
            for (spec, p) in c.family.linears().iter().zip(row) {
                if let Some(p) = p.filter(|p| (p.bits, p.group_size) != base) {
                    bail!(
                        "model.layers.{i}.{}: --format awq stores one bits / group size for every module ({}-bit g{}); this module is planned {}-bit g{} (AutoAWQ has no per-module override: use --format lowbit or gptq)",
                        spec.name,
                        base.0,
                        base.1,
                        p.bits,
                        p.group_size
                    );
                }
            }
        }
    }
    if plans.iter().flatten().all(Option::is_none) {
        bail!("nothing to quantize: every linear is skipped or does not fit --format {}", o.format.name());
    }
    Ok(plans)
}

pub fn quantize(model_dir: &Path, o: &Options, dry_run: bool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Summary> {
    if o.target_bpw.is_some() {
        // Plan first (a sensitivity pass), then write the plan as per-linear overrides.
        let plan = budget::plan(model_dir, o, progress)?;
        let mut s = quantize(model_dir, &budget::apply(o, &plan)?, dry_run, progress)?;
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
    let plans = plan_layers(&model, o)?;
    let tables = plan_tables(&model, o)?;
    let needs = plans.iter().flatten().flatten().fold(Needs::default(), |n, p| n.union(p.method.needs(o)));
    let (tokens, seqlen) = match (&o.calib, needs) {
        (Some(p), n) if n.any() => {
            crate::calib::check_budget(o.calib_samples, o.calib_seqlen, model.cfg.hidden_size)?;
            (crate::calib::sample_calib(&tok, p, o.calib_samples, o.calib_seqlen, o.seed)?, o.calib_seqlen)
        }
        _ => (Vec::new(), 0),
    };
    let mut ckpt = None;
    let mut resume_from = None;
    if let Some(od) = &mut od {
        let fp = fingerprint(model_dir, &model.ck, o, &tokens)?;
        // Keep finished layers for --resume only when asked to resume; otherwise leave nothing.
        od.keep_tmp_on_failure(o.resume);
        if o.resume {
            let mut refused = None;
            for (dir, _) in od.leftovers().into_iter().filter(|(_, cmd)| cmd == "quantize") {
                match checkpoint::Checkpointer::load(&dir, &fp, model.cfg.num_layers) {
                    Ok(Some((ck, st))) if resume_from.as_ref().is_none_or(|s: &checkpoint::State| st.layers_done > s.layers_done) => {
                        ckpt = Some(ck);
                        resume_from = Some(st);
                    }
                    Ok(_) => {}
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
            match (&ckpt, refused) {
                (Some(ck), _) => od.adopt(&ck.dir)?,
                (None, Some(e)) => return Err(e),
                (None, None) => eprintln!("warning: {}: no finished layer to resume from; starting over", escape::path(od.path())),
            }
        }
        if ckpt.is_none() {
            ckpt = Some(checkpoint::Checkpointer::new(od.create_tmp()?, &fp));
        }
    }
    // (The running linear bit counts are for --resume; sizes come from the written tensors.)
    let (tensors, meta, _, _, forward_seconds, search_seconds) =
        run(&model, o, &tokens, seqlen, &plans, &tables, needs, dry_run, ckpt.as_mut(), resume_from, progress)?;
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
    od.commit()?;
    Ok(summary)
}

/// A GGUF output is one file: it must not be, or lie inside, an input, and an existing file is
/// replaced (with --force) only when it is a GGUF file that lowbit wrote (its `general.name`
/// ends in " (lowbit)"); anything else is refused with what was found.
fn check_gguf_out(out: &Path, force: bool, model_dir: &Path, calib: Vec<&Path>) -> Result<()> {
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

/// The packed modules of a plan (decoder linears and tables): prefix → `(out, in)`.
pub(crate) fn packed_modules(
    model: &Model,
    plans: &[Vec<Option<LinearPlan>>],
    tables: &[(&'static str, LinearPlan)],
) -> BTreeMap<String, (usize, usize)> {
    let specs = model.cfg.family.linears();
    let (v, d) = (model.cfg.vocab_size, model.cfg.hidden_size);
    let layers = plans.iter().enumerate().flat_map(|(i, row)| {
        specs
            .iter()
            .zip(row)
            .filter(|(_, p)| p.is_some())
            .map(move |(s, _)| (format!("model.layers.{i}.{}", s.name), model.linear_shape(s)))
    });
    tables.iter().map(|t| (t.0.to_string(), (v, d))).chain(layers).collect()
}

/// Tensors, metadata, stored bits and weights of the linears, forward and search seconds.
type RunOut = (Vec<OutTensor>, LowbitQuantConfig, u64, u64, f64, f64);

/// Run decoder layer `lw` over the calibration hidden states `h` in place, gathering the
/// statistics `needs` of every linear input. Returns them and the forward seconds (hooks excluded).
pub(crate) fn calibrate_layer(
    model: &Model,
    lw: &LayerWeights,
    h: &mut [f32],
    seqlen: usize,
    needs: Needs,
) -> Result<(HashMap<Input, InputStats>, f64)> {
    let c = &model.cfg;
    let rows = h.len() / c.hidden_size;
    let mut stats: HashMap<Input, InputStats> = HashMap::new();
    let dims =
        [(Input::AttnIn, c.hidden_size), (Input::AttnOut, c.q_dim()), (Input::MlpIn, c.hidden_size), (Input::MlpAct, c.intermediate_size)];
    for (inp, d) in dims {
        stats.insert(inp, InputStats::new(d, rows, seqlen, needs));
    }
    let (t, mut in_hooks) = (Instant::now(), 0f64);
    // The first linear input that is not finite (finite weights can still overflow the hidden
    // state, e.g. through a huge norm weight): named in the error, with the layer.
    let mut non_finite: Option<(Input, f32)> = None;
    model.forward_layer(lw, h, seqlen, &mut |inp, x, rows| {
        let t = Instant::now();
        if non_finite.is_none() {
            non_finite = x.iter().find(|v| !v.is_finite()).map(|&v| (inp, v));
        }
        stats.get_mut(&inp).expect("every input has stats").observe(x, rows);
        in_hooks += t.elapsed().as_secs_f64();
    });
    if let Some((inp, v)) = non_finite {
        let readers: Vec<&str> = c.family.linears().iter().filter(|l| l.input == inp).map(|l| l.name).collect();
        bail!(
            "model.layers.{}: non-finite activation {v} in the input of {} during the calibration forward pass",
            lw.index,
            readers.join(", ")
        );
    }
    check_finite(h, &format!("model.layers.{}: output activations", lw.index))?;
    Ok((stats, t.elapsed().as_secs_f64() - in_hooks))
}

/// One layer's output for one set of options.
pub(crate) struct LayerOut {
    pub tensors: Vec<OutTensor>,
    pub modules: Vec<(String, LowbitModuleMeta)>,
    pub vq_modules: Vec<(String, crate::pack::vq::VqModuleMeta)>,
    pub bits: u64,
    pub weights: u64,
    /// The quantized linears (table order), for propagation.
    pub quantized: Vec<Option<QTensor>>,
    /// Seconds in AWQ's scale and clip searches.
    pub search_seconds: f64,
}

/// Quantize and pack the linears of layer `lw` (modified in place by AWQ-style transforms), plus
/// its norms and biases.
pub(crate) fn layer_out(
    o: &Options,
    model: &Model,
    lw: &mut LayerWeights,
    plan: &[Option<LinearPlan>],
    stats: &HashMap<Input, InputStats>,
    layer_input: Option<(&[f32], usize)>,
    dry_run: bool,
) -> Result<LayerOut> {
    let c = &model.cfg;
    let fd = o.float_dtype;
    // --dry-run: GGUF block codes of a zero weight (their tensors do not depend on the values);
    // every other plan's tensors come from its layout's specs below.
    let mut search_seconds = 0.0;
    let qs: Vec<Option<QTensor>> = if dry_run {
        lw.linears
            .iter()
            .zip(plan)
            .map(|(l, p)| p.and_then(|p| p.ty).map(|t| QTensor::Gguf(qgguf::quantize(t, &vec![0.0; l.out * l.inn], l.out, l.inn, None))))
            .collect()
    } else {
        quantize_layer(o, model, lw, plan, stats, layer_input, &mut search_seconds)?
    };
    let p = format!("model.layers.{}", lw.index);
    let mut r = LayerOut {
        tensors: Vec::new(),
        modules: Vec::new(),
        vq_modules: Vec::new(),
        bits: 0,
        weights: 0,
        quantized: Vec::new(),
        search_seconds,
    };
    for ((l, q), plan) in lw.linears.iter().zip(&qs).zip(plan) {
        let prefix = format!("{p}.{}", l.spec.name);
        match (q, plan) {
            (None, Some(pl)) if dry_run => {
                let specs = match pl.method.is_vq() {
                    true => crate::pack::vq::tensor_specs(&o.vptq, l.out, l.inn),
                    false => o.format.tensor_specs(&pl.want(o), l.out, l.inn),
                };
                for (suffix, dt, shape) in specs {
                    let n = crate::pack::spec_bytes(dt, &shape);
                    r.bits += 8 * n as u64;
                    r.tensors.push(OutTensor { name: format!("{prefix}.{suffix}"), dtype: dt, shape, data: vec![0; n] });
                }
                r.weights += (l.out * l.inn) as u64;
            }
            (Some(QTensor::Group(g)), Some(pl)) => {
                let packed = pack(o, g, &prefix)?;
                if let Packed::Gptq(gp) = &packed {
                    let n = gp.wrapped_zeros();
                    if n > 0 {
                        eprintln!(
                            "warning: {prefix}: {n} group(s) keep zero point 0 (an all-ones qzeros field): per-field v1 readers (AutoGPTQ, GPTQModel's dequantizer, lowbit) read them correctly, GPTQModel's word-wide v1→v2 conversion does not (docs/formats.md; --sym avoids zero points of 0)"
                        );
                    }
                }
                r.bits += packed.storage_bits();
                r.weights += (g.out_features * g.in_features) as u64;
                if let Packed::Lowbit(lp) = &packed {
                    r.modules.push((prefix.clone(), lp.meta(pl.method.name())));
                }
                r.tensors.extend(packed.to_tensors(&prefix));
            }
            (Some(QTensor::Gguf(b)), Some(pl)) => {
                r.bits += b.storage_bits();
                r.weights += (b.rows * b.cols) as u64;
                if o.format == Format::Gguf {
                    r.tensors.push(crate::pack::gguf::to_tensor(b, &prefix));
                } else {
                    let g =
                        crate::pack::gguf::to_groupq(b).ok_or_else(|| anyhow!("{prefix}: {} codes do not fit lowbit's layout", b.ty))?;
                    let packed = pack(o, &g, &prefix)?;
                    if let Packed::Lowbit(lp) = &packed {
                        r.modules.push((prefix.clone(), lp.meta(pl.method.name())));
                    }
                    r.tensors.extend(packed.to_tensors(&prefix));
                }
            }
            (Some(QTensor::Vq(v)), Some(pl)) => {
                let packed = crate::pack::vq::VqPacked::pack(v).with_context(|| format!("{prefix}: cannot pack"))?;
                r.bits += packed.storage_bits();
                r.weights += (v.out_features * v.in_features) as u64;
                r.vq_modules.push((prefix.clone(), packed.meta(pl.method.name())));
                r.tensors.extend(packed.to_tensors(&prefix));
            }
            _ => r.tensors.push(OutTensor::float(format!("{prefix}.weight"), fd, vec![l.out, l.inn], &l.w)),
        }
        if let Some(b) = &l.bias {
            r.tensors.push(OutTensor::float(format!("{prefix}.bias"), fd, vec![b.len()], b));
        }
    }
    r.tensors.push(OutTensor::float(format!("{p}.input_layernorm.weight"), fd, vec![c.hidden_size], &lw.input_norm));
    r.tensors.push(OutTensor::float(format!("{p}.post_attention_layernorm.weight"), fd, vec![c.hidden_size], &lw.post_norm));
    for (n, w) in [("q_norm", &lw.q_norm), ("k_norm", &lw.k_norm)] {
        if let Some(w) = w {
            r.tensors.push(OutTensor::float(format!("{p}.self_attn.{n}.weight"), fd, vec![w.len()], w));
        }
    }
    r.quantized = qs;
    Ok(r)
}

/// The tensors outside the decoder layers (embeddings, final norm, lm_head) are finite: checked
/// before any work.
pub(crate) fn check_finite_tail(model: &Model) -> Result<()> {
    for n in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] {
        if n == "lm_head.weight" && model.cfg.tie_word_embeddings {
            continue;
        }
        let (info, bytes) = model.ck.raw(n)?;
        if let Some(i) = crate::weights::first_non_finite(info.dtype, bytes) {
            bail!("{}: tensor {n}: non-finite value at index {i}", escape::path(&model.ck.dir));
        }
        model.ck.release_pages();
    }
    Ok(())
}

/// The token embedding and lm_head tables: kept in float unless an `--override` names them
/// (`embed_tokens=rtn:8`, `lm_head=rtn:6`), then stored in the lowbit layout.
pub const TABLES: [&str; 2] = ["model.embed_tokens", "lm_head"];

/// The plans of the stored tables an `--override` names (its pattern matches the table's name
/// and no decoder linear's), decided before any work. With tied
/// embeddings only `model.embed_tokens` is stored; an override of either name applies to it,
/// and two different ones are refused. Tables are quantized without calibration data (rtn,
/// statsq, shift), in the lowbit layout only.
pub fn plan_tables(model: &Model, o: &Options) -> Result<Vec<(&'static str, LinearPlan)>> {
    let c = &model.cfg;
    let fmt = o.format.name();
    let mut plans: Vec<(&'static str, LinearPlan, String)> = Vec::new();
    // An override names a table when its pattern matches the table and no decoder linear (so a
    // broad pattern such as '.*' keeps applying to the linears only).
    let linear_names: Vec<String> =
        (0..c.num_layers).flat_map(|i| c.family.linears().iter().map(move |l| format!("model.layers.{i}.{}", l.name))).collect();
    let names_table = |v: &&Override, name: &str| v.pattern.is_match(name) && !linear_names.iter().any(|l| v.pattern.is_match(l));
    for name in TABLES {
        let Some(v) = o.overrides.iter().rfind(|v| names_table(v, name)) else { continue };
        let by = format!("{name} (--override '{}')", v.pattern);
        match o.format {
            Format::Lowbit => {}
            Format::Gguf => bail!("{by}: --format gguf sets the table types with --token-embedding-type / --output-tensor-type"),
            _ => bail!(
                "{by}: --format {fmt} keeps the token embedding and lm_head in float (its loaders read no packed tables); use --format lowbit"
            ),
        }
        if v.ty.is_some() {
            bail!("{by}: a GGUF block type for a table needs --format gguf (--token-embedding-type / --output-tensor-type)");
        }
        if v.method.needs(o).any() || v.method.is_vq() {
            bail!(
                "{by}: --method {} needs calibration statistics of a linear's inputs; tables are quantized with rtn, statsq or shift",
                v.method.name()
            );
        }
        let p = LinearPlan { method: v.method, bits: v.bits, group_size: v.group_size.unwrap_or(o.group_size), ty: None };
        if let Err(e) = Format::Lowbit.check(&p.want(o), c.vocab_size, c.hidden_size) {
            bail!("{by}: {e}");
        }
        plans.push((name, p, by));
    }
    if c.tie_word_embeddings {
        // One stored table serves both.
        if let [(_, a, x), (_, b, y)] = plans.as_slice() {
            if a != b {
                bail!("{x} and {y}: the embeddings are tied (stored once), so both overrides must give the same plan");
            }
        }
        plans.truncate(1);
        if let Some(p) = plans.first_mut() {
            p.0 = TABLES[0];
        }
    }
    Ok(plans.into_iter().map(|(n, p, _)| (n, p)).collect())
}

/// The tail tensors and the lowbit metadata of the packed tables.
pub(crate) type TailOut = (Vec<OutTensor>, Vec<(String, LowbitModuleMeta)>);

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
                let q = match p.method.grid() {
                    Grid::HalfInt => statsq::statsq(&w, v, d, p.bits, p.group_size, None),
                    Grid::Shift => shift::shift(&w, v, d, p.bits, p.group_size, None),
                    Grid::Affine => rtn::quantize(&w, v, d, p.bits, p.group_size, o.sym),
                };
                let packed = crate::pack::LowbitPacked::pack(&q).with_context(|| format!("{n}: cannot pack"))?;
                meta.push((n.to_string(), packed.meta(p.method.name())));
                out.extend(packed.to_tensors(n));
            }
        }
        model.ck.release_pages();
    }
    Ok((out, meta))
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    o: &Options,
    tokens: &[u32],
    seqlen: usize,
    plans: &[Vec<Option<LinearPlan>>],
    tables: &[(&'static str, LinearPlan)],
    needs: Needs,
    dry_run: bool,
    mut ckpt: Option<&mut checkpoint::Checkpointer>,
    resume: Option<checkpoint::State>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<RunOut> {
    let c = &model.cfg;
    let mut out: Vec<OutTensor> = Vec::new();
    let (start, mut h, mut meta, mut lin_bits, mut lin_weights, mut fwd, mut search) = match resume {
        Some(st) => {
            let ck = ckpt.as_deref().expect("resume needs a checkpoint directory");
            let h = if seqlen > 0 { ck.read_hidden(tokens.len() * c.hidden_size)? } else { Vec::new() };
            eprintln!("resuming after layer {} of {}", st.layers_done, c.num_layers);
            (st.layers_done, h, st.meta, st.lin_bits, st.lin_weights, st.forward_seconds, st.search_seconds)
        }
        None => {
            let h = if seqlen > 0 && !dry_run { model.embed(tokens)? } else { Vec::new() };
            (0, h, LowbitQuantConfig::default(), 0u64, 0u64, 0f64, 0f64)
        }
    };
    for (i, plan) in plans.iter().enumerate().skip(start) {
        progress(i, c.num_layers, "quantizing");
        let mut lw = model.load_layer(i)?;
        check_finite_layer(&lw)?;
        // GPTQ-style methods feed the next layer the quantized layer's outputs: keep the input.
        let calibrate = seqlen > 0 && !dry_run;
        let propagate = calibrate && !o.propagate_fp && plan.iter().flatten().any(|p| p.method.propagates_quantized());
        let sequential = calibrate && o.true_sequential && plan.iter().flatten().any(|p| p.method.needs(o).hessian);
        let h_in = if propagate || sequential { Some(h.clone()) } else { None };
        let stats = if calibrate {
            let (st, t) = calibrate_layer(model, &lw, &mut h, seqlen, needs)?;
            fwd += t;
            st
        } else {
            HashMap::new()
        };
        let r = layer_out(o, model, &mut lw, plan, &stats, h_in.as_deref().map(|x| (x, seqlen)), dry_run)?;
        if let Some(mut hi) = h_in.filter(|_| propagate) {
            // Re-run the layer with every quantized linear dequantized.
            for (l, q) in lw.linears.iter_mut().zip(&r.quantized) {
                if let Some(q) = q {
                    l.w = q.dequantize();
                }
            }
            model.forward_layer(&lw, &mut hi, seqlen, &mut |_, _, _| {});
            h = hi;
        }
        lin_bits += r.bits;
        lin_weights += r.weights;
        search += r.search_seconds;
        meta.modules.extend(r.modules);
        meta.vq_modules.extend(r.vq_modules);
        model.ck.release_pages();
        if let Some(ck) = ckpt.as_deref_mut() {
            ck.write_layer(
                i,
                &r.tensors,
                &h,
                &checkpoint::State {
                    layers_done: i + 1,
                    meta: meta.clone(),
                    lin_bits,
                    lin_weights,
                    forward_seconds: fwd,
                    search_seconds: search,
                },
            )?;
        } else {
            out.extend(r.tensors);
        }
    }
    drop(h);
    progress(c.num_layers, c.num_layers, "writing");
    // With checkpoints the packed layers live on disk during the run and are read back once here.
    if let Some(ck) = ckpt.as_deref() {
        for i in 0..c.num_layers {
            out.extend(ck.read_layer(i)?);
        }
    }
    let (tail, tail_meta) = tail_tensors(model, o, tables, dry_run)?;
    out.extend(tail);
    meta.modules.extend(tail_meta);
    Ok((out, meta, lin_bits, lin_weights, fwd, search))
}

/// Write the output files into the temporary directory `tmp` (tensors, config.json with
/// quantization_config, tokenizer files) and drop the checkpoints; the caller moves it into place.
#[allow(clippy::too_many_arguments)]
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

fn check_finite(v: &[f32], what: &str) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what}: non-finite value {} at index {i}", v[i]);
    }
    Ok(())
}

/// Every weight of a layer read from the model is finite: linears, biases and norms.
pub(crate) fn check_finite_layer(lw: &LayerWeights) -> Result<()> {
    let p = format!("model.layers.{}", lw.index);
    for l in &lw.linears {
        check_finite(&l.w, &format!("{p}.{}.weight", l.spec.name))?;
        if let Some(b) = &l.bias {
            check_finite(b, &format!("{p}.{}.bias", l.spec.name))?;
        }
    }
    check_finite(&lw.input_norm, &format!("{p}.input_layernorm.weight"))?;
    check_finite(&lw.post_norm, &format!("{p}.post_attention_layernorm.weight"))
}

/// Every float tensor of the output is finite (a non-finite source weight, or a finite one that
/// overflows --float-dtype f16, would otherwise be written and only show up as NaN at eval).
pub(crate) fn check_finite_output(tensors: &[OutTensor]) -> Result<()> {
    for t in tensors {
        if let Some(i) = crate::weights::first_non_finite(t.dtype, &t.data) {
            bail!(
                "{}: non-finite value at index {i} in the output; a source value is not finite or does not fit {:?} (choose a wider float type)",
                escape::text(&t.name),
                t.dtype
            );
        }
    }
    Ok(())
}

/// A digest of everything the output depends on: every byte of the model's files (config,
/// tokenizer files, every safetensors shard) and of the calibration text, the calibration
/// tokens, every option, and lowbit's version. A resume with other inputs is refused.
fn fingerprint(model_dir: &Path, ck: &crate::weights::Checkpoint, o: &Options, tokens: &[u32]) -> Result<String> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    // Every piece length-prefixed, so no two different inputs concatenate to the same stream.
    let mut put = |tag: &str, bytes: &[u8]| {
        h.update(&(tag.len() as u64).to_le_bytes());
        h.update(tag.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put("lowbit", format!("{}|{}", env!("CARGO_PKG_VERSION"), checkpoint::FORMAT).as_bytes());
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
        let p = model_dir.join(f);
        match std::fs::read(&p) {
            Ok(b) => put(f, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => put(f, b"(absent)"),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", escape::path(&p))),
        }
    }
    for (path, bytes) in ck.files() {
        put(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), bytes);
        ck.release_pages();
    }
    for c in o.calib.iter().flat_map(|c| c.files()) {
        put("calib", &std::fs::read(c).with_context(|| format!("{}: cannot read", escape::path(c)))?);
    }
    if let Some(c) = o.calib.as_ref().filter(|c| c.parts.len() > 1) {
        put("calib mix", format!("{:?}", c.parts.iter().map(|p| p.weight).collect::<Vec<_>>()).as_bytes());
    }
    put("tokens", &tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>());
    let opts = format!(
        "{:?}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{}|{:?}|{}|{}|{}|{:?}",
        o.method,
        o.bits,
        o.group_size,
        o.sym,
        o.calib_samples,
        o.calib_seqlen,
        o.format,
        o.float_dtype,
        o.search_tokens,
        o.overrides.iter().map(|v| format!("{}={:?}:{}:{:?}", v.pattern, v.method, v.bits, v.group_size)).collect::<Vec<_>>(),
        o.skip.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>(),
        o.seed,
        o.vptq,
        o.act_order,
        o.static_groups,
        o.propagate_fp,
        o.aware_weight
    );
    put("options", opts.as_bytes());
    put(
        "gguf options",
        format!("{:?}|{:?}|{:?}|{:?}", o.gguf_type, o.token_embd_type, o.output_type, o.overrides.iter().map(|v| v.ty).collect::<Vec<_>>())
            .as_bytes(),
    );
    put("awq options", format!("{:?}|{}", o.awq_range, o.awq_symmetric_clip).as_bytes());
    put("gptq options", format!("true_sequential={}", o.true_sequential).as_bytes());
    Ok(format!("{:032x}", h.digest128()))
}

/// Per-module metadata of a lowbit output, for inspect.
pub fn module_meta(cfg: &serde_json::Value) -> Option<BTreeMap<String, LowbitModuleMeta>> {
    serde_json::from_value::<LowbitQuantConfig>(cfg.get("quantization_config")?.clone()).ok().map(|q| q.modules)
}
