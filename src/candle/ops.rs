//! Each linrec op as a [`Parts`] implementation plus its public candle function.

use super::{apply, apply3, cerr, flags_host, pack, unpack, Parts};
use crate::efla::{Efla, EflaBackwardInputs, EflaInputs};
use crate::ffm::{Ffm, FfmBackwardInputs, FfmInputs};
use crate::ops::Problem;
use crate::scan::{LinearScan, ScanBackwardInputs, ScanInputs};
use crate::selective::{SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
use crate::DType;
use crate::Tensor as LTensor;
use crate::{efla, ffm, scan, selective};
use candle_core::{Result, Tensor};

/// The packed differentiable inputs of each op, in packing order (the selective scan's depend
/// on `z`: `SelectiveParts::names`), and the gradients each backward takes.
const SCAN_INS: [scan::Arg; 3] = [scan::Arg::X, scan::Arg::A, scan::Arg::H0];
const FFM_INS: [ffm::Arg; 4] = [ffm::Arg::X, ffm::Arg::A, ffm::Arg::B, ffm::Arg::S0];
const EFLA_INS: [efla::Arg; 5] = [
    efla::Arg::Q,
    efla::Arg::K,
    efla::Arg::V,
    efla::Arg::Beta,
    efla::Arg::S0,
];

/// A CPU kernel's f32 result as the flat vector candle takes (moved, not copied).
fn flat(t: LTensor) -> Vec<f32> {
    t.into_f32_vec()
}

/// Host flags of an optional start tensor, as bytes (for kernels that read slices).
fn start_bytes(start: &Option<Tensor>) -> crate::Result<Option<Vec<u8>>> {
    start
        .as_ref()
        .map(|t| flags_host(t).map_err(|e| crate::Error::value("start", "readable flags", e)))
        .transpose()
}

/// Flags prepared for the op's device: kept on the host side for CPU tensors, turned into a
/// u8 device tensor for CUDA ones.
fn prepare_flags(start: Option<&Tensor>) -> Result<Option<Tensor>> {
    match start {
        None => Ok(None),
        #[cfg(feature = "candle-cuda")]
        Some(t) if t.device().is_cuda() => Ok(Some(super::flags_cuda(t)?)),
        Some(t) => Ok(Some(t.clone())),
    }
}

/// Run `f` with a CUDA view of the flags (if any).
#[cfg(feature = "candle-cuda")]
fn with_flags<R>(
    start: &Option<Tensor>,
    f: impl FnOnce(Option<crate::CuRef<'_>>) -> crate::Result<R>,
) -> crate::Result<R> {
    match start {
        None => f(None),
        Some(t) => {
            let (s, l) = t.storage_and_layout();
            let candle_core::Storage::Cuda(cs) = &*s else {
                return Err(crate::Error::value(
                    "start",
                    "flags on the CUDA device of the inputs",
                    "a CPU tensor",
                ));
            };
            let v =
                super::flag_view(cs, l).map_err(|e| crate::Error::value("start", "u8 flags", e))?;
            f(Some(crate::CuRef::U8(v)))
        }
    }
}

fn f32_only<P: Problem>(p: &P) -> Result<()> {
    if p.dtype() != DType::F32 {
        return Err(cerr(crate::Error::unsupported(
            "candle",
            format!(
                "{} with {} storage (the candle ops take f32 tensors)",
                P::NAME,
                p.dtype()
            ),
        )));
    }
    Ok(())
}

fn zeros_or<P: Problem>(p: &P, name: P::Arg, t: Option<&Tensor>, like: &Tensor) -> Result<Tensor> {
    match t {
        Some(t) => Ok(t.clone()),
        None => Tensor::zeros(p.spec(name).shape, candle_core::DType::F32, like.device()),
    }
}

// ------------------------------------------------------------------ linear scan

#[derive(Clone)]
struct ScanParts {
    p: LinearScan,
    start: Option<Tensor>,
}

impl Parts for ScanParts {
    fn name(&self) -> &'static str {
        "linrec-linear-scan"
    }
    fn in_lens(&self) -> Vec<usize> {
        SCAN_INS.map(|n| self.p.spec(n).numel()).to_vec()
    }
    // one result: `h_final` is a step of `h`, sliced out by `linear_scan` (its gradient then
    // reaches the backward through `grad_h`, with no packed-result routing)
    fn out_lens(&self) -> Vec<usize> {
        vec![self.p.spec(scan::Arg::H).numel()]
    }
    fn fwd_host(&self, ins: &[&[f32]]) -> crate::Result<Vec<Vec<f32>>> {
        // candle's storage is read in place
        let st = start_bytes(&self.start)?;
        let inp = ScanInputs {
            x: ins[0],
            a: ins[1],
            h0: Some(ins[2]),
            start: st.as_deref(),
        };
        let o = crate::scan::cpu::forward(&self.p, &inp)?;
        Ok(vec![flat(o.h)])
    }
    fn bwd_host(
        &self,
        ins: &[&[f32]],
        outs: &[&[f32]],
        grads: &[&[f32]],
    ) -> crate::Result<Vec<Vec<f32>>> {
        let st = start_bytes(&self.start)?;
        let inp = ScanBackwardInputs {
            a: ins[1],
            h: outs[0],
            h0: Some(ins[2]),
            start: st.as_deref(),
            grad_h: grads[0],
            grad_final: None,
        };
        let r = crate::scan::cpu::backward(&self.p, &inp)?;
        Ok(vec![flat(r.dx), flat(r.da), flat(r.dh0)])
    }
    #[cfg(feature = "candle-cuda")]
    fn fwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = ScanInputs {
                x: ins[0].reborrow(),
                a: ins[1].reborrow(),
                h0: Some(ins[2].reborrow()),
                start,
            };
            let o = crate::scan::cuda::forward(be, &self.p, &inp)?;
            Ok(vec![o.h])
        })
    }
    #[cfg(feature = "candle-cuda")]
    fn bwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
        outs: &[crate::CuRef<'_>],
        grads: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = ScanBackwardInputs {
                a: ins[1].reborrow(),
                h: outs[0].reborrow(),
                h0: Some(ins[2].reborrow()),
                start,
                grad_h: grads[0].reborrow(),
                grad_final: None,
            };
            let r = crate::scan::cuda::backward(be, &self.p, &inp)?;
            Ok(vec![r.dx, r.da, r.dh0])
        })
    }
}

/// The diagonal linear scan (docs/scan.md) on candle tensors, differentiable in `x`, `a` and
/// `h0`: returns `(h, h_final)`. Shapes as in [`crate::scan`] (complex data has a trailing
/// axis of 2); `start` is `[B, T]` (u8, u32 or f32, nonzero = new episode).
pub fn linear_scan(
    p: &LinearScan,
    x: &Tensor,
    a: &Tensor,
    h0: Option<&Tensor>,
    start: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    p.validate().map_err(cerr)?;
    ScanInputs { x, a, h0, start }.check(p).map_err(cerr)?;
    f32_only(p)?;
    let h0 = zeros_or(p, scan::Arg::H0, h0, x)?;
    let parts = ScanParts {
        p: *p,
        start: prepare_flags(start)?,
    };
    let shape = p.spec(scan::Arg::H).shape;
    let h = if x.device().is_cpu() {
        apply3(parts, [1, 1, 1], [x, a, &h0], &shape)?
    } else {
        apply(parts, &pack(&[x, a, &h0])?)?.reshape(shape)?
    };
    // the final state is the last step scanned: t = T - 1, or t = 0 for a reversed scan
    let last = if p.reverse { 0 } else { p.len - 1 };
    let h_final = h.narrow(1, last, 1)?.squeeze(1)?;
    Ok((h, h_final))
}

// ------------------------------------------------------------------ FFM

#[derive(Clone)]
struct FfmParts {
    p: Ffm,
    start: Option<Tensor>,
}

impl Parts for FfmParts {
    fn name(&self) -> &'static str {
        "linrec-ffm"
    }
    fn in_lens(&self) -> Vec<usize> {
        FFM_INS.map(|n| self.p.spec(n).numel()).to_vec()
    }
    // one result: `s_final` is the last step of `s`, sliced out by `ffm`
    fn out_lens(&self) -> Vec<usize> {
        vec![self.p.spec(ffm::Arg::S).numel()]
    }
    fn fwd_host(&self, ins: &[&[f32]]) -> crate::Result<Vec<Vec<f32>>> {
        // candle's storage is read in place
        let st = start_bytes(&self.start)?;
        let inp = FfmInputs {
            x: ins[0],
            a: ins[1],
            b: ins[2],
            s0: Some(ins[3]),
            start: st.as_deref(),
        };
        let o = crate::ffm::cpu::forward(&self.p, &inp)?;
        Ok(vec![flat(o.s)])
    }
    fn bwd_host(
        &self,
        ins: &[&[f32]],
        _outs: &[&[f32]],
        grads: &[&[f32]],
    ) -> crate::Result<Vec<Vec<f32>>> {
        let st = start_bytes(&self.start)?;
        let inp = FfmBackwardInputs {
            x: ins[0],
            a: ins[1],
            b: ins[2],
            s0: Some(ins[3]),
            start: st.as_deref(),
            grad_s: grads[0],
            grad_final: None,
        };
        let r = crate::ffm::cpu::backward(&self.p, &inp)?;
        Ok(vec![flat(r.dx), flat(r.da), flat(r.db), flat(r.ds0)])
    }
    #[cfg(feature = "candle-cuda")]
    fn fwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = FfmInputs {
                x: ins[0].reborrow(),
                a: ins[1].reborrow(),
                b: ins[2].reborrow(),
                s0: Some(ins[3].reborrow()),
                start,
            };
            let o = crate::ffm::cuda::forward(be, &self.p, &inp)?;
            Ok(vec![o.s])
        })
    }
    #[cfg(feature = "candle-cuda")]
    fn bwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
        _outs: &[crate::CuRef<'_>],
        grads: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = FfmBackwardInputs {
                x: ins[0].reborrow(),
                a: ins[1].reborrow(),
                b: ins[2].reborrow(),
                s0: Some(ins[3].reborrow()),
                start,
                grad_s: grads[0].reborrow(),
                grad_final: None,
            };
            let r = crate::ffm::cuda::backward(be, &self.p, &inp)?;
            Ok(vec![r.dx, r.da, r.db, r.ds0])
        })
    }
}

/// FFM aggregation (docs/ffm.md) on candle tensors, differentiable in `x`, `a`, `b` and `s0`:
/// returns `(s, s_final)` with `s: [B, T, M, C, 2]` and `s_final: [B, M, C, 2]`.
pub fn ffm(
    p: &Ffm,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s0: Option<&Tensor>,
    start: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    p.validate().map_err(cerr)?;
    FfmInputs { x, a, b, s0, start }.check(p).map_err(cerr)?;
    f32_only(p)?;
    let s0 = zeros_or(p, ffm::Arg::S0, s0, x)?;
    let parts = FfmParts {
        p: *p,
        start: prepare_flags(start)?,
    };
    let shape = p.spec(ffm::Arg::S).shape;
    let s = if x.device().is_cpu() {
        // the small `a` and `b` share a tensor: x, (a, b), s0
        let ab = Tensor::cat(&[a, b], 0)?;
        apply3(parts, [1, 2, 1], [x, &ab, &s0], &shape)?
    } else {
        apply(parts, &pack(&[x, a, b, &s0])?)?.reshape(shape)?
    };
    let s_final = s.narrow(1, p.len - 1, 1)?.squeeze(1)?;
    Ok((s, s_final))
}

// ------------------------------------------------------------------ EFLA

#[derive(Clone)]
struct EflaParts {
    p: Efla,
    start: Option<Tensor>,
}

impl Parts for EflaParts {
    fn name(&self) -> &'static str {
        "linrec-efla"
    }
    fn in_lens(&self) -> Vec<usize> {
        EFLA_INS.map(|n| self.p.spec(n).numel()).to_vec()
    }
    fn out_lens(&self) -> Vec<usize> {
        [efla::Arg::O, efla::Arg::SFinal]
            .map(|n| self.p.spec(n).numel())
            .to_vec()
    }
    fn fwd_host(&self, ins: &[&[f32]]) -> crate::Result<Vec<Vec<f32>>> {
        // candle's storage is read in place
        let st = start_bytes(&self.start)?;
        let inp = EflaInputs {
            q: ins[0],
            k: ins[1],
            v: ins[2],
            beta: ins[3],
            s0: Some(ins[4]),
            start: st.as_deref(),
        };
        let o = crate::efla::cpu::forward(&self.p, &inp)?;
        Ok(vec![flat(o.o), flat(o.s_final)])
    }
    fn bwd_host(
        &self,
        ins: &[&[f32]],
        _outs: &[&[f32]],
        grads: &[&[f32]],
    ) -> crate::Result<Vec<Vec<f32>>> {
        let st = start_bytes(&self.start)?;
        let inp = EflaBackwardInputs {
            q: ins[0],
            k: ins[1],
            v: ins[2],
            beta: ins[3],
            s0: Some(ins[4]),
            start: st.as_deref(),
            grad_o: grads[0],
            grad_final: Some(grads[1]),
        };
        let r = crate::efla::cpu::backward(&self.p, &inp)?;
        Ok(vec![
            flat(r.dq),
            flat(r.dk),
            flat(r.dv),
            flat(r.dbeta),
            flat(r.ds0),
        ])
    }
    #[cfg(feature = "candle-cuda")]
    fn fwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = EflaInputs {
                q: ins[0].reborrow(),
                k: ins[1].reborrow(),
                v: ins[2].reborrow(),
                beta: ins[3].reborrow(),
                s0: Some(ins[4].reborrow()),
                start,
            };
            let o = crate::efla::cuda::forward(be, &self.p, &inp)?;
            Ok(vec![o.o, o.s_final])
        })
    }
    #[cfg(feature = "candle-cuda")]
    fn bwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
        _outs: &[crate::CuRef<'_>],
        grads: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = EflaBackwardInputs {
                q: ins[0].reborrow(),
                k: ins[1].reborrow(),
                v: ins[2].reborrow(),
                beta: ins[3].reborrow(),
                s0: Some(ins[4].reborrow()),
                start,
                grad_o: grads[0].reborrow(),
                grad_final: Some(grads[1].reborrow()),
            };
            let r = crate::efla::cuda::backward(be, &self.p, &inp)?;
            Ok(vec![r.dq, r.dk, r.dv, r.dbeta, r.ds0])
        })
    }
}

/// Error-free linear attention / the delta rule (docs/efla.md) on candle tensors, differentiable in
/// `q`, `k`, `v`, `beta` and `s0`: returns `(o, s_final)` with `o: [B, T, H, V]` and
/// `s_final: [B, H, K, V]`. The problem's rule and algorithm select the computation.
pub fn efla(
    p: &Efla,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    s0: Option<&Tensor>,
    start: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    p.validate().map_err(cerr)?;
    EflaInputs {
        q,
        k,
        v,
        beta,
        s0,
        start,
    }
    .check(p)
    .map_err(cerr)?;
    f32_only(p)?;
    let s0 = zeros_or(p, efla::Arg::S0, s0, q)?;
    let parts = EflaParts {
        p: *p,
        start: prepare_flags(start)?,
    };
    let out = apply(parts, &pack(&[q, k, v, beta, &s0])?)?;
    let r = unpack(
        &out,
        &[p.spec(efla::Arg::O).shape, p.spec(efla::Arg::SFinal).shape],
    )?;
    Ok((r[0].clone(), r[1].clone()))
}

// ------------------------------------------------------------------ selective scan

#[derive(Clone)]
struct SelectiveParts {
    p: SelectiveScan,
    has_z: bool,
    start: Option<Tensor>,
}

impl SelectiveParts {
    /// Differentiable inputs in packing order (`z` only when present: an absent `z` is not
    /// the same as zeros).
    fn names(&self) -> Vec<selective::Arg> {
        use selective::Arg;
        let mut n = vec![
            Arg::U,
            Arg::Delta,
            Arg::A,
            Arg::Bm,
            Arg::Cm,
            Arg::Dskip,
            Arg::DeltaBias,
            Arg::H0,
        ];
        if self.has_z {
            n.push(Arg::Z);
        }
        n
    }
}

impl Parts for SelectiveParts {
    fn name(&self) -> &'static str {
        "linrec-selective-scan"
    }
    fn in_lens(&self) -> Vec<usize> {
        self.names()
            .iter()
            .map(|&n| self.p.spec(n).numel())
            .collect()
    }
    fn out_lens(&self) -> Vec<usize> {
        [selective::Arg::Out, selective::Arg::HFinal]
            .map(|n| self.p.spec(n).numel())
            .to_vec()
    }
    fn fwd_host(&self, ins: &[&[f32]]) -> crate::Result<Vec<Vec<f32>>> {
        // candle's storage is read in place
        let st = start_bytes(&self.start)?;
        let inp = SelectiveInputs {
            u: ins[0],
            delta: ins[1],
            a: ins[2],
            bm: ins[3],
            cm: ins[4],
            dskip: Some(ins[5]),
            delta_bias: Some(ins[6]),
            h0: Some(ins[7]),
            z: ins.get(8).copied(),
            start: st.as_deref(),
        };
        let o = crate::selective::cpu::forward(&self.p, &inp)?;
        Ok(vec![flat(o.out), flat(o.h_final)])
    }
    fn bwd_host(
        &self,
        ins: &[&[f32]],
        _outs: &[&[f32]],
        grads: &[&[f32]],
    ) -> crate::Result<Vec<Vec<f32>>> {
        let st = start_bytes(&self.start)?;
        let inp = SelectiveBackwardInputs {
            u: ins[0],
            delta: ins[1],
            a: ins[2],
            bm: ins[3],
            cm: ins[4],
            dskip: Some(ins[5]),
            delta_bias: Some(ins[6]),
            h0: Some(ins[7]),
            z: ins.get(8).copied(),
            start: st.as_deref(),
            grad_out: grads[0],
            grad_final: Some(grads[1]),
        };
        let r = crate::selective::cpu::backward(&self.p, &inp)?;
        let mut v = vec![
            flat(r.du),
            flat(r.ddelta),
            flat(r.da),
            flat(r.dbm),
            flat(r.dcm),
            flat(r.ddskip),
            flat(r.ddelta_bias),
            flat(r.dh0),
        ];
        if self.has_z {
            v.push(flat(r.dz));
        }
        Ok(v)
    }
    #[cfg(feature = "candle-cuda")]
    fn fwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = SelectiveInputs {
                u: ins[0].reborrow(),
                delta: ins[1].reborrow(),
                a: ins[2].reborrow(),
                bm: ins[3].reborrow(),
                cm: ins[4].reborrow(),
                dskip: Some(ins[5].reborrow()),
                delta_bias: Some(ins[6].reborrow()),
                h0: Some(ins[7].reborrow()),
                z: ins.get(8).map(|z| z.reborrow()),
                start,
            };
            let o = crate::selective::cuda::forward(be, &self.p, &inp)?;
            Ok(vec![o.out, o.h_final])
        })
    }
    #[cfg(feature = "candle-cuda")]
    fn bwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
        _outs: &[crate::CuRef<'_>],
        grads: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>> {
        with_flags(&self.start, |start| {
            let inp = SelectiveBackwardInputs {
                u: ins[0].reborrow(),
                delta: ins[1].reborrow(),
                a: ins[2].reborrow(),
                bm: ins[3].reborrow(),
                cm: ins[4].reborrow(),
                dskip: Some(ins[5].reborrow()),
                delta_bias: Some(ins[6].reborrow()),
                h0: Some(ins[7].reborrow()),
                z: ins.get(8).map(|z| z.reborrow()),
                start,
                grad_out: grads[0].reborrow(),
                grad_final: Some(grads[1].reborrow()),
            };
            let r = crate::selective::cuda::backward(be, &self.p, &inp)?;
            let mut v = vec![
                r.du,
                r.ddelta,
                r.da,
                r.dbm,
                r.dcm,
                r.ddskip,
                r.ddelta_bias,
                r.dh0,
            ];
            if self.has_z {
                v.push(r.dz);
            }
            Ok(v)
        })
    }
}

/// Inputs of [`selective_scan`]: the [`crate::selective`] arguments as candle tensors.
pub type SelectiveTensors<'a> = SelectiveInputs<&'a Tensor>;

/// Mamba's selective scan (docs/selective.md) on candle tensors, differentiable in every input (`u`,
/// `delta`, `a`, `bm`, `cm`, `dskip`, `z`, `delta_bias`, `h0`): returns `(out, h_final)`.
/// Absent `dskip`, `delta_bias` and `h0` are zeros; an absent `z` means no gate.
pub fn selective_scan(p: &SelectiveScan, args: &SelectiveTensors<'_>) -> Result<(Tensor, Tensor)> {
    p.validate().map_err(cerr)?;
    args.check(p).map_err(cerr)?;
    f32_only(p)?;
    let like = args.u;
    let dskip = zeros_or(p, selective::Arg::Dskip, args.dskip, like)?;
    let delta_bias = zeros_or(p, selective::Arg::DeltaBias, args.delta_bias, like)?;
    let h0 = zeros_or(p, selective::Arg::H0, args.h0, like)?;
    let mut ins = vec![
        args.u,
        args.delta,
        args.a,
        args.bm,
        args.cm,
        &dskip,
        &delta_bias,
        &h0,
    ];
    if let Some(z) = args.z {
        ins.push(z);
    }
    let parts = SelectiveParts {
        p: *p,
        has_z: args.z.is_some(),
        start: prepare_flags(args.start)?,
    };
    let out = apply(parts, &pack(&ins)?)?;
    let r = unpack(
        &out,
        &[
            p.spec(selective::Arg::Out).shape,
            p.spec(selective::Arg::HFinal).shape,
        ],
    )?;
    Ok((r[0].clone(), r[1].clone()))
}
