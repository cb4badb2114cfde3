// linrec's CUDA emulator, device side: compiles a kernels/**/*.cu translation unit as host
// C++ (g++ -include emu.h). Each CUDA thread is a std::thread; __syncthreads and __syncwarp
// are std::barriers (threads that return are dropped from them, as on sm_70+); warp shuffles
// exchange through a per-warp buffer between two warp barriers; __shared__ variables are
// function statics, which is sound because blocks run one after another. Each module built
// this way exports linrec_emu_has(name) and linrec_emu_launch(...), which the fake libcuda
// (fake_cuda.cpp) calls from cuLaunchKernel with the kernel's parameter array.
//
// By default the CUDA threads of a block are *fibers* (user-level contexts switched by a few
// instructions) run cooperatively on the launching OS thread: a barrier parks the fiber and the
// scheduler resumes the others, so a barrier costs nanoseconds instead of the OS context switches
// of std::thread (hundreds of microseconds per warp barrier on a loaded 2-core machine). The
// semantics are the same (barriers, warp exchanges, threads that return drop out of barriers); a
// barrier that can never complete is reported as a deadlock instead of hanging. Environment:
//   LINREC_EMU_THREADS=1     one std::thread per CUDA thread (the original mode: truly concurrent,
//                            which may expose a missing barrier that fibers happen to hide);
//   LINREC_EMU_SCHEDULE=reverse|shuffle   the order fibers are resumed in (default: ascending), to
//                            shake out code that depends on the order between barriers.
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
#include <cstdlib>
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
#define __align__(n) __attribute__((aligned(n)))

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

// ------------------------------------------------------------------ fibers (x86-64 only)
#if defined(__x86_64__)
#define LINREC_EMU_FIBERS 1
// linrec_emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control word
// on the current stack, stores the stack pointer in *save, switches to `to` and restores the same
// from there. A new fiber's stack is prepared so that the first switch "returns" into
// linrec_emu_tramp, which calls r13(r12) (see Fiber::start).
extern "C" void linrec_emu_switch(void** save, void* to);
extern "C" void linrec_emu_tramp();
asm(R"(
    .text
    .p2align 4
    .hidden linrec_emu_switch
    .globl linrec_emu_switch
    .type linrec_emu_switch,@function
linrec_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size linrec_emu_switch, .-linrec_emu_switch
    .p2align 4
    .hidden linrec_emu_tramp
    .globl linrec_emu_tramp
    .type linrec_emu_tramp,@function
linrec_emu_tramp:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size linrec_emu_tramp, .-linrec_emu_tramp
)");
#endif

struct Fiber;
struct Sched;

// A barrier of `expected` participants, either a std::barrier (thread mode) or cooperative
// (fiber mode: the last arrival completes the phase and carries on; the others park until the
// scheduler sees the phase complete).
struct Bar {
    std::unique_ptr<std::barrier<>> os;
    unsigned expected = 0, arrived = 0;
    uint64_t gen = 0;
    void arrive_and_wait();
    void arrive_and_drop();
};

struct Block {
    std::unique_ptr<Bar> bar;
    std::vector<std::unique_ptr<Bar>> warp;
    std::vector<std::array<uint64_t, 2>> xbuf;  // per-thread shuffle slot
    // per-thread slots for wider warp collectives (tensor-core fragments, ldmatrix addresses)
    std::vector<std::array<uint64_t, 8>> wbuf;
    std::vector<unsigned char> dyn_smem;
    unsigned n = 0;
};

inline thread_local dim3 t_idx;
inline thread_local dim3 b_idx;
inline dim3 b_dim;
inline dim3 g_dim;
inline Block* cur = nullptr;

struct Fiber {
    void* sp = nullptr;
    unsigned char* stack = nullptr;
    dim3 tid;
    bool done = false;
    Bar* wait = nullptr;  // parked on this barrier ...
    uint64_t wait_gen = 0;  // ... until its phase moves past this one
};

// The cooperative scheduler of the block being run (fiber mode only).
struct Sched {
    void* sp = nullptr;  // the scheduler's own context
    std::vector<Fiber> fibers;
    Fiber* running = nullptr;
    const std::function<void(void**)>* kernel = nullptr;
    void** params = nullptr;
    static constexpr size_t kStack = 512 * 1024;
    ~Sched() {
        for (auto& f : fibers) std::free(f.stack);
    }
    void park(Bar* b) {
        Fiber* f = running;
        f->wait = b;
        f->wait_gen = b->gen;
        linrec_emu_switch(&f->sp, sp);
    }
};
inline Sched* sched = nullptr;  // non-null while a block runs as fibers

inline void Bar::arrive_and_wait() {
    if (os) {
        os->arrive_and_wait();
        return;
    }
    if (++arrived >= expected) {
        arrived = 0;
        ++gen;
        return;
    }
    sched->park(this);
}
inline void Bar::arrive_and_drop() {
    if (os) {
        os->arrive_and_drop();
        return;
    }
    --expected;
    if (arrived > 0 && arrived >= expected) {
        arrived = 0;
        ++gen;
    }
}

inline std::unique_ptr<Bar> make_bar(unsigned n, bool threads) {
    auto b = std::make_unique<Bar>();
    b->expected = n;
    if (threads) b->os = std::make_unique<std::barrier<>>(n);
    return b;
}

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
// Integer atomics (atomic in both modes: fibers and LINREC_EMU_THREADS=1).
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
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

// ------------------------------------------------------------------ tensor cores
// ldmatrix.sync.aligned.m8n8.x{1,2,4}(.trans).shared.b16, following the PTX ISA: lanes 8i..8i+7
// give the row addresses of matrix i; lane l gets row l/4, elements 2(l%4), 2(l%4)+1 of matrix
// i (.trans: column l/4, rows 2(l%4), 2(l%4)+1), the first in the low 16 bits. The addresses go
// through the warp exchange slots; a misaligned row address aborts (the hardware faults).
inline void linrec_emu_ldmatrix(unsigned* r, int num, bool trans, const void* row) {
    using namespace linrec_emu;
    Block& B = *cur;
    const unsigned t = lin_tid(), w = t / 32, l = t % 32;
    if ((reinterpret_cast<uintptr_t>(row) & 15) != 0) {
        fprintf(stderr, "linrec cuda-emu: ldmatrix row address %p is not 16-byte aligned\n", row);
        std::abort();
    }
    B.wbuf[t][0] = reinterpret_cast<uintptr_t>(row);
    B.warp[w]->arrive_and_wait();
    auto addr = [&](unsigned lane) {
        return reinterpret_cast<const unsigned short*>(B.wbuf[w * 32 + lane][0]);
    };
    for (int i = 0; i < num; ++i) {
        unsigned short e0, e1;
        if (!trans) {
            const unsigned short* p = addr(8 * i + l / 4);
            e0 = p[2 * (l % 4)];
            e1 = p[2 * (l % 4) + 1];
        } else {
            e0 = addr(8 * i + 2 * (l % 4))[l / 4];
            e1 = addr(8 * i + 2 * (l % 4) + 1)[l / 4];
        }
        r[i] = (unsigned)e0 | ((unsigned)e1 << 16);
    }
    B.warp[w]->arrive_and_wait();
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d = a b + c, following the PTX ISA
// fragment layouts (g = lane >> 2, t = lane & 3): A element (row, col) sits in lane
// 4 (row % 8) + (col % 8) / 2, register (row / 8) + 2 (col / 8), half col % 2; B element
// (row, col) in lane 4 col + (row % 8) / 2, register row / 8, half row % 2; D element (row, col)
// is d[2 (row / 8) + col % 2] of lane 4 (row % 8) + col / 2. The bf16 products are exact in f32
// and are accumulated in f32, k ascending, onto c.
inline void linrec_emu_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b,
                                      const float* c) {
    using namespace linrec_emu;
    Block& B = *cur;
    const unsigned t = lin_tid(), w = t / 32, l = t % 32;
    auto& slot = B.wbuf[t];
    std::memcpy(&slot[0], a, 16);
    std::memcpy(&slot[2], b, 8);
    std::memcpy(&slot[3], c, 16);
    B.warp[w]->arrive_and_wait();
    auto reg = [&](unsigned lane, int i) {
        unsigned v;
        std::memcpy(&v, reinterpret_cast<const char*>(&B.wbuf[w * 32 + lane][0]) + 4 * i, 4);
        return v;
    };
    auto half = [](unsigned v, int h) { return __uint_as_float((h ? v >> 16 : v & 0xffffu) << 16); };
    auto A = [&](int row, int col) {
        return half(reg(4 * (row % 8) + (col % 8) / 2, row / 8 + 2 * (col / 8)), col % 2);
    };
    auto Bm = [&](int row, int col) {
        return half(reg(4 * col + (row % 8) / 2, 4 + row / 8), row % 2);
    };
    float cc[4];
    std::memcpy(cc, &slot[3], 16);
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = (int)(l >> 2) + 8 * (i / 2), col = 2 * (int)(l & 3) + (i % 2);
        float acc = cc[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * Bm(k, col);
        out[i] = acc;
    }
    B.warp[w]->arrive_and_wait();
    std::memcpy(d, out, 16);
}

// Dynamic shared memory for kernels that declare it with LINREC_DYN_SMEM.
inline void* linrec_emu_dyn_smem() { return linrec_emu::cur->dyn_smem.data(); }
// Kernels that lay out dynamic shared memory check that the launch gave them enough
// (LINREC_CHECK_DYN_SMEM in kernels/common.cuh): a launch with too little aborts here instead of
// writing past the buffer.
inline void linrec_emu_check_dyn_smem(size_t need, const char* where) {
    const size_t have = linrec_emu::cur->dyn_smem.size() - 16;
    if (need > have) {
        fprintf(stderr, "linrec cuda-emu: %s needs %zu bytes of dynamic shared memory, launched with %zu\n",
                where, need, have);
        std::abort();
    }
}

extern "C" int linrec_emu_has(const char* name) {
    return linrec_emu::registry().count(name) ? 1 : 0;
}

namespace linrec_emu {

inline bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
}

// Body of every fiber: run the kernel as CUDA thread `f`, drop out of the barriers, hand back.
inline void fiber_main(void* arg) {
    Fiber* f = static_cast<Fiber*>(arg);
    (*sched->kernel)(sched->params);
    Block& blk = *cur;
    const unsigned t = (unsigned)(f - sched->fibers.data());
    blk.bar->arrive_and_drop();
    blk.warp[t / 32]->arrive_and_drop();
    f->done = true;
    linrec_emu_switch(&f->sp, sched->sp);
    std::abort();  // never resumed
}

// Run one block as fibers. Returns false on a deadlock (a barrier that can never complete).
inline bool run_block_fibers(Sched& S, Block& blk, unsigned bx, unsigned by, unsigned n,
                             const std::function<void(void**)>& kernel, void** params,
                             int order, uint64_t& rng) {
#ifdef LINREC_EMU_FIBERS
    S.kernel = &kernel;
    S.params = params;
    if (S.fibers.size() < n) S.fibers.resize(n);
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = S.fibers[t];
        if (!f.stack) f.stack = static_cast<unsigned char*>(std::aligned_alloc(64, Sched::kStack));
        f.done = false;
        f.wait = nullptr;
        f.tid = {t % bx, (t / bx) % by, t / (bx * by)};
        // initial frame, popped by linrec_emu_switch: [mxcsr | fpu cw][r15][r14][r13][r12][rbx]
        // [rbp][return address = linrec_emu_tramp]; rsp is 16-aligned after the return
        uintptr_t top = ((uintptr_t)f.stack + Sched::kStack) & ~(uintptr_t)15;
        uint64_t* sp = reinterpret_cast<uint64_t*>(top - 64 - 16);
        unsigned mx = 0x1f80;
        unsigned short cw = 0x037f;
        std::memcpy(&sp[0], &mx, 4);
        std::memcpy(reinterpret_cast<char*>(&sp[0]) + 4, &cw, 2);
        sp[1] = 0;                               // r15
        sp[2] = 0;                               // r14
        sp[3] = (uint64_t)(void*)&fiber_main;    // r13: entry
        sp[4] = (uint64_t)(void*)&f;             // r12: argument
        sp[5] = 0;                               // rbx
        sp[6] = 0;                               // rbp
        sp[7] = (uint64_t)(void*)&linrec_emu_tramp;
        f.sp = sp;
    }
    std::vector<unsigned> ord(n);
    for (unsigned t = 0; t < n; ++t) ord[t] = order == 1 ? n - 1 - t : t;
    unsigned left = n;
    while (left > 0) {
        if (order == 2) {
            for (unsigned t = n; t > 1; --t) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                std::swap(ord[t - 1], ord[(rng >> 33) % t]);
            }
        }
        bool progress = false;
        for (unsigned t : ord) {
            Fiber& f = S.fibers[t];
            if (f.done || (f.wait && f.wait->gen == f.wait_gen)) continue;
            f.wait = nullptr;
            S.running = &f;
            t_idx = f.tid;
            linrec_emu_switch(&S.sp, f.sp);
            progress = true;
            if (f.done) --left;
        }
        if (!progress) return false;
    }
    return true;
#else
    (void)S, (void)blk, (void)bx, (void)by, (void)n, (void)kernel, (void)params, (void)order,
        (void)rng;
    return false;
#endif
}

}  // namespace linrec_emu

extern "C" int linrec_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz, unsigned smem,
                                 void** params) {
    using namespace linrec_emu;
    auto it = registry().find(name);
    if (it == registry().end()) return 1;
    g_dim = {gx, gy, gz};
    b_dim = {bx, by, bz};
    const unsigned n = bx * by * bz;
#ifdef LINREC_EMU_FIBERS
    const bool threads = env_flag("LINREC_EMU_THREADS");
#else
    const bool threads = true;
#endif
    int order = 0;
    if (const char* o = std::getenv("LINREC_EMU_SCHEDULE")) {
        if (!std::strcmp(o, "reverse")) order = 1;
        if (!std::strcmp(o, "shuffle")) order = 2;
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    static Sched S;  // fiber stacks, reused by every launch (launches never overlap)
    int status = 0;
    for (unsigned z = 0; z < gz && !status; ++z)
        for (unsigned y = 0; y < gy && !status; ++y)
            for (unsigned x = 0; x < gx && !status; ++x) {
                Block blk;
                blk.n = n;
                blk.bar = make_bar(n, threads);
                for (unsigned w = 0; w * 32 < n; ++w)
                    blk.warp.push_back(make_bar(std::min(32u, n - w * 32), threads));
                blk.xbuf.resize(n);
                blk.wbuf.resize(n);
                // Fill dynamic shared memory with NaNs so reads before writes show.
                blk.dyn_smem.assign(smem + 16, 0xff);
                cur = &blk;
                if (threads) {
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
                } else {
                    b_idx = {x, y, z};
                    sched = &S;
                    if (!run_block_fibers(S, blk, bx, by, n, it->second, params, order, rng)) {
                        fprintf(stderr,
                                "linrec cuda-emu: %s deadlocked in block (%u, %u, %u): a barrier "
                                "that not every thread of the block or warp reaches\n",
                                name, x, y, z);
                        status = 2;
                    }
                    sched = nullptr;
                }
                cur = nullptr;
            }
    return status;
}

// Kernels register with LINREC_REGISTER(name) after their definition.
#define LINREC_REGISTER(name) static linrec_emu::Reg linrec_reg_##name(#name, &name);
