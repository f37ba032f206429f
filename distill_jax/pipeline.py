"""`distill-jax run`: teacher -> students (alone, alone + jitter, distilled) -> report.

The whole method in one call: train the teacher once, then for each seed train the
student alone, the student alone with the teacher's augmentation (so readers see whether
distillation beats simply augmenting), and the student distilled from the teacher, all
with the same budget; evaluate all of them on the test split and write the report.
Every sub-run has its own workdir, so an interrupted `run` resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from distill_jax import config as config_lib
from distill_jax.report import (
    atomic_write,
    markdown_table,
    run_meta,
    summarize,
    test_record,
    write_report,
)
from distill_jax.robust import check_trains_alone
from distill_jax.train.loop import fit, load_data, load_teacher, read_metrics
from distill_jax.train.workdir import claim


def student_runs(
    config: ml_collections.ConfigDict,
) -> dict[str, tuple[ml_collections.ConfigDict, bool]]:
    """The student variants of a run: each one's config and whether it is distilled."""
    runs = {"student_scratch": (config, False)}
    teacher_jitter = config.teacher.train.translate
    if config.run.scratch_aug and teacher_jitter > config.student.train.translate:
        cfg = config_lib.to_dict(config)
        cfg["student"]["train"]["translate"] = teacher_jitter
        runs["student_scratch_aug"] = (config_lib.from_dict(cfg), False)
    runs["student_kd"] = (config, True)
    return runs


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    seeds: int | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Runs the whole comparison and writes report.json/report.md/learning_curves.png.

    Args:
        config: the validated config.
        workdir: the run's directory (sub-runs live in teacher/, student_*/seed_N/).
        seeds: number of student seeds (default `config.run.seeds`).
        overwrite: discard sub-runs of a different config.
        verbose: print progress lines and the final table.

    Returns:
        The report dict (as written to report.json).
    """
    seeds = config.run.seeds if seeds is None else seeds
    if seeds < 1:
        raise config_lib.ConfigError(f"--seeds must be >= 1, got {seeds}")
    check_trains_alone(config, "`run` also trains the student alone (student_scratch)")
    t0 = time.time()
    data = load_data(config)  # fails early on a bad dataset
    claim(workdir, "run", config, overwrite=overwrite)
    say = print if verbose else (lambda *a, **k: None)

    say(f"[1/3] teacher: {config.teacher.model.to_dict()}")
    teacher_dir = os.path.join(workdir, "teacher")
    teacher_fit = fit(config, teacher_dir, role="teacher", overwrite=overwrite, desc="teacher")
    say(f"      teacher test accuracy {teacher_fit.test['accuracy']:.4f}")
    teacher = load_teacher(teacher_dir, config.teacher.checkpoint)

    per_seed: dict[str, list[dict[str, Any]]] = {"teacher": []}
    curves: dict[str, list[list[dict[str, Any]]]] = {"teacher": [read_metrics(teacher_dir)]}
    per_seed["teacher"].append(test_record(teacher_fit.test, config.seed, teacher_dir))
    runs = student_runs(config)
    say(f"[2/3] students: {', '.join(runs)} x {seeds} seed(s)")
    for name, (student_config, distilled) in runs.items():
        per_seed[name], curves[name] = [], []
        for i in range(seeds):
            seed = config.seed + i
            sub = os.path.join(workdir, name, f"seed_{seed}")
            result = fit(
                student_config,
                sub,
                role="student",
                seed=seed,
                teacher=teacher if distilled else None,
                compare_to=teacher,
                overwrite=overwrite,
                desc=f"{name} seed {seed}",
            )
            per_seed[name].append(test_record(result.test, seed, sub))
            curves[name].append(read_metrics(sub))
            say(f"      {name} seed {seed}: test accuracy {result.test['accuracy']:.4f}")

    say("[3/3] report")
    report = {
        "results": {name: summarize(records) for name, records in per_seed.items()},
        "meta": run_meta(
            config.data.name,
            t0,
            test_examples=len(data.test),
            seeds=seeds,
            teacher=teacher.identity,
            distill=config.distill.to_dict(),
        ),
    }
    # Written with the report, not at the start: a start that fails (say, on a workdir
    # holding runs of another config) must leave the workdir as it was.
    atomic_write(
        os.path.join(workdir, "config.json"), json.dumps(config_lib.to_dict(config), indent=2)
    )
    _merge_metrics(workdir, curves)
    paths = write_report(workdir, report, curves)
    say("\n" + markdown_table(report))
    say(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return report


def _merge_metrics(workdir: str, curves: dict[str, list[list[dict[str, Any]]]]) -> None:
    """All sub-runs' metrics in one metrics.jsonl, each record tagged with its run."""
    lines = [
        json.dumps({"run": name, "seed_index": i, **r}) + "\n"
        for name, seeds in curves.items()
        for i, records in enumerate(seeds)
        for r in records
    ]
    atomic_write(os.path.join(workdir, "metrics.jsonl"), "".join(lines))
