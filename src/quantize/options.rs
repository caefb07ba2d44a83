//! `lowbit quantize`'s options: the run's settings, `--override`, checks made before any work,
//! and the part of the resume fingerprint that the options give.

use super::gguf::validate_gguf;
use super::{parse_block_type, AwareWeight, Format, LinearPlan, Method, DEFAULT_GGUF_TYPE};
use crate::gguf::GgmlType;
use crate::quant::{rtn, vptq};
use anyhow::{anyhow, bail, Result};
use safetensors::Dtype;
use serde::{Serialize, Serializer};
use std::path::PathBuf;

/// `--override 'REGEX=METHOD:BITS[:GROUP]'`, `'REGEX=METHOD:TYPE'` (a GGUF block type, e.g.
/// `q6_k`) or `'REGEX=vptq'`: linears whose full name matches get this plan.
#[derive(Clone, Debug, Serialize)]
pub struct Override {
    #[serde(serialize_with = "regex_str")]
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

/// The settings of one quantization run. Serialized (minus [`NOT_FINGERPRINTED`]) into the
/// resume fingerprint, so a new field takes part in it unless it is listed there.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    pub sym: bool,
    /// Calibration texts (one file, a mix, or a recipe's; [`crate::calib::Calib`]).
    #[serde(serialize_with = "debug_str")]
    pub calib: Option<crate::calib::Calib>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub seed: u64,
    pub format: Format,
    #[serde(serialize_with = "path_str")]
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
    #[serde(serialize_with = "regex_strs")]
    pub skip: Vec<regex::Regex>,
    /// An `--override` or `--skip` that matches no linear is a warning, not an error.
    pub allow_unmatched: bool,
    /// Continue from the checkpoints of an interrupted run with the same inputs.
    pub resume: bool,
    /// VPTQ settings.
    #[serde(serialize_with = "debug_str")]
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
    /// `--target-size`: the same as a whole-model size in bytes (stored tensor bytes).
    pub target_size: Option<u64>,
    /// The bit widths and group sizes `--target-bpw` chooses from.
    pub plan_bits: Vec<u8>,
    pub plan_groups: Vec<usize>,
    /// `--target-bpw`: a file holding the sensitivity pass's measurements (read when it matches
    /// the inputs, written otherwise), so that several budgets share one pass.
    #[serde(serialize_with = "debug_str")]
    pub sensitivity_cache: Option<PathBuf>,
    /// `--target-bpw`: keep the embedding table (and an untied lm_head) at `--float-dtype`
    /// instead of planning them with the linears (`--float-tables`).
    pub float_tables: bool,
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

/// Options that do not change the output's bytes, left out of the resume fingerprint (every other
/// field of [`Options`] is in it, so a new option cannot be forgotten):
/// * `calib`: the calibration files' bytes and the mix weights are digested on their own (a copy
///   of the same text at another path resumes);
/// * `out`, `force`, `resume`: where and how the output is written, not what it holds;
/// * `allow_unmatched`: turns an error into a warning, the plans are the same;
/// * `sensitivity_cache`: a cache of the `--target-bpw` pass (the plan is the same with or without
///   it);
/// * `plan_note`: recomputed by every run from `target_bpw`, `plan_bits`, `plan_groups` and the
///   inputs (all fingerprinted); it also holds the pass's wall time.
pub(crate) const NOT_FINGERPRINTED: [&str; 7] = ["calib", "out", "force", "resume", "allow_unmatched", "sensitivity_cache", "plan_note"];

/// The options as the resume fingerprint sees them: every serialized field but
/// [`NOT_FINGERPRINTED`].
pub(crate) fn fingerprinted(o: &Options) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(o)?;
    let m = v.as_object_mut().ok_or_else(|| anyhow!("options do not serialize to an object"))?;
    for k in NOT_FINGERPRINTED {
        m.remove(k);
    }
    Ok(v)
}

fn regex_str<S: Serializer>(r: &regex::Regex, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn regex_strs<S: Serializer>(r: &[regex::Regex], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(r.iter().map(|r| r.as_str()))
}

/// Paths need not be UTF-8: written lossily (the field is not fingerprinted).
fn path_str<S: Serializer>(p: &std::path::Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Types that do not implement `Serialize` (and paths, which need not be UTF-8): their `Debug`
/// text, which shows every field.
fn debug_str<T: std::fmt::Debug, S: Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Options {
        Options {
            method: Method::Rtn,
            bits: 4,
            group_size: 32,
            sym: false,
            calib: None,
            calib_samples: 8,
            calib_seqlen: 128,
            seed: 0,
            format: Format::Lowbit,
            out: PathBuf::from("out"),
            force: false,
            float_dtype: Dtype::F16,
            search_tokens: 4096,
            awq_range: rtn::Range::default(),
            awq_symmetric_clip: false,
            overrides: Vec::new(),
            skip: Vec::new(),
            allow_unmatched: false,
            resume: false,
            vptq: vptq::VptqConfig::default(),
            act_order: false,
            true_sequential: false,
            propagate_fp: false,
            static_groups: false,
            aware_weight: AwareWeight::MeanSq,
            gguf_type: None,
            token_embd_type: None,
            output_type: None,
            target_bpw: None,
            target_size: None,
            plan_bits: vec![2, 3, 4],
            plan_groups: vec![32],
            sensitivity_cache: None,
            float_tables: false,
            plan_note: None,
        }
    }

    /// Every field of [`Options`] is either in the fingerprint or named in [`NOT_FINGERPRINTED`]:
    /// the destructuring below stops compiling when a field is added, and each field changed on
    /// its own changes the fingerprinted value exactly when it is not excluded.
    #[test]
    fn every_option_is_fingerprinted_or_excluded() {
        let Options {
            method: _,
            bits: _,
            group_size: _,
            sym: _,
            calib: _,
            calib_samples: _,
            calib_seqlen: _,
            seed: _,
            format: _,
            out: _,
            force: _,
            float_dtype: _,
            search_tokens: _,
            awq_range: _,
            awq_symmetric_clip: _,
            overrides: _,
            skip: _,
            allow_unmatched: _,
            resume: _,
            vptq: _,
            act_order: _,
            true_sequential: _,
            propagate_fp: _,
            static_groups: _,
            aware_weight: _,
            gguf_type: _,
            token_embd_type: _,
            output_type: _,
            target_bpw: _,
            target_size: _,
            plan_bits: _,
            plan_groups: _,
            sensitivity_cache: _,
            float_tables: _,
            plan_note: _,
        } = base();
        type Change = fn(&mut Options);
        let changes: Vec<(&str, Change)> = vec![
            ("method", |o| o.method = Method::Gptq),
            ("bits", |o| o.bits = 3),
            ("group_size", |o| o.group_size = 64),
            ("sym", |o| o.sym = true),
            ("calib", |o| o.calib = Some(crate::calib::Calib::file("a.txt"))),
            ("calib_samples", |o| o.calib_samples = 9),
            ("calib_seqlen", |o| o.calib_seqlen = 64),
            ("seed", |o| o.seed = 1),
            ("format", |o| o.format = Format::Gptq),
            ("out", |o| o.out = PathBuf::from("elsewhere")),
            ("force", |o| o.force = true),
            ("float_dtype", |o| o.float_dtype = Dtype::BF16),
            ("search_tokens", |o| o.search_tokens = 1),
            ("awq_range", |o| o.awq_range = rtn::Range::MinMax),
            ("awq_symmetric_clip", |o| o.awq_symmetric_clip = true),
            ("overrides", |o| o.overrides = vec!["down_proj=rtn:8".parse().unwrap()]),
            ("skip", |o| o.skip = vec![regex::Regex::new("q_proj").unwrap()]),
            ("allow_unmatched", |o| o.allow_unmatched = true),
            ("resume", |o| o.resume = true),
            ("vptq", |o| o.vptq.kmeans_iters += 1),
            ("act_order", |o| o.act_order = true),
            ("true_sequential", |o| o.true_sequential = true),
            ("propagate_fp", |o| o.propagate_fp = true),
            ("static_groups", |o| o.static_groups = true),
            ("aware_weight", |o| o.aware_weight = AwareWeight::MeanAbs),
            ("gguf_type", |o| o.gguf_type = Some(GgmlType(12))),
            ("token_embd_type", |o| o.token_embd_type = Some(GgmlType(8))),
            ("output_type", |o| o.output_type = Some(GgmlType(8))),
            ("target_bpw", |o| o.target_bpw = Some(4.0)),
            ("target_size", |o| o.target_size = Some(60_000_000)),
            ("plan_bits", |o| o.plan_bits = vec![4]),
            ("plan_groups", |o| o.plan_groups = vec![128]),
            ("sensitivity_cache", |o| o.sensitivity_cache = Some(PathBuf::from("s.json"))),
            ("float_tables", |o| o.float_tables = true),
            ("plan_note", |o| o.plan_note = Some(serde_json::json!({"target_bpw": 4.0}))),
        ];
        let b = base();
        let all = serde_json::to_value(&b).unwrap();
        let keys: Vec<&String> = all.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), changes.len(), "a field is not serialized (serde(skip)?): {keys:?}");
        for k in NOT_FINGERPRINTED {
            assert!(changes.iter().any(|c| c.0 == k), "NOT_FINGERPRINTED names {k}, which is no field");
        }
        let fp = fingerprinted(&b).unwrap();
        for (name, change) in changes {
            assert!(all.get(name).is_some(), "{name} is not serialized under its own name");
            let mut o = base();
            change(&mut o);
            assert_ne!(serde_json::to_value(&o).unwrap()[name], all[name], "{name}: the change changes nothing");
            let differs = fingerprinted(&o).unwrap() != fp;
            assert_eq!(differs, !NOT_FINGERPRINTED.contains(&name), "{name}");
        }
    }
}
