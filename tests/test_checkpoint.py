"""Checkpoints: round trip, keep-latest-and-best, resume, teachers restored read-only."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from distill_jax.config import load_config
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.models import create_model
from distill_jax.teachers import Teacher
from distill_jax.train.checkpointing import NO_CHECKSUM, Checkpointer, saved_state_keys
from distill_jax.train.loop import fit, load_teacher
from distill_jax.train.optim import make_optimizer
from distill_jax.train.state import create_train_state


def _state(seed=0):
    model = create_model({"name": "cnn", "widths": [4], "batch_norm": True}, 10)
    tx, _ = make_optimizer(
        {
            "optimizer": "sgd",
            "learning_rate": 0.1,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 5e-4,
            "schedule": "constant",
            "epochs": 1,
            "warmup_epochs": 0,
            "step_epochs": [],
            "step_factor": 0.1,
            "grad_clip": 0.0,
        },
        10,
    )
    return create_train_state(model, tx, (8, 8, 1), seed)


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_round_trip(tmp_path):
    state = _state()
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(7, state, {"note": "x"})
    ckpt.wait()
    restored, meta = ckpt.restore(target=_state(seed=1))
    _assert_trees_equal(restored, state)
    assert meta["note"] == "x" and meta["step"] == 7
    assert type(restored).__name__ == "TrainState"


def test_keeps_latest_and_best(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    state = _state()
    for step, acc in [(1, 0.5), (2, 0.9), (3, None), (4, 0.6), (5, None), (6, 0.7)]:
        ckpt.save(step, state, {}, metrics=None if acc is None else {"val_accuracy": acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]  # best (2) and the latest two
    assert ckpt.best_step() == 2 and ckpt.latest_step() == 6


def test_restore_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Checkpointer(tmp_path / "empty").restore()


def test_resume_continues_from_saved_step(tiny_config, tmp_path):
    config = tiny_config(**{"checkpoint.every_steps": 5, "checkpoint.keep": 20})
    full = fit(config, str(tmp_path / "full"), role="teacher")
    assert full.start_step == 0
    # Simulate a run interrupted after step 10: copy it and delete every later step.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for name in os.listdir(part / "checkpoints"):
        if name.isdigit() and int(name) > 10:
            shutil.rmtree(part / "checkpoints" / name)
    resumed = fit(config, str(part), role="teacher")
    assert resumed.start_step == 10
    _assert_trees_equal(resumed.variables, full.variables)  # bitwise, on CPU
    steps = [
        r["step"] for r in map(json.loads, open(part / "metrics.jsonl")) if r["split"] == "train"
    ]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_workdir_of_another_config_is_refused(tiny_config, tmp_path):
    fit(tiny_config(), str(tmp_path / "run"), role="teacher")
    other = tiny_config(**{"teacher.train.learning_rate": 0.5})
    with pytest.raises(ConfigError, match="different config"):
        fit(other, str(tmp_path / "run"), role="teacher")
    fit(other, str(tmp_path / "run"), role="teacher", overwrite=True)


def test_teacher_restored_read_only_and_checked(tiny_config, tmp_path):
    config = tiny_config()
    trained = fit(config, str(tmp_path / "teacher"), role="teacher")
    listing = sorted(os.listdir(tmp_path / "teacher" / "checkpoints"))
    teacher = load_teacher(str(tmp_path / "teacher"))
    _assert_trees_equal(teacher.variables, trained.variables)
    assert sorted(os.listdir(tmp_path / "teacher" / "checkpoints")) == listing
    assert teacher.identity["num_classes"] == 10
    with pytest.raises(CheckpointError, match="holds no distill-jax checkpoint"):
        load_teacher(str(tmp_path / "nowhere"))
    # A teacher with another class count is refused before the student trains.
    wrong = Teacher(teacher.model, teacher.variables, dict(teacher.identity, num_classes=5))
    with pytest.raises(ConfigError, match="class-count mismatch"):
        fit(config, str(tmp_path / "student"), role="student", teacher=wrong)
    assert not os.path.exists(tmp_path / "student")


def _rewrite_in_old_layout(workdir, extra):
    """Rewrites a run's checkpoints as distill-jax wrote them before the typed TrainState:
    the same arrays, with an untyped `extra` dict in place of methods/memory/hparams."""
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    steps = ckpt.all_steps()
    saved = [(s, *ckpt.restore(s)) for s in steps]
    ckpt.close()
    shutil.rmtree(workdir / "checkpoints")
    ckpt = Checkpointer(workdir / "checkpoints", keep=20)
    for step, raw, metadata in saved:
        old = {k: raw[k] for k in ("step", "params", "batch_stats", "opt_state", "rng")}
        old["extra"] = extra(raw)
        ckpt.save(step, old, {k: v for k, v in metadata.items() if k not in ("step", "metrics")})
    ckpt.wait()
    ckpt.finalize()
    ckpt.close()


def test_a_workdir_from_before_the_typed_state_fails_with_what_to_do(tiny_config, tmp_path, capsys):
    """A pruned run of the old layout kept its masks in `TrainState.extra`: resuming it
    would lose them, so the run stops with one line saying what to do, and the workdir is
    left as it was."""
    from distill_jax.cli import main

    config = tiny_config()
    fit(config, str(tmp_path / "run"), role="teacher")
    masks = lambda raw: {"masks": jax.tree.map(lambda p: np.ones(p.shape, bool), raw["params"])}  # noqa: E731
    _rewrite_in_old_layout(tmp_path / "run", masks)
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    config_json = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match="written by an older distill-jax") as e:
        fit(config, str(tmp_path / "run"), role="teacher")
    message = str(e.value)
    assert "\n" not in message and "--overwrite" in message
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before
    assert (tmp_path / "run" / "config.json").read_bytes() == config_json
    # Through the CLI: one line, exit code 2; --overwrite starts the run again.
    from conftest import tiny_overrides

    args = [f"--config.{o}" for o in tiny_overrides(str(config.data.data_dir))]
    assert main(["train", "--workdir", str(tmp_path / "run"), *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "distill-jax" in line]
    assert len(err) == 1 and err[0].startswith("distill-jax: error: the checkpoints in ")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before
    assert main(["train", "--workdir", str(tmp_path / "run"), "--overwrite", *args]) == 0
    assert "extra" not in saved_state_keys(str(tmp_path / "run" / "checkpoints"))


def test_a_step_without_checksum_is_never_re_blessed(tmp_path):
    """A step found on disk without its checksum (a killed save, or a tampered step whose
    checksum was removed) stays unverified when the next run saves new steps."""
    model = create_model({"name": "mlp", "hidden": [4]}, 10)
    tx, _ = make_optimizer(load_config(None).student.train.to_dict(), steps_per_epoch=1)
    state = create_train_state(model, tx, (8, 8, 1), 0)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=10)
    ckpt.save(1, state, {})
    ckpt.wait()
    ckpt.close()
    assert Checkpointer(tmp_path / "ckpt", read_only=True).verify(1) is None
    os.remove(tmp_path / "ckpt" / "checksums" / "1.json")
    ckpt = Checkpointer(tmp_path / "ckpt", keep=10)  # the next run
    ckpt.save(2, state, {})
    ckpt.wait()
    ckpt.close()
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    assert reader.verify(2) is None
    assert reader.verify(1) == NO_CHECKSUM and "unverified" in NO_CHECKSUM
