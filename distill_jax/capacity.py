"""`distill-jax capacity`: how big should the student be?

Every student size of `capacity.students` is trained alone and distilled, `capacity.seeds`
seeds each (vmapped: one compiled step per size and setting):

* `alone`: hard labels only;
* `kd:<label>` for each of `capacity.teachers`: distilled from one checkpoint of the one
  teacher (`latest`, `best` or `"epoch:N"`, an early-stopped teacher: Cho & Hariharan
  2019);
* `ta:<label>` for each of `capacity.assistants`: distilled from a teacher assistant of
  that size, itself distilled from the `capacity.reference` teacher (Mirzadeh et al.
  2020; assistants.py).

With `capacity.cache_views = N` (> 0) each teacher labels the training data once (N
augmented views per example, a `cache-teacher` cache in `<workdir>/caches/<label>`) and
the `kd:` rows read it instead of running the teacher at every step. `capacity.distilled`
(a partial config) is merged into the distilled rows' configs only: a transfer set
(augmented views, unlabelled text) that `alone`, with no teacher to label it, does not get.

The teacher is trained once in `<workdir>/teacher` (keeping the epochs the early-stopped
teachers name), or read from `--teacher DIR` / `teacher.workdir`. Each training is an
ordinary run in `<workdir>/<student>/<setting>/`, so the command resumes where it stopped.

The report (`capacity.json`, `capacity.md`, `capacity.png`) gives accuracy (mean ± std)
against parameters and measured latency, with the Pareto front marked, and two answers
read from the measurements (`analyse`): the smallest student within `capacity.within`
points of the teacher, and the size from which distillation stops helping.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from distill_jax import config as config_lib
from distill_jax.assistants import student_config, through_assistants
from distill_jax.errors import ConfigError
from distill_jax.evaluation import Evaluator
from distill_jax.models import count_params
from distill_jax.report import Stages, describe_meta, run_meta, write_outputs
from distill_jax.robust import check_trains_alone
from distill_jax.train.loop import fit, load_data, load_teacher
from distill_jax.train.teacher_cache import ensure_cache
from distill_jax.train.workdir import claim

ALONE = "alone"
CACHES_DIR = "caches"
"""`<workdir>/caches/<label>`: a teacher's cached outputs (`capacity.cache_views` > 0)."""


def settings(config: ml_collections.ConfigDict) -> list[str]:
    """The settings every student size is trained in, in table order."""
    c = config.capacity
    others = sorted(t for t in c.teachers if t != c.reference)
    return [ALONE, f"kd:{c.reference}", *(f"kd:{t}" for t in others)] + [
        f"ta:{a}" for a in sorted(c.assistants)
    ]


def _teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's config, keeping the ends of the epochs the early-stopped teachers name."""
    cfg = config_lib.to_dict(config)
    epochs = {config_lib.teacher_checkpoint_epoch(w) for w in config.capacity.teachers.values()}
    cfg["checkpoint"]["keep_epochs"] = sorted(
        set(cfg["checkpoint"]["keep_epochs"]) | (epochs - {None})
    )
    return config_lib.from_dict(cfg)


def _record(result) -> dict[str, Any]:
    """What the report keeps of one vmapped training: per-seed test accuracy, size, speed."""
    students = result.students or [result.test]
    accuracy = [float(s["accuracy"]) for s in students]
    record = {
        "accuracy": accuracy,
        "mean": float(np.mean(accuracy)),
        "std": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0,
        "params": int(result.test["params"]),
        "latency_ms_per_example": float(result.test["latency_ms_per_example"]),
        "latency_ms_batch1": float(result.test["latency_ms_batch1"]),
        "workdir": result.workdir,
    }
    if "agreement" in result.test:
        record["agreement"] = float(result.test["agreement"])
    return record


def capacity(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teacher_dir: str | None = None,
    students: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains every student size in every setting and writes the report.

    Args:
        config: the validated config with a `capacity` section.
        workdir: where every run lives; the report is written here.
        teacher_dir: a finished teacher run to use (default: train one in
            `<workdir>/teacher`).
        students: a subset of `capacity.students` (default: all).
        verbose: print a line per finished training and the final table.

    Returns:
        The report written to `capacity.json`.
    """
    started = time.time()
    say = print if verbose else (lambda *a, **k: None)
    c = config.capacity
    all_students = c.students.to_dict() if hasattr(c.students, "to_dict") else dict(c.students)
    if not all_students:
        raise ConfigError("capacity.students is empty: list the student sizes to compare")
    names = list(students or all_students)
    unknown = [s for s in names if s not in all_students]
    if unknown:
        raise ConfigError(
            f"unknown capacity student(s) {', '.join(unknown)}; valid: {', '.join(all_students)}"
        )
    check_trains_alone(config, "capacity also trains every student size alone")
    rows = settings(config)
    first = c.reference
    data = load_data(config)  # (also fails early on a dataset that is not there)
    distilled = config_lib.from_dict(config_lib.capacity_distilled(config_lib.to_dict(config)))
    if c.cache_views:
        load_data(distilled)  # (the transfer set's data too, before anything is written)
    names.sort(key=lambda n: _size(all_students[n], data.info))  # small to large
    claim(workdir, "capacity", config, reads={"--teacher": teacher_dir})
    cached = sorted(c.teachers) if c.cache_views else []
    stages = Stages(
        (teacher_dir is None) + len(cached) + len(c.assistants) + len(names) * len(rows), say
    )

    if teacher_dir is None:
        teacher_dir = os.path.join(workdir, "teacher")
        fitted = fit(_teacher_config(config), teacher_dir, role="teacher", desc="teacher")
        stages.done("teacher", fitted.test)
    teachers = {
        label: load_teacher(teacher_dir, which, what=f"teacher {label!r} ({which})")
        for label, which in c.teachers.items()
    }
    main = teachers[first]
    sources = {f"kd:{label}": t for label, t in teachers.items()}
    caches = {}
    for label in cached:
        caches[f"kd:{label}"] = os.path.join(workdir, CACHES_DIR, label)
        ensure_cache(distilled, teachers[label], caches[f"kd:{label}"], views=c.cache_views)
        stages.done(f"teacher cache {label} ({c.cache_views} view(s) per example)", None)
    for label, model in c.assistants.items():
        cfg = student_config(distilled, model, 1)
        root = os.path.join(workdir, "assistants", label)
        sources[f"ta:{label}"] = through_assistants(
            cfg,
            root,
            main,
            assistants=[model],
            done=lambda _, test, label=label: stages.done(f"assistant {label}", test),
        )

    earlier_report = _read(os.path.join(workdir, "capacity.json"))
    earlier = earlier_report.get("results", {})
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        for setting in rows:
            cfg = student_config(
                config if setting == ALONE else distilled, all_students[name], c.seeds
            )
            if setting in caches:
                cfg = config_lib.from_dict(
                    config_lib.to_dict(cfg), [f"distill.cache={caches[setting]!r}"]
                )
            t0 = time.time()
            result = fit(
                cfg,
                os.path.join(workdir, name, setting.replace(":", "_")),
                role="student",
                teacher=sources.get(setting),
                compare_to=main,
                desc=f"{name} {setting}",
            )
            record = _record(result)
            record["seconds"] = time.time() - t0
            before = earlier.get(name, {}).get(setting, {}).get("seconds")
            if before is not None and result.start_step >= result.steps:
                record["seconds"] = before  # nothing trained now: the first run's time stands
            results.setdefault(name, {})[setting] = record
            stages.done(f"{name} {setting}", result.test)

    _one_latency_per_size(results)

    def held(teacher, label: str) -> dict[str, Any]:
        """A teacher's (or assistant's) size and test accuracy at the checkpoint used."""
        evaluator = Evaluator(teacher.model, batch_size=config.data.eval_batch_size)
        return {
            "label": label,
            "step": teacher.identity["step"],
            "checkpoint": teacher.identity.get("checkpoint", "latest"),
            "params": int(count_params(teacher.variables["params"])),
            "accuracy": float(evaluator(teacher.variables, data.test)["accuracy"]),
            "workdir": teacher.identity["workdir"],
        }

    order = [first, *sorted(t for t in teachers if t != first)]
    reference = {label: held(teachers[label], label) for label in order}
    assistants = {label: held(sources[f"ta:{label}"], label) for label in c.assistants}
    answers = analyse(
        results, reference[first]["accuracy"], within=c.within, distilled=f"kd:{first}"
    )
    meta = run_meta(config.data.name, started, test_examples=len(data.test))
    # A command that only re-reads finished runs keeps the first command's wall time.
    earlier_wall = earlier_report.get("meta", {}).get("wall_time_s") or 0.0
    meta["wall_time_s"] = max(meta["wall_time_s"], earlier_wall)
    report = {
        "reference": first,
        "students": {n: all_students[n] for n in names},
        "settings": rows,
        "results": results,
        "teachers": reference,
        "assistants": assistants,
        "answers": answers,
        "seeds": c.seeds,
        "within": c.within,
        "cache_views": c.cache_views,
        "distilled": config_lib.to_dict(config)["capacity"]["distilled"],
        "meta": meta,
    }
    table = markdown(report) + "\n" + describe_meta(meta) + "\n"
    write_outputs(workdir, "capacity", report, table, plot=lambda p: plot(report, p))
    say("\n" + table)
    return report


def _one_latency_per_size(results: dict[str, dict[str, Any]]) -> None:
    """Gives every setting of a size the same latency: the fastest of its measurements.

    Every setting of a size trains the same architecture, so its inference cost is one
    number; each training measures it once, and timing noise on a shared machine only
    ever slows a measurement down. Each run's own figure stays in `*_run`."""
    for by_setting in results.values():
        for key in ("latency_ms_per_example", "latency_ms_batch1"):
            fastest = min(r[key] for r in by_setting.values())
            for r in by_setting.values():
                r[f"{key}_run"], r[key] = r[key], fastest


def _size(model_cfg: dict[str, Any], info) -> int:
    """A model's parameter count, from its shapes alone (nothing is computed)."""
    import jax
    import jax.numpy as jnp

    from distill_jax.models import create_model

    model = create_model(model_cfg, info.num_classes)
    x = jnp.zeros((1, *info.image_shape), jnp.int32 if info.input_kind == "tokens" else jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    return count_params(shapes["params"])


def _read(path: str) -> dict[str, Any]:
    """A JSON file an earlier command wrote, or {} (absent or unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- analysis


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which `(cost, accuracy)` points no other point beats: none is as cheap or cheaper
    and as accurate or more, and strictly better in one of the two."""
    return [
        not any(
            (c2 <= c and a2 >= a) and (c2 < c or a2 > a)
            for j, (c2, a2) in enumerate(points)
            if j != i
        )
        for i, (c, a) in enumerate(points)
    ]


def gain(distilled: dict[str, Any], alone: dict[str, Any]) -> dict[str, Any]:
    """Distilled minus alone mean accuracy, its standard error (from the seeds' standard
    deviations), and whether it helps (a gain over twice its standard error) or hurts (a
    loss over twice its standard error)."""
    diff = distilled["mean"] - alone["mean"]
    se = math.sqrt(
        distilled["std"] ** 2 / len(distilled["accuracy"])
        + alone["std"] ** 2 / len(alone["accuracy"])
    )
    return {"gain": diff, "se": se, "helps": bool(diff > 2 * se), "hurts": bool(-diff > 2 * se)}


def analyse(
    results: dict[str, dict[str, dict[str, Any]]],
    teacher_accuracy: float,
    *,
    within: float,
    distilled: str,
) -> dict[str, Any]:
    """The answers read from the measurements.

    Args:
        results: `{student: {setting: record}}` (records as `_record` writes them).
        teacher_accuracy: the reference teacher's test accuracy (0-1).
        within: points of accuracy (e.g. 1.0).
        distilled: the setting compared with `alone` for "where distillation stops
            helping" (the first teacher's `kd:` row).

    Returns:
        `pareto` (per cost, `[student, setting]` pairs on the front), `gains` (per
        setting, per student, `gain`), `smallest_within` (per setting and `any`: the
        smallest student whose mean is within `within` points of the teacher, or None),
        `stops_helping` / `helps_up_to` (students, or None).
    """
    by_size = sorted(results, key=lambda n: results[n][ALONE]["params"])
    cells = [(n, s) for n in by_size for s in results[n]]
    pareto = {}
    for cost in ("params", "latency_ms_per_example"):
        flags = pareto_front([(results[n][s][cost], results[n][s]["mean"]) for n, s in cells])
        pareto[cost] = [list(cell) for cell, f in zip(cells, flags, strict=True) if f]
    settings_ = list(results[by_size[0]])
    gains = {
        s: {n: gain(results[n][s], results[n][ALONE]) for n in by_size}
        for s in settings_
        if s != ALONE
    }
    threshold = teacher_accuracy - within / 100

    def smallest(cells_) -> list[str] | None:
        ok = [
            (results[n][s]["params"], -results[n][s]["mean"], n, s)
            for n, s in cells_
            if results[n][s]["mean"] >= threshold
        ]
        return list(min(ok)[2:]) if ok else None

    within_of = {s: smallest([(n, s) for n in by_size]) for s in settings_}
    within_of["any"] = smallest(cells)
    helps = [gains[distilled][n]["helps"] for n in by_size] if distilled in gains else []
    stop = next((i for i in range(len(helps)) if not any(helps[i:])), None)
    return {
        "pareto": pareto,
        "gains": gains,
        "smallest_within": within_of,
        "distilled": distilled,
        "stops_helping": None if stop is None else by_size[stop],
        "helps_up_to": None
        if not helps or stop == 0
        else by_size[(len(helps) if stop is None else stop) - 1],
    }


# ----------------------------------------------------------------------------- report


def _cell(record: dict[str, Any], star: bool, gained: dict[str, Any] | None) -> str:
    text = f"{100 * record['mean']:.2f} ± {100 * record['std']:.2f}"
    if gained is not None:
        verdict = "" if gained["helps"] else ", worse" if gained["hurts"] else ", n.s."
        text += f" ({100 * gained['gain']:+.2f}{verdict})"
    return text + (" ★" if star else "")


def answer_lines(report: dict[str, Any]) -> list[str]:
    """The answers as sentences (README and the Markdown report)."""
    a, results = report["answers"], report["results"]
    within = report["within"]
    first = report["teachers"][report["reference"]]
    params = lambda n: f"{results[n][ALONE]['params']:,}"  # noqa: E731

    def found(cell) -> str:
        if cell is None:
            return "none"
        n, s = cell
        return f"`{n}` ({params(n)} parameters, {100 * results[n][s]['mean']:.2f} %)"

    per_setting = "; ".join(
        f"`{s}` {found(cell)}" for s, cell in a["smallest_within"].items() if s != "any"
    )
    lines = [
        f"- Smallest student at most {within:g} point(s) below the teacher "
        f"({100 * first['accuracy']:.2f} %): {found(a['smallest_within']['any'])}"
        + (
            f", as `{a['smallest_within']['any'][1]}`"
            if a["smallest_within"]["any"] is not None
            else ""
        )
        + f". By setting: {per_setting}."
    ]
    d = a["distilled"]
    gains = a["gains"].get(d, {})
    helped = [n for n in results if gains.get(n, {}).get("helps")]

    def gained(n: str) -> str:
        return f"`{n}` ({100 * gains[n]['gain']:+.2f} ± {100 * gains[n]['se']:.2f})"

    if gains and len(helped) == len(results):
        lines.append(f"- `{d}` beats training alone at every size measured.")
    elif not helped:
        lines.append(f"- `{d}` does not beat training alone (by > 2 standard errors) at any size.")
    else:
        lines.append(
            f"- `{d}` beats training alone (by > 2 standard errors) at "
            f"{', '.join(f'`{n}`' for n in helped)}; not at "
            f"{', '.join(gained(n) for n in results if n not in helped)} (gain ± standard "
            "error, points)."
        )
    if a["stops_helping"] is not None and a["helps_up_to"] is not None:
        n = a["stops_helping"]
        lines.append(
            f"- Distillation stops helping at `{n}` ({params(n)} parameters): it helps up to "
            f"`{a['helps_up_to']}` ({params(a['helps_up_to'])}) and at no larger size."
        )
    elif a["stops_helping"] is None and helped:
        lines.append(
            "- Distillation does not stop helping within the sizes measured: it helps at "
            f"the largest, `{next(reversed(results))}`."
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The table (accuracy %, mean ± std over the seeds; the gain over `alone` in
    brackets, `n.s.` when it is under two standard errors; ★ on the Pareto front of
    accuracy against parameters), the teachers, and the answers."""
    results, rows = report["results"], report["settings"]
    front = {tuple(c) for c in report["answers"]["pareto"]["params"]}
    gains = report["answers"]["gains"]
    lines = [
        f"| student | params | ms/example | {' | '.join(rows)} |",
        "|---|---:|---:|" + "---:|" * len(rows),
    ]
    for n, by_setting in results.items():
        alone = by_setting[ALONE]
        cells = [
            _cell(by_setting[s], (n, s) in front, None if s == ALONE else gains[s][n]) for s in rows
        ]
        lines.append(
            f"| `{n}` | {alone['params']:,} | {alone['latency_ms_per_example']:.4f} "
            f"| {' | '.join(cells)} |"
        )
    lines += [
        "",
        f"Test accuracy %, mean ± std over {report['seeds']} seed(s); "
        "(gain over alone; n.s.: under 2 standard errors; worse: a loss over 2); ★: Pareto "
        "front "
        "(accuracy vs parameters).",
        "",
    ]
    if report.get("cache_views"):
        lines.append(
            f"The distilled rows read each teacher's cached outputs ({report['cache_views']} "
            "view(s) per example)."
        )
    if report.get("distilled"):
        lines.append(
            "The distilled rows (not `alone`) also set: "
            + "; ".join(f"`{k} = {v!r}`" for k, v in _flat(report["distilled"]).items())
            + "."
        )
    if report.get("cache_views") or report.get("distilled"):
        lines.append("")
    for kind in ("teachers", "assistants"):
        for label, t in report[kind].items():
            lines.append(
                f"- {kind[:-1]} `{label}` ({t['checkpoint']}, step {t['step']}): "
                f"{t['params']:,} parameters, test accuracy {100 * t['accuracy']:.2f} %"
            )
    return "\n".join(lines + [""] + answer_lines(report)) + "\n"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` as `{"a.b": 1}`."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot(report: dict[str, Any], path: str) -> None:
    """Accuracy against parameters and against latency, one line per setting (error bars:
    std over seeds), the teachers as horizontal lines, the Pareto front circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    names = sorted(results, key=lambda n: results[n][ALONE]["params"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    costs = (("params", "parameters"), ("latency_ms_per_example", "ms per example (measured)"))
    for ax, (cost, label) in zip(axes, costs, strict=True):
        for setting in report["settings"]:
            x = [results[n][setting][cost] for n in names]
            y = [100 * results[n][setting]["mean"] for n in names]
            e = [100 * results[n][setting]["std"] for n in names]
            ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, label=setting)
        front = report["answers"]["pareto"][cost]
        fx = [results[n][s][cost] for n, s in front]
        fy = [100 * results[n][s]["mean"] for n, s in front]
        order = np.argsort(fx)
        ax.plot(np.asarray(fx)[order], np.asarray(fy)[order], "k:", lw=1)
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="k", label="Pareto front")
        for i, (t_label, t) in enumerate(report["teachers"].items()):
            ax.axhline(
                100 * t["accuracy"],
                color=f"C{7 + i % 3}",
                ls="--",
                lw=1,
                label=f"teacher: {t_label} ({t['checkpoint']}), {100 * t['accuracy']:.1f} %",
            )
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy %")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Accuracy vs size")
    axes[1].set_title("Accuracy vs speed")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "ALONE",
    "analyse",
    "answer_lines",
    "capacity",
    "gain",
    "markdown",
    "pareto_front",
    "plot",
]
