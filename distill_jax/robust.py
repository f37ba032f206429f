"""Robust training and robust distillation: an inner maximisation plus an objective term.

Adversarial training solves a min-max problem: per batch, an *inner maximisation* finds
for each clean input x an adversarial input x' in the threat set

    S(x) = {x' : ||x' - x||_inf <= eps, 0 <= x' <= 1}      (pixels as the model gets them)

that maximises an inner loss, and the *outer* objective is minimised at those points.
A `RobustMethod` supplies both halves, and the trainer calls it without knowing which
method it is:

* `views(...)` -> `{"adv": x'}` (under `stop_gradient`), run inside the student's update
  with the student's current parameters (in inference mode, as the official code runs
  `model.eval()`), so that each of N vmapped students attacks itself;
* `task_loss(...)` -> the objective's task term, given the student's logits on x and on
  x' and the teacher's logits on x (and on x' for the methods that ask for it,
  `teacher_on_adv`).

`NoPerturbation` is the identity (no inner maximisation, the plain objective). The inner
maximisation is sign-gradient ascent (PGD, L-inf) with projection onto S(x)
(`attacks.project`): `steps` steps of `step_size` (default `attacks.pgd_step_size`,
2.5 * eps / steps; eps / 4 for 10 steps, the official codes' 2/255 at eps 8/255).
`eps_warmup` > 0 ramps the training radius linearly from 0 to eps over that fraction of
the run's steps (with the default step size in proportion): PGD training at MNIST's
eps = 0.3 from the first step can stall at chance (loss ~ log 10), which the ramp
avoids (the curriculum of Gowal et al. 2018's IBP training and of many PGD-AT recipes).

The methods (config `<role>.train.robust.method`), each with its paper's defaults:

=========  ================================================  ==========================
method     outer objective (batch means)                     inner maximisation of
=========  ================================================  ==========================
pgd_at     CE(S(x'), y)                                      CE(S(x'), y)
trades     CE(S(x), y) + beta KL(S(x) || S(x'))              KL(S(x) || S(x'))
ard        alpha T^2 KL(T(x)/T || S(x')/T)                   CE(S(x'), y)
           + (1 - alpha) CE(S(x), y)
iad        ard's, + alpha (1 - P_T(y|x')^beta)               CE(S(x'), y)
           KL(S(x) || S(x'))   (after `iad_begin`)
rslad      w KL(T(x) || S(x')) + (1 - w) KL(T(x) || S(x))    KL(T(x) || S(x'))
adaad      alpha KL(T(x') || S(x')) + (1-alpha) KL(T(x)||S(x))  KL(T(x') || S(x'))
=========  ================================================  ==========================

KL(P || Q) = sum_c p_c (log p_c - log q_c) of the softmax distributions, summed over
classes and averaged over examples (batchmean, as in the papers' equations; several
official codes average over classes too, see each loss). Every method's differences
from its official code are stated in its loss's docstring.

Shapes: `B` batch, `X` the trailing input axes, `C` classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from distill_jax.attacks import PIXEL_RANGE, pgd_step_size, project, random_start
from distill_jax.errors import ConfigError
from distill_jax.losses.base import masked_mean, to_float32

#: `f(x_BX) -> logits_BC`: a model in inference mode with its variables bound.
LogitsFn = Callable[[jax.Array], jax.Array]

#: Scale of the Gaussian start of the KL-based methods (TRADES, RSLAD, AdaAD codes).
GAUSSIAN_START = 0.001

# ------------------------------------------------------------------------ loss helpers


def kl_rows(target_logits_BC: jax.Array, logits_BC: jax.Array, temperature=1.0) -> jax.Array:
    """Per-example KL(softmax(target / T) || softmax(logits / T)), float32 (B,).

    Gradients flow through both arguments (callers stop them where the method does)."""
    log_p_BC = jax.nn.log_softmax(to_float32(target_logits_BC) / temperature, axis=-1)
    log_q_BC = jax.nn.log_softmax(to_float32(logits_BC) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p_BC) * (log_p_BC - log_q_BC), axis=-1)


def ce_rows(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example cross-entropy -log softmax(z)_y, float32 (B,)."""
    logp_BC = jax.nn.log_softmax(to_float32(logits_BC), axis=-1)
    return -jnp.take_along_axis(logp_BC, labels_B[:, None], axis=-1)[:, 0]


# ------------------------------------------------------------------------------ losses


def pgd_at_loss(student_adv_BC, labels_B, mask_B=None) -> jax.Array:
    """PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks", eq. 2.1): the batch mean of CE(S(x'), y), x' the
    PGD maximiser of the same CE from a uniform random start in the eps-ball. As the
    official code (and AdaAD's `Plain_Madry`)."""
    return masked_mean(ce_rows(student_adv_BC, labels_B), mask_B)


def trades_loss(student_BC, student_adv_BC, labels_B, beta: float = 6.0, mask_B=None):
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness
    and Accuracy", eq. 5):

        CE(S(x), y) + beta * KL(S(x) || S(x'))

    batch means; beta = 1 / lambda = 6 (the paper's CIFAR-10 setting and the official
    `train_trades_cifar10.py`). As in the official `trades_loss`, gradients flow through
    both S(x) and S(x') of the KL; x' maximises the summed KL(S(x) || S(x')) from
    x + 0.001 * N(0, I). We project the Gaussian start onto the threat set (the official
    code clips only after the first step)."""
    ce = masked_mean(ce_rows(student_BC, labels_B), mask_B)
    return ce + beta * masked_mean(kl_rows(student_BC, student_adv_BC), mask_B)


def ard_loss(
    student_BC,
    student_adv_BC,
    teacher_BC,
    labels_B,
    alpha: float = 1.0,
    temperature: float = 30.0,
    mask_B=None,
):
    """ARD (Goldblum et al. 2020, "Adversarially Robust Distillation", eq. 4):

        alpha * T^2 * KL(T(x)/T || S(x')/T) + (1 - alpha) * CE(S(x), y)

    with x' the student's own PGD maximiser of CE(S(x'), y) (uniform random start).
    Defaults alpha = 1, T = 30: the official `main.py`'s. Differences: the official code
    reduces the KL with `nn.KLDivLoss()`'s element mean (divided by B * C); we take the
    paper's per-example sum over classes (batchmean), C times larger. Its attack runs the
    student in training mode (BatchNorm on batch statistics, running averages updated by
    every attack step); ours runs it in inference mode, as TRADES', RSLAD's and AdaAD's
    codes do, so x' does not depend on the rest of the batch."""
    teacher_BC = jax.lax.stop_gradient(teacher_BC)
    kl = masked_mean(kl_rows(teacher_BC, student_adv_BC, temperature), mask_B)
    ce = masked_mean(ce_rows(student_BC, labels_B), mask_B)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


def iad_loss(
    student_BC,
    student_adv_BC,
    teacher_BC,
    teacher_adv_BC,
    labels_B,
    alpha: float = 1.0,
    beta: float = 0.1,
    temperature: float = 1.0,
    introspect=1.0,
    mask_B=None,
):
    """IAD-I (Zhu et al. 2022, "Reliable Adversarial Distillation with Unreliable
    Teachers", introspective adversarial distillation on top of ARD):

        alpha * T^2 * KL(T(x)/T || S(x')/T)
        + introspect * alpha * mean_B[(1 - P_T(y | x')^beta) * KL(S(x) || S(x'))]
        + (1 - alpha) * CE(S(x), y)

    The student trusts the teacher less where the teacher is unsure of the true class at
    the adversarial point (P_T(y|x') small) and leans on its own clean prediction S(x)
    instead. `introspect` is 0 before `iad_begin` of training, then 1 (official: from
    epoch 60 of 200). Defaults alpha = 1, beta = 0.1, T = 1, inner maximisation CE of the
    student (ARD's): the official IAD-I script's. As there, the teacher term is not
    weighted by P_T^beta, the weight carries no gradient, and gradients flow through both
    S(x) and S(x') of the introspection KL. Differences: the official script switches the
    introspection on at an epoch (`--begin 60` of 200), we at a fraction of the run's
    steps; like ARD's, its attack runs the student in training mode, ours in inference
    mode."""
    teacher_BC = jax.lax.stop_gradient(teacher_BC)
    log_pt_BC = jax.nn.log_softmax(to_float32(jax.lax.stop_gradient(teacher_adv_BC)), -1)
    trust_B = jnp.exp(beta * jnp.take_along_axis(log_pt_BC, labels_B[:, None], -1)[:, 0])
    kl_t = masked_mean(kl_rows(teacher_BC, student_adv_BC, temperature), mask_B)
    kl_s = masked_mean((1.0 - trust_B) * kl_rows(student_BC, student_adv_BC), mask_B)
    ce = masked_mean(ce_rows(student_BC, labels_B), mask_B)
    return alpha * temperature**2 * kl_t + introspect * alpha * kl_s + (1.0 - alpha) * ce


def rslad_loss(student_BC, student_adv_BC, teacher_BC, adv_weight: float = 5 / 6, mask_B=None):
    """RSLAD (Zi et al. 2021, "Revisiting Adversarial Robustness Distillation: Robust Soft
    Labels Make Student Better", eq. 6), the teacher's soft labels of the *clean* input
    in both terms:

        w * KL(T(x) || S(x')) + (1 - w) * KL(T(x) || S(x)),    w = 5/6

    x' maximises the summed KL(T(x) || S(x')) from x + 0.001 * N(0, I). The paper writes
    KL(S || T); the official code's `kl_loss(log S, T)` is sum T (log T - log S), i.e.
    KL(T || S), which we follow. Differences: the official code adds 1e-5 inside
    log T and reduces with `torch.mean` over B * C; we use the exact log-softmax and
    batchmean (a factor C larger)."""
    teacher_BC = jax.lax.stop_gradient(teacher_BC)
    adv = masked_mean(kl_rows(teacher_BC, student_adv_BC), mask_B)
    nat = masked_mean(kl_rows(teacher_BC, student_BC), mask_B)
    return adv_weight * adv + (1.0 - adv_weight) * nat


def adaad_loss(
    student_BC, student_adv_BC, teacher_BC, teacher_adv_BC, alpha: float = 1.0, mask_B=None
):
    """AdaAD (Huang et al. 2023, "Boosting Accuracy and Robustness of Student Models via
    Adaptive Adversarial Distillation", eq. 7-8): the inner maximisation looks for the
    point where student and teacher disagree most, the teacher on the perturbed point too,

        x' = argmax_{x' in S(x)} KL(T(x') || S(x'))       (from x + 0.001 * N(0, I))
        loss = alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x))

    alpha = 1 (the official `--AdaAD_alpha`). The official code's `KLDivLoss(log S, T)`
    is KL(T || S), which we follow (the paper writes KL(S || T)); it reduces with the
    element mean (divided by B * C) on CIFAR-10 and batchmean on CIFAR-100: we use
    batchmean."""
    teacher_BC = jax.lax.stop_gradient(teacher_BC)
    teacher_adv_BC = jax.lax.stop_gradient(teacher_adv_BC)
    adv = masked_mean(kl_rows(teacher_adv_BC, student_adv_BC), mask_B)
    nat = masked_mean(kl_rows(teacher_BC, student_BC), mask_B)
    return alpha * adv + (1.0 - alpha) * nat


# ------------------------------------------------------------------ inner maximisation


def maximise(
    objective_B: Callable[[jax.Array], jax.Array],
    x_BX: jax.Array,
    x0_BX: jax.Array,
    *,
    eps: float,
    steps: int,
    step_size: float,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> jax.Array:
    """L-inf sign-gradient ascent on `sum_B objective_B(x')` from `x0`, projected onto the
    eps-ball around `x` and `bounds` after every step (each example's gradient is its own:
    the model runs in inference mode). Returns x' under `stop_gradient`."""
    grad_fn = jax.grad(lambda x: jnp.sum(objective_B(x)))

    def step(_, x_adv_BX):
        x_next = x_adv_BX + step_size * jnp.sign(grad_fn(x_adv_BX))
        return project(x_next, x_BX, eps, "linf", bounds)

    x_adv = jax.lax.fori_loop(0, steps, step, project(x0_BX, x_BX, eps, "linf", bounds))
    return jax.lax.stop_gradient(x_adv)


# --------------------------------------------------------------------------- methods


class NoPerturbation:
    """The identity: no adversarial input, the objective's plain task loss."""

    name: ClassVar[str | None] = None
    needs_teacher: ClassVar[bool] = False
    teacher_on_adv: ClassVar[bool] = False
    replaces_objective: ClassVar[bool] = False

    def views(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out, key, step=0) -> dict:
        """The extra inputs the student trains on: none."""
        return {}

    def task_loss(self, student, teacher, labels_B, mask_B, step) -> tuple[Any, dict]:
        """None: the objective uses the task's own loss."""
        return None, {}


@dataclasses.dataclass(frozen=True)
class RobustMethod(NoPerturbation):
    """A robust training method: the threat set, the inner loss and the outer loss.

    Attributes:
        eps: the L-inf radius in model-input units (pixels in [0, 1]).
        steps: inner ascent steps.
        step_size: the ascent step (None: `pgd_step_size`, 2.5 * eps / steps).
        random_start: start from the method's random point (uniform in the ball for the
            CE methods, x + 0.001 N(0, I) for the KL ones), else from x.
        hparams: the method's hyperparameters (`DEFAULTS[name]` with the config's).
        begin_step: IAD only: the step from which the introspection term is on.
        eps_warmup_steps: the training radius rises linearly from eps / n to eps over
            the first n steps (0: eps from the start).
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    hparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    begin_step: int = 0
    eps_warmup_steps: int = 0

    #: "ce": the inner loss is the student's CE; else a KL with a Gaussian start.
    inner: ClassVar[str] = "ce"

    def eps_at(self, step) -> Any:
        """The training radius at `step` (0-based): eps, or eps * min(1, (step + 1) / n)
        during an `eps_warmup_steps` = n ramp."""
        if self.eps_warmup_steps <= 0:
            return self.eps
        frac = jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / self.eps_warmup_steps)
        return self.eps * frac

    def _start(self, key, x_BX, eps):
        if not self.random_start:
            return x_BX
        if self.inner == "ce":
            return random_start(key, x_BX, eps, "linf")
        return x_BX + GAUSSIAN_START * jax.random.normal(key, x_BX.shape, x_BX.dtype)

    def inner_loss(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out) -> Callable:
        """`f(x') -> (B,)`: the per-example loss the inner maximisation ascends."""
        return lambda xa: ce_rows(student_fn(xa), labels_B)

    def views(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out, key, step=0):
        """`{"adv": x'}`: the inner maximiser, with the student's current parameters.

        Args:
            student_fn: the student in inference mode, `x -> logits`.
            teacher_fn: the teacher, `x -> logits` (None without an online teacher).
            x_BX: the clean (augmented) inputs.
            labels_B: their labels.
            teacher_out: the teacher's outputs on x (or None).
            key: the random start's key.
            step: the training step (the radius of an `eps_warmup_steps` ramp).
        """
        objective_B = self.inner_loss(student_fn, teacher_fn, x_BX, labels_B, teacher_out)
        eps = self.eps_at(step)
        step_size = self.step_size
        if step_size is not None and self.eps_warmup_steps > 0:  # in proportion to eps
            step_size = step_size * eps / self.eps
        x_adv = maximise(
            objective_B,
            x_BX,
            self._start(key, x_BX, eps),
            eps=eps,
            steps=self.steps,
            step_size=pgd_step_size(eps, self.steps, step_size),
        )
        return {"adv": x_adv}


class PGDAT(RobustMethod):
    name = "pgd_at"

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        return pgd_at_loss(student["adv_logits"], labels_B, mask_B), {}


class TRADES(RobustMethod):
    name = "trades"
    inner = "kl"

    def inner_loss(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out):
        clean_BC = jax.lax.stop_gradient(student_fn(x_BX))
        return lambda xa: kl_rows(clean_BC, student_fn(xa))

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        s, s_adv = student["logits"], student["adv_logits"]
        kl = masked_mean(kl_rows(s, s_adv), mask_B)
        return trades_loss(s, s_adv, labels_B, **self.hparams, mask_B=mask_B), {"trades_kl": kl}


class ARD(RobustMethod):
    name = "ard"
    needs_teacher = True
    replaces_objective = True

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        s, s_adv, t = student["logits"], student["adv_logits"], teacher["logits"]
        return ard_loss(s, s_adv, t, labels_B, **self.hparams, mask_B=mask_B), {}


class IAD(RobustMethod):
    name = "iad"
    needs_teacher = True
    teacher_on_adv = True
    replaces_objective = True

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        hp = {k: v for k, v in self.hparams.items() if k != "begin"}
        introspect = (step >= self.begin_step).astype(jnp.float32)
        value = iad_loss(
            student["logits"],
            student["adv_logits"],
            teacher["logits"],
            teacher["adv_logits"],
            labels_B,
            **hp,
            introspect=introspect,
            mask_B=mask_B,
        )
        return value, {"introspect": introspect}


class RSLAD(RobustMethod):
    name = "rslad"
    needs_teacher = True
    replaces_objective = True
    inner = "kl"

    def inner_loss(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out):
        t_BC = jax.lax.stop_gradient(teacher_out["logits"])
        return lambda xa: kl_rows(t_BC, student_fn(xa))

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        s, s_adv, t = student["logits"], student["adv_logits"], teacher["logits"]
        return rslad_loss(s, s_adv, t, **self.hparams, mask_B=mask_B), {}


class AdaAD(RobustMethod):
    name = "adaad"
    needs_teacher = True
    teacher_on_adv = True
    replaces_objective = True
    inner = "kl"

    def inner_loss(self, student_fn, teacher_fn, x_BX, labels_B, teacher_out):
        return lambda xa: kl_rows(teacher_fn(xa), student_fn(xa))

    def task_loss(self, student, teacher, labels_B, mask_B, step):
        value = adaad_loss(
            student["logits"],
            student["adv_logits"],
            teacher["logits"],
            teacher["adv_logits"],
            **self.hparams,
            mask_B=mask_B,
        )
        return value, {}


METHODS: dict[str, type[RobustMethod]] = {
    cls.name: cls for cls in (PGDAT, TRADES, ARD, IAD, RSLAD, AdaAD)
}
#: Each method's hyperparameters (config `robust.<method>_<name>`) and paper defaults.
DEFAULTS: dict[str, dict[str, float]] = {
    "pgd_at": {},
    "trades": {"beta": 6.0},
    "ard": {"alpha": 1.0, "temperature": 30.0},
    "iad": {"alpha": 1.0, "beta": 0.1, "temperature": 1.0, "begin": 0.3},
    "rslad": {"adv_weight": 5 / 6},
    "adaad": {"alpha": 1.0},
}
TEACHER_METHODS = tuple(n for n, c in METHODS.items() if c.needs_teacher)


def default_section() -> dict[str, Any]:
    """The config section `<role>.train.robust` with its defaults."""
    section: dict[str, Any] = {
        "method": None,
        "eps": 0.3,
        "steps": 10,
        "step_size": None,
        "random_start": True,
        "eps_warmup": 0.0,
    }
    for method, hparams in DEFAULTS.items():
        section.update({f"{method}_{k}": v for k, v in hparams.items()})
    return section


def validate_section(section: Mapping[str, Any], key: str, role: str) -> None:
    """Checks a `<role>.train.robust` section (types were checked with the config).

    Raises:
        ConfigError: one line naming the key and what is valid.
    """
    method = section["method"]
    if method is not None and method not in METHODS:
        raise ConfigError(
            f"{key}.method = {method!r} is not valid; valid values: None, {', '.join(METHODS)}"
        )
    if role == "teacher" and method in TEACHER_METHODS:  # None is not in it
        raise ConfigError(
            f"{key}.method = {method!r} distils from a teacher, and the teacher trains on "
            f"labels; valid here: pgd_at, trades"
        )
    lo, hi = PIXEL_RANGE
    eps = section["eps"]
    if not 0 < eps < hi - lo:  # NaN fails too
        raise ConfigError(
            f"{key}.eps = {eps!r} is outside the input range: it must be in (0, {hi - lo:g}), "
            f"in model-input units (pixels scaled to [{lo:g}, {hi:g}])"
        )
    if section["steps"] < 1:
        raise ConfigError(f"{key}.steps must be >= 1, got {section['steps']!r}")
    step_size = section["step_size"]
    if step_size is not None and (
        isinstance(step_size, bool)
        or not isinstance(step_size, int | float)
        or not 0 < step_size < math.inf
    ):
        raise ConfigError(f"{key}.step_size must be > 0 (or None: 2.5 * eps / steps)")
    warmup = section["eps_warmup"]
    if isinstance(warmup, bool) or not isinstance(warmup, int | float) or not 0 <= warmup < 1:
        raise ConfigError(
            f"{key}.eps_warmup = {warmup!r} must be in [0, 1): the fraction of the run's "
            f"steps over which the training eps rises from 0 (0: no ramp)"
        )
    if method is None:
        return
    if not section["random_start"] and METHODS[method].inner == "kl":
        raise ConfigError(
            f"{key}.random_start = False: {method}'s inner KL has zero gradient at x, so "
            f"x' would never leave it; keep it True (x + 0.001 * N(0, I))"
        )
    for name, value in hparams_of(section, method).items():
        ok = (0.0 <= value <= 1.0) if name in ("alpha", "adv_weight", "begin") else value > 0
        if not ok or not math.isfinite(value):
            valid = "in [0, 1]" if name in ("alpha", "adv_weight", "begin") else "> 0"
            raise ConfigError(f"{key}.{method}_{name} must be {valid}, got {value!r}")


def hparams_of(section: Mapping[str, Any], method: str) -> dict[str, float]:
    """The hyperparameters of `method` from a section (`<method>_<name>` keys)."""
    return {k: float(section[f"{method}_{k}"]) for k in DEFAULTS[method]}


def check_trains_alone(config: Any, why: str) -> None:
    """Refuses, before a multi-run command writes anything, a student robust method that
    needs a teacher when the command also trains the student alone (`why` says where).

    Raises:
        ConfigError: one line.
    """
    method = config.student.train.robust.method
    if method in TEACHER_METHODS:
        raise ConfigError(
            f"student.train.robust.method = {method} distils from a teacher, but {why}: "
            f"use pgd_at / trades, or train + distill"
        )


def make_robust(section: Mapping[str, Any], total_steps: int = 0) -> NoPerturbation | RobustMethod:
    """The method of a validated `<role>.train.robust` section (`NoPerturbation` for None).

    Args:
        section: the config section.
        total_steps: the run's steps (IAD's `begin` is a fraction of them).
    """
    method = section["method"]
    if method is None:
        return NoPerturbation()
    hparams = hparams_of(section, method)
    begin_step = 0
    if method == "iad":
        begin_step = int(round(hparams.pop("begin") * total_steps))
    return METHODS[method](
        eps=float(section["eps"]),
        steps=int(section["steps"]),
        step_size=None if section["step_size"] is None else float(section["step_size"]),
        random_start=bool(section["random_start"]),
        hparams=hparams,
        begin_step=begin_step,
        eps_warmup_steps=int(round(float(section["eps_warmup"]) * total_steps)),
    )


__all__ = [
    "DEFAULTS",
    "METHODS",
    "TEACHER_METHODS",
    "NoPerturbation",
    "RobustMethod",
    "adaad_loss",
    "ard_loss",
    "ce_rows",
    "check_trains_alone",
    "default_section",
    "hparams_of",
    "iad_loss",
    "kl_rows",
    "make_robust",
    "maximise",
    "pgd_at_loss",
    "rslad_loss",
    "trades_loss",
    "validate_section",
]
