"""Logit knowledge distillation (Hinton, Vinyals and Dean 2015).

"Distilling the Knowledge in a Neural Network", arXiv:1503.02531, section 2. The soft
loss for one example with student logits `s`, teacher logits `t` and temperature `T` is

    T^2 * KL(softmax(t / T) || softmax(s / T))
      = T^2 * sum_c p_c * (log p_c - log q_c),   p = softmax(t/T), q = softmax(s/T).

The paper multiplies by `T^2` because the gradient of the KL term with respect to `s`
is `(q - p) / T`, which shrinks as `1/T^2` in the high-temperature limit; the factor keeps
the soft term's gradient magnitude comparable across temperatures and against the hard
term. The loss is summed over classes and averaged over examples (batch mean), exactly
as `torch.nn.KLDivLoss(reduction="batchmean")` is used in the common reference code; a
mean over classes would silently divide it by `C`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.base import masked_mean, to_float32


def kd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 4.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Batch mean of `T^2 * KL(softmax(t/T) || softmax(s/T))`.

    Both distributions come from `jax.nn.log_softmax` in float32, and the KL is written
    as `p_t * (log p_t - log p_s)` with finite log-probabilities, so it is exact (no
    `0 * log 0`) when the teacher assigns (numerically) zero probability to a class.
    The teacher logits pass through `jax.lax.stop_gradient`: no gradient reaches the
    teacher even if the caller differentiates with respect to them.

    Args:
      student_logits_BC: student class scores, shape `[B, C]` (extra leading axes
        allowed).
      teacher_logits_BC: teacher class scores, same shape.
      temperature: softmax temperature `T > 0`; may be a traced scalar (a schedule).
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar: the mean over kept rows of `T^2 * sum_c KL_c`.
    """
    student_logits_BC = to_float32(student_logits_BC)
    teacher_logits_BC = to_float32(jax.lax.stop_gradient(teacher_logits_BC))
    if student_logits_BC.shape != teacher_logits_BC.shape:
        raise ValueError(
            f"student logits shape {student_logits_BC.shape} does not match teacher "
            f"logits shape {teacher_logits_BC.shape}"
        )
    log_p_student_BC = jax.nn.log_softmax(student_logits_BC / temperature, axis=-1)
    log_p_teacher_BC = jax.nn.log_softmax(teacher_logits_BC / temperature, axis=-1)
    p_teacher_BC = jnp.exp(log_p_teacher_BC)
    kl_B = jnp.sum(p_teacher_BC * (log_p_teacher_BC - log_p_student_BC), axis=-1)
    return masked_mean(temperature**2 * kl_B, mask_B)


def topk_kd_loss(
    student_logits_BC: jax.Array,
    teacher_values_BK: jax.Array,
    teacher_indices_BK: jax.Array,
    temperature: float = 4.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """KD against a teacher stored as its top-k logits (offline / cached distillation).

    The teacher's distribution is renormalised over its `k` kept classes,
    `p_k = softmax(v_k / T)` (as FKD/ReLabel store soft labels), and compared with the
    student's full softmax at those classes:

        T^2 * sum_k p_k * (log p_k - log softmax(s / T)[i_k]).

    With `k = C` (all classes, any order) this is exactly `kd_loss`.

    Args:
      student_logits_BC: student class scores `[B, C]`.
      teacher_values_BK: the teacher's `k` largest logits per row (any float dtype).
      teacher_indices_BK: their class indices, int.
      temperature: softmax temperature `T > 0`; may be traced.
      mask_B: optional row mask.

    Returns:
      A float32 scalar: the mean over kept rows.
    """
    student_logits_BC = to_float32(student_logits_BC)
    values_BK = to_float32(jax.lax.stop_gradient(teacher_values_BK))
    if (
        values_BK.shape != teacher_indices_BK.shape
        or values_BK.shape[0] != (student_logits_BC.shape[0])
    ):
        raise ValueError(
            f"top-k teacher values {values_BK.shape} / indices {teacher_indices_BK.shape} do "
            f"not fit student logits {student_logits_BC.shape}"
        )
    log_p_student_BC = jax.nn.log_softmax(student_logits_BC / temperature, axis=-1)
    log_p_student_BK = jnp.take_along_axis(log_p_student_BC, teacher_indices_BK, axis=-1)
    log_p_teacher_BK = jax.nn.log_softmax(values_BK / temperature, axis=-1)
    p_teacher_BK = jnp.exp(log_p_teacher_BK)
    kl_B = jnp.sum(p_teacher_BK * (log_p_teacher_BK - log_p_student_BK), axis=-1)
    return masked_mean(temperature**2 * kl_B, mask_B)
