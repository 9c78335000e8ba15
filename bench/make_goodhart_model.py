#!/usr/bin/env python3
"""Writes a Llama-shaped f32 model over Goodhart-Digits' 20-token vocabulary (the tiny model's
config, tokenizer and ids, bigger dimensions) as a Hugging Face directory that a self-play job
loads with `policy = DIR` / `reference = DIR`. For bench/checkpoint_overhead.sh.

Usage: make_goodhart_model.py TINY_STEP_DIR OUT_DIR HIDDEN INTERMEDIATE LAYERS
  TINY_STEP_DIR: a checkpoint step directory of a `policy = "tiny"` job (config + tokenizer).
Pure Python (no numpy): uniform weights in [-a, a] with a = sqrt(3) * 0.02, norms at 1.
"""
import json
import os
import random
import shutil
import struct
import sys
from array import array


def main():
    src, out, hidden, inter, layers = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    os.makedirs(out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), os.path.join(out, f))
    cfg = json.load(open(os.path.join(src, "config.json")))
    heads = max(1, hidden // 64)
    cfg.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=max(1, heads // 2))
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    vocab, kv = cfg["vocab_size"], hidden // heads * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for l in range(layers):
        p = f"model.layers.{l}"
        shapes.update({
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.post_attention_layernorm.weight": (hidden,),
            f"{p}.self_attn.q_proj.weight": (hidden, hidden),
            f"{p}.self_attn.k_proj.weight": (kv, hidden),
            f"{p}.self_attn.v_proj.weight": (kv, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, hidden),
            f"{p}.mlp.gate_proj.weight": (inter, hidden),
            f"{p}.mlp.up_proj.weight": (inter, hidden),
            f"{p}.mlp.down_proj.weight": (hidden, inter),
        })
    rng = random.Random(0)
    a = 0.02 * 3 ** 0.5
    # A pool of random values reused with random offsets keeps pure Python fast enough.
    pool = array("f", (rng.uniform(-a, a) for _ in range(1 << 20)))
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(shapes):
        n = 1
        for d in shapes[name]:
            n *= d
        if name.endswith("norm.weight"):
            data = array("f", [1.0]) * n
        else:
            data = array("f")
            while len(data) < n:
                start = rng.randrange(len(pool) // 2)
                data.extend(pool[start:start + min(n - len(data), len(pool) - start)])
        b = data.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    print(f"{out}: {offset / 2**20:.1f} MiB of f32 weights, {offset // 4} parameters")


if __name__ == "__main__":
    main()
