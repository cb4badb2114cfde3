//! Launch code for the CUDA linear scan (`kernels/scan/`).

use super::{LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::{Error, Result};
use crate::runtime::cuda::{CuRef, CuTensor, CudaBackend};

/// Forward pass on the caller's device buffers.
pub fn forward(
    be: &CudaBackend,
    p: &LinearScan,
    inp: &ScanInputs<CuRef<'_>>,
) -> Result<ScanOutputs<CuTensor>> {
    let _ = (be, p, inp);
    Err(Error::unsupported("cuda", "linear_scan forward (kernel not written yet)"))
}

/// Backward pass on the caller's device buffers.
pub fn backward(
    be: &CudaBackend,
    p: &LinearScan,
    inp: &ScanBackwardInputs<CuRef<'_>>,
) -> Result<ScanGrads<CuTensor>> {
    let _ = (be, p, inp);
    Err(Error::unsupported("cuda", "linear_scan backward (kernel not written yet)"))
}
