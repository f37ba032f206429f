"""Types shared by all models.

Every classifier maps `(images_BHWC, train)` to `(logits_BC, features)`, where `features`
is a flat dict of named intermediate tensors (`"hidden1"`, `"stage2"`, `"pre_logits"`, ...).
Feature-based losses pick tensors by name; under jit the unused ones are pruned.
"""

import jax.numpy as jnp

Features = dict[str, jnp.ndarray]
