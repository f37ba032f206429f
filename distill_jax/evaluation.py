"""Evaluation: exact metrics over a whole split, model size, FLOPs and latency.

Evaluation is exact: the last batch is padded and masked, so every example counts once.
Metrics: top-1 accuracy, negative log-likelihood, expected calibration error (ECE, equal-
width confidence bins, Guo et al. 2017), and against a teacher: top-1 agreement and
KL(teacher || student) at T=1. Token classification (`tasks.Tagging`) reports them per
tagged token, plus entity-level precision / recall / F1 from the tag sequences the task
collects per example (`Task.row_keys`). A causal language model (`tasks.CausalLM`)
reports them per target token, with perplexity = exp(mean NLL over the split's tokens);
its teacher runs beside it batch by batch, so no split's `(N, T, V)` teacher logits are
ever held (`Task.cache_teacher_logits`), and its batches are capped in tokens
(`Task.eval_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distill_jax import data as data_lib
from distill_jax.models import count_params
from distill_jax.parallel import AXIS, create_mesh
from distill_jax.tasks import Classification, Task
from distill_jax.teachers import Teacher

Batch = dict[str, jax.Array]


def make_eval_step(
    model: nn.Module, task: Task
) -> Callable[[Any, Any, Batch], dict[str, jax.Array]]:
    """Builds `eval_step(variables, teacher_logits, batch) -> sums` for exact evaluation.

    The step returns the task's *sums* over the unmasked rows of the batch (padding rows
    have `mask == False`), which the caller adds up over all batches in float64; for
    classification: `count`, `correct`, `nll`, the per-bin `ece_count`/`ece_conf`/
    `ece_correct` (confidence histogram of the expected calibration error), and with the
    teacher's logits on the batch (else None) `agree` (top-1 agreement) and `kl`
    (KL(teacher || student) at T=1).
    """

    def eval_step(variables: Any, teacher_logits: Any, batch: Batch) -> dict[str, jax.Array]:
        logits, _ = model.apply(variables, task.prepare(batch["image"]), train=False)
        return task.eval_sums(logits, batch["label"], batch["mask"], teacher_logits)

    return eval_step


def make_teacher_step(teacher_model: nn.Module, task: Task) -> Callable[[Any, Batch], jax.Array]:
    """`teacher_step(teacher_vars, batch) -> logits`: the teacher's side of the comparison."""

    def teacher_step(teacher_vars: Any, batch: Batch) -> jax.Array:
        return teacher_model.apply(teacher_vars, task.prepare(batch["image"]), train=False)[0]

    return teacher_step


class Evaluator:
    """Compiles one eval step for a model (and optional teacher) and reuses it.

    The teacher's logits on a split are computed once and reused for every later call on
    the same split (each of a run's vmapped students, each evaluation of a sweep): the
    teacher is often the costliest part of an evaluation. A task whose logits are too
    large to keep (`Task.cache_teacher_logits` False: a language model's `(N, T, V)`)
    runs the teacher and the model in one compiled step per batch instead, and only the
    sums leave the device.

    Args:
        model: the model to evaluate (BatchNorm in inference mode, no pmap axis).
        task: what the metrics are (default: classification with 15 ECE bins).
        teacher: the teacher to compare against (agreement, KL), or None.
        batch_size: evaluation batch size (rounded up to a multiple of the devices).
        devices: the devices to shard the batch over (default: this process's; in a
            multi-process run every process evaluates the whole split on its own devices).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: Task | None = None,
        teacher: Teacher | None = None,
        batch_size: int = 500,
        devices: list | None = None,
    ):
        self.mesh = create_mesh(jax.local_devices() if devices is None else devices)
        n = self.mesh.devices.size
        self.batch_size = -(-batch_size // n) * n
        self.task = Classification() if task is None else task
        self.teacher = teacher
        self._step = jax.jit(make_eval_step(model, self.task))
        if teacher is not None:
            self._teacher_vars = self._replicate(teacher.variables)
            teacher_step = make_teacher_step(teacher.model, self.task)
            self._teacher_step = jax.jit(teacher_step)
            eval_step = make_eval_step(model, self.task)
            self._joint_step = jax.jit(
                lambda v, tv, batch: eval_step(v, teacher_step(tv, batch), batch)
            )
        self._teacher_logits: tuple[Any, list[jax.Array]] | None = None  # (split, per batch)

    def _replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def __call__(self, variables: Any, split: data_lib.ArraySplit) -> dict[str, float]:
        """Evaluates `variables` on every example of `split`.

        Returns:
            The task's metrics; for classification `accuracy`, `nll`, `ece`, `count`,
            and with a teacher `agreement`, `kl`.
        """
        variables = self._replicate(variables)
        sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        totals: dict[str, np.ndarray] = {}
        rows: dict[str, list[np.ndarray]] = {k: [] for k in self.task.row_keys}
        joint = self.teacher is not None and not self.task.cache_teacher_logits
        known = self._teacher_logits is not None and self._teacher_logits[0] is split
        teacher_logits = self._teacher_logits[1] if known else []
        n = self.mesh.devices.size
        batch_size = -(-self.task.eval_rows(self.batch_size, split.info.image_shape) // n) * n
        for i, batch in enumerate(data_lib.eval_batches(split, batch_size)):
            keep = np.asarray(batch["mask"], bool)
            batch = jax.device_put({k: batch[k] for k in ("image", "label", "mask")}, sharding)
            if joint:  # the teacher's logits never leave the step
                sums = self._joint_step(variables, self._teacher_vars, batch)
            else:
                if self.teacher is not None and not known:
                    teacher_logits.append(self._teacher_step(self._teacher_vars, batch))
                sums = self._step(variables, teacher_logits[i] if self.teacher else None, batch)
            for k, v in jax.device_get(sums).items():
                if k in rows:  # per-example rows (a tagging task's tag sequences)
                    rows[k].append(np.asarray(v)[keep])
                else:
                    totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
        totals.update({k: np.concatenate(v) for k, v in rows.items() if v})
        if self.teacher is not None and not joint:
            self._teacher_logits = (split, teacher_logits)
        return self.task.reduce(totals, with_teacher=self.teacher is not None)


def flops_per_example(model: nn.Module, variables: Any, image_shape: tuple[int, ...]) -> float:
    """Forward FLOPs per example from XLA's cost analysis of the compiled model (batch 1)."""
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    x = jnp.zeros((1, *image_shape), jnp.float32)
    try:
        cost = fn.lower(variables, x).compile().cost_analysis()
    except Exception:  # cost analysis is best-effort on some backends
        return float("nan")
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def measure_latency(
    model: nn.Module,
    variables: Any,
    image_shape: tuple[int, ...],
    batch_size: int = 256,
    repeats: int = 20,
) -> dict[str, float]:
    """Measured inference time: median over `repeats` timed calls after compilation.

    Returns:
        `latency_ms_per_example` at `batch_size` (throughput view) and
        `latency_ms_batch1` (one example at a time; measured once when `batch_size` is 1).
    """
    device = jax.devices()[0]
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    variables = jax.device_put(variables, device)
    result = {}
    sizes = [("latency_ms_per_example", batch_size)]
    if batch_size != 1:
        sizes.append(("latency_ms_batch1", 1))
    for name, bs in sizes:
        x = jax.device_put(jnp.zeros((bs, *image_shape), jnp.float32), device)
        fn(variables, x).block_until_ready()  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(variables, x).block_until_ready()
            times.append(time.perf_counter() - t0)
        result[name] = float(np.median(times) * 1e3 / bs)
    result.setdefault("latency_ms_batch1", result["latency_ms_per_example"])
    return result


def model_summary(
    model: nn.Module,
    variables: Any,
    image_shape: tuple[int, ...],
    latency_batch: int = 256,
    task: Task | None = None,
) -> dict[str, float]:
    """Parameter count, forward FLOPs per example (a sequence of a token-id model) and
    measured latency of a model; `task` sets the latency batch and repeats
    (`Task.latency_batch_size`, `Task.latency_repeats`; a language model: batch 1)."""
    task = Classification() if task is None else task
    batch = task.latency_batch_size(latency_batch)
    return {
        "params": count_params(variables["params"]),
        "flops_per_example": flops_per_example(model, variables, image_shape),
        **measure_latency(model, variables, image_shape, batch, task.latency_repeats),
    }
