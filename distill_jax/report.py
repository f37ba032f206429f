"""Reports of the orchestrators (`run`, `sweep`, `compress`) and the one way they write files.

Every orchestrator's report holds a `meta` block from `run_meta` (dataset, test examples,
wall time, `device_description()`, jax version, plus its own keys) and is written by
`write_outputs`: `<name>.json`, `<name>.md` and optionally a figure, each through a
temporary file and a rename (`atomic_write`, `atomic_write_with`), so a crash never
leaves half a file and a writer that raises leaves the previous outputs as they were.

The comparison report of `distill-jax run` (report.json, report.md, learning_curves.png):
each entry (`teacher`, `student_scratch`, `student_scratch_aug`, `student_kd`) holds the
mean over seeds of every test metric (`test_accuracy`, `test_nll`, `ece`, `agreement`,
...), its standard deviation under `<metric>_std`, and the per-seed values under `seeds`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# How each entry is described in the Markdown table.
DESCRIPTIONS = {
    "teacher": "teacher",
    "student_scratch": "student alone",
    "student_scratch_aug": "student alone + teacher's jitter",
    "student_kd": "student distilled",
}
_RENAME = {"accuracy": "test_accuracy", "nll": "test_nll"}


def summarize(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of each metric."""
    out: dict[str, Any] = {"n_seeds": len(per_seed), "seeds": list(per_seed)}
    keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], int | float)]
    for k in keys:
        values = np.asarray([float(r[k]) for r in per_seed], np.float64)
        same_int = isinstance(per_seed[0][k], int) and np.all(values == values[0])
        out[k] = int(per_seed[0][k]) if same_int else float(values.mean())
        out[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def test_record(result_test: dict[str, Any], seed: int, workdir: str) -> dict[str, Any]:
    """One seed's record with report names (`test_accuracy`, `test_nll`, `test_errors`)."""
    rec = {_RENAME.get(k, k): v for k, v in result_test.items()}
    rec["test_errors"] = int(round((1.0 - rec["test_accuracy"]) * rec["count"]))
    rec["seed"] = seed
    rec["workdir"] = workdir
    return rec


def students_table(students: Sequence[dict[str, Any]]) -> str:
    """Markdown tables of a vmapped run: one row per student, then mean ± std over the
    seeds of each hyperparameter setting (alpha, temperature, learning rate)."""
    rows = [
        "| seed | alpha | T | learning rate | test acc % | NLL | ECE % | agreement % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pct = lambda r, k: f"{100 * r[k]:.2f}" if k in r else "-"  # noqa: E731
    for r in students:
        rows.append(
            f"| {r['seed']} | {r['alpha']:g} | {r['temperature']:g} | {r['learning_rate']:g} "
            f"| {pct(r, 'accuracy')} | {r['nll']:.4f} | {pct(r, 'ece')} | {pct(r, 'agreement')} |"
        )
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in students:
        groups.setdefault((r["alpha"], r["temperature"], r["learning_rate"]), []).append(r)
    rows += [
        "",
        "| alpha | T | learning rate | students | test acc % (mean ± std) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for (alpha, t, lr), group in groups.items():
        acc = 100 * np.asarray([g["accuracy"] for g in group])
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        rows.append(f"| {alpha:g} | {t:g} | {lr:g} | {len(group)} | {acc.mean():.2f} ± {std:.2f} |")
    return "\n".join(rows) + "\n"


def _fmt(entry: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    if (
        key not in entry
        or entry[key] is None
        or (isinstance(entry[key], float) and math.isnan(entry[key]))
    ):
        return "-"
    mean = entry[key] * scale
    if isinstance(entry[key], int):
        return str(entry[key])
    if entry.get("n_seeds", 1) > 1:
        return f"{mean:.{digits}f} ± {entry[f'{key}_std'] * scale:.{digits}f}"
    return f"{mean:.{digits}f}"


class Stages:
    """Progress of an orchestrator's trainings (`sweep`, `compress`): one line per
    finished training, `[i/n] label: test accuracy 0.9731 (12 s)`, the time since the
    previous line (a resumed, finished training takes a second)."""

    def __init__(self, total: int, say: Callable[[str], Any]):
        self.total, self.say, self.done_count, self.clock = total, say, 0, time.time()

    def done(self, label: str, test: dict[str, Any] | None, extra: str = "") -> None:
        """One finished stage; `test` None for a stage that evaluates nothing (a cache)."""
        self.done_count += 1
        now = time.time()
        what = "done" if test is None else f"test accuracy {test['accuracy']:.4f}"
        self.say(
            f"[{self.done_count}/{self.total}] {label}: {what}{extra} ({now - self.clock:.0f} s)"
        )
        self.clock = now


def markdown_table(report: dict[str, Any]) -> str:
    """The report's entries as a Markdown table (accuracy and agreement in %); for token
    classification (entries with `entity_f1`) the entity F1 first, accuracy, errors,
    agreement and KL then per tagged token."""
    tagging = any("entity_f1" in e for e in report["results"].values())
    f1_head, f1_rule = ("| entity F1 % ", "---:|") if tagging else ("", "")
    unit = " (tokens)" if tagging else ""
    head = (
        f"| model | params {f1_head}| test acc %{unit} | test errors{unit} | NLL | ECE % "
        "| agreement % | KL(t‖s) | ms/example | seeds |\n"
        f"|---|---:|{f1_rule}---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for name, entry in report["results"].items():
        f1 = f"| {_fmt(entry, 'entity_f1', 100)} " if tagging else ""
        rows.append(
            f"| {DESCRIPTIONS.get(name, name)} (`{name}`) | {entry['params'] / 1e6:.2f}M {f1}"
            f"| {_fmt(entry, 'test_accuracy', 100)} | {_fmt(entry, 'test_errors', 1, 1)} "
            f"| {_fmt(entry, 'test_nll', 1, 3)} | {_fmt(entry, 'ece', 100)} "
            f"| {_fmt(entry, 'agreement', 100)} | {_fmt(entry, 'kl', 1, 3)} "
            f"| {_fmt(entry, 'latency_ms_per_example', 1, 4)} | {entry['n_seeds']} |"
        )
    return head + "\n".join(rows) + "\n"


def device_description() -> str:
    """The devices a report was produced on: `"<count> x <device kind> (<host machine>)"`,
    e.g. `"8 x cpu (x86_64)"` or `"1 x NVIDIA H100 80GB HBM3 (x86_64)"`."""
    import jax

    return f"{jax.device_count()} x {jax.devices()[0].device_kind} ({platform.machine()})"


def run_meta(dataset: str, started: float, *, test_examples: int, **extra: Any) -> dict[str, Any]:
    """The `meta` block of every orchestrator's report.

    Args:
        dataset: the dataset's name.
        started: `time.time()` when the orchestrator started (gives `wall_time_s`).
        test_examples: the size of the test split the report evaluates on.
        **extra: the orchestrator's own entries (teacher identity, its config section, ...),
            after the common ones.

    Returns:
        `{"dataset", "test_examples", "wall_time_s", "device", "jax_version", **extra}`.
    """
    import jax

    return {
        "dataset": dataset,
        "test_examples": test_examples,
        "wall_time_s": time.time() - started,
        "device": device_description(),
        "jax_version": jax.__version__,
        **extra,
    }


def describe_meta(meta: dict[str, Any]) -> str:
    """One line under a table: dataset, test examples, device, jax version, wall time."""
    return (
        f"{meta['dataset']}, {meta['test_examples']} test examples; {meta['device']}, "
        f"jax {meta['jax_version']}; wall time {meta['wall_time_s'] / 60:.1f} min."
    )


def write_outputs(
    workdir: str,
    name: str,
    report: dict[str, Any],
    markdown: str,
    *,
    plot: Callable[[str], None] | None = None,
    plot_file: str | None = None,
) -> dict[str, str]:
    """Writes an orchestrator's outputs into `workdir`: `<name>.json`, `<name>.md`, a figure.

    Every file is first written in full to a temporary file beside its target; only then
    are they renamed over the targets. A writer that raises (a report that is not JSON, a
    failing plot) therefore leaves the previous outputs as they were and no temporary file.

    Args:
        workdir: the orchestrator's directory (created if missing).
        name: the stem of the JSON and Markdown files.
        report: written as `<name>.json` (indented JSON).
        markdown: written as `<name>.md`.
        plot: `plot(path)` draws the figure into `path` (a PNG); none if omitted.
        plot_file: the figure's file name (default `<name>.png`).

    Returns:
        The paths written, by kind (`json`, `md` and, with a plot, `png`).
    """
    os.makedirs(workdir, exist_ok=True)
    paths = {
        "json": os.path.join(workdir, f"{name}.json"),
        "md": os.path.join(workdir, f"{name}.md"),
    }
    writers = {"json": _text_writer(json.dumps(report, indent=2)), "md": _text_writer(markdown)}
    if plot is not None:
        paths["png"] = os.path.join(workdir, plot_file or f"{name}.png")
        writers["png"] = plot
    staged: list[tuple[str, str]] = []
    try:
        for kind, write in writers.items():
            staged.append((_stage(paths[kind], write), paths[kind]))
    except BaseException:
        for tmp, _ in staged:
            os.remove(tmp)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return paths


def write_report(
    workdir: str, report: dict[str, Any], curves: dict[str, list[list[dict[str, Any]]]]
) -> dict[str, str]:
    """Writes the `run` report: report.json, report.md and learning_curves.png.

    Args:
        workdir: the run's directory.
        report: `{"results": {name: summary}, "meta": {...}}`.
        curves: per entry, per seed, the metrics.jsonl records of that run.

    Returns:
        The paths written, by kind.
    """
    meta = report.get("meta", {})
    md = [
        f"# distill-jax report: {meta.get('dataset', '')}\n",
        f"Test split: {meta.get('test_examples', '?')} examples. Students: mean ± std over "
        f"{meta.get('seeds', 1)} seed(s). Wall time {meta.get('wall_time_s', 0):.0f} s on "
        f"{meta.get('device', '?')}.\n",
        markdown_table(report),
        "\n![learning curves](learning_curves.png)\n",
    ]
    return write_outputs(
        workdir,
        "report",
        report,
        "\n".join(md),
        plot=lambda path: plot_learning_curves(curves, path),
        plot_file="learning_curves.png",
    )


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file: a crash never leaves half a file."""
    atomic_write_with(path, _text_writer(text))


def atomic_write_with(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`.

    The temporary file keeps the extension of `path` (`plot.tmp.png`), for writers that
    choose the format by it (matplotlib's `savefig`). If `write` raises, `path` is left as
    it was and the temporary file is removed.
    """
    os.replace(_stage(path, write), path)


def replace_dir(tmp: str, out: str) -> None:
    """Moves the finished directory `tmp` to `out` (both in one filesystem). An existing
    `out` is moved aside first and deleted only once the new one is in place, so `out`
    is always either the old directory or the whole new one."""
    if os.path.exists(out):
        parent = os.path.dirname(out) or "."
        old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-", dir=parent)
        os.replace(out, os.path.join(old, "out"))
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _text_writer(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    return write


def _stage(path: str, write: Callable[[str], None]) -> str:
    """Runs `write` on a temporary path beside `path` and returns it (removed on failure)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    try:
        write(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return tmp


def _curve(records: list[dict[str, Any]], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in records if r.get("split") == split and key in r]
    return np.asarray([r["epoch"] for r in rows]), np.asarray([r[key] for r in rows])


def plot_learning_curves(curves: dict[str, list[list[dict[str, Any]]]], path: str) -> None:
    """Validation accuracy and training loss against epochs; mean ± std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, seeds in curves.items():
        label = DESCRIPTIONS.get(name, name)
        for ax, split, key in ((ax_acc, "validation", "accuracy"), (ax_loss, "train", "ce")):
            series = [_curve(records, split, key) for records in seeds]
            series = [s for s in series if len(s[0])]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            x = series[0][0][:n]
            ys = np.stack([s[1][:n] for s in series])
            mean = ys.mean(0)
            (line,) = ax.plot(x, mean, label=label)
            if len(series) > 1:
                std = ys.std(0)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_loss.set(
        xlabel="epoch", ylabel="hard-label cross-entropy", title="Training CE", yscale="log"
    )
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
