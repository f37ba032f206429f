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
