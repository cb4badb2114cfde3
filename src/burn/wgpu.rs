//! burn's wgpu devices: linrec's WGSL kernels on burn's own wgpu device, queue and buffers.
//!
//! A tensor of burn's CubeCL backend on a wgpu device is a range of a `wgpu::Buffer` that
//! cubecl manages; `Client::get_resource` hands out that buffer and offset
//! (`cubecl_wgpu::WgpuResource`), pinned for as long as the returned `ManagedResource` lives.
//! linrec binds those ranges directly (`GpuRef`), so inputs are never copied. Ordering: fetching
//! the resources makes cubecl record the work pending on them, and `Client::flush` submits it
//! to the queue; linrec then records and submits its kernels on that same queue (its
//! `WgpuContext` is built on burn's device and queue), so they run after everything burn
//! queued before and before everything burn queues after.
//!
//! The one copy: linrec's zero-copy API allocates its results itself, and cubecl 0.11 has no
//! public way to adopt a foreign `wgpu::Buffer` as a tensor handle, so each result is copied
//! once, device to device on the same queue, into a buffer cubecl allocated
//! (`copy_buffer_to_buffer`, recorded in the same submission order). No data touches the host.

use super::backend::burn_dtype;
use super::op::{Exec, Gpu, LinrecOp, Slot};
use crate::{GpuRef, GpuTensor, WgpuContext};
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{IntDType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::CubeDevice;
use cubecl_wgpu::{AutoCompiler, WgpuDevice, WgpuResource, WgpuServer};
use std::sync::{Arc, Mutex, PoisonError};

type Managed = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// The linrec contexts of the burn wgpu devices registered with linrec.
static CONTEXTS: Mutex<Vec<(WgpuDevice, Arc<WgpuContext>)>> = Mutex::new(Vec::new());

/// Register burn's wgpu device `device`, whose device and queue are `setup`'s: linrec's
/// kernels then run on it. Called by [`super::wgpu_device`] and [`super::register_wgpu`].
pub(crate) fn register(device: WgpuDevice, setup: &cubecl_wgpu::WgpuSetup) -> Arc<WgpuContext> {
    let ctx = WgpuContext::from_device(
        setup.device.clone(),
        setup.queue.clone(),
        setup.adapter.get_info(),
    );
    let mut c = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    c.retain(|(d, _)| *d != device);
    c.push((device, ctx.clone()));
    ctx
}

/// linrec's context on burn's wgpu device `device`, if it was registered.
pub(crate) fn context(device: &WgpuDevice) -> Option<Arc<WgpuContext>> {
    CONTEXTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, c)| c.clone())
}

/// Whether a CubeCL tensor lives on a wgpu device.
pub(crate) fn is_wgpu(t: &CubeTensor) -> bool {
    matches!(t.device, CubeDevice::Wgpu(_))
}

fn ctx_of(op: &LinrecOp, t: &CubeTensor) -> Arc<WgpuContext> {
    let CubeDevice::Wgpu(d) = &t.device else {
        unreachable!("checked by is_wgpu")
    };
    context(d).unwrap_or_else(|| {
        panic!(
            "linrec {}: burn wgpu device {d:?} is not registered with linrec: create it with \
             linrec::burn::wgpu_device() or register its setup with linrec::burn::register_wgpu() \
             (cubecl does not hand out the wgpu device of an existing runtime)",
            op.name()
        )
    })
}

/// A float input as a contiguous tensor of the slot's dtype.
fn prepare(t: CubeTensor, s: &Slot) -> CubeTensor {
    let want = burn_dtype(s.dtype);
    let t = if t.dtype != want {
        CubeBackend::float_cast(t, want.into())
    } else {
        t
    };
    burn_cubecl::kernel::into_contiguous(t)
}

/// Reset flags as contiguous 32-bit words (0 or nonzero), the form linrec's WGSL reads.
fn prepare_flags(t: CubeTensor) -> CubeTensor {
    let t = if t.dtype.size() != 4 {
        CubeBackend::int_cast(t, IntDType::I32)
    } else {
        t
    };
    burn_cubecl::kernel::into_contiguous(t)
}

fn resource(op: &LinrecOp, t: &CubeTensor) -> Managed {
    t.client
        .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
        .unwrap_or_else(|e| panic!("linrec {}: burn buffer: {e:?}", op.name()))
}

fn refs<'a>(m: &'a [Managed], slots: &[Slot]) -> Vec<GpuRef<'a>> {
    m.iter()
        .zip(slots)
        .map(|(m, s)| gpu_ref(m, s.shape.iter().product(), s.dtype))
        .collect()
}

fn gpu_ref<'a>(m: &'a Managed, len: usize, dtype: crate::DType) -> GpuRef<'a> {
    let r = m.resource();
    GpuRef::new(&r.buffer, r.offset, len, dtype)
}

/// Move linrec's results into buffers cubecl allocates on the same device (one device-side
/// copy each, submitted on the shared queue), as CubeCL tensors.
fn adopt(
    ctx: &WgpuContext,
    op: &LinrecOp,
    like: &CubeTensor,
    out: Vec<GpuTensor>,
) -> Vec<CubeTensor> {
    let _gl = ctx.gl_guard();
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("linrec results to burn"),
        });
    let mut keep = Vec::with_capacity(out.len());
    let tensors = out
        .iter()
        .map(|g| {
            let bytes = (g.bytes() as u64).div_ceil(4) * 4;
            let handle = like.client.empty(bytes.max(4) as usize);
            let t = CubeTensor::new_contiguous(
                like.client.clone(),
                like.device.clone(),
                Shape::from(g.shape.clone()),
                handle,
                burn_dtype(g.dtype),
            );
            let m = resource(op, &t);
            if bytes > 0 {
                let r = m.resource();
                enc.copy_buffer_to_buffer(&g.buffer, 0, &r.buffer, r.offset, bytes);
            }
            keep.push(m);
            t
        })
        .collect();
    ctx.queue.submit([enc.finish()]);
    drop(keep);
    tensors
}

fn flush(op: &LinrecOp, t: &CubeTensor) {
    t.client
        .flush()
        .unwrap_or_else(|e| panic!("linrec {}: flushing burn's queue: {e:?}", op.name()));
}

/// The forward on burn's wgpu buffers.
pub(crate) fn forward(
    op: LinrecOp,
    inputs: Vec<FloatTensor<CubeBackend>>,
    start: Option<IntTensor<CubeBackend>>,
) -> Vec<FloatTensor<CubeBackend>> {
    let ctx = ctx_of(&op, &inputs[0]);
    let slots = op.ins();
    let ins: Vec<CubeTensor> = inputs
        .into_iter()
        .zip(&slots)
        .map(|(t, s)| prepare(t, s))
        .collect();
    let start = start.map(prepare_flags);
    let res: Vec<Managed> = ins.iter().map(|t| resource(&op, t)).collect();
    let sres = start.as_ref().map(|t| resource(&op, t));
    flush(&op, &ins[0]);
    let refs = refs(&res, &slots);
    let sref = sres
        .as_ref()
        .map(|m| gpu_ref(m, op.start_shape().iter().product(), crate::DType::U32));
    let out = Gpu(&ctx)
        .fwd(&op, &refs, sref)
        .unwrap_or_else(|e| panic!("linrec {} on burn wgpu: {e}", op.name()));
    adopt(&ctx, &op, &ins[0], out)
}

/// The backward on burn's wgpu buffers.
pub(crate) fn backward(
    op: LinrecOp,
    inputs: Vec<FloatTensor<CubeBackend>>,
    outputs: Vec<FloatTensor<CubeBackend>>,
    grads: Vec<FloatTensor<CubeBackend>>,
    start: Option<IntTensor<CubeBackend>>,
) -> Vec<FloatTensor<CubeBackend>> {
    let ctx = ctx_of(&op, &inputs[0]);
    let (islots, oslots) = (op.ins(), op.outs());
    let prep = |v: Vec<CubeTensor>, slots: &[Slot]| -> Vec<CubeTensor> {
        v.into_iter()
            .zip(slots)
            .map(|(t, s)| prepare(t, s))
            .collect()
    };
    let ins = prep(inputs, &islots);
    let outs = prep(outputs, &oslots);
    let grads = prep(grads, &oslots);
    let start = start.map(prepare_flags);
    let res = |v: &[CubeTensor]| -> Vec<Managed> { v.iter().map(|t| resource(&op, t)).collect() };
    let (ri, ro, rg) = (res(&ins), res(&outs), res(&grads));
    let sres = start.as_ref().map(|t| resource(&op, t));
    flush(&op, &ins[0]);
    let sref = sres
        .as_ref()
        .map(|m| gpu_ref(m, op.start_shape().iter().product(), crate::DType::U32));
    let out = Gpu(&ctx)
        .bwd(
            &op,
            &refs(&ri, &islots),
            &refs(&ro, &oslots),
            &refs(&rg, &oslots),
            sref,
        )
        .unwrap_or_else(|e| panic!("linrec {} backward on burn wgpu: {e}", op.name()));
    adopt(&ctx, &op, &ins[0], out)
}
