//! Linear scan (docs/scan.md): the reference pinned against an independent transcription of the
//! equations, finite differences, packing and chaining identities, and every backend against
//! the reference (randomized shapes, resets, initial states, reverse, complex, determinism).

mod common;
use common::*;
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::{DType, Device, Error, Problem, Tensor};

/// Inputs of one scan problem in f64 (already rounded to f32).
#[derive(Clone)]
struct Data {
    p: LinearScan,
    x: Vec<f64>,
    a: Vec<f64>,
    h0: Option<Vec<f64>>,
    start: Option<Vec<u8>>,
    g: Vec<f64>,
    gf: Option<Vec<f64>>,
}

#[derive(Clone, Copy)]
enum Starts {
    None,
    /// t = 0, a mid-chunk step, T-1, and a few random ones.
    Edges,
}

fn gen(p: LinearScan, h0: bool, starts: Starts, seed: u64) -> Data {
    let mut r = Rng::new(seed);
    let w = p.width();
    let n = p.batch * p.len * p.dim * w;
    let x = f32_exact(&r.vec(n, -1.0, 1.0));
    let na = p.spec(scan::Arg::A).numel() / w;
    let mut a = Vec::new();
    for _ in 0..na {
        if p.complex {
            let m = r.uniform(0.7, 0.999);
            let th = r.uniform(-std::f64::consts::PI, std::f64::consts::PI);
            a.extend([m * th.cos(), m * th.sin()]);
        } else {
            a.push(r.uniform(-0.999, 0.999));
        }
    }
    let a = f32_exact(&a);
    let h0 = h0.then(|| f32_exact(&r.vec(p.batch * p.dim * w, -1.0, 1.0)));
    let start = match starts {
        Starts::None => None,
        Starts::Edges => {
            let mut s = r.flags(p.batch * p.len, 0.03);
            for b in 0..p.batch {
                let row = &mut s[b * p.len..(b + 1) * p.len];
                row[0] = u8::from(b % 2 == 0);
                row[p.len / 2] = 1;
                row[p.len - 1] = 1;
            }
            Some(s)
        }
    };
    let g = f32_exact(&r.vec(n, -1.0, 1.0));
    let gf = Some(f32_exact(&r.vec(p.batch * p.dim * w, -1.0, 1.0)));
    Data {
        p,
        x,
        a,
        h0,
        start,
        g,
        gf,
    }
}

fn fwd_ref(d: &Data) -> scan::ScanOutputs<Vec<f64>> {
    scan::reference::forward(
        &d.p,
        &ScanInputs {
            x: &d.x[..],
            a: &d.a[..],
            h0: d.h0.as_deref(),
            start: d.start.as_deref(),
        },
    )
    .expect("valid problem")
}

fn bwd_ref(d: &Data, h: &[f64]) -> scan::ScanGrads<Vec<f64>> {
    scan::reference::backward(
        &d.p,
        &ScanBackwardInputs {
            a: &d.a[..],
            h,
            h0: d.h0.as_deref(),
            start: d.start.as_deref(),
            grad_h: &d.g[..],
            grad_final: d.gf.as_deref(),
        },
    )
    .expect("valid problem")
}

/// docs/scan.md transcribed directly, in physical time, as an independent oracle.
fn naive(d: &Data) -> (Vec<f64>, Vec<f64>) {
    let p = &d.p;
    let (bn, tn, dn, w) = (p.batch, p.len, p.dim, p.width());
    let ld = |v: &[f64], i: usize| {
        if w == 2 {
            (v[2 * i], v[2 * i + 1])
        } else {
            (v[i], 0.0)
        }
    };
    let mul = |a: (f64, f64), b: (f64, f64)| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
    let st = |b: usize, t: usize| {
        d.start
            .as_ref()
            .is_some_and(|s| t < tn && s[b * tn + t] != 0)
    };
    let mut h = vec![0.0; bn * tn * dn * w];
    let mut hf = vec![0.0; bn * dn * w];
    for b in 0..bn {
        for c in 0..dn {
            let mut prev = d.h0.as_ref().map_or((0.0, 0.0), |h0| ld(h0, b * dn + c));
            let ts: Vec<usize> = if p.reverse {
                (0..tn).rev().collect()
            } else {
                (0..tn).collect()
            };
            for t in ts {
                let i = (b * tn + t) * dn + c;
                let at = ld(&d.a, if p.time_varying { i } else { c });
                let reset = if p.reverse { st(b, t + 1) } else { st(b, t) };
                let carried = if reset { (0.0, 0.0) } else { mul(at, prev) };
                let xt = ld(&d.x, i);
                prev = (carried.0 + xt.0, carried.1 + xt.1);
                h[i * w] = prev.0;
                if w == 2 {
                    h[i * w + 1] = prev.1;
                }
            }
            hf[(b * dn + c) * w] = prev.0;
            if w == 2 {
                hf[(b * dn + c) * w + 1] = prev.1;
            }
        }
    }
    (h, hf)
}

/// Every option combination on a few shapes.
fn variants(b: usize, t: usize, d: usize) -> Vec<LinearScan> {
    let mut v = Vec::new();
    for complex in [false, true] {
        for tv in [true, false] {
            for rev in [false, true] {
                let mut p = LinearScan::new(b, t, d);
                p.complex = complex;
                p.time_varying = tv;
                p.reverse = rev;
                v.push(p);
            }
        }
    }
    v
}

fn name(p: &LinearScan) -> String {
    format!(
        "B={} T={} D={} {}{}{}",
        p.batch,
        p.len,
        p.dim,
        if p.complex { "complex" } else { "real" },
        if p.time_varying {
            ""
        } else {
            " time-invariant"
        },
        if p.reverse { " reverse" } else { "" }
    )
}

// ------------------------------------------------------------------ reference semantics

fn reference_matches_spec_transcription() -> T {
    for (k, p) in variants(3, 37, 5).into_iter().enumerate() {
        for (h0, starts) in [(false, Starts::None), (true, Starts::Edges)] {
            let d = gen(p, h0, starts, 100 + k as u64);
            let out = fwd_ref(&d);
            let (h, hf) = naive(&d);
            close(&format!("{} h", name(&p)), &out.h, &h, 1e-12)?;
            close(&format!("{} h_final", name(&p)), &out.h_final, &hf, 1e-12)?;
        }
    }
    Ok(())
}

fn reference_gradients_match_finite_differences() -> T {
    for (k, p) in variants(2, 9, 3).into_iter().enumerate() {
        let d = gen(p, true, Starts::Edges, 200 + k as u64);
        let out = fwd_ref(&d);
        let gr = bwd_ref(&d, &out.h);
        let loss = |d: &Data| {
            let o = fwd_ref(d);
            dot(&d.g, &o.h) + dot(d.gf.as_ref().unwrap(), &o.h_final)
        };
        let n = name(&p);
        fd_check(
            &format!("{n} dx"),
            &d.x,
            &gr.dx,
            |v| {
                loss(&Data {
                    x: v.to_vec(),
                    ..d.clone()
                })
            },
            60,
            1e-6,
        )?;
        fd_check(
            &format!("{n} da"),
            &d.a,
            &gr.da,
            |v| {
                loss(&Data {
                    a: v.to_vec(),
                    ..d.clone()
                })
            },
            60,
            1e-6,
        )?;
        let h0 = d.h0.clone().unwrap();
        fd_check(
            &format!("{n} dh0"),
            &h0,
            &gr.dh0,
            |v| {
                loss(&Data {
                    h0: Some(v.to_vec()),
                    ..d.clone()
                })
            },
            60,
            1e-6,
        )?;
    }
    Ok(())
}

/// Rows packed with `start` flags equal the same sequences run as separate rows.
fn packed_rows_equal_separate_rows() -> T {
    for p0 in variants(1, 30, 4) {
        let (l1, l2) = (11, 19);
        let d = gen(p0, false, Starts::None, 300);
        let mut packed = d.clone();
        let mut s = vec![0u8; 30];
        // episodes [0, 11) and [11, 30) in forward time
        s[0] = 1;
        s[l1] = 1;
        packed.start = Some(s);
        let out = fwd_ref(&packed);
        let w = p0.width();
        let row = p0.dim * w;
        let part = |t0: usize, len: usize| {
            let mut q = p0;
            q.len = len;
            let sl = |v: &Vec<f64>| v[t0 * row..(t0 + len) * row].to_vec();
            let dd = Data {
                p: q,
                x: sl(&d.x),
                a: if p0.time_varying {
                    sl(&d.a)
                } else {
                    d.a.clone()
                },
                h0: None,
                start: None,
                g: sl(&d.g),
                gf: None,
            };
            fwd_ref(&dd).h
        };
        let sep = [part(0, l1), part(l1, l2)].concat();
        close(
            &format!("{} packed vs separate", name(&p0)),
            &out.h,
            &sep,
            1e-12,
        )?;
    }
    Ok(())
}

/// Two calls chained through the final state equal one call.
fn chained_calls_equal_one_call() -> T {
    for p0 in variants(2, 40, 3) {
        let d = gen(p0, true, Starts::Edges, 400);
        let whole = fwd_ref(&d);
        let cut = 17;
        let w = p0.width();
        let row = p0.dim * w;
        let sub = |t0: usize, len: usize, h0: Option<Vec<f64>>| {
            let mut q = p0;
            q.len = len;
            let sl = |v: &Vec<f64>| {
                (0..p0.batch)
                    .flat_map(|b| {
                        v[(b * p0.len + t0) * row..(b * p0.len + t0 + len) * row].to_vec()
                    })
                    .collect::<Vec<_>>()
            };
            let st = d.start.as_ref().map(|s| {
                (0..p0.batch)
                    .flat_map(|b| s[b * p0.len + t0..b * p0.len + t0 + len].to_vec())
                    .collect::<Vec<_>>()
            });
            Data {
                p: q,
                x: sl(&d.x),
                a: if p0.time_varying {
                    sl(&d.a)
                } else {
                    d.a.clone()
                },
                h0,
                start: st,
                g: sl(&d.g),
                gf: None,
            }
        };
        // forward: [0, cut) then [cut, T); reverse: [cut, T) first, then [0, cut). In the
        // reverse case the second call's steps depend on start_{cut}, which sits in the other
        // half, so the chained state must be dropped by hand when an episode starts at `cut`.
        let (first, second) = if p0.reverse {
            ((cut, p0.len - cut), (0, cut))
        } else {
            ((0, cut), (cut, p0.len - cut))
        };
        let o1 = fwd_ref(&sub(first.0, first.1, d.h0.clone()));
        let mut carry = o1.h_final.clone();
        if p0.reverse {
            let s = d.start.as_ref().unwrap();
            for b in 0..p0.batch {
                if s[b * p0.len + cut] != 0 {
                    carry[b * row..(b + 1) * row]
                        .iter_mut()
                        .for_each(|v| *v = 0.0);
                }
            }
        }
        let o2 = fwd_ref(&sub(second.0, second.1, Some(carry)));
        close(
            &format!("{} chained final", name(&p0)),
            &o2.h_final,
            &whole.h_final,
            1e-12,
        )?;
    }
    Ok(())
}

fn errors_name_the_argument() -> T {
    let p = LinearScan::new(2, 5, 3);
    let x = Tensor::zeros([2, 5, 3], DType::F32);
    let a = Tensor::zeros([2, 5, 3], DType::F32);
    let dev = Device::Cpu;
    let run = |inp: ScanInputs<&Tensor>, p: &LinearScan| scan::forward(&dev, p, &inp);
    // wrong shape
    let bad = Tensor::zeros([2, 5, 4], DType::F32);
    match run(
        ScanInputs {
            x: &bad,
            a: &a,
            h0: None,
            start: None,
        },
        &p,
    ) {
        Err(Error::Shape {
            arg: "x",
            expected,
            found,
        }) => {
            ensure!(
                expected == vec![2, 5, 3] && found == vec![2, 5, 4],
                "shape error fields: {expected:?} {found:?}"
            )
        }
        r => fail!("wrong shape: {r:?}"),
    }
    // wrong rank for h0
    let h0 = Tensor::zeros([2, 3, 1], DType::F32);
    ensure!(
        matches!(
            run(
                ScanInputs {
                    x: &x,
                    a: &a,
                    h0: Some(&h0),
                    start: None
                },
                &p
            ),
            Err(Error::Shape { arg: "h0", .. })
        ),
        "h0 rank"
    );
    // mismatched dtype
    let xh = Tensor::zeros([2, 5, 3], DType::F16);
    ensure!(
        matches!(
            run(
                ScanInputs {
                    x: &xh,
                    a: &a,
                    h0: None,
                    start: None
                },
                &p
            ),
            Err(Error::DType {
                arg: "x",
                expected: DType::F32,
                found: DType::F16
            })
        ),
        "dtype"
    );
    // flags must be integers
    let sf = Tensor::zeros([2, 5], DType::F32);
    ensure!(
        matches!(
            run(
                ScanInputs {
                    x: &x,
                    a: &a,
                    h0: None,
                    start: Some(&sf)
                },
                &p
            ),
            Err(Error::DType { arg: "start", .. })
        ),
        "start dtype"
    );
    // empty dims
    for q in [
        LinearScan::new(0, 5, 3),
        LinearScan::new(2, 0, 3),
        LinearScan::new(2, 5, 0),
    ] {
        let e = scan::forward(
            &dev,
            &q,
            &ScanInputs {
                x: &x,
                a: &a,
                h0: None,
                start: None,
            },
        );
        ensure!(
            matches!(e, Err(Error::Value { .. })),
            "empty dim accepted: {e:?}"
        );
    }
    // time-invariant `a` must be [D]
    let ti = p.time_invariant();
    ensure!(
        matches!(
            run(
                ScanInputs {
                    x: &x,
                    a: &a,
                    h0: None,
                    start: None
                },
                &ti
            ),
            Err(Error::Shape { arg: "a", .. })
        ),
        "ti a"
    );
    // buffer too small (slice-level API)
    let xs = vec![0.0; 29];
    let av = vec![0.0; 30];
    let e = scan::reference::forward(
        &p,
        &ScanInputs {
            x: &xs[..],
            a: &av[..],
            h0: None,
            start: None,
        },
    );
    ensure!(
        matches!(
            e,
            Err(Error::Size {
                arg: "x",
                expected: 30,
                found: 29,
                ..
            })
        ),
        "size: {e:?}"
    );
    // messages name the argument and both shapes
    let msg = run(
        ScanInputs {
            x: &bad,
            a: &a,
            h0: None,
            start: None,
        },
        &p,
    )
    .unwrap_err()
    .to_string();
    ensure!(
        msg.contains("`x`") && msg.contains("[2, 5, 3]") && msg.contains("[2, 5, 4]"),
        "message: {msg}"
    );
    Ok(())
}

// ------------------------------------------------------------------ backends

/// Round the sequence tensors of `d` (x, a time-varying a, grad_h) to its problem's storage
/// dtype, so the reference sees exactly what a kernel reads.
fn rounded(mut d: Data) -> Data {
    let dt = d.p.dtype;
    let r = |v: &[f64]| Tensor::from_f64([v.len()], v, dt).unwrap().to_f64_vec();
    d.x = r(&d.x);
    d.g = r(&d.g);
    if d.p.time_varying {
        d.a = r(&d.a);
    }
    d
}

/// Forward and backward on `dev` against the reference (f32: rel <= 1e-5 / 1e-4; f16 / bf16
/// storage: rel <= 1e-2, the backward's reference fed the backend's own rounded h), then
/// bitwise reproducibility.
fn check_backend(dev: &Device, d: &Data, what: &str) -> T {
    let p = &d.p;
    let sh = |n| p.spec(n).shape;
    let t = |n, v: &[f64]| tensor(&sh(n), v, p.dtype_of(p.spec(n).role));
    let (tf, tb) = if p.dtype == DType::F32 {
        (1e-5, 1e-4)
    } else {
        (1e-2, 1e-2)
    };
    let (x, a) = (t(scan::Arg::X, &d.x), t(scan::Arg::A, &d.a));
    let h0 = d.h0.as_ref().map(|v| t(scan::Arg::H0, v));
    let st = d
        .start
        .as_ref()
        .map(|s| Tensor::new(sh(scan::Arg::Start), s.clone()).unwrap());
    let inp = ScanInputs {
        x: &x,
        a: &a,
        h0: h0.as_ref(),
        start: st.as_ref(),
    };
    let out = scan::forward(dev, p, &inp)?;
    let r = fwd_ref(d);
    close(&format!("{what} h"), &out.h.to_f64_vec(), &r.h, tf)?;
    close(
        &format!("{what} h_final"),
        &out.h_final.to_f64_vec(),
        &r.h_final,
        tf,
    )?;
    // backward from the backend's own h (as a framework would), vs the reference from its own
    let (g, gf) = (
        t(scan::Arg::GradH, &d.g),
        d.gf.as_ref().map(|v| t(scan::Arg::GradFinal, v)),
    );
    let bin = ScanBackwardInputs {
        a: &a,
        h: &out.h,
        h0: h0.as_ref(),
        start: st.as_ref(),
        grad_h: &g,
        grad_final: gf.as_ref(),
    };
    let gr = scan::backward(dev, p, &bin)?;
    let rr = if p.dtype == DType::F32 {
        bwd_ref(d, &r.h)
    } else {
        bwd_ref(d, &out.h.to_f64_vec())
    };
    close(&format!("{what} dx"), &gr.dx.to_f64_vec(), &rr.dx, tb)?;
    close(&format!("{what} da"), &gr.da.to_f64_vec(), &rr.da, tb)?;
    close(&format!("{what} dh0"), &gr.dh0.to_f64_vec(), &rr.dh0, tb)?;
    // bitwise reproducible
    let again = scan::forward(dev, p, &inp)?;
    bitwise(
        &format!("{what} h"),
        &out.h.to_f32_vec(),
        &again.h.to_f32_vec(),
    )?;
    let again = scan::backward(dev, p, &bin)?;
    for (n, x, y) in [
        ("dx", &gr.dx, &again.dx),
        ("da", &gr.da, &again.da),
        ("dh0", &gr.dh0, &again.dh0),
    ] {
        bitwise(&format!("{what} {n}"), &x.to_f32_vec(), &y.to_f32_vec())?;
    }
    Ok(())
}

fn each_option_on(bk: &str) -> T {
    let dev = backend(bk)?;
    // T not a multiple of any chunk; D odd; B > 1
    for (k, p) in variants(3, 301, 5).into_iter().enumerate() {
        for (h0, st) in [(false, Starts::None), (true, Starts::Edges)] {
            let d = gen(p, h0, st, 500 + k as u64);
            check_backend(&dev, &d, &format!("{bk} {}", name(&p)))?;
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
fn cpu_each_option() -> T {
    each_option_on("cpu")
}

fn shapes_on(bk: &str) -> T {
    let dev = backend(bk)?;
    // T = 1, B = 1, D = 1, wide channel blocks, long rows across many chunks
    for (i, &(b, t, dd)) in [
        (1, 1, 1),
        (1, 1, 7),
        (2, 1, 33),
        (1, 2, 1),
        (4, 1000, 1),
        (1, 70, 64),
        (5, 257, 40),
        (2, 4096, 3),
    ]
    .iter()
    .enumerate()
    {
        for (k, p) in variants(b, t, dd).into_iter().enumerate() {
            let d = gen(
                p,
                k % 2 == 0,
                if k % 3 == 0 {
                    Starts::None
                } else {
                    Starts::Edges
                },
                600 + (i * 10 + k) as u64,
            );
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
fn cpu_shapes() -> T {
    shapes_on("cpu")
}

/// f16 and bf16 storage of x, h, a time-varying a and their gradients (f32 state and
/// arithmetic), every option, against the reference fed the same rounded inputs (rel <= 1e-2):
/// T across several chunks and not a multiple of one, odd D, D wider than a channel block, T = 1.
fn storage_dtypes_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let mut k = 0;
    for dt in [DType::F16, DType::BF16] {
        for (b, t, dd) in [(3, 301, 5), (2, 70, 40), (1, 1, 3), (2, 1100, 2)] {
            for p in variants(b, t, dd) {
                k += 1;
                let p = p.with_dtype(dt);
                let (h0, st) = if k % 2 == 0 {
                    (true, Starts::Edges)
                } else {
                    (false, Starts::None)
                };
                let d = rounded(gen(p, h0, st, 950 + k));
                check_backend(&dev, &d, &format!("{bk} {} {dt}", name(&p)))?;
            }
        }
    }
    Ok(())
}
fn cuda_storage_dtypes() -> T {
    storage_dtypes_on("cuda")
}
fn cpu_storage_dtypes() -> T {
    storage_dtypes_on("cpu")
}

/// The WGSL scan stores f32 only: other storage dtypes are refused, not misread.
fn wgpu_storage_dtypes_refused() -> T {
    let dev = wgpu()?;
    let p = LinearScan::new(1, 4, 2).with_dtype(DType::BF16);
    let d = rounded(gen(p, false, Starts::None, 3));
    match check_backend(&dev, &d, "wgpu bf16") {
        Err(Stop::Fail(m)) if m.contains("unsupported") => Ok(()),
        Err(Stop::Fail(m)) => fail!("unexpected error: {m}"),
        _ => fail!("bf16 storage accepted by the WGSL scan"),
    }
}

/// One random case of the property tests: sizes, (complex, time-varying, reverse, initial
/// state, resets) and a seed, on `dev` against the reference.
fn random_case(
    dev: &Device,
    bk: &str,
    (b, t, dd, o, seed): (usize, usize, usize, [bool; 5], u64),
) -> T {
    let mut p = LinearScan::new(b, t, dd);
    p.complex = o[0];
    p.time_varying = o[1];
    p.reverse = o[2];
    let d = gen(
        p,
        o[3],
        if o[4] { Starts::Edges } else { Starts::None },
        seed,
    );
    check_backend(dev, &d, &format!("{bk} {}", name(&p)))
}

/// Property-based: random shapes and options, every GPU backend against the reference.
fn random_shapes_all_backends() -> T {
    use proptest::prelude::*;
    on_gpus(|dev, bk| {
        let strat = (
            1usize..4,
            1usize..300,
            1usize..40,
            any::<[bool; 5]>(),
            any::<u64>(),
        );
        prop_check(24, strat, |case| random_case(dev, bk, case))
    })
}

/// T = 2^20 in one row: the chunk loop carries the state through 1024+ chunks.
fn long_wgpu() -> T {
    let dev = wgpu()?;
    for p in [
        LinearScan::new(1, 1 << 20, 1),
        LinearScan::new(1, 1 << 20, 2).complex(),
    ] {
        let mut d = gen(p, true, Starts::None, 700);
        d.start = Some({
            let mut s = vec![0u8; p.len];
            s[123_457] = 1;
            s
        });
        let t = |n, v: &[f64]| tensor(&p.spec(n).shape, v, DType::F32);
        let (x, a, h0) = (
            t(scan::Arg::X, &d.x),
            t(scan::Arg::A, &d.a),
            t(scan::Arg::H0, d.h0.as_ref().unwrap()),
        );
        let st = Tensor::new([1, p.len], d.start.clone().unwrap()).unwrap();
        let out = scan::forward(
            &dev,
            &p,
            &ScanInputs {
                x: &x,
                a: &a,
                h0: Some(&h0),
                start: Some(&st),
            },
        )?;
        let r = fwd_ref(&d);
        close(
            &format!("wgpu {} h", name(&p)),
            &out.h.to_f64_vec(),
            &r.h,
            1e-5,
        )?;
    }
    Ok(())
}

/// A wgpu device opened with WebGPU's default limits (8 storage buffers per stage, 16 KiB of
/// workgroup memory, 256 invocations), with and without subgroups: every option of the
/// forward and backward runs there (the backward takes its packed variant) and matches the
/// reference, whatever `LINREC_WGPU_LIMITS` says.
fn wgpu_webgpu_default_limits() -> T {
    let _ = wgpu_ctx()?;
    for disable_subgroups in [false, true] {
        let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
            webgpu_default_limits: true,
            disable_subgroups,
            ..linrec::WgpuOptions::from_env().unwrap()
        })?;
        ensure!(
            ctx.limits.max_storage_buffers_per_shader_stage == 8,
            "webgpu_default_limits left {} storage buffers per stage",
            ctx.limits.max_storage_buffers_per_shader_stage
        );
        let dev = Device::Wgpu(ctx);
        for (k, p) in variants(3, 301, 5).into_iter().enumerate() {
            for (h0, st) in [(false, Starts::None), (true, Starts::Edges)] {
                let mut d = gen(p, h0, st, 1600 + k as u64);
                if !h0 {
                    d.gf = None;
                }
                let what = format!(
                    "webgpu limits (subgroups off: {disable_subgroups}) {}",
                    name(&p)
                );
                check_backend(&dev, &d, &what)?;
            }
        }
    }
    Ok(())
}

/// Long rows (T = 2^20, B = 1) whose state barely decays, on `bk`: real `a` within 1e-4 of 1
/// (time-varying and time-invariant), complex `a` on the unit circle (undamped rotations,
/// time-varying and time-invariant), forward and backward against the reference at the f32
/// bounds of docs/conventions.md (1e-5 forward, 1e-4 gradients). Errors are printed.
fn long_slow_decay_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let tn = 1 << 20;
    for (i, p) in [
        LinearScan::new(1, tn, 2),
        LinearScan::new(1, tn, 2).time_invariant(),
        LinearScan::new(1, tn, 1).complex(),
        LinearScan::new(1, tn, 1).complex().time_invariant(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = gen(p, true, Starts::None, 2100 + i as u64);
        let mut r = Rng::new(2200 + i as u64);
        let n = d.a.len() / p.width();
        d.a = f32_exact(
            &(0..n)
                .flat_map(|_| {
                    if p.complex {
                        let th = r.uniform(-std::f64::consts::PI, std::f64::consts::PI);
                        vec![th.cos(), th.sin()]
                    } else {
                        vec![1.0 - r.uniform(0.0, 1e-4)]
                    }
                })
                .collect::<Vec<_>>(),
        );
        let (x, a, h0, st, g, gf) = tensors(&d);
        let out = scan::forward(
            &dev,
            &p,
            &ScanInputs {
                x: &x,
                a: &a,
                h0: h0.as_ref(),
                start: st.as_ref(),
            },
        )?;
        let rf = fwd_ref(&d);
        let gr = scan::backward(
            &dev,
            &p,
            &ScanBackwardInputs {
                a: &a,
                h: &out.h,
                h0: h0.as_ref(),
                start: st.as_ref(),
                grad_h: &g,
                grad_final: gf.as_ref(),
            },
        )?;
        let rb = bwd_ref(&d, &rf.h);
        let what = format!("{bk} slow decay {}", name(&p));
        let checks = [
            ("h", out.h.to_f64_vec(), &rf.h, 1e-5),
            ("h_final", out.h_final.to_f64_vec(), &rf.h_final, 1e-5),
            ("dx", gr.dx.to_f64_vec(), &rb.dx, 1e-4),
            ("da", gr.da.to_f64_vec(), &rb.da, 1e-4),
            ("dh0", gr.dh0.to_f64_vec(), &rb.dh0, 1e-4),
        ];
        let rels: Vec<String> = checks
            .iter()
            .map(|(n, o, r, _)| format!("{n} {:.2e}", rel(o, r)))
            .collect();
        eprintln!("{what}: rel {}", rels.join(", "));
        for (n, o, r, tol) in &checks {
            close(&format!("{what} {n}"), o, r, *tol)?;
        }
    }
    Ok(())
}
fn long_wgpu_slow_decay() -> T {
    long_slow_decay_on("wgpu")
}
fn long_cuda_slow_decay() -> T {
    long_slow_decay_on("cuda")
}

/// A device whose bindings and grids are tiny: the scan splits rows across dispatches and
/// grids across two dimensions, and still matches.
fn wgpu_split_limits() -> T {
    let _ = wgpu_ctx()?;
    let ctx = linrec::WgpuContext::with_options(&linrec::WgpuOptions {
        force_fallback_adapter: false,
        max_storage_buffer_binding_size: Some(4096),
        max_compute_workgroups_per_dimension: Some(3),
        ..linrec::WgpuOptions::from_env().unwrap()
    })?;
    let dev = Device::Wgpu(ctx);
    for (k, p) in variants(11, 50, 9).into_iter().enumerate() {
        let d = gen(p, true, Starts::Edges, 800 + k as u64);
        check_backend(&dev, &d, &format!("split {}", name(&p)))?;
    }
    // a row that cannot fit one binding is a clear error, not a crash
    let p = LinearScan::new(1, 2000, 1);
    let d = gen(p, false, Starts::None, 9);
    match check_backend(&dev, &d, "too big") {
        Err(Stop::Fail(m)) if m.contains("max_storage_buffer_binding_size") => Ok(()),
        Err(Stop::Fail(m)) => fail!("unexpected error: {m}"),
        _ => fail!("a 8000-byte row was accepted with 4096-byte bindings"),
    }
}

/// The zero-copy API on ranges at odd offsets inside larger caller buffers.
fn wgpu_zero_copy_offsets() -> T {
    use linrec::GpuRef;
    let ctx = wgpu_ctx()?;
    let p = LinearScan::new(2, 45, 3).complex();
    let d = gen(p, true, Starts::Edges, 900);
    let mk = |v: &[f64], pad: usize| padded_buffer(&ctx, v, pad, DType::F32);
    let (bx, ba, bh0) = (mk(&d.x, 5), mk(&d.a, 33), mk(d.h0.as_ref().unwrap(), 1));
    let st = d.start.as_ref().unwrap();
    let bs = padded_flags(&ctx, st, 2);
    let inp = ScanInputs {
        x: GpuRef::new(&bx, 20, d.x.len(), DType::F32),
        a: GpuRef::new(&ba, 132, d.a.len(), DType::F32),
        h0: Some(GpuRef::new(
            &bh0,
            4,
            d.h0.as_ref().unwrap().len(),
            DType::F32,
        )),
        start: Some(GpuRef::new(&bs, 8, st.len(), DType::U32)),
    };
    let out = scan::wgpu::forward(&ctx, &p, &inp)?;
    let r = fwd_ref(&d);
    close(
        "zero-copy h",
        &ctx.download(&out.h)?.to_f64_vec(),
        &r.h,
        1e-5,
    )?;
    // a range past the end of its buffer is rejected
    let bad = ScanInputs {
        x: GpuRef::new(&bx, 40, d.x.len(), DType::F32),
        ..inp
    };
    ensure!(
        matches!(
            scan::wgpu::forward(&ctx, &p, &bad),
            Err(Error::Size { arg: "x", .. })
        ),
        "range past the end accepted"
    );
    // flags must be u32 words at this level
    let bad = ScanInputs {
        start: Some(GpuRef::new(&bs, 8, st.len(), DType::U8)),
        ..inp
    };
    ensure!(
        matches!(
            scan::wgpu::forward(&ctx, &p, &bad),
            Err(Error::DType { arg: "start", .. })
        ),
        "u8 flags accepted"
    );
    Ok(())
}

/// A zero tensor of `arg`'s shape with every axis capped at 4 (what a caller of a problem with
/// a huge size can actually hold).
fn capped_zeros<P: Problem>(p: &P, arg: P::Arg) -> Tensor {
    let shape: Vec<usize> = p.spec(arg).shape.iter().map(|&x| x.min(4)).collect();
    Tensor::zeros(shape, DType::F32)
}

/// Sizes and offsets near the integer limits, through every public constructor and every op's
/// forward and backward on the reference and on wgpu: each is an error naming an argument,
/// never a panic (an overflow in a shape, count or byte extent) or a wrong result.
fn sizes_near_the_integer_limits() -> T {
    use linrec::{efla, ffm, selective};
    let huge = [
        usize::MAX,
        usize::MAX / 2,
        (1 << 32) + 1,
        1 << 62,
        usize::MAX / 3 + 1,
    ];
    let no_panic = |what: &str, f: &dyn Fn() -> Result<(), Error>| -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Err(_)) => Ok(()),
            Ok(Ok(())) => fail!("{what}: accepted"),
            Err(_) => fail!("{what}: panicked"),
        }
    };
    let small = Tensor::zeros([2, 3], DType::F32);
    for &h in &huge {
        no_panic(&format!("Tensor::new [{h}, 2]"), &|| {
            Tensor::new([h, 2], vec![0f32; 2]).map(|_| ())
        })?;
        no_panic(&format!("Tensor::from_f64 [3, {h}]"), &|| {
            Tensor::from_f64([3, h], &[0.0; 6], DType::BF16).map(|_| ())
        })?;
        no_panic(&format!("Tensor::reshape [{h}, 4]"), &|| {
            small.clone().reshape([h, 4]).map(|_| ())
        })?;
    }
    let mut devs = vec![Device::Reference, Device::Cpu];
    if let Ok(d) = wgpu() {
        devs.push(d);
    }
    for dev in &devs {
        for &h in &huge {
            for i in 0..4 {
                let mut dims = [2, 3, 2, 2];
                dims[i] = h;
                let [b, t, d, n] = dims;
                let tag = format!("{} dims {dims:?}", dev.describe());
                let p = LinearScan::new(b, t, d).complex();
                no_panic(&format!("scan {tag}"), &|| {
                    if i == 3 {
                        // the scan has no state size N: nothing to try
                        return Err(Error::value("state", "unused by the scan", n));
                    }
                    let z = |a| capped_zeros(&p, a);
                    let (x, a, g) = (z(scan::Arg::X), z(scan::Arg::A), z(scan::Arg::GradH));
                    let inp = ScanInputs {
                        x: &x,
                        a: &a,
                        h0: None,
                        start: None,
                    };
                    scan::forward(dev, &p, &inp).map(|_| ())?;
                    let bw = ScanBackwardInputs {
                        a: &a,
                        h: &x,
                        h0: None,
                        start: None,
                        grad_h: &g,
                        grad_final: None,
                    };
                    scan::backward(dev, &p, &bw).map(|_| ())
                })?;
                let p = ffm::Ffm::new(b, t, d, n);
                no_panic(&format!("ffm {tag}"), &|| {
                    let z = |a| capped_zeros(&p, a);
                    let (x, a, bb) = (z(ffm::Arg::X), z(ffm::Arg::A), z(ffm::Arg::B));
                    let inp = ffm::FfmInputs {
                        x: &x,
                        a: &a,
                        b: &bb,
                        s0: None,
                        start: None,
                    };
                    ffm::forward(dev, &p, &inp).map(|_| ())
                })?;
                let p = efla::Efla::new(b, t, d, n, n);
                no_panic(&format!("efla {tag}"), &|| {
                    let z = |a| capped_zeros(&p, a);
                    let (q, k, v, beta) = (
                        z(efla::Arg::Q),
                        z(efla::Arg::K),
                        z(efla::Arg::V),
                        z(efla::Arg::Beta),
                    );
                    let inp = efla::EflaInputs {
                        q: &q,
                        k: &k,
                        v: &v,
                        beta: &beta,
                        s0: None,
                        start: None,
                    };
                    efla::forward(dev, &p, &inp).map(|_| ())
                })?;
                let p = selective::SelectiveScan::new(b, t, d, n);
                no_panic(&format!("selective {tag}"), &|| {
                    let z = |a| capped_zeros(&p, a);
                    use selective::Arg as S;
                    let (u, dl, a, bm, cm) = (z(S::U), z(S::Delta), z(S::A), z(S::Bm), z(S::Cm));
                    let inp = selective::SelectiveInputs {
                        u: &u,
                        delta: &dl,
                        a: &a,
                        bm: &bm,
                        cm: &cm,
                        dskip: None,
                        z: None,
                        delta_bias: None,
                        h0: None,
                        start: None,
                    };
                    selective::forward(dev, &p, &inp).map(|_| ())
                })?;
            }
        }
    }
    // a zero-copy view whose byte range overflows u64
    if let Ok(ctx) = wgpu_ctx() {
        let t = ctx
            .upload(&Tensor::zeros([2, 3, 2], DType::F32))
            .map_err(|e| Stop::Fail(e.to_string()))?;
        let p = LinearScan::new(2, 3, 2);
        for off in [u64::MAX - 3, u64::MAX - 4096, 1 << 63] {
            no_panic(&format!("GpuRef offset {off}"), &|| {
                let r = linrec::GpuRef::new(&t.buffer, off, 12, DType::F32);
                let inp = ScanInputs {
                    x: r,
                    a: t.as_ref(),
                    h0: None,
                    start: None,
                };
                scan::wgpu::forward(&ctx, &p, &inp).map(|_| ())
            })?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ native CPU kernels

/// Host tensors of `d` in its problem's storage dtype: (x, a, h0, start, grad_h, grad_final).
#[allow(clippy::type_complexity)]
fn tensors(
    d: &Data,
) -> (
    Tensor,
    Tensor,
    Option<Tensor>,
    Option<Tensor>,
    Tensor,
    Option<Tensor>,
) {
    let p = &d.p;
    let t = |n, v: &[f64]| tensor(&p.spec(n).shape, v, p.dtype_of(p.spec(n).role));
    (
        t(scan::Arg::X, &d.x),
        t(scan::Arg::A, &d.a),
        d.h0.as_ref().map(|v| t(scan::Arg::H0, v)),
        d.start
            .as_ref()
            .map(|s| Tensor::new(p.spec(scan::Arg::Start).shape, s.clone()).unwrap()),
        t(scan::Arg::GradH, &d.g),
        d.gf.as_ref().map(|v| t(scan::Arg::GradFinal, v)),
    )
}

/// Every result of the CPU kernels on `d` (h, h_final, dx, da, dh0) as f32 bits.
fn cpu_results(d: &Data) -> Result<Vec<Vec<f32>>, Stop> {
    let (x, a, h0, st, g, gf) = tensors(d);
    let out = scan::forward(
        &Device::Cpu,
        &d.p,
        &ScanInputs {
            x: &x,
            a: &a,
            h0: h0.as_ref(),
            start: st.as_ref(),
        },
    )?;
    let gr = scan::backward(
        &Device::Cpu,
        &d.p,
        &ScanBackwardInputs {
            a: &a,
            h: &out.h,
            h0: h0.as_ref(),
            start: st.as_ref(),
            grad_h: &g,
            grad_final: gf.as_ref(),
        },
    )?;
    Ok([&out.h, &out.h_final, &gr.dx, &gr.da, &gr.dh0]
        .iter()
        .map(|t| t.to_f32_vec())
        .collect())
}

/// Forward and backward on 1, 2 and 3 threads give bitwise identical results: rows cut into
/// chunks of time (few rows, long T: the two-pass scan) and whole rows (many rows).
fn cpu_threads_bitwise() -> T {
    let mut k = 0;
    for (b, t, dd) in [(2, 3000, 24), (9, 150, 70)] {
        for p in variants(b, t, dd) {
            k += 1;
            let d = gen(p, k % 2 == 0, Starts::Edges, 1000 + k);
            let one = with_threads(1, || cpu_results(&d))?;
            for n in [2, 3] {
                let more = with_threads(n, || cpu_results(&d))?;
                for (i, (x, y)) in one.iter().zip(&more).enumerate() {
                    bitwise(&format!("{} result {i}, 1 vs {n} threads", name(&p)), x, y)?;
                }
            }
        }
    }
    Ok(())
}

/// Long rows (T = 2^18, B = 1, cut into chunks of time) whose state barely decays: real `a`
/// within 1e-4 of 1, and complex `a` on the unit circle. The CPU meets the f32 bounds of
/// T <= 4096: 1e-5 forward, 1e-4 backward (the GPU kernels: `long_slow_decay_on`).
fn long_cpu_slow_decay() -> T {
    let dev = Device::Cpu;
    for (i, p) in [
        LinearScan::new(1, 1 << 18, 3),
        LinearScan::new(1, 1 << 18, 2).complex(),
        LinearScan::new(1, 1 << 18, 2).complex().time_invariant(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = gen(p, true, Starts::None, 1100 + i as u64);
        let mut r = Rng::new(1200 + i as u64);
        let n = d.a.len() / p.width();
        d.a = f32_exact(
            &(0..n)
                .flat_map(|_| {
                    if p.complex {
                        let th = r.uniform(-std::f64::consts::PI, std::f64::consts::PI);
                        vec![th.cos(), th.sin()]
                    } else {
                        vec![1.0 - r.uniform(0.0, 1e-4)]
                    }
                })
                .collect::<Vec<_>>(),
        );
        let (x, a, h0, st, g, gf) = tensors(&d);
        let out = scan::forward(
            &dev,
            &p,
            &ScanInputs {
                x: &x,
                a: &a,
                h0: h0.as_ref(),
                start: st.as_ref(),
            },
        )?;
        let rf = fwd_ref(&d);
        let what = format!("cpu {}", name(&p));
        let e = rel(&out.h.to_f64_vec(), &rf.h);
        eprintln!("{what}: h rel {e:.2e}");
        close(&format!("{what} h"), &out.h.to_f64_vec(), &rf.h, 1e-5)?;
        close(
            &format!("{what} h_final"),
            &out.h_final.to_f64_vec(),
            &rf.h_final,
            1e-5,
        )?;
        let gr = scan::backward(
            &dev,
            &p,
            &ScanBackwardInputs {
                a: &a,
                h: &out.h,
                h0: h0.as_ref(),
                start: st.as_ref(),
                grad_h: &g,
                grad_final: gf.as_ref(),
            },
        )?;
        let rb = bwd_ref(&d, &rf.h);
        close(&format!("{what} dx"), &gr.dx.to_f64_vec(), &rb.dx, 1e-4)?;
        close(&format!("{what} da"), &gr.da.to_f64_vec(), &rb.da, 1e-4)?;
        close(&format!("{what} dh0"), &gr.dh0.to_f64_vec(), &rb.dh0, 1e-4)?;
    }
    Ok(())
}

/// T = 2^20 in one row on the CPU (the two-pass scan over many chunks), as `long_wgpu`.
fn long_cpu() -> T {
    let p = LinearScan::new(1, 1 << 20, 1);
    let mut d = gen(p, true, Starts::None, 700);
    d.a = f32_exact(&d.a.iter().map(|v| 1.0 - 1e-4 * v.abs()).collect::<Vec<_>>());
    d.start = Some({
        let mut s = vec![0u8; p.len];
        s[123_457] = 1;
        s
    });
    let (x, a, h0, st, _, _) = tensors(&d);
    let out = scan::forward(
        &Device::Cpu,
        &p,
        &ScanInputs {
            x: &x,
            a: &a,
            h0: h0.as_ref(),
            start: st.as_ref(),
        },
    )?;
    let r = fwd_ref(&d);
    eprintln!(
        "cpu {}: h rel {:.2e}",
        name(&p),
        rel(&out.h.to_f64_vec(), &r.h)
    );
    close(
        &format!("cpu {} h", name(&p)),
        &out.h.to_f64_vec(),
        &r.h,
        1e-5,
    )
}

/// A NaN or infinity in `x` or `a` before a reset (in scan order) does not reach any step after
/// it: there the CPU's `h`, `dx` and `da` are finite and match the reference (which drops the
/// state by selection too); other rows are untouched. Both on whole rows and on rows cut into
/// chunks of time.
fn cpu_non_finite_isolation() -> T {
    for (tn, dd) in [(300, 5), (6000, 12)] {
        for (k, p) in variants(2, tn, dd).into_iter().enumerate() {
            let mut d = gen(p, true, Starts::None, 1300 + k as u64);
            let cut = tn / 2;
            let mut s = vec![0u8; 2 * tn];
            s[cut] = 1;
            d.start = Some(s);
            // steps of row 0 before the reset in scan order, and the ones after it
            let before = |t: usize| if p.reverse { t >= cut } else { t < cut };
            let w = p.width();
            let row = dd * w;
            let tp = if p.reverse { cut + 7 } else { cut - 9 };
            d.x[tp * row] = f64::NAN;
            d.x[(tp - 2) * row + w] = f64::INFINITY;
            if p.time_varying {
                d.a[(tp + 1) * row + row - 1] = f64::NAN;
            }
            let out = cpu_results(&d)?;
            let rf = fwd_ref(&d);
            let rb = bwd_ref(&d, &rf.h);
            let what = format!("cpu isolation {}", name(&p));
            // indices (row 0 after the reset; all of row 1) of [B, T, D(, 2)] tensors
            let keep: Vec<usize> = (0..2 * tn)
                .filter(|&i| i >= tn || !before(i))
                .flat_map(|i| i * row..(i + 1) * row)
                .collect();
            let pick = |v: &[f64]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            let mut checks = vec![
                ("h", pick(&f64s(&out[0])), pick(&rf.h), 1e-5),
                ("h_final", f64s(&out[1]), rf.h_final.clone(), 1e-5),
                ("dx", pick(&f64s(&out[2])), pick(&rb.dx), 1e-4),
            ];
            if p.time_varying {
                checks.push(("da", pick(&f64s(&out[3])), pick(&rb.da), 1e-4));
            }
            for (n, o, r) in checks.iter().map(|(n, o, r, _)| (n, o, r)) {
                ensure!(
                    o.iter().all(|v| v.is_finite()),
                    "{what} {n}: a non-finite value crossed the reset"
                );
                ensure!(
                    r.iter().all(|v| v.is_finite()),
                    "{what} {n}: the reference does not isolate"
                );
            }
            for (n, o, r, tol) in &checks {
                close(&format!("{what} {n}"), o, r, *tol)?;
            }
        }
    }
    Ok(())
}

/// Resets isolate non-finite values (docs/scan.md): NaN (then, separately, infinities) in
/// `x`, in `a` (time-varying, and one time-invariant channel) and in `h0` (with and without a
/// reset at the first step) propagate within their segment and never across a reset, on `bk`
/// in every storage dtype it has, every option, against the reference (non-finite and NaN
/// positions equal, finite values within the usual bounds). Rows of one chunk and rows across
/// many chunks.
fn nonfinite_on(bk: &str) -> T {
    let dev = backend(bk)?;
    let dtypes: &[DType] = if bk.starts_with("wgpu") {
        &[DType::F32]
    } else {
        &[DType::F32, DType::F16, DType::BF16]
    };
    let mut seed = 0;
    for &dt in dtypes {
        for (tn, dd) in [(37, 5), (1500, 5)] {
            for p in variants(2, tn, dd) {
                for nan in [true, false] {
                    seed += 1;
                    let p = p.with_dtype(dt);
                    let mut d = rounded(gen(p, true, Starts::None, 1900 + seed));
                    let (w, row) = (p.width(), dd * p.width());
                    let cut = tn / 2;
                    let mut st = vec![0u8; 2 * tn];
                    st[cut] = 1;
                    st[0] = 1; // row 0: h0 dropped at once (forward problem)
                    st[tn + cut + 1] = 1;
                    d.start = Some(st);
                    let bad = if nan { f64::NAN } else { f64::INFINITY };
                    // before the reset at `cut` in scan order
                    let tp = if p.reverse { cut + 3 } else { cut - 4 };
                    d.x[tp * row] = bad;
                    d.x[(tn + tp - 1) * row + w] = -bad;
                    if p.time_varying {
                        d.a[(tp + 1) * row + row - 1] = bad;
                        d.a[(tn + tp) * row + 2 * w] = -bad;
                    } else {
                        d.a[3 * w] = bad;
                    }
                    let h0 = d.h0.as_mut().unwrap();
                    h0[0] = bad; // row 0, channel 0
                    h0[row + w] = bad; // row 1, channel 1
                    let (tf, tb) = if dt == DType::F32 {
                        (1e-5, 1e-4)
                    } else {
                        (1e-2, 1e-2)
                    };
                    let what = format!("{bk} {bad} {} {dt}", name(&p));
                    let (x, a, h0, st, g, gf) = tensors(&d);
                    let out = scan::forward(
                        &dev,
                        &p,
                        &ScanInputs {
                            x: &x,
                            a: &a,
                            h0: h0.as_ref(),
                            start: st.as_ref(),
                        },
                    )?;
                    let rf = fwd_ref(&d);
                    let h = out.h.to_f64_vec();
                    nonfinite_close(&format!("{what} h"), &h, &rf.h, tf, nan)?;
                    let hf = out.h_final.to_f64_vec();
                    nonfinite_close(&format!("{what} h_final"), &hf, &rf.h_final, tf, nan)?;
                    let gr = scan::backward(
                        &dev,
                        &p,
                        &ScanBackwardInputs {
                            a: &a,
                            h: &out.h,
                            h0: h0.as_ref(),
                            start: st.as_ref(),
                            grad_h: &g,
                            grad_final: gf.as_ref(),
                        },
                    )?;
                    // the reference backward from the backend's h (as a framework would)
                    let rb = bwd_ref(&d, &h);
                    for (n, o, r) in [
                        ("dx", &gr.dx, &rb.dx),
                        ("da", &gr.da, &rb.da),
                        ("dh0", &gr.dh0, &rb.dh0),
                    ] {
                        nonfinite_close(&format!("{what} {n}"), &o.to_f64_vec(), r, tb, nan)?;
                    }
                }
            }
        }
    }
    Ok(())
}
fn nonfinite_wgpu() -> T {
    nonfinite_on("wgpu")
}
fn nonfinite_cuda() -> T {
    nonfinite_on("cuda")
}
fn nonfinite_cpu() -> T {
    nonfinite_on("cpu")
}

/// Property-based: random shapes and options on the CPU kernels against the reference.
fn cpu_random_shapes() -> T {
    use proptest::prelude::*;
    let dev = Device::Cpu;
    let strat = (
        1usize..10,
        1usize..1200,
        1usize..70,
        any::<[bool; 5]>(),
        any::<u64>(),
    );
    prop_check(24, strat, |case| random_case(&dev, "cpu", case))
}

/// Rows wider than one channel block of the CPU kernels (1024 floats): several blocks per row,
/// the last one partial, on whole rows and on rows cut into chunks of time.
fn cpu_wide_rows() -> T {
    let dev = Device::Cpu;
    for (i, &(b, t, dd)) in [(2, 40, 1100), (1, 300, 700)].iter().enumerate() {
        for (k, p) in variants(b, t, dd).into_iter().enumerate() {
            let d = gen(p, k % 2 == 0, Starts::Edges, 1500 + (i * 10 + k) as u64);
            check_backend(&dev, &d, &format!("cpu {}", name(&p)))?;
        }
    }
    Ok(())
}

fn main() {
    common::main(trials![
        reference_matches_spec_transcription,
        reference_gradients_match_finite_differences,
        packed_rows_equal_separate_rows,
        chained_calls_equal_one_call,
        errors_name_the_argument,
        sizes_near_the_integer_limits,
        wgpu_each_option,
        cuda_each_option,
        wgpu_shapes,
        cuda_shapes,
        cuda_storage_dtypes,
        wgpu_storage_dtypes_refused,
        random_shapes_all_backends,
        long_wgpu,
        long_wgpu_slow_decay,
        long_cuda_slow_decay,
        wgpu_split_limits,
        wgpu_webgpu_default_limits,
        wgpu_zero_copy_offsets,
        cpu_each_option,
        cpu_shapes,
        cpu_wide_rows,
        cpu_storage_dtypes,
        cpu_random_shapes,
        cpu_threads_bitwise,
        cpu_non_finite_isolation,
        nonfinite_wgpu,
        nonfinite_cuda,
        nonfinite_cpu,
        long_cpu,
        long_cpu_slow_decay,
    ]);
}
