"""A linear-chain CRF over tag sequences (Lafferty et al. 2001; the BiLSTM-CRF tagger of
Lample et al. 2016, "Neural Architectures for Named Entity Recognition", section 2.2).

The score of tags `y_1 .. y_n` given per-position emissions `e` (a tagger's logits) is

    s(y) = start[y_1] + sum_i e_i[y_i] + sum_{i>1} T[y_{i-1}, y_i] + end[y_n],

and `p(y) = exp(s(y)) / Z` with `log Z = logsumexp over all C^n sequences`, computed by the
forward algorithm in `O(n C^2)`. The sequence is the *kept* positions of a row (`mask_BL`
True), in order, so a WordPiece row whose tags sit on first sub-tokens only is the chain of
its words: masked positions in between ([CLS], later sub-tokens, padding) are skipped, not
treated as a tag. A row with no kept position has `log Z = s = 0`.

Pure functions of arrays (float32, from `logsumexp`); not yet wired into the trainer as a
model head (see the README's NER section): `crf_nll` is the training loss, `crf_decode`
the Viterbi decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from distill_jax.losses.base import to_float32


def _scan_positions(fn, init, *xs_BL):
    """`lax.scan` of `fn` over the position axis of `(B, L, ...)` arrays."""
    return jax.lax.scan(fn, init, tuple(jnp.moveaxis(x, 1, 0) for x in xs_BL))


def crf_log_partition(
    emissions_BLC: jax.Array,
    mask_BL: jax.Array,
    transitions_CC: jax.Array,
    start_C: jax.Array,
    end_C: jax.Array,
) -> jax.Array:
    """`log Z` per row `(B,)`: the forward algorithm over each row's kept positions."""
    e_BLC = to_float32(emissions_BLC)
    B, _, C = e_BLC.shape

    def step(carry, x):
        alpha_BC, started_B = carry
        e_BC, keep_B = x
        first_BC = start_C[None] + e_BC
        nxt_BC = jax.nn.logsumexp(alpha_BC[:, :, None] + transitions_CC[None], axis=1) + e_BC
        new_BC = jnp.where(started_B[:, None], nxt_BC, first_BC)
        alpha_BC = jnp.where(keep_B[:, None], new_BC, alpha_BC)
        return (alpha_BC, started_B | keep_B), None

    init = (jnp.zeros((B, C), e_BLC.dtype), jnp.zeros((B,), bool))
    (alpha_BC, started_B), _ = _scan_positions(step, init, e_BLC, mask_BL.astype(bool))
    return jnp.where(started_B, jax.nn.logsumexp(alpha_BC + end_C[None], axis=-1), 0.0)


def crf_sequence_score(
    emissions_BLC: jax.Array,
    tags_BL: jax.Array,
    mask_BL: jax.Array,
    transitions_CC: jax.Array,
    start_C: jax.Array,
    end_C: jax.Array,
) -> jax.Array:
    """`s(y)` per row `(B,)` of the tags at the kept positions (others ignored)."""
    e_BLC = to_float32(emissions_BLC)
    B = e_BLC.shape[0]
    keep_BL = mask_BL.astype(bool)
    safe_BL = jnp.where(keep_BL, tags_BL, 0)
    emit_BL = jnp.take_along_axis(e_BLC, safe_BL[..., None], axis=-1)[..., 0]

    def step(carry, x):
        score_B, prev_B, started_B = carry
        emit_B, tag_B, keep_B = x
        link_B = jnp.where(started_B, transitions_CC[prev_B, tag_B], start_C[tag_B])
        score_B = score_B + jnp.where(keep_B, emit_B + link_B, 0.0)
        prev_B = jnp.where(keep_B, tag_B, prev_B)
        return (score_B, prev_B, started_B | keep_B), None

    init = (jnp.zeros((B,), e_BLC.dtype), jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool))
    (score_B, last_B, started_B), _ = _scan_positions(step, init, emit_BL, safe_BL, keep_BL)
    return score_B + jnp.where(started_B, end_C[last_B], 0.0)


def crf_nll(
    emissions_BLC: jax.Array,
    tags_BL: jax.Array,
    mask_BL: jax.Array,
    transitions_CC: jax.Array,
    start_C: jax.Array,
    end_C: jax.Array,
) -> jax.Array:
    """Mean over rows with a kept position of `log Z - s(y)` (the negative log-likelihood)."""
    log_z_B = crf_log_partition(emissions_BLC, mask_BL, transitions_CC, start_C, end_C)
    score_B = crf_sequence_score(emissions_BLC, tags_BL, mask_BL, transitions_CC, start_C, end_C)
    rows_B = jnp.any(mask_BL.astype(bool), axis=1)
    return jnp.sum(jnp.where(rows_B, log_z_B - score_B, 0.0)) / jnp.maximum(jnp.sum(rows_B), 1)


def crf_decode(
    emissions_BLC: jax.Array,
    mask_BL: jax.Array,
    transitions_CC: jax.Array,
    start_C: jax.Array,
    end_C: jax.Array,
) -> jax.Array:
    """The highest-scoring tags (Viterbi) `(B, L)` int32; -1 at positions not kept."""
    e_BLC = to_float32(emissions_BLC)
    B, _, C = e_BLC.shape
    keep_BL = mask_BL.astype(bool)
    identity_BC = jnp.broadcast_to(jnp.arange(C), (B, C))

    def forward(carry, x):
        delta_BC, started_B = carry
        e_BC, keep_B = x
        cand_BCC = delta_BC[:, :, None] + transitions_CC[None]  # (previous, current)
        nxt_BC = jnp.max(cand_BCC, axis=1) + e_BC
        back_BC = jnp.argmax(cand_BCC, axis=1).astype(jnp.int32)
        new_BC = jnp.where(started_B[:, None], nxt_BC, start_C[None] + e_BC)
        # Skipped positions and a row's first kept one point back to themselves.
        back_BC = jnp.where((keep_B & started_B)[:, None], back_BC, identity_BC)
        delta_BC = jnp.where(keep_B[:, None], new_BC, delta_BC)
        return (delta_BC, started_B | keep_B), back_BC

    init = (jnp.zeros((B, C), e_BLC.dtype), jnp.zeros((B,), bool))
    (delta_BC, _), back_LBC = _scan_positions(forward, init, e_BLC, keep_BL)
    last_B = jnp.argmax(delta_BC + end_C[None], axis=-1).astype(jnp.int32)

    def backward(cur_B, x):
        back_BC, keep_B = x
        out_B = jnp.where(keep_B, cur_B, -1)
        cur_B = jnp.take_along_axis(back_BC, cur_B[:, None], axis=1)[:, 0]
        return cur_B, out_B

    _, tags_LB = jax.lax.scan(
        backward, last_B, (back_LBC, jnp.moveaxis(keep_BL, 1, 0)), reverse=True
    )
    return jnp.moveaxis(tags_LB, 0, 1)
