//! Criterion benchmarks of EFLA / the delta rule.

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use linrec::efla::{self, Efla, EflaInputs};
use linrec::{DType, Device, Problem, Tensor};

fn data(p: &Efla, name: &str) -> Tensor {
    let spec = p.spec(name);
    let v: Vec<f64> = (0..spec.numel())
        .map(|i| 0.3 * ((i as f64) * 0.618).sin())
        .collect();
    Tensor::from_f64(spec.shape, &v, DType::F32).unwrap()
}

fn bench(c: &mut Criterion) {
    let _ = common::is_slow;
    let p = Efla::new(1, 256, 2, 32, 32);
    let (q, k, v, b) = (
        data(&p, "q"),
        data(&p, "k"),
        data(&p, "v"),
        data(&p, "beta"),
    );
    let mut g = c.benchmark_group("efla/cpu-reference");
    g.sample_size(10);
    g.bench_function("forward/chunked/1x256x2x32x32", |bch| {
        bch.iter(|| {
            let inp = EflaInputs {
                q: &q,
                k: &k,
                v: &v,
                beta: &b,
                s0: None,
                start: None,
            };
            efla::forward(&Device::Cpu, &p, &inp).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
