//! The layer loop of `lowbit quantize`: each decoder layer is loaded, run over the calibration
//! activations for its statistics, quantized with its plans, packed, and (with a checkpoint)
//! written out before the next; the checks that every weight read is finite.

use super::output::tail_tensors;
use super::{pack, quantize_layer, Format, LinearPlan, Options};
use crate::arch::Input;
use crate::checkpoint;
use crate::escape;
use crate::events::Events;
use crate::model::{LayerWeights, Model};
use crate::pack::{LowbitModuleMeta, LowbitQuantConfig, Packed};
use crate::quant::{gguf as qgguf, QTensor};
use crate::st_write::OutTensor;
use crate::stats::{InputStats, Needs};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::time::Instant;

/// Run decoder layer `lw` over the calibration hidden states `h` in place, gathering the
/// statistics `needs` of every linear input. Returns them and the forward seconds (hooks excluded).
pub(crate) fn calibrate_layer(
    model: &Model,
    lw: &LayerWeights,
    h: &mut [f32],
    seqlen: usize,
    needs: Needs,
) -> Result<(HashMap<Input, InputStats>, f64)> {
    let c = &model.cfg;
    let rows = h.len() / c.hidden_size;
    let mut stats: HashMap<Input, InputStats> = HashMap::new();
    let dims =
        [(Input::AttnIn, c.hidden_size), (Input::AttnOut, c.q_dim()), (Input::MlpIn, c.hidden_size), (Input::MlpAct, c.intermediate_size)];
    for (inp, d) in dims {
        stats.insert(inp, InputStats::new(d, rows, seqlen, needs));
    }
    let (t, mut in_hooks) = (Instant::now(), 0f64);
    // The first linear input that is not finite (finite weights can still overflow the hidden
    // state, e.g. through a huge norm weight): named in the error, with the layer.
    let mut non_finite: Option<(Input, f32)> = None;
    model.forward_layer(lw, h, seqlen, &mut |inp, x, rows| {
        let t = Instant::now();
        if non_finite.is_none() {
            non_finite = x.iter().find(|v| !v.is_finite()).map(|&v| (inp, v));
        }
        stats.get_mut(&inp).expect("every input has stats").observe(x, rows);
        in_hooks += t.elapsed().as_secs_f64();
    });
    if let Some((inp, v)) = non_finite {
        let readers: Vec<&str> = c.family.linears().iter().filter(|l| l.input == inp).map(|l| l.name).collect();
        bail!(
            "model.layers.{}: non-finite activation {v} in the input of {} during the calibration forward pass",
            lw.index,
            readers.join(", ")
        );
    }
    check_finite(h, &format!("model.layers.{}: output activations", lw.index))?;
    Ok((stats, t.elapsed().as_secs_f64() - in_hooks))
}

/// One layer's output for one set of options.
pub(crate) struct LayerOut {
    pub tensors: Vec<OutTensor>,
    pub modules: Vec<(String, LowbitModuleMeta)>,
    pub vq_modules: Vec<(String, crate::pack::vq::VqModuleMeta)>,
    pub bits: u64,
    pub weights: u64,
    /// The quantized linears (table order), for propagation.
    pub quantized: Vec<Option<QTensor>>,
    /// Seconds in AWQ's scale and clip searches.
    pub search_seconds: f64,
    /// Warnings about the packed layer, for the caller's [`Events`].
    pub warnings: Vec<String>,
}

/// Quantize and pack the linears of layer `lw` (modified in place by AWQ-style transforms), plus
/// its norms and biases.
pub(crate) fn layer_out(
    o: &Options,
    model: &Model,
    lw: &mut LayerWeights,
    plan: &[Option<LinearPlan>],
    stats: &HashMap<Input, InputStats>,
    layer_input: Option<(&[f32], usize)>,
    dry_run: bool,
) -> Result<LayerOut> {
    let c = &model.cfg;
    let fd = o.float_dtype;
    // --dry-run: GGUF block codes of a zero weight (their tensors do not depend on the values);
    // every other plan's tensors come from its layout's specs below.
    let mut search_seconds = 0.0;
    let qs: Vec<Option<QTensor>> = if dry_run {
        lw.linears
            .iter()
            .zip(plan)
            .map(|(l, p)| p.and_then(|p| p.ty).map(|t| QTensor::Gguf(qgguf::quantize(t, &vec![0.0; l.out * l.inn], l.out, l.inn, None))))
            .collect()
    } else {
        quantize_layer(o, model, lw, plan, stats, layer_input, &mut search_seconds)?
    };
    let p = format!("model.layers.{}", lw.index);
    let mut r = LayerOut {
        tensors: Vec::new(),
        modules: Vec::new(),
        vq_modules: Vec::new(),
        bits: 0,
        weights: 0,
        quantized: Vec::new(),
        search_seconds,
        warnings: Vec::new(),
    };
    for ((l, q), plan) in lw.linears.iter().zip(&qs).zip(plan) {
        let prefix = format!("{p}.{}", l.spec.name);
        match (q, plan) {
            (None, Some(pl)) if dry_run => {
                let specs = match pl.method.is_vq() {
                    true => crate::pack::vq::tensor_specs(&o.vptq, l.out, l.inn),
                    false => o.format.tensor_specs(&pl.want(o), l.out, l.inn),
                };
                for (suffix, dt, shape) in specs {
                    let n = crate::pack::spec_bytes(dt, &shape);
                    r.bits += 8 * n as u64;
                    r.tensors.push(OutTensor { name: format!("{prefix}.{suffix}"), dtype: dt, shape, data: vec![0; n] });
                }
                r.weights += (l.out * l.inn) as u64;
            }
            (Some(QTensor::Group(g)), Some(pl)) => {
                let packed = pack(o, g, &prefix)?;
                if let Packed::Gptq(gp) = &packed {
                    let n = gp.wrapped_zeros();
                    if n > 0 {
                        r.warnings.push(format!(
                            "{prefix}: {n} group(s) keep zero point 0 (an all-ones qzeros field): per-field v1 readers (AutoGPTQ, GPTQModel's dequantizer, lowbit) read them correctly, GPTQModel's word-wide v1→v2 conversion does not (docs/formats.md; --sym avoids zero points of 0)"
                        ));
                    }
                }
                r.bits += packed.storage_bits();
                r.weights += (g.out_features * g.in_features) as u64;
                if let Packed::Lowbit(lp) = &packed {
                    r.modules.push((prefix.clone(), lp.meta(pl.method.name())));
                }
                r.tensors.extend(packed.to_tensors(&prefix));
            }
            (Some(QTensor::Gguf(b)), Some(pl)) => {
                r.bits += b.storage_bits();
                r.weights += (b.rows * b.cols) as u64;
                if o.format == Format::Gguf {
                    r.tensors.push(crate::pack::gguf::to_tensor(b, &prefix));
                } else {
                    let g =
                        crate::pack::gguf::to_groupq(b).ok_or_else(|| anyhow!("{prefix}: {} codes do not fit lowbit's layout", b.ty))?;
                    let packed = pack(o, &g, &prefix)?;
                    if let Packed::Lowbit(lp) = &packed {
                        r.modules.push((prefix.clone(), lp.meta(pl.method.name())));
                    }
                    r.tensors.extend(packed.to_tensors(&prefix));
                }
            }
            (Some(QTensor::Vq(v)), Some(pl)) => {
                let packed = crate::pack::vq::VqPacked::pack(v).with_context(|| format!("{prefix}: cannot pack"))?;
                r.bits += packed.storage_bits();
                r.weights += (v.out_features * v.in_features) as u64;
                r.vq_modules.push((prefix.clone(), packed.meta(pl.method.name())));
                r.tensors.extend(packed.to_tensors(&prefix));
            }
            _ => r.tensors.push(OutTensor::float(format!("{prefix}.weight"), fd, vec![l.out, l.inn], &l.w)),
        }
        if let Some(b) = &l.bias {
            r.tensors.push(OutTensor::float(format!("{prefix}.bias"), fd, vec![b.len()], b));
        }
    }
    r.tensors.push(OutTensor::float(format!("{p}.input_layernorm.weight"), fd, vec![c.hidden_size], &lw.input_norm));
    r.tensors.push(OutTensor::float(format!("{p}.post_attention_layernorm.weight"), fd, vec![c.hidden_size], &lw.post_norm));
    for (n, w) in [("q_norm", &lw.q_norm), ("k_norm", &lw.k_norm)] {
        if let Some(w) = w {
            r.tensors.push(OutTensor::float(format!("{p}.self_attn.{n}.weight"), fd, vec![w.len()], w));
        }
    }
    r.quantized = qs;
    Ok(r)
}

/// The tensors outside the decoder layers (embeddings, final norm, lm_head) are finite: checked
/// before any work.
pub(crate) fn check_finite_tail(model: &Model) -> Result<()> {
    for n in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] {
        if n == "lm_head.weight" && model.cfg.tie_word_embeddings {
            continue;
        }
        let (info, bytes) = model.ck.raw(n)?;
        if let Some(i) = crate::weights::first_non_finite(info.dtype, bytes) {
            bail!("{}: tensor {n}: non-finite value at index {i}", escape::path(&model.ck.dir));
        }
        model.ck.release_pages();
    }
    Ok(())
}

/// One run's layer loop: the model, the options, the calibration tokens and the plans.
pub(crate) struct Run<'a> {
    pub model: &'a Model,
    pub o: &'a Options,
    /// Calibration tokens, `seqlen` per window (empty when no plan needs statistics).
    pub tokens: &'a [u32],
    pub seqlen: usize,
    /// Every decoder linear's plan, layer by layer ([`super::plan::plan_layers`]).
    pub plans: &'a [Vec<Option<LinearPlan>>],
    /// The packed tables ([`super::plan::plan_tables`]).
    pub tables: &'a [(&'static str, LinearPlan)],
    /// The statistics every plan together reads.
    pub needs: Needs,
    pub dry_run: bool,
}

/// What the layer loop produced: every output tensor, the lowbit metadata and the timings.
pub(crate) struct RunOut {
    pub tensors: Vec<OutTensor>,
    pub meta: LowbitQuantConfig,
    /// Seconds of the calibration forward pass (statistics excluded).
    pub forward_seconds: f64,
    /// Seconds in AWQ's scale and clip searches.
    pub search_seconds: f64,
}

impl Run<'_> {
    /// Quantize every decoder layer in order (from `resume`'s next layer when given), writing
    /// each to the checkpoint `ckpt` when there is one, then the tables and the tail.
    pub(crate) fn layers(
        &self,
        mut ckpt: Option<&mut checkpoint::Checkpointer>,
        resume: Option<checkpoint::State>,
        ev: &mut dyn Events,
    ) -> Result<RunOut> {
        let Run { model, o, tokens, seqlen, plans, tables, needs, dry_run } = *self;
        let c = &model.cfg;
        let mut out: Vec<OutTensor> = Vec::new();
        let (start, mut h, mut meta, mut lin_bits, mut lin_weights, mut fwd, mut search) = match resume {
            Some(st) => {
                let ck = ckpt.as_deref().expect("resume needs a checkpoint directory");
                let h = if seqlen > 0 { ck.read_hidden(tokens.len() * c.hidden_size)? } else { Vec::new() };
                ev.note(&format!("resuming after layer {} of {}", st.layers_done, c.num_layers));
                (st.layers_done, h, st.meta, st.lin_bits, st.lin_weights, st.forward_seconds, st.search_seconds)
            }
            None => {
                let h = if seqlen > 0 && !dry_run { model.embed(tokens)? } else { Vec::new() };
                (0, h, LowbitQuantConfig::default(), 0u64, 0u64, 0f64, 0f64)
            }
        };
        for (i, plan) in plans.iter().enumerate().skip(start) {
            ev.progress(i, c.num_layers, "quantizing");
            let mut lw = model.load_layer(i)?;
            check_finite_layer(&lw)?;
            // GPTQ-style methods feed the next layer the quantized layer's outputs: keep the input.
            let calibrate = seqlen > 0 && !dry_run;
            let propagate = calibrate && !o.propagate_fp && plan.iter().flatten().any(|p| p.method.propagates_quantized());
            let sequential = calibrate && o.true_sequential && plan.iter().flatten().any(|p| p.method.needs(o).hessian);
            let h_in = if propagate || sequential { Some(h.clone()) } else { None };
            let stats = if calibrate {
                let (st, t) = calibrate_layer(model, &lw, &mut h, seqlen, needs)?;
                fwd += t;
                st
            } else {
                HashMap::new()
            };
            let r = layer_out(o, model, &mut lw, plan, &stats, h_in.as_deref().map(|x| (x, seqlen)), dry_run)?;
            for w in &r.warnings {
                ev.warn(w);
            }
            if let Some(mut hi) = h_in.filter(|_| propagate) {
                // Re-run the layer with every quantized linear dequantized.
                for (l, q) in lw.linears.iter_mut().zip(&r.quantized) {
                    if let Some(q) = q {
                        l.w = q.dequantize();
                    }
                }
                model.forward_layer(&lw, &mut hi, seqlen, &mut |_, _, _| {});
                h = hi;
            }
            lin_bits += r.bits;
            lin_weights += r.weights;
            search += r.search_seconds;
            meta.modules.extend(r.modules);
            meta.vq_modules.extend(r.vq_modules);
            model.ck.release_pages();
            if let Some(ck) = ckpt.as_deref_mut() {
                ck.write_layer(
                    i,
                    &r.tensors,
                    &h,
                    &checkpoint::State {
                        layers_done: i + 1,
                        meta: meta.clone(),
                        lin_bits,
                        lin_weights,
                        forward_seconds: fwd,
                        search_seconds: search,
                    },
                )?;
            } else {
                out.extend(r.tensors);
            }
        }
        drop(h);
        ev.progress(c.num_layers, c.num_layers, "writing");
        // With checkpoints the packed layers live on disk during the run and are read back once here.
        if let Some(ck) = ckpt.as_deref() {
            for i in 0..c.num_layers {
                out.extend(ck.read_layer(i)?);
            }
        }
        let tail = tail_tensors(model, o, tables, dry_run)?;
        out.extend(tail.tensors);
        meta.modules.extend(tail.meta);
        Ok(RunOut { tensors: out, meta, forward_seconds: fwd, search_seconds: search })
    }
}

fn check_finite(v: &[f32], what: &str) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what}: non-finite value {} at index {i}", v[i]);
    }
    Ok(())
}

/// Every weight of a layer read from the model is finite: linears, biases and norms.
pub(crate) fn check_finite_layer(lw: &LayerWeights) -> Result<()> {
    let p = format!("model.layers.{}", lw.index);
    for l in &lw.linears {
        check_finite(&l.w, &format!("{p}.{}.weight", l.spec.name))?;
        if let Some(b) = &l.bias {
            check_finite(b, &format!("{p}.{}.bias", l.spec.name))?;
        }
    }
    check_finite(&lw.input_norm, &format!("{p}.input_layernorm.weight"))?;
    check_finite(&lw.post_norm, &format!("{p}.post_attention_layernorm.weight"))
}
