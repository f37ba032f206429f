"""The CIFAR-100 benchmark's smoke variant through `distill-jax sweep`, and method wiring."""

import json
import os

import pytest
from test_report import assert_common_meta

from distill_jax.cli import main
from distill_jax.config import load_config
from distill_jax.errors import ConfigError
from distill_jax.train.loop import fit, load_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "cifar100", "smoke.py")
BENCHMARK = os.path.join(ROOT, "experiments", "cifar100", "config.py")


def _sweep(data_dir, workdir, methods):
    return main(
        [
            "sweep",
            "--config",
            SMOKE,
            "--workdir",
            str(workdir),
            "--data_dir",
            data_dir,
            "--methods",
            ",".join(methods),
        ]
    )


def _check_report(workdir, methods):
    report = json.loads((workdir / "sweep.json").read_text())
    rows = {(r["pair"], r["method"]): r for r in report["rows"]}
    assert set(rows) == {("resnet14:resnet8", m) for m in ["teacher", *methods]}
    for r in rows.values():
        assert 0.0 <= r["best"] <= 1.0 and 0.0 <= r["last"] <= 1.0
    md = (workdir / "sweep.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
    assert_common_meta(report["meta"])
    assert report["meta"]["device"] in md.splitlines()[-1]
    assert not list(workdir.glob("*.tmp*"))
    return report


def test_benchmark_config_is_valid():
    config = load_config(BENCHMARK)
    assert config.data.name == "tfds:cifar100" and config.student.train.epochs == 240
    assert len(config.sweep.pairs) == 3 and len(config.sweep.methods) >= 15
    published = json.load(open(config.sweep.published))
    assert published["resnet32x4:resnet8x4"]["crd"] == 75.51


def test_smoke_sweep_logit_memory_bank_and_regressor_methods(data_dir, tmp_path):
    methods = ["student", "kd", "crd", "fitnet"]
    assert _sweep(data_dir, tmp_path / "sweep", methods) == 0
    report = _check_report(tmp_path / "sweep", methods)
    # The CRD run's metrics log its own term next to CE.
    crd_dir = next(r["workdir"] for r in report["runs"] if r["method"] == "crd")
    last = [
        json.loads(line)
        for line in open(os.path.join(crd_dir, "metrics.jsonl"))
        if '"train"' in line
    ][-1]
    assert {"ce", "crd", "loss"} <= set(last)


@pytest.mark.slow
def test_smoke_sweep_every_method(data_dir, tmp_path):
    methods = list(load_config(SMOKE).sweep.methods)
    assert _sweep(data_dir, tmp_path / "sweep", methods) == 0
    _check_report(tmp_path / "sweep", methods)


def test_wrong_feature_name_fails_before_training(tiny_config, tmp_path):
    config = tiny_config()
    fit(config, str(tmp_path / "teacher"), role="teacher")
    teacher = load_teacher(str(tmp_path / "teacher"))
    bad = tiny_config(**{"distill.losses": {"at": {"weight": 1.0, "student_features": ["stage9"]}}})
    with pytest.raises(ConfigError) as e:
        fit(bad, str(tmp_path / "student"), role="student", teacher=teacher)
    assert "the student has no feature 'stage9'" in str(e.value)
    assert "hidden1 (2, 32)" not in str(e.value) and "pre_logits (2, 16)" in str(e.value)
    assert not (tmp_path / "student").exists()


def test_unknown_sweep_method_is_refused(data_dir, tmp_path, capsys):
    assert _sweep(data_dir, tmp_path / "s", ["kd", "crdd"]) == 2
    assert "unknown sweep method 'crdd'" in capsys.readouterr().err
