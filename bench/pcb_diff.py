#!/usr/bin/env python3
"""Explains where two PCB outputs of bench/merge_peers.sh differ (PyTorch vs mirrorplay).

For every entry whose values differ by more than 1e-6 it recomputes, in numpy from the inputs,
each model's β = exp(n·x²)·tanh(τ·Σ_j τ_j), the thresholds t (rank int(d·(1−keep))) and the
maxima M of docs/algorithms.md §5, and prints β − t and the ramp S per model: an entry where one β
sits within an ulp of its t while the other models' S are 0 is PCB's discontinuity, not a bug.
Needs numpy and safetensors (the bench venv). Memory: ~8 × the model size.

Usage: pcb_diff.py PEERS_DIR [--keep 0.1] [--clip 0.0001]
  (PEERS_DIR as bench/merge_peers.sh's DIR: models/, out-pcb-torch/, out-pcb-w1/)
"""
import argparse
import glob

import numpy as np
from safetensors.numpy import load_file


def flat(path):
    tensors = {}
    for f in sorted(glob.glob(f"{path}/*.safetensors")):
        tensors.update(load_file(f))
    return np.concatenate([tensors[k].ravel() for k in sorted(tensors)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=0.0001)
    a = ap.parse_args()
    torch_out = flat(f"{a.dir}/out-pcb-torch")
    ours = flat(f"{a.dir}/out-pcb-w1/model")
    diff = np.abs(torch_out.astype(np.float64) - ours)
    idx = np.nonzero(diff > 1e-6)[0]
    rest = np.delete(diff, idx)
    print(f"{len(idx)} of {diff.size} entries differ by > 1e-6 (max {diff.max():.3g}); "
          f"the others by at most {rest.max() if rest.size else 0:.3g}")
    if not len(idx):
        return
    base = flat(f"{a.dir}/models/base")
    tv = np.stack([flat(m) - base for m in sorted(glob.glob(f"{a.dir}/models/m*"))])
    n, d = tv.shape
    absx = np.abs(tv)
    lo_rank, hi_rank = int(d * a.clip), int(d * (1 - a.clip) - 1)
    lo = np.array([np.partition(r, lo_rank)[lo_rank] for r in absx])
    hi = np.array([np.partition(r, hi_rank)[hi_rank] for r in absx])
    x = (np.clip(absx, lo[:, None], hi[:, None]) - lo[:, None]) / (hi - lo)[:, None]
    beta = np.exp(n * x * x) * np.tanh(tv * tv.sum(axis=0))
    k = int(d * (1 - a.keep))
    t = np.array([np.partition(r, k)[k] for r in beta])
    m = beta.max(axis=1)
    for e in idx[:20]:
        s = (np.maximum(beta[:, e], t) - t) / (m - t)
        print(f"element {e}: torch {torch_out[e]:.6g}, mirrorplay {ours[e]:.6g}, base {base[e]:.6g}; "
              f"β − t per model {beta[:, e] - t}; S per model {s}")


if __name__ == "__main__":
    main()
