"""Offline distillation: the teacher's outputs computed once and stored as a side dataset.

`distill-jax cache-teacher` runs the teacher over a split and writes, for every example
`i` and augmented view `v`, one array_record record (record `i * views + v`) holding the
teacher's logits: all of them, or the top-k values (float16) and their class indices.
View `v` is the augmentation drawn with `cache_view_key(seed, v)` (per example
`fold_in(key, i)`, as in training), so a student trained from the cache sees, at epoch
`e`, exactly the view `e % views` that the teacher saw (FKD / ReLabel style). A
`cache.json` beside the records identifies the teacher (its workdir, step, model and a
SHA-256 of its variables), the dataset (name, split, size, classes, shape and a SHA-256 of
its contents) and the augmentation, and `check_cache` refuses a cache that does not fit.

**Language models** (`DatasetInfo.causal_lm`, e.g. `news_lm`): one record per training
sequence (view 0 only: LM sequences are not augmented, `--views` must be 1) holding, for
each of its `T` positions, the teacher's top-`K` next-token **log-probabilities**
(`log_softmax` of its logits at `T = 1`, float16) and their token ids (int32): `(T, K)`
values and ids per record, `(N, 1, T, K)` loaded. Log-probabilities rather than logits so
that the mass outside the top K, `1 - sum_k exp(v_k)`, is known: `lm_topk_loss` needs
log-probabilities for its rest-bucket variant (`topk_rest=True`); its renormalised variant
(`lm_kl`) takes a softmax over the K values, for which log-probabilities and logits are
the same. Full logits (`top_k = 0`) are refused: at SmolLM2's 49,152-token vocabulary
they are 192 KiB per token. `cache.json` also records the mean kept mass per target token
(`mean_kept_mass`, `sum_k exp(v_k)` averaged over the positions the loss counts).
Measured (`cache-teacher --top_k 64`, SmolLM2-135M-Q4 from its GGUF, the first 200
training sequences of news_lm/len128, 25,600 tokens, 2 CPU cores): 50 s, 516 tokens/s
(the teacher's forward; `lax.top_k` is about 5 % of it), mean kept mass 0.863, 6.3 MB on
disk. The whole training split (2.54M tokens) would take about 80 minutes there.

**Memory.** A run reads the whole cache into host memory and places it on the devices
once (`CachedTeacher.arrays()`; split over devices with `parallel.shard_teacher`), the
step gathering its rows by example index. That is `N * views * T * K * 6` bytes for
top-k (float16 + int32): about 1 GB for news_lm/len128's 19,868 training sequences at
K = 64. Reading rows per batch from the array_record instead would need the data
pipeline to carry them; until then a cache larger than `distill.cache_max_gb` is refused
when a run loads it (`load_cache(max_bytes=...)`), naming the ways out.

The records are written to a temporary name and renamed, with `cache.json` last: a
directory without `cache.json` is an unfinished cache and is never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from distill_jax import data as data_lib
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.report import atomic_write, atomic_write_with
from distill_jax.tasks import CausalLM, Classification, Task
from distill_jax.teachers import CachedTeacher, Teacher, cache_view_key
from distill_jax.train.workdir import check_workdir, mark_workdir

META_FILE = "cache.json"
RECORDS_FILE = "teacher_outputs.array_record"
FORMAT = 1
#: The top-k a language-model cache's error messages suggest (SmolLM2's top 64 hold
#: about 86 % of its probability mass on news text).
LM_TOP_K = 64


def fingerprint(tree: Any) -> str:
    """SHA-256 over the leaves of a pytree of arrays (shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def teacher_identity(teacher: Teacher) -> dict[str, Any]:
    """What identifies a teacher in a cache: where it came from and its exact weights."""
    return {
        "workdir": teacher.identity.get("workdir"),
        "step": teacher.identity.get("step"),
        "model": teacher.identity.get("model"),
        "sha256": teacher.identity.get("sha256") or fingerprint(teacher.variables),
    }


def dataset_identity(
    split: data_lib.ArraySplit | data_lib.SourceSplit, split_name: str
) -> dict[str, Any]:
    """What identifies the cached split: name, size, classes, shape and its contents (a
    streamed split is not hashed: that would read it all)."""
    in_memory = isinstance(split, data_lib.ArraySplit)
    return {
        "name": split.info.name,
        "split": split_name,
        "num_examples": len(split),
        "num_classes": split.info.num_classes,
        "image_shape": list(split.info.image_shape),
        "sha256": fingerprint({"image": split.images, "label": split.labels})
        if in_memory
        else None,
    }


@dataclasses.dataclass
class TeacherCache:
    """A loaded teacher cache.

    Attributes:
        directory: where it was read from.
        meta: the contents of `cache.json`.
        values: `(N, views, K)` logits (K = classes) or top-k values (float16); for a
            language model `(N, 1, T, K)` top-k log-probabilities per position.
        indices: `(N, views, K)` (LM: `(N, 1, T, K)`) int32 class (token) ids of the
            top-k values; None when the cache holds full logits.
    """

    directory: str
    meta: dict[str, Any]
    values: np.ndarray
    indices: np.ndarray | None

    @property
    def step_spec(self) -> dict[str, int]:
        """The cache's augmentation seed, number of views and top-k."""
        return {
            "seed": int(self.meta["seed"]),
            "views": int(self.meta["views"]),
            "top_k": int(self.meta["top_k"]),
        }

    def source(self, steps_per_epoch: int) -> CachedTeacher:
        """The teacher source a train step reads this cache through."""
        spec = self.step_spec
        return CachedTeacher(
            values=self.values,
            indices=self.indices,
            seed=spec["seed"],
            views=spec["views"],
            steps_per_epoch=steps_per_epoch,
            spec={"directory": self.directory, **spec, "teacher": self.meta["teacher"]},
        )


def write_cache(
    teacher: Teacher,
    split: data_lib.ArraySplit,
    out_dir: str,
    *,
    split_name: str = "train",
    top_k: int = 0,
    views: int = 1,
    task: Task | None = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the teacher over every view of every example of `split` and stores its logits
    (for language-model data: its top-k log-probabilities at every position).

    Args:
        teacher: the frozen teacher.
        split: the split to cache (normally the training split).
        out_dir: the cache directory (created; an existing finished cache is refused).
        split_name: the split's name, recorded and checked.
        top_k: keep the k largest logits (float16 values + int32 indices); 0 keeps all
            logits in float32. Language models: the k largest log-probabilities per
            token, k >= 1 (e.g. `LM_TOP_K`).
        views: augmented views per example (1 with no augmentation; always 1 for LMs).
        task: the student's task, whose training augmentation makes the views (image
            translation and flips, or token-id transfer-set views); None: no augmentation
            (`CausalLM()` for language-model data).
        seed: the seed of the views' augmentation keys.
        batch_size: examples per teacher forward (LMs: at most `CausalLM.eval_tokens`
            tokens, as in evaluation).
        progress: show progress (LMs: tokens done and tokens/s).

    Returns:
        The cache's metadata (`cache.json`).
    """
    lm = bool(split.info.causal_lm)
    task = task or (CausalLM() if lm else Classification())
    check_request(split, out_dir, top_k, views, task)
    reads = {"--teacher": teacher.identity.get("workdir")}
    check_workdir(out_dir, "cache", reads)
    mark_workdir(out_dir, "cache", {"seed": seed, "views": views, "top_k": top_k})
    if lm:
        stats: dict[str, Any] = {}
        atomic_write_with(
            os.path.join(out_dir, RECORDS_FILE),
            lambda path: stats.update(
                _write_lm_records(path, teacher, split, top_k, task, batch_size, progress)
            ),
        )
        return _write_meta(out_dir, teacher, split, split_name, top_k, views, seed, task, stats)

    @jax.jit
    def outputs(variables, images_u8, index, view):
        images = task.augment(cache_view_key(seed, view), images_u8, index)
        logits = teacher.model.apply(variables, images, train=False)[0].astype(jnp.float32)
        if top_k:
            values, indices = jax.lax.top_k(logits, top_k)
            return values.astype(jnp.float16), indices.astype(jnp.int32)
        return logits, jnp.zeros((logits.shape[0], 0), jnp.int32)

    def write_records(path: str) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(path, "group_size:1")
        variables = jax.device_put(teacher.variables)
        total = len(split) * views
        bar = tqdm(total=total, desc="cache-teacher", disable=not progress or None, leave=False)

        def forward(batch) -> list[tuple[np.ndarray, np.ndarray]]:  # each view's outputs
            images, index = batch["image"], batch["index"]
            return [jax.device_get(outputs(variables, images, index, v)) for v in range(views)]

        def write(index_R, per_view) -> None:  # records in (example, view) order
            for r, i in enumerate(index_R):
                for v, (values, indices) in enumerate(per_view):
                    record = {"index": int(i), "view": v, "values": values[r]}
                    if top_k:
                        record["indices"] = indices[r]
                    writer.write(serialization.msgpack_serialize(record))

        if split.info.input_kind == "tokens" and isinstance(split, data_lib.ArraySplit):
            # Batches of similar length, cut to it (a view never lengthens its sequence and
            # does not depend on the width): about half the padded cost for sentences.
            held = None  # each view's (values, indices) of every example, in order
            for batch in data_lib.length_sorted_batches(split, batch_size):
                per_view, mask = forward(batch), batch["mask"]
                if held is None:
                    held = [
                        tuple(np.zeros((len(split), *a.shape[1:]), a.dtype) for a in out)
                        for out in per_view
                    ]
                for whole, out in zip(held, per_view, strict=True):
                    for all_rows, rows in zip(whole, out, strict=True):
                        all_rows[batch["index"][mask]] = rows[mask]
                bar.update(int(mask.sum()) * views)
            write(range(len(split)), held)
        else:
            for batch in data_lib.eval_batches(split, batch_size):
                rows = int(batch["mask"].sum())
                write(batch["index"][:rows], forward(batch))
                bar.update(rows * views)
        writer.close()
        bar.close()

    atomic_write_with(os.path.join(out_dir, RECORDS_FILE), write_records)
    return _write_meta(out_dir, teacher, split, split_name, top_k, views, seed, task, {})


def _write_meta(out_dir, teacher, split, split_name, top_k, views, seed, task, extra) -> dict:
    """Writes `cache.json` (last: it marks the cache complete) and returns it."""
    meta = {
        "format": FORMAT,
        "teacher": teacher_identity(teacher),
        "dataset": dataset_identity(split, split_name),
        "top_k": top_k,
        "views": views,
        "seed": seed,
        **task.augment_spec,
        "values_dtype": "float16" if top_k else "float32",
        **extra,
    }
    atomic_write(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=2))
    return meta


def _write_lm_records(
    path: str,
    teacher: Teacher,
    split: data_lib.ArraySplit,
    top_k: int,
    task: CausalLM,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Writes one record per sequence of `split`: the teacher's top-k log-probabilities
    `(T, K)` float16 and their token ids `(T, K)` int32 at each of its `T` positions.

    The teacher's forward runs jit-compiled on `rows` sequences at a time (the last batch
    padded, so one shape compiles); only the `(rows, T, K)` results leave the device.

    Returns:
        What `cache.json` adds for a language model: the values' kind, the mean kept mass
        per target token (`sum_k exp(v_k)`, over the positions the loss counts) and how
        many tokens that mean is over.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    length = int(split.info.image_shape[0])
    rows = min(task.eval_rows(batch_size, split.info.image_shape), len(split))

    @jax.jit
    def topk_log_probs(variables, ids_BT, labels_BT, mask_B):
        logits_BTV = teacher.model.apply(variables, task.prepare(ids_BT), train=False)[0]
        logits_BTV = logits_BTV.astype(jnp.float32)
        top_BTK, ids_BTK = jax.lax.top_k(logits_BTV, top_k)
        log_p_BTK = top_BTK - jax.nn.logsumexp(logits_BTV, axis=-1, keepdims=True)
        keep_BT = task.term_mask(labels_BT, mask_B)
        kept_mass = jnp.sum(jnp.where(keep_BT, jnp.sum(jnp.exp(log_p_BTK), -1), 0.0))
        return log_p_BTK.astype(jnp.float16), ids_BTK.astype(jnp.int32), kept_mass, keep_BT.sum()

    variables = jax.device_put(teacher.variables)
    writer = ArrayRecordWriter(path, "group_size:1")
    meter = _TokenProgress(len(split) * length, enabled=progress)
    kept_mass, kept_tokens = 0.0, 0
    try:
        for batch in data_lib.eval_batches(split, rows):
            out = topk_log_probs(variables, batch["image"], batch["label"], batch["mask"])
            values_BTK, ids_BTK, mass, count = jax.device_get(out)
            kept_mass, kept_tokens = kept_mass + float(mass), kept_tokens + int(count)
            real = int(batch["mask"].sum())
            for r in range(real):
                record = {
                    "index": int(batch["index"][r]),
                    "view": 0,
                    "values": values_BTK[r],
                    "indices": ids_BTK[r],
                }
                writer.write(serialization.msgpack_serialize(record))
            meter.update(real * length)
    finally:
        writer.close()
        meter.close()
    return {
        "values_kind": "log_probs",
        "sequence_length": length,
        "mean_kept_mass": kept_mass / max(kept_tokens, 1),
        "kept_mass_tokens": kept_tokens,
    }


class _TokenProgress:
    """Tokens done and tokens/s on stderr: a tqdm bar on a terminal, else a line at most
    every `every` seconds (a long teacher pass in a log file)."""

    def __init__(self, total: int, enabled: bool, every: float = 30.0):
        self.total, self.done, self.every = total, 0, every
        self.started = self.last = time.time()
        self.enabled = enabled
        tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="cache-teacher", unit="tok", leave=False) if tty else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.time()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            print(
                f"cache-teacher: {self.done}/{self.total} tokens ({rate:.0f} tokens/s, "
                f"~{left:.0f} s left)",
                file=sys.stderr,
                flush=True,
            )
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def ensure_cache(
    config,
    teacher: Teacher,
    out_dir: str,
    *,
    views: int = 1,
    top_k: int = 0,
    progress: bool = False,
) -> float:
    """The teacher's outputs on the training split of `config` (data, student augmentation
    and seed), cached in `out_dir` unless a complete cache is already there (a command
    that resumes reuses it).

    A complete cache is reused only if it is what was asked for: the same teacher,
    dataset and split, augmentation, views and top-k; anything else is refused (a
    `ConfigError` naming what differs), never silently reused or overwritten.

    Returns:
        The seconds spent writing it (0.0 when it was reused).
    """
    from distill_jax.train.inputs import load_data, make_task

    data = load_data(config)
    task = make_task(config, "student", data)
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.isfile(meta_path):
        _check_reuse(meta_path, out_dir, data.train, config, task, teacher, views, top_k)
        return 0.0
    started = time.time()
    write_cache(
        teacher,
        data.train,
        out_dir,
        split_name=config.data.train_split,
        top_k=top_k,
        views=views,
        task=task,
        seed=config.seed,
        batch_size=config.data.eval_batch_size,
        progress=progress,
    )
    return time.time() - started


def _check_reuse(meta_path, out_dir, split, config, task, teacher, views, top_k) -> None:
    """Refuses to reuse a finished cache that is not the one `ensure_cache` was asked for."""
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"teacher cache {meta_path} is unreadable or corrupt: {e}") from None
    check_meta(meta, out_dir, split, config.data.train_split, task=task, teacher=teacher)
    for key, want in (("top_k", top_k), ("views", views), ("seed", config.seed)):
        if key == "seed" and not task.augments:
            continue  # unaugmented views do not depend on the seed
        if meta.get(key) != want:
            raise ConfigError(
                f"teacher cache {out_dir} holds {key} = {meta.get(key)!r}, not the {want!r} "
                f"asked for; remove it or cache into another directory"
            )


def check_request(split, out_dir: str, top_k: int, views: int, task: Task) -> None:
    """Refuses a cache request that cannot work, before anything is written (and, from
    the command line, before the teacher is loaded)."""
    num_classes = split.info.num_classes
    if split.info.causal_lm:
        _check_lm_request(split, top_k, views, task)
    if not 0 <= top_k <= num_classes:
        raise ConfigError(f"--top_k must be in [0, {num_classes}] (0: all logits), got {top_k}")
    if views < 1:
        raise ConfigError(f"--views must be >= 1, got {views}")
    if views > 1 and not task.augments:
        raise ConfigError(
            f"--views {views} needs augmentation (student.train.translate or flip, or "
            f"token_augment): without it every view is the same example"
        )
    if os.path.exists(os.path.join(out_dir, META_FILE)):
        raise ConfigError(f"{out_dir} already holds a teacher cache; choose another --out")


def _check_lm_request(split, top_k: int, views: int, task: Task) -> None:
    """A language-model cache: top-k (k >= 1) log-probabilities, one view, no augmentation."""
    vocab, length, n = split.info.num_classes, int(split.info.image_shape[0]), len(split)
    if top_k == 0:
        full_gb = n * length * vocab * 4 / 1e9
        raise ConfigError(
            f"--top_k 0 (full logits) is refused for language-model data: {vocab} logits per "
            f"token are {full_gb:.1f} GB for these {n} x {length} tokens; keep the top k "
            f"log-probabilities, e.g. --top_k {min(LM_TOP_K, vocab)}"
        )
    if not 1 <= top_k <= vocab:
        raise ConfigError(f"--top_k must be in [1, {vocab}] (the vocabulary), got {top_k}")
    if views != 1:
        raise ConfigError(
            f"--views {views}: a language-model cache holds one view per sequence (its "
            f"tokens are not augmented); use --views 1"
        )
    if not isinstance(task, CausalLM) or task.augments:
        raise ConfigError(
            f"a language-model cache is made without augmentation, with the causal-LM task; "
            f"got {type(task).__name__} (leave the student's train augmentation unset)"
        )


def cache_nbytes(meta: dict[str, Any]) -> int:
    """The bytes a cache occupies in memory once loaded (values + ids), from its meta."""
    n, views, top_k = meta["dataset"]["num_examples"], meta["views"], meta["top_k"]
    per_row = math.prod(_row_shape(meta))
    itemsize = np.dtype(meta["values_dtype"]).itemsize + (4 if top_k else 0)
    return n * views * per_row * itemsize


def _row_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    """One record's values shape: `(K,)`, or `(T, K)` for a language model."""
    k = meta["top_k"] or meta["dataset"]["num_classes"]
    if meta.get("causal_lm"):
        return (int(meta["dataset"]["image_shape"][0]), k)
    return (k,)


def load_cache(directory: str, max_bytes: float | None = None) -> TeacherCache:
    """Reads a whole cache into memory: N x views x K numbers (a language model's:
    N x T x K, about 1 GB for 20k sequences of 128 tokens at K = 64, see the module
    docstring).

    Args:
        max_bytes: refuse a cache that takes more memory than this once loaded (before
            reading its records); None: no limit.

    Raises:
        CheckpointError: no finished cache there, or records that do not match cache.json.
        ConfigError: the cache is larger than `max_bytes`.
    """
    meta_path = os.path.join(directory, META_FILE)
    records_path = os.path.join(directory, RECORDS_FILE)
    if not os.path.isfile(meta_path) or not os.path.isfile(records_path):
        raise CheckpointError(
            f"{directory} holds no finished teacher cache (expected {META_FILE} and "
            f"{RECORDS_FILE} written by `distill-jax cache-teacher`)"
        )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        n, views, top_k = meta["dataset"]["num_examples"], meta["views"], meta["top_k"]
        row_shape, nbytes = _row_shape(meta), cache_nbytes(meta)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"teacher cache {meta_path} is unreadable or corrupt: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown cache format {meta.get('format')!r}")
    if max_bytes is not None and nbytes > max_bytes:
        shape = " x ".join(str(d) for d in (n, views, *row_shape))
        raise ConfigError(
            f"teacher cache {directory} takes {nbytes / 1e9:.2f} GB once loaded ({shape} "
            f"values and ids), more than distill.cache_max_gb = {max_bytes / 1e9:g}: the "
            f"whole cache is placed on every device; raise distill.cache_max_gb, or cache "
            f"fewer examples (data.train_split) or a smaller --top_k"
        )
    records = _read_records(directory, records_path, n * views)
    values = np.zeros((n, views, *row_shape), np.dtype(meta["values_dtype"]))
    indices = np.zeros((n, views, *row_shape), np.int32) if top_k else None
    for position, raw in records:
        try:
            record = serialization.msgpack_restore(raw)
            i, v = int(record["index"]), int(record["view"])
            values[i, v] = record["values"]
            if indices is not None:
                indices[i, v] = record["indices"]
        except Exception as e:  # noqa: BLE001 (any decoding failure means corruption)
            raise CheckpointError(
                f"teacher cache {directory} is corrupt at record {position}: {e}"
            ) from None
        if position != i * views + v:
            raise CheckpointError(
                f"teacher cache {directory} is corrupt: record {position} holds example "
                f"{i} view {v}"
            )
    return TeacherCache(os.path.abspath(directory), meta, values, indices)


def _read_records(directory: str, path: str, expected: int, chunk: int = 512):
    """`(position, record)` for every record of a cache's array_record file, read `chunk`
    records at a time (the raw bytes of a large LM cache are never all held at once); a
    truncated or damaged file is one `CheckpointError` (closing a reader of a damaged file
    can raise too: that second error never replaces the first)."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = None
    try:
        reader = ArrayRecordReader(path)
        count = reader.num_records()
        if count != expected:
            raise CheckpointError(
                f"teacher cache {directory} is corrupt: {count} records, cache.json "
                f"promises {expected} (examples x views)"
            )
        for start in range(0, count, chunk):
            raws = reader.read(start, min(start + chunk, count))
            yield from enumerate(raws, start)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 (the reader raises assorted errors on damage)
        message = " ".join(str(e).split())[:200]
        raise CheckpointError(f"teacher cache {directory} is corrupt: {message}") from None
    finally:
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()


def check_cache(
    cache: TeacherCache,
    split: data_lib.ArraySplit,
    split_name: str,
    *,
    task: Task,
    teacher: Teacher | None = None,
    init_from: str | None = None,
) -> None:
    """Refuses a cache made for another dataset, split, augmentation or teacher.

    Args:
        teacher: the run's teacher, if it has one: the cache must hold its outputs
            (SHA-256 of its variables).
        init_from: without a teacher, the pretrained checkpoint the config names as the
            teacher (`teacher.model.init_from`), checked by name against the cache's.
    """
    check_meta(cache.meta, cache.directory, split, split_name, task=task, teacher=teacher)
    made_from = (cache.meta["teacher"].get("model") or {}).get("init_from")
    if teacher is None and init_from and made_from != init_from:
        raise ConfigError(
            f"teacher cache {cache.directory} was made with teacher "
            f"{made_from or cache.meta['teacher']['workdir']!r}, but teacher.model.init_from "
            f"is {init_from!r}; re-cache with that teacher or drop teacher.model.init_from"
        )


def check_meta(
    meta: dict[str, Any],
    directory: str,
    split: data_lib.ArraySplit,
    split_name: str,
    *,
    task: Task,
    teacher: Teacher | None = None,
) -> None:
    """`check_cache` on a cache's `cache.json` alone (no records read)."""
    where = f"teacher cache {directory}"
    want = dataset_identity(split, split_name)
    got = meta["dataset"]
    for key in ("name", "split", "num_examples", "num_classes", "image_shape", "sha256"):
        if key == "sha256" and None in (got[key], want[key]):
            continue  # a streamed split is not hashed
        if got[key] != want[key]:
            what = "contents" if key == "sha256" else key
            raise ConfigError(
                f"{where} was made for dataset '{got['name']}' split '{got['split']}' "
                f"({got['num_examples']} examples); this run trains on '{want['name']}' split "
                f"'{want['split']}' ({want['num_examples']} examples): the {what} differ"
            )
    for key, value in task.augment_spec.items():
        if meta.get(key) != value:
            raise ConfigError(
                f"{where} holds views made with {key}={meta.get(key)!r}, but the student "
                f"trains with {key}={value!r}; set student.train.{key} to match or re-cache"
            )
    if "token_augment" in meta and "token_augment" not in task.augment_spec:
        raise ConfigError(
            f"{where} holds token_augment views, but the student trains without "
            f"student.train.token_augment; set it as the cache was made or re-cache"
        )
    if teacher is not None:
        ident = teacher_identity(teacher)
        if ident["sha256"] != meta["teacher"]["sha256"]:
            raise ConfigError(
                f"{where} was made with another teacher ({_describe(meta['teacher'])}), not "
                f"{_describe(ident)}: its weights differ"
            )


def _describe(ident: dict[str, Any]) -> str:
    """A teacher's identity for messages: its workdir and step, or its checkpoint."""
    init_from = (ident.get("model") or {}).get("init_from")
    if ident.get("workdir") is None and init_from:
        return f"pretrained {init_from!r}"
    return f"{ident.get('workdir')} at step {ident.get('step')}"
