// GPTQ v1 (AutoGPTQ "cuda-old"/exllama checkpoint format) dequant-matmul y = x * W^T.
//
// Layout (bits B in {2, 3, 4, 8}; in % 32 == 0; out * B % 32 == 0):
//   qweight I32 [in*B/32, out]        packed along in: for every output column o, the words
//                                     qweight[0.., o] form a little-endian bit stream and input i sits
//                                     at stream bits [i*B, i*B+B). For B = 2/4/8 that is "value j of
//                                     word r is input r*32/B + j at bits j*B"; AutoGPTQ's 3-bit
//                                     cross-word scheme (10 values, 2+1 bits split, 10 values, 1+2 bits
//                                     split, 10 values per 3 words) is exactly this stream too.
//   qzeros  I32 [n_groups, out*B/32]  (zero - 1) mod 2^B, packed along out the same way (stream per group row)
//   scales  F16 [n_groups, out]
//   g_idx   I32 [in]                  group of each input column (null -> i / group_size)
//   w[o, i] = (q - ((zstored + 1) mod 2^B)) * scales[g_idx[i], o]
//
// Entry points: gptq_b<B>_<gemv|gemm>[_pc](qweight, qzeros, scales, g_idx, x, y, ws, counters,
//                                         out, in, batch, n_groups, group_size, out_f16)
//   _pc: per-column scale path, required when g_idx is not the trivial i / group_size (act-order)
//        or group_size % 32 != 0. The host decides (it can check g_idx once).
// Launch: block (LB_THREADS,1,1); grid (ceil(out/32), ceil(batch/(8*NT)), ksplit).
// Tiling: a warp covers 32 outputs (two m16 tiles); lane (g, tq) loads, with one 128-bit load per
// stream word, the words of 4 consecutive outputs o0+4g .. o0+4g+3 for its 8-column window, so a
// warp's load instruction reads 8 x 16 = 128 contiguous bytes of each of 4 qweight rows.
// Output row map: m-tile t, row g -> o0 + 4g + 2t, row g+8 -> o0 + 4g + 2t + 1.
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif

struct GptqRowMap {
    int o0;
    LB_DEV int operator()(int mt, int half, int g) const { return o0 + 4 * g + 2 * mt + half; }
};

// Words of 4 consecutive outputs ob..ob+3 in qweight/qzeros row `r` (row length `rowlen` words).
LB_DEV uint4 load4_out(const u32* __restrict__ base, size_t r, int rowlen, int ob, bool stream) {
    const u32* p = base + r * (size_t)rowlen + ob;
    if ((rowlen & 3) == 0 && ob + 4 <= rowlen) {
        return stream ? ldg_stream4(p) : __ldg(reinterpret_cast<const uint4*>(p));
    }
    u32 v[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < 4; ++i)
        if (ob + i < rowlen) v[i] = __ldg(p + i);
    return make_uint4(v[0], v[1], v[2], v[3]);
}
LB_DEV u32 comp(const uint4& v, int i) { return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w)); }

// Zero point of output o in group row grp: (stored + 1) mod 2^B (GPTQ v1; a zero point of 0 is
// stored as the all-ones field).
template <int B>
LB_DEV u32 gptq_zero(const u32* __restrict__ qzeros, int grp, int zw, int o) {
    const int bit = o * B;
    const u32* p = qzeros + (size_t)grp * zw + (bit >> 5);
    const int sh = bit & 31;
    u64 v = __ldg(p);
    if (sh + B > 32) v |= (u64)__ldg(p + 1) << 32;
    return ((u32)((v >> sh) & ((1u << B) - 1u)) + 1u) & ((1u << B) - 1u);
}

template <int B, int NT, bool PERCOL>
LB_DEV void gptq_body(const u32* __restrict__ qw, const u32* __restrict__ qzeros,
                      const u16* __restrict__ scales, const int* __restrict__ g_idx,
                      const u16* __restrict__ x, void* __restrict__ y, float* __restrict__ ws,
                      int* __restrict__ counters, int out, int in, int batch, int n_groups,
                      int group_size, int out_f16) {
    constexpr int MT = 2;
    constexpr int NWG = (B == 8 || B == 3) ? 2 : 1;  // stream words touched by one 8-value window
    __shared__ float red[LB_WARPS * MT * NT * 4 * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int o0 = blockIdx.x * 32;
    const int n0 = blockIdx.y * (8 * NT);
    const int ob = o0 + 4 * g;
    const int kwords = in * B / 32;
    const int zw = out * B / 32;
    (void)n_groups;

    float acc[MT][NT][4];
    float tmp[MT][NT][4];
    zero_acc<MT, NT>(acc);
    zero_acc<MT, NT>(tmp);
    int cur_grp = -1;
    float mult[4] = {0.f, 0.f, 0.f, 0.f};
    u32 zz[4] = {H2_1024, H2_1024, H2_1024, H2_1024};

    const int units = in >> 5;
    int u0, u1;
    lb_k_range(units, u0, u1);
    for (int kb = u0 + warp; kb < u1; kb += LB_WARPS) {
        const int cbase = kb * 32;
        const int c = cbase + 8 * tq;
        const int bit = c * B;
        const int kw = bit >> 5, sh = bit & 31;
        uint4 q[NWG];
#pragma unroll
        for (int r = 0; r < NWG; ++r) {
            q[r] = make_uint4(0u, 0u, 0u, 0u);
            if (ob < out && kw + r < kwords) q[r] = load4_out(qw, (size_t)(kw + r), out, ob, true);
        }
        u64 win[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u64 v = comp(q[0], i);
            if (NWG > 1) v |= (u64)comp(q[NWG - 1], i) << 32;
            win[i] = v >> sh;
        }
        uint4 xv[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) xv[nt] = load_x8(x, n0 + nt * 8 + g, batch, in, c);

        if (!PERCOL) {
            const int grp = cbase / group_size;
            if (grp != cur_grp) {
                if (cur_grp >= 0) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int nt = 0; nt < NT; ++nt) {
                            tmp[mt][nt][0] *= mult[2 * mt];
                            tmp[mt][nt][1] *= mult[2 * mt];
                            tmp[mt][nt][2] *= mult[2 * mt + 1];
                            tmp[mt][nt][3] *= mult[2 * mt + 1];
#pragma unroll
                            for (int i = 0; i < 4; ++i) {
                                acc[mt][nt][i] += tmp[mt][nt][i];
                                tmp[mt][nt][i] = 0.f;
                            }
                        }
                }
                cur_grp = grp;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int o = ob + i;
                    mult[i] = 0.f;
                    zz[i] = H2_1024;
                    if (o < out) {
                        mult[i] = h2f(__ldg(scales + (size_t)grp * out + o));
                        zz[i] = (H_1024 | gptq_zero<B>(qzeros, grp, zw, o)) * 0x10001u;
                    }
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const int i0 = 2 * mt, i1 = 2 * mt + 1;
                    const u32 a0 = hsub2(biased_pair<B>(win[i0], 2 * h), zz[i0]);
                    const u32 a1 = hsub2(biased_pair<B>(win[i1], 2 * h), zz[i1]);
                    const u32 a2 = hsub2(biased_pair<B>(win[i0], 2 * h + 1), zz[i0]);
                    const u32 a3 = hsub2(biased_pair<B>(win[i1], 2 * h + 1), zz[i1]);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        u32 b0, b1;
                        x_frag(xv[nt], h, b0, b1);
                        mma16816(tmp[mt][nt], a0, a1, a2, a3, b0, b1);
                    }
                }
            }
        } else {
            // Per-column groups: pair p = columns (c+p, c+p+4).
            int gp[8];
#pragma unroll
            for (int j = 0; j < 8; ++j)
                gp[j] = g_idx != nullptr ? __ldg(g_idx + c + j) : (c + j) / group_size;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    u32 a[4];
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        // r: 0 = (row g, k lo), 1 = (row g+8, k lo), 2 = (row g, k hi), 3 = (row g+8, k hi)
                        const int i = 2 * mt + (r & 1);
                        const int p = 2 * h + (r >> 1);
                        const int o = ob + i;
                        u32 s2 = 0u, z2 = H2_1024;
                        if (o < out) {
                            const int ga = gp[p], gb = gp[p + 4];
                            s2 = pack2(__ldg(scales + (size_t)ga * out + o), __ldg(scales + (size_t)gb * out + o));
                            z2 = pack2(H_1024 | gptq_zero<B>(qzeros, ga, zw, o),
                                       H_1024 | gptq_zero<B>(qzeros, gb, zw, o));
                        }
                        a[r] = hmul2(hsub2(biased_pair<B>(win[i], p), z2), s2);
                    }
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        u32 b0, b1;
                        x_frag(xv[nt], h, b0, b1);
                        mma16816(acc[mt][nt], a[0], a[1], a[2], a[3], b0, b1);
                    }
                }
            }
        }
    }
    if (!PERCOL && cur_grp >= 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                acc[mt][nt][0] += mult[2 * mt] * tmp[mt][nt][0];
                acc[mt][nt][1] += mult[2 * mt] * tmp[mt][nt][1];
                acc[mt][nt][2] += mult[2 * mt + 1] * tmp[mt][nt][2];
                acc[mt][nt][3] += mult[2 * mt + 1] * tmp[mt][nt][3];
            }
    }
    GptqRowMap rm;
    rm.o0 = o0;
    lb_epilogue<MT, NT>(acc, red, nullptr, rm, n0, y, ws, counters, out, batch, out_f16);
}

#define GPTQ_ARGS                                                                                  \
    const u32 *__restrict__ qw, const u32 *__restrict__ qzeros, const u16 *__restrict__ scales,    \
        const int *__restrict__ g_idx, const u16 *__restrict__ x, void *__restrict__ y,            \
        float *__restrict__ ws, int *__restrict__ counters, int out, int in, int batch,            \
        int n_groups, int group_size, int out_f16
#define GPTQ_PASS                                                                                  \
    qw, qzeros, scales, g_idx, x, y, ws, counters, out, in, batch, n_groups, group_size, out_f16
#define GPTQ_ENTRY(B, PATH, NT, PC, SUF)                                                           \
    extern "C" __global__ void __launch_bounds__(LB_THREADS) gptq_b##B##_##PATH##SUF(GPTQ_ARGS) {  \
        gptq_body<B, NT, PC>(GPTQ_PASS);                                                           \
    }
#define GPTQ_BITS(B)                                                                               \
    GPTQ_ENTRY(B, gemv, 1, false, )                                                                \
    GPTQ_ENTRY(B, gemm, LB_GEMM_NT, false, )                                                       \
    GPTQ_ENTRY(B, gemv, 1, true, _pc)                                                              \
    GPTQ_ENTRY(B, gemm, LB_GEMM_NT, true, _pc)

GPTQ_BITS(2)
GPTQ_BITS(3)
GPTQ_BITS(4)
GPTQ_BITS(8)
