"""Runs the text-classification experiment on one dataset and writes its measured table.

Commands (resumable: finished runs and caches are reused; a command with other
`--students` in the same workdir adds its rows to the table there):

    python experiments/text_cls/run.py --dataset mr --workdir runs/text_cls/mr
    python experiments/text_cls/run.py --dataset mr --workdir runs/text_cls/mr2 \
        --students textcnn,bilstm   # some students only

1. fine-tunes the teacher (`teacher.py`), or loads `--teacher DIR`;
2. caches the teacher's logits once per transfer set (`distill-jax cache-teacher`): the
   labelled sentences (`kd`), `common.VIEWS` views of each (`kd_aug`), and views of the
   labelled plus the unlabelled text (`kd_aug_unlabelled`);
3. trains every student (TextCNN, BiLSTM, `bert`: the 2-layer BERT and TinyBERT,
   `textcnn_init`: the TextCNN started from the teacher's embeddings) in
   each of its settings (`common.SETTINGS_OF`) as `--seeds` vmapped students; a
   cached-KD setting trains each seed at every alpha x T of `common.GRID` in the same
   run, and the cell with the best mean *validation* accuracy is reported;
   TinyBERT's two stages are two runs, each stage-2 student starting from its seed's
   stage-1 model;
4. writes `results.json`, `results.md` (test accuracy mean +- std over the seeds, the
   gain over the same student alone, agreement with the teacher, parameters, CPU latency)
   and `results.png` into the workdir.

Every number in experiments/text_cls/README.md comes from `results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Any

import jax
import numpy as np

from distill_jax import config as config_lib
from distill_jax.config import import_file
from distill_jax.errors import ConfigError, DistillError
from distill_jax.report import atomic_write, atomic_write_with
from distill_jax.train.loop import Variant, fit, load_teacher
from distill_jax.train.teacher_cache import ensure_cache as write_or_reuse

HERE = os.path.dirname(os.path.abspath(__file__))
common = import_file(os.path.join(HERE, "common.py"))

CACHES = {
    "kd": "kd",
    "kd_aug": "kd_aug",
    "kd_aug_unlabelled": "kd_aug_unlabelled",
    "tinybert_stage2": "kd_aug",
}
"""Setting -> the teacher cache (transfer set) it distils from."""
ONLINE = ("tinybert", "tinybert_stage1")
"""Settings distilled from the online teacher (hidden states and attention)."""
LABELS = {
    "alone": "alone",
    "alone_aug": "alone + augmentation (hard labels)",
    "kd": "KD, labelled sentences",
    "kd_aug": f"KD + augmentation ({common.VIEWS} views)",
    "kd_aug_unlabelled": "KD + augmentation + unlabelled text",
    "tinybert": "TinyBERT, one stage (KD + hidden + attention; augmentation)",
    "tinybert_stage2": "TinyBERT, two stages (hidden + attention, then KD; augmentation)",
}
STUDENT_NAMES = {
    "textcnn": "TextCNN",
    "bilstm": "BiLSTM",
    "bert": "BERT-2 (width 192)",
    "textcnn_init": "TextCNN, teacher's embeddings",
}
PUBLISHED = {
    "mr": [
        ("Kim (2014) CNN-rand, 10-fold CV on the 10,662 sentences", 76.1),
        ("Kim (2014) CNN-non-static (word2vec), 10-fold CV", 81.5),
    ],
    "trec6": [("Kim (2014) CNN-non-static, official 500-question test set", 93.6)],
    "bbc_news": [],
}


def make_config(setting: str, student: str, dataset: str, overrides=(), seeds: int = 3):
    """The validated config of one setting (`teacher` or one of `common.SETTINGS`)."""
    if setting == "teacher":
        cfg = common.base_config(dataset)
    else:
        cfg = common.config(setting, student, dataset)
        cfg["vmap"] = {"students": seeds}  # vmapped (by = "map" was 15 % slower on 2 cores)
        if setting in CACHES:
            cfg["vmap"].update(common.GRID[student])
    return config_lib.from_dict(cfg, overrides)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def select(students: list[dict[str, Any]], val_acc: list[float]) -> dict[str, Any]:
    """The alpha x T cell with the best mean validation accuracy over its seeds, and its
    students' test results."""
    cells: dict[tuple, list[int]] = {}
    for i, s in enumerate(students):
        cells.setdefault((s["alpha"], s["temperature"]), []).append(i)
    scores = {c: float(np.mean([val_acc[i] for i in idx])) for c, idx in cells.items()}
    best = max(scores, key=lambda c: (scores[c], -c[0], -c[1]))  # ties: smaller alpha, T
    chosen = [students[i] for i in cells[best]]
    return {
        "alpha": best[0],
        "temperature": best[1],
        "val_accuracy": scores[best],
        "grid_val_accuracy": {f"alpha={a:g},T={t:g}": v for (a, t), v in scores.items()},
        "accuracy": [s["accuracy"] for s in chosen],
        "agreement": [s.get("agreement") for s in chosen],
        "seeds": [s["seed"] for s in chosen],
        "params": chosen[0]["params"],
        "latency_ms_batch1": chosen[0]["latency_ms_batch1"],
        "latency_ms_per_example": chosen[0]["latency_ms_per_example"],
    }


def ensure_cache(kind: str, config, teacher, workdir: str, say) -> tuple[str, float]:
    """The teacher cache of one transfer set, written unless it is already complete."""
    out = os.path.join(workdir, "caches", kind)
    views = 1 if kind == "kd" else common.VIEWS
    seconds = write_or_reuse(config, teacher, out, views=views)
    if seconds:
        say(f"cache {kind}: {views} view(s) per example in {seconds:.0f} s")
    return out, seconds


def _earlier(path: str, dataset: str, seeds: int) -> dict[str, Any]:
    """The results an earlier command wrote into this workdir (other students' rows are
    kept: one table per dataset), or an empty table."""
    empty = {"dataset": dataset, "seeds": seeds, "runs": {}, "seconds": {}}
    if not os.path.isfile(path):
        return empty
    with open(path) as f:
        earlier = json.load(f)
    if (earlier.get("dataset"), earlier.get("seeds")) != (dataset, seeds):
        raise ConfigError(
            f"{path} holds {earlier.get('dataset')} with {earlier.get('seeds')} seeds, not "
            f"{dataset} with {seeds}: use another --workdir"
        )
    return earlier


def dataset_settings(dataset: str, settings) -> tuple[str, ...]:
    """The requested settings this dataset has data for: no `kd_aug_unlabelled` where
    `common.DATASETS` names no unlabelled text (it would repeat `kd_aug`)."""
    if common.DATASETS[dataset].get("unlabelled"):
        return tuple(settings)
    return tuple(s for s in settings if s != "kd_aug_unlabelled")


def _rows(student: str, settings) -> list[str]:
    """The requested settings that are rows of this student's table."""
    return [s for s in settings if s in common.SETTINGS_OF[student]]


def _stage1(dataset: str, workdir: str, teacher, overrides, seeds: int) -> Variant:
    """Trains (or reuses) TinyBERT's first stage and returns the second stage's start:
    each seed's stage-1 student."""
    cfg = make_config("tinybert_stage1", "bert", dataset, overrides, seeds)
    stage1 = os.path.join(workdir, "bert", "tinybert_stage1")
    fit(cfg, stage1, role="student", teacher=teacher, desc="bert tinybert_stage1")
    starts = tuple(load_teacher(stage1, what="TinyBERT stage 1", member=i) for i in range(seeds))
    return Variant(spec={"init_from": [t.identity for t in starts]}, init_from=starts)


def run(
    dataset: str,
    workdir: str,
    *,
    students=tuple(common.SETTINGS_OF),
    settings=tuple(LABELS),
    seeds: int = 3,
    overrides=(),
    teacher_dir: str | None = None,
    say=print,
) -> dict[str, Any]:
    """Trains everything and returns (and writes) the results."""
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    settings = dataset_settings(dataset, settings)
    results = _earlier(os.path.join(workdir, "results.json"), dataset, seeds)
    timed = results["seconds"]  # a step done by an earlier command keeps its time
    teacher_cfg = make_config("teacher", "", dataset, overrides)
    if teacher_dir is None:
        teacher_dir = os.path.join(workdir, "teacher")
        t0 = time.time()
        fitted = fit(teacher_cfg, teacher_dir, role="teacher", desc="teacher")
        results["teacher"] = {k: fitted.test[k] for k in ("accuracy", "params")}
        results["teacher"].update(
            {k: fitted.test[k] for k in ("latency_ms_batch1", "latency_ms_per_example")}
        )
        timed["teacher"] = max(timed.get("teacher", 0.0), time.time() - t0)
        say(f"teacher: test accuracy {fitted.test['accuracy']:.4f}")
    teacher = load_teacher(teacher_dir, teacher_cfg.teacher.checkpoint)
    caches = {}
    for student in students:
        for setting in _rows(student, settings):
            if setting in CACHES and CACHES[setting] not in caches:
                kind = CACHES[setting]
                cfg = make_config(setting, student, dataset, overrides, seeds)
                caches[kind], seconds = ensure_cache(kind, cfg, teacher, workdir, say)
                timed[f"cache_{kind}"] = max(timed.get(f"cache_{kind}", 0.0), seconds)
    rows = [(student, setting) for student in students for setting in _rows(student, settings)]
    for i, (student, setting) in enumerate(rows, start=1):
        extra = list(overrides)
        distilled = setting in CACHES or setting in ONLINE
        if setting in CACHES:
            extra.append(f"distill.cache={caches[CACHES[setting]]!r}")
        cfg = make_config(setting, student, dataset, extra, seeds)
        t0 = time.time()
        variant = None
        if setting == "tinybert_stage2":
            variant = _stage1(dataset, workdir, teacher, overrides, seeds)
        result = fit(
            cfg,
            os.path.join(workdir, student, setting),
            role="student",
            teacher=teacher if distilled else None,
            compare_to=teacher,
            variant=variant,
            desc=f"{student} {setting}",
        )
        val = result.history[-1]["accuracy_students"]
        students_out = result.students
        if not distilled:
            students_out = [{**s, "alpha": 1.0, "temperature": 0.0} for s in students_out]
        entry = select(students_out, val)
        if not distilled:
            entry["alpha"] = entry["temperature"] = None
            entry.pop("grid_val_accuracy")
        entry["seconds"] = time.time() - t0
        before = results["runs"].get(student, {}).get(setting, {}).get("seconds")
        if before is not None and result.start_step >= result.steps:
            entry["seconds"] = before  # nothing trained now: the first run's time stands
        results["runs"].setdefault(student, {})[setting] = entry
        acc, std = _mean_std([100 * a for a in entry["accuracy"]])
        say(
            f"[{i}/{len(rows)}] {student} {setting}: test accuracy {acc:.2f} ± {std:.2f} "
            f"({entry['seconds'] / 60:.1f} min)"
        )
        # Written after every row: a command stopped half-way keeps the rows it
        # finished, with their times, when the same command resumes.
        atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    timed[f"total ({', '.join(students)})"] = time.time() - start
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    table = markdown(results)
    atomic_write(os.path.join(workdir, "results.md"), table)
    atomic_write_with(os.path.join(workdir, "results.png"), lambda p: plot(results, p))
    say("\n" + table)
    return results


def markdown(results: dict[str, Any]) -> str:
    """The measured table (accuracies in %, latency in ms per sentence)."""
    seeds, dataset = results["seeds"], results["dataset"]
    lines = [
        f"| model | setting | test accuracy % (mean ± std, {seeds} seeds) | gain over alone "
        "| agreement with teacher % | alpha, T (validation) | parameters | ms/sentence "
        "(batch 1) | ms/sentence (batch 64) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    t = results.get("teacher")
    if t:
        lines.append(
            f"| teacher (all-MiniLM-L6-v2, fine-tuned) | – | {100 * t['accuracy']:.1f} | – | – "
            f"| – | {t['params'] / 1e6:.2f}M | {t['latency_ms_batch1']:.2f} "
            f"| {t['latency_ms_per_example']:.3f} |"
        )
    gains = []
    for student, runs in results["runs"].items():
        alone = runs.get("alone")
        for setting, e in runs.items():
            acc, std = _mean_std([100 * a for a in e["accuracy"]])
            gain = "–"
            if alone is not None and setting != "alone":
                a_acc, a_std = _mean_std([100 * a for a in alone["accuracy"]])
                spread = max(std, a_std)
                sds = (acc - a_acc) / spread if spread > 0 else float("inf")
                gain = f"{acc - a_acc:+.1f} ({sds:+.1f} sd)"
                gains.append((student, setting, acc - a_acc, sds))
            agree = [100 * a for a in e["agreement"] if a is not None]
            agree_text = "{:.1f} ± {:.1f}".format(*_mean_std(agree)) if agree else "–"
            hp = "–" if e["alpha"] is None else f"{e['alpha']:g}, {e['temperature']:g}"
            lines.append(
                f"| {STUDENT_NAMES.get(student, student)} | {LABELS[setting]} "
                f"| {acc:.1f} ± {std:.1f} | {gain} | {agree_text} | {hp} "
                f"| {e['params'] / 1e6:.2f}M | {e['latency_ms_batch1']:.2f} "
                f"| {e['latency_ms_per_example']:.3f} |"
            )
    published = PUBLISHED.get(dataset) or []
    if published:
        lines += ["", "Published anchors (other protocols, not our split):", ""]
        lines += [f"- {what}: {value}" for what, value in published]
    if gains:
        best = max(gains, key=lambda g: g[3])
        lines += [
            "",
            f"Largest gain over the same student alone: {STUDENT_NAMES.get(best[0], best[0])} "
            f"{LABELS[best[1]]}, {best[2]:+.1f} points = {best[3]:+.1f} standard deviations "
            "(the larger of the two settings' std over seeds).",
        ]
    seconds = results["seconds"]
    totals = "; ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if k.startswith("total"))
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if not k.startswith("total"))
    lines += ["", f"Wall time (min), one command per set of students: {totals}; of which {parts}."]
    for student, runs in results["runs"].items():
        lines.append(
            f"{STUDENT_NAMES.get(student, student)} runs: "
            + ", ".join(f"{s} {e['seconds'] / 60:.1f}" for s, e in runs.items())
            + " min."
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Test accuracy (mean ± std) per setting and student, the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(results["runs"])
    settings = [s for s in LABELS if any(s in results["runs"][m] for m in students)]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(students), 1)
    for j, student in enumerate(students):
        runs = results["runs"][student]
        shift = (j - (len(students) - 1) / 2) * width
        xs = [i + shift for i, s in enumerate(settings) if s in runs]
        stats = [_mean_std([100 * a for a in runs[s]["accuracy"]]) for s in settings if s in runs]
        ax.bar(
            xs,
            [m for m, _ in stats],
            width,
            yerr=[s for _, s in stats],
            capsize=3,
            label=STUDENT_NAMES.get(student, student),
        )
    if results.get("teacher"):
        ax.axhline(100 * results["teacher"]["accuracy"], color="k", ls="--", label="teacher")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([textwrap.fill(LABELS[s], 22) for s in settings], fontsize=7)
    ax.set_ylabel("test accuracy %")
    lows = [
        100 * min(results["runs"][m][s]["accuracy"]) for m in students for s in results["runs"][m]
    ]
    ax.set_ylim(max(0.0, min(lows) - 5), 100)
    ax.set_title(f"{results['dataset']}: students alone and distilled ({results['seeds']} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mr", choices=sorted(common.DATASETS))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--students",
        default=",".join(common.SETTINGS_OF),
        help="comma-separated: textcnn, bilstm, bert (BERT-2, TinyBERT), textcnn_init",
    )
    parser.add_argument(
        "--settings", default=",".join(LABELS), help="comma-separated rows (of each student's)"
    )
    parser.add_argument("--teacher", help="use this finished teacher run instead of training one")
    parser.add_argument("--data_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (all runs)")
    args = parser.parse_args(argv)
    students, settings = args.students.split(","), args.settings.split(",")
    for given, known, what in (
        (students, common.SETTINGS_OF, "student"),
        (settings, LABELS, "setting"),
    ):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r}; one of {', '.join(known)}")
    overrides = list(args.overrides)
    # Rows of one student share their programs (one per length bucket): compiled once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    try:
        run(
            args.dataset,
            args.workdir,
            students=tuple(students),
            settings=tuple(settings),
            seeds=args.seeds,
            overrides=overrides,
            teacher_dir=args.teacher,
        )
    except DistillError as e:  # bad input: one line, exit 2 (as the distill-jax CLI)
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
