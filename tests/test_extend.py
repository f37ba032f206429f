"""Bringing your own model, loss and data: registered by name, used by a config, trained
and distilled like the built-in ones (what notebooks/bring_your_own.ipynb shows)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.config import load_config
from distill_jax.data import from_arrays
from distill_jax.losses import register_loss
from distill_jax.models import register_model
from distill_jax.train.loop import fit, load_teacher, read_metrics


@register_model("tiny_conv")
class TinyConv(nn.Module):
    num_classes: int
    width: int = 4
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        pre = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(pre), {"pre_logits": pre}


@register_loss("squared_probs")
def squared_probs(student_logits_BC, teacher_logits_BC, temperature=1.0, mask_B=None):
    """Squared distance of the two softmaxes (mean over rows)."""
    p = jax.nn.softmax(student_logits_BC / temperature)
    q = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits_BC) / temperature)
    per_row = jnp.sum((p - q) ** 2, -1)
    if mask_B is None:
        return per_row.mean()
    return jnp.sum(per_row * mask_B) / jnp.maximum(jnp.sum(mask_B), 1)


def test_own_model_loss_and_data_distil_end_to_end(data_dir, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    images = (rng.integers(0, 60, (120, 8, 8, 1)) + 60 * labels[:, None, None, None]).astype(
        np.uint8
    )
    from_arrays("three_levels", images, labels, class_names=["dark", "mid", "bright"])
    overrides = [
        f"data.data_dir={data_dir!r}",
        "data.name='three_levels'",
        "data.eval_batch_size=20",
        "teacher.model={'name': 'tiny_conv', 'width': 8}",
        "student.model={'name': 'tiny_conv', 'width': 2}",
        "teacher.train.epochs=3",
        "student.train.epochs=2",
        "teacher.train.batch_size=16",
        "student.train.batch_size=16",
        "distill.losses={'squared_probs': {'weight': 2.0, 'temperature': 2.0}}",
        "eval.latency_batch_size=4",
        "log.progress=False",
        "log.every_steps=2",
    ]
    config = load_config(None, overrides)
    teacher = fit(config, str(tmp_path / "teacher"), role="teacher")
    student = fit(
        config, str(tmp_path / "student"), teacher=load_teacher(str(tmp_path / "teacher"))
    )
    assert teacher.test["count"] == 12 and 0.0 <= student.test["accuracy"] <= 1.0
    train = [r for r in read_metrics(str(tmp_path / "student")) if r["split"] == "train"]
    assert all("squared_probs" in r for r in train)
    # The logged loss is alpha * CE + 2 * the registered loss.
    alpha = config.distill.alpha
    for r in train:
        assert r["loss"] == pytest.approx(alpha * r["ce"] + 2.0 * r["squared_probs"], rel=1e-5)
    # A misspelled hyperparameter of a registered loss is refused like a built-in one's.
    with pytest.raises(Exception, match="temprature"):
        load_config(None, [*overrides[:-4], "distill.losses={'squared_probs': {'temprature': 2}}"])


def test_registration_refuses_built_in_names_and_missing_pieces():
    with pytest.raises(ValueError, match="taken by a built-in model"):
        register_model("mlp")(TinyConv)

    class NoDtype(nn.Module):
        num_classes: int

    with pytest.raises(ValueError, match="needs the field"):
        register_model("no_dtype")(NoDtype)
    with pytest.raises(ValueError, match="taken by a built-in loss"):
        register_loss("kd")(squared_probs)
    with pytest.raises(ValueError, match="must take"):
        register_loss("bad")(lambda a, b: a)
