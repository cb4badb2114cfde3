//! include-only
// Half-precision storage for sequence tensors (q, k, v, beta, grad_o): the element type SEQ of
// their arrays and the widening load `up(SEQ[sw(i)], i) -> f32` of element i. Every variant
// computes in f32; only storage differs.
//   (none) f32: array<f32>.
//   F16:  array<f16>; the including file must start with `enable f16;` (needs SHADER_F16).
//   F16P: IEEE half packed two per u32 (element i in the low half when i is even), widened with
//         unpack2x16float: f16 storage on adapters without SHADER_F16.
//   BF16: bfloat16 packed two per u32 the same way, widened by moving the 16 bits into the
//         high half of an f32.
// Stores of half results go through f32 and efla/cast.wgsl, which owns whole words.
#ifdef F16
alias SEQ = f16;
fn sw(i: u32) -> u32 { return i; }
fn up(w: f16, i: u32) -> f32 { return f32(w); }
#endif
#ifdef F16P
alias SEQ = u32;
fn sw(i: u32) -> u32 { return i >> 1u; }
fn up(w: u32, i: u32) -> f32 {
    let h = unpack2x16float(w);
    return select(h.x, h.y, (i & 1u) == 1u);
}
#endif
#ifdef BF16
alias SEQ = u32;
fn sw(i: u32) -> u32 { return i >> 1u; }
fn up(w: u32, i: u32) -> f32 {
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}
#endif
#ifndef F16
#ifndef F16P
#ifndef BF16
alias SEQ = f32;
fn sw(i: u32) -> u32 { return i; }
fn up(w: f32, i: u32) -> f32 { return w; }
#endif
#endif
#endif
