// docs/scan.md, diagonal linear scan: forward h_t = (reset ? 0 : a_t h_prev) + x_t and its
// backward (the adjoint scan H_t = G_t + (reset ? 0 : conj(a_next) H_next), dx, da, dh0).
//
// Thread layout (the same as shaders/scan/chunk.wgsl): one block of 256 threads per
// (batch row, block of CB channels); thread (c = tid % CB, j = tid / CB) owns channel c and
// E consecutive steps of each chunk of L = (256 / CB) * E steps. Per chunk: each thread
// composes its E steps into one map (state -> r ? x : m * state + x, r: a reset replaces), the 256 / CB lanes of a
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
    V<C> ml[WG];
    V<C> x[WG];
    V<C> carry[32];
    unsigned char r[WG];
};

// (F2s, two_prod, two_sum: common.cuh)

// (ah + al)(bh + bl) as hi + lo (unnormalized, |lo| about an ulp of hi), to about 2^-44
// relative: the products of the high parts exactly, the terms with a low part in f32.
__device__ __forceinline__ void ff_mul(V<false> ah, V<false> al, V<false> bh, V<false> bl,
                                       V<false>& hi, V<false>& lo) {
    const F2s p = two_prod(ah.re, bh.re);
    hi = {p.x};
    lo = {p.y + (ah.re * bl.re + al.re * bh.re)};
}
__device__ __forceinline__ void ff_mul(V<true> ah, V<true> al, V<true> bh, V<true> bl,
                                       V<true>& hi, V<true>& lo) {
    const F2s p1 = two_prod(ah.re, bh.re), p2 = two_prod(ah.im, bh.im);
    const F2s q1 = two_prod(ah.re, bh.im), q2 = two_prod(ah.im, bh.re);
    const F2s re = two_sum(p1.x, -p2.x), im = two_sum(q1.x, q2.x);
    const V<true> cross = ah * bl + al * bh;
    hi = {re.x, im.x};
    lo = {re.y + (p1.y - p2.y) + cross.re, im.y + (q1.y + q2.y) + cross.im};
}

// state -> r ? x : (m + ml) * state + x. A reset is the flag r, never a zero multiplier: it
// *replaces* the state (select), so a NaN or infinity before it stays there (NaN * 0 = NaN).
// The multiplier is kept as an unevaluated sum m + ml (about 44 bits): it is a product of up
// to L transitions, and its f32 roundings are the same in every chunk of a time-invariant
// scan (and biased for transitions near 1), an error the carried state accumulates over the
// whole sequence (rel 1e-4 at T = 2^20 with a within 1e-4 of 1). x and the replayed steps
// are f32: their roundings do not accumulate.
template <bool C> struct Map {
    V<C> m, ml, x;
    bool r;
    __device__ static Map id() { return {V<C>::one(), V<C>::zero(), V<C>::zero(), false}; }
    // one more step: reset ? replace by xe : multiply by me, add xe
    __device__ Map step(V<C> me, V<C> xe, bool reset) const {
        if (reset) return {V<C>::one(), V<C>::zero(), xe, true};
        Map o;
        ff_mul(me, V<C>::zero(), m, ml, o.m, o.ml);
        o.x = me * x + xe;
        o.r = r;
        return o;
    }
    // this map after `e`
    __device__ Map after(const Map& e) const {
        if (r) return *this;
        Map o;
        ff_mul(m, ml, e.m, e.ml, o.m, o.ml);
        o.x = m * e.x + (ml * e.x + x);
        o.r = e.r;
        return o;
    }
    __device__ V<C> apply(V<C> s) const { return r ? x : m * s + (ml * s + x); }
};

// The maps entering lane j of channel c (the composition of lanes 0..j-1, identity for j = 0)
// and leaving it (lanes 0..j); all threads call it.
template <bool C>
__device__ __forceinline__ void lane_prefix(Shared<C>& sh, int tid, int j, int cb, Map<C> f,
                                            Map<C>& enter, Map<C>& leave) {
    const int tl = WG / cb;
    sh.m[tid] = f.m;
    sh.ml[tid] = f.ml;
    sh.x[tid] = f.x;
    sh.r[tid] = f.r;
    __syncthreads();
    for (int off = 1; off < tl; off <<= 1) {
        Map<C> q = Map<C>::id();
        const bool has = j >= off;
        if (has) {
            const int n = tid - off * cb;
            q = {sh.m[n], sh.ml[n], sh.x[n], sh.r[n] != 0};
        }
        __syncthreads();
        if (has) {
            f = f.after(q);
            sh.m[tid] = f.m;
            sh.ml[tid] = f.ml;
            sh.x[tid] = f.x;
            sh.r[tid] = f.r;
        }
        __syncthreads();
    }
    leave = f;
    enter = Map<C>::id();
    if (j > 0) {
        const int n = tid - cb;
        enter = {sh.m[n], sh.ml[n], sh.x[n], sh.r[n] != 0};
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
        unsigned rr = 0;  // bit e: step e resets
        Map<C> f = Map<C>::id();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int s = k0 + j * E + e;
            V<C> me = V<C>::one(), xe = V<C>::zero();
            bool re = false;
            if (live && s < T) {
                const int t = rev ? T - 1 - s : s;
                const size_t i = ((size_t)b * T + t) * D + d;
                me = tv ? load_v<C>(a_tv, i) : ati;
                re = started(start, flags, b, rev ? t + 1 : t, T);
                xe = load_v<C>(x, i);
            }
            mm[e] = me;
            xx[e] = xe;
            rr |= (unsigned)re << e;
            f = f.step(me, xe, re);
        }
        Map<C> enter, leave;
        lane_prefix<C>(sh, tid, j, cb, f, enter, leave);
        V<C> st = enter.apply(sh.carry[c]);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            st = (rr >> e & 1u) ? xx[e] : mm[e] * st + xx[e];
            const int s = k0 + j * E + e;
            if (live && s < T) {
                const int t = rev ? T - 1 - s : s;
                store_v<C>(h, ((size_t)b * T + t) * D + d, st);
            }
        }
        // the chunk's whole map (its multiplier in hi + lo) applied to the carried state
        if (j == WG / cb - 1) sh.carry[c] = leave.apply(sh.carry[c]);
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
        unsigned rr = 0;  // bit e: step e resets
        Map<C> f = Map<C>::id();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int s = k0 + j * E + e;
            V<C> me = V<C>::one(), ge = V<C>::zero();
            bool re = false;
            if (live && s < T) {
                // the adjoint runs t descending (forward problem) or ascending (reversed)
                const int t = rev ? s : T - 1 - s;
                if (s > 0) {
                    const int pred = rev ? t - 1 : t + 1;
                    me = (tv ? load_v<C>(a_tv, ((size_t)b * T + pred) * D + d) : ati).conj();
                    re = started(start, flags, b, t > pred ? t : pred, T);
                }
                ge = load_v<C>(gr, ((size_t)b * T + t) * D + d);
            }
            mm[e] = me;
            gg[e] = ge;
            rr |= (unsigned)re << e;
            f = f.step(me, ge, re);
        }
        Map<C> enter, leave;
        lane_prefix<C>(sh, tid, j, cb, f, enter, leave);
        V<C> hh = enter.apply(sh.carry[c]);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            hh = (rr >> e & 1u) ? gg[e] : mm[e] * hh + gg[e];
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
        // the chunk's whole map (its multiplier in hi + lo) applied to the carried state
        if (j == WG / cb - 1) sh.carry[c] = leave.apply(sh.carry[c]);
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
