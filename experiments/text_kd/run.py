"""Runs the text distillation experiment end to end and writes its measured table.

Command (43 minutes with `--depths 2,4` on the 2-core CPU box; resumable: finished runs
are not retrained):

    python experiments/text_kd/run.py --workdir runs/text_kd [--depths 2,4]

1. fine-tunes the teacher (`teacher.py`);
2. for each seed, trains the 2-layer student alone (`student_alone.py`) and distils it from
   the teacher's logits (`distill_logits.py`) and from logits + hidden states + attention
   (`distill_hidden_attention.py`); with `--depths 2,4` the 4-layer student too
   (`student4_alone.py`, `distill4_logits.py`, `distill4_hidden_attention.py`);
3. (unless `--no-embedding`) distils the student's sentence embeddings from the pretrained
   all-MiniLM-L6-v2 without labels (`embedding.py`) and measures teacher-student cosine and
   recall@10 on the test docstrings;
4. writes `results.json` and `results.md` (test accuracy mean +- std over seeds, agreement
   with the teacher, parameters, CPU latency per sequence) into the workdir.

Every number in experiments/text_kd/README.md comes from `results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax.embeddings import embedding_cosine, neighbour_recall, sentence_embeddings
from distill_jax.models import create_model
from distill_jax.report import atomic_write
from distill_jax.teachers import Teacher
from distill_jax.train.loop import fit, load_data, load_teacher

HERE = os.path.dirname(os.path.abspath(__file__))
STUDENT_SETTINGS = {
    2: ("student_alone", "distill_logits", "distill_hidden_attention"),
    4: ("student4_alone", "distill4_logits", "distill4_hidden_attention"),
}
LABELS = {
    "teacher": "teacher (all-MiniLM-L6-v2, fine-tuned)",
    "student_alone": "2-layer student alone",
    "distill_logits": "2-layer distilled: logits",
    "distill_hidden_attention": "2-layer distilled: logits + hidden + attention",
    "student4_alone": "4-layer student alone",
    "distill4_logits": "4-layer distilled: logits",
    "distill4_hidden_attention": "4-layer distilled: logits + hidden + attention",
}


def load_settings(overrides: list[str] | None = None, depths=(2,)) -> dict[str, Any]:
    """The experiment's validated configs by setting name (`overrides` apply to all)."""
    names = ("teacher", *(n for d in depths for n in STUDENT_SETTINGS[d]), "embedding")
    return {
        n: config_lib.load_config(os.path.join(HERE, f"{n}.py"), overrides or []) for n in names
    }


def pretrained_teacher(config) -> Teacher:
    """The teacher model of `config`, with its pretrained weights and an untrained head."""
    info = load_data(config).info
    model = create_model(config.teacher.model.to_dict(), info.num_classes, dtype=config.dtype)
    dummy = jnp.zeros((1, *info.image_shape), jnp.int32)
    params = model.initial_params(jax.jit(model.init)(jax.random.PRNGKey(0), dummy)["params"])
    identity = {
        "workdir": f"pretrained:{config.teacher.model.get('init_from')}",
        "step": 0,
        "model": config_lib.to_dict(config)["teacher"]["model"],
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "dataset": info.name,
    }
    return Teacher(model=model, variables=jax.device_get({"params": params}), identity=identity)


def _summary(result, seconds: float) -> dict[str, Any]:
    keys = ("accuracy", "agreement", "params", "latency_ms_batch1", "latency_ms_per_example")
    return {**{k: result.test[k] for k in keys if k in result.test}, "seconds": seconds}


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run(
    settings: dict[str, Any],
    workdir: str,
    seeds: int = 3,
    embedding: bool = True,
    say=print,
    teacher_dir: str | None = None,
) -> dict[str, Any]:
    """Trains every setting and returns (and writes) the results.

    With `teacher_dir` (a finished teacher run) the teacher is loaded, not trained, and
    has no row of its own in the results.
    """
    os.makedirs(workdir, exist_ok=True)
    results: dict[str, Any] = {"seeds": seeds, "runs": {}}
    start = time.time()
    if teacher_dir is None:
        teacher_dir = os.path.join(workdir, "teacher")
        t0 = time.time()
        teacher_fit = fit(settings["teacher"], teacher_dir, role="teacher", desc="teacher")
        results["runs"]["teacher"] = [_summary(teacher_fit, time.time() - t0)]
        say(f"teacher: test accuracy {teacher_fit.test['accuracy']:.4f}")
    teacher = load_teacher(teacher_dir, settings["teacher"].teacher.checkpoint)
    students = [n for n in STUDENT_SETTINGS[2] + STUDENT_SETTINGS[4] if n in settings]
    for name in students:
        results["runs"][name] = []
        for seed in range(seeds):
            t0 = time.time()
            result = fit(
                settings[name],
                os.path.join(workdir, name, f"seed_{seed}"),
                role="student",
                seed=seed,
                teacher=None if name.endswith("alone") else teacher,
                compare_to=teacher,
                desc=f"{name} seed {seed}",
            )
            results["runs"][name].append(_summary(result, time.time() - t0))
            say(f"{name} seed {seed}: test accuracy {result.test['accuracy']:.4f}")
    if embedding:
        results["embedding"] = run_embedding(settings, workdir, say)
    results["seconds"] = time.time() - start
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    table = markdown(results)
    atomic_write(os.path.join(workdir, "results.md"), table)
    say("\n" + table)
    return results


def run_embedding(settings: dict[str, Any], workdir: str, say=print, k: int = 10) -> dict:
    """Label-free embedding distillation from the pretrained model, evaluated on test."""
    config = settings["embedding"]
    teacher = pretrained_teacher(config)
    t0 = time.time()
    result = fit(
        config,
        os.path.join(workdir, "embedding", "seed_0"),
        role="student",
        seed=0,
        teacher=teacher,
        desc="embedding",
    )
    seconds = time.time() - t0
    ids = load_data(config).test.images
    e_t = sentence_embeddings(teacher.model, teacher.variables, ids)
    e_s = sentence_embeddings(result.model, result.variables, ids)
    out = {
        "cosine": embedding_cosine(e_s, e_t),
        f"recall@{k}": neighbour_recall(e_s, e_t, k),
        "seconds": seconds,
        "examples": len(ids),
    }
    # Baselines for recall (within each model's own embedding space): the student's
    # initialisation (teacher layers, projected) and the student trained on labels alone.
    init_model = create_model(
        config.student.model.to_dict(), result.model.num_classes, dtype=config.dtype
    )
    init_params = init_model.initial_params(
        jax.jit(init_model.init)(jax.random.PRNGKey(0), jnp.zeros((1, ids.shape[1]), jnp.int32))[
            "params"
        ]
    )
    e_init = sentence_embeddings(init_model, {"params": init_params}, ids)
    out[f"init_recall@{k}"] = neighbour_recall(e_init, e_t, k)
    alone_dir = os.path.join(workdir, "student_alone", "seed_0")
    if os.path.isdir(alone_dir):
        alone = load_teacher(alone_dir, what="student")
        e_alone = sentence_embeddings(alone.model, alone.variables, ids)
        out[f"alone_recall@{k}"] = neighbour_recall(e_alone, e_t, k)
    say(f"embedding: {out}")
    return out


def markdown(results: dict[str, Any]) -> str:
    """The measured table (accuracies in %, latency in ms per sequence)."""
    seeds = results["seeds"]
    lines = [
        f"| model | test accuracy % (mean ± std, {seeds} seeds) | agreement with teacher % "
        "| parameters | latency ms/sequence (batch 1) | ms/sequence (batch 64) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in results["runs"]:
        runs = results["runs"][name]
        acc, acc_std = _mean_std([100 * r["accuracy"] for r in runs])
        acc_text = f"{acc:.1f}" if name == "teacher" else f"{acc:.1f} ± {acc_std:.1f}"
        if "agreement" in runs[0]:
            agree, agree_std = _mean_std([100 * r["agreement"] for r in runs])
            agree_text = f"{agree:.1f} ± {agree_std:.1f}"
        else:
            agree_text = "–"
        lat1 = np.median([r["latency_ms_batch1"] for r in runs])
        lat64 = np.median([r["latency_ms_per_example"] for r in runs])
        lines.append(
            f"| {LABELS[name]} | {acc_text} | {agree_text} | {runs[0]['params'] / 1e6:.2f}M "
            f"| {lat1:.2f} | {lat64:.3f} |"
        )
    emb = results.get("embedding")
    if emb:
        lines += [
            "",
            f"Embedding distillation (no labels, pretrained all-MiniLM-L6-v2 teacher, "
            f"{emb['examples']} test docstrings): teacher-student cosine {emb['cosine']:.3f}, "
            f"recall@10 {emb['recall@10']:.3f} (student at initialisation "
            f"{emb['init_recall@10']:.3f}"
            + (
                f", student trained on labels alone {emb['alone_recall@10']:.3f}"
                if "alone_recall@10" in emb
                else ""
            )
            + ").",
        ]
    lines += ["", f"Total wall time: {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depths", default="2", help="student depths: 2, 4 or 2,4")
    parser.add_argument("--no-embedding", action="store_true")
    parser.add_argument("--teacher", help="use this finished teacher run instead of training one")
    parser.add_argument("--data_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (all settings)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    depths = tuple(int(d) for d in args.depths.split(","))
    settings = load_settings(overrides, depths)
    run(settings, args.workdir, args.seeds, not args.no_embedding, teacher_dir=args.teacher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
