//! Selective scan (contract: `docs/selective.md`): the S6 recurrence of Mamba, with episode
//! resets, an initial state and the final state.
//!
//! ```text
//! dt_t   = softplus ? softplus(delta_t + delta_bias) : delta_t + delta_bias
//! h_t[n] = (start_t ? 0 : exp(dt_t A[d][n]) h_{t-1}[n]) + dt_t Bm_t[n] u_t,     h_{-1} = h0
//! y_t    = sum_n Cm_t[n] h_t[n] + Dskip[d] u_t
//! out_t  = z present ? y_t silu(z_t) : y_t
//! ```
//!
//! Per batch row `b` and channel `d` (`softplus(x) = x` for `x > 20`, as in Mamba). `u`,
//! `delta`, `z`, `out`: `[B, T, D]`; `A`: `[D, N]`; `Bm`, `Cm`: `[B, T, G, N]`
//! (input-dependent; channel `d` reads group `d / (D / G)`) or `[D, N]` (fixed); `Dskip`,
//! `delta_bias`: `[D]`; `h0` and the final state: `[B, D, N]`.
//!
//! **Storage types.** The problem's [`dtype`](SelectiveScan::dtype) (f32, f16 or bf16) is the
//! storage of `u`, `delta`, input-dependent `Bm`/`Cm`, `z`, `out` and of their gradients
//! `du`, `ddelta`, `dbm`, `dcm`, `dz`. Everything else (`A`, `Dskip`, `delta_bias`, fixed
//! `Bm`/`Cm` and their gradients, `h0`, the final state, `dh0`, `grad_final`) is f32. Kernels
//! keep the state and every accumulation in f32.
//!
//! **Gradients of absent optional inputs.** [`backward`] always returns every field of
//! [`SelectiveGrads`] with its full shape. An absent `Dskip`, `delta_bias` or `h0` means the
//! value zero, so `ddskip`, `ddelta_bias` and `dh0` are the gradients *at zero* (what the
//! caller would get by passing explicit zeros; a caller that does not train the input ignores
//! them). An absent `z` has no such value (`silu(z) = 1` only in the limit), so `dz` is all
//! zeros then.
//!
//! **Backward and memory.** The backward needs no saved activations: it takes the forward's
//! inputs and recomputes. WGSL: each workgroup first sweeps forward once over its sequences
//! and checkpoints the state every 64 steps (a scratch of `B * ceil(T / 64) * D * N` f32),
//! then walks the checkpoint intervals from the end, recomputing each interval's states in
//! 8-step chunks. CUDA: a checkpoint pass writes the state entering every 256-step chunk
//! (`B * ceil(T / 256) * D * N` f32, plus the pre-gate output `B * T * D` f32 when `z` is
//! present), then the backward recomputes each chunk from its checkpoint (module `cuda`). No
//! per-step state is ever stored in device memory.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use super::{arg_names, arg_struct, check_max, check_nonzero, host_entry, ArgSpec, Problem};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The largest state size `N` the kernels support.
pub const MAX_STATE: usize = 256;

/// Where the input and output projections `Bm`, `Cm` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcMode {
    /// Input-dependent: `[B, T, G, N]` in the storage dtype; channel `d` uses group
    /// `d / (D / G)`. `groups` must divide `D`.
    InputDependent {
        /// Number of groups `G`.
        groups: usize,
    },
    /// Fixed per channel: `[D, N]` f32 (the S4D / time-invariant case).
    Fixed,
}

/// Sizes and options of one selective scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectiveScan {
    /// Batch size `B`.
    pub batch: usize,
    /// Sequence length `T`.
    pub len: usize,
    /// Channels `D`.
    pub dim: usize,
    /// State size `N` per channel (at most [`MAX_STATE`]).
    pub state: usize,
    /// Layout of `Bm` and `Cm`.
    pub bc: BcMode,
    /// Apply `softplus` to `delta + delta_bias`.
    pub softplus: bool,
    /// Storage type of `u`, `delta`, input-dependent `Bm`/`Cm`, `z`, `out` and their gradients.
    pub dtype: DType,
}

impl SelectiveScan {
    /// A selective scan of `[batch, len, dim]` with state size `state`: input-dependent
    /// `Bm`/`Cm` with one group, no softplus, f32 storage.
    pub fn new(batch: usize, len: usize, dim: usize, state: usize) -> Self {
        SelectiveScan {
            batch,
            len,
            dim,
            state,
            bc: BcMode::InputDependent { groups: 1 },
            softplus: false,
            dtype: DType::F32,
        }
    }
    /// Input-dependent `Bm`/`Cm` with `groups` groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.bc = BcMode::InputDependent { groups };
        self
    }
    /// Fixed `Bm`/`Cm` of shape `[D, N]`.
    pub fn fixed_bc(mut self) -> Self {
        self.bc = BcMode::Fixed;
        self
    }
    /// Apply softplus to `delta + delta_bias` (Mamba's `delta_softplus=True`).
    pub fn softplus(mut self) -> Self {
        self.softplus = true;
        self
    }
    /// Storage dtype of the sequence tensors.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    /// Whether `Bm`/`Cm` are input-dependent.
    pub fn input_dependent(&self) -> bool {
        matches!(self.bc, BcMode::InputDependent { .. })
    }
    /// The number of groups `G` (1 for fixed `Bm`/`Cm`).
    pub fn num_groups(&self) -> usize {
        match self.bc {
            BcMode::InputDependent { groups } => groups,
            BcMode::Fixed => 1,
        }
    }
    /// The group of channel `d` (input-dependent `Bm`/`Cm`).
    pub fn group_of(&self, d: usize) -> usize {
        d / (self.dim / self.num_groups()).max(1)
    }
}

arg_names! {
    /// The arguments and results of [`SelectiveScan`], for [`Problem::spec`].
    pub enum Arg {
        /// `u`: [`SelectiveInputs::u`].
        U = "u",
        /// `delta`: [`SelectiveInputs::delta`].
        Delta = "delta",
        /// `a`: [`SelectiveInputs::a`].
        A = "a",
        /// `bm`: [`SelectiveInputs::bm`].
        Bm = "bm",
        /// `cm`: [`SelectiveInputs::cm`].
        Cm = "cm",
        /// `dskip`: [`SelectiveInputs::dskip`].
        Dskip = "dskip",
        /// `z`: [`SelectiveInputs::z`].
        Z = "z",
        /// `delta_bias`: [`SelectiveInputs::delta_bias`].
        DeltaBias = "delta_bias",
        /// `h0`: [`SelectiveInputs::h0`].
        H0 = "h0",
        /// `start`: [`SelectiveInputs::start`].
        Start = "start",
        /// `out`: [`SelectiveOutputs::out`].
        Out = "out",
        /// `h_final`: [`SelectiveOutputs::h_final`].
        HFinal = "h_final",
        /// `grad_out`: [`SelectiveBackwardInputs::grad_out`].
        GradOut = "grad_out",
        /// `grad_final`: [`SelectiveBackwardInputs::grad_final`].
        GradFinal = "grad_final",
        /// `du`: [`SelectiveGrads::du`].
        Du = "du",
        /// `ddelta`: [`SelectiveGrads::ddelta`].
        Ddelta = "ddelta",
        /// `da`: [`SelectiveGrads::da`].
        Da = "da",
        /// `dbm`: [`SelectiveGrads::dbm`].
        Dbm = "dbm",
        /// `dcm`: [`SelectiveGrads::dcm`].
        Dcm = "dcm",
        /// `ddskip`: [`SelectiveGrads::ddskip`].
        Ddskip = "ddskip",
        /// `dz`: [`SelectiveGrads::dz`].
        Dz = "dz",
        /// `ddelta_bias`: [`SelectiveGrads::ddelta_bias`].
        DdeltaBias = "ddelta_bias",
        /// `dh0`: [`SelectiveGrads::dh0`].
        Dh0 = "dh0",
    }
}

impl Problem for SelectiveScan {
    type Arg = Arg;
    const NAME: &'static str = "selective_scan";

    fn validate(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("len", self.len)?;
        check_nonzero("dim", self.dim)?;
        check_nonzero("state", self.state)?;
        check_max("state", self.state, MAX_STATE)?;
        if let BcMode::InputDependent { groups } = self.bc {
            check_nonzero("groups", groups)?;
            if !self.dim.is_multiple_of(groups) {
                return Err(Error::value(
                    "groups",
                    format!("a divisor of dim = {}", self.dim),
                    groups,
                ));
            }
        }
        if !self.dtype.is_float() {
            return Err(Error::value("dtype", "f32, f16 or bf16", self.dtype));
        }
        Ok(())
    }

    fn spec(&self, arg: Arg) -> ArgSpec {
        let (b, t, d, n) = (self.batch, self.len, self.dim, self.state);
        match arg {
            Arg::U
            | Arg::Delta
            | Arg::Z
            | Arg::Out
            | Arg::GradOut
            | Arg::Du
            | Arg::Ddelta
            | Arg::Dz => ArgSpec::seq([b, t, d]),
            Arg::A | Arg::Da => ArgSpec::f32([d, n]),
            Arg::Bm | Arg::Cm | Arg::Dbm | Arg::Dcm => match self.bc {
                BcMode::InputDependent { groups } => ArgSpec::seq([b, t, groups, n]),
                BcMode::Fixed => ArgSpec::f32([d, n]),
            },
            Arg::Dskip | Arg::DeltaBias | Arg::Ddskip | Arg::DdeltaBias => ArgSpec::f32([d]),
            Arg::H0 | Arg::HFinal | Arg::GradFinal | Arg::Dh0 => ArgSpec::f32([b, d, n]),
            Arg::Start => ArgSpec::flags([b, t]),
        }
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

arg_struct! {
    /// Inputs of [`forward`].
    pub struct SelectiveInputs<F, S> for SelectiveScan {
        /// Input sequence `[B, T, D]`.
        req u: F => U,
        /// Step sizes before bias and softplus, `[B, T, D]`.
        req delta: F => Delta,
        /// State matrix `[D, N]` (f32; negative for a decaying state).
        req a: F => A,
        /// Input projection: `[B, T, G, N]` (input-dependent) or `[D, N]` (fixed, f32).
        req bm: F => Bm,
        /// Output projection: `[B, T, G, N]` (input-dependent) or `[D, N]` (fixed, f32).
        req cm: F => Cm,
        /// Skip connection `[D]` (f32; zero when absent).
        opt dskip: F => Dskip,
        /// Gate `[B, T, D]`: `out = y * silu(z)` when present.
        opt z: F => Z,
        /// Bias added to `delta` `[D]` (f32; zero when absent).
        opt delta_bias: F => DeltaBias,
        /// Initial state `[B, D, N]` (f32; zeros when absent).
        opt h0: F => H0,
        /// Episode starts `[B, T]`.
        opt start: S => Start,
    }
}

arg_struct! {
    /// Results of [`forward`].
    pub struct SelectiveOutputs<F> for SelectiveScan {
        /// Output `[B, T, D]`.
        req out => Out,
        /// The state after step `T-1`, `[B, D, N]` f32.
        req h_final => HFinal,
    }
}

arg_struct! {
    /// Inputs of [`backward`]: the forward's inputs and the gradients of its outputs.
    pub struct SelectiveBackwardInputs<F, S> for SelectiveScan {
        /// The forward's `u`.
        req u: F => U,
        /// The forward's `delta`.
        req delta: F => Delta,
        /// The forward's `A`.
        req a: F => A,
        /// The forward's `Bm`.
        req bm: F => Bm,
        /// The forward's `Cm`.
        req cm: F => Cm,
        /// The forward's `Dskip`.
        opt dskip: F => Dskip,
        /// The forward's `z`.
        opt z: F => Z,
        /// The forward's `delta_bias`.
        opt delta_bias: F => DeltaBias,
        /// The forward's initial state.
        opt h0: F => H0,
        /// The forward's episode starts.
        opt start: S => Start,
        /// Gradient of the loss with respect to `out`, `[B, T, D]`.
        req grad_out: F => GradOut,
        /// Gradient with respect to the final state `[B, D, N]` (zero when absent).
        opt grad_final: F => GradFinal,
    }
}

arg_struct! {
    /// Results of [`backward`]: the gradient of every differentiable input, always all
    /// present (see the [module docs](self) for absent optional inputs).
    pub struct SelectiveGrads<F> for SelectiveScan {
        /// Gradient with respect to `u`, `[B, T, D]`.
        req du => Du,
        /// Gradient with respect to `delta` (before bias and softplus), `[B, T, D]`.
        req ddelta => Ddelta,
        /// Gradient with respect to `A`, `[D, N]`.
        req da => Da,
        /// Gradient with respect to `Bm` (same shape and storage as `Bm`).
        req dbm => Dbm,
        /// Gradient with respect to `Cm` (same shape and storage as `Cm`).
        req dcm => Dcm,
        /// Gradient with respect to `Dskip`, `[D]`.
        req ddskip => Ddskip,
        /// Gradient with respect to `z`, `[B, T, D]` (zeros when `z` is absent).
        req dz => Dz,
        /// Gradient with respect to `delta_bias`, `[D]`.
        req ddelta_bias => DdeltaBias,
        /// Gradient with respect to `h0`, `[B, D, N]`.
        req dh0 => Dh0,
    }
}

impl<F, S> SelectiveInputs<F, S> {
    /// The backward inputs for these forward inputs and the gradients of the outputs.
    pub fn with_grads(self, grad_out: F, grad_final: Option<F>) -> SelectiveBackwardInputs<F, S> {
        SelectiveBackwardInputs {
            u: self.u,
            delta: self.delta,
            a: self.a,
            bm: self.bm,
            cm: self.cm,
            dskip: self.dskip,
            z: self.z,
            delta_bias: self.delta_bias,
            h0: self.h0,
            start: self.start,
            grad_out,
            grad_final,
        }
    }
}

host_entry! {
    /// Run the selective scan on `dev`: validates, uploads, runs, downloads.
    pub fn forward(SelectiveScan, SelectiveInputs -> SelectiveOutputs)
}

host_entry! {
    /// The backward pass on `dev` (recomputes the forward's states; see the module docs).
    pub fn backward(SelectiveScan, SelectiveBackwardInputs -> SelectiveGrads)
}
