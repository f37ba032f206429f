"""The `distill-jax` CLI end to end on `digits` with tiny models, and its bad-input errors."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_overrides
from test_report import assert_common_meta

from distill_jax.cli import main


def _cli(data_dir, *args, **overrides):
    return main([*args, *(f"--config.{o}" for o in tiny_overrides(data_dir, **overrides))])


def test_run_writes_the_report(data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert _cli(data_dir, "run", "--workdir", str(workdir), "--seeds", "2") == 0
    report = json.loads((workdir / "report.json").read_text())
    results = report["results"]
    assert set(results) == {"teacher", "student_scratch", "student_scratch_aug", "student_kd"}
    for name, entry in results.items():
        for key in ("test_accuracy", "test_nll", "ece", "params"):
            assert key in entry, (name, key)
        assert 0.0 <= entry["test_accuracy"] <= 1.0
        if name != "teacher":
            assert entry["n_seeds"] == 2 and len(entry["seeds"]) == 2
            assert "agreement" in entry and "test_accuracy_std" in entry
    assert results["teacher"]["params"] > results["student_kd"]["params"]
    assert_common_meta(report["meta"])
    assert report["meta"]["seeds"] == 2 and "distill" in report["meta"]
    # Seeds differ, so the per-seed results do too.
    accs = [s["test_accuracy"] for s in results["student_kd"]["seeds"]]
    nlls = [s["test_nll"] for s in results["student_kd"]["seeds"]]
    assert accs[0] != accs[1] or nlls[0] != nlls[1]
    md = (workdir / "report.md").read_text()
    assert "student distilled" in md and "± " in md
    assert f"on {report['meta']['device']}." in md
    assert (workdir / "learning_curves.png").stat().st_size > 10_000
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert {r["run"] for r in records} == set(results)
    assert {"teacher", "student", "distill"} <= set(
        json.loads((workdir / "config.json").read_text())
    )
    assert not list(workdir.glob("*.tmp*"))
    assert "student distilled" in capsys.readouterr().out
    # Running again resumes every finished sub-run instead of training it again.
    mtime = os.path.getmtime(workdir / "teacher" / "metrics.jsonl")
    assert _cli(data_dir, "run", "--workdir", str(workdir), "--seeds", "2") == 0
    assert os.path.getmtime(workdir / "teacher" / "metrics.jsonl") >= mtime
    again = json.loads((workdir / "report.json").read_text())["results"]
    assert again["student_kd"]["test_accuracy"] == results["student_kd"]["test_accuracy"]


def test_train_distill_evaluate(data_dir, tmp_path, capsys):
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    assert _cli(data_dir, "train", "--workdir", teacher) == 0
    assert _cli(data_dir, "distill", "--workdir", student, "--teacher", teacher) == 0
    distilled = json.loads(open(os.path.join(student, "eval.json")).read())
    assert "agreement" in distilled and "kl" in distilled
    capsys.readouterr()
    assert main(["evaluate", "--workdir", student, "--teacher", teacher]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "agreement" in out
    evaluated = json.loads(open(os.path.join(student, "eval_test.json")).read())
    assert evaluated["accuracy"] == pytest.approx(distilled["accuracy"])
    assert evaluated["agreement"] == pytest.approx(distilled["agreement"])


def test_cache_teacher_then_distill_from_the_cache_and_vmapped_students(data_dir, tmp_path, capsys):
    teacher, cache = str(tmp_path / "teacher"), str(tmp_path / "cache")
    assert _cli(data_dir, "train", "--workdir", teacher) == 0
    aug = {"student.train.translate": 1}
    args = ["--teacher", teacher, "--top_k", "4", "--views", "2"]
    assert _cli(data_dir, "cache-teacher", "--workdir", cache, *args, **aug) == 0
    assert "cached top-4 logits of 1197 examples x 2 view(s)" in capsys.readouterr().out
    student = str(tmp_path / "student")
    args = ["--teacher_cache", cache, "--vmap_students", "2"]
    assert _cli(data_dir, "distill", "--workdir", student, *args, **aug) == 0
    result = json.loads(open(os.path.join(student, "eval.json")).read())
    assert [s["seed"] for s in result["students"]] == [0, 1]
    assert "accuracy_std" in result
    assert "| 0.1 | 4 | 0.001 | 2 |" in open(os.path.join(student, "report.md")).read()
    # The cache's views were made with translate=1; a student without it is refused.
    other = str(tmp_path / "other")
    assert _cli(data_dir, "distill", "--workdir", other, "--teacher_cache", cache) == 2
    assert "holds views made with translate=1" in capsys.readouterr().err
    assert not os.path.exists(other)


@pytest.mark.parametrize(
    "args, overrides, message",
    [
        (["train"], {"teacher.train.epoch": 3}, "unknown config key 'teacher.train.epoch'"),
        (["train"], {"data.name": "mnist5k"}, "Unknown dataset 'mnist5k'"),
        (["distill", "--teacher", "/nonexistent/teacher"], {}, "holds no distill-jax checkpoint"),
        (["distill"], {}, "distill needs a teacher"),
        (["train"], {"teacher.train.batch_size": 12}, "divisible by the number of devices"),
    ],
)
def test_bad_input_is_one_clear_message(data_dir, tmp_path, capsys, args, overrides, message):
    workdir = tmp_path / "w"
    code = _cli(data_dir, args[0], "--workdir", str(workdir), *args[1:], **overrides)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not workdir.exists()  # nothing was written by the failed start


def test_failed_start_does_not_touch_an_existing_workdir(data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    assert _cli(data_dir, "train", "--workdir", str(workdir)) == 0
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    assert _cli(data_dir, "train", "--workdir", str(workdir), **{"teacher.train.lr": 1}) == 2
    assert {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)} == before


def test_console_script_exit_code_and_help():
    exe = os.path.join(os.path.dirname(sys.executable), "distill-jax")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "train", "distill", "evaluate"):
        assert command in out
    bad = subprocess.run(
        [exe, "train", "--workdir", "/tmp/unused", "--config.student.train.optimiser=sgd"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "did you mean 'optimizer'" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_without_a_run_is_one_clear_message(tmp_path, capsys):
    assert main(["evaluate", "--workdir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "run directory" in err and "holds no distill-jax checkpoint" in err
    assert not (tmp_path / "nothing").exists()
