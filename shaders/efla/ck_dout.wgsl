// docs/efla.md, chunked algorithm, backward step 5: the gradients of each chunk's inputs,
//   dQ = dQa + dPm K
//   dK = dKa + dPm^T Q + diag(alpha) X^T dW + (dGm + dGm^T) K + dkf * dalpha * K,
//        dGm = diag(alpha) dL
//   dV = diag(alpha) X^T d(delta)
//   dbeta = dalpha * dbf
// Threads: one workgroup per (batch row, head, chunk, 64-column tile): the tiles of dQ
// (ceil(K/64)), then of dK (ceil(K/64)), then of dV (ceil(V/64)) (efla/mm.wgsl).
//! variant:
//! variant: F16
//! variant: F16P
//! variant: BF16
#ifdef F16
enable f16;
#endif
#include "efla/params.wgsl"
#include "efla/storage.wgsl"
#include "efla/mm.wgsl"
#include "efla/segs.wgsl"

@group(0) @binding(1) var<storage, read> Q: array<SEQ>;
@group(0) @binding(2) var<storage, read> KK: array<SEQ>;
@group(0) @binding(3) var<storage, read_write> SCR: array<f32>;
@group(0) @binding(4) var<storage, read_write> DQ: array<f32>;
@group(0) @binding(5) var<storage, read_write> DK: array<f32>;
@group(0) @binding(6) var<storage, read_write> DV: array<f32>;
@group(0) @binding(7) var<storage, read_write> DBETA: array<f32>;
@group(0) @binding(8) var<storage, read> START: array<u32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> cn: u32;
var<private> ct0: u32;
var<private> clen: u32;
var<private> c0: u32;

fn alpha(i: u32) -> f32 {
    return SCR[P.r_coef + scr_at(cbh, ct0 + i, 4u)];
}

// A(i, j) over steps j of the chunk: 0 = dPm, 1 = dPm^T, 2 = diag(alpha) X^T,
// 3 = dGm + dGm^T, 4 = diag(alpha) X^T
fn opa(term: u32, i: u32, j: u32) -> f32 {
    if i >= clen || j >= clen {
        return 0.0;
    }
    switch term {
        case 0u: { return SCR[P.r_dpm + cc_at(cbh, cn, i, j)]; }
        case 1u: { return SCR[P.r_dpm + cc_at(cbh, cn, j, i)]; }
        case 3u: {
            return alpha(i) * SCR[P.r_dl + cc_at(cbh, cn, i, j)]
                + alpha(j) * SCR[P.r_dl + cc_at(cbh, cn, j, i)];
        }
        default: { return alpha(i) * SCR[P.r_x + cc_at(cbh, cn, j, i)]; }
    }
}

// Which products exist (efla/mm.wgsl): dPm and X are causal within the segment, dGm lives on
// the segments' diagonal blocks.
fn keep_a(term: u32, i: u32, j: u32) -> bool {
    switch term {
        case 0u: { return causal(i, j); }
        case 3u: { return select(same_seg(j, i), same_seg(i, j), j <= i); }
        default: { return causal(j, i); }
    }
}
fn keep_b(term: u32, m: u32, j: u32) -> bool {
    return true;
}

// B(col, j): 0, 3 = K, 1 = Q, 2 = dW (width K), 4 = d(delta) (width V); columns c0 + col
fn opb(term: u32, m: u32, j: u32) -> f32 {
    if j >= clen {
        return 0.0;
    }
    let c = c0 + m;
    if term == 4u {
        if c >= P.V { return 0.0; }
        return SCR[P.r_dd + scr_at(cbh, ct0 + j, P.V) + c];
    }
    if c >= P.K {
        return 0.0;
    }
    switch term {
        case 1u: { return ld_q(seq_at(cb, ct0 + j, ch, P.K) + c); }
        case 2u: { return SCR[P.r_dw + scr_at(cbh, ct0 + j, P.K) + c]; }
        default: { return ld_k(seq_at(cb, ct0 + j, ch, P.K) + c); }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC * P.ntiles {
        return;
    }
    let tile = g % P.ntiles;
    let bn = g / P.ntiles;
    cbh = bn / P.NC;
    cn = bn % P.NC;
    cb = cbh / P.hg;
    ch = P.h0 + cbh % P.hg;
    ct0 = cn * P.C;
    clen = min(P.C, P.T - ct0);
    let nk = (P.K + 63u) / 64u;
    // which: 0 = dQ, 1 = dK, 2 = dV
    var which = 0u;
    c0 = tile * 64u;
    if tile >= 2u * nk {
        which = 2u;
        c0 = (tile - 2u * nk) * 64u;
    } else if tile >= nk {
        which = 1u;
        c0 = (tile - nk) * 64u;
    }
    load_segs(vid, cb, ct0, clen);
    var acc: array<f32, 16>;
    mm_zero(&acc);
    switch which {
        case 0u: {
            mm(0u, clen, vid, false, true, &acc);
        }
        case 1u: {
            mm(1u, clen, vid, true, true, &acc);
            mm(2u, clen, vid, true, true, &acc);
            mm(3u, clen, vid, false, true, &acc);
        }
        default: {
            mm(4u, clen, vid, true, true, &acc);
        }
    }
    let ty = vid / 16u;
    let tx = vid % 16u;
    let K = P.K;
    let V = P.V;
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let c = c0 + tx + 16u * b;
            if i >= clen {
                continue;
            }
            let x = acc[4u * a + b];
            let t = ct0 + i;
            switch which {
                case 0u: {
                    if c < K {
                        DQ[P.off_dq + seq_at(cb, t, ch, K) + c] =
                            SCR[P.r_dqa + scr_at(cbh, t, K) + c] + x;
                    }
                }
                case 1u: {
                    if c < K {
                        let ci = P.r_coef + scr_at(cbh, t, 4u);
                        let dk = SCR[P.r_dka + scr_at(cbh, t, K) + c] + x
                            + SCR[ci + 1u] * SCR[P.r_da + scr_at(cbh, t, 1u)]
                                * ld_k(seq_at(cb, t, ch, K) + c);
                        DK[P.off_dk + seq_at(cb, t, ch, K) + c] = dk;
                    }
                }
                default: {
                    if c < V {
                        DV[P.off_dv + seq_at(cb, t, ch, V) + c] = x;
                    }
                }
            }
        }
    }
    if tile == 0u && vid < clen {
        let t = ct0 + vid;
        let ci = P.r_coef + scr_at(cbh, t, 4u);
        DBETA[P.off_dbeta + seq_at(cb, t, ch, 1u)] = SCR[P.r_da + scr_at(cbh, t, 1u)] * SCR[ci + 2u];
    }
}
