"""Tests of `distill_jax.losses` against an independent NumPy derivation and invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from distill_jax.errors import ConfigError
from distill_jax.losses import LOSSES, cross_entropy, kd_loss, masked_mean
from distill_jax.objective import Objective

B, C = 8, 10
TEMPERATURES = [1.0, 2.0, 4.0, 20.0]


def hinton(s_BC, t_BC, labels_B, *, alpha, temperature, label_smoothing=0.0, mask_B=None):
    """Hinton's objective through the training path: the `Objective` of an empty
    `distill.losses` (`alpha * CE + (1 - alpha) * KD(T)`)."""
    objective = Objective(
        {"alpha": alpha, "temperature": temperature, "losses": {}},
        label_smoothing=label_smoothing,
    )
    batch = {"label": jnp.asarray(labels_B), "mask": mask_B}
    student, teacher = {"logits": jnp.asarray(s_BC)}, {"logits": jnp.asarray(t_BC)}
    loss, terms, _ = objective({}, {}, student, teacher, batch, jax.random.PRNGKey(0))
    return loss, terms


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference (does not call the library).
# ---------------------------------------------------------------------------


def np_log_softmax(x_BC: np.ndarray) -> np.ndarray:
    x_BC = np.asarray(x_BC, np.float64)
    shifted_BC = x_BC - x_BC.max(axis=-1, keepdims=True)
    return shifted_BC - np.log(np.exp(shifted_BC).sum(axis=-1, keepdims=True))


def np_softmax(x_BC: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x_BC))


def np_cross_entropy(logits_BC, labels_B, label_smoothing=0.0) -> float:
    num_classes = logits_BC.shape[-1]
    targets_BC = np.eye(num_classes)[labels_B] * (1 - label_smoothing)
    targets_BC += label_smoothing / num_classes
    return float(np.mean(-(targets_BC * np_log_softmax(logits_BC)).sum(-1)))


def np_kd(student_BC, teacher_BC, temperature) -> float:
    p_BC = np_softmax(teacher_BC / temperature)
    log_q_BC = np_log_softmax(student_BC / temperature)
    log_p_BC = np_log_softmax(teacher_BC / temperature)
    kl_B = (p_BC * (log_p_BC - log_q_BC)).sum(-1)
    return float(temperature**2 * kl_B.mean())


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    student_BC = (rng.normal(size=(B, C)) * 3).astype(np.float32)
    teacher_BC = (rng.normal(size=(B, C)) * 3).astype(np.float32)
    labels_B = rng.integers(0, C, size=(B,)).astype(np.int32)
    return student_BC, teacher_BC, labels_B


# ---------------------------------------------------------------------------
# Values against NumPy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy(batch, label_smoothing):
    student_BC, _, labels_B = batch
    got = cross_entropy(student_BC, labels_B, label_smoothing=label_smoothing)
    want = np_cross_entropy(student_BC, labels_B, label_smoothing)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_entropy_uniform_logits_is_log_c():
    labels_B = jnp.arange(4) % C
    got = cross_entropy(jnp.zeros((4, C)), labels_B, label_smoothing=0.3)
    np.testing.assert_allclose(got, np.log(C), rtol=1e-6)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_loss_matches_numpy(batch, temperature):
    student_BC, teacher_BC, _ = batch
    got = kd_loss(student_BC, teacher_BC, temperature=temperature)
    want = np_kd(student_BC, teacher_BC, temperature)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_kd_loss_sums_over_classes_not_mean():
    # One row, teacher one-hot-ish at T=1: KL = sum_c p log(p/q) with q uniform = log C - H(p).
    teacher_BC = jnp.array([[50.0] + [0.0] * (C - 1)])
    student_BC = jnp.zeros((1, C))
    np.testing.assert_allclose(kd_loss(student_BC, teacher_BC, 1.0), np.log(C), rtol=1e-5)


def test_kd_loss_exact_when_teacher_has_zero_probabilities():
    # exp(-1e4) underflows to exactly 0 in float32; the loss must stay finite and exact.
    teacher_BC = jnp.array([[0.0, -1e4, -1e4], [0.0, 0.0, -1e4]])
    student_BC = jnp.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
    got = kd_loss(student_BC, teacher_BC, temperature=1.0)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, np_kd(student_BC, teacher_BC, 1.0), rtol=1e-5)
    grad_BC = jax.grad(kd_loss)(student_BC, teacher_BC, 1.0)
    assert np.all(np.isfinite(grad_BC))


# ---------------------------------------------------------------------------
# Invariants.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_loss_zero_when_student_equals_teacher(batch, temperature):
    _, teacher_BC, _ = batch
    assert abs(float(kd_loss(teacher_BC, teacher_BC, temperature))) < 1e-6


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_loss_invariant_to_per_row_shift(batch, temperature):
    student_BC, teacher_BC, _ = batch
    rng = np.random.default_rng(1)
    shift_s_B1 = rng.normal(size=(B, 1)).astype(np.float32) * 5
    shift_t_B1 = rng.normal(size=(B, 1)).astype(np.float32) * 5
    base = kd_loss(student_BC, teacher_BC, temperature)
    for s_BC, t_BC in [
        (student_BC + shift_s_B1, teacher_BC),
        (student_BC, teacher_BC + shift_t_B1),
        (student_BC + shift_s_B1, teacher_BC + shift_t_B1),
    ]:
        np.testing.assert_allclose(kd_loss(s_BC, t_BC, temperature), base, rtol=1e-4, atol=1e-5)


def test_kd_loss_non_negative():
    rng = np.random.default_rng(2)
    for temperature in TEMPERATURES:
        for _ in range(5):
            s_BC = rng.normal(size=(B, C)).astype(np.float32) * 4
            t_BC = rng.normal(size=(B, C)).astype(np.float32) * 4
            assert float(kd_loss(s_BC, t_BC, temperature)) >= -1e-6


def test_cross_entropy_invariant_to_per_row_shift(batch):
    student_BC, _, labels_B = batch
    shift_B1 = np.linspace(-7, 7, B, dtype=np.float32)[:, None]
    np.testing.assert_allclose(
        cross_entropy(student_BC + shift_B1, labels_B, 0.1),
        cross_entropy(student_BC, labels_B, 0.1),
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_grad_closed_form(batch, temperature):
    student_BC, teacher_BC, _ = batch
    grad_BC = jax.grad(kd_loss)(student_BC, teacher_BC, temperature)
    want_BC = (
        temperature
        * (np_softmax(student_BC / temperature) - np_softmax(teacher_BC / temperature))
        / B
    )
    np.testing.assert_allclose(grad_BC, want_BC, rtol=1e-4, atol=1e-7)


def test_kd_grad_high_temperature_limit_is_temperature_independent():
    # Hinton et al. 2015, sec. 2.1: for zero-mean logits and T >> |logits| the gradient of
    # the (T^2-scaled) soft loss tends to (s - t) / (C * B), independent of T.
    rng = np.random.default_rng(3)
    s_BC = rng.normal(size=(B, C))
    t_BC = rng.normal(size=(B, C))
    s_BC = (s_BC - s_BC.mean(-1, keepdims=True)).astype(np.float32)
    t_BC = (t_BC - t_BC.mean(-1, keepdims=True)).astype(np.float32)
    limit_BC = (s_BC - t_BC) / (C * B)
    grads = {}
    for temperature in [100.0, 1000.0]:
        grads[temperature] = np.asarray(jax.grad(kd_loss)(s_BC, t_BC, temperature))
        np.testing.assert_allclose(grads[temperature], limit_BC, rtol=0.05, atol=2e-4)
    # Magnitude does not shrink with T thanks to the T^2 factor.
    ratio = np.linalg.norm(grads[1000.0]) / np.linalg.norm(grads[100.0])
    assert 0.95 < ratio < 1.05


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_check_grads_float64(temperature):
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        s_BC = jnp.asarray(rng.normal(size=(3, 5)), jnp.float64)
        t_BC = jnp.asarray(rng.normal(size=(3, 5)), jnp.float64)
        assert kd_loss(s_BC, t_BC, temperature).dtype == jnp.float64
        check_grads(lambda s: kd_loss(s, t_BC, temperature), (s_BC,), order=2, modes=["rev"])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_check_grads_float64(label_smoothing):
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        logits_BC = jnp.asarray(rng.normal(size=(3, 5)), jnp.float64)
        labels_B = jnp.array([0, 4, 2])
        check_grads(
            lambda x: cross_entropy(x, labels_B, label_smoothing),
            (logits_BC,),
            order=2,
            modes=["rev"],
        )


def test_teacher_receives_zero_gradient(batch):
    student_BC, teacher_BC, labels_B = batch
    grad_t_BC = jax.grad(kd_loss, argnums=1)(student_BC, teacher_BC, 4.0)
    assert np.all(np.asarray(grad_t_BC) == 0.0)

    def total(s_BC, t_BC):
        return hinton(s_BC, t_BC, labels_B, alpha=0.3, temperature=4.0)[0]

    grad_s_BC, grad_t_BC = jax.grad(total, argnums=(0, 1))(student_BC, teacher_BC)
    assert np.all(np.asarray(grad_t_BC) == 0.0)
    assert np.any(np.asarray(grad_s_BC) != 0.0)


# ---------------------------------------------------------------------------
# Masks.
# ---------------------------------------------------------------------------


def test_masked_mean():
    values_B = jnp.array([1.0, 2.0, 3.0, 100.0])
    np.testing.assert_allclose(masked_mean(values_B), 26.5)
    np.testing.assert_allclose(masked_mean(values_B, jnp.array([1, 1, 1, 0])), 2.0)
    np.testing.assert_allclose(masked_mean(values_B, jnp.array([True, False, True, False])), 2.0)
    assert float(masked_mean(values_B, jnp.zeros(4, bool))) == 0.0
    # Masked rows cannot leak inf/NaN.
    bad_B = jnp.array([1.0, jnp.inf, jnp.nan, 3.0])
    np.testing.assert_allclose(masked_mean(bad_B, jnp.array([1, 0, 0, 1])), 2.0)


def test_masks_equal_result_on_kept_rows(batch):
    student_BC, teacher_BC, labels_B = batch
    mask_B = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
    kept = mask_B.nonzero()[0]
    for temperature in [1.0, 4.0]:
        np.testing.assert_allclose(
            kd_loss(student_BC, teacher_BC, temperature, mask_B=mask_B),
            kd_loss(student_BC[kept], teacher_BC[kept], temperature),
            rtol=1e-6,
        )
    np.testing.assert_allclose(
        cross_entropy(student_BC, labels_B, 0.1, mask_B=mask_B),
        cross_entropy(student_BC[kept], labels_B[kept], 0.1),
        rtol=1e-6,
    )


def test_padded_garbage_rows_do_not_change_result(batch):
    student_BC, teacher_BC, labels_B = batch
    pad = 3
    rng = np.random.default_rng(6)
    garbage_s_PC = (rng.normal(size=(pad, C)) * 1e4).astype(np.float32)
    garbage_t_PC = (rng.normal(size=(pad, C)) * 1e4).astype(np.float32)
    s_BC = np.concatenate([student_BC, garbage_s_PC])
    t_BC = np.concatenate([teacher_BC, garbage_t_PC])
    y_B = np.concatenate([labels_B, np.full(pad, -1, np.int32)])  # placeholder labels
    mask_B = np.arange(B + pad) < B
    np.testing.assert_allclose(
        kd_loss(s_BC, t_BC, 4.0, mask_B=mask_B), kd_loss(student_BC, teacher_BC, 4.0), rtol=1e-6
    )
    np.testing.assert_allclose(
        cross_entropy(s_BC, y_B, mask_B=mask_B), cross_entropy(student_BC, labels_B), rtol=1e-6
    )
    loss, _ = hinton(s_BC, t_BC, y_B, alpha=0.5, temperature=4.0, mask_B=mask_B)
    want, _ = hinton(student_BC, teacher_BC, labels_B, alpha=0.5, temperature=4.0)
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_all_false_mask_gives_zero(batch):
    student_BC, teacher_BC, labels_B = batch
    mask_B = np.zeros(B, bool)
    assert float(kd_loss(student_BC, teacher_BC, 4.0, mask_B=mask_B)) == 0.0
    assert float(cross_entropy(student_BC, labels_B, mask_B=mask_B)) == 0.0


# ---------------------------------------------------------------------------
# Hinton's objective (through `Objective`), registry, validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_hinton_objective_combines_terms(batch, alpha):
    student_BC, teacher_BC, labels_B = batch
    loss, terms = hinton(
        student_BC, teacher_BC, labels_B, alpha=alpha, temperature=4.0, label_smoothing=0.1
    )
    assert set(terms) == {"ce", "kd"}
    ce = cross_entropy(student_BC, labels_B, 0.1)
    kd = kd_loss(student_BC, teacher_BC, 4.0)
    np.testing.assert_allclose(terms["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(terms["kd"], kd, rtol=1e-6)
    np.testing.assert_allclose(loss, alpha * ce + (1 - alpha) * kd, rtol=1e-6)
    if alpha == 1.0:
        np.testing.assert_allclose(loss, ce, rtol=1e-6)


def test_objective_takes_traced_per_student_hyperparameters(batch):
    """A vmapped student's alpha and T arrive traced (`TrainState.hparams`) and replace
    the config's in Hinton's objective."""
    student_BC, teacher_BC, labels_B = batch
    objective = Objective({"alpha": 0.9, "temperature": 7.0, "losses": {}})
    batch_ = {"label": jnp.asarray(labels_B), "mask": None}

    @jax.jit
    def f(alpha, temperature):
        hparams = {"alpha": alpha, "temperature": temperature}
        s, t = {"logits": student_BC}, {"logits": teacher_BC}
        return objective({}, {}, s, t, batch_, jax.random.PRNGKey(0), hparams=hparams)[0]

    want, _ = hinton(student_BC, teacher_BC, labels_B, alpha=0.4, temperature=2.0)
    np.testing.assert_allclose(f(0.4, 2.0), want, rtol=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha_raises(alpha):
    from distill_jax.config import from_dict

    with pytest.raises(ConfigError, match="distill.alpha"):
        from_dict({"distill": {"alpha": alpha}})


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(temperature):
    from distill_jax.config import from_dict

    with pytest.raises(ConfigError, match="distill.temperature"):
        from_dict({"distill": {"temperature": temperature}})


def test_registry_and_unknown_names():
    from distill_jax.objective import validate_losses

    assert LOSSES["cross_entropy"] is cross_entropy
    assert LOSSES["kd"] is kd_loss
    with pytest.raises(ConfigError) as excinfo:
        validate_losses({"kdd": {"weight": 1.0}})
    assert str(excinfo.value).startswith(
        "unknown loss 'distill.losses.kdd' (did you mean 'kd'?); valid losses: "
    )
    assert "dist, dkd" in str(excinfo.value) and "cross_entropy" not in str(excinfo.value)


def test_shape_mismatch_raises(batch):
    student_BC, teacher_BC, labels_B = batch
    with pytest.raises(ValueError, match="shape"):
        kd_loss(student_BC, teacher_BC[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(student_BC, labels_B[:-1])


# ---------------------------------------------------------------------------
# Mixed precision.
# ---------------------------------------------------------------------------


def test_bfloat16_inputs_give_float32_close_result(batch):
    student_BC, teacher_BC, labels_B = batch
    s16_BC = jnp.asarray(student_BC, jnp.bfloat16)
    t16_BC = jnp.asarray(teacher_BC, jnp.bfloat16)
    # Reference: the same bf16-rounded values computed in float32.
    s32_BC, t32_BC = s16_BC.astype(jnp.float32), t16_BC.astype(jnp.float32)
    for temperature in TEMPERATURES:
        got = kd_loss(s16_BC, t16_BC, temperature)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, kd_loss(s32_BC, t32_BC, temperature), rtol=1e-6)
        np.testing.assert_allclose(got, kd_loss(student_BC, teacher_BC, temperature), rtol=2e-2)
    got = cross_entropy(s16_BC, labels_B, 0.1)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, cross_entropy(student_BC, labels_B, 0.1), rtol=2e-2)
    loss, terms = hinton(s16_BC, t16_BC, labels_B, alpha=0.5, temperature=4.0)
    assert loss.dtype == jnp.float32 and terms["kd"].dtype == jnp.float32
