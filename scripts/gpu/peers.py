"""Peer timings for linrec's comparisons, on the same GPU in the same run (one JSON object per
line on stdout, the schema gpu_bench uses): a device-to-device copy (the bandwidth ceiling),
accelerated-scan's `warp` and `scalar` first-order scans, the FFM paper's closed-form
aggregator restated in torch (complex128, as the paper's code must), and Mamba's reference
selective scan restated in torch (and mamba_ssm's CUDA kernel when it is importable).

Run by scripts/gpu/run.sh; `--quick` uses small shapes. Every figure is the median of 20
timed runs after 3 warm-ups, with CUDA events.
"""
import json
import sys

import torch

QUICK = "--quick" in sys.argv
dev = "cuda"


def bench(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def emit(impl, op, config, pass_, ms=None, bytes_=0.0, note=None):
    d = {"impl": impl, "op": op, "config": config, "backend": "torch", "pass": pass_}
    if ms is None:
        d["unsupported"] = True
        d["note"] = note
    else:
        d.update(ms=round(ms, 5), bytes=bytes_, flops=0)
    print(json.dumps(d), flush=True)


def guard(impl, op, config, fn):
    try:
        fn()
    except Exception as e:  # a peer that cannot run here is reported, not fatal
        emit(impl, op, config, "fwd", note=f"{type(e).__name__}: {e}"[:300])
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- copy
for mib in [256, 1024]:
    n = (mib << 20) // 4
    x, y = torch.randn(n, device=dev), torch.empty(n, device=dev)
    emit("torch", "copy", f"{mib} MiB", "fwd", bench(lambda: y.copy_(x)), 2.0 * (mib << 20))
    del x, y

# ---------------------------------------------------------------- linear scan
def scans():
    import accelerated_scan.scalar as scalar
    import accelerated_scan.warp as warp

    b, c = (2, 64) if QUICK else (8, 1536)
    for t in [256] if QUICK else [4096, 8192, 16384, 32768, 65536]:
        cfg = f"B={b} T={t} D={c} f32"
        g = torch.rand(b, c, t, device=dev) * 0.5 + 0.499
        x = torch.randn(b, c, t, device=dev)
        go = torch.randn(b, c, t, device=dev)
        e = b * c * t * 4
        for name, mod in [("accelerated-scan warp", warp), ("accelerated-scan scalar", scalar)]:
            emit(name, "linear_scan", cfg, "fwd", bench(lambda: mod.scan(g, x)), 3.0 * e)
            gg, xx = g.clone().requires_grad_(), x.clone().requires_grad_()

            def fb():
                gg.grad = xx.grad = None
                mod.scan(gg, xx).backward(go)

            emit(name, "linear_scan", cfg, "fwd+bwd", bench(fb), 8.0 * e)


guard("accelerated-scan", "linear_scan", "all", scans)


# ---------------------------------------------------------------- FFM closed form
def ffm_closed_form(x, a, b):
    """S_t = sum_{j<=t} gamma^(t-j) x_j = gamma^t cumsum_j(gamma^-j x_j), gamma = exp(a + i b),
    in complex128 (the negative powers overflow otherwise): the FFM paper's aggregator."""
    t = torch.arange(x.shape[1], device=x.device, dtype=torch.float64)
    logg = torch.complex(a.double()[:, None].expand(-1, b.shape[0]), b.double()[None, :].expand(a.shape[0], -1))
    z = x.double()[..., None].to(torch.complex128) * torch.exp(-t[:, None, None] * logg)
    return torch.exp(t[:, None, None] * logg) * torch.cumsum(z, dim=1)


def ffm_peer():
    for bb, t, m, c in [(2, 128, 8, 4)] if QUICK else [(8, 1024, 32, 4), (32, 4096, 128, 8)]:
        cfg = f"B={bb} T={t} M={m} C={c} f32"
        x = torch.randn(bb, t, m, device=dev)
        a = -(torch.rand(m, device=dev) * 0.099 + 0.001)
        b = torch.rand(c, device=dev) * 2 - 1
        sx, ss = bb * t * m * 4, bb * t * m * c * 8
        emit("FFM paper closed form (torch)", "ffm", cfg, "fwd", bench(lambda: ffm_closed_form(x, a, b), reps=5), sx + ss)
        xg, ag, bg = (v.clone().requires_grad_() for v in (x, a, b))
        gs = torch.randn(bb, t, m, c, device=dev, dtype=torch.complex128)

        def fb():
            xg.grad = ag.grad = bg.grad = None
            s = ffm_closed_form(xg, ag, bg)
            (s.real * gs.real + s.imag * gs.imag).sum().backward()

        emit("FFM paper closed form (torch)", "ffm", cfg, "fwd+bwd", bench(fb, reps=5), 3 * sx + 2 * ss)
        del x, gs
        torch.cuda.empty_cache()


guard("FFM paper closed form (torch)", "ffm", "all", ffm_peer)


# ---------------------------------------------------------------- selective scan
def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """Mamba's reference selective scan restated (layout [B, D, L]; B, C: [B, G, N, L]):
    softplus(delta + bias), h = exp(dt A) h + dt B u, y = C h + D u, out = y * silu(z)."""
    dt = torch.nn.functional.softplus(delta + delta_bias[None, :, None])
    bsz, d, L = u.shape
    g = B.shape[1]
    Bx = B.repeat_interleave(d // g, dim=1)
    Cx = C.repeat_interleave(d // g, dim=1)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", dt, Bx, u)
    h = u.new_zeros(bsz, d, A.shape[1])
    ys = []
    for i in range(L):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", h, Cx[:, :, :, i]))
    y = torch.stack(ys, dim=2) + u * D[None, :, None]
    return y * torch.nn.functional.silu(z)


def selective_peer():
    bb, L, d, n = (1, 128, 64, 16) if QUICK else (8, 2048, 2048, 16)
    for dt_ in [torch.float32, torch.bfloat16]:
        name = "f32" if dt_ == torch.float32 else "bf16"
        cfg = f"B={bb} T={L} D={d} N={n} {name}"
        mk = lambda *s: torch.randn(*s, device=dev).to(dt_)
        u, delta, z, B, C = mk(bb, d, L), mk(bb, d, L) - 2, mk(bb, d, L), mk(bb, 1, n, L), mk(bb, 1, n, L)
        A = -torch.rand(d, n, device=dev) - 0.1
        D, db = torch.randn(d, device=dev), torch.randn(d, device=dev) - 1
        sz = 4 if dt_ == torch.float32 else 2
        seq, bc = bb * L * d * sz, bb * L * n * sz
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            f = lambda: selective_scan_fn(u, delta, A, B, C, D, z, db, delta_softplus=True)
            emit("mamba_ssm CUDA", "selective_scan", cfg, "fwd", bench(f), 4.0 * seq + 2.0 * bc)
        except Exception as e:
            emit("mamba_ssm CUDA", "selective_scan", cfg, "fwd", note=f"not available: {e}"[:200])
        f = lambda: selective_scan_ref(u.float(), delta.float(), A, B.float(), C.float(), D, z.float(), db)
        emit("Mamba reference (torch)", "selective_scan", cfg, "fwd", bench(f, reps=3), 4.0 * seq + 2.0 * bc)


guard("Mamba reference (torch)", "selective_scan", "all", selective_peer)
