"""White-box adversarial attacks and robust accuracy.

Every attack perturbs a model's *input as the model receives it*: for image datasets the
float pixels in [0, 1] that `Task.prepare` makes of the stored uint8 images
(`data/augment.py: to_float`). The adversarial input `x'` of a clean input `x` always
satisfies both constraints of the threat model:

    ||x' - x||_p <= eps    and    lo <= x' <= hi    (elementwise; PIXEL_RANGE = (0, 1))

where p is inf (`linf`) or 2 (`l2`). Token-id inputs have no such space and are refused.

The attacks (each maximises a loss L(f(x'), y) of the model's logits f(x') = z):

* `fgsm`: one signed-gradient step (Goodfellow, Shlens & Szegedy 2015).
* `pgd`, `pgd_l2`: projected gradient ascent from a random start in the ball, keeping
  per example the worst of `restarts` runs (Madry et al. 2018).
* `apgd_ce`, `apgd_dlr`: Auto-PGD (Croce & Hein 2020), step-size-free PGD with momentum,
  on cross-entropy or on the Difference-of-Logits-Ratio loss.

All are pure functions of `(apply_fn, variables, x, labels, key)`, batched over the
leading axis and traceable under `jax.jit` (`make_attack` returns the compiled form).
Shapes: `B` batch, `X` the trailing input axes (H, W, C), `C` classes, `T` iterations,
`R` restarts. `robust_accuracy` evaluates an `AttackSpec` over a whole split in the
evaluator's padded, masked batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distill_jax import data as data_lib
from distill_jax.errors import ConfigError
from distill_jax.parallel import AXIS, create_mesh
from distill_jax.tasks import Classification, Task

#: The value range of image inputs as models receive them (uint8 / 255).
PIXEL_RANGE = (0.0, 1.0)
#: Attack name -> (norm, loss). `fgsm`'s loss is cross-entropy.
ATTACKS: dict[str, tuple[str, str]] = {
    "fgsm": ("linf", "ce"),
    "pgd": ("linf", "ce"),
    "pgd_l2": ("l2", "ce"),
    "apgd_ce": ("linf", "ce"),
    "apgd_dlr": ("linf", "dlr"),
}
NORMS = ("linf", "l2")
SPEC_KEYS = ("name", "eps", "steps", "step_size", "restarts", "random_start", "seed")

#: `apply(variables, x, train=False) -> (logits, features)`, as every model here.
ApplyFn = Callable[..., tuple[jax.Array, Any]]
_TINY = 1e-12


class AttackResult(NamedTuple):
    """What an attack returns.

    Attributes:
        x_adv: (B, *X) the adversarial inputs (within eps of `x` and within bounds).
        success_B: bool (B,), whether the model misclassifies `x_adv`.
        loss_B: float32 (B,), the attack's loss at `x_adv`.
        best_loss_RTB: APGD only (else None): float32 (R, T + 1, B), per restart the
            loss of the kept best iterate after each iteration (index 0: the start).
    """

    x_adv: jax.Array
    success_B: jax.Array
    loss_B: jax.Array
    best_loss_RTB: jax.Array | None = None


# ------------------------------------------------------------------------------ losses


def ce_loss(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example cross-entropy -log softmax(z)_y, float32 (B,)."""
    logp_BC = jax.nn.log_softmax(logits_BC.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BC, labels_B[:, None], axis=-1)[:, 0]


def dlr_loss(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example Difference-of-Logits-Ratio loss (Croce & Hein 2020, eq. 4), (B,).

        DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)

    with z_pi1 >= z_pi2 >= z_pi3 the largest logits. Invariant to shifting and (positive)
    scaling of the logits. Needs at least 3 classes.

    Raises:
        ConfigError: fewer than 3 classes.
    """
    num_classes = logits_BC.shape[-1]
    if num_classes < 3:
        raise ConfigError(
            f"the DLR loss (apgd_dlr) needs at least 3 classes, the model has {num_classes}; "
            f"use apgd_ce or pgd"
        )
    z_BC = logits_BC.astype(jnp.float32)
    z_y_B = jnp.take_along_axis(z_BC, labels_B[:, None], axis=-1)[:, 0]
    others_BC = jnp.where(jax.nn.one_hot(labels_B, num_classes, dtype=bool), -jnp.inf, z_BC)
    top3_B3 = jax.lax.top_k(z_BC, 3)[0]
    return -(z_y_B - jnp.max(others_BC, -1)) / (top3_B3[:, 0] - top3_B3[:, 2] + _TINY)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"ce": ce_loss, "dlr": dlr_loss}


def _loss_grad(
    apply_fn: ApplyFn, variables: Any, loss_fn: Callable
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """`f(x, labels) -> (loss_B, grad_BX, wrong_B)`: per-example losses, their gradient
    with respect to the input, and whether the prediction at `x` is wrong.

    The batch's loss is the *sum* of the per-example losses, so each example's gradient is
    its own (the model runs in inference mode: no batch statistics couple the rows)."""

    def total(x_BX, labels_B):
        logits_BC, _ = apply_fn(variables, x_BX, train=False)
        loss_B = loss_fn(logits_BC, labels_B)
        return jnp.sum(loss_B), (loss_B, jnp.argmax(logits_BC, -1) != labels_B)

    def f(x_BX, labels_B):
        (_, (loss_B, wrong_B)), grad_BX = jax.value_and_grad(total, has_aux=True)(x_BX, labels_B)
        return loss_B, grad_BX, wrong_B

    return f


# ---------------------------------------------------------------------- geometry helpers


def _expand(v_B: jax.Array, like_BX: jax.Array) -> jax.Array:
    """(B,) -> (B, 1, ..., 1), broadcastable against `like_BX`."""
    return v_B.reshape(v_B.shape + (1,) * (like_BX.ndim - 1))


def _l2_norm(v_BX: jax.Array) -> jax.Array:
    """Per-example Euclidean norm over the trailing axes, (B,)."""
    return jnp.sqrt(jnp.sum(jnp.square(v_BX), axis=tuple(range(1, v_BX.ndim))))


def _steepest(grad_BX: jax.Array, norm: str) -> jax.Array:
    """The unit-norm ascent direction: sign(g) for linf, g / ||g||_2 for l2."""
    if norm == "linf":
        return jnp.sign(grad_BX)
    return grad_BX / (_expand(_l2_norm(grad_BX), grad_BX) + _TINY)


def project(
    x_adv_BX: jax.Array,
    x_BX: jax.Array,
    eps: float,
    norm: str,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> jax.Array:
    """Projects onto {x' : ||x' - x||_p <= eps, lo <= x' <= hi}.

    linf: both sets are boxes, so clipping to their intersection is the exact projection.
    l2: the perturbation is scaled onto the ball, then clipped to the box (as in Madry et
    al. and AutoAttack). Clipping moves each coordinate towards x (which is in the box),
    so the result stays in the ball.
    """
    lo, hi = bounds
    if norm == "linf":
        return jnp.clip(x_adv_BX, jnp.maximum(x_BX - eps, lo), jnp.minimum(x_BX + eps, hi))
    delta_BX = x_adv_BX - x_BX
    scale_B = jnp.minimum(1.0, eps / (_l2_norm(delta_BX) + _TINY))
    return jnp.clip(x_BX + delta_BX * _expand(scale_B, delta_BX), lo, hi)


def random_start(
    key: jax.Array,
    x_BX: jax.Array,
    eps: float,
    norm: str,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> jax.Array:
    """A random point of the threat set around each x.

    linf: x + u, u uniform in [-eps, eps]^d. l2: x + eps * r^(1/d) * n / ||n||_2 with n
    Gaussian and r uniform in [0, 1] (uniform in the L2 ball). Then clipped to the box.
    """
    if norm == "linf":
        delta_BX = jax.random.uniform(key, x_BX.shape, x_BX.dtype, -eps, eps)
    else:
        k_dir, k_rad = jax.random.split(key)
        n_BX = jax.random.normal(k_dir, x_BX.shape, x_BX.dtype)
        d = math.prod(x_BX.shape[1:])
        r_B = jax.random.uniform(k_rad, x_BX.shape[:1], x_BX.dtype) ** (1.0 / d)
        delta_BX = n_BX * _expand(eps * r_B / (_l2_norm(n_BX) + _TINY), n_BX)
    return project(x_BX + delta_BX, x_BX, eps, norm, bounds)


def _start(key, x_BX, eps, norm, bounds, random_init: bool) -> jax.Array:
    """A run's first iterate: `random_start`, or x itself."""
    return random_start(key, x_BX, eps, norm, bounds) if random_init else x_BX


def _keep_worse(
    old: tuple[jax.Array, jax.Array, jax.Array], new: tuple[jax.Array, jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per example, the worse (for the model) of two `(x_BX, success_B, loss_B)` results:
    a misclassified one over a correct one, else the one with the higher loss."""
    x_old, ok_old, loss_old = old
    x_new, ok_new, loss_new = new
    take_B = (ok_new & ~ok_old) | ((ok_new == ok_old) & (loss_new > loss_old))
    return (
        jnp.where(_expand(take_B, x_new), x_new, x_old),
        ok_old | ok_new,
        jnp.where(take_B, loss_new, loss_old),
    )


# ----------------------------------------------------------------------------- attacks


def fgsm(
    apply_fn: ApplyFn,
    variables: Any,
    x_BX: jax.Array,
    labels_B: jax.Array,
    *,
    eps: float,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> AttackResult:
    """Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2015, "Explaining and
    Harnessing Adversarial Examples"), L-inf:

        x' = clip(x + eps * sign(grad_x CE(f(x), y)), lo, hi)

    Args:
        apply_fn: `apply(variables, x, train=False) -> (logits, features)`.
        variables: the model's variables.
        x_BX: (B, *X) clean inputs, float, within `bounds`.
        labels_B: int (B,) true labels.
        eps: the L-inf radius, in input units.
        bounds: the valid input range (lo, hi).
    """
    loss_grad = _loss_grad(apply_fn, variables, ce_loss)
    _, grad_BX, _ = loss_grad(x_BX, labels_B)
    x_adv_BX = project(x_BX + eps * jnp.sign(grad_BX), x_BX, eps, "linf", bounds)
    loss_B, _, wrong_B = loss_grad(x_adv_BX, labels_B)
    return AttackResult(x_adv_BX, wrong_B, loss_B)


def pgd_step_size(eps: float, steps: int, step_size: float | None = None) -> float:
    """PGD's step length: `step_size`, or by default 2.5 * eps / steps (Madry et al.'s
    choice: the iterates can cross the ball's diameter and back)."""
    return 2.5 * eps / steps if step_size is None else step_size


def pgd(
    apply_fn: ApplyFn,
    variables: Any,
    x_BX: jax.Array,
    labels_B: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    random_init: bool = True,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> AttackResult:
    """Projected Gradient Descent on the cross-entropy (Madry et al. 2018, "Towards Deep
    Learning Models Resistant to Adversarial Attacks"), L-inf or L2:

        x^0 = P(x + delta), delta uniform in the eps-ball (or 0 without `random_init`)
        x^{t+1} = P(x^t + step_size * d(grad_x CE(f(x^t), y)))

    with d(g) = sign(g) (linf) or g / ||g||_2 (l2) and P the projection onto the eps-ball
    around x intersected with `bounds` (`project`). Each run returns its last iterate;
    with `restarts` > 1 the runs start from independent random points and each example
    keeps its worst result: a misclassified one if any run found one, else the one with
    the highest loss.

    Args:
        key: PRNG key of the random starts (restart r uses `fold_in(key, r)`).
        eps: the radius of the `norm` ball, in input units.
        steps: gradient steps per run (>= 1).
        step_size: step length; None: `pgd_step_size`'s 2.5 * eps / steps.
        restarts: independent runs (>= 1).
        random_init: start from a random point of the ball (else from x itself).
        Others: as in `fgsm`.
    """
    _check_norm(norm)
    step_size = pgd_step_size(eps, steps, step_size)
    loss_grad = _loss_grad(apply_fn, variables, ce_loss)

    def one_run(r):
        x0_BX = _start(jax.random.fold_in(key, r), x_BX, eps, norm, bounds, random_init)

        def step(_, x_adv_BX):
            _, grad_BX, _ = loss_grad(x_adv_BX, labels_B)
            x_next = x_adv_BX + step_size * _steepest(grad_BX, norm)
            return project(x_next, x_BX, eps, norm, bounds)

        x_adv_BX = jax.lax.fori_loop(0, steps, step, x0_BX)
        loss_B, _, wrong_B = loss_grad(x_adv_BX, labels_B)
        return x_adv_BX, wrong_B, loss_B

    best = jax.lax.fori_loop(1, restarts, lambda r, b: _keep_worse(b, one_run(r)), one_run(0))
    return AttackResult(*best)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which APGD may halve its step size (Croce & Hein 2020, 3.2):

        w_j = ceil(p_j * steps),  p_0 = 0, p_1 = 0.22,
        p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)

    Returns w_0 = 0, w_1, ... up to `steps` (strictly increasing)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(pj * steps, 9)) for pj in p})


def apgd(
    apply_fn: ApplyFn,
    variables: Any,
    x_BX: jax.Array,
    labels_B: jax.Array,
    key: jax.Array,
    *,
    eps: float,
    loss: str = "ce",
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    random_init: bool = True,
    bounds: tuple[float, float] = PIXEL_RANGE,
) -> AttackResult:
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", Algorithm 1), on CE (APGD-CE) or on the
    DLR loss (APGD-DLR, `dlr_loss`), L-inf or L2.

    From x^(0) (a random point of the ball) with step size eta = 2 * eps, for k = 0 ..
    steps - 1 (d and P as in `pgd`; alpha = `momentum`, alpha = 1 at k = 0):

        z^(k+1) = P(x^(k) + eta * d(grad f(x^(k))))
        x^(k+1) = P(x^(k) + alpha * (z^(k+1) - x^(k)) + (1 - alpha) * (x^(k) - x^(k-1)))

    keeping the best point x_max (highest loss f_max). At each checkpoint w_j
    (`apgd_checkpoints`) eta is halved and the iteration restarts from x_max when

        Condition 1: #{k in [w_{j-1}, w_j): f(x^(k+1)) > f(x^(k))} < rho * (w_j - w_{j-1})
        Condition 2: eta was not halved at w_{j-1} and f_max(w_{j-1}) == f_max(w_j)

    The paper's conditions are used as written (AutoAttack's code writes <= in
    condition 1 and skips condition 2 at w_1). The result per example is an iterate the
    model misclassifies if there was one (the last), else x_max; across `restarts`
    (random starts from `fold_in(key, r)`) each example keeps its worst result.

    Args:
        loss: `ce` or `dlr` (>= 3 classes).
        steps: gradient steps per run (>= 1; the paper uses 100).
        rho: the fraction of increasing steps below which condition 1 halves eta.
        momentum: alpha of the update (0.75 in the paper).
        random_init: start from a random point of the ball (else from x itself).
        Others: as in `pgd`.

    Returns:
        An `AttackResult` whose `best_loss_RTB` is f_max after each iteration of each run.
    """
    _check_norm(norm)
    if loss not in LOSSES:
        raise ConfigError(f"APGD loss {loss!r} is not valid; valid values: {', '.join(LOSSES)}")
    loss_grad = _loss_grad(apply_fn, variables, LOSSES[loss])
    marks = apgd_checkpoints(steps)
    is_check_T = np.zeros(steps, bool)
    interval_T = np.zeros(steps, np.float32)
    for prev, w in zip(marks[:-1], marks[1:], strict=True):
        if w < steps:  # a check after the last step would change nothing
            is_check_T[w - 1], interval_T[w - 1] = True, w - prev

    def where_B(c_B, a, b):
        return jnp.where(_expand(c_B, a) if a.ndim > 1 else c_B, a, b)

    def one_run(r):
        x0_BX = _start(jax.random.fold_in(key, r), x_BX, eps, norm, bounds, random_init)
        loss0_B, grad0_BX, wrong0_B = loss_grad(x0_BX, labels_B)
        carry = {
            "x": x0_BX,  # x^(k)
            "x_prev": x0_BX,  # x^(k-1)
            "grad": grad0_BX,
            "loss": loss0_B,  # f(x^(k))
            "eta_B": jnp.full(labels_B.shape, 2.0 * eps, jnp.float32),
            "x_max": x0_BX,
            "grad_max": grad0_BX,
            "loss_max": loss0_B,
            "ups_B": jnp.zeros(labels_B.shape, jnp.float32),  # increases since w_{j-1}
            "loss_max_check": loss0_B,  # f_max at w_{j-1}
            "halved_check": jnp.zeros(labels_B.shape, bool),  # eta halved at w_{j-1}
            "x_wrong": x0_BX,
            "wrong_B": wrong0_B,
        }

        def step(c, inputs):
            k, is_check, interval = inputs
            alpha = jnp.where(k == 0, 1.0, momentum)
            eta_BX = _expand(c["eta_B"], c["x"])
            z_BX = project(c["x"] + eta_BX * _steepest(c["grad"], norm), x_BX, eps, norm, bounds)
            x_new = c["x"] + alpha * (z_BX - c["x"]) + (1.0 - alpha) * (c["x"] - c["x_prev"])
            x_new = project(x_new, x_BX, eps, norm, bounds)
            loss_B, grad_BX, wrong_B = loss_grad(x_new, labels_B)
            ups_B = c["ups_B"] + (loss_B > c["loss"])
            better_B = loss_B > c["loss_max"]
            loss_max = jnp.where(better_B, loss_B, c["loss_max"])
            x_max = where_B(better_B, x_new, c["x_max"])
            grad_max = where_B(better_B, grad_BX, c["grad_max"])
            # Checkpoint: halve eta and go back to x_max where a condition holds.
            cond1_B = ups_B < rho * interval
            cond2_B = ~c["halved_check"] & (loss_max <= c["loss_max_check"])
            halve_B = is_check & (cond1_B | cond2_B)
            out = {
                "x_prev": c["x"],
                "x": where_B(halve_B, x_max, x_new),
                "grad": where_B(halve_B, grad_max, grad_BX),
                "loss": jnp.where(halve_B, loss_max, loss_B),
                "eta_B": jnp.where(halve_B, c["eta_B"] / 2.0, c["eta_B"]),
                "x_max": x_max,
                "grad_max": grad_max,
                "loss_max": loss_max,
                "ups_B": jnp.where(is_check, 0.0, ups_B),
                "loss_max_check": jnp.where(is_check, loss_max, c["loss_max_check"]),
                "halved_check": jnp.where(is_check, halve_B, c["halved_check"]),
                "x_wrong": where_B(wrong_B, x_new, c["x_wrong"]),
                "wrong_B": c["wrong_B"] | wrong_B,
            }
            return out, loss_max

        xs = (jnp.arange(steps), jnp.asarray(is_check_T), jnp.asarray(interval_T))
        c, trace_TB = jax.lax.scan(step, carry, xs)
        x_adv_BX = where_B(c["wrong_B"], c["x_wrong"], c["x_max"])
        loss_B, _, wrong_B = loss_grad(x_adv_BX, labels_B)
        trace_TB = jnp.concatenate([loss0_B[None], trace_TB])
        return (x_adv_BX, wrong_B, loss_B), trace_TB

    def restart(r, carry):
        best, traces_RTB = carry
        result, trace_TB = one_run(r)
        return _keep_worse(best, result), traces_RTB.at[r].set(trace_TB)

    first, trace0_TB = one_run(0)
    traces_RTB = jnp.zeros((restarts, *trace0_TB.shape), trace0_TB.dtype).at[0].set(trace0_TB)
    best, traces_RTB = jax.lax.fori_loop(1, restarts, restart, (first, traces_RTB))
    return AttackResult(*best, best_loss_RTB=traces_RTB)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"attack norm {norm!r} is not valid; valid values: {', '.join(NORMS)}")


# ----------------------------------------------------------------- specs and validation


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack with its settings, as a config or the command line names it.

    Attributes:
        name: one of `ATTACKS`.
        eps: the radius of the attack's norm ball, in model-input units (pixels in [0, 1]).
        steps: gradient steps per run (`fgsm`: unused).
        step_size: PGD's step length, None for its default 2.5 * eps / steps (APGD and
            FGSM choose their own: None only).
        restarts: independent random starts; each example keeps its worst result.
        random_start: start PGD/APGD runs from a random point of the ball.
        seed: the PRNG seed of the random starts.
    """

    name: str
    eps: float
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    seed: int = 0

    @property
    def norm(self) -> str:
        return ATTACKS[self.name][0]

    @property
    def loss(self) -> str:
        return ATTACKS[self.name][1]

    def settings(self) -> dict[str, Any]:
        """What the attack ran with (recorded beside its result), defaults resolved."""
        out: dict[str, Any] = {"attack": self.name, "norm": self.norm, "eps": self.eps}
        if self.name == "fgsm":
            return out
        out.update(steps=self.steps, restarts=self.restarts, random_start=self.random_start)
        out["seed"] = self.seed
        if self.name.startswith("pgd"):
            out["step_size"] = pgd_step_size(self.eps, self.steps, self.step_size)
        else:
            out["loss"] = self.loss
        return out


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _integer(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def parse_attack(entry: Mapping[str, Any], key: str = "attack") -> AttackSpec:
    """Validates one attack's settings (a config entry or the command line's flags).

    Args:
        entry: `{"name": ..., "eps": ..., ...}` with keys of `SPEC_KEYS` (only `name` and
            `eps` are required).
        key: how the entry is named in messages (e.g. `attack.attacks[0]`, `--attack`).

    Raises:
        ConfigError: one line naming the setting and the valid values.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key} must be a dict with a 'name' and an 'eps', got {entry!r}")
    unknown = sorted(set(entry) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {key}; valid keys: {', '.join(SPEC_KEYS)}")
    name = entry.get("name")
    if name not in ATTACKS:
        raise ConfigError(
            f"{key}: attack {name!r} is not valid; valid values: {', '.join(ATTACKS)}"
        )
    if "eps" not in entry:
        raise ConfigError(f"{key}: {name} needs an eps (the perturbation radius)")
    eps = _number(entry["eps"], f"{key} eps")
    lo, hi = PIXEL_RANGE
    norm = ATTACKS[name][0]
    if not eps > 0 or (norm == "linf" and not eps < hi - lo):  # NaN fails too
        valid = f"in (0, {hi - lo:g})" if norm == "linf" else "> 0"
        raise ConfigError(
            f"{key} eps = {entry['eps']!r} is outside the input range: {name} ({norm}) needs "
            f"eps {valid}, in model-input units (pixels scaled to [{lo:g}, {hi:g}])"
        )
    steps = _integer(entry.get("steps", 20), f"{key} steps", 1)
    restarts = _integer(entry.get("restarts", 1), f"{key} restarts", 1)
    seed = _integer(entry.get("seed", 0), f"{key} seed", 0)
    step_size = entry.get("step_size")
    if step_size is not None:
        if not name.startswith("pgd"):
            raise ConfigError(
                f"{key} step_size is PGD's (pgd, pgd_l2); {name} chooses its own: leave it None"
            )
        step_size = _number(step_size, f"{key} step_size")
        if not step_size > 0:
            raise ConfigError(f"{key} step_size must be > 0 (or None: 2.5 * eps / steps)")
    random_init = entry.get("random_start", True)
    if not isinstance(random_init, bool):
        raise ConfigError(f"{key} random_start must be true or false, got {random_init!r}")
    return AttackSpec(name, eps, steps, step_size, restarts, random_init, seed)


def parse_attacks(
    entries: Sequence[Mapping[str, Any]], key: str = "attack.attacks"
) -> list[AttackSpec]:
    """Validates a list of attack entries (`parse_attack` on each)."""
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"{key} lists attacks ({{'name': ..., 'eps': ...}}), got {entries!r}")
    return [parse_attack(e, f"{key}[{i}]") for i, e in enumerate(entries)]


def check_inputs(spec: AttackSpec, info: data_lib.DatasetInfo, key: str = "attack") -> None:
    """Refuses an attack the dataset's inputs cannot take.

    Raises:
        ConfigError: token-id inputs (no continuous input space to perturb), an L2 eps at
            least the diameter of the input box, or DLR with fewer than 3 classes.
    """
    if info.input_kind != "image":
        raise ConfigError(
            f"{key} = {spec.name}: attacks perturb pixels, but {info.name} holds "
            f"{info.input_kind} (input_kind {info.input_kind!r}, token ids are discrete); "
            f"attacks need an image dataset"
        )
    lo, hi = PIXEL_RANGE
    diameter = (hi - lo) * math.sqrt(math.prod(info.image_shape))
    if spec.norm == "l2" and not spec.eps < diameter:
        raise ConfigError(
            f"{key} eps = {spec.eps:g} is outside the input range: {spec.name} (l2) on "
            f"{info.name}'s {info.image_shape} inputs needs eps in (0, {diameter:.4g})"
        )
    if spec.loss == "dlr" and info.num_classes < 3:
        raise ConfigError(
            f"{key} = {spec.name}: the DLR loss needs at least 3 classes, {info.name} has "
            f"{info.num_classes}; valid attacks here: "
            + ", ".join(n for n, (_, loss) in ATTACKS.items() if loss != "dlr")
        )


# --------------------------------------------------------------------- compiled attacks


def make_attack(
    spec: AttackSpec, apply_fn: ApplyFn, bounds: tuple[float, float] = PIXEL_RANGE
) -> Callable[[Any, jax.Array, jax.Array, jax.Array], AttackResult]:
    """The jit-compiled `attack(variables, x_BX, labels_B, key) -> AttackResult` of a spec."""
    common = {"eps": spec.eps, "bounds": bounds}
    iterative = {"steps": spec.steps, "restarts": spec.restarts, "random_init": spec.random_start}

    def attack(variables, x_BX, labels_B, key):
        if spec.name == "fgsm":
            return fgsm(apply_fn, variables, x_BX, labels_B, **common)
        if spec.name.startswith("pgd"):
            return pgd(
                apply_fn,
                variables,
                x_BX,
                labels_B,
                key,
                norm=spec.norm,
                step_size=spec.step_size,
                **common,
                **iterative,
            )
        return apgd(
            apply_fn,
            variables,
            x_BX,
            labels_B,
            key,
            loss=spec.loss,
            norm=spec.norm,
            **common,
            **iterative,
        )

    return jax.jit(attack)


def robust_accuracy(
    apply_fn: ApplyFn,
    variables: Any,
    split: data_lib.ArraySplit,
    spec: AttackSpec,
    *,
    task: Task | None = None,
    batch_size: int = 500,
    devices: list | None = None,
) -> dict[str, Any]:
    """Accuracy of a model under an attack, over every example of a split.

    The split is read in the evaluator's padded, masked batches (`data.eval_batches`) and
    turned into model inputs as the evaluator does (`task.prepare`); each batch is
    sharded over `devices` and attacked with the key `fold_in(PRNGKey(seed), batch)`.
    An example counts as robust if the model classifies it correctly *and* the attack
    fails on it (clean mistakes count against robustness, as in AutoAttack), so robust
    accuracy <= clean accuracy.

    Returns:
        The spec's `settings()` plus `robust_accuracy`, `clean_accuracy` and `count`.
    """
    check_inputs(spec, split.info)
    task = Classification() if task is None else task
    mesh = create_mesh(jax.local_devices() if devices is None else devices)
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    attack = make_attack(spec, apply_fn)

    @jax.jit
    def sums(variables, batch, key):
        x_BX = task.prepare(batch["image"])
        logits_BC, _ = apply_fn(variables, x_BX, train=False)
        clean_B = (jnp.argmax(logits_BC, -1) == batch["label"]) & batch["mask"]
        result = attack(variables, x_BX, batch["label"], key)
        robust_B = clean_B & ~result.success_B
        return jnp.sum(batch["mask"]), jnp.sum(clean_B), jnp.sum(robust_B)

    key = jax.random.PRNGKey(spec.seed)
    count = clean = robust = 0
    for i, batch in enumerate(data_lib.eval_batches(split, batch_size)):
        batch = jax.device_put({k: batch[k] for k in ("image", "label", "mask")}, sharding)
        n, c, r = jax.device_get(sums(variables, batch, jax.random.fold_in(key, i)))
        count, clean, robust = count + int(n), clean + int(c), robust + int(r)
    return {
        **spec.settings(),
        "robust_accuracy": robust / max(count, 1),
        "clean_accuracy": clean / max(count, 1),
        "count": count,
    }


__all__ = [
    "ATTACKS",
    "PIXEL_RANGE",
    "AttackResult",
    "AttackSpec",
    "apgd",
    "apgd_checkpoints",
    "check_inputs",
    "ce_loss",
    "dlr_loss",
    "fgsm",
    "make_attack",
    "parse_attack",
    "parse_attacks",
    "pgd",
    "pgd_step_size",
    "project",
    "random_start",
    "robust_accuracy",
]
