"""How big should the student be: early-stopped teachers (`checkpoint.keep_epochs`,
`teacher.checkpoint = "epoch:N"`), teacher-assistant chains and the capacity sweep."""

import os

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.config import load_config
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.train.checkpointing import Checkpointer
from distill_jax.train.loop import fit, load_teacher


@pytest.fixture(scope="module")
def teacher_run(data_dir, tmp_path_factory):
    """A 4-epoch teacher that keeps the ends of epochs 1 and 3 for good (keep = 1 latest)."""
    root = tmp_path_factory.mktemp("capacity")
    config = load_config(
        None,
        tiny_overrides(
            data_dir,
            **{
                "teacher.train.epochs": 4,
                "checkpoint.keep": 1,
                "checkpoint.keep_epochs": [1, 3, 9],
                "eval.every_epochs": 2,
            },
        ),
    )
    result = fit(config, str(root / "teacher"), role="teacher")
    return str(root / "teacher"), result


def test_kept_epochs_survive_and_load_as_early_stopped_teachers(teacher_run):
    workdir, result = teacher_run
    per_epoch = result.steps // 4
    steps = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).all_steps()
    # Epochs 1 and 3 are kept besides the latest (keep = 1) and the best; 9 is never reached.
    assert {per_epoch, 3 * per_epoch, 4 * per_epoch} <= set(steps)
    # Epochs 1 and 3 were validated although eval.every_epochs = 2.
    validated = [r["step"] for r in result.history]
    assert validated == [per_epoch, 2 * per_epoch, 3 * per_epoch, 4 * per_epoch]
    early = load_teacher(workdir, "epoch:1")
    latest = load_teacher(workdir, "latest")
    assert early.identity["step"] == per_epoch and early.identity["checkpoint"] == "epoch:1"
    assert latest.identity["step"] == 4 * per_epoch and "checkpoint" not in latest.identity
    assert early.identity["sha256"] != latest.identity["sha256"]
    # Its weights are the ones saved at that step, not the latest.
    raw, _ = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).restore(per_epoch)
    np.testing.assert_array_equal(
        jax.tree.leaves(early.variables["params"])[0], jax.tree.leaves(raw["params"])[0]
    )


def test_an_epoch_that_was_not_kept_is_refused_with_the_kept_ones(teacher_run):
    workdir, _ = teacher_run
    kept = r"no checkpoint at the end of epoch 2 .*epochs \[1, 3, 4\].*keep_epochs=\[2\]"
    with pytest.raises(CheckpointError, match=kept):
        load_teacher(workdir, "epoch:2")


@pytest.mark.parametrize("value", ["epoch:0", "epoch:x", "epoch", "bets"])
def test_bad_teacher_checkpoint_names_are_one_line(data_dir, value):
    valid = r"teacher.checkpoint = .* valid values: latest, best, or \"epoch:N\""
    with pytest.raises(ConfigError, match=valid):
        load_config(None, tiny_overrides(data_dir, **{"teacher.checkpoint": value}))


@pytest.mark.parametrize("value", [[0], ["3"], [True], [2.5]])
def test_bad_keep_epochs_are_one_line(data_dir, value):
    with pytest.raises(ConfigError, match="checkpoint.keep_epochs lists epochs"):
        load_config(None, tiny_overrides(data_dir, **{"checkpoint.keep_epochs": value}))
