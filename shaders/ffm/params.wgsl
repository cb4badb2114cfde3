// docs/ffm.md, FFM aggregation, backward, last step: da[m] = sum_c Re(dlog[m][c]) and
// db[c] = sum_m Im(dlog[m][c]) from dlog [M, C] complex (already summed over rows), one thread
// per output, each sum in a fixed order.
struct Params {
    M: u32, C: u32, off_in: u32, off_da: u32,
    off_db: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> DLOG: array<f32>;
@group(0) @binding(2) var<storage, read_write> DA: array<f32>;
@group(0) @binding(3) var<storage, read_write> DB: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i < P.M {
        var s = 0.0;
        for (var c = 0u; c < P.C; c++) {
            s += DLOG[P.off_in + 2u * (i * P.C + c)];
        }
        DA[P.off_da + i] = s;
    } else if i < P.M + P.C {
        let c = i - P.M;
        var s = 0.0;
        for (var m = 0u; m < P.M; m++) {
            s += DLOG[P.off_in + 2u * (m * P.C + c) + 1u];
        }
        DB[P.off_db + c] = s;
    }
}
