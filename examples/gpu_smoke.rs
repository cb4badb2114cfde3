//! The first minute on a GPU machine: every op's forward and backward at small shapes on every
//! available backend (CUDA, wgpu), each against the f64 reference in docs/conventions.md's metric
//! (`||out - ref|| / ||ref||`, the tests' `common::rel`), one line per case and backend:
//!
//! ```text
//! cuda  efla       chunked64 delta bf16 B=1 T=100 H=2 K=128 V=64  fwd 2.9e-3 (o)  bwd 2.8e-3 (dq)  PASS  [234 ms]
//! ```
//!
//! `cargo run --release --features cuda --example gpu_smoke -- [--device cuda,wgpu] [--only scan,ffm,efla,selective] [--list]`
//!
//! `--device` names the backends to run and requires them (a missing one fails the run);
//! without it, every backend present runs and a missing one is only reported. The cases
//! together launch every CUDA kernel at least once (each storage dtype, the recurrent EFLA
//! register variants, the chunked key-dimension variants, FFM's load widths and
//! context-split reduction, the selective scan's group reduction, the tensor-core self-test),
//! so `scripts/gpu/run.sh` also runs this binary, CUDA only, under compute-sanitizer. A case
//! a backend does not implement (`Unsupported`, or a size past its limits) is a SKIP. Exit
//! status 1 when any case fails or a required backend is missing.
//!
//! Tolerances: f32 storage forward 1e-5 and backward 1e-4, f16 / bf16 storage 1e-2
//! (the reference is fed the same rounded inputs, as in the tests).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{rel, Rng};
use linrec::efla::{self, Efla, EflaBackwardInputs, EflaInputs, Rule};
use linrec::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use linrec::ops::ArgName;
use linrec::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use linrec::selective::{self, SelectiveInputs, SelectiveScan};
use linrec::{DType, Device, Error, Problem, Role, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// One smoke case: an op at one configuration.
#[derive(Clone)]
enum Case {
    Scan(LinearScan),
    /// FFM; with `Some(k)` (CUDA only) the backward reads `grad_s` from a caller buffer `k`
    /// floats past an aligned address, so the 4- and 8-byte load variants run too.
    Ffm(Ffm, Option<usize>),
    Efla(Efla),
    /// The selective scan, with or without the gate `z` (without it, the backward's checkpoint
    /// pass is a kernel of its own).
    Selective(SelectiveScan, bool),
    /// `efla::cuda::tensor_core_selftest` (CUDA only).
    TensorCores,
}

impl Case {
    fn op(&self) -> &'static str {
        match self {
            Case::Scan(_) => "scan",
            Case::Ffm(..) => "ffm",
            Case::Efla(_) | Case::TensorCores => "efla",
            Case::Selective(..) => "selective",
        }
    }

    fn cuda_only(&self) -> bool {
        matches!(self, Case::Ffm(_, Some(_)) | Case::TensorCores)
    }

    fn describe(&self) -> String {
        match self {
            Case::Scan(p) => format!(
                "{}{}{} {} B={} T={} D={}",
                if p.complex { "complex" } else { "real" },
                if p.time_varying {
                    ""
                } else {
                    " time-invariant"
                },
                if p.reverse { " reverse" } else { "" },
                p.dtype,
                p.batch,
                p.len,
                p.dim
            ),
            Case::Ffm(p, off) => format!(
                "B={} T={} M={} C={}{}",
                p.batch,
                p.len,
                p.memory,
                p.context,
                off.map(|k| format!(" grad_s at +{}B", 4 * k))
                    .unwrap_or_default()
            ),
            Case::Efla(p) => format!(
                "{} {} {} B={} T={} H={} K={} V={}",
                match p.chunk() {
                    Some(c) => format!("chunked{c}"),
                    None => "recurrent".into(),
                },
                match p.rule {
                    Rule::Efla => "efla",
                    Rule::Delta => "delta",
                },
                p.dtype,
                p.batch,
                p.len,
                p.heads,
                p.key_dim,
                p.value_dim
            ),
            Case::Selective(p, gate) => format!(
                "{}{} {} B={} T={} D={} N={} G={}",
                if p.input_dependent() { "id" } else { "fixed" },
                if *gate { " gated" } else { "" },
                p.dtype,
                p.batch,
                p.len,
                p.dim,
                p.state,
                p.num_groups()
            ),
            Case::TensorCores => "tensor-core self-test".into(),
        }
    }
}

/// Every case: small shapes that together reach every CUDA kernel.
fn cases() -> Vec<Case> {
    use DType::{BF16, F16, F32};
    let mut v = Vec::new();
    // scan: real / complex x storage dtype; time-invariant `a` adds the row reduction
    for (i, dt) in [F32, F16, BF16].into_iter().enumerate() {
        for complex in [false, true] {
            let mut p = LinearScan::new(2, 300, 40).with_dtype(dt);
            if complex {
                p = p.complex();
            }
            if i == 0 && complex {
                p = p.time_invariant();
            }
            if i == 1 {
                p = p.reversed();
            }
            v.push(Case::Scan(p));
        }
    }
    // FFM: odd / even C (one or two complex channels per thread), grad_s read 4, 8 or 16
    // bytes at a time, and C so wide that a memory channel spans blocks (dx reduction)
    for (c, offs) in [
        (3, &[None, Some(1)][..]),
        (4, &[None, Some(1), Some(2)][..]),
    ] {
        for &off in offs {
            v.push(Case::Ffm(Ffm::new(2, 70, 3, c), off));
        }
    }
    v.push(Case::Ffm(Ffm::new(1, 9, 1, 514), None));
    // selective: input-dependent Bm/Cm (D / G > 8 channels: the group reduction; and groups
    // narrower than a block) and fixed, with and without the gate
    for dt in [F32, F16, BF16] {
        let p = SelectiveScan::new(2, 300, 16, 8).softplus().with_dtype(dt);
        v.push(Case::Selective(p, true));
        let p = SelectiveScan::new(1, 40, 8, 4).groups(2).with_dtype(dt);
        v.push(Case::Selective(p, false));
        let p = SelectiveScan::new(1, 40, 24, 4).fixed_bc().with_dtype(dt);
        v.push(Case::Selective(p, false));
    }
    // EFLA / delta: recurrent at every register variant (K, V up to 32, 64, 128, 256), chunked
    // at every key-dimension variant (K up to 64, 128, 256)
    for (i, dt) in [F32, F16, BF16].into_iter().enumerate() {
        // the rules alternate (they share the kernels; a flag tells them apart)
        let rule = |j: usize| [Rule::Efla, Rule::Delta][(i + j) % 2];
        for (j, (k, vd)) in [(20, 12), (64, 50), (128, 100), (200, 256)]
            .into_iter()
            .enumerate()
        {
            let p = Efla::new(1, 37, 2, k, vd).with_rule(rule(j)).recurrent();
            v.push(Case::Efla(p.with_dtype(dt)));
        }
        for (j, (k, vd)) in [(48, 40), (128, 64), (256, 96)].into_iter().enumerate() {
            let p = Efla::new(1, 100, 2, k, vd).with_rule(rule(j)).chunked(64);
            v.push(Case::Efla(p.with_dtype(dt)));
        }
    }
    v.push(Case::TensorCores);
    v
}

impl Case {
    /// Storage dtype of the sequence tensors (which tolerance applies).
    fn dtype(&self) -> DType {
        match self {
            Case::Scan(p) => p.dtype,
            Case::Efla(p) => p.dtype,
            Case::Selective(p, _) => p.dtype,
            Case::Ffm(..) | Case::TensorCores => DType::F32,
        }
    }
}

// ------------------------------------------------------------------ data and comparison

/// A host tensor for argument `a` of `p`: uniform in `[lo, hi)` in the argument's dtype, or
/// reset flags (every row's first step and about one in twenty others).
fn arg<P: Problem>(p: &P, rng: &mut Rng, a: P::Arg, lo: f64, hi: f64) -> Tensor {
    let s = p.spec(a);
    let n = s.numel();
    let t = match s.role {
        Role::Flags => {
            let row = s.shape.last().copied().unwrap_or(1).max(1);
            let f: Vec<u8> = (0..n)
                .map(|i| u8::from(i % row == 0 || rng.uniform(0.0, 1.0) < 0.05))
                .collect();
            Tensor::new(s.shape, f)
        }
        role => Tensor::from_f64(s.shape, &rng.vec(n, lo, hi), p.dtype_of(role)),
    };
    t.expect("shape from the spec")
}

/// Values of a result as f64: a host tensor's, or the reference's own.
trait Values {
    fn values(&self) -> Vec<f64>;
}
impl Values for Tensor {
    fn values(&self) -> Vec<f64> {
        self.to_f64_vec()
    }
}
impl Values for Vec<f64> {
    fn values(&self) -> Vec<f64> {
        self.clone()
    }
}

/// `(name, values)` of every field of a result struct, through its `map`.
macro_rules! fields {
    ($s:expr) => {{
        let mut v: Vec<(&'static str, Vec<f64>)> = Vec::new();
        let _ = $s.map(|a, t| v.push((a.name(), t.values())));
        v
    }};
}

/// The reference's view of host inputs: their values as f64 (exactly what the kernels read),
/// kept alive in `$owned`.
macro_rules! ref_inputs {
    ($inp:expr, $owned:ident) => {{
        $owned = $inp.map(|_, t| t.to_f64_vec(), |_, t| t.to_flags());
        $owned.map(|_, v| v.as_slice(), |_, f| f.as_slice())
    }};
}

/// The largest `rel` error over matching fields, and the field it is in (NaN wins).
fn worst(
    got: &[(&'static str, Vec<f64>)],
    want: &[(&'static str, Vec<f64>)],
) -> (f64, &'static str) {
    let mut w = (0.0, "-");
    for ((name, g), (_, r)) in got.iter().zip(want) {
        let e = if g.len() == r.len() {
            rel(g, r)
        } else {
            f64::NAN
        };
        if e.is_nan() {
            return (e, name);
        }
        if e > w.0 {
            w = (e, name);
        }
    }
    w
}

/// Forward and backward errors of one case, each with the field it is largest in.
struct Errs {
    fwd: (f64, &'static str),
    bwd: (f64, &'static str),
}

type R<T> = linrec::Result<T>;

// ------------------------------------------------------------------ the ops

fn run_scan(dev: &Device, p: &LinearScan, rng: &mut Rng) -> R<Errs> {
    use scan::Arg::*;
    let am = if p.complex { 0.7 } else { 0.99 };
    let (x, a, h0, st) = (
        arg(p, rng, X, -1.0, 1.0),
        arg(p, rng, A, -am, am),
        arg(p, rng, H0, -1.0, 1.0),
        arg(p, rng, Start, 0.0, 0.0),
    );
    let (g, gf) = (
        arg(p, rng, GradH, -1.0, 1.0),
        arg(p, rng, GradFinal, -1.0, 1.0),
    );
    let inp = ScanInputs {
        x: &x,
        a: &a,
        h0: Some(&h0),
        start: Some(&st),
    };
    let out = scan::forward(dev, p, &inp)?;
    let owned;
    let r = scan::reference::forward(p, &ref_inputs!(inp, owned))?;
    // both backward passes start from the backend's own h, as a framework's would
    let bin = ScanBackwardInputs {
        a: &a,
        h: &out.h,
        h0: Some(&h0),
        start: Some(&st),
        grad_h: &g,
        grad_final: Some(&gf),
    };
    let gr = scan::backward(dev, p, &bin)?;
    let owned_b;
    let rg = scan::reference::backward(p, &ref_inputs!(bin, owned_b))?;
    Ok(Errs {
        fwd: worst(&fields!(out), &fields!(r)),
        bwd: worst(&fields!(gr), &fields!(rg)),
    })
}

fn run_ffm(dev: &Device, p: &Ffm, grad_s_offset: Option<usize>, rng: &mut Rng) -> R<Errs> {
    use ffm::Arg::*;
    let (x, a, b, s0, st) = (
        arg(p, rng, X, -1.0, 1.0),
        arg(p, rng, A, -0.5, -0.001),
        arg(p, rng, B, -1.0, 1.0),
        arg(p, rng, S0, -1.0, 1.0),
        arg(p, rng, Start, 0.0, 0.0),
    );
    let (g, gf) = (
        arg(p, rng, GradS, -1.0, 1.0),
        arg(p, rng, GradFinal, -1.0, 1.0),
    );
    let inp = FfmInputs {
        x: &x,
        a: &a,
        b: &b,
        s0: Some(&s0),
        start: Some(&st),
    };
    let out = ffm::forward(dev, p, &inp)?;
    let owned;
    let r = ffm::reference::forward(p, &ref_inputs!(inp, owned))?;
    let bin = FfmBackwardInputs {
        x: &x,
        a: &a,
        b: &b,
        s0: Some(&s0),
        start: Some(&st),
        grad_s: &g,
        grad_final: Some(&gf),
    };
    let gr = match (grad_s_offset, dev) {
        (None, _) => ffm::backward(dev, p, &bin)?,
        #[cfg(feature = "cuda")]
        (Some(k), Device::Cuda(be)) => ffm_backward_offset(be, p, &bin, k)?,
        (Some(_), _) => {
            return Err(Error::unsupported(dev.kind().name(), "a CUDA-only case"));
        }
    };
    let owned_b;
    let rg = ffm::reference::backward(p, &ref_inputs!(bin, owned_b))?;
    Ok(Errs {
        fwd: worst(&fields!(out), &fields!(r)),
        bwd: worst(&fields!(gr), &fields!(rg)),
    })
}

/// FFM's CUDA backward on device copies of `bin`, with `grad_s` read from a caller buffer
/// `k` floats past its (aligned) start.
#[cfg(feature = "cuda")]
fn ffm_backward_offset(
    be: &linrec::CudaBackend,
    p: &Ffm,
    bin: &FfmBackwardInputs<&Tensor>,
    k: usize,
) -> R<ffm::FfmGrads<Tensor>> {
    let up = bin.try_map(|_, t| be.upload(t), |_, t| be.upload(t))?;
    let mut refs = up.map(|_, g| g.as_ref(), |_, g| g.as_ref());
    let g = bin.grad_s.to_f32_vec();
    let mut padded = vec![7.0f32; k];
    padded.extend(&g);
    let buf = be.stream.clone_htod(&padded).map_err(|e| Error::Device {
        backend: "cuda",
        what: format!("{e:?}"),
    })?;
    refs.grad_s = linrec::CuRef::F32(buf.slice(k..k + g.len()));
    let gr = ffm::cuda::backward(be, p, &refs)?;
    gr.try_map(|_, t| be.download(t))
}

fn run_efla(dev: &Device, p: &Efla, rng: &mut Rng) -> R<Errs> {
    use efla::Arg::*;
    // keys of squared norm about 0.64, so the delta rule's steps contract
    let km = 0.8 * (3.0 / p.key_dim as f64).sqrt();
    let (q, k, v, beta, s0, st) = (
        arg(p, rng, Q, -1.0, 1.0),
        arg(p, rng, K, -km, km),
        arg(p, rng, V, -1.0, 1.0),
        arg(p, rng, Beta, 0.0, 1.0),
        arg(p, rng, S0, -1.0, 1.0),
        arg(p, rng, Start, 0.0, 0.0),
    );
    let (g, gf) = (
        arg(p, rng, GradO, -1.0, 1.0),
        arg(p, rng, GradFinal, -1.0, 1.0),
    );
    let inp = EflaInputs {
        q: &q,
        k: &k,
        v: &v,
        beta: &beta,
        s0: Some(&s0),
        start: Some(&st),
    };
    let out = efla::forward(dev, p, &inp)?;
    let owned;
    let r = efla::reference::forward(p, &ref_inputs!(inp, owned))?;
    let bin = EflaBackwardInputs {
        q: &q,
        k: &k,
        v: &v,
        beta: &beta,
        s0: Some(&s0),
        start: Some(&st),
        grad_o: &g,
        grad_final: Some(&gf),
    };
    let gr = efla::backward(dev, p, &bin)?;
    let owned_b;
    let rg = efla::reference::backward(p, &ref_inputs!(bin, owned_b))?;
    Ok(Errs {
        fwd: worst(&fields!(out), &fields!(r)),
        bwd: worst(&fields!(gr), &fields!(rg)),
    })
}

fn run_selective(dev: &Device, p: &SelectiveScan, gate: bool, rng: &mut Rng) -> R<Errs> {
    use selective::Arg::*;
    // positive step sizes: through softplus, or directly
    let (dlo, dhi, blo, bhi) = if p.softplus {
        (-3.0, 0.0, -1.0, 1.0)
    } else {
        (0.01, 0.5, 0.0, 0.1)
    };
    let t = [
        arg(p, rng, U, -1.0, 1.0),
        arg(p, rng, Delta, dlo, dhi),
        arg(p, rng, A, -2.0, -0.1),
        arg(p, rng, Bm, -1.0, 1.0),
        arg(p, rng, Cm, -1.0, 1.0),
        arg(p, rng, Dskip, -1.0, 1.0),
        arg(p, rng, Z, -1.0, 1.0),
        arg(p, rng, DeltaBias, blo, bhi),
        arg(p, rng, H0, -1.0, 1.0),
        arg(p, rng, Start, 0.0, 0.0),
        arg(p, rng, GradOut, -1.0, 1.0),
        arg(p, rng, GradFinal, -1.0, 1.0),
    ];
    let inp = SelectiveInputs {
        u: &t[0],
        delta: &t[1],
        a: &t[2],
        bm: &t[3],
        cm: &t[4],
        dskip: Some(&t[5]),
        z: gate.then_some(&t[6]),
        delta_bias: Some(&t[7]),
        h0: Some(&t[8]),
        start: Some(&t[9]),
    };
    let out = selective::forward(dev, p, &inp)?;
    let owned;
    let r = selective::reference::forward(p, &ref_inputs!(inp, owned))?;
    let bin = inp.clone().with_grads(&t[10], Some(&t[11]));
    let gr = selective::backward(dev, p, &bin)?;
    let owned_b;
    let rg = selective::reference::backward(p, &ref_inputs!(bin, owned_b))?;
    Ok(Errs {
        fwd: worst(&fields!(out), &fields!(r)),
        bwd: worst(&fields!(gr), &fields!(rg)),
    })
}

/// Run `case` on `dev`: its errors, or `None` for a check without any (the self-test).
fn run(case: &Case, dev: &Device, rng: &mut Rng) -> R<Option<Errs>> {
    match case {
        Case::Scan(p) => run_scan(dev, p, rng).map(Some),
        Case::Ffm(p, off) => run_ffm(dev, p, *off, rng).map(Some),
        Case::Efla(p) => run_efla(dev, p, rng).map(Some),
        Case::Selective(p, gate) => run_selective(dev, p, *gate, rng).map(Some),
        Case::TensorCores => match dev {
            #[cfg(feature = "cuda")]
            Device::Cuda(be) => efla::cuda::tensor_core_selftest(be).map(|()| None),
            _ => Err(Error::unsupported(dev.kind().name(), "a CUDA-only case")),
        },
    }
}

// ------------------------------------------------------------------ driver

struct Opts {
    /// Backends named with `--device` (then required), or empty: every one present.
    devices: Vec<String>,
    only: Vec<String>,
    list: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list_of = |i: usize| -> Vec<String> {
        args.get(i + 1)
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let mut o = Opts {
        devices: vec![],
        only: vec![],
        list: false,
    };
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            "--device" => o.devices = list_of(i),
            "--only" => o.only = list_of(i),
            "--list" => o.list = true,
            "-h" | "--help" => {
                println!(
                    "gpu_smoke [--device cuda,wgpu] [--only scan,ffm,efla,selective] [--list]"
                );
                std::process::exit(0);
            }
            _ => {}
        }
    }
    o
}

/// The backends to run, and the number of requested ones that are missing (each reported).
fn devices(o: &Opts) -> (Vec<(&'static str, Device)>, usize) {
    let want = |bk: &str| o.devices.is_empty() || o.devices.iter().any(|d| d == bk);
    let mut found = Vec::new();
    let mut missing = 0;
    let mut absent = |bk: &str, why: String| {
        if o.devices.iter().any(|d| d == bk) {
            println!("{bk:<5} FAIL: required backend not available: {why}");
            missing += 1;
        } else {
            println!("{bk:<5} not available: {why}");
        }
    };
    if want("cuda") {
        #[cfg(feature = "cuda")]
        match Device::cuda(0) {
            Ok(d) => found.push(("cuda", d)),
            Err(e) => absent("cuda", e.to_string()),
        }
        #[cfg(not(feature = "cuda"))]
        absent("cuda", "built without feature `cuda`".into());
    }
    if want("wgpu") {
        match Device::wgpu() {
            Ok(d) => found.push(("wgpu", d)),
            Err(e) => absent("wgpu", e.to_string()),
        }
    }
    for d in &o.devices {
        if d != "cuda" && d != "wgpu" {
            absent(d, "unknown backend (cuda or wgpu)".into());
        }
    }
    (found, missing)
}

/// First line of a panic's message.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    let s = e
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| e.downcast_ref::<&str>().copied())
        .unwrap_or("?");
    s.lines().next().unwrap_or("").to_string()
}

fn main() {
    let o = opts();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| o.only.is_empty() || o.only.iter().any(|x| x == c.op()))
        .collect();
    if o.list {
        for c in &cases {
            let only = if c.cuda_only() { "  (cuda only)" } else { "" };
            println!("{:<10} {}{only}", c.op(), c.describe());
        }
        return;
    }
    let (devs, missing) = devices(&o);
    for (_, d) in &devs {
        println!("{}", d.describe());
    }
    let (mut pass, mut fail, mut skip) = (0, missing, 0);
    for (bk, dev) in &devs {
        for (i, case) in cases.iter().enumerate() {
            if case.cuda_only() && *bk != "cuda" {
                continue;
            }
            let (tf, tb) = if case.dtype() == DType::F32 {
                (1e-5, 1e-4)
            } else {
                (1e-2, 1e-2)
            };
            let mut rng = Rng::fixed(0x5e0c_0000 + i as u64);
            let t0 = std::time::Instant::now();
            let res = catch_unwind(AssertUnwindSafe(|| run(case, dev, &mut rng)));
            let ms = t0.elapsed().as_millis();
            let verdict = match res {
                Ok(Ok(Some(e))) => {
                    let ok = e.fwd.0 <= tf && e.bwd.0 <= tb;
                    format!(
                        "fwd {:.1e} ({})  bwd {:.1e} ({})  {}",
                        e.fwd.0,
                        e.fwd.1,
                        e.bwd.0,
                        e.bwd.1,
                        if ok { "PASS" } else { "FAIL" }
                    )
                }
                Ok(Ok(None)) => "PASS".into(),
                Ok(Err(e @ (Error::Unsupported { .. } | Error::Limit { .. }))) => {
                    format!("SKIP ({e})")
                }
                Ok(Err(e)) => format!("FAIL: {e}"),
                Err(p) => format!("FAIL: panicked: {}", panic_text(p.as_ref())),
            };
            if verdict.starts_with("SKIP") {
                skip += 1;
            } else if verdict.contains("FAIL") {
                fail += 1;
            } else {
                pass += 1;
            }
            println!(
                "{bk:<5} {:<10} {:<46} {verdict}  [{ms} ms]",
                case.op(),
                case.describe()
            );
        }
    }
    let names: Vec<&str> = devs.iter().map(|(b, _)| *b).collect();
    println!(
        "gpu_smoke: {pass} passed, {fail} failed, {skip} skipped on {}",
        if names.is_empty() {
            "no backend".into()
        } else {
            names.join(", ")
        }
    );
    if fail > 0 || devs.is_empty() {
        std::process::exit(1);
    }
}
