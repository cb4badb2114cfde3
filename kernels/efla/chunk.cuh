// Shared pieces of the chunked EFLA kernels (docs/efla.md, chunked WY algorithm; the math is that of
// src/ops/efla/reference.rs `chunked_*`, rewritten with T = X diag(alpha) so that W = T K and
// U = T V never go through memory):
//
//   per chunk of C <= 64 steps, seg_i = last reset at or before step i of the chunk,
//   Gm = strict_lower(K K^T), Pm = lower(Q K^T)      (entries (i, j) with j < seg_i masked)
//   X  = (I + diag(alpha) Gm)^{-1},  T = X diag(alpha)
//   c_i = [no reset in steps 0..=i],  e_i = [i is in the chunk's last segment]
//   R     = V - diag(c) K S_in
//   delta = T R                                   (= U - diag(c) W S_in of the reference)
//   O     = scale (diag(c) Q S_in + Pm delta)
//   S_out = c_last S_in + K^T diag(e) delta
//
// Resets isolate non-finite values (docs/efla.md): a tensor-core product over the steps of a chunk
// cannot skip the terms its mask excludes, and 0 * NaN is NaN. So every such product is made exact
// by construction: an operand whose excluded rows are selected to 0 on *both* sides (the sums
// weighted by c or e), structural zeros kept as zeros (X, Gm, Pm and their gradients across
// segments, by selection), and where one side of a product is a dense per-step tile (R, delta,
// dO, d(delta), K, Q), its non-finite entries are staged as 0 and recorded in one 64-bit row mask
// per tile column (`nf`); the product's results are then set to NaN exactly where the recorded
// entries reach them within their segment (`mark`). With finite inputs nothing is recorded and
// every bit is what the plain product gives; a non-finite value never reaches another segment.
//
// Precision (tc.cuh): every tensor-core product feeding the states S and dS (hence s_final and
// ds0, which must stay f32-accurate) uses PX planes and level LX; products feeding only the
// outputs o, dq, dk, dv, dbeta use PO / LO (one bf16 plane for half storage, whose results are
// rounded to 16 bits anyway: this is what fla does everywhere). Storage inputs use PI planes:
// exact for bf16 (1) and f16 (2); f32 uses 3 planes throughout.
#pragma once
#include "efla/efla.cuh"
#include "efla/tc.cuh"

namespace efla {

constexpr int CH = 64;                 // rows of every chunk tile (chunks of C <= 64 steps)
constexpr int LDC = tc::ld_for(64);    // row stride of 64-column tiles (72)
constexpr int ACC = CH * LDC;          // elements of one plane of a 64 x 64 tile
constexpr int LDF = 65;                // row stride of 64 x 64 f32 tiles

// Per storage type: planes and levels (above), the storage IT of intermediates read only by
// output-side products, VT (columns of S per block of the state passes) and VB (columns of V per
// staged block of efla_ck_grads). f32 uses narrower tiles and ALIAS_PM (the state pass stages
// Pm into Q's buffer once Q S is done) so that every kernel fits 163 KB of shared memory (A100).
template <typename S> struct Prec;
template <> struct Prec<bf16s> {
    static constexpr int PI = 1, PX = 2, LX = 2, PO = 1, LO = 1, VT = 32, VB = 32;
    static constexpr bool ALIAS_PM = false;
    using IT = bf16s;
};
template <> struct Prec<f16s> {
    static constexpr int PI = 2, PX = 2, LX = 2, PO = 1, LO = 1, VT = 32, VB = 32;
    static constexpr bool ALIAS_PM = false;
    using IT = bf16s;
};
template <> struct Prec<float> {
    static constexpr int PI = 3, PX = 3, LX = 3, PO = 3, LO = 3, VT = 16, VB = 16;
    static constexpr bool ALIAS_PM = true;
    using IT = float;
};

// The chunk a block works on.
struct Chunk {
    int t0, len;
};
__device__ __forceinline__ Chunk chunk_of(const Dims& d, int n) {
    const int t0 = n * d.C;
    return {t0, min(d.C, d.T - t0)};
}
__device__ __forceinline__ int round16(int x) { return (x + 15) & ~15; }

using u64 = unsigned long long;

// x is neither infinite nor NaN (a bit test: holds under any floating-point compiler flags).
__device__ __forceinline__ bool finite32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ float nan32() { return __int_as_float(0x7fc00000); }

// x, or 0 with bit r of nf[c] set where x is not finite (nf null: x).
__device__ __forceinline__ float keep_finite(float x, u64* nf, int r, int c) {
    if (nf && !finite32(x)) {
        atomicOr(nf + c, 1ull << r);
        return 0.f;
    }
    return x;
}

// segm[i]: the rows of step i's segment (bits j < len with seg[j] == seg[i]; 0 past the end).
// Every thread calls it after seg[] is complete; ends with a barrier.
__device__ __forceinline__ void chunk_segm(const int* seg, int len, u64* segm, int tid) {
    if (tid < CH) {
        u64 m = 0;
        if (tid < len)
            for (int j = 0; j < len; ++j)
                if (seg[j] == seg[tid]) m |= 1ull << j;
        segm[tid] = m;
    }
    __syncthreads();
}
// The rows of step i's segment at or before i (LOWER), at or after i (UPPER), or all (SEG): the
// steps whose entries reach row i of a lower-triangular, upper-triangular or symmetric product.
enum Reach { LOWER, UPPER, SEG };
template <Reach R>
__device__ __forceinline__ u64 reach(const u64* segm, int i) {
    if (R == LOWER) return segm[i] & ((2ull << i) - 1);
    if (R == UPPER) return segm[i] & ~((1ull << i) - 1);
    return segm[i];
}
// NaN into every element (row i = m0 + ., column c = n0 + .) of a warp's 16 x (8 NT) accumulator
// tile that a recorded non-finite entry reaches: nf[c] & reach<R>(i) (nf[c]: the rows of the
// right operand's column c, the product's contraction index) or, BY_ROW, nf[i] & reach<R>(c)
// (nf[i]: the columns of the left operand's row i, for a right factor triangular in c).
template <Reach R, bool BY_ROW = false, int NT>
__device__ __forceinline__ void mark(float (&acc)[1][NT][4], const u64* nf, const u64* segm,
                                     int m0, int n0, int lane) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = m0 + tc::acc_row(lane, e), c = n0 + 8 * nt + tc::acc_col(lane, e);
            const u64 hit = BY_ROW ? nf[i] & reach<R>(segm, c) : nf[c] & reach<R>(segm, i);
            if (hit) acc[0][nt][e] = nan32();
        }
}

// The reset structure of a chunk, in shared memory: seg[i] (last reset at or before i, -1 for
// none), cf[i] = c_i, ef[i] = e_i (0 past the chunk's end). Uses fl[] as scratch; every thread
// of the block calls it; ends with a barrier.
__device__ __forceinline__ void chunk_segs(const Dims& d, const unsigned char* start, int b,
                                           Chunk ch, int* fl, int* seg, float* cf, float* ef,
                                           int tid) {
    if (tid < CH) fl[tid] = tid < ch.len && reset_at(d, start, b, ch.t0 + tid);
    __syncthreads();
    if (tid < CH) {
        int s = -1;
        for (int j = 0; j <= tid; ++j)
            if (fl[j]) s = j;
        seg[tid] = s;
    }
    __syncthreads();
    if (tid < CH) {
        const bool in = tid < ch.len;
        cf[tid] = in && seg[tid] < 0 ? 1.f : 0.f;
        ef[tid] = in && seg[tid] == seg[ch.len - 1] ? 1.f : 0.f;
    }
    __syncthreads();
}
// Steps j <= i of the chunk share a segment.
__device__ __forceinline__ bool same_seg(const int* seg, int i, int j) { return seg[i] <= j; }

// Stage a 64 x W tile into P planes (row stride ld, plane stride ps):
//   x = src[base + r * rstride + c0 + c]   for r < nr, c0 + c < nc, rs[r] != 0,
//   dst[r][c] = x == 0 ? 0 : x * cs[c]
// and 0 elsewhere: rs selects rows (a mask, never a factor), cs scales columns but keeps exact
// zeros (the structural zeros of X across segments stay 0 where alpha is not finite); both may
// be null. With nf, non-finite x are staged as 0 and recorded (keep_finite). All NTH threads of
// the block call it. Every thread loads 4 pairs (in flight together), then splits and stores
// them, and so on (a fully unrolled loop would hoist the index arithmetic of every staging into
// registers and spill).
template <int P, int W, int NTH, typename T>
__device__ __forceinline__ void stage(bf16s* dst, int ld, int ps, const T* __restrict__ src,
                                      size_t base, size_t rstride, int nr, int c0, int nc,
                                      const float* rs, const float* cs, int tid,
                                      u64* nf = nullptr) {
    constexpr int HALF = W / 2, IT = CH * HALF / NTH, GRP = IT < 4 ? IT : 4;
    static_assert(CH * HALF % NTH == 0 && IT % GRP == 0, "whole pairs per thread");
#pragma unroll 1
    for (int g0 = 0; g0 < IT; g0 += GRP) {
        float x0[GRP], x1[GRP];
#pragma unroll
        for (int it = 0; it < GRP; ++it) {
            const int e = tid + (g0 + it) * NTH, r = e / HALF, c = 2 * (e % HALF);
            x0[it] = 0.f;
            x1[it] = 0.f;
            if (r < nr && (!rs || rs[r] != 0.f)) {
                const size_t at = base + (size_t)r * rstride + c0 + c;
                if (c0 + c < nc) x0[it] = to_f32(src[at]);
                if (c0 + c + 1 < nc) x1[it] = to_f32(src[at + 1]);
            }
        }
#pragma unroll
        for (int it = 0; it < GRP; ++it) {
            const int e = tid + (g0 + it) * NTH, r = e / HALF, c = 2 * (e % HALF);
            float a = keep_finite(x0[it], nf, r, c), b = keep_finite(x1[it], nf, r, c + 1);
            if (cs) {
                a = a == 0.f ? 0.f : a * cs[c];
                b = b == 0.f ? 0.f : b * cs[c + 1];
            }
            tc::put2<P>(dst, ps, r * ld + c, a, b);
        }
    }
}

// The step flags and alpha of a chunk, as efla_ck_prep left them in coef (alpha, dk factor,
// dbeta factor, c + 2 e + 4 (seg + 1)): al[i], cf[i] = c_i, ef[i] = e_i, seg[i] and segm[i]
// (chunk_segm; 0 past the chunk's end). Ends with a barrier.
__device__ __forceinline__ void chunk_coef(const Dims& d, const float* __restrict__ coef, int bh,
                                           Chunk ch, float* al, float* cf, float* ef, int* seg,
                                           u64* segm, int tid) {
    if (tid < CH) {
        float a = 0.f, c = 0.f, e = 0.f;
        int s = -1;
        if (tid < ch.len) {
            const float* cp = coef + ((size_t)bh * d.T + ch.t0 + tid) * 4;
            a = cp[0];
            const int f = (int)cp[3];
            c = (float)(f & 1);
            e = (float)((f >> 1) & 1);
            s = (f >> 2) - 1;
        }
        al[tid] = a;
        cf[tid] = c;
        ef[tid] = e;
        seg[tid] = s;
    }
    __syncthreads();
    chunk_segm(seg, ch.len, segm, tid);
}

// Write accumulator element pairs of a warp's 16 x (8 NT) tile at (m0, n0) into P planes (with
// nf: non-finite elements as 0, recorded by keep_finite).
template <int P, int NT>
__device__ __forceinline__ void put_acc(bf16s* dst, int ld, int ps, const float (&acc)[1][NT][4],
                                        int m0, int n0, int lane, u64* nf = nullptr) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int r = m0 + tc::acc_row(lane, 2 * hh), c = n0 + 8 * nt + tc::acc_col(lane, 0);
            tc::put2<P>(dst, ps, r * ld + c, keep_finite(acc[0][nt][2 * hh], nf, r, c),
                        keep_finite(acc[0][nt][2 * hh + 1], nf, r, c + 1));
        }
}

}  // namespace efla
