"""The offline top-k teacher cache for causal language models (`train/teacher_cache.py`).

A tiny random Llama over SmolLM2's 49,152-token vocabulary, sharpened (its final norm
scaled up, so its top 16 hold a real share of the mass), caches its top-k next-token
log-probabilities for a tiny `text_lm:` corpus; the cache is checked against the teacher
computed directly, a student distilled from a K = V cache against the online teacher, the
rest-bucket variant through `fit` against `lm_topk_loss`, and the refusals.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_news_lm import SMALLER, TINY, corpus

from distill_jax.cli import main
from distill_jax.config import load_config
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.losses.lm import lm_topk_loss
from distill_jax.models import create_model
from distill_jax.tasks import CausalLM
from distill_jax.teachers import Teacher
from distill_jax.train import loop, teacher_cache
from distill_jax.train.teacher_cache import (
    META_FILE,
    RECORDS_FILE,
    ensure_cache,
    fingerprint,
    load_cache,
    write_cache,
)

VOCAB, LEN, K = 49152, 32, 16


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_cache_corpus")
    for i, doc in enumerate(corpus()):
        (root / f"{i:03d}.txt").write_text(doc + "\n", encoding="utf-8")
    return root


def config_for(text_dir, data_dir, **extra):
    items = {
        "data.name": f"text_lm/len{LEN}:{text_dir}",
        "data.data_dir": data_dir,
        "data.train_split": "train[:8]",
        "data.eval_batch_size": 8,
        "teacher.model": TINY,
        "student.model": SMALLER,
        "student.train.epochs": 1,
        "student.train.batch_size": 8,  # one step over all 8 sequences
        "student.train.learning_rate": 3e-3,
        "distill.alpha": 0.5,
        "distill.temperature": 1.0,
        "distill.losses": {"lm_kl": {"weight": 1.0}},
        "eval.latency_batch_size": 8,
        "log.progress": False,
        "log.every_steps": 1,
    }
    items.update(extra)
    return load_config(None, [f"{k}={v!r}" for k, v in items.items()])


def sharp_teacher(seed: int = 0, scale: float = 30.0, length: int = LEN) -> Teacher:
    """A random-init TINY Llama whose final norm is scaled by `scale` (its top 64 hold
    about 88 % of the mass instead of 0.4 %) and which reads sequences of `length`."""
    model = create_model(TINY, VOCAB)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, LEN), jnp.int32), train=False)
    params = dict(variables["params"])
    params["final_norm"] = {"scale": params["final_norm"]["scale"] * scale}
    variables = {"params": params}
    identity = {
        "workdir": None,
        "step": 0,
        "model": TINY,
        "num_classes": VOCAB,
        "image_shape": [length],
        "dataset": None,
        "sha256": fingerprint(variables),
    }
    return Teacher(model=model, variables=variables, identity=identity)


@pytest.fixture(scope="module")
def teacher():
    return sharp_teacher()


@pytest.fixture(scope="module")
def topk_cache(text_dir, data_dir, teacher, tmp_path_factory):
    """The teacher's top-16 over the 8 training sequences."""
    config = config_for(text_dir, data_dir)
    split = loop.load_data(config).train
    directory = str(tmp_path_factory.mktemp("caches") / "top16")
    write_cache(teacher, split, directory, split_name="train[:8]", top_k=K, progress=False)
    return directory, split


def teacher_log_probs(teacher, ids) -> np.ndarray:
    logits = teacher.model.apply(teacher.variables, jnp.asarray(ids), train=False)[0]
    return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))


def train_rows(workdir) -> list[dict]:
    return [r for r in loop.read_metrics(str(workdir)) if r["split"] == "train"]


# ----------------------------------------------------------------------------- writing


def test_cached_topk_are_the_teachers_log_probs(topk_cache, teacher):
    directory, split = topk_cache
    cache = load_cache(directory)
    n = len(split)
    assert cache.values.shape == cache.indices.shape == (n, 1, LEN, K)
    assert cache.values.dtype == np.float16 and cache.indices.dtype == np.int32
    log_p = teacher_log_probs(teacher, split.images)  # (N, T, V)
    want_ids = np.argsort(-log_p, axis=-1, kind="stable")[..., :K]
    want = np.take_along_axis(log_p, want_ids, -1)
    np.testing.assert_array_equal(cache.indices[:, 0], want_ids)
    # float16 storage: half a unit in the last place at |v| < 16 is < 0.004.
    np.testing.assert_allclose(cache.values[:, 0].astype(np.float32), want, rtol=1e-3, atol=1e-3)
    meta = cache.meta
    assert meta["causal_lm"] and meta["values_kind"] == "log_probs" and meta["views"] == 1
    assert meta["top_k"] == K and meta["sequence_length"] == LEN
    assert meta["dataset"]["num_classes"] == VOCAB and meta["dataset"]["num_examples"] == n
    # The mean kept mass over the positions the loss counts (a next token to predict).
    keep = np.asarray(CausalLM().term_mask(jnp.asarray(split.labels), None))
    mass = np.exp(want).sum(-1)
    assert meta["kept_mass_tokens"] == keep.sum()
    np.testing.assert_allclose(meta["mean_kept_mass"], mass[keep].mean(), rtol=1e-5)
    assert 0.2 < meta["mean_kept_mass"] < 1.0
    assert meta["teacher"]["sha256"] == teacher.identity["sha256"]


def test_lm_cache_requests_that_cannot_work_are_one_line_errors(topk_cache, teacher, tmp_path):
    _, split = topk_cache
    cases = [
        ({"top_k": 0}, r"--top_k 0 \(full logits\) is refused .* e.g. --top_k 64"),
        ({"top_k": VOCAB + 1}, r"--top_k must be in \[1, 49152\]"),
        ({"top_k": K, "views": 2}, "one view per sequence .* use --views 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            write_cache(teacher, split, str(tmp_path / "c"), progress=False, **kwargs)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "c").exists()


def test_an_interrupted_write_leaves_no_usable_cache(topk_cache, teacher, tmp_path, monkeypatch):
    _, split = topk_cache
    directory = tmp_path / "cache"
    calls = []

    def interrupt(self, n):
        calls.append(n)
        raise KeyboardInterrupt  # after the first batch's records are written

    monkeypatch.setattr(teacher_cache._TokenProgress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_cache(teacher, split, str(directory), top_k=K, progress=False)
    assert calls
    assert not (directory / META_FILE).exists() and not (directory / RECORDS_FILE).exists()
    assert not [p for p in os.listdir(directory) if "tmp" in p]  # the partial file is gone
    with pytest.raises(CheckpointError, match="no finished teacher cache"):
        load_cache(str(directory))
    monkeypatch.undo()
    write_cache(teacher, split, str(directory), top_k=K, progress=False)  # then it completes
    assert load_cache(str(directory)).values.shape == (len(split), 1, LEN, K)


# ----------------------------------------------------------------------------- reading


def test_a_full_vocabulary_cache_distils_as_the_online_teacher(text_dir, data_dir, tmp_path):
    """K = V (renormalised top-k = the full softmax): the cached run's losses are the
    online run's, up to the float16 storage, over 2 steps (epochs) of 8 sequences of 8
    tokens (short, so that the K = V cache stays small: 8 x 8 x 49,152 x 6 bytes)."""
    short = {"data.name": f"text_lm/len8:{text_dir}", "student.train.epochs": 2}
    config = config_for(text_dir, data_dir, **short)
    teacher = sharp_teacher(length=8)
    split = loop.load_data(config).train
    cache_dir = str(tmp_path / "full")
    write_cache(teacher, split, cache_dir, split_name="train[:8]", top_k=VOCAB, progress=False)
    loop.fit(config, str(tmp_path / "online"), role="student", teacher=teacher)
    cached = config_for(text_dir, data_dir, **short, **{"distill.cache": cache_dir})
    loop.fit(cached, str(tmp_path / "cached"), role="student")
    online, offline = train_rows(tmp_path / "online"), train_rows(tmp_path / "cached")
    assert len(online) == len(offline) == 2
    for a, b in zip(online, offline, strict=True):
        assert a["lm_kl"] > 0.1
        np.testing.assert_allclose(b["lm_kl"], a["lm_kl"], rtol=2e-3)
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-3)
        np.testing.assert_allclose(b["agreement"], a["agreement"], atol=1e-6)


def test_the_rest_bucket_variant_through_fit(topk_cache, text_dir, data_dir, tmp_path):
    """`topk_rest=True`: the logged term of the first step (all 8 sequences, the initial
    student) is `lm_topk_loss(..., rest=True)` on the cache's rows."""
    directory, split = topk_cache
    losses = {
        "lm_reverse_kl": {"weight": 1.0, "topk_rest": True},
        "lm_kl": {"weight": 1.0},
    }
    config = config_for(
        text_dir, data_dir, **{"distill.cache": directory, "distill.losses": losses}
    )
    run = loop.setup(config, str(tmp_path / "initial"), role="student")
    params = run.state.params
    loop.fit(config, str(tmp_path / "student"), role="student")
    (first,) = train_rows(tmp_path / "student")
    cache = load_cache(directory)
    logits = run.model.apply({"params": params}, jnp.asarray(split.images), train=False)[0]
    keep = CausalLM().term_mask(jnp.asarray(split.labels), None)
    values, ids = jnp.asarray(cache.values[:, 0]), jnp.asarray(cache.indices[:, 0])
    want_rkl = lm_topk_loss(logits, values, ids, "reverse_kl", rest=True, mask_B=keep)
    want_kl = lm_topk_loss(logits, values, ids, mask_B=keep)
    np.testing.assert_allclose(first["lm_reverse_kl"], float(want_rkl), rtol=1e-4)
    np.testing.assert_allclose(first["lm_kl"], float(want_kl), rtol=1e-4)


def test_a_cache_that_does_not_fit_the_run_is_refused(
    topk_cache, text_dir, data_dir, teacher, tmp_path
):
    directory, _ = topk_cache
    cached = {"distill.cache": directory}

    def refused(message, teacher=None, **extra):
        config = config_for(text_dir, data_dir, **{**cached, **extra})
        with pytest.raises(ConfigError, match=message) as e:
            loop.fit(config, str(tmp_path / "s"), role="student", teacher=teacher)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "s").exists()

    # Another teacher: by its weights, or (no teacher given) by the config's init_from.
    refused("made with another teacher", teacher=sharp_teacher(seed=1))
    init_from = {"name": "llama", "init_from": "smollm2-135m-q4"}
    refused("but teacher.model.init_from is 'smollm2-135m-q4'", **{"teacher.model": init_from})
    # Other data: fewer sequences, another sequence length.
    refused(
        r"split .train\[:16\]. \(16 examples\): the split differ",
        **{"data.train_split": "train[:16]"},
    )
    refused(
        "'text_lm/len32:.*'text_lm/len16:.* the name differ",
        **{"data.name": f"text_lm/len16:{text_dir}"},
    )
    # Larger than distill.cache_max_gb (it is 8 x 32 x 16 x 6 bytes = 24.6 kB).
    refused(
        "takes 0.00 GB once loaded .* more than distill.cache_max_gb",
        **{"distill.cache_max_gb": 1e-6},
    )
    # A renormalised top-k feeds the forward KL only.
    refused("needs topk_rest=True", **{"distill.losses": {"lm_jsd": {"weight": 1.0}}})
    # The same cache is fine with its own teacher, and reused only for the same request.
    config = config_for(text_dir, data_dir, **{"data.train_split": "train[:8]"})
    assert ensure_cache(config, teacher, directory, top_k=K) == 0.0
    with pytest.raises(ConfigError, match="holds top_k = 16, not the 8 asked for"):
        ensure_cache(config, teacher, directory, top_k=8)
    with pytest.raises(ConfigError, match="made with another teacher"):
        ensure_cache(config, sharp_teacher(seed=1), directory, top_k=K)


def test_cli_cache_teacher_refuses_full_logits_for_a_language_model(
    text_dir, data_dir, tmp_path, capsys
):
    args = [
        f"--config.{k}={v!r}"
        for k, v in {
            "data.name": f"text_lm/len{LEN}:{text_dir}",
            "data.data_dir": data_dir,
            "teacher.model": {"name": "llama", "init_from": "smollm2-135m-q4"},
        }.items()
    ]
    workdir = str(tmp_path / "cache")
    assert main(["cache-teacher", "--workdir", workdir, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "--top_k 0 (full logits) is refused" in err and "--top_k 64" in err
    assert len(err.splitlines()) == 1
    assert not os.path.exists(os.path.join(workdir, META_FILE))
