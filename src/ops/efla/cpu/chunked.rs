//! The chunked WY algorithm of EFLA and the delta rule on the CPU, forward and backward, with
//! its chunk products on the `gemm` crate family (`gemm-f32`, single-threaded calls). See the
//! [parent module](super) for the algorithm's place, its cost and its accuracy.
//!
//! **Pieces.** Each `(batch row, head)` walks its sequence in *pieces*: runs of at most
//! `chunk` steps that end early at a reset, so that a reset can only be a piece's first step.
//! A piece that starts with a reset starts from a zero state (a fill, never a multiply), its
//! products never read a step before the reset, and the backward drops the state gradient
//! that would flow past it (a fill again). No masking across resets is needed, and a NaN or
//! infinity before a reset never reaches a result after it. (Inside a piece the products run
//! over all its steps, so a non-finite value can also reach the piece's earlier steps,
//! through `0 * NaN` in a triangular factor.)
//!
//! **Forward of one piece** (`n` steps, `K_c`, `Q_c`: `n x K`, `V_c`: `n x V`, state `S`:
//! `K x V`), with `L = strict_lower(K_c K_c^T)` and `P = lower(Q_c K_c^T)`:
//!
//! ```text
//! X     = (I + diag(alpha) L)^{-1}         (unit lower triangular, by substitution)
//! R     = V_c - K_c S                      (R = V_c when the piece starts with a reset)
//! delta = X diag(alpha) R
//! O     = scale (Q_c S + P delta)
//! S    <- S + K_c^T delta
//! ```
//!
//! The products, on `[Q_c; K_c]` stacked: `Q_c K_c^T` and `K_c K_c^T` (lower triangles only),
//! `[Q_c; K_c] S`, `X (alpha R)`, `P delta` (triangular factors: their zero block skipped) and
//! `K_c^T delta`. `X` comes from forward substitution by rows, summed in registers.
//!
//! **Backward.** A forward sweep stores each piece's incoming state, `X`, `L`, `P`, `R` and
//! `delta` (the forward's products but `Q_c S` and `P delta`); then the pieces are walked
//! from the end with `dS` (the gradient of the state leaving the piece, `grad_final` at
//! first):
//!
//! ```text
//! d_delta = scale P^T dO + K_c dS
//! Y       = X^T d_delta,   dR = diag(alpha) Y,   dV = dR
//! dalpha  = rowsum(R o Y) + rowsum(dA o L),      dA = -strict_lower(Y delta^T)
//! dP      = scale lower(dO delta^T),             dL = diag(alpha) dA
//! dQ      = scale dO S^T + dP K_c
//! dK      = delta dS^T - dR S^T + dP^T Q_c + (dL + dL^T) K_c  (+ the alpha(||k||^2) term)
//! dS     <- dS + scale Q_c^T dO - K_c^T dR     (zero when the piece starts with a reset)
//! ```
//!
//! (`Y` is `d(alpha R)`: differentiating `delta = A^{-1} Z` gives `dZ = A^{-T} d_delta` and
//! `dA = -dZ delta^T`, so neither `X diag(alpha)` nor its gradient is formed.) Nine product
//! groups per piece, stacked where they share a factor: `[dP; dA]` from `[scale dO; -Y]
//! delta^T`, `[dQ; dK] += [scale dO; -dR] S^T`, `dS += [Q_c; K_c]^T [scale dO; -dR]` and
//! `dK += [dP^T, dL + dL^T] [Q_c; K_c]`. The per-step coefficient terms (`dbeta`, EFLA's `g'`
//! term of `dk`) are those of the recurrent backward.

// Index loops over small matrices read like the equations.
#![allow(clippy::needless_range_loop)]

use super::{axpy, dot, Ctx};
use crate::ops::efla::Efla;
use crate::runtime::cpu::DisjointOut;
use gemm_common::Parallelism;

// ------------------------------------------------------------------ GEMM on strided views

/// A read-only matrix inside a slice: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    d: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `rows x cols`, row-major with row stride `rs` (columns contiguous).
    #[inline(always)]
    fn new(d: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        View {
            d,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
    /// The transpose (no copy).
    #[inline(always)]
    fn t(self) -> Self {
        View {
            d: self.d,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// Rows `r0..r1` and columns `c0..c1` (both ranges non-empty and inside the view).
    #[inline(always)]
    fn sub(self, r0: usize, r1: usize, c0: usize, c1: usize) -> Self {
        View {
            d: &self.d[r0 * self.rs + c0 * self.cs..],
            rows: r1 - r0,
            cols: c1 - c0,
            rs: self.rs,
            cs: self.cs,
        }
    }
    /// Every element lies inside the slice.
    #[inline(always)]
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.d.len()
    }
}

/// `dst = keep * dst + alpha * a b` for a row-major `dst` (`a.rows x b.cols`, row stride
/// `ld`); `keep: None` overwrites `dst` without reading it. One single-threaded call of
/// `gemm-f32` (so the result does not depend on the thread pool).
#[inline(always)]
fn mm(dst: &mut [f32], ld: usize, keep: Option<f32>, alpha: f32, a: View<'_>, b: View<'_>) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(b.rows == k && a.in_bounds() && b.in_bounds());
    assert!(m == 0 || n == 0 || (ld >= n && (m - 1) * ld + n <= dst.len()));
    let f = gemm_f32::gemm::f32::get_gemm_fn();
    // SAFETY: the call reads `a[i * rs + j * cs]` and `b[..]` for `i < rows`, `j < cols`, and
    // reads (when `keep` is set) and writes `dst[i * ld + j]` for `i < m`, `j < n`: all inside
    // their slices (asserted above), so every offset fits `isize` (slices span at most
    // `isize::MAX` bytes); `dst`'s rows do not overlap (`ld >= n`); `dst` is borrowed mutably,
    // so it overlaps neither `a` nor `b`; with `read_dst` false the call does not read `dst`;
    // `Parallelism::None` runs it on this thread, with no state shared between calls but its
    // own thread-local scratch.
    unsafe {
        f(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            keep.is_some(),
            a.d.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            keep.unwrap_or(0.0),
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Where the triangular products split an `n x n` triangle: half of it, rounded up to whole
/// 8-row groups (`0`: too small to gain from a split; one full product instead).
#[inline(always)]
fn split(n: usize) -> usize {
    if n < 32 {
        0
    } else {
        (n / 2).next_multiple_of(8)
    }
}

/// [`mm`] for a lower-triangular `a` (`n x n`): the zero block above the diagonal is skipped
/// (never read).
#[inline(always)]
fn mm_lo(dst: &mut [f32], ld: usize, keep: Option<f32>, alpha: f32, a: View<'_>, b: View<'_>) {
    let (n, h) = (a.rows, split(a.rows));
    if h == 0 {
        return mm(dst, ld, keep, alpha, a, b);
    }
    mm(
        dst,
        ld,
        keep,
        alpha,
        a.sub(0, h, 0, h),
        b.sub(0, h, 0, b.cols),
    );
    mm(&mut dst[h * ld..], ld, keep, alpha, a.sub(h, n, 0, n), b);
}

/// [`mm`] for an upper-triangular `a` (`n x n`): the zero block below the diagonal is skipped
/// (never read).
#[inline(always)]
fn mm_up(dst: &mut [f32], ld: usize, keep: Option<f32>, alpha: f32, a: View<'_>, b: View<'_>) {
    let (n, h) = (a.rows, split(a.rows));
    if h == 0 {
        return mm(dst, ld, keep, alpha, a, b);
    }
    mm(dst, ld, keep, alpha, a.sub(0, h, 0, n), b);
    let b1 = b.sub(h, n, 0, b.cols);
    mm(&mut dst[h * ld..], ld, keep, alpha, a.sub(h, n, h, n), b1);
}

/// `dst = alpha a b` (`n x n`) where only the lower triangle (with the diagonal) is wanted: the
/// block above it is not computed (left as it was).
#[inline(always)]
fn mm_lo_out(dst: &mut [f32], ld: usize, alpha: f32, a: View<'_>, b: View<'_>) {
    let (n, h) = (a.rows, split(a.rows));
    if h == 0 {
        return mm(dst, ld, None, alpha, a, b);
    }
    mm(
        dst,
        ld,
        None,
        alpha,
        a.sub(0, h, 0, a.cols),
        b.sub(0, b.rows, 0, h),
    );
    mm(
        &mut dst[h * ld..],
        ld,
        None,
        alpha,
        a.sub(h, n, 0, a.cols),
        b,
    );
}

// ------------------------------------------------------------------ pieces

/// The pieces of row `b`: `(t0, n)`, at most `chunk` steps each, a reset only at a first step.
fn pieces(c: &Ctx, b: usize, chunk: usize) -> Vec<(usize, usize)> {
    let tn = c.p.len;
    let mut out = Vec::with_capacity(tn.div_ceil(chunk));
    let mut t0 = 0;
    while t0 < tn {
        let mut n = 1;
        while n < chunk && t0 + n < tn && !c.reset(b, t0 + n) {
            n += 1;
        }
        out.push((t0, n));
        t0 += n;
    }
    out
}

/// Copy the `n` rows of one head of a `[B, T, H, d]` tensor from step `t0` on into `dst`
/// (`n x d`, contiguous).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather(c: &Ctx, x: &[f32], b: usize, h: usize, t0: usize, n: usize, d: usize, dst: &mut [f32]) {
    for (i, row) in dst[..n * d].chunks_exact_mut(d).enumerate() {
        row.copy_from_slice(&x[c.row(b, t0 + i, h) * d..][..d]);
    }
}

/// The row stride of `X`: the chunk rounded up to whole 8-lane groups.
#[inline(always)]
fn x_stride(chunk: usize) -> usize {
    chunk.next_multiple_of(8)
}

/// `acc = sum_{l < i} g[l] X_l[..8 G]` (the rows `X_l` of stride `lx` in `done`), summed in
/// registers, written to `xi[..8 G]`.
#[inline(always)]
fn x_row<const G: usize>(xi: &mut [f32], done: &[f32], g: &[f32], lx: usize, i: usize) {
    let mut acc = [[0.0f32; 8]; G];
    for l in 0..i {
        let gl = g[l];
        let xl = &done[l * lx..][..8 * G];
        for (a, x) in acc.iter_mut().zip(xl.chunks_exact(8)) {
            for j in 0..8 {
                a[j] += gl * x[j];
            }
        }
    }
    for (x, a) in xi[..8 * G].chunks_exact_mut(8).zip(&acc) {
        x.copy_from_slice(a);
    }
}

/// The state-independent part of a piece, from `qk = [Q_c; K_c]` (`2n x K`): `pg = [P; G]`
/// (`2n x n`, row stride `ld`) with `P = lower(Q_c K_c^T)` and `G = K_c K_c^T` (only its
/// strict lower part is computed and used), and `X = (I + diag(alpha) strict_lower(G))^{-1}`
/// (`n x n`, row stride [`x_stride`], zero above the diagonal).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn prep(
    qk: &[f32],
    n: usize,
    kd: usize,
    ld: usize,
    lx: usize,
    alpha: &[f32],
    pg: &mut [f32],
    x: &mut [f32],
) {
    let kc = View::new(&qk[n * kd..], n, kd, kd);
    mm_lo_out(pg, ld, 1.0, View::new(qk, n, kd, kd), kc.t());
    mm_lo_out(&mut pg[n * ld..], ld, 1.0, kc, kc.t());
    for i in 0..n {
        pg[i * ld + i + 1..i * ld + n].fill(0.0);
    }
    let g = &pg[n * ld..];
    // X_i = e_i - alpha_i sum_{l < i} G_il X_l, by rows; the rows X_l (l < i) are zero from
    // column i on, so the sums run over the first i columns, rounded up to whole 8-lane groups
    for i in 0..n {
        let (done, rest) = x.split_at_mut(i * lx);
        let xi = &mut rest[..lx];
        let gi = &g[i * ld..][..i];
        match i.div_ceil(8) {
            0 => {}
            1 => x_row::<1>(xi, done, gi, lx, i),
            2 => x_row::<2>(xi, done, gi, lx, i),
            3 => x_row::<3>(xi, done, gi, lx, i),
            4 => x_row::<4>(xi, done, gi, lx, i),
            5 => x_row::<5>(xi, done, gi, lx, i),
            6 => x_row::<6>(xi, done, gi, lx, i),
            7 => x_row::<7>(xi, done, gi, lx, i),
            _ => x_row::<8>(xi, done, gi, lx, i),
        }
        let a = -alpha[i];
        for v in xi[..i].iter_mut() {
            *v *= a;
        }
        xi[i] = 1.0;
        xi[i + 1..].fill(0.0);
    }
}

/// The shortest sequence the CPU runs with the chunked algorithm when a problem asks for it;
/// shorter ones (the `T = 1` decode step among them, which allocates nothing but its outputs
/// on the recurrent path) run the recurrent algorithm. Measured at `B = 2`, `H = 4`,
/// `K = V = 64`, chunks of 64, one thread: at `T = 8` forward + backward takes 0.23 ms
/// chunked and 0.38 ms recurrent (the forward alone 71 us and 59 us); from `T = 16` on the
/// two forwards are within 5% of each other and the chunked backward is about twice as fast.
pub const MIN_CHUNKED_LEN: usize = 8;

/// The chunk to run `p` with on the CPU: `Some` when the problem asks for the chunked
/// algorithm and has at least [`MIN_CHUNKED_LEN`] steps, `None` for the recurrent algorithm.
pub(super) fn chunk_of(p: &Efla) -> Option<usize> {
    p.chunk().filter(|_| p.len >= MIN_CHUNKED_LEN)
}

// ------------------------------------------------------------------ forward

/// One head's chunked forward: `s` enters as the initial state and leaves as the final one.
#[inline(always)]
pub(super) fn forward_head(
    c: &Ctx,
    b: usize,
    h: usize,
    chunk: usize,
    s: &mut [f32],
    wo: DisjointOut,
) {
    let (kd, vd) = (c.p.key_dim, c.p.value_dim);
    let ld = chunk;
    let mut qk = vec![0.0f32; 2 * ld * kd];
    let mut pg = vec![0.0f32; 2 * ld * ld];
    let lx = x_stride(chunk);
    let mut x = vec![0.0f32; ld * lx];
    // [Q S; K S], then [O; Z]
    let mut qks = vec![0.0f32; 2 * ld * vd];
    let mut d = vec![0.0f32; ld * vd];
    let mut alpha = vec![0.0f32; ld];
    for (t0, n) in pieces(c, b, chunk) {
        let reset = c.reset(b, t0);
        if reset {
            s.fill(0.0);
        }
        gather(c, c.q, b, h, t0, n, kd, &mut qk);
        gather(c, c.k, b, h, t0, n, kd, &mut qk[n * kd..]);
        for i in 0..n {
            alpha[i] = c.coef(c.row(b, t0 + i, h)).0;
        }
        prep(&qk, n, kd, ld, lx, &alpha, &mut pg, &mut x);
        let (os, zs) = qks.split_at_mut(n * vd);
        if reset {
            os.fill(0.0);
            zs[..n * vd].fill(0.0);
        } else {
            let qkv = View::new(&qk, 2 * n, kd, kd);
            mm(&mut qks, vd, None, 1.0, qkv, View::new(s, kd, vd, vd));
        }
        // Z = diag(alpha) (V - K S);  delta = X Z
        let (os, zs) = qks.split_at_mut(n * vd);
        for i in 0..n {
            let (a, vi) = (alpha[i], &c.v[c.row(b, t0 + i, h) * vd..][..vd]);
            for (z, v) in zs[i * vd..][..vd].iter_mut().zip(vi) {
                *z = a * (v - *z);
            }
        }
        mm_lo(
            &mut d,
            vd,
            None,
            1.0,
            View::new(&x, n, n, lx),
            View::new(zs, n, vd, vd),
        );
        // O = scale (Q S + P delta)
        let dv = View::new(&d, n, vd, vd);
        mm_lo(os, vd, Some(c.scale), c.scale, View::new(&pg, n, n, ld), dv);
        for i in 0..n {
            // SAFETY: this head's own rows; no other piece of the loop writes them.
            unsafe { wo.put(c.row(b, t0 + i, h) * vd, &os[i * vd..][..vd]) };
        }
        // S += K^T delta
        let kt = View::new(&qk[n * kd..], n, kd, kd).t();
        mm(s, vd, Some(1.0), 1.0, kt, dv);
    }
}

// ------------------------------------------------------------------ backward

/// What the backward's forward sweep keeps of one head.
pub(super) struct Saved {
    /// `(t0, n)` of every piece.
    pieces: Vec<(usize, usize)>,
    /// The state entering each piece (after its reset), `K x V` each.
    states: Vec<f32>,
    /// `[P; G]` (`2n x n`, row stride `chunk`) and `X` (`n x n`, row stride [`x_stride`]) of
    /// the piece at `t0`, from row `2 t0` and row `t0` on.
    pg: Vec<f32>,
    x: Vec<f32>,
    /// `R` and `delta` of step `t`: row `t` (`V` each).
    r: Vec<f32>,
    d: Vec<f32>,
    /// `(alpha, dk_factor, dbeta_factor)` of step `t`.
    coef: Vec<(f32, f32, f32)>,
}

/// The backward's forward sweep of one head.
#[inline(always)]
pub(super) fn sweep(c: &Ctx, b: usize, h: usize, chunk: usize, s0: &[f32]) -> Saved {
    let (tn, kd, vd) = (c.p.len, c.p.key_dim, c.p.value_dim);
    let kv = kd * vd;
    let ld = chunk;
    let lx = x_stride(chunk);
    let pieces = pieces(c, b, chunk);
    let mut sv = Saved {
        states: vec![0.0f32; pieces.len() * kv],
        pg: vec![0.0f32; 2 * tn * ld],
        x: vec![0.0f32; tn * lx],
        r: vec![0.0f32; tn * vd],
        d: vec![0.0f32; tn * vd],
        coef: (0..tn).map(|t| c.coef(c.row(b, t, h))).collect(),
        pieces,
    };
    let mut qk = vec![0.0f32; 2 * ld * kd];
    let mut z = vec![0.0f32; ld * vd];
    let mut alpha = vec![0.0f32; ld];
    for (pi, &(t0, n)) in sv.pieces.iter().enumerate() {
        let reset = c.reset(b, t0);
        // slot `pi` already holds the state the previous piece left (written below)
        let after = &mut sv.states[pi * kv..];
        let s = &mut after[..kv];
        if reset {
            s.fill(0.0);
        } else if pi == 0 {
            s.copy_from_slice(s0);
        }
        gather(c, c.q, b, h, t0, n, kd, &mut qk);
        gather(c, c.k, b, h, t0, n, kd, &mut qk[n * kd..]);
        for i in 0..n {
            alpha[i] = sv.coef[t0 + i].0;
        }
        let (pg, x) = (&mut sv.pg[2 * t0 * ld..], &mut sv.x[t0 * lx..]);
        prep(&qk, n, kd, ld, lx, &alpha, pg, x);
        let kc = View::new(&qk[n * kd..], n, kd, kd);
        // R = V - K S;  Z = diag(alpha) R;  delta = X Z
        let r = &mut sv.r[t0 * vd..][..n * vd];
        if reset {
            r.fill(0.0);
        } else {
            mm(r, vd, None, 1.0, kc, View::new(s, kd, vd, vd));
        }
        for i in 0..n {
            let (a, vi) = (alpha[i], &c.v[c.row(b, t0 + i, h) * vd..][..vd]);
            let ri = &mut r[i * vd..][..vd];
            for ((rv, zv), v) in ri.iter_mut().zip(&mut z[i * vd..][..vd]).zip(vi) {
                *rv = v - *rv;
                *zv = a * *rv;
            }
        }
        let d = &mut sv.d[t0 * vd..][..n * vd];
        let xv = View::new(x, n, n, lx);
        mm_lo(d, vd, None, 1.0, xv, View::new(&z, n, vd, vd));
        // the state entering the next piece (the last piece's is not needed)
        if pi + 1 < sv.pieces.len() {
            let (cur, next) = after.split_at_mut(kv);
            let next = &mut next[..kv];
            next.copy_from_slice(cur);
            mm(next, vd, Some(1.0), 1.0, kc.t(), View::new(d, n, vd, vd));
        }
    }
    sv
}

/// The gradient outputs the pieces of the parallel loop fill.
#[derive(Clone, Copy)]
pub(super) struct Grads {
    pub(super) q: DisjointOut,
    pub(super) k: DisjointOut,
    pub(super) v: DisjointOut,
    pub(super) b: DisjointOut,
}

/// One head's reverse walk over its pieces: `ds` enters as `grad_final` and leaves as `ds0`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn backward_head(
    c: &Ctx,
    b: usize,
    h: usize,
    chunk: usize,
    go: &[f32],
    sv: &Saved,
    ds: &mut [f32],
    w: Grads,
) {
    let (kd, vd) = (c.p.key_dim, c.p.value_dim);
    let kv = kd * vd;
    let ld = chunk;
    let lx = x_stride(chunk);
    let scale = c.scale;
    let mut qk = vec![0.0f32; 2 * ld * kd];
    let mut dd = vec![0.0f32; ld * vd];
    // E = [scale dO; -Y] and F = [scale dO; -dR]
    let mut e = vec![0.0f32; 2 * ld * vd];
    let mut f = vec![0.0f32; 2 * ld * vd];
    // [dQ; dK]
    let mut dqk = vec![0.0f32; 2 * ld * kd];
    // [dP; dA], then [dP^T, dL + dL^T] (n x 2n)
    let mut dpa = vec![0.0f32; 2 * ld * ld];
    let mut wm = vec![0.0f32; 2 * ld * ld];
    let mut dalpha = vec![0.0f32; ld];
    for (pi, &(t0, n)) in sv.pieces.iter().enumerate().rev() {
        let reset = c.reset(b, t0);
        gather(c, c.q, b, h, t0, n, kd, &mut qk);
        gather(c, c.k, b, h, t0, n, kd, &mut qk[n * kd..]);
        let qkv = View::new(&qk, 2 * n, kd, kd);
        let kc = View::new(&qk[n * kd..], n, kd, kd);
        for i in 0..n {
            let gi = &go[c.row(b, t0 + i, h) * vd..][..vd];
            for (e, g) in e[i * vd..][..vd].iter_mut().zip(gi) {
                *e = scale * g;
            }
        }
        f[..n * vd].copy_from_slice(&e[..n * vd]);
        let pgm = &sv.pg[2 * t0 * ld..];
        let (pv, xv) = (
            View::new(pgm, n, n, ld),
            View::new(&sv.x[t0 * lx..], n, n, lx),
        );
        let g = &pgm[n * ld..];
        let r = &sv.r[t0 * vd..][..n * vd];
        let delta = View::new(&sv.d[t0 * vd..], n, vd, vd);
        let dsv = View::new(ds, kd, vd, vd);
        // d_delta = K dS + P^T (scale dO);  -Y = -X^T d_delta;  dK = delta dS^T
        mm(&mut dd, vd, None, 1.0, kc, dsv);
        mm_up(
            &mut dd,
            vd,
            Some(1.0),
            1.0,
            pv.t(),
            View::new(&e, n, vd, vd),
        );
        mm_up(
            &mut e[n * vd..],
            vd,
            None,
            -1.0,
            xv.t(),
            View::new(&dd, n, vd, vd),
        );
        let ey = &e[n * vd..2 * n * vd];
        mm(&mut dqk[n * kd..], kd, None, 1.0, delta, dsv.t());
        // -dR = diag(alpha) (-Y);  dV = dR
        for i in 0..n {
            let a = sv.coef[t0 + i].0;
            let fi = &mut f[(n + i) * vd..][..vd];
            let di = &mut dd[i * vd..][..vd];
            for ((fv, dv), yv) in fi.iter_mut().zip(di.iter_mut()).zip(&ey[i * vd..][..vd]) {
                *fv = a * yv;
                *dv = -*fv;
            }
            // SAFETY: this head's own rows; no other piece of the loop writes them.
            unsafe { w.v.put(c.row(b, t0 + i, h) * vd, di) };
        }
        let fv = View::new(&f, 2 * n, vd, vd);
        if reset {
            // the state entering this piece was a fill: nothing flows past it
            ds.fill(0.0);
            dqk[..n * kd].fill(0.0);
        } else {
            // [dQ; dK] += [scale dO; -dR] S^T;  dS += [Q; K]^T [scale dO; -dR]
            dqk[..n * kd].fill(0.0);
            let s = View::new(&sv.states[pi * kv..], kd, vd, vd);
            mm(&mut dqk, kd, Some(1.0), 1.0, fv, s.t());
            mm(ds, vd, Some(1.0), 1.0, qkv.t(), fv);
        }
        // [dP; dA] = [scale dO; -Y] delta^T, masked: dP lower, dA strictly lower
        mm_lo_out(&mut dpa, ld, 1.0, View::new(&e, n, vd, vd), delta.t());
        mm_lo_out(
            &mut dpa[n * ld..],
            ld,
            1.0,
            View::new(&e[n * vd..], n, vd, vd),
            delta.t(),
        );
        for i in 0..n {
            dpa[i * ld + i + 1..i * ld + n].fill(0.0);
        }
        let (dp, da) = dpa.split_at(n * ld);
        for i in 0..n {
            let a = sv.coef[t0 + i].0;
            let mut acc = dot(&r[i * vd..][..vd], &ey[i * vd..][..vd]);
            for j in 0..i {
                acc -= da[i * ld + j] * g[i * ld + j];
            }
            dalpha[i] = -acc;
            // W = [dP^T, M], M = dL + dL^T with dL = diag(alpha) dA (zero diagonal)
            for j in 0..n {
                let (pt, m) = if j < i {
                    (0.0, a * da[i * ld + j])
                } else if j == i {
                    (dp[i * ld + i], 0.0)
                } else {
                    (dp[j * ld + i], sv.coef[t0 + j].0 * da[j * ld + i])
                };
                wm[i * 2 * ld + j] = pt;
                wm[i * 2 * ld + n + j] = m;
            }
        }
        // dQ += dP K;  dK += [dP^T, M] [Q; K]
        mm_lo(&mut dqk, kd, Some(1.0), 1.0, View::new(dp, n, n, ld), kc);
        let wv = View::new(&wm, n, 2 * n, 2 * ld);
        mm(&mut dqk[n * kd..], kd, Some(1.0), 1.0, wv, qkv);
        for i in 0..n {
            let row = c.row(b, t0 + i, h);
            let (_, fk, fb) = sv.coef[t0 + i];
            let (dqr, dkr) = dqk.split_at_mut(n * kd);
            let dki = &mut dkr[i * kd..][..kd];
            axpy(dki, fk * dalpha[i], &qk[(n + i) * kd..][..kd]);
            // SAFETY: this head's own rows; no other piece of the loop writes them.
            unsafe {
                w.q.put(row * kd, &dqr[i * kd..][..kd]);
                w.k.put(row * kd, dki);
                w.b.put(row, &[dalpha[i] * fb]);
            }
        }
    }
}
