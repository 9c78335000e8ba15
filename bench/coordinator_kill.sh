#!/usr/bin/env bash
# Coordinator restart recovery: N trials (default 20) of a 2-worker TIES merge (global scope:
# statistics rounds and the write round over several shards) on a coordinator + 2 workers on
# loopback whose coordinator is SIGKILLed at a random point (100..1600 ms after the submit) and
# restarted on the same state. Each trial checks that the restarted coordinator takes the lock
# over once its lease has run out (1 s), resumes the job, that the workers re-register, the job
# succeeds, and the merged files are byte-identical to an uninterrupted run's. The trials are
# the test `a_merge_survives_sigkills_of_its_coordinator` in coordinator/tests/coordinator_kill.rs
# with KILL_TRIALS=N (CI runs 1).
# Usage: bench/coordinator_kill.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
SEED=${2:-3}
cargo build -p mirrorplay-worker --bin mirrorplay-worker
cargo test -p mirrorplay-coordinator --test coordinator_kill --no-run
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ); trials $N, seed $SEED"
start=$(date +%s)
KILL_TRIALS=$N KILL_SEED=$SEED cargo test -q -p mirrorplay-coordinator --test coordinator_kill \
  -- --exact a_merge_survives_sigkills_of_its_coordinator --nocapture 2>&1 \
  | grep -E '^(trial|trials:)|panicked|FAILED|test result'
echo "wall: $(( $(date +%s) - start )) s"
