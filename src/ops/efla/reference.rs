//! f64 CPU reference of EFLA / the delta rule: the recurrent algorithm (token by token, docs/efla.md
//! as written) and the chunked WY algorithm the GPU kernels port, both forward and backward.
//! [`forward`] and [`backward`] dispatch on the problem's [`Algorithm`].
//!
//! Everything works per `(batch row, head)`: the head's sequences are gathered into small
//! row-major matrices (`q: [T][K]`, `v: [T][V]`, state `S: [K][V]`), processed, and scattered
//! back. The recurrent backward keeps every step's state (`O(T K V)` memory per head, the most
//! direct transcription); the chunked one keeps each chunk's incoming state only.

// Index loops read like the equations they transcribe.
#![allow(clippy::needless_range_loop)]

use super::{Algorithm, Arg, Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs, Rule};
use crate::error::Result;
use crate::ops::Problem;

/// `g(x) = (1 - exp(-x)) / x`, evaluated as `-expm1(-x) / x`, with `g(0) = 1`.
pub fn g(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        -(-x).exp_m1() / x
    }
}

/// `g'(x)`: the series `-1/2 + x/3 - x^2/8 + x^3/30 - ...` (term `n`: `(-1)^n n x^(n-1) /
/// (n+1)!`) for `|x| < 0.1`, else the closed form `(x exp(-x) + expm1(-x)) / x^2`.
pub fn g_prime(x: f64) -> f64 {
    if x.abs() < 0.1 {
        // Horner over n = 1..=12; the first omitted term is below 1e-22.
        let mut s = 0.0;
        let mut fact = 1.0; // (n+1)!
        let mut terms = [0.0; 13];
        for (n, t) in terms.iter_mut().enumerate().skip(1) {
            fact *= (n + 1) as f64;
            let sign = if n % 2 == 1 { -1.0 } else { 1.0 };
            *t = sign * n as f64 / fact;
        }
        for t in terms[1..].iter().rev() {
            s = s * x + t;
        }
        s
    } else {
        (x * (-x).exp() + (-x).exp_m1()) / (x * x)
    }
}

/// Per-step coefficients of a rule: `(alpha, dk_factor, dbeta_factor)` with
/// `dbeta = dalpha * dbeta_factor` and `dk += k * dalpha * dk_factor`
/// (EFLA: `2 beta^2 g'(beta lambda)` and `exp(-beta lambda)`; delta rule: `0` and `1`).
pub fn coefficients(rule: Rule, beta: f64, lambda: f64) -> (f64, f64, f64) {
    match rule {
        Rule::Efla => {
            let x = beta * lambda;
            (beta * g(x), 2.0 * beta * beta * g_prime(x), (-x).exp())
        }
        Rule::Delta => (beta, 0.0, 1.0),
    }
}

/// One head's inputs, gathered.
struct Head {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    beta: Vec<f64>,
    start: Vec<bool>,
    s0: Vec<f64>,
    /// `grad_o` (backward only).
    go: Vec<f64>,
    /// `grad_final` (backward only).
    gf: Vec<f64>,
}

/// One head's gradients.
struct HeadGrads {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    dbeta: Vec<f64>,
    ds0: Vec<f64>,
}

/// Layout facts shared by gather and scatter.
#[derive(Clone, Copy)]
struct Lay {
    t: usize,
    h: usize,
    k: usize,
    v: usize,
}

impl Lay {
    fn new(p: &Efla) -> Self {
        Lay {
            t: p.len,
            h: p.heads,
            k: p.key_dim,
            v: p.value_dim,
        }
    }
    /// Index of `(b, t, h, 0)` in a `[B, T, H, n]` tensor.
    fn seq(&self, b: usize, t: usize, h: usize, n: usize) -> usize {
        ((b * self.t + t) * self.h + h) * n
    }
    fn gather(&self, src: &[f64], b: usize, h: usize, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.t * n);
        for t in 0..self.t {
            let i = self.seq(b, t, h, n);
            out.extend_from_slice(&src[i..i + n]);
        }
        out
    }
    fn scatter(&self, dst: &mut [f64], src: &[f64], b: usize, h: usize, n: usize) {
        for t in 0..self.t {
            let i = self.seq(b, t, h, n);
            dst[i..i + n].copy_from_slice(&src[t * n..(t + 1) * n]);
        }
    }
    fn state(&self, b: usize, h: usize) -> std::ops::Range<usize> {
        let n = self.k * self.v;
        (b * self.h + h) * n..(b * self.h + h + 1) * n
    }
}

#[allow(clippy::too_many_arguments)]
fn gather_head(
    lay: Lay,
    b: usize,
    h: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    beta: &[f64],
    s0: Option<&[f64]>,
    start: Option<&[u8]>,
) -> Head {
    Head {
        q: lay.gather(q, b, h, lay.k),
        k: lay.gather(k, b, h, lay.k),
        v: lay.gather(v, b, h, lay.v),
        beta: lay.gather(beta, b, h, 1),
        start: (0..lay.t)
            .map(|t| start.is_some_and(|s| s[b * lay.t + t] != 0))
            .collect(),
        s0: s0.map_or_else(|| vec![0.0; lay.k * lay.v], |s| s[lay.state(b, h)].to_vec()),
        go: Vec::new(),
        gf: Vec::new(),
    }
}

/// Forward pass in f64 (recurrent or chunked, by `p.algorithm`).
pub fn forward(p: &Efla, inp: &EflaInputs<&[f64], &[u8]>) -> Result<EflaOutputs<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let lay = Lay::new(p);
    let mut o = vec![0.0; p.spec(Arg::O).numel()];
    let mut sf = vec![0.0; p.spec(Arg::SFinal).numel()];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let hd = gather_head(lay, b, h, inp.q, inp.k, inp.v, inp.beta, inp.s0, inp.start);
            let (oh, sh) = match p.algorithm {
                Algorithm::Recurrent => recurrent_forward(p, &hd).0,
                Algorithm::Chunked { chunk } => {
                    let (oh, sh, _) = chunked_forward(p, &hd, chunk);
                    (oh, sh)
                }
            };
            lay.scatter(&mut o, &oh, b, h, lay.v);
            sf[lay.state(b, h)].copy_from_slice(&sh);
        }
    }
    Ok(EflaOutputs { o, s_final: sf })
}

/// Backward pass in f64 (recurrent or chunked, by `p.algorithm`).
pub fn backward(p: &Efla, inp: &EflaBackwardInputs<&[f64], &[u8]>) -> Result<EflaGrads<Vec<f64>>> {
    p.validate()?;
    inp.check(p)?;
    let lay = Lay::new(p);
    let mut g = EflaGrads {
        dq: vec![0.0; p.spec(Arg::Dq).numel()],
        dk: vec![0.0; p.spec(Arg::Dk).numel()],
        dv: vec![0.0; p.spec(Arg::Dv).numel()],
        dbeta: vec![0.0; p.spec(Arg::Dbeta).numel()],
        ds0: vec![0.0; p.spec(Arg::Ds0).numel()],
    };
    for b in 0..p.batch {
        for h in 0..p.heads {
            let mut hd = gather_head(lay, b, h, inp.q, inp.k, inp.v, inp.beta, inp.s0, inp.start);
            hd.go = lay.gather(inp.grad_o, b, h, lay.v);
            hd.gf = inp
                .grad_final
                .map_or_else(|| vec![0.0; lay.k * lay.v], |s| s[lay.state(b, h)].to_vec());
            let hg = match p.algorithm {
                Algorithm::Recurrent => recurrent_backward(p, &hd),
                Algorithm::Chunked { chunk } => chunked_backward(p, &hd, chunk),
            };
            lay.scatter(&mut g.dq, &hg.dq, b, h, lay.k);
            lay.scatter(&mut g.dk, &hg.dk, b, h, lay.k);
            lay.scatter(&mut g.dv, &hg.dv, b, h, lay.v);
            lay.scatter(&mut g.dbeta, &hg.dbeta, b, h, 1);
            g.ds0[lay.state(b, h)].copy_from_slice(&hg.ds0);
        }
    }
    Ok(g)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ------------------------------------------------------------------ recurrent

/// What the recurrent backward needs from the forward: per step the state before the update
/// (`P`, after the reset), the state after it, `u = v - P^T k`, and the coefficients.
struct Trace {
    p: Vec<Vec<f64>>,
    s: Vec<Vec<f64>>,
    u: Vec<Vec<f64>>,
    coef: Vec<(f64, f64, f64)>,
}

fn recurrent_forward(p: &Efla, hd: &Head) -> ((Vec<f64>, Vec<f64>), Trace) {
    let (kd, vd, tn) = (p.key_dim, p.value_dim, p.len);
    let scale = p.scale_f64();
    let mut s = hd.s0.clone();
    let mut o = vec![0.0; tn * vd];
    let mut tr = Trace {
        p: Vec::new(),
        s: Vec::new(),
        u: Vec::new(),
        coef: Vec::new(),
    };
    for t in 0..tn {
        if hd.start[t] {
            s.iter_mut().for_each(|x| *x = 0.0);
        }
        let k = &hd.k[t * kd..(t + 1) * kd];
        let q = &hd.q[t * kd..(t + 1) * kd];
        let c = coefficients(p.rule, hd.beta[t], dot(k, k));
        let a = c.0;
        let u: Vec<f64> = (0..vd)
            .map(|j| hd.v[t * vd + j] - (0..kd).map(|r| k[r] * s[r * vd + j]).sum::<f64>())
            .collect();
        tr.p.push(s.clone());
        for r in 0..kd {
            for j in 0..vd {
                s[r * vd + j] += a * k[r] * u[j];
            }
        }
        for j in 0..vd {
            o[t * vd + j] = scale * (0..kd).map(|r| q[r] * s[r * vd + j]).sum::<f64>();
        }
        tr.s.push(s.clone());
        tr.u.push(u);
        tr.coef.push(c);
    }
    ((o, s), tr)
}

fn recurrent_backward(p: &Efla, hd: &Head) -> HeadGrads {
    let (kd, vd, tn) = (p.key_dim, p.value_dim, p.len);
    let scale = p.scale_f64();
    let (_, tr) = recurrent_forward(p, hd);
    let mut g = HeadGrads {
        dq: vec![0.0; tn * kd],
        dk: vec![0.0; tn * kd],
        dv: vec![0.0; tn * vd],
        dbeta: vec![0.0; tn],
        ds0: vec![0.0; kd * vd],
    };
    let mut ds = hd.gf.clone();
    for t in (0..tn).rev() {
        let k = &hd.k[t * kd..(t + 1) * kd];
        let q = &hd.q[t * kd..(t + 1) * kd];
        let go = &hd.go[t * vd..(t + 1) * vd];
        let (a, fk, fb) = tr.coef[t];
        let (sp, st, u) = (&tr.p[t], &tr.s[t], &tr.u[t]);
        // dS_t += scale q_t do_t^T
        for r in 0..kd {
            for j in 0..vd {
                ds[r * vd + j] += scale * q[r] * go[j];
            }
        }
        // dq = scale S_t do_t;  w = dS_t^T k;  dv = alpha w;  dalpha = u . w
        let w: Vec<f64> = (0..vd)
            .map(|j| (0..kd).map(|r| k[r] * ds[r * vd + j]).sum())
            .collect();
        let dalpha = dot(u, &w);
        for r in 0..kd {
            g.dq[t * kd + r] = scale * dot(&st[r * vd..(r + 1) * vd], go);
            // dk = alpha (dS_t u - P w) + dk_factor dalpha k
            let row = dot(&ds[r * vd..(r + 1) * vd], u) - dot(&sp[r * vd..(r + 1) * vd], &w);
            g.dk[t * kd + r] = a * row + fk * dalpha * k[r];
        }
        for j in 0..vd {
            g.dv[t * vd + j] = a * w[j];
        }
        g.dbeta[t] = dalpha * fb;
        // dS_{t-1} = start_t ? 0 : (I - alpha k k^T) dS_t
        if hd.start[t] {
            ds.iter_mut().for_each(|x| *x = 0.0);
        } else {
            for r in 0..kd {
                for j in 0..vd {
                    ds[r * vd + j] -= a * k[r] * w[j];
                }
            }
        }
    }
    g.ds0 = ds;
    g
}

// ------------------------------------------------------------------ chunked (WY)

/// A small row-major matrix.
#[derive(Clone)]
struct Mat {
    r: usize,
    c: usize,
    d: Vec<f64>,
}

impl Mat {
    fn zeros(r: usize, c: usize) -> Self {
        Mat {
            r,
            c,
            d: vec![0.0; r * c],
        }
    }
    fn from(r: usize, c: usize, d: &[f64]) -> Self {
        Mat {
            r,
            c,
            d: d.to_vec(),
        }
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.d[i * self.c + j]
    }
    fn set(&mut self, i: usize, j: usize, v: f64) {
        self.d[i * self.c + j] = v;
    }
    fn t(&self) -> Mat {
        let mut m = Mat::zeros(self.c, self.r);
        for i in 0..self.r {
            for j in 0..self.c {
                m.set(j, i, self.at(i, j));
            }
        }
        m
    }
    fn mul(&self, o: &Mat) -> Mat {
        self.mul_masked(o, |_, _| true)
    }
    /// `self o` with only the terms `self(i, l) o(l, .)` where `keep(i, l)`: the chunked form's
    /// masks (a step of another segment, a later step, a step the carried state does not reach)
    /// are absent terms, not products with zero, so a NaN or infinity never crosses a reset
    /// (`0 * NaN` is NaN). Every kept term is an IEEE product, as in the recurrent form.
    fn mul_masked(&self, o: &Mat, keep: impl Fn(usize, usize) -> bool) -> Mat {
        assert_eq!(self.c, o.r);
        let mut m = Mat::zeros(self.r, o.c);
        for i in 0..self.r {
            for l in 0..self.c {
                if keep(i, l) {
                    let a = self.at(i, l);
                    for j in 0..o.c {
                        m.d[i * o.c + j] += a * o.at(l, j);
                    }
                }
            }
        }
        m
    }
    /// The rows `i` with `mask[i] != 0`, the others 0 (a selection, never a product).
    fn select_rows(&self, mask: &[f64]) -> Mat {
        let mut m = self.clone();
        for i in 0..self.r {
            if mask[i] == 0.0 {
                m.d[i * self.c..(i + 1) * self.c].fill(0.0);
            }
        }
        m
    }
    /// `diag(s) self`.
    fn scale_rows(&self, s: &[f64]) -> Mat {
        let mut m = self.clone();
        for i in 0..self.r {
            for j in 0..self.c {
                m.d[i * self.c + j] *= s[i];
            }
        }
        m
    }
    /// `self diag(s)`.
    fn scale_cols(&self, s: &[f64]) -> Mat {
        let mut m = self.clone();
        for i in 0..self.r {
            for j in 0..self.c {
                m.d[i * self.c + j] *= s[j];
            }
        }
        m
    }
    fn add(&self, o: &Mat) -> Mat {
        let mut m = self.clone();
        m.d.iter_mut().zip(&o.d).for_each(|(a, b)| *a += b);
        m
    }
    fn sub(&self, o: &Mat) -> Mat {
        let mut m = self.clone();
        m.d.iter_mut().zip(&o.d).for_each(|(a, b)| *a -= b);
        m
    }
    fn scaled(&self, s: f64) -> Mat {
        let mut m = self.clone();
        m.d.iter_mut().for_each(|a| *a *= s);
        m
    }
}

/// The reset structure of one chunk of `n` steps: `seg[i]` is the last reset at or before
/// step `i` inside the chunk (`None`: no reset yet, the carried state is in play).
struct Segs {
    seg: Vec<Option<usize>>,
}

impl Segs {
    fn new(start: &[bool]) -> Self {
        let mut last = None;
        let seg = start
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                if s {
                    last = Some(i);
                }
                last
            })
            .collect();
        Segs { seg }
    }
    /// Steps `i` and `j <= i` are in the same segment (no reset in `(j, i]`).
    fn same(&self, i: usize, j: usize) -> bool {
        self.seg[i].is_none_or(|s| s <= j)
    }
    /// Entry `(i, j)` of a lower-triangular matrix block diagonal over the segments.
    fn lower(&self, i: usize, j: usize) -> bool {
        j <= i && self.same(i, j)
    }
    /// Steps `i` and `j` in the same segment (either order).
    fn same_any(&self, i: usize, j: usize) -> bool {
        self.lower(i.max(j), i.min(j))
    }
    /// `c_i`: the carried state reaches step `i`.
    fn c(&self) -> Vec<f64> {
        self.seg
            .iter()
            .map(|s| f64::from(u8::from(s.is_none())))
            .collect()
    }
    /// `e_i`: step `i` is in the chunk's last segment.
    fn e(&self) -> Vec<f64> {
        let last = *self.seg.last().expect("non-empty chunk");
        self.seg
            .iter()
            .map(|&s| f64::from(u8::from(s == last)))
            .collect()
    }
    fn c_last(&self) -> f64 {
        f64::from(u8::from(
            self.seg.last().expect("non-empty chunk").is_none(),
        ))
    }
}

/// One chunk's forward quantities (kept for the backward).
struct Chunk {
    t0: usize,
    n: usize,
    segs: Segs,
    q: Mat,
    k: Mat,
    v: Mat,
    coef: Vec<(f64, f64, f64)>,
    alpha: Vec<f64>,
    gm: Mat,
    pm: Mat,
    x: Mat,
    w: Mat,
    delta: Mat,
    s_in: Mat,
}

/// Gram, triangular solve and WY vectors of one chunk (everything independent of the state).
fn chunk_prep(p: &Efla, hd: &Head, t0: usize, n: usize) -> (Chunk, Mat) {
    let (kd, vd) = (p.key_dim, p.value_dim);
    let q = Mat::from(n, kd, &hd.q[t0 * kd..(t0 + n) * kd]);
    let k = Mat::from(n, kd, &hd.k[t0 * kd..(t0 + n) * kd]);
    let v = Mat::from(n, vd, &hd.v[t0 * vd..(t0 + n) * vd]);
    let segs = Segs::new(&hd.start[t0..t0 + n]);
    let kk = k.mul(&k.t());
    let qk = q.mul(&k.t());
    let coef: Vec<_> = (0..n)
        .map(|i| coefficients(p.rule, hd.beta[t0 + i], kk.at(i, i)))
        .collect();
    let alpha: Vec<f64> = coef.iter().map(|c| c.0).collect();
    let mut gm = Mat::zeros(n, n);
    let mut pm = Mat::zeros(n, n);
    for i in 0..n {
        for j in 0..=i {
            if segs.same(i, j) {
                if j < i {
                    gm.set(i, j, kk.at(i, j));
                }
                pm.set(i, j, qk.at(i, j));
            }
        }
    }
    // X = (I + diag(alpha) Gm)^{-1} by forward substitution, one column at a time:
    // X_kk = 1, X_ik = -alpha_i sum_{k <= j < i} Gm_ij X_jk.
    // (X is block diagonal over the segments: the sum runs over the steps of one.)
    let mut x = Mat::zeros(n, n);
    for col in 0..n {
        x.set(col, col, 1.0);
        for i in col + 1..n {
            if segs.same(i, col) {
                let s: f64 = (col..i).map(|j| gm.at(i, j) * x.at(j, col)).sum();
                x.set(i, col, -alpha[i] * s);
            }
        }
    }
    let t = x.scale_cols(&alpha);
    let w = t.mul_masked(&k, |i, j| segs.lower(i, j));
    let u = t.mul_masked(&v, |i, j| segs.lower(i, j));
    let ch = Chunk {
        t0,
        n,
        segs,
        q,
        k,
        v,
        coef,
        alpha,
        gm,
        pm,
        x,
        w,
        delta: Mat::zeros(0, 0),
        s_in: Mat::zeros(0, 0),
    };
    (ch, u)
}

fn chunks(tn: usize, c: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..tn).step_by(c).map(move |t0| (t0, c.min(tn - t0)))
}

/// The chunked forward of one head: `(o, s_final, chunks)`.
fn chunked_forward(p: &Efla, hd: &Head, c: usize) -> (Vec<f64>, Vec<f64>, Vec<Chunk>) {
    let (kd, vd, tn) = (p.key_dim, p.value_dim, p.len);
    let scale = p.scale_f64();
    let mut s = Mat::from(kd, vd, &hd.s0);
    let mut o = vec![0.0; tn * vd];
    let mut out = Vec::new();
    for (t0, n) in chunks(tn, c) {
        let (mut ch, u) = chunk_prep(p, hd, t0, n);
        let (cv, ev) = (ch.segs.c(), ch.segs.e());
        let sg = &ch.segs;
        // delta = U - diag(c) W S_in
        let delta = u.sub(&ch.w.mul(&s).select_rows(&cv));
        // O = scale (diag(c) Q S_in + Pm delta)
        let oc =
            ch.q.mul(&s)
                .select_rows(&cv)
                .add(&ch.pm.mul_masked(&delta, |i, j| sg.lower(i, j)))
                .scaled(scale);
        o[t0 * vd..(t0 + n) * vd].copy_from_slice(&oc.d);
        // S_out = c_last S_in + K^T diag(e) delta
        let kd_ = ch.k.t().mul_masked(&delta, |_, j| ev[j] != 0.0);
        let s_out = if sg.c_last() != 0.0 { s.add(&kd_) } else { kd_ };
        ch.delta = delta;
        ch.s_in = s;
        s = s_out;
        out.push(ch);
    }
    (o, s.d, out)
}

/// The chunked backward of one head (see the module docs of [`super`] for the forward it
/// differentiates).
fn chunked_backward(p: &Efla, hd: &Head, c: usize) -> HeadGrads {
    let (kd, vd, tn) = (p.key_dim, p.value_dim, p.len);
    let scale = p.scale_f64();
    let (_, _, chs) = chunked_forward(p, hd, c);
    let mut g = HeadGrads {
        dq: vec![0.0; tn * kd],
        dk: vec![0.0; tn * kd],
        dv: vec![0.0; tn * vd],
        dbeta: vec![0.0; tn],
        ds0: vec![0.0; kd * vd],
    };
    // Reverse state pass: dS_end of every chunk and d(delta).
    let mut ds = Mat::from(kd, vd, &hd.gf);
    let mut ds_end = Vec::new();
    let mut ddelta = Vec::new();
    for ch in chs.iter().rev() {
        let (cv, ev) = (ch.segs.c(), ch.segs.e());
        let sg = &ch.segs;
        let dout = Mat::from(ch.n, vd, &hd.go[ch.t0 * vd..(ch.t0 + ch.n) * vd]);
        // d(delta) = scale Pm^T dO + diag(e) K dS_end
        let dd = ch
            .pm
            .t()
            .mul_masked(&dout, |j, i| sg.lower(i, j))
            .scaled(scale)
            .add(&ch.k.mul(&ds).select_rows(&ev));
        // dS_in = c_last dS_end + scale Q^T diag(c) dO - W^T diag(c) d(delta)
        let inner =
            ch.q.t()
                .mul_masked(&dout, |_, i| cv[i] != 0.0)
                .scaled(scale)
                .sub(&ch.w.t().mul_masked(&dd, |_, i| cv[i] != 0.0));
        let ds_in = if sg.c_last() != 0.0 {
            ds.add(&inner)
        } else {
            inner
        };
        ds_end.push(ds);
        ddelta.push(dd);
        ds = ds_in;
    }
    ds_end.reverse();
    ddelta.reverse();
    g.ds0 = ds.d;
    for ((ch, dse), dd) in chs.iter().zip(&ds_end).zip(&ddelta) {
        let n = ch.n;
        let (cv, ev) = (ch.segs.c(), ch.segs.e());
        let sg = &ch.segs;
        let dout = Mat::from(n, vd, &hd.go[ch.t0 * vd..(ch.t0 + n) * vd]);
        // dPm = scale mask(dO delta^T)
        let mut dpm = dout.mul(&ch.delta.t()).scaled(scale);
        for i in 0..n {
            for j in 0..n {
                if j > i || !ch.segs.same(i, j) {
                    dpm.set(i, j, 0.0);
                }
            }
        }
        // dW = -diag(c) d(delta) S_in^T
        let dw = dd.mul(&ch.s_in.t()).select_rows(&cv).scaled(-1.0);
        // dT = d(delta) V^T + dW K^T;  T = X diag(alpha) (only T's entries are used)
        let dt = dd.mul(&ch.v.t()).add(&dw.mul(&ch.k.t()));
        let mut dalpha = vec![0.0; n];
        for (j, da) in dalpha.iter_mut().enumerate() {
            *da = (j..n)
                .filter(|&i| sg.lower(i, j))
                .map(|i| ch.x.at(i, j) * dt.at(i, j))
                .sum();
        }
        let mut dx = Mat::zeros(n, n);
        for i in 0..n {
            for j in 0..=i {
                if sg.lower(i, j) {
                    dx.set(i, j, dt.at(i, j) * ch.alpha[j]);
                }
            }
        }
        // dA = -X^T dX X^T, restricted to the masked strictly-lower entries of L; N = dX X^T
        // over the entries of both triangular factors
        let mut nm = Mat::zeros(n, n);
        for a in 0..n {
            for j in 0..n {
                if sg.same_any(a, j) {
                    let s: f64 = (0..=a.min(j))
                        .filter(|&b| sg.lower(a, b) && sg.lower(j, b))
                        .map(|b| dx.at(a, b) * ch.x.at(j, b))
                        .sum();
                    nm.set(a, j, s);
                }
            }
        }
        let da = ch.x.t().mul_masked(&nm, |i, a| sg.lower(a, i)).scaled(-1.0);
        let mut dgm = Mat::zeros(n, n);
        for i in 0..n {
            for j in 0..i {
                if ch.segs.same(i, j) {
                    let dl = da.at(i, j);
                    dalpha[i] += dl * ch.gm.at(i, j);
                    dgm.set(i, j, ch.alpha[i] * dl);
                }
            }
        }
        // dQ = scale diag(c) dO S_in^T + dPm K
        let dq = dout
            .mul(&ch.s_in.t())
            .select_rows(&cv)
            .scaled(scale)
            .add(&dpm.mul_masked(&ch.k, |i, j| sg.lower(i, j)));
        // dK = dPm^T Q + diag(e) delta dS_end^T + diag(alpha) X^T dW + (dGm + dGm^T) K
        let up = |j: usize, i: usize| sg.lower(i, j);
        let mut dk = dpm
            .t()
            .mul_masked(&ch.q, up)
            .add(&ch.delta.mul(&dse.t()).select_rows(&ev))
            .add(&ch.x.t().mul_masked(&dw, up).scale_rows(&ch.alpha))
            .add(
                &dgm.add(&dgm.t())
                    .mul_masked(&ch.k, |i, j| sg.same_any(i, j)),
            );
        // dV = diag(alpha) X^T d(delta)
        let dv = ch.x.t().mul_masked(dd, up).scale_rows(&ch.alpha);
        for i in 0..n {
            let (_, fk, fb) = ch.coef[i];
            for r in 0..kd {
                let kv = ch.k.at(i, r);
                dk.d[i * kd + r] += fk * dalpha[i] * kv;
            }
            g.dbeta[ch.t0 + i] = dalpha[i] * fb;
        }
        let t0 = ch.t0;
        g.dq[t0 * kd..(t0 + n) * kd].copy_from_slice(&dq.d);
        g.dk[t0 * kd..(t0 + n) * kd].copy_from_slice(&dk.d);
        g.dv[t0 * vd..(t0 + n) * vd].copy_from_slice(&dv.d);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_and_its_derivative() {
        assert_eq!(g(0.0), 1.0);
        for &x in &[1e-12f64, 1e-6, 0.01, 0.0999, 0.1, 0.5, 1.0, 3.0, 30.0, 1e4] {
            let h = 1e-4 * x.max(1.0);
            let fd = (g(x + h) - g(x - h)) / (2.0 * h);
            let gp = g_prime(x);
            assert!(
                (gp - fd).abs() <= 1e-6 * fd.abs().max(1e-8),
                "g'({x}) = {gp}, fd {fd}"
            );
        }
        // series and closed form agree at the switch
        let x = 0.0999999f64;
        let a = g_prime(x);
        let b = (x * (-x).exp() + (-x).exp_m1()) / (x * x);
        assert!((a - b).abs() < 1e-13, "{a} vs {b}");
        assert_eq!(g_prime(0.0), -0.5);
    }
}
