// Rounds f32 results to half storage (f16 or bf16, two per u32 word, element i in the low
// half when i is even). One thread per output word, so no two threads ever write the same
// word; a word half outside [off_out, off_out + n) keeps its old bits (the range may start or
// end in the middle of a word, e.g. at a row-group boundary: the other half belongs to the
// previous or next dispatch, which runs in order). Round to nearest even; NaN stays NaN and
// values past the largest finite half become infinities.
//! variant: HALF
//! variant: BF16
struct CastParams {
    n: u32, off_in: u32, off_out: u32, _p: u32,
}

@group(0) @binding(0) var<uniform> CP: CastParams;
@group(0) @binding(1) var<storage, read> IN: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<u32>;

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn half_bits(x: f32) -> u32 {
#ifdef BF16
    let b = bitcast<u32>(x);
    if is_nan(x) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
#else
    if is_nan(x) {
        return 0x7e00u;
    }
    if abs(x) >= 65520.0 {
        return select(0x7c00u, 0xfc00u, x < 0.0);
    }
    return pack2x16float(vec2<f32>(clamp(x, -65504.0, 65504.0), 0.0)) & 0xffffu;
#endif
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let end = CP.off_out + CP.n;
    let w0 = CP.off_out / 2u;
    let w = w0 + gid.x + gid.y * nwg.x * 256u;
    if CP.n == 0u || w > (end - 1u) / 2u {
        return;
    }
    let old = OUT[w];
    var lo = old & 0xffffu;
    var hi = old >> 16u;
    let e0 = 2u * w;
    if e0 >= CP.off_out && e0 < end {
        lo = half_bits(IN[CP.off_in + e0 - CP.off_out]);
    }
    if e0 + 1u >= CP.off_out && e0 + 1u < end {
        hi = half_bits(IN[CP.off_in + e0 + 1u - CP.off_out]);
    }
    OUT[w] = lo | (hi << 16u);
}
