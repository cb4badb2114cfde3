//! Launch code for the WGSL EFLA / delta rule (`shaders/efla/`).
//!
//! **Recurrent** (`rec_*.wgsl`): the forward walks the tokens with one workgroup per (batch
//! row, head, 32 columns of S). The backward is three passes: the forward again, saving
//! `u_t = v_t - P^T k_t` and the step coefficients; the reverse recurrence of `dS` column by
//! column, saving `w_t = dS_t^T k_t` and giving `ds0`; then, with `u` and `w` known, both
//! remaining recurrences run row by row (one workgroup per 32 rows of S) for `dq`, `dk`,
//! `dv` and `dbeta`. No state is ever stored per step.
//!
//! **Chunked** (`ck_*.wgsl`, the WY algorithm of the module docs): per chunk the masked Gram
//! matrices and coefficients (`ck_gram`), the triangular inverse (`ck_solve`), the WY
//! vectors (`ck_wy`), then the inter-chunk state pass with the outputs (`ck_state`). The
//! backward recomputes those (keeping each chunk's incoming state, not every step's), runs the
//! reverse state pass (`ck_dstate`), then per chunk the products with the states (`ck_dsk`),
//! the `C x C` gradients (`ck_dcc`), the gradient through the inverse (`ck_dinv`) and the
//! input gradients (`ck_dout`).
//!
//! Half storage: inputs are widened in the kernels (`efla/storage.wgsl`: `enable f16` arrays
//! when the device has `SHADER_F16`, otherwise f16 or bf16 packed two per `u32`); results are
//! computed in f32 and rounded by `efla/cast.wgsl`. Large problems are split into groups of
//! batch rows (and heads, when one batch row's scratch is too large for one binding) so that
//! every binding fits `max_storage_buffer_binding_size`; what cannot be split is a
//! [`Error::Limit`].

use super::{Algorithm, Arg, Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs, Rule};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::wgpu::{check_u32, GpuRef, GpuTensor, Launch, WgpuContext};
use crate::tensor::DType;
use std::sync::Arc;

const HAS_S0: u32 = 1;
const HAS_START: u32 = 2;
const EFLA: u32 = 4;
const HAS_GF: u32 = 8;
const WRITE_OUT: u32 = 16;
const ST_SLOTS: u32 = 32;

/// The uniform block of every EFLA kernel (`shaders/efla/params.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    nb: u32,
    t: u32,
    h: u32,
    k: u32,
    v: u32,
    c: u32,
    nc: u32,
    flags: u32,
    hg: u32,
    h0: u32,
    ntiles: u32,
    scale: f32,
    off_q: u32,
    off_k: u32,
    off_v: u32,
    off_beta: u32,
    off_s0: u32,
    off_start: u32,
    off_go: u32,
    off_gf: u32,
    off_o: u32,
    off_ds0: u32,
    off_dq: u32,
    off_dk: u32,
    off_dv: u32,
    off_dbeta: u32,
    off_st: u32,
    off_dst: u32,
    /// Scratch regions (element offsets inside the scratch buffer).
    r: [u32; 16],
    /// Steps (recurrent) or chunks (chunked) of a sequential kernel's dispatch.
    t_begin: u32,
    t_end: u32,
    _pad: [u32; 2],
}

/// Scratch regions, in the order of `Params::r`.
#[derive(Clone, Copy)]
enum Region {
    Coef,
    Gm,
    Pm,
    X,
    W,
    U,
    Dd,
    Dqa,
    Dw,
    Dka,
    Dpm,
    Dt,
    Nm,
    Dl,
    Da,
    Carry,
}

/// One dispatch group: batch rows `b0 .. b0 + nb`, heads `h0 .. h0 + hg`.
#[derive(Clone, Copy, Debug)]
struct Group {
    b0: usize,
    nb: usize,
    h0: usize,
    hg: usize,
}

/// How one call is laid out on the device.
struct Plan {
    /// Shader defines: the storage variant, plus `SUBGROUP` for the recurrent kernels.
    storage: Vec<&'static str>,
    rec: Vec<&'static str>,
    groups: Vec<Group>,
    /// Largest `nb * hg` over the groups (scratch is sized for it and reused).
    nbh: usize,
    /// Chunk size and chunk count (recurrent: 1 and 1, unused).
    c: usize,
    nc: usize,
    /// Element offset of every region (0 for regions this call does not use).
    regions: [u32; 16],
    /// Steps (recurrent) or chunks (chunked) per dispatch of the sequential kernels.
    seg: usize,
    /// Scratch elements in all.
    scratch: usize,
    /// State slots per (batch row, head) of the chunked backward (forward states, reverse).
    slots: usize,
    flags: u32,
    scale: f32,
}

/// Whether the recurrent kernels' subgroup path applies: lane groups of 8 must fit a subgroup.
fn subgroup_path(ctx: &WgpuContext) -> bool {
    ctx.has_subgroups() && ctx.info.subgroup_min_size >= 8 && ctx.info.subgroup_max_size <= 256
}

/// The `shaders/efla/storage.wgsl` variant for a dtype on this device.
fn storage_define(ctx: &WgpuContext, dtype: DType) -> Result<Option<&'static str>> {
    Ok(match dtype {
        DType::F32 => None,
        DType::F16 if ctx.has_f16() => Some("F16"),
        DType::F16 => Some("F16P"),
        DType::BF16 => Some("BF16"),
        other => return Err(Error::value("dtype", "f32, f16 or bf16", other)),
    })
}

fn limit(what: String) -> Error {
    Error::Limit {
        backend: "wgpu",
        what,
    }
}

/// What the kernels need from the device: 256 invocations and 8.25 KiB of workgroup memory
/// (within WebGPU's defaults, as are the at most 8 storage buffers a kernel binds; the pipeline
/// builder checks those against the device too).
fn check_device(ctx: &WgpuContext) -> Result<()> {
    let l = &ctx.limits;
    if l.max_compute_invocations_per_workgroup < 256 || l.max_compute_workgroup_size_x < 256 {
        return Err(limit(format!(
            "efla kernels run 256 invocations per workgroup; the device allows {}",
            l.max_compute_invocations_per_workgroup
                .min(l.max_compute_workgroup_size_x)
        )));
    }
    if l.max_compute_workgroup_storage_size < 8448 {
        return Err(limit(format!(
            "efla kernels use 8448 bytes of workgroup memory; max_compute_workgroup_storage_size is {}",
            l.max_compute_workgroup_storage_size
        )));
    }
    Ok(())
}

impl Plan {
    fn new(ctx: &WgpuContext, p: &Efla, backward: bool, has_start: bool) -> Result<Self> {
        check_device(ctx)?;
        let (bn, tn, hn, kd, vd) = (p.batch, p.len, p.heads, p.key_dim, p.value_dim);
        let mut storage = Vec::new();
        if let Some(d) = storage_define(ctx, p.dtype)? {
            storage.push(d);
        }
        let mut rec = storage.clone();
        if subgroup_path(ctx) {
            rec.push("SUBGROUP");
        }
        let (c, nc) = match p.algorithm {
            Algorithm::Recurrent => (1, 1),
            Algorithm::Chunked { chunk } => (chunk, tn.div_ceil(chunk)),
        };
        // Elements per (batch row, head) of every scratch region this call uses.
        let cc = nc * c * c;
        let mut per = [0usize; 16];
        let mut set = |r: Region, n: usize| per[r as usize] = n;
        match (p.algorithm, backward) {
            (Algorithm::Recurrent, false) => {}
            (Algorithm::Recurrent, true) => {
                set(Region::Coef, tn * 4);
                set(Region::U, tn * vd);
                set(Region::W, tn * vd);
                set(Region::Dka, tn * kd);
                set(Region::Carry, kd * vd);
            }
            (Algorithm::Chunked { .. }, _) => {
                set(Region::Coef, tn * 4);
                set(Region::Gm, cc);
                set(Region::Pm, cc);
                set(Region::X, cc);
                set(Region::W, tn * kd);
                set(Region::U, tn * vd);
                if backward {
                    set(Region::Dd, tn * vd);
                    set(Region::Dqa, tn * kd);
                    set(Region::Dw, tn * kd);
                    set(Region::Dka, tn * kd);
                    set(Region::Dpm, cc);
                    set(Region::Dt, cc);
                    set(Region::Nm, cc);
                    set(Region::Dl, cc);
                    set(Region::Da, tn);
                }
            }
        }
        let per_bh: usize = per.iter().sum();
        let slots = if backward && p.chunk().is_some() {
            (nc + 1) * kd * vd
        } else {
            0
        };
        // Bytes of the widest binding of one batch row (f32 results dominate half inputs).
        let row_bytes = 4 * (tn * hn * kd.max(vd)).max(hn * kd * vd) as u64;
        let bh_bytes = 4 * per_bh.max(slots) as u64;
        let groups = Self::groups(ctx, bn, hn, row_bytes, bh_bytes, has_start.then_some(tn))?;
        let nbh = groups.iter().map(|g| g.nb * g.hg).max().unwrap_or(1);
        let mut regions = [0u32; 16];
        let mut at = 0usize;
        for (r, n) in regions.iter_mut().zip(per) {
            *r = check_u32("efla scratch", at)?;
            at += n * nbh;
        }
        check_u32("efla scratch", at)?;
        check_u32("efla states", nbh * slots.max(1))?;
        check_u32("batch * len * heads * dim", bn * tn * hn * kd.max(vd))?;
        check_u32("batch * heads * key_dim * value_dim", bn * hn * kd * vd)?;
        check_u32(
            "workgroups",
            nbh * nc * (2 * kd.div_ceil(64) + vd.div_ceil(64)),
        )?;
        let mut flags = 0;
        if p.rule == Rule::Efla {
            flags |= EFLA;
        }
        // A sequential kernel walks a long sequence in several dispatches (its state crosses
        // them in memory): single dispatches stay short, which keeps desktop GPUs clear of
        // their watchdogs and software rasterizers under their loop-iteration caps (llvmpipe
        // stops an invocation after 65535 loop iterations). The lengths bound the loop
        // iterations of one invocation to ~24k whether or not the compiler unrolls the
        // loops over a thread's elements; the state round trip costs little next to them.
        let seg = match p.algorithm {
            Algorithm::Recurrent => 24_000 / (3 * kd.max(vd).div_ceil(8) + 4),
            Algorithm::Chunked { chunk } => {
                let (ks, cs, kt) = (kd.div_ceil(16), chunk.div_ceil(16), kd.div_ceil(64));
                24_000 / (2 * ks + cs + kt * (2 * cs + 1) + 8)
            }
        }
        .max(1);
        Ok(Plan {
            storage,
            rec,
            groups,
            nbh,
            c,
            nc,
            regions,
            seg,
            scratch: at,
            slots,
            flags,
            scale: p.scale_value(),
        })
    }

    /// Split `b` batch rows of `h` heads into dispatch groups: whole batch rows while all
    /// their heads' scratch fits one binding, otherwise single rows and groups of heads.
    fn groups(
        ctx: &WgpuContext,
        b: usize,
        h: usize,
        row_bytes: u64,
        bh_bytes: u64,
        start_row: Option<usize>,
    ) -> Result<Vec<Group>> {
        let slack = ctx.limits.min_storage_buffer_offset_alignment as u64 + 4;
        let lim = ctx.max_binding().saturating_sub(slack);
        if bh_bytes > lim {
            return Err(limit(format!(
                "efla needs a {bh_bytes}-byte scratch binding per (batch row, head); \
                 max_storage_buffer_binding_size is {} (use shorter calls chained through \
                 the state)",
                ctx.max_binding()
            )));
        }
        let mut rows = vec![row_bytes];
        if let Some(t) = start_row {
            rows.push(4 * t as u64);
        }
        if (h as u64) * bh_bytes <= lim {
            rows.push(h as u64 * bh_bytes);
            return Ok(ctx
                .row_groups(b, &rows)?
                .into_iter()
                .map(|(b0, nb)| Group {
                    b0,
                    nb,
                    h0: 0,
                    hg: h,
                })
                .collect());
        }
        ctx.row_groups(1, &rows)?;
        let hg = (lim / bh_bytes.max(1)) as usize;
        let mut out = Vec::new();
        for b0 in 0..b {
            for h0 in (0..h).step_by(hg) {
                out.push(Group {
                    b0,
                    nb: 1,
                    h0,
                    hg: hg.min(h - h0),
                });
            }
        }
        Ok(out)
    }

    /// `(begin, end)` ranges of at most `seg` covering `0 .. n`, in order (or reversed).
    fn segments(&self, n: usize, reverse: bool) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = (0..n)
            .step_by(self.seg)
            .map(|b| (b as u32, (b + self.seg).min(n) as u32))
            .collect();
        if reverse {
            v.reverse();
        }
        v
    }

    /// The parameter block of one group (offsets are filled in by the caller).
    fn params(&self, p: &Efla, g: &Group, flags: u32, ntiles: usize) -> Params {
        Params {
            nb: g.nb as u32,
            t: p.len as u32,
            h: p.heads as u32,
            k: p.key_dim as u32,
            v: p.value_dim as u32,
            c: self.c as u32,
            nc: self.nc as u32,
            flags: self.flags | flags,
            hg: g.hg as u32,
            h0: g.h0 as u32,
            ntiles: ntiles as u32,
            scale: self.scale,
            r: self.regions,
            ..Default::default()
        }
    }
}

/// f32 result buffers: the outputs themselves (f32 problems) or f32 temporaries rounded into
/// the half outputs at the end.
struct Results {
    outs: Vec<GpuTensor>,
    temps: Vec<Option<GpuTensor>>,
}

impl Results {
    fn new(ctx: &WgpuContext, p: &Efla, names: &[Arg]) -> Result<Self> {
        let mut outs = Vec::new();
        let mut temps = Vec::new();
        for n in names {
            let shape = p.spec(*n).shape;
            outs.push(ctx.result(&shape, p.dtype)?);
            temps.push(if p.dtype == DType::F32 {
                None
            } else {
                Some(ctx.zeros(&shape, DType::F32)?)
            });
        }
        Ok(Results { outs, temps })
    }
    /// The f32 buffer kernels write result `i` to.
    fn f32_ref(&self, i: usize) -> GpuRef<'_> {
        self.temps[i].as_ref().unwrap_or(&self.outs[i]).as_ref()
    }
    /// Record the rounding of every temporary into its half output.
    fn cast<'a>(&'a self, ctx: &'a WgpuContext, p: &Efla, launch: &mut Launch<'a>) -> Result<()> {
        for (out, tmp) in self.outs.iter().zip(&self.temps) {
            if let Some(tmp) = tmp {
                cast(ctx, launch, p.batch, &tmp.as_ref(), &out.as_ref())?;
            }
        }
        Ok(())
    }
}

/// Round `input` (f32) into `out` (f16 or bf16, same element count), `rows` rows at a time
/// within the binding limit.
fn cast<'a>(
    ctx: &'a WgpuContext,
    launch: &mut Launch<'a>,
    rows: usize,
    input: &GpuRef<'a>,
    out: &GpuRef<'a>,
) -> Result<()> {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct CastParams {
        n: u32,
        off_in: u32,
        off_out: u32,
        _p: u32,
    }
    let variant = if out.dtype == DType::BF16 {
        "BF16"
    } else {
        "HALF"
    };
    let pipe = ctx.pipeline("efla/cast.wgsl", "main", &[variant], &[])?;
    let row = input.len / rows;
    for (b0, nb) in ctx.row_groups(rows, &[(row * 4) as u64])? {
        let (bi, off_in) = ctx.bind(&input.rows(b0, nb, row))?;
        let (bo, off_out) = ctx.bind(&out.rows(b0, nb, row))?;
        let n = nb * row;
        let words = (off_out as usize + n - 1) / 2 - off_out as usize / 2 + 1;
        let params = CastParams {
            n: n as u32,
            off_in,
            off_out,
            _p: 0,
        };
        launch.dispatch(
            pipe.clone(),
            &params,
            vec![bi, bo],
            words.div_ceil(256) as u32,
        )?;
    }
    Ok(())
}

/// Input bindings of one group, with their element offsets.
struct Bound<'a> {
    b: Vec<(wgpu::BufferBinding<'a>, u32)>,
}

impl<'a> Bound<'a> {
    fn get(&self, i: usize) -> wgpu::BufferBinding<'a> {
        self.b[i].0.clone()
    }
    fn off(&self, i: usize) -> u32 {
        self.b[i].1
    }
}

/// Row lengths (elements per batch row) of the tensors of a problem.
struct Rows {
    qk: usize,
    v: usize,
    beta: usize,
    state: usize,
    start: usize,
}

impl Rows {
    fn new(p: &Efla) -> Self {
        Rows {
            qk: p.len * p.heads * p.key_dim,
            v: p.len * p.heads * p.value_dim,
            beta: p.len * p.heads,
            state: p.heads * p.key_dim * p.value_dim,
            start: p.len,
        }
    }
}

/// Bind `r`'s rows of group `g` (`row` elements per batch row), or the dummy when absent.
fn bind_rows<'a>(
    ctx: &'a WgpuContext,
    r: Option<&GpuRef<'a>>,
    g: &Group,
    row: usize,
) -> Result<(wgpu::BufferBinding<'a>, u32)> {
    match r {
        Some(r) => ctx.bind(&r.rows(g.b0, g.nb, row)),
        None => ctx.bind_opt(None),
    }
}

/// Record a sequential kernel as one dispatch per `(begin, end)` segment, in the order given.
fn by_segment<'a>(
    launch: &mut Launch<'a>,
    pipe: Arc<wgpu::ComputePipeline>,
    mut pr: Params,
    bufs: Vec<wgpu::BufferBinding<'a>>,
    count: u32,
    segs: &[(u32, u32)],
) -> Result<()> {
    for &(b, e) in segs {
        pr.t_begin = b;
        pr.t_end = e;
        launch.dispatch(pipe.clone(), &pr, bufs.clone(), count)?;
    }
    Ok(())
}

/// The recurrent kernels' pipeline constant: rows of S per lane.
fn rows_k(p: &Efla) -> [(&'static str, f64); 1] {
    [("R", p.key_dim.div_ceil(8) as f64)]
}

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &Efla,
    inp: &EflaInputs<GpuRef<'_>>,
) -> Result<EflaOutputs<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let pl = Plan::new(ctx, p, false, inp.start.is_some())?;
    let res = Results::new(ctx, p, &[Arg::O])?;
    let sf = ctx.result(&p.spec(Arg::SFinal).shape, DType::F32)?;
    let scratch = ctx.zeros(&[pl.scratch.max(1)], DType::F32)?;
    let rows = Rows::new(p);
    let mut launch = ctx.launch("efla forward");
    let (o32, sfr, scr) = (res.f32_ref(0), sf.as_ref(), scratch.as_ref());
    let mut base = 0;
    if inp.s0.is_some() {
        base |= HAS_S0;
    }
    if inp.start.is_some() {
        base |= HAS_START;
    }
    for g in &pl.groups {
        let bd = Bound {
            b: vec![
                bind_rows(ctx, Some(&inp.q), g, rows.qk)?,
                bind_rows(ctx, Some(&inp.k), g, rows.qk)?,
                bind_rows(ctx, Some(&inp.v), g, rows.v)?,
                bind_rows(ctx, Some(&inp.beta), g, rows.beta)?,
                bind_rows(ctx, inp.s0.as_ref(), g, rows.state)?,
                bind_rows(ctx, inp.start.as_ref(), g, rows.start)?,
                bind_rows(ctx, Some(&o32), g, rows.v)?,
                bind_rows(ctx, Some(&sfr), g, rows.state)?,
                ctx.bind(&scr)?,
            ],
        };
        let (q, k, v, beta, s0, start, o, sfb, sc) = (0, 1, 2, 3, 4, 5, 6, 7, 8);
        let fill = |mut pr: Params| {
            pr.off_q = bd.off(q);
            pr.off_k = bd.off(k);
            pr.off_v = bd.off(v);
            pr.off_beta = bd.off(beta);
            pr.off_s0 = bd.off(s0);
            pr.off_start = bd.off(start);
            pr.off_o = bd.off(o);
            pr.off_st = bd.off(sfb);
            pr
        };
        let nbh = (g.nb * g.hg) as u32;
        match p.algorithm {
            Algorithm::Recurrent => {
                let nt = p.value_dim.div_ceil(32);
                let pr = fill(pl.params(p, g, base | WRITE_OUT, nt));
                let pipe = ctx.pipeline("efla/rec_fwd.wgsl", "main", &pl.rec, &rows_k(p))?;
                let bufs = [q, k, v, beta, s0, start, o, sfb].map(|i| bd.get(i));
                let segs = pl.segments(p.len, false);
                by_segment(&mut launch, pipe, pr, bufs.to_vec(), nbh * nt as u32, &segs)?;
            }
            Algorithm::Chunked { .. } => {
                chunk_prep(
                    ctx,
                    &mut launch,
                    p,
                    &pl,
                    g,
                    &bd,
                    base,
                    [q, k, v, beta, start, sc],
                )?;
                let nt = p.value_dim.div_ceil(64);
                let pr = fill(pl.params(p, g, base | WRITE_OUT, nt));
                let pipe = ctx.pipeline("efla/ck_state.wgsl", "main", &pl.storage, &[])?;
                let bufs = [q, k, start, s0, sc, sfb, o].map(|i| bd.get(i));
                let segs = pl.segments(pl.nc, false);
                by_segment(&mut launch, pipe, pr, bufs.to_vec(), nbh * nt as u32, &segs)?;
            }
        }
    }
    res.cast(ctx, p, &mut launch)?;
    launch.submit()?;
    let mut outs = res.outs;
    Ok(EflaOutputs {
        o: outs.remove(0),
        s_final: sf,
    })
}

/// Record the state-independent chunk kernels (Gram, solve, WY) of one group. `ix` are the
/// indices in `bd` of q, k, v, beta, start and the scratch buffer.
#[allow(clippy::too_many_arguments)]
fn chunk_prep<'a>(
    ctx: &'a WgpuContext,
    launch: &mut Launch<'a>,
    p: &Efla,
    pl: &Plan,
    g: &Group,
    bd: &Bound<'a>,
    base: u32,
    ix: [usize; 6],
) -> Result<()> {
    let [q, k, v, beta, start, sc] = ix;
    let nbh = (g.nb * g.hg) as u32;
    let nc = pl.nc as u32;
    let fill = |mut pr: Params| {
        pr.off_q = bd.off(q);
        pr.off_k = bd.off(k);
        pr.off_v = bd.off(v);
        pr.off_beta = bd.off(beta);
        pr.off_start = bd.off(start);
        pr
    };
    let pr = fill(pl.params(p, g, base, 1));
    let pipe = ctx.pipeline("efla/ck_gram.wgsl", "main", &pl.storage, &[])?;
    let bufs = [q, k, beta, start, sc].map(|i| bd.get(i));
    launch.dispatch(pipe, &pr, bufs.to_vec(), nbh * nc)?;
    let pipe = ctx.pipeline("efla/ck_solve.wgsl", "main", &[], &[])?;
    launch.dispatch(pipe, &pr, vec![bd.get(start), bd.get(sc)], nbh * nc)?;
    let nt = p.key_dim.div_ceil(64) + p.value_dim.div_ceil(64);
    let pr = fill(pl.params(p, g, base, nt));
    let pipe = ctx.pipeline("efla/ck_wy.wgsl", "main", &pl.storage, &[])?;
    let bufs = [k, v, start, sc].map(|i| bd.get(i));
    launch.dispatch(pipe, &pr, bufs.to_vec(), nbh * nc * nt as u32)?;
    Ok(())
}

/// Backward pass on the caller's buffers.
pub fn backward(
    ctx: &WgpuContext,
    p: &Efla,
    inp: &EflaBackwardInputs<GpuRef<'_>>,
) -> Result<EflaGrads<GpuTensor>> {
    p.validate()?;
    inp.check(p)?;
    let pl = Plan::new(ctx, p, true, inp.start.is_some())?;
    let res = Results::new(ctx, p, &[Arg::Dq, Arg::Dk, Arg::Dv, Arg::Dbeta])?;
    let ds0 = ctx.result(&p.spec(Arg::Ds0).shape, DType::F32)?;
    let scratch = ctx.zeros(&[pl.scratch.max(1)], DType::F32)?;
    let st = ctx.zeros(&[(pl.nbh * pl.slots).max(1)], DType::F32)?;
    let dst = ctx.zeros(&[(pl.nbh * pl.slots).max(1)], DType::F32)?;
    let rows = Rows::new(p);
    let mut launch = ctx.launch("efla backward");
    let (scr, str_, dstr, ds0r) = (scratch.as_ref(), st.as_ref(), dst.as_ref(), ds0.as_ref());
    let (dq, dk, dv, dbeta) = (
        res.f32_ref(0),
        res.f32_ref(1),
        res.f32_ref(2),
        res.f32_ref(3),
    );
    let mut base = 0;
    if inp.s0.is_some() {
        base |= HAS_S0;
    }
    if inp.start.is_some() {
        base |= HAS_START;
    }
    if inp.grad_final.is_some() {
        base |= HAS_GF;
    }
    for g in &pl.groups {
        let bd = Bound {
            b: vec![
                bind_rows(ctx, Some(&inp.q), g, rows.qk)?,
                bind_rows(ctx, Some(&inp.k), g, rows.qk)?,
                bind_rows(ctx, Some(&inp.v), g, rows.v)?,
                bind_rows(ctx, Some(&inp.beta), g, rows.beta)?,
                bind_rows(ctx, inp.s0.as_ref(), g, rows.state)?,
                bind_rows(ctx, inp.start.as_ref(), g, rows.start)?,
                bind_rows(ctx, Some(&inp.grad_o), g, rows.v)?,
                bind_rows(ctx, inp.grad_final.as_ref(), g, rows.state)?,
                ctx.bind(&scr)?,
                ctx.bind(&str_)?,
                ctx.bind(&dstr)?,
                bind_rows(ctx, Some(&ds0r), g, rows.state)?,
                bind_rows(ctx, Some(&dq), g, rows.qk)?,
                bind_rows(ctx, Some(&dk), g, rows.qk)?,
                bind_rows(ctx, Some(&dv), g, rows.v)?,
                bind_rows(ctx, Some(&dbeta), g, rows.beta)?,
            ],
        };
        let (q, k, v, beta, s0, start, go, gf, sc) = (0, 1, 2, 3, 4, 5, 6, 7, 8);
        let (stb, dstb, ds0b, dqb, dkb, dvb, dbb) = (9, 10, 11, 12, 13, 14, 15);
        let fill = |mut pr: Params| {
            pr.off_q = bd.off(q);
            pr.off_k = bd.off(k);
            pr.off_v = bd.off(v);
            pr.off_beta = bd.off(beta);
            pr.off_s0 = bd.off(s0);
            pr.off_start = bd.off(start);
            pr.off_go = bd.off(go);
            pr.off_gf = bd.off(gf);
            pr.off_ds0 = bd.off(ds0b);
            pr.off_dq = bd.off(dqb);
            pr.off_dk = bd.off(dkb);
            pr.off_dv = bd.off(dvb);
            pr.off_dbeta = bd.off(dbb);
            pr.off_st = bd.off(stb);
            pr.off_dst = bd.off(dstb);
            pr
        };
        let nbh = (g.nb * g.hg) as u32;
        let nc = pl.nc as u32;
        let bufs = |ix: &[usize]| ix.iter().map(|&i| bd.get(i)).collect::<Vec<_>>();
        match p.algorithm {
            Algorithm::Recurrent => {
                let ntv = p.value_dim.div_ceil(32);
                let ntk = p.key_dim.div_ceil(32);
                // 1: u and the coefficients
                let pr = fill(pl.params(p, g, base, ntv));
                let pipe = ctx.pipeline("efla/rec_fwd.wgsl", "main", &pl.rec, &rows_k(p))?;
                let b = bufs(&[q, k, v, beta, s0, start, sc, sc]);
                let (fw, rv) = (pl.segments(p.len, false), pl.segments(p.len, true));
                by_segment(&mut launch, pipe, pr, b, nbh * ntv as u32, &fw)?;
                // 2: dS column by column: w and ds0
                let pipe = ctx.pipeline("efla/rec_bwd_cols.wgsl", "main", &pl.rec, &rows_k(p))?;
                let b = bufs(&[q, k, go, start, gf, sc, ds0b]);
                by_segment(&mut launch, pipe, pr, b, nbh * ntv as u32, &rv)?;
                // 3: row by row: dq (forward half), then dk, dv, dbeta (reverse half)
                // (two variants, so each binds at most WebGPU's default 8 storage buffers)
                let rv_cols = [("RV", p.value_dim.div_ceil(8) as f64)];
                let pipe = ctx.pipeline("efla/rec_bwd_rows.wgsl", "main", &pl.rec, &rv_cols)?;
                let b = bufs(&[k, go, start, sc, s0, gf, dqb]);
                let pr = fill(pl.params(p, g, base, ntk));
                by_segment(&mut launch, pipe, pr, b, nbh * ntk as u32, &fw)?;
                let mut reverse = pl.rec.clone();
                reverse.push("REVERSE");
                let pipe = ctx.pipeline("efla/rec_bwd_rows.wgsl", "main", &reverse, &rv_cols)?;
                let b = bufs(&[k, go, start, sc, q, dkb, dvb, dbb]);
                let pr = fill(pl.params(p, g, base, ntk));
                by_segment(&mut launch, pipe, pr, b, nbh * ntk as u32, &rv)?;
            }
            Algorithm::Chunked { .. } => {
                chunk_prep(
                    ctx,
                    &mut launch,
                    p,
                    &pl,
                    g,
                    &bd,
                    base,
                    [q, k, v, beta, start, sc],
                )?;
                let ntv = p.value_dim.div_ceil(64);
                let ntk = p.key_dim.div_ceil(64);
                // forward state pass, keeping each chunk's incoming state
                let pr = fill(pl.params(p, g, base | ST_SLOTS, ntv));
                let pipe = ctx.pipeline("efla/ck_state.wgsl", "main", &pl.storage, &[])?;
                let b = bufs(&[q, k, start, s0, sc, stb, sc]);
                let (fw, rv) = (pl.segments(pl.nc, false), pl.segments(pl.nc, true));
                by_segment(&mut launch, pipe, pr, b, nbh * ntv as u32, &fw)?;
                // reverse state pass: d(delta), dS_end per chunk, ds0
                let pipe = ctx.pipeline("efla/ck_dstate.wgsl", "main", &pl.storage, &[])?;
                let b = bufs(&[q, k, go, start, gf, sc, dstb, ds0b]);
                by_segment(&mut launch, pipe, pr, b, nbh * ntv as u32, &rv)?;
                // products with the states
                let pr = fill(pl.params(p, g, base, ntk));
                let pipe = ctx.pipeline("efla/ck_dsk.wgsl", "main", &pl.storage, &[])?;
                let b = bufs(&[go, start, sc, stb, dstb]);
                launch.dispatch(pipe, &pr, b, nbh * nc * ntk as u32)?;
                // C x C gradients, then through the inverse
                let pr = fill(pl.params(p, g, base, 1));
                let pipe = ctx.pipeline("efla/ck_dcc.wgsl", "main", &pl.storage, &[])?;
                let b = bufs(&[k, v, go, start, sc]);
                launch.dispatch(pipe, &pr, b, nbh * nc)?;
                let pipe = ctx.pipeline("efla/ck_dinv.wgsl", "main", &[], &[])?;
                launch.dispatch(pipe, &pr, bufs(&[start, sc]), nbh * nc)?;
                // input gradients
                let nt = 2 * ntk + ntv;
                let pr = fill(pl.params(p, g, base, nt));
                let pipe = ctx.pipeline("efla/ck_dout.wgsl", "main", &pl.storage, &[])?;
                let b = bufs(&[q, k, sc, dqb, dkb, dvb, dbb, start]);
                launch.dispatch(pipe, &pr, b, nbh * nc * nt as u32)?;
            }
        }
    }
    res.cast(ctx, p, &mut launch)?;
    launch.submit()?;
    let mut outs = res.outs.into_iter();
    let mut next = || outs.next().expect("four results");
    Ok(EflaGrads {
        dq: next(),
        dk: next(),
        dv: next(),
        dbeta: next(),
        ds0,
    })
}
