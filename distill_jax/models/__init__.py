"""Model registry: Linen classifiers looked up by name from a config.

Besides the small `mlp` and `cnn`, the registry holds the model zoo of the distillation
benchmarks: the CIFAR models of CRD/RepDistiller (`resnet8` ... `resnet110`, `resnet8x4`,
`resnet32x4`, `wrn_16_1` ... `wrn_40_2`, `vgg8` ... `vgg19` (with BatchNorm),
`mobilenetv2`, `mobilenetv2_half`, `shufflenetv1`, `shufflenetv2`) and torchvision's
ImageNet `resnet18`, `resnet34`, `resnet50`; for text, the BERT-style encoder `bert`
(`models/transformer.py`, initialisable from a Hugging Face checkpoint) and two small,
fast students (`models/text.py`, their embeddings initialisable from one): Kim's
`textcnn` and Tang et al.'s `bilstm`; for token classification (NER) `bilstm_tagger` and
`bert` with `head_input="tokens"`, whose logits are `(B, L, C)`; for language modelling
the Llama-family decoder `llama` (`models/llama.py`, initialisable from a GGUF file or a
Hugging Face directory, `models/hf_llama.py`), whose logits are `(B, L, V)`. Each variant is a
subclass whose defaults fix the architecture, and every model returns
`(logits_BC, features)` with the feature names documented in its module.

A model config is a dict with a `name` and the module's keyword arguments, e.g.
`{"name": "mlp", "hidden": (1200, 1200), "dropout": 0.5}`. `num_classes` comes from the
dataset, never from the model config.
"""

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from distill_jax.errors import ConfigError
from distill_jax.models.base import Features
from distill_jax.models.cnn import CNN
from distill_jax.models.llama import Llama
from distill_jax.models.mlp import MLP
from distill_jax.models.mobilenetv2 import MobileNetV2, MobileNetV2Half
from distill_jax.models.resnet import (
    CifarResNet,
    ResNet,
    ResNet8,
    ResNet8x4,
    ResNet14,
    ResNet18,
    ResNet20,
    ResNet32,
    ResNet32x4,
    ResNet34,
    ResNet44,
    ResNet50,
    ResNet56,
    ResNet110,
)
from distill_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from distill_jax.models.text import BiLSTM, BiLSTMTagger, TextCNN
from distill_jax.models.transformer import Bert
from distill_jax.models.vgg import VGG, VGG8, VGG11, VGG13, VGG16, VGG19
from distill_jax.models.wrn import WideResNet, WRN16x1, WRN16x2, WRN40x1, WRN40x2

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    # CIFAR (32x32) models of the CRD benchmark (RepDistiller's `models/`).
    "resnet8": ResNet8,
    "resnet14": ResNet14,
    "resnet20": ResNet20,
    "resnet32": ResNet32,
    "resnet44": ResNet44,
    "resnet56": ResNet56,
    "resnet110": ResNet110,
    "resnet8x4": ResNet8x4,
    "resnet32x4": ResNet32x4,
    "wrn_16_1": WRN16x1,
    "wrn_16_2": WRN16x2,
    "wrn_40_1": WRN40x1,
    "wrn_40_2": WRN40x2,
    "vgg8": VGG8,
    "vgg11": VGG11,
    "vgg13": VGG13,
    "vgg16": VGG16,
    "vgg19": VGG19,
    "mobilenetv2": MobileNetV2,
    "mobilenetv2_half": MobileNetV2Half,
    "shufflenetv1": ShuffleNetV1,
    "shufflenetv2": ShuffleNetV2,
    # ImageNet (224x224) models, torchvision's architecture.
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    # Text: a BERT-style encoder over token ids (models/transformer.py) and two small
    # students over the same ids (models/text.py).
    "bert": Bert,
    "textcnn": TextCNN,
    "bilstm": BiLSTM,
    # Token classification (NER): a tag per token, logits (B, L, C); `bert` with
    # head_input "tokens" is the other tagger.
    "bilstm_tagger": BiLSTMTagger,
    # Causal language models: next-token logits (B, L, V).
    "llama": Llama,
}
_BUILTIN_MODELS = frozenset(MODELS)

# Fields that the pipeline sets itself; a config may not set them.
_RESERVED = ("num_classes", "parent", "name", "axis_name", "dtype")


def model_fields(name: str) -> list[str]:
    """The keyword arguments a config may give to model `name`."""
    cls = get_model_class(name)
    return [f.name for f in dataclasses.fields(cls) if f.name not in _RESERVED and f.init]


def register_model(name: str):
    """Class decorator adding a Flax Linen module to `MODELS`, so `model.name` can name
    it; its other fields become the model config's keys.

    The module maps `(inputs, train: bool)` to `(logits_BC, features)` (a dict of named
    intermediate arrays, `pre_logits` at least, for feature methods) and has the fields
    `num_classes` and `dtype` (the trainer sets them).

    Raises:
        ValueError: a name taken by a built-in model, or a module without those fields.
    """

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _BUILTIN_MODELS:
            raise ValueError(f"model name {name!r} is taken by a built-in model")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"num_classes", "dtype"} - fields)
        if missing:
            raise ValueError(f"model {name!r} needs the field(s) {', '.join(missing)}")
        MODELS[name] = cls
        return cls

    return wrap


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
    cls_fields = dataclasses.fields(get_model_class(model_cfg["name"]))
    defaults = {f.name: f.default for f in cls_fields}
    types = {f.name: str(f.type).replace(" ", "") for f in cls_fields}
    for k, value in model_cfg.items():
        if k == "name":
            continue
        if k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown key '{key}.{k}'{hint} for model '{model_cfg['name']}'; "
                f"valid keys: {', '.join(['name', *fields])}"
            )
        _check_model_value(f"{key}.{k}", value, defaults[k], types[k])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_model_value(where: str, value: Any, default: Any, annotation: str = "") -> None:
    """A model argument of the type its default has: sizes are positive integers (layer
    indices non-negative), rates finite and dropout in [0, 1); an optional string (a
    checkpoint to initialise from, `annotation` `str | None`) is a string or None."""
    if default is None and annotation in ("str|None", "Optional[str]"):
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"{where} must be a string (a checkpoint directory or package name) or None, "
                f"got {value!r}"
            )
        return
    if isinstance(default, tuple) and default and _is_int(default[0]):
        low = 0 if where.endswith("layers") else 1
        if not isinstance(value, list | tuple) or not all(_is_int(v) and v >= low for v in value):
            raise ConfigError(
                f"{where} must be a list of integers >= {low}, e.g. {list(default)}, got {value!r}"
            )
    elif _is_int(default) and (not _is_int(value) or value < 0):
        raise ConfigError(f"{where} must be an integer >= 0, got {value!r}")
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if "dropout" in where.rsplit(".", 1)[-1] and not 0.0 <= value < 1.0:
            raise ConfigError(f"{where} is a dropout rate: it must be in [0, 1), got {value!r}")
    elif isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def create_model(
    model_cfg: Mapping[str, Any],
    num_classes: int,
    *,
    dtype: str = "float32",
    axis_name: str | None = None,
) -> nn.Module:
    """Builds a model from its config.

    Args:
        model_cfg: `{"name": ..., **kwargs}`, validated with the config
            (`validate_model_config`); this only builds it.
        num_classes: number of logits (from the dataset; a language model's vocabulary,
            which a model with `vocab_from_data` takes as its `vocab_size` unless the
            config sets one).
        dtype: computation dtype.
        axis_name: pmap axis for cross-device BatchNorm statistics, where a model has any.

    Returns:
        The Linen module (not yet initialised).
    """
    cls = get_model_class(model_cfg["name"])
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_cfg.items()}
    kwargs.pop("name")
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "axis_name" in field_names:
        kwargs["axis_name"] = axis_name
    if getattr(cls, "vocab_from_data", False) and "vocab_size" not in kwargs and num_classes:
        kwargs["vocab_size"] = num_classes
    return cls(num_classes=num_classes, dtype=dtype, **kwargs)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


__all__ = [
    "register_model",
    "CNN",
    "BiLSTM",
    "BiLSTMTagger",
    "Bert",
    "Llama",
    "MLP",
    "MODELS",
    "VGG",
    "CifarResNet",
    "MobileNetV2",
    "ResNet",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "TextCNN",
    "WideResNet",
    "Features",
    "count_params",
    "create_model",
    "get_model_class",
    "model_fields",
    "validate_model_config",
]
