#!/usr/bin/env bash
# A `--worker-bin` wrapper for the merge benchmarks: runs $WORKER_BIN under /usr/bin/time -v and
# writes the report (peak RSS among it) to $RSS_DIR/worker-PID.txt. time(1) dies on SIGTERM
# without passing it on, so the signal is forwarded to the worker and time is waited for.
/usr/bin/time -v -o "$RSS_DIR/worker-$$.txt" "$WORKER_BIN" "$@" &
timer=$!
trap 'pkill -TERM -P $timer' TERM INT
wait $timer || true
wait $timer || true
