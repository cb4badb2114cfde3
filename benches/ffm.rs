//! Criterion benchmarks of the FFM aggregation (forward, backward) on every available backend,
//! timed on the device (timestamp queries / CUDA events), inputs resident on the device.
//! `cargo bench --bench ffm`; add `--features cuda` on an NVIDIA machine.
//!
//! Throughput counts the bytes an ideal kernel must move: forward reads `x` and writes `S`;
//! backward reads `x` and `grad_s` and writes `dx` (the backward's checkpoints, the second read
//! of `x` and the small parameter gradients are not counted). On CUDA, `copy-reference` is a
//! device-to-device copy of `S`'s size in the same run, the bandwidth the kernels aim at, and
//! `scan-peer-forward` the generic complex linear scan on the same problem.

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use linrec::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use linrec::scan::{self, LinearScan, ScanInputs};
use linrec::{DType, Device, Problem, Tensor};

fn data(p: &Ffm, name: ffm::Arg) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    // deterministic and non-zero; a in [-0.5, -0.01] (decays), b in [-1, 1]
    let v: Vec<f64> = match name {
        ffm::Arg::A => (0..n)
            .map(|i| -0.01 - 0.49 * (i as f64 / n as f64))
            .collect(),
        _ => (0..n).map(|i| ((i as f64) * 0.618).sin()).collect(),
    };
    Tensor::from_f64(spec.shape, &v, DType::F32).unwrap()
}

fn data_scan(p: &LinearScan, name: scan::Arg) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    let v: Vec<f64> = (0..n).map(|i| 0.9 * ((i as f64) * 0.618).sin()).collect();
    Tensor::from_f64(spec.shape, &v, DType::F32).unwrap()
}

fn bench(c: &mut Criterion) {
    for (bk, dev) in common::devices() {
        let shapes: &[(usize, usize, usize, usize)] = if common::is_slow(&dev) {
            &[(8, 1024, 32, 4)]
        } else {
            // the second writes a 1 GiB S
            &[(8, 1024, 32, 4), (32, 4096, 128, 8)]
        };
        let mut g = c.benchmark_group(format!("ffm/{bk}"));
        g.sample_size(10);
        for &(b, t, m, cc) in shapes {
            let p = Ffm::new(b, t, m, cc);
            let id = format!("{b}x{t}x{m}x{cc}");
            let (x, a, bf, gs) = (
                data(&p, ffm::Arg::X),
                data(&p, ffm::Arg::A),
                data(&p, ffm::Arg::B),
                data(&p, ffm::Arg::GradS),
            );
            let xb = (b * t * m * 4) as u64;
            let sb = (b * t * m * cc * 8) as u64;
            match &dev {
                Device::Wgpu(ctx) => {
                    let up = |t: &Tensor| ctx.upload(t).unwrap();
                    let (x, a, bf, gs) = (up(&x), up(&a), up(&bf), up(&gs));
                    let inp = FfmInputs {
                        x: x.as_ref(),
                        a: a.as_ref(),
                        b: bf.as_ref(),
                        s0: None,
                        start: None,
                    };
                    common::bench_gpu(&mut g, format!("forward/{id}"), &dev, xb + sb, || {
                        ffm::wgpu::forward(ctx, &p, &inp).map(|_| ())
                    });
                    let bin = FfmBackwardInputs {
                        x: x.as_ref(),
                        a: a.as_ref(),
                        b: bf.as_ref(),
                        s0: None,
                        start: None,
                        grad_s: gs.as_ref(),
                        grad_final: None,
                    };
                    common::bench_gpu(&mut g, format!("backward/{id}"), &dev, 2 * xb + sb, || {
                        ffm::wgpu::backward(ctx, &p, &bin).map(|_| ())
                    });
                    // peer: the same recurrence as the generic complex time-invariant linear
                    // scan over D = M * C channels (x expanded to complex [B, T, D]); same
                    // bytes counted as for FFM, so the GB/s compare directly
                    let q = LinearScan::new(b, t, m * cc).complex().time_invariant();
                    let (xs, as_) = (
                        up(&data_scan(&q, scan::Arg::X)),
                        up(&data_scan(&q, scan::Arg::A)),
                    );
                    let sin = ScanInputs {
                        x: xs.as_ref(),
                        a: as_.as_ref(),
                        h0: None,
                        start: None,
                    };
                    common::bench_gpu(
                        &mut g,
                        format!("scan-peer-forward/{id}"),
                        &dev,
                        xb + sb,
                        || scan::wgpu::forward(ctx, &q, &sin).map(|_| ()),
                    );
                }
                #[cfg(feature = "cuda")]
                Device::Cuda(be) => {
                    let up = |t: &Tensor| be.upload(t).unwrap();
                    let (x, a, bf, gs) = (up(&x), up(&a), up(&bf), up(&gs));
                    let inp = FfmInputs {
                        x: x.as_ref(),
                        a: a.as_ref(),
                        b: bf.as_ref(),
                        s0: None,
                        start: None,
                    };
                    if let Err(e) = ffm::cuda::forward(be, &p, &inp) {
                        eprintln!("bench: ffm/{bk} skipped: {e}");
                        continue;
                    }
                    common::bench_gpu(&mut g, format!("forward/{id}"), &dev, xb + sb, || {
                        ffm::cuda::forward(be, &p, &inp).map(|_| ())
                    });
                    // every block width against the automatic choice, to tune it on a GPU
                    if !common::is_slow(&dev) {
                        for cols in (1..=8).map(|s| 1usize << s) {
                            common::bench_gpu(
                                &mut g,
                                format!("forward-cols{cols}/{id}"),
                                &dev,
                                xb + sb,
                                || ffm::cuda::forward_with(be, &p, &inp, Some(cols)).map(|_| ()),
                            );
                        }
                    }
                    let bin = FfmBackwardInputs {
                        x: x.as_ref(),
                        a: a.as_ref(),
                        b: bf.as_ref(),
                        s0: None,
                        start: None,
                        grad_s: gs.as_ref(),
                        grad_final: None,
                    };
                    common::bench_gpu(&mut g, format!("backward/{id}"), &dev, 2 * xb + sb, || {
                        ffm::cuda::backward(be, &p, &bin).map(|_| ())
                    });
                    // peer: the generic complex time-invariant linear scan over D = M * C
                    // channels, same bytes counted (see the wgpu arm)
                    let q = LinearScan::new(b, t, m * cc).complex().time_invariant();
                    let (xs, as_) = (
                        up(&data_scan(&q, scan::Arg::X)),
                        up(&data_scan(&q, scan::Arg::A)),
                    );
                    let sin = ScanInputs {
                        x: xs.as_ref(),
                        a: as_.as_ref(),
                        h0: None,
                        start: None,
                    };
                    common::bench_gpu(
                        &mut g,
                        format!("scan-peer-forward/{id}"),
                        &dev,
                        xb + sb,
                        || scan::cuda::forward(be, &q, &sin).map(|_| ()),
                    );
                    // the reference bandwidth: a device-to-device copy of S's size (its bytes
                    // read and written), timed the same way in the same run
                    g.throughput(criterion::Throughput::Bytes(2 * sb));
                    g.bench_function(format!("copy-reference/{id}"), |bch| {
                        bch.iter_custom(|iters| {
                            (0..iters)
                                .map(|_| be.time_copy(sb as usize).expect("device copy").1)
                                .sum()
                        })
                    });
                }
                Device::Cpu | Device::Reference => {}
            }
        }
        g.finish();
    }
    // the f64 reference, for scale
    let p = Ffm::new(1, 1024, 32, 4);
    let (x, a, bf) = (
        data(&p, ffm::Arg::X),
        data(&p, ffm::Arg::A),
        data(&p, ffm::Arg::B),
    );
    let mut g = c.benchmark_group("ffm/cpu-reference");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Bytes(
        (1024 * 32 * 4 + 1024 * 32 * 4 * 8) as u64,
    ));
    g.bench_function("forward/1x1024x32x4", |bch| {
        let inp = FfmInputs {
            x: &x,
            a: &a,
            b: &bf,
            s0: None,
            start: None,
        };
        bch.iter(|| ffm::forward(&Device::Reference, &p, &inp).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
