//! `lowbit quantize`: stream calibration activations through the model one decoder layer at a
//! time, quantize every linear of the layer with the chosen method, pack, and write an HF-style
//! directory (atomically: everything goes to a temporary directory renamed at the end).
//!
//! This file holds the methods and how a layer's linears are quantized with them; the pipeline
//! is in the submodules: [`options`] (settings, `--override`, checks), [`plan`] (every linear's
//! plan and the tables), [`layers`] (the layer loop), [`resume`] (fingerprint and checkpoint
//! choice), [`output`] (the written files), [`pipeline`] (the driver), [`combos`] (`lowbit
//! sweep`'s driver: several option sets from one calibration pass), [`budget`] (`--target-bpw`),
//! [`gguf`] (GGUF block types), `sequential` (`--true-sequential`).

pub mod budget;
mod combos;
pub mod gguf;
mod layers;
mod options;
mod output;
mod pipeline;
mod plan;
mod resume;
mod sequential;

pub(crate) use combos::{quantize_combos, Combo};
pub use gguf::{parse_block_type, parse_tensor_type, DEFAULT_GGUF_TYPE};
pub(crate) use layers::{calibrate_layer, check_finite_layer, check_finite_tail, layer_out};
pub use options::{validate, Options, Override};
pub use output::module_meta;
pub use pipeline::{quantize, Summary};
pub use plan::{plan_tables, TABLES};

use crate::arch::Input;
use crate::gguf::GgmlType;
use crate::model::{LayerWeights, Model};
use crate::pack::{Packed, Want};
use crate::quant::{awq, gguf as qgguf, gptq, rtn, shift, statsq, vptq, Grid, GroupQ, QTensor};
use crate::stats::{InputStats, Needs};
use anyhow::{Context, Result};
use gguf::quantize_gguf;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
pub enum Method {
    /// Round to nearest, per group.
    #[value(name = "rtn")]
    Rtn,
    /// Activation-aware scaling + clip search, then RTN.
    #[value(name = "awq")]
    Awq,
    /// StatsQ: zero-free half-integer grid, scale 2·mean|W| per group (OFQ).
    #[value(name = "statsq")]
    Statsq,
    /// StatsQ with the scale chosen to minimise the E[x²]-weighted error.
    #[value(name = "statsq-aware")]
    StatsqAware,
    /// AWQ's scale search in front of statsq-aware.
    #[value(name = "awq+statsq")]
    AwqStatsq,
    /// GPTQ's error feedback on the StatsQ grid (scales from the diag(H)-weighted search).
    #[value(name = "gptq+statsq")]
    GptqStatsq,
    /// DenseShift: ±s·2^-p, no zero code, MSE-optimal scale per group.
    #[value(name = "shift")]
    Shift,
    /// Shift with the scale chosen to minimise the E[x²]-weighted error.
    #[value(name = "shift-aware")]
    ShiftAware,
    /// AWQ's scale search in front of shift-aware.
    #[value(name = "awq+shift")]
    AwqShift,
    /// GPTQ's error feedback on the shift grid (scales from the diag(H)-weighted search).
    #[value(name = "gptq+shift")]
    GptqShift,
    /// GPTQ: second-order error compensation through the Cholesky factor of H⁻¹ (IST-DASLab).
    #[value(name = "gptq")]
    Gptq,
    /// AWQ's scale and clip transform of the layer, then GPTQ on the transformed weights (the
    /// Hessian of the scaled inputs).
    #[value(name = "awq+gptq")]
    AwqGptq,
    /// VPTQ: vector quantization with a Hessian-weighted k-means codebook and second-order error
    /// feedback (`--vector-len`, `--centroids`, ...; `--bits` is ignored).
    #[value(name = "vptq")]
    Vptq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Awq => "awq",
            Method::Statsq => "statsq",
            Method::StatsqAware => "statsq-aware",
            Method::AwqStatsq => "awq+statsq",
            Method::GptqStatsq => "gptq+statsq",
            Method::Shift => "shift",
            Method::ShiftAware => "shift-aware",
            Method::AwqShift => "awq+shift",
            Method::GptqShift => "gptq+shift",
            Method::Gptq => "gptq",
            Method::AwqGptq => "awq+gptq",
            Method::Vptq => "vptq",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(s, true).ok()
    }

    /// Statistics this method reads from the calibration pass.
    pub(crate) fn needs(self, o: &Options) -> Needs {
        let awq = Needs { mean_abs: true, window_tokens: o.search_tokens, ..Needs::default() };
        match self {
            Method::Rtn | Method::Statsq | Method::Shift => Needs::default(),
            // The clip search's sample too; on GGUF block grids, the block fit after AWQ's scaling
            // is weighted by E[x²].
            Method::Awq => Needs { strided_rows: awq::CLIP_TOKENS, mean_sq: o.format == Format::Gguf || o.gguf_type.is_some(), ..awq },
            // AWQ's search in front of the aware quantizer.
            Method::AwqStatsq | Method::AwqShift => Needs { mean_sq: o.aware_weight == AwareWeight::MeanSq, ..awq },
            Method::StatsqAware | Method::ShiftAware => match o.aware_weight {
                AwareWeight::MeanSq => Needs { mean_sq: true, ..Needs::default() },
                AwareWeight::MeanAbs => Needs { mean_abs: true, ..Needs::default() },
            },
            Method::Gptq | Method::GptqStatsq | Method::GptqShift | Method::Vptq => Needs { hessian: true, ..Needs::default() },
            // AWQ's search and clip sample, then GPTQ's Hessian.
            Method::AwqGptq => Needs { hessian: true, strided_rows: awq::CLIP_TOKENS, ..awq },
        }
    }

    /// Runs AWQ's scale search in front of its quantizer.
    fn awq_search(self) -> bool {
        matches!(self, Method::Awq | Method::AwqStatsq | Method::AwqShift | Method::AwqGptq)
    }

    /// Runs AWQ's clip search after the scale search (on RTN's affine grid).
    fn awq_clip(self) -> bool {
        matches!(self, Method::Awq | Method::AwqGptq)
    }

    /// Later layers should see this method's quantized outputs (GPTQ's sequential scheme).
    fn propagates_quantized(self) -> bool {
        matches!(self, Method::Awq | Method::Gptq | Method::AwqGptq | Method::GptqStatsq | Method::GptqShift | Method::Vptq)
    }

    /// Vector quantization (stored in the VQ layout, lowbit format only).
    fn is_vq(self) -> bool {
        matches!(self, Method::Vptq)
    }

    /// The scalar grid this method's codes live on (VPTQ, which has none, reports `Affine`).
    fn grid(self) -> Grid {
        match self {
            Method::Statsq | Method::StatsqAware | Method::AwqStatsq | Method::GptqStatsq => Grid::HalfInt,
            Method::Shift | Method::ShiftAware | Method::AwqShift | Method::GptqShift => Grid::Shift,
            Method::Rtn | Method::Awq | Method::Gptq | Method::AwqGptq | Method::Vptq => Grid::Affine,
        }
    }
}

impl LinearPlan {
    /// What this plan asks of the output layout (the codes' width, group size and grid, a
    /// g_idx for GPTQ's act-order, vector quantization).
    pub fn want(&self, o: &Options) -> Want {
        let gptq = matches!(self.method, Method::Gptq | Method::GptqStatsq | Method::GptqShift);
        Want {
            bits: self.bits,
            group_size: self.group_size,
            grid: self.method.grid(),
            g_idx: gptq && o.act_order && !o.static_groups,
            vq: self.method.is_vq(),
        }
    }
}

/// How one linear is quantized: method, bits and group size (after `--override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearPlan {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    /// A llama.cpp block type: the codes live on its grid (`bits` / `group_size` unused).
    pub ty: Option<GgmlType>,
}

/// `--format`: the packed layout of the output (one type with [`crate::pack::Layout`], which
/// owns each layout's rules, tensors and sizes).
pub use crate::pack::Layout as Format;

/// The per-input-channel importance that weights statsq-aware's and shift-aware's scale search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum AwareWeight {
    /// diag(H) = E[x²]: the diagonal of the layer's output error (the default: better on
    /// stories260K and SmolLM2, docs/statsq-shift.md).
    #[value(name = "mean-sq")]
    MeanSq,
    /// E[|x|], AWQ's activation statistic.
    #[value(name = "mean-abs")]
    MeanAbs,
}

fn pack(o: &Options, q: &GroupQ, prefix: &str) -> Result<Packed> {
    Packed::pack(o.format, q).with_context(|| format!("{prefix}: cannot pack"))
}

/// Fake quantization of a row by a plan's quantizer (what AWQ's search scores against). The
/// row arrives multiplied by the candidate channel scales `s`; `imp` is the aware methods'
/// importance of the unscaled inputs, which the quantizer sees through `s` ([`scaled_importance`]).
type RowQuantizer = awq::BoxedRowFakeQuant;

/// [`statsq::statsq`] or [`shift::shift`]: `(w, out, inn, bits, group, importance) -> codes`.
type ZeroFreeQuantizer = fn(&[f32], usize, usize, u8, usize, Option<&[f32]>) -> GroupQ;

fn row_quantizer(p: LinearPlan, sym: bool, range: rtn::Range, imp: Vec<f32>, aw: AwareWeight) -> RowQuantizer {
    let (b, g) = (p.bits, p.group_size);
    if let Some(ty) = p.ty {
        return Box::new(move |row: &mut [f32], _s: &[f32]| qgguf::fake_quant_row(ty, row, None));
    }
    match p.method {
        Method::AwqStatsq | Method::AwqShift => {
            let quantize: ZeroFreeQuantizer = if p.method.grid() == Grid::HalfInt { statsq::statsq } else { shift::shift };
            Box::new(move |row: &mut [f32], s: &[f32]| {
                let d = quantize(row, 1, row.len(), b, g, Some(&scaled_importance(&imp, Some(s), aw))).dequantize();
                row.copy_from_slice(&d);
            })
        }
        _ => Box::new(awq::rtn_row(b, g, sym, range)),
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
fn scaled_importance(imp: &[f32], s: Option<&[f32]>, aw: AwareWeight) -> Vec<f32> {
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
/// searched when one of its linears uses an AWQ-family method, the first such plan setting the
/// quantizer the search scores against; every `awq` linear but q/k is clipped. Returns the scales
/// folded per input.
fn awq_layer(
    o: &Options,
    model: &Model,
    lw: &mut LayerWeights,
    plan_of: &dyn Fn(&str) -> Option<LinearPlan>,
    stats: &HashMap<Input, InputStats>,
) -> HashMap<Input, Vec<f32>> {
    let search_of = |g: &crate::arch::ScaleGroup| {
        let p = g.linears.iter().filter_map(|n| plan_of(n)).find(|p| p.method.awq_search())?;
        let imp = match p.method {
            Method::Awq => Vec::new(),
            _ => importance(&stats[&g.input], o.aware_weight),
        };
        Some((awq::AwqConfig::new(p.bits, p.group_size, o.sym, o.awq_range), row_quantizer(p, o.sym, o.awq_range, imp, o.aware_weight)))
    };
    let folded = awq::scale_layer(model, lw, stats, &search_of);
    let clip_of = |name: &str| {
        plan_of(name)
            // The clip search scores RTN's affine grid; on the GGUF block grids the block fit's own
            // range search takes its place.
            .filter(|p| p.method.awq_clip() && p.ty.is_none())
            .map(|p| awq::AwqConfig { clip_asym: !o.awq_symmetric_clip, ..awq::AwqConfig::new(p.bits, p.group_size, o.sym, o.awq_range) })
    };
    awq::clip_layer(lw, stats, &folded, &clip_of);
    folded
}

/// Quantize one layer's linears with their plans (after the methods' transforms of `lw`).
/// Returns one entry per linear in table order; `None` keeps the linear in float.
fn quantize_layer(
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
    // AWQ channel scales folded into each input's consumers (awq+statsq / awq+shift read them).
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
        let q = match p.method {
            Method::Rtn => QTensor::Group(rtn::quantize(&l.w, l.out, l.inn, p.bits, p.group_size, o.sym)),
            Method::Awq => QTensor::Group(rtn::quantize_in(&l.w, l.out, l.inn, p.bits, p.group_size, o.sym, o.awq_range)),
            Method::Statsq => QTensor::Group(statsq::statsq(&l.w, l.out, l.inn, p.bits, p.group_size, None)),
            Method::StatsqAware | Method::AwqStatsq => {
                QTensor::Group(statsq::statsq(&l.w, l.out, l.inn, p.bits, p.group_size, Some(&imp())))
            }
            Method::Shift => QTensor::Group(shift::shift(&l.w, l.out, l.inn, p.bits, p.group_size, None)),
            Method::ShiftAware | Method::AwqShift => QTensor::Group(shift::shift(&l.w, l.out, l.inn, p.bits, p.group_size, Some(&imp()))),
            Method::Gptq | Method::AwqGptq | Method::GptqStatsq | Method::GptqShift => {
                let mut cfg = gptq::GptqConfig::new(p.bits, p.group_size, o.sym);
                cfg.act_order = o.act_order;
                cfg.static_groups = o.static_groups;
                cfg.grid = p.method.grid();
                QTensor::Group(gptq::gptq(&l.w, l.out, l.inn, h(), &cfg).with_context(|| format!("{prefix}: GPTQ"))?.0)
            }
            Method::Vptq => QTensor::Vq(vptq::vptq(&l.w, l.out, l.inn, h(), &o.vptq).with_context(|| format!("{prefix}: VPTQ"))?.0),
        };
        out.push(Some(q));
    }
    Ok(out)
}
