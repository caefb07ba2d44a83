//! Rotary position embeddings and the scaling schemes checkpoints carry in `rope_scaling` (hub
//! style) or `rope_parameters` (transformers 5 style): `default`, `linear`, `dynamic` (NTK),
//! `llama3` and `yarn`. Each one is a rule for the inverse frequencies (and, for YaRN, a factor on
//! cos/sin), computed in f32 in the order transformers computes them, so the rotation angles match
//! its `modeling_rope_utils` to the last bits that matter. Any other rope type, or a parameter that
//! changes the math and is not implemented, is refused by name.

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// The scaling rule of a checkpoint's rope.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = 1 / theta^(2i/d)`.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
    /// NTK-aware: for sequences longer than `max_position_embeddings` the base grows with the
    /// sequence length (recomputed per sequence, as transformers' dynamic update does).
    Dynamic { factor: f64, max_position_embeddings: usize },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f32, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// YaRN: per-dimension blend of interpolated and extrapolated frequencies, and cos/sin scaled
    /// by `attention_factor`.
    Yarn { factor: f32, original_max_position_embeddings: f64, beta_fast: f64, beta_slow: f64, truncate: bool, attention_factor: f32 },
}

/// Keys of a rope-scaling object that every type may carry without changing the math.
const COMMON_KEYS: &[&str] = &["type", "rope_type", "rope_theta"];

impl RopeScaling {
    /// The rope scaling of a config.json: `rope_scaling` wins over `rope_parameters`, as in
    /// transformers. `max_position_embeddings` is the config's own.
    pub fn from_config(raw: &Value, max_position_embeddings: Option<usize>) -> Result<Self> {
        let obj = match (raw.get("rope_scaling"), raw.get("rope_parameters")) {
            (Some(v), _) if !v.is_null() => ("rope_scaling", v),
            (_, Some(v)) if !v.is_null() => ("rope_parameters", v),
            _ => return Ok(RopeScaling::Default),
        };
        let (key, v) = obj;
        let Some(m) = v.as_object() else { bail!("\"{key}\" is not an object") };
        if m.values().any(Value::is_object) {
            bail!("\"{key}\" holds per-layer-type rope parameters, which lowbit does not implement");
        }
        Self::from_object(key, m, max_position_embeddings)
    }

    fn from_object(key: &str, m: &Map<String, Value>, max_pos: Option<usize>) -> Result<Self> {
        let ty = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
        let num = |k: &str| -> Result<Option<f64>> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => bail!("\"{key}.{k}\" is {v}, expected a finite number"),
                },
            }
        };
        let need = |k: &str| -> Result<f64> { num(k)?.ok_or_else(|| anyhow::anyhow!("\"{key}\" of type {ty} needs \"{k}\"")) };
        // Parameters each type implements; anything else in the object is refused by name.
        let allowed: &[&str] = match ty {
            "default" => &[],
            "linear" | "dynamic" => &["factor"],
            "llama3" => &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
            "yarn" => &[
                "factor",
                "original_max_position_embeddings",
                "beta_fast",
                "beta_slow",
                "truncate",
                "attention_factor",
                "mscale",
                "mscale_all_dim",
            ],
            other => bail!("\"{key}\": rope type \"{other}\" is not implemented (supported: default, linear, dynamic, llama3, yarn)"),
        };
        for (k, v) in m {
            if COMMON_KEYS.contains(&k.as_str()) || allowed.contains(&k.as_str()) {
                continue;
            }
            if k == "partial_rotary_factor" && v.as_f64() == Some(1.0) {
                continue;
            }
            bail!("\"{key}.{k}\" = {v} is not implemented for rope type {ty}");
        }
        let factor = || -> Result<f64> {
            let f = need("factor")?;
            if f <= 0.0 {
                bail!("\"{key}.factor\" is {f}, expected > 0");
            }
            Ok(f)
        };
        let orig = |name: &str| -> Result<f64> {
            match num("original_max_position_embeddings")? {
                Some(o) if o > 0.0 => Ok(o),
                Some(o) => bail!("\"{key}.original_max_position_embeddings\" is {o}, expected > 0"),
                None => match max_pos {
                    Some(p) => Ok(p as f64),
                    None => bail!("\"{key}\" of type {name} needs \"original_max_position_embeddings\" or \"max_position_embeddings\""),
                },
            }
        };
        Ok(match ty {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? as f32 },
            "dynamic" => {
                let Some(max_position_embeddings) = max_pos else { bail!("\"{key}\" of type dynamic needs \"max_position_embeddings\"") };
                RopeScaling::Dynamic { factor: factor()?, max_position_embeddings }
            }
            "llama3" => {
                let (low, high) = (need("low_freq_factor")?, need("high_freq_factor")?);
                if high <= low {
                    bail!("\"{key}\": high_freq_factor {high} must exceed low_freq_factor {low}");
                }
                RopeScaling::Llama3 {
                    factor: factor()? as f32,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: orig("llama3")?,
                }
            }
            "yarn" => {
                let original = orig("yarn")?;
                let f = match num("factor")? {
                    Some(f) if f > 0.0 => f,
                    Some(f) => bail!("\"{key}.factor\" is {f}, expected > 0"),
                    None => match max_pos {
                        Some(p) => p as f64 / original,
                        None => bail!("\"{key}\" of type yarn needs \"factor\""),
                    },
                };
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None => match (num("mscale")?, num("mscale_all_dim")?) {
                        (Some(a), Some(b)) if a != 0.0 && b != 0.0 => mscale(f, a) / mscale(f, b),
                        _ => mscale(f, 1.0),
                    },
                };
                let truncate = match m.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => bail!("\"{key}.truncate\" is {v}, expected true or false"),
                };
                RopeScaling::Yarn {
                    factor: f as f32,
                    original_max_position_embeddings: original,
                    beta_fast: num("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: num("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                    truncate,
                    attention_factor: attention_factor as f32,
                }
            }
            _ => unreachable!(),
        })
    }

    /// The rope type's name as configs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }

    /// Inverse frequencies (`head_dim / 2` of them) and the factor on cos/sin for sequences of
    /// `seq_len` positions.
    pub fn inv_freq(&self, head_dim: usize, theta: f32, seq_len: usize) -> (Vec<f32>, f32) {
        let d = head_dim;
        // torch: base ** (arange(0, d, 2).float() / d), in f32.
        let pow = |base: f32| -> Vec<f32> { (0..d / 2).map(|i| base.powf((2 * i) as f32 / d as f32)).collect() };
        let plain = |base: f32| -> Vec<f32> { pow(base).into_iter().map(|p| 1.0 / p).collect() };
        match *self {
            RopeScaling::Default => (plain(theta), 1.0),
            RopeScaling::Linear { factor } => (plain(theta).into_iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Dynamic { factor, max_position_embeddings: mp } => {
                let s = seq_len.max(mp) as f64;
                let base = theta as f64 * ((factor * s / mp as f64) - (factor - 1.0)).powf(d as f64 / (d as f64 - 2.0));
                (plain(base as f32), 1.0)
            }
            RopeScaling::Llama3 { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings: old } => {
                let (low_wl, high_wl) = ((old / lo) as f32, (old / hi) as f32);
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let inv = plain(theta)
                    .into_iter()
                    .map(|f| {
                        // torch: scalar / tensor is reciprocal(tensor) * scalar.
                        let wl = (1.0 / f) * two_pi;
                        let scaled = if wl > low_wl { f / factor } else { f };
                        let smooth = (((1.0 / wl) * old as f32) - lo as f32) / (hi - lo) as f32;
                        let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                        // Finite wavelengths: "not below high and not above low" is the closed range.
                        let medium = (high_wl..=low_wl).contains(&wl);
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings: orig, beta_fast, beta_slow, truncate, attention_factor } => {
                let base = theta as f64;
                let corr = |rot: f64| (d as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0) as f32, high.min(d as f64 - 1.0) as f32);
                if low == high {
                    high += 0.001;
                }
                let pf = pow(theta);
                let inv = pf
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        let (extra, inter) = (1.0 / p, 1.0 / (factor * p));
                        inter * (1.0 - extra_factor) + extra * extra_factor
                    })
                    .collect();
                (inv, attention_factor)
            }
        }
    }
}

/// cos/sin tables of a rope for positions `0..max_pos`.
pub struct Rope {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    /// Tables for `head_dim`-wide heads with the plain rope of base `theta`.
    pub fn new(head_dim: usize, theta: f32, max_pos: usize) -> Self {
        Self::scaled(&RopeScaling::Default, head_dim, theta, max_pos)
    }

    /// Tables for `max_pos` positions under `scaling` (dynamic NTK sizes itself by `max_pos`, the
    /// length of the sequences it will rotate).
    pub fn scaled(scaling: &RopeScaling, head_dim: usize, theta: f32, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let (inv, att) = scaling.inv_freq(head_dim, theta, max_pos);
        let mut cos = vec![0f32; max_pos * half];
        let mut sin = vec![0f32; max_pos * half];
        for (i, &f) in inv.iter().enumerate() {
            for p in 0..max_pos {
                // As transformers: position × inv_freq in f32, cos/sin, then × the attention factor.
                let a = p as f32 * f;
                cos[p * half + i] = a.cos() * att;
                sin[p * half + i] = a.sin() * att;
            }
        }
        Self { half, cos, sin }
    }

    /// Rotate one head vector at position `pos` in place (rotate-half convention).
    #[inline]
    pub fn apply(&self, v: &mut [f32], pos: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[pos * h..pos * h + h], &self.sin[pos * h..pos * h + h]);
        for i in 0..h {
            let (a, b) = (v[i], v[i + h]);
            v[i] = a * c[i] - b * s[i];
            v[i + h] = b * c[i] + a * s[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<RopeScaling> {
        RopeScaling::from_config(&v, Some(4096))
    }

    #[test]
    fn llama3_known_answer() {
        // Llama 3.1's published scaling (factor 8, low 1, high 4, 8192) on head_dim 128, base 5e5:
        // the highest frequency is kept, the lowest divided by 8, the ramp in between.
        let s = parse(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
        .unwrap();
        let (inv, att) = s.inv_freq(128, 500000.0, 16);
        let (plain, _) = RopeScaling::Default.inv_freq(128, 500000.0, 16);
        assert_eq!(att, 1.0);
        assert_eq!(inv[0], plain[0]);
        assert!((inv[63] - plain[63] / 8.0).abs() <= plain[63] * 1e-6);
        // Wavelength 2π/f between 8192/4 and 8192 gets the smooth blend, strictly between.
        let mid = (0..64).find(|&i| (2048.0..8192.0).contains(&(2.0 * std::f32::consts::PI / plain[i]))).unwrap();
        assert!(inv[mid] < plain[mid] && inv[mid] > plain[mid] / 8.0);
    }

    #[test]
    fn dynamic_only_beyond_the_limit() {
        let s = RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 64 };
        let (plain, _) = RopeScaling::Default.inv_freq(16, 10000.0, 64);
        assert_eq!(s.inv_freq(16, 10000.0, 64).0, plain);
        // seq 128 = 2× the limit, factor 2: base × (2·2 − 1)^(16/14).
        let base = 10000f64 * 3f64.powf(16.0 / 14.0);
        let (inv, _) = s.inv_freq(16, 10000.0, 128);
        assert!((inv[1] as f64 - 1.0 / base.powf(2.0 / 16.0)).abs() < 1e-6);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse(json!({"rope_scaling": {"type": "longrope", "factor": 2.0}})).unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
        let e = parse(json!({"rope_scaling": {"type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}})).unwrap_err().to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
        let e = parse(json!({"rope_scaling": {"type": "linear"}})).unwrap_err().to_string();
        assert!(e.contains("factor"), "{e}");
        assert_eq!(parse(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})).unwrap(), RopeScaling::Default);
        // rope_scaling wins over rope_parameters, as in transformers.
        let s = parse(json!({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "default"}})).unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn yarn_attention_factor() {
        let s = parse(json!({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}})).unwrap();
        let RopeScaling::Yarn { attention_factor, .. } = s else { panic!() };
        assert!((attention_factor as f64 - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-7);
    }
}
