"""Pure loss functions and a registry of them by name.

Every loss takes arrays with explicit shapes (`logits_BC`, `labels_B`, `mask_B`), is
computed in float32 from `log_softmax`, reduces the way its paper does, and ignores the
rows that `mask_B` marks as padding. `LOSSES` maps config names to logit losses and
`METHODS` to feature/relation methods; `objective.Objective` combines the ones a
config names (with the task loss) into the training loss, the only place they meet.
`lm.py` is the sequence (LM) family: token-level divergences over a vocabulary, computed
in vocab chunks (`lm_kl`, `lm_reverse_kl`, `lm_jsd`, `lm_skew_kl`, `lm_skew_reverse_kl`,
`lm_tvd`), and their top-k-teacher variants (`lm_topk_loss`).
`crf.py` holds a linear-chain CRF (log-partition, sequence score, NLL, Viterbi) for
taggers, not yet wired into the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

# Importing the method modules registers them in `METHODS` (feature/relation methods).
from distill_jax.losses import crd, feature, relation, transformer  # noqa: E402, F401, I001
from distill_jax.losses.base import masked_mean, to_float32
from distill_jax.losses.crd import CRD  # noqa: E402
from distill_jax.losses.crf import crf_decode, crf_log_partition, crf_nll, crf_sequence_score
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
from distill_jax.losses.lm import (
    LM_LOSSES,
    lm_divergence,
    lm_jsd_loss,
    lm_kl_loss,
    lm_reverse_kl_loss,
    lm_skew_kl_loss,
    lm_skew_reverse_kl_loss,
    lm_topk_loss,
    lm_tvd_loss,
)
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
    "crf_decode",
    "crf_log_partition",
    "crf_nll",
    "crf_sequence_score",
    "cross_entropy",
    "dist_loss",
    "dkd_loss",
    "dkd_terms",
    "gjsd_loss",
    "kd_loss",
    "lm_divergence",
    "lm_jsd_loss",
    "lm_kl_loss",
    "lm_reverse_kl_loss",
    "lm_skew_kl_loss",
    "lm_skew_reverse_kl_loss",
    "lm_topk_loss",
    "lm_tvd_loss",
    "register_loss",
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
    # Sequence (LM) family (losses/lm.py): (B, T, V) logits, (B, T) mask, vocab chunks.
    **{name: fn for name, (_, fn) in LM_LOSSES.items()},
}


def register_loss(name: str):
    """Decorator adding a logit loss to `LOSSES`, so `distill.losses` can name it.

    The function takes `student_logits_BC`, `teacher_logits_BC` (and optionally
    `labels_B`), its hyperparameters as keyword arguments with defaults (configurable as
    `distill.losses.<name>.<hyperparameter>`), and `mask_B=None` (rows to ignore); it
    returns a scalar. A feature or relation method is a `Method` registered with
    `losses.method.register` instead.

    Raises:
        ValueError: a name taken by a built-in loss, or a function without those inputs.
    """
    import inspect

    def wrap(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        if name in _BUILTIN_LOSSES or name in METHODS:
            raise ValueError(f"loss name {name!r} is taken by a built-in loss or method")
        params = inspect.signature(fn).parameters
        needed = ("student_logits_BC", "teacher_logits_BC", "mask_B")
        missing = [p for p in needed if p not in params]
        if missing:
            raise ValueError(f"loss {name!r} must take {', '.join(needed)}; missing {missing}")
        LOSSES[name] = fn
        return fn

    return wrap


_BUILTIN_LOSSES = frozenset(LOSSES)
