// docs/efla.md, recurrent algorithm, backward pass 3 of 3. Given u_t (pass 1) and w_t = dS_t^T k_t
// (pass 2), both recurrences are independent row by row:
//   forward:  P = start_t ? 0 : S;  S = P + alpha k u^T;  dq_t = scale S do_t;  dk_t = -alpha P w_t
//   reverse:  dS += scale q do^T;   dk_t += alpha dS u_t + dkf * dalpha k_t,  dalpha = u_t . w_t
//             dS = start_t ? 0 : dS - alpha k w^T
// plus dv_t = alpha w_t and dbeta_t = dalpha * dbf (the first workgroup of each head writes
// those). The two halves are separate variants (define REVERSE), each walking its steps in
// one or more dispatches with the row state carried in scratch; the forward half leaves
// -alpha P w in scratch for the reverse half, and its last dispatch leaves the reverse half's
// starting row state (the final-state gradient, or zero) in the carry, so each half binds at
// most 8 storage buffers (WebGPU's default limit): forward 7, reverse 8.
//
// Threads: one workgroup per (batch row, head, tile of 32 rows of S); virtual thread
// vid = 8 * row + lane owns columns lane, lane + 8, ... of its row (<= 32 values); the sums
// over V are added over the 8 lanes of the row (efla/lanes.wgsl).
//! variant:
//! variant: REVERSE
//! variant: SUBGROUP
//! variant: SUBGROUP REVERSE
//! variant: F16
//! variant: F16 REVERSE
//! variant: F16 SUBGROUP
//! variant: F16 SUBGROUP REVERSE
//! variant: F16P
//! variant: F16P REVERSE
//! variant: F16P SUBGROUP
//! variant: F16P SUBGROUP REVERSE
//! variant: BF16
//! variant: BF16 REVERSE
//! variant: BF16 SUBGROUP
//! variant: BF16 SUBGROUP REVERSE
#ifdef F16
enable f16;
#endif
#include "efla/params.wgsl"
#include "efla/storage.wgsl"
#include "efla/lanes.wgsl"

// Columns of S per lane, ceil(V / 8): a pipeline constant, so every loop over them has a fixed
// trip count (unrolled, values in registers).
override RV: u32 = 32u;

@group(0) @binding(1) var<storage, read> KK: array<SEQ>;
@group(0) @binding(2) var<storage, read> GO: array<SEQ>;
@group(0) @binding(3) var<storage, read> START: array<u32>;
@group(0) @binding(4) var<storage, read_write> SCR: array<f32>;
#ifdef REVERSE
@group(0) @binding(5) var<storage, read> Q: array<SEQ>;
@group(0) @binding(6) var<storage, read_write> DK: array<f32>;
@group(0) @binding(7) var<storage, read_write> DV: array<f32>;
@group(0) @binding(8) var<storage, read_write> DBETA: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
#else
@group(0) @binding(5) var<storage, read> S0: array<f32>;
@group(0) @binding(6) var<storage, read> GF: array<f32>;
@group(0) @binding(7) var<storage, read_write> DQ: array<f32>;
#endif

fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_go(i: u32) -> f32 { return up(GO[sw(P.off_go + i)], P.off_go + i); }

fn reset(bl: u32, t: u32) -> bool {
    return (P.flags & HAS_START) != 0u && START[P.off_start + bl * P.T + t] != 0u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUP
        @builtin(subgroup_id) sg_id: u32, @builtin(subgroup_size) sg_size: u32,
        @builtin(subgroup_invocation_id) sg_inv: u32,
#endif
        @builtin(local_invocation_index) lidx: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.ntiles {
        return;
    }
#ifdef SUBGROUP
    let vid = sg_id * sg_size + sg_inv;
#else
    let vid = lidx;
#endif
    let bh = g / P.ntiles;
    let tile = g % P.ntiles;
    let bl = bh / P.hg;
    let h = P.h0 + bh % P.hg;
    let lane = vid & 7u;
    let r = tile * 32u + (vid >> 3u);
    let live = r < P.K;
    let K = P.K;
    let V = P.V;
    let sb = state_at(bl, h);

    let cy = P.r_carry + bh * K * V;
    var row: array<f32, 32>;
#ifndef REVERSE
    {
        // forward: dq and the -alpha P w part of dk, over steps t_begin .. t_end
        for (var j = 0u; j < RV; j++) {
            let c = lane + 8u * j;
            var x = 0.0;
            if live && c < V {
                if P.t_begin > 0u {
                    x = SCR[cy + r * V + c];
                } else if (P.flags & HAS_S0) != 0u {
                    x = S0[P.off_s0 + sb + r * V + c];
                }
            }
            row[j] = x;
        }
        for (var t = P.t_begin; t < P.t_end; t++) {
            if reset(bl, t) {
                for (var j = 0u; j < RV; j++) {
                    row[j] = 0.0;
                }
            }
            let alpha = SCR[P.r_coef + scr_at(bh, t, 4u)];
            var kr = 0.0;
            if live {
                kr = ld_k(seq_at(bl, t, h, K) + r);
            }
            let ak = alpha * kr;
            let vb = seq_at(bl, t, h, V);
            let ub = scr_at(bh, t, V);
            var part = vec4<f32>(0.0);
            for (var j = 0u; j < RV; j++) {
                let c = lane + 8u * j;
                if c < V {
                    let p = row[j];
                    part.y += p * SCR[P.r_w + ub + c];
                    row[j] = p + ak * SCR[P.r_u + ub + c];
                    part.x += row[j] * ld_go(vb + c);
                }
            }
            let tot = lane_sum(vid, part);
            if lane == 0u && live {
                DQ[P.off_dq + seq_at(bl, t, h, K) + r] = P.scale * tot.x;
                SCR[P.r_dka + scr_at(bh, t, K) + r] = -alpha * tot.y;
            }
        }
        // the last forward dispatch hands the reverse half its starting row: dS_T
        if P.t_end == P.T {
            for (var j = 0u; j < RV; j++) {
                let c = lane + 8u * j;
                var x = 0.0;
                if live && c < V && (P.flags & HAS_GF) != 0u {
                    x = GF[P.off_gf + sb + r * V + c];
                }
                row[j] = x;
            }
        }
    }
#else
    {
        // reverse, over steps t_end - 1 down to t_begin: the alpha dS u part of dk, the rule's
        // dk term, dbeta and dv; the row starts from the carry (dS_T from the forward half's
        // last dispatch, or this half's previous dispatch)
        for (var j = 0u; j < RV; j++) {
            let c = lane + 8u * j;
            var x = 0.0;
            if live && c < V {
                x = SCR[cy + r * V + c];
            }
            row[j] = x;
        }
        for (var tt = P.t_begin; tt < P.t_end; tt++) {
            let t = P.t_end - 1u - (tt - P.t_begin);
            let ci = P.r_coef + scr_at(bh, t, 4u);
            let co = vec3<f32>(SCR[ci], SCR[ci + 1u], SCR[ci + 2u]);
            var kr = 0.0;
            var qr = 0.0;
            if live {
                kr = ld_k(seq_at(bl, t, h, K) + r);
                qr = P.scale * ld_q(seq_at(bl, t, h, K) + r);
            }
            let ak = co.x * kr;
            let vb = seq_at(bl, t, h, V);
            let ub = scr_at(bh, t, V);
            var part = vec4<f32>(0.0);
            for (var j = 0u; j < RV; j++) {
                let c = lane + 8u * j;
                if c < V {
                    let uc = SCR[P.r_u + ub + c];
                    let wc = SCR[P.r_w + ub + c];
                    let d = row[j] + qr * ld_go(vb + c);
                    part.x += d * uc;
                    part.y += uc * wc;
                    row[j] = d - ak * wc;
                }
            }
            let tot = lane_sum(vid, part);
            if reset(bl, t) {
                for (var j = 0u; j < RV; j++) {
                    row[j] = 0.0;
                }
            }
            if lane == 0u && live {
                let di = scr_at(bh, t, K) + r;
                DK[P.off_dk + seq_at(bl, t, h, K) + r] =
                    SCR[P.r_dka + di] + co.x * tot.x + co.y * tot.y * kr;
            }
            if tile == 0u {
                if vid == 0u {
                    DBETA[P.off_dbeta + seq_at(bl, t, h, 1u)] = tot.y * co.z;
                }
                if vid < V {
                    DV[P.off_dv + vb + vid] = co.x * SCR[P.r_w + ub + vid];
                }
            }
        }
    }
#endif
    // the row state for the next dispatch of this half (or, after the forward half, the
    // reverse half's start)
    if live {
        for (var j = 0u; j < RV; j++) {
            let c = lane + 8u * j;
            if c < V {
                SCR[cy + r * V + c] = row[j];
            }
        }
    }
}
