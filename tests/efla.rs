//! EFLA / delta rule (docs/efla.md): the reference pinned against an independent transcription of
//! the equations and finite differences; the chunked WY algorithm against the recurrent one
//! (chunk sizes, ragged ends, resets inside chunks and on their edges); identities (EFLA with
//! unit keys is a reparametrized delta rule, packing, chaining, decode); extreme inputs; errors;
//! and every backend against the reference.

mod common;
use common::*;
use linrec::efla::{self, Algorithm, Efla, EflaBackwardInputs, EflaGrads, EflaInputs, Rule};
use linrec::{DType, Device, Error, Problem, Tensor};

/// Inputs of one problem in f64 (rounded to the problem's storage dtype).
#[derive(Clone)]
struct Data {
    p: Efla,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    beta: Vec<f64>,
    s0: Option<Vec<f64>>,
    start: Option<Vec<u8>>,
    go: Vec<f64>,
    gf: Option<Vec<f64>>,
}

#[derive(Clone, Copy, Debug)]
enum Starts {
    None,
    /// t = 0 (even rows), mid-chunk, T-1, the edges of chunks of 16, 32 and 64, a few random.
    Edges,
}

fn round(v: Vec<f64>, dt: DType) -> Vec<f64> {
    Tensor::from_f64([v.len()], &v, dt).unwrap().to_f64_vec()
}

fn gen(p: Efla, s0: bool, starts: Starts, seed: u64) -> Data {
    let mut r = Rng::new(seed);
    let (b, t, h, kd, vd) = (p.batch, p.len, p.heads, p.key_dim, p.value_dim);
    let n = b * t * h;
    let dt = p.dtype;
    let q = round(r.normals(n * kd), dt);
    // keys of norm ~ 0.3 .. 1.5, so beta * ||k||^2 spans small and moderate values
    let mut k = Vec::with_capacity(n * kd);
    for _ in 0..n {
        let m = r.uniform(0.3, 1.5) / (kd as f64).sqrt();
        k.extend(r.normals(kd).into_iter().map(|x| x * m));
    }
    let k = round(k, dt);
    let v = round(r.vec(n * vd, -1.0, 1.0), dt);
    let hi = if p.rule == Rule::Efla { 2.5 } else { 1.0 };
    let beta = round(r.vec(n, 0.05, hi), dt);
    let s0 = s0.then(|| f32_exact(&r.vec(b * h * kd * vd, -0.5, 0.5)));
    let start = match starts {
        Starts::None => None,
        Starts::Edges => {
            let mut s = r.flags(b * t, 0.02);
            for bb in 0..b {
                let row = &mut s[bb * t..(bb + 1) * t];
                row[0] = u8::from(bb % 2 == 0);
                row[t / 2] = 1;
                row[t - 1] = 1;
                for e in [16, 32, 64, 96, 128, 37, 63] {
                    if e < t && r.uniform(0.0, 1.0) < 0.5 {
                        row[e] = 1;
                    }
                }
            }
            Some(s)
        }
    };
    let go = round(r.vec(n * vd, -1.0, 1.0), dt);
    let gf = Some(f32_exact(&r.vec(b * h * kd * vd, -1.0, 1.0)));
    Data {
        p,
        q,
        k,
        v,
        beta,
        s0,
        start,
        go,
        gf,
    }
}

fn inputs(d: &Data) -> EflaInputs<&[f64], &[u8]> {
    EflaInputs {
        q: &d.q,
        k: &d.k,
        v: &d.v,
        beta: &d.beta,
        s0: d.s0.as_deref(),
        start: d.start.as_deref(),
    }
}

fn fwd_ref(d: &Data) -> efla::EflaOutputs<Vec<f64>> {
    efla::reference::forward(&d.p, &inputs(d)).expect("valid problem")
}

fn bwd_ref(d: &Data) -> EflaGrads<Vec<f64>> {
    efla::reference::backward(
        &d.p,
        &EflaBackwardInputs {
            q: &d.q,
            k: &d.k,
            v: &d.v,
            beta: &d.beta,
            s0: d.s0.as_deref(),
            start: d.start.as_deref(),
            grad_o: &d.go,
            grad_final: d.gf.as_deref(),
        },
    )
    .expect("valid problem")
}

fn with(d: &Data, p: Efla) -> Data {
    Data { p, ..d.clone() }
}

/// docs/efla.md transcribed directly (token by token, physical indices), as an independent oracle.
fn naive(d: &Data) -> (Vec<f64>, Vec<f64>) {
    let p = &d.p;
    let (bn, tn, hn, kn, vn) = (p.batch, p.len, p.heads, p.key_dim, p.value_dim);
    // f64 throughout: the default 1/sqrt(K) is not rounded to f32 (K = 5 in the transcription
    // test, where the f32 rounding alone would be a relative change of ~1e-8 > its 1e-11 bound)
    let scale = p.scale.map_or(1.0 / (kn as f64).sqrt(), f64::from);
    let mut o = vec![0.0; bn * tn * hn * vn];
    let mut sf = vec![0.0; bn * hn * kn * vn];
    for b in 0..bn {
        for h in 0..hn {
            let base = (b * hn + h) * kn * vn;
            let mut s: Vec<f64> = match &d.s0 {
                Some(s0) => s0[base..base + kn * vn].to_vec(),
                None => vec![0.0; kn * vn],
            };
            for t in 0..tn {
                let row = (b * tn + t) * hn + h;
                let kt = &d.k[row * kn..(row + 1) * kn];
                let qt = &d.q[row * kn..(row + 1) * kn];
                let vt = &d.v[row * vn..(row + 1) * vn];
                let bt = d.beta[row];
                if d.start.as_ref().is_some_and(|st| st[b * tn + t] != 0) {
                    s = vec![0.0; kn * vn];
                }
                let lam: f64 = kt.iter().map(|x| x * x).sum();
                let alpha = match p.rule {
                    Rule::Delta => bt,
                    Rule::Efla => {
                        let x = bt * lam;
                        bt * if x == 0.0 { 1.0 } else { -(-x).exp_m1() / x }
                    }
                };
                // P^T k, then S = P + alpha k (v - P^T k)^T
                let mut ptk = vec![0.0; vn];
                for i in 0..kn {
                    for j in 0..vn {
                        ptk[j] += s[i * vn + j] * kt[i];
                    }
                }
                for i in 0..kn {
                    for j in 0..vn {
                        s[i * vn + j] += alpha * kt[i] * (vt[j] - ptk[j]);
                    }
                }
                for j in 0..vn {
                    let mut acc = 0.0;
                    for i in 0..kn {
                        acc += s[i * vn + j] * qt[i];
                    }
                    o[row * vn + j] = scale * acc;
                }
            }
            sf[base..base + kn * vn].copy_from_slice(&s);
        }
    }
    (o, sf)
}

fn name(p: &Efla) -> String {
    format!(
        "B={} T={} H={} K={} V={} {:?} {:?} {}",
        p.batch, p.len, p.heads, p.key_dim, p.value_dim, p.rule, p.algorithm, p.dtype
    )
}

/// Both rules x (recurrent, chunked with a few chunk sizes).
fn variants(b: usize, t: usize, h: usize, k: usize, v: usize, chunks: &[usize]) -> Vec<Efla> {
    let mut out = Vec::new();
    for rule in [Rule::Efla, Rule::Delta] {
        let p = Efla::new(b, t, h, k, v).with_rule(rule);
        out.push(p.recurrent());
        for &c in chunks {
            out.push(p.chunked(c));
        }
    }
    out
}

fn close_grads(what: &str, a: &EflaGrads<Vec<f64>>, b: &EflaGrads<Vec<f64>>, tol: f64) -> T {
    close(&format!("{what} dq"), &a.dq, &b.dq, tol)?;
    close(&format!("{what} dk"), &a.dk, &b.dk, tol)?;
    close(&format!("{what} dv"), &a.dv, &b.dv, tol)?;
    close(&format!("{what} dbeta"), &a.dbeta, &b.dbeta, tol)?;
    close(&format!("{what} ds0"), &a.ds0, &b.ds0, tol)
}

// ------------------------------------------------------------------ reference semantics

fn reference_matches_spec_transcription() -> T {
    for (i, p) in variants(2, 45, 2, 5, 3, &[16, 7]).into_iter().enumerate() {
        for (s0, st) in [(false, Starts::None), (true, Starts::Edges)] {
            let d = gen(p, s0, st, 100 + i as u64);
            let out = fwd_ref(&d);
            let (o, sf) = naive(&d);
            close(&format!("{} o", name(&p)), &out.o, &o, 1e-11)?;
            close(&format!("{} s_final", name(&p)), &out.s_final, &sf, 1e-11)?;
        }
    }
    // an explicit scale
    let d = gen(
        Efla::new(1, 20, 1, 4, 4).with_scale(0.7),
        true,
        Starts::Edges,
        150,
    );
    close("explicit scale", &fwd_ref(&d).o, &naive(&d).0, 1e-11)?;
    Ok(())
}

fn reference_gradients_match_finite_differences() -> T {
    for (i, p) in variants(2, 11, 2, 3, 4, &[4, 16]).into_iter().enumerate() {
        let d = gen(p, true, Starts::Edges, 200 + i as u64);
        let gr = bwd_ref(&d);
        let loss = |d: &Data| {
            let o = fwd_ref(d);
            dot(&d.go, &o.o) + dot(d.gf.as_ref().unwrap(), &o.s_final)
        };
        let n = name(&p);
        let tol = 1e-6;
        fd_check(
            &format!("{n} dq"),
            &d.q,
            &gr.dq,
            |x| {
                loss(&Data {
                    q: x.to_vec(),
                    ..d.clone()
                })
            },
            80,
            tol,
        )?;
        fd_check(
            &format!("{n} dk"),
            &d.k,
            &gr.dk,
            |x| {
                loss(&Data {
                    k: x.to_vec(),
                    ..d.clone()
                })
            },
            80,
            tol,
        )?;
        fd_check(
            &format!("{n} dv"),
            &d.v,
            &gr.dv,
            |x| {
                loss(&Data {
                    v: x.to_vec(),
                    ..d.clone()
                })
            },
            80,
            tol,
        )?;
        fd_check(
            &format!("{n} dbeta"),
            &d.beta,
            &gr.dbeta,
            |x| {
                loss(&Data {
                    beta: x.to_vec(),
                    ..d.clone()
                })
            },
            80,
            tol,
        )?;
        let s0 = d.s0.clone().unwrap();
        fd_check(
            &format!("{n} ds0"),
            &s0,
            &gr.ds0,
            |x| {
                loss(&Data {
                    s0: Some(x.to_vec()),
                    ..d.clone()
                })
            },
            80,
            tol,
        )?;
        // without grad_final and s0: the same derivatives of the output alone
        let d2 = Data {
            gf: None,
            s0: None,
            ..d.clone()
        };
        let gr2 = bwd_ref(&d2);
        let loss2 = |d: &Data| dot(&d.go, &fwd_ref(d).o);
        fd_check(
            &format!("{n} dk (no grad_final)"),
            &d2.k,
            &gr2.dk,
            |x| {
                loss2(&Data {
                    k: x.to_vec(),
                    ..d2.clone()
                })
            },
            80,
            tol,
        )?;
        fd_check(
            &format!("{n} dbeta (no grad_final)"),
            &d2.beta,
            &gr2.dbeta,
            |x| {
                loss2(&Data {
                    beta: x.to_vec(),
                    ..d2.clone()
                })
            },
            80,
            tol,
        )?;
    }
    Ok(())
}

/// The WY algorithm equals the recurrent one: chunk sizes 16/32/64 (and odd ones), T not a
/// multiple of the chunk, resets mid-chunk and exactly on chunk edges, forward and backward.
fn chunked_equals_recurrent() -> T {
    let mut seed = 300;
    for &(b, t, h, k, v) in &[
        (2, 150, 2, 8, 6),
        (1, 64, 1, 16, 3),
        (1, 129, 3, 5, 9),
        (2, 33, 1, 3, 3),
    ] {
        for rule in [Rule::Efla, Rule::Delta] {
            for (s0, st) in [(false, Starts::None), (true, Starts::Edges)] {
                seed += 1;
                let base = Efla::new(b, t, h, k, v).with_rule(rule);
                let d = gen(base.recurrent(), s0, st, seed);
                let (ro, rg) = (fwd_ref(&d), bwd_ref(&d));
                for c in [16, 32, 64, 1, 5] {
                    let dc = with(&d, base.chunked(c));
                    let n = name(&dc.p);
                    let (co, cg) = (fwd_ref(&dc), bwd_ref(&dc));
                    close(&format!("{n} o"), &co.o, &ro.o, 1e-10)?;
                    close(&format!("{n} s_final"), &co.s_final, &ro.s_final, 1e-10)?;
                    close_grads(&n, &cg, &rg, 1e-9)?;
                }
            }
        }
    }
    // resets on every chunk edge and on the step before and after it
    let p = Efla::new(1, 100, 1, 6, 4);
    let mut d = gen(p.recurrent(), true, Starts::None, 390);
    let mut s = vec![0u8; 100];
    for e in [15, 16, 17, 31, 32, 33, 63, 64, 65, 99] {
        s[e] = 1;
    }
    d.start = Some(s);
    let (ro, rg) = (fwd_ref(&d), bwd_ref(&d));
    for c in [16, 32, 64] {
        let dc = with(&d, p.chunked(c));
        close(&format!("edges chunk {c} o"), &fwd_ref(&dc).o, &ro.o, 1e-10)?;
        close_grads(&format!("edges chunk {c}"), &bwd_ref(&dc), &rg, 1e-9)?;
    }
    Ok(())
}

/// EFLA with unit-norm keys is the delta rule with `beta' = 1 - exp(-beta)`.
fn efla_unit_keys_is_reparametrized_delta() -> T {
    for alg in [Algorithm::Recurrent, Algorithm::Chunked { chunk: 16 }] {
        let p = Efla::new(2, 40, 2, 6, 5).with_algorithm(alg);
        let mut d = gen(p, true, Starts::Edges, 400);
        for row in d.k.chunks_mut(6) {
            let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x /= n);
        }
        d.beta = d.beta.iter().map(|b| b * 3.0).collect();
        let e = fwd_ref(&d);
        let mut dd = with(&d, p.delta());
        dd.beta = d.beta.iter().map(|b| -(-b).exp_m1()).collect();
        let r = fwd_ref(&dd);
        close(&format!("{alg:?} o"), &e.o, &r.o, 1e-10)?;
        close(&format!("{alg:?} s_final"), &e.s_final, &r.s_final, 1e-10)?;
        // gradients with respect to q, v and s0 do not depend on the parametrization
        let (ge, gd) = (bwd_ref(&d), bwd_ref(&dd));
        close(&format!("{alg:?} dq"), &ge.dq, &gd.dq, 1e-9)?;
        close(&format!("{alg:?} dv"), &ge.dv, &gd.dv, 1e-9)?;
        close(&format!("{alg:?} ds0"), &ge.ds0, &gd.ds0, 1e-9)?;
        // chain rule through beta' = 1 - exp(-beta): dbeta = dbeta' exp(-beta)
        let chain: Vec<f64> = gd
            .dbeta
            .iter()
            .zip(&d.beta)
            .map(|(g, b)| g * (-b).exp())
            .collect();
        close(&format!("{alg:?} dbeta"), &ge.dbeta, &chain, 1e-9)?;
    }
    Ok(())
}

/// Data with some zero keys and `beta * ||k||^2` spread over `[0, 1e4]`.
fn extreme(p: Efla, seed: u64) -> Data {
    let mut d = gen(p, true, Starts::Edges, seed);
    let mut r = Rng::new(seed + 1);
    let kd = p.key_dim;
    for (i, row) in d.k.chunks_mut(kd).enumerate() {
        match i % 4 {
            0 => row.iter_mut().for_each(|x| *x = 0.0),
            1 => {
                // ||k||^2 up to 100 with beta up to 100: x up to 1e4
                let n2: f64 = row.iter().map(|x| x * x).sum();
                let want = r.uniform(1.0, 100.0);
                let f = (want / n2.max(1e-12)).sqrt();
                row.iter_mut().for_each(|x| *x *= f);
            }
            _ => {}
        }
    }
    for (i, b) in d.beta.iter_mut().enumerate() {
        if i % 3 == 1 {
            *b = r.uniform(10.0, 100.0);
        }
    }
    d.k = round(d.k, p.dtype);
    d.beta = round(d.beta, p.dtype);
    d
}

fn all_finite(what: &str, v: &[f64]) -> T {
    ensure!(v.iter().all(|x| x.is_finite()), "{what}: not finite");
    Ok(())
}

/// EFLA stays finite and exact with k = 0 and with beta ||k||^2 up to 1e4 (where the step is
/// a projection), on both algorithms.
fn efla_extreme_inputs() -> T {
    let p = Efla::new(2, 70, 2, 7, 5);
    let d = extreme(p.recurrent(), 500);
    let xmax =
        d.k.chunks(7)
            .zip(&d.beta)
            .map(|(k, b)| b * k.iter().map(|x| x * x).sum::<f64>())
            .fold(0.0, f64::max);
    let reached = xmax > 1e3;
    ensure!(
        reached,
        "the data should reach beta ||k||^2 ~ 1e4 (max {xmax})"
    );
    let (ro, rg) = (fwd_ref(&d), bwd_ref(&d));
    let (o, sf) = naive(&d);
    close("extreme o vs transcription", &ro.o, &o, 1e-10)?;
    close("extreme s_final vs transcription", &ro.s_final, &sf, 1e-10)?;
    for (w, v) in [
        ("dq", &rg.dq),
        ("dk", &rg.dk),
        ("dv", &rg.dv),
        ("dbeta", &rg.dbeta),
        ("ds0", &rg.ds0),
    ] {
        all_finite(w, v)?;
    }
    for c in [16, 64] {
        let dc = with(&d, p.chunked(c));
        close(
            &format!("extreme chunk {c} o"),
            &fwd_ref(&dc).o,
            &ro.o,
            1e-9,
        )?;
        close_grads(&format!("extreme chunk {c}"), &bwd_ref(&dc), &rg, 1e-8)?;
    }
    // finite differences still hold where the step saturates (x ~ 1e4) and at k = 0
    let small = extreme(Efla::new(1, 9, 1, 3, 2).recurrent(), 510);
    let gr = bwd_ref(&small);
    let loss = |d: &Data| {
        let o = fwd_ref(d);
        dot(&d.go, &o.o) + dot(d.gf.as_ref().unwrap(), &o.s_final)
    };
    fd_check(
        "extreme dk",
        &small.k,
        &gr.dk,
        |x| {
            loss(&Data {
                k: x.to_vec(),
                ..small.clone()
            })
        },
        30,
        1e-5,
    )?;
    fd_check(
        "extreme dbeta",
        &small.beta,
        &gr.dbeta,
        |x| {
            loss(&Data {
                beta: x.to_vec(),
                ..small.clone()
            })
        },
        30,
        1e-5,
    )?;
    Ok(())
}

/// Slice rows `[t0, t0 + len)` of every batch row out of `d` (state inputs as given).
fn sub(d: &Data, t0: usize, len: usize, s0: Option<Vec<f64>>) -> Data {
    let p = d.p;
    let (bn, tn, hn) = (p.batch, p.len, p.heads);
    let sl = |v: &[f64], n: usize| {
        (0..bn)
            .flat_map(|b| v[((b * tn + t0) * hn) * n..((b * tn + t0 + len) * hn) * n].to_vec())
            .collect::<Vec<_>>()
    };
    let mut q = p;
    q.len = len;
    Data {
        p: q,
        q: sl(&d.q, p.key_dim),
        k: sl(&d.k, p.key_dim),
        v: sl(&d.v, p.value_dim),
        beta: sl(&d.beta, 1),
        s0,
        start: d.start.as_ref().map(|s| {
            (0..bn)
                .flat_map(|b| s[b * tn + t0..b * tn + t0 + len].to_vec())
                .collect()
        }),
        go: sl(&d.go, p.value_dim),
        gf: None,
    }
}

/// Sequences packed into one row with `start` flags equal the same sequences as separate rows.
fn packed_rows_equal_separate_rows() -> T {
    for p0 in variants(1, 50, 2, 4, 3, &[16, 64]) {
        let d0 = gen(p0, false, Starts::None, 600);
        let mut d = d0.clone();
        let mut s = vec![0u8; 50];
        s[0] = 1;
        s[21] = 1;
        d.start = Some(s);
        let out = fwd_ref(&d);
        let a = fwd_ref(&sub(&d0, 0, 21, None));
        let b = fwd_ref(&sub(&d0, 21, 29, None));
        let sep = [a.o, b.o].concat();
        close(
            &format!("{} packed vs separate", name(&p0)),
            &out.o,
            &sep,
            1e-11,
        )?;
        close(
            &format!("{} packed final", name(&p0)),
            &out.s_final,
            &b.s_final,
            1e-11,
        )?;
    }
    Ok(())
}

/// Two calls chained through the state equal one call; so do T = 1 decode steps.
fn chained_calls_equal_one_call() -> T {
    for p0 in variants(2, 40, 2, 5, 4, &[16]) {
        let d = gen(p0, true, Starts::Edges, 700);
        let whole = fwd_ref(&d);
        let cut = 17;
        let o1 = fwd_ref(&sub(&d, 0, cut, d.s0.clone()));
        let o2 = fwd_ref(&sub(&d, cut, 40 - cut, Some(o1.s_final.clone())));
        close(
            &format!("{} chained final", name(&p0)),
            &o2.s_final,
            &whole.s_final,
            1e-11,
        )?;
        // the second call's outputs are the tail of the whole call's
        let tail = sub(
            &Data {
                go: whole.o.clone(),
                ..d.clone()
            },
            cut,
            40 - cut,
            None,
        )
        .go;
        close(
            &format!("{} chained outputs", name(&p0)),
            &o2.o,
            &tail,
            1e-11,
        )?;
        // decode: T = 1 calls
        let mut s = d.s0.clone();
        let mut outs = vec![Vec::new(); 2];
        for t in 0..40 {
            let o = fwd_ref(&sub(&d, t, 1, s.clone()));
            for (b, ob) in outs.iter_mut().enumerate() {
                let n = 2 * 4;
                ob.extend_from_slice(&o.o[b * n..(b + 1) * n]);
            }
            s = Some(o.s_final);
        }
        close(
            &format!("{} decode final", name(&p0)),
            s.as_ref().unwrap(),
            &whole.s_final,
            1e-11,
        )?;
        close(
            &format!("{} decode outputs", name(&p0)),
            &outs.concat(),
            &whole.o,
            1e-11,
        )?;
    }
    Ok(())
}

fn errors_name_the_argument() -> T {
    let p = Efla::new(2, 5, 3, 4, 6);
    let dev = Device::Cpu;
    let z = |s: &[usize]| Tensor::zeros(s.to_vec(), DType::F32);
    let (q, k, v, beta) = (
        z(&[2, 5, 3, 4]),
        z(&[2, 5, 3, 4]),
        z(&[2, 5, 3, 6]),
        z(&[2, 5, 3]),
    );
    let ok = EflaInputs {
        q: &q,
        k: &k,
        v: &v,
        beta: &beta,
        s0: None,
        start: None,
    };
    ensure!(efla::forward(&dev, &p, &ok).is_ok(), "valid call rejected");
    // wrong shapes, each argument
    let bad_q = z(&[2, 5, 3, 5]);
    match efla::forward(&dev, &p, &EflaInputs { q: &bad_q, ..ok }) {
        Err(Error::Shape {
            arg: "q",
            expected,
            found,
        }) => {
            ensure!(
                expected == vec![2, 5, 3, 4] && found == vec![2, 5, 3, 5],
                "shape fields {expected:?} {found:?}"
            )
        }
        r => fail!("wrong q shape: {r:?}"),
    }
    let bad_k = z(&[2, 5, 4]);
    ensure!(
        matches!(
            efla::forward(&dev, &p, &EflaInputs { k: &bad_k, ..ok }),
            Err(Error::Shape { arg: "k", .. })
        ),
        "k"
    );
    let bad_v = z(&[2, 5, 3, 4]);
    ensure!(
        matches!(
            efla::forward(&dev, &p, &EflaInputs { v: &bad_v, ..ok }),
            Err(Error::Shape { arg: "v", .. })
        ),
        "v"
    );
    let bad_beta = z(&[2, 5, 3, 1]);
    ensure!(
        matches!(
            efla::forward(
                &dev,
                &p,
                &EflaInputs {
                    beta: &bad_beta,
                    ..ok
                }
            ),
            Err(Error::Shape { arg: "beta", .. })
        ),
        "beta"
    );
    let bad_s0 = z(&[2, 3, 6, 4]);
    ensure!(
        matches!(
            efla::forward(
                &dev,
                &p,
                &EflaInputs {
                    s0: Some(&bad_s0),
                    ..ok
                }
            ),
            Err(Error::Shape { arg: "s0", .. })
        ),
        "s0"
    );
    let bad_start = Tensor::zeros([2, 4], DType::U8);
    ensure!(
        matches!(
            efla::forward(
                &dev,
                &p,
                &EflaInputs {
                    start: Some(&bad_start),
                    ..ok
                }
            ),
            Err(Error::Shape { arg: "start", .. })
        ),
        "start"
    );
    // dtype mismatches: a half tensor in an f32 problem, f32 state in a bf16 problem is fine
    // but a bf16 state is not, float flags are not
    let qh = Tensor::zeros([2, 5, 3, 4], DType::F16);
    ensure!(
        matches!(
            efla::forward(&dev, &p, &EflaInputs { q: &qh, ..ok }),
            Err(Error::DType {
                arg: "q",
                expected: DType::F32,
                found: DType::F16
            })
        ),
        "q dtype"
    );
    let pb = p.with_dtype(DType::BF16);
    let zb = |s: &[usize]| Tensor::zeros(s.to_vec(), DType::BF16);
    let (qb, kb, vb, bb) = (
        zb(&[2, 5, 3, 4]),
        zb(&[2, 5, 3, 4]),
        zb(&[2, 5, 3, 6]),
        zb(&[2, 5, 3]),
    );
    let s0 = z(&[2, 3, 4, 6]);
    let okb = EflaInputs {
        q: &qb,
        k: &kb,
        v: &vb,
        beta: &bb,
        s0: Some(&s0),
        start: None,
    };
    ensure!(
        efla::forward(&dev, &pb, &okb).is_ok(),
        "valid bf16 call rejected"
    );
    let s0b = zb(&[2, 3, 4, 6]);
    ensure!(
        matches!(
            efla::forward(
                &dev,
                &pb,
                &EflaInputs {
                    s0: Some(&s0b),
                    ..okb
                }
            ),
            Err(Error::DType {
                arg: "s0",
                expected: DType::F32,
                ..
            })
        ),
        "bf16 state accepted"
    );
    ensure!(
        matches!(
            efla::forward(&dev, &pb, &EflaInputs { v: &v, ..okb }),
            Err(Error::DType {
                arg: "v",
                expected: DType::BF16,
                ..
            })
        ),
        "f32 v in a bf16 problem"
    );
    let sf = z(&[2, 5]);
    ensure!(
        matches!(
            efla::forward(
                &dev,
                &p,
                &EflaInputs {
                    start: Some(&sf),
                    ..ok
                }
            ),
            Err(Error::DType { arg: "start", .. })
        ),
        "float flags"
    );
    // sizes and options
    for (q, arg) in [
        (Efla::new(0, 5, 3, 4, 6), "batch"),
        (Efla::new(2, 0, 3, 4, 6), "len"),
        (Efla::new(2, 5, 0, 4, 6), "heads"),
        (Efla::new(2, 5, 3, 0, 6), "key_dim"),
        (Efla::new(2, 5, 3, 4, 0), "value_dim"),
        (Efla::new(2, 5, 3, 257, 6), "key_dim"),
        (Efla::new(2, 5, 3, 4, 257), "value_dim"),
        (Efla::new(2, 5, 3, 4, 6).chunked(0), "chunk"),
        (Efla::new(2, 5, 3, 4, 6).chunked(65), "chunk"),
        (Efla::new(2, 5, 3, 4, 6).with_scale(f32::NAN), "scale"),
        (Efla::new(2, 5, 3, 4, 6).with_dtype(DType::U8), "dtype"),
    ] {
        match efla::forward(&dev, &q, &ok) {
            Err(Error::Value { arg: a, .. }) if a == arg => {}
            r => fail!("{arg}: expected a Value error naming it, got {r:?}"),
        }
    }
    // K = V = 256 is allowed
    ensure!(
        Efla::new(1, 1, 1, 256, 256).validate().is_ok(),
        "K = V = 256 rejected"
    );
    // the message names the argument and both shapes
    let msg = efla::forward(&dev, &p, &EflaInputs { q: &bad_q, ..ok })
        .unwrap_err()
        .to_string();
    ensure!(
        msg.contains("`q`") && msg.contains("[2, 5, 3, 4]") && msg.contains("[2, 5, 3, 5]"),
        "message: {msg}"
    );
    // backward: grad_o and grad_final are checked too
    let go = z(&[2, 5, 3, 6]);
    let gf_bad = z(&[2, 3, 4, 5]);
    let bin = EflaBackwardInputs {
        q: &q,
        k: &k,
        v: &v,
        beta: &beta,
        s0: None,
        start: None,
        grad_o: &go,
        grad_final: None,
    };
    ensure!(
        efla::backward(&dev, &p, &bin).is_ok(),
        "valid backward rejected"
    );
    ensure!(
        matches!(
            efla::backward(
                &dev,
                &p,
                &EflaBackwardInputs {
                    grad_o: &bad_v,
                    ..bin
                }
            ),
            Err(Error::Shape { arg: "grad_o", .. })
        ),
        "grad_o"
    );
    ensure!(
        matches!(
            efla::backward(
                &dev,
                &p,
                &EflaBackwardInputs {
                    grad_final: Some(&gf_bad),
                    ..bin
                }
            ),
            Err(Error::Shape {
                arg: "grad_final",
                ..
            })
        ),
        "grad_final"
    );
    // slice level: too few elements
    let qs = vec![0.0; 2 * 5 * 3 * 4 - 1];
    let full = vec![0.0; 2 * 5 * 3 * 6];
    let kk = vec![0.0; 2 * 5 * 3 * 4];
    let bs = vec![0.0; 30];
    let e = efla::reference::forward(
        &p,
        &EflaInputs {
            q: &qs[..],
            k: &kk[..],
            v: &full[..],
            beta: &bs[..],
            s0: None,
            start: None,
        },
    );
    ensure!(
        matches!(e, Err(Error::Size { arg: "q", .. })),
        "size: {e:?}"
    );
    Ok(())
}

/// Property-based: random shapes, options and resets; chunked and recurrent references agree.
fn random_shapes_reference() -> T {
    use proptest::prelude::*;
    let strat = (
        1usize..3,
        1usize..80,
        1usize..3,
        1usize..9,
        1usize..9,
        1usize..65,
        any::<[bool; 3]>(),
        any::<u64>(),
    );
    prop_check(24, strat, |(b, t, h, k, v, c, o, seed)| {
        let p = Efla::new(b, t, h, k, v).with_rule(if o[0] { Rule::Efla } else { Rule::Delta });
        let d = gen(
            p.recurrent(),
            o[1],
            if o[2] { Starts::Edges } else { Starts::None },
            seed,
        );
        let dc = with(&d, p.chunked(c));
        let what = name(&dc.p);
        close(&format!("{what}: o"), &fwd_ref(&dc).o, &fwd_ref(&d).o, 1e-9)?;
        close_grads(&format!("{what}: grads"), &bwd_ref(&dc), &bwd_ref(&d), 1e-8)
    })
}

// ------------------------------------------------------------------ backends

/// Tolerances by storage type: (outputs and gradients, states and ds0). Half results are
/// rounded to half; states are f32 whatever the storage type.
fn tols(dt: DType) -> (f64, f64, f64) {
    match dt {
        DType::F32 => (1e-5, 1e-4, 1e-4),
        _ => (1e-2, 1e-2, 1e-4),
    }
}

struct HostArgs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    s0: Option<Tensor>,
    start: Option<Tensor>,
    go: Tensor,
    gf: Option<Tensor>,
}

fn host_args(d: &Data) -> HostArgs {
    let p = &d.p;
    let t = |n, v: &[f64]| {
        let spec = p.spec(n);
        tensor(&spec.shape, v, p.dtype_of(spec.role))
    };
    HostArgs {
        q: t(efla::Arg::Q, &d.q),
        k: t(efla::Arg::K, &d.k),
        v: t(efla::Arg::V, &d.v),
        beta: t(efla::Arg::Beta, &d.beta),
        s0: d.s0.as_ref().map(|v| t(efla::Arg::S0, v)),
        start: d
            .start
            .as_ref()
            .map(|s| Tensor::new(p.spec(efla::Arg::Start).shape, s.clone()).unwrap()),
        go: t(efla::Arg::GradO, &d.go),
        gf: d.gf.as_ref().map(|v| t(efla::Arg::GradFinal, v)),
    }
}

fn run_forward(dev: &Device, p: &Efla, a: &HostArgs) -> linrec::Result<efla::EflaOutputs<Tensor>> {
    let inp = EflaInputs {
        q: &a.q,
        k: &a.k,
        v: &a.v,
        beta: &a.beta,
        s0: a.s0.as_ref(),
        start: a.start.as_ref(),
    };
    efla::forward(dev, p, &inp)
}

fn run_backward(dev: &Device, p: &Efla, a: &HostArgs) -> linrec::Result<EflaGrads<Tensor>> {
    let inp = EflaBackwardInputs {
        q: &a.q,
        k: &a.k,
        v: &a.v,
        beta: &a.beta,
        s0: a.s0.as_ref(),
        start: a.start.as_ref(),
        grad_o: &a.go,
        grad_final: a.gf.as_ref(),
    };
    efla::backward(dev, p, &inp)
}

/// Forward and backward on `dev` against the f64 reference, and bitwise reproducibility.
fn check_backend(dev: &Device, d: &Data, what: &str) -> T {
    let p = &d.p;
    let (tf, tb, ts) = tols(p.dtype);
    let a = host_args(d);
    let out = run_forward(dev, p, &a)?;
    let r = fwd_ref(d);
    close(&format!("{what} o"), &out.o.to_f64_vec(), &r.o, tf)?;
    close(
        &format!("{what} s_final"),
        &out.s_final.to_f64_vec(),
        &r.s_final,
        ts,
    )?;
    let gr = run_backward(dev, p, &a)?;
    let rr = bwd_ref(d);
    close(&format!("{what} dq"), &gr.dq.to_f64_vec(), &rr.dq, tb)?;
    close(&format!("{what} dk"), &gr.dk.to_f64_vec(), &rr.dk, tb)?;
    close(&format!("{what} dv"), &gr.dv.to_f64_vec(), &rr.dv, tb)?;
    close(
        &format!("{what} dbeta"),
        &gr.dbeta.to_f64_vec(),
        &rr.dbeta,
        tb,
    )?;
    close(&format!("{what} ds0"), &gr.ds0.to_f64_vec(), &rr.ds0, ts)?;
    // run-to-run bitwise equality, on every problem of up to 2^20 state updates (B T H K V):
    // every kernel and option is among those (each_option, shapes, half storage), and a rerun
    // of the big problems would double the slowest tests (on lavapipe and the emulator) for no
    // new path
    if p.batch * p.len * p.heads * p.key_dim * p.value_dim > 1 << 20 {
        return Ok(());
    }
    let again = run_forward(dev, p, &a)?;
    bitwise(
        &format!("{what} o"),
        &out.o.to_f32_vec(),
        &again.o.to_f32_vec(),
    )?;
    bitwise(
        &format!("{what} s_final"),
        &out.s_final.to_f32_vec(),
        &again.s_final.to_f32_vec(),
    )?;
    let again = run_backward(dev, p, &a)?;
    for (n, x, y) in [
        ("dq", &gr.dq, &again.dq),
        ("dk", &gr.dk, &again.dk),
        ("dv", &gr.dv, &again.dv),
        ("dbeta", &gr.dbeta, &again.dbeta),
        ("ds0", &gr.ds0, &again.ds0),
    ] {
        bitwise(&format!("{what} {n}"), &x.to_f32_vec(), &y.to_f32_vec())?;
    }
    Ok(())
}

/// Both rules x (recurrent, chunked 64, chunked 16) x (no state or resets, both): T not a
/// multiple of the chunk, K crossing a 64-column tile, odd V, B and H > 1.
fn each_option_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let mut seed = 1000;
    for p in variants(2, 150, 2, 67, 9, &[64, 16]) {
        for (s0, st) in [(false, Starts::None), (true, Starts::Edges)] {
            seed += 1;
            let d = gen(p, s0, st, seed);
            check_backend(&dev, &d, &format!("{bk} {} s0={s0} {st:?}", name(&p)))?;
        }
    }
    Ok(())
}
fn wgpu_each_option() -> T {
    each_option_on("wgpu")
}
fn cuda_each_option() -> T {
    each_option_on("cuda")
}

/// T = 1 (decode), B = H = 1, K = V = 1, K = V = 256, V > 64, long rows.
fn shapes_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let shapes: &[(usize, usize, usize, usize, usize)] = &[
        (3, 1, 2, 16, 16),
        (1, 1, 1, 1, 1),
        (1, 2, 1, 1, 3),
        (1, 33, 1, 256, 256),
        (2, 70, 3, 5, 130),
        (1, 4096, 1, 16, 8),
        (5, 65, 1, 32, 40),
        (16, 20, 3, 8, 8),
    ];
    for (i, &(b, t, h, k, v)) in shapes.iter().enumerate() {
        // every algorithm on every shape, the rule alternating from shape to shape (it changes
        // one coefficient, not the kernels; each_option holds both rules on every algorithm)
        let rule = if i % 2 == 0 { Rule::Efla } else { Rule::Delta };
        let ps = variants(b, t, h, k, v, &[64, 32]).into_iter();
        for (j, p) in ps.filter(|p| p.rule == rule).enumerate() {
            let st = if j % 2 == 0 {
                Starts::Edges
            } else {
                Starts::None
            };
            let d = gen(p, j % 3 != 1, st, 2000 + (i * 10 + j) as u64);
            check_backend(&dev, &d, &format!("{bk} {}", name(&p)))?;
        }
    }
    Ok(())
}
fn wgpu_shapes() -> T {
    shapes_on("wgpu")
}
fn cuda_shapes() -> T {
    shapes_on("cuda")
}

/// k = 0 and beta ||k||^2 up to 1e4 on the GPU kernels.
fn extreme_on(bk: &str) -> T {
    let dev = backend(bk)?;
    for (i, p) in variants(2, 100, 2, 12, 7, &[64, 16])
        .into_iter()
        .filter(|p| p.rule == Rule::Efla)
        .enumerate()
    {
        let d = extreme(p, 2500 + i as u64);
        check_backend(&dev, &d, &format!("{bk} extreme {}", name(&p)))?;
    }
    Ok(())
}
fn wgpu_extreme_inputs() -> T {
    extreme_on("wgpu")
}
fn cuda_extreme_inputs() -> T {
    extreme_on("cuda")
}

/// f16 and bf16 storage (rel <= 1e-2 against the reference fed the same rounded inputs).
fn half_storage_on(dev: &Device, what: &str) -> T {
    for dt in [DType::F16, DType::BF16] {
        for (i, p) in variants(2, 77, 2, 24, 10, &[32]).into_iter().enumerate() {
            let d = gen(p.with_dtype(dt), i % 2 == 0, Starts::Edges, 3000 + i as u64);
            check_backend(dev, &d, &format!("{what} {}", name(&d.p)))?;
        }
    }
    Ok(())
}
fn wgpu_half_storage() -> T {
    let dev = wgpu()?;
    half_storage_on(&dev, "wgpu")
}
fn cuda_half_storage() -> T {
    let dev = cuda_dev()?;
    half_storage_on(&dev, "cuda")
}

/// f16 storage on a device without SHADER_F16 (packed words and unpack2x16float).
fn wgpu_f16_without_shader_f16() -> T {
    let _ = wgpu_ctx()?;
    let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
        disable_f16: true,
        ..linrec::WgpuOptions::from_env().unwrap()
    })?;
    ensure!(!ctx.has_f16(), "SHADER_F16 still enabled");
    let dev = Device::Wgpu(ctx);
    for (i, p) in variants(1, 40, 3, 9, 6, &[16]).into_iter().enumerate() {
        let d = gen(
            p.with_dtype(DType::F16),
            true,
            Starts::Edges,
            3100 + i as u64,
        );
        check_backend(&dev, &d, &format!("packed f16 {}", name(&d.p)))?;
    }
    Ok(())
}

/// The workgroup-memory fallback of the recurrent kernels' lane sums (no subgroups).
fn wgpu_without_subgroups() -> T {
    let dev = wgpu_no_subgroups()?;
    if !wgpu_ctx()?.has_subgroups() {
        eprintln!("note: the default adapter has no subgroups; both runs use the fallback");
    }
    for (i, p) in variants(2, 90, 2, 37, 45, &[32]).into_iter().enumerate() {
        let d = gen(p, true, Starts::Edges, 3200 + i as u64);
        check_backend(&dev, &d, &format!("no subgroups {}", name(&p)))?;
        let d = gen(
            p.with_dtype(DType::BF16),
            false,
            Starts::None,
            3250 + i as u64,
        );
        check_backend(&dev, &d, &format!("no subgroups {}", name(&d.p)))?;
    }
    Ok(())
}

/// T = 4096 (the longest the f32 bounds cover) on both algorithms; prints the errors measured.
fn long_sequences_on(bk: &str) -> T {
    let dev = backend(bk)?;
    // variants: EFLA recurrent, EFLA chunked, delta recurrent, delta chunked; each with one
    // storage dtype, so every rule, algorithm and dtype is held at T = 4096 (the accumulation
    // over a long sequence runs the same code whatever the rule)
    let dtypes = [DType::F32, DType::BF16, DType::BF16, DType::F32];
    for (i, (p, dt)) in variants(1, 4096, 2, 32, 32, &[64])
        .into_iter()
        .zip(dtypes)
        .enumerate()
    {
        let mut d = gen(p.with_dtype(dt), true, Starts::Edges, 3600 + i as u64);
        // keep the initial state in play (its gradient is then not trivially zero)
        d.start.as_mut().unwrap()[0] = 0;
        check_backend(&dev, &d, &format!("{bk} {}", name(&d.p)))?;
    }
    Ok(())
}
fn long_wgpu() -> T {
    long_sequences_on("wgpu")
}
fn long_cuda() -> T {
    long_sequences_on("cuda")
}

/// Property-based: random shapes, options, dtypes and resets, every GPU backend.
fn random_shapes_all_backends() -> T {
    use proptest::prelude::*;
    on_gpus(|dev, bk| {
        let strat = (
            1usize..4,
            1usize..200,
            1usize..4,
            1usize..80,
            1usize..80,
            prop::sample::select(vec![0usize, 16, 32, 64, 7]),
            0usize..3,
            any::<[bool; 3]>(),
            any::<u64>(),
        );
        prop_check(16, strat, |(b, t, h, k, v, c, dt, o, seed)| {
            let mut p =
                Efla::new(b, t, h, k, v).with_rule(if o[0] { Rule::Efla } else { Rule::Delta });
            p = if c == 0 { p.recurrent() } else { p.chunked(c) };
            p = p.with_dtype([DType::F32, DType::F16, DType::BF16][dt]);
            let d = gen(
                p,
                o[1],
                if o[2] { Starts::Edges } else { Starts::None },
                seed,
            );
            check_backend(dev, &d, &format!("{bk} {}", name(&p)))
        })
    })
}

/// T = 1 calls chained through the state on the device equal one call (the decode path).
fn decode_chain_on(bk: &str) -> T {
    let dev = backend(bk)?;
    for p0 in variants(3, 12, 2, 8, 5, &[64]) {
        let d = gen(p0, true, Starts::Edges, 3300);
        let whole = fwd_ref(&d);
        let mut s = tensor(
            &p0.spec(efla::Arg::S0).shape,
            d.s0.as_ref().unwrap(),
            DType::F32,
        );
        let mut outs = vec![Vec::new(); 3];
        for t in 0..12 {
            let sd = sub(&d, t, 1, None);
            let mut a = host_args(&sd);
            a.s0 = Some(s);
            let o = run_forward(&dev, &sd.p, &a)?;
            let ov = o.o.to_f64_vec();
            for (b, ob) in outs.iter_mut().enumerate() {
                ob.extend_from_slice(&ov[b * 10..(b + 1) * 10]);
            }
            s = o.s_final;
        }
        close(
            &format!("{bk} decode {} final", name(&p0)),
            &s.to_f64_vec(),
            &whole.s_final,
            1e-5,
        )?;
        close(
            &format!("{bk} decode {} outputs", name(&p0)),
            &outs.concat(),
            &whole.o,
            1e-5,
        )?;
    }
    Ok(())
}
fn wgpu_decode_chain() -> T {
    decode_chain_on("wgpu")
}
fn cuda_decode_chain() -> T {
    decode_chain_on("cuda")
}

/// Devices with tiny bindings and grids: work is split over groups of batch rows, or over
/// single rows and groups of heads when one row's scratch is too large, grids go 2-D, and
/// results still match; what cannot be split is a clear Limit error.
fn wgpu_split_limits() -> T {
    let _ = wgpu_ctx()?;
    let open = |bytes: u64| {
        linrec::WgpuContext::with_options(&linrec::WgpuOptions {
            max_storage_buffer_binding_size: Some(bytes),
            max_compute_workgroups_per_dimension: Some(16),
            ..linrec::WgpuOptions::from_env().unwrap()
        })
    };
    // 16 KiB: the recurrent kernels run 4 batch rows per group forward, 1 backward
    let dev = Device::Wgpu(open(16 * 1024)?);
    for rule in [Rule::Efla, Rule::Delta] {
        let p = Efla::new(7, 40, 2, 12, 12).with_rule(rule).recurrent();
        for (i, dt) in [DType::F32, DType::BF16].into_iter().enumerate() {
            let d = gen(p.with_dtype(dt), true, Starts::Edges, 3400 + i as u64);
            check_backend(&dev, &d, &format!("split {}", name(&d.p)))?;
        }
    }
    // 256 KiB: the chunked backward of (2, 100, 6, ..) needs ~168 KB of scratch per (row,
    // head), so it runs one head at a time; (7, 40, 2, ..) runs several rows per group
    let dev = Device::Wgpu(open(256 * 1024)?);
    for (b, t, h) in [(7, 40, 2), (2, 100, 6)] {
        for (i, p) in variants(b, t, h, 16, 12, &[32]).into_iter().enumerate() {
            let d = gen(p, true, Starts::Edges, 3410 + i as u64);
            check_backend(&dev, &d, &format!("split {}", name(&p)))?;
            let d = gen(
                p.with_dtype(DType::BF16),
                true,
                Starts::Edges,
                3450 + i as u64,
            );
            check_backend(&dev, &d, &format!("split {}", name(&d.p)))?;
        }
    }
    // one batch row of o alone (320 KB) exceeds a binding
    for p in [
        Efla::new(1, 5000, 1, 16, 16),
        Efla::new(1, 5000, 1, 16, 16).recurrent(),
    ] {
        let d = gen(p, false, Starts::None, 9);
        match check_backend(&dev, &d, "too big") {
            Err(Stop::Fail(m)) if m.contains("max_storage_buffer_binding_size") => {}
            Err(Stop::Fail(m)) => fail!("unexpected error: {m}"),
            _ => fail!("a 320000-byte row was accepted with 262144-byte bindings"),
        }
    }
    Ok(())
}

/// The zero-copy API on ranges at odd element offsets inside larger caller buffers (f32 and
/// bf16, whose odd offsets split packed words).
fn wgpu_zero_copy_offsets() -> T {
    use linrec::GpuRef;
    let ctx = wgpu_ctx()?;
    for (dt, alg) in [
        (DType::F32, Algorithm::Recurrent),
        (DType::BF16, Algorithm::Chunked { chunk: 16 }),
        (DType::F32, Algorithm::Chunked { chunk: 64 }),
    ] {
        let p = Efla::new(2, 45, 2, 5, 3).with_dtype(dt).with_algorithm(alg);
        let d = gen(p, true, Starts::Edges, 3500);
        let mk = |v: &[f64], pad: usize, dt: DType| padded_buffer(&ctx, v, pad, dt);
        let es = dt.size() as u64;
        let (bq, bk, bv, bb) = (
            mk(&d.q, 5, dt),
            mk(&d.k, 33, dt),
            mk(&d.v, 1, dt),
            mk(&d.beta, 3, dt),
        );
        let bs0 = mk(d.s0.as_ref().unwrap(), 7, DType::F32);
        let st = d.start.as_ref().unwrap();
        let bst = padded_flags(&ctx, st, 3);
        let inp = EflaInputs {
            q: GpuRef::new(&bq, 5 * es, d.q.len(), dt),
            k: GpuRef::new(&bk, 33 * es, d.k.len(), dt),
            v: GpuRef::new(&bv, es, d.v.len(), dt),
            beta: GpuRef::new(&bb, 3 * es, d.beta.len(), dt),
            s0: Some(GpuRef::new(
                &bs0,
                28,
                d.s0.as_ref().unwrap().len(),
                DType::F32,
            )),
            start: Some(GpuRef::new(&bst, 12, st.len(), DType::U32)),
        };
        let out = efla::wgpu::forward(&ctx, &p, &inp)?;
        let r = fwd_ref(&d);
        let (tf, _, ts) = tols(dt);
        close(
            &format!("zero-copy {dt} {alg:?} o"),
            &ctx.download(&out.o)?.to_f64_vec(),
            &r.o,
            tf,
        )?;
        close(
            &format!("zero-copy {dt} {alg:?} s_final"),
            &ctx.download(&out.s_final)?.to_f64_vec(),
            &r.s_final,
            ts,
        )?;
        // a range past the end of its buffer is rejected
        let bad = EflaInputs {
            q: GpuRef::new(&bq, 9 * es, d.q.len(), dt),
            ..inp
        };
        ensure!(
            matches!(
                efla::wgpu::forward(&ctx, &p, &bad),
                Err(Error::Size { arg: "q", .. })
            ),
            "range past the end accepted"
        );
        // flags must be u32 words at this level
        let bad = EflaInputs {
            start: Some(GpuRef::new(&bst, 12, st.len(), DType::U8)),
            ..inp
        };
        ensure!(
            matches!(
                efla::wgpu::forward(&ctx, &p, &bad),
                Err(Error::DType { arg: "start", .. })
            ),
            "u8 flags accepted"
        );
    }
    Ok(())
}

/// The tensor-core building blocks of the chunked CUDA kernels (mma fragments, ldmatrix with
/// and without .trans, the operand loaders, bf16 splitting) against the PTX ISA's tables: on a
/// GPU this checks linrec's reading of the ISA, on the emulator the emulator itself.
fn cuda_tensor_core_layouts() -> T {
    let dev = cuda_dev()?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(be) = &dev {
        efla::cuda::tensor_core_selftest(be)?;
    }
    let _ = dev;
    Ok(())
}

/// The chunked CUDA kernels on half storage at the benchmark's head size (K = V = 128, and
/// 256), against fla's own bf16 thresholds (RMS-relative 0.006 on outputs, 0.008 on
/// gradients: the metric `rel` is the same) and with f32-accurate states (they are computed
/// on split-bf16 tensor-core operands); prints the errors measured.
fn cuda_half_fla_thresholds() -> T {
    let dev = cuda_dev()?;
    for (i, &(b, t, h, kv, dt)) in [
        (2, 200, 2, 128, DType::BF16),
        (1, 130, 1, 256, DType::BF16),
        (1, 100, 2, 128, DType::F16),
    ]
    .iter()
    .enumerate()
    {
        for rule in [Rule::Delta, Rule::Efla] {
            let p = Efla::new(b, t, h, kv, kv).with_rule(rule).with_dtype(dt);
            let mut d = gen(p, true, Starts::Edges, 4000 + i as u64);
            // keep s0 and the last chunk's state in play
            for row in d.start.as_mut().unwrap().chunks_mut(t) {
                row[0] = 0;
                row[t - 1] = 0;
            }
            let a = host_args(&d);
            let (o, g) = (run_forward(&dev, &p, &a)?, run_backward(&dev, &p, &a)?);
            let (ro, rg) = (fwd_ref(&d), bwd_ref(&d));
            let what = format!("cuda {}", name(&p));
            eprintln!(
                "{what}: rel o {:.1e} s_final {:.1e} dq {:.1e} dk {:.1e} dv {:.1e} dbeta {:.1e} ds0 {:.1e}",
                rel(&o.o.to_f64_vec(), &ro.o),
                rel(&o.s_final.to_f64_vec(), &ro.s_final),
                rel(&g.dq.to_f64_vec(), &rg.dq),
                rel(&g.dk.to_f64_vec(), &rg.dk),
                rel(&g.dv.to_f64_vec(), &rg.dv),
                rel(&g.dbeta.to_f64_vec(), &rg.dbeta),
                rel(&g.ds0.to_f64_vec(), &rg.ds0),
            );
            close(&format!("{what} o"), &o.o.to_f64_vec(), &ro.o, 0.006)?;
            close(
                &format!("{what} s_final"),
                &o.s_final.to_f64_vec(),
                &ro.s_final,
                1e-4,
            )?;
            for (n, x, y) in [
                ("dq", &g.dq, &rg.dq),
                ("dk", &g.dk, &rg.dk),
                ("dv", &g.dv, &rg.dv),
                ("dbeta", &g.dbeta, &rg.dbeta),
            ] {
                close(&format!("{what} {n}"), &x.to_f64_vec(), y, 0.008)?;
            }
            close(&format!("{what} ds0"), &g.ds0.to_f64_vec(), &rg.ds0, 1e-4)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ native CPU kernels

/// Both rules x (recurrent, chunked 16) x (no state or resets, both), at the shape of
/// `each_option_on` (kept to fewer variants: the debug-build reference dominates the time).
fn cpu_each_option() -> T {
    let mut seed = 1000;
    for p in variants(2, 150, 2, 67, 9, &[16]) {
        for (s0, st) in [(false, Starts::None), (true, Starts::Edges)] {
            seed += 1;
            let d = gen(p, s0, st, seed);
            check_backend(
                &Device::Cpu,
                &d,
                &format!("cpu {} s0={s0} {st:?}", name(&p)),
            )?;
        }
    }
    Ok(())
}

/// T = 1 (decode), B = H = 1, K = V = 1, K = V = 256, V not a multiple of 8, many heads; the
/// long row is in `cpu_long`.
fn cpu_shapes() -> T {
    let shapes: &[(usize, usize, usize, usize, usize)] = &[
        (3, 1, 2, 16, 16),
        (1, 1, 1, 1, 1),
        (1, 2, 1, 1, 3),
        (1, 9, 1, 256, 256),
        (2, 40, 3, 5, 130),
        (5, 65, 1, 32, 40),
        (16, 20, 3, 8, 8),
    ];
    for (i, &(b, t, h, k, v)) in shapes.iter().enumerate() {
        for (j, p) in variants(b, t, h, k, v, &[32]).into_iter().enumerate() {
            let st = if j % 2 == 0 {
                Starts::Edges
            } else {
                Starts::None
            };
            let d = gen(p, j % 3 != 1, st, 2000 + (i * 10 + j) as u64);
            check_backend(&Device::Cpu, &d, &format!("cpu {}", name(&p)))?;
        }
    }
    Ok(())
}
fn cpu_extreme_inputs() -> T {
    extreme_on("cpu")
}
fn cpu_half_storage() -> T {
    half_storage_on(&Device::Cpu, "cpu")
}
fn cpu_decode_chain() -> T {
    decode_chain_on("cpu")
}
/// T = 4096 (the longest the f32 bounds cover) with resets on the CPU, EFLA recurrent and the
/// delta rule chunked, f32 and bf16.
fn cpu_long() -> T {
    let p = Efla::new(1, 4096, 1, 16, 16);
    for (i, p) in [p.recurrent(), p.delta().chunked(64)]
        .into_iter()
        .enumerate()
    {
        for dt in [DType::F32, DType::BF16] {
            let mut d = gen(p.with_dtype(dt), true, Starts::Edges, 3600 + i as u64);
            d.start.as_mut().unwrap()[0] = 0;
            check_backend(&Device::Cpu, &d, &format!("cpu {}", name(&d.p)))?;
        }
    }
    Ok(())
}

/// The CPU's chunked algorithm (chunk products on `gemm-f32`) at chunks of 1, 7 (odd), 16 and
/// 64 (the default), T not a multiple of any of them, K = 1, odd K and V, the bench's K = V = 64,
/// fresh random inputs with `s0` and resets (mid-chunk, on chunk edges, at T-1), both rules,
/// f32 and bf16 storage; prints the errors against the f64 reference.
fn cpu_chunked_sizes() -> T {
    let mut seed = 3800;
    for (b, t, h, k, v) in [(3, 20, 2, 1, 3), (2, 150, 2, 37, 45), (1, 301, 1, 64, 64)] {
        for rule in [Rule::Efla, Rule::Delta] {
            for (c, dt) in [
                (1, DType::F32),
                (7, DType::F32),
                (16, DType::BF16),
                (64, DType::F32),
            ] {
                seed += 1;
                let p = Efla::new(b, t, h, k, v)
                    .with_rule(rule)
                    .chunked(c)
                    .with_dtype(dt);
                let mut d = gen(p, true, Starts::Edges, seed);
                if seed % 2 == 0 {
                    // keep the initial state in play on this row
                    d.start.as_mut().unwrap()[0] = 0;
                }
                let a = host_args(&d);
                let (o, g) = (
                    run_forward(&Device::Cpu, &p, &a)?,
                    run_backward(&Device::Cpu, &p, &a)?,
                );
                let (ro, rg) = (fwd_ref(&d), bwd_ref(&d));
                eprintln!(
                    "cpu {}: rel o {:.1e} s_final {:.1e} dq {:.1e} dk {:.1e} dv {:.1e} dbeta {:.1e} ds0 {:.1e}",
                    name(&p),
                    rel(&o.o.to_f64_vec(), &ro.o),
                    rel(&o.s_final.to_f64_vec(), &ro.s_final),
                    rel(&g.dq.to_f64_vec(), &rg.dq),
                    rel(&g.dk.to_f64_vec(), &rg.dk),
                    rel(&g.dv.to_f64_vec(), &rg.dv),
                    rel(&g.dbeta.to_f64_vec(), &rg.dbeta),
                    rel(&g.ds0.to_f64_vec(), &rg.ds0),
                );
                check_backend(&Device::Cpu, &d, &format!("cpu {}", name(&p)))?;
            }
        }
    }
    Ok(())
}

/// Every output and gradient of the CPU kernels, bitwise equal on 1, 2 and 3 threads (the
/// recurrent algorithm and the chunked one, with chunks of 16 and 64).
fn cpu_threads_bitwise() -> T {
    for p in variants(3, 70, 3, 12, 9, &[16, 64]) {
        let d = gen(p, true, Starts::Edges, 3400);
        let a = host_args(&d);
        let run = || {
            let f = run_forward(&Device::Cpu, &d.p, &a).unwrap();
            let g = run_backward(&Device::Cpu, &d.p, &a).unwrap();
            [f.o, f.s_final, g.dq, g.dk, g.dv, g.dbeta, g.ds0].map(|x| x.to_f32_vec())
        };
        let one = with_threads(1, run);
        for n in [2, 3] {
            let other = with_threads(n, run);
            for (k, (x, y)) in one.iter().zip(&other).enumerate() {
                bitwise(&format!("{} result {k} on {n} threads", name(&p)), x, y)?;
            }
        }
    }
    Ok(())
}

/// Non-finite isolation (docs/efla.md): NaN and infinity in the inputs (and `s0`, and
/// `grad_o`) before a reset leave every per-step result from the reset on and the final state
/// bitwise equal to a run with finite inputs (and after it: the steps before it and `ds0`),
/// on `dev` for every rule,
/// algorithm (chunks that straddle the reset included) and storage dtype in `dtypes`; before
/// the reset the non-finite results are those of the recurrent f64 reference (never
/// swallowed; with `chunked_reaches_back`, the chunked algorithm may also reach the earlier
/// steps of its piece: a superset). The chunked f64 reference is held to the same pattern.
fn nonfinite_isolated_by_resets(dev: &Device, dtypes: &[DType], chunked_reaches_back: bool) -> T {
    nonfinite_isolated_shape(dev, dtypes, chunked_reaches_back, (2, 40, 2, 6, 5), 20, 16)
}

/// [`nonfinite_isolated_by_resets`] on `[B, T, H]` with key and value sizes `K`, `V` (`shape`),
/// the reset at step `tr` of every row and chunks of `chunk` steps.
fn nonfinite_isolated_shape(
    dev: &Device,
    dtypes: &[DType],
    chunked_reaches_back: bool,
    shape: (usize, usize, usize, usize, usize),
    tr: usize,
    chunk: usize,
) -> T {
    let (bn, tn, hn, kd, vd) = shape;
    let ps = variants(bn, tn, hn, kd, vd, &[chunk]);
    // element 0 of (row b, step t, head h) in a [B, T, H, n] tensor
    let at = |b: usize, t: usize, h: usize, n: usize| ((b * tn + t) * hn + h) * n;
    let (b1, h1) = (bn - 1, hn - 1);
    let run = |d: &Data| -> Result<Vec<(Vec<f32>, usize)>, Stop> {
        let a = host_args(d);
        let f = run_forward(dev, &d.p, &a)?;
        let g = run_backward(dev, &d.p, &a)?;
        Ok(vec![
            (f.o.to_f32_vec(), vd),
            (g.dq.to_f32_vec(), kd),
            (g.dk.to_f32_vec(), kd),
            (g.dv.to_f32_vec(), vd),
            (g.dbeta.to_f32_vec(), 1),
            (f.s_final.to_f32_vec(), 0),
            (g.ds0.to_f32_vec(), 0),
        ])
    };
    // the non-finite pattern of the f64 reference
    let pattern = |d: &Data| -> Vec<Vec<bool>> {
        let (ro, rg) = (fwd_ref(d), bwd_ref(d));
        [ro.o, rg.dq, rg.dk, rg.dv, rg.dbeta, ro.s_final, rg.ds0]
            .iter()
            .map(|r| r.iter().map(|v| !v.is_finite()).collect())
            .collect()
    };
    for (i, p) in ps
        .iter()
        .flat_map(|p| dtypes.iter().map(|&dt| p.with_dtype(dt)))
        .enumerate()
    {
        let mut clean = gen(p, true, Starts::None, 3500 + i as u64);
        let mut s = vec![0u8; bn * tn];
        for b in 0..bn {
            s[b * tn + tr] = 1;
        }
        clean.start = Some(s);
        let xb = run(&clean)?;
        // non-finite values before the reset (`after` false), then after it; one kind per
        // (row, head) where the shape has several, so that none hides another
        for after in [false, true] {
            let mut d = clean.clone();
            let t = if after { tr + 1 } else { tr - 1 };
            d.q[at(0, t, 0, kd)] = f64::NAN;
            d.k[at(0, t, h1, kd) + 2] = f64::INFINITY;
            d.beta[at(b1, t, 0, 1)] = f64::NAN;
            d.go[at(b1, t, h1, vd) + 1] = f64::NAN;
            if after {
                d.v[at(b1, tr, 0, vd) + vd - 1] = f64::NAN;
                d.go[at(0, tn - 1, h1, vd)] = f64::NEG_INFINITY;
            } else {
                d.v[at(0, 3, h1, vd)] = f64::NAN;
                d.v[at(b1, tr - 5, h1, vd) + vd - 1] = f64::NAN;
                d.s0.as_mut().unwrap()[(b1 * hn) * kd * vd] = f64::NAN;
            }
            let what = |k: usize| format!("{} result {k} (after: {after})", name(&p));
            let xa = run(&d)?;
            ensure!(xa[0].0.iter().any(|v| v.is_nan()), "{}: no NaN", what(0));
            // before the reset the reference's non-finite results, recurrent and chunked
            let mut rec = d.clone();
            rec.p.algorithm = Algorithm::Recurrent;
            let want = pattern(&rec);
            let got = pattern(&d);
            ensure!(
                got == want,
                "{}: the f64 reference's non-finite results differ from the recurrent form's",
                what(0)
            );
            let superset = chunked_reaches_back && p.algorithm != Algorithm::Recurrent;
            for (k, ((x, _), w)) in xa.iter().zip(&want).enumerate() {
                for (j, (v, &nf)) in x.iter().zip(w).enumerate() {
                    ensure!(
                        v.is_finite() != nf || (superset && !v.is_finite()),
                        "{}[{j}] = {v}: the reference's is {}finite",
                        what(k),
                        if nf { "not " } else { "" }
                    );
                }
            }
            // the other side of the reset exactly as with finite inputs: the steps from the
            // reset on and s_final, or the steps before it and ds0
            for (k, ((x, n), (y, _))) in xa.iter().zip(&xb).enumerate() {
                let ranges: Vec<std::ops::Range<usize>> = match (*n, after) {
                    (0, _) if (k == 5) == after => continue,
                    (0, _) => std::iter::once(0..x.len()).collect(),
                    (n, false) => (0..bn)
                        .map(|b| (b * tn + tr) * hn * n..(b + 1) * tn * hn * n)
                        .collect(),
                    (n, true) => (0..bn)
                        .map(|b| b * tn * hn * n..(b * tn + tr) * hn * n)
                        .collect(),
                };
                for r in ranges {
                    ensure!(
                        x[r.clone()].iter().all(|v| v.is_finite()),
                        "{}: non-finite across the reset",
                        what(k)
                    );
                    bitwise(&what(k), &x[r.clone()], &y[r])?;
                }
            }
        }
    }
    Ok(())
}

fn cpu_nonfinite_isolated_by_resets() -> T {
    // (the CPU's chunked products run over the whole piece: docs/efla.md)
    nonfinite_isolated_by_resets(&Device::Cpu, &[DType::F32, DType::F16, DType::BF16], true)
}

fn wgpu_nonfinite_isolated_by_resets() -> T {
    let dev = wgpu()?;
    let mut dts = vec![DType::F32, DType::BF16];
    if let Device::Wgpu(c) = &dev {
        if c.has_f16() {
            dts.push(DType::F16);
        }
    }
    nonfinite_isolated_by_resets(&dev, &dts, false)
}

fn cuda_nonfinite_isolated_by_resets() -> T {
    let dev = cuda_dev()?;
    nonfinite_isolated_by_resets(&dev, &[DType::F32, DType::F16, DType::BF16], false)?;
    // the chunked kernels' other paths: two key blocks (the state passes restage K after a
    // reset), two column blocks of V, 64-step chunks with the reset inside the second (and
    // last, partial) one
    nonfinite_isolated_shape(
        &dev,
        &[DType::F32, DType::BF16],
        false,
        (2, 80, 2, 70, 40),
        70,
        64,
    )
}

fn main() {
    common::main(trials![
        reference_matches_spec_transcription,
        reference_gradients_match_finite_differences,
        chunked_equals_recurrent,
        efla_unit_keys_is_reparametrized_delta,
        efla_extreme_inputs,
        packed_rows_equal_separate_rows,
        chained_calls_equal_one_call,
        errors_name_the_argument,
        random_shapes_reference,
        wgpu_each_option,
        cuda_each_option,
        wgpu_shapes,
        cuda_shapes,
        wgpu_extreme_inputs,
        cuda_extreme_inputs,
        wgpu_half_storage,
        cuda_half_storage,
        wgpu_f16_without_shader_f16,
        wgpu_without_subgroups,
        random_shapes_all_backends,
        wgpu_decode_chain,
        cuda_decode_chain,
        long_wgpu,
        long_cuda,
        wgpu_split_limits,
        wgpu_zero_copy_offsets,
        cuda_tensor_core_layouts,
        cuda_half_fla_thresholds,
        cpu_each_option,
        cpu_shapes,
        cpu_extreme_inputs,
        cpu_half_storage,
        cpu_decode_chain,
        cpu_long,
        cpu_chunked_sizes,
        cpu_threads_bitwise,
        cpu_nonfinite_isolated_by_resets,
        wgpu_nonfinite_isolated_by_resets,
        cuda_nonfinite_isolated_by_resets,
    ]);
}
