//! Which layout reads a checkpoint: its `quantization_config` as a [`QuantScheme`] (lowbit,
//! AutoAWQ, GPTQ with GPTQModel's per-module `dynamic` rules), and one packed linear read from
//! its tensors into the layout's type ([`Stored`]).

use super::vq::VqPacked;
use super::{AwqPacked, GptqPacked, HfQuantMeta, LowbitPacked, LowbitQuantConfig, Packed, PackedLayout, TensorSource};
use anyhow::{anyhow, Result};
use std::path::Path;

/// How the packed linears of a checkpoint are stored, from its quantization_config.
#[derive(Clone, Debug)]
pub enum QuantScheme {
    Lowbit(LowbitQuantConfig),
    Awq(HfQuantMeta),
    /// The base bits / group size and GPTQModel's per-module `dynamic` rules, in order.
    Gptq(HfQuantMeta, Vec<DynamicRule>),
}

/// One entry of GPTQModel's `quantization_config.dynamic`: `"+:REGEX"` (or a bare `REGEX`)
/// overrides bits / group size of the modules it matches, `"-:REGEX"` leaves them unquantized.
/// The first matching rule applies; REGEX matches from the start of the module name (Python's
/// `re.match`).
#[derive(Clone, Debug)]
pub struct DynamicRule {
    pub skip: bool,
    pub pattern: regex::Regex,
    pub bits: Option<u8>,
    pub group_size: Option<i64>,
}

/// Parses `quantization_config.dynamic`; keys other than bits, group_size, desc_act and sym
/// (which do not change how the tensors are read) are refused by name.
fn parse_dynamic(v: Option<&serde_json::Value>, bad: &dyn Fn(&str) -> anyhow::Error) -> Result<Vec<DynamicRule>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let map = v.as_object().ok_or_else(|| bad("dynamic is not an object"))?;
    let mut rules = Vec::new();
    for (k, o) in map {
        let (skip, re) = match (k.strip_prefix("-:"), k.strip_prefix("+:")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => (false, k.as_str()),
        };
        let pattern = regex::Regex::new(&format!("^(?:{re})")).map_err(|e| bad(&format!("dynamic {k:?}: invalid regex: {e}")))?;
        let o = o.as_object().ok_or_else(|| bad(&format!("dynamic {k:?}: not an object")))?;
        let (mut bits, mut group_size) = (None, None);
        for (key, val) in o {
            match key.as_str() {
                "bits" => {
                    let b = val.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or_else(|| bad(&format!("dynamic {k:?}: bits {val}")))?;
                    bits = Some(b);
                }
                "group_size" => group_size = Some(val.as_i64().ok_or_else(|| bad(&format!("dynamic {k:?}: group_size {val}")))?),
                "desc_act" | "sym" => {}
                other => return Err(bad(&format!("dynamic {k:?}: key \"{other}\" is not supported (bits, group_size, desc_act, sym)"))),
            }
        }
        rules.push(DynamicRule { skip, pattern, bits, group_size });
    }
    Ok(rules)
}

impl QuantScheme {
    pub fn from_config(dir: &Path, cfg: &serde_json::Value) -> Result<Option<Self>> {
        let Some(q) = cfg.get("quantization_config") else { return Ok(None) };
        let bad = |what: &str| anyhow!("{}: quantization_config: {what}", dir.join("config.json").display());
        let method = q.get("quant_method").and_then(|m| m.as_str()).ok_or_else(|| bad("missing quant_method"))?;
        let hf = || -> Result<HfQuantMeta> {
            let bits = q.get("bits").and_then(|b| b.as_u64()).ok_or_else(|| bad("missing bits"))?;
            let bits = u8::try_from(bits).map_err(|_| bad(&format!("bits {bits} out of range")))?;
            let group_size = q.get("group_size").and_then(|b| b.as_i64()).ok_or_else(|| bad("missing group_size"))?;
            Ok(HfQuantMeta { bits, group_size })
        };
        Ok(Some(match method {
            "lowbit" => QuantScheme::Lowbit(serde_json::from_value(q.clone()).map_err(|e| bad(&e.to_string()))?),
            "awq" => QuantScheme::Awq(hf()?),
            "gptq" => QuantScheme::Gptq(hf()?, parse_dynamic(q.get("dynamic"), &bad)?),
            m => return Err(bad(&format!("unsupported quant_method \"{m}\" (lowbit, awq, gptq)"))),
        }))
    }

    /// Read the stored tensors of one quantized linear (None when it is not quantized).
    pub fn read_any(&self, src: &dyn TensorSource, prefix: &str) -> Result<Option<Stored>> {
        if let QuantScheme::Lowbit(c) = self {
            if let Some(meta) = c.vq_modules.get(prefix) {
                return Ok(Some(Stored::Vq(VqPacked::from_tensors(src, prefix, meta)?)));
            }
        }
        Ok(self.read(src, prefix)?.map(Stored::Group))
    }

    /// Read the packed tensors of one group-quantized linear (None when it is not packed).
    pub fn read(&self, src: &dyn TensorSource, prefix: &str) -> Result<Option<Packed>> {
        if src.raw(&format!("{prefix}.qweight")).is_none() {
            return Ok(None);
        }
        Ok(Some(match self {
            QuantScheme::Lowbit(c) => {
                let meta =
                    c.modules.get(prefix).ok_or_else(|| anyhow!("{prefix}: packed but not listed in quantization_config.modules"))?;
                Packed::Lowbit(LowbitPacked::from_tensors(src, prefix, meta)?)
            }
            QuantScheme::Awq(m) => Packed::Awq(AwqPacked::from_tensors(src, prefix, m)?),
            QuantScheme::Gptq(m, dynamic) => {
                let mut m = *m;
                match dynamic.iter().find(|r| r.pattern.is_match(prefix)) {
                    Some(r) if r.skip => anyhow::bail!("{prefix}: packed, but quantization_config.dynamic leaves it unquantized"),
                    Some(r) => m = HfQuantMeta { bits: r.bits.unwrap_or(m.bits), group_size: r.group_size.unwrap_or(m.group_size) },
                    None => {}
                }
                Packed::Gptq(GptqPacked::from_tensors(src, prefix, &m)?)
            }
        }))
    }
}

/// A quantized linear as stored: a group-quantized layout or the VQ layout.
pub enum Stored {
    Group(Packed),
    Vq(VqPacked),
}

impl Stored {
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Stored::Group(p) => p.unpack()?.dequantize(),
            Stored::Vq(v) => v.unpack()?.dequantize(),
        })
    }
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Stored::Group(p) => p.shape(),
            Stored::Vq(v) => v.shape(),
        }
    }
    pub fn dequant_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self {
            Stored::Group(p) => p.dequant_matmul(x, rows),
            Stored::Vq(v) => v.dequant_matmul(x, rows),
        }
    }
    /// A short description, e.g. `lowbit 4-bit g128 affine` or `vq v4 k256`.
    pub fn kind(&self) -> String {
        match self {
            Stored::Group(Packed::Lowbit(l)) => {
                format!("lowbit {}-bit g{} {}", l.bits, l.group_size, crate::pack::lowbit::grid_name::name(l.grid))
            }
            Stored::Group(Packed::Awq(a)) => format!("awq 4-bit g{}", a.group_size),
            Stored::Group(Packed::Gptq(g)) => format!("gptq {}-bit g{}", g.bits, g.group_size),
            Stored::Vq(v) => {
                let m = v.meta("");
                format!(
                    "vq v{} k{}{}",
                    m.vector_len,
                    m.n_centroids,
                    if m.n_res_centroids > 0 { format!(" +res{}", m.n_res_centroids) } else { String::new() }
                )
            }
        }
    }
}
