// docs/efla.md, chunked algorithm, step 1 (forward and backward): everything of a chunk that does
// not depend on the state (see efla/chunk.cuh for the algorithm):
//   G = K K^T and P = Q K^T on the tensor cores (exact-input planes, f32 accumulation),
//   the step coefficients (alpha, dk factor, dbeta factor) from beta and lambda_i = G_ii,
//   Gm = strict_lower(G) and Pm = lower(P) masked across resets,
//   X = (I + diag(alpha) Gm)^{-1} by forward substitution in f32.
// Writes coef [B*H, T, 4] (alpha, dk factor, dbeta factor, c + 2 e + 4 (seg + 1): the step's
// reset structure for the state passes), X and Pm [B*H, NC, C, C] f32, and Gm (when given, the
// backward).
//
// Thread layout: one block of 128 threads (4 warps) per (batch row, head, chunk); the chunk's
// rows are padded to 64. Products: warp w owns rows 16w .. 16w+15 of G and P (8 n-tiles of 8),
// the keys are staged in blocks of 64 columns (row stride 72: ldmatrix without bank conflicts).
// The solve: columns of X are independent (X[i][j] = -alpha_i sum_{j <= l < i} Gm[i][l] X[l][j],
// the terms of X's structural zeros skipped: Gm may not be finite);
// lanes 2j and 2j + 1 own column j, one parity of l each, in registers, reading Gm rows as
// shared-memory broadcasts.
// Every chunk is independent: the grid is B * H * NC blocks.
#include "efla/chunk.cuh"

using namespace efla;

namespace {

constexpr int NTH = 128;

template <typename S>
__device__ void ck_prep(const S* __restrict__ q, const S* __restrict__ k,
                        const S* __restrict__ beta, const unsigned char* __restrict__ start,
                        float* __restrict__ coef, float* __restrict__ Xg, float* __restrict__ Pg,
                        float* __restrict__ Gg, const Dims d) {
    using P = Prec<S>;
    LINREC_DYN_SMEM(unsigned char, smem);
    bf16s* Kp = reinterpret_cast<bf16s*>(smem);
    bf16s* Qp = Kp + P::PI * ACC;
    float* Gs = reinterpret_cast<float*>(Qp + P::PI * ACC);
    float* Xs = Gs + CH * LDF;
    int* fl = reinterpret_cast<int*>(Xs + CH * LDF);
    int* seg = fl + CH;
    float* al = reinterpret_cast<float*>(seg + CH);
    float* cf = al + CH;
    float* ef = cf + CH;
    LINREC_CHECK_DYN_SMEM((char*)(ef + CH) - (char*)smem);

    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * d.NC) return;
    const int bh = (int)(g / d.NC), n = (int)(g % d.NC), b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const Chunk ch = chunk_of(d, n);
    const int K = d.K, C = d.C;
    const size_t cc = ((size_t)bh * d.NC + n) * C * C;
    const size_t rs = (size_t)d.H * K;  // elements between steps of one head
    chunk_segs(d, start, b, ch, fl, seg, cf, ef, tid);

    float ag[1][8][4], ap[1][8][4];
    tc::zero(ag);
    tc::zero(ap);
    for (int k0 = 0; k0 < K; k0 += 64) {
        const size_t base = seq_at(d, b, ch.t0, h, K) + k0;
        stage<P::PI, 64, NTH>(Kp, LDC, ACC, k, base, rs, ch.len, 0, K - k0, nullptr, nullptr, tid);
        stage<P::PI, 64, NTH>(Qp, LDC, ACC, q, base, rs, ch.len, 0, K - k0, nullptr, nullptr, tid);
        __syncthreads();
        const int kd = round16(min(64, K - k0));
        tc::gemm<1, 8, P::PI, P::PI, P::LX, false, false>(ag, {Kp, LDC, ACC}, {Kp, LDC, ACC},
                                                          16 * w, 0, kd, lane);
        tc::gemm<1, 8, P::PI, P::PI, P::LX, false, false>(ap, {Qp, LDC, ACC}, {Kp, LDC, ACC},
                                                          16 * w, 0, kd, lane);
        __syncthreads();
    }
    // G to shared memory; Pm (masked) straight out
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = 16 * w + tc::acc_row(lane, e), j = 8 * nt + tc::acc_col(lane, e);
            Gs[i * LDF + j] = ag[0][nt][e];
            if (i < ch.len && j < ch.len)
                Pg[cc + (size_t)i * C + j] = j <= i && same_seg(seg, i, j) ? ap[0][nt][e] : 0.f;
        }
    __syncthreads();
    if (tid < CH) {
        float a = 0.f;
        if (tid < ch.len) {
            const int t = ch.t0 + tid;
            const Coef c = rule_coef(d.flags & RULE_EFLA, to_f32(beta[seq_at(d, b, t, h, 1)]),
                                     Gs[tid * LDF + tid]);
            float* cp = coef + ((size_t)bh * d.T + t) * 4;
            cp[0] = c.alpha;
            cp[1] = c.dkf;
            cp[2] = c.dbf;
            // the step's reset structure, for the state passes (chunk_coef)
            cp[3] = cf[tid] + 2.f * ef[tid] + 4.f * (float)(seg[tid] + 1);
            a = c.alpha;
        }
        al[tid] = a;
    }
    __syncthreads();
    // Gm in place (strictly lower, same segment, inside the chunk)
    for (int e = tid; e < CH * CH; e += NTH) {
        const int i = e / CH, j = e % CH;
        const float v = j < i && i < ch.len && same_seg(seg, i, j) ? Gs[i * LDF + j] : 0.f;
        Gs[i * LDF + j] = v;
        if (Gg && i < ch.len && j < ch.len) Gg[cc + (size_t)i * C + j] = v;
    }
    __syncthreads();
    // X by forward substitution: column j by the lane pair 2j, 2j + 1, each holding the rows of
    // one parity in registers and summing over them; a shuffle adds the two halves
    {
        const int j = tid >> 1, part = tid & 1;
        float xh[CH / 2];
#pragma unroll
        for (int i = 0; i < CH; ++i) {
            float s = 0.f;
#pragma unroll
            for (int m = 0; m < i / 2 + 1; ++m)
                if (2 * m + part < i && 2 * m + part >= j) s += Gs[i * LDF + 2 * m + part] * xh[m];
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            // X is block diagonal over the segments: entries across one are 0 by selection (the
            // sum multiplies the other segment's entries, maybe not finite, by Gm's zeros)
            const float x = i == j ? 1.f : (i < j || j < seg[i] ? 0.f : -al[i] * s);
            if ((i & 1) == part) xh[i / 2] = x;
        }
#pragma unroll
        for (int m = 0; m < CH / 2; ++m) Xs[(2 * m + part) * LDF + j] = xh[m];
    }
    __syncthreads();
    for (int e = tid; e < ch.len * ch.len; e += NTH) {
        const int i = e / ch.len, j = e % ch.len;
        Xg[cc + (size_t)i * C + j] = Xs[i * LDF + j];
    }
}

}  // namespace

// Minimum blocks per SM 1: with only the block size, ptxas aims at 128 registers and spills 8
// bytes in the f32 variant (three bf16 planes per operand); 1 lets it use 131-156 (sm_80/90).
#define LINREC_EFLA_PREP(SUF, S)                                                                 \
    extern "C" __global__ void __launch_bounds__(NTH, 1) efla_ck_prep_##SUF(                     \
        const S* q, const S* k, const S* beta, const unsigned char* start, float* coef,         \
        float* X, float* Pm, float* Gm, Dims d) {                                                \
        ck_prep<S>(q, k, beta, start, coef, X, Pm, Gm, d);                                       \
    }                                                                                            \
    LINREC_REGISTER(efla_ck_prep_##SUF)

LINREC_EFLA_PREP(f32, float)
LINREC_EFLA_PREP(f16, f16s)
LINREC_EFLA_PREP(bf16, bf16s)
