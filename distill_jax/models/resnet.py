"""ResNets: the CIFAR family of the CRD benchmark and torchvision's ImageNet ResNet-18/34/50.

`CifarResNet` is RepDistiller's `models/resnet.py` (He et al. 2016, Sec. 4.2): a 3x3 stem
and three stages of basic blocks, `(depth - 2) / 6` blocks each, the second and third
stage halving the resolution. `resnet8` ... `resnet110` have widths (16, 16, 32, 64)
(stem, stages); the "x4" variants `resnet8x4` and `resnet32x4` have (32, 64, 128, 256).

`ResNet` is torchvision's ImageNet ResNet (v1.5: a bottleneck block strides in its 3x3
convolution): a 7x7/2 stem with a 3x3/2 max-pool, then four stages.

Both return `(logits_BC, features)`; for an input of size HxW the features are

| name                         | CifarResNet (32x32)     | ResNet (224x224)                |
|------------------------------|-------------------------|---------------------------------|
| `stem`                       | (B, 32, 32, widths[0])  | (B, 112, 112, 64), before pool  |
| `stage1`, `stage1_preact`    | (B, 32, 32, widths[1])  | (B, 56, 56, 64 * e)             |
| `stage2`, `stage2_preact`    | (B, 16, 16, widths[2])  | (B, 28, 28, 128 * e)            |
| `stage3`, `stage3_preact`    | (B, 8, 8, widths[3])    | (B, 14, 14, 256 * e)            |
| `stage4`, `stage4_preact`    | --                      | (B, 7, 7, 512 * e)              |
| `pre_logits`                 | (B, widths[3])          | (B, 512 * e)                    |

with `e` = 1 for basic blocks (ResNet-18/34) and 4 for bottlenecks (ResNet-50).
`stem` is after the stem's ReLU; `stage{i}` is the output of the stage's last block and
`stage{i}_preact` the same block's residual sum before its final ReLU (RepDistiller's
`preact=True` features, used by e.g. OFD and ABs). `pre_logits` is the global average
pool that the linear classifier reads.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features
from distill_jax.models.layers import (
    batch_norm,
    classifier_head,
    conv,
)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, Fig. 2 left).

    Attributes:
        features: output channels.
        stride: stride of the first convolution and of the projection shortcut.
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.

    Returns `(relu(preact), preact)` where `preact` is the residual sum.
    """

    features: int
    stride: int = 1
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = bn("bn2")(y)
        residual = x
        if self.stride != 1 or x.shape[-1] != self.features:
            residual = conv(self.features, 1, self.stride, dtype=self.dtype, name="proj_conv")(x)
            residual = bn("proj_bn")(residual)
        preact = y + residual
        return nn.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to `4 * features`, with a residual connection.

    Attributes:
        features: width of the 3x3 convolution; the block outputs `4 * features` channels.
        stride: stride of the 3x3 convolution (torchvision's "v1.5") and of the shortcut.
        axis_name: pmap axis for BatchNorm statistics.
        dtype: computation dtype.

    Returns `(relu(preact), preact)` where `preact` is the residual sum.
    """

    features: int
    stride: int = 1
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, self.axis_name, self.dtype, name=name)

        out_features = 4 * self.features
        y = conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = conv(out_features, 1, dtype=self.dtype, name="conv3")(y)
        y = bn("bn3")(y)
        residual = x
        if self.stride != 1 or x.shape[-1] != out_features:
            residual = conv(out_features, 1, self.stride, dtype=self.dtype, name="proj_conv")(x)
            residual = bn("proj_bn")(residual)
        preact = y + residual
        return nn.relu(preact), preact


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet (basic blocks); see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        depth: total layer count, `6n + 2` for `n` blocks per stage.
        widths: channels of the stem and of the three stages.
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    depth: int = 20
    widths: Sequence[int] = (16, 16, 32, 64)
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        if (self.depth - 2) % 6 != 0 or len(self.widths) != 4:
            raise ValueError(
                f"CifarResNet needs depth = 6n + 2 and 4 widths, got depth={self.depth}, "
                f"widths={tuple(self.widths)}"
            )
        blocks_per_stage = (self.depth - 2) // 6
        features: Features = {}
        x = conv(self.widths[0], 3, dtype=self.dtype, name="conv1")(x_BHWC.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        features["stem"] = x
        for i, width in enumerate(self.widths[1:], start=1):
            for j in range(blocks_per_stage):
                x, preact = BasicBlock(
                    width,
                    stride=2 if i > 1 and j == 0 else 1,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x, train)
            features[f"stage{i}"] = x
            features[f"stage{i}_preact"] = preact
        logits_BC = classifier_head(x, features, self.num_classes, self.dtype)
        return logits_BC, features


class ResNet8(CifarResNet):
    """RepDistiller's `resnet8` (0.08M parameters at 100 classes)."""

    depth: int = 8


class ResNet14(CifarResNet):
    """RepDistiller's `resnet14`."""

    depth: int = 14


class ResNet20(CifarResNet):
    """RepDistiller's `resnet20` (0.28M parameters at 100 classes)."""

    depth: int = 20


class ResNet32(CifarResNet):
    """RepDistiller's `resnet32`."""

    depth: int = 32


class ResNet44(CifarResNet):
    """RepDistiller's `resnet44`."""

    depth: int = 44


class ResNet56(CifarResNet):
    """RepDistiller's `resnet56` (0.86M parameters at 100 classes)."""

    depth: int = 56


class ResNet110(CifarResNet):
    """RepDistiller's `resnet110`."""

    depth: int = 110


class ResNet8x4(CifarResNet):
    """RepDistiller's `resnet8x4`: resnet8 with 4x wider stages (1.23M parameters)."""

    depth: int = 8
    widths: Sequence[int] = (32, 64, 128, 256)


class ResNet32x4(CifarResNet):
    """RepDistiller's `resnet32x4`: resnet32 with 4x wider stages (7.43M parameters)."""

    depth: int = 32
    widths: Sequence[int] = (32, 64, 128, 256)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet; see the module docstring for features.

    Any input size works (global average pooling); 224x224 is the ImageNet default.

    Attributes:
        num_classes: number of output logits.
        stage_sizes: blocks per stage.
        bottleneck: use bottleneck blocks (ResNet-50 and deeper) instead of basic ones.
        widths: base width of each stage (bottleneck stages output 4x as many channels).
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    widths: Sequence[int] = (64, 128, 256, 512)
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        block_cls = Bottleneck if self.bottleneck else BasicBlock
        features: Features = {}
        x = conv(self.widths[0], 7, 2, dtype=self.dtype, name="conv1")(x_BHWC.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        features["stem"] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages = zip(self.stage_sizes, self.widths, strict=True)
        for i, (num_blocks, width) in enumerate(stages, start=1):
            for j in range(num_blocks):
                x, preact = block_cls(
                    width,
                    stride=2 if i > 1 and j == 0 else 1,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{i}_block{j}",
                )(x, train)
            features[f"stage{i}"] = x
            features[f"stage{i}_preact"] = preact
        logits_BC = classifier_head(x, features, self.num_classes, self.dtype)
        return logits_BC, features


class ResNet18(ResNet):
    """torchvision's `resnet18` (11.69M parameters at 1000 classes)."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet34(ResNet):
    """torchvision's `resnet34` (21.80M parameters at 1000 classes)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)


class ResNet50(ResNet):
    """torchvision's `resnet50` (25.56M parameters at 1000 classes)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    bottleneck: bool = True
