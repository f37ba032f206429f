"""Throughput of the distillation train step: examples/s, ms/step, memory and FLOP/s.

    python benchmarks/throughput.py                       # CPU: both pairs, small batches
    python benchmarks/throughput.py --pairs mlp --steps 20
    python benchmarks/throughput_gpu.py                   # one GPU: realistic batch sizes

For each teacher -> student pair it builds the library's real train step
(`train.steps.make_train_step`) and times it, after compilation and two warm-up steps, as
the median of `--steps` timed steps, in these settings:

* `student only`: the student trained alone (no teacher);
* `online KD`: the teacher forward runs in every step;
* `cached KD`: the teacher's logits come from a cache (`distill-jax cache-teacher`);
* `online KD bf16`: `dtype="bfloat16"` (parameters, optimizer and losses stay float32);
* `online KD, host input`: batches assembled by Grain on the host and copied to the
  device every step, instead of the device-resident split the other rows use;
* `vmap N`: N students in one vmapped step sharing each batch and teacher forward,
  against N sequential single-student steps (N x the `online KD` time); `map N`: the
  same N students updated one after another inside one step (`vmap.by = "map"`);
* `jit` vs `pmap` over all devices (8 fake CPU devices here; every device on a GPU box).

Columns: examples/s (student examples: N x batch for vmapped rows), ms/step, memory (XLA's
compiled-step estimate: arguments + outputs + temporaries - donated aliases; on a GPU also
the measured peak), achieved FLOP/s (XLA's cost analysis of the compiled step / step
time) beside the machine's matmul peak measured here, and the input pipeline's own
examples/s. Weights are random: the cost does not depend on them. The table is printed
and written as Markdown and JSON to `benchmarks/results/`.
"""

from __future__ import annotations

import os
import sys

if "--no_fake_devices" not in sys.argv:  # jit vs pmap on 8 fake CPU devices
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distill_jax import data as data_lib  # noqa: E402
from distill_jax.models import create_model  # noqa: E402
from distill_jax.objective import Objective  # noqa: E402
from distill_jax.parallel import make_strategy  # noqa: E402
from distill_jax.tasks import Classification  # noqa: E402
from distill_jax.teachers import CachedTeacher, OnlineTeacher, Teacher  # noqa: E402
from distill_jax.train.optim import make_optimizer, scale_by_lr_scale  # noqa: E402
from distill_jax.train.state import create_student_states, create_train_state  # noqa: E402
from distill_jax.train.steps import Students, frozen_inputs, make_train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAIRS = {
    # The main job's pair (Hinton et al.'s MNIST MLPs).
    "mlp": {
        "teacher": {"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5},
        "student": {"name": "mlp", "hidden": [800, 800]},
        "shape": (28, 28, 1),
        "classes": 10,
        "num_data": 3500,
    },
    # The CRD benchmark's resnet32x4 -> resnet8x4 at CIFAR-100 shape.
    "resnet32x4:resnet8x4": {
        "teacher": {"name": "resnet32x4"},
        "student": {"name": "resnet8x4"},
        "shape": (32, 32, 3),
        "classes": 100,
        "num_data": 10_000,
    },
}

TRAIN = {
    "epochs": 1,
    "batch_size": 64,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "step_epochs": [],
    "step_factor": 0.1,
    "grad_clip": 0.0,
}


def _cost(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _memory_mib(compiled) -> float:
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return total / 2**20


def _measured_peak_mib() -> float | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if not stats or "peak_bytes_in_use" not in stats:
        return None  # CPU: no allocator statistics
    return stats["peak_bytes_in_use"] / 2**20


def matmul_peak(dtype: str, n: int, reps: int = 5) -> float:
    """The machine's matmul FLOP/s: median time of an (n x n) @ (n x n) product."""
    x = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(x, x).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(x, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))


def _split(pair: dict[str, Any]) -> data_lib.ArraySplit:
    rng = np.random.default_rng(0)
    n = pair["num_data"]
    info = data_lib.DatasetInfo("synthetic", pair["classes"], pair["shape"], {"train": n})
    images = rng.integers(0, 256, (n, *pair["shape"]), dtype=np.uint8)
    return data_lib.ArraySplit(images, rng.integers(0, pair["classes"], n).astype(np.int32), info)


def time_case(
    pair: dict[str, Any],
    *,
    batch: int,
    steps: int,
    mode: str = "kd",
    dtype: str = "float32",
    students: int = 0,
    students_by: str = "vmap",
    strategy_name: str = "jit",
    devices: list | None = None,
    host_input: bool = False,
) -> dict[str, Any]:
    """Builds one configuration's train step and times it.

    Args:
        mode: `student` (alone), `kd` (online teacher) or `cached` (teacher cache).
        students: 0 for one student, N for N vmapped students.
        host_input: Grain host batches copied per step instead of the resident split.
    """
    devices = jax.devices()[:1] if devices is None else devices
    strategy = make_strategy(strategy_name, devices)
    split = _split(pair)
    classes, shape = pair["classes"], pair["shape"]
    axis = strategy.axis_name
    student = create_model(pair["student"], classes, dtype=dtype, axis_name=axis)
    teacher = create_model(pair["teacher"], classes, dtype=dtype)
    train = dict(TRAIN, batch_size=batch)
    transforms = [scale_by_lr_scale()] if students else []
    tx, schedule = make_optimizer(train, len(split) // batch, transforms)
    teacher_vars = None
    if mode == "kd":
        teacher_vars = jax.jit(lambda k: teacher.init(k, jnp.zeros((1, *shape))))(
            jax.random.PRNGKey(1)
        )
        if dtype == "bfloat16":
            teacher_vars = dict(teacher_vars)
            teacher_vars["params"] = jax.tree.map(
                lambda x: x.astype(jnp.bfloat16), teacher_vars["params"]
            )
    source = None
    if mode == "kd":
        source = OnlineTeacher(Teacher(teacher, teacher_vars, {}))
    if mode == "cached":
        values = np.random.default_rng(1).normal(size=(len(split), 1, classes))
        source = CachedTeacher(values.astype(np.float32), None, 0, 1, len(split) // batch)
    objective = Objective(
        {"alpha": 0.1, "temperature": 4.0, "losses": {}},
        task=Classification(translate=4, flip=True),
        distilling=source is not None,
    )
    step_fn = make_train_step(
        student,
        tx,
        objective,
        teacher=source,
        students=Students(students, students_by) if students else None,
        data_seed=0,
        axis_name=axis,
        schedule=schedule,
    )
    if students:
        hparams = {"alpha": 0.1, "temperature": 4.0, "learning_rate": train["learning_rate"]}
        members = [{"seed": i, **hparams} for i in range(students)]
        state = create_student_states(student, tx, shape, members, train["learning_rate"])
    else:
        state = create_train_state(student, tx, shape, 0)
    state = strategy.put_replicated(state)
    arrays = None if source is None else source.arrays()
    frozen = frozen_inputs(
        None if arrays is None else strategy.put_replicated(arrays),
        data=None
        if host_input
        else strategy.put_replicated({"image": split.images, "label": split.labels}),
    )
    ds = data_lib.train_dataset(split, batch, seed=0, indices_only=not host_input)
    batches = data_lib.iterate(ds, 0)

    def next_batch():
        return strategy.put_batch(next(batches))

    t0 = time.perf_counter()
    compiled = strategy.compile_step(step_fn).lower(state, frozen, next_batch()).compile()
    compile_s = time.perf_counter() - t0
    flops = _cost(compiled)
    memory = _memory_mib(compiled)
    for _ in range(2):
        state, metrics = compiled(state, frozen, next_batch())
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, next_batch())
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    # The input pipeline alone: batches produced and placed per second.
    t0 = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(next_batch())
    input_s = (time.perf_counter() - t0) / steps
    step_s = float(np.median(times))
    n_students = max(students, 1)
    flops *= strategy.num_devices  # the analysis is of one device's (partitioned) program
    return {
        "ms_per_step": 1e3 * step_s,
        "examples_per_s": n_students * batch / step_s,
        "input_examples_per_s": batch / input_s,
        "flops_per_step": flops,
        "flop_per_s": flops / step_s,
        "memory_mib": memory,
        "measured_peak_mib": _measured_peak_mib(),
        "compile_s": compile_s,
        "loss": float(np.mean(metrics["loss"])),
    }


def input_rates(batch: int = 128, batches: int = 20, workers: int = 2) -> list[dict[str, Any]]:
    """Examples/s of each input path on mnist_5k (real PNG-encoded images in array_record).

    `tfds decode` reads and decodes the whole split as `load_split` does; `stream` reads
    and decodes every batch from disk through Grain (in the main process, then with worker
    processes); `host` gathers batches from the split in memory; `device` is what the
    resident pipeline sends per step (indices only).
    """
    name, split = "mnist_5k", "train"
    data_lib.load_split(name, split)  # prepares the dataset once if needed (untimed)
    rows = []
    t0 = time.perf_counter()
    in_memory = data_lib.load_split(name, split)
    rows.append(("tfds decode (whole split)", len(in_memory) / (time.perf_counter() - t0)))
    streamed = data_lib.load_split(name, split, in_memory=False)
    for label, split_obj, indices_only, num_workers in (
        ("stream, 0 workers", streamed, False, 0),
        (f"stream, {workers} workers", streamed, False, workers),
        ("host (in memory)", in_memory, False, 0),
        ("device-resident (indices)", in_memory, True, 0),
    ):
        ds = data_lib.train_dataset(split_obj, batch, seed=0, indices_only=indices_only)
        it = data_lib.iterate(ds, 0, num_workers=num_workers)
        next(it)  # workers started, first batch ready
        t0 = time.perf_counter()
        for _ in range(batches):
            jax.block_until_ready(jax.device_put(next(it)))
        rows.append((label, batch * batches / (time.perf_counter() - t0)))
        if num_workers:
            it.close()
    return [{"input": label, "examples_per_s": rate} for label, rate in rows]


def cases(vmap_sizes: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """The table's rows: (label, time_case keyword arguments)."""
    rows = [
        ("student only", {"mode": "student"}),
        ("online KD", {"mode": "kd"}),
        ("cached KD", {"mode": "cached"}),
        ("online KD bf16", {"mode": "kd", "dtype": "bfloat16"}),
        ("online KD, host input", {"mode": "kd", "host_input": True}),
    ]
    rows += [(f"vmap {n} students", {"mode": "kd", "students": n}) for n in vmap_sizes]
    rows += [
        (f"map {n} students", {"mode": "kd", "students": n, "students_by": "map"})
        for n in vmap_sizes
        if n > 1
    ]
    if jax.device_count() > 1:
        for name in ("jit", "pmap"):
            rows.append(
                (
                    f"online KD, {name} on {jax.device_count()} devices",
                    {"mode": "kd", "strategy_name": name, "devices": jax.devices()},
                )
            )
    return rows


def run(pairs: list[str], batches: dict[str, int], steps: int, vmap_sizes: list[int], out: str):
    platform_name = jax.devices()[0].platform
    peak_dtypes = ("float32", "bfloat16")
    n = 4096 if platform_name == "gpu" else 1024
    peaks = {dt: matmul_peak(dt, n) for dt in peak_dtypes}
    device = f"{jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores)"
    print(
        f"{device}; matmul peak ({n}x{n}): "
        + ", ".join(f"{dt} {p / 1e9:.1f} GFLOP/s" for dt, p in peaks.items()),
        flush=True,
    )
    inputs = input_rates()
    for r in inputs:
        print(f"input: {r['input']:30s} {r['examples_per_s']:10.0f} examples/s", flush=True)
    results = []
    for pair_name in pairs:
        pair = PAIRS[pair_name]
        batch = batches[pair_name]
        time_case(pair, batch=batch, steps=2, mode="student")  # process warm-up, discarded
        for label, kwargs in cases(vmap_sizes):
            row = {"pair": pair_name, "batch": batch, "setting": label, **kwargs}
            row.pop("devices", None)
            row.update(time_case(pair, batch=batch, steps=steps, **kwargs))
            peak = peaks[kwargs.get("dtype", "float32")]
            row["percent_of_peak"] = 100 * row["flop_per_s"] / peak
            results.append(row)
            print(
                f"{pair_name:22s} {label:34s} {row['ms_per_step']:9.1f} ms "
                f"{row['examples_per_s']:9.0f} ex/s  (compile {row['compile_s']:.0f} s)",
                flush=True,
            )
    table = markdown(results, peaks, device, steps, n, inputs)
    print("\n" + table)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"throughput_{platform_name}")
    with open(stem + ".json", "w") as f:
        json.dump(
            {"device": device, "matmul_peak": peaks, "inputs": inputs, "rows": results},
            f,
            indent=2,
        )
    with open(stem + ".md", "w") as f:
        f.write(table)
    return results


def markdown(results, peaks, device, steps, n, inputs) -> str:
    lines = [
        f"Train-step throughput on {device}, median of {steps} steps after compilation. "
        f"Matmul peak measured here ({n}x{n}): "
        + ", ".join(f"{dt} {p / 1e9:.1f} GFLOP/s" for dt, p in peaks.items())
        + ".",
        "",
        "| pair | batch | setting | ms/step | examples/s | input examples/s | memory MiB "
        "| GFLOP/s | % of matmul peak | speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        speedup = ""
        online = next(
            x["ms_per_step"]
            for x in results
            if x["pair"] == r["pair"] and x["setting"] == "online KD"
        )
        if r.get("students"):
            speedup = f"{r['students'] * online / r['ms_per_step']:.2f}x vs sequential"
        elif r["setting"] == "cached KD":
            speedup = f"{online / r['ms_per_step']:.2f}x vs online"
        elif r["setting"] == "online KD bf16":
            speedup = f"{online / r['ms_per_step']:.2f}x vs f32"
        mem = f"{r['memory_mib']:.0f}"
        if r.get("measured_peak_mib"):
            mem += f" ({r['measured_peak_mib']:.0f} measured)"
        lines.append(
            f"| {r['pair']} | {r['batch']} | {r['setting']} | {r['ms_per_step']:.1f} "
            f"| {r['examples_per_s']:.0f} | {r['input_examples_per_s']:.0f} | {mem} "
            f"| {r['flop_per_s'] / 1e9:.1f} | {r['percent_of_peak']:.0f} | {speedup} |"
        )
    lines += [
        "",
        "Memory is XLA's estimate for the compiled step (arguments + outputs + temporaries "
        "- donated buffers; per device for the 8-device rows), which includes the "
        "device-resident training split; "
        '"measured" is the allocator\'s peak where the device reports one (GPU). '
        "Vmapped (and mapped) rows count N x batch student examples per step; their "
        "speed-up is N x the online-KD step time over their step time.",
        "",
        "Input pipeline alone (mnist_5k: PNG images in array_record, batches of 128):",
        "",
        "| input path | examples/s |",
        "|---|---:|",
        *(f"| {r['input']} | {r['examples_per_s']:.0f} |" for r in inputs),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> None:
    defaults = defaults or {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--batch_mlp", type=int, default=defaults.get("batch_mlp", 128))
    parser.add_argument("--batch_resnet", type=int, default=defaults.get("batch_resnet", 32))
    parser.add_argument("--steps", type=int, default=defaults.get("steps", 5))
    parser.add_argument("--vmap", default=defaults.get("vmap", "1,4,8"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--no_fake_devices", action="store_true", help="one CPU device")
    args = parser.parse_args(argv)
    pairs = args.pairs.split(",")
    batches = {"mlp": args.batch_mlp, "resnet32x4:resnet8x4": args.batch_resnet}
    run(pairs, batches, args.steps, [int(v) for v in args.vmap.split(",")], args.out)


if __name__ == "__main__":
    main()
