"""What a served teacher exposes (distill_jax/exposure.py, teachers.ExposedTeacher)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.errors import ConfigError
from distill_jax.exposure import expose_logits, expose_probs, parse


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(0, 3, (64, 10)).astype(np.float32)


def test_parse_accepts_levels_and_names_the_setting_when_wrong():
    assert parse("full") == ("full", 0.0) and parse("top:5") == ("top", 5.0)
    assert parse("round:0") == ("round", 0.0) and parse("noise:1.5") == ("noise", 1.5)
    for bad in (
        "top",
        "top:0",
        "top:2.5",
        "round:-1",
        "noise:0",
        "noise:nan",
        "label:1",
        "temperature:-2",
        "probs",
        "",
        5,
    ):
        with pytest.raises(ConfigError, match="distill.exposure") as e:
            parse(bad)
        assert "\n" not in str(e.value)


def test_full_label_and_temperature_against_numpy(logits):
    p = _softmax(logits.astype(np.float64))
    np.testing.assert_allclose(expose_probs(logits, "full"), p, atol=1e-6)
    label = np.eye(10)[p.argmax(-1)]
    np.testing.assert_array_equal(expose_probs(logits, "label"), label)
    np.testing.assert_allclose(
        expose_probs(logits, "temperature:4"), _softmax(logits / 4.0), atol=1e-6
    )
    # "full" hands the logits over unchanged: every loss sees exactly the teacher.
    assert expose_logits(logits, "full") is logits


@pytest.mark.parametrize("k", [1, 3, 9, 10])
def test_top_k_keeps_the_k_largest_and_spreads_the_rest_evenly(logits, k):
    p = _softmax(logits.astype(np.float64))
    want = np.empty_like(p)
    for i, row in enumerate(p):
        top = np.argsort(-row)[:k]
        rest = (1 - row[top].sum()) / (10 - k) if k < 10 else 0.0
        want[i] = rest
        want[i, top] = row[top]
    got = np.asarray(expose_probs(logits, f"top:{k}"))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert (got.argmax(-1) == p.argmax(-1)).all()


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_round_against_numpy(logits, decimals):
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
    r = np.round(p * 10.0**decimals) / 10.0**decimals  # half to even, like jnp.round
    zero = r.sum(-1) == 0
    r[zero] = np.eye(10)[p[zero].argmax(-1)]
    want = r / r.sum(-1, keepdims=True)
    got = np.asarray(expose_probs(logits, f"round:{decimals}"))
    np.testing.assert_allclose(got, want, atol=1e-6)
    if decimals == 0:  # with one decimal fewer, fewer distinct values survive
        assert len(np.unique(got)) < len(np.unique(np.asarray(expose_probs(logits, "round:2"))))


def test_noise_keeps_the_label_and_is_a_fixed_function_of_the_query(logits):
    index = np.arange(64)
    p = np.asarray(expose_probs(logits, "full"))
    noisy = np.asarray(expose_probs(logits, "noise:2", index))
    np.testing.assert_allclose(noisy.sum(-1), 1.0, atol=1e-5)
    assert (noisy.argmax(-1) == p.argmax(-1)).all()
    # The ranking of the other classes changes (the dark knowledge is blurred) ...
    order = lambda q: np.argsort(-q, -1)[:, 1:]  # noqa: E731
    assert (order(noisy) != order(p)).any(1).mean() > 0.5
    # ... the same query always gets the same answer, another query another draw.
    np.testing.assert_array_equal(noisy, expose_probs(logits, "noise:2", index))
    shifted = np.asarray(expose_probs(logits, "noise:2", index + 1))
    assert not np.allclose(shifted, noisy)
    # Per token (B, T, C) with one index per example works too.
    per_token = expose_probs(logits.reshape(8, 8, 10), "noise:2", np.arange(8))
    assert per_token.shape == (8, 8, 10)


@pytest.mark.parametrize("level", ["top:3", "label", "round:1", "noise:1", "temperature:3"])
def test_exposed_logits_give_back_the_exposed_distribution(logits, level):
    index = np.arange(64)
    np.testing.assert_allclose(
        jax.nn.softmax(expose_logits(logits, level, index), -1),
        expose_probs(logits, level, index),
        atol=1e-6,
    )


# ------------------------------------------------------------------------- in training


@pytest.fixture(scope="module")
def teacher_and_cache(data_dir, tmp_path_factory):
    from distill_jax.config import load_config
    from distill_jax.train.loop import fit, load_teacher
    from distill_jax.train.teacher_cache import ensure_cache

    root = tmp_path_factory.mktemp("exposure")
    config = load_config(None, tiny_overrides(data_dir, **{"teacher.train.epochs": 10}))
    fit(config, str(root / "teacher"), role="teacher")
    teacher = load_teacher(str(root / "teacher"))
    ensure_cache(config, teacher, str(root / "cache"))
    ensure_cache(config, teacher, str(root / "cache_top3"), top_k=3)
    return root, teacher


def test_a_student_distils_from_what_the_exposure_shows(teacher_and_cache, tiny_config):
    from distill_jax.teachers import ExposedTeacher
    from distill_jax.train.loop import fit, setup

    root, teacher = teacher_and_cache
    config = tiny_config(
        **{
            "distill.cache": str(root / "cache"),
            "distill.exposure": "label",
            "distill.alpha": 0.0,
            "distill.temperature": 1.0,
            "student.train.epochs": 10,
        }
    )
    run = setup(config, str(root / "label"), role="student", teacher=teacher)
    assert isinstance(run.teacher, ExposedTeacher)
    # The source's outputs: the cached logits, turned into the one-hot label.
    frozen = jax.tree.map(jnp.asarray, run.teacher.arrays())
    index = jnp.arange(8)
    _, out = run.teacher(frozen, jnp.zeros((8, 8, 8, 1)), index, jnp.asarray(0))
    cached = frozen["values"][index, 0]
    np.testing.assert_allclose(
        jax.nn.softmax(out["logits"], -1), jax.nn.one_hot(cached.argmax(-1), 10), atol=1e-12
    )
    result = fit(config, str(root / "label_fit"), role="student", teacher=teacher)
    # It learns from the teacher's labels alone (chance: 10 %; measured 34 % accuracy,
    # 51 % agreement with a teacher of 55 %).
    assert result.test["accuracy"] > 0.25 and result.test["agreement"] > 0.4
    with open(root / "label_fit" / "config.json") as f:
        spec = json.load(f)
    assert spec["distill"]["exposure"] == "label" and spec["teacher_cache"]["top_k"] == 0
    # The online teacher can be exposed the same way.
    online = tiny_config(**{"distill.exposure": "top:2"})
    assert isinstance(
        setup(online, str(root / "online"), role="student", teacher=teacher).teacher, ExposedTeacher
    )


def test_exposure_refused_where_it_cannot_apply(teacher_and_cache, tiny_config):
    from distill_jax.train.loop import setup

    root, teacher = teacher_and_cache
    cases = [
        ({"distill.exposure": "top:2"}, None, "trains alone"),
        (
            {"distill.exposure": "top:2", "distill.cache": str(root / "cache_top3")},
            teacher,
            "keeps the top 3 only",
        ),
        (
            {
                "distill.exposure": "round:2",
                "student.train.robust.method": "ard",
            },
            teacher,
            "hides them",
        ),
    ]
    for i, (extra, t, message) in enumerate(cases):
        workdir = root / f"refused_{i}"
        with pytest.raises(ConfigError, match=message):
            setup(tiny_config(**extra), str(workdir), role="student", teacher=t)
        assert not os.path.exists(workdir)  # refused before anything is written


@pytest.mark.slow
def test_exposure_experiment_driver_tiny(data_dir, tmp_path, monkeypatch):
    """experiments/exposure/run.py on tiny MLPs and digits: every query set, three
    exposure levels and the true-label reference, the table and the plot; resumable."""
    from distill_jax.config import import_file

    path = os.path.join(os.path.dirname(__file__), "..", "experiments/exposure/run.py")
    run = import_file(path)
    monkeypatch.setattr(run, "DATA", {"name": "digits", "data_dir": data_dir})
    monkeypatch.setattr(run, "TEACHER", {"name": "mlp", "hidden": [32]})
    monkeypatch.setattr(run, "STUDENT", {"name": "mlp", "hidden": [16]})
    monkeypatch.setattr(run, "TEACHER_EPOCHS", 3)
    monkeypatch.setattr(run, "STUDENT_STEPS", 12)
    monkeypatch.setattr(run, "SEEDS", 2)
    monkeypatch.setattr(run, "TRAIN", {**run.TRAIN, "batch_size": 48})
    monkeypatch.setattr(
        run,
        "QUERIES",
        {
            "96": {"split": "train[:96]", "views": 1, "translate": 0},
            "all x2": {"split": "train", "views": 2, "translate": 1},
        },
    )
    monkeypatch.setattr(run, "SPLIT_SIZES", {"train[:96]": 96, "train": 1197})
    exposures = ["labels", "label", "noise:2"]
    say = lambda *a: None  # noqa: E731
    results = run.run(str(tmp_path / "x"), exposures=exposures, say=say)
    assert list(results["rows"]) == exposures
    assert results["queries"] == {"96": 96, "all x2": 2 * 1197}
    for by_q in results["rows"].values():
        for cell in by_q.values():
            assert len(cell["accuracy"]) == 2 and all(0 <= a <= 1 for a in cell["agreement"])
    # Every query set trains the same number of steps (12: 6 epochs of 2 batches).
    assert results["rows"]["label"]["96"]["steps"] == 12
    with open(tmp_path / "x" / "label" / "all_x2" / "config.json") as f:
        spec = json.load(f)
    assert spec["distill"]["exposure"] == "label" and spec["distill"]["alpha"] == 0.0
    assert spec["teacher_cache"]["views"] == 2 and spec["data"]["train_split"] == "train"
    md = (tmp_path / "x" / "results.md").read_text()
    assert "| top-1 label only |" in md and "96 queries: accuracy" in md
    assert os.path.getsize(tmp_path / "x" / "exposure.png") > 0
    again = run.run(str(tmp_path / "x"), exposures=exposures, say=say)
    assert again["rows"] == results["rows"]
