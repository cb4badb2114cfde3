//! Launch code for the WGSL FFM aggregation (`shaders/ffm/`).
//!
//! Forward: one dispatch of `ffm/forward.wgsl` per group of batch rows (and per segment, see
//! below; it binds 8 storage buffers, the last its scratch between segments). Backward, per
//! group:
//! `ffm/forward.wgsl` with `CKPT` (the state entering every chunk), then `ffm/backward.wgsl`
//! (recomputes the states chunk by chunk, reverse scan, `dx`, `ds0` and each row's `dlog`);
//! then `common/reduce_rows.wgsl` sums the rows' `dlog` and `ffm/params.wgsl` splits it into
//! `da` and `db`. All in one compute pass.
//!
//! `ffm/backward.wgsl` binds 10 storage buffers. On a device that offers fewer (WebGPU's
//! default limits: 8 per stage) it takes its `PACK` variant: `a`, `b` and `grad_final` are
//! first copied bitwise into one scratch buffer per row group (`common/words.wgsl`, same compute
//! pass), which the kernel reads at three offsets. Devices with more bindings keep the direct
//! variant.
//!
//! Each kernel walks a row's chunks of time in a loop. On Mesa's llvmpipe (lavapipe, and GL on
//! llvmpipe), which silently ends a shader's loop nest after 65535 iterations, a long row's
//! walk is split into segments of chunks, one dispatch each (forward from the first chunks up,
//! backward from the last down), each invocation's state kept between them in a scratch
//! region (the backward's after the rows' `dlog`, in the same binding) and reloaded bit for
//! bit: the results are bitwise those of one walk, at any length. Other adapters walk a row
//! in one dispatch.

use super::{Arg, Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::wgpu::{check_u32, GpuRef, GpuTensor, WgpuContext};
use crate::tensor::DType;

/// Threads per workgroup and steps per thread per chunk (`WG`, `E` in `ffm/common.wgsl`).
const WG: usize = 256;
const E: usize = 4;
/// Below this many workgroups the channel blocks are narrowed (down to 8 columns) to give the
/// device more of them; each narrower block has longer chunks (more lanes) instead.
const TARGET_WORKGROUPS: usize = 256;

const HAS_S0: u32 = 1;
const HAS_START: u32 = 2;
const HAS_GF: u32 = 4;
/// Segment flags: reload the state a previous segment left; store it for the next.
const SEG_CONT: u32 = 8;
const SEG_MORE: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct FwdParams {
    rows: u32,
    t: u32,
    m: u32,
    c: u32,
    mb: u32,
    cw: u32,
    ncb: u32,
    nblk: u32,
    flags: u32,
    k: u32,
    k_lo: u32,
    k_hi: u32,
    off_x: u32,
    off_a: u32,
    off_b: u32,
    off_s0: u32,
    off_start: u32,
    off_out: u32,
    off_sf: u32,
    off_seg: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    rows: u32,
    t: u32,
    m: u32,
    c: u32,
    mb: u32,
    cw: u32,
    ncb: u32,
    nblk: u32,
    flags: u32,
    k: u32,
    k_lo: u32,
    k_hi: u32,
    off_x: u32,
    off_a: u32,
    off_b: u32,
    off_start: u32,
    off_ck: u32,
    off_g: u32,
    off_gf: u32,
    off_dx: u32,
    off_ds0: u32,
    off_part: u32,
    off_seg: u32,
    _q: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ParamParams {
    m: u32,
    c: u32,
    off_in: u32,
    off_da: u32,
    off_db: u32,
    _p: [u32; 3],
}

/// How a problem is laid out on workgroups.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Channel columns per workgroup (`W`); `WG / w` time lanes.
    w: usize,
    /// Memory channels per block.
    mb: usize,
    /// Context channels per block.
    cw: usize,
    /// Context blocks per memory block.
    ncb: usize,
    /// Blocks per batch row.
    nblk: usize,
    /// Chunks per row.
    k: usize,
}

/// Choose the block width: wide blocks (32 columns) store longer contiguous runs per step,
/// narrow ones give more workgroups. A block holds whole memory channels (all `C` context
/// channels of each) whenever `C <= 256`; the backward relies on it to sum `dx` over `c`.
fn layout(p: &Ffm, backward: bool) -> Result<Layout> {
    let (m, c) = (p.memory, p.context);
    let (w, mb, cw, ncb) = if c > WG {
        if backward {
            return Err(Error::unsupported(
                "wgpu",
                format!("ffm backward with context = {c} (at most {WG})"),
            ));
        }
        (WG, 1, WG, c.div_ceil(WG))
    } else {
        let wmin = c.next_power_of_two().max(8);
        let mut w = wmin.max(32);
        while w > wmin && p.batch * m.div_ceil(w / c) < TARGET_WORKGROUPS {
            w /= 2;
        }
        (w, w / c, c, 1)
    };
    Ok(Layout {
        w,
        mb,
        cw,
        ncb,
        nblk: m.div_ceil(mb) * ncb,
        k: p.len.div_ceil((WG / w) * E),
    })
}

/// Mesa's llvmpipe (lavapipe, and GL on llvmpipe) ends a shader's loop nest after 65535
/// iterations, inner loops included, without an error: a walk over all of a long row's chunks
/// in one dispatch stopped short (the backward after 254208 steps for `M = 4, C = 2`, the
/// forward between 2^20 and 2^21 steps for `M = C = 1`). There the kernels walk a row's chunks
/// in segments, one dispatch each, of at most this many loop iterations by the count of
/// [`Walk::per_chunk`] (an upper bound), the state carried between them in memory: bitwise the
/// results of one walk. GPU drivers have no such cap: one segment.
const LLVMPIPE_ITERATIONS: usize = 56_000;

thread_local! {
    static SEGMENT_CHUNKS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with the WGSL FFM kernels (forward, and the backward's two passes) walking at most
/// `chunks` chunks (at least 1) per dispatch, for calls on this thread, on any adapter: the
/// tests force many segments on small problems with it. Not part of the API.
#[doc(hidden)]
pub fn with_segment_chunks<R>(chunks: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SEGMENT_CHUNKS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SEGMENT_CHUNKS.with(|c| c.replace(Some(chunks.max(1)))));
    f()
}

/// A kernel's walk over a row's chunks.
#[derive(Clone, Copy)]
enum Walk {
    /// `ffm/forward.wgsl`, with or without `CKPT`.
    Forward,
    /// `ffm/backward.wgsl`.
    Backward,
}

impl Walk {
    /// Loop iterations per chunk, counting every loop as if none were unrolled: the chunk
    /// loop, the `E`-step loops, `lane_scan`'s `log2(WG / w)` rounds (twice in the backward),
    /// and the backward's `dx` loop with its sum over `c`.
    fn per_chunk(self, p: &Ffm, lay: &Layout) -> usize {
        let tl = WG / lay.w;
        let rounds = tl.trailing_zeros() as usize;
        match self {
            Walk::Forward => 1 + 2 * E + rounds,
            Walk::Backward => {
                1 + 5 * E + 2 * rounds + (lay.mb * tl * E).div_ceil(WG) * (1 + p.context)
            }
        }
    }

    /// Words of state a workgroup keeps between segments: per channel column the carry and
    /// its anchor (7 words), and in the backward every thread's `acc` (2 words) before them
    /// (`ffm/forward.wgsl`, `ffm/backward.wgsl`).
    fn seg_words(self, lay: &Layout) -> usize {
        match self {
            Walk::Forward => 7 * lay.w,
            Walk::Backward => 2 * WG + 7 * lay.w,
        }
    }

    /// Chunks per dispatch: `lay.k` (one segment) but on llvmpipe (see
    /// [`LLVMPIPE_ITERATIONS`]) or when a test asks ([`with_segment_chunks`]).
    fn chunks(self, ctx: &WgpuContext, p: &Ffm, lay: &Layout) -> usize {
        let all = lay.k.max(1);
        if let Some(n) = SEGMENT_CHUNKS.with(std::cell::Cell::get) {
            return n.min(all);
        }
        if !ctx.info.name.contains("llvmpipe") {
            return all;
        }
        (LLVMPIPE_ITERATIONS / self.per_chunk(p, lay)).clamp(1, all)
    }

    /// The segments `(k_lo, k_hi)` in the order they run: from the first chunks up (forward)
    /// or from the last down (backward); one `(0, 0)` when there are no chunks.
    fn segments(self, ctx: &WgpuContext, p: &Ffm, lay: &Layout) -> Vec<(u32, u32)> {
        let per = self.chunks(ctx, p, lay);
        let mut out: Vec<(u32, u32)> = (0..lay.k)
            .step_by(per)
            .map(|lo| (lo as u32, (lo + per).min(lay.k) as u32))
            .collect();
        if out.is_empty() {
            out.push((0, 0));
        }
        if let Walk::Backward = self {
            out.reverse();
        }
        out
    }
}

/// The flags of segment `i` of `n`: reload the state a previous one left, keep it for the next.
fn seg_flags(i: usize, n: usize) -> u32 {
    let mut f = 0;
    if i > 0 {
        f |= SEG_CONT;
    }
    if i + 1 < n {
        f |= SEG_MORE;
    }
    f
}

fn flags(s0: bool, start: bool, gf: bool) -> u32 {
    let mut f = 0;
    if s0 {
        f |= HAS_S0;
    }
    if start {
        f |= HAS_START;
    }
    if gf {
        f |= HAS_GF;
    }
    f
}

/// Elements per batch row of each row-split tensor.
struct Rows {
    /// `x`, `dx`: `T * M`.
    x: usize,
    /// `S`, `grad_s`: `T * M * C * 2`.
    s: usize,
    /// `s0`, `s_final`, `grad_final`, `ds0`, the rows' `dlog`: `M * C * 2`.
    state: usize,
    /// `start`: `T`.
    flags: usize,
    /// Checkpoints: `K * M * C * 2`.
    ck: usize,
}

fn rows(p: &Ffm, lay: &Layout) -> Result<Rows> {
    let mc2 = p.channels() * 2;
    let r = Rows {
        x: p.len * p.memory,
        s: p.len * mc2,
        state: mc2,
        flags: p.len,
        ck: lay.k * mc2,
    };
    check_u32("len * memory * context * 2", r.s)?;
    check_u32("memory * context", p.channels())?;
    Ok(r)
}

/// The kernels store complex values of the buffers they allocate as `vec2<f32>`: their float
/// offsets are even (row offsets are multiples of 8 bytes and binding offsets of 4 or of the
/// device's alignment, itself a multiple of 8 when above 4); checked, never assumed.
fn even(offsets: &[u32]) -> Result<()> {
    match offsets.iter().find(|&&o| o % 2 != 0) {
        Some(o) => Err(Error::Device {
            backend: "wgpu",
            what: format!("ffm: an output bound at an odd float offset {o}"),
        }),
        None => Ok(()),
    }
}

fn bytes(elems: &[usize]) -> Vec<u64> {
    elems.iter().map(|&e| (e * 4) as u64).collect()
}

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &Ffm,
    inp: &FfmInputs<GpuRef<'_>>,
) -> Result<FfmOutputs<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let lay = layout(p, false)?;
    let r = rows(p, &lay)?;
    let segs = Walk::Forward.segments(ctx, p, &lay);
    // per row, when the walk is segmented: the state carried between segments
    let seg_row = if segs.len() > 1 {
        lay.nblk * Walk::Forward.seg_words(&lay)
    } else {
        0
    };
    let groups = ctx.row_groups(p.batch, &bytes(&[r.x, r.s, r.state, r.flags, seg_row]))?;
    let s = ctx.result(&p.spec(Arg::S).shape, DType::F32)?;
    let sf = ctx.result(&p.spec(Arg::SFinal).shape, DType::F32)?;
    // (a word per row, never read, when not: the shared dummy buffer may be bound read-only
    // in the same dispatch)
    let seg = ctx.zeros(&[p.batch * seg_row.max(1)], DType::F32)?;
    let segr = seg.as_ref();
    let pipe = ctx.pipeline("ffm/forward.wgsl", "main", &[], &[("W", lay.w as f64)])?;
    let (sr, sfr) = (s.as_ref(), sf.as_ref());
    let mut launch = ctx.launch("ffm forward");
    for &(b0, nb) in &groups {
        let s0 = inp.s0.map(|v| v.rows(b0, nb, r.state));
        let start = inp.start.map(|v| v.rows(b0, nb, r.flags));
        let (bx, off_x) = ctx.bind(&inp.x.rows(b0, nb, r.x))?;
        let (ba, off_a) = ctx.bind(&inp.a)?;
        let (bb, off_b) = ctx.bind(&inp.b)?;
        let (bs0, off_s0) = ctx.bind_opt(s0.as_ref())?;
        let (bst, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bs, off_out) = ctx.bind(&sr.rows(b0, nb, r.s))?;
        let (bsf, off_sf) = ctx.bind(&sfr.rows(b0, nb, r.state))?;
        let (bseg, off_seg) = ctx.bind(&segr.rows(b0, nb, seg_row.max(1)))?;
        even(&[off_out, off_sf])?;
        let params = FwdParams {
            rows: nb as u32,
            t: p.len as u32,
            m: p.memory as u32,
            c: p.context as u32,
            mb: lay.mb as u32,
            cw: lay.cw as u32,
            ncb: lay.ncb as u32,
            nblk: lay.nblk as u32,
            flags: flags(s0.is_some(), start.is_some(), false),
            k: lay.k as u32,
            off_x,
            off_a,
            off_b,
            off_s0,
            off_start,
            off_out,
            off_sf,
            off_seg,
            ..Default::default()
        };
        let count = check_u32("workgroups", nb * lay.nblk)?;
        let buffers = vec![bx, ba, bb, bs0, bst, bs, bsf, bseg];
        for (si, &(k_lo, k_hi)) in segs.iter().enumerate() {
            let params = FwdParams {
                flags: params.flags | seg_flags(si, segs.len()),
                k_lo,
                k_hi,
                ..params
            };
            launch.dispatch(pipe.clone(), &params, buffers.clone(), count)?;
        }
    }
    launch.submit()?;
    Ok(FfmOutputs { s, s_final: sf })
}

/// Backward pass on the caller's buffers: recomputes the states from `x` (see the module
/// docs of [`ffm`](super)).
pub fn backward(
    ctx: &WgpuContext,
    p: &Ffm,
    inp: &FfmBackwardInputs<GpuRef<'_>>,
) -> Result<FfmGrads<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let lay = layout(p, true)?;
    let r = rows(p, &lay)?;
    let fsegs = Walk::Forward.segments(ctx, p, &lay);
    let segs = Walk::Backward.segments(ctx, p, &lay);
    let mc2 = r.state;
    // per row: its dlog (`mc2`), then, when a walk is segmented, the state its workgroups
    // carry between segments (`2 WG + 7 w` words each in the backward, see
    // ffm/backward.wgsl; the checkpoint pass uses the first 7 w); one binding per row group
    // covers both
    let seg_row = if segs.len() > 1 || fsegs.len() > 1 {
        lay.nblk * Walk::Backward.seg_words(&lay)
    } else {
        0
    };
    let part_row = mc2 + seg_row;
    let groups = ctx.row_groups(
        p.batch,
        &bytes(&[r.x, r.s, r.state, r.flags, r.ck, part_row]),
    )?;
    let dx = ctx.result(&p.spec(Arg::Dx).shape, DType::F32)?;
    let da = ctx.result(&p.spec(Arg::Da).shape, DType::F32)?;
    let db = ctx.result(&p.spec(Arg::Db).shape, DType::F32)?;
    let ds0 = ctx.result(&p.spec(Arg::Ds0).shape, DType::F32)?;
    let ck = ctx.zeros(&[p.batch, r.ck], DType::F32)?;
    // row group (b0, nb): rows' dlog at b0 * part_row, their segment state after it
    let part = ctx.zeros(&[p.batch, part_row], DType::F32)?;
    // rows' dlog summed per row group (when there are several), then over the groups
    let mid = if groups.len() > 1 {
        Some(ctx.zeros(&[groups.len(), mc2], DType::F32)?)
    } else {
        None
    };
    let dlog = ctx.zeros(&[mc2], DType::F32)?;
    let w = [("W", lay.w as f64)];
    let ckpt = ctx.pipeline("ffm/forward.wgsl", "main", &["CKPT"], &w)?;
    // the direct variants where the device has the bindings, else PACK (see the module docs)
    let (pipe, pipe_vec, pack) = match ctx.pipeline("ffm/backward.wgsl", "main", &[], &w) {
        Ok(pipe) => (
            pipe,
            ctx.pipeline("ffm/backward.wgsl", "main", &["GVEC"], &w)?,
            false,
        ),
        Err(Error::Limit { .. }) => (
            ctx.pipeline("ffm/backward.wgsl", "main", &["PACK"], &w)?,
            ctx.pipeline("ffm/backward.wgsl", "main", &["GVEC", "PACK"], &w)?,
            true,
        ),
        Err(e) => return Err(e),
    };
    // per row group: [a | b | grad_final rows]
    let scratch = if pack {
        groups
            .iter()
            .map(|&(_, nb)| ctx.zeros(&[p.memory + p.context + nb * mc2], DType::F32))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let finish = ctx.pipeline("ffm/params.wgsl", "main", &[], &[])?;
    let (dxr, dar, dbr, ds0r) = (dx.as_ref(), da.as_ref(), db.as_ref(), ds0.as_ref());
    let (ckr, dlogr) = (ck.as_ref(), dlog.as_ref());
    let part_at = |b0: usize, len: usize| {
        GpuRef::new(&part.buffer, (b0 * part_row * 4) as u64, len, DType::F32)
    };
    let midr = mid.as_ref().map(GpuTensor::as_ref);
    let mut launch = ctx.launch("ffm backward");
    for (gi, &(b0, nb)) in groups.iter().enumerate() {
        let s0 = inp.s0.map(|v| v.rows(b0, nb, r.state));
        let start = inp.start.map(|v| v.rows(b0, nb, r.flags));
        let gf = inp.grad_final.map(|v| v.rows(b0, nb, r.state));
        let x = inp.x.rows(b0, nb, r.x);
        let ckg = ckr.rows(b0, nb, r.ck);
        let base = FwdParams {
            rows: nb as u32,
            t: p.len as u32,
            m: p.memory as u32,
            c: p.context as u32,
            mb: lay.mb as u32,
            cw: lay.cw as u32,
            ncb: lay.ncb as u32,
            nblk: lay.nblk as u32,
            k: lay.k as u32,
            ..Default::default()
        };
        let count = check_u32("workgroups", nb * lay.nblk)?;
        // pass 1: checkpoints
        let (bx, off_x) = ctx.bind(&x)?;
        let (ba, off_a) = ctx.bind(&inp.a)?;
        let (bb, off_b) = ctx.bind(&inp.b)?;
        let (bs0, off_s0) = ctx.bind_opt(s0.as_ref())?;
        let (bst, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bck, off_ck) = ctx.bind(&ckg)?;
        even(&[off_ck])?;
        // the rows' dlog, then the state carried between segments (both passes)
        let (bpart, off_part) = ctx.bind(&part_at(b0, nb * part_row))?;
        let off_seg = off_part + check_u32("ffm backward scratch", nb * mc2)?;
        let params = FwdParams {
            flags: flags(s0.is_some(), start.is_some(), false),
            off_x,
            off_a,
            off_b,
            off_s0,
            off_start,
            off_out: off_ck,
            off_seg,
            ..base
        };
        let buffers = vec![
            bx.clone(),
            ba.clone(),
            bb.clone(),
            bs0,
            bst.clone(),
            bck.clone(),
            bpart.clone(),
        ];
        // the row's chunks from the first up, one dispatch per segment
        for (si, &(k_lo, k_hi)) in fsegs.iter().enumerate() {
            let params = FwdParams {
                flags: params.flags | seg_flags(si, fsegs.len()),
                k_lo,
                k_hi,
                ..params
            };
            launch.dispatch(ckpt.clone(), &params, buffers.clone(), count)?;
        }
        // pass 2: the backward proper
        let (bg, off_g) = ctx.bind(&inp.grad_s.rows(b0, nb, r.s))?;
        let (bgf, off_gf, off_a, off_b) = if pack {
            let sc = scratch[gi].as_ref();
            let (m, c) = (p.memory, p.context);
            ctx.copy_words(&mut launch, &inp.a, 0, &sc, 0, inp.a.len)?;
            ctx.copy_words(&mut launch, &inp.b, 0, &sc, m, inp.b.len)?;
            if let Some(gf) = &gf {
                ctx.copy_words(&mut launch, gf, 0, &sc, m + c, gf.len)?;
            }
            let (bsc, off) = ctx.bind(&sc)?;
            (bsc, off + (m + c) as u32, off, off + m as u32)
        } else {
            let (bgf, off_gf) = ctx.bind_opt(gf.as_ref())?;
            (bgf, off_gf, off_a, off_b)
        };
        let (bdx, off_dx) = ctx.bind(&dxr.rows(b0, nb, r.x))?;
        let (bds0, off_ds0) = ctx.bind(&ds0r.rows(b0, nb, r.state))?;
        let params = BwdParams {
            rows: base.rows,
            t: base.t,
            m: base.m,
            c: base.c,
            mb: base.mb,
            cw: base.cw,
            ncb: base.ncb,
            nblk: base.nblk,
            flags: flags(false, start.is_some(), gf.is_some()),
            k: base.k,
            off_x,
            off_a,
            off_b,
            off_start,
            off_ck,
            off_g,
            off_gf,
            off_dx,
            off_ds0,
            off_part,
            off_seg,
            ..Default::default()
        };
        // complex loads of grad_s when it sits at an even float offset (always, unless a
        // zero-copy caller passed an odd one)
        let pipe = if off_g % 2 == 0 { &pipe_vec } else { &pipe };
        let buffers = if pack {
            vec![bx, bgf, bst, bck, bg, bdx, bds0, bpart]
        } else {
            vec![bx, ba, bb, bst, bck, bg, bgf, bdx, bds0, bpart]
        };
        // the row's chunks from the last down, one dispatch per segment
        for (si, &(k_lo, k_hi)) in segs.iter().enumerate() {
            let params = BwdParams {
                flags: params.flags | seg_flags(si, segs.len()),
                k_lo,
                k_hi,
                ..params
            };
            launch.dispatch(pipe.clone(), &params, buffers.clone(), count)?;
        }
    }
    match &midr {
        None => ctx.reduce_rows(
            &mut launch,
            &part_at(0, p.batch * mc2),
            &dlogr,
            p.batch,
            mc2,
        )?,
        Some(mid) => {
            for (gi, &(b0, nb)) in groups.iter().enumerate() {
                ctx.reduce_rows(
                    &mut launch,
                    &part_at(b0, nb * mc2),
                    &mid.rows(gi, 1, mc2),
                    nb,
                    mc2,
                )?;
            }
            ctx.reduce_rows(&mut launch, mid, &dlogr, groups.len(), mc2)?;
        }
    }
    let (bl, off_in) = ctx.bind(&dlogr)?;
    let (bda, off_da) = ctx.bind(&dar)?;
    let (bdb, off_db) = ctx.bind(&dbr)?;
    let params = ParamParams {
        m: p.memory as u32,
        c: p.context as u32,
        off_in,
        off_da,
        off_db,
        ..Default::default()
    };
    let count = check_u32("workgroups", (p.memory + p.context).div_ceil(WG))?;
    launch.dispatch(finish, &params, vec![bl, bda, bdb], count)?;
    launch.submit()?;
    Ok(FfmGrads { dx, da, db, ds0 })
}
