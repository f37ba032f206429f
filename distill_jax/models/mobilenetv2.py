"""MobileNetV2 for CIFAR, as in RepDistiller's `models/mobilenetv2.py` (from Jin et al. 2019).

A stride-2 3x3 stem, seven groups of inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 linear projection; `(t, c, n, s)` = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2),
(T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1)), a 1x1 conv to 1280
channels and the classifier on its global average pool. Unlike torchvision, the widths are
`int(c * width_mult)` without rounding to multiples of 8, the t=1 block keeps its expansion
convolution, and the last layer stays 1280 wide for `width_mult <= 1`. Registered
variants: `mobilenetv2` (T=6, width 1) and `mobilenetv2_half` (RepDistiller's
`mobile_half`, T=6, width 0.5, the CRD benchmark's student).

Features (32x32 input, `w` the width multiplier; RepDistiller's feature points):

| name                       | shape                        | after group |
|----------------------------|------------------------------|-------------|
| `stem`                     | (B, 16, 16, int(32w))        | stem        |
| `stage1`, `stage1_preact`  | (B, 16, 16, int(24w))        | 2nd         |
| `stage2`, `stage2_preact`  | (B, 8, 8, int(32w))          | 3rd         |
| `stage3`, `stage3_preact`  | (B, 4, 4, int(96w))          | 5th         |
| `stage4`, `stage4_preact`  | (B, 2, 2, int(320w))         | 7th         |
| `pre_logits`               | (B, 1280)                    | pool        |

Inverted residual blocks end with a linear projection (no ReLU), so `stage{i}_preact` is
the same tensor as `stage{i}`.
"""

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features
from distill_jax.models.layers import batch_norm, classifier_head, conv

# (expansion, channels, blocks, stride) per group; expansion None means the model's T.
_GROUPS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# Feature name after each group whose output is a distillation feature.
_STAGE_AFTER_GROUP = {1: "stage1", 2: "stage2", 4: "stage3", 6: "stage4"}


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (+ identity if shapes match).

    Attributes:
        features: output channels.
        stride: stride of the depthwise convolution.
        expand_ratio: width of the hidden layer relative to the input.
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.
    """

    features: int
    stride: int = 1
    expand_ratio: int = 6
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        hidden = x.shape[-1] * self.expand_ratio
        y = nn.relu(bn("bn1")(conv(hidden, 1, dtype=self.dtype, name="conv1")(x)))
        y = conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3")(conv(self.features, 1, dtype=self.dtype, name="conv3")(y))
        if self.stride == 1 and x.shape[-1] == self.features:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """RepDistiller's CIFAR MobileNetV2; see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        expand_ratio: expansion factor T of the inverted residual blocks.
        width_mult: channel multiplier of the stem and the blocks.
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    expand_ratio: int = 6
    width_mult: float = 1.0
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        features: Features = {}
        x = x_BHWC.astype(self.dtype)
        x = conv(int(32 * self.width_mult), 3, 2, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        features["stem"] = x
        for g, (t, c, n, s) in enumerate(_GROUPS):
            for j in range(n):
                x = InvertedResidual(
                    int(c * self.width_mult),
                    stride=s if j == 0 else 1,
                    expand_ratio=self.expand_ratio if t is None else t,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"group{g}_block{j}",
                )(x, train)
            if g in _STAGE_AFTER_GROUP:
                features[_STAGE_AFTER_GROUP[g]] = x
                features[_STAGE_AFTER_GROUP[g] + "_preact"] = x
        last_width = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
        x = conv(last_width, 1, dtype=self.dtype, name="conv2")(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(x))
        logits_BC = classifier_head(
            x, features, self.num_classes, self.dtype, kernel_init=nn.initializers.normal(0.01)
        )
        return logits_BC, features


class MobileNetV2Half(MobileNetV2):
    """RepDistiller's `mobile_half`: MobileNetV2 at width 0.5 (0.81M parameters)."""

    width_mult: float = 0.5
