"""Multi-process training with `jax.distributed` on 127.0.0.1 (two local processes).

Each process has one CPU device (with several fake devices per process the gloo
all-reduce can deadlock, openxla/xla#16430) and reads only its half of every global batch.
The two-process run must reach the parameters and losses of a one-process run on two
devices, and checkpoints must move between the two set-ups in both directions.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.train import loop
from distill_jax.train.checkpointing import Checkpointer

EXE = os.path.join(os.path.dirname(sys.executable), "distill-jax")
STEPS = 2 * (1197 // 64)
PREEMPT_AT = 20  # in the second epoch, between checkpoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, faults: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DISTILL_JAX_FAULTS")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    if faults:
        env["DISTILL_JAX_FAULTS"] = faults
    return env


def _args(data_dir, workdir):
    # Host pipeline: each process gathers only its own rows of every batch.
    overrides = tiny_overrides(data_dir, **{"data.pipeline": "host", "checkpoint.every_steps": 8})
    return [EXE, "train", "--workdir", str(workdir), *(f"--config.{o}" for o in overrides)]


def _one_process(data_dir, workdir, faults=None) -> int:
    """One process, two devices."""
    proc = subprocess.run(
        _args(data_dir, workdir), env=_env(2, faults), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode in (0, 75), proc.stderr[-2000:]
    return proc.returncode


def _two_processes(data_dir, workdir, faults=None) -> int:
    """Two processes with one device each, joined through a coordinator on 127.0.0.1."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *_args(data_dir, workdir),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--heartbeat_timeout=10",  # a dead peer fails the other in seconds
            ],
            env=_env(1, faults),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    codes = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode in (0, 75), err[-2000:]
        codes.append(p.returncode)
    assert codes[0] == codes[1]
    return codes[0]


def _final(workdir):
    state, meta = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).restore()
    assert meta["step"] == STEPS
    return state


def _train_losses(workdir):
    return [r["loss"] for r in loop.read_metrics(str(workdir)) if r["split"] == "train"]


def _assert_same(a_dir, b_dir):
    a, b = _final(a_dir), _final(b_dir)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_train_losses(a_dir), _train_losses(b_dir), rtol=1e-5)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted one-process, two-device run (the data set is prepared here too)."""
    workdir = tmp_path_factory.mktemp("reference")
    assert _one_process(data_dir, workdir) == 0
    return workdir


def test_two_processes_match_one_process_on_two_devices(data_dir, tmp_path, reference):
    workdir = tmp_path / "two"
    assert _two_processes(data_dir, workdir) == 0
    _assert_same(workdir, reference)
    # Process 0 alone wrote the outputs: one record per step window, no duplicates.
    steps = [r["step"] for r in loop.read_metrics(str(workdir)) if r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_checkpoints_move_between_two_processes_and_one(data_dir, tmp_path, reference):
    faults = f"sigterm_at_step={PREEMPT_AT}"
    # Written by two processes (preempted), finished by one.
    a = tmp_path / "two_then_one"
    assert _two_processes(data_dir, a, faults) == 75
    assert Checkpointer(os.path.join(a, "checkpoints"), read_only=True).latest_step() == PREEMPT_AT
    assert _one_process(data_dir, a) == 0
    _assert_same(a, reference)
    # Written by one process (preempted), finished by two.
    b = tmp_path / "one_then_two"
    assert _one_process(data_dir, b, faults) == 75
    assert _two_processes(data_dir, b) == 0
    _assert_same(b, reference)
