"""Exact evaluation against a teacher: agreement and KL(teacher || student) equal a NumPy
re-derivation, and the teacher runs once per split however many models are evaluated."""

import jax
import numpy as np
import pytest

from distill_jax import data
from distill_jax.evaluation import Evaluator
from distill_jax.models import create_model
from distill_jax.teachers import Teacher


def _split(n: int = 37) -> data.ArraySplit:
    rng = np.random.default_rng(0)
    info = data.DatasetInfo(
        name="toy", num_classes=5, image_shape=(4, 4, 1), splits={"test": n}, input_kind="image"
    )
    images = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    return data.ArraySplit(images, rng.integers(0, 5, n).astype(np.int32), info)


def _model(seed: int, hidden: int):
    model = create_model({"name": "mlp", "hidden": [hidden]}, 5)
    variables = model.init(jax.random.PRNGKey(seed), np.zeros((1, 4, 4, 1), np.float32))
    return model, variables


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_comparison_matches_numpy_and_runs_the_teacher_once():
    split = _split()
    t_model, t_vars = _model(0, 16)
    teacher = Teacher(t_model, t_vars, {"workdir": None})
    s_model, _ = _model(1, 8)
    evaluator = Evaluator(s_model, teacher=teacher, batch_size=16)  # 3 batches, one padded
    calls = []
    step = evaluator._teacher_step
    evaluator._teacher_step = lambda *a: calls.append(1) or step(*a)
    x = split.images.astype(np.float32) / 255.0
    t_logp = _log_softmax(np.asarray(t_model.apply(t_vars, x, train=False)[0], np.float64))
    for seed in (1, 2):  # two students (as a vmapped run's members)
        s_vars = _model(seed, 8)[1]
        metrics = evaluator(s_vars, split)
        s_logp = _log_softmax(np.asarray(s_model.apply(s_vars, x, train=False)[0], np.float64))
        agree = np.mean(t_logp.argmax(-1) == s_logp.argmax(-1))
        kl = np.mean(np.sum(np.exp(t_logp) * (t_logp - s_logp), -1))
        assert metrics["count"] == 37
        assert metrics["agreement"] == pytest.approx(agree)
        assert metrics["kl"] == pytest.approx(kl, rel=1e-5)
        assert metrics["accuracy"] == pytest.approx(np.mean(s_logp.argmax(-1) == split.labels))
    assert len(calls) == 3  # the teacher's three batches, for the first student only
    evaluator(s_vars, _split(20))  # another split: the teacher runs on it
    assert len(calls) == 5
