//! include-only
// Tiled products for the chunked kernels. A workgroup of 256 threads computes a 64 x 64
// output tile: thread (ty, tx) = (vid / 16, vid % 16) owns rows ty + 16a and columns
// tx + 16b (a, b < 4), accumulator acc[4a + b]. `mm(term, n, ...)` adds
//   sum_{r < n} opa(term, row, r) * opb(term, col, r)
// where opa / opb are the including kernel's accessors (zero outside their ranges). Operands
// go through workgroup memory in slabs of RS reduction steps; `am` / `bm` say which index of
// an operand is contiguous in memory (true: the row/column index, false: r), which only picks
// the thread -> element mapping of the loads. The sum runs over r in increasing order, so
// results are bitwise reproducible. Every thread of the workgroup must call mm (barriers).
// keep_a(term, row, r) / keep_b(term, col, r), also the including kernel's, say which
// products exist: a product whose operand is a structural zero (a step of another segment, a
// later step, a step the carried state does not reach) is skipped rather than multiplied by
// zero, so a NaN or infinity there cannot cross a reset (0 * NaN is NaN).
const RS: u32 = 16u;
var<workgroup> ta: array<f32, 1024>;
var<workgroup> tb: array<f32, 1024>;

fn mm(term: u32, n: u32, vid: u32, am: bool, bm: bool, acc: ptr<function, array<f32, 16>>) {
    let ty = vid / 16u;
    let tx = vid % 16u;
    for (var r0 = 0u; r0 < n; r0 += RS) {
        for (var q = 0u; q < 4u; q++) {
            let e = vid + 256u * q;
            var m = e / RS;
            var rr = e % RS;
            if am {
                m = e % 64u;
                rr = e / 64u;
            }
            var a = 0.0;
            if r0 + rr < n {
                a = opa(term, m, r0 + rr);
            }
            ta[m * RS + rr] = a;
            m = e / RS;
            rr = e % RS;
            if bm {
                m = e % 64u;
                rr = e / 64u;
            }
            var b = 0.0;
            if r0 + rr < n {
                b = opb(term, m, r0 + rr);
            }
            tb[m * RS + rr] = b;
        }
        workgroupBarrier();
        for (var rr = 0u; rr < RS; rr++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            var ka: array<bool, 4>;
            var kb: array<bool, 4>;
            for (var a = 0u; a < 4u; a++) {
                av[a] = ta[(ty + 16u * a) * RS + rr];
                bv[a] = tb[(tx + 16u * a) * RS + rr];
                ka[a] = keep_a(term, ty + 16u * a, r0 + rr);
                kb[a] = keep_b(term, tx + 16u * a, r0 + rr);
            }
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    (*acc)[4u * a + b] += select(0.0, av[a] * bv[b], ka[a] && kb[b]);
                }
            }
        }
        workgroupBarrier();
    }
}

fn mm_zero(acc: ptr<function, array<f32, 16>>) {
    for (var i = 0u; i < 16u; i++) {
        (*acc)[i] = 0.0;
    }
}
