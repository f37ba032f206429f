"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, as in RepDistiller's `models/wrn.py`.

WRN-d-k has a 3x3 stem with 16 channels and three stages of `(d - 4) / 6` pre-activation
blocks (BN-ReLU-conv) with 16k, 32k and 64k channels, the second and third stage halving
the resolution; a final BN-ReLU precedes the global average pool. Registered variants:
`wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`.

Features (32x32 input, `k` the widen factor):

| name                       | shape               |
|----------------------------|---------------------|
| `stem`                     | (B, 32, 32, 16)     |
| `stage1`, `stage1_preact`  | (B, 32, 32, 16k)    |
| `stage2`, `stage2_preact`  | (B, 16, 16, 32k)    |
| `stage3`, `stage3_preact`  | (B, 8, 8, 64k)      |
| `pre_logits`               | (B, 64k)            |

In a pre-activation network a stage ends with a residual sum, and the BN-ReLU that
follows belongs to the next block (or to the head). As in RepDistiller's `preact=True`
features (and OFD's `get_bn_before_relu`), `stage{i}_preact` is that following BatchNorm
applied to the stage's output, and `stage{i} = relu(stage{i}_preact)` is the activation
the next stage (or the pool) actually reads. `stem` is the stem convolution's output
(it has no BatchNorm of its own). RepDistiller's `preact=False` features for this model
are the raw residual sums, which are not exposed.
"""

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features
from distill_jax.models.layers import (
    batch_norm,
    classifier_head,
    conv,
)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    If the width changes, the shortcut is a strided 1x1 convolution of the block's
    activated input; otherwise it is the raw input (RepDistiller's `equalInOut`).

    Attributes:
        features: output channels.
        stride: stride of the first convolution and of the shortcut.
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.

    Returns `(y, x_preact)`: the residual sum and the block's first BatchNorm output
    (the pre-activation of its input).
    """

    features: int
    stride: int = 1
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        x_preact = bn("bn1")(x)
        a = nn.relu(x_preact)
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(a)
        y = nn.relu(bn("bn2")(y))
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        if x.shape[-1] != self.features or self.stride != 1:
            residual = conv(self.features, 1, self.stride, dtype=self.dtype, name="shortcut")(a)
        else:
            residual = x
        return y + residual, x_preact


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for CIFAR; see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        depth: total layer count, `6n + 4` for `n` blocks per stage.
        widen_factor: width multiplier `k` of the three stages (16k, 32k, 64k channels).
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    depth: int = 16
    widen_factor: int = 1
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        if (self.depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet needs depth = 6n + 4, got {self.depth}")
        blocks_per_stage = (self.depth - 4) // 6
        widths = [16 * self.widen_factor * 2**i for i in range(3)]
        features: Features = {}
        x = conv(16, 3, dtype=self.dtype, name="conv1")(x_BHWC.astype(self.dtype))
        features["stem"] = x
        for i, width in enumerate(widths, start=1):
            for j in range(blocks_per_stage):
                x, x_preact = WideBasicBlock(
                    width,
                    stride=2 if i > 1 and j == 0 else 1,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x, train)
                if i > 1 and j == 0:
                    # The first block of stage i activates the output of stage i - 1.
                    features[f"stage{i - 1}_preact"] = x_preact
                    features[f"stage{i - 1}"] = nn.relu(x_preact)
        x_preact = batch_norm(train, self.axis_name, self.dtype, name="bn_final")(x)
        x = nn.relu(x_preact)
        features["stage3_preact"] = x_preact
        features["stage3"] = x
        logits_BC = classifier_head(x, features, self.num_classes, self.dtype)
        return logits_BC, features


class WRN16x1(WideResNet):
    """RepDistiller's `wrn_16_1`."""

    depth: int = 16
    widen_factor: int = 1


class WRN16x2(WideResNet):
    """RepDistiller's `wrn_16_2` (0.70M parameters at 100 classes)."""

    depth: int = 16
    widen_factor: int = 2


class WRN40x1(WideResNet):
    """RepDistiller's `wrn_40_1`."""

    depth: int = 40
    widen_factor: int = 1


class WRN40x2(WideResNet):
    """RepDistiller's `wrn_40_2` (2.26M parameters at 100 classes)."""

    depth: int = 40
    widen_factor: int = 2
