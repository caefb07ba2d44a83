//! The plan of a run, decided before any work from the options and the shapes: every decoder
//! linear's method, bits and group size (or float), and the packed tables.

use super::gguf::gguf_fallback;
use super::{Format, LinearPlan, Options, Override};
use crate::events::Events;
use crate::model::Model;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// Every linear's plan, layer by layer, decided before any work from the options and the
/// shapes (never from quantized values):
///
/// * a plan the layout cannot hold whatever the shape (bits, grid, VQ) is an error naming the
///   module, as is a module an `--override` names that the layout cannot hold in its shape;
/// * a linear the base plan cannot hold in its shape is kept in float (and listed in
///   modules_to_not_convert), with one warning per kind;
/// * an `--override` or `--skip` that matches no linear is an error (a warning with
///   `--allow-unmatched`);
/// * AutoAWQ's config holds one bits / group size for every module: a mixture is refused.
pub(crate) fn plan_layers(model: &Model, o: &Options, ev: &mut dyn Events) -> Result<Vec<Vec<Option<LinearPlan>>>> {
    let c = &model.cfg;
    let mut plans: Vec<Vec<Option<LinearPlan>>> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut used_override = vec![false; o.overrides.len()];
    let mut used_skip = vec![false; o.skip.len()];
    let fmt = o.format.name();
    for i in 0..c.num_layers {
        let mut row = Vec::new();
        for spec in c.family.linears() {
            let prefix = format!("model.layers.{i}.{}", spec.name);
            for (k, r) in o.skip.iter().enumerate() {
                used_skip[k] |= r.is_match(&prefix);
            }
            let matched: Vec<usize> = (0..o.overrides.len()).filter(|&k| o.overrides[k].pattern.is_match(&prefix)).collect();
            for &k in &matched {
                used_override[k] = true;
            }
            let mut plan = o.plan(&prefix);
            if let Some(p) = plan.filter(|p| p.ty.is_some()) {
                plan = gguf_fallback(o, p, model.linear_shape(spec).1, &prefix)?;
            } else if let Some(p) = plan {
                let (out, inn) = model.linear_shape(spec);
                let want = p.want(o);
                let by = matched.last().map(|&k| format!(" (--override '{}')", o.overrides[k].pattern)).unwrap_or_default();
                // A shape every layout accepts for this group size: what fails there fails everywhere.
                let any = 256 * p.group_size.max(1);
                if let Err(e) = o.format.check(&want, any, any) {
                    bail!("{prefix}{by}: --format {fmt} cannot store --method {} here: {e}", p.method.name());
                }
                if let Err(e) = o.format.check(&want, out, inn) {
                    if !matched.is_empty() {
                        bail!("{prefix}{by}: --format {fmt} cannot store this module ({out}x{inn}): {e}");
                    }
                    let msg = format!("model.layers.*.{}: {e}", spec.name);
                    if !refused.contains(&msg) {
                        ev.warn(&format!("{msg}; keeping {} unquantized", spec.name));
                        refused.push(msg);
                    }
                    plan = None;
                }
            }
            row.push(plan);
        }
        plans.push(row);
    }
    for (k, v) in o.overrides.iter().enumerate() {
        used_override[k] |= TABLES.iter().any(|t| v.pattern.is_match(t));
    }
    let unmatched: Vec<String> = o
        .overrides
        .iter()
        .zip(&used_override)
        .filter(|(_, u)| !**u)
        .map(|(v, _)| format!("--override pattern '{}'", v.pattern))
        .chain(o.skip.iter().zip(&used_skip).filter(|(_, u)| !**u).map(|(r, _)| format!("--skip pattern '{r}'")))
        .collect();
    for u in &unmatched {
        let names = c.family.linears().iter().map(|l| l.name).collect::<Vec<_>>().join(", ");
        let msg = format!("{u} matches no linear (names look like model.layers.0.{})", names.split(", ").next().unwrap_or(""));
        if o.allow_unmatched {
            ev.warn(&msg);
        } else {
            bail!("{msg}; linears are model.layers.N.{{{names}}} (--allow-unmatched makes this a warning)");
        }
    }
    if o.format == Format::Awq {
        // AutoAWQ's quantization_config has one bits / group_size for every module.
        let base = (o.bits, o.group_size);
        for (i, row) in plans.iter().enumerate() {
            for (spec, p) in c.family.linears().iter().zip(row) {
                if let Some(p) = p.filter(|p| (p.bits, p.group_size) != base) {
                    bail!(
                        "model.layers.{i}.{}: --format awq stores one bits / group size for every module ({}-bit g{}); this module is planned {}-bit g{} (AutoAWQ has no per-module override: use --format lowbit or gptq)",
                        spec.name,
                        base.0,
                        base.1,
                        p.bits,
                        p.group_size
                    );
                }
            }
        }
    }
    // (Quantizing only a table, every linear skipped, is a plan: `--skip '.*' --override 'lm_head=rtn:4'`.)
    if plans.iter().flatten().all(Option::is_none) && plan_tables(model, o)?.is_empty() {
        bail!("nothing to quantize: every linear is skipped or does not fit --format {}", o.format.name());
    }
    Ok(plans)
}

/// The packed modules of a plan (decoder linears and tables): prefix → `(out, in)`.
pub(crate) fn packed_modules(
    model: &Model,
    plans: &[Vec<Option<LinearPlan>>],
    tables: &[(&'static str, LinearPlan)],
) -> BTreeMap<String, (usize, usize)> {
    let specs = model.cfg.family.linears();
    let (v, d) = (model.cfg.vocab_size, model.cfg.hidden_size);
    let layers = plans.iter().enumerate().flat_map(|(i, row)| {
        specs
            .iter()
            .zip(row)
            .filter(|(_, p)| p.is_some())
            .map(move |(s, _)| (format!("model.layers.{i}.{}", s.name), model.linear_shape(s)))
    });
    tables.iter().map(|t| (t.0.to_string(), (v, d))).chain(layers).collect()
}

/// The token embedding and lm_head tables: kept in float unless an `--override` names them
/// (`embed_tokens=rtn:8`, `lm_head=rtn:6`), then stored in the lowbit layout.
pub const TABLES: [&str; 2] = ["model.embed_tokens", "lm_head"];

/// The plans of the stored tables an `--override` names (its pattern matches the table's name
/// and no decoder linear's), decided before any work. With tied
/// embeddings only `model.embed_tokens` is stored; an override of either name applies to it,
/// and two different ones are refused. Tables are quantized without calibration data (rtn,
/// statsq, shift), in the lowbit layout only.
pub fn plan_tables(model: &Model, o: &Options) -> Result<Vec<(&'static str, LinearPlan)>> {
    let c = &model.cfg;
    let fmt = o.format.name();
    let mut plans: Vec<(&'static str, LinearPlan, String)> = Vec::new();
    // An override names a table when its pattern matches the table and no decoder linear (so a
    // broad pattern such as '.*' keeps applying to the linears only).
    let linear_names: Vec<String> =
        (0..c.num_layers).flat_map(|i| c.family.linears().iter().map(move |l| format!("model.layers.{i}.{}", l.name))).collect();
    let names_table = |v: &&Override, name: &str| v.pattern.is_match(name) && !linear_names.iter().any(|l| v.pattern.is_match(l));
    for name in TABLES {
        let Some(v) = o.overrides.iter().rfind(|v| names_table(v, name)) else { continue };
        let by = format!("{name} (--override '{}')", v.pattern);
        match o.format {
            Format::Lowbit => {}
            Format::Gguf => bail!("{by}: --format gguf sets the table types with --token-embedding-type / --output-tensor-type"),
            _ => bail!(
                "{by}: --format {fmt} keeps the token embedding and lm_head in float (its loaders read no packed tables); use --format lowbit"
            ),
        }
        if v.ty.is_some() {
            bail!("{by}: a GGUF block type for a table needs --format gguf (--token-embedding-type / --output-tensor-type)");
        }
        if v.method.needs(o).any() || v.method.is_vq() {
            bail!(
                "{by}: --method {} needs calibration statistics of a linear's inputs; tables are quantized with rtn, statsq or shift",
                v.method.name()
            );
        }
        let p = LinearPlan { method: v.method, bits: v.bits, group_size: v.group_size.unwrap_or(o.group_size), ty: None };
        if let Err(e) = Format::Lowbit.check(&p.want(o), c.vocab_size, c.hidden_size) {
            bail!("{by}: {e}");
        }
        plans.push((name, p, by));
    }
    if c.tie_word_embeddings {
        // One stored table serves both.
        if let [(_, a, x), (_, b, y)] = plans.as_slice() {
            if a != b {
                bail!("{x} and {y}: the embeddings are tied (stored once), so both overrides must give the same plan");
            }
        }
        plans.truncate(1);
        if let Some(p) = plans.first_mut() {
            p.0 = TABLES[0];
        }
    }
    Ok(plans.into_iter().map(|(n, p, _)| (n, p)).collect())
}
