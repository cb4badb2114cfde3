// Bitwise copy of n 32-bit words, OUT[off_out + i] = IN[off_in + i] (WgpuContext::copy_words):
// how the launchers pack small read-only arguments into one binding on devices with few
// storage bindings per stage (WebGPU's default 8), and copy f32 results out of a workspace, in
// the same compute pass as the kernels around them. Words, not floats, so NaN payloads and
// signed zeros arrive unchanged.
struct Params {
    n: u32, off_in: u32, off_out: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> IN: array<u32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i < P.n {
        OUT[P.off_out + i] = IN[P.off_in + i];
    }
}
