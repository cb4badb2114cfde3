//! burn integration (feature `burn`, burn 0.22.1): every linrec op on burn tensors, with a
//! backward, on burn's wgpu devices (linrec's WGSL kernels on burn's own device, queue and
//! buffers), under `Autodiff`, and on burn's ndarray CPU backend (linrec's native CPU
//! kernels), so the same model code trains on any GPU wgpu reaches and without one; plus
//! layers built on them ([`layers`]).
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use linrec::scan::LinearScan;
//!
//! # fn main() -> linrec::Result<()> {
//! // burn's wgpu device on linrec's adapter, registered with linrec (Device::ndarray() for the CPU)
//! let device = linrec::burn::wgpu_device()?.autodiff();
//! let p = LinearScan::new(2, 16, 8); // B = 2, T = 16, D = 8
//! let x = Tensor::<3>::ones([2, 16, 8], &device).require_grad();
//! let a = Tensor::<3>::full([2, 16, 8], 0.9, &device).require_grad();
//! let (h, h_final): (Tensor<3>, Tensor<2>) = linrec::burn::linear_scan(&p, x.clone(), a, None, None)?;
//! let grads = (h.sum() + h_final.sum()).backward();
//! let dx = x.grad(&grads).unwrap();
//! # Ok(()) }
//! ```
//!
//! ## How it is built
//!
//! burn 0.22's tensors carry their backend at run time (`burn::tensor::Device`). linrec adds
//! a *backend extension* ([`LinrecBackend`], through burn's `#[backend_extension]`) with one
//! forward and one backward method taking an op description ([`LinrecOp`]), its inputs and
//! its reset flags. It is implemented
//!
//! - for burn's CubeCL backend on wgpu devices: zero-copy on burn's buffers (see
//!   `src/burn/wgpu.rs`: inputs bound where cubecl keeps them, burn's pending work flushed to
//!   the shared queue first, and the kernels write each result straight into a tensor cubecl
//!   allocated for it, cleared first as wgpu clears a new buffer; cubecl 0.11 cannot adopt a
//!   foreign buffer, so linrec writes into cubecl's instead);
//! - for burn's ndarray backend (and CubeCL's non-wgpu runtimes): linrec's native CPU kernels
//!   (`Device::Cpu`) on a host copy of the tensors;
//! - for `Autodiff<B>`: one graph node per op whose backward runs linrec's backward kernels
//!   (see [`autodiff`]).
//!
//! burn's wgpu device must be one linrec knows the `wgpu::Device` and `wgpu::Queue` of:
//! create it with [`wgpu_device`], or register a `WgpuSetup` of your own with
//! [`register_wgpu`] (cubecl keeps the device of a runtime it opened itself to itself).
//!
//! burn's CUDA backend is not supported: see the README (burn section) for why.
//!
//! ## Arguments
//!
//! Shapes are those of linrec's host API (complex data with a trailing axis of 2). Sequence
//! tensors may be f32, f16 or bf16 (the problem's `with_dtype`, where the backend and burn's
//! device support it); parameters and states are f32. Inputs of another dtype are cast.
//! `start` is an int tensor `[B, T]`, nonzero = a new episode. An absent initial state is
//! zeros; its gradient is still computed when the op runs under autodiff (it is a constant
//! then, so burn discards it).

pub mod autodiff;
// burn 0.22 deprecates its ndarray backend (for burn-flex); it is the CPU backend 0.22 ships
#[allow(deprecated)]
mod backend;
pub mod layers;
mod op;
mod wgpu;
#[doc(hidden)]
pub use wgpu::result_copies;

pub use backend::LinrecBackend;
pub use op::LinrecOp;

use crate::efla::{self, Efla};
use crate::ffm::{self, Ffm};
use crate::ops::Problem;
use crate::scan::{self, LinearScan};
use crate::selective::{self, SelectiveScan};
use crate::{Error, Result};
use burn::backend::Dispatch;
use burn::tensor::{Int, Tensor};

/// Open burn's wgpu device on the adapter linrec would pick (a real GPU if there is one,
/// else lavapipe; `LINREC_WGPU_ADAPTER` and the other variables of [`crate::WgpuContext::new`]
/// are not read: cubecl chooses the adapter) and register it with linrec. Call it before
/// anything else opens burn's default wgpu device; call it once and clone the device.
pub fn wgpu_device() -> Result<burn::tensor::Device> {
    let dev = cubecl_wgpu::WgpuDevice::default();
    let setup = cubecl_wgpu::try_init_setup::<cubecl_wgpu::AutoGraphicsApi>(
        &dev,
        cubecl_wgpu::RuntimeOptions::default(),
    )
    .map_err(|e| Error::NoDevice {
        backend: "wgpu",
        reason: format!("burn's wgpu runtime: {e}"),
    })?;
    wgpu::register(dev.clone(), &setup);
    Ok(burn::tensor::Device::from(dev))
}

/// Hand an application's own wgpu setup (instance, adapter, device, queue) to burn and to
/// linrec: returns burn's device on it. Register each setup once and clone the device.
pub fn register_wgpu(setup: cubecl_wgpu::WgpuSetup) -> Result<burn::tensor::Device> {
    let dev = cubecl_wgpu::try_init_device(setup.clone(), cubecl_wgpu::RuntimeOptions::default())
        .map_err(|e| Error::NoDevice {
        backend: "wgpu",
        reason: format!("registering the setup with burn: {e}"),
    })?;
    wgpu::register(dev.clone(), &setup);
    Ok(burn::tensor::Device::from(dev))
}

/// Check that `t` has exactly the shape of argument `name`.
fn shape_is(name: &'static str, dims: &[usize], want: &[usize]) -> Result<()> {
    if dims != want {
        return Err(Error::value(
            name,
            format!("a tensor of shape {want:?}"),
            format!("shape {dims:?}"),
        ));
    }
    Ok(())
}

/// Check that a result's rank `R` is the rank of its shape.
fn rank_is<const R: usize>(name: &'static str, want: &[usize]) -> Result<()> {
    if R != want.len() {
        return Err(Error::value(
            name,
            format!("a result tensor of rank {} (shape {want:?})", want.len()),
            format!("rank {R} asked for"),
        ));
    }
    Ok(())
}

/// One float argument: checked, or zeros of its shape when absent.
fn arg<const D: usize>(
    name: &'static str,
    t: Option<Tensor<D>>,
    want: &[usize],
    device: &burn::tensor::Device,
) -> Result<Tensor<D>> {
    match t {
        Some(t) => {
            shape_is(name, &t.dims(), want)?;
            Ok(t)
        }
        None => {
            rank_is::<D>(name, want)?;
            Ok(Tensor::<D>::zeros(want.to_vec(), device))
        }
    }
}

/// Run `op` on dispatch tensors (inputs in order), returning its two results.
fn run<const O: usize, const F: usize>(
    op: LinrecOp,
    device: burn::tensor::Device,
    inputs: Vec<burn::backend::DispatchTensor>,
    start: Option<Tensor<2, Int>>,
) -> Result<(Tensor<O>, Tensor<F>)> {
    op.validate()?;
    let outs = op.outs();
    rank_is::<O>("output", &outs[0].shape)?;
    rank_is::<F>("final state", &outs[1].shape)?;
    if let Some(s) = &start {
        shape_is("start", &s.dims(), &op.start_shape())?;
    }
    let has_start = start.is_some();
    let start = match start {
        Some(s) => s.into_dispatch(),
        // a placeholder the backends ignore (has_start = false)
        None => Tensor::<1, Int>::zeros([1], &device).into_dispatch(),
    };
    let [i0, i1, i2, i3, i4, i5, i6, i7, i8] = backend::slots(inputs);
    let mut r = Dispatch::linrec_forward(op, i0, i1, i2, i3, i4, i5, i6, i7, i8, start, has_start);
    r.truncate(2); // (a backend may return the packed results after the two)
    let fin = r.pop().expect("two results");
    let out = r.pop().expect("two results");
    Ok((Tensor::from_dispatch(out), Tensor::from_dispatch(fin)))
}

/// The diagonal linear scan (docs/scan.md) on burn tensors, differentiable in `x`, `a` and
/// `h0`: returns `(h, h_final)`. Shapes as in [`crate::scan`]: `x: [B, T, D]` (`[B, T, D, 2]`
/// complex), `a` like `x` or `[D]` (`[D, 2]`) time-invariant, `h0` and `h_final: [B, D]`
/// (`[B, D, 2]`); `start: [B, T]`. `S`, the rank of the states, is inferred from `h0` or the
/// result's type.
pub fn linear_scan<const N: usize, const M: usize, const S: usize>(
    p: &LinearScan,
    x: Tensor<N>,
    a: Tensor<M>,
    h0: Option<Tensor<S>>,
    start: Option<Tensor<2, Int>>,
) -> Result<(Tensor<N>, Tensor<S>)> {
    p.validate()?;
    let dev = x.device();
    shape_is("x", &x.dims(), &p.spec(scan::Arg::X).shape)?;
    shape_is("a", &a.dims(), &p.spec(scan::Arg::A).shape)?;
    let h0 = arg("h0", h0, &p.spec(scan::Arg::H0).shape, &dev)?;
    run(
        LinrecOp::Scan(*p),
        dev,
        vec![x.into_dispatch(), a.into_dispatch(), h0.into_dispatch()],
        start,
    )
}

/// FFM aggregation (docs/ffm.md) on burn tensors, differentiable in `x`, `a`, `b` and `s0`:
/// returns `(s, s_final)` with `x: [B, T, M]`, `a: [M]`, `b: [C]`, `s0` and
/// `s_final: [B, M, C, 2]`, `s: [B, T, M, C, 2]`, `start: [B, T]`.
pub fn ffm(
    p: &Ffm,
    x: Tensor<3>,
    a: Tensor<1>,
    b: Tensor<1>,
    s0: Option<Tensor<4>>,
    start: Option<Tensor<2, Int>>,
) -> Result<(Tensor<5>, Tensor<4>)> {
    p.validate()?;
    let dev = x.device();
    shape_is("x", &x.dims(), &p.spec(ffm::Arg::X).shape)?;
    shape_is("a", &a.dims(), &p.spec(ffm::Arg::A).shape)?;
    shape_is("b", &b.dims(), &p.spec(ffm::Arg::B).shape)?;
    let s0 = arg("s0", s0, &p.spec(ffm::Arg::S0).shape, &dev)?;
    run(
        LinrecOp::Ffm(*p),
        dev,
        vec![
            x.into_dispatch(),
            a.into_dispatch(),
            b.into_dispatch(),
            s0.into_dispatch(),
        ],
        start,
    )
}

/// EFLA / the delta rule (docs/efla.md; recurrent or chunked as the problem says) on burn
/// tensors, differentiable in `q`, `k`, `v`, `beta` and `s0`: returns `(o, s_final)` with
/// `q, k: [B, T, H, K]`, `v, o: [B, T, H, V]`, `beta: [B, T, H]`, `s0`, `s_final:
/// [B, H, K, V]`, `start: [B, T]`.
#[allow(clippy::too_many_arguments)]
pub fn efla(
    p: &Efla,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    beta: Tensor<3>,
    s0: Option<Tensor<4>>,
    start: Option<Tensor<2, Int>>,
) -> Result<(Tensor<4>, Tensor<4>)> {
    p.validate()?;
    let dev = q.device();
    shape_is("q", &q.dims(), &p.spec(efla::Arg::Q).shape)?;
    shape_is("k", &k.dims(), &p.spec(efla::Arg::K).shape)?;
    shape_is("v", &v.dims(), &p.spec(efla::Arg::V).shape)?;
    shape_is("beta", &beta.dims(), &p.spec(efla::Arg::Beta).shape)?;
    let s0 = arg("s0", s0, &p.spec(efla::Arg::S0).shape, &dev)?;
    run(
        LinrecOp::Efla(*p),
        dev,
        vec![
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            beta.into_dispatch(),
            s0.into_dispatch(),
        ],
        start,
    )
}

/// The selective scan's tensors on burn ([`selective_scan`]); shapes as in
/// [`crate::selective::SelectiveInputs`]. `G` is the rank of `bm`/`cm`: 4 (`[B, T, G, N]`,
/// input-dependent) or 2 (`[D, N]`, fixed).
#[derive(Debug, Clone)]
pub struct SelectiveTensors<const G: usize> {
    /// `[B, T, D]`.
    pub u: Tensor<3>,
    /// `[B, T, D]`, before bias and softplus.
    pub delta: Tensor<3>,
    /// `[D, N]`.
    pub a: Tensor<2>,
    /// `[B, T, G, N]` or `[D, N]`.
    pub bm: Tensor<G>,
    /// `[B, T, G, N]` or `[D, N]`.
    pub cm: Tensor<G>,
    /// `[D]` (zeros when absent).
    pub dskip: Option<Tensor<1>>,
    /// `[B, T, D]`: the gate (`out = y * silu(z)`), none when absent.
    pub z: Option<Tensor<3>>,
    /// `[D]` (zeros when absent).
    pub delta_bias: Option<Tensor<1>>,
    /// `[B, D, N]` (zeros when absent).
    pub h0: Option<Tensor<3>>,
    /// `[B, T]`, nonzero = a new episode.
    pub start: Option<Tensor<2, Int>>,
}

/// Mamba's selective scan (docs/selective.md) on burn tensors, differentiable in every float
/// input: returns `(out: [B, T, D], h_final: [B, D, N])`.
pub fn selective_scan<const G: usize>(
    p: &SelectiveScan,
    t: SelectiveTensors<G>,
) -> Result<(Tensor<3>, Tensor<3>)> {
    use selective::Arg;
    p.validate()?;
    let dev = t.u.device();
    shape_is("u", &t.u.dims(), &p.spec(Arg::U).shape)?;
    shape_is("delta", &t.delta.dims(), &p.spec(Arg::Delta).shape)?;
    shape_is("a", &t.a.dims(), &p.spec(Arg::A).shape)?;
    shape_is("bm", &t.bm.dims(), &p.spec(Arg::Bm).shape)?;
    shape_is("cm", &t.cm.dims(), &p.spec(Arg::Cm).shape)?;
    let dskip = arg("dskip", t.dskip, &p.spec(Arg::Dskip).shape, &dev)?;
    let dbias = arg(
        "delta_bias",
        t.delta_bias,
        &p.spec(Arg::DeltaBias).shape,
        &dev,
    )?;
    let h0 = arg("h0", t.h0, &p.spec(Arg::H0).shape, &dev)?;
    let has_z = t.z.is_some();
    let mut ins = vec![
        t.u.into_dispatch(),
        t.delta.into_dispatch(),
        t.a.into_dispatch(),
        t.bm.into_dispatch(),
        t.cm.into_dispatch(),
        dskip.into_dispatch(),
        dbias.into_dispatch(),
        h0.into_dispatch(),
    ];
    if let Some(z) = t.z {
        shape_is("z", &z.dims(), &p.spec(Arg::Z).shape)?;
        ins.push(z.into_dispatch());
    }
    run(LinrecOp::Selective(*p, has_z), dev, ins, t.start)
}
