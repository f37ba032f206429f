"""On-device augmentation, run inside the jitted train step.

Randomness is per example: example `i` of a batch draws from `fold_in(key, index[i])`,
where `index` is the example's position in its split. The augmented view therefore does
not depend on how the batch is split over devices (jit-sharded and pmap runs see the same
pixels), and teacher and student are fed the very same view.
"""

import jax
import jax.numpy as jnp

_FLIP_STREAM = 0x5EED  # derives the flip key from the augmentation key


def to_float(images_BHWC: jnp.ndarray) -> jnp.ndarray:
    """uint8 pixels in [0, 255] -> float32 in [0, 1].

    Integer inputs other than uint8 (the int32 token ids of a text dataset) are not pixels:
    they pass through unchanged.
    """
    if images_BHWC.dtype != jnp.uint8 and jnp.issubdtype(images_BHWC.dtype, jnp.integer):
        return images_BHWC
    return images_BHWC.astype(jnp.float32) / 255.0


def random_translate(
    key: jax.Array, images_BHWC: jnp.ndarray, index_B: jnp.ndarray, max_shift: int
) -> jnp.ndarray:
    """Shifts each image by an integer offset in [-max_shift, max_shift] on each axis.

    Pixels shifted in from outside are zero (the background of MNIST-like images).

    Args:
        key: the step's augmentation key.
        images_BHWC: float images.
        index_B: each example's index in its split (selects its random stream).
        max_shift: the largest shift in pixels; 0 returns the images unchanged.

    Returns:
        The shifted images, same shape and dtype.
    """
    if max_shift == 0:
        return images_BHWC
    _, h, w, _ = images_BHWC.shape
    p = max_shift
    padded = jnp.pad(images_BHWC, ((0, 0), (p, p), (p, p), (0, 0)))

    def one(image_HWC, i):
        dy, dx = jax.random.randint(jax.random.fold_in(key, i), (2,), 0, 2 * p + 1)
        return jax.lax.dynamic_slice(image_HWC, (dy, dx, 0), (h, w, image_HWC.shape[-1]))

    return jax.vmap(one)(padded, index_B)


def random_flip(key: jax.Array, images_BHWC: jnp.ndarray, index_B: jnp.ndarray) -> jnp.ndarray:
    """Mirrors each image left-right with probability 1/2 (per-example keys, as above)."""

    def one(image_HWC, i):
        flip = jax.random.bernoulli(jax.random.fold_in(key, i))
        return jnp.where(flip, image_HWC[:, ::-1], image_HWC)

    return jax.vmap(one)(images_BHWC, index_B)


def augment(
    key: jax.Array,
    images_BHWC: jnp.ndarray,
    index_B: jnp.ndarray,
    translate: int = 0,
    flip: bool = False,
) -> jnp.ndarray:
    """The training augmentation: random translation, then (optionally) random flips.

    Translation draws from `key` itself and flips from a key derived from it, so adding
    flips leaves the translations of a config without them unchanged.
    """
    images_BHWC = random_translate(key, images_BHWC, index_B, translate)
    if flip:
        images_BHWC = random_flip(jax.random.fold_in(key, _FLIP_STREAM), images_BHWC, index_B)
    return images_BHWC
