// Self-test of the tensor-core building blocks the EFLA chunk kernels use (kernels/common.cuh,
// kernels/efla/tc.cuh), run by tests/efla.rs on the GPU or the emulator and checked on the host
// against the PTX ISA's fragment tables (src/ops/efla/cuda.rs, `tensor_core_selftest`). On a GPU
// it checks our reading of the ISA; on the emulator, the emulator's mma and ldmatrix.
//
// One block of one warp. Inputs: a, b: 16 x 16 f32 row-major (small integers, exact in bf16),
// x: 32 f32 (arbitrary). Output (f32):
//   [0, 256)      A B from fragments built by hand from the ISA tables (no ldmatrix)
//   [256, 512)    A B with tc::gemm: A row-major, B stored n-major (ldmatrix, no .trans)
//   [512, 768)    A B with tc::gemm: A stored transposed, B stored k-major (ldmatrix .trans)
//   [768, 1024)   ldmatrix.x4 of a 32 x 8 matrix M[r][c] = 8 r + c: lane l, register i, half h
//                 at 768 + 8 l + 2 i + h
//   [1024, 1280)  the same with .trans
//   [1280, 1376)  x split into 3 planes (tc::split): plane p of x[i] at 1280 + 3 i + p
//   [1376, 1632)  A3 B3 on 3-plane operands with L = 3, where A3 = a (1 + 2^-9 + 2^-18) and
//                 B3 = b (1 + 2^-9 + 2^-18) elementwise (exact in 3 planes, not in 1 or 2)
#include "efla/tc.cuh"

extern "C" __global__ void efla_tc_selftest(const float* a, const float* b, const float* x,
                                            float* out) {
    __shared__ __align__(16) bf16s sa[16 * 24], sat[16 * 24], sbn[16 * 24], sbk[16 * 24];
    __shared__ __align__(16) bf16s raw[32 * 8];
    __shared__ __align__(16) bf16s a3[3 * 16 * 24], b3[3 * 16 * 24];
    const int l = threadIdx.x, g = l >> 2, t = l & 3;
    for (int e = l; e < 256; e += 32) {
        const int r = e / 16, c = e % 16;
        sa[r * 24 + c] = from_f32<bf16s>(a[e]);
        sat[c * 24 + r] = from_f32<bf16s>(a[e]);
        sbk[r * 24 + c] = from_f32<bf16s>(b[e]);
        sbn[c * 24 + r] = from_f32<bf16s>(b[e]);
        const float s = 1.f + 1.f / 512.f + 1.f / 262144.f;
        tc::put1<3>(a3, 16 * 24, r * 24 + c, a[e] * s);
        tc::put1<3>(b3, 16 * 24, r * 24 + c, b[e] * s);
    }
    for (int e = l; e < 256; e += 32) raw[e] = from_f32<bf16s>((float)e);
    __syncwarp();

    // 1: fragments by hand
    for (int nt = 0; nt < 2; ++nt) {
        unsigned af[4], bfr[2];
        af[0] = pack_bf16(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
        af[1] = pack_bf16(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
        af[2] = pack_bf16(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
        af[3] = pack_bf16(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
        const int n = 8 * nt + g;
        bfr[0] = pack_bf16(b[(2 * t) * 16 + n], b[(2 * t + 1) * 16 + n]);
        bfr[1] = pack_bf16(b[(2 * t + 8) * 16 + n], b[(2 * t + 9) * 16 + n]);
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_bf16(d, af, bfr);
        out[g * 16 + 8 * nt + 2 * t] = d[0];
        out[g * 16 + 8 * nt + 2 * t + 1] = d[1];
        out[(g + 8) * 16 + 8 * nt + 2 * t] = d[2];
        out[(g + 8) * 16 + 8 * nt + 2 * t + 1] = d[3];
    }
    // 2, 3: tc::gemm with and without .trans; 7: 3-plane operands
    {
        float acc[3][1][2][4];
        tc::zero(acc[0]);
        tc::zero(acc[1]);
        tc::zero(acc[2]);
        tc::gemm<1, 2, 1, 1, 1, false, false>(acc[0], {sa, 24, 0}, {sbn, 24, 0}, 0, 0, 16, l);
        tc::gemm<1, 2, 1, 1, 1, true, true>(acc[1], {sat, 24, 0}, {sbk, 24, 0}, 0, 0, 16, l);
        tc::gemm<1, 2, 3, 3, 3, false, true>(acc[2], {a3, 24, 16 * 24}, {b3, 24, 16 * 24}, 0, 0,
                                             16, l);
        const int base[3] = {256, 512, 1376};
        for (int w = 0; w < 3; ++w)
            for (int nt = 0; nt < 2; ++nt)
                for (int e = 0; e < 4; ++e)
                    out[base[w] + tc::acc_row(l, e) * 16 + 8 * nt + tc::acc_col(l, e)] =
                        acc[w][0][nt][e];
    }
    // 4, 5: raw ldmatrix
    {
        unsigned r[4];
        ldsm<4, false>(r, raw + l * 8);
        for (int i = 0; i < 4; ++i) {
            out[768 + 8 * l + 2 * i] = to_f32(bf16s{(unsigned short)(r[i] & 0xffffu)});
            out[768 + 8 * l + 2 * i + 1] = to_f32(bf16s{(unsigned short)(r[i] >> 16)});
        }
        ldsm<4, true>(r, raw + l * 8);
        for (int i = 0; i < 4; ++i) {
            out[1024 + 8 * l + 2 * i] = to_f32(bf16s{(unsigned short)(r[i] & 0xffffu)});
            out[1024 + 8 * l + 2 * i + 1] = to_f32(bf16s{(unsigned short)(r[i] >> 16)});
        }
    }
    // 6: splitting
    {
        unsigned short h[3];
        tc::split<3>(x[l], h);
        for (int p = 0; p < 3; ++p) out[1280 + 3 * l + p] = to_f32(bf16s{h[p]});
    }
}
LINREC_REGISTER(efla_tc_selftest)
