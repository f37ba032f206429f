"""Tests of the sequence (LM) family (`distill_jax.losses.lm`) against float64 NumPy.

The NumPy reference is written in probability / log space directly from the papers'
definitions (mixtures formed with `np.logaddexp`, not the library's ratio form) and never
calls the library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from distill_jax.errors import ConfigError
from distill_jax.losses import LOSSES, cross_entropy, topk_kd_loss
from distill_jax.losses.lm import (
    DIVERGENCES,
    LM_LOSSES,
    REST_FLOOR,
    lm_divergence,
    lm_jsd_loss,
    lm_kl_loss,
    lm_reverse_kl_loss,
    lm_skew_kl_loss,
    lm_topk_loss,
    lm_tvd_loss,
    token_cross_entropy,
)

B, T, V = 3, 5, 37  # V prime: most chunk sizes do not divide it
NAME = {div: name for name, (div, _) in LM_LOSSES.items()}
HPARAMS = {"jsd": {"beta": 0.3}, "skew_kl": {"skew": 0.2}, "skew_reverse_kl": {"skew": 0.2}}


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference.
# ---------------------------------------------------------------------------


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis from log-probabilities (terms with p = 0 are 0)."""
    p = np.exp(lp)
    return np.where(p > 0, p * (lp - lq), 0.0).sum(-1)


def np_divergence(div: str, lp, lq, beta=0.5, skew=0.1) -> np.ndarray:
    """Per-row divergence between teacher `p` and student `q` (log-probabilities)."""
    if div == "forward_kl" or (div == "jsd" and beta == 0):
        return np_kl(lp, lq)
    if div == "reverse_kl" or (div == "jsd" and beta == 1):
        return np_kl(lq, lp)
    if div == "jsd":
        lm = np.logaddexp(np.log(beta) + lp, np.log(1 - beta) + lq)
        return beta * np_kl(lp, lm) + (1 - beta) * np_kl(lq, lm)
    if div == "skew_kl":
        with np.errstate(divide="ignore"):
            lm = np.logaddexp(np.log(skew) + lp, np.log(1 - skew) + lq)
        return np_kl(lp, lm)
    if div == "skew_reverse_kl":
        with np.errstate(divide="ignore"):
            lm = np.logaddexp(np.log(skew) + lq, np.log(1 - skew) + lp)
        return np_kl(lq, lm)
    if div == "tvd":
        return 0.5 * np.abs(np.exp(lp) - np.exp(lq)).sum(-1)
    raise ValueError(div)


def np_masked_mean(values, mask) -> float:
    values = np.asarray(values, np.float64)
    if mask is None:
        return float(values.mean())
    mask = np.asarray(mask, bool)
    return float(np.where(mask, values, 0.0).sum() / max(mask.sum(), 1))


def np_loss(div, s, t, mask, temperature=1.0, **hp) -> float:
    lq = np_log_softmax(np.asarray(s, np.float64) / temperature)
    lp = np_log_softmax(np.asarray(t, np.float64) / temperature)
    return np_masked_mean(temperature**2 * np_divergence(div, lp, lq, **hp), mask)


def np_topk_rest(div, s, values, ids, **hp) -> np.ndarray:
    """k + 1 buckets: teacher log-probs at the ids and its rest; the student's alike."""
    s = np.asarray(s, np.float64)
    lq_full = np_log_softmax(s)
    lp_k = np.asarray(values, np.float64)
    total = np.exp(lp_k).sum(-1, keepdims=True)
    scale = np.minimum(1.0, (1 - REST_FLOOR) / total)  # the documented floor
    lp_k = lp_k + np.log(scale)
    lp_rest = np.log(1 - np.exp(lp_k).sum(-1, keepdims=True))
    lq_k = np.take_along_axis(lq_full, ids, -1)
    outside = np.ones_like(s, bool)
    np.put_along_axis(outside, ids, False, -1)
    q_rest = np.where(outside, np.exp(lq_full), 0.0).sum(-1, keepdims=True)
    lp = np.concatenate([lp_k, lp_rest], -1)
    lq = np.concatenate([lq_k, np.log(q_rest)], -1)
    return np_divergence(div, lp, lq, **hp)


# ---------------------------------------------------------------------------
# Fixtures.
# ---------------------------------------------------------------------------


def draw(seed=0, scale=3.0, shape=(B, T, V)):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=shape) * scale
    t = rng.normal(size=shape) * scale + 0.5 * s  # related, as a student and its teacher
    mask = rng.random(shape[:-1]) > 0.3
    mask[0] = False  # a fully masked sequence
    mask[1, 0] = True
    return np.float32(s), np.float32(t), mask


def loss_fn(div):
    return LOSSES[NAME[div]]


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def test_registered_by_name():
    assert set(LM_LOSSES) == {
        "lm_kl",
        "lm_reverse_kl",
        "lm_jsd",
        "lm_skew_kl",
        "lm_skew_reverse_kl",
        "lm_tvd",
    }
    for name, (_, fn) in LM_LOSSES.items():
        assert LOSSES[name] is fn


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_numpy(div, temperature):
    s, t, mask = draw(1)
    hp = HPARAMS.get(div, {})
    got = loss_fn(div)(s, t, temperature=temperature, chunk_size=8, mask_B=mask, **hp)
    want = np_loss(div, s, t, mask, temperature, **hp)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_extreme_logits(div):
    """Logits of +-1e3 (probabilities that underflow to exactly 0 in float32 and float64)."""
    s, t, mask = draw(2, scale=40.0)
    s[1, 1, :3] = [1e3, -1e3, 500.0]
    t[1, 1, 3:6] = [1e3, -1e3, -500.0]
    mask[1, 1] = True
    hp = HPARAMS.get(div, {})
    got = loss_fn(div)(s, t, chunk_size=8, mask_B=mask, **hp)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), np_loss(div, s, t, mask, **hp), rtol=1e-5)
    grad = jax.grad(lambda x: loss_fn(div)(x, t, chunk_size=8, mask_B=mask, **hp))(s)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("div", DIVERGENCES)
def test_fully_masked_batch_is_zero_and_flat_equals_BT(div):
    s, t, mask = draw(3)
    hp = HPARAMS.get(div, {})
    fn = loss_fn(div)
    assert float(fn(s, t, mask_B=np.zeros((B, T), bool), **hp)) == 0.0
    flat = fn(s.reshape(-1, V), t.reshape(-1, V), mask_B=mask.reshape(-1), **hp)
    np.testing.assert_allclose(float(flat), float(fn(s, t, mask_B=mask, **hp)), rtol=1e-6)
    # Padded positions holding garbage do not reach the value.
    s_bad = s.copy()
    s_bad[0] = np.nan
    np.testing.assert_allclose(
        float(fn(s_bad, t, mask_B=mask, **hp)), float(fn(s, t, mask_B=mask, **hp)), rtol=1e-6
    )


@pytest.mark.parametrize("div", DIVERGENCES)
def test_chunked_equals_unchunked(div):
    s, t, mask = draw(4)
    hp = HPARAMS.get(div, {})
    whole = float(loss_fn(div)(s, t, chunk_size=None, mask_B=mask, **hp))
    for chunk in (1, 5, 8, 16, 36, 37, 1000):  # 5, 8, 16, 36 do not divide V = 37
        got = float(loss_fn(div)(s, t, chunk_size=chunk, mask_B=mask, **hp))
        np.testing.assert_allclose(got, whole, rtol=2e-6, err_msg=f"chunk {chunk}")
    bf16 = loss_fn(div)(jnp.bfloat16(s), jnp.bfloat16(t), chunk_size=8, mask_B=mask, **hp)
    assert bf16.dtype == jnp.float32


def test_per_position_values():
    s, t, _ = draw(5)
    got = lm_divergence(s, t, "reverse_kl", temperature=2.0, chunk_size=6)
    assert got.shape == (B, T)
    want = np_divergence("reverse_kl", np_log_softmax(t / 2.0), np_log_softmax(s / 2.0))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Limits and invariants.
# ---------------------------------------------------------------------------


def test_jsd_endpoints_follow_trl():
    """TRL's GKDTrainer: beta = 0 is KL(teacher || student), beta = 1 KL(student || teacher)."""
    s, t, mask = draw(6)
    forward = float(lm_kl_loss(s, t, mask_B=mask))
    reverse = float(lm_reverse_kl_loss(s, t, mask_B=mask))
    assert forward != pytest.approx(reverse, rel=1e-3)  # the test can tell them apart
    assert float(lm_jsd_loss(s, t, beta=0.0, mask_B=mask)) == forward
    assert float(lm_jsd_loss(s, t, beta=1.0, mask_B=mask)) == reverse
    # The mixture formula approaches them, divided by its weight, near the ends (first
    # order in beta, with a large constant where p / q is large: float64, tiny beta).
    with jax.enable_x64(True):
        s64, t64 = np.float64(s), np.float64(t)
        eps = 1e-8
        near0 = float(lm_jsd_loss(s64, t64, beta=eps, mask_B=mask)) / eps
        near1 = float(lm_jsd_loss(s64, t64, beta=1 - eps, mask_B=mask)) / eps
    np.testing.assert_allclose(near0, np_loss("forward_kl", s, t, mask), rtol=1e-4)
    np.testing.assert_allclose(near1, np_loss("reverse_kl", s, t, mask), rtol=1e-4)
    # The symmetric JSD is at most log 2.
    assert 0 <= float(lm_jsd_loss(s, t, beta=0.5, mask_B=mask)) <= np.log(2)


def test_skew_limits():
    s, t, mask = draw(7)
    forward = float(lm_kl_loss(s, t, mask_B=mask))
    reverse = float(lm_reverse_kl_loss(s, t, mask_B=mask))
    assert float(lm_skew_kl_loss(s, t, skew=0.0, mask_B=mask)) == forward
    assert float(LOSSES["lm_skew_reverse_kl"](s, t, skew=0.0, mask_B=mask)) == reverse
    # skew -> 0 continuously (a traced skew takes the mixture formula), skew -> 1 gives 0.
    traced = jax.jit(lambda a: lm_skew_kl_loss(s, t, skew=a, mask_B=mask))
    np.testing.assert_allclose(float(traced(1e-6)), forward, rtol=1e-4)
    values = [float(lm_skew_kl_loss(s, t, skew=a, mask_B=mask)) for a in (0.1, 0.5, 0.9, 0.999)]
    assert all(a > b for a, b in zip([forward, *values], values, strict=False))
    assert values[-1] < 1e-4 * forward


@pytest.mark.parametrize("div", DIVERGENCES)
def test_zero_when_equal_and_nonnegative(div):
    hp = HPARAMS.get(div, {})
    s, _, mask = draw(8, scale=10.0)
    assert abs(float(loss_fn(div)(s, s, chunk_size=7, mask_B=mask, **hp))) < 1e-6
    for seed in range(5):
        s, t, mask = draw(100 + seed, scale=[0.1, 1, 5, 20, 60][seed])
        values = lm_divergence(s, t, div, chunk_size=7, **hp)
        assert np.all(np.asarray(values) >= -1e-6)


def test_tvd_in_unit_interval():
    s, t, mask = draw(9, scale=5.0)
    values = np.asarray(lm_divergence(s, t, "tvd", chunk_size=9))
    assert np.all((values >= 0) & (values <= 1 + 1e-6))
    # Disjoint supports: TVD -> 1.
    s1 = np.full((1, V), -1e3, np.float32)
    t1 = np.full((1, V), -1e3, np.float32)
    s1[0, 0], t1[0, 1] = 0.0, 0.0
    np.testing.assert_allclose(float(lm_tvd_loss(s1, t1)), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("div", DIVERGENCES)
def test_gradients_by_finite_differences(div):
    hp = HPARAMS.get(div, {})
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        s = jnp.asarray(rng.normal(size=(2, 2, 7)))
        t = jnp.asarray(rng.normal(size=(2, 2, 7)))
        mask = jnp.asarray([[1, 0], [1, 1]])
        fn = lambda x: loss_fn(div)(x, t, temperature=1.5, chunk_size=3, mask_B=mask, **hp)  # noqa: E731
        check_grads(fn, (s,), order=1, modes=["rev"], eps=1e-5)
        # No gradient reaches the teacher.
        g_t = jax.grad(lambda y: loss_fn(div)(s, y, chunk_size=3, mask_B=mask, **hp))(t)
        assert np.all(np.asarray(g_t) == 0)


@pytest.mark.parametrize("rest", [False, True])
def test_topk_gradients_by_finite_differences(rest):
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        s = jnp.asarray(rng.normal(size=(2, 2, 7)))
        values, ids = jax.lax.top_k(jax.nn.log_softmax(jnp.asarray(rng.normal(size=(2, 2, 7)))), 3)
        div = "jsd" if rest else "forward_kl"
        fn = lambda x: lm_topk_loss(x, values, ids, div, rest=rest, beta=0.3, chunk_size=3)  # noqa: E731
        check_grads(fn, (s,), order=1, modes=["rev"], eps=1e-5)


def test_chunked_gradient_holds_no_full_size_float32_copies():
    """XLA's memory analysis: the chunked gradient's temporaries are about one (N, V)
    array (the gradient's accumulator) plus chunks. (Unchunked, XLA:CPU plans 1 to 6
    full copies depending on the size: 6 for the JSD at N = 512, V = 49152.)"""
    n, vocab = 64, 8192
    full = n * vocab * 4
    spec = jax.ShapeDtypeStruct((n, vocab), jnp.float32)
    for loss in (lm_kl_loss, lm_jsd_loss):
        fn = jax.jit(jax.grad(lambda s, t, loss=loss: loss(s, t, chunk_size=1024)))
        analysis = fn.lower(spec, spec).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no memory analysis on this backend")
        assert analysis.temp_size_in_bytes < 1.5 * full, analysis.temp_size_in_bytes / full


# ---------------------------------------------------------------------------
# Top-k teacher.
# ---------------------------------------------------------------------------


def topk_of(t, k, log_probs=True):
    x = jax.nn.log_softmax(jnp.asarray(t)) if log_probs else jnp.asarray(t)
    values, ids = jax.lax.top_k(x, k)
    return np.asarray(values), np.asarray(ids)


def test_topk_with_k_equal_v_is_the_full_loss():
    s, t, mask = draw(13)
    values, ids = topk_of(t, V)
    full = float(lm_kl_loss(s, t, temperature=2.0, mask_B=mask))
    renorm = lm_topk_loss(s, values, ids, temperature=2.0, chunk_size=8, mask_B=mask)
    np.testing.assert_allclose(float(renorm), full, rtol=1e-5)
    shuffled = np.random.default_rng(0).permutation(V)  # any order of the ids
    renorm = lm_topk_loss(s, values[..., shuffled], ids[..., shuffled], mask_B=mask)
    np.testing.assert_allclose(float(renorm), float(lm_kl_loss(s, t, mask_B=mask)), rtol=1e-5)
    for div in DIVERGENCES:
        hp = HPARAMS.get(div, {})
        got = lm_topk_loss(s, values, ids, div, rest=True, chunk_size=8, mask_B=mask, **hp)
        want = loss_fn(div)(s, t, mask_B=mask, **hp)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-7, err_msg=div)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_topk_renormalised_is_topk_kd(k):
    s, t, mask = draw(14)
    values, ids = topk_of(t, k, log_probs=False)  # raw logits work for the renormalised
    got = lm_topk_loss(s, values, ids, temperature=2.0, chunk_size=5, mask_B=mask)
    want = topk_kd_loss(
        s.reshape(-1, V), values.reshape(-1, k), ids.reshape(-1, k), 2.0, mask.reshape(-1)
    )
    np.testing.assert_allclose(float(got), float(want), rtol=2e-5)
    # NumPy: sum_k p_k (log p_k - log q_{i_k}), p renormalised over the k ids.
    lp = np_log_softmax(values / 2.0)
    lq = np.take_along_axis(np_log_softmax(s / 2.0), ids, -1)
    want = np_masked_mean(4.0 * (np.exp(lp) * (lp - lq)).sum(-1), mask)
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("k", [1, 6])
def test_topk_rest_bucket_matches_numpy(div, k):
    s, t, mask = draw(15)
    values, ids = topk_of(t, k)
    hp = HPARAMS.get(div, {})
    want = np_masked_mean(np_topk_rest(div, s, values, ids, **hp), mask)
    for chunk in (None, 5, 8, 37):
        got = lm_topk_loss(s, values, ids, div, rest=True, chunk_size=chunk, mask_B=mask, **hp)
        np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-7, err_msg=f"{chunk}")
    # Cached as float16 (as the teacher cache stores values): still close.
    got16 = lm_topk_loss(s, np.float16(values), ids, div, rest=True, mask_B=mask, **hp)
    np.testing.assert_allclose(float(got16), want, rtol=2e-2, atol=1e-3)


def test_topk_rest_floor_keeps_reverse_kl_finite():
    """Values that claim all the mass (rounded cache): the rest bucket gets REST_FLOOR."""
    s, t, mask = draw(16)
    values, ids = topk_of(t, 6)
    values = values - np.log(np.exp(values).sum(-1, keepdims=True)) + 1e-3  # sum > 1
    got = lm_topk_loss(s, values, ids, "reverse_kl", rest=True, mask_B=mask)
    assert np.isfinite(float(got))
    want = np_masked_mean(np_topk_rest("reverse_kl", s, values, ids), mask)
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": -0.1}, "beta must be in \\[0, 1\\]"),
        ({"beta": 1.5}, "beta must be in \\[0, 1\\]"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": -8}, "chunk_size must be a positive integer"),
        ({"chunk_size": 2.5}, "chunk_size must be a positive integer"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    s, t, mask = draw(17)
    with pytest.raises(ConfigError, match=message):
        lm_jsd_loss(s, t, mask_B=mask, **kwargs)


def test_bad_skew_divergence_and_topk():
    s, t, mask = draw(18)
    for skew in (1.0, -0.1):
        with pytest.raises(ConfigError, match="skew must be in \\[0, 1\\)"):
            lm_skew_kl_loss(s, t, skew=skew)
    with pytest.raises(ConfigError, match="unknown divergence 'js'"):
        lm_divergence(s, t, "js")
    values, ids = topk_of(t, 4)
    with pytest.raises(ConfigError, match="k = 40 > the student's vocabulary V = 37"):
        lm_topk_loss(s, np.zeros((B, T, 40)), np.zeros((B, T, 40), int))
    with pytest.raises(ConfigError, match="forward KL only, not reverse_kl"):
        lm_topk_loss(s, values, ids, "reverse_kl")
    with pytest.raises(ConfigError, match="needs temperature 1"):
        lm_topk_loss(s, values, ids, "forward_kl", rest=True, temperature=2.0)
    with pytest.raises(ValueError, match="does not match teacher logits shape"):
        lm_kl_loss(s, t[:, :-1])


# ---------------------------------------------------------------------------
# Next-token cross-entropy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_token_cross_entropy(label_smoothing):
    s, _, _ = draw(19)
    targets = np.random.default_rng(0).integers(-1, V, size=(B, T))
    got = token_cross_entropy(s, targets, label_smoothing, chunk_size=8)
    lq = np_log_softmax(s)
    safe = np.maximum(targets, 0)
    onehot = np.eye(V)[safe]
    y = (1 - label_smoothing) * onehot + label_smoothing / V
    np.testing.assert_allclose(np.asarray(got), -(y * lq).sum(-1), rtol=1e-5)
    # The same as the classification task's cross-entropy on the target positions.
    keep = targets >= 0
    want = cross_entropy(s, targets, label_smoothing, mask_B=keep)
    np.testing.assert_allclose(
        float(jnp.sum(jnp.where(keep, got, 0)) / keep.sum()), float(want), rtol=1e-5
    )
