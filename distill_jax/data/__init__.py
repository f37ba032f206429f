"""Datasets: TFDS builders for the data we ship, split loading and Grain pipelines.

`load_split(name, split)` reads a split of an embedded dataset (`mnist_5k`, `digits`, the
text datasets `stdlib_docstrings`, `mr`, `trec6`, `bbc_news`; the NER dataset `wnut16`
and your own CoNLL files as `conll:DIR`, `data/ner.py`; the language-model corpus
`news_lm` and your own text as `text_lm:PATH`, `data/lm.py`) or of
any TFDS catalogue dataset (`tfds:cifar10`) into memory (or, with `in_memory=False`, as a
`SourceSplit` that reads and decodes each batch when asked); `train_dataset` turns it into a
random-access stream of global batches indexed by step, `eval_batches` into padded, masked
batches that cover every example once, and `iterate` reads a stream from a given step.
`load_unlabelled(name)` reads the token ids of unlabelled in-domain text
(`vader_snippets`, `news_articles`, `healthtweets`); `load_unlabelled_tags(name)` reads a
word-aligned one (`healthtweets`) as tagging rows for token classification.
`from_arrays(name, inputs, labels)` registers your own arrays as a dataset of this process.
"""

from distill_jax.data.arrays import from_arrays
from distill_jax.data.builders import Digits, Mnist5k
from distill_jax.data.lm import NewsLM
from distill_jax.data.ner import HealthTweets, Wnut16
from distill_jax.data.pipeline import (
    EMBEDDED_DATASETS,
    UNLABELLED_DATASETS,
    ArraySplit,
    DatasetInfo,
    SourceSplit,
    check_known_dataset,
    eval_batches,
    get_info,
    is_prepared,
    is_word_aligned,
    iterate,
    length_sorted_batches,
    load_split,
    load_unlabelled,
    load_unlabelled_tags,
    resolve_data_dir,
    steps_per_epoch,
    token_lengths,
    train_dataset,
)
from distill_jax.data.text import StdlibDocstrings
from distill_jax.data.text_cls import BbcNews, MovieReviews, NewsArticles, Trec6, VaderSnippets

__all__ = [
    "EMBEDDED_DATASETS",
    "UNLABELLED_DATASETS",
    "ArraySplit",
    "BbcNews",
    "DatasetInfo",
    "HealthTweets",
    "Digits",
    "Mnist5k",
    "MovieReviews",
    "NewsLM",
    "NewsArticles",
    "SourceSplit",
    "check_known_dataset",
    "StdlibDocstrings",
    "Trec6",
    "VaderSnippets",
    "Wnut16",
    "eval_batches",
    "from_arrays",
    "get_info",
    "is_prepared",
    "is_word_aligned",
    "iterate",
    "length_sorted_batches",
    "load_split",
    "load_unlabelled",
    "load_unlabelled_tags",
    "resolve_data_dir",
    "steps_per_epoch",
    "token_lengths",
    "train_dataset",
]
