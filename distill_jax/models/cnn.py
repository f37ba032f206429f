"""A small convolutional classifier for MNIST-sized images."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features


class CNN(nn.Module):
    """Conv(3x3) -> [BatchNorm] -> ReLU -> MaxPool(2) stages, then a dense hidden layer.

    Attributes:
        num_classes: number of output logits.
        widths: output channels of each conv stage.
        dense: width of the hidden dense layer before the head (0 for none).
        dropout: dropout rate before the head.
        batch_norm: use BatchNorm after each convolution (statistics in `batch_stats`).
        axis_name: the pmap axis over which BatchNorm averages its batch statistics
            (None under jit, where the batch is one global array anyway).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    widths: Sequence[int] = (32, 64)
    dense: int = 128
    dropout: float = 0.0
    batch_norm: bool = False
    axis_name: str | None = None
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        features: Features = {}
        x = x_BHWC.astype(self.dtype)
        for i, width in enumerate(self.widths, start=1):
            x = nn.Conv(width, (3, 3), dtype=self.dtype, use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                )(x)
            features[f"stage{i}_preact"] = x
            x = nn.relu(x)
            features[f"stage{i}"] = x
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        if self.dense:
            x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits_BC = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return logits_BC, features
