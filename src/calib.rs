//! Calibration samples: deterministic windows of tokens drawn from a text or JSONL file.

use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Read a UTF-8 text file with universal newlines (`\r\n` and lone `\r` become `\n`), as
/// Python's `open().read()` does: reference perplexities are computed on that string.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let s = String::from_utf8(bytes).map_err(|e| anyhow!("{}: not valid UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    Ok(if s.contains('\r') { s.replace("\r\n", "\n").replace('\r', "\n") } else { s })
}

/// The text of a calibration file: plain text, or JSONL with a `text` field per line
/// (recognised by a `.jsonl` extension).
pub fn read_calib_text(path: &Path) -> Result<String> {
    let text = read_text(path)?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut out = String::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| anyhow!("{}: line {}: invalid JSON: {e}", path.display(), i + 1))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| anyhow!("{}: line {}: no string field \"text\"", path.display(), i + 1))?;
            out.push_str(t);
            out.push_str("\n\n");
        }
        Ok(out)
    } else {
        Ok(text)
    }
}

/// The calibration pass holds `samples × seqlen` hidden states of `hidden` f32 values (twice, for
/// GPTQ-style propagation): sizes whose hidden states alone exceed the machine's memory are
/// refused before any work, with the numbers, instead of aborting on allocation later.
pub fn check_budget(samples: usize, seqlen: usize, hidden: usize) -> Result<()> {
    if samples == 0 || seqlen < 2 {
        bail!("--calib-samples must be ≥ 1 and --calib-seqlen ≥ 2");
    }
    let tokens = samples.checked_mul(seqlen);
    let bytes = tokens.and_then(|t| t.checked_mul(hidden)).and_then(|n| n.checked_mul(4)).map(|b| b as u64);
    let limit = crate::mem::total_memory_bytes().unwrap_or(u64::MAX);
    if bytes.is_none_or(|b| b > limit) {
        let need = match bytes {
            Some(b) => crate::mem::fmt_bytes(b),
            None => "more bytes than fit in 64 bits".into(),
        };
        bail!(
            "--calib-samples {samples} × --calib-seqlen {seqlen}: {} calibration tokens need {need} of hidden states (hidden_size {hidden}, f32), more than this machine's {} of memory; use fewer samples or shorter windows",
            tokens.map_or_else(|| "too many".to_string(), |t| t.to_string()),
            crate::mem::fmt_bytes(limit)
        );
    }
    Ok(())
}

/// `samples` windows of `seqlen` tokens at seeded random offsets of the tokenized file,
/// concatenated: `[samples * seqlen]`.
pub fn sample_tokens(tok: &Tokenizer, path: &Path, samples: usize, seqlen: usize, seed: u64) -> Result<Vec<u32>> {
    if samples == 0 || seqlen < 2 {
        bail!("--calib-samples must be ≥ 1 and --calib-seqlen ≥ 2");
    }
    let text = read_calib_text(path)?;
    if text.trim().is_empty() {
        bail!("{}: calibration text is empty", path.display());
    }
    let ids = tok.encode(&text, true)?;
    if ids.len() < seqlen {
        bail!("{}: calibration text has {} tokens, fewer than one sample of --calib-seqlen {seqlen}", path.display(), ids.len());
    }
    let total = samples.checked_mul(seqlen).ok_or_else(|| anyhow!("--calib-samples {samples} × --calib-seqlen {seqlen} overflows"))?;
    if ids.len() < total {
        eprintln!(
            "warning: {}: {} tokens is less than --calib-samples {samples} × --calib-seqlen {seqlen}; the {samples} windows will overlap",
            crate::escape::path(path),
            ids.len()
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    out.try_reserve_exact(total)
        .map_err(|_| anyhow!("--calib-samples {samples} × --calib-seqlen {seqlen}: cannot allocate {total} tokens"))?;
    for _ in 0..samples {
        let start = rng.random_range(0..=ids.len() - seqlen);
        out.extend_from_slice(&ids[start..start + seqlen]);
    }
    Ok(out)
}
