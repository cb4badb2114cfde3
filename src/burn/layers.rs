//! burn Modules built on linrec's ops: the FFM memory cell and multi-head EFLA attention (as
//! the candle layers of the same names, `linrec::candle::layers` with feature `candle`), each
//! with a `step` that decodes one step with a carried state (RL rollouts).

use super::{efla, ffm};
use crate::efla::{Algorithm, Efla, Rule};
use crate::ffm::Ffm;
use crate::ops::{check_max, check_nonzero};
use crate::{Error, Result};
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Sizes of an [`FfmCell`] (the same fields and defaults as the candle cell's).
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
    /// Shortest initial memory horizon in steps (decay rates start log-spaced over
    /// `[1/max_horizon, 1/min_horizon]`; frequencies start at 0 and at periods log-spaced from
    /// `max_horizon` down to 4 steps).
    pub min_horizon: f64,
    /// Longest initial memory horizon in steps.
    pub max_horizon: f64,
    /// Initial bias of the input gate (`-3`: the memory starts mostly closed).
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

    /// Check the configuration: every size `>= 1`, `0 < min_horizon <= max_horizon`, finite.
    pub fn validate(&self) -> Result<()> {
        check_nonzero("input", self.input)?;
        check_nonzero("output", self.output)?;
        check_nonzero("memory", self.memory)?;
        check_nonzero("context", self.context)?;
        let (lo, hi) = (self.min_horizon, self.max_horizon);
        if !(lo.is_finite() && lo > 0.0) {
            return Err(Error::value("min_horizon", "a finite number > 0", lo));
        }
        if !(hi.is_finite() && hi >= lo) {
            return Err(Error::value(
                "max_horizon",
                format!("a finite number >= min_horizon = {lo}"),
                hi,
            ));
        }
        Ok(())
    }

    /// The fixed log-spaced schedules the learned decay and frequency offsets start from.
    fn bases(&self) -> (Vec<f32>, Vec<f32>) {
        let (m, c) = (self.memory, self.context);
        let lerp = |lo: f64, hi: f64, k: usize, n: usize| {
            if n <= 1 {
                lo
            } else {
                lo + (hi - lo) * k as f64 / (n - 1) as f64
            }
        };
        let rates = (0..m)
            .map(|k| lerp(-self.max_horizon.ln(), -self.min_horizon.ln(), k, m) as f32)
            .collect();
        let freqs = (0..c)
            .map(|k| {
                if k == 0 {
                    0.0
                } else {
                    let period =
                        lerp(self.max_horizon.max(4.0).ln(), 4f64.ln(), k - 1, c - 1).exp();
                    (2.0 * std::f64::consts::PI / period) as f32
                }
            })
            .collect();
        (rates, freqs)
    }
}

/// The Fast and Forgetful Memory cell (Morad et al., NeurIPS 2023) as a burn Module, the
/// same cell as the candle `FfmCell`:
///
/// ```text
/// x~_t = pre(x_t) * sigmoid(gate_in(x_t)) * sqrt(1 - |gamma|^2)
/// S_t  = aggregate(x~)  (linrec's FFM op: decay exp(a), frequency b, resets, carried state)
/// z_t  = mix([Re S_t, Im S_t])
/// g_t  = sigmoid(gate_out(x_t))
/// y_t  = LayerNorm(z_t) * g_t + skip(x_t) * (1 - g_t)
/// ```
///
/// with `a = -exp(base_rate + log_rate)` and `b = base_freq + freq` (fixed log-spaced bases,
/// learned offsets starting at zero).
#[derive(Module, Debug)]
pub struct FfmCell {
    pre: Linear,
    gate_in: Linear,
    gate_out: Linear,
    skip: Linear,
    mix: Linear,
    norm: LayerNorm,
    log_rate: Param<Tensor<1>>,
    freq: Param<Tensor<1>>,
    /// `[input, output, memory, context]`.
    #[module(skip)]
    sizes: [usize; 4],
    /// The fixed decay-rate schedule, `[M]`.
    #[module(skip)]
    base_rate: Vec<f32>,
    /// The fixed frequency schedule, `[C]`.
    #[module(skip)]
    base_freq: Vec<f32>,
}

impl FfmCell {
    /// A cell on `device` (Kaiming-uniform linear layers, like burn's defaults).
    pub fn new(cfg: FfmCellConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let (i, o, m, c) = (cfg.input, cfg.output, cfg.memory, cfg.context);
        let mut gate_in = LinearConfig::new(i, m).init(device);
        gate_in.bias = Some(Param::from_tensor(Tensor::full(
            [m],
            cfg.input_gate_bias as f32,
            device,
        )));
        let (base_rate, base_freq) = cfg.bases();
        Ok(FfmCell {
            pre: LinearConfig::new(i, m).with_bias(false).init(device),
            gate_in,
            gate_out: LinearConfig::new(i, o).init(device),
            skip: LinearConfig::new(i, o).init(device),
            mix: LinearConfig::new(2 * m * c, o).init(device),
            norm: LayerNormConfig::new(o).init(device),
            log_rate: Param::from_tensor(Tensor::zeros([m], device)),
            freq: Param::from_tensor(Tensor::zeros([c], device)),
            sizes: [i, o, m, c],
            base_rate,
            base_freq,
        })
    }

    /// Run over `x: [B, T, input]` from `state: [B, M, C, 2]` (zeros when `None`), with
    /// optional episode starts `[B, T]`: returns `y: [B, T, output]` and the final state.
    pub fn forward(
        &self,
        x: Tensor<3>,
        state: Option<Tensor<4>>,
        start: Option<Tensor<2, Int>>,
    ) -> Result<(Tensor<3>, Tensor<4>)> {
        let [b, t, _] = x.dims();
        let [_, _, m, c] = self.sizes;
        let dev = x.device();
        let base_rate = Tensor::<1>::from_data(TensorData::new(self.base_rate.clone(), [m]), &dev);
        let base_freq = Tensor::<1>::from_data(TensorData::new(self.base_freq.clone(), [c]), &dev);
        let xin = self.pre.forward(x.clone()) * sigmoid(self.gate_in.forward(x.clone()));
        let a = (base_rate + self.log_rate.val()).exp().neg();
        // LRU-style input normalisation: sqrt(1 - |gamma|^2) per channel
        let norm = (a.clone().mul_scalar(2.0).exp().neg().add_scalar(1.0)).sqrt();
        let xin = xin * norm.reshape([1, 1, m]);
        let freq = base_freq + self.freq.val();
        let p = Ffm::new(b, t, m, c);
        let (s, s_final) = ffm(&p, xin, a, freq, state, start)?;
        let z = self.mix.forward(s.reshape([b, t, 2 * m * c]));
        let g = sigmoid(self.gate_out.forward(x.clone()));
        let y = self.norm.forward(z) * g.clone() + self.skip.forward(x) * g.neg().add_scalar(1.0);
        Ok((y, s_final))
    }

    /// One step for each of `B` environments: `x: [B, input]`, the carried `state`
    /// (`[B, M, C, 2]`, zeros when `None`) and which rows begin an episode now (`[B]`,
    /// nonzero = reset): returns `y: [B, output]` and the new state.
    pub fn step(
        &self,
        x: Tensor<2>,
        state: Option<Tensor<4>>,
        reset: Option<Tensor<1, Int>>,
    ) -> Result<(Tensor<2>, Tensor<4>)> {
        let [b, i] = x.dims();
        let (y, s) = self.forward(
            x.reshape([b, 1, i]),
            state,
            reset.map(|r| r.reshape([b, 1])),
        )?;
        Ok((y.reshape([b, self.sizes[1]]), s))
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
    pub rule: Rule,
    /// Recurrent or chunked evaluation.
    pub algorithm: Algorithm,
}

impl EflaAttentionConfig {
    /// EFLA, default algorithm, `heads` heads of `key_dim = value_dim = model / heads`.
    pub fn new(model: usize, heads: usize) -> Self {
        let d = (model / heads.max(1)).max(1);
        EflaAttentionConfig {
            model,
            heads,
            key_dim: d,
            value_dim: d,
            rule: Rule::Efla,
            algorithm: Algorithm::default(),
        }
    }

    /// Check the configuration: `model, heads >= 1`, `heads` divides `model`, and
    /// `1 <= key_dim, value_dim <=` [`crate::efla::MAX_DIM`].
    pub fn validate(&self) -> Result<()> {
        check_nonzero("model", self.model)?;
        check_nonzero("heads", self.heads)?;
        if !self.model.is_multiple_of(self.heads) {
            return Err(Error::value(
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

/// Multi-head EFLA (or delta-rule) attention as a burn Module, the same layer as the candle
/// `EflaAttention`:
///
/// ```text
/// q, k, v = q_proj(x), k_proj(x), v_proj(x)       split into H heads
/// beta    = softplus(beta_proj(x))  (EFLA)  or  sigmoid(beta_proj(x))  (delta rule, with
///           L2-normalised keys)
/// o       = efla(q, k, v, beta)     linrec's op, with a carried state and resets
/// y       = out_proj(o)
/// ```
#[derive(Module, Debug)]
pub struct EflaAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    beta: Linear,
    out: Linear,
    /// `[model, heads, key_dim, value_dim]`.
    #[module(skip)]
    sizes: [usize; 4],
    /// Delta rule (true) or EFLA.
    #[module(skip)]
    delta: bool,
    /// Chunk length of the chunked algorithm, 0 for recurrent.
    #[module(skip)]
    chunk: usize,
}

impl EflaAttention {
    /// A layer on `device`.
    pub fn new(cfg: EflaAttentionConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let (d, h, kd, vd) = (cfg.model, cfg.heads, cfg.key_dim, cfg.value_dim);
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        Ok(EflaAttention {
            q: lin(d, h * kd, false),
            k: lin(d, h * kd, false),
            v: lin(d, h * vd, false),
            beta: lin(d, h, true),
            out: lin(h * vd, d, false),
            sizes: [d, h, kd, vd],
            delta: cfg.rule == Rule::Delta,
            chunk: match cfg.algorithm {
                Algorithm::Recurrent => 0,
                Algorithm::Chunked { chunk } => chunk,
            },
        })
    }

    /// Run over `x: [B, T, model]` from `state: [B, H, K, V]` (zeros when `None`), with
    /// optional episode starts `[B, T]`: returns `y: [B, T, model]` and the final state.
    pub fn forward(
        &self,
        x: Tensor<3>,
        state: Option<Tensor<4>>,
        start: Option<Tensor<2, Int>>,
    ) -> Result<(Tensor<3>, Tensor<4>)> {
        self.run(x, state, start, self.chunk == 0)
    }

    fn run(
        &self,
        x: Tensor<3>,
        state: Option<Tensor<4>>,
        start: Option<Tensor<2, Int>>,
        recurrent: bool,
    ) -> Result<(Tensor<3>, Tensor<4>)> {
        let [b, t, _] = x.dims();
        let [_, h, kd, vd] = self.sizes;
        let q = self.q.forward(x.clone()).reshape([b, t, h, kd]);
        let mut k = self.k.forward(x.clone()).reshape([b, t, h, kd]);
        let v = self.v.forward(x.clone()).reshape([b, t, h, vd]);
        let braw = self.beta.forward(x);
        let beta = if self.delta {
            let norm = k.clone().powi_scalar(2).sum_dim(3).add_scalar(1e-6).sqrt();
            k = k / norm;
            sigmoid(braw)
        } else {
            softplus(braw, 1.0)
        };
        let mut p = Efla::new(b, t, h, kd, vd);
        if self.delta {
            p = p.delta();
        }
        p = if recurrent {
            p.recurrent()
        } else {
            p.chunked(self.chunk)
        };
        let (o, s) = efla(&p, q, k, v, beta, state, start)?;
        Ok((self.out.forward(o.reshape([b, t, h * vd])), s))
    }

    /// One decoding step for each of `B` sequences (the recurrent algorithm, whatever the
    /// configured one): `x: [B, model]`, the carried state (`[B, H, K, V]`, zeros when
    /// `None`) and which rows begin an episode now (`[B]`): returns `y: [B, model]` and the
    /// new state.
    pub fn step(
        &self,
        x: Tensor<2>,
        state: Option<Tensor<4>>,
        reset: Option<Tensor<1, Int>>,
    ) -> Result<(Tensor<2>, Tensor<4>)> {
        let [b, d] = x.dims();
        let (y, s) = self.run(
            x.reshape([b, 1, d]),
            state,
            reset.map(|r| r.reshape([b, 1])),
            true,
        )?;
        Ok((y.reshape([b, d]), s))
    }
}
