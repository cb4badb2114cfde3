// docs/efla.md, chunked algorithm, step 1 (forward and backward): per chunk the masked Gram
// matrices and the per-step coefficients.
//   Gm[i][j] = k_i . k_j  for j < i in the same segment, else 0
//   Pm[i][j] = q_i . k_j  for j <= i in the same segment, else 0
//   coef_i   = (alpha, dk factor, dbeta factor) from beta_i and lambda_i = k_i . k_i
// Threads: one workgroup per (batch row, head, chunk), one 64 x 64 tile (efla/mm.wgsl).
//! variant:
//! variant: F16
//! variant: F16P
//! variant: BF16
#ifdef F16
enable f16;
#endif
#include "efla/params.wgsl"
#include "efla/storage.wgsl"
#include "efla/coef.wgsl"
#include "efla/mm.wgsl"
#include "efla/segs.wgsl"

@group(0) @binding(1) var<storage, read> Q: array<SEQ>;
@group(0) @binding(2) var<storage, read> KK: array<SEQ>;
@group(0) @binding(3) var<storage, read> BETA: array<SEQ>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read_write> SCR: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_beta(i: u32) -> f32 { return up(BETA[sw(P.off_beta + i)], P.off_beta + i); }

// (batch row, head, first step, steps) of this workgroup's chunk
var<private> cb: u32;
var<private> ch: u32;
var<private> ct0: u32;
var<private> clen: u32;

// Every product exists (reductions over features; the masks are applied to the results).
fn keep_a(term: u32, m: u32, r: u32) -> bool {
    return true;
}
fn keep_b(term: u32, m: u32, r: u32) -> bool {
    return true;
}

fn opa(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen || r >= P.K {
        return 0.0;
    }
    let i = seq_at(cb, ct0 + m, ch, P.K) + r;
    if term == 0u {
        return ld_k(i);
    }
    return ld_q(i);
}

fn opb(term: u32, m: u32, r: u32) -> f32 {
    if m >= clen || r >= P.K {
        return 0.0;
    }
    return ld_k(seq_at(cb, ct0 + m, ch, P.K) + r);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC {
        return;
    }
    let bh = g / P.NC;
    let n = g % P.NC;
    cb = bh / P.hg;
    ch = P.h0 + bh % P.hg;
    ct0 = n * P.C;
    clen = min(P.C, P.T - ct0);
    load_segs(vid, cb, ct0, clen);
    var kk: array<f32, 16>;
    var qk: array<f32, 16>;
    mm_zero(&kk);
    mm_zero(&qk);
    mm(0u, P.K, vid, false, false, &kk);
    mm(1u, P.K, vid, false, false, &qk);
    let ty = vid / 16u;
    let tx = vid % 16u;
    let efla = (P.flags & EFLA) != 0u;
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            let i = ty + 16u * a;
            let j = tx + 16u * b;
            if i >= P.C || j >= P.C {
                continue;
            }
            let valid = i < clen && j < clen && j <= i && same_seg(i, j);
            SCR[P.r_gm + cc_at(bh, n, i, j)] = select(0.0, kk[4u * a + b], valid && j < i);
            SCR[P.r_pm + cc_at(bh, n, i, j)] = select(0.0, qk[4u * a + b], valid);
            if i == j && i < clen {
                let c = rule_coefs(efla, ld_beta(seq_at(cb, ct0 + i, ch, 1u)), kk[4u * a + b]);
                let ci = P.r_coef + scr_at(bh, ct0 + i, 4u);
                SCR[ci] = c.x;
                SCR[ci + 1u] = c.y;
                SCR[ci + 2u] = c.z;
            }
        }
    }
}
