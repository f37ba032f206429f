"""Model registry and the (logits, features) contract."""

import jax
import jax.numpy as jnp
import pytest

from distill_jax.errors import ConfigError
from distill_jax.models import MODELS, count_params, create_model, validate_model_config


@pytest.mark.parametrize("name", ["mlp", "cnn"])  # the zoo is covered by test_model_zoo.py
def test_logits_and_named_features(name):
    model = create_model({"name": name}, num_classes=7)
    x = jnp.ones((3, 8, 8, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    logits, features = model.apply(variables, x)
    assert logits.shape == (3, 7)
    assert "pre_logits" in features and features["pre_logits"].shape[0] == 3


def test_mlp_param_count_matches_formula():
    model = create_model({"name": "mlp", "hidden": [1200, 1200]}, num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
    expected = (784 * 1200 + 1200) + (1200 * 1200 + 1200) + (1200 * 10 + 10)
    assert count_params(variables["params"]) == expected


def test_dropout_only_in_training():
    model = create_model({"name": "mlp", "hidden": [64], "dropout": 0.5}, num_classes=3)
    x = jnp.ones((4, 8, 8, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    a, _ = model.apply(variables, x)
    b, _ = model.apply(variables, x)
    assert jnp.array_equal(a, b)
    c, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not jnp.allclose(a, c)


def test_cnn_batchnorm_statistics_update():
    model = create_model({"name": "cnn", "widths": [4], "batch_norm": True}, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1)) + 3.0
    variables = model.init(jax.random.PRNGKey(0), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["BatchNorm_0"]["mean"]
    after = updates["batch_stats"]["BatchNorm_0"]["mean"]
    assert not jnp.allclose(before, after)


def test_unknown_model_and_kwarg():
    with pytest.raises(ConfigError, match="did you mean 'resnet8'") as e:
        create_model({"name": "resnt8"}, 10)
    assert "valid models: " + ", ".join(sorted(MODELS)) in str(e.value)
    # Arguments are validated once, with the config (create_model only builds).
    with pytest.raises(ConfigError, match="student.model.hiden.*did you mean 'hidden'"):
        validate_model_config({"name": "mlp", "hiden": [3]}, "student.model")
