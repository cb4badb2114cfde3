//! Shared test plumbing: a seeded RNG, the error metric of docs/conventions.md, finite
//! differences, backend discovery that reports skips (as `ignored, <reason>` in the test
//! output), and the harness.
#![allow(dead_code)]

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use linrec::{Device, Tensor};
use std::sync::OnceLock;

/// Why a test stopped early: a skip (no device) or a failure.
#[derive(Debug)]
pub enum Stop {
    Skip(String),
    Fail(String),
}
impl From<linrec::Error> for Stop {
    fn from(e: linrec::Error) -> Self {
        Stop::Fail(format!("linrec error: {e}"))
    }
}
impl From<String> for Stop {
    fn from(e: String) -> Self {
        Stop::Fail(e)
    }
}
pub type T = Result<(), Stop>;

/// Fail with a message.
#[macro_export]
macro_rules! fail {
    ($($t:tt)*) => { return Err($crate::common::Stop::Fail(format!($($t)*))) };
}
/// Fail unless a condition holds.
#[macro_export]
macro_rules! ensure {
    ($c:expr, $($t:tt)*) => { if !$c { $crate::fail!($($t)*) } };
}

/// Wrap test functions into trials.
#[macro_export]
macro_rules! trials {
    ($($f:path),* $(,)?) => {
        vec![$( $crate::common::trial(stringify!($f), $f) ),*]
    };
}

pub fn trial(name: &str, f: fn() -> T) -> Trial {
    let name = name.replace(' ', "");
    let label = name.clone();
    Trial::ignorable_test(name, move || {
        let t0 = std::time::Instant::now();
        let r = f();
        // the slow tests name themselves in the log, so CI time can be traced to them
        let secs = t0.elapsed().as_secs_f64();
        if secs >= 10.0 {
            eprintln!("test {label} took {secs:.0} s");
        }
        match r {
            Ok(()) => Ok(Completion::Completed),
            Err(Stop::Skip(r)) => Ok(Completion::ignored_with(r)),
            Err(Stop::Fail(m)) => Err(Failed::from(m)),
        }
    })
}

/// Run the trials and exit with the harness's status.
pub fn main(trials: Vec<Trial>) {
    let args = Arguments::from_args();
    if let Ok(ctx) = wgpu_ctx() {
        eprintln!("wgpu tests run on: {}", ctx.describe());
    } else if let Err(Stop::Skip(r)) = wgpu_ctx() {
        eprintln!("wgpu tests skipped: {r}");
    }
    match cuda_dev() {
        Ok(d) => eprintln!("cuda tests run on: {}", d.describe()),
        Err(Stop::Skip(r)) | Err(Stop::Fail(r)) => eprintln!("cuda tests skipped: {r}"),
    }
    libtest_mimic::run(&args, trials).exit();
}

// ------------------------------------------------------------------ devices

static WGPU: OnceLock<Result<std::sync::Arc<linrec::WgpuContext>, String>> = OnceLock::new();

/// The shared wgpu context (lavapipe in CI), or a skip naming why there is none.
pub fn wgpu_ctx() -> Result<std::sync::Arc<linrec::WgpuContext>, Stop> {
    WGPU.get_or_init(|| linrec::WgpuContext::new().map_err(|e| e.to_string()))
        .clone()
        .map_err(Stop::Skip)
}

/// The wgpu device.
pub fn wgpu() -> Result<Device, Stop> {
    Ok(Device::Wgpu(wgpu_ctx()?))
}

/// A wgpu device on the default adapter with subgroup operations turned off, so the kernels
/// take their workgroup-memory fallbacks (made once); a skip where there is no adapter.
pub fn wgpu_no_subgroups() -> Result<Device, Stop> {
    wgpu_ctx()?;
    static CTX: OnceLock<Result<Device, String>> = OnceLock::new();
    let dev = CTX
        .get_or_init(|| {
            linrec::WgpuContext::with_options(&linrec::WgpuOptions {
                disable_subgroups: true,
                ..linrec::WgpuOptions::from_env().unwrap()
            })
            .map(Device::Wgpu)
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Stop::Fail)?;
    if let Device::Wgpu(c) = &dev {
        crate::ensure!(!c.has_subgroups(), "SUBGROUP still enabled");
    }
    Ok(dev)
}

/// The CUDA device, or a skip naming why there is none (or that the build lacks `cuda`).
pub fn cuda_dev() -> Result<Device, Stop> {
    #[cfg(feature = "cuda")]
    {
        static CUDA: OnceLock<Result<Device, String>> = OnceLock::new();
        CUDA.get_or_init(|| Device::cuda(0).map_err(|e| e.to_string()))
            .clone()
            .map_err(Stop::Skip)
    }
    #[cfg(not(feature = "cuda"))]
    Err(Stop::Skip("built without feature `cuda`".into()))
}

/// Every GPU backend, for tests that run the same check on each: `(name, device or skip)`.
pub fn gpus() -> Vec<(&'static str, Result<Device, Stop>)> {
    vec![("wgpu", wgpu()), ("cuda", cuda_dev())]
}

/// The device of a backend name from [`gpus`], or `wgpu-no-subgroups`, or `cpu` (linrec's
/// native CPU kernels, always present).
pub fn backend(name: &str) -> Result<Device, Stop> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "wgpu" => wgpu(),
        "wgpu-no-subgroups" => wgpu_no_subgroups(),
        _ => cuda_dev(),
    }
}

/// Run `f` inside a rayon pool of `threads` threads (the CPU kernels' thread count), for tests
/// that check results are bitwise identical whatever the number of threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// Run `f` on every GPU backend present; a skip (naming each missing backend) when none is.
pub fn on_gpus(f: impl Fn(&Device, &str) -> T) -> T {
    let mut ran = false;
    let mut skipped = Vec::new();
    for (bk, dev) in gpus() {
        match dev {
            Ok(dev) => {
                f(&dev, bk)?;
                ran = true;
            }
            Err(Stop::Skip(r)) => skipped.push(format!("{bk}: {r}")),
            Err(e) => return Err(e),
        }
    }
    if !ran {
        return Err(Stop::Skip(skipped.join("; ")));
    }
    Ok(())
}

/// Property test: `check` on `cases` random values of `strategy` (no persistence file). The
/// generator is seeded like [`Rng`] (fixed, varied with `LINREC_SEED`), so a run is
/// reproducible. A case that fails or skips fails the test, with the shrunk input.
pub fn prop_check<S>(cases: u32, strategy: S, check: impl Fn(S::Value) -> T) -> T
where
    S: proptest::strategy::Strategy,
{
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(Rng::new(0x9209_7e57).next_u64()),
        ..Config::default()
    });
    runner
        .run(&strategy, |v| {
            check(v).map_err(|(Stop::Fail(m) | Stop::Skip(m))| TestCaseError::fail(m))
        })
        .map_err(|e| Stop::Fail(e.to_string()))
}

/// A caller's storage buffer for the zero-copy tests: `v` in `dtype` between `pad` elements of
/// filler (7.0) in front and three behind, the length rounded up to 4 bytes.
pub fn padded_buffer(
    ctx: &linrec::WgpuContext,
    v: &[f64],
    pad: usize,
    dtype: linrec::DType,
) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let mut f = vec![7.0; pad];
    f.extend_from_slice(v);
    f.extend([7.0; 3]);
    let mut bytes = Tensor::from_f64([f.len()], &f, dtype)
        .unwrap()
        .as_bytes()
        .to_vec();
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

/// Reset flags as u32 words after `pad` filler words (9), for the zero-copy tests.
pub fn padded_flags(ctx: &linrec::WgpuContext, flags: &[u8], pad: usize) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let mut w = vec![9u32; pad];
    w.extend(flags.iter().map(|&f| f as u32));
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&w),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

// ------------------------------------------------------------------ data

/// SplitMix64: small, seedable, good enough for test data.
pub struct Rng(u64);
impl Rng {
    /// The generator of `seed`, varied with `LINREC_SEED`.
    pub fn new(seed: u64) -> Self {
        let extra = std::env::var("LINREC_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        Rng(seed ^ extra.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    /// The generator of `seed` whatever `LINREC_SEED` says: for inputs found to be special.
    pub fn fixed(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform(1e-12, 1.0);
        let v = self.uniform(0.0, 1.0);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
    /// Flags with probability `p`.
    pub fn flags(&mut self, n: usize, p: f64) -> Vec<u8> {
        (0..n)
            .map(|_| u8::from(self.uniform(0.0, 1.0) < p))
            .collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Round f64 data to f32 and back, so the f64 reference sees exactly what an f32 kernel sees.
pub fn f32_exact(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

/// A host tensor of f64 values rounded to `dtype`.
pub fn tensor(shape: &[usize], v: &[f64], dtype: linrec::DType) -> Tensor {
    Tensor::from_f64(shape.to_vec(), v, dtype).expect("shape matches data")
}

// ------------------------------------------------------------------ metrics

/// The metric of docs/conventions.md: ||out - ref||_2 / ||ref||_2 (NaN anywhere gives NaN).
/// An all-zero reference falls back to the absolute norm.
pub fn rel(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let mut num = 0.0;
    let mut den = 0.0;
    for (o, r) in out.iter().zip(reference) {
        num += (o - r) * (o - r);
        den += r * r;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Fail unless `rel(out, reference) <= tol` (NaN never passes).
pub fn close(what: &str, out: &[f64], reference: &[f64], tol: f64) -> T {
    if out.len() != reference.len() {
        fail!(
            "{what}: {} values, reference has {}",
            out.len(),
            reference.len()
        );
    }
    let r = rel(out, reference);
    if r.is_nan() || r > tol {
        let worst = out
            .iter()
            .zip(reference)
            .enumerate()
            .max_by(|a, b| {
                let ea = (a.1 .0 - a.1 .1).abs();
                let eb = (b.1 .0 - b.1 .1).abs();
                ea.partial_cmp(&eb).unwrap_or(std::cmp::Ordering::Greater)
            })
            .map(|(i, (o, r))| format!("worst at {i}: {o} vs {r}"))
            .unwrap_or_default();
        fail!("{what}: rel error {r:.3e} > {tol:.1e} ({worst})");
    }
    Ok(())
}

/// Non-finite values against the reference: every non-finite value of the backend sits where
/// the reference has one, and the finite values match within `tol`. With `nan`, NaN positions
/// must be equal too. (Infinities are compared as non-finite only: complex products of
/// infinities give NaN or infinity depending on the order of the operations, and the scan's
/// reference does a real scan in complex arithmetic, where `(a + 0i)(inf + 0i)` has imaginary
/// part `0 * inf = NaN`.)
pub fn nonfinite_close(what: &str, out: &[f64], reference: &[f64], tol: f64, nan: bool) -> T {
    ensure!(
        out.len() == reference.len(),
        "{what}: {} values, reference has {}",
        out.len(),
        reference.len()
    );
    for (i, (o, r)) in out.iter().zip(reference).enumerate() {
        ensure!(
            o.is_finite() == r.is_finite() && (!nan || o.is_nan() == r.is_nan()),
            "{what}: element {i} is {o}, the reference has {r}"
        );
    }
    let (o, r): (Vec<f64>, Vec<f64>) = out
        .iter()
        .zip(reference)
        .filter(|(_, r)| r.is_finite())
        .map(|(&o, &r)| (o, r))
        .unzip();
    close(what, &o, &r, tol)
}

/// Largest relative change `jitter` makes to an input: 2^-19, 16 to 32 f32 ulps, about the
/// rounding an f32 kernel accumulates along a sequence. Measured against what half-ulp changes
/// of the inputs (2^-24) do to the exact result: in 5000 random FFM problems every `da` error
/// above 1e-4 was within that; in 6000 selective-scan ones the shared gradients' errors were
/// up to 23 times larger (15 times where above 1e-4); 2^-19 is 32 times as large.
pub const JITTER: f64 = 1.0 / (1u64 << 19) as f64;

/// Multiply every value by `1 + u scale`, `u` uniform in [-1, 1) (`JITTER`, or 2^-24 for
/// changes within half an f32 ulp).
pub fn jitter(rng: &mut Rng, v: &mut [f64], scale: f64) {
    for x in v {
        *x *= 1.0 + rng.uniform(-1.0, 1.0) * scale;
    }
}

/// How far an exact result moves when its inputs move: the largest relative change from
/// `reference` of `exact_jittered(rng)` (the f64 reference at jittered inputs) over four fixed
/// draws of `rng` (not varied with `LINREC_SEED`: a measurement, not test data).
pub fn spread(reference: &[f64], exact_jittered: impl Fn(&mut Rng) -> Vec<f64>) -> f64 {
    (0..4)
        .map(|draw| {
            rel(
                &exact_jittered(&mut Rng::fixed(0x5eed_0000 + draw)),
                reference,
            )
        })
        .fold(0.0, f64::max)
}

/// `close`, for a result that f32 inputs may not determine to `tol`. The gradient of a
/// parameter shared by every row and step is a sum over all of them; where that sum cancels to
/// far below the size of its terms, the exact result moves by more than `tol` when the inputs
/// change by a few ulps, and an f32 computation, whose intermediate values carry that much
/// rounding, cannot be held to `tol` there. `exact_jittered(rng)` is the f64 reference at
/// every input changed by `jitter(rng, _, JITTER)`; their [`spread`] is computed only when the
/// bound of docs/conventions.md fails, the result then passes only within it, and such a
/// pass is printed, so it shows in the test output.
pub fn close_or_within_spread(
    what: &str,
    out: &[f64],
    reference: &[f64],
    tol: f64,
    exact_jittered: impl Fn(&mut Rng) -> Vec<f64>,
) -> T {
    let Err(e) = close(what, out, reference, tol) else {
        return Ok(());
    };
    let r = rel(out, reference);
    let s = spread(reference, exact_jittered);
    if r <= s {
        eprintln!(
            "{what}: rel error {r:.3e} > {tol:.1e}, within the spread of the exact result \
             ({s:.3e}) under input changes of 16 to 32 ulps (ill-conditioned inputs)"
        );
        return Ok(());
    }
    match e {
        Stop::Fail(m) => {
            fail!("{m}; the exact result's spread under input changes of 16 to 32 ulps is {s:.3e}")
        }
        e => Err(e),
    }
}

/// Central finite differences of `f` at `theta` on up to `max` coordinates (spread evenly),
/// compared with `analytic` (the gradient claimed by a backward pass) in the metric of
/// docs/conventions.md.
pub fn fd_check(
    what: &str,
    theta: &[f64],
    analytic: &[f64],
    f: impl Fn(&[f64]) -> f64,
    max: usize,
    tol: f64,
) -> T {
    assert_eq!(theta.len(), analytic.len());
    let n = theta.len();
    let step = (n / max.max(1)).max(1);
    let eps = 1e-6;
    let mut num = Vec::new();
    let mut ana = Vec::new();
    let mut th = theta.to_vec();
    for i in (0..n).step_by(step) {
        let x0 = th[i];
        th[i] = x0 + eps;
        let fp = f(&th);
        th[i] = x0 - eps;
        let fm = f(&th);
        th[i] = x0;
        num.push((fp - fm) / (2.0 * eps));
        ana.push(analytic[i]);
    }
    close(&format!("{what} vs finite differences"), &ana, &num, tol)
}

/// `sum(g * v)`: the scalar loss whose gradient with respect to `v` is `g`.
pub fn dot(g: &[f64], v: &[f64]) -> f64 {
    g.iter().zip(v).map(|(a, b)| a * b).sum()
}

/// Bitwise equality of two f32 result vectors.
pub fn bitwise(what: &str, a: &[f32], b: &[f32]) -> T {
    let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    ensure!(same, "{what}: two runs differ bitwise");
    Ok(())
}
