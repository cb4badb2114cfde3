//! Native CPU kernels of the linear scan (`Device::Cpu`).
//!
//! # Algorithm
//!
//! The work of a call is cut into *pieces*: a batch row and a span of time steps. A piece walks
//! its steps in scan order, and at each step updates one block of up to [`BLOCK`] contiguous
//! floats of channels (`[B, T, D]` has `D` contiguous), keeping the block's state in a small
//! array, so the loop over channels is a plain loop over contiguous memory that the compiler
//! vectorizes. Blocks of a piece run one after the other.
//!
//! When a call has many rows, each piece is a whole row (one pass). When it has few rows and a
//! long sequence, every row is cut into chunks of time ([`plan`]) and the scan runs in two
//! passes so that every core gets work: pass 1 reduces each chunk to its affine map
//! `state -> P * state + L` (`P` the product of its transitions, `L` its scan from zero, or
//! only `L` when a reset inside the chunk drops the incoming state); a short sequential pass
//! per row carries the state across the chunks' maps; pass 2 rescans every chunk from its
//! incoming state and writes the outputs. The backward is the same reverse scan of the
//! gradient (docs/scan.md), chunked the same way.
//!
//! Resets *select* (the state is replaced, never multiplied by zero), so a NaN or infinity
//! before a reset never reaches a step after it.
//!
//! # Threading and reproducibility
//!
//! Pieces run on rayon's pool (the global one, or the one a caller `install`s). The cut into
//! rows and chunks depends only on the problem's sizes ([`plan`]), never on the number of
//! threads, and the time-invariant `da` (a sum over rows and steps) is summed per piece and
//! then over pieces in a fixed order. So results are bitwise identical whatever the number of
//! threads.
//!
//! # Accuracy
//!
//! Storage is f32, f16 or bf16 (widened on load, rounded on store). The carried state and
//! every sum are kept in **f64** registers: an f32 state accumulates one rounding per step that
//! never decays when `|a|` is close to 1, and was measured at `rel` 2.4e-5 (real `a` within
//! 1e-4 of 1) and 2.7e-5 (complex `a` on the unit circle) at `T = 2^20`, past the 1e-5 bound.
//! With the f64 state the results are the f64 reference's rounded to the storage dtype, up to
//! a few f64 roundings: `rel` about 1e-8 for f32 storage, at any length.

use super::{LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::Result;
use crate::runtime::cpu::{f32s, flags, opt_f32s, output, ChunkMap as Map};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

/// Floats (real channels, or interleaved halves of complex ones) of a channel block.
pub const BLOCK: usize = 1024;

/// Rows at or above which every row is one piece (no cut of time).
const ROWS_ENOUGH: usize = 8;
/// Pieces aimed at when rows are cut into chunks of time.
const TARGET_PIECES: usize = 32;
/// The least work (floats times steps) of a chunk of time.
const MIN_CHUNK_WORK: usize = 1 << 15;
/// The least steps of a chunk of time.
const MIN_CHUNK_STEPS: usize = 64;
/// Work (floats times steps) below which a call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 14;

/// The chunk length (steps) of a problem of `rows` rows, `len` steps and `width` floats per
/// step. Depends only on these sizes, so results do not depend on the number of threads.
pub fn plan(rows: usize, len: usize, width: usize) -> usize {
    if rows >= ROWS_ENOUGH {
        return len;
    }
    let want = TARGET_PIECES.div_ceil(rows);
    let by_work = (len.saturating_mul(width) / MIN_CHUNK_WORK).max(1);
    let by_steps = (len / MIN_CHUNK_STEPS).max(1);
    let chunks = want.min(by_work).min(by_steps).max(1);
    len.div_ceil(chunks)
}

/// Where a span's incoming state comes from.
#[derive(Clone, Copy)]
enum Carry<'a> {
    Zero,
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Carry<'_> {
    fn get(self, i: usize) -> f64 {
        match self {
            Carry::Zero => 0.0,
            Carry::F32(v) => f64::from(v[i]),
            Carry::F64(v) => v[i],
        }
    }
}

/// A problem's sizes, transition and flags, shared by the kernels.
struct Geo<'a> {
    p: &'a LinearScan,
    /// Floats per step of a row (`D * width`).
    dw: usize,
    a: &'a [f32],
    start: Option<&'a [u8]>,
}

impl Geo<'_> {
    /// Whether the step at physical time `t` of row `b` drops the carried state.
    #[inline]
    fn reset(&self, b: usize, t: usize) -> bool {
        let Some(s) = self.start else { return false };
        let tn = self.p.len;
        if self.p.reverse {
            t + 1 < tn && s[b * tn + t + 1] != 0
        } else {
            s[b * tn + t] != 0
        }
    }
    /// Offset of step `t` of row `b` in a `[B, T, D(, 2)]` tensor.
    #[inline]
    fn off(&self, b: usize, t: usize) -> usize {
        (b * self.p.len + t) * self.dw
    }
    /// The transition of floats `[c0, c0 + n)` at step `t` of row `b`.
    #[inline]
    fn a_at(&self, b: usize, t: usize, c0: usize, n: usize) -> &[f32] {
        if self.p.time_varying {
            &self.a[self.off(b, t) + c0..][..n]
        } else {
            &self.a[c0..c0 + n]
        }
    }
    /// Physical time of the `i`-th step of `[t0, t1)` in scan order.
    #[inline]
    fn scan_t(&self, t0: usize, t1: usize, i: usize) -> usize {
        if self.p.reverse {
            t1 - 1 - i
        } else {
            t0 + i
        }
    }
    /// Physical time of the `i`-th step of `[t0, t1)` in the backward's order (reverse scan
    /// order).
    #[inline]
    fn back_t(&self, t0: usize, t1: usize, i: usize) -> usize {
        if self.p.reverse {
            t0 + i
        } else {
            t1 - 1 - i
        }
    }
    /// Whether any step of `[t0, t1)` of row `b` resets.
    fn any_reset(&self, b: usize, t0: usize, t1: usize) -> bool {
        self.start.is_some() && (t0..t1).any(|t| self.reset(b, t))
    }
}

// ------------------------------------------------------------------ per-step block updates

/// `s = a * s + x; h = s` on one block (real).
#[inline(always)]
fn step_real(s: &mut [f64], a: &[f32], x: &[f32], h: &mut [f32]) {
    let n = s.len();
    let (a, x, h) = (&a[..n], &x[..n], &mut h[..n]);
    for i in 0..n {
        let v = f64::from(a[i]) * s[i] + f64::from(x[i]);
        s[i] = v;
        h[i] = v as f32;
    }
}

/// `s = a * s + x; h = s` on one block of interleaved complex values.
#[inline(always)]
fn step_cplx(s: &mut [f64], a: &[f32], x: &[f32], h: &mut [f32]) {
    let n = s.len();
    let (a, x, h) = (&a[..n], &x[..n], &mut h[..n]);
    for j in 0..n / 2 {
        let (ar, ai) = (f64::from(a[2 * j]), f64::from(a[2 * j + 1]));
        let (sr, si) = (s[2 * j], s[2 * j + 1]);
        let vr = ar * sr - ai * si + f64::from(x[2 * j]);
        let vi = ar * si + ai * sr + f64::from(x[2 * j + 1]);
        s[2 * j] = vr;
        s[2 * j + 1] = vi;
        h[2 * j] = vr as f32;
        h[2 * j + 1] = vi as f32;
    }
}

/// `s = x; h = x` (a reset).
#[inline(always)]
fn step_reset(s: &mut [f64], x: &[f32], h: &mut [f32]) {
    let n = s.len();
    let (x, h) = (&x[..n], &mut h[..n]);
    for i in 0..n {
        s[i] = f64::from(x[i]);
        h[i] = x[i];
    }
}

/// `v = m * v` (complex when `cplx`, with `conj(m)` when `conj`) for f64 `m`.
#[inline(always)]
fn mul_f64(v: &mut [f64], m: &[f64], cplx: bool, conj: bool) {
    if cplx {
        let sg = if conj { -1.0 } else { 1.0 };
        for j in 0..v.len() / 2 {
            let (mr, mi) = (m[2 * j], sg * m[2 * j + 1]);
            let (vr, vi) = (v[2 * j], v[2 * j + 1]);
            v[2 * j] = mr * vr - mi * vi;
            v[2 * j + 1] = mr * vi + mi * vr;
        }
    } else {
        for (v, m) in v.iter_mut().zip(m) {
            *v *= m;
        }
    }
}

/// `v = m * v` for f32 `m` (complex when `cplx`, `conj(m)` when `conj`).
#[inline(always)]
fn mul_f32(v: &mut [f64], m: &[f32], cplx: bool, conj: bool) {
    if cplx {
        let sg = if conj { -1.0 } else { 1.0 };
        let n = v.len();
        let m = &m[..n];
        for j in 0..n / 2 {
            let (mr, mi) = (f64::from(m[2 * j]), sg * f64::from(m[2 * j + 1]));
            let (vr, vi) = (v[2 * j], v[2 * j + 1]);
            v[2 * j] = mr * vr - mi * vi;
            v[2 * j + 1] = mr * vi + mi * vr;
        }
    } else {
        for (v, m) in v.iter_mut().zip(m) {
            *v *= f64::from(*m);
        }
    }
}

// ------------------------------------------------------------------ forward

/// Pass 2 (or the only pass): scan `[t0, t1)` of row `b` from `carry`, writing `h` (the
/// span's steps, `(t1 - t0) * dw` floats).
fn fwd_span(g: &Geo, x: &[f32], b: usize, t0: usize, t1: usize, carry: Carry, h: &mut [f32]) {
    let cplx = g.p.complex;
    let mut s = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let s = &mut s[..n];
        for (i, v) in s.iter_mut().enumerate() {
            *v = carry.get(c0 + i);
        }
        for i in 0..t1 - t0 {
            let t = g.scan_t(t0, t1, i);
            let xs = &x[g.off(b, t) + c0..][..n];
            let hs = &mut h[(t - t0) * g.dw + c0..][..n];
            if g.reset(b, t) {
                step_reset(s, xs, hs);
            } else if cplx {
                step_cplx(s, g.a_at(b, t, c0, n), xs, hs);
            } else {
                step_real(s, g.a_at(b, t, c0, n), xs, hs);
            }
        }
    }
}

/// Every channel of `p` set to the multiplicative identity (`1`, or `1 + 0i` when complex).
fn set_one(p: &mut [f64], cplx: bool) {
    let stride = if cplx { 2 } else { 1 };
    p.iter_mut().step_by(stride).for_each(|v| *v = 1.0);
}

/// Pass 1: the map of `[t0, t1)` of row `b`.
fn fwd_map(g: &Geo, x: &[f32], b: usize, t0: usize, t1: usize) -> Map {
    let cplx = g.p.complex;
    let reset = g.any_reset(b, t0, t1);
    let mut p = vec![0f64; g.dw];
    let mut l = vec![0f64; g.dw];
    if !reset {
        // P = product of the transitions (time-invariant: a^len by squaring)
        set_one(&mut p, cplx);
        if g.p.time_varying {
            for t in t0..t1 {
                for c0 in (0..g.dw).step_by(BLOCK) {
                    let n = BLOCK.min(g.dw - c0);
                    mul_f32(&mut p[c0..c0 + n], g.a_at(b, t, c0, n), cplx, false);
                }
            }
        } else {
            let mut base: Vec<f64> = g.a.iter().map(|&v| f64::from(v)).collect();
            let mut e = t1 - t0;
            while e > 0 {
                if e & 1 == 1 {
                    mul_f64(&mut p, &base, cplx, false);
                }
                let sq = base.clone();
                mul_f64(&mut base, &sq, cplx, false);
                e >>= 1;
            }
        }
    }
    // L: the scan from zero (steps are written to a scratch row that is thrown away)
    let mut scratch = [0f32; BLOCK];
    let mut s = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let s = &mut s[..n];
        s.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..t1 - t0 {
            let t = g.scan_t(t0, t1, i);
            let xs = &x[g.off(b, t) + c0..][..n];
            let hs = &mut scratch[..n];
            if g.reset(b, t) {
                step_reset(s, xs, hs);
            } else if cplx {
                step_cplx(s, g.a_at(b, t, c0, n), xs, hs);
            } else {
                step_real(s, g.a_at(b, t, c0, n), xs, hs);
            }
        }
        l[c0..c0 + n].copy_from_slice(s);
    }
    Map { reset, p, l }
}

/// Chunks of `[0, T)` in scan order: `(k, t0, t1)`.
fn chunks(p: &LinearScan, tc: usize) -> Vec<(usize, usize, usize)> {
    let nk = p.len.div_ceil(tc);
    let mut v: Vec<_> = (0..nk)
        .map(|k| (k, k * tc, ((k + 1) * tc).min(p.len)))
        .collect();
    if p.reverse {
        v.reverse();
    }
    v
}

/// Forward pass on the CPU (arguments already validated by the caller).
pub fn forward(p: &LinearScan, args: &ScanInputs<&Tensor>) -> Result<ScanOutputs<Tensor>> {
    let x = f32s(args.x);
    let a = f32s(args.a);
    let h0 = opt_f32s(args.h0);
    let start = flags(args.start);
    let g = Geo {
        p,
        dw: p.dim * p.width(),
        a: &a,
        start: start.as_deref(),
    };
    let (bn, tn, dw) = (p.batch, p.len, g.dw);
    let h0 = h0.as_deref();
    let row_carry = |b: usize| h0.map_or(Carry::Zero, |v| Carry::F32(&v[b * dw..(b + 1) * dw]));
    let mut h = vec![0f32; bn * tn * dw];
    let tc = plan(bn, tn, dw);
    if tc >= tn {
        let row = |(b, hr): (usize, &mut [f32])| fwd_span(&g, &x, b, 0, tn, row_carry(b), hr);
        if bn * tn * dw < SERIAL_WORK {
            h.chunks_mut(tn * dw).enumerate().for_each(row);
        } else {
            h.par_chunks_mut(tn * dw).enumerate().for_each(row);
        }
    } else {
        let ch = chunks(p, tc);
        let nk = ch.len();
        // pass 1: every chunk's map (row-major, chunks in scan order)
        let maps: Vec<Map> = (0..bn * nk)
            .into_par_iter()
            .map(|i| {
                let (_, t0, t1) = ch[i % nk];
                fwd_map(&g, &x, i / nk, t0, t1)
            })
            .collect();
        // the incoming state of every chunk, in physical chunk order
        let mut carries = vec![0f64; bn * nk * dw];
        for b in 0..bn {
            let mut st: Vec<f64> = (0..dw).map(|i| row_carry(b).get(i)).collect();
            for (j, &(k, _, _)) in ch.iter().enumerate() {
                carries[(b * nk + k) * dw..][..dw].copy_from_slice(&st);
                maps[b * nk + j].apply(&mut st, p.complex, false);
            }
        }
        // pass 2
        let mut pieces = Vec::with_capacity(bn * nk);
        for (b, hr) in h.chunks_mut(tn * dw).enumerate() {
            for (k, hc) in hr.chunks_mut(tc * dw).enumerate() {
                pieces.push((b, k, hc));
            }
        }
        pieces.into_par_iter().for_each(|(b, k, hc)| {
            let t0 = k * tc;
            let t1 = (t0 + tc).min(tn);
            let carry = Carry::F64(&carries[(b * nk + k) * dw..][..dw]);
            fwd_span(&g, &x, b, t0, t1, carry, hc);
        });
    }
    // the final state is the last step's (h_{T-1}, or h_0 reversed), before any rounding
    let tl = if p.reverse { 0 } else { tn - 1 };
    let mut hf = vec![0f32; bn * dw];
    for (b, r) in hf.chunks_mut(dw).enumerate() {
        r.copy_from_slice(&h[g.off(b, tl)..][..dw]);
    }
    Ok(ScanOutputs {
        h: output(args.x.shape().to_vec(), h, p.dtype)?,
        h_final: output(vec_shape(p, &[bn, p.dim]), hf, DType::F32)?,
    })
}

/// `dims`, with a trailing 2 when complex.
fn vec_shape(p: &LinearScan, dims: &[usize]) -> Vec<usize> {
    let mut s = dims.to_vec();
    if p.complex {
        s.push(2);
    }
    s
}

// ------------------------------------------------------------------ backward

/// The backward's inputs besides the transition and flags.
struct Back<'a> {
    /// `grad_h`.
    gh: &'a [f32],
    /// The forward's `h`.
    h: &'a [f32],
    /// The forward's `h0`.
    h0: Option<&'a [f32]>,
}

impl Back<'_> {
    /// `h_{s-1}` of the step at physical time `t` of row `b` (`None`: zero): the previous step
    /// in scan order, or `h0` at the first.
    #[inline]
    fn prev<'s>(&'s self, g: &Geo, b: usize, t: usize, c0: usize, n: usize) -> Option<&'s [f32]> {
        let tn = g.p.len;
        let first = if g.p.reverse { t + 1 == tn } else { t == 0 };
        if first {
            self.h0.map(|v| &v[b * g.dw + c0..][..n])
        } else {
            let tp = if g.p.reverse { t + 1 } else { t - 1 };
            Some(&self.h[g.off(b, tp) + c0..][..n])
        }
    }
}

/// Where a backward span puts `da`.
enum DaOut<'a> {
    /// Time-varying: the span's steps.
    Steps(&'a mut [f32]),
    /// Time-invariant: added into a `[D(, 2)]` f64 partial sum.
    Sum(&'a mut [f64]),
}

/// One backward step on a block: `H = G + c`, `dx = H`, then either a reset (`c = 0`, `da = 0`)
/// or `c = conj(a) H`, `da = conj(h_prev) H` (added into `da_sum` when given). `hb` is scratch
/// of the block's size.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_step(
    cplx: bool,
    reset: bool,
    c: &mut [f64],
    hb: &mut [f64],
    gh: &[f32],
    a: &[f32],
    hp: Option<&[f32]>,
    dx: &mut [f32],
    da: Option<&mut [f32]>,
    da_sum: Option<&mut [f64]>,
) {
    let n = c.len();
    let (hb, gh, dx) = (&mut hb[..n], &gh[..n], &mut dx[..n]);
    if reset {
        for i in 0..n {
            dx[i] = (f64::from(gh[i]) + c[i]) as f32;
            c[i] = 0.0;
        }
        if let Some(da) = da {
            da[..n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    if !cplx {
        // real: one fused loop
        if let Some(hp) = hp {
            let (a, hp) = (&a[..n], &hp[..n]);
            match (da, da_sum) {
                (Some(da), _) => {
                    let da = &mut da[..n];
                    for i in 0..n {
                        let v = f64::from(gh[i]) + c[i];
                        dx[i] = v as f32;
                        c[i] = f64::from(a[i]) * v;
                        da[i] = (f64::from(hp[i]) * v) as f32;
                    }
                }
                (None, Some(sum)) => {
                    let sum = &mut sum[..n];
                    for i in 0..n {
                        let v = f64::from(gh[i]) + c[i];
                        dx[i] = v as f32;
                        c[i] = f64::from(a[i]) * v;
                        sum[i] += f64::from(hp[i]) * v;
                    }
                }
                (None, None) => {
                    for i in 0..n {
                        let v = f64::from(gh[i]) + c[i];
                        dx[i] = v as f32;
                        c[i] = f64::from(a[i]) * v;
                    }
                }
            }
            return;
        }
    }
    for i in 0..n {
        let v = f64::from(gh[i]) + c[i];
        hb[i] = v;
        c[i] = v;
        dx[i] = v as f32;
    }
    // c = conj(a) H
    mul_f32(c, a, cplx, true);
    // da = conj(h_prev) H
    let Some(hp) = hp else {
        if let Some(da) = da {
            da[..n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    };
    mul_f32(hb, hp, cplx, true);
    if let Some(da) = da {
        for (d, v) in da[..n].iter_mut().zip(hb.iter()) {
            *d = *v as f32;
        }
    }
    if let Some(sum) = da_sum {
        for (d, v) in sum[..n].iter_mut().zip(hb.iter()) {
            *d += v;
        }
    }
}

/// Pass 2 (or the only pass) of the backward: `[t0, t1)` of row `b` from the incoming `c`,
/// writing `dx` and `da` of the span and leaving the outgoing `c` in `end`.
#[allow(clippy::too_many_arguments)]
fn back_span(
    g: &Geo,
    k: &Back,
    b: usize,
    t0: usize,
    t1: usize,
    carry: Carry,
    dx: &mut [f32],
    mut da: DaOut,
    end: &mut [f64],
) {
    let cplx = g.p.complex;
    let mut c = [0f64; BLOCK];
    let mut hb = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let c = &mut c[..n];
        for (i, v) in c.iter_mut().enumerate() {
            *v = carry.get(c0 + i);
        }
        for i in 0..t1 - t0 {
            let t = g.back_t(t0, t1, i);
            let o = (t - t0) * g.dw + c0;
            let (das, sum) = match &mut da {
                DaOut::Steps(v) => (Some(&mut v[o..o + n]), None),
                DaOut::Sum(v) => (None, Some(&mut v[c0..c0 + n])),
            };
            back_step(
                cplx,
                g.reset(b, t),
                c,
                &mut hb,
                &k.gh[g.off(b, t) + c0..][..n],
                g.a_at(b, t, c0, n),
                k.prev(g, b, t, c0, n),
                &mut dx[o..o + n],
                das,
                sum,
            );
        }
        end[c0..c0 + n].copy_from_slice(c);
    }
}

/// Pass 1 of the backward: the map `c_in -> c_out` of `[t0, t1)` of row `b`.
fn back_map(g: &Geo, k: &Back, b: usize, t0: usize, t1: usize) -> Map {
    let cplx = g.p.complex;
    let reset = g.any_reset(b, t0, t1);
    let mut p = vec![0f64; g.dw];
    let mut l = vec![0f64; g.dw];
    if !reset {
        set_one(&mut p, cplx);
        for t in t0..t1 {
            for c0 in (0..g.dw).step_by(BLOCK) {
                let n = BLOCK.min(g.dw - c0);
                mul_f32(&mut p[c0..c0 + n], g.a_at(b, t, c0, n), cplx, true);
            }
        }
    }
    let mut dx = [0f32; BLOCK];
    let mut c = [0f64; BLOCK];
    let mut hb = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let c = &mut c[..n];
        c.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..t1 - t0 {
            let t = g.back_t(t0, t1, i);
            back_step(
                cplx,
                g.reset(b, t),
                c,
                &mut hb,
                &k.gh[g.off(b, t) + c0..][..n],
                g.a_at(b, t, c0, n),
                None,
                &mut dx[..n],
                None,
                None,
            );
        }
        l[c0..c0 + n].copy_from_slice(c);
    }
    Map { reset, p, l }
}

/// Backward pass on the CPU (arguments already validated by the caller).
pub fn backward(p: &LinearScan, args: &ScanBackwardInputs<&Tensor>) -> Result<ScanGrads<Tensor>> {
    let a = f32s(args.a);
    let h = f32s(args.h);
    let gh = f32s(args.grad_h);
    let h0 = opt_f32s(args.h0);
    let gf = opt_f32s(args.grad_final);
    let start = flags(args.start);
    let g = Geo {
        p,
        dw: p.dim * p.width(),
        a: &a,
        start: start.as_deref(),
    };
    let k = Back {
        gh: &gh,
        h: &h,
        h0: h0.as_deref(),
    };
    let (bn, tn, dw) = (p.batch, p.len, g.dw);
    let gf = gf.as_deref();
    let row_gf = |b: usize| gf.map_or(Carry::Zero, |v| Carry::F32(&v[b * dw..(b + 1) * dw]));
    let tc = plan(bn, tn, dw);
    let nk = tn.div_ceil(tc);
    let ch = chunks(p, tc);
    // incoming c of every chunk (physical chunk order), when rows are cut
    let mut carries = Vec::new();
    if nk > 1 {
        let maps: Vec<Map> = (0..bn * nk)
            .into_par_iter()
            .map(|i| {
                let (_, t0, t1) = ch[nk - 1 - i % nk];
                back_map(&g, &k, i / nk, t0, t1)
            })
            .collect();
        carries = vec![0f64; bn * nk * dw];
        for b in 0..bn {
            let mut st: Vec<f64> = (0..dw).map(|i| row_gf(b).get(i)).collect();
            for (j, &(kk, _, _)) in ch.iter().rev().enumerate() {
                carries[(b * nk + kk) * dw..][..dw].copy_from_slice(&st);
                maps[b * nk + j].apply(&mut st, p.complex, false);
            }
        }
    }
    let mut dx = vec![0f32; bn * tn * dw];
    let mut da_steps = vec![0f32; if p.time_varying { bn * tn * dw } else { 0 }];
    let mut sums = vec![0f64; if p.time_varying { 0 } else { bn * nk * dw }];
    let mut ends = vec![0f64; bn * nk * dw];
    // pieces: (row, chunk, dx, da steps or da partial sum, outgoing c)
    let mut pieces = Vec::with_capacity(bn * nk);
    {
        let mut da_it = p.time_varying.then(|| {
            da_steps
                .chunks_mut(tn * dw)
                .flat_map(|r| r.chunks_mut(tc * dw))
        });
        let mut sum_it = sums.chunks_mut(dw);
        for (b, (dxr, er)) in dx
            .chunks_mut(tn * dw)
            .zip(ends.chunks_mut(nk * dw))
            .enumerate()
        {
            for (kk, (dxc, e)) in dxr.chunks_mut(tc * dw).zip(er.chunks_mut(dw)).enumerate() {
                let da = match &mut da_it {
                    Some(it) => DaOut::Steps(it.next().expect("da is split as dx")),
                    None => DaOut::Sum(sum_it.next().expect("one partial sum per piece")),
                };
                pieces.push((b, kk, dxc, da, e));
            }
        }
    }
    let piece = |(b, kk, dxc, da, e): (usize, usize, &mut [f32], DaOut, &mut [f64])| {
        let t0 = kk * tc;
        let t1 = (t0 + tc).min(tn);
        let carry = if nk > 1 {
            Carry::F64(&carries[(b * nk + kk) * dw..][..dw])
        } else {
            row_gf(b)
        };
        back_span(&g, &k, b, t0, t1, carry, dxc, da, e);
    };
    if bn * tn * dw < SERIAL_WORK {
        pieces.into_iter().for_each(piece);
    } else {
        pieces.into_par_iter().for_each(piece);
    }
    // dh0: the outgoing c of each row's last chunk in the backward's order
    let k_last = if p.reverse { nk - 1 } else { 0 };
    let mut dh0 = vec![0f32; bn * dw];
    for (b, r) in dh0.chunks_mut(dw).enumerate() {
        for (o, v) in r.iter_mut().zip(&ends[(b * nk + k_last) * dw..][..dw]) {
            *o = *v as f32;
        }
    }
    let da = if p.time_varying {
        output(args.a.shape().to_vec(), da_steps, p.dtype)?
    } else {
        // partial sums in a fixed order: rows, then chunks
        let mut tot = vec![0f64; dw];
        for part in sums.chunks(dw) {
            for (t, v) in tot.iter_mut().zip(part) {
                *t += v;
            }
        }
        output(
            args.a.shape().to_vec(),
            tot.into_iter().map(|v| v as f32).collect(),
            DType::F32,
        )?
    };
    Ok(ScanGrads {
        dx: output(args.h.shape().to_vec(), dx, p.dtype)?,
        da,
        dh0: output(vec_shape(p, &[bn, p.dim]), dh0, DType::F32)?,
    })
}
