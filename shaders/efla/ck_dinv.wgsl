// docs/efla.md, chunked algorithm, backward step 4: through the triangular inverse. With
// dX = dT diag(alpha) and X = A^{-1}, A = I + diag(alpha) Gm:
//   N  = dX X^T,   dA = -X^T N,   dL = dA on the masked strictly-lower entries (else 0)
//   dalpha_i += sum_j dL[i][j] Gm[i][j]       (dGm = diag(alpha) dL is applied by ck_dout)
// Threads: one workgroup per (batch row, head, chunk), two 64 x 64 tile passes
// (efla/mm.wgsl); the row sums by one thread per row.
#include "efla/params.wgsl"
#include "efla/mm.wgsl"
#include "efla/segs.wgsl"

@group(0) @binding(1) var<storage, read> START: array<u32>;
@group(0) @binding(2) var<storage, read_write> SCR: array<f32>;

var<private> cbh: u32;
var<private> cn: u32;
var<private> ct0: u32;
var<private> clen: u32;

// Which products exist (efla/mm.wgsl): dT and X are causal within the segment, and so N
// lives on the segments' diagonal blocks.
fn keep_a(term: u32, m: u32, r: u32) -> bool {
    if term == 0u {
        return causal(m, r);
    }
    return causal(r, m);
}
fn keep_b(term: u32, m: u32, r: u32) -> bool {
    if term == 0u {
        return causal(m, r);
    }
    return select(same_seg(m, r), same_seg(r, m), m <= r);
}

// term 0: A(i, j) = dT[i][j] alpha_j, term 1: A(m, i) = X[i][m]
fn opa(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen || r >= clen {
        return 0.0;
    }
    if term == 0u {
        return SCR[P.r_dt + cc_at(cbh, cn, m, r)] * SCR[P.r_coef + scr_at(cbh, ct0 + r, 4u)];
    }
    return SCR[P.r_x + cc_at(cbh, cn, r, m)];
}

// term 0: B(m, j) = X[m][j], term 1: B(n, i) = N[i][n]
fn opb(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen || r >= clen {
        return 0.0;
    }
    if term == 0u {
        return SCR[P.r_x + cc_at(cbh, cn, m, r)];
    }
    return SCR[P.r_nm + cc_at(cbh, cn, r, m)];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC {
        return;
    }
    cbh = g / P.NC;
    cn = g % P.NC;
    let bl = cbh / P.hg;
    ct0 = cn * P.C;
    clen = min(P.C, P.T - ct0);
    load_segs(vid, bl, ct0, clen);
    let ty = vid / 16u;
    let tx = vid % 16u;
    var acc: array<f32, 16>;
    mm_zero(&acc);
    mm(0u, clen, vid, false, false, &acc);
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let j = tx + 16u * b;
            if i < P.C && j < P.C {
                SCR[P.r_nm + cc_at(cbh, cn, i, j)] = acc[4u * a + b];
            }
        }
    }
    storageBarrier();
    mm_zero(&acc);
    mm(1u, clen, vid, true, true, &acc);
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let j = tx + 16u * b;
            if i < P.C && j < P.C {
                let keep = i < clen && j < i && same_seg(i, j);
                SCR[P.r_dl + cc_at(cbh, cn, i, j)] = select(0.0, -acc[4u * a + b], keep);
            }
        }
    }
    storageBarrier();
    if vid < clen {
        var s = 0.0;
        for (var j = 0u; j < vid; j++) {
            s += SCR[P.r_dl + cc_at(cbh, cn, vid, j)] * SCR[P.r_gm + cc_at(cbh, cn, vid, j)];
        }
        let di = P.r_da + scr_at(cbh, ct0 + vid, 1u);
        SCR[di] = SCR[di] + s;
    }
}
