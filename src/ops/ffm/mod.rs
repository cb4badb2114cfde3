//! FFM aggregation (contract: `docs/ffm.md`): the complex, decaying, oscillating memory of
//! Fast and Forgetful Memory (Morad et al., NeurIPS 2023).
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
//!   workgroup) and returns [`Error::Unsupported`](crate::Error::Unsupported) otherwise. Both
//!   run within WebGPU's default limits (the backward packs `a`, `b` and `grad_final` into one
//!   binding where the device offers fewer than 10 storage buffers per stage). Rows are split over several dispatches when a binding would exceed the
//!   device's limit. The state carried between chunks is anchored (docs/ffm.md: each
//!   closed-form power's rounding is met once, not once per chunk). Measured against the
//!   reference on lavapipe: `rel <= 2e-6` for `T = 4096` and `T = 65536`, non-decaying
//!   (`a = 0`) channels included, and the forward `rel <= 4e-7` at `T = 2^20`.
//! - `cuda` (`kernels/ffm/ffm.cu`): the same algorithm organised for NVIDIA GPUs. A thread owns
//!   two adjacent context channels of one memory channel when `C` is even (one 16-byte store
//!   of `S` per step; 8 bytes when `C` is odd); a block of 256 threads holds 1 to 256 such
//!   columns and splits each chunk of time over its remaining threads, scanning lanes with
//!   warp shuffles, then warp-groups through shared memory; the block width is chosen per
//!   problem so that an H100's SMs all get work ([`cuda::layout`]). The backward
//!   checkpoints, recomputes and reduces as on wgpu (fixed-order sums, no atomics: bitwise
//!   reproducible), and takes any `C` (a memory channel's context may span several blocks;
//!   their `dx` partials are summed in order). The carried state is anchored as on wgpu,
//!   which keeps long undamped sequences accurate. Measured on linrec's CUDA emulator:
//!   `rel <= 2e-6` for `T = 4096` and `T = 65536`, and at `T = 2^20` `rel <= 1e-6` on `S`
//!   and `<= 5e-6` on `da`/`db`, non-decaying (`a = 0`) channels included.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use super::{arg_names, arg_struct, check_nonzero, host_entry, ArgSpec, Problem};
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

arg_names! {
    /// The arguments and results of [`Ffm`], for [`Problem::spec`].
    pub enum Arg {
        /// `x`: [`FfmInputs::x`].
        X = "x",
        /// `a`: [`FfmInputs::a`].
        A = "a",
        /// `b`: [`FfmInputs::b`].
        B = "b",
        /// `s0`: [`FfmInputs::s0`].
        S0 = "s0",
        /// `start`: [`FfmInputs::start`].
        Start = "start",
        /// `s`: [`FfmOutputs::s`].
        S = "s",
        /// `s_final`: [`FfmOutputs::s_final`].
        SFinal = "s_final",
        /// `grad_s`: [`FfmBackwardInputs::grad_s`].
        GradS = "grad_s",
        /// `grad_final`: [`FfmBackwardInputs::grad_final`].
        GradFinal = "grad_final",
        /// `dx`: [`FfmGrads::dx`].
        Dx = "dx",
        /// `da`: [`FfmGrads::da`].
        Da = "da",
        /// `db`: [`FfmGrads::db`].
        Db = "db",
        /// `ds0`: [`FfmGrads::ds0`].
        Ds0 = "ds0",
    }
}

impl Problem for Ffm {
    type Arg = Arg;
    const NAME: &'static str = "ffm";

    fn validate(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("len", self.len)?;
        check_nonzero("memory", self.memory)?;
        check_nonzero("context", self.context)?;
        Ok(())
    }

    fn spec(&self, arg: Arg) -> ArgSpec {
        let (b, t, m, c) = (self.batch, self.len, self.memory, self.context);
        match arg {
            Arg::X | Arg::Dx => ArgSpec::seq([b, t, m]),
            Arg::A | Arg::Da => ArgSpec::f32([m]),
            Arg::B | Arg::Db => ArgSpec::f32([c]),
            Arg::S0 | Arg::SFinal | Arg::GradFinal | Arg::Ds0 => ArgSpec::f32([b, m, c, 2]),
            Arg::S | Arg::GradS => ArgSpec::seq([b, t, m, c, 2]),
            Arg::Start => ArgSpec::flags([b, t]),
        }
    }
}

arg_struct! {
    /// Inputs of [`forward`].
    pub struct FfmInputs<F, S> for Ffm {
        /// Inputs `[B, T, M]`, broadcast over the context axis.
        req x: F => X,
        /// Log-magnitude of the decay `[M]` (expected `<= 0`).
        req a: F => A,
        /// Angular frequency `[C]`.
        req b: F => B,
        /// Initial state `[B, M, C, 2]` (zeros when absent).
        opt s0: F => S0,
        /// Episode starts `[B, T]` (nonzero: step `t` drops the carried state).
        opt start: S => Start,
    }
}

arg_struct! {
    /// Results of [`forward`].
    pub struct FfmOutputs<F> for Ffm {
        /// Every state `[B, T, M, C, 2]`.
        req s => S,
        /// The state after step `T-1`, `[B, M, C, 2]`.
        req s_final => SFinal,
    }
}

arg_struct! {
    /// Inputs of [`backward`]: the forward's inputs (the states are recomputed from `x`, which
    /// moves `2C` times fewer bytes than reading `S`) and the gradients of its outputs.
    pub struct FfmBackwardInputs<F, S> for Ffm {
        /// The forward's `x`.
        req x: F => X,
        /// The forward's `a`.
        req a: F => A,
        /// The forward's `b`.
        req b: F => B,
        /// The forward's initial state.
        opt s0: F => S0,
        /// The forward's episode starts.
        opt start: S => Start,
        /// Gradient of the loss with respect to `S`, `[B, T, M, C, 2]`.
        req grad_s: F => GradS,
        /// Gradient with respect to the final state, `[B, M, C, 2]`.
        opt grad_final: F => GradFinal,
    }
}

arg_struct! {
    /// Results of [`backward`].
    pub struct FfmGrads<F> for Ffm {
        /// Gradient with respect to `x`, `[B, T, M]`.
        req dx => Dx,
        /// Gradient with respect to `a`, `[M]`.
        req da => Da,
        /// Gradient with respect to `b`, `[C]`.
        req db => Db,
        /// Gradient with respect to `s0`, `[B, M, C, 2]`.
        req ds0 => Ds0,
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
