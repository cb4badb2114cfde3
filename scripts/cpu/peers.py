"""CPU peer timings for linrec's native CPU backend (`cargo bench --bench cpu`): what a user
would otherwise run on a CPU, at the same shapes as benches/cpu.rs, f32.

- linear scan (real, complex): a torch loop over time (`h = a_t * h + x_t`), forward and
  forward + backward (autograd);
- FFM: the FFM paper's closed-form aggregator, `S_t = gamma^t cumsum_j(gamma^-j x_j)`, in
  complex64 as the paper's code runs it, and its relative error against an f64 loop;
- the delta rule: a torch loop over tokens (`S += beta k (v - S^T k)^T`, `o = S^T q`);
- the selective scan: Mamba's `selective_scan_ref` restated (softplus, the loop over time);
- one RL step (T = 1 with a carried state): FFM `S = gamma S0 + x` (B = 8, M = 32, C = 4) and
  an EFLA step (B = 8, H = 4, K = V = 64).

Usage: `python3 scripts/cpu/peers.py [--threads N] [--reps R] [--quick]` (needs torch; with
`--threads 1` torch runs on one thread, the comparison with linrec's `cpu-1-thread` rows).
Prints one JSON object per line and a Markdown table at the end; every figure is the median
wall time of R timed runs after 2 warm-ups.
"""
import argparse
import json
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(0)
rows = []


def bench(fn, reps=None):
    reps = reps or args.reps
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def emit(peer, op, shape, pass_, secs, note=""):
    d = {"peer": peer, "op": op, "shape": shape, "pass": pass_, "ms": round(secs * 1e3, 4)}
    if note:
        d["note"] = note
    rows.append(d)
    print(json.dumps(d), flush=True)


def fwd_bwd(f, inputs, grad):
    """Forward + backward of `f(*inputs)` against the cotangent `grad` (autograd)."""
    leaves = [v.detach().clone().requires_grad_() for v in inputs]

    def run():
        for v in leaves:
            v.grad = None
        out = f(*leaves)
        if out.is_complex():
            (out.real * grad.real + out.imag * grad.imag).sum().backward()
        else:
            out.backward(grad)

    return run


# ------------------------------------------------------------------ linear scan
def scan_loop(a, x):
    """`h_t = a_t h_{t-1} + x_t` over dim 1 ([B, T, D], real or complex). The steps are taken
    with `unbind` (one gradient stack for the backward; indexing `a[:, t]` would make autograd
    fill a full-size zero gradient per step)."""
    h = torch.zeros_like(x[:, 0])
    out = []
    for at, xt in zip(a.unbind(1), x.unbind(1)):
        h = at * h + xt
        out.append(h)
    return torch.stack(out, dim=1)


b, t, d = (2, 128, 32) if args.quick else (8, 2048, 256)
shape = f"{b}x{t}x{d}"
x, a, g = torch.randn(b, t, d), torch.rand(b, t, d) * 0.499 + 0.5, torch.randn(b, t, d)
emit("torch loop", "scan real", shape, "forward", bench(lambda: scan_loop(a, x)))
emit("torch loop", "scan real", shape, "forward+backward", bench(fwd_bwd(scan_loop, (a, x), g)))
phase = torch.rand(b, t, d) * 6.283
xc = torch.complex(torch.randn(b, t, d), torch.randn(b, t, d))
ac = torch.polar(a, phase)
gc = torch.complex(torch.randn(b, t, d), torch.randn(b, t, d))
emit("torch loop", "scan complex", shape, "forward", bench(lambda: scan_loop(ac, xc)))
emit(
    "torch loop", "scan complex", shape, "forward+backward", bench(fwd_bwd(scan_loop, (ac, xc), gc))
)


# ------------------------------------------------------------------ FFM
def ffm_closed_form(x, a, w, dtype=torch.complex64):
    """The FFM paper's aggregator: S_t = gamma^t cumsum_j(gamma^-j x_j), gamma = exp(a + i w),
    x [B, T, M], a [M], w [C] -> S [B, T, M, C]."""
    tt = torch.arange(x.shape[1], dtype=torch.float32 if dtype == torch.complex64 else torch.float64)
    logg = torch.complex(a[:, None].expand(-1, w.shape[0]), w[None, :].expand(a.shape[0], -1))
    logg = logg.to(dtype)
    z = x[..., None].to(dtype) * torch.exp(-tt[:, None, None] * logg)
    return torch.exp(tt[:, None, None] * logg) * torch.cumsum(z, dim=1)


def ffm_loop64(x, a, w):
    gamma = torch.exp(torch.complex(a[:, None].double().expand(-1, w.shape[0]), w[None, :].double().expand(a.shape[0], -1)))
    s = torch.zeros(x.shape[0], x.shape[2], w.shape[0], dtype=torch.complex128)
    out = []
    for xi in x.unbind(1):
        s = gamma * s + xi[:, :, None].double()
        out.append(s)
    return torch.stack(out, dim=1)


b, t, m, c = (2, 128, 8, 4) if args.quick else (8, 1024, 32, 4)
shape = f"{b}x{t}x{m}x{c}"
xf = torch.randn(b, t, m)
af = -(torch.rand(m) * 0.49 + 0.01)
wf = torch.rand(c) * 2 - 1
gs = torch.complex(torch.randn(b, t, m, c), torch.randn(b, t, m, c))
s32, s64 = ffm_closed_form(xf, af, wf), ffm_loop64(xf, af, wf)
rel = float((s32.to(torch.complex128) - s64).abs().pow(2).sum().sqrt() / s64.abs().pow(2).sum().sqrt())
note = f"relative L2 error against an f64 loop: {rel:.1e}"
emit("FFM paper closed form (complex64)", "ffm", shape, "forward", bench(lambda: ffm_closed_form(xf, af, wf)), note)
emit(
    "FFM paper closed form (complex64)",
    "ffm",
    shape,
    "forward+backward",
    bench(fwd_bwd(ffm_closed_form, (xf, af, wf), gs)),
)


# ------------------------------------------------------------------ delta rule
def delta_loop(q, k, v, beta, s0):
    """[B, T, H, K] q, k; [B, T, H, V] v; [B, T, H] beta; [B, H, K, V] s0 -> o [B, T, H, V]."""
    s = s0
    out = []
    for qt, kt, vt, bt in zip(q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1)):
        u = vt - torch.einsum("bhkv,bhk->bhv", s, kt)
        s = s + (bt[..., None] * kt)[..., :, None] * u[..., None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", s, qt))
    return torch.stack(out, dim=1) * q.shape[-1] ** -0.5


b, t, h, kd = (1, 64, 2, 16) if args.quick else (2, 512, 4, 64)
shape = f"{b}x{t}, H {h}, K = V = {kd}"
q, k, v = torch.randn(b, t, h, kd), torch.randn(b, t, h, kd) * 0.7 / kd**0.5, torch.randn(b, t, h, kd)
beta, s0, go = torch.rand(b, t, h) * 0.8 + 0.1, torch.randn(b, h, kd, kd) * 0.1, torch.randn(b, t, h, kd)
emit("torch loop", "delta rule", shape, "forward", bench(lambda: delta_loop(q, k, v, beta, s0)))
emit(
    "torch loop",
    "delta rule",
    shape,
    "forward+backward",
    bench(fwd_bwd(delta_loop, (q, k, v, beta, s0), go)),
)


# ------------------------------------------------------------------ selective scan
def selective_scan_ref(u, delta, A, B, C):
    """Mamba's reference selective scan restated ([B, D, L]; B, C input-dependent [B, N, L]):
    dt = softplus(delta), h = exp(dt A) h + dt B u, y = C h."""
    dt = torch.nn.functional.softplus(delta)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", dt, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for dAi, dBui, Ci in zip(dA.unbind(2), dBu.unbind(2), C.unbind(2)):
        h = dAi * h + dBui
        ys.append(torch.einsum("bdn,bn->bd", h, Ci))
    return torch.stack(ys, dim=2)


b, d, t, n = (1, 32, 64, 16) if args.quick else (2, 256, 512, 16)
shape = f"B {b}, D {d}, T {t}, N {n}"
u, delta = torch.randn(b, d, t), torch.rand(b, d, t) * 3 - 3
A = -(torch.rand(d, n) * 1.9 + 0.1)
Bm, Cm, gy = torch.randn(b, n, t), torch.randn(b, n, t), torch.randn(b, d, t)
emit("Mamba selective_scan_ref", "selective scan", shape, "forward", bench(lambda: selective_scan_ref(u, delta, A, Bm, Cm)))
emit(
    "Mamba selective_scan_ref",
    "selective scan",
    shape,
    "forward+backward",
    bench(fwd_bwd(selective_scan_ref, (u, delta, A, Bm, Cm), gy)),
)


# ------------------------------------------------------------------ one RL step
b, m, c = 8, 32, 4
gamma = torch.exp(torch.complex(af[:1].expand(m)[:, None].expand(m, c).contiguous(), wf[None, :].expand(m, c).contiguous()))
st = torch.complex(torch.randn(b, m, c), torch.randn(b, m, c))
xs = torch.randn(b, m)
emit("torch", "FFM step", "8 x 1, M 32, C 4", "forward", bench(lambda: gamma * st + xs[..., None], reps=200))
h, kd = 4, 64
s = torch.randn(b, h, kd, kd) * 0.1
qs, ks, vs = torch.randn(b, h, kd), torch.randn(b, h, kd) * 0.1, torch.randn(b, h, kd)
bs = torch.rand(b, h) * 0.8 + 0.1


def efla_step():
    lam = (ks * ks).sum(-1)
    alpha = -torch.expm1(-bs * lam) / lam  # beta g(beta lambda)
    u = vs - torch.einsum("bhkv,bhk->bhv", s, ks)
    s2 = s + (alpha[..., None] * ks)[..., :, None] * u[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", s2, qs) * kd**-0.5, s2


emit("torch", "EFLA step", "8 x 1, H 4, K = V = 64", "forward", bench(efla_step, reps=200))

# ------------------------------------------------------------------ table
print()
print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
print("| op | shape | peer | pass | ms |")
print("|---|---|---|---|---|")
for r in rows:
    extra = f" ({r['note']})" if "note" in r else ""
    print(f"| {r['op']} | {r['shape']} | {r['peer']}{extra} | {r['pass']} | {r['ms']:.3f} |")
