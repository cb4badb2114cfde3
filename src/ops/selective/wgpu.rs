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
//! Two variants of each kernel. The wide ones bind every argument directly (the forward 12
//! storage buffers, the backward 18 / 20) and stage 16-step (forward) / 8-step (backward)
//! chunks in about 25 KiB of workgroup memory; they run wherever the device offers that. On a
//! device with fewer storage buffers or less workgroup memory (WebGPU's default limits: 8
//! buffers, 16 KiB) the PACKED variants run instead: the small f32 / u32 arguments (A,
//! Dskip, delta_bias, h0, start, grad_final) are copied word for word into one packed buffer
//! in the same compute pass (`common/words.wgsl`), chunks are 8 (forward) / 4 (backward)
//! steps (13 / 14 KiB), the forward binds 8 buffers, and the backward is split into passes
//! that bind at most 7: `selective/gate.wgsl` writes dy into an f32 workspace, the backward
//! leaves y, du, ddelta, dBm / dCm and dh0 there, and `gate.wgsl` / `words.wgsl` / `cast.wgsl` /
//! `reduce_groups.wgsl` turn them into dz and the outputs. Both variants make the same
//! floating-point operations per value except where the chunk length changes a sum order.
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
    off_ck: u32,
    pad: [u32; 3],
}

/// The parameters of `selective/gate.wgsl` (`Gp`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GateParams {
    n: u32,
    flags: u32,
    off_z: u32,
    off_go: u32,
    off_dy: u32,
    off_y: u32,
    off_dz: u32,
    pad: u32,
}

/// The parameters of `selective/cast.wgsl` (`Cp`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct CastParams {
    n: u32,
    off_src: u32,
    off_dst: u32,
    pad: u32,
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
    /// Whether the PACKED variants run (see [`choose`]).
    packed: bool,
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

fn plan(ctx: &WgpuContext, p: &SelectiveScan, backward: bool) -> Result<Plan> {
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
    Ok(Plan {
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
        packed: false,
    })
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
    /// Split the rows into dispatches (`groups`) whose bindings fit the device's binding-size
    /// limit, given the bytes one row occupies in the launcher's scratch buffers, and whose
    /// grids (rows x channel blocks) fit a 2-D dispatch.
    fn split(&mut self, ctx: &WgpuContext, p: &SelectiveScan, extra_row_bytes: u64) -> Result<()> {
        let es = p.dtype.size() as u64;
        let rows = [
            self.seq_row as u64 * es,
            self.bc_row as u64 * es,
            self.state_row as u64 * 4,
            self.flag_row as u64 * 4,
            extra_row_bytes,
        ];
        let maxd = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize;
        let max_rows = maxd * maxd / self.nb;
        if max_rows == 0 {
            return Err(Error::Limit {
                backend: "wgpu",
                what: format!(
                    "{} channel blocks per row exceed {maxd} x {maxd} workgroups",
                    self.nb
                ),
            });
        }
        self.groups = ctx
            .row_groups(p.batch, &rows)?
            .into_iter()
            .flat_map(|(b0, n)| {
                (b0..b0 + n)
                    .step_by(max_rows)
                    .map(move |s| (s, max_rows.min(b0 + n - s)))
            })
            .collect();
        Ok(())
    }
    /// The largest number of rows of one dispatch.
    fn max_rows(&self) -> usize {
        self.groups.iter().map(|g| g.1).max().unwrap_or(1)
    }
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

/// What the wide variants of `forward.wgsl` and `backward.wgsl` need: storage buffers per
/// stage and bytes of workgroup memory, as naga counts them (`pipeline` checks the same; the
/// unit test below pins these figures). A device that offers less runs the PACKED variants.
const WIDE_FORWARD: (u32, u32) = (12, 25680);
const WIDE_BACKWARD: (u32, u32) = (20, 25648);
/// The storage buffers of the wide backward with fixed `Bm` / `Cm` (no dBm / dCm bindings).
const WIDE_BACKWARD_FIXED_BUFFERS: u32 = 18;

/// The pipeline of `shader`: its wide variant where the device offers `wide` (storage
/// buffers, workgroup bytes), else (or where the device refuses the wide one with
/// [`Error::Limit`]) the PACKED variant, which fits WebGPU's default limits. Returns whether
/// PACKED was chosen.
fn choose(
    ctx: &WgpuContext,
    shader: &str,
    defines: &[&'static str],
    constants: &[(&str, f64)],
    wide: (u32, u32),
) -> Result<(std::sync::Arc<wgpu::ComputePipeline>, bool)> {
    if ctx.max_storage_buffers() >= wide.0 && ctx.max_workgroup_memory() >= wide.1 {
        match ctx.pipeline(shader, "main", defines, constants) {
            Ok(pipe) => return Ok((pipe, false)),
            Err(Error::Limit { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut d = vec!["PACKED"];
    d.extend_from_slice(defines);
    Ok((ctx.pipeline(shader, "main", &d, constants)?, true))
}

/// Copies and conversions of the PACKED variants: 32-bit words are copied as they are
/// (`WgpuContext::copy_words`), f32 values rounded to a 16-bit storage type by
/// `selective/cast.wgsl` (`seq`, absent for f32 storage).
struct Cast {
    seq: Option<std::sync::Arc<wgpu::ComputePipeline>>,
}

impl Cast {
    fn new(ctx: &WgpuContext, dtype: DType) -> Result<Self> {
        let seq = match dtype {
            DType::F16 => Some(ctx.pipeline("selective/cast.wgsl", "main", &["F16"], &[])?),
            DType::BF16 => Some(ctx.pipeline("selective/cast.wgsl", "main", &["BF16"], &[])?),
            _ => None,
        };
        Ok(Cast { seq })
    }
    /// Record `n` elements from `src` (element `off_src` of its binding) to `dst` (element
    /// `off_dst`); nothing when `n` is 0.
    #[allow(clippy::too_many_arguments)]
    fn record<'a>(
        &self,
        ctx: &'a WgpuContext,
        launch: &mut crate::runtime::wgpu::Launch<'a>,
        words: bool,
        src: &GpuRef<'a>,
        dst: &GpuRef<'a>,
        n: usize,
        off_src: usize,
        off_dst: usize,
    ) -> Result<()> {
        let pipe = match &self.seq {
            Some(seq) if !words => seq,
            _ => return ctx.copy_words(launch, src, off_src, dst, off_dst, n),
        };
        if n == 0 {
            return Ok(());
        }
        let (bs, os) = ctx.bind(src)?;
        let (bd, od) = ctx.bind(dst)?;
        let params = CastParams {
            n: n as u32,
            off_src: os + off_src as u32,
            off_dst: od + off_dst as u32,
            pad: 0,
        };
        launch.dispatch(pipe.clone(), &params, vec![bs, bd], n.div_ceil(WG) as u32)
    }
}

/// Where the PACKED variants find the small arguments in the packed buffer `SM` of one
/// dispatch of `rows` rows: A, Dskip, delta_bias, then the rows' h0, start and grad_final.
struct SmLayout {
    a: usize,
    dskip: usize,
    bias: usize,
    h0: usize,
    start: usize,
    gf: usize,
    len: usize,
}

impl SmLayout {
    fn new(pl: &Plan, p: &SelectiveScan, rows: usize, gf: bool) -> Self {
        let (dn, d) = (pl.state_row, p.dim);
        let h0 = dn + 2 * d;
        let start = h0 + rows * dn;
        let gf_at = start + rows * pl.flag_row;
        SmLayout {
            a: 0,
            dskip: dn,
            bias: dn + d,
            h0,
            start,
            gf: gf_at,
            len: gf_at + if gf { rows * dn } else { 0 },
        }
    }
    /// Elements one row adds.
    fn row(pl: &Plan, gf: bool) -> usize {
        pl.state_row * (1 + usize::from(gf)) + pl.flag_row
    }
    /// The bytes per row to give the row split for the packed buffer: its fixed part (A,
    /// Dskip, delta_bias) shares each dispatch's binding with the rows, so a row counts as
    /// `row * limit / (limit - fixed)` bytes and the rows of one dispatch leave room for it.
    fn split_bytes(ctx: &WgpuContext, pl: &Plan, p: &SelectiveScan, gf: bool) -> Result<u64> {
        let fixed = (pl.state_row + 2 * p.dim) as u64 * 4;
        let row = Self::row(pl, gf) as u64 * 4;
        // the split's own slack (offset alignment and rounding), with a margin
        let slack = ctx.limits.min_storage_buffer_offset_alignment as u64 + 260;
        let limit = ctx.max_binding().saturating_sub(slack);
        if fixed >= limit {
            return Err(Error::Limit {
                backend: "wgpu",
                what: format!(
                    "A, Dskip and delta_bias ({fixed} bytes) need a larger binding than \
                     max_storage_buffer_binding_size {}",
                    ctx.max_binding()
                ),
            });
        }
        Ok((row * limit).div_ceil(limit - fixed))
    }
}

/// Record the copies of the small arguments of rows `b0 .. b0 + nb` into `sm`.
#[allow(clippy::too_many_arguments)]
fn pack_small<'a>(
    ctx: &'a WgpuContext,
    launch: &mut crate::runtime::wgpu::Launch<'a>,
    cast: &Cast,
    pl: &Plan,
    lay: &SmLayout,
    sm: &GpuRef<'a>,
    inp: &SelectiveInputs<GpuRef<'a>>,
    gf: Option<GpuRef<'a>>,
    b0: usize,
    nb: usize,
) -> Result<()> {
    let (sr, fr) = (pl.state_row, pl.flag_row);
    let mut copy = |r: Option<GpuRef<'a>>, at: usize| -> Result<()> {
        match r {
            Some(r) => cast.record(ctx, launch, true, &r, sm, r.len, 0, at),
            None => Ok(()),
        }
    };
    copy(Some(inp.a), lay.a)?;
    copy(inp.dskip, lay.dskip)?;
    copy(inp.delta_bias, lay.bias)?;
    copy(inp.h0.map(|r| r.rows(b0, nb, sr)), lay.h0)?;
    copy(inp.start.map(|r| r.rows(b0, nb, fr)), lay.start)?;
    copy(gf.map(|r| r.rows(b0, nb, sr)), lay.gf)
}

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &SelectiveScan,
    inp: &SelectiveInputs<GpuRef<'_>>,
) -> Result<SelectiveOutputs<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let mut pl = plan(ctx, p, false)?;
    let (pipe, packed) = choose(
        ctx,
        "selective/forward.wgsl",
        &pl.defines,
        &pl.constants(),
        WIDE_FORWARD,
    )?;
    pl.packed = packed;
    let extra = if packed {
        SmLayout::split_bytes(ctx, &pl, p, false)?
    } else {
        0
    };
    pl.split(ctx, p, extra)?;
    let out = ctx.result(&p.spec(Arg::Out).shape, p.dtype)?;
    let hf = ctx.result(&p.spec(Arg::HFinal).shape, DType::F32)?;
    let lay = SmLayout::new(&pl, p, pl.max_rows(), false);
    let (sm, cast) = if packed {
        check_u32("packed arguments of the forward", lay.len)?;
        (
            Some(ctx.zeros(&[lay.len], DType::U32)?),
            Some(Cast::new(ctx, p.dtype)?),
        )
    } else {
        (None, None)
    };
    let (outr, hfr) = (out.as_ref(), hf.as_ref());
    let smr = sm.as_ref().map(|t| t.as_ref());
    let mut launch = ctx.launch("selective_scan forward");
    for &(b0, nb) in &pl.groups {
        let (sr, str_) = (pl.seq_row, pl.state_row);
        let z = inp.z.map(|r| r.rows(b0, nb, sr));
        let h0 = inp.h0.map(|r| r.rows(b0, nb, str_));
        let start = inp.start.map(|r| r.rows(b0, nb, pl.flag_row));
        let (bu, off_u) = ctx.bind(&inp.u.rows(b0, nb, sr))?;
        let (bdl, off_delta) = ctx.bind(&inp.delta.rows(b0, nb, sr))?;
        let (bbm, off_bm) = ctx.bind(&pl.bc_rows(p, inp.bm, b0, nb))?;
        let (bcm, off_cm) = ctx.bind(&pl.bc_rows(p, inp.cm, b0, nb))?;
        let (bz, off_z) = ctx.bind_opt(z.as_ref())?;
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
        let base = Params {
            off_u,
            off_delta,
            off_bm,
            off_cm,
            off_z,
            off_o,
            off_f,
            ..pl.params(p, b0, nb, flags)
        };
        if let (Some(smr), Some(cast)) = (smr, cast.as_ref()) {
            pack_small(ctx, &mut launch, cast, &pl, &lay, &smr, inp, None, b0, nb)?;
            let (bsm, _) = ctx.bind(&smr)?;
            let params = Params {
                off_a: lay.a as u32,
                off_dskip: lay.dskip as u32,
                off_bias: lay.bias as u32,
                off_h0: lay.h0 as u32,
                off_start: lay.start as u32,
                ..base
            };
            launch.dispatch(
                pipe.clone(),
                &params,
                vec![bu, bdl, bbm, bcm, bz, bsm, bo, bhf],
                (nb * pl.nb) as u32,
            )?;
            continue;
        }
        let (ba, off_a) = ctx.bind(&inp.a)?;
        let (bds, off_dskip) = ctx.bind_opt(inp.dskip.as_ref())?;
        let (bbi, off_bias) = ctx.bind_opt(inp.delta_bias.as_ref())?;
        let (bh0, off_h0) = ctx.bind_opt(h0.as_ref())?;
        let (bst, off_start) = ctx.bind_opt(start.as_ref())?;
        let params = Params {
            off_a,
            off_dskip,
            off_bias,
            off_h0,
            off_start,
            ..base
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

/// Where the PACKED backward keeps its f32 results and scratch in the workspace `WS` of one
/// dispatch of `rows` rows (element offsets).
struct WsLayout {
    ck: usize,
    dy: usize,
    y: usize,
    du: usize,
    ddelta: usize,
    dbm: usize,
    dcm: usize,
    part: usize,
    dh0: usize,
    len: usize,
}

impl WsLayout {
    /// Elements one row takes: checkpoints, dy, y (with z), du, ddelta, input-dependent dBm /
    /// dCm (or their per-block partials), dh0.
    fn row(pl: &Plan, p: &SelectiveScan, z: bool) -> usize {
        let dbc = if !p.input_dependent() {
            0
        } else if pl.bpg > 1 {
            2 * p.len * pl.nb * p.state
        } else {
            2 * pl.bc_row
        };
        pl.kc * pl.state_row + pl.seq_row * (3 + usize::from(z)) + dbc + pl.state_row
    }
    fn new(pl: &Plan, p: &SelectiveScan, rows: usize, z: bool) -> Self {
        let seq = rows * pl.seq_row;
        let ck = 0;
        let dy = ck + rows * pl.kc * pl.state_row;
        let y = dy + seq;
        let du = y + if z { seq } else { 0 };
        let ddelta = du + seq;
        let dbm = ddelta + seq;
        let (dcm, part, dh0) = if !p.input_dependent() {
            (dbm, dbm, dbm)
        } else if pl.bpg > 1 {
            (dbm, dbm, dbm + 2 * rows * p.len * pl.nb * p.state)
        } else {
            let bc = rows * pl.bc_row;
            (dbm + bc, dbm, dbm + 2 * bc)
        };
        WsLayout {
            ck,
            dy,
            y,
            du,
            ddelta,
            dbm,
            dcm,
            part,
            dh0,
            len: dh0 + rows * pl.state_row,
        }
    }
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
    let mut pl = plan(ctx, p, true)?;
    let (pipe, packed) = choose(
        ctx,
        "selective/backward.wgsl",
        &pl.defines,
        &pl.backward_constants(p),
        if p.input_dependent() {
            WIDE_BACKWARD
        } else {
            (WIDE_BACKWARD_FIXED_BUFFERS, WIDE_BACKWARD.1)
        },
    )?;
    pl.packed = packed;
    // per-block partials of input-dependent dBm / dCm when a group spans several blocks
    let part_row = |pl: &Plan| {
        if p.input_dependent() && pl.bpg > 1 {
            2 * tn * pl.nb * ns
        } else {
            0
        }
    };
    // wide: checkpoints, then partials: the row-split scratch; PACKED: the workspace
    let has_z = inp.z.is_some();
    let rs_row = |pl: &Plan| {
        if pl.packed {
            WsLayout::row(pl, p, has_z)
        } else {
            pl.kc * pl.state_row + part_row(pl)
        }
    };
    let extra = (rs_row(&pl) as u64 * 4).max(if packed {
        SmLayout::split_bytes(ctx, &pl, p, inp.grad_final.is_some())?
    } else {
        0
    });
    pl.split(ctx, p, extra)?;
    let max_rows = pl.max_rows();
    check_u32("scratch of the backward", max_rows * rs_row(&pl))?;
    // per-row parameter partials: dA, dDskip, dbias (and fixed dBm, dCm), summed over rows
    let (dn_n, fixed) = (dn * ns, !p.input_dependent());
    let pp_len = bn * (dn_n + 2 * dn) + if fixed { 2 * bn * dn_n } else { 0 };
    check_u32("parameter partials of the backward", pp_len)?;
    let f32z = |name: Arg| ctx.result(&p.spec(name).shape, DType::F32);
    let seqz = |name: Arg| ctx.result(&p.spec(name).shape, p.dtype);
    let (du, ddelta, dz) = (seqz(Arg::Du)?, seqz(Arg::Ddelta)?, seqz(Arg::Dz)?);
    let (da, ddskip, ddelta_bias, dh0) = (
        f32z(Arg::Da)?,
        f32z(Arg::Ddskip)?,
        f32z(Arg::DdeltaBias)?,
        f32z(Arg::Dh0)?,
    );
    let bc_dtype = p.dtype_of(p.spec(Arg::Dbm).role);
    let dbm = ctx.result(&p.spec(Arg::Dbm).shape, bc_dtype)?;
    let dcm = ctx.result(&p.spec(Arg::Dcm).shape, bc_dtype)?;
    let pp = ctx.zeros(&[pp_len], DType::F32)?;
    let rs = ctx.zeros(&[max_rows * rs_row(&pl)], DType::F32)?;
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
    let fwd_inp = SelectiveInputs {
        u: inp.u,
        delta: inp.delta,
        a: inp.a,
        bm: inp.bm,
        cm: inp.cm,
        dskip: inp.dskip,
        z: inp.z,
        delta_bias: inp.delta_bias,
        h0: inp.h0,
        start: inp.start,
    };
    let mut launch = ctx.launch("selective_scan backward");
    if packed {
        let sml = SmLayout::new(&pl, p, max_rows, inp.grad_final.is_some());
        check_u32("packed arguments of the backward", sml.len)?;
        let sm = ctx.zeros(&[sml.len], DType::U32)?;
        let smr = sm.as_ref();
        let cast = Cast::new(ctx, p.dtype)?;
        let gate = |entry: &str| {
            let defines: Vec<&str> = pl
                .defines
                .iter()
                .copied()
                .filter(|d| *d == "F16" || *d == "BF16")
                .collect();
            ctx.pipeline("selective/gate.wgsl", entry, &defines, &[])
        };
        let (gate_dy, gate_dz) = (gate("dy")?, gate("dz")?);
        let wsl = WsLayout::new(&pl, p, max_rows, has_z);
        debug_assert_eq!(wsl.len, rs.numel());
        for &(b0, nb) in &pl.groups {
            let (sr, str_) = (pl.seq_row, pl.state_row);
            let z = inp.z.map(|r| r.rows(b0, nb, sr));
            let go = inp.grad_out.rows(b0, nb, sr);
            let n_seq = nb * sr;
            pack_small(
                ctx,
                &mut launch,
                &cast,
                &pl,
                &sml,
                &smr,
                &fwd_inp,
                inp.grad_final,
                b0,
                nb,
            )?;
            // dy into the workspace
            let (bz, off_z) = ctx.bind_opt(z.as_ref())?;
            let (bgo, off_go) = ctx.bind(&go)?;
            let (bws, _) = ctx.bind(&rsr)?;
            let gp = GateParams {
                n: n_seq as u32,
                flags: if z.is_some() { HAS_Z } else { 0 },
                off_z,
                off_go,
                off_dy: wsl.dy as u32,
                off_y: wsl.y as u32,
                ..Default::default()
            };
            launch.dispatch(
                gate_dy.clone(),
                &gp,
                vec![bz, bgo, bws],
                n_seq.div_ceil(WG) as u32,
            )?;
            // the backward proper
            let (bu, off_u) = ctx.bind(&inp.u.rows(b0, nb, sr))?;
            let (bdl, off_delta) = ctx.bind(&inp.delta.rows(b0, nb, sr))?;
            let (bbm, off_bm) = ctx.bind(&pl.bc_rows(p, inp.bm, b0, nb))?;
            let (bcm, off_cm) = ctx.bind(&pl.bc_rows(p, inp.cm, b0, nb))?;
            let (bsm, _) = ctx.bind(&smr)?;
            let (bws, _) = ctx.bind(&rsr)?;
            let (bpp, off_pp) = ctx.bind(&ppr)?;
            let mut flags = base_flags(
                p,
                inp.dskip.is_some(),
                z.is_some(),
                inp.delta_bias.is_some(),
                inp.h0.is_some(),
                inp.start.is_some(),
            );
            if inp.grad_final.is_some() {
                flags |= HAS_GF;
            }
            let params = Params {
                off_u,
                off_delta,
                off_bm,
                off_cm,
                off_a: sml.a as u32,
                off_dskip: sml.dskip as u32,
                off_bias: sml.bias as u32,
                off_h0: sml.h0 as u32,
                off_start: sml.start as u32,
                off_f: sml.gf as u32,
                off_o: wsl.dy as u32,
                off_dz: wsl.y as u32,
                off_du: wsl.du as u32,
                off_ddelta: wsl.ddelta as u32,
                off_dbm: wsl.dbm as u32,
                off_dcm: wsl.dcm as u32,
                off_rs: wsl.part as u32,
                off_ck: wsl.ck as u32,
                off_dh0: wsl.dh0 as u32,
                off_pp,
                ..pl.params(p, b0, nb, flags)
            };
            launch.dispatch(
                pipe.clone(),
                &params,
                vec![bu, bdl, bbm, bcm, bsm, bws, bpp],
                (nb * pl.nb) as u32,
            )?;
            // dz from the pre-gate output
            if let Some(z) = z {
                let (bz, off_z) = ctx.bind(&z)?;
                let (bgo, off_go) = ctx.bind(&go)?;
                let (bws, _) = ctx.bind(&rsr)?;
                let (bdz, off_dz) = ctx.bind(&dzr.rows(b0, nb, sr))?;
                let gp = GateParams {
                    off_z,
                    off_go,
                    off_dz,
                    ..gp
                };
                launch.dispatch(
                    gate_dz.clone(),
                    &gp,
                    vec![bz, bgo, bws, bdz],
                    n_seq.div_ceil(WG) as u32,
                )?;
            }
            // the f32 results to the outputs
            for (words, dst, n, at) in [
                (false, dur.rows(b0, nb, sr), n_seq, wsl.du),
                (false, ddr.rows(b0, nb, sr), n_seq, wsl.ddelta),
                (true, dh0r.rows(b0, nb, str_), nb * str_, wsl.dh0),
            ] {
                cast.record(ctx, &mut launch, words, &rsr, &dst, n, at, 0)?;
            }
            if p.input_dependent() {
                if let Some(rg) = &reduce_groups {
                    let (brs, off_rs) = ctx.bind(&rsr)?;
                    let (bdb, off_dbm) = ctx.bind(&dbr.rows(b0, nb, pl.bc_row))?;
                    let (bdc, off_dcm) = ctx.bind(&dcr.rows(b0, nb, pl.bc_row))?;
                    let rp = Params {
                        off_rs: off_rs + wsl.part as u32,
                        off_dbm,
                        off_dcm,
                        ..params
                    };
                    let count = (nb * pl.bc_row).div_ceil(WG) as u32;
                    launch.dispatch(rg.clone(), &rp, vec![brs, bdb, bdc], count)?;
                } else {
                    let n_bc = nb * pl.bc_row;
                    for (dst, at) in [(dbr, wsl.dbm), (dcr, wsl.dcm)] {
                        let dst = dst.rows(b0, nb, pl.bc_row);
                        cast.record(ctx, &mut launch, false, &rsr, &dst, n_bc, at, 0)?;
                    }
                }
            }
        }
        reduce_params(
            ctx,
            &mut launch,
            p,
            &ppr,
            [&da, &ddskip, &ddelta_bias],
            &dbr,
            &dcr,
        )?;
        launch.submit()?;
        return Ok(SelectiveGrads {
            du,
            ddelta,
            da,
            dbm,
            dcm,
            ddskip,
            dz,
            ddelta_bias,
            dh0,
        });
    }
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
    reduce_params(
        ctx,
        &mut launch,
        p,
        &ppr,
        [&da, &ddskip, &ddelta_bias],
        &dbr,
        &dcr,
    )?;
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

/// Sums over rows of the per-row parameter partials `pp` (dA, dDskip, dbias, and fixed dBm,
/// dCm), in a fixed order.
fn reduce_params<'a>(
    ctx: &'a WgpuContext,
    launch: &mut crate::runtime::wgpu::Launch<'a>,
    p: &SelectiveScan,
    ppr: &GpuRef<'a>,
    [da, ddskip, ddelta_bias]: [&'a GpuTensor; 3],
    dbr: &GpuRef<'a>,
    dcr: &GpuRef<'a>,
) -> Result<()> {
    let (bn, dn, dn_n) = (p.batch, p.dim, p.dim * p.state);
    let region =
        |k: usize, len: usize| GpuRef::new(ppr.buffer, (k * 4) as u64, bn * len, DType::F32);
    ctx.reduce_rows(launch, &region(0, dn_n), &da.as_ref(), bn, dn_n)?;
    ctx.reduce_rows(launch, &region(bn * dn_n, dn), &ddskip.as_ref(), bn, dn)?;
    ctx.reduce_rows(
        launch,
        &region(bn * (dn_n + dn), dn),
        &ddelta_bias.as_ref(),
        bn,
        dn,
    )?;
    if !p.input_dependent() {
        let base = bn * (dn_n + 2 * dn);
        ctx.reduce_rows(launch, &region(base, dn_n), dbr, bn, dn_n)?;
        ctx.reduce_rows(launch, &region(base + bn * dn_n, dn_n), dcr, bn, dn_n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures `choose` compares with the device's limits are what naga reads from the
    /// wide variants (the largest of their define sets), and every PACKED variant fits
    /// WebGPU's default limits.
    #[test]
    fn wide_needs_and_packed_fit() {
        let lookup = |n: &str| {
            std::fs::read_to_string(format!("{}/shaders/{n}", env!("CARGO_MANIFEST_DIR"))).ok()
        };
        let d = wgpu::Limits::defaults();
        for (shader, wide) in [
            ("selective/forward.wgsl", WIDE_FORWARD),
            ("selective/backward.wgsl", WIDE_BACKWARD),
        ] {
            let text = lookup(shader).expect("embedded shader");
            let (mut bufs, mut bytes) = (0, 0);
            for defines in crate::shader_pp::variants(&text) {
                let defines: Vec<&str> = defines.iter().map(|s| s.as_str()).collect();
                let src = crate::shader_pp::expand(shader, &defines, &lookup)
                    .unwrap()
                    .source;
                // the constants of the largest block: CB = 32 channels of NP = 8 states
                let constants: &[(&str, f64)] = if shader.contains("backward") {
                    &[("CB", 32.0), ("NP", 8.0), ("CW", 1.0)]
                } else {
                    &[("CB", 32.0), ("NP", 8.0)]
                };
                let n = crate::runtime::wgpu::needs(&src, "main", constants).unwrap();
                eprintln!(
                    "{shader} {defines:?}: {} storage buffers, {} bytes of workgroup memory",
                    n.storage_buffers, n.workgroup_bytes
                );
                if defines.contains(&"PACKED") {
                    assert!(n.storage_buffers <= d.max_storage_buffers_per_shader_stage);
                    assert!(n.workgroup_bytes <= d.max_compute_workgroup_storage_size as u64);
                } else if defines.contains(&"FIXED_BC") && shader.contains("backward") {
                    assert_eq!(n.storage_buffers, WIDE_BACKWARD_FIXED_BUFFERS);
                } else {
                    bufs = bufs.max(n.storage_buffers);
                    bytes = bytes.max(n.workgroup_bytes as u32);
                }
            }
            assert_eq!((bufs, bytes), wide, "{shader}");
        }
    }
}
