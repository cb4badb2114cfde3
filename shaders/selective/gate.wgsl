// docs/selective.md, selective scan backward, PACKED variant (WebGPU's default limits): the
// gate's elementwise parts around selective/backward.wgsl, with the same operations as its
// other variant. `dy` (before the backward) writes dy = z ? dout silu(z) : dout into the f32
// workspace; `dz` (after it) reads the pre-gate output y the backward left there and writes
// dz = dout y silu'(z) in the storage type. One thread per (row, step, channel) element.
//! variant:
//! variant: F16
//! variant: BF16
#ifdef F16
enable f16;
#endif
#include "selective/types.wgsl"

struct Gp {
    n: u32, flags: u32, off_z: u32, off_go: u32,
    off_dy: u32, off_y: u32, off_dz: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> Q: Gp;
@group(0) @binding(1) var<storage, read> Z: array<SEQ>;
@group(0) @binding(2) var<storage, read> GOUT: array<SEQ>;
@group(0) @binding(3) var<storage, read_write> WS: array<f32>;
@group(0) @binding(4) var<storage, read_write> DZ: array<SEQ_OUT>;

fn rd_seq_z(i: u32) -> f32 {
    let j = Q.off_z + i;
#ifdef BF16
    return bf16_at(Z[j >> 1u], j);
#else
    return f32(Z[j]);
#endif
}

fn rd_seq_go(i: u32) -> f32 {
    let j = Q.off_go + i;
#ifdef BF16
    return bf16_at(GOUT[j >> 1u], j);
#else
    return f32(GOUT[j]);
#endif
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(256)
fn dy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= Q.n {
        return;
    }
    let go = rd_seq_go(i);
    var d = go;
    if (Q.flags & HAS_Z) != 0u {
        let zz = rd_seq_z(i);
        let sg = sigmoid(zz);
        d = go * zz * sg;
    }
    WS[Q.off_dy + i] = d;
}

@compute @workgroup_size(256)
fn dz(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= Q.n {
        return;
    }
    let go = rd_seq_go(i);
    let zz = rd_seq_z(i);
    let y = WS[Q.off_y + i];
    let sg = sigmoid(zz);
    let v = go * y * sg * (1.0 + zz * (1.0 - sg));
    let j = Q.off_dz + i;
#ifdef BF16
    atomicOr(&DZ[j >> 1u], bf16_word(v, j));
#else
    DZ[j] = SEQ(v);
#endif
}
