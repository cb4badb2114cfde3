//! include-only
// Sums over a lane group: the 8 consecutive virtual threads 8g .. 8g+7 of a workgroup of 256.
// SUBGROUP: a butterfly of subgroupShuffleXor (virtual thread ids come from the subgroup
// builtins and the launcher picks this path only when subgroups have at least 8 lanes, so a
// lane group always sits inside one subgroup). Otherwise: workgroup memory. Both add in a
// fixed pattern, and every lane of a group gets the bitwise same sum. Every thread of the
// workgroup must call lane_sum the same number of times (uniform control flow).
#ifndef SUBGROUP
var<workgroup> lane_red: array<vec4<f32>, 256>;
#endif

fn lane_sum(vid: u32, x: vec4<f32>) -> vec4<f32> {
#ifdef SUBGROUP
    var s = x;
    s += subgroupShuffleXor(s, 1u);
    s += subgroupShuffleXor(s, 2u);
    s += subgroupShuffleXor(s, 4u);
    return s;
#else
    lane_red[vid] = x;
    workgroupBarrier();
    let g = vid & ~7u;
    let s = ((lane_red[g] + lane_red[g + 1u]) + (lane_red[g + 2u] + lane_red[g + 3u]))
        + ((lane_red[g + 4u] + lane_red[g + 5u]) + (lane_red[g + 6u] + lane_red[g + 7u]));
    workgroupBarrier();
    return s;
#endif
}
