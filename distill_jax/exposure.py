"""What a served teacher exposes: the answer an outside copier gets for a query.

Distilling from a model's answers is how models are copied (model extraction). A served
teacher rarely returns its logits; it returns probabilities, the top few of them, a label,
rounded numbers, or a deliberately perturbed distribution (a defence). `distill.exposure`
names one of these levels, and the student is then trained on what that level lets a
copier see instead of on the teacher's logits (`teachers.ExposedTeacher`), so the cost of
each level can be measured (`experiments/exposure/`).

Levels (the exposed distribution `p'` from the teacher's `p = softmax(logits)`):

* `full`: `p` itself (equivalently the logits; nothing is hidden);
* `top:K`: the K largest probabilities; the copier knows the rest add up to
  `1 - sum(top K)` and spreads that evenly over the other classes;
* `label`: the top-1 class only (one-hot);
* `round:D`: every probability rounded to D decimals (half to even) and renormalised;
  classes that round to 0 get 0, and should every class round to 0 (D = 0 and no class
  above 0.5) the top-1 label is served;
* `noise:S` (a defence): the log-probabilities of every class but the top one get
  Gaussian noise of standard deviation S, are capped just below the top class's, and the
  result is renormalised, so the served top-1 (the label) never changes while the dark
  knowledge the other classes carry is blurred. The noise is a fixed function of the
  query (its example index), as a deterministic API would serve it: asking again gives
  the same answer, so averaging repeated queries does not remove it;
* `temperature:T` (a defence): `softmax(logits / T)`, flatter for T > 1, same top-1.

The student reads `log(max(p', 1e-30))` as the teacher's logits, so every logit loss
sees exactly `p'` at temperature 1 (zero probabilities become -69, a weight of 1e-30).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError

LEVELS = ("full", "top", "label", "round", "noise", "temperature")
"""Exposure level names; `top`, `round`, `noise` and `temperature` take `:value`."""

_FLOOR = 1e-30
_NOISE_SEED = 0x5EED


def parse(level: str, key: str = "distill.exposure") -> tuple[str, float]:
    """`"top:5"` -> `("top", 5.0)`; `"full"` -> `("full", 0.0)`.

    Raises:
        ConfigError: an unknown level, a missing or out-of-range value.
    """
    if not isinstance(level, str):
        raise ConfigError(f"{key} must be a string such as 'full' or 'top:5', got {level!r}")
    name, sep, value = level.partition(":")
    usage = (
        f"{key} = {level!r} is not an exposure level; use full, label, top:K (K >= 1), "
        f"round:D (D >= 0 decimals), noise:S (S > 0) or temperature:T (T > 0)"
    )
    if name not in LEVELS:
        raise ConfigError(usage)
    if name in ("full", "label"):
        if sep:
            raise ConfigError(usage)
        return name, 0.0
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(usage) from None
    integral = name in ("top", "round")
    if (integral and (number != int(number) or number < (1 if name == "top" else 0))) or (
        not integral and not number > 0  # NaN fails too
    ):
        raise ConfigError(usage)
    return name, number


def expose_probs(logits_BC: jax.Array, level: str, index_B: jax.Array | None = None) -> jax.Array:
    """The distribution `p'` a copier sees for the teacher's `logits_BC` (last axis: classes).

    Args:
        logits_BC: (B, ..., C) the teacher's logits (per example, or per token).
        level: an exposure level (`parse`).
        index_B: (B,) the queries' example indices (the `noise` level's randomness);
            zeros when None.

    Returns:
        (B, ..., C) float32 probabilities summing to 1 over the last axis.
    """
    name, value = parse(level)
    logits = logits_BC.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if name == "temperature":
        return jax.nn.softmax(logits / value, axis=-1)
    p = jax.nn.softmax(logits, axis=-1)
    if name == "full":
        return p
    top1 = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.float32)
    if name == "label":
        return top1
    if name == "top":
        k = min(int(value), num_classes)
        if k == num_classes:
            return p
        rank = jnp.argsort(jnp.argsort(-p, axis=-1), axis=-1)  # 0: the most likely class
        kept = jnp.where(rank < k, p, 0.0)
        rest = jnp.clip(1.0 - kept.sum(-1, keepdims=True), 0.0, 1.0) / (num_classes - k)
        return jnp.where(rank < k, kept, rest)
    if name == "round":
        scale = 10.0 ** int(value)
        rounded = jnp.round(p * scale) / scale
        rounded = jnp.where(rounded.sum(-1, keepdims=True) > 0, rounded, top1)
        return rounded / rounded.sum(-1, keepdims=True)
    # noise: perturb the non-top log-probabilities, keep the top class on top.
    if index_B is None:
        index_B = jnp.zeros(logits.shape[:1], jnp.int32)
    base = jax.random.PRNGKey(_NOISE_SEED)
    noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), logits.shape[1:]))(
        jnp.asarray(index_B).astype(jnp.uint32)
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    top_logp = jnp.max(logp, -1, keepdims=True)
    noisy = jnp.minimum(logp + value * noise, top_logp - 1e-3)
    noisy = jnp.where(top1 > 0, top_logp, noisy)
    return jax.nn.softmax(noisy, axis=-1)


def expose_logits(logits_BC: jax.Array, level: str, index_B: jax.Array | None = None) -> jax.Array:
    """`log p'` (floored at 1e-30): logits whose softmax is the exposed distribution."""
    if parse(level)[0] == "full":
        return logits_BC
    return jnp.log(jnp.maximum(expose_probs(logits_BC, level, index_B), _FLOOR))


__all__ = ["LEVELS", "expose_logits", "expose_probs", "parse"]
