//! Error-free linear attention and the delta rule (contract: `docs/efla.md`).
//!
//! ```text
//! lambda_t = ||k_t||^2
//! alpha_t  = Efla:  beta_t * g(beta_t * lambda_t),   g(x) = -expm1(-x) / x,  g(0) = 1
//!            Delta: beta_t
//! S_t      = P + alpha_t * k_t (v_t - P^T k_t)^T,    P = (start_t ? 0 : S_{t-1}),  S_{-1} = s0
//! o_t      = scale * S_t^T q_t
//! ```
//!
//! `q`, `k`: `[B, T, H, K]`; `v`, `o`: `[B, T, H, V]`; `beta`: `[B, T, H]` (expected `>= 0`;
//! not checked, a negative `beta` is computed as given); `s0`, final state: `[B, H, K, V]` f32
//! (`S` is `K x V`); `start`: `[B, T]`. `K, V <= 256`. `q`, `k`, `v`, `beta`, `o` and their
//! gradients are stored in the problem's dtype (f32, f16 or bf16); states are always f32.
//! Keys are not normalized by the op.
//!
//! Two [`Algorithm`]s compute the same function: [`Algorithm::Recurrent`] goes token by token
//! (the decode path: `T = 1` with a carried state); [`Algorithm::Chunked`] is the WY /
//! UT-transform algorithm of Yang et al. 2024 ("Parallelizing Linear Transformers with the
//! Delta Rule over Sequence Length") with `alpha` in place of `beta`. Per chunk of `C` steps,
//! with `seg_i` the last reset at or before step `i` of the chunk:
//!
//! ```text
//! Gm = strict_lower(K K^T),  Pm = lower(Q K^T)         (entries (i, j) with j < seg_i masked)
//! X  = (I + diag(alpha) Gm)^{-1},  W = X diag(alpha) K,  U = X diag(alpha) V
//! c_i = [no reset in steps 0..=i],  e_i = [i is in the chunk's last segment]
//! delta = U - diag(c) W S_in
//! O     = scale (diag(c) Q S_in + Pm delta)
//! S_out = c_last S_in + K^T diag(e) delta
//! ```
//!
//! The backward of either algorithm returns `dq, dk, dv, dbeta, ds0` given `grad_o` and an
//! optional `grad_final`; it recomputes what it needs from the forward's inputs (nothing but
//! the inputs is saved). `ds0` is always returned (zero where `start_0` is set).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use super::{arg_names, arg_struct, check_max, check_nonzero, host_entry, ArgSpec, Problem};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The largest key and value dimensions the kernels support.
pub const MAX_DIM: usize = 256;
/// The largest chunk the chunked kernels support.
pub const MAX_CHUNK: usize = 64;

/// Which update rule: the exact EFLA step or the plain delta rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Error-free linear attention: `alpha = beta * g(beta * ||k||^2)`, the exact solution of
    /// `dS/dt = -k k^T S + k v^T` over a step of length `beta`.
    Efla,
    /// The delta rule: `alpha = beta`.
    Delta,
}

/// How the recurrence is evaluated (both give the same result within rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Token by token (the decode path).
    Recurrent,
    /// The chunked WY algorithm with chunks of `chunk` steps (`1 ..= 64`; 64 by default).
    Chunked {
        /// Steps per chunk.
        chunk: usize,
    },
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Chunked { chunk: 64 }
    }
}

/// Sizes and options of one EFLA / delta-rule call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Efla {
    /// Batch size `B`.
    pub batch: usize,
    /// Sequence length `T`.
    pub len: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Key dimension `K` (`<= 256`).
    pub key_dim: usize,
    /// Value dimension `V` (`<= 256`).
    pub value_dim: usize,
    /// Output scale; `None` means `1 / sqrt(K)`.
    pub scale: Option<f32>,
    /// EFLA or the delta rule.
    pub rule: Rule,
    /// Recurrent or chunked evaluation.
    pub algorithm: Algorithm,
    /// Storage type of `q`, `k`, `v`, `beta`, `o` and their gradients (states are f32).
    pub dtype: DType,
}

impl Efla {
    /// An f32 EFLA problem of `batch` rows of `len` steps, `heads` heads, keys of `key_dim`
    /// and values of `value_dim`, chunked with chunks of 64, scale `1 / sqrt(K)`.
    pub fn new(batch: usize, len: usize, heads: usize, key_dim: usize, value_dim: usize) -> Self {
        Efla {
            batch,
            len,
            heads,
            key_dim,
            value_dim,
            scale: None,
            rule: Rule::Efla,
            algorithm: Algorithm::default(),
            dtype: DType::F32,
        }
    }
    /// Use the plain delta rule (`alpha = beta`).
    pub fn delta(mut self) -> Self {
        self.rule = Rule::Delta;
        self
    }
    /// Set the update rule.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rule = rule;
        self
    }
    /// Evaluate token by token.
    pub fn recurrent(mut self) -> Self {
        self.algorithm = Algorithm::Recurrent;
        self
    }
    /// Evaluate with the chunked algorithm and chunks of `chunk` steps.
    pub fn chunked(mut self, chunk: usize) -> Self {
        self.algorithm = Algorithm::Chunked { chunk };
        self
    }
    /// Set the algorithm.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }
    /// Set the output scale (instead of `1 / sqrt(K)`).
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
    /// Storage dtype of the sequence tensors.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    /// The output scale in effect: `scale`, or `1 / sqrt(K)` (rounded to f32, as the kernels
    /// use it).
    pub fn scale_value(&self) -> f32 {
        self.scale
            .unwrap_or_else(|| (1.0 / (self.key_dim.max(1) as f64).sqrt()) as f32)
    }
    /// The output scale in f64, as the reference uses it: `scale` (an f32, widened exactly), or
    /// `1 / sqrt(K)` computed in f64 (not rounded to f32: the oracle is f64 throughout).
    pub fn scale_f64(&self) -> f64 {
        self.scale
            .map_or_else(|| 1.0 / (self.key_dim.max(1) as f64).sqrt(), f64::from)
    }
    /// Steps per chunk of the chunked algorithm (`None` when recurrent).
    pub fn chunk(&self) -> Option<usize> {
        match self.algorithm {
            Algorithm::Recurrent => None,
            Algorithm::Chunked { chunk } => Some(chunk),
        }
    }
}

arg_names! {
    /// The arguments and results of [`Efla`], for [`Problem::spec`].
    pub enum Arg {
        /// `q`: [`EflaInputs::q`].
        Q = "q",
        /// `k`: [`EflaInputs::k`].
        K = "k",
        /// `v`: [`EflaInputs::v`].
        V = "v",
        /// `beta`: [`EflaInputs::beta`].
        Beta = "beta",
        /// `s0`: [`EflaInputs::s0`].
        S0 = "s0",
        /// `start`: [`EflaInputs::start`].
        Start = "start",
        /// `o`: [`EflaOutputs::o`].
        O = "o",
        /// `s_final`: [`EflaOutputs::s_final`].
        SFinal = "s_final",
        /// `grad_o`: [`EflaBackwardInputs::grad_o`].
        GradO = "grad_o",
        /// `grad_final`: [`EflaBackwardInputs::grad_final`].
        GradFinal = "grad_final",
        /// `dq`: [`EflaGrads::dq`].
        Dq = "dq",
        /// `dk`: [`EflaGrads::dk`].
        Dk = "dk",
        /// `dv`: [`EflaGrads::dv`].
        Dv = "dv",
        /// `dbeta`: [`EflaGrads::dbeta`].
        Dbeta = "dbeta",
        /// `ds0`: [`EflaGrads::ds0`].
        Ds0 = "ds0",
    }
}

impl Problem for Efla {
    type Arg = Arg;
    const NAME: &'static str = "efla";

    fn validate(&self) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("len", self.len)?;
        check_nonzero("heads", self.heads)?;
        check_nonzero("key_dim", self.key_dim)?;
        check_nonzero("value_dim", self.value_dim)?;
        check_max("key_dim", self.key_dim, MAX_DIM)?;
        check_max("value_dim", self.value_dim, MAX_DIM)?;
        if let Algorithm::Chunked { chunk } = self.algorithm {
            check_nonzero("chunk", chunk)?;
            check_max("chunk", chunk, MAX_CHUNK)?;
        }
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return Err(Error::value("scale", "a finite number", s));
            }
        }
        if !self.dtype.is_float() {
            return Err(Error::value("dtype", "f32, f16 or bf16", self.dtype));
        }
        Ok(())
    }

    fn spec(&self, arg: Arg) -> ArgSpec {
        let (b, t, h, k, v) = (
            self.batch,
            self.len,
            self.heads,
            self.key_dim,
            self.value_dim,
        );
        match arg {
            Arg::Q | Arg::K | Arg::Dq | Arg::Dk => ArgSpec::seq([b, t, h, k]),
            Arg::V | Arg::O | Arg::GradO | Arg::Dv => ArgSpec::seq([b, t, h, v]),
            Arg::Beta | Arg::Dbeta => ArgSpec::seq([b, t, h]),
            Arg::S0 | Arg::SFinal | Arg::GradFinal | Arg::Ds0 => ArgSpec::f32([b, h, k, v]),
            Arg::Start => ArgSpec::flags([b, t]),
        }
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

arg_struct! {
    /// Inputs of [`forward`].
    pub struct EflaInputs<F, S> for Efla {
        /// Queries `[B, T, H, K]`.
        req q: F => Q,
        /// Keys `[B, T, H, K]` (not normalized by the op).
        req k: F => K,
        /// Values `[B, T, H, V]`.
        req v: F => V,
        /// Step sizes `[B, T, H]` (`>= 0`).
        req beta: F => Beta,
        /// Initial state `[B, H, K, V]` f32 (zeros when absent).
        opt s0: F => S0,
        /// Episode starts `[B, T]`.
        opt start: S => Start,
    }
}

arg_struct! {
    /// Results of [`forward`].
    pub struct EflaOutputs<F> for Efla {
        /// Outputs `[B, T, H, V]`.
        req o => O,
        /// The state after step `T-1`, `[B, H, K, V]` f32.
        req s_final => SFinal,
    }
}

arg_struct! {
    /// Inputs of [`backward`]: the forward's inputs and the gradients of its outputs.
    pub struct EflaBackwardInputs<F, S> for Efla {
        /// The forward's queries.
        req q: F => Q,
        /// The forward's keys.
        req k: F => K,
        /// The forward's values.
        req v: F => V,
        /// The forward's step sizes.
        req beta: F => Beta,
        /// The forward's initial state.
        opt s0: F => S0,
        /// The forward's episode starts.
        opt start: S => Start,
        /// Gradient of the loss with respect to `o`.
        req grad_o: F => GradO,
        /// Gradient with respect to the final state (zero when absent).
        opt grad_final: F => GradFinal,
    }
}

arg_struct! {
    /// Results of [`backward`].
    pub struct EflaGrads<F> for Efla {
        /// Gradient with respect to `q`, `[B, T, H, K]`.
        req dq => Dq,
        /// Gradient with respect to `k`, `[B, T, H, K]`.
        req dk => Dk,
        /// Gradient with respect to `v`, `[B, T, H, V]`.
        req dv => Dv,
        /// Gradient with respect to `beta`, `[B, T, H]`.
        req dbeta => Dbeta,
        /// Gradient with respect to `s0`, `[B, H, K, V]` f32.
        req ds0 => Ds0,
    }
}

host_entry! {
    /// Run EFLA / the delta rule on `dev`: validates, uploads, runs, downloads.
    pub fn forward(Efla, EflaInputs -> EflaOutputs)
}

host_entry! {
    /// The backward pass on `dev`.
    pub fn backward(Efla, EflaBackwardInputs -> EflaGrads)
}
