//! What the candle ops add to linrec's native CPU kernels, measured in one run:
//! - `direct`: `forward` then `backward` on `Device::Cpu` with linrec tensors (what the candle
//!   op runs inside);
//! - `candle`: the candle op on CPU tensors, a loss `sum(out * g)` and `loss.backward()`;
//! - `loss-only`: the same loss and backward over a plain variable of the op's output shape
//!   (candle's own share, which any op pays).
//!
//! Each of the last two with the loss over the op's output alone (`out`, what a training loss
//! usually is: the final state is carried to the next call, detached) and over the output and
//! the final state (`out+final`). The op's overhead is `(candle - loss-only) / direct`. `cargo bench --features candle
//! --bench candle_op`.

use candle_core::{Device as CDevice, Tensor as CTensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs};
use linrec::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::{Device, Problem, Tensor};
use std::hint::black_box;

/// Deterministic, non-zero values in `[lo, hi]` for an argument of `p`, as a linrec tensor and
/// a candle variable (f32, CPU).
fn data<P: Problem>(p: &P, arg: P::Arg, lo: f64, hi: f64) -> (Tensor, Var) {
    let shape = p.spec(arg).shape;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (lo + (hi - lo) * (0.5 + 0.5 * ((i as f64) * 0.618_034).sin())) as f32)
        .collect();
    let c = Var::from_tensor(
        &CTensor::from_vec(v.clone(), shape.as_slice(), &CDevice::Cpu).expect("candle"),
    )
    .expect("var");
    (Tensor::new(shape, v).expect("shape"), c)
}

/// `sum(out * g)`, plus `sum(fin * gf)` when `fin` is given, and its backward.
fn loss_backward(out: &CTensor, g: &CTensor, fin: Option<&CTensor>, gf: &CTensor) {
    let mut loss = (out * g).expect("mul").sum_all().expect("sum");
    if let Some(fin) = fin {
        loss = (loss + (fin * gf).expect("mul").sum_all().expect("sum")).expect("add");
    }
    black_box(loss.backward().expect("backward"));
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The `candle` and `loss-only` rows of a group, for both losses: `op` runs the candle op,
/// `vars` are plain variables of its results' shapes, `grads` the loss weights.
fn candle_rows(
    g: &mut Group<'_>,
    op: &dyn Fn() -> (CTensor, CTensor),
    vars: (&CTensor, &CTensor),
    grads: (&CTensor, &CTensor),
) {
    for with_final in [false, true] {
        let loss = if with_final { "out+final" } else { "out" };
        g.bench_function(format!("candle/{loss}"), |it| {
            it.iter(|| {
                let (o, f) = op();
                loss_backward(&o, grads.0, with_final.then_some(&f), grads.1);
            })
        });
        g.bench_function(format!("loss-only/{loss}"), |it| {
            it.iter(|| loss_backward(vars.0, grads.0, with_final.then_some(vars.1), grads.1))
        });
    }
}

fn bench(c: &mut Criterion) {
    // ---------------------------------------------------------------- FFM
    {
        let p = Ffm::new(8, 1024, 32, 4);
        let (x, xc) = data(&p, ffm::Arg::X, -1.0, 1.0);
        let (a, ac) = data(&p, ffm::Arg::A, -0.5, -0.01);
        let (b, bc) = data(&p, ffm::Arg::B, -1.0, 1.0);
        let (s0, s0c) = data(&p, ffm::Arg::S0, -1.0, 1.0);
        let (gs, gsc) = data(&p, ffm::Arg::GradS, -1.0, 1.0);
        let (gf, gfc) = data(&p, ffm::Arg::GradFinal, -1.0, 1.0);
        let mut g = c.benchmark_group("candle-overhead/ffm/8x1024x32x4");
        g.sample_size(10);
        g.bench_function("direct", |it| {
            it.iter(|| {
                let o = ffm::forward(
                    &Device::Cpu,
                    &p,
                    &FfmInputs {
                        x: &x,
                        a: &a,
                        b: &b,
                        s0: Some(&s0),
                        start: None,
                    },
                )
                .expect("fwd");
                black_box(&o);
                let bw = FfmBackwardInputs {
                    x: &x,
                    a: &a,
                    b: &b,
                    s0: Some(&s0),
                    start: None,
                    grad_s: &gs,
                    grad_final: Some(&gf),
                };
                black_box(ffm::backward(&Device::Cpu, &p, &bw).expect("bwd"));
            })
        });
        let (gsc, gfc) = (gsc.as_tensor().detach(), gfc.as_tensor().detach());
        let (sv, sfv) = (
            data(&p, ffm::Arg::S, -1.0, 1.0).1,
            data(&p, ffm::Arg::SFinal, -1.0, 1.0).1,
        );
        let op = || linrec::candle::ffm(&p, &xc, &ac, &bc, Some(&s0c), None).expect("candle ffm");
        candle_rows(&mut g, &op, (&sv, &sfv), (&gsc, &gfc));
        g.finish();
    }
    // ---------------------------------------------------------------- linear scan
    {
        let p = LinearScan::new(8, 2048, 256);
        let (x, xc) = data(&p, scan::Arg::X, -1.0, 1.0);
        let (a, ac) = data(&p, scan::Arg::A, 0.5, 0.999);
        let (h0, h0c) = data(&p, scan::Arg::H0, -1.0, 1.0);
        let (gh, ghc) = data(&p, scan::Arg::GradH, -1.0, 1.0);
        let (gf, gfc) = data(&p, scan::Arg::GradFinal, -1.0, 1.0);
        let mut g = c.benchmark_group("candle-overhead/scan/real/8x2048x256");
        g.sample_size(10);
        g.bench_function("direct", |it| {
            it.iter(|| {
                let o = scan::forward(
                    &Device::Cpu,
                    &p,
                    &ScanInputs {
                        x: &x,
                        a: &a,
                        h0: Some(&h0),
                        start: None,
                    },
                )
                .expect("fwd");
                let bw = ScanBackwardInputs {
                    a: &a,
                    h: &o.h,
                    h0: Some(&h0),
                    start: None,
                    grad_h: &gh,
                    grad_final: Some(&gf),
                };
                black_box(scan::backward(&Device::Cpu, &p, &bw).expect("bwd"));
            })
        });
        let (ghc, gfc) = (ghc.as_tensor().detach(), gfc.as_tensor().detach());
        let (hv, hfv) = (
            data(&p, scan::Arg::H, -1.0, 1.0).1,
            data(&p, scan::Arg::HFinal, -1.0, 1.0).1,
        );
        let op =
            || linrec::candle::linear_scan(&p, &xc, &ac, Some(&h0c), None).expect("candle scan");
        candle_rows(&mut g, &op, (&hv, &hfv), (&ghc, &gfc));
        g.finish();
    }
    // ---------------------------------------------------------------- EFLA
    {
        let p = Efla::new(2, 512, 4, 64, 64);
        let kd = 0.7 / 8.0;
        let (q, qc) = data(&p, efla::Arg::Q, -1.0, 1.0);
        let (k, kc) = data(&p, efla::Arg::K, -kd, kd);
        let (v, vc) = data(&p, efla::Arg::V, -1.0, 1.0);
        let (beta, bc) = data(&p, efla::Arg::Beta, 0.1, 0.9);
        let (s0, s0c) = data(&p, efla::Arg::S0, -0.1, 0.1);
        let (go, goc) = data(&p, efla::Arg::GradO, -1.0, 1.0);
        let (gf, gfc) = data(&p, efla::Arg::GradFinal, -1.0, 1.0);
        let mut g = c.benchmark_group("candle-overhead/efla/2x512x4x64x64");
        g.sample_size(10);
        g.bench_function("direct", |it| {
            it.iter(|| {
                let inp = EflaInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    beta: &beta,
                    s0: Some(&s0),
                    start: None,
                };
                black_box(efla::forward(&Device::Cpu, &p, &inp).expect("fwd"));
                let bw = EflaBackwardInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    beta: &beta,
                    s0: Some(&s0),
                    start: None,
                    grad_o: &go,
                    grad_final: Some(&gf),
                };
                black_box(efla::backward(&Device::Cpu, &p, &bw).expect("bwd"));
            })
        });
        let (goc, gfc) = (goc.as_tensor().detach(), gfc.as_tensor().detach());
        let (ov, sfv) = (
            data(&p, efla::Arg::O, -1.0, 1.0).1,
            data(&p, efla::Arg::SFinal, -1.0, 1.0).1,
        );
        let op =
            || linrec::candle::efla(&p, &qc, &kc, &vc, &bc, Some(&s0c), None).expect("candle efla");
        candle_rows(&mut g, &op, (&ov, &sfv), (&goc, &gfc));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
