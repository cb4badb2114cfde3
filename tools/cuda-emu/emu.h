// linrec's CUDA emulator, device side: compiles a kernels/**/*.cu translation unit as host
// C++ (g++ -include emu.h). Each CUDA thread is a std::thread; __syncthreads and __syncwarp
// are std::barriers (threads that return are dropped from them, as on sm_70+); warp shuffles
// exchange through a per-warp buffer between two warp barriers; __shared__ variables are
// function statics, which is sound because blocks run one after another. Each module built
// this way exports linrec_emu_has(name) and linrec_emu_launch(...), which the fake libcuda
// (fake_cuda.cpp) calls from cuLaunchKernel with the kernel's parameter array.
//
// This checks kernel *logic* (indexing, synchronisation, arithmetic) on machines without a
// GPU. It says nothing about performance, and it cannot see hardware-specific races.
#pragma once
#define LINREC_EMU 1

#include <algorithm>
#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct int2 { int x, y; };
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace linrec_emu {

struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<std::array<uint64_t, 2>> xbuf;  // per-thread shuffle slot
    std::vector<unsigned char> dyn_smem;
    unsigned n = 0;
};

inline thread_local dim3 t_idx;
inline thread_local dim3 b_idx;
inline dim3 b_dim;
inline dim3 g_dim;
inline Block* cur = nullptr;

inline unsigned lin_tid() { return t_idx.x + b_dim.x * (t_idx.y + b_dim.y * t_idx.z); }

inline std::map<std::string, std::function<void(void**)>>& registry() {
    static std::map<std::string, std::function<void(void**)>> r;
    return r;
}

template <typename... A, std::size_t... I>
void invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <typename... A>
struct Reg {
    Reg(const char* name, void (*f)(A...)) {
        registry()[name] = [f](void** p) { invoke(f, p, std::index_sequence_for<A...>{}); };
    }
};

template <typename T>
T shfl(T v, int src_lane_abs, bool keep_own) {
    static_assert(sizeof(T) <= 16, "shuffle of a type wider than 16 bytes");
    Block& B = *cur;
    const unsigned t = lin_tid(), w = t / 32;
    std::memcpy(B.xbuf[t].data(), &v, sizeof(T));
    B.warp[w]->arrive_and_wait();
    T r = v;
    if (!keep_own) std::memcpy(&r, B.xbuf[w * 32 + src_lane_abs].data(), sizeof(T));
    B.warp[w]->arrive_and_wait();
    return r;
}

}  // namespace linrec_emu

#define threadIdx (linrec_emu::t_idx)
#define blockIdx (linrec_emu::b_idx)
#define blockDim (linrec_emu::b_dim)
#define gridDim (linrec_emu::g_dim)

inline void __syncthreads() { linrec_emu::cur->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
    linrec_emu::cur->warp[linrec_emu::lin_tid() / 32]->arrive_and_wait();
}

template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int lane = linrec_emu::lin_tid() % 32, base = lane / width * width;
    return linrec_emu::shfl(v, base + ((src % width) + width) % width, false);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = linrec_emu::lin_tid() % 32, base = lane / width * width;
    const int s = lane - (int)delta;
    return linrec_emu::shfl(v, s < base ? lane : s, s < base);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = linrec_emu::lin_tid() % 32, base = lane / width * width;
    const int s = lane + (int)delta;
    return linrec_emu::shfl(v, s >= base + width ? lane : s, s >= base + width);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int lane = linrec_emu::lin_tid() % 32, base = lane / width * width;
    const int s = base + ((lane - base) ^ mask) % width;
    return linrec_emu::shfl(v, s, false);
}

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
template <typename T> inline T min(T a, T b) { return a < b ? a : b; }
template <typename T> inline T max(T a, T b) { return a > b ? a : b; }

// IEEE half <-> float with round to nearest even (what cvt.rn.f16.f32 does).
inline unsigned short linrec_emu_f32_to_f16(float f) {
    uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    const int exp = (int)((x >> 23) & 0xffu);
    if (exp == 0xff) return (unsigned short)(sign | 0x7c00u | (mant ? 0x200u : 0u));
    const int e = exp - 127 + 15;
    if (e >= 0x1f) return (unsigned short)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (unsigned short)sign;
        const uint32_t m24 = mant | 0x800000u;
        const int shift = 14 - e;
        uint32_t m = m24 >> shift;
        const uint32_t rem = m24 & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (m & 1u))) ++m;
        return (unsigned short)(sign | m);
    }
    uint32_t r = sign | ((uint32_t)e << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return (unsigned short)r;
}
inline float linrec_emu_f16_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu, x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {
            int e = -1;
            do {
                ++e;
                mant <<= 1;
            } while (!(mant & 0x400u));
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((uint32_t)(exp - 15 + 127) << 23) | (mant << 13);
    }
    return __uint_as_float(x);
}
inline unsigned short linrec_emu_f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Dynamic shared memory for kernels that declare it with LINREC_DYN_SMEM.
inline void* linrec_emu_dyn_smem() { return linrec_emu::cur->dyn_smem.data(); }

extern "C" int linrec_emu_has(const char* name) {
    return linrec_emu::registry().count(name) ? 1 : 0;
}

extern "C" int linrec_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz, unsigned smem,
                                 void** params) {
    using namespace linrec_emu;
    auto it = registry().find(name);
    if (it == registry().end()) return 1;
    g_dim = {gx, gy, gz};
    b_dim = {bx, by, bz};
    const unsigned n = bx * by * bz;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                Block blk;
                blk.n = n;
                blk.bar = std::make_unique<std::barrier<>>(n);
                for (unsigned w = 0; w * 32 < n; ++w)
                    blk.warp.push_back(std::make_unique<std::barrier<>>(std::min(32u, n - w * 32)));
                blk.xbuf.resize(n);
                // Fill dynamic shared memory with NaNs so reads before writes show.
                blk.dyn_smem.assign(smem + 16, 0xff);
                cur = &blk;
                std::vector<std::thread> th;
                th.reserve(n);
                for (unsigned t = 0; t < n; ++t) {
                    th.emplace_back([&, t, x, y, z] {
                        t_idx = {t % bx, (t / bx) % by, t / (bx * by)};
                        b_idx = {x, y, z};
                        it->second(params);
                        blk.bar->arrive_and_drop();
                        blk.warp[t / 32]->arrive_and_drop();
                    });
                }
                for (auto& t : th) t.join();
                cur = nullptr;
            }
    return 0;
}

// Kernels register with LINREC_REGISTER(name) after their definition.
#define LINREC_REGISTER(name) static linrec_emu::Reg linrec_reg_##name(#name, &name);
