#!/usr/bin/env python3
"""PCB-merging as its authors run it (Du et al. 2024, the released `PCB_merge`): every task
vector flattened into one row of an [n, d] torch tensor (their `state_dict_to_vector`), the
clip and keep quantiles by `torch.sort` over whole rows, then back to a state dict. Written from
docs/algorithms.md §5 (the same formulas as scripts/merge_reference.py), in PyTorch on the CPU, for
the speed/memory comparison in bench/merge_peers.sh. Not used by tests.

Usage: pcb_torch.py BASE_DIR OUT_DIR MODEL_DIR... [--keep 0.1] [--clip 0.0001]
Prints seconds for load / merge / save.
"""
import argparse
import os
import time

import torch
from safetensors.torch import load_file, save_file


def clamp_rows(x, min_ratio, max_ratio):
    """The authors' `clamp`: per-row quantiles by sorting, then torch.clamp."""
    d = x.size(1)
    sorted_x, _ = torch.sort(x, dim=1)
    lo = sorted_x[:, int(d * min_ratio)].unsqueeze(1)
    hi = sorted_x[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1)
    del sorted_x
    return torch.clamp(x, lo, hi), lo, hi


def normalize_rows(x, lo, hi):
    return (x - lo) / (hi - lo)


def pcb_merge(tvs, keep, clip):
    n, d = tvs.shape
    abs_clamped, lo, hi = clamp_rows(tvs.abs(), clip, clip)
    clipped = torch.sign(tvs) * abs_clamped
    intra = torch.exp(n * normalize_rows(abs_clamped, lo, hi) ** 2)
    del abs_clamped
    inter = torch.tanh(tvs * tvs.sum(dim=0))
    beta = intra * inter
    del intra, inter
    sorted_b, _ = torch.sort(beta, dim=1)
    t = sorted_b[:, int(d * (1 - keep))].unsqueeze(1)
    m = sorted_b[:, -1].unsqueeze(1)
    del sorted_b
    scale = (torch.maximum(beta, t) - t) / (m - t)
    del beta
    return (clipped * scale).sum(dim=0) / torch.clamp(scale.sum(dim=0), min=1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=0.0001)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    t0 = time.time()
    base = load_file(os.path.join(a.base, "model.safetensors"))
    names = sorted(base)
    flat_base = torch.cat([base[k].flatten() for k in names])
    tvs = torch.stack([torch.cat([load_file(os.path.join(m, "model.safetensors"))[k].flatten() for k in names]) - flat_base for m in a.models])
    t1 = time.time()
    merged = flat_base + pcb_merge(tvs, a.keep, a.clip)
    del tvs
    t2 = time.time()
    out, i = {}, 0
    for k in names:
        numel = base[k].numel()
        out[k] = merged[i:i + numel].view(base[k].shape).clone()
        i += numel
    os.makedirs(a.out, exist_ok=True)
    save_file(out, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    t3 = time.time()
    print(f"load {t1 - t0:.2f} s, merge {t2 - t1:.2f} s, save {t3 - t2:.2f} s, total {t3 - t0:.2f} s")


if __name__ == "__main__":
    main()
