//! include-only
// Shared pieces of the FFM kernels (docs/ffm.md): complex helpers, closed-form powers of gamma,
// the channel layout of a workgroup, and the lane scan of a chunk.
//
// Threads: WG = 256 per workgroup, one workgroup per (batch row, block of channels). Thread
// (ql = lid % W, j = lid / W) owns channel column ql of the block and time lane j; a chunk is
// L = TL * E consecutive steps (TL = WG / W lanes of E steps each), lane j owning steps
// [k L + j E, k L + j E + E) of chunk k. A block holds mb memory channels times cw context
// channels (column ql = (m - m0) * cw + (c - c0)); columns past mb * cw idle.
//
// A lane's E steps compose into one map: state -> (any reset ? 0 : gamma^E) * state + x_lane.
// Lanes are combined by a Hillis-Steele scan over (any, x) pairs in workgroup memory; the
// multiplier of a reset-free span of n steps is gamma^n in closed form (cpow), never a product
// of multipliers, so a span's power carries one rounding, not one per step.

const WG: u32 = 256u;
const E: u32 = 4u;
override W: u32 = 32u;

var<workgroup> sf: array<u32, 256>;
var<workgroup> sx: array<vec2<f32>, 256>;
var<workgroup> carry: array<vec2<f32>, 256>;

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn cconj(a: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x, -a.y);
}

// th reduced to about [-pi, pi] (Cody-Waite: 2 pi = 6.28125 + 1.9353...e-3, the first part
// exact in 8 bits so k * 6.28125 is exact for |k| < 2^16).
fn reduce_angle(th: f32) -> f32 {
    let k = round(th * 0.15915494309189535);
    return (th - k * 6.28125) - k * 1.9353071795864769e-3;
}

// exp(x), to about an ulp whatever the driver's exp: x = k ln2 + r (Cody-Waite, ln2 split so
// k * hi is exact), |r| <= ln2 / 2, Taylor series of e^r to r^8 (remainder < 2^-32).
// Non-finite and out-of-range arguments as IEEE exp: NaN stays NaN (tested on the bits, which
// no compiler folds away), overflow gives +inf, underflow 0, so a non-finite `a` makes the
// same non-finite powers as the reference's instead of being clamped into finite ones.
fn exp_acc(x_in: f32) -> f32 {
    if (bitcast<u32>(x_in) & 0x7fffffffu) > 0x7f800000u {
        return x_in;
    }
    if x_in > 88.72 {
        // +inf (a runtime overflow: an infinite literal is not valid WGSL)
        return x_in * 3.0e38;
    }
    if x_in < -104.0 {
        return 0.0;
    }
    let x = clamp(x_in, -100.0, 88.0);
    let k = round(x * 1.4426950408889634);
    let r = (x - k * 0.693145751953125) - k * 1.4286068202862268e-6;
    var p = 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return ldexp(p, i32(k));
}

// (cos th, sin th), to about an ulp whatever the driver's sin and cos (Vulkan allows an
// absolute error of 2^-11): th = q pi/2 + r (Cody-Waite, pi/2 split so q * hi is exact),
// |r| <= pi/4, Taylor series to r^9 / r^10 (remainders < 2^-28), then the quadrant.
fn cis_acc(th: f32) -> vec2<f32> {
    let q = round(th * 0.6366197723675814);
    let r = (th - q * 1.5703125) - q * 4.8382679489661923e-4;
    let r2 = r * r;
    let s = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0))));
    let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
    switch i32(q) & 3 {
        case 0: { return vec2<f32>(c, s); }
        case 1: { return vec2<f32>(-s, c); }
        case 2: { return vec2<f32>(-c, -s); }
        default: { return vec2<f32>(s, -c); }
    }
}

// gamma^n = exp(n a) (cos(n b), sin(n b)), the angle n b formed in f32 from the integer n in
// two parts: b = hi + lo with hi keeping 12 significant bits, so n hi is exact for n < 4096
// (the kernels use n <= E * 32 = 128) and is reduced exactly; n lo is small. The angle
// is then good to a few ulps of pi rather than to an ulp of n b (a single rounding of n b
// would cost up to n |b| 2^-24 radians, the largest error in a long slowly decaying scan).
// b must already be reduced to [-pi, pi]. The powers are computed once per thread, so exp,
// cos and sin are evaluated by hand (exp_acc, cis_acc): the state's drift over a long,
// slowly decaying sequence is the drift of these powers, and drivers' transcendentals can be
// far less accurate than an ulp.
fn cpow(a: f32, b: f32, n: u32) -> vec2<f32> {
    // gamma^0 = 1 exactly, whatever gamma (0 * inf would make it NaN)
    if n == 0u {
        return vec2<f32>(1.0, 0.0);
    }
    let nf = f32(n);
    let hi = bitcast<f32>(bitcast<u32>(b) & 0xfffff000u);
    let lo = b - hi;
    let th = reduce_angle(nf * hi) + nf * lo;
    return exp_acc(nf * a) * cis_acc(th);
}

struct Chan {
    m: u32,
    c: u32,
    live: bool,
}

// The channel of column ql in block blk (blocks of one row: ceil(M / mb) * ncb, the ncb
// context blocks of a memory block adjacent).
fn channel(blk: u32, ql: u32, mb: u32, cw: u32, ncb: u32, M: u32, C: u32) -> Chan {
    let m = (blk / ncb) * mb + ql / cw;
    let c = (blk % ncb) * cw + ql % cw;
    return Chan(m, c, ql < mb * cw && m < M && c < C);
}

struct Span {
    any: bool,
    x: vec2<f32>,
}

// Exclusive scan of the lane maps (any: the lane's steps drop the state; x: the lane's result
// from a zero state) of every channel column: the composition of lanes 0..j-1 (rev = false) or
// of lanes j+1..TL-1 (rev = true, multipliers conjugated). pw[k] = gamma^(E 2^k).
// Every thread of the workgroup must call this (it has barriers).
fn lane_scan(lid: u32, j: u32, any_in: bool, x_in: vec2<f32>, rev: bool,
             pw: array<vec2<f32>, 8>) -> Span {
    let tl = WG / W;
    var any = any_in;
    var x = x_in;
    workgroupBarrier();
    sf[lid] = u32(any);
    sx[lid] = x;
    workgroupBarrier();
    var k = 0u;
    for (var off = 1u; off < tl; off = off << 1u) {
        let has = select(j >= off, j + off < tl, rev);
        var pa = 0u;
        var px = vec2<f32>(0.0);
        if has {
            let nb = select(lid - off * W, lid + off * W, rev);
            pa = sf[nb];
            px = sx[nb];
        }
        workgroupBarrier();
        if has {
            // own span (off lanes) after the neighbour's: x = gamma^(E off) x_prev + x_own
            if !any {
                var mult = pw[k];
                if rev {
                    mult = cconj(mult);
                }
                x = cmul(mult, px) + x;
            }
            any = any || pa != 0u;
            sf[lid] = u32(any);
            sx[lid] = x;
        }
        workgroupBarrier();
        k += 1u;
    }
    var r = Span(false, vec2<f32>(0.0));
    if select(j > 0u, j + 1u < tl, rev) {
        let nb = select(lid - W, lid + W, rev);
        r = Span(sf[nb] != 0u, sx[nb]);
    }
    return r;
}

// The powers lane_scan needs: gamma^(E 2^k) for 2^k < TL.
fn lane_powers(a: f32, b: f32) -> array<vec2<f32>, 8> {
    var pw: array<vec2<f32>, 8>;
    var k = 0u;
    for (var off = 1u; off < WG / W; off = off << 1u) {
        pw[k] = cpow(a, b, E * off);
        k += 1u;
    }
    return pw;
}

// ------------------------------------------------------------------ the anchored carry
//
// The state carried from chunk to chunk over a long sequence. Multiplying it by gamma^L once
// per chunk repeats that power's rounding (a few ulps, the same every chunk) once per chunk:
// an undamped or slowly decaying state drifts by that much per chunk (rel 1e-4 at T = 2^18).
// Instead the carry is kept relative to an anchor chunk: state = gamma^n (u + ul), n the steps
// since the anchor, u + ul an f32 pair updated by u += gamma^-(n + L) X per chunk (X the
// chunk's result from a zero state), both powers in closed form for any n (cpow_far): every
// power carries its own rounding once, none is repeated. A reset in the chunk, or a decay
// that would take gamma^-n past f32's range, moves the anchor to the chunk's end (state
// computed directly; only decayed errors are dropped there).

#include "common/two_prod.wgsl"

// a + b = s + e exactly (Knuth), per component. `op` returns its argument: it hides from the
// compiler that s - b came from (a + b), so the expression is not simplified away.
fn op(v: vec2<f32>) -> vec2<f32> {
    return select(v, -v, P.flags == 0xffffffffu);
}
fn two_sum2(a: vec2<f32>, b: vec2<f32>) -> array<vec2<f32>, 2> {
    let s = a + b;
    let bb = s - op(a);
    return array<vec2<f32>, 2>(s, (a - (s - bb)) + (op(b) - bb));
}

// gamma^n for any n < 2^24 (b reduced to [-pi, pi]): n b = p + e exactly, reduced by
// 2 pi = 6.25 + C2 + C3 (k 6.25 exact for k < 2^21, k C2 exact as a pair), so the angle is
// good to about 1e-10 radians; exp(n a) = exp(p) (1 + e).
fn cpow_far(a: f32, b: f32, n: u32) -> vec2<f32> {
    if n == 0u {
        return vec2<f32>(1.0, 0.0);
    }
    let nf = f32(n);
    let p = two_prod(nf, b);
    let k = round(p.x * 0.15915494309189535);
    let q = two_prod(k, 0.03318530693650246);
    let th = ((p.x - k * 6.25) - q.x) + ((p.y - q.y) - k * 2.430837753308879e-10);
    let pa = two_prod(nf, a);
    // (the error term is NaN when n a is infinite: then exp alone decides)
    let corr = select(1.0 + pa.y, 1.0, (bitcast<u32>(pa.y) & 0x7fffffffu) >= 0x7f800000u);
    return (exp_acc(pa.x) * corr) * cis_acc(th);
}

// The anchored carry of one column (private to the one thread that updates it).
struct Anchor {
    u: vec2<f32>,
    ul: vec2<f32>,
    n: u32,
}

fn anchor_at(s: vec2<f32>) -> Anchor {
    return Anchor(s, vec2<f32>(0.0), 0u);
}

// The state gamma^n (u + ul), gamma = exp(a + i b).
fn anchor_state(an: Anchor, a: f32, b: f32) -> vec2<f32> {
    return cmul(cpow_far(a, b, an.n), an.u + an.ul);
}

// The anchor after one more chunk of L steps whose map from a zero state is (any, x): a
// reset in the chunk (any) replaces the state by x.
fn anchor_next(an: Anchor, any: bool, x: vec2<f32>, a: f32, b: f32, L: u32) -> Anchor {
    if any {
        return anchor_at(x);
    }
    let n = an.n + L;
    // gamma^-n stays within e^+-40 (far inside f32's range); past that the anchor moves
    if abs(f32(n) * a) > 40.0 || n >= (1u << 23u) {
        return anchor_at(cmul(cpow_far(a, b, n), an.u + an.ul) + x);
    }
    let y = cmul(cpow_far(-a, -b, n), x);
    let s = two_sum2(an.u, y + an.ul);
    return Anchor(s[0], s[1], n);
}
