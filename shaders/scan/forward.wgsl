// docs/scan.md, diagonal linear scan, forward: h_t = (reset ? 0 : a_t h_prev) + x_t, in scan
// order (a reset selects x_t: the carried state is dropped, not multiplied by 0) (t ascending, or descending when reversed). Thread layout: see scan/chunk.wgsl; one
// workgroup per (batch row, block of CB channels).
//! variant:
//! variant: COMPLEX
#include "common/complex.wgsl"
#include "scan/chunk.wgsl"

struct Params {
    rows: u32, T: u32, D: u32, ncb: u32,
    flags: u32, _p0: u32, _p1: u32, _p2: u32,
    off_x: u32, off_a: u32, off_h0: u32, off_start: u32,
    off_h: u32, off_hf: u32, _p3: u32, _p4: u32,
}
const HAS_H0: u32 = 1u;
const HAS_START: u32 = 2u;
const TIME_VARYING: u32 = 4u;
const REVERSE: u32 = 8u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<f32>;
@group(0) @binding(3) var<storage, read> H0: array<f32>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read_write> H: array<f32>;
@group(0) @binding(6) var<storage, read_write> HF: array<f32>;

fn ld(buf: u32, i: u32) -> V {
    // buf: 0 = X, 1 = A, 2 = H0 (element index i, offsets applied here)
#ifdef COMPLEX
    switch buf {
        case 0u: { return V(X[P.off_x + 2u * i], X[P.off_x + 2u * i + 1u]); }
        case 1u: { return V(A[P.off_a + 2u * i], A[P.off_a + 2u * i + 1u]); }
        default: { return V(H0[P.off_h0 + 2u * i], H0[P.off_h0 + 2u * i + 1u]); }
    }
#else
    switch buf {
        case 0u: { return X[P.off_x + i]; }
        case 1u: { return A[P.off_a + i]; }
        default: { return H0[P.off_h0 + i]; }
    }
#endif
}

fn st_h(i: u32, v: V) {
#ifdef COMPLEX
    H[P.off_h + 2u * i] = v.x;
    H[P.off_h + 2u * i + 1u] = v.y;
#else
    H[P.off_h + i] = v;
#endif
}

fn st_hf(i: u32, v: V) {
#ifdef COMPLEX
    HF[P.off_hf + 2u * i] = v.x;
    HF[P.off_hf + 2u * i + 1u] = v.y;
#else
    HF[P.off_hf + i] = v;
#endif
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.rows * P.ncb {
        return;
    }
    let b = g / P.ncb;
    let c = lid % CB;
    let j = lid / CB;
    let d = (g % P.ncb) * CB + c;
    let live = d < P.D;
    let T = P.T;
    let rev = (P.flags & REVERSE) != 0u;
    if j == 0u {
        var h0 = vzero();
        if live && (P.flags & HAS_H0) != 0u {
            h0 = ld(2u, b * P.D + d);
        }
        carry[c] = h0;
    }
    let L = (WG / CB) * E;
    let nchunks = (T + L - 1u) / L;
    for (var k = 0u; k < nchunks; k++) {
        var mm: array<V, E>;
        var xx: array<V, E>;
        var rr: array<bool, E>;
        var f = map_id();
        for (var e = 0u; e < E; e++) {
            let s = k * L + j * E + e;
            var me = vone();
            var xe = vzero();
            var re = false;
            if live && s < T {
                let t = select(s, T - 1u - s, rev);
                let i = (b * T + t) * P.D + d;
                me = ld(1u, select(d, i, (P.flags & TIME_VARYING) != 0u));
                if (P.flags & HAS_START) != 0u {
                    let tr = select(t, t + 1u, rev);
                    re = tr < T && START[P.off_start + b * T + tr] != 0u;
                }
                xe = ld(0u, i);
            }
            mm[e] = me;
            xx[e] = xe;
            rr[e] = re;
            f = map_step(f, me, xe, re);
        }
        let pf = lane_prefix(lid, j, f);
        var h = map_apply(pf.enter, carry[c]);
        workgroupBarrier();
        for (var e = 0u; e < E; e++) {
            h = select(vmul(mm[e], h) + xx[e], xx[e], rr[e]);
            let s = k * L + j * E + e;
            if live && s < T {
                let t = select(s, T - 1u - s, rev);
                st_h((b * T + t) * P.D + d, h);
            }
        }
        if j == WG / CB - 1u {
            // the chunk's whole map (its multiplier in hi + lo) applied to the carried state
            carry[c] = map_apply(pf.leave, carry[c]);
        }
        workgroupBarrier();
    }
    if j == 0u && live {
        st_hf(b * P.D + d, carry[c]);
    }
}
