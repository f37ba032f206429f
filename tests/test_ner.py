"""Named-entity recognition: the `wnut16` / `conll:DIR` builders, the `Tagging` task and
its entity metrics, the token-level models, and tiny end-to-end runs (issue 15)."""

import os

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
    again = load_split("wnut16", "test", data_dir)
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
