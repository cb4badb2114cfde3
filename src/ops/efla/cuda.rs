//! Launch code for the CUDA EFLA / delta rule (`kernels/efla/`).
//!
//! **Recurrent** (`recurrent.cu`): the forward (and the decode path, `T = 1` on a carried
//! state) is one launch, one block per (batch row, head, 32 columns of `S`). The backward is
//! three passes that store no state per step: the forward again, saving `u_t = v_t - P^T k_t`
//! and the step coefficients; the reverse recurrence of `dS` column by column, saving
//! `w_t = dS_t^T k_t` and giving `ds0`; then both remaining recurrences row by row for `dq`,
//! `dk`, `dv`, `dbeta`.
//!
//! **Chunked**: see [`chunked`](self#chunked).
//!
//! Every kernel writes its results in their final dtype (no separate rounding pass). All
//! arithmetic is f32 (the recurrent kernels) or f32-accumulated tensor-core products of split
//! bf16 operands (the chunked ones, `kernels/efla/tc.cuh`).

use super::{Algorithm, Arg, Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs, Rule};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{int, push_opt, CuRef, CuTensor, CudaBackend, NULL};
use crate::tensor::DType;
use cudarc::driver::{DeviceRepr, PushKernelArg};

const REC: &str = "efla/recurrent.cu";
const SELFTEST: &str = "efla/tc_selftest.cu";

const HAS_S0: u32 = 1;
const HAS_START: u32 = 2;
const RULE_EFLA: u32 = 4;
const HAS_GF: u32 = 8;
const WRITE_OUT: u32 = 16;
const REVERSE_PART: u32 = 64;

/// Threads per block of the recurrent kernels.
const REC_THREADS: u32 = 256;

/// The sizes every kernel takes by value (`efla::Dims` in `kernels/efla/efla.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Dims {
    b: i32,
    t: i32,
    h: i32,
    k: i32,
    v: i32,
    c: i32,
    nc: i32,
    scale: f32,
    flags: u32,
}

// SAFETY: nine 4-byte plain-old-data fields in the order and layout of the C struct
// `efla::Dims` (kernels/efla/efla.cuh); no padding, no pointers.
unsafe impl DeviceRepr for Dims {}

impl Dims {
    fn new(p: &Efla, chunk: usize, flags: u32) -> Result<Self> {
        let mut flags = flags;
        if p.rule == Rule::Efla {
            flags |= RULE_EFLA;
        }
        // every index the kernels form in 32 bits stays below these products
        int("batch * heads * len", p.batch * p.heads * p.len)?;
        int(
            "batch * heads * key_dim * value_dim",
            p.batch * p.heads * p.key_dim * p.value_dim,
        )?;
        Ok(Dims {
            b: int("batch", p.batch)?,
            t: int("len", p.len)?,
            h: int("heads", p.heads)?,
            k: int("key_dim", p.key_dim)?,
            v: int("value_dim", p.value_dim)?,
            c: int("chunk", chunk)?,
            nc: int("chunks", p.len.div_ceil(chunk))?,
            scale: p.scale_value(),
            flags,
        })
    }
}

/// Kernel-name suffix of a storage dtype.
fn suffix(dt: DType) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::value("dtype", "f32, f16 or bf16", other)),
    }
}

/// The register-array variant (values per lane) of the recurrent kernels for `n` rows or
/// columns spread over 8 lanes: 4, 8, 16 or 32.
fn lanes_variant(n: usize) -> usize {
    n.div_ceil(8).next_power_of_two().max(4)
}

fn input_flags(s0: bool, start: bool) -> u32 {
    let mut f = 0;
    if s0 {
        f |= HAS_S0;
    }
    if start {
        f |= HAS_START;
    }
    f
}

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaInputs<CuRef<'_>>,
) -> Result<EflaOutputs<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let flags = input_flags(inp.s0.is_some(), inp.start.is_some());
    match p.algorithm {
        Algorithm::Recurrent => rec_forward(be, p, inp, flags),
        Algorithm::Chunked { chunk } => chunked::forward(be, p, inp, chunk, flags),
    }
}

/// Backward pass on the caller's device buffers.
pub fn backward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaBackwardInputs<CuRef<'_>>,
) -> Result<EflaGrads<CuTensor>> {
    p.validate()?;
    inp.check(p)?;
    be.check_args(inp)?;
    let mut flags = input_flags(inp.s0.is_some(), inp.start.is_some());
    if inp.grad_final.is_some() {
        flags |= HAS_GF;
    }
    match p.algorithm {
        Algorithm::Recurrent => rec_backward(be, p, inp, flags),
        Algorithm::Chunked { chunk } => chunked::backward(be, p, inp, chunk, flags),
    }
}

// ------------------------------------------------------------------ recurrent

/// Shared memory of `efla_rec_fwd` / `efla_rec_bwd_cols`: a `K x 33` f32 staging tile.
fn rec_smem(p: &Efla) -> usize {
    p.key_dim * 33 * 4
}

fn rec_forward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaInputs<CuRef<'_>>,
    flags: u32,
) -> Result<EflaOutputs<CuTensor>> {
    let d = Dims::new(p, 1, flags | WRITE_OUT)?;
    let name = format!(
        "efla_rec_fwd_{}_r{}",
        suffix(p.dtype)?,
        lanes_variant(p.key_dim)
    );
    let smem = rec_smem(p);
    let f = be.function_smem(REC, &name, smem)?;
    let mut o = be.zeros(&p.spec(Arg::O).shape, p.dtype)?;
    let mut sf = be.zeros(&p.spec(Arg::SFinal).shape, DType::F32)?;
    let blocks = (p.batch * p.heads * p.value_dim.div_ceil(32)) as u64;
    let cfg = be.grid(blocks, REC_THREADS, smem as u32)?;
    let mut b = be.stream.launch_builder(&f);
    inp.q.push(&mut b);
    inp.k.push(&mut b);
    inp.v.push(&mut b);
    inp.beta.push(&mut b);
    push_opt(&mut b, inp.s0.as_ref());
    push_opt(&mut b, inp.start.as_ref());
    o.push_mut(&mut b);
    sf.push_mut(&mut b);
    b.arg(&NULL).arg(&NULL).arg(&d);
    // SAFETY: the parameters follow `efla_rec_fwd_*` (recurrent.cu) in order and type: q, k, v,
    // beta and o in the storage dtype `p.dtype` (the name's suffix), s0 and s_final f32, start
    // u8, the unused u/coef scratch null (only read without WRITE_OUT, which is set), then
    // Dims. `check` verified every input holds exactly its shape's elements; o and s_final are
    // allocated from their shapes. Blocks past B * H * ceil(V / 32) return, columns past V and
    // rows past K are masked, the state tile uses K * 33 floats of the `smem` bytes given.
    unsafe { be.run(b, cfg) }?;
    Ok(EflaOutputs { o, s_final: sf })
}

fn rec_backward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaBackwardInputs<CuRef<'_>>,
    flags: u32,
) -> Result<EflaGrads<CuTensor>> {
    let sfx = suffix(p.dtype)?;
    let (bh, tn, kd, vd) = (p.batch * p.heads, p.len, p.key_dim, p.value_dim);
    let mut u = be.zeros(&[bh * tn * vd], DType::F32)?;
    let mut w = be.zeros(&[bh * tn * vd], DType::F32)?;
    let mut coef = be.zeros(&[bh * tn * 4], DType::F32)?;
    let mut dka = be.zeros(&[bh * tn * kd], DType::F32)?;
    let mut dq = be.zeros(&p.spec(Arg::Dq).shape, p.dtype)?;
    let mut dk = be.zeros(&p.spec(Arg::Dk).shape, p.dtype)?;
    let mut dv = be.zeros(&p.spec(Arg::Dv).shape, p.dtype)?;
    let mut dbeta = be.zeros(&p.spec(Arg::Dbeta).shape, p.dtype)?;
    let mut ds0 = be.zeros(&p.spec(Arg::Ds0).shape, DType::F32)?;
    let smem = rec_smem(p);
    let rk = lanes_variant(kd);
    let col_blocks = (bh * vd.div_ceil(32)) as u64;
    let row_blocks = (bh * kd.div_ceil(32)) as u64;

    // 1: u and the coefficients
    {
        let d = Dims::new(p, 1, flags & !HAS_GF)?;
        let f = be.function_smem(REC, &format!("efla_rec_fwd_{sfx}_r{rk}"), smem)?;
        let cfg = be.grid(col_blocks, REC_THREADS, smem as u32)?;
        let mut b = be.stream.launch_builder(&f);
        inp.q.push(&mut b);
        inp.k.push(&mut b);
        inp.v.push(&mut b);
        inp.beta.push(&mut b);
        push_opt(&mut b, inp.s0.as_ref());
        push_opt(&mut b, inp.start.as_ref());
        b.arg(&NULL).arg(&NULL);
        u.push_mut(&mut b);
        coef.push_mut(&mut b);
        b.arg(&d);
        // SAFETY: `efla_rec_fwd_*` parameters in order; without WRITE_OUT it writes u
        // ([B*H, T, V] f32, allocated so) and coef ([B*H, T, 4]) instead of o and s_final (null,
        // never touched). Inputs were checked against their shapes; masking as in the forward.
        unsafe { be.run(b, cfg) }?;
    }
    // 2: dS column by column: w and ds0
    {
        let d = Dims::new(p, 1, flags)?;
        let f = be.function_smem(REC, &format!("efla_rec_bwd_cols_{sfx}_r{rk}"), smem)?;
        let cfg = be.grid(col_blocks, REC_THREADS, smem as u32)?;
        let mut b = be.stream.launch_builder(&f);
        inp.q.push(&mut b);
        inp.k.push(&mut b);
        inp.grad_o.push(&mut b);
        push_opt(&mut b, inp.start.as_ref());
        push_opt(&mut b, inp.grad_final.as_ref());
        let coef_r = coef.as_ref();
        coef_r.push(&mut b);
        w.push_mut(&mut b);
        ds0.push_mut(&mut b);
        b.arg(&d);
        // SAFETY: `efla_rec_bwd_cols_*` parameters in order (q, k, grad_o in the storage dtype,
        // start u8, grad_final / coef f32 read, w / ds0 f32 written); w is [B*H, T, V], ds0 and
        // grad_final [B, H, K, V], coef as written by pass 1; the same block and lane masking.
        unsafe { be.run(b, cfg) }?;
    }
    // 3: row by row, the forward half then the reverse half
    let rv = lanes_variant(vd);
    let f = be.function(REC, &format!("efla_rec_bwd_rows_{sfx}_r{rv}"))?;
    for half in [0, REVERSE_PART] {
        let d = Dims::new(p, 1, flags | half)?;
        let cfg = be.grid(row_blocks, REC_THREADS, 0)?;
        let (coef_r, u_r, w_r) = (coef.as_ref(), u.as_ref(), w.as_ref());
        let mut b = be.stream.launch_builder(&f);
        inp.q.push(&mut b);
        inp.k.push(&mut b);
        inp.grad_o.push(&mut b);
        push_opt(&mut b, inp.start.as_ref());
        push_opt(&mut b, inp.s0.as_ref());
        push_opt(&mut b, inp.grad_final.as_ref());
        coef_r.push(&mut b);
        u_r.push(&mut b);
        w_r.push(&mut b);
        dka.push_mut(&mut b);
        dq.push_mut(&mut b);
        dk.push_mut(&mut b);
        dv.push_mut(&mut b);
        dbeta.push_mut(&mut b);
        b.arg(&d);
        // SAFETY: `efla_rec_bwd_rows_*` parameters in order; dka is [B*H, T, K] f32, dq / dk
        // [B, T, H, K], dv [B, T, H, V], dbeta [B, T, H] in the storage dtype, all allocated
        // from those shapes; u, w, coef as written above. Blocks past B * H * ceil(K / 32)
        // return, rows past K and columns past V are masked; dv is written by threads < V.
        unsafe { be.run(b, cfg) }?;
    }
    Ok(EflaGrads {
        dq,
        dk,
        dv,
        dbeta,
        ds0,
    })
}

// ------------------------------------------------------------------ tensor-core self-test

/// Run `efla_tc_selftest` (`kernels/efla/tc_selftest.cu`) and check it against the PTX ISA's
/// fragment tables: hand-built mma fragments, the `ldmatrix` layouts with and without `.trans`,
/// the operand loaders of `tc.cuh`, the 3-plane bf16 split and a 3-plane product. On a GPU this
/// checks how linrec reads the ISA; on the emulator, the emulator. Returns a
/// [`Error::Device`] naming the first mismatches.
#[doc(hidden)]
pub fn tensor_core_selftest(be: &CudaBackend) -> Result<()> {
    let a: Vec<f32> = (0..256).map(|i| ((i * 7) % 9) as f32 - 4.0).collect();
    let bm: Vec<f32> = (0..256).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
    let x: Vec<f32> = (0..32)
        .map(|i| (i as f32 * 1.3).sin() * 10f32.powi(i % 7 - 3))
        .collect();
    let up = |v: &[f32]| be.upload(&crate::tensor::Tensor::new(vec![v.len()], v.to_vec())?);
    let (ta, tb, tx) = (up(&a)?, up(&bm)?, up(&x)?);
    let mut out = be.zeros(&[1632], DType::F32)?;
    let f = be.function(SELFTEST, "efla_tc_selftest")?;
    let cfg = be.grid(1, 32, 0)?;
    {
        let (ra, rb, rx) = (ta.as_ref(), tb.as_ref(), tx.as_ref());
        let mut b = be.stream.launch_builder(&f);
        ra.push(&mut b);
        rb.push(&mut b);
        rx.push(&mut b);
        out.push_mut(&mut b);
        // SAFETY: efla_tc_selftest(const float* a [256], const float* b [256], const float*
        // x [32], float* out [1632]): one warp, every index below those sizes.
        unsafe { be.run(b, cfg) }?;
    }
    let o = be.download(&out)?.to_f32_vec();
    let mut bad = Vec::new();
    let mut expect = |what: &str, i: usize, want: f64, tol: f64| {
        let got = o[i] as f64;
        if (got - want).abs() > tol * want.abs().max(1.0) && bad.len() < 8 {
            bad.push(format!("{what}: out[{i}] = {got}, expected {want}"));
        }
    };
    let s = 1.0 + 2f64.powi(-9) + 2f64.powi(-18);
    for r in 0..16 {
        for c in 0..16 {
            let ab: f64 = (0..16)
                .map(|k| a[r * 16 + k] as f64 * bm[k * 16 + c] as f64)
                .sum();
            for (base, what) in [
                (0, "hand-built fragments"),
                (256, "ldmatrix"),
                (512, "ldmatrix.trans"),
            ] {
                expect(what, base + r * 16 + c, ab, 0.0);
            }
            expect("3-plane product", 1376 + r * 16 + c, ab * s * s, 1e-6);
        }
    }
    for l in 0..32usize {
        for i in 0..4usize {
            for h in 0..2usize {
                let plain = ((8 * i + l / 4) * 8 + 2 * (l % 4) + h) as f64;
                let trans = ((8 * i + 2 * (l % 4) + h) * 8 + l / 4) as f64;
                expect("ldmatrix.x4 layout", 768 + 8 * l + 2 * i + h, plain, 0.0);
                expect(
                    "ldmatrix.x4.trans layout",
                    1024 + 8 * l + 2 * i + h,
                    trans,
                    0.0,
                );
            }
        }
    }
    for (i, &xi) in x.iter().enumerate() {
        let sum = o[1280 + 3 * i] as f64 + o[1281 + 3 * i] as f64 + o[1282 + 3 * i] as f64;
        if sum != xi as f64 && bad.len() < 8 {
            bad.push(format!("3-plane split of {xi}: planes sum to {sum}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Device {
            backend: "cuda",
            what: format!("tensor-core self-test: {}", bad.join("; ")),
        })
    }
}

mod chunked {
    //! The chunked WY pipeline (`chunk_prep.cu`, `chunk_state.cu`, `chunk_grads.cu`; the math
    //! and the precision rules are in `kernels/efla/chunk.cuh`).
    //!
    //! Forward: `efla_ck_prep` (per chunk, all chunks in parallel: Gram and `Q K^T` on the tensor
    //! cores, coefficients, masks, the triangular inverse `X`), then `efla_ck_state` (per batch
    //! row, head and 32 columns of `S`, chunks in order, the state in registers: `R`, `delta`,
    //! the outputs and the state update on the tensor cores).
    //!
    //! Backward: `efla_ck_prep` again (keeping `Gm`), `efla_ck_state` writing each chunk's
    //! incoming state and `delta`, `R` instead of outputs, `efla_ck_dstate` (the reverse state
    //! pass: `d(delta)`, `dv`, each chunk's `dS_end`, `ds0`), then `efla_ck_grads` (per chunk,
    //! in parallel: `dq`, `dk`, `dbeta`). States are recomputed per chunk, never stored per step.
    use super::*;

    const PREP: &str = "efla/chunk_prep.cu";
    const STATE: &str = "efla/chunk_state.cu";
    const GRADS: &str = "efla/chunk_grads.cu";

    /// Elements of one bf16 plane of a 64 x 64 tile (row stride 72); bytes of a 64 x 65 f32
    /// tile (`kernels/efla/chunk.cuh`).
    const ACC: usize = 64 * 72;
    const F32T: usize = 64 * 65 * 4;

    /// Per storage dtype (`Prec<S>` in `kernels/efla/chunk.cuh`): bf16 planes of storage
    /// inputs, of state-side intermediates and of output-side ones; columns of `S` per block of
    /// the state passes (`VT`) and of `V` per staged block of the gradients (`VB`); whether the
    /// state pass stages `Pm` into `Q`'s buffer.
    struct Tiles {
        pi: usize,
        px: usize,
        po: usize,
        vt: usize,
        vb: usize,
        alias_pm: bool,
    }

    fn tiles(dt: DType) -> Tiles {
        match dt {
            DType::BF16 => Tiles {
                pi: 1,
                px: 2,
                po: 1,
                vt: 32,
                vb: 32,
                alias_pm: false,
            },
            DType::F16 => Tiles {
                pi: 2,
                px: 2,
                po: 1,
                vt: 32,
                vb: 32,
                alias_pm: false,
            },
            _ => Tiles {
                pi: 3,
                px: 3,
                po: 3,
                vt: 16,
                vb: 16,
                alias_pm: true,
            },
        }
    }

    /// Row stride of a tile of `cols` columns (`tc::ld_for`).
    fn ld_for(cols: usize) -> usize {
        cols.div_ceil(16) * 16 + 8
    }

    /// Storage of the intermediates only output-side products read (`Prec<S>::IT`).
    fn it_dtype(dt: DType) -> DType {
        if dt == DType::F32 {
            DType::F32
        } else {
            DType::BF16
        }
    }

    /// The key-dimension variant of the state passes: 64, 128 or 256 rows of `S` per block.
    fn km(k: usize) -> usize {
        k.next_power_of_two().max(64)
    }

    // Dynamic shared memory of each kernel, in the order the kernels carve it.
    fn prep_smem(dt: DType) -> usize {
        2 * (2 * tiles(dt).pi * ACC) + 2 * F32T + 4 * 64 * 5
    }
    fn state_smem(dt: DType, km: usize) -> usize {
        let t = tiles(dt);
        let (ldv, rv) = (ld_for(t.vt), 64 * ld_for(t.vt));
        let pm = if t.alias_pm { 0 } else { t.po * ACC };
        2 * (t.pi * ACC
            + t.po * ACC
            + t.px * km * ldv
            + t.px * ACC
            + pm
            + 2 * t.px * rv
            + t.po * rv)
            + seg_smem(t.vt)
    }
    fn dstate_smem(dt: DType, km: usize) -> usize {
        let t = tiles(dt);
        let (ldv, rv) = (ld_for(t.vt), 64 * ld_for(t.vt));
        2 * (t.pi * ACC + t.px * km * ldv + 2 * t.px * ACC + t.pi * rv + 2 * t.px * rv)
            + seg_smem(t.vt)
    }
    /// The state passes' per-step arrays: cf, ef, alpha (f32), seg (i32), the segments' row
    /// masks (u64) and two masks of non-finite entries, one u64 per column of `vt`.
    fn seg_smem(vt: usize) -> usize {
        4 * 64 * 4 + 8 * 64 + 2 * 8 * vt
    }
    fn grads_smem(dt: DType) -> usize {
        let t = tiles(dt);
        let rb = 64 * ld_for(t.vb);
        let staging = 2 * (5 * t.po * rb + 2 * t.po * ACC);
        let inverse = 2 * F32T + 2 * 2 * t.po * ACC;
        // 7 per-step f32/i32 arrays, the segments' row masks and the masks of non-finite K, Q,
        // N and dX
        2 * (2 * t.po * ACC) + 4 * 64 * 7 + 8 * 64 * 5 + staging.max(inverse)
    }

    /// Per-chunk scratch: coefficients `[B*H, T, 4]` and the `C x C` matrices `[B*H, NC, C, C]`.
    struct Prep {
        coef: CuTensor,
        x: CuTensor,
        pm: CuTensor,
        gm: Option<CuTensor>,
    }

    /// `qkb`: q, k and beta.
    fn prep(
        be: &CudaBackend,
        p: &Efla,
        qkb: [&CuRef<'_>; 3],
        start: Option<&CuRef<'_>>,
        d: &Dims,
        keep_gm: bool,
    ) -> Result<Prep> {
        let bh = p.batch * p.heads;
        let (c, nc) = (d.c as usize, d.nc as usize);
        let mut out = Prep {
            coef: be.zeros(&[bh * p.len * 4], DType::F32)?,
            x: be.zeros(&[bh * nc * c * c], DType::F32)?,
            pm: be.zeros(&[bh * nc * c * c], DType::F32)?,
            gm: if keep_gm {
                Some(be.zeros(&[bh * nc * c * c], DType::F32)?)
            } else {
                None
            },
        };
        let smem = prep_smem(p.dtype);
        let f = be.function_smem(PREP, &format!("efla_ck_prep_{}", suffix(p.dtype)?), smem)?;
        let cfg = be.grid((bh * nc) as u64, 128, smem as u32)?;
        let mut b = be.stream.launch_builder(&f);
        for r in qkb {
            r.push(&mut b);
        }
        push_opt(&mut b, start);
        out.coef.push_mut(&mut b);
        out.x.push_mut(&mut b);
        out.pm.push_mut(&mut b);
        match out.gm.as_mut() {
            Some(g) => g.push_mut(&mut b),
            None => {
                b.arg(&NULL);
            }
        }
        b.arg(d);
        // SAFETY: `efla_ck_prep_*` (chunk_prep.cu) takes q, k, beta (storage dtype, checked
        // against their shapes), start (u8 [B, T] or null with HAS_START clear), coef
        // [B*H, T, 4], X, Pm and Gm (or null) [B*H, NC, C, C] f32, allocated so above, and Dims.
        // Blocks past B*H*NC return; every index is below those sizes (rows and columns past the
        // chunk's end are masked); the kernel carves exactly `smem` bytes of shared memory
        // (checked by the emulator).
        unsafe { be.run(b, cfg) }?;
        Ok(out)
    }

    pub(super) fn forward(
        be: &CudaBackend,
        p: &Efla,
        inp: &EflaInputs<CuRef<'_>>,
        chunk: usize,
        flags: u32,
    ) -> Result<EflaOutputs<CuTensor>> {
        let d = Dims::new(p, chunk, flags | WRITE_OUT)?;
        let qkb = [&inp.q, &inp.k, &inp.beta];
        let pr = prep(be, p, qkb, inp.start.as_ref(), &d, false)?;
        let mut o = be.zeros(&p.spec(Arg::O).shape, p.dtype)?;
        let mut sf = be.zeros(&p.spec(Arg::SFinal).shape, DType::F32)?;
        let km = km(p.key_dim);
        let smem = state_smem(p.dtype, km);
        let name = format!("efla_ck_state_{}_k{km}", suffix(p.dtype)?);
        let f = be.function_smem(STATE, &name, smem)?;
        let blocks = (p.batch * p.heads * p.value_dim.div_ceil(tiles(p.dtype).vt)) as u64;
        let cfg = be.grid(blocks, 128, smem as u32)?;
        let (coef, x, pm) = (pr.coef.as_ref(), pr.x.as_ref(), pr.pm.as_ref());
        let mut b = be.stream.launch_builder(&f);
        inp.q.push(&mut b);
        inp.k.push(&mut b);
        inp.v.push(&mut b);
        push_opt(&mut b, inp.s0.as_ref());
        coef.push(&mut b);
        x.push(&mut b);
        pm.push(&mut b);
        o.push_mut(&mut b);
        sf.push_mut(&mut b);
        b.arg(&NULL).arg(&NULL).arg(&NULL).arg(&d);
        // SAFETY: `efla_ck_state_*_k{km}` (chunk_state.cu) parameters in order: q, k, v (storage
        // dtype, checked), s0 f32 [B, H, K, V] or null (HAS_S0), the prep results (coef also
        // carries the reset flags), o [B, T, H, V] (storage dtype) and s_final f32 allocated from their
        // shapes; with WRITE_OUT set the three checkpoint pointers (null) are never touched.
        // K <= km rows per block; blocks past B*H*ceil(V/VT) return, columns past V and rows
        // past K or the chunk's end are masked; `smem` bytes as the kernel carves them.
        unsafe { be.run(b, cfg) }?;
        Ok(EflaOutputs { o, s_final: sf })
    }

    pub(super) fn backward(
        be: &CudaBackend,
        p: &Efla,
        inp: &EflaBackwardInputs<CuRef<'_>>,
        chunk: usize,
        flags: u32,
    ) -> Result<EflaGrads<CuTensor>> {
        let d = Dims::new(p, chunk, flags)?;
        let qkb = [&inp.q, &inp.k, &inp.beta];
        let pr = prep(be, p, qkb, inp.start.as_ref(), &d, true)?;
        let (bh, tn, kd, vd) = (p.batch * p.heads, p.len, p.key_dim, p.value_dim);
        let nc = d.nc as usize;
        let it = it_dtype(p.dtype);
        let sfx = suffix(p.dtype)?;
        let km = km(kd);
        let blocks = (bh * vd.div_ceil(tiles(p.dtype).vt)) as u64;
        let mut ck_s = be.zeros(&[bh * nc * kd * vd], it)?;
        let mut ck_ds = be.zeros(&[bh * nc * kd * vd], it)?;
        let mut ck_delta = be.zeros(&[bh * tn * vd], it)?;
        let mut ck_r = be.zeros(&[bh * tn * vd], it)?;
        let mut ck_dd = be.zeros(&[bh * tn * vd], it)?;
        let mut ck_dr = be.zeros(&[bh * tn * vd], it)?;
        let mut dq = be.zeros(&p.spec(Arg::Dq).shape, p.dtype)?;
        let mut dk = be.zeros(&p.spec(Arg::Dk).shape, p.dtype)?;
        let mut dv = be.zeros(&p.spec(Arg::Dv).shape, p.dtype)?;
        let mut dbeta = be.zeros(&p.spec(Arg::Dbeta).shape, p.dtype)?;
        let mut ds0 = be.zeros(&p.spec(Arg::Ds0).shape, DType::F32)?;
        let (coef, x, pm) = (pr.coef.as_ref(), pr.x.as_ref(), pr.pm.as_ref());
        let gm = pr.gm.as_ref().expect("prep kept Gm").as_ref();
        // forward state pass: checkpoints
        {
            let smem = state_smem(p.dtype, km);
            let f = be.function_smem(STATE, &format!("efla_ck_state_{sfx}_k{km}"), smem)?;
            let cfg = be.grid(blocks, 128, smem as u32)?;
            let d = Dims::new(p, chunk, flags & !HAS_GF)?;
            let mut b = be.stream.launch_builder(&f);
            inp.q.push(&mut b);
            inp.k.push(&mut b);
            inp.v.push(&mut b);
            push_opt(&mut b, inp.s0.as_ref());
            coef.push(&mut b);
            x.push(&mut b);
            pm.push(&mut b);
            b.arg(&NULL).arg(&NULL);
            ck_s.push_mut(&mut b);
            ck_delta.push_mut(&mut b);
            ck_r.push_mut(&mut b);
            b.arg(&d);
            // SAFETY: as in the forward, without WRITE_OUT: o and s_final (null) are never
            // touched; the checkpoints S_in [B*H, NC, K, V] and delta, R [B*H, T, V] are in the
            // intermediate dtype `it` the kernel's `Prec<S>::IT` names, allocated so above.
            unsafe { be.run(b, cfg) }?;
        }
        // reverse state pass
        {
            let smem = dstate_smem(p.dtype, km);
            let f = be.function_smem(STATE, &format!("efla_ck_dstate_{sfx}_k{km}"), smem)?;
            let cfg = be.grid(blocks, 128, smem as u32)?;
            let mut b = be.stream.launch_builder(&f);
            inp.q.push(&mut b);
            inp.k.push(&mut b);
            inp.grad_o.push(&mut b);
            push_opt(&mut b, inp.grad_final.as_ref());
            coef.push(&mut b);
            x.push(&mut b);
            pm.push(&mut b);
            ck_ds.push_mut(&mut b);
            ck_dd.push_mut(&mut b);
            ck_dr.push_mut(&mut b);
            dv.push_mut(&mut b);
            ds0.push_mut(&mut b);
            b.arg(&d);
            // SAFETY: `efla_ck_dstate_*_k{km}` parameters in order: q, k, grad_o (storage dtype,
            // checked), grad_final f32 [B, H, K, V] or null (HAS_GF), the prep
            // results, the checkpoints dS_end [B*H, NC, K, V] and d(delta), dR [B*H, T, V] in
            // `it`, dv [B, T, H, V] (storage dtype) and ds0 f32, all allocated from those
            // shapes; masking and shared memory as in the forward state pass.
            unsafe { be.run(b, cfg) }?;
        }
        // input gradients, per chunk
        {
            let smem = grads_smem(p.dtype);
            let f = be.function_smem(GRADS, &format!("efla_ck_grads_{sfx}"), smem)?;
            let cfg = be.grid((bh * nc) as u64, 256, smem as u32)?;
            let (s, dsr, dl, r, dd, dr) = (
                ck_s.as_ref(),
                ck_ds.as_ref(),
                ck_delta.as_ref(),
                ck_r.as_ref(),
                ck_dd.as_ref(),
                ck_dr.as_ref(),
            );
            let mut b = be.stream.launch_builder(&f);
            inp.q.push(&mut b);
            inp.k.push(&mut b);
            inp.grad_o.push(&mut b);
            push_opt(&mut b, inp.start.as_ref());
            coef.push(&mut b);
            x.push(&mut b);
            gm.push(&mut b);
            for t in [&s, &dsr, &dl, &r, &dd, &dr] {
                t.push(&mut b);
            }
            dq.push_mut(&mut b);
            dk.push_mut(&mut b);
            dbeta.push_mut(&mut b);
            b.arg(&d);
            // SAFETY: `efla_ck_grads_*` parameters in order: q, k, grad_o (storage dtype,
            // checked), start or null, coef, X, Gm (prep, f32), the six checkpoints written
            // above (dtype `it`, sizes as allocated), dq, dk [B, T, H, K] and dbeta [B, T, H]
            // in the storage dtype. Blocks past B*H*NC return; rows past the chunk's end, keys
            // past K and columns past V are masked; `smem` bytes as the kernel carves them.
            unsafe { be.run(b, cfg) }?;
        }
        Ok(EflaGrads {
            dq,
            dk,
            dv,
            dbeta,
            ds0,
        })
    }
}
