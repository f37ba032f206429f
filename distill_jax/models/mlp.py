"""Multi-layer perceptron classifier (Hinton et al. 2015's MNIST teacher and student)."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from distill_jax.models.base import Features


class MLP(nn.Module):
    """A ReLU MLP on flattened inputs.

    Attributes:
        num_classes: number of output logits.
        hidden: widths of the hidden layers, e.g. `(1200, 1200)`.
        dropout: dropout rate after every hidden layer (Hinton et al. 2012 use 0.5).
        input_dropout: dropout rate on the input pixels (0.2 in Hinton et al. 2012).
        dtype: computation dtype; parameters are always float32.
    """

    num_classes: int
    hidden: Sequence[int] = (512, 512)
    dropout: float = 0.0
    input_dropout: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, Features]:
        features: Features = {}
        x_BD = x_BHWC.reshape((x_BHWC.shape[0], -1)).astype(self.dtype)
        x_BD = nn.Dropout(self.input_dropout, deterministic=not train)(x_BD)
        for i, width in enumerate(self.hidden, start=1):
            x_BD = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x_BD))
            features[f"hidden{i}"] = x_BD
            x_BD = nn.Dropout(self.dropout, deterministic=not train)(x_BD)
        features["pre_logits"] = x_BD
        logits_BC = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x_BD)
        return logits_BC, features
