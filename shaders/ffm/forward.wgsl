// docs/ffm.md, FFM aggregation, forward: S_t = (start_t ? 0 : gamma S_{t-1}) + x_t, gamma =
// exp(a[m] + i b[c]), for every (b, m, c), with S written once as [B, T, M, C] complex.
// With CKPT it is the first pass of the backward instead: it writes only the state entering
// each chunk, [B, K, M, C] complex (K = ceil(T / L)), from which the backward recomputes S.
// Thread layout: see ffm/common.wgsl; one workgroup per (batch row, block of channels), a
// chunk loop over time carrying each channel's state in workgroup memory. Consecutive columns
// are consecutive (m, c) channels, so each step's stores are contiguous across the block.
// Segments: a dispatch walks the chunks [k_lo, k_hi) of every row, so the launcher can split
// a row's walk over several dispatches (Mesa's llvmpipe ends a shader's loop nest after 65535
// iterations; GPUs run one segment, k_lo = 0, k_hi = K). Between segments the last lane of
// each column keeps the carry and its anchor in SEG at off_seg (7 words per column, 7 W per
// workgroup): SEG_CONT reloads them (else the walk starts from s0), SEG_MORE stores them.
// They are stored and reloaded bit for bit, so the segmented walk is bitwise the one-dispatch
// walk.
//! variant:
//! variant: CKPT
#include "ffm/common.wgsl"

struct Params {
    rows: u32, T: u32, M: u32, C: u32,
    mb: u32, cw: u32, ncb: u32, nblk: u32,
    flags: u32, K: u32, k_lo: u32, k_hi: u32,
    off_x: u32, off_a: u32, off_b: u32, off_s0: u32,
    off_start: u32, off_out: u32, off_sf: u32, off_seg: u32,
}
const HAS_S0: u32 = 1u;
const HAS_START: u32 = 2u;
const SEG_CONT: u32 = 8u;
const SEG_MORE: u32 = 16u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<f32>;
@group(0) @binding(3) var<storage, read> BF: array<f32>;
@group(0) @binding(4) var<storage, read> S0: array<f32>;
@group(0) @binding(5) var<storage, read> START: array<u32>;
// S (forward) or the chunk checkpoints (CKPT), and the final state: buffers the launcher
// allocates, bound at even float offsets, so each complex value is one 8-byte store
// (off_out, off_sf count floats).
@group(0) @binding(6) var<storage, read_write> OUT: array<vec2<f32>>;
#ifndef CKPT
@group(0) @binding(7) var<storage, read_write> SF: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> SEG: array<f32>;
#else
@group(0) @binding(7) var<storage, read_write> SEG: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.rows * P.nblk {
        return;
    }
    let row = g / P.nblk;
    let ql = lid % W;
    let j = lid / W;
    let ch = channel(g % P.nblk, ql, P.mb, P.cw, P.ncb, P.M, P.C);
    let T = P.T;
    let MC = P.M * P.C;
    let q = ch.m * P.C + ch.c;
    let has_start = (P.flags & HAS_START) != 0u;
    var la = 0.0;
    var lb = 0.0;
    if ch.live {
        la = A[P.off_a + ch.m];
        lb = reduce_angle(BF[P.off_b + ch.c]);
    }
    let gam = cpow(la, lb, 1u);
    let pw = lane_powers(la, lb);
    let pre = cpow(la, lb, E * j);
    var s0 = vec2<f32>(0.0);
    if ch.live && (P.flags & HAS_S0) != 0u {
        let i = P.off_s0 + 2u * (row * MC + q);
        s0 = vec2<f32>(S0[i], S0[i + 1u]);
    }
    // the carry, anchored (ffm/common.wgsl), kept by the last lane
    var an = anchor_at(s0);
    let last = j == WG / W - 1u;
    // this column's state between segments
    let iseg = P.off_seg + 7u * (g * W + ql);
    if (P.flags & SEG_CONT) != 0u {
        // the state the previous segment (the chunks before k_lo) left: the carry by lane 0,
        // which reads it first (CKPT), the anchor by the last lane
        if j == 0u {
            carry[ql] = vec2<f32>(SEG[iseg], SEG[iseg + 1u]);
        }
        if last {
            an = Anchor(vec2<f32>(SEG[iseg + 2u], SEG[iseg + 3u]),
                        vec2<f32>(SEG[iseg + 4u], SEG[iseg + 5u]), u32(SEG[iseg + 6u]));
        }
    } else if j == 0u {
        carry[ql] = s0;
    }
    let pe = cpow(la, lb, E);
    let L = (WG / W) * E;
    for (var k = P.k_lo; k < P.k_hi; k++) {
#ifdef CKPT
        if j == 0u && ch.live {
            OUT[P.off_out / 2u + (row * P.K + k) * MC + q] = carry[ql];
        }
#endif
        let t0 = k * L + j * E;
        var xs: array<f32, E>;
        var rs: array<bool, E>;
        var any = false;
        var xl = vec2<f32>(0.0);
        for (var e = 0u; e < E; e++) {
            let t = t0 + e;
            var xe = 0.0;
            var re = false;
            if t < T {
                if ch.live {
                    xe = X[P.off_x + (row * T + t) * P.M + ch.m];
                }
                re = has_start && START[P.off_start + row * T + t] != 0u;
            }
            xs[e] = xe;
            rs[e] = re;
            if re {
                xl = vec2<f32>(xe, 0.0);
                any = true;
            } else {
                xl = cmul(gam, xl) + vec2<f32>(xe, 0.0);
            }
        }
        let sp = lane_scan(lid, j, any, xl, false, pw);
        // the state entering this lane: its prefix applied to the chunk's carried state
        var s = sp.x;
        if !sp.any {
            s += cmul(pre, carry[ql]);
        }
        workgroupBarrier();
        for (var e = 0u; e < E; e++) {
            let xe = vec2<f32>(xs[e], 0.0);
            if rs[e] {
                s = xe;
            } else {
                s = cmul(gam, s) + xe;
            }
#ifndef CKPT
            let t = t0 + e;
            if ch.live && t < T {
                OUT[P.off_out / 2u + (row * T + t) * MC + q] = s;
                if t + 1u == T {
                    SF[P.off_sf / 2u + row * MC + q] = s;
                }
            }
#endif
        }
        if last {
            // the chunk's result from a zero state: this lane's span after its prefix
            var xk = xl;
            if !any {
                xk = cmul(pe, sp.x) + xl;
            }
            an = anchor_next(an, any || sp.any, xk, la, lb, L);
            carry[ql] = anchor_state(an, la, lb);
        }
        workgroupBarrier();
    }
    if (P.flags & SEG_MORE) != 0u && last {
        // chunks k_hi .. K - 1 are the next segments': keep the state for them
        SEG[iseg] = carry[ql].x;
        SEG[iseg + 1u] = carry[ql].y;
        SEG[iseg + 2u] = an.u.x;
        SEG[iseg + 3u] = an.u.y;
        SEG[iseg + 4u] = an.ul.x;
        SEG[iseg + 5u] = an.ul.y;
        SEG[iseg + 6u] = f32(an.n);
    }
}
