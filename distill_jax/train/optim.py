"""Optax optimizers and learning-rate schedules from a `train` config section.

Everything that changes how updates reach the parameters is a gradient transformation in
the optimizer's chain, not a branch in the train step: the schedule, weight decay,
clipping, and (passed in `transforms`) a vmapped student's own learning rate
(`scale_by_lr_scale`) or a compression stage's pruning masks (`compress.prune.pruning`).
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def decay_mask(params: Any) -> Any:
    """True for the weights that weight decay applies to: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_schedule(train_cfg: Mapping[str, Any], steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step.

    Args:
        train_cfg: `learning_rate`, `schedule` (constant | cosine | step), `epochs`,
            `warmup_epochs`, `step_epochs`, `step_factor`.
        steps_per_epoch: optimizer steps in one epoch.
    """
    lr = train_cfg["learning_rate"]
    total = int(train_cfg["epochs"] * steps_per_epoch)
    warmup = int(train_cfg["warmup_epochs"] * steps_per_epoch)
    kind = train_cfg["schedule"]
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    elif kind == "step":
        boundaries = {
            int(e * steps_per_epoch) - warmup: train_cfg["step_factor"]
            for e in train_cfg["step_epochs"]
        }
        main = optax.piecewise_constant_schedule(lr, boundaries)
    else:  # validated earlier; kept for direct callers
        raise ValueError(f"unknown schedule {kind!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


class LearningRateScale(NamedTuple):
    """State of `scale_by_lr_scale`: the factor on this optimizer's updates."""

    lr_scale: jax.Array


def scale_by_lr_scale() -> optax.GradientTransformation:
    """Multiplies the updates by `state.lr_scale` (1 unless set).

    Every optimizer's update is proportional to its learning rate, so a vmapped student
    with its own rate sets `lr_scale = its rate / the schedule's` in its (stacked) state
    (`state.create_student_states`, with `optax.tree_utils.tree_set`). Only vmapped runs
    add it: multiplying by a runtime 1.0 is exact, but it changes how XLA fuses the
    update, and with it the last bits of a single run's parameters.
    """

    def init(params):
        del params
        return LearningRateScale(jnp.ones((), jnp.float32))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.lr_scale, updates), state

    return optax.GradientTransformation(init, update)


def lr_scale_of(opt_state: Any) -> jax.Array | float:
    """The `lr_scale` of an optimizer state (1.0 without `scale_by_lr_scale`)."""
    return optax.tree_utils.tree_get(opt_state, "lr_scale", 1.0)


def make_optimizer(
    train_cfg: Mapping[str, Any],
    steps_per_epoch: int,
    transforms: Sequence[optax.GradientTransformation] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer (SGD with momentum, Adam or AdamW) and its schedule.

    Weight decay skips biases and normalisation scales (`decay_mask`). For SGD it is the
    classic L2 term added to the gradient; for AdamW it is decoupled (Loshchilov & Hutter).
    `transforms` (e.g. `scale_by_lr_scale` for vmapped students, pruning) end the chain:
    they see the final updates.
    """
    schedule = make_schedule(train_cfg, steps_per_epoch)
    wd = train_cfg["weight_decay"]
    parts = []
    if train_cfg["grad_clip"] > 0:
        parts.append(optax.clip_by_global_norm(train_cfg["grad_clip"]))
    name = train_cfg["optimizer"]
    if name == "sgd":
        if wd > 0:
            parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
        parts.append(
            optax.sgd(
                schedule, momentum=train_cfg["momentum"] or None, nesterov=train_cfg["nesterov"]
            )
        )
    elif name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=wd, mask=decay_mask))
    elif name == "adam":
        if wd > 0:
            parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
        parts.append(optax.adam(schedule))
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return optax.chain(*parts, *transforms), schedule
