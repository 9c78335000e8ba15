#!/usr/bin/env bash
# Crash consistency of checkpoints: N trials (default 50) of a self-play job on a
# coordinator + worker on loopback whose checkpoint writer is killed during a checkpoint — half
# by SIGKILL of the worker at a random delay while a (slowed: MIRRORPLAY_FAULT_STORE delay mode)
# checkpoint is being written, half by an injected error or stall on a random put / part /
# complete — then resumed by a second worker. Every trial checks that resume used the previous or
# the new checkpoint (never a torn one), that every step ran, and that the final parameters equal
# an uninterrupted run's bit for bit. The trials are the test `random_crash_trials` in
# coordinator/tests/checkpoint_crash.rs with CRASH_TRIALS=N (CI runs it with 2 random trials,
# beside three fixed ones, `three_crash_trials`).
# Usage: bench/checkpoint_crash.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
SEED=${2:-11}
cargo build -p mirrorplay-worker --bin mirrorplay-worker
cargo test -p mirrorplay-coordinator --test checkpoint_crash --no-run
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ); trials $N, seed $SEED"
start=$(date +%s)
CRASH_TRIALS=$N CRASH_SEED=$SEED cargo test -q -p mirrorplay-coordinator --test checkpoint_crash \
  -- --exact random_crash_trials --nocapture 2>&1 | grep -E '^(trial|trials:)|panicked|FAILED|test result'
echo "wall: $(( $(date +%s) - start )) s"
