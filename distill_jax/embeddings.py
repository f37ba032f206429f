"""Sentence-embedding evaluation: teacher-student cosine and nearest-neighbour recall@k.

For embedding distillation (`losses/transformer.py`, `embedding`), the student is judged
on held-out text by two numbers:

* **cosine**: the mean cosine similarity between the student's and the teacher's
  embedding of the same text;
* **recall@k**: for each text, the fraction of the teacher's k nearest neighbours (cosine
  similarity among the other held-out texts) that are also among the student's k nearest
  neighbours, averaged over texts. 1.0 means the student retrieves exactly what the
  teacher retrieves.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np


def sentence_embeddings(
    model: nn.Module, variables: Any, ids_NL: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """The `sentence_embedding` feature of `model` for every row of `ids_NL`: `(N, E)`.

    Batches are padded to `batch_size` (one compiled shape) and the padding dropped.
    """
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["sentence_embedding"])
    out = []
    for start in range(0, len(ids_NL), batch_size):
        chunk = ids_NL[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(variables, chunk), np.float64)[: batch_size - pad])
    return np.concatenate(out)


def _unit(x_NE: np.ndarray) -> np.ndarray:
    x_NE = np.asarray(x_NE, np.float64)
    return x_NE / np.maximum(np.linalg.norm(x_NE, axis=1, keepdims=True), 1e-12)


def embedding_cosine(student_NE: np.ndarray, teacher_NE: np.ndarray) -> float:
    """Mean cosine similarity between matching rows."""
    return float(np.mean(np.sum(_unit(student_NE) * _unit(teacher_NE), axis=1)))


def top_k_neighbours(x_NE: np.ndarray, k: int) -> np.ndarray:
    """`(N, k)` indices of each row's k most cosine-similar other rows (ties: lower index)."""
    if not 0 < k < len(x_NE):
        raise ValueError(f"k must be in [1, {len(x_NE) - 1}], got {k}")
    unit = _unit(x_NE)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def neighbour_recall(student_NE: np.ndarray, teacher_NE: np.ndarray, k: int = 10) -> float:
    """Mean over rows of |student's k-NN ∩ teacher's k-NN| / k."""
    ns, nt = top_k_neighbours(student_NE, k), top_k_neighbours(teacher_NE, k)
    hits = [len(set(a) & set(b)) for a, b in zip(ns, nt, strict=True)]
    return float(np.mean(hits) / k)


def evaluate_embeddings(
    student: tuple[nn.Module, Any],
    teacher: tuple[nn.Module, Any],
    ids_NL: np.ndarray,
    k: int = 10,
    batch_size: int = 256,
) -> dict[str, float]:
    """`{"cosine", "recall@k"}` of a student's embeddings against its teacher's."""
    e_s = sentence_embeddings(*student, ids_NL, batch_size)
    e_t = sentence_embeddings(*teacher, ids_NL, batch_size)
    if e_s.shape != e_t.shape:
        raise ValueError(
            f"student embeddings {e_s.shape} and teacher embeddings {e_t.shape} differ; "
            "set the student's embedding_dim to the teacher's width"
        )
    return {"cosine": embedding_cosine(e_s, e_t), f"recall@{k}": neighbour_recall(e_s, e_t, k)}
