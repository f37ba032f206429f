"""The train step: teacher isolation, shared augmented views, and parallel equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.data.augment import random_translate
from distill_jax.models import create_model
from distill_jax.objective import Objective
from distill_jax.parallel import make_strategy
from distill_jax.tasks import Classification
from distill_jax.teachers import OnlineTeacher, Teacher
from distill_jax.train.optim import make_optimizer
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

IMAGE_SHAPE = (8, 8, 1)


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
        "index": rng.permutation(1000)[:n].astype(np.int32),
    }


def _setup(tiny_config, student_cfg, axis_name=None, translate=1):
    config = tiny_config()
    student = create_model(student_cfg, 10, axis_name=axis_name)
    teacher = create_model({"name": "mlp", "hidden": [32]}, 10)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, *IMAGE_SHAPE)))
    tx, schedule = make_optimizer(config.student.train.to_dict(), steps_per_epoch=10)
    state = create_train_state(student, tx, IMAGE_SHAPE, seed=0)
    step = make_train_step(
        student,
        tx,
        _hinton(0.3, 4.0, translate),
        teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {})),
        schedule=schedule,
        axis_name=axis_name,
    )
    return state, teacher_vars, step, teacher


def _hinton(alpha, temperature, translate):
    """Hinton's objective on a classification task with random translation."""
    return Objective(
        {"alpha": alpha, "temperature": temperature, "losses": {}},
        task=Classification(translate=translate),
    )


def test_teacher_unchanged_and_gets_no_gradient(tiny_config):
    state, teacher_vars, step, teacher = _setup(tiny_config, {"name": "mlp", "hidden": [16]})
    before = jax.tree.map(np.array, teacher_vars)
    new_state, metrics = jax.jit(step)(state, frozen_inputs(teacher_vars), _batch())
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, teacher_vars))
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
    # Differentiating the whole step's loss w.r.t. the teacher's parameters gives zeros.
    student = create_model({"name": "mlp", "hidden": [16]}, 10)
    x = jnp.asarray(_batch()["image"], jnp.float32) / 255

    def loss_wrt_teacher(t_params):
        t_logits, _ = teacher.apply({"params": t_params}, x)
        s_logits, _ = student.apply({"params": state.params}, x)
        batch = {"label": jnp.asarray(_batch()["label"]), "mask": None}
        objective = _hinton(0.3, 4.0, 0)
        s, t = {"logits": s_logits}, {"logits": t_logits}
        return objective({}, {}, s, t, batch, jax.random.PRNGKey(0))[0]

    grads = jax.grad(loss_wrt_teacher)(teacher_vars["params"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_student_params_change(tiny_config):
    state, teacher_vars, step, _ = _setup(tiny_config, {"name": "mlp", "hidden": [16]})
    before = jax.tree.map(np.array, state.params)
    new_state, _ = jax.jit(step)(state, frozen_inputs(teacher_vars), _batch())
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, new_state.params)
    assert all(jax.tree.leaves(changed))


def test_translation_is_per_example_and_shape_preserving():
    images = jnp.asarray(_batch(4)["image"], jnp.float32)
    key = jax.random.PRNGKey(0)
    index = jnp.arange(4)
    a = random_translate(key, images, index, 2)
    assert a.shape == images.shape
    # The same index gives the same view whatever the batch it sits in.
    b = random_translate(key, images[2:], index[2:], 2)
    np.testing.assert_array_equal(a[2:], b)
    # Shifts are integer translations: every output pixel is an input pixel or zero.
    for i in range(4):
        assert set(np.unique(a[i])) <= set(np.unique(images[i])) | {0.0}
    # With max shift 0 nothing changes.
    np.testing.assert_array_equal(random_translate(key, images, index, 0), images)


def _run(strategy_name, devices, tiny_config, student_cfg, steps=3):
    strategy = make_strategy(strategy_name, devices)
    state, teacher_vars, step, _ = _setup(tiny_config, student_cfg, strategy.axis_name)
    p_step = strategy.compile_step(step)
    state = strategy.put_replicated(state)
    frozen = frozen_inputs(strategy.put_replicated(teacher_vars))
    losses = []
    for i in range(steps):
        state, metrics = p_step(state, frozen, strategy.put_batch(_batch(seed=i)))
        losses.append(float(np.mean(metrics["loss"])))
    return np.array(losses), jax.device_get(strategy.get(state))


@pytest.mark.parametrize(
    "student_cfg",
    [
        {"name": "mlp", "hidden": [16]},
        {"name": "cnn", "widths": [4, 8], "dense": 16, "batch_norm": True},
    ],
    ids=["mlp", "cnn_batchnorm"],
)
def test_jit_sharded_and_pmap_match_single_device(tiny_config, student_cfg):
    assert jax.device_count() == 8, "conftest should provide 8 fake CPU devices"
    ref_loss, ref_state = _run("jit", jax.devices()[:1], tiny_config, student_cfg)
    for name in ("jit", "pmap"):
        loss, state = _run(name, jax.devices(), tiny_config, student_cfg)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6, err_msg=name)
        for got, want in (
            (state.params, ref_state.params),
            (state.batch_stats, ref_state.batch_stats),
        ):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_teacher_and_student_see_the_same_augmented_view(tiny_config):
    """With alpha = 0 the step's KD term equals KD computed on one shared translated view."""
    from distill_jax.data.augment import to_float
    from distill_jax.losses import kd_loss

    config = tiny_config()
    student = create_model({"name": "mlp", "hidden": [16]}, 10)
    teacher = create_model({"name": "mlp", "hidden": [32]}, 10)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, *IMAGE_SHAPE)))
    tx, _ = make_optimizer(config.student.train.to_dict(), steps_per_epoch=10)
    state = create_train_state(student, tx, IMAGE_SHAPE, seed=0)
    step = make_train_step(
        student,
        tx,
        _hinton(0.0, 2.0, 2),
        teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {})),
    )
    batch = _batch()
    _, metrics = jax.jit(step)(state, frozen_inputs(teacher_vars), batch)

    aug_key, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images = to_float(jnp.asarray(batch["image"]))
    view = random_translate(aug_key, images, jnp.asarray(batch["index"]), 2)
    assert not np.array_equal(view, images)

    def kd(student_images, teacher_images):
        s, _ = student.apply({"params": state.params}, student_images)
        t, _ = teacher.apply(teacher_vars, teacher_images)
        return float(kd_loss(s, t, temperature=2.0))

    np.testing.assert_allclose(float(metrics["kd"]), kd(view, view), rtol=1e-5)
    assert abs(float(metrics["kd"]) - kd(view, images)) > 1e-4
