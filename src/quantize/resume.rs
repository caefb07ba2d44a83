//! `--resume`: the digest of a run's inputs that a checkpoint must match, and the choice of the
//! checkpoint to continue from.

use super::options::{self, Options};
use crate::checkpoint::{self, Checkpointer, State};
use crate::escape;
use crate::events::Events;
use crate::outdir::OutDir;
use anyhow::{Context, Result};
use std::path::Path;

/// A digest of everything the output depends on: every byte of the model's files (config,
/// tokenizer files, every safetensors shard) and of the calibration text, the calibration
/// tokens, every option, and lowbit's version. A resume with other inputs is refused.
pub(crate) fn fingerprint(model_dir: &Path, ck: &crate::weights::Checkpoint, o: &Options, tokens: &[u32]) -> Result<String> {
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
    // Every option that can change the output, as serialized ([`options::NOT_FINGERPRINTED`]
    // lists the others and why).
    put("options", serde_json::to_string(&options::fingerprinted(o)?)?.as_bytes());
    Ok(format!("{:032x}", h.digest128()))
}

/// The checkpoint directory of a run writing into `od` and, with `--resume`, the state of the
/// furthest interrupted run with the same fingerprint `fp` (its directory adopted by `od`). A
/// leftover with a different fingerprint is refused when nothing else resumes.
pub(crate) fn open(
    od: &mut OutDir,
    o: &Options,
    fp: &str,
    num_layers: usize,
    ev: &mut dyn Events,
) -> Result<(Checkpointer, Option<State>)> {
    // Keep finished layers for --resume only when asked to resume; otherwise leave nothing.
    od.keep_tmp_on_failure(o.resume);
    let mut ckpt = None;
    let mut resume_from = None;
    if o.resume {
        let mut refused = None;
        for (dir, _) in od.leftovers().into_iter().filter(|(_, cmd)| cmd == "quantize") {
            match Checkpointer::load(&dir, fp, num_layers) {
                Ok(Some((ck, st))) if resume_from.as_ref().is_none_or(|s: &State| st.layers_done > s.layers_done) => {
                    ckpt = Some(ck);
                    resume_from = Some(st);
                }
                Ok(_) => {}
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        match (&ckpt, refused) {
            (Some(ck), _) => od.adopt(&ck.dir, ev)?,
            (None, Some(e)) => return Err(e),
            (None, None) => ev.warn(&format!("{}: no finished layer to resume from; starting over", escape::path(od.path()))),
        }
    }
    let ck = match ckpt {
        Some(ck) => ck,
        None => Checkpointer::new(od.create_tmp(ev)?, fp),
    };
    Ok((ck, resume_from))
}
