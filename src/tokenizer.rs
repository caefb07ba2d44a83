//! Tokenization from a checkpoint's `tokenizer.json` through the `tokenizers` crate.

use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
}

impl Tokenizer {
    /// `tokenizer.json` inside a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(anyhow!("{}: missing tokenizer.json", path.display()));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(Self { inner, path: path.to_owned() })
    }

    /// Token ids of `text`; `special` adds the tokenizer's default special tokens (e.g. BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| anyhow!("{}: cannot encode text: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BOS id when the tokenizer adds one by default (llama.cpp's `add_bos`), else `None`.
    pub fn default_bos(&self) -> Result<Option<u32>> {
        let with = self.encode("a", true)?;
        let without = self.encode("a", false)?;
        Ok(if with.len() > without.len() && with[1..] == without[..] { Some(with[0]) } else { None })
    }
}
