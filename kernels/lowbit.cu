// lowbit's own packed layout: dequant-matmul y = x * W^T on tensor cores.
//
// Layout (bits B in 2..8, any in_features, last group may be short):
//   qweight  U8  [out, row_bytes]   each row is a little-endian bit stream; the code of column c is
//                                   stream bits [c*B, c*B+B), stream bit k = bit k%8 of byte k/8;
//                                   row_bytes = ceil(in*B/8) rounded up to a multiple of 4
//                                   (the kernel reads it as u32 words: row_words = row_bytes/4)
//   scales   F16 [out, n_groups]
//   qzeros   U8  [out, n_groups]    affine grid only (may be null otherwise)
//   g_idx    I32 [in]               optional; null -> group of column c is c / group_size
// Grids:
//   affine : w = (q - z) * s
//   halfint: w = s * (q - n + 0.5) / n, n = 2^(B-1)         (StatsQ)
//   shift  : w = +-s * 2^-p, top bit of the code = sign, low B-1 bits = p   (DenseShift)
//
// Entry points (one per bits x grid x path):
//   lowbit_<grid>_b<B>_<gemv|gemm>[_pc](qweight, scales, qzeros, g_idx, x, y, ws, counters,
//                                       out, in, batch, row_words, n_groups, group_size, out_f16)
//   gemv: batch tile 8 (use for batch 1..8), gemm: batch tile 32 (batch > 8).
//   _pc : per-column scale path, required when g_idx is non-null or group_size % 32 != 0; otherwise
//         the factored path applies one fp32 multiply per (group, output) and no multiply per
//         weight (the shift grid builds +-2^-p directly as fp16 bits).
// Launch: block (LB_THREADS,1,1); grid (ceil(out/16), ceil(batch/(8*NT)), ksplit), no dynamic smem.
//   ws: f32 [batch*out] and counters: i32 [grid.x*grid.y], both zeroed once at allocation (the
//   kernel leaves them zeroed); only touched when ksplit > 1.
// Work unit: a "macro block" of 128 input columns. In it, lane tq of each quad loads B contiguous u32
// words per row (one 128-bit load for B = 4, two for B = 8), i.e. the four 8-column windows of one
// 32-column k-block, and a 4x4 shuffle transpose inside the quad hands every lane its window of each
// k-block, so every mma step stays inside a 32-column k-block (and inside one group).
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif

template <int B>
LB_DEV void lb_load_row(const u32* __restrict__ row, int woff, int row_words, bool ok, u32 (&w)[B]) {
#pragma unroll
    for (int i = 0; i < B; ++i) w[i] = 0u;
    if (!ok) return;
    if (woff + B <= row_words) {
        if ((B % 4) == 0 && (row_words & 3) == 0) {
#pragma unroll
            for (int q = 0; q < B / 4; ++q) {
                uint4 v = ldg_stream4(row + woff + 4 * q);
                w[4 * q] = v.x;
                w[4 * q + 1] = v.y;
                w[4 * q + 2] = v.z;
                w[4 * q + 3] = v.w;
            }
        } else if ((B % 2) == 0 && (row_words & 1) == 0) {
#pragma unroll
            for (int q = 0; q < B / 2; ++q) {
                uint2 v = ldg_stream2(row + woff + 2 * q);
                w[2 * q] = v.x;
                w[2 * q + 1] = v.y;
            }
        } else {
#pragma unroll
            for (int i = 0; i < B; ++i) w[i] = ldg_stream(row + woff + i);
        }
    } else {
#pragma unroll
        for (int i = 0; i < B; ++i)
            if (woff + i < row_words) w[i] = ldg_stream(row + woff + i);
    }
}

// Window e (0..3) of a lane's B words: stream bits [8*B*e, 8*B*e + 8*B).
template <int B>
LB_DEV u64 lb_window(const u32 (&w)[B], int e) {
    const int bit = 8 * B * e;
    const int wi = bit >> 5;
    const int sh = bit & 31;
    u64 v = w[wi];
    if (wi + 1 < B) v |= (u64)w[wi + 1] << 32;
    if (sh != 0) {
        v >>= sh;
        if (wi + 2 < B) v |= (u64)w[wi + 2] << (64 - sh);
    }
    return v;
}

template <typename T>
LB_DEV T sel4(T a0, T a1, T a2, T a3, int i) {
    return i == 0 ? a0 : (i == 1 ? a1 : (i == 2 ? a2 : a3));
}

// in[e]: window (k-block tq, lane e) as loaded by this lane; out[j]: window (k-block j, lane tq).
template <int B>
LB_DEV void quad_transpose(const u64 (&in)[4], u64 (&out)[4], int lane) {
    const int tq = lane & 3;
    u64 recv[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const u64 v = sel4(in[0], in[1], in[2], in[3], (tq - r) & 3);
        const int src = (lane & ~3) | ((tq + r) & 3);
        u32 lo = __shfl_sync(0xffffffffu, (u32)v, src);
        u32 hi = 0u;
        if (B > 4) hi = __shfl_sync(0xffffffffu, (u32)(v >> 32), src);
        recv[r] = (u64)lo | ((u64)hi << 32);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = sel4(recv[0], recv[1], recv[2], recv[3], (j - tq) & 3);
}

struct LbRowMap {
    int o0;
    LB_DEV int operator()(int, int half, int g) const { return o0 + g + 8 * half; }
};

template <int B, int GRID, int NT, bool PERCOL>
LB_DEV void lowbit_body(const u32* __restrict__ qw, const u16* __restrict__ scales,
                        const u8* __restrict__ qzeros, const int* __restrict__ g_idx,
                        const u16* __restrict__ x, void* __restrict__ y, float* __restrict__ ws,
                        int* __restrict__ counters, int out, int in, int batch, int row_words,
                        int n_groups, int group_size, int out_f16) {
    __shared__ float red[LB_WARPS * NT * 4 * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int o0 = blockIdx.x * 16;
    const int n0 = blockIdx.y * (8 * NT);
    const int r0 = o0 + g, r1 = o0 + g + 8;
    const bool ok0 = r0 < out, ok1 = r1 < out;
    const u32* row0 = qw + (size_t)(ok0 ? r0 : 0) * row_words;
    const u32* row1 = qw + (size_t)(ok1 ? r1 : 0) * row_words;

    float acc[1][NT][4];
    float tmp[NT][4];
    zero_acc<1, NT>(acc);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) tmp[nt][i] = 0.f;
    int cur_grp = -1;
    float m0 = 0.f, m1 = 0.f;
    u32 zz0 = H2_1024, zz1 = H2_1024;

    const int macros = (in + 127) >> 7;
    int u0, u1;
    lb_k_range(macros, u0, u1);
    for (int m = u0 + warp; m < u1; m += LB_WARPS) {
        u32 w0[B], w1[B];
        const int woff = m * 4 * B + tq * B;
        lb_load_row<B>(row0, woff, row_words, ok0, w0);
        lb_load_row<B>(row1, woff, row_words, ok1, w1);
        u64 l0[4], l1[4], k0w[4], k1w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            l0[e] = lb_window<B>(w0, e);
            l1[e] = lb_window<B>(w1, e);
        }
        quad_transpose<B>(l0, k0w, lane);
        quad_transpose<B>(l1, k1w, lane);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cbase = (m * 4 + j) * 32;
            if (cbase >= in) break;
            const int c = cbase + 8 * tq;
            uint4 xv[NT];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) xv[nt] = load_x8(x, n0 + nt * 8 + g, batch, in, c);
            const u64 win0 = k0w[j], win1 = k1w[j];
            if (!PERCOL) {
                const int grp = cbase / group_size;
                if (grp != cur_grp) {
                    if (cur_grp >= 0) {
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt) {
                            acc[0][nt][0] += m0 * tmp[nt][0];
                            acc[0][nt][1] += m0 * tmp[nt][1];
                            acc[0][nt][2] += m1 * tmp[nt][2];
                            acc[0][nt][3] += m1 * tmp[nt][3];
#pragma unroll
                            for (int i = 0; i < 4; ++i) tmp[nt][i] = 0.f;
                        }
                    }
                    cur_grp = grp;
                    const float s0 = ok0 ? h2f(__ldg(scales + (size_t)r0 * n_groups + grp)) : 0.f;
                    const float s1 = ok1 ? h2f(__ldg(scales + (size_t)r1 * n_groups + grp)) : 0.f;
                    m0 = grid_mult<B, GRID>(s0);
                    m1 = grid_mult<B, GRID>(s1);
                    if (GRID == GRID_AFFINE) {
                        const u32 z0 = ok0 ? (u32)__ldg(qzeros + (size_t)r0 * n_groups + grp) : 0u;
                        const u32 z1 = ok1 ? (u32)__ldg(qzeros + (size_t)r1 * n_groups + grp) : 0u;
                        zz0 = (H_1024 | z0) * 0x10001u;
                        zz1 = (H_1024 | z1) * 0x10001u;
                    }
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const u32 a0 = grid_pair<B, GRID>(win0, 2 * h, zz0);
                    const u32 a1 = grid_pair<B, GRID>(win1, 2 * h, zz1);
                    const u32 a2 = grid_pair<B, GRID>(win0, 2 * h + 1, zz0);
                    const u32 a3 = grid_pair<B, GRID>(win1, 2 * h + 1, zz1);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        u32 b0, b1;
                        x_frag(xv[nt], h, b0, b1);
                        mma16816(tmp[nt], a0, a1, a2, a3, b0, b1);
                    }
                }
            } else {
                // Per-column scales (act-order g_idx or group sizes that are not a multiple of 32):
                // pair p holds columns (c+p, c+p+4); fp16 multipliers per element.
                u32 sc0[4], sc1[4], zc0[4], zc1[4];
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    u32 s0p[2], s1p[2], z0p[2], z1p[2];
#pragma unroll
                    for (int t = 0; t < 2; ++t) {
                        const int col = c + p + 4 * t;
                        int gi = 0;
                        if (col < in) gi = g_idx != nullptr ? __ldg(g_idx + col) : col / group_size;
                        const float s0 = ok0 ? h2f(__ldg(scales + (size_t)r0 * n_groups + gi)) : 0.f;
                        const float s1 = ok1 ? h2f(__ldg(scales + (size_t)r1 * n_groups + gi)) : 0.f;
                        s0p[t] = f2h(grid_mult<B, GRID>(s0));
                        s1p[t] = f2h(grid_mult<B, GRID>(s1));
                        z0p[t] = H_1024;
                        z1p[t] = H_1024;
                        if (GRID == GRID_AFFINE) {
                            z0p[t] |= ok0 ? (u32)__ldg(qzeros + (size_t)r0 * n_groups + gi) : 0u;
                            z1p[t] |= ok1 ? (u32)__ldg(qzeros + (size_t)r1 * n_groups + gi) : 0u;
                        }
                    }
                    sc0[p] = pack2(s0p[0], s0p[1]);
                    sc1[p] = pack2(s1p[0], s1p[1]);
                    zc0[p] = pack2(z0p[0], z0p[1]);
                    zc1[p] = pack2(z1p[0], z1p[1]);
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int pl = 2 * h, ph = 2 * h + 1;
                    const u32 a0 = hmul2(grid_pair<B, GRID>(win0, pl, zc0[pl]), sc0[pl]);
                    const u32 a1 = hmul2(grid_pair<B, GRID>(win1, pl, zc1[pl]), sc1[pl]);
                    const u32 a2 = hmul2(grid_pair<B, GRID>(win0, ph, zc0[ph]), sc0[ph]);
                    const u32 a3 = hmul2(grid_pair<B, GRID>(win1, ph, zc1[ph]), sc1[ph]);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        u32 b0, b1;
                        x_frag(xv[nt], h, b0, b1);
                        mma16816(acc[0][nt], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        }
    }
    if (!PERCOL && cur_grp >= 0) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            acc[0][nt][0] += m0 * tmp[nt][0];
            acc[0][nt][1] += m0 * tmp[nt][1];
            acc[0][nt][2] += m1 * tmp[nt][2];
            acc[0][nt][3] += m1 * tmp[nt][3];
        }
    }
    LbRowMap rm;
    rm.o0 = o0;
    lb_epilogue<1, NT>(acc, red, nullptr, rm, n0, y, ws, counters, out, batch, out_f16);
}

#define LOWBIT_ARGS                                                                                \
    const u32 *__restrict__ qw, const u16 *__restrict__ scales, const u8 *__restrict__ qzeros,     \
        const int *__restrict__ g_idx, const u16 *__restrict__ x, void *__restrict__ y,            \
        float *__restrict__ ws, int *__restrict__ counters, int out, int in, int batch,            \
        int row_words, int n_groups, int group_size, int out_f16
#define LOWBIT_PASS                                                                                \
    qw, scales, qzeros, g_idx, x, y, ws, counters, out, in, batch, row_words, n_groups, group_size, \
        out_f16

#define LOWBIT_ENTRY(GNAME, GRID, B, PATH, NT, PC, SUF)                                            \
    extern "C" __global__ void __launch_bounds__(LB_THREADS)                                       \
        lowbit_##GNAME##_b##B##_##PATH##SUF(LOWBIT_ARGS) {                                         \
        lowbit_body<B, GRID, NT, PC>(LOWBIT_PASS);                                                 \
    }
#define LOWBIT_GRID(GNAME, GRID, B)                                                                \
    LOWBIT_ENTRY(GNAME, GRID, B, gemv, 1, false, )                                                 \
    LOWBIT_ENTRY(GNAME, GRID, B, gemm, LB_GEMM_NT, false, )                                        \
    LOWBIT_ENTRY(GNAME, GRID, B, gemv, 1, true, _pc)                                               \
    LOWBIT_ENTRY(GNAME, GRID, B, gemm, LB_GEMM_NT, true, _pc)
#define LOWBIT_BITS_ALL(B)                                                                         \
    LOWBIT_GRID(affine, GRID_AFFINE, B)                                                            \
    LOWBIT_GRID(halfint, GRID_HALFINT, B)                                                          \
    LOWBIT_GRID(shift, GRID_SHIFT, B)

// The run-time compiler may define LOWBIT_BITS to instantiate a single bit width (faster NVRTC).
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 2
LOWBIT_BITS_ALL(2)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 3
LOWBIT_BITS_ALL(3)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 4
LOWBIT_BITS_ALL(4)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 5
LOWBIT_BITS_ALL(5)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 6
LOWBIT_BITS_ALL(6)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 7
LOWBIT_BITS_ALL(7)
#endif
#if !defined(LOWBIT_BITS) || LOWBIT_BITS == 8
LOWBIT_BITS_ALL(8)
#endif
