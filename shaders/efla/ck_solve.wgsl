// docs/efla.md, chunked algorithm, step 2: the UT transform's triangular inverse per chunk,
//   X = (I + diag(alpha) Gm)^{-1}   (unit lower triangular)
// by forward substitution, one column per thread: X[k][k] = 1 and, for i > k,
//   X[i][k] = -alpha_i sum_{k <= j < i} Gm[i][j] X[j][k]
// X is block diagonal by segment: column k stops at the end of k's segment (rows past it stay
// exactly 0, whatever an earlier segment holds, NaN included).
// Threads: one workgroup of 64 per (batch row, head, chunk); thread k owns column k in
// registers; no thread waits on another.
#include "efla/params.wgsl"
#include "efla/segs.wgsl"

@group(0) @binding(1) var<storage, read> START: array<u32>;
@group(0) @binding(2) var<storage, read_write> SCR: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) k: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.nb * P.hg * P.NC {
        return;
    }
    let bh = g / P.NC;
    let n = g % P.NC;
    let t0 = n * P.C;
    let len = min(P.C, P.T - t0);
    load_segs(k, bh / P.hg, t0, len);
    if k >= P.C {
        return;
    }
    var x: array<f32, 64>;
    for (var i = 0u; i < 64u; i++) {
        x[i] = 0.0;
    }
    if k < len {
        x[k] = 1.0;
        for (var i = k + 1u; i < len; i++) {
            if !same_seg(i, k) {
                break;
            }
            var s = 0.0;
            let row = P.r_gm + cc_at(bh, n, i, 0u);
            for (var j = k; j < i; j++) {
                s += SCR[row + j] * x[j];
            }
            x[i] = -SCR[P.r_coef + scr_at(bh, t0 + i, 4u)] * s;
        }
    }
    for (var i = 0u; i < P.C; i++) {
        SCR[P.r_x + cc_at(bh, n, i, k)] = x[i];
    }
}
