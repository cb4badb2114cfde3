//! Criterion benchmarks of the linear scan (forward, backward) on every available backend,
//! timed on the device (timestamp queries / CUDA events), inputs resident on the device.
//! `cargo bench --bench scan`; add `--features cuda` on an NVIDIA machine.

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::{DType, Device, Problem, Tensor};

fn data(p: &LinearScan, name: scan::Arg) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    // deterministic, non-zero, |a| < 1
    let v: Vec<f64> = (0..n)
        .map(|i| 0.5 + 0.45 * ((i as f64) * 0.618).sin())
        .collect();
    Tensor::from_f64(spec.shape, &v, DType::F32).unwrap()
}

fn bench(c: &mut Criterion) {
    for (bk, dev) in common::devices() {
        let shapes: &[(usize, usize, usize)] = if common::is_slow(&dev) {
            &[(4, 4096, 64)]
        } else {
            &[(8, 4096, 1536), (8, 65536, 1536)]
        };
        let mut g = c.benchmark_group(format!("linear_scan/{bk}"));
        g.sample_size(10);
        for &(b, t, d) in shapes {
            for p in [LinearScan::new(b, t, d), LinearScan::new(b, t, d).complex()] {
                let kind = if p.complex { "complex" } else { "real" };
                let (x, a, gh) = (
                    data(&p, scan::Arg::X),
                    data(&p, scan::Arg::A),
                    data(&p, scan::Arg::GradH),
                );
                let elems = (b * t * d * p.width()) as u64;
                match &dev {
                    Device::Wgpu(ctx) => {
                        let (x, a, gh) = (
                            ctx.upload(&x).unwrap(),
                            ctx.upload(&a).unwrap(),
                            ctx.upload(&gh).unwrap(),
                        );
                        let inp = ScanInputs {
                            x: x.as_ref(),
                            a: a.as_ref(),
                            h0: None,
                            start: None,
                        };
                        let out = scan::wgpu::forward(ctx, &p, &inp).unwrap();
                        // forward: read x, a; write h
                        common::bench_gpu(
                            &mut g,
                            format!("forward/{kind}/{b}x{t}x{d}"),
                            &dev,
                            elems * 12,
                            || scan::wgpu::forward(ctx, &p, &inp).map(|_| ()),
                        );
                        let bin = ScanBackwardInputs {
                            a: a.as_ref(),
                            h: out.h.as_ref(),
                            h0: None,
                            start: None,
                            grad_h: gh.as_ref(),
                            grad_final: None,
                        };
                        // backward: read a, h, g; write dx, da
                        common::bench_gpu(
                            &mut g,
                            format!("backward/{kind}/{b}x{t}x{d}"),
                            &dev,
                            elems * 20,
                            || scan::wgpu::backward(ctx, &p, &bin).map(|_| ()),
                        );
                    }
                    #[cfg(feature = "cuda")]
                    Device::Cuda(be) => {
                        let (x, a, gh) = (
                            be.upload(&x).unwrap(),
                            be.upload(&a).unwrap(),
                            be.upload(&gh).unwrap(),
                        );
                        let inp = ScanInputs {
                            x: x.as_ref(),
                            a: a.as_ref(),
                            h0: None,
                            start: None,
                        };
                        let out = scan::cuda::forward(be, &p, &inp).unwrap();
                        common::bench_gpu(
                            &mut g,
                            format!("forward/{kind}/{b}x{t}x{d}"),
                            &dev,
                            elems * 12,
                            || scan::cuda::forward(be, &p, &inp).map(|_| ()),
                        );
                        let bin = ScanBackwardInputs {
                            a: a.as_ref(),
                            h: out.h.as_ref(),
                            h0: None,
                            start: None,
                            grad_h: gh.as_ref(),
                            grad_final: None,
                        };
                        common::bench_gpu(
                            &mut g,
                            format!("backward/{kind}/{b}x{t}x{d}"),
                            &dev,
                            elems * 20,
                            || scan::cuda::backward(be, &p, &bin).map(|_| ()),
                        );
                    }
                    Device::Cpu | Device::Reference => {}
                }
            }
        }
        g.finish();
    }
    // the f64 reference, for scale
    let p = LinearScan::new(2, 1024, 64);
    let (x, a) = (data(&p, scan::Arg::X), data(&p, scan::Arg::A));
    let mut g = c.benchmark_group("linear_scan/cpu-reference");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Bytes((2 * 1024 * 64 * 12) as u64));
    g.bench_function("forward/real/2x1024x64", |bch| {
        bch.iter(|| {
            scan::forward(
                &Device::Reference,
                &p,
                &ScanInputs {
                    x: &x,
                    a: &a,
                    h0: None,
                    start: None,
                },
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
