"""Model registry: Linen classifiers looked up by name from a config.

A model config is a dict with a `name` and the module's keyword arguments, e.g.
`{"name": "mlp", "hidden": (1200, 1200), "dropout": 0.5}`. `num_classes` comes from the
dataset, never from the model config.
"""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from distill_jax.errors import ConfigError
from distill_jax.models.base import Features
from distill_jax.models.cnn import CNN
from distill_jax.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}

# Fields that the pipeline sets itself; a config may not set them.
_RESERVED = ("num_classes", "parent", "name", "axis_name", "dtype")


def model_fields(name: str) -> list[str]:
    """The keyword arguments a config may give to model `name`."""
    cls = get_model_class(name)
    return [f.name for f in dataclasses.fields(cls) if f.name not in _RESERVED and f.init]


def get_model_class(name: str) -> type[nn.Module]:
    """Looks up a model class by registry name, with a message listing valid names."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown model '{name}'{hint}; valid models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name]


def validate_model_config(model_cfg: Mapping[str, Any], key: str) -> None:
    """Checks that a model config names a registered model and only its arguments.

    Args:
        model_cfg: the model's config dict (`name` plus keyword arguments).
        key: where the dict sits in the config, for the message (e.g. `teacher.model`).
    """
    if "name" not in model_cfg:
        raise ConfigError(f"{key}.name is missing; valid models: {', '.join(sorted(MODELS))}")
    try:
        fields = model_fields(model_cfg["name"])
    except ConfigError as e:
        raise ConfigError(f"{key}.name: {e}") from None
    for k in model_cfg:
        if k != "name" and k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown key '{key}.{k}'{hint} for model '{model_cfg['name']}'; "
                f"valid keys: {', '.join(['name', *fields])}"
            )


def create_model(
    model_cfg: Mapping[str, Any],
    num_classes: int,
    *,
    dtype: str = "float32",
    axis_name: str | None = None,
) -> nn.Module:
    """Builds a model from its config.

    Args:
        model_cfg: `{"name": ..., **kwargs}`.
        num_classes: number of logits (from the dataset).
        dtype: computation dtype.
        axis_name: pmap axis for cross-device BatchNorm statistics, where a model has any.

    Returns:
        The Linen module (not yet initialised).
    """
    validate_model_config(model_cfg, "model")
    cls = get_model_class(model_cfg["name"])
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_cfg.items()}
    kwargs.pop("name")
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "axis_name" in field_names:
        kwargs["axis_name"] = axis_name
    return cls(num_classes=num_classes, dtype=dtype, **kwargs)


__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "Features",
    "create_model",
    "get_model_class",
    "model_fields",
    "validate_model_config",
]
