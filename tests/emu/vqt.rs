//! kernels/vqt.cu, lane by lane.
use super::*;
use half::f16;
use lowbit::cuda::vqt::{arrange_indices, vqt_segment, VqStage, VQT_STEPS};
use lowbit::cuda::PackedOnGpu;

// ---------------------------------------------------------------------------------------------
// vqt

/// ldmatrix.x4.trans: lane l supplies the address (in halves) of stored row l%8 of matrix l/8;
/// lane (g, tq) receives from each matrix the elements (stored row 2tq, col g), (2tq+1, g).
pub fn ldsm_x4_trans(smem: &[u16], addr: &[usize; 32]) -> [[u32; 4]; 32] {
    let mut r = [[0u32; 4]; 32];
    for (l, rl) in r.iter_mut().enumerate() {
        let (g, tq) = (l / 4, l % 4);
        for (mi, reg) in rl.iter_mut().enumerate() {
            let lo = smem[addr[8 * mi + 2 * tq] + g] as u32;
            let hi = smem[addr[8 * mi + 2 * tq + 1] + g] as u32;
            *reg = lo | hi << 16;
        }
    }
    r
}

/// Lane stream of indices (vqt.cu: IdxStream) for (m-tile, chunk).
pub fn lane_indices(words: &[u32], nch: usize, ib: usize, m: usize, ch: usize, l: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let (mut bits, mut n, mut w) = (0u64, 0usize, 0usize);
    for _ in 0..VQT_STEPS {
        if n < ib {
            bits |= (words[((m * nch + ch) * ib + w) * 32 + l] as u64) << n;
            w += 1;
            n += 32;
        }
        out.push((bits as u32) & ((1 << ib) - 1));
        bits >>= ib;
        n -= ib;
    }
    out
}

/// One vqt launch (stage, optional residual, scale, bias) over every work item, lane by lane.
#[allow(clippy::too_many_arguments)]
pub fn emulate_vqt(
    out: usize,
    inf: usize,
    v: usize,
    main: &VqStage,
    res: Option<&VqStage>,
    cs: Option<&[f16]>,
    cb: Option<&[f16]>,
    x: &[f16],
    batch: usize,
    nsplit: usize,
) -> Vec<f32> {
    let nt = if batch <= 8 { 1 } else { 4 };
    let (v8, mt, nch, n_step) = (v / 8, out.div_ceil(16), inf.div_ceil(16 * VQT_STEPS), inf.div_ceil(16));
    let mw = arrange_indices(main, out, inf, v);
    let rw = res.map(|r| arrange_indices(r, out, inf, v));
    // Shared memory as the kernel fills it: main codebook, then the residual one (in halves).
    let mut smem: Vec<u16> = main.codebook.iter().map(|h| h.to_bits()).collect();
    let rbase = smem.len();
    if let Some(r) = res {
        smem.extend(r.codebook.iter().map(|h| h.to_bits()));
    }
    let x2 = |arr: &[f16], n: usize, c: usize| -> u32 {
        let g = |c: usize| if c < inf { arr[n * inf + c].to_bits() as u32 } else { 0 };
        g(c) | g(c + 1) << 16
    };
    let mut y = vec![0f32; batch * out];
    let ntile_y = batch.div_ceil(8 * nt);
    for it in 0..mt * ntile_y * nsplit {
        let (z, tile) = (it % nsplit, it / nsplit);
        let (ty, m) = (tile % ntile_y, tile / ntile_y);
        let n0 = ty * 8 * nt;
        let (cz0, cz1) = k_range(nch, z, nsplit);
        for warp in 0..4 {
            let c0 = cz0 + (cz1 - cz0) * warp / 4;
            let c1 = cz0 + (cz1 - cz0) * (warp + 1) / 4;
            let mut acc = vec![[[0f32; 4]; 32]; nt];
            for c in c0..c1 {
                let mi: Vec<Vec<u32>> = (0..32).map(|l| lane_indices(&mw, nch, main.idx_bits as usize, m, c, l)).collect();
                let ri: Option<Vec<Vec<u32>>> =
                    rw.as_ref().map(|rw| (0..32).map(|l| lane_indices(rw, nch, res.unwrap().idx_bits as usize, m, c, l)).collect());
                for s in 0..VQT_STEPS {
                    let step = c * VQT_STEPS + s;
                    if step >= n_step {
                        break;
                    }
                    let seg = |l: usize| vqt_segment(m, l) % v8;
                    let addr: [usize; 32] = std::array::from_fn(|l| (mi[l][s] as usize * v8 + seg(l)) * 8);
                    let mut a = ldsm_x4_trans(&smem, &addr);
                    if let Some(ri) = &ri {
                        let raddr: [usize; 32] = std::array::from_fn(|l| rbase + (ri[l][s] as usize * v8 + seg(l)) * 8);
                        let r = ldsm_x4_trans(&smem, &raddr);
                        for l in 0..32 {
                            for k in 0..4 {
                                a[l][k] = hadd2(a[l][k], r[l][k]);
                            }
                        }
                    }
                    for (ntile, acc_t) in acc.iter_mut().enumerate() {
                        let mut bx = [[0u32; 2]; 32];
                        let mut bb = [[0u32; 2]; 32];
                        for l in 0..32 {
                            let (g, tq) = (l / 4, l % 4);
                            let n = n0 + ntile * 8 + g;
                            let (ca, cbb) = (step * 16 + 2 * tq, step * 16 + 2 * tq + 8);
                            let (xa, xb) = if n < batch { (x2(x, n, ca), x2(x, n, cbb)) } else { (0, 0) };
                            bx[l] = match cs {
                                Some(cs) => [hmul2(xa, x2(cs, 0, ca)), hmul2(xb, x2(cs, 0, cbb))],
                                None => [xa, xb],
                            };
                            if let Some(cb) = cb {
                                bb[l] = [hmul2(xa, x2(cb, 0, ca)), hmul2(xb, x2(cb, 0, cbb))];
                            }
                        }
                        mma(&a, &bx, acc_t);
                        if cb.is_some() {
                            mma(&[[0x3C00_3C00; 4]; 32], &bb, acc_t);
                        }
                    }
                }
            }
            for (ntile, a) in acc.iter().enumerate() {
                for l in 0..32 {
                    for i in 0..4 {
                        let o = m * 16 + l / 4 + 8 * (i / 2);
                        let n = n0 + ntile * 8 + 2 * (l % 4) + (i & 1);
                        if o < out && n < batch {
                            y[n * out + o] += a[l][i];
                        }
                    }
                }
            }
        }
    }
    y
}

/// A VQ layer through the host's launches (main + outliers, with their x maps), emulated.
pub fn emulate_vq_layer(l: &PackedOnGpu, x: &[f16], batch: usize, nsplit: usize) -> Vec<f32> {
    let PackedOnGpu::Vq { out, in_features, v, idx_bits, indices, codebook, residual, col_scale, col_bias, outliers } = l else { panic!() };
    let (out, inf, v) = (*out, *in_features, *v);
    let main = VqStage { idx_bits: *idx_bits, indices, codebook };
    let res = residual.as_ref().map(|r| VqStage { idx_bits: r.idx_bits, indices: &r.indices, codebook: &r.codebook });
    let mut xm = x.to_vec();
    if let Some(ol) = outliers {
        for n in 0..batch {
            for &c in &ol.cols {
                xm[n * inf + c as usize] = f16::ZERO;
            }
        }
    }
    let mut y = emulate_vqt(out, inf, v, &main, res.as_ref(), col_scale.as_deref(), col_bias.as_deref(), &xm, batch, nsplit);
    if let Some(ol) = outliers {
        let k = ol.cols.len();
        let pick = |s: &Option<Vec<f16>>| s.as_ref().map(|s| ol.cols.iter().map(|&c| s[c as usize]).collect::<Vec<f16>>());
        let xg: Vec<f16> = (0..batch).flat_map(|n| ol.cols.iter().map(move |&c| x[n * inf + c as usize])).collect();
        let st = VqStage { idx_bits: ol.idx_bits, indices: &ol.indices, codebook: &ol.codebook };
        let yo = emulate_vqt(out, k, v, &st, None, pick(col_scale).as_deref(), pick(col_bias).as_deref(), &xg, batch, nsplit);
        y.iter_mut().zip(yo).for_each(|(a, b)| *a += b);
    }
    y
}
