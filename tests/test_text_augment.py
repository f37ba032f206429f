"""Transfer-set augmentation of token ids (data/text_augment.py), checked on a toy vocabulary
whose words and pieces are known, so every view can be decoded and judged word by word."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.data.text_augment import TokenAugment, word_neighbours

# A toy WordPiece vocabulary: specials, whole words, continuation pieces.
PIECES = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "dull", "##ish"]
PIECES += ["great", "awful", "story", "movie", "fun", "##ly", ",", "un", "##real", "actor"]
VOCAB = {p: i for i, p in enumerate(PIECES)}
WORDS = [i for p, i in VOCAB.items() if p.isalpha()]  # whole-word pieces with neighbours
NEIGHBOURS = {i: [j for j in WORDS if j != i][:3] for i in WORDS}


def toy(**probs) -> TokenAugment:
    table = np.repeat(np.arange(len(PIECES), dtype=np.int32)[:, None], 3, axis=1)
    for i, near in NEIGHBOURS.items():
        table[i] = near
    start = np.array([not p.startswith("##") for p in PIECES])
    spec = dict(mask=0.0, replace=0.0, ngram=0.0, original=0.0, max_ngram=5)
    spec.update(probs)
    return TokenAugment(
        **spec, word_start_V=start, neighbours_VK=table, cls_id=1, sep_id=2, mask_id=3, pad_id=0
    )


def encode(sentence: str, length: int = 16) -> np.ndarray:
    ids = [1] + [VOCAB[p] for p in sentence.split()] + [2]
    return np.array(ids + [0] * (length - len(ids)), np.int32)


def words_of(ids) -> list[list[int]]:
    """The words of a sequence (lists of piece ids) between [CLS] and [SEP]."""
    ids = [int(i) for i in ids]
    assert ids[0] == 1, ids
    body = ids[1 : ids.index(2)]
    assert all(i == 0 for i in ids[ids.index(2) + 1 :]), ids  # padding only after [SEP]
    words: list[list[int]] = []
    for i in body:
        if PIECES[i].startswith("##") and words:
            words[-1].append(i)
        else:
            words.append([i])
    return words


SENTENCE = "good film , un ##real plot dull ##ish ##ly actor fun"
BATCH = np.stack([encode(SENTENCE)] * 256)
INDEX = jnp.arange(256)


def views(aug, seed=0, batch=BATCH, index=INDEX):
    return np.asarray(jax.jit(aug.__call__)(jax.random.PRNGKey(seed), jnp.asarray(batch), index))


def test_masking_masks_whole_words_with_one_mask_at_the_rate_asked():
    original = words_of(BATCH[0])
    masked = total = 0
    for row in views(toy(mask=0.3)):
        got = words_of(row)
        assert len(got) == len(original)  # one [MASK] per masked word, nothing dropped
        for before, after in zip(original, got, strict=True):
            assert after == before or after == [3]
            masked += after == [3]
            total += 1
    rate = masked / total
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / total), rate


def test_replacement_uses_neighbours_of_single_piece_words_only():
    original = words_of(BATCH[0])
    changed = 0
    for row in views(toy(replace=0.5)):
        for before, after in zip(original, words_of(row), strict=True):
            if after != before:
                changed += 1
                assert len(before) == 1 and before[0] in NEIGHBOURS  # never "un ##real"
                assert after[0] in NEIGHBOURS[before[0]]
    assert changed > 0


def test_ngram_sampling_keeps_a_contiguous_window_of_at_most_max_ngram_words():
    original = words_of(BATCH[0])
    lengths = set()
    for row in views(toy(ngram=1.0, max_ngram=3)):
        got = words_of(row)
        n = len(got)
        lengths.add(n)
        assert 1 <= n <= 3
        windows = [original[s : s + n] for s in range(len(original) - n + 1)]
        assert got in windows
    assert lengths == {1, 2, 3}


def test_original_views_and_determinism_per_example():
    aug = toy(mask=0.2, replace=0.2, ngram=0.25, original=1.0)
    np.testing.assert_array_equal(views(aug), BATCH)
    aug = toy(mask=0.2, replace=0.2, ngram=0.25)
    a = views(aug, seed=3)
    # The view of an example depends on the key and its index, not on the batch around it.
    b = views(aug, seed=3, batch=BATCH[::-1], index=INDEX[::-1])[::-1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, views(aug, seed=4))
    assert len({r.tobytes() for r in a}) > 100  # the examples' views differ from each other


def test_edge_cases_empty_and_full_sequences():
    aug = toy(mask=0.3, replace=0.3, ngram=0.5)
    empty = np.array([[1, 2, 0, 0]], np.int32)
    np.testing.assert_array_equal(views(aug, batch=empty, index=jnp.arange(1)), empty)
    full = encode("good film plot dull", length=6)[None]  # no padding at all
    for row in views(aug, batch=np.repeat(full, 64, 0), index=jnp.arange(64)):
        words_of(row)


def test_a_batch_cut_to_its_length_gets_the_same_views():
    # data.length_bucket trains on batches cut to their longest sequence; the teacher
    # cache labelled the full-width views, so the views must not depend on the width.
    aug = toy(mask=0.2, replace=0.2, ngram=0.25)
    wide = np.stack([encode(SENTENCE, length=48)] * 256)
    full = views(aug, seed=5, batch=wide)
    for width in (13, 16, 32):
        cut = views(aug, seed=5, batch=wide[:, :width])
        np.testing.assert_array_equal(cut, full[:, :width])
    assert (full[:, 16:] == 0).all()  # nothing was lost past the longest sequence
    assert aug.spec["draws"] == 2  # caches written with the old draws are refused


def test_word_neighbours_match_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(PIECES), 8)).astype(np.float32)
    table = word_neighbours(emb, VOCAB, 3)
    words = sorted(i for p, i in VOCAB.items() if p.isalpha() and p.islower())
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in range(len(PIECES)):
        if i not in words:
            assert list(table[i]) == [i, i, i]
            continue
        sims = sorted(((float(unit[i] @ unit[j]), j) for j in words if j != i), reverse=True)
        assert list(table[i]) == [j for _, j in sims[:3]]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mask", 1.5, "probability"),
        ("replace", -0.1, "probability"),
        ("mask", 0.7, r"mask \+ "),
        ("max_ngram", 0, "max_ngram must be > 0"),
    ],
)
def test_bad_token_augment_config_is_one_clear_error(key, value, message):
    from distill_jax.config import load_config
    from distill_jax.errors import ConfigError

    overrides = [f"student.train.token_augment.{key}={value!r}"]
    if key == "mask" and value == 0.7:
        overrides.append("student.train.token_augment.replace=0.5")
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
