//! Launch code for the CUDA linear scan (`kernels/scan/scan.cu`).

use super::{Arg, LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::Result;
use crate::ops::Problem;
use crate::runtime::cuda::{int, push_opt, CuRef, CuTensor, CudaBackend, NULL};
use crate::tensor::DType;
use cudarc::driver::PushKernelArg;

const MODULE: &str = "scan/scan.cu";
const HAS_H0: u32 = 1;
const HAS_START: u32 = 2;
const TIME_VARYING: u32 = 4;
const REVERSE: u32 = 8;
const HAS_GF: u32 = 16;

struct Plan {
    suffix: String,
    rows: i32,
    t: i32,
    d: i32,
    cb: i32,
    blocks: u64,
}

fn plan(p: &LinearScan) -> Result<Plan> {
    let cb = p.dim.next_power_of_two().min(32);
    Ok(Plan {
        suffix: format!(
            "{}_{}",
            if p.complex { "complex" } else { "real" },
            p.dtype.name()
        ),
        rows: int("batch", p.batch)?,
        t: int("len", p.len)?,
        d: int("dim", p.dim)?,
        cb: cb as i32,
        blocks: (p.batch * p.dim.div_ceil(cb)) as u64,
    })
}

fn flags(p: &LinearScan, h0: bool, start: bool) -> u32 {
    let mut f = 0;
    for (on, bit) in [
        (h0, HAS_H0),
        (start, HAS_START),
        (p.time_varying, TIME_VARYING),
        (p.reverse, REVERSE),
    ] {
        if on {
            f |= bit;
        }
    }
    f
}

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &LinearScan,
    inp: &ScanInputs<CuRef<'_>>,
) -> Result<ScanOutputs<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let pl = plan(p)?;
    let f = be.function(MODULE, &format!("scan_fwd_{}", pl.suffix))?;
    let mut h = be.zeros(&p.spec(Arg::H).shape, p.dtype)?;
    let mut hf = be.zeros(&p.spec(Arg::HFinal).shape, DType::F32)?;
    let fl = flags(p, inp.h0.is_some(), inp.start.is_some());
    let cfg = be.grid(pl.blocks, 256, 0)?;
    let mut b = be.stream.launch_builder(&f);
    inp.x.push(&mut b);
    if p.time_varying {
        inp.a.push(&mut b);
        b.arg(&NULL);
    } else {
        b.arg(&NULL);
        inp.a.push(&mut b);
    }
    push_opt(&mut b, inp.h0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    h.push_mut(&mut b);
    hf.push_mut(&mut b);
    b.arg(&pl.rows).arg(&pl.t).arg(&pl.d).arg(&pl.cb).arg(&fl);
    // SAFETY: the parameters follow `scan_fwd_*` in scan.cu in order and type (storage type
    // `p.dtype` for x, a_tv and h, f32 for a_ti, h0 and hf, u8 flags); `check` verified every
    // input holds exactly the elements its shape needs, the outputs were allocated from the
    // same shapes, and the kernel reads and writes only indices below those sizes (blocks past
    // rows * ncb return at once; channels past D are masked).
    unsafe { be.run(b, cfg) }?;
    Ok(ScanOutputs { h, h_final: hf })
}

/// Backward pass on the caller's device buffers.
pub fn backward(
    be: &CudaBackend,
    p: &LinearScan,
    inp: &ScanBackwardInputs<CuRef<'_>>,
) -> Result<ScanGrads<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let pl = plan(p)?;
    let f = be.function(MODULE, &format!("scan_bwd_{}", pl.suffix))?;
    let mut dx = be.zeros(&p.spec(Arg::Dx).shape, p.dtype)?;
    let spec = p.spec(Arg::Da);
    let mut da = be.zeros(&spec.shape, p.dtype_of(spec.role))?;
    let mut dh0 = be.zeros(&p.spec(Arg::Dh0).shape, DType::F32)?;
    let w = p.width();
    let mut part = if p.time_varying {
        None
    } else {
        Some(be.zeros(&[p.batch, p.dim * w], DType::F32)?)
    };
    let mut fl = flags(p, inp.h0.is_some(), inp.start.is_some());
    if inp.grad_final.is_some() {
        fl |= HAS_GF;
    }
    let cfg = be.grid(pl.blocks, 256, 0)?;
    let mut b = be.stream.launch_builder(&f);
    if p.time_varying {
        inp.a.push(&mut b);
        b.arg(&NULL);
    } else {
        b.arg(&NULL);
        inp.a.push(&mut b);
    }
    inp.h.push(&mut b);
    push_opt(&mut b, inp.h0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    inp.grad_h.push(&mut b);
    push_opt(&mut b, inp.grad_final.as_ref());
    dx.push_mut(&mut b);
    match part.as_mut() {
        None => {
            da.push_mut(&mut b);
            b.arg(&NULL);
        }
        Some(part) => {
            b.arg(&NULL);
            part.push_mut(&mut b);
        }
    }
    dh0.push_mut(&mut b);
    b.arg(&pl.rows).arg(&pl.t).arg(&pl.d).arg(&pl.cb).arg(&fl);
    // SAFETY: the parameters follow `scan_bwd_*` in scan.cu in order and type; inputs were
    // checked against their shapes, outputs allocated from them (the row partials as
    // [B, D(, 2)]); the kernel masks blocks past rows * ncb and channels past D.
    unsafe { be.run(b, cfg) }?;
    if let Some(part) = part.as_ref() {
        let red = be.function("scan/scan.cu", "reduce_rows_f32")?;
        let (rows, cols) = (pl.rows, int("dim", p.dim * w)?);
        let cfg = be.grid((p.dim * w).div_ceil(256) as u64, 256, 0)?;
        let part = part.as_ref();
        let mut b = be.stream.launch_builder(&red);
        part.push(&mut b);
        da.push_mut(&mut b);
        b.arg(&rows).arg(&cols);
        // SAFETY: reduce_rows_f32(in [rows, cols], out [cols], rows, cols): `part` holds
        // B * D(*2) floats and `da` D(*2); threads past `cols` return.
        unsafe { be.run(b, cfg) }?;
    }
    Ok(ScanGrads { dx, da, dh0 })
}
