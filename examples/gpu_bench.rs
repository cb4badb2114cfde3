//! Times every linrec op on every available backend (CUDA, and wgpu — Vulkan on the same GPU)
//! at the shapes the peer comparisons use, plus a device-to-device copy as the bandwidth
//! ceiling, and prints one JSON object per measurement (stdout). `scripts/gpu/run.sh` runs it
//! next to the Python peers on the GPU machine and turns both into tables and a plot.
//!
//! `cargo run --release --features cuda --example gpu_bench -- [--quick | --cpu-sizes] [--only copy,scan,ffm,selective,efla] [--reps N]`
//!
//! `--only` picks what to time (the ops, and `copy`, the bandwidth ceiling); by default all.
//! A size a backend cannot run (unsupported, past its limits, out of memory) is reported as
//! unsupported.
//!
//! Sizes: the peer shapes by default (a real GPU); `--cpu-sizes`, smaller ones that a software
//! adapter (lavapipe) runs in minutes; `--quick`, tiny ones that check the binary works.
//!
//! Each figure is the median over `--reps` runs (after two warm-ups) of the device time of the
//! op's kernels (CUDA events around each launch, wgpu timestamp queries around each pass;
//! uploads and downloads are not timed). `bytes` is what an ideal kernel must move; `flops` the
//! nominal arithmetic (EFLA).

use linrec::efla::{Efla, EflaBackwardInputs, EflaInputs};
use linrec::ffm::{Ffm, FfmBackwardInputs, FfmInputs};
use linrec::scan::{LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::selective::{SelectiveInputs, SelectiveScan};
use linrec::{efla, ffm, scan, selective, DType, Device, Error, Problem, Result, Tensor};

/// Problem sizes (see the module docs).
#[derive(Clone, Copy)]
enum Size {
    Quick,
    Cpu,
    Gpu,
}

struct Opts {
    size: Size,
    only: Vec<String>,
    reps: usize,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let mut o = Opts {
        size: Size::Gpu,
        only: vec![],
        reps: 20,
    };
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            "--quick" => o.size = Size::Quick,
            "--cpu-sizes" => o.size = Size::Cpu,
            "--only" => o.only = args[i + 1].split(',').map(str::to_string).collect(),
            "--reps" => o.reps = args[i + 1].parse().expect("--reps N"),
            _ => {}
        }
    }
    o
}

/// Deterministic non-zero data for argument `name` of `p`, in `dtype` for sequence arguments.
fn data<P: Problem>(p: &P, name: P::Arg, lo: f64, hi: f64) -> Tensor {
    let spec = p.spec(name);
    let n = spec.numel();
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (linrec::ops::ArgName::name(name).len() as u64) << 7;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();
    Tensor::from_f64(spec.shape.clone(), &v, p.dtype_of(spec.role)).expect("shape")
}

/// Median device time (ms) of `f` over `reps` runs after two warm-ups; `None` if unsupported
/// (or past the backend's limits or memory).
fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Option<f64>> {
    for _ in 0..2 {
        match f() {
            Err(
                e @ (Error::Unsupported { .. } | Error::Limit { .. } | Error::OutOfMemory { .. }),
            ) => {
                eprintln!("gpu_bench: {e}");
                return Ok(None);
            }
            r => r?,
        }
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| dev.gpu_time(&mut f).map(|(_, d)| d.as_secs_f64() * 1e3))
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(Some(t[t.len() / 2]))
}

fn emit(
    op: &str,
    config: &str,
    backend: &str,
    pass: &str,
    ms: Option<f64>,
    bytes: f64,
    flops: f64,
) {
    match ms {
        Some(ms) => println!(
            "{{\"impl\":\"linrec\",\"op\":\"{op}\",\"config\":\"{config}\",\"backend\":\"{backend}\",\"pass\":\"{pass}\",\"ms\":{ms:.5},\"bytes\":{bytes},\"flops\":{flops}}}"
        ),
        None => println!(
            "{{\"impl\":\"linrec\",\"op\":\"{op}\",\"config\":\"{config}\",\"backend\":\"{backend}\",\"pass\":\"{pass}\",\"unsupported\":true}}"
        ),
    }
}

fn run_scan(dev: &Device, bk: &str, o: &Opts) -> Result<()> {
    let ts: &[usize] = match o.size {
        Size::Quick => &[256],
        Size::Cpu => &[4096],
        Size::Gpu => &[4096, 8192, 16384, 32768, 65536],
    };
    let (b, d) = match o.size {
        Size::Quick => (2, 64),
        Size::Cpu => (8, 256),
        Size::Gpu => (8, 1536),
    };
    for &t in ts {
        let p = LinearScan::new(b, t, d);
        let (x, a, g) = (
            data(&p, scan::Arg::X, -1.0, 1.0),
            data(&p, scan::Arg::A, 0.5, 0.999),
            data(&p, scan::Arg::GradH, -1.0, 1.0),
        );
        let inp = ScanInputs {
            x: &x,
            a: &a,
            h0: None,
            start: None,
        };
        let out = scan::forward(dev, &p, &inp)?;
        let bin = ScanBackwardInputs {
            a: &a,
            h: &out.h,
            h0: None,
            start: None,
            grad_h: &g,
            grad_final: None,
        };
        let e = (b * t * d * 4) as f64;
        let cfg = format!("B={b} T={t} D={d} f32");
        emit(
            "linear_scan",
            &cfg,
            bk,
            "fwd",
            time(dev, o.reps, || scan::forward(dev, &p, &inp).map(|_| ()))?,
            3.0 * e,
            0.0,
        );
        emit(
            "linear_scan",
            &cfg,
            bk,
            "bwd",
            time(dev, o.reps, || scan::backward(dev, &p, &bin).map(|_| ()))?,
            5.0 * e,
            0.0,
        );
    }
    Ok(())
}

fn run_ffm(dev: &Device, bk: &str, o: &Opts) -> Result<()> {
    let shapes: &[(usize, usize, usize, usize)] = match o.size {
        Size::Quick => &[(2, 128, 8, 4)],
        Size::Cpu => &[(8, 1024, 32, 4)],
        Size::Gpu => &[(8, 1024, 32, 4), (32, 4096, 128, 8)],
    };
    for &(b, t, m, c) in shapes {
        let p = Ffm::new(b, t, m, c);
        let (x, a, bb, g) = (
            data(&p, ffm::Arg::X, -1.0, 1.0),
            data(&p, ffm::Arg::A, -0.1, -0.001),
            data(&p, ffm::Arg::B, -1.0, 1.0),
            data(&p, ffm::Arg::GradS, -1.0, 1.0),
        );
        let inp = FfmInputs {
            x: &x,
            a: &a,
            b: &bb,
            s0: None,
            start: None,
        };
        let bin = FfmBackwardInputs {
            x: &x,
            a: &a,
            b: &bb,
            s0: None,
            start: None,
            grad_s: &g,
            grad_final: None,
        };
        let (sx, ss) = ((b * t * m * 4) as f64, (b * t * m * c * 8) as f64);
        let cfg = format!("B={b} T={t} M={m} C={c} f32");
        emit(
            "ffm",
            &cfg,
            bk,
            "fwd",
            time(dev, o.reps, || ffm::forward(dev, &p, &inp).map(|_| ()))?,
            sx + ss,
            0.0,
        );
        emit(
            "ffm",
            &cfg,
            bk,
            "bwd",
            time(dev, o.reps, || ffm::backward(dev, &p, &bin).map(|_| ()))?,
            2.0 * sx + ss,
            0.0,
        );
    }
    Ok(())
}

fn run_selective(dev: &Device, bk: &str, o: &Opts) -> Result<()> {
    let (b, t, d, n) = match o.size {
        Size::Quick => (1, 128, 64, 16),
        Size::Cpu => (2, 1024, 256, 16),
        Size::Gpu => (8, 2048, 2048, 16),
    };
    for dt in [DType::F32, DType::BF16] {
        let p = SelectiveScan::new(b, t, d, n).softplus().with_dtype(dt);
        let a = |nm, lo, hi| data(&p, nm, lo, hi);
        let (u, delta, aa, bm, cm, dsk, z, db) = (
            a(selective::Arg::U, -1.0, 1.0),
            a(selective::Arg::Delta, -3.0, 0.0),
            a(selective::Arg::A, -2.0, -0.1),
            a(selective::Arg::Bm, -1.0, 1.0),
            a(selective::Arg::Cm, -1.0, 1.0),
            a(selective::Arg::Dskip, -1.0, 1.0),
            a(selective::Arg::Z, -1.0, 1.0),
            a(selective::Arg::DeltaBias, -1.0, 0.0),
        );
        let g = a(selective::Arg::GradOut, -1.0, 1.0);
        let inp = SelectiveInputs {
            u: &u,
            delta: &delta,
            a: &aa,
            bm: &bm,
            cm: &cm,
            dskip: Some(&dsk),
            z: Some(&z),
            delta_bias: Some(&db),
            h0: None,
            start: None,
        };
        let bin = inp.clone().with_grads(&g, None);
        let sz = dt.size() as f64;
        let (seq, bc) = ((b * t * d) as f64 * sz, (b * t * n) as f64 * sz);
        let cfg = format!("B={b} T={t} D={d} N={n} {dt}");
        // fwd: u, delta, z in, out; B, C in. bwd: those plus dout in, du, ddelta, dz, dB, dC out
        emit(
            "selective_scan",
            &cfg,
            bk,
            "fwd",
            time(dev, o.reps, || {
                selective::forward(dev, &p, &inp).map(|_| ())
            })?,
            4.0 * seq + 2.0 * bc,
            0.0,
        );
        emit(
            "selective_scan",
            &cfg,
            bk,
            "bwd",
            time(dev, o.reps, || {
                selective::backward(dev, &p, &bin).map(|_| ())
            })?,
            7.0 * seq + 4.0 * bc,
            0.0,
        );
    }
    Ok(())
}

fn run_efla(dev: &Device, bk: &str, o: &Opts) -> Result<()> {
    let (b, h, k, v) = match o.size {
        Size::Quick => (1, 2, 32, 32),
        Size::Cpu => (1, 4, 64, 64),
        Size::Gpu => (8, 16, 128, 128),
    };
    let ts: &[usize] = match o.size {
        Size::Quick => &[128],
        Size::Cpu => &[1024],
        Size::Gpu => &[2048, 4096, 8192],
    };
    for &t in ts {
        for (rule, name) in [(efla::Rule::Delta, "delta"), (efla::Rule::Efla, "efla")] {
            let p = Efla::new(b, t, h, k, v)
                .with_rule(rule)
                .with_dtype(DType::BF16);
            let (q, kk, vv, beta, g) = (
                data(&p, efla::Arg::Q, -1.0, 1.0),
                data(&p, efla::Arg::K, -0.1, 0.1),
                data(&p, efla::Arg::V, -1.0, 1.0),
                data(&p, efla::Arg::Beta, 0.0, 1.0),
                data(&p, efla::Arg::GradO, -1.0, 1.0),
            );
            let inp = EflaInputs {
                q: &q,
                k: &kk,
                v: &vv,
                beta: &beta,
                s0: None,
                start: None,
            };
            let bin = EflaBackwardInputs {
                q: &q,
                k: &kk,
                v: &vv,
                beta: &beta,
                s0: None,
                start: None,
                grad_o: &g,
                grad_final: None,
            };
            let tok = (b * t * h) as f64;
            let cfg = format!("{name} B={b} H={h} K={k} V={v} T={t} bf16");
            // nominal: 6 K V flops per head-token forward, 18 backward (the recurrence's work)
            emit(
                "efla",
                &cfg,
                bk,
                "fwd",
                time(dev, o.reps, || efla::forward(dev, &p, &inp).map(|_| ()))?,
                0.0,
                6.0 * tok * (k * v) as f64,
            );
            emit(
                "efla",
                &cfg,
                bk,
                "bwd",
                time(dev, o.reps, || efla::backward(dev, &p, &bin).map(|_| ()))?,
                0.0,
                18.0 * tok * (k * v) as f64,
            );
        }
    }
    // decode: one step on a carried state
    let (bd, hd) = match o.size {
        Size::Quick => (4, 2),
        Size::Cpu => (64, 4),
        Size::Gpu => (256, 16),
    };
    let p = Efla::new(bd, 1, hd, k, v)
        .delta()
        .recurrent()
        .with_dtype(DType::BF16);
    let (q, kk, vv, beta, s0) = (
        data(&p, efla::Arg::Q, -1.0, 1.0),
        data(&p, efla::Arg::K, -0.1, 0.1),
        data(&p, efla::Arg::V, -1.0, 1.0),
        data(&p, efla::Arg::Beta, 0.0, 1.0),
        data(&p, efla::Arg::S0, -1.0, 1.0),
    );
    let inp = EflaInputs {
        q: &q,
        k: &kk,
        v: &vv,
        beta: &beta,
        s0: Some(&s0),
        start: None,
    };
    let cfg = format!("decode delta B={bd} H={hd} K={k} V={v} T=1 bf16");
    let state = (bd * hd * k * v * 4) as f64;
    emit(
        "efla",
        &cfg,
        bk,
        "fwd",
        time(dev, o.reps, || efla::forward(dev, &p, &inp).map(|_| ()))?,
        2.0 * state,
        0.0,
    );
    Ok(())
}

fn main() -> Result<()> {
    let o = opts();
    let mut devices = Vec::new();
    #[cfg(feature = "cuda")]
    match Device::cuda(0) {
        Ok(d) => devices.push(("cuda", d)),
        Err(e) => eprintln!("gpu_bench: no CUDA: {e}"),
    }
    match Device::wgpu() {
        Ok(d) => devices.push(("wgpu", d)),
        Err(e) => eprintln!("gpu_bench: no wgpu: {e}"),
    }
    let want = |op: &str| o.only.is_empty() || o.only.iter().any(|x| x == op);
    for (bk, dev) in &devices {
        eprintln!("gpu_bench: {bk} = {}", dev.describe());
        // the bandwidth ceiling; sizes past the largest binding (lavapipe: 128 MiB) are capped,
        // and a capped size is timed once
        let mut last = 0;
        for mib in [64usize, 256, 1024].into_iter().filter(|_| want("copy")) {
            let (bytes, t) = match dev.time_copy(mib << 20) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gpu_bench: {bk} copy skipped: {e}");
                    break;
                }
            };
            if bytes == last {
                break;
            }
            last = bytes;
            emit(
                "copy",
                &format!("{} MiB", bytes >> 20),
                bk,
                "fwd",
                Some(t.as_secs_f64() * 1e3),
                2.0 * bytes as f64,
                0.0,
            );
        }
        if want("scan") {
            run_scan(dev, bk, &o)?;
        }
        if want("ffm") {
            run_ffm(dev, bk, &o)?;
        }
        if want("selective") {
            run_selective(dev, bk, &o)?;
        }
        if want("efla") {
            run_efla(dev, bk, &o)?;
        }
    }
    Ok(())
}
