// Warp-level tensor-core matrix products on bf16 "planes" in shared memory, for the EFLA chunk
// kernels (docs/efla.md, chunked algorithm).
//
// Precision by splitting: an f32 value x is held as P bf16 planes, x ~ h0 + h1 + h2 with
// h0 = bf16(x), h1 = bf16(x - h0), h2 = bf16(x - h0 - h1) (1 plane: 8 significant bits, 2: ~16,
// 3: all 24 of f32). A product of a P_A-plane and a P_B-plane operand sums the plane products
// (i, j) with i + j < L on mma.m16n8k16 (bf16 in, f32 accumulate): the dropped terms are below
// 2^(-8 L) of the product. bf16 inputs are exact in 1 plane and f16 inputs in 2; f32 inputs,
// and any f32 intermediate, need 3 for f32-level results.
//
// Layout rules (bank-conflict free for ldmatrix and for the paired 32-bit epilogue stores):
// a matrix of `cols` columns is stored row-major with row stride ld = round_up(cols, 16) + 8
// elements, so ld / 8 is odd (8 rows of a ldmatrix phase hit 8 distinct 16-byte bank groups)
// and ld / 2 = 4 mod 8 (the 8 row groups x 4 lanes of an epilogue store hit 32 distinct banks).
// Every row starts 16-byte aligned. Plane p of a matrix starts `ps` elements after plane 0.
#pragma once
#include "common.cuh"

namespace tc {

__host__ __device__ constexpr int ld_for(int cols) { return (cols + 15) / 16 * 16 + 8; }

// Split x into P bf16 planes (bit patterns), most significant first.
template <int P>
__device__ __forceinline__ void split(float x, unsigned short (&h)[P]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const bf16s b = from_f32<bf16s>(x);
        h[p] = b.bits;
        x -= to_f32(b);
    }
}

// Element idx of a P-plane matrix <- x.
template <int P>
__device__ __forceinline__ void put1(bf16s* m, int ps, int idx, float x) {
    unsigned short h[P];
    split<P>(x, h);
#pragma unroll
    for (int p = 0; p < P; ++p) m[p * ps + idx].bits = h[p];
}

// Elements idx, idx + 1 (idx even) <- x0, x1, one 32-bit store per plane.
template <int P>
__device__ __forceinline__ void put2(bf16s* m, int ps, int idx, float x0, float x1) {
    unsigned short h0[P], h1[P];
    split<P>(x0, h0);
    split<P>(x1, h1);
#pragma unroll
    for (int p = 0; p < P; ++p)
        *reinterpret_cast<unsigned*>(m + p * ps + idx) = (unsigned)h0[p] | ((unsigned)h1[p] << 16);
}

// The value of element idx (sum of its P planes).
template <int P>
__device__ __forceinline__ float get1(const bf16s* m, int ps, int idx) {
    float x = 0.f;
#pragma unroll
    for (int p = P - 1; p >= 0; --p) x += to_f32(m[p * ps + idx]);
    return x;
}

// The A fragment (16 x 16 at (m0, k0)) of a logical m x k matrix A stored row-major [m][k]
// (TA = false) or as its transpose [k][m] (TA = true), row stride ld.
template <bool TA>
__device__ __forceinline__ void frag_a(unsigned (&a)[4], const bf16s* p, int ld, int m0, int k0,
                                       int lane) {
    const int i = lane >> 3, r = lane & 7;
    const bf16s* row = TA ? p + (k0 + r + (i >> 1) * 8) * ld + m0 + (i & 1) * 8
                          : p + (m0 + r + (i & 1) * 8) * ld + k0 + (i >> 1) * 8;
    ldsm<4, TA>(a, row);
}

// The B fragments of two n-tiles (16 x 16 at (k0, n0)) of a logical k x n matrix B stored
// n-major [n][k] (TB = false) or k-major [k][n] (TB = true): b[0..1] for columns n0 .. n0+7,
// b[2..3] for n0+8 .. n0+15.
template <bool TB>
__device__ __forceinline__ void frag_b2(unsigned (&b)[4], const bf16s* p, int ld, int k0, int n0,
                                        int lane) {
    const int i = lane >> 3, r = lane & 7;
    const bf16s* row = TB ? p + (k0 + r + (i & 1) * 8) * ld + n0 + (i >> 1) * 8
                          : p + (n0 + r + (i >> 1) * 8) * ld + k0 + (i & 1) * 8;
    ldsm<4, TB>(b, row);
}

// A shared-memory operand: plane 0 at p, row stride ld, plane stride ps (elements).
struct Op {
    const bf16s* p;
    int ld, ps;
};

// acc[mt][nt] += sum over k < kdim (a multiple of 16) of A(m0 + 16 mt + ., k) B(k, n0 + 8 nt + .)
// with PA planes of A, PB of B and the plane products i + j < L. One warp; NT even.
template <int MT, int NT, int PA, int PB, int L, bool TA, bool TB>
__device__ __forceinline__ void gemm(float (&acc)[MT][NT][4], Op A, Op B, int m0, int n0,
                                     int kdim, int lane) {
    static_assert(NT % 2 == 0, "n-tiles come in pairs");
    for (int k0 = 0; k0 < kdim; k0 += 16) {
        unsigned bf[PB][NT / 2][4];
#pragma unroll
        for (int j = 0; j < PB; ++j)
#pragma unroll
            for (int np = 0; np < NT / 2; ++np)
                frag_b2<TB>(bf[j][np], B.p + j * B.ps, B.ld, k0, n0 + 16 * np, lane);
#pragma unroll
        for (int i = 0; i < PA; ++i) {
            unsigned af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                frag_a<TA>(af[mt], A.p + i * A.ps, A.ld, m0 + 16 * mt, k0, lane);
#pragma unroll
            for (int j = 0; j < PB; ++j) {
                if (i + j >= L) continue;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const unsigned b2[2] = {bf[j][nt / 2][2 * (nt % 2)],
                                                bf[j][nt / 2][2 * (nt % 2) + 1]};
                        mma_bf16(acc[mt][nt], af[mt], b2);
                    }
            }
        }
    }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

// Row and column (within a 16 x 8 tile) of accumulator element e of lane `lane`.
__device__ __forceinline__ int acc_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int acc_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

}  // namespace tc
