"""CRD: contrastive representation distillation (Tian, Krishnan and Isola, ICLR 2020).

"Contrastive Representation Distillation", Sec. 3.2-3.4 and RepDistiller's `crd/`
(`CRDLoss`, `ContrastMemory`, `ContrastLoss`), reproduced term by term:

1. Embeddings: `v_s = normalize(W_s f_s + b_s)`, `v_t = normalize(W_t f_t + b_t)`
   (`Embed`: one linear layer to `feat_dim` = 128, then L2 normalisation), from the
   `pre_logits` of each model. Both linear layers are trainable.
2. Memory banks (the `"memory"` collection): `student_bank`, `teacher_bank`, each
   `(num_data, feat_dim)`, initialised uniform in `+-1/sqrt(feat_dim / 3)`.
3. Scores against `K + 1` rows `idx[b] = (index[b], K uniform draws)` of the *other*
   model's bank, read before this step's update and without gradient:

       out_s[b, k] = exp(teacher_bank[idx[b, k]] . v_s[b] / T) / Z_s   (student anchor)
       out_t[b, k] = exp(student_bank[idx[b, k]] . v_t[b] / T) / Z_t   (teacher anchor)

   `Z_s`, `Z_t` (RepDistiller's `Z_v1`, `Z_v2`) are estimated once, on the first training
   batch, as `mean(exp(...)) * num_data`, then stored in `"memory"` and kept fixed.
4. NCE loss with noise `P_n = 1 / num_data` and `m = K` (Eq. 18, `ContrastLoss`):

       L(out) = mean_b -[ log(out_0 / (out_0 + m P_n + eps))
                          + sum_{k>=1} log(m P_n / (out_k + m P_n + eps)) ],  eps = 1e-7

   and the method's loss is `L(out_s) + L(out_t)`.
5. Update (training only): the rows at `index` become
   `normalize(m_nce * row + (1 - m_nce) * v)` for each bank (`nce_m` = 0.5).

Negatives: drawn uniformly with replacement from `[0, num_data)` (RepDistiller's
`AliasMethod` over uniform unigrams, its path when no `contrast_idx` is given; the
positive's own index may be drawn). The draws use `self.make_rng("crd")`: callers pass
`rngs={"crd": key}` (the pipeline folds the step into its key). RepDistiller's CIFAR
script instead has the data loader supply `contrast_idx` with negatives from *other
classes* (`mode="exact"`); a batch may carry such a `"contrast_index"` `(B, K + 1)`
array (column 0 = the positive), which is then used instead of sampling.

Masked rows are excluded from the loss, from the `Z` estimate and from the bank update.
Duplicate indices in one batch (not produced by an epoch's permutation) would update a
row with one of the duplicates, like the reference's `index_copy_`.
Under `pmap` each device would update its own copy of the banks; the jit-sharded
strategy (one global batch) updates one bank, like the single-device reference.

Reference weight: 0.8 (RepDistiller `-a 0 -b 0.8`, mdistiller `FEAT_WEIGHT: 0.8`; add
KD with weight 1 for "CRD+KD").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.losses.base import masked_mean, to_float32
from distill_jax.losses.method import Batch, Method, Outputs, register
from distill_jax.losses.ops import l2_normalize

_EPS = 1e-7  # RepDistiller's ContrastLoss eps.


def contrast_loss_B(out_BK1: jax.Array, num_data: int) -> jax.Array:
    """Per-example NCE loss of RepDistiller's `ContrastLoss` (column 0 is the positive)."""
    m = out_BK1.shape[1] - 1
    noise = m / float(num_data)
    log_d1_B = jnp.log(out_BK1[:, 0] / (out_BK1[:, 0] + noise + _EPS))
    log_d0_BK = jnp.log(noise / (out_BK1[:, 1:] + noise + _EPS))
    return -(log_d1_B + jnp.sum(log_d0_BK, axis=1))


class Embed(nn.Module):
    """RepDistiller's `Embed`: flatten, linear layer (PyTorch default init), L2-normalise."""

    feat_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x_BF = x.reshape(x.shape[0], -1)
        bound = 1.0 / math.sqrt(x_BF.shape[-1])
        dense = nn.Dense(
            self.feat_dim,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                key, shape, dtype, -bound, bound
            ),
            name="linear",
        )
        return l2_normalize(dense(x_BF))


@register("crd")
class CRD(Method):
    """CRD (Tian et al., ICLR 2020): see the module docstring for the equations.

    Variables: `params` = `{"embed_s", "embed_t"}` (trained with the student);
    `memory` = `{"student_bank", "teacher_bank": (num_data, feat_dim), "z_student",
    "z_teacher": ()}` (`z_* < 0` until the first training batch sets them). Call with
    `rngs={"crd": key}` and, to update the memory, `train=True, mutable=["memory"]`; the
    bank is never updated at `train=False`, under an immutable `"memory"`, or at `init`.

    Attributes:
      student_features: one student feature (default `pre_logits`; maps are flattened).
      teacher_features: one teacher feature.
      num_data: size of the training split, the number of memory rows (the pipeline
        passes it; must be > 0).
      feat_dim: embedding dimension, default 128.
      nce_k: negatives per positive, default 16384.
      nce_t: temperature, default 0.07.
      nce_m: memory momentum, default 0.5.
    """

    student_features: Sequence[str] = ("pre_logits",)
    teacher_features: Sequence[str] = ("pre_logits",)
    num_data: int = 0
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        if self.num_data <= 0:
            raise ValueError("crd needs num_data (the training split's size) > 0")
        if len(self.student_features) != 1 or len(self.teacher_features) != 1:
            raise ValueError("crd reads exactly one student and one teacher feature")
        f_s = to_float32(student["features"][self.student_features[0]])
        f_t = to_float32(jax.lax.stop_gradient(teacher["features"][self.teacher_features[0]]))
        mask_B = batch.get("mask")
        index_B = jnp.asarray(batch["index"]).astype(jnp.int32)
        n, d, k = self.num_data, self.feat_dim, self.nce_k

        v_s_BD = Embed(d, name="embed_s")(f_s)
        v_t_BD = Embed(d, name="embed_t")(f_t)

        stdv = 1.0 / math.sqrt(d / 3.0)

        def init_bank():
            return jax.random.uniform(self.make_rng("params"), (n, d), jnp.float32, -stdv, stdv)

        student_bank = self.variable("memory", "student_bank", init_bank)
        teacher_bank = self.variable("memory", "teacher_bank", init_bank)
        z_student = self.variable("memory", "z_student", lambda: jnp.full((), -1.0, jnp.float32))
        z_teacher = self.variable("memory", "z_teacher", lambda: jnp.full((), -1.0, jnp.float32))

        # Indices of the positive (column 0) and K negatives per example.
        if batch.get("contrast_index") is not None:
            idx_BK1 = jnp.asarray(batch["contrast_index"]).astype(jnp.int32)
        else:
            idx_BK1 = jax.random.randint(self.make_rng("crd"), (index_B.shape[0], k + 1), 0, n)
            idx_BK1 = idx_BK1.at[:, 0].set(index_B)
        self.sow("intermediates", "contrast_index", idx_BK1)

        # Scores against the banks as they were before this step, without gradient.
        rows_t_BK1D = jax.lax.stop_gradient(teacher_bank.value[idx_BK1])
        rows_s_BK1D = jax.lax.stop_gradient(student_bank.value[idx_BK1])
        exp_s_BK1 = jnp.exp(jnp.einsum("bkd,bd->bk", rows_t_BK1D, v_s_BD) / self.nce_t)
        exp_t_BK1 = jnp.exp(jnp.einsum("bkd,bd->bk", rows_s_BK1D, v_t_BD) / self.nce_t)

        # Z: estimated on the first training batch, then fixed.
        def estimate_z(exp_BK1):
            mask_BK1 = None if mask_B is None else jnp.broadcast_to(mask_B[:, None], exp_BK1.shape)
            return jax.lax.stop_gradient(masked_mean(exp_BK1, mask_BK1) * n)

        z_s = jnp.where(z_student.value < 0, estimate_z(exp_s_BK1), z_student.value)
        z_t = jnp.where(z_teacher.value < 0, estimate_z(exp_t_BK1), z_teacher.value)

        loss_s = masked_mean(contrast_loss_B(exp_s_BK1 / z_s, n), mask_B)
        loss_t = masked_mean(contrast_loss_B(exp_t_BK1 / z_t, n), mask_B)

        if train and self.is_mutable_collection("memory") and not self.is_initializing():
            z_student.value = z_s
            z_teacher.value = z_t
            # Masked rows scatter out of bounds and are dropped.
            if mask_B is None:
                target_B = index_B
            else:
                target_B = jnp.where(jnp.asarray(mask_B).astype(bool), index_B, n)
            for bank, v_BD in ((student_bank, v_s_BD), (teacher_bank, v_t_BD)):
                old_BD = bank.value[jnp.clip(index_B, 0, n - 1)]
                new_BD = self.nce_m * old_BD + (1.0 - self.nce_m) * jax.lax.stop_gradient(v_BD)
                bank.value = bank.value.at[target_B].set(l2_normalize(new_BD), mode="drop")
        return loss_s + loss_t
