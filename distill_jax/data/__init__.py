"""Datasets: TFDS builders for the data we ship, split loading and Grain pipelines.

`load_split(name, split)` reads a split of an embedded dataset (`mnist_5k`, `digits`, the
text dataset `stdlib_docstrings`) or of
any TFDS catalogue dataset (`tfds:cifar10`) into memory (or, with `in_memory=False`, as a
`SourceSplit` that reads and decodes each batch when asked); `train_dataset` turns it into a
random-access stream of global batches indexed by step, `eval_batches` into padded, masked
batches that cover every example once, and `iterate` reads a stream from a given step.
"""

from distill_jax.data.builders import Digits, Mnist5k
from distill_jax.data.pipeline import (
    EMBEDDED_DATASETS,
    ArraySplit,
    DatasetInfo,
    SourceSplit,
    check_known_dataset,
    eval_batches,
    get_info,
    is_prepared,
    iterate,
    load_split,
    resolve_data_dir,
    steps_per_epoch,
    train_dataset,
)
from distill_jax.data.text import StdlibDocstrings

__all__ = [
    "EMBEDDED_DATASETS",
    "ArraySplit",
    "DatasetInfo",
    "Digits",
    "Mnist5k",
    "SourceSplit",
    "check_known_dataset",
    "StdlibDocstrings",
    "eval_batches",
    "get_info",
    "is_prepared",
    "iterate",
    "load_split",
    "resolve_data_dir",
    "steps_per_epoch",
    "train_dataset",
]
