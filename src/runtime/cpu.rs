//! Plumbing shared by the native CPU kernels (`ops::<op>::cpu`): f32 views of host tensors
//! (f16/bf16 storage widened once, f32 borrowed), reset flags as bytes, results rounded to the
//! storage dtype, and the parallel loop. Nothing here knows about a particular operation.
//!
//! The kernels run on rayon's thread pool (its global pool, or the one a caller `install`s).
//! Work is split into independent pieces (rows, channels, chunks) whose results do not depend
//! on which thread runs them, and every reduction across pieces is summed in a fixed order, so
//! results are bitwise identical whatever the number of threads.

use crate::error::Result;
use crate::tensor::{DType, Tensor, TensorData};
use std::borrow::Cow;

/// The elements of a float tensor as f32: borrowed when stored as f32, widened otherwise.
pub(crate) fn f32s(t: &Tensor) -> Cow<'_, [f32]> {
    match t.data() {
        TensorData::F32(v) => Cow::Borrowed(v.as_slice()),
        _ => Cow::Owned(t.to_f32_vec()),
    }
}

/// [`f32s`] of an optional tensor.
pub(crate) fn opt_f32s(t: Option<&Tensor>) -> Option<Cow<'_, [f32]>> {
    t.map(f32s)
}

/// Reset flags as bytes (nonzero = true): borrowed when stored as `u8`.
pub(crate) fn flags(t: Option<&Tensor>) -> Option<Cow<'_, [u8]>> {
    t.map(|t| match t.data() {
        TensorData::U8(v) => Cow::Borrowed(v.as_slice()),
        _ => Cow::Owned(t.to_flags()),
    })
}

/// A result tensor of `shape` in `dtype` from f32 values (moved when `dtype` is f32, rounded to
/// nearest otherwise).
pub(crate) fn output(shape: Vec<usize>, v: Vec<f32>, dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F32 => Tensor::new(shape, v),
        DType::F16 => Tensor::new(shape, v.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => Tensor::new(shape, v.into_iter().map(half::bf16::from_f32).collect()),
        other => Err(crate::Error::value("dtype", "f32, f16 or bf16", other)),
    }
}
