"""The training loop shared by `train` (a model alone) and `distill` (student + teacher).

`fit(config, workdir, role=...)` is `train(setup(...))`, importable from notebooks and
tests. `setup` (train/setup.py) resolves and checks everything and restores the latest
checkpoint; `train` runs the plain loop:

    for each step: batch -> step -> log (one window late) -> validate -> checkpoint

logging train metrics to `metrics.jsonl`, validating every `eval.every_epochs` epochs,
saving every `checkpoint.every_steps` steps, after each validation (the best is kept) and
at the end, and finally evaluating on the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from distill_jax import faults
from distill_jax.attacks import parse_attacks, robust_accuracy
from distill_jax.errors import Preempted
from distill_jax.evaluation import Evaluator, model_summary
from distill_jax.report import summarize
from distill_jax.train.checkpointing import SCORE_METRIC
from distill_jax.train.hooks import (
    Events,
    MetricsLog,
    PreemptionSignals,
    Progress,
    read_metrics,
    say,
    truncate_metrics,
)
from distill_jax.train.inputs import Data, check_teacher, load_data, load_teacher, make_task
from distill_jax.train.setup import Run, Variant, setup
from distill_jax.train.state import TrainState
from distill_jax.train.workdir import CONFIG_FILE


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        workdir: the run's directory.
        model: the trained module (inference form, no pmap axis).
        variables: its trained variables.
        test: test-split metrics (plus `params`, `flops_per_example`, latency).
        history: the validation records of metrics.jsonl.
        steps: total optimizer steps.
        start_step: the step training started from (> 0 when resumed from a checkpoint).
        students: vmapped runs: per student its seed, alpha, temperature, learning rate
            and test metrics; None for a single run.
    """

    workdir: str
    model: nn.Module
    variables: Any
    test: dict[str, float]
    history: list[dict[str, Any]]
    steps: int
    start_step: int = 0
    students: list[dict[str, Any]] | None = None


def _mean_metrics(per_student: list[dict[str, Any]]) -> dict[str, Any]:
    """One student's metrics, or the mean and `*_std` over several (report.summarize)."""
    if len(per_student) == 1:
        return dict(per_student[0])
    out = summarize(per_student)
    del out["seeds"]  # the per-student records are FitResult.students
    return out


def _validate(run: Run, evaluator: Evaluator, log: MetricsLog, state, done: int) -> dict:
    """Validation metrics of every student; logs them and returns the checkpoint's."""
    vals = [evaluator(v, run.data.validation) for v in run.students.each(state.variables)]
    val = _mean_metrics(vals)
    record = {k: val[k] for k in ("accuracy", "nll", "ece", "entity_f1", "perplexity") if k in val}
    if run.members is not None:
        record["accuracy_students"] = [v["accuracy"] for v in vals]
    log.write(done, "validation", record)
    return {
        "val_accuracy": val["accuracy"],
        "val_nll": val["nll"],
        SCORE_METRIC: val[run.task.selection_metric],
    }


def train(run: Run, desc: str | None = None) -> FitResult:
    """Trains a set-up run to its last step (resuming where it was) and tests it."""
    config, ckpt, strategy = run.config, run.checkpointer, run.strategy
    start, total, per_epoch = run.start_step, run.total_steps, run.steps_per_epoch
    if 0 < start < total:
        say(f"resuming {run.workdir} from step {start}")
    truncate_metrics(run.workdir, start)

    def kept() -> str:
        latest = ckpt.latest_step()
        if latest is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {latest}) is kept"

    events = Events(run.workdir, start, config.log.tensorboard)
    log = MetricsLog(
        run.workdir,
        strategy.fetch,
        per_epoch,
        run.train_cfg.on_nonfinite,
        kept,
        run.role,
        batch_size=run.train_cfg.batch_size,
        events=events,
    )
    validator = Evaluator(run.eval_model, task=run.task, batch_size=config.data.eval_batch_size)
    state = strategy.put_replicated(run.state)

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        log.flush(step)  # never checkpoint past an unchecked (possibly diverged) step
        ckpt.save(step, strategy.fetch(state), run.metadata, metrics=metrics)
        faults.inject("sigkill_in_save", step)

    progress = Progress(total, start, desc or run.role, config.log.progress)
    batches = run.batches(start)
    last_saved = start if start > 0 else None
    with PreemptionSignals() as preemption, contextlib.closing(ckpt), contextlib.closing(events):
        for step in range(start, total):
            state, metrics = run.step(state, run.frozen, strategy.put_batch(next(batches)))
            done = step + 1
            log.add(done, metrics)
            faults.inject("sigkill_at_step", done)
            faults.inject("sigterm_at_step", done)
            ckpt.finalize()
            if done % config.log.every_steps == 0 or done == total:
                means = log.flush(done)
                progress.show(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.3f}")
            val_metrics = None
            epoch_end = done % per_epoch == 0
            if (
                (epoch_end and (done // per_epoch) % config.eval.every_epochs == 0)
                or done == total
                or done in run.keep_steps
            ):
                log.flush(done)
                val_metrics = _validate(run, validator, log, strategy.fetch(state), done)
                progress.show(val_acc=f"{val_metrics['val_accuracy']:.4f}")
            if val_metrics is not None or done % config.checkpoint.every_steps == 0:
                save(done, val_metrics)
                last_saved = done
                log.restart_clock()
            progress.update()
            if preemption.requested and done < total:
                if last_saved != done:
                    save(done)
                progress.close()
                raise Preempted(
                    f"{preemption.requested} at step {done}/{total}; checkpoint saved in "
                    f"{ckpt.directory}. Run the same command again to resume"
                )
        progress.close()
        if last_saved != total and ckpt.latest_step() != total:
            save(total)
        result = _test(run, strategy.fetch(state), log.skipped)
        events.write(total, "test", result.test)
    return result


def _test(run: Run, final: TrainState, skipped: int) -> FitResult:
    """Test metrics of every student, the model's size and speed, and the result."""
    config, info = run.config, run.data.info
    tester = Evaluator(
        run.eval_model,
        task=run.task,
        teacher=run.compare_to,
        batch_size=config.data.eval_batch_size,
    )
    each = run.students.each(final.variables)
    tests = [tester(v, run.data.test) for v in each]
    summary = model_summary(
        run.eval_model, each[0], info.image_shape, config.eval.latency_batch_size, run.task
    )
    tests = [{**t, **summary, "skipped_steps": skipped} for t in tests]
    if config.attack.attacks:  # robust accuracy under each attack, settings beside it
        specs = parse_attacks(config.attack.attacks)
        batch = config.data.eval_batch_size
        for t, v in zip(tests, each, strict=True):
            t["robust"] = [
                robust_accuracy(
                    run.eval_model.apply, v, run.data.test, s, task=run.task, batch_size=batch
                )
                for s in specs
            ]
    students = None
    if run.members is not None:
        students = [{**m, **t} for m, t in zip(run.members, tests, strict=True)]
    history = [r for r in read_metrics(run.workdir) if r.get("split") == "validation"]
    return FitResult(
        run.workdir,
        run.eval_model,
        final.variables,
        _mean_metrics(tests),
        history,
        run.total_steps,
        run.start_step,
        students,
    )


def fit(
    config: ml_collections.ConfigDict, workdir: str, *, desc: str | None = None, **kwargs: Any
) -> FitResult:
    """Trains `config[role]` (alone, or distilled from `teacher`) and evaluates it.

    `train(setup(config, workdir, **kwargs), desc)`: the keyword arguments are `setup`'s
    (`role`, `seed`, `teacher`, `compare_to`, `overwrite`, `variant`; train/setup.py);
    `desc` labels the progress bar.

    Returns:
        The trained model, its variables and its test metrics (for vmapped students:
        stacked variables, mean metrics with `*_std`, and `FitResult.students`).
    """
    return train(setup(config, workdir, **kwargs), desc)


__all__ = [
    "CONFIG_FILE",
    "Data",
    "FitResult",
    "Run",
    "TrainState",
    "Variant",
    "check_teacher",
    "fit",
    "load_data",
    "load_teacher",
    "make_task",
    "read_metrics",
    "setup",
    "train",
]
