"""Language-model distillation: SmolLM2-135M-Q4 teaches 4-layer students on news_lm.

Measured: the default rows took 56.9 min on 2 CPU cores (the table in
experiments/lm_kd/README.md); a tiny variant is tested (tests/test_lm_kd.py). Resumable:
finished rows, the cache and the teacher's numbers are reused (`<workdir>/summaries/`), an
interrupted row resumes from its checkpoint.

    python experiments/lm_kd/run.py --workdir runs/lm_kd            # 56.9 min, 2 CPU cores
    python experiments/lm_kd/run.py --workdir runs/lm_kd_gpu \\
        --tokens 2500000 --batch_size 32 --test_sequences 951       # a GPU: more tokens

1. loads the teacher (SmolLM2-135M-Instruct, 4-bit GGUF, `TEACHER`) without training it;
   evaluates it on the first `TEST_SEQUENCES` test sequences of news_lm/len128
   (perplexity) and writes its greedy continuations of `PROMPTS` test-article openings;
2. caches its top-64 next-token log-probabilities on the students' training tokens, the
   first `TOKENS / 128` training sequences (`ensure_cache`: written once, shared by every
   cached row, reused when the command runs again);
3. trains each row of `ROWS` for one pass over those sequences (`BATCH_SIZE` sequences a
   step, the same tokens and steps for every row): the rows in `SEEDED` once per seed
   (`--seeds`; seeds change the data order, and a random student's initialisation),
   the others with seed 0;
4. writes `results.json` and `results.md` (atomically): per row held-out perplexity, top-1
   agreement with the teacher and KL(teacher || student) per token on the same test
   tokens, parameters, training tokens/s, greedy generation tokens/s, and the greedy
   continuations side by side.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import data as data_lib
from distill_jax.compress import lm_width
from distill_jax.data import lm
from distill_jax.errors import DistillError
from distill_jax.evaluation import Evaluator, count_params
from distill_jax.models import llama
from distill_jax.report import atomic_write
from distill_jax.teachers import Teacher
from distill_jax.tokenizer import load_lm_tokenizer
from distill_jax.train.inputs import pretrained_teacher
from distill_jax.train.loop import fit, load_data, make_task, read_metrics
from distill_jax.train.teacher_cache import ensure_cache

DATA = {"name": "news_lm/len128"}
TEACHER = {"name": "llama", "init_from": "smollm2-135m-q4"}
TEACHER_NAME = "SmolLM2-135M-Q4 (30 layers, 4-bit GGUF)"
INIT_LAYERS = [0, 10, 20, 29]
WIDTH_PRUNING = {"layers": INIT_LAYERS, "intermediate_size": 768, "sequences": 32}
"""The width-pruned student: the teacher's blocks `layers`, then each MLP's
`intermediate_size` most important neurons, measured on the first `sequences` training
sequences (mean over the sequence of |activation|, L2 over the batch)."""
STUDENTS = {
    # Minitron-style depth pruning: 4 of the teacher's 30 blocks, its embedding and norm.
    "pruned": {
        "name": "llama",
        "num_layers": 4,
        "init_from": "smollm2-135m-q4",
        "init_layers": INIT_LAYERS,
    },
    # The same architecture (width 576, 9/3 heads, MLP 1536, tied embedding), random.
    "random": {"name": "llama", "num_layers": 4},
    # Minitron-style depth then width pruning: the same 4 blocks, each MLP cut to the
    # `WIDTH_PRUNING` neurons of highest activation importance (compress/lm_width.py),
    # loaded from the directory `run` writes (`init_from` filled in by `row_config`).
    "width": {
        "name": "llama",
        "num_layers": len(WIDTH_PRUNING["layers"]),
        "intermediate_size": WIDTH_PRUNING["intermediate_size"],
    },
}
STUDENT_NAMES = {
    "pruned": f"4 layers from teacher blocks {'/'.join(map(str, INIT_LAYERS))}",
    "random": "4 layers, random init",
    "width": f"4 layers from teacher blocks {'/'.join(map(str, INIT_LAYERS))}, MLP 1536 -> "
    f"{WIDTH_PRUNING['intermediate_size']}",
}
TOKENS = 102_400
"""Training tokens per student (whole sequences): 800 sequences of 128, 200 steps of 4."""
BATCH_SIZE = 4
TEST_SEQUENCES = 160
"""Held-out tokens: the first 160 test sequences (20,480 tokens, 20,320 targets)."""
VALIDATION_SEQUENCES = 16
"""The loop validates once, at the end; nothing is selected on it."""
TOP_K = 64
SEEDS = 3
SEEDED = ("ce", "kl")
"""Rows trained once per seed (the headline comparison); the others use seed 0."""
TRAIN = {
    "optimizer": "adamw",
    "learning_rate": 1e-3,  # the issue's calibration: 1e-4 is too low to heal the pruning
    "schedule": "cosine",
    "warmup_epochs": 0.05,  # 10 of 200 steps
    "weight_decay": 0.0,
    "grad_clip": 1.0,
}
PROMPTS = 3
PROMPT_TOKENS = 16
NEW_TOKENS = 30
ROWS: dict[str, dict[str, Any]] = {
    "ce": {
        "label": "alone: next-token CE",
        "student": "pruned",
        "source": "none",
    },
    "kl": {
        "label": "forward KL, top-k renormalised",
        "student": "pruned",
        "source": "cache",
        "losses": {"lm_kl": {"weight": 1.0}},
    },
    "reverse_kl": {
        "label": "reverse KL, top-k + rest bucket",
        "student": "pruned",
        "source": "cache",
        "losses": {"lm_reverse_kl": {"weight": 1.0, "topk_rest": True}},
    },
    "jsd": {
        "label": "JSD(beta 0.5), top-k + rest bucket",
        "student": "pruned",
        "source": "cache",
        "losses": {"lm_jsd": {"weight": 1.0, "beta": 0.5, "topk_rest": True}},
    },
    "skew_kl": {
        "label": "skew KL (0.1), top-k + rest bucket",
        "student": "pruned",
        "source": "cache",
        "losses": {"lm_skew_kl": {"weight": 1.0, "skew": 0.1, "topk_rest": True}},
    },
    "gkd": {
        "label": "on-policy GKD: JSD(0.5), lmbda 0.5",
        "student": "pruned",
        "source": "online",
        "losses": {"lm_jsd": {"weight": 1.0, "beta": 0.5}},
        "on_policy": {"lmbda": 0.5, "prompt_tokens": 32, "temperature": 1.0},
    },
    "seq_kd": {
        "label": "sequence-level KD: CE on the teacher's greedy continuations",
        "student": "pruned",
        "source": "online",
        "alpha": 1.0,  # Kim & Rush: the CE on the teacher's sequences, no divergence
        "losses": {},
        "on_policy": {"lmbda": 0.0, "seq_kd": True, "prompt_tokens": 32, "temperature": 0.0},
    },
    "random_ce": {
        "label": "alone: next-token CE",
        "student": "random",
        "source": "none",
    },
    "random_kl": {
        "label": "forward KL, top-k renormalised",
        "student": "random",
        "source": "cache",
        "losses": {"lm_kl": {"weight": 1.0}},
    },
    "width_kl": {
        "label": "forward KL, top-k renormalised",
        "student": "width",
        "source": "cache",
        "losses": {"lm_kl": {"weight": 1.0}},
    },
}
"""Row -> its student, where the teacher's outputs come from (none, the top-64 cache, or
the online teacher) and the `distill.losses` (alpha 0: the divergence alone, unless the row
sets `alpha`)."""
DEFAULT_ROWS = (
    "ce",
    "kl",
    "reverse_kl",
    "jsd",
    "gkd",
    "random_ce",
    "random_kl",
    "width_kl",
    "seq_kd",
)
"""`skew_kl` is defined but left out of the default command (`--rows ... skew_kl`)."""
SOURCES = {"none": "–", "cache": "top-k cache", "online": "online + generated sequences"}


# ----------------------------------------------------------------------------- configs


def row_config(
    row: str,
    seed: int = 0,
    *,
    train_sequences: int = TOKENS // 128,
    batch_size: int = BATCH_SIZE,
    test_sequences: int = TEST_SEQUENCES,
    validation_sequences: int = VALIDATION_SEQUENCES,
    cache: str | None = None,
    pruned: str | None = None,
) -> dict[str, Any]:
    """A row's config (plain dict): one pass over the first `train_sequences` training
    sequences, `batch_size` a step; tested on the first `test_sequences` test sequences.
    `pruned`: the width-pruned checkpoint directory (`width_student`) a "width" row loads."""
    spec = ROWS[row]
    cfg: dict[str, Any] = {
        "seed": seed,
        "data": {
            **DATA,
            "train_split": f"train[:{train_sequences}]",
            "validation_split": f"validation[:{validation_sequences}]",
            "test_split": f"test[:{test_sequences}]",
            "eval_batch_size": 16,
        },
        "teacher": {"model": copy.deepcopy(TEACHER)},
        "student": {
            "model": copy.deepcopy(STUDENTS[spec["student"]]),
            "train": {**TRAIN, "epochs": 1, "batch_size": batch_size},
        },
        "distill": {"alpha": 1.0, "temperature": 1.0, "losses": {}},
        "eval": {"every_epochs": 1},
        "checkpoint": {"every_steps": 100, "keep": 1},
        "log": {"every_steps": 20, "progress": False},
    }
    if spec["student"] == "width":
        cfg["student"]["model"]["init_from"] = pruned
    if spec["source"] != "none":
        cfg["distill"] = {
            "alpha": spec.get("alpha", 0.0),
            "temperature": 1.0,
            "losses": copy.deepcopy(spec["losses"]),
        }
    if spec["source"] == "cache":
        cfg["distill"]["cache"] = cache
    if "on_policy" in spec:
        cfg["distill"]["on_policy"] = dict(spec["on_policy"])
    return cfg


def sizes_for(info, tokens: int, batch_size: int, test_sequences: int) -> dict[str, int]:
    """`row_config`'s sizes for `tokens` training tokens, each split's count capped at
    what the split holds (`--tokens` larger than news_lm's 2.54M trains on all of it)."""
    length = int(info.image_shape[0])
    return {
        "train_sequences": max(1, min(tokens // length, info.splits["train"])),
        "batch_size": batch_size,
        "test_sequences": min(test_sequences, info.splits["test"]),
        "validation_sequences": min(VALIDATION_SEQUENCES, info.splits["validation"]),
    }


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _load(path: str, key: str) -> dict[str, Any] | None:
    """A summary written by an earlier call for the same `key` (config hash), or None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if saved.get("key") == key else None


def _save(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, json.dumps(record, indent=2))


# ------------------------------------------------------------------------- generation


def prompts_from(split, separator: int, count: int, length: int) -> list[list[int]]:
    """The first `length` tokens of the first `count` documents of a packed split that
    are longer than that (document openings: a news article's title and first words)."""
    stream = np.asarray(split.labels).reshape(-1)
    stream = stream[stream >= 0]
    prompts, start = [], 0
    for end in [*np.flatnonzero(stream == separator), len(stream)]:
        if end - start > length and len(prompts) < count:
            prompts.append([int(t) for t in stream[start : start + length]])
        start = end + 1
    if not prompts:  # no whole document: the opening of the first sequence
        prompts = [[int(t) for t in np.asarray(split.images)[0, :length]]]
    return prompts


def greedy(model, params, prompts: list[list[int]], tokenizer) -> tuple[list[str], float]:
    """Greedy continuations of `NEW_TOKENS` tokens (decoded; EOS does not stop them) and
    the generation speed in new tokens/s (the batch of prompts, compiled beforehand)."""
    ids, mask = llama.left_pad(prompts)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def once():
        out = llama.generate(model, params, ids, mask, max_new_tokens=NEW_TOKENS, eos_id=-1)
        return jax.block_until_ready(out)

    once()  # compile
    started = time.perf_counter()
    tokens, _ = once()
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode([int(t) for t in row]) for row in np.asarray(tokens)]
    return texts, len(prompts) * NEW_TOKENS / seconds


def _train_tokens_per_s(workdir: str, length: int) -> float | None:
    """Median training speed over the logged windows after the first (which compiles)."""
    rates = [r["examples_per_sec"] for r in read_metrics(workdir) if r.get("split") == "train"]
    rates = rates[1:] or rates
    return float(np.median(rates) * length) if rates else None


def width_student(workdir: str, teacher: Teacher, train_ids: Any, say: Callable) -> str:
    """The width-pruned student's checkpoint directory (`WIDTH_PRUNING`), written once
    into `<workdir>/pruned_width/` (atomically; reused when it exists): the teacher's
    blocks, then the MLP neurons of highest importance on `train_ids`' first sequences."""
    out = os.path.join(workdir, "pruned_width")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    t = time.time()
    module, params = lm_width.depth_prune(
        teacher.model, teacher.variables["params"], WIDTH_PRUNING["layers"]
    )
    tokens = np.asarray(train_ids)[: WIDTH_PRUNING["sequences"]]
    kwargs, params = lm_width.prune_width(
        module, params, tokens, intermediate_size=WIDTH_PRUNING["intermediate_size"]
    )
    report = {**WIDTH_PRUNING, "calibration_sequences": len(tokens), "seconds": time.time() - t}
    lm_width.write_pruned(out, llama.Llama(**kwargs), params, report=report)
    say(f"width-pruned student written to {out} ({time.time() - t:.0f} s)")
    return out


# --------------------------------------------------------------------------------- run


def run(
    workdir: str,
    *,
    rows: Sequence[str] | None = None,
    seeds: int = SEEDS,
    tokens: int = TOKENS,
    batch_size: int = BATCH_SIZE,
    test_sequences: int = TEST_SEQUENCES,
    teacher: Teacher | None = None,
    overrides: Sequence[str] = (),
    say: Callable[..., None] = print,
) -> dict[str, Any]:
    """The whole table (module docstring). `teacher`: a `teachers.Teacher` to use instead
    of `TEACHER`'s pretrained checkpoint (tests); `overrides` apply to every run."""
    rows = list(DEFAULT_ROWS if rows is None else rows)
    os.makedirs(workdir, exist_ok=True)
    summaries = os.path.join(workdir, "summaries")
    started = time.time()

    def validated(cfg: dict[str, Any]):
        return config_lib.from_dict(cfg, list(overrides))

    probe = validated(row_config("ce"))
    info = data_lib.get_info(probe.data.name, probe.data.data_dir, probe.data.download)
    sizes = sizes_for(info, tokens, batch_size, test_sequences)
    probe = validated(row_config("ce", **sizes))
    data = load_data(probe)
    length = int(data.info.image_shape[0])
    if teacher is None:
        teacher = pretrained_teacher(probe, data.info)
    tokenizer = load_lm_tokenizer(lm.LM_TOKENIZER)
    prompts = prompts_from(data.test, lm.separator_id(tokenizer), PROMPTS, PROMPT_TOKENS)
    results: dict[str, Any] = {
        "teacher_name": TEACHER_NAME,
        "data": probe.data.name,
        "train_split": probe.data.train_split,
        "test_split": probe.data.test_split,
        "train_tokens": len(data.train) * length,
        "steps": len(data.train) // batch_size,
        "batch_size": batch_size,
        "test_targets": None,
        "seeds": seeds,
        "prompts": [tokenizer.decode(p) for p in prompts],
        "rows": {},
        "seconds": {},
    }

    # 1. The teacher: evaluated only.
    key = _hash([teacher.identity.get("sha256"), probe.data.to_dict(), prompts, NEW_TOKENS])
    path = os.path.join(summaries, "teacher.json")
    record = _load(path, key)
    if record is None:
        t = time.time()
        task = make_task(probe, "student", data)
        metrics = Evaluator(teacher.model, task=task, batch_size=16)(teacher.variables, data.test)
        eval_seconds = time.time() - t
        texts, gen_rate = greedy(teacher.model, teacher.variables["params"], prompts, tokenizer)
        record = {
            "key": key,
            "metrics": {**metrics, "params": count_params(teacher.variables["params"])},
            "eval_seconds": eval_seconds,  # with the compilation: not a speed
            "gen_tokens_per_s": gen_rate,
            "generations": texts,
            "seconds": time.time() - t,
        }
        _save(path, record)
    results["teacher"] = record
    results["test_targets"] = record["metrics"]["count"]
    results["seconds"]["teacher"] = record["seconds"]
    say(f"teacher: held-out perplexity {record['metrics']['perplexity']:.2f}")

    # 2. The top-64 cache of the teacher on the students' training tokens.
    cache_dir = os.path.join(workdir, f"cache_top{TOP_K}")
    if any(ROWS[r]["source"] == "cache" for r in rows):
        cached_row = next(r for r in rows if ROWS[r]["source"] == "cache")
        cfg = validated(row_config(cached_row, **sizes, cache=cache_dir))
        seconds = ensure_cache(cfg, teacher, cache_dir, top_k=TOP_K)
        path = os.path.join(summaries, "cache.json")
        with open(os.path.join(cache_dir, "cache.json")) as f:
            meta = json.load(f)
        record = _load(path, meta["teacher"]["sha256"] + meta["dataset"]["sha256"])
        if record is None or seconds:
            record = {
                "key": meta["teacher"]["sha256"] + meta["dataset"]["sha256"],
                "seconds": seconds,
                "tokens": meta["dataset"]["num_examples"] * length,
                "mean_kept_mass": meta["mean_kept_mass"],
            }
            _save(path, record)
        results["cache"] = record
        results["seconds"]["cache"] = record["seconds"]
        say(f"top-{TOP_K} cache: mean kept mass {record['mean_kept_mass']:.3f}")

    # 3. The students (the width-pruned one's checkpoint first, if a row needs it).
    pruned = None
    if any(ROWS[r]["student"] == "width" for r in rows):
        pruned = width_student(workdir, teacher, data.train.images, say)
    for row in rows:
        spec = ROWS[row]
        per_seed = []
        for seed in range(seeds if row in SEEDED else 1):
            cfg = row_config(row, seed, **sizes, cache=cache_dir, pruned=pruned)
            config = validated(cfg)
            key = _hash([config_lib.to_dict(config), teacher.identity.get("sha256"), prompts])
            path = os.path.join(summaries, f"{row}_seed{seed}.json")
            record = _load(path, key)
            if record is None:
                t = time.time()
                run_dir = os.path.join(workdir, row, f"seed_{seed}")
                result = fit(
                    config,
                    run_dir,
                    role="student",
                    teacher=None if spec["source"] == "none" else teacher,
                    compare_to=teacher,
                    desc=f"{row} seed {seed}",
                )
                train_seconds = time.time() - t
                texts, gen_rate = greedy(
                    result.model, result.variables["params"], prompts, tokenizer
                )
                record = {
                    "key": key,
                    "metrics": result.test,
                    "steps": result.steps,
                    "train_tokens_per_s": _train_tokens_per_s(run_dir, length),
                    "gen_tokens_per_s": gen_rate,
                    "generations": texts,
                    "seconds": time.time() - t,
                    "fit_seconds": train_seconds,
                }
                _save(path, record)
            per_seed.append(record)
            m = record["metrics"]
            say(
                f"{row} seed {seed}: perplexity {m['perplexity']:.1f}, agreement "
                f"{100 * m['agreement']:.1f} %, KL {m['kl']:.3f} ({record['seconds'] / 60:.1f} min)"
            )
        results["rows"][row] = per_seed
        results["seconds"][row] = float(sum(r["seconds"] for r in per_seed))
    # The table's total is the sum of its parts (the same when the command runs again);
    # `this_call` is what this call took (loading, plus whatever it trained).
    results["seconds"]["total"] = float(sum(results["seconds"].values()))
    results["seconds"]["this_call"] = time.time() - started
    atomic_write(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    text = markdown(results)
    atomic_write(os.path.join(workdir, "results.md"), text)
    say("\n" + text)
    return results


# ---------------------------------------------------------------------------- report


def _label(text: str) -> str:
    """A label with the cache's k filled in ("top-k" -> "top-64")."""
    return text.replace("top-k", f"top-{TOP_K}")


def _cell(values: list[float], fmt: str) -> str:
    a = np.asarray(values, np.float64)
    if len(a) == 1:
        return format(a[0], fmt)
    return f"{format(a.mean(), fmt)} ± {format(a.std(ddof=1), fmt)}"


def _one_line(text: str) -> str:
    return " ".join(text.replace("|", "\\|").replace("`", "'").split()) or "(nothing)"


def verdict(results: dict[str, Any]) -> str:
    """What the table says, in sentences computed from it (nothing else)."""
    rows = results["rows"]
    ppl = {r: float(np.mean([s["metrics"]["perplexity"] for s in rows[r]])) for r in rows}
    if not ppl:
        return ""
    label = lambda r: f"{_label(ROWS[r]['label'])} ({STUDENT_NAMES[ROWS[r]['student']]})"  # noqa: E731
    best = min(ppl, key=ppl.get)
    out = [f"Lowest held-out perplexity: {label(best)}, {ppl[best]:.1f}."]
    for alone, kd in (("ce", "kl"), ("random_ce", "random_kl")):
        if alone in ppl and kd in ppl:
            verb = "loses to" if ppl[alone] > ppl[kd] else "does not lose to"
            out.append(
                f"{STUDENT_NAMES[ROWS[alone]['student']]}: trained alone it {verb} forward-KL "
                f"distillation at equal training tokens ({ppl[alone]:.1f} vs {ppl[kd]:.1f})."
            )
    return " ".join(out)


def markdown(results: dict[str, Any]) -> str:
    """results.md: the table, the sentences of `verdict`, the generations side by side."""
    teacher = results["teacher"]
    tm = teacher["metrics"]
    multi = [r for r in SEEDED if len(results["rows"].get(r, ())) > 1]
    seeded = (
        f"Seeds 0-{results['seeds'] - 1} (mean ± std) for "
        + "; ".join(
            f"{STUDENT_NAMES[ROWS[r]['student']]}, {_label(ROWS[r]['label'])}" for r in multi
        )
        + " (a seed sets the data order and a random init); the other rows seed 0."
        if multi
        else "One seed (0) a row."
    )
    lines = [
        f"Data: {results['data']}; students train on {results['train_split']} "
        f"({results['train_tokens']:,} tokens, {results['steps']} steps of "
        f"{results['batch_size']} sequences, one pass); held-out: {results['test_split']} "
        f"({results['test_targets']:,} target tokens). {seeded}",
        "",
        "| student | objective | teacher's outputs | held-out perplexity | top-1 agreement % "
        "| KL(teacher ‖ student) nats/token | parameters | train tokens/s | generation "
        "tokens/s | minutes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher: {results['teacher_name']} | – | – | {tm['perplexity']:.2f} | – | – "
        f"| {tm['params'] / 1e6:.1f}M | – "
        f"| {teacher['gen_tokens_per_s']:.0f} | {teacher['seconds'] / 60:.1f} |",
    ]
    for row, per_seed in results["rows"].items():
        spec = ROWS[row]
        ms = [s["metrics"] for s in per_seed]
        rates = [s["train_tokens_per_s"] for s in per_seed if s["train_tokens_per_s"]]
        rate = f"{np.median(rates):.0f}" if rates else "–"
        lines.append(
            f"| {STUDENT_NAMES[spec['student']]} | {_label(spec['label'])} "
            f"| {_label(SOURCES[spec['source']])} "
            f"| {_cell([m['perplexity'] for m in ms], '.1f')} "
            f"| {_cell([100 * m['agreement'] for m in ms], '.1f')} "
            f"| {_cell([m['kl'] for m in ms], '.3f')} | {ms[0]['params'] / 1e6:.1f}M "
            f"| {rate} | {np.median([s['gen_tokens_per_s'] for s in per_seed]):.0f} "
            f"| {results['seconds'][row] / 60:.1f} |"
        )
    if "cache" in results:
        c = results["cache"]
        took = (
            f"in {c['seconds'] / 60:.1f} min, {c['tokens'] / c['seconds']:.0f} tokens/s "
            "(the teacher's forward and top-k, with compilation)"
            if c["seconds"]
            else "(written by an earlier call that left no time)"
        )
        lines += [
            "",
            f"Top-{TOP_K} cache: {c['tokens']:,} tokens {took}; mean kept mass "
            f"{100 * c['mean_kept_mass']:.1f} %.",
        ]
    lines += [
        "",
        "Train tokens/s: input tokens per second of the optimizer steps (median over the "
        "logged 20-step windows after the first, which compiles; GKD's include the "
        "student's sampling and the teacher's forward). Generation tokens/s: greedy, "
        f"the {len(results['prompts'])} prompts below as one batch, {NEW_TOKENS} new "
        "tokens each (EOS does not stop it), new tokens per second. Minutes: the row's "
        "wall time (all its seeds, with evaluation and generation). Total (teacher, cache "
        "and rows) "
        f"{results['seconds']['total'] / 60:.1f} min.",
        "",
        verdict(results),
        "",
        "## Greedy continuations (seed 0)",
    ]
    for i, prompt in enumerate(results["prompts"]):
        lines += [
            "",
            f"Prompt {i + 1}: `{_one_line(prompt)}`",
            "",
            "| model | continuation |",
            "|---|---|",
            f"| teacher | {_one_line(teacher['generations'][i])} |",
        ]
        for row, per_seed in results["rows"].items():
            spec = ROWS[row]
            name = f"{STUDENT_NAMES[spec['student']]}, {_label(spec['label'])}"
            lines.append(f"| {name} | {_one_line(per_seed[0]['generations'][i])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", nargs="*", default=None, choices=list(ROWS))
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds of the SEEDED rows")
    parser.add_argument(
        "--tokens", type=int, default=TOKENS, help="training tokens per student (one pass)"
    )
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--test_sequences", type=int, default=TEST_SEQUENCES)
    parser.add_argument("--data_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    try:
        run(
            args.workdir,
            rows=args.rows,
            seeds=args.seeds,
            tokens=args.tokens,
            batch_size=args.batch_size,
            test_sequences=args.test_sequences,
            overrides=overrides,
        )
    except DistillError as e:
        print(f"lm_kd: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
