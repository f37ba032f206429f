"""Evaluation: exact metrics over a whole split, model size, FLOPs and latency.

Evaluation is exact: the last batch is padded and masked, so every example counts once.
Metrics: top-1 accuracy, negative log-likelihood, expected calibration error (ECE, equal-
width confidence bins, Guo et al. 2017), and against a teacher: top-1 agreement and
KL(teacher || student) at T=1.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distill_jax import data as data_lib
from distill_jax.parallel import AXIS, create_mesh
from distill_jax.train.state import Teacher, count_params
from distill_jax.train.steps import make_eval_step


def ece_from_bins(count_K: np.ndarray, conf_K: np.ndarray, correct_K: np.ndarray) -> float:
    """Expected calibration error from per-bin sums: sum_k n_k/N |acc_k - conf_k|."""
    total = count_K.sum()
    if total == 0:
        return 0.0
    return float(np.sum(np.abs(correct_K - conf_K)) / total)


class Evaluator:
    """Compiles one eval step for a model (and optional teacher) and reuses it.

    Args:
        model: the model to evaluate (BatchNorm in inference mode, no pmap axis).
        teacher: the teacher to compare against (agreement, KL), or None.
        batch_size: evaluation batch size (rounded up to a multiple of the devices).
        ece_bins: number of equal-width confidence bins for the ECE.
        devices: the devices to shard the batch over (default: this process's; in a
            multi-process run every process evaluates the whole split on its own devices).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        teacher: Teacher | None = None,
        batch_size: int = 500,
        ece_bins: int = 15,
        devices: list | None = None,
    ):
        self.mesh = create_mesh(jax.local_devices() if devices is None else devices)
        n = self.mesh.devices.size
        self.batch_size = -(-batch_size // n) * n
        self.teacher = teacher
        self._teacher_vars = None if teacher is None else self._replicate(teacher.variables)
        self._step = jax.jit(
            make_eval_step(
                model,
                teacher_model=None if teacher is None else teacher.model,
                ece_bins=ece_bins,
            )
        )

    def _replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def __call__(self, variables: Any, split: data_lib.ArraySplit) -> dict[str, float]:
        """Evaluates `variables` on every example of `split`.

        Returns:
            `accuracy`, `nll`, `ece`, `count`, and with a teacher `agreement`, `kl`.
        """
        variables = self._replicate(variables)
        sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        totals: dict[str, np.ndarray] = {}
        for batch in data_lib.eval_batches(split, self.batch_size):
            batch = jax.device_put({k: batch[k] for k in ("image", "label", "mask")}, sharding)
            sums = self._step(variables, self._teacher_vars, batch)
            for k, v in jax.device_get(sums).items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
        n = float(totals["count"])
        out = {
            "count": int(n),
            "accuracy": float(totals["correct"] / n),
            "nll": float(totals["nll"] / n),
            "ece": ece_from_bins(totals["ece_count"], totals["ece_conf"], totals["ece_correct"]),
        }
        if self.teacher is not None:
            out["agreement"] = float(totals["agree"] / n)
            out["kl"] = float(totals["kl"] / n)
        return out


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
        `latency_ms_batch1` (one example at a time).
    """
    device = jax.devices()[0]
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    variables = jax.device_put(variables, device)
    result = {}
    for name, bs in (("latency_ms_per_example", batch_size), ("latency_ms_batch1", 1)):
        x = jax.device_put(jnp.zeros((bs, *image_shape), jnp.float32), device)
        fn(variables, x).block_until_ready()  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(variables, x).block_until_ready()
            times.append(time.perf_counter() - t0)
        result[name] = float(np.median(times) * 1e3 / bs)
    return result


def model_summary(
    model: nn.Module, variables: Any, image_shape: tuple[int, ...], latency_batch: int = 256
) -> dict[str, float]:
    """Parameter count, forward FLOPs per example and measured latency of a model."""
    return {
        "params": count_params(variables["params"]),
        "flops_per_example": flops_per_example(model, variables, image_shape),
        **measure_latency(model, variables, image_shape, latency_batch),
    }
