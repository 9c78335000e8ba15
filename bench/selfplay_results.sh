#!/usr/bin/env bash
# RESULTS.md's self-play curves: each configs/selfplay-<algo>.toml pipeline (the quickstart's
# SFT reference, seed 1, then self-play with gold preferences) run for STEPS self-play steps,
# with eval every 50 steps on 256 held-out prompts, then one metrics table per algorithm
# (scripts/metrics_table.py). The SFT stage is bit-identical across the runs (same seed), so
# every algorithm starts from the same reference.
#
# Usage: cargo build --release && bench/selfplay_results.sh [ALGO...]
#        (ALGO in online-ipo ipo-md nash-md online-dpo slic; STEPS=300, OUT=/tmp/mp-results)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
STEPS=${STEPS:-300}
OUT=${OUT:-/tmp/mp-results}
ALGOS=("$@")
[ ${#ALGOS[@]} -gt 0 ] || ALGOS=(online-ipo ipo-md nash-md online-dpo slic)
for algo in "${ALGOS[@]}"; do
  start=$(date +%s)
  "$BIN/mirrorplay" local "configs/selfplay-$algo.toml" --workers 1 \
    --set "job.output=$OUT/$algo" --set "stage.1.selfplay.steps=$STEPS" \
    --set stage.1.selfplay.eval_every=50 > "$OUT-$algo.log" 2>&1
  echo "### $algo ($STEPS steps, $(( $(date +%s) - start )) s wall incl. SFT)"
  python3 scripts/metrics_table.py "$OUT/$algo/selfplay"
done
