"""Pure loss functions, a registry of them by name, and the classic KD objective.

Every loss takes arrays with explicit shapes (`logits_BC`, `labels_B`, `mask_B`), is
computed in float32 from `log_softmax`, reduces the way its paper does, and ignores the
rows that `mask_B` marks as padding. `LOSSES` maps config names to functions;
`get_loss` looks one up with an error message listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from distill_jax.errors import ConfigError

# Importing the method modules registers them in `METHODS` (feature/relation methods).
from distill_jax.losses import crd, feature, relation, transformer  # noqa: E402, F401, I001
from distill_jax.losses.base import masked_mean, to_float32
from distill_jax.losses.crd import CRD  # noqa: E402
from distill_jax.losses.feature import (  # noqa: E402
    PKT,
    RKD,
    VID,
    AttentionTransfer,
    CorrelationCongruence,
    FitNet,
    SimilarityPreserving,
)
from distill_jax.losses.kd import kd_loss, topk_kd_loss
from distill_jax.losses.logit import (
    dist_loss,
    dkd_loss,
    dkd_terms,
    gjsd_loss,
    lskd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    standardize_logits,
    tvd_loss,
)
from distill_jax.losses.method import METHODS, Method  # noqa: E402
from distill_jax.losses.relation import (  # noqa: E402
    FSP,
    NST,
    ActivationBoundaries,
    FactorTransfer,
    ReviewKD,
)
from distill_jax.losses.task import cross_entropy

__all__ = [
    "CRD",
    "FSP",
    "LOSSES",
    "METHODS",
    "NST",
    "PKT",
    "RKD",
    "VID",
    "ActivationBoundaries",
    "AttentionTransfer",
    "CorrelationCongruence",
    "FactorTransfer",
    "FitNet",
    "Method",
    "ReviewKD",
    "SimilarityPreserving",
    "cross_entropy",
    "dist_loss",
    "distillation_loss",
    "dkd_loss",
    "dkd_terms",
    "get_loss",
    "gjsd_loss",
    "kd_loss",
    "lskd_loss",
    "masked_mean",
    "reverse_kl_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "standardize_logits",
    "to_float32",
    "topk_kd_loss",
    "tvd_loss",
]

LOSSES: dict[str, Callable[..., jax.Array]] = {
    "cross_entropy": cross_entropy,
    "kd": kd_loss,
    # Logit family (losses/logit.py). "dkd" also takes `labels_B` (third argument).
    "dkd": dkd_loss,
    "dist": dist_loss,
    "ls_kd": lskd_loss,
    "reverse_kl": reverse_kl_loss,
    "gjsd": gjsd_loss,
    "tvd": tvd_loss,
    "skew_kl": skew_kl_loss,
    "skew_reverse_kl": skew_reverse_kl_loss,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
    """Returns the loss function registered under `name`.

    Args:
      name: a key of `LOSSES`, e.g. `"kd"`.

    Returns:
      The loss function.

    Raises:
      ConfigError: `name` is not registered; the message lists the valid names.
    """
    try:
        return LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(LOSSES))
        raise ConfigError(f"unknown loss {name!r}; valid losses: {valid}") from None


def _concrete_float(value: float | jax.Array) -> float | None:
    """Returns `value` as a Python float, or None when it is traced (e.g. a schedule)."""
    try:
        return float(value)
    except jax.errors.ConcretizationTypeError:
        return None


def distillation_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    labels_B: jax.Array,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    mask_B: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hinton et al. 2015 objective: `alpha * CE(hard labels) + (1 - alpha) * KD`.

    The soft term is `kd_loss` (already scaled by `T^2`), so `alpha` trades the two
    terms off at comparable gradient scales for any temperature. `alpha` and
    `temperature` are validated in Python when they are concrete numbers; traced values
    (schedules computed inside `jit`) are passed through unchecked.

    Args:
      student_logits_BC: student class scores, shape `[B, C]`.
      teacher_logits_BC: teacher class scores, same shape (no gradient reaches them).
      labels_B: integer class indices, shape `[B]`.
      alpha: weight of the hard-label cross-entropy, in `[0, 1]`.
      temperature: KD softmax temperature, `> 0`.
      label_smoothing: label smoothing of the hard-label term.
      mask_B: optional boolean or 0/1 mask over rows.

    Returns:
      `(loss, terms)`: the scalar weighted loss and `{"ce": ..., "kd": ...}`, the
      unweighted terms for logging.

    Raises:
      ConfigError: `alpha` is outside `[0, 1]` or `temperature` is not positive.
    """
    alpha_value = _concrete_float(alpha)
    if alpha_value is not None and not 0.0 <= alpha_value <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha_value}")
    temperature_value = _concrete_float(temperature)
    if temperature_value is not None and not temperature_value > 0.0:
        raise ConfigError(f"distill.temperature must be > 0, got {temperature_value}")
    ce = cross_entropy(student_logits_BC, labels_B, label_smoothing, mask_B)
    kd = kd_loss(student_logits_BC, teacher_logits_BC, temperature, mask_B)
    loss = alpha * ce + (1.0 - alpha) * kd
    return loss, {"ce": ce, "kd": kd}
