"""Orbax checkpoints behind a small interface; the only module that imports Orbax.

A checkpoint holds two items: `state` (the TrainState pytree) and `metadata` (JSON: the
step, the data iterator position, the validation metrics, the resolved config and the
teacher's identity). The manager keeps the latest `keep` steps *and* the best step by
validation accuracy, so keeping the best never deletes the newest step.

Integrity. Orbax writes each step into a temporary folder and renames it when complete, so
a half-written step is never listed. That is not enough: a truncated file makes Orbax's
restore fail without falling back, and flipped bytes restore silently with wrong values.
So once a save is on disk, a SHA-256 digest of every file of the step is written to
`checksums/<step>.json`, and `restore_verified` checks it: a step whose files are missing,
changed or unverified is reported and skipped for the newest step that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from distill_jax.errors import CheckpointError
from distill_jax.report import atomic_write

SCORE_METRIC = "val_score"
"""The saved validation metric that ranks checkpoints: the task's `selection_metric`
(accuracy; entity F1 for tagging). Checkpoints saved before it existed rank by
`val_accuracy`."""
_ITEMS = ("state", "metadata")
CHECKSUM_DIR = "checksums"
NO_CHECKSUM = (
    "it is unverified: it has no checksum (its save may not have finished, or the "
    "checksum was deleted)"
)

log = logging.getLogger(__name__)


def step_digest(step_dir: str) -> dict[str, str]:
    """SHA-256 of every file under a step folder, keyed by relative path."""
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, step_dir)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(digests.items()))


def _best_metric(metrics: dict[str, Any]) -> float:
    return float(metrics.get(SCORE_METRIC, metrics.get("val_accuracy", float("-inf"))))


class Checkpointer:
    """Save/restore of a run's TrainState in `directory`.

    Args:
        directory: where the step folders live (e.g. `workdir/checkpoints`).
        keep: how many of the latest steps to keep (the best step is kept besides).
        read_only: open without the right to write or delete (teachers).
        keep_steps: steps kept for good besides (`checkpoint.keep_epochs`' epoch ends).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep: int = 2,
        read_only: bool = False,
        keep_steps: tuple[int, ...] = (),
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self.read_only = read_only
        self._unchecked: set[int] = set()  # saved steps whose checksum is not written yet
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True)
        else:
            policy = checkpoint_managers.AnyPreservationPolicy(
                [
                    checkpoint_managers.LatestN(n=keep),
                    checkpoint_managers.BestN(
                        get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False
                    ),
                    *([checkpoint_managers.CustomSteps(steps=keep_steps)] if keep_steps else []),
                ]
            )
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=True, create=True
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def all_steps(self) -> list[int]:
        """Saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        metadata: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save of `state` (call `wait` before reading it back).

        Args:
            step: the step number (the folder name).
            state: the TrainState (a pytree of arrays).
            metadata: JSON-serialisable metadata stored beside it.
            metrics: validation metrics with `val_accuracy`, making the step eligible as
                the best; steps saved without metrics are only kept while among the latest.
        """
        metadata = {**metadata, "step": int(step), "metrics": metrics}
        self.finalize()  # checksum the previous save if it has finished
        self._unchecked.add(int(step))
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict[str, Any]]:
        """Restores `(state, metadata)` of `step` (default: the latest).

        Args:
            step: the step to restore, or None for the latest.
            target: a pytree of the expected structure (arrays or ShapeDtypeStructs) to
                restore into; None restores a plain tree of arrays.

        Raises:
            CheckpointError: no checkpoint, or one that cannot be read into `target`.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        abstract = None
        if target is not None:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # Orbax raises many types; one clear message for all
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory}: "
                f"{type(e).__name__}: {e}"
            ) from e
        return restored["state"], dict(restored["metadata"] or {})

    def metadata(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of a step (cheap)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
        )
        return dict(restored["metadata"] or {})

    def best_step(self) -> int | None:
        """The saved step with the highest validation accuracy, or None without any."""
        best, best_value = None, float("-inf")
        for step in self.all_steps():
            metrics = self.metadata(step).get("metrics")
            if metrics and _best_metric(metrics) > best_value:
                best, best_value = step, _best_metric(metrics)
        return best

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk (and checksummed)."""
        self._manager.wait_until_finished()
        self._write_checksums()

    def close(self) -> None:
        """Waits for pending saves and releases the manager (idempotent)."""
        if self._manager is None:
            return
        self.wait()
        self._manager.close()
        self._manager = None

    # -- integrity --------------------------------------------------------------------
    def _checksum_path(self, step: int) -> str:
        return os.path.join(self.directory, CHECKSUM_DIR, f"{step}.json")

    def finalize(self) -> None:
        """Checksums saves that have been committed; cheap, so the loop calls it each step."""
        if self._unchecked:
            self._write_checksums()

    def _committed_steps(self) -> list[int]:
        # Orbax writes a step into a temporary folder and renames it to `<step>` once
        # complete, so a folder with the bare step number is a committed step.
        return sorted(
            int(name)
            for name in os.listdir(self.directory)
            if name.isdigit() and os.path.isdir(os.path.join(self.directory, name))
        )

    def _write_checksums(self) -> None:
        """Checksums the committed steps this Checkpointer saved (even while a newer save
        is in flight) and drops the checksums of steps Orbax has deleted.

        A step found on disk without a checksum is never checksummed here: it may be a
        save that was killed half-way, or a step whose files were changed and whose
        checksum was removed. It stays unverified (`restore_verified` uses it only as a
        last resort, with a warning)."""
        if self.read_only or jax.process_index() != 0:  # one writer in multi-process runs
            return
        steps = self._committed_steps()
        checksum_dir = os.path.join(self.directory, CHECKSUM_DIR)
        os.makedirs(checksum_dir, exist_ok=True)
        for name in os.listdir(checksum_dir):
            stem = name.removesuffix(".json")
            if stem.isdigit() and int(stem) not in steps:
                os.remove(os.path.join(checksum_dir, name))
        for step in steps:
            path = self._checksum_path(step)
            if step not in self._unchecked or os.path.exists(path):
                continue
            try:
                digest = step_digest(os.path.join(self.directory, str(step)))
            except FileNotFoundError:  # deleted by Orbax's retention meanwhile
                continue
            atomic_write(path, json.dumps(digest, indent=0))  # whole or absent
        self._unchecked -= set(steps)
        self._unchecked = {s for s in self._unchecked if s > max(steps, default=-1)}

    def verify(self, step: int) -> str | None:
        """Checks a step against its checksum; returns what is wrong, or None if intact."""
        path = self._checksum_path(step)
        if not os.path.exists(path):
            return NO_CHECKSUM
        with open(path) as f:
            expected = json.load(f)
        actual = step_digest(os.path.join(self.directory, str(step)))
        missing = sorted(set(expected) - set(actual))
        if missing:
            return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
        changed = sorted(k for k in expected if actual.get(k) != expected[k])
        if changed:
            return f"{len(changed)} file(s) changed, e.g. {changed[0]}"
        return None

    def first_intact(
        self, steps: list[int], target: Any = None
    ) -> tuple[int | None, Any, dict[str, Any], dict[int, str]]:
        """Restores the first of `steps` that verifies against its checksum and reads back.

        Returns:
            `(step, state, metadata, problems)`: `problems` maps each step skipped before
            it to what is wrong with it (`NO_CHECKSUM` for an unverified one); `step` is
            None (and state and metadata empty) when none of them is intact.
        """
        problems: dict[int, str] = {}
        for step in steps:
            reason = self.verify(step)
            if reason is None:
                try:
                    state, metadata = self.restore(step, target)
                    return step, state, metadata, problems
                except CheckpointError as e:
                    reason = str(e)
            problems[step] = reason
        return None, None, {}, problems

    def restore_verified(self, target: Any = None) -> tuple[Any, dict[str, Any], list[str]]:
        """Restores the newest step that verifies and reads back, falling back past corrupt ones.

        Returns:
            `(state, metadata, problems)`, where `problems` maps each newer step that was
            skipped to what is wrong with it (empty when the latest step was fine).

        Raises:
            CheckpointError: there are steps but none of them is intact. A run never
                silently starts from scratch over a workdir that had progress.
        """
        step, state, metadata, reasons = self.first_intact(list(reversed(self.all_steps())), target)
        problems = {
            s: f"checkpoint step {s} in {self.directory} is corrupt: {reason}"
            for s, reason in reasons.items()
        }
        for problem in problems.values():
            log.warning(problem)
        if step is not None:
            return state, metadata, problems
        # Last resort: a step Orbax committed but whose checksum was never written (killed
        # right after the commit). It cannot be verified, but starting over would be worse.
        for step in (s for s, reason in reasons.items() if reason == NO_CHECKSUM):
            try:
                state, metadata = self.restore(step, target)
            except CheckpointError:
                continue
            log.warning("resuming from unverified checkpoint step %d", step)
            return state, metadata, {s: p for s, p in problems.items() if s > step}
        raise CheckpointError(
            "no intact checkpoint to resume from; "
            + "; ".join(problems.values())
            + f". Restore the files, or start afresh: delete {self.directory} (or use a "
            f"new --workdir)"
        )

    def quarantine(self, step: int) -> str:
        """Moves a corrupt step aside (`corrupt-<step>`) so it is never listed again."""
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f"corrupt-{step}")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(src, dst)
        if os.path.exists(self._checksum_path(step)):
            os.remove(self._checksum_path(step))
        self._manager.reload()
        return dst


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds at least one finished checkpoint step."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return False
    return any(
        name.isdigit() and os.path.isdir(os.path.join(directory, name))
        for name in os.listdir(directory)
    )


def saved_state_keys(directory: str | os.PathLike) -> set[str] | None:
    """The top-level keys of the newest state saved in `directory`, read from Orbax's tree
    metadata without restoring any array (None when there is none or it is unreadable)."""
    steps = (
        [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
    )
    if not steps:
        return None
    path = os.path.join(directory, str(max(steps)), "state", "_METADATA")
    try:
        with open(path) as f:
            tree = json.load(f)["tree_metadata"]
        return {entry["key_metadata"][0]["key"] for entry in tree.values()}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
