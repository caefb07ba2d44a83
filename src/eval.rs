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
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
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

impl Windows {
    pub fn scored_per_window(&self) -> usize {
        self.ctx - 1 - self.first
    }
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

/// `ln Σ e^x` of a logits row, in f64, shifted by the max for stability.
fn log_sum_exp(row: &[f32]) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// KL(P‖Q) of two logits rows (P the reference), in f64.
pub fn kl_div(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

/// Log-softmax of one logits row at `target`, in f64.
pub fn nll_of(row: &[f32], target: usize) -> f64 {
    log_sum_exp(row) - row[target] as f64
}

/// Rows of logits computed at a time (bounds memory to `LOGIT_ROWS × vocab`).
const LOGIT_ROWS: usize = 256;

/// Score windows with the model; `on_window` is called after each (for progress).
pub fn perplexity(model: &Model, w: &Windows, on_window: &mut dyn FnMut(usize)) -> Result<EvalResult> {
    perplexity_vs(model, None, w, on_window)
}

/// Logits of the scored positions `chunk` of a window's final hidden states.
fn chunk_logits(model: &Model, h: &[f32], chunk: &[usize]) -> Result<Vec<f32>> {
    let d = model.cfg.hidden_size;
    let rows: Vec<f32> = chunk.iter().flat_map(|&j| h[j * d..(j + 1) * d].iter().copied()).collect();
    model.logits(&rows, chunk.len())
}

/// As [`perplexity`], and with a reference model also the streamed KL divergence and top-1
/// agreement against it (full logits are never stored: 256 rows at a time).
pub fn perplexity_vs(model: &Model, reference: Option<&Model>, w: &Windows, on_window: &mut dyn FnMut(usize)) -> Result<EvalResult> {
    let t0 = Instant::now();
    let vocab = model.cfg.vocab_size;
    if let Some(r) = reference {
        if r.cfg.vocab_size != vocab {
            bail!("{}: reference vocab_size {} differs from the model's {vocab}", r.ck.dir.display(), r.cfg.vocab_size);
        }
    }
    let (mut total, mut kld, mut agree) = (0f64, 0f64, 0usize);
    let mut count = 0usize;
    for (wi, win) in w.windows.iter().enumerate() {
        let h = model.hidden(win, w.ctx)?;
        let href = reference.map(|r| r.hidden(win, w.ctx)).transpose()?;
        let positions: Vec<usize> = (w.first..w.ctx - 1).collect();
        for chunk in positions.chunks(LOGIT_ROWS) {
            let logits = chunk_logits(model, &h, chunk)?;
            let rlogits = match (reference, &href) {
                (Some(r), Some(hr)) => Some(chunk_logits(r, hr, chunk)?),
                _ => None,
            };
            for (r, &j) in chunk.iter().enumerate() {
                let row = &logits[r * vocab..(r + 1) * vocab];
                total += nll_of(row, win[j + 1] as usize);
                if let Some(rl) = &rlogits {
                    let rrow = &rl[r * vocab..(r + 1) * vocab];
                    kld += kl_div(rrow, row);
                    agree += (argmax(rrow) == argmax(row)) as usize;
                }
                count += 1;
            }
        }
        on_window(wi + 1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let mean = total / count as f64;
    Ok(EvalResult {
        ppl: mean.exp(),
        mean_nll: mean,
        tokens_scored: count,
        windows: w.windows.len(),
        ctx: w.ctx,
        tokens_per_s: (w.windows.len() * w.ctx) as f64 / secs,
        seconds: secs,
        peak_rss_bytes: crate::mem::peak_rss_bytes(),
        kld: reference.map(|_| kld / count as f64),
        top1_agreement: reference.map(|_| agree as f64 / count as f64),
    })
}
