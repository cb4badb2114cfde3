// docs/selective.md, selective scan, PACKED variant (WebGPU's default limits): copies between
// the launcher's packed buffers and the arguments. Without F16 / BF16, n 32-bit words are
// copied as they are (the small f32 / u32 arguments into the packed buffer, f32 results out
// of the workspace: bit for bit, NaN payloads included); with F16 / BF16, n f32 values are
// rounded to the storage type as selective/backward.wgsl rounds them (bf16 OR-ed into zeroed
// words, which commutes). One thread per element.
//! variant:
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
#ifdef BF16
@group(0) @binding(2) var<storage, read_write> DST: array<atomic<u32>>;
#else
@group(0) @binding(2) var<storage, read_write> DST: array<u32>;
#endif
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
#ifdef BF16
    atomicOr(&DST[j >> 1u], bf16_word(bitcast<f32>(w), j));
#else
    DST[j] = w;
#endif
#endif
}
