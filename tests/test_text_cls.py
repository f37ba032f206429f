"""Text classification with transfer sets (experiments/text_cls): unlabelled rows in the
training split, the misuse they invite, and the experiment's driver on tiny models."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.config import import_file, load_config
from distill_jax.errors import ConfigError
from distill_jax.tasks import Classification

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, "..", "experiments", "text_cls")
BERT = {
    "name": "bert",
    "hidden_size": 16,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 32,
    "max_position": 64,
    "head_input": "mean",
}


def tiny(data_dir, **extra) -> list[str]:
    items = {
        "data.data_dir": data_dir,
        "data.train_split": "train[:64]",
        "data.validation_split": "validation[:32]",
        "data.test_split": "test[:32]",
        "data.eval_batch_size": 32,
        "data.unlabelled_split": "train[:32]",
        "teacher.model": BERT,
        "student.model": {**BERT, "hidden_size": 8},
        "teacher.train.epochs": 1,
        "student.train.epochs": 2,
        "teacher.train.warmup_epochs": 0.0,
        "student.train.batch_size": 32,
        "eval.latency_batch_size": 4,
        "log.every_steps": 1,
    }
    items.update(extra)
    return [f"{k}={v!r}" for k, v in items.items()]


def test_unlabelled_rows_are_skipped_by_the_task_loss_and_accuracy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, -1, 2, 1, -1, 2])
    task = Classification(unlabelled=True)
    loss = float(task.loss(jnp.asarray(logits), jnp.asarray(labels), None, 0.0))
    kept = labels >= 0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean(logp[kept][np.arange(kept.sum()), labels[kept]])
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    acc = float(task.train_metrics(jnp.asarray(logits), jnp.asarray(labels), None)["accuracy"])
    assert acc == pytest.approx(np.mean(logits[kept].argmax(-1) == labels[kept]))
    # All rows unlabelled: a zero loss, not NaN.
    none = jnp.full((6,), -1)
    assert float(task.loss(jnp.asarray(logits), none, None, 0.0)) == 0.0


@pytest.fixture(scope="module")
def teacher_dir(data_dir, tmp_path_factory):
    from distill_jax.cli import main

    workdir = str(tmp_path_factory.mktemp("text_cls") / "teacher")
    args = [f"--config.{o}" for o in tiny(data_dir)]
    assert (
        main(
            [
                "train",
                "--config",
                os.path.join(EXPERIMENT, "teacher.py"),
                "--workdir",
                workdir,
                *args,
            ]
        )
        == 0
    )
    return workdir


def test_distilling_on_labelled_plus_unlabelled_text(data_dir, tmp_path, teacher_dir):
    from distill_jax.train.loop import fit, load_data, load_teacher

    overrides = tiny(data_dir, **{"data.unlabelled": ["vader_snippets"]})
    cfg = load_config(os.path.join(EXPERIMENT, "kd.py"), overrides)
    data = load_data(cfg)
    assert len(data.train) == 64 + 32 and (data.train.labels == -1).sum() == 32
    assert data.train.info.splits["unlabelled"] == 32
    teacher = load_teacher(teacher_dir)
    result = fit(cfg, str(tmp_path / "student"), role="student", teacher=teacher)
    train = [r for r in result.history if r["split"] == "validation"]
    assert len(train) == 2 and np.isfinite(result.test["accuracy"])
    records = [json.loads(line) for line in open(tmp_path / "student" / "metrics.jsonl")]
    steps = [r for r in records if r["split"] == "train"]
    assert len(steps) == 2 * 3  # 96 rows / batch 32, two epochs
    assert all(np.isfinite(r["kd"]) and np.isfinite(r["ce"]) for r in steps)


@pytest.mark.parametrize(
    "extra, teacher, message",
    [
        ({}, False, "cannot use; distil from a teacher"),
        (
            {"distill.losses": {"dkd": {"weight": 1.0}}},
            True,
            "distill.losses.dkd reads the labels",
        ),
        ({"data.name": "mr/len32"}, True, "holds sequences of 64 tokens"),
        ({"data.name": "digits", "student.model": {"name": "mlp"}}, False, "holds images"),
    ],
)
def test_unlabelled_misuse_is_one_clear_error_before_anything_is_written(
    data_dir, tmp_path, teacher_dir, extra, teacher, message
):
    from distill_jax.train.loop import fit, load_teacher

    overrides = tiny(data_dir, **{"data.unlabelled": ["vader_snippets"], **extra})
    cfg = load_config(os.path.join(EXPERIMENT, "kd.py"), overrides)
    workdir = tmp_path / "student"
    with pytest.raises(ConfigError, match=message):
        fit(
            cfg,
            str(workdir),
            role="student",
            teacher=load_teacher(teacher_dir) if teacher else None,
        )
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("student.train.token_augment.mask=0.1", "token_augment masks and replaces words"),
        ("data.length_bucket=16", "length_bucket cuts batches of token ids"),
    ],
)
def test_token_options_on_images_are_refused(data_dir, tmp_path, override, message):
    from distill_jax.train.loop import fit

    cfg = load_config(None, [f"data.data_dir={data_dir!r}", "data.name='digits'", override])
    with pytest.raises(ConfigError, match=message):
        fit(cfg, str(tmp_path / "s"), role="student")
    assert not (tmp_path / "s").exists()


def test_settings_are_the_documented_ones():
    common = import_file(os.path.join(EXPERIMENT, "common.py"))
    for setting in common.SETTINGS:
        cfg = load_config(os.path.join(EXPERIMENT, f"{setting}.py"))
        aug = cfg.student.train.token_augment
        assert (aug.mask > 0) == ("aug" in setting)
        assert bool(cfg.data.unlabelled) == setting.endswith("unlabelled")
        assert cfg.data.name == "mr"


def _driver_overrides(data_dir, replace: bool, **more) -> list[str]:
    # Word replacement builds a 30,522-word neighbour table (about 12 s, once per data
    # dir); the default test leaves it to tests/test_text_augment.py and the slow test.
    extra = {"student.train.epochs": 2, **more}
    if not replace:
        extra["student.train.token_augment.replace"] = 0.0
    return [o for o in tiny(data_dir, **extra) if not o.startswith("student.model")]


TINY_STUDENTS = {
    "textcnn": {"name": "textcnn", "embedding_dim": 8, "num_filters": 4},
    "bilstm": {"name": "bilstm", "embedding_dim": 8, "hidden_size": 4, "dense": 8},
    "bert": {**BERT, "hidden_size": 8},
}


GRID = {"alpha": [0.0, 0.5], "temperature": [1.0, 2.0]}


def _run_driver(data_dir, workdir, monkeypatch, students, settings, seeds, replace=False, **more):
    run = import_file(os.path.join(EXPERIMENT, "run.py"))
    monkeypatch.setattr(run.common, "STUDENTS", TINY_STUDENTS)
    # A 2 x 2 grid, so that the choice on validation has something to choose (TinyBERT's
    # second stage keeps one cell: one student per first-stage seed).
    grid = {s: GRID for s in TINY_STUDENTS}
    monkeypatch.setattr(run.common, "GRID", {**grid, "bert": run.common.GRID["bert"]})
    return run, run.run(
        "mr",
        str(workdir),
        students=students,
        settings=settings,
        seeds=seeds,
        overrides=_driver_overrides(data_dir, replace, **more),
        say=lambda *a: None,
    )


def test_text_cls_driver_tiny(data_dir, tmp_path, monkeypatch):
    """The experiment's driver on tiny models: teacher, a transfer-set cache, the student
    alone and distilled with alpha x T chosen on validation, the table and the plot."""
    run, results = _run_driver(
        data_dir, tmp_path / "run", monkeypatch, ("textcnn",), ("alone", "kd_aug"), 2
    )
    kd = results["runs"]["textcnn"]["kd_aug"]
    assert len(kd["accuracy"]) == 2 and kd["alpha"] in (0.0, 0.5)
    grid = kd["grid_val_accuracy"]
    assert len(grid) == 4 and kd["val_accuracy"] == max(grid.values())
    assert results["runs"]["textcnn"]["alone"]["alpha"] is None
    cache = json.loads((tmp_path / "run" / "caches" / "kd_aug" / "cache.json").read_text())
    assert cache["views"] == run.common.VIEWS and cache["token_augment"]["mask"] == 0.1
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| TextCNN | KD + augmentation (4 views) |" in table and " sd)" in table
    assert (tmp_path / "run" / "results.png").stat().st_size > 1000
    # Resumable: a second call reuses the finished runs and the cache.
    _, again = _run_driver(
        data_dir, tmp_path / "run", monkeypatch, ("textcnn",), ("alone", "kd_aug"), 2
    )
    assert again["runs"]["textcnn"]["kd_aug"]["accuracy"] == kd["accuracy"]
    assert again["seconds"]["cache_kd_aug"] == results["seconds"]["cache_kd_aug"] > 0


def test_text_cls_driver_tinybert_two_stages_tiny(data_dir, tmp_path, monkeypatch):
    """The BERT student's rows, added to an earlier command's table: TinyBERT's first stage
    (hidden states and attention of a 6-layer teacher, online) and its second (KD from the
    transfer-set cache), each second-stage student starting from its seed's first-stage
    model."""
    from distill_jax.train.loop import load_teacher, read_metrics

    workdir = tmp_path / "run"
    six = {"teacher.model": {**BERT, "num_layers": 6}}
    _run_driver(data_dir, workdir, monkeypatch, ("textcnn",), ("alone",), 2, **six)
    _, results = _run_driver(
        data_dir, workdir, monkeypatch, ("bert",), ("alone", "tinybert_stage2"), 2, **six
    )
    assert set(results["runs"]) == {"textcnn", "bert"}  # the earlier rows are kept
    assert set(results["runs"]["bert"]) == {"alone", "tinybert_stage2"}
    stage1, stage2 = workdir / "bert" / "tinybert_stage1", workdir / "bert" / "tinybert_stage2"
    first = [r for r in read_metrics(str(stage1)) if r["split"] == "train"][0]
    assert "hidden_mse" in first and "attention_kl" in first and "kd" not in first
    spec = json.loads((stage2 / "config.json").read_text())
    starts = [load_teacher(str(stage1), member=i).identity["sha256"] for i in range(2)]
    assert [s["sha256"] for s in spec["compress"]["init_from"]] == starts
    assert spec["teacher_cache"]["views"] == 4
    table = (workdir / "results.md").read_text()
    assert "| BERT-2 (width 192) | TinyBERT, two stages" in table and "| TextCNN | alone" in table


@pytest.mark.slow
def test_text_cls_driver_every_setting_tiny(data_dir, tmp_path, monkeypatch):
    common = import_file(os.path.join(EXPERIMENT, "common.py"))
    _, results = _run_driver(
        data_dir, tmp_path / "run", monkeypatch, ("textcnn", "bilstm"), common.SETTINGS, 2, True
    )
    for student in ("textcnn", "bilstm"):
        assert set(results["runs"][student]) == set(common.SETTINGS)


def test_text_cls_driver_misuse_is_one_line_and_exit_2(tmp_path, capsys):
    run = import_file(os.path.join(EXPERIMENT, "run.py"))
    workdir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        run.main(["--workdir", workdir, "--students", "cnn"])
    assert e.value.code == 2 and "unknown student 'cnn'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run.main(["--workdir", workdir, "--settings", "kd_augg"])
    assert e.value.code == 2 and "unknown setting 'kd_augg'" in capsys.readouterr().err
    # A table of another dataset or seed count in the workdir is neither extended nor lost.
    os.makedirs(workdir)
    earlier = json.dumps({"dataset": "mr", "seeds": 3, "runs": {}, "seconds": {}})
    (tmp_path / "run" / "results.json").write_text(earlier)
    assert run.main(["--workdir", workdir, "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds mr with 3 seeds, not mr with 2" in err and len(err.splitlines()) == 1
    assert (tmp_path / "run" / "results.json").read_text() == earlier
    assert os.listdir(workdir) == ["results.json"]


def test_text_cls_rows_without_unlabelled_text_are_left_out():
    run = import_file(os.path.join(EXPERIMENT, "run.py"))
    every = tuple(run.LABELS)
    assert run.dataset_settings("mr", every) == every
    assert run.dataset_settings("trec6", every) == tuple(
        s for s in every if s != "kd_aug_unlabelled"
    )
