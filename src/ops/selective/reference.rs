//! f64 CPU reference of the selective scan (docs/selective.md), one `(batch, channel)` sequence at a
//! time. The backward recomputes the forward's states of the sequence and runs the adjoint
//! recurrence `H_t = dy_t Cm_t + (start_{t+1} ? 0 : exp(dt_{t+1} A) H_{t+1})` from the end.

use super::{
    Arg, SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::Result;
use crate::ops::Problem;

/// `softplus(x) = ln(1 + e^x)`, and `x` itself above 20 (as Mamba's kernels do).
pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The derivative of [`softplus`]: the logistic sigmoid, and 1 above 20.
pub fn softplus_grad(x: f64) -> f64 {
    if x > 20.0 {
        1.0
    } else {
        sigmoid(x)
    }
}

/// The logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Index helpers and per-step quantities shared by forward and backward.
struct Seq<'a> {
    p: &'a SelectiveScan,
    u: &'a [f64],
    delta: &'a [f64],
    a: &'a [f64],
    bm: &'a [f64],
    cm: &'a [f64],
    dskip: Option<&'a [f64]>,
    z: Option<&'a [f64]>,
    bias: Option<&'a [f64]>,
    h0: Option<&'a [f64]>,
    start: Option<&'a [u8]>,
}

impl Seq<'_> {
    /// Index of `(b, t, d)` in a `[B, T, D]` tensor.
    fn btd(&self, b: usize, t: usize, d: usize) -> usize {
        (b * self.p.len + t) * self.p.dim + d
    }
    /// Index of `Bm`/`Cm` at `(b, t)` for channel `d`, state `n`.
    fn bc(&self, b: usize, t: usize, d: usize, n: usize) -> usize {
        let ns = self.p.state;
        if self.p.input_dependent() {
            let g = self.p.num_groups();
            ((b * self.p.len + t) * g + self.p.group_of(d)) * ns + n
        } else {
            d * ns + n
        }
    }
    /// `(delta + bias, dt)` at `(b, t, d)`.
    fn dt(&self, b: usize, t: usize, d: usize) -> (f64, f64) {
        let x = self.delta[self.btd(b, t, d)] + self.bias.map_or(0.0, |v| v[d]);
        (x, if self.p.softplus { softplus(x) } else { x })
    }
    fn reset(&self, b: usize, t: usize) -> bool {
        self.start.is_some_and(|s| s[b * self.p.len + t] != 0)
    }
    fn dskip(&self, d: usize) -> f64 {
        self.dskip.map_or(0.0, |v| v[d])
    }
    /// Run the recurrence of `(b, d)`: returns every state (`T * N`, step-major) and every
    /// `y_t` (before the gate).
    fn states(&self, b: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
        let (tn, ns) = (self.p.len, self.p.state);
        let mut h: Vec<f64> = match self.h0 {
            Some(h0) => h0[(b * self.p.dim + d) * ns..][..ns].to_vec(),
            None => vec![0.0; ns],
        };
        let mut hs = Vec::with_capacity(tn * ns);
        let mut ys = Vec::with_capacity(tn);
        for t in 0..tn {
            let (_, dt) = self.dt(b, t, d);
            let u = self.u[self.btd(b, t, d)];
            let reset = self.reset(b, t);
            let mut y = self.dskip(d) * u;
            for (n, hn) in h.iter_mut().enumerate() {
                // a reset replaces the carry (a select: a NaN before it must not survive * 0)
                let carried = if reset {
                    0.0
                } else {
                    (dt * self.a[d * ns + n]).exp() * *hn
                };
                *hn = carried + dt * self.bm[self.bc(b, t, d, n)] * u;
                y += self.cm[self.bc(b, t, d, n)] * *hn;
            }
            hs.extend_from_slice(&h);
            ys.push(y);
        }
        (hs, ys)
    }
}

macro_rules! seq {
    ($p:expr, $inp:expr) => {
        Seq {
            p: $p,
            u: $inp.u,
            delta: $inp.delta,
            a: $inp.a,
            bm: $inp.bm,
            cm: $inp.cm,
            dskip: $inp.dskip,
            z: $inp.z,
            bias: $inp.delta_bias,
            h0: $inp.h0,
            start: $inp.start,
        }
    };
}

/// Forward pass in f64.
pub fn forward(
    p: &SelectiveScan,
    inp: &SelectiveInputs<&[f64], &[u8]>,
) -> Result<SelectiveOutputs<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let s = seq!(p, inp);
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let mut out = vec![0.0; bn * tn * dn];
    let mut hf = vec![0.0; bn * dn * ns];
    for b in 0..bn {
        for d in 0..dn {
            let (hs, ys) = s.states(b, d);
            for (t, y) in ys.into_iter().enumerate() {
                let i = s.btd(b, t, d);
                out[i] = match s.z {
                    Some(z) => y * z[i] * sigmoid(z[i]),
                    None => y,
                };
            }
            hf[(b * dn + d) * ns..][..ns].copy_from_slice(&hs[(tn - 1) * ns..]);
        }
    }
    Ok(SelectiveOutputs { out, h_final: hf })
}

/// Backward pass in f64.
pub fn backward(
    p: &SelectiveScan,
    inp: &SelectiveBackwardInputs<&[f64], &[u8]>,
) -> Result<SelectiveGrads<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let s = seq!(p, inp);
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let seq_n = bn * tn * dn;
    let mut g = SelectiveGrads {
        du: vec![0.0; seq_n],
        ddelta: vec![0.0; seq_n],
        da: vec![0.0; dn * ns],
        dbm: vec![0.0; p.spec(Arg::Bm).numel()],
        dcm: vec![0.0; p.spec(Arg::Cm).numel()],
        ddskip: vec![0.0; dn],
        dz: vec![0.0; seq_n],
        ddelta_bias: vec![0.0; dn],
        dh0: vec![0.0; bn * dn * ns],
    };
    for b in 0..bn {
        for d in 0..dn {
            let (hs, ys) = s.states(b, d);
            let h0 = &s.h0.map(|h0| h0[(b * dn + d) * ns..][..ns].to_vec());
            // hc[n]: the adjoint carried into step t from step t+1 (G_final at t = T-1)
            let mut hc: Vec<f64> = match inp.grad_final {
                Some(gf) => gf[(b * dn + d) * ns..][..ns].to_vec(),
                None => vec![0.0; ns],
            };
            for t in (0..tn).rev() {
                let i = s.btd(b, t, d);
                let (x, dt) = s.dt(b, t, d);
                let u = s.u[i];
                let go = inp.grad_out[i];
                let dy = match s.z {
                    Some(z) => {
                        let sg = sigmoid(z[i]);
                        g.dz[i] = go * ys[t] * sg * (1.0 + z[i] * (1.0 - sg));
                        go * z[i] * sg
                    }
                    None => go,
                };
                g.ddskip[d] += dy * u;
                let reset = s.reset(b, t);
                let (mut s1, mut s2) = (0.0, 0.0);
                for n in 0..ns {
                    let an = s.a[d * ns + n];
                    let bc = s.bc(b, t, d, n);
                    let hh = dy * s.cm[bc] + hc[n];
                    let hprev = if t > 0 {
                        hs[(t - 1) * ns + n]
                    } else {
                        h0.as_ref().map_or(0.0, |h| h[n])
                    };
                    s1 += s.bm[bc] * hh;
                    g.dbm[bc] += dt * u * hh;
                    g.dcm[bc] += dy * hs[t * ns + n];
                    // across a reset nothing flows either way (select, not a multiply by 0)
                    if reset {
                        hc[n] = 0.0;
                    } else {
                        let decay = (dt * an).exp();
                        s2 += an * decay * hprev * hh;
                        g.da[d * ns + n] += dt * decay * hprev * hh;
                        hc[n] = decay * hh;
                    }
                }
                g.du[i] = dt * s1 + s.dskip(d) * dy;
                let ddt = u * s1 + s2;
                g.ddelta[i] = if p.softplus {
                    ddt * softplus_grad(x)
                } else {
                    ddt
                };
                g.ddelta_bias[d] += g.ddelta[i];
            }
            g.dh0[(b * dn + d) * ns..][..ns].copy_from_slice(&hc);
        }
    }
    Ok(g)
}
