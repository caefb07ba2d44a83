// Group-quantized dequant-matmul y = x * W^T from the GPU-side "tiled" arrangement made at upload
// (src/cuda/arrange.rs). Serves every group layout: lowbit (2..8 bits, affine / halfint / shift,
// optional g_idx), AutoAWQ GEMM and GPTQ v1 are all transcoded to it, as vLLM repacks GPTQ/AWQ
// checkpoints for Marlin at load time. Full description in docs/kernels.md ("tiled layout").
//
// Arrangement (B = bits, mt = ceil(out/16) m-tiles of 16 output rows, nch = ceil(in/256) chunks of
// 256 input columns = 8 k-blocks of 32 columns):
//   qa   uint4 [mt][nch][B][32]   lane l = (g = l/4, tq = l%4) of the warp that owns m-tile `m`
//                                 reads qa[m][ch][v][l], v = 0..B-1: one 128-bit load per v, 512
//                                 contiguous bytes per warp instruction. The lane's B uint4 form a
//                                 128*B-bit little-endian stream (word 4v+e = component e of v);
//                                 k-block t (0..7) of the chunk occupies stream bits
//                                 [16*B*t, 16*B*(t+1)): first the window of row o0+g, then the
//                                 window of row o0+g+8. A window holds the codes of the lane's 8
//                                 columns c = ch*256 + 32t + 8tq + j in slot s(j) = j/2 + 4*(j%2)
//                                 (AutoAWQ's order), at window bits [s*B, s*B+B): slots j and j+4
//                                 are columns 2j and 2j+1, so the magic-number pair j is an A
//                                 register and x[c..c+8) loaded as 4 words are the B registers
//                                 as they are. Rows >= out and columns >= in hold code 0.
//   meta u32  [mt][n_groups][8][MW]   for lane-row g of m-tile m and group grp: word 0 = f16 scale
//                                 of row o0+g (low half) and of row o0+g+8 (high half); affine
//                                 only (MW = 2): word 1 = f16 (1024 + z) of the same two rows, z the
//                                 integer zero point (<= 256: GPTQ's stored+1 included).
//   g_idx i32 [in]                per-column group (null: column c is in group c / group_size).
//   w[o, c] = (q - z) * s (affine), s * (q - n + 0.5) / n (halfint, n = 2^(B-1)), +-s * 2^-p (shift).
//
// Entry points: gq_<grid>_b<B>_<gemv|gemm>[_pc](qa, meta, g_idx, x, y, ws, counters, out, in,
//   batch, n_groups, group_size, gdiv_mul, gdiv_shr, out_f16)
//   _pc: per-column scales (g_idx present or group_size % 32 != 0); otherwise one fp32 multiply per
//        (group, output) and none per weight ("factored").
//   gdiv_mul/gdiv_shr: c / group_size == __umulhi(c, gdiv_mul) >> gdiv_shr (mul 0: group_size 1);
//   no division in the kernel.
// Launch: block (LB_THREADS,1,1), grid (mt, ceil(batch/(8*NT)), ksplit), no dynamic smem; ws f32
//   [batch*out] and counters i32 [grid.x*grid.y] zeroed once at allocation (left zeroed).
// Work: the chunks of a block's K range are split into LB_WARPS contiguous runs, one per warp; a
// warp streams its chunks through a STAGES-deep cp.async ring in shared memory (each lane copies
// and later reads only its own 16-byte pieces, so no barrier is needed inside the loop).
#include "common.cuh"

#ifndef LB_GEMM_NT
#define LB_GEMM_NT 4
#endif

// ---------------------------------------------------------------- cp.async (sm_80+)
LB_DEV u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
LB_DEV void cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
}
LB_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
LB_DEV void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// c / d for the divisor the host encoded as (mul, shr); exact for c < 2^31.
LB_DEV int fastdiv(int c, u32 mul, u32 shr) { return mul == 0u ? c : (int)(__umulhi((u32)c, mul) >> shr); }

struct GqRowMap {
    int o0;
    LB_DEV int operator()(int, int half, int g) const { return o0 + g + 8 * half; }
};

template <int B>
struct GqStages {
    static constexpr int value = B <= 4 ? 4 : (B <= 6 ? 3 : 2);
};

// Window (k-block t, row half hf) of a lane's chunk stream w[4B]; t and hf are compile-time
// constants after unrolling, so this is at most two funnel shifts.
template <int B>
LB_DEV u64 gq_window(const u32 (&w)[4 * B], int t, int hf) {
    const int bit = 16 * B * t + 8 * B * hf;
    const int wi = bit >> 5, sh = bit & 31;
    u64 v = w[wi];
    if (wi + 1 < 4 * B) v |= (u64)w[wi + 1] << 32;
    if (sh != 0) {
        v >>= sh;
        if (wi + 2 < 4 * B) v |= (u64)w[wi + 2] << (64 - sh);
    }
    return v;
}

// Meta words of (m-tile, group) for lane-row g.
template <int MW>
LB_DEV void gq_meta(const u32* __restrict__ meta, int mtile, int n_groups, int grp, int g, u32 (&m)[2]) {
    const u32* p = meta + ((size_t)(mtile * n_groups + grp) * 8 + g) * MW;
    if (MW == 2) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
        m[0] = v.x;
        m[1] = v.y;
    } else {
        m[0] = __ldg(p);
        m[1] = H2_1024;
    }
}

LB_DEV u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The four A pairs of a window (pair j = window slots j and j+4 = columns 2j and 2j+1): the
// exact grid values. For
// 4-bit affine codes the nibble pairs are masked in place (Marlin's trick): pairs 0 and 2 give
// 1024 + q and one sub with zz = half2(1024 + z); pairs 1 and 3 give 1024 + 16q and one fma with
// (1/16, zm = -(64 + z)); one shift per window instead of three. All results are exact.
// (a & MASK) | c in one LOP3 with the mask as the immediate (c, the 0x64006400 bias, stays in a
// register instead of the compiler re-materialising the masks).
template <u32 MASK>
LB_DEV u32 and_or(u32 a, u32 c) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "r"(c));
    return d;
}

template <int B, int GRID>
LB_DEV void gq_pairs(u64 win, u32 zz, u32 zm, u32 (&a)[4], u32 bias) {
    if (B == 4 && GRID == GRID_AFFINE) {
        const u32 w = (u32)win;
        const u32 w8 = w >> 8;
        a[0] = hsub2(and_or<0x000F000Fu>(w, bias), zz);
        a[1] = hfma2(and_or<0x00F000F0u>(w, bias), 0x2C002C00u, zm);
        a[2] = hsub2(and_or<0x000F000Fu>(w8, bias), zz);
        a[3] = hfma2(and_or<0x00F000F0u>(w8, bias), 0x2C002C00u, zm);
    } else {
        (void)bias;
#pragma unroll
        for (int j = 0; j < 4; ++j) a[j] = grid_pair<B, GRID>(win, j, zz);
    }
}

// Group state of the factored path, per lane.
struct GqGroup {
    int grp, left;
    float m0, m1;          // multipliers of rows g and g+8
    u32 zz0, zz1, zm0, zm1;  // half2(1024 + z), half2(-(64 + z)) of rows g and g+8
    u32 nxt[2];            // meta words of group grp + 1
    u32 bias;              // 0x64006400 (half2(1024, 1024)), kept in a register
};

template <int B, int GRID>
LB_DEV void gq_set_group(GqGroup& st, const u32 (&m)[2]) {
    st.m0 = grid_mult<B, GRID>(h2f((u16)(m[0] & 0xFFFFu)));
    st.m1 = grid_mult<B, GRID>(h2f((u16)(m[0] >> 16)));
    st.zz0 = prmt(m[1], m[1], 0x1010);
    st.zz1 = prmt(m[1], m[1], 0x3232);
    st.zm0 = hsub2(0x63806380u, st.zz0);  // 960 - (1024 + z)
    st.zm1 = hsub2(0x63806380u, st.zz1);
}

// One k-block (32 columns) of a lane: windows win0 (row g) and win1 (row g+8), activations xv.
template <int B, int GRID, int NT, bool PERCOL>
LB_DEV void gq_kblock(u64 win0, u64 win1, const uint4 (&xv)[NT], int col, float (&acc)[1][NT][4],
                      float (&tmp)[NT][4], GqGroup& st, const u32* __restrict__ meta,
                      const int* __restrict__ g_idx, int mtile, int n_groups, int g, int in,
                      int kbpg, u32 gdiv_mul, u32 gdiv_shr) {
    constexpr int MW = GRID == GRID_AFFINE ? 2 : 1;
    if (!PERCOL) {
        if (st.left == 0) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                acc[0][nt][0] += st.m0 * tmp[nt][0];
                acc[0][nt][1] += st.m0 * tmp[nt][1];
                acc[0][nt][2] += st.m1 * tmp[nt][2];
                acc[0][nt][3] += st.m1 * tmp[nt][3];
#pragma unroll
                for (int i = 0; i < 4; ++i) tmp[nt][i] = 0.f;
            }
            ++st.grp;
            st.left = kbpg;
            gq_set_group<B, GRID>(st, st.nxt);
            if (st.grp + 1 < n_groups) gq_meta<MW>(meta, mtile, n_groups, st.grp + 1, g, st.nxt);
        }
        --st.left;
        u32 p0[4], p1[4];
        gq_pairs<B, GRID>(win0, st.zz0, st.zm0, p0, st.bias);
        gq_pairs<B, GRID>(win1, st.zz1, st.zm1, p1, st.bias);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                mma16816(tmp[nt], p0[2 * h], p1[2 * h], p0[2 * h + 1], p1[2 * h + 1], h ? xv[nt].z : xv[nt].x,
                         h ? xv[nt].w : xv[nt].y);
        }
    } else {
        // Per-column groups: pair p = columns (col+2p, col+2p+1); one meta load serves both
        // rows of the lane (their scales share a word).
        u32 sw[8], zw[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int cc = col + j;
            int gi = 0;
            if (cc < in) gi = g_idx != nullptr ? __ldg(g_idx + cc) : fastdiv(cc, gdiv_mul, gdiv_shr);
            u32 m[2];
            gq_meta<MW>(meta, mtile, n_groups, gi, g, m);
            sw[j] = m[0];
            zw[j] = m[1];
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            u32 a[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                // r: 0 = (row g, pair 2h), 1 = (row g+8, pair 2h), 2 = (row g, pair 2h+1), 3 = (row g+8, 2h+1)
                const int p = 2 * h + (r >> 1);
                const u32 sel = (r & 1) ? 0x7632 : 0x5410;
                u32 sc = prmt(sw[2 * p], sw[2 * p + 1], sel);
                const u32 zc = prmt(zw[2 * p], zw[2 * p + 1], sel);
                if (GRID == GRID_HALFINT) sc = hmul2(sc, (u32)(0x3C00u - ((B - 1) << 10)) * 0x10001u);  // s / n, exact
                a[r] = hmul2(grid_pair<B, GRID>((r & 1) ? win1 : win0, p, zc), sc);
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                mma16816(acc[0][nt], a[0], a[1], a[2], a[3], h ? xv[nt].z : xv[nt].x, h ? xv[nt].w : xv[nt].y);
        }
    }
}

template <int B, int GRID, int NT, bool PERCOL>
LB_DEV void gq_body(const uint4* __restrict__ qa, const u32* __restrict__ meta, const int* __restrict__ g_idx,
                    const u16* __restrict__ x, void* __restrict__ y, float* __restrict__ ws,
                    int* __restrict__ counters, int out, int in, int batch, int n_groups, int group_size,
                    u32 gdiv_mul, u32 gdiv_shr, int out_f16) {
    constexpr int S = GqStages<B>::value;
    constexpr int MW = GRID == GRID_AFFINE ? 2 : 1;
    constexpr int STAGE_BYTES = LB_WARPS * S * B * 32 * 16;
    constexpr int RED_BYTES = LB_WARPS * NT * 4 * 32 * 4;
    __shared__ __align__(16) unsigned char smem[STAGE_BYTES > RED_BYTES ? STAGE_BYTES : RED_BYTES];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int mtile = blockIdx.x;
    const int o0 = mtile * 16;
    const int n0 = blockIdx.y * (8 * NT);
    const int n_kb = (in + 31) >> 5;
    const int nch = (n_kb + 7) >> 3;
    int cb0, cb1;
    lb_k_range(nch, cb0, cb1);
    // This warp's contiguous run of the block's chunks (LB_WARPS is a power of two: shifts).
    const int c0 = cb0 + (int)((unsigned)((cb1 - cb0) * warp) / LB_WARPS);
    const int c1 = cb0 + (int)((unsigned)((cb1 - cb0) * (warp + 1)) / LB_WARPS);

    uint4* ring = reinterpret_cast<uint4*>(smem) + warp * (S * B * 32) + lane;
    const uint4* src = qa + (size_t)mtile * nch * (B * 32) + lane;
    // Activation rows of this lane (B fragments: batch column g of each n8 tile); null when past
    // the batch. Whole chunks with in % 8 == 0 take 16-byte loads without bounds checks.
    const u16* xrow[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int n = n0 + nt * 8 + g;
        xrow[nt] = n < batch ? x + (size_t)n * in + 8 * tq : nullptr;
    }
    const bool xvec = (in & 7) == 0;

#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (c0 + s < c1) {
            const uint4* sp = src + (size_t)(c0 + s) * (B * 32);
#pragma unroll
            for (int v = 0; v < B; ++v) cp_async16(ring + (s * B + v) * 32, sp + v * 32);
        }
        cp_async_commit();
    }

    float acc[1][NT][4];
    float tmp[NT][4];
    zero_acc<1, NT>(acc);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) tmp[nt][i] = 0.f;

    // Factored path: `left` counts the k-blocks remaining in group `grp`; the next group's meta
    // words are loaded one group ahead.
    const int kbpg = group_size >> 5;
    GqGroup st;
    asm("mov.b32 %0, 0x64006400;" : "=r"(st.bias));
    st.grp = 0;
    st.left = 0;
    st.nxt[0] = 0u;
    st.nxt[1] = H2_1024;
    {
        const u32 none[2] = {0u, H2_1024};
        gq_set_group<B, GRID>(st, none);
    }
    if (!PERCOL && c0 < c1) {
        const int kb0 = c0 * 8;
        st.grp = fastdiv(kb0 * 32, gdiv_mul, gdiv_shr);
        st.left = kbpg - (kb0 - st.grp * kbpg);
        u32 cur[2];
        gq_meta<MW>(meta, mtile, n_groups, st.grp, g, cur);
        gq_set_group<B, GRID>(st, cur);
        if (st.grp + 1 < n_groups) gq_meta<MW>(meta, mtile, n_groups, st.grp + 1, g, st.nxt);
    }

    int stage = 0;
    for (int c = c0; c < c1; ++c) {
        cp_async_wait<S - 2>();
        u32 w[4 * B];
#pragma unroll
        for (int v = 0; v < B; ++v) {
            const uint4 q = ring[(stage * B + v) * 32];
            w[4 * v] = q.x;
            w[4 * v + 1] = q.y;
            w[4 * v + 2] = q.z;
            w[4 * v + 3] = q.w;
        }
        // Refill the stage read in the previous iteration (its words are in registers by now).
        {
            const int cn = c + S - 1;
            const int sn = stage == 0 ? S - 1 : stage - 1;
            if (cn < c1) {
                const uint4* sp = src + (size_t)cn * (B * 32);
#pragma unroll
                for (int v = 0; v < B; ++v) cp_async16(ring + (sn * B + v) * 32, sp + v * 32);
            }
            cp_async_commit();
        }
        stage = stage + 1 == S ? 0 : stage + 1;

        if (xvec && (c + 1) * 256 <= in) {
            // Whole chunk inside the matrix: 16-byte activation loads without bounds checks.
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                uint4 xv[NT];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    xv[nt] = xrow[nt] != nullptr ? __ldg(reinterpret_cast<const uint4*>(xrow[nt] + c * 256 + t * 32))
                                                 : make_uint4(0u, 0u, 0u, 0u);
                gq_kblock<B, GRID, NT, PERCOL>(gq_window<B>(w, t, 0), gq_window<B>(w, t, 1), xv,
                                               c * 256 + t * 32 + 8 * tq, acc, tmp, st, meta, g_idx, mtile,
                                               n_groups, g, in, kbpg, gdiv_mul, gdiv_shr);
            }
        } else {
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const int kb = c * 8 + t;
                if (kb >= n_kb) break;
                const int col = kb * 32 + 8 * tq;
                uint4 xv[NT];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) xv[nt] = load_x8(x, n0 + nt * 8 + g, batch, in, col);
                gq_kblock<B, GRID, NT, PERCOL>(gq_window<B>(w, t, 0), gq_window<B>(w, t, 1), xv, col, acc, tmp,
                                               st, meta, g_idx, mtile, n_groups, g, in, kbpg, gdiv_mul,
                                               gdiv_shr);
            }
        }
    }
    if (!PERCOL) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            acc[0][nt][0] += st.m0 * tmp[nt][0];
            acc[0][nt][1] += st.m0 * tmp[nt][1];
            acc[0][nt][2] += st.m1 * tmp[nt][2];
            acc[0][nt][3] += st.m1 * tmp[nt][3];
        }
    }
    // The reduction buffer aliases the rings: every warp must be done with them.
    cp_async_wait<0>();
    __syncthreads();
    GqRowMap rm;
    rm.o0 = o0;
    lb_epilogue<1, NT>(acc, reinterpret_cast<float*>(smem), nullptr, rm, n0, y, ws, counters, out, batch, out_f16);
}

#define GQ_ARGS                                                                                    \
    const uint4 *__restrict__ qa, const u32 *__restrict__ meta, const int *__restrict__ g_idx,     \
        const u16 *__restrict__ x, void *__restrict__ y, float *__restrict__ ws,                   \
        int *__restrict__ counters, int out, int in, int batch, int n_groups, int group_size,      \
        u32 gdiv_mul, u32 gdiv_shr, int out_f16
#define GQ_PASS                                                                                    \
    qa, meta, g_idx, x, y, ws, counters, out, in, batch, n_groups, group_size, gdiv_mul, gdiv_shr, \
        out_f16
// Register caps: at most 128 per thread for the GEMV (4 blocks per SM), 255 for the GEMM.
#define GQ_ENTRY(GNAME, GRID, B, PATH, NT, PC, SUF)                                                \
    extern "C" __global__ void __launch_bounds__(LB_THREADS, NT == 1 ? 4 : 2)                      \
        gq_##GNAME##_b##B##_##PATH##SUF(GQ_ARGS) {                                                 \
        gq_body<B, GRID, NT, PC>(GQ_PASS);                                                         \
    }
#define GQ_GRID(GNAME, GRID, B)                                                                    \
    GQ_ENTRY(GNAME, GRID, B, gemv, 1, false, )                                                     \
    GQ_ENTRY(GNAME, GRID, B, gemm, LB_GEMM_NT, false, )                                            \
    GQ_ENTRY(GNAME, GRID, B, gemv, 1, true, _pc)                                                   \
    GQ_ENTRY(GNAME, GRID, B, gemm, LB_GEMM_NT, true, _pc)
#define GQ_BITS_ALL(B)                                                                             \
    GQ_GRID(affine, GRID_AFFINE, B)                                                                \
    GQ_GRID(halfint, GRID_HALFINT, B)                                                              \
    GQ_GRID(shift, GRID_SHIFT, B)

// The run-time compiler may define GQ_BITS to instantiate a single bit width.
#if !defined(GQ_BITS) || GQ_BITS == 2
GQ_BITS_ALL(2)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 3
GQ_BITS_ALL(3)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 4
GQ_BITS_ALL(4)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 5
GQ_BITS_ALL(5)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 6
GQ_BITS_ALL(6)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 7
GQ_BITS_ALL(7)
#endif
#if !defined(GQ_BITS) || GQ_BITS == 8
GQ_BITS_ALL(8)
#endif
