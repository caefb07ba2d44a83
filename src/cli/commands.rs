//! The commands: each turns its parsed arguments into a library call and prints the result.

use super::progress::{progress_tokens, Progress, StderrEvents};
use super::*;
use crate::eval;
use crate::mem::fmt_bytes;
use crate::tokenizer::Tokenizer;
use crate::verify;
use anyhow::{anyhow, Result};

pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().ok();
    }
    match cli.cmd {
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Quantize(a) => cmd_quantize(a),
        Cmd::Verify(a) => cmd_verify(a),
        Cmd::Sweep(a) => cmd_sweep(a),
        Cmd::ImportGguf(a) => {
            let opts = crate::gguf::ImportOptions { tokenizer: a.tokenizer, config: a.config, dtype: a.dtype.dtype(), force: a.force };
            let rep = crate::gguf::import_gguf(&a.gguf, &a.out, &opts, &mut StderrEvents::one_bar())?;
            if a.json {
                println!("{}", serde_json::to_string(&rep)?);
            } else {
                println!("{rep}");
            }
            Ok(())
        }
    }
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let model = crate::qmodel::open(&a.model)?;
    model.cfg.check_positions(a.ctx, "--ctx").map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let tok = match &a.tokenizer {
        Some(t) => Tokenizer::from_file(t)?,
        None if crate::gguf::load::is_gguf(&a.model) => {
            let t = a.model.with_file_name("tokenizer.json");
            if !t.exists() {
                return Err(anyhow!("{}: no tokenizer.json beside the GGUF file; pass --tokenizer", a.model.display()));
            }
            Tokenizer::from_file(&t)?
        }
        None => Tokenizer::from_dir(&a.model)?,
    };
    let text = crate::calib::read_text(&a.text)?;
    let convention = eval::Convention::from(a.convention);
    let w = eval::make_windows(&tok, &text, &a.text.display().to_string(), a.ctx, convention, a.max_windows)?;
    let reference = a.reference.as_deref().map(crate::qmodel::open).transpose()?;
    let mut pb: Option<Progress> = None;
    let r = eval::perplexity_vs(&model, reference.as_ref(), &w, &mut |done, total| {
        pb.get_or_insert_with(|| progress_tokens(total as u64, "eval tokens")).set(done as u64, "eval tokens")
    })?;
    if let Some(p) = pb {
        p.finish();
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = a.model.display().to_string().into();
        v["text"] = a.text.display().to_string().into();
        v["convention"] = serde_json::to_value(convention)?;
        println!("{v}");
    } else {
        println!("ppl            {:.4}", r.ppl);
        println!("mean NLL       {:.6}", r.mean_nll);
        println!("tokens scored  {} ({} windows of {}, {:?})", r.tokens_scored, r.windows, r.ctx, convention);
        if let (Some(k), Some(t)) = (r.kld, r.top1_agreement) {
            println!("KL divergence  {k:.6} (vs {})", a.reference.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
            println!("top-1 agree    {:.4}", t);
        }
        println!("speed          {:.1} tokens/s ({:.1} s)", r.tokens_per_s, r.seconds);
        if let Some(p) = r.peak_rss_bytes {
            println!("peak memory    {}", fmt_bytes(p));
        }
    }
    // A broken model (NaN or infinite logits) must fail a gate that trusts the exit code.
    if !r.ppl.is_finite() || r.kld.is_some_and(|k| !k.is_finite()) {
        let kld = r.kld.map(|k| format!(", KL divergence {k}")).unwrap_or_default();
        return Err(anyhow!(
            "{}: perplexity {}{kld} is not finite: the model produces NaN or infinite logits",
            crate::escape::path(&a.model),
            r.ppl
        ));
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let rep = crate::qmodel::inspect(&a.model)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.to_text());
    }
    Ok(())
}

fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    let mut o = a.q.options(a.method, a.bits, a.out.clone(), a.format)?;
    o.resume = a.resume;
    o.propagate_fp = a.propagate_fp;
    o.target_bpw = a.target_bpw;
    o.target_size = a.target_size;
    o.plan_bits = a.plan_bits.clone();
    o.plan_groups = a.plan_groups.clone();
    o.sensitivity_cache = a.sensitivity_cache.clone();
    o.float_tables = a.float_tables;
    let mut ev = StderrEvents::one_bar();
    let s = crate::quantize::quantize(&a.q.model, &o, a.dry_run, &mut ev)?;
    ev.finish();
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        let verb = if s.dry_run { "would write" } else { "wrote" };
        let what = if o.method.is_vq() {
            format!("vptq v{} k{}", o.vptq.vector_len, o.vptq.centroids)
        } else {
            format!("{} {}-bit g{}", s.method, s.bits, s.group_size)
        };
        let what = if s.plan.is_some() { format!("{} per-linear plan", o.method.name()) } else { what };
        let what = match (o.format, o.gguf_type) {
            (Format::Gguf, t) => format!("{} {}", s.method, t.unwrap_or(crate::quantize::DEFAULT_GGUF_TYPE).name()),
            (_, Some(t)) => format!("{} on the {} grid", s.method, t.name()),
            _ => what,
        };
        if let Some(p) = &s.plan {
            print!("{}", crate::quantize::budget::describe(p));
        }
        println!("{verb} {} ({}, {what}, format {})", s.out, fmt_bytes(s.bytes), s.format);
        for f in &s.fallbacks {
            println!("fallback         {f}");
        }
        println!(
            "bits per weight  {:.3} (quantized linears, scales and zeros included), {:.3} (whole checkpoint)",
            s.linear_bpw, s.model_bpw
        );
        if !s.dry_run {
            println!(
                "time             {:.1} s ({} calibration tokens; calibration forward {:.1} s)",
                s.seconds, s.calib_tokens, s.forward_seconds
            );
            if s.search_seconds > 0.0 {
                println!(
                    "AWQ search       {:.1} s ({:.2} × the calibration forward)",
                    s.search_seconds,
                    s.search_seconds / s.forward_seconds.max(1e-9)
                );
            }
            if let Some(p) = s.peak_rss_bytes {
                println!("peak memory      {}", fmt_bytes(p));
            }
        }
    }
    Ok(())
}

fn cmd_verify(a: VerifyArgs) -> Result<()> {
    let re = a.layers.as_deref().map(regex::Regex::new).transpose().map_err(|e| anyhow!("--layers: invalid regex: {e}"))?;
    match verify_command(&a.model, re.as_ref(), &a.batch, a.json)? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let first = *a.methods.first().ok_or_else(|| anyhow!("--methods: give at least one method"))?;
    let base =
        a.q.options(first, *a.bits.first().ok_or_else(|| anyhow!("--bits: give at least one bit width"))?, a.out.clone(), Format::Lowbit)?;
    let s = crate::sweep::SweepOptions {
        base,
        methods: a.methods,
        bits: a.bits,
        eval_text: a.eval_text[0].clone(),
        more_eval_texts: a.eval_text[1..].to_vec(),
        eval_ctx: a.eval_ctx,
        convention: a.convention.into(),
        max_windows: a.max_windows,
        discard_models: a.discard_models,
        score_memory: a.score_memory_mb << 20,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let mut ev = StderrEvents::bar_per_stage();
    let r = crate::sweep::sweep(&a.q.model, &s, &mut ev)?;
    ev.finish();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", crate::sweep::markdown(&r));
        println!("\nwrote {}/results.json, results.md, plot.svg", a.out.display());
    }
    Ok(())
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// `lowbit verify`: returns the process exit code (0, [`verify::EXIT_MISMATCH`], [`verify::EXIT_NO_GPU`]);
/// input errors are returned as errors (exit 2).
fn verify_command(dir: &std::path::Path, layers: Option<&regex::Regex>, batches: &[usize], json: bool) -> Result<i32> {
    verify::check_batches(batches)?;
    let selected = verify::select(dir, layers)?;
    if !crate::cuda::gpu_available() {
        eprintln!("error: no CUDA GPU available (libcuda not found or no device); lowbit verify needs an NVIDIA GPU");
        return Ok(verify::EXIT_NO_GPU);
    }
    let mut gpu = crate::cuda::GpuVerifier::new(0)?;
    gpu.iters = 5;
    let d = gpu.device();
    eprintln!("device: {} (sm_{}{}), {} SMs; {} layers x {} batch sizes", d.name, d.cc.0, d.cc.1, d.sms, selected.len(), batches.len());
    if !json {
        println!(
            "{:<44} {:<26} {:>5} {:>10} {:>10} {:>9} {:>9} {:>7} {:>8} {:>6} {:>4}",
            "layer", "kernel", "batch", "max rel err", "after timing", "us", "cuBLAS us", "speedup", "GB/s", "% peak", "ok"
        );
    }
    let rows = verify::verify(&gpu, dir, &selected, batches, &mut |r| {
        if !json {
            println!(
                "{:<44} {:<26} {:>5} {:>10.2e} {:>10.2e} {:>9.1} {:>9} {:>7} {:>8.1} {:>6.1} {:>4}",
                r.layer,
                r.kind,
                r.batch,
                r.max_rel_err,
                r.max_rel_err_after_timing,
                r.kernel_us,
                opt(r.cublas_us, 1),
                opt(r.speedup, 2),
                r.gbps,
                r.pct_of_peak,
                if r.ok { "ok" } else { "FAIL" }
            );
        }
    })?;
    for o in gpu.kernel_origins() {
        eprintln!("kernel image {o}");
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    if let Err(e) = verify::judge(&rows) {
        eprintln!("error: {}: {e:#}", dir.display());
        return Ok(verify::EXIT_MISMATCH);
    }
    eprintln!("verified {} results: all within {:e} of the CPU reference", rows.len(), verify::TOLERANCE);
    Ok(0)
}
