"""Tests of the logit family (`distill_jax.losses.logit`) against NumPy and invariants."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from distill_jax.errors import ConfigError
from distill_jax.losses import (
    LOSSES,
    dist_loss,
    dkd_loss,
    dkd_terms,
    gjsd_loss,
    kd_loss,
    lskd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    standardize_logits,
    tvd_loss,
)

B, C = 8, 10


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference (does not call the library).
# ---------------------------------------------------------------------------


def np_log_softmax(x_BC: np.ndarray) -> np.ndarray:
    x_BC = np.asarray(x_BC, np.float64)
    shifted_BC = x_BC - x_BC.max(axis=-1, keepdims=True)
    return shifted_BC - np.log(np.exp(shifted_BC).sum(axis=-1, keepdims=True))


def np_softmax(x_BC: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x_BC))


def np_kl_B(p_BC: np.ndarray, q_BC: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in probability space (inputs have no zeros here)."""
    return (p_BC * (np.log(p_BC) - np.log(q_BC))).sum(-1)


def np_kd_B(student_BC, teacher_BC, temperature) -> np.ndarray:
    p_t = np_softmax(teacher_BC / temperature)
    p_s = np_softmax(student_BC / temperature)
    return temperature**2 * np_kl_B(p_t, p_s)


def np_dkd_terms(student_BC, teacher_BC, labels_B, temperature):
    """mdistiller's construction: binary [p_y, 1 - p_y] and a softmax without class y."""
    tckd, nckd = [], []
    for s_C, t_C, y in zip(student_BC, teacher_BC, labels_B, strict=True):
        p_s, p_t = np_softmax(s_C / temperature), np_softmax(t_C / temperature)
        b_s = np.array([p_s[y], np.delete(p_s, y).sum()])
        b_t = np.array([p_t[y], np.delete(p_t, y).sum()])
        tckd.append(np_kl_B(b_t, b_s))
        hat_s = np_softmax(np.delete(s_C, y) / temperature)
        hat_t = np_softmax(np.delete(t_C, y) / temperature)
        nckd.append(np_kl_B(hat_t, hat_s))
    return temperature**2 * np.array(tckd), temperature**2 * np.array(nckd)


def np_pearson(a_NK: np.ndarray, b_NK: np.ndarray, eps=1e-8) -> np.ndarray:
    a_NK = a_NK - a_NK.mean(1, keepdims=True)
    b_NK = b_NK - b_NK.mean(1, keepdims=True)
    denominator = np.linalg.norm(a_NK, axis=1) * np.linalg.norm(b_NK, axis=1) + eps
    return (a_NK * b_NK).sum(1) / denominator


def np_dist(student_BC, teacher_BC, beta, gamma, temperature) -> float:
    """The official DIST: 1 - mean Pearson over rows, and over columns (transposed)."""
    y_s, y_t = np_softmax(student_BC / temperature), np_softmax(teacher_BC / temperature)
    inter = 1.0 - np_pearson(y_s, y_t).mean()
    intra = 1.0 - np_pearson(y_s.T, y_t.T).mean()
    return float(temperature**2 * (beta * inter + gamma * intra))


def np_standardize(x_BC: np.ndarray) -> np.ndarray:
    x_BC = np.asarray(x_BC, np.float64)
    std_B1 = x_BC.std(axis=-1, ddof=1, keepdims=True)  # torch.std default (unbiased)
    return (x_BC - x_BC.mean(-1, keepdims=True)) / (std_B1 + 1e-7)


def np_lskd(student_BC, teacher_BC, temperature) -> float:
    return float(
        np_kd_B(np_standardize(student_BC), np_standardize(teacher_BC), temperature).mean()
    )


def np_divergence(name, student_BC, teacher_BC, temperature, weight=None) -> float:
    p_s = np_softmax(student_BC / temperature)
    p_t = np_softmax(teacher_BC / temperature)
    if name == "reverse_kl":
        d_B = np_kl_B(p_s, p_t)
    elif name == "gjsd":
        m = weight * p_t + (1 - weight) * p_s
        d_B = weight * np_kl_B(p_t, m) + (1 - weight) * np_kl_B(p_s, m)
    elif name == "tvd":
        d_B = 0.5 * np.abs(p_t - p_s).sum(-1)
    elif name == "skew_kl":
        d_B = np_kl_B(p_t, weight * p_t + (1 - weight) * p_s)
    elif name == "skew_reverse_kl":
        d_B = np_kl_B(p_s, weight * p_s + (1 - weight) * p_t)
    else:
        raise ValueError(name)
    return float(temperature**2 * d_B.mean())


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    student_BC = (rng.normal(size=(B, C)) * 3).astype(np.float32)
    teacher_BC = (rng.normal(size=(B, C)) * 3).astype(np.float32)
    labels_B = rng.integers(0, C, size=(B,)).astype(np.int32)
    return student_BC, teacher_BC, labels_B


# Every new loss as `f(student, teacher, labels, mask_B=None)` (only DKD uses the labels)
# with non-default hyperparameters, so that the generic invariant tests cover all of them.
CASES = {
    "dkd": lambda s, t, y, mask_B=None: dkd_loss(s, t, y, 0.7, 3.0, 2.0, mask_B=mask_B),
    "dist": lambda s, t, y, mask_B=None: dist_loss(s, t, 1.5, 0.5, 2.0, mask_B=mask_B),
    "ls_kd": lambda s, t, y, mask_B=None: lskd_loss(s, t, 3.0, mask_B=mask_B),
    "reverse_kl": lambda s, t, y, mask_B=None: reverse_kl_loss(s, t, 2.0, mask_B=mask_B),
    "gjsd": lambda s, t, y, mask_B=None: gjsd_loss(s, t, 2.0, beta=0.3, mask_B=mask_B),
    "tvd": lambda s, t, y, mask_B=None: tvd_loss(s, t, 2.0, mask_B=mask_B),
    "skew_kl": lambda s, t, y, mask_B=None: skew_kl_loss(s, t, 2.0, skew=0.2, mask_B=mask_B),
    "skew_reverse_kl": lambda s, t, y, mask_B=None: skew_reverse_kl_loss(
        s, t, 2.0, skew=0.2, mask_B=mask_B
    ),
}
CASE_NAMES = list(CASES)


# Compiling dominates the cost of these tests on CPU, so all cases are compiled together,
# once per input shape, as value-and-gradient, and the invariant tests share that (the
# value tests against NumPy call the functions eagerly).
@jax.jit
def _all_values_and_grads(s, t, y, mask_B=None):
    return {
        name: jax.value_and_grad(fn, argnums=(0, 1))(s, t, y, mask_B=mask_B)
        for name, fn in CASES.items()
    }


def value_and_grads(name, s, t, y, mask_B=None):
    """`(loss, (grad_student, grad_teacher))` of case `name`."""
    return _all_values_and_grads(s, t, y, mask_B=mask_B)[name]


def value(name, s, t, y, mask_B=None):
    return value_and_grads(name, s, t, y, mask_B=mask_B)[0]


def all_losses(s, t, y):
    """Every case's loss stacked into one vector (one compilation for all of them)."""
    return jnp.stack([fn(s, t, y) for fn in CASES.values()])


# ---------------------------------------------------------------------------
# Values against NumPy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (0.5, 0.5)])
def test_dkd_matches_numpy(batch, temperature, alpha, beta):
    student_BC, teacher_BC, labels_B = batch
    tckd_B, nckd_B = dkd_terms(student_BC, teacher_BC, labels_B, temperature)
    want_tckd_B, want_nckd_B = np_dkd_terms(student_BC, teacher_BC, labels_B, temperature)
    assert tckd_B.shape == (B,) and nckd_B.shape == (B,)
    # float32 log-probabilities carry ~1e-7 absolute error, scaled by T^2.
    atol = 5e-7 * temperature**2
    np.testing.assert_allclose(tckd_B, want_tckd_B, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(nckd_B, want_nckd_B, rtol=1e-5, atol=atol)
    got = dkd_loss(student_BC, teacher_BC, labels_B, alpha, beta, temperature)
    want = np.mean(alpha * want_tckd_B + beta * want_nckd_B)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol * beta)


def test_dkd_defaults_are_mdistiller():
    params = inspect.signature(dkd_loss).parameters
    assert (params["alpha"].default, params["beta"].default) == (1.0, 8.0)
    assert params["temperature"].default == 4.0


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (2.0, 0.5)])
def test_dist_matches_numpy(batch, temperature, beta, gamma):
    student_BC, teacher_BC, _ = batch
    got = dist_loss(student_BC, teacher_BC, beta, gamma, temperature)
    assert got.shape == () and got.dtype == jnp.float32
    want = np_dist(student_BC, teacher_BC, beta, gamma, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_lskd_matches_numpy(batch, temperature):
    student_BC, teacher_BC, _ = batch
    np.testing.assert_allclose(
        standardize_logits(student_BC), np_standardize(student_BC), rtol=1e-5, atol=1e-6
    )
    got = lskd_loss(student_BC, teacher_BC, temperature)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_lskd(student_BC, teacher_BC, temperature), rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(
    "name,weight",
    [
        ("reverse_kl", None),
        ("gjsd", 0.5),
        ("gjsd", 0.1),
        ("gjsd", 0.9),
        ("tvd", None),
        ("skew_kl", 0.1),
        ("skew_kl", 0.5),
        ("skew_reverse_kl", 0.1),
        ("skew_reverse_kl", 0.5),
    ],
)
def test_divergences_match_numpy(batch, temperature, name, weight):
    student_BC, teacher_BC, _ = batch
    fn = {
        "reverse_kl": lambda s, t: reverse_kl_loss(s, t, temperature),
        "gjsd": lambda s, t: gjsd_loss(s, t, temperature, beta=weight),
        "tvd": lambda s, t: tvd_loss(s, t, temperature),
        "skew_kl": lambda s, t: skew_kl_loss(s, t, temperature, skew=weight),
        "skew_reverse_kl": lambda s, t: skew_reverse_kl_loss(s, t, temperature, skew=weight),
    }[name]
    got = fn(student_BC, teacher_BC)
    assert got.shape == () and got.dtype == jnp.float32
    want = np_divergence(name, student_BC, teacher_BC, temperature, weight)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_divergences_on_token_axis(batch):
    # LM shapes [B, L, V] with a [B, L] mask: same as flattening tokens into rows.
    student_BC, teacher_BC, _ = batch
    s_BLV, t_BLV = student_BC.reshape(2, 4, C), teacher_BC.reshape(2, 4, C)
    mask_BL = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], bool)
    kept = mask_BL.reshape(-1).nonzero()[0]
    for fn in [reverse_kl_loss, gjsd_loss, skew_reverse_kl_loss]:
        np.testing.assert_allclose(
            fn(s_BLV, t_BLV, mask_B=mask_BL), fn(student_BC[kept], teacher_BC[kept]), rtol=1e-6
        )


# ---------------------------------------------------------------------------
# Paper identities and limits.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_dkd_eq1_decomposition_per_example(batch, temperature):
    # Zhao et al. 2022, Eq. 1: KD = TCKD + (1 - p_y^T) * NCKD, for every example.
    student_BC, teacher_BC, labels_B = batch
    tckd_B, nckd_B = dkd_terms(student_BC, teacher_BC, labels_B, temperature)
    p_y_B = np_softmax(teacher_BC / temperature)[np.arange(B), labels_B]
    for i in range(B):
        kd_i = kd_loss(student_BC[i : i + 1], teacher_BC[i : i + 1], temperature)
        np.testing.assert_allclose(
            tckd_B[i] + (1.0 - p_y_B[i]) * nckd_B[i], kd_i, rtol=1e-5, atol=1e-6
        )


def test_dkd_alpha1_beta1_is_not_kd(batch):
    # DKD(1, 1) = KD + mean(p_y^T * NCKD): strictly larger than KD unless NCKD vanishes.
    student_BC, teacher_BC, labels_B = batch
    temperature = 4.0
    dkd = dkd_loss(student_BC, teacher_BC, labels_B, 1.0, 1.0, temperature)
    kd = kd_loss(student_BC, teacher_BC, temperature)
    _, nckd_B = dkd_terms(student_BC, teacher_BC, labels_B, temperature)
    p_y_B = np_softmax(teacher_BC / temperature)[np.arange(B), labels_B]
    np.testing.assert_allclose(dkd, kd + np.mean(p_y_B * nckd_B), rtol=1e-5)
    assert float(dkd) > float(kd) + 1e-3


def test_dkd_confident_teacher_is_finite_and_exact(batch):
    # p_y rounds to 1 in float32: 1 - p_y must come from log-space, not a subtraction.
    student_BC, teacher_BC, labels_B = batch
    teacher_BC = teacher_BC.copy()
    teacher_BC[0, labels_B[0]] = 40.0
    teacher_BC[1] = 0.0
    tckd_B, nckd_B = dkd_terms(student_BC, teacher_BC, labels_B, 1.0)
    want_tckd_B, want_nckd_B = np_dkd_terms(student_BC, teacher_BC, labels_B, 1.0)
    np.testing.assert_allclose(tckd_B, want_tckd_B, rtol=1e-5, atol=5e-7)
    np.testing.assert_allclose(nckd_B, want_nckd_B, rtol=1e-5, atol=5e-7)
    _, (grad_BC, _) = value_and_grads("dkd", student_BC, teacher_BC, labels_B)
    assert np.all(np.isfinite(grad_BC))


def test_gjsd_limits_are_forward_and_reverse_kl():
    # GKD (Agarwal et al. 2024): JSD(beta) / beta -> KL(P || Q) as beta -> 0 and
    # JSD(beta) / (1 - beta) -> KL(Q || P) as beta -> 1, with P the teacher. The limit
    # needs beta << min_c Q_c / P_c, so moderate logits keep the check fast.
    rng = np.random.default_rng(9)
    with jax.enable_x64(True):
        s_BC = jnp.asarray(rng.normal(size=(B, C)), jnp.float64)
        t_BC = jnp.asarray(rng.normal(size=(B, C)), jnp.float64)
        forward = float(kd_loss(s_BC, t_BC, 1.0))
        reverse = float(reverse_kl_loss(s_BC, t_BC, 1.0))
        errors_forward, errors_reverse = [], []
        for eps in [1e-2, 1e-3, 1e-4]:
            errors_forward.append(abs(float(gjsd_loss(s_BC, t_BC, beta=eps)) / eps - forward))
            errors_reverse.append(abs(float(gjsd_loss(s_BC, t_BC, beta=1 - eps)) / eps - reverse))
    assert errors_forward[-1] < 1e-2 * forward and errors_reverse[-1] < 1e-2 * reverse
    # The error shrinks (roughly linearly in beta) as beta approaches the end point.
    assert errors_forward[-1] < errors_forward[0] / 20
    assert errors_reverse[-1] < errors_reverse[0] / 20


def test_gjsd_half_is_symmetric(batch):
    student_BC, teacher_BC, _ = batch
    np.testing.assert_allclose(
        gjsd_loss(student_BC, teacher_BC, beta=0.5),
        gjsd_loss(teacher_BC, student_BC, beta=0.5),
        rtol=1e-5,
    )
    # JSD(0.5) <= log 2.
    assert float(gjsd_loss(student_BC, teacher_BC, beta=0.5)) <= np.log(2) + 1e-6


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_skew_zero_is_plain_kl(batch, temperature):
    student_BC, teacher_BC, _ = batch
    np.testing.assert_allclose(
        skew_kl_loss(student_BC, teacher_BC, temperature, skew=0.0),
        kd_loss(student_BC, teacher_BC, temperature),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        skew_reverse_kl_loss(student_BC, teacher_BC, temperature, skew=0.0),
        reverse_kl_loss(student_BC, teacher_BC, temperature),
        rtol=1e-5,
    )


def test_skew_kl_is_bounded_by_log_one_over_skew(batch):
    # m >= skew * p_t, so KL(p_t || m) <= log(1 / skew): the point of skewing.
    student_BC, teacher_BC, _ = batch
    far_s_BC = -10.0 * teacher_BC
    for skew in [0.1, 0.5]:
        assert float(skew_kl_loss(far_s_BC, teacher_BC, skew=skew)) <= np.log(1 / skew) + 1e-6
        assert (
            float(skew_reverse_kl_loss(far_s_BC, teacher_BC, skew=skew)) <= np.log(1 / skew) + 1e-6
        )


def test_dist_bounds_and_extremes():
    rng = np.random.default_rng(7)
    for beta, gamma, temperature in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:
        upper = 2 * (beta + gamma) * temperature**2
        for _ in range(5):
            s_BC = (rng.normal(size=(B, C)) * 4).astype(np.float32)
            t_BC = (rng.normal(size=(B, C)) * 4).astype(np.float32)
            value = float(dist_loss(s_BC, t_BC, beta, gamma, temperature))
            assert -1e-6 <= value <= upper + 1e-6
    # Perfectly anti-correlated probabilities reach the top: p = 1/C +- d_i * v with v a
    # zero-sum +-1 pattern, so every row and every column has correlation -1.
    v_C = np.where(np.arange(C) % 2 == 0, 1.0, -1.0)
    d_B1 = np.linspace(0.01, 0.08, B)[:, None]
    t_BC = np.log(1.0 / C + d_B1 * v_C).astype(np.float32)
    s_BC = np.log(1.0 / C - d_B1 * v_C).astype(np.float32)
    np.testing.assert_allclose(dist_loss(s_BC, t_BC), 4.0, rtol=1e-5)


def test_dist_is_scale_invariant_in_probabilities_not_kl(batch):
    # Pearson ignores affine maps of the probabilities: a student whose probabilities are
    # a*p_t + (1 - a)/C (a > 0) has zero inter- and intra-class loss but nonzero KL.
    _, teacher_BC, _ = batch
    p_t_BC = np_softmax(teacher_BC)
    p_s_BC = 0.5 * p_t_BC + 0.5 / C
    s_BC = np.log(p_s_BC).astype(np.float32)
    assert abs(float(dist_loss(s_BC, teacher_BC))) < 1e-5
    assert float(kd_loss(s_BC, teacher_BC, 1.0)) > 1e-2


# ---------------------------------------------------------------------------
# Invariants shared by every loss.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_zero_when_student_equals_teacher(batch, name):
    _, teacher_BC, labels_B = batch
    loss = value(name, teacher_BC, teacher_BC, labels_B)
    assert abs(float(loss)) < 2e-6 * 4  # T^2 = 4 here; 2e-6 covers DIST's 1e-8 epsilon


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_divergences_zero_when_equal_at_default_weights(batch, temperature):
    _, teacher_BC, labels_B = batch
    scale = temperature**2
    # DIST's official `|a| |b| + 1e-8` leaves ~1e-8 / |a|^2 per relation (two of them).
    dist = dist_loss(teacher_BC, teacher_BC, temperature=temperature)
    assert 0.0 <= float(dist) < 2e-6 * scale
    for value in [
        dkd_loss(teacher_BC, teacher_BC, labels_B, temperature=temperature),
        lskd_loss(teacher_BC, teacher_BC, temperature),
        reverse_kl_loss(teacher_BC, teacher_BC, temperature),
        gjsd_loss(teacher_BC, teacher_BC, temperature),
        tvd_loss(teacher_BC, teacher_BC, temperature),
        skew_kl_loss(teacher_BC, teacher_BC, temperature),
        skew_reverse_kl_loss(teacher_BC, teacher_BC, temperature),
    ]:
        assert abs(float(value)) < 1e-6 * scale


@pytest.mark.parametrize("name", CASE_NAMES)
def test_invariant_to_per_row_shift(batch, name):
    student_BC, teacher_BC, labels_B = batch
    rng = np.random.default_rng(1)
    shift_s_B1 = (rng.normal(size=(B, 1)) * 5).astype(np.float32)
    shift_t_B1 = (rng.normal(size=(B, 1)) * 5).astype(np.float32)
    fn = functools.partial(value, name)
    base = fn(student_BC, teacher_BC, labels_B)
    for s_BC, t_BC in [
        (student_BC + shift_s_B1, teacher_BC),
        (student_BC, teacher_BC + shift_t_B1),
        (student_BC + shift_s_B1, teacher_BC + shift_t_B1),
    ]:
        np.testing.assert_allclose(fn(s_BC, t_BC, labels_B), base, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_lskd_invariant_to_per_row_affine_maps(batch, temperature):
    student_BC, teacher_BC, _ = batch
    rng = np.random.default_rng(2)
    scale_s_B1 = rng.uniform(0.2, 5.0, size=(B, 1)).astype(np.float32)
    scale_t_B1 = rng.uniform(0.2, 5.0, size=(B, 1)).astype(np.float32)
    shift_s_B1 = (rng.normal(size=(B, 1)) * 5).astype(np.float32)
    shift_t_B1 = (rng.normal(size=(B, 1)) * 5).astype(np.float32)
    base = lskd_loss(student_BC, teacher_BC, temperature)
    got = lskd_loss(
        scale_s_B1 * student_BC + shift_s_B1,
        scale_t_B1 * teacher_BC + shift_t_B1,
        temperature,
    )
    np.testing.assert_allclose(got, base, rtol=1e-4, atol=1e-5)
    # Plain KD is not scale invariant: the check above is not vacuous.
    kd_scaled = kd_loss(scale_s_B1 * student_BC, teacher_BC, temperature)
    assert abs(float(kd_scaled) - float(kd_loss(student_BC, teacher_BC, temperature))) > 1e-2
    # A student that matches the teacher up to a per-row affine map has zero LS-KD loss.
    affine_s_BC = scale_s_B1 * teacher_BC + shift_s_B1
    assert abs(float(lskd_loss(affine_s_BC, teacher_BC, temperature))) < 1e-5


@pytest.mark.parametrize("name", CASE_NAMES)
def test_non_negative(name):
    rng = np.random.default_rng(3)
    labels_B = rng.integers(0, C, size=(B,)).astype(np.int32)
    fn = functools.partial(value, name)
    for _ in range(5):
        s_BC = (rng.normal(size=(B, C)) * 4).astype(np.float32)
        t_BC = (rng.normal(size=(B, C)) * 4).astype(np.float32)
        assert float(fn(s_BC, t_BC, labels_B)) >= -1e-6
        assert float(fn(t_BC + 1e-3 * s_BC, t_BC, labels_B)) >= -1e-6  # near the minimum


def test_tvd_bounded_by_t_squared():
    rng = np.random.default_rng(8)
    s_BC = (rng.normal(size=(B, C)) * 20).astype(np.float32)
    t_BC = (rng.normal(size=(B, C)) * 20).astype(np.float32)
    for temperature in [1.0, 3.0]:
        assert float(tvd_loss(s_BC, t_BC, temperature)) <= temperature**2 + 1e-6


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_teacher_receives_zero_gradient(batch, name):
    student_BC, teacher_BC, labels_B = batch
    _, (grad_s_BC, grad_t_BC) = value_and_grads(name, student_BC, teacher_BC, labels_B)
    assert np.all(np.asarray(grad_t_BC) == 0.0)
    assert np.any(np.asarray(grad_s_BC) != 0.0)
    assert np.all(np.isfinite(grad_s_BC))


def test_reverse_kl_grad_closed_form(batch):
    # d/ds KL(q || p) with q = softmax(s / T): (T^2 / T) * q * (log q - log p - KL) / B.
    student_BC, teacher_BC, _ = batch
    temperature = 2.0
    grad_BC = jax.grad(reverse_kl_loss)(student_BC, teacher_BC, temperature)
    log_q = np_log_softmax(student_BC / temperature)
    log_p = np_log_softmax(teacher_BC / temperature)
    q = np.exp(log_q)
    kl_B1 = (q * (log_q - log_p)).sum(-1, keepdims=True)
    want_BC = temperature * q * (log_q - log_p - kl_B1) / B
    np.testing.assert_allclose(grad_BC, want_BC, rtol=1e-4, atol=1e-7)


def test_check_grads_float64():
    # One compiled function for all losses; on failure, find the loss that fails.
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        labels_B = jnp.array([0, 4, 2, 1])
        s_BC = jnp.asarray(rng.normal(size=(4, 5)) * 2, jnp.float64)
        t_BC = jnp.asarray(rng.normal(size=(4, 5)) * 2, jnp.float64)
        fn = jax.jit(lambda s: all_losses(s, t_BC, labels_B))
        assert fn(s_BC).dtype == jnp.float64
        try:
            check_grads(fn, (s_BC,), order=1, modes=["rev"])
        except AssertionError:
            for name, case in CASES.items():
                try:
                    check_grads(lambda s, f=case: f(s, t_BC, labels_B), (s_BC,), 1, ["rev"])
                except AssertionError as error:
                    raise AssertionError(f"check_grads failed for {name}") from error
            raise


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------


def _padded_batch(batch):
    """The batch with 4 padded rows interleaved: 2 of huge garbage logits, 2 all-zero
    (constant) rows, all with the placeholder label -1; returns the mask of real rows."""
    student_BC, teacher_BC, labels_B = batch
    rng = np.random.default_rng(6)
    pad_s_PC = np.concatenate([rng.normal(size=(2, C)) * 1e4, np.zeros((2, C))])
    pad_t_PC = np.concatenate([rng.normal(size=(2, C)) * 1e4, np.zeros((2, C))])
    mask_N = np.ones(B + 4, bool)
    mask_N[[1, 4, 5, 11]] = False
    s_NC = np.zeros((B + 4, C), np.float32)
    t_NC = np.zeros((B + 4, C), np.float32)
    s_NC[mask_N], s_NC[~mask_N] = student_BC, pad_s_PC
    t_NC[mask_N], t_NC[~mask_N] = teacher_BC, pad_t_PC
    y_N = np.full(B + 4, -1, labels_B.dtype)
    y_N[mask_N] = labels_B
    return s_NC, t_NC, y_N, mask_N


@pytest.mark.parametrize("name", CASE_NAMES)
def test_masked_result_equals_result_on_kept_rows(batch, name):
    # Value and gradient with padded rows masked out equal those of the kept rows alone;
    # the padded rows get exactly zero (finite) gradient.
    student_BC, teacher_BC, labels_B = batch
    s_NC, t_NC, y_N, mask_N = _padded_batch(batch)
    got, (grad_NC, _) = value_and_grads(name, s_NC, t_NC, y_N, mask_B=mask_N)
    want, (grad_BC, _) = value_and_grads(name, student_BC, teacher_BC, labels_B)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(grad_NC))
    assert np.all(np.asarray(grad_NC[~mask_N]) == 0.0)
    np.testing.assert_allclose(grad_NC[mask_N], grad_BC, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_all_false_mask_gives_zero(batch, name):
    s_NC, t_NC, y_N, mask_N = _padded_batch(batch)
    value, (grad_NC, _) = value_and_grads(name, s_NC, t_NC, y_N, mask_B=np.zeros_like(mask_N))
    assert float(value) == 0.0
    assert np.all(np.asarray(grad_NC) == 0.0)


# ---------------------------------------------------------------------------
# Registry, validation, dtypes, jit.
# ---------------------------------------------------------------------------


REGISTERED = {
    "dkd": dkd_loss,
    "dist": dist_loss,
    "ls_kd": lskd_loss,
    "reverse_kl": reverse_kl_loss,
    "gjsd": gjsd_loss,
    "tvd": tvd_loss,
    "skew_kl": skew_kl_loss,
    "skew_reverse_kl": skew_reverse_kl_loss,
}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registry(name):
    assert LOSSES[name] is REGISTERED[name]


def test_existing_registry_entries_unchanged():
    from distill_jax.objective import validate_losses

    assert LOSSES["kd"] is kd_loss
    with pytest.raises(
        ConfigError, match="unknown loss 'distill.losses.dkdd'.*; valid losses: .*dkd"
    ):
        validate_losses({"dkdd": {"weight": 1.0}})


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_gjsd_bad_beta_raises(batch, beta):
    student_BC, teacher_BC, _ = batch
    with pytest.raises(ConfigError, match="gjsd beta"):
        gjsd_loss(student_BC, teacher_BC, beta=beta)


@pytest.mark.parametrize("skew", [1.0, -0.1, float("nan")])
def test_skew_bad_value_raises(batch, skew):
    student_BC, teacher_BC, _ = batch
    with pytest.raises(ConfigError, match="skew_kl skew"):
        skew_kl_loss(student_BC, teacher_BC, skew=skew)
    with pytest.raises(ConfigError, match="skew_reverse_kl skew"):
        skew_reverse_kl_loss(student_BC, teacher_BC, skew=skew)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_shape_mismatch_raises(batch, name):
    student_BC, teacher_BC, labels_B = batch
    with pytest.raises(ValueError, match="shape"):
        CASES[name](student_BC, teacher_BC[:, :-1], labels_B)


def test_dkd_bad_labels_shape_raises(batch):
    student_BC, teacher_BC, labels_B = batch
    with pytest.raises(ValueError, match="labels shape"):
        dkd_loss(student_BC, teacher_BC, labels_B[:-1])
    with pytest.raises(ValueError, match="mask shape"):
        dist_loss(student_BC, teacher_BC, mask_B=np.ones(B - 1, bool))


def test_bfloat16_inputs_give_float32(batch):
    student_BC, teacher_BC, labels_B = batch
    s16_BC = jnp.asarray(student_BC, jnp.bfloat16)
    t16_BC = jnp.asarray(teacher_BC, jnp.bfloat16)
    got = all_losses(s16_BC, t16_BC, labels_B)
    assert got.dtype == jnp.float32
    # Reference: the same bf16-rounded values, computed in float32.
    s32_BC, t32_BC = s16_BC.astype(jnp.float32), t16_BC.astype(jnp.float32)
    want = [value(name, s32_BC, t32_BC, labels_B) for name in CASE_NAMES]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-5, atol=1e-7)


def test_jit_with_traced_hyperparameters(batch):
    student_BC, teacher_BC, labels_B = batch

    @jax.jit
    def f(temperature, weight):
        return jnp.stack(
            [
                dkd_loss(student_BC, teacher_BC, labels_B, weight, 2.0 * weight, temperature),
                dist_loss(student_BC, teacher_BC, weight, weight, temperature),
                lskd_loss(student_BC, teacher_BC, temperature),
                gjsd_loss(student_BC, teacher_BC, temperature, beta=weight),
                skew_kl_loss(student_BC, teacher_BC, temperature, skew=weight),
                skew_reverse_kl_loss(student_BC, teacher_BC, temperature, skew=weight),
            ]
        )

    want = [
        dkd_loss(student_BC, teacher_BC, labels_B, 0.3, 0.6, 2.0),
        dist_loss(student_BC, teacher_BC, 0.3, 0.3, 2.0),
        lskd_loss(student_BC, teacher_BC, 2.0),
        gjsd_loss(student_BC, teacher_BC, 2.0, beta=0.3),
        skew_kl_loss(student_BC, teacher_BC, 2.0, skew=0.3),
        skew_reverse_kl_loss(student_BC, teacher_BC, 2.0, skew=0.3),
    ]
    np.testing.assert_allclose(f(2.0, 0.3), np.array(want), rtol=1e-5)
