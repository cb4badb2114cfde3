//! Launch code for the CUDA selective scan (`kernels/selective/selective.cu`, whose header
//! describes the thread layout: one block of 8 warps per (batch row, block of up to 8
//! channels), one warp per channel, lanes over the steps of 256-step chunks, a warp-shuffle
//! scan per state and chunk).
//!
//! Forward: one launch of `sel_fwd_*`. Backward: a checkpoint pass (`sel_ckpt_*`, or
//! `sel_fwd_*` in checkpoint mode when `z` is present, which also keeps the pre-gate output
//! for `dz`) writes the state entering every chunk; `sel_bwd_*` walks the chunks from the end,
//! recomputing each chunk's states from its checkpoint, and forms every gradient; when a group
//! of input-dependent `Bm`/`Cm` spans several channel blocks, `sel_dbc_reduce_*` adds the
//! blocks' partial `dBm`/`dCm`; `reduce_rows_f32` adds the per-row partials of `dA`,
//! `dDskip`, `ddelta_bias` (and fixed `dBm`, `dCm`). Every sum has a fixed order, so results
//! are bitwise reproducible. The partials of `dBm`/`dCm` are bounded by a scratch budget: a
//! problem whose partials exceed it runs the backward over ranges of rows and chunks (the
//! kernel carries its state between calls).
//!
//! Scratch of the backward: the checkpoints `B * ceil(T / 256) * D * N` f32, the pre-gate
//! output `B * T * D` f32 when `z` is present, and the partials (at most
//! [`PARTIAL_BUDGET`] bytes, or one row's chunk when that is larger).

use super::{
    Arg, SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{int, push_opt, CuRef, CuTensor, CudaBackend, NULL};
use crate::tensor::DType;
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaFunction, CudaStream, DevicePtr, PushKernelArg};

const MODULE: &str = "selective/selective.cu";
/// Warps (channels) per block, threads per block, steps per chunk, padded tile row (floats),
/// states staged at once by the forward (`NW`, `NT`, `L`, `LP`, `NBF` in selective.cu).
const NW: usize = 8;
const NT: u32 = 256;
/// Steps per chunk: the checkpoint interval of the backward.
pub const CHUNK: usize = 256;
const LP: usize = 32 * 9 + 4;
const NBF: usize = 16;

const HAS_DSKIP: u32 = 1;
const HAS_Z: u32 = 2;
const HAS_BIAS: u32 = 4;
const HAS_H0: u32 = 8;
const HAS_START: u32 = 16;
const SOFTPLUS: u32 = 32;
const CKPT: u32 = 64;
const VEC: u32 = 128;
const HAS_GF: u32 = 256;

/// The most bytes of `dBm`/`dCm` partials one backward call may use (see the module docs).
pub const PARTIAL_BUDGET: usize = 256 << 20;

/// The largest divisor of `n` that is at most `max`.
fn divisor_at_most(n: usize, max: usize) -> usize {
    (1..=max.min(n))
        .rev()
        .find(|&k| n.is_multiple_of(k))
        .unwrap_or(1)
}

/// How a problem is laid out on blocks.
struct Plan {
    /// Kernel name suffix: `f32_id`, `bf16_fixed`, ...
    suffix: String,
    /// Channels per block, blocks per row, blocks per group (1 when a block holds whole
    /// groups), chunks per row.
    cbk: usize,
    nbk: usize,
    bpg: usize,
    chunks: usize,
    /// The kernels' int parameters.
    rows: i32,
    t: i32,
    d: i32,
    n: i32,
    g: i32,
    dg: i32,
}

fn plan(p: &SelectiveScan) -> Result<Plan> {
    let (d, g) = (p.dim, p.num_groups());
    let dg = d / g;
    // input-dependent Bm/Cm: blocks tile the groups (a block inside one group, or whole groups
    // in one block), so the sums over a group's channels split cleanly by block
    let cbk = if !p.input_dependent() {
        NW
    } else if dg >= NW {
        divisor_at_most(dg, NW)
    } else {
        dg * (NW / dg)
    };
    // every index the kernels form in `int` stays below these
    int("len + chunk", p.len + CHUNK)?;
    int("batch * blocks", p.batch * d.div_ceil(cbk))?;
    Ok(Plan {
        suffix: format!(
            "{}_{}",
            p.dtype.name(),
            if p.input_dependent() { "id" } else { "fixed" }
        ),
        cbk,
        nbk: d.div_ceil(cbk),
        bpg: if p.input_dependent() && dg > cbk {
            dg / cbk
        } else {
            1
        },
        chunks: p.len.div_ceil(CHUNK),
        rows: int("batch", p.batch)?,
        t: int("len", p.len)?,
        d: int("dim", d)?,
        n: int("state", p.state)?,
        g: int("groups", g)?,
        dg: int("dim / groups", dg)?,
    })
}

/// Device address of a view.
fn addr(r: &CuRef<'_>, s: &CudaStream) -> u64 {
    match r {
        CuRef::F32(v) => v.device_ptr(s).0,
        CuRef::F16(v) => v.device_ptr(s).0,
        CuRef::BF16(v) => v.device_ptr(s).0,
        CuRef::U8(v) => v.device_ptr(s).0,
        CuRef::U32(v) => v.device_ptr(s).0,
    }
}

/// Whether the kernels may move whole 16-byte rows of 8 channels: full blocks, `D` a multiple
/// of the vector width and every caller sequence tensor 16-byte aligned (the outputs and
/// scratch are allocated here, so aligned).
fn vec_ok(be: &CudaBackend, p: &SelectiveScan, pl: &Plan, seqs: &[Option<&CuRef<'_>>]) -> bool {
    let w = 16 / p.dtype.size();
    pl.cbk == NW
        && p.dim.is_multiple_of(w)
        && seqs
            .iter()
            .flatten()
            .all(|r| addr(r, &be.stream).is_multiple_of(16))
}

fn base_flags(p: &SelectiveScan, dskip: bool, z: bool, bias: bool, h0: bool, start: bool) -> u32 {
    let mut f = 0;
    for (on, bit) in [
        (dskip, HAS_DSKIP),
        (z, HAS_Z),
        (bias, HAS_BIAS),
        (h0, HAS_H0),
        (start, HAS_START),
        (p.softplus, SOFTPLUS),
    ] {
        if on {
            f |= bit;
        }
    }
    f
}

fn device_err(what: String) -> Error {
    Error::Device {
        backend: "cuda",
        what,
    }
}

/// Allow `f` the dynamic shared memory `bytes` needs (above the default 48 KiB).
fn allow_smem(f: &CudaFunction, bytes: usize) -> Result<()> {
    if bytes > 48 << 10 {
        f.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| device_err(format!("raising the shared memory of a kernel: {e:?}")))?;
    }
    Ok(())
}

/// Dynamic shared memory of the forward (see `sel_fwd` in selective.cu).
fn fwd_smem(n: usize) -> usize {
    4 * (2 * NBF * LP + NW * n) + CHUNK
}

/// Dynamic shared memory of the backward (see `sel_bwd` in selective.cu).
fn bwd_smem(p: &SelectiveScan) -> usize {
    let n = p.state;
    let r = if p.input_dependent() {
        2 * NW * LP
    } else {
        2 * NW * n
    };
    4 * (4 * NW * LP + r + 2 * NW * n) + CHUNK
}

/// Launches the forward kernel (`ckpt`: the backward's checkpoint pass, writing `ck` and, with
/// `z`, the pre-gate output `ysc` instead of `out` and the final state).
#[allow(clippy::too_many_arguments)]
fn launch_forward(
    be: &CudaBackend,
    p: &SelectiveScan,
    pl: &Plan,
    inp: &SelectiveInputs<CuRef<'_>>,
    out: Option<&mut CuTensor>,
    hf: Option<&mut CuTensor>,
    ck: Option<&mut CuTensor>,
    ysc: Option<&mut CuTensor>,
) -> Result<()> {
    let ckpt = ck.is_some();
    let z = inp.z.is_some();
    let name = if ckpt && !z { "sel_ckpt" } else { "sel_fwd" };
    let f = be.function(MODULE, &format!("{name}_{}", pl.suffix))?;
    let smem = fwd_smem(p.state);
    allow_smem(&f, smem)?;
    let mut fl = base_flags(
        p,
        inp.dskip.is_some(),
        z,
        inp.delta_bias.is_some(),
        inp.h0.is_some(),
        inp.start.is_some(),
    );
    if ckpt {
        fl |= CKPT;
    }
    if vec_ok(be, p, pl, &[Some(&inp.u), Some(&inp.delta), inp.z.as_ref()]) {
        fl |= VEC;
    }
    let cfg = be.grid((p.batch * pl.nbk) as u64, NT, smem as u32)?;
    let (cbk, nbk) = (pl.cbk as i32, pl.nbk as i32);
    let mut b = be.stream.launch_builder(&f);
    inp.u.push(&mut b);
    inp.delta.push(&mut b);
    inp.a.push(&mut b);
    inp.bm.push(&mut b);
    inp.cm.push(&mut b);
    push_opt(&mut b, inp.dskip.as_ref());
    push_opt(&mut b, inp.z.as_ref());
    push_opt(&mut b, inp.delta_bias.as_ref());
    push_opt(&mut b, inp.h0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    for t in [out, hf, ck, ysc] {
        match t {
            Some(t) => t.push_mut(&mut b),
            None => {
                b.arg(&NULL);
            }
        }
    }
    b.arg(&pl.rows).arg(&pl.t).arg(&pl.d).arg(&pl.n);
    b.arg(&pl.g).arg(&pl.dg).arg(&cbk).arg(&nbk).arg(&fl);
    // SAFETY: the parameters follow `sel_fwd_*` / `sel_ckpt_*` in selective.cu in order and
    // type (storage type `p.dtype` for u, delta, z, out and input-dependent Bm/Cm; f32 for A,
    // fixed Bm/Cm, Dskip, bias, h0, the final state, ck and ysc; u8 start). `check` verified
    // every input holds exactly the elements its shape needs; optional inputs are read only
    // under their flag, and out / hf (forward) or ck / ysc (checkpoint pass, ysc only with z)
    // were allocated by the caller from the problem's shapes ([B, T, D], [B, D, N],
    // [B, ceil(T / 256), D, N], [B, T, D]). The kernel touches rows < B, steps < T, channels
    // < D and states < N only (blocks past B * nbk return at once); it uses 16-byte accesses
    // only with VEC, set just above after checking D and every address it applies to; and
    // `smem` is the dynamic shared memory its layout needs for this N.
    unsafe { be.run(b, cfg) }
}

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &SelectiveScan,
    inp: &SelectiveInputs<CuRef<'_>>,
) -> Result<SelectiveOutputs<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let pl = plan(p)?;
    let mut out = be.zeros(&p.spec(Arg::Out).shape, p.dtype)?;
    let mut hf = be.zeros(&p.spec(Arg::HFinal).shape, DType::F32)?;
    launch_forward(be, p, &pl, inp, Some(&mut out), Some(&mut hf), None, None)?;
    Ok(SelectiveOutputs { out, h_final: hf })
}

/// Backward pass on the caller's device buffers (recomputes the forward's states from
/// checkpoints; see the module docs).
pub fn backward(
    be: &CudaBackend,
    p: &SelectiveScan,
    inp: &SelectiveBackwardInputs<CuRef<'_>>,
) -> Result<SelectiveGrads<CuTensor>> {
    backward_with_budget(be, p, inp, PARTIAL_BUDGET)
}

/// [`backward`] with another budget (bytes) for the `dBm`/`dCm` partials of one call: a small
/// one makes the backward run over several ranges of rows and chunks (for tests).
pub fn backward_with_budget(
    be: &CudaBackend,
    p: &SelectiveScan,
    inp: &SelectiveBackwardInputs<CuRef<'_>>,
    budget: usize,
) -> Result<SelectiveGrads<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let pl = plan(p)?;
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let f32z = |name: Arg| be.zeros(&p.spec(name).shape, DType::F32);
    let seqz = |name: Arg| be.zeros(&p.spec(name).shape, p.dtype);

    // pass 1: checkpoints (and the pre-gate output for dz)
    let fwd_inp = SelectiveInputs {
        u: inp.u.reborrow(),
        delta: inp.delta.reborrow(),
        a: inp.a.reborrow(),
        bm: inp.bm.reborrow(),
        cm: inp.cm.reborrow(),
        dskip: inp.dskip.as_ref().map(|r| r.reborrow()),
        z: inp.z.as_ref().map(|r| r.reborrow()),
        delta_bias: inp.delta_bias.as_ref().map(|r| r.reborrow()),
        h0: inp.h0.as_ref().map(|r| r.reborrow()),
        start: inp.start.as_ref().map(|r| r.reborrow()),
    };
    let mut ck = be.zeros(&[bn, pl.chunks, dn, ns], DType::F32)?;
    let mut ysc = match inp.z {
        Some(_) => Some(be.zeros(&[bn, tn, dn], DType::F32)?),
        None => None,
    };
    launch_forward(
        be,
        p,
        &pl,
        &fwd_inp,
        None,
        None,
        Some(&mut ck),
        ysc.as_mut(),
    )?;

    // pass 2: the backward proper, over ranges of rows and chunks that keep the partials
    // within the budget
    let (mut du, mut ddelta, mut dz) = (seqz(Arg::Du)?, seqz(Arg::Ddelta)?, seqz(Arg::Dz)?);
    let bc_dtype = p.dtype_of(p.spec(Arg::Dbm).role);
    let mut dbm = be.zeros(&p.spec(Arg::Dbm).shape, bc_dtype)?;
    let mut dcm = be.zeros(&p.spec(Arg::Dcm).shape, bc_dtype)?;
    let mut dh0 = f32z(Arg::Dh0)?;
    let fixed = !p.input_dependent();
    let mut pa = be.zeros(&[bn, dn * ns], DType::F32)?;
    let (mut pbf, mut pcf) = if fixed {
        (
            Some(be.zeros(&[bn, dn * ns], DType::F32)?),
            Some(be.zeros(&[bn, dn * ns], DType::F32)?),
        )
    } else {
        (None, None)
    };
    let mut pds = be.zeros(&[bn, dn], DType::F32)?;
    let mut pbias = be.zeros(&[bn, dn], DType::F32)?;
    let per_row_chunk = CHUNK * pl.nbk * ns * 2 * 4;
    let (rows_per_call, chunks_per_call) = if pl.bpg == 1 {
        (bn, pl.chunks)
    } else {
        let r = (budget / per_row_chunk).clamp(1, bn);
        let c = if r < bn {
            1
        } else {
            (budget / (bn * per_row_chunk)).clamp(1, pl.chunks)
        };
        (r, c)
    };
    let mut part = if pl.bpg > 1 {
        let steps = (chunks_per_call * CHUNK).min(tn);
        Some(be.zeros(&[2 * rows_per_call * steps * pl.nbk * ns], DType::F32)?)
    } else {
        None
    };

    let f = be.function(MODULE, &format!("sel_bwd_{}", pl.suffix))?;
    let smem = bwd_smem(p);
    allow_smem(&f, smem)?;
    let mut fl = base_flags(
        p,
        inp.dskip.is_some(),
        inp.z.is_some(),
        inp.delta_bias.is_some(),
        inp.h0.is_some(),
        inp.start.is_some(),
    );
    if inp.grad_final.is_some() {
        fl |= HAS_GF;
    }
    if vec_ok(
        be,
        p,
        &pl,
        &[
            Some(&inp.u),
            Some(&inp.delta),
            Some(&inp.grad_out),
            inp.z.as_ref(),
        ],
    ) {
        fl |= VEC;
    }
    let red = if pl.bpg > 1 {
        Some(be.function(MODULE, &format!("sel_dbc_reduce_{}", p.dtype.name()))?)
    } else {
        None
    };
    let (cbk, nbk, bpg) = (pl.cbk as i32, pl.nbk as i32, pl.bpg as i32);
    for b0 in (0..bn).step_by(rows_per_call) {
        let nr = rows_per_call.min(bn - b0);
        let mut k_hi = pl.chunks;
        while k_hi > 0 {
            let k_lo = k_hi.saturating_sub(chunks_per_call);
            let cfg = be.grid((nr * pl.nbk) as u64, NT, smem as u32)?;
            let (b0i, nri, k_loi, k_hii) = (b0 as i32, nr as i32, k_lo as i32, k_hi as i32);
            let ckr = ck.as_ref();
            let yr = ysc.as_ref().map(|y| y.as_ref());
            let mut b = be.stream.launch_builder(&f);
            inp.u.push(&mut b);
            inp.delta.push(&mut b);
            inp.a.push(&mut b);
            inp.bm.push(&mut b);
            inp.cm.push(&mut b);
            push_opt(&mut b, inp.dskip.as_ref());
            push_opt(&mut b, inp.z.as_ref());
            push_opt(&mut b, inp.delta_bias.as_ref());
            push_opt(&mut b, inp.start.as_ref());
            inp.grad_out.push(&mut b);
            push_opt(&mut b, inp.grad_final.as_ref());
            ckr.push(&mut b);
            push_opt(&mut b, yr.as_ref());
            du.push_mut(&mut b);
            ddelta.push_mut(&mut b);
            dz.push_mut(&mut b);
            if fixed {
                b.arg(&NULL).arg(&NULL);
            } else {
                dbm.push_mut(&mut b);
                dcm.push_mut(&mut b);
            }
            for t in [
                part.as_mut(),
                Some(&mut dh0),
                Some(&mut pa),
                pbf.as_mut(),
                pcf.as_mut(),
            ] {
                match t {
                    Some(t) => t.push_mut(&mut b),
                    None => {
                        b.arg(&NULL);
                    }
                }
            }
            pds.push_mut(&mut b);
            pbias.push_mut(&mut b);
            b.arg(&b0i).arg(&nri).arg(&k_loi).arg(&k_hii);
            b.arg(&pl.t).arg(&pl.d).arg(&pl.n).arg(&pl.g).arg(&pl.dg);
            b.arg(&cbk).arg(&nbk).arg(&bpg).arg(&fl);
            // SAFETY: the parameters follow `sel_bwd_*` in selective.cu in order and type
            // (storage type for u, delta, z, dout, du, ddelta, dz and input-dependent Bm/Cm and
            // their gradients; f32 for the rest; u8 start). Inputs were checked against their
            // shapes (optional ones read only under their flag); ck [B, K, D, N] and ysc
            // [B, T, D] (with z) are pass 1's outputs; every output and partial buffer was
            // allocated above from the problem's shapes: dbm / dcm [B, T, G, N] (written
            // directly only when a block holds whole groups), part [2, rows_per_call, steps of
            // a call, nbk, N] (written only when bpg > 1), dh0 / pa / pbf / pcf [B, D, N],
            // pds / pbias [B, D]. The call covers rows b0 .. b0 + nr <= B and chunks
            // k_lo .. k_hi <= K, so steps t_lo .. min(k_hi * 256, T) fit the partials' steps;
            // blocks past nr * nbk return at once, and the kernel touches only steps < T,
            // channels < D and states < N. 16-byte accesses only with VEC (checked above);
            // `smem` is the dynamic shared memory its layout needs for this N and B/C mode.
            unsafe { be.run(b, cfg) }?;
            if let (Some(red), Some(part)) = (red.as_ref(), part.as_ref()) {
                let t_lo = k_lo * CHUNK;
                let tlen = (k_hi * CHUNK).min(tn) - t_lo;
                let count = nr * tlen * p.num_groups() * ns;
                let cfg = be.grid(count.div_ceil(256) as u64, 256, 0)?;
                let (t_loi, tleni) = (t_lo as i32, tlen as i32);
                let partr = part.as_ref();
                let mut b = be.stream.launch_builder(red);
                partr.push(&mut b);
                dbm.push_mut(&mut b);
                dcm.push_mut(&mut b);
                b.arg(&b0i).arg(&nri).arg(&t_loi).arg(&tleni).arg(&pl.t);
                b.arg(&pl.g).arg(&pl.n).arg(&nbk).arg(&bpg);
                // SAFETY: sel_dbc_reduce_*(part, dbm, dcm, b0, rows, t_lo, tlen, T, G, N, nbk,
                // bpg): reads the partials the call above left ([2, nr, tlen, nbk, N] at the
                // start of `part`, which holds at least that many), writes dbm / dcm
                // [B, T, G, N] at rows b0 .. b0 + nr and steps t_lo .. t_lo + tlen; threads past
                // nr * tlen * G * N return.
                unsafe { be.run(b, cfg) }?;
            }
            k_hi = k_lo;
        }
    }

    // sums over rows of the per-row partials, in row order
    let rr = be.function(MODULE, "reduce_rows_f32")?;
    let sum_rows = |src: &CuTensor, dst: &mut CuTensor, cols: usize| -> Result<()> {
        let colsi = int("dim * state", cols)?;
        let cfg = be.grid(cols.div_ceil(256) as u64, 256, 0)?;
        let srcr = src.as_ref();
        let mut b = be.stream.launch_builder(&rr);
        srcr.push(&mut b);
        dst.push_mut(&mut b);
        b.arg(&pl.rows).arg(&colsi);
        // SAFETY: reduce_rows_f32(in [rows, cols], out [cols], rows, cols): `src` holds
        // B * cols floats and `dst` cols (both allocated here); threads past cols return.
        unsafe { be.run(b, cfg) }
    };
    let mut da = f32z(Arg::Da)?;
    let mut ddskip = f32z(Arg::Ddskip)?;
    let mut ddelta_bias = f32z(Arg::DdeltaBias)?;
    sum_rows(&pa, &mut da, dn * ns)?;
    sum_rows(&pds, &mut ddskip, dn)?;
    sum_rows(&pbias, &mut ddelta_bias, dn)?;
    if let (Some(pbf), Some(pcf)) = (pbf.as_ref(), pcf.as_ref()) {
        sum_rows(pbf, &mut dbm, dn * ns)?;
        sum_rows(pcf, &mut dcm, dn * ns)?;
    }
    Ok(SelectiveGrads {
        du,
        ddelta,
        da,
        dbm,
        dcm,
        ddskip,
        dz,
        ddelta_bias,
        dh0,
    })
}
