//! The backend extension: [`LinrecBackend`], implemented for burn's CubeCL backend (linrec's
//! WGSL kernels on wgpu devices), its ndarray backend (linrec's native CPU kernels) and
//! `Autodiff<B>` of either (see [`super::autodiff`]).

use super::op::{Exec, Host, LinrecOp, Slot};
use burn::backend::tensor::{FloatTensor, IntTensor};
#[allow(deprecated)] // burn 0.22 deprecates ndarray for burn-flex; ndarray is what 0.22 ships
use burn::backend::NdArray;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::{DType as BDType, TensorData};
use burn_cubecl::CubeBackend;

/// linrec's operations on a burn backend: the extension trait behind [`super::linear_scan`],
/// [`super::ffm()`], [`super::efla()`] and [`super::selective_scan`].
///
/// burn 0.22's extension macro routes tensor arguments one by one (not in a `Vec` or an
/// `Option`), so both methods take the op's differentiable inputs as nine tensors in the
/// order of [`LinrecOp`] (every optional input present; the slots after the op's last input
/// repeat the first and are ignored), the reset flags as an int tensor `[B, T]` (nonzero = a
/// new episode; ignored unless `has_start`). The default bodies run linrec's native CPU
/// kernels on a host copy of the tensors (the path of burn's CPU backends); burn's CubeCL
/// backend runs linrec's WGSL kernels on burn's own wgpu buffers instead. Errors (which the
/// public functions rule out by checking every argument first) panic with linrec's message.
#[backend_extension(Cube, NdArray, Autodiff)]
pub trait LinrecBackend: Backend {
    /// The forward: the op's results in order (sequence output, final state), optionally
    /// followed by both flattened and concatenated in one f32 tensor, where the backend wrote
    /// them that way (the form an autodiff node packs them in; see [`super::autodiff`]).
    #[allow(clippy::too_many_arguments)]
    fn linrec_forward(
        op: LinrecOp,
        i0: FloatTensor<Self>,
        i1: FloatTensor<Self>,
        i2: FloatTensor<Self>,
        i3: FloatTensor<Self>,
        i4: FloatTensor<Self>,
        i5: FloatTensor<Self>,
        i6: FloatTensor<Self>,
        i7: FloatTensor<Self>,
        i8: FloatTensor<Self>,
        start: IntTensor<Self>,
        has_start: bool,
    ) -> Vec<FloatTensor<Self>> {
        let ins = inputs(&op, [i0, i1, i2, i3, i4, i5, i6, i7, i8]);
        host_forward::<Self>(op, ins, has_start.then_some(start))
    }

    /// The backward: the gradient of every input in order, given the forward's inputs (as in
    /// [`Self::linrec_forward`]), its two results `o0, o1` and their gradients `g0, g1`.
    #[allow(clippy::too_many_arguments)]
    fn linrec_backward(
        op: LinrecOp,
        i0: FloatTensor<Self>,
        i1: FloatTensor<Self>,
        i2: FloatTensor<Self>,
        i3: FloatTensor<Self>,
        i4: FloatTensor<Self>,
        i5: FloatTensor<Self>,
        i6: FloatTensor<Self>,
        i7: FloatTensor<Self>,
        i8: FloatTensor<Self>,
        o0: FloatTensor<Self>,
        o1: FloatTensor<Self>,
        g0: FloatTensor<Self>,
        g1: FloatTensor<Self>,
        start: IntTensor<Self>,
        has_start: bool,
    ) -> Vec<FloatTensor<Self>> {
        let ins = inputs(&op, [i0, i1, i2, i3, i4, i5, i6, i7, i8]);
        host_backward::<Self>(
            op,
            ins,
            vec![o0, o1],
            vec![g0, g1],
            has_start.then_some(start),
        )
    }
}

/// The op's inputs out of the nine slots.
pub(crate) fn inputs<T>(op: &LinrecOp, slots: [T; 9]) -> Vec<T> {
    let n = op.ins().len();
    slots.into_iter().take(n).collect()
}

/// The op's inputs in nine slots (the first repeated after the last).
pub(crate) fn slots<T: Clone>(mut ins: Vec<T>) -> [T; 9] {
    let first = ins[0].clone();
    ins.resize(9, first);
    ins.try_into()
        .unwrap_or_else(|_| unreachable!("nine slots"))
}

#[allow(deprecated)]
impl LinrecBackend for NdArray {}

impl LinrecBackend for CubeBackend {
    fn linrec_forward(
        op: LinrecOp,
        i0: FloatTensor<Self>,
        i1: FloatTensor<Self>,
        i2: FloatTensor<Self>,
        i3: FloatTensor<Self>,
        i4: FloatTensor<Self>,
        i5: FloatTensor<Self>,
        i6: FloatTensor<Self>,
        i7: FloatTensor<Self>,
        i8: FloatTensor<Self>,
        start: IntTensor<Self>,
        has_start: bool,
    ) -> Vec<FloatTensor<Self>> {
        let ins = inputs(&op, [i0, i1, i2, i3, i4, i5, i6, i7, i8]);
        let start = has_start.then_some(start);
        if super::wgpu::is_wgpu(&ins[0]) {
            super::wgpu::forward(op, ins, start)
        } else {
            host_forward::<Self>(op, ins, start)
        }
    }

    fn linrec_backward(
        op: LinrecOp,
        i0: FloatTensor<Self>,
        i1: FloatTensor<Self>,
        i2: FloatTensor<Self>,
        i3: FloatTensor<Self>,
        i4: FloatTensor<Self>,
        i5: FloatTensor<Self>,
        i6: FloatTensor<Self>,
        i7: FloatTensor<Self>,
        i8: FloatTensor<Self>,
        o0: FloatTensor<Self>,
        o1: FloatTensor<Self>,
        g0: FloatTensor<Self>,
        g1: FloatTensor<Self>,
        start: IntTensor<Self>,
        has_start: bool,
    ) -> Vec<FloatTensor<Self>> {
        let ins = inputs(&op, [i0, i1, i2, i3, i4, i5, i6, i7, i8]);
        let (outs, grads, start) = (vec![o0, o1], vec![g0, g1], has_start.then_some(start));
        if super::wgpu::is_wgpu(&ins[0]) {
            super::wgpu::backward(op, ins, outs, grads, start)
        } else {
            host_backward::<Self>(op, ins, outs, grads, start)
        }
    }
}

/// burn's dtype for a linrec storage dtype.
pub(crate) fn burn_dtype(d: crate::DType) -> BDType {
    match d {
        crate::DType::F16 => BDType::F16,
        crate::DType::BF16 => BDType::BF16,
        _ => BDType::F32,
    }
}

fn fail(op: &LinrecOp, e: crate::Error) -> ! {
    panic!("linrec {} on burn: {e}", op.name())
}

/// A burn tensor as a linrec host tensor of the slot's shape and dtype (read from the device).
fn to_host<B: Backend>(op: &LinrecOp, t: FloatTensor<B>, s: &Slot) -> crate::Tensor {
    let t = B::float_cast(t, burn_dtype(s.dtype).into());
    let data = burn::tensor::read_sync(B::float_into_data(t))
        .unwrap_or_else(|e| panic!("linrec {}: reading a burn tensor: {e:?}", op.name()));
    crate::Tensor::from_bytes(s.shape.clone(), s.dtype, data.as_bytes())
        .unwrap_or_else(|e| fail(op, e))
}

/// A linrec host tensor as a burn tensor on `device`.
fn from_host<B: Backend>(t: crate::Tensor, device: &B::Device) -> FloatTensor<B> {
    let data = TensorData::from_bytes_vec(
        t.as_bytes().to_vec(),
        t.shape().to_vec(),
        burn_dtype(t.dtype()),
    );
    B::float_from_data(data, device)
}

/// Reset flags as host u8 flags `[B, T]`.
fn flags_host<B: Backend>(op: &LinrecOp, t: IntTensor<B>) -> crate::Tensor {
    let data = burn::tensor::read_sync(B::int_into_data(t))
        .unwrap_or_else(|e| panic!("linrec {}: reading reset flags: {e:?}", op.name()));
    let v: Vec<bool> = data.iter::<i64>().map(|v| v != 0).collect();
    crate::Tensor::flags(op.start_shape(), &v).unwrap_or_else(|e| fail(op, e))
}

/// The forward on linrec's native CPU kernels (one host copy of each tensor each way).
pub(crate) fn host_forward<B: Backend>(
    op: LinrecOp,
    inputs: Vec<FloatTensor<B>>,
    start: Option<IntTensor<B>>,
) -> Vec<FloatTensor<B>> {
    let device = inputs[0].device();
    let ins: Vec<_> = inputs
        .into_iter()
        .zip(op.ins())
        .map(|(t, s)| to_host::<B>(&op, t, &s))
        .collect();
    let st = start.map(|t| flags_host::<B>(&op, t));
    let refs: Vec<_> = ins.iter().collect();
    Host.fwd(&op, &refs, st.as_ref())
        .unwrap_or_else(|e| fail(&op, e))
        .into_iter()
        .map(|t| from_host::<B>(t, &device))
        .collect()
}

/// The backward on linrec's native CPU kernels.
pub(crate) fn host_backward<B: Backend>(
    op: LinrecOp,
    inputs: Vec<FloatTensor<B>>,
    outputs: Vec<FloatTensor<B>>,
    grads: Vec<FloatTensor<B>>,
    start: Option<IntTensor<B>>,
) -> Vec<FloatTensor<B>> {
    let device = inputs[0].device();
    let outs_spec = op.outs();
    let host = |v: Vec<FloatTensor<B>>, slots: &[Slot]| -> Vec<crate::Tensor> {
        v.into_iter()
            .zip(slots)
            .map(|(t, s)| to_host::<B>(&op, t, s))
            .collect()
    };
    let ins = host(inputs, &op.ins());
    let outs = host(outputs, &outs_spec);
    let grads = host(grads, &outs_spec);
    let st = start.map(|t| flags_host::<B>(&op, t));
    let (r1, r2, r3): (Vec<_>, Vec<_>, Vec<_>) = (
        ins.iter().collect(),
        outs.iter().collect(),
        grads.iter().collect(),
    );
    Host.bwd(&op, &r1, &r2, &r3, st.as_ref())
        .unwrap_or_else(|e| fail(&op, e))
        .into_iter()
        .map(|t| from_host::<B>(t, &device))
        .collect()
}
