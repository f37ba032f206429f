"""Size and CPU inference latency of the text students against the BERTs of text_kd.

    python benchmarks/text_students.py                    # sequence length 64, batch 1 and 64
    python benchmarks/text_students.py --seq_len 32 --repeats 50

Models (16 classes, as `stdlib_docstrings`): `textcnn` (Kim 2014; embedding 128, filter
widths 3/4/5 x 100), `bilstm` (Tang et al. 2019; 300-d embedding, 150 LSTM units per
direction, 200-unit ReLU layer), the 2-layer BERT student of `experiments/text_kd/common.py`
(width 192, 12 heads, MLP 768; `max_position` raised to the sequence length) and the
teacher, all-MiniLM-L6-v2 (6 layers, width 384). Weights are random (the cost does not
depend on them; nothing is read from the checkpoint). Inputs are random token ids without
padding. Latency: the jitted eval-mode forward pass (logits), median over `--repeats`
calls after compilation, divided by the batch size. Parameters include the 30,522-row
token embeddings, which dominate the students' counts but cost only a lookup.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.config import import_file
from distill_jax.models import count_params, create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 16


def model_configs(seq_len: int) -> dict[str, dict]:
    """Name -> model config of every benchmarked model."""
    common = import_file(os.path.join(ROOT, "experiments", "text_kd", "common.py"))
    student = {k: v for k, v in common.STUDENT.items() if k not in ("init_from", "init_layers")}
    teacher = {k: v for k, v in common.TEACHER.items() if k != "init_from"}
    return {
        "textcnn (E 128)": {"name": "textcnn", "embedding_dim": 128},
        "bilstm (E 300, H 150, FC 200)": {"name": "bilstm"},
        "bert student (2 x 192)": {**student, "max_position": max(seq_len, 32)},
        "teacher MiniLM-L6 (6 x 384)": teacher,
    }


def latency_ms(apply, variables, ids: jax.Array, repeats: int) -> float:
    """Median ms per example of `apply(variables, ids)` after compilation."""
    apply(variables, ids).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply(variables, ids).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3 / ids.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    header = ["model", "params", *[f"ms/example (batch {b})" for b in batches]]
    rows = []
    for label, cfg in model_configs(args.seq_len).items():
        model = create_model(cfg, NUM_CLASSES)
        dummy = jnp.zeros((1, args.seq_len), jnp.int32)
        variables = jax.jit(model.init)(jax.random.key(0), dummy)
        apply = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False)[0])
        row = [label, f"{count_params(variables['params']):,}"]
        for b in batches:
            ids = jnp.asarray(rng.integers(1000, 30522, (b, args.seq_len)), jnp.int32)
            row.append(f"{latency_ms(apply, variables, ids, args.repeats):.3f}")
        rows.append(row)
        print(" | ".join(row), flush=True)
    device = jax.devices()[0]
    print(
        f"\nsequence length {args.seq_len}; {device.platform} ({platform.processor() or '?'}, "
        f"{os.cpu_count()} cores); jax {jax.__version__}\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
