#!/usr/bin/env bash
# TIES parity fixtures from mergekit (docs/algorithms.md §5, "TIES": the method as mergekit's
# `ties` computes it).
#
# What it does: creates its own venv (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/mergekit-venv; override with MERGEKIT_VENV),
# installs mergekit (which pulls torch from PyPI) into it, generates four tiny f32 Llama-shaped
# models (base + 3 fine-tunes) with numpy/safetensors, runs mergekit's `ties` merge on them with
# per-model density/weight, and writes inputs + mergekit's output under
# worker/tests/fixtures/merge/mergekit_ties/ (a few KB). The Rust test
# `merge::fixture_tests::ties_matches_mergekit` reads them. Made with mergekit 0.1.5, torch 2.15.0.
#
# Never run by CI (docs/development.md#fixtures: CI never installs torch or mergekit). Run from
# the repo root:
#     bash scripts/mergekit_fixtures.sh            # install (first time, minutes) + make fixtures
#     SKIP_INSTALL=1 bash scripts/mergekit_fixtures.sh
set -euo pipefail
VENV="${MERGEKIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/mergekit-venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/worker/tests/fixtures/merge/mergekit_ties"

if [ -z "${SKIP_INSTALL:-}" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q mergekit numpy safetensors
fi

exec "$VENV/bin/python" "$ROOT/scripts/mergekit_fixtures.py" "$OUT"
