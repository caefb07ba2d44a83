//! The tiled VQ arrangement of kernels/vqt.cu (vector length a multiple of 8, codebooks in shared
//! memory): every lane's indices laid along the input in the order it consumes them.

use anyhow::Result;
use half::f16;
use rayon::prelude::*;

use super::compile::Variant;
use super::layer::{stream_row_bytes, PackedOnGpu};
use super::reference::bits_u8;
use super::upload::{plan, Bufs, HostLayer, KArg, LaunchPlan, XMap, WARPS};

/// mma steps (16 input columns each) per chunk (`VQT_STEPS`).
pub const VQT_STEPS: usize = 32;
/// Index-ring stages per warp (`VQT_STAGES`).
pub const VQT_STAGES: usize = 2;
/// Shared memory assumed available per block when the device is not known (H100/H200 opt-in).
pub const DEFAULT_SMEM_LIMIT: usize = 227 * 1024;

/// One codebook stage of a VQ layer: `[in, row_bytes]` index streams along the output vectors.
pub struct VqStage<'a> {
    pub idx_bits: u32,
    pub indices: &'a [u8],
    pub codebook: &'a [f16],
}

/// Column `c`, vector `j` of a stage.
pub fn stage_index(s: &VqStage, nvec: usize, c: usize, j: usize) -> u32 {
    let rb = stream_row_bytes(nvec, s.idx_bits);
    bits_u8(&s.indices[c * rb..(c + 1) * rb], j * s.idx_bits as usize, s.idx_bits)
}

/// Column of the lane's address row in step `s` of chunk `ch` (see kernels/vqt.cu).
pub fn vqt_col(ch: usize, s: usize, lane: usize) -> usize {
    (ch * VQT_STEPS + s) * 16 + (lane & 7) + 8 * (lane >> 4)
}
/// 8-output segment (of the whole layer) the lane addresses in m-tile `m`.
pub fn vqt_segment(m: usize, lane: usize) -> usize {
    2 * m + ((lane >> 3) & 1)
}

/// `[mtiles][nch][ib][32]` words: lane `l`'s 32 indices of each chunk as one bit stream.
pub fn arrange_indices(s: &VqStage, out: usize, inf: usize, v: usize) -> Vec<u32> {
    let ib = s.idx_bits as usize;
    let (mt, nch, nvec, v8) = (out.div_ceil(16), inf.div_ceil(16 * VQT_STEPS), out / v, v / 8);
    let per_tile = nch * ib * 32;
    let mut words = vec![0u32; mt * per_tile];
    words.par_chunks_mut(per_tile.max(1)).enumerate().for_each(|(m, tile)| {
        for ch in 0..nch {
            for l in 0..32 {
                let seg = vqt_segment(m, l);
                for st in 0..VQT_STEPS {
                    let c = vqt_col(ch, st, l);
                    if c >= inf || 8 * seg >= out {
                        continue;
                    }
                    let k = stage_index(s, nvec, c, seg / v8);
                    for b in 0..ib {
                        if k >> b & 1 == 1 {
                            let bit = st * ib + b;
                            tile[(ch * ib + bit / 32) * 32 + l] |= 1 << (bit % 32);
                        }
                    }
                }
            }
        }
    });
    words
}

/// Dynamic shared memory of a vqt launch (codebooks + index rings + reduction buffer).
pub fn vqt_smem(main: &VqStage, res: Option<&VqStage>) -> usize {
    let wpc = main.idx_bits as usize + res.map_or(0, |r| r.idx_bits as usize);
    2 * (main.codebook.len() + res.map_or(0, |r| r.codebook.len())) + WARPS as usize * VQT_STAGES * wpc * 128 + WARPS as usize * 4 * 512
}

#[allow(clippy::too_many_arguments)]
fn vqt_launch(
    b: &mut Bufs,
    out: usize,
    inf: usize,
    v: usize,
    main: &VqStage,
    res: Option<&VqStage>,
    cs: Option<&[f16]>,
    cbias: Option<&[f16]>,
) -> LaunchPlan {
    let mut a = vec![b.put(&arrange_indices(main, out, inf, v)), res.map_or(KArg::Null, |r| b.put(&arrange_indices(r, out, inf, v)))];
    a.push(b.put(main.codebook));
    a.push(res.map_or(KArg::Null, |r| b.put(r.codebook)));
    a.extend([b.opt(cs), b.opt(cbias), KArg::X, KArg::Y, KArg::Ws, KArg::Counters]);
    a.extend([
        KArg::I(out as i32),
        KArg::I(inf as i32),
        KArg::Batch,
        KArg::I((v / 8) as i32),
        KArg::I(main.idx_bits as i32),
        KArg::I(res.map_or(0, |r| r.idx_bits as i32)),
        KArg::I((main.codebook.len() / 8) as i32),
        KArg::I(res.map_or(0, |r| (r.codebook.len() / 8) as i32)),
        KArg::Items,
        KArg::NSplit,
        KArg::NTileY,
        KArg::OutF16,
    ]);
    let mut p = plan(Variant::new("vqt", &[]), ("vqt_", ""), (out, inf), 16, inf.div_ceil(16 * VQT_STEPS), a);
    p.min_units_per_split = WARPS as usize;
    p.smem = vqt_smem(main, res) as u32;
    p.persistent = true;
    p
}

/// The layer for kernels/vqt.cu when it qualifies (VQ, `v % 8 == 0`, codebooks and rings within
/// `smem_limit` bytes of shared memory); None otherwise (the caller falls back to kernels/vq.cu).
pub fn host_layer(layer: &PackedOnGpu, smem_limit: usize) -> Result<Option<HostLayer>> {
    let PackedOnGpu::Vq { out, in_features, v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers } = layer else {
        return Ok(None);
    };
    let (out, inf, v) = (*out, *in_features, *v);
    if v % 8 != 0 {
        return Ok(None);
    }
    let main = VqStage { idx_bits: *idx_bits, indices, codebook };
    let res = residual.as_ref().map(|r| VqStage { idx_bits: r.idx_bits, indices: &r.indices, codebook: &r.codebook });
    let ost = outliers.as_ref().map(|o| VqStage { idx_bits: o.idx_bits, indices: &o.indices, codebook: &o.codebook });
    let limit = smem_limit.saturating_sub(1024);
    let fits = vqt_smem(&main, res.as_ref()) <= limit && ost.as_ref().is_none_or(|o| vqt_smem(o, None) <= limit);
    if !fits {
        return Ok(None);
    }
    let mut b = Bufs(Vec::new());
    let mut launches = vec![vqt_launch(&mut b, out, inf, v, &main, res.as_ref(), col_scale.as_deref(), col_bias.as_deref())];
    if let (Some(ol), Some(o)) = (outliers, &ost) {
        launches[0].xmap = XMap::MaskCols(ol.cols.clone());
        let pick = |s: &Option<Vec<f16>>| s.as_ref().map(|s| ol.cols.iter().map(|&c| s[c as usize]).collect::<Vec<f16>>());
        let (cs, cbias) = (pick(col_scale), pick(col_bias));
        // The outlier columns as a layer of their own: in = n_cols, indices [n_cols, row_bytes].
        let mut p = vqt_launch(&mut b, out, ol.cols.len(), v, o, None, cs.as_deref(), cbias.as_deref());
        p.xmap = XMap::Gather(ol.cols.clone());
        launches.push(p);
    }
    Ok(Some(HostLayer { label: layer.label(), out, inf, bufs: b.0, launches }))
}
