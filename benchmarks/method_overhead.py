"""Training-step cost of each distillation method relative to plain KD (mdistiller-style).

    python benchmarks/method_overhead.py                      # resnet32x4 -> resnet8x4
    python benchmarks/method_overhead.py --pair resnet56:resnet20 --batch 64 --steps 20

For each method of `experiments/cifar100/config.py` it builds the real train step (the
teacher forward, the student forward/backward, the method's loss and its trainable parts),
jit-compiles it, and times `--steps` steps after two warm-up steps at CIFAR shape
(32x32x3, 100 classes; randomly initialised weights: cost does not depend on them). It
prints ms/step (median), the ratio to KD, and the extra trainable parameters each method
adds (regressors, embeddings, ...), and writes the table as JSON beside its Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.config import from_dict, import_file
from distill_jax.models import count_params, create_model
from distill_jax.sweep import _pair_config
from distill_jax.tasks import Classification
from distill_jax.teachers import NoTeacher, OnlineTeacher, Teacher
from distill_jax.train.optim import make_optimizer
from distill_jax.train.setup import build_objective
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE, NUM_CLASSES, NUM_DATA = (32, 32, 3), 100, 50_000


def _benchmark_config():
    return import_file(os.path.join(ROOT, "experiments", "cifar100", "config.py"))


def time_method(base, pair, label, spec, batch_size, steps):
    config = _pair_config(base, pair, spec, seed=0)
    cfg = config.to_dict()
    cfg["student"]["train"]["batch_size"] = batch_size
    config = from_dict(cfg)
    student = create_model(config.student.model, NUM_CLASSES)
    teacher_model = create_model(config.teacher.model, NUM_CLASSES)
    teacher_vars = jax.jit(lambda k: teacher_model.init(k, jnp.zeros((1, *IMAGE_SHAPE))))(
        jax.random.PRNGKey(1)
    )
    with_teacher = spec.get("teacher", True)
    source = OnlineTeacher(Teacher(teacher_model, teacher_vars, {})) if with_teacher else None
    tx, _ = make_optimizer(config.student.train, NUM_DATA // batch_size)
    task = Classification(translate=4, flip=True)
    objective, init_methods = build_objective(
        config, "student", task, student, source or NoTeacher(), IMAGE_SHAPE, NUM_DATA
    )
    state = create_train_state(student, tx, IMAGE_SHAPE, 0, init_methods)
    step = jax.jit(make_train_step(student, tx, objective, teacher=source), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        "index": rng.permutation(NUM_DATA)[:batch_size].astype(np.int32),
    }
    frozen = frozen_inputs(teacher_vars if with_teacher else None)
    t0 = time.perf_counter()
    for _ in range(2):  # compile + one warm step
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    extra = count_params(state.methods)
    return {
        "method": label,
        "ms_per_step": 1e3 * float(np.median(times)),
        "extra_params": extra,
        "compile_s": compile_s,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", default="resnet32x4:resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default="", help="comma-separated subset")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    bench = _benchmark_config()
    base = from_dict(bench.get_config().to_dict())
    labels = args.methods.split(",") if args.methods else list(bench.METHODS)
    # One throwaway measurement first: the first timed method otherwise absorbs the process's
    # warm-up (thread pools, allocator) and looked 30% slower than when timed later.
    time_method(base, args.pair, labels[0], bench.METHODS[labels[0]], args.batch, 2)
    rows = []
    for label in labels:
        row = time_method(base, args.pair, label, bench.METHODS[label], args.batch, args.steps)
        rows.append(row)
        print(
            f"{label:10s} {row['ms_per_step']:9.1f} ms/step  extra params "
            f"{row['extra_params']:>9,d}  (compile {row['compile_s']:.0f} s)",
            flush=True,
        )
    kd_ms = next((r["ms_per_step"] for r in rows if r["method"] == "kd"), None)
    device = f"{jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores)"
    lines = [
        f"Method overhead, {args.pair}, batch {args.batch}, {device}, median of "
        f"{args.steps} steps:",
        "",
        "| method | ms/step | x KD | extra trainable params |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ms_per_step'] / kd_ms:.2f}" if kd_ms else "–"
        lines.append(
            f"| {r['method']} | {r['ms_per_step']:.1f} | {ratio} | {r['extra_params']:,} |"
        )
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"method_overhead_{args.pair.replace(':', '_to_')}")
    with open(stem + ".json", "w") as f:
        json.dump(
            {"pair": args.pair, "batch": args.batch, "device": device, "rows": rows}, f, indent=2
        )
    with open(stem + ".md", "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
