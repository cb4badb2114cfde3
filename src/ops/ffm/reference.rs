//! f64 CPU reference of the FFM aggregation: docs/ffm.md step by step, one `(b, m, c)` sequence
//! at a time.

use super::{Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::Result;
use crate::ops::cplx::C64;
use crate::ops::Problem;

/// Index helpers shared by forward and backward.
struct Idx<'a> {
    p: &'a Ffm,
    start: Option<&'a [u8]>,
}

impl Idx<'_> {
    /// Whether step `t` of row `b` starts an episode (`t = T` never does).
    fn started(&self, b: usize, t: usize) -> bool {
        t < self.p.len && self.start.is_some_and(|s| s[b * self.p.len + t] != 0)
    }
    /// Element index of `x[b, t, m]`.
    fn x(&self, b: usize, t: usize, m: usize) -> usize {
        (b * self.p.len + t) * self.p.memory + m
    }
    /// Complex element index of `S[b, t, m, c]`.
    fn s(&self, b: usize, t: usize, m: usize, c: usize) -> usize {
        ((b * self.p.len + t) * self.p.memory + m) * self.p.context + c
    }
    /// Complex element index of a state `[b, m, c]`.
    fn state(&self, b: usize, m: usize, c: usize) -> usize {
        (b * self.p.memory + m) * self.p.context + c
    }
}

/// `gamma[m][c] = exp(a[m] + i b[c])`.
fn gamma(a: &[f64], b: &[f64], m: usize, c: usize) -> C64 {
    C64::new(a[m], b[c]).exp()
}

/// `gamma` of every `(m, c)`, index `m * C + c`.
fn gammas(p: &Ffm, a: &[f64], b: &[f64]) -> Vec<C64> {
    (0..p.memory)
        .flat_map(|m| (0..p.context).map(move |c| gamma(a, b, m, c)))
        .collect()
}

/// Forward pass in f64. Every `(b, m, c)` sequence is independent; the loops run time-outer
/// so `S` is written in memory order.
pub fn forward(p: &Ffm, inp: &FfmInputs<&[f64], &[u8]>) -> Result<FfmOutputs<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let (bn, tn, mn, cn) = (p.batch, p.len, p.memory, p.context);
    let ix = Idx {
        p,
        start: inp.start,
    };
    let g = gammas(p, inp.a, inp.b);
    let mut s = vec![0.0; bn * tn * mn * cn * 2];
    let mut sf = vec![0.0; bn * mn * cn * 2];
    for b in 0..bn {
        let mut st: Vec<C64> = (0..mn * cn)
            .map(|k| {
                inp.s0
                    .map_or(C64::ZERO, |s0| C64::load(s0, b * mn * cn + k, true))
            })
            .collect();
        for t in 0..tn {
            let reset = ix.started(b, t);
            for m in 0..mn {
                let x = C64::new(inp.x[ix.x(b, t, m)], 0.0);
                for c in 0..cn {
                    let k = m * cn + c;
                    let carried = if reset { C64::ZERO } else { g[k] * st[k] };
                    st[k] = carried + x;
                    st[k].store(&mut s, ix.s(b, t, m, c), true);
                }
            }
        }
        for (k, v) in st.iter().enumerate() {
            v.store(&mut sf, b * mn * cn + k, true);
        }
    }
    Ok(FfmOutputs { s, s_final: sf })
}

/// Backward pass in f64 (docs/ffm.md): recomputes `S`, runs the reverse scan for `H`, and forms
/// `dx`, `ds0`, `dgamma`, `dlog = conj(gamma) dgamma`, `da`, `db`. Time-outer loops, as the
/// forward; `dgamma` accumulates over `b` ascending, then `t` descending.
pub fn backward(p: &Ffm, inp: &FfmBackwardInputs<&[f64], &[u8]>) -> Result<FfmGrads<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let (bn, tn, mn, cn) = (p.batch, p.len, p.memory, p.context);
    let ix = Idx {
        p,
        start: inp.start,
    };
    let fwd = forward(
        p,
        &FfmInputs {
            x: inp.x,
            a: inp.a,
            b: inp.b,
            s0: inp.s0,
            start: inp.start,
        },
    )?;
    let g = gammas(p, inp.a, inp.b);
    let mut dx = vec![0.0; bn * tn * mn];
    let mut dgamma = vec![C64::ZERO; mn * cn];
    let mut ds0 = vec![0.0; bn * mn * cn * 2];
    for b in 0..bn {
        // H_{T-1} = G_{T-1} + G_final; H_t = G_t + (start_{t+1} ? 0 : conj(gamma) H_{t+1})
        let mut h: Vec<C64> = (0..mn * cn)
            .map(|k| {
                inp.grad_final
                    .map_or(C64::ZERO, |gf| C64::load(gf, b * mn * cn + k, true))
            })
            .collect();
        for t in (0..tn).rev() {
            if t + 1 < tn {
                let reset = ix.started(b, t + 1);
                for (hk, gk) in h.iter_mut().zip(&g) {
                    *hk = if reset { C64::ZERO } else { gk.conj() * *hk };
                }
            }
            let carried = !ix.started(b, t);
            for m in 0..mn {
                for c in 0..cn {
                    let k = m * cn + c;
                    h[k] += C64::load(inp.grad_s, ix.s(b, t, m, c), true);
                    dx[ix.x(b, t, m)] += h[k].re;
                    if carried {
                        let prev = if t == 0 {
                            inp.s0
                                .map_or(C64::ZERO, |s0| C64::load(s0, ix.state(b, m, c), true))
                        } else {
                            C64::load(&fwd.s, ix.s(b, t - 1, m, c), true)
                        };
                        dgamma[k] += prev.conj() * h[k];
                    }
                }
            }
        }
        // ds0 = start_0 ? 0 : conj(gamma) H_0
        if !ix.started(b, 0) {
            for (k, (hk, gk)) in h.iter().zip(&g).enumerate() {
                (gk.conj() * *hk).store(&mut ds0, b * mn * cn + k, true);
            }
        }
    }
    let dlog: Vec<C64> = g
        .iter()
        .zip(&dgamma)
        .map(|(gk, dk)| gk.conj() * *dk)
        .collect();
    // da[m] = sum_c Re(dlog[m][c]); db[c] = sum_m Im(dlog[m][c])
    let da = (0..mn)
        .map(|m| (0..cn).map(|c| dlog[m * cn + c].re).sum())
        .collect();
    let db = (0..cn)
        .map(|c| (0..mn).map(|m| dlog[m * cn + c].im).sum())
        .collect();
    Ok(FfmGrads { dx, da, db, ds0 })
}
