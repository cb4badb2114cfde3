#!/usr/bin/env python3
"""linrec's CUDA EFLA / delta rule against flash-linear-attention, in one run on one GPU.

scripts/gpu/prepare.sh builds linrec's side here (the GPU machine has no Rust) into
.gpu/bin.tar.xz (bench_efla among the binaries) and fetches the fla wheels into .whl. On the
GPU machine, scripts/gpu/run.sh (phase bench) runs linrec's binary itself, then this with
`--no-linrec --jsonl bench.jsonl`: fla's rows are appended to that file as they are measured,
and report.py makes the same table from it. Standalone, from the repository root:

    python3 scripts/gpu/bench_efla.py --bin <unpacked>/bin/bench_efla --wheels .whl --out "$OUT"

It times, at bf16:
  * fla.ops.delta_rule.chunk_delta_rule, forward and forward + backward, B=8, H=16, K=V=128,
    T in 2048, 4096, 8192 (triton.testing.do_bench, median), against linrec's chunked kernels
    for the delta rule and for EFLA (which costs the same);
  * fla.ops.delta_rule.fused_recurrent_delta_rule for one decode step (B=256, T=1, H=16,
    K=V=128, initial and final state) against linrec's recurrent kernel;
and writes efla_bench.md (table: time, nominal TFLOP/s, ratio fla / linrec), efla_bench.json
(every measurement) and efla_bench.png (plot) into --out. linrec times are CUDA events around
the whole call (allocations and all launches), the same thing do_bench measures for fla.
"""
import argparse
import datetime
import glob
import json
import os
import subprocess
import sys


def install_wheels(wheels):
    if not wheels or not glob.glob(os.path.join(wheels, "*.whl")):
        return
    site = "/tmp/fla-site"
    if not os.path.isdir(os.path.join(site, "fla")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--target", site] + glob.glob(os.path.join(wheels, "*.whl")), check=True)
    sys.path.insert(0, site)


def run_linrec(binary, reps, ts):
    env = dict(os.environ)
    # cudarc loads libcuda (and libnvrtc only when a module has no prebuilt PTX)
    libs = [os.path.dirname(p) for p in glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")]
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join([libs[0], env.get("LD_LIBRARY_PATH", "")])
    out = subprocess.run([binary, "--reps", str(reps), "--t", ",".join(map(str, ts))],
                         env=env, check=True, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run_fla(ts, reps, sink):
    import torch
    import torch.nn.functional as F
    import triton
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

    dev, bf = "cuda", torch.bfloat16
    rows = []
    B, H, K, V = 8, 16, 128, 128
    for T in ts:
        torch.manual_seed(0)
        q = torch.randn(B, T, H, K, device=dev, dtype=bf).requires_grad_()
        k = F.normalize(torch.randn(B, T, H, K, device=dev, dtype=torch.float32), dim=-1)
        k = k.to(bf).requires_grad_()
        v = torch.randn(B, T, H, V, device=dev, dtype=bf).requires_grad_()
        beta = torch.rand(B, T, H, device=dev, dtype=bf).sigmoid().requires_grad_()
        do = torch.randn(B, T, H, V, device=dev, dtype=bf)
        nominal = B * T * H * K * V

        def fwd():
            with torch.no_grad():
                chunk_delta_rule(q, k, v, beta)

        def fwdbwd():
            o, _ = chunk_delta_rule(q, k, v, beta)
            o.backward(do)

        for mode, fn, flop in (("fwd", fwd, 6 * nominal), ("fwdbwd", fwdbwd, 24 * nominal)):
            ms = triton.testing.do_bench(fn, warmup=25, rep=max(100, 10 * reps),
                                         grad_to_none=[q, k, v, beta], return_mode="median")
            rows.append(dict(peer="fla", rule="delta", mode=mode, algorithm="chunk_delta_rule",
                             B=B, T=T, H=H, K=K, V=V, dtype="bf16", ms=ms, flop=flop))
            sink(rows[-1])
    B, T = 256, 1
    q = torch.randn(B, T, H, K, device=dev, dtype=bf)
    k = F.normalize(torch.randn(B, T, H, K, device=dev, dtype=torch.float32), dim=-1).to(bf)
    v = torch.randn(B, T, H, V, device=dev, dtype=bf)
    beta = torch.rand(B, T, H, device=dev, dtype=bf).sigmoid()
    h0 = torch.randn(B, H, K, V, device=dev, dtype=torch.float32)

    def step():
        with torch.no_grad():
            fused_recurrent_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True)

    ms = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    rows.append(dict(peer="fla", rule="delta", mode="decode", algorithm="fused_recurrent",
                     B=B, T=T, H=H, K=K, V=V, dtype="bf16", ms=ms, flop=6 * B * H * K * V))
    sink(rows[-1])
    return rows


def key(r):
    return (r["mode"], r["T"])


def efla_table(rows, device, stamp, heading="#"):
    """The Markdown table of bench_efla rows (linrec's and fla's), under a `heading` title."""
    fla = {key(r): r for r in rows if r["peer"] == "fla"}
    lines = [f"{heading} EFLA / delta rule, bf16, {device}{', ' + stamp if stamp else ''}", "",
             "Times are medians of CUDA events around whole calls; TFLOP/s are nominal "
             "(6 K V per head and token forward, 24 K V forward + backward); ratio = fla time / "
             "linrec time (> 1: linrec faster).", "",
             "| case | B | T | H | K=V | peer | ms | kernels ms | TFLOP/s | ratio vs fla |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["mode"], r["T"], r["peer"], r["rule"])):
        ref = fla.get(key(r))
        ratio = f"{ref['ms'] / r['ms']:.2f}" if ref and r["peer"] != "fla" and r["ms"] else ""
        kms = f"{r['kernel_ms']:.3f}" if "kernel_ms" in r else ""
        tfl = f"{r['flop'] / r['ms'] / 1e9:.1f}" if r["ms"] else ""
        name = f"{r['mode']} {r['rule']}"
        lines.append(f"| {name} | {r['B']} | {r['T']} | {r['H']} | {r['K']} | {r['peer']} "
                     f"| {r['ms']:.3f} | {kms} | {tfl} | {ratio} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=".gpu/bench_efla", help="linrec's bench_efla executable")
    ap.add_argument("--no-linrec", action="store_true", help="time fla only")
    ap.add_argument("--jsonl", help="append every row to this file as it is measured (the "
                    "table then goes to stderr)")
    ap.add_argument("--wheels", default=".whl", help="folder of the fla wheels")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--t", default="2048,4096,8192")
    a = ap.parse_args()
    ts = [int(x) for x in a.t.split(",")]
    os.makedirs(a.out, exist_ok=True)
    install_wheels(a.wheels)

    def sink(row):
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    import torch
    device = torch.cuda.get_device_name(0)
    rows = []
    if not a.no_linrec:
        rows = run_linrec(a.bin, a.reps, ts)
        for r in rows:
            sink(r)
    try:
        rows += run_fla(ts, a.reps, sink)
    except Exception as e:  # keep linrec's numbers when the peer cannot run
        print(f"bench_efla: fla failed: {e!r}", file=sys.stderr)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with open(os.path.join(a.out, "efla_bench.json"), "w") as f:
        json.dump(dict(device=device, date=stamp, rows=rows), f, indent=1)
    table = efla_table(rows, device, stamp)
    with open(os.path.join(a.out, "efla_bench.md"), "w") as f:
        f.write(table)
    print(table, file=sys.stderr if a.jsonl else sys.stdout)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        cases = sorted({key(r) for r in rows})
        peers = [("linrec", "delta"), ("linrec", "efla"), ("fla", "delta")]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(peers)
        for i, (peer, rule) in enumerate(peers):
            ys = []
            for c in cases:
                m = [r for r in rows if key(r) == c and r["peer"] == peer and r["rule"] == rule]
                ys.append(m[0]["ms"] if m else 0.0)
            ax.bar([j + i * width for j in range(len(cases))], ys, width,
                   label=f"{peer} {rule}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels([f"{m}\nT={t}" for m, t in cases])
        ax.set_ylabel("ms (lower is better)")
        ax.set_yscale("log")
        ax.set_title(f"EFLA / delta rule, bf16, {device}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "efla_bench.png"), dpi=120)
    except Exception as e:
        print(f"bench_efla: no plot: {e!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
