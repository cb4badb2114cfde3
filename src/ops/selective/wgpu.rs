//! Launch code for the WGSL selective scan (`shaders/selective/`).
//!
//! One workgroup per (batch row, block of up to 32 channels), one thread per (channel,
//! state); each thread runs its recurrence sequentially in time, in chunks whose `dt` and `u`
//! are staged in workgroup memory (see `shaders/selective/common.wgsl`). Parallelism is
//! therefore `B * D * N` threads (Mamba's B = 8, D = 2048, N = 16 gives 262144), not time: a
//! problem with few (batch, channel, state) triples and a long T leaves a large GPU idle.
//!
//! Sums over the states (`y`, and the `du` / `ddelta` terms of the backward) are formed in
//! workgroup memory in a fixed order, or, when the device has subgroups and `N` fits in one,
//! by a subgroup butterfly. Rows are split into dispatches whose bindings fit the device's
//! binding-size limit and whose grids fit its workgroup-count limit. Parameter gradients are
//! summed per row by each workgroup and over rows by `common/reduce_rows.wgsl`;
//! input-dependent `dBm` / `dCm` of groups wider than one channel block go through per-block
//! partials summed by `selective/reduce_groups.wgsl`. No float atomics anywhere: results are
//! bitwise reproducible (bf16 outputs are OR-ed into zeroed words with integer atomics, which
//! commute).
//!
//! lavapipe (Mesa's gallivm) stops any loop nest after 65535 iterations in all. The kernels
//! write the per-step work of a chunk out step by step to stay far from that: on lavapipe the
//! forward handles rows of at least 2^18 steps and the backward rows of about 10^5 steps per
//! call; longer rows on lavapipe return [`Error::Limit`] rather than results cut short (the
//! limits below are the tested lengths). Real GPU drivers have no such cap.

use super::{
    Arg, SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::wgpu::{check_u32, GpuRef, GpuTensor, WgpuContext};
use crate::tensor::DType;

const HAS_DSKIP: u32 = 1;
const HAS_Z: u32 = 2;
const HAS_BIAS: u32 = 4;
const HAS_H0: u32 = 8;
const HAS_START: u32 = 16;
const SOFTPLUS: u32 = 32;
const HAS_GF: u32 = 64;

/// Threads per workgroup and the most channels one workgroup owns (`shaders/selective`).
const WG: usize = 256;
const CBMAX: usize = 32;
/// Steps per checkpoint interval of the backward (`backward.wgsl`: 8 chunks of 8 steps).
pub(crate) const CHECKPOINT: usize = 64;

/// The longest rows (steps) the forward and the backward take on lavapipe (see the module
/// docs); both lengths are tested.
pub const LAVAPIPE_MAX_LEN: [usize; 2] = [1 << 18, 1 << 16];

/// The parameter block shared by every selective kernel (`Params` in `common.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    t: u32,
    d: u32,
    n: u32,
    g: u32,
    dg: u32,
    nb: u32,
    kc: u32,
    bpg: u32,
    flags: u32,
    row0: u32,
    b: u32,
    off_u: u32,
    off_delta: u32,
    off_a: u32,
    off_bm: u32,
    off_cm: u32,
    off_dskip: u32,
    off_z: u32,
    off_bias: u32,
    off_h0: u32,
    off_start: u32,
    off_o: u32,
    off_f: u32,
    off_du: u32,
    off_ddelta: u32,
    off_dz: u32,
    off_dbm: u32,
    off_dcm: u32,
    off_dh0: u32,
    off_pp: u32,
    off_rs: u32,
}

/// Launch facts of one problem.
struct Plan {
    defines: Vec<&'static str>,
    /// Channels per workgroup and `N` rounded up to a power of two.
    cb: usize,
    np: usize,
    /// Channel blocks per row, checkpoints per row, blocks per group (1 when a block holds
    /// whole groups).
    nb: usize,
    kc: usize,
    bpg: usize,
    /// Elements per batch row of `[B, T, D]`, input-dependent `[B, T, G, N]`, `[B, D, N]`
    /// tensors and of `start`.
    seq_row: usize,
    bc_row: usize,
    state_row: usize,
    flag_row: usize,
    groups: Vec<(usize, usize)>,
}

/// The largest divisor of `n` that is at most `max`.
fn divisor_at_most(n: usize, max: usize) -> usize {
    (1..=max.min(n))
        .rev()
        .find(|&k| n.is_multiple_of(k))
        .unwrap_or(1)
}

/// Channels per workgroup: as many as the threads allow (at most 32). For the backward with
/// input-dependent `Bm`/`Cm`, blocks must tile the groups (a block inside one group, or whole
/// groups in one block) so the sums over a group's channels split cleanly by block.
fn channel_block(p: &SelectiveScan, np: usize, aligned: bool) -> usize {
    let max = CBMAX.min(WG / np).max(1);
    let dg = p.dim / p.num_groups();
    if !aligned || !p.input_dependent() {
        max.min(p.dim)
    } else if dg >= max {
        divisor_at_most(dg, max)
    } else {
        (dg * (max / dg)).min(p.dim)
    }
}

fn plan(
    ctx: &WgpuContext,
    p: &SelectiveScan,
    backward: bool,
    extra_row_bytes: &dyn Fn(&Plan) -> u64,
) -> Result<Plan> {
    if p.dtype == DType::F16 && !ctx.has_f16() {
        return Err(Error::unsupported(
            "wgpu",
            "selective_scan with f16 storage on a device without SHADER_F16",
        ));
    }
    let (b, t, d, n, g) = (p.batch, p.len, p.dim, p.state, p.num_groups());
    let cap = LAVAPIPE_MAX_LEN[usize::from(backward)];
    if t > cap && ctx.info.name.contains("llvmpipe") {
        return Err(Error::Limit {
            backend: "wgpu",
            what: format!(
                "len = {t} exceeds {cap}: lavapipe stops loop nests after 65535 iterations, which \
                 would cut the {} short",
                if backward { "backward" } else { "forward" }
            ),
        });
    }
    check_u32("batch * len * dim", b * t * d)?;
    check_u32("batch * len * groups * state", b * t * g * n)?;
    check_u32("batch * dim * state", b * d * n)?;
    let np = n.next_power_of_two();
    let cb = channel_block(p, np, backward);
    let nb = d.div_ceil(cb);
    let dg = d / g;
    let mut defines = Vec::new();
    match p.dtype {
        DType::F16 => defines.push("F16"),
        DType::BF16 => defines.push("BF16"),
        _ => {}
    }
    if !p.input_dependent() {
        defines.push("FIXED_BC");
    }
    if ctx.has_subgroups() {
        defines.push("SUBGROUPS");
    }
    let mut pl = Plan {
        defines,
        cb,
        np,
        nb,
        kc: t.div_ceil(CHECKPOINT),
        bpg: if dg > cb { dg / cb } else { 1 },
        seq_row: t * d,
        bc_row: if p.input_dependent() { t * g * n } else { 0 },
        state_row: d * n,
        flag_row: t,
        groups: Vec::new(),
    };
    let es = p.dtype.size() as u64;
    let rows = [
        pl.seq_row as u64 * es,
        pl.bc_row as u64 * es,
        pl.state_row as u64 * 4,
        pl.flag_row as u64 * 4,
        extra_row_bytes(&pl),
    ];
    // each group's grid (rows x channel blocks) must also fit a 2-D dispatch
    let maxd = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let max_rows = maxd * maxd / nb;
    if max_rows == 0 {
        return Err(Error::Limit {
            backend: "wgpu",
            what: format!("{nb} channel blocks per row exceed {maxd} x {maxd} workgroups"),
        });
    }
    pl.groups = ctx
        .row_groups(b, &rows)?
        .into_iter()
        .flat_map(|(b0, n)| {
            (b0..b0 + n)
                .step_by(max_rows)
                .map(move |s| (s, max_rows.min(b0 + n - s)))
        })
        .collect();
    Ok(pl)
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

impl Plan {
    fn params(&self, p: &SelectiveScan, b0: usize, nb: usize, flags: u32) -> Params {
        Params {
            rows: nb as u32,
            t: p.len as u32,
            d: p.dim as u32,
            n: p.state as u32,
            g: p.num_groups() as u32,
            dg: (p.dim / p.num_groups()) as u32,
            nb: self.nb as u32,
            kc: self.kc as u32,
            bpg: self.bpg as u32,
            flags,
            row0: b0 as u32,
            b: p.batch as u32,
            ..Default::default()
        }
    }
    /// Rows `b0 .. b0 + nb` of an input-dependent `Bm`/`Cm` (a fixed one is not split).
    fn bc_rows<'a>(&self, p: &SelectiveScan, r: GpuRef<'a>, b0: usize, nb: usize) -> GpuRef<'a> {
        if p.input_dependent() {
            r.rows(b0, nb, self.bc_row)
        } else {
            r
        }
    }
    fn constants(&self) -> [(&'static str, f64); 2] {
        [("CB", self.cb as f64), ("NP", self.np as f64)]
    }
    /// The backward's constants: also the channels of one group inside a block.
    fn backward_constants(&self, p: &SelectiveScan) -> [(&'static str, f64); 3] {
        let cw = if p.input_dependent() {
            (p.dim / p.num_groups()).min(self.cb)
        } else {
            1
        };
        [
            ("CB", self.cb as f64),
            ("NP", self.np as f64),
            ("CW", cw as f64),
        ]
    }
}

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &SelectiveScan,
    inp: &SelectiveInputs<GpuRef<'_>>,
) -> Result<SelectiveOutputs<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let pl = plan(ctx, p, false, &|_| 0)?;
    let out = ctx.zeros(&p.spec(Arg::Out).shape, p.dtype)?;
    let hf = ctx.zeros(&p.spec(Arg::HFinal).shape, DType::F32)?;
    let pipe = ctx.pipeline(
        "selective/forward.wgsl",
        "main",
        &pl.defines,
        &pl.constants(),
    )?;
    let (outr, hfr) = (out.as_ref(), hf.as_ref());
    let mut launch = ctx.launch("selective_scan forward");
    for &(b0, nb) in &pl.groups {
        let (sr, str_) = (pl.seq_row, pl.state_row);
        let z = inp.z.map(|r| r.rows(b0, nb, sr));
        let h0 = inp.h0.map(|r| r.rows(b0, nb, str_));
        let start = inp.start.map(|r| r.rows(b0, nb, pl.flag_row));
        let (bu, off_u) = ctx.bind(&inp.u.rows(b0, nb, sr))?;
        let (bdl, off_delta) = ctx.bind(&inp.delta.rows(b0, nb, sr))?;
        let (ba, off_a) = ctx.bind(&inp.a)?;
        let (bbm, off_bm) = ctx.bind(&pl.bc_rows(p, inp.bm, b0, nb))?;
        let (bcm, off_cm) = ctx.bind(&pl.bc_rows(p, inp.cm, b0, nb))?;
        let (bds, off_dskip) = ctx.bind_opt(inp.dskip.as_ref())?;
        let (bz, off_z) = ctx.bind_opt(z.as_ref())?;
        let (bbi, off_bias) = ctx.bind_opt(inp.delta_bias.as_ref())?;
        let (bh0, off_h0) = ctx.bind_opt(h0.as_ref())?;
        let (bst, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bo, off_o) = ctx.bind(&outr.rows(b0, nb, sr))?;
        let (bhf, off_f) = ctx.bind(&hfr.rows(b0, nb, str_))?;
        let flags = base_flags(
            p,
            inp.dskip.is_some(),
            z.is_some(),
            inp.delta_bias.is_some(),
            h0.is_some(),
            start.is_some(),
        );
        let params = Params {
            off_u,
            off_delta,
            off_a,
            off_bm,
            off_cm,
            off_dskip,
            off_z,
            off_bias,
            off_h0,
            off_start,
            off_o,
            off_f,
            ..pl.params(p, b0, nb, flags)
        };
        launch.dispatch(
            pipe.clone(),
            &params,
            vec![bu, bdl, ba, bbm, bcm, bds, bz, bbi, bh0, bst, bo, bhf],
            (nb * pl.nb) as u32,
        )?;
    }
    launch.submit()?;
    Ok(SelectiveOutputs { out, h_final: hf })
}

/// Backward pass on the caller's buffers.
pub fn backward(
    ctx: &WgpuContext,
    p: &SelectiveScan,
    inp: &SelectiveBackwardInputs<GpuRef<'_>>,
) -> Result<SelectiveGrads<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    // per-block partials of input-dependent dBm / dCm when a group spans several blocks
    let part_row = |pl: &Plan| {
        if p.input_dependent() && pl.bpg > 1 {
            2 * tn * pl.nb * ns
        } else {
            0
        }
    };
    // checkpoints, then partials: the row-split scratch
    let rs_row = |pl: &Plan| pl.kc * pl.state_row + part_row(pl);
    let pl = plan(ctx, p, true, &|pl| (rs_row(pl) * 4) as u64)?;
    let max_rows = pl.groups.iter().map(|g| g.1).max().unwrap_or(1);
    check_u32("scratch of the backward", max_rows * rs_row(&pl))?;
    // per-row parameter partials: dA, dDskip, dbias (and fixed dBm, dCm), summed over rows
    let (dn_n, fixed) = (dn * ns, !p.input_dependent());
    let pp_len = bn * (dn_n + 2 * dn) + if fixed { 2 * bn * dn_n } else { 0 };
    check_u32("parameter partials of the backward", pp_len)?;
    let f32z = |name: Arg| ctx.zeros(&p.spec(name).shape, DType::F32);
    let seqz = |name: Arg| ctx.zeros(&p.spec(name).shape, p.dtype);
    let (du, ddelta, dz) = (seqz(Arg::Du)?, seqz(Arg::Ddelta)?, seqz(Arg::Dz)?);
    let (da, ddskip, ddelta_bias, dh0) = (
        f32z(Arg::Da)?,
        f32z(Arg::Ddskip)?,
        f32z(Arg::DdeltaBias)?,
        f32z(Arg::Dh0)?,
    );
    let bc_dtype = p.dtype_of(p.spec(Arg::Dbm).role);
    let dbm = ctx.zeros(&p.spec(Arg::Dbm).shape, bc_dtype)?;
    let dcm = ctx.zeros(&p.spec(Arg::Dcm).shape, bc_dtype)?;
    let pp = ctx.zeros(&[pp_len], DType::F32)?;
    let rs = ctx.zeros(&[max_rows * rs_row(&pl)], DType::F32)?;
    let pipe = ctx.pipeline(
        "selective/backward.wgsl",
        "main",
        &pl.defines,
        &pl.backward_constants(p),
    )?;
    let reduce_groups = if part_row(&pl) > 0 {
        let defines: Vec<&str> = pl
            .defines
            .iter()
            .copied()
            .filter(|d| *d == "F16" || *d == "BF16")
            .collect();
        Some(ctx.pipeline("selective/reduce_groups.wgsl", "main", &defines, &[])?)
    } else {
        None
    };
    let (dur, ddr, dzr, dh0r) = (du.as_ref(), ddelta.as_ref(), dz.as_ref(), dh0.as_ref());
    let (dbr, dcr, ppr, rsr) = (dbm.as_ref(), dcm.as_ref(), pp.as_ref(), rs.as_ref());
    let mut launch = ctx.launch("selective_scan backward");
    for &(b0, nb) in &pl.groups {
        let (sr, str_) = (pl.seq_row, pl.state_row);
        let z = inp.z.map(|r| r.rows(b0, nb, sr));
        let h0 = inp.h0.map(|r| r.rows(b0, nb, str_));
        let start = inp.start.map(|r| r.rows(b0, nb, pl.flag_row));
        let gf = inp.grad_final.map(|r| r.rows(b0, nb, str_));
        let (bu, off_u) = ctx.bind(&inp.u.rows(b0, nb, sr))?;
        let (bdl, off_delta) = ctx.bind(&inp.delta.rows(b0, nb, sr))?;
        let (ba, off_a) = ctx.bind(&inp.a)?;
        let (bbm, off_bm) = ctx.bind(&pl.bc_rows(p, inp.bm, b0, nb))?;
        let (bcm, off_cm) = ctx.bind(&pl.bc_rows(p, inp.cm, b0, nb))?;
        let (bds, off_dskip) = ctx.bind_opt(inp.dskip.as_ref())?;
        let (bz, off_z) = ctx.bind_opt(z.as_ref())?;
        let (bbi, off_bias) = ctx.bind_opt(inp.delta_bias.as_ref())?;
        let (bh0, off_h0) = ctx.bind_opt(h0.as_ref())?;
        let (bst, off_start) = ctx.bind_opt(start.as_ref())?;
        let (bgo, off_o) = ctx.bind(&inp.grad_out.rows(b0, nb, sr))?;
        let (bgf, off_f) = ctx.bind_opt(gf.as_ref())?;
        let (bdu, off_du) = ctx.bind(&dur.rows(b0, nb, sr))?;
        let (bdd, off_ddelta) = ctx.bind(&ddr.rows(b0, nb, sr))?;
        let (bdz, off_dz) = ctx.bind(&dzr.rows(b0, nb, sr))?;
        let (bdh0, off_dh0) = ctx.bind(&dh0r.rows(b0, nb, str_))?;
        let (bpp, off_pp) = ctx.bind(&ppr)?;
        let rs_here = GpuRef::new(rsr.buffer, 0, nb * rs_row(&pl), DType::F32);
        let (brs, off_rs0) = ctx.bind(&rs_here)?;
        let off_rs = off_rs0 + (nb * pl.kc * str_) as u32;
        let mut flags = base_flags(
            p,
            inp.dskip.is_some(),
            z.is_some(),
            inp.delta_bias.is_some(),
            h0.is_some(),
            start.is_some(),
        );
        if gf.is_some() {
            flags |= HAS_GF;
        }
        let mut params = Params {
            off_u,
            off_delta,
            off_a,
            off_bm,
            off_cm,
            off_dskip,
            off_z,
            off_bias,
            off_h0,
            off_start,
            off_o,
            off_f,
            off_du,
            off_ddelta,
            off_dz,
            off_dh0,
            off_pp,
            off_rs,
            ..pl.params(p, b0, nb, flags)
        };
        let mut buffers = vec![
            bu, bdl, ba, bbm, bcm, bds, bz, bbi, bh0, bst, bgo, bgf, bdu, bdd, bdz, bdh0, bpp, brs,
        ];
        let mut dbc = None;
        if p.input_dependent() {
            let (bdb, off_dbm) = ctx.bind(&dbr.rows(b0, nb, pl.bc_row))?;
            let (bdc, off_dcm) = ctx.bind(&dcr.rows(b0, nb, pl.bc_row))?;
            params.off_dbm = off_dbm;
            params.off_dcm = off_dcm;
            dbc = Some((bdb.clone(), bdc.clone()));
            buffers.extend([bdb, bdc]);
        }
        launch.dispatch(pipe.clone(), &params, buffers, (nb * pl.nb) as u32)?;
        if let (Some(rg), Some((bdb, bdc))) = (&reduce_groups, dbc) {
            let (brs, _) = ctx.bind(&rs_here)?;
            let count = (nb * pl.bc_row).div_ceil(WG) as u32;
            launch.dispatch(rg.clone(), &params, vec![brs, bdb, bdc], count)?;
        }
    }
    // sums over rows of the per-row partials, in a fixed order
    let region =
        |k: usize, len: usize| GpuRef::new(ppr.buffer, (k * 4) as u64, bn * len, DType::F32);
    ctx.reduce_rows(&mut launch, &region(0, dn_n), &da.as_ref(), bn, dn_n)?;
    ctx.reduce_rows(
        &mut launch,
        &region(bn * dn_n, dn),
        &ddskip.as_ref(),
        bn,
        dn,
    )?;
    ctx.reduce_rows(
        &mut launch,
        &region(bn * (dn_n + dn), dn),
        &ddelta_bias.as_ref(),
        bn,
        dn,
    )?;
    if fixed {
        let base = bn * (dn_n + 2 * dn);
        ctx.reduce_rows(&mut launch, &region(base, dn_n), &dbr, bn, dn_n)?;
        ctx.reduce_rows(&mut launch, &region(base + bn * dn_n, dn_n), &dcr, bn, dn_n)?;
    }
    launch.submit()?;
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
