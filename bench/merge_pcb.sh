#!/usr/bin/env bash
# Model merging speed and memory bound (results in
# BENCHMARKS.md#merging-pcb-global-vs-the-io-floor-peak-rss-and-peers-at-equal-size): PCB global
# (keep 0.1, clip 0.0001) on a base
# and three models of SIZE each (`mirrorplay example-models --random-size`), cold page cache,
# with 1 and 2 workers, next to the I/O floor measured in the same run: a cold read of the four
# inputs (`cat > /dev/null`) plus one write of SIZE (`dd ... conv=fsync`). Peak RSS of every
# worker process comes from /usr/bin/time -v (a wrapper passed as --worker-bin); the script
# fails if any worker exceeds RSS_LIMIT_MIB (default 1024).
#
# The page cache is dropped per file with posix_fadvise(DONTNEED) after a sync
# (bench/drop_cache.py), as in bench/merge_io.sh.
# Usage: cargo build --release && bench/merge_pcb.sh     (SIZE=1GiB; SIZE=2GiB for the RSS bound)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SIZE=${SIZE:-1GiB}
DIR=${DIR:-/tmp/mp-bench-pcb}
BIN=$ROOT/${BIN:-target/release}
LIMIT=${RSS_LIMIT_MIB:-1024}
WORKERS=${WORKERS:-1 2}
M="$DIR/models-$SIZE"
INPUTS=("$M"/base/model.safetensors "$M"/m1/model.safetensors "$M"/m2/model.safetensors "$M"/m3/model.safetensors)
mkdir -p "$DIR"
if [ ! -f "$M/.done" ]; then
  rm -rf "$M"
  "$BIN/mirrorplay" example-models "$M" --random-size "$SIZE" --random-names base,m1,m2,m3
  touch "$M/.done"
fi
cat > "$DIR/pcb.toml" <<T
[job]
kind = "merge"
output = "$DIR/out"
overwrite = true
[merge]
method = "pcb"
base = "$M/base"
models = ["$M/m1", "$M/m2", "$M/m3"]
keep_ratio = 0.1
clip_ratio = 0.0001
lambda = 1.0
scope = "global"
max_shard_size = "1GiB"
T
# Workers run under /usr/bin/time -v (bench/timed-worker.sh), one report per process.
export RSS_DIR="$DIR/rss" WORKER_BIN="$BIN/mirrorplay-worker"
drop_cache() { sync; python3 bench/drop_cache.py "${INPUTS[@]}" "$DIR"/out/model/* "$DIR/floor.bin" 2>/dev/null || true; }
now() { date +%s.%N; }

bytes=$(du -cb "${INPUTS[0]}" | tail -1 | cut -f1)
echo "PCB global on base + 3 models of $SIZE ($(du -ch "${INPUTS[@]}" | tail -1 | cut -f1) in); $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM"
drop_cache; t0=$(now); cat "${INPUTS[@]}" > /dev/null; t1=$(now)
dd if=/dev/zero of="$DIR/floor.bin" bs=16M count=$((bytes / 16777216 + 1)) conv=fsync status=none; t2=$(now)
rm -f "$DIR/floor.bin"
read_s=$(echo "$t1 - $t0" | bc); write_s=$(echo "$t2 - $t1" | bc); floor=$(echo "$read_s + $write_s" | bc)
printf 'I/O floor: cold read %.2f s + write %.2f s = %.2f s\n' "$read_s" "$write_s" "$floor"
status=0
for w in $WORKERS; do
  rm -rf "$DIR/rss"; mkdir -p "$DIR/rss"
  drop_cache; t0=$(now)
  "$BIN/mirrorplay" local "$DIR/pcb.toml" --workers "$w" --worker-bin "$ROOT/bench/timed-worker.sh" > "$DIR/pcb-w$w.log" 2>&1 || { tail -20 "$DIR/pcb-w$w.log"; exit 1; }
  sync; t1=$(now)
  s=$(echo "$t1 - $t0" | bc)
  rss=$(for f in "$DIR"/rss/*.txt; do [ -f "$f" ] && grep "Maximum resident" "$f" | awk '{print int($NF/1024)}'; done | sort -n | tr '\n' ' ')
  [ -n "$rss" ] || { echo "no /usr/bin/time report from the workers"; exit 1; }
  printf 'PCB global, %d worker(s): %.2f s = %.2f x the I/O floor; peak RSS per worker (MiB): %s\n' "$w" "$s" "$(echo "$s / $floor" | bc -l)" "$rss"
  for r in $rss; do [ "$r" -le "$LIMIT" ] || { echo "worker peak RSS $r MiB > $LIMIT MiB"; status=1; }; done
done
exit $status
