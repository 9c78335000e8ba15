#!/usr/bin/env bash
# A Nash-MD-PG self-play step, mirrorplay vs TRL 1.12.0's NashMDTrainer, interleaved (BENCHMARKS.md
# "Self-play step vs TRL NashMDTrainer"): worker/benches/selfplay_step.rs (the real training loop,
# train::run in process) and bench/selfplay_step_peer.py (NashMDTrainer) run the same step — a
# random SmolLM2-135M-shaped policy (its copy the reference) and reward model, f32 on the CPU,
# B prompts of 16 tokens, NEW new tokens forced for y ~ π and y′ ~ mixture — alternating
# mirrorplay, TRL, mirrorplay, TRL, … ROUNDS times with the same thread count; each run takes one
# untimed warm-up step, then STEPS timed steps. Before the first round and after the last, numpy
# measures the memory-read bandwidth and the sgemm rate (THREADS threads), and the roofline floor of
# one step is printed: weights (and KV cache) read at that bandwidth per decode forward, matmul FLOPs
# at that sgemm rate, whichever is larger for each pass, summed over the step's passes.
#
# Usage: bench/selfplay_step.sh
# Env: PROFILE=bench (default; the release settings); ROUNDS=2 THREADS=2 B=4 NEW=64 STEPS=3;
#      PY=~/.cache/mirrorplay/peers-venv/bin/python (torch CPU + transformers; benchmarks only);
#      TRL=~/.cache/mirrorplay/trl-1.12.0 (pip install --no-deps --target "$TRL" trl==1.12.0
#      datasets pyarrow dill xxhash multiprocess pandas python-dateutil pytz tzdata accelerate
#      psutil pyyaml requests urllib3 idna charset_normalizer certifi — the last eight were
#      missing on a fresh machine whose venv had only torch, transformers, numpy, safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PROFILE=${PROFILE:-bench}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PY=${PY:-$HOME/.cache/mirrorplay/peers-venv/bin/python}
TRL=${TRL:-$HOME/.cache/mirrorplay/trl-1.12.0}
export B=${B:-4} NEW=${NEW:-64} STEPS=${STEPS:-3}
EXE=$(bench_exe selfplay_step "$PROFILE")
# One thread count for both: candle's CPU backend (gemm) reads RAYON_NUM_THREADS, torch
# set_num_threads(THREADS) (and OMP for its OpenMP pool).
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(uname -r), $(date -u +%FT%TZ); commit $(git rev-parse --short HEAD); profile $PROFILE; threads $THREADS"
echo "load before: $(uptime)"
LOG=$(mktemp -d)
# The sgemm rate under the OpenBLAS kernel chosen by its CPU detection and, where the CPU has
# AVX-512, under its SkylakeX (AVX-512) kernel: on a Zen 5 VM the detection picked the AVX2
# kernel, 253 GFLOP/s, where SkylakeX's ran 467 (BENCHMARKS.md); the faster is the rate.
sgemm_rate() {
  local best=0 core rate
  for core in "" $(grep -qw avx512f /proc/cpuinfo && echo SkylakeX); do
    rate=$(env ${core:+OPENBLAS_CORETYPE=$core} OPENBLAS_NUM_THREADS=$THREADS "$PY" -c '
import time, numpy as np
n = 2048
a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(f"{2 * n**3 / best / 1e9:.1f}")')
    echo "sgemm with OpenBLAS kernel ${core:-as detected}: $rate GFLOP/s" >&2
    best=$(python3 -c "print(max($best, $rate))")
  done
  echo "sgemm: $best GFLOP/s (numpy $("$PY" -c 'import numpy; print(numpy.__version__)'), 2048x2048x2048 f32, best of 5, fastest kernel)"
}
rates() { # the read bandwidth (fastest of numpy's four 1 GiB reductions on THREADS parts and bench/read_bandwidth.c) and the sgemm rate (2048³, THREADS BLAS threads)
  # sed, not head: head's early exit would kill the writer with SIGPIPE, failing the pipeline.
  OPENBLAS_NUM_THREADS=1 THREADS=$THREADS "$PY" bench/generate_peer.py bandwidth | sed -n 1p
  sgemm_rate 2>&1
}
rates | tee "$LOG/rates1"
echo
echo "| round | system | B × prompt + new | threads | s/step | sample | judge | forward+backward | optimizer |"
echo "|---|---|---|---|---|---|---|---|---|"
row() { # system, log
  sed -n 's/.*: \([0-9.]*\) s\/step (sample \([0-9.]*\), judge \([0-9.]*\), forward+backward \([0-9.]*\), optimizer \([0-9.]*\))/\1 \2 \3 \4 \5/p' "$2" |
    while read -r s a j f o; do echo "| $r | $1 | $B × 16 + $NEW | $THREADS | $s | $a | $j | $f | $o |"; done
}
for r in $(seq 1 "$ROUNDS"); do
  "$EXE" > "$LOG/mp$r.log" 2>"$LOG/mp$r.err" || { cat "$LOG/mp$r.err" >&2; exit 1; }
  row mirrorplay "$LOG/mp$r.log"
  PYTHONPATH=$TRL THREADS=$THREADS "$PY" bench/selfplay_step_peer.py > "$LOG/peer$r.log" 2>"$LOG/peer$r.err" ||
    { tail -30 "$LOG/peer$r.err" >&2; exit 1; }
  row "TRL NashMDTrainer" "$LOG/peer$r.log"
done
echo
cat "$LOG"/mp1.log "$LOG"/peer1.log
rates | tee "$LOG/rates2"
python3 - "$LOG" "$ROUNDS" <<'PY'
import os, re, sys
log, rounds = sys.argv[1], int(sys.argv[2])
B, NEW, PROMPT = int(os.environ["B"]), int(os.environ["NEW"]), 16
def step(path):
    return float(re.search(r"step: .*: ([0-9.]+) s/step", open(path).read()).group(1))
mp = [step(f"{log}/mp{r}.log") for r in range(1, rounds + 1)]
pe = [step(f"{log}/peer{r}.log") for r in range(1, rounds + 1)]
m, p = sum(mp) / len(mp), sum(pe) / len(pe)
print(f"mean s/step: mirrorplay {m:.3f}, TRL {p:.3f}; TRL/mirrorplay {p / m:.2f}x (mirrorplay faster by that factor)")

# Roofline floor of one step, with the lower of the two bandwidth and sgemm measurements (the
# floor is then the higher, i.e. the least flattering to the measured times).
def measured(pattern):
    return min(float(re.search(pattern, open(f"{log}/{n}").read()).group(1)) for n in ("rates1", "rates2"))
bw = measured(r"bandwidth: ([0-9.]+) GB/s") * 1e9
fl = measured(r"sgemm: ([0-9.]+) GFLOP/s") * 1e9
V, H, M, L, NH, KVH = 49152, 576, 1536, 30, 9, 3
D = H // NH
lin = L * (2 * H * H + 2 * H * (KVH * D) + 3 * H * M)  # multiply-adds per token of the decoder's linear layers
params = lin + V * H + L * 2 * H + H                     # every parameter (tied embedding, norms)
W_lm = 4 * (lin + V * H + L * 2 * H + H)                 # f32 bytes one causal-LM forward reads (linear + tied head)
W_rm = 4 * (lin + L * 2 * H + H + H)                     # the reward model's (one-label head, no vocabulary head)
T = PROMPT + NEW
def attn_flops(tokens, ctx):                             # QKᵀ and AV, every layer
    return 4 * L * H * tokens * ctx
def fwd(tokens_per_row, ctx, rows, W, macs_per_token):
    flops = 2 * macs_per_token * rows * tokens_per_row + attn_flops(rows * tokens_per_row, ctx)
    kv = 4 * L * 2 * KVH * D * ctx * rows                # KV cache read
    return max((W + kv) / bw, flops / fl), flops, W + kv
passes = {}
# Sampling: y from π, y′ from the mixture (π and μ every position). The least weight traffic is
# 2 model passes per token: π over y's and y′'s 2B rows together, and μ over the same 2B rows —
# y′'s for the mixture, y's for log μ(y), which the loss reads: in a pass that reads μ's weights
# anyway, those rows cost at most their FLOPs, never more than a scoring forward over y would —
# each a prefill of PROMPT tokens and NEW − 1 decode forwards of one token per row.
t_s = fl_s = by_s = 0.0
for model in ("π", "μ"):
    rows = 2 * B
    for t, f, b in [fwd(PROMPT, PROMPT, rows, W_lm, lin + V * H)] + [fwd(1, PROMPT + i, rows, W_lm, lin + V * H) for i in range(1, NEW)]:
        t_s, fl_s, by_s = t_s + t, fl_s + f, by_s + b
passes["sample"] = (t_s, fl_s, by_s)
# Judge: the reward model on y and y′ (B rows of T tokens each).
j = [fwd(T, T, B, W_rm, lin + H) for _ in range(2)]
passes["judge"] = (sum(x[0] for x in j), sum(x[1] for x in j), sum(x[2] for x in j))
# Forward+backward: log π(y) with its graph, forward + backward (2×) of π on B rows of T tokens
# (log μ(y) came with the sampling above; the gradient of y′'s log-probs is not needed).
f1 = 2 * (lin + V * H) * B * T + attn_flops(B * T, T)
passes["forward+backward"] = (max((3 * W_lm + W_lm) / bw, 3 * f1 / fl), 3 * f1, 4 * W_lm)
# Optimizer: clip (read the gradients for the norm, read+write to scale) and AdamW (read θ, g, m,
# v; write θ, m, v), f32.
o = 4 * params * (3 + 7)
passes["optimizer"] = (o / bw, 0.0, o)
floor = sum(x[0] for x in passes.values())
print(f"roofline floor of one step at {bw / 1e9:.1f} GB/s and {fl / 1e9:.1f} GFLOP/s: {floor:.3f} s = "
      + " + ".join(f"{k} {v[0]:.3f} ({v[2] / 1e9:.1f} GB, {v[1] / 1e9:.0f} GFLOP)" for k, v in passes.items()))
print(f"step time / floor: mirrorplay {m / floor:.2f}x, TRL {p / floor:.2f}x")
PY
echo "load after: $(uptime)"
rm -rf "$LOG"
