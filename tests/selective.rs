//! Selective scan (docs/selective.md): the reference pinned against an independent
//! transcription of the equations, finite differences of every gradient, the N = 1 identity
//! with the linear scan, packing, chaining and absent-input identities, errors, and every
//! backend against the reference (options x shapes, storage dtypes, subgroup and
//! workgroup-memory paths, small device limits, zero-copy offsets, determinism).

mod common;
use common::*;
use linrec::scan::{self, LinearScan, ScanInputs};
use linrec::selective::{
    self, BcMode, SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs,
    SelectiveScan,
};
use linrec::{DType, Device, Error, Problem, Tensor};

/// Inputs of one problem in f64, already rounded to what a kernel sees (the storage dtype for
/// sequence tensors, f32 for the rest).
#[derive(Clone)]
struct Data {
    p: SelectiveScan,
    u: Vec<f64>,
    delta: Vec<f64>,
    a: Vec<f64>,
    bm: Vec<f64>,
    cm: Vec<f64>,
    dskip: Option<Vec<f64>>,
    z: Option<Vec<f64>>,
    bias: Option<Vec<f64>>,
    h0: Option<Vec<f64>>,
    start: Option<Vec<u8>>,
    g: Vec<f64>,
    gf: Option<Vec<f64>>,
}

#[derive(Clone, Copy, Debug)]
enum Starts {
    None,
    /// t = 0 (even rows), a mid-chunk step, T-1, and a few random ones.
    Edges,
}

/// Which optional inputs are present.
#[derive(Clone, Copy, Debug)]
struct Opts {
    dskip: bool,
    z: bool,
    bias: bool,
    h0: bool,
    gf: bool,
    starts: Starts,
}

const ALL: Opts = Opts {
    dskip: true,
    z: true,
    bias: true,
    h0: true,
    gf: true,
    starts: Starts::Edges,
};
const NONE: Opts = Opts {
    dskip: false,
    z: false,
    bias: false,
    h0: false,
    gf: false,
    starts: Starts::None,
};

fn round(v: Vec<f64>, dtype: DType) -> Vec<f64> {
    Tensor::from_f64([v.len()], &v, dtype).unwrap().to_f64_vec()
}

fn gen(p: SelectiveScan, o: Opts, seed: u64) -> Data {
    gen_from(p, o, Rng::new(seed))
}

/// `gen` from a given generator.
fn gen_from(p: SelectiveScan, o: Opts, mut r: Rng) -> Data {
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let sq = |v: Vec<f64>| round(v, p.dtype);
    let pf = |v: Vec<f64>| round(v, DType::F32);
    let bc_dt = if p.input_dependent() {
        p.dtype
    } else {
        DType::F32
    };
    let nbc = p.spec(selective::Arg::Bm).numel();
    let u = sq(r.vec(bn * tn * dn, -1.0, 1.0));
    // dt = softplus(delta + bias) in about [0.02, 1], or delta + bias in [0.01, 0.6]
    let delta = if p.softplus {
        sq(r.vec(bn * tn * dn, -4.0, 0.5))
    } else {
        sq(r.vec(bn * tn * dn, 0.01, 0.5))
    };
    let a = pf((0..dn * ns).map(|_| -r.uniform(0.1, 2.0)).collect());
    let bm = round(r.vec(nbc, -1.0, 1.0), bc_dt);
    let cm = round(r.vec(nbc, -1.0, 1.0), bc_dt);
    let dskip = o.dskip.then(|| pf(r.vec(dn, -1.0, 1.0)));
    let z = o.z.then(|| sq(r.vec(bn * tn * dn, -2.0, 2.0)));
    let bias = o.bias.then(|| {
        pf(if p.softplus {
            r.vec(dn, -1.0, 1.0)
        } else {
            r.vec(dn, 0.0, 0.1)
        })
    });
    let h0 = o.h0.then(|| pf(r.vec(bn * dn * ns, -1.0, 1.0)));
    let start = match o.starts {
        Starts::None => None,
        Starts::Edges => {
            let mut s = r.flags(bn * tn, 0.03);
            for b in 0..bn {
                let row = &mut s[b * tn..(b + 1) * tn];
                row[0] = u8::from(b % 2 == 0);
                row[tn / 2] = 1;
                row[tn - 1] = 1;
                if tn > 21 {
                    row[21] = 1; // inside a chunk of every kernel
                }
            }
            Some(s)
        }
    };
    let g = sq(r.vec(bn * tn * dn, -1.0, 1.0));
    let gf = o.gf.then(|| pf(r.vec(bn * dn * ns, -1.0, 1.0)));
    Data {
        p,
        u,
        delta,
        a,
        bm,
        cm,
        dskip,
        z,
        bias,
        h0,
        start,
        g,
        gf,
    }
}

fn inputs(d: &Data) -> SelectiveInputs<&[f64], &[u8]> {
    SelectiveInputs {
        u: &d.u,
        delta: &d.delta,
        a: &d.a,
        bm: &d.bm,
        cm: &d.cm,
        dskip: d.dskip.as_deref(),
        z: d.z.as_deref(),
        delta_bias: d.bias.as_deref(),
        h0: d.h0.as_deref(),
        start: d.start.as_deref(),
    }
}

fn fwd_ref(d: &Data) -> SelectiveOutputs<Vec<f64>> {
    selective::reference::forward(&d.p, &inputs(d)).expect("valid problem")
}

fn bwd_ref(d: &Data) -> SelectiveGrads<Vec<f64>> {
    selective::reference::backward(&d.p, &inputs(d).with_grads(&d.g, d.gf.as_deref()))
        .expect("valid problem")
}

fn loss(d: &Data) -> f64 {
    let o = fwd_ref(d);
    dot(&d.g, &o.out) + d.gf.as_ref().map_or(0.0, |gf| dot(gf, &o.h_final))
}

/// docs/selective.md transcribed directly, in a different order from the reference: all dt first,
/// then each (b, d, n) recurrence on its own, then the sums over n, the skip and the gate.
fn naive(d: &Data) -> (Vec<f64>, Vec<f64>) {
    let p = &d.p;
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let sp = |x: f64| if x > 20.0 { x } else { (1.0 + x.exp()).ln() };
    let dt: Vec<f64> = (0..bn * tn * dn)
        .map(|i| {
            let x = d.delta[i] + d.bias.as_ref().map_or(0.0, |v| v[i % dn]);
            if p.softplus {
                sp(x)
            } else {
                x
            }
        })
        .collect();
    let (g, dg) = match p.bc {
        BcMode::InputDependent { groups } => (groups, dn / groups),
        BcMode::Fixed => (1, dn),
    };
    let bc = |v: &Vec<f64>, b: usize, t: usize, c: usize, n: usize| match p.bc {
        BcMode::InputDependent { .. } => v[((b * tn + t) * g + c / dg) * ns + n],
        BcMode::Fixed => v[c * ns + n],
    };
    let mut ysum = vec![0.0; bn * tn * dn];
    let mut hf = vec![0.0; bn * dn * ns];
    for b in 0..bn {
        for c in 0..dn {
            for n in 0..ns {
                let mut h = d.h0.as_ref().map_or(0.0, |h0| h0[(b * dn + c) * ns + n]);
                for t in 0..tn {
                    let i = (b * tn + t) * dn + c;
                    let reset = d.start.as_ref().is_some_and(|s| s[b * tn + t] != 0);
                    let carried = if reset {
                        0.0
                    } else {
                        (dt[i] * d.a[c * ns + n]).exp() * h
                    };
                    h = carried + dt[i] * bc(&d.bm, b, t, c, n) * d.u[i];
                    ysum[i] += bc(&d.cm, b, t, c, n) * h;
                }
                hf[(b * dn + c) * ns + n] = h;
            }
        }
    }
    let out = (0..bn * tn * dn)
        .map(|i| {
            let y = ysum[i] + d.dskip.as_ref().map_or(0.0, |v| v[i % dn]) * d.u[i];
            match &d.z {
                Some(z) => y * z[i] / (1.0 + (-z[i]).exp()),
                None => y,
            }
        })
        .collect();
    (out, hf)
}

fn name(p: &SelectiveScan) -> String {
    let bc = match p.bc {
        BcMode::InputDependent { groups } => format!("G={groups}"),
        BcMode::Fixed => "fixed".into(),
    };
    format!(
        "B={} T={} D={} N={} {bc}{} {}",
        p.batch,
        p.len,
        p.dim,
        p.state,
        if p.softplus { " softplus" } else { "" },
        p.dtype
    )
}

/// Every (B/C mode, softplus) combination for a shape; `groups` for the input-dependent one.
fn variants(b: usize, t: usize, d: usize, n: usize, groups: usize) -> Vec<SelectiveScan> {
    let mut v = Vec::new();
    for fixed in [false, true] {
        for sp in [false, true] {
            let mut p = SelectiveScan::new(b, t, d, n).groups(groups);
            if fixed {
                p = p.fixed_bc();
            }
            p.softplus = sp;
            v.push(p);
        }
    }
    v
}

/// Option sets that together switch every optional input on and off.
fn option_sets() -> Vec<Opts> {
    vec![
        NONE,
        ALL,
        Opts {
            dskip: true,
            z: false,
            bias: true,
            h0: false,
            gf: true,
            starts: Starts::None,
        },
        Opts {
            dskip: false,
            z: true,
            bias: false,
            h0: true,
            gf: false,
            starts: Starts::Edges,
        },
    ]
}

// ------------------------------------------------------------------ reference semantics

fn reference_matches_spec_transcription() -> T {
    let mut k = 0;
    for (b, t, d, n, g) in [(2, 23, 6, 3, 2), (1, 9, 4, 5, 1), (3, 30, 6, 2, 3)] {
        for p in variants(b, t, d, n, g) {
            for o in option_sets() {
                k += 1;
                let dd = gen(p, o, 100 + k);
                let out = fwd_ref(&dd);
                let (y, hf) = naive(&dd);
                close(&format!("{} {o:?} out", name(&p)), &out.out, &y, 1e-12)?;
                close(
                    &format!("{} {o:?} h_final", name(&p)),
                    &out.h_final,
                    &hf,
                    1e-12,
                )?;
            }
        }
    }
    Ok(())
}

/// Central differences of the f64 reference for every gradient, with every optional input
/// present and absent, softplus on and off, fixed and input-dependent Bm/Cm with G > 1.
fn reference_gradients_match_finite_differences() -> T {
    let mut k = 0;
    for (b, t, d, n, g) in [(2, 11, 4, 3, 2), (1, 7, 3, 2, 3)] {
        for p in variants(b, t, d, n, g) {
            for o in option_sets() {
                k += 1;
                let dd = gen(p, o, 200 + k);
                let gr = bwd_ref(&dd);
                let w = format!("{} {o:?}", name(&p));
                let tol = 1e-6;
                let m = 40;
                fd_check(
                    &format!("{w} du"),
                    &dd.u,
                    &gr.du,
                    |v| {
                        loss(&Data {
                            u: v.to_vec(),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} ddelta"),
                    &dd.delta,
                    &gr.ddelta,
                    |v| {
                        loss(&Data {
                            delta: v.to_vec(),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} da"),
                    &dd.a,
                    &gr.da,
                    |v| {
                        loss(&Data {
                            a: v.to_vec(),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} dbm"),
                    &dd.bm,
                    &gr.dbm,
                    |v| {
                        loss(&Data {
                            bm: v.to_vec(),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} dcm"),
                    &dd.cm,
                    &gr.dcm,
                    |v| {
                        loss(&Data {
                            cm: v.to_vec(),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                // optional inputs: the gradient at the given value, or at zero when absent
                let at =
                    |v: &Option<Vec<f64>>, len: usize| v.clone().unwrap_or_else(|| vec![0.0; len]);
                let (dn, bdn) = (p.dim, p.batch * p.dim * p.state);
                fd_check(
                    &format!("{w} ddskip"),
                    &at(&dd.dskip, dn),
                    &gr.ddskip,
                    |v| {
                        loss(&Data {
                            dskip: Some(v.to_vec()),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} ddelta_bias"),
                    &at(&dd.bias, dn),
                    &gr.ddelta_bias,
                    |v| {
                        loss(&Data {
                            bias: Some(v.to_vec()),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                fd_check(
                    &format!("{w} dh0"),
                    &at(&dd.h0, bdn),
                    &gr.dh0,
                    |v| {
                        loss(&Data {
                            h0: Some(v.to_vec()),
                            ..dd.clone()
                        })
                    },
                    m,
                    tol,
                )?;
                match &dd.z {
                    Some(z) => fd_check(
                        &format!("{w} dz"),
                        z,
                        &gr.dz,
                        |v| {
                            loss(&Data {
                                z: Some(v.to_vec()),
                                ..dd.clone()
                            })
                        },
                        m,
                        tol,
                    )?,
                    None => ensure!(
                        gr.dz.iter().all(|&x| x == 0.0),
                        "{w}: dz without z is not zero"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// softplus is the identity above 20 (and its derivative 1 there), as in Mamba.
fn softplus_threshold() -> T {
    use selective::reference::{softplus, softplus_grad};
    ensure!(
        softplus(20.5) == 20.5 && softplus_grad(20.5) == 1.0,
        "above 20"
    );
    ensure!(
        (softplus(0.0) - 2f64.ln()).abs() < 1e-15 && (softplus_grad(0.0) - 0.5).abs() < 1e-15,
        "at 0"
    );
    let near = (softplus(19.0) - 19.0).abs() < 1e-8;
    ensure!(near, "near 20");
    // a delta above the threshold: dt = delta exactly, and ddelta = the unscaled gradient
    let p = SelectiveScan::new(1, 3, 2, 2).softplus();
    let mut d = gen(p, NONE, 5);
    d.delta = vec![21.0, 25.0, 22.0, 30.0, 20.5, 23.0];
    d.a = vec![-0.1; 4];
    let mut q = d.clone();
    q.p.softplus = false;
    close(
        "softplus above 20 == identity",
        &fwd_ref(&d).out,
        &fwd_ref(&q).out,
        0.0,
    )?;
    close(
        "its gradient",
        &bwd_ref(&d).ddelta,
        &bwd_ref(&q).ddelta,
        0.0,
    )
}

/// Absent Dskip, delta_bias and h0 are zeros: results and gradients equal those of explicit
/// zeros; an absent z leaves dz zero.
fn absent_inputs_are_zeros() -> T {
    for p in variants(2, 13, 4, 3, 2) {
        let d = gen(p, Opts { gf: true, ..NONE }, 7);
        let zeros = Data {
            dskip: Some(vec![0.0; p.dim]),
            bias: Some(vec![0.0; p.dim]),
            h0: Some(vec![0.0; p.batch * p.dim * p.state]),
            ..d.clone()
        };
        close(
            &format!("{} out", name(&p)),
            &fwd_ref(&d).out,
            &fwd_ref(&zeros).out,
            0.0,
        )?;
        let (a, b) = (bwd_ref(&d), bwd_ref(&zeros));
        for ((n, x), (_, y)) in grads_named(&a).into_iter().zip(grads_named(&b)) {
            close(&format!("{} {n}", name(&p)), x, y, 0.0)?;
        }
        ensure!(a.dz.iter().all(|&v| v == 0.0), "dz without z");
    }
    Ok(())
}

fn grads_named<V>(g: &SelectiveGrads<V>) -> Vec<(&'static str, &V)> {
    vec![
        ("du", &g.du),
        ("ddelta", &g.ddelta),
        ("da", &g.da),
        ("dbm", &g.dbm),
        ("dcm", &g.dcm),
        ("ddskip", &g.ddskip),
        ("dz", &g.dz),
        ("ddelta_bias", &g.ddelta_bias),
        ("dh0", &g.dh0),
    ]
}

/// Fixed Bm/Cm with N = 1 is the linear scan with a_t = exp(dt A), x_t = dt B u, followed by
/// y = C h + Dskip u (and the same final state).
fn fixed_n1_is_the_linear_scan() -> T {
    for sp in [false, true] {
        let mut p = SelectiveScan::new(3, 40, 5, 1).fixed_bc();
        p.softplus = sp;
        let d = gen(p, ALL, 11 + sp as u64);
        let d = Data { z: None, ..d };
        let (bn, tn, dn) = (p.batch, p.len, p.dim);
        let sp_f = |x: f64| if x > 20.0 { x } else { x.exp().ln_1p() };
        let mut at = vec![0.0; bn * tn * dn];
        let mut xt = vec![0.0; bn * tn * dn];
        for i in 0..bn * tn * dn {
            let c = i % dn;
            let x = d.delta[i] + d.bias.as_ref().unwrap()[c];
            let dt = if sp { sp_f(x) } else { x };
            at[i] = (dt * d.a[c]).exp();
            xt[i] = dt * d.bm[c] * d.u[i];
        }
        let q = LinearScan::new(bn, tn, dn);
        let s = scan::reference::forward(
            &q,
            &ScanInputs {
                x: &xt[..],
                a: &at[..],
                h0: d.h0.as_deref(),
                start: d.start.as_deref(),
            },
        )?;
        let y: Vec<f64> = (0..bn * tn * dn)
            .map(|i| d.cm[i % dn] * s.h[i] + d.dskip.as_ref().unwrap()[i % dn] * d.u[i])
            .collect();
        let o = fwd_ref(&d);
        close("N=1 out vs linear scan", &o.out, &y, 1e-12)?;
        close("N=1 h_final vs linear scan", &o.h_final, &s.h_final, 1e-12)?;
    }
    Ok(())
}

/// Slice steps `t0 .. t0 + len` of every row of a `[B, T, ...]` tensor with `w` elements per step.
fn steps(v: &[f64], bn: usize, tn: usize, w: usize, t0: usize, len: usize) -> Vec<f64> {
    (0..bn)
        .flat_map(|b| v[(b * tn + t0) * w..(b * tn + t0 + len) * w].to_vec())
        .collect()
}

fn sub(d: &Data, t0: usize, len: usize, h0: Option<Vec<f64>>, gf: Option<Vec<f64>>) -> Data {
    let p = d.p;
    let mut q = p;
    q.len = len;
    let (bn, tn, dn) = (p.batch, p.len, p.dim);
    let seqs = |v: &Vec<f64>| steps(v, bn, tn, dn, t0, len);
    let bcs = |v: &Vec<f64>| {
        if p.input_dependent() {
            steps(v, bn, tn, p.num_groups() * p.state, t0, len)
        } else {
            v.clone()
        }
    };
    Data {
        p: q,
        u: seqs(&d.u),
        delta: seqs(&d.delta),
        bm: bcs(&d.bm),
        cm: bcs(&d.cm),
        z: d.z.as_ref().map(seqs),
        start: d.start.as_ref().map(|s| {
            let f: Vec<f64> = s.iter().map(|&x| x as f64).collect();
            steps(&f, bn, tn, 1, t0, len)
                .into_iter()
                .map(|x| x as u8)
                .collect()
        }),
        g: seqs(&d.g),
        h0,
        gf,
        ..d.clone()
    }
}

/// Rows packed with `start` flags equal the same sequences run as separate rows.
fn packed_rows_equal_separate_rows() -> T {
    for p0 in variants(1, 30, 4, 3, 2) {
        let d = gen(
            p0,
            Opts {
                starts: Starts::None,
                h0: false,
                ..ALL
            },
            300,
        );
        let mut packed = d.clone();
        let mut s = vec![0u8; 30];
        s[0] = 1;
        s[11] = 1;
        packed.start = Some(s);
        let out = fwd_ref(&packed);
        let a = fwd_ref(&sub(&d, 0, 11, None, None));
        let b = fwd_ref(&sub(&d, 11, 19, None, None));
        close(
            &format!("{} packed vs separate", name(&p0)),
            &out.out,
            &[a.out, b.out].concat(),
            1e-12,
        )?;
        close(
            &format!("{} packed final", name(&p0)),
            &out.h_final,
            &b.h_final,
            1e-12,
        )?;
    }
    Ok(())
}

/// Two calls chained through the state equal one call, forward and backward (the second
/// call's dh0 is the first call's grad_final).
fn chained_calls_equal_one_call() -> T {
    for p0 in variants(2, 40, 4, 3, 2) {
        let d = gen(p0, ALL, 400);
        let whole = fwd_ref(&d);
        let gw = bwd_ref(&d);
        let cut = 17;
        let d1 = sub(&d, 0, cut, d.h0.clone(), None);
        let o1 = fwd_ref(&d1);
        let d2 = sub(
            &d,
            cut,
            p0.len - cut,
            Some(o1.h_final.clone()),
            d.gf.clone(),
        );
        let o2 = fwd_ref(&d2);
        let n = name(&p0);
        // out rows interleave per batch row: compare row by row
        for b in 0..2 {
            let row = |v: &Vec<f64>, len: usize| v[b * len * 4..(b + 1) * len * 4].to_vec();
            close(
                &format!("{n} chained out row {b}"),
                &[row(&o1.out, cut), row(&o2.out, p0.len - cut)].concat(),
                &row(&whole.out, p0.len),
                1e-12,
            )?;
        }
        close(
            &format!("{n} chained final"),
            &o2.h_final,
            &whole.h_final,
            1e-12,
        )?;
        let g2 = bwd_ref(&d2);
        let g1 = bwd_ref(&Data {
            gf: Some(g2.dh0.clone()),
            ..d1
        });
        close(&format!("{n} chained dh0"), &g1.dh0, &gw.dh0, 1e-12)?;
        let sum =
            |a: &Vec<f64>, b: &Vec<f64>| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
        close(
            &format!("{n} chained da"),
            &sum(&g1.da, &g2.da),
            &gw.da,
            1e-12,
        )?;
        close(
            &format!("{n} chained ddelta_bias"),
            &sum(&g1.ddelta_bias, &g2.ddelta_bias),
            &gw.ddelta_bias,
            1e-12,
        )?;
        for b in 0..2 {
            let row = |v: &Vec<f64>, len: usize| v[b * len * 4..(b + 1) * len * 4].to_vec();
            close(
                &format!("{n} chained du row {b}"),
                &[row(&g1.du, cut), row(&g2.du, p0.len - cut)].concat(),
                &row(&gw.du, p0.len),
                1e-12,
            )?;
        }
    }
    Ok(())
}

fn errors_name_the_argument() -> T {
    let p = SelectiveScan::new(2, 5, 4, 3).groups(2);
    let t = |s: &[usize]| Tensor::zeros(s.to_vec(), DType::F32);
    let (u, delta, a, bm, cm) = (
        t(&[2, 5, 4]),
        t(&[2, 5, 4]),
        t(&[4, 3]),
        t(&[2, 5, 2, 3]),
        t(&[2, 5, 2, 3]),
    );
    let ok = SelectiveInputs {
        u: &u,
        delta: &delta,
        a: &a,
        bm: &bm,
        cm: &cm,
        dskip: None,
        z: None,
        delta_bias: None,
        h0: None,
        start: None,
    };
    let dev = Device::Cpu;
    ensure!(
        selective::forward(&dev, &p, &ok).is_ok(),
        "valid call rejected"
    );
    let bad3 = t(&[2, 5, 5]);
    let bad2 = t(&[4, 4]);
    let bad1 = t(&[5]);
    let badbc = t(&[2, 5, 1, 3]);
    let badh = t(&[2, 4, 2]);
    let cases: Vec<(&str, SelectiveInputs<&Tensor>)> = vec![
        (
            "u",
            SelectiveInputs {
                u: &bad3,
                ..ok.clone()
            },
        ),
        (
            "delta",
            SelectiveInputs {
                delta: &bad3,
                ..ok.clone()
            },
        ),
        (
            "a",
            SelectiveInputs {
                a: &bad2,
                ..ok.clone()
            },
        ),
        (
            "bm",
            SelectiveInputs {
                bm: &badbc,
                ..ok.clone()
            },
        ),
        (
            "cm",
            SelectiveInputs {
                cm: &a,
                ..ok.clone()
            },
        ),
        (
            "dskip",
            SelectiveInputs {
                dskip: Some(&bad1),
                ..ok.clone()
            },
        ),
        (
            "z",
            SelectiveInputs {
                z: Some(&bad3),
                ..ok.clone()
            },
        ),
        (
            "delta_bias",
            SelectiveInputs {
                delta_bias: Some(&bad1),
                ..ok.clone()
            },
        ),
        (
            "h0",
            SelectiveInputs {
                h0: Some(&badh),
                ..ok.clone()
            },
        ),
    ];
    for (arg, inp) in cases {
        match selective::forward(&dev, &p, &inp) {
            Err(Error::Shape { arg: a2, .. }) if a2 == arg => {}
            r => fail!("wrong shape of `{arg}`: {r:?}"),
        }
    }
    // start: wrong shape and a float dtype
    let st = Tensor::zeros([2, 4], DType::U8);
    ensure!(
        matches!(
            selective::forward(
                &dev,
                &p,
                &SelectiveInputs {
                    start: Some(&st),
                    ..ok.clone()
                }
            ),
            Err(Error::Shape { arg: "start", .. })
        ),
        "start shape"
    );
    let sf = t(&[2, 5]);
    ensure!(
        matches!(
            selective::forward(
                &dev,
                &p,
                &SelectiveInputs {
                    start: Some(&sf),
                    ..ok.clone()
                }
            ),
            Err(Error::DType { arg: "start", .. })
        ),
        "start dtype"
    );
    // storage dtypes: sequence tensors in the problem's dtype, parameters in f32
    let ph = p.with_dtype(DType::BF16);
    match selective::forward(&dev, &ph, &ok) {
        Err(Error::DType {
            arg: "u",
            expected: DType::BF16,
            found: DType::F32,
        }) => {}
        r => fail!("bf16 problem with f32 u: {r:?}"),
    }
    let (uh, dh, bh, ch) = (
        u.to_dtype(DType::BF16),
        delta.to_dtype(DType::BF16),
        bm.to_dtype(DType::BF16),
        cm.to_dtype(DType::BF16),
    );
    let okh = SelectiveInputs {
        u: &uh,
        delta: &dh,
        bm: &bh,
        cm: &ch,
        ..ok.clone()
    };
    ensure!(
        selective::forward(&dev, &ph, &okh).is_ok(),
        "valid bf16 call rejected"
    );
    let ah = a.to_dtype(DType::BF16);
    ensure!(
        matches!(
            selective::forward(
                &dev,
                &ph,
                &SelectiveInputs {
                    a: &ah,
                    ..okh.clone()
                }
            ),
            Err(Error::DType {
                arg: "a",
                expected: DType::F32,
                ..
            })
        ),
        "bf16 a accepted"
    );
    // fixed Bm/Cm are [D, N] f32
    let pf = p.fixed_bc();
    match selective::forward(&dev, &pf, &ok) {
        Err(Error::Shape {
            arg: "bm",
            expected,
            ..
        }) => ensure!(expected == vec![4, 3], "fixed bm shape {expected:?}"),
        r => fail!("fixed bc with [B,T,G,N] bm: {r:?}"),
    }
    // problem values
    let bad_problems = [
        ("batch", SelectiveScan::new(0, 5, 4, 3)),
        ("len", SelectiveScan::new(2, 0, 4, 3)),
        ("dim", SelectiveScan::new(2, 5, 0, 3)),
        ("state", SelectiveScan::new(2, 5, 4, 0)),
        ("state", SelectiveScan::new(2, 5, 4, 257)),
        ("groups", SelectiveScan::new(2, 5, 4, 3).groups(3)),
        ("groups", SelectiveScan::new(2, 5, 4, 3).groups(0)),
        (
            "dtype",
            SelectiveScan::new(2, 5, 4, 3).with_dtype(DType::U8),
        ),
    ];
    for (arg, q) in bad_problems {
        match selective::forward(&dev, &q, &ok) {
            Err(Error::Value { arg: a2, .. }) if a2 == arg => {}
            r => fail!("bad `{arg}` accepted or misreported: {r:?}"),
        }
    }
    ensure!(
        SelectiveScan::new(1, 1, 1, 256).validate().is_ok(),
        "N = 256 rejected"
    );
    // backward: the gradient arguments
    let bi = ok.clone().with_grads(&bad3, None);
    ensure!(
        matches!(
            selective::backward(&dev, &p, &bi),
            Err(Error::Shape {
                arg: "grad_out",
                ..
            })
        ),
        "grad_out shape"
    );
    let gf = t(&[2, 4]);
    let bi = ok.clone().with_grads(&u, Some(&gf));
    ensure!(
        matches!(
            selective::backward(&dev, &p, &bi),
            Err(Error::Shape {
                arg: "grad_final",
                ..
            })
        ),
        "grad_final shape"
    );
    // slice level: sizes
    let (uv, av, bv) = (vec![0.0; 39], vec![0.0; 12], vec![0.0; 60]);
    let e = selective::reference::forward(
        &p,
        &SelectiveInputs {
            u: &uv[..],
            delta: &uv[..],
            a: &av[..],
            bm: &bv[..],
            cm: &bv[..],
            dskip: None,
            z: None,
            delta_bias: None,
            h0: None,
            start: None,
        },
    );
    ensure!(
        matches!(
            e,
            Err(Error::Size {
                arg: "u",
                expected: 40,
                found: 39,
                ..
            })
        ),
        "size: {e:?}"
    );
    // messages name the argument and both shapes
    let msg = selective::forward(
        &dev,
        &p,
        &SelectiveInputs {
            z: Some(&bad3),
            ..ok.clone()
        },
    )
    .unwrap_err()
    .to_string();
    ensure!(
        msg.contains("`z`") && msg.contains("[2, 5, 4]") && msg.contains("[2, 5, 5]"),
        "message: {msg}"
    );
    let msg = selective::forward(&dev, &SelectiveScan::new(2, 5, 4, 3).groups(3), &ok)
        .unwrap_err()
        .to_string();
    ensure!(
        msg.contains("`groups`") && msg.contains("divisor of dim = 4"),
        "message: {msg}"
    );
    Ok(())
}

// ------------------------------------------------------------------ backends

struct Tensors {
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    bm: Tensor,
    cm: Tensor,
    dskip: Option<Tensor>,
    z: Option<Tensor>,
    bias: Option<Tensor>,
    h0: Option<Tensor>,
    start: Option<Tensor>,
    g: Tensor,
    gf: Option<Tensor>,
}

fn tensors(d: &Data) -> Tensors {
    let p = &d.p;
    let t = |n, v: &[f64]| {
        let s = p.spec(n);
        tensor(&s.shape, v, p.dtype_of(s.role))
    };
    Tensors {
        u: t(selective::Arg::U, &d.u),
        delta: t(selective::Arg::Delta, &d.delta),
        a: t(selective::Arg::A, &d.a),
        bm: t(selective::Arg::Bm, &d.bm),
        cm: t(selective::Arg::Cm, &d.cm),
        dskip: d.dskip.as_ref().map(|v| t(selective::Arg::Dskip, v)),
        z: d.z.as_ref().map(|v| t(selective::Arg::Z, v)),
        bias: d.bias.as_ref().map(|v| t(selective::Arg::DeltaBias, v)),
        h0: d.h0.as_ref().map(|v| t(selective::Arg::H0, v)),
        start: d
            .start
            .as_ref()
            .map(|s| Tensor::new(p.spec(selective::Arg::Start).shape, s.clone()).unwrap()),
        g: t(selective::Arg::GradOut, &d.g),
        gf: d.gf.as_ref().map(|v| t(selective::Arg::GradFinal, v)),
    }
}

impl Tensors {
    fn inputs(&self) -> SelectiveInputs<&Tensor> {
        SelectiveInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            bm: &self.bm,
            cm: &self.cm,
            dskip: self.dskip.as_ref(),
            z: self.z.as_ref(),
            delta_bias: self.bias.as_ref(),
            h0: self.h0.as_ref(),
            start: self.start.as_ref(),
        }
    }
    fn backward_inputs(&self) -> SelectiveBackwardInputs<&Tensor> {
        self.inputs().with_grads(&self.g, self.gf.as_ref())
    }
}

/// Forward and backward on `dev` against the reference, then bitwise reproducibility.
fn check_backend(dev: &Device, d: &Data, what: &str) -> T {
    let (tf, tb) = if d.p.dtype == DType::F32 {
        (1e-5, 1e-4)
    } else {
        (1e-2, 1e-2)
    };
    let ts = tensors(d);
    let out = selective::forward(dev, &d.p, &ts.inputs())?;
    let r = fwd_ref(d);
    close(&format!("{what} out"), &out.out.to_f64_vec(), &r.out, tf)?;
    close(
        &format!("{what} h_final"),
        &out.h_final.to_f64_vec(),
        &r.h_final,
        tf,
    )?;
    let gr = selective::backward(dev, &d.p, &ts.backward_inputs())?;
    let rr = bwd_ref(d);
    for (k, ((n, x), (_, y))) in grads_named(&gr)
        .into_iter()
        .zip(grads_named(&rr))
        .enumerate()
    {
        let what = format!("{what} {n}");
        // gradients of parameters shared by every row and step: sums that can cancel
        let shared = matches!(n, "da" | "ddskip" | "ddelta_bias")
            || (!d.p.input_dependent() && matches!(n, "dbm" | "dcm"));
        if shared {
            close_or_within_spread(&what, &x.to_f64_vec(), y, tb, |rng| {
                grads_named(&jittered(d, rng))[k].1.clone()
            })?;
        } else {
            close(&what, &x.to_f64_vec(), y, tb)?;
        }
    }
    let again = selective::forward(dev, &d.p, &ts.inputs())?;
    bitwise(
        &format!("{what} out"),
        &out.out.to_f32_vec(),
        &again.out.to_f32_vec(),
    )?;
    let again = selective::backward(dev, &d.p, &ts.backward_inputs())?;
    for ((n, x), (_, y)) in grads_named(&gr).into_iter().zip(grads_named(&again)) {
        bitwise(&format!("{what} {n}"), &x.to_f32_vec(), &y.to_f32_vec())?;
    }
    Ok(())
}

/// The f64 reference gradients at every real input of `d` changed by `jitter(rng, _, JITTER)`.
fn jittered(d: &Data, rng: &mut Rng) -> SelectiveGrads<Vec<f64>> {
    let mut q = d.clone();
    for v in [
        &mut q.u,
        &mut q.delta,
        &mut q.a,
        &mut q.bm,
        &mut q.cm,
        &mut q.g,
    ] {
        jitter(rng, v, JITTER);
    }
    for v in [
        q.dskip.as_mut(),
        q.z.as_mut(),
        q.bias.as_mut(),
        q.h0.as_mut(),
        q.gf.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        jitter(rng, v, JITTER);
    }
    bwd_ref(&q)
}

/// Every option set and B/C mode on a shape whose T is not a multiple of any chunk and whose
/// D is odd.
fn each_option_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let mut k = 0;
    for p in variants(3, 150, 9, 5, 3) {
        for o in option_sets() {
            k += 1;
            check_backend(
                &dev,
                &gen(p, o, 500 + k),
                &format!("{bk} {} {o:?}", name(&p)),
            )?;
        }
    }
    Ok(())
}
fn wgpu_each_option() -> T {
    each_option_on("wgpu")
}
fn wgpu_each_option_without_subgroups() -> T {
    each_option_on("wgpu-no-subgroups")
}
fn cuda_each_option() -> T {
    each_option_on("cuda")
}

/// T = 1, B = 1, N = 1, N = 256, N not a power of two, groups inside and across channel
/// blocks, long rows over many checkpoint intervals.
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (2, 1, 7, 16, 7),
    (1, 2, 3, 256, 1),
    (2, 65, 5, 17, 5),
    (1, 200, 96, 16, 1),
    (3, 64, 40, 4, 8),
    (1, 129, 33, 2, 3),
    (5, 37, 64, 8, 2),
    (1, 300, 6, 33, 2),
];

/// Shapes for linrec's CUDA emulator (a thread per CUDA thread, on the CPU): smaller, still
/// crossing every boundary of the CUDA kernels: T = 1, T over several 256-step chunks and not
/// a multiple of one, N = 1, 17, 256, groups inside a block (several per block) and spanning
/// blocks (partials), D a multiple of 8 (16-byte rows) and not.
const EMU_SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (2, 1, 7, 16, 7),
    (1, 2, 3, 256, 1),
    (2, 65, 5, 17, 5),
    (1, 300, 24, 4, 1),
    (3, 64, 40, 4, 8),
    (1, 520, 6, 3, 2),
];

/// Whether `dev` is linrec's CUDA emulator (slow: small shapes).
fn emulated(dev: &Device) -> bool {
    dev.describe().contains("emulator")
}

fn shapes_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let shapes = if emulated(&dev) { EMU_SHAPES } else { SHAPES };
    for (i, &(b, t, d, n, g)) in shapes.iter().enumerate() {
        for (k, p) in variants(b, t, d, n, g).into_iter().enumerate() {
            let o = option_sets()[(i + k) % 4];
            check_backend(
                &dev,
                &gen(p, o, 600 + (i * 10 + k) as u64),
                &format!("{bk} {} {o:?}", name(&p)),
            )?;
        }
    }
    Ok(())
}
fn wgpu_shapes() -> T {
    shapes_on("wgpu")
}
fn wgpu_shapes_without_subgroups() -> T {
    shapes_on("wgpu-no-subgroups")
}
fn cuda_shapes() -> T {
    shapes_on("cuda")
}

/// f16 and bf16 storage of u, delta, input-dependent Bm/Cm, z, out and their gradients,
/// against the reference fed the same rounded inputs (rel <= 1e-2).
fn storage_dtypes_on(bk: &str) -> T {
    let dev = backend(bk)?;
    if let Device::Wgpu(c) = &dev {
        if !c.has_f16() {
            let p = SelectiveScan::new(1, 4, 2, 2).with_dtype(DType::F16);
            let d = gen(p, NONE, 1);
            match check_backend(&dev, &d, "f16 without SHADER_F16") {
                Err(Stop::Fail(m)) if m.contains("unsupported") => {}
                r => fail!(
                    "f16 on a device without SHADER_F16: {:?}",
                    r.err().map(|_| ())
                ),
            }
        }
    }
    let mut k = 0;
    for dt in [DType::F16, DType::BF16] {
        if dt == DType::F16 && matches!(&dev, Device::Wgpu(c) if !c.has_f16()) {
            continue;
        }
        // odd D and odd T * D: bf16 pairs straddle channel blocks, rows and dispatches; on
        // the CUDA emulator D = 16 (16-byte rows of 8 channels) instead of 33
        let wide = if emulated(&dev) {
            (2, 300, 16, 8, 1)
        } else {
            (2, 130, 33, 16, 1)
        };
        for (b, t, d, n, g) in [(3, 77, 9, 5, 3), wide, (1, 1, 3, 2, 1)] {
            for p in variants(b, t, d, n, g) {
                for o in [ALL, NONE] {
                    k += 1;
                    let p = p.with_dtype(dt);
                    check_backend(
                        &dev,
                        &gen(p, o, 700 + k),
                        &format!("{bk} {} {o:?}", name(&p)),
                    )?;
                }
            }
        }
    }
    Ok(())
}
fn wgpu_storage_dtypes() -> T {
    storage_dtypes_on("wgpu")
}
fn wgpu_storage_dtypes_without_subgroups() -> T {
    storage_dtypes_on("wgpu-no-subgroups")
}
fn cuda_storage_dtypes() -> T {
    storage_dtypes_on("cuda")
}

/// Property-based: random shapes and options (T = 1 and B = 1 included, odd sizes, groups),
/// every GPU backend against the reference. Kept small: lavapipe runs it on two CPU cores.
fn random_shapes_all_backends() -> T {
    use proptest::prelude::*;
    on_gpus(|dev, bk| {
        let strat = (
            1usize..4,
            1usize..130,
            1usize..8,
            1usize..24,
            1usize..4,
            any::<[bool; 8]>(),
            any::<u64>(),
        );
        prop_check(12, strat, |(b, t, dpg, n, g, o, seed)| {
            let mut p = SelectiveScan::new(b, t, dpg * g, n).groups(g);
            if o[0] {
                p = p.fixed_bc();
            }
            p.softplus = o[1];
            let opts = Opts {
                dskip: o[2],
                z: o[3],
                bias: o[4],
                h0: o[5],
                gf: o[6],
                starts: if o[7] { Starts::Edges } else { Starts::None },
            };
            check_backend(
                dev,
                &gen(p, opts, seed),
                &format!("{bk} {} {opts:?}", name(&p)),
            )
        })
    })
}

/// Inputs where the shared gradients' sums cancel, found in a sweep of 6000 random D = 1
/// problems: `ddelta_bias` = sum over rows and steps of `ddelta`, about 1/1700 (seed 1730) and
/// 1/1000 (seed 3722) of the sum of its terms' sizes there, came out at 3.6e-4 (wgpu) and
/// 1.5e-3 (wgpu) / 3.4e-4 (CUDA) although `ddelta` itself was within 5e-7; `da` with N = 1
/// (seed 4320) at 4.0e-4 on CUDA. Checked: that cancellation, and every backend within the
/// bounds of docs/conventions.md except, for the shared gradients, the spread `check_backend`
/// allows.
fn ill_conditioned_shared_grads() -> T {
    let hard = [
        (1730, SelectiveScan::new(3, 37, 1, 19).fixed_bc().softplus()),
        (3722, SelectiveScan::new(1, 93, 1, 3).fixed_bc().softplus()),
        (4320, SelectiveScan::new(2, 112, 1, 1).fixed_bc().softplus()),
    ]
    .map(|(seed, p)| gen_from(p, ALL, Rng::fixed(seed)));
    for d in &hard[..2] {
        let dd = bwd_ref(d).ddelta;
        let cancel = dd.iter().map(|v| v.abs()).sum::<f64>() / dd.iter().sum::<f64>().abs();
        if cancel.is_nan() || cancel < 500.0 {
            fail!("{}: ddelta_bias cancels only 1:{cancel:.0}", name(&d.p));
        }
    }
    on_gpus(|dev, bk| {
        for d in &hard {
            check_backend(dev, d, &format!("{bk} {}", name(&d.p)))?;
        }
        Ok(())
    })
}

/// T = 4096 (the longest the f32 bounds cover) with resets: f32 accuracy holds over 64
/// checkpoint intervals.
/// And T = 65536 in one row: the per-step work is written out step by step, so lavapipe's
/// cap of 65535 loop iterations per loop nest (which cut such rows short when every step was
/// a loop iteration) is far away.
fn long_wgpu() -> T {
    for bk in ["wgpu-no-subgroups", "wgpu"] {
        let dev = backend(bk)?;
        for p in [
            SelectiveScan::new(1, 4096, 3, 4).softplus(),
            SelectiveScan::new(1, 4096, 2, 16).fixed_bc(),
            SelectiveScan::new(1, 65536, 2, 2).softplus(),
        ] {
            let d = gen(p, ALL, 800);
            check_backend(&dev, &d, &format!("{bk} {}", name(&p)))?;
        }
    }
    Ok(())
}

/// T = 4096 (the longest the f32 bounds cover) with resets on CUDA: 16 chunks carried through
/// the forward, the checkpoints and the backward.
fn long_cuda() -> T {
    let dev = cuda_dev()?;
    for p in [
        SelectiveScan::new(1, 4096, 3, 4).softplus(),
        SelectiveScan::new(1, 4096, 2, 16).fixed_bc(),
    ] {
        let d = gen(p, ALL, 800);
        check_backend(&dev, &d, &format!("cuda {}", name(&p)))?;
    }
    Ok(())
}

/// The CUDA backward over ranges of rows and chunks (a small budget for the dBm / dCm
/// partials) matches the reference: the adjoint, dA, dDskip, dbias (and fixed dBm / dCm) are
/// carried between calls.
#[cfg(not(feature = "cuda"))]
fn cuda_backward_in_pieces() -> T {
    Err(Stop::Skip("built without feature `cuda`".into()))
}
#[cfg(feature = "cuda")]
fn cuda_backward_in_pieces() -> T {
    let Device::Cuda(be) = cuda_dev()? else {
        return Err(Stop::Skip("no CUDA device".into()));
    };
    for (k, (p, budget)) in [
        // 2 blocks per group: partials; two chunks of all rows fit: calls over chunks
        (
            SelectiveScan::new(2, 700, 16, 3).softplus(),
            2 * 2 * 256 * 2 * 3 * 8,
        ),
        // not even one row's chunk fits: calls per row and chunk
        (SelectiveScan::new(3, 300, 16, 2), 1),
        // fixed Bm / Cm and groups inside blocks have no partials: one call
        (SelectiveScan::new(2, 300, 9, 2).fixed_bc(), 1),
        (
            SelectiveScan::new(2, 300, 12, 2)
                .groups(3)
                .with_dtype(DType::BF16),
            1,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let d = gen(p, ALL, 860 + k as u64);
        let ts = tensors(&d);
        let up = |t: &Tensor| be.upload(t);
        let opt = |t: &Option<Tensor>| t.as_ref().map(up).transpose();
        let (u, delta, a, bm, cm) = (
            up(&ts.u)?,
            up(&ts.delta)?,
            up(&ts.a)?,
            up(&ts.bm)?,
            up(&ts.cm)?,
        );
        let (dskip, z, bias, h0, start) = (
            opt(&ts.dskip)?,
            opt(&ts.z)?,
            opt(&ts.bias)?,
            opt(&ts.h0)?,
            opt(&ts.start)?,
        );
        let (g, gf) = (up(&ts.g)?, opt(&ts.gf)?);
        let bin = SelectiveBackwardInputs {
            u: u.as_ref(),
            delta: delta.as_ref(),
            a: a.as_ref(),
            bm: bm.as_ref(),
            cm: cm.as_ref(),
            dskip: dskip.as_ref().map(|t| t.as_ref()),
            z: z.as_ref().map(|t| t.as_ref()),
            delta_bias: bias.as_ref().map(|t| t.as_ref()),
            h0: h0.as_ref().map(|t| t.as_ref()),
            start: start.as_ref().map(|t| t.as_ref()),
            grad_out: g.as_ref(),
            grad_final: gf.as_ref().map(|t| t.as_ref()),
        };
        let gr = selective::cuda::backward_with_budget(&be, &p, &bin, budget)?;
        let rb = bwd_ref(&d);
        let tol = if p.dtype == DType::F32 { 1e-4 } else { 1e-2 };
        for ((n, x), (_, y)) in grads_named(&gr).into_iter().zip(grads_named(&rb)) {
            close(
                &format!("pieces {} {n}", name(&p)),
                &be.download(x)?.to_f64_vec(),
                y,
                tol,
            )?;
        }
    }
    Ok(())
}

/// On lavapipe, rows longer than the tested lengths are refused with a Limit error rather
/// than cut short; the forward is checked at its longest accepted length.
fn wgpu_lavapipe_length_caps() -> T {
    let ctx = wgpu_ctx()?;
    if !ctx.info.name.contains("llvmpipe") {
        return Err(Stop::Skip(format!("not lavapipe: {}", ctx.describe())));
    }
    let dev = wgpu()?;
    let [fwd, bwd] = selective::wgpu::LAVAPIPE_MAX_LEN;
    let p = SelectiveScan::new(1, fwd, 1, 2).softplus();
    let d = gen(
        p,
        Opts {
            starts: Starts::None,
            ..ALL
        },
        850,
    );
    let ts = tensors(&d);
    let out = selective::forward(&dev, &p, &ts.inputs())?;
    close(
        "longest lavapipe forward",
        &out.out.to_f64_vec(),
        &fwd_ref(&d).out,
        1e-5,
    )?;
    let long = |t: usize| SelectiveScan::new(1, t, 1, 1);
    for (q, backward) in [(long(fwd + 1), false), (long(bwd + 1), true)] {
        let d = gen(q, NONE, 851);
        let ts = tensors(&d);
        let r = if backward {
            selective::backward(&dev, &q, &ts.backward_inputs()).map(|_| ())
        } else {
            selective::forward(&dev, &q, &ts.inputs()).map(|_| ())
        };
        match r {
            Err(Error::Limit { what, .. }) if what.contains("lavapipe") => {}
            r => fail!("T = {} (backward: {backward}) on lavapipe: {r:?}", q.len),
        }
    }
    Ok(())
}

/// A device whose bindings and grids are tiny: rows split across dispatches, grids across
/// two dimensions, and results still match; a row that cannot fit is a clear error.
fn wgpu_split_limits() -> T {
    let _ = wgpu_ctx()?;
    let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
        max_storage_buffer_binding_size: Some(8192),
        max_compute_workgroups_per_dimension: Some(3),
        ..linrec::WgpuOptions::from_env().unwrap()
    })?;
    let dev = Device::Wgpu(ctx);
    let mut k = 0;
    for dt in [DType::F32, DType::BF16] {
        for p in variants(11, 20, 9, 3, 3) {
            k += 1;
            let p = p.with_dtype(dt);
            check_backend(&dev, &gen(p, ALL, 900 + k), &format!("split {}", name(&p)))?;
        }
    }
    let p = SelectiveScan::new(1, 2100, 1, 1);
    match check_backend(&dev, &gen(p, NONE, 9), "too big") {
        Err(Stop::Fail(m)) if m.contains("max_storage_buffer_binding_size") => Ok(()),
        Err(Stop::Fail(m)) => fail!("unexpected error: {m}"),
        _ => fail!("an 8400-byte row was accepted with 8192-byte bindings"),
    }
}

/// The zero-copy API on ranges at odd element offsets inside larger caller buffers (bf16 data
/// starting in the middle of a 32-bit word).
fn wgpu_zero_copy_offsets() -> T {
    use linrec::GpuRef;
    use wgpu::util::DeviceExt;
    let ctx = wgpu_ctx()?;
    for dt in [DType::F32, DType::BF16] {
        let p = SelectiveScan::new(2, 45, 5, 3).softplus().with_dtype(dt);
        let d = gen(p, ALL, 950);
        let ts = tensors(&d);
        let mk = |t: &Tensor, pad: usize| {
            let es = t.dtype().size();
            let mut bytes = vec![0x3fu8; pad * es];
            bytes.extend_from_slice(t.as_bytes());
            bytes.resize((bytes.len() + 8).div_ceil(4) * 4, 0x3f);
            let buf = ctx
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                });
            (buf, (pad * es) as u64, t.numel(), t.dtype())
        };
        let flags: Vec<u32> = d
            .start
            .as_ref()
            .unwrap()
            .iter()
            .map(|&f| f as u32)
            .collect();
        let st = Tensor::new([flags.len()], flags).unwrap();
        let bufs = [
            mk(&ts.u, 3),
            mk(&ts.delta, 1),
            mk(&ts.a, 5),
            mk(&ts.bm, 7),
            mk(&ts.cm, 2),
            mk(ts.dskip.as_ref().unwrap(), 1),
            mk(ts.z.as_ref().unwrap(), 9),
            mk(ts.bias.as_ref().unwrap(), 3),
            mk(ts.h0.as_ref().unwrap(), 1),
            mk(&st, 2),
            mk(&ts.g, 5),
            mk(ts.gf.as_ref().unwrap(), 3),
        ];
        let r = |i: usize| GpuRef::new(&bufs[i].0, bufs[i].1, bufs[i].2, bufs[i].3);
        let inp = SelectiveInputs {
            u: r(0),
            delta: r(1),
            a: r(2),
            bm: r(3),
            cm: r(4),
            dskip: Some(r(5)),
            z: Some(r(6)),
            delta_bias: Some(r(7)),
            h0: Some(r(8)),
            start: Some(r(9)),
        };
        let out = selective::wgpu::forward(&ctx, &p, &inp)?;
        let rf = fwd_ref(&d);
        let tol = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        close(
            &format!("zero-copy {dt} out"),
            &ctx.download(&out.out)?.to_f64_vec(),
            &rf.out,
            tol,
        )?;
        let gr = selective::wgpu::backward(&ctx, &p, &inp.clone().with_grads(r(10), Some(r(11))))?;
        let rb = bwd_ref(&d);
        let tb = if dt == DType::F32 { 1e-4 } else { 1e-2 };
        for ((n, x), (_, y)) in grads_named(&gr).into_iter().zip(grads_named(&rb)) {
            close(
                &format!("zero-copy {dt} {n}"),
                &ctx.download(x)?.to_f64_vec(),
                y,
                tb,
            )?;
        }
        // a range past the end of its buffer is rejected, naming the argument
        let bad = SelectiveInputs {
            z: Some(GpuRef::new(&bufs[6].0, bufs[6].1 + 64, bufs[6].2, dt)),
            ..inp
        };
        ensure!(
            matches!(
                selective::wgpu::forward(&ctx, &p, &bad),
                Err(Error::Size { arg: "z", .. })
            ),
            "range past the end accepted"
        );
        // flags must be u32 words at this level
        let bad = SelectiveInputs {
            start: Some(GpuRef::new(&bufs[9].0, 8, bufs[9].2, DType::U8)),
            ..inp
        };
        ensure!(
            matches!(
                selective::wgpu::forward(&ctx, &p, &bad),
                Err(Error::DType { arg: "start", .. })
            ),
            "u8 flags accepted"
        );
    }
    Ok(())
}

/// The subgroup and workgroup-memory paths agree (they sum in different fixed orders).
fn wgpu_subgroup_paths_agree() -> T {
    let a = backend("wgpu")?;
    let b = backend("wgpu-no-subgroups")?;
    if let Device::Wgpu(c) = &a {
        if !c.has_subgroups() {
            return Err(Stop::Skip("the adapter has no SUBGROUP feature".into()));
        }
    }
    // N up to the subgroup size (8 on lavapipe) takes the subgroup path, larger N the other
    for (k, p) in [
        SelectiveScan::new(2, 90, 16, 8).softplus(),
        SelectiveScan::new(1, 50, 3, 4).fixed_bc(),
        SelectiveScan::new(2, 20, 5, 1).groups(5),
        SelectiveScan::new(1, 40, 4, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let d = gen(p, ALL, 990 + k as u64);
        let ts = tensors(&d);
        let (x, y) = (
            selective::forward(&a, &p, &ts.inputs())?,
            selective::forward(&b, &p, &ts.inputs())?,
        );
        close(
            &format!("{} subgroup vs workgroup out", name(&p)),
            &x.out.to_f64_vec(),
            &y.out.to_f64_vec(),
            1e-5,
        )?;
        let (x, y) = (
            selective::backward(&a, &p, &ts.backward_inputs())?,
            selective::backward(&b, &p, &ts.backward_inputs())?,
        );
        for ((n, u), (_, v)) in grads_named(&x).into_iter().zip(grads_named(&y)) {
            close(
                &format!("{} subgroup vs workgroup {n}", name(&p)),
                &u.to_f64_vec(),
                &v.to_f64_vec(),
                1e-4,
            )?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ native CPU kernels

fn cpu_each_option() -> T {
    each_option_on("cpu")
}
fn cpu_shapes() -> T {
    shapes_on("cpu")
}
fn cpu_storage_dtypes() -> T {
    storage_dtypes_on("cpu")
}

/// T = 4096 (the longest the f32 bounds cover) with resets on the CPU: 64 checkpoint intervals
/// of the backward, and the ill-conditioned shared gradients.
fn cpu_long_and_ill_conditioned() -> T {
    let dev = backend("cpu")?;
    for p in [
        SelectiveScan::new(1, 4096, 3, 4).softplus(),
        SelectiveScan::new(1, 4096, 2, 16).fixed_bc(),
    ] {
        let d = gen(p, ALL, 800);
        check_backend(&dev, &d, &format!("cpu {}", name(&p)))?;
    }
    for (seed, p) in [
        (1730, SelectiveScan::new(3, 37, 1, 19).fixed_bc().softplus()),
        (3722, SelectiveScan::new(1, 93, 1, 3).fixed_bc().softplus()),
        (4320, SelectiveScan::new(2, 112, 1, 1).fixed_bc().softplus()),
    ] {
        let d = gen_from(p, ALL, Rng::fixed(seed));
        check_backend(&dev, &d, &format!("cpu {}", name(&p)))?;
    }
    Ok(())
}

/// T = 1 calls chained through the carried state on the CPU equal one call (the decode path),
/// with every option and resets.
fn cpu_decode_chain() -> T {
    for p0 in variants(3, 12, 4, 5, 2) {
        let d = gen(p0, ALL, 903);
        let whole = fwd_ref(&d);
        let (bn, dn) = (p0.batch, p0.dim);
        let mut h = tensor(
            &p0.spec(selective::Arg::H0).shape,
            d.h0.as_ref().unwrap(),
            DType::F32,
        );
        let mut outs = vec![Vec::new(); bn];
        for t in 0..p0.len {
            let sd = sub(&d, t, 1, None, None);
            let mut ts = tensors(&sd);
            ts.h0 = Some(h);
            let o = selective::forward(&Device::Cpu, &sd.p, &ts.inputs())?;
            let ov = o.out.to_f64_vec();
            for (b, ob) in outs.iter_mut().enumerate() {
                ob.extend_from_slice(&ov[b * dn..(b + 1) * dn]);
            }
            h = o.h_final;
        }
        close(
            &format!("cpu decode {} final", name(&p0)),
            &h.to_f64_vec(),
            &whole.h_final,
            1e-5,
        )?;
        close(
            &format!("cpu decode {} outputs", name(&p0)),
            &outs.concat(),
            &whole.out,
            1e-5,
        )?;
    }
    Ok(())
}

/// Every output and gradient of the CPU kernels, bitwise equal on 1, 2 and 3 threads (several
/// channel blocks per group, so the block partials and the row sums are exercised).
fn cpu_threads_bitwise() -> T {
    for p in [
        SelectiveScan::new(3, 70, 40, 5).groups(2).softplus(),
        SelectiveScan::new(3, 70, 40, 5).fixed_bc(),
    ] {
        let d = gen(p, ALL, 901);
        let ts = tensors(&d);
        let run = || {
            let f = selective::forward(&Device::Cpu, &d.p, &ts.inputs()).unwrap();
            let g = selective::backward(&Device::Cpu, &d.p, &ts.backward_inputs()).unwrap();
            let mut v = vec![f.out.to_f32_vec(), f.h_final.to_f32_vec()];
            v.extend(grads_named(&g).into_iter().map(|(_, x)| x.to_f32_vec()));
            v
        };
        let one = with_threads(1, run);
        for n in [2, 3] {
            let other = with_threads(n, run);
            for (k, (a, b)) in one.iter().zip(&other).enumerate() {
                bitwise(&format!("{} result {k} on {n} threads", name(&p)), a, b)?;
            }
        }
    }
    Ok(())
}

/// Non-finite isolation on the CPU: NaN and infinity in the inputs (and `h0`, and `grad_out`)
/// before a reset leave every per-step result from the reset on, the final state and its
/// gradients bitwise equal to a run with finite inputs.
fn nonfinite_isolated_by_resets() -> T {
    let (bn, tn, dn, ns, tr) = (2, 40, 4, 5, 20);
    for p in [
        SelectiveScan::new(bn, tn, dn, ns).groups(2).softplus(),
        SelectiveScan::new(bn, tn, dn, ns).fixed_bc(),
    ] {
        let mut d = gen(p, ALL, 902);
        let mut s = vec![0u8; bn * tn];
        for b in 0..bn {
            s[b * tn + tr] = 1;
        }
        d.start = Some(s);
        let clean = d.clone();
        let at = |t: usize, c: usize| (t * dn) + c; // row 0
        d.u[at(tr - 1, 0)] = f64::NAN;
        d.u[at(tr - 1, 3)] = f64::INFINITY;
        d.delta[at(5, 1)] = f64::NAN;
        d.g[at(tr - 1, 2)] = f64::NAN;
        if let Some(h0) = d.h0.as_mut() {
            h0[0] = f64::NAN;
        }
        if p.input_dependent() {
            d.bm[(tr - 1) * 2 * ns] = f64::INFINITY;
        }
        type Results = (Vec<Vec<f32>>, Vec<Vec<f32>>);
        // the native CPU kernels and the f64 reference alike
        for dev in [Device::Cpu, Device::Reference] {
            let tag = format!("{} {}", dev.describe(), name(&p));
            let run = |d: &Data| -> Result<Results, Stop> {
                let ts = tensors(d);
                let f = selective::forward(&dev, &d.p, &ts.inputs())?;
                let g = selective::backward(&dev, &d.p, &ts.backward_inputs())?;
                let seq = vec![
                    f.out.to_f32_vec(),
                    g.du.to_f32_vec(),
                    g.ddelta.to_f32_vec(),
                    g.dz.to_f32_vec(),
                ];
                let mut fin = vec![f.h_final.to_f32_vec()];
                if d.p.input_dependent() {
                    fin.push(g.dbm.to_f32_vec()[tr * 2 * ns..].to_vec());
                    fin.push(g.dcm.to_f32_vec()[tr * 2 * ns..].to_vec());
                }
                Ok((seq, fin))
            };
            let (sa, fa) = run(&d)?;
            let (sb, fb) = run(&clean)?;
            ensure!(sa[0].iter().any(|v| v.is_nan()), "no NaN before the reset");
            for (k, (x, y)) in sa.iter().zip(&sb).enumerate() {
                // from the reset on, in every row
                for b in 0..bn {
                    let r = (b * tn + tr) * dn..(b + 1) * tn * dn;
                    ensure!(
                        x[r.clone()].iter().all(|v| v.is_finite()),
                        "{} seq result {k} row {b}: non-finite after the reset",
                        tag
                    );
                    bitwise(
                        &format!("{} seq result {k} row {b}", tag),
                        &x[r.clone()],
                        &y[r],
                    )?;
                }
            }
            for (k, (x, y)) in fa.iter().zip(&fb).enumerate() {
                // the row-major [B, T, G, N] slices above start at row 0's reset: compare row 0's
                // tail and every later row
                ensure!(
                    x.iter().all(|v| v.is_finite()),
                    "{} final result {k}: non-finite",
                    tag
                );
                bitwise(&format!("{} final result {k}", tag), x, y)?;
            }
        }
    }
    Ok(())
}

/// Compare `out` with the reference `r` where either may hold non-finite values: NaN exactly
/// where the reference has NaN, infinities where it has them, and the finite values to `tol`.
fn close_nonfinite(what: &str, out: &[f64], r: &[f64], tol: f64) -> T {
    ensure!(
        out.len() == r.len(),
        "{what}: {} values, reference has {}",
        out.len(),
        r.len()
    );
    for (i, (o, e)) in out.iter().zip(r).enumerate() {
        ensure!(
            o.is_nan() == e.is_nan() && o.is_finite() == e.is_finite(),
            "{what}: {o} at {i}, the reference has {e}"
        );
        if e.is_infinite() && !o.is_nan() {
            ensure!(o == e, "{what}: {o} at {i}, the reference has {e}");
        }
    }
    let (fo, fr): (Vec<f64>, Vec<f64>) = out
        .iter()
        .zip(r)
        .filter(|(_, e)| e.is_finite())
        .map(|(o, e)| (*o, *e))
        .unzip();
    close(what, &fo, &fr, tol)
}

/// The cases of [`nonfinite_vs_reference_on`] for one problem: NaN / infinity in the inputs
/// (`u`, `delta`, `z`, input-dependent `Bm`, `grad_out`) before resets; NaN in `h0` with a
/// reset at t = 0 (row 0) and without (row 1); NaN / infinity in parameters (`A`, `Dskip`,
/// `delta_bias`, fixed `Bm`) and in `grad_final`.
fn nonfinite_cases(p: SelectiveScan) -> Vec<(&'static str, Data)> {
    let (bn, tn, dn, ns) = (p.batch, p.len, p.dim, p.state);
    let mut base = gen(p, ALL, 904);
    let mut s = vec![0u8; bn * tn];
    for b in 0..bn {
        s[b * tn + 20] = 1;
        s[b * tn + 33] = 1;
    }
    s[0] = 1; // row 0 starts an episode at t = 0, row 1 does not
    base.start = Some(s);
    let at = |b: usize, t: usize, c: usize| (b * tn + t) * dn + c;
    let mut v = Vec::new();
    let mut d = base.clone();
    d.u[at(0, 19, 0)] = f64::NAN;
    d.u[at(1, 18, 3)] = f64::INFINITY;
    d.delta[at(0, 5, 1)] = f64::NAN;
    d.delta[at(1, 32, 2)] = f64::NAN;
    d.g[at(0, 19, 2)] = f64::NAN;
    d.g[at(1, 30, 1)] = f64::NEG_INFINITY;
    if let Some(z) = d.z.as_mut() {
        z[at(1, 10, 0)] = f64::NAN;
    }
    if p.input_dependent() {
        d.bm[(tn + 19) * p.num_groups() * ns + 1] = f64::INFINITY; // row 1, t = 19
        d.cm[25 * p.num_groups() * ns] = f64::NAN; // row 0, t = 25
    }
    v.push(("inputs before resets", d));
    let mut d = base.clone();
    if let Some(h0) = d.h0.as_mut() {
        h0[0] = f64::NAN; // row 0 (reset at t = 0), channel 0
        h0[dn * ns + ns + 1] = f64::NAN; // row 1 (no reset at t = 0), channel 1
    }
    v.push(("h0", d));
    let mut d = base.clone();
    d.a[ns + 2] = f64::NAN;
    if let Some(x) = d.dskip.as_mut() {
        x[2] = f64::INFINITY;
    }
    if let Some(x) = d.bias.as_mut() {
        x[3] = f64::NAN;
    }
    if !p.input_dependent() {
        d.bm[1] = f64::NAN;
    }
    if let Some(x) = d.gf.as_mut() {
        x[dn * ns] = f64::NAN;
    }
    v.push(("parameters", d));
    v
}

/// Non-finite values on a GPU backend, every storage dtype, against the f64 reference: NaN
/// positions match the reference's (nothing leaks past a reset, nothing is swallowed) and the
/// finite values are within the usual bounds.
fn nonfinite_vs_reference_on(bk: &str) -> T {
    let dev = backend(bk)?;
    for dt in [DType::F32, DType::F16, DType::BF16] {
        if dt == DType::F16 && matches!(&dev, Device::Wgpu(c) if !c.has_f16()) {
            continue;
        }
        let (tf, tb) = if dt == DType::F32 {
            (1e-5, 1e-3)
        } else {
            (1e-2, 2e-2)
        };
        for p in [
            SelectiveScan::new(2, 40, 4, 5).groups(2).softplus(),
            SelectiveScan::new(2, 40, 4, 5).fixed_bc(),
        ] {
            let p = p.with_dtype(dt);
            for (case, d) in nonfinite_cases(p) {
                let tag = format!("{bk} {} {case}", name(&p));
                let ts = tensors(&d);
                let f = selective::forward(&dev, &d.p, &ts.inputs())?;
                let r = fwd_ref(&d);
                ensure!(
                    r.out.iter().any(|v| v.is_nan()),
                    "{tag}: no NaN in the reference"
                );
                close_nonfinite(&format!("{tag} out"), &f.out.to_f64_vec(), &r.out, tf)?;
                close_nonfinite(
                    &format!("{tag} h_final"),
                    &f.h_final.to_f64_vec(),
                    &r.h_final,
                    tf,
                )?;
                let g = selective::backward(&dev, &d.p, &ts.backward_inputs())?;
                let rg = bwd_ref(&d);
                for ((n, x), (_, y)) in grads_named(&g).into_iter().zip(grads_named(&rg)) {
                    close_nonfinite(&format!("{tag} {n}"), &x.to_f64_vec(), y, tb)?;
                }
            }
        }
    }
    Ok(())
}
fn wgpu_nonfinite_vs_reference() -> T {
    nonfinite_vs_reference_on("wgpu")
}
fn wgpu_nonfinite_vs_reference_without_subgroups() -> T {
    nonfinite_vs_reference_on("wgpu-no-subgroups")
}
fn cuda_nonfinite_vs_reference() -> T {
    nonfinite_vs_reference_on("cuda")
}

/// WebGPU's default limits (8 storage buffers per stage, 16 KiB of workgroup memory), opened
/// here whatever the environment says: the selective kernels take their PACKED variants and
/// every option (fixed and input-dependent Bm/Cm, groups inside and across channel blocks,
/// Dskip, z, delta_bias, softplus, h0, grad_final, resets, N = 256, every storage dtype the
/// device has), with subgroups on and off, matches the reference, bitwise reproducibly.
fn wgpu_webgpu_default_limits() -> T {
    let _ = wgpu_ctx()?;
    for disable_subgroups in [false, true] {
        let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
            webgpu_default_limits: true,
            disable_subgroups,
            ..linrec::WgpuOptions::from_env().unwrap()
        })?;
        ensure!(
            ctx.max_storage_buffers() <= 8 && ctx.max_workgroup_memory() <= 16384,
            "webgpu_default_limits left {} storage buffers, {} bytes of workgroup memory",
            ctx.max_storage_buffers(),
            ctx.max_workgroup_memory()
        );
        let has_f16 = ctx.has_f16();
        let dev = Device::Wgpu(ctx);
        let mut k = 0;
        let mut run = |p: SelectiveScan, o: Opts| -> T {
            k += 1;
            let what = format!(
                "webgpu limits (subgroups off: {disable_subgroups}) {} {o:?}",
                name(&p)
            );
            check_backend(&dev, &gen(p, o, 1900 + k), &what)
        };
        for p in variants(3, 150, 9, 5, 3) {
            for o in option_sets() {
                run(p, o)?;
            }
        }
        // a group across several channel blocks (partials), N = 256, N = 1
        for p in [
            SelectiveScan::new(2, 70, 96, 16).softplus(),
            SelectiveScan::new(1, 5, 2, 256).groups(2),
            SelectiveScan::new(2, 9, 40, 1).fixed_bc(),
        ] {
            run(p, ALL)?;
        }
        for dt in [DType::F16, DType::BF16] {
            if dt == DType::F16 && !has_f16 {
                continue;
            }
            for p in variants(2, 77, 33, 5, 3) {
                run(p.with_dtype(dt), ALL)?;
            }
        }
    }
    // decode-like rows (T = 1) split over dispatches by small bindings: the packed buffer's
    // per-row part (h0, start) is the forward's widest row and shares its binding with A,
    // Dskip and delta_bias (the backward's per-row parameter partials are bound whole, so the
    // forward only)
    let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
        webgpu_default_limits: true,
        max_storage_buffer_binding_size: Some(8192),
        ..linrec::WgpuOptions::from_env().unwrap()
    })?;
    let dev = Device::Wgpu(ctx);
    for (k, p) in variants(25, 1, 12, 16, 3).into_iter().enumerate() {
        let d = gen(p, ALL, 1950 + k as u64);
        let out = selective::forward(&dev, &d.p, &tensors(&d).inputs())?;
        let r = fwd_ref(&d);
        let what = format!("webgpu limits, 8 KiB bindings, {}", name(&p));
        close(&format!("{what} out"), &out.out.to_f64_vec(), &r.out, 1e-5)?;
        close(
            &format!("{what} h_final"),
            &out.h_final.to_f64_vec(),
            &r.h_final,
            1e-5,
        )?;
    }
    Ok(())
}

fn main() {
    common::main(trials![
        ill_conditioned_shared_grads,
        reference_matches_spec_transcription,
        reference_gradients_match_finite_differences,
        softplus_threshold,
        absent_inputs_are_zeros,
        fixed_n1_is_the_linear_scan,
        packed_rows_equal_separate_rows,
        chained_calls_equal_one_call,
        errors_name_the_argument,
        wgpu_each_option,
        wgpu_each_option_without_subgroups,
        cuda_each_option,
        wgpu_shapes,
        wgpu_shapes_without_subgroups,
        cuda_shapes,
        wgpu_storage_dtypes,
        wgpu_storage_dtypes_without_subgroups,
        cuda_storage_dtypes,
        random_shapes_all_backends,
        long_wgpu,
        long_cuda,
        cuda_backward_in_pieces,
        wgpu_lavapipe_length_caps,
        wgpu_split_limits,
        wgpu_zero_copy_offsets,
        wgpu_subgroup_paths_agree,
        cpu_each_option,
        cpu_shapes,
        cpu_storage_dtypes,
        cpu_long_and_ill_conditioned,
        cpu_decode_chain,
        cpu_threads_bitwise,
        nonfinite_isolated_by_resets,
        wgpu_nonfinite_vs_reference,
        wgpu_nonfinite_vs_reference_without_subgroups,
        cuda_nonfinite_vs_reference,
        wgpu_webgpu_default_limits,
    ]);
}
