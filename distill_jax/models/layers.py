"""Layers shared by the model zoo, configured to match the PyTorch reference models.

The CIFAR and ImageNet architectures of the distillation benchmarks (RepDistiller/CRD,
mdistiller, torchvision) are defined in PyTorch. These helpers reproduce the PyTorch
semantics that change numbers, so that a converted checkpoint gives the same outputs:

- convolutions pad symmetrically by `kernel // 2` (PyTorch's `padding=k//2`; Flax's
  `"SAME"` pads a stride-2 convolution asymmetrically instead);
- BatchNorm keeps running statistics with PyTorch's momentum 0.1 (Flax's 0.9) and
  epsilon 1e-5, and averages batch statistics over `axis_name` under `pmap`;
- kernel initialisers are the references' (He normal fan-out, or PyTorch's default).
"""

import flax.linen as nn
import jax.numpy as jnp

# He et al.'s normal init with fan-out, `kaiming_normal_(mode="fan_out")` in PyTorch; the
# same as RepDistiller's `normal_(0, sqrt(2 / (k * k * out_channels)))`.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default for `Conv2d` and `Linear` weights, `kaiming_uniform_(a=sqrt(5))`:
# uniform in +-1/sqrt(fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    use_bias: bool = False,
    dtype: str = "float32",
    kernel_init: nn.initializers.Initializer = he_normal_fan_out,
    name: str | None = None,
) -> nn.Conv:
    """A square convolution padded like PyTorch's `Conv2d(padding=kernel // 2)`.

    Args:
        features: output channels.
        kernel: kernel height and width.
        stride: spatial stride.
        groups: feature groups (the input channel count for a depthwise convolution).
        use_bias: add a bias (off when a BatchNorm follows, as in the references).
        dtype: computation dtype; the kernel is stored in float32.
        kernel_init: kernel initialiser.
        name: submodule name (used in the parameter tree).
    """
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        name=name,
    )


def batch_norm(
    train: bool, axis_name: str | None, dtype: str, name: str | None = None
) -> nn.BatchNorm:
    """PyTorch-equivalent `BatchNorm2d`: batch statistics in training, running ones in eval.

    Args:
        train: normalise with the batch's statistics and update the running averages in
            the `batch_stats` collection (which the caller must make mutable).
        axis_name: the `pmap` axis over which batch statistics are averaged (None under
            `jit`, where the batch is one global array anyway).
        dtype: computation dtype; scale, bias and statistics are stored in float32.
        name: submodule name.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        dtype=dtype,
        name=name,
    )


def global_avg_pool(x_BHWC: jnp.ndarray) -> jnp.ndarray:
    """Mean over the spatial axes: `(B, H, W, C) -> (B, C)`.

    The references pool with a fixed window equal to the final feature map of a 32x32
    (or 224x224) input; the global mean is the same there and also accepts other sizes.
    """
    return jnp.mean(x_BHWC, axis=(1, 2))


def channel_shuffle(x_BHWC: jnp.ndarray, groups: int) -> jnp.ndarray:
    """ShuffleNet's channel shuffle: channel `g * (C // groups) + j` moves to `j * groups + g`.

    The same permutation as PyTorch's `view(N, g, C // g, H, W).transpose(1, 2)` on NCHW.
    """
    b, h, w, c = x_BHWC.shape
    x = x_BHWC.reshape(b, h, w, groups, c // groups)
    return jnp.swapaxes(x, 3, 4).reshape(b, h, w, c)


def classifier_head(
    x_BHWC: jnp.ndarray,
    features: dict[str, jnp.ndarray],
    num_classes: int,
    dtype: str,
    kernel_init: nn.initializers.Initializer = torch_default_init,
) -> jnp.ndarray:
    """Global average pool -> `features["pre_logits"]` -> the `head` Dense layer.

    Call it from inside a compact `__call__`: the Dense layer is created in the caller's
    scope under the name `head`, as if written there.
    """
    x_BD = global_avg_pool(x_BHWC)
    features["pre_logits"] = x_BD
    return nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init, name="head")(x_BD)
