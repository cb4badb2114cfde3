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
var<workgroup> sx: array<V, 256>;
var<workgroup> sr: array<u32, 256>;
var<workgroup> carry: array<V, 32>;

// state -> r ? x : m * state + x
struct Map {
    m: V,
    x: V,
    r: bool,
}

fn map_id() -> Map {
    return Map(vone(), vzero(), false);
}

// One step appended to f: (reset ? replace by xe : multiply by me, add xe).
fn map_step(f: Map, me: V, xe: V, reset: bool) -> Map {
    if reset {
        return Map(vone(), xe, true);
    }
    return Map(vmul(me, f.m), vmul(me, f.x) + xe, f.r);
}

// `later` after `earlier`.
fn map_then(earlier: Map, later: Map) -> Map {
    if later.r {
        return later;
    }
    return Map(vmul(later.m, earlier.m), vmul(later.m, earlier.x) + later.x, earlier.r);
}

fn map_apply(f: Map, s: V) -> V {
    if f.r {
        return f.x;
    }
    return vmul(f.m, s) + f.x;
}

// The map entering lane j of channel c: the composition of lanes 0..j-1 (identity for j = 0).
// Every thread of the workgroup must call this (it has barriers).
fn lane_prefix(lid: u32, j: u32, own: Map) -> Map {
    let tl = WG / CB;
    var f = own;
    sm[lid] = f.m;
    sx[lid] = f.x;
    sr[lid] = u32(f.r);
    workgroupBarrier();
    for (var off = 1u; off < tl; off = off << 1u) {
        var p = map_id();
        let has = j >= off;
        if has {
            let n = lid - off * CB;
            p = Map(sm[n], sx[n], sr[n] != 0u);
        }
        workgroupBarrier();
        if has {
            f = map_then(p, f);
            sm[lid] = f.m;
            sx[lid] = f.x;
            sr[lid] = u32(f.r);
        }
        workgroupBarrier();
    }
    var r = map_id();
    if j > 0u {
        let n = lid - CB;
        r = Map(sm[n], sx[n], sr[n] != 0u);
    }
    return r;
}
