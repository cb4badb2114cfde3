// docs/efla.md, chunked algorithm, backward step 1: the reverse state pass, chunk after chunk from
// the last, starting from dS = grad_final:
//   d(delta) = scale Pm^T dO + diag(e) K dS_end                  (to scratch)
//   dS_in    = c_last dS_end + scale Q^T diag(c) dO - W^T diag(c) d(delta)
// dS_end of chunk n is kept in slot n of DST (read again by ck_dsk); dS_in of chunk 0 is ds0.
// Columns of dS are independent: a workgroup owns a 64-column tile for one (batch row, head).
// A dispatch covers chunks t_end - 1 down to t_begin (dS carries over in the slots).
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
@group(0) @binding(3) var<storage, read> GO: array<SEQ>;
@group(0) @binding(4) var<storage, read> START: array<u32>;
@group(0) @binding(5) var<storage, read> GF: array<f32>;
@group(0) @binding(6) var<storage, read_write> SCR: array<f32>;
@group(0) @binding(7) var<storage, read_write> DST: array<f32>;
@group(0) @binding(8) var<storage, read_write> DS0: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }
fn ld_go(i: u32) -> f32 { return up(GO[sw(P.off_go + i)], P.off_go + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> cn: u32;
var<private> ct0: u32;
var<private> clen: u32;
var<private> c0: u32;
var<private> r0: u32;
var<private> cur: u32;

fn dst_base(slot: u32) -> u32 {
    return P.off_dst + (cbh * P.NC + slot) * P.K * P.V;
}

// terms: 0 = scale Pm^T dO, 1 = diag(e) K dS_end, 2 = scale (diag(c) Q)^T dO (rows r0 + m),
// 3 = -(diag(c) W)^T d(delta) (rows r0 + m)
fn opa(term: u32, m: u32, r: u32) -> f32 {
    switch term {
        case 0u: {
            if m >= clen || r >= clen { return 0.0; }
            return P.scale * SCR[P.r_pm + cc_at(cbh, cn, r, m)];
        }
        case 1u: {
            if m >= clen || r >= P.K { return 0.0; }
            return ld_k(seq_at(cb, ct0 + m, ch, P.K) + r);
        }
        case 2u: {
            if r >= clen || r0 + m >= P.K { return 0.0; }
            return P.scale * ld_q(seq_at(cb, ct0 + r, ch, P.K) + r0 + m);
        }
        default: {
            if r >= clen || r0 + m >= P.K { return 0.0; }
            return -SCR[P.r_w + scr_at(cbh, ct0 + r, P.K) + r0 + m];
        }
    }
}

// Which products exist (efla/mm.wgsl): Pm^T causal within the segment; the diag(e) rows
// (term 1) in the chunk's last segment; the diag(c) steps (terms 2, 3) where the carried
// state reaches.
fn keep_a(term: u32, m: u32, r: u32) -> bool {
    switch term {
        case 0u: { return causal(r, m); }
        case 1u: { return m < clen && in_last(m, clen); }
        default: { return r < clen && carried(r); }
    }
}
fn keep_b(term: u32, m: u32, r: u32) -> bool {
    return true;
}

fn opb(term: u32, m: u32, r: u32) -> f32 {
    if c0 + m >= P.V {
        return 0.0;
    }
    switch term {
        case 1u: {
            if r >= P.K { return 0.0; }
            return DST[cur + r * P.V + c0 + m];
        }
        case 3u: {
            if r >= clen { return 0.0; }
            return SCR[P.r_dd + scr_at(cbh, ct0 + r, P.V) + c0 + m];
        }
        default: {
            if r >= clen { return 0.0; }
            return ld_go(seq_at(cb, ct0 + r, ch, P.V) + c0 + m);
        }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) vid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.ntiles {
        return;
    }
    cbh = g / P.ntiles;
    c0 = (g % P.ntiles) * 64u;
    cb = cbh / P.hg;
    ch = P.h0 + cbh % P.hg;
    let K = P.K;
    let V = P.V;
    let ty = vid / 16u;
    let tx = vid % 16u;

    // slot NC-1 <- grad_final (or zeros), in the first dispatch of the sequence
    cur = dst_base(P.NC - 1u);
    for (var e = vid; e < select(0u, K * 64u, P.t_end == P.NC); e += 256u) {
        let r = e / 64u;
        let c = c0 + e % 64u;
        if c < V {
            var x = 0.0;
            if (P.flags & HAS_GF) != 0u {
                x = GF[P.off_gf + state_at(cb, ch) + r * V + c];
            }
            DST[cur + r * V + c] = x;
        }
    }
    storageBarrier();

    var acc: array<f32, 16>;
    for (var nn = P.t_begin; nn < P.t_end; nn++) {
        let n = P.t_end - 1u - (nn - P.t_begin);
        cn = n;
        ct0 = n * P.C;
        clen = min(P.C, P.T - ct0);
        cur = dst_base(n);
        load_segs(vid, cb, ct0, clen);
        // d(delta) = scale Pm^T dO + diag(e) K dS_end
        mm_zero(&acc);
        mm(0u, clen, vid, false, true, &acc);
        mm(1u, K, vid, false, true, &acc);
        for (var a = 0u; a < 4u; a++) {
            for (var b = 0u; b < 4u; b++) {
                let i = ty + 16u * a;
                let c = c0 + tx + 16u * b;
                if i < clen && c < V {
                    SCR[P.r_dd + scr_at(cbh, ct0 + i, V) + c] = acc[4u * a + b];
                }
            }
        }
        storageBarrier();
        // dS_in = c_last dS_end + scale (diag(c) Q)^T dO - (diag(c) W)^T d(delta)
        let c_last = carried(clen - 1u);
        for (r0 = 0u; r0 < K; r0 += 64u) {
            mm_zero(&acc);
            mm(2u, clen, vid, true, true, &acc);
            mm(3u, clen, vid, true, true, &acc);
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    let r = r0 + ty + 16u * a;
                    let c = c0 + tx + 16u * b;
                    if r < K && c < V {
                        // a reset in the chunk drops dS_end (select: NaN * 0 would be NaN)
                        let x = select(0.0, DST[cur + r * V + c], c_last) + acc[4u * a + b];
                        if n > 0u {
                            DST[dst_base(n - 1u) + r * V + c] = x;
                        } else {
                            DS0[P.off_ds0 + state_at(cb, ch) + r * V + c] = x;
                        }
                    }
                }
            }
        }
        storageBarrier();
    }
}
