// docs/ffm.md, FFM aggregation: S_t = (start_t ? 0 : gamma S_{t-1}) + x_t with gamma[m][c] =
// exp(a[m] + i b[c]), S: [B, T, M, C] complex written once; and its backward (reverse scan
// H_t = G_t + (start_{t+1} ? 0 : conj(gamma) H_{t+1}), dx, ds0, and per-row partials of
// dlog = conj(gamma) sum conj(S_{t-1}) H_t, reduced in a fixed order: no float atomics).
// The algorithm is that of shaders/ffm/*.wgsl (chunked scan, closed-form powers, checkpointed
// backward), organised for NVIDIA hardware.
//
// Units and columns. A thread owns one *unit*: V consecutive context channels (c, .., c+V-1)
// of one memory channel m, so its V states share x[m] and are V adjacent complex values of S
// (V = 2 when C is even: one 16-byte float4 store per step; V = 1 when C is odd: 8 bytes). A
// block of NT = 256 threads owns `cols` (1, 2, 4, .., 256) unit columns of one batch row:
// either mb whole memory channels of cwu = C / V units each (ncb = 1), or, when a memory
// channel has more units than columns, a run of cwu = cols of its units (ncb context blocks
// per memory channel, mb = 1). Thread tid is column col = tid % cols, time lane j = tid / cols.
//
// Time. The TL = NT / cols lanes of a column split each chunk of L = TL * E steps, lane j
// owning steps [k L + j E, k L + j E + E) of chunk k; a loop over chunks carries the state.
// A lane's E steps compose into one map (state -> (any start ? 0 : gamma^E) state + x_lane).
// Lanes are combined in two levels: (1) inside a warp, the spw = 32 / cols lanes that share
// it (cols < 32) run a Hillis-Steele scan with warp shuffles (__shfl_up_sync by cols * 2^k);
// (2) the ng = TL / spw warp-groups' totals go through shared memory, and every thread
// composes the groups before its own from a zero state in a fixed order, then applies the
// chunk's carried state with one power (thread j = 0 composes all groups, and the chunk's
// result from a zero state enters the next chunk's carry, kept in shared memory, through the
// anchored carry below: no power's rounding is repeated once per chunk or group).
// The multiplier of a reset-free span of n steps is gamma^n in closed form,
// exp(n a) (cos n b, sin n b) with n b formed in two parts (b = hi + lo, n hi exact), never
// a product of per-step multipliers; the powers a block needs (gamma, gamma^{E s} for
// s = 1..spw, gamma^{E spw g} for g = 2..ng) are computed once per block into shared memory
// by all its threads.
//
// Memory. Forward: x read once (4 bytes per (t, m), shared by the C / V units of m through
// L1), S written once with coalesced vector stores (the columns of a warp are consecutive
// units: cols * V * 8 contiguous bytes per lane group and step), the final state once.
// Registers: forward <= 64 (four blocks of 256 per SM; the lane's x waits out the scan in
// shared memory), backward <= 128 (two blocks per SM), no spills on sm_80 / sm_90.
// Backward: a first pass (ffm_ckpt_*: the forward without S) stores the state entering each
// chunk, [B, K, M, C] complex (K = ceil(T / L): L times smaller than S); then ffm_bwd_*
// processes chunks last to first, recomputing the chunk's states from its checkpoint and x,
// reading grad_s once (16-byte loads when the caller's buffer allows), summing dx over c in
// shared memory (per context block, plus ffm_dx_reduce when ncb > 1), writing ds0 and a
// per-(row, channel) dlog partial; reduce_rows_f32 then ffm_params finish da and db.
#include "common.cuh"

namespace {

constexpr int NT = 256;            // threads per block
constexpr int E = 8;               // steps per thread per chunk
constexpr int MAX_TAB = 1024;      // complex entries of the power table: (spw + ng) * cols * V
constexpr unsigned FULL = 0xffffffffu;
constexpr unsigned HAS_S0 = 1, HAS_START = 2, HAS_GF = 4;

using Cx = V<true>;
// Vector types of our own (NVRTC ships no headers): 16- and 8-byte loads and stores.
struct __align__(16) F4 { float x, y, z, w; };
struct __align__(8) F2 { float x, y; };

__device__ __forceinline__ Cx cx(float re) { return {re, 0.f}; }
// a * b + c
__device__ __forceinline__ Cx cfma(Cx a, Cx b, Cx c) {
    return {a.re * b.re - a.im * b.im + c.re, a.re * b.im + a.im * b.re + c.im};
}

// ------------------------------------------------------------------ closed-form powers
// The same functions as shaders/ffm/common.wgsl (reduce_angle, exp_acc, cis_acc, cpow): about
// an ulp each, independent of the library's transcendentals.

// th reduced to about [-pi, pi] (Cody-Waite: 2 pi = 6.28125 + 1.9353...e-3, the first part
// exact in 8 bits so k * 6.28125 is exact for |k| < 2^16).
__device__ __forceinline__ float reduce_angle(float th) {
    const float k = rintf(th * 0.15915494309189535f);
    return (th - k * 6.28125f) - k * 1.9353071795864769e-3f;
}

// exp(x): x = k ln2 + r (ln2 split so k * hi is exact), |r| <= ln2 / 2, Taylor to r^8.
// Non-finite and out-of-range arguments as IEEE exp (NaN stays NaN, tested on the bits;
// overflow +inf, underflow 0), so a non-finite `a` gives the reference's non-finite powers
// instead of being clamped into finite ones.
__device__ __forceinline__ float exp_acc(float x) {
    if ((__float_as_uint(x) & 0x7fffffffu) > 0x7f800000u) return x;
    if (x > 88.72f) return __uint_as_float(0x7f800000u);
    if (x < -104.f) return 0.f;
    x = fminf(fmaxf(x, -100.f), 88.f);
    const float k = rintf(x * 1.4426950408889634f);
    const float r = (x - k * 0.693145751953125f) - k * 1.4286068202862268e-6f;
    float p = 1.f / 40320.f;
    p = p * r + 1.f / 5040.f;
    p = p * r + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    return ldexpf(p, (int)k);
}

// (cos th, sin th): th = q pi/2 + r (pi/2 split so q * hi is exact), |r| <= pi/4, Taylor to
// r^9 / r^10, then the quadrant.
__device__ __forceinline__ Cx cis_acc(float th) {
    const float q = rintf(th * 0.6366197723675814f);
    const float r = (th - q * 1.5703125f) - q * 4.8382679489661923e-4f;
    const float r2 = r * r;
    const float s = r + r * r2 * (-1.f / 6.f + r2 * (1.f / 120.f + r2 * (-1.f / 5040.f + r2 * (1.f / 362880.f))));
    const float c = 1.f + r2 * (-0.5f + r2 * (1.f / 24.f + r2 * (-1.f / 720.f + r2 * (1.f / 40320.f + r2 * (-1.f / 3628800.f)))));
    switch ((int)q & 3) {
        case 0: return {c, s};
        case 1: return {-s, c};
        case 2: return {-c, -s};
        default: return {s, -c};
    }
}

// gamma^n = exp(n a) (cos n b, sin n b) for b already in [-pi, pi]: b = hi + lo with hi
// keeping 12 significant bits, so n hi is exact (n <= E * 32 = 256 here) and reduced exactly;
// n lo is small. The angle is good to a few ulps of pi, not to an ulp of n b.
__device__ __forceinline__ Cx cpow(float a, float b, int n) {
    if (n == 0) return {1.f, 0.f};  // exactly, whatever gamma (0 * inf would be NaN)
    const float nf = (float)n;
    const float hi = __uint_as_float(__float_as_uint(b) & 0xfffff000u);
    const float lo = b - hi;
    const float th = reduce_angle(nf * hi) + nf * lo;
    const float r = exp_acc(nf * a);
    const Cx c = cis_acc(th);
    return {r * c.re, r * c.im};
}

// ------------------------------------------------------------------ the anchored carry
// The same as shaders/ffm/common.wgsl: the chunk-to-chunk carry is kept relative to an anchor
// chunk, state = gamma^n (u + ul), u + ul += gamma^-(n + L) X per chunk (X the chunk's result
// from a zero state), both powers in closed form for any n, so no power's rounding is
// repeated once per chunk (multiplying by gamma^L every chunk drifted an undamped state to
// rel 3e-5 at T = 2^20). A reset in the chunk, or |n a| past 40, moves the anchor.

// (F2s, two_prod, two_sum: common.cuh)

// gamma^n for any n < 2^24 (b in [-pi, pi]): n b = p + e exactly, reduced by
// 2 pi = 6.25 + C2 + C3 (k 6.25 exact, k C2 exact as a pair): the angle to about 1e-10.
__device__ __forceinline__ Cx cpow_far(float a, float b, int n) {
    if (n == 0) return {1.f, 0.f};
    const float nf = (float)n;
    const F2s p = two_prod(nf, b);
    const float k = rintf(p.x * 0.15915494309189535f);
    const F2s q = two_prod(k, 0.03318530693650246f);
    const float th = ((p.x - k * 6.25f) - q.x) + ((p.y - q.y) - k * 2.430837753308879e-10f);
    const F2s pa = two_prod(nf, a);
    // (the error term is NaN when n a is infinite: then exp alone decides)
    const bool fin = (__float_as_uint(pa.y) & 0x7fffffffu) < 0x7f800000u;
    const float r = exp_acc(pa.x) * (fin ? 1.f + pa.y : 1.f);
    const Cx c = cis_acc(th);
    return {r * c.re, r * c.im};
}

struct Anchor {
    Cx u, ul;
    int n;
};
__device__ __forceinline__ Anchor anchor_at(Cx s) { return {s, Cx::zero(), 0}; }
__device__ __forceinline__ Cx anchor_state(const Anchor& an, float a, float b) {
    return cpow_far(a, b, an.n) * (an.u + an.ul);
}
// The anchor after one more chunk of L steps whose map from a zero state is (any, x).
__device__ __forceinline__ Anchor anchor_next(const Anchor& an, bool any, Cx x, float a, float b,
                                              int L) {
    if (any) return anchor_at(x);
    const int n = an.n + L;
    if (fabsf((float)n * a) > 40.f || n >= (1 << 23)) {
        return anchor_at(cpow_far(a, b, n) * (an.u + an.ul) + x);
    }
    const Cx y = cpow_far(-a, -b, n) * x;
    const F2s re = two_sum(an.u.re, y.re + an.ul.re), im = two_sum(an.u.im, y.im + an.ul.im);
    return {{re.x, im.x}, {re.y, im.y}, n};
}

// ------------------------------------------------------------------ layout

struct Lay {
    int rows, T, M, C;   // problem
    int cols, mb, cwu, ncb, nblk, K;  // blocks: see the top of the file; nblk blocks per row
    unsigned flags;
};

// Unit column cc of block (mblk, cb): its memory channel m and unit index u within m (units
// of V context channels); false for the idle columns.
__device__ __forceinline__ bool column(const Lay& P, int CU, int mblk, int cb, int cc, int& m,
                                       int& u) {
    const int ml = cc / P.cwu;
    m = mblk * P.mb + ml;
    u = cb * P.cwu + cc % P.cwu;
    return ml < P.mb && m < P.M && u < CU;
}

// The block's powers: tab[(s * cols + cc) * V + v] = gamma^n of channel v of column cc, with
// n = 1 for s = 0, n = E s for s = 1..spw (E 2^k for the warp scan, E sig for a lane's
// prefix, E spw for a warp-group), and n = E spw g for s = spw + g - 1, g = 2..ng (g
// warp-groups; g = ng is the whole chunk, L steps). (spw + ng) * cols <= 512 for every width.
// Every thread calls this; a barrier must follow.
template <int V>
__device__ void fill_powers(Cx* tab, const float* __restrict__ a, const float* __restrict__ b,
                            const Lay& P, int mblk, int cb, int spw, int ng) {
    const int n = (spw + ng) * P.cols * V;
    for (int i = threadIdx.x; i < n; i += NT) {
        const int v = i % V, cc = (i / V) % P.cols, s = i / (V * P.cols);
        int m, u;
        float la = 0.f, lb = 0.f;
        if (column(P, P.C / V, mblk, cb, cc, m, u)) {
            la = a[m];
            lb = reduce_angle(b[u * V + v]);
        }
        tab[i] = cpow(la, lb, s == 0 ? 1 : s <= spw ? E * s : E * spw * (s - spw + 1));
    }
}

__device__ __forceinline__ Cx pw(const Cx* tab, int s, int cols, int col, int V_, int v) {
    return tab[(s * cols + col) * V_ + v];
}
// gamma^(E spw g): the power of g warp-groups (g = 1..ng).
__device__ __forceinline__ Cx pwg(const Cx* tab, int g, int spw, int cols, int col, int V_,
                                  int v) {
    return pw(tab, spw + g - 1, cols, col, V_, v);
}

// Warp-group level of the lane scan: the composition, from a zero state, of the group totals
// (any, x) in tany / tot[(g * cols + col) * V] for g in [g0, g1) in ascending order (REV:
// descending from g1 - 1), multipliers gamma^(E spw) (conjugated with REV). The carried state
// is applied to it afterwards with one closed-form power, so it passes through one power per
// chunk, not one per group: over a long, slowly decaying sequence the powers' rounding drifts
// the state per multiplication.
template <int V, bool REV>
__device__ __forceinline__ void compose_groups(const int* tany, const Cx* tot, const Cx* tab,
                                               int g0, int g1, int spw, int cols, int col,
                                               bool& za, Cx (&z)[V]) {
    za = false;
#pragma unroll
    for (int v = 0; v < V; ++v) z[v] = Cx::zero();
    for (int n = 0; n < g1 - g0; ++n) {
        const int i = (REV ? g1 - 1 - n : g0 + n) * cols + col;
        const bool ta = tany[i] != 0;
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const Cx w = pw(tab, spw, cols, col, V, v);
            z[v] = ta ? tot[i * V + v] : cfma(REV ? w.conj() : w, z[v], tot[i * V + v]);
        }
        za = za || ta;
    }
}

// The state after g warp-groups composed into (za, z), entered with state c.
template <int V, bool REV>
__device__ __forceinline__ void enter(const Cx* tab, int g, int spw, int cols, int col, bool za,
                                      const Cx (&z)[V], const Cx (&c)[V], Cx (&out)[V]) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
        if (za) {
            out[v] = z[v];
        } else if (g == 0) {
            out[v] = c[v];
        } else {
            const Cx w = pwg(tab, g, spw, cols, col, V, v);
            out[v] = cfma(REV ? w.conj() : w, c[v], z[v]);
        }
    }
}

__device__ __forceinline__ float shfl_mv(bool up, float v, int d) {
    return up ? __shfl_up_sync(FULL, v, d) : __shfl_down_sync(FULL, v, d);
}
__device__ __forceinline__ int shfl_mv(bool up, int v, int d) {
    return up ? __shfl_up_sync(FULL, v, d) : __shfl_down_sync(FULL, v, d);
}

// Warp level of the lane scan. In: this lane's map (any: it drops the incoming state; x: its
// result from a zero state). Out: the inclusive composition over the lanes of this warp-group
// up to this one (REV: from the group's last lane down to this one, multipliers conjugated),
// and the exclusive one (the lanes strictly before; identity for the first). Lanes of a
// column sit cols apart in the warp. Every thread of the warp must call this.
template <int V, bool REV>
__device__ __forceinline__ void warp_scan(const Cx* tab, int cols, int col, int spw, int sig,
                                          bool& any, Cx (&x)[V], bool& eany, Cx (&ex)[V]) {
#pragma unroll
    for (int lvl = 0; lvl < 5; ++lvl) {
        const int off = 1 << lvl;
        if (off >= spw) break;  // uniform: spw is the same for the whole block
        const int d = off * cols;
        const int pa = shfl_mv(!REV, (int)any, d);
        Cx px[V];
#pragma unroll
        for (int v = 0; v < V; ++v) px[v] = {shfl_mv(!REV, x[v].re, d), shfl_mv(!REV, x[v].im, d)};
        const bool has = REV ? sig + off < spw : sig >= off;
        if (has) {
            // own span after the neighbour's: x = gamma^(E off) x_neighbour + x_own
            if (!any) {
#pragma unroll
                for (int v = 0; v < V; ++v) {
                    const Cx w = pw(tab, off, cols, col, V, v);
                    x[v] = cfma(REV ? w.conj() : w, px[v], x[v]);
                }
            }
            any = any || pa != 0;
        }
    }
    eany = false;
#pragma unroll
    for (int v = 0; v < V; ++v) ex[v] = Cx::zero();
    if (spw > 1) {
        const int pa = shfl_mv(!REV, (int)any, cols);
        Cx px[V];
#pragma unroll
        for (int v = 0; v < V; ++v)
            px[v] = {shfl_mv(!REV, x[v].re, cols), shfl_mv(!REV, x[v].im, cols)};
        if (REV ? sig + 1 < spw : sig > 0) {
            eany = pa != 0;
#pragma unroll
            for (int v = 0; v < V; ++v) ex[v] = px[v];
        }
    }
}

// V complex values at element index i (in complex numbers) of an f32 buffer.
template <int V>
__device__ __forceinline__ void store_units(float* p, size_t i, const Cx (&s)[V]) {
    if constexpr (V == 2) {
        *reinterpret_cast<F4*>(p + 2 * i) = F4{s[0].re, s[0].im, s[1].re, s[1].im};
    } else {
        *reinterpret_cast<F2*>(p + 2 * i) = F2{s[0].re, s[0].im};
    }
}
// Loads from buffers this op allocated (aligned to their element's vector).
template <int V>
__device__ __forceinline__ void load_units(const float* __restrict__ p, size_t i, Cx (&s)[V]) {
    if constexpr (V == 2) {
        const F4 f = *reinterpret_cast<const F4*>(p + 2 * i);
        s[0] = Cx{f.x, f.y};
        s[1] = Cx{f.z, f.w};
    } else {
        const F2 f = *reinterpret_cast<const F2*>(p + 2 * i);
        s[0] = Cx{f.x, f.y};
    }
}
// Loads from a caller's buffer: GW floats at a time (4: 16-byte aligned, 2: 8-byte, 1: any).
template <int V, int GW>
__device__ __forceinline__ void load_caller(const float* __restrict__ p, size_t i, Cx (&s)[V]) {
    const float* q = p + 2 * i;
    if constexpr (GW == 4) {
        static_assert(V == 2, "16-byte loads need two complex values");
        const F4 f = *reinterpret_cast<const F4*>(q);
        s[0] = Cx{f.x, f.y};
        s[1] = Cx{f.z, f.w};
    } else if constexpr (GW == 2) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const F2 f = *reinterpret_cast<const F2*>(q + 2 * v);
            s[v] = Cx{f.x, f.y};
        }
    } else {
#pragma unroll
        for (int v = 0; v < V; ++v) s[v] = {q[2 * v], q[2 * v + 1]};
    }
}

// ------------------------------------------------------------------ forward

// The forward (CKPT = false: S and the final state) or the backward's first pass (CKPT: the
// state entering each chunk, ck[(row * K + k) * MC + channel], nothing else).
template <int V, bool CKPT>
__device__ void ffm_fwd(const float* __restrict__ x, const float* __restrict__ a,
                        const float* __restrict__ b, const float* __restrict__ s0,
                        const unsigned char* __restrict__ start, float* __restrict__ out,
                        float* __restrict__ sf, const Lay P) {
    __shared__ Cx tab[MAX_TAB];
    __shared__ Cx tot[2][NT * V];
    __shared__ int tany[2][NT];
    __shared__ Cx csh[2][NT * V];  // the state entering chunk k, in csh[k & 1]
    __shared__ F4 xsh[E / 4 * NT];  // each thread's x, private
    const long long g = (long long)linear_block();
    if (g >= (long long)P.rows * P.nblk) return;
    const int row = (int)(g / P.nblk), blk = (int)(g % P.nblk);
    const int mblk = blk / P.ncb, cb = blk % P.ncb;
    const int tid = threadIdx.x, cols = P.cols, col = tid % cols, j = tid / cols;
    const int spw = cols < 32 ? 32 / cols : 1, tl = NT / cols, ng = tl / spw;
    const int grp = j / spw, sig = j % spw;
    const int T = P.T, M = P.M;
    const size_t MC = (size_t)M * P.C;
    int m, u;
    const bool live = column(P, P.C / V, mblk, cb, col, m, u);
    if (!live) m = u = 0;  // idle columns load and store nothing; keep the bases in range
    const size_t q = (size_t)m * P.C + (size_t)u * V;  // first channel of the unit
    const int mc2 = 2 * M * P.C;  // floats per step of S (fits: checked by the launcher)
    const float* __restrict__ xr = x + (size_t)row * T * M + m;  // x[row, t, m] = xr[t M]
    const bool has_start = P.flags & HAS_START;
    const unsigned char* __restrict__ str = has_start ? start + (size_t)row * T : nullptr;
    // S[row, t, q..] at sr + t mc2, the final state at sfr (CKPT: neither exists)
    float* __restrict__ sr = CKPT ? nullptr : out + 2 * ((size_t)row * T * MC + q);
    float* __restrict__ sfr = CKPT ? nullptr : sf + 2 * ((size_t)row * MC + q);
    fill_powers<V>(tab, a, b, P, mblk, cb, spw, ng);
    __syncthreads();
    Cx gam[V];
#pragma unroll
    for (int v = 0; v < V; ++v) gam[v] = pw(tab, 0, cols, col, V, v);
    // the anchored carry of each unit (updated by thread j = 0 of its column), in shared
    // memory: registers are the forward's limit
    __shared__ Anchor ash[NT * V];
    if (j == 0) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            Cx c = Cx::zero();
            if (live && (P.flags & HAS_S0)) c = load_v<true>(s0, (size_t)row * MC + q + v);
            csh[0][col * V + v] = c;
            ash[col * V + v] = anchor_at(c);
        }
    }
    const int L = tl * E;
    int buf = 0;
    for (int k = 0; k < P.K; ++k) {
        const int t0 = k * L + j * E;
        const int n = live ? min(E, T - t0) : 0;  // steps of this lane inside the sequence
        float xs[E];
        unsigned rs = 0;  // bit e: step t0 + e starts an episode
        const float* __restrict__ xp = xr + (size_t)t0 * M;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            xs[e] = e < n ? xp[e * M] : 0.f;
            if (has_start && t0 + e < T && str[t0 + e] != 0) rs |= 1u << e;
        }
        if (!CKPT) {
            // kept for the replay in this thread's own slots of shared memory rather than in
            // registers across the scan: 64 registers, four blocks per SM, no spills
#pragma unroll
            for (int e = 0; e < E; e += 4)
                xsh[e / 4 * NT + tid] = F4{xs[e], xs[e + 1], xs[e + 2], xs[e + 3]};
        }
        // this lane's map
        Cx xl[V];
#pragma unroll
        for (int v = 0; v < V; ++v) xl[v] = Cx::zero();
#pragma unroll
        for (int e = 0; e < E; ++e)
#pragma unroll
            for (int v = 0; v < V; ++v)
                xl[v] = (rs >> e & 1u) ? cx(xs[e]) : cfma(gam[v], xl[v], cx(xs[e]));
        bool any = rs != 0, eany;
        Cx ex[V];
        warp_scan<V, false>(tab, cols, col, spw, sig, any, xl, eany, ex);
        if (sig == spw - 1) {
            tany[buf][grp * cols + col] = any;
#pragma unroll
            for (int v = 0; v < V; ++v) tot[buf][(grp * cols + col) * V + v] = xl[v];
        }
        __syncthreads();
        // the state entering this warp-group, then this lane; then (thread j = 0) the one
        // leaving the chunk, the next carry. tot and csh are double-buffered, so one barrier
        // per chunk suffices.
        Cx c[V], z[V], s[V];
        bool za;
#pragma unroll
        for (int v = 0; v < V; ++v) c[v] = csh[buf][col * V + v];
        if (CKPT && j == 0 && live) store_units<V>(out, ((size_t)row * P.K + k) * MC + q, c);
        compose_groups<V, false>(tany[buf], tot[buf], tab, 0, grp, spw, cols, col, za, z);
        enter<V, false>(tab, grp, spw, cols, col, za, z, c, s);
#pragma unroll
        for (int v = 0; v < V; ++v)
            if (!eany)
                ex[v] = sig == 0 ? ex[v] + s[v] : cfma(pw(tab, sig, cols, col, V, v), s[v], ex[v]);
        if (j == 0) {
            compose_groups<V, false>(tany[buf], tot[buf], tab, 0, ng, spw, cols, col, za, z);
            const float la = live ? a[m] : 0.f;
#pragma unroll
            for (int v = 0; v < V; ++v) {
                const float lb = live ? reduce_angle(b[u * V + v]) : 0.f;
                const Anchor an = anchor_next(ash[col * V + v], za, z[v], la, lb, L);
                ash[col * V + v] = an;
                csh[buf ^ 1][col * V + v] = anchor_state(an, la, lb);
            }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) s[v] = ex[v];
        // replay the lane's steps from the state entering it, storing each
        if (!CKPT) {
            float* __restrict__ dst = sr + (size_t)t0 * mc2;
#pragma unroll
            for (int e = 0; e < E; e += 4) {
                const F4 f = xsh[e / 4 * NT + tid];
                xs[e] = f.x;
                xs[e + 1] = f.y;
                xs[e + 2] = f.z;
                xs[e + 3] = f.w;
            }
#pragma unroll
            for (int e = 0; e < E; ++e) {
#pragma unroll
                for (int v = 0; v < V; ++v)
                    s[v] = (rs >> e & 1u) ? cx(xs[e]) : cfma(gam[v], s[v], cx(xs[e]));
                if (e < n) {
                    store_units<V>(dst + e * mc2, 0, s);
                    if (t0 + e == T - 1) store_units<V>(sfr, 0, s);
                }
            }
        }
        buf ^= 1;
    }
}

// ------------------------------------------------------------------ backward

// Chunks last to first: recompute S_{t-1} from the chunk's checkpoint, run the reverse scan,
// write dx (ncb = 1) or its per-context-block partials dxp[(row, t, m) * ncb + cb] (ncb > 1),
// ds0, and part[row, channel] = conj(gamma) sum_{t : !start_t} conj(S_{t-1}) H_t (complex).
// GW: how grad_s is read (floats per load).
template <int V, int GW>
__device__ void ffm_bwd(const float* __restrict__ x, const float* __restrict__ a,
                        const float* __restrict__ b, const unsigned char* __restrict__ start,
                        const float* __restrict__ ck, const float* __restrict__ gs,
                        const float* __restrict__ gf, float* __restrict__ dx,
                        float* __restrict__ ds0, float* __restrict__ part, const Lay P) {
    __shared__ Cx tab[MAX_TAB];
    __shared__ Cx ftot[NT * V], rtot[NT * V];
    __shared__ int fany[NT], rany[NT];
    __shared__ float red[E * NT];
    __shared__ Cx hsh[2][NT * V];  // H entering chunk k from above (k = K - 1 - kk), hsh[kk & 1]
    static_assert(E * NT >= 2 * V * NT, "red holds the final partials too");
    const long long g = (long long)linear_block();
    if (g >= (long long)P.rows * P.nblk) return;
    const int row = (int)(g / P.nblk), blk = (int)(g % P.nblk);
    const int mblk = blk / P.ncb, cb = blk % P.ncb;
    const int tid = threadIdx.x, cols = P.cols, col = tid % cols, j = tid / cols;
    const int spw = cols < 32 ? 32 / cols : 1, tl = NT / cols, ng = tl / spw;
    const int grp = j / spw, sig = j % spw;
    const int T = P.T, M = P.M, CU = P.C / V;
    const size_t MC = (size_t)M * P.C;
    int m, u;
    const bool live = column(P, CU, mblk, cb, col, m, u);
    const size_t q = (size_t)m * P.C + (size_t)u * V;
    const bool has_start = P.flags & HAS_START;
    // start_t, every t >= T counting as a start (nothing flows across the end)
    auto started = [&](int t) {
        return t >= T || (has_start && start[(size_t)row * T + t] != 0);
    };
    fill_powers<V>(tab, a, b, P, mblk, cb, spw, ng);
    __syncthreads();
    Cx gam[V], acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
        gam[v] = pw(tab, 0, cols, col, V, v);
        acc[v] = Cx::zero();
        if (j == 0) hsh[0][col * V + v] = Cx::zero();
    }
    // the anchored carry of H of each unit (thread j = 0 of its column), powers of
    // conj(gamma), in shared memory
    __shared__ Anchor ash[NT * V];
    if (j == 0) {
#pragma unroll
        for (int v = 0; v < V; ++v) ash[col * V + v] = anchor_at(Cx::zero());
    }
    // dx: the units of a memory channel in this block (cnt), summed by R lanes each
    const int nm = P.ncb == 1 ? P.mb : 1;
    const int cnt = P.ncb == 1 ? CU : min(P.cwu, CU - cb * P.cwu);
    int R = 1;
    while (R < 32 && R * E < (P.ncb == 1 ? CU : P.cwu)) R <<= 1;
    const int L = tl * E;
    for (int kk = 0; kk < P.K; ++kk) {
        const int k = P.K - 1 - kk;
        const int t0 = k * L + j * E;
        // Reverse scan first, then the forward recompute, so that the lane's S_{t-1} and G
        // are both held only in the replays (no scan or barrier in between): 128 registers.
        unsigned rs = 0;  // bit e: started(t0 + e)
#pragma unroll
        for (int e = 0; e < E; ++e)
            if (started(t0 + e)) rs |= 1u << e;
        // bit e: started(t0 + e + 1), H_t drops H_{t+1}
        const unsigned rr = (rs >> 1) | (started(t0 + E) ? 1u << (E - 1) : 0u);
        // ---- reverse scan for H: this lane's G, its map, lanes, then warp-groups
        Cx gv[E][V];
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int t = t0 + e;
            if (live && t < T) {
                load_caller<V, GW>(gs, ((size_t)row * T + t) * MC + q, gv[e]);
                if (t == T - 1 && (P.flags & HAS_GF)) {
#pragma unroll
                    for (int v = 0; v < V; ++v)
                        gv[e][v] = gv[e][v] + load_v<true>(gf, (size_t)row * MC + q + v);
                }
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) gv[e][v] = Cx::zero();
            }
        }
        Cx hl[V];
#pragma unroll
        for (int v = 0; v < V; ++v) hl[v] = Cx::zero();
#pragma unroll
        for (int e = E - 1; e >= 0; --e)
#pragma unroll
            for (int v = 0; v < V; ++v)
                hl[v] = (rr >> e & 1u) ? gv[e][v] : cfma(gam[v].conj(), hl[v], gv[e][v]);
        bool anyr = rr != 0, eanyr;
        Cx h[V];
        warp_scan<V, true>(tab, cols, col, spw, sig, anyr, hl, eanyr, h);
        if (sig == 0) {
            rany[grp * cols + col] = anyr;
#pragma unroll
            for (int v = 0; v < V; ++v) rtot[(grp * cols + col) * V + v] = hl[v];
        }
        __syncthreads();
        // H entering this warp-group from above (the groups after it composed, then the
        // chunk's carried H applied once), then this lane; and (thread j = 0) the H leaving
        // the chunk downwards (hsh is double-buffered: one reader phase per chunk, after the
        // barrier above)
        Cx c[V], z[V], w[V];
        bool za;
#pragma unroll
        for (int v = 0; v < V; ++v) c[v] = hsh[kk & 1][col * V + v];
        compose_groups<V, true>(rany, rtot, tab, grp + 1, ng, spw, cols, col, za, z);
        enter<V, true>(tab, ng - 1 - grp, spw, cols, col, za, z, c, w);
        if (j == 0) {
            compose_groups<V, true>(rany, rtot, tab, 0, ng, spw, cols, col, za, z);
            const float la = live ? a[m] : 0.f;
#pragma unroll
            for (int v = 0; v < V; ++v) {
                const float lb = live ? -reduce_angle(b[u * V + v]) : 0.f;
                const Anchor an = anchor_next(ash[col * V + v], za, z[v], la, lb, L);
                ash[col * V + v] = an;
                hsh[(kk & 1) ^ 1][col * V + v] = anchor_state(an, la, lb);
            }
        }
        const int above = spw - 1 - sig;  // lanes of the group after this one
#pragma unroll
        for (int v = 0; v < V; ++v)
            if (!eanyr)
                h[v] = above == 0 ? h[v] + w[v]
                                  : cfma(pw(tab, above, cols, col, V, v).conj(), w[v], h[v]);
        // ---- recompute S_{t-1} for this lane's steps: its x, map, lanes, warp-groups
        float xs[E];
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int t = t0 + e;
            xs[e] = live && t < T ? x[((size_t)row * T + t) * M + m] : 0.f;
        }
        Cx xl[V];
#pragma unroll
        for (int v = 0; v < V; ++v) xl[v] = Cx::zero();
#pragma unroll
        for (int e = 0; e < E; ++e)
#pragma unroll
            for (int v = 0; v < V; ++v)
                xl[v] = (rs >> e & 1u) ? cx(xs[e]) : cfma(gam[v], xl[v], cx(xs[e]));
        bool any = rs != 0, eany;
        Cx s[V];
        warp_scan<V, false>(tab, cols, col, spw, sig, any, xl, eany, s);
        if (sig == spw - 1) {
            fany[grp * cols + col] = any;
#pragma unroll
            for (int v = 0; v < V; ++v) ftot[(grp * cols + col) * V + v] = xl[v];
        }
        __syncthreads();
        if (live) {
            load_units<V>(ck, ((size_t)row * P.K + k) * MC + q, c);
        } else {
#pragma unroll
            for (int v = 0; v < V; ++v) c[v] = Cx::zero();
        }
        compose_groups<V, false>(fany, ftot, tab, 0, grp, spw, cols, col, za, z);
        enter<V, false>(tab, grp, spw, cols, col, za, z, c, w);
#pragma unroll
        for (int v = 0; v < V; ++v)
            if (!eany)
                s[v] = sig == 0 ? s[v] + w[v] : cfma(pw(tab, sig, cols, col, V, v), w[v], s[v]);
        // ---- replays: S_{t-1} forwards, then H backwards with dx, ds0 and dgamma
        Cx sprev[E][V];
#pragma unroll
        for (int e = 0; e < E; ++e)
#pragma unroll
            for (int v = 0; v < V; ++v) {
                sprev[e][v] = s[v];
                s[v] = (rs >> e & 1u) ? cx(xs[e]) : cfma(gam[v], s[v], cx(xs[e]));
            }
#pragma unroll
        for (int e = E - 1; e >= 0; --e) {
#pragma unroll
            for (int v = 0; v < V; ++v)
                h[v] = (rr >> e & 1u) ? gv[e][v] : cfma(gam[v].conj(), h[v], gv[e][v]);
            const int t = t0 + e;
            float d = 0.f;
            if (live && t < T) {
                const bool st = rs >> e & 1u;
#pragma unroll
                for (int v = 0; v < V; ++v) {
                    d += h[v].re;
                    if (!st) acc[v] = cfma(sprev[e][v].conj(), h[v], acc[v]);
                }
                if (t == 0) {
                    Cx d0[V];
#pragma unroll
                    for (int v = 0; v < V; ++v)
                        d0[v] = st ? Cx::zero() : gam[v].conj() * h[v];
                    store_units<V>(ds0, (size_t)row * MC + q, d0);
                }
            }
            red[e * NT + tid] = d;
        }
        __syncthreads();
        // ---- dx over this chunk's steps: item (step st, memory channel ml), ml fastest, R
        // lanes per item each summing every R-th unit, then a butterfly over the R lanes
        const int items = L * nm;
        for (int base = 0; base < items; base += NT / R) {
            const int i = base + tid / R, r = tid % R;
            const int ml = i % nm, st = i / nm;
            const int t = k * L + st, mm = mblk * P.mb + ml;
            const bool ok = i < items && t < T && mm < M;
            float sum = 0.f;
            if (ok) {
                const float* src = red + (st % E) * NT + (st / E) * cols + ml * P.cwu;
                for (int c = r; c < cnt; c += R) sum += src[c];
            }
            for (int o = R / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(FULL, sum, o, R);
            if (ok && r == 0) {
                const size_t di = ((size_t)row * T + t) * M + mm;
                if (P.ncb == 1) {
                    dx[di] = sum;
                } else {
                    dx[di * P.ncb + cb] = sum;
                }
            }
        }
    }
    // ---- this row's dlog partial: lanes summed in order
    __syncthreads();
#pragma unroll
    for (int v = 0; v < V; ++v) {
        red[2 * (tid * V + v)] = acc[v].re;
        red[2 * (tid * V + v) + 1] = acc[v].im;
    }
    __syncthreads();
    if (j == 0 && live) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
            Cx sum = Cx::zero();
            for (int jj = 0; jj < tl; ++jj) {
                const int i = 2 * ((jj * cols + col) * V + v);
                sum = sum + Cx{red[i], red[i + 1]};
            }
            const Cx d = gam[v].conj() * sum;
            part[2 * ((size_t)row * MC + q + v)] = d.re;
            part[2 * ((size_t)row * MC + q + v) + 1] = d.im;
        }
    }
}

}  // namespace

// ------------------------------------------------------------------ entry points

#define LINREC_FFM_LAY                                                                          \
    Lay P{rows, T, M, C, cols, mb, cwu, ncb, nblk, K, flags}
#define LINREC_FFM_LAY_ARGS                                                                     \
    int rows, int T, int M, int C, int cols, int mb, int cwu, int ncb, int nblk, int K,         \
        unsigned flags

#define LINREC_FFM_FWD(NAME, V, CKPT)                                                           \
    extern "C" __global__ void __launch_bounds__(NT, 4)                                          \
        NAME(const float* x, const float* a, const float* b, const float* s0,                   \
             const unsigned char* start, float* out, float* sf, LINREC_FFM_LAY_ARGS) {          \
        LINREC_FFM_LAY;                                                                         \
        ffm_fwd<V, CKPT>(x, a, b, s0, start, out, sf, P);                                       \
    }                                                                                           \
    LINREC_REGISTER(NAME)

LINREC_FFM_FWD(ffm_fwd_v1, 1, false)
LINREC_FFM_FWD(ffm_fwd_v2, 2, false)
LINREC_FFM_FWD(ffm_ckpt_v1, 1, true)
LINREC_FFM_FWD(ffm_ckpt_v2, 2, true)

#define LINREC_FFM_BWD(NAME, V, GW)                                                             \
    extern "C" __global__ void __launch_bounds__(NT, 2)                                         \
        NAME(const float* x, const float* a, const float* b, const unsigned char* start,        \
             const float* ck, const float* g, const float* gf, float* dx, float* ds0,           \
             float* part, LINREC_FFM_LAY_ARGS) {                                                \
        LINREC_FFM_LAY;                                                                         \
        ffm_bwd<V, GW>(x, a, b, start, ck, g, gf, dx, ds0, part, P);                            \
    }                                                                                           \
    LINREC_REGISTER(NAME)

LINREC_FFM_BWD(ffm_bwd_v1_g1, 1, 1)
LINREC_FFM_BWD(ffm_bwd_v1_g2, 1, 2)
LINREC_FFM_BWD(ffm_bwd_v2_g1, 2, 1)
LINREC_FFM_BWD(ffm_bwd_v2_g2, 2, 2)
LINREC_FFM_BWD(ffm_bwd_v2_g4, 2, 4)

// dx[i] = sum over cb (ascending) of dxp[i * ncb + cb], i < n.
extern "C" __global__ void ffm_dx_reduce(const float* __restrict__ dxp, float* __restrict__ dx,
                                         long long n, int ncb) {
    const long long i = (long long)linear_block() * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int c = 0; c < ncb; ++c) s += dxp[(size_t)i * ncb + c];
    dx[i] = s;
}
LINREC_REGISTER(ffm_dx_reduce)

// da[m] = sum_c Re(dlog[m][c]), db[c] = sum_m Im(dlog[m][c]) (dlog: [M, C] complex, already
// summed over rows), one thread per output, each sum in a fixed order.
extern "C" __global__ void ffm_params(const float* __restrict__ dlog, float* __restrict__ da,
                                      float* __restrict__ db, int M, int C) {
    const long long i = (long long)linear_block() * blockDim.x + threadIdx.x;
    if (i < M) {
        float s = 0.f;
        for (int c = 0; c < C; ++c) s += dlog[2 * ((size_t)i * C + c)];
        da[i] = s;
    } else if (i < (long long)M + C) {
        const int c = (int)(i - M);
        float s = 0.f;
        for (int m = 0; m < M; ++m) s += dlog[2 * ((size_t)m * C + c) + 1];
        db[c] = s;
    }
}
LINREC_REGISTER(ffm_params)
