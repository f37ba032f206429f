"""The student's TrainState and the teacher handle.

The TrainState holds only what training changes: the step, the student's parameters and
BatchNorm statistics, the optimizer state and the base RNG key. Per-step randomness is
`fold_in(rng, step)`, so a resumed run draws exactly the numbers of an uninterrupted one.
The teacher is never part of it: it is a frozen input of the step (`Teacher`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distill_jax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs to resume training the student.

    Attributes:
        step: optimizer steps taken (also the global batch index of the next step).
        params: student parameters.
        batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
        opt_state: optimizer state.
        rng: base PRNG key (raw uint32 key data) from which each step's key is folded.
        extra: trainable parameters of losses (regressors, embeddings); {} for plain KD.
    """

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray
    extra: Any = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """The student's variables for `model.apply`."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: its module, its variables, and where it came from.

    Attributes:
        model: the Linen module (applied with `train=False`).
        variables: `{"params": ..., "batch_stats": ...}`; never updated or donated.
        identity: JSON-serialisable description (workdir, step, model config) stored in
            the student's checkpoints and report.
    """

    model: nn.Module
    variables: Any
    identity: dict[str, Any]


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    seed: int,
    init_extra: Callable[[jax.Array, Any], dict[str, Any]] | None = None,
    init_variables: Any = None,
) -> TrainState:
    """A fresh TrainState for `model`, deterministic in `seed`.

    Initialisation is jit-compiled: run eagerly, every initialiser op would be dispatched
    (and compiled) one by one, which costs seconds for a small MLP on CPU.

    Args:
        model: the student.
        tx: the optimizer, over `{"student": params, "methods": method params}`.
        image_shape: one example's shape.
        seed: the run's seed.
        init_extra: `init_extra(key, student_params) -> {"params": ..., "memory": ...}`
            for the objective's trainable methods; None when there are none.
        init_variables: start from these variables (`{"params", "batch_stats"}` of a
            trained model of the same architecture, e.g. for pruning or quantization-
            aware fine-tuning) instead of the random initialisation.
    """

    def init(seed_key):
        init_key, rng, extra_key = jax.random.split(seed_key, 3)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(init_key, dummy, train=False)
        params = variables["params"]
        extra = {} if init_extra is None else init_extra(extra_key, variables)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init({"student": params, "methods": extra.get("params", {})}),
            rng=rng,
            extra=extra,
        )

    state = jax.jit(init)(jax.random.PRNGKey(seed))
    if init_variables is not None:
        return _start_from(state, tx, init_variables)
    initial_params = getattr(model, "initial_params", None)
    if initial_params is None:
        return state
    # A model that starts from pretrained weights (`Bert.init_from`, a Hugging Face
    # checkpoint) swaps them in here, outside jit, so that they never become constants
    # of a compiled computation.
    pretrained = {"params": initial_params(state.params), "batch_stats": state.batch_stats}
    return _start_from(state, tx, pretrained)


def _start_from(state: TrainState, tx: optax.GradientTransformation, variables: Any) -> TrainState:
    """`state` with `variables` in place of its initialisation; the optimizer state is
    rebuilt for them."""
    for collection, fresh in (("params", state.params), ("batch_stats", state.batch_stats)):
        given = variables.get(collection, {})
        want, got = jax.tree.map(jnp.shape, fresh), jax.tree.map(jnp.shape, given)
        if want != got:
            raise ConfigError(
                f"the variables to start from do not fit the model: its {collection} have "
                f"shapes {want}, the given ones {got}"
            )
    params = jax.tree.map(jnp.asarray, variables["params"])
    opt_state = tx.init({"student": params, "methods": state.extra.get("params", {})})
    return state.replace(
        params=params,
        batch_stats=jax.tree.map(jnp.asarray, variables.get("batch_stats", {})),
        opt_state=opt_state,
    )


def stack_trees(trees: list[Any]) -> Any:
    """Stacks pytrees of the same structure along a new leading (student) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def create_student_states(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    students: list[dict[str, Any]],
    base_learning_rate: float,
    init_extra: Callable[[jax.Array, Any], dict[str, Any]] | None = None,
) -> TrainState:
    """N stacked TrainStates for one vmapped (or mapped) train step.

    Student `i` is `create_train_state(..., students[i]["seed"])` plus its
    `extra["hparams"]`: `alpha`, `temperature` and `lr_scale` (its `learning_rate` over
    the optimizer's `base_learning_rate`), which the step uses in place of its defaults.

    Args:
        students: dicts with `seed`, `alpha`, `temperature` and `learning_rate`.
    """
    states = []
    for m in students:
        one = create_train_state(model, tx, image_shape, m["seed"], init_extra)
        hparams = {
            "alpha": m["alpha"],
            "temperature": m["temperature"],
            "lr_scale": m["learning_rate"] / base_learning_rate,
        }
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
        states.append(one.replace(extra={**one.extra, "hparams": hparams}))
    return stack_trees(states)


def train_key(seed: int) -> jax.Array:
    """The base key of a run's per-step randomness: `create_train_state(seed).rng`.

    The augmentation of step `s` draws from `split(fold_in(train_key(seed), s))[0]`, so a
    run whose data seed differs from its model seed (vmapped students sharing one data
    stream) still sees the views of the run with `seed == data_seed`.
    """
    return jax.random.split(jax.random.PRNGKey(seed), 3)[1]


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
