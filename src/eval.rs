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
pub fn make_windows(tok: &Tokenizer, text: &str, text_name: &str, ctx: usize, conv: Convention, max_windows: Option<usize>) -> Result<Windows> {
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
}

/// Log-softmax of one logits row at `target`, in f64.
pub fn nll_of(row: &[f32], target: usize) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
    lse - row[target] as f64
}

/// Rows of logits computed at a time (bounds memory to `LOGIT_ROWS × vocab`).
const LOGIT_ROWS: usize = 256;

/// Score windows with the model; `on_window` is called after each (for progress).
pub fn perplexity(model: &Model, w: &Windows, on_window: &mut dyn FnMut(usize)) -> Result<EvalResult> {
    let t0 = Instant::now();
    let d = model.cfg.hidden_size;
    let vocab = model.cfg.vocab_size;
    let mut total = 0f64;
    let mut count = 0usize;
    for (wi, win) in w.windows.iter().enumerate() {
        let h = model.hidden(win, w.ctx)?;
        let positions: Vec<usize> = (w.first..w.ctx - 1).collect();
        for chunk in positions.chunks(LOGIT_ROWS) {
            let rows: Vec<f32> = chunk.iter().flat_map(|&j| h[j * d..(j + 1) * d].iter().copied()).collect();
            let logits = model.logits(&rows, chunk.len())?;
            for (r, &j) in chunk.iter().enumerate() {
                total += nll_of(&logits[r * vocab..(r + 1) * vocab], win[j + 1] as usize);
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
    })
}
