"""Tests of the relation/feature methods AB, FT, FSP, NST, ReviewKD and CRD.

Every method is checked against an independent float64 NumPy re-derivation (written from
the reference implementations, using the module's own initialised parameters), plus
invariants: zero loss for identical inputs (FSP, NST), no gradient to the teacher, masked
rows ignored, and CRD's memory-bank semantics. Each method is jit-compiled once (one
value-and-grad function, cached), with small shapes and `rbg` keys (fast to compile), so
the whole file stays fast on a shared CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.losses import crd as crd_module
from distill_jax.losses import relation
from distill_jax.losses.method import METHODS, Method

B = 6
NUM_DATA, NCE_K, FEAT_DIM = 32, 8, 8
NCE_M = 0.75  # not the default 0.5, so that m and 1 - m cannot be swapped unnoticed
NAMES = ("ab", "ft", "fsp", "nst", "reviewkd", "crd")

_RNG = np.random.default_rng(0)


def _rand(*shape):
    return _RNG.normal(size=shape).astype(np.float32)


# Student and teacher features: 4x4 / 2x2 / 1x1 maps with a few channels (NHWC).
STUDENT = {
    "stem": _rand(B, 4, 4, 3),
    "stage1": _rand(B, 4, 4, 3),
    "stage2": _rand(B, 2, 2, 4),
    "stage3": _rand(B, 2, 2, 5),
    "stage1_preact": _rand(B, 4, 4, 3),
    "stage2_preact": _rand(B, 2, 2, 4),
    "stage3_preact": _rand(B, 2, 2, 5),
    "pre_logits": _rand(B, 5),
}
TEACHER = {
    "stem": _rand(B, 4, 4, 3),
    "stage1": _rand(B, 4, 4, 3),
    "stage2": _rand(B, 2, 2, 4),
    "stage3": _rand(B, 1, 1, 5),
    "stage1_preact": _rand(B, 4, 4, 6),
    "stage2_preact": _rand(B, 2, 2, 4),
    "stage3_preact": _rand(B, 1, 1, 7),
    "pre_logits": _rand(B, 5),
}
INDEX = np.array([3, 17, 0, 31, 8, 22], np.int32)
ALL_ROWS = np.ones(B, bool)


def make_method(name: str) -> Method:
    """The configurations under test (defaults unless a path needs other shapes)."""
    cls = METHODS[name]
    if name == "ft":  # 4x4 student factor pooled to the teacher's 2x2
        return cls(student_features=("stage1",), teacher_features=("stage2",))
    if name == "nst":  # different channels and spatial sizes
        return cls(teacher_features=("stage1_preact", "stage2_preact", "stage3_preact"))
    if name == "crd":
        return cls(num_data=NUM_DATA, nce_k=NCE_K, feat_dim=FEAT_DIM, nce_m=NCE_M)
    return cls()


def _outputs(features):
    return {"logits": jnp.zeros((B, 3)), "features": features}


@functools.cache
def init_variables(name: str):
    method = make_method(name)
    rngs = {"params": jax.random.key(0, impl="rbg"), "crd": jax.random.key(1, impl="rbg")}
    batch = {"label": jnp.zeros(B, jnp.int32), "index": jnp.asarray(INDEX), "mask": ALL_ROWS}
    init = jax.jit(lambda s, t: method.init(rngs, _outputs(s), _outputs(t), batch, train=False))
    variables = init(STUDENT, TEACHER)
    return jax.tree.map(np.asarray, dict(variables))


@functools.cache
def runner(name: str, train: bool = True):
    """jit(value_and_grad) of the method w.r.t. (params, student features, teacher features).

    Returns `((loss, updated collections), (d_params, d_student, d_teacher))`.
    """
    method = make_method(name)

    def loss_fn(params, student, teacher, memory, mask, index, key):
        variables = {"params": params}
        if memory:
            variables["memory"] = memory
        batch = {"label": jnp.zeros(B, jnp.int32), "index": index, "mask": mask}
        loss, updates = method.apply(
            variables,
            _outputs(student),
            _outputs(teacher),
            batch,
            train=train,
            rngs={"crd": key},
            mutable=["memory", "intermediates"],
        )
        return loss, updates

    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))


def run(name, student=STUDENT, teacher=TEACHER, mask=ALL_ROWS, memory=None, train=True, seed=2):
    variables = init_variables(name)
    if memory is None:
        memory = variables.get("memory", {})
    (loss, updates), grads = runner(name, train)(
        variables.get("params", {}),
        student,
        teacher,
        memory,
        mask,
        INDEX,
        jax.random.key(seed, impl="rbg"),
    )
    return float(loss), jax.tree.map(np.asarray, dict(updates)), grads


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference.
# ---------------------------------------------------------------------------


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def np_conv(x, p, stride=1, pad=0):
    """Cross-correlation, NHWC input, HWIO kernel (`p["kernel"]`, optional `p["bias"]`)."""
    kernel = p["kernel"]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, c_out = kernel.shape
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, c_out))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride
            ]
            out += patch @ kernel[i, j]
    return out + p["bias"] if "bias" in p else out


def np_bn_train(x, p, eps=1e-5):
    """PyTorch BatchNorm2d in training mode (biased batch variance)."""
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_leaky(x):
    return np.where(x >= 0, x, 0.1 * x)


def np_adaptive_pool(x, size):
    """PyTorch adaptive_avg_pool2d, written with explicit bins."""
    _, H, W, _ = x.shape
    h, w = size
    out = np.zeros((x.shape[0], h, w, x.shape[3]))
    for i in range(h):
        r0, r1 = int(np.floor(i * H / h)), int(np.ceil((i + 1) * H / h))
        for j in range(w):
            c0, c1 = int(np.floor(j * W / w)), int(np.ceil((j + 1) * W / w))
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def np_nearest(x, size):
    """PyTorch F.interpolate(mode="nearest")."""
    _, H, W, _ = x.shape
    rows = [int(np.floor(i * H / size[0])) for i in range(size[0])]
    cols = [int(np.floor(j * W / size[1])) for j in range(size[1])]
    return x[:, rows][:, :, cols]


def np_match(a, b):
    if a.shape[1] > b.shape[1]:
        a = np_adaptive_pool(a, b.shape[1:3])
    elif a.shape[1] < b.shape[1]:
        b = np_adaptive_pool(b, a.shape[1:3])
    return a, b


def np_normalize(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_ab(params, s_list, t_list, margin=1.0):
    n = len(s_list)
    total = 0.0
    for i, (s, t) in enumerate(zip(s_list, t_list, strict=True)):
        if s.shape != t.shape:
            stride, pad = (1, 0) if s.shape[1] == t.shape[1] else (2, 1)
            s = np_conv(s, params[f"connector{i}_conv"], stride, pad)
            s = np_bn_train(s, params[f"connector{i}_norm"])
        loss = (s + margin) ** 2 * ((s > -margin) & (t <= 0)) + (s - margin) ** 2 * (
            (s <= margin) & (t > 0)
        )
        total += 2.0 ** (i - n + 1) * loss.sum() / s.shape[0] / 1000 * 3
    return total


def np_ft(params, s, t):
    h = s
    for j in range(3):
        h = np_leaky(
            np_bn_train(
                np_conv(h, params["translator"][f"conv{j}"], pad=1),
                params["translator"][f"norm{j}"],
            )
        )
    factor_s = h
    h = t
    for j in range(3):
        h = np_leaky(np_conv(h, params["paraphraser"][f"enc{j}"], pad=1))
    factor_t = h
    for j in range(3):
        h = np_leaky(np_conv(h, params["paraphraser"][f"dec{j}"], pad=1))
    rec = h
    factor_s, factor_t = np_match(factor_s, factor_t)

    def factor(f):
        return np_normalize((f**2).mean(-1).reshape(f.shape[0], -1))

    return np.abs(factor(factor_s) - factor(factor_t)).mean() + ((rec - t) ** 2).mean()


def np_fsp(s_list, t_list):
    def matrices(feats):
        out = []
        for bot, top in zip(feats[:-1], feats[1:], strict=True):
            bot, top = np_match(bot, top)
            b, h, w, _ = bot.shape
            bot_BNC = bot.reshape(b, h * w, -1)
            top_BND = top.reshape(b, h * w, -1)
            fsp = np.zeros((b, top.shape[-1], bot.shape[-1]))
            for d in range(top.shape[-1]):
                for c in range(bot.shape[-1]):
                    fsp[:, d, c] = (top_BND[:, :, d] * bot_BNC[:, :, c]).mean(1)
            out.append(fsp)
        return out

    return sum(
        ((gs - gt) ** 2).mean() for gs, gt in zip(matrices(s_list), matrices(t_list), strict=True)
    )


def np_nst(s_list, t_list):
    total = 0.0
    for s, t in zip(s_list, t_list, strict=True):
        s, t = np_match(s, t)
        b = s.shape[0]
        s_BCN = np_normalize(s.reshape(b, -1, s.shape[-1]).transpose(0, 2, 1))
        t_BCN = np_normalize(t.reshape(b, -1, t.shape[-1]).transpose(0, 2, 1))

        def poly(a, c):  # RepDistiller: (a.unsqueeze(1) * c.unsqueeze(2)).sum(-1) ** 2
            return ((a[:, None, :, :] * c[:, :, None, :]).sum(-1) ** 2).mean()

        total += poly(t_BCN, t_BCN) + poly(s_BCN, s_BCN) - 2 * poly(s_BCN, t_BCN)
    return total


def np_reviewkd(params, s_list, t_list):
    s_list = [x[:, None, None, :] if x.ndim == 2 else x for x in s_list]
    t_list = [x[:, None, None, :] if x.ndim == 2 else x for x in t_list]
    n = len(s_list)
    results = [None] * n
    residual = None
    for i in reversed(range(n)):
        p = params[f"abf{i}"]
        x = np_bn_train(np_conv(s_list[i], p["conv1"]), p["norm1"])
        if i < n - 1:
            y = np_nearest(residual, x.shape[1:3])
            z = 1.0 / (1.0 + np.exp(-np_conv(np.concatenate([x, y], -1), p["att_conv"])))
            x = x * z[..., :1] + y * z[..., 1:]
        if x.shape[1:3] != t_list[i].shape[1:3]:
            x = np_nearest(x, t_list[i].shape[1:3])
        results[i] = np_bn_train(np_conv(x, p["conv2"], pad=1), p["norm2"])
        residual = x
    total = 0.0
    for fs, ft in zip(results, t_list, strict=True):
        h = fs.shape[1]
        loss, cnt, tot = ((fs - ft) ** 2).mean(), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            cnt /= 2.0
            pooled_s = np_adaptive_pool(fs, (level, level))
            pooled_t = np_adaptive_pool(ft, (level, level))
            loss += ((pooled_s - pooled_t) ** 2).mean() * cnt
            tot += cnt
        total += loss / tot
    return total


def np_crd(params, memory, f_s, f_t, index, idx, num_data, T=0.07, momentum=NCE_M):
    """RepDistiller's CRDLoss + ContrastMemory; returns (loss, new memory)."""

    def embed(p, x):
        y = x.reshape(x.shape[0], -1) @ p["linear"]["kernel"] + p["linear"]["bias"]
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    v1, v2 = embed(params["embed_s"], f_s), embed(params["embed_t"], f_t)
    mem_v1, mem_v2 = memory["student_bank"], memory["teacher_bank"]
    out_v2 = np.exp(np.einsum("bkd,bd->bk", mem_v1[idx], v2) / T)
    out_v1 = np.exp(np.einsum("bkd,bd->bk", mem_v2[idx], v1) / T)
    z_v1 = memory["z_student"] if memory["z_student"] > 0 else out_v1.mean() * num_data
    z_v2 = memory["z_teacher"] if memory["z_teacher"] > 0 else out_v2.mean() * num_data
    out_v1, out_v2 = out_v1 / z_v1, out_v2 / z_v2

    def contrast(x):
        m, pn = x.shape[1] - 1, 1.0 / num_data
        log_d1 = np.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7))
        log_d0 = np.log(m * pn / (x[:, 1:] + m * pn + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / x.shape[0]

    new = {"z_student": z_v1, "z_teacher": z_v2}
    for key, mem, v in (("student_bank", mem_v1, v1), ("teacher_bank", mem_v2, v2)):
        mem = mem.copy()
        rows = mem[index] * momentum + v * (1 - momentum)
        mem[index] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        new[key] = mem
    return contrast(out_v1) + contrast(out_v2), new


def np_reference(name, params, updates, student, teacher, rows):
    """The NumPy loss of `name` on the examples `rows` (a boolean row mask)."""
    method = make_method(name)
    s_list = [f64(student[n])[rows] for n in method.student_features]
    t_list = [f64(teacher[n])[rows] for n in method.teacher_features]
    params = f64(params)
    if name == "ab":
        return np_ab(params, s_list, t_list)
    if name == "ft":
        return np_ft(params, s_list[0], t_list[0])
    if name == "fsp":
        return np_fsp(s_list, t_list)
    if name == "nst":
        return np_nst(s_list, t_list)
    if name == "reviewkd":
        return np_reviewkd(params, s_list, t_list)
    idx = updates["intermediates"]["contrast_index"][0][rows]
    memory = f64(init_variables("crd")["memory"])
    return np_crd(params, memory, s_list[0], t_list[0], INDEX[rows], idx, NUM_DATA)[0]


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


def test_registry_has_every_method():
    for name in NAMES:
        cls = METHODS[name]
        assert issubclass(cls, Method)
        method = cls()
        assert all(isinstance(n, str) for n in method.student_features)
        assert len(method.student_features) == len(method.teacher_features)
        assert "weight" in cls.__doc__.lower() or "weight" in relation.__doc__
    crd = METHODS["crd"]()
    assert (crd.feat_dim, crd.nce_k, crd.nce_t, crd.nce_m) == (128, 16384, 0.07, 0.5)
    assert METHODS["ab"]().margin == 1.0 and METHODS["ft"]().rate == 0.5
    assert METHODS["ft"]().train_paraphraser and tuple(METHODS["reviewkd"]().levels) == (4, 2, 1)
    assert METHODS["crd"] is crd_module.CRD
    assert METHODS["reviewkd"] is relation.ReviewKD


@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_and_no_teacher_gradient(name):
    loss, updates, (d_params, d_student, d_teacher) = run(name)
    params = init_variables(name).get("params", {})
    expected = np_reference(name, params, updates, STUDENT, TEACHER, ALL_ROWS)
    np.testing.assert_allclose(loss, expected, rtol=2e-5, atol=1e-6)
    assert np.isfinite(loss)
    # No gradient reaches the teacher's features, exactly.
    for grad in jax.tree.leaves(d_teacher):
        assert not np.any(np.asarray(grad)), name
    # The student's features and the trainable parts do get (finite) gradients.
    method = make_method(name)
    assert any(np.any(np.asarray(d_student[n])) for n in method.student_features), name
    for grad in jax.tree.leaves((d_student, d_params)):
        assert np.all(np.isfinite(np.asarray(grad)))
    if name in ("ab", "ft", "reviewkd", "crd"):
        assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(d_params)), name


@pytest.mark.parametrize("name", NAMES)
def test_masked_rows_are_ignored(name):
    """Padded rows (here: huge garbage values) change nothing; BN statistics skip them."""
    mask = np.array([True, False, True, True, False, True])
    student = {k: v.copy() for k, v in STUDENT.items()}
    for v in student.values():
        v[~mask] = 1e3 * _rand(*v[~mask].shape)
    loss, updates, _ = run(name, student=student, mask=mask)
    params = init_variables(name).get("params", {})
    expected = np_reference(name, params, updates, student, TEACHER, mask)
    np.testing.assert_allclose(loss, expected, rtol=2e-5, atol=1e-6)
    if name == "crd":  # the bank rows of masked examples keep their old values
        old = init_variables("crd")["memory"]
        for bank in ("student_bank", "teacher_bank"):
            np.testing.assert_array_equal(
                updates["memory"][bank][INDEX[~mask]], old[bank][INDEX[~mask]]
            )
            assert not np.allclose(updates["memory"][bank][INDEX[mask]], old[bank][INDEX[mask]])


@pytest.mark.parametrize("name", ["fsp", "nst"])
def test_identical_features_give_zero_loss(name):
    method = make_method(name)
    teacher = dict(TEACHER)
    teacher.update(
        zip(method.teacher_features, (STUDENT[n] for n in method.student_features), strict=True)
    )
    loss, _, _ = run(name, teacher=teacher)
    assert abs(loss) < 1e-6


def test_nst_and_fsp_are_positive_otherwise():
    assert run("fsp")[0] > 0 and run("nst")[0] > 0


def test_helpers_match_pytorch_semantics():
    x = _rand(2, 5, 7, 3)
    np.testing.assert_allclose(
        relation.adaptive_avg_pool(x, (3, 2)),
        np_adaptive_pool(f64(x), (3, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(relation.resize_nearest(x, (10, 3)), np_nearest(x, (10, 3)))


def test_ft_without_paraphraser_training_returns_factor_loss_only():
    method = relation.FactorTransfer(
        student_features=("stage1",), teacher_features=("stage2",), train_paraphraser=False
    )
    variables = init_variables("ft")
    batch = {"label": None, "index": INDEX, "mask": None}
    loss = jax.jit(lambda v, s, t: method.apply(v, _outputs(s), _outputs(t), batch))(
        variables, STUDENT, TEACHER
    )
    full = np_reference("ft", variables["params"], {}, STUDENT, TEACHER, ALL_ROWS)
    p = f64(variables["params"])
    t = f64(TEACHER["stage2"])
    h = t
    for j in range(6):
        layer = f"enc{j}" if j < 3 else f"dec{j - 3}"
        h = np_leaky(np_conv(h, p["paraphraser"][layer], pad=1))
    np.testing.assert_allclose(float(loss), full - ((h - t) ** 2).mean(), rtol=2e-5, atol=1e-6)


# --- CRD memory bank ------------------------------------------------------------------


def test_crd_memory_update_and_fixed_z():
    variables = init_variables("crd")
    old = variables["memory"]
    assert old["student_bank"].shape == (NUM_DATA, FEAT_DIM)
    stdv = 1.0 / np.sqrt(FEAT_DIM / 3)
    assert np.abs(old["student_bank"]).max() <= stdv and float(old["z_student"]) < 0
    _, updates, _ = run("crd")
    idx = updates["intermediates"]["contrast_index"][0]
    assert idx.shape == (B, NCE_K + 1)
    np.testing.assert_array_equal(idx[:, 0], INDEX)
    assert idx.min() >= 0 and idx.max() < NUM_DATA
    _, expected = np_crd(
        f64(variables["params"]),
        f64(old),
        f64(STUDENT["pre_logits"]),
        f64(TEACHER["pre_logits"]),
        INDEX,
        idx,
        NUM_DATA,
    )
    new = updates["memory"]
    for key in ("student_bank", "teacher_bank", "z_student", "z_teacher"):
        np.testing.assert_allclose(new[key], expected[key], rtol=2e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(NUM_DATA), INDEX)
    np.testing.assert_array_equal(new["student_bank"][untouched], old["student_bank"][untouched])
    np.testing.assert_allclose(np.linalg.norm(new["teacher_bank"][INDEX], axis=1), 1, rtol=1e-5)
    # Z is fixed after the first call: a second call with other features keeps it.
    student = dict(STUDENT, pre_logits=_rand(B, 5))
    _, updates2, _ = run("crd", student=student, memory=new, seed=5)
    for key in ("z_student", "z_teacher"):
        assert updates2["memory"][key] == new[key]


def test_crd_eval_does_not_update_memory():
    old = init_variables("crd")["memory"]
    loss, updates, _ = run("crd", train=False)
    assert np.isfinite(loss)
    for key, value in old.items():
        np.testing.assert_array_equal(updates["memory"][key], value)


def test_crd_sgd_sanity_when_student_equals_teacher():
    """Identical features: a few SGD steps on the embeddings lower the loss."""
    variables = init_variables("crd")
    params, memory = variables["params"], variables["memory"]
    step = runner("crd", True)
    features = dict(STUDENT)
    losses = []
    for _ in range(6):
        (loss, updates), (d_params, _, _) = step(
            params, features, features, memory, ALL_ROWS, INDEX, jax.random.key(7, impl="rbg")
        )
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, d_params)
        memory = updates["memory"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize(
    ("student_hw", "teacher_hw", "layer"),
    [((2, 2), (4, 4), "connector0_convT"), ((4, 4), (3, 3), "connector0_conv")],
)
def test_ab_connector_resizes_like_convreg(student_hw, teacher_hw, layer):
    """Transposed (half-size student) and VALID (larger student) connectors; shapes only."""
    method = relation.ActivationBoundaries(
        student_features=("stage1_preact",), teacher_features=("stage1_preact",)
    )
    student = _outputs({"stage1_preact": jnp.zeros((B, *student_hw, 3))})
    teacher = _outputs({"stage1_preact": jnp.zeros((B, *teacher_hw, 6))})
    batch = {"label": None, "index": INDEX, "mask": None}
    rngs = {"params": jax.random.key(0, impl="rbg")}
    shapes = jax.eval_shape(lambda: method.init(rngs, student, teacher, batch))
    assert shapes["params"][layer]["kernel"].shape[-1] == 6
