"""Language-model data (`data/lm.py`: `news_lm`, `text_lm:PATH`) and causal-LM runs
through the one trainer (`train.loop.fit`, the CLI), with tiny Llama models.

The split rule and the packing are recomputed here from their documented definitions,
not by calling the builder's helpers; perplexity is checked against NumPy.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import data
from distill_jax.cli import main
from distill_jax.config import load_config
from distill_jax.data import lm
from distill_jax.data.text_cls import read_news_articles
from distill_jax.errors import ConfigError, DatasetError
from distill_jax.evaluation import Evaluator
from distill_jax.tasks import CausalLM
from distill_jax.train import loop

NEWS_DOCS = {"train": 3403, "validation": 210, "test": 173}
NEWS_TOKENS = {"train": 2542978, "validation": 148615, "test": 121677}
NEWS_LEN128 = {"train": 19868, "validation": 1162, "test": 951}

TINY = {  # a narrow Llama over SmolLM2's full 49,152-token vocabulary (1.6M parameters)
    "name": "llama",
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 64,
    "max_position": 64,
}
SMALLER = {**TINY, "hidden_size": 16, "num_layers": 1, "intermediate_size": 32}
WORDS = (
    "the market rose after a quiet week while officials said the plan would cut costs "
    "in the north and the south of the country as voters waited for news from the capital"
).split()


def norm(text: str) -> str:
    return " ".join(text.split())


def documented_split(text: str) -> str:
    """The documented rule: sha256 of the normalised text, first 64 bits, 90/5/5."""
    h = int(hashlib.sha256(norm(text).encode()).hexdigest()[:16], 16) / 2**64
    return "train" if h < 0.9 else "validation" if h < 0.95 else "test"


def corpus(n: int = 80, seed: int = 0) -> list[str]:
    """`n` distinct short documents of English words."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(8, 30)))
        docs.append(f"Story {i}: " + " ".join(words) + ".")
    return docs


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A directory of .txt files, one document each (and a file that is not .txt)."""
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(corpus()):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{i:03d}.txt").write_text(doc + "\n", encoding="utf-8")
    (root / "notes.md").write_text("not a document", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------- packing


def test_pack_keeps_every_token_and_separates_documents():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    packed = lm.pack(docs, 4, separator=0)
    stream = [5, 6, 7, 0, 8, 0, 9, 10, 11, 12, 13, 0]
    assert packed.ids.shape == (3, 4) and packed.ids.dtype == np.int32
    assert packed.ids.reshape(-1).tolist() == stream
    assert packed.labels.reshape(-1).tolist() == stream
    assert packed.tokens == 12 and packed.documents == 3
    packed = lm.pack(docs, 5, separator=0)  # 12 tokens in 3 x 5: the last 3 are padding
    assert packed.ids.reshape(-1).tolist() == [*stream, 0, 0, 0]
    assert packed.labels.reshape(-1).tolist() == [*stream, -1, -1, -1]
    assert lm.unpack(packed.labels, 0) == docs


# ------------------------------------------------------------------------------- news_lm


def test_news_lm_documents_split_deterministically_and_disjointly():
    texts = [e.text for e in read_news_articles("news_lm")]
    assert len(texts) == 3788  # 3,824 rows, 36 without a body
    splits = lm.split_documents(texts)
    assert splits == lm.split_documents(texts)
    assert {k: len(v) for k, v in splits.items()} == NEWS_DOCS
    seen = {}
    for split, docs in splits.items():
        for doc in docs:
            assert documented_split(doc) == split
            assert norm(doc) not in seen, "a document in two splits (or twice)"
            seen[norm(doc)] = split
    assert len(seen) == 3786  # two repeated articles kept once


@pytest.fixture(scope="module")
def news_validation(data_dir):
    """news_lm/len128's validation split (prepares the dataset once: ~10 s)."""
    return data.load_split("news_lm", "validation", data_dir)


def test_news_lm_prepared_sequences_round_trip(data_dir, news_validation):
    info = data.get_info("news_lm", data_dir)
    assert info.causal_lm and not info.per_token and info.input_kind == "tokens"
    assert info.num_classes == 49152 and info.image_shape == (128,)
    assert info.splits == NEWS_LEN128
    assert data.get_info("news_lm/len128", data_dir).splits == NEWS_LEN128
    split = news_validation
    ids, labels = split.images, split.labels
    assert ids.dtype == np.int32 and labels.shape == (1162, 128)
    real = labels >= 0
    np.testing.assert_array_equal(ids[real], labels[real])
    # Padding only after the split's last token, at the end of its last sequence.
    assert real.reshape(-1).tolist() == [True] * NEWS_TOKENS["validation"] + [False] * (
        1162 * 128 - NEWS_TOKENS["validation"]
    )
    tok = lm.lm_tokenizer(lm.LM_TOKENIZER)
    assert lm.separator_id(tok) == 0 and tok.tokenizer.id_to_token(0) == "<|endoftext|>"
    docs = lm.unpack(labels, 0)
    want = lm.split_documents([e.text for e in read_news_articles("news_lm")])["validation"]
    assert len(docs) == len(want) == NEWS_DOCS["validation"]
    assert [tok.decode(d) for d in docs] == want  # every document back, in order


# ------------------------------------------------------------------------------- text_lm


def test_text_lm_directory_and_file(text_dir, tmp_path, data_dir):
    docs = corpus()
    name = f"text_lm/len32:{text_dir}"
    info = data.get_info(name, data_dir)
    assert info.causal_lm and info.image_shape == (32,) and info.num_classes == 49152
    tok = lm.lm_tokenizer(lm.LM_TOKENIZER)
    by_split = {}
    for split in ("train", "validation", "test"):
        labels = data.load_split(name, split, data_dir).labels
        by_split[split] = [tok.decode(d) for d in lm.unpack(labels, 0)]
        assert by_split[split], split
        assert all(documented_split(d) == split for d in by_split[split])
    # One document per file, files in sorted path order (a/ before b/), notes.md ignored.
    files = sorted(text_dir.rglob("*.txt"))
    in_order = [docs[int(p.stem)] for p in files]
    assert sorted(sum(by_split.values(), [])) == sorted(docs)
    assert by_split["train"] == [d for d in in_order if documented_split(d) == "train"]
    # A single file: documents separated by blank lines; the same documents, same splits.
    one = tmp_path / "all.txt"
    one.write_text("\n\n  \n".join(docs) + "\n\n", encoding="utf-8")
    assert lm.read_text_documents(f"text_lm:{one}") == docs
    # Relative paths become absolute in the config (any working directory reads them).
    cfg = load_config(None, [f"data.name='text_lm/len64:{os.path.relpath(one)}'"])
    assert cfg.data.name == f"text_lm/len64:{one}"
    assert load_config(None, [f"data.name='text_lm:{one}'"]).data.name == f"text_lm:{one}"


def test_text_lm_errors_name_the_path(tmp_path, data_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{missing} does not exist"):
        data.get_info(f"text_lm:{missing}", data_dir)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "a.md").write_text("text")
    with pytest.raises(DatasetError, match=f"{empty_dir} holds no .txt files"):
        data.get_info(f"text_lm:{empty_dir}", data_dir)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(DatasetError, match=f"{blank} holds no text"):
        data.get_info(f"text_lm:{blank}", data_dir)
    few = tmp_path / "few.txt"
    few.write_text("one document\n\nanother one\n")
    with pytest.raises(DatasetError, match="text_lm:.*few.txt': its 2 distinct documents"):
        data.get_info(f"text_lm:{few}", data_dir)
    with pytest.raises(ConfigError, match="sequences need at least 2 tokens"):
        load_config(None, [f"data.name='text_lm/len1:{few}'"])
    with pytest.raises(DatasetError, match="Unknown dataset 'text_lmx'"):
        data.get_info("text_lmx", data_dir)


# ------------------------------------------------------------------------------- training


def lm_config(text_dir, data_dir, **extra):
    items = {
        "data.name": f"text_lm/len32:{text_dir}",
        "data.data_dir": data_dir,
        "data.train_split": "train[:32]",
        "data.eval_batch_size": 8,
        "teacher.model": TINY,
        "student.model": SMALLER,
        "teacher.train.epochs": 1,
        "student.train.epochs": 1,
        "teacher.train.batch_size": 8,
        "student.train.batch_size": 8,
        "teacher.train.learning_rate": 3e-3,
        "student.train.learning_rate": 3e-3,
        "distill.alpha": 0.5,
        "distill.losses": {"lm_kl": {"weight": 1.0}},
        "eval.latency_batch_size": 8,
        "log.progress": False,
        "log.every_steps": 2,
    }
    items.update(extra)
    return load_config(None, [f"{k}={v!r}" for k, v in items.items()])


@pytest.fixture(scope="module")
def teacher_run(text_dir, data_dir, tmp_path_factory):
    """A tiny random-init Llama trained 4 steps on text_lm (the teacher)."""
    workdir = str(tmp_path_factory.mktemp("lm") / "teacher")
    result = loop.fit(lm_config(text_dir, data_dir), workdir, role="teacher")
    return workdir, result


def test_fit_trains_and_distils_a_causal_lm(teacher_run, text_dir, data_dir, tmp_path):
    workdir, teacher_result = teacher_run
    assert teacher_result.steps == 4
    test = teacher_result.test
    for key in ("perplexity", "nll", "accuracy", "count", "params", "latency_ms_batch1"):
        assert key in test, key
    assert np.isclose(test["perplexity"], np.exp(test["nll"]))
    assert test["perplexity"] < 49152  # 4 steps already beat the uniform guess
    history = teacher_result.history
    assert history and "perplexity" in history[-1]
    teacher = loop.load_teacher(workdir)
    result = loop.fit(
        lm_config(text_dir, data_dir), str(tmp_path / "student"), role="student", teacher=teacher
    )
    metrics = [json.loads(line) for line in open(tmp_path / "student" / "metrics.jsonl")]
    train = [m for m in metrics if m.get("split") == "train"]
    assert train and all(np.isfinite(m["lm_kl"]) and m["lm_kl"] >= 0 for m in train)
    assert "agreement" in train[-1]
    for key in ("perplexity", "agreement", "kl"):
        assert key in result.test, key
    assert result.test["kl"] > 0 and 0 <= result.test["agreement"] <= 1
    assert result.test["params"] < test["params"]


def test_perplexity_is_exp_of_the_mean_token_nll(teacher_run, text_dir, data_dir):
    _, result = teacher_run
    split = data.load_split(f"text_lm/len32:{text_dir}", "validation", data_dir)
    # 3 rows per batch: the last batch is padded and masked, the split is several batches.
    got = Evaluator(result.model, task=CausalLM(eval_tokens=96), batch_size=500)(
        result.variables, split
    )
    logits = np.asarray(
        result.model.apply(result.variables, jnp.asarray(split.images), train=False)[0],
        np.float64,
    )
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = split.labels[:, 1:]  # position t predicts token t + 1
    keep = targets >= 0
    nll = -np.take_along_axis(logp[:, :-1], np.maximum(targets, 0)[..., None], -1)[..., 0]
    assert got["count"] == keep.sum()
    np.testing.assert_allclose(got["perplexity"], np.exp(nll[keep].mean()), rtol=1e-5)
    pred = logp[:, :-1].argmax(-1)
    np.testing.assert_allclose(got["accuracy"], (pred == targets)[keep].mean(), rtol=1e-6)


def test_vocabulary_mismatch_is_refused_before_training(teacher_run, text_dir, data_dir, tmp_path):
    workdir, _ = teacher_run
    teacher = loop.load_teacher(workdir)
    config = lm_config(text_dir, data_dir, **{"student.model": {**SMALLER, "vocab_size": 32000}})
    with pytest.raises(ConfigError, match="student.model has a vocabulary of 32000 tokens.*49152"):
        loop.fit(config, str(tmp_path / "s"), role="student", teacher=teacher)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.length_bucket": 16}, "data.length_bucket is not supported for causal"),
        ({"student.train.token_augment.mask": 0.1}, "token_augment is not supported"),
        ({"parallel.strategy": "pmap"}, "parallel.strategy 'pmap' is not supported"),
        ({"distill.exposure": "top:5"}, "distill.exposure other than 'full'"),
        ({"student.train.robust.method": "pgd_at"}, "perturbs pixels"),
    ],
)
def test_what_does_not_apply_to_language_models_is_refused(
    teacher_run, text_dir, data_dir, tmp_path, overrides, message
):
    teacher = loop.load_teacher(teacher_run[0])
    config = lm_config(text_dir, data_dir, **overrides)
    with pytest.raises(ConfigError, match=message):
        loop.fit(config, str(tmp_path / "s"), role="student", teacher=teacher)
    assert not (tmp_path / "s").exists()


def test_cli_evaluate_reports_perplexity(teacher_run, capsys):
    workdir, result = teacher_run
    assert main(["evaluate", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out
    metrics = json.loads(open(os.path.join(workdir, "eval_test.json")).read())
    np.testing.assert_allclose(metrics["perplexity"], result.test["perplexity"], rtol=1e-5)


def test_llama_takes_its_vocabulary_from_the_data(text_dir, data_dir):
    from distill_jax.models import create_model

    info = data.get_info(f"text_lm/len32:{text_dir}", data_dir)
    model = create_model(TINY, info.num_classes)
    assert model.vocab_size == 49152
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32)), train=False)
    )
    assert shapes["params"]["embed"]["embedding"].shape == (49152, 32)


def test_a_teacher_of_another_vocabulary_is_refused(teacher_run, text_dir, data_dir, tmp_path):
    import dataclasses

    teacher = loop.load_teacher(teacher_run[0])
    other = dataclasses.replace(teacher, identity={**teacher.identity, "num_classes": 32000})
    with pytest.raises(ConfigError, match="teacher/data vocabulary mismatch.*32000 tokens.*49152"):
        loop.fit(lm_config(text_dir, data_dir), str(tmp_path / "s"), role="student", teacher=other)


def test_distill_without_a_teacher_needs_init_from(text_dir, data_dir):
    from distill_jax.train.inputs import pretrained_teacher

    config = lm_config(text_dir, data_dir)
    info = data.get_info(config.data.name, data_dir)
    with pytest.raises(ConfigError, match=r"or \(language-model data\) teacher.model.init_from"):
        pretrained_teacher(config, info)


@pytest.mark.slow
def test_cli_distils_from_the_pretrained_smollm2_teacher(text_dir, data_dir, tmp_path):
    """`distill` without --teacher: SmolLM2-135M-Q4 from its GGUF (teacher.model.init_from)
    teaches a Minitron-style student, its layers 0 and 29 (about a minute on 2 cores)."""
    workdir = tmp_path / "student"
    overrides = {
        "data.name": f"text_lm/len32:{text_dir}",
        "data.data_dir": data_dir,
        "data.train_split": "train[:16]",
        "data.eval_batch_size": 8,
        "teacher.model": {"name": "llama", "init_from": "smollm2-135m-q4"},
        "student.model": {
            "name": "llama",
            "init_from": "smollm2-135m-q4",
            "num_layers": 2,
            "init_layers": [0, 29],
        },
        "student.train.epochs": 1,
        "student.train.batch_size": 8,
        "distill.alpha": 0.0,
        "distill.losses": {"lm_kl": {"weight": 1.0}},
        "log.progress": False,
    }
    args = [f"--config.{k}={v!r}" for k, v in overrides.items()]
    assert main(["distill", "--workdir", str(workdir), *args]) == 0
    result = json.loads((workdir / "eval.json").read_text())
    for key in ("perplexity", "agreement", "kl", "params"):
        assert key in result, key
    teacher = json.loads((workdir / "config.json").read_text())["teacher"]
    assert teacher["pretrained"] == "smollm2-135m-q4" and teacher["num_classes"] == 49152
