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
use std::mem::MaybeUninit;

/// Host data a native CPU kernel reads as floats: a linrec [`Tensor`] (f16/bf16 storage
/// widened to f32 once, f32 borrowed) or an f32 slice, read in place (what the candle ops pass:
/// candle's own CPU storage, no copy).
pub trait HostFloats<'a>: Copy {
    /// The elements as f32: borrowed when stored as f32, widened otherwise.
    fn f32s(self) -> Cow<'a, [f32]>;
}

impl<'a> HostFloats<'a> for &'a Tensor {
    fn f32s(self) -> Cow<'a, [f32]> {
        match self.data() {
            TensorData::F32(v) => Cow::Borrowed(v.as_slice()),
            _ => Cow::Owned(self.to_f32_vec()),
        }
    }
}

impl<'a> HostFloats<'a> for &'a [f32] {
    fn f32s(self) -> Cow<'a, [f32]> {
        Cow::Borrowed(self)
    }
}

/// Host reset flags a native CPU kernel reads (nonzero = a new episode): a linrec [`Tensor`]
/// (u8 borrowed, u32 converted) or a byte slice.
pub trait HostFlags<'a>: Copy {
    /// The flags as bytes.
    fn flag_bytes(self) -> Cow<'a, [u8]>;
}

impl<'a> HostFlags<'a> for &'a Tensor {
    fn flag_bytes(self) -> Cow<'a, [u8]> {
        match self.data() {
            TensorData::U8(v) => Cow::Borrowed(v.as_slice()),
            _ => Cow::Owned(self.to_flags()),
        }
    }
}

impl<'a> HostFlags<'a> for &'a [u8] {
    fn flag_bytes(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self)
    }
}

/// The elements of host float data as f32 ([`HostFloats`]).
pub(crate) fn f32s<'a>(t: impl HostFloats<'a>) -> Cow<'a, [f32]> {
    t.f32s()
}

/// [`f32s`] of optional data.
pub(crate) fn opt_f32s<'a, T: HostFloats<'a>>(t: Option<T>) -> Option<Cow<'a, [f32]>> {
    t.map(HostFloats::f32s)
}

/// Reset flags as bytes (nonzero = true), borrowed where they already are bytes.
pub(crate) fn flags<'a, T: HostFlags<'a>>(t: Option<T>) -> Option<Cow<'a, [u8]>> {
    t.map(HostFlags::flag_bytes)
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

/// An output buffer of `n` f32 that a kernel fills before reading: allocated without zeroing
/// (a zeroed allocation costs a single-threaded `memset` when the allocator reuses memory, and
/// moves the page faults out of the parallel loop), and, on Linux, advised to be backed by
/// transparent huge pages where it spans whole 2 MiB pages (the page faults of a fresh output
/// are a large part of a memory-bound kernel's time: 4 KiB at a time they were measured at
/// about 2.5x the cost of huge pages for a 32 MiB output on a 2-core VM). Turn it into the
/// result with [`written`].
pub(crate) fn uninit_f32s(n: usize) -> Box<[MaybeUninit<f32>]> {
    let mut v = Box::<[f32]>::new_uninit_slice(n);
    advise_huge_pages(v.as_mut_ptr().cast(), n * std::mem::size_of::<f32>());
    v
}

/// The values of a buffer from [`uninit_f32s`].
///
/// # Safety
///
/// Every element of `v` has been written.
pub(crate) unsafe fn written(v: Box<[MaybeUninit<f32>]>) -> Vec<f32> {
    // SAFETY: every element is initialized (the caller's contract).
    unsafe { v.assume_init() }.into_vec()
}

/// Advise the kernel to back the whole 2 MiB pages inside `[p, p + len)` with transparent huge
/// pages (no-op elsewhere, for small buffers, or where the kernel declines).
fn advise_huge_pages(p: *mut u8, len: usize) {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        const HUGE: usize = 1 << 21;
        // MADV_HUGEPAGE of Linux's asm-generic mman (x86-64 and aarch64 use it)
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::ffi::c_int) -> i32;
        }
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize).saturating_add(len) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside one live allocation that this thread owns and has
            // not handed out; MADV_HUGEPAGE is advice about how to back it, which changes no
            // contents, mapping or protection. Failure (THP off, an old kernel) is harmless
            // and ignored.
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    let _ = (p, len);
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

/// `for_lanes!(lanes, n, desc, |q, m| body)` runs `body` for the pieces `[q, q + m)` of
/// `[0, n)`: `lanes` floats each (the last one shorter), in ascending order, or in descending
/// order when `desc`. A walk that goes down the time steps must also go down the floats of each
/// step: steps walked down with their floats walked up defeat the hardware prefetchers, and were
/// measured about 3x slower than the same walk going up (linear scan, 1 KiB per step), while a
/// walk down the whole way runs as fast as one going up. (A macro, not a function taking a
/// closure: closures were measured not to get inlined into the AVX2 frames.)
macro_rules! for_lanes {
    ($lanes:expr, $n:expr, $desc:expr, |$q:ident, $m:ident| $body:block) => {{
        let (lanes, n): (usize, usize) = ($lanes, $n);
        let full = n / lanes * lanes;
        if $desc {
            if full < n {
                let ($q, $m) = (full, n - full);
                $body
            }
            for k in (0..full / lanes).rev() {
                let ($q, $m) = (k * lanes, lanes);
                $body
            }
        } else {
            for k in 0..full / lanes {
                let ($q, $m) = (k * lanes, lanes);
                $body
            }
            if full < n {
                let ($q, $m) = (full, n - full);
                $body
            }
        }
    }};
}
pub(crate) use for_lanes;

/// `fn $name(args) -> R`: the `#[inline(always)]` kernel `$inner::<V>` compiled for AVX2 where
/// the CPU has it (x86-64; 4 f64 lanes instead of SSE2's 2), with `V = true` there, else as is
/// with `V = false` (a kernel may use `V` to pick AVX2 intrinsics). The results are the same bits
/// either way: no fused multiply-add is enabled, and every operation is IEEE-exact in both
/// instruction sets. (A closure handed to [`simd`] is compiled for AVX2 only when it is
/// `#[inline(always)]`; the span kernels name their AVX2 twins explicitly instead.)
macro_rules! avx2_twin {
    ($(#[$m:meta])* fn $name:ident = $inner:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($a: $t),*) $(-> $r)? {
                    $inner::<true>($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above), the only
                    // requirement of `avx2`.
                    return unsafe { avx2($($a),*) };
                }
            }
            $inner::<false>($($a),*)
        }
    };
}
pub(crate) use avx2_twin;

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
