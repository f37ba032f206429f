"""The whole training loss a config selects: `alpha * task_loss + sum_i w_i * L_i`.

`Objective` is the one place where the loss is put together: the task's loss (cross-
entropy with `train.label_smoothing`) weighted by `distill.alpha`, plus the weighted
distillation terms, with per-student `alpha` / `temperature` for vmapped grids. The
train step, the tests and the benchmarks all call it; nothing else spells out Hinton's
objective.

`distill.losses` maps a name to `{"weight": w, **hyperparameters}`. A name is either a
logit loss of `LOSSES` (`kd`, `dkd`, `dist`, `reverse_kl`, ...: functions of the two
models' logits) or a feature/relation method of `METHODS` (`fitnet`, `crd`, ...: Linen
modules that read named features and may own trainable parameters and a memory bank).
When `distill.losses` is empty, the objective is Hinton et al.'s
`alpha * CE + (1 - alpha) * KD(T = distill.temperature)`.

Every term is logged unweighted under its name, next to `ce` and the total `loss`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError
from distill_jax.losses import LOSSES, METHODS, Method, topk_kd_loss
from distill_jax.losses.lm import LM_LOSSES, check_hyperparameters, lm_topk_loss
from distill_jax.robust import NoPerturbation
from distill_jax.tasks import Classification, Task

# Arguments the pipeline supplies itself; a config may not set them.
_SUPPLIED = ("student_logits_BC", "teacher_logits_BC", "labels_B", "mask_B", "num_data")


def _all_names() -> list[str]:
    return sorted(set(LOSSES) - {"cross_entropy"} | set(METHODS))


def _hyperparameters(name: str) -> dict[str, Any]:
    """A loss's or method's configurable hyperparameters and their defaults."""
    if name in METHODS:
        return {
            f.name: f.default
            for f in dataclasses.fields(METHODS[name])
            if f.init and f.name not in ("parent", "name", *_SUPPLIED)
        }
    params = inspect.signature(LOSSES[name]).parameters
    return {p: v.default for p, v in params.items() if p not in _SUPPLIED}


def _check_value(where: str, value: Any, default: Any) -> None:
    """Numbers must be finite; a list-valued hyperparameter (feature names) a list."""
    if isinstance(default, tuple) and isinstance(value, str):
        raise ConfigError(f"{where} must be a list (e.g. [{value!r}]), got the string {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")


def validate_losses(losses: Mapping[str, Any], key: str = "distill.losses") -> None:
    """Checks loss names, weights and hyperparameter names; messages list what is valid."""
    valid = _all_names()
    for name, spec in losses.items():
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown loss '{key}.{name}'{hint}; valid losses: {', '.join(valid)}"
            )
        if not isinstance(spec, Mapping) or "weight" not in spec:
            raise ConfigError(f"{key}.{name} must be a dict with a 'weight', got {spec!r}")
        weight = spec["weight"]
        bad = isinstance(weight, bool) or not isinstance(weight, int | float)
        if bad or not weight >= 0 or not math.isfinite(weight):  # NaN fails too
            raise ConfigError(f"{key}.{name}.weight must be a number >= 0, got {weight!r}")
        allowed = _hyperparameters(name)
        for k, value in spec.items():
            if k == "weight":
                continue
            if k not in allowed:
                close = difflib.get_close_matches(k, list(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"unknown key '{key}.{name}.{k}'{hint}; valid keys: "
                    f"{', '.join(['weight', *allowed])}"
                )
            _check_value(f"{key}.{name}.{k}", value, allowed[k])


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted term of the objective."""

    name: str
    weight: float
    kwargs: dict[str, Any]
    method: Method | None = None  # feature/relation methods; None for logit losses


def _shapes(features: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in features.items())


class Objective:
    """The whole training loss: `alpha * task_loss + sum_i w_i * L_i`.

    The task loss (cross-entropy, with label smoothing) comes from the task; the terms
    from `distill.losses` (or Hinton's `(1 - alpha) * KD(T)` when that is empty). A model
    trained alone (`distilling=False`) has no terms and `alpha = 1`. Names and
    hyperparameters were validated with the config (`config.validate`).

    A robust method (`robust.RobustMethod`, config `<role>.train.robust`) supplies the
    task term instead of the plain CE: computed from the student's logits on the clean
    and the adversarial inputs (`student["adv_logits"]`), logged under the method's name.
    PGD-AT and TRADES replace CE inside the usual objective; the robust distillation
    methods (ARD, IAD, RSLAD, AdaAD) are whole objectives with their own weights, so
    `distill.losses` must then be empty and `alpha` is 1.

    Args:
        distill_cfg: the config's `distill` section (`alpha`, `temperature`, `losses`).
        student_features: the student's feature shapes (from `jax.eval_shape`), to check
            the features the methods read; None skips the check.
        teacher_features: the teacher's feature shapes, likewise.
        num_data: size of the training split (CRD's memory bank).
        task: how logits meet labels (`tasks.Task`); default classification.
        label_smoothing: of the task loss.
        distilling: False for a model trained on labels alone.
        robust: the robust method (default `NoPerturbation`: the plain task loss).
    """

    def __init__(
        self,
        distill_cfg: Mapping[str, Any],
        student_features: Mapping[str, Any] | None = None,
        teacher_features: Mapping[str, Any] | None = None,
        *,
        num_data: int = 0,
        task: Task | None = None,
        label_smoothing: float = 0.0,
        distilling: bool = True,
        robust: NoPerturbation | None = None,
    ):
        self.task = Classification() if task is None else task
        self.robust = NoPerturbation() if robust is None else robust
        if self.robust.replaces_objective:  # a whole robust distillation objective
            if distill_cfg.get("losses"):
                raise ConfigError(
                    f"distill.losses is set, but robust method {self.robust.name} is a whole "
                    f"distillation objective (its own KL and CE weights): use one or the other"
                )
            distilling = False
        self.label_smoothing = float(label_smoothing)
        self.alpha = float(distill_cfg["alpha"]) if distilling else 1.0
        losses = dict(distill_cfg.get("losses") or {}) if distilling else {}
        # Hinton's objective; only it takes per-student alpha/temperature (`hparams`).
        self.is_default = distilling and not losses and not self.robust.replaces_objective
        if self.is_default:
            losses = {
                "kd": {
                    "weight": 1.0 - distill_cfg["alpha"],
                    "temperature": distill_cfg["temperature"],
                }
            }
        self.terms: list[Term] = []
        for name, spec in losses.items():
            kwargs = {
                k: (tuple(v) if isinstance(v, list) else v)
                for k, v in spec.items()
                if k != "weight"
            }
            method = None
            if name in METHODS:
                cls = METHODS[name]
                if "num_data" in {f.name for f in dataclasses.fields(cls)}:
                    kwargs["num_data"] = num_data
                method = cls(**kwargs)
                self._check_features(name, method, student_features, teacher_features)
            else:
                fn = LOSSES[name]
                if "labels_B" in inspect.signature(fn).parameters:
                    kwargs["_needs_labels"] = True
                if name in LM_LOSSES:  # bad beta / skew / temperature / chunk: fail now
                    hp = {k: v for k, v in kwargs.items() if k != "topk_rest"}
                    check_hyperparameters(
                        divergence=LM_LOSSES[name][0], where=f"distill.losses.{name}", **hp
                    )
            self.terms.append(Term(name, float(spec["weight"]), kwargs, method))

    @staticmethod
    def _check_features(name, method, student_features, teacher_features) -> None:
        for side, wanted, have in (
            ("student", method.student_features, student_features),
            ("teacher", method.teacher_features, teacher_features),
        ):
            if have is None:
                continue
            missing = [f for f in wanted if f not in have]
            if missing:
                raise ConfigError(
                    f"distill.losses.{name}: the {side} has no feature "
                    f"{', '.join(repr(m) for m in missing)}; available: {_shapes(have)}"
                )

    @property
    def methods(self) -> list[Term]:
        """The terms that are feature/relation methods (they may hold variables)."""
        return [t for t in self.terms if t.method is not None]

    def init(self, key: jax.Array, student: dict, teacher: dict, batch: dict) -> dict:
        """Initialises the methods' variables: `{name: {"params": ..., "memory": ...}}`."""
        extra = {}
        for i, term in enumerate(self.methods):
            k_params, k_crd = jax.random.split(jax.random.fold_in(key, i))
            variables = term.method.init(
                {"params": k_params, "crd": k_crd}, student, teacher, batch, train=False
            )
            extra[term.name] = {k: v for k, v in variables.items()}
        return extra

    def __call__(
        self,
        params: Mapping[str, Any],
        memory: Mapping[str, Any],
        student: dict,
        teacher: dict | None,
        batch: dict,
        key: jax.Array,
        train: bool = True,
        hparams: Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
        """The loss of one batch.

        Args:
            params: trainable method parameters `{name: params}`.
            memory: method memory banks `{name: memory}`.
            student: `{"logits": ..., "features": {...}}` of the student.
            teacher: the teacher source's outputs (`{"logits", "features"}` or
                `{"topk": (values, indices)}`), or None for a model trained alone.
            batch: `{"label", "index", "mask"}`.
            key: randomness for methods that sample (CRD's negatives).
            train: update memory banks.
            hparams: per-student `alpha`/`temperature` (traced scalars) that replace the
                config's (vmapped hyperparameter grids); empty or None for one run.

        Returns:
            `(loss, terms, new_memory)`: the weighted sum, each term unweighted by name
            (`ce` first), and the updated memory banks.
        """
        mask = batch.get("mask")
        ce = self.task.loss(student["logits"], batch["label"], mask, self.label_smoothing)
        terms: dict[str, jax.Array] = {"ce": ce}
        # A robust method's task term (on the adversarial inputs) replaces the plain CE.
        task_loss, robust_terms = self.robust.task_loss(
            student, teacher, batch["label"], mask, batch.get("step")
        )
        if task_loss is None:
            task_loss = ce
        else:
            terms[self.robust.name] = task_loss
        terms.update(robust_terms)
        if teacher is None or not self.terms:
            return task_loss, terms, dict(memory)
        alpha = hparams["alpha"] if hparams else self.alpha
        # What the logit terms average over: the row mask, or a token-level task's tagged
        # positions (then the terms see (B, L, C) logits and a (B, L) mask).
        mask = self.task.term_mask(batch["label"], mask)
        total = jnp.zeros((), jnp.float32)
        new_memory = dict(memory)
        for i, term in enumerate(self.terms):
            weight = term.weight
            if term.method is None:
                kwargs = {k: v for k, v in term.kwargs.items() if k != "_needs_labels"}
                if hparams and self.is_default:
                    weight = 1.0 - hparams["alpha"]
                    kwargs["temperature"] = hparams["temperature"]
                if "logits" not in teacher:  # a top-k teacher cache (checked early)
                    value = _topk_term(term.name, student["logits"], teacher["topk"], kwargs, mask)
                    terms[term.name] = value
                    total = total + weight * value
                    continue
                args = [student["logits"], teacher["logits"]]
                if term.kwargs.get("_needs_labels"):
                    args.append(batch["label"])
                value = LOSSES[term.name](*args, **kwargs, mask_B=mask)
            else:
                variables = {}
                if term.name in params:
                    variables["params"] = params[term.name]
                if term.name in memory:
                    variables["memory"] = memory[term.name]
                rngs = {"crd": jax.random.fold_in(key, i)}
                if term.name in memory and train:
                    value, updates = term.method.apply(
                        variables,
                        student,
                        teacher,
                        batch,
                        train=True,
                        rngs=rngs,
                        mutable=["memory"],
                    )
                    new_memory[term.name] = updates["memory"]
                else:
                    value = term.method.apply(
                        variables, student, teacher, batch, train=train, rngs=rngs
                    )
            terms[term.name] = value
            total = total + weight * value
        return alpha * task_loss + total, terms, new_memory

    def check_cached_teacher(self, top_k: int) -> None:
        """Refuses terms that a teacher cache cannot feed (features; non-KD with top-k)."""
        for term in self.terms:
            if term.method is not None:
                raise ConfigError(
                    f"distill.losses.{term.name} reads teacher features, which a teacher "
                    f"cache does not store; use the online teacher (--teacher DIR)"
                )
            if top_k and term.name != "kd" and term.name not in LM_LOSSES:
                raise ConfigError(
                    f"distill.losses.{term.name} needs the teacher's full logits; this cache "
                    f"keeps the top {top_k} only (cache-teacher --top_k 0 stores all)"
                )
            if top_k and term.name in LM_LOSSES:
                divergence = LM_LOSSES[term.name][0]
                rest = bool(term.kwargs.get("topk_rest", False))
                if not rest and divergence != "forward_kl":
                    raise ConfigError(
                        f"distill.losses.{term.name} with a top-{top_k} teacher cache needs "
                        f"topk_rest=True (the renormalised top-k variant is the forward KL "
                        f"only: lm_kl)"
                    )
                if rest and float(term.kwargs.get("temperature", 1.0)) != 1.0:
                    raise ConfigError(
                        f"distill.losses.{term.name}.topk_rest needs temperature 1 (the "
                        f"cache's mass outside the top {top_k} is known only at T = 1)"
                    )


def _topk_term(name: str, student_logits, topk, kwargs: dict, mask) -> jax.Array:
    """A logit term against a top-k teacher cache: `kd` (Hinton, renormalised top-k) or
    an `lm_*` divergence (`lm_topk_loss`, renormalised or with the rest bucket)."""
    values, indices = topk
    if name not in LM_LOSSES:
        return topk_kd_loss(student_logits, values, indices, **kwargs, mask_B=mask)
    kwargs = dict(kwargs)
    rest = bool(kwargs.pop("topk_rest", False))
    return lm_topk_loss(
        student_logits,
        values,
        indices,
        LM_LOSSES[name][0],
        rest=rest,
        **kwargs,
        mask_B=mask,
    )
