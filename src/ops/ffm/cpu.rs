//! Native CPU kernels of this op (placeholder while the kernels are written: unsupported).

use super::{Ffm, FfmBackwardInputs, FfmGrads, FfmInputs, FfmOutputs};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Forward pass on the CPU.
pub fn forward(_p: &Ffm, _args: &FfmInputs<&Tensor>) -> Result<FfmOutputs<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}

/// Backward pass on the CPU.
pub fn backward(_p: &Ffm, _args: &FfmBackwardInputs<&Tensor>) -> Result<FfmGrads<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}
