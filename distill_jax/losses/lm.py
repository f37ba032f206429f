"""The sequence (LM) family: token-level divergences over a vocabulary, in vocab chunks.

Each loss compares, at every position that counts, the teacher's and the student's
next-token distributions `p = softmax(t / T)` (teacher) and `q = softmax(s / T)`
(student) over a vocabulary of `V` tokens, and averages over the kept positions (a token
mean over the whole batch, as TRL's `GKDTrainer` and DistiLLM do). Inputs are logits
`(B, T, V)` with a mask `(B, T)`, or flattened `(N, V)` with a mask `(N,)`; the mask is 0
on padding and prompt tokens. Like every loss of this package the result is multiplied by
`T^2` (Hinton et al. 2015; at the usual LM temperature `T = 1` it is exactly the papers'
per-token divergence; TRL does not scale by `T^2`, so at `T != 1` TRL's loss is ours
divided by `T^2`).

Divergences (`DIVERGENCES`), per position, with `P` the teacher and `Q` the student:

- `forward_kl`: `KL(P || Q)`, mean-seeking (supervised KD).
- `reverse_kl`: `KL(Q || P)`, mode-seeking (MiniLLM, GKD).
- `jsd`: the generalized JSD of GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649, Eq. 1):
  `beta * KL(P || M) + (1 - beta) * KL(Q || M)`, `M = beta * P + (1 - beta) * Q`. The
  convention is TRL's current `GKDTrainer.generalized_jsd_loss`
  (huggingface/trl `trl/experimental/gkd/gkd_trainer.py`, lines 279-298 at commit
  f2cd577, 2026; `beta` documented in `gkd_config.py` lines 35-37): `beta = 0` is exactly
  the forward KL `KL(P || Q)` and `beta = 1` exactly the reverse KL `KL(Q || P)` (explicit
  cases there and here; the mixture formula itself vanishes at both ends, and
  `JSD(beta) / beta -> KL(P || Q)` as `beta -> 0`, `JSD(beta) / (1 - beta) -> KL(Q || P)`
  as `beta -> 1`). TRL had the mixture weights swapped (`M = beta * Q + (1 - beta) * P`)
  until PR #3043 (commit b55d9f0, March 2025), which introduced these endpoints.
- `skew_kl`: DistiLLM's alpha-skew KL (Ko et al., ICML 2024, arXiv:2402.03898),
  `KL(P || a * P + (1 - a) * Q)` with `a = skew` (default 0.1 as in the paper and its
  `skewed_forward_kl(lam=0.1)`); `a = 0` is the forward KL, `a -> 1` gives 0. DistiLLM's
  code drops the teacher's entropy (same gradient); the full KL here is 0 when `P == Q`.
- `skew_reverse_kl`: `KL(Q || a * Q + (1 - a) * P)` (DistiLLM's `skewed_reverse_kl`).
- `tvd`: total variation `0.5 * sum_v |P_v - Q_v|`, in `[0, 1]`.

Mixtures are never formed in probability space: `KL(P || w P + (1 - w) Q) = -sum_v P_v *
logaddexp(log w, log(1 - w) + log Q_v - log P_v)` (as in `losses/logit.py`).

**What is materialised.** The logits are read in vocabulary chunks of `chunk_size`
columns (`lax.scan` over `dynamic_slice`s, the remainder as one last static slice):
one pass computes the two log-normalisers `logsumexp(x / T)` (a running `logaddexp`),
a second sums the divergence's terms chunk by chunk. Each chunk is cast to float32 (or
kept float64) inside the loop, so the float32 temporaries are `(N, chunk_size)`, never
`(N, V)`; the carried state is `(N,)`. The loop bodies are `jax.checkpoint`-ed: the
backward pass recomputes a chunk's terms instead of storing them, so a gradient holds the
inputs, the `(N, V)` gradient, one `(N, V)` float32 accumulator of it and chunk-sized
temporaries, not several full-size float32 copies. XLA:CPU's memory analysis of the JSD's
gradient at N = 256 tokens, V = 49,152, chunks of 4096: temporaries of 1.17 full-size
copies; unchunked, 1 to 6 copies depending on how XLA fuses it (6 at N = 512);
`tests/test_lm_losses.py` checks the chunked bound.
`chunk_size=None` (or `>= V`) is one chunk: the same code, unchunked.

**Top-k teacher** (`lm_topk_loss`): an offline cache holds per token the teacher's `k`
largest values and their token ids. Two variants:

- renormalised (`rest=False`): `P_k = softmax(v_k / T)` over the `k` ids, compared with
  the student's full-vocabulary `log Q` at those ids, `sum_k P_k (log P_k - log Q_{i_k})`:
  the convention of `kd.topk_kd_loss` (it also pulls the student's mass into the top-k
  set). Defined for the forward KL only (the other divergences weight by `Q`, which is
  not a distribution on the `k` ids).
- rest bucket (`rest=True`): `k + 1` buckets on both sides: the teacher's `k`
  probabilities and its remaining mass `1 - sum_k P_k`, against the student's
  probabilities at the `k` ids and its mass on every other token (a masked log-sum-exp
  over the vocabulary, not `1 - sum`). Every divergence applies. The values must be the
  teacher's log-probabilities (`log_softmax` of its logits, which is what an LM cache
  should store) at `T = 1`: the remaining mass at another temperature is not known from
  the top k. A rounded cache can claim more than all the mass; the teacher's rest bucket
  is then floored at `REST_FLOOR` (the top k scaled to `1 - REST_FLOOR`) so reverse-type
  divergences stay finite.

With `k = V` both variants equal the full-logit loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError
from distill_jax.losses.base import masked_mean, to_float32

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
#: Default vocabulary chunk: (N, 4096) float32 temporaries (8 MiB for N = 512 tokens).
CHUNK_SIZE = 4096
#: Smallest teacher mass of the rest bucket (top-k variant with `rest=True`).
REST_FLOOR = 1e-6


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------


def _concrete(value) -> float | None:
    """`value` as a Python float, or None when it is traced (a schedule)."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def check_hyperparameters(
    *,
    divergence: str = "forward_kl",
    temperature: float | jax.Array = 1.0,
    beta: float | jax.Array = 0.5,
    skew: float | jax.Array = 0.1,
    chunk_size: int | None = CHUNK_SIZE,
    where: str = "lm loss",
) -> None:
    """Raises a one-line ConfigError for a bad hyperparameter (traced values pass).

    Args:
        divergence: one of `DIVERGENCES`.
        temperature: must be > 0.
        beta: the JSD's teacher weight, in `[0, 1]` (0 / 1: forward / reverse KL).
        skew: DistiLLM's skew `alpha`, in `[0, 1)` (1 would make the loss identically 0).
        chunk_size: a positive int, or None for one chunk.
        where: the config key or loss name to put in the message.
    """
    if divergence not in DIVERGENCES:
        raise ConfigError(
            f"{where}: unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}"
        )
    t = _concrete(temperature)
    if t is not None and not (t > 0 and math.isfinite(t)):
        raise ConfigError(f"{where}: temperature must be > 0, got {t}")
    b = _concrete(beta)
    if b is not None and not 0.0 <= b <= 1.0:
        raise ConfigError(
            f"{where}: beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {b}"
        )
    a = _concrete(skew)
    if a is not None and not 0.0 <= a < 1.0:
        raise ConfigError(f"{where}: skew must be in [0, 1), got {a}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    ):
        raise ConfigError(
            f"{where}: chunk_size must be a positive integer or None, got {chunk_size!r}"
        )


# ---------------------------------------------------------------------------
# Pointwise terms (summed over the vocabulary).
# ---------------------------------------------------------------------------


def _kl_to_mixture(log_p: jax.Array, log_q: jax.Array, w) -> jax.Array:
    """Terms of `KL(p || w p + (1 - w) q)`: `-p * log(w + (1 - w) q / p)`, elementwise."""
    log_ratio = jnp.logaddexp(jnp.log(w), jnp.log1p(-w) + (log_q - log_p))
    return -jnp.exp(log_p) * log_ratio


def _terms(divergence: str, log_p: jax.Array, log_q: jax.Array, beta, skew) -> jax.Array:
    """Elementwise terms whose sum over the vocabulary is the divergence (P: teacher).

    `log_p` / `log_q` are finite log-probabilities of the teacher / student. The JSD's
    endpoints and a concrete `skew = 0` dispatch to the plain KLs here, in Python.
    """
    if divergence == "jsd":
        b = _concrete(beta)
        if b == 0.0:
            divergence = "forward_kl"
        elif b == 1.0:
            divergence = "reverse_kl"
        else:
            return beta * _kl_to_mixture(log_p, log_q, beta) + (1.0 - beta) * _kl_to_mixture(
                log_q, log_p, 1.0 - beta
            )
    if divergence in ("skew_kl", "skew_reverse_kl") and _concrete(skew) == 0.0:
        divergence = "forward_kl" if divergence == "skew_kl" else "reverse_kl"
    if divergence == "forward_kl":
        return jnp.exp(log_p) * (log_p - log_q)
    if divergence == "reverse_kl":
        return jnp.exp(log_q) * (log_q - log_p)
    if divergence == "skew_kl":
        return _kl_to_mixture(log_p, log_q, skew)
    if divergence == "skew_reverse_kl":
        return _kl_to_mixture(log_q, log_p, skew)
    if divergence == "tvd":
        return 0.5 * jnp.abs(jnp.exp(log_p) - jnp.exp(log_q))
    raise ConfigError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")


# ---------------------------------------------------------------------------
# The vocabulary loop.
# ---------------------------------------------------------------------------


def _fold_vocab(
    body: Callable[..., jax.Array | tuple],
    init,
    arrays_NV: Sequence[jax.Array],
    chunk_size: int | None,
):
    """`carry = body(carry, start, *chunks_NC)` over the vocabulary in chunks.

    The `n = V // chunk_size` full chunks run in a `lax.scan` (chunks cut by
    `dynamic_slice` inside the checkpointed body, so nothing chunk-sized is stored for
    the backward pass but the scan's `(N,)` carries), and the remainder as one static
    slice. `start` is the chunk's first vocabulary index (traced in the scan).
    """
    vocab = arrays_NV[0].shape[-1]
    size = vocab if chunk_size is None else min(chunk_size, vocab)
    n_full, rem = divmod(vocab, size)
    carry = init
    if n_full == 1 and rem == 0:  # one chunk: plain, unchunked code
        return body(carry, 0, *arrays_NV)
    if n_full == 1:
        carry = jax.checkpoint(body)(carry, 0, *[a[:, :size] for a in arrays_NV])
    elif n_full > 1:

        def step(carry, i, *arrays):
            start = i * size
            chunks = [jax.lax.dynamic_slice_in_dim(a, start, size, axis=-1) for a in arrays]
            return body(carry, start, *chunks)

        step = jax.checkpoint(step, prevent_cse=False)
        carry, _ = jax.lax.scan(
            lambda c, i: (step(c, i, *arrays_NV), None), carry, jnp.arange(n_full)
        )
    if rem:
        start = n_full * size
        carry = jax.checkpoint(body)(carry, start, *[a[:, start:] for a in arrays_NV])
    return carry


def _flatten(x: jax.Array, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{what} must be (N, V) or (B, T, V), got shape {x.shape}")
    return x.reshape(-1, x.shape[-1])


def log_normalizers(
    logits_NV: Sequence[jax.Array] | jax.Array,
    temperature: float | jax.Array = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
) -> list[jax.Array]:
    """`logsumexp(x / T)` over the last axis of each `(N, V)` array, in vocab chunks.

    Args:
        logits_NV: one array or several of the same shape (read in the same loop).
        temperature: `T > 0`.
        chunk_size: vocabulary columns per chunk (None: one chunk).

    Returns:
        A list of `(N,)` arrays (float32, or float64 for float64 inputs).
    """
    arrays = [logits_NV] if not isinstance(logits_NV, list | tuple) else list(logits_NV)
    dtype = to_float32(arrays[0][:0, :0]).dtype
    n = arrays[0].shape[0]

    def body(carry, start, *chunks):
        del start
        return tuple(
            jnp.logaddexp(c, jax.nn.logsumexp(to_float32(x) / temperature, axis=-1))
            for c, x in zip(carry, chunks, strict=True)
        )

    init = tuple(jnp.full((n,), -jnp.inf, dtype) for _ in arrays)
    return list(_fold_vocab(body, init, arrays, chunk_size))


def lm_divergence(
    student_logits_BTV: jax.Array,
    teacher_logits_BTV: jax.Array,
    divergence: str = "forward_kl",
    *,
    temperature: float | jax.Array = 1.0,
    beta: float | jax.Array = 0.5,
    skew: float | jax.Array = 0.1,
    chunk_size: int | None = CHUNK_SIZE,
) -> jax.Array:
    """The divergence between teacher and student at every position, in vocab chunks.

    Not scaled by `T^2` and not reduced (the losses below do both). See the module
    docstring for the divergences, their conventions and what is materialised. The
    teacher's logits pass through `stop_gradient`.

    Args:
        student_logits_BTV: student logits `(B, T, V)` or `(N, V)`, any float dtype.
        teacher_logits_BTV: teacher logits, same shape.
        divergence: one of `DIVERGENCES`.
        temperature: `T > 0`; may be traced.
        beta: the JSD's teacher weight in `[0, 1]` (concrete at 0 and 1).
        skew: the skew KLs' `alpha` in `[0, 1)`.
        chunk_size: vocabulary columns per chunk (None: unchunked).

    Returns:
        `(B, T)` (or `(N,)`) per-position values, float32 (float64 for float64 inputs).
    """
    check_hyperparameters(
        divergence=divergence,
        temperature=temperature,
        beta=beta,
        skew=skew,
        chunk_size=chunk_size,
    )
    student_logits_BTV = jnp.asarray(student_logits_BTV)
    teacher_logits_BTV = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BTV))
    if student_logits_BTV.shape != teacher_logits_BTV.shape:
        raise ValueError(
            f"student logits shape {student_logits_BTV.shape} does not match teacher "
            f"logits shape {teacher_logits_BTV.shape}"
        )
    lead = student_logits_BTV.shape[:-1]
    s_NV = _flatten(student_logits_BTV, "student logits")
    t_NV = _flatten(teacher_logits_BTV, "teacher logits")
    lse_s_N, lse_t_N = log_normalizers([s_NV, t_NV], temperature, chunk_size)

    def body(acc_N, start, s_NC, t_NC):
        del start
        log_q_NC = to_float32(s_NC) / temperature - lse_s_N[:, None]
        log_p_NC = to_float32(t_NC) / temperature - lse_t_N[:, None]
        return acc_N + jnp.sum(_terms(divergence, log_p_NC, log_q_NC, beta, skew), axis=-1)

    total_N = _fold_vocab(body, jnp.zeros_like(lse_s_N), [s_NV, t_NV], chunk_size)
    return total_N.reshape(lead)


# ---------------------------------------------------------------------------
# Losses (registered in `losses.LOSSES` as lm_*).
# ---------------------------------------------------------------------------


def _loss(divergence, student, teacher, mask, temperature, chunk_size, **kw) -> jax.Array:
    values = lm_divergence(
        student, teacher, divergence, temperature=temperature, chunk_size=chunk_size, **kw
    )
    return masked_mean(temperature**2 * values, mask)


_ARGS_DOC = """
    Args:
        student_logits_BC: student logits `(B, T, V)` (or `(N, V)`); the objective's name
            for them (`C` = the vocabulary `V`).
        teacher_logits_BC: teacher logits, same shape (no gradient reaches them).
        temperature: `T > 0` (default 1, the papers' loss); may be traced.
        chunk_size: vocabulary columns per chunk (None: one chunk).
        topk_rest: only with a top-k teacher cache: the rest-bucket variant
            (`lm_topk_loss`, `rest=True`); ignored with full teacher logits.
        mask_B: `(B, T)` (or `(N,)`) 0/1 mask of the positions that count.

    Returns:
        A float32 scalar: the mean over kept positions of `T^2 *` the divergence.
"""


def lm_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Forward KL `KL(p_T || p_S)` per token (supervised KD of LMs), token mean."""
    del topk_rest
    return _loss(
        "forward_kl", student_logits_BC, teacher_logits_BC, mask_B, temperature, chunk_size
    )


def lm_reverse_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Reverse KL `KL(p_S || p_T)` per token (MiniLLM, GKD), token mean."""
    del topk_rest
    return _loss(
        "reverse_kl", student_logits_BC, teacher_logits_BC, mask_B, temperature, chunk_size
    )


def lm_jsd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """GKD's generalized JSD(beta) per token, TRL's convention, token mean.

    `beta * KL(P || M) + (1 - beta) * KL(Q || M)`, `M = beta P + (1 - beta) Q`, `P` the
    teacher; `beta = 0` is exactly the forward KL, `beta = 1` exactly the reverse KL
    (module docstring). `beta` in `[0, 1]` (ConfigError otherwise).
    """
    del topk_rest
    return _loss(
        "jsd", student_logits_BC, teacher_logits_BC, mask_B, temperature, chunk_size, beta=beta
    )


def lm_skew_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    skew: float = 0.1,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """DistiLLM's skew KL `KL(P || skew P + (1 - skew) Q)` per token, token mean."""
    del topk_rest
    return _loss(
        "skew_kl", student_logits_BC, teacher_logits_BC, mask_B, temperature, chunk_size, skew=skew
    )


def lm_skew_reverse_kl_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    skew: float = 0.1,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """DistiLLM's skew reverse KL `KL(Q || skew Q + (1 - skew) P)` per token, token mean."""
    del topk_rest
    return _loss(
        "skew_reverse_kl",
        student_logits_BC,
        teacher_logits_BC,
        mask_B,
        temperature,
        chunk_size,
        skew=skew,
    )


def lm_tvd_loss(
    student_logits_BC: jax.Array,
    teacher_logits_BC: jax.Array,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    topk_rest: bool = False,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """Total variation `0.5 * sum_v |P_v - Q_v|` per token (in [0, 1]), token mean."""
    del topk_rest
    return _loss("tvd", student_logits_BC, teacher_logits_BC, mask_B, temperature, chunk_size)


for _fn in (
    lm_kl_loss,
    lm_reverse_kl_loss,
    lm_jsd_loss,
    lm_skew_kl_loss,
    lm_skew_reverse_kl_loss,
    lm_tvd_loss,
):
    _fn.__doc__ += _ARGS_DOC

#: Registered name -> (divergence, full-logit loss); `losses.LOSSES` holds the losses.
LM_LOSSES: dict[str, tuple[str, Callable[..., jax.Array]]] = {
    "lm_kl": ("forward_kl", lm_kl_loss),
    "lm_reverse_kl": ("reverse_kl", lm_reverse_kl_loss),
    "lm_jsd": ("jsd", lm_jsd_loss),
    "lm_skew_kl": ("skew_kl", lm_skew_kl_loss),
    "lm_skew_reverse_kl": ("skew_reverse_kl", lm_skew_reverse_kl_loss),
    "lm_tvd": ("tvd", lm_tvd_loss),
}


# ---------------------------------------------------------------------------
# Top-k teacher.
# ---------------------------------------------------------------------------


def _topk_mask_NC(indices_NK: jax.Array, start, width: int) -> jax.Array:
    """`(N, width)` bool: which columns `start .. start + width` are among a row's ids."""
    n = indices_NK.shape[0]
    local_NK = indices_NK - start
    inside_NK = (local_NK >= 0) & (local_NK < width)
    # Out-of-chunk ids go to `width` (out of bounds) and are dropped, not wrapped.
    local_NK = jnp.where(inside_NK, local_NK, width)
    rows_NK = jnp.broadcast_to(jnp.arange(n)[:, None], local_NK.shape)
    return jnp.zeros((n, width), bool).at[rows_NK, local_NK].set(True, mode="drop")


def lm_topk_loss(
    student_logits_BC: jax.Array,
    teacher_values_BK: jax.Array,
    teacher_indices_BK: jax.Array,
    divergence: str = "forward_kl",
    rest: bool = False,
    beta: float = 0.5,
    skew: float = 0.1,
    temperature: float = 1.0,
    chunk_size: int | None = CHUNK_SIZE,
    mask_B: jax.Array | None = None,
) -> jax.Array:
    """A divergence against a teacher stored as its top-k values per token.

    See the module docstring for the two variants. `rest=False` is `kd.topk_kd_loss`'s
    convention (forward KL only) computed in vocab chunks; `rest=True` compares `k + 1`
    buckets and supports every divergence, at `T = 1`, with values that are the teacher's
    log-probabilities. Scaled by `T^2` and averaged over kept positions.

    Args:
        student_logits_BC: student logits `(B, T, V)` or `(N, V)`.
        teacher_values_BK: the teacher's top-k values `(B, T, K)` (float16 is fine):
            logits or log-probabilities for `rest=False`, log-probabilities for `rest=True`.
        teacher_indices_BK: their token ids, int, same shape, distinct per position.
        divergence: one of `DIVERGENCES`.
        rest: the rest-of-the-mass bucket variant.
        beta, skew: the JSD's and the skew KLs' parameters.
        temperature: `T > 0` (must be 1 with `rest=True`).
        chunk_size: vocabulary columns per chunk (None: one chunk).
        mask_B: `(B, T)` (or `(N,)`) mask of the positions that count.

    Returns:
        A float32 scalar.

    Raises:
        ConfigError: a bad hyperparameter, `k > V`, the renormalised variant with a
            divergence other than the forward KL, or `rest=True` with `T != 1`.
    """
    check_hyperparameters(
        divergence=divergence,
        temperature=temperature,
        beta=beta,
        skew=skew,
        chunk_size=chunk_size,
        where="lm top-k loss",
    )
    values_NK = to_float32(jax.lax.stop_gradient(_flatten(teacher_values_BK, "top-k values")))
    indices_NK = _flatten(teacher_indices_BK, "top-k indices")
    s_NV = _flatten(student_logits_BC, "student logits")
    lead = jnp.shape(student_logits_BC)[:-1]
    n, vocab = s_NV.shape
    k = values_NK.shape[-1]
    if values_NK.shape != indices_NK.shape or values_NK.shape[0] != n:
        raise ValueError(
            f"top-k teacher values {jnp.shape(teacher_values_BK)} / indices "
            f"{jnp.shape(teacher_indices_BK)} do not fit student logits "
            f"{jnp.shape(student_logits_BC)}"
        )
    if k > vocab:
        raise ConfigError(f"top-k teacher has k = {k} > the student's vocabulary V = {vocab}")
    if not rest:
        if divergence != "forward_kl":
            raise ConfigError(
                f"a renormalised top-k teacher supports the forward KL only, not {divergence}: "
                f"use the rest-bucket variant (topk_rest=True)"
            )
        (lse_s_N,) = log_normalizers([s_NV], temperature, chunk_size)
        s_NK = to_float32(jnp.take_along_axis(s_NV, indices_NK, axis=-1)) / temperature
        log_q_NK = s_NK - lse_s_N[:, None]
        log_p_NK = jax.nn.log_softmax(values_NK / temperature, axis=-1)
        values_N = jnp.sum(_terms("forward_kl", log_p_NK, log_q_NK, beta, skew), axis=-1)
        return masked_mean(temperature**2 * values_N.reshape(lead), mask_B)

    t = _concrete(temperature)
    if t is not None and t != 1.0:
        raise ConfigError(
            f"the rest-bucket top-k variant needs temperature 1 (the teacher's mass outside "
            f"its top k is only known at the cache's temperature), got {t}"
        )
    # Teacher: k log-probabilities and the rest, floored at REST_FLOOR.
    total_N = jax.nn.logsumexp(values_NK, axis=-1)
    if k == vocab:  # nothing outside: renormalise, no rest bucket
        log_p_NK = values_NK - total_N[:, None]
        log_p_rest_N = None
    else:
        cap = math.log1p(-REST_FLOOR)
        excess_N = jnp.maximum(total_N - cap, 0.0)
        log_p_NK = values_NK - excess_N[:, None]
        # log(1 - sum_k P_k), with sum_k P_k <= 1 - REST_FLOOR after the scaling.
        log_p_rest_N = jnp.log(-jnp.expm1(jnp.minimum(total_N, cap)))

    # Student: full log-normaliser and the log-sum-exp over the ids outside the top k.
    def body(carry, start, s_NC):
        lse_all_N, lse_rest_N = carry
        x_NC = to_float32(s_NC) / temperature
        in_topk_NC = _topk_mask_NC(indices_NK, start, x_NC.shape[-1])
        return (
            jnp.logaddexp(lse_all_N, jax.nn.logsumexp(x_NC, axis=-1)),
            jnp.logaddexp(
                lse_rest_N, jax.nn.logsumexp(jnp.where(in_topk_NC, -jnp.inf, x_NC), axis=-1)
            ),
        )

    dtype = to_float32(s_NV[:0, :0]).dtype
    init = (jnp.full((n,), -jnp.inf, dtype), jnp.full((n,), -jnp.inf, dtype))
    lse_all_N, lse_rest_N = _fold_vocab(body, init, [s_NV], chunk_size)
    s_NK = to_float32(jnp.take_along_axis(s_NV, indices_NK, axis=-1)) / temperature
    log_q_NK = s_NK - lse_all_N[:, None]
    values_N = jnp.sum(_terms(divergence, log_p_NK, log_q_NK, beta, skew), axis=-1)
    if log_p_rest_N is not None:
        log_q_rest_N = lse_rest_N - lse_all_N
        values_N = values_N + _terms(divergence, log_p_rest_N, log_q_rest_N, beta, skew)
    return masked_mean(temperature**2 * values_N.reshape(lead), mask_B)


# ---------------------------------------------------------------------------
# Next-token cross-entropy (the causal-LM task's loss), in vocab chunks.
# ---------------------------------------------------------------------------


def token_cross_entropy(
    logits_BTV: jax.Array,
    targets_BT: jax.Array,
    label_smoothing: float = 0.0,
    chunk_size: int | None = CHUNK_SIZE,
) -> jax.Array:
    """Per-position cross-entropy `-sum_v y_v log softmax(z)_v`, in vocab chunks.

    `y = (1 - eps) onehot(target) + eps / V` (`losses.task.cross_entropy`'s smoothing),
    i.e. `(1 - eps) * (lse - z_target) + eps * (lse - mean_v z_v)`. Positions whose
    target is outside `[0, V)` (-1: not a target) get the finite value of target 0;
    mask them out.

    Args:
        logits_BTV: logits `(B, T, V)` or `(N, V)`, any float dtype.
        targets_BT: int token ids, `logits.shape[:-1]`.
        label_smoothing: `eps` in `[0, 1)`.
        chunk_size: vocabulary columns per chunk (None: one chunk).

    Returns:
        `(B, T)` (or `(N,)`) values, float32 (float64 for float64 inputs).
    """
    check_hyperparameters(chunk_size=chunk_size, where="token cross-entropy")
    logits_BTV = jnp.asarray(logits_BTV)
    targets_BT = jnp.asarray(targets_BT)
    if targets_BT.shape != logits_BTV.shape[:-1]:
        raise ValueError(
            f"targets shape {targets_BT.shape} does not match logits shape {logits_BTV.shape}"
        )
    z_NV = _flatten(logits_BTV, "logits")
    vocab = z_NV.shape[-1]
    safe_N = jnp.where((targets_BT >= 0) & (targets_BT < vocab), targets_BT, 0).reshape(-1)
    dtype = to_float32(z_NV[:0, :0]).dtype
    n = z_NV.shape[0]

    def body(carry, start, z_NC):
        del start
        lse_N, total_N = carry
        x_NC = to_float32(z_NC)
        return (
            jnp.logaddexp(lse_N, jax.nn.logsumexp(x_NC, axis=-1)),
            total_N + jnp.sum(x_NC, axis=-1),
        )

    init = (jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype))
    lse_N, total_N = _fold_vocab(body, init, [z_NV], chunk_size)
    z_target_N = to_float32(jnp.take_along_axis(z_NV, safe_N[:, None], axis=-1)[:, 0])
    nll_N = lse_N - z_target_N
    if label_smoothing:
        nll_N = (1.0 - label_smoothing) * nll_N + label_smoothing * (lse_N - total_N / vocab)
    return nll_N.reshape(targets_BT.shape)


__all__ = [
    "CHUNK_SIZE",
    "DIVERGENCES",
    "LM_LOSSES",
    "REST_FLOOR",
    "check_hyperparameters",
    "lm_divergence",
    "lm_jsd_loss",
    "lm_kl_loss",
    "lm_reverse_kl_loss",
    "lm_skew_kl_loss",
    "lm_skew_reverse_kl_loss",
    "lm_topk_loss",
    "lm_tvd_loss",
    "log_normalizers",
    "token_cross_entropy",
]
