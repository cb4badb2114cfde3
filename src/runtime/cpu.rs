//! Plumbing shared by the native CPU kernels (`ops::<op>::cpu`): f32 views of host tensors
//! (f16/bf16 storage widened once, f32 borrowed), reset flags as bytes, results rounded to the
//! storage dtype, and the parallel loop. Nothing here knows about a particular operation.
//!
//! The kernels run on rayon's thread pool (its global pool, or the one a caller `install`s).
//! Work is split into independent pieces (rows, channels, chunks) whose results do not depend
//! on which thread runs them, and every reduction across pieces is summed in a fixed order, so
//! results are bitwise identical whatever the number of threads.

use crate::error::Result;
use crate::tensor::{DType, Tensor, TensorData};
use std::borrow::Cow;

/// The elements of a float tensor as f32: borrowed when stored as f32, widened otherwise.
pub(crate) fn f32s(t: &Tensor) -> Cow<'_, [f32]> {
    match t.data() {
        TensorData::F32(v) => Cow::Borrowed(v.as_slice()),
        _ => Cow::Owned(t.to_f32_vec()),
    }
}

/// [`f32s`] of an optional tensor.
pub(crate) fn opt_f32s(t: Option<&Tensor>) -> Option<Cow<'_, [f32]>> {
    t.map(f32s)
}

/// Reset flags as bytes (nonzero = true): borrowed when stored as `u8`.
pub(crate) fn flags(t: Option<&Tensor>) -> Option<Cow<'_, [u8]>> {
    t.map(|t| match t.data() {
        TensorData::U8(v) => Cow::Borrowed(v.as_slice()),
        _ => Cow::Owned(t.to_flags()),
    })
}

/// A result tensor of `shape` in `dtype` from f32 values (moved when `dtype` is f32, rounded to
/// nearest otherwise).
pub(crate) fn output(shape: Vec<usize>, v: Vec<f32>, dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F32 => Tensor::new(shape, v),
        DType::F16 => Tensor::new(shape, v.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => Tensor::new(shape, v.into_iter().map(half::bf16::from_f32).collect()),
        other => Err(crate::Error::value("dtype", "f32, f16 or bf16", other)),
    }
}

/// A raw view of an output buffer that the pieces of a parallel loop write at disjoint indices
/// (each index belongs to exactly one piece), so they can fill one output without locks.
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut(*mut f32, usize);
// SAFETY: pieces running on different threads write disjoint elements (the callers' contract,
// stated on `set` / `put`), and the buffer outlives the parallel loop (it is borrowed mutably
// by `new` for the loop's duration at every call site).
unsafe impl Send for DisjointOut {}
// SAFETY: as for `Send`: concurrent accesses never touch the same element.
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// A view of `v`.
    pub(crate) fn new(v: &mut [f32]) -> Self {
        DisjointOut(v.as_mut_ptr(), v.len())
    }

    /// Write `x` at `i`.
    ///
    /// # Safety
    ///
    /// No other thread may read or write index `i` during the parallel loop.
    #[inline(always)]
    pub(crate) unsafe fn set(self, i: usize, x: f32) {
        assert!(i < self.1);
        // SAFETY: `i` is in bounds (checked above), and the caller guarantees no other thread
        // accesses it.
        unsafe { *self.0.add(i) = x }
    }

    /// Copy `src` to `[i, i + src.len())`.
    ///
    /// # Safety
    ///
    /// No other thread may read or write that range during the parallel loop.
    #[inline(always)]
    pub(crate) unsafe fn put(self, i: usize, src: &[f32]) {
        assert!(i + src.len() <= self.1);
        // SAFETY: the range is in bounds (checked above), the caller guarantees no other thread
        // accesses it, and `src` is a distinct (stack or input) buffer, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(i), src.len()) }
    }
}

/// Run `f` compiled for AVX2 where the CPU has it (x86-64), else as is. Kernels whose inner
/// loops are `#[inline(always)]` get them compiled into `f` with 8-lane vectors. The results
/// are the same bits either way: no fused multiply-add is enabled, and every operation is
/// IEEE-exact in both instruction sets.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of `avx2`.
        return unsafe { avx2(f) };
    }
    f()
}

/// The affine map of a chunk of a linear recurrence over time, `state -> P state + L` per
/// channel (complex, interleaved `(re, im)`, when `cplx`), or `L` alone when a reset inside the
/// chunk drops the incoming state: what the two-pass chunked scans (linear scan, FFM) carry
/// from chunk to chunk.
pub(crate) struct ChunkMap {
    /// A reset inside the chunk: the map is the constant `L`.
    pub(crate) reset: bool,
    /// The product of the chunk's transitions.
    pub(crate) p: Vec<f64>,
    /// The chunk's result from a zero incoming state.
    pub(crate) l: Vec<f64>,
}

impl ChunkMap {
    /// `state = map(state)`, with `conj(P)` when `conj` (the adjoint, complex only).
    pub(crate) fn apply(&self, state: &mut [f64], cplx: bool, conj: bool) {
        if self.reset {
            state.copy_from_slice(&self.l);
        } else if cplx {
            let sg = if conj { -1.0 } else { 1.0 };
            for j in 0..state.len() / 2 {
                let (pr, pi) = (self.p[2 * j], sg * self.p[2 * j + 1]);
                let (sr, si) = (state[2 * j], state[2 * j + 1]);
                state[2 * j] = pr * sr - pi * si + self.l[2 * j];
                state[2 * j + 1] = pr * si + pi * sr + self.l[2 * j + 1];
            }
        } else {
            for ((s, p), l) in state.iter_mut().zip(&self.p).zip(&self.l) {
                *s = *s * p + l;
            }
        }
    }
}
