// Shared device helpers for linrec's CUDA kernels. Self-contained (no CUDA headers), so the
// same source compiles with nvcc and with NVRTC, which ships no cuda_fp16.h / cuda_bf16.h.
#pragma once

// Kernels list themselves with LINREC_REGISTER(name) after their definition: nothing on a GPU,
// a registration in tools/cuda-emu (the CPU emulator used where there is no GPU).
#ifndef LINREC_EMU
#define LINREC_REGISTER(name)
#endif

// ------------------------------------------------------------------ storage types
// 16-bit storage types as raw bits; kernels widen to f32 on load and round on store.
struct f16s { unsigned short bits; };
struct bf16s { unsigned short bits; };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(f16s v) {
#ifdef LINREC_EMU
    return linrec_emu_f16_to_f32(v.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}
__device__ __forceinline__ float to_f32(bf16s v) {
    return __uint_as_float(((unsigned int)v.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ f16s from_f32<f16s>(float v) {
    f16s r;
#ifdef LINREC_EMU
    r.bits = linrec_emu_f32_to_f16(v);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
#endif
    return r;
}
template <> __device__ __forceinline__ bf16s from_f32<bf16s>(float v) {
    bf16s r;
#ifdef LINREC_EMU
    r.bits = linrec_emu_f32_to_bf16(v);
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
#endif
    return r;
}

// ------------------------------------------------------------------ real / complex values
// V<false> is a real f32, V<true> a complex (re, im); storage of complex data interleaves
// (re, im) pairs of the storage type.
template <bool C> struct V;
template <> struct V<false> {
    float re;
    __device__ __forceinline__ static V zero() { return {0.f}; }
    __device__ __forceinline__ static V one() { return {1.f}; }
    __device__ __forceinline__ V conj() const { return *this; }
};
template <> struct V<true> {
    float re, im;
    __device__ __forceinline__ static V zero() { return {0.f, 0.f}; }
    __device__ __forceinline__ static V one() { return {1.f, 0.f}; }
    __device__ __forceinline__ V conj() const { return {re, -im}; }
};
__device__ __forceinline__ V<false> operator*(V<false> a, V<false> b) { return {a.re * b.re}; }
__device__ __forceinline__ V<false> operator+(V<false> a, V<false> b) { return {a.re + b.re}; }
__device__ __forceinline__ V<true> operator*(V<true> a, V<true> b) {
    return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
__device__ __forceinline__ V<true> operator+(V<true> a, V<true> b) {
    return {a.re + b.re, a.im + b.im};
}

template <bool C, typename T>
__device__ __forceinline__ V<C> load_v(const T* p, size_t i);
template <bool C, typename T>
__device__ __forceinline__ void store_v(T* p, size_t i, V<C> v);

template <> __device__ __forceinline__ V<false> load_v<false, float>(const float* p, size_t i) { return {p[i]}; }
template <> __device__ __forceinline__ V<false> load_v<false, f16s>(const f16s* p, size_t i) { return {to_f32(p[i])}; }
template <> __device__ __forceinline__ V<false> load_v<false, bf16s>(const bf16s* p, size_t i) { return {to_f32(p[i])}; }
// Complex data is read as two scalars (not float2) so views at any float offset are valid.
template <> __device__ __forceinline__ V<true> load_v<true, float>(const float* p, size_t i) {
    return {p[2 * i], p[2 * i + 1]};
}
template <> __device__ __forceinline__ V<true> load_v<true, f16s>(const f16s* p, size_t i) {
    return {to_f32(p[2 * i]), to_f32(p[2 * i + 1])};
}
template <> __device__ __forceinline__ V<true> load_v<true, bf16s>(const bf16s* p, size_t i) {
    return {to_f32(p[2 * i]), to_f32(p[2 * i + 1])};
}

template <> __device__ __forceinline__ void store_v<false, float>(float* p, size_t i, V<false> v) { p[i] = v.re; }
template <> __device__ __forceinline__ void store_v<false, f16s>(f16s* p, size_t i, V<false> v) { p[i] = from_f32<f16s>(v.re); }
template <> __device__ __forceinline__ void store_v<false, bf16s>(bf16s* p, size_t i, V<false> v) { p[i] = from_f32<bf16s>(v.re); }
template <> __device__ __forceinline__ void store_v<true, float>(float* p, size_t i, V<true> v) {
    p[2 * i] = v.re;
    p[2 * i + 1] = v.im;
}
template <> __device__ __forceinline__ void store_v<true, f16s>(f16s* p, size_t i, V<true> v) {
    p[2 * i] = from_f32<f16s>(v.re);
    p[2 * i + 1] = from_f32<f16s>(v.im);
}
template <> __device__ __forceinline__ void store_v<true, bf16s>(bf16s* p, size_t i, V<true> v) {
    p[2 * i] = from_f32<bf16s>(v.re);
    p[2 * i + 1] = from_f32<bf16s>(v.im);
}

// ------------------------------------------------------------------ grids
// Kernels get a linear block id over a possibly 2-D grid (the launcher splits counts above
// the 65535 limit of gridDim.y-style dimensions).
__device__ __forceinline__ unsigned long long linear_block() {
    return (unsigned long long)blockIdx.x + (unsigned long long)blockIdx.y * gridDim.x;
}

// Deterministic column sums: out[n] = sum over r (ascending) of in[r * cols + n].
extern "C" __global__ void reduce_rows_f32(const float* __restrict__ in, float* __restrict__ out,
                                           int rows, int cols) {
    long long n = (long long)linear_block() * blockDim.x + threadIdx.x;
    if (n >= cols) return;
    float s = 0.f;
    for (int r = 0; r < rows; ++r) s += in[(size_t)r * cols + n];
    out[n] = s;
}
LINREC_REGISTER(reduce_rows_f32)
