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


@dataclasses.dataclass
class Strategy:
    """How state, teacher and batches are placed, and how the step is compiled.

    Attributes:
        name: `jit` or `pmap`.
        mesh: the device mesh (`jit`); its devices are also the pmap devices.
    """

    name: str
    mesh: Mesh

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
        return jax.jit(step_fn, donate_argnums=(0,))


def make_strategy(name: str, devices: list | None = None) -> Strategy:
    """The strategy `name` (`jit` or `pmap`) over all or the given devices."""
    if name not in ("jit", "pmap"):
        raise ConfigError(f"parallel.strategy = {name!r} is not valid; valid values: jit, pmap")
    if name == "pmap" and jax.process_count() > 1:
        raise ConfigError("multi-process runs use parallel.strategy='jit' (a global mesh)")
    return Strategy(name=name, mesh=create_mesh(devices))
