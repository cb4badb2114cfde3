//! Layers built from candle-nn modules and linrec's ops.

use super::{cerr, ffm};
use crate::ffm::Ffm;
use crate::ops::{check_max, check_nonzero};
use crate::Error as LError;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Init, Linear, VarBuilder};

/// Layer normalisation over the last axis, built from differentiable tensor ops.
///
/// candle-nn 0.11's `LayerNorm` runs a fused kernel on contiguous inputs that has no backward
/// (`apply_op3_no_bwd`): gradients silently stop there. This one trains.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    /// `size` features, weight 1, bias 0 (names `weight`, `bias`).
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Sizes of an [`FfmCell`].
#[derive(Debug, Clone, Copy)]
pub struct FfmCellConfig {
    /// Input features per step.
    pub input: usize,
    /// Output features per step.
    pub output: usize,
    /// Memory size `M`: channels aggregated, each with its own learned decay.
    pub memory: usize,
    /// Context size `C`: learned frequencies each memory channel is kept at.
    pub context: usize,
    /// Shortest and longest initial memory horizon in steps: decay rates start log-spaced
    /// over `[1/max_horizon, 1/min_horizon]` (`a = -1/horizon`), and frequencies start at 0
    /// (pure decay) and at periods log-spaced from `max_horizon` down to 4 steps.
    pub min_horizon: f64,
    /// See `min_horizon`.
    pub max_horizon: f64,
    /// Initial bias of the input gate (`-3`: the memory starts mostly closed and opens for the
    /// inputs that predict later targets, rather than having to learn to shut out the rest).
    pub input_gate_bias: f64,
}

impl FfmCellConfig {
    /// `input -> output` with memory `M` and context `C`, horizons 1 to 1024 steps.
    pub fn new(input: usize, output: usize, memory: usize, context: usize) -> Self {
        FfmCellConfig {
            input,
            output,
            memory,
            context,
            min_horizon: 1.0,
            max_horizon: 1024.0,
            input_gate_bias: -3.0,
        }
    }

    /// Check the configuration: every size `>= 1`, horizons finite with
    /// `0 < min_horizon <= max_horizon`. [`FfmCell::new`] calls this.
    pub fn validate(&self) -> crate::Result<()> {
        check_nonzero("input", self.input)?;
        check_nonzero("output", self.output)?;
        check_nonzero("memory", self.memory)?;
        check_nonzero("context", self.context)?;
        let (lo, hi) = (self.min_horizon, self.max_horizon);
        if !(lo.is_finite() && lo > 0.0) {
            return Err(LError::value("min_horizon", "a finite number > 0", lo));
        }
        if !(hi.is_finite() && hi >= lo) {
            return Err(LError::value(
                "max_horizon",
                format!("a finite number >= min_horizon = {lo}"),
                hi,
            ));
        }
        Ok(())
    }
}

/// The Fast and Forgetful Memory cell (Morad et al., NeurIPS 2023), a drop-in replacement for
/// an RNN cell over whole sequences:
///
/// ```text
/// x~_t = pre(x_t) * sigmoid(gate_in(x_t)) * sqrt(1 - |gamma|^2)  input projection, gate,
///                                                              and LRU-style normalisation [M]
/// S_t  = aggregate(x~)  (linrec's FFM op: decay exp(a), frequency b, resets, carried state)
/// z_t  = mix([Re S_t, Im S_t])                                mix layer over 2*M*C features
/// g_t  = sigmoid(gate_out(x_t))
/// y_t  = LayerNorm(z_t) * g_t + skip(x_t) * (1 - g_t)         output gate and skip
/// ```
///
/// The decay is parametrised as `a = -exp(base_rate + log_rate)` and the frequency as
/// `b = base_freq + freq`, where the bases are fixed log-spaced schedules (see
/// [`FfmCellConfig`]) and the learned offsets start at zero: `a` stays negative (a forgetting
/// memory), every horizon is represented from the first step, and one frequency is exactly 0
/// at initialisation (a random initial phase scrambles a cue recalled after a random delay).
#[derive(Debug, Clone)]
pub struct FfmCell {
    cfg: FfmCellConfig,
    pre: Linear,
    gate_in: Linear,
    gate_out: Linear,
    skip: Linear,
    mix: Linear,
    norm: Norm,
    log_rate: Tensor,
    freq: Tensor,
    base_rate: Tensor,
    base_freq: Tensor,
}

impl FfmCell {
    /// A cell with parameters from `vb` (names `pre`, `gate_in`, `gate_out`, `skip`, `mix`,
    /// `norm`, `log_rate`, `freq`).
    pub fn new(cfg: FfmCellConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(cerr)?;
        let (i, o, m, c) = (cfg.input, cfg.output, cfg.memory, cfg.context);
        let log_rate = vb.get_with_hints(m, "log_rate", Init::Const(0.0))?;
        let freq = vb.get_with_hints(c, "freq", Init::Const(0.0))?;
        let lerp = |lo: f64, hi: f64, k: usize, n: usize| {
            if n <= 1 {
                lo
            } else {
                lo + (hi - lo) * k as f64 / (n - 1) as f64
            }
        };
        // rates 1/max_horizon .. 1/min_horizon, log-spaced
        let rates: Vec<f32> = (0..m)
            .map(|k| lerp(-cfg.max_horizon.ln(), -cfg.min_horizon.ln(), k, m) as f32)
            .collect();
        // frequency 0, then periods max_horizon .. 4, log-spaced
        let freqs: Vec<f32> = (0..c)
            .map(|k| {
                if k == 0 {
                    0.0
                } else {
                    let period = lerp(cfg.max_horizon.max(4.0).ln(), 4f64.ln(), k - 1, c - 1).exp();
                    (2.0 * std::f64::consts::PI / period) as f32
                }
            })
            .collect();
        let base_rate = Tensor::from_vec(rates, m, vb.device())?;
        let base_freq = Tensor::from_vec(freqs, c, vb.device())?;
        Ok(FfmCell {
            cfg,
            pre: candle_nn::linear_no_bias(i, m, vb.pp("pre"))?,
            gate_in: {
                let v = vb.pp("gate_in");
                let bound = 1.0 / (i as f64).sqrt();
                let w = v.get_with_hints(
                    (m, i),
                    "weight",
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = v.get_with_hints(m, "bias", Init::Const(cfg.input_gate_bias))?;
                Linear::new(w, Some(b))
            },
            gate_out: linear(i, o, vb.pp("gate_out"))?,
            skip: linear(i, o, vb.pp("skip"))?,
            mix: linear(2 * m * c, o, vb.pp("mix"))?,
            norm: Norm::new(o, 1e-5, vb.pp("norm"))?,
            log_rate,
            freq,
            base_rate,
            base_freq,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FfmCellConfig {
        &self.cfg
    }

    /// Run over `x: [B, T, input]` from `state: [B, M, C, 2]` (zeros when `None`), with
    /// optional episode starts `[B, T]`: returns `y: [B, T, output]` and the final state.
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<&Tensor>,
        start: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (m, c) = (self.cfg.memory, self.cfg.context);
        let xin = (self.pre.forward(x)? * candle_nn::ops::sigmoid(&self.gate_in.forward(x)?)?)?;
        let a = (&self.base_rate + &self.log_rate)?.exp()?.neg()?;
        // Input normalisation (as in the LRU): each channel's input is scaled by
        // sqrt(1 - |gamma|^2), so a long-memory channel summing hundreds of steps and a
        // short one holding about one step have comparable variance.
        let norm = (1.0 - (&a * 2.0)?.exp()?)?.sqrt()?;
        let xin = xin.broadcast_mul(&norm)?;
        let freq = (&self.base_freq + &self.freq)?;
        let p = Ffm::new(b, t, m, c);
        let (s, s_final) = ffm(&p, &xin.contiguous()?, &a, &freq, state, start)?;
        let z = self.mix.forward(&s.reshape((b, t, 2 * m * c))?)?;
        let g = candle_nn::ops::sigmoid(&self.gate_out.forward(x)?)?;
        let y = ((self.norm.forward(&z)? * &g)? + (self.skip.forward(x)? * (1.0 - &g)?)?)?;
        Ok((y, s_final))
    }
}

/// Sizes and options of an [`EflaAttention`] layer.
#[derive(Debug, Clone, Copy)]
pub struct EflaAttentionConfig {
    /// Model width (input and output features per step).
    pub model: usize,
    /// Number of heads `H`.
    pub heads: usize,
    /// Key (and query) size per head `K`.
    pub key_dim: usize,
    /// Value size per head `V`.
    pub value_dim: usize,
    /// EFLA or the plain delta rule.
    pub rule: crate::efla::Rule,
    /// Recurrent or chunked evaluation.
    pub algorithm: crate::efla::Algorithm,
}

impl EflaAttentionConfig {
    /// EFLA, chunked (64), `heads` heads of `key_dim = value_dim = model / heads`.
    pub fn new(model: usize, heads: usize) -> Self {
        let d = (model / heads.max(1)).max(1);
        EflaAttentionConfig {
            model,
            heads,
            key_dim: d,
            value_dim: d,
            rule: crate::efla::Rule::Efla,
            algorithm: crate::efla::Algorithm::default(),
        }
    }

    /// Check the configuration: `model, heads >= 1`, `heads` divides `model`, and
    /// `1 <= key_dim, value_dim <= 256` (the op's limit). [`EflaAttention::new`] calls this.
    pub fn validate(&self) -> crate::Result<()> {
        check_nonzero("model", self.model)?;
        check_nonzero("heads", self.heads)?;
        if !self.model.is_multiple_of(self.heads) {
            return Err(LError::value(
                "heads",
                format!("a divisor of model = {}", self.model),
                self.heads,
            ));
        }
        for (arg, v) in [("key_dim", self.key_dim), ("value_dim", self.value_dim)] {
            check_nonzero(arg, v)?;
            check_max(arg, v, crate::efla::MAX_DIM)?;
        }
        Ok(())
    }
}

/// A multi-head EFLA (or delta-rule) attention layer:
///
/// ```text
/// q, k, v = q_proj(x), k_proj(x), v_proj(x)       split into H heads
/// beta    = softplus(beta_proj(x))    (EFLA: a step length >= 0)
///         = sigmoid(beta_proj(x))     (delta rule: a learning rate in (0, 1))
/// o       = efla(q, k, v, beta)        linrec's op, with a carried state and resets
/// y       = out_proj(o)
/// ```
///
/// With the delta rule the keys are L2-normalised (as DeltaNet does, which keeps the update
/// contractive); EFLA takes raw keys, since its exact step is stable for any key norm.
#[derive(Debug, Clone)]
pub struct EflaAttention {
    cfg: EflaAttentionConfig,
    q: Linear,
    k: Linear,
    v: Linear,
    beta: Linear,
    out: Linear,
}

impl EflaAttention {
    /// A layer with parameters from `vb` (names `q`, `k`, `v`, `beta`, `out`).
    pub fn new(cfg: EflaAttentionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(cerr)?;
        let (d, h, kd, vd) = (cfg.model, cfg.heads, cfg.key_dim, cfg.value_dim);
        Ok(EflaAttention {
            cfg,
            q: candle_nn::linear_no_bias(d, h * kd, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(d, h * kd, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(d, h * vd, vb.pp("v"))?,
            beta: linear(d, h, vb.pp("beta"))?,
            out: candle_nn::linear_no_bias(h * vd, d, vb.pp("out"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EflaAttentionConfig {
        &self.cfg
    }

    /// Run over `x: [B, T, model]` from `state: [B, H, K, V]` (zeros when `None`), with
    /// optional episode starts `[B, T]`: returns `y: [B, T, model]` and the final state.
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<&Tensor>,
        start: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        use crate::efla::{Efla, Rule};
        let (b, t, _) = x.dims3()?;
        let c = &self.cfg;
        let q = self.q.forward(x)?.reshape((b, t, c.heads, c.key_dim))?;
        let mut k = self.k.forward(x)?.reshape((b, t, c.heads, c.key_dim))?;
        let v = self.v.forward(x)?.reshape((b, t, c.heads, c.value_dim))?;
        let braw = self.beta.forward(x)?;
        let beta = match c.rule {
            Rule::Efla => (braw.exp()? + 1.0)?.log()?,
            Rule::Delta => {
                let norm = (k.sqr()?.sum_keepdim(3)? + 1e-6)?.sqrt()?;
                k = k.broadcast_div(&norm)?;
                candle_nn::ops::sigmoid(&braw)?
            }
        };
        let p = Efla::new(b, t, c.heads, c.key_dim, c.value_dim)
            .with_rule(c.rule)
            .with_algorithm(c.algorithm);
        let (o, s) = super::efla(
            &p,
            &q.contiguous()?,
            &k.contiguous()?,
            &v.contiguous()?,
            &beta.contiguous()?,
            state,
            start,
        )?;
        let y = self
            .out
            .forward(&o.reshape((b, t, c.heads * c.value_dim))?)?;
        Ok((y, s))
    }
}
