//! The GGUF side of `lowbit quantize`'s planning and layer loop, kept out of the hub: block types
//! from the command line, the rules for methods and formats, llama.cpp's fallbacks per linear, and
//! quantizing one linear onto a block grid with RTN, AWQ or GPTQ.

use super::compose::scaled_importance;
use super::{AwareWeight, Format, LinearPlan, Method, Options};
use crate::arch::Input;
use crate::codes::Grid;
use crate::gguf::GgmlType;
use crate::model::Model;
use crate::quant::recipe::Core;
use crate::quant::{gguf as qgguf, gptq};
use crate::stats::InputStats;
use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, HashMap};

/// The default GGUF type of the linears.
pub const DEFAULT_GGUF_TYPE: GgmlType = GgmlType::Q4_K;

/// A block type lowbit writes, by name ("q4_k"); unknown names are refused with the list.
pub fn parse_block_type(s: &str) -> Result<GgmlType> {
    GgmlType::parse(s).filter(|t| crate::gguf::blocks::Kind::of(*t).is_some()).ok_or_else(|| {
        let names: Vec<String> = crate::gguf::blocks::WRITABLE.iter().map(|t| t.name().to_lowercase()).collect();
        anyhow!("unknown GGUF block type {s:?} (expected one of {})", names.join(", "))
    })
}

/// A tensor type for the GGUF token embedding / output: a block type or f32 / f16 / bf16.
pub fn parse_tensor_type(s: &str) -> Result<GgmlType> {
    match GgmlType::parse(s) {
        Some(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => Ok(t),
        _ => parse_block_type(s).map_err(|e| anyhow!("{e}, f32, f16 or bf16")),
    }
}

/// The GGUF rules: methods that can choose codes on a block grid, formats that can hold them.
pub(crate) fn validate_gguf(o: &Options) -> Result<()> {
    // Codes on the affine grid, chosen without an aware fit: the block types' own grids.
    let ok = |m: Method| matches!(m.recipe().core, Core::Round { grid: Grid::Affine, aware: false } | Core::Gptq(Grid::Affine));
    for m in std::iter::once(o.method).chain(o.overrides.iter().map(|v| v.method)) {
        if !ok(m) {
            bail!("--method {}: GGUF block types are quantized with rtn, awq, gptq or awq+gptq", m.name());
        }
        if m.needs(o).any() && o.calib.is_none() {
            bail!("--method {} needs --calib FILE (calibration text)", m.name());
        }
    }
    match o.format {
        Format::Gguf => {}
        Format::Lowbit => {
            for t in o.gguf_type.iter().chain(o.overrides.iter().filter_map(|v| v.ty.as_ref())) {
                if !matches!(*t, GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q4_0) {
                    bail!(
                        "--gguf-type {}: only Q8_0, Q5_0 and Q4_0 codes fit lowbit's layout (use --format gguf)",
                        t.name().to_lowercase()
                    );
                }
            }
        }
        f => bail!("--format {}: GGUF block types are written by --format gguf (or lowbit for Q8_0/Q5_0/Q4_0)", f.name()),
    }
    if o.format != Format::Gguf && (o.token_embd_type.is_some() || o.output_type.is_some()) {
        bail!("--token-embedding-type / --output-tensor-type need --format gguf");
    }
    Ok(())
}

/// One linear onto a GGUF block grid: RTN (unit weights), AWQ (after its channel scaling, the
/// block fit weighted by the scaled `E[x²]`, as llama.cpp's imatrix), GPTQ (error feedback on the
/// block grid; act-order with static groups).
pub(crate) fn quantize_gguf<'a>(
    o: &Options,
    ty: GgmlType,
    method: Method,
    l: &crate::model::LinearW,
    stats: &HashMap<Input, InputStats>,
    folded: &HashMap<Input, Vec<f32>>,
    h: impl Fn() -> &'a Vec<f64>,
) -> Result<qgguf::BlockQ> {
    let r = method.recipe();
    Ok(match r.core {
        Core::Round { grid: Grid::Affine, aware: false } => {
            let imp = r.awq.then(|| {
                scaled_importance(&stats[&l.spec.input].mean_sq(), folded.get(&l.spec.input).map(|s| s.as_slice()), AwareWeight::MeanSq)
            });
            qgguf::quantize(ty, &l.w, l.out, l.inn, imp.as_deref())
        }
        Core::Gptq(Grid::Affine) => {
            let mut cfg = gptq::GptqConfig::new(8, 32, false);
            cfg.act_order = o.act_order;
            cfg.static_groups = o.static_groups || o.act_order;
            cfg.report_baseline = false;
            let (codes, params, _) = gptq::gptq_on(&l.w, l.out, l.inn, h(), &cfg, &qgguf::BlockGrid::new(ty))?;
            qgguf::encode_matrix(ty, l.out, l.inn, &codes, &params)
        }
        _ => bail!("--method {} cannot write GGUF blocks", method.name()),
    })
}

/// A GGUF plan for a linear of `cols` input columns after llama.cpp's fallbacks: another block
/// type, or `None` (kept in float, as llama.cpp's F16) when no 32-block divides the rows. A type
/// asked for by `--override` that neither it nor its fallback can hold is an error naming the
/// tensor.
pub(crate) fn gguf_fallback(o: &Options, p: LinearPlan, cols: usize, prefix: &str) -> Result<Option<LinearPlan>> {
    let ty = p.ty.expect("gguf plan");
    match crate::gguf::blocks::fallback(ty, cols) {
        Some(t) => Ok(Some(LinearPlan { ty: Some(t), group_size: crate::gguf::blocks::Kind::of(t).map_or(32, |k| k.block), ..p })),
        None if o.overrides.iter().any(|v| v.ty == Some(ty) && v.pattern.is_match(prefix)) => {
            bail!("{prefix}: {cols} input columns cannot hold {} blocks (nor those of its fallback type)", ty.name())
        }
        None => Ok(None),
    }
}

/// One line per (linear, asked type, stored type) where a GGUF plan fell back, with its layers.
pub fn gguf_fallbacks(model: &Model, o: &Options, plans: &[Vec<Option<LinearPlan>>]) -> Vec<String> {
    let mut by: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for (i, row) in plans.iter().enumerate() {
        for (spec, p) in model.cfg.family.linears().iter().zip(row) {
            let prefix = format!("model.layers.{i}.{}", spec.name);
            let Some(asked) = o.plan(&prefix).and_then(|p| p.ty) else { continue };
            let got = p.and_then(|p| p.ty).map_or_else(|| "F16 (float)".to_string(), |t| t.name());
            if got != asked.name() {
                by.entry((spec.name.to_string(), asked.name(), got)).or_default().push(i);
            }
        }
    }
    by.into_iter()
        .map(|((name, a, g), layers)| {
            let cols = model.linear_shape(model.cfg.family.linears().iter().find(|s| s.name == name).expect("in table")).1;
            format!("{name} in {} layer(s): {a} -> {g} ({cols} columns)", layers.len())
        })
        .collect()
}
