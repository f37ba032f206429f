"""experiments/lm_kd/run.py, the language-model distillation driver, on tiny models.

A sharpened random Llama over SmolLM2's vocabulary (test_lm_cache.sharp_teacher) teaches
one-block random students on a tiny `text_lm:` corpus: every row of the driver (CE alone,
the top-k cached divergences, on-policy GKD, the random-init pair, the width-pruned
student), the table, the
sentences computed from it and the generations section; a second call trains nothing and
gives the same numbers.
"""

from __future__ import annotations

import json
import os

import pytest
from test_lm_cache import LEN, sharp_teacher
from test_news_lm import SMALLER, TINY, corpus

from distill_jax.config import import_file


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_kd_corpus")
    for i, doc in enumerate(corpus(200)):  # ~10 test documents: 3 prompts
        (root / f"{i:03d}.txt").write_text(doc + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_lm_kd_experiment_driver_tiny(text_dir, data_dir, tmp_path, monkeypatch):
    path = os.path.join(os.path.dirname(__file__), "..", "experiments/lm_kd/run.py")
    run = import_file(path)
    monkeypatch.setattr(run, "DATA", {"name": f"text_lm/len{LEN}:{text_dir}", "data_dir": data_dir})
    width = {**TINY, "num_layers": 1, "intermediate_size": 24}  # pruned from the teacher
    students = {"pruned": SMALLER, "random": {**SMALLER, "num_heads": 1}, "width": width}
    monkeypatch.setattr(run, "STUDENTS", students)
    monkeypatch.setattr(
        run, "WIDTH_PRUNING", {"layers": [1], "intermediate_size": 24, "sequences": 4}
    )
    monkeypatch.setattr(run, "VALIDATION_SEQUENCES", 2)
    monkeypatch.setattr(run, "TOP_K", 16)
    monkeypatch.setattr(run, "PROMPT_TOKENS", 8)
    monkeypatch.setattr(run, "NEW_TOKENS", 6)
    monkeypatch.setitem(
        run.ROWS, "gkd", {**run.ROWS["gkd"], "on_policy": {"lmbda": 0.5, "prompt_tokens": 8}}
    )
    seq_kd = run.ROWS["seq_kd"]
    on_policy = {**seq_kd["on_policy"], "prompt_tokens": 8}
    monkeypatch.setitem(run.ROWS, "seq_kd", {**seq_kd, "on_policy": on_policy})
    rows = list(run.ROWS)  # every row, skew_kl and seq_kd included
    sizes = {"tokens": 16 * LEN, "batch_size": 8, "test_sequences": 4, "seeds": 2}
    teacher = sharp_teacher(length=LEN)
    say = lambda *a: None  # noqa: E731
    workdir = tmp_path / "lm_kd"
    results = run.run(str(workdir), rows=rows, teacher=teacher, say=say, **sizes)

    assert list(results["rows"]) == rows
    assert results["train_tokens"] == 16 * LEN and results["steps"] == 2
    assert 0.2 < results["cache"]["mean_kept_mass"] < 1.0
    assert len(results["prompts"]) == 3
    teacher_ppl = results["teacher"]["metrics"]["perplexity"]
    assert teacher_ppl > 1 and len(results["teacher"]["generations"]) == 3
    for row, per_seed in results["rows"].items():
        assert len(per_seed) == (2 if row in run.SEEDED else 1)
        for record in per_seed:
            m = record["metrics"]
            assert m["perplexity"] > 1 and 0 <= m["agreement"] <= 1 and m["kl"] >= 0
            assert record["steps"] == 2 and record["train_tokens_per_s"] > 0
            assert record["gen_tokens_per_s"] > 0 and len(record["generations"]) == 3
    # Each row's config is what the table says it is.
    with open(workdir / "gkd" / "seed_0" / "config.json") as f:
        spec = json.load(f)
    assert spec["distill"]["on_policy"]["lmbda"] == 0.5 and spec["distill"]["alpha"] == 0.0
    assert "lm_jsd" in spec["distill"]["losses"] and "teacher_cache" not in spec
    with open(workdir / "seq_kd" / "seed_0" / "config.json") as f:
        spec = json.load(f)
    assert spec["distill"]["on_policy"]["seq_kd"] is True and spec["distill"]["alpha"] == 1.0
    assert spec["distill"]["on_policy"]["lmbda"] == 0.0 and spec["distill"]["losses"] == {}
    with open(workdir / "reverse_kl" / "seed_0" / "config.json") as f:
        spec = json.load(f)
    assert spec["teacher_cache"]["top_k"] == 16
    assert spec["distill"]["losses"]["lm_reverse_kl"]["topk_rest"] is True
    with open(workdir / "kl" / "seed_1" / "config.json") as f:
        assert json.load(f)["seed"] == 1
    with open(workdir / "ce" / "seed_0" / "config.json") as f:
        assert json.load(f)["distill"] is None
    # The width row starts from the teacher's block 1 with its 24 most important neurons.
    with open(workdir / "width_kl" / "seed_0" / "config.json") as f:
        model = json.load(f)["model"]
    assert model["init_from"] == str(workdir / "pruned_width")
    with open(workdir / "pruned_width" / "config.json") as f:
        assert json.load(f)["intermediate_size"] == 24

    md = (workdir / "results.md").read_text()
    table, generations = md.split("## Greedy continuations")
    assert "| teacher: " in table and generations.count("| teacher | ") == 3
    for row in rows:  # a line of the table each, and its continuation of each prompt
        name = run.STUDENT_NAMES[run.ROWS[row]["student"]]
        label = run.ROWS[row]["label"].replace("top-k", "top-16")
        assert table.count(f"| {name} | {label} | ") == 1
        assert generations.count(f"| {name}, {label} | ") == 3
    assert "Lowest held-out perplexity:" in table and "trained alone it" in table
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(results["rows"]))

    # Resumable: the second call trains nothing (no fit) and reports the same numbers.
    def no_fit(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(run, "fit", no_fit)
    again = run.run(str(workdir), rows=rows, teacher=teacher, say=say, **sizes)
    assert again["rows"] == results["rows"] and again["teacher"] == results["teacher"]
    assert (workdir / "results.md").read_text() == md
