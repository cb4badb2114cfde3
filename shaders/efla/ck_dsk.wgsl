// docs/efla.md, chunked algorithm, backward step 2: the products with the chunk states, per chunk
// (C x K, summed over V):
//   dQa = scale diag(c) dO S_in^T,   dW = -diag(c) d(delta) S_in^T,   dKa = diag(e) delta dS_end^T
// (S_in from the forward state slots, dS_end from the reverse pass's). To scratch.
// Threads: one workgroup per (batch row, head, chunk, 64-column tile of K) (efla/mm.wgsl).
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

@group(0) @binding(1) var<storage, read> GO: array<SEQ>;
@group(0) @binding(2) var<storage, read> START: array<u32>;
@group(0) @binding(3) var<storage, read_write> SCR: array<f32>;
@group(0) @binding(4) var<storage, read> ST: array<f32>;
@group(0) @binding(5) var<storage, read> DST: array<f32>;

fn ld_go(i: u32) -> f32 { return up(GO[sw(P.off_go + i)], P.off_go + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> ct0: u32;
var<private> clen: u32;
var<private> k0: u32;
var<private> sin: u32;
var<private> dse: u32;

// rows i of the chunk: 0 = dO, 1 = d(delta), 2 = delta; reduction over V
fn opa(term: u32, m: u32, c: u32) -> f32 {
    if m >= clen || c >= P.V {
        return 0.0;
    }
    switch term {
        case 0u: { return ld_go(seq_at(cb, ct0 + m, ch, P.V) + c); }
        case 1u: { return SCR[P.r_dd + scr_at(cbh, ct0 + m, P.V) + c]; }
        default: { return SCR[P.r_u + scr_at(cbh, ct0 + m, P.V) + c]; }
    }
}

// Which products exist (efla/mm.wgsl): the diag(c) rows (terms 0, 1) only where the carried
// state reaches, the diag(e) rows (term 2) only in the chunk's last segment.
fn keep_a(term: u32, m: u32, c: u32) -> bool {
    if m >= clen {
        return false;
    }
    if term == 2u {
        return in_last(m, clen);
    }
    return carried(m);
}
fn keep_b(term: u32, m: u32, c: u32) -> bool {
    return true;
}

// rows k0 + m of S_in (terms 0, 1) or dS_end (term 2)
fn opb(term: u32, m: u32, c: u32) -> f32 {
    if k0 + m >= P.K || c >= P.V {
        return 0.0;
    }
    if term == 2u {
        return DST[dse + (k0 + m) * P.V + c];
    }
    return ST[sin + (k0 + m) * P.V + c];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC * P.ntiles {
        return;
    }
    k0 = (g % P.ntiles) * 64u;
    let bn = g / P.ntiles;
    cbh = bn / P.NC;
    let n = bn % P.NC;
    cb = cbh / P.hg;
    ch = P.h0 + cbh % P.hg;
    ct0 = n * P.C;
    clen = min(P.C, P.T - ct0);
    sin = P.off_st + (cbh * (P.NC + 1u) + n) * P.K * P.V;
    dse = P.off_dst + (cbh * P.NC + n) * P.K * P.V;
    load_segs(vid, cb, ct0, clen);
    let ty = vid / 16u;
    let tx = vid % 16u;
    var acc: array<f32, 16>;
    for (var term = 0u; term < 3u; term++) {
        mm_zero(&acc);
        mm(term, P.V, vid, false, false, &acc);
        for (var a = 0u; a < 4u; a++) {
            for (var b = 0u; b < 4u; b++) {
                let i = ty + 16u * a;
                let r = k0 + tx + 16u * b;
                if i < clen && r < P.K {
                    let at = scr_at(cbh, ct0 + i, P.K) + r;
                    let x = acc[4u * a + b];
                    switch term {
                        case 0u: { SCR[P.r_dqa + at] = P.scale * x; }
                        case 1u: { SCR[P.r_dw + at] = -x; }
                        default: { SCR[P.r_dka + at] = x; }
                    }
                }
            }
        }
    }
}
