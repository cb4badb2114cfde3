// docs/selective.md, selective scan forward:
//   h_t[n] = (start_t ? 0 : exp(dt_t A[d][n]) h_{t-1}[n]) + dt_t Bm_t[n] u_t
//   out_t  = (sum_n Cm_t[n] h_t[n] + Dskip[d] u_t) * (z ? silu(z_t) : 1)
// Thread layout: see selective/common.wgsl (one workgroup per (batch row, block of CB
// channels), one thread per (channel, state), time sequential in chunks of L steps). Per
// chunk: stage dt and u; each thread advances its state L steps and leaves Cm_t[n] h_t[n] for
// the reduction over n; the sums over n are formed in a fixed order (workgroup memory, or a
// subgroup butterfly with SUBGROUPS when whole subgroups are available and N fits one); then
// one thread per (step, channel) adds the skip term, applies the gate and writes out.
// PACKED (WebGPU's default limits): 8-step chunks (13 KiB of workgroup memory instead of 25)
// and 8 storage buffers: u, delta, Bm, Cm, z, the packed small arguments, out, h_final.
//! variant:
//! variant: FIXED_BC
//! variant: F16
//! variant: F16 FIXED_BC
//! variant: BF16
//! variant: BF16 FIXED_BC
//! variant: SUBGROUPS
//! variant: SUBGROUPS FIXED_BC
//! variant: SUBGROUPS F16
//! variant: SUBGROUPS F16 FIXED_BC
//! variant: SUBGROUPS BF16
//! variant: SUBGROUPS BF16 FIXED_BC
//! variant: PACKED
//! variant: PACKED FIXED_BC
//! variant: PACKED F16
//! variant: PACKED F16 FIXED_BC
//! variant: PACKED BF16
//! variant: PACKED BF16 FIXED_BC
//! variant: PACKED SUBGROUPS
//! variant: PACKED SUBGROUPS FIXED_BC
//! variant: PACKED SUBGROUPS F16
//! variant: PACKED SUBGROUPS F16 FIXED_BC
//! variant: PACKED SUBGROUPS BF16
//! variant: PACKED SUBGROUPS BF16 FIXED_BC
#ifdef F16
enable f16;
#endif
#include "selective/common.wgsl"

// steps per chunk
#ifdef PACKED
const L: u32 = 8u;
#else
const L: u32 = 16u;
#endif
const LC: u32 = L * CBMAX;

#ifdef PACKED
@group(0) @binding(5) var<storage, read> Z: array<SEQ>;
@group(0) @binding(6) var<storage, read> SM: array<u32>;
@group(0) @binding(7) var<storage, read_write> OUT: array<SEQ_OUT>;
@group(0) @binding(8) var<storage, read_write> HF: array<f32>;
#else
@group(0) @binding(11) var<storage, read_write> OUT: array<SEQ_OUT>;
@group(0) @binding(12) var<storage, read_write> HF: array<f32>;
#endif

// Cm h of (step e, channel c, state n) at (e * CB + c) * NP + n (subgroup partials: fewer)
var<workgroup> s_r: array<f32, L * WG>;
// y without the skip term, at e * CB + c
var<workgroup> s_y: array<f32, LC>;
var<workgroup> s_part: array<f32, WG>;
// 0: workgroup-memory sums over n; NP: subgroup butterflies (whole subgroups, NP <= size)
var<workgroup> s_sgw: u32;

fn rd_z(i: u32) -> f32 {
    let j = P.off_z + i;
#ifdef BF16
    return bf16_at(Z[j >> 1u], j);
#else
    return f32(Z[j]);
#endif
}

fn wr_out(i: u32, v: f32) {
    let j = P.off_o + i;
#ifdef BF16
    atomicOr(&OUT[j >> 1u], bf16_word(v, j));
#else
    OUT[j] = SEQ(v);
#endif
}

// s_r -> s_y (workgroup-memory path, sgw == 0): sum over n of every (step, channel) pair of
// the chunk, in a fixed order: q threads per pair each add NP / q consecutive states, then
// one adds the q parts. (The subgroup path has left the sums in s_y already.)
fn finish_n(lid: u32, len: u32, sgw: u32) {
    let pairs = len * CB;
    if sgw == 0u {
        let q = parts_per_pair(pairs);
        let w = NP / q;
        for (var r = 0u; r < (LC + WG - 1u) / WG; r++) {
            let idx = lid + r * WG;
            if idx < pairs * q {
                let p = idx / q;
                let n0 = (idx % q) * w;
                var s = 0.0;
                for (var j = 0u; j < max(2u * L, QMAX); j++) {
                    if j < w && n0 + j < P.N {
                        s += s_r[p * NP + n0 + j];
                    }
                }
                if q == 1u {
                    s_y[p] = s;
                } else {
                    s_part[idx] = s;
                }
            }
        }
        workgroupBarrier();
        if q > 1u && lid < pairs {
            var s = 0.0;
            for (var j = 0u; j < QMAX; j++) {
                if j < q {
                    s += s_part[lid * q + j];
                }
            }
            s_y[lid] = s;
        }
    }
}

// Step e of the chunk for one thread: advance its state and leave Cm h for the sum over n.
fn fwd_step(e: u32, th: Th, h: ptr<function, f32>) {
    if e >= th.len {
        return;
    }
    var v = 0.0;
    if th.live {
        *h = step_state(th, e, *h);
        v = bc_at(th, e, 1u) * *h;
    }
#ifdef SUBGROUPS
    if th.sgw > 0u {
        // lane n == 0 of each channel keeps the sum over n
        v = butterfly(v);
        if th.act && th.n == 0u {
            s_y[e * CB + th.c] = v;
        }
        return;
    }
#endif
    if th.act {
        s_r[(e * CB + th.c) * NP + th.n] = v;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
#ifdef SUBGROUPS
        @builtin(subgroup_size) sgs: u32, @builtin(subgroup_invocation_id) sgl: u32,
        @builtin(subgroup_id) sgi: u32, @builtin(num_subgroups) nsg: u32,
#endif
) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.rows * P.nb {
        return;
    }
    let b = g / P.nb;
    let d0 = (g % P.nb) * CB;
    var li = lid;
    if lid == 0u {
        s_sgw = 0u;
    }
#ifdef SUBGROUPS
    // whole subgroups only: then (subgroup, lane) numbers the threads and, when NP <= sgs, the
    // NP states of a channel share a subgroup
    let full = nsg * sgs == WG;
    if full {
        li = sgi * sgs + sgl;
    }
    if lid == 0u && full && NP <= sgs {
        s_sgw = NP;
    }
#endif
    var th = thread_of(b, d0, li, workgroupUniformLoad(&s_sgw));
    let d = d0 + th.c;
    let T = P.T;
    var h = 0.0;
    if th.live && (P.flags & HAS_H0) != 0u {
        h = ld_h0((b * P.D + d) * P.N + th.n);
    }
    let nk = (T + L - 1u) / L;
    for (var k = 0u; k < nk; k++) {
        let t0 = k * L;
        let len = min(L, T - t0);
        th.t0 = t0;
        th.len = len;
        stage(lid, b, t0, len, d0);
        workgroupBarrier();
        fwd_step(0u, th, &h);
        fwd_step(1u, th, &h);
        fwd_step(2u, th, &h);
        fwd_step(3u, th, &h);
        fwd_step(4u, th, &h);
        fwd_step(5u, th, &h);
        fwd_step(6u, th, &h);
        fwd_step(7u, th, &h);
#ifdef PACKED
        const_assert L == 8u;
#else
        const_assert L == 16u;
        fwd_step(8u, th, &h);
        fwd_step(9u, th, &h);
        fwd_step(10u, th, &h);
        fwd_step(11u, th, &h);
        fwd_step(12u, th, &h);
        fwd_step(13u, th, &h);
        fwd_step(14u, th, &h);
        fwd_step(15u, th, &h);
#endif
        workgroupBarrier();
        finish_n(lid, len, th.sgw);
        workgroupBarrier();
        for (var r = 0u; r < (LC + WG - 1u) / WG; r++) {
            let idx = lid + r * WG;
            let dd = d0 + idx % CB;
            if idx < len * CB && dd < P.D {
                let i = (b * T + t0 + idx / CB) * P.D + dd;
                var y = s_y[idx];
                if (P.flags & HAS_DSKIP) != 0u {
                    y += ld_dskip(dd) * s_u[idx];
                }
                if (P.flags & HAS_Z) != 0u {
                    let zz = rd_z(i);
                    y *= zz * sigmoid(zz);
                }
                wr_out(i, y);
            }
        }
        workgroupBarrier();
    }
    if th.live {
        HF[P.off_f + (b * P.D + d) * P.N + th.n] = h;
    }
}
