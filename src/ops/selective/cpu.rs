//! Native CPU kernels of the selective scan (f32 state and accumulation; f16/bf16 storage is
//! widened once on entry and rounded once on exit).
//!
//! **Algorithm.** Each `(batch row, channel)` runs its recurrence sequentially in time, with the
//! `N` states of the channel in a contiguous array padded to a multiple of 8 lanes. One step
//! computes the `N` decays `exp(dt A[d][n])` with a branch-free polynomial exponential over
//! fixed 8-lane blocks (Cephes' `expf` polynomial, relative error at most 8.1e-8), updates the
//! states and forms `y_t` with an 8-lane accumulator summed in a fixed order; these loops
//! auto-vectorize, and on x86-64 CPUs with AVX2 they are compiled for AVX2 as well (chosen at
//! run time; no FMA, so the bits are the same either way). A reset *replaces* the carried state
//! (`h_t = dt Bm u`, a select rather than a multiply by zero), so a NaN or infinity before a
//! reset never reaches a later step.
//!
//! The backward sweeps each channel forward once, checkpointing the state every
//! [`CHECKPOINT`] steps, then walks the checkpoint intervals from the end: it recomputes the
//! interval's states with the very same step function as the forward (so it uses exactly the
//! values the forward used) and runs the adjoint recurrence over them. Scratch is
//! `ceil(T / 64) * N + 65 * N` f32 per channel; no per-step state of the whole sequence is kept.
//!
//! **Threading.** Work is split into pieces of fixed size: one batch row times a block of at
//! most [`BLOCK`] channels of one group (never a split by the number of threads). Each piece
//! owns its outputs (written to disjoint elements). Gradients of shared parameters (`dA`,
//! fixed `dBm`/`dCm`, `dDskip`, `ddelta_bias`) are kept per piece and summed over rows in row
//! order; input-dependent `dBm`/`dCm` are accumulated over a block's channels in channel order,
//! then summed over a group's blocks in block order. Results are therefore bitwise identical
//! whatever the number of threads.
//!
//! **Accuracy.** Against the f64 reference, measured by the tests: relative L2 error within
//! `1e-5` for outputs and `1e-4` for gradients with f32 storage up to `T = 4096`, and `1e-2` with
//! f16/bf16 storage; the shared-parameter gradients of ill-conditioned problems fall under the
//! measured exception of docs/conventions.md, as on the GPUs. `softplus` uses the standard
//! library's `exp`/`ln_1p` (and its derivative `e / (1 + e)` reuses that `e`).

// Index loops over fixed lanes read like the equations and vectorize.
#![allow(clippy::needless_range_loop)]

use super::{
    Arg, SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::Result;
use crate::ops::Problem;
use crate::runtime::cpu::{f32s, flags, opt_f32s, output, simd, DisjointOut as Out};
use crate::runtime::{HostFlags, HostFloats};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

/// Channels per piece of work (a piece never crosses a group).
pub const BLOCK: usize = 16;
/// Steps between the backward's state checkpoints.
pub const CHECKPOINT: usize = 64;
/// Lanes of the vectorized inner loops (states are padded to a multiple of this).
const L: usize = 8;
/// Largest padded state size.
const NMAX: usize = super::MAX_STATE;

/// `e^x` for 8 lanes, branch-free (Cephes' `expf` polynomial: relative error at most 8.1e-8
/// measured, under 1.4 ulp, wherever the result is a normal f32). Below `-87.3365` (a
/// subnormal result) it returns 0, above `88.7228` infinity, and it propagates NaN.
#[inline(always)]
fn exp8(x: [f32; L]) -> [f32; L] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.722_83;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let mut r = [0.0f32; L];
    for j in 0..L {
        let xv = x[j];
        let xc = xv.clamp(LO, HI);
        let km = xc * LOG2E + MAGIC;
        let kf = km - MAGIC;
        // k in [-126, 128]: 2^k as two factors, each a normal f32
        let k = km.to_bits() as i32 - MAGIC.to_bits() as i32;
        let (k1, k2) = (k >> 1, k - (k >> 1));
        let f = xc - kf * C1 - kf * C2;
        let mut p = 1.987_569_1e-4f32;
        p = p * f + 1.398_199_9e-3;
        p = p * f + 8.333_452e-3;
        p = p * f + 4.166_579_6e-2;
        p = p * f + 1.666_666_5e-1;
        p = p * f + 0.5;
        let e = p * f * f + f + 1.0;
        let v = e
            * f32::from_bits(((k1 + 127) << 23) as u32)
            * f32::from_bits(((k2 + 127) << 23) as u32);
        let v = if xv < LO { 0.0 } else { v };
        let v = if xv > HI { f32::INFINITY } else { v };
        r[j] = if xv.is_nan() { xv } else { v };
    }
    r
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `sum_n a[n] b[n]` over padded slices in a fixed order (8 lanes, then a fixed tree).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    for (ca, cb) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
        for j in 0..L {
            acc[j] += ca[j] * cb[j];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// One step of the recurrence over padded states: `dec = exp(dt a)`, `h = dec h + du bm`
/// (`h = du bm` on a reset, a select so nothing carries past it). Forward and backward share it.
#[inline(always)]
fn advance(h: &mut [f32], dec: &mut [f32], a: &[f32], bm: &[f32], dt: f32, du: f32, reset: bool) {
    for (((hc, dc), ac), bc) in h
        .chunks_exact_mut(L)
        .zip(dec.chunks_exact_mut(L))
        .zip(a.chunks_exact(L))
        .zip(bm.chunks_exact(L))
    {
        let mut x = [0.0f32; L];
        for j in 0..L {
            x[j] = dt * ac[j];
        }
        let e = exp8(x);
        if reset {
            for j in 0..L {
                dc[j] = 0.0;
                hc[j] = du * bc[j];
            }
        } else {
            for j in 0..L {
                dc[j] = e[j];
                hc[j] = e[j] * hc[j] + du * bc[j];
            }
        }
    }
}

/// The inputs as f32 slices, and index helpers.
struct Ctx<'a> {
    p: &'a SelectiveScan,
    np: usize,
    u: &'a [f32],
    delta: &'a [f32],
    a: &'a [f32],
    bm: &'a [f32],
    cm: &'a [f32],
    dskip: Option<&'a [f32]>,
    z: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    h0: Option<&'a [f32]>,
    start: Option<&'a [u8]>,
}

impl Ctx<'_> {
    /// `(dt, d dt / d delta)` at flat index `i` of channel `d` (the derivative is the
    /// sigmoid `e / (1 + e)` from the softplus's own `e = exp(x)`, and 1 above 20 or without
    /// softplus).
    #[inline(always)]
    fn dt(&self, i: usize, d: usize) -> (f32, f32) {
        let x = self.delta[i] + self.bias.map_or(0.0, |v| v[d]);
        if self.p.softplus && x <= 20.0 {
            let e = x.exp();
            (e.ln_1p(), e / (1.0 + e))
        } else {
            (x, 1.0)
        }
    }
    #[inline(always)]
    fn reset(&self, b: usize, t: usize) -> bool {
        self.start.is_some_and(|s| s[b * self.p.len + t] != 0)
    }
    /// Copy `Bm` (or `Cm`) of step `t` for group `g` into the padded `dst` (input-dependent).
    #[inline(always)]
    fn load_bc(&self, src: &[f32], b: usize, t: usize, g: usize, dst: &mut [f32]) {
        let ns = self.p.state;
        let o = ((b * self.p.len + t) * self.p.num_groups() + g) * ns;
        for (x, y) in dst[..ns].iter_mut().zip(&src[o..o + ns]) {
            *x = *y;
        }
    }
    /// Padded per-channel parameters: `A` row, and the fixed `Bm`/`Cm` rows when fixed.
    fn channel(&self, d: usize, a: &mut [f32], bm: &mut [f32], cm: &mut [f32]) {
        let ns = self.p.state;
        a[..ns].copy_from_slice(&self.a[d * ns..][..ns]);
        if !self.p.input_dependent() {
            bm[..ns].copy_from_slice(&self.bm[d * ns..][..ns]);
            cm[..ns].copy_from_slice(&self.cm[d * ns..][..ns]);
        }
    }
    fn h0(&self, b: usize, d: usize, h: &mut [f32]) {
        let ns = self.p.state;
        h.fill(0.0);
        if let Some(h0) = self.h0 {
            h[..ns].copy_from_slice(&h0[(b * self.p.dim + d) * ns..][..ns]);
        }
    }
    /// The number of pieces of work: rows times blocks of at most [`BLOCK`] channels that
    /// never cross a group.
    fn num_pieces(&self) -> usize {
        let dg = self.p.dim / self.p.num_groups();
        self.p.batch * self.p.num_groups() * dg.div_ceil(BLOCK)
    }
    /// Piece `i` (row-major: row, group, block): `(row, first channel, channel count)`.
    fn piece(&self, i: usize) -> (usize, usize, usize) {
        let g = self.p.num_groups();
        let dg = self.p.dim / g;
        let nb = dg.div_ceil(BLOCK);
        let (b, gi, blk) = (i / (g * nb), (i / nb) % g, i % nb);
        let d0 = gi * dg + blk * BLOCK;
        (b, d0, BLOCK.min((gi + 1) * dg - d0))
    }
}

macro_rules! ctx {
    ($p:expr, $args:expr, $u:ident, $delta:ident, $a:ident, $bm:ident, $cm:ident, $dskip:ident,
     $z:ident, $bias:ident, $h0:ident, $start:ident) => {
        let $u = f32s($args.u);
        let $delta = f32s($args.delta);
        let $a = f32s($args.a);
        let $bm = f32s($args.bm);
        let $cm = f32s($args.cm);
        let $dskip = opt_f32s($args.dskip);
        let $z = opt_f32s($args.z);
        let $bias = opt_f32s($args.delta_bias);
        let $h0 = opt_f32s($args.h0);
        let $start = flags($args.start);
    };
}

fn make_ctx<'a>(
    p: &'a SelectiveScan,
    parts: [&'a [f32]; 5],
    opts: [Option<&'a [f32]>; 4],
    start: Option<&'a [u8]>,
) -> Ctx<'a> {
    let [u, delta, a, bm, cm] = parts;
    let [dskip, z, bias, h0] = opts;
    Ctx {
        p,
        np: p.state.div_ceil(L) * L,
        u,
        delta,
        a,
        bm,
        cm,
        dskip,
        z,
        bias,
        h0,
        start,
    }
}

/// Forward pass on the CPU (see the [module docs](self)): linrec tensors, or f32 and flag
/// slices read in place ([`HostFloats`], [`HostFlags`]).
pub fn forward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &SelectiveScan,
    args: &SelectiveInputs<F, S>,
) -> Result<SelectiveOutputs<Tensor>> {
    ctx!(p, args, u, delta, a, bm, cm, dskip, z, bias, h0, start);
    let c = make_ctx(
        p,
        [&u, &delta, &a, &bm, &cm],
        [
            dskip.as_deref(),
            z.as_deref(),
            bias.as_deref(),
            h0.as_deref(),
        ],
        start.as_deref(),
    );
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let mut out = vec![0.0f32; bn * tn * dn];
    let mut hf = vec![0.0f32; bn * dn * ns];
    let (wo, wh) = (Out::new(&mut out), Out::new(&mut hf));
    (0..c.num_pieces()).into_par_iter().for_each(|i| {
        let (b, d0, cnt) = c.piece(i);
        // inlined into `simd`'s AVX2 copy (a closure that is not inlined there would be
        // compiled without it)
        simd(
            #[inline(always)]
            || {
                let np = c.np;
                let (mut av, mut bv, mut cv) = ([0.0f32; NMAX], [0.0f32; NMAX], [0.0f32; NMAX]);
                let (mut h, mut dec) = ([0.0f32; NMAX], [0.0f32; NMAX]);
                let gi = p.group_of(d0);
                for d in d0..d0 + cnt {
                    c.channel(d, &mut av, &mut bv, &mut cv);
                    c.h0(b, d, &mut h[..np]);
                    let ds = c.dskip.map_or(0.0, |v| v[d]);
                    for t in 0..tn {
                        let i = (b * tn + t) * dn + d;
                        let (dt, _) = c.dt(i, d);
                        let uu = c.u[i];
                        if p.input_dependent() {
                            c.load_bc(c.bm, b, t, gi, &mut bv);
                            c.load_bc(c.cm, b, t, gi, &mut cv);
                        }
                        let rs = c.reset(b, t);
                        advance(
                            &mut h[..np],
                            &mut dec[..np],
                            &av[..np],
                            &bv[..np],
                            dt,
                            dt * uu,
                            rs,
                        );
                        let y = dot(&cv[..np], &h[..np]) + ds * uu;
                        let o = match c.z {
                            Some(z) => y * (z[i] * sigmoid(z[i])),
                            None => y,
                        };
                        // SAFETY: an element of this piece's own (row, channel).
                        unsafe { wo.set(i, o) };
                    }
                    for n in 0..ns {
                        // SAFETY: an element of this piece's own (row, channel).
                        unsafe { wh.set((b * dn + d) * ns + n, h[n]) };
                    }
                }
            },
        )
    });
    Ok(SelectiveOutputs {
        out: output(vec![bn, tn, dn], out, p.dtype)?,
        h_final: output(vec![bn, dn, ns], hf, DType::F32)?,
    })
}

/// Backward pass on the CPU (see the [module docs](self)), on the same kinds of data as
/// [`forward`].
pub fn backward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &SelectiveScan,
    args: &SelectiveBackwardInputs<F, S>,
) -> Result<SelectiveGrads<Tensor>> {
    ctx!(p, args, u, delta, a, bm, cm, dskip, z, bias, h0, start);
    let go = f32s(args.grad_out);
    let gf = opt_f32s(args.grad_final);
    let c = make_ctx(
        p,
        [&u, &delta, &a, &bm, &cm],
        [
            dskip.as_deref(),
            z.as_deref(),
            bias.as_deref(),
            h0.as_deref(),
        ],
        start.as_deref(),
    );
    let (go, gf) = (&go[..], gf.as_deref());
    let (bn, tn, dn, ns, np) = (p.batch, p.len, p.dim, p.state, c.np);
    let dep = p.input_dependent();
    let seq_n = bn * tn * dn;
    let (mut du, mut ddelta, mut dz) = (
        vec![0.0f32; seq_n],
        vec![0.0f32; seq_n],
        vec![0.0f32; seq_n],
    );
    let mut dh0 = vec![0.0f32; bn * dn * ns];
    // per-row partials of the shared parameters' gradients
    let mut pda = vec![0.0f32; bn * dn * ns];
    let mut pbm = vec![0.0f32; if dep { 0 } else { bn * dn * ns }];
    let mut pcm = vec![0.0f32; if dep { 0 } else { bn * dn * ns }];
    let mut pds = vec![0.0f32; bn * dn];
    let mut pdb = vec![0.0f32; bn * dn];
    let w = [
        Out::new(&mut du),
        Out::new(&mut ddelta),
        Out::new(&mut dz),
        Out::new(&mut dh0),
        Out::new(&mut pda),
        Out::new(&mut pbm),
        Out::new(&mut pcm),
        Out::new(&mut pds),
        Out::new(&mut pdb),
    ];
    let ncp = tn.div_ceil(CHECKPOINT);
    // per piece (input-dependent only): dBm and dCm of the piece's group at every step, `[T, N]`
    let blocks: Vec<(Vec<f32>, Vec<f32>)> = (0..c.num_pieces())
        .into_par_iter()
        .map(|pi| {
            let (b, d0, cnt) = c.piece(pi);
            // inlined into `simd`'s AVX2 copy (a closure that is not inlined there would be
            // compiled without it)
            simd(
                #[inline(always)]
                || {
                    let [wdu, wdd, wdz, wdh0, wda, wbm, wcm, wds, wdb] = w;
                    let mut gbm = vec![0.0f32; if dep { tn * ns } else { 0 }];
                    let mut gcm = vec![0.0f32; if dep { tn * ns } else { 0 }];
                    let mut cps = vec![0.0f32; ncp * np];
                    let mut hs = vec![0.0f32; (CHECKPOINT + 1) * np];
                    let mut decs = vec![0.0f32; CHECKPOINT * np];
                    let mut ys = [0.0f32; CHECKPOINT];
                    let mut dts = [(0.0f32, 0.0f32); CHECKPOINT];
                    let (mut av, mut bv, mut cv) = ([0.0f32; NMAX], [0.0f32; NMAX], [0.0f32; NMAX]);
                    let (mut h, mut dec, mut hc, mut hh) = (
                        [0.0f32; NMAX],
                        [0.0f32; NMAX],
                        [0.0f32; NMAX],
                        [0.0f32; NMAX],
                    );
                    let (mut gda, mut gfb, mut gfc) =
                        ([0.0f32; NMAX], [0.0f32; NMAX], [0.0f32; NMAX]);
                    let gi = p.group_of(d0);
                    for d in d0..d0 + cnt {
                        c.channel(d, &mut av, &mut bv, &mut cv);
                        let ds = c.dskip.map_or(0.0, |v| v[d]);
                        // forward sweep, checkpointing the state entering every interval
                        c.h0(b, d, &mut h[..np]);
                        for t in 0..tn {
                            if t % CHECKPOINT == 0 {
                                cps[(t / CHECKPOINT) * np..][..np].copy_from_slice(&h[..np]);
                            }
                            let i = (b * tn + t) * dn + d;
                            let (dt, _) = c.dt(i, d);
                            if dep {
                                c.load_bc(c.bm, b, t, gi, &mut bv);
                            }
                            let rs = c.reset(b, t);
                            advance(
                                &mut h[..np],
                                &mut dec[..np],
                                &av[..np],
                                &bv[..np],
                                dt,
                                dt * c.u[i],
                                rs,
                            );
                        }
                        hc[..np].fill(0.0);
                        if let Some(gf) = gf {
                            hc[..ns].copy_from_slice(&gf[(b * dn + d) * ns..][..ns]);
                        }
                        gda[..np].fill(0.0);
                        gfb[..np].fill(0.0);
                        gfc[..np].fill(0.0);
                        let (mut sds, mut sdb) = (0.0f32, 0.0f32);
                        for k in (0..ncp).rev() {
                            let t0 = k * CHECKPOINT;
                            let len = CHECKPOINT.min(tn - t0);
                            hs[..np].copy_from_slice(&cps[k * np..][..np]);
                            for j in 0..len {
                                let t = t0 + j;
                                let i = (b * tn + t) * dn + d;
                                let (dt, dsp) = c.dt(i, d);
                                let uu = c.u[i];
                                if dep {
                                    c.load_bc(c.bm, b, t, gi, &mut bv);
                                    c.load_bc(c.cm, b, t, gi, &mut cv);
                                }
                                let (prev, next) = hs.split_at_mut((j + 1) * np);
                                let hn = &mut next[..np];
                                hn.copy_from_slice(&prev[j * np..]);
                                let rs = c.reset(b, t);
                                advance(
                                    hn,
                                    &mut decs[j * np..][..np],
                                    &av[..np],
                                    &bv[..np],
                                    dt,
                                    dt * uu,
                                    rs,
                                );
                                ys[j] = dot(&cv[..np], hn) + ds * uu;
                                dts[j] = (dt, dsp);
                            }
                            for j in (0..len).rev() {
                                let t = t0 + j;
                                let i = (b * tn + t) * dn + d;
                                let (dt, dsp) = dts[j];
                                let uu = c.u[i];
                                if dep {
                                    c.load_bc(c.bm, b, t, gi, &mut bv);
                                    c.load_bc(c.cm, b, t, gi, &mut cv);
                                }
                                let g = go[i];
                                let dy = match c.z {
                                    Some(z) => {
                                        let zi = z[i];
                                        let sg = sigmoid(zi);
                                        // SAFETY: an element of this piece's own (row, channel).
                                        unsafe {
                                            wdz.set(i, g * ys[j] * sg * (1.0 + zi * (1.0 - sg)))
                                        };
                                        g * (zi * sg)
                                    }
                                    None => g,
                                };
                                sds += dy * uu;
                                let hprev = &hs[j * np..][..np];
                                let hcur = &hs[(j + 1) * np..][..np];
                                let dc = &decs[j * np..][..np];
                                let rs = c.reset(b, t);
                                for n in 0..np {
                                    hh[n] = dy * cv[n] + hc[n];
                                }
                                let s1 = dot(&bv[..np], &hh[..np]);
                                let dtu = dt * uu;
                                let mut s2 = 0.0f32;
                                if !rs {
                                    let mut acc = [0.0f32; L];
                                    for n0 in (0..np).step_by(L) {
                                        for l in 0..L {
                                            let n = n0 + l;
                                            let q = dc[n] * hprev[n] * hh[n];
                                            acc[l] += av[n] * q;
                                            gda[n] += dt * q;
                                        }
                                    }
                                    s2 = ((acc[0] + acc[4]) + (acc[2] + acc[6]))
                                        + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
                                    for n in 0..np {
                                        hc[n] = dc[n] * hh[n];
                                    }
                                } else {
                                    hc[..np].fill(0.0);
                                }
                                if dep {
                                    let gb = &mut gbm[t * ns..][..ns];
                                    let gc = &mut gcm[t * ns..][..ns];
                                    for n in 0..ns {
                                        gb[n] += dtu * hh[n];
                                        gc[n] += dy * hcur[n];
                                    }
                                } else {
                                    for n in 0..np {
                                        gfb[n] += dtu * hh[n];
                                        gfc[n] += dy * hcur[n];
                                    }
                                }
                                // SAFETY: an element of this piece's own (row, channel).
                                unsafe { wdu.set(i, dt * s1 + ds * dy) };
                                let ddt = uu * s1 + s2;
                                let dd = ddt * dsp;
                                // SAFETY: an element of this piece's own (row, channel).
                                unsafe { wdd.set(i, dd) };
                                sdb += dd;
                            }
                        }
                        let o = (b * dn + d) * ns;
                        for n in 0..ns {
                            // SAFETY: an element of this piece's own (row, channel).
                            unsafe { wdh0.set(o + n, hc[n]) };
                            // SAFETY: an element of this piece's own (row, channel).
                            unsafe { wda.set(o + n, gda[n]) };
                            if !dep {
                                // SAFETY: an element of this piece's own (row, channel).
                                unsafe { wbm.set(o + n, gfb[n]) };
                                // SAFETY: an element of this piece's own (row, channel).
                                unsafe { wcm.set(o + n, gfc[n]) };
                            }
                        }
                        // SAFETY: an element of this piece's own (row, channel).
                        unsafe { wds.set(b * dn + d, sds) };
                        // SAFETY: an element of this piece's own (row, channel).
                        unsafe { wdb.set(b * dn + d, sdb) };
                    }
                    (gbm, gcm)
                },
            )
        })
        .collect();
    // ordered sums over rows of the shared parameters' gradients
    let sum_rows = |v: &[f32], per: usize| -> Vec<f32> {
        let mut s = v[..per].to_vec();
        for r in 1..bn {
            for (a, x) in s.iter_mut().zip(&v[r * per..][..per]) {
                *a += x;
            }
        }
        s
    };
    let da = sum_rows(&pda, dn * ns);
    let ddskip = sum_rows(&pds, dn);
    let ddelta_bias = sum_rows(&pdb, dn);
    let (dbm, dcm) = if dep {
        let g = p.num_groups();
        let dg = dn / g;
        let (mut dbm, mut dcm) = (
            vec![0.0f32; bn * tn * g * ns],
            vec![0.0f32; bn * tn * g * ns],
        );
        for (pi, (gb, gc)) in blocks.iter().enumerate() {
            let (b, d0, _) = c.piece(pi);
            let gi = d0 / dg;
            let first = d0 == gi * dg;
            for t in 0..tn {
                let o = ((b * tn + t) * g + gi) * ns;
                for (dst, src) in [(&mut dbm, gb), (&mut dcm, gc)] {
                    let (dst, src) = (&mut dst[o..o + ns], &src[t * ns..][..ns]);
                    if first {
                        dst.copy_from_slice(src);
                    } else {
                        for (a, x) in dst.iter_mut().zip(src) {
                            *a += x;
                        }
                    }
                }
            }
        }
        (dbm, dcm)
    } else {
        (sum_rows(&pbm, dn * ns), sum_rows(&pcm, dn * ns))
    };
    let bc_dtype = if dep { p.dtype } else { DType::F32 };
    let bc_shape = p.spec(Arg::Bm).shape.clone();
    Ok(SelectiveGrads {
        du: output(vec![bn, tn, dn], du, p.dtype)?,
        ddelta: output(vec![bn, tn, dn], ddelta, p.dtype)?,
        da: output(vec![dn, ns], da, DType::F32)?,
        dbm: output(bc_shape.clone(), dbm, bc_dtype)?,
        dcm: output(bc_shape, dcm, bc_dtype)?,
        ddskip: output(vec![dn], ddskip, DType::F32)?,
        dz: output(vec![bn, tn, dn], dz, p.dtype)?,
        ddelta_bias: output(vec![dn], ddelta_bias, DType::F32)?,
        dh0: output(vec![bn, dn, ns], dh0, DType::F32)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp8` within `f32::EPSILON` (relative) of the exact exponential over the normal range, and
    /// its edges.
    #[test]
    fn exp8_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.33f32;
        while x < 88.71 {
            let mut v = [0.0f32; L];
            for (j, vj) in v.iter_mut().enumerate() {
                *vj = x + j as f32 * 1.3e-3;
            }
            let e = exp8(v);
            for j in 0..L {
                let exact = f64::from(v[j]).exp();
                worst = worst.max((f64::from(e[j]) - exact).abs() / exact);
            }
            x += 0.0107;
        }
        assert!(
            worst <= 2.0 * f64::from(f32::EPSILON) / 2.0,
            "worst {worst:e}"
        );
        let e = exp8([
            f32::NAN,
            f32::NEG_INFINITY,
            -100.0,
            f32::INFINITY,
            100.0,
            0.0,
            -0.0,
            1.0,
        ]);
        assert!(e[0].is_nan());
        assert_eq!(
            &e[1..7],
            &[0.0, 0.0, f32::INFINITY, f32::INFINITY, 1.0, 1.0]
        );
        assert_eq!(e[7], std::f32::consts::E);
    }
}
