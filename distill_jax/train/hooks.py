"""The small pieces the training loop calls: metrics log (`metrics.jsonl` and TensorBoard
event files), divergence policy, progress bar and preemption signals. Each does one
thing; the loop (`train/loop.py`) reads top-down.

Metrics are fetched one log window late: the loop keeps the device metrics of the
window's steps and only reads them back (a host sync) when the window is flushed, so the
device never waits for the host between steps.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from distill_jax.errors import DivergenceError
from distill_jax.report import atomic_write
from distill_jax.train.workdir import METRICS_FILE

# Metrics that are not loss terms (the divergence message names the terms).
_NOT_TERMS = (
    "loss",
    "grad_norm",
    "nonfinite",
    "learning_rate",
    "accuracy",
    "agreement",
    "adv_accuracy",
    "adv_agreement",
    "introspect",
)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (empty when there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops records logged after the checkpoint a run resumes from (they are redone)."""
    path = os.path.join(workdir, METRICS_FILE)
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    kept = [r for r in read_metrics(workdir) if r["step"] <= step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))


def count_skipped(workdir: str) -> int:
    """Skipped steps logged before the checkpoint a run resumes from."""
    train = [r for r in read_metrics(workdir) if r.get("split") == "train"]
    return int(train[-1].get("skipped_steps", 0)) if train else 0


def nonfinite_terms(metrics: dict[str, Any]) -> str:
    """Names the loss terms (or the gradients) that are NaN/Inf in one step's metrics."""
    bad = _bad_terms(metrics)
    if bad:
        return "the loss term(s) " + ", ".join(f"'{k}'" for k in bad)
    if not np.all(np.isfinite(metrics["loss"])):
        return "the loss"
    return "the gradients"


def _bad_terms(metrics: dict[str, Any]) -> list[str]:
    terms = [k for k in ("ce", "kd", *sorted(metrics)) if k in metrics and k not in _NOT_TERMS]
    return [k for k in dict.fromkeys(terms) if not np.all(np.isfinite(metrics[k]))]


def likely_cause(metrics: dict[str, Any]) -> str:
    """What most likely made a step non-finite, and what to do about it.

    Hyperparameters are checked finite and in range with the config, so a distillation
    term that goes bad while the task loss is fine points at the teacher's outputs; the
    task loss or the gradients going bad point at the step size.
    """
    bad = _bad_terms(metrics)
    if bad and "ce" not in bad:
        return (
            f"Only the distillation term(s) {', '.join(repr(k) for k in bad)} went bad while "
            f"the task loss is finite: check the teacher's outputs (are its weights "
            f"finite?) and those terms' inputs"
        )
    return "The student's update overflowed: lower the learning rate or set train.grad_clip"


# Record keys that are no curve: counts, and (as `*_std` over vmapped students) what the
# students share: their size and the speed measured once. Their means are still written.
_NOT_CURVES = {"count", "n_seeds"}
_CONSTANT = {
    "count",
    "params",
    "flops_per_example",
    "skipped_steps",
    "latency_ms_per_example",
    "latency_ms_batch1",
}


class Events:
    """TensorBoard event files in the run's directory (process 0, when `log.tensorboard`).

    Every record of `metrics.jsonl` becomes scalars tagged `split/name` (a list, e.g. the
    validation accuracy of each vmapped student, becomes `split/name/i`), so that
    `tensorboard --logdir runs/` overlays every model trained under `runs/`. Written with
    tensorboardX (no TensorFlow). A run resumed at step `start` hides what an earlier
    attempt logged after it (TensorBoard's purge step), as `metrics.jsonl` is truncated.
    """

    def __init__(self, workdir: str, start: int, enabled: bool):
        self.writer = None
        if enabled and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            # One file per attempt, named by the step it starts from (attempts starting in
            # the same second would otherwise overwrite each other's file).
            suffix = f".from_step_{start:09d}"
            self.writer = SummaryWriter(
                workdir, purge_step=start + 1, flush_secs=20, filename_suffix=suffix
            )

    def write(self, step: int, split: str, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for name, value in record.items():
            if name in _NOT_CURVES or (name.endswith("_std") and name[:-4] in _CONSTANT):
                continue
            values = value if isinstance(value, list | tuple) else [value]
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int | float | np.number):
                    continue
                tag = f"{split}/{name}" + (f"/{i}" if isinstance(value, list | tuple) else "")
                self.writer.add_scalar(tag, float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MetricsLog:
    """The train metrics of the current log window, the divergence policy, and
    `metrics.jsonl` (written by process 0 only).

    Args:
        workdir: the run's directory.
        fetch: brings device metrics to the host (`Strategy.fetch`).
        steps_per_epoch: to log the epoch of each record.
        on_nonfinite: `stop` raises `DivergenceError` naming the step, the term that
            went non-finite and its likely cause; `skip` counts the (already discarded) step.
        diverged: says what is kept (the last good checkpoint).
        role: the config section of the run's train settings (`teacher` / `student`).
        batch_size: examples per step, for the logged `examples_per_sec`.
        events: TensorBoard events that mirror every record (`Events`), or None.
    """

    def __init__(
        self,
        workdir,
        fetch,
        steps_per_epoch: int,
        on_nonfinite: str,
        diverged,
        role: str,
        batch_size: int = 0,
        events: Events | None = None,
    ):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.workdir = workdir
        self.fetch = fetch
        self.steps_per_epoch = steps_per_epoch
        self.on_nonfinite = on_nonfinite
        self.diverged = diverged
        self.role = role
        self.enabled = jax.process_index() == 0
        self.pending: list[tuple[int, Any]] = []
        self.skipped = count_skipped(workdir)
        self.batch_size = batch_size
        self.events = events
        self.restart_clock()

    def restart_clock(self) -> None:
        """Starts timing the next window (after validation and checkpoints, which are not
        training throughput)."""
        self.clock = time.perf_counter()

    def write(self, step: int, split: str, record: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.write(step, split, record)
        if self.enabled:
            with open(self.path, "a") as f:
                epoch = step / self.steps_per_epoch
                f.write(json.dumps({"step": step, "epoch": epoch, "split": split, **record}) + "\n")

    def add(self, step: int, metrics: Any) -> None:
        self.pending.append((step, metrics))

    def flush(self, step: int) -> dict[str, float]:
        """Fetches the window's metrics, applies the divergence policy, logs the means."""
        if not self.pending:
            return {}
        fetched = [self.fetch(m) for _, m in self.pending]  # waits for the window's steps
        seconds = time.perf_counter() - self.clock
        timed = len(fetched)
        steps = [s for s, _ in self.pending]
        self.pending.clear()
        for s, m in zip(steps, fetched, strict=True):
            if float(np.max(m["nonfinite"])) > 0:
                if self.on_nonfinite == "stop":
                    raise DivergenceError(
                        f"{nonfinite_terms(m)} became non-finite at step {s} of "
                        f"{self.workdir}; stopped, {self.diverged()}. {likely_cause(m)}; "
                        f"or set {self.role}.train.on_nonfinite=skip to skip such steps"
                    )
                self.skipped += 1
        ok = [m for m in fetched if float(np.max(m["nonfinite"])) == 0] or fetched
        means = {k: float(np.mean([np.mean(m[k]) for m in ok])) for k in ok[0]}
        means["skipped_steps"] = self.skipped
        if self.batch_size:
            # The first window includes compilation.
            means["examples_per_sec"] = timed * self.batch_size / max(seconds, 1e-9)
        self.restart_clock()
        self.write(step, "train", means)
        return means


class Progress:
    """A tqdm bar over the run's steps (process 0, when `log.progress`)."""

    def __init__(self, total: int, initial: int, desc: str, show: bool):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not (show and jax.process_index() == 0) or None,
            dynamic_ncols=True,
            leave=False,
        )

    def show(self, **values: str) -> None:
        self.bar.set_postfix(**values)

    def update(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class PreemptionSignals:
    """Turns SIGTERM/SIGINT into a request the loop honours after the current step.

    A second SIGINT interrupts at once (KeyboardInterrupt), as a user pressing Ctrl-C twice
    expects. Handlers can only be installed from the main thread; elsewhere (some notebook
    and test runners) this is a no-op and the signals keep their default behaviour.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> PreemptionSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def say(message: str) -> None:
    """A one-line notice on stderr (process 0 only)."""
    if jax.process_index() == 0:
        print(f"distill-jax: {message}", file=sys.stderr)
