"""A Llama-family decoder-only language model (Touvron et al. 2023) with a KV cache.

`Llama` maps token ids `(B, L)` to `(logits_BLV, features)`: next-token logits at every
position. The architecture is Hugging Face's `LlamaForCausalLM`, so that converted weights
(`models/hf_llama.py`: a GGUF file or a Hugging Face directory) give the same numbers:

    token embedding -> num_layers x [x + Attn(RMSNorm(x)); x + MLP(RMSNorm(x))]
    -> RMSNorm -> LM head (the embedding transposed when `tie_embeddings`)

* RMSNorm: `x / sqrt(mean(x^2) + eps) * scale`, computed in float32.
* Attention: causal, grouped-query (`num_heads` query heads share `num_kv_heads` key/value
  heads; query head h reads key/value head `h // (num_heads // num_kv_heads)`, HF's
  `repeat_kv`), no biases, scaled by `1 / sqrt(head_dim)`.
* RoPE with base `rope_theta`, in HF's "rotate half" layout: dimension j of a head pairs
  with dimension `j + head_dim / 2` and rotates by `position * rope_theta^(-2j / head_dim)`.
  (llama.cpp's GGUF files store Q/K rows interleaved instead; the loader undoes that.)
* MLP: SwiGLU, `down(silu(gate(x)) * up(x))`.

Padding: `mask_BL` (optional; 1 for real tokens) removes padded keys from attention and
sets the positions to `cumsum(mask) - 1` (so a left-padded sequence sees the positions an
unpadded one would). Without it every token is real; right padding needs no mask at all,
since the causal mask already hides later positions from real tokens. A row whose keys
are all masked (a left-padding query) attends uniformly instead of producing NaNs, and
its outputs are meaningless: mask them in the loss. Any numeric input dtype is cast to
int32 (the pipeline's dummy inputs are float zeros).

Features (every name a feature-based loss can read):

| name         | shape     | what                                                  |
|--------------|-----------|-------------------------------------------------------|
| `mask`       | (B, L)    | float32 1 for real tokens, 0 for padding               |
| `embeddings` | (B, L, D) | token embeddings (HF's hidden_states[0])              |
| `layer_{i}`  | (B, L, D) | output of block i = 0..num_layers-1 (hidden_states[i+1]) |
| `pre_logits` | (B, L, D) | the final RMSNorm's output, the LM head's input       |

Decoding: `decode_step` runs `T` new tokens against a fixed-size KV cache (`init_cache`)
and returns their logits and the updated cache; `generate` (below) is the jit-compiled
prefill + `lax.while_loop` decode of a batch of left-padded prompts (greedy, temperature,
top-p), stopping each sequence at its EOS.

Pretrained initialisation: with `init_from` (a `.gguf` file, a Hugging Face Llama
directory, or a known checkpoint name such as `smollm2-135m-q4`) `initial_params` loads
the checkpoint (`hf_llama.init_from_checkpoint`); `init_layers` keeps only those teacher
layers (0-based), in that order: Minitron-style depth pruning.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError
from distill_jax.models.base import Features

_NEG_INF = -1e9  # additive mask: exp(-1e9 - max) == 0 exactly in float32, never NaN
llama_init = nn.initializers.normal(stddev=0.02)  # HF's initializer_range


class RMSNorm(nn.Module):
    """Root-mean-square LayerNorm without centring or bias (HF's `LlamaRMSNorm`): the
    statistics in float32, the result cast back to `dtype`."""

    eps: float = 1e-5
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        scale_D = self.param("scale", nn.initializers.ones, (x_BLD.shape[-1],), jnp.float32)
        x32 = x_BLD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale_D).astype(self.dtype)


def rope_cos_sin(
    positions_BL: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
    """RoPE's `cos, sin` tables `(B, L, head_dim)` (the half-width angles repeated twice,
    HF's layout), float32."""
    inv_freq_K = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BLK = positions_BL.astype(jnp.float32)[..., None] * inv_freq_K
    angles_BLE = jnp.concatenate([angles_BLK, angles_BLK], axis=-1)
    return jnp.cos(angles_BLE), jnp.sin(angles_BLE)


def apply_rope(x_BLHE: jax.Array, cos_BLE: jax.Array, sin_BLE: jax.Array) -> jax.Array:
    """Rotates each head's pairs `(j, j + E/2)`: `x * cos + rotate_half(x) * sin`."""
    half = x_BLHE.shape[-1] // 2
    x1, x2 = x_BLHE[..., :half], x_BLHE[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    x32 = x_BLHE.astype(jnp.float32)
    out = x32 * cos_BLE[:, :, None] + rotated.astype(jnp.float32) * sin_BLE[:, :, None]
    return out.astype(x_BLHE.dtype)


class LlamaBlock(nn.Module):
    """One pre-norm decoder block: grouped-query attention and a SwiGLU MLP, each with a
    residual connection.

    `__call__(x_BTD, cos, sin, bias_BTS, cache, cache_index)` attends the T queries to S
    keys: the T new ones (no cache, S = T), or all S slots of the cache after writing the
    new keys/values at slots `cache_index ..`. `bias_BTS` is the additive mask (0 or
    -1e9). Returns `(x_BTD, new_cache)` (`None` without a cache).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        cos_BTE: jax.Array,
        sin_BTE: jax.Array,
        bias_BTS: jax.Array,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        B, T, D = x_BTD.shape
        H, K, E = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // K

        def dense(width: int, name: str) -> nn.Dense:
            return nn.Dense(
                width, use_bias=False, dtype=self.dtype, kernel_init=llama_init, name=name
            )

        h_BTD = RMSNorm(self.rms_norm_eps, self.dtype, name="attn_norm")(x_BTD)
        q_BTHE = dense(H * E, "q")(h_BTD).reshape(B, T, H, E)
        k_BTKE = dense(K * E, "k")(h_BTD).reshape(B, T, K, E)
        v_BTKE = dense(K * E, "v")(h_BTD).reshape(B, T, K, E)
        q_BTHE = apply_rope(q_BTHE, cos_BTE, sin_BTE)
        k_BTKE = apply_rope(k_BTKE, cos_BTE, sin_BTE)
        new_cache = None
        if cache is not None:
            # Write the T new keys/values at slots index .. index + T - 1 of the fixed-size
            # cache, then attend to all its S slots (the bias hides the unused ones).
            start = (0, cache_index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(cache["k"], k_BTKE.astype(cache["k"].dtype), start)
            v_all = jax.lax.dynamic_update_slice(cache["v"], v_BTKE.astype(cache["v"].dtype), start)
            new_cache = {"k": k_all, "v": v_all}
            k_BSKE, v_BSKE = k_all.astype(self.dtype), v_all.astype(self.dtype)
        else:
            k_BSKE, v_BSKE = k_BTKE, v_BTKE
        # Grouped-query attention: query head h = k * G + g reads key/value head k.
        q_BTKGE = q_BTHE.reshape(B, T, K, G, E)
        scores_BKGTS = jnp.einsum("btkge,bske->bkgts", q_BTKGE, k_BSKE).astype(jnp.float32)
        scores_BKGTS = scores_BKGTS * (E**-0.5) + bias_BTS[:, None, None]
        probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(self.dtype)
        attn_BTKGE = jnp.einsum("bkgts,bske->btkge", probs_BKGTS, v_BSKE)
        x_BTD = x_BTD + dense(D, "o")(attn_BTKGE.reshape(B, T, H * E))
        h_BTD = RMSNorm(self.rms_norm_eps, self.dtype, name="mlp_norm")(x_BTD)
        gated_BTF = nn.silu(dense(self.intermediate_size, "gate")(h_BTD)) * dense(
            self.intermediate_size, "up"
        )(h_BTD)
        x_BTD = x_BTD + dense(D, "down")(gated_BTF)
        return x_BTD, new_cache


class Llama(nn.Module):
    """A Llama-family causal LM, sized by its attributes (defaults: SmolLM2-135M).

    Attributes:
        num_classes: 0 (the logits are over `vocab_size`), or `vocab_size` itself: the
            pipeline passes the dataset's vocabulary here, and any other number is a
            ConfigError naming both sizes (a student must share the teacher's vocabulary).
        vocab_size: V, the tokenizer's vocabulary; `create_model` sets it to the
            dataset's (`vocab_from_data`) when a config leaves it out.
        hidden_size: model width D.
        num_layers: number of decoder blocks.
        num_heads: query heads H (must divide `hidden_size` unless `head_dim` is set).
        num_kv_heads: key/value heads (must divide `num_heads`); `num_heads` is plain
            multi-head attention, fewer is grouped-query attention.
        intermediate_size: SwiGLU MLP width F.
        head_dim: E, the width of one attention head (even); None for
            `hidden_size // num_heads`. Set it when width pruning (`compress/lm_width.py`)
            removes hidden channels or key/value groups but keeps the heads' width (HF's
            LlamaConfig `head_dim`); the attention's projections are then `D x H*E`.
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        tie_embeddings: the LM head is the token embedding transposed (no `lm_head`).
        max_position: the longest sequence (prompt + generation) the model accepts.
        init_from: a `.gguf` file, a Hugging Face Llama directory or a known checkpoint
            name (`hf_llama.CHECKPOINTS`) to initialise from; None for random weights.
        init_layers: the checkpoint's layers (0-based) that initialise the blocks, one per
            block, in order; None takes the first `num_layers` (Minitron-style depth
            pruning keeps e.g. `(0, 10, 20, 29)` of a 30-layer teacher).
        dtype: computation dtype (`bfloat16` on accelerators); parameters, RMSNorm
            statistics, attention softmax and the logits stay float32.
    """

    num_classes: int = 0
    vocab_size: int = 49152
    hidden_size: int = 576
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    intermediate_size: int = 1536
    head_dim: int | None = None
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position: int = 8192
    init_from: str | None = None
    init_layers: Sequence[int] | None = None
    dtype: str = "float32"

    vocab_from_data = True  # not a field: `create_model` passes the data's vocabulary

    @property
    def head_size(self) -> int:
        """E, the width of one head: `head_dim`, or `hidden_size // num_heads` without it."""
        return self.hidden_size // self.num_heads if self.head_dim is None else self.head_dim

    def _check(self) -> None:
        if self.num_classes not in (0, self.vocab_size):
            raise ConfigError(
                f"llama: the data's vocabulary has {self.num_classes} tokens, the model's "
                f"vocab_size is {self.vocab_size}; they must be equal"
            )
        if self.head_dim is not None:
            if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int):
                raise ConfigError(f"llama: head_dim must be an even integer, got {self.head_dim!r}")
            if self.head_dim < 2 or self.head_dim % 2:
                raise ConfigError(f"llama: head_dim {self.head_dim} must be even and at least 2")
        elif self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"llama: hidden_size {self.hidden_size} must be num_heads {self.num_heads} "
                "times an even head dimension (or set head_dim)"
            )
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"llama: num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}"
            )

    def setup(self) -> None:
        self._check()
        self.embed = nn.Embed(
            self.vocab_size,
            self.hidden_size,
            embedding_init=llama_init,
            dtype=self.dtype,
            name="embed",
        )
        self.blocks = [
            LlamaBlock(
                num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads,
                head_dim=self.head_size,
                intermediate_size=self.intermediate_size,
                rms_norm_eps=self.rms_norm_eps,
                dtype=self.dtype,
                name=f"layer_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.final_norm = RMSNorm(self.rms_norm_eps, self.dtype, name="final_norm")
        if not self.tie_embeddings:
            self.lm_head = nn.Dense(
                self.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=llama_init,
                name="lm_head",
            )

    def _logits(self, h_BLD: jax.Array) -> jax.Array:
        """LM head, float32 logits `(B, L, V)`."""
        if self.tie_embeddings:
            return self.embed.attend(h_BLD).astype(jnp.float32)
        return self.lm_head(h_BLD).astype(jnp.float32)

    def __call__(
        self, input_ids_BL: jax.Array, train: bool = False, mask_BL: jax.Array | None = None
    ) -> tuple[jax.Array, Features]:
        """Full causal forward.

        Args:
            input_ids_BL: token ids `(B, L)`.
            train: unused (no dropout); kept for the models' common signature.
            mask_BL: optional, 1 for real tokens and 0 for padding (left or right).

        Returns:
            `(logits_BLV, features)`: float32 next-token logits at every position and the
            features of the module docstring.
        """
        del train
        if input_ids_BL.ndim != 2:
            raise ValueError(f"Llama expects token ids of shape (B, L), got {input_ids_BL.shape}")
        ids_BL = input_ids_BL.astype(jnp.int32)
        B, L = ids_BL.shape
        if L > self.max_position:
            raise ValueError(f"sequence length {L} exceeds max_position {self.max_position}")
        valid_BL = jnp.ones((B, L), bool) if mask_BL is None else mask_BL.astype(bool)
        positions_BL = positions_from_mask(valid_BL)
        causal_LL = jnp.tril(jnp.ones((L, L), bool))
        allowed_BLL = causal_LL[None] & valid_BL[:, None, :]
        bias_BLL = jnp.where(allowed_BLL, 0.0, _NEG_INF).astype(jnp.float32)
        cos, sin = rope_cos_sin(positions_BL, self.head_size, self.rope_theta)
        x_BLD = self.embed(ids_BL).astype(self.dtype)
        features: Features = {"mask": valid_BL.astype(jnp.float32), "embeddings": x_BLD}
        for i, block in enumerate(self.blocks):
            x_BLD, _ = block(x_BLD, cos, sin, bias_BLL)
            features[f"layer_{i}"] = x_BLD
        h_BLD = self.final_norm(x_BLD)
        features["pre_logits"] = h_BLD
        return self._logits(h_BLD), features

    def init_cache(self, batch: int, length: int, dtype: Any = jnp.float32) -> list[dict]:
        """An empty KV cache of `length` slots: per block `{"k", "v"}` arrays
        `(B, S, num_kv_heads, head_dim)` (a plain pytree, not a Flax collection)."""
        shape = (batch, length, self.num_kv_heads, self.head_size)
        return [
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(self.num_layers)
        ]

    def decode_step(
        self,
        input_ids_BT: jax.Array,
        positions_BT: jax.Array,
        cache: list[dict],
        cache_index: jax.Array,
        key_valid_BS: jax.Array,
    ) -> tuple[jax.Array, list[dict]]:
        """Runs T new tokens against the KV cache.

        The tokens' keys/values are written at cache slots `cache_index .. cache_index +
        T - 1`; query t (slot `cache_index + t`) attends the slots `s <= cache_index + t`
        whose `key_valid_BS[:, s]` is set (the caller marks the new slots valid).

        Args:
            input_ids_BT: the new token ids `(B, T)` (T = prompt length for the prefill,
                1 per decoding step).
            positions_BT: their RoPE positions.
            cache: from `init_cache` or a previous call.
            cache_index: int32 scalar, the first slot to write.
            key_valid_BS: bool `(B, S)`, which cache slots hold real tokens (after this
                call's writes).

        Returns:
            `(logits_BTV, cache)`: float32 next-token logits and the updated cache.
        """
        ids_BT = input_ids_BT.astype(jnp.int32)
        T = ids_BT.shape[1]
        S = key_valid_BS.shape[1]
        slots_T = cache_index + jnp.arange(T)
        causal_TS = jnp.arange(S)[None, :] <= slots_T[:, None]
        allowed_BTS = causal_TS[None] & key_valid_BS[:, None, :]
        bias_BTS = jnp.where(allowed_BTS, 0.0, _NEG_INF).astype(jnp.float32)
        cos, sin = rope_cos_sin(positions_BT, self.head_size, self.rope_theta)
        x_BTD = self.embed(ids_BT).astype(self.dtype)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x_BTD, layer_cache = block(x_BTD, cos, sin, bias_BTS, layer_cache, cache_index)
            new_cache.append(layer_cache)
        return self._logits(self.final_norm(x_BTD)), new_cache

    def initial_params(self, params: Any) -> Any:
        """The parameters to start training from: `params` (a random initialisation of
        this module), replaced by the `init_from` checkpoint's if set.

        Raises:
            CheckpointError: the checkpoint lacks a tensor this model needs, holds one it
                does not expect, or one of the wrong shape (the message names it).
            ConfigError: the model's sizes or `init_layers` do not fit the checkpoint.
        """
        if self.init_from is None:
            return params
        from distill_jax.models import hf_llama

        return hf_llama.init_from_checkpoint(self, params)


def positions_from_mask(valid_BL: jax.Array) -> jax.Array:
    """RoPE positions `(B, L)` int32: the number of real tokens before each one (padding
    positions get 0)."""
    return jnp.maximum(jnp.cumsum(valid_BL.astype(jnp.int32), axis=1) - 1, 0)


# ---------------------------------------------------------------------------------------
# Generation: prefill + lax.while_loop decode with a fixed-size cache.
# ---------------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Any, Any]:
    """Token-id lists -> `(ids_BP, mask_BP)` int32 NumPy arrays, left-padded to the longest
    (the layout `generate` takes: every prompt ends at the last column)."""
    import numpy as np

    if not prompts or min(len(p) for p in prompts) == 0:
        raise ConfigError("generate needs at least one prompt, each of at least one token")
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), pad_id, np.int32)
    mask = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = p
        mask[i, P - len(p) :] = 1
    return ids, mask


def sample_token(
    logits_BV: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Next token ids `(B,)`: argmax when `temperature` is 0, else a sample from
    `softmax(logits / temperature)` restricted to the smallest set of most likely tokens
    whose probability reaches `top_p` (nucleus sampling; the most likely token is always
    kept)."""
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)

    def nucleus(scaled: jax.Array) -> jax.Array:
        order_BV = jnp.argsort(-scaled, axis=-1)
        sorted_BV = jnp.take_along_axis(scaled, order_BV, axis=-1)
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass strictly above
        keep_sorted_BV = before_BV < top_p
        keep_BV = (
            jnp.zeros_like(keep_sorted_BV)
            .at[jnp.arange(scaled.shape[0])[:, None], order_BV]
            .set(keep_sorted_BV)
        )
        return jnp.where(keep_BV, scaled, -jnp.inf)

    filtered_BV = jax.lax.cond(top_p < 1.0, nucleus, lambda s: s, scaled_BV)
    sampled_B = jax.random.categorical(key, filtered_BV, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled_B, greedy_B)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "cache_dtype"))
def generate(
    model: Llama,
    params: Any,
    prompt_BP: jax.Array,
    prompt_mask_BP: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
    cache_dtype: Any = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Continues a batch of left-padded prompts (`left_pad`), compiled end to end.

    The prompts run in one prefill pass that fills the KV cache (P + `max_new_tokens`
    slots); then a `lax.while_loop` feeds one token per step until every sequence has
    produced `eos_id` or `max_new_tokens` tokens. Each sequence stops at its own EOS.

    Args:
        model: the module (static: one compilation per model configuration).
        params: its parameters.
        prompt_BP: left-padded prompt ids `(B, P)`; every prompt ends at column P - 1.
        prompt_mask_BP: 1 for the prompts' tokens, 0 for the padding on their left.
        max_new_tokens: N, the most new tokens per sequence.
        eos_id: the end-of-sequence id (included in the output when produced).
        pad_id: what fills the output after a sequence's end.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: nucleus sampling threshold (1: the whole distribution).
        key: PRNG key for sampling (unused when greedy).
        cache_dtype: dtype of the KV cache.

    Returns:
        `(tokens_BN, lengths_B)`: the new tokens (int32, `pad_id` after each sequence's
        end) and how many were generated (EOS included).
    """
    B, P = prompt_BP.shape
    S = P + max_new_tokens
    key = jax.random.key(0) if key is None else key
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    variables = {"params": params}
    mask_BP = prompt_mask_BP.astype(bool)
    cache = model.init_cache(B, S, cache_dtype)
    valid_BS = jnp.zeros((B, S), bool).at[:, :P].set(mask_BP)
    logits_BPV, cache = model.apply(
        variables,
        prompt_BP,
        positions_from_mask(mask_BP),
        cache,
        jnp.int32(0),
        valid_BS,
        method=Llama.decode_step,
    )
    lengths_B = jnp.sum(mask_BP, axis=1, dtype=jnp.int32)  # next position of each sequence
    key, sub = jax.random.split(key)
    first_B = sample_token(logits_BPV[:, -1], sub, temperature, top_p)
    tokens_BN = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B)
    done_B = first_B == eos_id
    generated_B = jnp.ones((B,), jnp.int32)

    def cond(state):
        step, _, _, _, done_B, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
        step, cache, valid_BS, tokens_BN, done_B, generated_B, key = state
        slot = P + step - 1  # the slot of the token fed now (generated at step - 1)
        valid_BS = jax.lax.dynamic_update_slice(valid_BS, jnp.ones((B, 1), bool), (0, slot))
        positions_B1 = (lengths_B + step - 1)[:, None]
        logits_B1V, cache = model.apply(
            variables,
            tokens_BN[:, step - 1][:, None],
            positions_B1,
            cache,
            slot,
            valid_BS,
            method=Llama.decode_step,
        )
        key, sub = jax.random.split(key)
        next_B = sample_token(logits_B1V[:, 0], sub, temperature, top_p)
        next_B = jnp.where(done_B, pad_id, next_B)
        tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, next_B[:, None], (0, step))
        generated_B = generated_B + (~done_B).astype(jnp.int32)
        done_B = done_B | (next_B == eos_id)
        return step + 1, cache, valid_BS, tokens_BN, done_B, generated_B, key

    state = (jnp.int32(1), cache, valid_BS, tokens_BN, done_B, generated_B, key)
    _, _, _, tokens_BN, _, generated_B, _ = jax.lax.while_loop(cond, body, state)
    return tokens_BN, generated_B
