"""Teacher assistants (Mirzadeh et al. 2020): teacher -> assistant(s) -> student.

A small student can learn less from a strong teacher than from a model in between: the
*teacher assistant*. `distill.assistants` lists such models, largest first. Each is
distilled from the one before it (the first from the teacher) with the student's training
settings and `distill` section, as one model (never vmapped) with seed `config.seed`; the
student then distils from the last one. Each assistant is an ordinary run in
`<root>/<i>_<name>/`: resumed when interrupted, reused when finished, refused (like any
run) when its config changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from distill_jax import config as config_lib
from distill_jax.teachers import Teacher
from distill_jax.train.loop import fit, load_teacher


def student_config(
    config: ml_collections.ConfigDict, model: dict[str, Any], students: int = 1
) -> ml_collections.ConfigDict:
    """The config that distils one model of a chain (an assistant, or one student size of
    `capacity`): the student's, with `model`, `students` vmapped seeds (no other grid,
    the config's `vmap.by`) and no further assistants."""
    cfg = config_lib.to_dict(config)
    cfg["student"]["model"] = dict(model)
    by = cfg["vmap"]["by"]
    cfg["vmap"] = {**config_lib.default_config()["vmap"], "students": students, "by": by}
    cfg["distill"]["assistants"] = []
    return config_lib.from_dict(cfg)


def assistant_dir(root: str, index: int, model: dict[str, Any]) -> str:
    """Where assistant `index` (1-based) of a chain lives."""
    return os.path.join(root, f"{index}_{model['name']}")


def through_assistants(
    config: ml_collections.ConfigDict,
    root: str,
    teacher: Teacher,
    *,
    assistants: Sequence[dict[str, Any]] | None = None,
    overwrite: bool = False,
    done: Callable[[str, dict[str, Any]], Any] | None = None,
) -> Teacher:
    """Distils the chain `teacher -> assistants[0] -> ...` and returns its last model as
    the student's teacher (`teacher` itself when there are no assistants).

    Args:
        config: the student's validated config.
        root: the directory holding the chain's runs.
        teacher: the first teacher.
        assistants: the models (default `config.distill.assistants`).
        overwrite: passed to each assistant's run (discards one of another config).
        done: called as `done(label, test_metrics)` after each assistant (default: one
            printed line).
    """
    chain = list(config.distill.assistants if assistants is None else assistants)
    for i, model in enumerate(chain, start=1):
        workdir = assistant_dir(root, i, model)
        label = f"assistant {i}/{len(chain)} ({model['name']})"
        result = fit(
            student_config(config, model),
            workdir,
            role="student",
            teacher=teacher,
            compare_to=teacher,
            overwrite=overwrite,
            desc=label,
        )
        if done is None:
            print(
                f"{label}: test accuracy {result.test['accuracy']:.4f}, "
                f"{int(result.test['params']):,} parameters"
            )
        else:
            done(label, result.test)
        teacher = load_teacher(workdir, "latest", what=label)
    return teacher


__all__ = ["assistant_dir", "student_config", "through_assistants"]
