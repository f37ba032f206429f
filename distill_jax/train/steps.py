"""The pure train step, built from a task, a teacher source and an objective.

`make_train_step` returns `train_step(state, frozen, batch) -> (state, metrics)`, where
`frozen` holds what the step reads but never changes (`frozen_inputs` builds it): the
teacher source's arrays (teacher variables or cache rows), and optionally the
device-resident training split. The same function is jit-compiled (batch sharded over a
mesh; XLA inserts the collectives) or run under `jax.pmap` with `axis_name` set, where
gradients, metrics and BatchNorm statistics are averaged explicitly with `lax.pmean`.

A step reads top-down, and each part belongs to one plug-in:

1. *inputs* (the task): the batch (gathered on the device from the resident split when
   the batch is only indices) and its augmented training view;
2. *teacher* (the teacher source): its outputs for that view, outside `value_and_grad`
   (a source that makes its own inputs, on-policy distillation's student samples, also
   returns them and their labels; it declares `generates` and gets the student's current
   parameters);
3. *update*: the robust method's inner maximisation (`robust.NoPerturbation`: none), the
   objective's loss, its gradients and the optimizer update (pruning masks, per-student
   learning rates and the like are optimizer transforms, not step code).

With `students=Students(N)`, the state is N stacked states and (3) is `jax.vmap`-ed (or
unrolled) over them, while (1) and (2) run once: one batch, one augmentation, one teacher
forward for all N. Adversarial inputs are made inside (3), so each student attacks
itself with its own parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.objective import Objective
from distill_jax.tasks import Task
from distill_jax.teachers import NoTeacher, StudentPolicy, TeacherSource, top1
from distill_jax.train.optim import lr_scale_of
from distill_jax.train.state import TrainState, member, stack_trees, train_key

Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]
Update = Callable[..., tuple[TrainState, Metrics]]


def frozen_inputs(teacher: Any = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The step's read-only second argument.

    Args:
        teacher: the teacher source's arrays (`TeacherSource.arrays()`), on the devices.
        data: `{"image": (N, ...) inputs, "label": (N,)}`: the whole training split,
            resident on the device; batches are then only `{"index": (B,)}`.
    """
    frozen = {"teacher": teacher}
    if data is not None:
        frozen["data"] = dict(data)
    return frozen


@dataclasses.dataclass(frozen=True)
class One:
    """A single student: the state is one TrainState."""

    def step_of(self, state: TrainState) -> jax.Array:
        return state.step

    def rng_of(self, state: TrainState) -> jax.Array | None:
        return state.rng

    def run(self, update: Update, state: TrainState, *shared) -> tuple[TrainState, Metrics]:
        return update(state, *shared)

    def each(self, tree: Any) -> list[Any]:
        """Every student's part of a (state or variables) tree: here the tree itself."""
        return [tree]

    def policy(self, model: nn.Module, state: TrainState) -> StudentPolicy:
        """The student as a source that samples from it sees it: its current parameters
        and a key of this step (distinct from the augmentation's, dropout's, the
        methods' and the robust start's)."""
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 4)
        return StudentPolicy(model, jax.lax.stop_gradient(state.params), key)


@dataclasses.dataclass(frozen=True)
class Students:
    """N students trained in one step, sharing the batch, its view and the teacher.

    Attributes:
        n: the number of students (stacked on a leading axis of the state).
        by: `vmap` batches the N updates into one computation (best where the device has
            parallelism to spare: small models on a GPU); `map` runs them one after
            another inside the same step (unrolled), still sharing the batch and the
            teacher forward (best for conv students on CPU, where vmapped convolutions
            become slow grouped convolutions).
    """

    n: int
    by: str = "vmap"

    def __post_init__(self):
        if self.by not in ("vmap", "map"):
            raise ValueError(f"students' by must be 'vmap' or 'map', got {self.by!r}")

    def step_of(self, state: TrainState) -> jax.Array:
        return state.step[0]

    def rng_of(self, state: TrainState) -> None:
        return None  # the students share one augmentation: `data_seed` draws it

    def run(self, update: Update, state: TrainState, *shared) -> tuple[TrainState, Metrics]:
        if self.by == "map":
            # Unrolled rather than `lax.map`: XLA:CPU ran convolutions inside a loop body
            # ~30x slower than the same convolutions unrolled.
            outs = [
                update(jax.tree.map(lambda x, i=i: x[i], state), *shared) for i in range(self.n)
            ]
            return stack_trees(outs)
        in_axes = (0,) + (None,) * len(shared)
        return jax.vmap(update, in_axes=in_axes)(state, *shared)

    def each(self, tree: Any) -> list[Any]:
        """Every student's part of a stacked (state or variables) tree."""
        return [member(tree, i) for i in range(self.n)]

    def policy(self, model: nn.Module, state: TrainState) -> StudentPolicy:
        """Vmapped students share one batch: none of them can be the one it is sampled
        from (setup refuses on-policy distillation with `vmap.students`)."""
        raise ValueError("a source that samples from the student trains one student, not vmap")


def make_update(
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    axis_name: str | None = None,
    schedule: optax.Schedule | None = None,
    teacher: TeacherSource | None = None,
) -> Update:
    """The student's update: `update(state, inputs, labels, index, teacher_out, frozen)`.

    The robust method's extra views of the batch (`objective.robust.views`: the
    adversarial inputs x', made with the student's current parameters in inference mode
    and under `stop_gradient`; none without a robust method), the teacher on them where
    the method reads it, the objective's loss on the student's outputs for the batch and
    each view, and its gradients (teacher outputs arrive as inputs: no gradient can reach
    the teacher), the optimizer update, and the divergence guard. Under pmap
    (`axis_name`) gradients, metrics and BatchNorm statistics are averaged over devices.
    `frozen` is the teacher source's arrays (for `teacher.logits_fn`).
    """
    task = objective.task
    robust = objective.robust
    teacher = NoTeacher() if teacher is None else teacher

    def update(state: TrainState, inputs, labels, index, teacher_out, frozen=None):
        step_key = jax.random.fold_in(state.rng, state.step)
        _, dropout_key = jax.random.split(step_key)
        method_key = jax.random.fold_in(step_key, 2)  # CRD's negatives
        robust_key = jax.random.fold_in(step_key, 3)  # the inner maximisation's start
        if axis_name is not None:  # distinct dropout masks and starts on each device
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
            robust_key = jax.random.fold_in(robust_key, jax.lax.axis_index(axis_name))
        method_batch = {"label": labels, "index": index, "mask": None, "step": state.step}

        # Robust training's inner maximisation, with the student's current parameters.
        eval_variables = {"params": state.params}
        if state.batch_stats:
            eval_variables["batch_stats"] = state.batch_stats
        student_fn = lambda x: model.apply(eval_variables, x, train=False)[0]  # noqa: E731
        teacher_fn = teacher.logits_fn(frozen)
        views = robust.views(
            student_fn, teacher_fn, inputs, labels, teacher_out, robust_key, state.step
        )
        if robust.teacher_on_adv:
            teacher_out = {
                **teacher_out,
                **{f"{v}_logits": jax.lax.stop_gradient(teacher_fn(x)) for v, x in views.items()},
            }

        def loss_fn(trainable):
            variables = {"params": trainable["student"]}
            mutable = []
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
                mutable = ["batch_stats"]
            (logits, features), updates = model.apply(
                variables, inputs, train=True, rngs={"dropout": dropout_key}, mutable=mutable
            )
            student = {"logits": logits, "features": features}
            for i, (name, x_view) in enumerate(views.items(), 1):  # "adv": x'
                if mutable:  # both passes update the statistics, as the official loops do
                    variables["batch_stats"] = updates["batch_stats"]
                rngs = {"dropout": jax.random.fold_in(dropout_key, i)}  # its own masks
                (student[f"{name}_logits"], _), updates = model.apply(
                    variables, x_view, train=True, rngs=rngs, mutable=mutable
                )
            loss, terms, memory = objective(
                trainable["methods"],
                state.memory,
                student,
                teacher_out,
                method_batch,
                method_key,
                hparams=state.hparams,
            )
            batch_stats = updates.get("batch_stats", state.batch_stats)
            return loss, (student, terms, batch_stats, memory)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (student, terms, batch_stats, memory)), grads = grad_fn(state.trainable)
        logits = student["logits"]
        teacher_top1 = None if teacher_out is None else top1(teacher_out)
        metrics = {"loss": loss, **terms, **task.train_metrics(logits, labels, teacher_top1)}
        for name in views:  # e.g. adv_accuracy, adv_ce: the student on the view
            view_logits = student[f"{name}_logits"]
            view_metrics = task.train_metrics(view_logits, labels, teacher_top1)
            view_metrics["ce"] = task.loss(view_logits, labels, None, 0.0)
            metrics.update({f"{name}_{k}": v for k, v in view_metrics.items()})
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step) * lr_scale_of(state.opt_state)
        trainable = optax.apply_updates(state.trainable, updates)
        updated = state.replace(
            params=trainable["student"],
            methods=trainable["methods"],
            batch_stats=batch_stats,
            opt_state=opt_state,
            memory=memory,
        )
        # Divergence guard: a step whose loss or gradients are not finite changes nothing
        # but the step counter (the loop then stops, or counts the skip). The values are
        # pmean-ed first, so every device takes the same decision.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        new_state = new_state.replace(step=state.step + 1)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        return new_state, metrics

    return update


def _source_entries(labels: jax.Array, teacher_out: dict[str, Any] | None):
    """`(labels, teacher_out, metrics)`: what a source that made its own inputs returns
    beside the teacher's outputs, taken out of them here: their labels
    (`outputs["label"]`, else the batch's `labels`) and its step metrics
    (`outputs["metrics"]`, e.g. `on_policy`, else none)."""
    if teacher_out is None or not {"label", "metrics"} & teacher_out.keys():
        return labels, teacher_out, {}
    teacher_out = dict(teacher_out)
    return teacher_out.pop("label", labels), teacher_out, teacher_out.pop("metrics", {})


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    objective: Objective,
    *,
    teacher: TeacherSource | None = None,
    students: One | Students | None = None,
    data_seed: int | None = None,
    axis_name: str | None = None,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]:
    """Builds the train step.

    Args:
        model: the student (or the model trained alone).
        tx: its optimizer, over `{"student": params, "methods": method params}`.
        objective: the whole loss; its task (`objective.task`) also says how a batch is
            augmented and which metrics the step reports.
        teacher: where the teacher's outputs come from (default: none).
        students: `One()` (default) or `Students(N)` for N stacked states.
        data_seed: the seed whose key draws the augmentation (shared by all students);
            None draws it from each state's own key (then `data_seed == seed`).
        axis_name: the pmap axis name, or None under jit.
        schedule: the learning-rate schedule, only to log the current rate.

    Returns:
        `train_step(state, frozen, batch)`: `frozen` from `frozen_inputs`. `batch` holds
        `image` (inputs), `label` (B,), `index` (B,), or only `index` when the split is
        in `frozen["data"]`.
    """
    task: Task = objective.task
    teacher = NoTeacher() if teacher is None else teacher
    students = One() if students is None else students
    if isinstance(students, Students) and data_seed is None:
        raise ValueError("vmapped students share one augmentation: pass data_seed")
    fixed_data_key = None if data_seed is None else train_key(data_seed)
    update = make_update(model, tx, objective, axis_name, schedule, teacher)

    def inputs(step, rng, frozen, batch):
        """The batch's training view, labels and example indices."""
        index = batch["index"]
        if "data" in frozen:  # resident split: gather the rows on the device
            raw, labels = frozen["data"]["image"][index], frozen["data"]["label"][index]
        else:
            raw, labels = batch["image"], batch["label"]
        data_key = rng if fixed_data_key is None else fixed_data_key
        aug_key, _ = jax.random.split(jax.random.fold_in(data_key, step))
        return task.augment(teacher.augment_key(step, aug_key), raw, index), labels, index

    def train_step(state: TrainState, frozen: Any, batch: Batch):
        step = students.step_of(state)
        images, labels, index = inputs(step, students.rng_of(state), frozen, batch)
        # A source that generates its inputs (on-policy: the student's samples) sees the
        # batch's labels and the student's current parameters, and returns new labels.
        extra = {}
        if teacher.generates:
            extra = {"labels": labels, "student": students.policy(model, state)}
        images, teacher_out = teacher(frozen["teacher"], images, index, step, **extra)
        labels, teacher_out, source_metrics = _source_entries(labels, teacher_out)
        shared = (images, labels, index, teacher_out, frozen["teacher"])
        state, metrics = students.run(update, state, *shared)
        return state, {**metrics, **source_metrics}

    return train_step
