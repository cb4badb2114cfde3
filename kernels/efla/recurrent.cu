// docs/efla.md, EFLA / delta rule, recurrent algorithm: token by token (the decode path, T = 1 on a
// carried state, is one launch of efla_rec_fwd).
//
//   P = start_t ? 0 : S;  u = v_t - P^T k_t;  S = P + alpha_t k_t u^T;  o_t = scale S^T q_t
// with o_t = scale (P^T q_t + alpha_t (q_t . k_t) u), so one reduction per step serves all.
//
// Thread layout of efla_rec_fwd and efla_rec_bwd_cols: one block of 256 threads per (batch row,
// head, tile of 32 columns of S); thread tid = 8 * col + lane owns column `col` of the tile and
// rows lane, lane + 8, ... (R = K / 8 rounded up to 4, 8, 16 or 32 values in registers). Columns
// are independent; the dot products over K of a step are partial sums per lane added over the
// 8 consecutive lanes of the column with warp shuffles. The state tile enters and leaves
// through shared memory so that global accesses are coalesced rows of 32 columns. No block
// waits on another.
//
// The backward is three passes, none storing a state per step:
//   1. efla_rec_fwd without WRITE_OUT: u_t and the step coefficients to scratch;
//   2. efla_rec_bwd_cols: the reverse recurrence of dS column by column,
//        dS += scale q_t do_t^T;  w_t = dS^T k_t;  dS = start_t ? 0 : dS - alpha_t k_t w_t^T,
//      writing w_t to scratch and ds0;
//   3. efla_rec_bwd_rows, with u and w known, runs both remaining recurrences row by row (one
//      block per 32 rows of S; tid = 8 * row + lane owns columns lane, lane + 8, ...):
//        forward half:  P = start ? 0 : S;  S = P + alpha k u^T;  dq = scale S do;
//                       dka = -alpha P w                                  (to scratch)
//        reverse half:  dS += scale q do^T;  dk = dka + alpha dS u + dkf (u . w) k;
//                       dS = start ? 0 : dS - alpha k w^T;  dv = alpha w;  dbeta = (u . w) dbf
// All arithmetic is f32; q, k, v, beta, o and the gradients are in the storage type S.
#include "efla/efla.cuh"

using efla::Dims;

namespace {

constexpr int WG = 256;

__device__ __forceinline__ float lane_sum8(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    x += __shfl_xor_sync(0xffffffffu, x, 4);
    return x;
}

// Coalesced copy of a K x 32 column tile of a [K][V] f32 matrix into sm[K][33] (zeros outside).
__device__ __forceinline__ void tile_in(float* sm, const float* src, size_t off, bool has, int K,
                                        int V, int c0, int tid) {
    for (int e = tid; e < K * 32; e += WG) {
        const int r = e >> 5, c = e & 31;
        sm[r * 33 + c] = has && c0 + c < V ? src[off + (size_t)r * V + c0 + c] : 0.f;
    }
}
__device__ __forceinline__ void tile_out(const float* sm, float* dst, int K, int V, int c0,
                                         int tid) {
    for (int e = tid; e < K * 32; e += WG) {
        const int r = e >> 5, c = e & 31;
        if (c0 + c < V) dst[(size_t)r * V + c0 + c] = sm[r * 33 + c];
    }
}

template <typename S, int R>
__device__ void rec_fwd(const S* __restrict__ q, const S* __restrict__ k,
                        const S* __restrict__ v, const S* __restrict__ beta,
                        const float* __restrict__ s0, const unsigned char* __restrict__ start,
                        S* __restrict__ o, float* __restrict__ sf, float* __restrict__ u_out,
                        float* __restrict__ coef_out, const Dims d) {
    LINREC_DYN_SMEM(float, sm);
    LINREC_CHECK_DYN_SMEM(d.K * 33 * 4);
    const int ntiles = (d.V + 31) / 32;
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * ntiles) return;
    const int bh = (int)(g / ntiles), tile = (int)(g % ntiles), b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 7, cl = tid >> 3, col = tile * 32 + cl;
    const bool live = col < d.V, wo = d.flags & efla::WRITE_OUT,
               ef = d.flags & efla::RULE_EFLA;
    const int K = d.K, V = d.V;
    const size_t sb = efla::state_at(d, bh);
    tile_in(sm, s0, sb, d.flags & efla::HAS_S0, K, V, tile * 32, tid);
    __syncthreads();
    float s[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = lane + 8 * i;
        s[i] = r < K ? sm[r * 33 + cl] : 0.f;
    }
    for (int t = 0; t < d.T; ++t) {
        if (efla::reset_at(d, start, b, t)) {
#pragma unroll
            for (int i = 0; i < R; ++i) s[i] = 0.f;
        }
        const size_t kb = efla::seq_at(d, b, t, h, K);
        float kr[R], p0 = 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = lane + 8 * i;
            float kv = 0.f, qv = 0.f;
            if (r < K) {
                kv = to_f32(k[kb + r]);
                qv = to_f32(q[kb + r]);
            }
            kr[i] = kv;
            p0 += kv * s[i];
            p1 += qv * s[i];
            p2 += qv * kv;
            p3 += kv * kv;
        }
        p0 = lane_sum8(p0);
        p1 = lane_sum8(p1);
        p2 = lane_sum8(p2);
        p3 = lane_sum8(p3);
        const efla::Coef c = efla::rule_coef(ef, to_f32(beta[efla::seq_at(d, b, t, h, 1)]), p3);
        const float u = live ? to_f32(v[efla::seq_at(d, b, t, h, V) + col]) - p0 : 0.f;
        const float au = c.alpha * u;
#pragma unroll
        for (int i = 0; i < R; ++i) s[i] += kr[i] * au;
        if (lane == 0 && live) {
            if (wo)
                o[efla::seq_at(d, b, t, h, V) + col] =
                    from_f32<S>(d.scale * (p1 + c.alpha * p2 * u));
            else
                u_out[((size_t)bh * d.T + t) * V + col] = u;
        }
        if (!wo && tile == 0 && tid == 0) {
            float* cp = coef_out + ((size_t)bh * d.T + t) * 4;
            cp[0] = c.alpha;
            cp[1] = c.dkf;
            cp[2] = c.dbf;
            cp[3] = 0.f;
        }
    }
    if (wo) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = lane + 8 * i;
            if (r < K) sm[r * 33 + cl] = s[i];
        }
        __syncthreads();
        tile_out(sm, sf + sb, K, V, tile * 32, tid);
    }
}

template <typename S, int R>
__device__ void rec_bwd_cols(const S* __restrict__ q, const S* __restrict__ k,
                             const S* __restrict__ go, const unsigned char* __restrict__ start,
                             const float* __restrict__ gf, const float* __restrict__ coef,
                             float* __restrict__ w_out, float* __restrict__ ds0, const Dims d) {
    LINREC_DYN_SMEM(float, sm);
    LINREC_CHECK_DYN_SMEM(d.K * 33 * 4);
    const int ntiles = (d.V + 31) / 32;
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * ntiles) return;
    const int bh = (int)(g / ntiles), tile = (int)(g % ntiles), b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 7, cl = tid >> 3, col = tile * 32 + cl;
    const bool live = col < d.V;
    const int K = d.K, V = d.V;
    const size_t sb = efla::state_at(d, bh);
    tile_in(sm, gf, sb, d.flags & efla::HAS_GF, K, V, tile * 32, tid);
    __syncthreads();
    float ds[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = lane + 8 * i;
        ds[i] = r < K ? sm[r * 33 + cl] : 0.f;
    }
    for (int tt = 0; tt < d.T; ++tt) {
        const int t = d.T - 1 - tt;
        const size_t kb = efla::seq_at(d, b, t, h, K);
        const float gc = live ? d.scale * to_f32(go[efla::seq_at(d, b, t, h, V) + col]) : 0.f;
        float kr[R], p = 0.f;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = lane + 8 * i;
            float kv = 0.f, qv = 0.f;
            if (r < K) {
                kv = to_f32(k[kb + r]);
                qv = to_f32(q[kb + r]);
            }
            kr[i] = kv;
            ds[i] += qv * gc;
            p += kv * ds[i];
        }
        const float w = lane_sum8(p);
        if (lane == 0 && live) w_out[((size_t)bh * d.T + t) * V + col] = w;
        if (efla::reset_at(d, start, b, t)) {
#pragma unroll
            for (int i = 0; i < R; ++i) ds[i] = 0.f;
        } else {
            const float aw = coef[((size_t)bh * d.T + t) * 4] * w;
#pragma unroll
            for (int i = 0; i < R; ++i) ds[i] -= kr[i] * aw;
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = lane + 8 * i;
        if (r < K) sm[r * 33 + cl] = ds[i];
    }
    __syncthreads();
    tile_out(sm, ds0 + sb, K, V, tile * 32, tid);
}

template <typename S, int RV>
__device__ void rec_bwd_rows(const S* __restrict__ q, const S* __restrict__ k,
                             const S* __restrict__ go, const unsigned char* __restrict__ start,
                             const float* __restrict__ s0, const float* __restrict__ gf,
                             const float* __restrict__ coef, const float* __restrict__ u,
                             const float* __restrict__ w, float* __restrict__ dka,
                             S* __restrict__ dq, S* __restrict__ dk, S* __restrict__ dv,
                             S* __restrict__ dbeta, const Dims d) {
    const int ntiles = (d.K + 31) / 32;
    const long long g = (long long)linear_block();
    if (g >= (long long)d.B * d.H * ntiles) return;
    const int bh = (int)(g / ntiles), tile = (int)(g % ntiles), b = bh / d.H, h = bh % d.H;
    const int tid = threadIdx.x, lane = tid & 7, row = tile * 32 + (tid >> 3);
    const bool live = row < d.K;
    const int K = d.K, V = d.V;
    const size_t sb = efla::state_at(d, bh) + (size_t)row * V;
    float x[RV];
    if (!(d.flags & efla::REVERSE_PART)) {
        const bool has = (d.flags & efla::HAS_S0) && live;
#pragma unroll
        for (int j = 0; j < RV; ++j) {
            const int c = lane + 8 * j;
            x[j] = has && c < V ? s0[sb + c] : 0.f;
        }
        for (int t = 0; t < d.T; ++t) {
            if (efla::reset_at(d, start, b, t)) {
#pragma unroll
                for (int j = 0; j < RV; ++j) x[j] = 0.f;
            }
            const size_t ub = ((size_t)bh * d.T + t) * V, gb = efla::seq_at(d, b, t, h, V);
            const float alpha = coef[((size_t)bh * d.T + t) * 4];
            const float kr = live ? to_f32(k[efla::seq_at(d, b, t, h, K) + row]) : 0.f;
            const float ak = alpha * kr;
            float px = 0.f, py = 0.f;
#pragma unroll
            for (int j = 0; j < RV; ++j) {
                const int c = lane + 8 * j;
                if (c < V) {
                    const float p = x[j];
                    py += p * w[ub + c];
                    x[j] = p + ak * u[ub + c];
                    px += x[j] * to_f32(go[gb + c]);
                }
            }
            px = lane_sum8(px);
            py = lane_sum8(py);
            if (lane == 0 && live) {
                dq[efla::seq_at(d, b, t, h, K) + row] = from_f32<S>(d.scale * px);
                dka[((size_t)bh * d.T + t) * K + row] = -alpha * py;
            }
        }
    } else {
        const bool has = (d.flags & efla::HAS_GF) && live;
#pragma unroll
        for (int j = 0; j < RV; ++j) {
            const int c = lane + 8 * j;
            x[j] = has && c < V ? gf[sb + c] : 0.f;
        }
        for (int tt = 0; tt < d.T; ++tt) {
            const int t = d.T - 1 - tt;
            const size_t ub = ((size_t)bh * d.T + t) * V, gb = efla::seq_at(d, b, t, h, V);
            const float* co = coef + ((size_t)bh * d.T + t) * 4;
            const float alpha = co[0], dkf = co[1], dbf = co[2];
            const size_t kq = efla::seq_at(d, b, t, h, K) + row;
            float kr = 0.f, qr = 0.f;
            if (live) {
                kr = to_f32(k[kq]);
                qr = d.scale * to_f32(q[kq]);
            }
            const float ak = alpha * kr;
            float px = 0.f, py = 0.f;
#pragma unroll
            for (int j = 0; j < RV; ++j) {
                const int c = lane + 8 * j;
                if (c < V) {
                    const float uc = u[ub + c], wc = w[ub + c];
                    const float dd = x[j] + qr * to_f32(go[gb + c]);
                    px += dd * uc;
                    py += uc * wc;
                    x[j] = dd - ak * wc;
                }
            }
            px = lane_sum8(px);
            py = lane_sum8(py);
            if (efla::reset_at(d, start, b, t)) {
#pragma unroll
                for (int j = 0; j < RV; ++j) x[j] = 0.f;
            }
            if (lane == 0 && live)
                dk[kq] = from_f32<S>(dka[((size_t)bh * d.T + t) * K + row] + alpha * px +
                                     dkf * py * kr);
            if (tile == 0) {
                if (tid == 0) dbeta[efla::seq_at(d, b, t, h, 1)] = from_f32<S>(py * dbf);
                for (int c = tid; c < V; c += WG) dv[gb + c] = from_f32<S>(alpha * w[ub + c]);
            }
        }
    }
}

}  // namespace

#define LINREC_EFLA_REC(SUF, S, R)                                                               \
    extern "C" __global__ void __launch_bounds__(WG) efla_rec_fwd_##SUF##_r##R(                  \
        const S* q, const S* k, const S* v, const S* beta, const float* s0,                     \
        const unsigned char* start, S* o, float* sf, float* u_out, float* coef_out, Dims d) {    \
        rec_fwd<S, R>(q, k, v, beta, s0, start, o, sf, u_out, coef_out, d);                     \
    }                                                                                            \
    LINREC_REGISTER(efla_rec_fwd_##SUF##_r##R)                                                   \
    extern "C" __global__ void __launch_bounds__(WG) efla_rec_bwd_cols_##SUF##_r##R(             \
        const S* q, const S* k, const S* go, const unsigned char* start, const float* gf,       \
        const float* coef, float* w_out, float* ds0, Dims d) {                                  \
        rec_bwd_cols<S, R>(q, k, go, start, gf, coef, w_out, ds0, d);                           \
    }                                                                                            \
    LINREC_REGISTER(efla_rec_bwd_cols_##SUF##_r##R)                                              \
    extern "C" __global__ void __launch_bounds__(WG) efla_rec_bwd_rows_##SUF##_r##R(             \
        const S* q, const S* k, const S* go, const unsigned char* start, const float* s0,       \
        const float* gf, const float* coef, const float* u, const float* w, float* dka, S* dq,   \
        S* dk, S* dv, S* dbeta, Dims d) {                                                        \
        rec_bwd_rows<S, R>(q, k, go, start, s0, gf, coef, u, w, dka, dq, dk, dv, dbeta, d);      \
    }                                                                                            \
    LINREC_REGISTER(efla_rec_bwd_rows_##SUF##_r##R)

#define LINREC_EFLA_REC_ALL(SUF, S) \
    LINREC_EFLA_REC(SUF, S, 4)      \
    LINREC_EFLA_REC(SUF, S, 8)      \
    LINREC_EFLA_REC(SUF, S, 16)     \
    LINREC_EFLA_REC(SUF, S, 32)

LINREC_EFLA_REC_ALL(f32, float)
LINREC_EFLA_REC_ALL(f16, f16s)
LINREC_EFLA_REC_ALL(bf16, bf16s)
