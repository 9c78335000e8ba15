#!/usr/bin/env bash
# Model merging against peers at equal size (results in
# BENCHMARKS.md#merging-pcb-global-vs-the-io-floor-peak-rss-and-peers-at-equal-size): on a
# Llama-shaped f32 base and three fine-tunes of PEER_SIZE_MIB each (bench/make_llama_models.py),
#   - PCB global (keep 0.1, clip 0.0001): the authors' algorithm in PyTorch (bench/pcb_torch.py)
#     vs `mirrorplay local` with 1 and 2 workers; the two outputs are compared (max |diff|);
#   - TIES (density 0.3, weights 1, normalize): mergekit (`mergekit-yaml`) vs mirrorplay running
#     the very same mergekit YAML file, outputs compared.
# Warm page cache for every tool (inputs read again before each timed run, since PyTorch at
# 512 MiB takes 15 GiB and evicts them), so this compares compute and write paths; peak RSS
# of each process from /usr/bin/time -v (for mirrorplay: the largest worker, through a wrapper
# passed as --worker-bin). 512 MiB is the largest size PyTorch's PCB fits in 23 GiB.
#
# Needs: a release build, a Python venv with torch + mergekit + numpy + safetensors
# (PEER_VENV, default ${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/peers-venv; make it with
# `python3 -m venv V && V/bin/pip install torch mergekit numpy safetensors`).
# Usage: cargo build --release && bench/merge_peers.sh      (PEER_SIZE_MIB=256 DIR=/tmp/mp-peers)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SIZE=${PEER_SIZE_MIB:-256}
DIR=${DIR:-/tmp/mp-peers}
VENV=${PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/peers-venv}
BIN=$ROOT/${BIN:-target/release}
PY="$VENV/bin/python"
M="$DIR/models"
mkdir -p "$DIR"
if [ "$(cat "$M/.size" 2>/dev/null)" != "$SIZE" ]; then
  rm -rf "$M"; "$PY" bench/make_llama_models.py "$M" "$SIZE" 3; echo "$SIZE" > "$M/.size"
fi
cat "$M"/*/model.safetensors > /dev/null   # warm

# Workers run under /usr/bin/time -v (bench/timed-worker.sh), one report per process.
export RSS_DIR="$DIR/rss" WORKER_BIN="$BIN/mirrorplay-worker"
rss_kib() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
# run NAME CMD...: seconds and peak RSS (MiB) of CMD; for mirrorplay, of its largest worker.
run() {
  local name=$1; shift
  rm -rf "$DIR/rss"; mkdir -p "$DIR/rss"
  cat "$M"/*/model.safetensors > /dev/null   # re-warm: a peer's memory use can evict the inputs
  local t0 t1; t0=$(date +%s.%N)
  /usr/bin/time -v -o "$DIR/rss/main.txt" "$@" > "$DIR/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$DIR/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  local worst=0 f k
  for f in "$DIR"/rss/*.txt; do k=$(rss_kib "$f"); [ "$k" -gt "$worst" ] && worst=$k; done
  printf '%-40s %8.2f s %8d MiB\n' "$name" "$(echo "$t1 - $t0" | bc)" "$((worst / 1024))"
}

cat > "$DIR/pcb.toml" <<T
[job]
kind = "merge"
output = "$DIR/out-pcb"
overwrite = true
[merge]
method = "pcb"
base = "$M/base"
models = ["$M/m1", "$M/m2", "$M/m3"]
keep_ratio = 0.1
clip_ratio = 0.0001
lambda = 1.0
scope = "global"
T
cat > "$DIR/ties.yml" <<Y
merge_method: ties
base_model: $M/base
models:
  - model: $M/m1
    parameters: {density: 0.3, weight: 1.0}
  - model: $M/m2
    parameters: {density: 0.3, weight: 1.0}
  - model: $M/m3
    parameters: {density: 0.3, weight: 1.0}
parameters:
  normalize: true
dtype: float32
Y

echo "3 x $SIZE MiB f32 Llama-shaped models (+ base); $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM; torch $("$PY" -c 'import torch; print(torch.__version__)'), mergekit $("$PY" -c 'from importlib.metadata import version; print(version("mergekit"))')"
printf '%-40s %10s %12s\n' "what" "wall" "peak RSS"
run "PCB global, authors' PyTorch" "$PY" bench/pcb_torch.py "$M/base" "$DIR/out-pcb-torch" "$M/m1" "$M/m2" "$M/m3" --keep 0.1 --clip 0.0001
for w in 1 2; do
  run "PCB global, mirrorplay ($w worker)" "$BIN/mirrorplay" local "$DIR/pcb.toml" --workers "$w" --worker-bin "$ROOT/bench/timed-worker.sh" --set "job.output=$DIR/out-pcb-w$w"
done
run "TIES, mergekit-yaml" env PATH="$VENV/bin:$PATH" mergekit-yaml "$DIR/ties.yml" "$DIR/out-ties-mergekit" --no-copy-tokenizer
for w in 1 2; do
  run "TIES, mirrorplay ($w worker, same YAML)" "$BIN/mirrorplay" local "$DIR/ties.yml" --workers "$w" --worker-bin "$ROOT/bench/timed-worker.sh" --set "job.output=$DIR/out-ties-w$w" --set job.overwrite=true
done
"$PY" - "$DIR" <<'P'
import glob, os, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
def load(p):
    out = {}
    for f in sorted(glob.glob(os.path.join(p, "*.safetensors"))):
        out.update(load_file(f))
    return out
for a, b in [("out-pcb-torch", "out-pcb-w1/model"), ("out-ties-mergekit", "out-ties-w1/model")]:
    x, y = load(os.path.join(d, a)), load(os.path.join(d, b))
    assert sorted(x) == sorted(y), (a, b)
    print(f"max |{a} - {b}| = {max(float(np.abs(x[k] - y[k]).max()) for k in x):.3g}")
P
