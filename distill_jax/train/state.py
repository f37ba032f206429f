"""The student's TrainState.

The TrainState holds only what training changes: the step, the student's parameters and
BatchNorm statistics, the optimizer state, the base RNG key, and the objective's method
parameters and memory banks. Per-step randomness is `fold_in(rng, step)`, so a resumed run
draws exactly the numbers of an uninterrupted one. The teacher is never part of it: it is
a frozen input of the step (`distill_jax.teachers`).
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
        opt_state: optimizer state (with it, what optimizer transforms keep: pruning
            masks, a vmapped student's learning-rate scale).
        rng: base PRNG key (raw uint32 key data) from which each step's key is folded.
        methods: trainable parameters of the objective's methods, `{name: params}`
            (FitNet regressors, CRD embeddings, ...); trained with the student by the same
            optimizer, never part of the exported student. {} for logit-only objectives.
        memory: non-trainable method state, `{name: memory}` (CRD's memory bank).
        hparams: a vmapped student's own `alpha` and `temperature` (float32 scalars),
            which the objective uses in place of the config's; {} for a single run.
    """

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray
    methods: Any = dataclasses.field(default_factory=dict)
    memory: Any = dataclasses.field(default_factory=dict)
    hparams: Any = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """The student's variables for `model.apply`."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    @property
    def trainable(self) -> dict[str, Any]:
        """What the optimizer updates: the student's and the methods' parameters."""
        return {"student": self.params, "methods": self.methods}


InitMethods = Callable[[jax.Array, Any], tuple[dict[str, Any], dict[str, Any]]]


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    seed: int,
    init_methods: InitMethods | None = None,
    init_variables: Any = None,
) -> TrainState:
    """A fresh TrainState for `model`, deterministic in `seed`.

    Initialisation is jit-compiled: run eagerly, every initialiser op would be dispatched
    (and compiled) one by one, which costs seconds for a small MLP on CPU.

    Args:
        model: the student.
        tx: the optimizer, over `{"student": params, "methods": method params}`.
        input_shape: one example's shape.
        seed: the run's seed.
        init_methods: `init_methods(key, student_variables) -> (params, memory)` of the
            objective's methods; None when there are none.
        init_variables: start from these variables (`{"params", "batch_stats"}` of a
            trained model of the same architecture, e.g. for pruning or quantization-
            aware fine-tuning) instead of the random initialisation.
    """

    def init(seed_key):
        init_key, rng, extra_key = jax.random.split(seed_key, 3)
        dummy = jnp.zeros((1, *input_shape), jnp.float32)
        variables = model.init(init_key, dummy, train=False)
        params = variables["params"]
        methods, memory = ({}, {}) if init_methods is None else init_methods(extra_key, variables)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init({"student": params, "methods": methods}),
            rng=rng,
            methods=methods,
            memory=memory,
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
    opt_state = tx.init({"student": params, "methods": state.methods})
    return state.replace(
        params=params,
        batch_stats=jax.tree.map(jnp.asarray, variables.get("batch_stats", {})),
        opt_state=opt_state,
    )


def stack_trees(trees: list[Any]) -> Any:
    """Stacks pytrees of the same structure along a new leading (student) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, i: int) -> Any:
    """Student `i` of a stacked (vmapped) pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def create_student_states(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    students: list[dict[str, Any]],
    base_learning_rate: float,
    init_methods: InitMethods | None = None,
    init_variables: list[Any] | None = None,
) -> TrainState:
    """N stacked TrainStates for one vmapped (or mapped) train step.

    Student `i` is `create_train_state(..., students[i]["seed"])` with its own `alpha`
    and `temperature` in `hparams` (the objective reads them) and its learning rate as
    the optimizer's `lr_scale` (`train.optim.scale_by_lr_scale`): its `learning_rate`
    over the optimizer's `base_learning_rate`.

    Args:
        students: dicts with `seed`, `alpha`, `temperature` and `learning_rate`.
        init_variables: None, or each student's variables to start from.
    """
    states = []
    for i, m in enumerate(students):
        start = None if init_variables is None else init_variables[i]
        one = create_train_state(model, tx, input_shape, m["seed"], init_methods, start)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        lr_scale = f32(m["learning_rate"] / base_learning_rate)
        states.append(
            one.replace(
                opt_state=optax.tree_utils.tree_set(one.opt_state, lr_scale=lr_scale),
                hparams={"alpha": f32(m["alpha"]), "temperature": f32(m["temperature"])},
            )
        )
    return stack_trees(states)


def train_key(seed: int) -> jax.Array:
    """The base key of a run's per-step randomness: `create_train_state(seed).rng`.

    The augmentation of step `s` draws from `split(fold_in(train_key(seed), s))[0]`, so a
    run whose data seed differs from its model seed (vmapped students sharing one data
    stream) still sees the views of the run with `seed == data_seed`.
    """
    return jax.random.split(jax.random.PRNGKey(seed), 3)[1]
