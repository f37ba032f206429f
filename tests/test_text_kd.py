"""The text distillation experiment (experiments/text_kd) end to end with tiny BERTs.

The default run trains a tiny teacher and distils a tiny student from its logits, hidden
states and attention through the CLI, with the experiment's own config files; the slow
test runs the experiment's driver (`run.py`: every setting, the table, embedding
distillation) on the same tiny models.
"""

import importlib.util
import json
import os

import pytest

from distill_jax.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, "..", "experiments", "text_kd")
TEACHER = {
    "name": "bert",
    "hidden_size": 16,
    "num_layers": 6,
    "num_heads": 4,
    "intermediate_size": 32,
    "max_position": 32,
    "head_input": "mean",
}
STUDENT = {
    "name": "bert",
    "hidden_size": 8,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 16,
    "max_position": 32,
    "head_input": "mean",
}


def tiny(data_dir, **extra):
    items = {
        "data.data_dir": data_dir,
        "data.train_split": "train[:64]",
        "data.validation_split": "validation[:32]",
        "data.test_split": "test[:32]",
        "data.eval_batch_size": 32,
        "teacher.model": TEACHER,
        "student.model": STUDENT,
        "teacher.train.epochs": 1,
        "student.train.epochs": 1,
        "teacher.train.warmup_epochs": 0.0,
        "student.train.warmup_epochs": 0.0,
        "eval.latency_batch_size": 4,
        "log.every_steps": 1,
    }
    items.update(extra)
    return [f"{k}={v!r}" for k, v in items.items()]


def test_text_kd_cli_tiny(data_dir, tmp_path):
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    config = os.path.join(EXPERIMENT, "distill_hidden_attention.py")
    args = [f"--config.{o}" for o in tiny(data_dir)]
    assert (
        main(
            [
                "train",
                "--config",
                os.path.join(EXPERIMENT, "teacher.py"),
                "--workdir",
                teacher,
                *args,
            ]
        )
        == 0
    )
    assert (
        main(["distill", "--config", config, "--workdir", student, "--teacher", teacher, *args])
        == 0
    )
    result = json.loads(open(os.path.join(student, "eval.json")).read())
    assert 0.0 <= result["accuracy"] <= 1.0 and "agreement" in result
    records = [json.loads(line) for line in open(os.path.join(student, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    for term in ("ce", "kd", "hidden_mse", "attention_kl"):
        assert term in train[0], term


@pytest.mark.slow
def test_text_kd_driver_tiny(data_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("text_kd_run", os.path.join(EXPERIMENT, "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    settings = run.load_settings(tiny(data_dir))
    from distill_jax.config import load_config

    settings["embedding"] = load_config(
        os.path.join(EXPERIMENT, "embedding.py"),
        tiny(data_dir, **{"student.model": {**STUDENT, "embedding_dim": 16}}),
    )
    results = run.run(settings, str(tmp_path / "run"), seeds=2, say=lambda *a: None)
    assert len(results["runs"]["distill_logits"]) == 2
    table = (tmp_path / "run" / "results.md").read_text()
    assert "distilled: logits + hidden + attention" in table and " ± " in table
    emb = results["embedding"]
    assert -1.0 <= emb["cosine"] <= 1.0 and 0.0 <= emb["recall@10"] <= 1.0
