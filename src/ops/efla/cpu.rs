//! Native CPU kernels of EFLA and the delta rule (f32 state and accumulation; f16/bf16 storage
//! is widened once on entry and rounded once on exit).
//!
//! **Algorithms.** [`Algorithm::Recurrent`](super::Algorithm::Recurrent) runs the *recurrent*
//! algorithm: token by token, per `(batch row, head)`, with the `K x V` state row-major (`V`
//! contiguous). [`Algorithm::Chunked`](super::Algorithm::Chunked) runs the *chunked WY*
//! algorithm of docs/efla.md with the problem's chunk, its chunk products on the `gemm-f32`
//! crate (the f32 kernels of the `gemm` crates candle uses: packed, register-blocked, FMA
//! micro-kernels chosen at run time), when the sequence has at least [`MIN_CHUNKED_LEN`]
//! steps; shorter ones (the `T = 1` decode step among them) take the recurrent algorithm,
//! which is as fast or faster there. Both are described below.
//!
//! Counting multiply-adds per step, the recurrent algorithm does `3 K V` (`S^T k`, the rank-one
//! update, `S^T q`) in vector loops; the chunked one does the same `3 K V` in three
//! chunk-by-state products, plus `C (2 K + 2 V)` in products inside the chunk (the Gram
//! matrices, `X (alpha R)`, `P delta`; where the chunk has 32 steps or more, the triangular
//! ones skip the zero block, a quarter of the product): at `K = V = 64`, `C = 64` about twice
//! the arithmetic, at more than twice the rate (one `gemm` call of these shapes runs at about
//! 34 G multiply-adds/s on the machine below; the recurrent forward at about 15). Measured
//! with `cargo bench --bench cpu` (`B = 2`, `H = 4`, `T = 512`, `K = V = 64`, one thread of a
//! 2-core AMD EPYC VM, the delta rule; EFLA differs by one coefficient per step):
//!
//! | | forward | forward + backward |
//! |---|---|---|
//! | recurrent | 3.44 ms | 22.0 ms |
//! | chunked, `C = 64` (the default) | 3.56 ms | 13.6 ms |
//! | chunked, `C = 64`, EFLA | 3.65 ms | 13.7 ms |
//!
//! A one-thread timing loop over the same shape (EFLA, best of 30) gives 3.1 ms and 11.4 ms
//! with chunks of 32 (3.6 ms and 13.2 ms with 64): on the CPU smaller chunks pay less for the
//! products inside the chunk. The forwards run about level from `T = 16` on; the chunked
//! backward is about twice as fast from `T = 8` ([`MIN_CHUNKED_LEN`]).
//!
//! **The chunked algorithm** (child module `chunked`). Each `(batch row, head)` walks its
//! sequence in pieces of at most `chunk` steps that also end before every reset, so a reset
//! is only ever a piece's first step: the piece starts from a zero state (a fill), its
//! products never read a step before the reset, and the backward drops the state gradient
//! that would flow past it (a fill again). Per piece, with `L = strict_lower(K K^T)`,
//! `P = lower(Q K^T)`, `X = (I + diag(alpha) L)^{-1}` (forward substitution, in registers):
//!
//! ```text
//! R = V - K S,   delta = X diag(alpha) R,   O = scale (Q S + P delta),   S <- S + K^T delta
//! ```
//!
//! Five `gemm` calls per piece on stacked operands (`[Q; K] K^T` as two lower-triangle
//! products, `[Q; K] S`, `X Z`, `P delta`, `K^T delta`). The backward sweeps the pieces
//! forward once, keeping each piece's incoming state, `X`, `L`, `P`, `R` and `delta`
//! (a state per piece, `ceil(T / C)` plus one per reset, and about `T (3 C + 2 V)` floats per
//! head), then walks them from the end:
//!
//! ```text
//! d_delta = scale P^T dO + K dS,   Y = X^T d_delta,   dV = dR = diag(alpha) Y
//! dA = -strict_lower(Y delta^T),   dP = scale lower(dO delta^T),   dL = diag(alpha) dA
//! dalpha = rowsum(R o Y) + rowsum(dA o L)
//! dQ = scale dO S^T + dP K,   dK = delta dS^T - dR S^T + dP^T Q + (dL + dL^T) K (+ g' term)
//! dS <- dS + scale Q^T dO - K^T dR
//! ```
//!
//! (`Y` is the gradient of `Z = diag(alpha) R` through `delta = (I + diag(alpha) L)^{-1} Z`,
//! whose matrix gradient is `-Y delta^T`: no `X^T dX X^T` products.) Inside a piece the
//! products run over the whole piece, so a NaN or infinity there can also reach the piece's
//! steps *before* it (through `0 * NaN` in a triangular factor); it never crosses a reset.
//!
//! **The recurrent algorithm.** One step is two passes over the state: `u = v - S^T k`, then for each row
//! `S[r] += alpha k[r] u` fused with `o += q[r] S[r]`. Loops over the `V` columns are
//! contiguous and vectorize (on x86-64 CPUs with AVX2 they are also compiled for AVX2, chosen
//! at run time; no FMA, so the bits are the same either way); dot products along `V` use an
//! 8-lane accumulator summed in a fixed order. A reset *replaces* the carried state with zeros
//! (a fill, never a multiply), so a NaN before a reset never reaches a later step. The step
//! coefficients (`alpha`, and for EFLA `g(beta lambda)`, `g'`, `exp(-beta lambda)`) are
//! evaluated in f64 from the f32 `lambda` with the reference's formulas and rounded to f32.
//!
//! The decode step (`T = 1` with a carried state) allocates nothing but its outputs (with f32
//! storage): the state is updated in place in the `s_final` result, and per-step vectors live
//! on the stack.
//!
//! The backward sweeps each head forward once, checkpointing the state every [`CHECKPOINT`]
//! steps, then walks the intervals from the end: it recomputes the interval's states and
//! `u_t` with the same code as the forward, and runs the reverse recurrence of `dS` of
//! docs/efla.md. Scratch per head: `ceil(T / 32) + 33` states of `K x V` f32.
//!
//! **Threading.** One piece of work per `(batch row, head)` on rayon; pieces own disjoint
//! outputs and nothing is reduced across pieces, and the chunked algorithm calls `gemm-f32`
//! with its own parallelism off (one call runs on the calling thread, its blocking chosen from
//! the shapes and the CPU's caches only), so results are bitwise identical whatever the number
//! of threads.
//!
//! **Accuracy.** Against the f64 reference, measured by the tests: relative L2 error within
//! `1e-5` on outputs and `1e-4` on gradients and on `s_final` / `ds0` with f32 storage, and
//! `1e-2` with f16/bf16 storage (`s_final`, `ds0` within `1e-4` there too), for both rules and
//! both algorithms (`T = 4096` included, chunked with chunks of 64); the recurrent algorithm at
//! `T = 4096` (`K = V = 32`, f32) measured about 3e-7 on every result. The chunked algorithm
//! measures about 2e-7 to 4e-7 on every f32 result at chunks of 1, 7 and 64
//! (`K = V = 64`, `T = 301`, resets and `s0`), and about 1.7e-3 with bf16 storage (chunks of
//! 16).

// Index loops over fixed lanes read like the equations and vectorize.
#![allow(clippy::needless_range_loop)]

use super::reference::coefficients;
use super::{Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs};
use crate::error::Result;
use crate::runtime::cpu::{f32s, flags, opt_f32s, output, simd, DisjointOut as Out};
use crate::runtime::{HostFlags, HostFloats};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

mod chunked;

pub use chunked::MIN_CHUNKED_LEN;

/// Steps between the backward's state checkpoints.
pub const CHECKPOINT: usize = 32;
/// Lanes of the dot products.
const L: usize = 8;
/// Largest `K` or `V`.
const DMAX: usize = super::MAX_DIM;

/// `sum_j a[j] b[j]` in a fixed order (8 lanes, then a fixed tree, then the tail).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    let (ca, ta) = a.split_at(a.len() / L * L);
    let tb = &b[ca.len()..];
    for (x, y) in ca.chunks_exact(L).zip(b.chunks_exact(L)) {
        for j in 0..L {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// `y += a x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The inputs as f32 slices and the layout.
struct Ctx<'a> {
    p: &'a Efla,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    beta: &'a [f32],
    start: Option<&'a [u8]>,
    scale: f32,
}

impl Ctx<'_> {
    /// Row index of `(b, t, h)` in a `[B, T, H, ...]` tensor.
    #[inline(always)]
    fn row(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.p.len + t) * self.p.heads + h
    }
    #[inline(always)]
    fn reset(&self, b: usize, t: usize) -> bool {
        self.start.is_some_and(|s| s[b * self.p.len + t] != 0)
    }
    /// `(alpha, dk_factor, dbeta_factor)` of step `(b, t, h)`.
    #[inline(always)]
    fn coef(&self, i: usize) -> (f32, f32, f32) {
        let kd = self.p.key_dim;
        let k = &self.k[i * kd..][..kd];
        let lambda = dot(k, k);
        let (a, fk, fb) = coefficients(self.p.rule, f64::from(self.beta[i]), f64::from(lambda));
        (a as f32, fk as f32, fb as f32)
    }
    /// One step on state `s` (`K x V`, already reset if needed): writes `u` and returns with
    /// `s` updated; when `o` is given, writes `scale S_t^T q` there.
    #[inline(always)]
    fn step(&self, i: usize, alpha: f32, s: &mut [f32], u: &mut [f32], o: Option<&mut [f32]>) {
        let (kd, vd) = (self.p.key_dim, self.p.value_dim);
        let k = &self.k[i * kd..][..kd];
        let u = &mut u[..vd];
        u.copy_from_slice(&self.v[i * vd..][..vd]);
        for (r, row) in s.chunks_exact(vd).enumerate() {
            axpy(u, -k[r], row);
        }
        match o {
            Some(o) => {
                let q = &self.q[i * kd..][..kd];
                let o = &mut o[..vd];
                o.fill(0.0);
                for (r, row) in s.chunks_exact_mut(vd).enumerate() {
                    axpy(row, alpha * k[r], u);
                    axpy(o, q[r], row);
                }
                for x in o.iter_mut() {
                    *x *= self.scale;
                }
            }
            None => {
                for (r, row) in s.chunks_exact_mut(vd).enumerate() {
                    axpy(row, alpha * k[r], u);
                }
            }
        }
    }
}

fn make_ctx<'a>(
    p: &'a Efla,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    beta: &'a [f32],
    start: Option<&'a [u8]>,
) -> Ctx<'a> {
    Ctx {
        p,
        q,
        k,
        v,
        beta,
        start,
        scale: p.scale_value(),
    }
}

/// Forward pass on the CPU: the problem's [`Algorithm`](super::Algorithm), `Chunked` running
/// the recurrent algorithm below [`MIN_CHUNKED_LEN`] steps (see the [module docs](self)).
pub fn forward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &Efla,
    args: &EflaInputs<F, S>,
) -> Result<EflaOutputs<Tensor>> {
    let chunk = chunked::chunk_of(p);
    let (q, k, v, beta) = (f32s(args.q), f32s(args.k), f32s(args.v), f32s(args.beta));
    let s0 = opt_f32s(args.s0);
    let start = flags(args.start);
    let c = make_ctx(p, &q, &k, &v, &beta, start.as_deref());
    let (bn, tn, hn, kd, vd) = (p.batch, p.len, p.heads, p.key_dim, p.value_dim);
    let mut o = vec![0.0f32; bn * tn * hn * vd];
    let mut sf = match s0.as_deref() {
        Some(s) => s.to_vec(),
        None => vec![0.0f32; bn * hn * kd * vd],
    };
    let wo = Out::new(&mut o);
    sf.par_chunks_mut(kd * vd).enumerate().for_each(|(bh, s)| {
        // inlined into `simd`'s AVX2 copy (a closure that is not inlined there would be
        // compiled without it)
        simd(
            #[inline(always)]
            || {
                let (b, h) = (bh / hn, bh % hn);
                if let Some(chunk) = chunk {
                    return chunked::forward_head(&c, b, h, chunk, s, wo);
                }
                let (mut u, mut ov) = ([0.0f32; DMAX], [0.0f32; DMAX]);
                for t in 0..tn {
                    if c.reset(b, t) {
                        s.fill(0.0);
                    }
                    let i = c.row(b, t, h);
                    let (alpha, _, _) = c.coef(i);
                    c.step(i, alpha, s, &mut u, Some(&mut ov));
                    // SAFETY: this piece's own (row, head) range; no other piece touches it.
                    unsafe { wo.put(i * vd, &ov[..vd]) };
                }
            },
        )
    });
    Ok(EflaOutputs {
        o: output(vec![bn, tn, hn, vd], o, p.dtype)?,
        s_final: output(vec![bn, hn, kd, vd], sf, DType::F32)?,
    })
}

/// Backward pass on the CPU: the problem's [`Algorithm`](super::Algorithm), `Chunked` running
/// the recurrent algorithm below [`MIN_CHUNKED_LEN`] steps (see the [module docs](self)).
pub fn backward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &Efla,
    args: &EflaBackwardInputs<F, S>,
) -> Result<EflaGrads<Tensor>> {
    let chunk = chunked::chunk_of(p);
    let (q, k, v, beta) = (f32s(args.q), f32s(args.k), f32s(args.v), f32s(args.beta));
    let s0 = opt_f32s(args.s0);
    let start = flags(args.start);
    let go = f32s(args.grad_o);
    let gf = opt_f32s(args.grad_final);
    let c = make_ctx(p, &q, &k, &v, &beta, start.as_deref());
    let (s0, go, gf) = (s0.as_deref(), &go[..], gf.as_deref());
    let (bn, tn, hn, kd, vd) = (p.batch, p.len, p.heads, p.key_dim, p.value_dim);
    let kv = kd * vd;
    let mut dq = vec![0.0f32; bn * tn * hn * kd];
    let mut dk = vec![0.0f32; bn * tn * hn * kd];
    let mut dv = vec![0.0f32; bn * tn * hn * vd];
    let mut db = vec![0.0f32; bn * tn * hn];
    let mut ds0 = match gf {
        Some(g) => g.to_vec(),
        None => vec![0.0f32; bn * hn * kv],
    };
    let wg = chunked::Grads {
        q: Out::new(&mut dq),
        k: Out::new(&mut dk),
        v: Out::new(&mut dv),
        b: Out::new(&mut db),
    };
    let (wq, wk, wv, wb) = (wg.q, wg.k, wg.v, wg.b);
    let ncp = tn.div_ceil(CHECKPOINT);
    let zeros = vec![0.0f32; kv];
    ds0.par_chunks_mut(kv).enumerate().for_each(|(bh, ds)| {
        // inlined into `simd`'s AVX2 copy (a closure that is not inlined there would be
        // compiled without it)
        simd(
            #[inline(always)]
            || {
                let (b, h) = (bh / hn, bh % hn);
                if let Some(chunk) = chunk {
                    let s0h = s0.map_or(&zeros[..], |s| &s[bh * kv..][..kv]);
                    let sv = chunked::sweep(&c, b, h, chunk, s0h);
                    return chunked::backward_head(&c, b, h, chunk, go, &sv, ds, wg);
                }
                // forward sweep, checkpointing the state entering every interval
                let mut cps = vec![0.0f32; ncp * kv];
                let mut s = match s0 {
                    Some(s0) => s0[bh * kv..][..kv].to_vec(),
                    None => vec![0.0f32; kv],
                };
                let mut u = [0.0f32; DMAX];
                for t in 0..tn {
                    if c.reset(b, t) {
                        s.fill(0.0);
                    }
                    if t % CHECKPOINT == 0 {
                        cps[(t / CHECKPOINT) * kv..][..kv].copy_from_slice(&s);
                    }
                    let i = c.row(b, t, h);
                    let (alpha, _, _) = c.coef(i);
                    c.step(i, alpha, &mut s, &mut u, None);
                }
                drop(s);
                // states[j]: the state after step t0 + j - 1 (reset applied for step t0 + j when
                // j = 0); us[j]: u of step t0 + j
                let mut states = vec![0.0f32; (CHECKPOINT + 1) * kv];
                let mut us = vec![0.0f32; CHECKPOINT * vd];
                let (mut w, mut row_q) = ([0.0f32; DMAX], [0.0f32; DMAX]);
                let (mut gk, mut gq) = ([0.0f32; DMAX], [0.0f32; DMAX]);
                for cp in (0..ncp).rev() {
                    let t0 = cp * CHECKPOINT;
                    let len = CHECKPOINT.min(tn - t0);
                    states[..kv].copy_from_slice(&cps[cp * kv..][..kv]);
                    for j in 0..len {
                        let t = t0 + j;
                        let (prev, next) = states.split_at_mut((j + 1) * kv);
                        let sn = &mut next[..kv];
                        if j > 0 && c.reset(b, t) {
                            sn.fill(0.0);
                        } else {
                            sn.copy_from_slice(&prev[j * kv..]);
                        }
                        let i = c.row(b, t, h);
                        let (alpha, _, _) = c.coef(i);
                        c.step(i, alpha, sn, &mut us[j * vd..][..vd], None);
                    }
                    for j in (0..len).rev() {
                        let t = t0 + j;
                        let i = c.row(b, t, h);
                        let rs = c.reset(b, t);
                        let (a, fk, fb) = c.coef(i);
                        let kk = &c.k[i * kd..][..kd];
                        let qq = &c.q[i * kd..][..kd];
                        let g = &go[i * vd..][..vd];
                        let st = &states[(j + 1) * kv..][..kv];
                        // P: the state before the update (zero after a reset)
                        let sp = if rs && j > 0 {
                            &zeros[..]
                        } else {
                            &states[j * kv..][..kv]
                        };
                        let u = &us[j * vd..][..vd];
                        // dS += scale q go^T;  w = dS^T k
                        let w = &mut w[..vd];
                        w.fill(0.0);
                        for (r, row) in ds.chunks_exact_mut(vd).enumerate() {
                            axpy(row, c.scale * qq[r], g);
                            axpy(w, kk[r], row);
                        }
                        let dalpha = dot(u, w);
                        for r in 0..kd {
                            let dsr = &mut ds[r * vd..][..vd];
                            gq[r] = c.scale * dot(&st[r * vd..][..vd], g);
                            let rowv = dot(dsr, u) - dot(&sp[r * vd..][..vd], w);
                            gk[r] = a * rowv + fk * dalpha * kk[r];
                            if !rs {
                                axpy(dsr, -(a * kk[r]), w);
                            }
                        }
                        if rs {
                            ds.fill(0.0);
                        }
                        for x in row_q[..vd].iter_mut().zip(w.iter()) {
                            *x.0 = a * x.1;
                        }
                        // SAFETY: this piece's own (row, head) range; no other piece touches it.
                        unsafe { wq.put(i * kd, &gq[..kd]) };
                        // SAFETY: this piece's own (row, head) range; no other piece touches it.
                        unsafe { wk.put(i * kd, &gk[..kd]) };
                        // SAFETY: this piece's own (row, head) range; no other piece touches it.
                        unsafe { wv.put(i * vd, &row_q[..vd]) };
                        // SAFETY: this piece's own (row, head) range; no other piece touches it.
                        unsafe { wb.put(i, &[dalpha * fb]) };
                    }
                }
            },
        )
    });
    Ok(EflaGrads {
        dq: output(vec![bn, tn, hn, kd], dq, p.dtype)?,
        dk: output(vec![bn, tn, hn, kd], dk, p.dtype)?,
        dv: output(vec![bn, tn, hn, vd], dv, p.dtype)?,
        dbeta: output(vec![bn, tn, hn], db, p.dtype)?,
        ds0: output(vec![bn, hn, kd, vd], ds0, DType::F32)?,
    })
}
