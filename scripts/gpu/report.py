"""Turns the JSON lines of gpu_bench (linrec) and the peers into Markdown tables (stdout) and
plots (<out>/<op>.png): per op and configuration, each implementation's forward and
forward+backward time, bandwidth (GB/s of the bytes an ideal kernel moves), fraction of the
measured copy bandwidth, TFLOP/s where flops are given, and the ratio to the peers."""
import json
import os
import sys

out = sys.argv[1]
rows = []
for f in ("linrec.jsonl", "peers.jsonl"):
    p = os.path.join(out, f)
    if os.path.exists(p):
        rows += [json.loads(l) for l in open(p) if l.strip().startswith("{")]

copy = max((r["bytes"] / r["ms"] / 1e6 for r in rows if r["op"] == "copy" and "ms" in r), default=None)
dev = open(os.path.join(out, "device.txt")).read().strip() if os.path.exists(os.path.join(out, "device.txt")) else "?"
print(f"Device: {dev}\n")
if copy:
    print(f"Measured device-to-device copy bandwidth: {copy:.0f} GB/s (read + write)\n")

# linrec reports fwd and bwd separately; peers report fwd and fwd+bwd
table = {}
for r in rows:
    if r["op"] == "copy" or "ms" not in r:
        continue
    name = r["impl"] if r["impl"] != "linrec" else f"linrec {r['backend']}"
    e = table.setdefault((r["op"], r["config"]), {}).setdefault(name, {})
    e[r["pass"]] = (r["ms"], r.get("bytes", 0), r.get("flops", 0))
for (op, cfg), impls in sorted(table.items()):
    for e in impls.values():
        if "bwd" in e and "fwd" in e:
            f, b = e["fwd"], e["bwd"]
            e["fwd+bwd"] = (f[0] + b[0], f[1] + b[1], f[2] + b[2])

missing = [r for r in rows if r.get("unsupported")]
for op in sorted({k[0] for k in table}):
    print(f"## {op}\n")
    print("| config | implementation | fwd ms | fwd GB/s | fwd % copy | fwd+bwd ms | fwd+bwd TFLOP/s | linrec cuda speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for (o, cfg), impls in sorted(table.items()):
        if o != op:
            continue
        ours = impls.get("linrec cuda", {})
        for name, e in sorted(impls.items()):
            f, fb = e.get("fwd"), e.get("fwd+bwd")
            gbs = f[1] / f[0] / 1e6 if f and f[1] else None
            tfl = fb[2] / fb[0] / 1e9 if fb and fb[2] else None
            ratio = ""
            if name != "linrec cuda" and ours:
                key = "fwd+bwd" if fb and "fwd+bwd" in ours else "fwd"
                if key in e and key in ours:
                    ratio = f"{e[key][0] / ours[key][0]:.2f}x ({key})"
            cells = [
                f"{f[0]:.3f}" if f else "",
                f"{gbs:.3g}" if gbs else "",
                f"{100 * gbs / copy:.0f}%" if gbs and copy else "",
                f"{fb[0]:.3f}" if fb else "",
                f"{tfl:.3g}" if tfl else "",
                ratio,
            ]
            print(f"| {cfg} | {name} | " + " | ".join(cells) + " |")
    print()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cfgs = sorted(c for (o, c) in table if o == op)
        names = sorted({n for (o, c), im in table.items() if o == op for n in im})
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cfgs)), 4))
        w = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            ys = [table[(op, c)].get(n, {}).get("fwd+bwd", table[(op, c)].get(n, {}).get("fwd", (float("nan"),)))[0] for c in cfgs]
            ax.bar([j + i * w for j in range(len(cfgs))], ys, w, label=n)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cfgs))])
        ax.set_xticklabels(cfgs, rotation=20, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (fwd+bwd where measured, else fwd)")
        ax.set_title(f"{op} on {dev.splitlines()[0][:60]}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{op}.png"), dpi=120)
    except Exception as e:
        print(f"(no plot: {e})\n")
if missing:
    print("Not measured:\n")
    for r in missing:
        print(f"- {r['impl']} {r['op']} {r['config']} {r['backend']}: {r.get('note', 'unsupported')}")
