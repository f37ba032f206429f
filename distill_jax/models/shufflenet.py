"""ShuffleNet V1 and V2 for CIFAR, as in RepDistiller's `ShuffleNetv1.py` / `ShuffleNetv2.py`.

Both start from a 1x1 conv-BN-ReLU stem with 24 channels at full resolution, then three
stages that each halve the resolution in their first block, and classify the global
average pool. Registered variants: `shufflenetv1` (Zhang et al. 2018, groups 3, stage
widths 240/480/960, 4/8/4 blocks) and `shufflenetv2` (Ma et al. 2018, 1x: stage widths
116/232/464, a downsampling block plus 3/7/3 blocks per stage, a final 1x1 conv to 1024).

Features (32x32 input):

| name                       | ShuffleNetV1       | ShuffleNetV2        |
|----------------------------|--------------------|---------------------|
| `stem`                     | (B, 32, 32, 24)    | (B, 32, 32, 24)     |
| `stage1`, `stage1_preact`  | (B, 16, 16, 240)   | (B, 16, 16, 116)    |
| `stage2`, `stage2_preact`  | (B, 8, 8, 480)     | (B, 8, 8, 232)      |
| `stage3`, `stage3_preact`  | (B, 4, 4, 960)     | (B, 4, 4, 464)      |
| `pre_logits`               | (B, 960)           | (B, 1024)           |

`stage{i}` is the output of the stage's last block and `stage{i}_preact` that block's
output before its final ReLU, with `stage{i} == relu(stage{i}_preact)`. For ShuffleNetV2
the pre-activation is channel-shuffled like the output; RepDistiller returns it unshuffled
(the same values, channels permuted). `pre_logits` of ShuffleNetV2 pools the final 1x1
conv's output.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features
from distill_jax.models.layers import (
    batch_norm,
    channel_shuffle,
    classifier_head,
    conv,
    torch_default_init,
)


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, + shortcut.

    With stride 2 the shortcut is a 3x3/2 average pool concatenated to the branch, so the
    block outputs `features + input channels`; with stride 1 it is added.

    Attributes:
        features: output channels of the branch.
        stride: 1 or 2.
        groups: groups of the pointwise convolutions.
        first_groups: groups of the first pointwise convolution (1 on the stem's output).
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.

    Returns `(relu(preact), preact)`.
    """

    features: int
    stride: int
    groups: int
    first_groups: int
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        def conv_(features: int, kernel: int, stride: int, groups: int, name: str) -> nn.Conv:
            return conv(
                features,
                kernel,
                stride,
                groups=groups,
                dtype=self.dtype,
                kernel_init=torch_default_init,
                name=name,
            )

        mid = self.features // 4
        y = nn.relu(bn("bn1")(conv_(mid, 1, 1, self.first_groups, "conv1")(x)))
        y = channel_shuffle(y, self.first_groups)
        y = nn.relu(bn("bn2")(conv_(mid, 3, self.stride, mid, "conv2")(y)))
        y = bn("bn3")(conv_(self.features, 1, 1, self.groups, "conv3")(y))
        if self.stride == 2:
            shortcut = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            preact = jnp.concatenate([y, shortcut], axis=-1)
        else:
            preact = y + x
        return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """RepDistiller's CIFAR ShuffleNet (V1); see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        widths: output channels of the three stages.
        stage_sizes: blocks per stage.
        groups: groups of the pointwise convolutions.
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    widths: Sequence[int] = (240, 480, 960)
    stage_sizes: Sequence[int] = (4, 8, 4)
    groups: int = 3
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        features: Features = {}
        x = x_BHWC.astype(self.dtype)
        x = conv(24, 1, dtype=self.dtype, kernel_init=torch_default_init, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        features["stem"] = x
        stages = zip(self.widths, self.stage_sizes, strict=True)
        for i, (width, num_blocks) in enumerate(stages, start=1):
            for j in range(num_blocks):
                # The first block concatenates its pooled input to reach `width` channels.
                x, preact = ShuffleV1Block(
                    width - x.shape[-1] if j == 0 else width,
                    stride=2 if j == 0 else 1,
                    groups=self.groups,
                    first_groups=1 if i == 1 and j == 0 else self.groups,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x, train)
            features[f"stage{i}"] = x
            features[f"stage{i}_preact"] = preact
        logits_BC = classifier_head(x, features, self.num_classes, self.dtype)
        return logits_BC, features


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 basic unit: split channels in half, transform one half, concat, shuffle.

    The transformed half goes through 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU.

    Attributes:
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.

    Returns `(out, preact)` where `preact` is the shuffled concatenation before the
    branch's final ReLU, so `out == relu(preact)` (the untouched half is non-negative).
    """

    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        def conv_(features: int, kernel: int, groups: int, name: str) -> nn.Conv:
            kw = dict(groups=groups, dtype=self.dtype, kernel_init=torch_default_init)
            return conv(features, kernel, **kw, name=name)

        c = x.shape[-1] // 2
        x1, x2 = x[..., :c], x[..., c:]
        y = nn.relu(bn("bn1")(conv_(c, 1, 1, "conv1")(x2)))
        y = bn("bn2")(conv_(c, 3, c, "conv2")(y))
        y = bn("bn3")(conv_(c, 1, 1, "conv3")(y))
        out = channel_shuffle(jnp.concatenate([x1, nn.relu(y)], axis=-1), 2)
        preact = channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)
        return out, preact


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNetV2 downsampling unit: two stride-2 branches, each `features // 2` wide.

    Left: depthwise 3x3/2-BN, 1x1-BN-ReLU. Right: 1x1-BN-ReLU, depthwise 3x3/2-BN,
    1x1-BN-ReLU. The branches are concatenated and shuffled.

    Attributes:
        features: output channels.
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.
    """

    features: int
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        def conv_(features: int, kernel: int, stride: int, groups: int, name: str) -> nn.Conv:
            kw = dict(groups=groups, dtype=self.dtype, kernel_init=torch_default_init)
            return conv(features, kernel, stride, **kw, name=name)

        mid = self.features // 2
        c_in = x.shape[-1]
        left = bn("bn1")(conv_(c_in, 3, 2, c_in, "conv1")(x))
        left = nn.relu(bn("bn2")(conv_(mid, 1, 1, 1, "conv2")(left)))
        right = nn.relu(bn("bn3")(conv_(mid, 1, 1, 1, "conv3")(x)))
        right = bn("bn4")(conv_(mid, 3, 2, mid, "conv4")(right))
        right = nn.relu(bn("bn5")(conv_(mid, 1, 1, 1, "conv5")(right)))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """RepDistiller's CIFAR ShuffleNetV2 (1x); see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        widths: output channels of the three stages and of the final 1x1 convolution.
        stage_sizes: basic blocks per stage (after the downsampling block).
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    widths: Sequence[int] = (116, 232, 464, 1024)
    stage_sizes: Sequence[int] = (3, 7, 3)
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        features: Features = {}
        x = x_BHWC.astype(self.dtype)
        x = conv(24, 1, dtype=self.dtype, kernel_init=torch_default_init, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        features["stem"] = x
        stages = zip(self.widths[:-1], self.stage_sizes, strict=True)
        for i, (width, num_blocks) in enumerate(stages, start=1):
            x = ShuffleV2DownBlock(
                width, axis_name=self.axis_name, dtype=self.dtype, name=f"stage{i}_down"
            )(x, train)
            for j in range(num_blocks):
                x, preact = ShuffleV2Block(
                    axis_name=self.axis_name, dtype=self.dtype, name=f"stage{i}_block{j}"
                )(x, train)
            features[f"stage{i}"] = x
            features[f"stage{i}_preact"] = preact
        x = conv(
            self.widths[-1], 1, dtype=self.dtype, kernel_init=torch_default_init, name="conv2"
        )(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(x))
        logits_BC = classifier_head(x, features, self.num_classes, self.dtype)
        return logits_BC, features
