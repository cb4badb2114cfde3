//! Criterion benchmarks of the selective scan (forward, backward) on every available backend,
//! timed on the device (timestamp queries / CUDA events), inputs resident on the device.
//! Mamba-like options: input-dependent Bm/Cm with one group, softplus, delta_bias, Dskip and a
//! gate z. On a device with subgroups the wgpu kernels are also timed without them
//! (`wgpu-no-subgroups`). `cargo bench --bench selective`; add `--features cuda` on an NVIDIA
//! machine.
//!
//! Throughput counts the bytes a kernel must move at least: the forward reads u, delta, z, Bm,
//! Cm and writes out; the backward reads those and dout and writes du, ddelta, dz, dBm, dCm
//! (its recomputation re-reads u, delta and Bm, which is not counted; nor are the CUDA
//! backward's checkpoint pass, pre-gate scratch and dBm / dCm partials).
//!
//! The CUDA arm times Mamba's benchmark shape (B = 8, T = 2048, D = 2048, N = 16, one group)
//! in f32 and bf16, the number to compare with Mamba's own `selective_scan_cuda` on the same
//! GPU; linrec's CUDA emulator counts as a slow device (small shapes).

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use linrec::selective::{self, SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
use linrec::{DType, Device, Problem, Tensor};

fn data(p: &SelectiveScan, name: selective::Arg) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    // deterministic, non-zero; A negative, delta around softplus^-1 of 0.05
    let v: Vec<f64> = match name {
        selective::Arg::A => (0..n).map(|i| -(1.0 + (i % p.state) as f64)).collect(),
        selective::Arg::Delta => (0..n)
            .map(|i| -3.0 + 0.5 * ((i as f64) * 0.618).sin())
            .collect(),
        _ => (0..n).map(|i| 0.5 * ((i as f64) * 0.618).sin()).collect(),
    };
    Tensor::from_f64(spec.shape, &v, p.dtype_of(spec.role)).unwrap()
}

/// Bytes the forward and the backward move at least.
fn bytes(p: &SelectiveScan) -> (u64, u64) {
    let es = p.dtype.size() as u64;
    let seq = (p.batch * p.len * p.dim) as u64 * es;
    let bc = p.spec(selective::Arg::Bm).numel() as u64
        * p.dtype_of(p.spec(selective::Arg::Bm).role).size() as u64;
    let state = (p.batch * p.dim * p.state * 4) as u64;
    (4 * seq + 2 * bc + state, 7 * seq + 4 * bc + state)
}

struct Inputs {
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    bm: Tensor,
    cm: Tensor,
    dskip: Tensor,
    z: Tensor,
    bias: Tensor,
    g: Tensor,
}

fn inputs(p: &SelectiveScan) -> Inputs {
    Inputs {
        u: data(p, selective::Arg::U),
        delta: data(p, selective::Arg::Delta),
        a: data(p, selective::Arg::A),
        bm: data(p, selective::Arg::Bm),
        cm: data(p, selective::Arg::Cm),
        dskip: data(p, selective::Arg::Dskip),
        z: data(p, selective::Arg::Z),
        bias: data(p, selective::Arg::DeltaBias),
        g: data(p, selective::Arg::GradOut),
    }
}

fn bench(c: &mut Criterion) {
    let mut devices = common::devices();
    if let Some((_, Device::Wgpu(ctx))) = devices.iter().find(|(n, _)| n == "wgpu") {
        if ctx.has_subgroups() {
            let opts = linrec::WgpuOptions {
                disable_subgroups: true,
                ..Default::default()
            };
            match linrec::WgpuContext::with_options(&opts) {
                Ok(c) => devices.push(("wgpu-no-subgroups".into(), Device::Wgpu(c))),
                Err(e) => eprintln!("bench: wgpu-no-subgroups skipped: {e}"),
            }
        }
    }
    for (bk, dev) in devices {
        let problems: Vec<SelectiveScan> = if common::is_slow(&dev) {
            // lavapipe: N = 8 fits its subgroups (size 8), N = 16 does not
            vec![
                SelectiveScan::new(2, 512, 64, 8).softplus(),
                SelectiveScan::new(2, 512, 64, 16).softplus(),
            ]
        } else {
            let p = SelectiveScan::new(8, 2048, 2048, 16).softplus();
            vec![p, p.with_dtype(DType::BF16)]
        };
        let mut g = c.benchmark_group(format!("selective_scan/{bk}"));
        g.sample_size(10);
        for p in problems {
            let id = format!("{}x{}x{}x{}/{}", p.batch, p.len, p.dim, p.state, p.dtype);
            let (fb, bb) = bytes(&p);
            let t = inputs(&p);
            match &dev {
                Device::Wgpu(ctx) => {
                    if p.dtype == DType::F16 && !ctx.has_f16() {
                        continue;
                    }
                    let up = |t: &Tensor| ctx.upload(t).unwrap();
                    let (u, delta, a, bm, cm) =
                        (up(&t.u), up(&t.delta), up(&t.a), up(&t.bm), up(&t.cm));
                    let (dskip, z, bias, gr) = (up(&t.dskip), up(&t.z), up(&t.bias), up(&t.g));
                    let inp = SelectiveInputs {
                        u: u.as_ref(),
                        delta: delta.as_ref(),
                        a: a.as_ref(),
                        bm: bm.as_ref(),
                        cm: cm.as_ref(),
                        dskip: Some(dskip.as_ref()),
                        z: Some(z.as_ref()),
                        delta_bias: Some(bias.as_ref()),
                        h0: None,
                        start: None,
                    };
                    common::bench_gpu(&mut g, format!("forward/{id}"), &dev, fb, || {
                        selective::wgpu::forward(ctx, &p, &inp).map(|_| ())
                    });
                    let bin: SelectiveBackwardInputs<_> = inp.clone().with_grads(gr.as_ref(), None);
                    common::bench_gpu(&mut g, format!("backward/{id}"), &dev, bb, || {
                        selective::wgpu::backward(ctx, &p, &bin).map(|_| ())
                    });
                }
                #[cfg(feature = "cuda")]
                Device::Cuda(be) => {
                    let up = |t: &Tensor| be.upload(t).unwrap();
                    let (u, delta, a, bm, cm) =
                        (up(&t.u), up(&t.delta), up(&t.a), up(&t.bm), up(&t.cm));
                    let (dskip, z, bias, gr) = (up(&t.dskip), up(&t.z), up(&t.bias), up(&t.g));
                    let mk = || SelectiveInputs {
                        u: u.as_ref(),
                        delta: delta.as_ref(),
                        a: a.as_ref(),
                        bm: bm.as_ref(),
                        cm: cm.as_ref(),
                        dskip: Some(dskip.as_ref()),
                        z: Some(z.as_ref()),
                        delta_bias: Some(bias.as_ref()),
                        h0: None,
                        start: None,
                    };
                    let inp = mk();
                    common::bench_gpu(&mut g, format!("forward/{id}"), &dev, fb, || {
                        selective::cuda::forward(be, &p, &inp).map(|_| ())
                    });
                    let bin = mk().with_grads(gr.as_ref(), None);
                    common::bench_gpu(&mut g, format!("backward/{id}"), &dev, bb, || {
                        selective::cuda::backward(be, &p, &bin).map(|_| ())
                    });
                }
                Device::Cpu | Device::Reference => {}
            }
        }
        g.finish();
    }
    // the f64 reference, for scale
    let p = SelectiveScan::new(1, 256, 64, 16).softplus();
    let t = inputs(&p);
    let inp = SelectiveInputs {
        u: &t.u,
        delta: &t.delta,
        a: &t.a,
        bm: &t.bm,
        cm: &t.cm,
        dskip: Some(&t.dskip),
        z: Some(&t.z),
        delta_bias: Some(&t.bias),
        h0: None,
        start: None,
    };
    let mut g = c.benchmark_group("selective_scan/cpu-reference");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Bytes(bytes(&p).0));
    g.bench_function("forward/1x256x64x16/f32", |bch| {
        bch.iter(|| selective::forward(&Device::Reference, &p, &inp).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
