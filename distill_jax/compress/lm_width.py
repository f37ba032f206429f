"""Minitron-style width pruning of a Llama decoder, after optional depth pruning.

Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"
(Minitron): a student is cut out of the teacher, then healed by distillation. Depth
pruning keeps a subset of the teacher's blocks (`depth_prune`, the same as a student's
`init_layers`); width pruning, here, removes the least important units of three axes, each
ranked by its activations on a few calibration sequences (one forward pass, no
gradients):

* **MLP neurons** (`intermediate_size`): neuron j of block i is scored by the SwiGLU
  intermediate activation `silu(h W_gate)_j * (h W_up)_j`, the input of `down`.
* **Attention, whole key/value groups** (`num_kv_heads`): query head h is scored by the
  L2 norm, over its `head_dim` dimensions, of its attention output (the input of `o`,
  before o_proj); a group's score is the sum of the scores of its G = H / K query heads.
  Removing a group removes its key/value head together with its G query heads, so
  grouped-query attention stays valid (G unchanged, `num_heads` = G x `num_kv_heads`).
  (Minitron's reference implementation prunes query heads inside every group instead;
  whole groups are what shrinks the KV cache.)
* **Embedding (hidden) channels** (`hidden_size`): channel c is scored by the outputs of
  every RMSNorm (the attention and MLP input norms of every block and the final norm):
  each norm's score of c, summed over the 2N + 1 norms.

**Aggregation.** For an activation `a[b, s, u]` (calibration row b, position s, unit u):
`score[u] = sqrt(sum_b (mean_s |a[b, s, u]|)^2)`: the mean over the sequence, then the
L2 norm over the batch, the combination Minitron's aggregation study finds best for width
pruning ("batch = L2, seq = mean"). The paper's equations sum the raw activations; like
NVIDIA's reference implementation (Model Optimizer's Minitron hooks) we take the absolute
value before the sequence mean, so that a neuron's positive and negative activations do
not cancel. The sequence mean runs over real tokens only (the mask), and the scores are
accumulated in float64 over batches of rows (the squares summed, the root taken last), so
they do not depend on the batch size.

**Keeping.** Every block keeps its `intermediate_size` highest-scoring neurons and its
`num_kv_heads` highest-scoring groups (per block, so all blocks keep one width, as a
`Llama` config has); the residual stream keeps the `hidden_size` highest-scoring channels,
the same ones in every tensor. Ties go to the lower index, and kept units stay in their
original order. Every hidden-size tensor is sliced consistently: the embedding's columns
(and the untied head's rows), the scales of all RMSNorms, the input rows of q / k / v /
gate / up, the output columns of o / down.

**head_dim is fixed.** RoPE rotates dimension pairs `(j, j + E/2)` inside a head and the
scores are scaled by `1 / sqrt(E)`, so width pruning never changes a head's width E. When
`hidden_size / num_heads` no longer equals E, the pruned model carries an explicit
`head_dim` (the `Llama` field; LlamaConfig's `head_dim` in config.json).

**What is exact, what is approximate.** Removing MLP neurons or key/value groups gives
exactly the *masked* model (the original with those units' outputs set to zero): units
whose activation is exactly zero are removed without changing the logits. Removing hidden
channels does not: RMSNorm divides by the root mean square over all D channels, and the
pruned model's mean runs over the D' kept ones, so every norm's output changes (by about
sqrt(D' / D) in scale, more where removed channels carried energy). The pruned model is
therefore not equal to a masked one and its perplexity before healing says little about
the final student: Minitron heals it by distillation from the teacher (`distill` with
`init_from` the written directory).

**Output.** `prune_width` returns the pruned model's `Llama` keyword arguments and
parameters; `write_pruned` writes them as a Hugging Face Llama directory (`config.json`
with `head_dim`, `model.safetensors` in `LlamaForCausalLM`'s names, the tokenizer), which
a student loads with `init_from` (`models/hf_llama.py`); `prune_checkpoint` is the
`distill-jax prune-width` command (depth, then width, then the directory, with the
calibration perplexity of each model).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.errors import ConfigError
from distill_jax.losses.lm import token_cross_entropy
from distill_jax.models.llama import Llama, RMSNorm
from distill_jax.report import replace_dir

SIZES = ("intermediate_size", "num_kv_heads", "hidden_size")
"""The widths `prune_width` can reduce (`Llama` fields)."""
FLAGS = {
    "intermediate_size": "--intermediate_size",
    "num_kv_heads": "--kv_heads",
    "hidden_size": "--hidden_size",
}
"""The command line's name of each size."""
REPORT_FILE = "pruning.json"


# ---------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_llama(module: Any) -> None:
    """Raises `ConfigError` unless `module` is a `Llama`."""
    if not isinstance(module, Llama):
        raise ConfigError(
            f"width pruning supports Llama-family decoders (model 'llama'); got "
            f"{type(module).__name__}"
        )


def check_sizes(
    module: Llama, sizes: Mapping[str, int | None], names: Mapping[str, str] | None = None
) -> None:
    """Raises `ConfigError` (one line, naming the setting and both values) unless every
    given size is an integer between 1 and the model's current one.

    Args:
        module: the model to prune.
        sizes: `SIZES` -> the requested width (None: keep).
        names: how to call each size in messages (the CLI passes `FLAGS`).
    """
    check_llama(module)
    names = names or {}
    for key, value in sizes.items():
        if key not in SIZES:
            raise ConfigError(f"width pruning cannot set {key!r}; it sets {', '.join(SIZES)}")
        if value is None:
            continue
        current = getattr(module, key)
        name = names.get(key, key)
        if not _is_int(value) or not 1 <= value <= current:
            raise ConfigError(
                f"{name} {value!r} must be an integer between 1 and the model's {key} {current}"
            )


def check_layers(module: Llama, layers: Sequence[int]) -> list[int]:
    """The blocks to keep, checked against the model's `num_layers` (one-line ConfigError)."""
    layers = list(layers)
    bad = [i for i in layers if not _is_int(i) or not 0 <= i < module.num_layers]
    if not layers or bad:
        raise ConfigError(
            f"layers {tuple(layers)} must name blocks of the model, which has layers "
            f"0..{module.num_layers - 1}"
        )
    return [int(i) for i in layers]


def _check_tokens(module: Llama, tokens: Any) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(
            f"calibration tokens must be integer ids of shape (sequences, length), got "
            f"{tokens.dtype} {tokens.shape}"
        )
    if tokens.shape[1] > module.max_position:
        raise ConfigError(
            f"calibration sequences of {tokens.shape[1]} tokens exceed the model's "
            f"max_position {module.max_position}"
        )
    if tokens.min() < 0 or tokens.max() >= module.vocab_size:
        raise ConfigError(
            f"calibration token ids must be in [0, {module.vocab_size}) (the model's "
            f"vocab_size), got {tokens.min()}..{tokens.max()}"
        )
    return tokens.astype(np.int32)


# ---------------------------------------------------------------------------------------
# Depth pruning.
# ---------------------------------------------------------------------------------------


def depth_prune(module: Llama, params: Any, layers: Sequence[int]) -> tuple[Llama, dict]:
    """Keeps the blocks `layers` (0-based, in that order): `(module, params)` of the
    shallower model (what a student's `init_layers` does when it loads a checkpoint)."""
    check_llama(module)
    layers = check_layers(module, layers)
    new = {k: v for k, v in params.items() if not k.startswith("layer_")}
    for i, src in enumerate(layers):
        new[f"layer_{i}"] = params[f"layer_{src}"]
    smaller = module.clone(parent=None, num_layers=len(layers), init_from=None, init_layers=None)
    return smaller, new


# ---------------------------------------------------------------------------------------
# Activation statistics on calibration batches.
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("module",))
def _batch_statistics(
    module: Llama, params: Any, ids_BL: jax.Array, mask_BL: jax.Array, targets_BL: jax.Array
) -> dict[str, jax.Array]:
    """One batch's per-row sequence means of |activation| and its NLL sum.

    The activations are read with a method interceptor: the inputs of every block's `o`
    (attention output per head) and `down` (SwiGLU intermediate), the outputs of every
    RMSNorm; the model's code is not changed for this.
    """
    acts: dict[tuple[str, ...], jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            path = tuple(context.module.path)
            if isinstance(context.module, nn.Dense) and path[-1] in ("o", "down"):
                acts[path] = args[0]
            elif isinstance(context.module, RMSNorm):
                acts[path] = out
        return out

    with nn.intercept_methods(interceptor):
        logits_BLV, _ = module.apply({"params": params}, ids_BL)
    B, L = ids_BL.shape
    m_BL = mask_BL.astype(jnp.float32)
    real_B = jnp.maximum(jnp.sum(m_BL, axis=1), 1.0)

    def seq_mean(a_BLU: jax.Array) -> jax.Array:  # mean over real tokens of |a|, (B, U)
        return jnp.einsum("blu,bl->bu", jnp.abs(a_BLU.astype(jnp.float32)), m_BL) / real_B[:, None]

    N, H, E = module.num_layers, module.num_heads, module.head_size
    mlp_NBF = jnp.stack([seq_mean(acts[(f"layer_{i}", "down")]) for i in range(N)])
    heads = []
    for i in range(N):
        attn_BLHE = acts[(f"layer_{i}", "o")].astype(jnp.float32).reshape(B, L, H, E)
        heads.append(seq_mean(jnp.sqrt(jnp.sum(attn_BLHE * attn_BLHE, axis=-1))))
    norm_paths = [(f"layer_{i}", n) for i in range(N) for n in ("attn_norm", "mlp_norm")]
    norms_MBD = jnp.stack([seq_mean(acts[p]) for p in [*norm_paths, ("final_norm",)]])
    valid_BL = targets_BL >= 0
    nll_BL = token_cross_entropy(logits_BLV, targets_BL)  # in vocab chunks, float32
    return {
        "mlp": mlp_NBF,
        "heads": jnp.stack(heads),
        "norms": norms_MBD,
        "nll": jnp.sum(jnp.where(valid_BL, nll_BL, 0.0)),
        "targets": jnp.sum(valid_BL),
    }


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What one pass over the calibration sequences measured.

    Attributes:
        importance: per-unit scores (`importance`'s dict).
        nll: summed next-token negative log-likelihood (nats) over the target tokens.
        targets: the number of target tokens.
    """

    importance: dict[str, np.ndarray]
    nll: float
    targets: int

    @property
    def perplexity(self) -> float:
        """`exp(nll / targets)`, token-weighted over all sequences."""
        return math.exp(self.nll / max(self.targets, 1))


def calibrate(
    module: Llama,
    params: Any,
    tokens: Any,
    *,
    labels: Any = None,
    mask: Any = None,
    batch_size: int = 8,
) -> Calibration:
    """Runs the calibration sequences through the model: importance scores and NLL.

    Args:
        module: a `Llama`.
        params: its parameters.
        tokens: token ids `(S, L)`.
        labels: `(S, L)` causal-LM labels (`tasks.CausalLM`: the ids where a token is a
            target, -1 where not; position t predicts `labels[t + 1]`). Default: every
            real token is a target.
        mask: `(S, L)` 1 for real tokens, 0 for padding (right padding: the model runs
            without a mask). Default: `labels >= 0` with labels, else all ones.
        batch_size: rows per forward pass (the last batch is padded with masked rows, so
            one compilation serves all).

    Returns:
        A `Calibration` (importance scores, NLL sum and target count).
    """
    from distill_jax.tasks import CausalLM

    check_llama(module)
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    tokens = _check_tokens(module, tokens)
    S, L = tokens.shape
    if mask is None:
        mask = np.ones((S, L), bool) if labels is None else np.asarray(labels) >= 0
    mask = np.asarray(mask).astype(bool)
    if labels is None:
        labels = np.where(mask, tokens, -1)
    labels = np.asarray(labels, np.int32)
    if mask.shape != tokens.shape or labels.shape != tokens.shape:
        raise ConfigError(
            f"calibration tokens {tokens.shape}, labels {labels.shape} and mask {mask.shape} "
            "must have one shape"
        )
    targets = np.asarray(CausalLM.next_token_targets(labels), np.int32)
    B = min(batch_size, S)
    N, H, K, D = module.num_layers, module.num_heads, module.num_kv_heads, module.hidden_size
    sq_mlp = np.zeros((N, module.intermediate_size))
    sq_heads = np.zeros((N, H))
    sq_norms = np.zeros((2 * N + 1, D))
    nll, count = 0.0, 0
    for start in range(0, S, B):
        rows = slice(start, min(start + B, S))
        n = rows.stop - rows.start
        pad = ((0, B - n), (0, 0))
        stats = _batch_statistics(
            module,
            params,
            np.pad(tokens[rows], pad),
            np.pad(mask[rows], pad),
            np.pad(targets[rows], pad, constant_values=-1),
        )
        stats = jax.device_get(stats)
        sq_mlp += np.square(np.asarray(stats["mlp"], np.float64)).sum(axis=1)
        sq_heads += np.square(np.asarray(stats["heads"], np.float64)).sum(axis=1)
        sq_norms += np.square(np.asarray(stats["norms"], np.float64)).sum(axis=1)
        nll += float(stats["nll"])
        count += int(stats["targets"])
    heads = np.sqrt(sq_heads)
    importance = {
        "mlp": np.sqrt(sq_mlp),
        "heads": heads,
        "kv_groups": heads.reshape(N, K, H // K).sum(axis=-1),
        "norms": np.sqrt(sq_norms),
        "hidden": np.sqrt(sq_norms).sum(axis=0),
    }
    return Calibration(importance=importance, nll=nll, targets=count)


def importance(
    module: Llama, params: Any, tokens: Any, *, mask: Any = None, batch_size: int = 8
) -> dict[str, np.ndarray]:
    """Per-unit activation importance on calibration token ids `(S, L)` (module docstring).

    Returns:
        `{"mlp": (N, F), "heads": (N, H), "kv_groups": (N, K), "norms": (2N + 1, D),
        "hidden": (D,)}` float64: MLP neurons, query heads, key/value groups (the sum of
        their query heads), each RMSNorm's channel scores (block i's attention norm at
        row 2i, its MLP norm at 2i + 1, the final norm last) and their sum, the hidden
        channels' score.
    """
    return calibrate(module, params, tokens, mask=mask, batch_size=batch_size).importance


def perplexity(
    module: Llama, params: Any, tokens: Any, *, labels: Any = None, batch_size: int = 8
) -> float:
    """Token-weighted next-token perplexity of the model on `tokens` (see `calibrate`)."""
    return calibrate(module, params, tokens, labels=labels, batch_size=batch_size).perplexity


# ---------------------------------------------------------------------------------------
# Keeping and slicing.
# ---------------------------------------------------------------------------------------


def _top(score: np.ndarray, n: int) -> np.ndarray:
    """The `n` highest scores' indices, ties to the lower index, in ascending order."""
    return np.sort(np.argsort(-np.asarray(score), kind="stable")[:n])


def kept_units(
    module: Llama,
    scores: Mapping[str, np.ndarray],
    *,
    intermediate_size: int | None = None,
    num_kv_heads: int | None = None,
    hidden_size: int | None = None,
) -> dict[str, np.ndarray]:
    """The units to keep: `{"mlp": (N, F'), "kv_groups": (N, K'), "hidden": (D',)}` int
    indices (sorted), all units of an axis whose size is None.

    Raises:
        ConfigError: a size that is not between 1 and the model's (see `check_sizes`).
    """
    sizes = {
        "intermediate_size": intermediate_size,
        "num_kv_heads": num_kv_heads,
        "hidden_size": hidden_size,
    }
    check_sizes(module, sizes)
    N = module.num_layers
    F = module.intermediate_size if intermediate_size is None else intermediate_size
    K = module.num_kv_heads if num_kv_heads is None else num_kv_heads
    D = module.hidden_size if hidden_size is None else hidden_size
    return {
        "mlp": np.stack([_top(scores["mlp"][i], F) for i in range(N)]),
        "kv_groups": np.stack([_top(scores["kv_groups"][i], K) for i in range(N)]),
        "hidden": _top(scores["hidden"], D),
    }


def pruned_kwargs(module: Llama, hidden_size: int, num_kv_heads: int, intermediate_size: int):
    """The `Llama` keyword arguments of `module` at the given widths (`num_heads` follows
    the groups; `head_dim` is set where `hidden_size / num_heads` is not the head width)."""
    from distill_jax.models import hf_llama

    num_heads = num_kv_heads * (module.num_heads // module.num_kv_heads)
    cfg = {
        **{k: v for k, v in hf_llama.config_of(module).items() if k != "head_dim"},
        "hidden_size": hidden_size,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
    }
    return hf_llama.with_head_dim(cfg, module.head_size)


def shrink(
    module: Llama, params: Any, kept: Mapping[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The smaller dense model: its `Llama` keyword arguments and parameters (NumPy,
    float32), sliced to `kept` (`kept_units`; a missing or None entry keeps every unit).
    """
    check_llama(module)
    N, H, K, E = module.num_layers, module.num_heads, module.num_kv_heads, module.head_size
    G = H // K
    hid = kept.get("hidden")
    hid = np.arange(module.hidden_size) if hid is None else np.asarray(hid)
    mlp = kept.get("mlp")
    groups = kept.get("kv_groups")

    def a(x: Any) -> np.ndarray:
        return np.asarray(x, np.float32)

    def sub(x: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a(x)[np.ix_(rows, cols)])

    new: dict[str, Any] = {
        "embed": {"embedding": np.ascontiguousarray(a(params["embed"]["embedding"])[:, hid])}
    }
    widths: set[tuple[int, int]] = set()
    for i in range(N):
        p = params[f"layer_{i}"]
        f = np.arange(module.intermediate_size) if mlp is None else np.asarray(mlp[i])
        g = np.arange(K) if groups is None else np.asarray(groups[i])
        widths.add((f.size, g.size))
        heads = (g[:, None] * G + np.arange(G)).reshape(-1)  # query head h = k * G + j
        q_cols = (heads[:, None] * E + np.arange(E)).reshape(-1)
        kv_cols = (g[:, None] * E + np.arange(E)).reshape(-1)
        new[f"layer_{i}"] = {
            "attn_norm": {"scale": a(p["attn_norm"]["scale"])[hid]},
            "q": {"kernel": sub(p["q"]["kernel"], hid, q_cols)},
            "k": {"kernel": sub(p["k"]["kernel"], hid, kv_cols)},
            "v": {"kernel": sub(p["v"]["kernel"], hid, kv_cols)},
            "o": {"kernel": sub(p["o"]["kernel"], q_cols, hid)},
            "mlp_norm": {"scale": a(p["mlp_norm"]["scale"])[hid]},
            "gate": {"kernel": sub(p["gate"]["kernel"], hid, f)},
            "up": {"kernel": sub(p["up"]["kernel"], hid, f)},
            "down": {"kernel": sub(p["down"]["kernel"], f, hid)},
        }
    if len(widths) != 1:
        raise ConfigError(f"every block must keep the same widths, got (F, K) {sorted(widths)}")
    new["final_norm"] = {"scale": a(params["final_norm"]["scale"])[hid]}
    if "lm_head" in params:
        new["lm_head"] = {"kernel": np.ascontiguousarray(a(params["lm_head"]["kernel"])[hid])}
    [(F, K_kept)] = widths
    return pruned_kwargs(module, int(hid.size), K_kept, F), new


def prune_width(
    module: Llama,
    params: Any,
    tokens: Any,
    *,
    intermediate_size: int | None = None,
    num_kv_heads: int | None = None,
    hidden_size: int | None = None,
    mask: Any = None,
    batch_size: int = 8,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keeps the most important units of each axis, measured on calibration token ids
    `tokens` `(S, L)` (module docstring).

    Args:
        module: a `Llama` (depth-pruned first, if wanted: `depth_prune`).
        params: its parameters.
        tokens: calibration token ids `(S, L)`.
        intermediate_size: MLP neurons each block keeps (None: all).
        num_kv_heads: key/value groups each block keeps, each with its query heads.
        hidden_size: hidden (embedding) channels kept.
        mask: `(S, L)` 1 for real tokens (default: all).
        batch_size: calibration rows per forward pass.

    Returns:
        `(kwargs, params)`: the pruned model's `Llama` keyword arguments (as
        `hf_llama.read_config` gives them: `Llama(**kwargs)`) and parameters.

    Raises:
        ConfigError: not a Llama, a size outside 1..current, unusable tokens (one line).
    """
    sizes = {
        "intermediate_size": intermediate_size,
        "num_kv_heads": num_kv_heads,
        "hidden_size": hidden_size,
    }
    check_sizes(module, sizes)
    scores = importance(module, params, tokens, mask=mask, batch_size=batch_size)
    return shrink(module, params, kept_units(module, scores, **sizes))


# ---------------------------------------------------------------------------------------
# Writing a Hugging Face directory.
# ---------------------------------------------------------------------------------------


def check_out(out: str, overwrite: bool = False) -> str:
    """The absolute output directory, refused (ConfigError) when it is a file or a
    non-empty directory and `overwrite` is not set."""
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConfigError(
            f"--out {out} exists and is not empty; choose another directory or pass --overwrite"
        )
    return out


def write_pruned(
    out: str,
    module: Llama,
    params: Any,
    *,
    tokenizer: str | None = None,
    report: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Writes a model as a Hugging Face Llama directory, atomically.

    The files: `config.json` (`hf_llama.hf_config`, with `head_dim` and the tokenizer's
    special ids), `model.safetensors` (float32, `LlamaForCausalLM`'s names,
    `hf_llama.from_flax`), the tokenizer of `tokenizer` (a GGUF file or a directory
    holding `tokenizer.json`: `tokenizer.json`, and `tokenizer_config.json` with its chat
    template) and `report` as `pruning.json`. They are assembled in a temporary directory
    beside `out`, then renamed into place: an interrupted call leaves no half-written
    `out`.

    Returns:
        The file names written.

    Raises:
        ConfigError: `out` is a file, or a non-empty directory without `overwrite`.
        CheckpointError: `tokenizer` cannot be read.
    """
    from safetensors.numpy import save_file

    from distill_jax.models import hf_llama

    check_llama(module)
    out = check_out(out, overwrite)
    config = hf_llama.hf_config(module)
    tok = None
    if tokenizer is not None:
        tok = hf_llama.load_lm_tokenizer(tokenizer)
        for key, value in (("bos", tok.bos_id), ("eos", tok.eos_id), ("pad", tok.pad_id)):
            if value is not None:
                config[f"{key}_token_id"] = value
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
    try:
        tensors = hf_llama.from_flax(params, module.num_layers)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if tok is not None:
            tok.tokenizer.save(os.path.join(tmp, "tokenizer.json"))
            if tok.chat_template:
                with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
                    json.dump({"chat_template": tok.chat_template}, f, indent=2)
        if report is not None:
            with open(os.path.join(tmp, REPORT_FILE), "w") as f:
                json.dump(report, f, indent=2)
        files = sorted(os.listdir(tmp))
        # mkdtemp makes the directory private (0700); the result is an ordinary one
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


# ---------------------------------------------------------------------------------------
# The command: checkpoint -> (depth) -> width -> directory.
# ---------------------------------------------------------------------------------------


def describe(module: Llama, params: Any, ppl: float | None) -> dict[str, Any]:
    """A row of the command's table: a model's sizes, parameter count and perplexity."""
    from distill_jax.models import count_params

    return {
        "layers": module.num_layers,
        "hidden_size": module.hidden_size,
        "num_heads": module.num_heads,
        "num_kv_heads": module.num_kv_heads,
        "head_dim": module.head_size,
        "intermediate_size": module.intermediate_size,
        "params": count_params(params),
        "perplexity": ppl,
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The command's table (markdown): one row per model of `report["models"]`."""
    head = (
        "| model | layers | hidden | heads (q/kv) | head_dim | intermediate | parameters "
        "| calibration ppl |"
    )
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, m in report["models"].items():
        ppl = "-" if m["perplexity"] is None else f"{m['perplexity']:.2f}"
        lines.append(
            f"| {name} | {m['layers']} | {m['hidden_size']} | {m['num_heads']}/"
            f"{m['num_kv_heads']} | {m['head_dim']} | {m['intermediate_size']} | "
            f"{m['params']:,} | {ppl} |"
        )
    c = report["calibration"]
    lines.append(
        f"\ncalibration: {c['sequences']} sequences x {c['length']} tokens of "
        f"{c['data']} ({c['split']}), {c['targets']:,} target tokens"
    )
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"distill-jax: {message}", file=sys.stderr)


def prune_checkpoint(
    checkpoint: str,
    data_name: str,
    out: str,
    *,
    sequences: int = 32,
    split: str = "train",
    layers: Sequence[int] | None = None,
    intermediate_size: int | None = None,
    num_kv_heads: int | None = None,
    hidden_size: int | None = None,
    batch_size: int = 8,
    data_dir: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """`distill-jax prune-width`: a Llama checkpoint, depth-pruned to `layers` (optional),
    then width-pruned by importance measured on the depth-pruned model, written to `out`.

    Everything the arguments can get wrong is refused before any model runs or any file
    is written.

    Args:
        checkpoint: GGUF file, Hugging Face directory or known name (`smollm2-135m-q4`).
        data_name: a causal-LM dataset (`news_lm/len128`, `text_lm:PATH`) of the model's
            vocabulary.
        out: the directory to write (empty or absent, unless `overwrite`).
        sequences: calibration sequences: the first ones of `split`.
        split: the dataset split they come from.
        layers: blocks to keep (None: all).
        intermediate_size, num_kv_heads, hidden_size: the widths (None: keep).
        batch_size: calibration rows per forward pass.
        data_dir: TFDS data dir.
        overwrite: replace a non-empty `out`.
        say: progress lines.

    Returns:
        The report written as `pruning.json`: the models' rows (`describe`), the student
        config that loads `out`, the calibration, the kept units and the timings.
    """
    from distill_jax import data
    from distill_jax.models import hf_llama

    t0 = time.perf_counter()
    sizes = {
        "intermediate_size": intermediate_size,
        "num_kv_heads": num_kv_heads,
        "hidden_size": hidden_size,
    }
    if layers is None and all(v is None for v in sizes.values()):
        raise ConfigError(
            "prune-width needs at least one of --layers, --intermediate_size, --kv_heads, "
            "--hidden_size"
        )
    for name, value in (("--sequences", sequences), ("--batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    out = check_out(out, overwrite)
    module, params = hf_llama.load_model(checkpoint)
    if layers is not None:
        layers = check_layers(module, layers)
    check_sizes(module, sizes, FLAGS)
    rows = data.load_split(data_name, f"{split}[:{sequences}]", data_dir)
    info = rows.info
    if not info.causal_lm:
        raise ConfigError(
            f"--data {data_name} is not language-model data (use news_lm/len128 or text_lm:PATH)"
        )
    if info.num_classes != module.vocab_size:
        raise ConfigError(
            f"--data {data_name} has a vocabulary of {info.num_classes} tokens, the "
            f"checkpoint's vocab_size is {module.vocab_size}; they must be equal"
        )
    tokens, labels = rows.images, rows.labels
    _check_tokens(module, tokens)
    kw = {"labels": labels, "batch_size": batch_size}
    say(f"calibrating {checkpoint} on {len(tokens)} sequences of {data_name} ({split})")
    t = time.perf_counter()
    measured = calibrate(module, params, tokens, **kw)
    timings = {"teacher_s": time.perf_counter() - t}
    models = {"teacher": describe(module, params, measured.perplexity)}
    if layers is not None:
        module, params = depth_prune(module, params, layers)
        t = time.perf_counter()
        measured = calibrate(module, params, tokens, **kw)
        timings["depth_s"] = time.perf_counter() - t
        models["depth-pruned"] = describe(module, params, measured.perplexity)
    kept = kept_units(module, measured.importance, **sizes)
    kwargs, new_params = shrink(module, params, kept)
    pruned = Llama(dtype=module.dtype, **kwargs)
    if any(v is not None for v in sizes.values()):
        t = time.perf_counter()
        after = calibrate(pruned, new_params, tokens, **kw)
        timings["width_s"] = time.perf_counter() - t
        models["width-pruned"] = describe(pruned, new_params, after.perplexity)
    student = {"name": "llama", **kwargs, "init_from": out}
    report = {
        "source": {"checkpoint": os.fspath(checkpoint), "layers": layers, **sizes},
        "models": models,
        "student_config": student,
        "calibration": {
            "data": data_name,
            "split": split,
            "sequences": int(len(tokens)),
            "length": int(tokens.shape[1]),
            "targets": int(measured.targets),
            "importance": "activations: mean over the sequence of |a|, L2 norm over the batch",
        },
        "kept": {k: np.asarray(v).tolist() for k, v in kept.items()},
        "timings": timings,
    }
    path = hf_llama.resolve_lm_checkpoint(checkpoint)
    has_tokenizer = not path.is_dir() or (path / "tokenizer.json").is_file()
    if not has_tokenizer:
        say(f"{checkpoint} has no tokenizer.json; {out} gets none")
    files = write_pruned(
        out,
        pruned,
        new_params,
        tokenizer=os.fspath(path) if has_tokenizer else None,
        report=report,
        overwrite=overwrite,
    )
    report["files"] = files
    report["timings"]["total_s"] = time.perf_counter() - t0
    say(f"wrote {out}: {', '.join(files)}")
    return report
