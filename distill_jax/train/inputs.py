"""What a run reads: its dataset splits and its (frozen) teacher.

`load_data` loads a config's three splits once per process; `load_teacher` restores a
finished `train` run read-only; `pretrained_teacher` takes a language-model teacher
straight from its checkpoint (`teacher.model.init_from`, e.g. `smollm2-135m-q4`), no
training run needed; `make_task` picks the task from the dataset (classification,
tagging, causal LM); `teacher_source` turns the config's `distill` section and a teacher
into the source a train step reads the teacher's outputs from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distill_jax import data as data_lib
from distill_jax import on_policy
from distill_jax.config import teacher_checkpoint_epoch
from distill_jax.data.text_augment import TokenAugment
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.models import create_model, validate_model_config
from distill_jax.tasks import CausalLM, Classification, Tagging, Task
from distill_jax.teachers import (
    ExposedTeacher,
    NoTeacher,
    OnlineTeacher,
    Teacher,
    TeacherSource,
)
from distill_jax.train.checkpointing import NO_CHECKSUM, Checkpointer, has_checkpoint
from distill_jax.train.teacher_cache import check_cache, fingerprint, load_cache
from distill_jax.train.workdir import CONFIG_FILE


@dataclasses.dataclass
class Data:
    """The three splits of a run, loaded once into memory (train: read lazily when the
    config streams it)."""

    train: data_lib.ArraySplit | data_lib.SourceSplit
    validation: data_lib.ArraySplit
    test: data_lib.ArraySplit

    @property
    def info(self) -> data_lib.DatasetInfo:
        return self.train.info


@functools.lru_cache(maxsize=4)
def _load_data_cached(
    name,
    data_dir,
    download,
    train,
    validation,
    test,
    stream,
    unlabelled,
    unlabelled_split,
    builder=None,
) -> Data:
    del builder  # part of the key only: arrays registered again are a new builder
    load = functools.partial(data_lib.load_split, name, data_dir=data_dir, download=download)
    data = Data(
        train=load(train, in_memory=not stream), validation=load(validation), test=load(test)
    )
    if unlabelled:
        data.train = _with_unlabelled(data.train, unlabelled, unlabelled_split, data_dir)
    return data


def _with_unlabelled(
    train: data_lib.ArraySplit, names: tuple[str, ...], split: str, data_dir: str | None
) -> data_lib.ArraySplit:
    """The training split with the unlabelled datasets' rows appended: label -1 per row
    for classification; for token classification (NER) a row of tags `(L,)` with
    `ner.UNLABELLED` (-2) on each word's first sub-token and -1 elsewhere, which only a
    word-aligned dataset (`data.is_word_aligned`, e.g. `healthtweets`) provides."""
    info = train.info
    where = f"data.unlabelled ({', '.join(names)})"
    if not isinstance(train, data_lib.ArraySplit):
        raise ConfigError(f"{where} needs the training split in memory, not data.pipeline=stream")
    if info.input_kind != "tokens":
        raise ConfigError(f"{where} adds token ids; dataset '{info.name}' holds images")
    if info.per_token:
        for name in names:
            if not data_lib.is_word_aligned(name):
                aligned = sorted(
                    n for n in data_lib.UNLABELLED_DATASETS if data_lib.is_word_aligned(n)
                )
                raise ConfigError(
                    f"data.unlabelled '{name}' is not word-aligned, so its words' positions "
                    f"for the teacher's tags are unknown; dataset '{info.name}' is token "
                    f"classification: use {', '.join(aligned)}"
                )
    images, labels = [train.images], [train.labels]
    for name in names:
        if info.per_token:
            ids, tags = data_lib.load_unlabelled_tags(name, data_dir, split)
        else:
            ids = data_lib.load_unlabelled(name, data_dir, split)
        if ids.shape[1:] != tuple(info.image_shape):
            raise ConfigError(
                f"data.unlabelled '{name}' holds sequences of {ids.shape[1]} tokens, dataset "
                f"'{info.name}' of {info.image_shape[0]}; use the same length configuration"
            )
        images.append(ids.astype(train.images.dtype))
        labels.append(tags if info.per_token else np.full((len(ids),), -1, np.int32))
    images, labels = np.concatenate(images), np.concatenate(labels)
    splits = {**info.splits, "unlabelled": len(labels) - len(train.labels)}
    return data_lib.ArraySplit(images, labels, dataclasses.replace(info, splits=splits))


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Loads (and caches in this process) the train/validation/test splits of a config,
    with `data.unlabelled` appended to the training split."""
    d = config.data
    stream = d.pipeline == "stream"
    args = (
        d.name,
        d.data_dir,
        d.download,
        d.train_split,
        d.validation_split,
        d.test_split,
        stream,
        tuple(d.unlabelled),
        d.unlabelled_split,
        data_lib.EMBEDDED_DATASETS.get(d.name.partition("/")[0]),
    )
    if jax.process_count() == 1:
        return _load_data_cached(*args)
    # Several processes: process 0 prepares the dataset (if needed) before the others
    # read it, so they never race to write the same files.
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        _load_data_cached(*args)
    multihost_utils.sync_global_devices("distill_jax.load_data")
    return _load_data_cached(*args)


# ---------------------------------------------------------------------------- teachers


def load_run_split(spec: dict[str, Any], split: str, data_dir: str | None, where: str = ""):
    """A split (`test`, `validation`, `train`) of the dataset a run was trained on.

    The run's recorded data dir is used only to read a dataset already prepared there;
    anything that must be prepared goes where the user says (`data_dir`, else the
    default), never where a (possibly foreign) config.json points.

    Args:
        spec: the run's spec (its config.json).
        where: the file the spec came from, for messages.
    """
    from distill_jax import config as config_lib

    name = (spec.get("data") or {}).get("name", "")
    data_lib.check_known_dataset(name, where)
    recorded = spec["data"].get("data_dir")
    if data_dir is None and recorded and data_lib.is_prepared(name, recorded):
        data_dir = recorded
    data_cfg = config_lib.from_dict({"data": dict(spec["data"], data_dir=data_dir)}).data
    return data_lib.load_split(
        data_cfg.name, data_cfg[f"{split}_split"], data_cfg.data_dir, data_cfg.download
    )


def load_teacher(
    teacher_dir: str, which: str = "latest", what: str = "teacher", member: int | None = None
) -> Teacher:
    """Restores a teacher, read-only, from the workdir of a `train` run.

    Args:
        teacher_dir: a workdir written by `distill-jax train` (config.json + checkpoints/).
        which: `latest`, `best` (by validation accuracy) or `"epoch:N"` (the end of
            epoch N, kept by `checkpoint.keep_epochs`) checkpoint.
        what: how the directory is named in error messages.
        member: of a run of vmapped students (`vmap.students`), which one (0-based).

    Raises:
        CheckpointError: no such run, no checkpoint, weights that do not fit the
            architecture recorded in its config, or a vmapped run without `member` (or a
            `member` it does not hold).
    """
    teacher_dir = os.path.abspath(teacher_dir)
    cfg_path = os.path.join(teacher_dir, CONFIG_FILE)
    ckpt_dir = os.path.join(teacher_dir, "checkpoints")
    if not os.path.isfile(cfg_path) or not has_checkpoint(ckpt_dir):
        raise CheckpointError(
            f"{what} directory {teacher_dir} holds no distill-jax checkpoint "
            f"(expected {CONFIG_FILE} and checkpoints/<step>/ written by `distill-jax train`)"
        )
    try:
        with open(cfg_path) as f:
            spec = json.load(f)
        model_cfg = spec["model"]
        validate_model_config(model_cfg, f"{cfg_path}: model")  # a config read from disk
    except (OSError, ValueError, KeyError, TypeError) as e:
        what_is_wrong = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(
            f"{what} directory {teacher_dir}: {CONFIG_FILE} is not a distill-jax run config "
            f"({what_is_wrong}); was it written by `distill-jax train`?"
        ) from None
    step, raw, metadata = _newest_intact(Checkpointer(ckpt_dir, read_only=True), which, what)
    where = f"{what} directory {teacher_dir}"
    raw = _one_member(raw, len(spec.get("students") or []), member, where)
    num_classes, image_shape = metadata["num_classes"], tuple(metadata["image_shape"])
    model = create_model(model_cfg, num_classes, dtype=spec.get("dtype", "float32"))
    variables = {"params": raw["params"]}
    if raw.get("batch_stats"):
        variables["batch_stats"] = raw["batch_stats"]
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False)
    )
    got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), variables)
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), dict(expected))
    if got != want:
        raise CheckpointError(
            f"teacher checkpoint {ckpt_dir}/{step} does not match its architecture "
            f"{model_cfg}: parameter shapes differ"
        )
    identity = {
        "workdir": teacher_dir,
        "step": int(step),
        "model": model_cfg,
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "dataset": spec.get("data", {}).get("name"),
        **({} if member is None else {"member": member}),
        **({"checkpoint": which} if which not in ("latest", "best") else {}),
        # Its exact weights: a student resumed after its teacher was retrained in the
        # same directory is refused (workdir.prepare_workdir).
        "sha256": fingerprint(variables),
    }
    return Teacher(model=model, variables=jax.device_get(variables), identity=identity)


def _one_member(raw: dict[str, Any], students: int, member: int | None, where: str) -> dict:
    """The variables of student `member` of a checkpoint of `students` stacked ones (0: a
    single model, which takes no `member`)."""
    if member is None and students:
        raise CheckpointError(
            f"{where} holds {students} vmapped students: choose one (member 0..{students - 1})"
        )
    if member is None:
        return raw
    if not 0 <= member < students:
        held = f"only students 0..{students - 1}" if students else "one model, not vmapped students"
        raise CheckpointError(f"{where} holds {held}; member {member} does not exist")
    pick = lambda tree: jax.tree.map(lambda x: x[member], tree)  # noqa: E731
    return {**raw, **{k: pick(raw[k]) for k in ("params", "batch_stats") if raw.get(k)}}


def _newest_intact(ckpt: Checkpointer, which: str, what: str) -> tuple[int, Any, dict]:
    """The step to load (`best`, else the latest) or, when its files are damaged or
    unverified, the newest intact step before it (with a warning)."""
    steps = list(reversed(ckpt.all_steps()))
    epoch = teacher_checkpoint_epoch(which, f"{what} checkpoint")
    if epoch is not None:
        return _epoch_step(ckpt, steps, epoch, what)
    if which == "best":
        try:
            best = ckpt.best_step()
        except Exception:  # noqa: BLE001 (a damaged step's metadata: fall back below)
            best = None
        steps = ([best] if best is not None else []) + [s for s in steps if s != best]
    step, raw, metadata, problems = ckpt.first_intact(steps)
    if step is not None:
        if problems:
            first = next(iter(problems))
            print(
                f"distill-jax: warning: {what} checkpoint step {first} is not usable "
                f"({problems[first]}); using step {step}",
                file=sys.stderr,
            )
        return step, raw, metadata
    unverified = [s for s, p in problems.items() if p == NO_CHECKSUM]
    if unverified:
        raise CheckpointError(
            f"{what} checkpoint {ckpt.directory}/{unverified[0]} {NO_CHECKSUM}, and no "
            f"step is intact; rerun the `distill-jax train` command that wrote it to "
            f"finish it (or restore its files)"
        )
    listed = "; ".join(f"step {s}: {p}" for s, p in problems.items())
    raise CheckpointError(
        f"{what} directory {os.path.dirname(ckpt.directory)} has no intact checkpoint "
        f"({listed}); restore its files or retrain it"
    )


def _epoch_step(ckpt: Checkpointer, steps: list[int], epoch: int, what: str):
    """The checkpoint ending epoch `epoch` (`teacher.checkpoint = "epoch:N"`); never another
    step in its place: a teacher stopped at another epoch is another teacher."""
    where = f"{what} directory {os.path.dirname(ckpt.directory)}"
    per_epoch = None
    for s in steps:
        try:
            per_epoch = ckpt.metadata(s).get("steps_per_epoch")
        except Exception:  # noqa: BLE001 (a damaged step: read another's metadata)
            continue
        break
    if not per_epoch:
        raise CheckpointError(
            f"{where}: its checkpoints do not record their epoch (written before "
            f"checkpoint.keep_epochs existed); retrain it to distil from epoch {epoch}"
        )
    step = epoch * per_epoch
    if step not in steps:
        kept = sorted(s // per_epoch for s in steps if s % per_epoch == 0)
        raise CheckpointError(
            f"{where} kept no checkpoint at the end of epoch {epoch} (step {step}); it holds "
            f"epochs {kept or 'none'}: train it with checkpoint.keep_epochs=[{epoch}]"
        )
    found, raw, metadata, problems = ckpt.first_intact([step])
    if found is None:
        raise CheckpointError(f"{what} checkpoint {ckpt.directory}/{step}: {problems[step]}")
    return step, raw, metadata


def teacher_in_dtype(teacher: Teacher, dtype: str) -> Teacher:
    """The teacher computing in the run's dtype (mixed precision distils in bfloat16).

    In bfloat16 its parameters are stored in bfloat16 too, halving the teacher's memory
    beside the student: a frozen teacher never accumulates updates, and its layers cast
    their parameters to the compute dtype anyway, so its outputs are unchanged. BatchNorm
    statistics stay in float32.
    """
    if teacher.model.dtype == dtype:
        return teacher
    model = create_model(teacher.identity["model"], teacher.identity["num_classes"], dtype=dtype)
    variables = dict(teacher.variables)
    if dtype == "bfloat16":
        variables["params"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables["params"])
    return dataclasses.replace(teacher, model=model, variables=variables)


def _teacher_source_name(teacher: Teacher, key: str) -> str:
    """Where a teacher came from, for messages: its workdir or its pretrained checkpoint."""
    ident = teacher.identity
    if ident.get("workdir"):
        return f"{key} {ident['workdir']}"
    return f"teacher.model.init_from {ident.get('pretrained')!r}"


def check_teacher(teacher: Teacher, info: data_lib.DatasetInfo, key: str = "--teacher") -> None:
    """Refuses a teacher whose classes (an LM's vocabulary) or input shape do not fit the
    student's dataset."""
    if info.causal_lm and teacher.identity["num_classes"] != info.num_classes:
        raise ConfigError(
            f"teacher/data vocabulary mismatch: the teacher ({_teacher_source_name(teacher, key)}) "
            f"predicts {teacher.identity['num_classes']} tokens, dataset '{info.name}' is "
            f"tokenised into {info.num_classes}; distil on text tokenised by the teacher's "
            f"tokenizer"
        )
    if teacher.identity["num_classes"] != info.num_classes:
        raise ConfigError(
            f"teacher/student class-count mismatch: the teacher ({key} "
            f"{teacher.identity['workdir']}) has {teacher.identity['num_classes']} classes, "
            f"dataset '{info.name}' has {info.num_classes}"
        )
    if tuple(teacher.identity["image_shape"]) != tuple(info.image_shape):
        raise ConfigError(
            f"teacher/student input mismatch: the teacher was trained on images of shape "
            f"{tuple(teacher.identity['image_shape'])}, dataset '{info.name}' has "
            f"{tuple(info.image_shape)}"
        )


def check_vocab(
    config: ml_collections.ConfigDict,
    role: str,
    info: data_lib.DatasetInfo,
    teacher: Teacher | None,
) -> None:
    """Refuses, before anything is built, a language-model student whose vocabulary differs
    from its teacher's: the distillation terms compare next-token distributions position
    by position over one vocabulary.

    Raises:
        ConfigError: naming both sizes.
    """
    if not info.causal_lm or teacher is None:
        return
    teacher_vocab = int(getattr(teacher.model, "vocab_size", teacher.identity["num_classes"]))
    student_vocab = int(config[role].model.to_dict().get("vocab_size", info.num_classes))
    if student_vocab != teacher_vocab:
        raise ConfigError(
            f"student/teacher vocabulary mismatch: {role}.model has a vocabulary of "
            f"{student_vocab} tokens, the teacher ({_teacher_source_name(teacher, '--teacher')}) "
            f"{teacher_vocab}; a student distils the teacher's next-token distributions, so "
            f"both must share its tokenizer (leave vocab_size unset to take the data's "
            f"{info.num_classes})"
        )


def pretrained_teacher(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> Teacher:
    """The teacher of a language-model run straight from its pretrained checkpoint:
    `teacher.model` with `init_from` (a `.gguf` file, a Hugging Face Llama directory or a
    known name such as `smollm2-135m-q4`) and its weights as they are, no training run.

    Raises:
        ConfigError: the data is not language-model data, or `teacher.model` has no
            `init_from` (the message names the other ways to give a teacher).
        CheckpointError: see `hf_llama.init_from_checkpoint`.
    """
    model_cfg = config.teacher.model.to_dict()
    if not info.causal_lm or not model_cfg.get("init_from"):
        extra = " or (language-model data) teacher.model.init_from" if info.causal_lm else ""
        raise ConfigError(
            f"distill needs a teacher: --teacher DIR, teacher.workdir or --teacher_cache{extra}"
        )
    model = create_model(model_cfg, info.num_classes)
    if not hasattr(model, "initial_params"):
        raise ConfigError(
            f"teacher.model {model_cfg['name']!r} cannot load a pretrained checkpoint "
            f"(init_from); pass --teacher DIR"
        )
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *info.image_shape)), train=False)
    )
    variables = {"params": model.initial_params(shapes["params"])}
    identity = {
        "workdir": None,
        "pretrained": model_cfg["init_from"],
        "step": 0,
        "model": model_cfg,
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "dataset": None,
        "sha256": fingerprint(variables),
    }
    return Teacher(model=model, variables=variables, identity=identity)


def _word_embeddings(checkpoint: str) -> np.ndarray:
    """The `(V, D)` word-piece embedding table of a BERT checkpoint (name or directory)."""
    from distill_jax.models import hf_bert

    return hf_bert.load_params(checkpoint)[1]["word_embeddings"]["embedding"]


def make_task(config: ml_collections.ConfigDict, role: str, data: Data) -> Task:
    """The run's task: `CausalLM` for language-model data (`DatasetInfo.task`), `Tagging`
    for a dataset with a tag per token (NER), else `Classification` with its training
    views (`role.train` augmentation) and whether the training split holds unlabelled
    rows; refuses augmentation of the wrong input kind."""
    train = config[role].train
    info = data.info
    tokens = train.token_augment
    token_aug = any(tokens[k] for k in ("mask", "replace", "ngram"))
    if info.causal_lm:
        _check_causal_lm(config, role, info, token_aug)
        return CausalLM()
    if info.per_token:
        _check_tagging(config, role, info, token_aug)
        return Tagging(
            tag_names=info.class_names,
            ece_bins=config.eval.ece_bins,
            unlabelled=bool(config.data.unlabelled),
        )
    if info.input_kind == "tokens" and (train.translate or train.flip):
        raise ConfigError(
            f"{role}.train.translate and {role}.train.flip shift and mirror images; dataset "
            f"'{info.name}' holds token ids, so set them to 0 and False"
        )
    if info.input_kind != "tokens" and token_aug:
        raise ConfigError(
            f"{role}.train.token_augment masks and replaces words; dataset '{info.name}' "
            f"holds images, so leave its mask, replace and ngram at 0"
        )
    if info.input_kind != "tokens" and config.data.length_bucket:
        raise ConfigError(
            f"data.length_bucket cuts batches of token ids to their length; dataset "
            f"'{info.name}' holds images, so leave it at 0"
        )
    data_dir = data_lib.resolve_data_dir(config.data.data_dir)
    return Classification(
        translate=train.translate,
        flip=train.flip,
        ece_bins=config.eval.ece_bins,
        tokens=TokenAugment.from_config(tokens, data_dir, _word_embeddings) if token_aug else None,
        unlabelled=bool(config.data.unlabelled),
    )


def _refuse_unsupported(
    config, role: str, token_aug: bool, specific: dict[str, bool], task: str
) -> None:
    """Refuses, by its key, the first option a token-level task does not support: token
    augmentation, image augmentation, the task's `specific` ones, and pmap (under pmap
    each device averages over its own tokens and the means are averaged: not the global
    token mean when devices hold different numbers of them)."""
    unsupported = {
        f"{role}.train.token_augment": token_aug,
        f"{role}.train.translate / flip": bool(config[role].train.translate)
        or bool(config[role].train.flip),
        **specific,
        "parallel.strategy 'pmap'": config.parallel.strategy == "pmap",
    }
    for key, used in unsupported.items():
        if used:
            raise ConfigError(f"{key} is not supported for {task}; leave it at its default")


def _check_tagging(config, role: str, info: data_lib.DatasetInfo, token_aug: bool) -> None:
    """What token classification does not support (yet): each refused by its key.

    `data.unlabelled` is supported with word-aligned datasets (`_with_unlabelled` refuses
    the others when the data is loaded; a run without a teacher is refused by
    `setup._check_label_free`, as for classification)."""
    specific = {
        "data.length_bucket": bool(config.data.length_bucket),
        "distill.cache": bool(config.distill.cache),
    }
    task = f"token classification (dataset '{info.name}' has a tag per token)"
    _refuse_unsupported(config, role, token_aug, specific, task)


def _check_causal_lm(config, role: str, info: data_lib.DatasetInfo, token_aug: bool) -> None:
    """What language-model data does not support (yet): each refused by its key.

    Robust training and attacks are refused by their own checks (token ids are discrete);
    latency is measured at batch 1 (`CausalLM.latency_batch_size`)."""
    specific = {
        # Packed sequences are full length: there is no padding to cut.
        "data.length_bucket": bool(config.data.length_bucket),
        "data.unlabelled": bool(config.data.unlabelled),
        "distill.exposure other than 'full'": config.distill.exposure != "full",
    }
    task = f"causal language modelling (dataset '{info.name}' holds next-token targets)"
    _refuse_unsupported(config, role, token_aug, specific, task)


def teacher_source(
    config: ml_collections.ConfigDict,
    role: str,
    data: Data,
    teacher: Teacher | None,
    steps_per_epoch: int,
    task: Classification,
) -> TeacherSource:
    """Where the step reads the teacher's outputs: a cache (`distill.cache`), the online
    teacher, or none, seen through `distill.exposure`; a cache or an exposure that does
    not fit the run is refused here. `distill.on_policy` (language models) makes it the
    source of generated sequences (`on_policy.OnPolicyTeacher`)."""
    if on_policy.enabled(config.distill.on_policy):
        return _generating_source(config, role, data, teacher)
    exposure = config.distill.exposure
    if not config.distill.cache:
        if teacher is None:
            if exposure != "full":
                hint = (
                    "pass --teacher DIR (or distill.cache)"
                    if role == "student"
                    else "it is for a student distilled from a teacher (distill-jax distill)"
                )
                raise ConfigError(
                    f"distill.exposure = {exposure!r} limits what a student sees of a "
                    f"teacher, and this {role} trains alone: {hint}"
                )
            return NoTeacher()
        source = OnlineTeacher(teacher_in_dtype(teacher, config.dtype))
    else:
        if role != "student":
            raise ConfigError("distill.cache (a teacher cache) is for distilling the student")
        cache = load_cache(config.distill.cache, max_bytes=config.distill.cache_max_gb * 1e9)
        init_from = config.teacher.model.get("init_from") if data.info.causal_lm else None
        check_cache(
            cache,
            data.train,
            config.data.train_split,
            task=task,
            teacher=teacher,
            init_from=init_from,
        )
        source = cache.source(steps_per_epoch)
        if exposure != "full" and cache.meta["top_k"]:
            raise ConfigError(
                f"distill.exposure = {exposure!r} needs the teacher's full logits; this "
                f"cache keeps the top {cache.meta['top_k']} only (cache-teacher --top_k 0 "
                f"stores all; distill.exposure = 'top:K' exposes the top K)"
            )
    return source if exposure == "full" else ExposedTeacher(source, exposure)


def _generating_source(config, role: str, data: Data, teacher: Teacher | None) -> TeacherSource:
    """On-policy / sequence-level distillation's source, refused (one line) where it
    cannot run."""
    v = config.vmap
    students = v.students * max(len(v.alpha), 1) * max(len(v.temperature), 1)
    on_policy.check_fit(
        config.distill.on_policy,
        role=role,
        info=data.info,
        teacher=teacher,
        student_model=create_model(config[role].model, data.info.num_classes),
        cache=config.distill.cache,
        vmapped=students * max(len(v.learning_rate), 1) > 1,
    )
    return on_policy.make_source(config.distill.on_policy, teacher_in_dtype(teacher, config.dtype))
