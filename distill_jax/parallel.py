"""Data parallelism: a device mesh for `jax.jit`, and the `jax.pmap` alternative.

Two strategies run the same pure train step:

* `jit` (default): parameters are replicated and the global batch is sharded over the
  mesh axis `data`; XLA inserts the gradient all-reduce. Works unchanged on one device,
  on several local devices and across hosts (global arrays are assembled from each
  process's local rows with `jax.make_array_from_process_local_data`).
* `pmap`: the state is replicated with a leading device axis, each device gets
  `batch / n_devices` rows, and the step averages gradients, metrics and BatchNorm
  statistics with `lax.pmean` over `AXIS`.

Both give the single-device result up to float rounding (tested on 8 fake CPU devices).

Teacher sharding (`parallel.shard_teacher`, jit only): the step's frozen teacher arrays
(`TeacherSource.arrays()`: teacher variables, or a teacher cache's arrays) are split
FSDP-style over the same `data` axis instead of replicated, so each of N devices holds
about 1/N of the teacher and a teacher larger than one device fits. The rule, per array
(`teacher_spec`): an array of at least `SHARD_MIN_SIZE` elements is split along its
largest dimension divisible by N (the first such on ties); smaller arrays (biases,
norm scales) and arrays with no divisible dimension stay replicated. Inside the jitted
step XLA gathers what each layer needs (GSPMD inserts the all-gathers); the student's
state stays replicated (`compile_step` constrains it), and the result equals the
replicated step up to float rounding (tests/test_shard_teacher.py). With `"auto"` the
teacher is sharded when its arrays total at least `AUTO_SHARD_BYTES` and the step runs
jit on more than one device: a small teacher is cheaper replicated (no gathers). pmap
keeps a full copy of every frozen array per device, so `shard_teacher=True` with pmap
is refused (`"auto"` stays replicated there).

Multi-host (`initialize_distributed`): every process runs the same program over a global
mesh of all processes' devices; each reads only its rows of every global batch, and
values that every process needs on the host (state for checkpoints, metrics) are fetched
from the process's own replica (`Strategy.fetch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distill_jax.errors import ConfigError

AXIS = "data"
#: Teacher arrays with fewer elements than this stay replicated under teacher sharding
#: (64 KiB of float32): biases and norm scales cost more in gathers than they save.
SHARD_MIN_SIZE = 2**14
#: `shard_teacher="auto"` shards a teacher whose arrays total at least this many bytes.
AUTO_SHARD_BYTES = 2**30


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_seconds: int | None = None,
    initialization_timeout: int | None = None,
) -> None:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    With no arguments JAX detects the cluster (TPU VM slices, SLURM, Open MPI, ...).
    Explicit arguments are for anything else: process `process_id` of `num_processes`,
    all pointing at the `host:port` of process 0. Must run before any other JAX call.

    Args:
        coordinator_address: `host:port` of process 0's coordination service.
        num_processes: how many processes take part.
        process_id: this process's rank in `[0, num_processes)`.
        heartbeat_timeout_seconds: how soon a dead peer fails the others (JAX's default
            is 100 s; tests use a few seconds).
        initialization_timeout: how long to wait for all processes to join.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ConfigError(
            "multi-process runs need all of --coordinator_address, --num_processes and "
            "--process_id (or none of them, to let JAX detect the cluster)"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    kwargs: dict[str, Any] = {}
    if heartbeat_timeout_seconds is not None:
        kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_seconds
    if initialization_timeout is not None:
        kwargs["initialization_timeout"] = initialization_timeout
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def _to_host(x: Any) -> Any:
    """One host copy of a (replicated) array, also when it spans other processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return jax.device_get(x)


def create_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with axis name `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def local_batch_size(global_batch: int) -> int:
    """Rows of the global batch that this process reads."""
    if global_batch % jax.process_count():
        raise ConfigError(
            f"batch size {global_batch} is not divisible by the {jax.process_count()} processes"
        )
    return global_batch // jax.process_count()


def teacher_spec(
    shape: tuple[int, ...], num_devices: int, min_size: int = SHARD_MIN_SIZE
) -> PartitionSpec:
    """Where one teacher array of `shape` lives under teacher sharding (module docstring).

    Args:
        shape: the array's shape, e.g. `(D_in, D_out)` for a Dense kernel or `(V, D)` for
            an embedding table.
        num_devices: N, the size of the mesh axis `data`.
        min_size: arrays with fewer elements stay replicated.

    Returns:
        `PartitionSpec()` (replicated), or one naming `AXIS` at the largest dimension
        divisible by N, e.g. `PartitionSpec(None, "data")` for a `(64, 256)` kernel on 8
        devices: each device then holds a `(64, 32)` block.
    """
    if num_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    divisible = [i for i, d in enumerate(shape) if d % num_devices == 0]
    if not divisible:
        return PartitionSpec()
    dim = max(divisible, key=lambda i: (shape[i], -i))  # the largest; the first on ties
    return PartitionSpec(*([None] * dim), AXIS)


def tree_bytes(tree: Any) -> int:
    """Total bytes of a pytree's arrays (host or device; one full copy each)."""
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in _leaves(tree))


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of a pytree of device arrays held by each device (its addressable shards);
    a replicated array counts in full on every device, a sharded one by its block."""
    held: dict[Any, int] = {}
    for x in _leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


def _leaves(tree: Any) -> list[Any]:
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]


def check_shard_teacher(value: Any, strategy: str) -> None:
    """Refuses a `parallel.shard_teacher` that is not False / True / "auto", or True
    with pmap (one line naming the key)."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(
            f"parallel.shard_teacher = {value!r} is not valid; valid values: False, True, 'auto'"
        )
    if value is True and strategy == "pmap":
        raise ConfigError(
            "parallel.shard_teacher = True needs parallel.strategy 'jit': pmap keeps a full "
            "copy of the teacher on every device (use False, or 'auto')"
        )


@dataclasses.dataclass
class Strategy:
    """How state, teacher and batches are placed, and how the step is compiled.

    Attributes:
        name: `jit` or `pmap`.
        mesh: the device mesh (`jit`); its devices are also the pmap devices.
        shard_teacher: False (teacher replicated), True (sharded over `data`, jit only)
            or `"auto"` (sharded when large; see the module docstring).
        shard_min_size: arrays with fewer elements stay replicated when sharding.
    """

    name: str
    mesh: Mesh
    shard_teacher: bool | str = False
    shard_min_size: int = SHARD_MIN_SIZE

    @property
    def axis_name(self) -> str | None:
        """The collective axis the step must use (pmap only)."""
        return AXIS if self.name == "pmap" else None

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def check_batch(self, batch_size: int, key: str) -> None:
        """Refuses a global batch that cannot be split evenly over the devices."""
        if batch_size % self.num_devices:
            raise ConfigError(
                f"{key} = {batch_size} must be divisible by the number of devices "
                f"({self.num_devices})"
            )

    # -- placement ----------------------------------------------------------------
    def put_replicated(self, tree: Any) -> Any:
        """Places a pytree (state or teacher variables) on every device."""
        if tree is None:
            return None
        if self.name == "pmap":
            # A leading device axis, one copy per device (what pmap consumes).
            sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
            n = self.num_devices
            return jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(x, (n, *np.shape(x))), sharding), tree
            )
        sharding = NamedSharding(self.mesh, PartitionSpec())
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)
        # Every process holds the same host value; each fills its own devices.
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(
                np.shape(x), sharding, lambda i: np.asarray(x)[i]
            ),
            tree,
        )

    def shards_teacher(self, tree: Any) -> bool:
        """Whether `put_teacher` shards this teacher (resolves `"auto"`)."""
        if self.name != "jit" or self.num_devices == 1 or tree is None:
            return False
        if self.shard_teacher == "auto":
            return tree_bytes(tree) >= AUTO_SHARD_BYTES
        return bool(self.shard_teacher)

    def teacher_shardings(self, tree: Any) -> Any:
        """The `NamedSharding` of each array of a teacher pytree under teacher sharding
        (`teacher_spec` per array; the same tree structure)."""
        n = self.num_devices
        return jax.tree.map(
            lambda x: NamedSharding(self.mesh, teacher_spec(np.shape(x), n, self.shard_min_size)),
            tree,
        )

    def put_teacher(self, tree: Any) -> Any:
        """Places the step's frozen teacher arrays (`TeacherSource.arrays()`): sharded
        over `data` when `shards_teacher`, else replicated (`put_replicated`). Never
        donated: the step reads them on every call."""
        if not self.shards_teacher(tree):
            return self.put_replicated(tree)
        shardings = self.teacher_shardings(tree)
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)
        # Every process holds the same host value; each fills its devices' blocks.
        return jax.tree.map(
            lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i: np.asarray(x)[i]),
            tree,
            shardings,
        )

    def get(self, tree: Any) -> Any:
        """Brings a replicated pytree back as one copy (for checkpoints and eval)."""
        if self.name == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
        return tree

    def fetch(self, tree: Any) -> Any:
        """One host (NumPy) copy of a replicated pytree: state, metrics, variables."""
        return jax.tree.map(_to_host, self.get(tree))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Places this process's rows of a global batch on the devices."""
        if self.name == "pmap":
            n = self.num_devices
            return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n, *x.shape[1:])), batch)
        sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        if jax.process_count() == 1:
            return jax.device_put(batch, sharding)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

    # -- compilation -----------------------------------------------------------------
    def compile_step(self, step_fn: Callable) -> Callable:
        """jit or pmap a `step(state, teacher_vars, batch)`; the state is donated."""
        if self.name == "pmap":
            return jax.pmap(
                step_fn, axis_name=AXIS, donate_argnums=(0,), devices=list(self.mesh.devices.flat)
            )
        if self.shard_teacher:
            # A sharded teacher must not leak its layout into the new state: GSPMD may
            # otherwise hand back some updated parameters sharded, and the next call
            # would see a state placed differently from the first (a recompilation).
            replicated = NamedSharding(self.mesh, PartitionSpec())

            def step_replicated_state(state, frozen, batch):
                new_state, metrics = step_fn(state, frozen, batch)
                return jax.lax.with_sharding_constraint(new_state, replicated), metrics

            return jax.jit(step_replicated_state, donate_argnums=(0,))
        return jax.jit(step_fn, donate_argnums=(0,))


def make_strategy(
    name: str, devices: list | None = None, shard_teacher: bool | str = False
) -> Strategy:
    """The strategy `name` (`jit` or `pmap`) over all or the given devices.

    Args:
        shard_teacher: `parallel.shard_teacher`: False, True (jit only) or `"auto"`.
    """
    if name not in ("jit", "pmap"):
        raise ConfigError(f"parallel.strategy = {name!r} is not valid; valid values: jit, pmap")
    if name == "pmap" and jax.process_count() > 1:
        raise ConfigError("multi-process runs use parallel.strategy='jit' (a global mesh)")
    check_shard_teacher(shard_teacher, name)
    return Strategy(name=name, mesh=create_mesh(devices), shard_teacher=shard_teacher)
