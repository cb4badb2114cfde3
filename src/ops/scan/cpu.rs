//! Native CPU kernels of this op (placeholder while the kernels are written: unsupported).

use super::{LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Forward pass on the CPU.
pub fn forward(_p: &LinearScan, _args: &ScanInputs<&Tensor>) -> Result<ScanOutputs<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}

/// Backward pass on the CPU.
pub fn backward(_p: &LinearScan, _args: &ScanBackwardInputs<&Tensor>) -> Result<ScanGrads<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}
