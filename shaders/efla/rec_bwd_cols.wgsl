// docs/efla.md, recurrent algorithm, backward pass 2 of 3: the reverse recurrence of dS, column by
// column (columns of dS are independent given the per-step coefficients):
//   dS += scale q_t do_t^T;  w_t = dS^T k_t;  dS = start_t ? 0 : dS - alpha_t k_t w_t^T
// ending in ds0. Writes w_t (a V-vector per step) to scratch for pass 3 (rec_bwd_rows).
//
// Threads: as rec_fwd: one workgroup per (batch row, head, tile of 32 columns); vid = 8 * col
// + lane owns rows lane + 8i of column col; k . dS is summed over the 8 lanes. A dispatch
// covers steps t_end - 1 down to t_begin; dS crosses dispatches in the ds0 output.
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
#include "efla/lanes.wgsl"

// Rows of S per lane, ceil(K / 8): a pipeline constant, so every loop over them has a fixed
// trip count (unrolled, values in registers).
override R: u32 = 32u;

@group(0) @binding(1) var<storage, read> Q: array<SEQ>;
@group(0) @binding(2) var<storage, read> KK: array<SEQ>;
@group(0) @binding(3) var<storage, read> GO: array<SEQ>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read> GF: array<f32>;
@group(0) @binding(6) var<storage, read_write> SCR: array<f32>;
@group(0) @binding(7) var<storage, read_write> DS0: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_go(i: u32) -> f32 { return up(GO[sw(P.off_go + i)], P.off_go + i); }

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

    var ds: array<f32, 32>;
    var kr: array<f32, 32>;
    let sb = state_at(bl, h);
    for (var i = 0u; i < R; i++) {
        let r = lane + 8u * i;
        var x = 0.0;
        if live && r < K {
            if P.t_end < P.T {
                x = DS0[P.off_ds0 + sb + r * V + col];
            } else if (P.flags & HAS_GF) != 0u {
                x = GF[P.off_gf + sb + r * V + col];
            }
        }
        ds[i] = x;
    }
    for (var tt = P.t_begin; tt < P.t_end; tt++) {
        let t = P.t_end - 1u - (tt - P.t_begin);
        let kb = seq_at(bl, t, h, K);
        var go = 0.0;
        if live {
            go = P.scale * ld_go(seq_at(bl, t, h, V) + col);
        }
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
            ds[i] += qv * go;
            part.x += kv * ds[i];
        }
        let w = lane_sum(vid, part).x;
        if lane == 0u && live {
            SCR[P.r_w + scr_at(bh, t, V) + col] = w;
        }
        if (P.flags & HAS_START) != 0u && START[P.off_start + bl * P.T + t] != 0u {
            for (var i = 0u; i < R; i++) {
                ds[i] = 0.0;
            }
        } else {
            let aw = SCR[P.r_coef + scr_at(bh, t, 4u)] * w;
            for (var i = 0u; i < R; i++) {
                ds[i] -= kr[i] * aw;
            }
        }
    }
    if live {
        for (var i = 0u; i < R; i++) {
            let r = lane + 8u * i;
            if r < K {
                DS0[P.off_ds0 + sb + r * V + col] = ds[i];
            }
        }
    }
}
