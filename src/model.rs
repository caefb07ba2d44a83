//! The decoder-only transformer (Llama, Mistral, Qwen2, Qwen3) on the CPU, in f32, one decoder layer at a
//! time. [`Model::load_layer`] + [`Model::forward_layer`] form the layer-streaming API: callers
//! keep one layer's weights and one batch of hidden states, and observe the input of every
//! linear through a hook.

use crate::arch::{Input, LinearSpec};
use crate::config::ModelConfig;
use crate::linalg::{add_assign, matmul_bt, matmul_bt_into, rms_norm, rms_norm_inplace, rms_norm_into, silu_mul, simd_fn};
use crate::rope::Rope;
use crate::weights::Checkpoint;
use anyhow::{anyhow, bail, Result};
use faer::Par;
use rayon::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Rows (tokens) processed together inside one layer; bounds the size of intermediates.
const CHUNK_TOKENS: usize = 4096;

/// Rows per task of the row-parallel phases: about four tasks per thread (so a core slowed by
/// other load hands work over), between 64 and 256 rows (thinner blocks lose GEMM efficiency).
fn row_block(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).clamp(64, 256)
}

/// The gated MLP on a block of normed rows `xn` into `out` (`[n][hidden]`), sequentially; the
/// activation (down_proj's input) copied to `act_out` if given.
fn mlp_rows(lw: &LayerWeights, xn: &[f32], out: &mut [f32], act_out: Option<&mut [f32]>) {
    let (wg, wu, wd) = (lw.get("mlp.gate_proj"), lw.get("mlp.up_proj"), lw.get("mlp.down_proj"));
    let n = xn.len() / wg.inn;
    let mut g = vec![0f32; n * wg.out];
    let mut u = vec![0f32; n * wu.out];
    wg.forward_seq(&mut g, xn, n);
    wu.forward_seq(&mut u, xn, n);
    silu_mul(&mut g, &u);
    drop(u);
    if let Some(ao) = act_out {
        ao.copy_from_slice(&g);
    }
    wd.forward_seq(out, &g, n);
}

simd_fn! {
    /// RoPE on a block of q and k rows whose first row is row `r0` of the chunk (position
    /// `(r0 + i) % seq_len`).
    #[allow(clippy::too_many_arguments)]
    fn rope_rows(rope: &Rope, q: &mut [f32], k: &mut [f32], r0: usize, seq_len: usize, qd: usize, kd: usize, hd: usize) {
        for (i, (qr, kr)) in q.chunks_mut(qd).zip(k.chunks_mut(kd)).enumerate() {
            let pos = (r0 + i) % seq_len;
            qr.chunks_mut(hd).for_each(|hv| rope.apply(hv, pos));
            kr.chunks_mut(hd).for_each(|hv| rope.apply(hv, pos));
        }
    }
}

/// A linear layer's weight `[out][inn]` in f32 (dequantized if the checkpoint is packed).
#[derive(Clone, Debug)]
pub struct LinearW {
    pub spec: LinearSpec,
    pub out: usize,
    pub inn: usize,
    pub w: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl LinearW {
    /// `y = x·Wᵀ (+ bias)` for `rows` rows, on the calling thread (for use inside parallel loops).
    pub fn forward_seq(&self, y: &mut [f32], x: &[f32], rows: usize) {
        matmul_bt_into(y, x, rows, self.inn, &self.w, self.out, Par::Seq);
        if let Some(b) = &self.bias {
            for r in y.chunks_mut(self.out) {
                add_assign(r, b);
            }
        }
    }

    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = matmul_bt(x, rows, self.inn, &self.w, self.out);
        if let Some(b) = &self.bias {
            for r in y.chunks_mut(self.out) {
                r.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        }
        y
    }
}

/// One decoder layer's weights, in the family table's order.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub index: usize,
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    /// Per-head RMSNorm weights of q and k (`[head_dim]`, qwen3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub linears: Vec<LinearW>,
}

impl LayerWeights {
    pub fn get(&self, name: &str) -> &LinearW {
        self.linears.iter().find(|l| l.spec.name == name).expect("linear in family table")
    }
    pub fn get_mut(&mut self, name: &str) -> &mut LinearW {
        self.linears.iter_mut().find(|l| l.spec.name == name).expect("linear in family table")
    }
    pub fn norm_mut(&mut self, name: &str) -> &mut Vec<f32> {
        match name {
            "input_layernorm" => &mut self.input_norm,
            "post_attention_layernorm" => &mut self.post_norm,
            _ => panic!("unknown norm {name}"),
        }
    }
}

/// What [`Model::forward_layer`]'s hook is: it sees `(input, x, rows)` for every linear's input.
type LayerHook<'h> = dyn FnMut(Input, &[f32], usize) + 'h;
/// A row block's slices of the full-size MLP input and activation buffers (when observed).
type BlockOuts<'a> = (Option<&'a mut [f32]>, Option<&'a mut [f32]>);

/// Loads a linear's f32 weight from a packed checkpoint; installed by the quantized-checkpoint
/// reader (`qmodel`), `None` for plain checkpoints.
pub type PackedLoader = dyn Fn(&Checkpoint, &str) -> Result<Option<Vec<f32>>> + Send + Sync;

pub struct Model {
    pub cfg: ModelConfig,
    pub ck: Checkpoint,
    pub packed: Option<Box<PackedLoader>>,
    embed: OnceLock<Vec<f32>>,
    lm_head: OnceLock<Vec<f32>>,
}

impl Model {
    /// Open a checkpoint directory (config.json + safetensors). Quantized directories are opened
    /// by [`crate::qmodel::open`], which installs a packed loader.
    pub fn open_dense(dir: &Path) -> Result<Self> {
        let m = Self::open_dense_unchecked(dir)?;
        m.check_tensors()?;
        Ok(m)
    }

    /// Open without checking that every tensor is present (the caller installs a packed loader
    /// first, then calls [`Model::check_tensors`]).
    pub fn open_dense_unchecked(dir: &Path) -> Result<Self> {
        check_model_dir(dir)?;
        let cfg = ModelConfig::load(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        Ok(Model { cfg, ck, packed: None, embed: OnceLock::new(), lm_head: OnceLock::new() })
    }

    /// A model over an already opened checkpoint (e.g. one held in memory, as the GGUF reader
    /// builds: [`crate::gguf::load`]).
    pub fn from_parts(cfg: ModelConfig, ck: Checkpoint) -> Self {
        Model { cfg, ck, packed: None, embed: OnceLock::new(), lm_head: OnceLock::new() }
    }

    pub fn with_packed(mut self, loader: Box<PackedLoader>) -> Self {
        self.packed = Some(loader);
        self
    }

    /// Every tensor the forward pass needs is present, and every dense one has the shape
    /// config.json implies (checked up front, not mid-eval, so that sizes from config.json never
    /// drive an allocation before they are checked against the tensors).
    pub fn check_tensors(&self) -> Result<()> {
        let c = &self.cfg;
        let (d, v) = (c.hidden_size, c.vocab_size);
        // Checked name by name: num_hidden_layers comes from config.json and may be absurd, so
        // the list of needed names is never built up front.
        // The names checked, for the converse check below.
        let expected = std::cell::RefCell::new(std::collections::HashSet::new());
        let need = |n: String, shape: &[usize]| -> Result<()> {
            if !self.ck.contains(&n) {
                bail!("{}: missing tensor {n}", self.ck.dir.display());
            }
            self.ck.check_shape(&n, shape)?;
            expected.borrow_mut().insert(n);
            Ok(())
        };
        // The tables may be packed (lowbit layout, `--override embed_tokens=...`).
        let packed_table = |p: &str| self.packed.is_some() && self.ck.contains(&format!("{p}.qweight"));
        if !packed_table("model.embed_tokens") {
            need("model.embed_tokens.weight".into(), &[v, d])?;
        }
        need("model.norm.weight".into(), &[d])?;
        if !c.tie_word_embeddings && !packed_table("lm_head") {
            need("lm_head.weight".into(), &[v, d])?;
        }
        for i in 0..c.num_layers {
            need(format!("model.layers.{i}.input_layernorm.weight"), &[d])?;
            need(format!("model.layers.{i}.post_attention_layernorm.weight"), &[d])?;
            for l in c.family.linears() {
                let p = format!("model.layers.{i}.{}", l.name);
                let (out, inn) = self.linear_shape(l);
                let packed = ["qweight", "vq_indices"].iter().any(|s| self.ck.contains(&format!("{p}.{s}")));
                if !packed || self.ck.contains(&format!("{p}.weight")) {
                    need(format!("{p}.weight"), &[out, inn])?;
                }
                if c.has_bias(l.name) {
                    need(format!("{p}.bias"), &[out])?;
                } else if self.ck.contains(&format!("{p}.bias")) {
                    bail!(
                        "{}: tensor {p}.bias is present but config.json gives {} no bias (attention_bias / mlp_bias); refusing to ignore it",
                        self.ck.dir.display(),
                        l.name
                    );
                }
            }
            for n in ["q_norm", "k_norm"] {
                let name = format!("model.layers.{i}.self_attn.{n}.weight");
                if c.qk_norm {
                    need(name, &[c.head_dim])?;
                } else if self.ck.contains(&name) {
                    bail!(
                        "{}: tensor {name} is present but model_type {} has no q/k norms; refusing to ignore it",
                        self.ck.dir.display(),
                        c.family.name()
                    );
                }
            }
        }
        self.check_no_extra_tensors(&expected.into_inner())
    }

    /// Every stored tensor is one the config implies (`expected`, or a packed part of an
    /// expected linear): a tensor of a layer beyond num_hidden_layers, or of anything else the
    /// forward pass would not run, is refused by name instead of silently dropped.
    fn check_no_extra_tensors(&self, expected: &std::collections::HashSet<String>) -> Result<()> {
        let c = &self.cfg;
        for n in self.ck.names().filter(|n| !expected.contains(*n)) {
            let layer = n.strip_prefix("model.layers.").and_then(|r| r.split_once('.'));
            if let Some((i, rest)) = layer {
                if i.parse::<usize>().is_ok_and(|i| i >= c.num_layers) {
                    bail!(
                        "{}: tensor {} belongs to a layer beyond num_hidden_layers {} in config.json",
                        self.ck.dir.display(),
                        crate::escape::text(n),
                        c.num_layers
                    );
                }
                // Packed parts (qweight, scales, ...) of a packed linear the config has.
                let packed_part = c.family.linears().iter().any(|l| {
                    let p = format!("model.layers.{i}.{}", l.name);
                    let packed = ["qweight", "vq_indices"].iter().any(|s| self.ck.contains(&format!("{p}.{s}")));
                    packed && rest.strip_prefix(l.name).and_then(|r| r.strip_prefix('.')).is_some_and(|part| part != "bias")
                });
                if i.parse::<usize>().is_ok() && packed_part {
                    continue;
                }
            }
            // Packed parts of a packed table.
            let table = ["model.embed_tokens", "lm_head"].iter().any(|p| {
                self.packed.is_some()
                    && self.ck.contains(&format!("{p}.qweight"))
                    && n.strip_prefix(p).and_then(|r| r.strip_prefix('.')).is_some_and(|part| crate::pack::PACKED_SUFFIXES.contains(&part))
            });
            if table && !(c.tie_word_embeddings && n.starts_with("lm_head.")) {
                continue;
            }
            bail!("{}: tensor {} is not part of the model config.json describes", self.ck.dir.display(), crate::escape::text(n));
        }
        Ok(())
    }

    /// The shape `[out, in]` of a decoder-layer linear.
    pub fn linear_shape(&self, spec: &LinearSpec) -> (usize, usize) {
        let c = &self.cfg;
        match spec.name {
            "self_attn.q_proj" => (c.q_dim(), c.hidden_size),
            "self_attn.k_proj" | "self_attn.v_proj" => (c.kv_dim(), c.hidden_size),
            "self_attn.o_proj" => (c.hidden_size, c.q_dim()),
            "mlp.gate_proj" | "mlp.up_proj" => (c.intermediate_size, c.hidden_size),
            "mlp.down_proj" => (c.hidden_size, c.intermediate_size),
            n => unreachable!("linear {n} not in the family table"),
        }
    }

    /// A linear's f32 weight by full prefix (e.g. `model.layers.0.mlp.up_proj`).
    pub fn linear_weight(&self, prefix: &str, out: usize, inn: usize) -> Result<Vec<f32>> {
        let dense = format!("{prefix}.weight");
        if self.ck.contains(&dense) {
            return self.ck.f32_shaped(&dense, &[out, inn]);
        }
        if let Some(load) = &self.packed {
            if let Some(w) = load(&self.ck, prefix)? {
                if w.len() != out * inn {
                    bail!("{}: packed {prefix} unpacks to {} values, expected {out}x{inn}", self.ck.dir.display(), w.len());
                }
                return Ok(w);
            }
        }
        bail!("{}: missing tensor {dense}", self.ck.dir.display())
    }

    pub fn load_layer(&self, i: usize) -> Result<LayerWeights> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let p = format!("model.layers.{i}");
        let qk_norm = |n: &str| -> Result<Option<Vec<f32>>> {
            if !c.qk_norm {
                return Ok(None);
            }
            Ok(Some(self.ck.f32_shaped(&format!("{p}.self_attn.{n}.weight"), &[c.head_dim])?))
        };
        let mut linears = Vec::new();
        for spec in c.family.linears() {
            let (out, inn) = self.linear_shape(spec);
            let prefix = format!("{p}.{}", spec.name);
            let w = self.linear_weight(&prefix, out, inn)?;
            let bias = if c.has_bias(spec.name) { Some(self.ck.f32_shaped(&format!("{prefix}.bias"), &[out])?) } else { None };
            linears.push(LinearW { spec: *spec, out, inn, w, bias });
        }
        Ok(LayerWeights {
            index: i,
            input_norm: self.ck.f32_shaped(&format!("{p}.input_layernorm.weight"), &[d])?,
            post_norm: self.ck.f32_shaped(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            linears,
        })
    }

    fn embed_table(&self) -> Result<&Vec<f32>> {
        if self.embed.get().is_none() {
            let v = self.linear_weight("model.embed_tokens", self.cfg.vocab_size, self.cfg.hidden_size)?;
            let _ = self.embed.set(v);
            self.ck.release_pages();
        }
        Ok(self.embed.get().unwrap())
    }

    fn lm_head_table(&self) -> Result<&Vec<f32>> {
        if self.cfg.tie_word_embeddings {
            return self.embed_table();
        }
        if self.lm_head.get().is_none() {
            let v = self.linear_weight("lm_head", self.cfg.vocab_size, self.cfg.hidden_size)?;
            let _ = self.lm_head.set(v);
            self.ck.release_pages();
        }
        Ok(self.lm_head.get().unwrap())
    }

    /// Hidden states `[tokens.len()][hidden]` for token ids: rows converted straight from the
    /// mapped embedding (the f32 table is not materialised for this).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let name = "model.embed_tokens.weight";
        if !self.ck.contains(name) {
            // A packed table: rows of the dequantized table.
            let e = self.embed_table()?;
            let mut h = Vec::with_capacity(tokens.len() * d);
            for &t in tokens {
                let t = t as usize;
                if t >= v {
                    return Err(anyhow!("token id {t} out of range (vocab_size {v})"));
                }
                h.extend_from_slice(&e[t * d..(t + 1) * d]);
            }
            return Ok(h);
        }
        let (info, bytes) = self.ck.raw(name)?;
        if info.shape != [v, d] {
            bail!("{}: tensor {name} has shape {:?}, expected [{v}, {d}]", self.ck.dir.display(), info.shape);
        }
        let es = crate::weights::dtype_size(info.dtype).unwrap_or(0);
        let mut h = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            if t >= v {
                return Err(anyhow!("token id {t} out of range (vocab_size {v})"));
            }
            h.extend(
                crate::weights::to_f32(info.dtype, &bytes[t * d * es..(t + 1) * d * es])
                    .map_err(|e| anyhow!("{}: {name}: {e}", self.ck.dir.display()))?,
            );
        }
        Ok(h)
    }

    /// Apply decoder layer `lw` in place to `h`, which holds `h.len() / (seq_len*hidden)`
    /// independent sequences of `seq_len` tokens each (positions restart at 0 in each).
    /// `hook(input, x, rows)` sees the input of every linear, chunk by chunk.
    pub fn forward_layer(&self, lw: &LayerWeights, h: &mut [f32], seq_len: usize, hook: &mut dyn FnMut(Input, &[f32], usize)) {
        self.forward_layer_observed(lw, h, seq_len, Some(hook));
    }

    /// As [`Model::forward_layer`]; without a hook the linears' inputs are never gathered into
    /// full-size buffers (each row block keeps its own).
    fn forward_layer_observed<'h>(&self, lw: &LayerWeights, h: &mut [f32], seq_len: usize, mut hook: Option<&mut LayerHook<'h>>) {
        let d = self.cfg.hidden_size;
        assert!(seq_len > 0 && h.len().is_multiple_of(seq_len * d));
        let seqs_per_chunk = (CHUNK_TOKENS / seq_len).max(1);
        for chunk in h.chunks_mut(seqs_per_chunk * seq_len * d) {
            self.forward_chunk(lw, chunk, seq_len, hook.as_deref_mut());
        }
    }

    /// One chunk of whole sequences through a decoder layer, in three parallel phases: (A) per
    /// row block RMSNorm, q/k/v, q/k norms and RoPE; (B) attention ([`crate::attention`]); (C) per
    /// row block o_proj + residual, RMSNorm, gate/up, SiLU·up, down_proj + residual. Inside a
    /// phase every GEMM is sequential on its row block, so both cores stay busy without a barrier
    /// per GEMM. The hook sees each linear's full input after the phase that made it.
    fn forward_chunk<'h>(&self, lw: &LayerWeights, h: &mut [f32], seq_len: usize, mut hook: Option<&mut LayerHook<'h>>) {
        let c = &self.cfg;
        let d = c.hidden_size;
        let rows = h.len() / d;
        let (qd, inter) = (c.q_dim(), c.intermediate_size);
        let observe = hook.is_some();
        let rb = row_block(rows);
        let eps = c.rms_norm_eps;
        let mut xn_all = if observe { vec![0f32; rows * d] } else { Vec::new() };
        let att = self.attention_rows(lw, h, false, seq_len, observe.then_some(&mut xn_all[..]));
        if let Some(hk) = hook.as_deref_mut() {
            hk(Input::AttnIn, &xn_all, rows);
            hk(Input::AttnOut, &att, rows);
        }
        drop(xn_all);
        // Phase C.
        let wo = lw.get("self_attn.o_proj");
        let mut xn2_all = if observe { vec![0f32; rows * d] } else { Vec::new() };
        let mut act_all = if observe { vec![0f32; rows * inter] } else { Vec::new() };
        {
            let n_blocks = rows.div_ceil(rb);
            let mut outs: Vec<BlockOuts> = if observe {
                xn2_all.chunks_mut(rb * d).map(Some).zip(act_all.chunks_mut(rb * inter).map(Some)).collect()
            } else {
                (0..n_blocks).map(|_| (None, None)).collect()
            };
            h.par_chunks_mut(rb * d).zip(att.par_chunks(rb * qd)).zip(outs.par_iter_mut()).for_each(|((hb, ab), (xo, ao))| {
                let n = hb.len() / d;
                let mut t = vec![0f32; n * d];
                wo.forward_seq(&mut t, ab, n);
                add_assign(hb, &t);
                let mut xn = vec![0f32; n * d];
                rms_norm_into(&mut xn, hb, &lw.post_norm, eps);
                mlp_rows(lw, &xn, &mut t, ao.as_deref_mut());
                add_assign(hb, &t);
                if let Some(xo) = xo {
                    xo.copy_from_slice(&xn);
                }
            });
        }
        drop(att);
        if let Some(hk) = hook {
            hk(Input::MlpIn, &xn2_all, rows);
            drop(xn2_all);
            hk(Input::MlpAct, &act_all, rows);
        }
    }

    /// Phases A and B of [`Model::forward_chunk`] on whole sequences `x` (`[rows][hidden]`): the
    /// attention output before o_proj, `[rows][q_dim]`. `x` is the residual stream, normed here
    /// by `input_layernorm` (the normed rows copied to `xn_out` if given), or already normed
    /// (`normed`).
    fn attention_rows(&self, lw: &LayerWeights, x: &[f32], normed: bool, seq_len: usize, xn_out: Option<&mut [f32]>) -> Vec<f32> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let rows = x.len() / d;
        let (qd, kd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let rb = row_block(rows);
        let rope = Rope::scaled(&c.rope, hd, c.rope_theta, seq_len);
        let eps = c.rms_norm_eps;
        let (wq, wk, wv) = (lw.get("self_attn.q_proj"), lw.get("self_attn.k_proj"), lw.get("self_attn.v_proj"));
        let mut q = vec![0f32; rows * qd];
        let mut k = vec![0f32; rows * kd];
        let mut v = vec![0f32; rows * kd];
        let mut xn_blocks: Vec<Option<&mut [f32]>> = match xn_out {
            Some(o) => o.chunks_mut(rb * d).map(Some).collect(),
            None => (0..rows.div_ceil(rb)).map(|_| None).collect(),
        };
        x.par_chunks(rb * d)
            .zip(q.par_chunks_mut(rb * qd))
            .zip(k.par_chunks_mut(rb * kd))
            .zip(v.par_chunks_mut(rb * kd))
            .zip(xn_blocks.par_iter_mut())
            .enumerate()
            .for_each(|(bi, ((((xb, qb), kb), vb), xo))| {
                let n = xb.len() / d;
                let normed_rows;
                let xn: &[f32] = if normed {
                    xb
                } else {
                    let mut t = vec![0f32; n * d];
                    rms_norm_into(&mut t, xb, &lw.input_norm, eps);
                    normed_rows = t;
                    &normed_rows
                };
                wq.forward_seq(qb, xn, n);
                wk.forward_seq(kb, xn, n);
                wv.forward_seq(vb, xn, n);
                if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                    // Per-head RMSNorm (qwen3): rows of head_dim values.
                    rms_norm_inplace(qb, qn, eps);
                    rms_norm_inplace(kb, kn, eps);
                }
                rope_rows(&rope, qb, kb, bi * rb, seq_len, qd, kd, hd);
                if let Some(xo) = xo {
                    xo.copy_from_slice(xn);
                }
            });
        let dims = crate::attention::Dims { head_dim: hd, heads: c.num_heads, kv_heads: c.num_kv_heads, window: c.window(lw.index) };
        crate::attention::attention(&q, &k, &v, rows, seq_len, dims)
    }

    /// The attention block's output (after o_proj, before the residual add) for `xn`, the
    /// `input_layernorm` output of whole sequences of `seq_len` tokens: what AWQ's search of the
    /// q/k/v scales scores. The same code path as [`Model::forward_layer`].
    pub fn attention_output(&self, lw: &LayerWeights, xn: &[f32], seq_len: usize) -> Vec<f32> {
        let d = self.cfg.hidden_size;
        assert!(seq_len > 0 && xn.len().is_multiple_of(seq_len * d));
        let seqs_per_chunk = (CHUNK_TOKENS / seq_len).max(1);
        let wo = lw.get("self_attn.o_proj");
        let mut out = vec![0f32; xn.len()];
        for (x, o) in xn.chunks(seqs_per_chunk * seq_len * d).zip(out.chunks_mut(seqs_per_chunk * seq_len * d)) {
            let att = self.attention_rows(lw, x, true, seq_len, None);
            let rows = x.len() / d;
            let rb = row_block(rows);
            o.par_chunks_mut(rb * d).zip(att.par_chunks(rb * wo.inn)).for_each(|(ob, ab)| wo.forward_seq(ob, ab, ob.len() / d));
        }
        out
    }

    /// The MLP's output (after down_proj, before the residual add) for `xn`, rows of the
    /// `post_attention_layernorm` output: what AWQ's search of the gate/up scales scores.
    pub fn mlp_output(&self, lw: &LayerWeights, xn: &[f32]) -> Vec<f32> {
        let d = self.cfg.hidden_size;
        assert!(xn.len().is_multiple_of(d));
        let rb = row_block(xn.len() / d);
        let mut out = vec![0f32; xn.len()];
        out.par_chunks_mut(rb * d).zip(xn.par_chunks(rb * d)).for_each(|(ob, xb)| mlp_rows(lw, xb, ob, None));
        out
    }

    /// Final norm + lm_head for `rows` hidden states: logits `[rows][vocab]`.
    pub fn logits(&self, h: &[f32], rows: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let norm = self.ck.f32_shaped("model.norm.weight", &[c.hidden_size])?;
        let xn = rms_norm(h, &norm, c.rms_norm_eps);
        Ok(matmul_bt(&xn, rows, c.hidden_size, self.lm_head_table()?, c.vocab_size))
    }

    /// Run all layers over `n_seq` sequences of `seq_len` tokens: final hidden states.
    pub fn hidden(&self, tokens: &[u32], seq_len: usize) -> Result<Vec<f32>> {
        self.hidden_with(tokens, seq_len, &mut || {})
    }

    /// As [`Model::hidden`], calling `on_layer` after each decoder layer (for progress).
    pub fn hidden_with(&self, tokens: &[u32], seq_len: usize, on_layer: &mut dyn FnMut()) -> Result<Vec<f32>> {
        let mut h = self.embed(tokens)?;
        for i in 0..self.cfg.num_layers {
            let lw = self.load_layer(i)?;
            // The layer is in f32 now: drop its mapped bf16/f16 pages from the resident set, so
            // a whole-model pass holds one layer's weights at a time, not the whole file.
            self.ck.release_pages();
            self.forward_layer_observed(&lw, &mut h, seq_len, None);
            on_layer();
        }
        Ok(h)
    }
}

/// `--model` must name a checkpoint directory: a GGUF file gets a pointer to `import-gguf`, any
/// other file a plain refusal (instead of "config.json: Not a directory").
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.is_file() {
        if dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            bail!(
                "{}: is a GGUF file; --model takes a checkpoint directory: convert it first with `lowbit import-gguf {} --out DIR`",
                dir.display(),
                dir.display()
            );
        }
        bail!("{}: is a file; --model takes a checkpoint directory (config.json + *.safetensors)", dir.display());
    }
    Ok(())
}
