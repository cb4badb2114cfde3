// docs/selective.md, selective scan, PACKED variant (WebGPU's default limits): f32 results of
// the workspace rounded to the 16-bit storage type as selective/backward.wgsl rounds them
// (bf16 OR-ed into zeroed words, which commutes); one thread per element. Plain 32-bit copies
// (f32 storage, the packed small arguments) use common/words.wgsl.
//! variant: F16
//! variant: BF16
#ifdef F16
enable f16;
#endif
#include "selective/types.wgsl"

struct Cp {
    n: u32, off_src: u32, off_dst: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> Q: Cp;
@group(0) @binding(1) var<storage, read> SRC: array<u32>;
#ifdef F16
@group(0) @binding(2) var<storage, read_write> DST: array<f16>;
#else
@group(0) @binding(2) var<storage, read_write> DST: array<atomic<u32>>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= Q.n {
        return;
    }
    let w = SRC[Q.off_src + i];
    let j = Q.off_dst + i;
#ifdef F16
    DST[j] = f16(bitcast<f32>(w));
#else
    atomicOr(&DST[j >> 1u], bf16_word(bitcast<f32>(w), j));
#endif
}
