"""Fault injection against the real CLI in subprocesses (issue: runs that survive).

Each test runs `distill-jax train` on `digits` with a tiny MLP and injects a fault: SIGKILL
at several points (also while a checkpoint is being written), SIGTERM/SIGINT, truncated,
deleted and bit-flipped checkpoint files, NaN losses, and bad input. The runs are compared
bitwise with an uninterrupted run of the same command.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.train.checkpointing import Checkpointer

EXE = os.path.join(os.path.dirname(sys.executable), "distill-jax")
STEPS = 4 * (1197 // 64)  # 4 epochs of digits at batch 64 = 72 steps


def _env(faults: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DISTILL_JAX_FAULTS")}
    if faults:
        env["DISTILL_JAX_FAULTS"] = faults
    return env


def _args(data_dir, workdir, command="train", **overrides):
    items = {"teacher.train.epochs": 4, "checkpoint.every_steps": 5, "checkpoint.keep": 3}
    items.update(overrides)
    return [
        EXE,
        command,
        "--workdir",
        str(workdir),
        *(f"--config.{o}" for o in tiny_overrides(data_dir, **items)),
    ]


def _train(data_dir, workdir, faults=None, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        _args(data_dir, workdir, **overrides),
        env=_env(faults),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _final_state(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    state, meta = ckpt.restore()
    return meta["step"], state


def _assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run: the ground truth every faulty run must reproduce."""
    workdir = tmp_path_factory.mktemp("faults") / "reference"
    result = _train(data_dir, workdir)
    assert result.returncode == 0, result.stderr
    step, state = _final_state(workdir)
    assert step == STEPS
    return workdir, state


def test_same_config_and_seed_is_bitwise_deterministic(data_dir, tmp_path, reference):
    assert _train(data_dir, tmp_path / "again").returncode == 0
    _assert_bitwise_equal(_final_state(tmp_path / "again")[1], reference[1])


def test_sigkill_anywhere_then_restart_is_bitwise_identical(data_dir, tmp_path, reference):
    workdir = tmp_path / "killed"
    resumed_from = []
    # Killed after a plain step, while writing a checkpoint (with validation metrics at an
    # epoch end, and a periodic one), and once more after a step: the same command each time.
    for fault in (
        "sigkill_at_step=7",
        "sigkill_in_save=18",
        "sigkill_in_save=25",
        "sigkill_at_step=61",
    ):
        result = _train(data_dir, workdir, faults=fault)
        assert result.returncode == -signal.SIGKILL, (fault, result.stderr)
        ckpt_dir = os.path.join(workdir, "checkpoints")
        # A half-written step is never listed as a checkpoint.
        assert all(s <= int(fault.split("=")[1]) for s in Checkpointer(ckpt_dir).all_steps())
        if "resuming" in result.stderr:
            resumed_from.append(int(result.stderr.split("from step ")[1].split()[0]))
    result = _train(data_dir, workdir)
    assert result.returncode == 0, result.stderr
    resumed_from.append(int(result.stderr.split("from step ")[1].split()[0]))
    assert resumed_from == sorted(resumed_from) and resumed_from[0] > 0
    _assert_bitwise_equal(_final_state(workdir)[1], reference[1])
    records = [line for line in open(workdir / "metrics.jsonl") if '"train"' in line]
    steps = [int(r.split('"step": ')[1].split(",")[0]) for r in records]
    assert steps == sorted(set(steps))  # no duplicated records from the killed attempts


def test_sigterm_writes_a_checkpoint_and_exits_75(data_dir, tmp_path, reference):
    workdir = tmp_path / "preempted"
    result = _train(data_dir, workdir, faults="sigterm_at_step=11")
    assert result.returncode == 75, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("distill-jax")]
    assert lines == [lines[0]] and "preempted: SIGTERM at step 11/72" in lines[0]
    assert "Run the same command again to resume" in lines[0]
    assert Checkpointer(workdir / "checkpoints").latest_step() == 11
    result = _train(data_dir, workdir)
    assert result.returncode == 0 and "from step 11" in result.stderr
    _assert_bitwise_equal(_final_state(workdir)[1], reference[1])


def test_sigint_from_outside(data_dir, tmp_path):
    workdir = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _args(data_dir, workdir, **{"teacher.train.epochs": 400}),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not os.path.exists(workdir / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    step = int(err.split("SIGINT at step ")[1].split("/")[0])
    assert 0 < step < 400 * 18
    assert Checkpointer(workdir / "checkpoints").latest_step() == step


def _latest_step_files(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    step = ckpt.latest_step()
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    # The largest file holds the array data.
    return step, ckpt.all_steps(), max(files, key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize(
    "corrupt", [_truncate, os.remove, _flip], ids=["truncated", "deleted", "bit-flipped"]
)
def test_corrupt_latest_checkpoint_falls_back(data_dir, tmp_path, reference, corrupt):
    workdir = tmp_path / "corrupt"
    shutil.copytree(reference[0], workdir)
    step, steps, victim = _latest_step_files(workdir)
    corrupt(victim)
    # evaluate falls back to the newest intact step, naming the one it skipped.
    previous = steps[-2]
    evaluated = subprocess.run(
        [EXE, "evaluate", "--workdir", str(workdir)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"checkpoint step {step} is not usable" in evaluated.stderr
    assert f"using step {previous}" in evaluated.stderr
    # train falls back to the newest intact step and ends where the reference ended.
    result = _train(data_dir, workdir)
    assert result.returncode == 0, result.stderr
    assert f"checkpoint step {step}" in result.stderr and "is corrupt" in result.stderr
    assert f"resumed from step {previous}" in result.stderr
    assert os.path.isdir(workdir / "checkpoints" / f"corrupt-{step}")
    _assert_bitwise_equal(_final_state(workdir)[1], reference[1])


def test_no_intact_checkpoint_stops_instead_of_starting_over(data_dir, tmp_path, reference):
    workdir = tmp_path / "all_corrupt"
    shutil.copytree(reference[0], workdir)
    ckpt_dir = workdir / "checkpoints"
    steps = Checkpointer(ckpt_dir, read_only=True).all_steps()
    for step in steps:
        for root, _, files in os.walk(ckpt_dir / str(step)):
            for f in files:
                if os.path.getsize(os.path.join(root, f)) > 100:
                    _truncate(os.path.join(root, f))
    result = _train(data_dir, workdir)
    assert result.returncode == 2
    assert "no intact checkpoint to resume from" in result.stderr
    assert f"delete {ckpt_dir}" in result.stderr  # advice that helps (--overwrite would not)
    assert "Traceback" not in result.stderr
    assert Checkpointer(ckpt_dir, read_only=True).all_steps() == steps  # nothing deleted


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    workdir = tmp_path / "diverged"
    diverge = {
        "teacher.train.optimizer": "sgd",
        "teacher.train.learning_rate": 1e30,
        "teacher.train.schedule": "constant",
        "checkpoint.every_steps": 1,
    }
    result = _train(data_dir, workdir, **diverge)
    assert result.returncode == 3, result.stderr
    assert "became non-finite at step" in result.stderr and "Traceback" not in result.stderr
    assert "lower the learning rate" in result.stderr  # the likely cause
    bad_step = int(result.stderr.split("non-finite at step ")[1].split()[0])
    step, state = _final_state(workdir)
    assert step < bad_step
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    # With on_nonfinite=skip the run finishes and counts the skipped steps.
    skip = _train(
        data_dir, tmp_path / "skipped", **diverge, **{"teacher.train.on_nonfinite": "skip"}
    )
    assert skip.returncode == 0, skip.stderr
    assert "skipped_steps" in skip.stdout
    skipped = int(skip.stdout.split("skipped_steps")[1].split()[0])
    assert 0 < skipped <= STEPS


def test_nan_teacher_names_the_kd_term(tiny_config, tmp_path):
    from distill_jax.errors import DivergenceError
    from distill_jax.train.loop import fit, load_teacher

    config = tiny_config()
    fit(config, str(tmp_path / "teacher"), role="teacher")
    teacher = load_teacher(str(tmp_path / "teacher"))
    poisoned = jax.tree.map(lambda x: np.full_like(x, np.nan), teacher.variables)
    teacher = type(teacher)(teacher.model, poisoned, teacher.identity)
    with pytest.raises(DivergenceError, match="'kd'") as e:
        fit(config, str(tmp_path / "student"), role="student", teacher=teacher)
    assert "'ce'" not in str(e.value) and "at step 1 " in str(e.value)
    assert "check the teacher's outputs" in str(e.value)  # the likely cause, not the lr
    assert "lower the learning rate" not in str(e.value)


def test_bad_input_exit_code_2_before_any_work(data_dir, tmp_path, reference):
    cases = []
    # Unwritable workdir: a path below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases.append((_args(data_dir, blocker / "run"), "is not writable"))
    # A teacher checkpoint whose architecture does not match its recorded config.
    teacher = tmp_path / "teacher"
    shutil.copytree(reference[0], teacher)
    spec = json.loads((teacher / "config.json").read_text())
    spec["model"]["hidden"] = [33]  # the checkpoint holds a 32-unit layer
    (teacher / "config.json").write_text(json.dumps(spec))
    cases.append(
        (
            _args(data_dir, tmp_path / "s", "distill") + ["--teacher", str(teacher)],
            "does not match its architecture",
        )
    )
    # Teacher trained on 8x8 digits, student on 28x28 MNIST.
    cases.append(
        (
            _args(data_dir, tmp_path / "s2", "distill", **{"data.name": "mnist_5k"})
            + ["--teacher", str(reference[0])],
            "input mismatch",
        )
    )
    # A workdir that belongs to another config.
    cases.append(
        (
            _args(data_dir, reference[0], **{"teacher.train.learning_rate": 0.5}),
            "holds a run of a different config",
        )
    )
    for args, message in cases:
        result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()
    assert _final_state(reference[0])[0] == STEPS  # the reference run was left alone
