#!/usr/bin/env bash
# Self-play steps/s on the local cluster at world sizes 1 and 2 (BENCHMARKS.md "Data-parallel
# self-play"): the IPO-MD self-play of configs/selfplay-ipo-md.toml from a tiny model (no SFT
# stage), STEPS steps of BATCH prompts, run once per world size with as many workers;
# `mirrorplay local` gives each worker cores/W threads (printed). Steps/s comes from the metrics'
# timestamps (first to last train line, so start-up and the final eval are excluded).
#
# Usage: cargo build --release && bench/dp_steps.sh   (STEPS=40 BATCH=64 WORLDS="1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
STEPS=${STEPS:-40}
BATCH=${BATCH:-64}
WORLDS=${WORLDS:-1 2}
OUT=${OUT:-/tmp/mp-dp-steps}
mkdir -p "$OUT"
cat > "$OUT/selfplay.toml" <<TOML
[job]
kind = "selfplay"
output = "$OUT/run"
seed = 1
overwrite = true
[selfplay]
algorithm = "ipo_md"
kl_coef = 0.01
policy = "tiny"
reference = "tiny"
task = "goodhart_digits"
batch_prompts = $BATCH
steps = $STEPS
eval_every = $STEPS
eval_prompts = 8
TOML
echo "| world size | threads/worker | steps/s | s/step |"
echo "|---|---|---|---|"
for w in $WORLDS; do
  "$BIN/mirrorplay" local "$OUT/selfplay.toml" --workers "$w" \
    --set "selfplay.world_size=$w" --set "job.output=$OUT/w$w" > "$OUT/w$w.log" 2>&1
  threads=$(grep -o 'of [0-9]* thread' "$OUT/w$w.log" | grep -o '[0-9]*' | head -1)
  python3 - "$OUT/w$w" "$w" "$threads" <<'PY'
import glob, json, sys
out, w, threads = sys.argv[1], sys.argv[2], sys.argv[3]
times = {}
for path in glob.glob(f"{out}/metrics/part-*.jsonl"):
    for line in open(path):
        v = json.loads(line)
        if v["split"] == "train":
            times[v["step"]] = v["time"]
steps = sorted(times)
span = times[steps[-1]] - times[steps[0]]
rate = (len(steps) - 1) / span
print(f"| {w} | {threads} | {rate:.2f} | {1 / rate:.3f} |")
PY
done
