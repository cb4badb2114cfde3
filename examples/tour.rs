//! A tour of every linrec operation on the best available device: each op's forward and
//! backward run on CUDA if there is a GPU (and the op has a CUDA kernel), else on wgpu (a real
//! GPU, or lavapipe on the CPU), else on the CPU reference; the results are checked against
//! the f64 reference on random inputs, and the device time and throughput are printed.
//!
//! `cargo run --release --example tour` (add `--features cuda` on an NVIDIA machine).

use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
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

/// SPEC's error metric.
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
    let n = |name: &str| p.spec(name).numel();
    let t = |name: &str, v: &[f64]| Tensor::from_f64(p.spec(name).shape, v, DType::F32);
    let x = rng.vec(n("x"), -1.0, 1.0);
    let a = rng.vec(n("a"), -0.99, 0.99);
    let h0 = rng.vec(n("h0"), -1.0, 1.0);
    let start = rng.flags(n("start"), 0.01);
    let g = rng.vec(n("x"), -1.0, 1.0);
    let (xt, at, h0t, gt) = (t("x", &x)?, t("a", &a)?, t("h0", &h0)?, t("grad_h", &g)?);
    let st = Tensor::new(p.spec("start").shape, start.clone())?;
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
    let elems = n("x") as u64;
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

fn stops() -> Vec<Stop> {
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
    ]
}

fn gbs(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-12) / 1e9
}

fn main() {
    let mut devices = Vec::new();
    #[cfg(feature = "cuda")]
    match Device::cuda(0) {
        Ok(d) => devices.push(d),
        Err(e) => println!("cuda: not used ({e})"),
    }
    match Device::wgpu() {
        Ok(d) => devices.push(d),
        Err(e) => println!("wgpu: not used ({e})"),
    }
    devices.push(Device::Cpu);
    println!(
        "linrec tour: every op on the best available device, checked against the f64 reference"
    );
    for d in &devices {
        println!("  device: {}", d.describe());
    }
    println!();
    println!(
        "{:<28} {:<18} {:<6} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9}",
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
                        "{:<28} {:<18} {:<6} {:>10.2e} {:>10.2e} {:>8.3}ms {:>9.2} {:>8.3}ms {:>9.2}",
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
                        "{:<28} {:<18} {:<6} error: {e}",
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
        "largest relative error: {worst:.2e} (SPEC: forward <= 1e-5, gradients <= 1e-4 in f32)"
    );
    if worst.is_nan() || worst > 1e-4 {
        std::process::exit(1);
    }
}
