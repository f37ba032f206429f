"""Feature- and relation-based distillation methods, following RepDistiller's zoo.

Each class below is a `Method` (see `distill_jax/losses/method.py` for the calling
convention) registered under its config name:

| name     | class                   | reads (default)            | RepDistiller weight `-b` |
|----------|-------------------------|----------------------------|--------------------------|
| `fitnet` | `FitNet`                | `stage2` -> `stage2`       | 100                      |
| `at`     | `AttentionTransfer`     | `stage1..3` -> `stage1..3` | 1000                     |
| `sp`     | `SimilarityPreserving`  | `stage3` -> `stage3`       | 3000                     |
| `cc`     | `CorrelationCongruence` | `pre_logits`               | 0.02                     |
| `vid`    | `VID`                   | `stage1..3` -> `stage1..3` | 1                        |
| `rkd`    | `RKD`                   | `pre_logits`               | 1 (w_d, w_a inside)      |
| `pkt`    | `PKT`                   | `pre_logits`               | 30000                    |

The defaults are those of RepDistiller (Tian et al., "Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, `distiller_zoo/`,
`train_student.py`, `scripts/run_cifar_distill.sh`), whose CIFAR ResNets expose the
features `[stem, stage1, stage2, stage3, pre_logits]`: its `feat[1:-1]` is our
`stage1..3`, `feat[-2]` is `stage3`, `feat[-1]` is `pre_logits` and `hint_layer=2` is
`stage2`. The weight in the table multiplies the returned loss in the pipeline (the
config's weight); it is never applied here. Methods reading several feature pairs *sum*
the per-pair losses, as RepDistiller's training loop does (`loss_kd = sum(loss_group)`);
its weights were tuned for that sum.

Conventions shared by every method here:

* Features are float32 (`to_float32`), NHWC for conv stages and `(B, D)` for
  `pre_logits`. Teacher features pass through `jax.lax.stop_gradient`.
* Padding rows (`batch["mask"]` False) are replaced by zeros *before* any computation
  (with `jnp.where`, so a NaN/inf in a padded row cannot leak into values or gradients),
  and every reduction and batch statistic is taken over the kept rows only. For every
  method the masked result equals the result on the kept rows alone: per-example losses
  use `masked_mean`; batch-relation losses (SP, CC, RKD, PKT) and FitNet's BatchNorm
  weight pairs/statistics by the kept rows and divide by the kept count `n`, not `B`.
* Under `jax.pmap` the batch relations (SP, CC, RKD, PKT) and FitNet's BatchNorm
  statistics are computed per device (no cross-device gather), like a PyTorch
  `DataParallel` replica computing its loss on its own shard; under `jit` with a sharded
  global batch they cover the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.losses.base import masked_mean
from distill_jax.losses.method import Batch, Method, Outputs, register
from distill_jax.losses.ops import adaptive_avg_pool, as_map, gather_features, l2_normalize

# PyTorch's default `Conv2d`/`Linear` weight init, `kaiming_uniform_(a=sqrt(5))`, i.e.
# uniform in +-1/sqrt(fan_in); RepDistiller's regressors and embeddings keep it. (Biases
# start at zero here; PyTorch draws them from the same range.)
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ---------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------


def _keep_mask(batch: Batch, batch_size: int) -> jax.Array | None:
    """The batch's mask as a `(B,)` bool array, or None when every row is kept."""
    mask_B = batch.get("mask") if batch is not None else None
    if mask_B is None:
        return None
    mask_B = jnp.asarray(mask_B)
    if mask_B.shape != (batch_size,):
        raise ValueError(f"batch mask shape {mask_B.shape} does not match batch size {batch_size}")
    return mask_B.astype(bool)


def _zero_masked_rows(x_B: jax.Array, keep_B: jax.Array | None) -> jax.Array:
    """Replaces the rows that `keep_B` drops by zeros (`where`, so NaN/inf cannot leak)."""
    if keep_B is None:
        return x_B
    keep = keep_B.reshape((-1,) + (1,) * (x_B.ndim - 1))
    return jnp.where(keep, x_B, jnp.zeros_like(x_B))


def _feature_pairs(
    method: Method, student: Outputs, teacher: Outputs, batch: Batch
) -> tuple[list[tuple[jax.Array, jax.Array]], jax.Array | None]:
    """The method's `(student, teacher)` feature pairs and the batch's keep mask.

    Both features are cast to float32 and their padded rows zeroed; the teacher's pass
    through `stop_gradient`.
    """
    names_s, names_t = tuple(method.student_features), tuple(method.teacher_features)
    if len(names_s) != len(names_t) or not names_s:
        raise ValueError(
            f"{type(method).__name__} needs as many student as teacher features (at least "
            f"one), got student_features={names_s} and teacher_features={names_t}"
        )
    pairs = []
    keep_B = None
    feats_s, feats_t = gather_features(method, student, teacher)
    for name_s, name_t, f_s, f_t in zip(names_s, names_t, feats_s, feats_t, strict=True):
        if f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"student feature {name_s!r} {f_s.shape} and teacher feature {name_t!r} "
                f"{f_t.shape} have different batch sizes"
            )
        keep_B = _keep_mask(batch, f_s.shape[0])
        pairs.append((_zero_masked_rows(f_s, keep_B), _zero_masked_rows(f_t, keep_B)))
    return pairs, keep_B


def _match_spatial(f_s: jax.Array, f_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pools the larger of two NHWC maps to the smaller one's size (RepDistiller's AT/VID).

    Raises:
      ValueError: the sizes differ and the larger is not an integer multiple of the
        smaller in both dimensions (the only case pooled here).
    """
    (hs, ws), (ht, wt) = f_s.shape[1:3], f_t.shape[1:3]
    if (hs, ws) == (ht, wt):
        return f_s, f_t
    if hs >= ht and ws >= wt and hs % ht == 0 and ws % wt == 0:
        return adaptive_avg_pool(f_s, (ht, wt)), f_t
    if ht >= hs and wt >= ws and ht % hs == 0 and wt % ws == 0:
        return f_s, adaptive_avg_pool(f_t, (hs, ws))
    raise ValueError(
        f"student feature shape {f_s.shape} and teacher feature shape {f_t.shape} have "
        "spatial sizes that are neither equal nor integer multiples of each other"
    )


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """`||x||_2` along `axis` (keepdims) with a zero (not NaN) gradient at `x = 0`."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _smooth_l1(x: jax.Array) -> jax.Array:
    """PyTorch's `smooth_l1_loss` with `beta=1` (the Huber loss with `delta=1`)."""
    abs_x = jnp.abs(x)
    return jnp.where(abs_x < 1.0, 0.5 * x * x, abs_x - 0.5)


def _kept_count(keep_B: jax.Array | None, batch_size: int) -> jax.Array:
    """Number of kept rows as a float32 scalar (at least 1, so ratios stay finite)."""
    if keep_B is None:
        return jnp.float32(batch_size)
    return jnp.maximum(jnp.sum(keep_B), 1).astype(jnp.float32)


def _pair_weights(keep_B: jax.Array | None, batch_size: int) -> jax.Array:
    """`w_ij = keep_i * keep_j` as a float32 `(B, B)` matrix (all ones without a mask)."""
    if keep_B is None:
        return jnp.ones((batch_size, batch_size), jnp.float32)
    k = keep_B.astype(jnp.float32)
    return k[:, None] * k[None, :]


# ---------------------------------------------------------------------------
# FitNets.
# ---------------------------------------------------------------------------


class ConvRegressor(nn.Module):
    """RepDistiller's `ConvReg`: maps a student map onto a teacher map's shape.

    The convolution depends on the spatial sizes (student `Hs x Ws`, teacher `Ht x Wt`):

    * `Hs = 2 Ht` (and `Ws = 2 Wt`): 3x3 convolution, stride 2, padding 1;
    * `2 Hs = Ht` (and `2 Ws = Wt`): 4x4 transposed convolution, stride 2, padding 1
      (PyTorch's `ConvTranspose2d` semantics);
    * `Hs >= Ht`, `Ws >= Wt`: a `(1 + Hs - Ht) x (1 + Ws - Wt)` convolution without
      padding -- a 1x1 convolution when the sizes are equal.

    then BatchNorm (optional) and ReLU (optional), as `ConvReg(use_relu=True)`. The
    convolution has a bias, as in the reference.

    BatchNorm always normalises with the statistics of the current batch's kept rows
    (biased variance, epsilon 1e-5) and keeps no running averages: RepDistiller uses
    the regressor only for the training loss, with the module in train mode, so batch
    statistics are what it computes. (Its eval-mode loss, never used for training, would
    read running averages; this module has no state to carry instead.)

    Attributes:
        target_shape: the teacher map's `(Ht, Wt, Ct)`.
        use_bn: apply BatchNorm after the convolution.
        use_relu: apply ReLU last.
        epsilon: BatchNorm epsilon.
    """

    target_shape: tuple[int, int, int]
    use_bn: bool = True
    use_relu: bool = True
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, keep_B: jax.Array | None = None) -> jax.Array:
        """Regresses `x_BHWC` to `(B, Ht, Wt, Ct)`; `keep_B` selects the BN statistics' rows."""
        hs, ws = x_BHWC.shape[1:3]
        ht, wt, ct = self.target_shape
        if hs == 2 * ht and ws == 2 * wt:
            y = nn.Conv(
                ct,
                (3, 3),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                kernel_init=_torch_default_init,
                name="conv",
            )(x_BHWC)
        elif 2 * hs == ht and 2 * ws == wt:
            # PyTorch's ConvTranspose2d(k=4, s=2, p=1) is lax.conv_transpose with the
            # kernel transposed and explicit padding k - 1 - p = 2 on each side.
            y = nn.ConvTranspose(
                ct,
                (4, 4),
                strides=(2, 2),
                padding=((2, 2), (2, 2)),
                transpose_kernel=True,
                kernel_init=_torch_default_init,
                name="conv",
            )(x_BHWC)
        elif hs >= ht and ws >= wt:
            y = nn.Conv(
                ct,
                (1 + hs - ht, 1 + ws - wt),
                padding="VALID",
                kernel_init=_torch_default_init,
                name="conv",
            )(x_BHWC)
        else:
            raise ValueError(
                f"FitNet regressor cannot map a student map of size {hs}x{ws} to a teacher "
                f"map of size {ht}x{wt}: the student map must be at least as large, or "
                "exactly half the size"
            )
        if self.use_bn:
            y = self._batch_norm(y, keep_B)
        if self.use_relu:
            y = nn.relu(y)
        return y

    def _batch_norm(self, y_BHWC: jax.Array, keep_B: jax.Array | None) -> jax.Array:
        """Training-mode BatchNorm over the kept rows (statistics over batch, H and W)."""
        channels = y_BHWC.shape[-1]
        scale = self.param("bn_scale", nn.initializers.ones, (channels,))
        bias = self.param("bn_bias", nn.initializers.zeros, (channels,))
        b, h, w = y_BHWC.shape[:3]
        if keep_B is None:
            weight = jnp.ones((b, 1, 1, 1), y_BHWC.dtype)
        else:
            weight = keep_B.astype(y_BHWC.dtype).reshape(b, 1, 1, 1)
        count = jnp.maximum(jnp.sum(weight), 1.0) * h * w
        mean_C = jnp.sum(weight * y_BHWC, axis=(0, 1, 2)) / count
        var_C = jnp.sum(weight * jnp.square(y_BHWC - mean_C), axis=(0, 1, 2)) / count
        return (y_BHWC - mean_C) * jax.lax.rsqrt(var_C + self.epsilon) * scale + bias


@register("fitnet")
class FitNet(Method):
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    Eq. (3) of the paper: `L_HT = 1/2 ||u_h(x) - r(v_g(x); W_r)||^2`, the teacher's hint
    layer `u_h` regressed from the student's guided layer `v_g` through a learned
    regressor `r`. As in RepDistiller (`HintLoss` = `nn.MSELoss()`, `ConvReg`), the
    squared error is *averaged* over all elements (batch, height, width, channels), with
    no 1/2, and `r` is `ConvRegressor` (convolution + BatchNorm + ReLU, see there).
    Several pairs may be given; their losses are summed.

    Defaults: student `stage2`, teacher `stage2` (RepDistiller's `hint_layer=2`).
    RepDistiller's weight: `-b 100` (with `-a 0`, `-r 1`). The paper's two-stage
    schedule (hint pre-training, then KD) is not part of the loss; RepDistiller trains
    the hint loss jointly with cross-entropy, as this method does.

    Params: one `ConvRegressor` per pair, `regressor{i}` (conv kernel and bias, BN scale
    and bias). `(B, D)` features are treated as `(B, 1, 1, D)` maps (a linear layer).

    Attributes:
        use_bn: BatchNorm in the regressor (RepDistiller: yes).
        use_relu: ReLU at the end of the regressor (RepDistiller: yes).
    """

    student_features: Sequence[str] = ("stage2",)
    teacher_features: Sequence[str] = ("stage2",)
    use_bn: bool = True
    use_relu: bool = True

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for i, (f_s, f_t) in enumerate(pairs):
            f_t_BHWC = as_map(f_t, "teacher feature")
            guided_BHWC = ConvRegressor(
                target_shape=f_t_BHWC.shape[1:],
                use_bn=self.use_bn,
                use_relu=self.use_relu,
                name=f"regressor{i}",
            )(as_map(f_s, "student feature"), keep_B)
            values_B = jnp.mean(jnp.square(guided_BHWC - f_t_BHWC), axis=(1, 2, 3))
            total = total + masked_mean(values_B, keep_B)
        return total


# ---------------------------------------------------------------------------
# Attention transfer.
# ---------------------------------------------------------------------------


def attention_map(feats_BHWC: jax.Array, p: float = 2.0) -> jax.Array:
    """Normalised spatial attention map `Q = F(A) / ||F(A)||_2`, `F(A) = mean_c |A_c|^p`.

    Zagoruyko & Komodakis 2017, Sec. 3.1 (`F^p_mean`) and Eq. (2)'s normalisation.

    Args:
      feats_BHWC: activations, shape `[B, H, W, C]`.
      p: the exponent (2 in the paper's experiments and RepDistiller).

    Returns:
      `[B, H * W]`: each row L2-normalised (PyTorch's `F.normalize`, eps 1e-12).
    """
    b = feats_BHWC.shape[0]
    am_BHW = jnp.mean(jnp.abs(feats_BHWC) ** p, axis=-1)
    return l2_normalize(am_BHW.reshape(b, -1), axis=-1)


@register("at")
class AttentionTransfer(Method):
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention",
    ICLR 2017).

    Eq. (2) of the paper: `beta/2 * sum_j || Q_S^j/||Q_S^j|| - Q_T^j/||Q_T^j|| ||_p`
    with `Q = vec(F(A))`, `F(A) = sum_c |A_c|^p`. RepDistiller's `Attention` (the
    authors' code) uses `F = mean_c A_c^p` (p=2), then per pair the *squared*
    difference averaged over batch and positions:

        L = sum_j mean_{b, hw} (at(S_j) - at(T_j))^2,   at(A) = normalize(mean_c |A|^p),

    which is what this computes (`|A|^p` equals `A^p` for the default p=2). When the
    spatial sizes differ, the larger map is average-pooled to the smaller first (as
    RepDistiller's `adaptive_avg_pool2d`; only integer size ratios are supported, else a
    ValueError names the shapes). Channel counts may differ.

    Defaults: `stage1..3` for both (RepDistiller's `feat[1:-1]`), p = 2. RepDistiller's
    weight: `-b 1000` (the paper's beta = 1000 as well); no parameters.
    """

    student_features: Sequence[str] = ("stage1", "stage2", "stage3")
    teacher_features: Sequence[str] = ("stage1", "stage2", "stage3")
    p: float = 2.0

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for f_s, f_t in pairs:
            f_s, f_t = _match_spatial(
                as_map(f_s, "student feature"), as_map(f_t, "teacher feature")
            )
            diff_BN = attention_map(f_s, self.p) - attention_map(f_t, self.p)
            total = total + masked_mean(jnp.mean(jnp.square(diff_BN), axis=-1), keep_B)
        return total


# ---------------------------------------------------------------------------
# Similarity-preserving KD.
# ---------------------------------------------------------------------------


@register("sp")
class SimilarityPreserving(Method):
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge
    Distillation", ICCV 2019).

    Eqs. (1)-(4): with `Q` the `(B, HWC)` flattened activations, `G = Q Q^T` and
    `G~` its rows L2-normalised (`G~_[i,:] = G_[i,:] / ||G_[i,:]||_2`),

        L_SP = 1/B^2 * || G~_T - G~_S ||_F^2,

    as in RepDistiller's `Similarity` (verified by the authors). Several pairs are
    summed. With a mask, `Q` keeps the kept rows only (the Gram rows/columns of padded
    rows are zero) and `B` is the kept count.

    Defaults: `stage3` for both (RepDistiller's `feat[-2]`, the last stage's output).
    RepDistiller's weight: `-b 3000` (the paper's gamma = 3000); no parameters.
    """

    student_features: Sequence[str] = ("stage3",)
    teacher_features: Sequence[str] = ("stage3",)

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for f_s, f_t in pairs:
            b = f_s.shape[0]
            q_s, q_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
            g_s_BB = l2_normalize(q_s @ q_s.T, axis=1)
            g_t_BB = l2_normalize(q_t @ q_t.T, axis=1)
            n = _kept_count(keep_B, b)
            total = total + jnp.sum(jnp.square(g_t_BB - g_s_BB)) / (n * n)
        return total


# ---------------------------------------------------------------------------
# Correlation congruence.
# ---------------------------------------------------------------------------


@register("cc")
class CorrelationCongruence(Method):
    """Correlation congruence, in RepDistiller's version (Peng et al., "Correlation
    Congruence for Knowledge Distillation", ICCV 2019).

    The paper (Eqs. 4-9) matches `B x B` correlation matrices of embeddings under a
    Taylor-expanded Gaussian kernel. RepDistiller's `Correlation` -- code the authors
    sent to its maintainer -- computes something else, which is what is reproduced
    here: both models' `pre_logits` pass through learned linear embeddings
    (`LinearEmbed`, `embed_dim` = 128, *no* L2 normalisation), then with
    `delta_i = |e_S(x_i) - e_T(x_i)|` (element-wise)

        L = 1/(B-1) * sum_{i=1}^{B-1} <delta_i, delta_{i+1}>,

    the correlation of consecutive examples' embedding errors. Both embeddings are
    trainable (RepDistiller trains `embed_t` too); only the teacher's *features* are
    frozen. With a mask the kept rows are taken in their batch order and paired
    consecutively among themselves (the loss equals the loss on the kept rows alone).
    Several pairs (each with its own two embeddings) are summed.

    Defaults: `pre_logits` for both (RepDistiller's `feat[-1]`), `embed_dim=128`
    (`--feat_dim`). RepDistiller's weight: `-b 0.02`.

    Params: `student_embed{i}` and `teacher_embed{i}` (Dense kernel and bias, PyTorch's
    default kernel init, zero bias).
    """

    student_features: Sequence[str] = ("pre_logits",)
    teacher_features: Sequence[str] = ("pre_logits",)
    embed_dim: int = 128

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for i, (f_s, f_t) in enumerate(pairs):
            b = f_s.shape[0]
            e_s_BE = nn.Dense(
                self.embed_dim, kernel_init=_torch_default_init, name=f"student_embed{i}"
            )(f_s.reshape(b, -1))
            e_t_BE = nn.Dense(
                self.embed_dim, kernel_init=_torch_default_init, name=f"teacher_embed{i}"
            )(f_t.reshape(b, -1))
            delta_BE = jnp.abs(e_s_BE - e_t_BE)
            if keep_B is None:
                total = total + jnp.mean(jnp.sum(delta_BE[:-1] * delta_BE[1:], axis=-1))
                continue
            # Move the kept rows to the front, in order, and pair neighbours among them.
            order_B = jnp.argsort(~keep_B, stable=True)
            delta_BE = delta_BE[order_B]
            n_kept = jnp.sum(keep_B)
            valid = jnp.arange(b - 1) < n_kept - 1
            products = jnp.sum(delta_BE[:-1] * delta_BE[1:], axis=-1)
            count = jnp.maximum(n_kept - 1, 1).astype(jnp.float32)
            total = total + jnp.sum(jnp.where(valid, products, 0.0)) / count
        return total


# ---------------------------------------------------------------------------
# Variational information distillation.
# ---------------------------------------------------------------------------


class VIDRegressor(nn.Module):
    """One layer of RepDistiller's `VIDLoss`: the predicted mean and variance.

    The mean is `conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1` of the student map (no
    biases); the variance is per teacher channel, `softplus(log_scale) + eps`, with
    `log_scale` initialised to `log(exp(init_pred_var - eps) - 1)` so that it starts at
    `init_pred_var`.

    Attributes:
        out_channels: teacher channels `Ct`.
        mid_channels: width of the hidden 1x1 convolutions.
        init_pred_var: initial variance.
        eps: variance floor.
    """

    out_channels: int
    mid_channels: int
    init_pred_var: float = 5.0
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns `(mean_BHWC, var_C)`."""

        def conv1x1(features: int, name: str) -> nn.Dense:
            # A 1x1 convolution is a Dense layer on the channel axis (same fan-in init).
            return nn.Dense(features, use_bias=False, kernel_init=_torch_default_init, name=name)

        h = nn.relu(conv1x1(self.mid_channels, "conv1")(x_BHWC))
        h = nn.relu(conv1x1(self.mid_channels, "conv2")(h))
        mean_BHWC = conv1x1(self.out_channels, "conv3")(h)
        init = float(np.log(np.expm1(self.init_pred_var - self.eps)))
        log_scale_C = self.param("log_scale", nn.initializers.constant(init), (self.out_channels,))
        var_C = jax.nn.softplus(log_scale_C) + self.eps
        return mean_BHWC, var_C


@register("vid")
class VID(Method):
    """Variational information distillation (Ahn et al., "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019).

    Eq. (6) of the paper with the Gaussian of Eq. (5) (constant dropped): for teacher
    map `t`, predicted mean `mu(s)` from the student map and per-channel variance
    `sigma_c^2`,

        L = sum_layers mean_{b,h,w,c} 1/2 * (log sigma_c^2 + (t - mu(s))^2 / sigma_c^2),

    RepDistiller's `VIDLoss` (the authors' code): `mu` is `VIDRegressor` (three 1x1
    convolutions, hidden width = teacher channels, as `VIDLoss(s, t, t)`),
    `sigma^2 = softplus(alpha) + eps`. Per-layer losses are summed as in RepDistiller's
    loop. When the spatial sizes differ the larger map is average-pooled to the smaller
    first (RepDistiller's `adaptive_avg_pool2d`; integer ratios only).

    Defaults: `stage1..3` for both (`feat[1:-1]`), `init_pred_var=5.0`, `eps=1e-5`.
    RepDistiller's weight: `-b 1`.

    Params: `regressor{i}` per layer (`conv1..3` kernels, `(C_in, C_out)` since a 1x1
    convolution is a Dense layer on the channel axis; `log_scale`).

    Attributes:
        mid_channels: hidden width; None uses the teacher's channel count (RepDistiller).
        init_pred_var: initial predicted variance.
        eps: variance floor.
    """

    student_features: Sequence[str] = ("stage1", "stage2", "stage3")
    teacher_features: Sequence[str] = ("stage1", "stage2", "stage3")
    mid_channels: int | None = None
    init_pred_var: float = 5.0
    eps: float = 1e-5

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for i, (f_s, f_t) in enumerate(pairs):
            f_s, f_t = _match_spatial(
                as_map(f_s, "student feature"), as_map(f_t, "teacher feature")
            )
            channels_t = f_t.shape[-1]
            mean_BHWC, var_C = VIDRegressor(
                out_channels=channels_t,
                mid_channels=self.mid_channels or channels_t,
                init_pred_var=self.init_pred_var,
                eps=self.eps,
                name=f"regressor{i}",
            )(f_s)
            nll_BHWC = 0.5 * (jnp.square(mean_BHWC - f_t) / var_C + jnp.log(var_C))
            total = total + masked_mean(jnp.mean(nll_BHWC, axis=(1, 2, 3)), keep_B)
        return total


# ---------------------------------------------------------------------------
# Relational KD.
# ---------------------------------------------------------------------------


@register("rkd")
class RKD(Method):
    """Relational knowledge distillation (Park et al., "Relational Knowledge
    Distillation", CVPR 2019), distance-wise plus angle-wise.

    With `t_i`, `s_i` the flattened embeddings,

    * distance (Eqs. 3-5): `psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu`, `mu` the mean over
      the `B(B-1)` off-diagonal pairs; `L_D = mean_{i,j} l_delta(psi_D(s), psi_D(t))`
      over all `B^2` entries (the diagonal is 0 - 0), as `F.smooth_l1_loss`;
    * angle (Eqs. 6-7): `psi_A(t_i, t_j, t_k) = <e_ij, e_ik>` with
      `e_ij = normalize(t_j - t_i)`; `L_A = mean_{i,j,k} l_delta(psi_A(s), psi_A(t))`
      over all `B^3` triplets;

    `l_delta` the Huber (smooth L1) loss with `delta = 1`, and `L = w_d L_D + w_a L_A`,
    exactly RepDistiller's `RKDLoss` (the authors' formulation). The distances are
    `sqrt(max(||x_i - x_j||^2, eps))` computed from the differences (RepDistiller
    expands `|x_i|^2 + |x_j|^2 - 2 x_i.x_j`, which loses precision in float32 for close
    points; equal otherwise). The student's `mu` is differentiated through, as there.
    With a mask, pairs/triplets involving padded rows are left out and `B` is the kept
    count. Several pairs are summed.

    Defaults: `pre_logits` for both (`feat[-1]`), `distance_weight=25`,
    `angle_weight=50`, `eps=1e-12`. RepDistiller's weight: `-b 1`; no parameters.
    """

    student_features: Sequence[str] = ("pre_logits",)
    teacher_features: Sequence[str] = ("pre_logits",)
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    eps: float = 1e-12

    def _relations(self, x_BD: jax.Array, pair_w_BB: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean-normalised distances `(B, B)` and angles `(B, B, B)` of one embedding."""
        b = x_BD.shape[0]
        diff_BBD = x_BD[None, :, :] - x_BD[:, None, :]  # [i, j] = x_j - x_i
        sq_BB = jnp.sum(diff_BBD * diff_BBD, axis=-1)
        off_diag_BB = 1.0 - jnp.eye(b, dtype=jnp.float32)
        dist_BB = jnp.sqrt(jnp.maximum(sq_BB, self.eps)) * off_diag_BB
        weights_BB = pair_w_BB * off_diag_BB
        count = jnp.sum(weights_BB)
        mean = jnp.sum(weights_BB * dist_BB) / jnp.maximum(count, 1.0)
        mean = jnp.where(count > 0, mean, 1.0)
        unit_BBD = l2_normalize(diff_BBD, axis=-1)
        angle_BBB = jnp.einsum("ijd,ikd->ijk", unit_BBD, unit_BBD)
        return dist_BB / mean, angle_BBB

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for f_s, f_t in pairs:
            b = f_s.shape[0]
            pair_w_BB = _pair_weights(keep_B, b)
            d_s, a_s = self._relations(f_s.reshape(b, -1), pair_w_BB)
            d_t, a_t = self._relations(f_t.reshape(b, -1), pair_w_BB)
            n = _kept_count(keep_B, b)
            loss_d = jnp.sum(pair_w_BB * _smooth_l1(d_s - d_t)) / (n * n)
            triple_w_BBB = pair_w_BB[:, :, None] * pair_w_BB[:, None, :]
            loss_a = jnp.sum(triple_w_BBB * _smooth_l1(a_s - a_t)) / (n * n * n)
            total = total + self.distance_weight * loss_d + self.angle_weight * loss_a
        return total


# ---------------------------------------------------------------------------
# Probabilistic knowledge transfer.
# ---------------------------------------------------------------------------


@register("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep
    Representations with Probabilistic Knowledge Transfer", ECCV 2018).

    Eqs. (8)-(10) with the cosine kernel: for L2-normalised embeddings
    (`x / (||x|| + eps)`), `K_ij = (cos(x_i, x_j) + 1) / 2` in `[0, 1]`, conditional
    probabilities `p_{j|i} = K_ij / sum_k K_ik` (the diagonal included, as in the
    authors' code), and

        L = 1/B^2 * sum_{i,j} p^T_{j|i} log((p^T_{j|i} + eps) / (p^S_{j|i} + eps)),

    i.e. the KL divergence of Eq. (10) *averaged* over the `B x B` entries
    (`torch.mean`), exactly RepDistiller's `PKT` (the authors' code). With a mask the
    kernels, row sums and mean cover the kept rows only. Several pairs are summed.
    (The reference's NaN-to-zero replacement after normalising is not needed: with
    `+ eps` in the denominator a finite input cannot produce NaN.)

    Defaults: `pre_logits` for both (`feat[-1]`), `eps=1e-7`. RepDistiller's weight:
    `-b 30000`; no parameters.
    """

    student_features: Sequence[str] = ("pre_logits",)
    teacher_features: Sequence[str] = ("pre_logits",)
    eps: float = 1e-7

    def _conditional(self, x_BD: jax.Array, pair_w_BB: jax.Array) -> jax.Array:
        """`p_{j|i}` over the kept pairs (zero elsewhere)."""
        x_BD = x_BD / (_safe_norm(x_BD, axis=-1) + self.eps)
        kernel_BB = pair_w_BB * (x_BD @ x_BD.T + 1.0) / 2.0
        row_sum_B1 = jnp.sum(kernel_BB, axis=1, keepdims=True)
        return kernel_BB / jnp.where(row_sum_B1 > 0, row_sum_B1, 1.0)

    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        pairs, keep_B = _feature_pairs(self, student, teacher, batch)
        total = jnp.float32(0.0)
        for f_s, f_t in pairs:
            b = f_s.shape[0]
            pair_w_BB = _pair_weights(keep_B, b)
            p_s_BB = self._conditional(f_s.reshape(b, -1), pair_w_BB)
            p_t_BB = self._conditional(f_t.reshape(b, -1), pair_w_BB)
            kl_BB = p_t_BB * jnp.log((p_t_BB + self.eps) / (p_s_BB + self.eps))
            n = _kept_count(keep_B, b)
            total = total + jnp.sum(pair_w_BB * kl_BB) / (n * n)
        return total
