// Vector-quantized dequant-matmul y = x * W^T for vector lengths v % 8 == 0, from the GPU-side
// arrangement made at upload (src/cuda/vqt.rs); same weights as kernels/vq.cu (lowbit's VQ layout,
// docs/formats.md), see docs/kernels.md ("tiled VQ").
//
// Persistent blocks: each block copies the codebook(s) into shared memory once, then loops over
// work items (m-tile of 16 outputs, batch tile, K split). The weights of an m16 x k16 mma step are
// four 8x8 matrices whose stored rows are codebook entry segments (8 consecutive outputs of one
// input column), so one `ldmatrix.x4.trans` per step turns 32 looked-up entries into the A
// fragment: lane l supplies the address of stored row l%8 of matrix l/8, i.e. the entry of column
// k0 + l%8 + 8*(l/16) for the 8-output segment 2m + (l/8)%2 of the tile.
//
// Arrangement (ib / rib = index bits of the main / residual codebook, nch = ceil(in/512) chunks of
// 32 mma steps):
//   idx  u32 [mt][nch][ib][32]    lane l's word w of chunk ch at [m][ch][w][l]: the little-endian
//                                 stream of its 32 indices (step s at bits [s*ib, s*ib+ib)), i.e.
//                                 the indices are laid along the input, in the order each lane
//                                 consumes them; a warp reads 128 contiguous bytes per word.
//   ridx u32 [mt][nch][rib][32]   the same for the residual codebook (null when absent).
//   cb   f16 [k][v], rcb f16 [k_res][v]   as stored (16-byte rows, v % 8 == 0).
//   col_scale, col_bias f16 [in] or null. Columns >= in and segments >= out/8 hold index 0.
//   w[o, c] = (cb[idx][o % v] + rcb[ridx][o % v]) * col_scale[c] + col_bias[c]
// Math: A = codebook entries (main + residual added in fp16), B = x * col_scale (one rounding),
// the bias term sum_c x[n,c] * col_bias[c] (the same for every output) by one extra mma with A = 1.
//
// Entry points: vqt_<gemv|gemm>(idx, ridx, cb, rcb, col_scale, col_bias, x, y, ws, counters, out,
//   in, batch, v8 = v/8, ib, rib, n_cb16 = k*v/8, n_rcb16, items, nsplit, ntile_y, out_f16)
// Launch: block (LB_THREADS,1,1); grid (persistent blocks,1,1); dynamic smem = 16*(n_cb16 +
//   n_rcb16) + LB_WARPS*VQT_STAGES*(ib+rib)*128 + LB_WARPS*LB_GEMM_NT*512 bytes. Work item
//   it = (mtile * ntile_y + ty) * nsplit + z. ws / counters as for the other kernels.
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif
#define VQT_STEPS 32
#define VQT_STAGES 2

LB_DEV u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
LB_DEV void cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
}
LB_DEV void cp_async4(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
}
LB_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
LB_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
LB_DEV void ldsm_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// Two consecutive halves x[n, c], x[n, c+1] as one word (0 outside the matrix).
LB_DEV u32 load_x2(const u16* __restrict__ x, int n, int batch, int in, int c) {
    if (n >= batch || c >= in) return 0u;
    const u16* p = x + (size_t)n * in + c;
    if (((((size_t)n * in + c) & 1) == 0) && c + 1 < in) return __ldg(reinterpret_cast<const u32*>(p));
    const u32 lo = __ldg(p);
    const u32 hi = c + 1 < in ? (u32)__ldg(p + 1) : 0u;
    return lo | (hi << 16);
}

// Sequential reader of one lane's index stream in the shared-memory ring.
struct IdxStream {
    const u32* p;  // next word (stride 32: the ring is [word][lane])
    u64 bits;
    int n;
    LB_DEV u32 take(int ib) {
        if (n < ib) {
            bits |= (u64)(*p) << n;
            p += 32;
            n += 32;
        }
        const u32 v = (u32)bits & ((1u << ib) - 1u);
        bits >>= ib;
        n -= ib;
        return v;
    }
};

struct VqtRowMap {
    int o0;
    LB_DEV int operator()(int, int half, int g) const { return o0 + g + 8 * half; }
};

template <int NT>
LB_DEV void vqt_body(const u32* __restrict__ idx, const u32* __restrict__ ridx, const uint4* __restrict__ cb,
                     const uint4* __restrict__ rcb, const u16* __restrict__ col_scale,
                     const u16* __restrict__ col_bias, const u16* __restrict__ x, void* __restrict__ y,
                     float* __restrict__ ws, int* __restrict__ counters, int out, int in, int batch, int v8,
                     int ib, int rib, int n_cb16, int n_rcb16, int items, int nsplit, int ntile_y, int out_f16) {
    extern __shared__ uint4 vqt_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const bool has_res = ridx != nullptr && rcb != nullptr;
    const int wpc = ib + (has_res ? rib : 0);  // ring words per lane per chunk

    // Codebooks into shared memory, once per block.
    for (int i = threadIdx.x; i < n_cb16 + n_rcb16; i += LB_THREADS)
        cp_async16(vqt_smem + i, i < n_cb16 ? cb + i : rcb + (i - n_cb16));
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const u32 cb_base = smem_u32(vqt_smem);
    const u32 rcb_base = smem_u32(vqt_smem + n_cb16);
    u32* ring = reinterpret_cast<u32*>(vqt_smem + n_cb16 + n_rcb16) + warp * (VQT_STAGES * wpc * 32) + lane;
    float* red = reinterpret_cast<float*>(vqt_smem + n_cb16 + n_rcb16) + LB_WARPS * VQT_STAGES * wpc * 32;

    const int nch = (in + 16 * VQT_STEPS - 1) / (16 * VQT_STEPS);
    const int n_step = (in + 15) >> 4;
    // Lane's 8-output segment of the tile: stored-row segment of matrix (lane / 8) % 2.
    const int seg_half = (lane >> 3) & 1;

    for (int it = blockIdx.x; it < items; it += gridDim.x) {
        const int z = it % nsplit;
        const int tile = it / nsplit;
        const int ty = tile % ntile_y;
        const int mtile = tile / ntile_y;
        const int o0 = mtile * 16, n0 = ty * (8 * NT);
        // Segment offset of this lane's rows inside its vector (the vector itself is encoded in
        // the arranged indices).
        const int seg = (2 * mtile + seg_half) % v8;
        const int cz0 = (int)(((long long)nch * z) / nsplit), cz1 = (int)(((long long)nch * (z + 1)) / nsplit);
        const int c0 = cz0 + (int)((unsigned)((cz1 - cz0) * warp) / LB_WARPS);
        const int c1 = cz0 + (int)((unsigned)((cz1 - cz0) * (warp + 1)) / LB_WARPS);
        const u32* src = idx + (size_t)mtile * nch * ib * 32 + lane;
        const u32* rsrc = has_res ? ridx + (size_t)mtile * nch * rib * 32 + lane : nullptr;
        auto issue = [&](int chunk, int stage) {
            u32* d = ring + stage * wpc * 32;
            const u32* s = src + (size_t)chunk * ib * 32;
            for (int w = 0; w < ib; ++w) cp_async4(d + w * 32, s + w * 32);
            if (has_res) {
                const u32* r = rsrc + (size_t)chunk * rib * 32;
                for (int w = 0; w < rib; ++w) cp_async4(d + (ib + w) * 32, r + w * 32);
            }
        };
        if (c0 < c1) issue(c0, 0);
        cp_async_commit();

        float acc[1][NT][4];
        zero_acc<1, NT>(acc);
        int stage = 0;
        for (int c = c0; c < c1; ++c) {
            cp_async_wait<0>();
            __syncwarp();
            // Double buffer: fetch the next chunk into the other stage while this one is used.
            if (c + 1 < c1) issue(c + 1, stage ^ 1);
            cp_async_commit();
            IdxStream mi{ring + stage * wpc * 32, 0ull, 0};
            IdxStream ri{ring + (stage * wpc + ib) * 32, 0ull, 0};
#pragma unroll 4
            for (int s = 0; s < VQT_STEPS; ++s) {
                const int step = c * VQT_STEPS + s;
                if (step >= n_step) break;
                const int k0 = step * 16;
                u32 a0, a1, a2, a3;
                ldsm_x4_trans(cb_base + (mi.take(ib) * (u32)v8 + (u32)seg) * 16u, a0, a1, a2, a3);
                if (has_res) {
                    u32 r0, r1, r2, r3;
                    ldsm_x4_trans(rcb_base + (ri.take(rib) * (u32)v8 + (u32)seg) * 16u, r0, r1, r2, r3);
                    a0 = hadd2(a0, r0);
                    a1 = hadd2(a1, r1);
                    a2 = hadd2(a2, r2);
                    a3 = hadd2(a3, r3);
                }
                const int ca = k0 + 2 * tq, cbb = ca + 8;
                u32 sa = 0x3C003C00u, sb = 0x3C003C00u, ba = 0u, bb = 0u;
                if (col_scale != nullptr) {
                    sa = load_x2(col_scale, 0, 1, in, ca);
                    sb = load_x2(col_scale, 0, 1, in, cbb);
                }
                if (col_bias != nullptr) {
                    ba = load_x2(col_bias, 0, 1, in, ca);
                    bb = load_x2(col_bias, 0, 1, in, cbb);
                }
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int n = n0 + nt * 8 + g;
                    const u32 xa = load_x2(x, n, batch, in, ca), xb = load_x2(x, n, batch, in, cbb);
                    const u32 b0 = col_scale != nullptr ? hmul2(xa, sa) : xa;
                    const u32 b1 = col_scale != nullptr ? hmul2(xb, sb) : xb;
                    mma16816(acc[0][nt], a0, a1, a2, a3, b0, b1);
                    if (col_bias != nullptr) {
                        const u32 ones = 0x3C003C00u;
                        mma16816(acc[0][nt], ones, ones, ones, ones, hmul2(xa, ba), hmul2(xb, bb));
                    }
                }
            }
            stage ^= 1;
        }
        cp_async_wait<0>();
        VqtRowMap rm;
        rm.o0 = o0;
        lb_epilogue_tile<1, NT>(acc, red, nullptr, rm, n0, y, ws, counters, out, batch, out_f16, mtile * ntile_y + ty, nsplit);
    }
}

#define VQT_ARGS                                                                                   \
    const u32 *__restrict__ idx, const u32 *__restrict__ ridx, const uint4 *__restrict__ cb,       \
        const uint4 *__restrict__ rcb, const u16 *__restrict__ col_scale,                          \
        const u16 *__restrict__ col_bias, const u16 *__restrict__ x, void *__restrict__ y,         \
        float *__restrict__ ws, int *__restrict__ counters, int out, int in, int batch, int v8,    \
        int ib, int rib, int n_cb16, int n_rcb16, int items, int nsplit, int ntile_y, int out_f16
#define VQT_PASS                                                                                   \
    idx, ridx, cb, rcb, col_scale, col_bias, x, y, ws, counters, out, in, batch, v8, ib, rib,      \
        n_cb16, n_rcb16, items, nsplit, ntile_y, out_f16

extern "C" __global__ void __launch_bounds__(LB_THREADS, 1) vqt_gemv(VQT_ARGS) { vqt_body<1>(VQT_PASS); }
extern "C" __global__ void __launch_bounds__(LB_THREADS, 1) vqt_gemm(VQT_ARGS) {
    vqt_body<LB_GEMM_NT>(VQT_PASS);
}
