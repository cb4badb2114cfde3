//! include-only
// The uniform block shared by every EFLA kernel, and index helpers.
//
// A dispatch covers `nb` batch rows (the launcher's row group; every [B, ...] binding starts
// at the group's first row) and heads h0 .. h0 + hg of them. Sequence tensors are [B, T, H, n]
// (n = K or V, or 1 for beta); states [B, H, K, V]. Scratch (one f32 buffer, regions at the
// r_* element offsets) is per (batch row, head) of the group: bh = bl * hg + hl, with step
// tensors [bh][T][n] and chunk matrices [bh][NC][C][C]. State slots (`ST`, `DST`) are
// [bh][slots][K][V] when ST_SLOTS is set, else the [B, H, K, V] final-state output itself.
// The carry region holds a K x V state per bh between the dispatches of a sequential kernel.
struct Params {
    nb: u32, T: u32, H: u32, K: u32,
    V: u32, C: u32, NC: u32, flags: u32,
    hg: u32, h0: u32, ntiles: u32, scale: f32,
    off_q: u32, off_k: u32, off_v: u32, off_beta: u32,
    off_s0: u32, off_start: u32, off_go: u32, off_gf: u32,
    off_o: u32, off_ds0: u32, off_dq: u32, off_dk: u32,
    off_dv: u32, off_dbeta: u32, off_st: u32, off_dst: u32,
    r_coef: u32, r_gm: u32, r_pm: u32, r_x: u32,
    r_w: u32, r_u: u32, r_dd: u32, r_dqa: u32,
    r_dw: u32, r_dka: u32, r_dpm: u32, r_dt: u32,
    r_nm: u32, r_dl: u32, r_da: u32, r_carry: u32,
    // the steps (recurrent) or chunks (chunked) this dispatch covers: sequential kernels walk
    // long sequences in several dispatches, carrying their state through memory
    t_begin: u32, t_end: u32, _p0: u32, _p1: u32,
}

const HAS_S0: u32 = 1u;
const HAS_START: u32 = 2u;
const EFLA: u32 = 4u;
const HAS_GF: u32 = 8u;
// Forward kernels: write the outputs (o, s_final). Without it they write what the backward
// needs instead (u, coefficients, per-chunk states).
const WRITE_OUT: u32 = 16u;
const ST_SLOTS: u32 = 32u;

@group(0) @binding(0) var<uniform> P: Params;

// Element index of (bl, t, h, 0) in a [B, T, H, n] tensor of the group.
fn seq_at(bl: u32, t: u32, h: u32, n: u32) -> u32 {
    return ((bl * P.T + t) * P.H + h) * n;
}
// Element index of (bl, h, 0, 0) in a [B, H, K, V] state tensor of the group.
fn state_at(bl: u32, h: u32) -> u32 {
    return (bl * P.H + h) * P.K * P.V;
}
// Element index of step t of (bh) in a scratch step tensor with rows of n (region offset
// not included).
fn scr_at(bh: u32, t: u32, n: u32) -> u32 {
    return (bh * P.T + t) * n;
}
// Element index of (i, j) of chunk c's C x C matrix of (bh) (region offset not included).
fn cc_at(bh: u32, c: u32, i: u32, j: u32) -> u32 {
    return ((bh * P.NC + c) * P.C + i) * P.C + j;
}
