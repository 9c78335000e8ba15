#!/usr/bin/env python3
"""Markdown table of a training job's metrics (OUTPUT/metrics/part-*.jsonl), as in RESULTS.md.

Usage: scripts/metrics_table.py OUTPUT_DIR [--every N]
Keeps the highest attempt per (split, step) and drops an earlier attempt's lines after the step
a later attempt resumed from (docs/checkpoints.md); one row per eval step with
the nearest train line's loss, kl/k1, kl/k3 and pref/mean. Standard library only.
"""
import glob
import json
import os
import sys


def main():
    out = sys.argv[1]
    parsed = []
    for part in sorted(glob.glob(os.path.join(out, "metrics", "part-*.jsonl"))):
        parsed.extend(json.loads(line) for line in open(part) if line.strip())
    # An attempt resumed after its first step's predecessor: earlier attempts' lines beyond
    # that step were lost work and are dropped (docs/checkpoints.md).
    first = {}
    for v in parsed:
        first[v["attempt"]] = min(first.get(v["attempt"], v["step"]), v["step"])
    lines = {}
    for v in parsed:
        if any(a > v["attempt"] and v["step"] > s for a, s in first.items()):
            continue
        key = (v["split"], v["step"])
        if key not in lines or lines[key]["attempt"] <= v["attempt"]:
            lines[key] = v
    evals = sorted(s for (split, s) in lines if split == "eval")
    train = {s: v for (split, s), v in lines.items() if split == "train"}
    cols = ["eval/win_rate", "eval/gold", "loss", "kl/k1", "kl/k3", "pref/mean", "time_s"]
    print("| step | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    t0 = min(v["time"] for v in lines.values())
    for s in evals:
        e = lines[("eval", s)]
        t = train.get(s, {})
        row = [e.get("eval/win_rate"), e.get("eval/gold"), t.get("loss"), t.get("kl/k1"),
               t.get("kl/k3"), t.get("pref/mean"), e["time"] - t0]
        print(f"| {s} | " + " | ".join("" if x is None else f"{x:.3f}" for x in row) + " |")


if __name__ == "__main__":
    main()
