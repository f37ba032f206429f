"""Choose the distillation temperature and alpha on the *validation* split.

Command (after `make run`, which trains the teacher this script reuses):
    .venv/bin/python experiments/mnist_kd/select_hparams.py --workdir runs/mnist_kd

For each (T, alpha) in the grid it distils one student (seed 0) from the run's teacher and
records its validation accuracy, averaged over the last 5 validations to smooth the noise
of a 500-image split. The test split is never looked at. Writes `selection.json` and
`selection.md` into `<workdir>/selection/` and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np

from distill_jax.config import load_config
from distill_jax.train.loop import fit, load_teacher

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/mnist_kd", help="the `run` workdir")
    parser.add_argument("--config", default=os.path.join(HERE, "config.py"))
    parser.add_argument("--temperatures", default="1,4,20")
    parser.add_argument("--alphas", default="0.1,0.5")
    args = parser.parse_args()
    temps = [float(t) for t in args.temperatures.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]

    base = load_config(args.config)
    teacher_dir = os.path.join(args.workdir, "teacher")
    if not os.path.isdir(teacher_dir):  # train the teacher exactly as `run` would
        fit(base, teacher_dir, role="teacher", desc="teacher")
    teacher = load_teacher(teacher_dir, base.teacher.checkpoint)
    out_dir = os.path.join(args.workdir, "selection")
    rows = []
    for temperature, alpha in itertools.product(temps, alphas):
        config = load_config(
            args.config, [f"distill.temperature={temperature}", f"distill.alpha={alpha}"]
        )
        sub = os.path.join(out_dir, f"T{temperature:g}_alpha{alpha:g}")
        result = fit(
            config, sub, role="student", teacher=teacher, desc=f"T={temperature:g} alpha={alpha:g}"
        )
        val = [r["accuracy"] for r in result.history][-5:]
        rows.append(
            {"temperature": temperature, "alpha": alpha, "val_accuracy_last5": float(np.mean(val))}
        )
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["val_accuracy_last5"])
    lines = ["| T | alpha | validation accuracy % (mean of last 5 evals) |", "|---:|---:|---:|"]
    for r in rows:
        mark = " **(selected)**" if r is best else ""
        lines.append(
            f"| {r['temperature']:g} | {r['alpha']:g} | {100 * r['val_accuracy_last5']:.2f}{mark} |"
        )
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "selection.json"), "w") as f:
        json.dump({"rows": rows, "selected": best}, f, indent=2)
    with open(os.path.join(out_dir, "selection.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
