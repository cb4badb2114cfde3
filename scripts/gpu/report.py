"""Turns the JSON lines of gpu_bench (linrec) and the peers into Markdown tables (stdout) and
plots (<op>.png): per op and configuration, each implementation's forward and forward+backward
time, bandwidth (GB/s of the bytes an ideal kernel moves), fraction of the measured copy
bandwidth, TFLOP/s where flops are given, and the ratio to the peers; and, from bench_efla's
rows (linrec's and fla's), the EFLA / delta-rule table.

    report.py FOLDER                 linrec.jsonl, peers.jsonl, bench.jsonl and device.txt in
                                     FOLDER; plots written there
    report.py --jsonl FILE [--device device.txt] [--plots DIR]
"""
import argparse
import json
import os
import sys

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("folder", nargs="?")
ap.add_argument("--jsonl", action="append", default=[], help="a file of JSON lines (repeatable)")
ap.add_argument("--device", help="device.txt")
ap.add_argument("--plots", help="folder for the plots")
args = ap.parse_args()
files, devfile, plots = list(args.jsonl), args.device, args.plots
if args.folder:
    files += [os.path.join(args.folder, f) for f in ("linrec.jsonl", "peers.jsonl", "bench.jsonl")]
    devfile = devfile or os.path.join(args.folder, "device.txt")
    plots = plots or args.folder
if not files:
    ap.error("give a folder or --jsonl")

every = []
for p in files:
    if os.path.exists(p):
        for line in open(p):
            if line.strip().startswith("{"):
                try:
                    every.append(json.loads(line))
                except ValueError:
                    pass  # a line cut off by a timeout
rows = [r for r in every if "impl" in r and "op" in r]  # gpu_bench / peers.py
efla_rows = [r for r in every if "peer" in r and "mode" in r]  # bench_efla (binary and .py)

copy = max((r["bytes"] / r["ms"] / 1e6 for r in rows if r["op"] == "copy" and "ms" in r), default=None)
dev = open(devfile).read().strip() if devfile and os.path.exists(devfile) else "?"
# a short device name for titles: nvidia-smi -L's, else the first adapter linrec found
lines = dev.splitlines()
names = [l[len("GPU 0: "):].split(" (UUID")[0] for l in lines if l.startswith("GPU 0: ")]
names += [l[len("adapter: "):] for l in lines if l.startswith("adapter: ")]
devname = names[0] if names else (lines[0] if lines else "?")
print(f"Device: {devname}\n")
print("```\n" + dev + "\n```\n")
if copy:
    print(f"Measured device-to-device copy bandwidth: {copy:.0f} GB/s (read + write)\n")
    for r in rows:
        if r["op"] == "copy" and "ms" in r:
            gbs = r["bytes"] / r["ms"] / 1e6
            print(f"- copy {r['config']} on {r['impl']} {r['backend']}: {gbs:.0f} GB/s")
    print()

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
    if not plots:
        continue
    try:
        os.makedirs(plots, exist_ok=True)
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
        ax.set_title(f"{op} on {devname[:60]}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(plots, f"{op}.png"), dpi=120)
    except Exception as e:
        print(f"(no plot: {e})\n")
if missing:
    print("Not measured:\n")
    for r in missing:
        print(f"- {r['impl']} {r['op']} {r['config']} {r['backend']}: {r.get('note', 'unsupported')}")

if efla_rows:
    # the same table bench_efla.py writes, from the rows in the JSON lines
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_efla import efla_table

    print()
    print(efla_table(efla_rows, devname, "", heading="##"))
