"""The causal-LM task (`tasks.CausalLM`) and the `lm_*` losses in the objective.

Task loss and metrics against float64 NumPy on random logits; perplexity accumulated over
batches token-weighted; the objective feeding `(B, T, V)` logits and the shifted target
mask to the LM divergences, from full teacher logits and from a top-k cache; one train
step of a tiny decoder through the unchanged trainer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill_jax.errors import ConfigError
from distill_jax.losses.lm import lm_jsd_loss, lm_kl_loss, lm_topk_loss
from distill_jax.objective import Objective, validate_losses
from distill_jax.tasks import CausalLM
from distill_jax.teachers import OnlineTeacher, Teacher, top1
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

B, T, V = 4, 6, 23


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def draw(seed=0, b=B):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(b, T)).astype(np.int32)
    loss_mask = np.ones((b, T), bool)
    loss_mask[0, :3] = False  # a prompt
    loss_mask[1, 4:] = False  # padding
    logits = np.float32(rng.normal(size=(b, T, V)) * 2)
    teacher = np.float32(rng.normal(size=(b, T, V)) * 2 + logits)
    labels = np.asarray(CausalLM.labels_from(tokens, loss_mask))
    return tokens, loss_mask, labels, logits, teacher


def np_targets(tokens, loss_mask):
    """Position t predicts token t + 1 where that token is a target."""
    targets = np.full(tokens.shape, -1)
    targets[:, :-1] = np.where(loss_mask[:, 1:], tokens[:, 1:], -1)
    return targets


def test_labels_and_shifted_targets():
    tokens, loss_mask, labels, _, _ = draw()
    assert labels[0, 0] == -1 and labels[2, 0] == tokens[2, 0]
    targets = np.asarray(CausalLM.next_token_targets(labels))
    np.testing.assert_array_equal(targets, np_targets(tokens, loss_mask))
    assert np.all(targets[:, -1] == -1)
    row_mask = np.array([1, 1, 0, 1], bool)  # row 2 is padding of the batch
    keep = np.asarray(CausalLM().term_mask(jnp.asarray(labels), jnp.asarray(row_mask)))
    np.testing.assert_array_equal(keep, (targets >= 0) & row_mask[:, None])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_is_the_token_mean_cross_entropy(label_smoothing):
    tokens, loss_mask, labels, logits, _ = draw(1)
    row_mask = np.array([1, 1, 1, 0], bool)
    got = CausalLM(chunk_size=5).loss(logits, labels, row_mask, label_smoothing)
    targets = np_targets(tokens, loss_mask)
    keep = (targets >= 0) & row_mask[:, None]
    lq = np_log_softmax(logits)
    y = (1 - label_smoothing) * np.eye(V)[np.maximum(targets, 0)] + label_smoothing / V
    want = (-(y * lq).sum(-1))[keep].mean()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_train_metrics():
    tokens, loss_mask, labels, logits, teacher = draw(2)
    targets = np_targets(tokens, loss_mask)
    keep = targets >= 0
    teacher_top1 = teacher.argmax(-1)
    got = CausalLM().train_metrics(logits, labels, teacher_top1)
    pred = logits.argmax(-1)
    np.testing.assert_allclose(float(got["accuracy"]), (pred == targets)[keep].mean(), rtol=1e-6)
    np.testing.assert_allclose(
        float(got["agreement"]), (pred == teacher_top1)[keep].mean(), rtol=1e-6
    )
    assert "agreement" not in CausalLM().train_metrics(logits, labels, None)


def evaluate(task, batches, with_teacher):
    """What `evaluation.Evaluator` does: sum each batch's `eval_sums` in float64, reduce."""
    totals = {}
    for logits, labels, mask, teacher in batches:
        sums = task.eval_sums(logits, labels, mask, teacher if with_teacher else None)
        for k, v in jax.device_get(sums).items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    return task.reduce(totals, with_teacher=with_teacher)


def test_evaluation_is_token_weighted_over_batches():
    batches, rows = [], []
    for seed, b in ((3, 4), (4, 2), (5, 3)):
        tokens, loss_mask, labels, logits, teacher = draw(seed, b)
        loss_mask[-1, 1:] = seed == 4  # batch sizes in tokens differ a lot
        labels = np.asarray(CausalLM.labels_from(tokens, loss_mask))
        mask = np.ones(b, bool)
        mask[-1] = seed != 5  # the last batch is padded
        batches.append((logits, labels, mask, teacher))
        rows.append((tokens, loss_mask, logits, teacher, mask))
    got = evaluate(CausalLM(chunk_size=4), batches, with_teacher=True)

    nll, correct, agree, kl, per_batch_ppl = [], [], [], [], []
    for tokens, loss_mask, logits, teacher, mask in rows:
        targets = np_targets(tokens, loss_mask)
        keep = (targets >= 0) & mask[:, None]
        lq, lp = np_log_softmax(logits), np_log_softmax(teacher)
        token_nll = -np.take_along_axis(lq, np.maximum(targets, 0)[..., None], -1)[..., 0]
        nll.append(token_nll[keep])
        correct.append((logits.argmax(-1) == targets)[keep])
        agree.append((logits.argmax(-1) == teacher.argmax(-1))[keep])
        kl.append((np.exp(lp) * (lp - lq)).sum(-1)[keep])
        per_batch_ppl.append(np.exp(token_nll[keep].mean()))
    nll = np.concatenate(nll)
    assert got["count"] == len(nll)
    assert got["sequences"] == 4 + 2 + 2
    np.testing.assert_allclose(got["nll"], nll.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["loss"], nll.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["perplexity"], np.exp(nll.mean()), rtol=1e-6)
    assert abs(got["perplexity"] - np.mean(per_batch_ppl)) > 1e-3 * got["perplexity"]
    np.testing.assert_allclose(got["accuracy"], np.concatenate(correct).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["agreement"], np.concatenate(agree).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["kl"], np.concatenate(kl).mean(), rtol=1e-5)
    alone = evaluate(CausalLM(), batches, with_teacher=False)
    assert "kl" not in alone and alone["perplexity"] == pytest.approx(got["perplexity"])


def test_refuses_logits_of_the_wrong_rank():
    CausalLM().check_logits((B, T, V), "student")
    with pytest.raises(ConfigError, match="one distribution per token"):
        CausalLM().check_logits((B, V), "student")


# ---------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------


def test_objective_feeds_the_lm_losses_the_target_mask():
    tokens, loss_mask, labels, logits, teacher = draw(6)
    losses = {"lm_jsd": {"weight": 0.5, "beta": 0.3, "chunk_size": 7}, "lm_kl": {"weight": 2.0}}
    objective = Objective({"alpha": 0.4, "temperature": 1.0, "losses": losses}, task=CausalLM())
    batch = {"label": jnp.asarray(labels), "mask": jnp.asarray([1, 1, 0, 1], bool)}
    loss, terms, _ = objective(
        {}, {}, {"logits": logits}, {"logits": teacher}, batch, jax.random.PRNGKey(0)
    )
    keep = CausalLM().term_mask(batch["label"], batch["mask"])
    jsd = lm_jsd_loss(logits, teacher, beta=0.3, mask_B=keep)
    kl = lm_kl_loss(logits, teacher, mask_B=keep)
    ce = CausalLM().loss(logits, labels, batch["mask"], 0.0)
    np.testing.assert_allclose(float(terms["lm_jsd"]), float(jsd), rtol=1e-6)
    np.testing.assert_allclose(float(terms["lm_kl"]), float(kl), rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.4 * ce + 0.5 * jsd + 2.0 * kl, rtol=1e-6)


def test_objective_with_a_topk_teacher_cache():
    _, _, labels, logits, teacher = draw(7)
    values, ids = jax.lax.top_k(jax.nn.log_softmax(jnp.asarray(teacher)), 5)
    losses = {"lm_kl": {"weight": 1.0}, "lm_reverse_kl": {"weight": 1.0, "topk_rest": True}}
    objective = Objective({"alpha": 0.0, "temperature": 1.0, "losses": losses}, task=CausalLM())
    objective.check_cached_teacher(5)
    batch = {"label": jnp.asarray(labels), "mask": None}
    _, terms, _ = objective(
        {}, {}, {"logits": logits}, {"topk": (values, ids)}, batch, jax.random.PRNGKey(0)
    )
    keep = CausalLM().term_mask(batch["label"], None)
    want_kl = lm_topk_loss(logits, values, ids, mask_B=keep)
    want_rkl = lm_topk_loss(logits, values, ids, "reverse_kl", rest=True, mask_B=keep)
    np.testing.assert_allclose(float(terms["lm_kl"]), float(want_kl), rtol=1e-6)
    np.testing.assert_allclose(float(terms["lm_reverse_kl"]), float(want_rkl), rtol=1e-6)
    # The teacher's top-1 per token from a (B, T, K) cache row.
    np.testing.assert_array_equal(np.asarray(top1({"topk": (values, ids)})), teacher.argmax(-1))


def test_bad_lm_loss_configs_fail_when_the_objective_is_built():
    validate_losses({"lm_jsd": {"weight": 1.0, "beta": 0.2, "chunk_size": 1024}})
    validate_losses({"lm_tvd": {"weight": 1.0, "topk_rest": True}})
    config = {"alpha": 0.5, "temperature": 1.0}
    with pytest.raises(ConfigError, match="distill.losses.lm_jsd: beta must be in"):
        Objective({**config, "losses": {"lm_jsd": {"weight": 1.0, "beta": 1.5}}})
    with pytest.raises(ConfigError, match="distill.losses.lm_kl: chunk_size must be"):
        Objective({**config, "losses": {"lm_kl": {"weight": 1.0, "chunk_size": 0}}})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Objective({**config, "losses": {"lm_tvd": {"weight": 1.0, "temperature": 0.0}}})
    rkl = Objective({**config, "losses": {"lm_reverse_kl": {"weight": 1.0}}})
    rkl.check_cached_teacher(0)  # full cached logits: fine
    with pytest.raises(ConfigError, match="needs topk_rest=True"):
        rkl.check_cached_teacher(8)
    hot = {"lm_kl": {"weight": 1.0, "topk_rest": True, "temperature": 2.0}}
    with pytest.raises(ConfigError, match="topk_rest needs temperature 1"):
        Objective({**config, "losses": hot}).check_cached_teacher(8)
    with pytest.raises(ConfigError, match="needs the teacher's full logits"):
        Objective({**config, "losses": {"gjsd": {"weight": 1.0}}}).check_cached_teacher(8)


# ---------------------------------------------------------------------------
# One train step through the unchanged trainer.
# ---------------------------------------------------------------------------


class TinyLM(nn.Module):
    """Embedding + causal mean of the past + dense head: `(logits_BTV, features)`."""

    width: int = 8

    @nn.compact
    def __call__(self, tokens_BT, train=False):
        x_BTD = nn.Embed(V, self.width)(tokens_BT.astype(jnp.int32))
        causal_TT = jnp.tril(jnp.ones((tokens_BT.shape[-1],) * 2))
        causal_TT = causal_TT / causal_TT.sum(-1, keepdims=True)
        h_BTD = jnp.einsum("st,btd->bsd", causal_TT, x_BTD)
        return nn.Dense(V)(h_BTD), {"pre_logits": h_BTD}


def test_one_distillation_step_with_the_causal_lm_task():
    tokens, loss_mask, labels, _, _ = draw(8)
    student, teacher = TinyLM(8), TinyLM(16)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.asarray(tokens))
    losses = {"lm_jsd": {"weight": 1.0, "beta": 0.5, "chunk_size": 5}}
    objective = Objective({"alpha": 0.5, "temperature": 1.0, "losses": losses}, task=CausalLM())
    tx = optax.sgd(0.1)
    state = create_train_state(student, tx, (T,), seed=0)
    step = make_train_step(
        student, tx, objective, teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {}))
    )
    batch = {"image": tokens, "label": labels, "index": np.arange(B, dtype=np.int32)}
    new_state, metrics = jax.jit(step)(state, frozen_inputs(teacher_vars), batch)
    assert int(new_state.step) == 1 and float(metrics["nonfinite"]) == 0
    for key in ("loss", "ce", "lm_jsd", "accuracy", "agreement"):
        assert np.isfinite(float(metrics[key])), key
    # The logged CE is the task loss of the student before the update.
    logits, _ = student.apply({"params": state.params}, jnp.asarray(tokens))
    want_ce = CausalLM().loss(logits, labels, None, 0.0)
    np.testing.assert_allclose(float(metrics["ce"]), float(want_ce), rtol=1e-5)
