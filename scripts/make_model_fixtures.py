#!/usr/bin/env python3
"""Reference numerics for mirrorplay's Llama-family decoder, computed by Hugging Face transformers.

What it writes
    worker/tests/fixtures/models/<variant>/{config.json, model.safetensors, expected.json}
    for the variants below: tiny random models (a few thousand parameters) and, in expected.json,
    input ids, an attention mask (row 1 is left-padded), the position ids used (real tokens
    counted from 0, as mirrorplay does) and the logits transformers computes (eager attention, f32).
    The Rust test `worker/tests/model_numerics.rs` loads each directory and compares logits at
    the valid positions to 1e-4.

    variant            what it covers
    llama_mha_untied   llama, 4 heads = 4 KV heads, separate lm_head
    llama_gqa_tied     llama, 4 heads / 2 KV heads, lm_head tied to the embedding
    llama3_rope        llama with rope_scaling type llama3 (all three frequency bands used)
    qwen2_bias         qwen2: q/k/v biases, GQA, untied
    llama_seqcls       LlamaForSequenceClassification, one output (reward-model head)

How to run (CI never runs this; it needs torch + transformers)
    python scripts/make_model_fixtures.py
    (with any python that has numpy, safetensors, torch, transformers, e.g. a venv's
    bin/python; made with transformers 5.24, torch 2.15)

Round trip (checks that transformers loads directories *saved by mirrorplay*)
    MIRRORPLAY_SAVED_MODELS=/tmp/saved cargo test -p mirrorplay-worker --test model_numerics
    python scripts/make_model_fixtures.py --check-saved /tmp/saved
    The Rust test saves every fixture it loaded under $MIRRORPLAY_SAVED_MODELS/<variant>/; this
    script then loads each with `from_pretrained` and compares its logits with expected.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent / "worker" / "tests" / "fixtures" / "models"
VOCAB = 24
INPUT_IDS = [[1, 5, 9, 13, 17, 21, 3, 8], [0, 0, 0, 1, 7, 11, 19, 2]]
MASK = [[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]


def base(**kw):
    cfg = dict(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg.update(kw)
    return cfg


VARIANTS = {
    "llama_mha_untied": ("llama", "LlamaForCausalLM", base()),
    "llama_gqa_tied": ("llama", "LlamaForCausalLM", base(num_key_value_heads=2, tie_word_embeddings=True)),
    # head_dim 8, theta 100: wavelengths 6.3 (kept), 19.9 (interpolated), 62.8 and 199 (÷ factor)
    "llama3_rope": ("llama", "LlamaForCausalLM", base(
        num_attention_heads=2, num_key_value_heads=1, rope_theta=100.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen2_bias": ("qwen2", "Qwen2ForCausalLM", base(num_key_value_heads=2, rope_theta=1000000.0)),
    "llama_seqcls": ("llama", "LlamaForSequenceClassification", base(num_key_value_heads=2, num_labels=1)),
}


def make_config(model_type, cfg):
    cls = transformers.AutoConfig.for_model(model_type).__class__
    return cls(**cfg)


def randomise(model, seed):
    """Weights with enough spread that logits are far from uniform (std 0.3; norms 1 ± 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.3 * noise)


def positions(mask):
    out = []
    for row in mask:
        p, r = 0, []
        for m in row:
            r.append(p if m else 0)
            p += m
        out.append(r)
    return out


def run(model, is_cls):
    ids = torch.tensor(INPUT_IDS)
    mask = torch.tensor(MASK)
    pos = torch.tensor(positions(MASK))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos)
    return out.logits.float()


def make():
    for i, (name, (model_type, arch, cfg)) in enumerate(VARIANTS.items()):
        out = ROOT / name
        out.mkdir(parents=True, exist_ok=True)
        config = make_config(model_type, cfg)
        config.architectures = [arch]
        torch.manual_seed(1000 + i)
        model = getattr(transformers, arch)._from_config(config, attn_implementation="eager").float().eval()
        randomise(model, 2000 + i)
        model.save_pretrained(out, safe_serialization=True)
        logits = run(model, arch.endswith("Classification"))
        expected = {
            "architecture": arch,
            "input_ids": INPUT_IDS,
            "attention_mask": MASK,
            "position_ids": positions(MASK),
            "logits": [[[round(float(x), 7) for x in pos] for pos in row] for row in logits.tolist()]
            if logits.dim() == 3 else [[round(float(x), 7) for x in row] for row in logits.tolist()],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
        (out / "expected.json").write_text(json.dumps(expected) + "\n")
        for extra in out.iterdir():
            if extra.name not in ("config.json", "model.safetensors", "expected.json"):
                extra.unlink()
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, logits {tuple(logits.shape)}")


def check_saved(saved):
    ok = True
    for name in VARIANTS:
        d = Path(saved) / name
        if not d.exists():
            print(f"{name}: not saved under {saved}")
            ok = False
            continue
        expected = json.loads((ROOT / name / "expected.json").read_text())
        cls = getattr(transformers, expected["architecture"])
        model = cls.from_pretrained(d, attn_implementation="eager").float().eval()
        got = run(model, expected["architecture"].endswith("Classification"))
        want = torch.tensor(expected["logits"])
        valid = torch.tensor(MASK).bool()
        diff = (got - want).abs()
        if diff.dim() == 3:
            diff = diff[valid]
        print(f"{name}: transformers loaded {d}; max |logit diff| = {diff.max().item():.2e}")
        ok &= diff.max().item() < 1e-4
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-saved", metavar="DIR", help="load mirrorplay-saved models under DIR and compare")
    args = ap.parse_args()
    if args.check_saved:
        check_saved(args.check_saved)
    else:
        make()
