//! Device timings of the CUDA EFLA / delta-rule kernels as JSON lines, for
//! `scripts/gpu/bench_efla.py`, which runs this binary next to flash-linear-attention on the GPU
//! machine and writes the comparison table and plot.
//!
//! ```text
//! cargo build --release --features cuda --example bench_efla
//! target/release/examples/bench_efla [--small] [--reps N] [--t 2048,4096,8192]
//! ```
//!
//! Cases: both rules, chunked (64), bf16, `B = 8, H = 16, K = V = 128` at each `T`, forward and
//! forward + backward; and the decode step (recurrent, `T = 1` on a carried state,
//! `B = 256, H = 16, K = V = 128`, bf16). Each case is warmed up, then timed `reps` times with
//! CUDA events around the whole call (allocations and every launch included: `ms`, median)
//! and as the sum of its kernels' own event times (`kernel_ms`, median). `--small` runs tiny
//! shapes (for the CPU emulator). `flop` is the nominal count of the recurrent formulation
//! (`6 K V` per head and token forward, `24 K V` forward + backward), the same for every peer.

use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs, Rule};
use linrec::{CuTensor, CudaBackend, DType, Problem, Result, Tensor};
use std::time::Duration;

/// Deterministic inputs: unit-norm keys (as delta-rule models use), beta in (0, 1).
fn data(p: &Efla, name: efla::Arg) -> Result<Tensor> {
    let spec = p.spec(name);
    let n = spec.numel();
    let kd = p.key_dim;
    let v: Vec<f64> = (0..n)
        .map(|i| {
            let s = ((i as f64) * 0.618_034).sin();
            match name {
                efla::Arg::K => s * (3.0 / kd as f64).sqrt() * 0.8,
                efla::Arg::Beta => 0.5 + 0.4 * s,
                efla::Arg::S0 => 0.1 * s,
                _ => s,
            }
        })
        .collect();
    Tensor::from_f64(spec.shape, &v, p.dtype_of(spec.role))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median wall time on the device (events around `f`) and median summed kernel time, in ms.
fn time(be: &CudaBackend, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
    for _ in 0..3 {
        f()?;
    }
    be.synchronize()?;
    let err = |e: cudarc::driver::DriverError| linrec::Error::Device {
        backend: "cuda",
        what: format!("{e:?}"),
    };
    let mut wall = Vec::new();
    let mut kern = Vec::new();
    for _ in 0..reps {
        let a = be
            .stream
            .record_event(Some(CU_EVENT_DEFAULT))
            .map_err(err)?;
        f()?;
        let b = be
            .stream
            .record_event(Some(CU_EVENT_DEFAULT))
            .map_err(err)?;
        b.synchronize().map_err(err)?;
        wall.push(a.elapsed_ms(&b).map_err(err)? as f64);
        let ((), d): ((), Duration) = be.gpu_time(&mut f)?;
        kern.push(d.as_secs_f64() * 1e3);
    }
    Ok((median(wall), median(kern)))
}

struct Up {
    t: Vec<CuTensor>,
}

fn upload(be: &CudaBackend, p: &Efla) -> Result<Up> {
    let mut t = Vec::new();
    for n in [
        efla::Arg::Q,
        efla::Arg::K,
        efla::Arg::V,
        efla::Arg::Beta,
        efla::Arg::S0,
        efla::Arg::GradO,
    ] {
        t.push(be.upload(&data(p, n)?)?);
    }
    Ok(Up { t })
}

fn emit(p: &Efla, mode: &str, (ms, kernel_ms): (f64, f64), flop: f64) {
    let rule = match p.rule {
        Rule::Efla => "efla",
        Rule::Delta => "delta",
    };
    let alg = match p.algorithm {
        efla::Algorithm::Recurrent => "recurrent".to_string(),
        efla::Algorithm::Chunked { chunk } => format!("chunked{chunk}"),
    };
    println!(
        "{{\"peer\": \"linrec\", \"rule\": \"{rule}\", \"mode\": \"{mode}\", \"algorithm\": \"{alg}\", \
         \"B\": {}, \"T\": {}, \"H\": {}, \"K\": {}, \"V\": {}, \"dtype\": \"{}\", \"ms\": {ms:.5}, \
         \"kernel_ms\": {kernel_ms:.5}, \"flop\": {flop:.6e}}}",
        p.batch,
        p.len,
        p.heads,
        p.key_dim,
        p.value_dim,
        p.dtype.name()
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let reps: usize = arg("--reps").and_then(|s| s.parse().ok()).unwrap_or(20);
    let ts: Vec<usize> = match arg("--t") {
        Some(s) => s.split(',').filter_map(|x| x.parse().ok()).collect(),
        None if small => vec![100],
        None => vec![2048, 4096, 8192],
    };
    let be = CudaBackend::new(0)?;
    eprintln!("bench_efla: {}", be.describe());
    let (b, h, kv) = if small { (1, 2, 32) } else { (8, 16, 128) };
    for rule in [Rule::Delta, Rule::Efla] {
        for &t in &ts {
            let p = Efla::new(b, t, h, kv, kv)
                .with_rule(rule)
                .chunked(64)
                .with_dtype(DType::BF16);
            let up = upload(&be, &p)?;
            let r = |i: usize| up.t[i].as_ref();
            let nominal = (p.batch * p.len * p.heads * p.key_dim * p.value_dim) as f64;
            let fwd = || {
                let inp = EflaInputs {
                    q: r(0),
                    k: r(1),
                    v: r(2),
                    beta: r(3),
                    s0: None,
                    start: None,
                };
                efla::cuda::forward(&be, &p, &inp).map(|_| ())
            };
            let bwd = || {
                let inp = EflaBackwardInputs {
                    q: r(0),
                    k: r(1),
                    v: r(2),
                    beta: r(3),
                    s0: None,
                    start: None,
                    grad_o: r(5),
                    grad_final: None,
                };
                efla::cuda::backward(&be, &p, &inp).map(|_| ())
            };
            emit(&p, "fwd", time(&be, reps, fwd)?, 6.0 * nominal);
            emit(
                &p,
                "fwdbwd",
                time(&be, reps, || {
                    fwd()?;
                    bwd()
                })?,
                24.0 * nominal,
            );
        }
    }
    // decode: one step on a carried state
    let (db, dh) = if small { (4, 2) } else { (256, 16) };
    for rule in [Rule::Delta, Rule::Efla] {
        let p = Efla::new(db, 1, dh, kv, kv)
            .with_rule(rule)
            .recurrent()
            .with_dtype(DType::BF16);
        let up = upload(&be, &p)?;
        let r = |i: usize| up.t[i].as_ref();
        let nominal = (p.batch * p.heads * p.key_dim * p.value_dim) as f64;
        let step = || {
            let inp = EflaInputs {
                q: r(0),
                k: r(1),
                v: r(2),
                beta: r(3),
                s0: Some(r(4)),
                start: None,
            };
            efla::cuda::forward(&be, &p, &inp).map(|_| ())
        };
        emit(&p, "decode", time(&be, reps, step)?, 6.0 * nominal);
    }
    Ok(())
}
