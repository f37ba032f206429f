"""Pure train and eval steps.

`make_train_step` returns `train_step(state, teacher_vars, batch) -> (state, metrics)`.
The same function is jit-compiled (batch sharded over a mesh; XLA inserts the collectives)
or run under `jax.pmap` with `axis_name` set, where gradients, metrics and BatchNorm
statistics are averaged explicitly with `lax.pmean`. The teacher forward runs outside
`value_and_grad` and under `stop_gradient`: no gradient can reach it and XLA never builds
its backward pass.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.data.augment import augment, to_float
from distill_jax.losses import cross_entropy
from distill_jax.losses.objective import Objective
from distill_jax.train.state import TrainState

Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


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
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]:
    """Builds the train step for a model trained alone or distilled from a teacher.

    The loss is `alpha * CE + objective(...)` with a teacher, plain CE without one.

    Args:
        model: the student (or the model trained alone).
        tx: its optimizer; it updates `{"student": params, "methods": method params}`.
        teacher_model: the teacher module, or None to train on hard labels only.
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

    Returns:
        `train_step(state, teacher_vars, batch)`; `teacher_vars` is ignored (pass None)
        without a teacher. `batch` holds `image` (uint8 BHWC), `label` (B,), `index` (B,).
    """
    if teacher_model is not None and objective is None:
        objective = Objective({"alpha": alpha, "temperature": temperature, "losses": {}})

    def train_step(state: TrainState, teacher_vars: Any, batch: Batch):
        step_key = jax.random.fold_in(state.rng, state.step)
        aug_key, dropout_key = jax.random.split(step_key)
        method_key = jax.random.fold_in(step_key, 2)  # CRD's negatives
        if axis_name is not None:  # distinct dropout masks on each device
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        images = augment(aug_key, to_float(batch["image"]), batch["index"], translate, flip)
        labels = batch["label"]
        method_batch = {"label": labels, "index": batch["index"], "mask": None}

        teacher_out = None
        if teacher_model is not None:
            t_logits, t_features = teacher_model.apply(teacher_vars, images, train=False)
            teacher_out = jax.lax.stop_gradient({"logits": t_logits, "features": t_features})
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
                )
                loss = alpha * ce + distill
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
            metrics["agreement"] = jnp.mean(
                jnp.argmax(logits, -1) == jnp.argmax(teacher_out["logits"], -1)
            )
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics["grad_norm"] = optax.global_norm(grads)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        extra = dict(state.extra)
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
