"""Pure train and eval steps.

`make_train_step` returns `train_step(state, frozen, batch) -> (state, metrics)`, where
`frozen` holds what the step reads but never changes (`frozen_inputs` builds it): the
teacher's variables, and optionally the device-resident training split and a teacher
cache. The same function is jit-compiled (batch sharded over a mesh; XLA inserts the
collectives) or run under `jax.pmap` with `axis_name` set, where gradients, metrics and
BatchNorm statistics are averaged explicitly with `lax.pmean`.

A step has three parts, so that N students can share the expensive ones:

1. *inputs*: the batch's pixels (gathered on the device from the resident split when
   the batch is only indices) and their augmented view;
2. *teacher*: its forward pass, outside `value_and_grad` and under `stop_gradient` (no
   gradient can reach it and XLA never builds its backward pass), or rows of a cache;
3. *update*: the student's loss, gradients and optimizer update.

With `students=N`, the state is N stacked states and (3) is `jax.vmap`-ed over them, while
(1) and (2) run once: one batch, one augmentation, one teacher forward for all N.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.compress.prune import prune_step
from distill_jax.data.augment import augment, to_float
from distill_jax.losses import cross_entropy
from distill_jax.losses.objective import Objective
from distill_jax.train.state import TrainState, stack_trees, train_key

Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


def frozen_inputs(
    teacher_vars: Any = None, data: Mapping[str, Any] | None = None, cache: Any = None
) -> dict[str, Any]:
    """The step's read-only second argument.

    Args:
        teacher_vars: the teacher's variables (online distillation), else None.
        data: `{"image": (N, H, W, C) uint8, "label": (N,)}`: the whole training split,
            resident on the device; batches are then only `{"index": (B,)}`.
        cache: `{"values": (N, V, K), "indices": (N, V, K) or absent}` of a teacher cache.
    """
    frozen = {"teacher": teacher_vars}
    if data is not None:
        frozen["data"] = dict(data)
    if cache is not None:
        frozen["cache"] = dict(cache)
    return frozen


def cache_view_key(seed: int, view: int | jax.Array) -> jax.Array:
    """The augmentation key of view `view` of a teacher cache made with `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), view)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    teacher_model: nn.Module | None = None,
    objective: Objective | None = None,
    alpha: float = 1.0,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    translate: int = 0,
    flip: bool = False,
    schedule: optax.Schedule | None = None,
    axis_name: str | None = None,
    data_seed: int | None = None,
    students: int = 0,
    students_by: str = "vmap",
    cache: Mapping[str, int] | None = None,
    steps_per_epoch: int = 1,
    prune: Any = None,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]:
    """Builds the train step for a model trained alone or distilled from a teacher.

    The loss is `alpha * CE + objective(...)` with a teacher, plain CE without one.

    Args:
        model: the student (or the model trained alone).
        tx: its optimizer; it updates `{"student": params, "methods": method params}`.
        teacher_model: the teacher module, or None to train on hard labels only (or
            from a cache).
        objective: the distillation terms (`losses.objective.Objective`); default
            `(1 - alpha) * KD(temperature)`.
        alpha: weight of the hard-label cross-entropy.
        temperature: softmax temperature of the default KD term.
        label_smoothing: label smoothing of the cross-entropy term.
        translate: random translation (+-pixels) applied to the batch; teacher and
            student see the same translated view.
        flip: random horizontal flips (after the translation), also shared.
        schedule: the learning-rate schedule, only to log the current rate.
        axis_name: the pmap axis name, or None under jit.
        data_seed: the seed whose key draws the augmentation (shared by all students);
            None draws it from each state's own key (then `data_seed == seed`).
        students: 0 for one state; N > 0 for N stacked states trained in one vmapped
            step. Their `extra["hparams"]` (`alpha`, `temperature`, `lr_scale`) override
            `alpha`, `temperature` and scale the updates, per student.
        students_by: `vmap` batches the N updates into one computation (best where the
            device has parallelism to spare: small models on a GPU); `map` runs them one
            after another inside the same step (unrolled), still sharing the batch and
            the teacher forward (best for conv students on CPU, where vmapped
            convolutions become slow grouped convolutions).
        cache: `{"seed", "views", "top_k"}` of a teacher cache in `frozen["cache"]`; the
            view of epoch `e` is `e % views`, augmented with `cache_view_key(seed, view)`,
            exactly the view the cached teacher saw.
        steps_per_epoch: steps per epoch (selects the cache view).
        prune: a `compress.PruneSchedule`: after each update the student's parameters
            are multiplied by `state.extra["masks"]`, recomputed on the schedule.

    Returns:
        `train_step(state, frozen, batch)`: `frozen` from `frozen_inputs`. `batch` holds
        `image` (uint8 BHWC), `label` (B,), `index` (B,), or only `index` when the split
        is in `frozen["data"]`.
    """
    distilling = teacher_model is not None or cache is not None
    if distilling and objective is None:
        objective = Objective({"alpha": alpha, "temperature": temperature, "losses": {}})
    fixed_data_key = None if data_seed is None else train_key(data_seed)

    def inputs(step, view, rng, frozen, batch):
        """The batch's augmented images, labels and example indices."""
        index = batch["index"]
        if "data" in frozen:  # resident split: gather the rows on the device
            image, labels = frozen["data"]["image"][index], frozen["data"]["label"][index]
        else:
            image, labels = batch["image"], batch["label"]
        if cache is not None:
            aug_key = cache_view_key(cache["seed"], view)
        else:
            data_key = rng if fixed_data_key is None else fixed_data_key
            aug_key, _ = jax.random.split(jax.random.fold_in(data_key, step))
        images = augment(aug_key, to_float(image), index, translate, flip)
        return images, labels, index

    def teacher_outputs(view, frozen, images, index):
        if cache is not None:
            values = frozen["cache"]["values"][index, view]
            if cache["top_k"]:
                return {"topk": (values, frozen["cache"]["indices"][index, view])}
            return {"logits": values}
        if teacher_model is None:
            return None
        t_logits, t_features = teacher_model.apply(frozen["teacher"], images, train=False)
        return jax.lax.stop_gradient({"logits": t_logits, "features": t_features})

    def update(state: TrainState, images, labels, index, teacher_out):
        step_key = jax.random.fold_in(state.rng, state.step)
        _, dropout_key = jax.random.split(step_key)
        method_key = jax.random.fold_in(step_key, 2)  # CRD's negatives
        if axis_name is not None:  # distinct dropout masks on each device
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        hparams = state.extra.get("hparams")
        a = alpha if hparams is None else hparams["alpha"]
        method_batch = {"label": labels, "index": index, "mask": None}
        memory = state.extra.get("memory", {})

        def loss_fn(trainable):
            variables = {"params": trainable["student"]}
            mutable = []
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
                mutable = ["batch_stats"]
            (logits, features), updates = model.apply(
                variables, images, train=True, rngs={"dropout": dropout_key}, mutable=mutable
            )
            ce = cross_entropy(logits, labels, label_smoothing=label_smoothing)
            terms = {"ce": ce}
            new_memory = memory
            if teacher_out is None:
                loss = ce
            else:
                student_out = {"logits": logits, "features": features}
                distill, distill_terms, new_memory = objective(
                    trainable["methods"],
                    memory,
                    student_out,
                    teacher_out,
                    method_batch,
                    method_key,
                    hparams=hparams,
                )
                loss = a * ce + distill
                terms.update(distill_terms)
            aux = (logits, terms, updates.get("batch_stats", state.batch_stats), new_memory)
            return loss, aux

        trainable = {"student": state.params, "methods": state.extra.get("params", {})}
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, terms, batch_stats, memory)), grads = grad_fn(trainable)
        metrics = {
            "loss": loss,
            **terms,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        }
        if teacher_out is not None:
            if "logits" in teacher_out:
                teacher_top1 = jnp.argmax(teacher_out["logits"], -1)
            else:
                values, indices = teacher_out["topk"]
                teacher_top1 = jnp.take_along_axis(
                    indices, jnp.argmax(values, -1)[:, None], axis=-1
                )[:, 0]
            metrics["agreement"] = jnp.mean(jnp.argmax(logits, -1) == teacher_top1)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        lr_scale = 1.0 if hparams is None else hparams["lr_scale"]
        if hparams is not None:  # every optimizer's update is proportional to its rate
            updates = jax.tree.map(lambda u: u * lr_scale, updates)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step) * lr_scale
        trainable = optax.apply_updates(trainable, updates)
        extra = dict(state.extra)
        if prune is not None:  # pruned weights stay exactly zero through every update
            trainable["student"], extra["masks"] = prune_step(
                trainable["student"], state.extra["masks"], state.step, prune
            )
        if "params" in extra:
            extra["params"] = trainable["methods"]
        if "memory" in extra:
            extra["memory"] = memory
        updated = state.replace(
            params=trainable["student"],
            batch_stats=batch_stats,
            opt_state=opt_state,
            extra=extra,
        )
        # Divergence guard: a step whose loss or gradients are not finite changes nothing
        # but the step counter (the loop then stops, or counts the skip). The values are
        # pmean-ed first, so every device takes the same decision.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        new_state = new_state.replace(step=state.step + 1)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        return new_state, metrics

    def train_step(state: TrainState, frozen: Any, batch: Batch):
        if students:  # one batch, view and teacher forward; N student updates
            step, rng = state.step[0], None
        else:
            step, rng = state.step, state.rng
        # The teacher cache's view of this epoch (the student trains on exactly it).
        view = None if cache is None else (step // steps_per_epoch) % cache["views"]
        images, labels, index = inputs(step, view, rng, frozen, batch)
        teacher_out = teacher_outputs(view, frozen, images, index)
        if students and students_by == "map":
            # Unrolled rather than `lax.map`: XLA:CPU ran convolutions inside a loop body
            # ~30x slower than the same convolutions unrolled.
            outs = [
                update(jax.tree.map(lambda x, i=i: x[i], state), images, labels, index, teacher_out)
                for i in range(students)
            ]
            return stack_trees(outs)
        if students:
            return jax.vmap(update, in_axes=(0, None, None, None, None))(
                state, images, labels, index, teacher_out
            )
        return update(state, images, labels, index, teacher_out)

    if students_by not in ("vmap", "map"):
        raise ValueError(f"students_by must be 'vmap' or 'map', got {students_by!r}")
    if students and data_seed is None:
        raise ValueError("vmapped students share one augmentation: pass data_seed")
    return train_step


def make_eval_step(
    model: nn.Module, *, teacher_model: nn.Module | None = None, ece_bins: int = 15
) -> Callable[[Any, Any, Batch], Metrics]:
    """Builds `eval_step(variables, teacher_vars, batch) -> sums` for exact evaluation.

    The step returns *sums* over the unmasked rows of the batch (padding rows have
    `mask == False`), which the caller adds up over all batches in float64:
    `count`, `correct`, `nll`, the per-bin `ece_count`/`ece_conf`/`ece_correct`
    (confidence histogram for the expected calibration error), and with a teacher
    `agree` (top-1 agreement) and `kl` (KL(teacher || student) at T=1).
    """

    def eval_step(variables: Any, teacher_vars: Any, batch: Batch) -> Metrics:
        images = to_float(batch["image"])
        labels = batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        logits, _ = model.apply(variables, images, train=False)
        logp_BC = jax.nn.log_softmax(logits.astype(jnp.float32))
        pred_B = jnp.argmax(logp_BC, -1)
        correct_B = (pred_B == labels).astype(jnp.float32)
        nll_B = -jnp.take_along_axis(logp_BC, labels[:, None], axis=-1)[:, 0]
        conf_B = jnp.exp(jnp.max(logp_BC, -1))
        # Bins (i/n, (i+1)/n]; a confidence of exactly 1 falls in the last bin.
        bin_B = jnp.clip(jnp.ceil(conf_B * ece_bins).astype(jnp.int32) - 1, 0, ece_bins - 1)
        onehot_BK = jax.nn.one_hot(bin_B, ece_bins) * mask[:, None]
        sums = {
            "count": jnp.sum(mask),
            "correct": jnp.sum(correct_B * mask),
            "nll": jnp.sum(nll_B * mask),
            "ece_count": jnp.sum(onehot_BK, 0),
            "ece_conf": jnp.sum(onehot_BK * conf_B[:, None], 0),
            "ece_correct": jnp.sum(onehot_BK * correct_B[:, None], 0),
        }
        if teacher_model is not None:
            t_logits, _ = teacher_model.apply(teacher_vars, images, train=False)
            t_logp_BC = jax.nn.log_softmax(t_logits.astype(jnp.float32))
            agree_B = (jnp.argmax(t_logp_BC, -1) == pred_B).astype(jnp.float32)
            kl_B = jnp.sum(jnp.exp(t_logp_BC) * (t_logp_BC - logp_BC), -1)
            sums["agree"] = jnp.sum(agree_B * mask)
            sums["kl"] = jnp.sum(kl_B * mask)
        return sums

    return eval_step
