#!/usr/bin/env python3
"""Fixtures for mirrorplay's optimizer (worker/src/optim): PyTorch's own torch.optim.AdamW
(single-tensor CPU path), torch.nn.utils.clip_grad_norm_ and a LambdaLR carrying mirrorplay's
learning-rate schedule, run in float32 on a fixed gradient sequence for three parameters.

The schedule (worker/src/optim/schedule.rs) for the step with 0-based index s, W warmup steps,
N total steps: factor = (s+1)/(W+1) while s < W; then with progress q = min(1, (s−W)/max(1, N−W)):
constant 1, linear 1 − q, cosine ½(1 + cos πq).

Run (CI never does; the output is committed):
    /path/to/venv/bin/python scripts/optim_fixtures.py
needs torch and numpy; writes worker/tests/fixtures/optim/adamw.json, read by the unit tests in
worker/src/optim/tests.rs.
"""
import json
import math
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/optim/adamw.json"
NAMES = ["a.weight", "b.bias", "c"]  # name-sorted, as mirrorplay keeps parameters
SHAPES = [[2, 3], [3], [4]]
STEPS = 12


def factor(s, warmup, total, decay):
    if s < warmup:
        return (s + 1) / (warmup + 1)
    q = min(1.0, (s - warmup) / max(1, total - warmup))
    return {"constant": 1.0, "linear": 1.0 - q, "cosine": 0.5 * (1.0 + math.cos(math.pi * q))}[decay]


rng = np.random.default_rng(7)
init = [rng.normal(0, 1, s).astype(np.float32) for s in SHAPES]
# Gradient scales vary so that clipping is active on some steps and not on others.
scales = [0.05, 2.0, 0.3, 0.01, 5.0, 0.2, 0.1, 1.0, 0.02, 3.0, 0.5, 0.07]
grads = [[(rng.normal(0, 1, s) * scales[k]).astype(np.float32) for s in SHAPES] for k in range(STEPS)]

runs = []
for decay, warmup, max_norm, wd, betas in [
    ("cosine", 3, 1.0, 0.1, (0.9, 0.95)),
    ("linear", 2, 0.5, 0.0, (0.9, 0.999)),
    ("constant", 0, None, 0.01, (0.8, 0.99)),
]:
    lr = 1e-2
    params = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=wd, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor(s, warmup, STEPS, decay))
    steps = []
    for k in range(STEPS):
        for p, g in zip(params, grads[k]):
            p.grad = torch.tensor(g)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item() if max_norm else None
        used_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append({
            "lr": used_lr,
            "grad_norm": norm,
            "params": [p.detach().numpy().ravel().tolist() for p in params],
        })
    runs.append({
        "decay": decay, "warmup_steps": warmup, "total_steps": STEPS, "lr": lr, "max_grad_norm": max_norm,
        "weight_decay": wd, "beta1": betas[0], "beta2": betas[1], "eps": 1e-8, "steps": steps,
    })

fixture = {
    "torch": torch.__version__,
    "names": NAMES,
    "shapes": SHAPES,
    "init": [x.ravel().tolist() for x in init],
    "grads": [[g.ravel().tolist() for g in step] for step in grads],
    "runs": runs,
}
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(fixture) + "\n")
print(f"wrote {OUT}")
