//! Native CPU kernels of the FFM aggregation (`Device::Cpu`).
//!
//! # Algorithm
//!
//! `gamma[m][c] = exp(a[m]) (cos b[c], sin b[c])` is formed once per call in f64 (a table on
//! the stack for up to [`STACK_CHANNELS`] channels). The work is cut into *pieces*: a batch
//! row and a span of time steps. A piece walks its steps and updates one block of channels
//! at a time: whole memory channels `m` with all their `C` context channels when `C` is at
//! most [`BLOCK`], else a run of up to [`BLOCK`] context channels of one `m`, so the inner
//! loop runs over contiguous `(re, im)` pairs of `S`, with `x[m]` broadcast.
//!
//! With many rows each piece is a whole row. With few rows and long sequences the rows are cut
//! into chunks of time (the cut of the linear scan, [`crate::ops::scan::cpu::plan`]) and
//! the aggregation runs in two passes: each chunk reduces to `S -> gamma^n S + L` (or `L`
//! alone after a reset), a short sequential pass per row carries the state over the chunks,
//! and every chunk is then rescanned from its incoming state. `gamma^n` of a chunk of `n` steps
//! is formed in closed form, `exp(n a) (cos(n b), sin(n b))` in f64, never as a product of
//! per-step factors.
//!
//! The backward recomputes the states from `x` (it takes the forward's inputs, not `S`): per
//! piece and block, a forward pass keeps the state entering every segment of [`SEG`] steps,
//! then segments are taken in reverse: their states are recomputed into a small buffer, and
//! the reverse scan `H_t = G_t + conj(gamma) H_{t+1}` forms `dx` (summed over `c`), and adds
//! `conj(S_{t-1}) H_t` into the piece's `dgamma`. Pieces' `dgamma` are summed in a fixed
//! order (rows, then chunks), then `dlog = conj(gamma) dgamma` gives `da` and `db`.
//! With rows cut into chunks, the states entering each chunk and the gradient flowing into
//! it come from two carry passes like the forward's.
//!
//! Resets *select* (the state is replaced, never multiplied by zero): a NaN before a reset
//! never reaches a step after it.
//!
//! # Performance
//!
//! What the kernels do for speed (measured on a 2-core VM shared with other work, B = 8,
//! T = 1024, M = 32, C = 4, one thread, criterion medians; before -> after these changes:
//! forward 1.36 -> 0.86 ms, forward+backward 9.6 -> 4.1 ms, against 3.0 and 10.8 ms for a plain
//! f32 loop; B = 1, T = 65536: forward 46 -> 19 ms, forward+backward 168 -> 79 ms, against 31
//! and 135 ms for the plain loop):
//! - **AVX2.** The span kernels (`fwd_span`, `back_span`, `back_l`) are compiled twice, plainly
//!   and for AVX2, picked at run time (`avx2_twin!`). Without FMA, so the bits are the same
//!   either way.
//! - **The backward walks down memory all the way.** Its steps go down in time, so each step's
//!   block is taken in descending pieces of `LANES` floats (`for_lanes!`), as in the linear
//!   scan (`ops::scan::cpu`): going down the steps while going up each step's floats defeats
//!   the hardware prefetchers. Within a whole piece the real and imaginary parts are taken
//!   apart into small arrays, which the compiler turns into vertical vector operations
//!   (the same operations per element as before, so the same bits).
//! - **The recomputation writes each state once**: a segment's step `t` is formed from step
//!   `t - 1`'s state straight into its own row (`fwd_step_to`), not copied and updated.
//! - **`S` is not zeroed first**: it is allocated uninitialized (`runtime::cpu::uninit_f32s`,
//!   advised onto huge pages; every element is written exactly once by the pieces).
//!
//! # Threading and reproducibility
//!
//! Pieces run on rayon's pool (the global one, or one a caller `install`s). The cut depends
//! only on the problem's sizes, and every sum across pieces runs in a fixed order, so results
//! are bitwise identical whatever the number of threads. A call with little work (for example
//! the reinforcement-learning step `B = 8, T = 1, M = 32, C = 4`) runs on the calling thread
//! without rayon; the forward then allocates nothing beyond its outputs, the backward only a
//! few small buffers (per-row sums and scratch).
//!
//! # Accuracy
//!
//! Storage is f32 (FFM has no half variant). The state, `gamma`, its powers and every sum are
//! f64 in registers: the f32 `gamma`'s rounding repeats at every step and does not decay when
//! `a` is near 0, so an f32 state drifts over long sequences; in f64 the results are the f64
//! reference's, rounded to f32, up to a few f64 roundings (`rel` about 1e-8 at any length).

use super::{Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::Result;
use crate::ops::scan::cpu::plan;
use crate::runtime::cpu::{
    avx2_twin, f32s, flags, for_lanes, opt_f32s, output, uninit_f32s, written, ChunkMap as Map,
};
use crate::runtime::{HostFlags, HostFloats};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Complex channels of a block.
pub const BLOCK: usize = 256;
/// Steps of a segment of the backward's recomputation.
pub const SEG: usize = 16;
/// Channels `M * C` up to which the `gamma` table lives on the stack.
pub const STACK_CHANNELS: usize = 512;
/// Work (`B * T * M * C`) below which a call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 14;

/// An element of the `S` output, which the forward fills (every element exactly once).
type Out = MaybeUninit<f32>;

/// Floats (`LANES / 2` complex channels) per piece of a step's block that the backward's step
/// kernel handles at a time.
const LANES: usize = 8;

avx2_twin!(
    /// [`fwd_span_in`], AVX2 where available.
    fn fwd_span = fwd_span_in(
        g: &Geo, b: usize, t0: usize, t1: usize, carry: Carry, out: Option<&mut [Out]>,
        end: Option<&mut [f64]>, scratch: &mut [f64; 2 * BLOCK],
    )
);
avx2_twin!(
    /// [`back_l_in`], AVX2 where available.
    fn back_l = back_l_in(g: &Geo, gs: &[f32], b: usize, t0: usize, t1: usize, l: &mut [f64])
);
avx2_twin!(
    /// [`back_span_in`], AVX2 where available.
    fn back_span = back_span_in(
        g: &Geo, gs: &[f32], b: usize, t0: usize, t1: usize, entry: Carry, carry: Carry,
        dx: &mut [f32], dg: &mut [f64], end: &mut [f64], work: &mut Vec<f64>,
    )
);

/// A problem's sizes, `gamma` and flags, shared by the kernels.
struct Geo<'a> {
    p: &'a Ffm,
    /// `gamma` as `(re, im)` f64 pairs, index `m * C + c`.
    g: &'a [f64],
    x: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
    start: Option<&'a [u8]>,
}

/// A block of channels: memory channels `[m0, m0 + mn)`, context channels `[c0, c0 + cn)` of
/// each (`cn = C`, or `mn = 1`).
#[derive(Clone, Copy)]
struct Blk {
    m0: usize,
    mn: usize,
    c0: usize,
    cn: usize,
}

impl Blk {
    /// Complex channels of the block.
    fn n(self) -> usize {
        self.mn * self.cn
    }
    /// Float offset of the block in a `[M, C, 2]` state: a block is contiguous there (whole
    /// memory channels, or a run of context channels of one).
    fn off(self, p: &Ffm) -> usize {
        (self.m0 * p.context + self.c0) * 2
    }
}

/// The blocks of a problem, in a fixed order.
fn blocks(p: &Ffm) -> impl Iterator<Item = Blk> + '_ {
    let (mn, cn) = (p.memory, p.context);
    let per = (BLOCK / cn).max(1);
    let split = cn > BLOCK;
    let steps = if split {
        mn * cn.div_ceil(BLOCK)
    } else {
        mn.div_ceil(per)
    };
    (0..steps).map(move |i| {
        if split {
            let per_m = cn.div_ceil(BLOCK);
            let (m, j) = (i / per_m, i % per_m);
            let c0 = j * BLOCK;
            Blk {
                m0: m,
                mn: 1,
                c0,
                cn: BLOCK.min(cn - c0),
            }
        } else {
            let m0 = i * per;
            Blk {
                m0,
                mn: per.min(mn - m0),
                c0: 0,
                cn,
            }
        }
    })
}

impl Geo<'_> {
    #[inline]
    fn reset(&self, b: usize, t: usize) -> bool {
        self.start.is_some_and(|s| s[b * self.p.len + t] != 0)
    }
    fn any_reset(&self, b: usize, t0: usize, t1: usize) -> bool {
        self.start.is_some() && (t0..t1).any(|t| self.reset(b, t))
    }
    /// `(re, im)` of `gamma^n` for `(m, c)` (closed form, f64).
    fn gamma_pow(&self, m: usize, c: usize, n: usize) -> (f64, f64) {
        let nf = n as f64;
        let mag = (nf * f64::from(self.a[m])).exp();
        let (s, co) = (nf * f64::from(self.b[c])).sin_cos();
        (mag * co, mag * s)
    }
}

/// Where a block's incoming state comes from: zero, an f32 state `[B, M, C, 2]`, or an f64
/// one (offsets as in `[M, C, 2]` of one row).
#[derive(Clone, Copy)]
enum Carry<'a> {
    Zero,
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Carry<'_> {
    /// Load the block's state (`st`, `2 * k.n()` floats).
    fn load(self, p: &Ffm, k: Blk, st: &mut [f64]) {
        let f = k.off(p);
        match self {
            Carry::Zero => st.iter_mut().for_each(|v| *v = 0.0),
            Carry::F32(v) => {
                for (d, x) in st.iter_mut().zip(&v[f..]) {
                    *d = f64::from(*x);
                }
            }
            Carry::F64(v) => st.copy_from_slice(&v[f..f + st.len()]),
        }
    }
    /// The row `b` of an optional f32 state `[B, M, C, 2]`.
    fn row<'a>(v: Option<&'a [f32]>, p: &Ffm, b: usize) -> Carry<'a> {
        let n = p.channels() * 2;
        v.map_or(Carry::Zero, |v| Carry::F32(&v[b * n..(b + 1) * n]))
    }
}

/// One forward step of a block: `st = reset ? x : gamma st + x` (x broadcast over `c`).
#[inline(always)]
fn fwd_step(k: Blk, reset: bool, st: &mut [f64], gb: &[f64], x: &[f32]) {
    let w = 2 * k.cn;
    for mi in 0..k.mn {
        let xv = f64::from(x[k.m0 + mi]);
        let s = &mut st[mi * w..(mi + 1) * w];
        if reset {
            for j in 0..k.cn {
                s[2 * j] = xv;
                s[2 * j + 1] = 0.0;
            }
        } else {
            let gm = &gb[mi * w..(mi + 1) * w];
            for j in 0..k.cn {
                let (gr, gi) = (gm[2 * j], gm[2 * j + 1]);
                let (sr, si) = (s[2 * j], s[2 * j + 1]);
                s[2 * j] = gr * sr - gi * si + xv;
                s[2 * j + 1] = gr * si + gi * sr;
            }
        }
    }
}

/// [`fwd_step`] from the state `src` into `dst` (the same operations, so the same bits): the
/// backward's recomputation keeps every step's state, and writing it in place of a copy
/// followed by an update saves a pass over the block.
#[inline(always)]
fn fwd_step_to(k: Blk, reset: bool, src: &[f64], dst: &mut [f64], gb: &[f64], x: &[f32]) {
    let w = 2 * k.cn;
    for mi in 0..k.mn {
        let xv = f64::from(x[k.m0 + mi]);
        let d = &mut dst[mi * w..(mi + 1) * w];
        if reset {
            for j in 0..k.cn {
                d[2 * j] = xv;
                d[2 * j + 1] = 0.0;
            }
        } else {
            let s = &src[mi * w..(mi + 1) * w];
            let gm = &gb[mi * w..(mi + 1) * w];
            for j in 0..k.cn {
                let (gr, gi) = (gm[2 * j], gm[2 * j + 1]);
                let (sr, si) = (s[2 * j], s[2 * j + 1]);
                d[2 * j] = gr * sr - gi * si + xv;
                d[2 * j + 1] = gr * si + gi * sr;
            }
        }
    }
}

/// Store a block's state into the f32 `S` (`base`: the step's float offset in `out`).
#[inline(always)]
fn store(g: &Geo, k: Blk, st: &[f64], out: &mut [Out], base: usize) {
    let o = &mut out[base + k.off(g.p)..][..st.len()];
    for (d, v) in o.iter_mut().zip(st) {
        d.write(*v as f32);
    }
}

/// The gamma table (`(re, im)` f64 pairs of every `(m, c)`) into `out`: `M` exponentials and
/// `C` sines and cosines (the phases go into the first memory channel's slots first).
fn fill_gamma(p: &Ffm, a: &[f32], b: &[f32], out: &mut [f64]) {
    let cn = p.context;
    for (c, bc) in b.iter().enumerate() {
        let (s, co) = f64::from(*bc).sin_cos();
        out[2 * c] = co;
        out[2 * c + 1] = s;
    }
    for (m, am) in a.iter().enumerate().rev() {
        let mag = f64::from(*am).exp();
        for c in 0..cn {
            let (co, s) = (out[2 * c], out[2 * c + 1]);
            out[(m * cn + c) * 2] = mag * co;
            out[(m * cn + c) * 2 + 1] = mag * s;
        }
    }
}

/// Run `f` with the gamma table of `p` (on the stack when it is small).
fn with_gamma<R>(p: &Ffm, a: &[f32], b: &[f32], f: impl FnOnce(&[f64]) -> R) -> R {
    let n = p.channels() * 2;
    if p.channels() <= STACK_CHANNELS {
        let mut buf = [0f64; 2 * STACK_CHANNELS];
        fill_gamma(p, a, b, &mut buf[..n]);
        f(&buf[..n])
    } else {
        let mut buf = vec![0f64; n];
        fill_gamma(p, a, b, &mut buf);
        f(&buf)
    }
}

/// Forward of `[t0, t1)` of row `b` from `carry`, writing every element of the span's `S`
/// (`out`, offsets relative to step `t0`) or, without `out`, only the final state into `end`
/// (f64 `[M, C, 2]`). `scratch` holds a block's state (passed in, so that a loop over rows
/// clears it once).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_span_in<const V: bool>(
    g: &Geo,
    b: usize,
    t0: usize,
    t1: usize,
    carry: Carry,
    mut out: Option<&mut [Out]>,
    mut end: Option<&mut [f64]>,
    scratch: &mut [f64; 2 * BLOCK],
) {
    let p = g.p;
    for k in blocks(p) {
        let n = k.n();
        let st = &mut scratch[..2 * n];
        let gb = &g.g[k.off(p)..][..2 * n];
        carry.load(p, k, st);
        for t in t0..t1 {
            let x = &g.x[(b * p.len + t) * p.memory..][..p.memory];
            fwd_step(k, g.reset(b, t), st, gb, x);
            if let Some(o) = out.as_deref_mut() {
                store(g, k, st, o, (t - t0) * p.channels() * 2);
            }
        }
        if let Some(e) = end.as_deref_mut() {
            for mi in 0..k.mn {
                let f = ((k.m0 + mi) * p.context + k.c0) * 2;
                e[f..f + 2 * k.cn].copy_from_slice(&st[2 * mi * k.cn..2 * (mi + 1) * k.cn]);
            }
        }
    }
}

/// `gamma^(t1 - t0)` of every channel, `[M, C, 2]` (zeros when a reset makes it unused).
fn chunk_pow(g: &Geo, reset: bool, n: usize) -> Vec<f64> {
    let mut pw = vec![0f64; g.p.channels() * 2];
    if !reset {
        for m in 0..g.p.memory {
            for c in 0..g.p.context {
                let (re, im) = g.gamma_pow(m, c, n);
                let i = (m * g.p.context + c) * 2;
                pw[i] = re;
                pw[i + 1] = im;
            }
        }
    }
    pw
}

/// The states entering every chunk (`[B, nk, M, C, 2]` f64) of rows cut into chunks of `tc`.
fn entry_states(g: &Geo, s0: Option<&[f32]>, tc: usize) -> Vec<f64> {
    let p = g.p;
    let nk = p.len.div_ceil(tc);
    let w = p.channels() * 2;
    let maps: Vec<Map> = (0..p.batch * nk)
        .into_par_iter()
        .map(|i| {
            let (b, k) = (i / nk, i % nk);
            let (t0, t1) = (k * tc, ((k + 1) * tc).min(p.len));
            let reset = g.any_reset(b, t0, t1);
            let mut l = vec![0f64; w];
            fwd_span(
                g,
                b,
                t0,
                t1,
                Carry::Zero,
                None,
                Some(&mut l),
                &mut [0.0; 2 * BLOCK],
            );
            Map {
                reset,
                p: chunk_pow(g, reset, t1 - t0),
                l,
            }
        })
        .collect();
    let mut entries = vec![0f64; p.batch * nk * w];
    for b in 0..p.batch {
        let mut st = vec![0f64; w];
        if let Some(s0) = s0 {
            for (d, v) in st.iter_mut().zip(&s0[b * w..(b + 1) * w]) {
                *d = f64::from(*v);
            }
        }
        for k in 0..nk {
            entries[(b * nk + k) * w..][..w].copy_from_slice(&st);
            maps[b * nk + k].apply(&mut st, true, false);
        }
    }
    entries
}

/// Forward pass on the CPU (arguments already validated by the caller): linrec tensors, or
/// f32 and flag slices read in place ([`HostFloats`], [`HostFlags`]).
pub fn forward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &Ffm,
    args: &FfmInputs<F, S>,
) -> Result<FfmOutputs<Tensor>> {
    let x = f32s(args.x);
    let a = f32s(args.a);
    let bb = f32s(args.b);
    let s0 = opt_f32s(args.s0);
    let start = flags(args.start);
    let (bn, tn) = (p.batch, p.len);
    let w = p.channels() * 2;
    let mut s = uninit_f32s(bn * tn * w);
    with_gamma(p, &a, &bb, |gt| {
        let g = Geo {
            p,
            g: gt,
            x: &x,
            a: &a,
            b: &bb,
            start: start.as_deref(),
        };
        let s0 = s0.as_deref();
        let tc = plan(bn, tn, w);
        if tc >= tn {
            let row = |st: &mut [f64; 2 * BLOCK], (b, sr): (usize, &mut [Out])| {
                fwd_span(&g, b, 0, tn, Carry::row(s0, p, b), Some(sr), None, st)
            };
            if bn * tn * p.channels() < SERIAL_WORK {
                let mut st = [0f64; 2 * BLOCK];
                s.chunks_mut(tn * w)
                    .enumerate()
                    .for_each(|r| row(&mut st, r));
            } else {
                s.par_chunks_mut(tn * w)
                    .enumerate()
                    .for_each(|r| row(&mut [0.0; 2 * BLOCK], r));
            }
        } else {
            let nk = tn.div_ceil(tc);
            let entries = entry_states(&g, s0, tc);
            let pieces: Vec<(usize, usize, &mut [Out])> = s
                .chunks_mut(tn * w)
                .enumerate()
                .flat_map(|(b, r)| {
                    r.chunks_mut(tc * w)
                        .enumerate()
                        .map(move |(k, c)| (b, k, c))
                })
                .collect();
            pieces.into_par_iter().for_each(|(b, k, sc)| {
                let t0 = k * tc;
                let t1 = (t0 + tc).min(tn);
                let carry = Carry::F64(&entries[(b * nk + k) * w..][..w]);
                fwd_span(&g, b, t0, t1, carry, Some(sc), None, &mut [0.0; 2 * BLOCK]);
            });
        }
    });
    // SAFETY: the pieces cover every (row, step) once, and a piece's `fwd_span` stores every
    // block of every step, the blocks covering each step's `M * C * 2` floats once.
    let s = unsafe { written(s) };
    let mut sf = vec![0f32; bn * w];
    for (b, r) in sf.chunks_mut(w).enumerate() {
        r.copy_from_slice(&s[(b * tn + tn - 1) * w..][..w]);
    }
    Ok(FfmOutputs {
        s: output(vec![bn, tn, p.memory, p.context, 2], s, DType::F32)?,
        s_final: output(vec![bn, p.memory, p.context, 2], sf, DType::F32)?,
    })
}

// ------------------------------------------------------------------ backward

/// One backward step of a block at step `t`: `H = G + c`; `dx[m] += sum_c Re(H)`; then a reset
/// (`c = 0`) or `c = conj(gamma) H` and `dg += conj(prev) H` (`prev` = `S_{t-1}`). `hre` is
/// scratch of the block's channel count.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_step(
    k: Blk,
    reset: bool,
    c: &mut [f64],
    gb: &[f64],
    gs: &[f32],
    prev: &[f64],
    dx: &mut [f32],
    dg: &mut [f64],
    hre: &mut [f64],
) {
    let n = 2 * k.n();
    let (c, gb, gs, prev, dg) = (&mut c[..n], &gb[..n], &gs[..n], &prev[..n], &mut dg[..n]);
    // Re(H) of every channel, for the sums over c
    let hre = &mut hre[..n / 2];
    if reset {
        for ((cs, g), h) in c
            .chunks_exact_mut(2)
            .zip(gs.chunks_exact(2))
            .zip(hre.iter_mut())
        {
            *h = f64::from(g[0]) + cs[0];
            cs[0] = 0.0;
            cs[1] = 0.0;
        }
    } else {
        // the steps go down memory, so each step's floats go down too (`for_lanes!`)
        for_lanes!(LANES, n, true, |q, l| {
            if l == LANES {
                // a whole piece, with its real and imaginary parts apart (vertical vectors)
                const H: usize = LANES / 2;
                let (cq, gq) = (&mut c[q..q + LANES], &gs[q..q + LANES]);
                let (bq, pq) = (&gb[q..q + LANES], &prev[q..q + LANES]);
                let dq = &mut dg[q..q + LANES];
                let (mut hr, mut hi) = ([0f64; H], [0f64; H]);
                let (mut gr, mut gi) = ([0f64; H], [0f64; H]);
                let (mut pr, mut pi) = ([0f64; H], [0f64; H]);
                for e in 0..H {
                    hr[e] = f64::from(gq[2 * e]) + cq[2 * e];
                    hi[e] = f64::from(gq[2 * e + 1]) + cq[2 * e + 1];
                    gr[e] = bq[2 * e];
                    gi[e] = bq[2 * e + 1];
                    pr[e] = pq[2 * e];
                    pi[e] = pq[2 * e + 1];
                }
                hre[q / 2..q / 2 + H].copy_from_slice(&hr);
                for e in 0..H {
                    cq[2 * e] = gr[e] * hr[e] + gi[e] * hi[e];
                    cq[2 * e + 1] = gr[e] * hi[e] - gi[e] * hr[e];
                    dq[2 * e] += pr[e] * hr[e] + pi[e] * hi[e];
                    dq[2 * e + 1] += pr[e] * hi[e] - pi[e] * hr[e];
                }
            } else {
                let r = q..q + l;
                let it = c[r.clone()]
                    .chunks_exact_mut(2)
                    .zip(gs[r.clone()].chunks_exact(2))
                    .zip(gb[r.clone()].chunks_exact(2))
                    .zip(prev[r.clone()].chunks_exact(2))
                    .zip(dg[r].chunks_exact_mut(2))
                    .zip(hre[q / 2..(q + l) / 2].iter_mut());
                for (((((cs, g), gm), pv), dgm), h) in it {
                    let hr = f64::from(g[0]) + cs[0];
                    let hi = f64::from(g[1]) + cs[1];
                    *h = hr;
                    cs[0] = gm[0] * hr + gm[1] * hi;
                    cs[1] = gm[0] * hi - gm[1] * hr;
                    dgm[0] += pv[0] * hr + pv[1] * hi;
                    dgm[1] += pv[0] * hi - pv[1] * hr;
                }
            }
        });
    }
    for (d, hs) in dx[k.m0..k.m0 + k.mn].iter_mut().zip(hre.chunks_exact(k.cn)) {
        let sum: f64 = hs.iter().sum();
        *d = (f64::from(*d) + sum) as f32;
    }
}

/// The incoming gradient's map of a chunk, without states: `c` from zero over `[t0, t1)`.
#[inline(always)]
fn back_l_in<const V: bool>(g: &Geo, gs: &[f32], b: usize, t0: usize, t1: usize, l: &mut [f64]) {
    let p = g.p;
    let w = p.channels() * 2;
    let mut c = [0f64; 2 * BLOCK];
    let mut dg = [0f64; 2 * BLOCK];
    let zero = [0f64; 2 * BLOCK];
    let mut hre = [0f64; BLOCK];
    let mut dx = vec![0f32; p.memory];
    for k in blocks(p) {
        let n = k.n();
        let c = &mut c[..2 * n];
        let gb = &g.g[k.off(p)..][..2 * n];
        c.iter_mut().for_each(|v| *v = 0.0);
        for t in (t0..t1).rev() {
            back_step(
                k,
                g.reset(b, t),
                c,
                gb,
                &gs[(b * p.len + t) * w + k.off(p)..][..2 * n],
                &zero[..2 * n],
                &mut dx,
                &mut dg[..2 * n],
                &mut hre,
            );
        }
        for mi in 0..k.mn {
            let f = ((k.m0 + mi) * p.context + k.c0) * 2;
            l[f..f + 2 * k.cn].copy_from_slice(&c[2 * mi * k.cn..2 * (mi + 1) * k.cn]);
        }
    }
}

/// The backward of `[t0, t1)` of row `b`: states recomputed from `entry` (`S_{t0-1}`), the
/// gradient flowing in from `carry` (into `H_{t1-1}`); writes the span's `dx` (`[t1 - t0, M]`),
/// adds into `dg` (`[M, C, 2]`) and leaves the outgoing gradient in `end` (`[M, C, 2]`).
/// `work` is scratch, grown as needed and reused across spans.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_span_in<const V: bool>(
    g: &Geo,
    gs: &[f32],
    b: usize,
    t0: usize,
    t1: usize,
    entry: Carry,
    carry: Carry,
    dx: &mut [f32],
    dg: &mut [f64],
    end: &mut [f64],
    work: &mut Vec<f64>,
) {
    let p = g.p;
    let w = p.channels() * 2;
    let len = t1 - t0;
    let nseg = len.div_ceil(SEG);
    // carved from `work` (every value is written before it is read, so stale contents from
    // an earlier span do no harm): the states entering every segment; the states of one
    // segment and the one entering it ((steps + 1) rows of `bw` floats); a block's state,
    // incoming gradient, dgamma sum and Re(H)
    let bw = (2 * BLOCK).min(w);
    let nck = if nseg > 1 { nseg * 2 * BLOCK } else { 0 };
    let nbuf = (len.min(SEG) + 1) * bw;
    if work.len() < nck + nbuf + 4 * bw {
        work.resize(nck + nbuf + 4 * bw, 0.0);
    }
    let (ckpt, rest) = work.split_at_mut(nck);
    let (buf, rest) = rest.split_at_mut(nbuf);
    let (st, rest) = rest.split_at_mut(bw);
    let (c, rest) = rest.split_at_mut(bw);
    let (dgb, rest) = rest.split_at_mut(bw);
    let hre = &mut rest[..bw];
    for k in blocks(p) {
        let n = 2 * k.n();
        let gb = &g.g[k.off(p)..][..n];
        entry.load(p, k, &mut st[..n]);
        let xrow = |t: usize| &g.x[(b * p.len + t) * p.memory..][..p.memory];
        // states entering every segment
        if nseg > 1 {
            for (i, t) in (t0..t1).enumerate() {
                if i % SEG == 0 {
                    ckpt[i / SEG * 2 * BLOCK..][..n].copy_from_slice(&st[..n]);
                }
                fwd_step(k, g.reset(b, t), &mut st[..n], gb, xrow(t));
            }
        }
        carry.load(p, k, &mut c[..n]);
        dgb[..n].iter_mut().for_each(|v| *v = 0.0);
        for sg in (0..nseg).rev() {
            let s0 = t0 + sg * SEG;
            let s1 = (s0 + SEG).min(t1);
            if nseg > 1 {
                buf[..n].copy_from_slice(&ckpt[sg * 2 * BLOCK..][..n]);
            } else {
                buf[..n].copy_from_slice(&st[..n]);
            }
            for (i, t) in (s0..s1).enumerate() {
                let (head, tail) = buf.split_at_mut((i + 1) * bw);
                fwd_step_to(
                    k,
                    g.reset(b, t),
                    &head[i * bw..][..n],
                    &mut tail[..n],
                    gb,
                    xrow(t),
                );
            }
            for (i, t) in (s0..s1).enumerate().rev() {
                back_step(
                    k,
                    g.reset(b, t),
                    &mut c[..n],
                    gb,
                    &gs[(b * p.len + t) * w + k.off(p)..][..n],
                    &buf[i * bw..][..n],
                    &mut dx[(t - t0) * p.memory..][..p.memory],
                    &mut dgb[..n],
                    hre,
                );
            }
        }
        for mi in 0..k.mn {
            let f = ((k.m0 + mi) * p.context + k.c0) * 2;
            let r = 2 * mi * k.cn..2 * (mi + 1) * k.cn;
            end[f..f + 2 * k.cn].copy_from_slice(&c[r.clone()]);
            for (d, v) in dg[f..f + 2 * k.cn].iter_mut().zip(&dgb[r]) {
                *d += v;
            }
        }
    }
}

/// A backward piece: its index (row-major: row, chunk), its `dx`, `dgamma` sum and outgoing
/// gradient.
type BackPiece<'a> = (usize, ((&'a mut [f32], &'a mut [f64]), &'a mut [f64]));

/// Backward pass on the CPU (arguments already validated by the caller), on the same kinds of
/// data as [`forward`].
pub fn backward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &Ffm,
    args: &FfmBackwardInputs<F, S>,
) -> Result<FfmGrads<Tensor>> {
    let x = f32s(args.x);
    let a = f32s(args.a);
    let bb = f32s(args.b);
    let s0 = opt_f32s(args.s0);
    let gs = f32s(args.grad_s);
    let gf = opt_f32s(args.grad_final);
    let start = flags(args.start);
    let (bn, tn, mn, cn) = (p.batch, p.len, p.memory, p.context);
    let w = p.channels() * 2;
    let tc = plan(bn, tn, w);
    let nk = tn.div_ceil(tc);
    let mut dx = vec![0f32; bn * tn * mn];
    let mut dgs = vec![0f64; bn * nk * w];
    let mut ends = vec![0f64; bn * nk * w];
    let mut dgamma = vec![0f64; w];
    let mut da = vec![0f64; mn];
    let mut db = vec![0f64; cn];
    let (s0, gf) = (s0.as_deref(), gf.as_deref());
    with_gamma(p, &a, &bb, |gt| {
        let g = Geo {
            p,
            g: gt,
            x: &x,
            a: &a,
            b: &bb,
            start: start.as_deref(),
        };
        let (entries, cins) = if nk > 1 {
            let entries = entry_states(&g, s0, tc);
            let maps: Vec<Map> = (0..bn * nk)
                .into_par_iter()
                .map(|i| {
                    let (b, k) = (i / nk, i % nk);
                    let (t0, t1) = (k * tc, ((k + 1) * tc).min(tn));
                    let reset = g.any_reset(b, t0, t1);
                    let mut l = vec![0f64; w];
                    back_l(&g, &gs, b, t0, t1, &mut l);
                    Map {
                        reset,
                        p: chunk_pow(&g, reset, t1 - t0),
                        l,
                    }
                })
                .collect();
            let mut cins = vec![0f64; bn * nk * w];
            for b in 0..bn {
                let mut c = vec![0f64; w];
                if let Some(gf) = gf {
                    for (d, v) in c.iter_mut().zip(&gf[b * w..(b + 1) * w]) {
                        *d = f64::from(*v);
                    }
                }
                for k in (0..nk).rev() {
                    cins[(b * nk + k) * w..][..w].copy_from_slice(&c);
                    maps[b * nk + k].apply(&mut c, true, true);
                }
            }
            (entries, cins)
        } else {
            (Vec::new(), Vec::new())
        };
        let piece = |work: &mut Vec<f64>, (i, ((dxc, dg), e)): BackPiece| {
            let (b, k) = (i / nk, i % nk);
            let t0 = k * tc;
            let t1 = (t0 + tc).min(tn);
            let (entry, carry) = if nk > 1 {
                let r = (b * nk + k) * w..(b * nk + k + 1) * w;
                (Carry::F64(&entries[r.clone()]), Carry::F64(&cins[r]))
            } else {
                (Carry::row(s0, p, b), Carry::row(gf, p, b))
            };
            back_span(&g, &gs, b, t0, t1, entry, carry, dxc, dg, e, work);
        };
        // chunks of dx in row-major order: a row's last chunk may be short
        let dx_chunks = dx.chunks_mut(tn * mn).flat_map(|r| r.chunks_mut(tc * mn));
        let items = dx_chunks
            .zip(dgs.chunks_mut(w))
            .zip(ends.chunks_mut(w))
            .enumerate();
        if bn * tn * p.channels() < SERIAL_WORK {
            let mut work = Vec::new();
            items.for_each(|it| piece(&mut work, it));
        } else {
            items
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each_init(Vec::new, piece);
        }
        // dgamma: the pieces' sums in a fixed order
        for part in dgs.chunks(w) {
            for (d, v) in dgamma.iter_mut().zip(part) {
                *d += v;
            }
        }
        // dlog = conj(gamma) dgamma; da[m] = sum_c Re; db[c] = sum_m Im
        for (m, dam) in da.iter_mut().enumerate() {
            for (c, dbc) in db.iter_mut().enumerate() {
                let i = (m * cn + c) * 2;
                let (gr, gi) = (gt[i], gt[i + 1]);
                let (dr, di) = (dgamma[i], dgamma[i + 1]);
                *dam += gr * dr + gi * di;
                *dbc += gr * di - gi * dr;
            }
        }
    });
    let mut ds0 = vec![0f32; bn * w];
    for (b, r) in ds0.chunks_mut(w).enumerate() {
        for (o, v) in r.iter_mut().zip(&ends[b * nk * w..][..w]) {
            *o = *v as f32;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(FfmGrads {
        dx: output(vec![bn, tn, mn], dx, DType::F32)?,
        da: output(vec![mn], f(da), DType::F32)?,
        db: output(vec![cn], f(db), DType::F32)?,
        ds0: output(vec![bn, mn, cn, 2], ds0, DType::F32)?,
    })
}
