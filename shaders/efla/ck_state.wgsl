// docs/efla.md, chunked algorithm, step 4: the inter-chunk state pass, chunk after chunk:
//   delta = U - diag(c) W S_in                       (overwrites U in scratch)
//   O     = scale (diag(c) Q S_in + Pm delta)        (WRITE_OUT only)
//   S_out = c_last S_in + K^T diag(e) delta
// Columns of S are independent, so a workgroup owns a 64-column tile of S for one (batch row,
// head) and walks its chunks in order; S lives in the state slots (ST): with WRITE_OUT the
// final-state output itself, updated in place; otherwise (the backward) one slot per chunk,
// S_in of chunk n in slot n. Each product is a 64 x 64 tile pass of efla/mm.wgsl. A dispatch
// covers chunks t_begin .. t_end (the state carries over in the slots).
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
@group(0) @binding(3) var<storage, read> START: array<u32>;
@group(0) @binding(4) var<storage, read> S0: array<f32>;
@group(0) @binding(5) var<storage, read_write> SCR: array<f32>;
@group(0) @binding(6) var<storage, read_write> ST: array<f32>;
@group(0) @binding(7) var<storage, read_write> O: array<f32>;

fn ld_q(i: u32) -> f32 { return up(Q[sw(P.off_q + i)], P.off_q + i); }
fn ld_k(i: u32) -> f32 { return up(KK[sw(P.off_k + i)], P.off_k + i); }

var<private> cb: u32;
var<private> ch: u32;
var<private> cbh: u32;
var<private> cn: u32;
var<private> ct0: u32;
var<private> clen: u32;
var<private> c0: u32;
var<private> r0: u32;
var<private> cur: u32;

// Element index of S[0][0] in slot `slot` of this workgroup's (batch row, head).
fn st_base(slot: u32) -> u32 {
    if (P.flags & ST_SLOTS) != 0u {
        return P.off_st + (cbh * (P.NC + 1u) + slot) * P.K * P.V;
    }
    return P.off_st + state_at(cb, ch);
}

// terms: 0 = W S, 1 = diag(c) Q S, 2 = Pm delta, 3 = (diag(e) K)^T delta (rows r0 + m); the
// diag(c) / diag(e) factors are keep_a below
fn opa(term: u32, m: u32, r: u32) -> f32 {
    switch term {
        case 0u: {
            if m >= clen || r >= P.K { return 0.0; }
            return SCR[P.r_w + scr_at(cbh, ct0 + m, P.K) + r];
        }
        case 1u: {
            if m >= clen || r >= P.K { return 0.0; }
            return ld_q(seq_at(cb, ct0 + m, ch, P.K) + r);
        }
        case 2u: {
            if m >= clen || r >= clen { return 0.0; }
            return SCR[P.r_pm + cc_at(cbh, cn, m, r)];
        }
        default: {
            if r >= clen || r0 + m >= P.K { return 0.0; }
            return ld_k(seq_at(cb, ct0 + r, ch, P.K) + r0 + m);
        }
    }
}

// Which products exist (efla/mm.wgsl): terms 0 and 1 only for steps the carried state
// reaches, term 2 causal within the segment, term 3 for the chunk's last segment.
fn keep_a(term: u32, m: u32, r: u32) -> bool {
    switch term {
        case 0u, 1u: { return m < clen && carried(m); }
        case 2u: { return causal(m, r); }
        default: { return r < clen && in_last(r, clen); }
    }
}
fn keep_b(term: u32, m: u32, r: u32) -> bool {
    return true;
}

fn opb(term: u32, m: u32, r: u32) -> f32 {
    if c0 + m >= P.V {
        return 0.0;
    }
    if term <= 1u {
        if r >= P.K { return 0.0; }
        return ST[cur + r * P.V + c0 + m];
    }
    if r >= clen { return 0.0; }
    return SCR[P.r_u + scr_at(cbh, ct0 + r, P.V) + c0 + m];
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
    let write_out = (P.flags & WRITE_OUT) != 0u;

    // slot 0 <- s0 (or zeros), in the first dispatch of the sequence
    cur = st_base(0u);
    for (var e = vid; e < select(0u, K * 64u, P.t_begin == 0u); e += 256u) {
        let r = e / 64u;
        let c = c0 + e % 64u;
        if c < V {
            var x = 0.0;
            if (P.flags & HAS_S0) != 0u {
                x = S0[P.off_s0 + state_at(cb, ch) + r * V + c];
            }
            ST[cur + r * V + c] = x;
        }
    }
    storageBarrier();

    var acc: array<f32, 16>;
    for (var n = P.t_begin; n < P.t_end; n++) {
        cn = n;
        ct0 = n * P.C;
        clen = min(P.C, P.T - ct0);
        cur = st_base(n);
        load_segs(vid, cb, ct0, clen);
        // delta = U - diag(c) W S_in
        mm_zero(&acc);
        mm(0u, K, vid, false, true, &acc);
        for (var a = 0u; a < 4u; a++) {
            for (var b = 0u; b < 4u; b++) {
                let i = ty + 16u * a;
                let c = c0 + tx + 16u * b;
                if i < clen && c < V {
                    let ui = P.r_u + scr_at(cbh, ct0 + i, V) + c;
                    SCR[ui] = SCR[ui] - acc[4u * a + b];
                }
            }
        }
        storageBarrier();
        // O = scale (diag(c) Q S_in + Pm delta)
        if write_out {
            mm_zero(&acc);
            mm(1u, K, vid, false, true, &acc);
            mm(2u, clen, vid, false, true, &acc);
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    let i = ty + 16u * a;
                    let c = c0 + tx + 16u * b;
                    if i < clen && c < V {
                        O[P.off_o + seq_at(cb, ct0 + i, ch, V) + c] = P.scale * acc[4u * a + b];
                    }
                }
            }
        }
        // S_out = c_last S_in + K^T diag(e) delta, 64 rows at a time
        let c_last = carried(clen - 1u);
        let next = st_base(n + 1u);
        for (r0 = 0u; r0 < K; r0 += 64u) {
            mm_zero(&acc);
            mm(3u, clen, vid, true, true, &acc);
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    let r = r0 + ty + 16u * a;
                    let c = c0 + tx + 16u * b;
                    if r < K && c < V {
                        // a reset in the chunk drops S_in (select: NaN * 0 would be NaN)
                        ST[next + r * V + c] = select(0.0, ST[cur + r * V + c], c_last) + acc[4u * a + b];
                    }
                }
            }
        }
        storageBarrier();
    }
}
