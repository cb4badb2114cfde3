// docs/scan.md, diagonal linear scan, backward: the adjoint scan
// H_t = G_t + (reset ? 0 : conj(a_next) H_next), run opposite to the forward's order, then
// dx_t = H_t, da_t = (reset_t ? 0 : conj(h_prev) H_t), dh0 = conj(a_first) H_first.
// Thread layout: see scan/chunk.wgsl; one workgroup per (batch row, block of CB channels).
// For a time-invariant `a`, each workgroup writes its row's partial da[b, d] (lanes summed in
// a fixed order); common/reduce_rows.wgsl sums the rows, so results are bitwise reproducible.
// With PACK (devices with 8 storage bindings per stage, WebGPU's default) h0 and grad_final
// are read from one buffer the launcher packed them into (scan/pack.wgsl), at off_h0 / off_gf.
//! variant:
//! variant: COMPLEX
//! variant: PACK
//! variant: COMPLEX PACK
#include "common/complex.wgsl"
#include "scan/chunk.wgsl"

struct Params {
    rows: u32, T: u32, D: u32, ncb: u32,
    flags: u32, _p0: u32, _p1: u32, _p2: u32,
    off_a: u32, off_h: u32, off_h0: u32, off_start: u32,
    off_g: u32, off_gf: u32, off_dx: u32, off_da: u32,
    off_dh0: u32, _p3: u32, _p4: u32, _p5: u32,
}
const HAS_H0: u32 = 1u;
const HAS_START: u32 = 2u;
const TIME_VARYING: u32 = 4u;
const REVERSE: u32 = 8u;
const HAS_GF: u32 = 16u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> HS: array<f32>;
@group(0) @binding(3) var<storage, read> H0: array<f32>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read> G: array<f32>;
#ifdef PACK
@group(0) @binding(6) var<storage, read_write> DX: array<f32>;
@group(0) @binding(7) var<storage, read_write> DA: array<f32>;
@group(0) @binding(8) var<storage, read_write> DH0: array<f32>;
#else
@group(0) @binding(6) var<storage, read> GF: array<f32>;
@group(0) @binding(7) var<storage, read_write> DX: array<f32>;
@group(0) @binding(8) var<storage, read_write> DA: array<f32>;
@group(0) @binding(9) var<storage, read_write> DH0: array<f32>;
#endif

// grad_final, float index i (P.off_gf applied here)
fn ld_gf(i: u32) -> f32 {
#ifdef PACK
    return H0[P.off_gf + i];
#else
    return GF[P.off_gf + i];
#endif
}

fn ld(buf: u32, i: u32) -> V {
    // buf: 0 = A, 1 = HS, 2 = H0, 3 = G, 4 = GF
#ifdef COMPLEX
    switch buf {
        case 0u: { return V(A[P.off_a + 2u * i], A[P.off_a + 2u * i + 1u]); }
        case 1u: { return V(HS[P.off_h + 2u * i], HS[P.off_h + 2u * i + 1u]); }
        case 2u: { return V(H0[P.off_h0 + 2u * i], H0[P.off_h0 + 2u * i + 1u]); }
        case 3u: { return V(G[P.off_g + 2u * i], G[P.off_g + 2u * i + 1u]); }
        default: { return V(ld_gf(2u * i), ld_gf(2u * i + 1u)); }
    }
#else
    switch buf {
        case 0u: { return A[P.off_a + i]; }
        case 1u: { return HS[P.off_h + i]; }
        case 2u: { return H0[P.off_h0 + i]; }
        case 3u: { return G[P.off_g + i]; }
        default: { return ld_gf(i); }
    }
#endif
}

fn st(buf: u32, i: u32, v: V) {
    // buf: 0 = DX, 1 = DA, 2 = DH0
#ifdef COMPLEX
    switch buf {
        case 0u: { DX[P.off_dx + 2u * i] = v.x; DX[P.off_dx + 2u * i + 1u] = v.y; }
        case 1u: { DA[P.off_da + 2u * i] = v.x; DA[P.off_da + 2u * i + 1u] = v.y; }
        default: { DH0[P.off_dh0 + 2u * i] = v.x; DH0[P.off_dh0 + 2u * i + 1u] = v.y; }
    }
#else
    switch buf {
        case 0u: { DX[P.off_dx + i] = v; }
        case 1u: { DA[P.off_da + i] = v; }
        default: { DH0[P.off_dh0 + i] = v; }
    }
#endif
}

fn started(b: u32, t: u32) -> bool {
    return (P.flags & HAS_START) != 0u && t < P.T && START[P.off_start + b * P.T + t] != 0u;
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
    let tv = (P.flags & TIME_VARYING) != 0u;
    let has_h0 = (P.flags & HAS_H0) != 0u;
    if j == 0u {
        var gf = vzero();
        if live && (P.flags & HAS_GF) != 0u {
            gf = ld(4u, b * P.D + d);
        }
        carry[c] = gf;
    }
    var acc = vzero();
    let L = (WG / CB) * E;
    let nchunks = (T + L - 1u) / L;
    for (var k = 0u; k < nchunks; k++) {
        var mm: array<V, E>;
        var gg: array<V, E>;
        var rr: array<bool, E>;
        var f = map_id();
        for (var e = 0u; e < E; e++) {
            let s = k * L + j * E + e;
            var me = vone();
            var ge = vzero();
            var re = false;
            if live && s < T {
                // backward scan order: t descending (forward problem) or ascending (reversed)
                let t = select(T - 1u - s, s, rev);
                if s > 0u {
                    let pred = select(t + 1u, t - 1u, rev);
                    me = vconj(ld(0u, select(d, (b * T + pred) * P.D + d, tv)));
                    re = started(b, max(t, pred));
                }
                ge = ld(3u, (b * T + t) * P.D + d);
            }
            mm[e] = me;
            gg[e] = ge;
            rr[e] = re;
            f = map_step(f, me, ge, re);
        }
        let pf = lane_prefix(lid, j, f);
        var hh = map_apply(pf.enter, carry[c]);
        workgroupBarrier();
        for (var e = 0u; e < E; e++) {
            hh = select(vmul(mm[e], hh) + gg[e], gg[e], rr[e]);
            let s = k * L + j * E + e;
            if live && s < T {
                let t = select(T - 1u - s, s, rev);
                let i = (b * T + t) * P.D + d;
                st(0u, i, hh);
                // the forward step at t: reset flag and previous state
                let fwd_reset = select(started(b, t), started(b, t + 1u), rev);
                var da = vzero();
                if !fwd_reset {
                    var hprev = vzero();
                    let first = select(t == 0u, t + 1u == T, rev);
                    if first {
                        if has_h0 {
                            hprev = ld(2u, b * P.D + d);
                        }
                    } else {
                        hprev = ld(1u, (b * T + select(t - 1u, t + 1u, rev)) * P.D + d);
                    }
                    da = vmul(vconj(hprev), hh);
                }
                if tv {
                    st(1u, i, da);
                } else {
                    acc += da;
                }
            }
        }
        if j == WG / CB - 1u {
            // the chunk's whole map (its multiplier in hi + lo) applied to the carried state
            carry[c] = map_apply(pf.leave, carry[c]);
        }
        workgroupBarrier();
    }
    // dh0 = (reset at the forward's first step ? 0 : conj(a_first)) H_first
    if j == 0u && live {
        let t0 = select(0u, T - 1u, rev);
        var dh0 = vzero();
        if rev || !started(b, 0u) {
            dh0 = vmul(vconj(ld(0u, select(d, (b * T + t0) * P.D + d, tv))), carry[c]);
        }
        st(2u, b * P.D + d, dh0);
    }
    if !tv {
        // row partial of da: sum the lanes of each channel in a fixed order
        sm[lid] = acc;
        workgroupBarrier();
        if j == 0u && live {
            var sum = vzero();
            for (var q = 0u; q < WG / CB; q++) {
                sum += sm[q * CB + c];
            }
            st(1u, b * P.D + d, sum);
        }
    }
}
