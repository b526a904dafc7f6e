#!/usr/bin/env python3
"""Per-kernel sums of an Nsight Compute CSV (`ncu --metrics gpu__time_duration.sum --csv
--print-units base`) of a rollout, for the decode steps only.

A step starts at an embedding lookup (a `gather_rows*` kernel); a segment that runs a paged
attention kernel is a decode step (prefill uses the training attention, and rollout_bench ends
with a prefill-only rollout); of those, the steps of the whole batch (the widest lookup: prefill
runs in token-budget chunks with the decode steps of the sequences already prefilled between them)
are kept, and the last `--steps` of them summed. Prints the
segment sizes, then per kernel name: calls per step, µs per step, share; then one step's kernels
in order (the first `--layer` of them), so that a layer's sequence can be read off.

Usage: scripts/ncu_summary.py FILE.csv [--steps 3] [--layer 40]
"""
import argparse
import csv
import collections
import io
import sys


def rows(path):
    """(name, grid, block, ns) of every kernel row, in launch order."""
    text = open(path, encoding="utf-8", errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(text) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"{path}: no ncu CSV header (a line starting with \"ID\")")
    body = [l for l in text[start:] if l.startswith('"')]
    out = []
    for r in csv.DictReader(io.StringIO("\n".join(body))):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            ns = float(r["Metric Value"].replace(",", ""))
        except ValueError:
            continue
        name = r["Kernel Name"].split("(")[0]
        out.append((name, r.get("Grid Size", ""), r.get("Block Size", ""), ns))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layer", type=int, default=40)
    a = ap.parse_args()
    ks = rows(a.csv)
    starts = [i for i, k in enumerate(ks) if k[0].startswith("gather_rows")]
    if len(starts) < a.steps + 1:
        sys.exit(f"{len(ks)} kernels, {len(starts)} embedding lookups: too few steps")
    segs = [ks[s:e] for s, e in zip(starts, starts[1:] + [len(ks)])]
    print(f"{len(ks)} kernels; segments (kernels, µs): "
          + ", ".join(f"{len(s)}/{sum(k[3] for k in s) / 1e3:.0f}" for s in segs[-8:]))
    decode = [s for s in segs if any(k[0].startswith("paged_attention") for k in s)]
    # Prefill runs in chunks of the token budget with the decode steps of the sequences already
    # prefilled between them: keep the steps of the full batch (the widest embedding lookup).
    width = lambda s: s[0][1]  # the lookup's grid, e.g. "(32, 1, 1)"
    widest = max((width(s) for s in decode), key=lambda g: [int(x) for x in g.strip("()").split(",")],
                 default=None)
    decode = [s for s in decode if width(s) == widest]
    if len(decode) < a.steps:
        sys.exit(f"{len(segs)} steps, {len(decode)} of them decode steps: too few")
    steps = decode[-a.steps:]
    total = sum(k[3] for s in steps for k in s) / len(steps)
    by = collections.defaultdict(lambda: [0, 0.0])
    for s in steps:
        for name, _, _, ns in s:
            by[name][0] += 1
            by[name][1] += ns
    print(f"decode step (mean of last {len(steps)}): {total / 1e3:.1f} µs of kernels, "
          f"{sum(len(s) for s in steps) / len(steps):.0f} kernels")
    for name, (n, ns) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        per = ns / len(steps)
        print(f"  {per / 1e3:8.1f} µs {100 * per / total:5.1f}%  {n / len(steps):5.0f}×  "
              f"{per / (n / len(steps)) / 1e3:7.2f} µs each  {name[:90]}")
    print(f"first {a.layer} kernels of the last step:")
    for name, grid, block, ns in steps[-1][: a.layer]:
        print(f"  {ns / 1e3:8.2f} µs  grid {grid:>14} block {block:>12}  {name[:80]}")


if __name__ == "__main__":
    main()
