//! Launch code for the CUDA FFM aggregation (`kernels/ffm/ffm.cu`, whose header describes the
//! thread layout).
//!
//! Forward: one launch of `ffm_fwd_v{1,2}`. Backward: `ffm_ckpt_v*` (the state entering every
//! chunk), `ffm_bwd_v*_g*` (recomputes each chunk's states, reverse scan, `dx`, `ds0` and each
//! row's `dlog`), `ffm_dx_reduce` when a memory channel's context channels span several
//! blocks, `reduce_rows_f32` (rows' `dlog` summed in order) and `ffm_params` (`da`, `db`).
//! Every sum has a fixed order: results are bitwise reproducible.

use super::{Arg, Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{int, push_opt, CuRef, CuTensor, CudaBackend};
use crate::tensor::DType;
use cudarc::driver::{DevicePtr, PushKernelArg};

const MODULE: &str = "ffm/ffm.cu";
/// Threads per block and steps per thread per chunk (`NT`, `E` in `ffm.cu`).
const NT: usize = 256;
const E: usize = 8;
/// Blocks that keep an H100 busy (132 SMs, about 4 resident blocks each). A fixed number, not
/// the device's, so the emulator picks the layouts a real GPU would.
const TARGET_BLOCKS: usize = 528;

const HAS_S0: u32 = 1;
const HAS_START: u32 = 2;
const HAS_GF: u32 = 4;

/// How a problem is laid out on blocks (see the header of `ffm.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Complex channels per thread (2 when `C` is even, else 1).
    pub v: usize,
    /// Unit columns per block (a power of two, 1 to 256); `256 / cols` time lanes.
    pub cols: usize,
    /// Memory channels per block.
    pub mb: usize,
    /// Units (of `v` context channels) of a memory channel per block.
    pub cwu: usize,
    /// Context blocks per memory channel (1 when a block holds whole memory channels).
    pub ncb: usize,
    /// Blocks per batch row.
    pub nblk: usize,
    /// Chunks of `(256 / cols) * 8` steps per row.
    pub k: usize,
}

impl Layout {
    /// The layout of `p` with `cols` unit columns per block: whole memory channels per block
    /// when a memory channel's `C / v` units fit, else runs of `cols` units of one.
    fn with_cols(p: &Ffm, cols: usize) -> Layout {
        let v = if p.context.is_multiple_of(2) { 2 } else { 1 };
        let cu = p.context / v;
        let (mb, cwu, ncb) = if cu <= cols {
            ((cols / cu).min(p.memory), cu, 1)
        } else {
            (1, cols, cu.div_ceil(cols))
        };
        Layout {
            v,
            cols,
            mb,
            cwu,
            ncb,
            nblk: p.memory.div_ceil(mb) * ncb,
            k: p.len.div_ceil((NT / cols) * E),
        }
    }
}

/// The layout the CUDA kernels use for `p` (`cols = None`), or the one with `cols` unit
/// columns per block (a power of two from 1 to 256; for tests and tuning).
///
/// The automatic choice: among widths whose warp stores cover whole 32-byte sectors
/// (`cols * v >= 4`), the one with the smallest estimated time,
/// `max(thread-chunks / machine, chunks in sequence)`, the widest on ties (longer contiguous
/// stores, fewer scan levels). Narrow blocks give more blocks and longer chunks (more time
/// lanes per channel); wide ones waste nothing on short sequences.
pub fn layout(p: &Ffm, cols: Option<usize>) -> Result<Layout> {
    if let Some(c) = cols {
        if !c.is_power_of_two() || c > NT {
            return Err(Error::value("cols", "a power of two from 1 to 256", c));
        }
        return Ok(Layout::with_cols(p, c));
    }
    let v = if p.context.is_multiple_of(2) { 2 } else { 1 };
    let mut best: Option<(f64, Layout)> = None;
    for cols in (0..=8).map(|s| 1usize << s).filter(|c| c * v >= 4) {
        let lay = Layout::with_cols(p, cols);
        let blocks = p.batch.saturating_mul(lay.nblk);
        let cost = (blocks.saturating_mul(lay.k) as f64 / TARGET_BLOCKS as f64).max(lay.k as f64);
        if best.is_none_or(|(c, _)| cost <= c) {
            best = Some((cost, lay));
        }
    }
    Ok(best.expect("seven or eight candidates").1)
}

/// The kernels' size parameters, checked to fit their `int`s.
struct Args {
    rows: i32,
    t: i32,
    m: i32,
    c: i32,
    cols: i32,
    mb: i32,
    cwu: i32,
    ncb: i32,
    nblk: i32,
    k: i32,
    blocks: u64,
}

fn args(p: &Ffm, lay: &Layout) -> Result<Args> {
    // every index the kernels form in `int` stays below these (step offsets of S within a
    // lane, E * 2 * M * C floats; chunk starts up to len + L)
    int("len + chunk", p.len + (NT / lay.cols) * E)?;
    int(
        "memory * context * 2 * 8",
        p.channels().saturating_mul(2 * E),
    )?;
    Ok(Args {
        rows: int("batch", p.batch)?,
        t: int("len", p.len)?,
        m: int("memory", p.memory)?,
        c: int("context", p.context)?,
        cols: lay.cols as i32,
        mb: lay.mb as i32,
        cwu: lay.cwu as i32,
        ncb: lay.ncb as i32,
        nblk: int("blocks per row", lay.nblk)?,
        k: lay.k as i32,
        blocks: (p.batch as u64) * (lay.nblk as u64),
    })
}

/// Push the layout parameters shared by the forward and backward kernels.
fn push_layout<'b>(b: &mut cudarc::driver::LaunchArgs<'b>, a: &'b Args, flags: &'b u32) {
    b.arg(&a.rows)
        .arg(&a.t)
        .arg(&a.m)
        .arg(&a.c)
        .arg(&a.cols)
        .arg(&a.mb)
        .arg(&a.cwu)
        .arg(&a.ncb)
        .arg(&a.nblk)
        .arg(&a.k)
        .arg(flags);
}

/// The f32 view inside a checked argument (the checks ran before; a mismatch is an error).
fn f32_view<'a, 'b>(r: &'a CuRef<'b>) -> Result<&'a cudarc::driver::CudaView<'b, f32>> {
    match r {
        CuRef::F32(v) => Ok(v),
        _ => Err(Error::Device {
            backend: "cuda",
            what: "ffm: an f32 argument of another type".into(),
        }),
    }
}

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmInputs<CuRef<'_>>,
) -> Result<FfmOutputs<CuTensor>> {
    forward_with(be, p, inp, None)
}

/// [`forward`] with the block width of [`layout`] (`None`: the automatic choice).
pub fn forward_with(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmInputs<CuRef<'_>>,
    cols: Option<usize>,
) -> Result<FfmOutputs<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let lay = layout(p, cols)?;
    let a = args(p, &lay)?;
    let f = be.function(MODULE, &format!("ffm_fwd_v{}", lay.v))?;
    let mut s = be.zeros(&p.spec(Arg::S).shape, DType::F32)?;
    let mut sf = be.zeros(&p.spec(Arg::SFinal).shape, DType::F32)?;
    let mut fl = 0;
    if inp.s0.is_some() {
        fl |= HAS_S0;
    }
    if inp.start.is_some() {
        fl |= HAS_START;
    }
    let cfg = be.grid(a.blocks, NT as u32, 0)?;
    let mut b = be.stream.launch_builder(&f);
    inp.x.push(&mut b);
    inp.a.push(&mut b);
    inp.b.push(&mut b);
    push_opt(&mut b, inp.s0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    s.push_mut(&mut b);
    sf.push_mut(&mut b);
    push_layout(&mut b, &a, &fl);
    // SAFETY: the parameters follow `ffm_fwd_v*` in ffm.cu in order and type (f32 x, a, b,
    // s0, u8 start, f32 S and final state, then the ints of `Lay` and the flags); `check`
    // verified every input holds exactly the elements its shape needs (s0, start only read
    // when their flag is set), the outputs were allocated from the same shapes by this
    // function (so S and the final state are 16-byte aligned, as the vector stores need),
    // and the kernel touches only rows < batch, steps < len and live columns (m < memory,
    // context channels < context); blocks past batch * nblk return at once.
    unsafe { be.run(b, cfg) }?;
    Ok(FfmOutputs { s, s_final: sf })
}

/// Backward pass on the caller's device buffers (recomputes the states from `x`).
pub fn backward(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmBackwardInputs<CuRef<'_>>,
) -> Result<FfmGrads<CuTensor>> {
    backward_with(be, p, inp, None)
}

/// [`backward`] with the block width of [`layout`] (`None`: the automatic choice).
pub fn backward_with(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmBackwardInputs<CuRef<'_>>,
    cols: Option<usize>,
) -> Result<FfmGrads<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let lay = layout(p, cols)?;
    let a = args(p, &lay)?;
    let mc2 = p.channels() * 2;
    let mut dx = be.zeros(&p.spec(Arg::Dx).shape, DType::F32)?;
    let mut da = be.zeros(&p.spec(Arg::Da).shape, DType::F32)?;
    let mut db = be.zeros(&p.spec(Arg::Db).shape, DType::F32)?;
    let mut ds0 = be.zeros(&p.spec(Arg::Ds0).shape, DType::F32)?;
    let mut ck = be.zeros(&[p.batch, lay.k, mc2], DType::F32)?;
    let mut part = be.zeros(&[p.batch, mc2], DType::F32)?;
    let mut dlog = be.zeros(&[mc2], DType::F32)?;
    // per-context-block partials of dx when a memory channel spans several blocks
    let mut dxp = if lay.ncb > 1 {
        Some(be.zeros(&[p.batch, p.len, p.memory, lay.ncb], DType::F32)?)
    } else {
        None
    };
    let mut fl = 0;
    if inp.s0.is_some() {
        fl |= HAS_S0;
    }
    if inp.start.is_some() {
        fl |= HAS_START;
    }
    let cfg = be.grid(a.blocks, NT as u32, 0)?;

    // pass 1: the state entering every chunk
    let f = be.function(MODULE, &format!("ffm_ckpt_v{}", lay.v))?;
    let mut b = be.stream.launch_builder(&f);
    inp.x.push(&mut b);
    inp.a.push(&mut b);
    inp.b.push(&mut b);
    push_opt(&mut b, inp.s0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    ck.push_mut(&mut b);
    b.arg(&crate::runtime::cuda::NULL);
    push_layout(&mut b, &a, &fl);
    // SAFETY: `ffm_ckpt_v*` has the forward's parameters; with CKPT it writes only
    // ck[(row * K + k) * M * C + channel] (V complex values per live column), and `ck` was
    // allocated here as [batch, K, M * C * 2] floats; the final-state pointer is null and
    // never used. The inputs were checked as for the forward.
    unsafe { be.run(b, cfg) }?;

    // pass 2: the backward proper; grad_s is read with the widest loads its address allows
    let gaddr = {
        let (ptr, _sync) = f32_view(&inp.grad_s)?.device_ptr(&be.stream);
        ptr
    };
    let gw = if lay.v == 2 && gaddr.is_multiple_of(16) {
        4
    } else if gaddr.is_multiple_of(8) {
        2
    } else {
        1
    };
    let f = be.function(MODULE, &format!("ffm_bwd_v{}_g{}", lay.v, gw))?;
    let fl = if inp.grad_final.is_some() {
        fl | HAS_GF
    } else {
        fl
    };
    let mut b = be.stream.launch_builder(&f);
    inp.x.push(&mut b);
    inp.a.push(&mut b);
    inp.b.push(&mut b);
    push_opt(&mut b, inp.start.as_ref());
    let ckr = ck.as_ref();
    ckr.push(&mut b);
    inp.grad_s.push(&mut b);
    push_opt(&mut b, inp.grad_final.as_ref());
    match dxp.as_mut() {
        Some(d) => d.push_mut(&mut b),
        None => dx.push_mut(&mut b),
    }
    ds0.push_mut(&mut b);
    part.push_mut(&mut b);
    push_layout(&mut b, &a, &fl);
    // SAFETY: the parameters follow `ffm_bwd_v*_g*` in ffm.cu in order and type; inputs were
    // checked against their shapes (grad_final read only with HAS_GF, start only with
    // HAS_START), `ck` is pass 1's output for this layout, and grad_s is read in pieces of
    // `gw` floats only where its device address is aligned to them (checked just above; the
    // unit offsets are multiples of `gw` floats because C is even when V = 2). The kernel
    // writes dx [batch, len, memory] (or the partials [batch, len, memory, ncb] when
    // ncb > 1), ds0 [batch, M, C] complex and part [batch, M * C] complex, all allocated
    // here, only at rows < batch, steps < len and live channels.
    unsafe { be.run(b, cfg) }?;

    if let Some(dxp) = dxp.as_ref() {
        let f = be.function(MODULE, "ffm_dx_reduce")?;
        let n = (p.batch * p.len * p.memory) as i64;
        let ncb = lay.ncb as i32;
        let cfg = be.grid((n as u64).div_ceil(NT as u64), NT as u32, 0)?;
        let dxpr = dxp.as_ref();
        let mut b = be.stream.launch_builder(&f);
        dxpr.push(&mut b);
        dx.push_mut(&mut b);
        b.arg(&n).arg(&ncb);
        // SAFETY: ffm_dx_reduce(dxp [n, ncb], dx [n], n, ncb): both allocated here with those
        // sizes; threads past n return.
        unsafe { be.run(b, cfg) }?;
    }

    let f = be.function(MODULE, "reduce_rows_f32")?;
    let cols = int("memory * context * 2", mc2)?;
    let cfg = be.grid(mc2.div_ceil(NT) as u64, NT as u32, 0)?;
    let partr = part.as_ref();
    let mut b = be.stream.launch_builder(&f);
    partr.push(&mut b);
    dlog.push_mut(&mut b);
    b.arg(&a.rows).arg(&cols);
    // SAFETY: reduce_rows_f32(in [rows, cols], out [cols], rows, cols): `part` holds
    // batch * M * C * 2 floats and `dlog` M * C * 2; threads past `cols` return.
    unsafe { be.run(b, cfg) }?;

    let f = be.function(MODULE, "ffm_params")?;
    let cfg = be.grid((p.memory + p.context).div_ceil(NT) as u64, NT as u32, 0)?;
    let dlogr = dlog.as_ref();
    let mut b = be.stream.launch_builder(&f);
    dlogr.push(&mut b);
    da.push_mut(&mut b);
    db.push_mut(&mut b);
    b.arg(&a.m).arg(&a.c);
    // SAFETY: ffm_params(dlog [M, C] complex, da [M], db [C], M, C): all allocated here with
    // those sizes; threads past M + C do nothing.
    unsafe { be.run(b, cfg) }?;
    Ok(FfmGrads { dx, da, db, ds0 })
}
