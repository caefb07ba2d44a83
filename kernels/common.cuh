// lowbit CUDA kernels: shared helpers.
//
// Every kernel file includes only this header and no system header, so the same source compiles
//   * standalone with `nvcc -arch=sm_90 -cubin -Ikernels FILE.cu` (nvcc pre-includes the CUDA
//     runtime headers for .cu files, nothing else is needed), and
//   * through NVRTC at run time (src/cuda.rs pastes this header in front of the kernel file, so no
//     include path and no toolkit headers are needed on the machine that runs the binary).
// fp16 is handled as raw 16-bit patterns (`u16`, and `u32` holding a packed half2) with inline PTX,
// so cuda_fp16.h is not needed either.
//
// Requires sm_80 or newer (mma.sync m16n8k16 with fp32 accumulation, ld.global.nc.L1::no_allocate).
//
// ----------------------------------------------------------------------------------------------
// Common execution scheme (all layouts)
//
//   y[n, o] = sum_i x[n, i] * W[o, i]          x: [batch, in] f16, W: [out, in] (packed), y: [batch, out]
//
// The product runs on tensor cores as D[m, n] += A[m, k] * B[k, n] with mma.m16n8k16 (f16 in, f32
// accumulate): A = a 16 x 16 tile of dequantized W (m = output rows, k = input columns), B = 16 x 8
// tile of x^T (n = batch columns). Dequantized values are produced in registers directly in A's
// fragment layout (no shared-memory round trip), as in Marlin.
//
// The reduction index k may be permuted freely as long as A and B use the same permutation. We use
// "windows": in one k-block of 32 input columns, lane (g = lane/4, tq = lane%4) owns the 8
// consecutive columns c = kb*32 + 8*tq + j, j = 0..7, and feeds them to two mma steps h = 0, 1:
//     A/B register "k-lo" pair (k = 2tq, 2tq+1)   <- window columns (2h,   2h+4)
//     A/B register "k-hi" pair (k = 2tq+8, 2tq+9) <- window columns (2h+1, 2h+5)
// With this pairing the AWQ/FasterTransformer "magic number" dequantisation ((w >> 4j) & 0x000F000F
// | 0x64006400 = half2(1024 + q_j, 1024 + q_{j+4})) yields A registers directly, and a 16-byte load
// of x[n, c .. c+8] yields B registers with one PRMT each.
//
// Output rows may be permuted as well (each layout maps (m-tile, row g or g+8) to an output index),
// which lets one 32-bit/128-bit load feed several m-tiles.
//
// Group scales: when groups are contiguous along `in` and group_size % 32 == 0, every mma step lies
// inside one group, so A holds the *unscaled* exact grid value (q - z, q - n + 0.5, or +-2^-p; all
// exact in fp16), partial sums of a group are kept in fp32 and multiplied by the group scale once per
// group and output ("factored" path). Otherwise (act-order g_idx, odd group sizes) the scale is
// applied per element in fp16 ("per-column" path, template flag PERCOL).
//
// Work split: a block has WARPS warps working on the same output tile (MT m16 tiles x NT n8 tiles);
// the K range is split between the warps and between gridDim.z blocks (or, for the persistent VQ
// kernel, between work items). Warps are reduced through shared memory; splits (nsplit > 1) through
// an fp32 workspace with atomics and a per-tile arrival counter: the last split to arrive reads the
// sums back with atomicExch(ws, 0) (which also resets the workspace), writes y and resets its
// counter, so no memset is needed between calls.
// ----------------------------------------------------------------------------------------------
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

#ifndef LB_WARPS
#define LB_WARPS 4
#endif
#define LB_THREADS (LB_WARPS * 32)

#define LB_DEV __device__ __forceinline__

// ---------------------------------------------------------------- fp16 as raw bits
LB_DEV float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
LB_DEV u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
LB_DEV u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
LB_DEV u32 hadd2(u32 a, u32 b) {
    u32 d;
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
LB_DEV u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
LB_DEV u32 pack2(u32 lo, u32 hi) { return (lo & 0xFFFFu) | (hi << 16); }
LB_DEV u32 prmt(u32 a, u32 b, u32 sel) { return __byte_perm(a, b, sel); }

// fp16 constants (bit patterns)
#define H_1024 0x6400u   // 1024.0
#define H2_1024 0x64006400u
#define H2_HALF 0x38003800u  // (0.5, 0.5)

// ---------------------------------------------------------------- tensor-core mma
// D = A * B + D, A 16x16 f16 (row), B 16x8 f16 (col), D 16x8 f32.
// a0: (row g, k lo), a1: (row g+8, k lo), a2: (row g, k hi), a3: (row g+8, k hi)
// b0: k lo, b1: k hi (column n = g). d0,d1: row g, cols 2tq,2tq+1; d2,d3: row g+8.
LB_DEV void mma16816(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- loads
// Streaming loads for packed weights: read once, keep them out of L1.
LB_DEV u32 ldg_stream(const u32* p) {
    u32 v;
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
LB_DEV uint2 ldg_stream2(const u32* p) {
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
LB_DEV uint4 ldg_stream4(const u32* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// B fragments: x[n, c .. c+8) for one lane (n = batch row, c = first window column), as 4 words
// (x0|x1, x2|x3, x4|x5, x6|x7). Out-of-range rows/columns read as 0.
LB_DEV uint4 load_x8(const u16* __restrict__ x, int n, int batch, int in, int c) {
    uint4 r = make_uint4(0u, 0u, 0u, 0u);
    if (n >= batch || c >= in) return r;
    const u16* p = x + (size_t)n * in + c;
    if (((in & 7) == 0) && c + 8 <= in) {
        r = __ldg(reinterpret_cast<const uint4*>(p));
    } else {
        u32 w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (c + j < in) w[j >> 1] |= (u32)__ldg(p + j) << (16 * (j & 1));
        }
        r = make_uint4(w[0], w[1], w[2], w[3]);
    }
    return r;
}
// B registers of mma step h (0/1) from a window of x: (x_{2h}, x_{2h+4}) and (x_{2h+1}, x_{2h+5}).
LB_DEV void x_frag(const uint4& xv, int h, u32& b0, u32& b1) {
    u32 a = h ? xv.y : xv.x;
    u32 b = h ? xv.w : xv.z;
    b0 = prmt(a, b, 0x5410);
    b1 = prmt(a, b, 0x7632);
}

// ---------------------------------------------------------------- code windows
// A window holds the 8 codes of one row in one lane's 8 columns, code j at bits [j*B, j*B+B).
// biased_pair(j) = half2(1024 + code_j, 1024 + code_{j+4}) for j = 0..3 (exact in fp16 for B <= 8).
template <int B>
LB_DEV u32 biased_pair(u64 win, int j) {
    const u64 m = (1ull << B) - 1ull;
    if (B == 4) {
        return (((u32)win >> (4 * j)) & 0x000F000Fu) | H2_1024;
    } else {
        u32 lo = (u32)((win >> (j * B)) & m);
        u32 hi = (u32)((win >> ((j + 4) * B)) & m);
        return lo | (hi << 16) | H2_1024;
    }
}
// raw_pair(j) = code_j | code_{j+4} << 16
template <int B>
LB_DEV u32 raw_pair(u64 win, int j) {
    const u64 m = (1ull << B) - 1ull;
    if (B == 4) {
        return ((u32)win >> (4 * j)) & 0x000F000Fu;
    } else {
        u32 lo = (u32)((win >> (j * B)) & m);
        u32 hi = (u32)((win >> ((j + 4) * B)) & m);
        return lo | (hi << 16);
    }
}

// ---------------------------------------------------------------- grids
#define GRID_AFFINE 0
#define GRID_HALFINT 1
#define GRID_SHIFT 2

// fp16 bit pattern of +-2^-p for one DenseShift code (top bit = sign, low B-1 bits = p), built with
// integer operations only (no multiply): normal numbers for p <= 14, subnormals up to 2^-24, 0 below.
template <int B>
LB_DEV u32 shift_bits1(u32 code) {
    const u32 pm = (1u << (B - 1)) - 1u;
    u32 p = code & pm;
    u32 s = ((code >> (B - 1)) & 1u) << 15;
    u32 mag = p <= 14u ? ((15u - p) << 10) : (p <= 24u ? (1u << (24u - p)) : 0u);
    return mag | s;
}
// Packed version for a raw pair (two codes in the halves).
template <int B>
LB_DEV u32 shift_pair(u32 raw) {
    if (B <= 4) {
        // p <= 7: exponent field 15 - p >= 8, no borrow between halves.
        const u32 pm2 = ((1u << (B - 1)) - 1u) * 0x10001u;
        u32 sgn = (raw << (16 - B)) & 0x80008000u;
        u32 p2 = raw & pm2;
        return (0x3C003C00u - (p2 << 10)) | sgn;
    } else {
        return shift_bits1<B>(raw & 0xFFFFu) | (shift_bits1<B>(raw >> 16) << 16);
    }
}

// Exact (unscaled) grid value of a pair, as fp16x2:
//   affine : q - z          (zz = half2(1024 + z) of this row)
//   halfint: q - n + 0.5    (n = 2^(B-1))
//   shift  : +-2^-p
template <int B, int GRID>
LB_DEV u32 grid_pair(u64 win, int j, u32 zz) {
    if (GRID == GRID_AFFINE) {
        return hsub2(biased_pair<B>(win, j), zz);
    } else if (GRID == GRID_HALFINT) {
        const u32 nn = (H_1024 | (1u << (B - 1))) * 0x10001u;
        return hadd2(hsub2(biased_pair<B>(win, j), nn), H2_HALF);
    } else {
        return shift_pair<B>(raw_pair<B>(win, j));
    }
}
// Multiplier that turns the exact grid value into the weight (fp32): s for affine/shift, s/n for
// halfint.
template <int B, int GRID>
LB_DEV float grid_mult(float s) {
    return GRID == GRID_HALFINT ? s * (1.0f / (float)(1u << (B - 1))) : s;
}

// ---------------------------------------------------------------- epilogue
// Row map: which output row an accumulator row (m-tile mt, half 0 = row g / 1 = row g+8) stands for.
// Each kernel passes a functor `int operator()(int mt, int half, int g) const`.
//
// red: shared buffer of LB_WARPS * MT * NT * 4 * 32 floats.
// nsum: optional per-batch-column addend for this block (nullptr or shared array of NT*8 floats).
template <int MT, int NT, class RowMap>
LB_DEV void lb_epilogue_tile(float (&acc)[MT][NT][4], float* red, const float* nsum, RowMap rm, int n0,
                             void* __restrict__ y, float* __restrict__ ws, int* __restrict__ counters,
                             int out, int batch, int out_f16, int tile, int nsplit) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int E = MT * NT * 4;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                red[(warp * E + (mt * NT + nt) * 4 + i) * 32 + lane] = acc[mt][nt][i];
    __syncthreads();
    const bool split = nsplit > 1;
    for (int idx = threadIdx.x; idx < E * 32; idx += LB_THREADS) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < LB_WARPS; ++w) v += red[w * E * 32 + idx];
        const int e = idx >> 5, l = idx & 31;
        const int i = e & 3, nt = (e >> 2) % NT, mt = (e >> 2) / NT;
        const int o = rm(mt, i >> 1, l >> 2);
        const int nl = nt * 8 + 2 * (l & 3) + (i & 1);
        const int n = n0 + nl;
        if (o < out && n < batch) {
            if (nsum != nullptr) v += nsum[nl];
            const size_t off = (size_t)n * out + o;
            if (split) {
                atomicAdd(ws + off, v);
            } else if (out_f16) {
                reinterpret_cast<u16*>(y)[off] = f2h(v);
            } else {
                reinterpret_cast<float*>(y)[off] = v;
            }
        }
    }
    __shared__ int s_last;
    if (!split) {
        __syncthreads();  // red may be reused by the caller's next tile
        return;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = (atomicAdd(counters + tile, 1) == nsplit - 1);
    __syncthreads();
    const bool last = s_last;
    if (last) {
        __threadfence();
        for (int idx = threadIdx.x; idx < E * 32; idx += LB_THREADS) {
            const int e = idx >> 5, l = idx & 31;
            const int i = e & 3, nt = (e >> 2) % NT, mt = (e >> 2) / NT;
            const int o = rm(mt, i >> 1, l >> 2);
            const int n = n0 + nt * 8 + 2 * (l & 3) + (i & 1);
            if (o < out && n < batch) {
                const size_t off = (size_t)n * out + o;
                const float v = atomicExch(ws + off, 0.f);
                if (out_f16) {
                    reinterpret_cast<u16*>(y)[off] = f2h(v);
                } else {
                    reinterpret_cast<float*>(y)[off] = v;
                }
            }
        }
        if (threadIdx.x == 0) atomicExch(counters + tile, 0);
    }
    __syncthreads();  // s_last and red may be reused by the caller's next tile
}

// The epilogue of a block that owns one output tile (blockIdx.x, blockIdx.y) and one of gridDim.z
// K splits.
template <int MT, int NT, class RowMap>
LB_DEV void lb_epilogue(float (&acc)[MT][NT][4], float* red, const float* nsum, RowMap rm, int n0,
                        void* __restrict__ y, float* __restrict__ ws, int* __restrict__ counters,
                        int out, int batch, int out_f16) {
    lb_epilogue_tile<MT, NT>(acc, red, nsum, rm, n0, y, ws, counters, out, batch, out_f16,
                             (int)(blockIdx.x + gridDim.x * blockIdx.y), (int)gridDim.z);
}

// Range of work units [u0, u1) of this block along K (gridDim.z-way split).
LB_DEV void lb_k_range(int units, int& u0, int& u1) {
    const int z = blockIdx.z, nz = gridDim.z;
    u0 = (int)(((long long)units * z) / nz);
    u1 = (int)(((long long)units * (z + 1)) / nz);
}

template <int MT, int NT>
LB_DEV void zero_acc(float (&a)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) a[mt][nt][i] = 0.f;
}
