//! Method composition for one decoder layer: what each linear's recipe asks for (AWQ's transform
//! of the layer, the aware fit's importance, GPTQ's / VPTQ's Hessian) and which quantizer runs on
//! which grid. The hub calls [`quantize_layer`]; nothing here names a method.

use super::gguf::quantize_gguf;
use super::{sequential, Format, LinearPlan, Options};
use crate::arch::Input;
use crate::codes::{Grid, GroupQ, QTensor};
use crate::model::{LayerWeights, Model};
use crate::named::Named;
use crate::pack::Packed;
use crate::quant::recipe::{AwareWeight, Core};
use crate::quant::{awq, gguf as qgguf, gptq, grid, rtn, vptq};
use crate::stats::{InputStats, Needs};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::Instant;

use crate::quant::methods::Method;

impl Method {
    /// The `--method` name.
    pub fn name(self) -> &'static str {
        self.recipe().name
    }

    pub fn parse(s: &str) -> Option<Self> {
        <Self as Named>::from_name(s)
    }

    /// Statistics this method reads from the calibration pass.
    pub(crate) fn needs(self, o: &Options) -> Needs {
        self.recipe().needs(o.aware_weight, o.format == Format::Gguf || o.gguf_type.is_some(), o.search_tokens)
    }

    /// Runs AWQ's scale search in front of its quantizer.
    pub(crate) fn awq_search(self) -> bool {
        self.recipe().awq
    }

    /// Later layers should see this method's quantized outputs (GPTQ's sequential scheme).
    pub(crate) fn propagates_quantized(self) -> bool {
        self.recipe().propagates
    }

    /// Vector quantization (stored in the VQ layout, lowbit format only).
    pub(crate) fn is_vq(self) -> bool {
        self.recipe().is_vq()
    }

    /// The scalar grid this method's codes live on (VPTQ, which has none, reports `Affine`).
    pub(crate) fn grid(self) -> Grid {
        self.recipe().grid()
    }
}

pub(super) fn pack(o: &Options, q: &GroupQ, prefix: &str) -> Result<Packed> {
    Packed::pack(o.format, q).with_context(|| format!("{prefix}: cannot pack"))
}

/// The quantizer AWQ's search scores a plan's candidates against: the plan's grid (its GGUF
/// block type, or the method's scalar grid spanning `--awq-range`). The row arrives multiplied by
/// the candidate channel scales `s`; an aware method's fit sees the importance `imp` of the
/// unscaled inputs through `s` ([`scaled_importance`]).
fn row_quantizer(p: LinearPlan, o: &Options, imp: Vec<f32>) -> awq::BoxedRowFakeQuant {
    let (aw, aware) = (o.aware_weight, p.method.recipe().aware());
    let imp_of = move |s: &[f32]| aware.then(|| scaled_importance(&imp, Some(s), aw));
    match p.ty {
        Some(ty) => awq::grid_row(Box::new(qgguf::BlockGrid::new(ty)), imp_of),
        None => awq::grid_row(grid::scalar(p.method.grid(), p.bits, p.group_size, o.sym, o.awq_range), imp_of),
    }
}

/// Importance of an input's channels for the aware quantizers: E[x²] or E|x| (`--aware-weight`).
fn importance(st: &InputStats, aw: AwareWeight) -> Vec<f32> {
    match aw {
        AwareWeight::MeanSq => st.mean_sq(),
        AwareWeight::MeanAbs => st.mean_abs(),
    }
}

/// Importance of a linear's input channels for the aware quantizers, after AWQ folded the
/// channel scales `s` into the weight: the inputs become `x/s`, so `E[x²]` becomes `E[x²]/s²`
/// and `E|x|` becomes `E|x|/s`.
pub(super) fn scaled_importance(imp: &[f32], s: Option<&[f32]>, aw: AwareWeight) -> Vec<f32> {
    match s {
        None => imp.to_vec(),
        Some(s) => imp
            .iter()
            .zip(s)
            .map(|(v, s)| match aw {
                AwareWeight::MeanSq => v / (s * s),
                AwareWeight::MeanAbs => v / s,
            })
            .collect(),
    }
}

/// AWQ's transform of layer `lw` ([`awq::scale_layer`], then [`awq::clip_layer`]): a group is
/// searched when one of its linears' recipes runs AWQ, the first such plan setting the quantizer
/// the search scores against; every linear whose recipe clips (AWQ on the affine grid) but q/k
/// is clipped. Returns the scales folded per input.
fn awq_layer(
    o: &Options,
    model: &Model,
    lw: &mut LayerWeights,
    plan_of: &dyn Fn(&str) -> Option<LinearPlan>,
    stats: &HashMap<Input, InputStats>,
) -> HashMap<Input, Vec<f32>> {
    let search_of = |g: &crate::arch::ScaleGroup| {
        let p = g.linears.iter().filter_map(|n| plan_of(n)).find(|p| p.method.awq_search())?;
        let imp = if p.method.recipe().aware() { importance(&stats[&g.input], o.aware_weight) } else { Vec::new() };
        Some((awq::AwqConfig::new(p.bits, p.group_size, o.sym, o.awq_range), row_quantizer(p, o, imp)))
    };
    let folded = awq::scale_layer(model, lw, stats, &search_of);
    let clip_of = |name: &str| {
        plan_of(name)
            // The clip search scores RTN's affine grid; on the GGUF block grids the block fit's own
            // range search takes its place.
            .filter(|p| p.method.recipe().clip() && p.ty.is_none())
            .map(|p| awq::AwqConfig { clip_asym: !o.awq_symmetric_clip, ..awq::AwqConfig::new(p.bits, p.group_size, o.sym, o.awq_range) })
    };
    awq::clip_layer(lw, stats, &folded, &clip_of);
    folded
}

/// Quantize one layer's linears with their plans (after the methods' transforms of `lw`).
/// Returns one entry per linear in table order; `None` keeps the linear in float.
pub(super) fn quantize_layer(
    o: &Options,
    model: &Model,
    lw: &mut LayerWeights,
    plans: &[Option<LinearPlan>],
    stats: &HashMap<Input, InputStats>,
    layer_input: Option<(&[f32], usize)>,
    search_seconds: &mut f64,
) -> Result<Vec<Option<QTensor>>> {
    let specs = model.cfg.family.linears();
    let plan_of = |name: &str| specs.iter().position(|s| s.name == name).and_then(|i| plans[i]);
    // AWQ channel scales folded into each input's consumers (the aware cores read them).
    let folded = if plans.iter().flatten().any(|p| p.method.awq_search()) {
        let t = Instant::now();
        let f = awq_layer(o, model, lw, &plan_of, stats);
        *search_seconds += t.elapsed().as_secs_f64();
        f
    } else {
        HashMap::new()
    };
    let mut out = Vec::new();
    let mut hessians: HashMap<Input, Vec<f64>> = HashMap::new();
    for (l, plan) in lw.linears.iter().zip(plans) {
        let Some(p) = plan else {
            out.push(None);
            continue;
        };
        let prefix = format!("model.layers.{}.{}", lw.index, l.spec.name);
        let imp = || {
            scaled_importance(
                &importance(&stats[&l.spec.input], o.aware_weight),
                folded.get(&l.spec.input).map(|s| s.as_slice()),
                o.aware_weight,
            )
        };
        if p.method.needs(o).hessian && !hessians.contains_key(&l.spec.input) {
            let h = match layer_input {
                // The input of q/k/v is the layer's own input: nothing quantized precedes it.
                Some((h_in, seqlen)) if o.true_sequential && l.spec.input != Input::AttnIn => {
                    sequential::hessian_after(model, lw, &out, h_in, seqlen, l.spec.input)?
                }
                _ => sequential::scaled_hessian(stats[&l.spec.input].hessian(), folded.get(&l.spec.input).map(|s| s.as_slice())),
            };
            hessians.insert(l.spec.input, h);
        }
        let h = || &hessians[&l.spec.input];
        if let Some(ty) = p.ty {
            out.push(Some(QTensor::Gguf(
                quantize_gguf(o, ty, p.method, l, stats, &folded, h).with_context(|| format!("{prefix}: {}", ty))?,
            )));
            continue;
        }
        let r = p.method.recipe();
        let q = match r.core {
            Core::Round { grid: g, aware } => {
                // AWQ's final RTN spans --awq-range, as its search did.
                let range = if r.awq { o.awq_range } else { rtn::Range::WithZero };
                let imp = aware.then(imp);
                QTensor::Group(grid::quantize(&*grid::scalar(g, p.bits, p.group_size, o.sym, range), &l.w, l.out, l.inn, imp.as_deref()))
            }
            Core::Gptq(g) => {
                let mut cfg = gptq::GptqConfig::new(p.bits, p.group_size, o.sym);
                cfg.act_order = o.act_order;
                cfg.static_groups = o.static_groups;
                cfg.grid = g;
                QTensor::Group(gptq::gptq(&l.w, l.out, l.inn, h(), &cfg).with_context(|| format!("{prefix}: GPTQ"))?.0)
            }
            Core::Vptq => QTensor::Vq(vptq::vptq(&l.w, l.out, l.inn, h(), &o.vptq).with_context(|| format!("{prefix}: VPTQ"))?.0),
        };
        out.push(Some(q));
    }
    Ok(out)
}
