#!/usr/bin/env bash
# Checkpoint throughput to the local store vs dd: a SmolLM2-135M-shaped model + AdamW
# state checkpointed (streamed, SHA-256, fsync, manifest) to DIR, alternated with
# `dd if=/dev/zero bs=8M conv=fdatasync` of the same number of bytes to the same directory.
# Usage: bench/checkpoint-throughput.sh [DIR] [TRIALS]
# PROFILE=release for an optimised build of mirrorplay itself (the dev profile already builds
# every dependency — sha2, object_store — at opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${TMPDIR:-/tmp}/mirrorplay-ckpt-bench}
TRIALS=${2:-3}
PROFILE=${PROFILE:-dev}
cargo build -p mirrorplay-worker --example checkpoint_throughput --profile "$PROFILE"
case "$PROFILE" in dev) SUB=debug ;; *) SUB=$PROFILE ;; esac
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), dir $DIR ($(df -h "$(dirname "$DIR")" | tail -1 | awk '{print $1}'))"
target/$SUB/examples/checkpoint_throughput "$DIR" "$TRIALS"
rm -rf "$DIR"
