"""Transformer distillation methods (losses/transformer.py) against float64 NumPy.

Checks: each loss equals an independent NumPy derivation of the paper's formula; padded
tokens (and masked rows) are dropped, whatever values they hold; identical features give
zero; no gradient reaches the teacher's features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.losses.method import METHODS
from distill_jax.losses.transformer import (
    AttentionKL,
    EmbeddingDistillation,
    HiddenMSE,
    ValueRelation,
)
from distill_jax.objective import Objective

B, L, H, DS, DT = 3, 6, 2, 4, 6
LENGTHS = np.array([6, 4, 2])  # real tokens per row; the rest is padding


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attention(rng, heads, mask):
    scores = rng.normal(size=(B, heads, L, L))
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    return _softmax(scores).astype(np.float32)


def make_features(seed: int, width: int, mask: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = {"mask": mask.astype(np.float32)}
    for name in ("embeddings", "hidden1", "hidden2", "values1", "values2"):
        feats[name] = rng.normal(size=(B, L, width)).astype(np.float32)
    for name in ("attention1", "attention2"):
        feats[name] = _attention(rng, H, mask)
    feats["sentence_embedding"] = rng.normal(size=(B, 5)).astype(np.float32)
    return feats


MASK = np.arange(L)[None, :] < LENGTHS[:, None]
STUDENT = make_features(0, DS, MASK)
TEACHER = make_features(1, DT, MASK)
PAIRS = {"student_features": ("hidden1", "hidden2"), "teacher_features": ("hidden2", "hidden1")}
ATT = {"student_features": ("attention1", "attention2"), "teacher_features": ("attention2",) * 2}
VAL = {"student_features": ("values2",), "teacher_features": ("values1",), "num_heads": 2}


def run(method, student=STUDENT, teacher=TEACHER, row_mask=None, variables=None):
    out_s = {"logits": jnp.zeros((B, 2)), "features": student}
    out_t = {"logits": jnp.zeros((B, 2)), "features": teacher}
    batch = {"label": jnp.zeros(B, jnp.int32), "index": jnp.arange(B), "mask": row_mask}
    if variables is None:
        variables = method.init(jax.random.key(0), out_s, out_t, batch)
    return float(method.apply(variables, out_s, out_t, batch)), variables


# -- NumPy references -------------------------------------------------------------------


def np_hidden_mse(pairs, params, keep):
    total = 0.0
    for i, (s, t) in enumerate(pairs):
        mapped = np.float64(STUDENT[s]) @ np.float64(params[f"proj{i}"]["kernel"])
        err = (mapped - np.float64(TEACHER[t])) ** 2  # (B, L, DT)
        total += err[keep].sum() / (keep.sum() * DT)
    return total


def np_kl_rows(p_t, p_s, key_mask):
    """KL per (b, h, q) from probabilities, padded keys and p_t = 0 terms dropped."""
    p_t, p_s = np.float64(p_t), np.float64(p_s)
    out = np.zeros(p_t.shape[:-1])
    for idx in np.ndindex(*p_t.shape[:-1]):
        b = idx[0]
        for k in range(p_t.shape[-1]):
            if key_mask[b, k] and p_t[idx + (k,)] > 0:
                out[idx] += p_t[idx + (k,)] * np.log(p_t[idx + (k,)] / max(p_s[idx + (k,)], 1e-12))
    return out


def np_mean_queries(kl_BHL, keep):
    return (
        sum(kl_BHL[b, :, q].mean() for b in range(B) for q in range(L) if keep[b, q]) / keep.sum()
    )


def np_value_relation(v, heads):
    v = np.float64(v).reshape(B, L, heads, -1).transpose(0, 2, 1, 3)
    scores = v @ v.transpose(0, 1, 3, 2) / np.sqrt(v.shape[-1])
    scores = np.where(MASK[:, None, None, :], scores, -np.inf)
    return _softmax(scores)


# -- tests ---------------------------------------------------------------------------------


def test_registered():
    for name in ("hidden_mse", "attention_kl", "value_relation", "embedding"):
        assert name in METHODS


def test_hidden_mse_matches_numpy_and_masks():
    method = HiddenMSE(**PAIRS)
    value, variables = run(method)
    params = variables["params"]
    assert params["proj0"]["kernel"].shape == (DS, DT) and "bias" not in params["proj0"]
    np.testing.assert_allclose(
        value,
        np_hidden_mse([("hidden1", "hidden2"), ("hidden2", "hidden1")], params, MASK),
        rtol=1e-5,
    )
    # Row mask: row 1 dropped == the NumPy loss over rows 0 and 2 only.
    rows = np.array([True, False, True])
    masked, _ = run(method, row_mask=jnp.asarray(rows), variables=variables)
    keep = MASK & rows[:, None]
    expect = np_hidden_mse([("hidden1", "hidden2"), ("hidden2", "hidden1")], params, keep)
    np.testing.assert_allclose(masked, expect, rtol=1e-5)


def test_attention_kl_matches_numpy():
    method = AttentionKL(**ATT)
    value, _ = run(method)
    expect = 0.0
    for s, t in zip(ATT["student_features"], ATT["teacher_features"], strict=True):
        expect += np_mean_queries(np_kl_rows(TEACHER[t], STUDENT[s], MASK), MASK)
    np.testing.assert_allclose(value, expect, rtol=1e-5)
    same, _ = run(
        method,
        teacher={**TEACHER, "attention2": STUDENT["attention1"]},
        student={**STUDENT, "attention2": STUDENT["attention1"]},
    )
    assert abs(same) < 1e-6


def test_value_relation_matches_numpy():
    method = ValueRelation(**VAL)
    value, _ = run(method)
    vr_t = np_value_relation(TEACHER["values1"], 2)
    vr_s = np_value_relation(STUDENT["values2"], 2)
    expect = np_mean_queries(np_kl_rows(vr_t, vr_s, MASK), MASK)
    np.testing.assert_allclose(value, expect, rtol=1e-5)
    # Different widths, one relation-head count: MiniLMv2's generalisation.
    assert STUDENT["values2"].shape[-1] != TEACHER["values1"].shape[-1]
    with pytest.raises(ValueError, match="not divisible by num_heads 4"):
        run(ValueRelation(**{**VAL, "num_heads": 4}))


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_embedding_matches_numpy(kind):
    method = EmbeddingDistillation(loss=kind)
    value, _ = run(method)
    s = np.float64(STUDENT["sentence_embedding"])
    t = np.float64(TEACHER["sentence_embedding"])
    if kind == "mse":
        expect = np.mean((s - t) ** 2)
    else:
        cos = np.sum(s * t, 1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
        expect = np.mean(1 - cos)
    np.testing.assert_allclose(value, expect, rtol=1e-5)
    rows = np.array([True, False, True])
    masked, _ = run(method, row_mask=jnp.asarray(rows))
    if kind == "cosine":
        np.testing.assert_allclose(masked, np.mean((1 - cos)[rows]), rtol=1e-5)
    with pytest.raises(ValueError, match="embedding_dim"):
        run(method, teacher={**TEACHER, "sentence_embedding": np.zeros((B, 7), np.float32)})


def _garbage(features, seed):
    """Puts large random values at every padded position (not in `mask`)."""
    rng = np.random.default_rng(seed)
    out = dict(features)
    for name, x in features.items():
        if name in ("mask", "sentence_embedding"):
            continue
        noise = rng.normal(scale=50.0, size=x.shape).astype(np.float32)
        if name.startswith("attention"):  # padded queries only; keys stay distributions
            pad = ~MASK[:, None, :, None]
        else:
            pad = ~MASK[:, :, None]
        out[name] = np.where(pad, np.abs(noise) if name.startswith("attention") else noise, x)
    return out


@pytest.mark.parametrize("name", ["hidden_mse", "attention_kl", "value_relation"])
def test_padding_is_ignored_and_teacher_gets_no_gradient(name):
    kwargs = {"hidden_mse": PAIRS, "attention_kl": ATT, "value_relation": VAL}[name]
    method = METHODS[name](**kwargs)
    value, variables = run(method)
    noisy, _ = run(method, _garbage(STUDENT, 1), _garbage(TEACHER, 2), variables=variables)
    np.testing.assert_allclose(noisy, value, rtol=1e-5)

    batch = {"label": jnp.zeros(B, jnp.int32), "index": jnp.arange(B), "mask": None}

    def loss(student_feats, teacher_feats):
        return method.apply(
            variables,
            {"logits": jnp.zeros((B, 2)), "features": student_feats},
            {"logits": jnp.zeros((B, 2)), "features": teacher_feats},
            batch,
        )

    s = jax.tree.map(jnp.asarray, STUDENT)
    t = jax.tree.map(jnp.asarray, TEACHER)
    g_s, g_t = jax.grad(loss, argnums=(0, 1))(s, t)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_t))
    used = kwargs["student_features"][0]
    grad = np.asarray(g_s[used])
    assert np.abs(grad).max() > 0
    if used.startswith("attention"):  # padded queries and padded keys get no gradient
        pad = ~(MASK[:, None, :, None] & MASK[:, None, None, :])
        assert np.all(grad[np.broadcast_to(pad, grad.shape)] == 0)
    else:
        assert np.all(grad[~MASK] == 0)


def test_objective_accepts_transformer_methods():
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in STUDENT.items()}
    objective = Objective(
        {"alpha": 0.0, "temperature": 1.0, "losses": {"attention_kl": {"weight": 1.0, **ATT}}},
        shapes,
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in TEACHER.items()},
    )
    assert [t.name for t in objective.terms] == ["attention_kl"]
    from distill_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher has no feature 'hidden3', 'hidden6'"):
        Objective(
            {"alpha": 0.0, "temperature": 1.0, "losses": {"hidden_mse": {"weight": 1.0}}},
            shapes,
            shapes,
        )


def test_embedding_metrics():
    from distill_jax.embeddings import embedding_cosine, neighbour_recall, top_k_neighbours

    rng = np.random.default_rng(0)
    t = rng.normal(size=(30, 8))
    assert embedding_cosine(2.0 * t, t) == pytest.approx(1.0)
    assert embedding_cosine(-t, t) == pytest.approx(-1.0)
    assert neighbour_recall(3.0 * t, t, k=10) == 1.0
    # Directions at angles 0, 0.1, 0.29 and 1.57 rad: nearest neighbours 1, 0, 1, 2.
    pts = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.3], [0.0, 1.0]])
    np.testing.assert_array_equal(top_k_neighbours(pts, 1)[:, 0], [1, 0, 1, 2])
    swapped = pts[[0, 1, 3, 2]]  # rows 2 and 3 exchanged: neighbours 1, 0, 3, 1
    np.testing.assert_array_equal(top_k_neighbours(swapped, 1)[:, 0], [1, 0, 3, 1])
    assert neighbour_recall(swapped, pts, k=1) == 0.5
    with pytest.raises(ValueError, match="k must be"):
        neighbour_recall(t, t, k=30)
