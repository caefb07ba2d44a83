//! The decoder-only transformer (Llama, Mistral, Qwen2, Qwen3) on the CPU, in f32, one decoder layer at a
//! time. [`Model::load_layer`] + [`Model::forward_layer`] form the layer-streaming API: callers
//! keep one layer's weights and one batch of hidden states, and observe the input of every
//! linear through a hook.

use crate::arch::{Input, LinearSpec};
use crate::config::ModelConfig;
use crate::linalg::{exp_fast, matmul_bt, matmul_bt_seq, matmul_seq, rms_norm, silu, sum8};
use crate::rope::Rope;
use crate::weights::Checkpoint;
use anyhow::{anyhow, bail, Result};
use rayon::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Rows (tokens) processed together inside one layer; bounds the size of intermediates.
const CHUNK_TOKENS: usize = 4096;
/// Query rows per attention task: one task holds at most `ATTN_BLOCK × ctx` scores.
const ATTN_BLOCK: usize = 128;

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
        let d = self.cfg.hidden_size;
        assert!(seq_len > 0 && h.len().is_multiple_of(seq_len * d));
        let seqs_per_chunk = (CHUNK_TOKENS / seq_len).max(1);
        for chunk in h.chunks_mut(seqs_per_chunk * seq_len * d) {
            self.forward_chunk(lw, chunk, seq_len, hook);
        }
    }

    fn forward_chunk(&self, lw: &LayerWeights, h: &mut [f32], seq_len: usize, hook: &mut dyn FnMut(Input, &[f32], usize)) {
        let c = &self.cfg;
        let xn = rms_norm(h, &lw.input_norm, c.rms_norm_eps);
        let o = self.attention_block(lw, &xn, seq_len, hook);
        drop(xn);
        h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        drop(o);
        let xn = rms_norm(h, &lw.post_norm, c.rms_norm_eps);
        let dn = self.mlp_block(lw, &xn, hook);
        h.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
    }

    /// Self-attention of layer `lw` on its normed input `xn` (whole sequences of `seq_len`
    /// tokens), through o_proj: the block's contribution to the residual stream.
    fn attention_block(&self, lw: &LayerWeights, xn: &[f32], seq_len: usize, hook: &mut dyn FnMut(Input, &[f32], usize)) -> Vec<f32> {
        let rows = xn.len() / self.cfg.hidden_size;
        hook(Input::AttnIn, xn, rows);
        let mut q = lw.get("self_attn.q_proj").forward(xn, rows);
        let mut k = lw.get("self_attn.k_proj").forward(xn, rows);
        let v = lw.get("self_attn.v_proj").forward(xn, rows);
        let eps = self.cfg.rms_norm_eps;
        if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            // Per-head RMSNorm (qwen3): rows of head_dim values.
            q = rms_norm(&q, qn, eps);
            k = rms_norm(&k, kn, eps);
        }
        self.apply_rope(&mut q, &mut k, rows, seq_len);
        let att = self.attention(&q, &k, &v, rows, seq_len, self.cfg.window(lw.index));
        drop((q, k, v));
        hook(Input::AttnOut, &att, rows);
        lw.get("self_attn.o_proj").forward(&att, rows)
    }

    /// The gated MLP of layer `lw` on its normed input `xn`, through down_proj.
    fn mlp_block(&self, lw: &LayerWeights, xn: &[f32], hook: &mut dyn FnMut(Input, &[f32], usize)) -> Vec<f32> {
        let rows = xn.len() / self.cfg.hidden_size;
        hook(Input::MlpIn, xn, rows);
        let mut g = lw.get("mlp.gate_proj").forward(xn, rows);
        let u = lw.get("mlp.up_proj").forward(xn, rows);
        g.par_chunks_mut(4096).zip(u.par_chunks(4096)).for_each(|(g, u)| {
            g.iter_mut().zip(u).for_each(|(a, b)| *a = silu(*a) * b);
        });
        drop(u);
        hook(Input::MlpAct, &g, rows);
        lw.get("mlp.down_proj").forward(&g, rows)
    }

    /// The attention block's output (after o_proj, before the residual add) for `xn`, the
    /// `input_layernorm` output of whole sequences of `seq_len` tokens: what AWQ's search of the
    /// q/k/v scales scores. The same code path as [`Model::forward_layer`].
    pub fn attention_output(&self, lw: &LayerWeights, xn: &[f32], seq_len: usize) -> Vec<f32> {
        let d = self.cfg.hidden_size;
        assert!(seq_len > 0 && xn.len().is_multiple_of(seq_len * d));
        let seqs_per_chunk = (CHUNK_TOKENS / seq_len).max(1);
        let mut out = Vec::with_capacity(xn.len());
        for x in xn.chunks(seqs_per_chunk * seq_len * d) {
            out.extend(self.attention_block(lw, x, seq_len, &mut |_, _, _| {}));
        }
        out
    }

    /// The MLP's output (after down_proj, before the residual add) for `xn`, rows of the
    /// `post_attention_layernorm` output: what AWQ's search of the gate/up scales scores.
    pub fn mlp_output(&self, lw: &LayerWeights, xn: &[f32]) -> Vec<f32> {
        let d = self.cfg.hidden_size;
        assert!(xn.len().is_multiple_of(d));
        let mut out = Vec::with_capacity(xn.len());
        for x in xn.chunks(CHUNK_TOKENS * d) {
            out.extend(self.mlp_block(lw, x, &mut |_, _, _| {}));
        }
        out
    }

    fn apply_rope(&self, q: &mut [f32], k: &mut [f32], rows: usize, seq_len: usize) {
        let c = &self.cfg;
        let hd = c.head_dim;
        let rope = Rope::scaled(&c.rope, hd, c.rope_theta, seq_len);
        let (qd, kd) = (c.q_dim(), c.kv_dim());
        q.par_chunks_mut(qd).zip(k.par_chunks_mut(kd)).enumerate().for_each(|(r, (qr, kr))| {
            let pos = r % seq_len;
            qr.chunks_mut(hd).for_each(|hv| rope.apply(hv, pos));
            kr.chunks_mut(hd).for_each(|hv| rope.apply(hv, pos));
        });
        debug_assert_eq!(q.len(), rows * qd);
    }

    /// Causal multi-head attention with grouped KV heads, optionally limited to a sliding window
    /// (query i sees keys j with i − window < j ≤ i, as transformers' sliding mask). Tasks are
    /// (sequence, head, query block); each holds only `ATTN_BLOCK × seq_len` scores.
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], rows: usize, seq_len: usize, window: Option<usize>) -> Vec<f32> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let (qd, kd) = (c.q_dim(), c.kv_dim());
        let n_seq = rows / seq_len;
        let n_blocks = seq_len.div_ceil(ATTN_BLOCK);
        let scale = 1.0 / (hd as f32).sqrt();
        let group = nh / nkv;
        // Gather each (sequence, kv head) K and V contiguously: [seq_len][hd].
        let gather = |src: &[f32], width: usize, s: usize, h: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(seq_len * hd);
            for t in 0..seq_len {
                let r = s * seq_len + t;
                out.extend_from_slice(&src[r * width + h * hd..r * width + (h + 1) * hd]);
            }
            out
        };
        let kvs: Vec<(Vec<f32>, Vec<f32>)> =
            (0..n_seq * nkv).into_par_iter().map(|i| (gather(k, kd, i / nkv, i % nkv), gather(v, kd, i / nkv, i % nkv))).collect();
        let tasks: Vec<(usize, usize, usize)> =
            (0..n_seq).flat_map(|s| (0..nh).flat_map(move |h| (0..n_blocks).map(move |b| (s, h, b)))).collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(s, h, b)| {
                let (r0, r1) = (b * ATTN_BLOCK, ((b + 1) * ATTN_BLOCK).min(seq_len));
                let m = r1 - r0;
                let (kh, vh) = &kvs[s * nkv + h / group];
                let mut qb = Vec::with_capacity(m * hd);
                for t in r0..r1 {
                    let r = s * seq_len + t;
                    qb.extend_from_slice(&q[r * qd + h * hd..r * qd + (h + 1) * hd]);
                }
                // Keys k0..r1 suffice under the causal (and window) mask; scores are relative to k0.
                let k0 = window.map_or(0, |w| (r0 + 1).saturating_sub(w));
                let nk = r1 - k0;
                let mut sc = vec![0f32; m * nk];
                matmul_bt_seq(&mut sc, &qb, m, hd, &kh[k0 * hd..r1 * hd], nk);
                for (i, row) in sc.chunks_mut(nk).enumerate() {
                    let lim = r0 + i + 1 - k0;
                    let first = window.map_or(0, |w| (r0 + i + 1).saturating_sub(w) - k0);
                    let live = &mut row[first..lim];
                    let mx = live.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
                    live.iter_mut().for_each(|x| *x = exp_fast(*x * scale - mx));
                    let sum = sum8(live);
                    let inv = 1.0 / sum;
                    live.iter_mut().for_each(|x| *x *= inv);
                    row[..first].iter_mut().for_each(|x| *x = 0.0);
                    row[lim..].iter_mut().for_each(|x| *x = 0.0);
                }
                let mut ob = vec![0f32; m * hd];
                matmul_seq(&mut ob, &sc, m, nk, &vh[k0 * hd..r1 * hd], hd, false);
                ob
            })
            .collect();
        let mut out = vec![0f32; rows * qd];
        for (&(s, h, b), ob) in tasks.iter().zip(&results) {
            let r0 = b * ATTN_BLOCK;
            for (i, orow) in ob.chunks(hd).enumerate() {
                let r = s * seq_len + r0 + i;
                out[r * qd + h * hd..r * qd + (h + 1) * hd].copy_from_slice(orow);
            }
        }
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
            self.forward_layer(&lw, &mut h, seq_len, &mut |_, _, _| {});
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
