"""Tests of the feature/relation methods (`distill_jax.losses.feature`).

Each method is checked against an independent float64 NumPy re-derivation of
RepDistiller's formula (trainable methods with the module's own initial parameters),
and against invariants: zero loss for identical features, RKD's scale/translation
invariance, no gradient to the teacher, masked result = result on the kept rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.losses.feature import (
    PKT,
    RKD,
    VID,
    AttentionTransfer,
    CorrelationCongruence,
    FitNet,
    SimilarityPreserving,
)
from distill_jax.losses.method import METHODS, Method

B = 6
STUDENT_SHAPES = {
    "stage1": (B, 4, 4, 3),
    "stage2": (B, 4, 4, 4),
    "stage3": (B, 2, 2, 5),
    "pre_logits": (B, 5),
}
TEACHER_SHAPES = {
    "stage1": (B, 4, 4, 4),
    "stage2": (B, 4, 4, 6),
    "stage3": (B, 2, 2, 8),
    "pre_logits": (B, 8),
}
MASK = np.array([True, True, False, True, False, True])

CLASSES = {
    "fitnet": FitNet,
    "at": AttentionTransfer,
    "sp": SimilarityPreserving,
    "cc": CorrelationCongruence,
    "vid": VID,
    "rkd": RKD,
    "pkt": PKT,
}
TRAINABLE = {"fitnet", "vid", "cc"}


def random_features(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


STUDENT = random_features(0, STUDENT_SHAPES)
TEACHER = random_features(1, TEACHER_SHAPES)


def outputs(features: dict[str, np.ndarray]) -> dict:
    batch_size = next(iter(features.values())).shape[0]
    return {"logits": jnp.zeros((batch_size, 3)), "features": features}


def make_batch(batch_size: int, mask=None) -> dict:
    return {
        "label": jnp.zeros((batch_size,), jnp.int32),
        "index": jnp.arange(batch_size),
        "mask": None if mask is None else jnp.asarray(mask),
    }


def init_and_apply(method: Method, student: dict, teacher: dict, mask=None, variables=None):
    """Returns `(loss, variables)`, initialising the variables when none are given."""
    batch_size = next(iter(student.values())).shape[0]
    args = (outputs(student), outputs(teacher), make_batch(batch_size, mask))
    if variables is None:
        variables = jax.jit(method.init)(jax.random.key(0), *args)
    return jax.jit(method.apply)(variables, *args), variables


@functools.cache
def default_variables(name: str):
    """Variables of `CLASSES[name]()` initialised on the default features (shared by tests)."""
    args = (outputs(STUDENT), outputs(TEACHER), make_batch(B))
    return jax.jit(CLASSES[name]().init)(jax.random.key(0), *args)


def np_params(variables) -> dict:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])


# ---------------------------------------------------------------------------
# Float64 NumPy references (RepDistiller's formulas, PyTorch conventions).
# ---------------------------------------------------------------------------


def np_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, eps)


def np_conv(x, kernel, bias, stride=1, pad=0):
    """Cross-correlation, NHWC input, HWIO kernel (PyTorch's Conv2d)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ kernel[i, j]
    return out + (0.0 if bias is None else bias)


def np_conv_transpose(x, kernel_HWOI, bias, stride=2, pad=1):
    """PyTorch's ConvTranspose2d as a scatter: input pixel i adds x_i * W[k] at i*s + k - p."""
    kh, kw = kernel_HWOI.shape[:2]
    b, h, w, _ = x.shape
    full = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, kernel_HWOI.shape[2]))
    for i in range(kh):
        for j in range(kw):
            full[
                :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride
            ] += x @ kernel_HWOI[i, j].T
    ho, wo = (h - 1) * stride - 2 * pad + kh, (w - 1) * stride - 2 * pad + kw
    return full[:, pad : pad + ho, pad : pad + wo] + bias


def np_bn_relu(y, scale, bias, eps=1e-5):
    mean = y.mean(axis=(0, 1, 2))
    var = y.var(axis=(0, 1, 2))
    return np.maximum((y - mean) / np.sqrt(var + eps) * scale + bias, 0.0)


def np_fitnet(f_s, f_t, p, stride=1, pad=0, transpose=False):
    f_s, f_t = np.float64(f_s), np.float64(f_t)
    conv = p["conv"]
    if transpose:
        y = np_conv_transpose(f_s, conv["kernel"], conv["bias"])
    else:
        y = np_conv(f_s, conv["kernel"], conv["bias"], stride, pad)
    guided = np_bn_relu(y, p["bn_scale"], p["bn_bias"])
    return np.mean((guided - f_t) ** 2)


def np_at(f_s, f_t, p=2):
    def at(f):
        f = np.float64(f)
        return np_normalize((np.abs(f) ** p).mean(axis=-1).reshape(f.shape[0], -1))

    return np.mean((at(f_s) - at(f_t)) ** 2)


def np_sp(f_s, f_t):
    bsz = f_s.shape[0]
    q_s, q_t = np.float64(f_s).reshape(bsz, -1), np.float64(f_t).reshape(bsz, -1)
    g_s, g_t = np_normalize(q_s @ q_s.T), np_normalize(q_t @ q_t.T)
    return np.sum((g_t - g_s) ** 2) / bsz**2


def np_cc(f_s, f_t, p):
    e_s = np.float64(f_s) @ p["student_embed0"]["kernel"] + p["student_embed0"]["bias"]
    e_t = np.float64(f_t) @ p["teacher_embed0"]["kernel"] + p["teacher_embed0"]["bias"]
    delta = np.abs(e_s - e_t)
    return np.mean(np.sum(delta[:-1] * delta[1:], axis=1))


def np_vid(f_s, f_t, p, eps=1e-5):
    relu = lambda v: np.maximum(v, 0.0)
    h = relu(np.float64(f_s) @ p["conv1"]["kernel"])
    h = relu(h @ p["conv2"]["kernel"])
    mu = h @ p["conv3"]["kernel"]
    var = np.log1p(np.exp(p["log_scale"])) + eps
    return np.mean(0.5 * ((mu - np.float64(f_t)) ** 2 / var + np.log(var)))


def np_smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def np_rkd(f_s, f_t, w_d=25.0, w_a=50.0):
    def pdist(e, eps=1e-12):
        sq = (e**2).sum(1)
        res = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
        np.fill_diagonal(res, 0.0)
        return res

    def angles(e):
        d = np_normalize(e[None, :, :] - e[:, None, :], axis=2)
        return np.einsum("ijd,ikd->ijk", d, d)

    s = np.float64(f_s).reshape(len(f_s), -1)
    t = np.float64(f_t).reshape(len(f_t), -1)
    t_d, s_d = pdist(t), pdist(s)
    t_d, s_d = t_d / t_d[t_d > 0].mean(), s_d / s_d[s_d > 0].mean()
    loss_d = np.mean(np_smooth_l1(s_d - t_d))
    loss_a = np.mean(np_smooth_l1(angles(s) - angles(t)))
    return w_d * loss_d + w_a * loss_a


def np_pkt(f_s, f_t, eps=1e-7):
    def cond(x):
        x = np.float64(x)
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (x @ x.T + 1.0) / 2.0
        return k / k.sum(1, keepdims=True)

    p_s, p_t = cond(f_s), cond(f_t)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def reference(name: str, student: dict, teacher: dict, variables) -> float:
    """The NumPy loss for method `name` with its default features."""
    if name == "fitnet":
        return np_fitnet(student["stage2"], teacher["stage2"], np_params(variables)["regressor0"])
    if name == "at":
        return sum(np_at(student[k], teacher[k]) for k in ("stage1", "stage2", "stage3"))
    if name == "sp":
        return np_sp(student["stage3"], teacher["stage3"])
    if name == "cc":
        return np_cc(student["pre_logits"], teacher["pre_logits"], np_params(variables))
    if name == "vid":
        params = np_params(variables)
        return sum(
            np_vid(student[k], teacher[k], params[f"regressor{i}"])
            for i, k in enumerate(("stage1", "stage2", "stage3"))
        )
    if name == "rkd":
        return np_rkd(student["pre_logits"], teacher["pre_logits"])
    if name == "pkt":
        return np_pkt(student["pre_logits"], teacher["pre_logits"])
    raise KeyError(name)


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


def test_registry_holds_every_method():
    for name, cls in CLASSES.items():
        assert METHODS[name] is cls
        assert issubclass(cls, Method)


def test_defaults_follow_repdistiller():
    stages = ("stage1", "stage2", "stage3")
    assert FitNet().student_features == FitNet().teacher_features == ("stage2",)
    assert AttentionTransfer().student_features == stages and AttentionTransfer().p == 2.0
    assert SimilarityPreserving().teacher_features == ("stage3",)
    assert CorrelationCongruence().embed_dim == 128
    assert CorrelationCongruence().student_features == ("pre_logits",)
    vid = VID()
    assert vid.teacher_features == stages and (vid.init_pred_var, vid.eps) == (5.0, 1e-5)
    rkd = RKD()
    assert (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0)
    assert rkd.student_features == ("pre_logits",)
    assert PKT().eps == 1e-7 and PKT().teacher_features == ("pre_logits",)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_matches_numpy_reference(name):
    variables = default_variables(name)
    loss, _ = init_and_apply(CLASSES[name](), STUDENT, TEACHER, variables=variables)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert bool(jnp.isfinite(loss)) and float(loss) > 0.0
    np.testing.assert_allclose(float(loss), reference(name, STUDENT, TEACHER, variables), rtol=2e-5)
    if name in TRAINABLE:
        assert jax.tree.leaves(variables["params"])
    else:
        assert not jax.tree.leaves(variables)


@pytest.mark.parametrize("name", ["at", "sp", "rkd", "pkt"])
def test_zero_for_identical_features(name):
    loss, _ = init_and_apply(CLASSES[name](), TEACHER, TEACHER, variables={})
    assert abs(float(loss)) < 1e-6


def test_rkd_invariant_to_scale_and_translation():
    method = RKD()
    base, variables = init_and_apply(method, STUDENT, TEACHER, variables={})
    shift = np.random.default_rng(2).normal(size=(1, 5)).astype(np.float32)
    moved = dict(STUDENT, pre_logits=3.5 * STUDENT["pre_logits"] + shift)
    loss, _ = init_and_apply(method, moved, TEACHER, variables=variables)
    np.testing.assert_allclose(float(loss), float(base), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_gradient_reaches_student_and_params_not_teacher(name):
    method = CLASSES[name]()
    variables = default_variables(name)
    batch = make_batch(B)

    def loss_fn(params, student_feats, teacher_feats):
        variables_ = {"params": params} if params else {}
        return method.apply(variables_, outputs(student_feats), outputs(teacher_feats), batch)

    params = variables.get("params", {})
    g_params, g_student, g_teacher = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)))(
        params, STUDENT, TEACHER
    )
    for name_t in method.teacher_features:
        assert not np.any(np.asarray(g_teacher[name_t]))
    for name_s in method.student_features:
        grad = np.asarray(g_student[name_s])
        assert np.all(np.isfinite(grad)) and np.any(grad)
    for leaf in jax.tree.leaves(g_params):
        assert np.all(np.isfinite(leaf))
    if name in TRAINABLE:
        assert any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(g_params))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_masked_result_equals_result_on_kept_rows(name):
    method = CLASSES[name]()
    variables = default_variables(name)
    kept, _ = init_and_apply(
        method,
        {k: v[MASK] for k, v in STUDENT.items()},
        {k: v[MASK] for k, v in TEACHER.items()},
        variables=variables,
    )
    # Padded rows hold NaN/inf: neither the value nor the gradients may see them.
    poisoned_s = {
        k: np.where(MASK.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.nan)
        for k, v in STUDENT.items()
    }
    poisoned_t = {
        k: np.where(MASK.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.inf)
        for k, v in TEACHER.items()
    }
    batch = make_batch(B, MASK)

    def loss_fn(params, student_feats):
        variables_ = {"params": params} if params else {}
        return method.apply(variables_, outputs(student_feats), outputs(poisoned_t), batch)

    params = variables.get("params", {})
    masked, (g_params, g_student) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
        params, poisoned_s
    )
    np.testing.assert_allclose(float(masked), float(kept), rtol=1e-5)
    for leaf in jax.tree.leaves((g_params, g_student)):
        assert np.all(np.isfinite(leaf))
    for name_s in method.student_features:
        assert not np.any(np.asarray(g_student[name_s])[~MASK])


@pytest.mark.parametrize(
    "student_shape, teacher_shape, conv",
    [
        ((B, 8, 8, 3), (B, 4, 4, 4), {"stride": 2, "pad": 1}),  # 3x3 stride-2 conv
        ((B, 2, 2, 3), (B, 4, 4, 4), {"transpose": True}),  # 4x4 stride-2 transposed conv
        ((B, 4, 4, 3), (B, 3, 3, 4), {}),  # 2x2 valid conv
    ],
)
def test_fitnet_regressor_shapes(student_shape, teacher_shape, conv):
    rng = np.random.default_rng(3)
    f_s = rng.normal(size=student_shape).astype(np.float32)
    f_t = rng.normal(size=teacher_shape).astype(np.float32)
    loss, variables = init_and_apply(FitNet(), {"stage2": f_s}, {"stage2": f_t})
    params = np_params(variables)["regressor0"]
    np.testing.assert_allclose(float(loss), np_fitnet(f_s, f_t, params, **conv), rtol=2e-5)


def test_fitnet_rejects_unmappable_sizes():
    f_s = np.ones((B, 2, 2, 3), np.float32)
    f_t = np.ones((B, 5, 5, 4), np.float32)
    with pytest.raises(ValueError, match="2x2.*5x5"):
        init_and_apply(FitNet(), {"stage2": f_s}, {"stage2": f_t})


def test_at_pools_the_larger_map_and_rejects_other_sizes():
    rng = np.random.default_rng(4)
    f_s = rng.normal(size=(B, 8, 8, 3)).astype(np.float32)
    f_t = rng.normal(size=(B, 4, 4, 5)).astype(np.float32)
    method = AttentionTransfer(student_features=("a",), teacher_features=("b",))
    loss, _ = init_and_apply(method, {"a": f_s}, {"b": f_t}, variables={})
    pooled = f_s.reshape(B, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(float(loss), np_at(pooled, f_t), rtol=2e-5)
    with pytest.raises(ValueError, match=r"\(6, 4, 4, 5\).*\(6, 3, 3, 5\)"):
        init_and_apply(method, {"a": f_t}, {"b": f_t[:, :3, :3]}, variables={})


def test_vid_starts_at_init_pred_var():
    variables = default_variables("vid")
    for i, channels in enumerate((4, 6, 8)):
        log_scale = variables["params"][f"regressor{i}"]["log_scale"]
        assert log_scale.shape == (channels,)
        np.testing.assert_allclose(jax.nn.softplus(log_scale) + 1e-5, 5.0, rtol=1e-6)


def test_missing_feature_names_the_available_ones():
    method = SimilarityPreserving(student_features=("stage9",))
    with pytest.raises(ValueError, match="stage9.*pre_logits"):
        init_and_apply(method, STUDENT, TEACHER, variables={})


def test_contract_call_with_mutable_memory():
    # The pipeline applies every method with `mutable=["memory"]`; these keep no state.
    args = (outputs(STUDENT), outputs(TEACHER), make_batch(B))
    loss, state = FitNet().apply(default_variables("fitnet"), *args, mutable=["memory"])
    assert loss.shape == () and not jax.tree.leaves(state)


def test_gradients_match_finite_differences_float64():
    # One compiled function: the sum of every method (under a mask), differentiated with
    # respect to the student features and the methods' parameters, checked against
    # central differences along random directions (`check_grads` without recompiles).
    with jax.enable_x64(True):
        # NumPy arithmetic for the perturbations: eager jnp ops would compile per shape.
        to64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
        args = (
            to64(STUDENT),
            {name: to64(default_variables(name)["params"]) for name in sorted(TRAINABLE)},
        )
        teacher = to64(TEACHER)
        batch = make_batch(B, MASK)

        def total(student_feats, params):
            losses = []
            for name, cls in CLASSES.items():
                variables = {"params": params[name]} if name in TRAINABLE else {}
                losses.append(
                    cls().apply(variables, outputs(student_feats), outputs(teacher), batch)
                )
            return sum(losses)

        fn = jax.jit(total)
        grads = jax.jit(jax.grad(total, argnums=(0, 1)))(*args)
        assert fn(*args).dtype == jnp.float64
        rng = np.random.default_rng(5)
        step = 1e-6
        for _ in range(3):
            direction = jax.tree.map(lambda x: rng.normal(size=x.shape), args)
            plus = fn(*jax.tree.map(lambda x, d: x + step * d, args, direction))
            minus = fn(*jax.tree.map(lambda x, d: x - step * d, args, direction))
            numeric = (plus - minus) / (2 * step)
            analytic = sum(
                np.vdot(np.asarray(g), d)
                for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
            )
            np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)
