"""A BERT-style text encoder (Devlin et al. 2019) with a classification or tagging head.

`Bert` maps token ids `(B, L)` to `(logits_BC, features)`. The architecture is Hugging
Face's `BertModel` + `BertForSequenceClassification` head, so that a converted checkpoint
(`models/hf_bert.py`) gives the same numbers: token + position + token-type embeddings,
LayerNorm, then `num_layers` post-LN blocks (self-attention -> residual -> LayerNorm,
GELU MLP -> residual -> LayerNorm), a tanh pooler on the first token, and a linear head.

Padding: the attention mask is derived from the ids (`input_ids != pad_id`), so padded
keys receive no attention, and the mean-pooled sentence embedding averages the real tokens
only. Any numeric input dtype is accepted and cast to int32: the pipeline's dummy inputs
(initialisation, FLOPs, latency) are float zeros, i.e. all-padding sequences, which this
module handles without NaNs.

Features (every name a feature-based loss can read):

| name                 | shape        | what                                                   |
|----------------------|--------------|--------------------------------------------------------|
| `mask`               | (B, L)       | float32 1 for real tokens, 0 for padding               |
| `embeddings`         | (B, L, D)    | embedding output (after LayerNorm), HF's hidden_states[0] |
| `hidden{i}`          | (B, L, D)    | output of block i = 1..num_layers                      |
| `attention{i}`       | (B, H, L, L) | attention probabilities of block i (query, key)        |
| `values{i}`          | (B, L, D)    | value vectors of block i, heads concatenated           |
| `pooled`             | (B, D)       | tanh pooler on the first token                         |
| `sentence_embedding` | (B, E)       | mean of the last hidden states over real tokens [1]    |
| `pre_logits`         | (B, D)       | input of the classification head [2]                   |

[1] then projected to `embedding_dim` by a linear layer when that is set.
[2] (B, L, D), the last hidden states, with `head_input = "tokens"`.

Token classification (NER): `head_input = "tokens"` applies the head to every position's
last hidden state (HF's `BertForTokenClassification`: dropout, then a linear layer), so
the logits are `(B, L, C)`, one tag distribution per token.

Pretrained initialisation: with `init_from` set (a Hugging Face BERT directory or the name
of a package shipping one, see `hf_bert.resolve_checkpoint_dir`), `initial_params` replaces
the encoder's random parameters by the checkpoint's; with `init_layers` only those teacher
layers are copied (DistilBERT's layer-skipping initialisation), and a narrower model gets
a width projection of them (`hf_bert.convert_params`). The head stays randomly initialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.base import Features

# BERT's initialiser: normal(0, initializer_range = 0.02) for kernels and embeddings.
bert_init = nn.initializers.normal(stddev=0.02)
_NEG_INF = -1e9  # additive mask: exp(-1e9 - max) == 0 exactly in float32, never NaN


def mean_pool(hidden_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """Mean over the real tokens (sentence-transformers' mean pooling, clamp 1e-9)."""
    mask = mask_BL.astype(hidden_BLD.dtype)[..., None]
    total_BD = jnp.sum(hidden_BLD * mask, axis=1)
    return total_BD / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


class BertLayer(nn.Module):
    """One post-LN transformer block (HF's `BertLayer`).

    Returns `(hidden_BLD, attention_BHLL, values_BLD)`.
    """

    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x_BLD: jax.Array, mask_BL: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        B, L, D = x_BLD.shape
        H = self.num_heads
        if D % H:
            raise ValueError(f"hidden size {D} is not divisible by num_heads {H}")
        dh = D // H

        def dense(width: int, name: str) -> nn.Dense:
            return nn.Dense(width, dtype=self.dtype, kernel_init=bert_init, name=name)

        q_BLHd = dense(D, "query")(x_BLD).reshape(B, L, H, dh)
        k_BLHd = dense(D, "key")(x_BLD).reshape(B, L, H, dh)
        v_BLD = dense(D, "value")(x_BLD)
        v_BLHd = v_BLD.reshape(B, L, H, dh)
        scores_BHLL = jnp.einsum("bqhd,bkhd->bhqk", q_BLHd, k_BLHd) / jnp.sqrt(dh).astype(
            q_BLHd.dtype
        )
        scores_BHLL = scores_BHLL.astype(jnp.float32)
        keep_B11L = mask_BL[:, None, None, :]
        scores_BHLL = jnp.where(keep_B11L, scores_BHLL, _NEG_INF)
        probs_BHLL = jax.nn.softmax(scores_BHLL, axis=-1)
        dropped = nn.Dropout(self.attention_dropout, deterministic=not train)(probs_BHLL)
        context_BLD = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v_BLHd.dtype), v_BLHd)
        context_BLD = context_BLD.reshape(B, L, D)
        attn_BLD = dense(D, "attention_output")(context_BLD)
        attn_BLD = nn.Dropout(self.dropout, deterministic=not train)(attn_BLD)
        ln = dict(epsilon=self.layer_norm_eps, dtype=self.dtype)
        x_BLD = nn.LayerNorm(**ln, name="attention_ln")(x_BLD + attn_BLD)
        ff_BLF = nn.gelu(dense(self.intermediate_size, "intermediate")(x_BLD), approximate=False)
        ff_BLD = dense(D, "output")(ff_BLF)
        ff_BLD = nn.Dropout(self.dropout, deterministic=not train)(ff_BLD)
        x_BLD = nn.LayerNorm(**ln, name="output_ln")(x_BLD + ff_BLD)
        return x_BLD, probs_BHLL, v_BLD


class Bert(nn.Module):
    """BERT encoder + pooler + classification head, sized by its attributes.

    Attributes:
        num_classes: number of output logits.
        vocab_size: token vocabulary (the tokenizer's).
        hidden_size: model width D.
        num_layers: number of transformer blocks.
        num_heads: attention heads (must divide `hidden_size`).
        intermediate_size: MLP width.
        max_position: number of learned position embeddings (>= sequence length).
        type_vocab_size: token-type (segment) embeddings; all tokens use type 0 here.
        layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).
        dropout: hidden dropout rate (embeddings, sublayer outputs, before the head).
        attention_dropout: dropout on attention probabilities.
        pad_id: the padding token id; positions holding it are masked.
        head_input: what feeds the classification head: `"pooled"` (BERT's tanh pooler
            on the first token), `"mean"` (mean over real tokens, sentence-transformers'
            pooling) or `"tokens"` (every token's last hidden state: `(B, L, C)` logits,
            a tagger).
        embedding_dim: if set, the mean-pooled sentence embedding is projected to this
            width by a linear layer (`embedding_projection`), e.g. a narrow student's
            embedding made comparable to its teacher's.
        init_from: Hugging Face BERT checkpoint dir or package name to initialise from
            (see `initial_params`); None for a random initialisation.
        init_layers: which checkpoint layers (0-based) initialise this model's blocks, one
            per block; None takes the first `num_layers` layers.
        dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_id: int = 0
    head_input: str = "pooled"
    embedding_dim: int | None = None
    init_from: str | None = None
    init_layers: Sequence[int] | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, train: bool = False) -> tuple[jax.Array, Features]:
        if input_ids_BL.ndim != 2:
            raise ValueError(f"Bert expects token ids of shape (B, L), got {input_ids_BL.shape}")
        if self.head_input not in ("pooled", "mean", "tokens"):
            raise ValueError(
                f"head_input must be 'pooled', 'mean' or 'tokens', got {self.head_input!r}"
            )
        ids_BL = input_ids_BL.astype(jnp.int32)
        B, L = ids_BL.shape
        if L > self.max_position:
            raise ValueError(f"sequence length {L} exceeds max_position {self.max_position}")
        mask_BL = ids_BL != self.pad_id
        features: Features = {"mask": mask_BL.astype(jnp.float32)}

        def embed(num: int, name: str) -> nn.Embed:
            return nn.Embed(num, self.hidden_size, embedding_init=bert_init, name=name)

        x_BLD = (
            embed(self.vocab_size, "word_embeddings")(ids_BL)
            + embed(self.max_position, "position_embeddings")(jnp.arange(L)[None, :])
            + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids_BL))
        ).astype(self.dtype)
        x_BLD = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="embeddings_ln")(
            x_BLD
        )
        x_BLD = nn.Dropout(self.dropout, deterministic=not train)(x_BLD)
        features["embeddings"] = x_BLD
        for i in range(1, self.num_layers + 1):
            x_BLD, probs_BHLL, v_BLD = BertLayer(
                num_heads=self.num_heads,
                intermediate_size=self.intermediate_size,
                layer_norm_eps=self.layer_norm_eps,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout,
                dtype=self.dtype,
                name=f"layer{i}",
            )(x_BLD, mask_BL, train)
            features[f"hidden{i}"] = x_BLD
            features[f"attention{i}"] = probs_BHLL
            features[f"values{i}"] = v_BLD
        pooled_BD = jnp.tanh(
            nn.Dense(self.hidden_size, dtype=self.dtype, kernel_init=bert_init, name="pooler")(
                x_BLD[:, 0]
            )
        )
        features["pooled"] = pooled_BD
        mean_BD = mean_pool(x_BLD, mask_BL)
        sentence_BE = mean_BD
        if self.embedding_dim is not None:
            sentence_BE = nn.Dense(
                self.embedding_dim, dtype=self.dtype, name="embedding_projection"
            )(mean_BD)
        features["sentence_embedding"] = sentence_BE
        pre_BD = {"pooled": pooled_BD, "mean": mean_BD, "tokens": x_BLD}[self.head_input]
        features["pre_logits"] = pre_BD
        pre_BD = nn.Dropout(self.dropout, deterministic=not train)(pre_BD)
        logits_BC = nn.Dense(
            self.num_classes, dtype=self.dtype, kernel_init=bert_init, name="head"
        )(pre_BD)
        return logits_BC, features

    def initial_params(self, params: Any) -> Any:
        """The parameters to start training from: `params` (a random initialisation of
        this module), with the encoder replaced by the `init_from` checkpoint if set.

        Raises:
            CheckpointError: the checkpoint lacks a tensor this model needs, holds one it
                does not expect, or one of the wrong shape (the message names it).
            ConfigError: `init_layers` or the model's sizes do not fit the checkpoint.
        """
        if self.init_from is None:
            return params
        from distill_jax.models import hf_bert

        return hf_bert.init_from_checkpoint(self, params)
