//! include-only
// The chunked workgroup scan shared by the linear scan's forward and backward kernels.
//
// Threads: WG = 256 per workgroup; thread (c = lid % CB, j = lid / CB) owns channel c of the
// workgroup's block of CB channels and E consecutive steps of each chunk of
// L = (WG / CB) * E steps. A chunk is: each thread composes its E steps into one affine map
// (state -> m * state + x), the TL = WG / CB lanes of a channel scan those maps in workgroup
// memory (Hillis-Steele), each lane applies the prefix to the carried state and replays its
// steps, and the last lane hands the new state to the next chunk. No workgroup ever waits on
// another, so any T works.

const WG: u32 = 256u;
const E: u32 = 4u;
override CB: u32 = 32u;

var<workgroup> sm: array<V, 256>;
var<workgroup> sx: array<V, 256>;
var<workgroup> carry: array<V, 32>;

// The map entering lane j of channel c: the composition of lanes 0..j-1 (identity for j = 0).
// Every thread of the workgroup must call this (it has barriers).
fn lane_prefix(lid: u32, j: u32, m_in: V, x_in: V) -> array<V, 2> {
    let tl = WG / CB;
    var m = m_in;
    var x = x_in;
    sm[lid] = m;
    sx[lid] = x;
    workgroupBarrier();
    for (var off = 1u; off < tl; off = off << 1u) {
        var pm = vone();
        var px = vzero();
        let has = j >= off;
        if has {
            pm = sm[lid - off * CB];
            px = sx[lid - off * CB];
        }
        workgroupBarrier();
        if has {
            x = vmul(m, px) + x;
            m = vmul(m, pm);
            sm[lid] = m;
            sx[lid] = x;
        }
        workgroupBarrier();
    }
    var r = array<V, 2>(vone(), vzero());
    if j > 0u {
        r = array<V, 2>(sm[lid - CB], sx[lid - CB]);
    }
    return r;
}
