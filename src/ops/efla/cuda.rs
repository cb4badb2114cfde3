//! Launch code for the CUDA EFLA / delta rule (`kernels/efla/`). The kernels are not written
//! yet: both entry points return [`Error::Unsupported`] after validating their arguments.

use super::{Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::cuda::{CuRef, CuTensor, CudaBackend};

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaInputs<CuRef<'_>>,
) -> Result<EflaOutputs<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "efla forward (kernel not written yet)",
    ))
}

/// Backward pass on the caller's device buffers.
pub fn backward(
    be: &CudaBackend,
    p: &Efla,
    inp: &EflaBackwardInputs<CuRef<'_>>,
) -> Result<EflaGrads<CuTensor>> {
    let _ = be;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "cuda",
        "efla backward (kernel not written yet)",
    ))
}
