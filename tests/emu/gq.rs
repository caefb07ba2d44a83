//! kernels/gq.cu, lane by lane.
use super::*;
use half::f16;
use lowbit::cuda::arrange::{GqLayout, GQ_CHUNK};
use lowbit::cuda::GpuGrid;

/// A lane's chunk words and window (gq.cu: gq_window).
pub fn gq_words(lay: &GqLayout, m: usize, ch: usize, l: usize) -> Vec<u32> {
    (0..4 * lay.bits as usize).map(|k| lay.qa[lay.qa_index(m, ch, l, k)]).collect()
}
pub fn gq_window(w: &[u32], b: u32, t: usize, hf: usize) -> u64 {
    let bit = 16 * b as usize * t + 8 * b as usize * hf;
    let (wi, sh) = (bit >> 5, bit & 31);
    let mut v = w[wi] as u64;
    if wi + 1 < w.len() {
        v |= (w[wi + 1] as u64) << 32;
    }
    if sh != 0 {
        v >>= sh;
        if wi + 2 < w.len() {
            v |= (w[wi + 2] as u64) << (64 - sh);
        }
    }
    v
}
pub fn meta(lay: &GqLayout, m: usize, grp: usize, g: usize) -> [u32; 2] {
    let i = lay.meta_index(m, grp, g, 0);
    [lay.meta[i], if lay.meta_words == 2 { lay.meta[i + 1] } else { 0x6400_6400 }]
}
/// gq.cu's per-column scale and zero pairs for pair p (columns col+2p, col+2p+1) of a lane.
pub fn percol_pairs(lay: &GqLayout, m: usize, g: usize, col: usize) -> ([u32; 4], [u32; 4], [u32; 4], [u32; 4]) {
    let mut sw = [0u32; 8];
    let mut zw = [0u32; 8];
    for j in 0..8 {
        let cc = col + j;
        let gi = if cc < lay.inf {
            match &lay.g_idx {
                Some(gx) => gx[cc] as usize,
                None => lay.div.div(cc as u32) as usize,
            }
        } else {
            0
        };
        let mw = meta(lay, m, gi, g);
        sw[j] = mw[0];
        zw[j] = mw[1];
    }
    let (mut sc0, mut sc1, mut zc0, mut zc1) = ([0u32; 4], [0u32; 4], [0u32; 4], [0u32; 4]);
    for p in 0..4 {
        sc0[p] = prmt(sw[2 * p], sw[2 * p + 1], 0x5410);
        sc1[p] = prmt(sw[2 * p], sw[2 * p + 1], 0x7632);
        zc0[p] = prmt(zw[2 * p], zw[2 * p + 1], 0x5410);
        zc1[p] = prmt(zw[2 * p], zw[2 * p + 1], 0x7632);
        if lay.grid == GpuGrid::HalfInt {
            let inv = (0x3C00u32 - ((lay.bits - 1) << 10)) * 0x10001;
            sc0[p] = hmul2(sc0[p], inv);
            sc1[p] = hmul2(sc1[p], inv);
        }
    }
    (sc0, sc1, zc0, zc1)
}

// ---------------------------------------------------------------------------------------------
// Decode proof for gq

/// Every weight as the gq kernel's registers hold it, `[out][in]`.
pub fn gq_decode(lay: &GqLayout) -> Vec<f32> {
    let (out, inf, b) = (lay.out, lay.inf, lay.bits);
    let mut w = vec![f32::NAN; out * inf];
    for m in 0..lay.mtiles {
        for ch in 0..lay.nch {
            for l in 0..32 {
                let (g, tq) = (l / 4, l % 4);
                let words = gq_words(lay, m, ch, l);
                for t in 0..8 {
                    let col = ch * GQ_CHUNK + 32 * t + 8 * tq;
                    if col >= inf {
                        continue;
                    }
                    let wins = [gq_window(&words, b, t, 0), gq_window(&words, b, t, 1)];
                    for (hf, win) in wins.iter().enumerate() {
                        let row = m * 16 + g + 8 * hf;
                        for p in 0..4u32 {
                            // Pair p: window slots p and p+4 = columns 2p and 2p+1 (gq.cu layout).
                            let (lo_c, hi_c) = (col + 2 * p as usize, col + 2 * p as usize + 1);
                            let vals: [f32; 2] = if !lay.percol {
                                // The group of the window: contiguous groups, group_size % 32 == 0.
                                let grp = lay.div.div(col as u32) as usize;
                                let mw = meta(lay, m, grp, g);
                                let zz = prmt(mw[1], mw[1], if hf == 0 { 0x1010 } else { 0x3232 });
                                let s = h(if hf == 0 { mw[0] & 0xFFFF } else { mw[0] >> 16 }) as f32;
                                let a = grid_pair(b, lay.grid, *win, p, zz);
                                let mult = grid_mult(b, lay.grid, s);
                                [h(a & 0xFFFF) as f32 * mult, h(a >> 16) as f32 * mult]
                            } else {
                                let (sc0, sc1, zc0, zc1) = percol_pairs(lay, m, g, col);
                                let (sc, zc) = if hf == 0 { (sc0, zc0) } else { (sc1, zc1) };
                                let a = hmul2(grid_pair(b, lay.grid, *win, p, zc[p as usize]), sc[p as usize]);
                                [h(a & 0xFFFF) as f32, h(a >> 16) as f32]
                            };
                            for (c, v) in [(lo_c, vals[0]), (hi_c, vals[1])] {
                                if row < out && c < inf {
                                    w[row * inf + c] = v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    w
}

pub fn emulate_gq(lay: &GqLayout, x: &[f16], batch: usize, ksplit: usize) -> Vec<f32> {
    let nt = if batch <= 8 { 1 } else { 4 };
    let (out, inf, b) = (lay.out, lay.inf, lay.bits);
    let n_kb = inf.div_ceil(32);
    let kbpg = lay.group_size / 32;
    let mut y = vec![0f32; batch * out];
    for m in 0..lay.mtiles {
        for ty in 0..batch.div_ceil(8 * nt) {
            let n0 = ty * 8 * nt;
            for z in 0..ksplit {
                let (cb0, cb1) = k_range(lay.nch, z, ksplit);
                for warp in 0..4 {
                    let c0 = cb0 + (cb1 - cb0) * warp / 4;
                    let c1 = cb0 + (cb1 - cb0) * (warp + 1) / 4;
                    let mut acc = vec![[[0f32; 4]; 32]; nt];
                    let mut tmp = vec![[[0f32; 4]; 32]; nt];
                    // Per-lane group state (uniform across lanes except the meta values).
                    let (mut grp, mut left) = (0usize, 0usize);
                    let mut m01 = [[0f32; 2]; 32];
                    let mut zz = [[0x6400_6400u32; 2]; 32];
                    let mut nxt = [[0u32, 0x6400_6400]; 32];
                    let load = |mw: [u32; 2]| {
                        let s = |v: u32| grid_mult(b, lay.grid, h(v) as f32);
                        ([s(mw[0] & 0xFFFF), s(mw[0] >> 16)], [prmt(mw[1], mw[1], 0x1010), prmt(mw[1], mw[1], 0x3232)])
                    };
                    if !lay.percol && c0 < c1 {
                        let kb0 = c0 * 8;
                        grp = lay.div.div((kb0 * 32) as u32) as usize;
                        left = kbpg - (kb0 - grp * kbpg);
                        for l in 0..32 {
                            (m01[l], zz[l]) = load(meta(lay, m, grp, l / 4));
                            if grp + 1 < lay.n_groups {
                                nxt[l] = meta(lay, m, grp + 1, l / 4);
                            }
                        }
                    }
                    for c in c0..c1 {
                        let words: Vec<Vec<u32>> = (0..32).map(|l| gq_words(lay, m, c, l)).collect();
                        for t in 0..8 {
                            let kb = c * 8 + t;
                            if kb >= n_kb {
                                break;
                            }
                            if !lay.percol {
                                if left == 0 {
                                    for (ntile, tm) in tmp.iter_mut().enumerate() {
                                        for l in 0..32 {
                                            for i in 0..4 {
                                                acc[ntile][l][i] += m01[l][i / 2] * tm[l][i];
                                                tm[l][i] = 0.0;
                                            }
                                        }
                                    }
                                    grp += 1;
                                    left = kbpg;
                                    for l in 0..32 {
                                        (m01[l], zz[l]) = load(nxt[l]);
                                        if grp + 1 < lay.n_groups {
                                            nxt[l] = meta(lay, m, grp + 1, l / 4);
                                        }
                                    }
                                }
                                left -= 1;
                            }
                            for hh in 0..2u32 {
                                let mut a = [[0u32; 4]; 32];
                                for l in 0..32 {
                                    let (g, tq) = (l / 4, l % 4);
                                    let col = kb * 32 + 8 * tq;
                                    let (w0, w1) = (gq_window(&words[l], b, t, 0), gq_window(&words[l], b, t, 1));
                                    let (pl, ph) = (2 * hh, 2 * hh + 1);
                                    a[l] = if !lay.percol {
                                        [
                                            grid_pair(b, lay.grid, w0, pl, zz[l][0]),
                                            grid_pair(b, lay.grid, w1, pl, zz[l][1]),
                                            grid_pair(b, lay.grid, w0, ph, zz[l][0]),
                                            grid_pair(b, lay.grid, w1, ph, zz[l][1]),
                                        ]
                                    } else {
                                        let (sc0, sc1, zc0, zc1) = percol_pairs(lay, m, g, col);
                                        let (pl, ph) = (pl as usize, ph as usize);
                                        [
                                            hmul2(grid_pair(b, lay.grid, w0, pl as u32, zc0[pl]), sc0[pl]),
                                            hmul2(grid_pair(b, lay.grid, w1, pl as u32, zc1[pl]), sc1[pl]),
                                            hmul2(grid_pair(b, lay.grid, w0, ph as u32, zc0[ph]), sc0[ph]),
                                            hmul2(grid_pair(b, lay.grid, w1, ph as u32, zc1[ph]), sc1[ph]),
                                        ]
                                    };
                                }
                                for ntile in 0..nt {
                                    let mut bf = [[0u32; 2]; 32];
                                    for (l, bl) in bf.iter_mut().enumerate() {
                                        let (g, tq) = (l / 4, l % 4);
                                        // B registers: the x words as loaded (x[c+4h..], x[c+4h+2..]).
                                        let xv = load_x8(x, n0 + ntile * 8 + g, batch, inf, kb * 32 + 8 * tq);
                                        *bl = [xv[2 * hh as usize], xv[2 * hh as usize + 1]];
                                    }
                                    mma(&a, &bf, if lay.percol { &mut acc[ntile] } else { &mut tmp[ntile] });
                                }
                            }
                        }
                    }
                    if !lay.percol {
                        for (ntile, tm) in tmp.iter().enumerate() {
                            for l in 0..32 {
                                for i in 0..4 {
                                    acc[ntile][l][i] += m01[l][i / 2] * tm[l][i];
                                }
                            }
                        }
                    }
                    // Epilogue: row g / g+8 of the m-tile, batch column n0 + 8*nt + 2tq + (i&1).
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
        }
    }
    y
}
