// AutoAWQ "GEMM" checkpoint format (WQLinear_GEMM, 4-bit) dequant-matmul y = x * W^T.
//
// Layout (out % 8 == 0, group_size % 32 == 0, contiguous groups):
//   qweight I32 [in, out/8]        packed along out. AutoAWQ's packer ORs column 8*w + ORDER[j] into
//                                  nibble j (bits 4j..4j+3) of word w, ORDER = [0,2,4,6,1,3,5,7];
//                                  equivalently column 8*w + l lives in nibble REV[l],
//                                  REV = [0,4,1,5,2,6,3,7].
//   qzeros  I32 [in/group, out/8]  same interleave, raw zero points (no -1 offset)
//   scales  F16 [in/group, out]
//   w[o, i] = (q - z) * s
//
// Entry points: awq_<gemv|gemm>(qweight, qzeros, scales, x, y, ws, counters,
//                               out, in, batch, group_size, out_f16)
// Launch: block (LB_THREADS,1,1); grid (ceil(out/64), ceil(batch/(8*NT)), ksplit).
// Tiling: a warp covers 64 outputs (four m16 tiles). Lane (g, tq) owns word column o0/8 + g and the
// 8 input rows of its window; two input rows are merged with one PRMT and one LOP3 per nibble pair
// gives an A register, thanks to the interleave: nibbles 0..3 of a word are the even local columns
// 0,2,4,6 and nibbles 4..7 the odd ones, so with the row map
//     m-tile t, row g -> o0 + 8g + 2t (nibble t),  row g+8 -> o0 + 8g + 2t + 1 (nibble 4 + t)
// every nibble of every loaded word is used exactly once. Loads are 32-bit (a word is 8 outputs
// already); each warp load instruction reads 4 full 32-byte sectors.
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif

struct AwqRowMap {
    int o0;
    LB_DEV int operator()(int mt, int half, int g) const { return o0 + 8 * g + 2 * mt + half; }
};

template <int NT>
LB_DEV void awq_body(const u32* __restrict__ qw, const u32* __restrict__ qzeros,
                     const u16* __restrict__ scales, const u16* __restrict__ x, void* __restrict__ y,
                     float* __restrict__ ws, int* __restrict__ counters, int out, int in, int batch,
                     int group_size, int out_f16) {
    constexpr int MT = 4;
    __shared__ float red[LB_WARPS * MT * NT * 4 * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int o0 = blockIdx.x * 64;
    const int n0 = blockIdx.y * (8 * NT);
    const int ow8 = out >> 3;
    const int ow = (o0 >> 3) + g;
    const bool okw = ow < ow8;

    float acc[MT][NT][4];
    float tmp[MT][NT][4];
    zero_acc<MT, NT>(acc);
    zero_acc<MT, NT>(tmp);
    int cur_grp = -1;
    float mult[MT][2];
    u32 zz[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        mult[mt][0] = mult[mt][1] = 0.f;
        zz[mt][0] = zz[mt][1] = H2_1024;
    }

    const int units = (in + 31) >> 5;
    int u0, u1;
    lb_k_range(units, u0, u1);
    for (int kb = u0 + warp; kb < u1; kb += LB_WARPS) {
        const int cbase = kb * 32;
        const int c = cbase + 8 * tq;
        u32 w[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            w[j] = 0u;
            if (okw && c + j < in) w[j] = ldg_stream(qw + (size_t)(c + j) * ow8 + ow);
        }
        uint4 xv[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) xv[nt] = load_x8(x, n0 + nt * 8 + g, batch, in, c);

        const int grp = cbase / group_size;
        if (grp != cur_grp) {
            if (cur_grp >= 0) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        acc[mt][nt][0] += mult[mt][0] * tmp[mt][nt][0];
                        acc[mt][nt][1] += mult[mt][0] * tmp[mt][nt][1];
                        acc[mt][nt][2] += mult[mt][1] * tmp[mt][nt][2];
                        acc[mt][nt][3] += mult[mt][1] * tmp[mt][nt][3];
#pragma unroll
                        for (int i = 0; i < 4; ++i) tmp[mt][nt][i] = 0.f;
                    }
            }
            cur_grp = grp;
            u32 zword = 0u;
            uint4 sc = make_uint4(0u, 0u, 0u, 0u);
            if (okw) {
                zword = __ldg(qzeros + (size_t)grp * ow8 + ow);
                sc = __ldg(reinterpret_cast<const uint4*>(scales + (size_t)grp * out + 8 * ow));
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const u32 s2 = mt == 0 ? sc.x : (mt == 1 ? sc.y : (mt == 2 ? sc.z : sc.w));
                mult[mt][0] = h2f((u16)(s2 & 0xFFFFu));  // local column 2*mt
                mult[mt][1] = h2f((u16)(s2 >> 16));      // local column 2*mt + 1
                zz[mt][0] = (H_1024 | ((zword >> (4 * mt)) & 0xFu)) * 0x10001u;
                zz[mt][1] = (H_1024 | ((zword >> (4 * mt + 16)) & 0xFu)) * 0x10001u;
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            // k lo: input rows (2h, 2h+4) of the window; k hi: (2h+1, 2h+5).
            const u32 ulo = prmt(w[2 * h], w[2 * h + 4], 0x5410);      // nibbles 0..3 of both rows
            const u32 vlo = prmt(w[2 * h], w[2 * h + 4], 0x7632);      // nibbles 4..7
            const u32 uhi = prmt(w[2 * h + 1], w[2 * h + 5], 0x5410);
            const u32 vhi = prmt(w[2 * h + 1], w[2 * h + 5], 0x7632);
            u32 b0[NT], b1[NT];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) x_frag(xv[nt], h, b0[nt], b1[nt]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const u32 a0 = hsub2(((ulo >> (4 * mt)) & 0x000F000Fu) | H2_1024, zz[mt][0]);
                const u32 a1 = hsub2(((vlo >> (4 * mt)) & 0x000F000Fu) | H2_1024, zz[mt][1]);
                const u32 a2 = hsub2(((uhi >> (4 * mt)) & 0x000F000Fu) | H2_1024, zz[mt][0]);
                const u32 a3 = hsub2(((vhi >> (4 * mt)) & 0x000F000Fu) | H2_1024, zz[mt][1]);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma16816(tmp[mt][nt], a0, a1, a2, a3, b0[nt], b1[nt]);
            }
        }
    }
    if (cur_grp >= 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                acc[mt][nt][0] += mult[mt][0] * tmp[mt][nt][0];
                acc[mt][nt][1] += mult[mt][0] * tmp[mt][nt][1];
                acc[mt][nt][2] += mult[mt][1] * tmp[mt][nt][2];
                acc[mt][nt][3] += mult[mt][1] * tmp[mt][nt][3];
            }
    }
    AwqRowMap rm;
    rm.o0 = o0;
    lb_epilogue<MT, NT>(acc, red, nullptr, rm, n0, y, ws, counters, out, batch, out_f16);
}

#define AWQ_ARGS                                                                                   \
    const u32 *__restrict__ qw, const u32 *__restrict__ qzeros, const u16 *__restrict__ scales,    \
        const u16 *__restrict__ x, void *__restrict__ y, float *__restrict__ ws,                   \
        int *__restrict__ counters, int out, int in, int batch, int group_size, int out_f16
#define AWQ_PASS qw, qzeros, scales, x, y, ws, counters, out, in, batch, group_size, out_f16

extern "C" __global__ void __launch_bounds__(LB_THREADS) awq_gemv(AWQ_ARGS) { awq_body<1>(AWQ_PASS); }
extern "C" __global__ void __launch_bounds__(LB_THREADS) awq_gemm(AWQ_ARGS) {
    awq_body<LB_GEMM_NT>(AWQ_PASS);
}
