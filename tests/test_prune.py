"""Magnitude pruning: exact sparsity, masks that hold through optimizer updates, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.compress import (
    PruneSchedule,
    apply_masks,
    magnitude_masks,
    masks_of,
    pruning,
    sparsity_of,
)
from distill_jax.config import load_config
from distill_jax.errors import ConfigError
from distill_jax.models import create_model
from distill_jax.objective import Objective
from distill_jax.train.checkpointing import Checkpointer
from distill_jax.train.optim import make_optimizer
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

SHAPE = (8, 8, 1)


def _params():
    model = create_model({"name": "mlp", "hidden": [32, 16]}, 10)
    return model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))["params"]


def _kernels(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree) if np.ndim(x) > 1]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97])
def test_global_masks_prune_exactly_the_smallest_weights(sparsity):
    params = _params()
    pruned = apply_masks(params, magnitude_masks(params, sparsity, "global"))
    kernels, before = _kernels(pruned), _kernels(params)
    n = sum(k.size for k in kernels)
    assert sparsity_of(pruned) == np.floor(sparsity * n) / n
    # Every pruned weight is no larger than every kept one (NumPy check on magnitudes).
    pruned_mag = np.concatenate([np.abs(b[a == 0]) for a, b in zip(kernels, before, strict=True)])
    kept_mag = np.concatenate([np.abs(b[a != 0]) for a, b in zip(kernels, before, strict=True)])
    if pruned_mag.size and kept_mag.size:
        assert pruned_mag.max() <= kept_mag.min()
    # Biases are never pruned.
    for got, want in zip(jax.tree.leaves(pruned), jax.tree.leaves(params), strict=True):
        if np.ndim(want) == 1:
            np.testing.assert_array_equal(got, want)


def test_layer_masks_prune_the_same_fraction_of_every_layer():
    params = _params()
    pruned = apply_masks(params, magnitude_masks(params, 0.75, "layer"))
    for k in _kernels(pruned):
        assert np.mean(k == 0) == np.floor(0.75 * k.size) / k.size


def test_cubic_schedule_matches_zhu_and_gupta():
    s = PruneSchedule(final=0.9, initial=0.1, begin_step=10, end_step=50, every=10)
    for t in (0, 10, 20, 35, 50, 80):
        frac = min(max((t - 10) / 40, 0.0), 1.0)
        want = 0.9 + (0.1 - 0.9) * (1 - frac) ** 3
        assert float(s.sparsity(jnp.asarray(t))) == pytest.approx(want, abs=1e-6)
    assert [bool(s.update_now(jnp.asarray(t))) for t in (9, 10, 15, 20, 50, 60)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    # The ramp's last step updates even when `every` does not divide its length.
    odd = PruneSchedule(final=0.8, end_step=9, every=2)
    assert [bool(odd.update_now(jnp.asarray(t))) for t in (7, 8, 9, 10)] == [
        False,
        True,
        True,
        False,
    ]
    assert float(odd.sparsity(jnp.asarray(9))) == pytest.approx(0.8)
    one_shot = PruneSchedule(final=0.8, begin_step=5, end_step=5)
    assert float(one_shot.sparsity(jnp.asarray(4))) == 0.0
    assert float(one_shot.sparsity(jnp.asarray(5))) == pytest.approx(0.8)
    with pytest.raises(ConfigError):
        PruneSchedule(final=1.0)


def _train(schedule, steps, tmp_path=None):
    config = load_config(None, ["student.train.weight_decay=0.05"])
    model = create_model({"name": "mlp", "hidden": [32, 16]}, 10)
    tx, _ = make_optimizer(
        config.student.train.to_dict(), steps_per_epoch=10, transforms=[pruning(schedule)]
    )
    state = create_train_state(model, tx, SHAPE, seed=0)
    step = jax.jit(make_train_step(model, tx, Objective(config.distill, distilling=False)))
    rng = np.random.default_rng(0)
    history = []
    for i in range(steps):
        batch = {
            "image": rng.integers(0, 256, (32, *SHAPE), dtype=np.uint8),
            "label": rng.integers(0, 10, 32).astype(np.int32),
            "index": np.arange(32, dtype=np.int32) + 32 * i,
        }
        state, _ = step(state, frozen_inputs(), batch)
        history.append(state)
    return history


def test_pruned_weights_stay_exactly_zero_through_many_updates(tmp_path):
    """AdamW momentum and weight decay would regrow them; the masks keep them at 0."""
    history = _train(PruneSchedule(final=0.8, begin_step=0, end_step=0), steps=40)
    first_masks = masks_of(history[0].opt_state)
    n = sum(k.size for k in _kernels(history[0].params))
    for state in history:
        assert sparsity_of(state.params) == np.floor(0.8 * n) / n
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(first_masks), strict=True):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), history[0].params, history[-1].params
    )
    assert any(jax.tree.leaves(changed))  # the kept weights did train
    # The masks are checkpointed with the state and restored exactly.
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(40, jax.device_get(history[-1]), {})
    ckpt.wait()
    restored, _ = ckpt.restore(40, target=history[-1])
    for a, b in zip(
        jax.tree.leaves(masks_of(restored.opt_state)), jax.tree.leaves(first_masks), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    ckpt.close()


def test_gradual_pruning_reaches_the_target_and_never_regrows():
    schedule = PruneSchedule(final=0.9, begin_step=5, end_step=25, every=5)
    history = _train(schedule, steps=30)
    n = sum(k.size for k in _kernels(history[0].params))
    sparsities = [sparsity_of(s.params) for s in history]
    assert sparsities[0] == 0.0  # before begin_step
    assert all(b >= a for a, b in zip(sparsities[:-1], sparsities[1:], strict=True))
    assert sparsities[-1] == np.floor(0.9 * n) / n
    # One level per mask update (t = 5, 10, ..., 25), each the schedule's rounded value.
    # (computed in float32, like the step)
    rates = [np.float32(schedule.sparsity(jnp.asarray(t))) for t in range(5, 30, 5)]
    levels = {float(np.floor(r * np.float32(n))) / n for r in rates}
    assert set(sparsities) == levels | {0.0}
