#!/usr/bin/env bash
# Generation throughput, mirrorplay vs transformers `generate`, interleaved, with the machine's
# memory roofline (BENCHMARKS.md "Decoding kernels"). Each round runs, one after another:
# mirrorplay's worker/benches/sampling_interleaved.rs on the SmolLM2-135M shape (plain and
# mixture sampling, batch 1 and 8), the same binary with MIRRORPLAY_SKINNY_MATMUL=0 (decoding on
# candle's matmul instead of the skinny kernel), the same bench built from an older commit when BASE_EXE is
# given (the "before"), and bench/generate_peer.py at batch 1 and 8 — all f32 on the CPU,
# 16-token prompts, NEW_TOKENS new tokens at forced length, T = 1, the same THREADS. The
# bandwidth (numpy, large read) is measured before the first and after the last round. Each
# round ends with its ratios: this build's plain tokens/s over transformers', batch 1 and 8.
#
# Usage: bench/generate.sh
# Env: PROFILE=bench (default; the release settings) | dev; ROUNDS=2 THREADS=2 NEW_TOKENS=64
#      REPS=1 (timed reps per bench call, after one untimed);
#      BASE_EXE=path of a sampling_interleaved binary built from another commit (optional);
#      PY=~/.cache/mirrorplay/peers-venv/bin/python (torch CPU + transformers; benchmarks only).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PROFILE=${PROFILE:-bench}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PY=${PY:-$HOME/.cache/mirrorplay/peers-venv/bin/python}
export NEW_TOKENS=${NEW_TOKENS:-64} REPS=${REPS:-1}
EXE=$(bench_exe sampling_interleaved "$PROFILE")
# One thread count for all: candle and the skinny kernel use rayon (RAYON_NUM_THREADS), torch
# set_num_threads(THREADS) and its OpenMP pool; numpy's BLAS single-threaded per part.
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS THREADS
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(uname -r), $(date -u +%FT%TZ); profile $PROFILE; threads $THREADS; commit $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
echo "load before: $(uptime)"
OPENBLAS_NUM_THREADS=1 "$PY" bench/generate_peer.py bandwidth
for r in $(seq 1 "$ROUNDS"); do
  echo
  echo "round $r, $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  ours=$("$EXE" smollm2 | sed -n "s/^| smollm2/| mirrorplay (this build) | smollm2/p")
  echo "$ours"
  MIRRORPLAY_SKINNY_MATMUL=0 "$EXE" smollm2 | sed -n "s/^| smollm2/| mirrorplay, candle matmul | smollm2/p"
  if [ -n "${BASE_EXE:-}" ]; then
    "$BASE_EXE" smollm2 | sed -n "s/^| smollm2/| mirrorplay (BASE_EXE) | smollm2/p"
  fi
  for b in 1 8; do
    peer=$(B=$b "$PY" bench/generate_peer.py 2>/dev/null)
    echo "$peer"
    # This build's plain tokens/s at batch b over the peer's, as the round's ratio.
    awk -v b="$b" -v peer="$peer" -F'|' '
      $4 ~ "^ " b " ×" { ours = $5 + 0 }
      END {
        if (match(peer, /: [0-9.]+ tokens\/s/)) {
          theirs = substr(peer, RSTART + 2, RLENGTH - 11) + 0
          if (ours > 0 && theirs > 0) printf "ratio: batch %s plain, this build / transformers = %.2fx\n", b, ours / theirs
        }
      }' <<< "$ours"
  done
done
echo
OPENBLAS_NUM_THREADS=1 "$PY" bench/generate_peer.py bandwidth
echo "load after: $(uptime)"
echo "(mirrorplay rows: | build | model | batch × new tokens × reps | plain tokens/s | mixture tokens/s | mixture/plain time |)"
