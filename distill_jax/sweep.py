"""`distill-jax sweep`: a teacher/student pair x method x seed grid, aggregated.

For each pair `"teacher:student"` of `sweep.pairs` the teacher is trained once (or reused
from `<workdir>/<pair>/teacher`); then for each method of `sweep.methods` and each seed
the student is trained (distilled, or alone for a method with `"teacher": False`). Each
result keeps the *best* validation accuracy over training and the *last* test accuracy.
The table gives mean ± std over seeds of both, beside the published number and the gap
(ours minus published) when `sweep.published` names a JSON file
`{"pair": {"method": accuracy_percent}}`.

CIFAR-100 papers (CRD, DKD, ...) select "best" on the test set, because CIFAR-100 has no
validation split; `experiments/cifar100/config.py` therefore sets `data.validation_split =
"test"` so that our "best" means the same, and says so.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
import numpy as np

from distill_jax import config as config_lib
from distill_jax.report import Stages, describe_meta, run_meta, write_outputs
from distill_jax.robust import check_trains_alone
from distill_jax.train.loop import fit, load_teacher
from distill_jax.train.workdir import claim


def _pair_config(config: ml_collections.ConfigDict, pair: str, method: dict | None, seed: int):
    teacher_name, student_name = pair.split(":")
    cfg = config_lib.to_dict(config)
    cfg["teacher"]["model"] = {"name": teacher_name}
    cfg["student"]["model"] = {"name": student_name}
    cfg["seed"] = seed
    if method is not None:
        cfg["distill"]["alpha"] = method.get("alpha", cfg["distill"]["alpha"])
        cfg["distill"]["losses"] = method.get("losses", {})
    return config_lib.from_dict(cfg)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Runs the grid and writes `sweep.json` and `sweep.md` into `workdir`.

    The table ends with a line from the report's `meta` block (dataset, device, wall time).

    Args:
        config: the validated config with a `sweep` section.
        workdir: where every run of the grid lives (`<pair>/<method>/seed_<s>/`).
        pairs, methods: subsets of `sweep.pairs` / `sweep.methods` (default: all).
        seeds: number of seeds (default `sweep.seeds`).
        verbose: print a line per finished run and the final table.

    Returns:
        `{"rows": [...], "runs": [...], "seeds": n, "meta": {...}}` as written to sweep.json.
    """
    started = time.time()
    say = print if verbose else (lambda *a, **k: None)
    all_methods = config.sweep.methods.to_dict()
    pairs = list(pairs or config.sweep.pairs)
    methods = list(methods or all_methods)
    seeds = config.sweep.seeds if seeds is None else seeds
    if seeds < 1:
        raise config_lib.ConfigError(f"--seeds must be >= 1, got {seeds}")
    for m in methods:
        if m not in all_methods:
            raise config_lib.ConfigError(
                f"unknown sweep method {m!r}; valid: {', '.join(all_methods)}"
            )
    for p in pairs:
        if p not in config.sweep.pairs:
            raise config_lib.ConfigError(
                f"unknown sweep pair {p!r}; valid: {', '.join(config.sweep.pairs)}"
            )
    if not pairs or not methods:
        raise config_lib.ConfigError("sweep.pairs and sweep.methods must not be empty")
    published = {}
    if config.sweep.published:
        with open(config.sweep.published) as f:
            published = json.load(f)

    alone = [m for m in methods if not all_methods[m].get("teacher", True)]
    if alone:
        check_trains_alone(config, f"sweep method {alone[0]} trains the student alone")
    claim(workdir, "sweep", config)
    runs, rows, test_examples = [], [], None
    stages = Stages(len(pairs) * (1 + len(methods) * seeds), say)
    for pair in pairs:
        pair_dir = os.path.join(workdir, pair.replace(":", "_to_"))
        teacher_dir = os.path.join(pair_dir, "teacher")
        teacher_fit = fit(
            _pair_config(config, pair, None, config.seed),
            teacher_dir,
            role="teacher",
            desc=f"{pair} teacher",
        )
        teacher = load_teacher(teacher_dir, config.teacher.checkpoint)
        test_examples = teacher_fit.test["count"]  # every pair is tested on the same split
        stages.done(f"{pair} teacher", teacher_fit.test)
        rows.append(_row(pair, "teacher", [_record(teacher_fit, config.seed)], published))
        for method in methods:
            spec = all_methods[method]
            records = []
            for i in range(seeds):
                seed = config.seed + i
                cfg = _pair_config(config, pair, spec, seed)
                result = fit(
                    cfg,
                    os.path.join(pair_dir, method, f"seed_{seed}"),
                    role="student",
                    seed=seed,
                    teacher=teacher if spec.get("teacher", True) else None,
                    compare_to=teacher,
                    desc=f"{pair} {method} seed {seed}",
                )
                records.append(_record(result, seed))
                runs.append({"pair": pair, "method": method, **records[-1]})
                stages.done(
                    f"{pair} {method} seed {seed}",
                    result.test,
                    f", best validation {records[-1]['best']:.4f}",
                )
            rows.append(_row(pair, method, records, published))
    meta = run_meta(config.data.name, started, test_examples=test_examples)
    report = {"rows": rows, "runs": runs, "seeds": seeds, "meta": meta}
    table = markdown(rows, seeds) + "\n" + describe_meta(meta) + "\n"
    write_outputs(workdir, "sweep", report, table)
    say("\n" + table)
    return report


def _record(result, seed: int) -> dict[str, Any]:
    best = max((r["accuracy"] for r in result.history), default=float("nan"))
    return {"seed": seed, "best": best, "last": result.test["accuracy"], "workdir": result.workdir}


def _row(pair: str, method: str, records: list[dict], published: dict) -> dict[str, Any]:
    best, best_std = _mean_std([r["best"] for r in records])
    last, last_std = _mean_std([r["last"] for r in records])
    ref = published.get(pair, {}).get(method)
    return {
        "pair": pair,
        "method": method,
        "n": len(records),
        "best": best,
        "best_std": best_std,
        "last": last,
        "last_std": last_std,
        "published": ref,
        "gap": None if ref is None else 100 * best - ref,
    }


def markdown(rows: list[dict[str, Any]], seeds: int) -> str:
    """The sweep's rows as a Markdown table (accuracies in %)."""
    lines = [
        f"| pair | method | best % (mean ± std, {seeds} seed(s)) | last % | published % | gap |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pub = "–" if r["published"] is None else f"{r['published']:.2f}"
        gap = "–" if r["gap"] is None else f"{r['gap']:+.2f}"
        lines.append(
            f"| {r['pair']} | {r['method']} | {100 * r['best']:.2f} ± {100 * r['best_std']:.2f} "
            f"| {100 * r['last']:.2f} ± {100 * r['last_std']:.2f} | {pub} | {gap} |"
        )
    return "\n".join(lines) + "\n"
