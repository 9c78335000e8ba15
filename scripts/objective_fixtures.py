#!/usr/bin/env python3
"""Fixtures for mirrorplay's objectives (docs/algorithms.md §3, §4): an independent PyTorch
implementation of every loss and KL metric, evaluated in float64 on fixed log-probs and
preferences, with the gradient of each loss with respect to the policy's per-token log-probs.

Written from docs/algorithms.md §3, §4 alone (not from the Rust code): losses use
torch.nn.functional.logsigmoid and torch.relu, sequence sums use explicit masks, the
reward-to-go uses flip/cumsum/flip.

Run (CI never does; the output is committed):
    /path/to/venv/bin/python scripts/objective_fixtures.py
needs torch and numpy; writes worker/tests/fixtures/objectives/objectives.json, read by
worker/src/objectives/tests.rs.
"""
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/objectives/objectives.json"


def masks(starts, lengths, T):
    m = torch.zeros(len(starts), T)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        m[b, s : s + n] = 1.0
    return m


rng = np.random.default_rng(20240517)
B, T, T2, V = 5, 6, 5, 7
mask_y = masks([0, 2, 5, 1, 0], [6, 3, 1, 4, 5], T)
mask_yp = masks([0, 0, 1, 3, 0], [5, 2, 4, 2, 1], T2)
pol_y = torch.tensor(-rng.uniform(0.05, 3.0, (B, T)))
ref_y = pol_y + torch.tensor(rng.normal(0.0, 0.4, (B, T)))
pol_yp = torch.tensor(-rng.uniform(0.05, 3.0, (B, T2)))
ref_yp = pol_yp + torch.tensor(rng.normal(0.0, 0.4, (B, T2)))
pref = torch.tensor([0.9, 0.5, 0.2, 0.65, 0.03])
reward_w = torch.tensor(rng.normal(0.0, 2.0, B))
reward_l = torch.tensor(rng.normal(0.0, 2.0, B))
pol_logits = torch.tensor(rng.normal(0.0, 1.5, (2, 3, V)))
ref_logits = torch.tensor(rng.normal(0.0, 1.5, (2, 3, V)))


def seq(lp, m):
    return (lp * m).sum(-1)


def h_of(py, pyp):
    return (seq(py, mask_y) - seq(ref_y, mask_y)) - (seq(pyp, mask_yp) - seq(ref_yp, mask_yp))


def ipo(py, pyp, tau):
    return ((h_of(py, pyp) - (pref - 0.5) / tau) ** 2).mean()


def dpo_pair(h, tau):
    return -F.logsigmoid(tau * h)


def slic_pair(h, tau):
    return torch.relu(1.0 - tau * h)


def labelled(pair, labels):
    def loss(py, pyp, tau):
        h = h_of(py, pyp)
        if labels == "hard":
            y_wins = pref >= 0.5
            return torch.where(y_wins, pair(h, tau), pair(-h, tau)).mean()
        return (pref * pair(h, tau) + (1 - pref) * pair(-h, tau)).mean()

    return loss


def nash(kind):
    def loss(py, pyp, tau):
        lp = py * mask_y
        d = ((py - ref_y) * mask_y).detach()
        if kind == "sequence":
            kl = d.sum(-1) * lp.sum(-1)
        elif kind == "to_go":
            to_go = torch.flip(torch.cumsum(torch.flip(d, [1]), 1), [1])
            kl = (to_go * lp).sum(-1)
        else:
            kl = (d * lp).sum(-1)
        return (-(pref - 0.5) * lp.sum(-1) + tau * kl).mean()

    return loss


def winner_nll(py, pyp, tau):
    nll_y = -seq(py, mask_y) / mask_y.sum(-1)
    nll_yp = -seq(pyp, mask_yp) / mask_yp.sum(-1)
    return torch.where(pref >= 0.5, nll_y, nll_yp).mean()


def sft(py, pyp, tau):
    return -(py * mask_y).sum() / mask_y.sum()


def tolist(t):
    return t.detach().numpy().tolist()


cases = []
for name, fn, tau in [
    ("ipo", ipo, 0.5),
    ("ipo", ipo, 1.0),
    ("nash_md_pg_sequence", nash("sequence"), 0.1),
    ("nash_md_pg_to_go", nash("to_go"), 0.1),
    ("nash_md_pg_token", nash("token"), 0.1),
    ("online_dpo_hard", labelled(dpo_pair, "hard"), 0.3),
    ("online_dpo_soft", labelled(dpo_pair, "soft"), 0.3),
    ("online_slic_hard", labelled(slic_pair, "hard"), 0.3),
    ("online_slic_soft", labelled(slic_pair, "soft"), 0.3),
    ("winner_nll", winner_nll, 0.0),
    ("sft", sft, 0.0),
]:
    py = pol_y.clone().requires_grad_(True)
    pyp = pol_yp.clone().requires_grad_(True)
    loss = fn(py, pyp, tau)
    gy, gyp = torch.autograd.grad(loss, [py, pyp], allow_unused=True)
    gyp = torch.zeros_like(pol_yp) if gyp is None else gyp
    cases.append({"name": name, "kl_coef": tau, "loss": loss.item(), "grad_y": tolist(gy), "grad_y_prime": tolist(gyp)})
    if "slic" in name:  # no row may sit on the hinge's kink
        assert (1.0 - tau * h_of(pol_y, pol_yp)).abs().min() > 1e-3

rw = reward_w.clone().requires_grad_(True)
rl = reward_l.clone().requires_grad_(True)
bt = -F.logsigmoid(rw - rl).mean()
g_w, g_l = torch.autograd.grad(bt, [rw, rl])

pol_lsm = torch.log_softmax(pol_logits, -1)
ref_lsm = torch.log_softmax(ref_logits, -1)
metrics = {
    "k1": tolist(seq(pol_y, mask_y) - seq(ref_y, mask_y)),
    "k3": tolist(((ref_y - pol_y).exp() - 1 - (ref_y - pol_y)) * mask_y),
    "exact_kl": tolist((pol_lsm.exp() * (pol_lsm - ref_lsm)).sum(-1)),
}

fixture = {
    "inputs": {
        "policy_y": tolist(pol_y),
        "reference_y": tolist(ref_y),
        "mask_y": tolist(mask_y),
        "policy_y_prime": tolist(pol_yp),
        "reference_y_prime": tolist(ref_yp),
        "mask_y_prime": tolist(mask_yp),
        "pref": tolist(pref),
        "reward_w": tolist(reward_w),
        "reward_l": tolist(reward_l),
        "policy_logprobs_btv": tolist(pol_lsm),
        "reference_logprobs_btv": tolist(ref_lsm),
    },
    "cases": cases,
    "bradley_terry": {"loss": bt.item(), "grad_w": tolist(g_w), "grad_l": tolist(g_l)},
    "metrics": metrics,
}
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(fixture, indent=1) + "\n")
print(f"wrote {OUT}")
