//! include-only
// The chunked workgroup scan shared by the linear scan's forward and backward kernels.
//
// Threads: WG = 256 per workgroup; thread (c = lid % CB, j = lid / CB) owns channel c of the
// workgroup's block of CB channels and E consecutive steps of each chunk of
// L = (WG / CB) * E steps. A chunk is: each thread composes its E steps into one map
// (state -> r ? x : m * state + x), the TL = WG / CB lanes of a channel scan those maps in
// workgroup memory (Hillis-Steele), each lane applies the prefix to the carried state and
// replays its steps, and the last lane hands the new state to the next chunk. No workgroup
// ever waits on another, so any T works.
//
// A reset is a flag r in the map, never a zero multiplier: a map with r set *replaces* the
// state (select), so a NaN or infinity carried into a reset stays before it (NaN * 0 = NaN).

const WG: u32 = 256u;
const E: u32 = 4u;
override CB: u32 = 32u;

var<workgroup> sm: array<V, 256>;
var<workgroup> sml: array<V, 256>;
var<workgroup> sx: array<V, 256>;
var<workgroup> sr: array<u32, 256>;
var<workgroup> carry: array<V, 32>;

#include "common/two_prod.wgsl"

// a + b = s + e exactly (Knuth). `op` returns its argument unchanged; it hides from the
// compiler that s - b came from (a + b) so the expression is not simplified to a.
fn op(v: f32) -> f32 {
    return select(v, -v, P.flags == 0xffffffffu);
}
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = a + b;
    let bb = s - op(a);
    return vec2<f32>(s, (a - (s - bb)) + (op(b) - bb));
}

// (ah + al)(bh + bl) as hi + lo (unnormalized, |lo| about an ulp of hi), to about 2^-44
// relative: the products of the high parts exactly, the terms with a low part in f32.
fn ff_mul(ah: V, al: V, bh: V, bl: V) -> array<V, 2> {
#ifdef COMPLEX
    let p1 = two_prod(ah.x, bh.x);
    let p2 = two_prod(ah.y, bh.y);
    let q1 = two_prod(ah.x, bh.y);
    let q2 = two_prod(ah.y, bh.x);
    let re = two_sum(p1.x, -p2.x);
    let im = two_sum(q1.x, q2.x);
    let cross = vmul(ah, bl) + vmul(al, bh);
    let lo = V(re.y + (p1.y - p2.y), im.y + (q1.y + q2.y)) + cross;
    return array<V, 2>(V(re.x, im.x), lo);
#else
    let p = two_prod(ah, bh);
    return array<V, 2>(p.x, p.y + (ah * bl + al * bh));
#endif
}

// state -> r ? x : (m + ml) * state + x. The multiplier is kept as an unevaluated sum
// m + ml (about 44 bits): it is a product of up to L transitions, and its f32 roundings
// are the same in every chunk of a time-invariant scan (and biased for transitions near 1),
// an error the carried state accumulates over the whole sequence (rel 5e-5 at T = 2^20 with
// a within 1e-4 of 1). x and the replayed steps are f32: their roundings do not accumulate.
struct Map {
    m: V,
    ml: V,
    x: V,
    r: bool,
}

fn map_id() -> Map {
    return Map(vone(), vzero(), vzero(), false);
}

// One step appended to f: (reset ? replace by xe : multiply by me, add xe).
fn map_step(f: Map, me: V, xe: V, reset: bool) -> Map {
    if reset {
        return Map(vone(), vzero(), xe, true);
    }
    let m = ff_mul(me, vzero(), f.m, f.ml);
    return Map(m[0], m[1], vmul(me, f.x) + xe, f.r);
}

// `later` after `earlier`.
fn map_then(earlier: Map, later: Map) -> Map {
    if later.r {
        return later;
    }
    let m = ff_mul(later.m, later.ml, earlier.m, earlier.ml);
    let x = vmul(later.m, earlier.x) + (vmul(later.ml, earlier.x) + later.x);
    return Map(m[0], m[1], x, earlier.r);
}

fn map_apply(f: Map, s: V) -> V {
    if f.r {
        return f.x;
    }
    return vmul(f.m, s) + (vmul(f.ml, s) + f.x);
}

// The maps entering lane j of channel c (the composition of lanes 0..j-1, identity for
// j = 0) and leaving it (lanes 0..j).
struct Prefix {
    enter: Map,
    leave: Map,
}

// Every thread of the workgroup must call this (it has barriers).
fn lane_prefix(lid: u32, j: u32, own: Map) -> Prefix {
    let tl = WG / CB;
    var f = own;
    sm[lid] = f.m;
    sml[lid] = f.ml;
    sx[lid] = f.x;
    sr[lid] = u32(f.r);
    workgroupBarrier();
    for (var off = 1u; off < tl; off = off << 1u) {
        var p = map_id();
        let has = j >= off;
        if has {
            let n = lid - off * CB;
            p = Map(sm[n], sml[n], sx[n], sr[n] != 0u);
        }
        workgroupBarrier();
        if has {
            f = map_then(p, f);
            sm[lid] = f.m;
            sml[lid] = f.ml;
            sx[lid] = f.x;
            sr[lid] = u32(f.r);
        }
        workgroupBarrier();
    }
    var r = map_id();
    if j > 0u {
        let n = lid - CB;
        r = Map(sm[n], sml[n], sx[n], sr[n] != 0u);
    }
    return Prefix(r, f);
}
