#!/usr/bin/env python3
"""Writes a Llama-shaped f32 base model and N fine-tunes (base + small normal deltas) of about
SIZE bytes each, as Hugging Face directories (config.json + model.safetensors) that mergekit,
the PyTorch PCB script and mirrorplay all read. For the peer benchmarks in bench/merge_peers.sh.

Usage: make_llama_models.py DIR SIZE_MIB [N=3]     (needs numpy + safetensors)
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

HIDDEN, INTER, VOCAB = 1024, 2752, 8192


def shapes(layers):
    out = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for l in range(layers):
        p = f"model.layers.{l}"
        out.update({
            f"{p}.input_layernorm.weight": (HIDDEN,),
            f"{p}.post_attention_layernorm.weight": (HIDDEN,),
            f"{p}.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.self_attn.k_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.self_attn.v_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            f"{p}.mlp.gate_proj.weight": (INTER, HIDDEN),
            f"{p}.mlp.up_proj.weight": (INTER, HIDDEN),
            f"{p}.mlp.down_proj.weight": (HIDDEN, INTER),
        })
    return out


def main():
    out_dir, size_mib = sys.argv[1], float(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN
    fixed = 2 * VOCAB * HIDDEN + HIDDEN
    layers = max(1, round((size_mib * 2**20 / 4 - fixed) / per_layer))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": VOCAB, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    rng = np.random.default_rng(0)
    base = {k: (0.02 * rng.standard_normal(s, dtype=np.float32)) for k, s in shapes(layers).items()}
    for name in ["base"] + [f"m{i + 1}" for i in range(n)]:
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
        tensors = base if name == "base" else {
            k: v + np.float32(0.002) * rng.standard_normal(v.shape, dtype=np.float32) for k, v in base.items()}
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    params = sum(int(np.prod(s)) for s in shapes(layers).values())
    print(f"{n + 1} models of {params} f32 parameters ({params * 4 / 2**20:.0f} MiB, {layers} layers) in {out_dir}")


if __name__ == "__main__":
    main()
