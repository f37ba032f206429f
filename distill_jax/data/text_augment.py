"""On-device augmentation of token-id sequences: the transfer set of Tang et al. (2019).

Tang et al., "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"
(2019), distil BERT into a BiLSTM only with a *transfer set*: every training sentence plus
augmented copies that the teacher labels. Each copy is made word by word:

* with probability `mask` a word becomes `[MASK]` (one `[MASK]` for the whole word);
* else with probability `replace` a word is replaced by a similar word;
* then, with probability `ngram`, only a random n-gram of the sentence is kept
  (n uniform in 1..`max_ngram`, a uniformly placed window of n words).

Tang et al. replace a word by a random word of the same part of speech. We replace it, as
TinyBERT does for single-piece words, by one of its `neighbours` nearest words in the
teacher's own word-piece embedding table (cosine similarity, among whole-word lowercase
alphabetic pieces; e.g. "good" -> excellent, bad, great, better, ...; "movie" -> movies,
film, films, cinema, ...): no tagger, no extra data, and the same vocabulary the teacher
reads. A word made of several pieces is masked or kept, never replaced. Neighbours may
flip the sentiment ("good" -> "bad"): that is why the *teacher* labels the views.

With probability `original` a view is the sentence unchanged, so the transfer set keeps
the labelled sentences themselves (Tang et al. add the originals to it).

Everything runs inside the jitted train step on int32 `(B, L)` ids laid out as the text
builders write them: `[CLS] pieces [SEP]` then padding 0. Words are found from the ids: a
piece that does not start with `##` starts a word. Example `i` draws from
`fold_in(key, index[i])` like the image augmentation (`data/augment.py`), so a view depends
only on the key and the example, and a teacher cache made with `cache_view_key(seed, v)`
holds exactly the view a student sees (`train/teacher_cache.py`). The neighbour table is
computed once per checkpoint and stored in the TFDS data dir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.errors import ConfigError
from distill_jax.report import atomic_write_with
from distill_jax.tokenizer import load_tokenizer

_WORD = re.compile(r"[a-z]+")
_CHUNK = 2048  # candidate rows per similarity block when building the neighbour table


def word_neighbours(embedding_VD: np.ndarray, vocab: dict[str, int], k: int) -> np.ndarray:
    """`(V, k)` int32: each whole-word lowercase alphabetic piece's `k` nearest other such
    pieces by cosine similarity of `embedding_VD`, most similar first; every other id
    (sub-word pieces `##x`, punctuation, numbers, special tokens) maps to itself."""
    V = embedding_VD.shape[0]
    table = np.repeat(np.arange(V, dtype=np.int32)[:, None], k, axis=1)
    ids = np.array(sorted(i for piece, i in vocab.items() if _WORD.fullmatch(piece) and i < V))
    if len(ids) <= k:
        raise ConfigError(f"the vocabulary has {len(ids)} whole words, too few for {k} neighbours")
    unit = embedding_VD[ids].astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    for start in range(0, len(ids), _CHUNK):
        sim = unit[start : start + _CHUNK] @ unit.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # never its own neighbour
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, top, 1), axis=1, kind="stable")
        table[ids[start : start + _CHUNK]] = ids[np.take_along_axis(top, order, 1)]
    return table


def _neighbour_table(
    embedding_VD: np.ndarray, vocab: dict[str, int], k: int, data_dir: str | None
) -> np.ndarray:
    """`word_neighbours`, read from (or computed once and written atomically to)
    `data_dir/distill_jax_text_augment/`, keyed by a hash of the table and the vocabulary."""
    digest = hashlib.sha256(embedding_VD.astype(np.float32).tobytes())
    digest.update(repr(sorted(vocab.items())).encode())
    path = None
    if data_dir:
        name = f"neighbours-{digest.hexdigest()[:16]}-k{k}.npy"
        path = os.path.join(data_dir, "distill_jax_text_augment", name)
        if os.path.isfile(path):
            table = np.load(path)
            if table.shape == (embedding_VD.shape[0], k):
                return table
    table = word_neighbours(embedding_VD, vocab, k)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_with(path, lambda tmp: np.save(tmp, table))  # keeps the .npy name
    return table


@dataclasses.dataclass(frozen=True, eq=False)
class TokenAugment:
    """Tang et al.'s transfer-set augmentation of token ids (see the module docstring).

    Attributes:
        mask, replace, ngram, original: the probabilities above.
        max_ngram: the longest n-gram kept.
        word_start_V: bool, piece id -> whether it starts a word (not `##`).
        neighbours_VK: int32, piece id -> its nearest whole words (itself if it has none).
        cls_id, sep_id, mask_id, pad_id: the special ids.
    """

    mask: float
    replace: float
    ngram: float
    original: float
    max_ngram: int
    word_start_V: np.ndarray
    neighbours_VK: np.ndarray
    cls_id: int = 101
    sep_id: int = 102
    mask_id: int = 103
    pad_id: int = 0

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        data_dir: str | None,
        word_embeddings: Callable[[str], np.ndarray],
    ) -> TokenAugment | None:
        """The augmentation of `train.token_augment`, or None when it is off.

        Args:
            cfg: the `token_augment` section.
            data_dir: where the neighbour table is kept (None: computed every time).
            word_embeddings: checkpoint name -> its `(V, D)` word-piece embedding table
                (read by the caller: `data` does not import `models`).
        """
        if not (cfg.mask or cfg.replace or cfg.ngram):
            return None
        vocab = load_tokenizer(cfg.embeddings).get_vocab()
        size = max(vocab.values()) + 1
        word_start = np.ones((size,), bool)
        for piece, i in vocab.items():
            word_start[i] = not piece.startswith("##")
        neighbours = (
            _neighbour_table(
                np.asarray(word_embeddings(cfg.embeddings)), vocab, cfg.neighbours, data_dir
            )
            if cfg.replace
            else np.arange(size, dtype=np.int32)[:, None]
        )
        special = {name: vocab[f"[{name.upper()}]"] for name in ("cls", "sep", "mask", "pad")}
        return cls(
            mask=float(cfg.mask),
            replace=float(cfg.replace),
            ngram=float(cfg.ngram),
            original=float(cfg.original),
            max_ngram=int(cfg.max_ngram),
            word_start_V=word_start,
            neighbours_VK=neighbours.astype(np.int32),
            **{f"{name}_id": i for name, i in special.items()},
        )

    @property
    def spec(self) -> dict[str, Any]:
        """What identifies the views (recorded in a teacher cache and compared)."""
        return {
            "mask": self.mask,
            "replace": self.replace,
            "ngram": self.ngram,
            "original": self.original,
            "max_ngram": self.max_ngram,
            "neighbours": hashlib.sha256(self.neighbours_VK.tobytes()).hexdigest()[:16],
            # 2: per-position draws, so a batch cut to its length gets the same views.
            "draws": 2,
        }

    def __call__(self, key: jax.Array, ids_BL: jax.Array, index_B: jax.Array) -> jax.Array:
        """The augmented views of a batch of token ids (same shape and dtype)."""
        word_start_V = jnp.asarray(self.word_start_V)
        neighbours_VK = jnp.asarray(self.neighbours_VK)

        def one(ids_L, i):
            L = ids_L.shape[0]
            keys = jax.random.split(jax.random.fold_in(key, i), 6)
            k_word, k_pick, k_ng, k_n, k_at, k_orig = keys
            content = (ids_L != self.pad_id) & (ids_L != self.cls_id) & (ids_L != self.sep_id)
            prev_content = jnp.concatenate([jnp.zeros((1,), bool), content[:-1]])
            start = content & (word_start_V[ids_L] | ~prev_content)
            word = jnp.cumsum(start) - 1  # the word each piece belongs to
            num_words = jnp.sum(start)
            next_continues = jnp.concatenate([content[1:] & ~start[1:], jnp.zeros((1,), bool)])
            u = _per_position(jax.random.uniform, k_word, L)[jnp.clip(word, 0)]  # per word
            masked = content & (u < self.mask)
            replaced = start & ~next_continues & (u >= self.mask) & (u < self.mask + self.replace)
            pick = _per_position(jax.random.randint, k_pick, L, (), 0, neighbours_VK.shape[1])
            out = jnp.where(replaced, neighbours_VK[ids_L, pick], ids_L)
            out = jnp.where(masked & start, self.mask_id, out)
            keep = ~(masked & ~start)  # a masked word keeps one [MASK]
            # n-gram sampling: keep only words [at, at + n).
            n = jnp.minimum(jax.random.randint(k_n, (), 1, self.max_ngram + 1), num_words)
            at = jax.random.randint(k_at, (), 0, num_words - n + 1)
            in_window = (word >= at) & (word < at + n)
            sampled = jax.random.uniform(k_ng) < self.ngram
            keep = keep & (~content | ~sampled | in_window)
            order = jnp.argsort(~keep, stable=True)  # kept pieces first, in order
            out = jnp.where(jnp.arange(L) < jnp.sum(keep), out[order], self.pad_id)
            unchanged = jax.random.uniform(k_orig) < self.original
            return jnp.where(unchanged, ids_L, out).astype(ids_L.dtype)

        return jax.vmap(one)(ids_BL, index_B)


def _per_position(draw: Callable, key: jax.Array, length: int, *args) -> jax.Array:
    """`length` draws, the one at position p from `fold_in(key, p)`: the first n of them do
    not depend on `length`, so a batch cut to its longest sequence (`data.length_bucket`)
    gets the same views as the full-width batch a teacher cache was written from."""
    positions = jnp.arange(length)
    return jax.vmap(lambda p: draw(jax.random.fold_in(key, p), *args))(positions)


__all__ = ["TokenAugment", "word_neighbours"]
