//! What goes to the device for one layer: the host byte arrays to upload and, per kernel launch,
//! the kernel variant, entry point, tile geometry and argument list. Batch-independent; the
//! runner binds activations, output and split-K workspace per batch size.

use anyhow::Result;
use half::f16;

use super::arrange::{arrange_gq, GroupRows};
use super::compile::Variant;
use super::layer::{gptq_groups, lowbit_groups, stream_row_bytes, trivial_g_idx, PackedOnGpu};

/// Warps per block (`LB_WARPS` in common.cuh).
pub const WARPS: u32 = 4;
/// Batch columns per block of the GEMM kernels (`8 * LB_GEMM_NT`).
pub const GEMM_BN: usize = 32;
/// Largest batch served by the GEMV kernels.
pub const GEMV_MAX_BATCH: usize = 8;

/// How a launch sees the activations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XMap {
    /// `x` as given (`[batch, in]`).
    Same,
    /// `x` with these input columns set to zero (the VQ main product of a layer with outliers).
    MaskCols(Vec<i32>),
    /// Only these input columns, in this order (`[batch, cols.len()]`: the VQ outlier product).
    Gather(Vec<i32>),
}

impl XMap {
    /// Applies the map to `x` (`[batch, inf]`).
    pub fn apply(&self, x: &[f16], batch: usize, inf: usize) -> Vec<f16> {
        match self {
            XMap::Same => x.to_vec(),
            XMap::MaskCols(cols) => {
                let mut y = x.to_vec();
                for n in 0..batch {
                    for &c in cols {
                        y[n * inf + c as usize] = f16::ZERO;
                    }
                }
                y
            }
            XMap::Gather(cols) => (0..batch).flat_map(|n| cols.iter().map(move |&c| x[n * inf + c as usize])).collect(),
        }
    }
}

/// Which kernels run a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// The bandwidth kernels on the arrangement made at upload (kernels/gq.cu, kernels/vqt.cu);
    /// VQ layers whose vector length is not a multiple of 8 fall back to kernels/vq.cu.
    Tiled,
    /// The kernels that read the checkpoint layouts as stored (kernels/{awq,gptq,lowbit,vq}.cu).
    Direct,
}

impl KernelPath {
    /// `$LOWBIT_KERNELS` (`tiled`, the default, or `direct`).
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("LOWBIT_KERNELS").as_deref() {
            Err(_) | Ok("") | Ok("tiled") => Ok(KernelPath::Tiled),
            Ok("direct") => Ok(KernelPath::Direct),
            Ok(v) => anyhow::bail!("LOWBIT_KERNELS={v}: expected tiled or direct"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Tiled => "tiled",
            KernelPath::Direct => "direct",
        }
    }
}

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KArg {
    /// Device address of uploaded buffer `i` of the layer.
    Buf(usize),
    /// A null pointer (optional array absent).
    Null,
    I(i32),
    /// The launch's activations, output, split-K workspace and per-tile counters.
    X,
    Y,
    Ws,
    Counters,
    /// The batch size, and 1 when the output is fp16 (0: fp32).
    Batch,
    OutF16,
    /// 1 when the launch got its dynamic shared memory (`LaunchPlan::smem`), else 0.
    SmemFlag,
    /// Persistent launches: work items, K splits and batch tiles (items = m-tiles x batch
    /// tiles x splits).
    Items,
    NSplit,
    NTileY,
}

/// One kernel launch of a layer.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub variant: Variant,
    /// Entry point for the GEMV (batch <= 8) and GEMM paths.
    pub entry_gemv: String,
    pub entry_gemm: String,
    /// Output rows and input columns this launch covers.
    pub out: usize,
    pub inf: usize,
    /// Output rows per block (grid.x = ceil(out / rows)).
    pub rows: usize,
    /// Work units along K the split-K factor may divide, and the fewest units a split keeps.
    pub units: usize,
    pub min_units_per_split: usize,
    /// Dynamic shared memory per block.
    pub smem: u32,
    /// Persistent blocks looping over work items (grid.x = resident blocks) instead of one block
    /// per (tile, split).
    pub persistent: bool,
    pub xmap: XMap,
    pub args: Vec<KArg>,
}

impl LaunchPlan {
    pub fn entry(&self, batch: usize) -> &str {
        if batch <= GEMV_MAX_BATCH {
            &self.entry_gemv
        } else {
            &self.entry_gemm
        }
    }
}

/// A layer ready for upload: byte arrays and launches.
#[derive(Clone, Debug)]
pub struct HostLayer {
    pub label: String,
    pub out: usize,
    pub inf: usize,
    pub bufs: Vec<Vec<u8>>,
    pub launches: Vec<LaunchPlan>,
}

impl HostLayer {
    /// Bytes of the uploaded arrays (what one call of every launch streams at most).
    pub fn bytes(&self) -> usize {
        self.bufs.iter().map(Vec::len).sum()
    }
}

fn bytes_of<T: Copy>(data: &[T]) -> Vec<u8> {
    // SAFETY: T is plain data (i32/u8/f16); viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }.to_vec()
}

pub(crate) struct Bufs(pub Vec<Vec<u8>>);
impl Bufs {
    pub fn put<T: Copy>(&mut self, data: &[T]) -> KArg {
        self.0.push(bytes_of(data));
        KArg::Buf(self.0.len() - 1)
    }
    pub fn opt<T: Copy>(&mut self, data: Option<&[T]>) -> KArg {
        data.map_or(KArg::Null, |d| self.put(d))
    }
}

pub(crate) fn plan(variant: Variant, entry: (&str, &str), shape: (usize, usize), rows: usize, units: usize, args: Vec<KArg>) -> LaunchPlan {
    LaunchPlan {
        variant,
        entry_gemv: format!("{}gemv{}", entry.0, entry.1),
        entry_gemm: format!("{}gemm{}", entry.0, entry.1),
        out: shape.0,
        inf: shape.1,
        rows,
        units,
        min_units_per_split: 2 * WARPS as usize,
        smem: 0,
        persistent: false,
        xmap: XMap::Same,
        args,
    }
}

/// The layer as the kernels of `path` read it; `smem_limit` is the device's opt-in shared memory
/// per block (the tiled VQ kernel needs its codebooks there).
pub fn host_layer(layer: &PackedOnGpu, path: KernelPath, smem_limit: usize) -> Result<HostLayer> {
    layer.validate()?;
    if path == KernelPath::Tiled {
        if let Some(r) = GroupRows::from_layer(layer) {
            return Ok(gq_host_layer(layer.label(), &r));
        }
        if let Some(h) = super::vqt::host_layer(layer, smem_limit)? {
            return Ok(h);
        }
    }
    direct_host_layer(layer)
}

/// kernels/gq.cu on the tiled arrangement of any group layout.
pub fn gq_host_layer(label: String, r: &GroupRows) -> HostLayer {
    let lay = arrange_gq(r);
    let mut b = Bufs(Vec::new());
    let mut a = vec![b.put(&lay.qa), b.put(&lay.meta), if lay.percol { b.opt(lay.g_idx.as_deref()) } else { KArg::Null }];
    a.extend([KArg::X, KArg::Y, KArg::Ws, KArg::Counters]);
    a.extend([
        KArg::I(lay.out as i32),
        KArg::I(lay.inf as i32),
        KArg::Batch,
        KArg::I(lay.n_groups as i32),
        KArg::I(lay.group_size as i32),
        KArg::I(lay.div.mul as i32),
        KArg::I(lay.div.shr as i32),
        KArg::OutF16,
    ]);
    let prefix = format!("gq_{}_b{}_", lay.grid.name(), lay.bits);
    let v = Variant::new("gq", &[format!("GQ_BITS={}", lay.bits)]);
    let mut p = plan(v, (&prefix, if lay.percol { "_pc" } else { "" }), (lay.out, lay.inf), super::arrange::GQ_ROWS, lay.nch, a);
    p.min_units_per_split = WARPS as usize;
    HostLayer { label, out: lay.out, inf: lay.inf, bufs: b.0, launches: vec![p] }
}

/// The layer as the checkpoint-layout kernels (kernels/{awq,gptq,lowbit,vq}.cu) read it.
pub fn direct_host_layer(layer: &PackedOnGpu) -> Result<HostLayer> {
    let (out, inf) = layer.shape();
    let mut b = Bufs(Vec::new());
    let io = [KArg::X, KArg::Y, KArg::Ws, KArg::Counters];
    let launches = match layer {
        PackedOnGpu::Awq { group_size, qweight, qzeros, scales, .. } => {
            let mut a = vec![b.put(qweight), b.put(qzeros), b.put(scales)];
            a.extend(io);
            a.extend([KArg::I(out as i32), KArg::I(inf as i32), KArg::Batch, KArg::I(*group_size as i32), KArg::OutF16]);
            vec![plan(Variant::new("awq", &[]), ("awq_", ""), (out, inf), 64, inf.div_ceil(32), a)]
        }
        PackedOnGpu::Gptq { bits, group_size, qweight, qzeros, scales, g_idx, .. } => {
            let pc = match g_idx {
                Some(gi) => !trivial_g_idx(gi, *group_size, inf) || group_size % 32 != 0,
                None => group_size % 32 != 0,
            };
            let mut a = vec![b.put(qweight), b.put(qzeros), b.put(scales), if pc { b.opt(g_idx.as_deref()) } else { KArg::Null }];
            a.extend(io);
            let ng = gptq_groups(inf, *group_size, g_idx.as_deref()) as i32;
            a.extend([KArg::I(out as i32), KArg::I(inf as i32), KArg::Batch, KArg::I(ng), KArg::I(*group_size as i32), KArg::OutF16]);
            let prefix = format!("gptq_b{bits}_");
            vec![plan(Variant::new("gptq", &[]), (&prefix, if pc { "_pc" } else { "" }), (out, inf), 32, inf / 32, a)]
        }
        PackedOnGpu::Lowbit { bits, group_size, grid, qweight, scales, qzeros, g_idx, .. } => {
            let pc = g_idx.is_some() || group_size % 32 != 0;
            let mut a = vec![b.put(qweight), b.put(scales), b.opt(qzeros.as_deref()), b.opt(g_idx.as_deref())];
            a.extend(io);
            let row_words = (stream_row_bytes(inf, *bits) / 4) as i32;
            let ng = lowbit_groups(inf, *group_size, g_idx.as_deref()) as i32;
            a.extend([
                KArg::I(out as i32),
                KArg::I(inf as i32),
                KArg::Batch,
                KArg::I(row_words),
                KArg::I(ng),
                KArg::I(*group_size as i32),
                KArg::OutF16,
            ]);
            let prefix = format!("lowbit_{}_b{bits}_", grid.name());
            let v = Variant::new("lowbit", &[format!("LOWBIT_BITS={bits}")]);
            vec![plan(v, (&prefix, if pc { "_pc" } else { "" }), (out, inf), 16, inf.div_ceil(128), a)]
        }
        PackedOnGpu::Vq { v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers, .. } => {
            let mut vq_launch = |inf: usize,
                                 ib: u32,
                                 idx: &[u8],
                                 cb: &[f16],
                                 res: Option<(u32, &[u8], &[f16])>,
                                 cs: Option<&[f16]>,
                                 cbias: Option<&[f16]>| {
                let nv = out / v;
                let mut a = vec![b.put(idx), b.put(cb)];
                a.push(res.map_or(KArg::Null, |r| b.put(r.1)));
                a.push(res.map_or(KArg::Null, |r| b.put(r.2)));
                a.extend([b.opt(cs), b.opt(cbias)]);
                a.extend(io);
                let (rib, n_rcb, rrw) =
                    res.map_or((0, 0, 0), |r| (r.0 as i32, (r.2.len() / v) as i32, (stream_row_bytes(nv, r.0) / 4) as i32));
                a.extend([
                    KArg::I(out as i32),
                    KArg::I(inf as i32),
                    KArg::Batch,
                    KArg::I(*v as i32),
                    KArg::I(ib as i32),
                    KArg::I((stream_row_bytes(nv, ib) / 4) as i32),
                    KArg::I((cb.len() / v) as i32),
                    KArg::I(rib),
                    KArg::I(rrw),
                    KArg::I(n_rcb),
                    KArg::SmemFlag,
                    KArg::OutF16,
                ]);
                let mut p = plan(Variant::new("vq", &[]), ("vq_", ""), (out, inf), 16, inf.div_ceil(32), a);
                p.smem = (2 * (cb.len() + res.map_or(0, |r| r.2.len()))) as u32;
                p
            };
            let res = residual.as_ref().map(|r| (r.idx_bits, r.indices.as_slice(), r.codebook.as_slice()));
            let mut main = vq_launch(inf, *idx_bits, indices, codebook, res, col_scale.as_deref(), col_bias.as_deref());
            match outliers {
                None => vec![main],
                Some(ol) => {
                    main.xmap = XMap::MaskCols(ol.cols.clone());
                    let pick = |s: &Option<Vec<f16>>| s.as_ref().map(|s| ol.cols.iter().map(|&c| s[c as usize]).collect::<Vec<f16>>());
                    let (cs, cbias) = (pick(col_scale), pick(col_bias));
                    let mut o = vq_launch(ol.cols.len(), ol.idx_bits, &ol.indices, &ol.codebook, None, cs.as_deref(), cbias.as_deref());
                    o.xmap = XMap::Gather(ol.cols.clone());
                    vec![main, o]
                }
            }
        }
    };
    Ok(HostLayer { label: layer.label(), out, inf, bufs: b.0, launches })
}
