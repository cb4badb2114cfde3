//! Launch code for the WGSL linear scan (`shaders/scan/`).
//!
//! The backward binds 9 storage buffers. On a device that offers fewer (WebGPU's default
//! limits: 8 per stage) it takes its `PACK` variant instead: `h0` and `grad_final` are first
//! copied bitwise into one scratch buffer per row group (`WgpuContext::copy_words`, same compute
//! pass),
//! which the kernel reads at two offsets. Devices with more bindings keep the direct variant.

use super::{Arg, LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::wgpu::{channel_block, check_u32, GpuRef, GpuTensor, WgpuContext};
use crate::tensor::DType;

const HAS_H0: u32 = 1;
const HAS_START: u32 = 2;
const TIME_VARYING: u32 = 4;
const REVERSE: u32 = 8;
const HAS_GF: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct FwdParams {
    rows: u32,
    t: u32,
    d: u32,
    ncb: u32,
    flags: u32,
    _p: [u32; 3],
    off_x: u32,
    off_a: u32,
    off_h0: u32,
    off_start: u32,
    off_h: u32,
    off_hf: u32,
    _q: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    rows: u32,
    t: u32,
    d: u32,
    ncb: u32,
    flags: u32,
    _p: [u32; 3],
    off_a: u32,
    off_h: u32,
    off_h0: u32,
    off_start: u32,
    off_g: u32,
    off_gf: u32,
    off_dx: u32,
    off_da: u32,
    off_dh0: u32,
    _q: [u32; 3],
}

/// Common launch facts of one problem.
struct Plan {
    defines: &'static [&'static str],
    cb: u32,
    ncb: u32,
    /// Elements per batch row of `[B, T, D]` and `[B, D]` tensors and of `start`.
    seq_row: usize,
    state_row: usize,
    flag_row: usize,
    groups: Vec<(usize, usize)>,
}

fn plan(ctx: &WgpuContext, p: &LinearScan) -> Result<Plan> {
    if p.dtype != DType::F32 {
        return Err(Error::unsupported(
            "wgpu",
            format!(
                "linear_scan with {} storage (the WGSL scan is f32)",
                p.dtype
            ),
        ));
    }
    check_u32("batch * len * dim", p.batch * p.len * p.dim * p.width())?;
    let cb = channel_block(p.dim);
    let w = p.width();
    let seq_row = p.len * p.dim * w;
    let groups = ctx.row_groups(p.batch, &[(seq_row * 4) as u64, (p.len * 4) as u64])?;
    Ok(Plan {
        defines: if p.complex { &["COMPLEX"] } else { &[] },
        cb,
        ncb: p.dim.div_ceil(cb as usize) as u32,
        seq_row,
        state_row: p.dim * w,
        flag_row: p.len,
        groups,
    })
}

fn flags(p: &LinearScan, h0: bool, start: bool) -> u32 {
    let mut f = 0;
    if h0 {
        f |= HAS_H0;
    }
    if start {
        f |= HAS_START;
    }
    if p.time_varying {
        f |= TIME_VARYING;
    }
    if p.reverse {
        f |= REVERSE;
    }
    f
}

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &LinearScan,
    inp: &ScanInputs<GpuRef<'_>>,
) -> Result<ScanOutputs<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let pl = plan(ctx, p)?;
    let h = ctx.result(&p.spec(Arg::H).shape, DType::F32)?;
    let hf = ctx.result(&p.spec(Arg::HFinal).shape, DType::F32)?;
    let pipe = ctx.pipeline(
        "scan/forward.wgsl",
        "main",
        pl.defines,
        &[("CB", pl.cb as f64)],
    )?;
    let (hr, hfr) = (h.as_ref(), hf.as_ref());
    let mut launch = ctx.launch("linear_scan forward");
    for &(b0, nb) in &pl.groups {
        let (sr, str_) = (pl.seq_row, pl.state_row);
        let x = inp.x.rows(b0, nb, sr);
        let a = if p.time_varying {
            inp.a.rows(b0, nb, sr)
        } else {
            inp.a
        };
        let h0 = inp.h0.map(|r| r.rows(b0, nb, str_));
        let start = inp.start.map(|r| r.rows(b0, nb, pl.flag_row));
        let (h_out, hf_out) = (hr.rows(b0, nb, sr), hfr.rows(b0, nb, str_));
        let (bx, off_x) = ctx.bind(&x)?;
        let (ba, off_a) = ctx.bind(&a)?;
        let (bh0, off_h0) = ctx.bind_opt(h0.as_ref())?;
        let (bs, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bh, off_h) = ctx.bind(&h_out)?;
        let (bhf, off_hf) = ctx.bind(&hf_out)?;
        let params = FwdParams {
            rows: nb as u32,
            t: p.len as u32,
            d: p.dim as u32,
            ncb: pl.ncb,
            flags: flags(p, h0.is_some(), start.is_some()),
            off_x,
            off_a,
            off_h0,
            off_start,
            off_h,
            off_hf,
            ..Default::default()
        };
        launch.dispatch(
            pipe.clone(),
            &params,
            vec![bx, ba, bh0, bs, bh, bhf],
            nb as u32 * pl.ncb,
        )?;
    }
    launch.submit()?;
    Ok(ScanOutputs { h, h_final: hf })
}

/// Backward pass on the caller's buffers.
pub fn backward(
    ctx: &WgpuContext,
    p: &LinearScan,
    inp: &ScanBackwardInputs<GpuRef<'_>>,
) -> Result<ScanGrads<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let pl = plan(ctx, p)?;
    let dx = ctx.result(&p.spec(Arg::Dx).shape, DType::F32)?;
    let da = ctx.result(&p.spec(Arg::Da).shape, DType::F32)?;
    let dh0 = ctx.result(&p.spec(Arg::Dh0).shape, DType::F32)?;
    // time-invariant `a`: per-row partial sums, reduced over rows afterwards
    let partial = if p.time_varying {
        None
    } else {
        Some(ctx.zeros(&[p.batch, pl.state_row], DType::F32)?)
    };
    let cb = [("CB", pl.cb as f64)];
    // the direct variant where the device has the bindings, else PACK (see the module docs)
    let (pipe, pack) = match ctx.pipeline("scan/backward.wgsl", "main", pl.defines, &cb) {
        Ok(pipe) => (pipe, false),
        Err(Error::Limit { .. }) => {
            let defines: &[&str] = if p.complex {
                &["COMPLEX", "PACK"]
            } else {
                &["PACK"]
            };
            (
                ctx.pipeline("scan/backward.wgsl", "main", defines, &cb)?,
                true,
            )
        }
        Err(e) => return Err(e),
    };
    // per row group: [h0 rows | grad_final rows]
    let scratch = if pack {
        pl.groups
            .iter()
            .map(|&(_, nb)| ctx.zeros(&[2 * nb * pl.state_row], DType::F32))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let (dxr, dar, dh0r) = (dx.as_ref(), da.as_ref(), dh0.as_ref());
    let partr = partial.as_ref().map(GpuTensor::as_ref);
    let mut launch = ctx.launch("linear_scan backward");
    for (gi, &(b0, nb)) in pl.groups.iter().enumerate() {
        let (sr, str_) = (pl.seq_row, pl.state_row);
        let a = if p.time_varying {
            inp.a.rows(b0, nb, sr)
        } else {
            inp.a
        };
        let da_out = match partr {
            Some(part) => part.rows(b0, nb, str_),
            None => dar.rows(b0, nb, sr),
        };
        let h0 = inp.h0.map(|r| r.rows(b0, nb, str_));
        let start = inp.start.map(|r| r.rows(b0, nb, pl.flag_row));
        let gf = inp.grad_final.map(|r| r.rows(b0, nb, str_));
        let (ba, off_a) = ctx.bind(&a)?;
        let (bh, off_h) = ctx.bind(&inp.h.rows(b0, nb, sr))?;
        let (bh0, off_h0, bgf, off_gf) = if pack {
            let sc = scratch[gi].as_ref();
            for (at, src) in [(0, &h0), (nb * str_, &gf)] {
                if let Some(src) = src {
                    ctx.copy_words(&mut launch, src, 0, &sc, at, src.len)?;
                }
            }
            let (bsc, off) = ctx.bind(&sc)?;
            (bsc.clone(), off, bsc, off + (nb * str_) as u32)
        } else {
            let (bh0, off_h0) = ctx.bind_opt(h0.as_ref())?;
            let (bgf, off_gf) = ctx.bind_opt(gf.as_ref())?;
            (bh0, off_h0, bgf, off_gf)
        };
        let (bs, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bg, off_g) = ctx.bind(&inp.grad_h.rows(b0, nb, sr))?;
        let (bdx, off_dx) = ctx.bind(&dxr.rows(b0, nb, sr))?;
        let (bda, off_da) = ctx.bind(&da_out)?;
        let (bdh0, off_dh0) = ctx.bind(&dh0r.rows(b0, nb, str_))?;
        let mut f = flags(p, h0.is_some(), start.is_some());
        if gf.is_some() {
            f |= HAS_GF;
        }
        let params = BwdParams {
            rows: nb as u32,
            t: p.len as u32,
            d: p.dim as u32,
            ncb: pl.ncb,
            flags: f,
            off_a,
            off_h,
            off_h0,
            off_start,
            off_g,
            off_gf,
            off_dx,
            off_da,
            off_dh0,
            ..Default::default()
        };
        let buffers = if pack {
            vec![ba, bh, bh0, bs, bg, bdx, bda, bdh0]
        } else {
            vec![ba, bh, bh0, bs, bg, bgf, bdx, bda, bdh0]
        };
        launch.dispatch(pipe.clone(), &params, buffers, nb as u32 * pl.ncb)?;
    }
    if let Some(part) = &partr {
        ctx.reduce_rows(&mut launch, part, &dar, p.batch, pl.state_row)?;
    }
    launch.submit()?;
    Ok(ScanGrads { dx, da, dh0 })
}
