// Vector-quantized (VPTQ-style) dequant-matmul y = x * W^T, lowbit's own VQ layout.
//
// LAYOUT ASSUMPTIONS (the Rust side packs to exactly this):
//   * Vectors run along the OUTPUT dimension of each input column: vector j of input column i covers
//     outputs j*v .. j*v+v-1. out % v == 0, n_vec = out / v.
//   * idx      U8 [in, idx_row_bytes]   per input column i, a little-endian bit stream of n_vec
//                                       indices of idx_bits bits each (1 <= idx_bits <= 16): index of
//                                       vector j at stream bits [j*idx_bits, j*idx_bits+idx_bits),
//                                       stream bit k = bit k%8 of byte k/8; idx_row_bytes =
//                                       ceil(n_vec*idx_bits/8) rounded up to a multiple of 4
//                                       (passed as idx_row_words = idx_row_bytes/4).
//   * codebook F16 [n_cb, v]            row-major, n_cb <= 2^idx_bits.
//   * optional residual: ridx U8 [in, ridx_row_bytes] (same scheme, res_idx_bits) and
//                        rcb F16 [n_rcb, v]; null pointers when absent.
//   * optional per-input-column col_scale F16 [in] and col_bias F16 [in] (null when absent).
//   * w[o, i] = (cb[idx(i, o/v), o%v] + rcb[ridx(i, o/v), o%v]) * col_scale[i] + col_bias[i]
//   * Outlier columns (VqQ::outlier_*) are NOT handled here: the caller runs them as a separate
//     dense/VQ product and adds the result.
//
// Entry points: vq_<gemv|gemm>(idx, cb, ridx, rcb, col_scale, col_bias, x, y, ws, counters,
//                              out, in, batch, v, idx_bits, idx_row_words, n_cb,
//                              res_idx_bits, ridx_row_words, n_rcb, cb_in_smem, out_f16)
// Launch: block (LB_THREADS,1,1); grid (ceil(out/16), ceil(batch/(8*NT)), ksplit);
//   dynamic shared memory = cb_in_smem ? (n_cb + n_rcb) * v * 2 bytes : 0 (the host raises the
//   function's max dynamic smem attribute above 48 KiB when needed, or passes cb_in_smem = 0 and the
//   codebooks are read through the read-only cache).
// Math: A = codebook entries (exact fp16, main + residual added in fp16), B = x * col_scale (scale
// folded into the activations, one multiply per activation and not per weight); the bias term
// sum_i x[n,i] * col_bias[i] is the same for every output and is added by one extra mma per step with
// A = ones and B = x * col_bias.
// Row map: row g -> o0 + 2g, row g+8 -> o0 + 2g + 1, so both rows of a lane usually share one index.
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif

struct VqRowMap {
    int o0;
    LB_DEV int operator()(int, int half, int g) const { return o0 + 2 * g + half; }
};

LB_DEV u32 vq_index(const u32* __restrict__ base, int row_words, int col, int j, int ib) {
    const int bit = j * ib;
    const u32* p = base + (size_t)col * row_words + (bit >> 5);
    const int sh = bit & 31;
    u64 v = __ldg(p);
    if (sh + ib > 32) v |= (u64)__ldg(p + 1) << 32;
    return (u32)(v >> sh) & ((1u << ib) - 1u);
}

LB_DEV u16 cb_get(const u16* __restrict__ gcb, const u16* scb, bool smem, int off) {
    return smem ? scb[off] : __ldg(gcb + off);
}

// Multiply 8 packed halves by 8 packed halves (fp32 math, one rounding).
LB_DEV uint4 hmul8(const uint4& a, const uint4& b) {
    u32 av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w}, r[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float lo = h2f((u16)(av[i] & 0xFFFFu)) * h2f((u16)(bv[i] & 0xFFFFu));
        const float hi = h2f((u16)(av[i] >> 16)) * h2f((u16)(bv[i] >> 16));
        r[i] = pack2(f2h(lo), f2h(hi));
    }
    return make_uint4(r[0], r[1], r[2], r[3]);
}

template <int NT>
LB_DEV void vq_body(const u32* __restrict__ idx, const u16* __restrict__ cb,
                    const u32* __restrict__ ridx, const u16* __restrict__ rcb,
                    const u16* __restrict__ col_scale, const u16* __restrict__ col_bias,
                    const u16* __restrict__ x, void* __restrict__ y, float* __restrict__ ws,
                    int* __restrict__ counters, int out, int in, int batch, int v, int idx_bits,
                    int idx_row_words, int n_cb, int res_idx_bits, int ridx_row_words, int n_rcb,
                    int cb_in_smem, int out_f16) {
    __shared__ float red[LB_WARPS * NT * 4 * 32];
    extern __shared__ u16 vq_smem[];
    const bool smem = cb_in_smem != 0;
    const bool has_res = ridx != nullptr && rcb != nullptr;
    if (smem) {
        const int ncb = n_cb * v, nrcb = has_res ? n_rcb * v : 0;
        for (int i = threadIdx.x; i < ncb; i += LB_THREADS) vq_smem[i] = __ldg(cb + i);
        for (int i = threadIdx.x; i < nrcb; i += LB_THREADS) vq_smem[ncb + i] = __ldg(rcb + i);
        __syncthreads();
    }
    const u16* scb = vq_smem;
    const u16* srcb = vq_smem + n_cb * v;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int o0 = blockIdx.x * 16;
    const int n0 = blockIdx.y * (8 * NT);
    const int r0 = o0 + 2 * g, r1 = r0 + 1;
    const bool ok0 = r0 < out, ok1 = r1 < out;
    const int j0 = r0 / v, e0 = r0 - j0 * v;
    const int j1 = r1 / v, e1 = r1 - j1 * v;
    const bool share = j0 == j1;

    float acc[1][NT][4];
    zero_acc<1, NT>(acc);

    const int units = (in + 31) >> 5;
    int u0, u1;
    lb_k_range(units, u0, u1);
    for (int kb = u0 + warp; kb < u1; kb += LB_WARPS) {
        const int c = kb * 32 + 8 * tq;
        // Dequantized values of rows r0 / r1 for the lane's 8 columns.
        u32 va[8], vb[8];
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
            const int col = c + jj;
            u32 a = 0u, b = 0u;
            if (col < in) {
                u32 i0 = 0u, q0 = 0u;
                if (ok0) {
                    i0 = vq_index(idx, idx_row_words, col, j0, idx_bits);
                    a = cb_get(cb, scb, smem, (int)i0 * v + e0);
                    if (has_res) {
                        q0 = vq_index(ridx, ridx_row_words, col, j0, res_idx_bits);
                        a |= (u32)cb_get(rcb, srcb, smem, (int)q0 * v + e0) << 16;
                    }
                }
                if (ok1) {
                    const u32 i1 = (share && ok0) ? i0 : vq_index(idx, idx_row_words, col, j1, idx_bits);
                    b = cb_get(cb, scb, smem, (int)i1 * v + e1);
                    if (has_res) {
                        const u32 q1 = (share && ok0) ? q0 : vq_index(ridx, ridx_row_words, col, j1, res_idx_bits);
                        b |= (u32)cb_get(rcb, srcb, smem, (int)q1 * v + e1) << 16;
                    }
                }
            }
            va[jj] = a;
            vb[jj] = b;
        }
        uint4 xs[NT], xb[NT];
        const bool has_bias = col_bias != nullptr;
        uint4 sv = make_uint4(0u, 0u, 0u, 0u), bv = sv;
        if (col_scale != nullptr) sv = load_x8(col_scale, 0, 1, in, c);
        if (has_bias) bv = load_x8(col_bias, 0, 1, in, c);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint4 xv = load_x8(x, n0 + nt * 8 + g, batch, in, c);
            xs[nt] = col_scale != nullptr ? hmul8(xv, sv) : xv;
            xb[nt] = has_bias ? hmul8(xv, bv) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int pl = 2 * h, ph = 2 * h + 1;  // pairs (pl, pl+4) and (ph, ph+4)
            u32 a0 = pack2(va[pl], va[pl + 4]);
            u32 a1 = pack2(vb[pl], vb[pl + 4]);
            u32 a2 = pack2(va[ph], va[ph + 4]);
            u32 a3 = pack2(vb[ph], vb[ph + 4]);
            if (has_res) {
                a0 = hadd2(a0, pack2(va[pl] >> 16, va[pl + 4] >> 16));
                a1 = hadd2(a1, pack2(vb[pl] >> 16, vb[pl + 4] >> 16));
                a2 = hadd2(a2, pack2(va[ph] >> 16, va[ph + 4] >> 16));
                a3 = hadd2(a3, pack2(vb[ph] >> 16, vb[ph + 4] >> 16));
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                u32 b0, b1;
                x_frag(xs[nt], h, b0, b1);
                mma16816(acc[0][nt], a0, a1, a2, a3, b0, b1);
                if (has_bias) {
                    const u32 ones = 0x3C003C00u;
                    x_frag(xb[nt], h, b0, b1);
                    mma16816(acc[0][nt], ones, ones, ones, ones, b0, b1);
                }
            }
        }
    }
    VqRowMap rm;
    rm.o0 = o0;
    lb_epilogue<1, NT>(acc, red, nullptr, rm, n0, y, ws, counters, out, batch, out_f16);
}

#define VQ_ARGS                                                                                    \
    const u32 *__restrict__ idx, const u16 *__restrict__ cb, const u32 *__restrict__ ridx,         \
        const u16 *__restrict__ rcb, const u16 *__restrict__ col_scale,                            \
        const u16 *__restrict__ col_bias, const u16 *__restrict__ x, void *__restrict__ y,         \
        float *__restrict__ ws, int *__restrict__ counters, int out, int in, int batch, int v,     \
        int idx_bits, int idx_row_words, int n_cb, int res_idx_bits, int ridx_row_words,          \
        int n_rcb, int cb_in_smem, int out_f16
#define VQ_PASS                                                                                    \
    idx, cb, ridx, rcb, col_scale, col_bias, x, y, ws, counters, out, in, batch, v, idx_bits,      \
        idx_row_words, n_cb, res_idx_bits, ridx_row_words, n_rcb, cb_in_smem, out_f16

extern "C" __global__ void __launch_bounds__(LB_THREADS) vq_gemv(VQ_ARGS) { vq_body<1>(VQ_PASS); }
extern "C" __global__ void __launch_bounds__(LB_THREADS) vq_gemm(VQ_ARGS) {
    vq_body<LB_GEMM_NT>(VQ_PASS);
}
