#!/usr/bin/env bash
# Self-play step time with and without a checkpoint in flight (target <= 10 %
# overhead). A Llama-shaped model over Goodhart-Digits' 20-token vocabulary, bigger than
# `tiny` (bench/make_goodhart_model.py: HIDDEN, INTER, LAYERS), is the policy and the
# reference; the same job runs with checkpoints only at the last step ("off") and every EVERY
# steps ("on"), alternated ROUNDS times. Step time = the gap between consecutive train metrics
# lines (step 1 and the last step excluded); the checkpoint's upload time comes from the
# worker's "checkpoint committed" log lines, so one can see how many steps a checkpoint overlaps.
# Usage: bench/checkpoint_overhead.sh [STEPS=30] [EVERY=5] [ROUNDS=2]
# Env: PROFILE=release (default) | dev; HIDDEN=512 INTER=1376 LAYERS=4; DIR (scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
EVERY=${2:-5}
ROUNDS=${3:-2}
PROFILE=${PROFILE:-release}
HIDDEN=${HIDDEN:-512} INTER=${INTER:-1376} LAYERS=${LAYERS:-4}
DIR=${DIR:-${TMPDIR:-/tmp}/mirrorplay-ckpt-overhead}
case "$PROFILE" in dev) SUB=debug ;; *) SUB=$PROFILE ;; esac
cargo build --profile "$PROFILE" -p mirrorplay-coordinator --bin mirrorplay -p mirrorplay-worker --bin mirrorplay-worker
MP=$PWD/target/$SUB/mirrorplay
WORKER=$PWD/target/$SUB/mirrorplay-worker
rm -rf "$DIR" && mkdir -p "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$MP" serve --listen 127.0.0.1:$PORT --state "$DIR/state" > "$DIR/coordinator.log" 2>&1 &
COORD=$!
trap 'kill $COORD 2>/dev/null || true' EXIT
until "$MP" status --coordinator "$URL" > /dev/null 2>&1; do sleep 0.2; done

job() { # OUT POLICY STEPS EVERY
  cat > "$DIR/job.toml" <<TOML
[job]
kind = "selfplay"
output = "$1"
seed = 2
[selfplay]
algorithm = "ipo_md"
kl_coef = 0.05
policy = "$2"
reference = "$2"
task = "goodhart_digits"
batch_prompts = 8
steps = $3
eval_every = 100000
eval_prompts = 4
checkpoint_every = $4
keep_last = 2
TOML
  # One worker per run, its log kept (the commits' upload times).
  "$WORKER" --coordinator "$URL" --name "w-$(basename "$1")" > /dev/null 2> "$1.log" &
  local w=$!
  local id
  id=$("$MP" submit "$DIR/job.toml" --coordinator "$URL")
  "$MP" watch "$id" --coordinator "$URL" > /dev/null 2>&1
  kill "$w"; wait "$w" 2>/dev/null || true
}

job "$DIR/tiny" tiny 1 1
python3 bench/make_goodhart_model.py "$DIR/tiny/checkpoints/step-000001" "$DIR/model" "$HIDDEN" "$INTER" "$LAYERS"
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), profile $PROFILE; steps $STEPS, checkpoint_every $EVERY"
for r in $(seq "$ROUNDS"); do
  job "$DIR/off-$r" "$DIR/model" "$STEPS" 100000
  job "$DIR/on-$r" "$DIR/model" "$STEPS" "$EVERY"
done
python3 - "$DIR" "$ROUNDS" "$EVERY" <<'PY'
import glob, json, re, statistics, sys
d, rounds, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def steps(out):
    t = {}
    for f in glob.glob(f"{out}/metrics/*.jsonl"):
        for l in open(f):
            v = json.loads(l)
            if v["split"] == "train":
                t[v["step"]] = v["time"]
    s = sorted(t)
    return [t[b] - t[a] for a, b in zip(s[1:-1], s[2:])]
def logged(log, key):
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(log).read())
    return [float(m) for m in re.findall(key + r"=([0-9.]+)", text)]
res = {}
for kind in ("off", "on"):
    gaps, ups, snaps = [], [], []
    for r in range(1, rounds + 1):
        gaps += steps(f"{d}/{kind}-{r}")
        ups += logged(f"{d}/{kind}-{r}.log", "upload_s")
        snaps += logged(f"{d}/{kind}-{r}.log", "snapshot_ms")
    res[kind] = statistics.mean(gaps)
    up = (f"; checkpoint upload {statistics.mean(ups):.2f} s, snapshot {statistics.mean(snaps):.0f} ms"
          f" (means over {len(ups)})" if ups else "")
    print(f"checkpoints {kind:3}: step {statistics.mean(gaps)*1000:.0f} ms mean, "
          f"{statistics.median(gaps)*1000:.0f} ms median over {len(gaps)} steps{up}")
kept = [g for g in glob.glob(f"{d}/on-1/checkpoints/step-*") if glob.glob(f"{g}/manifest.json")]
ckpt_bytes = sum(len(open(f, "rb").read()) for g in kept for f in glob.glob(f"{g}/*.safetensors")) / max(1, len(kept))
print(f"checkpoint size {ckpt_bytes/2**20:.0f} MiB (model + AdamW), every {every} steps")
print(f"overhead: {(res['on'] / res['off'] - 1) * 100:+.1f} %")
PY
