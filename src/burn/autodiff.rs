//! `Autodiff<B>`: each linrec op as one node of burn's autodiff graph whose backward runs
//! linrec's backward kernels ([`LinrecBackend::linrec_backward`] of the inner backend) and
//! registers the gradient of every tracked input, the initial state and the shared parameters
//! included.
//!
//! burn's autodiff nodes have one output, linrec's ops two (the sequence output and the final
//! state): when an input is tracked, the node's output is the results flattened, in f32, and
//! concatenated (each from a multiple of 64 elements on: `pack_layout`), and the op returns
//! slices of it, so burn routes the gradients of both
//! results (and of any part of them) into one packed gradient for the node. On burn's wgpu
//! devices, when every result is f32, linrec's kernels write the results into one allocation
//! in exactly that layout (the backend returns the whole after the results), so nothing is
//! copied; elsewhere (burn's CPU backends, half-precision results) the results are cast and
//! concatenated, one copy on the device. When no input is tracked the results are returned
//! as they are.

use super::backend::{burn_dtype, inputs, slots, LinrecBackend};
use super::op::{LinrecOp, Slot};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{DType as BDType, FloatDType, Shape, Slice};

/// What the backward needs: the op, the forward's inputs (as the kernels took them: linrec's
/// backward recomputes from the inputs; the linear scan's also reads `h`), its results, the
/// flags and the dtype of each input (gradients are returned in it).
#[derive(Clone, Debug)]
struct State<B: Backend> {
    op: LinrecOp,
    ins: Vec<FloatTensor<B>>,
    outs: Vec<FloatTensor<B>>,
    start: (IntTensor<B>, bool),
    dtypes: Vec<BDType>,
}

#[derive(Debug)]
struct LinrecBackward;

impl<B: LinrecBackend, const N: usize> Backward<B, N> for LinrecBackward {
    type State = State<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let s = ops.state;
        let packed = grads.consume::<B>(&ops.node);
        let g = unpack::<B>(packed, &s.op.outs());
        let [i0, i1, i2, i3, i4, i5, i6, i7, i8] = slots(s.ins);
        let mut outs = s.outs.into_iter();
        let mut g = g.into_iter();
        let (o0, o1) = (outs.next().expect("two"), outs.next().expect("two"));
        let (g0, g1) = (g.next().expect("two"), g.next().expect("two"));
        let (start, has) = s.start;
        let r = B::linrec_backward(
            s.op, i0, i1, i2, i3, i4, i5, i6, i7, i8, o0, o1, g0, g1, start, has,
        );
        for ((parent, gr), dt) in ops.parents.iter().zip(r).zip(s.dtypes) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, cast::<B>(gr, dt));
            }
        }
    }
}

fn float_dtype(d: BDType) -> FloatDType {
    d.into()
}

fn cast<B: Backend>(t: FloatTensor<B>, d: BDType) -> FloatTensor<B> {
    if t.dtype() == d {
        t
    } else {
        B::float_cast(t, float_dtype(d))
    }
}

/// Where each result starts in the packed form (in f32 elements), and its length: results
/// flattened in order, each starting at a multiple of [`PACK_ALIGN`] (zeros between), so that
/// each is a tensor view a device can bind where it lies.
pub(crate) fn pack_layout(slots: &[Slot]) -> (Vec<usize>, usize) {
    let mut at = 0usize;
    let starts = slots
        .iter()
        .map(|s| {
            let start = at.next_multiple_of(PACK_ALIGN);
            at = start + s.shape.iter().product::<usize>();
            start
        })
        .collect();
    (starts, at)
}

/// Alignment of each result in the packed form, in f32 elements: 256 bytes, WebGPU's largest
/// storage-binding offset alignment.
pub(crate) const PACK_ALIGN: usize = 64;

thread_local! {
    /// Autodiff nodes whose results this thread concatenated (see the module docs).
    static CONCATENATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many autodiff nodes of linrec ops this thread packed by concatenating their results
/// (a copy on the device) rather than taking the packed form the backend wrote (burn's wgpu
/// devices with f32 results; the tests check it).
#[doc(hidden)]
pub fn results_concatenated() -> usize {
    CONCATENATED.with(std::cell::Cell::get)
}

/// The results in the packed form ([`pack_layout`]), in f32.
fn pack<B: Backend>(outs: &[FloatTensor<B>], slots: &[Slot]) -> FloatTensor<B> {
    CONCATENATED.with(|c| c.set(c.get() + 1));
    let (starts, _) = pack_layout(slots);
    let mut parts = Vec::new();
    let mut at = 0usize;
    for (t, &start) in outs.iter().zip(&starts) {
        if start > at {
            let dev = t.device();
            parts.push(B::float_zeros(
                Shape::new([start - at]),
                &dev,
                FloatDType::F32,
            ));
        }
        let n = t.shape().num_elements();
        parts.push(cast::<B>(
            B::float_reshape(t.clone(), Shape::new([n])),
            BDType::F32,
        ));
        at = start + n;
    }
    B::float_cat(parts, 0)
}

/// The packed results (or their gradient) apart again: each in its shape and storage dtype.
fn unpack<B: Backend>(packed: FloatTensor<B>, slots: &[Slot]) -> Vec<FloatTensor<B>> {
    let (starts, _) = pack_layout(slots);
    slots
        .iter()
        .zip(starts)
        .map(|(s, at)| {
            let n: usize = s.shape.iter().product();
            let part = B::float_slice(
                packed.clone(),
                &[Slice::new(at as isize, Some((at + n) as isize), 1)],
            );
            let part = B::float_reshape(part, Shape::from(s.shape.clone()));
            cast::<B>(part, burn_dtype(s.dtype))
        })
        .collect()
}

fn fwd<B: LinrecBackend>(
    op: LinrecOp,
    ins: Vec<FloatTensor<B>>,
    start: (IntTensor<B>, bool),
) -> Vec<FloatTensor<B>> {
    let [i0, i1, i2, i3, i4, i5, i6, i7, i8] = slots(ins);
    B::linrec_forward(op, i0, i1, i2, i3, i4, i5, i6, i7, i8, start.0, start.1)
}

fn record<B: LinrecBackend, C: CheckpointStrategy, const N: usize>(
    op: LinrecOp,
    inputs: Vec<FloatTensor<Autodiff<B, C>>>,
    start: (IntTensor<B>, bool),
) -> Vec<FloatTensor<Autodiff<B, C>>> {
    let dtypes: Vec<BDType> = inputs.iter().map(|t| t.primitive().dtype()).collect();
    let (prims, guards): (Vec<_>, Vec<_>) = inputs.into_iter().map(|t| t.into_parts()).unzip();
    let guards: [_; N] = guards
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} inputs"));
    match LinrecBackward
        .prepare::<C>(guards)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let mut outs = fwd::<B>(op, prims.clone(), start.clone());
            // a backend that wrote the results packed already returns the whole after them
            let packed = if outs.len() > op.outs().len() {
                outs.pop().expect("the packed results")
            } else {
                pack::<B>(&outs, &op.outs())
            };
            let state = State {
                op,
                ins: prims,
                outs,
                start,
                dtypes,
            };
            let packed = prep.finish(state, packed);
            unpack::<Autodiff<B, C>>(packed, &op.outs())
        }
        OpsKind::UnTracked(_) => fwd::<B>(op, prims, start)
            .into_iter()
            .take(op.outs().len())
            .map(<Autodiff<B, C> as AutodiffBackend>::from_inner)
            .collect(),
    }
}

impl<B: LinrecBackend, C: CheckpointStrategy> LinrecBackend for Autodiff<B, C> {
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
        let start = (start, has_start);
        match ins.len() {
            3 => record::<B, C, 3>(op, ins, start),
            4 => record::<B, C, 4>(op, ins, start),
            5 => record::<B, C, 5>(op, ins, start),
            8 => record::<B, C, 8>(op, ins, start),
            9 => record::<B, C, 9>(op, ins, start),
            n => unreachable!("linrec ops take 3, 4, 5, 8 or 9 inputs, not {n}"),
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
        // A backward called directly (not through the graph): no second-order gradients.
        let p = |t: FloatTensor<Self>| t.into_primitive();
        B::linrec_backward(
            op,
            p(i0),
            p(i1),
            p(i2),
            p(i3),
            p(i4),
            p(i5),
            p(i6),
            p(i7),
            p(i8),
            p(o0),
            p(o1),
            p(g0),
            p(g1),
            start,
            has_start,
        )
        .into_iter()
        .map(<Self as AutodiffBackend>::from_inner)
        .collect()
    }
}
