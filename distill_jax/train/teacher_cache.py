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

The records are written to a temporary name and renamed, with `cache.json` last: a
directory without `cache.json` is an unfinished cache and is never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from distill_jax import data as data_lib
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.report import atomic_write, atomic_write_with
from distill_jax.tasks import Classification
from distill_jax.teachers import CachedTeacher, Teacher, cache_view_key
from distill_jax.train.workdir import check_workdir, mark_workdir

META_FILE = "cache.json"
RECORDS_FILE = "teacher_outputs.array_record"
FORMAT = 1


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
        values: `(N, views, K)` logits (K = classes) or top-k values (float16).
        indices: `(N, views, K)` int32 class indices of the top-k values; None when the
            cache holds full logits.
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
    task: Classification | None = None,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the teacher over every view of every example of `split` and stores its logits.

    Args:
        teacher: the frozen teacher.
        split: the split to cache (normally the training split).
        out_dir: the cache directory (created; an existing finished cache is refused).
        split_name: the split's name, recorded and checked.
        top_k: keep the k largest logits (float16 values + int32 indices); 0 keeps all
            logits in float32.
        views: augmented views per example (1 with no augmentation).
        task: the student's task, whose training augmentation makes the views (image
            translation and flips, or token-id transfer-set views); None: no augmentation.
        seed: the seed of the views' augmentation keys.
        batch_size: examples per teacher forward.
        progress: show a progress bar.

    Returns:
        The cache's metadata (`cache.json`).
    """
    task = task or Classification()
    _check_request(split, out_dir, top_k, views, task)
    reads = {"--teacher": teacher.identity.get("workdir")}
    check_workdir(out_dir, "cache", reads)
    mark_workdir(out_dir, "cache", {"seed": seed, "views": views, "top_k": top_k})

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
    meta = {
        "format": FORMAT,
        "teacher": teacher_identity(teacher),
        "dataset": dataset_identity(split, split_name),
        "top_k": top_k,
        "views": views,
        "seed": seed,
        **task.augment_spec,
        "values_dtype": "float16" if top_k else "float32",
    }
    # Written last: a cache.json marks the cache complete.
    atomic_write(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=2))
    return meta


def ensure_cache(
    config, teacher: Teacher, out_dir: str, *, views: int = 1, top_k: int = 0
) -> float:
    """The teacher's outputs on the training split of `config` (data, student augmentation
    and seed), cached in `out_dir` unless a complete cache is already there (a command
    that resumes reuses it; a run reading it checks that it fits).

    Returns:
        The seconds spent writing it (0.0 when it was reused).
    """
    import time

    from distill_jax.train.inputs import load_data, make_task

    if os.path.isfile(os.path.join(out_dir, META_FILE)):
        return 0.0
    started = time.time()
    data = load_data(config)
    write_cache(
        teacher,
        data.train,
        out_dir,
        split_name=config.data.train_split,
        top_k=top_k,
        views=views,
        task=make_task(config, "student", data),
        seed=config.seed,
        batch_size=config.data.eval_batch_size,
        progress=False,
    )
    return time.time() - started


def _check_request(split, out_dir: str, top_k: int, views: int, task: Classification):
    """Refuses a cache request that cannot work, before anything is written."""
    num_classes = split.info.num_classes
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


def load_cache(directory: str) -> TeacherCache:
    """Reads a whole cache into memory (it is small: N x views x K numbers).

    Raises:
        CheckpointError: no finished cache there, or records that do not match cache.json.
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
        k = top_k or meta["dataset"]["num_classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"teacher cache {meta_path} is unreadable or corrupt: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown cache format {meta.get('format')!r}")
    records = _read_records(directory, records_path, n * views)
    values = np.zeros((n, views, k), np.dtype(meta["values_dtype"]))
    indices = np.zeros((n, views, k), np.int32) if top_k else None
    for position, raw in enumerate(records):
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


def _read_records(directory: str, path: str, expected: int) -> list[bytes]:
    """All records of a cache's array_record file; a truncated or damaged file is one
    `CheckpointError` (closing a reader of a damaged file can raise too: that second
    error never replaces the first)."""
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
        return reader.read_all()
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
    task: Classification,
    teacher: Teacher | None = None,
) -> None:
    """Refuses a cache made for another dataset, split, augmentation or teacher."""
    meta = cache.meta
    where = f"teacher cache {cache.directory}"
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
                f"{where} was made with another teacher ({meta['teacher']['workdir']} at "
                f"step {meta['teacher']['step']}), not {ident['workdir']} at step "
                f"{ident['step']}: its weights differ"
            )
