#!/usr/bin/env bash
# Reward-model scoring throughput, mirrorplay vs transformers, interleaved (BENCHMARKS.md
# "Reward-model scoring throughput"): worker/benches/reward_scoring.rs and
# bench/reward_scoring_peer.py score the same B sequences of L tokens with a random
# SmolLM2-135M-shaped one-label LlamaForSequenceClassification (f32, CPU), alternating
# mirrorplay, peer, mirrorplay, peer, … ROUNDS times with the same thread count. The first
# mirrorplay run also times an ensemble of K members (K independent models, and a shared
# backbone: `reward::shared_heads`, one forward pass for K stacked heads), and round 1 of both
# times the linear layers alone (where the forward's time goes).
#
# Usage: bench/reward_scoring.sh
# Env: PROFILE=bench (default; the release settings) | dev (dependencies at opt-level 3, the
#      worker crate at 1); ROUNDS=2 THREADS=2 B=16 L=128 REPS=3 K=5 K_REPS=1;
#      PY=~/.cache/mirrorplay/peers-venv/bin/python (torch CPU + transformers; benchmarks only);
#      BREAKDOWN=1 (round 1 of each also times the linear layers alone; 0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PROFILE=${PROFILE:-bench}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PY=${PY:-$HOME/.cache/mirrorplay/peers-venv/bin/python}
export B=${B:-16} L=${L:-128} REPS=${REPS:-3} K_REPS=${K_REPS:-1}
K=${K:-5}
EXE=$(bench_exe reward_scoring "$PROFILE")
# One thread count for both: candle's CPU backend (gemm) reads RAYON_NUM_THREADS, torch
# set_num_threads(THREADS) (and OMP for its OpenMP pool).
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(uname -r), $(date -u +%FT%TZ); profile $PROFILE; threads $THREADS"
echo "load before: $(uptime)"
LOG=$(mktemp -d)
echo
echo "| round | system | B × L × reps | threads | s/batch | sequences/s |"
echo "|---|---|---|---|---|---|"
row() { # system, log
  sed -n 's/.* single: .*: \([0-9.]*\) s\/batch, \([0-9.]*\) sequences\/s/\1 \2/p' "$2" |
    while read -r s seqs; do echo "| $r | $1 | $B × $L × $REPS | $THREADS | $s | $seqs |"; done
}
for r in $(seq 1 "$ROUNDS"); do
  k=0; [ "$r" = 1 ] && k=$K
  bd=0; [ "$r" = 1 ] && bd=${BREAKDOWN:-1}
  K=$k BREAKDOWN=$bd "$EXE" > "$LOG/mp$r.log"
  row mirrorplay "$LOG/mp$r.log"
  THREADS=$THREADS BREAKDOWN=$bd "$PY" bench/reward_scoring_peer.py > "$LOG/peer$r.log" 2>"$LOG/peer$r.err" ||
    { cat "$LOG/peer$r.err" >&2; exit 1; }
  row transformers "$LOG/peer$r.log"
done
echo
cat "$LOG"/mp1.log "$LOG"/peer1.log
python3 - "$LOG" "$ROUNDS" <<'PY'
import re, sys
log, rounds = sys.argv[1], int(sys.argv[2])
def rate(path):
    return float(re.search(r"single: .* ([0-9.]+) sequences/s", open(path).read()).group(1))
mp = [rate(f"{log}/mp{r}.log") for r in range(1, rounds + 1)]
pe = [rate(f"{log}/peer{r}.log") for r in range(1, rounds + 1)]
m, p = sum(mp) / len(mp), sum(pe) / len(pe)
print(f"mean sequences/s: mirrorplay {m:.2f}, transformers {p:.2f}; mirrorplay/transformers {m / p:.2f}x")
PY
echo "load after: $(uptime)"
rm -rf "$LOG"
