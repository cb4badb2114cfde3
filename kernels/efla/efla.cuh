// Shared pieces of the EFLA / delta-rule kernels (docs/efla.md): the parameter block, flags, layouts
// and the per-step coefficients of the update rule.
#pragma once
#include "common.cuh"

namespace efla {

// Flags (src/ops/efla/cuda.rs mirrors them).
constexpr unsigned HAS_S0 = 1, HAS_START = 2, RULE_EFLA = 4, HAS_GF = 8, WRITE_OUT = 16,
                   REVERSE_PART = 64;

// Sizes of one call, passed by value to every kernel (src/ops/efla/cuda.rs: `Dims`).
struct Dims {
    int B, T, H, K, V;
    int C;   // steps per chunk (chunked kernels)
    int NC;  // chunks per sequence
    float scale;
    unsigned flags;
};

// Element index of (b, t, h, 0) in a [B, T, H, n] tensor.
__device__ __forceinline__ size_t seq_at(const Dims& d, int b, int t, int h, int n) {
    return (((size_t)b * d.T + t) * d.H + h) * (size_t)n;
}
// Element index of S[0][0] of (b, h) in a [B, H, K, V] state.
__device__ __forceinline__ size_t state_at(const Dims& d, int bh) {
    return (size_t)bh * d.K * d.V;
}
__device__ __forceinline__ bool reset_at(const Dims& d, const unsigned char* start, int b, int t) {
    return (d.flags & HAS_START) && start[(size_t)b * d.T + t] != 0;
}

// g(x) = (1 - exp(-x)) / x = -expm1(-x) / x, g(0) = 1.
__device__ __forceinline__ float rule_g(float x) { return x == 0.f ? 1.f : -expm1f(-x) / x; }

// g'(x) = (x exp(-x) + expm1(-x)) / x^2; below |x| = 1 its series -sum_m (m+1)/(m+2)! (-x)^m
// (13 terms: truncation under 1e-10), where the closed form cancels.
__device__ __forceinline__ float rule_gp(float x) {
    if (fabsf(x) < 1.f) {
        const float y = -x;
        float s = 12.f / 6227020800.f;
        s = s * y + 11.f / 479001600.f;
        s = s * y + 10.f / 39916800.f;
        s = s * y + 9.f / 3628800.f;
        s = s * y + 8.f / 362880.f;
        s = s * y + 7.f / 40320.f;
        s = s * y + 6.f / 5040.f;
        s = s * y + 5.f / 720.f;
        s = s * y + 4.f / 120.f;
        s = s * y + 3.f / 24.f;
        s = s * y + 2.f / 6.f;
        s = s * y + 0.5f;
        return -s;
    }
    return (x * expf(-x) + expm1f(-x)) / (x * x);
}

// Per-step coefficients (alpha, dk factor, dbeta factor): EFLA alpha = beta g(beta lambda),
// dk += k dalpha 2 beta^2 g'(beta lambda), dbeta = dalpha exp(-beta lambda); delta rule
// (beta, 0, 1).
struct Coef {
    float alpha, dkf, dbf;
};
__device__ __forceinline__ Coef rule_coef(bool efla_rule, float beta, float lambda) {
    if (!efla_rule) return {beta, 0.f, 1.f};
    const float x = beta * lambda;
    return {beta * rule_g(x), 2.f * beta * beta * rule_gp(x), expf(-x)};
}

}  // namespace efla
