"""Your own data as a dataset: in-memory arrays registered under a name.

`from_arrays("my_data", inputs, labels)` turns arrays into a TFDS builder (array_record
files + `dataset_info.json`, prepared on first use in the data dir like every embedded
dataset) and registers it, so `data.name = "my_data"` works in any config of this Python
process: `run`, `fit`, `sweep`, `compress`, teacher caches, the same Grain path as
`tfds:cifar10`.

* `inputs`: uint8 images `(N, H, W)` or `(N, H, W, C)` with C = 1 or 3 (stored as PNG),
  or integer token ids `(N, L)` (stored as int32; 0 is padding);
* `labels`: integers in `[0, num_classes)`;
* `split_sizes`: `{"train": n1, "validation": n2, "test": n3}`, default 80 / 10 / 10 %
  of a fixed permutation of the rows (`np.random.default_rng(0)`, as the embedded image
  datasets: `builders.split_source_indices`).

The prepared files are keyed by a fingerprint of the arrays (the builder config is
`h<sha256 prefix>`), so changed arrays under the same name are prepared afresh, never read
from a stale cache. Registration lives in this process only: the `distill-jax` command
line sees the datasets of the package (write a TFDS builder in `data/` for those).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data import pipeline
from distill_jax.data.builders import _png, split_source_indices
from distill_jax.errors import ConfigError

_BUILTIN = frozenset(pipeline._BUILDERS)


def _default_sizes(n: int) -> dict[str, int]:
    validation = test = max(1, n // 10)
    return {"train": n - validation - test, "validation": validation, "test": test}


def _checked(inputs, labels, name: str) -> tuple[np.ndarray, np.ndarray, str]:
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    if len(inputs) != len(labels):
        raise ConfigError(f"{name}: {len(inputs)} inputs but {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1 or labels.min() < 0:
        raise ConfigError(f"{name}: labels must be non-negative integers (N,)")
    if inputs.dtype == np.uint8 and inputs.ndim in (3, 4):
        if inputs.ndim == 3:
            inputs = inputs[..., None]
        if inputs.shape[-1] not in (1, 3):
            raise ConfigError(f"{name}: images need 1 or 3 channels, got {inputs.shape[-1]}")
        return inputs, labels.astype(np.int64), "image"
    if np.issubdtype(inputs.dtype, np.integer) and inputs.ndim == 2:
        if inputs.min() < 0 or inputs.max() > np.iinfo(np.int32).max:
            raise ConfigError(f"{name}: token ids must fit int32 and be >= 0")
        return inputs.astype(np.int32), labels.astype(np.int64), "tokens"
    raise ConfigError(
        f"{name}: inputs must be uint8 images (N, H, W[, C]) or integer token ids (N, L); "
        f"got {inputs.dtype} {inputs.shape}"
    )


def from_arrays(
    name: str,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    split_sizes: dict[str, int] | None = None,
    class_names: Sequence[str] | None = None,
    description: str = "",
) -> type:
    """Registers arrays as dataset `name` (see the module docstring); returns its builder.

    Raises:
        ConfigError: a name taken by a dataset of the package, arrays of the wrong kind,
            split sizes that do not add up, or class names that do not cover the labels.
    """
    if name in _BUILTIN or not name.isidentifier():
        raise ConfigError(
            f"dataset name {name!r} is taken or not an identifier; choose another "
            f"(taken: {', '.join(sorted(_BUILTIN))})"
        )
    inputs, labels, kind = _checked(inputs, labels, name)
    sizes = dict(split_sizes or _default_sizes(len(labels)))
    if set(sizes) != {"train", "validation", "test"} or sum(sizes.values()) != len(labels):
        raise ConfigError(
            f"{name}: split_sizes must give train, validation and test, adding up to "
            f"{len(labels)}; got {sizes}"
        )
    num_classes = int(labels.max()) + 1
    names = [str(c) for c in (class_names or range(num_classes))]
    if len(names) < num_classes:
        raise ConfigError(f"{name}: {len(names)} class names for labels up to {num_classes - 1}")
    digest = hashlib.sha256()
    for part in (inputs.tobytes(), labels.tobytes(), json.dumps([sizes, names, kind]).encode()):
        digest.update(part)
    fingerprint = "h" + digest.hexdigest()[:16]
    shape = inputs.shape[1:]
    dataset_name = name

    class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset_name
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=fingerprint)]
        code_path = None  # nothing to download, no checksums to look up

        def __init__(self, **kwargs):
            kwargs.setdefault("file_format", "array_record")
            super().__init__(**kwargs)

        def _info(self) -> tfds.core.DatasetInfo:
            if kind == "image":
                feature = tfds.features.Image(shape=shape)
            else:
                feature = tfds.features.Tensor(shape=shape, dtype=np.int32)
            key = "image" if kind == "image" else "input_ids"
            return tfds.core.DatasetInfo(
                builder=self,
                description=description or f"{name}: arrays registered with from_arrays",
                features=tfds.features.FeaturesDict(
                    {key: feature, "label": tfds.features.ClassLabel(names=names)}
                ),
                supervised_keys=(key, "label"),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            rows = split_source_indices(len(labels), sizes)
            return {split: self._generate_examples(idx) for split, idx in rows.items()}

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                if kind == "image":
                    x = inputs[row]
                    value = _png(x[..., 0]) if x.shape[-1] == 1 else _png_rgb(x)
                    yield i, {"image": value, "label": int(labels[row])}
                else:
                    yield i, {"input_ids": inputs[row], "label": int(labels[row])}

    ArrayBuilder.__name__ = ArrayBuilder.__qualname__ = f"ArrayBuilder_{name}"
    pipeline.EMBEDDED_DATASETS[name] = ArrayBuilder
    pipeline._BUILDERS[name] = ArrayBuilder
    return ArrayBuilder


def _png_rgb(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
