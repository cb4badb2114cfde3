//! Device plumbing under misuse (docs/conventions.md, "Errors"; docs/gpu.md): several
//! contexts in one process, a buffer of another device passed to a kernel, bounded waits.
//! Every op goes through the same plumbing (`GpuRef` binding, the CUDA entry points' argument
//! check, downloads, waits), so one op (the linear scan; EFLA too on CUDA) stands for all here.

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

/// Backends on CUDA devices 0 and 1, or a skip saying why there are not two (the emulator
/// reports two unless `LINREC_EMU_DEVICES` says otherwise).
#[cfg(feature = "cuda")]
fn cuda_two_devices() -> Result<[std::sync::Arc<linrec::CudaBackend>; 2], Stop> {
    cuda_dev()?;
    let n = linrec::runtime::cuda::device_count()?;
    if n < 2 {
        return Err(Stop::Skip(format!(
            "only {n} CUDA device here, this test needs two (the emulator reports \
             $LINREC_EMU_DEVICES devices, default 2)"
        )));
    }
    Ok([linrec::CudaBackend::new(0)?, linrec::CudaBackend::new(1)?])
}

/// `r` must be the refusal of memory of CUDA device 1 passed to device 0 as `arg`: a
/// [`Error::Value`] naming `arg` that says which device the memory is of.
#[cfg(feature = "cuda")]
fn refused<R>(what: &str, arg: &str, r: linrec::Result<R>) -> T {
    match r {
        Err(Error::Value {
            arg: a,
            expected,
            found,
        }) => {
            ensure!(
                a == arg,
                "{what}: the error names `{a}`, the foreign argument is `{arg}`"
            );
            ensure!(
                found.contains("CUDA device 1") && expected.contains("CUDA device 0"),
                "{what}: the message does not say which devices: expected {expected:?}, \
                 found {found:?}"
            );
            Ok(())
        }
        Err(e) => fail!("{what}: expected a Value error naming `{arg}`, got {e}"),
        Ok(_) => fail!("{what}: memory of device 1 was accepted on device 0"),
    }
}

/// Upload host tensors to `be`.
#[cfg(feature = "cuda")]
fn upload_all<const N: usize>(
    be: &linrec::CudaBackend,
    ts: [&linrec::Tensor; N],
) -> linrec::Result<[linrec::CuTensor; N]> {
    let v = ts
        .iter()
        .map(|t| be.upload(t))
        .collect::<linrec::Result<Vec<_>>>()?;
    Ok(v.try_into().unwrap_or_else(|_| unreachable!()))
}

/// CUDA: two devices in one process. Memory of device 1 passed to device 0 is an
/// `Error::Value` naming the argument, for every argument of the linear scan (forward and
/// backward) and of EFLA, and for a download; nothing is launched, and device 0 gives the CPU
/// path's results right after (device 1 too, on its own memory). A backend on another stream
/// of device 0 shares its buffers.
fn cuda_foreign_device_refused() -> T {
    #[cfg(feature = "cuda")]
    {
        use linrec::efla::{self, Efla, EflaInputs};
        use linrec::{Device, Tensor};
        let [d0, d1] = cuda_two_devices()?;
        ensure!(
            d0.ctx.cu_ctx() != d1.ctx.cu_ctx(),
            "devices 0 and 1 share a context"
        );

        // ---- linear scan: x, a, h0, start
        let (b, t, d) = (2, 300, 8);
        let c = case(b, t, d, 21)?;
        let mut r = Rng::new(22);
        let h0 = Tensor::from_f64(vec![b, d], &r.vec(b * d, -1.0, 1.0), DType::F32)?;
        let start = Tensor::new(
            vec![b, t],
            (0..b * t)
                .map(|i| u8::from(i % 97 == 3))
                .collect::<Vec<u8>>(),
        )?;
        let x = Tensor::from_f64(vec![b, t, d], &c.x, DType::F32)?;
        let a = Tensor::from_f64(vec![b, t, d], &c.a, DType::F32)?;
        let host = scan::forward(
            &Device::Cpu,
            &c.p,
            &ScanInputs {
                x: &x,
                a: &a,
                h0: Some(&h0),
                start: Some(&start),
            },
        )?;
        let on = [
            upload_all(&d0, [&x, &a, &h0, &start])?,
            upload_all(&d1, [&x, &a, &h0, &start])?,
        ];
        let inputs = |foreign: &str| {
            let pick = |name: &str| &on[usize::from(name == foreign)];
            ScanInputs {
                x: pick("x")[0].as_ref(),
                a: pick("a")[1].as_ref(),
                h0: Some(pick("h0")[2].as_ref()),
                start: Some(pick("start")[3].as_ref()),
            }
        };
        for arg in ["x", "a", "h0", "start"] {
            refused(
                &format!("scan forward, `{arg}` on device 1"),
                arg,
                scan::cuda::forward(&d0, &c.p, &inputs(arg)),
            )?;
        }
        // the backward goes through the same check: its gradient argument on device 1
        let grad = d1.upload(&x)?;
        let fwd0 = scan::cuda::forward(&d0, &c.p, &inputs("none"))?;
        refused(
            "scan backward, `grad_h` on device 1",
            "grad_h",
            scan::cuda::backward(
                &d0,
                &c.p,
                &scan::ScanBackwardInputs {
                    a: on[0][1].as_ref(),
                    h: fwd0.h.as_ref(),
                    h0: Some(on[0][2].as_ref()),
                    start: Some(on[0][3].as_ref()),
                    grad_h: grad.as_ref(),
                    grad_final: None,
                },
            ),
        )?;
        refused(
            "download of a device-1 tensor on device 0",
            "g",
            d0.download(&on[1][0]),
        )?;
        // device 0 right after the refusals, and device 1 on its own memory
        for (name, be, foreign) in [("device 0", &d0, "none"), ("device 1", &d1, "all")] {
            let inp = if foreign == "all" {
                ScanInputs {
                    x: on[1][0].as_ref(),
                    a: on[1][1].as_ref(),
                    h0: Some(on[1][2].as_ref()),
                    start: Some(on[1][3].as_ref()),
                }
            } else {
                inputs(foreign)
            };
            let out = scan::cuda::forward(be, &c.p, &inp)?;
            close(
                &format!("scan on {name} after the refusals: h"),
                &be.download(&out.h)?.to_f64_vec(),
                &host.h.to_f64_vec(),
                1e-5,
            )?;
            close(
                &format!("scan on {name} after the refusals: h_final"),
                &be.download(&out.h_final)?.to_f64_vec(),
                &host.h_final.to_f64_vec(),
                1e-5,
            )?;
        }
        // another backend on device 0 (its own stream of the same context) shares buffers
        let same = linrec::CudaBackend::from_stream(
            d0.ctx
                .new_stream()
                .map_err(|e| Stop::Fail(format!("a second stream on device 0: {e:?}")))?,
        )?;
        let out = scan::cuda::forward(&same, &c.p, &inputs("none"))?;
        close(
            "scan on a second stream of device 0, buffers of the first",
            &same.download(&out.h)?.to_f64_vec(),
            &host.h.to_f64_vec(),
            1e-5,
        )?;

        // ---- EFLA (recurrent): q, k, v, beta, s0, start
        let (b, t, h, k, v) = (2, 40, 2, 16, 16);
        let p = Efla::new(b, t, h, k, v).recurrent();
        let mut r = Rng::new(23);
        let q = Tensor::from_f64(
            vec![b, t, h, k],
            &r.vec(b * t * h * k, -0.5, 0.5),
            DType::F32,
        )?;
        let kt = Tensor::from_f64(
            vec![b, t, h, k],
            &r.vec(b * t * h * k, -0.5, 0.5),
            DType::F32,
        )?;
        let vt = Tensor::from_f64(
            vec![b, t, h, v],
            &r.vec(b * t * h * v, -1.0, 1.0),
            DType::F32,
        )?;
        let beta = Tensor::from_f64(vec![b, t, h], &r.vec(b * t * h, 0.1, 0.9), DType::F32)?;
        let s0 = Tensor::from_f64(
            vec![b, h, k, v],
            &r.vec(b * h * k * v, -0.5, 0.5),
            DType::F32,
        )?;
        let start = Tensor::new(
            vec![b, t],
            (0..b * t)
                .map(|i| u8::from(i % 17 == 5))
                .collect::<Vec<u8>>(),
        )?;
        let host = efla::forward(
            &Device::Cpu,
            &p,
            &EflaInputs {
                q: &q,
                k: &kt,
                v: &vt,
                beta: &beta,
                s0: Some(&s0),
                start: Some(&start),
            },
        )?;
        let on = [
            upload_all(&d0, [&q, &kt, &vt, &beta, &s0, &start])?,
            upload_all(&d1, [&q, &kt, &vt, &beta, &s0, &start])?,
        ];
        let inputs = |foreign: &str| {
            let pick = |name: &str| &on[usize::from(name == foreign)];
            EflaInputs {
                q: pick("q")[0].as_ref(),
                k: pick("k")[1].as_ref(),
                v: pick("v")[2].as_ref(),
                beta: pick("beta")[3].as_ref(),
                s0: Some(pick("s0")[4].as_ref()),
                start: Some(pick("start")[5].as_ref()),
            }
        };
        for arg in ["q", "k", "v", "beta", "s0", "start"] {
            refused(
                &format!("efla forward, `{arg}` on device 1"),
                arg,
                efla::cuda::forward(&d0, &p, &inputs(arg)),
            )?;
        }
        let out = efla::cuda::forward(&d0, &p, &inputs("none"))?;
        close(
            "efla on device 0 after the refusals: o",
            &d0.download(&out.o)?.to_f64_vec(),
            &host.o.to_f64_vec(),
            1e-5,
        )?;
        close(
            "efla on device 0 after the refusals: s_final",
            &d0.download(&out.s_final)?.to_f64_vec(),
            &host.s_final.to_f64_vec(),
            1e-5,
        )?;
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
        cuda_foreign_device_refused,
    ]);
}
