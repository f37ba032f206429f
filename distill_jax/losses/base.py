"""Shared helpers for loss functions: dtype promotion and masked reductions.

Every loss in this package produces one value per example (`values_B`) and reduces it
with `masked_mean`, so padded rows of the last evaluation batch (see DESIGN.md, "pad the
last batch and mask") never change a result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float32(x: jax.Array) -> jax.Array:
    """Casts an array to at least float32 precision.

    Losses are computed in float32 even when the model runs in bfloat16, so that
    `log_softmax` and the reductions do not lose precision. Float64 inputs (used by the
    gradient-check tests under `jax.enable_x64`) are kept in float64.

    Args:
      x: a floating-point (or integer) array.

    Returns:
      `x` cast to `promote_types(x.dtype, float32)`.
    """
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def masked_mean(values_B: jax.Array, mask_B: jax.Array | None = None) -> jax.Array:
    """Mean of per-example values over the rows that the mask keeps.

    Masked rows are removed with `jnp.where`, not multiplied by zero, so a padded row
    holding `inf` or `NaN` cannot leak into the result. Leading axes other than `B`
    (e.g. a sequence axis) are allowed: the mean is over every kept element.

    Args:
      values_B: per-example values.
      mask_B: boolean or 0/1 array of the same shape as `values_B`; `True`/1 keeps a row.
        `None` keeps every row.

    Returns:
      A scalar: `mean(values_B)` without a mask, else
      `sum(values_B * mask_B) / max(sum(mask_B), 1)`, which is 0 (not NaN) when the
      mask keeps nothing.
    """
    values_B = jnp.asarray(values_B)
    if mask_B is None:
        return jnp.mean(values_B)
    mask_B = jnp.asarray(mask_B)
    if mask_B.shape != values_B.shape:
        raise ValueError(f"mask shape {mask_B.shape} does not match values shape {values_B.shape}")
    keep_B = mask_B.astype(bool)
    total = jnp.sum(jnp.where(keep_B, values_B, jnp.zeros_like(values_B)))
    count = jnp.maximum(jnp.sum(keep_B), 1).astype(values_B.dtype)
    return total / count
