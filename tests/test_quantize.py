"""Int8 quantization with qwix: PTQ accuracy on `digits`, storage, NumPy numerics, QAT + KD.

Tolerances stated here are checked on the embedded `digits` test split (400 images):
int8 PTQ accuracy within 1 point (4 images) of float, and logits within 5% relative
(Frobenius) error of the float logits.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import qwix

from distill_jax import data
from distill_jax.compress import int8_rules, ptq, qat, stored_bytes
from distill_jax.data.augment import to_float
from distill_jax.models import create_model
from distill_jax.objective import Objective
from distill_jax.teachers import OnlineTeacher, Teacher
from distill_jax.train.state import TrainState
from distill_jax.train.steps import frozen_inputs, make_train_step

SHAPE = (8, 8, 1)
ACCURACY_TOLERANCE = 0.01  # int8 PTQ vs float test accuracy (fraction of 400 images)
LOGIT_TOLERANCE = 0.05  # ||int8 - float|| / ||float|| over the test logits
MLP = {"name": "mlp", "hidden": [64, 32]}
CNN = {"name": "cnn", "widths": [8, 16], "dense": 32, "batch_norm": True}


@pytest.fixture(scope="module")
def digits(data_dir):
    train = data.load_split("digits", "train", data_dir=data_dir)
    test = data.load_split("digits", "test", data_dir=data_dir)
    return train, test


def _init(model, seed=0):
    """Variables drawn in NumPy: LeCun-normal kernels, zero biases, unit BN scales/variances.

    (`model.init` would compile XLA's normal sampler: seconds on a busy CPU, per model.)
    """
    init = functools.partial(model.init, train=False)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.prod(leaf.shape[:-1]) ** -0.5
            return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _train(model, train, steps, variables, teacher=None, seed=0):
    """`steps` jit-compiled steps of Adam from `variables` (CE, or KD from a teacher).

    Args:
        teacher: `(model, variables)` of the teacher, or None.

    Returns:
        The final state, the initial state and the per-step losses.
    """
    tx = optax.adam(3e-3)
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init({"student": params, "methods": {}}),
        rng=jax.random.PRNGKey(seed),
    )
    source = None if teacher is None else OnlineTeacher(Teacher(*teacher, {}))
    objective = Objective(
        {"alpha": 0.1, "temperature": 4.0, "losses": {}}, distilling=teacher is not None
    )
    step = jax.jit(make_train_step(model, tx, objective, teacher=source))
    frozen = frozen_inputs(None if teacher is None else teacher[1])
    rng = np.random.default_rng(seed)
    losses, first = [], state
    for _ in range(steps):
        index = rng.integers(0, len(train), 64).astype(np.int32)
        batch = {"image": train.images[index], "label": train.labels[index], "index": index}
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    return state, first, np.array(losses)


def _logits(model, variables, images):
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
    return np.asarray(apply(variables, to_float(jnp.asarray(images))))


def _accuracy(logits, labels):
    return float(np.mean(logits.argmax(-1) == labels))


def _relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _kernels(qparams):
    """The qwix QArrays (int8 values + scales) in a quantized params tree."""
    is_q = lambda x: isinstance(x, qwix.QArray)
    return [x for x in jax.tree.leaves(qparams, is_leaf=is_q) if is_q(x)]


@pytest.fixture(scope="module")
def float_mlp(digits):
    model = create_model(MLP, 10)
    state, _, _ = _train(model, digits[0], 300, _init(model))
    return model, state.variables


def test_one_dense_layer_matches_numpy_int8(digits):
    """Independent re-derivation of qwix's scheme for one Dense layer (the MLP's head).

    Weights: per output column, s_w = max|w| / 127.5, q_w = clip(round(w / s_w), -128, 127).
    Activations (dynamic): per example, s_x = max|x| / 127.5, q_x = round(x / s_x).
    Output: (q_x @ q_w) * s_x * s_w + b, the int8 product accumulated exactly in int32.

    The column's extreme weight lands on w / s_w = +-127.5 up to float32 rounding, where
    round-half-to-even makes the code ulp-sensitive: +127.5 saturates to 127 either way,
    but -127.5 becomes -128 or -127 depending on the last bit of XLA's division. Those
    entries (one per column at most) may differ by one code; all others must match.
    """
    model = create_model({"name": "mlp", "hidden": []}, 10)
    images = digits[1].images[:50]
    variables = _init(model, seed=1)
    qmodel, qvariables = ptq(model, variables, to_float(images[:1]))

    w = np.asarray(variables["params"]["head"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["head"]["bias"], np.float64)
    s_w = np.abs(w).max(axis=0, keepdims=True) / 127.5
    q_w = np.clip(np.round(w / s_w), -128, 127)
    (stored,) = _kernels(qvariables["params"])
    assert stored.qvalue.dtype == jnp.int8 and stored.scale.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(stored.scale), s_w, rtol=1e-6)
    q_stored = np.asarray(stored.qvalue, np.int64)
    boundary = np.abs(np.abs(w / s_w) - 127.5) < 1e-3
    assert np.all(boundary.sum(axis=0) == 1)  # the extreme entry of each column
    np.testing.assert_array_equal(q_stored[~boundary], q_w[~boundary])
    assert np.all(np.abs(q_stored - q_w)[boundary] <= 1)
    q_w = np.where(boundary, q_stored, q_w)  # the code XLA chose at the boundary

    x = np.asarray(to_float(images), np.float64).reshape(len(images), -1)
    s_x = np.abs(x).max(axis=1, keepdims=True) / 127.5  # pixels >= 0: max -> 127
    q_x = np.clip(np.round(x / s_x), -128, 127)
    want = (q_x @ q_w) * s_x * s_w + b
    got = _logits(qmodel, qvariables, images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # And it is not the float layer: quantization visibly changed the outputs.
    assert np.abs(got - _logits(model, variables, images)).max() > 1e-4


def test_ptq_mlp_stays_within_tolerance_and_stores_int8(digits, float_mlp):
    model, variables = float_mlp
    test = digits[1]
    qmodel, qvariables = ptq(model, variables, to_float(test.images[:1]))
    float_logits = _logits(model, variables, test.images)
    int8_logits = _logits(qmodel, qvariables, test.images)
    float_acc = _accuracy(float_logits, test.labels)
    int8_acc = _accuracy(int8_logits, test.labels)
    assert float_acc > 0.9  # the float model learned something worth quantizing
    assert abs(int8_acc - float_acc) <= ACCURACY_TOLERANCE
    assert _relative_error(int8_logits, float_logits) < LOGIT_TOLERANCE
    # Same features as the float model.
    _, features = qmodel.apply(qvariables, to_float(test.images[:2]), train=False)
    assert sorted(features) == ["hidden1", "hidden2", "pre_logits"]

    # Every kernel is stored as int8 with one float32 scale per output unit.
    kernels = _kernels(qvariables["params"])
    assert [k.qvalue.shape for k in kernels] == [(64, 64), (64, 32), (32, 10)]
    assert all(k.qvalue.dtype == jnp.int8 for k in kernels)
    assert [k.scale.shape for k in kernels] == [(1, 64), (1, 32), (1, 10)]
    # Bytes: 1 per int8 weight, 4 per float32 scale and bias.
    n_weights = 64 * 64 + 64 * 32 + 32 * 10
    n_units = 64 + 32 + 10
    assert stored_bytes(variables) == 4 * (n_weights + n_units)
    assert stored_bytes(qvariables) == n_weights + 4 * n_units + 4 * n_units
    assert stored_bytes(qvariables) < 0.3 * stored_bytes(variables)


def test_ptq_cnn_with_batchnorm_stays_within_tolerance(digits):
    model = create_model(CNN, 10)
    state, _, _ = _train(model, digits[0], 150, _init(model))
    variables, test = state.variables, digits[1]
    qmodel, qvariables = ptq(model, variables, to_float(test.images[:1]))
    # BatchNorm statistics (and parameters) are carried over unchanged.
    for name in ("batch_stats", "params"):
        carried = {k: v for k, v in qvariables[name].items() if k.startswith("BatchNorm")}
        want = {k: v for k, v in variables[name].items() if k.startswith("BatchNorm")}
        assert len(want) == 2
        jax.tree.map(np.testing.assert_array_equal, carried, want)
    kernels = _kernels(qvariables["params"])
    assert [k.qvalue.shape for k in kernels] == [(3, 3, 1, 8), (3, 3, 8, 16), (64, 32), (32, 10)]
    assert [k.scale.shape[-1] for k in kernels] == [8, 16, 32, 10]  # per output channel
    assert all(k.qvalue.dtype == jnp.int8 for k in kernels)

    float_logits = _logits(model, variables, test.images)
    int8_logits = _logits(qmodel, qvariables, test.images)
    float_acc = _accuracy(float_logits, test.labels)
    assert float_acc > 0.9
    assert abs(_accuracy(int8_logits, test.labels) - float_acc) <= ACCURACY_TOLERANCE
    assert _relative_error(int8_logits, float_logits) < LOGIT_TOLERANCE


def test_qat_gradients_are_straight_through():
    """For one Dense layer and a loss linear in its output, STE gives the float gradient."""
    model = create_model({"name": "mlp", "hidden": []}, 10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((16, *SHAPE)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    params = _init(model, seed=2)["params"]

    def loss(m):
        return lambda p: jnp.sum(c * m.apply({"params": p}, x)[0])

    qmodel = qat(model)
    assert loss(qmodel)(params) != pytest.approx(float(loss(model)(params)), rel=1e-6)
    g_qat, g_float = jax.grad(loss(qmodel))(params), jax.grad(loss(model))(params)
    for a, b in zip(jax.tree.leaves(g_qat), jax.tree.leaves(g_float), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_qat_student_distils_from_teacher_and_exports_to_int8(digits, float_mlp):
    train, test = digits
    student = create_model({"name": "mlp", "hidden": [32]}, 10)
    qstudent = qat(student)
    x = to_float(test.images[:4])
    # Same variables tree as the float model: a float checkpoint initialises it.
    shapes = [jax.eval_shape(m.init, jax.random.PRNGKey(0), x) for m in (student, qstudent)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    assert jax.tree.map(lambda a: a.shape, shapes[0]) == jax.tree.map(lambda a: a.shape, shapes[1])
    # ... so the QAT student trains from float-initialised variables.
    state, first, losses = _train(qstudent, train, 150, _init(student), teacher=float_mlp)
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), first.params, state.params)
    assert all(jax.tree.leaves(changed))

    # Export: the int8 model computes what the QAT model's fake-quantized forward did.
    qmodel, qvariables = ptq(student, state.variables, x)
    qat_logits = _logits(qstudent, state.variables, test.images)
    int8_logits = _logits(qmodel, qvariables, test.images)
    assert np.mean(qat_logits.argmax(-1) == int8_logits.argmax(-1)) >= 0.99
    assert _relative_error(int8_logits, qat_logits) < 1e-4
    assert _accuracy(int8_logits, test.labels) > 0.85
    # Exporting the QAT module itself gives the same int8 model.
    qmodel2, qvariables2 = ptq(qstudent, state.variables, x)
    np.testing.assert_array_equal(_logits(qmodel2, qvariables2, test.images), int8_logits)


def test_weight_only_rules_and_no_match_error(digits):
    model = create_model({"name": "mlp", "hidden": [16]}, 10)
    x = to_float(digits[1].images[:8])
    variables = _init(model)
    qmodel, qvariables = ptq(model, variables, x, int8_rules(activations=False))
    assert len(_kernels(qvariables["params"])) == 2
    # Weight-only: the output is the float layer applied to the dequantized weights.
    np.testing.assert_allclose(
        qmodel.apply(qvariables, x)[0],
        model.apply(variables, x)[0],
        rtol=0.05,
        atol=0.05 * float(jnp.abs(model.apply(variables, x)[0]).max()),
    )
    only_head = ptq(model, variables, x, int8_rules(module_path="head"))[1]
    assert len(_kernels(only_head["params"])) == 1
    with pytest.raises(ValueError, match="matched"):
        ptq(model, variables, x, int8_rules(module_path="nothing"))
