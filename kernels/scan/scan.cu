// docs/scan.md, diagonal linear scan: forward h_t = (reset ? 0 : a_t h_prev) + x_t and its
// backward (the adjoint scan H_t = G_t + (reset ? 0 : conj(a_next) H_next), dx, da, dh0).
//
// Thread layout (the same as shaders/scan/chunk.wgsl): one block of 256 threads per
// (batch row, block of CB channels); thread (c = tid % CB, j = tid / CB) owns channel c and
// E consecutive steps of each chunk of L = (256 / CB) * E steps. Per chunk: each thread
// composes its E steps into one affine map (state -> m * state + x), the 256 / CB lanes of a
// channel scan those maps in shared memory, each lane applies the prefix to the carried
// state and replays its steps, and the last lane carries the state into the next chunk.
// Blocks never wait on each other, so any T works. Warps read 32 consecutive channels at one
// time step: coalesced. Storage type T (f32 / f16 / bf16) for x, h, grads and a time-varying
// a; f32 for a time-invariant a, states and all arithmetic.
#include "common.cuh"

namespace {

constexpr int WG = 256;
constexpr int E = 8;
constexpr unsigned HAS_H0 = 1, HAS_START = 2, TIME_VARYING = 4, REVERSE = 8, HAS_GF = 16;

template <bool C> struct Shared {
    V<C> m[WG];
    V<C> x[WG];
    V<C> carry[32];
};

// Exclusive prefix (over lanes 0..j-1 of channel c) of the composed maps; all threads call it.
template <bool C>
__device__ __forceinline__ void lane_prefix(Shared<C>& sh, int tid, int j, int cb, V<C> m, V<C> x,
                                            V<C>& pm, V<C>& px) {
    const int tl = WG / cb;
    sh.m[tid] = m;
    sh.x[tid] = x;
    __syncthreads();
    for (int off = 1; off < tl; off <<= 1) {
        V<C> qm = V<C>::one(), qx = V<C>::zero();
        const bool has = j >= off;
        if (has) {
            qm = sh.m[tid - off * cb];
            qx = sh.x[tid - off * cb];
        }
        __syncthreads();
        if (has) {
            x = m * qx + x;
            m = m * qm;
            sh.m[tid] = m;
            sh.x[tid] = x;
        }
        __syncthreads();
    }
    if (j > 0) {
        pm = sh.m[tid - cb];
        px = sh.x[tid - cb];
    } else {
        pm = V<C>::one();
        px = V<C>::zero();
    }
}

__device__ __forceinline__ bool started(const unsigned char* start, unsigned flags, int b, int t,
                                        int T) {
    return (flags & HAS_START) && t < T && start[(size_t)b * T + t] != 0;
}

template <bool C, typename S>
__device__ void scan_fwd(const S* __restrict__ x, const S* __restrict__ a_tv,
                         const float* __restrict__ a_ti, const float* __restrict__ h0,
                         const unsigned char* __restrict__ start, S* __restrict__ h,
                         float* __restrict__ hf, int rows, int T, int D, int cb, unsigned flags) {
    __shared__ Shared<C> sh;
    const int ncb = (D + cb - 1) / cb;
    const long long g = (long long)linear_block();
    if (g >= (long long)rows * ncb) return;
    const int tid = threadIdx.x, b = (int)(g / ncb), c = tid % cb, j = tid / cb;
    const int d = (int)(g % ncb) * cb + c;
    const bool live = d < D, rev = flags & REVERSE, tv = flags & TIME_VARYING;
    if (j == 0) {
        V<C> s = V<C>::zero();
        if (live && (flags & HAS_H0)) s = load_v<C>(h0, (size_t)b * D + d);
        sh.carry[c] = s;
    }
    V<C> ati = V<C>::one();
    if (live && !tv) ati = load_v<C>(a_ti, d);
    const int L = (WG / cb) * E;
    for (int k0 = 0; k0 < T; k0 += L) {
        V<C> mm[E], xx[E];
        V<C> m = V<C>::one(), xs = V<C>::zero();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int s = k0 + j * E + e;
            V<C> me = V<C>::one(), xe = V<C>::zero();
            if (live && s < T) {
                const int t = rev ? T - 1 - s : s;
                const size_t i = ((size_t)b * T + t) * D + d;
                me = tv ? load_v<C>(a_tv, i) : ati;
                if (started(start, flags, b, rev ? t + 1 : t, T)) me = V<C>::zero();
                xe = load_v<C>(x, i);
            }
            mm[e] = me;
            xx[e] = xe;
            xs = me * xs + xe;
            m = me * m;
        }
        V<C> pm, px;
        lane_prefix<C>(sh, tid, j, cb, m, xs, pm, px);
        V<C> st = pm * sh.carry[c] + px;
        __syncthreads();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            st = mm[e] * st + xx[e];
            const int s = k0 + j * E + e;
            if (live && s < T) {
                const int t = rev ? T - 1 - s : s;
                store_v<C>(h, ((size_t)b * T + t) * D + d, st);
            }
        }
        if (j == WG / cb - 1) sh.carry[c] = st;
        __syncthreads();
    }
    if (j == 0 && live) store_v<C>(hf, (size_t)b * D + d, sh.carry[c]);
}

template <bool C, typename S>
__device__ void scan_bwd(const S* __restrict__ a_tv, const float* __restrict__ a_ti,
                         const S* __restrict__ hs, const float* __restrict__ h0,
                         const unsigned char* __restrict__ start, const S* __restrict__ gr,
                         const float* __restrict__ gf, S* __restrict__ dx, S* __restrict__ da_tv,
                         float* __restrict__ da_part, float* __restrict__ dh0, int rows, int T,
                         int D, int cb, unsigned flags) {
    __shared__ Shared<C> sh;
    const int ncb = (D + cb - 1) / cb;
    const long long g = (long long)linear_block();
    if (g >= (long long)rows * ncb) return;
    const int tid = threadIdx.x, b = (int)(g / ncb), c = tid % cb, j = tid / cb;
    const int d = (int)(g % ncb) * cb + c;
    const bool live = d < D, rev = flags & REVERSE, tv = flags & TIME_VARYING;
    if (j == 0) {
        V<C> s = V<C>::zero();
        if (live && (flags & HAS_GF)) s = load_v<C>(gf, (size_t)b * D + d);
        sh.carry[c] = s;
    }
    V<C> ati = V<C>::one();
    if (live && !tv) ati = load_v<C>(a_ti, d);
    V<C> acc = V<C>::zero();
    const int L = (WG / cb) * E;
    for (int k0 = 0; k0 < T; k0 += L) {
        V<C> mm[E], gg[E];
        V<C> m = V<C>::one(), xs = V<C>::zero();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int s = k0 + j * E + e;
            V<C> me = V<C>::one(), ge = V<C>::zero();
            if (live && s < T) {
                // the adjoint runs t descending (forward problem) or ascending (reversed)
                const int t = rev ? s : T - 1 - s;
                if (s > 0) {
                    const int pred = rev ? t - 1 : t + 1;
                    me = (tv ? load_v<C>(a_tv, ((size_t)b * T + pred) * D + d) : ati).conj();
                    if (started(start, flags, b, t > pred ? t : pred, T)) me = V<C>::zero();
                }
                ge = load_v<C>(gr, ((size_t)b * T + t) * D + d);
            }
            mm[e] = me;
            gg[e] = ge;
            xs = me * xs + ge;
            m = me * m;
        }
        V<C> pm, px;
        lane_prefix<C>(sh, tid, j, cb, m, xs, pm, px);
        V<C> hh = pm * sh.carry[c] + px;
        __syncthreads();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            hh = mm[e] * hh + gg[e];
            const int s = k0 + j * E + e;
            if (live && s < T) {
                const int t = rev ? s : T - 1 - s;
                const size_t i = ((size_t)b * T + t) * D + d;
                store_v<C>(dx, i, hh);
                const bool fwd_reset = started(start, flags, b, rev ? t + 1 : t, T);
                V<C> dai = V<C>::zero();
                if (!fwd_reset) {
                    V<C> hprev = V<C>::zero();
                    const bool first = rev ? t + 1 == T : t == 0;
                    if (first) {
                        if (flags & HAS_H0) hprev = load_v<C>(h0, (size_t)b * D + d);
                    } else {
                        hprev = load_v<C>(hs, ((size_t)b * T + (rev ? t + 1 : t - 1)) * D + d);
                    }
                    dai = hprev.conj() * hh;
                }
                if (tv) {
                    store_v<C>(da_tv, i, dai);
                } else {
                    acc = acc + dai;
                }
            }
        }
        if (j == WG / cb - 1) sh.carry[c] = hh;
        __syncthreads();
    }
    if (j == 0 && live) {
        const int t0 = rev ? T - 1 : 0;
        V<C> v = V<C>::zero();
        if (rev || !started(start, flags, b, 0, T)) {
            const V<C> a0 = tv ? load_v<C>(a_tv, ((size_t)b * T + t0) * D + d) : ati;
            v = a0.conj() * sh.carry[c];
        }
        store_v<C>(dh0, (size_t)b * D + d, v);
    }
    if (!tv) {
        // row partial of da for a time-invariant a: lanes summed in a fixed order
        sh.m[tid] = acc;
        __syncthreads();
        if (j == 0 && live) {
            V<C> sum = V<C>::zero();
            for (int q = 0; q < WG / cb; ++q) sum = sum + sh.m[q * cb + c];
            store_v<C>(da_part, (size_t)b * D + d, sum);
        }
    }
}

}  // namespace

#define LINREC_SCAN(SUF, C, S)                                                                   \
    extern "C" __global__ void __launch_bounds__(WG)                                             \
        scan_fwd_##SUF(const S* x, const S* a_tv, const float* a_ti, const float* h0,            \
                       const unsigned char* start, S* h, float* hf, int rows, int T, int D,      \
                       int cb, unsigned flags) {                                                 \
        scan_fwd<C, S>(x, a_tv, a_ti, h0, start, h, hf, rows, T, D, cb, flags);                  \
    }                                                                                            \
    LINREC_REGISTER(scan_fwd_##SUF)                                                              \
    extern "C" __global__ void __launch_bounds__(WG)                                             \
        scan_bwd_##SUF(const S* a_tv, const float* a_ti, const S* hs, const float* h0,           \
                       const unsigned char* start, const S* g, const float* gf, S* dx, S* da_tv, \
                       float* da_part, float* dh0, int rows, int T, int D, int cb,               \
                       unsigned flags) {                                                         \
        scan_bwd<C, S>(a_tv, a_ti, hs, h0, start, g, gf, dx, da_tv, da_part, dh0, rows, T, D,    \
                       cb, flags);                                                               \
    }                                                                                            \
    LINREC_REGISTER(scan_bwd_##SUF)

LINREC_SCAN(real_f32, false, float)
LINREC_SCAN(complex_f32, true, float)
LINREC_SCAN(real_f16, false, f16s)
LINREC_SCAN(complex_f16, true, f16s)
LINREC_SCAN(real_bf16, false, bf16s)
LINREC_SCAN(complex_bf16, true, bf16s)
