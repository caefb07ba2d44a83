//! `--target-bpw`: the best per-linear settings under a whole-model size budget.
//!
//! 1. Sensitivity pass ([`sensitivity`]): one calibration forward through the float model, layer by layer. For
//!    every linear and every candidate setting (the method of `--method`, each `--plan-bits`
//!    × `--plan-groups`), the linear alone is quantized (GPTQ against its input's Hessian, or
//!    RTN) and the block it feeds (the attention block for q/k/v/o, the MLP for gate/up/down) is
//!    re-run on a sample of calibration windows: the predicted loss of that choice is the mean
//!    squared change of the block's output divided by the mean square of the residual stream at
//!    the layer's input (a relative perturbation of the residual stream, comparable across
//!    layers).
//!    The stored tables (the token embedding; an untied lm_head) are items of the plan too
//!    (unless `--float-tables`): float, or rtn at each candidate's bits × group. Their loss is in
//!    the same unit, a relative perturbation: the embedding's is the mean over calibration tokens
//!    of ‖ΔE_t‖² / ‖E_t‖² (the residual stream at the first layer is the embedding), lm_head's
//!    the logit change it causes over the change a random residual perturbation of relative size
//!    1 causes ([`sensitivity`]); a tied table pays both.
//! 2. Choice: the summed predicted loss is minimised under the byte budget, a multiple-choice
//!    knapsack solved by dynamic programming over the bytes ([`choose`]), then the bytes left by
//!    its rounding are spent greedily on the upgrades with the best loss saved per byte.
//! 3. The plan becomes one `--override` per linear and the ordinary quantize run writes it; the
//!    plan (settings, bytes, predicted losses) goes into the output's `quantization_config.plan`.
//!
//! Sizes come from [`stored_bits`], the one place that asks the layout; norms (and with
//! `--float-tables` the tables) are counted at `--float-dtype`.

mod sensitivity;
use sensitivity::{cache_key, table_settings};
pub use sensitivity::{sensitivities, Sensitivity, TableSensitivity};

use super::{LinearPlan, Method, Options, Override};
use crate::events::Events;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// One candidate setting of a linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Setting {
    #[serde(serialize_with = "method_name", deserialize_with = "method_of")]
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
}

fn method_of<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Method, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    Method::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown method {s:?}")))
}

fn method_name<S: serde::Serializer>(m: &Method, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

/// The chosen setting of one linear.
#[derive(Clone, Debug, Serialize)]
pub struct LinearChoice {
    pub name: String,
    #[serde(flatten)]
    pub setting: Setting,
    pub bytes: u64,
    pub predicted_loss: f64,
}

/// A plan and what it predicts.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub target_bpw: f64,
    /// `--target-size` in bytes, when the budget was given so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_size: Option<u64>,
    /// Whole-model bits per weight of the plan (all stored bytes × 8 / all parameters).
    pub model_bpw: f64,
    pub bytes: u64,
    pub params: u64,
    /// Σ of the linears' predicted losses.
    pub predicted_loss: f64,
    /// Bytes outside the planned items (norms, biases; the tables with `--float-tables`).
    pub fixed_bytes: u64,
    pub linears: Vec<LinearChoice>,
    /// The stored tables' choices (empty with `--float-tables`).
    pub tables: Vec<TableChoice>,
    /// Every candidate applied to every linear: its size and predicted loss (the single-setting
    /// plans the chosen one competes with).
    pub uniform: Vec<UniformPlan>,
    /// Seconds of the sensitivity pass (0 when read from --sensitivity-cache).
    pub seconds: f64,
}

/// The chosen setting of a stored table: rtn at `setting`, or float (`setting` absent).
#[derive(Clone, Debug, Serialize)]
pub struct TableChoice {
    pub name: String,
    #[serde(flatten)]
    pub setting: Option<Setting>,
    /// The float type of a table kept in float.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float_dtype: Option<String>,
    pub bytes: u64,
    pub predicted_loss: f64,
}

/// One setting for every linear (and, when the tables are planned, rtn at its bits and group
/// for the tables).
#[derive(Clone, Debug, Serialize)]
pub struct UniformPlan {
    #[serde(flatten)]
    pub setting: Setting,
    pub model_bpw: f64,
    pub predicted_loss: f64,
}

/// Stored bits of an `out × inn` linear under `s` in the output layout: the sum of the layout's
/// own tensor specs (the size count `--dry-run` and quantize use; scales, zeros included).
pub(crate) fn stored_bits(o: &Options, s: Setting, out: usize, inn: usize) -> Result<u64> {
    let p = LinearPlan { method: s.method, bits: s.bits, group_size: s.group_size, ty: None };
    let want = p.want(o);
    o.format
        .check(&want, out, inn)
        .map_err(|e| anyhow!("--target-bpw: {} cannot hold {}-bit g{}: {e}", o.format.name(), s.bits, s.group_size))?;
    Ok(o.format.tensor_specs(&want, out, inn).iter().map(|(_, dt, shape)| 8 * crate::pack::spec_bytes(*dt, shape) as u64).sum())
}

/// Bytes outside the planned items and the model's parameter count: every checkpoint tensor that
/// is not a decoder-layer linear weight or a planned table, at `--float-dtype`.
fn fixed_bytes(model: &Model, o: &Options, planned: &[String]) -> (u64, u64) {
    let es = crate::weights::dtype_size(o.float_dtype).unwrap_or(2) as u64;
    let linear: std::collections::HashSet<String> = planned.iter().map(|n| format!("{n}.weight")).collect();
    let (mut fixed, mut params) = (0u64, 0u64);
    for (name, t) in model.ck.tensors() {
        let n = t.shape.iter().product::<usize>() as u64;
        params += n;
        if !linear.contains(name) {
            fixed += n * es;
        }
    }
    (fixed, params)
}

/// Byte units of the knapsack's table: budgets above this many units are counted in units of
/// `ceil(budget / KNAPSACK_UNITS)` bytes (sizes rounded up, so a plan that fits the table fits
/// the budget; at most one unit per linear is left unspent before the greedy fill).
const KNAPSACK_UNITS: u64 = 100_000;

/// Choose one candidate per linear minimising Σ loss with Σ bytes ≤ `budget`: a 0/1 multiple-choice
/// knapsack solved by dynamic programming over the (unit-rounded) bytes, exact when the budget is
/// at most [`KNAPSACK_UNITS`] bytes; then the bytes left over are spent greedily on the upgrades
/// with the best loss saved per byte. `None` when even the smallest choices do not fit.
pub fn choose(loss: &[Vec<f64>], bytes: &[Vec<u64>], budget: u64) -> Option<Vec<usize>> {
    let total = |c: &[usize]| c.iter().zip(bytes).map(|(&k, b)| b[k]).sum::<u64>();
    let smallest: Vec<usize> = bytes.iter().map(|b| (0..b.len()).min_by_key(|&k| b[k]).unwrap()).collect();
    if total(&smallest) > budget {
        return None;
    }
    let unit = budget.div_ceil(KNAPSACK_UNITS).max(1);
    let cap = (budget / unit) as usize;
    let units: Vec<Vec<usize>> = bytes.iter().map(|r| r.iter().map(|b| b.div_ceil(unit) as usize).collect()).collect();
    // dp[u]: least loss of the linears so far in at most u units; from[i][u]: linear i's option.
    let mut dp = vec![0f64; cap + 1];
    let mut from: Vec<Vec<u8>> = Vec::with_capacity(loss.len());
    for (l, w) in loss.iter().zip(&units) {
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut arg = vec![u8::MAX; cap + 1];
        for u in 0..=cap {
            for k in 0..l.len() {
                if w[k] <= u {
                    let v = dp[u - w[k]] + l[k];
                    if v < next[u] {
                        next[u] = v;
                        arg[u] = k as u8;
                    }
                }
            }
        }
        dp = next;
        from.push(arg);
    }
    let mut choice = if dp[cap].is_finite() {
        let mut c = vec![0usize; loss.len()];
        let mut u = cap;
        for i in (0..loss.len()).rev() {
            let k = from[i][u] as usize;
            c[i] = k;
            u -= units[i][k];
        }
        c
    } else {
        // Rounding made the table too tight: start from the smallest plan.
        smallest
    };
    // Spend what is left on the best loss saved per byte, one upgrade at a time.
    loop {
        let left = budget - total(&choice);
        let mut best: Option<(usize, usize, f64)> = None;
        for (i, (l, b)) in loss.iter().zip(bytes).enumerate() {
            let (k0, b0) = (choice[i], b[choice[i]]);
            for k in 0..l.len() {
                let gain = l[k0] - l[k];
                if gain > 0.0 && b[k] > b0 && b[k] - b0 <= left {
                    let rate = gain / (b[k] - b0) as f64;
                    if best.is_none_or(|(_, _, r)| rate > r) {
                        best = Some((i, k, rate));
                    }
                } else if gain >= 0.0 && b[k] <= b0 && k != k0 && (gain > 0.0 || b[k] < b0) {
                    // Better and no larger: always take it.
                    best = Some((i, k, f64::INFINITY));
                }
            }
        }
        match best {
            Some((i, k, _)) => choice[i] = k,
            None => break,
        }
    }
    Some(choice)
}

/// The plan for `target_bpw` from measured sensitivities.
pub fn plan_from(model: &Model, o: &Options, target_bpw: f64, s: &Sensitivity) -> Result<Plan> {
    let planned: Vec<String> = s.names.iter().cloned().chain(s.tables.iter().map(|t| t.name.clone())).collect();
    let (fixed, params) = fixed_bytes(model, o, &planned);
    let es = crate::weights::dtype_size(o.float_dtype).unwrap_or(2) as u64;
    let mut size_cache: HashMap<(Setting, usize, usize), u64> = HashMap::new();
    let mut bytes = Vec::new();
    for &(out, inn) in &s.shapes {
        let mut row = Vec::new();
        for &c in &s.candidates {
            let b = match size_cache.get(&(c, out, inn)) {
                Some(b) => *b,
                None => {
                    let b = stored_bits(o, c, out, inn)?.div_ceil(8);
                    size_cache.insert((c, out, inn), b);
                    b
                }
            };
            row.push(b);
        }
        bytes.push(row);
    }
    // The tables after the linears: one more item each.
    let mut loss = s.loss.clone();
    for t in &s.tables {
        let (v, d) = t.shape;
        let row = t
            .settings
            .iter()
            .map(|c| match c {
                None => Ok(v as u64 * d as u64 * es),
                Some(c) => Ok(stored_bits(o, *c, v, d)?.div_ceil(8)),
            })
            .collect::<Result<Vec<u64>>>()?;
        bytes.push(row);
        loss.push(t.loss.clone());
    }
    let n_lin = s.names.len();
    let budget_total = (target_bpw * params as f64 / 8.0).floor() as u64;
    let min_bytes = fixed + bytes.iter().map(|r| *r.iter().min().unwrap()).sum::<u64>();
    let max_bytes = fixed + bytes.iter().map(|r| *r.iter().max().unwrap()).sum::<u64>();
    let bpw = |b: u64| 8.0 * b as f64 / params as f64;
    let choice = budget_total.checked_sub(fixed).and_then(|b| choose(&loss, &bytes, b)).ok_or_else(|| {
        anyhow!(
            "{}: below the smallest plan of these candidates ({:.3} bpw: the linears{} at their smallest setting, what is kept at --float-dtype {:.3} bpw); the candidates reach {:.3}..{:.3} bpw",
            match o.target_size {
                Some(b) => format!("--target-size {b} bytes ({target_bpw:.4} bpw)"),
                None => format!("--target-bpw {target_bpw}"),
            },
            bpw(min_bytes),
            if s.tables.is_empty() { "" } else { " and tables" },
            bpw(fixed),
            bpw(min_bytes),
            bpw(max_bytes)
        )
    })?;
    let linears: Vec<LinearChoice> = choice[..n_lin]
        .iter()
        .enumerate()
        .map(|(i, &k)| LinearChoice {
            name: s.names[i].clone(),
            setting: Setting { method: o.method, ..s.candidates[k] },
            bytes: bytes[i][k],
            predicted_loss: s.loss[i][k],
        })
        .collect();
    let tables: Vec<TableChoice> = s
        .tables
        .iter()
        .enumerate()
        .map(|(j, t)| {
            let k = choice[n_lin + j];
            TableChoice {
                name: t.name.clone(),
                setting: t.settings[k],
                float_dtype: t.settings[k].is_none().then(|| format!("{:?}", o.float_dtype).to_lowercase()),
                bytes: bytes[n_lin + j][k],
                predicted_loss: t.loss[k],
            }
        })
        .collect();
    let total = fixed + linears.iter().map(|l| l.bytes).sum::<u64>() + tables.iter().map(|t| t.bytes).sum::<u64>();
    // Each candidate on every linear, and rtn at its bits × group on the tables.
    let uniform = (0..s.candidates.len())
        .map(|k| {
            let c = s.candidates[k];
            let (mut b, mut l) = (fixed + bytes[..n_lin].iter().map(|r| r[k]).sum::<u64>(), s.loss.iter().map(|r| r[k]).sum::<f64>());
            for (j, t) in s.tables.iter().enumerate() {
                let i = t.settings.iter().position(|x| x.is_some_and(|x| (x.bits, x.group_size) == (c.bits, c.group_size))).unwrap_or(0);
                b += bytes[n_lin + j][i];
                l += t.loss[i];
            }
            UniformPlan { setting: c, model_bpw: bpw(b), predicted_loss: l }
        })
        .collect();
    Ok(Plan {
        uniform,
        target_bpw,
        target_size: o.target_size,
        model_bpw: bpw(total),
        bytes: total,
        params,
        predicted_loss: linears.iter().map(|l| l.predicted_loss).sum::<f64>() + tables.iter().map(|t| t.predicted_loss).sum::<f64>(),
        fixed_bytes: fixed,
        linears,
        tables,
        seconds: s.seconds,
    })
}

/// The method a candidate's sensitivity is measured with: awq+gptq as gptq (its AWQ transform of
/// a whole scale group is not applied to one linear alone), so the two share a sensitivity cache.
fn measured_method(m: Method) -> Method {
    if m == Method::AwqGptq {
        Method::Gptq
    } else {
        m
    }
}

/// The candidates of `--plan-bits` × `--plan-groups` with `--method`.
pub fn candidates(o: &Options) -> Vec<Setting> {
    let mut v = Vec::new();
    for &bits in &o.plan_bits {
        for &group_size in &o.plan_groups {
            v.push(Setting { method: measured_method(o.method), bits, group_size });
        }
    }
    v
}

/// What `--target-bpw` accepts; checked before any work.
pub(crate) fn validate(o: &Options) -> Result<()> {
    if o.target_size.is_some() && o.target_bpw.is_some() {
        bail!("--target-size and --target-bpw name the same budget: give one");
    }
    // A --target-size (at least one byte, by its parser) is checked as a --target-bpw is.
    if o.target_size.is_none() && o.target_bpw.is_none() {
        return Ok(());
    }
    if let Some(t) = o.target_bpw.filter(|t| !(*t > 0.0 && t.is_finite())) {
        bail!("--target-bpw must be a positive number (got {t})");
    }
    if !matches!(o.method, Method::Rtn | Method::Gptq | Method::AwqGptq) {
        bail!("--target-bpw plans --method rtn, gptq or awq+gptq per linear (got {})", o.method.name());
    }
    if o.format != super::Format::Lowbit || o.gguf_type.is_some() {
        bail!("--target-bpw writes per-linear bits and group sizes: --format lowbit only");
    }
    if !o.overrides.is_empty() || !o.skip.is_empty() {
        bail!("--target-bpw chooses every linear's setting: do not combine it with --override or --skip");
    }
    if o.calib.is_none() {
        bail!("--target-bpw measures sensitivities on calibration text: give --calib");
    }
    if o.plan_bits.is_empty() || o.plan_groups.is_empty() {
        bail!("--plan-bits and --plan-groups must each list at least one value");
    }
    if let Some(b) = o.plan_bits.iter().find(|b| !(2..=8).contains(*b)) {
        bail!("--plan-bits: {b} is not between 2 and 8");
    }
    if o.plan_groups.contains(&0) {
        bail!("--plan-groups: group sizes must be at least 1");
    }
    Ok(())
}

/// The options that write `plan`: one exact-name override per linear.
pub fn apply(o: &Options, plan: &Plan) -> Result<Options> {
    let mut p = o.clone();
    p.target_bpw = None;
    p.target_size = None;
    p.overrides =
        plan.linears
            .iter()
            .map(|l| {
                format!("^{}$={}:{}:{}", regex::escape(&l.name), l.setting.method.name(), l.setting.bits, l.setting.group_size)
                    .parse::<Override>()
            })
            .chain(plan.tables.iter().filter_map(|t| {
                t.setting.map(|s| format!("^{}$=rtn:{}:{}", regex::escape(&t.name), s.bits, s.group_size).parse::<Override>())
            }))
            .collect::<Result<_>>()?;
    p.plan_note = Some(serde_json::to_value(plan)?);
    Ok(p)
}

/// Measure, choose and return the plan for `o.target_bpw` on the model at `model_dir`.
pub fn plan(model_dir: &Path, o: &Options, ev: &mut dyn Events) -> Result<Plan> {
    validate(o)?;
    let model = Model::open_dense(model_dir)?;
    let target = match o.target_size {
        // Whole-model bits per weight of that many stored bytes.
        Some(b) => 8.0 * b as f64 / fixed_bytes(&model, o, &[]).1 as f64,
        None => o.target_bpw.expect("validated"),
    };
    model.cfg.check_positions(o.calib_seqlen, "--calib-seqlen").map_err(|e| anyhow!("{}: {e}", model_dir.display()))?;
    super::check_finite_tail(&model)?;
    let tok = Tokenizer::from_dir(model_dir)?;
    crate::calib::check_budget(o.calib_samples, o.calib_seqlen, model.cfg.hidden_size)?;
    let calib = o.calib.as_ref().expect("validated");
    let tokens = crate::calib::sample_calib(&tok, calib, o.calib_samples, o.calib_seqlen, o.seed, ev)?;
    let cands = candidates(o);
    // The sizes first: an impossible budget fails before the sensitivity pass.
    let mut names = Vec::new();
    let mut shapes = Vec::new();
    for i in 0..model.cfg.num_layers {
        for spec in model.cfg.family.linears() {
            names.push(format!("model.layers.{i}.{}", spec.name));
            shapes.push(model.linear_shape(spec));
        }
    }
    let tables = table_settings(&model, o, &cands)
        .into_iter()
        .map(|(n, settings)| TableSensitivity {
            name: n.to_string(),
            shape: (model.cfg.vocab_size, model.cfg.hidden_size),
            loss: vec![0.0; settings.len()],
            settings,
        })
        .collect();
    let probe = Sensitivity {
        names,
        loss: vec![vec![0.0; cands.len()]; shapes.len()],
        shapes,
        candidates: cands.clone(),
        tables,
        seconds: 0.0,
        key: String::new(),
    };
    plan_from(&model, o, target, &probe)?;
    let key = cache_key(model_dir, o, &cands, &tokens)?;
    let s = match &o.sensitivity_cache {
        Some(p) if p.exists() => {
            let shown = crate::escape::path(p);
            let text = std::fs::read_to_string(p).with_context(|| format!("{shown}: cannot read"))?;
            let mut s: Sensitivity = serde_json::from_str(&text).map_err(|e| anyhow!("{shown}: not a sensitivity cache: {e}"))?;
            if s.key != key {
                bail!("{shown}: measured on another model, calibration or candidate list; remove it or choose another --sensitivity-cache");
            }
            s.seconds = 0.0;
            s
        }
        cache => {
            let mut s = sensitivities(&model, o, &cands, &tokens, o.calib_seqlen, ev)?;
            s.key = key;
            if let Some(p) = cache {
                crate::st_write::write_atomic(p, serde_json::to_string(&s)?.as_bytes())?;
            }
            s
        }
    };
    plan_from(&model, o, target, &s)
}

/// The plan as a table: one line per linear, then the totals.
pub fn describe(p: &Plan) -> String {
    let mut s = String::from("linear                                   setting        bytes   predicted loss\n");
    for l in &p.linears {
        s += &format!(
            "{:<40} {:<12} {:>8} {:>14.6e}\n",
            l.name,
            format!("{}:{}:g{}", l.setting.method.name(), l.setting.bits, l.setting.group_size),
            l.bytes,
            l.predicted_loss
        );
    }
    for t in &p.tables {
        let setting = match (&t.setting, &t.float_dtype) {
            (Some(s), _) => format!("rtn:{}:g{}", s.bits, s.group_size),
            (None, f) => f.clone().unwrap_or_default(),
        };
        s += &format!("{:<40} {:<12} {:>8} {:>14.6e}\n", t.name, setting, t.bytes, t.predicted_loss);
    }
    let mut mix: std::collections::BTreeMap<String, usize> = Default::default();
    for l in &p.linears {
        *mix.entry(format!("{}-bit g{}", l.setting.bits, l.setting.group_size)).or_default() += 1;
    }
    s += &format!(
        "plan: {:.4} bpw whole model (target {}), {} bytes ({} outside the planned linears and tables), predicted loss {:.6e}; {}\n",
        p.model_bpw,
        match p.target_size {
            Some(b) => format!("{b} bytes = {:.4} bpw", p.target_bpw),
            None => format!("{}", p.target_bpw),
        },
        p.bytes,
        p.fixed_bytes,
        p.predicted_loss,
        mix.iter().map(|(k, n)| format!("{n}× {k}")).collect::<Vec<_>>().join(", ")
    );
    s
}
