"""Structured pruning: a genuinely smaller dense model that equals the masked model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.compress import apply_masks
from distill_jax.compress.channels import (
    channel_masks,
    kept_units,
    prune_channels,
    shrink,
    unit_importance,
)
from distill_jax.errors import ConfigError
from distill_jax.models import create_model

SHAPE = (8, 8, 1)


def _init(cfg, seed=0, stats=False):
    model = create_model(cfg, 10)
    variables = jax.tree.map(
        np.asarray, model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *SHAPE)))
    )
    if stats:  # non-trivial BatchNorm statistics and scales, as after training
        rng = np.random.default_rng(seed)
        variables = jax.tree.map(
            lambda a: a + rng.normal(0, 0.3, a.shape).astype(a.dtype), variables
        )
        variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    return model, variables


def _masked(variables, masks):
    return {c: apply_masks(variables[c], masks[c]) for c in variables}


CASES = [
    ({"name": "mlp", "hidden": [40, 24]}, "l1", {"hidden": (20, 12)}),
    ({"name": "cnn", "widths": [8, 16], "dense": 32}, "l1", {"widths": (4, 8), "dense": 16}),
    ({"name": "cnn", "widths": [8, 6], "dense": 0}, "l1", {"widths": (4, 3)}),
    (
        {"name": "cnn", "widths": [8, 16], "dense": 0, "batch_norm": True},
        "bn_scale",
        {"widths": (4, 8)},
    ),
]


@pytest.mark.parametrize("cfg,criterion,want", CASES)
def test_pruned_model_has_fewer_units_and_the_masked_models_outputs(cfg, criterion, want):
    model, variables = _init(cfg, stats=cfg.get("batch_norm", False))
    kept = kept_units(cfg, variables, 0.5, criterion)
    small_cfg, small_vars = shrink(cfg, variables, kept)
    for k, v in want.items():
        assert small_cfg[k] == v
    small = create_model(small_cfg, 10)
    # The sliced variables have exactly the shapes the smaller model initialises with.
    fresh = small.init(jax.random.PRNGKey(1), jnp.zeros((1, *SHAPE)))
    assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, small_vars)
    assert sum(a.size for a in jax.tree.leaves(small_vars["params"])) < sum(
        a.size for a in jax.tree.leaves(variables["params"])
    )
    x = np.random.default_rng(0).integers(0, 256, (16, *SHAPE)).astype(np.float32)
    masked = _masked(variables, channel_masks(cfg, variables, kept))
    want_logits, _ = model.apply(masked, x, train=False)
    got_logits, _ = small.apply(small_vars, x, train=False)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-3)
    # ...and the masking really changed the model (the test would catch a no-op).
    full_logits, _ = model.apply(variables, x, train=False)
    assert not np.allclose(full_logits, want_logits, atol=1e-3)


def test_units_kept_are_the_largest_by_l1_and_bn_scale():
    cfg = {"name": "cnn", "widths": [8, 16], "dense": 0, "batch_norm": True}
    _, variables = _init(cfg, stats=True)
    params = variables["params"]
    l1 = unit_importance(cfg, variables, "l1")
    np.testing.assert_allclose(
        l1["Conv_0"], np.abs(params["Conv_0"]["kernel"]).sum(axis=(0, 1, 2)), rtol=1e-6
    )
    kept = kept_units(cfg, variables, 0.25, "bn_scale")
    scale = np.abs(params["BatchNorm_1"]["scale"])
    assert kept["Conv_1"].size == 4
    assert scale[kept["Conv_1"]].min() >= np.delete(scale, kept["Conv_1"]).max()


def test_channel_pruning_refuses_what_it_cannot_do():
    _, mlp_vars = _init({"name": "mlp", "hidden": [8]})
    with pytest.raises(ConfigError, match="needs BatchNorm"):
        prune_channels({"name": "mlp", "hidden": [8]}, mlp_vars, 0.5, "bn_scale")
    with pytest.raises(ConfigError, match="keep fraction"):
        prune_channels({"name": "mlp", "hidden": [8]}, mlp_vars, 0.0)
    with pytest.raises(ConfigError, match="criterion"):
        prune_channels({"name": "mlp", "hidden": [8]}, mlp_vars, 0.5, "l2")
    with pytest.raises(ConfigError, match="supports the sequential models"):
        prune_channels({"name": "resnet8"}, {"params": {}}, 0.5)
