//! `lowbit sweep`: every (method, bits) combination from one calibration pass, scored on the
//! same eval windows in one pass, reported as results.json, results.md and plot.svg.
//!
//! Calibration statistics are collected once per layer, on the float model's activations
//! (AutoAWQ's scheme, and `--propagate-fp` for GPTQ/VPTQ), and every combination quantizes that
//! layer from them; its packed layer goes to its own partial directory at once, so memory holds
//! one layer's activations and weights whatever the number of combinations (that phase is the
//! quantize pipeline's, `quantize::combos`; this module picks the combinations, scores and
//! reports). The evaluation then
//! runs the float model once per window as the reference of every quantized model (streamed KL
//! divergence and top-1 agreement).

use crate::eval::{self, Convention, EvalResult};
use crate::events::Events;
use crate::model::Model;
use crate::outdir::{OutDir, Source};
use crate::quant::vptq::VptqConfig;
use crate::quantize::{self, Combo, Method, Options};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct SweepOptions {
    /// Shared settings (calibration, group size, overrides, ...); `method` and `bits` are set per
    /// combination, `out` is the sweep's output directory.
    pub base: Options,
    pub methods: Vec<Method>,
    pub bits: Vec<u8>,
    pub eval_text: PathBuf,
    /// More texts every combination is scored on (ppl, and KLD / top-1 against the float model),
    /// reported beside the first.
    pub more_eval_texts: Vec<PathBuf>,
    pub eval_ctx: usize,
    pub convention: Convention,
    pub max_windows: Option<usize>,
    /// Delete each quantized checkpoint once scored (keep only the reports).
    pub discard_models: bool,
    /// Bytes of cached f32 embedding/lm_head tables allowed per scoring pass.
    pub score_memory: usize,
    /// The command line, recorded in the reports.
    pub command: String,
}

/// One row of results.json.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub method: String,
    pub bits: u8,
    pub group_size: usize,
    /// VPTQ's vector length and codebook size (`--bits` picks them; see [`vptq_for_bits`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vq: Option<String>,
    /// Why the combination was not run (the other fields are then absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Stored bits per weight of the quantized linears, scales/zeros/codebooks included.
    pub bpw: Option<f64>,
    /// Stored bits per parameter of the whole checkpoint (embeddings and norms included).
    pub model_bpw: Option<f64>,
    pub size_mb: Option<f64>,
    pub ppl: Option<f64>,
    pub delta_ppl_pct: Option<f64>,
    pub kld: Option<f64>,
    pub top1_agreement: Option<f64>,
    /// Seconds spent quantizing and writing this combination (the shared calibration excluded).
    pub quantize_seconds: Option<f64>,
    /// Directory of the quantized checkpoint, relative to the sweep's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Scores on the further eval texts, in the order of [`Report::more_eval`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_eval: Vec<TextScore>,
}

/// One combination's scores on a further eval text.
#[derive(Clone, Debug, Serialize)]
pub struct TextScore {
    pub ppl: f64,
    pub kld: Option<f64>,
    pub top1_agreement: Option<f64>,
}

/// A further eval text: its windows and the float model's ppl on it.
#[derive(Clone, Debug, Serialize)]
pub struct TextFp {
    pub eval_text: String,
    pub windows: usize,
    pub tokens_scored: usize,
    pub fp_ppl: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FpRecord {
    pub ppl: f64,
    pub size_mb: f64,
    pub bits: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub lowbit_version: String,
    pub command: String,
    pub model: String,
    pub calib: Option<String>,
    pub calib_tokens: usize,
    pub eval_text: String,
    pub eval_ctx: usize,
    pub convention: Convention,
    pub windows: usize,
    pub tokens_scored: usize,
    pub group_size: usize,
    pub overrides: Vec<String>,
    pub skip: Vec<String>,
    /// Seconds of the shared calibration pass (float forward and statistics).
    pub calibration_seconds: f64,
    pub eval_seconds: f64,
    pub fp: FpRecord,
    pub records: Vec<Record>,
    /// The further eval texts (`--eval-text` repeated).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_eval: Vec<TextFp>,
}

/// VPTQ settings for a bit budget: index bits per weight `log2(k)/v` equal `bits`, with vectors
/// short enough for k-means to stay cheap on a CPU. `v = 3` needs every output dimension
/// divisible by 3; otherwise 3 bits use `v = 2, k = 64`.
pub fn vptq_for_bits(bits: u8, base: &VptqConfig, out_dims: &[usize]) -> Option<VptqConfig> {
    let (v, k) = match bits {
        2 => (4, 256),
        3 if out_dims.iter().all(|d| d % 3 == 0) => (3, 512),
        3 => (2, 64),
        4 => (2, 256),
        _ => return None,
    };
    Some(VptqConfig { vector_len: v, centroids: k, ..base.clone() })
}

fn combo_name(o: &Options) -> String {
    match o.method {
        m if m.is_vq() => format!("{}-v{}k{}", m.name(), o.vptq.vector_len, o.vptq.centroids),
        m => format!("{}-w{}g{}", m.name().replace('+', "-"), o.bits, o.group_size),
    }
}

fn empty_record(o: &Options) -> Record {
    Record {
        method: o.method.name().into(),
        bits: o.bits,
        group_size: o.group_size,
        vq: o.method.is_vq().then(|| format!("v{}k{}", o.vptq.vector_len, o.vptq.centroids)),
        skipped: None,
        bpw: None,
        model_bpw: None,
        size_mb: None,
        ppl: None,
        delta_ppl_pct: None,
        kld: None,
        top1_agreement: None,
        quantize_seconds: None,
        dir: None,
        more_eval: Vec::new(),
    }
}

/// Why a combination cannot run on this model, if it cannot.
fn check_combo(model: &Model, o: &Options) -> Option<String> {
    if let Err(e) = quantize::validate(o) {
        return Some(format!("{e:#}"));
    }
    if o.method.is_vq() {
        for spec in model.cfg.family.linears() {
            let (out, inn) = model.linear_shape(spec);
            if let Err(e) = o.vptq.check_shape(out, inn) {
                return Some(format!("{}: {e:#}", spec.name));
            }
        }
    }
    None
}

/// Run the sweep; `ev` gets the progress of both phases, the skipped combinations and warnings.
pub fn sweep(model_dir: &Path, s: &SweepOptions, ev: &mut dyn Events) -> Result<Report> {
    let out = &s.base.out;
    for (c, e) in s
        .base
        .calib
        .iter()
        .flat_map(|c| c.files())
        .flat_map(|c| std::iter::once(&s.eval_text).chain(&s.more_eval_texts).map(move |e| (c, e)))
    {
        let same = match (std::fs::canonicalize(c), std::fs::canonicalize(e)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            bail!("{}: the calibration text is the eval text; calibrate on other text than you score", c.display());
        }
    }
    let model = Model::open_dense(model_dir)?;
    if model.cfg.raw.get("quantization_config").is_some() {
        bail!("{}: already quantized (has quantization_config)", crate::escape::path(model_dir));
    }
    let at = |e: anyhow::Error| anyhow::anyhow!("{}: {e}", model_dir.display());
    model.cfg.check_positions(s.eval_ctx, "--eval-ctx").map_err(at)?;
    if s.base.calib.is_some() {
        model.cfg.check_positions(s.base.calib_seqlen, "--calib-seqlen").map_err(at)?;
    }
    // The output is checked against the inputs and locked before any work.
    let mut inputs = vec![Source::new(model_dir, "model directory"), Source::new(&s.eval_text, "eval text")];
    for e in &s.more_eval_texts {
        inputs.push(Source::new(e, "eval text"));
    }
    for c in s.base.calib.iter().flat_map(|c| c.files()) {
        inputs.push(Source::new(c, "calibration text"));
    }
    let mut od = OutDir::begin(out, "sweep", s.base.force, &inputs)?;
    quantize::check_finite_tail(&model)?;
    let tok = Tokenizer::from_dir(model_dir)?;
    // The eval windows first: a bad eval text fails before any work.
    let text = crate::calib::read_text(&s.eval_text)?;
    let windows = eval::make_windows(&tok, &text, &s.eval_text.display().to_string(), s.eval_ctx, s.convention, s.max_windows)?;
    drop(text);
    let mut more = Vec::new();
    for e in &s.more_eval_texts {
        let text = crate::calib::read_text(e)?;
        more.push((
            e.display().to_string(),
            eval::make_windows(&tok, &text, &e.display().to_string(), s.eval_ctx, s.convention, s.max_windows)?,
        ));
    }

    let tmp = od.create_tmp(ev)?.to_path_buf();
    let rep = run(&Inputs { model_dir, model: &model, tok: &tok, windows: &windows, more: &more, s }, &tmp, ev)?;
    od.commit(ev)?;
    Ok(rep)
}

/// What one sweep reads: the model, its tokenizer, the eval windows (the first text's, then the
/// further texts') and the options.
struct Inputs<'a> {
    model_dir: &'a Path,
    model: &'a Model,
    tok: &'a Tokenizer,
    windows: &'a eval::Windows,
    more: &'a [(String, eval::Windows)],
    s: &'a SweepOptions,
}

/// Quantize every combination, score them, and write the reports into `tmp`.
fn run(inputs: &Inputs, tmp: &Path, ev: &mut dyn Events) -> Result<Report> {
    let Inputs { model_dir, model, tok, windows, more, s } = *inputs;
    let c = &model.cfg;
    let out_dims: Vec<usize> = c.family.linears().iter().map(|sp| model.linear_shape(sp).0).collect();
    // Every combination, or why it is skipped.
    let mut records: Vec<Record> = Vec::new();
    let mut combos: Vec<Combo> = Vec::new();
    for &m in &s.methods {
        for &b in &s.bits {
            let mut o = Options { method: m, bits: b, ..s.base.clone() };
            if m.is_vq() {
                match vptq_for_bits(b, &s.base.vptq, &out_dims) {
                    Some(v) => o.vptq = v,
                    None => {
                        records.push(Record { skipped: Some(format!("VPTQ runs at 2, 3 or 4 bits, not {b}")), ..empty_record(&o) });
                        continue;
                    }
                }
            }
            if let Some(why) = check_combo(model, &o) {
                records.push(Record { skipped: Some(why), ..empty_record(&o) });
                continue;
            }
            let name = combo_name(&o);
            if combos.iter().any(|c| c.name == name) {
                continue;
            }
            o.out = tmp.join(&name);
            let dir = tmp.join(format!(".{name}.partial"));
            let k = Combo::new(model, name, o, &dir, ev)?;
            records.push(Record { dir: Some(k.name.clone()), ..empty_record(&k.o) });
            combos.push(k);
        }
    }
    for r in records.iter().filter(|r| r.skipped.is_some()) {
        ev.note(&format!("skipping {} {}-bit: {}", r.method, r.bits, r.skipped.as_deref().unwrap_or("")));
    }
    if combos.is_empty() {
        bail!("nothing to sweep: every combination was skipped");
    }
    // Phase 1: one calibration pass, every combination quantizes each layer from it.
    let shared = quantize::quantize_combos(model_dir, model, tok, &s.base, &mut combos, ev)?;

    // Phase 2: score the float model and every combination on the same windows. Each open model
    // caches its f32 embedding/lm_head tables, so models are scored in passes whose tables stay
    // under `score_memory` (one pass for small models; the float reference reruns per pass).
    let tables = c.vocab_size * c.hidden_size * 4 * if c.tie_word_embeddings { 1 } else { 2 };
    let per_pass = (s.score_memory / tables.max(1)).max(1);
    let passes = combos.len().div_ceil(per_pass);
    let t_eval = Instant::now();
    let mut fp = None;
    let mut results: Vec<EvalResult> = Vec::new();
    for (p, batch) in combos.chunks(per_pass).enumerate() {
        let opened: Vec<Model> = batch.iter().map(|k| crate::qmodel::open(&k.o.out)).collect::<Result<_>>()?;
        let refs: Vec<&Model> = opened.iter().collect();
        let what = if passes > 1 { format!("scoring {}/{passes}", p + 1) } else { "scoring".to_string() };
        let what = format!("{what} tokens");
        let (f, r) = eval::perplexity_many(Some(model), &refs, windows, &mut |done, total| ev.progress(done, total, &what))?;
        fp = fp.or(f);
        results.extend(r);
    }
    // The further texts, the same way.
    let mut more_fp: Vec<TextFp> = Vec::new();
    let mut more_results: Vec<Vec<EvalResult>> = vec![Vec::new(); combos.len()];
    for (text, w) in more {
        let mut f_text = None;
        let mut done = 0;
        for batch in combos.chunks(per_pass) {
            let opened: Vec<Model> = batch.iter().map(|k| crate::qmodel::open(&k.o.out)).collect::<Result<_>>()?;
            let refs: Vec<&Model> = opened.iter().collect();
            let what = format!("scoring {} tokens", Path::new(text).file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            let (f, r) = eval::perplexity_many(Some(model), &refs, w, &mut |d, t| ev.progress(d, t, &what))?;
            f_text = f_text.or(f);
            for (i, x) in r.into_iter().enumerate() {
                more_results[done + i].push(x);
            }
            done += batch.len();
        }
        let f = f_text.expect("the float model is the reference");
        more_fp.push(TextFp { eval_text: text.clone(), windows: f.windows, tokens_scored: f.tokens_scored, fp_ppl: f.ppl });
    }
    let eval_seconds = t_eval.elapsed().as_secs_f64();
    let fp = fp.expect("the float model is the reference");

    let by_name: BTreeMap<&str, (&Combo, &EvalResult, &Vec<EvalResult>)> =
        combos.iter().zip(&results).zip(&more_results).map(|((k, r), m)| (k.name.as_str(), (k, r, m))).collect();
    for rec in records.iter_mut() {
        let Some((k, r, m)) = rec.dir.as_deref().and_then(|d| by_name.get(d)) else { continue };
        rec.more_eval = m.iter().map(|x| TextScore { ppl: x.ppl, kld: x.kld, top1_agreement: x.top1_agreement }).collect();
        let info = crate::qmodel::inspect(&k.o.out)?;
        // inspect's count of the written checkpoint: the same function quantize reports with.
        rec.bpw = info.linear_bits_per_weight;
        rec.model_bpw = Some(info.bits_per_weight);
        rec.size_mb = Some(info.total_bytes as f64 / 1e6);
        rec.ppl = Some(r.ppl);
        rec.delta_ppl_pct = Some(100.0 * (r.ppl / fp.ppl - 1.0));
        rec.kld = r.kld;
        rec.top1_agreement = r.top1_agreement;
        rec.quantize_seconds = Some(k.seconds);
        if s.discard_models {
            std::fs::remove_dir_all(&k.o.out).with_context(|| format!("{}: cannot remove", k.o.out.display()))?;
            rec.dir = None;
        }
    }
    let fp_bytes: u64 = model.ck.tensors().values().map(|t| t.nbytes() as u64).sum();
    let fp_bits = model.ck.tensors().values().map(|t| 8 * crate::weights::dtype_size(t.dtype).unwrap_or(4) as u32).max().unwrap_or(32);
    let report = Report {
        lowbit_version: env!("CARGO_PKG_VERSION").into(),
        command: s.command.clone(),
        model: model_dir.display().to_string(),
        calib: s.base.calib.as_ref().map(|c| c.describe()),
        calib_tokens: shared.calib_tokens,
        eval_text: s.eval_text.display().to_string(),
        eval_ctx: s.eval_ctx,
        convention: s.convention,
        windows: fp.windows,
        tokens_scored: fp.tokens_scored,
        group_size: s.base.group_size,
        overrides: s
            .base
            .overrides
            .iter()
            .map(|o| format!("{}={}:{}{}", o.pattern, o.method.name(), o.bits, o.group_size.map(|g| format!(":{g}")).unwrap_or_default()))
            .collect(),
        skip: s.base.skip.iter().map(|r| r.as_str().to_string()).collect(),
        calibration_seconds: shared.calibration_seconds,
        eval_seconds,
        fp: FpRecord { ppl: fp.ppl, size_mb: fp_bytes as f64 / 1e6, bits: fp_bits },
        records,
        more_eval: more_fp,
    };
    crate::st_write::write_atomic(&tmp.join("results.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    crate::st_write::write_atomic(&tmp.join("results.md"), markdown(&report).as_bytes())?;
    crate::st_write::write_atomic(&tmp.join("plot.svg"), crate::plot::svg(&chart(&report))?.as_bytes())?;
    Ok(report)
}

/// The plot's data: the scored combinations' bits per weight and perplexity.
fn chart(r: &Report) -> crate::plot::Chart<'_> {
    crate::plot::Chart {
        model: &r.model,
        eval_text: &r.eval_text,
        eval_ctx: r.eval_ctx,
        fp_ppl: r.fp.ppl,
        fp_bits: r.fp.bits,
        points: r.records.iter().filter(|x| x.skipped.is_none()).map(|x| (x.method.as_str(), x.bpw, x.ppl)).collect(),
    }
}

/// The results table (and the settings) as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s += &format!(
        "Model `{}`; calibration `{}` ({} tokens); eval `{}`, ctx {}, {} windows ({} predictions, {} convention); group size {}.\n\n",
        r.model,
        r.calib.as_deref().unwrap_or("none"),
        r.calib_tokens,
        r.eval_text,
        r.eval_ctx,
        r.windows,
        r.tokens_scored,
        format!("{:?}", r.convention).to_lowercase(),
        r.group_size
    );
    if !r.overrides.is_empty() || !r.skip.is_empty() {
        s += &format!("Overrides: {:?}; kept in float: {:?}.\n\n", r.overrides, r.skip);
    }
    s += "| method | bits | bpw | size MB | ppl | Δppl % | KLD | top-1 | quantize s |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    s += &format!(
        "| FP ({}-bit) | {} | {:.3} | {:.1} | {:.4} | | 0 | 1 | |\n",
        r.fp.bits, r.fp.bits, r.fp.bits as f64, r.fp.size_mb, r.fp.ppl
    );
    for x in &r.records {
        let method = match &x.vq {
            Some(v) => format!("{} {v}", x.method),
            None => x.method.clone(),
        };
        if let Some(why) = &x.skipped {
            s += &format!("| {method} | {} | skipped: {why} | | | | | | |\n", x.bits);
            continue;
        }
        let f = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_default();
        let ppl = match x.ppl {
            Some(p) if p >= 1e4 => format!("{p:.3e}"),
            p => f(p, 4),
        };
        let d = match x.delta_ppl_pct {
            Some(p) if p.abs() >= 1e4 => format!("{p:.2e}"),
            p => f(p, 1),
        };
        s += &format!(
            "| {method} | {} | {} | {} | {ppl} | {d} | {} | {} | {} |\n",
            x.bits,
            f(x.bpw, 3),
            f(x.size_mb, 1),
            f(x.kld, 4),
            f(x.top1_agreement, 3),
            f(x.quantize_seconds, 1)
        );
    }
    for (i, t) in r.more_eval.iter().enumerate() {
        s += &format!("\nEval `{}`, {} windows ({} predictions); FP ppl {:.4}.\n\n", t.eval_text, t.windows, t.tokens_scored, t.fp_ppl);
        s += "| method | bits | ppl | Δppl % | KLD | top-1 |\n|---|---|---|---|---|---|\n";
        for x in r.records.iter().filter(|x| x.skipped.is_none()) {
            let Some(m) = x.more_eval.get(i) else { continue };
            let method = match &x.vq {
                Some(v) => format!("{} {v}", x.method),
                None => x.method.clone(),
            };
            let f = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_default();
            s += &format!(
                "| {method} | {} | {:.4} | {:.1} | {} | {} |\n",
                x.bits,
                m.ppl,
                100.0 * (m.ppl / t.fp_ppl - 1.0),
                f(m.kld, 4),
                f(m.top1_agreement, 3)
            );
        }
    }
    s
}
