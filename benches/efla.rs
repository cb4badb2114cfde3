//! Criterion benchmarks of EFLA (forward, backward; recurrent and chunked; the T = 1 decode
//! step) on every available backend, timed on the device (timestamp queries / CUDA events),
//! inputs resident on the device. `cargo bench --bench efla`; add `--features cuda` on an
//! NVIDIA machine.
//!
//! Throughput is in nominal FLOPs of the recurrent formulation, counted as elements: per
//! head and token `6 K V` forward (`k . P`, `q . P`, the rank-1 update) and `18 K V` backward
//! (three such passes), whatever the algorithm, so figures compare across algorithms
//! (`Melem/s` = MFLOP/s). Software adapters (lavapipe) get small problems; GPUs get
//! `B = 8, H = 16, K = V = 128, T = 4096` and a decode step of 64 x 16 heads.

mod common;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs};
use linrec::{DType, Device, Problem, Tensor};
use std::time::Duration;

/// Deterministic, non-zero data; keys of norm ~0.5, beta in (0.1, 0.9), a state for decode.
fn data(p: &Efla, name: efla::Arg) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    let kscale = 0.5 / (p.key_dim as f64).sqrt();
    let v: Vec<f64> = (0..n)
        .map(|i| {
            let s = ((i as f64) * 0.618).sin();
            match name {
                efla::Arg::K => kscale * s * 1.4,
                efla::Arg::Beta => 0.5 + 0.4 * s,
                efla::Arg::S0 => 0.1 * s,
                _ => s,
            }
        })
        .collect();
    Tensor::from_f64(spec.shape, &v, p.dtype_of(spec.role)).unwrap()
}

/// Register one benchmark timed on the device, throughput in (nominal) FLOPs.
fn bench_flops(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: String,
    dev: &Device,
    flops: u64,
    mut f: impl FnMut() -> linrec::Result<()>,
) {
    if let Err(e) = f() {
        eprintln!("bench: {id} skipped: {e}");
        return;
    }
    g.throughput(Throughput::Elements(flops));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += common::gpu_time(dev, &mut f);
            }
            total
        })
    });
}

struct Case {
    p: Efla,
    label: String,
    backward: bool,
}

fn cases(slow: bool) -> Vec<Case> {
    let (train, decode) = if slow {
        ((2, 512, 2, 64, 64), (8, 1, 4, 64, 64))
    } else {
        ((8, 4096, 16, 128, 128), (64, 1, 16, 128, 128))
    };
    let mut v = Vec::new();
    let (b, t, h, k, vd) = train;
    let base = Efla::new(b, t, h, k, vd);
    let shape = format!("{b}x{t}x{h}x{k}x{vd}");
    for (alg, p) in [("chunked64", base), ("recurrent", base.recurrent())] {
        for backward in [false, true] {
            let dir = if backward { "backward" } else { "forward" };
            v.push(Case {
                p,
                label: format!("{dir}/{alg}/f32/{shape}"),
                backward,
            });
        }
    }
    v.push(Case {
        p: base.with_dtype(DType::BF16),
        label: format!("forward/chunked64/bf16/{shape}"),
        backward: false,
    });
    let (b, t, h, k, vd) = decode;
    v.push(Case {
        p: Efla::new(b, t, h, k, vd).recurrent(),
        label: format!("decode/recurrent/f32/{b}x{t}x{h}x{k}x{vd}"),
        backward: false,
    });
    v
}

fn flops(c: &Case) -> u64 {
    let p = &c.p;
    let per = (p.key_dim * p.value_dim) as u64 * if c.backward { 18 } else { 6 };
    (p.batch * p.len * p.heads) as u64 * per
}

fn bench(c: &mut Criterion) {
    for (bk, dev) in common::devices() {
        let mut g = c.benchmark_group(format!("efla/{bk}"));
        g.sample_size(10);
        for case in cases(common::is_slow(&dev)) {
            let p = &case.p;
            let ts: Vec<Tensor> = [
                efla::Arg::Q,
                efla::Arg::K,
                efla::Arg::V,
                efla::Arg::Beta,
                efla::Arg::S0,
                efla::Arg::GradO,
            ]
            .iter()
            .map(|&n| data(p, n))
            .collect();
            let s0 = (p.len == 1).then_some(4);
            let fl = flops(&case);
            match &dev {
                Device::Wgpu(ctx) => {
                    let up: Vec<_> = ts.iter().map(|t| ctx.upload(t).unwrap()).collect();
                    let r = |i: usize| up[i].as_ref();
                    let inp = EflaInputs {
                        q: r(0),
                        k: r(1),
                        v: r(2),
                        beta: r(3),
                        s0: s0.map(r),
                        start: None,
                    };
                    let bin = EflaBackwardInputs {
                        q: r(0),
                        k: r(1),
                        v: r(2),
                        beta: r(3),
                        s0: s0.map(r),
                        start: None,
                        grad_o: r(5),
                        grad_final: None,
                    };
                    bench_flops(&mut g, case.label.clone(), &dev, fl, || {
                        if case.backward {
                            efla::wgpu::backward(ctx, p, &bin).map(|_| ())
                        } else {
                            efla::wgpu::forward(ctx, p, &inp).map(|_| ())
                        }
                    });
                }
                #[cfg(feature = "cuda")]
                Device::Cuda(be) => {
                    let up: Vec<_> = ts.iter().map(|t| be.upload(t).unwrap()).collect();
                    let r = |i: usize| up[i].as_ref();
                    bench_flops(&mut g, case.label.clone(), &dev, fl, || {
                        if case.backward {
                            let bin = EflaBackwardInputs {
                                q: r(0),
                                k: r(1),
                                v: r(2),
                                beta: r(3),
                                s0: s0.map(r),
                                start: None,
                                grad_o: r(5),
                                grad_final: None,
                            };
                            efla::cuda::backward(be, p, &bin).map(|_| ())
                        } else {
                            let inp = EflaInputs {
                                q: r(0),
                                k: r(1),
                                v: r(2),
                                beta: r(3),
                                s0: s0.map(r),
                                start: None,
                            };
                            efla::cuda::forward(be, p, &inp).map(|_| ())
                        }
                    });
                }
                Device::Cpu | Device::Reference => {}
            }
        }
        g.finish();
    }
    // the f64 reference, for scale
    let p = Efla::new(1, 256, 2, 32, 32);
    let ts: Vec<Tensor> = [efla::Arg::Q, efla::Arg::K, efla::Arg::V, efla::Arg::Beta]
        .iter()
        .map(|&n| data(&p, n))
        .collect();
    let mut g = c.benchmark_group("efla/cpu-reference");
    g.sample_size(10);
    let case = Case {
        p,
        label: String::new(),
        backward: false,
    };
    g.throughput(Throughput::Elements(flops(&case)));
    for (alg, p) in [("chunked64", p), ("recurrent", p.recurrent())] {
        g.bench_function(format!("forward/{alg}/f32/1x256x2x32x32"), |bch| {
            bch.iter(|| {
                let inp = EflaInputs {
                    q: &ts[0],
                    k: &ts[1],
                    v: &ts[2],
                    beta: &ts[3],
                    s0: None,
                    start: None,
                };
                efla::forward(&Device::Reference, &p, &inp).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
