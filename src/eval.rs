//! Perplexity under the two common conventions.
//!
//! - `windows` (GPTQ/AWQ papers): encode with default special tokens, cut non-overlapping windows
//!   of `ctx` tokens from the start (the remainder is dropped), score all `ctx-1` predictions.
//! - `llamacpp` (llama-perplexity): encode without special tokens, replace each window's first
//!   token by BOS when the tokenizer adds BOS by default, score predictions of tokens
//!   `ctx/2+1 ..= ctx-1` only.

use crate::model::Model;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    Windows,
    Llamacpp,
}

/// Token windows and which positions of each are scored.
pub struct Windows {
    pub ctx: usize,
    pub windows: Vec<Vec<u32>>,
    /// Logit positions `j` scored in every window (predicting token `j+1`).
    pub first: usize,
}

/// Cut `text` into windows under `conv`. `text_name` names the file in errors.
pub fn make_windows(
    tok: &Tokenizer,
    text: &str,
    text_name: &str,
    ctx: usize,
    conv: Convention,
    max_windows: Option<usize>,
) -> Result<Windows> {
    if ctx < 2 {
        bail!("--ctx must be at least 2 (got {ctx})");
    }
    if text.trim().is_empty() {
        bail!("{text_name}: text is empty");
    }
    let ids = tok.encode(text, conv == Convention::Windows)?;
    let n = ids.len() / ctx;
    if n == 0 {
        bail!("{text_name}: text has {} tokens, shorter than one window of {ctx}", ids.len());
    }
    let n = max_windows.map_or(n, |m| n.min(m.max(1)));
    let bos = if conv == Convention::Llamacpp { tok.default_bos()? } else { None };
    let windows = (0..n)
        .map(|w| {
            let mut v = ids[w * ctx..(w + 1) * ctx].to_vec();
            if let Some(b) = bos {
                v[0] = b;
            }
            v
        })
        .collect();
    let first = match conv {
        Convention::Windows => 0,
        Convention::Llamacpp => ctx / 2,
    };
    Ok(Windows { ctx, windows, first })
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub ppl: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub ctx: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// CPU seconds (all threads) the process spent on this model's scoring: with other load on
    /// the machine, `tokens / cpu_seconds` is the steadier speed.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Mean KL(P_reference ‖ P_model) over the scored positions (with a reference model).
    pub kld: Option<f64>,
    /// Fraction of scored positions where both models' top-1 tokens agree.
    pub top1_agreement: Option<f64>,
}

/// Log-softmax of a logits row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// `ln Σ e^x` of a logits row, shifted by the max for stability (vectorised f32 exponentials
/// summed in f64: [`crate::linalg::log_sum_exp`]).
fn log_sum_exp(row: &[f32]) -> f64 {
    crate::linalg::log_sum_exp(row)
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// KL(P‖Q) from the reference's log-probabilities and the model's logits.
fn kl_from(lp: &[f64], q_logits: &[f32]) -> f64 {
    let lq = log_softmax(q_logits);
    // Clamped at 0 against rounding, but a NaN (non-finite logits) must stay NaN: `f64::max`
    // would turn it into 0.
    let kl = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    if kl.is_nan() {
        kl
    } else {
        kl.max(0.0)
    }
}

/// Log-softmax of one logits row at `target`, in f64.
pub fn nll_of(row: &[f32], target: usize) -> f64 {
    log_sum_exp(row) - row[target] as f64
}

/// Rows of logits computed at a time (bounds memory to `LOGIT_ROWS × vocab`).
const LOGIT_ROWS: usize = 256;

/// Progress of an evaluation: `(tokens done, tokens in all)`, counted over every model's forward
/// passes and reported after each decoder layer, so it moves within a window.
pub type OnTokens<'a> = &'a mut dyn FnMut(usize, usize);

/// Score windows with the model; `on_tokens` reports progress.
pub fn perplexity(model: &Model, w: &Windows, on_tokens: OnTokens) -> Result<EvalResult> {
    perplexity_vs(model, None, w, on_tokens)
}

/// Logits of the scored positions `chunk` of a window's final hidden states.
fn chunk_logits(model: &Model, h: &[f32], chunk: &[usize]) -> Result<Vec<f32>> {
    let d = model.cfg.hidden_size;
    let rows: Vec<f32> = chunk.iter().flat_map(|&j| h[j * d..(j + 1) * d].iter().copied()).collect();
    model.logits(&rows, chunk.len())
}

/// As [`perplexity`], and with a reference model also the streamed KL divergence and top-1
/// agreement against it (full logits are never stored: 256 rows at a time).
pub fn perplexity_vs(model: &Model, reference: Option<&Model>, w: &Windows, on_tokens: OnTokens) -> Result<EvalResult> {
    let (_, mut r) = perplexity_many(reference, &[model], w, on_tokens)?;
    Ok(r.remove(0))
}

/// Running sums of one model's scores.
#[derive(Default)]
struct Acc {
    nll: f64,
    kld: f64,
    agree: usize,
    seconds: f64,
    cpu: f64,
}

/// Wall and process CPU clocks at one instant.
struct Clock(Instant, f64);

impl Clock {
    fn now() -> Self {
        Clock(Instant::now(), crate::mem::process_cpu_seconds())
    }
    /// Add the wall and CPU seconds since `self` to `a`.
    fn charge(&self, a: &mut Acc) {
        a.seconds += self.0.elapsed().as_secs_f64();
        a.cpu += crate::mem::process_cpu_seconds() - self.1;
    }
}

/// Score several models on the same windows in one pass: the reference (if any) runs once per
/// window and every model's KL divergence and top-1 agreement against it are streamed, 256 logit
/// rows at a time. Returns the reference's own result and one result per model.
pub fn perplexity_many(
    reference: Option<&Model>,
    models: &[&Model],
    w: &Windows,
    on_tokens: OnTokens,
) -> Result<(Option<EvalResult>, Vec<EvalResult>)> {
    let vocab = reference.map_or_else(|| models.first().map_or(0, |m| m.cfg.vocab_size), |r| r.cfg.vocab_size);
    for m in models {
        if m.cfg.vocab_size != vocab {
            bail!("{}: vocab_size {} differs from the reference's {vocab}", m.ck.dir.display(), m.cfg.vocab_size);
        }
    }
    let mut ref_acc = Acc::default();
    let mut accs: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
    let mut count = 0usize;
    let positions: Vec<usize> = (w.first..w.ctx - 1).collect();
    // Progress in tokens: each model's pass over a window counts ctx tokens, spread over its layers.
    let passes: Vec<usize> = reference.iter().chain(models).map(|m| m.cfg.num_layers.max(1)).collect();
    let total = w.windows.len() * w.ctx * passes.len();
    let per_window: usize = passes.iter().sum();
    let tokens_per_step = (w.ctx * passes.len()) as f64 / per_window as f64;
    let mut step = 0usize;
    let mut report = |step: usize| on_tokens(((step as f64 * tokens_per_step) as usize).min(total), total);
    for (wi, win) in w.windows.iter().enumerate() {
        let t = Clock::now();
        let href = reference
            .map(|r| {
                r.hidden_with(win, w.ctx, &mut || {
                    step += 1;
                    report(step)
                })
            })
            .transpose()?;
        t.charge(&mut ref_acc);
        let mut hs = Vec::with_capacity(models.len());
        for (m, a) in models.iter().zip(&mut accs) {
            let t = Clock::now();
            hs.push(m.hidden_with(win, w.ctx, &mut || {
                step += 1;
                report(step)
            })?);
            t.charge(a);
        }
        for chunk in positions.chunks(LOGIT_ROWS) {
            let t = Clock::now();
            // The reference's log-probabilities and argmax, once per row for every model.
            let reference_rows: Option<Vec<(Vec<f64>, usize)>> = match (reference, &href) {
                (Some(r), Some(hr)) => {
                    let rl = chunk_logits(r, hr, chunk)?;
                    let rows: Vec<(Vec<f64>, usize)> = rl.par_chunks(vocab).map(|row| (log_softmax(row), argmax(row))).collect();
                    // -log p(target), from the same log-probabilities (the same value as nll_of).
                    for ((lp, _), &j) in rows.iter().zip(chunk) {
                        ref_acc.nll -= lp[win[j + 1] as usize];
                    }
                    Some(rows)
                }
                _ => None,
            };
            t.charge(&mut ref_acc);
            for ((m, h), a) in models.iter().zip(&hs).zip(&mut accs) {
                let t = Clock::now();
                let logits = chunk_logits(m, h, chunk)?;
                // Per row in parallel, summed in row order (the same sums at any thread count).
                let scores: Vec<(f64, f64, bool)> = chunk
                    .par_iter()
                    .enumerate()
                    .map(|(r, &j)| {
                        let row = &logits[r * vocab..(r + 1) * vocab];
                        let nll = nll_of(row, win[j + 1] as usize);
                        match &reference_rows {
                            Some(rr) => (nll, kl_from(&rr[r].0, row), rr[r].1 == argmax(row)),
                            None => (nll, 0.0, false),
                        }
                    })
                    .collect();
                for (nll, kld, agree) in scores {
                    a.nll += nll;
                    a.kld += kld;
                    a.agree += agree as usize;
                }
                t.charge(a);
            }
        }
        count += positions.len();
        step = (wi + 1) * per_window;
        report(step);
    }
    let tokens = w.windows.len() * w.ctx;
    let result = |a: &Acc, with_ref: bool| {
        let mean = a.nll / count as f64;
        EvalResult {
            ppl: mean.exp(),
            mean_nll: mean,
            tokens_scored: count,
            windows: w.windows.len(),
            ctx: w.ctx,
            tokens_per_s: tokens as f64 / a.seconds,
            seconds: a.seconds,
            cpu_seconds: a.cpu,
            peak_rss_bytes: crate::mem::peak_rss_bytes(),
            kld: with_ref.then(|| a.kld / count as f64),
            top1_agreement: with_ref.then(|| a.agree as f64 / count as f64),
        }
    };
    let has_ref = reference.is_some();
    Ok((has_ref.then(|| result(&ref_acc, false)), accs.iter().map(|a| result(a, has_ref)).collect()))
}
