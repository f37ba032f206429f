"""`distill-jax compress`: the prune -> distil -> quantize chain end to end on `digits`."""

import json

import numpy as np
import pytest
from conftest import tiny_overrides
from test_report import assert_common_meta

from distill_jax.cli import main
from distill_jax.compress import sparsity_of
from distill_jax.compress.chain import disk_bytes, prune_schedule, recovery_config
from distill_jax.compress.stage import stage
from distill_jax.errors import ConfigError
from distill_jax.train.loop import fit, load_teacher

CHAIN = {
    "student.model": {"name": "mlp", "hidden": [32, 32]},
    "teacher.model": {"name": "mlp", "hidden": [32]},
    "teacher.train.learning_rate": 1e-2,
    "student.train.learning_rate": 1e-2,
    "teacher.train.epochs": 3,
    "student.train.epochs": 3,
    "compression.sparsities": [0.8],
    "compression.channel_keep": [0.5],
    "compression.recovery": ["kd", "self", "hard"],
    "compression.recovery_epochs": 1,
    "compression.prune_every": 2,
    "compression.qat_epochs": 1,
}


def test_compress_chain_end_to_end(data_dir, tmp_path, capsys):
    workdir = tmp_path / "chain"
    args = ["compress", "--workdir", str(workdir)]
    assert main([*args, *(f"--config.{o}" for o in tiny_overrides(data_dir, **CHAIN))]) == 0
    report = json.loads((workdir / "compression.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == [
        "teacher",
        "student alone",
        "student distilled",
        "pruned 80%, no recovery",
        "pruned 80% + kd recovery",
        "pruned 80% + self recovery",
        "pruned 80% + hard recovery",
        "channels 50%, no recovery",
        "channels 50% + kd recovery",
        "channels 50% + self recovery",
        "channels 50% + hard recovery",
        "distilled, int8 PTQ",
        "distilled, int8 QAT (KD)",
        "channels 50% + kd recovery, int8",
    ]
    dense = rows["student distilled"]
    # Unstructured pruning: 80% of the 64*32 + 32*32 + 32*10 kernel weights are zero.
    kernels = 64 * 32 + 32 * 32 + 32 * 10
    for label in ("pruned 80%, no recovery", "pruned 80% + kd recovery"):
        assert rows[label]["params"] == dense["params"]
        assert rows[label]["nonzero_params"] <= dense["params"] - int(0.8 * kernels)
        assert rows[label]["nonzero_params"] >= dense["params"] - int(0.8 * kernels) - 32 - 32
        assert rows[label]["disk_bytes"] < dense["disk_bytes"]
    # Channel pruning: a genuinely smaller dense model (16 + 16 hidden units).
    small = 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert rows["channels 50% + kd recovery"]["params"] == small
    assert rows["channels 50% + kd recovery"]["model_config"]["hidden"] == [16, 16]
    # int8: about a quarter of the float bytes on disk, and still a classifier.
    for label in ("distilled, int8 PTQ", "distilled, int8 QAT (KD)"):
        assert rows[label]["disk_bytes"] < 0.5 * dense["disk_bytes"]
        assert rows[label]["params"] == dense["params"]  # int8 values; scales are overhead
        assert rows[label]["accuracy"] > 0.5
    assert abs(rows["distilled, int8 PTQ"]["accuracy"] - dense["accuracy"]) <= 0.05
    for r in report["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms_per_example"] > 0
    md = (workdir / "compression.md").read_text()
    assert "| channels 50% + kd recovery, int8 |" in md
    assert (workdir / "compression.png").stat().st_size > 10_000
    assert_common_meta(report["meta"])
    assert {"latency_batch_size", "teacher", "compression"} <= set(report["meta"])
    assert f"; {report['meta']['device']}, jax " in md
    assert not list(workdir.glob("*.tmp*"))


def test_recovery_keeps_the_target_sparsity_and_its_masks(tiny_config, tmp_path):
    config = tiny_config(**{"student.model": {"name": "mlp", "hidden": [32]}})
    start = fit(config, str(tmp_path / "dense"), role="student")
    dense = load_teacher(start.workdir, what="student")
    rec = recovery_config(config)
    schedule = prune_schedule(rec, 0.75, steps=40)
    assert schedule.end_step == 20 and schedule.every == 10  # ramp over half the steps
    pruned = stage(init_from=dense, prune=schedule)
    result = fit(rec, str(tmp_path / "pruned"), role="student", variant=pruned)
    n = 64 * 32 + 32 * 10
    assert sparsity_of(result.variables["params"]) == np.floor(0.75 * n) / n
    # Starting variables of another architecture are refused with the shapes.
    with pytest.raises(ConfigError, match="do not fit the model"):
        fit(
            recovery_config(config, {"name": "mlp", "hidden": [8]}),
            str(tmp_path / "bad"),
            role="student",
            variant=stage(init_from=dense),
        )
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_disk_bytes_shrink_with_zeros_and_int8():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(256, 256)).astype(np.float32)
    dense = disk_bytes({"params": {"w": w}})
    assert dense >= w.nbytes * 0.9  # random floats barely compress
    sparse = disk_bytes({"params": {"w": np.where(np.abs(w) > 1.0, w, 0).astype(np.float32)}})
    assert sparse < 0.6 * dense
    assert disk_bytes({"params": {"w": w.astype(np.int8)}}) < 0.3 * dense


def test_a_plan_that_cannot_work_fails_before_any_training(data_dir, tmp_path, capsys):
    workdir = tmp_path / "chain"
    overrides = tiny_overrides(data_dir, **{"compression.channel_criterion": "bn_scale"})
    code = main(["compress", "--workdir", str(workdir), *(f"--config.{o}" for o in overrides)])
    assert code == 2
    err = capsys.readouterr().err
    assert "'bn_scale' needs BatchNorm" in err and "dense1" in err
    assert not (workdir / "teacher").exists()
