//! Launch code for the CUDA FFM aggregation (`kernels/ffm/`). The kernels are not written
//! yet: both entry points validate their arguments and return [`Error::Unsupported`].

use super::{Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{CuRef, CuTensor, CudaBackend};

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmInputs<CuRef<'_>>,
) -> Result<FfmOutputs<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "ffm forward (kernel not written yet)",
    ))
}

/// Backward pass on the caller's device buffers (recomputes the states from `x`).
pub fn backward(
    be: &CudaBackend,
    p: &Ffm,
    inp: &FfmBackwardInputs<CuRef<'_>>,
) -> Result<FfmGrads<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "ffm backward (kernel not written yet)",
    ))
}
