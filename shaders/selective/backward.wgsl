// docs/selective.md, selective scan backward. With a_t = start_t ? 0 : exp(dt_t A[d][n]) and the
// adjoint H_t[n] = dy_t Cm_t[n] + a_{t+1} H_{t+1}[n] (H after T-1: grad_final):
//   dy = z ? dout silu(z) : dout,  dz = dout y silu'(z)
//   du_t = dt_t sum_n Bm_t H_t + Dskip dy_t
//   ddt_t = u_t sum_n Bm_t H_t + sum_n A a_t h_{t-1} H_t,  ddelta = ddt * d(dt)/d(delta)
//   dA += dt a h_{t-1} H,  dBm += dt u H,  dCm += dy h_t,  dDskip += dy u,  dbias += ddelta,
//   dh0 = a_0 H_0.
// Thread layout: see selective/common.wgsl (one workgroup per (batch row, block of CB
// channels), one thread per (channel, state)). No state sequence is stored: the workgroup
// first sweeps forward and checkpoints the state every CK = S * L steps (RS scratch), then
// walks the checkpoint intervals from the end: it re-advances an interval to get the state at
// each of its S chunks (registers), and for each chunk from the last recomputes the L states
// (registers), the outputs y (for dz and dy), then runs the adjoint backwards through the
// chunk. Sums over n use workgroup memory in a fixed order (or a subgroup butterfly with
// SUBGROUPS); input-dependent dBm / dCm are summed over the block's channels of each group in
// a fixed order and written directly, or as per-block partials (RS) that
// selective/reduce_groups.wgsl adds when a group spans several blocks. dA, fixed dBm / dCm,
// dDskip and dbias are per-thread / per-channel sums written as per-row partials (PP) that
// common/reduce_rows.wgsl adds over rows. No float atomics.
// PACKED (WebGPU's default limits): 4-step chunks, 16 per checkpoint interval (14 KiB of
// workgroup memory instead of 25) and 7 storage buffers: u, delta, Bm, Cm, the packed small
// arguments SM, a f32 workspace WS and PP. The launcher's passes around this one
// (selective/gate.wgsl, selective/cast.wgsl) put dy = dout silu(z) into WS before it, and
// turn what it leaves in WS (y before the gate, du, ddelta, dBm / dCm, dh0) into dz and the
// outputs after it.
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

// steps per chunk, chunks per checkpoint interval (CK = CHECKPOINT in wgpu.rs)
#ifdef PACKED
const L: u32 = 4u;
const S: u32 = 16u;
#else
const L: u32 = 8u;
const S: u32 = 8u;
#endif
const CK: u32 = L * S;
const LC: u32 = L * CBMAX;
// channels of one group inside a block (input-dependent Bm / Cm; set by the launcher)
override CW: u32 = 1u;

#ifdef PACKED
@group(0) @binding(5) var<storage, read> SM: array<u32>;
// this dispatch's rows: dy at off_o, y (with z) at off_dz, du at off_du, ddelta at off_ddelta,
// dBm / dCm (f32) at off_dbm / off_dcm or their per-block partials at off_rs, checkpoints at
// off_ck, dh0 at off_dh0
@group(0) @binding(6) var<storage, read_write> WS: array<f32>;
@group(0) @binding(7) var<storage, read_write> PP: array<f32>;
#else
@group(0) @binding(11) var<storage, read> GOUT: array<SEQ>;
@group(0) @binding(12) var<storage, read> GF: array<f32>;
@group(0) @binding(13) var<storage, read_write> DU: array<SEQ_OUT>;
@group(0) @binding(14) var<storage, read_write> DDELTA: array<SEQ_OUT>;
@group(0) @binding(15) var<storage, read_write> DZ: array<SEQ_OUT>;
@group(0) @binding(16) var<storage, read_write> DH0: array<f32>;
// per-row partials, bound whole: dA [B, D, N], dDskip [B, D], dbias [B, D], then (fixed
// Bm/Cm) dBm [B, D, N], dCm [B, D, N]
@group(0) @binding(17) var<storage, read_write> PP: array<f32>;
// this dispatch's rows: checkpoints [rows, kc, D, N] at 0, then (at off_rs) the per-block
// partials of input-dependent dBm and dCm, [rows, T, nb, N] each
@group(0) @binding(18) var<storage, read_write> RS: array<f32>;
#ifndef FIXED_BC
@group(0) @binding(19) var<storage, read_write> DBM: array<SEQ_OUT>;
@group(0) @binding(20) var<storage, read_write> DCM: array<SEQ_OUT>;
#endif
#endif

// dy, ddelta, and the two sums over n, of (step e, channel c) at e * CB + c
var<workgroup> s_dy: array<f32, LC>;
var<workgroup> s_dd: array<f32, LC>;
var<workgroup> s_y: array<f32, LC>;
var<workgroup> s_y2: array<f32, LC>;
// per (e, c, n) values at (e * CB + c) * NP + n: the terms of the sums over n, then the
// terms of dBm / dCm for the sums over channels
var<workgroup> s_r: array<f32, L * WG>;
var<workgroup> s_r2: array<f32, L * WG>;
var<workgroup> s_part: array<f32, WG>;
var<workgroup> s_part2: array<f32, WG>;
var<workgroup> s_sgw: u32;

#ifndef PACKED
fn rd_gout(i: u32) -> f32 {
    let j = P.off_o + i;
#ifdef BF16
    return bf16_at(GOUT[j >> 1u], j);
#else
    return f32(GOUT[j]);
#endif
}

fn rd_z(i: u32) -> f32 {
    let j = P.off_z + i;
#ifdef BF16
    return bf16_at(Z[j >> 1u], j);
#else
    return f32(Z[j]);
#endif
}
#endif

// checkpoint i of this dispatch's rows
fn ck_st(i: u32, v: f32) {
#ifdef PACKED
    WS[P.off_ck + i] = v;
#else
    RS[i] = v;
#endif
}
fn ck_ld(i: u32) -> f32 {
#ifdef PACKED
    return WS[P.off_ck + i];
#else
    return RS[i];
#endif
}

// element i of the per-block partials of dBm / dCm
fn part_st(i: u32, v: f32) {
#ifdef PACKED
    WS[P.off_rs + i] = v;
#else
    RS[P.off_rs + i] = v;
#endif
}

fn wr_dh0(i: u32, v: f32) {
#ifdef PACKED
    WS[P.off_dh0 + i] = v;
#else
    DH0[P.off_dh0 + i] = v;
#endif
}

fn ld_gf(i: u32) -> f32 {
#ifdef PACKED
    return bitcast<f32>(SM[P.off_f + i]);
#else
    return GF[P.off_f + i];
#endif
}

fn wr_du(i: u32, v: f32) {
    let j = P.off_du + i;
#ifdef PACKED
    WS[j] = v;
#else
#ifdef BF16
    atomicOr(&DU[j >> 1u], bf16_word(v, j));
#else
    DU[j] = SEQ(v);
#endif
#endif
}

fn wr_ddelta(i: u32, v: f32) {
    let j = P.off_ddelta + i;
#ifdef PACKED
    WS[j] = v;
#else
#ifdef BF16
    atomicOr(&DDELTA[j >> 1u], bf16_word(v, j));
#else
    DDELTA[j] = SEQ(v);
#endif
#endif
}

#ifndef PACKED
fn wr_dz(i: u32, v: f32) {
    let j = P.off_dz + i;
#ifdef BF16
    atomicOr(&DZ[j >> 1u], bf16_word(v, j));
#else
    DZ[j] = SEQ(v);
#endif
}
#endif

#ifndef FIXED_BC
fn wr_dbc(i: u32, vb: f32, vc: f32) {
    let jb = P.off_dbm + i;
    let jc = P.off_dcm + i;
#ifdef PACKED
    WS[jb] = vb;
    WS[jc] = vc;
#else
#ifdef BF16
    atomicOr(&DBM[jb >> 1u], bf16_word(vb, jb));
    atomicOr(&DCM[jc >> 1u], bf16_word(vc, jc));
#else
    DBM[jb] = SEQ(vb);
    DCM[jc] = SEQ(vc);
#endif
#endif
}
#endif

// Leave term v of (step e, channel c, state n) for the sum over n into s_y (which = 0) or
// s_y2 (which = 1): raw in s_r / s_r2 for reduce_n, or (subgroup path) summed over the
// channel's NP lanes by a butterfly and stored by lane n == 0.
fn put_n(e: u32, th: Th, v_in: f32, which: u32) {
    var v = v_in;
#ifdef SUBGROUPS
    if th.sgw > 0u {
        v = butterfly(v);
        if th.act && th.n == 0u {
            if which == 0u {
                s_y[e * CB + th.c] = v;
            } else {
                s_y2[e * CB + th.c] = v;
            }
        }
        return;
    }
#endif
    if th.act {
        let k = (e * CB + th.c) * NP + th.n;
        if which == 0u {
            s_r[k] = v;
        } else {
            s_r2[k] = v;
        }
    }
}

// Finish the sums over n (s_r -> s_y and, with `two`, s_r2 -> s_y2) of every (step, channel)
// pair of the chunk in a fixed order (workgroup-memory path; see finish_n in forward.wgsl).
fn reduce_n(lid: u32, len: u32, sgw: u32, two: bool) {
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
                var s2 = 0.0;
                for (var j = 0u; j < max(2u * L, QMAX); j++) {
                    if j < w && n0 + j < P.N {
                        s += s_r[p * NP + n0 + j];
                        if two {
                            s2 += s_r2[p * NP + n0 + j];
                        }
                    }
                }
                if q == 1u {
                    s_y[p] = s;
                    s_y2[p] = s2;
                } else {
                    s_part[idx] = s;
                    s_part2[idx] = s2;
                }
            }
        }
        workgroupBarrier();
        if q > 1u && lid < pairs {
            var s = 0.0;
            var s2 = 0.0;
            for (var j = 0u; j < QMAX; j++) {
                if j < q {
                    s += s_part[lid * q + j];
                    s2 += s_part2[lid * q + j];
                }
            }
            s_y[lid] = s;
            s_y2[lid] = s2;
        }
    }
}

#ifndef FIXED_BC
// Sum the dBm / dCm terms in s_r / s_r2 over the block's channels of each group (channels in
// ascending order) and write them, or the block's partial when a group spans blocks.
fn reduce_c(lid: u32, b: u32, t0: u32, len: u32, d0: u32, blk: u32) {
    let pairs = len * (CB / CW) * P.N;
    for (var r = 0u; r < L; r++) {
        let idx = lid + r * WG;
        let n = idx % P.N;
        let q = idx / P.N;
        let c0 = (q % (CB / CW)) * CW;
        let e = q / (CB / CW);
        let dfirst = d0 + c0;
        if idx < pairs && dfirst < P.D {
            var sb = 0.0;
            var sc = 0.0;
            for (var j = 0u; j < CW; j++) {
                let k = (e * CB + c0 + j) * NP + n;
                sb += s_r[k];
                sc += s_r2[k];
            }
            let t = t0 + e;
            if P.bpg == 1u {
                wr_dbc(((b * P.T + t) * P.G + dfirst / P.dg) * P.N + n, sb, sc);
            } else {
                let o = ((b * P.T + t) * P.nb + blk) * P.N + n;
                part_st(o, sb);
                part_st(P.rows * P.T * P.nb * P.N + o, sc);
            }
        }
    }
}
#endif

// A thread's running sums over the backward (see main).
struct Acc {
    hc: f32,
    da: f32,
    db: f32,
    dc: f32,
    dsk: f32,
    dbias: f32,
}

// Step e of a chunk without outputs (the checkpoint sweeps).
fn adv_step(e: u32, th: Th, h: ptr<function, f32>) {
    if th.live && e < th.len {
        *h = step_state(th, e, *h);
    }
}

// Advance the state over a whole chunk starting at t0 (stages dt and u; every thread calls).
fn advance(lid: u32, d0: u32, th_in: Th, t0: u32, h: ptr<function, f32>) {
    var th = th_in;
    th.t0 = t0;
    th.len = L;
    stage(lid, th.b, t0, L, d0);
    workgroupBarrier();
    adv_step(0u, th, h);
    adv_step(1u, th, h);
    adv_step(2u, th, h);
    adv_step(3u, th, h);
#ifdef PACKED
    const_assert L == 4u;
#else
    const_assert L == 8u;
    adv_step(4u, th, h);
    adv_step(5u, th, h);
    adv_step(6u, th, h);
    adv_step(7u, th, h);
#endif
    workgroupBarrier();
}

// Recompute step e of the chunk: state, decay, and the term Cm h of y.
fn rec_step(e: u32, th: Th, h: ptr<function, f32>, hs: ptr<function, array<f32, L>>,
            as_: ptr<function, array<f32, L>>) {
    if e >= th.len {
        return;
    }
    var v = 0.0;
    if th.live {
        *h = step_state(th, e, *h);
        (*hs)[e] = *h;
        (*as_)[e] = decay_at(th, e).x;
        v = bc_at(th, e, 1u) * *h;
    }
    put_n(e, th, v, 0u);
}

// The adjoint at step e (steps taken from the chunk's end): H = dy Cm + the carried adjoint,
// the terms of the sums over n for du / ddelta, and the thread's sums of dA (and fixed dBm,
// dCm); carries a_e H to step e - 1.
fn rev_step(e: u32, th: Th, h_start: f32, hs: ptr<function, array<f32, L>>,
            as_: ptr<function, array<f32, L>>, hadj: ptr<function, array<f32, L>>,
            acc: ptr<function, Acc>) {
    if e >= th.len {
        return;
    }
    var v1 = 0.0;
    var v2 = 0.0;
    if th.live {
        let j = e * CB + th.c;
        let dt = s_dt[j];
        let dy = s_dy[j];
        let hg = dy * bc_at(th, e, 1u) + (*acc).hc;
        var hprev = h_start;
        if e > 0u {
            hprev = (*hs)[e - 1u];
        }
        // across a reset nothing flows either way (selects: NaN * 0 would be NaN)
        let rs = reset_at(e);
        let a = (*as_)[e];
        v1 = bc_at(th, e, 0u) * hg;
        if !rs {
            let w = a * hprev * hg;
            v2 = th.an * w;
            (*acc).da += dt * w;
        }
#ifdef FIXED_BC
        (*acc).db += dt * s_u[j] * hg;
        (*acc).dc += dy * (*hs)[e];
#endif
        (*hadj)[e] = hg;
        (*acc).hc = select(a * hg, 0.0, rs);
    }
    put_n(e, th, v1, 0u);
    put_n(e, th, v2, 1u);
}

#ifndef FIXED_BC
// The terms of input-dependent dBm and dCm at step e, for the sums over channels.
fn dbc_step(e: u32, th: Th, hs: ptr<function, array<f32, L>>, hadj: ptr<function, array<f32, L>>) {
    if th.act && e < th.len {
        let j = e * CB + th.c;
        var vb = 0.0;
        var vc = 0.0;
        if th.live {
            vb = s_dt[j] * s_u[j] * (*hadj)[e];
            vc = s_dy[j] * (*hs)[e];
        }
        s_r[j * NP + th.n] = vb;
        s_r2[j * NP + th.n] = vc;
    }
}
#endif

// Channel lid's sums of dDskip and dbias at step e (threads lid < CB).
fn chan_step(e: u32, lid: u32, len: u32, acc: ptr<function, Acc>) {
    if lid < CB && e < len {
        (*acc).dsk += s_dy[e * CB + lid] * s_u[e * CB + lid];
        (*acc).dbias += s_dd[e * CB + lid];
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
    let blk = g % P.nb;
    let d0 = blk * CB;
    var li = lid;
    if lid == 0u {
        s_sgw = 0u;
    }
#ifdef SUBGROUPS
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
    let DN = P.D * P.N;
    let KC = P.kc;
    var h = 0.0;
    var acc = Acc(0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    if th.live {
        if (P.flags & HAS_H0) != 0u {
            h = ld_h0((b * P.D + d) * P.N + th.n);
        }
        if (P.flags & HAS_GF) != 0u {
            acc.hc = ld_gf((b * P.D + d) * P.N + th.n);
        }
    }
    let ck = (b * KC * P.D + d) * P.N + th.n;

    // sweep forward: the state entering each checkpoint interval
    for (var kc = 0u; kc + 1u < KC; kc++) {
        if th.live {
            ck_st(ck + kc * DN, h);
        }
        for (var s = 0u; s < S; s++) {
            advance(lid, d0, th, kc * CK + s * L, &h);
        }
    }
    if th.live {
        ck_st(ck + (KC - 1u) * DN, h);
    }

    for (var kr = 0u; kr < KC; kr++) {
        let kc = KC - 1u - kr;
        let tk = kc * CK;
        let ns = (min(CK, T - tk) + L - 1u) / L;
        // the state entering each chunk of the interval
        var sub: array<f32, S>;
        var hk = 0.0;
        if th.live {
            hk = ck_ld(ck + kc * DN);
        }
        for (var s = 0u; s + 1u < ns; s++) {
            sub[s] = hk;
            advance(lid, d0, th, tk + s * L, &hk);
        }
        sub[ns - 1u] = hk;

        for (var sr = 0u; sr < ns; sr++) {
            let s = ns - 1u - sr;
            let t0 = tk + s * L;
            let len = min(L, T - t0);
            th.t0 = t0;
            th.len = len;
            stage(lid, b, t0, len, d0);
            workgroupBarrier();

            // recompute the chunk's states and the terms of y
            var hs: array<f32, L>;
            var as_: array<f32, L>;
            let h_start = sub[s];
            var hh = h_start;
            rec_step(0u, th, &hh, &hs, &as_);
            rec_step(1u, th, &hh, &hs, &as_);
            rec_step(2u, th, &hh, &hs, &as_);
            rec_step(3u, th, &hh, &hs, &as_);
#ifndef PACKED
            rec_step(4u, th, &hh, &hs, &as_);
            rec_step(5u, th, &hh, &hs, &as_);
            rec_step(6u, th, &hh, &hs, &as_);
            rec_step(7u, th, &hh, &hs, &as_);
#endif
            workgroupBarrier();
            reduce_n(lid, len, th.sgw, false);
            workgroupBarrier();

            // y, dz and dy of each (step, channel)
            for (var r = 0u; r < (LC + WG - 1u) / WG; r++) {
                let idx = lid + r * WG;
                let dd = d0 + idx % CB;
                if idx < len * CB && dd < P.D {
                    let i = (b * T + t0 + idx / CB) * P.D + dd;
#ifdef PACKED
                    // dy from selective/gate.wgsl; y for its dz pass
                    let dy = WS[P.off_o + i];
                    if (P.flags & HAS_Z) != 0u {
                        var y = s_y[idx];
                        if (P.flags & HAS_DSKIP) != 0u {
                            y += ld_dskip(dd) * s_u[idx];
                        }
                        WS[P.off_dz + i] = y;
                    }
#else
                    let go = rd_gout(i);
                    var dy = go;
                    if (P.flags & HAS_Z) != 0u {
                        var y = s_y[idx];
                        if (P.flags & HAS_DSKIP) != 0u {
                            y += ld_dskip(dd) * s_u[idx];
                        }
                        let zz = rd_z(i);
                        let sg = sigmoid(zz);
                        wr_dz(i, go * y * sg * (1.0 + zz * (1.0 - sg)));
                        dy = go * zz * sg;
                    }
#endif
                    s_dy[idx] = dy;
                }
            }
            workgroupBarrier();

            // the adjoint, backwards through the chunk
            var hadj: array<f32, L>;
#ifndef PACKED
            rev_step(7u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(6u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(5u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(4u, th, h_start, &hs, &as_, &hadj, &acc);
#endif
            rev_step(3u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(2u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(1u, th, h_start, &hs, &as_, &hadj, &acc);
            rev_step(0u, th, h_start, &hs, &as_, &hadj, &acc);
            workgroupBarrier();
            reduce_n(lid, len, th.sgw, true);
            workgroupBarrier();

            // du and ddelta of each (step, channel)
            for (var r = 0u; r < (LC + WG - 1u) / WG; r++) {
                let idx = lid + r * WG;
                let dd = d0 + idx % CB;
                if idx < len * CB && dd < P.D {
                    let i = (b * T + t0 + idx / CB) * P.D + dd;
                    var dsk = 0.0;
                    if (P.flags & HAS_DSKIP) != 0u {
                        dsk = ld_dskip(dd);
                    }
                    wr_du(i, s_dt[idx] * s_y[idx] + dsk * s_dy[idx]);
                    let ddl = (s_u[idx] * s_y[idx] + s_y2[idx]) * s_fac[idx];
                    wr_ddelta(i, ddl);
                    s_dd[idx] = ddl;
                }
            }
#ifndef FIXED_BC
            // the terms of dBm and dCm, summed over channels
            dbc_step(0u, th, &hs, &hadj);
            dbc_step(1u, th, &hs, &hadj);
            dbc_step(2u, th, &hs, &hadj);
            dbc_step(3u, th, &hs, &hadj);
#ifndef PACKED
            dbc_step(4u, th, &hs, &hadj);
            dbc_step(5u, th, &hs, &hadj);
            dbc_step(6u, th, &hs, &hadj);
            dbc_step(7u, th, &hs, &hadj);
#endif
            workgroupBarrier();
            reduce_c(lid, b, t0, len, d0, blk);
#else
            workgroupBarrier();
#endif
            // per-channel sums of dDskip and dbias (steps ascending within a chunk)
            chan_step(0u, lid, len, &acc);
            chan_step(1u, lid, len, &acc);
            chan_step(2u, lid, len, &acc);
            chan_step(3u, lid, len, &acc);
#ifndef PACKED
            chan_step(4u, lid, len, &acc);
            chan_step(5u, lid, len, &acc);
            chan_step(6u, lid, len, &acc);
            chan_step(7u, lid, len, &acc);
#endif
            workgroupBarrier();
        }
    }

    let row = P.row0 + b;
    let bdn = P.B * DN;
    if th.live {
        wr_dh0((b * P.D + d) * P.N + th.n, acc.hc);
        PP[P.off_pp + row * DN + d * P.N + th.n] = acc.da;
#ifdef FIXED_BC
        PP[P.off_pp + bdn + 2u * P.B * P.D + row * DN + d * P.N + th.n] = acc.db;
        PP[P.off_pp + 2u * bdn + 2u * P.B * P.D + row * DN + d * P.N + th.n] = acc.dc;
#endif
    }
    if lid < CB && d0 + lid < P.D {
        PP[P.off_pp + bdn + row * P.D + d0 + lid] = acc.dsk;
        PP[P.off_pp + bdn + P.B * P.D + row * P.D + d0 + lid] = acc.dbias;
    }
}
