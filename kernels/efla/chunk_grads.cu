// docs/efla.md, chunked algorithm, backward: the input gradients of one chunk, given what the state
// passes left (efla/chunk.cuh has the forward; efla_ck_state and efla_ck_dstate wrote S_in,
// dS_end of every chunk and delta, R, d(delta), dR of every step, here read as IT):
//   dT  = d(delta) R^T,   dPm = scale mask(dO delta^T)                    (sums over V)
//   dalpha_j = sum_i X_ij dT_ij;  dX = dT diag(alpha);  N = dX X^T;  dA = -X^T N
//   dL  = dA on the masked strictly-lower entries;  dalpha_i += sum_j dL_ij Gm_ij
//   M   = diag(alpha) dL + (diag(alpha) dL)^T                             (dGm + dGm^T)
//   dQ  = scale diag(c) dO S_in^T + dPm K
//   dK  = -diag(c) dR S_in^T + diag(e) delta dS_end^T + dPm^T Q + M K + dkf dalpha K
//   dbeta = dbf dalpha                                  (dV = dR came from efla_ck_dstate)
// Everything here feeds only the outputs, so products use the output-side precision (PO / LO:
// one bf16 plane for half storage, three for f32).
//
// Thread layout: one block of 256 threads (8 warps) per (batch row, head, chunk): every chunk
// is independent, the grid is B * H * NC. For every 64 x 64 product warp w owns rows
// 16 (w % 4) .. +15 and columns 32 (w / 4) .. +31 (4 n-tiles). The sums over V run in blocks
// of VB = 32 columns (16 for f32) staged in shared memory (row stride 40 or 24); the key
// dimension in blocks of 64
// (one pass per block for dQ and dK, each re-reading its 64 rows of S_in and dS_end).
// Shared memory: the dPm and M planes persist; the staging of the three phases shares one
// region.
#include "efla/chunk.cuh"

using namespace efla;

namespace {

constexpr int NTH = 256;

template <typename S>
struct GradSmem {
    using P = Prec<S>;
    static constexpr int RVT = CH * tc::ld_for(P::VB);
    bf16s *DPp, *MP;
    int *fl, *seg;
    float *cf, *ef, *al, *da, *dkd;
    // segments; non-finite entries of K, Q, N (by column) and dX (by row) (chunk.cuh)
    u64 *segm, *nfK, *nfQ, *nfN, *nfX;
    // phase 1
    bf16s *DDp, *Rp, *GOp, *DLp;
    // phase 2
    float *dTs, *dLs;
    bf16s *XP, *DXp, *NP;
    // phase 3 (GOp, DLp shared with phase 1)
    bf16s *Sv, *dSv, *DRp, *Kp, *Qp;
    __device__ GradSmem(unsigned char* base) {
        bf16s* x = reinterpret_cast<bf16s*>(base);
        DPp = x;
        x += P::PO * ACC;
        MP = x;
        x += P::PO * ACC;
        fl = reinterpret_cast<int*>(x);
        seg = fl + CH;
        cf = reinterpret_cast<float*>(seg + CH);
        ef = cf + CH;
        al = ef + CH;
        da = al + CH;
        dkd = da + CH;
        segm = reinterpret_cast<u64*>(dkd + CH);
        nfK = segm + CH;
        nfQ = nfK + CH;
        nfN = nfQ + CH;
        nfX = nfN + CH;
        unsigned char* u = reinterpret_cast<unsigned char*>(nfX + CH);
        // phase 1 and 3 staging
        bf16s* y = reinterpret_cast<bf16s*>(u);
        GOp = y;
        y += P::PO * RVT;
        DLp = y;
        y += P::PO * RVT;
        DDp = y;
        Sv = y;
        y += P::PO * RVT;
        Rp = y;
        dSv = y;
        y += P::PO * RVT;
        DRp = y;
        y += P::PO * RVT;
        Kp = y;
        y += P::PO * ACC;
        Qp = y;
        y += P::PO * ACC;
        // phase 2
        dTs = reinterpret_cast<float*>(u);
        dLs = dTs + CH * LDF;
        bf16s* z = reinterpret_cast<bf16s*>(dLs + CH * LDF);
        XP = z;
        z += P::PO * ACC;
        DXp = z;
        NP = z;  // N = dX X^T replaces dX once every warp has used it
        z += P::PO * ACC;
        const char* end = (char*)y > (char*)z ? (char*)y : (char*)z;
        LINREC_CHECK_DYN_SMEM(end - (char*)base);
        (void)end;
    }
};

template <typename S>
__device__ void ck_grads(const S* __restrict__ q, const S* __restrict__ k,
                         const S* __restrict__ go, const unsigned char* __restrict__ start,
                         const float* __restrict__ coef, const float* __restrict__ Xg,
                         const float* __restrict__ Gg,
                         const typename Prec<S>::IT* __restrict__ ck_s,
                         const typename Prec<S>::IT* __restrict__ ck_ds,
                         const typename Prec<S>::IT* __restrict__ ck_delta,
                         const typename Prec<S>::IT* __restrict__ ck_r,
                         const typename Prec<S>::IT* __restrict__ ck_dd,
                         const typename Prec<S>::IT* __restrict__ ck_dr, S* __restrict__ dq,
                         S* __restrict__ dk, S* __restrict__ dbeta, const Dims d) {
    using P = Prec<S>;
    constexpr int PO = P::PO, LO = P::LO, VB = P::VB, LDV = tc::ld_for(VB), RVT = CH * LDV;
    LINREC_DYN_SMEM(unsigned char, smem);
    const GradSmem<S> sm(smem);
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * d.NC) return;
    const int bh = (int)(g / d.NC), n = (int)(g % d.NC), b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, m0 = 16 * (w & 3),
              n0 = 32 * (w >> 2);
    const Chunk ch = chunk_of(d, n);
    const int K = d.K, V = d.V, C = d.C, len = ch.len, kl = round16(len);
    const size_t cc = ((size_t)bh * d.NC + n) * C * C, rk = (size_t)d.H * K,
                 rv = (size_t)d.H * V, it0 = ((size_t)bh * d.T + ch.t0) * V;
    chunk_segs(d, start, b, ch, sm.fl, sm.seg, sm.cf, sm.ef, tid);
    if (tid < CH) sm.nfN[tid] = sm.nfX[tid] = 0;  // (chunk_segm's barrier orders this)
    chunk_segm(sm.seg, len, sm.segm, tid);
    if (tid < CH) sm.al[tid] = tid < len ? coef[((size_t)bh * d.T + ch.t0 + tid) * 4] : 0.f;
    // entry (i, j) of a product that is block diagonal over the segments (lower: j <= i)
    const auto lower = [&](int i, int j) { return j <= i && i < len && same_seg(sm.seg, i, j); };
    const auto both = [&](int i, int j) { return i >= j ? lower(i, j) : lower(j, i); };

    // phase 1: dT = d(delta) R^T and dO delta^T, summed over V
    float adt[1][4][4], adp[1][4][4];
    tc::zero(adt);
    tc::zero(adp);
    for (int vb = 0; vb < V; vb += VB) {
        stage<PO, VB, NTH>(sm.DDp, LDV, RVT, ck_dd, it0, V, len, vb, V, nullptr, nullptr, tid);
        stage<PO, VB, NTH>(sm.Rp, LDV, RVT, ck_r, it0, V, len, vb, V, nullptr, nullptr, tid);
        stage<PO, VB, NTH>(sm.GOp, LDV, RVT, go, seq_at(d, b, ch.t0, h, V), rv, len, vb, V, nullptr, nullptr, tid);
        stage<PO, VB, NTH>(sm.DLp, LDV, RVT, ck_delta, it0, V, len, vb, V, nullptr, nullptr, tid);
        __syncthreads();
        tc::gemm<1, 4, PO, PO, LO, false, false>(adt, {sm.DDp, LDV, RVT}, {sm.Rp, LDV, RVT}, m0,
                                                 n0, VB, lane);
        tc::gemm<1, 4, PO, PO, LO, false, false>(adp, {sm.GOp, LDV, RVT}, {sm.DLp, LDV, RVT}, m0,
                                                 n0, VB, lane);
        __syncthreads();
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = m0 + tc::acc_row(lane, e), j = n0 + 8 * nt + tc::acc_col(lane, e);
            // (dT outside T's structure is never used: selected to 0, as it may not be finite)
            sm.dTs[i * LDF + j] = lower(i, j) ? adt[0][nt][e] : 0.f;
            adp[0][nt][e] = lower(i, j) ? d.scale * adp[0][nt][e] : 0.f;
        }
    put_acc<PO, 4>(sm.DPp, LDC, ACC, adp, m0, n0, lane);
    stage<PO, 64, NTH>(sm.XP, LDC, ACC, Xg, cc, C, len, 0, len, nullptr, nullptr, tid);
    __syncthreads();

    // phase 2: through the triangular inverse
    if (tid < CH) {
        float s = 0.f;
        if (tid < len)
            for (int i = 0; i < len; ++i) s += Xg[cc + (size_t)i * C + tid] * sm.dTs[i * LDF + tid];
        sm.da[tid] = s;
    }
    for (int e = tid; e < CH * CH / 2; e += NTH) {
        const int i = e / (CH / 2), j = 2 * (e % (CH / 2));
        // (dX's non-finite entries staged as 0, recorded by row: the columns of X^T reaching
        // N(i, c) are those at or before c)
        const float x0 = lower(i, j) ? sm.dTs[i * LDF + j] * sm.al[j] : 0.f;
        const float x1 = lower(i, j + 1) ? sm.dTs[i * LDF + j + 1] * sm.al[j + 1] : 0.f;
        tc::put2<PO>(sm.DXp, ACC, i * LDC + j, keep_finite(x0, sm.nfX, j, i),
                     keep_finite(x1, sm.nfX, j + 1, i));
    }
    __syncthreads();
    {
        float an[1][4][4];
        tc::zero(an);
        tc::gemm<1, 4, PO, PO, LO, false, false>(an, {sm.DXp, LDC, ACC}, {sm.XP, LDC, ACC}, m0, n0,
                                                 kl, lane);
        // N across segments: a product of structural zeros with the other segment's entries
        mark<LOWER, true>(an, sm.nfX, sm.segm, m0, n0, lane);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (!both(m0 + tc::acc_row(lane, e), n0 + 8 * nt + tc::acc_col(lane, e)))
                    an[0][nt][e] = 0.f;
        __syncthreads();
        put_acc<PO, 4>(sm.NP, LDC, ACC, an, m0, n0, lane, sm.nfN);
    }
    __syncthreads();
    {
        float aa[1][4][4];
        tc::zero(aa);
        tc::gemm<1, 4, PO, PO, LO, true, true>(aa, {sm.XP, LDC, ACC}, {sm.NP, LDC, ACC}, m0, n0,
                                               kl, lane);
        mark<UPPER>(aa, sm.nfN, sm.segm, m0, n0, lane);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = m0 + tc::acc_row(lane, e), j = n0 + 8 * nt + tc::acc_col(lane, e);
                sm.dLs[i * LDF + j] =
                    j < i && i < len && same_seg(sm.seg, i, j) ? -aa[0][nt][e] : 0.f;
            }
    }
    __syncthreads();
    if (tid < CH) {
        const int i = tid;
        float dkd = 0.f;
        if (i < len) {
            float s = sm.da[i];
            for (int j = 0; j < i; ++j) s += sm.dLs[i * LDF + j] * Gg[cc + (size_t)i * C + j];
            const float* co = coef + ((size_t)bh * d.T + ch.t0 + i) * 4;
            dbeta[seq_at(d, b, ch.t0 + i, h, 1)] = from_f32<S>(s * co[2]);
            dkd = co[1] * s;
        }
        sm.dkd[i] = dkd;
    }
    for (int e = tid; e < CH * CH / 2; e += NTH) {
        const int i = e / (CH / 2), j = 2 * (e % (CH / 2));
        // M = diag(alpha) dL + (diag(alpha) dL)^T, dL strictly lower: one term per entry
        const auto m = [&](int i, int j) {
            if (!both(i, j) || i == j) return 0.f;
            return i > j ? sm.al[i] * sm.dLs[i * LDF + j] : sm.al[j] * sm.dLs[j * LDF + i];
        };
        tc::put2<PO>(sm.MP, ACC, i * LDC + j, m(i, j), m(i, j + 1));
    }
    __syncthreads();

    // phase 3: dQ and dK, 64 keys at a time
    for (int kb = 0; kb < K; kb += 64) {
        const int nk = min(64, K - kb);
        const size_t sbase = (((size_t)bh * d.NC + n) * K + kb) * V;
        float aq[1][4][4], ak[1][4][4], ak2[1][4][4];
        tc::zero(aq);
        tc::zero(ak);
        tc::zero(ak2);
        if (tid < CH) sm.nfK[tid] = sm.nfQ[tid] = 0;  // (the loop's barriers order this)
        for (int vb = 0; vb < V; vb += VB) {
            stage<PO, VB, NTH>(sm.Sv, LDV, RVT, ck_s, sbase, V, nk, vb, V, nullptr, nullptr, tid);
            stage<PO, VB, NTH>(sm.dSv, LDV, RVT, ck_ds, sbase, V, nk, vb, V, nullptr, nullptr, tid);
            stage<PO, VB, NTH>(sm.GOp, LDV, RVT, go, seq_at(d, b, ch.t0, h, V), rv, len, vb, V, nullptr, nullptr, tid);
            stage<PO, VB, NTH>(sm.DRp, LDV, RVT, ck_dr, it0, V, len, vb, V, nullptr, nullptr, tid);
            stage<PO, VB, NTH>(sm.DLp, LDV, RVT, ck_delta, it0, V, len, vb, V, nullptr, nullptr, tid);
            __syncthreads();
            tc::gemm<1, 4, PO, PO, LO, false, false>(aq, {sm.GOp, LDV, RVT}, {sm.Sv, LDV, RVT}, m0,
                                                     n0, VB, lane);
            tc::gemm<1, 4, PO, PO, LO, false, false>(ak, {sm.DRp, LDV, RVT}, {sm.Sv, LDV, RVT}, m0,
                                                     n0, VB, lane);
            tc::gemm<1, 4, PO, PO, LO, false, false>(ak2, {sm.DLp, LDV, RVT}, {sm.dSv, LDV, RVT},
                                                     m0, n0, VB, lane);
            __syncthreads();
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                // (selected: S_in reaches the first segment, dS_end the last)
                const int i = m0 + tc::acc_row(lane, e);
                aq[0][nt][e] = sm.cf[i] != 0.f ? aq[0][nt][e] * d.scale : 0.f;
                const float x = sm.ef[i] != 0.f ? ak2[0][nt][e] : 0.f;
                ak[0][nt][e] = sm.cf[i] != 0.f ? x - ak[0][nt][e] : x;
            }
        const size_t kbase = seq_at(d, b, ch.t0, h, K) + kb;
        stage<PO, 64, NTH>(sm.Kp, LDC, ACC, k, kbase, rk, len, 0, nk, nullptr, nullptr, tid, sm.nfK);
        stage<PO, 64, NTH>(sm.Qp, LDC, ACC, q, kbase, rk, len, 0, nk, nullptr, nullptr, tid, sm.nfQ);
        __syncthreads();
        tc::gemm<1, 4, PO, PO, LO, false, true>(aq, {sm.DPp, LDC, ACC}, {sm.Kp, LDC, ACC}, m0, n0,
                                                kl, lane);
        tc::gemm<1, 4, PO, PO, LO, true, true>(ak, {sm.DPp, LDC, ACC}, {sm.Qp, LDC, ACC}, m0, n0,
                                               kl, lane);
        tc::gemm<1, 4, PO, PO, LO, false, true>(ak, {sm.MP, LDC, ACC}, {sm.Kp, LDC, ACC}, m0, n0,
                                                kl, lane);
        mark<LOWER>(aq, sm.nfK, sm.segm, m0, n0, lane);
        mark<UPPER>(ak, sm.nfQ, sm.segm, m0, n0, lane);
        mark<SEG>(ak, sm.nfK, sm.segm, m0, n0, lane);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = m0 + tc::acc_row(lane, e), c = n0 + 8 * nt + tc::acc_col(lane, e);
                if (i < len && c < nk) {
                    const size_t at = seq_at(d, b, ch.t0 + i, h, K) + kb + c;
                    dq[at] = from_f32<S>(aq[0][nt][e]);
                    dk[at] = from_f32<S>(ak[0][nt][e] + sm.dkd[i] * to_f32(k[at]));
                }
            }
        __syncthreads();
    }
}

}  // namespace

// Launch bounds: the block size alone for half storage (ptxas uses 127 registers on sm_90 and
// 160 on sm_80, no spills); for f32 also a minimum of one block per SM, which lets ptxas go past
// 128 registers (188 on sm_90, 204 on sm_80; with the block size alone it held sm_90 to 128 and
// spilled 12 bytes): the f32 block's shared memory allows one block per SM anyway.
#define LINREC_EFLA_GRADS(SUF, S, BOUNDS)                                                        \
    extern "C" __global__ void __launch_bounds__ BOUNDS efla_ck_grads_##SUF(                      \
        const S* q, const S* k, const S* go, const unsigned char* start, const float* coef,      \
        const float* X, const float* Gm, const Prec<S>::IT* ck_s, const Prec<S>::IT* ck_ds,      \
        const Prec<S>::IT* ck_delta, const Prec<S>::IT* ck_r, const Prec<S>::IT* ck_dd,          \
        const Prec<S>::IT* ck_dr, S* dq, S* dk, S* dbeta, Dims d) {                              \
        ck_grads<S>(q, k, go, start, coef, X, Gm, ck_s, ck_ds, ck_delta, ck_r, ck_dd, ck_dr, dq,  \
                    dk, dbeta, d);                                                               \
    }                                                                                            \
    LINREC_REGISTER(efla_ck_grads_##SUF)

LINREC_EFLA_GRADS(f32, float, (NTH, 1))
LINREC_EFLA_GRADS(f16, f16s, (NTH))
LINREC_EFLA_GRADS(bf16, bf16s, (NTH))
