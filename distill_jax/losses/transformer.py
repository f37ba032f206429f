"""Distillation methods for transformer encoders (TinyBERT, MiniLM, sentence embeddings).

Each class is a `Method` (see `losses/method.py`) registered under its config name. They
read the features of `models/transformer.py`: `embeddings`, `hidden{i}` (B, L, D),
`attention{i}` (B, H, L, L) probabilities, `values{i}` (B, L, D), `sentence_embedding`
(B, E), and the token mask `mask` (B, L), which both models derive from the same ids.

| name             | paper                                  | default pairs (student -> teacher) |
|------------------|----------------------------------------|------------------------------------|
| `hidden_mse`     | TinyBERT Eq. (7)-(8), learned `W_h`    | embeddings, hidden1, hidden2 ->    |
|                  |                                        | embeddings, hidden3, hidden6       |
| `attention_kl`   | MiniLM Eq. (4) (TinyBERT's, as a KL)   | attention1, 2 -> attention3, 6     |
| `value_relation` | MiniLM Eq. (6)                         | values2 -> values6                 |
| `embedding`      | Reimers & Gurevych 2020 (MSE) / cosine | sentence_embedding (both)          |

The default pairs are TinyBERT's uniform layer mapping for a 2-layer student of a 6-layer
teacher; set `student_features`/`teacher_features` for other depths.

Masking: tokens with `mask == 0` (padding) and rows with `batch["mask"] == False` are
dropped from every average, with `jnp.where`, so anything stored at padded positions
changes neither the value nor the gradients. Teacher features pass through
`stop_gradient` (`gather_features`). Several pairs are summed (TinyBERT sums its layer
losses); the config's weight multiplies the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.losses.base import to_float32
from distill_jax.losses.method import Batch, Method, Outputs, register
from distill_jax.losses.ops import _feature, gather_features, l2_normalize

_LOG_EPS = 1e-12  # log of attention probabilities: log(max(p, eps)), as MiniLM's log()


def _token_mask(student: Outputs, batch: Batch) -> jax.Array:
    """`(B, L)` bool: real tokens of kept rows (the model's `mask` and the batch's)."""
    keep_BL = _feature(student, "mask", "student").astype(bool)
    row_B = batch.get("mask") if batch is not None else None
    if row_B is not None:
        keep_BL = keep_BL & jnp.asarray(row_B).astype(bool)[:, None]
    return keep_BL


def _row_mask(batch: Batch, batch_size: int) -> jax.Array:
    row_B = batch.get("mask") if batch is not None else None
    if row_B is None:
        return jnp.ones((batch_size,), bool)
    return jnp.asarray(row_B).astype(bool)


def _mean_over(values: jax.Array, keep: jax.Array) -> jax.Array:
    """Mean of `values` over the positions `keep` marks (0 when it marks none)."""
    keep = jnp.broadcast_to(keep, values.shape)
    total = jnp.sum(jnp.where(keep, values, 0.0))
    return total / jnp.maximum(jnp.sum(keep), 1).astype(values.dtype)


def _check_pairs(method: Method) -> None:
    if not method.student_features or len(method.student_features) != len(method.teacher_features):
        raise ValueError(
            f"{type(method).__name__} needs as many student as teacher features (at least "
            f"one), got {tuple(method.student_features)} and {tuple(method.teacher_features)}"
        )


def distribution_kl(p_t: jax.Array, p_s: jax.Array, keep_key: jax.Array) -> jax.Array:
    """`sum_k p_t log(p_t / p_s)` over the last axis, from probabilities.

    Terms with `p_t == 0` or a padded key (`keep_key` False) are 0; `log` is taken of
    `max(p, 1e-12)`.
    """
    log_t = jnp.log(jnp.maximum(p_t, _LOG_EPS))
    log_s = jnp.log(jnp.maximum(p_s, _LOG_EPS))
    terms = jnp.where(keep_key & (p_t > 0), p_t * (log_t - log_s), 0.0)
    return jnp.sum(terms, axis=-1)


@register("hidden_mse")
class HiddenMSE(Method):
    """TinyBERT's embedding- and hidden-state loss (Jiao et al., "TinyBERT: Distilling
    BERT for Natural Language Understanding", Findings of EMNLP 2020, Eq. (7)-(8)).

    `L_hidn = MSE(H^S W_h, H^T)` for each (student, teacher) layer pair, with a learned
    linear map `W_h` (D_s -> D_t, no bias, as in the paper) per pair (`proj{i}`; TinyBERT
    uses one for the embeddings and one for all hidden layers -- one per pair is the
    general form and equals it when tied). The squared error is averaged over the real
    tokens and the D_t dimensions (PyTorch `MSELoss` over unpadded positions), and the
    pairs are summed. Layer mapping: TinyBERT's uniform `g(m) = m * N / M`; the default
    (student 0, 1, 2 -> teacher 0, 3, 6, with 0 the embeddings) is that mapping for a
    2-layer student of a 6-layer teacher.
    """

    student_features: Sequence[str] = ("embeddings", "hidden1", "hidden2")
    teacher_features: Sequence[str] = ("embeddings", "hidden3", "hidden6")

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        _check_pairs(self)
        feats_s, feats_t = gather_features(self, student, teacher)
        keep_BL1 = _token_mask(student, batch)[..., None]
        total = jnp.float32(0.0)
        for i, (h_s, h_t) in enumerate(zip(feats_s, feats_t, strict=True)):
            mapped = nn.Dense(h_t.shape[-1], use_bias=False, name=f"proj{i}")(h_s)
            total = total + _mean_over(jnp.square(mapped - h_t), keep_BL1)
        return total


@register("attention_kl")
class AttentionKL(Method):
    """Self-attention distribution transfer, per head (MiniLM, Wang et al., "MiniLM: Deep
    Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
    Transformers", NeurIPS 2020, Eq. (4); TinyBERT's attention loss, Eq. (6), matches the
    same maps with an MSE on scores).

    For each layer pair, head `h` and real query token `q`:
    `KL(A^T_{h,q,:} || A^S_{h,q,:})`, averaged over heads, real query tokens and kept
    rows (MiniLM's `1 / (A_h |x|)` normalisation); pairs are summed. Both models need the
    same number of heads; padded keys carry no probability in either.
    """

    student_features: Sequence[str] = ("attention1", "attention2")
    teacher_features: Sequence[str] = ("attention3", "attention6")

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        _check_pairs(self)
        feats_s, feats_t = gather_features(self, student, teacher)
        keep_BL = _token_mask(student, batch)
        keep_query = keep_BL[:, None, :]  # (B, 1, Lq)
        keep_key = _feature(student, "mask", "student").astype(bool)[:, None, None, :]
        total = jnp.float32(0.0)
        for name, a_s, a_t in zip(self.student_features, feats_s, feats_t, strict=True):
            if a_s.shape != a_t.shape:
                raise ValueError(
                    f"attention_kl: student {name} {a_s.shape} and teacher {a_t.shape} "
                    "differ (the same number of heads and the same length are needed)"
                )
            kl_BHL = distribution_kl(a_t, a_s, keep_key)
            total = total + _mean_over(kl_BHL, keep_query)
        return total


def value_relation(values_BLD: jax.Array, keep_BL: jax.Array, num_heads: int) -> jax.Array:
    """MiniLM's value relation `softmax(V_h V_h^T / sqrt(d_h))` per head: `(B, H, L, L)`.

    Padded keys are excluded from the softmax (the attention mask of the model).
    """
    B, L, D = values_BLD.shape
    if D % num_heads:
        raise ValueError(f"value_relation: width {D} is not divisible by num_heads {num_heads}")
    dh = D // num_heads
    v_BHLd = values_BLD.reshape(B, L, num_heads, dh).transpose(0, 2, 1, 3)
    scores = jnp.einsum("bhqd,bhkd->bhqk", v_BHLd, v_BHLd) / jnp.sqrt(jnp.float32(dh))
    scores = jnp.where(keep_BL[:, None, None, :], scores, -1e9)
    return jax.nn.softmax(scores, axis=-1)


@register("value_relation")
class ValueRelation(Method):
    """MiniLM's value-relation transfer (Wang et al. 2020, Eq. (5)-(6)).

    `VR = softmax(V V^T / sqrt(d_h))` per head of the chosen layers' value vectors;
    the loss is `KL(VR^T || VR^S)` averaged over heads, real query tokens and kept rows,
    summed over pairs. MiniLM uses the last layer of each model. Value vectors are split
    into `num_heads` relation heads on both sides (MiniLM: the models' head count, which
    must then be equal; splitting into a shared count is MiniLMv2's relation-head
    generalisation, which lets student and teacher have different head counts).

    Attributes:
        num_heads: relation heads; must divide both models' widths.
    """

    student_features: Sequence[str] = ("values2",)
    teacher_features: Sequence[str] = ("values6",)
    num_heads: int = 12

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        _check_pairs(self)
        feats_s, feats_t = gather_features(self, student, teacher)
        tokens_BL = _feature(student, "mask", "student").astype(bool)
        keep_query = _token_mask(student, batch)[:, None, :]
        total = jnp.float32(0.0)
        for v_s, v_t in zip(feats_s, feats_t, strict=True):
            vr_s = value_relation(v_s, tokens_BL, self.num_heads)
            vr_t = value_relation(v_t, tokens_BL, self.num_heads)
            kl_BHL = distribution_kl(vr_t, vr_s, tokens_BL[:, None, None, :])
            total = total + _mean_over(kl_BHL, keep_query)
        return total


@register("embedding")
class EmbeddingDistillation(Method):
    """Sentence-embedding distillation: the student reproduces the teacher's embeddings.

    `loss = "mse"`: mean squared error over rows and dimensions (Reimers & Gurevych,
    "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation",
    EMNLP 2020, Eq. (1), sentence-transformers' `MSELoss`). `loss = "cosine"`: the mean
    of `1 - cos(s, t)` over rows. Label-free: with `distill.alpha = 0` no label is used.
    The features are the mean-pooled `sentence_embedding`s; a narrower student sets
    `embedding_dim` to the teacher's width so that its (projected) embedding is directly
    comparable -- it is then what the student serves as its sentence embedding.

    Attributes:
        loss: `"mse"` or `"cosine"`.
    """

    student_features: Sequence[str] = ("sentence_embedding",)
    teacher_features: Sequence[str] = ("sentence_embedding",)
    loss: str = "cosine"

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        if self.loss not in ("mse", "cosine"):
            raise ValueError(f"embedding: loss must be 'mse' or 'cosine', got {self.loss!r}")
        _check_pairs(self)
        feats_s, feats_t = gather_features(self, student, teacher)
        total = jnp.float32(0.0)
        for e_s, e_t in zip(feats_s, feats_t, strict=True):
            if e_s.shape != e_t.shape:
                raise ValueError(
                    f"embedding: student embedding {e_s.shape} and teacher {e_t.shape} "
                    "differ; set the student's embedding_dim to the teacher's width"
                )
            keep_B = _row_mask(batch, e_s.shape[0])
            if self.loss == "mse":
                values_B = jnp.mean(jnp.square(e_s - e_t), axis=-1)
            else:
                values_B = 1.0 - jnp.sum(l2_normalize(e_s) * l2_normalize(e_t), axis=-1)
            total = total + _mean_over(to_float32(values_B), keep_B)
        return total
