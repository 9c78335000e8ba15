#!/usr/bin/env python3
"""Checks with Hugging Face transformers a model directory written by mirrorplay.

Usage
    python scripts/check_hf_export.py DIR [--reference REF] [--dtype bfloat16]
                                          [--tokens 1,5,9,13] [--atol 1e-4]

    DIR is a directory mirrorplay wrote (`mirrorplay export --model/--checkpoint`, a training
    job's OUTPUT/model/): config.json and `model.safetensors` or sharded
    `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`.
    Needs torch and transformers (e.g. ~/.cache/mirrorplay/peers-venv/bin/python).

What it checks (exit 1 and a line saying what failed otherwise)
    - the index, when there is one, maps every tensor of the shard files exactly once, and its
      metadata.total_size is their byte count;
    - every tensor of every file has the dtype config.json names (`dtype` or `torch_dtype`),
      and so does --dtype when given;
    - AutoModelForCausalLM.from_pretrained(DIR, dtype="auto") loads it with no missing or
      unexpected weights, its parameters in that dtype;
    - with --reference REF (e.g. the f32 model DIR was exported from): REF's weights rounded to
      DIR's dtype by torch equal DIR's exactly, and the logits both give (computed in float32)
      on a fixed token sequence agree within --atol. The gap to REF's unrounded logits is
      printed for information.

Example (a bf16 sharded export of an f32 model)
    mirrorplay export --model examples/base --out /tmp/base-bf16 --dtype bf16 --max-shard-size 20KB
    ~/.cache/mirrorplay/peers-venv/bin/python scripts/check_hf_export.py /tmp/base-bf16 \\
        --reference examples/base --dtype bfloat16
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import torch
import transformers

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def header(path):
    """A safetensors file's header (tensor name -> entry), read directly."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def config_dtype(d):
    config = json.loads((d / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype")
    if name is None:
        fail(f"{d / 'config.json'}: no dtype or torch_dtype")
    return name


def check_files(d, dtype):
    """The shard files, the index and every tensor's dtype; returns the tensor count."""
    index_path = d / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        files = sorted(set(weight_map.values()))
        seen, total = {}, 0
        for f in files:
            for name, e in header(d / f).items():
                if name in seen:
                    fail(f"tensor {name} is in {seen[name]} and {f}")
                seen[name] = f
                if weight_map.get(name) != f:
                    fail(f"{index_path}: weight_map[{name}] = {weight_map.get(name)}, file {f}")
                total += e["data_offsets"][1] - e["data_offsets"][0]
        if set(seen) != set(weight_map):
            fail(f"{index_path}: weight_map names {len(weight_map)} tensors, files hold {len(seen)}")
        if index["metadata"]["total_size"] != total:
            fail(f"{index_path}: total_size {index['metadata']['total_size']}, tensors {total}")
    else:
        files = ["model.safetensors"]
    count = 0
    for f in files:
        for name, e in header(d / f).items():
            got = SAFETENSORS_DTYPES.get(e["dtype"], e["dtype"])
            if got != dtype:
                fail(f"{d / f}: tensor {name} is {e['dtype']}, config.json says {dtype}")
            count += 1
    print(f"{d}: {len(files)} weight file(s), {count} tensors, all {dtype}")
    return count


def load(d):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype="auto", attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        fail(f"{d}: from_pretrained reported {bad}")
    return model.eval()


def logits(model, tokens):
    with torch.no_grad():
        return model.float()(torch.tensor([tokens])).logits[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--dtype", help="the dtype DIR must be in (float32, bfloat16, float16)")
    ap.add_argument("--tokens", default="1,5,9,13,17,21,3,8,2,7", help="token ids, comma-separated")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    dtype = config_dtype(args.dir)
    if args.dtype and args.dtype != dtype:
        fail(f"{args.dir}/config.json says {dtype}, expected {args.dtype}")
    check_files(args.dir, dtype)
    model = load(args.dir)
    torch_dtype = getattr(torch, dtype)
    wrong = {p.dtype for p in model.parameters()} - {torch_dtype}
    if wrong:
        fail(f"{args.dir}: parameters loaded as {wrong}, expected {torch_dtype}")
    print(f"{args.dir}: {type(model).__name__} loaded, parameters {torch_dtype}")
    if args.reference is None:
        return

    vocab = model.config.vocab_size
    tokens = [int(t) % vocab for t in args.tokens.split(",")]
    reference = load(args.reference)
    ours = dict(model.named_parameters())
    mismatched = [
        name
        for name, p in reference.named_parameters()
        if not torch.equal(p.detach().to(torch_dtype), ours[name].detach())
    ]
    if mismatched:
        fail(f"{len(mismatched)} tensors differ from the reference rounded to {dtype}: {mismatched[:5]}")
    print(f"weights: all {len(ours)} equal the reference's rounded to {dtype} by torch")
    unrounded = logits(reference, tokens)
    with torch.no_grad():  # parameters only: buffers (rotary frequencies) stay as computed
        for p in reference.parameters():
            p.copy_(p.to(torch_dtype).float())
    want = logits(reference, tokens)
    got = logits(model, tokens)
    gap = (got - want).abs().max().item()
    print(
        f"logits on {tokens}: max |DIR - REF rounded to {dtype}| = {gap:.3e} (atol {args.atol}); "
        f"max |DIR - REF| = {(got - unrounded).abs().max().item():.3e}"
    )
    if not gap <= args.atol:
        fail(f"logits differ by {gap} > {args.atol}")
    print("OK")


if __name__ == "__main__":
    main()
