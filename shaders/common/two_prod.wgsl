//! include-only
// a * b = p + e exactly without relying on fma (WGSL's fma may be evaluated unfused, as on
// lavapipe): Dekker's product with the operands split by a bit mask (hi keeps 12 significant
// bits, lo the rest, both exact), so p is the rounded product and e its error. The split is a
// bit mask, not Veltkamp's c - (c - a), which a compiler may simplify to a. Used by the
// two-float carries of the linear scan and FFM at long T.
fn split12(a: f32) -> vec2<f32> {
    let hi = bitcast<f32>(bitcast<u32>(a) & 0xfffff000u);
    return vec2<f32>(hi, a - hi);
}
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = a * b;
    let x = split12(a);
    let y = split12(b);
    return vec2<f32>(p, ((x.x * y.x - p) + x.x * y.y + x.y * y.x) + x.y * y.y);
}
