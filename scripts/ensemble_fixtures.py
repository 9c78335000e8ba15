#!/usr/bin/env python3
"""Fixtures for mirrorplay's reward-ensemble aggregation (docs/algorithms.md §2, "Ensembles"):
an independent numpy implementation of member normalisation (center, zscore, none; mean and
population std with ddof 0 over the initial policy's samples, std floored at 1e-6) and of the
aggregates mean, wco (min), uwo (mean − λ·population variance) and member:k, evaluated in
float64 on random raw member scores.

Written from docs/algorithms.md §2 alone (not from the Rust code).

Run (CI never does; the output is committed):
    ~/.cache/mirrorplay/peers-venv/bin/python scripts/ensemble_fixtures.py
needs numpy; writes worker/tests/fixtures/ensemble/aggregates.json, read by
worker/src/preference/aggregate_tests.rs.
"""
import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/ensemble/aggregates.json"

rng = np.random.default_rng(20231004)
K, N, M = 3, 9, 6
# fit[k][i]: member k's raw score of initial-policy sample i; members differ in offset and scale.
offsets = np.array([0.7, -2.3, 5.1])
scales = np.array([0.4, 3.0, 1.2])
fit = offsets[:, None] + scales[:, None] * rng.normal(size=(K, N))
# raw[j][k]: member k's raw score of completion j.
raw = offsets[None, :] + scales[None, :] * rng.normal(size=(M, K))

mean = fit.mean(axis=1)
std = np.maximum(fit.std(axis=1, ddof=0), 1e-6)

norms = {
    "center": raw - mean[None, :],
    "zscore": (raw - mean[None, :]) / std[None, :],
    "none": raw.copy(),
}
aggregates = {
    "mean": lambda z: z.mean(axis=1),
    "wco": lambda z: z.min(axis=1),
    "uwo": lambda z: z.mean(axis=1) - 0.5 * z.var(axis=1, ddof=0),
    "uwo:1.75": lambda z: z.mean(axis=1) - 1.75 * z.var(axis=1, ddof=0),
    "member:0": lambda z: z[:, 0],
    "member:2": lambda z: z[:, 2],
}
cases = []
for norm, z in norms.items():
    cases.append(
        {
            "normalize": norm,
            "z": z.tolist(),
            "variance": z.var(axis=1, ddof=0).tolist(),
            "aggregates": {name: f(z).tolist() for name, f in aggregates.items()},
        }
    )

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(
    json.dumps(
        {"fit": fit.tolist(), "raw": raw.tolist(), "mean": mean.tolist(), "std": std.tolist(), "cases": cases},
        indent=1,
    )
    + "\n"
)
print(f"wrote {OUT}")
