"""The convention every feature- or relation-based distillation method follows.

A method is a Flax Linen module, registered by name in `METHODS`, called as

    loss = method.apply(variables, student, teacher, batch, train=True,
                        mutable=["memory"])              # -> (loss, updated memory)

with

* `student`, `teacher`: dicts `{"logits": (B, C), "features": {name: array}}`, the two
  models' outputs on the same (augmented) batch. Teacher values arrive under
  `stop_gradient`; the method must not depend on gradients through them.
* `batch`: `{"label": (B,), "index": (B,) position in the training split, "mask": (B,)
  bool or None}`; CRD's memory bank is indexed by `index`.
* `train`: False at evaluation time (memory banks are not updated then).

It returns one scalar: the method's loss *before* its config weight, reduced the way its
paper does (batch mean unless the paper says otherwise), in float32.

Which features a method reads is declared by its attributes `student_features` and
`teacher_features` (tuples of names, e.g. `("stage1", "stage2", "stage3")`), so the
pipeline can check them against the models before training and list what exists.

Trainable parts (FitNets regressors, VID variances, CRD embeddings, ReviewKD fusion
modules, ...) are ordinary `self.param`s / submodules: they live in the TrainState's
`methods[name]`, are trained with the student by the same optimizer, are
checkpointed with it, and are never part of the exported student. Non-trainable state
(CRD's momentum memory bank) lives in the `"memory"` collection
(`self.variable("memory", ...)`), updated only when `train` is True and the collection
is mutable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

Outputs = Mapping[str, Any]  # {"logits": array, "features": {name: array}}
Batch = Mapping[str, Any]  # {"label": ..., "index": ..., "mask": ... or None}


class Method(nn.Module):
    """Base class of distillation methods (see the module docstring for the contract).

    Attributes:
        student_features: names of the student features the method reads.
        teacher_features: names of the teacher features the method reads.
    """

    student_features: Sequence[str] = ()
    teacher_features: Sequence[str] = ()

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        raise NotImplementedError


# Registry of methods by config name, filled by the modules that define them.
METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator adding a `Method` subclass to `METHODS` under `name`."""

    def wrap(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls

    return wrap
