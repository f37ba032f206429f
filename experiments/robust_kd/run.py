"""Runs the robust-distillation experiment and writes its measured table.

Command (resumable: finished runs are reused; 47.8 min on 2 CPU cores, README.md):

    python experiments/robust_kd/run.py --workdir runs/robust_kd

1. trains the two teachers (`common.TEACHERS`: standard and PGD-trained);
2. trains every student row (`common.ROWS`) for `--seeds` seeds, alone or distilled from
   its teacher, with its robust method;
3. evaluates every model on the test split, clean and under each of `common.ATTACKS`
   (`attack.attacks`: the trainer's test evaluation, per vmapped seed);
4. writes `results.json` and `results.md` (mean ± std over seeds) into the workdir.
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
from distill_jax.config import import_file
from distill_jax.errors import DistillError
from distill_jax.report import atomic_write
from distill_jax.train.loop import fit, load_teacher

HERE = os.path.dirname(os.path.abspath(__file__))
common = import_file(os.path.join(HERE, "common.py"))


def accuracies(record: dict[str, Any]) -> dict[str, float]:
    """Clean accuracy and robust accuracy per attack, from one model's test record (its
    `robust` list: `attack.attacks`, evaluated by the trainer on the test split)."""
    out = {"clean": float(record["accuracy"])}
    for spec, r in zip(common.ATTACKS, record["robust"], strict=True):
        out[spec["name"]] = float(r["robust_accuracy"])
    return out


def _fit(cfg: dict, workdir: str, overrides: Sequence[str], **kwargs) -> tuple[Any, float]:
    """`fit` with the experiment's attacks evaluated on every model's test split, and its
    wall seconds, kept in `<workdir>/seconds.json` the first time: when the command runs
    again and `fit` reuses the finished run, the table keeps the time it took to train
    (not the seconds of reloading it)."""
    extra = [f"attack.attacks={common.ATTACKS!r}", *overrides]
    path = os.path.join(workdir, "seconds.json")
    t = time.time()
    fitted = fit(config_lib.from_dict(cfg, extra), workdir, **kwargs)
    if os.path.isfile(path):
        with open(path) as f:
            return fitted, float(json.load(f)["seconds"])
    seconds = time.time() - t
    atomic_write(path, json.dumps({"seconds": seconds}))
    return fitted, seconds


def run(
    workdir: str,
    *,
    rows: Sequence[str] | None = None,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    say: Callable[..., None] = print,
) -> dict[str, Any]:
    """The whole table (see the module docstring); `overrides` apply to every run."""
    rows = list(common.DEFAULT_ROWS) if rows is None else list(rows)
    seeds = common.SEEDS if seeds is None else seeds
    t0 = time.time()
    needed = {common.ROWS[r][1] for r in rows} - {None}
    teachers, results = {}, {"teachers": {}, "rows": {}, "seconds": {}}
    for label, method in common.TEACHERS.items():
        if label not in needed and label != "standard":  # the standard one: a reference
            continue
        tdir = os.path.join(workdir, "teacher", label)
        fitted, seconds = _fit(common.config("teacher", method), tdir, overrides, role="teacher")
        teachers[label] = load_teacher(tdir)
        results["teachers"][label] = accuracies(fitted.test)
        results["seconds"][f"teacher_{label}"] = seconds
        say(f"teacher {label}: {results['teachers'][label]}")
    for row in rows:
        method, teacher = common.ROWS[row]
        cfg = common.config("student", method)
        cfg["vmap"] = {"students": seeds}  # the seeds train together, vmapped
        fitted, seconds = _fit(
            cfg,
            os.path.join(workdir, row),
            overrides,
            role="student",
            teacher=None if teacher is None else teachers[teacher],
        )
        per_seed = [accuracies(s) for s in (fitted.students or [fitted.test])]
        results["rows"][row] = {k: [s[k] for s in per_seed] for k in per_seed[0]}
        results["seconds"][row] = seconds
        say(f"{row}: {results['rows'][row]}")
    results["seconds"]["total"] = float(sum(results["seconds"].values()))
    results["seconds"]["this_call"] = time.time() - t0
    results["settings"] = {"eps": common.EPS, "steps": common.STEPS, "attacks": common.ATTACKS}
    os.makedirs(workdir, exist_ok=True)
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    atomic_write(os.path.join(workdir, "results.md"), table(results))
    return results


def _std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof 1) over seeds; 0 for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(results: dict[str, Any]) -> str:
    """results.md: accuracy (%) clean and under each attack, mean ± std over seeds."""
    names = ["clean", *(a["name"] for a in results["settings"]["attacks"])]
    seconds = results["seconds"]
    lines = [
        f"eps = {results['settings']['eps']} (L-inf, pixels in [0, 1]); test accuracy (%)",
        "",
        "| model | " + " | ".join(names) + " | minutes |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for label, r in results["teachers"].items():
        cells = [f"{100 * r[n]:.1f}" for n in names] + [f"{seconds[f'teacher_{label}'] / 60:.1f}"]
        lines.append(f"| teacher ({label}) | " + " | ".join(cells) + " |")
    for row, r in results["rows"].items():
        cells = [f"{100 * np.mean(r[n]):.1f} ± {100 * _std(r[n]):.1f}" for n in names]
        cells.append(f"{seconds[row] / 60:.1f}")
        lines.append(f"| {common.LABELS[row]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Minutes: each model's training and test evaluation (the seeds of a row together); "
        f"total {seconds['total'] / 60:.1f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", nargs="*", default=None, choices=list(common.ROWS))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_args(argv)
    try:
        run(args.workdir, rows=args.rows, seeds=args.seeds, overrides=args.overrides)
    except DistillError as e:
        print(f"robust_kd: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
