"""Int8 quantization of the student: post-training (PTQ) and quantization-aware (QAT).

Library: Google's `qwix` (https://github.com/google/qwix), not hand-written fake-quant ops
and not `aqtp`. qwix quantizes an unmodified Flax Linen model by intercepting the JAX ops
its layers call (`jax.lax.dot_general` in `nn.Dense`, `jax.lax.conv_general_dilated` in
`nn.Conv`, `jnp.einsum` in attention) while the model's own method runs, so our models
need no quantized layer classes and the QAT model keeps exactly the float model's
parameter tree (a float checkpoint initialises it, and its trained parameters export to
int8 directly). It does PTQ and QAT with one rule language, on CPU/GPU/TPU, and works
with our jax/flax versions. `aqtp` (AQT) was the alternative: its Flax integration hands a
quantized dot_general to each layer (`nn.Dense(dot_general_cls=...)`), i.e. a change to
every model we ship.

The scheme (`int8_rules`), verified against a NumPy re-derivation in the tests:

* weights: symmetric int8 with one scale per output channel (per column of a Dense
  kernel, per output feature of a Conv kernel): `s_w = max|w| / 127.5` over the
  contracted axes, `q_w = clip(round(w / s_w), -128, 127)` (round half to even). PTQ
  stores `q_w` as int8 plus `s_w` as float32.
* activations: symmetric int8 with *dynamic* range: the input of every quantized Dense /
  Conv / einsum is quantized on the fly with one scale per example (`max|x| / 127.5`
  over the example's features; for a Conv over its whole H x W x C input), so there is
  no calibration set and no `quant_stats` collection.
* the PTQ forward multiplies int8 x int8 into int32 (`dot_general` with
  `preferred_element_type=int32`) and rescales by `s_x * s_w`; the bias add, BatchNorm,
  ReLU, pooling and softmax stay float32.
* QAT runs the same quantize/dequantize in the forward pass (identical numerics: the QAT
  logits equal the PTQ model's) with straight-through gradients: the quantization is the
  identity in the backward pass (qwix's custom VJPs; absmax calibration never clips, so
  no gradient is masked).

Every Dense and Conv layer, the first and the head included, is quantized, and so are the
two-operand einsums of attention (both operands dynamic int8). Embedding lookups,
normalisation layers and elementwise ops stay float32. With `activations=False` only the
weights of Dense layers and einsums are quantized (qwix's PTQ conv needs equal weight and
activation types, so convolutions then stay float).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax.core import unfreeze


def int8_rules(activations: bool = True, module_path: str = ".*") -> list[qwix.QtRule]:
    """The qwix rules of our int8 scheme (see the module docstring).

    Args:
        activations: also quantize the inputs of every Dense / Conv / einsum (dynamic
            per-example range); False gives weight-only int8 for Dense layers and einsums
            (convolutions stay float).
        module_path: regex over module paths (e.g. `"dense1|head"`) selecting the layers
            to quantize; the default selects all of them.

    Returns:
        One rule, usable by both `ptq` and `qat`.
    """
    if activations:
        return [qwix.QtRule(module_path=module_path, weight_qtype=jnp.int8, act_qtype=jnp.int8)]
    return [
        qwix.QtRule(
            module_path=module_path,
            op_names=("dot_general", "einsum"),
            weight_qtype=jnp.int8,
        )
    ]


def qat(model: nn.Module, rules: list[qwix.QtRule] | None = None) -> nn.Module:
    """The quantization-aware-training version of `model`.

    Same call signature (`apply(variables, x, train=...)` -> `(logits, features)`) and
    the same variables tree as `model`, so a float checkpoint initialises it and
    `make_train_step` trains it unchanged; its forward pass fake-quantizes as `rules` say
    and its gradients are straight-through. Export the trained variables with
    `ptq(model, variables, x)`.

    Args:
        model: the float model.
        rules: qwix rules; default `int8_rules()`.
    """
    return qwix.quantize_model(model, qwix.QtProvider(int8_rules() if rules is None else rules))


def ptq(
    model: nn.Module,
    variables: Any,
    example_input: jax.Array | np.ndarray,
    rules: list[qwix.QtRule] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Post-training quantization of a trained float (or QAT-trained) model.

    Args:
        model: the float model (or its `qat` version).
        variables: its trained variables (`params`, and `batch_stats` with BatchNorm).
        example_input: a batch of inputs; only its shape and dtype are used (to trace
            the model once and learn which parameters feed which quantized op).
        rules: qwix rules; default `int8_rules()`.

    Returns:
        `(qmodel, qvariables)`: `qmodel.apply(qvariables, x, train=False)` returns
        `(logits, features)` like the float model. In `qvariables["params"]` every
        quantized kernel is a qwix `WithAux(QArray(qvalue=int8, scale=float32))`; biases,
        normalisation parameters and all other collections are the float ones, unchanged.

    Raises:
        ValueError: no layer of `model` matched `rules` (nothing would be quantized).
    """
    qmodel = qwix.quantize_model(model, qwix.PtqProvider(int8_rules() if rules is None else rules))
    init = functools.partial(qmodel.init, train=False)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0), example_input)
    is_qarray = lambda x: isinstance(x, qwix.QArray)
    if not any(is_qarray(x) for x in jax.tree.leaves(abstract["params"], is_leaf=is_qarray)):
        raise ValueError(f"no layer of {type(model).__name__} matched the quantization rules")
    params = jax.tree.map(jnp.asarray, unfreeze(nn.unbox(variables["params"])))
    qvariables = dict(unfreeze(variables))
    qvariables["params"] = qwix.quantize_params(params, abstract["params"])
    return qmodel, qvariables


def stored_bytes(variables: Any) -> int:
    """Bytes of all leaves as stored: int8 values count 1 byte each, float32 scales 4."""
    return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(variables)))
