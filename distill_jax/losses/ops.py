"""Array operations shared by the feature and relation methods (PyTorch semantics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.losses.base import to_float32


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """`x / max(||x||_2, eps)` along `axis` (PyTorch's `F.normalize`).

    Written as `x * rsqrt(max(||x||^2, eps^2))` so that an all-zero vector (a padded
    row, or RKD's `e_i - e_i`) has a zero gradient instead of NaN.
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def as_map(x: jax.Array, what: str = "feature") -> jax.Array:
    """A conv feature as is, a `(B, D)` vector feature as a `(B, 1, 1, D)` map."""
    if x.ndim == 2:
        return x[:, None, None, :]
    if x.ndim != 4:
        raise ValueError(f"{what} must be (B, H, W, C) or (B, D), got shape {x.shape}")
    return x


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """`(size_out, size_in)` averaging matrix of PyTorch's adaptive average pooling."""
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x_BHWC: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """PyTorch's `F.adaptive_avg_pool2d` on an NHWC array.

    Args:
      x_BHWC: feature map.
      size_hw: output `(h, w)`.

    Returns:
      `(B, h, w, C)`: output cell `(i, j)` is the mean of input rows
      `[floor(i*H/h), ceil((i+1)*H/h))` and the analogous columns.
    """
    _, H, W, _ = x_BHWC.shape
    h, w = size_hw
    if (H, W) == (h, w):
        return x_BHWC
    pool_hH = jnp.asarray(_pool_matrix(H, h), x_BHWC.dtype)
    pool_wW = jnp.asarray(_pool_matrix(W, w), x_BHWC.dtype)
    return jnp.einsum("iH,bHWc,jW->bijc", pool_hH, x_BHWC, pool_wW)


def _feature(outputs: Mapping[str, Any], name: str, who: str) -> jax.Array:
    """Looks up `outputs["features"][name]` with an error listing the available names."""
    features = outputs["features"]
    if name not in features:
        raise ValueError(
            f"{who} feature {name!r} not found; available features: {sorted(features)}"
        )
    return features[name]


def gather_features(
    method: Any, student: Mapping[str, Any], teacher: Mapping[str, Any]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Reads a method's declared features: float32, the teacher's under `stop_gradient`.

    Raises:
      ValueError: the student and teacher feature lists differ in length, or a feature
        does not exist (the message lists those that do).
    """
    if len(method.student_features) != len(method.teacher_features):
        raise ValueError(
            f"{type(method).__name__}: student_features {tuple(method.student_features)} "
            f"and teacher_features {tuple(method.teacher_features)} differ in length"
        )
    feats_s = [to_float32(_feature(student, n, "student")) for n in method.student_features]
    feats_t = [
        to_float32(jax.lax.stop_gradient(_feature(teacher, n, "teacher")))
        for n in method.teacher_features
    ]
    return feats_s, feats_t
