#!/usr/bin/env python3
"""How learnable are Goodhart-Digits proxy preferences? An independent cross-check of the
reward-model study in RESULTS.md ("Reward-model over-optimisation").

It re-implements, in numpy and independently of the Rust code, the task's base sampler, gold
judge and proxy pairs (docs/algorithms.md §6; not the same random streams, the same
distribution) and reports:

1. ``features``: the clean-label accuracy of single hand-made features and of logistic
   regressions on feature differences: what a proxy that learnt only prompt-independent
   features (length, consecutive repeats, distinct symbols) could reach, and what knowing prompt
   membership adds;
2. ``train`` (needs torch + transformers, the peers venv): trains a tiny transformers
   ``LlamaForSequenceClassification`` (the architecture mirrorplay's members have) with the
   Bradley–Terry loss on noisy labels and prints held-out accuracy against noisy and clean labels
   every ``steps/6`` steps, to compare with mirrorplay's members trained the same way.

Usage (numpy for ``features``; torch + transformers for ``train``: the peers venv
~/.cache/mirrorplay/peers-venv has both, see docs/development.md):
    PY=~/.cache/mirrorplay/peers-venv/bin/python
    $PY scripts/proxy_learnability.py features
    $PY scripts/proxy_learnability.py train --noise 0.25 --steps 3000 --std 0.1
"""

import argparse
import time

import numpy as np

BOS, SEP, EOS, PAD = 16, 17, 18, 19


def prompt(rng):
    return [int(t) for t in rng.permutation(16)[:4]]


def base_sample(rng, targets):
    """docs/algorithms.md §6 "Base policy data"."""
    length = min(max(int(rng.poisson(5)), 1), 16)
    others = [s for s in range(16) if s not in targets]
    y = []
    for i in range(length):
        if i > 0 and rng.random() < 0.1:
            y.append(y[-1])
        elif rng.random() < 0.55:
            y.append(int(rng.choice(targets)))
        else:
            y.append(int(rng.choice(others)))
    return y


def gold(targets, y):
    """docs/algorithms.md §6 "Gold judge" (floating point; the Rust judge uses exact integers)."""
    cover = len(set(y) & set(targets)) / 4
    first = {}
    for i, s in enumerate(y):
        first.setdefault(s, i)
    order = sum(
        1
        for j in range(3)
        if targets[j] in first and targets[j + 1] in first and first[targets[j]] < first[targets[j + 1]]
    ) / 3
    len_pen = max(0, len(y) - 8) ** 2 / 16
    rep = sum(1 for i in range(1, len(y)) if y[i] == y[i - 1]) + sum(
        max(0, y.count(t) - 1) for t in targets
    )
    off = sum(1 for s in y if s not in targets) / len(y)
    return 2 * cover + order - 0.5 * len_pen - 0.3 * rep - off


def pairs(rng, n, noise):
    """Proxy pairs: two base samples, gold label (ties: a coin), replaced by a coin with
    probability 2·noise (docs/algorithms.md §6 "Proxy preference data")."""
    out = []
    for _ in range(n):
        t = prompt(rng)
        a, b = base_sample(rng, t), base_sample(rng, t)
        ga, gb = gold(t, a), gold(t, b)
        clean = bool(rng.random() < 0.5) if ga == gb else ga > gb
        label = bool(rng.random() < 0.5) if rng.random() < 2 * noise else clean
        out.append((t, a, b, label, clean))
    return out


def features(t, y):
    n, inside = len(y), sum(1 for s in y if s in t)
    return {
        "length": -n,
        "consecutive_repeats": -sum(1 for i in range(1, n) if y[i] == y[i - 1]),
        "distinct": len(set(y)),
        "length_penalty": -max(0, n - 8) ** 2,
        "targets_in_y": inside,
        "cover": len(set(y) & set(t)),
        "off_fraction": -(n - inside) / n,
    }


def accuracy(d, clean):
    return float(np.where(d > 0, clean, np.where(d < 0, ~clean, 0.5)).mean())


def logistic(x, clean, iters=3000, lr=0.5):
    y = np.where(clean, 1.0, -1.0)
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        z = x @ w * y
        w += lr * (x * (y / (1 + np.exp(z)))[:, None]).mean(0)
    return w


def run_features(args):
    rng = np.random.default_rng(args.seed)
    fit, test = pairs(rng, args.pairs, 0.0), pairs(rng, args.pairs, 0.0)

    def diffs(data, keys):
        return np.array(
            [[features(t, a)[k] - features(t, b)[k] for k in keys] for t, a, b, _, _ in data],
            float,
        )

    clean_fit = np.array([c for *_, c in fit])
    clean_test = np.array([c for *_, c in test])
    keys = list(features([0, 1, 2, 3], [0]).keys())
    print(f"{args.pairs} pairs to fit, {args.pairs} to test, clean labels")
    for k in keys:
        print(f"  {k:22s} {accuracy(diffs(test, [k])[:, 0], clean_test):.3f}")
    print(f"  {'gold (ties: coin)':22s} {accuracy(np.array([gold(t, a) - gold(t, b) for t, a, b, _, _ in test]), clean_test):.3f}")
    groups = {
        "prompt-independent (length, repeats, distinct, length penalty)": keys[:4],
        "  + targets_in_y": keys[:5],
        "all seven": keys,
    }
    for name, ks in groups.items():
        w = logistic(diffs(fit, ks), clean_fit)
        print(f"  logistic, {name}: {accuracy(diffs(test, ks) @ w, clean_test):.3f}")


def run_train(args):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    train, held_out = pairs(rng, args.train_pairs, args.noise), pairs(rng, 2000, args.noise)
    config = LlamaConfig(
        vocab_size=20, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * args.hidden,
        pad_token_id=PAD, num_labels=1, max_position_embeddings=64,
        initializer_range=args.std,
    )
    model = LlamaForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def batch(rows):
        seqs = [[BOS, *t, SEP, *y, EOS] for t, y in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), PAD)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return model(input_ids=ids, attention_mask=(ids != PAD).long()).logits.squeeze(-1)

    def evaluate():
        with torch.no_grad():
            ra = batch([(t, a) for t, a, *_ in held_out])
            rb = batch([(t, b) for t, _, b, *_ in held_out])
        a_wins = (ra > rb).numpy()
        label = np.array([l for *_, l, _ in held_out])
        clean = np.array([c for *_, c in held_out])
        return (a_wins == label).mean(), (a_wins == clean).mean()

    start = time.time()
    print("step loss held_out_accuracy(labels) held_out_accuracy(clean) seconds")
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(train), args.batch)
        rows = [train[i] for i in idx]
        ra = batch([(t, a) for t, a, *_ in rows])
        rb = batch([(t, b) for t, _, b, *_ in rows])
        sign = torch.tensor([1.0 if l else -1.0 for *_, l, _ in rows])
        loss = -torch.nn.functional.logsigmoid((ra - rb) * sign).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 6) == 0:
            acc, clean = evaluate()
            print(f"{step} {loss.item():.3f} {acc:.3f} {clean:.3f} {time.time() - start:.0f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("--pairs", type=int, default=20000)
    f.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--noise", type=float, default=0.25)
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--train-pairs", type=int, default=65536)
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--std", type=float, default=0.02, help="initializer_range")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run_features(args) if args.cmd == "features" else run_train(args)


if __name__ == "__main__":
    main()
