"""`distill-jax compress`: distil, then prune and quantize, with the teacher guiding recovery.

The chain (NVIDIA ModelOpt's prune -> distil -> quantize, run from one config):

1. the teacher (trained, or an existing run with `--teacher`), the dense student trained
   alone, and the dense student distilled from the teacher;
2. unstructured magnitude pruning of the distilled student to each of
   `compression.sparsities` (masks in the TrainState, gradual or one-shot), recovered by
   fine-tuning with the teacher's soft targets (`kd`), with the soft targets of the
   unpruned distilled student (`self`: the student before pruning is the teacher, as in
   ModelOpt / Minitron), and/or with hard labels only (`hard`), plus the pruned model
   before any recovery;
3. structured pruning: every hidden layer keeps `compression.channel_keep` of its units
   (`channels.py`), giving a smaller dense student, recovered the same two ways;
4. int8: post-training quantization of the distilled student, quantization-aware
   training with KD (`compression.qat_epochs`), and the whole chain: the KD-recovered
   channel-pruned student, quantized.

Every row is evaluated on the test split with its parameter count, non-zero parameters,
size on disk (its variables written with `numpy.savez_compressed`, so zeros and int8 both
shrink the file) and measured CPU latency. Each training stage has its own workdir, so an
interrupted chain resumes where it stopped. Outputs: `compression.json`, `compression.md`
and `compression.png` (accuracy against size on disk).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distill_jax import config as config_lib
from distill_jax.compress.channels import check_prunable, prune_channels
from distill_jax.compress.prune import PruneSchedule, apply_masks, magnitude_masks
from distill_jax.compress.stage import stage
from distill_jax.evaluation import Evaluator, measure_latency
from distill_jax.models import create_model
from distill_jax.report import Stages, describe_meta, run_meta, write_outputs
from distill_jax.teachers import Teacher
from distill_jax.train.loop import fit, load_data, load_teacher
from distill_jax.train.workdir import claim


def disk_bytes(variables: Any) -> int:
    """Size of `variables` written with `numpy.savez_compressed` (every leaf, as stored)."""
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    arrays = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getbuffer().nbytes


def count_nonzero(variables: Any) -> tuple[int, int]:
    """`(parameters, non-zero parameters)` of the `params` collection.

    A quantized kernel counts its int8 values; its scales are overhead (they show in the
    size on disk), not parameters.
    """
    leaves = [
        np.asarray(x)
        for path, x in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        if not (isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "scale")
    ]
    return sum(x.size for x in leaves), sum(int(np.count_nonzero(x)) for x in leaves)


def recovery_config(
    config: ml_collections.ConfigDict, model_cfg: dict[str, Any] | None = None, epochs=None
) -> ml_collections.ConfigDict:
    """The student config of a recovery fine-tune: fewer epochs, lower rate, no warm-up."""
    cfg = config_lib.to_dict(config)
    c = cfg["compression"]
    train = cfg["student"]["train"]
    train.update(
        epochs=c["recovery_epochs"] if epochs is None else epochs,
        learning_rate=c["recovery_learning_rate"],
        warmup_epochs=0.0,
    )
    if model_cfg is not None:
        cfg["student"]["model"] = dict(model_cfg)
    return config_lib.from_dict(cfg)


def prune_schedule(config: ml_collections.ConfigDict, sparsity: float, steps: int) -> PruneSchedule:
    """The pruning schedule of a recovery run of `steps` steps."""
    c = config.compression
    if c.schedule == "one_shot":
        return PruneSchedule(final=sparsity, scope=c.scope)
    end = max(1, int(c.ramp_fraction * steps))
    return PruneSchedule(final=sparsity, end_step=end, every=min(c.prune_every, end), scope=c.scope)


class _Rows:
    """Evaluates models on the test split and collects the table's rows."""

    def __init__(self, config, data, teacher: Teacher | None):
        self.config, self.data, self.teacher = config, data, teacher
        self.rows: list[dict[str, Any]] = []

    def add(self, label: str, kind: str, model, variables, **extra) -> dict:
        """Evaluates `model` with `variables` (what would be shipped) and adds its row."""
        evaluator = Evaluator(
            model, teacher=self.teacher, batch_size=self.config.data.eval_batch_size
        )
        test = evaluator(variables, self.data.test)
        shape = self.data.info.image_shape
        latency = measure_latency(model, variables, shape, self.config.eval.latency_batch_size)
        params, nonzero = count_nonzero(variables)
        row = {
            "label": label,
            "kind": kind,
            "accuracy": test["accuracy"],
            "nll": test["nll"],
            "ece": test["ece"],
            "agreement": test.get("agreement"),
            "params": params,
            "nonzero_params": nonzero,
            "disk_bytes": disk_bytes(variables),
            **latency,
            **extra,
        }
        self.rows.append(row)
        return row


def compress(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teacher_dir: str | None = None,
    say: Callable[..., None] = print,
) -> dict[str, Any]:
    """Runs the chain (see the module docstring) and writes its table and plot.

    Args:
        config: the validated config (its `compression` section drives the chain).
        workdir: the chain's directory; every training stage has a sub-directory.
        teacher_dir: a finished teacher run to use instead of training one.
        say: progress lines (e.g. `print`).

    Returns:
        The report dict written to `compression.json`.
    """
    t_start = time.time()
    c = config.compression
    data = load_data(config)
    info = data.info
    example = jnp.zeros((1, *info.image_shape), jnp.float32)
    if c.channel_keep:  # a plan that cannot work fails now, not after the training
        student = create_model(config.student.model.to_dict(), info.num_classes)
        shapes = jax.eval_shape(lambda x: student.init(jax.random.PRNGKey(0), x), example)
        check_prunable(config.student.model.to_dict(), shapes["params"], c.channel_criterion)

    claim(workdir, "compress", config, reads={"--teacher": teacher_dir})

    trainings = (
        (teacher_dir is None)
        + 2
        + (len(c.sparsities) + len(c.channel_keep)) * len(c.recovery)
        + (c.qat_epochs > 0)
    )
    stages = Stages(trainings, say)
    # -- 1. teacher, dense student alone, distilled student --------------------------
    if teacher_dir is None:
        teacher_dir = os.path.join(workdir, "teacher")
        stages.done("teacher", fit(config, teacher_dir, role="teacher", desc="teacher").test)
    teacher = load_teacher(teacher_dir, config.teacher.checkpoint)
    rows = _Rows(config, data, teacher)
    rows.add("teacher", "dense", teacher.model, teacher.variables)
    alone = fit(config, os.path.join(workdir, "student_alone"), role="student", desc="alone")
    rows.add("student alone", "dense", alone.model, alone.variables)
    stages.done("student alone", alone.test)
    kd = fit(
        config,
        os.path.join(workdir, "student_kd"),
        role="student",
        teacher=teacher,
        desc="distilled",
    )
    distilled = load_teacher(kd.workdir, what="student")
    rows.add("student distilled", "distilled", kd.model, kd.variables)
    stages.done("student distilled", kd.test)
    recovery = {"kd": teacher, "self": distilled, "hard": None}

    def recover(name, label, kind, rec_config, start, prune=None, **extra):
        """Fine-tunes `start` in every way `compression.recovery` lists, a row for each."""
        done = {}
        for how in c.recovery:
            done[how] = fit(
                rec_config,
                os.path.join(workdir, f"{name}_{how}"),
                role="student",
                teacher=recovery[how],
                compare_to=teacher,
                variant=stage(init_from=start, prune=prune),
                desc=f"{name}_{how}",
            )
            result = done[how]
            rows.add(
                f"{label} + {how} recovery",
                f"{kind}_{how}",
                result.model,
                result.variables,
                **extra,
            )
            stages.done(f"{label} + {how} recovery", result.test)
        return done

    # -- 2. unstructured pruning, recovered with KD and/or hard labels -------------------
    rec_config = recovery_config(config)
    steps = _steps(rec_config, data)
    for s in c.sparsities:
        masks = magnitude_masks(distilled.variables["params"], s, c.scope)
        pruned = {
            **distilled.variables,
            "params": apply_masks(distilled.variables["params"], masks),
        }
        rows.add(f"pruned {s:.0%}, no recovery", "pruned", kd.model, pruned, sparsity=s)
        schedule = prune_schedule(rec_config, s, steps)
        recover(
            f"pruned_{round(s * 100)}",
            f"pruned {s:.0%}",
            "pruned",
            rec_config,
            distilled,
            schedule,
            sparsity=s,
        )

    # -- 3. structured (channel) pruning -> a smaller dense student ----------------------
    student_cfg = config.student.model.to_dict()
    shrunk_kd = None
    for keep in c.channel_keep:
        small_cfg, small_vars = prune_channels(
            student_cfg, distilled.variables, keep, c.channel_criterion
        )
        small_model = create_model(small_cfg, info.num_classes, dtype=config.dtype)
        start = Teacher(
            small_model,
            small_vars,
            {**distilled.identity, "channels": {"keep": keep, "criterion": c.channel_criterion}},
        )
        rows.add(
            f"channels {keep:.0%}, no recovery", "channels", small_model, small_vars, keep=keep
        )
        small_config = recovery_config(config, small_cfg)
        done = recover(
            f"channels_{round(keep * 100)}",
            f"channels {keep:.0%}",
            "channels",
            small_config,
            start,
            keep=keep,
            model_config=small_cfg,
        )
        if "kd" in done and shrunk_kd is None:
            shrunk_kd = (keep, done["kd"].model, done["kd"].variables)

    # -- 4. int8: PTQ, QAT with KD, and the whole chain ----------------------------------
    if c.int8 or c.qat_epochs:
        from distill_jax.compress.quantize import ptq

        def add_int8(label, kind, model, variables, **extra):
            q_model, q_vars = ptq(model, variables, example)
            rows.add(label, kind, q_model, q_vars, **extra)

        if c.int8:
            add_int8("distilled, int8 PTQ", "int8", kd.model, kd.variables)
        if c.qat_epochs:
            qat_config = recovery_config(config, epochs=c.qat_epochs)
            qat_fit = fit(
                qat_config,
                os.path.join(workdir, "qat_kd"),
                role="student",
                teacher=teacher,
                variant=stage(init_from=distilled, qat=True),
                desc="qat_kd",
            )
            stages.done("int8 QAT with KD (fake-quantized)", qat_fit.test)
            trained = load_teacher(os.path.join(workdir, "qat_kd"), what="student")
            add_int8("distilled, int8 QAT (KD)", "int8", trained.model, trained.variables)
        if c.int8 and shrunk_kd is not None:
            keep, model, variables = shrunk_kd
            add_int8(
                f"channels {keep:.0%} + kd recovery, int8", "chain", model, variables, keep=keep
            )

    report = {
        "rows": rows.rows,
        "meta": run_meta(
            info.name,
            t_start,
            test_examples=len(data.test),
            latency_batch_size=config.eval.latency_batch_size,
            teacher=teacher.identity,
            compression=config.compression.to_dict(),
        ),
    }
    table = markdown(report)
    write_outputs(workdir, "compression", report, table, plot=lambda path: plot(report, path))
    say("\n" + table)
    return report


def _steps(config: ml_collections.ConfigDict, data) -> int:
    from distill_jax.data import steps_per_epoch

    train = config.student.train
    return int(train.epochs * steps_per_epoch(len(data.train), train.batch_size))


def markdown(report: dict[str, Any]) -> str:
    """The trade-off table: accuracy, size and speed of every compressed model."""
    meta = report["meta"]
    lines = [
        f"| model | test acc % | NLL | ECE % | agreement % | params | non-zero params "
        f"| size on disk KiB "
        f"| µs/example (batch {meta['latency_batch_size']}) | µs (batch 1) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        agree = (
            "–"
            if r["agreement"] is None or r["label"] == "teacher"
            else f"{100 * r['agreement']:.1f}"
        )
        lines.append(
            f"| {r['label']} | {100 * r['accuracy']:.1f} | {r['nll']:.3f} | {100 * r['ece']:.1f} "
            f"| {agree} | {r['params']:,} "
            f"| {r['nonzero_params']:,} | {r['disk_bytes'] / 1024:,.1f} "
            f"| {1e3 * r['latency_ms_per_example']:.2f} | {1e3 * r['latency_ms_batch1']:.1f} |"
        )
    lines += ["", describe_meta(meta)]
    return "\n".join(lines) + "\n"


_STYLE = {
    "dense": ("black", "s"),
    "distilled": ("tab:blue", "*"),
    "pruned": ("tab:gray", "x"),
    "pruned_kd": ("tab:blue", "o"),
    "pruned_self": ("tab:cyan", "o"),
    "pruned_hard": ("tab:orange", "o"),
    "channels": ("tab:gray", "+"),
    "channels_kd": ("tab:blue", "D"),
    "channels_self": ("tab:cyan", "D"),
    "channels_hard": ("tab:orange", "D"),
    "int8": ("tab:green", "^"),
    "chain": ("tab:red", "v"),
}


def plot(report: dict[str, Any], path: str) -> None:
    """Test accuracy against size on disk (log scale): every row, and a zoom on the top.

    Rows of one kind (e.g. pruned + kd recovery at every sparsity) are joined by a line;
    the dense, distilled and int8 rows are labelled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    recovered = [100 * r["accuracy"] for r in rows if not r["label"].endswith("no recovery")]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax in axes:
        for kind, members in by_kind.items():
            color, marker = _STYLE.get(kind, ("tab:purple", "."))
            members = sorted(members, key=lambda r: r["disk_bytes"])
            x = [r["disk_bytes"] / 1024 for r in members]
            y = [100 * r["accuracy"] for r in members]
            joined = len(members) > 1 and kind not in ("dense", "int8", "chain")
            ax.plot(
                x,
                y,
                color=color,
                marker=marker,
                markersize=7,
                linestyle="-" if joined else "none",
                linewidth=1,
                label=kind.replace("_", " + "),
            )
        ax.set_xscale("log")
        ax.set_xlabel("size on disk (KiB, savez_compressed)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title(f"Compression trade-off on {report['meta']['dataset']}: every row")
    low = min(recovered) - 1.0
    axes[1].set_ylim(low, max(recovered) + 0.5)
    axes[1].set_title("zoom: recovered, int8 and dense rows")
    for r in rows:
        if r["kind"] in ("dense", "distilled", "int8", "chain"):
            axes[1].annotate(
                r["label"],
                (r["disk_bytes"] / 1024, 100 * r["accuracy"]),
                fontsize=7,
                xytext=(4, -10),
                textcoords="offset points",
            )
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
