#!/usr/bin/env python3
"""Independent numpy reference for mirrorplay's merge math (docs/algorithms.md §5), and the
fixture generator for its parity tests.

What it implements, written from docs/algorithms.md §5 in the authors' matrix style (n tasks × d
parameters, whole arrays, np.sort for order statistics) and sharing no code with the Rust:
  * PCB-merging as the authors' released `PCB_merge` computes it (Du et al. 2024), global and
    per-tensor scope, inter = sum_raw | pairwise, keep ratio r, clip ratio c, lambda, lambdas,
    with the guards of docs/algorithms.md §5 (hi = lo, M = t: normalised value 0);
  * TIES (Yadav et al. 2023, as mergekit): top-k per unit by |tau| with ties to the lower flat
    index (stable argsort), sign election on w_i * tau_hat_i, optional normalisation;
  * DARE given a mask (Yu et al. 2024): rescale inv_density | l1 (mergekit's, with its 1e-7
    guard) | none, then a weighted sum (dare_linear) or the TIES election (dare_ties);
  * task arithmetic.
All value arithmetic is float32 in the order docs/algorithms.md §5 writes it; index arithmetic is
Python float (f64) truncated by int().

What it writes (a few tens of KB) under worker/tests/fixtures/merge/:
  inputs.safetensors   base/<tensor>, model<i>/<tensor> (float32)
  outputs.safetensors  <case id>/<tensor> merged outputs (float32); mask<i>/<tensor> DARE masks (uint8)
  cases.json           every case: method, parameters, kept entries per tensor per model
Read by the Rust tests `merge::fixture_tests::*` (cargo test -p mirrorplay-worker --lib merge::).

How to run (numpy is the only dependency; the safetensors format is written by hand below):
    python scripts/merge_reference.py        # any python with numpy
Deterministic: re-running rewrites identical files.
"""

import json
import os
import struct
import sys

import numpy as np

F32 = np.float32
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "tests", "fixtures", "merge")

# ---------------------------------------------------------------------------------------------
# safetensors, by hand (8-byte LE header length, JSON header, data)


def save_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---------------------------------------------------------------------------------------------
# The methods. `base`: {name: array}; `models`: list of such dicts; outputs: ({name: array},
# {name: [kept per model]}).


def flat_order(base):
    """Tensor names sorted lexicographically, each flattened row-major."""
    return sorted(base)


def units(base, scope):
    names = flat_order(base)
    return [names] if scope == "global" else [[n] for n in names]


def stack_unit(names, base, models):
    b = np.concatenate([base[n].reshape(-1) for n in names]).astype(F32)
    tau = np.stack([np.concatenate([m[n].reshape(-1) for n in names]).astype(F32) - b for m in models])
    return b, tau


def split_unit(names, base, flat):
    out, o = {}, 0
    for n in names:
        size = base[n].size
        out[n] = flat[o : o + size].reshape(base[n].shape)
        o += size
    return out


def pcb_unit(tau, keep_ratio, clip_ratio, inter, lambdas):
    """PCB_merge on one unit: tau is (n, d) float32; returns (merged task vector, kept per task)."""
    n, d = tau.shape
    a = np.abs(tau)
    a_sorted = np.sort(a, axis=1)
    lo = a_sorted[:, int(d * clip_ratio)]
    hi = a_sorted[:, int(d * (1 - clip_ratio) - 1)]
    A = np.minimum(np.maximum(a, lo[:, None]), hi[:, None])  # clamp := min(max(x, lo), hi)
    C = np.sign(tau) * A
    x = np.zeros_like(A)
    for i in range(n):
        if hi[i] != lo[i]:  # guard: hi = lo -> normalised value 0
            x[i] = (A[i] - lo[i]) / (hi[i] - lo[i])
    intra = np.exp(n * (x * x))
    if inter == "sum_raw":
        s = np.zeros(d, dtype=F32)
        for j in range(n):
            s = s + tau[j]
        inter_v = np.tanh(tau * s[None, :])
    else:  # pairwise: sum_j tanh(nu_i * nu_j), nu = sign(tau) * normalised A
        nu = np.sign(tau) * x
        inter_v = np.zeros_like(tau)
        for i in range(n):
            acc = np.zeros(d, dtype=F32)
            for j in range(n):
                acc = acc + np.tanh(nu[i] * nu[j])
            inter_v[i] = acc
    beta = intra * inter_v
    t = np.sort(beta, axis=1)[:, int(d * (1 - keep_ratio))]
    M = beta.max(axis=1)
    S = np.zeros_like(beta)
    for i in range(n):
        if M[i] != t[i]:  # guard: M = t -> 0
            S[i] = (np.maximum(beta[i], t[i]) - t[i]) / (M[i] - t[i])
    num = np.zeros(d, dtype=F32)
    den = np.zeros(d, dtype=F32)
    for i in range(n):
        num = num + (F32(lambdas[i]) * S[i]) * C[i]
        den = den + S[i]
    return num / np.maximum(den, F32(1e-12)), (S > 0)


def pcb(base, models, scope, keep_ratio, clip_ratio, inter, lam, lambdas):
    out, kept = {}, {}
    for names in units(base, scope):
        b, tau = stack_unit(names, base, models)
        tm, k = pcb_unit(tau, keep_ratio, clip_ratio, inter, lambdas)
        out.update(split_unit(names, base, b + F32(lam) * tm))
        for i in range(len(models)):
            for n, v in split_unit(names, base, k[i]).items():
                kept.setdefault(n, [0] * len(models))[i] = int(v.sum())
    return out, kept


def elect(D, w, normalize):
    """TIES election: D is (n, d) = w_i * tau_hat_i."""
    total = np.zeros(D.shape[1], dtype=F32)
    for i in range(D.shape[0]):
        total = total + D[i]
    s = np.where(total >= 0, F32(1), F32(-1))
    mixed = np.zeros(D.shape[1], dtype=F32)
    div = np.zeros(D.shape[1], dtype=F32)
    for i in range(D.shape[0]):
        agree = np.sign(D[i]) == s  # zeros never agree
        mixed = mixed + np.where(agree, D[i], F32(0))
        div = div + np.where(agree, F32(w[i]), F32(0))
    if not normalize:
        return mixed
    div[div == 0] = 1
    return mixed / div


def ties(base, models, scope, density, weights, normalize, lam):
    out, kept = {}, {}
    for names in units(base, scope):
        b, tau = stack_unit(names, base, models)
        n, d = tau.shape
        mask = np.zeros_like(tau, dtype=bool)
        for i in range(n):
            if density[i] >= 1:
                mask[i] = True
                continue
            k = int(density[i] * d)
            assert k > 0, "k_i = 0 is an error"
            order = np.argsort(-np.abs(tau[i]), kind="stable")  # ties -> lower flat index first
            mask[i, order[:k]] = True
        D = np.stack([F32(weights[i]) * np.where(mask[i], tau[i], F32(0)) for i in range(n)])
        out.update(split_unit(names, base, b + F32(lam) * elect(D, weights, normalize)))
        for i in range(n):
            for nm, v in split_unit(names, base, mask[i]).items():
                kept.setdefault(nm, [0] * n)[i] = int(v.sum())
    return out, kept


def dare(base, models, masks, density, weights, rescale, ties_normalize, lam):
    """masks[i][name]: bool array. ties_normalize None = dare_linear."""
    out, kept = {}, {}
    n = len(models)
    for name in flat_order(base):
        b = base[name].reshape(-1).astype(F32)
        D = []
        for i in range(n):
            tau = models[i][name].reshape(-1).astype(F32) - b
            m = masks[i][name].reshape(-1)
            if rescale == "inv_density":
                delta = np.where(m, tau / F32(density[i]) if density[i] > 0 else F32(0), F32(0))
            elif rescale == "l1":
                before = np.abs(tau).astype(np.float64).sum()
                after = np.abs(np.where(m, tau, F32(0))).astype(np.float64).sum()
                f = F32(1) if (before < 1e-7 or after < 1e-7) else F32(before / after)
                delta = np.where(m, tau * f, F32(0))
            else:
                delta = np.where(m, tau, F32(0))
            D.append(F32(weights[i]) * delta.astype(F32))
            kept.setdefault(name, [0] * n)[i] = int(m.sum())
        D = np.stack(D)
        if ties_normalize is None:
            merged = np.zeros(b.shape, dtype=F32)
            for i in range(n):
                merged = merged + D[i]
        else:
            merged = elect(D, weights, ties_normalize)
        out[name] = (b + F32(lam) * merged).reshape(base[name].shape)
    return out, kept


def task_arithmetic(base, models, weights, lam):
    out = {}
    for name in flat_order(base):
        acc = np.zeros(base[name].shape, dtype=F32)
        for i, m in enumerate(models):
            acc = acc + F32(weights[i]) * (m[name] - base[name])
        out[name] = base[name] + F32(lam) * acc
    return out, {name: [base[name].size] * len(models) for name in base}


# ---------------------------------------------------------------------------------------------
# Inputs: four tensors, three models. Model 1's deltas and the base lie on binary grids, so its
# |tau| has many exact ties; model 2 leaves `c.weight` unchanged (all-zero task vector); `b.bias`
# and `d.tiny` are small enough that per-tensor PCB keeps nothing there for small r (t = M).


def make_inputs():
    rng = np.random.default_rng(20240611)
    shapes = {"a.weight": (16, 15), "b.bias": (7,), "c.weight": (13, 11), "d.tiny": (3,)}
    base = {k: (np.round(rng.standard_normal(s) * 1024) / 1024).astype(F32) for k, s in shapes.items()}
    models = []
    for i in range(3):
        m = {}
        for k, s in shapes.items():
            delta = rng.standard_normal(s) * 0.05
            if i == 1:
                delta = np.round(delta * 64) / 64
            m[k] = (base[k] + delta).astype(F32)
        models.append(m)
    models[2]["c.weight"] = base["c.weight"].copy()
    return base, models


def main():
    os.makedirs(OUT, exist_ok=True)
    base, models = make_inputs()
    n = len(models)
    tensors = {f"base/{k}": v for k, v in base.items()}
    for i, m in enumerate(models):
        tensors.update({f"model{i}/{k}": v for k, v in m.items()})
    save_safetensors(os.path.join(OUT, "inputs.safetensors"), tensors)

    cases, outputs = [], {}

    def add(case, result):
        out, kept = result
        case["kept"] = kept
        cases.append(case)
        for k, v in out.items():
            outputs[f"{case['id']}/{k}"] = np.asarray(v, dtype=F32)

    for scope in ["global", "per_tensor"]:
        for inter in ["sum_raw", "pairwise"]:
            for c in [0.0001, 0.01]:
                for r in [0.05, 0.1, 0.2, 0.5]:
                    p = dict(scope=scope, keep_ratio=r, clip_ratio=c, inter=inter, lam=1.0, lambdas=[1.0] * n)
                    add({"id": f"pcb-{scope}-{inter}-c{c}-r{r}", "method": "pcb", **p}, pcb(base, models, **p))
        p = dict(scope=scope, keep_ratio=0.1, clip_ratio=0.01, inter="sum_raw", lam=0.7, lambdas=[1.3, 0.6, 1.0])
        add({"id": f"pcb-{scope}-lambdas", "method": "pcb", **p}, pcb(base, models, **p))
        for normalize in [True, False]:
            p = dict(scope=scope, density=[0.35, 0.5, 0.9], weights=[1.0, 0.7, 1.3], normalize=normalize, lam=1.0)
            add({"id": f"ties-{scope}-norm{int(normalize)}", "method": "ties", **p}, ties(base, models, **p))
        p = dict(scope=scope, density=[0.35, 1.0, 0.6], weights=[0.5, 1.0, 1.0], normalize=True, lam=0.8)
        add({"id": f"ties-{scope}-lam", "method": "ties", **p}, ties(base, models, **p))

    density = [0.3, 0.7, 0.5]
    mrng = np.random.default_rng(7)
    masks = [{k: mrng.random(base[k].shape) < density[i] for k in flat_order(base)} for i in range(n)]
    for i in range(n):
        outputs.update({f"mask{i}/{k}": v.astype(np.uint8) for k, v in masks[i].items()})
    for rescale in ["inv_density", "l1", "none"]:
        for ties_normalize in [None, False, True]:
            kind = "linear" if ties_normalize is None else f"ties-norm{int(ties_normalize)}"
            p = dict(density=density, weights=[1.0, 0.6, 1.5], rescale=rescale, ties_normalize=ties_normalize, lam=0.9)
            add({"id": f"dare-{kind}-{rescale}", "method": "dare", **p}, dare(base, models, masks, **p))

    p = dict(weights=[0.5, 1.0, -0.3], lam=0.8)
    add({"id": "task_arithmetic", "method": "task_arithmetic", **p}, task_arithmetic(base, models, **p))

    save_safetensors(os.path.join(OUT, "outputs.safetensors"), outputs)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"models": n, "cases": cases}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.relpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
