"""Runs the robust-distillation experiment and writes its measured table.

Command (resumable: finished runs are reused; NOT RUN AT FULL SCALE YET, see common.py):

    python experiments/robust_kd/run.py --workdir runs/robust_kd

1. trains the two teachers (`common.TEACHERS`: standard and PGD-trained);
2. trains every student row (`common.ROWS`) for `--seeds` seeds, alone or distilled from
   its teacher, with its robust method;
3. evaluates every model on the test split, clean and under each of `common.ATTACKS`
   (attacks.robust_accuracy);
4. writes `results.json` and `results.md` (mean +- std over seeds) into the workdir.
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

from distill_jax import attacks
from distill_jax import config as config_lib
from distill_jax.config import import_file
from distill_jax.errors import DistillError
from distill_jax.report import atomic_write
from distill_jax.train.loop import fit, load_data, load_teacher

HERE = os.path.dirname(os.path.abspath(__file__))
common = import_file(os.path.join(HERE, "common.py"))


EVAL_FILE = "robust_kd_eval.json"


def evaluate(fitted, split, specs) -> dict[str, float]:
    """Clean accuracy and robust accuracy under each attack spec, kept beside the run
    (`EVAL_FILE`, reused while the run and the attacks are the same)."""
    path = os.path.join(fitted.workdir, EVAL_FILE)
    settings = [spec.settings() for spec in specs]
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["settings"] == settings and saved["steps"] == fitted.steps:
            return saved["accuracy"]
    out: dict[str, float] = {}
    for spec in specs:
        r = attacks.robust_accuracy(fitted.model.apply, fitted.variables, split, spec)
        out["clean"] = r["clean_accuracy"]
        out[spec.name] = r["robust_accuracy"]
    record = {"settings": settings, "steps": fitted.steps, "accuracy": out}
    atomic_write(path, json.dumps(record, indent=2))
    return out


def _fit(cfg: dict, workdir: str, overrides: Sequence[str], **kwargs):
    return fit(config_lib.from_dict(cfg, overrides), workdir, **kwargs)


def run(
    workdir: str,
    *,
    rows: Sequence[str] | None = None,
    seeds: int | None = None,
    overrides: Sequence[str] = (),
    say: Callable[..., None] = print,
) -> dict[str, Any]:
    """The whole table (see the module docstring); `overrides` apply to every run."""
    rows = list(common.ROWS) if rows is None else list(rows)
    seeds = common.SEEDS if seeds is None else seeds
    specs = attacks.parse_attacks(common.ATTACKS)
    t0 = time.time()
    needed = {common.ROWS[r][1] for r in rows} - {None}
    teachers, results = {}, {"teachers": {}, "rows": {}, "seconds": {}}
    split = None
    for label, method in common.TEACHERS.items():
        if label not in needed and label != "standard":  # the standard one: a reference
            continue
        t = time.time()
        tdir = os.path.join(workdir, "teacher", label)
        fitted = _fit(common.config("teacher", method), tdir, overrides, role="teacher")
        teachers[label] = load_teacher(tdir)
        if split is None:  # the test split, as the runs load it
            split = load_data(config_lib.from_dict(common.config("teacher"), overrides)).test
        results["teachers"][label] = evaluate(fitted, split, specs)
        results["seconds"][f"teacher_{label}"] = time.time() - t
        say(f"teacher {label}: {results['teachers'][label]}")
    for row in rows:
        method, teacher = common.ROWS[row]
        t = time.time()
        per_seed = []
        for seed in range(seeds):
            sub = os.path.join(workdir, row, f"seed_{seed}")
            fitted = _fit(
                common.config("student", method),
                sub,
                overrides,
                role="student",
                seed=seed,
                teacher=None if teacher is None else teachers[teacher],
            )
            per_seed.append(evaluate(fitted, split, specs))
        results["rows"][row] = {k: [s[k] for s in per_seed] for k in per_seed[0]}
        results["seconds"][row] = time.time() - t
        say(f"{row}: {results['rows'][row]}")
    results["seconds"]["total"] = time.time() - t0
    results["settings"] = {"eps": common.EPS, "steps": common.STEPS, "attacks": common.ATTACKS}
    os.makedirs(workdir, exist_ok=True)
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    atomic_write(os.path.join(workdir, "results.md"), table(results))
    return results


def table(results: dict[str, Any]) -> str:
    """results.md: accuracy (%) clean and under each attack, mean +- std over seeds."""
    names = ["clean", *(a["name"] for a in results["settings"]["attacks"])]
    lines = [
        f"eps = {results['settings']['eps']} (L-inf, pixels in [0, 1]); test accuracy (%)",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, r in results["teachers"].items():
        lines.append(
            f"| teacher ({label}) | " + " | ".join(f"{100 * r[n]:.1f}" for n in names) + " |"
        )
    for row, r in results["rows"].items():
        cells = [f"{100 * np.mean(r[n]):.1f} +- {100 * np.std(r[n]):.1f}" for n in names]
        lines.append(f"| {common.LABELS[row]} | " + " | ".join(cells) + " |")
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
