//! include-only
// Types shared by every selective-scan kernel (docs/selective.md): the storage type of sequence
// tensors (f32; f16 with F16; two bf16 per u32 with BF16), the parameter block (one layout
// for every kernel, `Params` in src/ops/selective/wgpu.rs), flag bits and bf16 conversions.

#ifdef F16
alias SEQ = f16;
alias SEQ_OUT = f16;
#endif
#ifdef BF16
alias SEQ = u32;
alias SEQ_OUT = atomic<u32>;
#endif
#ifndef F16
#ifndef BF16
alias SEQ = f32;
alias SEQ_OUT = f32;
#endif
#endif

struct Params {
    rows: u32, T: u32, D: u32, N: u32,
    G: u32, dg: u32, nb: u32, kc: u32,
    bpg: u32, flags: u32, row0: u32, B: u32,
    off_u: u32, off_delta: u32, off_a: u32, off_bm: u32,
    off_cm: u32, off_dskip: u32, off_z: u32, off_bias: u32,
    off_h0: u32, off_start: u32, off_o: u32, off_f: u32,
    off_du: u32, off_ddelta: u32, off_dz: u32, off_dbm: u32,
    off_dcm: u32, off_dh0: u32, off_pp: u32, off_rs: u32,
    off_ck: u32, pad0: u32, pad1: u32, pad2: u32,
}
const HAS_DSKIP: u32 = 1u;
const HAS_Z: u32 = 2u;
const HAS_BIAS: u32 = 4u;
const HAS_H0: u32 = 8u;
const HAS_START: u32 = 16u;
const SOFTPLUS: u32 = 32u;
const HAS_GF: u32 = 64u;

// bf16 element j of a packed word w
fn bf16_at(w: u32, j: u32) -> f32 {
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (j & 1u) == 1u));
}

// f32 -> bf16 bits, round to nearest even; NaN stays NaN
fn bf16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    if (x & 0x7fffffffu) > 0x7f800000u {
        return (x >> 16u) | 0x40u;
    }
    return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

// the bits of v as bf16 at the half of its word that element j occupies
fn bf16_word(v: f32, j: u32) -> u32 {
    return bf16_bits(v) << ((j & 1u) * 16u);
}
