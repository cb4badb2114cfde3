//! f64 CPU reference of the linear scan, written in *logical* time: step `s` of the recurrence
//! is physical time `t = s` (forward) or `t = T-1-s` (reverse), so one loop serves both.

use super::{Arg, LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::Result;
use crate::ops::cplx::C64;
use crate::ops::Problem;

/// Index helpers shared by forward and backward.
struct Idx<'a> {
    p: &'a LinearScan,
    start: Option<&'a [u8]>,
}

impl Idx<'_> {
    /// Physical time of logical step `s`.
    fn t(&self, s: usize) -> usize {
        if self.p.reverse {
            self.p.len - 1 - s
        } else {
            s
        }
    }
    /// Whether logical step `s` drops the carried state.
    fn reset(&self, b: usize, s: usize) -> bool {
        let Some(st) = self.start else { return false };
        let t = self.t(s);
        if self.p.reverse {
            // h_t drops h_{t+1} when an episode starts at t+1 (start_T is false).
            t + 1 < self.p.len && st[b * self.p.len + t + 1] != 0
        } else {
            st[b * self.p.len + t] != 0
        }
    }
    /// Element index of `(b, t, d)` in a `[B, T, D]` tensor.
    fn btd(&self, b: usize, t: usize, d: usize) -> usize {
        (b * self.p.len + t) * self.p.dim + d
    }
    /// Element index of the transition at `(b, t, d)`.
    fn a(&self, b: usize, t: usize, d: usize) -> usize {
        if self.p.time_varying {
            self.btd(b, t, d)
        } else {
            d
        }
    }
}

/// Forward pass in f64.
pub fn forward(p: &LinearScan, inp: &ScanInputs<&[f64], &[u8]>) -> Result<ScanOutputs<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let c = p.complex;
    let w = p.width();
    let (bn, tn, dn) = (p.batch, p.len, p.dim);
    let ix = Idx {
        p,
        start: inp.start,
    };
    let mut h = vec![0.0; bn * tn * dn * w];
    let mut hf = vec![0.0; bn * dn * w];
    for b in 0..bn {
        for d in 0..dn {
            let mut st = inp.h0.map_or(C64::ZERO, |h0| C64::load(h0, b * dn + d, c));
            for s in 0..tn {
                let t = ix.t(s);
                let carried = if ix.reset(b, s) {
                    C64::ZERO
                } else {
                    C64::load(inp.a, ix.a(b, t, d), c) * st
                };
                st = carried + C64::load(inp.x, ix.btd(b, t, d), c);
                st.store(&mut h, ix.btd(b, t, d), c);
            }
            st.store(&mut hf, b * dn + d, c);
        }
    }
    Ok(ScanOutputs { h, h_final: hf })
}

/// Backward pass in f64 (docs/scan.md, in logical time for the reverse case).
pub fn backward(
    p: &LinearScan,
    inp: &ScanBackwardInputs<&[f64], &[u8]>,
) -> Result<ScanGrads<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let c = p.complex;
    let w = p.width();
    let (bn, tn, dn) = (p.batch, p.len, p.dim);
    let ix = Idx {
        p,
        start: inp.start,
    };
    let mut dx = vec![0.0; bn * tn * dn * w];
    let mut da = vec![0.0; p.spec(Arg::A).numel()];
    let mut dh0 = vec![0.0; bn * dn * w];
    for b in 0..bn {
        for d in 0..dn {
            let h0 = inp.h0.map_or(C64::ZERO, |h0| C64::load(h0, b * dn + d, c));
            // H'_{T-1} = G'_{T-1} + G_final; H'_s = G'_s + (reset'_{s+1} ? 0 : conj(a'_{s+1}) H'_{s+1})
            let mut hg = inp
                .grad_final
                .map_or(C64::ZERO, |g| C64::load(g, b * dn + d, c));
            for s in (0..tn).rev() {
                let t = ix.t(s);
                if s + 1 < tn {
                    let tn1 = ix.t(s + 1);
                    hg = if ix.reset(b, s + 1) {
                        C64::ZERO
                    } else {
                        C64::load(inp.a, ix.a(b, tn1, d), c).conj() * hg
                    };
                }
                hg += C64::load(inp.grad_h, ix.btd(b, t, d), c);
                hg.store(&mut dx, ix.btd(b, t, d), c);
                if !ix.reset(b, s) {
                    let prev = if s == 0 {
                        h0
                    } else {
                        C64::load(inp.h, ix.btd(b, ix.t(s - 1), d), c)
                    };
                    (prev.conj() * hg).add_to(&mut da, ix.a(b, t, d), c);
                }
            }
            // dh0 = reset'_0 ? 0 : conj(a'_0) H'_0
            if !ix.reset(b, 0) {
                let a0 = C64::load(inp.a, ix.a(b, ix.t(0), d), c);
                (a0.conj() * hg).store(&mut dh0, b * dn + d, c);
            }
        }
    }
    Ok(ScanGrads { dx, da, dh0 })
}
