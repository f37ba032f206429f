"""Runs the NER distillation experiment end to end and writes its table. NOT YET MEASURED.

Meant to take about 45 minutes on the 2-core CPU box (a guess: the full command has not
been run; only a tiny variant is tested, tests/test_ner.py). Resumable: finished runs are
not retrained.

    python experiments/ner_kd/run.py --workdir runs/ner_kd [--seeds 3]

1. fine-tunes the teacher (`teacher.py`: all-MiniLM-L6-v2 with a per-token head);
2. for each seed and each student (the 2-layer BERT tagger, the BiLSTM tagger) trains it
   alone (`*_alone.py`), distils it from the teacher's tag distributions
   (`*_distill.py`), and distils it with 927 unlabelled tweets the teacher tags added to
   the training split (`*_distill_unlabelled.py`, `healthtweets`);
3. writes `results.json` and `results.md`: entity F1 on the test split (mean ± std over
   seeds), token accuracy, token agreement with the teacher, parameters, CPU latency per
   sentence (batch 1 and batch 64).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from distill_jax import config as config_lib
from distill_jax.report import atomic_write
from distill_jax.train.loop import fit, load_teacher

HERE = os.path.dirname(os.path.abspath(__file__))
STUDENTS = ("bert2", "bilstm")
LABELS = {
    "teacher": "teacher (all-MiniLM-L6-v2 tagger, fine-tuned)",
    "bert2_alone": "2-layer BERT tagger alone",
    "bert2_distill": "2-layer BERT tagger distilled",
    "bilstm_alone": "BiLSTM tagger alone",
    "bilstm_distill": "BiLSTM tagger distilled",
    "bert2_distill_unlabelled": "2-layer BERT tagger distilled, + unlabelled tweets",
    "bilstm_distill_unlabelled": "BiLSTM tagger distilled, + unlabelled tweets",
}
KINDS = ("alone", "distill", "distill_unlabelled")
"""Per student: trained alone, distilled, distilled with the unlabelled tweets."""
KEYS = (
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "accuracy",
    "agreement",
    "params",
    "latency_ms_batch1",
    "latency_ms_per_example",
)


def load_settings(
    overrides: list[str] | None = None, student_models: dict[str, dict] | None = None
) -> dict[str, Any]:
    """The validated configs by setting name; `overrides` apply to all, `student_models`
    (student -> model config) replace a student's model (tiny variants in tests)."""
    settings = {"teacher": config_lib.load_config(os.path.join(HERE, "teacher.py"), overrides)}
    for student in STUDENTS:
        extra = []
        if student_models and student in student_models:
            extra = [f"student.model={student_models[student]!r}"]
        for kind in KINDS:
            name = f"{student}_{kind}"
            path = os.path.join(HERE, f"{name}.py")
            settings[name] = config_lib.load_config(path, [*(overrides or []), *extra])
    return settings


def _summary(metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {**{k: metrics[k] for k in KEYS if k in metrics}, "seconds": seconds}


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run(settings: dict[str, Any], workdir: str, seeds: int = 3, say=print) -> dict[str, Any]:
    """Trains every setting and returns (and writes) the results."""
    os.makedirs(workdir, exist_ok=True)
    results: dict[str, Any] = {"seeds": seeds, "runs": {}}
    start = time.time()
    teacher_dir = os.path.join(workdir, "teacher")
    t0 = time.time()
    teacher_fit = fit(settings["teacher"], teacher_dir, role="teacher", desc="teacher")
    results["runs"]["teacher"] = [_summary(teacher_fit.test, time.time() - t0)]
    say(f"teacher: test entity F1 {teacher_fit.test['entity_f1']:.4f}")
    teacher = load_teacher(teacher_dir, settings["teacher"].teacher.checkpoint)
    for name in (n for n in settings if n != "teacher"):
        # The seeds train together, vmapped (one program, one teacher forward per batch).
        cfg = config_lib.from_dict(config_lib.to_dict(settings[name]), [f"vmap.students={seeds}"])
        t0 = time.time()
        result = fit(
            cfg,
            os.path.join(workdir, name),
            role="student",
            teacher=None if name.endswith("alone") else teacher,
            compare_to=teacher,
            desc=name,
        )
        seconds = time.time() - t0
        students = result.students or [result.test]
        results["runs"][name] = [_summary(s, seconds) for s in students]
        f1 = ", ".join(f"{s['entity_f1']:.4f}" for s in students)
        say(f"{name}: test entity F1 per seed {f1} ({seconds / 60:.1f} min)")
    results["seconds"] = time.time() - start
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    table = markdown(results)
    atomic_write(os.path.join(workdir, "results.md"), table)
    say("\n" + table)
    return results


def markdown(results: dict[str, Any]) -> str:
    """The table (F1, accuracy and agreement in %, latency in ms per sentence)."""
    seeds = results["seeds"]
    lines = [
        f"| model | test entity F1 % (mean ± std, {seeds} seeds) | token accuracy % "
        "| token agreement with teacher % | parameters | ms/sentence (batch 1) "
        "| ms/sentence (batch 64) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(runs, key, one):
        mean, std = _mean_std([100 * r[key] for r in runs])
        return f"{mean:.1f}" if one else f"{mean:.1f} ± {std:.1f}"

    for name, runs in results["runs"].items():
        one = name == "teacher"
        agree = cell(runs, "agreement", one) if "agreement" in runs[0] else "–"
        lines.append(
            f"| {LABELS[name]} | {cell(runs, 'entity_f1', one)} | {cell(runs, 'accuracy', one)} "
            f"| {agree} | {runs[0]['params'] / 1e6:.2f}M "
            f"| {np.median([r['latency_ms_batch1'] for r in runs]):.2f} "
            f"| {np.median([r['latency_ms_per_example'] for r in runs]):.3f} |"
        )
    lines += ["", f"Total wall time: {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (all settings)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    run(load_settings(overrides), args.workdir, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
