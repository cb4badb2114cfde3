// docs/efla.md, recurrent algorithm, forward (also the decode path and the first pass of the
// recurrent backward). Token by token:
//   P = start_t ? 0 : S;  u = v_t - P^T k_t;  S = P + alpha_t k_t u^T;  o_t = scale S^T q_t
// with o_t = scale (P^T q_t + alpha_t (q_t . k_t) u) so one reduction per step serves all.
//
// Threads: one workgroup per (batch row, head, tile of 32 columns of S); virtual thread
// vid = 8 * col + lane owns column `col` of the tile and rows lane, lane + 8, ... of S
// (R = ceil(K / 8) <= 32 values in registers). Columns are independent; the four dot
// products over K of a step (k.P, q.P, q.k, k.k) are partial sums per lane, added over the
// 8 lanes of the column (efla/lanes.wgsl). No workgroup waits on another.
//
// WRITE_OUT: write o and s_final. Otherwise (backward) write u_t and the step coefficients
// to scratch. A dispatch covers steps t_begin .. t_end; the state crosses dispatches in
// s_final (or the carry region).
//! variant:
//! variant: SUBGROUP
//! variant: F16
//! variant: F16 SUBGROUP
//! variant: F16P
//! variant: F16P SUBGROUP
//! variant: BF16
//! variant: BF16 SUBGROUP
#ifdef F16
enable f16;
#endif
#include "efla/params.wgsl"
#include "efla/storage.wgsl"
#include "efla/coef.wgsl"
#include "efla/lanes.wgsl"

// Rows of S per lane, ceil(K / 8): a pipeline constant, so every loop over them has a fixed
// trip count (unrolled, values in registers).
override R: u32 = 32u;

@group(0) @binding(1) var<storage, read> Q: array<SEQ>;
@group(0) @binding(2) var<storage, read> KK: array<SEQ>;
@group(0) @binding(3) var<storage, read> VV: array<SEQ>;
@group(0) @binding(4) var<storage, read> BETA: array<SEQ>;
@group(0) @binding(5) var<storage, read> S0: array<f32>;
@group(0) @binding(6) var<storage, read> START: array<u32>;
// o (WRITE_OUT) or the scratch buffer (u)
@group(0) @binding(7) var<storage, read_write> OUT: array<f32>;
// s_final (WRITE_OUT) or the scratch buffer (coefficients)
@group(0) @binding(8) var<storage, read_write> OUT2: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_v(i: u32) -> f32 { return up(VV[sw(P.off_v + i)], P.off_v + i); }
fn ld_beta(i: u32) -> f32 { return up(BETA[sw(P.off_beta + i)], P.off_beta + i); }

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
    let col = tile * 32u + (vid >> 3u);
    let live = col < P.V;
    let K = P.K;
    let V = P.V;
    let efla = (P.flags & EFLA) != 0u;
    let write_out = (P.flags & WRITE_OUT) != 0u;

    var s: array<f32, 32>;
    var kr: array<f32, 32>;
    let sb = state_at(bl, h);
    // the state entering step t_begin: s0 (or zeros), else what the previous dispatch left in
    // s_final (WRITE_OUT) or the carry region
    let cb = P.r_carry + bh * K * V;
    for (var i = 0u; i < R; i++) {
        let r = lane + 8u * i;
        var x = 0.0;
        if live && r < K {
            if P.t_begin > 0u {
                if write_out {
                    x = OUT2[P.off_st + sb + r * V + col];
                } else {
                    x = OUT2[cb + r * V + col];
                }
            } else if (P.flags & HAS_S0) != 0u {
                x = S0[P.off_s0 + sb + r * V + col];
            }
        }
        s[i] = x;
    }
    for (var t = P.t_begin; t < P.t_end; t++) {
        if (P.flags & HAS_START) != 0u && START[P.off_start + bl * P.T + t] != 0u {
            for (var i = 0u; i < R; i++) {
                s[i] = 0.0;
            }
        }
        let kb = seq_at(bl, t, h, K);
        var part = vec4<f32>(0.0);
        for (var i = 0u; i < R; i++) {
            let r = lane + 8u * i;
            var kv = 0.0;
            var qv = 0.0;
            if r < K {
                kv = ld_k(kb + r);
                qv = ld_q(kb + r);
            }
            kr[i] = kv;
            part += vec4<f32>(kv * s[i], qv * s[i], qv * kv, kv * kv);
        }
        let tot = lane_sum(vid, part);
        let c = rule_coefs(efla, ld_beta(seq_at(bl, t, h, 1u)), tot.w);
        var u = 0.0;
        if live {
            u = ld_v(seq_at(bl, t, h, V) + col) - tot.x;
        }
        let au = c.x * u;
        for (var i = 0u; i < R; i++) {
            s[i] += kr[i] * au;
        }
        if lane == 0u && live {
            if write_out {
                OUT[P.off_o + seq_at(bl, t, h, V) + col] = P.scale * (tot.y + c.x * tot.z * u);
            } else {
                OUT[P.r_u + scr_at(bh, t, V) + col] = u;
            }
        }
        if !write_out && tile == 0u && vid == 0u {
            let ci = P.r_coef + scr_at(bh, t, 4u);
            OUT2[ci] = c.x;
            OUT2[ci + 1u] = c.y;
            OUT2[ci + 2u] = c.z;
        }
    }
    if live {
        for (var i = 0u; i < R; i++) {
            let r = lane + 8u * i;
            if r < K {
                if write_out {
                    OUT2[P.off_st + sb + r * V + col] = s[i];
                } else {
                    OUT2[cb + r * V + col] = s[i];
                }
            }
        }
    }
}
