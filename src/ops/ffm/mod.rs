//! FFM aggregation (SPEC §1): the complex, decaying, oscillating memory of Fast and Forgetful
//! Memory (Morad et al., NeurIPS 2023).
//!
//! ```text
//! gamma[m][c] = exp(a[m] + i b[c])
//! S_t[m][c]   = (start_t ? 0 : gamma[m][c] * S_{t-1}[m][c]) + x_t[m]      (x broadcast over c)
//! S_{-1}      = s0
//! ```
//!
//! `x`: `[B, T, M]`; `a`: `[M]` (log-magnitude of the decay, expected `<= 0`; it is not
//! checked, a positive `a` simply grows the state); `b`: `[C]` (angular frequency);
//! `s0`, final state: `[B, M, C, 2]`; `S`: `[B, T, M, C, 2]` (complex, interleaved
//! `(re, im)`). Everything is f32.
//!
//! The backward takes the forward's *inputs* (`x`, `a`, `b`, `s0`, `start`) instead of its
//! output `S` and recomputes the states it needs: `S` is `C` times (and, being complex, twice)
//! larger than `x`, so reading `x` again moves `2C` times fewer bytes than reading `S`, and the
//! caller need not keep `S` alive for the backward. It returns `dx`, `da`, `db` and `ds0`
//! (always; it is the gradient with respect to a zero initial state when `s0` was absent).
//!
//! Kernels never form `gamma^{-t}`: they scan, and the power `gamma^n` of a span of `n` steps
//! is `exp(n a) (cos(n b), sin(n b))` with `n b` formed from the integer `n`.
//!
//! # Backends
//!
//! - [`reference`](mod@reference): f64, any size.
//! - `wgpu` (`shaders/ffm/`): a chunked scan inside each workgroup (one workgroup per batch
//!   row and block of channels, a loop over chunks of time carrying the state), `S` written
//!   once with contiguous stores. The backward first stores the state entering each chunk
//!   (a pass that reads only `x`), then recomputes each chunk's states from it, runs the
//!   reverse scan, and reduces `da`/`db` in a fixed order (bitwise reproducible, no atomics).
//!   The forward takes any `C`; the backward needs `C <= 256` (it sums `dx` over `c` inside a
//!   workgroup) and 10 storage buffers per shader stage, and returns
//!   [`Error::Unsupported`](crate::Error::Unsupported) / [`Error::Limit`](crate::Error::Limit)
//!   otherwise. Rows are split over several dispatches when a binding would exceed the
//!   device's limit. Measured against the reference on lavapipe: `rel <= 3e-6` for `T = 4096`
//!   and `T = 65536`, non-decaying (`a = 0`) channels included.
//! - `cuda` (`kernels/ffm/ffm.cu`): the same algorithm organised for NVIDIA GPUs. A thread owns
//!   two adjacent context channels of one memory channel when `C` is even (one 16-byte store
//!   of `S` per step; 8 bytes when `C` is odd); a block of 256 threads holds 1 to 256 such
//!   columns and splits each chunk of time over its remaining threads, scanning lanes with
//!   warp shuffles, then warp-groups through shared memory; the block width is chosen per
//!   problem so that an H100's SMs all get work ([`cuda::layout`]). The backward
//!   checkpoints, recomputes and reduces as on wgpu (fixed-order sums, no atomics: bitwise
//!   reproducible), and takes any `C` (a memory channel's context may span several blocks;
//!   their `dx` partials are summed in order). The carried state meets one closed-form power
//!   per chunk (not one per group of lanes), which keeps long undamped sequences accurate.
//!   Measured on linrec's CUDA emulator: `rel <= 2e-6` for `T = 4096` and `rel <= 3e-6` for
//!   `T = 65536`, non-decaying (`a = 0`) channels included.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use super::{arg_struct, check_nonzero, host_entry, ArgSpec, Problem};
use crate::error::Result;

/// Sizes of one FFM aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ffm {
    /// Batch size `B` (independent rows).
    pub batch: usize,
    /// Sequence length `T`.
    pub len: usize,
    /// Memory size `M`: the number of input channels `x_t[m]`, each with its own decay `a[m]`.
    pub memory: usize,
    /// Context size `C`: the number of frequencies `b[c]` every memory channel is kept at.
    pub context: usize,
}

impl Ffm {
    /// An aggregation of `x: [batch, len, memory]` into `[batch, len, memory, context]`
    /// complex states.
    pub fn new(batch: usize, len: usize, memory: usize, context: usize) -> Self {
        Ffm {
            batch,
            len,
            memory,
            context,
        }
    }

    /// `M * C`: the number of complex state channels of one row.
    pub fn channels(&self) -> usize {
        self.memory * self.context
    }
}

impl Problem for Ffm {
    const NAME: &'static str = "ffm";

    fn validate(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("len", self.len)?;
        check_nonzero("memory", self.memory)?;
        check_nonzero("context", self.context)?;
        Ok(())
    }

    fn spec(&self, arg: &str) -> ArgSpec {
        let (b, t, m, c) = (self.batch, self.len, self.memory, self.context);
        match arg {
            "x" | "dx" => ArgSpec::seq([b, t, m]),
            "a" | "da" => ArgSpec::f32([m]),
            "b" | "db" => ArgSpec::f32([c]),
            "s0" | "s_final" | "grad_final" | "ds0" => ArgSpec::f32([b, m, c, 2]),
            "s" | "grad_s" => ArgSpec::seq([b, t, m, c, 2]),
            "start" => ArgSpec::flags([b, t]),
            _ => unreachable!("ffm has no argument `{arg}`"),
        }
    }
}

arg_struct! {
    /// Inputs of [`forward`].
    pub struct FfmInputs<F, S> {
        /// Inputs `[B, T, M]`, broadcast over the context axis.
        req x: F,
        /// Log-magnitude of the decay `[M]` (expected `<= 0`).
        req a: F,
        /// Angular frequency `[C]`.
        req b: F,
        /// Initial state `[B, M, C, 2]` (zeros when absent).
        opt s0: F,
        /// Episode starts `[B, T]` (nonzero: step `t` drops the carried state).
        opt start: S,
    }
}

arg_struct! {
    /// Results of [`forward`].
    pub struct FfmOutputs<F> {
        /// Every state `[B, T, M, C, 2]`.
        req s,
        /// The state after step `T-1`, `[B, M, C, 2]`.
        req s_final,
    }
}

arg_struct! {
    /// Inputs of [`backward`]: the forward's inputs (the states are recomputed from `x`, which
    /// moves `2C` times fewer bytes than reading `S`) and the gradients of its outputs.
    pub struct FfmBackwardInputs<F, S> {
        /// The forward's `x`.
        req x: F,
        /// The forward's `a`.
        req a: F,
        /// The forward's `b`.
        req b: F,
        /// The forward's initial state.
        opt s0: F,
        /// The forward's episode starts.
        opt start: S,
        /// Gradient of the loss with respect to `S`, `[B, T, M, C, 2]`.
        req grad_s: F,
        /// Gradient with respect to the final state, `[B, M, C, 2]`.
        opt grad_final: F,
    }
}

arg_struct! {
    /// Results of [`backward`].
    pub struct FfmGrads<F> {
        /// Gradient with respect to `x`, `[B, T, M]`.
        req dx,
        /// Gradient with respect to `a`, `[M]`.
        req da,
        /// Gradient with respect to `b`, `[C]`.
        req db,
        /// Gradient with respect to `s0`, `[B, M, C, 2]`.
        req ds0,
    }
}

host_entry! {
    /// Run the aggregation on `dev`: validates, uploads, runs, downloads.
    pub fn forward(Ffm, FfmInputs -> FfmOutputs)
}

host_entry! {
    /// The backward pass on `dev` (recomputes the states from `x`).
    pub fn backward(Ffm, FfmBackwardInputs -> FfmGrads)
}
