"""Frozen teachers, and the teacher sources a train step reads their outputs from.

A `Teacher` is a trained model held read-only: its module, its variables and where it came
from. A *teacher source* says where the teacher's outputs for a batch come from. The train
step calls one through a single interface and never branches on which it is:

* `NoTeacher`: a model trained on labels alone (no outputs);
* `OnlineTeacher`: the teacher's forward pass on the batch's augmented view, outside
  `value_and_grad` and under `stop_gradient` (no gradient can reach it and XLA never builds
  its backward pass);
* `CachedTeacher`: rows of a teacher cache (`train/teacher_cache.py`), full logits or
  top-k, for the view the cache stored for this epoch;
* `ExposedTeacher`: another source's logits as a served teacher would expose them
  (`distill.exposure`: top-k, label only, rounded, a defence; `distill_jax/exposure.py`).

A source has four parts:

* `arrays()`: what the step reads but never changes (teacher variables, cache arrays),
  placed on the devices once and passed to the step as `frozen["teacher"]`;
* `augment_key(step, key)`: the key of the step's augmentation (a cache fixes it to the
  key of the stored view, so the student sees exactly the pixels the teacher saw);
* `logits_fn(frozen)`: the teacher as a function of new inputs (online teacher only), for
  robust distillation's adversarial inputs;
* `__call__(frozen, inputs, index, step) -> (inputs, outputs)`: the teacher's outputs,
  `{"logits": (B, C), "features": {...}}` or `{"topk": (values, indices)}` or None, and
  the inputs the student trains on. A source that generates its own inputs (the on-policy
  source of language-model distillation, `on_policy.OnPolicyTeacher`: sequences sampled
  from the student and scored by the teacher) returns new ones here, and their labels as
  `outputs["label"]` (the step takes them in place of the batch's); the student's update
  is the same either way.

A source that generates its inputs declares `generates = True`; the step then also passes
it the batch's `labels=` (what a step that keeps the corpus returns) and
`student=StudentPolicy(...)`: the student's module, its current parameters and a key of
this step (`fold_in(fold_in(state.rng, step), 4)`, so a resumed run draws the same). Other
sources never see the student.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.exposure import expose_logits


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: its module, its variables, and where it came from.

    Attributes:
        model: the Linen module (applied with `train=False`).
        variables: `{"params": ..., "batch_stats": ...}`; never updated or donated.
        identity: JSON-serialisable description (workdir, step, model config) stored in
            the student's checkpoints and report.
    """

    model: nn.Module
    variables: Any
    identity: dict[str, Any]


def cache_view_key(seed: int, view: int | jax.Array) -> jax.Array:
    """The augmentation key of view `view` of a teacher cache made with `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), view)


def top1(outputs: dict[str, Any]) -> jax.Array:
    """The teacher's predicted class per example (or per token: `(B, T)` from `(B, T, K)`
    top-k rows), from full logits or a top-k cache row."""
    if "logits" in outputs:
        return jnp.argmax(outputs["logits"], -1)
    values, indices = outputs["topk"]
    return jnp.take_along_axis(indices, jnp.argmax(values, -1)[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class StudentPolicy:
    """The student as a source that generates its inputs sees it (`generates`).

    Attributes:
        model: the student's Linen module.
        params: its current parameters (this step's, before the update; the source must
            not differentiate through them: generation is under `stop_gradient`).
        key: this step's key for the source's own draws.
    """

    model: nn.Module
    params: Any
    key: jax.Array


class TeacherSource:
    """Where a train step gets the teacher's outputs (see the module docstring)."""

    #: Recorded in the run's config.json; compared when a run resumes.
    spec: dict[str, Any] | None = None
    #: Whether `__call__` makes its own inputs: it then takes `labels=` (the batch's) and
    #: `student=StudentPolicy(...)`, and returns the labels of its inputs as
    #: `outputs["label"]` (on-policy and sequence-level distillation).
    generates: bool = False

    def arrays(self) -> Any:
        """Host arrays the step reads (replicated on the devices once)."""
        return None

    def augment_key(self, step: jax.Array, key: jax.Array) -> jax.Array:
        """The key of step `step`'s augmentation; `key` is the run's own for that step."""
        return key

    def logits_fn(self, frozen: Any) -> Any:
        """`x -> logits` of the teacher on inputs of the step's own making (robust
        training's adversarial inputs), or None where the source cannot run the teacher
        (no teacher, a cache). Differentiable in `x`; the teacher's variables are
        constants of the step."""
        return None

    def __call__(
        self, frozen: Any, inputs: jax.Array, index: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, Any] | None]:
        raise NotImplementedError


class NoTeacher(TeacherSource):
    """Training on labels alone: no teacher outputs."""

    def __call__(self, frozen, inputs, index, step):
        return inputs, None


@dataclasses.dataclass(eq=False)
class OnlineTeacher(TeacherSource):
    """The teacher's forward pass on the same augmented view the student sees."""

    teacher: Teacher

    @property
    def spec(self) -> dict[str, Any]:
        return self.teacher.identity

    def arrays(self) -> Any:
        return self.teacher.variables

    def logits_fn(self, frozen):
        return lambda x: self.teacher.model.apply(frozen, x, train=False)[0]

    def __call__(self, frozen, inputs, index, step):
        logits, features = self.teacher.model.apply(frozen, inputs, train=False)
        return inputs, jax.lax.stop_gradient({"logits": logits, "features": features})


@dataclasses.dataclass(eq=False)
class CachedTeacher(TeacherSource):
    """Rows of a teacher cache: the view of epoch `e` is `e % views`, augmented with
    `cache_view_key(seed, view)`, exactly the view the cached teacher saw.

    A language-model cache has one view and a row per position: `(N, 1, T, K)` top-k
    log-probabilities and token ids, so a batch reads `{"topk": ((B, T, K), (B, T, K))}`.

    Attributes:
        values: `(N, views, K)` cached logits (K = classes) or top-k values
            (LM: `(N, 1, T, K)` log-probabilities).
        indices: `(N, views, K)` class indices of top-k values (LM: `(N, 1, T, K)` token
            ids), or None for full logits.
        seed, views: the cache's augmentation seed and number of views.
        steps_per_epoch: the run's steps per epoch (selects the view).
        spec: the cache's identity (directory, seed, views, top_k, teacher).
    """

    values: Any
    indices: Any
    seed: int
    views: int
    steps_per_epoch: int
    spec: dict[str, Any] | None = None

    def arrays(self) -> Any:
        out = {"values": self.values}
        if self.indices is not None:
            out["indices"] = self.indices
        return out

    def _view(self, step):
        return (step // self.steps_per_epoch) % self.views

    def augment_key(self, step, key):
        return cache_view_key(self.seed, self._view(step))

    def __call__(self, frozen, inputs, index, step):
        view = self._view(step)
        values = frozen["values"][index, view]
        if "indices" in frozen:
            return inputs, {"topk": (values, frozen["indices"][index, view])}
        return inputs, {"logits": values}


@dataclasses.dataclass(eq=False)
class ExposedTeacher(TeacherSource):
    """`inner`'s logits replaced by what exposure `level` lets a copier see
    (`exposure.expose_logits`: logits whose softmax is the exposed distribution). The
    teacher's features are not exposed, and no gradient through the teacher is offered
    (`logits_fn` is None): a copier only has the answers."""

    inner: TeacherSource
    level: str

    @property
    def spec(self) -> dict[str, Any] | None:
        return self.inner.spec

    def arrays(self) -> Any:
        return self.inner.arrays()

    def augment_key(self, step, key):
        return self.inner.augment_key(step, key)

    def __call__(self, frozen, inputs, index, step):
        inputs, outputs = self.inner(frozen, inputs, index, step)
        return inputs, {"logits": expose_logits(outputs["logits"], self.level, index)}


__all__ = [
    "CachedTeacher",
    "ExposedTeacher",
    "NoTeacher",
    "OnlineTeacher",
    "StudentPolicy",
    "Teacher",
    "TeacherSource",
    "cache_view_key",
    "top1",
]
