// docs/efla.md, chunked algorithm, backward step 3: the C x C gradients of each chunk,
//   dPm = scale mask(dO delta^T)          (mask: j <= i in the same segment)
//   dT  = d(delta) V^T + dW K^T           (T = X diag(alpha), the UT transform)
// and the first part of dalpha, dalpha_j = sum_i X[i][j] dT[i][j]. To scratch.
// Threads: one workgroup per (batch row, head, chunk), one 64 x 64 tile (efla/mm.wgsl); the
// column sums by one thread per column.
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

@group(0) @binding(1) var<storage, read> KK: array<SEQ>;
@group(0) @binding(2) var<storage, read> VV: array<SEQ>;
@group(0) @binding(3) var<storage, read> GO: array<SEQ>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read_write> SCR: array<f32>;

fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_v(i: u32) -> f32 { return up(VV[sw(P.off_v + i)], P.off_v + i); }
fn ld_go(i: u32) -> f32 { return up(GO[sw(P.off_go + i)], P.off_go + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> ct0: u32;
var<private> clen: u32;

// Every product exists (reductions over features; the masks are applied to the results).
fn keep_a(term: u32, m: u32, r: u32) -> bool {
    return true;
}
fn keep_b(term: u32, m: u32, r: u32) -> bool {
    return true;
}

// terms: 0 = dO delta^T, 1 = d(delta) V^T, 2 = dW K^T (reduction over V, V, K)
fn opa(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen {
        return 0.0;
    }
    switch term {
        case 0u: {
            if r >= P.V { return 0.0; }
            return ld_go(seq_at(cb, ct0 + m, ch, P.V) + r);
        }
        case 1u: {
            if r >= P.V { return 0.0; }
            return SCR[P.r_dd + scr_at(cbh, ct0 + m, P.V) + r];
        }
        default: {
            if r >= P.K { return 0.0; }
            return SCR[P.r_dw + scr_at(cbh, ct0 + m, P.K) + r];
        }
    }
}

fn opb(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen {
        return 0.0;
    }
    switch term {
        case 0u: {
            if r >= P.V { return 0.0; }
            return SCR[P.r_u + scr_at(cbh, ct0 + m, P.V) + r];
        }
        case 1u: {
            if r >= P.V { return 0.0; }
            return ld_v(seq_at(cb, ct0 + m, ch, P.V) + r);
        }
        default: {
            if r >= P.K { return 0.0; }
            return ld_k(seq_at(cb, ct0 + m, ch, P.K) + r);
        }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC {
        return;
    }
    cbh = g / P.NC;
    let n = g % P.NC;
    cb = cbh / P.hg;
    ch = P.h0 + cbh % P.hg;
    ct0 = n * P.C;
    clen = min(P.C, P.T - ct0);
    load_segs(vid, cb, ct0, clen);
    let ty = vid / 16u;
    let tx = vid % 16u;
    var dpm: array<f32, 16>;
    var dt: array<f32, 16>;
    mm_zero(&dpm);
    mm_zero(&dt);
    mm(0u, P.V, vid, false, false, &dpm);
    mm(1u, P.V, vid, false, false, &dt);
    mm(2u, P.K, vid, false, false, &dt);
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let j = tx + 16u * b;
            if i < P.C && j < P.C {
                let valid = i < clen && j < clen;
                let lower = valid && j <= i && same_seg(i, j);
                SCR[P.r_dpm + cc_at(cbh, n, i, j)] = select(0.0, P.scale * dpm[4u * a + b], lower);
                // T = X diag(alpha) is causal within the segment: only those entries of dT
                // reach dL and dalpha, and a zero elsewhere keeps an earlier segment's NaN out
                SCR[P.r_dt + cc_at(cbh, n, i, j)] = select(0.0, dt[4u * a + b], lower);
            }
        }
    }
    storageBarrier();
    if vid < clen {
        var s = 0.0;
        for (var i = 0u; i < clen; i++) {
            s += SCR[P.r_x + cc_at(cbh, n, i, vid)] * SCR[P.r_dt + cc_at(cbh, n, i, vid)];
        }
        SCR[P.r_da + scr_at(cbh, ct0 + vid, 1u)] = s;
    }
}
