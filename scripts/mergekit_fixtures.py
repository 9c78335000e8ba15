#!/usr/bin/env python3
"""TIES parity fixtures made by mergekit itself (run by scripts/mergekit_fixtures.sh, which
installs mergekit into its own venv; never run by CI).

Makes a tiny f32 Llama-shaped base model and three fine-tunes (random normal deltas, so |tau|
has no ties and mergekit's unstable argsort is unambiguous), runs `mergekit-yaml` with
`merge_method: ties` for a few parameter sets, and writes under the directory given as argv[1]:
  inputs.safetensors   base/<tensor>, model<i>/<tensor>
  outputs.safetensors  <case id>/<tensor>   (mergekit's merged model)
  cases.json           per case: density, weight per model, normalize, lambda; mergekit version
The Rust test `merge::fixture_tests::ties_matches_mergekit` merges the same inputs with
`Method::Ties { scope: PerTensor, .. }` and compares to 1e-6.
"""

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version

import numpy as np
from safetensors.numpy import load_file, save_file

F32 = np.float32
HIDDEN, INTER, VOCAB = 8, 12, 16
SHAPES = {
    "model.embed_tokens.weight": (VOCAB, HIDDEN),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.k_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.v_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
    "model.layers.0.mlp.gate_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (INTER, HIDDEN),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, INTER),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (VOCAB, HIDDEN),
}
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
# (id, density per model, weight per model, normalize, lambda). Densities keep k >= 1 in every
# tensor (the smallest has 8 entries); mergekit would keep max(1, k), mirrorplay errors on k = 0.
CASES = [
    ("ties-default", [0.3, 0.5, 0.7], [1.0, 1.0, 1.0], True, 1.0),
    ("ties-weighted", [0.2, 0.6, 1.0], [0.5, 1.0, 1.5], True, 1.0),
    ("ties-unnormalized", [0.5, 0.5, 0.25], [1.0, 0.7, 1.2], False, 1.0),
    ("ties-lambda", [0.4, 0.3, 0.6], [1.0, 0.8, 0.6], True, 0.7),
]


def write_model(path, tensors):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def read_model(path):
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, name)))
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(5)
    base = {k: rng.standard_normal(s).astype(F32) for k, s in SHAPES.items()}
    models = [{k: (v + F32(0.02) * rng.standard_normal(v.shape).astype(F32)).astype(F32) for k, v in base.items()} for _ in range(3)]
    outputs, cases = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        write_model(os.path.join(tmp, "base"), base)
        for i, m in enumerate(models):
            write_model(os.path.join(tmp, f"model{i}"), m)
        for cid, density, weight, normalize, lam in CASES:
            cfg = {
                "merge_method": "ties",
                "base_model": os.path.join(tmp, "base"),
                "models": [
                    {"model": os.path.join(tmp, f"model{i}"), "parameters": {"density": density[i], "weight": weight[i]}}
                    for i in range(3)
                ],
                "parameters": {"normalize": normalize, "lambda": lam},
                "dtype": "float32",
            }
            cfg_path = os.path.join(tmp, f"{cid}.yml")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f)  # JSON is YAML
            out_path = os.path.join(tmp, f"out-{cid}")
            subprocess.run(["mergekit-yaml", cfg_path, out_path, "--quiet", "--no-copy-tokenizer", "--random-seed", "0"], check=True, env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]})
            merged = read_model(out_path)
            assert sorted(merged) == sorted(base), sorted(set(merged) ^ set(base))
            for k, v in merged.items():
                assert v.dtype == F32, (k, v.dtype)
                outputs[f"{cid}/{k}"] = v
            cases.append({"id": cid, "density": density, "weights": weight, "normalize": normalize, "lambda": lam})
    inputs = {f"base/{k}": v for k, v in base.items()}
    for i, m in enumerate(models):
        inputs.update({f"model{i}/{k}": v for k, v in m.items()})
    save_file(inputs, os.path.join(out_dir, "inputs.safetensors"), metadata={"format": "pt"})
    save_file(outputs, os.path.join(out_dir, "outputs.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"mergekit": version("mergekit"), "torch": version("torch"), "models": 3, "cases": cases}, f, indent=1)
        f.write("\n")
    for name in ("inputs.safetensors", "outputs.safetensors"):
        os.chmod(os.path.join(out_dir, name), 0o644)
    print(f"wrote {len(cases)} mergekit TIES cases to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
