"""VGG with BatchNorm for CIFAR, as in RepDistiller's `models/vgg.py` (`vgg8_bn` etc.).

Five blocks of 3x3 conv-BN-ReLU layers (the convolutions keep their bias, as in the
reference), max-pooled 2x2 between blocks 0-1, 1-2 and 2-3; no fully connected layers
but the classifier on the global average pool of the last block. On a 32x32 input the
pool between blocks 3 and 4 is skipped, so the last two blocks both run at 4x4; on larger
inputs it is applied (RepDistiller applies it for 64x64 Tiny-ImageNet inputs).
Registered variants (layers per block): `vgg8` (1, 1, 1, 1, 1), `vgg11` (1, 1, 2, 2, 2),
`vgg13` (2, 2, 2, 2, 2), `vgg16` (2, 2, 3, 3, 3), `vgg19` (2, 2, 4, 4, 4); widths are
64, 128, 256, 512, 512.

Features (32x32 input):

| name                       | shape               |
|----------------------------|---------------------|
| `stem`                     | (B, 32, 32, 64)     |
| `stage1`, `stage1_preact`  | (B, 16, 16, 128)    |
| `stage2`, `stage2_preact`  | (B, 8, 8, 256)      |
| `stage3`, `stage3_preact`  | (B, 4, 4, 512)      |
| `stage4`, `stage4_preact`  | (B, 4, 4, 512)      |
| `pre_logits`               | (B, 512)            |

`stem` is block 0's output after its ReLU, `stage{i}` block `i`'s output after its last
ReLU and `stage{i}_preact` the last BatchNorm's output before it (RepDistiller's
`preact=True` features).
"""

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features
from distill_jax.models.layers import batch_norm, classifier_head, conv

# Layers per block for each depth (RepDistiller's configurations S, A, B, D, E).
VGG_LAYERS: dict[int, tuple[int, ...]] = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """VGG-depth with BatchNorm for CIFAR; see the module docstring for features.

    Attributes:
        num_classes: number of output logits.
        depth: one of 8, 11, 13, 16, 19.
        axis_name: pmap axis for BatchNorm statistics (None under jit).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    depth: int = 13
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        if self.depth not in VGG_LAYERS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_LAYERS)}, got {self.depth}")
        height = x_BHWC.shape[1]
        features: Features = {}
        x = x_BHWC.astype(self.dtype)
        blocks = zip(VGG_LAYERS[self.depth], VGG_WIDTHS, strict=True)
        for i, (num_layers, width) in enumerate(blocks):
            if i in (1, 2, 3) or (i == 4 and height > 32):
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for j in range(num_layers):
                if j > 0:
                    x = nn.relu(x)
                x = conv(width, 3, use_bias=True, dtype=self.dtype, name=f"block{i}_conv{j}")(x)
                x = batch_norm(train, self.axis_name, self.dtype, name=f"block{i}_bn{j}")(x)
            if i == 0:
                x = nn.relu(x)
                features["stem"] = x
            else:
                features[f"stage{i}_preact"] = x
                x = nn.relu(x)
                features[f"stage{i}"] = x
        logits_BC = classifier_head(
            x, features, self.num_classes, self.dtype, kernel_init=nn.initializers.normal(0.01)
        )
        return logits_BC, features


class VGG8(VGG):
    """RepDistiller's `vgg8_bn` (3.97M parameters at 100 classes)."""

    depth: int = 8


class VGG11(VGG):
    """RepDistiller's `vgg11_bn`."""

    depth: int = 11


class VGG13(VGG):
    """RepDistiller's `vgg13_bn` (9.46M parameters at 100 classes)."""

    depth: int = 13


class VGG16(VGG):
    """RepDistiller's `vgg16_bn`."""

    depth: int = 16


class VGG19(VGG):
    """RepDistiller's `vgg19_bn`."""

    depth: int = 19
