#!/usr/bin/env python3
"""A Nash-MD-PG self-play step in TRL 1.12.0's NashMDTrainer: the peer of
worker/benches/selfplay_step.rs (BENCHMARKS.md "Self-play step vs TRL NashMDTrainer").
Benchmarks only, never CI.

The workload: a random SmolLM2-135M-shaped LlamaForCausalLM (f32, CPU; saved to a temporary
directory and loaded back, as TRL wants a directory-loaded model), its copy as the reference
(TRL's create_reference_model), a random SmolLM2-135M-shaped one-label
LlamaForSequenceClassification as the reward model; B prompts of 16 tokens (a word-level
tokenizer over the whole vocabulary, no BOS: "w4" -> 4, ...; <pad> 0, </s> 2 = EOS); y ~ pi and
y' ~ the geometric mixture (mixture_coef 0.5), NEW new tokens each, forced: min_new_tokens =
max_new_tokens = NEW (EOS suppressed until the limit) and the pad id suppressed; beta 0.1,
AdamW (lr 5e-7 constant, betas 0.9/0.999, eps 1e-8, no weight decay), clip 1.0, no gradient
checkpointing, f32. One warm-up step, then STEPS timed steps (TrainerCallback on_step_begin ->
on_step_end), with a breakdown from timers wrapped around the trainer's own methods:
sampling (_generate_completions), judge (_compute_rewards), forward+backward
(_compute_logprobs + _compute_losses + accelerator.backward), optimizer (clip + AdamW, from the
end of backward to on_optimizer_step).

Usage: PYTHONPATH=~/.cache/mirrorplay/trl-1.12.0 ~/.cache/mirrorplay/peers-venv/bin/python \
           bench/selfplay_step_peer.py
Env: B (4), NEW (64), STEPS (3), THREADS (2). Prompt row r, position i -> token id
4 + (r*131 + i*7) mod 49000 (as the Rust bench).
"""
import os
import tempfile
import time
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl.experimental.nash_md import NashMDConfig, NashMDTrainer  # noqa: E402

from smollm2_shape import smollm2_config  # noqa: E402

B = int(os.environ.get("B", 4))
NEW = int(os.environ.get("NEW", 64))
STEPS = int(os.environ.get("STEPS", 3))
THREADS = int(os.environ.get("THREADS", 2))
PAD, EOS = 0, 2

torch.set_num_threads(THREADS)
torch.manual_seed(0)


def shape(**extra):
    return smollm2_config(bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD, **extra)


vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
vocab.update({f"w{i}": i for i in range(4, 49152)})
tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
)
assert tokenizer.bos_token_id is None

prompts = [
    " ".join(f"w{4 + (r * 131 + i * 7) % 49000}" for i in range(16)) for r in range(B)
]
assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) == 16 for p in prompts)


class Prompts(torch.utils.data.Dataset):
    """The prompts, as a plain torch dataset (datasets' Dataset.from_dict fingerprints its
    table with dill, which fails with the pyarrow installed beside it)."""

    rows = prompts * (1 + STEPS)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"prompt": self.rows[i]}


dataset = Prompts()

tmp = tempfile.mkdtemp(prefix="selfplay-step-peer-")
LlamaForCausalLM(shape()).to(torch.float32).save_pretrained(f"{tmp}/policy")
model = AutoModelForCausalLM.from_pretrained(f"{tmp}/policy", dtype=torch.float32)
reward = LlamaForSequenceClassification(shape(num_labels=1)).to(torch.float32)

args = NashMDConfig(
    output_dir=f"{tmp}/out",
    per_device_train_batch_size=B,
    gradient_accumulation_steps=1,
    max_steps=1 + STEPS,
    learning_rate=5e-7,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    optim="adamw_torch",
    bf16=False,
    fp16=False,
    use_cpu=True,
    gradient_checkpointing=False,
    report_to="none",
    save_strategy="no",
    logging_steps=10**6,
    disable_tqdm=True,
    dataloader_num_workers=0,
    seed=0,
    max_new_tokens=NEW,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    beta=[0.1],
    mixture_coef=0.5,
    # Forced length: EOS is suppressed until NEW tokens (so never drawn), the pad id always.
    generation_kwargs={"min_new_tokens": NEW, "suppress_tokens": [PAD]},
)


class Timer:
    def __init__(self):
        self.steps = []  # one dict per step
        self.cur = None

    def add(self, key, seconds):
        self.cur[key] = self.cur.get(key, 0.0) + seconds


timer = Timer()


class StepTimes(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        timer.cur = {"t0": time.perf_counter()}

    def on_optimizer_step(self, args, state, control, **kw):
        timer.add("optimizer", time.perf_counter() - timer.cur.pop("backward_end"))

    def on_step_end(self, args, state, control, **kw):
        timer.cur["step"] = time.perf_counter() - timer.cur.pop("t0")
        timer.steps.append(timer.cur)


trainer = NashMDTrainer(
    model=model,
    ref_model=None,
    reward_funcs=reward,
    args=args,
    train_dataset=dataset,
    processing_class=tokenizer,
    callbacks=[StepTimes()],
)


def timed(key, f, end=None):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        out = f(*a, **kw)
        now = time.perf_counter()
        timer.add(key, now - t)
        if end:
            timer.cur[end] = now
        return out

    return wrapper


lengths = []
generate = trainer._generate_completions


def generate_and_check(model, prompts):
    y, y_prime = generate(model, prompts)
    lengths.extend([y.shape[1] - prompts["input_ids"].shape[1], y_prime.shape[1] - prompts["input_ids"].shape[1]])
    for out in (y, y_prime):
        completion = out[:, prompts["input_ids"].shape[1]:]
        assert not (completion == EOS).any() and not (completion == PAD).any(), "EOS or pad drawn"
    return y, y_prime


trainer._generate_completions = timed("sample", generate_and_check)
trainer._compute_rewards = timed("judge", trainer._compute_rewards)
trainer._compute_logprobs = timed("train", trainer._compute_logprobs)
trainer._compute_losses = timed("train", trainer._compute_losses)
trainer.accelerator.backward = timed("train", trainer.accelerator.backward, end="backward_end")

trainer.train()
assert len(timer.steps) == 1 + STEPS, timer.steps
assert set(lengths) == {NEW}, lengths
attn = getattr(model.config, "_attn_implementation", "?")
for i, s in enumerate(timer.steps):
    what = "warm-up" if i == 0 else "timed"
    print(
        f"trl step {i + 1} ({what}): {s['step']:.3f} s (sample {s['sample']:.3f}, judge {s['judge']:.3f}, "
        f"forward+backward {s['train']:.3f}, optimizer {s['optimizer']:.3f})"
    )
timed_steps = timer.steps[1:]


def mean(k):
    return sum(s[k] for s in timed_steps) / len(timed_steps)


print(
    f"trl nash-md step: B={B} prompt=16 new={NEW} steps={STEPS} threads={torch.get_num_threads()} "
    f"(trl {trl.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, attn {attn}): "
    f"{mean('step'):.3f} s/step (sample {mean('sample'):.3f}, judge {mean('judge'):.3f}, "
    f"forward+backward {mean('train'):.3f}, optimizer {mean('optimizer'):.3f})"
)
