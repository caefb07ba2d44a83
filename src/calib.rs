//! Calibration samples: deterministic windows of tokens drawn from a text or JSONL file.

use crate::events::Events;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

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
/// concatenated: `[samples * seqlen]`. A text too short for non-overlapping windows is a warning
/// to `ev`.
pub fn sample_tokens(tok: &Tokenizer, path: &Path, samples: usize, seqlen: usize, seed: u64, ev: &mut dyn Events) -> Result<Vec<u32>> {
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
        ev.warn(&format!(
            "{}: {} tokens is less than --calib-samples {samples} × --calib-seqlen {seqlen}; the {samples} windows will overlap",
            crate::escape::path(path),
            ids.len()
        ));
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

/// One calibration text and its share of the windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub path: PathBuf,
    /// Relative proportion (any positive number; shares are `weight / Σ weights`).
    pub weight: f64,
}

/// The calibration texts of a run: one file, several mixed in proportion, or a recipe's.
#[derive(Clone, Debug, PartialEq)]
pub struct Calib {
    pub parts: Vec<Part>,
    /// The recipe file the parts came from, if any.
    pub recipe: Option<PathBuf>,
}

impl Calib {
    /// A single file (the whole calibration).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Calib { parts: vec![Part { path: path.into(), weight: 1.0 }], recipe: None }
    }

    /// Every file whose bytes the calibration reads (the recipe first, if any).
    pub fn files(&self) -> Vec<&Path> {
        self.recipe.iter().map(|p| p.as_path()).chain(self.parts.iter().map(|p| p.path.as_path())).collect()
    }

    /// How reports name it: the recipe, or the files with their proportions.
    pub fn describe(&self) -> String {
        if let Some(r) = &self.recipe {
            return r.display().to_string();
        }
        if self.parts.len() == 1 {
            return self.parts[0].path.display().to_string();
        }
        self.parts.iter().map(|p| format!("{}×{}", p.path.display(), p.weight)).collect::<Vec<_>>().join(" + ")
    }
}

/// The settings a recipe may give besides its texts (`None`: not given; the command line or the
/// defaults decide).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeSettings {
    pub samples: Option<usize>,
    pub seqlen: Option<usize>,
    pub seed: Option<u64>,
}

/// A recipe file, as written (docs/calibration.md).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    samples: Option<usize>,
    seqlen: Option<usize>,
    seed: Option<u64>,
    text: Vec<RecipeText>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeText {
    path: PathBuf,
    #[serde(default = "one")]
    proportion: f64,
}

fn one() -> f64 {
    1.0
}

/// Whether `path` names a calibration recipe (a `.toml` file) rather than a text.
pub fn is_recipe(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

/// Read a recipe. Its relative text paths resolve against `data_dir` (`--data-dir`), absolute
/// ones are used as they are. Unknown keys, a missing `text` list, non-positive proportions and
/// texts that do not exist are refused with the file and the key.
pub fn load_recipe(path: &Path, data_dir: &Path) -> Result<(Calib, RecipeSettings)> {
    let shown = crate::escape::path(path);
    let src = read_text(path)?;
    let r: RecipeFile = toml::from_str(&src).map_err(|e| {
        let line = e.span().map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
        let msg = e.message().lines().next().unwrap_or("").to_string();
        match line {
            Some(l) => anyhow!("{shown}: line {l}: {msg}"),
            None => anyhow!("{shown}: {msg}"),
        }
    })?;
    if r.text.is_empty() {
        bail!("{shown}: \"text\" lists no calibration text");
    }
    if r.samples == Some(0) || r.seqlen.is_some_and(|s| s < 2) {
        bail!("{shown}: \"samples\" must be ≥ 1 and \"seqlen\" ≥ 2");
    }
    let mut parts = Vec::new();
    for t in r.text {
        if !(t.proportion > 0.0 && t.proportion.is_finite()) {
            bail!("{shown}: text {}: \"proportion\" must be a positive number (got {})", t.path.display(), t.proportion);
        }
        let p = if t.path.is_absolute() { t.path.clone() } else { data_dir.join(&t.path) };
        if !p.is_file() {
            bail!(
                "{shown}: text {}: {} does not exist (relative paths resolve against --data-dir {})",
                t.path.display(),
                crate::escape::path(&p),
                crate::escape::path(data_dir)
            );
        }
        parts.push(Part { path: p, weight: t.proportion });
    }
    Ok((Calib { parts, recipe: Some(path.to_path_buf()) }, RecipeSettings { samples: r.samples, seqlen: r.seqlen, seed: r.seed }))
}

/// How many of `samples` windows each part gets: proportional to its weight, rounded by largest
/// remainder (ties to the earlier part), so the counts add up to `samples`.
pub fn allocate(weights: &[f64], samples: usize) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / total * samples as f64).collect();
    let mut n: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = samples - n.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        n[i] += 1;
        left -= 1;
    }
    n
}

/// The calibration tokens of `c`: one file is [`sample_tokens`] itself; several get
/// [`allocate`]d window counts, each drawn from its own tokenized text with the seed `seed + i`
/// (part `i`), and the windows are then shuffled together (seeded), so that every evenly spaced
/// subset (AWQ's search windows) mixes the texts.
pub fn sample_calib(tok: &Tokenizer, c: &Calib, samples: usize, seqlen: usize, seed: u64, ev: &mut dyn Events) -> Result<Vec<u32>> {
    if c.parts.len() == 1 {
        return sample_tokens(tok, &c.parts[0].path, samples, seqlen, seed, ev);
    }
    let counts = allocate(&c.parts.iter().map(|p| p.weight).collect::<Vec<_>>(), samples);
    let mut windows: Vec<Vec<u32>> = Vec::new();
    for (i, (p, &n)) in c.parts.iter().zip(&counts).enumerate() {
        if n == 0 {
            ev.warn(&format!("{}: gets no window of the {samples} (proportion {})", crate::escape::path(&p.path), p.weight));
            continue;
        }
        let t = sample_tokens(tok, &p.path, n, seqlen, seed.wrapping_add(i as u64), ev)?;
        windows.extend(t.chunks(seqlen).map(|w| w.to_vec()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..windows.len()).rev() {
        let j = rng.random_range(0..=i);
        windows.swap(i, j);
    }
    Ok(windows.concat())
}
