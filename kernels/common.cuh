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

// ------------------------------------------------------------------ dynamic shared memory
// LINREC_DYN_SMEM(T, name) declares `T* name` at the start of the block's dynamic shared memory
// (16-byte aligned; the launch gives its size, above 48 KiB only after the kernel's
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES is raised).
#ifdef LINREC_EMU
#define LINREC_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(linrec_emu_dyn_smem())
#else
#define LINREC_DYN_SMEM(T, name)                                  \
    extern __shared__ __align__(16) unsigned char linrec_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(linrec_dyn_smem_)
#endif

// LINREC_CHECK_DYN_SMEM(bytes): on the emulator, abort unless the launch gave at least `bytes` of
// dynamic shared memory; nothing on a GPU.
#ifdef LINREC_EMU
#define LINREC_CHECK_DYN_SMEM(bytes) linrec_emu_check_dyn_smem((size_t)(bytes), __func__)
#else
#define LINREC_CHECK_DYN_SMEM(bytes) ((void)0)
#endif

// ------------------------------------------------------------------ tensor cores (sm_80+)
// Thin wrappers over the warp-wide PTX instructions; the emulator (tools/cuda-emu/emu.h) gives
// each a host implementation that exchanges the 32 lanes' operands and follows the PTX ISA's
// fragment layouts. All 32 lanes of the warp must call them together.
//
// mma.m16n8k16 with bf16 inputs and f32 accumulation, g = lane >> 2, t = lane & 3:
//   A (16 x 16, row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B (16 x 8, col):  b[0] = (2t..2t+1, g), b[1] = (2t+8..2t+9, g)
//   C, D (16 x 8):    d[0] = (g, 2t), d[1] = (g, 2t+1), d[2] = (g+8, 2t), d[3] = (g+8, 2t+1)
// (each 32-bit register holds two bf16, the lower index in the low half).

// bf16 bits of two floats packed into one mma register (lo in the low half), rounded to nearest
// even.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)from_f32<bf16s>(lo).bits | ((unsigned)from_f32<bf16s>(hi).bits << 16);
}

// 32-bit shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
#ifdef LINREC_EMU
    return 0;
#else
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
#endif
}

// ldmatrix.sync.aligned.m8n8.xN(.trans).shared.b16: lanes 8i .. 8i+7 give the 16-byte-aligned
// addresses of the 8 rows (8 b16 each) of matrix i < N; lane l receives in r[i] row l/4,
// elements 2(l%4) and 2(l%4)+1 of matrix i (with TRANS: of its transpose).
template <int N, bool TRANS>
__device__ __forceinline__ void ldsm(unsigned (&r)[N], const void* row) {
#ifdef LINREC_EMU
    linrec_emu_ldmatrix(r, N, TRANS, row);
#else
    const unsigned a = smem_addr(row);
    if constexpr (N == 4 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else if constexpr (N == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else if constexpr (N == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (N == 2 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (N == 1 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                     : "=r"(r[0]) : "r"(a));
#endif
}

// d += A B on the tensor cores (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
#ifdef LINREC_EMU
    linrec_emu_mma_bf16_16816(d, a, b, d);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
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

// An unevaluated sum x + y, and the error-free transforms that build one (the two-float
// carries of the linear scan and FFM at long T).
struct F2s {
    float x, y;
};
// a * b = p + e exactly (fma).
__device__ __forceinline__ F2s two_prod(float a, float b) {
    const float p = a * b;
    return {p, fmaf(a, b, -p)};
}
// a + b = s + e exactly (Knuth).
__device__ __forceinline__ F2s two_sum(float a, float b) {
    const float s = a + b;
    const float bb = s - a;
    return {s, (a - (s - bb)) + (b - bb)};
}
