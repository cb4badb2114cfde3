// docs/efla.md, chunked algorithm: the sequential inter-chunk state passes (efla/chunk.cuh has the
// algorithm and the precision rules).
//
// efla_ck_state (forward; with WRITE_OUT the outputs, otherwise the backward's checkpoints), per
// chunk in order:
//   R     = V - diag(c) K S_in                       (tensor cores, K in blocks of 64 keys)
//   delta = T R,   T = X diag(alpha)
//   O     = scale (diag(c) Q S_in + Pm delta)        (WRITE_OUT)
//   S_out = c_last S_in + K^T diag(e) delta
// Without WRITE_OUT it writes S_in of every chunk, delta and R (the storage type IT of chunk.cuh)
// for efla_ck_grads instead of o and s_final.
//
// efla_ck_dstate (backward), per chunk from the last, dS = grad_final to start with:
//   d(delta) = scale Pm^T dO + diag(e) K dS_end
//   dR       = T^T d(delta)                           (= dv, written out)
//   dS_in    = c_last dS_end + scale Q^T diag(c) dO - K^T diag(c) dR
// writing dS_end of every chunk, d(delta) and dR for efla_ck_grads, dv, and ds0 at the end.
//
// Thread layout of both: one block of 128 threads (4 warps) per (batch row, head, tile of VT
// columns of S: 32, or 16 for f32 storage); columns of S (and of dS) are independent, so blocks
// never wait on each other, and the grid is B * H * ceil(V / VT). A block walks the chunks in
// order, the state tile in registers as f32 mma accumulators: warp w holds rows
// 64 kb + 16 w .. 64 kb + 16 w + 15 of S for every key block kb < KM / 64 (KM = 64, 128 or
// 256 >= K), all VT columns, and keeps a split-bf16 copy in shared memory as the B operand of
// the next chunk's products. For the C x VT products warp w owns rows 16 w .. 16 w + 15 of the
// chunk. Shared tiles have row strides of 72 and 40 (24) elements (odd multiples of 16 bytes:
// ldmatrix and the paired epilogue stores are free of bank conflicts). Per chunk: 3 + ceil(K / 64)
// barriers forward, 3 + 2 ceil(K / 64) backward; the state never leaves the chip between chunks.
#include "efla/chunk.cuh"

using namespace efla;

namespace {

constexpr int NTH = 128;

// The shared memory of efla_ck_state, carved in order (src/ops/efla/cuda.rs mirrors the size).
template <typename S, int KM>
struct StateSmem {
    using P = Prec<S>;
    static constexpr int LDV = tc::ld_for(P::VT), RVT = CH * LDV;
    bf16s *Kp, *Qp, *Sp, *Tp, *Pp, *Rp, *Dp, *Ep;
    float *cf, *ef, *al;
    int* seg;
    u64 *segm, *nfR, *nfD;  // segments; non-finite entries of R and delta (chunk.cuh)
    __device__ StateSmem(unsigned char* base) {
        bf16s* x = reinterpret_cast<bf16s*>(base);
        Kp = x;
        x += P::PI * ACC;
        Qp = x;
        x += P::PO * ACC;
        Sp = x;
        x += P::PX * KM * LDV;
        Tp = x;
        x += P::PX * ACC;
        if (P::ALIAS_PM) {
            Pp = Qp;
        } else {
            Pp = x;
            x += P::PO * ACC;
        }
        Rp = x;
        x += P::PX * RVT;
        Dp = x;
        x += P::PO * RVT;
        Ep = x;
        x += P::PX * RVT;
        cf = reinterpret_cast<float*>(x);
        ef = cf + CH;
        al = ef + CH;
        seg = reinterpret_cast<int*>(al + CH);
        segm = reinterpret_cast<u64*>(seg + CH);
        nfR = segm + CH;
        nfD = nfR + P::VT;
        LINREC_CHECK_DYN_SMEM((char*)(nfD + P::VT) - (char*)base);
    }
};

// Load or store the state accumulators (rows 64 kb + 16 w + ., columns c0 + .) from or to an
// f32 [K][V] matrix at `base`.
template <int NKB, int NTV>
__device__ __forceinline__ void acc_state_io(float (&st)[NKB][1][NTV][4], float* m,
                                             const float* src, size_t base, int K, int V, int c0,
                                             int w, int lane, bool load) {
#pragma unroll
    for (int kb = 0; kb < NKB; ++kb)
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 64 * kb + 16 * w + tc::acc_row(lane, e);
                const int c = c0 + 8 * nt + tc::acc_col(lane, e);
                const bool in = r < K && c < V;
                if (load)
                    st[kb][0][nt][e] = in && src ? src[base + (size_t)r * V + c] : 0.f;
                else if (in)
                    m[base + (size_t)r * V + c] = st[kb][0][nt][e];
            }
}

// The same to a checkpoint in the intermediate storage type.
template <int NKB, int NTV, typename IT>
__device__ __forceinline__ void acc_state_ckpt(const float (&st)[NKB][1][NTV][4], IT* m,
                                               size_t base, int K, int V, int c0, int w,
                                               int lane) {
#pragma unroll
    for (int kb = 0; kb < NKB; ++kb)
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 64 * kb + 16 * w + tc::acc_row(lane, e);
                const int c = c0 + 8 * nt + tc::acc_col(lane, e);
                if (r < K && c < V) m[base + (size_t)r * V + c] = from_f32<IT>(st[kb][0][nt][e]);
            }
}

// Write the state accumulators of key block kb into the split copy (PX planes).
template <int PX, int NKB, int NTV>
__device__ __forceinline__ void state_planes(bf16s* Sp, const float (&st)[NKB][1][NTV][4],
                                             int kb, int w, int lane) {
    constexpr int LDV = tc::ld_for(8 * NTV);
    put_acc<PX, NTV>(Sp, LDV, 64 * NKB * LDV, st[kb], 64 * kb + 16 * w, 0, lane);
}

template <typename S, int KM>
__device__ void ck_state(const S* __restrict__ q, const S* __restrict__ k,
                         const S* __restrict__ v, const float* __restrict__ s0,
                         const float* __restrict__ coef,
                         const float* __restrict__ Xg, const float* __restrict__ Pg,
                         S* __restrict__ o, float* __restrict__ sf,
                         typename Prec<S>::IT* __restrict__ ck_s,
                         typename Prec<S>::IT* __restrict__ ck_delta,
                         typename Prec<S>::IT* __restrict__ ck_r, const Dims d) {
    using P = Prec<S>;
    using IT = typename P::IT;
    constexpr int VT = P::VT, LDV = tc::ld_for(VT), RVT = CH * LDV, NTV = VT / 8;
    LINREC_DYN_SMEM(unsigned char, smem);
    const StateSmem<S, KM> sm(smem);
    const int nvt = (d.V + VT - 1) / VT;
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * nvt) return;
    const int bh = (int)(g / nvt), c0 = (int)(g % nvt) * VT, b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int K = d.K, V = d.V, C = d.C, nkb = (K + 63) / 64;
    const bool wo = d.flags & WRITE_OUT;
    const size_t sb = state_at(d, bh), rk = (size_t)d.H * K;

    float st[KM / 64][1][NTV][4];
    acc_state_io(st, nullptr, (d.flags & HAS_S0) ? s0 : nullptr, sb, K, V, c0, w, lane, true);
#pragma unroll
    for (int kb = 0; kb < KM / 64; ++kb) state_planes<P::PX>(sm.Sp, st, kb, w, lane);

    for (int n = 0; n < d.NC; ++n) {
        const Chunk ch = chunk_of(d, n);
        const size_t cc = ((size_t)bh * d.NC + n) * C * C;
        if (tid < VT) sm.nfR[tid] = sm.nfD[tid] = 0;
        chunk_coef(d, coef, bh, ch, sm.al, sm.cf, sm.ef, sm.seg, sm.segm, tid);
        stage<P::PX, 64, NTH>(sm.Tp, LDC, ACC, Xg, cc, C, ch.len, 0, ch.len, nullptr, sm.al, tid);
        if (wo && !P::ALIAS_PM)
            stage<P::PO, 64, NTH>(sm.Pp, LDC, ACC, Pg, cc, C, ch.len, 0, ch.len, nullptr, nullptr, tid);
        if (!wo) acc_state_ckpt(st, ck_s, ((size_t)bh * d.NC + n) * K * V, K, V, c0, w, lane);

        // K S_in and Q S_in, key block by key block
        float ks[1][NTV][4], qs[1][NTV][4];
        tc::zero(ks);
        tc::zero(qs);
        for (int kb = 0; kb < nkb; ++kb) {
            const size_t base = seq_at(d, b, ch.t0, h, K) + 64 * kb;
            stage<P::PI, 64, NTH>(sm.Kp, LDC, ACC, k, base, rk, ch.len, 0, K - 64 * kb, nullptr, nullptr, tid);
            if (wo)
                stage<P::PO, 64, NTH>(sm.Qp, LDC, ACC, q, base, rk, ch.len, 0, K - 64 * kb, nullptr, nullptr, tid);
            __syncthreads();
            const int kd = round16(min(64, K - 64 * kb));
            const tc::Op Sop{sm.Sp + 64 * kb * LDV, LDV, KM * LDV};
            tc::gemm<1, NTV, P::PI, P::PX, P::LX, false, true>(ks, {sm.Kp, LDC, ACC}, Sop, 16 * w,
                                                               0, kd, lane);
            if (wo)
                tc::gemm<1, NTV, P::PO, P::PO, P::LO, false, true>(qs, {sm.Qp, LDC, ACC}, Sop,
                                                                   16 * w, 0, kd, lane);
            if (kb + 1 < nkb) __syncthreads();
        }
        // R = V - diag(c) K S_in (selected: S_in does not reach a step after a reset)
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * w + tc::acc_row(lane, e), c = c0 + 8 * nt + tc::acc_col(lane, e);
                float x = 0.f;
                if (r < ch.len && c < V) {
                    const size_t at = seq_at(d, b, ch.t0 + r, h, V) + c;
                    x = to_f32(v[at]);
                    if (sm.cf[r] != 0.f) x -= ks[0][nt][e];
                    if (!wo) ck_r[((size_t)bh * d.T + ch.t0 + r) * V + c] = from_f32<IT>(x);
                }
                ks[0][nt][e] = x;
            }
        put_acc<P::PX, NTV>(sm.Rp, LDV, RVT, ks, 16 * w, 0, lane, sm.nfR);
        __syncthreads();
        // (ALIAS_PM: Pm goes where Q was, now that every Q S product is done)
        if (wo && P::ALIAS_PM)
            stage<P::PO, 64, NTH>(sm.Pp, LDC, ACC, Pg, cc, C, ch.len, 0, ch.len, nullptr, nullptr, tid);
        // delta = T R
        float dl[1][NTV][4];
        tc::zero(dl);
        tc::gemm<1, NTV, P::PX, P::PX, P::LX, false, true>(dl, {sm.Tp, LDC, ACC},
                                                           {sm.Rp, LDV, RVT}, 16 * w, 0,
                                                           round16(ch.len), lane);
        mark<LOWER>(dl, sm.nfR, sm.segm, 16 * w, 0, lane);
        if (wo) put_acc<P::PO, NTV>(sm.Dp, LDV, RVT, dl, 16 * w, 0, lane, sm.nfD);
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * w + tc::acc_row(lane, e), c = c0 + 8 * nt + tc::acc_col(lane, e);
                if (!wo && r < ch.len && c < V)
                    ck_delta[((size_t)bh * d.T + ch.t0 + r) * V + c] = from_f32<IT>(dl[0][nt][e]);
                if (sm.ef[r] == 0.f) dl[0][nt][e] = 0.f;
            }
        put_acc<P::PX, NTV>(sm.Ep, LDV, RVT, dl, 16 * w, 0, lane);
        __syncthreads();
        // O = scale (diag(c) Q S_in + Pm delta)
        if (wo) {
#pragma unroll
            for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (sm.cf[16 * w + tc::acc_row(lane, e)] == 0.f) qs[0][nt][e] = 0.f;
            tc::gemm<1, NTV, P::PO, P::PO, P::LO, false, true>(qs, {sm.Pp, LDC, ACC},
                                                               {sm.Dp, LDV, RVT}, 16 * w, 0,
                                                               round16(ch.len), lane);
            mark<LOWER>(qs, sm.nfD, sm.segm, 16 * w, 0, lane);
#pragma unroll
            for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = 16 * w + tc::acc_row(lane, e);
                    const int c = c0 + 8 * nt + tc::acc_col(lane, e);
                    if (r < ch.len && c < V)
                        o[seq_at(d, b, ch.t0 + r, h, V) + c] = from_f32<S>(d.scale * qs[0][nt][e]);
                }
        }
        // S_out = c_last S_in + K^T diag(e) delta, the last staged key block first (after a reset
        // in the chunk, K is restaged with the rows before the last segment selected to 0, as
        // they are in diag(e) delta, and S_in is dropped, not multiplied by 0)
        const float c_last = sm.cf[ch.len - 1];
#pragma unroll
        for (int kb = KM / 64 - 1; kb >= 0; --kb) {
            if (kb >= nkb) continue;
            if (kb + 1 < nkb || c_last == 0.f) {
                __syncthreads();
                stage<P::PI, 64, NTH>(sm.Kp, LDC, ACC, k, seq_at(d, b, ch.t0, h, K) + 64 * kb, rk, ch.len, 0, K - 64 * kb, sm.ef, nullptr, tid);
                __syncthreads();
            }
            float up[1][NTV][4];
            tc::zero(up);
            tc::gemm<1, NTV, P::PI, P::PX, P::LX, true, true>(up, {sm.Kp, LDC, ACC},
                                                              {sm.Ep, LDV, RVT}, 16 * w, 0,
                                                              round16(ch.len), lane);
#pragma unroll
            for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    st[kb][0][nt][e] = c_last != 0.f ? st[kb][0][nt][e] + up[0][nt][e] : up[0][nt][e];
            state_planes<P::PX>(sm.Sp, st, kb, w, lane);
        }
        __syncthreads();
    }
    if (wo) acc_state_io(st, sf, nullptr, sb, K, V, c0, w, lane, false);
}

// The shared memory of efla_ck_dstate, carved in order (src/ops/efla/cuda.rs mirrors the size).
template <typename S, int KM>
struct DStateSmem {
    using P = Prec<S>;
    static constexpr int LDV = tc::ld_for(P::VT), RVT = CH * LDV;
    static_assert(P::PX >= P::PI, "Q's planes fit in Pm's buffer");
    bf16s *Kp, *Qp, *Sp, *Tp, *Pp, *Gp, *Dd, *Cr;
    float *cf, *ef, *al;
    int* seg;
    u64 *segm, *nfG, *nfDd;  // segments; non-finite entries of dO and d(delta) (chunk.cuh)
    __device__ DStateSmem(unsigned char* base) {
        bf16s* x = reinterpret_cast<bf16s*>(base);
        Kp = x;
        x += P::PI * ACC;
        Sp = x;
        x += P::PX * KM * LDV;
        Tp = x;
        x += P::PX * ACC;
        Pp = x;  // Q (c-masked) reuses it once Pm^T dO is done
        Qp = x;
        x += P::PX * ACC;
        Gp = x;
        x += P::PI * RVT;
        Dd = x;
        x += P::PX * RVT;
        Cr = x;
        x += P::PX * RVT;
        cf = reinterpret_cast<float*>(x);
        ef = cf + CH;
        al = ef + CH;
        seg = reinterpret_cast<int*>(al + CH);
        segm = reinterpret_cast<u64*>(seg + CH);
        nfG = segm + CH;
        nfDd = nfG + P::VT;
        LINREC_CHECK_DYN_SMEM((char*)(nfDd + P::VT) - (char*)base);
    }
};

template <typename S, int KM>
__device__ void ck_dstate(const S* __restrict__ q, const S* __restrict__ k,
                          const S* __restrict__ go, const float* __restrict__ gf,
                          const float* __restrict__ coef,
                          const float* __restrict__ Xg, const float* __restrict__ Pg,
                          typename Prec<S>::IT* __restrict__ ck_ds,
                          typename Prec<S>::IT* __restrict__ ck_dd,
                          typename Prec<S>::IT* __restrict__ ck_dr, S* __restrict__ dv,
                          float* __restrict__ ds0, const Dims d) {
    using P = Prec<S>;
    using IT = typename P::IT;
    constexpr int VT = P::VT, LDV = tc::ld_for(VT), RVT = CH * LDV, NTV = VT / 8;
    LINREC_DYN_SMEM(unsigned char, smem);
    const DStateSmem<S, KM> sm(smem);
    const int nvt = (d.V + VT - 1) / VT;
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * nvt) return;
    const int bh = (int)(g / nvt), c0 = (int)(g % nvt) * VT, b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int K = d.K, V = d.V, C = d.C, nkb = (K + 63) / 64;
    const size_t sb = state_at(d, bh), rk = (size_t)d.H * K, rv = (size_t)d.H * V;

    float st[KM / 64][1][NTV][4];
    acc_state_io(st, nullptr, (d.flags & HAS_GF) ? gf : nullptr, sb, K, V, c0, w, lane, true);
#pragma unroll
    for (int kb = 0; kb < KM / 64; ++kb) state_planes<P::PX>(sm.Sp, st, kb, w, lane);

    for (int n = d.NC - 1; n >= 0; --n) {
        const Chunk ch = chunk_of(d, n);
        const size_t cc = ((size_t)bh * d.NC + n) * C * C;
        acc_state_ckpt(st, ck_ds, ((size_t)bh * d.NC + n) * K * V, K, V, c0, w, lane);
        if (tid < VT) sm.nfG[tid] = sm.nfDd[tid] = 0;
        chunk_coef(d, coef, bh, ch, sm.al, sm.cf, sm.ef, sm.seg, sm.segm, tid);
        stage<P::PX, 64, NTH>(sm.Tp, LDC, ACC, Xg, cc, C, ch.len, 0, ch.len, nullptr, sm.al, tid);
        stage<P::PX, 64, NTH>(sm.Pp, LDC, ACC, Pg, cc, C, ch.len, 0, ch.len, nullptr, nullptr, tid);
        stage<P::PI, VT, NTH>(sm.Gp, LDV, RVT, go, seq_at(d, b, ch.t0, h, V), rv, ch.len, c0, V, nullptr, nullptr, tid, sm.nfG);
        // K dS_end, key block by key block
        float kd_[1][NTV][4];
        tc::zero(kd_);
        for (int kb = 0; kb < nkb; ++kb) {
            stage<P::PI, 64, NTH>(sm.Kp, LDC, ACC, k, seq_at(d, b, ch.t0, h, K) + 64 * kb, rk, ch.len, 0, K - 64 * kb, nullptr, nullptr, tid);
            __syncthreads();
            tc::gemm<1, NTV, P::PI, P::PX, P::LX, false, true>(
                kd_, {sm.Kp, LDC, ACC}, {sm.Sp + 64 * kb * LDV, LDV, KM * LDV}, 16 * w, 0,
                round16(min(64, K - 64 * kb)), lane);
            if (kb + 1 < nkb) __syncthreads();
        }
        // d(delta) = scale Pm^T dO + diag(e) K dS_end
        float dd[1][NTV][4];
        tc::zero(dd);
        tc::gemm<1, NTV, P::PX, P::PI, P::LX, true, true>(dd, {sm.Pp, LDC, ACC},
                                                          {sm.Gp, LDV, RVT}, 16 * w, 0,
                                                          round16(ch.len), lane);
        mark<UPPER>(dd, sm.nfG, sm.segm, 16 * w, 0, lane);
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * w + tc::acc_row(lane, e), c = c0 + 8 * nt + tc::acc_col(lane, e);
                float x = 0.f;
                if (r < ch.len && c < V) {
                    x = d.scale * dd[0][nt][e];
                    if (sm.ef[r] != 0.f) x += kd_[0][nt][e];
                    ck_dd[((size_t)bh * d.T + ch.t0 + r) * V + c] = from_f32<IT>(x);
                }
                dd[0][nt][e] = x;
            }
        put_acc<P::PX, NTV>(sm.Dd, LDV, RVT, dd, 16 * w, 0, lane, sm.nfDd);
        __syncthreads();
        // dR = T^T d(delta) = dv
        float dr[1][NTV][4];
        tc::zero(dr);
        tc::gemm<1, NTV, P::PX, P::PX, P::LX, true, true>(dr, {sm.Tp, LDC, ACC},
                                                          {sm.Dd, LDV, RVT}, 16 * w, 0,
                                                          round16(ch.len), lane);
        mark<UPPER>(dr, sm.nfDd, sm.segm, 16 * w, 0, lane);
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * w + tc::acc_row(lane, e), c = c0 + 8 * nt + tc::acc_col(lane, e);
                if (r < ch.len && c < V) {
                    dv[seq_at(d, b, ch.t0 + r, h, V) + c] = from_f32<S>(dr[0][nt][e]);
                    ck_dr[((size_t)bh * d.T + ch.t0 + r) * V + c] = from_f32<IT>(dr[0][nt][e]);
                }
                if (sm.cf[r] == 0.f) dr[0][nt][e] = 0.f;
            }
        put_acc<P::PX, NTV>(sm.Cr, LDV, RVT, dr, 16 * w, 0, lane);
        // dS_in = c_last dS_end + scale Q^T diag(c) dO - K^T diag(c) dR, last key block first;
        // Q and (after a reset in the chunk) K are staged with the rows after it selected to 0,
        // dO's non-finite entries (staged as 0) reach dS_in's columns through the first segment
        const float c_last = sm.cf[ch.len - 1];
        const u64 first = sm.cf[0] != 0.f ? sm.segm[0] : 0;
#pragma unroll
        for (int kb = KM / 64 - 1; kb >= 0; --kb) {
            if (kb >= nkb) continue;
            __syncthreads();
            const size_t base = seq_at(d, b, ch.t0, h, K) + 64 * kb;
            if (kb + 1 < nkb || c_last == 0.f)
                stage<P::PI, 64, NTH>(sm.Kp, LDC, ACC, k, base, rk, ch.len, 0, K - 64 * kb, sm.cf, nullptr, tid);
            stage<P::PI, 64, NTH>(sm.Qp, LDC, ACC, q, base, rk, ch.len, 0, K - 64 * kb, sm.cf, nullptr, tid);
            __syncthreads();
            float aq[1][NTV][4], ak[1][NTV][4];
            tc::zero(aq);
            tc::zero(ak);
            tc::gemm<1, NTV, P::PI, P::PI, P::LX, true, true>(aq, {sm.Qp, LDC, ACC},
                                                              {sm.Gp, LDV, RVT}, 16 * w, 0,
                                                              round16(ch.len), lane);
            tc::gemm<1, NTV, P::PI, P::PX, P::LX, true, true>(ak, {sm.Kp, LDC, ACC},
                                                              {sm.Cr, LDV, RVT}, 16 * w, 0,
                                                              round16(ch.len), lane);
#pragma unroll
            for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float x = d.scale * aq[0][nt][e];
                    float y = c_last != 0.f ? st[kb][0][nt][e] + x - ak[0][nt][e] : x - ak[0][nt][e];
                    if (sm.nfG[8 * nt + tc::acc_col(lane, e)] & first) y = nan32();
                    st[kb][0][nt][e] = y;
                }
            state_planes<P::PX>(sm.Sp, st, kb, w, lane);
        }
        __syncthreads();
    }
    acc_state_io(st, ds0, nullptr, sb, K, V, c0, w, lane, false);
}

}  // namespace

#define LINREC_EFLA_STATE(SUF, S, KM)                                                            \
    extern "C" __global__ void __launch_bounds__(NTH, 1) efla_ck_state_##SUF##_k##KM(               \
        const S* q, const S* k, const S* v, const float* s0, const float* coef, const float* X,  \
        const float* Pm, S* o, float* sf, Prec<S>::IT* ck_s, Prec<S>::IT* ck_delta,              \
        Prec<S>::IT* ck_r, Dims d) {                                                             \
        ck_state<S, KM>(q, k, v, s0, coef, X, Pm, o, sf, ck_s, ck_delta, ck_r, d);               \
    }                                                                                            \
    LINREC_REGISTER(efla_ck_state_##SUF##_k##KM)                                                 \
    extern "C" __global__ void __launch_bounds__(NTH, 1) efla_ck_dstate_##SUF##_k##KM(              \
        const S* q, const S* k, const S* go, const float* gf, const float* coef, const float* X,  \
        const float* Pm, Prec<S>::IT* ck_ds, Prec<S>::IT* ck_dd, Prec<S>::IT* ck_dr, S* dv,      \
        float* ds0, Dims d) {                                                                    \
        ck_dstate<S, KM>(q, k, go, gf, coef, X, Pm, ck_ds, ck_dd, ck_dr, dv, ds0, d);            \
    }                                                                                            \
    LINREC_REGISTER(efla_ck_dstate_##SUF##_k##KM)

#define LINREC_EFLA_STATE_ALL(SUF, S) \
    LINREC_EFLA_STATE(SUF, S, 64)     \
    LINREC_EFLA_STATE(SUF, S, 128)    \
    LINREC_EFLA_STATE(SUF, S, 256)

LINREC_EFLA_STATE_ALL(f32, float)
LINREC_EFLA_STATE_ALL(f16, f16s)
LINREC_EFLA_STATE_ALL(bf16, bf16s)
