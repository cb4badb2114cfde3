//! include-only
// Shared by selective/forward.wgsl and selective/backward.wgsl (docs/selective.md): the input bindings
// 1..10 and their readers, softplus, and the per-chunk staging of dt and u.
//
// Storage: with F16, sequence tensors are array<f16> (`enable f16;` in the including file);
// with BF16 they are array<u32> holding two bf16 each (element j in word j / 2, low half
// first), widened here; written outputs are array<atomic<u32>> that start zeroed, and each
// element is OR-ed into its half word, so neighbours written by other workgroups never race
// (integer OR of disjoint bits: the result does not depend on the order). State and every
// accumulation are f32.
//
// Thread layout (both kernels): a workgroup of WG threads owns one batch row b and a block
// of CB channels d0 .. d0 + CB; thread li = n + NP * c owns state n of channel d0 + c (NP is N
// rounded up to a power of two, CB * NP <= WG; threads with c >= CB or n >= N idle). Each
// thread runs its (channel, state) recurrence sequentially in time, in chunks of L steps
// whose dt and u are staged in workgroup memory once per (step, channel).
//
// The per-step work of a chunk is written out step by step (no loop), and the other loops
// inside a chunk have small constant trip counts: lavapipe (gallivm) stops a loop nest after
// 65535 iterations in all, which cut long sequences short when every step was an iteration.

#include "selective/types.wgsl"

const WG: u32 = 256u;
const CBMAX: u32 = 32u;
// channels per workgroup and N rounded up to a power of two (set by the launcher)
override CB: u32 = 1u;
override NP: u32 = 1u;

@group(0) @binding(0) var<uniform> P: Params;
#ifdef PACKED
// PACKED (devices with WebGPU's default limits: 8 storage buffers, 16 KiB of workgroup
// memory): u, delta, Bm, Cm bound here; the small f32 / u32 arguments (A, Dskip, delta_bias,
// h0, start, and in the backward grad_final) packed by the launcher into one buffer SM
// (declared by each kernel), each at its element offset in P.
@group(0) @binding(1) var<storage, read> U: array<SEQ>;
@group(0) @binding(2) var<storage, read> DELTA: array<SEQ>;
#ifdef FIXED_BC
@group(0) @binding(3) var<storage, read> BM: array<f32>;
@group(0) @binding(4) var<storage, read> CM: array<f32>;
#else
@group(0) @binding(3) var<storage, read> BM: array<SEQ>;
@group(0) @binding(4) var<storage, read> CM: array<SEQ>;
#endif
#else
@group(0) @binding(1) var<storage, read> U: array<SEQ>;
@group(0) @binding(2) var<storage, read> DELTA: array<SEQ>;
@group(0) @binding(3) var<storage, read> A: array<f32>;
#ifdef FIXED_BC
@group(0) @binding(4) var<storage, read> BM: array<f32>;
@group(0) @binding(5) var<storage, read> CM: array<f32>;
#else
@group(0) @binding(4) var<storage, read> BM: array<SEQ>;
@group(0) @binding(5) var<storage, read> CM: array<SEQ>;
#endif
@group(0) @binding(6) var<storage, read> DSKIP: array<f32>;
@group(0) @binding(7) var<storage, read> Z: array<SEQ>;
@group(0) @binding(8) var<storage, read> BIAS: array<f32>;
@group(0) @binding(9) var<storage, read> H0: array<f32>;
@group(0) @binding(10) var<storage, read> START: array<u32>;
#endif

// The small arguments at element i (P's offset added here), bound or packed
fn ld_a(i: u32) -> f32 {
#ifdef PACKED
    return bitcast<f32>(SM[P.off_a + i]);
#else
    return A[P.off_a + i];
#endif
}
fn ld_dskip(i: u32) -> f32 {
#ifdef PACKED
    return bitcast<f32>(SM[P.off_dskip + i]);
#else
    return DSKIP[P.off_dskip + i];
#endif
}
fn ld_bias(i: u32) -> f32 {
#ifdef PACKED
    return bitcast<f32>(SM[P.off_bias + i]);
#else
    return BIAS[P.off_bias + i];
#endif
}
fn ld_h0(i: u32) -> f32 {
#ifdef PACKED
    return bitcast<f32>(SM[P.off_h0 + i]);
#else
    return H0[P.off_h0 + i];
#endif
}
fn ld_start(i: u32) -> u32 {
#ifdef PACKED
    return SM[P.off_start + i];
#else
    return START[P.off_start + i];
#endif
}

// dt, u and d(dt)/d(delta) of the chunk's (step e, channel c) at e * CB + c; reset flags by e
var<workgroup> s_dt: array<f32, LC>;
var<workgroup> s_u: array<f32, LC>;
var<workgroup> s_fac: array<f32, LC>;
var<workgroup> s_rs: array<u32, L>;

fn rd_u(i: u32) -> f32 {
    let j = P.off_u + i;
#ifdef BF16
    return bf16_at(U[j >> 1u], j);
#else
    return f32(U[j]);
#endif
}

fn rd_delta(i: u32) -> f32 {
    let j = P.off_delta + i;
#ifdef BF16
    return bf16_at(DELTA[j >> 1u], j);
#else
    return f32(DELTA[j]);
#endif
}


// Bm / Cm at element i (input-dependent: [B, T, G, N] in SEQ; fixed: [D, N] f32)
fn rd_b(i: u32) -> f32 {
    let j = P.off_bm + i;
#ifdef BF16
#ifndef FIXED_BC
    return bf16_at(BM[j >> 1u], j);
#else
    return BM[j];
#endif
#else
    return f32(BM[j]);
#endif
}

fn rd_c(i: u32) -> f32 {
    let j = P.off_cm + i;
#ifdef BF16
#ifndef FIXED_BC
    return bf16_at(CM[j >> 1u], j);
#else
    return CM[j];
#endif
#else
    return f32(CM[j]);
#endif
}

// softplus(x) = ln(1 + e^x), x itself above 20; ln(1 + e) as ln(w) * e / (w - 1), which keeps
// full relative precision for small e (w = 1 + e rounded)
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        return x;
    }
    let e = exp(x);
    let w = 1.0 + e;
    if w == 1.0 {
        return e;
    }
    return log(w) * (e / (w - 1.0));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Stage steps t0 .. t0 + len of row b for channels d0 .. d0 + CB: dt, u, d(dt)/d(delta) and
// the reset flags. Every thread calls this; a barrier must follow before the values are read.
fn stage(lid: u32, b: u32, t0: u32, len: u32, d0: u32) {
    for (var r = 0u; r < (LC + WG - 1u) / WG; r++) {
        let idx = lid + r * WG;
        let d = d0 + idx % CB;
        if idx < len * CB && d < P.D {
            let i = (b * P.T + t0 + idx / CB) * P.D + d;
            var x = rd_delta(i);
            if (P.flags & HAS_BIAS) != 0u {
                x += ld_bias(d);
            }
            var dt = x;
            var fac = 1.0;
            if (P.flags & SOFTPLUS) != 0u {
                dt = softplus(x);
                fac = select(sigmoid(x), 1.0, x > 20.0);
            }
            s_dt[idx] = dt;
            s_u[idx] = rd_u(i);
            s_fac[idx] = fac;
        }
    }
    if lid < len {
        var r = 0u;
        if (P.flags & HAS_START) != 0u {
            r = ld_start(b * P.T + t0 + lid);
        }
        s_rs[lid] = r;
    }
}

// Threads per (step, channel) pair in the first level of a workgroup-memory sum over n:
// as many as fit the workgroup, at most NP and QMAX; each then adds NP / q <= 2 L states.
const QMAX: u32 = 16u;
fn parts_per_pair(pairs: u32) -> u32 {
    let room = WG / max(pairs, 1u);
    if room <= 1u {
        return 1u;
    }
    return min(min(NP, QMAX), 1u << firstLeadingBit(room));
}

// Sum v over the NP lanes of each channel (a segment of a subgroup; NP <= subgroup size) by a
// butterfly: every lane of the segment ends up with the sum, added in a fixed order. Every
// lane of the subgroup must call this.
#ifdef SUBGROUPS
fn butterfly(v_in: f32) -> f32 {
    // straight-line (no loop), so that it folds to log2(NP) shuffles
    var v = v_in;
    if NP > 64u {
        v += subgroupShuffleXor(v, 64u);
    }
    if NP > 32u {
        v += subgroupShuffleXor(v, 32u);
    }
    if NP > 16u {
        v += subgroupShuffleXor(v, 16u);
    }
    if NP > 8u {
        v += subgroupShuffleXor(v, 8u);
    }
    if NP > 4u {
        v += subgroupShuffleXor(v, 4u);
    }
    if NP > 2u {
        v += subgroupShuffleXor(v, 2u);
    }
    if NP > 1u {
        v += subgroupShuffleXor(v, 1u);
    }
    return v;
}
#endif

// What one thread owns (see the layout above) and, per chunk, where the chunk is.
struct Th {
    b: u32,
    c: u32,
    n: u32,
    grp: u32,
    sgw: u32,
    act: bool,
    live: bool,
    an: f32,
    bfix: f32,
    cfix: f32,
    t0: u32,
    len: u32,
}

// The thread owning slot li of row b's block starting at channel d0; sgw = NP selects the
// subgroup sums over n, 0 the workgroup-memory ones.
fn thread_of(b: u32, d0: u32, li: u32, sgw: u32) -> Th {
    var th: Th;
    th.b = b;
    th.n = li % NP;
    th.c = li / NP;
    th.sgw = sgw;
    th.act = th.c < CB;
    let d = d0 + th.c;
    th.live = th.act && d < P.D && th.n < P.N;
    th.grp = 0u;
    th.an = 0.0;
    th.bfix = 0.0;
    th.cfix = 0.0;
    if th.live {
        th.an = ld_a(d * P.N + th.n);
#ifdef FIXED_BC
        th.bfix = rd_b(d * P.N + th.n);
        th.cfix = rd_c(d * P.N + th.n);
#else
        th.grp = d / P.dg;
#endif
    }
    return th;
}

// Bm (which = 0) or Cm (which = 1) of the thread's state at step t0 + e
fn bc_at(th: Th, e: u32, which: u32) -> f32 {
#ifdef FIXED_BC
    return select(th.bfix, th.cfix, which == 1u);
#else
    let i = ((th.b * P.T + th.t0 + e) * P.G + th.grp) * P.N + th.n;
    if which == 0u {
        return rd_b(i);
    }
    return rd_c(i);
#endif
}

// The decay exp(dt A) of step e of the chunk and dt (callers select on s_rs: see step_state)
fn decay_at(th: Th, e: u32) -> vec2<f32> {
    let dt = s_dt[e * CB + th.c];
    return vec2<f32>(exp(dt * th.an), dt);
}

// Whether step e of the chunk starts an episode
fn reset_at(e: u32) -> bool {
    return s_rs[e] != 0u;
}

// The state after step e from the state h before it. A reset replaces the carried state (a
// select, not a multiply by 0: a NaN or infinity before the reset must not survive as NaN * 0).
fn step_state(th: Th, e: u32, h: f32) -> f32 {
    let ad = decay_at(th, e);
    let fresh = ad.y * bc_at(th, e, 0u) * s_u[e * CB + th.c];
    return select(ad.x * h + fresh, fresh, reset_at(e));
}
