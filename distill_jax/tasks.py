"""Tasks: what a batch holds, how logits meet labels, and which metrics a run reports.

A task is the one place that knows the shape of the problem. The train step asks it for
the batch's training view (`augment`), the objective asks it for the task loss (`loss`),
the step and the evaluator ask it for metrics (`train_metrics`, `eval_sums` + `reduce`).
Nothing else in the trainer knows whether inputs are images or token ids, or whether a
label belongs to an example or to every token.

`Classification` covers image classification (uint8 pixels, scaled to [0, 1] and
augmented on the device) and token-id classification (int32 token ids, fed unchanged or
augmented on the device into Tang et al.'s transfer-set views, `data/text_augment.py`).
A training split may hold unlabelled examples (label -1, `data.unlabelled`): only the
teacher's targets train on them; the task loss and accuracy skip them.
Token classification (NER) and causal language modelling are further `Task`s with the
same methods; the trainer does not change for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data.augment import augment, to_float
from distill_jax.data.text_augment import TokenAugment
from distill_jax.losses.task import cross_entropy


def ece_from_bins(count_K: np.ndarray, conf_K: np.ndarray, correct_K: np.ndarray) -> float:
    """Expected calibration error from per-bin sums: sum_k n_k/N |acc_k - conf_k|."""
    total = count_K.sum()
    if total == 0:
        return 0.0
    return float(np.sum(np.abs(correct_K - conf_K)) / total)


class Task:
    """The interface every task implements (see the module docstring)."""

    #: Fields of a training example (also the arrays a device-resident split holds).
    fields: tuple[str, ...] = ("image", "label")

    def augment(self, key: jax.Array, inputs: jax.Array, index_B: jax.Array) -> jax.Array:
        """The batch's training view (teacher and student both see it)."""
        raise NotImplementedError

    def prepare(self, inputs: jax.Array) -> jax.Array:
        """Raw stored inputs -> model inputs, without augmentation (evaluation)."""
        raise NotImplementedError

    def loss(
        self, logits: jax.Array, labels: jax.Array, mask: jax.Array | None, label_smoothing: float
    ) -> jax.Array:
        """The task loss (the objective weights it by `alpha`)."""
        raise NotImplementedError

    def train_metrics(
        self, logits: jax.Array, labels: jax.Array, teacher_top1: jax.Array | None
    ) -> dict[str, jax.Array]:
        """Per-step training metrics (means over the batch)."""
        raise NotImplementedError

    def eval_sums(
        self,
        logits: jax.Array,
        labels: jax.Array,
        mask: jax.Array,
        teacher_logits: jax.Array | None,
    ) -> dict[str, jax.Array]:
        """Sums over the unmasked rows of one evaluation batch (added up in float64)."""
        raise NotImplementedError

    def reduce(self, totals: dict[str, np.ndarray], with_teacher: bool) -> dict[str, Any]:
        """The metrics of a whole split from the summed `eval_sums`."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per example: images (uint8 BHWC) or token ids (int32 BL, 0 = padding).

    Attributes:
        translate: random translation (+-pixels) of the training view; 0 for tokens.
        flip: random horizontal flips (after the translation); False for tokens.
        ece_bins: equal-width confidence bins of the expected calibration error.
        tokens: the token-id augmentation (transfer-set views), or None.
        unlabelled: the training split holds unlabelled rows (label < 0) to skip.
    """

    translate: int = 0
    flip: bool = False
    ece_bins: int = 15
    tokens: TokenAugment | None = None
    unlabelled: bool = False

    @property
    def augment_spec(self) -> dict[str, Any]:
        """What identifies the training views (a teacher cache records and compares it)."""
        spec: dict[str, Any] = {"translate": self.translate, "flip": self.flip}
        if self.tokens is not None:
            spec["token_augment"] = self.tokens.spec
        return spec

    @property
    def augments(self) -> bool:
        """Whether two keys can give two different views of an example."""
        return bool(self.translate or self.flip or self.tokens is not None)

    def augment(self, key, inputs, index_B):
        if self.tokens is not None:
            return self.tokens(key, inputs, index_B)
        return augment(key, to_float(inputs), index_B, self.translate, self.flip)

    def prepare(self, inputs):
        return to_float(inputs)

    def _labelled(self, labels_B, mask_B):
        if not self.unlabelled:
            return mask_B
        labelled_B = labels_B >= 0
        return labelled_B if mask_B is None else labelled_B & mask_B.astype(bool)

    def loss(self, logits_BC, labels_B, mask_B, label_smoothing):
        mask_B = self._labelled(labels_B, mask_B)
        return cross_entropy(logits_BC, labels_B, label_smoothing=label_smoothing, mask_B=mask_B)

    def train_metrics(self, logits_BC, labels_B, teacher_top1_B):
        pred_B = jnp.argmax(logits_BC, -1)
        if self.unlabelled:  # accuracy over the labelled rows of the batch
            labelled_B = labels_B >= 0
            correct = jnp.sum((pred_B == labels_B) & labelled_B)
            metrics = {"accuracy": correct / jnp.maximum(jnp.sum(labelled_B), 1)}
        else:
            metrics = {"accuracy": jnp.mean(pred_B == labels_B)}
        if teacher_top1_B is not None:
            metrics["agreement"] = jnp.mean(pred_B == teacher_top1_B)
        return metrics

    def eval_sums(self, logits_BC, labels_B, mask_B, teacher_logits_BC):
        mask = mask_B.astype(jnp.float32)
        logp_BC = jax.nn.log_softmax(logits_BC.astype(jnp.float32))
        pred_B = jnp.argmax(logp_BC, -1)
        correct_B = (pred_B == labels_B).astype(jnp.float32)
        nll_B = -jnp.take_along_axis(logp_BC, labels_B[:, None], axis=-1)[:, 0]
        conf_B = jnp.exp(jnp.max(logp_BC, -1))
        # Bins (i/n, (i+1)/n]; a confidence of exactly 1 falls in the last bin.
        n = self.ece_bins
        bin_B = jnp.clip(jnp.ceil(conf_B * n).astype(jnp.int32) - 1, 0, n - 1)
        onehot_BK = jax.nn.one_hot(bin_B, n) * mask[:, None]
        sums = {
            "count": jnp.sum(mask),
            "correct": jnp.sum(correct_B * mask),
            "nll": jnp.sum(nll_B * mask),
            "ece_count": jnp.sum(onehot_BK, 0),
            "ece_conf": jnp.sum(onehot_BK * conf_B[:, None], 0),
            "ece_correct": jnp.sum(onehot_BK * correct_B[:, None], 0),
        }
        if teacher_logits_BC is not None:
            t_logp_BC = jax.nn.log_softmax(teacher_logits_BC.astype(jnp.float32))
            agree_B = (jnp.argmax(t_logp_BC, -1) == pred_B).astype(jnp.float32)
            kl_B = jnp.sum(jnp.exp(t_logp_BC) * (t_logp_BC - logp_BC), -1)
            sums["agree"] = jnp.sum(agree_B * mask)
            sums["kl"] = jnp.sum(kl_B * mask)
        return sums

    def reduce(self, totals, with_teacher):
        n = float(totals["count"])
        out = {
            "count": int(n),
            "accuracy": float(totals["correct"] / n),
            "nll": float(totals["nll"] / n),
            "ece": ece_from_bins(totals["ece_count"], totals["ece_conf"], totals["ece_correct"]),
        }
        if with_teacher:
            out["agreement"] = float(totals["agree"] / n)
            out["kl"] = float(totals["kl"] / n)
        return out


__all__ = ["Classification", "Task", "ece_from_bins"]
