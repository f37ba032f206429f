"""Feature and relation distillation methods of the CRD benchmark: AB, FT, FSP, NST, ReviewKD.

Each method is a Linen `Method` (see `distill_jax.losses.method` for the contract),
registered by name and built like the reference implementations: RepDistiller's
`distiller_zoo/` (Tian et al. 2020, the CIFAR-100 benchmark) for AB, FT, FSP and NST, and
the official CIFAR-100 code of ReviewKD (dvlab-research/ReviewKD, also mdistiller's
`ReviewKD`). Feature maps are NHWC (`feats_BHWC`), `pre_logits` is `(B, D)`.

| registry   | class                  | student / teacher features (defaults)      | weight   |
|------------|------------------------|--------------------------------------------|----------|
| `ab`       | `ActivationBoundaries` | `stage{1,2,3}_preact` / same               | 1 (init) |
| `ft`       | `FactorTransfer`       | `stage3` / `stage3`                        | 200      |
| `fsp`      | `FSP`                  | `stem`, `stage{1,2,3}` / same              | 1 (init) |
| `nst`      | `NST`                  | `stage{1,2,3}` / same                      | 50       |
| `reviewkd` | `ReviewKD`             | `stage{1,2,3}`, `pre_logits` /             | 5        |
|            |                        | `stage{1,2,3}_preact`, `pre_logits`        |          |

The weights are the references' `-b`/`REVIEWKD_WEIGHT` for resnet32x4 -> resnet8x4; the
pipeline applies them, never the methods.

Shared conventions and deviations from the PyTorch references:

- Spatial resizing uses PyTorch's exact semantics: `adaptive_avg_pool` (bins
  `[floor(i*H/h), ceil((i+1)*H/h))`) and `resize_nearest` (`src = floor(i*H/h)`).
- BatchNorm inside the trainable adapters (AB's connector, FT's translator, ReviewKD's
  ABF) is `BatchStatNorm`: BatchNorm *in training mode* (biased batch statistics over the
  kept rows, learnable scale/bias, eps 1e-5) without running averages, so the methods
  need no `batch_stats` collection. In the references these adapters are only ever used
  in training mode (their outputs feed a training loss only), so this is their exact
  training-time behaviour; at `train=False` the loss is still computed with batch
  statistics (it is a diagnostic there). Statistics are per device under `pmap`.
- Masked rows (`batch["mask"]` False) are excluded from every batch mean and from the
  batch statistics, so padding never changes a value.
- Teacher features pass through `jax.lax.stop_gradient`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.losses.base import masked_mean
from distill_jax.losses.method import Batch, Method, Outputs, register
from distill_jax.losses.ops import adaptive_avg_pool, as_map, gather_features, l2_normalize

# PyTorch's default `Conv2d`/`Linear` weight init, `kaiming_uniform_(a=sqrt(5))`.
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# `kaiming_uniform_(a=1)`, ReviewKD's ABF convolution init: uniform in +-sqrt(3/fan_in).
_kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init of `Conv2d`/`Linear`: uniform in `+-1/sqrt(fan_in)`."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(
    features: int,
    kernel: int,
    in_features: int,
    *,
    stride: int = 1,
    pad: int = 0,
    use_bias: bool = True,
    kernel_init=_torch_kernel_init,
    name: str | None = None,
):
    """A square `Conv2d(padding=pad)` with PyTorch's default initialisation."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=torch_bias_init(in_features * kernel * kernel),
        name=name,
    )


# ---------------------------------------------------------------------------
# Helpers: spatial resizing, feature lookup, batch-statistics normalisation.
# ---------------------------------------------------------------------------


def resize_nearest(x_BHWC: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """PyTorch's `F.interpolate(mode="nearest")` on NHWC: output `i` reads `floor(i*H/h)`.

    (`jax.image.resize` uses half-pixel centres, which differs when downsampling.)
    """
    _, H, W, _ = x_BHWC.shape
    h, w = size_hw
    if (H, W) == (h, w):
        return x_BHWC
    rows = np.minimum((np.arange(h) * H) // h, H - 1)
    cols = np.minimum((np.arange(w) * W) // w, W - 1)
    return x_BHWC[:, rows][:, :, cols]


def pool_to_smaller(a_BHWC: jax.Array, b_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Adaptive-average-pools the map with the larger height to the other's `(H, W)`.

    RepDistiller's rule in FT, FSP and NST (it compares heights only).
    """
    a_h, b_h = a_BHWC.shape[1], b_BHWC.shape[1]
    if a_h > b_h:
        a_BHWC = adaptive_avg_pool(a_BHWC, b_BHWC.shape[1:3])
    elif a_h < b_h:
        b_BHWC = adaptive_avg_pool(b_BHWC, a_BHWC.shape[1:3])
    return a_BHWC, b_BHWC


class BatchStatNorm(nn.Module):
    """BatchNorm in training mode without running averages (see the module docstring).

    `y = (x - mean) / sqrt(var + eps) * scale + bias` with the biased mean/variance over
    the batch and spatial axes of the rows that `mask_B` keeps (all rows if None).

    Attributes:
      epsilon: PyTorch's BatchNorm default, 1e-5.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, mask_B: jax.Array | None = None) -> jax.Array:
        channels = x_BHWC.shape[-1]
        scale_C = self.param("scale", nn.initializers.ones, (channels,))
        bias_C = self.param("bias", nn.initializers.zeros, (channels,))
        if mask_B is None:
            keep_B = jnp.ones(x_BHWC.shape[:1], bool)
        else:
            keep_B = jnp.asarray(mask_B).astype(bool)
        keep_B111 = keep_B[:, None, None, None]
        count = jnp.maximum(jnp.sum(keep_B), 1) * x_BHWC.shape[1] * x_BHWC.shape[2]
        count = count.astype(x_BHWC.dtype)
        zeros = jnp.zeros_like(x_BHWC)
        mean_C = jnp.sum(jnp.where(keep_B111, x_BHWC, zeros), axis=(0, 1, 2)) / count
        centered = x_BHWC - mean_C
        var_C = jnp.sum(jnp.where(keep_B111, jnp.square(centered), zeros), axis=(0, 1, 2)) / count
        return centered * jax.lax.rsqrt(var_C + self.epsilon) * scale_C + bias_C


# ---------------------------------------------------------------------------
# AB: activation boundaries.
# ---------------------------------------------------------------------------


def ab_criterion(source: jax.Array, target: jax.Array, margin: float = 1.0) -> jax.Array:
    """Elementwise AB criterion (Heo et al. 2019, Eq. 6, the squared-hinge alternative).

    `(s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]`: a student
    pre-activation is pushed beyond the margin on the side of the teacher's activation
    boundary (teacher neuron active or not).
    """
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return jnp.square(source + margin) * off + jnp.square(source - margin) * on


@register("ab")
class ActivationBoundaries(Method):
    """AB: distillation of activation boundaries (Heo et al., AAAI 2019).

    "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
    Neurons". For stage `i` with connector output `s = r_i(student preact)` and teacher
    pre-activation `t` (Eq. 6, squared-hinge form, margin `m`):

        L = sum_i w_i * (3 / 1000) * mean_b sum_{h,w,c} ab_criterion(s, t, m)

    with `w_i = 2^(i - n + 1)` (1/4, 1/2, 1 for three stages), exactly RepDistiller's
    `ABLoss` (per-stage sum over elements / batch size, scaled by 3/1000, weighted, summed).

    The connector `r_i` is RepDistiller's `Connector`: identity when the two maps have
    the same shape, else `ConvReg` without ReLU: a convolution with bias (1x1 for equal
    sizes, 3x3/stride 2 when the student map is twice as large, `(1+Hs-Ht)` VALID when
    larger otherwise, 4x4/stride 2 transposed when half as large) followed by BatchNorm,
    here `BatchStatNorm` (training-mode BN, see the module docstring).

    Reference schedule and weight: RepDistiller trains the student's feature layers and
    the connector with this loss *alone* for 30 "init" epochs (weight 1), then distils with
    CE (+KD) only. Used as a term of the joint objective (weight 1), as here, it is trained
    jointly instead: a documented deviation; a two-phase schedule belongs to the pipeline.

    Attributes:
      student_features: student pre-activation maps (RepDistiller: `feat[1:-1]`, preact).
      teacher_features: teacher pre-activation maps.
      margin: `m`, default 1.0.
      stage_weights: per-stage `w_i`; None means `2^(i - n + 1)`.
      loss_scale: RepDistiller's constant factor 3/1000.
    """

    student_features: Sequence[str] = ("stage1_preact", "stage2_preact", "stage3_preact")
    teacher_features: Sequence[str] = ("stage1_preact", "stage2_preact", "stage3_preact")
    margin: float = 1.0
    stage_weights: Sequence[float] | None = None
    loss_scale: float = 3.0 / 1000.0

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        mask_B = batch.get("mask")
        feats_s, feats_t = gather_features(self, student, teacher)
        n = len(feats_s)
        weights = self.stage_weights
        if weights is None:
            weights = [2.0 ** (i - n + 1) for i in range(n)]
        if len(weights) != n:
            raise ValueError(f"ab: {len(weights)} stage_weights for {n} feature pairs")
        total = jnp.zeros((), jnp.float32)
        for i, (s_BHWC, t_BHWC) in enumerate(zip(feats_s, feats_t, strict=True)):
            s_BHWC = self._connect(i, s_BHWC, t_BHWC, mask_B)
            per_B = jnp.sum(ab_criterion(s_BHWC, t_BHWC, self.margin), axis=(1, 2, 3))
            total = total + weights[i] * self.loss_scale * masked_mean(per_B, mask_B)
        return total

    def _connect(self, i: int, s_BHWC, t_BHWC, mask_B):
        """RepDistiller's `Connector` for stage `i` (identity when the shapes match)."""
        (_, s_h, s_w, s_c), (_, t_h, t_w, t_c) = s_BHWC.shape, t_BHWC.shape
        if (s_h, s_w, s_c) == (t_h, t_w, t_c):
            return s_BHWC
        name = f"connector{i}"
        if s_h == t_h and s_w == t_w:
            y = _conv(t_c, 1, s_c, name=f"{name}_conv")(s_BHWC)
        elif s_h == 2 * t_h:
            y = _conv(t_c, 3, s_c, stride=2, pad=1, name=f"{name}_conv")(s_BHWC)
        elif 2 * s_h == t_h:
            # PyTorch ConvTranspose2d(4, stride 2, padding 1) == lax padding k - 1 - p = 2.
            y = nn.ConvTranspose(
                t_c,
                (4, 4),
                strides=(2, 2),
                padding=((2, 2), (2, 2)),
                kernel_init=_torch_kernel_init,
                bias_init=torch_bias_init(t_c * 16),
                name=f"{name}_convT",
            )(s_BHWC)
        elif s_h >= t_h and s_w >= t_w:
            y = nn.Conv(
                t_c,
                (1 + s_h - t_h, 1 + s_w - t_w),
                padding="VALID",
                kernel_init=_torch_kernel_init,
                bias_init=torch_bias_init(s_c * (1 + s_h - t_h) * (1 + s_w - t_w)),
                name=f"{name}_conv",
            )(s_BHWC)
        else:
            raise ValueError(
                f"ab: no connector from student map {s_BHWC.shape} to teacher {t_BHWC.shape}"
            )
        return BatchStatNorm(name=f"{name}_norm")(y, mask_B)


# ---------------------------------------------------------------------------
# FT: factor transfer.
# ---------------------------------------------------------------------------


class Paraphraser(nn.Module):
    """FT's paraphraser on the teacher map (RepDistiller `Paraphraser`, `use_bn=False`).

    Encoder: three 3x3 convolutions `C -> C -> kC -> kC`, each followed by LeakyReLU(0.1);
    the encoder output is the teacher factor. Decoder: `kC -> kC -> C -> C`, same layout.
    The reference's decoder uses stride-1 3x3 `ConvTranspose2d(padding=1)`, which is a
    3x3 'same' convolution with a flipped kernel; an ordinary convolution is used here.

    Attributes:
      factor_channels: `int(C * rate)`, the factor's channels.
    """

    factor_channels: int

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, decode: bool = True):
        c, k = x_BHWC.shape[-1], self.factor_channels
        h = x_BHWC
        for j, (c_in, c_out) in enumerate(((c, c), (c, k), (k, k))):
            h = nn.leaky_relu(_conv(c_out, 3, c_in, pad=1, name=f"enc{j}")(h), 0.1)
        factor_BHWK = h
        if not decode:
            return factor_BHWK, None
        for j, (c_in, c_out) in enumerate(((k, k), (k, c), (c, c))):
            h = nn.leaky_relu(_conv(c_out, 3, c_in, pad=1, name=f"dec{j}")(h), 0.1)
        return factor_BHWK, h


class Translator(nn.Module):
    """FT's translator on the student map (RepDistiller `Translator`, `use_bn=True`).

    Three 3x3 convolutions `Cs -> Cs -> kCt -> kCt`, each followed by BatchNorm (here
    `BatchStatNorm`) and LeakyReLU(0.1).

    Attributes:
      factor_channels: `int(Ct * rate)`.
    """

    factor_channels: int

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, mask_B: jax.Array | None = None) -> jax.Array:
        c, k = x_BHWC.shape[-1], self.factor_channels
        h = x_BHWC
        for j, (c_in, c_out) in enumerate(((c, c), (c, k), (k, k))):
            h = _conv(c_out, 3, c_in, pad=1, name=f"conv{j}")(h)
            h = nn.leaky_relu(BatchStatNorm(name=f"norm{j}")(h, mask_B), 0.1)
        return h


@register("ft")
class FactorTransfer(Method):
    """FT: factor transfer (Kim, Park and Kwak, NeurIPS 2018).

    "Paraphrasing Complex Network: Network Compression via Factor Transfer", Eq. 4:

        L_FT = || F_T / ||F_T||_2 - F_S / ||F_S||_2 ||_p,   p = 1,

    with teacher factor `F_T` = paraphraser encoder(teacher map) and student factor
    `F_S` = translator(student map). As in RepDistiller's `FactorTransfer(p1=2, p2=1)`,
    the factors are first pooled to the smaller spatial size, then each is reduced to
    `normalize(mean_c(F^p1))` (a `(B, H*W)` vector, L2-normalised per example) and the
    loss is `mean_{b, hw} |diff|^p2`. (`channel_pool=False` normalises the whole
    flattened factor instead, as in the paper's official code.)

    Paraphraser training: the paper (and RepDistiller, 30 epochs, lr 0.01) pre-trains the
    paraphraser as an autoencoder of the teacher map with `MSE(rec, teacher map)` and then
    freezes it. Here, with `train_paraphraser=True` (default), the method returns
    `L_FT + reconstruction_weight * MSE(rec, teacher map)` so the paraphraser is trained
    *jointly* with the student (a documented deviation). The teacher factor enters `L_FT`
    under `stop_gradient`, so the paraphraser learns only from the reconstruction and the
    translator/student only from `L_FT`, as in the two-stage reference. Note the config
    weight (200) multiplies both terms; `reconstruction_weight` rescales the second. With
    `train_paraphraser=False` only `L_FT` is returned (use with pre-trained paraphraser
    params).

    Reference weight: 200 (RepDistiller, `-a 0 -b 200`).

    Attributes:
      student_features: one student map (RepDistiller `feat[-2]`: last stage output).
      teacher_features: one teacher map.
      rate: factor channels = `int(teacher channels * rate)`, default 0.5.
      p1: exponent inside the channel mean, default 2.
      p2: exponent of the difference, default 1 (L1).
      channel_pool: RepDistiller's channel mean (True) or the paper code's flatten.
      train_paraphraser: add the paraphraser's reconstruction loss (default True).
      reconstruction_weight: weight of the reconstruction loss relative to `L_FT`.
    """

    student_features: Sequence[str] = ("stage3",)
    teacher_features: Sequence[str] = ("stage3",)
    rate: float = 0.5
    p1: int = 2
    p2: int = 1
    channel_pool: bool = True
    train_paraphraser: bool = True
    reconstruction_weight: float = 1.0

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        mask_B = batch.get("mask")
        feats_s, feats_t = gather_features(self, student, teacher)
        if len(feats_s) != 1:
            raise ValueError(f"ft reads exactly one feature per model, got {len(feats_s)}")
        s_BHWC, t_BHWC = feats_s[0], feats_t[0]
        factor_channels = int(t_BHWC.shape[-1] * self.rate)
        paraphraser = Paraphraser(factor_channels, name="paraphraser")
        factor_t, rec_t = paraphraser(t_BHWC, decode=self.train_paraphraser)
        factor_s = Translator(factor_channels, name="translator")(s_BHWC, mask_B)
        factor_s, factor_t = pool_to_smaller(factor_s, jax.lax.stop_gradient(factor_t))
        diff = self._factor(factor_s) - self._factor(factor_t)
        loss = masked_mean(jnp.mean(jnp.abs(diff) ** self.p2, axis=-1), mask_B)
        if self.train_paraphraser:
            rec_B = jnp.mean(jnp.square(rec_t - t_BHWC), axis=(1, 2, 3))
            loss = loss + self.reconstruction_weight * masked_mean(rec_B, mask_B)
        return loss

    def _factor(self, f_BHWK: jax.Array) -> jax.Array:
        b = f_BHWK.shape[0]
        if self.channel_pool:
            return l2_normalize(jnp.mean(f_BHWK**self.p1, axis=-1).reshape(b, -1))
        return l2_normalize(f_BHWK.reshape(b, -1))


# ---------------------------------------------------------------------------
# FSP: flow of solution procedure.
# ---------------------------------------------------------------------------


def fsp_matrix(bottom_BHWC: jax.Array, top_BHWD: jax.Array) -> jax.Array:
    """FSP matrix `G[b, d, c] = mean_{h,w} top[b,h,w,d] * bottom[b,h,w,c]` (Yim et al. Eq. 1).

    The larger map is first adaptive-average-pooled to the smaller one's size.
    Returns `(B, D, C)` (RepDistiller's `(top channels, bottom channels)` layout).
    """
    bottom_BHWC, top_BHWD = pool_to_smaller(bottom_BHWC, top_BHWD)
    hw = bottom_BHWC.shape[1] * bottom_BHWC.shape[2]
    return jnp.einsum("bhwc,bhwd->bdc", bottom_BHWC, top_BHWD) / hw


@register("fsp")
class FSP(Method):
    """FSP: flow of solution procedure (Yim, Joo, Bae and Kim, CVPR 2017).

    "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
    Transfer Learning". For consecutive features `(F_i, F_{i+1})` the FSP matrix is
    `G_i = mean_{hw} F_{i+1} F_i^T` (Eq. 1); the loss (Eq. 2, with equal `lambda_i`) is,
    as RepDistiller's `FSP` with `sum(loss_group)`:

        L = sum_i mean_{b, d, c} (G_i^S - G_i^T)^2.

    Student and teacher must have the same channels at every feature (a ValueError
    otherwise, as in RepDistiller). No trainable parameters.

    Reference weight: RepDistiller uses FSP only to initialise the student's feature
    layers (30 epochs, weight 1), then trains with CE (+KD) alone; as a term of the joint
    objective (weight 1 as a starting point; the `-b 50` in its script is unused) it is a
    documented deviation.

    Attributes:
      student_features: the student's consecutive maps (RepDistiller `feat[:-1]`).
      teacher_features: the teacher's maps, same channels.
    """

    student_features: Sequence[str] = ("stem", "stage1", "stage2", "stage3")
    teacher_features: Sequence[str] = ("stem", "stage1", "stage2", "stage3")

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        mask_B = batch.get("mask")
        feats_s, feats_t = gather_features(self, student, teacher)
        channels_s = [f.shape[-1] for f in feats_s]
        channels_t = [f.shape[-1] for f in feats_t]
        if channels_s != channels_t:
            raise ValueError(
                f"fsp needs equal student/teacher channels, got {channels_s} vs {channels_t}"
            )
        total = jnp.zeros((), jnp.float32)
        for i in range(len(feats_s) - 1):
            g_s = fsp_matrix(feats_s[i], feats_s[i + 1])
            g_t = fsp_matrix(feats_t[i], feats_t[i + 1])
            total = total + masked_mean(jnp.mean(jnp.square(g_s - g_t), axis=(1, 2)), mask_B)
        return total


# ---------------------------------------------------------------------------
# NST: neuron selectivity transfer.
# ---------------------------------------------------------------------------


def _poly_kernel_mean_B(a_BCN: jax.Array, b_BDN: jax.Array) -> jax.Array:
    """Per-example mean over channel pairs of `(a_c . b_d)^2` (degree-2, c = 0)."""
    return jnp.mean(jnp.square(jnp.einsum("bcn,bdn->bdc", a_BCN, b_BDN)), axis=(1, 2))


@register("nst")
class NST(Method):
    """NST: neuron selectivity transfer (Huang and Wang, arXiv:1707.01219, 2017).

    "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer". Each channel
    of a map is one sample `f_c` (its `H*W` responses, L2-normalised); the loss is the
    squared MMD between the student's and teacher's channel distributions with the
    polynomial kernel `k(x, y) = (x^T y)^2` (Eq. 4 with `d = 2, c = 0`), as RepDistiller's
    `NSTLoss` (`full_loss=True`):

        L = sum_i mean_{b} [ mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c')
                             - 2 mean_{c,c'} k(s_c, t_c') ]

    The larger map is first pooled to the smaller one's size; channel counts may differ.
    No trainable parameters.

    Reference weight: 50 (RepDistiller `-a 0 -b 50`; mdistiller `FEAT_WEIGHT: 50`).

    Attributes:
      student_features: student maps (RepDistiller `feat[1:-1]`).
      teacher_features: teacher maps.
    """

    student_features: Sequence[str] = ("stage1", "stage2", "stage3")
    teacher_features: Sequence[str] = ("stage1", "stage2", "stage3")

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        mask_B = batch.get("mask")
        feats_s, feats_t = gather_features(self, student, teacher)
        total = jnp.zeros((), jnp.float32)
        for s_BHWC, t_BHWD in zip(feats_s, feats_t, strict=True):
            s_BHWC, t_BHWD = pool_to_smaller(s_BHWC, t_BHWD)
            b = s_BHWC.shape[0]
            s_BCN = l2_normalize(jnp.swapaxes(s_BHWC.reshape(b, -1, s_BHWC.shape[-1]), 1, 2))
            t_BDN = l2_normalize(jnp.swapaxes(t_BHWD.reshape(b, -1, t_BHWD.shape[-1]), 1, 2))
            mmd_B = (
                _poly_kernel_mean_B(t_BDN, t_BDN)
                + _poly_kernel_mean_B(s_BCN, s_BCN)
                - 2.0 * _poly_kernel_mean_B(s_BCN, t_BDN)
            )
            total = total + masked_mean(mmd_B, mask_B)
        return total


# ---------------------------------------------------------------------------
# ReviewKD: knowledge review (ABF + HCL).
# ---------------------------------------------------------------------------


def hcl_loss_B(fs_BHWC: jax.Array, ft_BHWC: jax.Array, levels: Sequence[int] = (4, 2, 1)):
    """Hierarchical context loss of one level, per example (ReviewKD's `hcl`).

    `(mse(fs, ft) + sum_l 2^-j mse(pool_l(fs), pool_l(ft))) / (1 + sum_l 2^-j)` over the
    pyramid sizes `l < H` (the j-th used level has weight `2^-j`, j = 1, 2, ...), each mse
    a mean over the example's elements.
    """
    h = fs_BHWC.shape[1]
    loss_B = jnp.mean(jnp.square(fs_BHWC - ft_BHWC), axis=(1, 2, 3))
    cnt, tot = 1.0, 1.0
    for level in levels:
        if level >= h:
            continue
        pooled_s = adaptive_avg_pool(fs_BHWC, (level, level))
        pooled_t = adaptive_avg_pool(ft_BHWC, (level, level))
        cnt /= 2.0
        loss_B = loss_B + cnt * jnp.mean(jnp.square(pooled_s - pooled_t), axis=(1, 2, 3))
        tot += cnt
    return loss_B / tot


class ABF(nn.Module):
    """ReviewKD's attention-based fusion module (official CIFAR-100 `ABF`).

    `x = BN(conv1x1(x))` (no bias, `mid` channels); when fusing, the residual `y` from the
    deeper level is nearest-upsampled to `x`'s size and
    `x = x * a_0 + y * a_1` with `a = sigmoid(conv1x1([x, y]))` (2 maps, with bias); `x` is
    nearest-resized to the teacher's size if needed; the output is `BN(conv3x3(x))` (no
    bias, `out` channels). Returns `(output, x)`; `x` is the next level's residual.
    BN is `BatchStatNorm`; conv inits are the reference's `kaiming_uniform_(a=1)`.

    Attributes:
      mid_channels: width of the fused residual path.
      out_channels: the teacher level's channels.
      fuse: False for the deepest level (no residual yet).
    """

    mid_channels: int
    out_channels: int
    fuse: bool

    @nn.compact
    def __call__(self, x_BHWC, residual_BhwM, out_hw, mask_B=None):
        c_in = x_BHWC.shape[-1]
        x = _conv(
            self.mid_channels,
            1,
            c_in,
            use_bias=False,
            kernel_init=_kaiming_uniform_a1,
            name="conv1",
        )(x_BHWC)
        x = BatchStatNorm(name="norm1")(x, mask_B)
        if self.fuse:
            y = resize_nearest(residual_BhwM, x.shape[1:3])
            att = _conv(2, 1, 2 * self.mid_channels, name="att_conv")(
                jnp.concatenate([x, y], axis=-1)
            )
            att = nn.sigmoid(att)
            x = x * att[..., 0:1] + y * att[..., 1:2]
        x = resize_nearest(x, out_hw)
        out = _conv(
            self.out_channels,
            3,
            self.mid_channels,
            pad=1,
            use_bias=False,
            kernel_init=_kaiming_uniform_a1,
            name="conv2",
        )(x)
        return BatchStatNorm(name="norm2")(out, mask_B), x


@register("reviewkd")
class ReviewKD(Method):
    """ReviewKD: knowledge review (Chen, Liu, Zhao and Jia, CVPR 2021).

    "Distilling Knowledge via Knowledge Review". The student's features, from the deepest
    (`pre_logits`, as a 1x1 map) to the shallowest, are fused top-down by ABF modules
    (Sec. 3.3, Fig. 3a); the output of level `i` is compared with the teacher's level `i`
    by the hierarchical context loss (HCL, Fig. 3b: MSE plus MSEs of 4x4, 2x2 and 1x1
    adaptive-average-pooled maps, weights 1, 1/2, 1/4, 1/8, normalised):

        L = sum_i HCL(ABF_i(F^S_i, residual_{i+1}), F^T_i)

    Features as in the official CIFAR code and mdistiller (`STU_PREACT=False`): student
    `stage1..3` outputs (after ReLU) and the pooled `pre_logits`; teacher `stage1..3`
    *pre-activations* and `pre_logits`. The ABF output channels are the teacher's;
    `mid_channels` defaults to `min(512, channels of the deepest student feature)`
    (64 for resnet20/32/56, 256 for resnet8x4). Spatial sizes are read from the maps
    (the reference's `shapes`/`out_shapes`).

    Reference weight: 5.0 for resnet32x4 -> resnet8x4 and WRN pairs (0.6 resnet56 ->
    resnet20, 1.0 resnet110 -> resnet32, 8.0 ShuffleV2), linearly warmed up over the
    first 20 epochs (`min(epoch / 20, 1)`): a weight schedule the pipeline applies.

    Attributes:
      student_features: shallow to deep; `(B, D)` entries are treated as 1x1 maps.
      teacher_features: the matching teacher features.
      mid_channels: ABF width; None means `min(512, C_deepest_student)`.
      levels: HCL pyramid sizes, default (4, 2, 1).
    """

    student_features: Sequence[str] = ("stage1", "stage2", "stage3", "pre_logits")
    teacher_features: Sequence[str] = (
        "stage1_preact",
        "stage2_preact",
        "stage3_preact",
        "pre_logits",
    )
    mid_channels: int | None = None
    levels: Sequence[int] = (4, 2, 1)

    @nn.compact
    def __call__(
        self, student: Outputs, teacher: Outputs, batch: Batch, train: bool = True
    ) -> jax.Array:
        mask_B = batch.get("mask")
        feats_s, feats_t = gather_features(self, student, teacher)
        feats_s = [as_map(f) for f in feats_s]
        feats_t = [as_map(f) for f in feats_t]
        n = len(feats_s)
        mid = self.mid_channels or min(512, feats_s[-1].shape[-1])
        total = jnp.zeros((), jnp.float32)
        residual = None
        for i in reversed(range(n)):
            t_BHWC = feats_t[i]
            abf = ABF(mid, t_BHWC.shape[-1], fuse=i < n - 1, name=f"abf{i}")
            out_BHWC, residual = abf(feats_s[i], residual, t_BHWC.shape[1:3], mask_B)
            total = total + masked_mean(hcl_loss_B(out_BHWC, t_BHWC, self.levels), mask_B)
        return total
