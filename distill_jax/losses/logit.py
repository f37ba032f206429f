"""The logit family of distillation losses: DKD, DIST, LS-KD and divergences for LMs.

Every loss here compares student and teacher class scores (`logits_BC`, extra leading
axes such as a sequence axis allowed) through softmax distributions computed in float32
from `jax.nn.log_softmax`; the teacher logits pass through `jax.lax.stop_gradient`, and
padded rows are excluded with `mask_B` (per-row loss, then `masked_mean`). Like `kd_loss`,
every loss with a temperature `T` is multiplied by `T^2`, which keeps gradient magnitudes
comparable across temperatures (Hinton et al. 2015, section 2).

- `dkd_loss` / `dkd_terms`: Decoupled KD (Zhao et al., CVPR 2022).
- `dist_loss`: DIST, correlation-based relations (Huang et al., NeurIPS 2022).
- `lskd_loss`: KD on z-scored logits (Sun et al., CVPR 2024).
- `reverse_kl_loss`, `gjsd_loss`, `tvd_loss`, `skew_kl_loss`, `skew_reverse_kl_loss`:
  token-level divergences used to distil language models (GKD, Agarwal et al., ICLR 2024;
  DistiLLM, Ko et al., ICML 2024; f-distill, Wen et al., ACL 2023). With the default
  `T = 1` they are exactly the papers' per-token divergences.

Mixtures of distributions (`m = w * p + (1 - w) * q`) are never formed in probability
space: `KL(p || m) = -sum_c p_c * log(w + (1 - w) * q_c / p_c)`, and the logarithm is
`logaddexp(log w, log(1 - w) + log q_c - log p_c)`, a function of finite log-probability
differences. That is stable when probabilities underflow, needs no `log(0)` floor, and is
exactly zero (up to rounding of `log(w + 1 - w)`) when `p == q`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError
from distill_jax.losses.base import masked_mean, to_float32
from distill_jax.losses.kd import kd_loss

# DIST's official implementation adds 1e-8 to the product of norms in its cosine.
_DIST_EPS = 1e-8
# LS-KD's official implementation divides by `std + 1e-7`.
_LSKD_EPS = 1e-7


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _prepare(
    student_logits_BC: jax.Array, teacher_logits_BC: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Casts both to >= float32, stops the teacher's gradient and checks the shapes."""
    student_logits_BC = to_float32(student_logits_BC)
    teacher_logits_BC = to_float32(jax.lax.stop_gradient(teacher_logits_BC))
    if student_logits_BC.shape != teacher_logits_BC.shape:
        raise ValueError(
            f"student logits shape {student_logits_BC.shape} does not match teacher "
            f"logits shape {teacher_logits_BC.shape}"
        )
    return student_logits_BC, teacher_logits_BC


def _log_probs(
    student_logits_BC: jax.Array, teacher_logits_BC: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """`(log softmax(s / T), log softmax(t / T))`, teacher without gradient."""
    student_logits_BC, teacher_logits_BC = _prepare(student_logits_BC, teacher_logits_BC)
    log_p_student_BC = jax.nn.log_softmax(student_logits_BC / temperature, axis=-1)
    log_p_teacher_BC = jax.nn.log_softmax(teacher_logits_BC / temperature, axis=-1)
    return log_p_student_BC, log_p_teacher_BC


def _kl_B(log_p_BC: jax.Array, log_q_BC: jax.Array) -> jax.Array:
    """`KL(p || q) = sum_c p_c (log p_c - log q_c)` from finite log-probabilities."""
    return jnp.sum(jnp.exp(log_p_BC) * (log_p_BC - log_q_BC), axis=-1)


def _kl_to_mixture_B(log_p_BC: jax.Array, log_q_BC: jax.Array, weight: float) -> jax.Array:
    """`KL(p || weight * p + (1 - weight) * q)`, summed over the last axis.

    Written as `-sum_c p_c * log(weight + (1 - weight) * q_c / p_c)` with the logarithm
    as `logaddexp(log weight, log(1 - weight) + log q_c - log p_c)`; see the module
    docstring. `weight = 0` gives `KL(p || q)`, `weight = 1` gives 0.
    """
    log_ratio_BC = jnp.logaddexp(jnp.log(weight), jnp.log1p(-weight) + (log_q_BC - log_p_BC))
    return -jnp.sum(jnp.exp(log_p_BC) * log_ratio_BC, axis=-1)


def _concrete_float(value: float | jax.Array) -> float | None:
    """`value` as a Python float, or None when it is traced (e.g. a schedule)."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _check_fraction(name: str, value: float | jax.Array, *, low_open: bool) -> None:
    """Raises ConfigError unless a concrete `value` is in `(0, 1)` or `[0, 1)`."""
    number = _concrete_float(value)
    if number is None:
        return
    ok = (0.0 < number < 1.0) if low_open else (0.0 <= number < 1.0)
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {number}")


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """`sqrt(x)` for `x >= 0` whose gradient is 0 (not NaN/inf) at `x == 0`.

    A constant row (e.g. an all-zero padded row) has zero variance; a plain `sqrt` would
    send `0 * inf = NaN` back through the masked row even though its value is discarded.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


# ---------------------------------------------------------------------------
# DKD.
# ---------------------------------------------------------------------------


def dkd_terms(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    labels_B: jax.Array,
    temperature: float = 4.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-example TCKD and NCKD of Decoupled KD (Zhao et al., CVPR 2022, Eqs. 1 and 7).

    With `p = softmax(z / T)`, target class `y` and `p_y` its probability:

    - TCKD = `KL(b^T || b^S)` with the binary distributions `b = [p_y, 1 - p_y]`;
    - NCKD = `KL(p_hat^T || p_hat^S)` with `p_hat_c = p_c / (1 - p_y)` over the non-target
      classes `c != y`.

    Both are multiplied by `T^2` (as in the paper's reference code, mdistiller). Eq. 1 of
    the paper is then exact per example: `KD = TCKD + (1 - p_y^T) * NCKD`, where `KD` is
    `kd_loss` for that example. Everything is computed from log-probabilities: `log(1 -
    p_y)` is the `logsumexp` of the non-target log-probabilities, so nothing is lost when
    `p_y` rounds to 1, and the target class is excluded from NCKD exactly (mdistiller
    approximates this by subtracting `1000` from the target logit).

    Args:
      student_logits_BC: student class scores, shape `[B, C]` with `C >= 2` (extra
        leading axes allowed).
      teacher_logits_BC: teacher class scores, same shape (no gradient reaches them).
      labels_B: integer target classes, shape `student_logits_BC.shape[:-1]`. Labels
        outside `[0, C)` (placeholders of padded rows) are replaced by class 0 so those
        rows stay finite; mask such rows out.
      temperature: softmax temperature `T > 0`; may be traced.

    Returns:
      `(tckd_B, nckd_B)`: per-example values of shape `labels_B.shape`, both scaled by
      `T^2`, not reduced.
    """
    student_logits_BC, teacher_logits_BC = _prepare(student_logits_BC, teacher_logits_BC)
    labels_B = jnp.asarray(labels_B)
    if labels_B.shape != student_logits_BC.shape[:-1]:
        raise ValueError(
            f"labels shape {labels_B.shape} does not match logits shape {student_logits_BC.shape}"
        )
    num_classes = student_logits_BC.shape[-1]
    if num_classes < 2:
        raise ValueError(f"DKD needs at least 2 classes, got {num_classes}")
    valid_B = (labels_B >= 0) & (labels_B < num_classes)
    safe_labels_B = jnp.where(valid_B, labels_B, 0)
    target_BC = safe_labels_B[..., None] == jnp.arange(num_classes)

    def split(logits_BC):
        """Returns log p_y, log(1 - p_y) and the non-target log p_hat (0 at the target)."""
        log_p_BC = jax.nn.log_softmax(logits_BC / temperature, axis=-1)
        log_target_B = jnp.sum(jnp.where(target_BC, log_p_BC, 0.0), axis=-1)
        log_rest_B = jax.nn.logsumexp(jnp.where(target_BC, -jnp.inf, log_p_BC), axis=-1)
        # 0 (not -inf) at the target keeps exp() and the gradient finite there; the
        # entry contributes 1 * (0 - 0) = 0 to the NCKD sum and is also masked below.
        log_p_hat_BC = jnp.where(target_BC, 0.0, log_p_BC - log_rest_B[..., None])
        return log_target_B, log_rest_B, log_p_hat_BC

    log_target_s_B, log_rest_s_B, log_p_hat_s_BC = split(student_logits_BC)
    log_target_t_B, log_rest_t_B, log_p_hat_t_BC = split(teacher_logits_BC)
    # KL([p_y, 1 - p_y]^T || [p_y, 1 - p_y]^S), one term per entry of the binary vector.
    tckd_target_B = jnp.exp(log_target_t_B) * (log_target_t_B - log_target_s_B)
    tckd_rest_B = jnp.exp(log_rest_t_B) * (log_rest_t_B - log_rest_s_B)
    tckd_B = tckd_target_B + tckd_rest_B
    nckd_terms_BC = jnp.exp(log_p_hat_t_BC) * (log_p_hat_t_BC - log_p_hat_s_BC)
    nckd_B = jnp.sum(jnp.where(target_BC, 0.0, nckd_terms_BC), axis=-1)
    scale = temperature**2
    return scale * tckd_B, scale * nckd_B


def dkd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    labels_B: jax.Array,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Decoupled KD: batch mean of `alpha * TCKD + beta * NCKD` (Zhao et al. 2022, Eq. 7).

    "Decoupled Knowledge Distillation", CVPR 2022, arXiv:2203.08679. TCKD and NCKD are
    `dkd_terms` (each scaled by `T^2`). Defaults are the reference implementation's
    (mdistiller `CFG.DKD`: `ALPHA=1.0, BETA=8.0, T=4.0`, its CIFAR-100 setting; its
    ImageNet configs keep `alpha=1` with `T=1` and `beta=0.5` for ResNet-34 -> ResNet-18,
    `beta=2` for ResNet-50 -> MobileNetV1). mdistiller also ramps the loss in
    linearly over the first 20 epochs (`WARMUP`) and adds a cross-entropy term; both are
    left to the caller's loss weights/schedules.

    DKD with `alpha = beta = 1` is not KD: by Eq. 1, KD weights NCKD by `1 - p_y^T`, so
    `DKD(1, 1) = KD + mean(p_y^T * NCKD) >= KD`.

    Args:
      student_logits_BC: student class scores, shape `[B, C]` (extra leading axes
        allowed).
      teacher_logits_BC: teacher class scores, same shape (no gradient reaches them).
      labels_B: integer target classes, shape `student_logits_BC.shape[:-1]`.
      alpha: weight of TCKD.
      beta: weight of NCKD.
      temperature: softmax temperature `T > 0`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar: the mean over kept rows of `alpha * TCKD + beta * NCKD`.
    """
    tckd_B, nckd_B = dkd_terms(student_logits_BC, teacher_logits_BC, labels_B, temperature)
    return masked_mean(alpha * tckd_B + beta * nckd_B, mask_B)


# ---------------------------------------------------------------------------
# DIST.
# ---------------------------------------------------------------------------


def _cosine(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
    """DIST's cosine: `<a, b> / (|a| |b| + 1e-8)` along `axis` (NaN-free gradient at 0)."""
    dot = jnp.sum(a * b, axis=axis)
    norm_a = _safe_sqrt(jnp.sum(a * a, axis=axis))
    norm_b = _safe_sqrt(jnp.sum(b * b, axis=axis))
    return dot / (norm_a * norm_b + _DIST_EPS)


def dist_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """DIST: `T^2 * (beta * inter + gamma * intra)` (Huang et al., NeurIPS 2022).

    "Knowledge Distillation from A Stronger Teacher", arXiv:2205.10536, its final
    objective `L = beta * L_inter + gamma * L_intra`, as in the official implementation
    (`DIST` in hunto/image_classification_sota, `lib/models/losses/dist_kd.py`). With
    `Y = softmax(Z / T)` of shape `[B, C]`:

    - inter-class relation = `1 - pearson(Y_s[i], Y_t[i])`, a correlation over classes
      per example, averaged over the (kept) examples;
    - intra-class relation = `1 - pearson(Y_s[:, c], Y_t[:, c])`, a correlation over the
      (kept) examples per class, averaged over classes.

    The Pearson correlation is the official one: cosine of the mean-centred vectors with
    `1e-8` added to the product of norms. Defaults `beta = gamma = 1, T = 1` are the
    official `DIST(beta=1.0, gamma=1.0, tau=1.0)`, its ImageNet setting (the paper's
    CIFAR-100 experiments use `T = 4`). Each relation is in `[0, 2]`, so the loss is in
    `[0, 2 * (beta + gamma) * T^2]`.

    The intra-class term couples the rows of the batch: extra leading axes are flattened
    into one row axis, masked rows are excluded from the per-class means and sums, and
    under `jax.pmap` it is computed per device (per-device batch), whereas a
    `jit`-sharded batch uses the global batch. With at most one kept row the centred
    columns are zero and the intra term is 1, as in the official code; with no kept row
    the loss is 0.

    Args:
      student_logits_BC: student class scores, shape `[B, C]` (extra leading axes are
        flattened into rows).
      teacher_logits_BC: teacher class scores, same shape (no gradient reaches them).
      beta: weight of the inter-class relation.
      gamma: weight of the intra-class relation.
      temperature: softmax temperature `T > 0`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows, shape `logits.shape[:-1]`.

    Returns:
      A float32 scalar.
    """
    student_logits_BC, teacher_logits_BC = _prepare(student_logits_BC, teacher_logits_BC)
    num_classes = student_logits_BC.shape[-1]
    rows_shape = student_logits_BC.shape[:-1]
    if mask_B is None:
        keep_N = jnp.ones((math.prod(rows_shape),), bool)
    else:
        mask_B = jnp.asarray(mask_B)
        if mask_B.shape != rows_shape:
            raise ValueError(f"mask shape {mask_B.shape} does not match rows shape {rows_shape}")
        keep_N = mask_B.reshape(-1).astype(bool)
    y_s_NC = jax.nn.softmax(student_logits_BC.reshape(-1, num_classes) / temperature, axis=-1)
    y_t_NC = jax.nn.softmax(teacher_logits_BC.reshape(-1, num_classes) / temperature, axis=-1)

    # Inter-class: Pearson over classes, per row.
    def center_rows(y_NC):
        return y_NC - jnp.mean(y_NC, axis=-1, keepdims=True)

    inter_N = 1.0 - _cosine(center_rows(y_s_NC), center_rows(y_t_NC), axis=-1)
    inter = masked_mean(inter_N, keep_N)

    # Intra-class: Pearson over the kept rows, per class. Masked rows are zeroed with
    # `where` (not multiplied by 0) so garbage in padded rows cannot leak.
    keep_N1 = keep_N[:, None]
    count = jnp.maximum(jnp.sum(keep_N), 1).astype(y_s_NC.dtype)

    def center_columns(y_NC):
        y_NC = jnp.where(keep_N1, y_NC, 0.0)
        mean_1C = jnp.sum(y_NC, axis=0, keepdims=True) / count
        return jnp.where(keep_N1, y_NC - mean_1C, 0.0)

    intra_C = 1.0 - _cosine(center_columns(y_s_NC), center_columns(y_t_NC), axis=0)
    intra = jnp.where(jnp.any(keep_N), jnp.mean(intra_C), 0.0)
    return temperature**2 * (beta * inter + gamma * intra)


# ---------------------------------------------------------------------------
# LS-KD.
# ---------------------------------------------------------------------------


def standardize_logits(logits_BC: jax.Array) -> jax.Array:
    """Z-scores each row: `(z - mean(z)) / (std(z) + 1e-7)` over the last axis.

    As in the LS-KD reference code (`normalize` in sunshangquan/logit-standardization-KD),
    `std` is PyTorch's default, Bessel-corrected (divides by `C - 1`). A constant row
    maps to zeros, with a finite gradient.

    Args:
      logits_BC: class scores, shape `[..., C]` with `C >= 2`.

    Returns:
      The standardized scores, same shape, at least float32.
    """
    logits_BC = to_float32(logits_BC)
    num_classes = logits_BC.shape[-1]
    if num_classes < 2:
        raise ValueError(f"logit standardization needs at least 2 classes, got {num_classes}")
    centered_BC = logits_BC - jnp.mean(logits_BC, axis=-1, keepdims=True)
    variance_B1 = jnp.sum(centered_BC**2, axis=-1, keepdims=True) / (num_classes - 1)
    return centered_BC / (_safe_sqrt(variance_B1) + _LSKD_EPS)


def lskd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 2.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Logit-standardized KD: `kd_loss` on z-scored logits (Sun et al., CVPR 2024).

    "Logit Standardization in Knowledge Distillation", arXiv:2403.01427, Algorithm 1:
    each row of student and teacher logits is z-scored (`standardize_logits`), then
    `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))` is averaged over the batch, `T`
    being the paper's "base temperature". The loss is invariant to any per-row affine map
    `a * z + b` (`a > 0`) of either side's logits (up to the `1e-7` in the denominator).
    Default `T = 2` is the base temperature of the official CIFAR-100 runs
    (`--logit-stand --base-temp 2 --kd-weight 9`; a few pairs use 3); the weight 9 on
    this term (with CE weight 1 in that code's KD config; their ImageNet KD config
    differs) belongs to the caller's loss weights, not to this function.

    Args:
      student_logits_BC: student class scores, shape `[B, C]` (extra leading axes
        allowed).
      teacher_logits_BC: teacher class scores, same shape (no gradient reaches them).
      temperature: base temperature `T > 0`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar.
    """
    student_logits_BC, teacher_logits_BC = _prepare(student_logits_BC, teacher_logits_BC)
    return kd_loss(
        standardize_logits(student_logits_BC),
        standardize_logits(teacher_logits_BC),
        temperature,
        mask_B,
    )


# ---------------------------------------------------------------------------
# Divergences for language models.
# ---------------------------------------------------------------------------


def reverse_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Reverse KL: batch mean of `T^2 * KL(p_s || p_t)`, `p = softmax(z / T)`.

    The mode-seeking divergence of MiniLLM (Gu et al., ICLR 2024) and GKD (Agarwal et
    al., ICLR 2024); the per-token loss is `sum_c p_s,c * (log p_s,c -
    log p_t,c)`. The gradient flows through both `p_s` factors (the weights and the log),
    never into the teacher.

    Args:
      student_logits_BC: student scores, shape `[B, C]` (e.g. `[B, L, V]` for tokens).
      teacher_logits_BC: teacher scores, same shape (no gradient reaches them).
      temperature: softmax temperature `T > 0` (default 1: the papers' loss); may be
        traced.
      mask_B: optional boolean or 0/1 mask over rows (tokens); only kept rows are
        averaged.

    Returns:
      A float32 scalar.
    """
    log_p_s_BC, log_p_t_BC = _log_probs(student_logits_BC, teacher_logits_BC, temperature)
    return masked_mean(temperature**2 * _kl_B(log_p_s_BC, log_p_t_BC), mask_B)


def gjsd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024).

    "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
    arXiv:2306.13649, its generalized JSD: with `P = p_t` (teacher), `Q = p_s` (student)
    and `p = softmax(z / T)`,

        JSD(beta)(P || Q) = beta * KL(P || M) + (1 - beta) * KL(Q || M),
        M = beta * P + (1 - beta) * Q,

    times `T^2`, averaged over rows. `beta` weighs the teacher side, as in the paper's
    definition. The default `beta = 0.5` is the usual, symmetric JSD (at most `log 2`
    per row before the `T^2` factor). The divergence vanishes at both ends, but
    `JSD(beta) / beta -> KL(P || Q)` (forward KL, `kd_loss`) as `beta -> 0` and
    `JSD(beta) / (1 - beta) -> KL(Q || P)` (reverse KL) as `beta -> 1`; use `kd_loss` /
    `reverse_kl_loss` for the endpoints, hence `beta` must be in `(0, 1)`. Gradients
    flow through `Q` and through `M`.

    Args:
      student_logits_BC: student scores, shape `[B, C]` (e.g. `[B, L, V]` for tokens).
      teacher_logits_BC: teacher scores, same shape (no gradient reaches them).
      temperature: softmax temperature `T > 0`; may be traced.
      beta: interpolation weight of the teacher in `M`, in `(0, 1)`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar.

    Raises:
      ConfigError: a concrete `beta` outside `(0, 1)`.
    """
    _check_fraction("gjsd beta", beta, low_open=True)
    log_p_s_BC, log_p_t_BC = _log_probs(student_logits_BC, teacher_logits_BC, temperature)
    # KL(P || M) with M = beta P + (1 - beta) Q, and KL(Q || M) with M = (1 - beta) Q + beta P.
    kl_teacher_B = _kl_to_mixture_B(log_p_t_BC, log_p_s_BC, beta)
    kl_student_B = _kl_to_mixture_B(log_p_s_BC, log_p_t_BC, 1.0 - beta)
    jsd_B = beta * kl_teacher_B + (1.0 - beta) * kl_student_B
    return masked_mean(temperature**2 * jsd_B, mask_B)


def tvd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Total variation distance: batch mean of `T^2 * 0.5 * sum_c |p_t,c - p_s,c|`.

    The TVD objective of f-distill (Wen et al., "f-Divergence Minimization for
    Sequence-Level Knowledge Distillation", ACL 2023) and DistiLLM's `tv_distance`
    baseline; bounded in `[0, T^2]`. Its gradient is that of `|x|` (a subgradient at ties).

    Args:
      student_logits_BC: student scores, shape `[B, C]` (e.g. `[B, L, V]` for tokens).
      teacher_logits_BC: teacher scores, same shape (no gradient reaches them).
      temperature: softmax temperature `T > 0`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar.
    """
    log_p_s_BC, log_p_t_BC = _log_probs(student_logits_BC, teacher_logits_BC, temperature)
    tvd_B = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p_t_BC) - jnp.exp(log_p_s_BC)), axis=-1)
    return masked_mean(temperature**2 * tvd_B, mask_B)


def skew_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    skew: float = 0.1,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """DistiLLM's skew KL: batch mean of `T^2 * KL(p_t || skew * p_t + (1 - skew) * p_s)`.

    "DistiLLM: Towards Streamlined Distillation for Large Language Models", Ko et al.,
    ICML 2024, arXiv:2402.03898: the alpha-skew KL (SKL) with `alpha = skew`, default
    `alpha = 0.1` as in the paper and its code (`skewed_forward_kl(..., lam=0.1)`). The
    reference code drops the teacher entropy (a constant with the same gradient); here the
    full KL is returned, so it is 0 when student and teacher agree. `skew = 0` is forward
    KL (`kd_loss`). Gradients flow through the student inside the mixture.

    Args:
      student_logits_BC: student scores, shape `[B, C]` (e.g. `[B, L, V]` for tokens).
      teacher_logits_BC: teacher scores, same shape (no gradient reaches them).
      temperature: softmax temperature `T > 0`; may be traced.
      skew: teacher weight in the mixture, in `[0, 1)`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar.

    Raises:
      ConfigError: a concrete `skew` outside `[0, 1)`.
    """
    _check_fraction("skew_kl skew", skew, low_open=False)
    log_p_s_BC, log_p_t_BC = _log_probs(student_logits_BC, teacher_logits_BC, temperature)
    kl_B = _kl_to_mixture_B(log_p_t_BC, log_p_s_BC, skew)
    return masked_mean(temperature**2 * kl_B, mask_B)


def skew_reverse_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    skew: float = 0.1,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """DistiLLM's skew reverse KL: mean of `T^2 * KL(p_s || skew * p_s + (1 - skew) * p_t)`.

    Ko et al., ICML 2024, arXiv:2402.03898: the alpha-skew reverse KL (SRKL) with
    `alpha = skew`, default `alpha = 0.1` as in the paper and its code
    (`skewed_reverse_kl(..., lam=0.1)`, mixture `(1 - lam) * p_t + lam * p_s`).
    `skew = 0` is `reverse_kl_loss`. Gradients flow through the student in both
    arguments.

    Args:
      student_logits_BC: student scores, shape `[B, C]` (e.g. `[B, L, V]` for tokens).
      teacher_logits_BC: teacher scores, same shape (no gradient reaches them).
      temperature: softmax temperature `T > 0`; may be traced.
      skew: student weight in the mixture, in `[0, 1)`; may be traced.
      mask_B: optional boolean or 0/1 mask over rows; only kept rows are averaged.

    Returns:
      A float32 scalar.

    Raises:
      ConfigError: a concrete `skew` outside `[0, 1)`.
    """
    _check_fraction("skew_reverse_kl skew", skew, low_open=False)
    log_p_s_BC, log_p_t_BC = _log_probs(student_logits_BC, teacher_logits_BC, temperature)
    kl_B = _kl_to_mixture_B(log_p_s_BC, log_p_t_BC, skew)
    return masked_mean(temperature**2 * kl_B, mask_B)
