#!/usr/bin/env python3
"""Reward-model scoring throughput in transformers: the peer of worker/benches/reward_scoring.rs
(BENCHMARKS.md "Reward-model scoring throughput"). A random SmolLM2-135M-shaped
LlamaForSequenceClassification (one label, f32, CPU; the shape of
worker/benches/common/mod.rs `smollm2_135m_shape`) scores B sequences of L tokens, warm-up once,
then REPS timed reps; prints sequences/s. Benchmarks only, never CI.

Usage: ~/.cache/mirrorplay/peers-venv/bin/python bench/reward_scoring_peer.py
Env: B (16), L (128), REPS (3), THREADS (2); BREAKDOWN=1 also times the linear layers alone
(every *_proj weight on [B*L, in] rows), as the Rust bench's BREAKDOWN. Token ids: row r, position i ->
3 + (r*131 + i*7) mod 49000, attention_mask all ones (as the Rust bench: no padding).
"""
import os
import time

import torch
import transformers
from transformers import LlamaForSequenceClassification

from smollm2_shape import smollm2_config

B = int(os.environ.get("B", 16))
L = int(os.environ.get("L", 128))
REPS = int(os.environ.get("REPS", 3))
THREADS = int(os.environ.get("THREADS", 2))

torch.set_num_threads(THREADS)
torch.manual_seed(0)
config = smollm2_config(num_labels=1)
model = LlamaForSequenceClassification(config).to(torch.float32).eval()
ids = torch.tensor(
    [[3 + (r * 131 + i * 7) % 49000 for i in range(L)] for r in range(B)], dtype=torch.long
)
mask = torch.ones_like(ids)


def score():
    out = model(input_ids=ids, attention_mask=mask).logits
    assert tuple(out.shape) == (B, 1)


with torch.inference_mode():
    score()  # warm-up
    t = time.perf_counter()
    for _ in range(REPS):
        score()
    per = (time.perf_counter() - t) / REPS
attn = getattr(model.config, "_attn_implementation", "?")
print(
    f"transformers single: B={B} L={L} reps={REPS} threads={torch.get_num_threads()} "
    f"(torch {torch.__version__}, transformers {transformers.__version__}, attn {attn}): "
    f"{per:.3f} s/batch, {B / per:.2f} sequences/s"
)

if os.environ.get("BREAKDOWN") == "1":
    weights = [w for n, w in model.named_parameters() if n.endswith("_proj.weight")]
    inputs = [torch.randn(B * L, w.shape[1]) for w in weights]
    with torch.inference_mode():
        for _ in range(2):  # warm-up, then timed
            t = time.perf_counter()
            for x, w in zip(inputs, weights):
                torch.nn.functional.linear(x, w)
            linear = time.perf_counter() - t
    print(
        f"transformers breakdown: {len(weights)} projections at {B * L} rows: {linear:.3f} s "
        f"({100 * linear / per:.0f} % of the {per:.3f} s forward)"
    )
