"""Minitron-style width pruning of a Llama decoder (compress/lm_width.py) and the
`prune-width` command.

Tiny random-weight models: the importance scores against an independent float64 NumPy
forward pass; exactness where it must hold (keeping every unit; removing units whose
activation is exactly zero, MLP neurons and key/value groups; hidden channels that carry
nothing, against the original with its RMSNorm scales rescaled, eps 0); the Hugging Face
directory round trip through `hf_llama.load_params` and a student's `init_from`; the
refusals; the command on a tiny checkpoint and `text_lm` data.
"""

import json
import os

import jax
import numpy as np
import pytest
from test_llama import TINY, random_params
from test_news_lm import text_dir  # noqa: F401 (fixture)

from distill_jax.cli import main
from distill_jax.compress import lm_width
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.models import MLP, create_model, hf_llama
from distill_jax.models.llama import Llama

RNG = np.random.default_rng(7)
TOKENS = RNG.integers(0, TINY["vocab_size"], (6, 12)).astype(np.int32)


def tiny(**extra) -> Llama:
    return create_model({"name": "llama", **TINY, **extra}, 0)


def logits(module, params, tokens=TOKENS):
    return np.asarray(module.apply({"params": params}, tokens)[0])


def mutable(params):
    return jax.tree.map(lambda x: np.array(x, np.float32), params)


@pytest.fixture(scope="module")
def model_and_params():
    model = tiny()
    return model, mutable(random_params(model, seed=3))


# ---------------------------------------------------------------------------------------
# An independent float64 NumPy forward pass that keeps the activations importance reads.
# ---------------------------------------------------------------------------------------


def numpy_activations(p, ids, cfg):
    """For one unpadded sequence: per block the SwiGLU intermediate (L, F) and the
    attention output per query head (L, H, E); every RMSNorm output (L, D), in the order
    attn_norm_0, mlp_norm_0, ..., final; the logits (L, V)."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    D, H, K = cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"]
    E, L, G = D // H, len(ids), H // K

    def rms(x, scale):
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + cfg["rms_norm_eps"]) * scale

    ang = np.arange(L)[:, None] * cfg["rope_theta"] ** (-np.arange(0, E, 2) / E)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(x):  # (L, heads, E), pairs (j, j + E/2)
        a, b = x[..., : E // 2], x[..., E // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    x = p["embed"]["embedding"][ids]
    swiglu, attn, norms = [], [], []
    for i in range(cfg["num_layers"]):
        w = p[f"layer_{i}"]
        h = rms(x, w["attn_norm"]["scale"])
        norms.append(h)
        q = rope((h @ w["q"]["kernel"]).reshape(L, H, E))
        k = rope((h @ w["k"]["kernel"]).reshape(L, K, E))
        v = (h @ w["v"]["kernel"]).reshape(L, K, E)
        out = np.zeros((L, H, E))
        for head in range(H):
            s = q[:, head] @ k[:, head // G].T / np.sqrt(E)
            s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
            prob = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (prob / prob.sum(-1, keepdims=True)) @ v[:, head // G]
        attn.append(out)
        x = x + out.reshape(L, H * E) @ w["o"]["kernel"]
        h = rms(x, w["mlp_norm"]["scale"])
        norms.append(h)
        gate = h @ w["gate"]["kernel"]
        a = gate / (1 + np.exp(-gate)) * (h @ w["up"]["kernel"])
        swiglu.append(a)
        x = x + a @ w["down"]["kernel"]
    h = rms(x, p["final_norm"]["scale"])
    norms.append(h)
    return swiglu, attn, norms, h @ p["embed"]["embedding"].T


def test_importance_equals_a_numpy_derivation(model_and_params):
    """score = sqrt(sum_b (mean_s |a|)^2) over real tokens; groups sum their heads; the
    hidden score sums the norms'; perplexity = exp(mean NLL of the shifted targets)."""
    model, params = model_and_params
    lengths = [12, 12, 9, 12, 5, 12]  # rows 2 and 4 are right-padded
    mask = np.arange(12)[None] < np.array(lengths)[:, None]
    got = lm_width.calibrate(model, params, TOKENS, mask=mask, batch_size=4)
    rows = [numpy_activations(params, TOKENS[b, :n], TINY) for b, n in enumerate(lengths)]

    def agg(per_row):  # per_row[b]: (L_b, U) -> (U,)
        return np.sqrt(sum(np.abs(a).mean(0) ** 2 for a in per_row))

    N, H, K = TINY["num_layers"], TINY["num_heads"], TINY["num_kv_heads"]
    mlp = np.stack([agg([r[0][i] for r in rows]) for i in range(N)])
    heads = np.stack([agg([np.linalg.norm(r[1][i], axis=-1) for r in rows]) for i in range(N)])
    norms = np.stack([agg([r[2][j] for r in rows]) for j in range(2 * N + 1)])
    imp = got.importance
    np.testing.assert_allclose(imp["mlp"], mlp, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(imp["heads"], heads, rtol=2e-5)
    np.testing.assert_allclose(imp["kv_groups"], heads.reshape(N, K, H // K).sum(-1), rtol=2e-5)
    np.testing.assert_allclose(imp["norms"], norms, rtol=2e-5)
    np.testing.assert_allclose(imp["hidden"], norms.sum(0), rtol=2e-5)
    nll = 0.0
    for r, (b, n) in zip(rows, enumerate(lengths), strict=True):
        z = r[3][: n - 1]
        logp = z - z.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= logp[np.arange(n - 1), TOKENS[b, 1:n]].sum()
    assert got.targets == sum(lengths) - len(lengths)
    np.testing.assert_allclose(got.perplexity, np.exp(nll / got.targets), rtol=1e-5)
    # the batch size changes nothing but the number of passes
    again = lm_width.importance(model, params, TOKENS, mask=mask, batch_size=6)
    for key, value in imp.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Exactness.
# ---------------------------------------------------------------------------------------


def test_keeping_every_unit_reproduces_the_logits(model_and_params):
    model, params = model_and_params
    sizes = dict(intermediate_size=48, num_kv_heads=2, hidden_size=32)
    kwargs, new = lm_width.prune_width(model, params, TOKENS, **sizes)
    assert kwargs == hf_llama.config_of(model) and "head_dim" not in kwargs
    np.testing.assert_allclose(logits(Llama(**kwargs), new), logits(model, params), atol=1e-6)
    untied = tiny(tie_embeddings=False)
    p = mutable(random_params(untied, seed=4))
    kwargs, new = lm_width.prune_width(untied, p, TOKENS)
    np.testing.assert_allclose(logits(Llama(**kwargs), new), logits(untied, p), atol=1e-6)


def test_dead_mlp_neurons_are_the_pruned_ones_and_the_logits_stay(model_and_params):
    model, params = model_and_params
    dead = {0: [3, 17, 40], 1: [0, 6, 47]}
    p = mutable(params)
    for i, cols in dead.items():
        p[f"layer_{i}"]["gate"]["kernel"][:, cols] = 0.0  # silu(0) * up = 0 exactly
    scores = lm_width.importance(model, p, TOKENS)
    for i, cols in dead.items():
        assert (scores["mlp"][i, cols] == 0).all() and (np.delete(scores["mlp"][i], cols) > 0).all()
    kwargs, new = lm_width.prune_width(model, p, TOKENS, intermediate_size=45)
    assert kwargs["intermediate_size"] == 45
    kept = lm_width.kept_units(model, scores, intermediate_size=45)["mlp"]
    for i, cols in dead.items():
        np.testing.assert_array_equal(kept[i], np.delete(np.arange(48), cols))
        np.testing.assert_array_equal(
            new[f"layer_{i}"]["down"]["kernel"],
            np.delete(p[f"layer_{i}"]["down"]["kernel"], cols, 0),
        )
    np.testing.assert_allclose(logits(Llama(**kwargs), new), logits(model, p), atol=1e-5)


def test_ties_go_to_the_lower_index_and_kept_units_stay_in_order(model_and_params):
    model, _ = model_and_params
    scores = {
        "mlp": np.zeros((2, 48)),
        "kv_groups": np.array([[1.0, 1.0], [0.5, 2.0]]),
        "hidden": np.r_[np.ones(16), 3 * np.ones(16)][::-1],
    }
    kept = lm_width.kept_units(model, scores, intermediate_size=3, num_kv_heads=1, hidden_size=20)
    np.testing.assert_array_equal(kept["mlp"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(kept["kv_groups"], [[0], [1]])
    np.testing.assert_array_equal(kept["hidden"], np.arange(20))


def test_a_silent_kv_group_is_pruned_with_its_query_heads_and_the_logits_stay(
    model_and_params,
):
    """Zero value vectors make a group's attention output (the input of o) exactly zero:
    importance 0, pruned. Zero o_proj input rows make a group irrelevant to the output
    (its attention output is not zero, so importance does not see it): removing it by
    hand leaves the logits too, which checks the q / k / v / o slicing."""
    model, params = model_and_params
    E = 8
    p = mutable(params)
    p["layer_0"]["v"]["kernel"][:, 1 * E : 2 * E] = 0.0  # group 1 of block 0
    p["layer_1"]["v"]["kernel"][:, 0 * E : 1 * E] = 0.0  # group 0 of block 1
    scores = lm_width.importance(model, p, TOKENS)
    assert scores["kv_groups"][0, 1] == 0 and scores["kv_groups"][1, 0] == 0
    assert (scores["heads"][0, 2:] == 0).all() and (scores["heads"][0, :2] > 0).all()
    kwargs, new = lm_width.prune_width(model, p, TOKENS, num_kv_heads=1)
    assert (kwargs["num_heads"], kwargs["num_kv_heads"], kwargs["head_dim"]) == (2, 1, 8)
    np.testing.assert_array_equal(new["layer_1"]["k"]["kernel"], p["layer_1"]["k"]["kernel"][:, E:])
    # equal up to float32 summation order (logits of a few units here)
    np.testing.assert_allclose(logits(Llama(**kwargs), new), logits(model, p), rtol=1e-5, atol=1e-5)

    p = mutable(params)
    p["layer_0"]["o"]["kernel"][0 : 2 * E] = 0.0  # group 0 = query heads 0 and 1
    p["layer_1"]["o"]["kernel"][2 * E : 4 * E] = 0.0  # group 1 = query heads 2 and 3
    kept = {"kv_groups": np.array([[1], [0]])}
    kwargs, new = lm_width.shrink(model, p, kept)
    q = p["layer_0"]["q"]["kernel"]
    np.testing.assert_array_equal(new["layer_0"]["q"]["kernel"], q[:, 2 * E :])
    np.testing.assert_array_equal(
        new["layer_0"]["o"]["kernel"], p["layer_0"]["o"]["kernel"][2 * E :]
    )
    np.testing.assert_allclose(logits(Llama(**kwargs), new), logits(model, p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_channels_are_sliced_consistently(tied):
    """Two hidden channels that carry nothing (zero embedding column, zero o / down output
    columns) score 0 and are pruned. With eps = 0 the pruned model equals the original
    whose RMSNorm scales are all multiplied by sqrt(30 / 32): RMSNorm's mean now runs
    over 30 channels (the approximation the module docstring states)."""
    model = tiny(rms_norm_eps=0.0, tie_embeddings=tied)
    p = mutable(random_params(model, seed=5))
    dead = [4, 21]
    p["embed"]["embedding"][:, dead] = 0.0
    for i in range(2):
        p[f"layer_{i}"]["o"]["kernel"][:, dead] = 0.0
        p[f"layer_{i}"]["down"]["kernel"][:, dead] = 0.0
    scores = lm_width.importance(model, p, TOKENS)
    assert (scores["hidden"][dead] == 0).all() and (np.delete(scores["hidden"], dead) > 0).all()
    kwargs, new = lm_width.prune_width(model, p, TOKENS, hidden_size=30)
    assert kwargs["hidden_size"] == 30 and kwargs["head_dim"] == 8  # 30 / 4 heads: explicit
    assert new["embed"]["embedding"].shape == (61, 30)
    rescaled = mutable(p)
    for path in (
        ("final_norm",),
        *[(f"layer_{i}", n) for i in range(2) for n in ("attn_norm", "mlp_norm")],
    ):
        leaf = rescaled
        for k in path:
            leaf = leaf[k]
        leaf["scale"] *= np.sqrt(30 / 32)
    np.testing.assert_allclose(
        logits(Llama(**kwargs), new), logits(model, rescaled), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------------------------
# The Hugging Face directory.
# ---------------------------------------------------------------------------------------


def write_word_tokenizer(directory):
    """A tiny word-level tokenizer.json (and eos id in config.json), as a HF directory."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    words = ["<eos>", "<unk>", "the", "market", "rose"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"eos_token_id": 0}, f)
    return str(directory)


def test_written_directory_round_trips_into_a_student(tmp_path, model_and_params):
    model, params = model_and_params
    sizes = dict(intermediate_size=20, num_kv_heads=1, hidden_size=24)
    kwargs, new = lm_width.prune_width(model, params, TOKENS, **sizes)
    pruned = Llama(**kwargs)
    source = write_word_tokenizer(tmp_path / "tok")
    out = tmp_path / "pruned"
    files = lm_width.write_pruned(str(out), pruned, new, tokenizer=source, report={"a": 1})
    assert files == ["config.json", "model.safetensors", "pruning.json", "tokenizer.json"]
    assert sorted(os.listdir(tmp_path)) == ["pruned", "tok"]  # no temporary directory left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    config = json.loads((out / "config.json").read_text())
    assert (config["head_dim"], config["num_attention_heads"], config["eos_token_id"]) == (8, 2, 0)
    cfg, loaded = hf_llama.load_params(out)
    assert cfg == kwargs
    jax.tree.map(np.testing.assert_array_equal, loaded, new)
    tok = hf_llama.load_lm_tokenizer(out)
    assert tok.eos_id == 0 and tok.encode("the market rose") == [2, 3, 4]
    # a student config loads it with init_from (all blocks, then a depth subset)
    student = create_model({"name": "llama", **kwargs, "init_from": str(out)}, 61)
    fresh = mutable(random_params(student, seed=9))
    init = student.initial_params(fresh)
    np.testing.assert_allclose(logits(student, init), logits(pruned, new), atol=1e-6)
    one = create_model(
        {"name": "llama", **kwargs, "num_layers": 1, "init_layers": [1], "init_from": str(out)},
        61,
    )
    init = one.initial_params(mutable(random_params(one, seed=9)))
    np.testing.assert_array_equal(
        init["layer_0"]["down"]["kernel"], new["layer_1"]["down"]["kernel"]
    )
    with pytest.raises(ConfigError, match="model head_dim 12 differs from the checkpoint's 8"):
        kw = {k: v for k, v in kwargs.items() if k != "head_dim"}
        create_model(
            {"name": "llama", **kw, "head_dim": 12, "init_from": str(out)}, 61
        ).initial_params({})


# ---------------------------------------------------------------------------------------
# Refusals.
# ---------------------------------------------------------------------------------------


def test_bad_sizes_and_models_are_refused_in_one_line(tmp_path, model_and_params):
    model, params = model_and_params
    cases = [
        (
            dict(intermediate_size=49),
            "intermediate_size 49 must be an integer between 1 and the model's "
            "intermediate_size 48",
        ),
        (
            dict(num_kv_heads=0),
            "num_kv_heads 0 must be an integer between 1 and the model's num_kv_heads 2",
        ),
        (
            dict(hidden_size=64),
            "hidden_size 64 must be an integer between 1 and the model's hidden_size 32",
        ),
        (dict(hidden_size=2.5), "hidden_size 2.5 must be an integer"),
    ]
    for sizes, message in cases:
        with pytest.raises(ConfigError) as e:
            lm_width.prune_width(model, params, TOKENS, **sizes)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="supports Llama-family decoders .* got MLP"):
        lm_width.prune_width(MLP(num_classes=3), {}, TOKENS, hidden_size=4)
    with pytest.raises(ConfigError, match=r"layers \(0, 2\) must name blocks .* layers 0..1"):
        lm_width.depth_prune(model, params, [0, 2])
    with pytest.raises(ConfigError, match="exceed the model's max_position 64"):
        lm_width.importance(model, params, np.zeros((1, 65), np.int32))
    with pytest.raises(ConfigError, match="head_dim 7 must be even"):
        logits(tiny(head_dim=7), params)
    # an existing non-empty directory is not replaced, and nothing is written beside it
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty; .* --overwrite"):
        lm_width.write_pruned(str(out), model, params)
    assert sorted(os.listdir(tmp_path)) == ["taken"] and os.listdir(out) == ["keep.txt"]
    with pytest.raises(CheckpointError):  # an unreadable tokenizer: refused before writing
        lm_width.write_pruned(str(tmp_path / "new"), model, params, tokenizer=str(tmp_path / "x"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    lm_width.write_pruned(str(out), model, params, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------

VOCAB = 49152  # text_lm data is tokenised with SmolLM2's tokenizer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 3-block random Llama over SmolLM2's vocabulary, as a HF directory (no tokenizer)."""
    model = tiny(vocab_size=VOCAB, num_layers=3, intermediate_size=32)
    params = random_params(model, seed=11)
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    lm_width.write_pruned(str(directory), model, params)
    return str(directory)


def test_cli_prunes_a_tiny_checkpoint(tiny_checkpoint, text_dir, data_dir, tmp_path, capsys):  # noqa: F811
    from distill_jax import data

    out = tmp_path / "student"
    name = f"text_lm/len32:{text_dir}"
    args = ["prune-width", "--checkpoint", tiny_checkpoint, "--data", name, "--data_dir", data_dir]
    args += ["--sequences", "4", "--batch_size", "3", "--out", str(out)]
    widths = ["--layers", "2", "0", "--intermediate_size", "16", "--kv_heads", "1"]
    assert main([*args, *widths, "--hidden_size", "24"]) == 0
    printed = capsys.readouterr().out
    assert "| teacher | 3 | 32 | 4/2 | 8 | 32 |" in printed
    assert "| depth-pruned | 2 | 32 | 4/2 | 8 | 32 |" in printed
    assert "| width-pruned | 2 | 24 | 2/1 | 8 | 16 |" in printed
    report = json.loads((out / "pruning.json").read_text())
    rows = data.load_split(name, "train[:4]", data_dir)
    teacher, teacher_params = hf_llama.load_model(tiny_checkpoint)
    kw = {"labels": rows.labels, "batch_size": 3}  # the command's shapes: compiled already
    ppl = lm_width.perplexity(teacher, teacher_params, rows.images, **kw)
    np.testing.assert_allclose(report["models"]["teacher"]["perplexity"], ppl, rtol=1e-6)
    student_cfg = json.loads(printed.split("student config: ")[1].splitlines()[0])
    assert student_cfg == report["student_config"] and student_cfg["init_from"] == str(out)
    # the depth-then-width model is what the printed student config loads
    depth, depth_params = lm_width.depth_prune(teacher, teacher_params, [2, 0])
    kwargs, expected = lm_width.shrink(
        depth, depth_params, {k: np.asarray(v) for k, v in report["kept"].items()}
    )
    student = create_model(student_cfg, VOCAB)
    init = student.initial_params(mutable(random_params(student)))
    jax.tree.map(np.testing.assert_array_equal, init, expected)
    np.testing.assert_allclose(
        report["models"]["width-pruned"]["perplexity"],
        lm_width.perplexity(Llama(**kwargs), init, rows.images, **kw),
        rtol=1e-5,
    )


def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(
    tiny_checkpoint,
    text_dir,  # noqa: F811
    data_dir,
    tmp_path,
    capsys,  # noqa: F811
):
    out = tmp_path / "student"
    base = ["prune-width", "--checkpoint", tiny_checkpoint, "--data", f"text_lm/len32:{text_dir}"]
    base += ["--data_dir", data_dir, "--out", str(out)]
    cases = [
        (
            ["--intermediate_size", "64"],
            "--intermediate_size 64 must be an integer between 1 and the model's "
            "intermediate_size 32",
        ),
        (
            ["--kv_heads", "0"],
            "--kv_heads 0 must be an integer between 1 and the model's num_kv_heads 2",
        ),
        (
            ["--layers", "0", "3"],
            "layers (0, 3) must name blocks of the model, which has layers 0..2",
        ),
        ([], "prune-width needs at least one of --layers"),
        (["--hidden_size", "8", "--sequences", "0"], "--sequences must be an integer >= 1, got 0"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"distill-jax: error: {message}") and err.count("\n") == 1, err
    other = ["prune-width", "--checkpoint", "no-such-model", "--data", "news_lm", "--out", str(out)]
    assert main([*other, "--hidden_size", "8"]) == 2
    assert "checkpoint 'no-such-model' is neither" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("x")
    assert main([*base, "--hidden_size", "8"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["x"] and sorted(os.listdir(tmp_path)) == ["student"]


# ---------------------------------------------------------------------------------------
# The real teacher (slow).
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_teacher_keep_all_is_exact_and_its_tokenizer_travels(tmp_path):
    teacher, params = hf_llama.load_model("smollm2-135m-q4")
    depth, depth_params = lm_width.depth_prune(teacher, params, [0, 29])
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 16)).astype(np.int32)
    kwargs, new = lm_width.prune_width(depth, depth_params, tokens)
    np.testing.assert_allclose(
        logits(Llama(**kwargs), new, tokens), logits(depth, depth_params, tokens), atol=1e-5
    )
    kwargs, new = lm_width.prune_width(
        depth, depth_params, tokens, intermediate_size=768, num_kv_heads=2, hidden_size=384
    )
    out = tmp_path / "pruned"
    lm_width.write_pruned(str(out), Llama(**kwargs), new, tokenizer="smollm2-135m-q4")
    text = "The market rose 3.5% after a quiet week.<|im_end|>"
    theirs = hf_llama.load_lm_tokenizer("smollm2-135m-q4")
    ours = hf_llama.load_lm_tokenizer(out)
    assert ours.encode(text) == theirs.encode(text)
    assert (ours.bos_id, ours.eos_id, ours.chat_template) == (
        theirs.bos_id,
        theirs.eos_id,
        theirs.chat_template,
    )
    assert hf_llama.read_config(out) == {**kwargs}
    assert kwargs["num_heads"] == 6 and "head_dim" not in kwargs  # 384 / 6 is still 64
