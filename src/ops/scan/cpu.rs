//! Native CPU kernels of the linear scan (`Device::Cpu`).
//!
//! # Algorithm
//!
//! The work of a call is cut into *pieces*: a batch row and a span of time steps. A piece walks
//! its steps in scan order, and at each step updates one block of up to [`BLOCK`] contiguous
//! floats of channels (`[B, T, D]` has `D` contiguous), keeping the block's state in a small
//! array, so the loop over channels is a plain loop over contiguous memory that the compiler
//! vectorizes. Blocks of a piece run one after the other.
//!
//! When a call has many rows, each piece is a whole row (one pass). When it has few rows and a
//! long sequence, every row is cut into chunks of time ([`plan`]) and the scan runs in two
//! passes so that every core gets work: pass 1 reduces each chunk to its affine map
//! `state -> P * state + L` (`P` the product of its transitions, `L` its scan from zero, or
//! only `L` when a reset inside the chunk drops the incoming state); a short sequential pass
//! per row carries the state across the chunks' maps; pass 2 rescans every chunk from its
//! incoming state and writes the outputs. The backward is the same reverse scan of the
//! gradient (docs/scan.md), chunked the same way.
//!
//! Resets *select* (the state is replaced, never multiplied by zero), so a NaN or infinity
//! before a reset never reaches a step after it.
//!
//! # Performance
//!
//! What the kernels do to stay near memory bandwidth, each measured on a 2-core AMD EPYC VM
//! (B = 8, T = 2048, D = 256, f32, one thread):
//! - **AVX2.** The span and map kernels are compiled twice, plainly and for AVX2 (picked at run
//!   time, `avx2_twin!`): 4 f64 lanes instead of SSE2's 2. Without FMA, so the bits are the
//!   same either way.
//! - **Walks down memory go down all the way.** The backward of a forward scan (and a reverse
//!   scan) walks its steps in descending memory order. Walking each step's floats upward
//!   within that (1 KiB runs, each below the last) defeats the hardware prefetchers: a reverse
//!   forward scan took 6.3 ms against 1.8 ms for the same scan forward, and software prefetch
//!   did not help. Such walks now also take each step's floats in descending pieces of
//!   `LANES` (`for_lanes!`): the reverse scan then runs as fast as the forward one.
//! - **Outputs are not zeroed first.** `h`, `dx` and `da` are allocated uninitialized
//!   (`runtime::cpu::uninit_f32s`; every element is written exactly once by the pieces), which
//!   saves a single-threaded `memset` when the allocator reuses memory and lets each thread
//!   take the page faults of its own part, and are advised onto transparent huge pages: the
//!   page faults of a fresh 32 MiB output took about 18 ms in 4 KiB pages against 7.5 ms in
//!   huge pages on that VM, more than the scan itself.
//! - **Complex blocks fill 256-bit registers.** The compiler vectorized the complex step one
//!   complex f64 per 128-bit instruction. The AVX2 twins now run it from `avx`, two complex
//!   values per register (`[re, im, re, im]`, the product as `re(a) s` and `im(a) swap(s)`
//!   joined by `addsub`), each value through exactly the scalar kernels' operations in the same
//!   order, so the bits are the same (checked against the previous kernels on random inputs of
//!   every option, and across thread counts; only NaN payloads can differ, where the operands
//!   of an overflowing product are taken in another order). The kernel takes a step's whole
//!   block in one call, walking it down when the scan walks down (it does not get inlined, so
//!   one call per 8 floats was measurably slower).
//! - **A narrow real block keeps its state in registers.** A block of `NARROW` (16) floats (a
//!   long scan of 16 channels) is walked with its state in a fixed-size local array, not in
//!   memory, where each step's chain also went through a store and a load; pass 1's product of
//!   time-varying transitions of such rows likewise (`narrow_product`).
//!
//! Measured on the same VM (one run each, `cargo bench --bench cpu -- scan`, criterion
//! medians, `MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_MMAP_THRESHOLD_=4000000000` so that the
//! outputs' page faults do not hide the kernels; the machine was shared and noisy: the plain
//! loop itself moved between the runs), before and after the two points above:
//!
//! | case (1 thread, 2 threads)   | before           | after           | plain loop |
//! |-------------------------------|------------------|-----------------|------------|
//! | complex 8x2048x256 fwd        | 4.38, 4.53 ms    | 3.15, 2.14 ms   | 5.6-6.6 ms |
//! | complex 8x2048x256 fwd+bwd    | 19.5, 16.0 ms    | 12.8, 7.1 ms    |            |
//! | real 1x2^20x16 fwd            | 25.6, 11.5 ms    | 18.0, 9.6 ms    | 10-11 ms   |
//! | real 1x2^20x16 fwd+bwd        | 69.9, 27.6 ms    | 56.1, 24.4 ms   | 54-94 ms   |
//!
//! The complex forward+backward is still about 4x its forward (the backward moves five
//! streams against three, and its AVX2 kernel is a call per step), and the long real forward
//! on one thread still about 1.7x the plain loop: it makes two passes (the chunks' maps, then
//! the outputs), which results independent of the thread count need.
//!
//! # Threading and reproducibility
//!
//! Pieces run on rayon's pool (the global one, or the one a caller `install`s). The cut into
//! rows and chunks depends only on the problem's sizes ([`plan`]), never on the number of
//! threads, and the time-invariant `da` (a sum over rows and steps) is summed per piece and
//! then over pieces in a fixed order. So results are bitwise identical whatever the number of
//! threads.
//!
//! # Accuracy
//!
//! Storage is f32, f16 or bf16 (widened on load, rounded on store). The carried state and
//! every sum are kept in **f64** registers: an f32 state accumulates one rounding per step that
//! never decays when `|a|` is close to 1, and was measured at `rel` 2.4e-5 (real `a` within
//! 1e-4 of 1) and 2.7e-5 (complex `a` on the unit circle) at `T = 2^20`, past the 1e-5 bound.
//! With the f64 state the results are the f64 reference's rounded to the storage dtype, up to
//! a few f64 roundings: `rel` about 1e-8 for f32 storage, at any length.

use super::{Arg, LinearScan, ScanBackwardInputs, ScanGrads, ScanInputs, ScanOutputs};
use crate::error::Result;
use crate::ops::Problem;
use crate::runtime::cpu::{
    avx2_twin, f32s, flags, for_lanes, opt_f32s, output, uninit_f32s, written, ChunkMap as Map,
};
use crate::runtime::{HostFlags, HostFloats};
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Floats (real channels, or interleaved halves of complex ones) of a channel block.
pub const BLOCK: usize = 1024;

/// Rows at or above which every row is one piece (no cut of time).
const ROWS_ENOUGH: usize = 8;
/// Pieces aimed at when rows are cut into chunks of time.
const TARGET_PIECES: usize = 32;
/// The least work (floats times steps) of a chunk of time.
const MIN_CHUNK_WORK: usize = 1 << 15;
/// The least steps of a chunk of time.
const MIN_CHUNK_STEPS: usize = 64;
/// Work (floats times steps) below which a call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 14;

/// The chunk length (steps) of a problem of `rows` rows, `len` steps and `width` floats per
/// step. Depends only on these sizes, so results do not depend on the number of threads.
pub fn plan(rows: usize, len: usize, width: usize) -> usize {
    if rows >= ROWS_ENOUGH {
        return len;
    }
    let want = TARGET_PIECES.div_ceil(rows);
    let by_work = (len.saturating_mul(width) / MIN_CHUNK_WORK).max(1);
    let by_steps = (len / MIN_CHUNK_STEPS).max(1);
    let chunks = want.min(by_work).min(by_steps).max(1);
    len.div_ceil(chunks)
}

/// Where a span's incoming state comes from.
#[derive(Clone, Copy)]
enum Carry<'a> {
    Zero,
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Carry<'_> {
    fn get(self, i: usize) -> f64 {
        match self {
            Carry::Zero => 0.0,
            Carry::F32(v) => f64::from(v[i]),
            Carry::F64(v) => v[i],
        }
    }
}

/// A problem's sizes, transition and flags, shared by the kernels.
struct Geo<'a> {
    p: &'a LinearScan,
    /// Floats per step of a row (`D * width`).
    dw: usize,
    a: &'a [f32],
    start: Option<&'a [u8]>,
}

impl Geo<'_> {
    /// Whether the step at physical time `t` of row `b` drops the carried state.
    #[inline]
    fn reset(&self, b: usize, t: usize) -> bool {
        let Some(s) = self.start else { return false };
        let tn = self.p.len;
        if self.p.reverse {
            t + 1 < tn && s[b * tn + t + 1] != 0
        } else {
            s[b * tn + t] != 0
        }
    }
    /// Offset of step `t` of row `b` in a `[B, T, D(, 2)]` tensor.
    #[inline]
    fn off(&self, b: usize, t: usize) -> usize {
        (b * self.p.len + t) * self.dw
    }
    /// The transition of floats `[c0, c0 + n)` at step `t` of row `b`.
    #[inline]
    fn a_at(&self, b: usize, t: usize, c0: usize, n: usize) -> &[f32] {
        if self.p.time_varying {
            &self.a[self.off(b, t) + c0..][..n]
        } else {
            &self.a[c0..c0 + n]
        }
    }
    /// Whether any step of `[t0, t1)` of row `b` resets.
    fn any_reset(&self, b: usize, t0: usize, t1: usize) -> bool {
        self.start.is_some() && (t0..t1).any(|t| self.reset(b, t))
    }
}

/// Floats per piece of a step's block that the step kernels handle at a time.
const LANES: usize = 8;

// ------------------------------------------------------------------ AVX2 dispatch

avx2_twin!(
    /// [`fwd_span`], AVX2 where available.
    fn fwd_span_fast = fwd_span(g: &Geo, x: &[f32], b: usize, t0: usize, t1: usize, carry: Carry, h: &mut [Out])
);
avx2_twin!(
    /// [`fwd_map`], AVX2 where available.
    fn fwd_map_fast = fwd_map(g: &Geo, x: &[f32], b: usize, t0: usize, t1: usize) -> Map
);
avx2_twin!(
    /// [`back_span`], AVX2 where available.
    fn back_span_fast = back_span(
        g: &Geo, k: &Back, b: usize, t0: usize, t1: usize, carry: Carry, dx: &mut [Out],
        da: DaOut, end: &mut [f64],
    )
);
avx2_twin!(
    /// [`back_map`], AVX2 where available.
    fn back_map_fast = back_map(g: &Geo, k: &Back, b: usize, t0: usize, t1: usize) -> Map
);

// ------------------------------------------------------------------ per-step block updates

/// An element of an output buffer that the kernels fill (every element exactly once).
type Out = MaybeUninit<f32>;

/// `s = a * s + x` on one block (real), and `h = s` when given.
#[inline(always)]
fn step_real(s: &mut [f64], a: &[f32], x: &[f32], h: Option<&mut [Out]>) {
    let n = s.len();
    let (a, x) = (&a[..n], &x[..n]);
    match h {
        Some(h) => {
            let h = &mut h[..n];
            for i in 0..n {
                let v = f64::from(a[i]) * s[i] + f64::from(x[i]);
                s[i] = v;
                h[i] = Out::new(v as f32);
            }
        }
        None => {
            for i in 0..n {
                s[i] = f64::from(a[i]) * s[i] + f64::from(x[i]);
            }
        }
    }
}

/// `s = a * s + x` on one complex value (interleaved pairs), returning the new `s`.
#[inline(always)]
fn cplx_step(s: &mut [f64], a: &[f32], x: &[f32]) -> (f64, f64) {
    let (ar, ai) = (f64::from(a[0]), f64::from(a[1]));
    let (sr, si) = (s[0], s[1]);
    let vr = ar * sr - ai * si + f64::from(x[0]);
    let vi = ar * si + ai * sr + f64::from(x[1]);
    s[0] = vr;
    s[1] = vi;
    (vr, vi)
}

/// `conj(m) v` for an f32 complex `m` (an interleaved pair) and an f64 `v`.
#[inline(always)]
fn cmul(m: &[f32], vr: f64, vi: f64) -> (f64, f64) {
    let (mr, mi) = (f64::from(m[0]), -f64::from(m[1]));
    (mr * vr - mi * vi, mr * vi + mi * vr)
}

/// `s = a * s + x` on one block of interleaved complex values, and `h = s` when given, with
/// the AVX2 kernel ([`avx`]) on the whole block, walking down when `desc` (the AVX2 twins
/// only); `false` where that kernel is not available (then [`step_cplx`] is to be used).
#[inline(always)]
fn step_cplx_avx<const V: bool>(
    s: &mut [f64],
    a: &[f32],
    x: &[f32],
    mut h: Option<&mut [Out]>,
    desc: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if V {
        let n = s.len();
        let k = n / 4 * 4;
        // the remainder, first when walking down
        let rest = |s: &mut [f64], h: Option<&mut [Out]>| {
            if k < n {
                step_cplx(&mut s[k..], &a[k..], &x[k..], h.map(|h| &mut h[k..]));
            }
        };
        if desc {
            rest(s, h.as_deref_mut());
        }
        // SAFETY: `V` is true only inside the AVX2 twins (`avx2_twin!`), which run only where
        // the CPU has AVX2, the only requirement of `avx::step_cplx`
        unsafe { avx::step_cplx(s, a, x, h.as_deref_mut(), desc) };
        if !desc {
            rest(s, h);
        }
        return true;
    }
    let _ = (s, a, x, h, desc);
    false
}

/// `s = a * s + x` on one block of interleaved complex values, one at a time, and `h = s`
/// when given.
#[inline(always)]
fn step_cplx(s: &mut [f64], a: &[f32], x: &[f32], h: Option<&mut [Out]>) {
    let n = s.len();
    let (a, x) = (&a[..n], &x[..n]);
    let it = s
        .chunks_exact_mut(2)
        .zip(a.chunks_exact(2))
        .zip(x.chunks_exact(2));
    match h {
        Some(h) => {
            for (((s, a), x), h) in it.zip(h[..n].chunks_exact_mut(2)) {
                let (vr, vi) = cplx_step(s, a, x);
                h[0] = Out::new(vr as f32);
                h[1] = Out::new(vi as f32);
            }
        }
        None => {
            for ((s, a), x) in it {
                cplx_step(s, a, x);
            }
        }
    }
}

/// `s = x`, and `h = x` when given (a reset).
#[inline(always)]
fn step_reset(s: &mut [f64], x: &[f32], h: Option<&mut [Out]>) {
    let n = s.len();
    let x = &x[..n];
    for i in 0..n {
        s[i] = f64::from(x[i]);
    }
    if let Some(h) = h {
        for (h, x) in h[..n].iter_mut().zip(x) {
            *h = Out::new(*x);
        }
    }
}

/// `v = m * v` (complex when `cplx`, with `conj(m)` when `conj`) for f64 `m`.
fn mul_f64(v: &mut [f64], m: &[f64], cplx: bool, conj: bool) {
    if cplx {
        let sg = if conj { -1.0 } else { 1.0 };
        for j in 0..v.len() / 2 {
            let (mr, mi) = (m[2 * j], sg * m[2 * j + 1]);
            let (vr, vi) = (v[2 * j], v[2 * j + 1]);
            v[2 * j] = mr * vr - mi * vi;
            v[2 * j + 1] = mr * vi + mi * vr;
        }
    } else {
        for (v, m) in v.iter_mut().zip(m) {
            *v *= m;
        }
    }
}

/// `v = m * v` for f32 `m` (complex when `cplx`, `conj(m)` when `conj`).
#[inline(always)]
fn mul_f32(v: &mut [f64], m: &[f32], cplx: bool, conj: bool) {
    if cplx {
        let sg = if conj { -1.0 } else { 1.0 };
        let n = v.len();
        let m = &m[..n];
        for (v, m) in v.chunks_exact_mut(2).zip(m.chunks_exact(2)) {
            let (mr, mi) = (f64::from(m[0]), sg * f64::from(m[1]));
            let (vr, vi) = (v[0], v[1]);
            v[0] = mr * vr - mi * vi;
            v[1] = mr * vi + mi * vr;
        }
    } else {
        for (v, m) in v.iter_mut().zip(m) {
            *v *= f64::from(*m);
        }
    }
}

/// The complex step kernels on two complex values per 256-bit register (`[re, im, re, im]`),
/// for the AVX2 twins. Each value goes through exactly the f64 operations of the scalar
/// kernels, in the same order (`a * b` as `re(a) b` and `im(a) swap(b)` added and subtracted
/// with `addsub`), so the bits are the same; they only process twice as many values per
/// instruction as the compiler's 128-bit vectorization of the scalar ones.
#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{DaOut, Out};
    use std::arch::x86_64::*;

    /// Floats `[0, 4)` of `v` widened to f64.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(v: &[f32]) -> __m256d {
        let v = &v[..4];
        // SAFETY: `v` has 4 floats (sliced just above); the load takes any alignment
        _mm256_cvtps_pd(unsafe { _mm_loadu_ps(v.as_ptr()) })
    }

    /// Floats `[0, 4)` of `v`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn get(v: &[f64]) -> __m256d {
        let v = &v[..4];
        // SAFETY: `v` has 4 floats (sliced just above); the load takes any alignment
        unsafe { _mm256_loadu_pd(v.as_ptr()) }
    }

    /// `v[0..4] = x`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn put(v: &mut [f64], x: __m256d) {
        let v = &mut v[..4];
        // SAFETY: `v` has 4 floats (sliced just above); the store takes any alignment
        unsafe { _mm256_storeu_pd(v.as_mut_ptr(), x) }
    }

    /// `v[0..4] = x` rounded to f32 (as `as f32` does: to nearest).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn out(v: &mut [Out], x: __m256d) {
        let v = &mut v[..4];
        // SAFETY: `v` has 4 elements (sliced just above), and `MaybeUninit<f32>` has the layout
        // of `f32`; the store takes any alignment
        unsafe { _mm_storeu_ps(v.as_mut_ptr().cast::<f32>(), _mm256_cvtpd_ps(x)) }
    }

    /// `m v` per complex value, for `m` given as `(re, re, ..)` and `(im, im, ..)`:
    /// `(mr vr - mi vi, mr vi + mi vr)`, as the scalar kernels compute it.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul(mr: __m256d, mi: __m256d, v: __m256d) -> __m256d {
        let p = _mm256_mul_pd(mr, v);
        let q = _mm256_mul_pd(mi, _mm256_permute_pd::<0b0101>(v));
        _mm256_addsub_pd(p, q)
    }

    /// The real and imaginary parts of f32 complex values `m[0..4]`, each doubled (`conj`:
    /// the imaginary part negated).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn parts(m: &[f32], conj: bool) -> (__m256d, __m256d) {
        let m = load(m);
        let mi = _mm256_permute_pd::<0b1111>(m);
        let mi = if conj {
            _mm256_xor_pd(mi, _mm256_set1_pd(-0.0))
        } else {
            mi
        };
        (_mm256_movedup_pd(m), mi)
    }

    /// The offsets of the 4-float pieces of `[0, k)` (`k` a multiple of 4), in descending order
    /// when `desc`.
    #[inline(always)]
    fn walk(k: usize, desc: bool) -> impl Iterator<Item = usize> {
        (0..k / 4).map(move |i| if desc { k - 4 - 4 * i } else { 4 * i })
    }

    /// `super::step_cplx` on floats `[0, k)`, `k` the largest multiple of 4 up to `s.len()`,
    /// walking down when `desc`; returns `k`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn step_cplx(
        s: &mut [f64],
        a: &[f32],
        x: &[f32],
        h: Option<&mut [Out]>,
        desc: bool,
    ) -> usize {
        let k = s.len() / 4 * 4;
        let (a, x) = (&a[..k], &x[..k]);
        let step = |s: &mut [f64], j: usize| {
            let (ar, ai) = parts(&a[j..], false);
            let v = _mm256_add_pd(mul(ar, ai, get(&s[j..])), load(&x[j..]));
            put(&mut s[j..], v);
            v
        };
        match h {
            Some(h) => {
                let h = &mut h[..k];
                for j in walk(k, desc) {
                    let v = step(s, j);
                    out(&mut h[j..], v);
                }
            }
            None => {
                for j in walk(k, desc) {
                    step(s, j);
                }
            }
        }
        k
    }

    /// `super::back_cplx` on floats `[0, k)`, `k` the largest multiple of 4 up to `c.len()`,
    /// walking down when `desc`; returns `k`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn back_cplx(
        c: &mut [f64],
        gh: &[f32],
        a: &[f32],
        hp: Option<&[f32]>,
        dx: Option<&mut [Out]>,
        da: &mut DaOut,
        desc: bool,
    ) -> usize {
        let k = c.len() / 4 * 4;
        let (gh, a) = (&gh[..k], &a[..k]);
        // H = G + c, then c = conj(a) H; returns H
        let step = |c: &mut [f64], j: usize| {
            let v = _mm256_add_pd(load(&gh[j..]), get(&c[j..]));
            let (ar, ai) = parts(&a[j..], true);
            put(&mut c[j..], mul(ar, ai, v));
            v
        };
        let Some(dx) = dx else {
            for j in walk(k, desc) {
                step(c, j);
            }
            return k;
        };
        let dx = &mut dx[..k];
        match (hp, da) {
            (Some(hp), DaOut::Steps(da)) => {
                let (hp, da) = (&hp[..k], &mut da[..k]);
                for j in walk(k, desc) {
                    let v = step(c, j);
                    out(&mut dx[j..], v);
                    let (hr, hi) = parts(&hp[j..], true);
                    out(&mut da[j..], mul(hr, hi, v));
                }
            }
            (Some(hp), DaOut::Sum(sum)) => {
                let (hp, sum) = (&hp[..k], &mut sum[..k]);
                for j in walk(k, desc) {
                    let v = step(c, j);
                    out(&mut dx[j..], v);
                    let (hr, hi) = parts(&hp[j..], true);
                    let d = _mm256_add_pd(get(&sum[j..]), mul(hr, hi, v));
                    put(&mut sum[j..], d);
                }
            }
            (_, da) => {
                for j in walk(k, desc) {
                    let v = step(c, j);
                    out(&mut dx[j..], v);
                }
                if let DaOut::Steps(da) = da {
                    da[..k].fill(Out::new(0.0));
                }
            }
        }
        k
    }
}

// ------------------------------------------------------------------ forward

/// Floats of a narrow block whose state [`fwd_block`] keeps in registers.
const NARROW: usize = 16;

/// Scan floats `[c0, c0 + s.len())` of `[t0, t1)` of row `b` from the state in `s`, leaving
/// the outgoing state there, and writing `h` (the span's steps, `(t1 - t0) * dw` floats) when
/// given. A real block of [`NARROW`] floats is walked with its state in a local array of that
/// fixed size, which the compiler keeps in registers: with the state in memory, every step's
/// chain also went through a store and a load, and a long scan of 16 channels ran at about a
/// third of the plain loop's speed. The operations are the same either way.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_block<const V: bool>(
    g: &Geo,
    x: &[f32],
    b: usize,
    t0: usize,
    t1: usize,
    c0: usize,
    s: &mut [f64],
    mut h: Option<&mut [Out]>,
) {
    if g.p.complex || s.len() != NARROW || g.start.is_some() {
        fwd_walk::<V>(g, x, b, t0, t1, c0, s, h);
        return;
    }
    let (dw, len) = (g.dw, t1 - t0);
    let base = g.off(b, t0) + c0;
    let x = &x[base..];
    let mut r = [0f64; NARROW];
    r.copy_from_slice(s);
    for i in 0..len {
        let l = if g.p.reverse { len - 1 - i } else { i };
        let o = l * dw;
        let a = if g.p.time_varying {
            &g.a[base + o..]
        } else {
            &g.a[c0..]
        };
        let (a, xs): (&[f32; NARROW], &[f32; NARROW]) = (
            a[..NARROW].try_into().expect("NARROW floats"),
            x[o..o + NARROW].try_into().expect("NARROW floats"),
        );
        for i in 0..NARROW {
            r[i] = f64::from(a[i]) * r[i] + f64::from(xs[i]);
        }
        if let Some(h) = h.as_deref_mut() {
            let h: &mut [Out; NARROW] = (&mut h[o + c0..o + c0 + NARROW])
                .try_into()
                .expect("NARROW floats");
            for i in 0..NARROW {
                h[i] = Out::new(r[i] as f32);
            }
        }
    }
    s.copy_from_slice(&r);
}

/// [`fwd_block`] on any block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_walk<const V: bool>(
    g: &Geo,
    x: &[f32],
    b: usize,
    t0: usize,
    t1: usize,
    c0: usize,
    s: &mut [f64],
    mut h: Option<&mut [Out]>,
) {
    let (n, dw, len) = (s.len(), g.dw, t1 - t0);
    let base = g.off(b, t0) + c0;
    let (x, ta) = (
        &x[base..],
        if g.p.time_varying {
            &g.a[base..]
        } else {
            &g.a[c0..]
        },
    );
    for i in 0..len {
        let l = if g.p.reverse { len - 1 - i } else { i };
        let o = l * dw;
        let xs = &x[o..][..n];
        let mut hs = h.as_deref_mut().map(|h| &mut h[o + c0..][..n]);
        if g.start.is_some() && g.reset(b, t0 + l) {
            step_reset(s, xs, hs);
            continue;
        }
        let a = if g.p.time_varying {
            &ta[o..][..n]
        } else {
            &ta[..n]
        };
        if g.p.complex && step_cplx_avx::<V>(s, a, xs, hs.as_deref_mut(), g.p.reverse) {
            continue;
        }
        for_lanes!(LANES, n, g.p.reverse, |q, m| {
            let (s, a, x) = (&mut s[q..q + m], &a[q..], &xs[q..]);
            let h = hs.as_mut().map(|h| &mut h[q..]);
            if g.p.complex {
                step_cplx(s, a, x, h);
            } else {
                step_real(s, a, x, h);
            }
        });
    }
}

/// Pass 2 (or the only pass): scan `[t0, t1)` of row `b` from `carry`, writing `h` (the
/// span's steps, `(t1 - t0) * dw` floats).
#[inline(always)]
fn fwd_span<const V: bool>(
    g: &Geo,
    x: &[f32],
    b: usize,
    t0: usize,
    t1: usize,
    carry: Carry,
    h: &mut [Out],
) {
    let mut s = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let s = &mut s[..n];
        for (i, v) in s.iter_mut().enumerate() {
            *v = carry.get(c0 + i);
        }
        fwd_block::<V>(g, x, b, t0, t1, c0, s, Some(&mut *h));
    }
}

/// Every channel of `p` set to the multiplicative identity (`1`, or `1 + 0i` when complex).
fn set_one(p: &mut [f64], cplx: bool) {
    let stride = if cplx { 2 } else { 1 };
    p.iter_mut().step_by(stride).for_each(|v| *v = 1.0);
}

/// The product of the real, time-varying transitions of `[t0, t1)` of row `b` when a step has
/// `NARROW` floats: the products of the general loop (`1`, times each `a` in ascending time),
/// with the running one in registers (see [`fwd_block`]).
#[inline(always)]
fn narrow_product(g: &Geo, b: usize, t0: usize, t1: usize) -> Vec<f64> {
    let mut r = [1f64; NARROW];
    for t in t0..t1 {
        let a: &[f32; NARROW] = g.a_at(b, t, 0, NARROW).try_into().expect("NARROW floats");
        for i in 0..NARROW {
            r[i] *= f64::from(a[i]);
        }
    }
    r.to_vec()
}

/// Pass 1: the map of `[t0, t1)` of row `b`.
#[inline(always)]
fn fwd_map<const V: bool>(g: &Geo, x: &[f32], b: usize, t0: usize, t1: usize) -> Map {
    let cplx = g.p.complex;
    let reset = g.any_reset(b, t0, t1);
    let mut p = vec![0f64; g.dw];
    let mut l = vec![0f64; g.dw];
    if !reset {
        // P = product of the transitions (time-invariant: a^len by squaring)
        if g.p.time_varying && !cplx && g.dw == NARROW {
            p = narrow_product(g, b, t0, t1);
        } else if g.p.time_varying {
            set_one(&mut p, cplx);
            for t in t0..t1 {
                for c0 in (0..g.dw).step_by(BLOCK) {
                    let n = BLOCK.min(g.dw - c0);
                    mul_f32(&mut p[c0..c0 + n], g.a_at(b, t, c0, n), cplx, false);
                }
            }
        } else {
            p = pow(g.a.iter().map(|&v| f64::from(v)).collect(), t1 - t0, cplx);
        }
    }
    // L: the scan from zero
    let mut s = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let s = &mut s[..n];
        s.iter_mut().for_each(|v| *v = 0.0);
        fwd_block::<V>(g, x, b, t0, t1, c0, s, None);
        l[c0..c0 + n].copy_from_slice(s);
    }
    Map { reset, p, l }
}

/// Chunks of `[0, T)` in scan order: `(k, t0, t1)`.
fn chunks(p: &LinearScan, tc: usize) -> Vec<(usize, usize, usize)> {
    let nk = p.len.div_ceil(tc);
    let mut v: Vec<_> = (0..nk)
        .map(|k| (k, k * tc, ((k + 1) * tc).min(p.len)))
        .collect();
    if p.reverse {
        v.reverse();
    }
    v
}

/// Forward pass on the CPU (arguments already validated by the caller): linrec tensors, or
/// f32 and flag slices read in place ([`HostFloats`], [`HostFlags`]).
pub fn forward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &LinearScan,
    args: &ScanInputs<F, S>,
) -> Result<ScanOutputs<Tensor>> {
    let x = f32s(args.x);
    let a = f32s(args.a);
    let h0 = opt_f32s(args.h0);
    let start = flags(args.start);
    let g = Geo {
        p,
        dw: p.dim * p.width(),
        a: &a,
        start: start.as_deref(),
    };
    let (bn, tn, dw) = (p.batch, p.len, g.dw);
    let h0 = h0.as_deref();
    let row_carry = |b: usize| h0.map_or(Carry::Zero, |v| Carry::F32(&v[b * dw..(b + 1) * dw]));
    let mut h = uninit_f32s(bn * tn * dw);
    let tc = plan(bn, tn, dw);
    if tc >= tn {
        let row = |(b, hr): (usize, &mut [Out])| fwd_span_fast(&g, &x, b, 0, tn, row_carry(b), hr);
        if bn * tn * dw < SERIAL_WORK {
            h.chunks_mut(tn * dw).enumerate().for_each(row);
        } else {
            h.par_chunks_mut(tn * dw).enumerate().for_each(row);
        }
    } else {
        let ch = chunks(p, tc);
        let nk = ch.len();
        // pass 1: every chunk's map (row-major, chunks in scan order)
        let maps: Vec<Map> = (0..bn * nk)
            .into_par_iter()
            .map(|i| {
                let (_, t0, t1) = ch[i % nk];
                fwd_map_fast(&g, &x, i / nk, t0, t1)
            })
            .collect();
        // the incoming state of every chunk, in physical chunk order
        let mut carries = vec![0f64; bn * nk * dw];
        for b in 0..bn {
            let mut st: Vec<f64> = (0..dw).map(|i| row_carry(b).get(i)).collect();
            for (j, &(k, _, _)) in ch.iter().enumerate() {
                carries[(b * nk + k) * dw..][..dw].copy_from_slice(&st);
                maps[b * nk + j].apply(&mut st, p.complex, false);
            }
        }
        // pass 2
        let mut pieces = Vec::with_capacity(bn * nk);
        for (b, hr) in h.chunks_mut(tn * dw).enumerate() {
            for (k, hc) in hr.chunks_mut(tc * dw).enumerate() {
                pieces.push((b, k, hc));
            }
        }
        pieces.into_par_iter().for_each(|(b, k, hc)| {
            let t0 = k * tc;
            let t1 = (t0 + tc).min(tn);
            let carry = Carry::F64(&carries[(b * nk + k) * dw..][..dw]);
            fwd_span_fast(&g, &x, b, t0, t1, carry, hc);
        });
    }
    // SAFETY: the pieces above cover every step of every row, and a span writes every float
    // of each of its steps (`fwd_block` writes each step's block on every branch)
    let h = unsafe { written(h) };
    // the final state is the last step's (h_{T-1}, or h_0 reversed), before any rounding
    let tl = if p.reverse { 0 } else { tn - 1 };
    let mut hf = vec![0f32; bn * dw];
    for (b, r) in hf.chunks_mut(dw).enumerate() {
        r.copy_from_slice(&h[g.off(b, tl)..][..dw]);
    }
    Ok(ScanOutputs {
        h: output(p.spec(Arg::H).shape, h, p.dtype)?,
        h_final: output(vec_shape(p, &[bn, p.dim]), hf, DType::F32)?,
    })
}

/// `dims`, with a trailing 2 when complex.
fn vec_shape(p: &LinearScan, dims: &[usize]) -> Vec<usize> {
    let mut s = dims.to_vec();
    if p.complex {
        s.push(2);
    }
    s
}

// ------------------------------------------------------------------ backward

/// The backward's inputs besides the transition and flags.
struct Back<'a> {
    /// `grad_h`.
    gh: &'a [f32],
    /// The forward's `h`.
    h: &'a [f32],
    /// The forward's `h0`.
    h0: Option<&'a [f32]>,
}

impl Back<'_> {
    /// `h_{s-1}` of the step at physical time `t` of row `b` (`None`: zero): the previous step
    /// in scan order, or `h0` at the first.
    #[inline]
    fn prev<'s>(&'s self, g: &Geo, b: usize, t: usize, c0: usize, n: usize) -> Option<&'s [f32]> {
        let tn = g.p.len;
        let first = if g.p.reverse { t + 1 == tn } else { t == 0 };
        if first {
            self.h0.map(|v| &v[b * g.dw + c0..][..n])
        } else {
            let tp = if g.p.reverse { t + 1 } else { t - 1 };
            Some(&self.h[g.off(b, tp) + c0..][..n])
        }
    }
}

/// Where a backward span puts `da`.
enum DaOut<'a> {
    /// Time-varying: the span's steps.
    Steps(&'a mut [Out]),
    /// Time-invariant: added into a `[D(, 2)]` f64 partial sum.
    Sum(&'a mut [f64]),
    /// Not wanted (pass 1).
    Skip,
}

impl DaOut<'_> {
    /// The part from float `k` on.
    #[inline(always)]
    fn from(&mut self, k: usize) -> DaOut<'_> {
        match self {
            DaOut::Steps(v) => DaOut::Steps(&mut v[k..]),
            DaOut::Sum(v) => DaOut::Sum(&mut v[k..]),
            DaOut::Skip => DaOut::Skip,
        }
    }
}

/// One backward step's real block: `H = G + c`, `dx = H`, `c = a H`, `da = h_prev H` (zero
/// when `hp` is `None`), each output when given.
#[inline(always)]
fn back_real(
    c: &mut [f64],
    gh: &[f32],
    a: &[f32],
    hp: Option<&[f32]>,
    dx: Option<&mut [Out]>,
    da: DaOut,
) {
    let n = c.len();
    let (gh, a) = (&gh[..n], &a[..n]);
    let Some(dx) = dx else {
        for i in 0..n {
            c[i] = f64::from(a[i]) * (f64::from(gh[i]) + c[i]);
        }
        return;
    };
    let dx = &mut dx[..n];
    match (hp, da) {
        (Some(hp), DaOut::Steps(da)) => {
            let (hp, da) = (&hp[..n], &mut da[..n]);
            for i in 0..n {
                let v = f64::from(gh[i]) + c[i];
                dx[i] = Out::new(v as f32);
                c[i] = f64::from(a[i]) * v;
                da[i] = Out::new((f64::from(hp[i]) * v) as f32);
            }
        }
        (Some(hp), DaOut::Sum(sum)) => {
            let (hp, sum) = (&hp[..n], &mut sum[..n]);
            for i in 0..n {
                let v = f64::from(gh[i]) + c[i];
                dx[i] = Out::new(v as f32);
                c[i] = f64::from(a[i]) * v;
                sum[i] += f64::from(hp[i]) * v;
            }
        }
        (_, da) => {
            for i in 0..n {
                let v = f64::from(gh[i]) + c[i];
                dx[i] = Out::new(v as f32);
                c[i] = f64::from(a[i]) * v;
            }
            if let DaOut::Steps(da) = da {
                da[..n].fill(Out::new(0.0));
            }
        }
    }
}

/// One backward step's complex block (interleaved): `H = G + c`, `dx = H`, `c = conj(a) H`,
/// `da = conj(h_prev) H` (zero when `hp` is `None`), each output when given, with the AVX2
/// kernel ([`avx`]) on the whole block, walking down when `desc` (the AVX2 twins only);
/// `false` where that kernel is not available (then [`back_cplx`] is to be used).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_cplx_avx<const V: bool>(
    c: &mut [f64],
    gh: &[f32],
    a: &[f32],
    hp: Option<&[f32]>,
    mut dx: Option<&mut [Out]>,
    mut da: DaOut,
    desc: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if V {
        let n = c.len();
        let k = n / 4 * 4;
        // the remainder, first when walking down
        let rest = |c: &mut [f64], dx: Option<&mut [Out]>, da: &mut DaOut| {
            if k < n {
                let da = da.from(k);
                let (hp, dx) = (hp.map(|v| &v[k..]), dx.map(|v| &mut v[k..]));
                back_cplx(&mut c[k..], &gh[k..], &a[k..], hp, dx, da);
            }
        };
        if desc {
            rest(c, dx.as_deref_mut(), &mut da);
        }
        // SAFETY: `V` is true only inside the AVX2 twins (`avx2_twin!`), which run only where
        // the CPU has AVX2, the only requirement of `avx::back_cplx`
        unsafe { avx::back_cplx(c, gh, a, hp, dx.as_deref_mut(), &mut da, desc) };
        if !desc {
            rest(c, dx, &mut da);
        }
        return true;
    }
    let _ = (c, gh, a, hp, dx, da, desc);
    false
}

/// One backward step's complex block (interleaved), one complex value at a time: `H = G + c`,
/// `dx = H`, `c = conj(a) H`, `da = conj(h_prev) H` (zero when `hp` is `None`), each output
/// when given.
#[inline(always)]
fn back_cplx(
    c: &mut [f64],
    gh: &[f32],
    a: &[f32],
    hp: Option<&[f32]>,
    dx: Option<&mut [Out]>,
    da: DaOut,
) {
    let n = c.len();
    let (gh, a) = (&gh[..n], &a[..n]);
    let it = c
        .chunks_exact_mut(2)
        .zip(gh.chunks_exact(2))
        .zip(a.chunks_exact(2));
    let Some(dx) = dx else {
        for ((c, g), a) in it {
            let (vr, vi) = (f64::from(g[0]) + c[0], f64::from(g[1]) + c[1]);
            (c[0], c[1]) = cmul(a, vr, vi);
        }
        return;
    };
    let it = it.zip(dx[..n].chunks_exact_mut(2));
    match (hp, da) {
        (Some(hp), DaOut::Steps(da)) => {
            let it = it
                .zip(hp[..n].chunks_exact(2))
                .zip(da[..n].chunks_exact_mut(2));
            for (((((c, g), a), dx), hp), da) in it {
                let (vr, vi) = (f64::from(g[0]) + c[0], f64::from(g[1]) + c[1]);
                dx[0] = Out::new(vr as f32);
                dx[1] = Out::new(vi as f32);
                (c[0], c[1]) = cmul(a, vr, vi);
                let (dr, di) = cmul(hp, vr, vi);
                da[0] = Out::new(dr as f32);
                da[1] = Out::new(di as f32);
            }
        }
        (Some(hp), DaOut::Sum(sum)) => {
            let it = it
                .zip(hp[..n].chunks_exact(2))
                .zip(sum[..n].chunks_exact_mut(2));
            for (((((c, g), a), dx), hp), sum) in it {
                let (vr, vi) = (f64::from(g[0]) + c[0], f64::from(g[1]) + c[1]);
                dx[0] = Out::new(vr as f32);
                dx[1] = Out::new(vi as f32);
                (c[0], c[1]) = cmul(a, vr, vi);
                let (dr, di) = cmul(hp, vr, vi);
                sum[0] += dr;
                sum[1] += di;
            }
        }
        (_, da) => {
            for (((c, g), a), dx) in it {
                let (vr, vi) = (f64::from(g[0]) + c[0], f64::from(g[1]) + c[1]);
                dx[0] = Out::new(vr as f32);
                dx[1] = Out::new(vi as f32);
                (c[0], c[1]) = cmul(a, vr, vi);
            }
            if let DaOut::Steps(da) = da {
                da[..n].fill(Out::new(0.0));
            }
        }
    }
}

/// Walk floats `[c0, c0 + c.len())` of `[t0, t1)` of row `b` in the backward's order from the
/// incoming `c`, leaving the outgoing `c` there, and writing `dx` and `da` (the span's steps)
/// when given. Each step: `H = G + c`, `dx = H`, then either a reset (`c = 0`, `da = 0`) or
/// `c = conj(a) H`, `da = conj(h_prev) H`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_block<const V: bool>(
    g: &Geo,
    k: &Back,
    b: usize,
    t0: usize,
    t1: usize,
    c0: usize,
    c: &mut [f64],
    mut dx: Option<&mut [Out]>,
    da: &mut DaOut,
) {
    let (n, dw, len) = (c.len(), g.dw, t1 - t0);
    let base = g.off(b, t0) + c0;
    let (gh, ta) = (
        &k.gh[base..],
        if g.p.time_varying {
            &g.a[base..]
        } else {
            &g.a[c0..]
        },
    );
    let want_da = !matches!(da, DaOut::Skip);
    for i in 0..len {
        let l = if g.p.reverse { i } else { len - 1 - i };
        let (o, t) = (l * dw, t0 + l);
        let ghs = &gh[o..][..n];
        let mut dxs = dx.as_deref_mut().map(|d| &mut d[o + c0..][..n]);
        let mut das = match da {
            DaOut::Steps(v) => DaOut::Steps(&mut v[o + c0..][..n]),
            DaOut::Sum(v) => DaOut::Sum(&mut v[c0..][..n]),
            DaOut::Skip => DaOut::Skip,
        };
        if g.start.is_some() && g.reset(b, t) {
            match dxs {
                Some(dxs) => {
                    for ((d, gv), cv) in dxs.iter_mut().zip(ghs).zip(c.iter_mut()) {
                        *d = Out::new((f64::from(*gv) + *cv) as f32);
                        *cv = 0.0;
                    }
                }
                None => c.fill(0.0),
            }
            if let DaOut::Steps(v) = das {
                v.fill(Out::new(0.0));
            }
            continue;
        }
        let a = if g.p.time_varying {
            &ta[o..][..n]
        } else {
            &ta[..n]
        };
        let hp = if want_da {
            k.prev(g, b, t, c0, n)
        } else {
            None
        };
        if g.p.complex
            && back_cplx_avx::<V>(c, ghs, a, hp, dxs.as_deref_mut(), das.from(0), !g.p.reverse)
        {
            continue;
        }
        for_lanes!(LANES, n, !g.p.reverse, |q, m| {
            let (c, gh, a) = (&mut c[q..q + m], &ghs[q..], &a[q..]);
            let hp = hp.map(|v| &v[q..]);
            let dx = dxs.as_mut().map(|v| &mut v[q..]);
            let da = das.from(q);
            if g.p.complex {
                back_cplx(c, gh, a, hp, dx, da);
            } else {
                back_real(c, gh, a, hp, dx, da);
            }
        });
    }
}

/// Pass 2 (or the only pass) of the backward: `[t0, t1)` of row `b` from the incoming `c`,
/// writing `dx` and `da` of the span and leaving the outgoing `c` in `end`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn back_span<const V: bool>(
    g: &Geo,
    k: &Back,
    b: usize,
    t0: usize,
    t1: usize,
    carry: Carry,
    dx: &mut [Out],
    mut da: DaOut,
    end: &mut [f64],
) {
    let mut c = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let c = &mut c[..n];
        for (i, v) in c.iter_mut().enumerate() {
            *v = carry.get(c0 + i);
        }
        back_block::<V>(g, k, b, t0, t1, c0, c, Some(&mut *dx), &mut da);
        end[c0..c0 + n].copy_from_slice(c);
    }
}

/// `base^e` per channel (complex when `cplx`), by squaring.
fn pow(mut base: Vec<f64>, mut e: usize, cplx: bool) -> Vec<f64> {
    let mut p = vec![0f64; base.len()];
    set_one(&mut p, cplx);
    while e > 0 {
        if e & 1 == 1 {
            mul_f64(&mut p, &base, cplx, false);
        }
        let sq = base.clone();
        mul_f64(&mut base, &sq, cplx, false);
        e >>= 1;
    }
    p
}

/// Pass 1 of the backward: the map `c_in -> c_out` of `[t0, t1)` of row `b`.
#[inline(always)]
fn back_map<const V: bool>(g: &Geo, k: &Back, b: usize, t0: usize, t1: usize) -> Map {
    let cplx = g.p.complex;
    let reset = g.any_reset(b, t0, t1);
    let mut p = vec![0f64; g.dw];
    let mut l = vec![0f64; g.dw];
    if !reset {
        if g.p.time_varying && !cplx && g.dw == NARROW {
            p = narrow_product(g, b, t0, t1);
        } else if g.p.time_varying {
            set_one(&mut p, cplx);
            for t in t0..t1 {
                for c0 in (0..g.dw).step_by(BLOCK) {
                    let n = BLOCK.min(g.dw - c0);
                    mul_f32(&mut p[c0..c0 + n], g.a_at(b, t, c0, n), cplx, true);
                }
            }
        } else {
            // conj(a)^len
            let mut base: Vec<f64> = g.a.iter().map(|&v| f64::from(v)).collect();
            if cplx {
                base.iter_mut().skip(1).step_by(2).for_each(|v| *v = -*v);
            }
            p = pow(base, t1 - t0, cplx);
        }
    }
    let mut c = [0f64; BLOCK];
    for c0 in (0..g.dw).step_by(BLOCK) {
        let n = BLOCK.min(g.dw - c0);
        let c = &mut c[..n];
        c.fill(0.0);
        back_block::<V>(g, k, b, t0, t1, c0, c, None, &mut DaOut::Skip);
        l[c0..c0 + n].copy_from_slice(c);
    }
    Map { reset, p, l }
}

/// Backward pass on the CPU (arguments already validated by the caller), on the same kinds of
/// data as [`forward`].
pub fn backward<'a, F: HostFloats<'a>, S: HostFlags<'a>>(
    p: &LinearScan,
    args: &ScanBackwardInputs<F, S>,
) -> Result<ScanGrads<Tensor>> {
    let a = f32s(args.a);
    let h = f32s(args.h);
    let gh = f32s(args.grad_h);
    let h0 = opt_f32s(args.h0);
    let gf = opt_f32s(args.grad_final);
    let start = flags(args.start);
    let g = Geo {
        p,
        dw: p.dim * p.width(),
        a: &a,
        start: start.as_deref(),
    };
    let k = Back {
        gh: &gh,
        h: &h,
        h0: h0.as_deref(),
    };
    let (bn, tn, dw) = (p.batch, p.len, g.dw);
    let gf = gf.as_deref();
    let row_gf = |b: usize| gf.map_or(Carry::Zero, |v| Carry::F32(&v[b * dw..(b + 1) * dw]));
    let tc = plan(bn, tn, dw);
    let nk = tn.div_ceil(tc);
    let ch = chunks(p, tc);
    // incoming c of every chunk (physical chunk order), when rows are cut
    let mut carries = Vec::new();
    if nk > 1 {
        let maps: Vec<Map> = (0..bn * nk)
            .into_par_iter()
            .map(|i| {
                let (_, t0, t1) = ch[nk - 1 - i % nk];
                back_map_fast(&g, &k, i / nk, t0, t1)
            })
            .collect();
        carries = vec![0f64; bn * nk * dw];
        for b in 0..bn {
            let mut st: Vec<f64> = (0..dw).map(|i| row_gf(b).get(i)).collect();
            for (j, &(kk, _, _)) in ch.iter().rev().enumerate() {
                carries[(b * nk + kk) * dw..][..dw].copy_from_slice(&st);
                maps[b * nk + j].apply(&mut st, p.complex, false);
            }
        }
    }
    let mut dx = uninit_f32s(bn * tn * dw);
    let mut da_steps = uninit_f32s(if p.time_varying { bn * tn * dw } else { 0 });
    let mut sums = vec![0f64; if p.time_varying { 0 } else { bn * nk * dw }];
    let mut ends = vec![0f64; bn * nk * dw];
    // pieces: (row, chunk, dx, da steps or da partial sum, outgoing c)
    let mut pieces = Vec::with_capacity(bn * nk);
    {
        let mut da_it = p.time_varying.then(|| {
            da_steps
                .chunks_mut(tn * dw)
                .flat_map(|r| r.chunks_mut(tc * dw))
        });
        let mut sum_it = sums.chunks_mut(dw);
        for (b, (dxr, er)) in dx
            .chunks_mut(tn * dw)
            .zip(ends.chunks_mut(nk * dw))
            .enumerate()
        {
            for (kk, (dxc, e)) in dxr.chunks_mut(tc * dw).zip(er.chunks_mut(dw)).enumerate() {
                let da = match &mut da_it {
                    Some(it) => DaOut::Steps(it.next().expect("da is split as dx")),
                    None => DaOut::Sum(sum_it.next().expect("one partial sum per piece")),
                };
                pieces.push((b, kk, dxc, da, e));
            }
        }
    }
    let piece = |(b, kk, dxc, da, e): (usize, usize, &mut [Out], DaOut, &mut [f64])| {
        let t0 = kk * tc;
        let t1 = (t0 + tc).min(tn);
        let carry = if nk > 1 {
            Carry::F64(&carries[(b * nk + kk) * dw..][..dw])
        } else {
            row_gf(b)
        };
        back_span_fast(&g, &k, b, t0, t1, carry, dxc, da, e);
    };
    if bn * tn * dw < SERIAL_WORK {
        pieces.into_iter().for_each(piece);
    } else {
        pieces.into_par_iter().for_each(piece);
    }
    // SAFETY: the pieces cover every step of every row, and a span writes `dx` (and `da` when
    // time-varying) at every float of each of its steps, on every branch of `back_block`
    let (dx, da_steps) = unsafe { (written(dx), written(da_steps)) };
    // dh0: the outgoing c of each row's last chunk in the backward's order
    let k_last = if p.reverse { nk - 1 } else { 0 };
    let mut dh0 = vec![0f32; bn * dw];
    for (b, r) in dh0.chunks_mut(dw).enumerate() {
        for (o, v) in r.iter_mut().zip(&ends[(b * nk + k_last) * dw..][..dw]) {
            *o = *v as f32;
        }
    }
    let da = if p.time_varying {
        output(p.spec(Arg::Da).shape, da_steps, p.dtype)?
    } else {
        // partial sums in a fixed order: rows, then chunks
        let mut tot = vec![0f64; dw];
        for part in sums.chunks(dw) {
            for (t, v) in tot.iter_mut().zip(part) {
                *t += v;
            }
        }
        output(
            p.spec(Arg::Da).shape,
            tot.into_iter().map(|v| v as f32).collect(),
            DType::F32,
        )?
    };
    Ok(ScanGrads {
        dx: output(p.spec(Arg::Dx).shape, dx, p.dtype)?,
        da,
        dh0: output(vec_shape(p, &[bn, p.dim]), dh0, DType::F32)?,
    })
}
