//! Native CPU kernels of this op (placeholder while the kernels are written: unsupported).

use super::{
    SelectiveBackwardInputs, SelectiveGrads, SelectiveInputs, SelectiveOutputs, SelectiveScan,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Forward pass on the CPU.
pub fn forward(
    _p: &SelectiveScan,
    _args: &SelectiveInputs<&Tensor>,
) -> Result<SelectiveOutputs<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}

/// Backward pass on the CPU.
pub fn backward(
    _p: &SelectiveScan,
    _args: &SelectiveBackwardInputs<&Tensor>,
) -> Result<SelectiveGrads<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}
