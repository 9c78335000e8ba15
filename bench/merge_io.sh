#!/usr/bin/env bash
# Benchmark: task-arithmetic merge of 3 models (+ base) of SIZE each, with 1 and 2 workers,
# against reading the same input files with `cat > /dev/null`, with a cold and a warm page cache.
#
# The page cache is dropped per file with posix_fadvise(POSIX_FADV_DONTNEED) (bench/drop_cache.py)
# after a sync: this evicts clean pages without root's /proc/sys/vm/drop_caches. Each cold run
# drops the inputs and any previous output first.
#
# Usage: cargo build --release && bench/merge_io.sh            (SIZE=1GiB DIR=/tmp/mp-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1GiB}
DIR=${DIR:-/tmp/mp-bench}
BIN=${BIN:-target/release}
MODELS="$DIR/models"
INPUTS=("$MODELS"/base/model.safetensors "$MODELS"/m1/model.safetensors "$MODELS"/m2/model.safetensors "$MODELS"/m3/model.safetensors)

if [ ! -f "$MODELS/m3/model.safetensors" ] || [ "$(cat "$MODELS/.size" 2>/dev/null)" != "$SIZE" ]; then
  rm -rf "$MODELS"
  "$BIN/mirrorplay" example-models "$MODELS" --random-size "$SIZE" --random-names base,m1,m2,m3
  echo "$SIZE" > "$MODELS/.size"
fi

cat > "$DIR/merge.toml" <<TOML
[job]
kind = "merge"
output = "$DIR/out"
overwrite = true
[merge]
method = "task_arithmetic"
base = "$MODELS/base"
models = ["$MODELS/m1", "$MODELS/m2", "$MODELS/m3"]
lambda = 1.0
max_shard_size = "256MiB"
TOML

drop_cache() { sync; python3 bench/drop_cache.py "${INPUTS[@]}" "$DIR/out"; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

echo "inputs: $(du -ch "${INPUTS[@]}" | tail -1 | cut -f1) in 4 files; output ~$SIZE; machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM"
printf '%-28s %10s %10s\n' "what" "cold (s)" "warm (s)"
drop_cache; cold=$(seconds cat "${INPUTS[@]}"); warm=$(seconds cat "${INPUTS[@]}")
printf '%-28s %10.2f %10.2f\n' "cat inputs > /dev/null" "$cold" "$warm"
for w in 1 2; do
  drop_cache; cold=$(seconds "$BIN/mirrorplay" local "$DIR/merge.toml" --workers "$w")
  cat "${INPUTS[@]}" > /dev/null
  warm=$(seconds "$BIN/mirrorplay" local "$DIR/merge.toml" --workers "$w")
  printf '%-28s %10.2f %10.2f\n' "merge, $w worker(s)" "$cold" "$warm"
done
