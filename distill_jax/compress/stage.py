"""A compression stage as a training-run `Variant`: what the trainer needs to fine-tune a
pruned or quantized student, without knowing anything of pruning or quantization.
"""

from __future__ import annotations

import dataclasses

from distill_jax.compress.prune import PruneSchedule, pruning
from distill_jax.teachers import Teacher
from distill_jax.train.setup import Variant


def stage(
    init_from: Teacher | None = None, prune: PruneSchedule | None = None, qat: bool = False
) -> Variant:
    """The run variant of one compression stage (`fit(..., variant=stage(...))`).

    Args:
        init_from: start from this trained model's variables (same architecture as the
            config's student) instead of a random initialisation: the recovery
            fine-tuning of a pruned or quantized student.
        prune: prune the student's weights on this schedule (masks in the optimizer
            state, `compress.prune.pruning`).
        qat: quantization-aware training: train (and evaluate) the int8 fake-quantized
            model (`compress.quantize.qat`).
    """
    wrap_model = None
    if qat:
        from distill_jax.compress.quantize import qat as wrap_model
    return Variant(
        spec={
            "init_from": None if init_from is None else init_from.identity,
            "prune": None if prune is None else dataclasses.asdict(prune),
            "qat": qat,
        },
        init_from=init_from,
        transforms=() if prune is None else (pruning(prune),),
        wrap_model=wrap_model,
    )
