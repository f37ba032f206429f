"""Unstructured magnitude pruning as an optimizer transformation.

A pruned student keeps a boolean mask per weight matrix / convolution kernel (the leaves
with more than one dimension; biases and normalisation scales are never pruned) in its
optimizer state: `pruning(schedule)` is the last gradient transformation of the optimizer
(`train.optim.make_optimizer(..., transforms=[pruning(schedule)])`). It turns the update
of every masked weight into "set it to zero", so pruned weights stay exactly zero whatever
the optimizer's momentum or weight decay would do, and the masks are checkpointed with the
optimizer state. The train step knows nothing of pruning.

Sparsity follows either one shot (`final` from the first step) or the gradual cubic
schedule of Zhu & Gupta 2017 ("To prune, or not to prune", eq. 1):

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt))^3   for t_0 <= t <= t_0 + n * dt,

recomputing the masks from the current magnitudes every `dt` steps. Masks are chosen by
rank, so exactly `floor(s * n)` weights are pruned (globally over all prunable weights, or
per layer), ties included.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distill_jax.errors import ConfigError

SCOPES = ("global", "layer")


def prunable(params: Any) -> Any:
    """True for the leaves that pruning applies to: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _keep_by_rank(magnitude: jax.Array, sparsity: jax.Array) -> jax.Array:
    """Mask keeping all but the `floor(sparsity * n)` smallest entries (by rank)."""
    flat = magnitude.reshape(-1)
    n_pruned = jnp.floor(sparsity * flat.size).astype(jnp.int32)
    order = jnp.argsort(flat, stable=True)  # order[r] is the entry of rank r (0 = smallest)
    keep_by_rank = jnp.arange(flat.size) >= n_pruned
    return jnp.zeros(flat.size, bool).at[order].set(keep_by_rank).reshape(magnitude.shape)


def magnitude_masks(params: Any, sparsity: float | jax.Array, scope: str = "global") -> Any:
    """Masks that prune the smallest-magnitude fraction `sparsity` of the prunable weights.

    Args:
        params: the student's parameters.
        sparsity: fraction in [0, 1) of prunable weights to set to zero; may be traced.
        scope: `global` ranks all prunable weights together (layers end up with different
            sparsities); `layer` prunes the same fraction of every layer.

    Returns:
        A pytree like `params` of bool arrays (all True for leaves that are not pruned).
    """
    if scope not in SCOPES:
        raise ConfigError(f"pruning scope {scope!r} is not one of {', '.join(SCOPES)}")
    which = prunable(params)
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(which)
    if scope == "layer":
        masks = [
            _keep_by_rank(jnp.abs(p), sparsity) if f else jnp.ones(p.shape, bool)
            for p, f in zip(leaves, flags, strict=True)
        ]
        return jax.tree.unflatten(treedef, masks)
    pairs = list(zip(leaves, flags, strict=True))
    kept = [jnp.abs(p).reshape(-1).astype(jnp.float32) for p, f in pairs if f]
    keep_all = _keep_by_rank(jnp.concatenate(kept), sparsity) if kept else None
    masks, offset = [], 0
    for p, f in pairs:
        if f:
            masks.append(keep_all[offset : offset + p.size].reshape(p.shape))
            offset += p.size
        else:
            masks.append(jnp.ones(p.shape, bool))
    return jax.tree.unflatten(treedef, masks)


def init_masks(params: Any) -> Any:
    """All-True masks for `params` (nothing pruned yet)."""
    return jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)


def apply_masks(params: Any, masks: Any) -> Any:
    """Parameters with the masked-out weights set to exactly zero."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_of(params: Any) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    zeros = total = 0
    for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(prunable(params)), strict=True):
        if f:
            zeros += int(jnp.sum(p == 0))
            total += p.size
    return zeros / max(total, 1)


@dataclasses.dataclass(frozen=True)
class PruneSchedule:
    """When and how much to prune.

    Attributes:
        final: the target sparsity `s_f` in [0, 1).
        initial: `s_i`, the sparsity at `begin_step` (gradual only).
        begin_step: `t_0`; one-shot pruning uses `final` from this step on.
        end_step: `t_0 + n * dt`; `end_step == begin_step` means one shot.
        every: `dt`, steps between mask updates during the ramp.
        scope: `global` or `layer`.
    """

    final: float
    initial: float = 0.0
    begin_step: int = 0
    end_step: int = 0
    every: int = 1
    scope: str = "global"

    def __post_init__(self):
        if not 0.0 <= self.initial <= self.final < 1.0:
            raise ConfigError(
                f"pruning needs 0 <= initial ({self.initial}) <= final ({self.final}) < 1"
            )
        if self.end_step < self.begin_step or self.every < 1:
            raise ConfigError("pruning needs begin_step <= end_step and every >= 1")
        if self.scope not in SCOPES:
            raise ConfigError(f"pruning scope {self.scope!r} is not one of {', '.join(SCOPES)}")

    def sparsity(self, step: jax.Array) -> jax.Array:
        """Zhu & Gupta's cubic schedule at `step` (constant `final` after the ramp)."""
        span = max(self.end_step - self.begin_step, 1)
        frac = jnp.clip((step - self.begin_step) / span, 0.0, 1.0)
        if self.end_step == self.begin_step:
            frac = jnp.where(step >= self.begin_step, 1.0, 0.0)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** 3

    def update_now(self, step: jax.Array) -> jax.Array:
        """Whether the masks are recomputed before `step`'s update."""
        in_ramp = (step >= self.begin_step) & (step <= self.end_step)
        # The end of the ramp always updates, so the final sparsity is reached even when
        # `every` does not divide the ramp's length.
        on_grid = ((step - self.begin_step) % self.every == 0) | (step == self.end_step)
        return in_ramp & on_grid


class PruneState(NamedTuple):
    """State of `pruning`: the student's masks and the updates applied so far."""

    masks: Any
    prune_count: jax.Array


def pruning(schedule: PruneSchedule) -> optax.GradientTransformation:
    """Magnitude pruning of the student on `schedule`, as the optimizer's last transform.

    It acts on the optimizer's tree `{"student": params, "methods": ...}` and prunes only
    the student. Given the final updates `u` of step `t`, the masks are recomputed from
    the magnitudes of `params + u` when `schedule.update_now(t)`, and the update becomes
    `u` where the mask keeps a weight and `-params` where it prunes one, so the new
    parameters are exactly `where(mask, params + u, 0)`. `t` counts the updates this
    transform has applied (a step skipped as non-finite applies none).
    """

    def init(params):
        return PruneState(init_masks(params["student"]), jnp.zeros((), jnp.int32))

    def update(updates, state, params):
        if params is None:
            raise ValueError("pruning needs the parameters: call tx.update(g, s, params)")
        student, u = params["student"], updates["student"]
        step = state.prune_count
        # Ranking a million weights is a sort: only done on the steps that update masks.
        masks = jax.lax.cond(
            schedule.update_now(step),
            lambda p: magnitude_masks(p, schedule.sparsity(step), schedule.scope),
            lambda p: state.masks,
            optax.apply_updates(student, u),
        )
        u = jax.tree.map(lambda u_, p, m: jnp.where(m, u_, -p), u, student, masks)
        return {**updates, "student": u}, PruneState(masks, step + 1)

    return optax.GradientTransformation(init, update)


def masks_of(opt_state: Any) -> Any:
    """The pruning masks kept in an optimizer state built with `pruning`."""
    return optax.tree_utils.tree_get(opt_state, "masks")
