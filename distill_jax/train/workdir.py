"""A run's workdir: what defines the run (its spec), claiming the directory, and restoring
its newest intact checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import jax
import ml_collections

from distill_jax import config as config_lib
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.report import atomic_write
from distill_jax.teachers import NoTeacher, OnlineTeacher, Teacher, TeacherSource
from distill_jax.train.checkpointing import Checkpointer, has_checkpoint, saved_state_keys
from distill_jax.train.state import TrainState

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


def run_spec(
    config: ml_collections.ConfigDict,
    role: str,
    seed: int,
    source: TeacherSource,
    teacher: Teacher | None = None,
    members: list[dict[str, Any]] | None = None,
    compress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What defines a run: written to its config.json and compared on restart."""
    cfg = config_lib.to_dict(config)
    distilling = not isinstance(source, NoTeacher)
    spec = {
        "role": role,
        "seed": seed,
        "dtype": cfg["dtype"],
        "data": cfg["data"],
        "model": cfg[role]["model"],
        "train": cfg[role]["train"],
        "parallel": cfg["parallel"],
        "teacher": None if teacher is None else teacher.identity,
        "distill": cfg["distill"] if distilling else None,
    }
    if distilling and not isinstance(source, OnlineTeacher):
        spec["teacher_cache"] = source.spec
    if members is not None:
        spec["students"] = members
    if compress is not None:
        spec["compress"] = compress
    return spec


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec with the keys a newer version added filled in with their defaults, so a
    workdir written before them still resumes."""
    defaults = config_lib.default_config()
    spec = dict(spec)
    spec["data"] = {**defaults["data"], **spec.get("data", {})}
    spec["train"] = {**defaults["student"]["train"], **spec.get("train", {})}
    if spec.get("distill") is not None:
        spec["distill"] = {**defaults["distill"], **spec["distill"]}
    return spec


_SPEC_KEYS = (
    "role",
    "seed",
    "dtype",
    "model",
    "train",
    "distill",
    "teacher_cache",
    "students",
    "compress",
)


def same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two run specs describe the same run (what resuming requires)."""
    a, b = _with_defaults(a), _with_defaults(b)
    data_keys = ("name", "train_split", "shuffle_seed")
    ta = (a.get("teacher") or {}).get("workdir")
    tb = (b.get("teacher") or {}).get("workdir")
    return (
        all(a.get(k) == b.get(k) for k in _SPEC_KEYS)
        and all(a["data"].get(k) == b["data"].get(k) for k in data_keys)
        and ta == tb
    )


def prepare_workdir(workdir: str, spec: dict[str, Any], overwrite: bool) -> None:
    """Creates the workdir, or checks that an existing one belongs to this run.

    A workdir holding a run of another config, or checkpoints this version cannot resume
    (an older TrainState layout), is refused; `overwrite` discards its checkpoints and
    metrics instead.
    """
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.exists(cfg_path) and has_checkpoint(ckpt_dir):
        with open(cfg_path) as f:
            old = json.load(f)
        error: Exception | None = None
        if not same_spec(old, spec):
            error = ConfigError(
                f"workdir {workdir} holds a run of a different config; use a new "
                f"--workdir, or --overwrite to discard it"
            )
        elif "extra" in (saved_state_keys(ckpt_dir) or ()):
            error = CheckpointError(
                f"the checkpoints in {ckpt_dir} were written by an older distill-jax "
                f"(TrainState.extra, before typed state fields and pruning masks in the "
                f"optimizer state) and cannot be resumed; finish the run with that version, "
                f"or use --overwrite (or a new --workdir) to start it again"
            )
        if error is not None:
            if not overwrite:
                raise error
            shutil.rmtree(ckpt_dir)
            if os.path.exists(os.path.join(workdir, METRICS_FILE)):
                os.remove(os.path.join(workdir, METRICS_FILE))
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            atomic_write(cfg_path, json.dumps(spec, indent=2))
    except OSError as e:
        raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def restore(checkpointer: Checkpointer, state: TrainState) -> TrainState:
    """The workdir's newest intact checkpoint into `state`'s structure (or `state`)."""
    if not checkpointer.all_steps():
        return state
    state, restored_meta, problems = checkpointer.restore_verified(target=state)
    for step, problem in problems.items():
        moved = checkpointer.quarantine(step)
        print(
            f"distill-jax: warning: {problem}; moved it to {moved} and resumed "
            f"from step {restored_meta['step']}",
            file=sys.stderr,
        )
    return state
