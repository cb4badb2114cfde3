//! Criterion benchmarks of linrec's native CPU backend (`Device::Cpu`): every op, forward and
//! forward + backward, at the tour's shapes and at a long-sequence shape, on one thread and on
//! every thread, side by side in one run with
//! - `memcpy`: a copy of the same bytes the op must move at least (the memory-bandwidth roof
//!   of the memory-bound ops), measured in the same run;
//! - `reference`: the f64 reference (`Device::Reference`), at the tour's shapes;
//! - `lavapipe`: the WGSL kernels on a CPU-emulated wgpu adapter, where there is one (what
//!   `Device::best()` picked before the CPU backend existed).
//!
//! - `plain-loop`: a plain single-thread f32 Rust loop over the same data (benches/plain), the
//!   floor the one-thread rows must beat.
//!
//! It also times one RL step (T = 1 with a carried state; FFM B = 8, M = 32, C = 4; EFLA
//! B = 8, H = 4, K = V = 64).
//!
//! `cargo bench --bench cpu` (`-- scan` etc. to pick a group). Throughput counts the bytes an
//! ideal kernel moves: each input read once and each output written once (forward), plus the
//! gradients (forward + backward counts both passes).

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs};
use linrec::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::selective::{self, SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
use linrec::{Device, Problem, Result, Tensor};
use std::hint::black_box;

mod plain;

type Run = Box<dyn Fn(&Device) -> Result<()> + Send + Sync>;
/// A plain loop over data and output buffers it owns.
type Plain = Box<dyn FnMut()>;

/// One benchmarked problem.
struct Case {
    /// `op/variant/shape`.
    name: String,
    /// Bytes the forward moves at least, and forward + backward.
    bytes: (u64, u64),
    fwd: Run,
    fwd_bwd: Run,
    /// Time the f64 reference and lavapipe too (tour shapes; too slow for the long ones).
    peers: bool,
    /// The plain single-thread loop, forward and forward + backward, where written.
    plain: (Option<Plain>, Option<Plain>),
}

/// Deterministic, non-zero values in `[lo, hi]` for an argument of `p`.
fn data<P: Problem>(p: &P, arg: P::Arg, lo: f64, hi: f64) -> Tensor {
    let spec = p.spec(arg);
    let n = spec.numel();
    let v: Vec<f64> = (0..n)
        .map(|i| lo + (hi - lo) * (0.5 + 0.5 * ((i as f64) * 0.618_034).sin()))
        .collect();
    Tensor::from_f64(spec.shape, &v, p.dtype_of(spec.role)).expect("shape")
}

fn scan_case(b: usize, t: usize, d: usize, complex: bool, peers: bool) -> Case {
    let mut p = LinearScan::new(b, t, d);
    if complex {
        p = p.complex();
    }
    let x = data(&p, scan::Arg::X, -1.0, 1.0);
    let a = data(&p, scan::Arg::A, 0.5, 0.999);
    let g = data(&p, scan::Arg::GradH, -1.0, 1.0);
    let e = (b * t * d * p.width() * 4) as u64;
    let (x2, a2) = (x.clone(), a.clone());
    let plain = {
        let (xv, av, gv) = (x.to_f32_vec(), a.to_f32_vec(), g.to_f32_vec());
        let (w, n) = (d * p.width(), xv.len());
        let (xf, af, mut hf) = (xv.clone(), av.clone(), vec![0f32; n]);
        let fwd: Plain = Box::new(move || {
            plain::scan_forward(&xf, &af, &mut hf, b, w, complex);
            black_box(&hf);
        });
        let (mut h, mut dx, mut da) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let fwd_bwd: Option<Plain> = (!complex).then(|| {
            Box::new(move || {
                plain::scan_forward(&xv, &av, &mut h, b, w, false);
                plain::scan_backward(&av, &h, &gv, &mut dx, &mut da, b, w);
                black_box((&dx, &da));
            }) as Plain
        });
        (Some(fwd), fwd_bwd)
    };
    Case {
        name: format!(
            "scan/{}/{b}x{t}x{d}",
            if complex { "complex" } else { "real" }
        ),
        bytes: (3 * e, 3 * e + 5 * e),
        fwd: Box::new(move |dev| {
            let inp = ScanInputs {
                x: &x,
                a: &a,
                h0: None,
                start: None,
            };
            scan::forward(dev, &p, &inp).map(|o| drop(black_box(o)))
        }),
        fwd_bwd: Box::new(move |dev| {
            let inp = ScanInputs {
                x: &x2,
                a: &a2,
                h0: None,
                start: None,
            };
            let o = scan::forward(dev, &p, &inp)?;
            let bw = ScanBackwardInputs {
                a: &a2,
                h: &o.h,
                h0: None,
                start: None,
                grad_h: &g,
                grad_final: None,
            };
            scan::backward(dev, &p, &bw).map(|r| drop(black_box(r)))
        }),
        peers,
        plain,
    }
}

fn ffm_case(b: usize, t: usize, m: usize, c: usize, peers: bool) -> Case {
    let p = Ffm::new(b, t, m, c);
    let x = data(&p, ffm::Arg::X, -1.0, 1.0);
    let a = data(&p, ffm::Arg::A, -0.5, -0.01);
    let bf = data(&p, ffm::Arg::B, -1.0, 1.0);
    let s0 = data(&p, ffm::Arg::S0, -1.0, 1.0);
    let g = data(&p, ffm::Arg::GradS, -1.0, 1.0);
    let (xb, sb) = ((b * t * m * 4) as u64, (b * t * m * c * 8) as u64);
    let ins = (x.clone(), a.clone(), bf.clone(), s0.clone());
    let plain = {
        let v = |t: &Tensor| t.to_f32_vec();
        let (xv, av, bv, s0v, gv) = (v(&x), v(&a), v(&bf), v(&s0), v(&g));
        let n = b * t * m * c * 2;
        let (xf, af, bff, s0f, mut sf) = (
            xv.clone(),
            av.clone(),
            bv.clone(),
            s0v.clone(),
            vec![0f32; n],
        );
        let fwd: Plain = Box::new(move || {
            plain::ffm_forward(&xf, &af, &bff, &s0f, &mut sf, b, m, c);
            black_box(&sf);
        });
        let (mut s, mut dx, mut da, mut db) = (
            vec![0f32; n],
            vec![0f32; xv.len()],
            vec![0f32; m],
            vec![0f32; c],
        );
        let fwd_bwd: Plain = Box::new(move || {
            plain::ffm_forward(&xv, &av, &bv, &s0v, &mut s, b, m, c);
            plain::ffm_backward(&av, &bv, &s0v, &s, &gv, &mut dx, &mut da, &mut db, b, m, c);
            black_box((&dx, &da, &db));
        });
        (Some(fwd), Some(fwd_bwd))
    };
    Case {
        name: format!("ffm/{b}x{t}x{m}x{c}"),
        bytes: (xb + sb, xb + sb + xb + sb + xb),
        fwd: Box::new(move |dev| {
            let inp = FfmInputs {
                x: &x,
                a: &a,
                b: &bf,
                s0: Some(&s0),
                start: None,
            };
            ffm::forward(dev, &p, &inp).map(|o| drop(black_box(o)))
        }),
        fwd_bwd: Box::new(move |dev| {
            let (x, a, bf, s0) = (&ins.0, &ins.1, &ins.2, &ins.3);
            let inp = FfmInputs {
                x,
                a,
                b: bf,
                s0: Some(s0),
                start: None,
            };
            let o = ffm::forward(dev, &p, &inp)?;
            black_box(o);
            let bw = FfmBackwardInputs {
                x,
                a,
                b: bf,
                s0: Some(s0),
                start: None,
                grad_s: &g,
                grad_final: None,
            };
            ffm::backward(dev, &p, &bw).map(|r| drop(black_box(r)))
        }),
        peers,
        plain,
    }
}

fn efla_case(p: Efla, label: &str, peers: bool) -> Case {
    let kd = p.key_dim as f64;
    let q = data(&p, efla::Arg::Q, -1.0, 1.0);
    let k = data(&p, efla::Arg::K, -0.7 / kd.sqrt(), 0.7 / kd.sqrt());
    let v = data(&p, efla::Arg::V, -1.0, 1.0);
    let beta = data(&p, efla::Arg::Beta, 0.1, 0.9);
    let s0 = data(&p, efla::Arg::S0, -0.1, 0.1);
    let go = data(&p, efla::Arg::GradO, -1.0, 1.0);
    let (b, t, h) = (p.batch, p.len, p.heads);
    let (kb, vb) = (
        (b * t * h * p.key_dim * 4) as u64,
        (b * t * h * p.value_dim * 4) as u64,
    );
    let sb = (b * h * p.key_dim * p.value_dim * 4) as u64;
    let fwd_bytes = 2 * kb + 2 * vb + 2 * sb;
    let ins = (q.clone(), k.clone(), v.clone(), beta.clone(), s0.clone());
    // the plain loop computes the delta rule: timed beside the delta-rule rows
    let plain_fwd = (p.rule == efla::Rule::Delta && p.len > 1).then(|| {
        let f = |t: &Tensor| t.to_f32_vec();
        let (qv, kv, vv, bv, s0v) = (f(&q), f(&k), f(&v), f(&beta), f(&s0));
        let (mut st, mut o) = (s0v.clone(), vec![0f32; b * t * h * p.value_dim]);
        let (kd, vd) = (p.key_dim, p.value_dim);
        Box::new(move || {
            st.copy_from_slice(&s0v);
            plain::delta_forward(&qv, &kv, &vv, &bv, &mut st, &mut o, b, h, kd, vd);
            black_box((&st, &o));
        }) as Plain
    });
    Case {
        name: format!("efla/{label}/{b}x{t}x{h}x{}x{}", p.key_dim, p.value_dim),
        bytes: (fwd_bytes, 3 * fwd_bytes),
        fwd: Box::new(move |dev| {
            let inp = EflaInputs {
                q: &q,
                k: &k,
                v: &v,
                beta: &beta,
                s0: Some(&s0),
                start: None,
            };
            efla::forward(dev, &p, &inp).map(|o| drop(black_box(o)))
        }),
        fwd_bwd: Box::new(move |dev| {
            let (q, k, v, beta, s0) = (&ins.0, &ins.1, &ins.2, &ins.3, &ins.4);
            let inp = EflaInputs {
                q,
                k,
                v,
                beta,
                s0: Some(s0),
                start: None,
            };
            black_box(efla::forward(dev, &p, &inp)?);
            let bw = EflaBackwardInputs {
                q,
                k,
                v,
                beta,
                s0: Some(s0),
                start: None,
                grad_o: &go,
                grad_final: None,
            };
            efla::backward(dev, &p, &bw).map(|r| drop(black_box(r)))
        }),
        peers,
        plain: (plain_fwd, None),
    }
}

fn selective_case(b: usize, d: usize, t: usize, n: usize, peers: bool) -> Case {
    let p = SelectiveScan::new(b, t, d, n).softplus();
    use selective::Arg as S;
    let u = data(&p, S::U, -1.0, 1.0);
    let delta = data(&p, S::Delta, -3.0, 0.0);
    let a = data(&p, S::A, -2.0, -0.1);
    let bm = data(&p, S::Bm, -1.0, 1.0);
    let cm = data(&p, S::Cm, -1.0, 1.0);
    let g = data(&p, S::GradOut, -1.0, 1.0);
    let e = (b * t * d * 4) as u64;
    let bc = p.spec(S::Bm).numel() as u64 * 4;
    let ins = (u.clone(), delta.clone(), a.clone(), bm.clone(), cm.clone());
    let plain_fwd = {
        let f = |t: &Tensor| t.to_f32_vec();
        let (uv, dv, av, bv, cv) = (f(&u), f(&delta), f(&a), f(&bm), f(&cm));
        let mut y = vec![0f32; uv.len()];
        Box::new(move || {
            plain::selective_forward(&uv, &dv, &av, &bv, &cv, &mut y, b, d, n);
            black_box(&y);
        }) as Plain
    };
    Case {
        name: format!("selective/{b}x{d}x{t}x{n}"),
        bytes: (3 * e + 2 * bc, 3 * e + 2 * bc + 5 * e + 4 * bc),
        fwd: Box::new(move |dev| {
            let inp = SelectiveInputs {
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
            selective::forward(dev, &p, &inp).map(|o| drop(black_box(o)))
        }),
        fwd_bwd: Box::new(move |dev| {
            let (u, delta, a, bm, cm) = (&ins.0, &ins.1, &ins.2, &ins.3, &ins.4);
            let inp = SelectiveInputs {
                u,
                delta,
                a,
                bm,
                cm,
                dskip: None,
                z: None,
                delta_bias: None,
                h0: None,
                start: None,
            };
            black_box(selective::forward(dev, &p, &inp)?);
            let bw = SelectiveBackwardInputs {
                u,
                delta,
                a,
                bm,
                cm,
                dskip: None,
                z: None,
                delta_bias: None,
                h0: None,
                start: None,
                grad_out: &g,
                grad_final: None,
            };
            selective::backward(dev, &p, &bw).map(|r| drop(black_box(r)))
        }),
        peers,
        plain: (Some(plain_fwd), None),
    }
}

fn cases() -> Vec<Case> {
    let delta = |p: Efla| p.with_rule(efla::Rule::Delta);
    vec![
        // the tour's shapes
        scan_case(8, 2048, 256, false, true),
        scan_case(8, 2048, 256, true, true),
        ffm_case(8, 1024, 32, 4, true),
        efla_case(
            delta(Efla::new(2, 512, 4, 64, 64)).recurrent(),
            "delta-recurrent",
            true,
        ),
        efla_case(delta(Efla::new(2, 512, 4, 64, 64)), "delta-chunked", true),
        efla_case(Efla::new(2, 512, 4, 64, 64), "efla-chunked", false),
        selective_case(2, 256, 512, 16, true),
        // long sequences, few rows: the chunked scan over time keeps every core busy
        scan_case(1, 1 << 20, 16, false, false),
        ffm_case(1, 1 << 16, 32, 4, false),
        // one RL step (T = 1, carried state)
        ffm_case(8, 1, 32, 4, false),
        efla_case(Efla::new(8, 1, 4, 64, 64).recurrent(), "efla-step", false),
    ]
}

/// A memcpy moving `bytes` (reads and writes `bytes / 2` each), in the same run.
fn memcpy(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, bytes: u64) {
    let n = (bytes / 2) as usize;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
}

fn bench(c: &mut Criterion) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let lavapipe = Device::wgpu()
        .ok()
        .filter(|d| matches!(d, Device::Wgpu(c) if c.info.device_type == wgpu::DeviceType::Cpu));
    eprintln!(
        "bench cpu: {} threads; lavapipe: {}",
        rayon::current_num_threads(),
        lavapipe.as_ref().map_or("none".into(), Device::describe)
    );
    for mut case in cases() {
        let mut g = c.benchmark_group(format!("cpu/{}", case.name));
        g.sample_size(10);
        memcpy(&mut g, case.bytes.0);
        for (what, run, bytes, plain) in [
            ("forward", &case.fwd, case.bytes.0, &mut case.plain.0),
            (
                "forward+backward",
                &case.fwd_bwd,
                case.bytes.1,
                &mut case.plain.1,
            ),
        ] {
            g.throughput(Throughput::Bytes(bytes));
            if let Some(plain) = plain {
                g.bench_function(format!("{what}/plain-loop"), |b| b.iter(&mut *plain));
            }
            // a combination a device lacks (e.g. f16 on lavapipe) is skipped, not failed
            let ok = |dev: &Device| match run(dev) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("bench cpu: {} {what} on {}: {e}", case.name, dev.describe());
                    false
                }
            };
            if ok(&Device::Cpu) {
                // the timing loop runs inside the one-thread pool: one hand-off per sample,
                // not per call
                g.bench_function(format!("{what}/cpu-1-thread"), |b| {
                    b.iter_custom(|iters| {
                        one.install(|| {
                            let t0 = std::time::Instant::now();
                            for _ in 0..iters {
                                run(&Device::Cpu).expect("cpu");
                            }
                            t0.elapsed()
                        })
                    })
                });
                g.bench_function(format!("{what}/cpu"), |b| {
                    b.iter(|| run(&Device::Cpu).expect("cpu"))
                });
            }
            if case.peers {
                g.bench_function(format!("{what}/reference"), |b| {
                    b.iter(|| run(&Device::Reference).expect("reference"))
                });
                if let Some(dev) = lavapipe.as_ref().filter(|d| ok(d)) {
                    g.bench_function(format!("{what}/lavapipe"), |b| {
                        b.iter(|| run(dev).expect("lavapipe"))
                    });
                }
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
