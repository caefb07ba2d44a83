//! The sensitivity pass of `--target-bpw`: every linear's and every stored table's predicted
//! loss under every candidate setting, measured on the calibration activations (the unit and
//! its checks: docs/budget.md).

use super::Setting;
use crate::events::Events;
use crate::model::Model;
use crate::quant::{gptq, rtn};
use crate::quantize::{calibrate_layer, Method, Options};
use crate::stats::Needs;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Measured losses of a stored table for each of its settings (`None`: kept in float, loss 0).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TableSensitivity {
    pub name: String,
    pub shape: (usize, usize),
    pub settings: Vec<Option<Setting>>,
    pub loss: Vec<f64>,
}

/// Measured losses of every linear (layer order, then table order) for every candidate.
#[derive(Serialize, serde::Deserialize)]
pub struct Sensitivity {
    pub names: Vec<String>,
    pub shapes: Vec<(usize, usize)>,
    pub candidates: Vec<Setting>,
    /// `[linear][candidate]` predicted loss.
    pub loss: Vec<Vec<f64>>,
    /// The stored tables' losses (empty with `--float-tables`).
    #[serde(default)]
    pub tables: Vec<TableSensitivity>,
    pub seconds: f64,
    /// Digest of everything the losses depend on (model files, calibration tokens, options).
    #[serde(default)]
    pub key: String,
}

/// Quantize one linear alone with a candidate (dequantized).
fn candidate_weight(o: &Options, s: Setting, w: &[f32], out: usize, inn: usize, h: &[f64]) -> Result<Vec<f32>> {
    Ok(match s.method {
        Method::Rtn => rtn::quantize(w, out, inn, s.bits, s.group_size, o.sym).dequantize(),
        Method::Gptq => {
            let mut cfg = gptq::GptqConfig::new(s.bits, s.group_size, o.sym);
            cfg.act_order = o.act_order;
            cfg.static_groups = o.static_groups;
            cfg.report_baseline = false;
            gptq::gptq(w, out, inn, h, &cfg)?.0.dequantize()
        }
        m => bail!("--target-bpw: method {} is not planned (rtn or gptq)", m.name()),
    })
}

/// The sensitivity pass over calibration tokens `tokens` (windows of `seqlen`).
pub fn sensitivities(
    model: &Model,
    o: &Options,
    candidates: &[Setting],
    tokens: &[u32],
    seqlen: usize,
    ev: &mut dyn Events,
) -> Result<Sensitivity> {
    let t0 = std::time::Instant::now();
    let c = &model.cfg;
    let needs = Needs { hessian: true, window_tokens: o.search_tokens, ..Needs::default() };
    let mut h = model.embed(tokens)?;
    let (mut names, mut shapes, mut loss) = (Vec::new(), Vec::new(), Vec::new());
    // The windows the blocks are re-run on (and lm_head's loss is measured on).
    let keep = crate::stats::kept_windows(tokens.len() / seqlen, seqlen, o.search_tokens);
    let d = c.hidden_size;
    for i in 0..c.num_layers {
        ev.progress(i, c.num_layers, "measuring sensitivities");
        let lw = model.load_layer(i)?;
        crate::quantize::check_finite_layer(&lw)?;
        // The residual stream entering the layer, rows of the windows the blocks are re-run on.
        let h_win = kept_rows(&h, &keep, seqlen * d);
        let (stats, _) = calibrate_layer(model, &lw, &mut h, seqlen, needs)?;
        let attn_x = &stats[&crate::arch::Input::AttnIn];
        let mlp_x = &stats[&crate::arch::Input::MlpIn];
        let run = |l: &crate::model::LayerWeights, attn: bool| {
            if attn {
                model.attention_output(l, &attn_x.windows, attn_x.seq_len)
            } else {
                model.mlp_output(l, &mlp_x.windows)
            }
        };
        let (y_attn, y_mlp) = (run(&lw, true), run(&lw, false));
        // Per-token squared norms of the residual stream at each block's input: the layer input
        // for the attention block, plus the attention output for the MLP.
        let sq = |v: &[f32]| sq(v).max(f64::MIN_POSITIVE);
        let r_attn: Vec<f64> = h_win.chunks(d).map(sq).collect();
        let r_mlp: Vec<f64> =
            h_win.chunks(d).zip(y_attn.chunks(d)).map(|(a, b)| sq(&a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<f32>>())).collect();
        debug_assert_eq!(r_attn.len() * d, y_attn.len());
        let mut hessians: HashMap<crate::arch::Input, Vec<f64>> = HashMap::new();
        for (k, l) in lw.linears.iter().enumerate() {
            let attn = l.spec.name.starts_with("self_attn.");
            let hs = hessians.entry(l.spec.input).or_insert_with(|| stats[&l.spec.input].hessian());
            let y = if attn { &y_attn } else { &y_mlp };
            let mut row = Vec::new();
            let mut scratch = lw.clone();
            for &s in candidates {
                let prefix = format!("model.layers.{i}.{}", l.spec.name);
                scratch.linears[k].w = candidate_weight(o, s, &l.w, l.out, l.inn, hs)
                    .with_context(|| format!("{prefix}: {}:{}:{}", s.method.name(), s.bits, s.group_size))?;
                let yq = run(&scratch, attn);
                // Mean over tokens of ‖Δy_t‖² / ‖r_t‖²: each token's change relative to its own
                // residual stream, which the next RMSNorm divides by (a few tokens with massive
                // activations would otherwise set the scale of every layer).
                let r = if attn { &r_attn } else { &r_mlp };
                let rel = y
                    .chunks(d)
                    .zip(yq.chunks(d))
                    .zip(r)
                    .map(|((a, b), r)| sq(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f32>>()) / r)
                    .sum::<f64>();
                row.push(rel / r.len().max(1) as f64);
            }
            names.push(format!("model.layers.{i}.{}", l.spec.name));
            shapes.push((l.out, l.inn));
            loss.push(row);
        }
        model.ck.release_pages();
    }
    let tables = if o.float_tables {
        Vec::new()
    } else {
        ev.progress(c.num_layers, c.num_layers, "measuring table sensitivities");
        table_sensitivities(model, o, candidates, tokens, &kept_rows(&h, &keep, seqlen * d))?
    };
    Ok(Sensitivity {
        names,
        shapes,
        candidates: candidates.to_vec(),
        loss,
        tables,
        seconds: t0.elapsed().as_secs_f64(),
        key: String::new(),
    })
}

/// Σ x² in f64.
fn sq(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum()
}

/// The rows of `h` (windows of `window` values) whose window is kept.
fn kept_rows(h: &[f32], keep: &[bool], window: usize) -> Vec<f32> {
    keep.iter().enumerate().filter(|(_, k)| **k).flat_map(|(w, _)| h[w * window..(w + 1) * window].iter().copied()).collect()
}

/// The stored tables and the settings the plan chooses among for them: float, then rtn at each
/// candidate's bits × group (once each).
pub(super) fn table_settings(model: &Model, o: &Options, candidates: &[Setting]) -> Vec<(&'static str, Vec<Option<Setting>>)> {
    if o.float_tables {
        return Vec::new();
    }
    let mut settings = vec![None];
    for s in candidates {
        let t = Some(Setting { method: Method::Rtn, bits: s.bits, group_size: s.group_size });
        if !settings.contains(&t) {
            settings.push(t);
        }
    }
    let names: &[&'static str] = if model.cfg.tie_word_embeddings { &crate::quantize::TABLES[..1] } else { &crate::quantize::TABLES };
    names.iter().map(|n| (*n, settings.clone())).collect()
}

/// Rows of logits computed at a time in [`table_sensitivities`] (a `rows × vocab` block).
const LOGIT_ROWS: usize = 256;

/// Losses of quantizing the stored tables (module doc): the embedding's over every calibration
/// token, lm_head's over `x`, the final hidden states of the windows the blocks are re-run on
/// (`--search-tokens`).
fn table_sensitivities(model: &Model, o: &Options, candidates: &[Setting], tokens: &[u32], x: &[f32]) -> Result<Vec<TableSensitivity>> {
    let c = &model.cfg;
    let (v, d) = (c.vocab_size, c.hidden_size);
    let tied = c.tie_word_embeddings;
    // How often each vocabulary row is read as an input embedding.
    let mut count = vec![0u64; v];
    for &t in tokens {
        count[t as usize] += 1;
    }
    // The final normed hidden states.
    let norm = model.ck.f32_shaped("model.norm.weight", &[d])?;
    let xn = crate::linalg::rms_norm(x, &norm, c.rms_norm_eps);
    let rows = xn.len() / d;
    let centred = |z: &mut [f32]| {
        for r in z.chunks_mut(v) {
            let m = (r.iter().map(|x| *x as f64).sum::<f64>() / v as f64) as f32;
            r.iter_mut().for_each(|x| *x -= m);
        }
    };
    // G = ‖C·W·diag(g)‖²_F of table `w` (C centres over the vocabulary, g the final norm's
    // weight): the logits' expected ‖Δz‖² for a residual-stream change of relative size 1 in a
    // random direction.
    let gain_of = |w: &[f32]| -> f64 {
        let mut mean = vec![0f64; d];
        for r in w.chunks(d) {
            mean.iter_mut().zip(r).for_each(|(m, x)| *m += *x as f64 / v as f64);
        }
        w.chunks(d)
            .map(|r| r.iter().zip(&mean).zip(&norm).map(|((x, m), g)| ((*x as f64 - m) * *g as f64).powi(2)).sum::<f64>())
            .sum::<f64>()
            .max(f64::MIN_POSITIVE)
    };
    // The mean over the rows of ‖Δz_t‖² / G for the weight change `dw`: the lm_head error
    // expressed as the relative residual perturbation that would cost as much at the output,
    // the unit of the linears' losses.
    let logit_loss = |dw: &[f32], gain: f64| -> f64 {
        let mut total = 0.0;
        for xb in xn.chunks(LOGIT_ROWS * d) {
            let n = xb.len() / d;
            let mut dz = crate::linalg::matmul_bt(xb, n, d, dw, v);
            centred(&mut dz);
            total += dz.chunks(v).map(sq).sum::<f64>() / gain;
        }
        total / rows.max(1) as f64
    };
    let mut out = Vec::new();
    for (name, settings) in table_settings(model, o, candidates) {
        let w = model.ck.f32_shaped(&format!("{name}.weight"), &[v, d])?;
        let emb = name == crate::quantize::TABLES[0];
        let gain = if !emb || tied { gain_of(&w) } else { 0.0 };
        let mut loss = Vec::new();
        for s in &settings {
            let Some(s) = s else {
                loss.push(0.0);
                continue;
            };
            let q = rtn::quantize(&w, v, d, s.bits, s.group_size, o.sym).dequantize();
            let dw: Vec<f32> = q.iter().zip(&w).map(|(a, b)| a - b).collect();
            let mut l = 0.0;
            if emb {
                // Mean over calibration tokens of the embedding row's relative change.
                l += (0..v)
                    .filter(|&r| count[r] > 0)
                    .map(|r| count[r] as f64 * sq(&dw[r * d..(r + 1) * d]) / sq(&w[r * d..(r + 1) * d]).max(f64::MIN_POSITIVE))
                    .sum::<f64>()
                    / tokens.len().max(1) as f64;
            }
            if !emb || tied {
                l += logit_loss(&dw, gain);
            }
            loss.push(l);
        }
        out.push(TableSensitivity { name: name.to_string(), shape: (v, d), settings, loss });
        model.ck.release_pages();
    }
    Ok(out)
}

/// What a sensitivity cache must have been measured on: every byte of the model's config and
/// weights, the calibration tokens, the candidates and the options the measurement reads.
pub(super) fn cache_key(model_dir: &Path, o: &Options, cands: &[Setting], tokens: &[u32]) -> Result<String> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    // The version of the loss definition (per-token relative block-output error).
    put(format!("{}|sensitivity v3", env!("CARGO_PKG_VERSION")).as_bytes());
    put(&std::fs::read(model_dir.join("config.json")).with_context(|| format!("{}: cannot read config.json", model_dir.display()))?);
    let ck = crate::weights::Checkpoint::open(model_dir)?;
    for (_, bytes) in ck.files() {
        put(bytes);
        ck.release_pages();
    }
    put(&tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>());
    put(format!("{cands:?}|{}|{}|{}|{}|{:?}|{}", o.sym, o.act_order, o.static_groups, o.search_tokens, o.float_dtype, o.float_tables)
        .as_bytes());
    Ok(format!("{:032x}", h.digest128()))
}
