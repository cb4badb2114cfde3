"""The Markdown tables of BENCHMARKS.md's CPU section from criterion's results of one run of
`cargo bench --bench cpu` (and, if present, `cargo bench --features candle --bench
candle_op`): the median of each row, read from target/criterion/<group>/<row>/new/.

Usage: `python3 scripts/cpu/table.py [RUN] [ONE_THREAD_RUN]`: RUN is a criterion folder
(default target/criterion); ONE_THREAD_RUN, if given, is the folder of a second run of the same
binary with `RAYON_NUM_THREADS=1`, whose `cpu` rows become the `1 thread` column (calls made
from the main thread, as a user makes them) instead of RUN's `cpu-1-thread` rows (calls made
inside a one-thread pool).
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
one_root = sys.argv[2] if len(sys.argv) > 2 else None


def rows(root):
    """{group: {function: (median seconds, bytes or None)}} for every benchmark found."""
    out = {}
    for d, _, files in os.walk(root):
        if os.path.basename(d) != "new" or "benchmark.json" not in files:
            continue
        b = json.load(open(os.path.join(d, "benchmark.json")))
        e = json.load(open(os.path.join(d, "estimates.json")))
        tp = (b.get("throughput") or {}).get("Bytes")
        out.setdefault(b["group_id"], {})[b["function_id"]] = (e["median"]["point_estimate"] * 1e-9, tp)
    return out


def fmt(s):
    if s is None:
        return ""
    if s < 0:
        return "-" + fmt(-s)
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.2f} s"


r = rows(root)
if one_root:
    for g, f in rows(one_root).items():
        for k, v in f.items():
            if k.endswith("/cpu"):
                r.setdefault(g, {})[k[: -len("/cpu")] + "/cpu-1-thread"] = v
print("| op, shape | pass | memcpy | plain loop | 1 thread | 2 threads | 1 thr. / loop | 2 thr. speed-up | GB/s (2 thr.) | % memcpy | reference | lavapipe |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for g in sorted(k for k in r if k.startswith("cpu/")):
    f = r[g]
    mem = f.get("memcpy", (None, None))
    for what in ["forward", "forward+backward"]:
        get = lambda k: f.get(f"{what}/{k}", (None, None))
        one, two, loop = get("cpu-1-thread"), get("cpu"), get("plain-loop")
        ref, lava = get("reference"), get("lavapipe")
        if one[0] is None and two[0] is None:
            continue
        gbs = two[1] / two[0] / 1e9 if two[0] and two[1] else None
        memgbs = mem[1] / mem[0] / 1e9 if mem[0] and mem[1] else None
        cells = [
            g[4:] if what == "forward" else "",
            what,
            fmt(mem[0]) if what == "forward" else "",
            fmt(loop[0]),
            fmt(one[0]),
            fmt(two[0]),
            f"{one[0] / loop[0]:.2f}" if one[0] and loop[0] else "",
            f"{one[0] / two[0]:.2f}x" if one[0] and two[0] else "",
            f"{gbs:.1f}" if gbs else "",
            f"{100 * gbs / memgbs:.0f}%" if gbs and memgbs and what == "forward" else "",
            fmt(ref[0]),
            fmt(lava[0]),
        ]
        print("| " + " | ".join(cells) + " |")

cand = sorted(k for k in r if k.startswith("candle-overhead/"))
if cand:
    print()
    print("| op, shape | direct | loss | candle | candle - loss-only | / direct |")
    print("|---|---|---|---|---|---|")
    for g in cand:
        f = r[g]
        d = f.get("direct", (None, None))[0]
        for loss in ["out", "out+final"]:
            c = f.get(f"candle/{loss}", (None, None))[0]
            lo = f.get(f"loss-only/{loss}", (None, None))[0]
            if c is None or lo is None or d is None:
                continue
            print(f"| {g[16:]} | {fmt(d)} | {loss}: {fmt(lo)} | {fmt(c)} | {fmt(c - lo)} | {(c - lo) / d:.2f} |")
