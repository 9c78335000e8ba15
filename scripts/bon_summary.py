#!/usr/bin/env python3
"""Summarise a best-of-n CSV (`OUTPUT/bon.csv` of a `bon` job) against the over-optimisation
study's criteria (RESULTS.md, "Reward-model over-optimisation"): gold as its gain over n = 1 for
every scorer at a few n, the peak, final/peak, and the single proxy as the average of the
members' curves. Standard library only, so it runs anywhere.

Usage: scripts/bon_summary.py OUTPUT/bon/bon.csv [--at 4,16,64,256,1024]
"""

import argparse
import csv
import sys
from collections import defaultdict


def read(path):
    curves = defaultdict(dict)
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        want = ["scorer", "n", "kl_bon", "proxy", "gold"]
        if rows.fieldnames != want:
            sys.exit(f"{path}: header {rows.fieldnames}, expected {want}")
        for line, r in enumerate(rows, start=2):
            try:
                curves[r["scorer"]][int(r["n"])] = (float(r["kl_bon"]), float(r["gold"]))
            except ValueError as e:
                sys.exit(f"{path}:{line}: {e}")
    return curves


def gains(curve):
    """Gold gain over n = 1, by n."""
    if 1 not in curve:
        sys.exit("a scorer has no n = 1 row")
    base = curve[1][1]
    return {n: g - base for n, (_, g) in sorted(curve.items())}


def ratio(g):
    """final/peak of a gain curve (the peak over n ≥ 2; None when it never rises)."""
    peak = max(v for n, v in g.items() if n > 1)
    final = g[max(g)]
    return (final / peak if peak > 0 else None), peak, final


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--at", default="4,16,64,256,1024")
    args = ap.parse_args()
    at = [int(x) for x in args.at.split(",")]
    curves = read(args.csv)
    members = sorted((s for s in curves if s.startswith("member:")), key=lambda s: int(s[7:]))
    if not members:
        sys.exit(f"{args.csv}: no member:K rows")
    g = {s: gains(c) for s, c in curves.items()}
    ns = sorted(g[members[0]])
    g["single (mean of members)"] = {n: sum(g[m][n] for m in members) / len(members) for n in ns}
    top = max(ns)
    print(f"gold at n = 1: {curves[members[0]][1][1]:+.3f}; KL_bon at n = {top}: {curves[members[0]][top][0]:.2f} nats")
    print()
    print("| scorer | " + " | ".join(f"n={n}" for n in at) + " | peak (n) | final/peak |")
    print("|---|" + "---|" * (len(at) + 2))
    order = [s for s in ["mean", "wco", "uwo", "lsc"] if s in g] + ["single (mean of members)"] + members
    for s in order:
        r, peak, _ = ratio(g[s])
        peak_n = max((n for n in g[s] if n > 1), key=lambda n: g[s][n])
        cells = " | ".join(f"{g[s][n]:+.3f}" for n in at)
        print(f"| {s} | {cells} | {peak:+.3f} ({peak_n}) | {'n/a' if r is None else f'{r:.2f}'} |")
    # The criteria as the study states them.
    member_ratios = [ratio(g[m])[0] for m in members]
    single_final = g["single (mean of members)"][top]
    print()
    print("member final/peak: " + ", ".join("n/a" if r is None else f"{r:.2f}" for r in member_ratios))
    valid = [r for r in member_ratios if r is not None]
    if valid:
        print(f"single proxy final/peak averaged over members: {sum(valid) / len(valid):.2f} (target ≤ 0.8)")
    for s in ["wco", "uwo"]:
        if s in g:
            r, _, final = ratio(g[s])
            vs = final / single_final if single_final > 0 else float("nan")
            print(f"{s}: final/peak {'n/a' if r is None else f'{r:.2f}'} (target ≥ 0.95); final gain {final:+.3f} vs single {single_final:+.3f} ({vs:.2f}×, target ≥ 1.3×)")


if __name__ == "__main__":
    main()
