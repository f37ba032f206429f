"""Compression beyond distillation: pruning and int8 quantization of the student.

The quantization names load `qwix` on first use, not when the package is imported: a
pruning run need not pay for qwix's import. `compress.stage.stage` turns a compression
stage into a training-run `Variant` (the trainer imports nothing from this package).
"""

from distill_jax.compress.prune import (
    PruneSchedule,
    apply_masks,
    init_masks,
    magnitude_masks,
    masks_of,
    prunable,
    pruning,
    sparsity_of,
)

_QUANTIZE = ("int8_rules", "ptq", "qat", "stored_bytes")


def __getattr__(name: str):
    if name in _QUANTIZE:
        from distill_jax.compress import quantize

        return getattr(quantize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PruneSchedule",
    "apply_masks",
    "init_masks",
    "int8_rules",
    "magnitude_masks",
    "masks_of",
    "prunable",
    "pruning",
    "ptq",
    "qat",
    "sparsity_of",
    "stored_bytes",
]
