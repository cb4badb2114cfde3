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
//! Results: cubecl 0.11 cannot adopt a foreign `wgpu::Buffer` as a tensor handle, so linrec's
//! kernels write their results into buffers cubecl allocates: around each call a result
//! placement (`runtime::wgpu::with_results`) hands linrec's ops, for every result, a fresh
//! cubecl tensor's buffer range, which the op clears on the queue (a fill, as wgpu does for a
//! buffer of linrec's own) and its kernels then write. The tensors returned to burn are those
//! ranges: nothing is copied, nothing touches the host. (A result an op did not place would be
//! copied once on the device; [`result_copies`] counts those, and the tests hold it at 0.)

use super::backend::burn_dtype;
use super::op::{Exec, Gpu, LinrecOp, Slot};
use crate::{GpuRef, GpuTensor, WgpuContext};
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{IntDType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::CubeDevice;
use cubecl_runtime::client::Client;
use cubecl_runtime::server::Handle;
use cubecl_wgpu::{AutoCompiler, WgpuDevice, WgpuResource, WgpuServer};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
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
    handle_resource(&t.client, t.handle.clone(), op.name())
}

/// The wgpu buffer range behind a cubecl handle, pinned while the result lives.
fn handle_resource(client: &Client, handle: Handle, name: &str) -> Managed {
    client
        .get_resource::<WgpuServer<AutoCompiler>>(handle)
        .unwrap_or_else(|e| panic!("linrec {name}: burn buffer: {e:?}"))
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

thread_local! {
    /// Results copied on the device because an op did not place them (see the module docs).
    static COPIES: Cell<usize> = const { Cell::new(0) };
}

/// How many results of linrec ops on burn's wgpu devices this thread copied into a cubecl
/// buffer instead of the kernels writing them there (0 unless an op misses the placement;
/// the tests check it).
#[doc(hidden)]
pub fn result_copies() -> usize {
    COPIES.with(Cell::get)
}

/// Where [`placed`] puts an op's results.
enum Layout {
    /// Each in a dedicated cubecl allocation of its own.
    Separate,
    /// All in one dedicated allocation, in the packed form an autodiff node takes
    /// ([`super::autodiff::pack_layout`]: flattened, f32, each from a 256-byte boundary on,
    /// zeros between), as views of it; the whole is returned too.
    Packed,
}

/// Run `run` (a linrec wgpu op) with its results placed in fresh cubecl tensors on `like`'s
/// device, and return those tensors in the order of the op's results (with `Packed`, followed
/// by the whole allocation as one flat f32 tensor).
fn placed(
    ctx: &Arc<WgpuContext>,
    op: &LinrecOp,
    like: &CubeTensor,
    inputs: &[&Managed],
    layout: Layout,
    run: impl FnOnce() -> Vec<GpuTensor>,
) -> Vec<CubeTensor> {
    // (tensor, its buffer and byte offset there); the resources stay pinned in `keep`
    type Made = Rc<RefCell<Vec<(CubeTensor, wgpu::Buffer, u64)>>>;
    let made: Made = Rc::default();
    let keep: Rc<RefCell<Vec<Managed>>> = Rc::default();
    let (client, name, m, kp) = (like.client.clone(), op.name(), made.clone(), keep.clone());
    let alloc = move |bytes: u64| {
        let handle = client.memory_dedicated_allocation((), |_| client.empty(bytes as usize));
        let r = handle_resource(&client, handle.clone(), name);
        (handle, r)
    };
    let view = move |handle: &Handle, at: u64, bytes: u64, total: u64| {
        handle
            .clone()
            .offset_start(at)
            .offset_end(total - at - bytes)
    };
    let tensor = {
        let (client, device) = (like.client.clone(), like.device.clone());
        move |handle, shape: &[usize], dtype| {
            CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                Shape::from(shape.to_vec()),
                handle,
                burn_dtype(dtype),
            )
        }
    };
    // A kernel cannot write one range of a buffer while it reads another range of it (wgpu:
    // a read-write storage binding excludes every other use of the buffer in a dispatch), and
    // cubecl's pools pack tensors into shared buffers: results go into dedicated cubecl
    // allocations (buffers of their own, outside the pools, freed with their tensors), as
    // linrec's own results do. One in an input's buffer all the same would fall back to
    // linrec's own buffer and one copy.
    let taken: Vec<wgpu::Buffer> = inputs.iter().map(|r| r.resource().buffer.clone()).collect();
    let outs = op.outs();
    let (starts, len) = super::autodiff::pack_layout(&outs);
    // (shape, byte offset in the packed allocation, bytes) of each result
    let slots: Vec<(Vec<usize>, u64, u64)> = outs
        .iter()
        .zip(&starts)
        .map(|(s, &at)| {
            let n: usize = s.shape.iter().product();
            (s.shape.clone(), 4 * at as u64, 4 * n as u64)
        })
        .collect();
    let total = 4 * len.max(1) as u64;
    // the packed allocation: its handle, buffer and byte offset
    type Whole = Rc<RefCell<Option<(Handle, wgpu::Buffer, u64)>>>;
    let whole: Whole = Rc::default();
    let w = whole.clone();
    let mut used = vec![false; slots.len()];
    let tensor_p = tensor.clone();
    // the bytes between the packed results, zeroed as the concatenation has them
    let gaps: Vec<(u64, u64)> = slots
        .iter()
        .zip(slots.iter().skip(1).map(|s| s.1).chain([total]))
        .map(|(s, next)| (s.1 + s.2, next))
        .filter(|(a, b)| a < b)
        .collect();
    let cx = ctx.clone();
    let out = crate::runtime::wgpu::with_results(
        move |shape, dtype, bytes| {
            let (t, buffer, at) = match layout {
                Layout::Separate => {
                    let (handle, r) = alloc(bytes);
                    let (buffer, at) = (r.resource().buffer.clone(), r.resource().offset);
                    kp.borrow_mut().push(r);
                    (tensor_p(handle, shape, dtype), buffer, at)
                }
                Layout::Packed => {
                    // the first unused result slot of this shape (every result is f32)
                    let k = (0..slots.len())
                        .find(|&k| !used[k] && slots[k].0 == shape && dtype == crate::DType::F32)?;
                    used[k] = true;
                    let at = slots[k].1;
                    if w.borrow().is_none() {
                        let (handle, r) = alloc(total);
                        let (buffer, base) = (r.resource().buffer.clone(), r.resource().offset);
                        kp.borrow_mut().push(r);
                        if !gaps.is_empty() {
                            let _gl = cx.gl_guard();
                            let mut enc = cx.device.create_command_encoder(&Default::default());
                            for &(a, b) in &gaps {
                                enc.clear_buffer(&buffer, base + a, Some(b - a));
                            }
                            cx.queue.submit([enc.finish()]);
                        }
                        *w.borrow_mut() = Some((handle, buffer, base));
                    }
                    let (handle, buffer, base) = w.borrow().clone()?;
                    let t = tensor_p(view(&handle, at, slots[k].2, total), shape, dtype);
                    (t, buffer, base + at)
                }
            };
            if taken.contains(&buffer) {
                return None;
            }
            m.borrow_mut().push((t, buffer.clone(), at));
            Some((buffer, at))
        },
        run,
    );
    // (the kernels are submitted: the placed ranges need no pinning once this returns)
    drop(keep);
    let made = made.take();
    let mut res: Vec<CubeTensor> = out
        .into_iter()
        .map(|g| {
            made.iter()
                .find(|(_, b, at)| *b == g.buffer && *at == g.offset)
                .map(|(t, _, _)| t.clone())
                .unwrap_or_else(|| copy_result(ctx, op, like, &g))
        })
        .collect();
    // the whole allocation, when every result went into it
    if let (Some((handle, _, _)), true) = (whole.take(), made.len() == res.len()) {
        res.push(tensor(handle, &[total as usize / 4], crate::DType::F32));
    }
    res
}

/// A result linrec allocated itself, copied once on the device (same queue) into a buffer
/// cubecl allocates.
fn copy_result(ctx: &WgpuContext, op: &LinrecOp, like: &CubeTensor, g: &GpuTensor) -> CubeTensor {
    COPIES.with(|c| c.set(c.get() + 1));
    let _gl = ctx.gl_guard();
    let bytes = crate::runtime::wgpu::buffer_size(g.bytes() as u64);
    let t = CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(g.shape.clone()),
        like.client.empty(bytes as usize),
        burn_dtype(g.dtype),
    );
    if g.bytes() > 0 {
        let m = resource(op, &t);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("linrec result to burn"),
            });
        let r = m.resource();
        enc.copy_buffer_to_buffer(&g.buffer, g.offset, &r.buffer, r.offset, bytes);
        ctx.queue.submit([enc.finish()]);
    }
    t
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
    let taken: Vec<&Managed> = res.iter().chain(&sres).collect();
    let layout = if op.outs().iter().all(|s| s.dtype == crate::DType::F32) {
        Layout::Packed
    } else {
        Layout::Separate
    };
    placed(&ctx, &op, &ins[0], &taken, layout, || {
        Gpu(&ctx)
            .fwd(&op, &refs, sref)
            .unwrap_or_else(|e| panic!("linrec {} on burn wgpu: {e}", op.name()))
    })
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
    let taken: Vec<&Managed> = ri.iter().chain(&ro).chain(&rg).chain(&sres).collect();
    placed(&ctx, &op, &ins[0], &taken, Layout::Separate, || {
        Gpu(&ctx)
            .bwd(
                &op,
                &refs(&ri, &islots),
                &refs(&ro, &oslots),
                &refs(&rg, &oslots),
                sref,
            )
            .unwrap_or_else(|e| panic!("linrec {} backward on burn wgpu: {e}", op.name()))
    })
}
