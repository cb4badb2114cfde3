// docs/selective.md, selective scan (Mamba S6):
//   dt_t   = softplus ? softplus(delta_t + bias) : delta_t + bias
//   h_t[n] = (start_t ? 0 : exp(dt_t A[d][n]) h_{t-1}[n]) + dt_t Bm_t[n] u_t,    h_{-1} = h0
//   out_t  = (sum_n Cm_t[n] h_t[n] + Dskip[d] u_t) * (z ? silu(z_t) : 1)
// and its backward (du, ddelta, dA, dBm, dCm, dDskip, dz, ddelta_bias, dh0).
//
// Thread layout (sel_fwd / sel_ckpt / sel_bwd), organised like Mamba's selective_scan kernels
// but for the time-major [B, T, D] layout: one block of NT = 256 threads (8 warps) per (batch
// row b, block of cbk <= 8 consecutive channels d0 ..). Warp w owns channel d0 + w; lane l owns
// the E = 8 consecutive steps l*E .. l*E+7 of every chunk of L = 256 steps, so the 32 lanes
// of a warp cover one chunk. The block walks the chunks in time order (the backward: in reverse),
// carrying per (channel, state) the state (the adjoint in the backward) in shared memory.
// Within a chunk, for each state n in turn, each lane composes its 8 steps into one affine map
// (h -> pa h + pb), the warp scans those maps with 5 shuffle rounds (no __syncthreads: the scan
// is inside one warp), applies the carried state and replays its 8 steps. Sums over n (y; du
// and ddelta in the backward) accumulate in each lane's registers, in n order.
//
// Memory: each chunk's [L, cbk] tiles of u, delta (z, dout, ...) are read row by row, a row
// being the block's 8 consecutive channels of one step (one 16-byte vector per thread for
// 16-bit storage, two for f32, when D and the addresses allow; else scalars), and transposed
// through shared memory into the lanes' steps; outputs go back the same way. Input-dependent
// Bm/Cm [B, T, G, N] are staged per chunk in runs of up to 16 states (8 in the backward) for
// every group the block touches, and shared by all its warps. Shared-memory tiles are
// lane-major with one padding word per lane (a lane's steps at l*(E+1) + i): the lanes' reads
// in the hot loop hit 32 different banks.
//
// The forward's checkpoint mode (sel_ckpt, or sel_fwd with CKPT: the backward's first pass)
// writes the state entering every chunk (ck [B, K, D, N]) and, when z is present, the
// pre-gate output y (ysc [B, T, D] f32) instead of out. The backward recomputes each chunk's
// states from its checkpoint (never storing per-step states), runs the adjoint scan backwards
// through the chunk (shuffles down the warp), and forms every gradient. No float atomics:
// dA (and fixed dBm/dCm) per (channel, state) are warp butterflies added to shared
// accumulators in chunk order; input-dependent dBm/dCm are summed over the block's channels of
// each group in shared memory in channel order, and written directly when a block holds whole
// groups, else as per-block partials that sel_dbc_reduce adds in block order; per-row partials
// are summed over rows by reduce_rows_f32. Results are bitwise reproducible.
#include "common.cuh"

#ifdef LINREC_EMU
#define SEL_SMEM() (reinterpret_cast<float*>(linrec_emu_dyn_smem()))
#else
extern __shared__ __align__(16) float sel_smem_[];
#define SEL_SMEM() (sel_smem_)
#endif

namespace {

constexpr int NW = 8;                  // warps per block = channels per block (at most)
constexpr int NT = NW * 32;            // threads per block
constexpr int E = 8;                   // steps per lane per chunk
constexpr int L = 32 * E;              // steps per chunk
constexpr int LP = 32 * (E + 1) + 4;   // one lane-major row of a tile (floats)
constexpr int NBF = 16;                // states staged at once (forward)
constexpr int NBB = 8;                 // states staged at once (backward)
constexpr unsigned FULL = 0xffffffffu;
constexpr float LOG2E = 1.4426950408889634f;
static_assert(L == NT, "the backward's channel sums give one step to each thread");

constexpr unsigned HAS_DSKIP = 1, HAS_Z = 2, HAS_BIAS = 4, HAS_H0 = 8, HAS_START = 16,
                   SOFTPLUS = 32, CKPT = 64, VEC = 128, HAS_GF = 256;

template <bool F, typename A, typename B> struct Pick { using T = A; };
template <typename A, typename B> struct Pick<false, A, B> { using T = B; };
template <int W> struct Wd { static constexpr int value = W; };

// position of step tl (0 .. L-1) of a chunk in a lane-major tile row
__device__ __forceinline__ int lpos(int tl) { return tl / E * (E + 1) + tl % E; }

// A compiler-only memory barrier: keeps the hot loops from holding tile values loaded before it
// in registers (reloading from shared memory is cheaper than the occupancy they would cost).
__device__ __forceinline__ void reload_barrier() { asm volatile("" ::: "memory"); }

__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// ------------------------------------------------------------------ 16-byte row accesses
__device__ __forceinline__ uint4 ld16(const void* p) {
#ifdef LINREC_EMU
    uint4 v;
    std::memcpy(&v, p, 16);
    return v;
#else
    return *reinterpret_cast<const uint4*>(p);
#endif
}
__device__ __forceinline__ void st16(void* p, uint4 v) {
#ifdef LINREC_EMU
    std::memcpy(p, &v, 16);
#else
    *reinterpret_cast<uint4*>(p) = v;
#endif
}
__device__ __forceinline__ unsigned short lo16(unsigned x) { return (unsigned short)(x & 0xffffu); }
__device__ __forceinline__ unsigned short hi16(unsigned x) { return (unsigned short)(x >> 16); }

template <typename S> __device__ __forceinline__ S of_bits(unsigned short b) { S s; s.bits = b; return s; }

// W consecutive elements at p (W = 1, or one 16-byte vector: 4 floats or 8 16-bit values)
template <int W, typename S> __device__ __forceinline__ void ldw(const S* p, float (&v)[W]) {
    if constexpr (W == 1) {
        v[0] = to_f32(p[0]);
    } else if constexpr (sizeof(S) == 4) {
        static_assert(W == 4, "f32 vectors hold 4");
        const uint4 x = ld16(p);
        v[0] = __uint_as_float(x.x); v[1] = __uint_as_float(x.y);
        v[2] = __uint_as_float(x.z); v[3] = __uint_as_float(x.w);
    } else {
        static_assert(W == 8, "16-bit vectors hold 8");
        const uint4 x = ld16(p);
        const unsigned w4[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            v[2 * q] = to_f32(of_bits<S>(lo16(w4[q])));
            v[2 * q + 1] = to_f32(of_bits<S>(hi16(w4[q])));
        }
    }
}
template <int W, typename S> __device__ __forceinline__ void stw(S* p, const float (&v)[W]) {
    if constexpr (W == 1) {
        p[0] = from_f32<S>(v[0]);
    } else if constexpr (sizeof(S) == 4) {
        static_assert(W == 4, "f32 vectors hold 4");
        st16(p, make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                           __float_as_uint(v[3])));
    } else {
        static_assert(W == 8, "16-bit vectors hold 8");
        unsigned w4[4];
#pragma unroll
        for (int q = 0; q < 4; ++q)
            w4[q] = (unsigned)from_f32<S>(v[2 * q]).bits |
                    ((unsigned)from_f32<S>(v[2 * q + 1]).bits << 16);
        st16(p, make_uint4(w4[0], w4[1], w4[2], w4[3]));
    }
}
// W floats (the f32 scratch of pre-gate outputs, W = 1, 4 or 8)
template <int W> __device__ __forceinline__ void ldwf(const float* p, float (&v)[W]) {
    if constexpr (W == 1) {
        v[0] = p[0];
    } else {
#pragma unroll
        for (int q = 0; q < W / 4; ++q) {
            const uint4 x = ld16(p + 4 * q);
            v[4 * q] = __uint_as_float(x.x); v[4 * q + 1] = __uint_as_float(x.y);
            v[4 * q + 2] = __uint_as_float(x.z); v[4 * q + 3] = __uint_as_float(x.w);
        }
    }
}
template <int W> __device__ __forceinline__ void stwf(float* p, const float (&v)[W]) {
    if constexpr (W == 1) {
        p[0] = v[0];
    } else {
#pragma unroll
        for (int q = 0; q < W / 4; ++q)
            st16(p + 4 * q, make_uint4(__float_as_uint(v[4 * q]), __float_as_uint(v[4 * q + 1]),
                                       __float_as_uint(v[4 * q + 2]), __float_as_uint(v[4 * q + 3])));
    }
}

// Calls f(Wd<W>, r, c0) for every (step r < L of the chunk, run of W channels from c0) of the
// block's [L, NW] tile, spread over the block's threads: 16-byte vectors (W = 16 / sizeof(S))
// when `vec` (the launcher checked every sequence tensor's alignment, D % W == 0 and cbk = 8),
// else single elements.
template <typename S, typename F> __device__ __forceinline__ void for_rows(bool vec, int tid, F&& f) {
    if (vec) {
        constexpr int W = 16 / (int)sizeof(S), VPR = NW / W;
#pragma unroll 1
        for (int j = tid; j < L * VPR; j += NT) f(Wd<W>{}, j / VPR, (j % VPR) * W);
    } else {
#pragma unroll 1
        for (int j = tid; j < L * NW; j += NT) f(Wd<1>{}, j / NW, j % NW);
    }
}

// Copy steps t0 .. t0+L of channels d0 .. d0+nch of a [B, T, D] tensor into tile rows
// [0, NW) (f32, lane-major; zeros past T and past nch). All threads call this.
template <typename S>
__device__ __forceinline__ void stage_tile(float* tile, const S* __restrict__ src, bool vec, int b,
                                           int t0, int T, int D, int d0, int nch) {
    for_rows<S>(vec, threadIdx.x, [&](auto wd, int r, int c0) {
        constexpr int W = decltype(wd)::value;
        const int t = t0 + r;
        float v[W];
        if (t < T && c0 < nch) {
            ldw<W>(src + ((size_t)b * T + t) * D + d0 + c0, v);
        } else {
#pragma unroll
            for (int q = 0; q < W; ++q) v[q] = 0.f;
        }
#pragma unroll
        for (int q = 0; q < W; ++q) tile[(c0 + q) * LP + lpos(r)] = v[q];
    });
}

// dt = softplus(delta + bias) (or delta + bias) of the chunk's steps into tile rows [0, NW)
// (0 past T and past nch: those steps become identity maps), and with `fac` (the backward
// under softplus) d(dt)/d(delta) = sigmoid(delta + bias) into fac. All threads call this.
template <typename S>
__device__ __forceinline__ void stage_dt(float* tile, float* fac, const S* __restrict__ delta,
                                         const float* __restrict__ bias, unsigned flags, bool vec,
                                         int b, int t0, int T, int D, int d0, int nch) {
    for_rows<S>(vec, threadIdx.x, [&](auto wd, int r, int c0) {
        constexpr int W = decltype(wd)::value;
        const int t = t0 + r;
        const bool in = t < T && c0 < nch;
        float v[W];
        if (in) ldw<W>(delta + ((size_t)b * T + t) * D + d0 + c0, v);
#pragma unroll
        for (int q = 0; q < W; ++q) {
            float dt = 0.f, f = 0.f;
            if (in) {
                float x = v[q];
                if (flags & HAS_BIAS) x += bias[d0 + c0 + q];
                dt = x;
                f = 1.f;
                if (flags & SOFTPLUS) {
                    dt = softplus(x);
                    f = x > 20.f ? 1.f : sigmoid(x);
                }
            }
            tile[(c0 + q) * LP + lpos(r)] = dt;
            if (fac) fac[(c0 + q) * LP + lpos(r)] = f;
        }
    });
}

// ------------------------------------------------------------------ warp scans and sums
// Inclusive scan of affine maps x -> pa x + pb over the lanes, lane 0 first (the later map
// applied last). rl: the lanes whose steps hold a reset. A map that contains a reset ignores
// its input (a select, not pa = 0: NaN * 0 would be NaN), so it is not composed with the
// maps before it: in round o a lane's map covers lanes lane-o+1 .. lane.
__device__ __forceinline__ void scan_up(float& pa, float& pb, int lane, unsigned rl) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float qa = __shfl_up_sync(FULL, pa, o), qb = __shfl_up_sync(FULL, pb, o);
        if (lane >= o && ((rl >> (lane - o + 1)) & ((1u << o) - 1)) == 0) {
            pb = fmaf(pa, qb, pb);
            pa *= qa;
        }
    }
}
// The same from lane 31 down (the adjoint runs backwards in time; a lane's map covers lanes
// lane .. lane+o-1 in round o).
__device__ __forceinline__ void scan_down(float& pa, float& pb, int lane, unsigned rl) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float qa = __shfl_down_sync(FULL, pa, o), qb = __shfl_down_sync(FULL, pb, o);
        if (lane + o < 32 && ((rl >> lane) & ((1u << o) - 1)) == 0) {
            pb = fmaf(pa, qb, pb);
            pa *= qa;
        }
    }
}
// The lanes of the warp whose steps hold a reset (rm: this lane's reset bits), as a mask;
// every lane of the warp calls this.
__device__ __forceinline__ unsigned reset_lanes(unsigned rm, int lane) {
    unsigned m = rm != 0 ? 1u << lane : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m |= __shfl_xor_sync(FULL, m, o);
    return m;
}
// Sum over the warp by a butterfly (every lane gets the same value: a fixed order).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// What one block owns.
struct Blk {
    int b, kb, d0, nch, w, lane, d, g0, ngb, slot, nbs;
    bool live;
};

template <bool FIXED>
__device__ __forceinline__ Blk block_of(long long g, int nbk, int D, int dg, int cbk, int nbt) {
    Blk k;
    k.b = (int)(g / nbk);
    k.kb = (int)(g % nbk);
    k.d0 = k.kb * cbk;
    k.nch = min(cbk, D - k.d0);
    k.w = threadIdx.x >> 5;
    k.lane = threadIdx.x & 31;
    k.d = k.d0 + k.w;
    k.live = k.w < k.nch;
    if (FIXED) {
        k.g0 = 0;
        k.ngb = 1;
        k.slot = 0;
    } else {
        k.g0 = k.d0 / dg;
        k.ngb = (k.d0 + k.nch - 1) / dg - k.g0 + 1;
        k.slot = k.live ? k.d / dg - k.g0 : 0;
    }
    k.nbs = max(1, nbt / k.ngb);
    return k;
}

// Stage Bm and Cm of steps t0 .. t0+L, states n0 .. n0+nb, for every group the block touches
// into bc: [slot][B or C][nbs][LP], lane-major (steps past T are zeros). All threads call this.
template <typename S>
__device__ __forceinline__ void stage_bc(float* bc, const S* __restrict__ bm,
                                         const S* __restrict__ cm, const Blk& k, int t0, int T,
                                         int G, int N, int n0, int nb) {
    const int per = L * nb;
#pragma unroll 1
    for (int j = threadIdx.x; j < k.ngb * per; j += NT) {
        const int slot = j / per, r = j % per, tl = r / nb, nn = r % nb, t = t0 + tl;
        float vb = 0.f, vc = 0.f;
        if (t < T) {
            const size_t i = (((size_t)k.b * T + t) * G + k.g0 + slot) * N + n0 + nn;
            vb = to_f32(bm[i]);
            vc = to_f32(cm[i]);
        }
        float* base = bc + (size_t)slot * 2 * k.nbs * LP + nn * LP + lpos(tl);
        base[0] = vb;
        base[k.nbs * LP] = vc;
    }
}

// Reset flags of the chunk's steps into fl[0 .. L) (0 past T).
__device__ __forceinline__ void stage_flags(unsigned char* fl, const unsigned char* __restrict__ start,
                                            unsigned flags, int b, int t0, int T) {
    const int tl = threadIdx.x;
    if (tl < L) {
        const int t = t0 + tl;
        fl[tl] = (flags & HAS_START) && t < T && start[(size_t)b * T + t] != 0;
    }
}

// ------------------------------------------------------------------ forward
// NEEDY: form y (the forward, and the checkpoint pass when z is present); without it the
// chunk's maps are only composed to carry the state (the checkpoint pass without z).
template <typename S, bool FIXED, bool NEEDY>
__device__ void sel_fwd(const S* __restrict__ u, const S* __restrict__ delta,
                        const float* __restrict__ A,
                        const typename Pick<FIXED, float, S>::T* __restrict__ bm,
                        const typename Pick<FIXED, float, S>::T* __restrict__ cm,
                        const float* __restrict__ dskip, const S* __restrict__ z,
                        const float* __restrict__ bias, const float* __restrict__ h0,
                        const unsigned char* __restrict__ start, S* __restrict__ out,
                        float* __restrict__ hf, float* __restrict__ ck, float* __restrict__ ysc,
                        int rows, int T, int D, int N, int G, int dg, int cbk, int nbk,
                        unsigned flags) {
    const long long g = (long long)linear_block();
    if (g >= (long long)rows * nbk) return;
    const Blk k = block_of<FIXED>(g, nbk, D, dg, cbk, NBF);
    const int lane = k.lane, w = k.w, d = k.d, b = k.b, tid = threadIdx.x;
    const bool vec = flags & VEC, ckpt = flags & CKPT;
    // shared memory: [U: 2 * NBF * LP floats: the u / dt tiles, the Bm / Cm tiles, the y tile]
    // [carry: NW * N] [flags: L bytes]
    float* sm = SEL_SMEM();
    float* tile = sm;
    float* carry = sm + 2 * NBF * LP;
    unsigned char* fl = reinterpret_cast<unsigned char*>(carry + NW * N);

    if (k.live)
        for (int n = lane; n < N; n += 32)
            carry[w * N + n] = (flags & HAS_H0) ? h0[((size_t)b * D + d) * N + n] : 0.f;
    const float dsk = (k.live && (flags & HAS_DSKIP)) ? dskip[d] : 0.f;
    const int K = (T + L - 1) / L;
    for (int kc = 0; kc < K; ++kc) {
        const int t0 = kc * L;
        __syncthreads();  // the previous chunk's tiles are consumed; carries are visible
        if (ckpt && k.live)
            for (int n = lane; n < N; n += 32)
                ck[(((size_t)b * K + kc) * D + d) * N + n] = carry[w * N + n];
        // delta and u of the chunk, row by row, into tile rows [0, NW) and [NW, 2 NW)
        stage_dt<S>(tile, nullptr, delta, bias, flags, vec, b, t0, T, D, k.d0, k.nch);
        stage_tile<S>(tile + NW * LP, u, vec, b, t0, T, D, k.d0, k.nch);
        stage_flags(fl, start, flags, b, t0, T);
        __syncthreads();
        float dt[E], dtu[E], y[E];
        unsigned rm = 0;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            const int p = w * LP + lane * (E + 1) + i;
            const float uu = tile[NW * LP + p];
            dt[i] = tile[p];
            dtu[i] = dt[i] * uu;
            y[i] = dsk * uu;
            rm |= (unsigned)fl[lane * E + i] << i;
        }
        // a reset replaces the carried state (selects below, never a multiply by 0)
        const unsigned rl = reset_lanes(rm, lane);
        const int live_e = T - t0 - lane * E;  // this lane's steps before T (may be <= 0)
        const bool cut = (rl & ((2u << lane) - 1)) != 0;  // a reset in lanes 0 .. lane
#pragma unroll 1
        for (int n0 = 0; n0 < N; n0 += k.nbs) {
            const int nb = min(k.nbs, N - n0);
            if (!FIXED) {
                __syncthreads();  // the tiles' previous contents are consumed
                stage_bc<S>(tile, (const S*)bm, (const S*)cm, k, t0, T, G, N, n0, nb);
                __syncthreads();
            }
            if (!k.live) continue;
            const float* tb = tile + (size_t)k.slot * 2 * k.nbs * LP + lane * (E + 1);
#pragma unroll 1
            for (int nn = 0; nn < nb; ++nn) {
                const int n = n0 + nn;
                const float a2 = A[(size_t)d * N + n] * LOG2E;
                float bfix = 0.f, cfix = 0.f;
                if constexpr (FIXED) {
                    bfix = bm[(size_t)d * N + n];
                    cfix = cm[(size_t)d * N + n];
                }
                const float c_in = carry[w * N + n];
                float a[E], bb[E], pa = 1.f, pb = 0.f;
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    const float bv = FIXED ? bfix : tb[nn * LP + i];
                    // steps past T are identities (dt = 0 there, but 0 * A is NaN for
                    // a non-finite A)
                    a[i] = i < live_e ? exp2f(dt[i] * a2) : 1.f;
                    if (rm & (1u << i)) a[i] = 0.f;
                    bb[i] = dtu[i] * bv;
                    pb = (rm & (1u << i)) ? bb[i] : fmaf(a[i], pb, bb[i]);
                    pa *= a[i];
                }
                scan_up(pa, pb, lane, rl);
                // the state after this lane's steps
                const float hend = cut ? pb : fmaf(pa, c_in, pb);
                if constexpr (NEEDY) {
                    float h = __shfl_up_sync(FULL, hend, 1);
                    if (lane == 0) h = c_in;
#pragma unroll
                    for (int i = 0; i < E; ++i) {
                        const float cv = FIXED ? cfix : tb[(k.nbs + nn) * LP + i];
                        h = (rm & (1u << i)) ? bb[i] : fmaf(a[i], h, bb[i]);
                        y[i] = fmaf(cv, h, y[i]);
                    }
                }
                __syncwarp();
                if (lane == 31) carry[w * N + n] = hend;
            }
        }
        if constexpr (NEEDY) {
            __syncthreads();  // the Bm / Cm tiles are consumed
            if (k.live)
#pragma unroll
                for (int i = 0; i < E; ++i) tile[w * LP + lane * (E + 1) + i] = y[i];
            __syncthreads();
            for_rows<S>(vec, tid, [&](auto wd, int r, int c0) {
                constexpr int W = decltype(wd)::value;
                const int t = t0 + r;
                if (t >= T || c0 >= k.nch) return;
                const size_t i = ((size_t)b * T + t) * D + k.d0 + c0;
                float yy[W];
#pragma unroll
                for (int q = 0; q < W; ++q) yy[q] = tile[(c0 + q) * LP + lpos(r)];
                if (ckpt) {
                    stwf<W>(ysc + i, yy);
                    return;
                }
                if (flags & HAS_Z) {
                    float zz[W];
                    ldw<W>(z + i, zz);
#pragma unroll
                    for (int q = 0; q < W; ++q) yy[q] *= zz[q] * sigmoid(zz[q]);
                }
                stw<W>(out + i, yy);
            });
        }
    }
    __syncwarp();
    if (!ckpt && k.live)
        for (int n = lane; n < N; n += 32) hf[((size_t)b * D + d) * N + n] = carry[w * N + n];
}

// ------------------------------------------------------------------ backward
// One call handles rows b0 .. b0+rows and chunks k_hi-1 down to k_lo (the launcher splits a
// problem whose dBm / dCm partials would not fit its scratch). Carried between calls, in the
// output buffers themselves: the adjoint (dh0; grad_final or 0 before the first call) and the
// per-row partials of dA, dDskip, dbias (and fixed dBm, dCm; 0 before the first call).
// part: input-dependent dBm / dCm partials [rows, steps of the call, nbk, N] each (f32), when
// a group spans several blocks (bpg > 1); else dbm / dcm are written directly.
template <typename S, bool FIXED>
__device__ void sel_bwd(const S* __restrict__ u, const S* __restrict__ delta,
                        const float* __restrict__ A,
                        const typename Pick<FIXED, float, S>::T* __restrict__ bm,
                        const typename Pick<FIXED, float, S>::T* __restrict__ cm,
                        const float* __restrict__ dskip, const S* __restrict__ z,
                        const float* __restrict__ bias, const unsigned char* __restrict__ start,
                        const S* __restrict__ dout, const float* __restrict__ gf,
                        const float* __restrict__ ck,
                        const float* __restrict__ ysc, S* __restrict__ du, S* __restrict__ ddelta,
                        S* __restrict__ dz, S* __restrict__ dbm, S* __restrict__ dcm,
                        float* __restrict__ part, float* __restrict__ dh0,
                        float* __restrict__ pa_, float* __restrict__ pbf, float* __restrict__ pcf,
                        float* __restrict__ pds, float* __restrict__ pbias, int b0, int rows,
                        int k_lo, int k_hi, int T, int D, int N, int G, int dg, int cbk, int nbk,
                        int bpg, unsigned flags) {
    const long long g = (long long)linear_block();
    if (g >= (long long)rows * nbk) return;
    Blk k = block_of<FIXED>(g, nbk, D, dg, cbk, NBB);
    const int br = k.b;  // row within this call
    k.b += b0;
    const int lane = k.lane, w = k.w, d = k.d, b = k.b, tid = threadIdx.x;
    const bool vec = flags & VEC;
    const int K = (T + L - 1) / L;
    const int t_lo = k_lo * L, tlen = min(k_hi * L, T) - t_lo;
    // shared memory: [U: 2 * NW * LP: the dt / dy tiles, the Bm / Cm tiles, the du / ddelta
    // tiles] [UT: NW * LP: the u tile, FT: NW * LP: d(dt)/d(delta), both kept through the
    // chunk] [R: 2 * NW * LP: per-channel
    // dBm / dCm terms of one state, or (FIXED) the dBm / dCm accumulators, 2 * NW * N]
    // [adj: NW * N] [accA: NW * N] [flags: L bytes]
    float* sm = SEL_SMEM();
    float* tile = sm;
    float* utile = sm + 2 * NW * LP;
    float* ftile = utile + NW * LP;
    float* red = ftile + NW * LP;
    float* adj = red + (FIXED ? 2 * NW * N : 2 * NW * LP);
    float* accA = adj + NW * N;
    unsigned char* fl = reinterpret_cast<unsigned char*>(accA + NW * N);
    float* accB = red;
    float* accC = red + NW * N;

    // the first call (the last chunks) starts from grad_final and zero sums; later ones from
    // what the previous call left
    const bool first = k_hi == K;
    if (k.live)
        for (int n = lane; n < N; n += 32) {
            const size_t i = ((size_t)b * D + d) * N + n;
            adj[w * N + n] = first ? ((flags & HAS_GF) ? gf[i] : 0.f) : dh0[i];
            accA[w * N + n] = first ? 0.f : pa_[i];
            if (FIXED) {
                accB[w * N + n] = first ? 0.f : pbf[i];
                accC[w * N + n] = first ? 0.f : pcf[i];
            }
        }
    const float dsk = (k.live && (flags & HAS_DSKIP)) ? dskip[d] : 0.f;
    float sum_dsk = 0.f, sum_dbias = 0.f;  // this lane's terms of dDskip and dbias

    for (int kc = k_hi - 1; kc >= k_lo; --kc) {
        const int t0 = kc * L;
        __syncthreads();
        // delta, dy (and dz, written here) and u of the chunk into tile rows [0, NW), [NW, 2 NW)
        // and the u tile
        stage_dt<S>(tile, (flags & SOFTPLUS) ? ftile : nullptr, delta, bias, flags, vec, b, t0, T, D,
                    k.d0, k.nch);
        stage_tile<S>(utile, u, vec, b, t0, T, D, k.d0, k.nch);
        if (flags & HAS_Z) {
            for_rows<S>(vec, tid, [&](auto wd, int r, int c0) {
                constexpr int W = decltype(wd)::value;
                const int t = t0 + r;
                const bool in = t < T && c0 < k.nch;
                const size_t i = ((size_t)b * T + t) * D + k.d0 + c0;
                float go[W], zz[W], yy[W];
                if (in) {
                    ldw<W>(dout + i, go);
                    ldw<W>(z + i, zz);
                    ldwf<W>(ysc + i, yy);
                }
#pragma unroll
                for (int q = 0; q < W; ++q) {
                    float dy = 0.f;
                    if (in) {
                        const float sg = sigmoid(zz[q]);
                        dy = go[q] * zz[q] * sg;
                        zz[q] = go[q] * yy[q] * sg * (1.f + zz[q] * (1.f - sg));  // dz
                    }
                    tile[(NW + c0 + q) * LP + lpos(r)] = dy;
                }
                if (in) stw<W>(dz + i, zz);
            });
        } else {
            stage_tile<S>(tile + NW * LP, dout, vec, b, t0, T, D, k.d0, k.nch);
        }
        stage_flags(fl, start, flags, b, t0, T);
        __syncthreads();
        float dt[E], dtu[E], dy[E], sbh[E], sah[E];
        unsigned rm = 0;
#pragma unroll
        for (int i = 0; i < E; ++i) {
            const int p = w * LP + lane * (E + 1) + i;
            const float uu = utile[p];
            dt[i] = tile[p];  // 0 past T, as u and dy: identity maps, no terms
            dy[i] = tile[NW * LP + p];
            dtu[i] = dt[i] * uu;
            sbh[i] = 0.f;
            sah[i] = 0.f;
            sum_dsk = fmaf(dy[i], uu, sum_dsk);
            rm |= (unsigned)fl[lane * E + i] << i;
        }
        // across a reset nothing flows either way (selects below, never a multiply by 0)
        const unsigned rl = reset_lanes(rm, lane);
        const int live_e = T - t0 - lane * E;  // this lane's steps before T (may be <= 0)
        const bool cut_up = (rl & ((2u << lane) - 1)) != 0;  // a reset in lanes 0 .. lane
        const bool cut_down = (rl >> lane) != 0;              // a reset in lanes lane .. 31
#pragma unroll 1
        for (int n0 = 0; n0 < N; n0 += k.nbs) {
            const int nb = min(k.nbs, N - n0);
            if (!FIXED) {
                __syncthreads();
                stage_bc<S>(tile, (const S*)bm, (const S*)cm, k, t0, T, G, N, n0, nb);
                __syncthreads();
            }
            const float* tb = tile + (size_t)k.slot * 2 * k.nbs * LP + lane * (E + 1);
#pragma unroll 1
            for (int nn = 0; nn < nb; ++nn) {
                const int n = n0 + nn;
                if (k.live) {
                    const float an = A[(size_t)d * N + n], a2 = an * LOG2E;
                    float bfix = 0.f, cfix = 0.f;
                    if constexpr (FIXED) {
                        bfix = bm[(size_t)d * N + n];
                        cfix = cm[(size_t)d * N + n];
                    }
                    const float h_in0 = ck[(((size_t)b * K + kc) * D + d) * N + n];
                    const float x_in0 = adj[w * N + n];
                    // the chunk's states, recomputed from its checkpoint
                    float a[E], hs[E], hin;
                    {
                        float bb[E], pa = 1.f, pb = 0.f;
#pragma unroll
                        for (int i = 0; i < E; ++i) {
                            const float bv = FIXED ? bfix : tb[nn * LP + i];
                            a[i] = i < live_e ? exp2f(dt[i] * a2) : 1.f;
                            if (rm & (1u << i)) a[i] = 0.f;
                            bb[i] = dtu[i] * bv;
                            pb = (rm & (1u << i)) ? bb[i] : fmaf(a[i], pb, bb[i]);
                            pa *= a[i];
                        }
                        scan_up(pa, pb, lane, rl);
                        const float hend = cut_up ? pb : fmaf(pa, h_in0, pb);
                        hin = __shfl_up_sync(FULL, hend, 1);
                        if (lane == 0) hin = h_in0;
                        float h = hin;
#pragma unroll
                        for (int i = 0; i < E; ++i) {
                            h = (rm & (1u << i)) ? bb[i] : fmaf(a[i], h, bb[i]);
                            hs[i] = h;
                        }
                    }
                    reload_barrier();
                    // the adjoint: X_t = a_t H_t carried to step t-1, H_t = dy_t Cm_t + X_{t+1}
                    float ra = 1.f, rb = 0.f;
#pragma unroll
                    for (int i = E - 1; i >= 0; --i) {
                        const float cv = FIXED ? cfix : tb[(k.nbs + nn) * LP + i];
                        rb = (rm & (1u << i)) ? 0.f : a[i] * fmaf(dy[i], cv, rb);
                        ra *= a[i];
                    }
                    scan_down(ra, rb, lane, rl);
                    // X leaving this lane's first step
                    const float xend = cut_down ? rb : fmaf(ra, x_in0, rb);
                    float x = __shfl_down_sync(FULL, xend, 1);
                    if (lane == 31) x = x_in0;
                    reload_barrier();
                    float sa = 0.f, sb = 0.f, sc = 0.f;
#pragma unroll
                    for (int i = E - 1; i >= 0; --i) {
                        const float bv = FIXED ? bfix : tb[nn * LP + i];
                        const float cv = FIXED ? cfix : tb[(k.nbs + nn) * LP + i];
                        const float hh = fmaf(dy[i], cv, x);
                        const float hp = i > 0 ? hs[i - 1] : hin;
                        const bool r = rm & (1u << i);
                        const float wv = a[i] * hp * hh;
                        sbh[i] = fmaf(bv, hh, sbh[i]);
                        if (!r) {
                            sah[i] = fmaf(an, wv, sah[i]);
                            sa = fmaf(dt[i], wv, sa);
                        }
                        const float vb = dtu[i] * hh, vc = dy[i] * hs[i];
                        if (FIXED) {
                            sb += vb;
                            sc += vc;
                        } else {
                            red[w * LP + lane * (E + 1) + i] = vb;
                            red[(NW + w) * LP + lane * (E + 1) + i] = vc;
                        }
                        x = r ? 0.f : a[i] * hh;
                    }
                    sa = warp_sum(sa);
                    if (FIXED) {
                        sb = warp_sum(sb);
                        sc = warp_sum(sc);
                    }
                    __syncwarp();
                    if (lane == 0) {
                        adj[w * N + n] = xend;
                        accA[w * N + n] += sa;
                        if (FIXED) {
                            accB[w * N + n] += sb;
                            accC[w * N + n] += sc;
                        }
                    }
                }
                if (!FIXED) {
                    // sum the channels of each group (ascending) for every step; the sums take
                    // the place of state n's Bm / Cm in the tile (no warp reads them again)
                    __syncthreads();
                    const int tl = tid, p = lpos(tl);
#pragma unroll 1
                    for (int s = 0; s < k.ngb; ++s) {
                        const int c_lo = max(0, (k.g0 + s) * dg - k.d0);
                        const int c_hi = min(k.nch, (k.g0 + s + 1) * dg - k.d0);
                        float vb = 0.f, vc = 0.f;
#pragma unroll 1
                        for (int c = c_lo; c < c_hi; ++c) {
                            vb += red[c * LP + p];
                            vc += red[(NW + c) * LP + p];
                        }
                        float* base = tile + (size_t)s * 2 * k.nbs * LP + nn * LP + p;
                        base[0] = vb;
                        base[k.nbs * LP] = vc;
                    }
                    __syncthreads();
                }
            }
            if (!FIXED) {
                // this stage's dBm / dCm sums to memory: directly, or as the block's partials
                const int per = L * nb;
#pragma unroll 1
                for (int j = tid; j < k.ngb * per; j += NT) {
                    const int s = j / per, r = j % per, tl = r / nb, nn = r % nb, t = t0 + tl;
                    if (t >= T) continue;
                    const float* base = tile + (size_t)s * 2 * k.nbs * LP + nn * LP + lpos(tl);
                    const float vb = base[0], vc = base[k.nbs * LP];
                    if (bpg == 1) {
                        const size_t i = (((size_t)b * T + t) * G + k.g0 + s) * N + n0 + nn;
                        dbm[i] = from_f32<S>(vb);
                        dcm[i] = from_f32<S>(vc);
                    } else {
                        const size_t half = (size_t)rows * tlen * nbk * N;
                        const size_t i = (((size_t)br * tlen + (t - t_lo)) * nbk + k.kb) * N + n0 + nn;
                        part[i] = vb;
                        part[half + i] = vc;
                    }
                }
            }
        }
        __syncthreads();  // the Bm / Cm tiles are consumed
        if (k.live) {
#pragma unroll
            for (int i = 0; i < E; ++i) {
                const int p = w * LP + lane * (E + 1) + i;
                const float gdu = fmaf(dt[i], sbh[i], dsk * dy[i]);
                const float ddt = fmaf(utile[p], sbh[i], sah[i]);
                const float gdd = (flags & SOFTPLUS) ? ddt * ftile[p] : ddt;
                // (steps past T pass the adjoint through: their sah is not 0, but they are no
                // terms of anything)
                if (lane * E + i < T - t0) sum_dbias += gdd;
                tile[p] = gdu;
                tile[NW * LP + p] = gdd;
            }
        }
        __syncthreads();
        for_rows<S>(vec, tid, [&](auto wd, int r, int c0) {
            constexpr int W = decltype(wd)::value;
            const int t = t0 + r;
            if (t >= T || c0 >= k.nch) return;
            const size_t i = ((size_t)b * T + t) * D + k.d0 + c0;
            float v1[W], v2[W];
#pragma unroll
            for (int q = 0; q < W; ++q) {
                v1[q] = tile[(c0 + q) * LP + lpos(r)];
                v2[q] = tile[(NW + c0 + q) * LP + lpos(r)];
            }
            stw<W>(du + i, v1);
            stw<W>(ddelta + i, v2);
        });
    }
    // carried values back to memory (the adjoint is dh0 after the last call)
    sum_dsk = warp_sum(sum_dsk);
    sum_dbias = warp_sum(sum_dbias);
    __syncwarp();
    if (k.live) {
        for (int n = lane; n < N; n += 32) {
            const size_t i = ((size_t)b * D + d) * N + n;
            dh0[i] = adj[w * N + n];
            pa_[i] = accA[w * N + n];
            if (FIXED) {
                pbf[i] = accB[w * N + n];
                pcf[i] = accC[w * N + n];
            }
        }
        if (lane == 0) {
            const size_t i = (size_t)b * D + d;
            pds[i] = first ? sum_dsk : pds[i] + sum_dsk;
            pbias[i] = first ? sum_dbias : pbias[i] + sum_dbias;
        }
    }
}

}  // namespace

// Input-dependent dBm / dCm of groups spanning several blocks: adds the bpg partials of each
// group (blocks in ascending order) left by sel_bwd for rows b0 .. b0+rows and steps
// t_lo .. t_lo+tlen, and writes the storage type. One thread per output element.
template <typename S>
__device__ void sel_dbc_reduce(const float* __restrict__ part, S* __restrict__ dbm,
                               S* __restrict__ dcm, int b0, int rows, int t_lo, int tlen, int T,
                               int G, int N, int nbk, int bpg) {
    const long long i = (long long)linear_block() * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * tlen * G * N) return;
    const int n = (int)(i % N);
    long long r = i / N;
    const int gq = (int)(r % G);
    r /= G;
    const int tt = (int)(r % tlen), br = (int)(r / tlen);
    const size_t half = (size_t)rows * tlen * nbk * N;
    const size_t base = (((size_t)br * tlen + tt) * nbk + (size_t)gq * bpg) * N + n;
    float sb = 0.f, sc = 0.f;
    for (int j = 0; j < bpg; ++j) {
        sb += part[base + (size_t)j * N];
        sc += part[half + base + (size_t)j * N];
    }
    const size_t o = (((size_t)(b0 + br) * T + t_lo + tt) * G + gq) * N + n;
    dbm[o] = from_f32<S>(sb);
    dcm[o] = from_f32<S>(sc);
}

#ifndef FWD_MINB
#define FWD_MINB 2
#endif
#ifndef BWD_MINB
#define BWD_MINB 1
#endif

#define SEL_FWD(NAME, S, FIXED, NEEDY)                                                          \
    extern "C" __global__ void __launch_bounds__(NT, FWD_MINB) NAME(                                \
        const S* u, const S* delta, const float* A,                                             \
        const typename Pick<FIXED, float, S>::T* bm, const typename Pick<FIXED, float, S>::T* cm, \
        const float* dskip, const S* z, const float* bias, const float* h0,                     \
        const unsigned char* start, S* out, float* hf, float* ck, float* ysc, int rows, int T,  \
        int D, int N, int G, int dg, int cbk, int nbk, unsigned flags) {                        \
        sel_fwd<S, FIXED, NEEDY>(u, delta, A, bm, cm, dskip, z, bias, h0, start, out, hf, ck,    \
                                 ysc, rows, T, D, N, G, dg, cbk, nbk, flags);                   \
    }                                                                                           \
    LINREC_REGISTER(NAME)

#define SEL_BWD(NAME, S, FIXED)                                                                 \
    extern "C" __global__ void __launch_bounds__(NT, BWD_MINB) NAME(                                \
        const S* u, const S* delta, const float* A,                                             \
        const typename Pick<FIXED, float, S>::T* bm, const typename Pick<FIXED, float, S>::T* cm, \
        const float* dskip, const S* z, const float* bias, const unsigned char* start,          \
        const S* dout, const float* gf, const float* ck, const float* ysc, S* du, S* ddelta,    \
        S* dz, S* dbm,                                                                          \
        S* dcm, float* part, float* dh0, float* pa, float* pbf, float* pcf, float* pds,         \
        float* pbias, int b0, int rows, int k_lo, int k_hi, int T, int D, int N, int G, int dg, \
        int cbk, int nbk, int bpg, unsigned flags) {                                            \
        sel_bwd<S, FIXED>(u, delta, A, bm, cm, dskip, z, bias, start, dout, gf, ck, ysc, du,     \
                          ddelta,                                                               \
                          dz, dbm, dcm, part, dh0, pa, pbf, pcf, pds, pbias, b0, rows, k_lo,     \
                          k_hi, T, D, N, G, dg, cbk, nbk, bpg, flags);                          \
    }                                                                                           \
    LINREC_REGISTER(NAME)

#define SEL_ALL(SUF, S)                                                                         \
    SEL_FWD(sel_fwd_##SUF##_id, S, false, true)                                                 \
    SEL_FWD(sel_fwd_##SUF##_fixed, S, true, true)                                               \
    SEL_FWD(sel_ckpt_##SUF##_id, S, false, false)                                               \
    SEL_FWD(sel_ckpt_##SUF##_fixed, S, true, false)                                             \
    SEL_BWD(sel_bwd_##SUF##_id, S, false)                                                       \
    SEL_BWD(sel_bwd_##SUF##_fixed, S, true)                                                     \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        sel_dbc_reduce_##SUF(const float* part, S* dbm, S* dcm, int b0, int rows, int t_lo,     \
                             int tlen, int T, int G, int N, int nbk, int bpg) {                 \
        sel_dbc_reduce<S>(part, dbm, dcm, b0, rows, t_lo, tlen, T, G, N, nbk, bpg);             \
    }                                                                                           \
    LINREC_REGISTER(sel_dbc_reduce_##SUF)

SEL_ALL(f32, float)
SEL_ALL(f16, f16s)
SEL_ALL(bf16, bf16s)
