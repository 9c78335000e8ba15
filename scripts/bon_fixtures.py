#!/usr/bin/env python3
"""Fixtures for mirrorplay's best-of-n estimator and the `lsc` aggregate (docs/algorithms.md §4,
"Best-of-n estimator", and §2, "Ensembles"), computed independently of the Rust code and in exact
arithmetic:

- best-of-n weights w_i = C(i−1, n−1)/C(N, n) as exact rationals (math.comb, fractions), for
  N = 3, 7 and 10 000;
- the expected proxy and gold of best-of-n by brute force over all C(N, n) subsets of a 7-sample
  prompt with tied proxy scores (ties broken uniformly at random: the chosen sample's gold is the
  mean gold of the subset's tied maxima), cross-checked against the closed form with
  tie-group-averaged gold; and the closed form, exactly, for N = 200 and N = 1000 with ties;
- KL_bon(n) = ln n − (n − 1)/n (Beirami et al. 2024) and the n grid, in 50-digit decimal;
- quantiles with numpy's default ("linear") rule, h = (M − 1)·q, x_⌊h⌋ + (h − ⌊h⌋)(x_⌊h⌋+1 −
  x_⌊h⌋), in exact rationals (and, when numpy is importable, checked against numpy.quantile);
- lsc = Σ_k log σ(r_k − r_ref,k) with r_ref,k the 0.85-quantile of member k's reference scores,
  log σ(x) = −ln(1 + e^{−x}) in 50-digit decimal.

Written from docs/algorithms.md alone (not from the Rust code). Standard library only (numpy is
optional, used only as a cross-check).

Run (CI never does; the output is committed):
    python3 scripts/bon_fixtures.py
writes worker/tests/fixtures/ensemble/bon.json, read by worker/src/preference/bon_tests.rs and
worker/src/preference/aggregate_tests.rs.
"""
import decimal
import itertools
import json
import math
import pathlib
import random
from fractions import Fraction

OUT = pathlib.Path(__file__).resolve().parent.parent / "worker/tests/fixtures/ensemble/bon.json"

decimal.getcontext().prec = 50
D = decimal.Decimal
rng = random.Random(20240202)


def weight(N, n, i):
    """P(the best of n drawn from N is the sample of 1-based rank i), exactly."""
    if i < n:
        return Fraction(0)
    return Fraction(math.comb(i - 1, n - 1), math.comb(N, n))


def closed_form(proxy, gold, n):
    """Σ_i w_i s_(i), sorted ascending by proxy, gold averaged within tie groups; exact."""
    N = len(proxy)
    pairs = sorted(zip(proxy, gold), key=lambda t: t[0])
    group_gold = {}
    for p, g in pairs:
        group_gold.setdefault(p, []).append(Fraction(g))
    mean = {p: sum(gs) / len(gs) for p, gs in group_gold.items()}
    denom = math.comb(N, n)
    ep = sum(math.comb(i - 1, n - 1) * Fraction(p) for i, (p, _) in enumerate(pairs, 1) if i >= n)
    eg = sum(math.comb(i - 1, n - 1) * mean[p] for i, (p, _) in enumerate(pairs, 1) if i >= n)
    return ep / denom, eg / denom


def brute_force(proxy, gold, n):
    """Mean over all n-subsets of (max proxy, mean gold of the subset's tied maxima); exact."""
    total_p, total_g, count = Fraction(0), Fraction(0), 0
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[j] for j in subset)
        tied = [j for j in subset if proxy[j] == top]
        total_p += Fraction(top)
        total_g += sum(Fraction(gold[j]) for j in tied) / len(tied)
        count += 1
    return total_p / count, total_g / count


def n_grid(max_n):
    ns, n = [], 1
    while n <= max_n:
        ns.append(n)
        n *= 2
    if max_n & (max_n - 1):
        ns.append(max_n)
    return ns


# --- weights ---------------------------------------------------------------------------------
weights = []
for N, ns in [(3, [1, 2, 3]), (7, list(range(1, 8))), (10_000, [1, 10, 1000, 10_000])]:
    for n in ns:
        ranks = range(1, N + 1) if N <= 7 else sorted(
            {n, n + 1, n + 7, (n + N) // 2, N - 1000, N - 100, N - 10, N - 1, N} & set(range(n, N + 1))
        )
        exact = [(i, weight(N, n, i)) for i in ranks]
        assert N > 7 or sum(w for _, w in exact) == 1
        weights.append(
            {
                "samples": N,
                "n": n,
                # [1-based rank, w]; only weights representable as normal f64 (the rest underflow)
                "ranks": [[i, float(w)] for i, w in exact if w == 0 or float(w) > 1e-280],
            }
        )

# --- estimator ---------------------------------------------------------------------------------
small_proxy = [0.5, 1.25, 0.5, 2.0, 1.25, 1.25, -0.75]
small_gold = [0.3, -1.1, 2.7, 0.05, 4.4, -0.6, 1.9]
estimates = []
points = []
for n in range(1, 8):
    bp, bg = brute_force(small_proxy, small_gold, n)
    cp, cg = closed_form(small_proxy, small_gold, n)
    assert (bp, bg) == (cp, cg), (n, bp, bg, cp, cg)
    points.append({"n": n, "proxy": float(bp), "gold": float(bg)})
estimates.append({"name": "brute force, N = 7 with ties", "proxy": small_proxy, "gold": small_gold, "points": points})

for N in [200, 1000]:
    # proxy on a coarse grid so that many samples tie; gold noisy around it
    proxy = [round(rng.gauss(0.0, 1.0), 1) for _ in range(N)]
    gold = [p * 0.8 + rng.gauss(0.0, 0.5) - 0.1 * p * p for p in proxy]
    points = []
    for n in n_grid(N):
        cp, cg = closed_form(proxy, gold, n)
        points.append({"n": n, "proxy": float(cp), "gold": float(cg)})
    estimates.append({"name": f"closed form, N = {N} with ties", "proxy": proxy, "gold": gold, "points": points})

# --- KL_bon and the grid --------------------------------------------------------------------------
kl = [{"n": n, "kl": float(D(n).ln() - D(n - 1) / D(n))} for n in [1, 2, 3, 4, 16, 100, 1024, 10_000]]
grids = {str(m): n_grid(m) for m in [1, 2, 3, 8, 100, 1024, 10_000]}


# --- quantiles and lsc ---------------------------------------------------------------------------
def quantile(values, q):
    xs = sorted(Fraction(v) for v in values)
    h = (len(xs) - 1) * Fraction(q)
    lo = math.floor(h)
    if lo + 1 >= len(xs):
        return xs[-1]
    return xs[lo] + (h - lo) * (xs[lo + 1] - xs[lo])


def log_sigmoid(x):
    return -(D(1) + (-D(x)).exp()).ln()


quantiles = []
for m in [1, 2, 5, 16, 17]:
    values = [round(rng.uniform(-3.0, 3.0), rng.choice([1, 17])) for _ in range(m)]
    qs = [0.0, 0.1, 0.25, 0.5, 0.85, 0.9, 0.99, 1.0]
    quantiles.append({"values": values, "q": qs, "quantile": [float(quantile(values, q)) for q in qs]})

LSC_Q = 0.85
lsc = []
for scale, offsets in [(1.0, [0.0, 0.0, 0.0]), (2.5, [3.0, -1.0, 0.2]), (1.0, [800.0, -800.0, 40.0])]:
    K, M = 3, 16
    reference = [[rng.gauss(0.0, scale) for _ in range(M)] for _ in range(K)]
    raw = [rng.gauss(0.0, scale) + offsets[k] for k in range(K)]
    ref_q = [quantile(reference[k], LSC_Q) for k in range(K)]
    terms = [log_sigmoid(D(raw[k]) - D(ref_q[k].numerator) / D(ref_q[k].denominator)) for k in range(K)]
    lsc.append(
        {
            "q": LSC_Q,
            "raw": raw,
            "reference": reference,
            "reference_quantiles": [float(r) for r in ref_q],
            "lsc": float(sum(terms)),
        }
    )

try:
    import numpy as np

    for case in quantiles:
        for q, want in zip(case["q"], case["quantile"]):
            got = float(np.quantile(np.array(case["values"]), q))
            assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (q, got, want)
    print("numpy.quantile agrees")
except ImportError:
    print("numpy not importable: skipped the numpy.quantile cross-check")

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(
    json.dumps(
        {
            "weights": weights,
            "estimates": estimates,
            "kl_bon": kl,
            "n_grid": grids,
            "quantiles": quantiles,
            "lsc": lsc,
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {OUT}")
