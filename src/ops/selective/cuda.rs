//! Launch code for the CUDA selective scan. No CUDA kernel exists yet: both entry points
//! return [`Error::Unsupported`] after validating their arguments.

use super::{
    SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{CuRef, CuTensor, CudaBackend};

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &SelectiveScan,
    inp: &SelectiveInputs<CuRef<'_>>,
) -> Result<SelectiveOutputs<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "selective_scan forward (kernel not written yet)",
    ))
}

/// Backward pass on the caller's device buffers.
pub fn backward(
    be: &CudaBackend,
    p: &SelectiveScan,
    inp: &SelectiveBackwardInputs<CuRef<'_>>,
) -> Result<SelectiveGrads<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "selective_scan backward (kernel not written yet)",
    ))
}
