"""Compression beyond distillation: pruning and int8 quantization of the student."""

from distill_jax.compress.prune import (
    PruneSchedule,
    apply_masks,
    magnitude_masks,
    prunable,
    prune_step,
    sparsity_of,
)
from distill_jax.compress.quantize import int8_rules, ptq, qat, stored_bytes


def init_masks(params):
    """All-True masks for `params` (nothing pruned yet): `TrainState.extra["masks"]`."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)


__all__ = [
    "PruneSchedule",
    "apply_masks",
    "init_masks",
    "int8_rules",
    "magnitude_masks",
    "prunable",
    "prune_step",
    "ptq",
    "qat",
    "sparsity_of",
    "stored_bytes",
]
