//! include-only
// The reset structure of a chunk (docs/efla.md, resets inside chunks): seg[i] is the last step
// j <= i of the chunk with start set (-1: none, the carried state reaches step i). Steps
// j <= i are in the same segment iff seg[i] <= j; c_i = [seg[i] < 0] (the carried state is in
// play: `carried`); e_i = [seg[i] == seg[len-1]] (step i is in the chunk's last segment:
// `in_last`). Needs `P` and `START` in the including kernel. Every thread of the workgroup
// must call load_segs.
var<workgroup> seg: array<i32, 64>;

fn load_segs(vid: u32, bl: u32, t0: u32, len: u32) {
    workgroupBarrier();
    if vid < len {
        var s = -1;
        if (P.flags & HAS_START) != 0u {
            // a fixed trip count (unrolled; software rasterizers cap loop iterations)
            for (var j = 0u; j < 64u; j++) {
                if j <= vid && START[P.off_start + bl * P.T + t0 + j] != 0u {
                    s = i32(j);
                }
            }
        }
        seg[vid] = s;
    }
    workgroupBarrier();
}

// Steps j <= i of the chunk share a segment.
fn same_seg(i: u32, j: u32) -> bool {
    return seg[i] <= i32(j);
}
// Step j <= i in i's segment (the causal, reset-respecting mask of the chunk products).
fn causal(i: u32, j: u32) -> bool {
    return j <= i && same_seg(i, j);
}
// The carried state reaches step i / step i is in the chunk's last segment.
fn carried(i: u32) -> bool {
    return seg[i] < 0;
}
fn in_last(i: u32, len: u32) -> bool {
    return seg[i] == seg[len - 1u];
}
