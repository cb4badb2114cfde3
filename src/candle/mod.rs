//! candle integration (feature `candle` for CPU tensors, `candle-cuda` for CUDA tensors): every
//! linrec op as a candle op with a backward, so `loss.backward()` reaches every input, the
//! initial state included; and layers built on them ([`layers`]).
//!
//! ## How the three-tensor limit of candle's custom ops is handled
//!
//! candle's `CustomOp1/2/3` take at most three tensors and return one. linrec's ops take up to
//! nine differentiable inputs and return two results.
//!
//! - **Linear scan and FFM on CPU tensors** are one `CustomOp3` each: `(x, a, h0)`, and
//!   `(x, [a, b], s0)` with the two small parameter vectors concatenated. The op returns the
//!   main output in its own shape, and the final state is a slice of it (the last step scanned),
//!   so candle's autograd routes every gradient straight to its tensor, nothing large is
//!   packed, and a gradient of the final state reaches the backward through the output's.
//! - **EFLA, the selective scan, and every op on CUDA tensors** are one `CustomOp1` over a
//!   *flat packed* f32 tensor: the differentiable inputs are flattened and concatenated
//!   (`Tensor::cat`, in the order of the op's argument struct), the op returns its results
//!   flattened and concatenated, and the public function slices them apart with `narrow` and
//!   `reshape`; candle's autograd routes gradients through `cat` and `narrow` by itself. For
//!   EFLA and the selective scan the cost of the packing is small next to the kernels'.
//!
//! Reset flags (not differentiable) travel inside the op. On CPU tensors the ops run linrec's
//! native CPU kernels (`Device::Cpu`, multi-threaded f32) **on candle's own storage**: inputs,
//! results and gradients are read in place ([`crate::runtime::HostFloats`]) and the kernels'
//! results are moved into candle, never copied. On CUDA tensors they run linrec's CUDA kernels
//! on candle's own stream, zero-copy but for one device-to-device copy packing the results.
//! `benches/candle_op.rs` measures what the candle op adds to the direct call. Tensors must be
//! f32 and contiguous-able; `start` flags may be u8, u32 or f32 (nonzero = a new episode).

pub mod layers;
mod ops;

pub use ops::{efla, ffm, linear_scan, selective_scan, SelectiveTensors};

use crate::error::Error as LError;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType as CDType, Layout, Shape, Tensor};

/// A linrec error as a candle error.
pub(crate) fn cerr(e: LError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn msg(s: String) -> candle_core::Error {
    candle_core::Error::Msg(s)
}

impl crate::ops::ArgBuf for &Tensor {
    const FLAG_DTYPES: &'static [crate::DType] =
        &[crate::DType::U8, crate::DType::U32, crate::DType::F32];
    fn dtype(&self) -> Option<crate::DType> {
        match Tensor::dtype(self) {
            CDType::F32 => Some(crate::DType::F32),
            CDType::F16 => Some(crate::DType::F16),
            CDType::BF16 => Some(crate::DType::BF16),
            CDType::U8 => Some(crate::DType::U8),
            CDType::U32 => Some(crate::DType::U32),
            _ => None,
        }
    }
    fn shape(&self) -> Option<&[usize]> {
        Some(self.dims())
    }
    fn numel(&self) -> usize {
        self.elem_count()
    }
    fn check_extent(&self, arg: &'static str) -> crate::Result<()> {
        if crate::ops::ArgBuf::dtype(self).is_none() {
            return Err(LError::value(
                arg,
                "an f32 tensor (u8/u32/f32 for flags)",
                format!("{:?}", Tensor::dtype(self)),
            ));
        }
        Ok(())
    }
}

/// The contiguous f32 elements of a CPU storage.
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(msg("linrec: expected an f32 tensor".into()));
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| msg("linrec: expected a contiguous tensor".into()))?;
    Ok(&v[a..b])
}

/// Split `x` into consecutive pieces of the given lengths.
fn split<'a, T>(mut x: &'a [T], lens: &[usize]) -> Vec<&'a [T]> {
    lens.iter()
        .map(|&n| {
            let (a, b) = x.split_at(n);
            x = b;
            a
        })
        .collect()
}

/// The host f32 data of any tensor (copied to the host if it lives on a GPU), flattened.
fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1::<f32>()
}

/// One linrec operation over flat f32 parts: the contract between the generic candle ops
/// below and each linrec op.
pub(crate) trait Parts: Clone + Send + Sync + 'static {
    /// Name of the candle op.
    fn name(&self) -> &'static str;
    /// Element counts of the packed differentiable inputs, in order.
    fn in_lens(&self) -> Vec<usize>;
    /// Element counts of the packed results, in order.
    fn out_lens(&self) -> Vec<usize>;
    /// The forward on the host: results in order.
    fn fwd_host(&self, ins: &[&[f32]]) -> crate::Result<Vec<Vec<f32>>>;
    /// The backward on the host: gradients of the inputs in order.
    fn bwd_host(
        &self,
        ins: &[&[f32]],
        outs: &[&[f32]],
        grads: &[&[f32]],
    ) -> crate::Result<Vec<Vec<f32>>>;
    /// The forward on CUDA.
    #[cfg(feature = "candle-cuda")]
    fn fwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>>;
    /// The backward on CUDA.
    #[cfg(feature = "candle-cuda")]
    fn bwd_cuda(
        &self,
        be: &crate::CudaBackend,
        ins: &[crate::CuRef<'_>],
        outs: &[crate::CuRef<'_>],
        grads: &[crate::CuRef<'_>],
    ) -> crate::Result<Vec<crate::CuTensor>>;
}

fn concat(mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default(); // one result: moved, not copied
    }
    let mut v = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        v.extend(p);
    }
    v
}

/// Apply `parts`' forward to the packed inputs, with a backward.
pub(crate) fn apply<P: Parts>(parts: P, packed: &Tensor) -> candle_core::Result<Tensor> {
    let n: usize = parts.in_lens().iter().sum();
    if packed.elem_count() != n {
        return Err(msg(format!(
            "linrec {}: packed inputs hold {} elements, expected {n}",
            parts.name(),
            packed.elem_count()
        )));
    }
    packed.contiguous()?.apply_op1(Fwd(parts))
}

/// Apply `parts`' forward, whose one result has shape `out`, to inputs held in three CPU
/// tensors (candle's `CustomOp3`): `groups[i]` of the op's inputs, in order, flattened and
/// concatenated, in tensor `i`. Large inputs each get a tensor of their own, so nothing large
/// is packed, and candle's autograd takes each gradient straight to its input.
pub(crate) fn apply3<P: Parts>(
    parts: P,
    groups: [usize; 3],
    ts: [&Tensor; 3],
    out: &[usize],
) -> candle_core::Result<Tensor> {
    let lens = parts.in_lens();
    let mut at = 0;
    for (t, &g) in ts.iter().zip(&groups) {
        let n: usize = lens[at..at + g].iter().sum();
        if t.elem_count() != n {
            return Err(msg(format!(
                "linrec {}: an input group holds {} elements, expected {n}",
                parts.name(),
                t.elem_count()
            )));
        }
        at += g;
    }
    let op = Fwd3 {
        parts,
        groups,
        out: out.to_vec(),
    };
    let [t1, t2, t3] = ts;
    t1.contiguous()?
        .apply_op3(&t2.contiguous()?, &t3.contiguous()?, op)
}

/// The op's inputs, in order, from the storages of [`apply3`]'s three tensors.
fn inputs3<'a>(
    lens: &[usize],
    groups: [usize; 3],
    xs: [(&'a CpuStorage, &Layout); 3],
) -> candle_core::Result<Vec<&'a [f32]>> {
    let mut ins = Vec::with_capacity(lens.len());
    let mut at = 0;
    for ((s, l), g) in xs.into_iter().zip(groups) {
        ins.extend(split(cpu_f32(s, l)?, &lens[at..at + g]));
        at += g;
    }
    Ok(ins)
}

/// The forward of [`apply3`].
struct Fwd3<P> {
    parts: P,
    groups: [usize; 3],
    out: Vec<usize>,
}

impl<P: Parts> CustomOp3 for Fwd3<P> {
    fn name(&self) -> &'static str {
        self.parts.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let lens = self.parts.in_lens();
        let ins = inputs3(&lens, self.groups, [(s1, l1), (s2, l2), (s3, l3)])?;
        let out = concat(self.parts.fwd_host(&ins).map_err(cerr)?);
        Ok((CpuStorage::F32(out), Shape::from(self.out.as_slice())))
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Bwd3 {
            parts: self.parts.clone(),
            groups: self.groups,
            res: res.contiguous()?,
            grad: grad_res.contiguous()?,
        };
        let packed = a1.apply_op3_no_bwd(a2, a3, &op)?;
        // one slice of the packed gradients per input tensor (views, no copies)
        let mut at = 0;
        let mut grad = |a: &Tensor| -> candle_core::Result<Option<Tensor>> {
            let n = a.elem_count();
            let g = packed.narrow(0, at, n)?.reshape(a.dims())?;
            at += n;
            Ok(Some(g))
        };
        Ok((grad(a1)?, grad(a2)?, grad(a3)?))
    }
}

/// The backward of [`Fwd3`] as an op of its own (no further gradient): the packed gradients
/// of every input.
struct Bwd3<P> {
    parts: P,
    groups: [usize; 3],
    res: Tensor,
    grad: Tensor,
}

impl<P: Parts> CustomOp3 for Bwd3<P> {
    fn name(&self) -> &'static str {
        self.parts.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let lens = self.parts.in_lens();
        let ins = inputs3(&lens, self.groups, [(s1, l1), (s2, l2), (s3, l3)])?;
        let out = with_res_grad(&self.res, &self.grad, |res, grad| {
            self.parts.bwd_host(&ins, &[res], &[grad]).map_err(cerr)
        })?;
        let out = concat(out);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// Run `f` on the f32 data of an op's result and of its gradient, read in place (CPU tensors,
/// contiguous).
fn with_res_grad<R>(
    res: &Tensor,
    grad: &Tensor,
    f: impl FnOnce(&[f32], &[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (rs, rl) = res.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let (candle_core::Storage::Cpu(rs), candle_core::Storage::Cpu(gs)) = (&*rs, &*gs) else {
        return Err(msg(
            "linrec: results and gradients must be CPU tensors".into()
        ));
    };
    f(cpu_f32(rs, rl)?, cpu_f32(gs, gl)?)
}

/// Slice the packed results of an op into tensors of the given shapes.
pub(crate) fn unpack(out: &Tensor, shapes: &[Vec<usize>]) -> candle_core::Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            let t = out.narrow(0, at, n)?.reshape(s.as_slice());
            at += n;
            t
        })
        .collect()
}

/// Pack differentiable inputs (flattened, concatenated) for [`apply`].
pub(crate) fn pack(ts: &[&Tensor]) -> candle_core::Result<Tensor> {
    let flat = ts
        .iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

struct Fwd<P>(P);

impl<P: Parts> CustomOp1 for Fwd<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l)?;
        let ins = split(x, &self.0.in_lens());
        let out = concat(self.0.fwd_host(&ins).map_err(cerr)?);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::fwd(&self.0, s, l)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = Bwd {
            parts: self.0.clone(),
            res: res.contiguous()?,
            grad: grad_res.contiguous()?,
        };
        Ok(Some(arg.apply_op1_no_bwd(&op)?))
    }
}

/// The backward as an op of its own (no further gradient): packed input gradients.
struct Bwd<P> {
    parts: P,
    res: Tensor,
    grad: Tensor,
}

impl<P: Parts> CustomOp1 for Bwd<P> {
    fn name(&self) -> &'static str {
        self.parts.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l)?;
        let ins = split(x, &self.parts.in_lens());
        let lens = self.parts.out_lens();
        // the results and their gradients are read in place
        let out = with_res_grad(&self.res, &self.grad, |res, grad| {
            let (outs, grads) = (split(res, &lens), split(grad, &lens));
            self.parts.bwd_host(&ins, &outs, &grads).map_err(cerr)
        })?;
        let out = concat(out);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::bwd(&self.parts, s, l, &self.res, &self.grad)
    }
}

/// Reset flags of a candle tensor as host bytes.
pub(crate) fn flags_host(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    Ok(host_f32(t)?.iter().map(|&v| u8::from(v != 0.0)).collect())
}

#[cfg(feature = "candle-cuda")]
mod cuda {
    //! The CUDA side: candle's CUDA storage passed to linrec's kernels without copies.
    use super::{msg, Parts};
    use crate::{CuRef, CuTensor, CudaBackend};
    use candle_core::{CudaStorage, Layout, Shape, Tensor};
    use cudarc::driver::CudaSlice;
    use std::sync::{Arc, Mutex, PoisonError};

    /// linrec's backend on candle's stream for `dev` (one per stream, cached).
    pub(super) fn backend(dev: &candle_core::CudaDevice) -> candle_core::Result<Arc<CudaBackend>> {
        static CACHE: Mutex<Vec<(usize, Arc<CudaBackend>)>> = Mutex::new(Vec::new());
        let stream = dev.cuda_stream();
        let key = Arc::as_ptr(&stream) as usize;
        let mut c = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, b)) = c.iter().find(|(k, _)| *k == key) {
            return Ok(b.clone());
        }
        let b = CudaBackend::from_stream(stream).map_err(super::cerr)?;
        c.push((key, b.clone()));
        Ok(b)
    }

    /// An f32 view of a contiguous candle CUDA storage.
    pub(super) fn view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<cudarc::driver::CudaView<'a, f32>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| msg("linrec: expected a contiguous tensor".into()))?;
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    /// Views of consecutive pieces of a view.
    fn pieces<'a>(v: &'a cudarc::driver::CudaView<'a, f32>, lens: &[usize]) -> Vec<CuRef<'a>> {
        let mut at = 0;
        lens.iter()
            .map(|&n| {
                let r = CuRef::F32(v.slice(at..at + n));
                at += n;
                r
            })
            .collect()
    }

    /// Concatenate f32 device tensors into one new buffer (device-to-device copies).
    fn concat(be: &CudaBackend, parts: Vec<CuTensor>) -> candle_core::Result<CudaSlice<f32>> {
        let n: usize = parts.iter().map(CuTensor::numel).sum();
        let mut out = be
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(candle_core::Error::wrap)?;
        let mut at = 0;
        for p in &parts {
            let k = p.numel();
            let crate::runtime::cuda::CuData::F32(src) = &p.data else {
                return Err(msg("linrec: expected f32 results".into()));
            };
            let mut dst = out.slice_mut(at..at + k);
            be.stream
                .memcpy_dtod(&src.slice(..k), &mut dst)
                .map_err(candle_core::Error::wrap)?;
            at += k;
        }
        Ok(out)
    }

    pub(super) fn fwd<P: Parts>(
        p: &P,
        s: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let be = backend(&s.device)?;
        let v = view(s, l)?;
        let ins = pieces(&v, &p.in_lens());
        let out = concat(&be, p.fwd_cuda(&be, &ins).map_err(super::cerr)?)?;
        let n = out.len();
        Ok((
            CudaStorage::wrap_cuda_slice(out, s.device.clone()),
            Shape::from(n),
        ))
    }

    pub(super) fn bwd<P: Parts>(
        p: &P,
        s: &CudaStorage,
        l: &Layout,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let be = backend(&s.device)?;
        let v = view(s, l)?;
        let ins = pieces(&v, &p.in_lens());
        let (rs, rl) = res.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (candle_core::Storage::Cuda(rs), candle_core::Storage::Cuda(gs)) = (&*rs, &*gs) else {
            return Err(msg(
                "linrec: results and gradients must be on the same CUDA device".into(),
            ));
        };
        let (rv, gv) = (view(rs, rl)?, view(gs, gl)?);
        let lens = p.out_lens();
        let (outs, grads) = (pieces(&rv, &lens), pieces(&gv, &lens));
        let out = concat(
            &be,
            p.bwd_cuda(&be, &ins, &outs, &grads).map_err(super::cerr)?,
        )?;
        let n = out.len();
        Ok((
            CudaStorage::wrap_cuda_slice(out, s.device.clone()),
            Shape::from(n),
        ))
    }

    /// Reset flags as a u8 CUDA tensor (converted on the device if needed).
    pub(crate) fn flags(t: &Tensor) -> candle_core::Result<Tensor> {
        t.ne(0f64)?.to_dtype(candle_core::DType::U8)
    }

    /// A u8 view of a flags tensor made by [`flags`].
    pub(crate) fn flag_view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<cudarc::driver::CudaView<'a, u8>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| msg("linrec: expected contiguous flags".into()))?;
        Ok(s.as_cuda_slice::<u8>()?.slice(a..b))
    }
}
#[cfg(feature = "candle-cuda")]
pub(crate) use cuda::{flag_view, flags as flags_cuda};
