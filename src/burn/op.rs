//! One description of each linrec op for the burn backends: which differentiable inputs it
//! takes (in order), which results it returns, and how to run its forward and backward on
//! linrec's native CPU kernels (host tensors) and on its WGSL kernels (zero-copy `GpuRef`s).

use crate::efla::{self, Efla, EflaBackwardInputs, EflaInputs};
use crate::ffm::{self, Ffm, FfmBackwardInputs, FfmInputs};
use crate::ops::{ArgSpec, Problem};
use crate::scan::{self, LinearScan, ScanBackwardInputs, ScanInputs};
use crate::selective::{self, SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
use crate::{DType, Device, Result, Tensor};

/// A linrec operation with its options, as the burn backends run it (see [`super`]).
///
/// Every optional differentiable input is always passed (zeros where the caller gave none,
/// which is what the op uses for an absent one), except the selective scan's gate `z`, whose
/// absence changes the op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinrecOp {
    /// The linear scan: inputs `x, a, h0`, results `h, h_final`.
    Scan(LinearScan),
    /// FFM aggregation: inputs `x, a, b, s0`, results `s, s_final`.
    Ffm(Ffm),
    /// EFLA / delta rule: inputs `q, k, v, beta, s0`, results `o, s_final`.
    Efla(Efla),
    /// The selective scan: inputs `u, delta, A, Bm, Cm, Dskip, delta_bias, h0` and `z` when
    /// the flag is set; results `out, h_final`.
    Selective(SelectiveScan, bool),
}

/// Shape and storage dtype of one argument.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

fn slot<P: Problem>(p: &P, a: P::Arg) -> Slot {
    let s: ArgSpec = p.spec(a);
    Slot {
        dtype: p.dtype_of(s.role),
        shape: s.shape,
    }
}

const SEL_INS: [selective::Arg; 9] = [
    selective::Arg::U,
    selective::Arg::Delta,
    selective::Arg::A,
    selective::Arg::Bm,
    selective::Arg::Cm,
    selective::Arg::Dskip,
    selective::Arg::DeltaBias,
    selective::Arg::H0,
    selective::Arg::Z,
];

impl LinrecOp {
    /// The op's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            LinrecOp::Scan(_) => LinearScan::NAME,
            LinrecOp::Ffm(_) => Ffm::NAME,
            LinrecOp::Efla(_) => Efla::NAME,
            LinrecOp::Selective(..) => SelectiveScan::NAME,
        }
    }

    /// Check the problem's sizes and options.
    pub fn validate(&self) -> Result<()> {
        match self {
            LinrecOp::Scan(p) => p.validate(),
            LinrecOp::Ffm(p) => p.validate(),
            LinrecOp::Efla(p) => p.validate(),
            LinrecOp::Selective(p, _) => p.validate(),
        }
    }

    /// The differentiable inputs, in order.
    pub(crate) fn ins(&self) -> Vec<Slot> {
        match self {
            LinrecOp::Scan(p) => [scan::Arg::X, scan::Arg::A, scan::Arg::H0]
                .map(|a| slot(p, a))
                .to_vec(),
            LinrecOp::Ffm(p) => [ffm::Arg::X, ffm::Arg::A, ffm::Arg::B, ffm::Arg::S0]
                .map(|a| slot(p, a))
                .to_vec(),
            LinrecOp::Efla(p) => [
                efla::Arg::Q,
                efla::Arg::K,
                efla::Arg::V,
                efla::Arg::Beta,
                efla::Arg::S0,
            ]
            .map(|a| slot(p, a))
            .to_vec(),
            LinrecOp::Selective(p, z) => SEL_INS[..if *z { 9 } else { 8 }]
                .iter()
                .map(|&a| slot(p, a))
                .collect(),
        }
    }

    /// The results, in order (the sequence output, then the final state).
    pub(crate) fn outs(&self) -> Vec<Slot> {
        match self {
            LinrecOp::Scan(p) => [scan::Arg::H, scan::Arg::HFinal]
                .map(|a| slot(p, a))
                .to_vec(),
            LinrecOp::Ffm(p) => [ffm::Arg::S, ffm::Arg::SFinal].map(|a| slot(p, a)).to_vec(),
            LinrecOp::Efla(p) => [efla::Arg::O, efla::Arg::SFinal]
                .map(|a| slot(p, a))
                .to_vec(),
            LinrecOp::Selective(p, _) => [selective::Arg::Out, selective::Arg::HFinal]
                .map(|a| slot(p, a))
                .to_vec(),
        }
    }

    /// `[B, T]` of the reset flags.
    pub(crate) fn start_shape(&self) -> Vec<usize> {
        match self {
            LinrecOp::Scan(p) => p.spec(scan::Arg::Start).shape,
            LinrecOp::Ffm(p) => p.spec(ffm::Arg::Start).shape,
            LinrecOp::Efla(p) => p.spec(efla::Arg::Start).shape,
            LinrecOp::Selective(p, _) => p.spec(selective::Arg::Start).shape,
        }
    }
}

/// Run one op's forward or backward generically over the argument type `F` (`&Tensor` for
/// the CPU kernels, `GpuRef` for the WGSL ones) and the result type `R`.
pub(crate) trait Exec<F: Copy, R> {
    /// The forward: the op's results in order.
    fn fwd(&self, op: &LinrecOp, ins: &[F], start: Option<F>) -> Result<Vec<R>>;
    /// The backward: gradients of the inputs in order. `outs` are the forward's results
    /// (the linear scan's backward reads `h`), `grads` the gradients of the results.
    fn bwd(
        &self,
        op: &LinrecOp,
        ins: &[F],
        outs: &[F],
        grads: &[F],
        start: Option<F>,
    ) -> Result<Vec<R>>;
}

macro_rules! exec_body {
    ([$($ns:ident)?] $($ctx:expr)?; fwd $op:expr, $ins:expr, $start:expr) => {{
        let (op, w, start) = ($op, $ins, $start);
        Ok(match op {
            LinrecOp::Scan(p) => {
                let o = scan$(::$ns)?::forward($($ctx,)? p, &ScanInputs { x: w[0], a: w[1], h0: Some(w[2]), start })?;
                vec![o.h, o.h_final]
            }
            LinrecOp::Ffm(p) => {
                let o = ffm$(::$ns)?::forward($($ctx,)? p, &FfmInputs { x: w[0], a: w[1], b: w[2], s0: Some(w[3]), start })?;
                vec![o.s, o.s_final]
            }
            LinrecOp::Efla(p) => {
                let o = efla$(::$ns)?::forward($($ctx,)? p, &EflaInputs { q: w[0], k: w[1], v: w[2], beta: w[3], s0: Some(w[4]), start })?;
                vec![o.o, o.s_final]
            }
            LinrecOp::Selective(p, _) => {
                let o = selective$(::$ns)?::forward($($ctx,)? p, &SelectiveInputs {
                    u: w[0], delta: w[1], a: w[2], bm: w[3], cm: w[4], dskip: Some(w[5]),
                    delta_bias: Some(w[6]), h0: Some(w[7]), z: w.get(8).copied(), start,
                })?;
                vec![o.out, o.h_final]
            }
        })
    }};
    ([$($ns:ident)?] $($ctx:expr)?; bwd $op:expr, $ins:expr, $outs:expr, $g:expr, $start:expr) => {{
        let (op, w, o, g, start) = ($op, $ins, $outs, $g, $start);
        Ok(match op {
            LinrecOp::Scan(p) => {
                let r = scan$(::$ns)?::backward($($ctx,)? p, &ScanBackwardInputs {
                    a: w[1], h: o[0], h0: Some(w[2]), start, grad_h: g[0], grad_final: Some(g[1]),
                })?;
                vec![r.dx, r.da, r.dh0]
            }
            LinrecOp::Ffm(p) => {
                let r = ffm$(::$ns)?::backward($($ctx,)? p, &FfmBackwardInputs {
                    x: w[0], a: w[1], b: w[2], s0: Some(w[3]), start, grad_s: g[0], grad_final: Some(g[1]),
                })?;
                vec![r.dx, r.da, r.db, r.ds0]
            }
            LinrecOp::Efla(p) => {
                let r = efla$(::$ns)?::backward($($ctx,)? p, &EflaBackwardInputs {
                    q: w[0], k: w[1], v: w[2], beta: w[3], s0: Some(w[4]), start, grad_o: g[0], grad_final: Some(g[1]),
                })?;
                vec![r.dq, r.dk, r.dv, r.dbeta, r.ds0]
            }
            LinrecOp::Selective(p, z) => {
                let r = selective$(::$ns)?::backward($($ctx,)? p, &SelectiveBackwardInputs {
                    u: w[0], delta: w[1], a: w[2], bm: w[3], cm: w[4], dskip: Some(w[5]),
                    delta_bias: Some(w[6]), h0: Some(w[7]), z: w.get(8).copied(), start,
                    grad_out: g[0], grad_final: Some(g[1]),
                })?;
                let mut v = vec![r.du, r.ddelta, r.da, r.dbm, r.dcm, r.ddskip, r.ddelta_bias, r.dh0];
                if *z {
                    v.push(r.dz);
                }
                v
            }
        })
    }};
}

/// linrec's native CPU kernels (`Device::Cpu`) on host tensors.
pub(crate) struct Host;

impl<'a> Exec<&'a Tensor, Tensor> for Host {
    fn fwd(
        &self,
        op: &LinrecOp,
        ins: &[&'a Tensor],
        start: Option<&'a Tensor>,
    ) -> Result<Vec<Tensor>> {
        let dev = &Device::Cpu;
        exec_body!([] dev; fwd op, ins, start)
    }
    fn bwd(
        &self,
        op: &LinrecOp,
        ins: &[&'a Tensor],
        outs: &[&'a Tensor],
        grads: &[&'a Tensor],
        start: Option<&'a Tensor>,
    ) -> Result<Vec<Tensor>> {
        let dev = &Device::Cpu;
        exec_body!([] dev; bwd op, ins, outs, grads, start)
    }
}

/// linrec's WGSL kernels on a context (zero-copy level).
pub(crate) struct Gpu<'c>(pub &'c crate::WgpuContext);

impl<'a> Exec<crate::GpuRef<'a>, crate::GpuTensor> for Gpu<'_> {
    fn fwd(
        &self,
        op: &LinrecOp,
        ins: &[crate::GpuRef<'a>],
        start: Option<crate::GpuRef<'a>>,
    ) -> Result<Vec<crate::GpuTensor>> {
        let ctx = self.0;
        exec_body!([wgpu] ctx; fwd op, ins, start)
    }
    fn bwd(
        &self,
        op: &LinrecOp,
        ins: &[crate::GpuRef<'a>],
        outs: &[crate::GpuRef<'a>],
        grads: &[crate::GpuRef<'a>],
        start: Option<crate::GpuRef<'a>>,
    ) -> Result<Vec<crate::GpuTensor>> {
        let ctx = self.0;
        exec_body!([wgpu] ctx; bwd op, ins, outs, grads, start)
    }
}
