//! `lowbit sweep`'s quantize phase: several option sets (combinations) quantized from one
//! calibration pass. Statistics are collected once per layer on the float model's activations
//! (AutoAWQ's scheme, and `--propagate-fp` for GPTQ/VPTQ), every combination quantizes that layer
//! from them, and its packed layer goes to its own partial directory at once; at the end each
//! combination is written as a lowbit output of its own (manifest included) at its `o.out`.

use super::output::{tail_tensors, write_output};
use super::plan::{plan_layers, plan_tables};
use super::{calibrate_layer, check_finite_layer, layer_out, LinearPlan, Options};
use crate::checkpoint::Checkpointer;
use crate::events::Events;
use crate::model::Model;
use crate::pack::LowbitQuantConfig;
use crate::st_write::check_finite_output;
use crate::stats::Needs;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

/// One combination: its options (`out`: where it is written), plans and partial directory.
pub(crate) struct Combo {
    pub name: String,
    pub o: Options,
    plans: Vec<Vec<Option<LinearPlan>>>,
    tables: Vec<(&'static str, LinearPlan)>,
    ckpt: Checkpointer,
    meta: LowbitQuantConfig,
    /// Seconds spent quantizing and writing this combination (the shared calibration excluded).
    pub seconds: f64,
}

impl Combo {
    /// Plan `o` on `model`; the packed layers wait in the new directory `dir` until written.
    pub(crate) fn new(model: &Model, name: String, o: Options, dir: &Path, ev: &mut dyn Events) -> Result<Combo> {
        let plans = plan_layers(model, &o, ev)?;
        let tables = plan_tables(model, &o)?;
        std::fs::create_dir(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(Combo { name, o, plans, tables, ckpt: Checkpointer::new(dir, ""), meta: Default::default(), seconds: 0.0 })
    }
}

/// What the shared pass measured.
pub(crate) struct Shared {
    pub calib_tokens: usize,
    /// Seconds of the shared calibration pass (float forward and statistics).
    pub calibration_seconds: f64,
}

/// Quantize every combination from one calibration pass (calibration settings from `base`) and
/// write each to its `o.out`.
pub(crate) fn quantize_combos(
    model_dir: &Path,
    model: &Model,
    tok: &Tokenizer,
    base: &Options,
    combos: &mut [Combo],
    ev: &mut dyn Events,
) -> Result<Shared> {
    let c = &model.cfg;
    let needs =
        combos.iter().flat_map(|k| k.plans.iter().flatten().flatten().map(|p| p.method.needs(&k.o))).fold(Needs::default(), Needs::union);
    let (tokens, seqlen) = match (&base.calib, needs.any()) {
        (Some(p), true) => {
            crate::calib::check_budget(base.calib_samples, base.calib_seqlen, c.hidden_size)?;
            (crate::calib::sample_calib(tok, p, base.calib_samples, base.calib_seqlen, base.seed, ev)?, base.calib_seqlen)
        }
        _ => (Vec::new(), 0),
    };

    let t = Instant::now();
    let mut h = if seqlen > 0 { model.embed(&tokens)? } else { Vec::new() };
    let mut calibration_seconds = t.elapsed().as_secs_f64();
    for i in 0..c.num_layers {
        ev.progress(i, c.num_layers, "quantizing");
        let t = Instant::now();
        let lw = model.load_layer(i)?;
        check_finite_layer(&lw)?;
        // --true-sequential re-runs the layer from its (float) input.
        let h_in = (seqlen > 0 && base.true_sequential).then(|| h.clone());
        let stats = if seqlen > 0 { calibrate_layer(model, &lw, &mut h, seqlen, needs)?.0 } else { Default::default() };
        calibration_seconds += t.elapsed().as_secs_f64();
        for k in combos.iter_mut() {
            let t = Instant::now();
            let mut l = lw.clone();
            let r = layer_out(&k.o, model, &mut l, &k.plans[i], &stats, h_in.as_deref().map(|x| (x, seqlen)), false)
                .with_context(|| k.name.clone())?;
            for w in &r.warnings {
                ev.warn(w);
            }
            k.ckpt.write_tensors(i, &r.tensors)?;
            k.meta.modules.extend(r.modules);
            k.meta.vq_modules.extend(r.vq_modules);
            k.seconds += t.elapsed().as_secs_f64();
        }
        model.ck.release_pages();
    }
    drop(h);
    ev.progress(c.num_layers, c.num_layers, "writing");
    for k in combos.iter_mut() {
        let t = Instant::now();
        let mut tensors = Vec::new();
        for i in 0..c.num_layers {
            tensors.extend(k.ckpt.read_layer(i)?);
        }
        let tail = tail_tensors(model, &k.o, &k.tables, false)?;
        tensors.extend(tail.tensors);
        k.meta.modules.extend(tail.meta);
        check_finite_output(&tensors).with_context(|| k.name.clone())?;
        write_output(model_dir, model, &k.o, &k.ckpt.dir, &tensors, &k.meta, &k.plans)?;
        // Each checkpoint is a lowbit output of its own (manifest included), moved into place
        // inside the sweep's temporary directory.
        crate::outdir::write_manifest(&k.ckpt.dir, "quantize")?;
        std::fs::rename(&k.ckpt.dir, &k.o.out).with_context(|| format!("{}: cannot move into place", k.o.out.display()))?;
        k.seconds += t.elapsed().as_secs_f64();
    }
    Ok(Shared { calib_tokens: tokens.len(), calibration_seconds })
}
