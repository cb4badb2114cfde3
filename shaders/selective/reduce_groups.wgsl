// docs/selective.md, selective scan backward: input-dependent dBm / dCm of groups wider than one
// channel block. selective/backward.wgsl left one partial sum per (row, step, block, state)
// for each; this adds the bpg blocks of each group in ascending order (deterministic) and
// writes the storage type. One thread per (row, step, group, state) element of dBm / dCm.
//! variant:
//! variant: F16
//! variant: BF16
#ifdef F16
enable f16;
#endif
#include "selective/types.wgsl"

@group(0) @binding(0) var<uniform> P: Params;
// [rows, T, nb, N] partials of dBm at off_rs, then those of dCm
@group(0) @binding(1) var<storage, read> RS: array<f32>;
@group(0) @binding(2) var<storage, read_write> DBM: array<SEQ_OUT>;
@group(0) @binding(3) var<storage, read_write> DCM: array<SEQ_OUT>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= P.rows * P.T * P.G * P.N {
        return;
    }
    let n = i % P.N;
    let r = i / P.N;
    let g = r % P.G;
    let bt = r / P.G;
    let half = P.rows * P.T * P.nb * P.N;
    var sb = 0.0;
    var sc = 0.0;
    for (var j = 0u; j < P.bpg; j++) {
        let q = (bt * P.nb + g * P.bpg + j) * P.N + n;
        sb += RS[P.off_rs + q];
        sc += RS[P.off_rs + half + q];
    }
    let jb = P.off_dbm + i;
    let jc = P.off_dcm + i;
#ifdef BF16
    atomicOr(&DBM[jb >> 1u], bf16_word(sb, jb));
    atomicOr(&DCM[jc >> 1u], bf16_word(sc, jc));
#else
    DBM[jb] = SEQ(sb);
    DCM[jc] = SEQ(sc);
#endif
}
