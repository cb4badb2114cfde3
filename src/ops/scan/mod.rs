//! Diagonal linear scan (contract: `docs/scan.md`): the first-order recurrence behind S5,
//! LRU and bidirectional SSM layers.
//!
//! ```text
//! h_t = (start_t ? 0 : a_t * h_{t-1}) + x_t,      h_{-1} = h0         (forward)
//! h_t = (start_{t+1} ? 0 : a_t * h_{t+1}) + x_t,  h_T = h0            (reverse)
//! ```
//!
//! `x`, `h`: `[B, T, D]` (complex: `[B, T, D, 2]`); `a`: `[B, T, D]` (time-varying, stored in
//! the problem's dtype) or `[D]` (time-invariant, f32); `h0`, final state: `[B, D]` f32.
//! With `reverse`, `start` still marks episode starts in forward time and the final state is
//! `h_0`.
//!
//! The backward takes the forward's output `h` (it is the saved state sequence; nothing is
//! recomputed) and returns `dx`, `da` (summed over batch and time for a time-invariant `a`)
//! and `dh0` (always returned; it is zero-free only where an `h0` was meaningful).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use super::{arg_names, arg_struct, check_nonzero, host_entry, ArgSpec, Problem};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Sizes and options of one linear scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearScan {
    /// Batch size `B`.
    pub batch: usize,
    /// Sequence length `T`.
    pub len: usize,
    /// Channels `D`.
    pub dim: usize,
    /// Complex `a`, `x`, `h` (interleaved `(re, im)` pairs).
    pub complex: bool,
    /// `a` is `[B, T, D]` (true) or `[D]` (false).
    pub time_varying: bool,
    /// Run from `t = T-1` down to 0.
    pub reverse: bool,
    /// Storage type of `x`, `h` and a time-varying `a` (f32 state and accumulation).
    pub dtype: DType,
}

impl LinearScan {
    /// A real, time-varying, forward, f32 scan of `[batch, len, dim]`.
    pub fn new(batch: usize, len: usize, dim: usize) -> Self {
        LinearScan {
            batch,
            len,
            dim,
            complex: false,
            time_varying: true,
            reverse: false,
            dtype: DType::F32,
        }
    }
    /// Complex data.
    pub fn complex(mut self) -> Self {
        self.complex = true;
        self
    }
    /// A time-invariant `a: [D]`.
    pub fn time_invariant(mut self) -> Self {
        self.time_varying = false;
        self
    }
    /// Scan from the end.
    pub fn reversed(mut self) -> Self {
        self.reverse = true;
        self
    }
    /// Storage dtype of the sequence tensors.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    /// Floats per element (2 when complex).
    pub fn width(&self) -> usize {
        if self.complex {
            2
        } else {
            1
        }
    }
    fn shape(&self, dims: &[usize]) -> Vec<usize> {
        let mut s = dims.to_vec();
        if self.complex {
            s.push(2);
        }
        s
    }
}

arg_names! {
    /// The arguments and results of [`LinearScan`], for [`Problem::spec`].
    pub enum Arg {
        /// `x`: [`ScanInputs::x`].
        X = "x",
        /// `a`: [`ScanInputs::a`].
        A = "a",
        /// `h0`: [`ScanInputs::h0`].
        H0 = "h0",
        /// `start`: [`ScanInputs::start`].
        Start = "start",
        /// `h`: [`ScanOutputs::h`].
        H = "h",
        /// `h_final`: [`ScanOutputs::h_final`].
        HFinal = "h_final",
        /// `grad_h`: [`ScanBackwardInputs::grad_h`].
        GradH = "grad_h",
        /// `grad_final`: [`ScanBackwardInputs::grad_final`].
        GradFinal = "grad_final",
        /// `dx`: [`ScanGrads::dx`].
        Dx = "dx",
        /// `da`: [`ScanGrads::da`].
        Da = "da",
        /// `dh0`: [`ScanGrads::dh0`].
        Dh0 = "dh0",
    }
}

impl Problem for LinearScan {
    type Arg = Arg;
    const NAME: &'static str = "linear_scan";

    fn validate(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("len", self.len)?;
        check_nonzero("dim", self.dim)?;
        if !self.dtype.is_float() {
            return Err(Error::value("dtype", "f32, f16 or bf16", self.dtype));
        }
        Ok(())
    }

    fn spec(&self, arg: Arg) -> ArgSpec {
        let (b, t, d) = (self.batch, self.len, self.dim);
        match arg {
            Arg::X | Arg::H | Arg::GradH | Arg::Dx => ArgSpec::seq(self.shape(&[b, t, d])),
            Arg::A | Arg::Da if self.time_varying => ArgSpec::seq(self.shape(&[b, t, d])),
            Arg::A | Arg::Da => ArgSpec::f32(self.shape(&[d])),
            Arg::H0 | Arg::HFinal | Arg::GradFinal | Arg::Dh0 => ArgSpec::f32(self.shape(&[b, d])),
            Arg::Start => ArgSpec::flags([b, t]),
        }
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

arg_struct! {
    /// Inputs of [`forward`].
    pub struct ScanInputs<F, S> for LinearScan {
        /// `[B, T, D]` inputs.
        req x: F => X,
        /// Transition: `[B, T, D]` or `[D]`.
        req a: F => A,
        /// Initial state `[B, D]` (zeros when absent).
        opt h0: F => H0,
        /// Episode starts `[B, T]`.
        opt start: S => Start,
    }
}

arg_struct! {
    /// Results of [`forward`].
    pub struct ScanOutputs<F> for LinearScan {
        /// Every state `[B, T, D]`.
        req h => H,
        /// The final state `[B, D]` (`h_{T-1}`, or `h_0` when reversed).
        req h_final => HFinal,
    }
}

arg_struct! {
    /// Inputs of [`backward`].
    pub struct ScanBackwardInputs<F, S> for LinearScan {
        /// The forward's transition.
        req a: F => A,
        /// The forward's output `h`.
        req h: F => H,
        /// The forward's initial state.
        opt h0: F => H0,
        /// The forward's episode starts.
        opt start: S => Start,
        /// Gradient of the loss with respect to `h`.
        req grad_h: F => GradH,
        /// Gradient with respect to the final state.
        opt grad_final: F => GradFinal,
    }
}

arg_struct! {
    /// Results of [`backward`].
    pub struct ScanGrads<F> for LinearScan {
        /// Gradient with respect to `x`.
        req dx => Dx,
        /// Gradient with respect to `a` (same shape as `a`).
        req da => Da,
        /// Gradient with respect to `h0` `[B, D]`.
        req dh0 => Dh0,
    }
}

host_entry! {
    /// Run the scan on `dev`: validates, uploads, runs, downloads.
    pub fn forward(LinearScan, ScanInputs -> ScanOutputs)
}

host_entry! {
    /// The backward pass on `dev`.
    pub fn backward(LinearScan, ScanBackwardInputs -> ScanGrads)
}
