//! Launch code for the WGSL EFLA / delta rule (`shaders/efla/`).

use super::{Efla, EflaBackwardInputs, EflaGrads, EflaInputs, EflaOutputs};
use crate::error::{Error, Result};
use crate::ops::Problem;
use crate::runtime::wgpu::{GpuRef, GpuTensor, WgpuContext};

/// Forward pass on the caller's buffers.
pub fn forward(
    ctx: &WgpuContext,
    p: &Efla,
    inp: &EflaInputs<GpuRef<'_>>,
) -> Result<EflaOutputs<GpuTensor>> {
    let _ = ctx;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "wgpu",
        "efla forward (kernel not written yet)",
    ))
}

/// Backward pass on the caller's buffers.
pub fn backward(
    ctx: &WgpuContext,
    p: &Efla,
    inp: &EflaBackwardInputs<GpuRef<'_>>,
) -> Result<EflaGrads<GpuTensor>> {
    let _ = ctx;
    p.validate()?;
    inp.check(p)?;
    Err(Error::unsupported(
        "wgpu",
        "efla backward (kernel not written yet)",
    ))
}
