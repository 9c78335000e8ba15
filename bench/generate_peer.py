#!/usr/bin/env python3
"""Generation throughput in transformers: the peer of worker/benches/sampling_interleaved.rs
(BENCHMARKS.md "Decoding kernels"), and the machine's memory-read bandwidth for the roofline.

`generate` mode (default): a random SmolLM2-135M-shaped LlamaForCausalLM (f32, CPU; the shape of
worker/benches/common/mod.rs `smollm2_135m_shape`) samples NEW_TOKENS tokens (forced length:
min_new_tokens = max_new_tokens, no EOS stop) after B prompts of 16 tokens (row r, position i ->
3 + (r*7 + i*5) mod 20, as the Rust workload), T = 1, no top-k/top-p, KV cache on; warm-up once,
then REPS timed reps; prints `transformers: batch B: X tokens/s`.

`bandwidth` mode (argument `bandwidth`): reads a 1 GiB f32 array with numpy on THREADS equal parts
in THREADS threads (numpy releases the GIL; set OPENBLAS_NUM_THREADS=1 so BLAS does not add
threads), with four reductions that each read every element once — `part @ part` (BLAS sdot),
`part.max()`, `part.sum()` and a bitwise OR over the same bytes viewed as u64 — best of 5 each,
and prints each one's GB/s, the fastest as the bandwidth, and the roofline: bytes of f32 weights
read per decode step / bandwidth. Beside them, where gcc builds it, bench/read_bandwidth.c reads
1 GiB on THREADS threads as 1, 2 and 4 interleaved streams per thread (several misses in
flight per core, as the decoding kernels keep with their weight panels; 256-bit loads). The
fastest of all is taken because a reader can be bound by its arithmetic or by one stream's
misses rather than by the memory: on a Sapphire Rapids VM sdot reached 12.5 GB/s where `max`
read 30, and on a Zen 5 VM the decoder streamed its weights faster than numpy's sdot, `max` and
`sum` read, while the C probe's 2 streams read 76–78 GB/s where `max` read 68–71
(BENCHMARKS.md); a roofline below what a decoder achieves is no ceiling.

Usage: ~/.cache/mirrorplay/peers-venv/bin/python bench/generate_peer.py [bandwidth]
Env: B (1), NEW_TOKENS (64), REPS (2), THREADS (2). Benchmarks only, never CI.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

THREADS = int(os.environ.get("THREADS", 2))
SHAPE = dict(vocab=49152, hidden=576, mlp=1536, layers=30, heads=9, kv_heads=3)


def weight_bytes_per_token():
    """f32 bytes of the weights one decode step reads: every linear layer and the tied head."""
    h, m, d = SHAPE["hidden"], SHAPE["mlp"], SHAPE["hidden"] // SHAPE["heads"]
    kv = SHAPE["kv_heads"] * d
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * m + 2 * h  # q, o; k, v; gate, up, down; norms
    return 4 * (SHAPE["layers"] * per_layer + SHAPE["vocab"] * h + h)


def c_probe_rates():
    """GB/s of bench/read_bandwidth.c at 1, 2 and 4 streams per thread, built with gcc in a
    temporary directory; empty (with a line on stderr) where it cannot be built or run."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "read_bandwidth.c")
    if shutil.which("gcc") is None:
        print("bandwidth: no gcc, so no C probe; numpy's reductions only", file=sys.stderr)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "read_bandwidth")
        try:
            build = ["gcc", "-O2", "-mavx2", "-pthread", "-o", exe, src]
            subprocess.run(build, check=True, capture_output=True, text=True)
            return {
                f"C {s} stream{'s' if s > 1 else ''}": float(
                    subprocess.run(
                        [exe, str(THREADS), str(s)], check=True, capture_output=True, text=True
                    ).stdout
                )
                for s in (1, 2, 4)
            }
        except (subprocess.CalledProcessError, ValueError) as e:
            detail = getattr(e, "stderr", None) or e
            print(f"bandwidth: the C probe did not run ({detail}); numpy's reductions only", file=sys.stderr)
            return {}


def bandwidth():
    import numpy as np

    a = np.ones(1 << 28, dtype=np.float32)  # 1 GiB
    parts = np.array_split(a, THREADS)
    reads = {
        "sdot": lambda p: p @ p,
        "max": lambda p: p.max(),
        "sum": lambda p: p.sum(),
        "or": lambda p: np.bitwise_or.reduce(p.view(np.uint64)),
    }
    rates = {}
    with ThreadPoolExecutor(THREADS) as pool:
        for name, read in reads.items():
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                list(pool.map(read, parts))
                best = min(best, time.perf_counter() - t)
            rates[name] = a.nbytes / best / 1e9
    del a, parts
    rates.update(c_probe_rates())
    gbs = max(rates.values())
    per_token = weight_bytes_per_token()
    each = ", ".join(f"{name} {r:.1f}" for name, r in rates.items())
    print(
        f"bandwidth: {gbs:.1f} GB/s ({THREADS} threads over 1 GiB, best of 5, fastest of "
        f"numpy {each})"
    )
    print(
        f"roofline: {per_token / 1e6:.0f} MB of f32 weights per decode step -> "
        f"batch 1 {gbs * 1e9 / per_token:.1f} tokens/s, batch 8 {8 * gbs * 1e9 / per_token:.0f} tokens/s"
    )


def generate():
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM
    from smollm2_shape import smollm2_config

    b = int(os.environ.get("B", 1))
    new = int(os.environ.get("NEW_TOKENS", 64))
    reps = int(os.environ.get("REPS", 2))
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = smollm2_config()  # the shape of SHAPE above
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    ids = torch.tensor(
        [[3 + (r * 7 + i * 5) % 20 for i in range(16)] for r in range(b)], dtype=torch.long
    )
    gen = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_new_tokens=new,
        max_new_tokens=new,
        use_cache=True,
        pad_token_id=0,
        eos_token_id=2,
    )

    def once():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
        assert tuple(out.shape) == (b, 16 + new), out.shape

    with torch.inference_mode():
        once()  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            once()
        dt = time.perf_counter() - t
    print(f"transformers: batch {b}: {b * new * reps / dt:.1f} tokens/s ({b} x {new} x {reps} in {dt:.2f} s, {THREADS} threads)")


if __name__ == "__main__":
    bandwidth() if sys.argv[1:] == ["bandwidth"] else generate()
