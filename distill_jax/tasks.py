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
`Tagging` is token classification (NER): a tag per token, labels `(B, L)` with -1 on the
positions that carry none ([CLS], [SEP], padding, a word's later WordPieces) and -2 on
the words of an unlabelled row (`data.unlabelled = ["healthtweets"]`: a word the teacher
tags, no gold tag). Its loss averages over the tagged positions (>= 0), every
distillation term over the tagged and the unlabelled words' positions (`term_mask`), so
the logit losses (`kd`, ...) work unchanged on `(B, L, C)` logits; its evaluation adds
entity-level precision / recall / F1 (exact span and type, conlleval semantics, by
`seqeval`) from the predicted tag sequences of the whole split, which `eval_sums` hands
back per example (`row_keys`) instead of summed. `CausalLM` is next-token prediction:
the batch's inputs are token ids `(B, T)` and its labels the same ids with -1 where a
token is not a target (padding, prompt); the task shifts them into next-token targets,
and its loss, metrics and every distillation term (`lm_*` losses, `(B, T, V)` logits)
average over the target positions, with vocab-chunked log-sum-exps (`losses/lm.py`).
The trainer does not change for any of them.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data.augment import augment, to_float
from distill_jax.data.ner import UNLABELLED
from distill_jax.data.text_augment import TokenAugment
from distill_jax.losses.base import masked_mean
from distill_jax.losses.lm import CHUNK_SIZE, lm_divergence, token_cross_entropy
from distill_jax.losses.task import cross_entropy


def task_of(info: Any, ece_bins: int = 15) -> Task:
    """The task that evaluates a dataset (`data.DatasetInfo`): `CausalLM` for language-model
    data, `Tagging` for a tag per token, else `Classification` (without augmentation:
    training views are `train.inputs.make_task`'s business)."""
    if getattr(info, "causal_lm", False):
        return CausalLM()
    if info.per_token:
        return Tagging(tag_names=info.class_names, ece_bins=ece_bins)
    return Classification(ece_bins=ece_bins)


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
    #: Outputs of `eval_sums` that are per-example rows `(B, ...)`: the evaluator keeps
    #: the unmasked rows of every batch, in order, and hands `reduce` their concatenation
    #: instead of a sum.
    row_keys: tuple[str, ...] = ()
    #: Rank of the logits a model must return for this task: 2 for `(B, C)`, 3 for
    #: `(B, L, C)`.
    logits_rank: int = 2
    #: The validation metric (higher is better) that picks a run's best checkpoint
    #: (`teacher.checkpoint = "best"`, `checkpoint.keep`'s kept best step).
    selection_metric: str = "accuracy"
    #: Whether the evaluator may keep the teacher's logits of a whole split to reuse them
    #: (cheap for a label per example; a language model's `(N, T, V)` logits are not).
    cache_teacher_logits: bool = True
    #: Timed calls per batch size when measuring latency (`evaluation.measure_latency`).
    latency_repeats: int = 20

    def eval_rows(self, batch_size: int, input_shape: tuple[int, ...]) -> int:
        """Examples per evaluation batch, given `data.eval_batch_size`."""
        del input_shape
        return batch_size

    def latency_batch_size(self, batch_size: int) -> int:
        """The throughput batch of the latency measurement, given
        `eval.latency_batch_size`."""
        return batch_size

    def term_mask(self, labels: jax.Array, mask: jax.Array | None) -> jax.Array | None:
        """What the distillation terms average over (`mask_B` of every logit loss): the
        batch's row mask here; a token-level task narrows it to its tagged positions."""
        return mask

    def check_logits(self, shape: tuple[int, ...], where: str) -> None:
        """Refuses a model whose logits do not have this task's rank (a sentence-level
        model on token labels, or a token-level one on sentence labels).

        Raises:
            ConfigError: naming `where` (the model's config key) and what is expected.
        """
        if len(shape) == self.logits_rank:
            return
        from distill_jax.errors import ConfigError

        got = "one per token" if len(shape) == 3 else "one per example"
        want = "one per token (B, L, C)" if self.logits_rank == 3 else "one per example (B, C)"
        raise ConfigError(
            f"{where} returns logits of shape {tuple(shape)} ({got}); this dataset's labels "
            f"need {want}: use a "
            + (
                "token-level model (bert with head_input 'tokens', bilstm_tagger)"
                if self.logits_rank == 3
                else "sentence-level model (not head_input 'tokens' / bilstm_tagger)"
            )
        )

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


def entity_scores(
    gold_rows: list[np.ndarray] | np.ndarray,
    pred_rows: list[np.ndarray] | np.ndarray,
    tag_names: tuple[str, ...],
) -> dict[str, float]:
    """Entity-level precision, recall and F1 of predicted tag sequences (`seqeval`).

    An entity is a span of the same type opened by `B-X` (or by an `I-X` that does not
    continue an `X` span: conlleval's rule, seqeval's default mode) and continued by
    `I-X`; it counts as found when a predicted entity has exactly its span and type.
    Only the positions where the gold row holds a tag (>= 0) form the sequence.

    Args:
        gold_rows: per example, the gold tag ids `(L,)` (-1: no tag at this position).
        pred_rows: per example, the predicted tag ids `(L,)`.
        tag_names: tag id -> name (`O`, `B-X`, `I-X`).

    Returns:
        `entity_precision`, `entity_recall`, `entity_f1` (micro over entities; 0 when
        nothing is predicted or there is nothing to find), `entities` (gold entities), and
        `f1_<type>` for every type of `tag_names`.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    names = np.asarray(tag_names, dtype=object)
    gold, pred = [], []
    for g, p in zip(gold_rows, pred_rows, strict=True):
        g, p = np.asarray(g), np.asarray(p)
        keep = g >= 0
        gold.append(list(names[g[keep]]))
        pred.append(list(names[p[keep]]))
    kw = dict(zero_division=0)
    out = {
        "entity_precision": float(precision_score(gold, pred, **kw)),
        "entity_recall": float(recall_score(gold, pred, **kw)),
        "entity_f1": float(f1_score(gold, pred, **kw)),
    }
    with warnings.catch_warnings():  # averages over no entity at all: NumPy warns
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, pred, output_dict=True, **kw)
    types = sorted({n[2:] for n in tag_names if n != "O"})
    out["entities"] = int(sum(report[t]["support"] for t in types if t in report))
    for t in types:
        out[f"f1_{t}"] = float(report[t]["f1-score"]) if t in report else 0.0
    return out


@dataclasses.dataclass(frozen=True)
class Tagging(Task):
    """A tag per token: token ids `(B, L)` (0 = padding), tags `(B, L)`, -1 = no tag.

    Labels: a tag id (>= 0) on each word's first sub-token, `IGNORE` (-1) on positions
    that are no word's first sub-token, and in the unlabelled rows of a training split
    (`data.unlabelled`, `data/ner.py`'s `healthtweets`) `UNLABELLED` (-2) on each word's
    first sub-token.

    The hard-label loss is the cross-entropy averaged over the tagged positions (>= 0);
    every distillation term averages over the tagged and the unlabelled words' positions
    (`term_mask`: labels >= 0 or == -2), so `kd` is the mean over those tokens of `T^2 KL`
    between the teacher's and the student's tag distributions, and on an unlabelled
    tweet the teacher's distribution is the only target. Training metrics: token
    accuracy over the tagged positions (and token agreement with the teacher over the
    term positions). Evaluation (validation and test splits, which never hold unlabelled
    rows; -2 would count as untagged there too): token accuracy, NLL, ECE over tagged
    tokens, entity-level precision / recall / F1 and per-type F1 (`entity_scores`), and
    against a teacher token agreement and KL.

    Attributes:
        tag_names: tag id -> name (`O`, `B-X`, `I-X`; the dataset's class names).
        ece_bins: equal-width confidence bins of the expected calibration error.
        unlabelled: the training split holds unlabelled rows (`data.unlabelled`): the run
            needs a teacher and label-free terms (`setup._check_label_free`).
    """

    tag_names: tuple[str, ...] = ()
    ece_bins: int = 15
    unlabelled: bool = False
    row_keys = ("gold", "pred")
    logits_rank = 3
    selection_metric = "entity_f1"  # token accuracy is mostly the `O` tag

    @property
    def augment_spec(self) -> dict[str, Any]:
        return {"tagging": True}

    @property
    def augments(self) -> bool:
        return False

    def augment(self, key, inputs, index_B):
        del key, index_B
        return inputs

    def prepare(self, inputs):
        return inputs

    @staticmethod
    def _tagged(labels_BL, mask_B):
        keep_BL = labels_BL >= 0
        if mask_B is not None:
            keep_BL = keep_BL & mask_B.astype(bool)[:, None]
        return keep_BL

    @staticmethod
    def _words(labels_BL, mask_B):
        """The positions the distillation terms average over: tagged or unlabelled words."""
        keep_BL = (labels_BL >= 0) | (labels_BL == UNLABELLED)
        if mask_B is not None:
            keep_BL = keep_BL & mask_B.astype(bool)[:, None]
        return keep_BL

    def term_mask(self, labels_BL, mask_B):
        return self._words(labels_BL, mask_B)

    def loss(self, logits_BLC, labels_BL, mask_B, label_smoothing):
        keep_BL = self._tagged(labels_BL, mask_B)
        return cross_entropy(logits_BLC, labels_BL, label_smoothing=label_smoothing, mask_B=keep_BL)

    def train_metrics(self, logits_BLC, labels_BL, teacher_top1_BL):
        keep_BL = labels_BL >= 0
        n = jnp.maximum(jnp.sum(keep_BL), 1)
        pred_BL = jnp.argmax(logits_BLC, -1)
        metrics = {"accuracy": jnp.sum((pred_BL == labels_BL) & keep_BL) / n}
        if teacher_top1_BL is not None:  # over the term positions, unlabelled words too
            words_BL = self._words(labels_BL, None)
            agree = jnp.sum((pred_BL == teacher_top1_BL) & words_BL)
            metrics["agreement"] = agree / jnp.maximum(jnp.sum(words_BL), 1)
        return metrics

    def eval_sums(self, logits_BLC, labels_BL, mask_B, teacher_logits_BLC):
        keep = self._tagged(labels_BL, mask_B).astype(jnp.float32)
        logp_BLC = jax.nn.log_softmax(logits_BLC.astype(jnp.float32))
        pred_BL = jnp.argmax(logp_BLC, -1)
        correct_BL = (pred_BL == labels_BL).astype(jnp.float32)
        safe_BL = jnp.maximum(labels_BL, 0)
        nll_BL = -jnp.take_along_axis(logp_BLC, safe_BL[..., None], axis=-1)[..., 0]
        conf_BL = jnp.exp(jnp.max(logp_BLC, -1))
        n = self.ece_bins
        bin_BL = jnp.clip(jnp.ceil(conf_BL * n).astype(jnp.int32) - 1, 0, n - 1)
        onehot_BLK = jax.nn.one_hot(bin_BL, n) * keep[..., None]
        sums = {
            "count": jnp.sum(keep),
            "correct": jnp.sum(correct_BL * keep),
            "nll": jnp.sum(jnp.where(keep > 0, nll_BL, 0.0)),
            "ece_count": jnp.sum(onehot_BLK, (0, 1)),
            "ece_conf": jnp.sum(onehot_BLK * conf_BL[..., None], (0, 1)),
            "ece_correct": jnp.sum(onehot_BLK * correct_BL[..., None], (0, 1)),
            "gold": labels_BL,
            "pred": pred_BL.astype(jnp.int32),
        }
        if teacher_logits_BLC is not None:
            t_logp_BLC = jax.nn.log_softmax(teacher_logits_BLC.astype(jnp.float32))
            agree_BL = (jnp.argmax(t_logp_BLC, -1) == pred_BL).astype(jnp.float32)
            kl_BL = jnp.sum(jnp.exp(t_logp_BLC) * (t_logp_BLC - logp_BLC), -1)
            sums["agree"] = jnp.sum(agree_BL * keep)
            sums["kl"] = jnp.sum(jnp.where(keep > 0, kl_BL, 0.0))
        return sums

    def reduce(self, totals, with_teacher):
        n = max(float(totals["count"]), 1.0)
        out: dict[str, Any] = {
            "count": int(totals["count"]),  # tagged tokens
            "sentences": int(len(totals["gold"])),
            "accuracy": float(totals["correct"] / n),
            "nll": float(totals["nll"] / n),
            "ece": ece_from_bins(totals["ece_count"], totals["ece_conf"], totals["ece_correct"]),
        }
        out.update(entity_scores(totals["gold"], totals["pred"], self.tag_names))
        if with_teacher:
            out["agreement"] = float(totals["agree"] / n)
            out["kl"] = float(totals["kl"] / n)
        return out


@dataclasses.dataclass(frozen=True)
class CausalLM(Task):
    """Next-token prediction over a vocabulary of `V` tokens.

    A batch holds `image`: token ids `(B, T)` (the model's inputs) and `label`: the same
    ids where the token is to be predicted and -1 where it is not (padding, the prompt of
    an instruction, a document's first token if so desired); `labels_from` builds it from
    token ids and a 0/1 loss mask. The logits at position `t` predict token `t + 1`, so
    the targets are the labels shifted left by one (`next_token_targets`) and the last
    position has none. The task loss is the cross-entropy averaged over all target
    tokens of the batch (a token mean, not a mean of per-sequence means), and every
    distillation term averages over the same positions (`term_mask`): the `lm_*` losses
    see `(B, T, V)` logits and a `(B, T)` mask.

    Training metrics: token accuracy (and top-1 agreement with the teacher). Evaluation
    sums, over the target tokens of every batch, the NLL, the correct predictions and
    (with a teacher) the agreements and `KL(teacher || student)` at `T = 1`; `reduce`
    divides by the token count, so `perplexity = exp(total NLL / total tokens)` is
    token-weighted over the whole split (not a mean of per-batch perplexities).

    Evaluation holds no split's teacher logits: each batch's teacher forward runs beside
    the student's and only the sums leave the device (`cache_teacher_logits`), and a
    batch holds at most `eval_tokens` tokens whatever `data.eval_batch_size` says (the
    `(B, T, V)` logits of one batch are `B * T * V * 4` bytes: 400 MB at 2,048 tokens of
    a 49,152 vocabulary). Latency is measured at batch 1 (a sequence at a time) with a
    few repeats.

    Attributes:
        chunk_size: vocabulary columns per chunk of the log-sum-exps (None: one chunk).
        eval_tokens: the most tokens (rows x sequence length) in an evaluation batch
            (at least one row).
    """

    chunk_size: int | None = CHUNK_SIZE
    eval_tokens: int = 2048
    logits_rank = 3
    unlabelled = False
    selection_metric = "accuracy"  # next-token accuracy (perplexity is lower-is-better)
    cache_teacher_logits = False
    latency_repeats = 3

    def eval_rows(self, batch_size, input_shape):
        return max(1, min(batch_size, self.eval_tokens // max(int(input_shape[-1]), 1)))

    def latency_batch_size(self, batch_size):
        del batch_size
        return 1

    @staticmethod
    def labels_from(tokens_BT: jax.Array, loss_mask_BT: jax.Array) -> jax.Array:
        """`label`: the token ids where `loss_mask_BT` is 1 (a target), -1 elsewhere."""
        return jnp.where(jnp.asarray(loss_mask_BT).astype(bool), tokens_BT, -1)

    @staticmethod
    def next_token_targets(labels_BT: jax.Array) -> jax.Array:
        """`(B, T)` targets: position `t` predicts `labels[t + 1]`; -1 where none."""
        labels_BT = jnp.asarray(labels_BT)
        pad_B1 = jnp.full(labels_BT.shape[:-1] + (1,), -1, labels_BT.dtype)
        return jnp.concatenate([labels_BT[..., 1:], pad_B1], axis=-1)

    def _targets(self, labels_BT, mask_B):
        """The targets and the kept positions (a target, in a kept row)."""
        targets_BT = self.next_token_targets(labels_BT)
        keep_BT = targets_BT >= 0
        if mask_B is not None:
            keep_BT = keep_BT & jnp.asarray(mask_B).astype(bool)[:, None]
        return targets_BT, keep_BT

    @property
    def augment_spec(self) -> dict[str, Any]:
        return {"causal_lm": True}

    @property
    def augments(self) -> bool:
        return False

    def check_logits(self, shape, where):
        if len(shape) == 3:
            return
        from distill_jax.errors import ConfigError

        raise ConfigError(
            f"{where} returns logits of shape {tuple(shape)}; causal language modelling "
            f"needs one distribution per token (B, T, V): use a decoder language model"
        )

    def augment(self, key, inputs, index_B):
        del key, index_B
        return inputs

    def prepare(self, inputs):
        return inputs

    def term_mask(self, labels_BT, mask_B):
        return self._targets(labels_BT, mask_B)[1]

    def loss(self, logits_BTV, labels_BT, mask_B, label_smoothing):
        targets_BT, keep_BT = self._targets(labels_BT, mask_B)
        nll_BT = token_cross_entropy(logits_BTV, targets_BT, label_smoothing, self.chunk_size)
        return masked_mean(nll_BT, keep_BT)

    def train_metrics(self, logits_BTV, labels_BT, teacher_top1_BT):
        targets_BT, keep_BT = self._targets(labels_BT, None)
        n = jnp.maximum(jnp.sum(keep_BT), 1)
        pred_BT = jnp.argmax(logits_BTV, -1)
        metrics = {"accuracy": jnp.sum((pred_BT == targets_BT) & keep_BT) / n}
        if teacher_top1_BT is not None:
            metrics["agreement"] = jnp.sum((pred_BT == teacher_top1_BT) & keep_BT) / n
        return metrics

    def eval_sums(self, logits_BTV, labels_BT, mask_B, teacher_logits_BTV):
        targets_BT, keep_BT = self._targets(labels_BT, mask_B)
        keep = keep_BT.astype(jnp.float32)
        nll_BT = token_cross_entropy(logits_BTV, targets_BT, 0.0, self.chunk_size)
        pred_BT = jnp.argmax(logits_BTV, -1)
        sums = {
            "count": jnp.sum(keep),
            "sequences": jnp.sum(jnp.asarray(mask_B).astype(jnp.float32)),
            "nll": jnp.sum(jnp.where(keep_BT, nll_BT, 0.0)),
            "correct": jnp.sum(jnp.where(keep_BT, pred_BT == targets_BT, False)),
        }
        if teacher_logits_BTV is not None:
            kl_BT = lm_divergence(
                logits_BTV, teacher_logits_BTV, "forward_kl", chunk_size=self.chunk_size
            )
            agree_BT = jnp.argmax(teacher_logits_BTV, -1) == pred_BT
            sums["agree"] = jnp.sum(jnp.where(keep_BT, agree_BT, False))
            sums["kl"] = jnp.sum(jnp.where(keep_BT, kl_BT, 0.0))
        return sums

    def reduce(self, totals, with_teacher):
        n = max(float(totals["count"]), 1.0)
        nll = float(totals["nll"] / n)
        out: dict[str, Any] = {
            "count": int(totals["count"]),  # target tokens
            "sequences": int(totals["sequences"]),
            "loss": nll,
            "nll": nll,
            "perplexity": float(np.exp(nll)),
            "accuracy": float(totals["correct"] / n),
        }
        if with_teacher:
            out["agreement"] = float(totals["agree"] / n)
            out["kl"] = float(totals["kl"] / n)
        return out


__all__ = [
    "CausalLM",
    "Classification",
    "Tagging",
    "Task",
    "ece_from_bins",
    "entity_scores",
    "task_of",
]
