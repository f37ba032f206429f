"""What a served teacher gives away: a copier distils a student from its answers.

Command (resumable: finished runs and caches are reused):

    python experiments/exposure/run.py --workdir runs/exposure

1. trains the teacher (a CNN on `mnist_5k`), or reads one (`--teacher DIR`);
2. caches its logits on each query set (`QUERIES`): the first 1,000 training images, all
   3,500, and all 3,500 in 4 randomly shifted views each (14,000 queries);
3. for each exposure level (`EXPOSURES`, `distill.exposure`: what the served API returns)
   and each query set, trains a student on the exposed answers alone (no true labels:
   `distill.alpha = 0`, KL at T = 1 to the exposed distribution), 3 vmapped seeds, the
   same number of optimizer steps for every query set; plus, for reference, the student
   trained on the true labels of the same images;
4. writes `results.json`, `results.md` (test accuracy and agreement with the teacher,
   mean ± std over seeds) and `exposure.png` (accuracy against queries, one line per
   exposure level).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distill_jax import config as config_lib
from distill_jax.errors import DistillError
from distill_jax.report import atomic_write
from distill_jax.train.loop import fit, load_teacher
from distill_jax.train.teacher_cache import ensure_cache

SEEDS = 3
DATA = {"name": "mnist_5k"}
TEACHER = {"name": "cnn", "widths": [32, 64], "dense": 128}
STUDENT = {"name": "cnn", "widths": [16, 32], "dense": 64}
TRAIN = {"batch_size": 128, "optimizer": "adam", "learning_rate": 2e-3, "schedule": "cosine"}
TEACHER_EPOCHS = 15
STUDENT_STEPS = 400
"""Optimizer steps of every student, whatever its number of queries."""
QUERIES = {
    "1k": {"split": "train[:1000]", "views": 1, "translate": 0},
    "3.5k": {"split": "train", "views": 1, "translate": 0},
    "3.5k x4": {"split": "train", "views": 4, "translate": 3},
}
"""Query set -> training split, teacher-cache views per image, and the random shift (px)
of each view (0: the images as they are)."""
EXPOSURES = {
    "labels": "true labels (no teacher)",
    "full": "full probabilities",
    "top:5": "top-5 probabilities",
    "label": "top-1 label only",
    "round:2": "probabilities rounded to 2 decimals",
    "round:1": "probabilities rounded to 1 decimal",
    "noise:2": "defence: noise on non-top log-probs (std 2), top-1 kept",
}
"""Row -> what the copier sees (`distill.exposure`); `labels`: the student trained on the
true labels of the same images, what a copier with labelled data would reach. Another
level (e.g. the `temperature:T` defence) is one more entry here."""
SPLIT_SIZES = {"train[:1000]": 1000, "train": 3500}


def config(role: str, queries: str | None = None, exposure: str = "full") -> dict[str, Any]:
    """A run's config (plain dict): the teacher, or a student on `queries` with `exposure`."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "data": dict(DATA),
        "teacher": {"model": dict(TEACHER), "train": {**TRAIN, "epochs": TEACHER_EPOCHS}},
        "eval": {"every_epochs": 1000},  # validation at the end only (nothing is selected)
        "log": {"progress": False},
    }
    if role == "teacher":
        return cfg
    q = QUERIES[queries]
    steps_per_epoch = -(-SPLIT_SIZES[q["split"]] // TRAIN["batch_size"])
    epochs = max(1, round(STUDENT_STEPS / steps_per_epoch))
    cfg["data"]["train_split"] = q["split"]
    cfg["student"] = {
        "model": dict(STUDENT),
        "train": {**TRAIN, "epochs": epochs, "translate": q["translate"]},
    }
    cfg["vmap"] = {"students": SEEDS}
    if exposure != "labels":
        cfg["distill"] = {"alpha": 0.0, "temperature": 1.0, "exposure": exposure}
    return cfg


def _config(cfg: dict, overrides: Sequence[str]):
    return config_lib.from_dict(cfg, list(overrides))


def run(
    workdir: str,
    *,
    teacher_dir: str | None = None,
    exposures: Sequence[str] | None = None,
    queries: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    say: Callable[..., None] = print,
) -> dict[str, Any]:
    """The whole table (module docstring); `overrides` apply to every run."""
    exposures = list(EXPOSURES) if exposures is None else list(exposures)
    queries = list(QUERIES) if queries is None else list(queries)
    os.makedirs(workdir, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"seeds": SEEDS, "rows": {}, "seconds": {}, "queries": {}}
    if teacher_dir is None:
        teacher_dir = os.path.join(workdir, "teacher")
        t = time.time()
        fitted = fit(_config(config("teacher"), overrides), teacher_dir, role="teacher")
        results["teacher"] = {"accuracy": fitted.test["accuracy"], "params": fitted.test["params"]}
        results["seconds"]["teacher"] = time.time() - t
        say(f"teacher: test accuracy {fitted.test['accuracy']:.4f}")
    teacher = load_teacher(teacher_dir)
    caches = {}
    for q in queries:
        t = time.time()
        caches[q] = os.path.join(workdir, "caches", q.replace(" ", "_"))
        cfg = _config(config("student", q), overrides)
        ensure_cache(cfg, teacher, caches[q], views=QUERIES[q]["views"])
        results["queries"][q] = SPLIT_SIZES[QUERIES[q]["split"]] * QUERIES[q]["views"]
        results["seconds"][f"cache {q}"] = time.time() - t
    for exposure in exposures:
        for q in queries:
            t = time.time()
            cfg = config("student", q, exposure)
            distilled = exposure != "labels"
            if distilled:
                cfg["distill"]["cache"] = caches[q]
            result = fit(
                _config(cfg, overrides),
                os.path.join(workdir, exposure.replace(":", "_"), q.replace(" ", "_")),
                role="student",
                teacher=teacher if distilled else None,
                compare_to=teacher,
                desc=f"{exposure} {q}",
            )
            students = result.students or [result.test]
            results["rows"].setdefault(exposure, {})[q] = {
                "accuracy": [float(s["accuracy"]) for s in students],
                "agreement": [float(s["agreement"]) for s in students],
                "steps": result.steps,
            }
            results["seconds"][f"{exposure} {q}"] = time.time() - t
            acc = 100 * np.mean(results["rows"][exposure][q]["accuracy"])
            say(f"{exposure} / {q} queries: test accuracy {acc:.2f} %")
    results["seconds"]["total"] = time.time() - started
    if "teacher" not in results:
        results["teacher"] = {"workdir": teacher_dir}
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    atomic_write(os.path.join(workdir, "results.md"), table(results))
    plot(results, os.path.join(workdir, "exposure.png"))
    say("\n" + table(results))
    return results


def _cell(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.1f} ± {std:.1f}"


def table(results: dict[str, Any]) -> str:
    """results.md: per exposure level and query set, the student's test accuracy and its
    agreement with the teacher (%, mean ± std over seeds)."""
    queries = list(next(iter(results["rows"].values())))
    head = " | ".join(f"{q} queries: accuracy | agreement" for q in queries)
    lines = []
    if "accuracy" in results["teacher"]:
        lines += [f"Teacher: test accuracy {100 * results['teacher']['accuracy']:.1f} %.", ""]
    lines += [f"| what the copier sees | {head} |", "|---|" + "---:|---:|" * len(queries)]
    for exposure, by_q in results["rows"].items():
        cells = " | ".join(
            f"{_cell(by_q[q]['accuracy'])} | {_cell(by_q[q]['agreement'])}" for q in queries
        )
        lines.append(f"| {EXPOSURES.get(exposure, exposure)} | {cells} |")
    total = results["seconds"]["total"] / 60
    lines += ["", f"{results['seeds']} seeds per cell; wall time {total:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Test accuracy against the number of queries, one line per exposure level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for exposure, by_q in results["rows"].items():
        qs = list(by_q)
        x = [results["queries"][q] for q in qs]
        mean = [100 * np.mean(by_q[q]["accuracy"]) for q in qs]
        std = [
            100 * np.std(by_q[q]["accuracy"], ddof=1) if len(by_q[q]["accuracy"]) > 1 else 0.0
            for q in qs
        ]
        style = "--" if exposure == "labels" else "-"
        ax.errorbar(
            x,
            mean,
            yerr=std,
            marker="o",
            ls=style,
            capsize=3,
            label=EXPOSURES.get(exposure, exposure),
        )
    if "accuracy" in results["teacher"]:
        ax.axhline(100 * results["teacher"]["accuracy"], color="k", lw=0.8, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("queries to the teacher (images x views)")
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title("What each exposure level lets a copier reach (mnist_5k)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--teacher", default=None, help="a trained teacher's workdir")
    parser.add_argument("--exposures", nargs="*", default=None, choices=list(EXPOSURES))
    parser.add_argument("--queries", nargs="*", default=None, choices=list(QUERIES))
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_args(argv)
    try:
        run(
            args.workdir,
            teacher_dir=args.teacher,
            exposures=args.exposures,
            queries=args.queries,
            overrides=args.overrides,
        )
    except DistillError as e:
        print(f"exposure: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
