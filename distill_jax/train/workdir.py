"""A run's workdir: who owns it, what defines the run (its spec), claiming the directory,
and restoring its newest intact checkpoint.

Every workdir distill-jax writes holds a marker, `.distill-jax.json`, saying what wrote it
(`kind`: train, run, sweep, compress, cache or capacity) and the hash of its config. A command
refuses a workdir another kind of command wrote, a non-empty directory that distill-jax
did not write (so a user's own files are never replaced), and a workdir that is, or holds,
or sits inside a directory the same command reads (its teacher, teacher cache or starting
model). `--overwrite` discards only a run of the same kind and only the files that run
wrote; it never deletes anything else.
"""

from __future__ import annotations

import hashlib
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
from distill_jax.teachers import CachedTeacher, NoTeacher, Teacher, TeacherSource
from distill_jax.train.checkpointing import Checkpointer, has_checkpoint, saved_state_keys
from distill_jax.train.state import TrainState

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MARKER_FILE = ".distill-jax.json"
# A distilled run's own teacher assistants (assistants.py) live in this subdirectory.
ASSISTANTS_DIR = "assistants"
KINDS = ("train", "run", "sweep", "compress", "cache", "capacity")
# The commands behind each kind, for messages.
_COMMANDS = {
    "train": "train/distill",
    "run": "run",
    "sweep": "sweep",
    "compress": "compress",
    "cache": "cache-teacher",
    "capacity": "capacity",
}
# What each kind writes at the top of its workdir (a foreign directory holding one of
# these names is never written into: that would replace the user's file).
WRITES = {
    "train": (CONFIG_FILE, METRICS_FILE, "checkpoints", "eval.json", "report.md"),
    "run": (CONFIG_FILE, METRICS_FILE, "report.json", "report.md", "learning_curves.png"),
    "sweep": ("sweep.json", "sweep.md"),
    "compress": ("compression.json", "compression.md", "compression.png"),
    "cache": ("cache.json", "teacher_outputs.array_record"),
    "capacity": ("capacity.json", "capacity.md", "capacity.png"),
}


def config_hash(config: Any) -> str:
    """SHA-256 of a config (or spec) as sorted JSON: what the marker records."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config_lib.to_dict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def read_marker(workdir: str) -> dict[str, Any] | None:
    """The workdir's marker, or None (absent or unreadable)."""
    try:
        with open(os.path.join(workdir, MARKER_FILE)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def _legacy_kind(workdir: str) -> str | None:
    """The kind of a workdir written before markers existed, from what it holds."""
    has = lambda name: os.path.exists(os.path.join(workdir, name))  # noqa: E731
    if has(CONFIG_FILE) and has("checkpoints"):
        try:
            with open(os.path.join(workdir, CONFIG_FILE)) as f:
                spec = json.load(f)
        except (OSError, ValueError):
            return None
        return "train" if isinstance(spec, dict) and "role" in spec else None
    if has("student_scratch") or has("report.json"):
        return "run"
    if has("student_alone") or has("compression.json"):
        return "compress"
    if has("sweep.json"):
        return "sweep"
    if has("cache.json"):
        return "cache"
    return None


def _related(a: str, b: str) -> bool:
    """Whether one of two paths is, or lies inside, the other."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def check_workdir(
    workdir: str, kind: str, reads: dict[str, str | None] | None = None, overwrite: bool = False
) -> None:
    """Refuses a workdir this command must not write (see the module docstring).

    Args:
        workdir: the directory the command will write.
        kind: what the command writes (`KINDS`).
        reads: the directories the same command reads, by the flag that names them
            (e.g. `{"--teacher": dir}`); None values are skipped.
        overwrite: the user allows a non-empty directory distill-jax did not write
            (still never one holding a file the command would replace).

    Raises:
        ConfigError: with one line naming the problem and what to do.
    """
    for flag, path in (reads or {}).items():
        if path and _related(workdir, path):
            raise ConfigError(
                f"--workdir {workdir} and {flag} {path} are the same directory or one holds "
                f"the other: writing the run there would overwrite what it reads; choose "
                f"another --workdir"
            )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory")
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return
    marker = read_marker(workdir)
    found = marker["kind"] if marker else _legacy_kind(workdir)
    if found is not None:
        if found != kind:
            raise ConfigError(
                f"workdir {workdir} holds the output of `distill-jax {_COMMANDS[found]}`; "
                f"`{_COMMANDS[kind]}` would overwrite it; use another --workdir"
            )
        return
    entries = sorted(os.listdir(workdir))
    clash = [name for name in WRITES[kind] if name in entries]
    if clash or not overwrite:
        shown = ", ".join(clash or entries[:3]) + (", ..." if len(clash or entries) > 3 else "")
        advice = (
            "choose an empty or new --workdir"
            if clash
            else "choose an empty or new --workdir, or --overwrite to write beside its files"
        )
        raise ConfigError(
            f"workdir {workdir} is not empty and was not written by distill-jax "
            f"(it holds {shown}); {advice}"
        )


def mark_workdir(workdir: str, kind: str, config: Any) -> None:
    """Creates the workdir if needed and records what wrote it (process 0 only)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            marker = {"kind": kind, "config_sha256": config_hash(config)}
            atomic_write(os.path.join(workdir, MARKER_FILE), json.dumps(marker, indent=2))
    except OSError as e:
        raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


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
    cache = getattr(source, "inner", source)  # an ExposedTeacher wraps the source
    if distilling and isinstance(cache, CachedTeacher):
        spec["teacher_cache"] = cache.spec
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


def claim(
    workdir: str,
    kind: str,
    config: Any,
    *,
    overwrite: bool = False,
    reads: dict[str, str | None] | None = None,
) -> None:
    """The start of an orchestrator (`run`, `sweep`, `compress`, `cache-teacher`): checks
    its workdir (`check_workdir`) and marks it, unless it is marked already (a resumed
    run's marker is kept as it was)."""
    check_workdir(workdir, kind, reads, overwrite)
    if read_marker(workdir) is None:
        mark_workdir(workdir, kind, config)


def prepare_workdir(
    workdir: str,
    spec: dict[str, Any],
    overwrite: bool,
    reads: dict[str, str | None] | None = None,
) -> None:
    """Creates the workdir of a `train` run, or checks that an existing one belongs to it.

    A workdir holding a run of another config, or checkpoints this version cannot resume
    (an older TrainState layout), is refused; `overwrite` discards its checkpoints and
    metrics instead. `check_workdir` runs first (ownership, `reads`).
    """
    check_workdir(workdir, "train", reads, overwrite)
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.exists(cfg_path) and has_checkpoint(ckpt_dir):
        with open(cfg_path) as f:
            old = json.load(f)
        error: Exception | None = None
        old_sha = (old.get("teacher") or {}).get("sha256")
        new_sha = (spec.get("teacher") or {}).get("sha256")
        if old_sha and new_sha and old_sha != new_sha and same_spec(old, spec):
            error = ConfigError(
                f"the teacher in {spec['teacher']['workdir']} changed since the run in "
                f"{workdir} started (its weights differ): resume with the teacher it "
                f"started with, or use --overwrite (or a new --workdir) to start again"
            )
        elif not same_spec(old, spec):
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
    mark_workdir(workdir, "train", spec)
    if jax.process_index() == 0:
        atomic_write(cfg_path, json.dumps(spec, indent=2))


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
