// docs/ffm.md, FFM aggregation, backward: per chunk, from the last to the first, recompute the
// states S_{t-1} from the chunk's checkpoint (written by forward.wgsl with CKPT) and x, run
// the reverse scan H_t = G_t + (start_{t+1} ? 0 : conj(gamma) H_{t+1}) carrying H between
// chunks, and form
//   dx_t[m] = sum_c Re(H_t[m][c])                    (c summed in order in workgroup memory)
//   ds0     = start_0 ? 0 : conj(gamma) H_0
//   part    = conj(gamma) * sum_{t : !start_t} conj(S_{t-1}) H_t     (this row's dlog)
// Thread layout: see ffm/common.wgsl, with every context channel of a memory channel in one
// block (ncb = 1, cw = C), so dx needs no other workgroup. `part` ([B, M, C] complex) is summed
// over rows by common/reduce_rows.wgsl and split into da, db by ffm/params.wgsl: every sum has
// a fixed order, no float atomics.
// With GVEC (grad_s bound at an even float offset) each complex G is one 8-byte load.
// With PACK (devices with 8 storage bindings per stage, WebGPU's default) a, b and grad_final
// are read from one buffer the launcher packed them into (scan/pack.wgsl), at off_a, off_b
// and off_gf.
// Segments: a dispatch walks the chunks [k_lo, k_hi) of every row (from k_hi - 1 down), so
// the launcher can split a row's walk over several dispatches (Mesa's llvmpipe ends a
// shader's loop nest after 65535 iterations; GPUs run one segment, k_lo = 0, k_hi = K).
// Between segments each invocation's state (its `acc`, and for the lanes j == 0 the carry of
// H and its anchor) waits in PART past the rows' parts, at off_seg: SEG_CONT reloads it
// (else the walk starts from a zero carry), SEG_MORE stores it (else `part` is written). The
// state is stored and reloaded bit for bit, so the segmented walk is bitwise the one-dispatch
// walk.
//! variant:
//! variant: GVEC
//! variant: PACK
//! variant: GVEC PACK
#include "ffm/common.wgsl"

struct Params {
    rows: u32, T: u32, M: u32, C: u32,
    mb: u32, cw: u32, ncb: u32, nblk: u32,
    flags: u32, K: u32, k_lo: u32, k_hi: u32,
    off_x: u32, off_a: u32, off_b: u32, off_start: u32,
    off_ck: u32, off_g: u32, off_gf: u32, off_dx: u32,
    off_ds0: u32, off_part: u32, off_seg: u32, _p3: u32,
}
const HAS_START: u32 = 2u;
const HAS_GF: u32 = 4u;
const SEG_CONT: u32 = 8u;
const SEG_MORE: u32 = 16u;

@group(0) @binding(0) var<uniform> P: Params;
#ifdef PACK
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> SMALL: array<f32>;
@group(0) @binding(3) var<storage, read> START: array<u32>;
@group(0) @binding(4) var<storage, read> CK: array<f32>;
#ifdef GVEC
@group(0) @binding(5) var<storage, read> G: array<vec2<f32>>;
#else
@group(0) @binding(5) var<storage, read> G: array<f32>;
#endif
@group(0) @binding(6) var<storage, read_write> DX: array<f32>;
@group(0) @binding(7) var<storage, read_write> DS0: array<f32>;
@group(0) @binding(8) var<storage, read_write> PART: array<f32>;
fn ld_a(i: u32) -> f32 { return SMALL[P.off_a + i]; }
fn ld_b(i: u32) -> f32 { return SMALL[P.off_b + i]; }
fn ld_gf(i: u32) -> f32 { return SMALL[P.off_gf + i]; }
#else
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<f32>;
@group(0) @binding(3) var<storage, read> BF: array<f32>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read> CK: array<f32>;
#ifdef GVEC
@group(0) @binding(6) var<storage, read> G: array<vec2<f32>>;
#else
@group(0) @binding(6) var<storage, read> G: array<f32>;
#endif
@group(0) @binding(7) var<storage, read> GF: array<f32>;
@group(0) @binding(8) var<storage, read_write> DX: array<f32>;
@group(0) @binding(9) var<storage, read_write> DS0: array<f32>;
@group(0) @binding(10) var<storage, read_write> PART: array<f32>;
fn ld_a(i: u32) -> f32 { return A[P.off_a + i]; }
fn ld_b(i: u32) -> f32 { return BF[P.off_b + i]; }
fn ld_gf(i: u32) -> f32 { return GF[P.off_gf + i]; }
#endif

// Complex element i of grad_s (P.off_g counts floats).
fn load_g(i: u32) -> vec2<f32> {
#ifdef GVEC
    return G[P.off_g / 2u + i];
#else
    return vec2<f32>(G[P.off_g + 2u * i], G[P.off_g + 2u * i + 1u]);
#endif
}

// Segment state of workgroup g at off_seg: `acc` of its WG threads (2 words each), then per
// channel column ql the carry (2 words), the anchor's u, ul (2 + 2) and f32(n) (n < 2^24,
// exact), 7 words per column: 2 WG + 7 W words per workgroup.
fn seg_acc(g: u32, lid: u32) -> u32 {
    return P.off_seg + g * (2u * WG + 7u * W) + 2u * lid;
}
fn seg_col(g: u32, ql: u32) -> u32 {
    return P.off_seg + g * (2u * WG + 7u * W) + 2u * WG + 7u * ql;
}

// Re(H) of every thread's E steps, for the sums over c.
var<workgroup> red: array<f32, 1024>;

// start_t, with every t >= T counted as a start (nothing flows across the end).
fn started(row: u32, t: u32) -> bool {
    if t >= P.T {
        return true;
    }
    return (P.flags & HAS_START) != 0u && START[P.off_start + row * P.T + t] != 0u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.rows * P.nblk {
        return;
    }
    let row = g / P.nblk;
    let blk = g % P.nblk;
    let ql = lid % W;
    let j = lid / W;
    let tl = WG / W;
    let ch = channel(blk, ql, P.mb, P.cw, P.ncb, P.M, P.C);
    let T = P.T;
    let MC = P.M * P.C;
    let q = ch.m * P.C + ch.c;
    var la = 0.0;
    var lb = 0.0;
    if ch.live {
        la = ld_a(ch.m);
        lb = reduce_angle(ld_b(ch.c));
    }
    let gam = cpow(la, lb, 1u);
    let cgam = cconj(gam);
    let pw = lane_powers(la, lb);
    let pre_f = cpow(la, lb, E * j);
    let pre_r = cconj(cpow(la, lb, E * (tl - 1u - j)));
    // the carry of H, anchored (ffm/common.wgsl), kept by lane 0 (the last in reverse order)
    var anr = anchor_at(vec2<f32>(0.0));
    var acc = vec2<f32>(0.0);
    if (P.flags & SEG_CONT) != 0u {
        // the state the previous segment (the chunks after k_hi) left
        let ia = seg_acc(g, lid);
        acc = vec2<f32>(PART[ia], PART[ia + 1u]);
        if j == 0u {
            let ic = seg_col(g, ql);
            carry[ql] = vec2<f32>(PART[ic], PART[ic + 1u]);
            anr = Anchor(vec2<f32>(PART[ic + 2u], PART[ic + 3u]),
                         vec2<f32>(PART[ic + 4u], PART[ic + 5u]), u32(PART[ic + 6u]));
        }
    } else if j == 0u {
        carry[ql] = vec2<f32>(0.0);
    }
    let pe = cpow(la, lb, E);
    let L = tl * E;
    for (var kk = 0u; kk < P.k_hi - P.k_lo; kk++) {
        let k = P.k_hi - 1u - kk;
        let t0 = k * L + j * E;
        // ---- recompute S_{t-1} for this lane's steps
        var xs: array<f32, E>;
        var rs: array<bool, E>;
        var any = false;
        var xl = vec2<f32>(0.0);
        for (var e = 0u; e < E; e++) {
            let t = t0 + e;
            var xe = 0.0;
            if ch.live && t < T {
                xe = X[P.off_x + (row * T + t) * P.M + ch.m];
            }
            xs[e] = xe;
            rs[e] = started(row, t);
            if rs[e] {
                xl = vec2<f32>(xe, 0.0);
                any = true;
            } else {
                xl = cmul(gam, xl) + vec2<f32>(xe, 0.0);
            }
        }
        let rn = started(row, t0 + E);
        let sp = lane_scan(lid, j, any, xl, false, pw);
        var s = sp.x;
        if !sp.any && ch.live {
            let i = P.off_ck + 2u * ((row * P.K + k) * MC + q);
            s += cmul(pre_f, vec2<f32>(CK[i], CK[i + 1u]));
        }
        var sprev: array<vec2<f32>, E>;
        for (var e = 0u; e < E; e++) {
            sprev[e] = s;
            let xe = vec2<f32>(xs[e], 0.0);
            if rs[e] {
                s = xe;
            } else {
                s = cmul(gam, s) + xe;
            }
        }
        // ---- reverse scan for H
        var gs: array<vec2<f32>, E>;
        var rr: array<bool, E>;
        for (var e = 0u; e < E; e++) {
            let t = t0 + e;
            var ge = vec2<f32>(0.0);
            if ch.live && t < T {
                ge = load_g((row * T + t) * MC + q);
                if t + 1u == T && (P.flags & HAS_GF) != 0u {
                    let f = 2u * (row * MC + q);
                    ge += vec2<f32>(ld_gf(f), ld_gf(f + 1u));
                }
            }
            gs[e] = ge;
            // H_t drops H_{t+1} when step t+1 starts an episode
            if e + 1u < E {
                rr[e] = rs[e + 1u];
            } else {
                rr[e] = rn;
            }
        }
        var anyr = false;
        var hl = vec2<f32>(0.0);
        for (var e = E; e > 0u; e--) {
            if rr[e - 1u] {
                hl = gs[e - 1u];
                anyr = true;
            } else {
                hl = cmul(cgam, hl) + gs[e - 1u];
            }
        }
        let su = lane_scan(lid, j, anyr, hl, true, pw);
        var h = su.x;
        if !su.any {
            h += cmul(pre_r, carry[ql]);
        }
        workgroupBarrier();
        for (var e = E; e > 0u; e--) {
            let ei = e - 1u;
            if rr[ei] {
                h = gs[ei];
            } else {
                h = cmul(cgam, h) + gs[ei];
            }
            let t = t0 + ei;
            var hr = 0.0;
            if ch.live && t < T {
                hr = h.x;
                if !rs[ei] {
                    acc += cmul(cconj(sprev[ei]), h);
                }
                if t == 0u {
                    var d = vec2<f32>(0.0);
                    if !rs[0] {
                        d = cmul(cgam, h);
                    }
                    let i = P.off_ds0 + 2u * (row * MC + q);
                    DS0[i] = d.x;
                    DS0[i + 1u] = d.y;
                }
            }
            red[ei * WG + lid] = hr;
        }
        if j == 0u {
            // the chunk's result from a zero state (reverse order: this lane's span after
            // the later lanes), into the anchored carry of conj(gamma)
            var xk = hl;
            if !anyr {
                xk = cmul(cconj(pe), su.x) + hl;
            }
            anr = anchor_next(anr, anyr || su.any, xk, la, -lb, L);
            carry[ql] = anchor_state(anr, la, -lb);
        }
        workgroupBarrier();
        // ---- dx over this chunk's steps: item (step s, memory column ml), ml fastest
        let m0 = blk * P.mb;
        for (var i = lid; i < P.mb * L; i += WG) {
            let ml = i % P.mb;
            let st = i / P.mb;
            let t = k * L + st;
            let m = m0 + ml;
            if t < T && m < P.M {
                let base = (st % E) * WG + (st / E) * W + ml * P.C;
                var sum = 0.0;
                for (var c = 0u; c < P.C; c++) {
                    sum += red[base + c];
                }
                DX[P.off_dx + (row * T + t) * P.M + m] = sum;
            }
        }
        workgroupBarrier();
    }
    if (P.flags & SEG_MORE) != 0u {
        // chunks k_lo - 1 .. 0 are the next segments': keep the state for them
        let ia = seg_acc(g, lid);
        PART[ia] = acc.x;
        PART[ia + 1u] = acc.y;
        if j == 0u {
            let ic = seg_col(g, ql);
            PART[ic] = carry[ql].x;
            PART[ic + 1u] = carry[ql].y;
            PART[ic + 2u] = anr.u.x;
            PART[ic + 3u] = anr.u.y;
            PART[ic + 4u] = anr.ul.x;
            PART[ic + 5u] = anr.ul.y;
            PART[ic + 6u] = f32(anr.n);
        }
        return;
    }
    // ---- this row's dlog = conj(gamma) dgamma, lanes summed in order
    sx[lid] = acc;
    workgroupBarrier();
    if j == 0u && ch.live {
        var sum = vec2<f32>(0.0);
        for (var jj = 0u; jj < tl; jj++) {
            sum += sx[jj * W + ql];
        }
        let d = cmul(cgam, sum);
        let i = P.off_part + 2u * (row * MC + q);
        PART[i] = d.x;
        PART[i + 1u] = d.y;
    }
}
