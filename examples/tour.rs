//! A tour of every linrec operation on the best available device: each op's forward and
//! backward run on CUDA if there is a GPU (and the op has a CUDA kernel), else on wgpu (a real
//! GPU, or lavapipe on the CPU), else on the CPU reference; the results are checked against
//! the f64 reference on random inputs, and the device time and throughput are printed.
//!
//! `cargo run --release --example tour` (add `--features cuda` on an NVIDIA machine).

use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs};
use linrec::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::selective::{self, SelectiveInputs, SelectiveScan};
use linrec::{DType, Device, Error, Problem, Result, Tensor};
use std::time::Duration;

/// SplitMix64 random numbers: the tour has no dependencies beyond linrec.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// `n` values in [lo, hi), rounded to f32 so the f64 reference sees what the kernels see.
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi) as f32 as f64).collect()
    }
    fn flags(&mut self, n: usize, p: f64) -> Vec<u8> {
        (0..n)
            .map(|_| u8::from(self.uniform(0.0, 1.0) < p))
            .collect()
    }
}

/// The error metric of docs/conventions.md.
fn rel(out: &Tensor, reference: &[f64]) -> f64 {
    let o = out.to_f64_vec();
    let num: f64 = o
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// What one op reports on one device.
struct Report {
    fwd_err: f64,
    bwd_err: f64,
    fwd: Duration,
    bwd: Duration,
    fwd_bytes: u64,
    bwd_bytes: u64,
}

/// One tour stop: a name, the problem size, and a runner for a device.
struct Stop {
    name: &'static str,
    shape: String,
    run: fn(&Device, &mut Rng) -> Result<Report>,
}

fn timed<R>(dev: &Device, mut f: impl FnMut() -> Result<R>) -> Result<(R, Duration)> {
    f()?; // warm-up: pipelines and modules are built on first use
    dev.gpu_time(f)
}

fn scan_stop(dev: &Device, rng: &mut Rng, complex: bool) -> Result<Report> {
    let mut p = LinearScan::new(8, 2048, 256);
    p.complex = complex;
    let n = |name| p.spec(name).numel();
    let t = |name, v: &[f64]| Tensor::from_f64(p.spec(name).shape, v, DType::F32);
    let x = rng.vec(n(scan::Arg::X), -1.0, 1.0);
    let a = rng.vec(n(scan::Arg::A), -0.99, 0.99);
    let h0 = rng.vec(n(scan::Arg::H0), -1.0, 1.0);
    let start = rng.flags(n(scan::Arg::Start), 0.01);
    let g = rng.vec(n(scan::Arg::X), -1.0, 1.0);
    let (xt, at, h0t, gt) = (
        t(scan::Arg::X, &x)?,
        t(scan::Arg::A, &a)?,
        t(scan::Arg::H0, &h0)?,
        t(scan::Arg::GradH, &g)?,
    );
    let st = Tensor::new(p.spec(scan::Arg::Start).shape, start.clone())?;
    let inp = ScanInputs {
        x: &xt,
        a: &at,
        h0: Some(&h0t),
        start: Some(&st),
    };
    let (out, fwd) = timed(dev, || scan::forward(dev, &p, &inp))?;
    let rin = ScanInputs {
        x: &x[..],
        a: &a[..],
        h0: Some(&h0[..]),
        start: Some(&start[..]),
    };
    let r = scan::reference::forward(&p, &rin)?;
    let bin = ScanBackwardInputs {
        a: &at,
        h: &out.h,
        h0: Some(&h0t),
        start: Some(&st),
        grad_h: &gt,
        grad_final: None,
    };
    let (gr, bwd) = timed(dev, || scan::backward(dev, &p, &bin))?;
    let rb = ScanBackwardInputs {
        a: &a[..],
        h: &r.h[..],
        h0: Some(&h0[..]),
        start: Some(&start[..]),
        grad_h: &g[..],
        grad_final: None,
    };
    let rg = scan::reference::backward(&p, &rb)?;
    let elems = n(scan::Arg::X) as u64;
    Ok(Report {
        fwd_err: rel(&out.h, &r.h).max(rel(&out.h_final, &r.h_final)),
        bwd_err: rel(&gr.dx, &rg.dx)
            .max(rel(&gr.da, &rg.da))
            .max(rel(&gr.dh0, &rg.dh0)),
        fwd,
        bwd,
        fwd_bytes: elems * 12,
        bwd_bytes: elems * 20,
    })
}

/// `max` of the errors of every (device result, reference) pair.
fn worst(pairs: &[(&Tensor, &[f64])]) -> f64 {
    pairs.iter().map(|(t, r)| rel(t, r)).fold(0.0, f64::max)
}

/// Host tensors of a problem's arguments in its storage types.
fn tensors<P: Problem>(p: &P, vals: &[(P::Arg, &Vec<f64>)]) -> Result<Vec<Tensor>> {
    vals.iter()
        .map(|&(n, v)| {
            let s = p.spec(n);
            Tensor::from_f64(s.shape, v, p.dtype_of(s.role))
        })
        .collect()
}

fn ffm_stop(dev: &Device, rng: &mut Rng) -> Result<Report> {
    let p = Ffm::new(8, 1024, 32, 4);
    let n = |name| p.spec(name).numel();
    let x = rng.vec(n(ffm::Arg::X), -1.0, 1.0);
    let a = rng.vec(n(ffm::Arg::A), -0.5, -0.001);
    let b = rng.vec(n(ffm::Arg::B), -1.0, 1.0);
    let s0 = rng.vec(n(ffm::Arg::S0), -1.0, 1.0);
    let g = rng.vec(n(ffm::Arg::S), -1.0, 1.0);
    let start = rng.flags(n(ffm::Arg::Start), 0.01);
    let t = tensors(
        &p,
        &[
            (ffm::Arg::X, &x),
            (ffm::Arg::A, &a),
            (ffm::Arg::B, &b),
            (ffm::Arg::S0, &s0),
            (ffm::Arg::GradS, &g),
        ],
    )?;
    let st = Tensor::new(p.spec(ffm::Arg::Start).shape, start.clone())?;
    let inp = FfmInputs {
        x: &t[0],
        a: &t[1],
        b: &t[2],
        s0: Some(&t[3]),
        start: Some(&st),
    };
    let (out, fwd) = timed(dev, || ffm::forward(dev, &p, &inp))?;
    let bin = FfmBackwardInputs {
        x: &t[0],
        a: &t[1],
        b: &t[2],
        s0: Some(&t[3]),
        start: Some(&st),
        grad_s: &t[4],
        grad_final: None,
    };
    let (gr, bwd) = timed(dev, || ffm::backward(dev, &p, &bin))?;
    let rin = FfmInputs {
        x: &x[..],
        a: &a[..],
        b: &b[..],
        s0: Some(&s0[..]),
        start: Some(&start[..]),
    };
    let r = ffm::reference::forward(&p, &rin)?;
    let rb = FfmBackwardInputs {
        x: &x[..],
        a: &a[..],
        b: &b[..],
        s0: Some(&s0[..]),
        start: Some(&start[..]),
        grad_s: &g[..],
        grad_final: None,
    };
    let rg = ffm::reference::backward(&p, &rb)?;
    let (sx, ss) = (n(ffm::Arg::X) as u64 * 4, n(ffm::Arg::S) as u64 * 4);
    Ok(Report {
        fwd_err: worst(&[(&out.s, &r.s), (&out.s_final, &r.s_final)]),
        bwd_err: worst(&[
            (&gr.dx, &rg.dx),
            (&gr.da, &rg.da),
            (&gr.db, &rg.db),
            (&gr.ds0, &rg.ds0),
        ]),
        fwd,
        bwd,
        fwd_bytes: sx + ss,
        bwd_bytes: 2 * sx + ss,
    })
}

fn efla_stop(
    dev: &Device,
    rng: &mut Rng,
    rule: efla::Rule,
    alg: efla::Algorithm,
) -> Result<Report> {
    let p = Efla::new(2, 512, 4, 64, 64)
        .with_rule(rule)
        .with_algorithm(alg);
    let n = |name| p.spec(name).numel();
    let q = rng.vec(n(efla::Arg::Q), -1.0, 1.0);
    let k = rng.vec(n(efla::Arg::K), -0.3, 0.3);
    let v = rng.vec(n(efla::Arg::V), -1.0, 1.0);
    let beta = rng.vec(n(efla::Arg::Beta), 0.0, 1.0);
    let s0 = rng.vec(n(efla::Arg::S0), -1.0, 1.0);
    let g = rng.vec(n(efla::Arg::O), -1.0, 1.0);
    let start = rng.flags(n(efla::Arg::Start), 0.01);
    let t = tensors(
        &p,
        &[
            (efla::Arg::Q, &q),
            (efla::Arg::K, &k),
            (efla::Arg::V, &v),
            (efla::Arg::Beta, &beta),
            (efla::Arg::S0, &s0),
            (efla::Arg::GradO, &g),
        ],
    )?;
    let st = Tensor::new(p.spec(efla::Arg::Start).shape, start.clone())?;
    let inp = EflaInputs {
        q: &t[0],
        k: &t[1],
        v: &t[2],
        beta: &t[3],
        s0: Some(&t[4]),
        start: Some(&st),
    };
    let (out, fwd) = timed(dev, || efla::forward(dev, &p, &inp))?;
    let bin = EflaBackwardInputs {
        q: &t[0],
        k: &t[1],
        v: &t[2],
        beta: &t[3],
        s0: Some(&t[4]),
        start: Some(&st),
        grad_o: &t[5],
        grad_final: None,
    };
    let (gr, bwd) = timed(dev, || efla::backward(dev, &p, &bin))?;
    let rin = EflaInputs {
        q: &q[..],
        k: &k[..],
        v: &v[..],
        beta: &beta[..],
        s0: Some(&s0[..]),
        start: Some(&start[..]),
    };
    let r = efla::reference::forward(&p, &rin)?;
    let rb = EflaBackwardInputs {
        q: &q[..],
        k: &k[..],
        v: &v[..],
        beta: &beta[..],
        s0: Some(&s0[..]),
        start: Some(&start[..]),
        grad_o: &g[..],
        grad_final: None,
    };
    let rg = efla::reference::backward(&p, &rb)?;
    // bytes an ideal kernel moves: q, k, v, o (and beta) once; the state stays on chip
    let io = (n(efla::Arg::Q)
        + n(efla::Arg::K)
        + n(efla::Arg::V)
        + n(efla::Arg::O)
        + n(efla::Arg::Beta)) as u64
        * 4;
    Ok(Report {
        fwd_err: worst(&[(&out.o, &r.o), (&out.s_final, &r.s_final)]),
        bwd_err: worst(&[
            (&gr.dq, &rg.dq),
            (&gr.dk, &rg.dk),
            (&gr.dv, &rg.dv),
            (&gr.dbeta, &rg.dbeta),
            (&gr.ds0, &rg.ds0),
        ]),
        fwd,
        bwd,
        fwd_bytes: io,
        bwd_bytes: 2 * io,
    })
}

fn selective_stop(dev: &Device, rng: &mut Rng) -> Result<Report> {
    let p = SelectiveScan::new(4, 512, 128, 16).softplus();
    let n = |name| p.spec(name).numel();
    use selective::Arg;
    let names = [
        Arg::U,
        Arg::Delta,
        Arg::A,
        Arg::Bm,
        Arg::Cm,
        Arg::Dskip,
        Arg::Z,
        Arg::DeltaBias,
        Arg::H0,
        Arg::GradOut,
    ];
    let vals: Vec<Vec<f64>> = names
        .iter()
        .map(|&nm| match nm {
            Arg::A => rng.vec(n(nm), -2.0, -0.1),
            Arg::Delta => rng.vec(n(nm), -3.0, 0.0),
            _ => rng.vec(n(nm), -1.0, 1.0),
        })
        .collect();
    let start = rng.flags(n(Arg::Start), 0.01);
    let pairs: Vec<(Arg, &Vec<f64>)> = names.iter().copied().zip(vals.iter()).collect();
    let t = tensors(&p, &pairs)?;
    let st = Tensor::new(p.spec(selective::Arg::Start).shape, start.clone())?;
    let inp = SelectiveInputs {
        u: &t[0],
        delta: &t[1],
        a: &t[2],
        bm: &t[3],
        cm: &t[4],
        dskip: Some(&t[5]),
        z: Some(&t[6]),
        delta_bias: Some(&t[7]),
        h0: Some(&t[8]),
        start: Some(&st),
    };
    let (out, fwd) = timed(dev, || selective::forward(dev, &p, &inp))?;
    let bin = inp.clone().with_grads(&t[9], None);
    let (gr, bwd) = timed(dev, || selective::backward(dev, &p, &bin))?;
    let v = |i: usize| &vals[i][..];
    let rin = SelectiveInputs {
        u: v(0),
        delta: v(1),
        a: v(2),
        bm: v(3),
        cm: v(4),
        dskip: Some(v(5)),
        z: Some(v(6)),
        delta_bias: Some(v(7)),
        h0: Some(v(8)),
        start: Some(&start[..]),
    };
    let r = selective::reference::forward(&p, &rin)?;
    let rg = selective::reference::backward(&p, &rin.clone().with_grads(v(9), None))?;
    let seq = n(selective::Arg::U) as u64 * 4;
    let bc = (n(selective::Arg::Bm) + n(selective::Arg::Cm)) as u64 * 4;
    Ok(Report {
        fwd_err: worst(&[(&out.out, &r.out), (&out.h_final, &r.h_final)]),
        bwd_err: worst(&[
            (&gr.du, &rg.du),
            (&gr.ddelta, &rg.ddelta),
            (&gr.da, &rg.da),
            (&gr.dbm, &rg.dbm),
            (&gr.dcm, &rg.dcm),
            (&gr.ddskip, &rg.ddskip),
            (&gr.dz, &rg.dz),
            (&gr.ddelta_bias, &rg.ddelta_bias),
            (&gr.dh0, &rg.dh0),
        ]),
        fwd,
        bwd,
        fwd_bytes: 4 * seq + bc,
        bwd_bytes: 7 * seq + 2 * bc,
    })
}

fn stops() -> Vec<Stop> {
    use efla::{Algorithm::*, Rule::*};
    vec![
        Stop {
            name: "linear scan, real",
            shape: "B=8 T=2048 D=256".into(),
            run: |d, r| scan_stop(d, r, false),
        },
        Stop {
            name: "linear scan, complex",
            shape: "B=8 T=2048 D=256".into(),
            run: |d, r| scan_stop(d, r, true),
        },
        Stop {
            name: "FFM aggregation",
            shape: "B=8 T=1024 M=32 C=4".into(),
            run: ffm_stop,
        },
        Stop {
            name: "EFLA, chunked",
            shape: "B=2 T=512 H=4 K=V=64".into(),
            run: |d, r| efla_stop(d, r, Efla, Chunked { chunk: 64 }),
        },
        Stop {
            name: "EFLA, recurrent",
            shape: "B=2 T=512 H=4 K=V=64".into(),
            run: |d, r| efla_stop(d, r, Efla, Recurrent),
        },
        Stop {
            name: "delta rule, chunked",
            shape: "B=2 T=512 H=4 K=V=64".into(),
            run: |d, r| efla_stop(d, r, Delta, Chunked { chunk: 64 }),
        },
        Stop {
            name: "selective scan",
            shape: "B=4 T=512 D=128 N=16".into(),
            run: selective_stop,
        },
    ]
}

/// GB/s with three significant digits.
fn gbs(bytes: u64, t: Duration) -> String {
    let v = bytes as f64 / t.as_secs_f64().max(1e-12) / 1e9;
    let digits = (2 - v.abs().max(1e-9).log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

fn main() {
    let mut devices = Vec::new();
    #[cfg(feature = "cuda")]
    match Device::cuda(0) {
        Ok(d) => devices.push(d),
        Err(e) => println!("cuda: not used ({e})"),
    }
    // as Device::best orders them: a real GPU through wgpu before the native CPU kernels, and a
    // CPU-emulated adapter (lavapipe) only after them
    match Device::wgpu() {
        Ok(Device::Wgpu(c)) if c.info.device_type != wgpu::DeviceType::Cpu => {
            devices.push(Device::Wgpu(c));
            devices.push(Device::Cpu);
        }
        Ok(d) => {
            devices.push(Device::Cpu);
            devices.push(d);
        }
        Err(e) => {
            println!("wgpu: not used ({e})");
            devices.push(Device::Cpu);
        }
    }
    println!(
        "linrec tour: every op on the best available device, checked against the f64 reference"
    );
    for d in &devices {
        println!("  device: {}", d.describe());
    }
    println!();
    println!(
        "{:<24} {:<22} {:<6} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9}",
        "op", "shape", "on", "fwd err", "bwd err", "fwd time", "fwd GB/s", "bwd time", "bwd GB/s"
    );
    let mut rng = Rng(0x5EED);
    let mut worst: f64 = 0.0;
    for stop in stops() {
        for dev in &devices {
            match (stop.run)(dev, &mut rng) {
                Ok(r) => {
                    worst = worst.max(r.fwd_err).max(r.bwd_err);
                    println!(
                        "{:<24} {:<22} {:<6} {:>10.2e} {:>10.2e} {:>8.3}ms {:>9} {:>8.3}ms {:>9}",
                        stop.name,
                        stop.shape,
                        dev.kind().name(),
                        r.fwd_err,
                        r.bwd_err,
                        r.fwd.as_secs_f64() * 1e3,
                        gbs(r.fwd_bytes, r.fwd),
                        r.bwd.as_secs_f64() * 1e3,
                        gbs(r.bwd_bytes, r.bwd)
                    );
                    break;
                }
                // no kernel for this op on this backend yet: try the next device
                Err(Error::Unsupported { .. }) => continue,
                Err(e) => {
                    println!(
                        "{:<24} {:<22} {:<6} error: {e}",
                        stop.name,
                        stop.shape,
                        dev.kind().name()
                    );
                    worst = f64::INFINITY;
                    break;
                }
            }
        }
    }
    println!();
    println!(
        "largest relative error: {worst:.2e} (bounds in docs/conventions.md: forward <= 1e-5, gradients <= 1e-4 in f32)"
    );
    if worst.is_nan() || worst > 1e-4 {
        std::process::exit(1);
    }
}
