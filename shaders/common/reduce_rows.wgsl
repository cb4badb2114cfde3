// Deterministic column sums: out[n] = sum over r of in[r * N + n], r ascending, one thread per
// column. Used for parameter gradients (time-invariant a, FFM a/b, ...) after each workgroup
// wrote its own row of partial sums; no float atomics anywhere.
struct Params {
    rows: u32, cols: u32, off_in: u32, off_out: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> IN: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n = (wid.x + wid.y * nwg.x) * 256u + lid;
    if n >= P.cols {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < P.rows; r++) {
        s += IN[P.off_in + r * P.cols + n];
    }
    OUT[P.off_out + n] = s;
}
