"""`setup`: everything a training run needs, resolved before the loop starts.

`setup(config, workdir, role=...)` returns a `Run`: data, task, models, teacher source,
objective, optimizer, state (fresh or restored) and the compiled step. Everything that
can fail on bad input fails here, before any file in `workdir` is written; only then is
the workdir claimed and its latest checkpoint restored. `train.loop.train(run)` then
runs the plain loop.

What a run *is* comes from its plug-ins, not from flags:

* the task (`distill_jax.tasks`): what a batch holds, its loss and metrics;
* the teacher source (`distill_jax.teachers`): none, online, or a cache;
* the objective (`objective.Objective`): the whole loss with every hyperparameter;
* the students (`steps.One` / `steps.Students`): one state, or N stacked (config `vmap`);
* a `Variant` for a compression stage: start from trained weights, extra optimizer
  transforms (pruning masks), a wrapped model (quantization-aware training).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from distill_jax import config as config_lib
from distill_jax import data as data_lib
from distill_jax.attacks import check_inputs, parse_attacks
from distill_jax.errors import ConfigError
from distill_jax.models import create_model
from distill_jax.objective import Objective
from distill_jax.parallel import Strategy, make_strategy
from distill_jax.robust import NoPerturbation, make_robust
from distill_jax.tasks import Task
from distill_jax.teachers import (
    CachedTeacher,
    ExposedTeacher,
    NoTeacher,
    OnlineTeacher,
    Teacher,
    TeacherSource,
)
from distill_jax.train.checkpointing import Checkpointer
from distill_jax.train.inputs import (
    Data,
    check_teacher,
    check_vocab,
    load_data,
    make_task,
    teacher_source,
)
from distill_jax.train.optim import make_optimizer, scale_by_lr_scale
from distill_jax.train.state import TrainState, create_student_states, create_train_state
from distill_jax.train.steps import One, Students, frozen_inputs, make_train_step
from distill_jax.train.workdir import ASSISTANTS_DIR, prepare_workdir, restore, run_spec

# data.pipeline = "auto" keeps a training split up to this size resident on the device.
RESIDENT_MAX_BYTES = 1 << 30

# ----------------------------------------------------------------------------- variant


@dataclasses.dataclass(frozen=True)
class Variant:
    """A student trained differently from the config's plain model: a compression stage.

    Attributes:
        spec: what defines it, recorded in the run's config.json (compared on resume).
        init_from: start from this trained model's variables (same architecture); for
            vmapped students, a tuple: student i starts from its i-th model (e.g. each
            seed of a first training stage, `load_teacher(run, member=i)`).
        transforms: optimizer transforms after the update (e.g. `compress.prune.pruning`).
        wrap_model: maps the model to the one trained and evaluated (e.g. `compress.qat`).
    """

    spec: dict[str, Any]
    init_from: Teacher | tuple[Teacher, ...] | None = None
    transforms: tuple[optax.GradientTransformation, ...] = ()
    wrap_model: Callable[[nn.Module], nn.Module] | None = None


# --------------------------------------------------------------------------- objective


def build_objective(
    config: ml_collections.ConfigDict,
    role: str,
    task: Task,
    model: nn.Module,
    source: TeacherSource,
    input_shape: tuple[int, ...],
    num_data: int,
    robust: NoPerturbation | None = None,
) -> tuple[Objective, Callable | None]:
    """The config's objective, checked against both models' features.

    Args:
        robust: the robust method (`check_robust`'s), None for plain training.

    Returns:
        `(objective, init_methods)`: `init_methods(key, student_variables)` initialises
        the methods' parameters and memory banks inside the jitted state initialisation;
        None when the objective has no methods.
    """
    label_smoothing = config[role].train.label_smoothing
    distill_cfg = config.distill.to_dict()
    common = dict(task=task, label_smoothing=label_smoothing, num_data=num_data, robust=robust)
    if not isinstance(source, OnlineTeacher):  # no teacher, or a cache: no features
        objective = Objective(distill_cfg, distilling=not isinstance(source, NoTeacher), **common)
        if isinstance(source, CachedTeacher):
            objective.check_cached_teacher(source.spec["top_k"])
        return objective, None
    teacher = source.teacher
    dummy = jnp.zeros((2, *input_shape), jnp.float32)
    s_logits, s_features = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0], dummy
    )
    t_logits, t_features = jax.eval_shape(
        lambda v, x: teacher.model.apply(v, x, train=False), teacher.variables, dummy
    )
    objective = Objective(distill_cfg, s_features, t_features, **common)
    if not objective.methods:
        return objective, None
    if config.parallel.strategy == "pmap":
        raise ConfigError(
            "feature/relation distillation methods run with parallel.strategy='jit' "
            "(memory banks and batch relations need the global batch); got 'pmap'"
        )

    def zeros(tree):
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)

    def init_methods(key, student_variables):
        student = {"logits": zeros(s_logits), "features": zeros(s_features)}
        teacher_out = {"logits": zeros(t_logits), "features": zeros(t_features)}
        batch = {"label": jnp.zeros((2,), jnp.int32), "index": jnp.arange(2), "mask": None}
        per_method = objective.init(key, student, teacher_out, batch)
        pick = lambda c: {n: v[c] for n, v in per_method.items() if c in v}  # noqa: E731
        return pick("params"), pick("memory")

    # Trace the methods once now: one that cannot work with these models (say, CRD given
    # two features) fails here with its message, before anything is written.
    try:
        jax.eval_shape(init_methods, jax.random.PRNGKey(0), None)
    except (ValueError, TypeError, KeyError) as e:
        names = ", ".join(t.name for t in objective.methods)
        raise ConfigError(f"distill.losses ({names}) cannot run on these models: {e}") from None
    return objective, init_methods


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


# -------------------------------------------------------------------------------- run


@dataclasses.dataclass
class Run:
    """A run ready to train: what `setup` resolved, and the state to start from.

    Attributes:
        config, workdir, role, seed: what was asked for.
        data: the splits; `task`: how batches meet the model.
        model: the module trained (with the pmap axis under pmap); `eval_model` the one
            evaluated and returned.
        teacher: the teacher source of the step; `compare_to` the teacher the test
            metrics report agreement and KL against (or None).
        students: `One()` or `Students(N)`; `members` the grid's settings (or None).
        strategy: how state and batches are placed and the step compiled.
        state: the TrainState to start from (restored when resuming), on the host.
        checkpointer: the run's checkpoints; `metadata` saved beside each.
        step: the compiled train step; `frozen` its read-only input, on the devices.
        batches: `batches(start_step)` iterates the training batches from a step.
        steps_per_epoch, total_steps: the budget; start_step where it resumes (0: fresh).
        keep_steps: the steps of `checkpoint.keep_epochs` within the budget (validated
            and kept for good).
    """

    config: ml_collections.ConfigDict
    workdir: str
    role: str
    seed: int
    data: Data
    task: Task
    model: nn.Module
    eval_model: nn.Module
    teacher: TeacherSource
    compare_to: Teacher | None
    students: One | Students
    members: list[dict[str, Any]] | None
    strategy: Strategy
    state: TrainState
    checkpointer: Checkpointer
    metadata: dict[str, Any]
    step: Callable
    frozen: Any
    batches: Callable[[int], Any]
    steps_per_epoch: int
    total_steps: int
    start_step: int
    keep_steps: tuple[int, ...] = ()

    @property
    def train_cfg(self) -> ml_collections.ConfigDict:
        return self.config[self.role].train


def kept_epoch_steps(epochs, steps_per_epoch: int, total_steps: int) -> tuple[int, ...]:
    """The steps ending the epochs of `checkpoint.keep_epochs` that a run reaches."""
    return tuple(
        sorted({e * steps_per_epoch for e in epochs if e * steps_per_epoch <= total_steps})
    )


def _check_inputs(config, role: str, data: Data, strategy: Strategy) -> int:
    """Checks the batch against the data and devices; returns the steps per epoch."""
    train = config[role].train
    strategy.check_batch(train.batch_size, f"{role}.train.batch_size")
    steps_per_epoch = data_lib.steps_per_epoch(len(data.train), train.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{role}.train.batch_size = {train.batch_size} is larger than the training split "
            f"({len(data.train)} examples)"
        )
    return steps_per_epoch


def _models(config, role, info, strategy, variant) -> tuple[nn.Module, nn.Module]:
    """The module trained (with the pmap axis) and the one evaluated."""
    kwargs = dict(dtype=config.dtype)
    model = create_model(
        config[role].model, info.num_classes, axis_name=strategy.axis_name, **kwargs
    )
    eval_model = create_model(config[role].model, info.num_classes, **kwargs)
    if variant is not None and variant.wrap_model is not None:
        model, eval_model = variant.wrap_model(model), variant.wrap_model(eval_model)
    return model, eval_model


def _check_label_free(config, role: str, objective: Objective, source: TeacherSource) -> None:
    """Unlabelled training rows (`data.unlabelled`) need a teacher and terms that read no
    labels."""
    where = f"data.unlabelled ({', '.join(config.data.unlabelled)})"
    if isinstance(source, NoTeacher):
        raise ConfigError(
            f"{where} adds rows without labels, which a {role} trained on labels alone "
            f"cannot use; distil from a teacher or drop data.unlabelled"
        )
    for term in objective.terms:
        if term.kwargs.get("_needs_labels"):
            raise ConfigError(
                f"distill.losses.{term.name} reads the labels, and {where} has none; choose "
                f"a label-free term (e.g. kd) or drop data.unlabelled"
            )


def check_robust(
    config, role: str, info, source: TeacherSource, task: Task, total_steps: int
) -> NoPerturbation:
    """The run's robust method (`<role>.train.robust`), refused where it cannot run: token
    ids, no teacher for a distillation method, a teacher cache for a method that runs the
    teacher on the adversarial inputs (or a top-k cache), unlabelled rows."""
    section = config[role].train.robust
    robust = make_robust(section.to_dict(), total_steps)
    if robust.name is None:
        return robust
    key = f"{role}.train.robust.method = {robust.name}"
    if info.input_kind != "image":
        raise ConfigError(
            f"{key} perturbs pixels, but {info.name} holds {info.input_kind} (token ids are "
            f"discrete); robust training needs an image dataset"
        )
    if task.unlabelled:
        raise ConfigError(f"{key} needs labels on every row; drop data.unlabelled")
    if robust.needs_teacher and isinstance(source, NoTeacher):
        raise ConfigError(
            f"{key} distils from a teacher, and this {role} trains alone: pass --teacher "
            f"DIR, or use pgd_at / trades"
        )
    if isinstance(source, ExposedTeacher) and robust.needs_teacher:
        raise ConfigError(
            f"{key} needs the teacher's logits (on adversarial inputs too), and "
            f"distill.exposure = {source.level!r} hides them: use distill.exposure = 'full'"
        )
    if isinstance(source, CachedTeacher):
        if robust.teacher_on_adv:
            raise ConfigError(
                f"{key} runs the teacher on the adversarial inputs, which distill.cache "
                f"cannot label: use the online teacher (--teacher DIR), or ard / rslad"
            )
        if robust.needs_teacher and source.spec.get("top_k"):
            raise ConfigError(
                f"{key} needs the teacher's full logits; this cache keeps the top "
                f"{source.spec['top_k']} only (cache-teacher --top_k 0 stores all)"
            )
    return robust


def _plan(config, role: str, seed: int, data: Data, teacher: Teacher | None, variant):
    """Everything about the run that can fail on bad input; writes nothing."""
    info = data.info
    strategy = make_strategy(
        config.parallel.strategy, shard_teacher=config.parallel.get("shard_teacher", False)
    )
    steps_per_epoch = _check_inputs(config, role, data, strategy)
    task = make_task(config, role, data)
    for i, spec in enumerate(parse_attacks(config.attack.attacks)):  # robust test accuracy
        check_inputs(spec, info, f"attack.attacks[{i}]")
    source = teacher_source(config, role, data, teacher, steps_per_epoch, task)
    model, eval_model = _models(config, role, info, strategy, variant)
    if info.input_kind == "tokens":  # sentence- or token-level: image models never tag
        check_task_fit(task, eval_model, None, info.image_shape, f"{role}.model")
    train_cfg = config[role].train
    total_steps = int(train_cfg.epochs * steps_per_epoch)
    robust = check_robust(config, role, info, source, task, total_steps)
    objective, init_methods = build_objective(
        config, role, task, model, source, info.image_shape, len(data.train), robust
    )
    if task.unlabelled:
        _check_label_free(config, role, objective, source)
    members = student_grid(config, role, seed, not isinstance(source, NoTeacher))
    _check_variant(variant, members)
    if members is not None and not objective.is_default:
        if config.vmap.alpha or config.vmap.temperature:
            raise ConfigError(
                "vmap.alpha / vmap.temperature grids apply to the default KD objective; "
                "distill.losses or a robust distillation method is set"
            )
    transforms = (scale_by_lr_scale(),) if members is not None else ()
    if variant is not None and members is None:  # vmapped students: no transforms
        transforms = variant.transforms
    tx, schedule = make_optimizer(train_cfg, steps_per_epoch, transforms)
    return dict(
        data=data,
        strategy=strategy,
        steps_per_epoch=steps_per_epoch,
        source=source,
        model=model,
        eval_model=eval_model,
        task=task,
        objective=objective,
        init_methods=init_methods,
        members=members,
        tx=tx,
        schedule=schedule,
        learning_rate=train_cfg.learning_rate,  # the schedule's: vmapped rates scale it
    )


def check_task_fit(
    task: Task, model: nn.Module, variables: Any, input_shape: tuple[int, ...], where: str
) -> None:
    """Refuses a model whose logits do not fit the task (a sentence classifier on tags per
    token, or a tagger on a label per sentence), from shapes only (`jax.eval_shape`).

    Args:
        variables: the model's variables (a teacher), or None to trace its init.
    """
    dummy = jnp.zeros((2, *input_shape), jnp.float32)
    if variables is None:
        fn = lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0][0]  # noqa: E731
        logits = jax.eval_shape(fn, dummy)
    else:
        logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)[0], variables, dummy)
    task.check_logits(tuple(logits.shape), f"{where} ({type(model).__name__})")


def _check_variant(variant: Variant | None, members: list[dict] | None) -> None:
    """Vmapped students start each from its own model; nothing else varies them."""
    if variant is None:
        return
    starts = variant.init_from
    per_member = isinstance(starts, tuple)
    if members is None and per_member:
        raise ConfigError(f"{len(starts)} models to start from, but one student is trained")
    if members is None:
        return
    if variant.transforms or variant.wrap_model is not None:
        raise ConfigError("pruning and quantization train one student, not vmap")
    if not per_member or len(starts) != len(members):
        given = len(starts) if per_member else 1
        raise ConfigError(
            f"{len(members)} vmapped students start from one model each; {given} given"
        )


def _initial_state(plan: dict[str, Any], seed: int, variant: Variant | None) -> TrainState:
    """The fresh state of the run's student(s)."""
    model, tx, info = plan["model"], plan["tx"], plan["data"].info
    if plan["members"] is not None:
        lr = plan["learning_rate"]
        starts = None if variant is None else [t.variables for t in variant.init_from]
        return create_student_states(
            model, tx, info.image_shape, plan["members"], lr, plan["init_methods"], starts
        )
    start = None if variant is None or variant.init_from is None else variant.init_from.variables
    return create_train_state(
        model, tx, info.image_shape, seed, plan["init_methods"], init_variables=start
    )


def _compile(config, role: str, seed: int, plan: dict[str, Any]) -> dict[str, Any]:
    """The compiled step, its read-only inputs on the devices, and the batch iterator."""
    data, strategy, source = plan["data"], plan["strategy"], plan["source"]
    data_seed = seed if config.data.shuffle_seed < 0 else config.data.shuffle_seed
    members = plan["members"]
    students = One() if members is None else Students(len(members), config.vmap.by)
    step_fn = make_train_step(
        plan["model"],
        plan["tx"],
        plan["objective"],
        teacher=source,
        students=students,
        data_seed=data_seed,
        axis_name=strategy.axis_name,
        schedule=plan["schedule"],
    )
    # The training split stays on the device when it fits: only indices cross per step.
    bucket = config.data.length_bucket  # cuts batches on the host: never resident
    resident = config.data.pipeline == "device" or (
        config.data.pipeline == "auto"
        and not bucket
        and data.train.images.nbytes <= RESIDENT_MAX_BYTES
    )
    split = {"image": data.train.images, "label": data.train.labels} if resident else None
    arrays = source.arrays()
    frozen = frozen_inputs(
        teacher=None if arrays is None else strategy.put_teacher(arrays),
        data=None if split is None else strategy.put_replicated(split),
    )
    train_ds = data_lib.train_dataset(
        data.train,
        config[role].train.batch_size,
        seed=data_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        indices_only=resident,
        length_bucket=bucket,
    )
    workers = config.data.num_workers
    return dict(
        students=students,
        step=strategy.compile_step(step_fn),
        frozen=frozen,
        batches=lambda start: data_lib.iterate(train_ds, start, num_workers=workers),
    )


def _first(starts: Teacher | tuple[Teacher, ...] | None) -> Teacher | None:
    """The model (or the first of the per-student models) a run starts from."""
    return starts[0] if isinstance(starts, tuple) else starts


def _reads(config, teacher, compare_to, variant, workdir: str) -> dict[str, str | None]:
    """The directories a run reads, which its workdir must not be (or hold, or sit in).
    Its own teacher assistants (`<workdir>/assistants/`, which the run never writes) are
    exempt."""
    own = os.path.join(os.path.abspath(workdir), ASSISTANTS_DIR) + os.sep

    def identity(t):
        path = None if t is None else t.identity.get("workdir")
        return None if path is None or os.path.abspath(path).startswith(own) else path

    return {
        "--teacher": identity(teacher),
        "the compared teacher": identity(compare_to),
        "--teacher_cache": config.distill.cache or None,
        "the starting model": identity(None if variant is None else _first(variant.init_from)),
    }


def setup(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    role: str = "teacher",
    seed: int | None = None,
    teacher: Teacher | None = None,
    compare_to: Teacher | None = None,
    overwrite: bool = False,
    variant: Variant | None = None,
) -> Run:
    """Resolves and checks a run, claims its workdir and restores its latest checkpoint.

    Args:
        config: the validated config.
        workdir: the run's directory; a checkpoint there is resumed.
        role: `teacher` or `student`: which model and train section to use.
        seed: init/dropout/shuffle seed (default `config.seed`).
        teacher: distil from this teacher (student role); None trains on labels alone,
            or from `distill.cache` (the teacher is then only checked against it).
        compare_to: the teacher to report agreement/KL against (default: `teacher`).
        overwrite: discard a checkpoint of a different config in `workdir`.
        variant: a compression stage (`Variant`); None for the config's plain student.
    """
    if role not in config_lib.ROLES:
        raise ConfigError(f"role must be one of {config_lib.ROLES}, got {role!r}")
    seed = config.seed if seed is None else seed
    compare_to = teacher if compare_to is None else compare_to
    data = load_data(config)
    for t in {id(t): t for t in (teacher, compare_to) if t is not None}.values():
        check_teacher(t, data.info)
    check_vocab(config, role, data.info, teacher)
    if config.data.pipeline == "device" and not isinstance(data.train, data_lib.ArraySplit):
        raise ConfigError("data.pipeline='device' needs the training split in memory")
    plan = _plan(config, role, seed, data, teacher, variant)
    for what, t in (("--teacher", teacher), ("the compared teacher", compare_to)):
        if t is not None and data.info.input_kind == "tokens":
            check_task_fit(plan["task"], t.model, t.variables, data.info.image_shape, what)
    spec = run_spec(
        config,
        role,
        seed,
        plan["source"],
        teacher,
        plan["members"],
        None if variant is None else variant.spec,
    )
    state = _initial_state(plan, seed, variant)  # refuses start variables that do not fit
    # -- only now is anything written ---------------------------------------------------
    prepare_workdir(workdir, spec, overwrite, _reads(config, teacher, compare_to, variant, workdir))
    total_steps = int(config[role].train.epochs * plan["steps_per_epoch"])
    keep_steps = kept_epoch_steps(
        config.checkpoint.keep_epochs, plan["steps_per_epoch"], total_steps
    )
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep, keep_steps=keep_steps
    )
    state = restore(checkpointer, state)
    info = data.info
    return Run(
        config=config,
        workdir=workdir,
        role=role,
        seed=seed,
        data=data,
        task=plan["task"],
        model=plan["model"],
        eval_model=plan["eval_model"],
        teacher=plan["source"],
        compare_to=compare_to,
        members=plan["members"],
        strategy=plan["strategy"],
        state=state,
        checkpointer=checkpointer,
        metadata={
            "role": role,
            "total_steps": total_steps,
            "steps_per_epoch": plan["steps_per_epoch"],
            "num_classes": info.num_classes,
            "image_shape": list(info.image_shape),
            "teacher": spec["teacher"],
            "config": spec,
        },
        steps_per_epoch=plan["steps_per_epoch"],
        total_steps=total_steps,
        keep_steps=keep_steps,
        start_step=int(np.max(state.step)),
        **_compile(config, role, seed, plan),
    )
