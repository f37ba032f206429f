"""The training loop shared by `train` (a model alone) and `distill` (student + teacher).

`fit(config, workdir, role=...)` is importable from notebooks and tests. It

1. resolves data, model, optimizer and parallel strategy, and checks teacher/student
   compatibility -- all before any file in `workdir` is written;
2. restores the latest checkpoint in `workdir`, if there is one;
3. runs the jitted (or pmapped) step with a progress bar, logging train metrics to
   `metrics.jsonl` one log window late (so the device never waits for the host), and
   validating every `eval.every_epochs` epochs;
4. saves checkpoints every `checkpoint.every_steps` steps, after each validation (the
   best one is kept) and at the end;
5. evaluates on the test split and returns the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shutil
import signal
import sys
import threading
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from distill_jax import config as config_lib
from distill_jax import data as data_lib
from distill_jax import faults
from distill_jax.compress.prune import PruneSchedule, init_masks
from distill_jax.errors import CheckpointError, ConfigError, DivergenceError, Preempted
from distill_jax.evaluation import Evaluator, model_summary
from distill_jax.models import create_model
from distill_jax.parallel import make_strategy
from distill_jax.report import summarize
from distill_jax.train.checkpointing import Checkpointer, has_checkpoint
from distill_jax.train.optim import make_optimizer
from distill_jax.train.state import (
    Teacher,
    TrainState,
    create_student_states,
    create_train_state,
)
from distill_jax.train.steps import frozen_inputs, make_train_step
from distill_jax.train.teacher_cache import TeacherCache, check_cache, load_cache

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# data.pipeline = "auto" keeps a training split up to this size resident on the device.
RESIDENT_MAX_BYTES = 1 << 30


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
def _load_data_cached(name, data_dir, download, train, validation, test, stream) -> Data:
    load = functools.partial(data_lib.load_split, name, data_dir=data_dir, download=download)
    return Data(
        train=load(train, in_memory=not stream), validation=load(validation), test=load(test)
    )


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Loads (and caches in this process) the train/validation/test splits of a config."""
    d = config.data
    stream = d.pipeline == "stream"
    args = (d.name, d.data_dir, d.download, d.train_split, d.validation_split, d.test_split, stream)
    if jax.process_count() == 1:
        return _load_data_cached(*args)
    # Several processes: process 0 prepares the dataset (if needed) before the others
    # read it, so they never race to write the same files.
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        _load_data_cached(*args)
    multihost_utils.sync_global_devices("distill_jax.load_data")
    return _load_data_cached(*args)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        workdir: the run's directory.
        model: the trained module (inference form, no pmap axis).
        variables: its trained variables.
        test: test-split metrics (plus `params`, `flops_per_example`, latency).
        history: the validation records of metrics.jsonl.
        steps: total optimizer steps.
        start_step: the step training started from (> 0 when resumed from a checkpoint).
        students: vmapped runs: per student its seed, alpha, temperature, learning rate
            and test metrics; None for a single run.
    """

    workdir: str
    model: nn.Module
    variables: Any
    test: dict[str, float]
    history: list[dict[str, Any]]
    steps: int
    start_step: int = 0
    students: list[dict[str, Any]] | None = None


class MetricsWriter:
    """Appends JSON records to `metrics.jsonl` (process 0 only)."""

    def __init__(self, path: str):
        self.path = path
        self.enabled = jax.process_index() == 0

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (empty when there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------- teachers


def load_teacher(teacher_dir: str, which: str = "latest", what: str = "teacher") -> Teacher:
    """Restores a teacher, read-only, from the workdir of a `train` run.

    Args:
        teacher_dir: a workdir written by `distill-jax train` (config.json + checkpoints/).
        which: `latest` or `best` (by validation accuracy) checkpoint.
        what: how the directory is named in error messages.

    Raises:
        CheckpointError: no such run, no checkpoint, or weights that do not fit the
            architecture recorded in its config.
    """
    teacher_dir = os.path.abspath(teacher_dir)
    cfg_path = os.path.join(teacher_dir, CONFIG_FILE)
    ckpt_dir = os.path.join(teacher_dir, "checkpoints")
    if not os.path.isfile(cfg_path) or not has_checkpoint(ckpt_dir):
        raise CheckpointError(
            f"{what} directory {teacher_dir} holds no distill-jax checkpoint "
            f"(expected {CONFIG_FILE} and checkpoints/<step>/ written by `distill-jax train`)"
        )
    with open(cfg_path) as f:
        spec = json.load(f)
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    step = ckpt.best_step() if which == "best" else ckpt.latest_step()
    step = ckpt.latest_step() if step is None else step
    problem = ckpt.verify(step)
    if problem is not None:
        raise CheckpointError(
            f"{what} checkpoint {ckpt_dir}/{step} is corrupt: {problem}; retrain it or "
            f"restore its files"
        )
    raw, metadata = ckpt.restore(step)
    model_cfg = spec["model"]
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
    }
    return Teacher(model=model, variables=jax.device_get(variables), identity=identity)


def _teacher_in_dtype(teacher: Teacher, dtype: str) -> Teacher:
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


def check_teacher(teacher: Teacher, info: data_lib.DatasetInfo, key: str = "--teacher") -> None:
    """Refuses a teacher whose classes or input shape do not fit the student's dataset."""
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


# --------------------------------------------------------------------------------- fit


def run_spec(
    config: ml_collections.ConfigDict,
    role: str,
    seed: int,
    translate: int,
    teacher: Teacher | None,
    cache: TeacherCache | None = None,
    members: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What defines a run: written to its config.json and compared on restart."""
    cfg = config_lib.to_dict(config)
    train = dict(cfg[role]["train"], translate=translate)
    spec = {
        "role": role,
        "seed": seed,
        "dtype": cfg["dtype"],
        "data": cfg["data"],
        "model": cfg[role]["model"],
        "train": train,
        "parallel": cfg["parallel"],
        "teacher": None if teacher is None else teacher.identity,
        "distill": None if teacher is None and cache is None else cfg["distill"],
    }
    if cache is not None:
        spec["teacher_cache"] = {"directory": cache.directory, **cache.step_spec}
        spec["teacher_cache"]["teacher"] = cache.meta["teacher"]
    if members is not None:
        spec["students"] = members
    return spec


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec with the keys a newer version added filled in with their defaults, so a
    workdir written before them still resumes."""
    defaults = config_lib.default_config()
    spec = dict(spec)
    spec["data"] = {**defaults["data"], **spec.get("data", {})}
    spec["train"] = {**defaults["student"]["train"], **spec.get("train", {})}
    if spec.get("distill") is not None:
        spec["distill"] = {**defaults["distill"], **spec["distill"]}
    return spec


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    a, b = _with_defaults(a), _with_defaults(b)
    keys = (
        "role",
        "seed",
        "dtype",
        "model",
        "train",
        "distill",
        "teacher_cache",
        "students",
        "compress",
    )
    data_keys = ("name", "train_split", "shuffle_seed")
    ta = (a.get("teacher") or {}).get("workdir")
    tb = (b.get("teacher") or {}).get("workdir")
    return (
        all(a.get(k) == b.get(k) for k in keys)
        and all(a["data"].get(k) == b["data"].get(k) for k in data_keys)
        and ta == tb
    )


def _build_objective(config, model, teacher, image_shape, num_data, strategy):
    """The config's distillation objective, checked against both models' features.

    Returns:
        `(objective, init_extra)`: `init_extra(key, student_variables)` initialises the
        methods' parameters and memory banks inside the jitted state initialisation.
    """
    from distill_jax.losses.objective import Objective

    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    s_logits, s_features = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0], dummy
    )
    t_logits, t_features = jax.eval_shape(
        lambda v, x: teacher.model.apply(v, x, train=False), teacher.variables, dummy
    )
    objective = Objective(config.distill.to_dict(), s_features, t_features, num_data=num_data)
    if not objective.methods:
        return objective, None
    if strategy.name == "pmap":
        raise ConfigError(
            "feature/relation distillation methods run with parallel.strategy='jit' "
            "(memory banks and batch relations need the global batch); got 'pmap'"
        )

    def zeros(tree):
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)

    def init_extra(key, student_variables):
        student = {"logits": zeros(s_logits), "features": zeros(s_features)}
        teacher_out = {"logits": zeros(t_logits), "features": zeros(t_features)}
        batch = {"label": jnp.zeros((2,), jnp.int32), "index": jnp.arange(2), "mask": None}
        per_method = objective.init(key, student, teacher_out, batch)
        extra = {"params": {}, "memory": {}}
        for name, variables in per_method.items():
            for collection in ("params", "memory"):
                if collection in variables:
                    extra[collection][name] = variables[collection]
        return {k: v for k, v in extra.items() if v}

    return objective, init_extra


def _prepare_workdir(workdir: str, spec: dict[str, Any], overwrite: bool) -> None:
    """Creates the workdir, or checks that an existing one belongs to this run."""
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.exists(cfg_path) and has_checkpoint(ckpt_dir):
        with open(cfg_path) as f:
            old = json.load(f)
        if not _same_spec(old, spec):
            if not overwrite:
                raise ConfigError(
                    f"workdir {workdir} holds a run of a different config; use a new "
                    f"--workdir, or --overwrite to discard it"
                )
            shutil.rmtree(ckpt_dir)
            for name in (METRICS_FILE,):
                if os.path.exists(os.path.join(workdir, name)):
                    os.remove(os.path.join(workdir, name))
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            tmp = cfg_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(spec, f, indent=2)
            os.replace(tmp, cfg_path)
    except OSError as e:
        raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


class _PreemptionSignals:
    """Turns SIGTERM/SIGINT into a request the loop honours after the current step.

    A second SIGINT interrupts at once (KeyboardInterrupt), as a user pressing Ctrl-C twice
    expects. Handlers can only be installed from the main thread; elsewhere (some notebook
    and test runners) this is a no-op and the signals keep their default behaviour.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _PreemptionSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _closing(ckpt: Checkpointer):
    """Closes the checkpointer however the loop ends: an in-flight save is finished, so
    the last good checkpoint is complete even when a divergence or preemption stops the run."""
    try:
        yield ckpt
    finally:
        ckpt.close()


def _nonfinite_terms(metrics: dict[str, Any]) -> str:
    """Names the loss terms (or the gradients) that are NaN/Inf in one step's metrics."""
    terms = [
        k
        for k in ("ce", "kd", *sorted(metrics))
        if k in metrics
        and k not in ("loss", "grad_norm", "nonfinite", "learning_rate", "accuracy", "agreement")
    ]
    bad = [k for k in dict.fromkeys(terms) if not np.all(np.isfinite(metrics[k]))]
    if bad:
        return "the loss term(s) " + ", ".join(f"'{k}'" for k in bad)
    if not np.all(np.isfinite(metrics["loss"])):
        return "the loss"
    return "the gradients"


def _count_skipped(workdir: str) -> int:
    """Skipped steps logged before the checkpoint a run resumes from."""
    train = [r for r in read_metrics(workdir) if r.get("split") == "train"]
    return int(train[-1].get("skipped_steps", 0)) if train else 0


def _truncate_metrics(path: str, step: int) -> None:
    """Drops records logged after the checkpoint a run resumes from (they are redone)."""
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def student_grid(
    config: ml_collections.ConfigDict, role: str, seed: int, distilling: bool
) -> list[dict[str, Any]] | None:
    """The students of a vmapped run (`config.vmap`), or None for a single run.

    `vmap.students` seeds (seed, seed + 1, ...) for every combination of the listed
    alphas, temperatures and learning rates (an empty list: the config's single value).
    """
    v = config.vmap
    if (v.alpha or v.temperature) and not distilling:
        raise ConfigError("vmap.alpha / vmap.temperature grids need a teacher (distill)")
    combos = itertools.product(
        list(v.alpha) or [config.distill.alpha],
        list(v.temperature) or [config.distill.temperature],
        list(v.learning_rate) or [config[role].train.learning_rate],
    )
    members = [
        {"seed": seed + i, "alpha": float(a), "temperature": float(t), "learning_rate": float(lr)}
        for a, t, lr in combos
        for i in range(v.students)
    ]
    return members if len(members) > 1 else None


def member(tree: Any, i: int) -> Any:
    """Student `i` of a stacked (vmapped) pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def _mean_metrics(per_student: list[dict[str, Any]]) -> dict[str, Any]:
    """One student's metrics, or the mean and `*_std` over several (report.summarize)."""
    if len(per_student) == 1:
        return dict(per_student[0])
    out = summarize(per_student)
    del out["seeds"]  # the per-student records are FitResult.students
    return out


def fit(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    role: str = "teacher",
    seed: int | None = None,
    teacher: Teacher | None = None,
    compare_to: Teacher | None = None,
    translate: int | None = None,
    overwrite: bool = False,
    desc: str | None = None,
    init_from: Teacher | None = None,
    prune: PruneSchedule | None = None,
    qat: bool = False,
) -> FitResult:
    """Trains `config[role]` (alone, or distilled from `teacher`) and evaluates it.

    Args:
        config: the validated config. `distill.cache` distils from a teacher cache
            instead of running `teacher` (which is then only checked against the cache
            and used for agreement); `vmap` trains several students in one step.
        workdir: the run's directory; a checkpoint there is resumed.
        role: `teacher` or `student`: which model and train section to use.
        seed: init/dropout/shuffle seed (default `config.seed`).
        teacher: distil from this teacher (student role); None trains on labels alone.
        compare_to: a teacher to report agreement/KL against (default: `teacher`).
        translate: override of `train.translate` (random translation, +-pixels).
        overwrite: discard a checkpoint of a different config in `workdir`.
        desc: progress bar label.
        init_from: start from this trained model's variables (same architecture as
            `config[role].model`) instead of a random initialisation: the recovery
            fine-tuning of a pruned or quantized student.
        prune: prune the student's weights on this schedule, with masks kept in
            `TrainState.extra["masks"]` (compress/prune.py).
        qat: quantization-aware training: train (and evaluate) the int8 fake-quantized
            model (compress/quantize.py).

    Returns:
        The trained model, its variables and its test metrics (for vmapped students:
        stacked variables, mean metrics with `*_std`, and `FitResult.students`).
    """
    if role not in config_lib.ROLES:
        raise ConfigError(f"role must be one of {config_lib.ROLES}, got {role!r}")
    seed = config.seed if seed is None else seed
    train_cfg = config[role].train
    translate = train_cfg.translate if translate is None else translate
    compare_to = teacher if compare_to is None else compare_to

    # -- 1. everything that can fail on bad input, before writing anything -------------
    data = load_data(config)
    info = data.info
    for t in {id(t): t for t in (teacher, compare_to) if t is not None}.values():
        check_teacher(t, info)
    cache = None
    if config.distill.cache:
        if role != "student":
            raise ConfigError("distill.cache (a teacher cache) is for distilling the student")
        cache = load_cache(config.distill.cache)
        check_cache(
            cache,
            data.train,
            config.data.train_split,
            translate=translate,
            flip=train_cfg.flip,
            teacher=teacher,
        )
    distilling = teacher is not None or cache is not None
    if info.input_kind == "tokens" and (translate or train_cfg.flip):
        raise ConfigError(
            f"{role}.train.translate and {role}.train.flip shift and mirror images; dataset "
            f"'{info.name}' holds token ids, so set them to 0 and False"
        )
    strategy = make_strategy(config.parallel.strategy)
    strategy.check_batch(train_cfg.batch_size, f"{role}.train.batch_size")
    batch_size = train_cfg.batch_size
    steps_per_epoch = data_lib.steps_per_epoch(len(data.train), batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{role}.train.batch_size = {batch_size} is larger than the training split "
            f"({len(data.train)} examples)"
        )
    total_steps = int(train_cfg.epochs * steps_per_epoch)
    model = create_model(
        config[role].model, info.num_classes, dtype=config.dtype, axis_name=strategy.axis_name
    )
    eval_model = create_model(config[role].model, info.num_classes, dtype=config.dtype)
    if qat:
        from distill_jax.compress.quantize import qat as qat_model

        model, eval_model = qat_model(model), qat_model(eval_model)
    tx, schedule = make_optimizer(train_cfg, steps_per_epoch)
    members = student_grid(config, role, seed, distilling)
    data_seed = seed if config.data.shuffle_seed < 0 else config.data.shuffle_seed
    spec = run_spec(config, role, seed, translate, teacher, cache, members)
    if members is not None and (init_from is not None or prune is not None or qat):
        raise ConfigError("pruning, quantization and init_from train one student, not vmap")
    if init_from is not None or prune is not None or qat:
        spec["compress"] = {
            "init_from": None if init_from is None else init_from.identity,
            "prune": None if prune is None else dataclasses.asdict(prune),
            "qat": qat,
        }
    objective, init_extra = None, None
    if cache is not None:
        from distill_jax.losses.objective import Objective

        objective = Objective(config.distill.to_dict())
        objective.check_cached_teacher(cache.step_spec["top_k"])
    elif teacher is not None:
        teacher = _teacher_in_dtype(teacher, config.dtype)
        objective, init_extra = _build_objective(
            config, model, teacher, info.image_shape, len(data.train), strategy
        )
    if members is not None and objective is not None and not objective.is_default:
        if config.vmap.alpha or config.vmap.temperature:
            raise ConfigError(
                "vmap.alpha / vmap.temperature grids apply to the default KD objective; "
                "distill.losses is set"
            )

    # -- 2. workdir and restore ---------------------------------------------------------
    _prepare_workdir(workdir, spec, overwrite)
    if members is None:
        state = create_train_state(
            model,
            tx,
            info.image_shape,
            seed,
            init_extra,
            init_variables=None if init_from is None else init_from.variables,
        )
        if prune is not None:
            state = state.replace(extra={**state.extra, "masks": init_masks(state.params)})
    else:
        state = create_student_states(
            model, tx, info.image_shape, members, train_cfg.learning_rate, init_extra
        )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    if ckpt.all_steps():
        state, restored_meta, problems = ckpt.restore_verified(target=state)
        for step, problem in problems.items():
            moved = ckpt.quarantine(step)
            print(
                f"distill-jax: warning: {problem}; moved it to {moved} and resumed "
                f"from step {restored_meta['step']}",
                file=sys.stderr,
            )
    start_step = int(np.max(state.step))
    if 0 < start_step < total_steps and jax.process_index() == 0:
        print(f"distill-jax: resuming {workdir} from step {start_step}", file=sys.stderr)
    _truncate_metrics(os.path.join(workdir, METRICS_FILE), start_step)
    metadata = {
        "role": role,
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "teacher": None if teacher is None else teacher.identity,
        "config": spec,
    }

    # -- 3. the step, compiled once ----------------------------------------------------
    distill = config.distill
    step_fn = make_train_step(
        model,
        tx,
        teacher_model=None if teacher is None or cache is not None else teacher.model,
        objective=objective,
        alpha=distill.alpha,
        temperature=distill.temperature,
        label_smoothing=train_cfg.label_smoothing,
        translate=translate,
        flip=train_cfg.flip,
        schedule=schedule,
        axis_name=strategy.axis_name,
        data_seed=data_seed,
        students=0 if members is None else len(members),
        students_by=config.vmap.by,
        cache=None if cache is None else cache.step_spec,
        steps_per_epoch=steps_per_epoch,
        prune=prune,
    )
    p_step = strategy.compile_step(step_fn)
    # The training split stays on the device when it fits: only indices cross per step.
    resident = config.data.pipeline == "device" or (
        config.data.pipeline == "auto" and data.train.images.nbytes <= RESIDENT_MAX_BYTES
    )
    if resident and not isinstance(data.train, data_lib.ArraySplit):
        raise ConfigError("data.pipeline='device' needs the training split in memory")
    frozen = frozen_inputs(
        teacher_vars=None
        if teacher is None or cache is not None
        else strategy.put_replicated(teacher.variables),
        data=strategy.put_replicated({"image": data.train.images, "label": data.train.labels})
        if resident
        else None,
        cache=None if cache is None else strategy.put_replicated(cache.arrays()),
    )
    validate = Evaluator(eval_model, batch_size=config.data.eval_batch_size)
    writer = MetricsWriter(os.path.join(workdir, METRICS_FILE))
    train_ds = data_lib.train_dataset(
        data.train,
        batch_size,
        seed=data_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        indices_only=resident,
    )
    num_students = 1 if members is None else len(members)

    def evaluate_all(evaluator: Evaluator, variables: Any, split) -> list[dict[str, Any]]:
        if members is None:
            return [evaluator(variables, split)]
        return [evaluator(member(variables, i), split) for i in range(num_students)]

    # -- 4. the loop -----------------------------------------------------------------
    state = strategy.put_replicated(state)
    pending: list[tuple[int, Any]] = []  # (step, device metrics) of the current log window
    skipped = _count_skipped(workdir)

    def flush(step: int) -> dict[str, float]:
        """Fetches the window's metrics, applies the divergence policy, logs the means."""
        nonlocal skipped
        if not pending:
            return {}
        fetched = [strategy.fetch(m) for _, m in pending]
        steps = [s for s, _ in pending]
        pending.clear()
        for s, m in zip(steps, fetched, strict=True):
            if float(np.max(m["nonfinite"])) > 0:
                if train_cfg.on_nonfinite == "stop":
                    latest = ckpt.latest_step()
                    kept = (
                        f"the last good checkpoint (step {latest}) is kept"
                        if latest is not None
                        else "no checkpoint had been written yet"
                    )
                    raise DivergenceError(
                        f"{_nonfinite_terms(m)} became non-finite at step {s} of {workdir}; "
                        f"stopped, {kept}. Lower the learning rate, or set "
                        f"{role}.train.on_nonfinite=skip to skip such steps"
                    )
                skipped += 1
        ok = [m for m in fetched if float(np.max(m["nonfinite"])) == 0] or fetched
        means = {k: float(np.mean([np.mean(m[k]) for m in ok])) for k in ok[0]}
        means["skipped_steps"] = skipped
        writer.write({"step": step, "epoch": step / steps_per_epoch, "split": "train", **means})
        return means

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        flush(step)  # never checkpoint past an unchecked (possibly diverged) step
        ckpt.save(step, strategy.fetch(state), metadata, metrics=metrics)
        faults.inject("sigkill_in_save", step)

    show = config.log.progress and jax.process_index() == 0
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=desc or role,
        disable=not show or None,
        dynamic_ncols=True,
        leave=False,
    )
    batches = data_lib.iterate(train_ds, start_step, num_workers=config.data.num_workers)
    last_saved = start_step if start_step > 0 else None
    with _PreemptionSignals() as preemption, _closing(ckpt):
        for step in range(start_step, total_steps):
            batch = strategy.put_batch(next(batches))
            state, metrics = p_step(state, frozen, batch)
            done = step + 1
            pending.append((done, metrics))
            faults.inject("sigkill_at_step", done)
            faults.inject("sigterm_at_step", done)
            ckpt.finalize()
            if done % config.log.every_steps == 0 or done == total_steps:
                means = flush(done)
                bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.3f}")
            epoch_end = done % steps_per_epoch == 0
            epoch = done // steps_per_epoch
            val_metrics = None
            if (epoch_end and epoch % config.eval.every_epochs == 0) or done == total_steps:
                flush(done)
                vals = evaluate_all(validate, strategy.fetch(state).variables, data.validation)
                val = _mean_metrics(vals)
                val_metrics = {"val_accuracy": val["accuracy"], "val_nll": val["nll"]}
                record = {k: val[k] for k in ("accuracy", "nll", "ece")}
                if members is not None:
                    record["accuracy_students"] = [v["accuracy"] for v in vals]
                writer.write(
                    {"step": done, "epoch": done / steps_per_epoch, "split": "validation", **record}
                )
                bar.set_postfix(val_acc=f"{val['accuracy']:.4f}")
            if val_metrics is not None or done % config.checkpoint.every_steps == 0:
                save(done, val_metrics)
                last_saved = done
            bar.update(1)
            if preemption.requested and done < total_steps:
                if last_saved != done:
                    save(done)
                bar.close()
                raise Preempted(
                    f"{preemption.requested} at step {done}/{total_steps}; checkpoint saved in "
                    f"{ckpt.directory}. Run the same command again to resume"
                )
        bar.close()
        if last_saved != total_steps and ckpt.latest_step() != total_steps:
            save(total_steps)

    # -- 5. test ------------------------------------------------------------------------
    final = strategy.fetch(state)
    variables = final.variables
    tester = Evaluator(eval_model, teacher=compare_to, batch_size=config.data.eval_batch_size)
    tests = evaluate_all(tester, variables, data.test)
    one = variables if members is None else member(variables, 0)
    summary = model_summary(eval_model, one, info.image_shape, config.eval.latency_batch_size)
    tests = [{**t, **summary, "skipped_steps": skipped} for t in tests]
    test = _mean_metrics(tests)
    students = None
    if members is not None:
        students = [{**m, **t} for m, t in zip(members, tests, strict=True)]
    history = [r for r in read_metrics(workdir) if r.get("split") == "validation"]
    return FitResult(
        workdir, eval_model, variables, test, history, total_steps, start_step, students
    )


__all__ = [
    "Data",
    "FitResult",
    "TrainState",
    "check_teacher",
    "fit",
    "load_data",
    "load_teacher",
    "read_metrics",
]
