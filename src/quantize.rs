//! `lowbit quantize`: stream calibration activations through the model one decoder layer at a
//! time, quantize every linear of the layer with the chosen method, pack, and write an HF-style
//! directory (atomically: everything goes to a temporary directory renamed at the end).

use crate::arch::Input;
use crate::model::{LayerWeights, Model};
use crate::pack::{AwqPacked, GptqPacked, LowbitModuleMeta, LowbitQuantConfig, Packed};
use crate::quant::{awq, rtn, GroupQ, QTensor};
use crate::st_write::{write_atomic, write_safetensors, OutTensor};
use crate::stats::{InputStats, Needs};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Rtn,
    Awq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Awq => "awq",
        }
    }
    fn needs(self, o: &Options) -> Needs {
        match self {
            Method::Rtn => Needs::default(),
            Method::Awq => Needs { mean_abs: true, hessian: false, sample_rows: o.search_tokens },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// lowbit's own layout (any method, 2..8 bits); docs/formats.md.
    Lowbit,
    /// AutoAWQ GEMM (4-bit), loadable by transformers and vLLM.
    Awq,
    /// GPTQ v1 (2/3/4/8-bit).
    Gptq,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub method: Method,
    pub bits: u8,
    pub group_size: usize,
    pub sym: bool,
    pub calib: Option<PathBuf>,
    pub calib_samples: usize,
    pub calib_seqlen: usize,
    pub seed: u64,
    pub format: Format,
    pub out: PathBuf,
    pub force: bool,
    /// Float type of embeddings, norms and lm_head in the output.
    pub float_dtype: Dtype,
    /// Calibration rows kept per input for AWQ's searches.
    pub search_tokens: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub out: String,
    pub method: String,
    pub format: String,
    pub bits: u8,
    pub group_size: usize,
    pub seconds: f64,
    pub calib_tokens: usize,
    /// Seconds spent in the calibration forward pass itself (one FP forward over the calibration
    /// tokens, statistics excluded): the yardstick of the benchmark ratios.
    pub forward_seconds: f64,
    pub bytes: u64,
    /// Stored bits per weight of the quantized linears (scales, zeros and indices included).
    pub linear_bpw: f64,
    /// Stored bits per parameter of the whole checkpoint.
    pub model_bpw: f64,
    pub quantized_linears: usize,
    pub peak_rss_bytes: Option<u64>,
    pub dry_run: bool,
}

/// Validate options before any work.
pub fn validate(o: &Options) -> Result<()> {
    if !(2..=8).contains(&o.bits) {
        bail!("--bits must be between 2 and 8 (got {})", o.bits);
    }
    if o.group_size == 0 {
        bail!("--group-size must be at least 1");
    }
    if o.format == Format::Awq && o.bits != 4 {
        bail!("--format awq is the AutoAWQ GEMM layout, which is 4-bit only (got --bits {})", o.bits);
    }
    if o.format == Format::Gptq && ![2, 3, 4, 8].contains(&o.bits) {
        bail!("--format gptq supports 2, 3, 4 or 8 bits (got --bits {})", o.bits);
    }
    if o.method != Method::Rtn && o.calib.is_none() {
        bail!("--method {} needs --calib FILE (calibration text)", o.method.name());
    }
    Ok(())
}

fn pack(o: &Options, q: &GroupQ, prefix: &str) -> Result<Packed> {
    let layout = match o.format {
        Format::Lowbit => crate::pack::Layout::Lowbit,
        Format::Awq => crate::pack::Layout::Awq,
        Format::Gptq => crate::pack::Layout::Gptq,
    };
    Packed::pack(layout, q).with_context(|| format!("{prefix}: cannot pack"))
}

/// Quantize one layer's linears (after the method's transforms of `lw`).
fn quantize_layer(o: &Options, model: &Model, lw: &mut LayerWeights, stats: &HashMap<Input, InputStats>) -> Result<Vec<(String, QTensor)>> {
    if o.method == Method::Awq {
        let cfg = awq::AwqConfig::new(o.bits, o.group_size, o.sym);
        let gqa = model.cfg.num_kv_heads != model.cfg.num_heads;
        for g in model.cfg.family.scale_groups(gqa) {
            let st = &stats[&g.input];
            let ws: Vec<&[f32]> = g.linears.iter().map(|n| lw.get(n).w.as_slice()).collect();
            let inn = st.dim;
            let (s, _loss) = awq::search_scale(&cfg, &st.sample, st.sample_rows(), &st.mean_abs(), &ws, inn);
            awq::apply_scale(lw, &g, &s);
            if cfg.clip {
                // The group's inputs are now x / s.
                let mut x = st.sample.clone();
                x.chunks_mut(inn).for_each(|r| r.iter_mut().zip(&s).for_each(|(v, s)| *v /= s));
                let n = st.sample_rows().min(512);
                for name in g.linears.iter().filter(|n| awq::clips(n)) {
                    awq::clip(&cfg, &mut lw.get_mut(name).w, inn, &x[..n * inn], n);
                }
            }
        }
    }
    Ok(lw.linears.iter().map(|l| (l.spec.name.to_string(), QTensor::Group(rtn::quantize(&l.w, l.out, l.inn, o.bits, o.group_size, o.sym)))).collect())
}

/// The temporary directory a run writes into, beside the output.
pub fn partial_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.lowbit-partial"))
}

pub fn quantize(model_dir: &Path, o: &Options, dry_run: bool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Summary> {
    validate(o)?;
    let t0 = Instant::now();
    let model = Model::open_dense(model_dir)?;
    if model.cfg.raw.get("quantization_config").is_some() {
        bail!("{}: already quantized (has quantization_config)", model_dir.display());
    }
    if !dry_run && o.out.exists() && !o.force {
        bail!("{}: output directory exists (use --force to replace it)", o.out.display());
    }
    let tok = Tokenizer::from_dir(model_dir)?;
    let c = model.cfg.clone();
    // Linears the layout cannot hold are kept in float (and listed in modules_to_not_convert),
    // decided before any work.
    let mut keep_float = Vec::new();
    for spec in c.family.linears() {
        let (out, inn) = model.linear_shape(spec);
        let probe = rtn::quantize(&vec![0.0; out * inn], out, inn, o.bits, o.group_size, o.sym);
        if let Err(e) = pack(o, &probe, &format!("model.layers.*.{}", spec.name)) {
            eprintln!("warning: {e:#}; keeping {} unquantized", spec.name);
            keep_float.push(spec.name);
        }
    }
    if keep_float.len() == c.family.linears().len() {
        bail!("--format {:?}: no linear of this model fits the layout", o.format);
    }
    let (tokens, seqlen) = match (&o.calib, o.method.needs(o)) {
        (Some(p), n) if n.mean_abs || n.hessian || n.sample_rows > 0 => {
            (crate::calib::sample_tokens(&tok, p, o.calib_samples, o.calib_seqlen, o.seed)?, o.calib_seqlen)
        }
        _ => (Vec::new(), 0),
    };
    let tmp = partial_dir(&o.out);
    if !dry_run {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove stale partial output", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    }
    let result = run(&model, o, &tokens, seqlen, &keep_float, dry_run, progress);
    let (tensors, meta, lin_bits, lin_weights, forward_seconds) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Whole-checkpoint accounting.
    let bytes: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    let params: u64 = lin_weights + tensors.iter().filter(|t| !is_packed_part(&t.name)).map(|t| t.shape.iter().product::<usize>() as u64).sum::<u64>();
    let summary = Summary {
        out: o.out.display().to_string(),
        method: o.method.name().into(),
        format: format!("{:?}", o.format).to_lowercase(),
        bits: o.bits,
        group_size: o.group_size,
        seconds: t0.elapsed().as_secs_f64(),
        calib_tokens: tokens.len(),
        forward_seconds,
        bytes,
        linear_bpw: lin_bits as f64 / lin_weights.max(1) as f64,
        model_bpw: 8.0 * bytes as f64 / params.max(1) as f64,
        quantized_linears: meta.modules.len(),
        peak_rss_bytes: crate::mem::peak_rss_bytes(),
        dry_run,
    };
    if dry_run {
        return Ok(summary);
    }
    let finish = || -> Result<()> {
        write_safetensors(&tmp.join("model.safetensors"), &tensors, None)?;
        let mut cfg = model.cfg.raw.clone();
        cfg["quantization_config"] = match o.format {
            Format::Lowbit => serde_json::to_value(&meta)?,
            Format::Awq => AwqPacked::quantization_config(o.group_size),
            Format::Gptq => GptqPacked::quantization_config(o.bits, o.group_size, false, o.sym),
        };
        if !keep_float.is_empty() {
            let names: Vec<&str> = keep_float.iter().map(|n| n.rsplit('.').next().unwrap_or(n)).collect();
            cfg["quantization_config"]["modules_to_not_convert"] = names.into();
        }
        cfg["torch_dtype"] = format!("{:?}", o.float_dtype).to_lowercase().replace("f16", "float16").replace("bf16", "bfloat16").replace("f32", "float32").into();
        write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
            let src = model_dir.join(f);
            if src.exists() {
                std::fs::copy(&src, tmp.join(f)).with_context(|| format!("{}: cannot copy", src.display()))?;
            }
        }
        if o.out.exists() {
            std::fs::remove_dir_all(&o.out).with_context(|| format!("{}: cannot replace", o.out.display()))?;
        }
        std::fs::rename(&tmp, &o.out).with_context(|| format!("{}: cannot move output into place", o.out.display()))?;
        Ok(())
    };
    finish().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    Ok(summary)
}

fn is_packed_part(name: &str) -> bool {
    [".qweight", ".qzeros", ".scales", ".g_idx"].iter().any(|s| name.ends_with(s))
}

type RunOut = (Vec<OutTensor>, LowbitQuantConfig, u64, u64, f64);

fn run(model: &Model, o: &Options, tokens: &[u32], seqlen: usize, keep_float: &[&str], dry_run: bool, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<RunOut> {
    let c = &model.cfg;
    let fd = o.float_dtype;
    let needs = o.method.needs(o);
    let mut h = if seqlen > 0 { model.embed(tokens)? } else { Vec::new() };
    let mut out: Vec<OutTensor> = Vec::new();
    let mut meta = LowbitQuantConfig::default();
    let (mut lin_bits, mut lin_weights) = (0u64, 0u64);
    let mut fwd = 0f64;
    for i in 0..c.num_layers {
        progress(i, c.num_layers, "quantizing");
        let mut lw = model.load_layer(i)?;
        let mut stats: HashMap<Input, InputStats> = HashMap::new();
        if seqlen > 0 && !dry_run {
            let dims = [(Input::AttnIn, c.hidden_size), (Input::AttnOut, c.q_dim()), (Input::MlpIn, c.hidden_size), (Input::MlpAct, c.intermediate_size)];
            for (inp, d) in dims {
                stats.insert(inp, InputStats::new(d, tokens.len(), needs));
            }
            let (t, mut in_hooks) = (Instant::now(), 0f64);
            model.forward_layer(&lw, &mut h, seqlen, &mut |inp, x, rows| {
                let t = Instant::now();
                stats.get_mut(&inp).unwrap().observe(x, rows);
                in_hooks += t.elapsed().as_secs_f64();
            });
            fwd += t.elapsed().as_secs_f64() - in_hooks;
            check_finite(&h, &format!("layer {i} output activations"))?;
        }
        let qs = if dry_run {
            lw.linears.iter().map(|l| (l.spec.name.to_string(), QTensor::Group(rtn::quantize(&vec![0.0; l.out * l.inn], l.out, l.inn, o.bits, o.group_size, o.sym)))).collect()
        } else {
            check_finite_layer(&lw)?;
            quantize_layer(o, model, &mut lw, &stats)?
        };
        let p = format!("model.layers.{i}");
        for (name, q) in qs {
            let prefix = format!("{p}.{name}");
            if keep_float.contains(&name.as_str()) {
                let l = lw.get(&name);
                out.push(OutTensor::float(format!("{prefix}.weight"), fd, vec![l.out, l.inn], &l.w));
                if let Some(b) = &l.bias {
                    out.push(OutTensor::float(format!("{prefix}.bias"), fd, vec![b.len()], b));
                }
                continue;
            }
            let QTensor::Group(g) = &q else { return Err(anyhow!("{prefix}: vector quantization needs --format lowbit")) };
            let packed = pack(o, g, &prefix)?;
            lin_bits += packed.storage_bits();
            lin_weights += (g.out_features * g.in_features) as u64;
            if let Packed::Lowbit(lp) = &packed {
                meta.modules.insert(prefix.clone(), lp.meta(o.method.name()));
            }
            out.extend(packed.to_tensors(&prefix));
            if let Some(b) = &lw.get(&name).bias {
                out.push(OutTensor::float(format!("{prefix}.bias"), fd, vec![b.len()], b));
            }
        }
        out.push(OutTensor::float(format!("{p}.input_layernorm.weight"), fd, vec![c.hidden_size], &lw.input_norm));
        out.push(OutTensor::float(format!("{p}.post_attention_layernorm.weight"), fd, vec![c.hidden_size], &lw.post_norm));
    }
    progress(c.num_layers, c.num_layers, "writing");
    let (shape, e) = model.ck.f32("model.embed_tokens.weight")?;
    out.push(OutTensor::float("model.embed_tokens.weight", fd, shape, &e));
    let (shape, n) = model.ck.f32("model.norm.weight")?;
    out.push(OutTensor::float("model.norm.weight", fd, shape, &n));
    if !c.tie_word_embeddings {
        let (shape, l) = model.ck.f32("lm_head.weight")?;
        out.push(OutTensor::float("lm_head.weight", fd, shape, &l));
    }
    Ok((out, meta, lin_bits, lin_weights, fwd))
}

fn check_finite(v: &[f32], what: &str) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what}: non-finite value {} at index {i}", v[i]);
    }
    Ok(())
}

fn check_finite_layer(lw: &LayerWeights) -> Result<()> {
    for l in &lw.linears {
        check_finite(&l.w, &format!("model.layers.{}.{}.weight", lw.index, l.spec.name))?;
    }
    Ok(())
}

/// Per-module metadata of a lowbit output, for inspect.
pub fn module_meta(cfg: &serde_json::Value) -> Option<BTreeMap<String, LowbitModuleMeta>> {
    serde_json::from_value::<LowbitQuantConfig>(cfg.get("quantization_config")?.clone()).ok().map(|q| q.modules)
}
