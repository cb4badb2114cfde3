//! Native CPU kernels of EFLA and the delta rule (f32 state and accumulation; f16/bf16 storage
//! is widened once on entry and rounded once on exit).
//!
//! **Algorithm.** Both [`Algorithm`](super::Algorithm)s run the *recurrent* algorithm on the
//! CPU: token by token, per `(batch row, head)`, with the `K x V` state row-major (`V`
//! contiguous). A problem asking for `Chunked { chunk }` is computed with the recurrent
//! algorithm: the chunked WY algorithm computes the same function (the reference and the
//! tests show the two agree within the accuracy bounds), and no CPU implementation of it is
//! written yet. Counting multiply-adds per step, the recurrent algorithm does `3 K V` (`S^T k`,
//! the rank-one update, `S^T q`); the chunked one does the same `3 K V` in three chunk-by-state
//! products plus about `C (3 K + 2 V) / 2` for the Gram matrices, the triangular solve and the WY
//! vectors: 1.4 times the work at `K = V = 128` and 1.9 times at `K = V = 64` with `C = 64`.
//! It pays only where its products run much faster than the recurrent loops (register-blocked
//! matrix kernels), which this module does not have yet.
//!
//! One step is two passes over the state: `u = v - S^T k`, then for each row
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
//! outputs and nothing is reduced across pieces, so results are bitwise identical whatever the
//! number of threads.
//!
//! **Accuracy.** Against the f64 reference, measured by the tests: relative L2 error within
//! `1e-5` on outputs and `1e-4` on gradients and on `s_final` / `ds0` with f32 storage, and
//! `1e-2` with f16/bf16 storage (`s_final`, `ds0` within `1e-4` there too), for both rules and
//! both algorithm settings; at `T = 4096` (`K = V = 32`, f32) about 3e-7 on every result.

// Index loops over fixed lanes read like the equations and vectorize.
#![allow(clippy::needless_range_loop)]

use super::reference::coefficients;
use super::{Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs};
use crate::error::Result;
use crate::runtime::cpu::{f32s, flags, opt_f32s, output, simd, DisjointOut as Out};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

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

/// Forward pass on the CPU (the recurrent algorithm for either [`Algorithm`](super::Algorithm);
/// see the [module docs](self)).
pub fn forward(p: &Efla, args: &EflaInputs<&Tensor>) -> Result<EflaOutputs<Tensor>> {
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
        simd(|| {
            let (b, h) = (bh / hn, bh % hn);
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
        })
    });
    Ok(EflaOutputs {
        o: output(vec![bn, tn, hn, vd], o, p.dtype)?,
        s_final: output(vec![bn, hn, kd, vd], sf, DType::F32)?,
    })
}

/// Backward pass on the CPU (the recurrent algorithm for either
/// [`Algorithm`](super::Algorithm); see the [module docs](self)).
pub fn backward(p: &Efla, args: &EflaBackwardInputs<&Tensor>) -> Result<EflaGrads<Tensor>> {
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
    let (wq, wk, wv, wb) = (
        Out::new(&mut dq),
        Out::new(&mut dk),
        Out::new(&mut dv),
        Out::new(&mut db),
    );
    let ncp = tn.div_ceil(CHECKPOINT);
    ds0.par_chunks_mut(kv).enumerate().for_each(|(bh, ds)| {
        simd(|| {
            let (b, h) = (bh / hn, bh % hn);
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
            let zeros = vec![0.0f32; kv];
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
        })
    });
    Ok(EflaGrads {
        dq: output(vec![bn, tn, hn, kd], dq, p.dtype)?,
        dk: output(vec![bn, tn, hn, kd], dk, p.dtype)?,
        dv: output(vec![bn, tn, hn, vd], dv, p.dtype)?,
        dbeta: output(vec![bn, tn, hn], db, p.dtype)?,
        ds0: output(vec![bn, hn, kd, vd], ds0, DType::F32)?,
    })
}
