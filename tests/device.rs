//! Device plumbing under misuse (docs/conventions.md, "Errors"; docs/gpu.md): several
//! contexts in one process, a buffer of another device passed to a kernel, bounded waits.
//! Every op goes through the same plumbing (`GpuRef` binding, downloads, waits), so one op
//! (the linear scan) stands for all here.

mod common;
use common::*;
use linrec::scan::{self, LinearScan, ScanInputs};
use linrec::{DType, Error, GpuRef, WgpuContext};
use std::time::Duration;

/// A scan problem with random inputs and the reference's output.
struct Case {
    p: LinearScan,
    x: Vec<f64>,
    a: Vec<f64>,
    h: Vec<f64>,
}

fn case(batch: usize, len: usize, dim: usize, seed: u64) -> linrec::Result<Case> {
    let p = LinearScan::new(batch, len, dim);
    let mut r = Rng::new(seed);
    let x = r.vec(batch * len * dim, -1.0, 1.0);
    let a = r.vec(batch * len * dim, 0.5, 0.99);
    let out = scan::reference::forward(
        &p,
        &ScanInputs {
            x: &x[..],
            a: &a[..],
            h0: None,
            start: None,
        },
    )?;
    Ok(Case { p, x, a, h: out.h })
}

/// Run `c` on `ctx` from buffers made on `owner` (the same context or another).
fn run_on(
    ctx: &WgpuContext,
    owner: &WgpuContext,
    c: &Case,
) -> linrec::Result<scan::ScanOutputs<linrec::GpuTensor>> {
    let bx = padded_buffer(owner, &c.x, 0, DType::F32);
    let ba = padded_buffer(ctx, &c.a, 0, DType::F32);
    let inp = ScanInputs {
        x: GpuRef::new(&bx, 0, c.x.len(), DType::F32),
        a: GpuRef::new(&ba, 0, c.a.len(), DType::F32),
        h0: None,
        start: None,
    };
    scan::wgpu::forward(ctx, &c.p, &inp)
}

/// Two contexts in one process: each works on its own buffers, a buffer of the other one is a
/// typed error naming the argument (before anything is submitted), and both contexts stay
/// usable afterwards, also once one holds many buffers.
fn wgpu_two_contexts() -> T {
    wgpu_ctx()?;
    let a = WgpuContext::new()?;
    let b = WgpuContext::new()?;
    let c = case(2, 300, 8, 1)?;
    for (name, ctx) in [("first", &a), ("second", &b)] {
        let out = run_on(ctx, ctx, &c)?;
        close(
            &format!("{name} context"),
            &ctx.download(&out.h)?.to_f64_vec(),
            &c.h,
            1e-5,
        )?;
    }
    // many live buffers in both contexts, so a foreign buffer's identity could collide
    let keep: Vec<_> = (0..300)
        .map(|i| {
            let ctx = if i % 2 == 0 { &a } else { &b };
            ctx.zeros(&[16], DType::F32)
        })
        .collect::<linrec::Result<_>>()?;
    for (ctx, other) in [(&a, &b), (&b, &a)] {
        match run_on(ctx, other, &c) {
            Err(Error::Value { arg: "x", .. }) => {}
            Err(e) => fail!("foreign buffer: expected a Value error naming `x`, got {e}"),
            Ok(_) => fail!("a buffer of another device was accepted"),
        }
        // downloading another context's tensor is refused the same way
        match ctx.download(&other.zeros(&[4], DType::F32)?) {
            Err(Error::Value { .. }) => {}
            Err(e) => fail!("foreign download: expected a Value error, got {e}"),
            Ok(_) => fail!("a tensor of another device was downloaded"),
        }
    }
    drop(keep);
    // both contexts still work, and give the same bits
    let ha = a.download(&run_on(&a, &a, &c)?.h)?.to_f64_vec();
    let hb = b.download(&run_on(&b, &b, &c)?.h)?.to_f64_vec();
    close("first context after the refusals", &ha, &c.h, 1e-5)?;
    ensure!(
        ha.iter().zip(&hb).all(|(x, y)| x.to_bits() == y.to_bits()),
        "two contexts on one adapter disagree"
    );
    Ok(())
}

/// A bounded wait that runs out returns `Error::Timeout`, and the context goes on: a later
/// unbounded wait collects the work and the result is right.
fn wgpu_wait_timeout() -> T {
    wgpu_ctx()?;
    let ctx = WgpuContext::new()?;
    ensure!(ctx.wait_timeout().is_none(), "a timeout is set by default");
    if ctx.info.backend == wgpu::Backend::Gl {
        // wgpu's GL backend runs a submission before `submit` returns
        return Err(Stop::Skip(
            "GL backend: work is done at submit, no wait can run out".into(),
        ));
    }
    // grow the work until one nanosecond is too short to wait for it (lavapipe runs the
    // first size for tens of milliseconds already)
    let mut timed_out = false;
    for (i, len) in [1 << 14, 1 << 16, 1 << 18].into_iter().enumerate() {
        let c = case(4, len, 64, 10 + i as u64)?;
        let bx = padded_buffer(&ctx, &c.x, 0, DType::F32);
        let ba = padded_buffer(&ctx, &c.a, 0, DType::F32);
        ctx.wait()?;
        ctx.set_wait_timeout(Some(Duration::from_nanos(1)));
        let inp = ScanInputs {
            x: GpuRef::new(&bx, 0, c.x.len(), DType::F32),
            a: GpuRef::new(&ba, 0, c.a.len(), DType::F32),
            h0: None,
            start: None,
        };
        let out = scan::wgpu::forward(&ctx, &c.p, &inp)?;
        let waited = ctx.wait();
        ctx.set_wait_timeout(None);
        match waited {
            Err(Error::Timeout { .. }) => timed_out = true,
            Err(e) => fail!("expected Ok or Timeout, got {e}"),
            Ok(()) => {}
        }
        let h = ctx.download(&out.h)?.to_f64_vec();
        close(
            &format!("result after a bounded wait (T = {len})"),
            &h,
            &c.h,
            1e-5,
        )?;
        if timed_out {
            break;
        }
    }
    ensure!(timed_out, "a 1 ns wait never timed out");
    Ok(())
}

/// WebGPU's default limits are what a context opened with them offers.
fn wgpu_default_limits_requested() -> T {
    wgpu_ctx()?;
    let ctx = WgpuContext::with_options(&linrec::WgpuOptions {
        webgpu_default_limits: true,
        ..Default::default()
    })?;
    ensure!(
        ctx.max_storage_buffers() <= 8,
        "{} storage buffers",
        ctx.max_storage_buffers()
    );
    ensure!(
        ctx.max_workgroup_memory() <= 16384,
        "{} bytes of workgroup memory",
        ctx.max_workgroup_memory()
    );
    ensure!(
        ctx.describe().contains("WebGPU default limits"),
        "describe() does not say so: {}",
        ctx.describe()
    );
    let c = case(3, 200, 5, 3)?;
    let out = run_on(&ctx, &ctx, &c)?;
    close(
        "forward under default limits",
        &ctx.download(&out.h)?.to_f64_vec(),
        &c.h,
        1e-5,
    )
}

/// CUDA: two backends on one device share its primary context, so each accepts the other's
/// buffers; a bounded wait still returns the right result.
fn cuda_two_backends_and_timeout() -> T {
    #[cfg(feature = "cuda")]
    {
        cuda_dev()?;
        let a = linrec::CudaBackend::new(0)?;
        let b = linrec::CudaBackend::new(0)?;
        a.set_wait_timeout(Some(Duration::from_secs(60)));
        let c = case(2, 300, 8, 4)?;
        let x = b.upload(&linrec::Tensor::from_f64(
            vec![c.x.len()],
            &c.x,
            DType::F32,
        )?)?;
        let av = a.upload(&linrec::Tensor::from_f64(
            vec![c.a.len()],
            &c.a,
            DType::F32,
        )?)?;
        let inp = ScanInputs {
            x: x.as_ref(),
            a: av.as_ref(),
            h0: None,
            start: None,
        };
        let out = scan::cuda::forward(&a, &c.p, &inp)?;
        close(
            "CUDA, buffers of two backends",
            &a.download(&out.h)?.to_f64_vec(),
            &c.h,
            1e-5,
        )?;
        ensure!(
            a.wait_timeout() == Some(Duration::from_secs(60)),
            "timeout not kept"
        );
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    Err(Stop::Skip("built without feature `cuda`".into()))
}

fn main() {
    common::main(trials![
        wgpu_two_contexts,
        wgpu_wait_timeout,
        wgpu_default_limits_requested,
        cuda_two_backends_and_timeout,
    ]);
}
