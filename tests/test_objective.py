"""Config-selected objectives: weighted logit losses and feature methods in the train step."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.errors import ConfigError
from distill_jax.losses import cross_entropy, dkd_loss, kd_loss
from distill_jax.objective import Objective
from distill_jax.train.loop import fit, load_teacher


def test_default_objective_is_hintons():
    rng = np.random.default_rng(0)
    s, t = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    labels = jnp.arange(4)
    batch = {"label": labels, "mask": None}
    objective = Objective({"alpha": 0.3, "temperature": 2.0, "losses": {}}, label_smoothing=0.1)
    total, terms, _ = objective({}, {}, {"logits": s}, {"logits": t}, batch, jax.random.PRNGKey(0))
    ce = cross_entropy(s, labels, label_smoothing=0.1)
    np.testing.assert_allclose(total, 0.3 * ce + 0.7 * kd_loss(s, t, 2.0), rtol=1e-6)
    assert list(terms) == ["ce", "kd"]
    np.testing.assert_allclose(terms["ce"], ce, rtol=1e-6)
    # Without a teacher (a model trained alone) the objective is the task loss, alpha = 1.
    alone = Objective({"alpha": 0.3, "temperature": 2.0, "losses": {}}, distilling=False)
    total, terms, _ = alone({}, {}, {"logits": s}, None, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(total, cross_entropy(s, labels), rtol=1e-6)
    assert list(terms) == ["ce"]


def test_weighted_sum_of_logit_losses():
    rng = np.random.default_rng(1)
    s, t = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    labels = jnp.asarray([1, 2, 3, 4])
    losses = {"kd": {"weight": 0.5, "temperature": 3.0}, "dkd": {"weight": 2.0, "beta": 4.0}}
    objective = Objective({"alpha": 1.0, "temperature": 4.0, "losses": losses})
    total, terms, _ = objective(
        {}, {}, {"logits": s}, {"logits": t}, {"label": labels, "mask": None}, jax.random.PRNGKey(0)
    )
    want_kd = kd_loss(s, t, 3.0)
    want_dkd = dkd_loss(s, t, labels, beta=4.0)
    want_ce = cross_entropy(s, labels)
    np.testing.assert_allclose(terms["kd"], want_kd, rtol=1e-6)
    np.testing.assert_allclose(terms["dkd"], want_dkd, rtol=1e-6)
    np.testing.assert_allclose(total, want_ce + 0.5 * want_kd + 2.0 * want_dkd, rtol=1e-6)


@pytest.mark.parametrize(
    "losses, message",
    [
        ({"kdd": {"weight": 1.0}}, "did you mean 'kd'"),
        ({"kd": {"weight": 1.0, "temprature": 2}}, "did you mean 'temperature'"),
        ({"kd": {"temperature": 2}}, "must be a dict with a 'weight'"),
        ({"dist": {"weight": -1}}, "weight must be a number >= 0"),
    ],
)
def test_bad_loss_configs(tiny_config, losses, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{"distill.losses": losses})


def test_each_term_is_logged_and_trained(tiny_config, tmp_path):
    losses = {"kd": {"weight": 0.5, "temperature": 4.0}, "dkd": {"weight": 0.5}}
    config = tiny_config(**{"distill.losses": losses, "distill.alpha": 1.0})
    fit(config, str(tmp_path / "teacher"), role="teacher")
    teacher = load_teacher(str(tmp_path / "teacher"))
    result = fit(config, str(tmp_path / "student"), role="student", teacher=teacher)
    records = [
        json.loads(line) for line in open(os.path.join(tmp_path, "student", "metrics.jsonl"))
    ]
    train = [r for r in records if r["split"] == "train"]
    assert {"ce", "kd", "dkd", "loss"} <= set(train[-1])
    for r in train:
        np.testing.assert_allclose(r["loss"], r["ce"] + 0.5 * r["kd"] + 0.5 * r["dkd"], rtol=1e-4)
    assert 0.0 <= result.test["accuracy"] <= 1.0


def test_method_parameters_train_with_the_student_but_are_never_exported(tiny_config, tmp_path):
    """FitNet's regressor lives in TrainState.methods, is updated and checkpointed, and the
    student restored from the run (as a teacher or by `evaluate`) holds only its own."""
    from distill_jax.train.checkpointing import Checkpointer

    cnn = {"name": "cnn", "widths": [4, 8], "dense": 16}
    config = tiny_config(
        **{
            "teacher.model": dict(cnn, widths=[8, 8]),
            "student.model": cnn,
            "distill.losses": {"fitnet": {"weight": 1.0}},
        }
    )
    fit(config, str(tmp_path / "teacher"), role="teacher")
    teacher = load_teacher(str(tmp_path / "teacher"))
    fit(config, str(tmp_path / "student"), role="student", teacher=teacher)
    ckpt = Checkpointer(tmp_path / "student" / "checkpoints", read_only=True)
    first, _ = ckpt.restore(ckpt.all_steps()[0])
    last, _ = ckpt.restore(ckpt.latest_step())
    regressor = jax.tree.leaves(last["methods"]["fitnet"])
    assert regressor and any(
        not np.array_equal(a, b)
        for a, b in zip(regressor, jax.tree.leaves(first["methods"]["fitnet"]), strict=True)
    )
    exported = load_teacher(str(tmp_path / "student"))
    assert set(exported.variables) == {"params"}
    assert "fitnet" not in json.dumps(jax.tree.map(lambda x: 0, exported.variables))
