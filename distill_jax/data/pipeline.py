"""Loading splits through TFDS data sources, and the Grain pipelines that batch them.

Every dataset, embedded (`mnist_5k`, `digits`, `mr`, ...) or from the TFDS catalogue
(`tfds:cifar10`), goes through one path: a TFDS builder prepared as array_record in a data
dir, read with `builder.as_data_source(split)` (no TensorFlow needed) into in-memory
uint8/int32 arrays. Unlabelled text (`UNLABELLED_DATASETS`, read by `load_unlabelled`) is
prepared and read the same way.

Training batches come from a random-access Grain `MapDataset` indexed by the global step:
`ds[step]` is the same batch however the run got there (fresh start, resume, another number
of prefetch workers), so the only data state a checkpoint needs is the step. Evaluation
batches are padded to a fixed shape and masked, so every example counts exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data.builders import Digits, Mnist5k
from distill_jax.data.lm import CAUSAL_LM, TEXT_LM_PREFIX, NewsLM, is_text_lm, text_lm_builder
from distill_jax.data.ner import CONLL_PREFIX, HealthTweets, Wnut16, conll_builder
from distill_jax.data.text import StdlibDocstrings
from distill_jax.data.text_cls import BbcNews, MovieReviews, NewsArticles, Trec6, VaderSnippets
from distill_jax.errors import ConfigError, DatasetError

EMBEDDED_DATASETS: dict[str, type] = {
    Mnist5k.name: Mnist5k,
    Digits.name: Digits,
    StdlibDocstrings.name: StdlibDocstrings,
    MovieReviews.name: MovieReviews,
    Trec6.name: Trec6,
    BbcNews.name: BbcNews,
    Wnut16.name: Wnut16,
    NewsLM.name: NewsLM,
}
"""Labelled datasets built from data in installed packages: name -> TFDS builder class. A
name may carry a builder config, `NAME/CONFIG` (e.g. `stdlib_docstrings/len128`).
`wnut16` is token classification (NER: a tag per token); `conll:DIR` reads your own
CoNLL-format NER files (`data/ner.py`). `news_lm` is a causal-LM corpus (packed
next-token sequences of the teacher's token ids); `text_lm:PATH` packs your own text the
same way (`data/lm.py`)."""

UNLABELLED_DATASETS: dict[str, type] = {
    VaderSnippets.name: VaderSnippets,
    NewsArticles.name: NewsArticles,
    HealthTweets.name: HealthTweets,
}
"""Unlabelled text built from data in installed packages (one split, `train`; read with
`load_unlabelled`): name -> TFDS builder class; `NAME/CONFIG` as above. Kept apart from
`EMBEDDED_DATASETS` because they hold no labels, so `get_info`/`load_split` (and a run's
`data.name`) cannot use them. `healthtweets` is also word-aligned for tagging
(`is_word_aligned`, `load_unlabelled_tags`): a tagging run's transfer set."""

_BUILDERS = {**EMBEDDED_DATASETS, **UNLABELLED_DATASETS}

TFDS_PREFIX = "tfds:"
_READ_CHUNK = 4096  # Examples decoded per `__getitems__` call when loading a split.


# ---------------------------------------------------------------------------------------
# Data dir and dataset lookup.
# ---------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | None) -> str:
    """Returns the TFDS data dir to use.

    Args:
      data_dir: an explicit directory; wins when given.

    Returns:
      `data_dir` (with `~` expanded) if given, else `$TFDS_DATA_DIR` if set, else
      `$XDG_CACHE_HOME/distill_jax/tensorflow_datasets` (`XDG_CACHE_HOME` defaults to
      `~/.cache`). The directory is not created here; preparing a dataset creates it.

    Raises:
      DatasetError: the path exists and is a file.
    """
    if data_dir:
        path = os.path.expanduser(os.fspath(data_dir))
    elif os.environ.get("TFDS_DATA_DIR"):
        path = os.path.expanduser(os.environ["TFDS_DATA_DIR"])
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        path = os.path.join(os.path.expanduser(cache), "distill_jax", "tensorflow_datasets")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DatasetError(f"the data dir {path} is a file, not a directory (--data_dir)")
    return path


def check_known_dataset(name: str, where: str) -> None:
    """Refuses a dataset name that is neither embedded nor in the TFDS catalogue.

    For names read from files someone else may have written (a workdir's config.json):
    loading an unregistered TFDS dataset reads its metadata, which names Python classes
    to import, so a crafted directory could make the tool import any installed module.

    Raises:
      DatasetError: naming `where` the name came from.
    """
    base = name.partition("/")[0]
    if base in _BUILDERS or name.startswith(CONLL_PREFIX) or is_text_lm(name):
        return  # conll: and text_lm: read text files only
    tfds_name = name[len(TFDS_PREFIX) :].partition("/")[0].partition(":")[0]
    if name.startswith(TFDS_PREFIX) and tfds_name in tfds.list_builders(
        with_community_datasets=False
    ):
        return
    raise DatasetError(
        f"{where} names dataset {name!r}, which is neither embedded nor in the TFDS "
        f"catalogue; only known datasets are loaded from a run's files"
    )


def is_prepared(name: str, data_dir: str) -> bool:
    """Whether dataset `name` (a known one, `check_known_dataset`) is already prepared in
    `data_dir`; reads metadata only, writes nothing."""
    if not os.path.isdir(data_dir):
        return False
    base, _, builder_config = name.partition("/")
    try:
        if name.startswith(CONLL_PREFIX):
            return _conll(name, data_dir).is_prepared()
        if is_text_lm(name):
            return text_lm_builder(name)(data_dir=data_dir).is_prepared()
        if base in _BUILDERS:
            kwargs = {"config": builder_config} if builder_config else {}
            return _BUILDERS[base](data_dir=data_dir, **kwargs).is_prepared()
        return tfds.builder(name[len(TFDS_PREFIX) :], data_dir=data_dir).is_prepared()
    except Exception:  # noqa: BLE001 (anything unreadable counts as not prepared)
        return False


def _known_names_hint() -> str:
    embedded = ", ".join(sorted(EMBEDDED_DATASETS))
    return (
        f"Embedded datasets: {embedded}; any TFDS catalogue dataset as "
        f"'{TFDS_PREFIX}NAME', '{TFDS_PREFIX}NAME/CONFIG' or '{TFDS_PREFIX}NAME:VERSION' "
        f"(e.g. '{TFDS_PREFIX}cifar10'); your own CoNLL-format NER files as "
        f"'{CONLL_PREFIX}DIR'; your own text as a language-model corpus as "
        f"'{TEXT_LM_PREFIX}:PATH' (a .txt file or a directory of them)."
    )


def _conll(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of `conll:DIR` (not yet prepared)."""
    return conll_builder(name[len(CONLL_PREFIX) :])(data_dir=data_dir)


def _not_prepared_message(tfds_name: str, data_dir: str, reason: str) -> str:
    folder = tfds_name.split(":")[0].split("/")[0]
    return (
        f"TFDS dataset '{tfds_name}' is not prepared in {data_dir} ({reason}). On a machine "
        f"with network access run `tfds build {tfds_name} --data_dir DIR --file_format "
        f"array_record` (or copy a prepared DIR/{folder} folder from elsewhere), then pass "
        f"DIR as data_dir (--data_dir) or set TFDS_DATA_DIR=DIR."
    )


# TFDS retries a failed request 10 times with exponential backoff (0.2 s doubling: about
# 3.5 minutes) before it gives up, which is how long an offline machine waited for the
# message saying how to prepare the dataset. A few retries still ride out a flaky server.
DOWNLOAD_RETRIES = 3


@contextlib.contextmanager
def _few_download_retries():
    """TFDS's downloader retries at most `DOWNLOAD_RETRIES` times inside the block."""
    from tensorflow_datasets.core.download import downloader

    saved = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = min(saved, DOWNLOAD_RETRIES)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def _prepared_builder(name: str, data_dir: str | None, download: bool) -> tfds.core.DatasetBuilder:
    """Returns a prepared TFDS builder for `name`, preparing it if needed and allowed."""
    data_dir = resolve_data_dir(data_dir)
    base, _, builder_config = name.partition("/")
    if name.startswith(CONLL_PREFIX) or is_text_lm(name):
        builder = _conll(name, data_dir) if name.startswith(CONLL_PREFIX) else None
        if builder is None:
            builder = text_lm_builder(name)(data_dir=data_dir)
        builder.download_and_prepare(file_format="array_record")
        return builder
    if base in _BUILDERS:
        # Embedded data ships with a package: preparing needs no network, so it is done
        # whatever `download` says. Preparing an already prepared builder does nothing.
        kwargs = {"config": builder_config} if builder_config else {}
        try:
            builder = _BUILDERS[base](data_dir=data_dir, **kwargs)
        except ValueError as e:  # unknown builder config
            raise DatasetError(f"Unknown dataset '{name}': {e}") from None
        try:
            builder.download_and_prepare(file_format="array_record")
        except OSError as e:
            raise DatasetError(
                f"cannot prepare dataset '{name}' in {data_dir}: {e.strerror or e}"
            ) from None
        return builder
    if not name.startswith(TFDS_PREFIX) or not name[len(TFDS_PREFIX) :]:
        raise DatasetError(f"Unknown dataset '{name}'. {_known_names_hint()}")

    tfds_name = name[len(TFDS_PREFIX) :]
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
        raise DatasetError(
            f"Unknown dataset '{name}': TFDS has no dataset '{tfds_name}'. {_known_names_hint()}"
        ) from e
    except Exception as e:  # Bad config or version: TFDS raises ValueError/AssertionError.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"Cannot load dataset '{name}': {first_line}") from e
    if builder.is_prepared():
        return builder
    if not download:
        raise DatasetError(_not_prepared_message(tfds_name, data_dir, "download=False"))
    try:
        with _few_download_retries():
            builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # Typically no network; keep the cause chained for debugging.
        reason = f"download failed: {type(e).__name__}: {str(e).strip()[:200]}"
        raise DatasetError(_not_prepared_message(tfds_name, data_dir, reason)) from e
    return builder


# ---------------------------------------------------------------------------------------
# Dataset info and whole-split loading.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a dataset.

    Attributes:
      name: the name it was loaded under (`"mnist_5k"`, `"tfds:cifar10"`).
      num_classes: number of label classes.
      image_shape: shape of one model input: (H, W, C) of an image, (L,) of a token
        sequence.
      splits: split name -> number of examples.
      input_kind: `"image"` (uint8 pixels, scaled to [0, 1] by the train step) or
        `"tokens"` (int32 token ids, 0 = padding, fed to the model unchanged).
      class_names: the label names, by class index (the ClassLabel's; `"0"`, `"1"`, ...
        where it has none).
      label_shape: shape of one example's label: `()` for a class per example, `(L,)`
        for a tag per token (NER; -1 marks positions without a tag) or a causal-LM
        sequence's targets.
      task: `"causal_lm"` for language-model data (`data/lm.py`: `image` token ids,
        `label` the targets, -1 where none; `num_classes` is the vocabulary size); empty
        for classification and token classification (told apart by `label_shape`).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    splits: dict[str, int]
    input_kind: str = "image"
    class_names: tuple[str, ...] = ()
    label_shape: tuple[int, ...] = ()
    task: str = ""

    @property
    def per_token(self) -> bool:
        """Whether the labels are one tag per token (token classification)."""
        return bool(self.label_shape) and not self.causal_lm

    @property
    def causal_lm(self) -> bool:
        """Whether this is language-model data (next-token targets over `num_classes`)."""
        return self.task == CAUSAL_LM

    @property
    def input_dtype(self) -> type:
        """NumPy dtype of the stored inputs."""
        return np.int32 if self.input_kind == "tokens" else np.uint8


@dataclasses.dataclass
class ArraySplit:
    """One split held in memory.

    Attributes:
      images: the model inputs: uint8 (N, H, W, C) images, or int32 (N, L) token ids.
      labels: int32 (N,), or (N, L) tags for token classification (-1: no tag).
      info: the dataset's `DatasetInfo`.
    """

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of the examples at `index`."""
        return self.images[index], self.labels[index]


@dataclasses.dataclass
class SourceSplit:
    """One split read lazily from its TFDS data source (`data.pipeline = "stream"`).

    For splits that do not fit in memory: every batch is read and decoded when it is
    needed, in Grain's worker processes when `data.num_workers > 0`. Picklable, so the
    workers get their own copy.

    Attributes:
      source: the TFDS random-access data source (array_record).
      info: the dataset's `DatasetInfo`.
      image_key, label_key: the feature names.
    """

    source: Any
    info: DatasetInfo
    image_key: str
    label_key: str

    def __len__(self) -> int:
        return len(self.source)

    def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reads and decodes the examples at `index` (in that order)."""
        images = np.zeros((len(index), *self.info.image_shape), self.info.input_dtype)
        labels = np.zeros((len(index), *self.info.label_shape), np.int32)
        for i, example in enumerate(self.source.__getitems__([int(j) for j in index])):
            images[i] = np.asarray(example[self.image_key]).reshape(self.info.image_shape)
            labels[i] = example[self.label_key]
        return images, labels


def _feature_keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    return "image", "label"


def _info_from_builder(name: str, builder: tfds.core.DatasetBuilder) -> DatasetInfo:
    metadata = builder.info.metadata or {}
    if metadata.get("task") == CAUSAL_LM:  # data/lm.py: token ids and next-token targets
        length = int(builder.builder_config.max_length)
        return DatasetInfo(
            name=name,
            num_classes=int(metadata["vocab_size"]),
            image_shape=(length,),
            splits={split: info.num_examples for split, info in builder.info.splits.items()},
            input_kind="tokens",
            label_shape=(length,),
            task=CAUSAL_LM,
        )
    image_key, label_key = _feature_keys(builder)
    features = builder.info.features
    if image_key not in features or label_key not in features:
        raise DatasetError(
            f"Dataset '{name}' has no '{image_key}'/'{label_key}' features "
            f"(it has {sorted(features)}); only image classification datasets are supported."
        )
    shape = tuple(features[image_key].shape)
    label_feature, label_shape = features[label_key], ()
    if isinstance(label_feature, tfds.features.Sequence):  # a tag per token (NER)
        label_shape = tuple(label_feature.shape)
        label_feature = label_feature.feature
        if label_shape != shape or not isinstance(label_feature, tfds.features.ClassLabel):
            raise DatasetError(
                f"Dataset '{name}': feature '{label_key}' must be a ClassLabel per token of "
                f"'{image_key}' (shape {shape}), got {features[label_key]}"
            )
    num_classes = getattr(label_feature, "num_classes", None)
    class_names = tuple(str(n) for n in (getattr(label_feature, "names", None) or ()))
    dtype = np.dtype(getattr(features[image_key], "np_dtype", np.uint8))
    if len(shape) == 1 and shape[0] is not None and np.issubdtype(dtype, np.integer):
        if not num_classes:
            raise DatasetError(f"Dataset '{name}': feature '{label_key}' is not a ClassLabel.")
        return DatasetInfo(
            name=name,
            num_classes=int(num_classes),
            image_shape=(int(shape[0]),),
            splits={split: info.num_examples for split, info in builder.info.splits.items()},
            input_kind="tokens",
            class_names=class_names,
            label_shape=label_shape,
        )
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DatasetError(
            f"Dataset '{name}' has images of shape {shape}; a fixed (H, W, C) shape is needed."
        )
    if not num_classes:
        raise DatasetError(f"Dataset '{name}': feature '{label_key}' is not a ClassLabel.")
    splits = {split: info.num_examples for split, info in builder.info.splits.items()}
    return DatasetInfo(
        name=name,
        num_classes=int(num_classes),
        image_shape=tuple(int(d) for d in shape),
        splits=splits,
        class_names=class_names,
    )


def get_info(name: str, data_dir: str | None = None, download: bool = True) -> DatasetInfo:
    """Returns the `DatasetInfo` of a dataset, preparing it first if needed.

    Args:
      name: an embedded dataset (`EMBEDDED_DATASETS`) or `"tfds:NAME[/CONFIG][:VERSION]"`.
      data_dir: TFDS data dir; see `resolve_data_dir`.
      download: whether a catalogue dataset that is not prepared may be downloaded and
        prepared. Embedded datasets are always prepared (they need no network).

    Returns:
      The dataset's info.

    Raises:
      DatasetError: unknown name, unlabelled text, or a catalogue dataset that is not
        (and cannot be) prepared.
    """
    _refuse_unlabelled(name)
    return _info_from_builder(name, _prepared_builder(name, data_dir, download))


def _refuse_unlabelled(name: str) -> None:
    """Unlabelled text has no classes to train on; say where it is read instead."""
    if name.partition("/")[0] in UNLABELLED_DATASETS:
        raise DatasetError(
            f"dataset '{name}' is unlabelled text (no labels, one split 'train'); read its "
            f"token ids with load_unlabelled('{name}'). Labelled datasets: "
            f"{', '.join(sorted(EMBEDDED_DATASETS))}."
        )


def _data_source(name: str, builder: tfds.core.DatasetBuilder, split: str, available: str):
    """`builder.as_data_source(split)`, its failures as `DatasetError`s."""
    try:
        return builder.as_data_source(split)
    except NotImplementedError as e:  # Prepared in a format without random access.
        raise DatasetError(
            f"Dataset '{name}' in {builder.data_dir} is not stored as array_record, which "
            f"random access needs; prepare it again with --file_format array_record. ({e})"
        ) from e
    except (ValueError, KeyError) as e:
        message = " ".join(str(e).split())
        raise DatasetError(
            f"Cannot read split '{split}' of dataset '{name}': {message} {available}"
        ) from e


def _read_whole(name: str, builder: tfds.core.DatasetBuilder, length: int, read) -> None:
    """Calls `read(start, stop)` over `[0, length)` in chunks of `_READ_CHUNK` examples.

    Raises:
      DatasetError: reading failed, i.e. the prepared files are damaged.
    """
    try:
        for start in range(0, length, _READ_CHUNK):
            read(start, min(start + _READ_CHUNK, length))
    except Exception as e:  # noqa: BLE001 (array_record and the decoders raise many kinds)
        message = " ".join(str(e).split())[:200]
        raise DatasetError(
            f"the prepared files of dataset '{name}' in {builder.data_dir} are damaged "
            f"({type(e).__name__}: {message}); delete that directory and run again to "
            f"prepare it anew"
        ) from None


def load_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    download: bool = True,
    *,
    in_memory: bool = True,
) -> ArraySplit | SourceSplit:
    """Reads one split, whole, through the TFDS data source into memory.

    Args:
      name: an embedded dataset (`EMBEDDED_DATASETS`) or `"tfds:NAME[/CONFIG][:VERSION]"`.
      split: a split name or any TFDS split expression (`"train[:90%]"`,
        `"train[:1000]+validation"`). Indices in batches refer to positions in this
        (possibly sliced) split.
      data_dir: TFDS data dir; see `resolve_data_dir`.
      download: as in `get_info`.
      in_memory: False returns a `SourceSplit` that reads examples only when asked.

    Returns:
      The split as uint8 (N, H, W, C) images (int32 (N, L) token ids for a text dataset)
      and int32 (N,) labels.

    Raises:
      DatasetError: unknown dataset or split, unlabelled text, dataset not prepared, or
        not readable as a data source (e.g. prepared as tfrecord instead of array_record).
    """
    _refuse_unlabelled(name)
    builder = _prepared_builder(name, data_dir, download)
    info = _info_from_builder(name, builder)
    available = (
        f"Available splits: {', '.join(info.splits)} (slices like 'train[:90%]' and sums "
        f"like 'train+validation' work too)."
    )
    names = [part.split("[")[0].strip() for part in split.split("+")]
    unknown = [n for n in names if n not in info.splits]
    if unknown:
        raise DatasetError(f"Unknown split '{unknown[0]}' of dataset '{name}'. {available}")
    source = _data_source(name, builder, split, available)

    image_key, label_key = _feature_keys(builder)
    lazy = SourceSplit(source, info, image_key, label_key)
    if not in_memory:
        return lazy
    images = np.zeros((len(source), *info.image_shape), info.input_dtype)
    labels = np.zeros((len(source), *info.label_shape), np.int32)

    def read(start: int, stop: int) -> None:
        images[start:stop], labels[start:stop] = lazy.read(np.arange(start, stop))

    _read_whole(name, builder, len(source), read)
    return ArraySplit(images=images, labels=labels, info=info)


def load_unlabelled(name: str, data_dir: str | None = None, split: str = "train") -> np.ndarray:
    """Reads the token ids of an unlabelled text dataset, preparing it on first use.

    Args:
      name: an unlabelled dataset (`UNLABELLED_DATASETS`), optionally `NAME/CONFIG`
        (`"vader_snippets/len32"`).
      data_dir: TFDS data dir; see `resolve_data_dir`.
      split: its one split, `train`, or a TFDS slice of it (`"train[:1000]"`).

    Returns:
      int32 (N, L) token ids of the split, in stored order (0 = padding).

    Raises:
      DatasetError: not an unlabelled dataset, unknown config, its package missing, or
        damaged prepared files.
    """
    if name.partition("/")[0] not in UNLABELLED_DATASETS:
        raise DatasetError(
            f"'{name}' is not an unlabelled dataset; those are "
            f"{', '.join(sorted(UNLABELLED_DATASETS))} (labelled ones are read with "
            f"load_split)."
        )
    builder = _prepared_builder(name, data_dir, download=False)
    source = _data_source(name, builder, split, "Available splits: train.")
    ids = np.zeros((len(source), builder.builder_config.max_length), np.int32)

    def read(start: int, stop: int) -> None:
        for i, example in enumerate(source.__getitems__(list(range(start, stop))), start):
            ids[i] = example["input_ids"]

    _read_whole(name, builder, len(source), read)
    return ids


def is_word_aligned(name: str) -> bool:
    """Whether an unlabelled dataset marks its words' first sub-tokens for tagging
    (`data/ner.py`'s `UnlabelledTaggingBuilder`), so `load_unlabelled_tags` reads it."""
    builder = UNLABELLED_DATASETS.get(name.partition("/")[0])
    return bool(getattr(builder, "WORD_ALIGNED", False))


def load_unlabelled_tags(
    name: str, data_dir: str | None = None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a word-aligned unlabelled dataset as tagging rows, preparing it on first use.

    Args:
      name: a word-aligned unlabelled dataset (`is_word_aligned`), optionally
        `NAME/CONFIG` (`"healthtweets/len128"`).
      data_dir: TFDS data dir; see `resolve_data_dir`.
      split: `train` or a TFDS slice of it (`"train[:1000]"`).

    Returns:
      int32 `(N, L)` token ids and int32 `(N, L)` tags: `ner.UNLABELLED` (-2) on each
      word's first sub-token, -1 elsewhere.

    Raises:
      DatasetError: not a word-aligned unlabelled dataset, unknown config, its package
        missing, or damaged prepared files.
    """
    if not is_word_aligned(name):
        aligned = sorted(n for n in UNLABELLED_DATASETS if is_word_aligned(n))
        raise DatasetError(
            f"'{name}' is not a word-aligned unlabelled dataset; those are {', '.join(aligned)}"
        )
    builder = _prepared_builder(name, data_dir, download=False)
    source = _data_source(name, builder, split, "Available splits: train.")
    shape = (len(source), builder.builder_config.max_length)
    ids, tags = np.zeros(shape, np.int32), np.zeros(shape, np.int32)

    def read(start: int, stop: int) -> None:
        for i, example in enumerate(source.__getitems__(list(range(start, stop))), start):
            ids[i], tags[i] = example["input_ids"], example["tags"]

    _read_whole(name, builder, len(source), read)
    return ids, tags


# ---------------------------------------------------------------------------------------
# Training and evaluation batches.
# ---------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Returns the number of full global batches in one epoch (the remainder is dropped).

    Raises:
      ConfigError: `batch_size` is not positive or larger than `num_examples`.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}.")
    if batch_size > num_examples:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the split ({num_examples} examples)."
        )
    return num_examples // batch_size


GROUP_BATCHES = 32
"""With `length_bucket`, this many consecutive batches of an epoch's permutation are sorted
by length together and cut again (Hugging Face's `group_by_length` sorts 50): each batch
holds sequences of similar length, drawn from a random window of the epoch."""


def token_lengths(tokens_NL: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """Each right-padded sequence's length: the position after its last non-`pad_id` token
    (0 for a row of padding only)."""
    real_NL = np.asarray(tokens_NL) != pad_id
    last = tokens_NL.shape[1] - np.argmax(real_NL[:, ::-1], axis=1)
    return np.where(real_NL.any(axis=1), last, 0).astype(np.int32)


def bucket_width(lengths: np.ndarray, bucket: int, max_width: int) -> int:
    """The width a batch of sequences of these `lengths` is cut to: its longest, rounded up
    to a multiple of `bucket`, at least `bucket` and at most `max_width`."""
    longest = int(np.max(lengths, initial=0))
    return min(max_width, max(bucket, -(-longest // bucket) * bucket))


class _StepBatch:
    """Maps a global step to its batch (a class, so Grain workers can pickle it).

    Epoch `e` is the permutation `np.random.default_rng([seed, e]).permutation(N)` cut into
    `steps_per_epoch` batches (the incomplete tail is dropped). Drawing one permutation per
    epoch with NumPy costs microseconds; shuffling element by element through Grain's
    `shuffle().batch()` cost ~5 ms per batch of 128 on CPU, as much as a train step.
    """

    def __init__(
        self,
        split: ArraySplit | SourceSplit,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        indices_only: bool = False,
        length_bucket: int = 0,
    ):
        self.split, self.num_examples = split, len(split)
        self.indices_only = indices_only
        self.batch_size, self.seed, self.start, self.stop = batch_size, seed, start, stop
        self.steps_per_epoch = self.num_examples // batch_size
        self.length_bucket = length_bucket
        self.lengths = token_lengths(split.images) if length_bucket else None
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # the last epoch's permutation is cached
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if self.lengths is not None:
                perm = self._group_by_length(perm, epoch)
            self._perm, self._epoch = perm, epoch
        return self._perm

    def _group_by_length(self, perm: np.ndarray, epoch: int) -> np.ndarray:
        """The epoch's batches (the same examples as `perm`'s), each of similar lengths:
        every `GROUP_BATCHES` consecutive batches of `perm` are sorted by length and cut
        again, then the epoch's batches are shuffled."""
        size, steps = self.batch_size, self.steps_per_epoch
        used = perm[: steps * size]
        group = size * GROUP_BATCHES
        chunks = [used[i : i + group] for i in range(0, len(used), group)]
        batches = np.concatenate(
            [c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]
        ).reshape(steps, size)
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(steps)
        return batches[order].reshape(-1)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        batch = self._permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        # Each process gathers only its own contiguous slice of the global batch.
        idx = batch[self.start : self.stop]
        if self.indices_only:  # the split is resident on the device; it gathers itself
            return {"index": idx.astype(np.int32)}
        images, labels = self.split.read(idx)
        if self.lengths is not None:  # cut to the global batch's bucket: same on every process
            width = bucket_width(self.lengths[batch], self.length_bucket, images.shape[1])
            images = images[:, :width]
        return {"image": images, "label": labels, "index": idx.astype(np.int32)}


# Steps are indexed lazily, so the "infinite" stream is just a very long range.
_MAX_STEPS = 2**62


def train_dataset(
    split: ArraySplit | SourceSplit,
    batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    indices_only: bool = False,
    length_bucket: int = 0,
) -> grain.MapDataset:
    """Returns the infinite, random-access training stream; `ds[step]` is step's batch.

    Epoch `e` is its own seeded permutation of the split (see `_StepBatch`),
    cut into `steps_per_epoch(len(split), batch_size)` batches; the last incomplete batch
    of each epoch is dropped, so batches never straddle epochs and an epoch sees every
    example at most once. Step `s` belongs to epoch `s // steps_per_epoch`.

    Args:
      split: the training split.
      batch_size: the GLOBAL batch size, summed over processes.
      seed: non-negative shuffling seed.
      process_index: this process (`jax.process_index()`).
      process_count: number of processes (`jax.process_count()`); each process gets the
        contiguous slice `[p * B / P : (p + 1) * B / P]` of every global batch.
      indices_only: yield only `"index"` (the split is resident on the device and the
        train step gathers the rows itself); the same order as the full batches.
      length_bucket: for right-padded token ids in memory (an `ArraySplit`), > 0 groups
        each epoch's batches by length (`GROUP_BATCHES`; the same examples per epoch) and
        cuts each batch to its longest sequence rounded up to a multiple of this, so a
        model over a sequence spends its time on tokens, not padding. The jitted step then
        compiles once per width (at most `L / length_bucket` times).

    Returns:
      A `grain.MapDataset` of dicts: `"image"` uint8 (B/P, H, W, C), `"label"` int32
      (B/P,), `"index"` int32 (B/P,) positions in `split`.

    Raises:
      ConfigError: bad batch size, seed, or process arguments, or `length_bucket` for a
        split that is not token ids in memory.
    """
    steps_per_epoch(len(split), batch_size)  # Validates batch_size.
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(
            f"process_index must be in [0, process_count); got {process_index} of {process_count}."
        )
    if batch_size % process_count:
        raise ConfigError(
            f"batch_size {batch_size} (global) is not divisible by the {process_count} processes."
        )
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}.")
    if length_bucket < 0:
        raise ConfigError(f"length_bucket must be non-negative, got {length_bucket}.")
    if length_bucket and split.info.input_kind != "tokens":
        raise ConfigError(
            f"length_bucket cuts batches of token ids; '{split.info.name}' holds images"
        )
    if length_bucket and (indices_only or not isinstance(split, ArraySplit)):
        raise ConfigError(
            "length_bucket cuts each batch on the host from the split in memory: use "
            "data.pipeline 'host' or 'auto', not 'device' or 'stream'"
        )
    per_process = batch_size // process_count
    batch_of_step = _StepBatch(
        split,
        batch_size,
        seed,
        process_index * per_process,
        (process_index + 1) * per_process,
        indices_only,
        length_bucket,
    )
    return grain.MapDataset.range(_MAX_STEPS).map(batch_of_step)


def eval_batches(
    split: ArraySplit | SourceSplit, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yields every example exactly once, in order, in fixed-size batches.

    The last batch is padded with zeros to `batch_size`; `"mask"` is False on padding, so
    metrics summed over `mask` are exact (and jit sees a single batch shape).

    Args:
      split: the split to evaluate.
      batch_size: examples per batch.

    Returns:
      An iterator of dicts: `"image"` uint8 (B, H, W, C), `"label"` int32 (B,),
      `"index"` int32 (B,), `"mask"` bool (B,).
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}.")
    n = len(split)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        images, labels = split.read(np.arange(start, stop))
        batch = {
            "image": images,
            "label": labels,
            "index": np.arange(start, stop, dtype=np.int32),
            "mask": np.ones(stop - start, bool),
        }
        if pad:
            batch = {
                k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch


def length_sorted_batches(
    split: ArraySplit, batch_size: int, bucket: int = 16
) -> Iterator[dict[str, np.ndarray]]:
    """Like `eval_batches` for right-padded token ids, longest sequences first, each batch
    cut to its longest sequence rounded up to a multiple of `bucket` (at most
    `L / bucket` widths): every example once, at a fraction of the padded cost.

    Returns:
      An iterator of dicts as `eval_batches`' (`"index"` says where each row belongs).
    """
    if batch_size <= 0 or bucket <= 0:
        raise ConfigError(f"batch_size and bucket must be positive, got {batch_size}, {bucket}.")
    lengths = token_lengths(split.images)
    order = np.argsort(-lengths, kind="stable").astype(np.int32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = bucket_width(lengths[index], bucket, split.images.shape[1])
        pad = batch_size - len(index)
        yield {
            "image": np.pad(split.images[index, :width], ((0, pad), (0, 0))),
            "label": np.pad(
                split.labels[index][:, :width] if split.info.per_token else split.labels[index],
                [(0, pad)] + [(0, 0)] * (split.labels.ndim - 1),
            ),
            "index": np.pad(index, (0, pad)),
            "mask": np.arange(batch_size) < len(index),
        }


def iterate(
    ds: grain.MapDataset, start_step: int, num_workers: int = 0, prefetch: int = 2
) -> grain.DatasetIterator:
    """Returns an iterator over `ds[start_step:]`, i.e. the batches of steps >= start_step.

    Args:
      ds: a dataset from `train_dataset`.
      start_step: the first step to yield (the step a resumed run continues from).
      num_workers: Grain worker processes; 0 builds batches in this process. The batches
        are the same for any number of workers.
      prefetch: batches buffered ahead (per worker when `num_workers > 0`).

    Returns:
      A Grain iterator; call `.close()` on it when done if `num_workers > 0`.

    Note: Grain starts workers with `spawn`, which re-imports the `__main__` module, so a
    script using `num_workers > 0` needs the `if __name__ == "__main__":` guard (without
    it the worker dies at start-up and the parent waits forever).
    """
    if start_step < 0:
        raise ConfigError(f"start_step must be non-negative, got {start_step}.")
    if num_workers < 0 or prefetch < 0:
        raise ConfigError(
            f"num_workers and prefetch must be non-negative, got {num_workers}, {prefetch}."
        )
    # In-memory gathers are cheap; one reader thread overlaps them with the caller.
    read_options = grain.ReadOptions(
        num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch
    )
    it_ds = ds[start_step:].to_iter_dataset(read_options)
    if num_workers > 0:
        # Grain workers read absl flags; outside an absl app they are not parsed yet.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)
        )
        it_ds = it_ds.mp_prefetch(options)
    return iter(it_ds)
