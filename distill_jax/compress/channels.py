"""Structured pruning: remove whole MLP units / convolution channels, keep a dense model.

Unstructured masks (`prune.py`) leave the tensors their original size; here the least
important units of every hidden layer are cut out, giving a genuinely smaller dense student
whose model config has fewer units/channels (`hidden` of `mlp`, `widths` and `dense` of
`cnn`), so it is smaller and faster on any hardware.

Importance of a unit (Li et al. 2017, "Pruning filters for efficient ConvNets"; Liu et al.
2017, "Learning efficient convolutional networks through network slimming"):

* `l1`: the L1 norm of the unit's incoming weights (its filter, or its kernel column);
* `bn_scale`: |gamma| of the BatchNorm after the convolution (network slimming); only for
  layers followed by BatchNorm.

Every hidden layer keeps the `ceil(keep * width)` most important units (at least one). The
pruned model equals the *masked* model it came from (`channel_masks`): the original model
with the removed units' incoming weights, bias and BatchNorm scale/shift set to zero, so
those units output exactly 0 after the ReLU and contribute nothing downstream.

Supported models are the sequential ones whose widths the config sets: `mlp` and `cnn`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from distill_jax.errors import ConfigError

CRITERIA = ("l1", "bn_scale")
SUPPORTED = ("mlp", "cnn")


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One prunable layer: where its units live in the variable tree.

    Attributes:
        kernel: param name of the layer's kernel (output units on the last axis).
        norm: name of the BatchNorm that follows it (params scale/bias, stats mean/var).
        consumer: param name of the next layer's kernel (units on its input axis).
        flatten: the consumer sees the units flattened with spatial positions
            (`(H * W * C, D)` rows after a conv stage); units are the minor index.
    """

    kernel: str
    norm: str | None
    consumer: str
    flatten: bool = False


def _layers(model_cfg: Mapping[str, Any], params: Mapping[str, Any]) -> list[_Layer]:
    name = model_cfg["name"]
    if name == "mlp":
        n = len(params) - 1  # dense1..denseN and head
        names = [f"dense{i}" for i in range(1, n + 1)] + ["head"]
        return [_Layer(names[i], None, names[i + 1]) for i in range(n)]
    if name == "cnn":
        convs = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:]))
        norms = sorted(k for k in params if k.startswith("BatchNorm_"))
        dense = ["Dense_0"] if "Dense_0" in params else []
        after_convs = (dense or ["head"])[0]
        layers = [
            _Layer(
                conv,
                f"BatchNorm_{i}" if norms else None,
                convs[i + 1] if i + 1 < len(convs) else after_convs,
                flatten=i + 1 == len(convs),
            )
            for i, conv in enumerate(convs)
        ]
        return layers + [_Layer(d, None, "head") for d in dense]
    raise ConfigError(
        f"structured (channel) pruning supports the sequential models "
        f"{', '.join(SUPPORTED)}, whose widths a config sets; got model '{name}'"
    )


def check_prunable(model_cfg: Mapping[str, Any], params: Mapping[str, Any], criterion: str) -> None:
    """Raises `ConfigError` unless `criterion` can rank the units of this model's layers.

    `params` may hold shape structs (`jax.eval_shape`), so a run checks its plan before
    it trains anything.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"channel criterion {criterion!r} is not one of {', '.join(CRITERIA)}")
    for layer in _layers(model_cfg, params):
        if criterion == "bn_scale" and layer.norm is None:
            raise ConfigError(
                f"channel criterion 'bn_scale' needs BatchNorm after every pruned layer; "
                f"layer '{layer.kernel}' of model '{model_cfg['name']}' has none (use 'l1')"
            )


def unit_importance(
    model_cfg: Mapping[str, Any], variables: Mapping[str, Any], criterion: str = "l1"
) -> dict[str, np.ndarray]:
    """Importance of every unit of every prunable layer, by layer (kernel) name."""
    params = variables["params"]
    check_prunable(model_cfg, params, criterion)
    out = {}
    for layer in _layers(model_cfg, params):
        kernel = np.asarray(params[layer.kernel]["kernel"], np.float64)
        if criterion == "l1":
            out[layer.kernel] = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        else:
            out[layer.kernel] = np.abs(np.asarray(params[layer.norm]["scale"], np.float64))
    return out


def kept_units(
    model_cfg: Mapping[str, Any],
    variables: Mapping[str, Any],
    keep: float,
    criterion: str = "l1",
) -> dict[str, np.ndarray]:
    """Sorted indices of the units each layer keeps: its `ceil(keep * width)` most important."""
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"channel keep fraction must be in (0, 1], got {keep}")
    kept = {}
    for name, score in unit_importance(model_cfg, variables, criterion).items():
        n = max(1, math.ceil(keep * score.size))
        kept[name] = np.sort(np.argsort(-score, kind="stable")[:n])
    return kept


def channel_masks(
    model_cfg: Mapping[str, Any], variables: Mapping[str, Any], kept: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Masks of the *original* model that silence the removed units (see module docstring).

    Returns a `{"params": ..., "batch_stats": ...}`-shaped tree of bools for `apply_masks`
    on each collection (BatchNorm statistics are never masked).
    """
    params = variables["params"]
    masks = {
        c: {k: {n: np.ones(np.shape(v), bool) for n, v in leaf.items()} for k, leaf in tree.items()}
        for c, tree in variables.items()
    }
    for layer in _layers(model_cfg, params):
        width = np.shape(params[layer.kernel]["kernel"])[-1]
        off = np.ones(width, bool)
        off[kept[layer.kernel]] = False
        for leaf in masks["params"][layer.kernel].values():
            leaf[..., off] = False
        if layer.norm is not None:
            for leaf in masks["params"][layer.norm].values():
                leaf[off] = False
    return masks


def _take(a: Any, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.take(np.asarray(a), idx, axis=axis)


def shrink(
    model_cfg: Mapping[str, Any], variables: Mapping[str, Any], kept: Mapping[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The smaller dense model: its config and its variables, sliced to the kept units.

    Returns:
        `(model_cfg, variables)` of a model with `len(kept[layer])` units per layer whose
        outputs equal the masked original's (`channel_masks`).
    """
    params = variables["params"]
    layers = _layers(model_cfg, params)
    new = {c: {k: dict(leaf) for k, leaf in tree.items()} for c, tree in variables.items()}
    new_params = new["params"]
    for layer in layers:
        idx = kept[layer.kernel]
        new_params[layer.kernel] = {
            n: _take(v, idx, -1) for n, v in new_params[layer.kernel].items()
        }
        if layer.norm is not None:
            for c in new:
                if layer.norm in new[c]:
                    new[c][layer.norm] = {
                        n: _take(v, idx, 0) for n, v in new[c][layer.norm].items()
                    }
        consumer = dict(new_params[layer.consumer])
        k = np.asarray(consumer["kernel"])
        if layer.flatten:  # rows are (position, channel) pairs, channel minor
            width = np.shape(params[layer.kernel]["kernel"])[-1]
            rows = k.reshape(-1, width, k.shape[-1])
            consumer["kernel"] = _take(rows, idx, 1).reshape(-1, k.shape[-1])
        else:  # conv (HWIO: input axis -2) or dense (input axis 0 == -2)
            consumer["kernel"] = _take(k, idx, -2)
        new_params[layer.consumer] = consumer
    cfg = dict(model_cfg)
    widths = [int(kept[layer.kernel].size) for layer in layers]
    if cfg["name"] == "mlp":
        cfg["hidden"] = tuple(widths)
    else:
        n_conv = sum(layer.kernel.startswith("Conv_") for layer in layers)
        cfg["widths"] = tuple(widths[:n_conv])
        if len(widths) > n_conv:
            cfg["dense"] = widths[n_conv]
    return cfg, new


def prune_channels(
    model_cfg: Mapping[str, Any],
    variables: Mapping[str, Any],
    keep: float,
    criterion: str = "l1",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keeps the `keep` fraction of units of every hidden layer: `(model_cfg, variables)`."""
    return shrink(model_cfg, variables, kept_units(model_cfg, variables, keep, criterion))
