#![allow(clippy::needless_range_loop)] // index loops are the plain form being measured
//! Plain single-thread Rust loops over the same f32 data as the CPU benchmarks: what a user
//! could write in ten minutes, and the floor every linrec CPU kernel must beat on one thread.
//! f32 state, the natural loop order (time outer, contiguous channels inner), no threads, no
//! explicit SIMD, no resets or initial state beyond what the benchmarked call uses. Each
//! function writes its outputs into caller-provided buffers (the benchmark allocates them once).

/// Linear scan forward, `[B, T, W]` with `W` floats per step: `h_t = a_t h_{t-1} + x_t`, real
/// (`complex = false`) or complex with interleaved halves.
pub fn scan_forward(x: &[f32], a: &[f32], h: &mut [f32], rows: usize, w: usize, complex: bool) {
    let t_len = x.len() / (rows * w);
    let mut s = vec![0f32; w];
    for b in 0..rows {
        s.fill(0.0);
        for t in 0..t_len {
            let o = (b * t_len + t) * w;
            let (xt, at, ht) = (&x[o..o + w], &a[o..o + w], &mut h[o..o + w]);
            if complex {
                for j in (0..w).step_by(2) {
                    let (sr, si) = (s[j], s[j + 1]);
                    s[j] = at[j] * sr - at[j + 1] * si + xt[j];
                    s[j + 1] = at[j] * si + at[j + 1] * sr + xt[j + 1];
                }
            } else {
                for j in 0..w {
                    s[j] = at[j] * s[j] + xt[j];
                }
            }
            ht.copy_from_slice(&s);
        }
    }
}

/// Real linear scan backward: `g_t = gh_t + a_{t+1} g_{t+1}`, `dx_t = g_t`,
/// `da_t = g_t h_{t-1}`.
pub fn scan_backward(
    a: &[f32],
    h: &[f32],
    gh: &[f32],
    dx: &mut [f32],
    da: &mut [f32],
    rows: usize,
    w: usize,
) {
    let t_len = a.len() / (rows * w);
    let mut g = vec![0f32; w];
    for b in 0..rows {
        g.fill(0.0);
        for t in (0..t_len).rev() {
            let o = (b * t_len + t) * w;
            for j in 0..w {
                let next_a = if t + 1 < t_len { a[o + w + j] } else { 0.0 };
                g[j] = gh[o + j] + next_a * g[j];
                dx[o + j] = g[j];
                da[o + j] = if t > 0 { g[j] * h[o - w + j] } else { 0.0 };
            }
        }
    }
}

/// FFM aggregation forward: `S_t[m][c] = gamma[m][c] S_{t-1}[m][c] + x_t[m]`, `gamma =
/// exp(a[m] + i b[c])`, `x` `[B, T, M]`, `S` `[B, T, M, C]` complex interleaved, from `s0`.
#[allow(clippy::too_many_arguments)]
pub fn ffm_forward(
    x: &[f32],
    a: &[f32],
    bw: &[f32],
    s0: &[f32],
    s: &mut [f32],
    rows: usize,
    m: usize,
    c: usize,
) {
    let t_len = x.len() / (rows * m);
    let gamma: Vec<(f32, f32)> = (0..m * c)
        .map(|k| {
            let (re, im) = (a[k / c].exp(), bw[k % c]);
            (re * im.cos(), re * im.sin())
        })
        .collect();
    let mc = m * c;
    let mut st = vec![0f32; 2 * mc];
    for b in 0..rows {
        st.copy_from_slice(&s0[b * 2 * mc..(b + 1) * 2 * mc]);
        for t in 0..t_len {
            let xo = (b * t_len + t) * m;
            for k in 0..mc {
                let (gr, gi) = gamma[k];
                let (sr, si) = (st[2 * k], st[2 * k + 1]);
                st[2 * k] = gr * sr - gi * si + x[xo + k / c];
                st[2 * k + 1] = gr * si + gi * sr;
            }
            let so = (b * t_len + t) * 2 * mc;
            s[so..so + 2 * mc].copy_from_slice(&st);
        }
    }
}

/// FFM backward from the forward's `S`: the reverse scan `H_t = dS_t + conj(gamma) H_{t+1}`,
/// then `dx_t[m] = sum_c Re H_t[m][c]`, `dgamma += H_t conj(S_{t-1})` (f32 sums), and
/// `da`, `db` from `dgamma` (`d/da = Re(conj(gamma) dgamma)`, `d/db = Im(conj(gamma) dgamma)`
/// per channel, summed over the other axis).
#[allow(clippy::too_many_arguments)]
pub fn ffm_backward(
    a: &[f32],
    bw: &[f32],
    s0: &[f32],
    s: &[f32],
    gs: &[f32],
    dx: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    rows: usize,
    m: usize,
    c: usize,
) {
    let mc = m * c;
    let t_len = s.len() / (rows * 2 * mc);
    let gamma: Vec<(f32, f32)> = (0..mc)
        .map(|k| {
            let (re, im) = (a[k / c].exp(), bw[k % c]);
            (re * im.cos(), re * im.sin())
        })
        .collect();
    let mut hh = vec![0f32; 2 * mc];
    let mut dg = vec![0f32; 2 * mc];
    for b in 0..rows {
        hh.fill(0.0);
        for t in (0..t_len).rev() {
            let so = (b * t_len + t) * 2 * mc;
            let prev = if t > 0 {
                &s[so - 2 * mc..so]
            } else {
                &s0[b * 2 * mc..(b + 1) * 2 * mc]
            };
            let xo = (b * t_len + t) * m;
            dx[xo..xo + m].fill(0.0);
            for k in 0..mc {
                let (gr, gi) = gamma[k];
                let (hr, hi) = (hh[2 * k], hh[2 * k + 1]);
                // H_t = dS_t + conj(gamma) H_{t+1}
                let nr = gs[so + 2 * k] + gr * hr + gi * hi;
                let ni = gs[so + 2 * k + 1] + gr * hi - gi * hr;
                hh[2 * k] = nr;
                hh[2 * k + 1] = ni;
                dx[xo + k / c] += nr;
                let (pr, pi) = (prev[2 * k], prev[2 * k + 1]);
                dg[2 * k] += nr * pr + ni * pi;
                dg[2 * k + 1] += ni * pr - nr * pi;
            }
        }
    }
    da.fill(0.0);
    db.fill(0.0);
    for k in 0..mc {
        let (gr, gi) = gamma[k];
        let (dr, di) = (dg[2 * k], dg[2 * k + 1]);
        da[k / c] += gr * dr + gi * di;
        db[k % c] += gr * di - gi * dr;
    }
}

/// The delta rule forward: per `(row, head)`, `u = v_t - S^T k_t`, `S += beta_t k_t u^T`,
/// `o_t = scale S^T q_t`; `q`, `k` `[B, T, H, K]`, `v`, `o` `[B, T, H, V]`, `beta` `[B, T, H]`,
/// `S` `[B, H, K, V]` (in place: the initial state in, the final state out).
#[allow(clippy::too_many_arguments)]
pub fn delta_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    s: &mut [f32],
    o: &mut [f32],
    rows: usize,
    heads: usize,
    kd: usize,
    vd: usize,
) {
    let t_len = beta.len() / (rows * heads);
    let scale = 1.0 / (kd as f32).sqrt();
    let mut u = vec![0f32; vd];
    for b in 0..rows {
        for hd in 0..heads {
            let st = &mut s[(b * heads + hd) * kd * vd..][..kd * vd];
            for t in 0..t_len {
                let bt = (b * t_len + t) * heads + hd;
                let (kt, qt) = (&k[bt * kd..][..kd], &q[bt * kd..][..kd]);
                u.copy_from_slice(&v[bt * vd..][..vd]);
                for r in 0..kd {
                    for j in 0..vd {
                        u[j] -= st[r * vd + j] * kt[r];
                    }
                }
                let ot = &mut o[bt * vd..][..vd];
                ot.fill(0.0);
                for r in 0..kd {
                    let f = beta[bt] * kt[r];
                    for j in 0..vd {
                        st[r * vd + j] += f * u[j];
                        ot[j] += qt[r] * st[r * vd + j];
                    }
                }
                for j in 0..vd {
                    ot[j] *= scale;
                }
            }
        }
    }
}

/// The selective scan forward with input-dependent `Bm`, `Cm` (one group) and softplus:
/// `u`, `delta`, `y` `[B, T, D]`, `A` `[D, N]`, `Bm`, `Cm` `[B, T, N]`.
#[allow(clippy::too_many_arguments)]
pub fn selective_forward(
    u: &[f32],
    delta: &[f32],
    a: &[f32],
    bm: &[f32],
    cm: &[f32],
    y: &mut [f32],
    rows: usize,
    d: usize,
    n: usize,
) {
    let t_len = u.len() / (rows * d);
    let mut h = vec![0f32; d * n];
    for b in 0..rows {
        h.fill(0.0);
        for t in 0..t_len {
            let o = (b * t_len + t) * d;
            let (bt, ct) = (
                &bm[(b * t_len + t) * n..][..n],
                &cm[(b * t_len + t) * n..][..n],
            );
            for ch in 0..d {
                let x = delta[o + ch];
                let dt = if x > 20.0 { x } else { x.exp().ln_1p() };
                let du = dt * u[o + ch];
                let hs = &mut h[ch * n..(ch + 1) * n];
                let mut acc = 0.0;
                for j in 0..n {
                    hs[j] = (dt * a[ch * n + j]).exp() * hs[j] + du * bt[j];
                    acc += ct[j] * hs[j];
                }
                y[o + ch] = acc;
            }
        }
    }
}
