"""Task losses: cross-entropy against (optionally smoothed) hard labels.

Label smoothing follows Szegedy et al. 2016, "Rethinking the Inception Architecture for
Computer Vision", section 7: the target distribution is
`q = (1 - eps) * onehot(y) + eps / C`, and the loss per example is
`-sum_c q_c * log softmax(z)_c`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.base import masked_mean, to_float32


def cross_entropy(
    logits_BC: jax.Array,
    labels_B: jax.Array,
    label_smoothing: float = 0.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy of logits against one-hot labels with label smoothing.

    Computed in float32 from `jax.nn.log_softmax` (bfloat16 logits are cast first).
    Labels outside `[0, C)` give an all-zero one-hot row, so padded rows with a
    placeholder label (e.g. -1) stay finite before they are masked out.

    Args:
      logits_BC: unnormalised class scores, shape `[B, C]` (extra leading axes allowed).
      labels_B: integer class indices, shape `logits_BC.shape[:-1]`.
      label_smoothing: `eps` in `q = (1 - eps) * onehot + eps / C`; 0 gives plain CE.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar: the mean over kept rows of `-sum_c q_c * log p_c`.
    """
    logits_BC = to_float32(logits_BC)
    labels_B = jnp.asarray(labels_B)
    if labels_B.shape != logits_BC.shape[:-1]:
        raise ValueError(
            f"labels shape {labels_B.shape} does not match logits shape {logits_BC.shape}"
        )
    num_classes = logits_BC.shape[-1]
    log_probs_BC = jax.nn.log_softmax(logits_BC, axis=-1)
    targets_BC = jax.nn.one_hot(labels_B, num_classes, dtype=log_probs_BC.dtype)
    if label_smoothing:
        targets_BC = (1.0 - label_smoothing) * targets_BC + label_smoothing / num_classes
    loss_B = -jnp.sum(targets_BC * log_probs_BC, axis=-1)
    return masked_mean(loss_B, mask_B)
