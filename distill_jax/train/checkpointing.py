"""Orbax checkpoints behind a small interface; the only module that imports Orbax.

A checkpoint holds two items: `state` (the TrainState pytree) and `metadata` (JSON: the
step, the data iterator position, the validation metrics, the resolved config and the
teacher's identity). The manager keeps the latest `keep` steps *and* the best step by
validation accuracy, so keeping the best never deletes the newest step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from distill_jax.errors import CheckpointError

BEST_METRIC = "val_accuracy"
_ITEMS = ("state", "metadata")


def _best_metric(metrics: dict[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


class Checkpointer:
    """Save/restore of a run's TrainState in `directory`.

    Args:
        directory: where the step folders live (e.g. `workdir/checkpoints`).
        keep: how many of the latest steps to keep (the best step is kept besides).
        read_only: open without the right to write or delete (teachers).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True)
        else:
            policy = checkpoint_managers.AnyPreservationPolicy(
                [
                    checkpoint_managers.LatestN(n=keep),
                    checkpoint_managers.BestN(
                        get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False
                    ),
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
            if metrics and metrics.get(BEST_METRIC, float("-inf")) > best_value:
                best, best_value = step, metrics[BEST_METRIC]
        return best

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds at least one finished checkpoint step."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return False
    return any(
        name.isdigit() and os.path.isdir(os.path.join(directory, name))
        for name in os.listdir(directory)
    )
