// docs/efla.md, chunked algorithm, step 3: the WY vectors of each chunk,
//   W = X diag(alpha) K,   U = X diag(alpha) V      (C x K and C x V, to scratch)
// Threads: one workgroup per (batch row, head, chunk, 64-column tile), tiles 0 .. ceil(K/64)
// of W then the tiles of U (efla/mm.wgsl).
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
@group(0) @binding(3) var<storage, read> START: array<u32>;
@group(0) @binding(4) var<storage, read_write> SCR: array<f32>;

fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_v(i: u32) -> f32 { return up(VV[sw(P.off_v + i)], P.off_v + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> cn: u32;
var<private> ct0: u32;
var<private> clen: u32;
var<private> c0: u32;

// A(i, j) = X[i][j] alpha_j
fn opa(term: u32, m: u32, j: u32) -> f32 {
    if m >= clen || j >= clen {
        return 0.0;
    }
    return SCR[P.r_x + cc_at(cbh, cn, m, j)] * SCR[P.r_coef + scr_at(cbh, ct0 + j, 4u)];
}

// X is causal and block diagonal by segment: only those products exist.
fn keep_a(term: u32, i: u32, j: u32) -> bool {
    return causal(i, j);
}
fn keep_b(term: u32, m: u32, j: u32) -> bool {
    return true;
}

// B(col, j) = K[j][c0 + col] (term 0) or V[j][c0 + col] (term 1)
fn opb(term: u32, m: u32, j: u32) -> f32 {
    if j >= clen {
        return 0.0;
    }
    if term == 0u {
        if c0 + m >= P.K {
            return 0.0;
        }
        return ld_k(seq_at(cb, ct0 + j, ch, P.K) + c0 + m);
    }
    if c0 + m >= P.V {
        return 0.0;
    }
    return ld_v(seq_at(cb, ct0 + j, ch, P.V) + c0 + m);
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
    var term = 0u;
    var width = P.K;
    var region = P.r_w;
    c0 = tile * 64u;
    if tile >= nk {
        term = 1u;
        width = P.V;
        region = P.r_u;
        c0 = (tile - nk) * 64u;
    }
    load_segs(vid, cb, ct0, clen);
    var acc: array<f32, 16>;
    mm_zero(&acc);
    mm(term, clen, vid, false, true, &acc);
    let ty = vid / 16u;
    let tx = vid % 16u;
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let c = c0 + tx + 16u * b;
            if i < clen && c < width {
                SCR[region + scr_at(cbh, ct0 + i, width) + c] = acc[4u * a + b];
            }
        }
    }
}
