//! Native CPU kernels of this op (placeholder while the kernels are written: unsupported).

use super::{Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Forward pass on the CPU.
pub fn forward(_p: &Efla, _args: &EflaInputs<&Tensor>) -> Result<EflaOutputs<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}

/// Backward pass on the CPU.
pub fn backward(_p: &Efla, _args: &EflaBackwardInputs<&Tensor>) -> Result<EflaGrads<Tensor>> {
    Err(Error::unsupported("cpu", "not yet written"))
}
