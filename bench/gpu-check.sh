#!/usr/bin/env bash
# A short check for a GPU machine (about 5 minutes): (a) NCCL all-reduce correctness at world
# size 1, and 2 when `nvidia-smi -L` lists two GPUs or more (worker/examples/nccl_check.rs:
# odd-sized f32 tensors over several buckets against an f64 sum, bit-identical across ranks,
# f64 sums, broadcast, barrier, and a 256 MiB bus bandwidth); (b) a 20-step Nash-MD-PG
# self-play run on cuda:0 (after the config's tiny SFT stage), printing tokens/s from the
# metrics JSONL and the peak GPU memory seen by `nvidia-smi`; (c) generation on cuda:0 of the
# SmolLM2-135M shape, plain and mixture, batch 1 and 8, 64 new tokens, f32 and bf16, each with
# the draw on the device (the default there) and on the host (`MIRRORPLAY_DEVICE_DRAW=0`):
# worker/benches/sampling_interleaved.rs, skipped when its binary is absent.
#
# Written on a machine without a GPU: only `bash -n` has been run on it. Build first:
#   cargo build --release --features cuda,nccl
#   cargo build --release --features cuda,nccl -p mirrorplay-worker --example nccl_check
#   cargo bench -p mirrorplay-worker --features cuda --bench sampling_interleaved --no-run
#     (it prints the executable's path: copy it to target/release/sampling_interleaved)
#   bench/gpu-check.sh
# Env: BIN (default target/release), OUT (default /tmp/gpu-check-nash), STEPS (default 20),
#      SAMPLING (default $BIN/sampling_interleaved).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-/tmp/gpu-check-nash}
STEPS=${STEPS:-20}
CHECK="$BIN/examples/nccl_check"
SAMPLING=${SAMPLING:-$BIN/sampling_interleaved}

command -v nvidia-smi > /dev/null || { echo "gpu-check: nvidia-smi not found (no GPU?)" >&2; exit 1; }
for b in "$BIN/mirrorplay" "$BIN/mirrorplay-worker" "$CHECK"; do
  [ -x "$b" ] || { echo "gpu-check: $b missing (see the build commands at the top)" >&2; exit 1; }
done
gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
echo "## GPUs: $gpus"
nvidia-smi -L

echo "## (a) NCCL all-reduce"
worlds=(1)
[ "$gpus" -ge 2 ] && worlds+=(2)
for w in "${worlds[@]}"; do
  timeout 180 "$CHECK" "$w"
done

echo "## (b) Nash-MD-PG, $STEPS self-play steps on cuda:0"
mem_log=$(mktemp)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -l 1 > "$mem_log" &
smi=$!
trap 'kill "$smi" 2> /dev/null || true; rm -f "$mem_log"' EXIT
baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1)
start=$(date +%s)
# The config is a pipeline (SFT, then self-play): its self-play stage is stage 1.
MIRRORPLAY_DEVICE=cuda:0 timeout 600 "$BIN/mirrorplay" local configs/selfplay-nash-md.toml \
  --workers 1 --worker-bin "$BIN/mirrorplay-worker" \
  --set "stage.1.selfplay.steps=$STEPS" --set "job.output=$OUT" > "$OUT.log" 2>&1 \
  || { tail -30 "$OUT.log"; echo "gpu-check: the run failed (log: $OUT.log)" >&2; exit 1; }
wall=$(( $(date +%s) - start ))
sleep 1
kill "$smi" 2> /dev/null || true
peak=$(sort -n "$mem_log" | tail -1)
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
parts = sorted(glob.glob(os.path.join(out, "selfplay", "metrics", "part-*.jsonl"))) \
    or sorted(glob.glob(os.path.join(out, "**", "metrics", "part-*.jsonl"), recursive=True))
rows = [json.loads(l) for p in parts for l in open(p)]
tps = [r["tokens_per_s"] for r in rows if r.get("split") == "train" and "tokens_per_s" in r]
if not tps:
    sys.exit(f"gpu-check: no tokens_per_s in {parts}")
late = tps[len(tps) // 2:]
print(f"self-play tokens/s: mean {sum(tps) / len(tps):.0f}, mean of the second half "
      f"{sum(late) / len(late):.0f}, last {tps[-1]:.0f} ({len(tps)} train lines)")
PY
echo "peak GPU memory used: ${peak} MiB (${baseline} MiB before the run); wall ${wall} s incl. SFT"

echo "## (c) generation on cuda:0: the draw on the device vs on the host"
if [ -x "$SAMPLING" ]; then
  for dtype in f32 bf16; do
    for draw in device host; do
      flag=$([ "$draw" = host ] && echo 0 || echo "")
      echo "# $dtype, draw on the $draw"
      MIRRORPLAY_DEVICE_DRAW=$flag BENCH_DEVICE=cuda:0 BENCH_DTYPE=$dtype BATCHES=1,8 \
        NEW_TOKENS=64 REPS=2 timeout 300 "$SAMPLING" smollm2 | grep '^| smollm2' \
        || echo "gpu-check: sampling on cuda:0 ($dtype, draw on the $draw) failed" >&2
    done
  done
else
  echo "skipped: $SAMPLING missing (see the build commands at the top)"
fi
