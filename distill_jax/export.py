"""`distill-jax export`: a trained model taken out of distill-jax.

`export(workdir, out)` writes one directory that other tools read without this package:

```
model.safetensors   the inference variables (params, batch_stats): float32, or int8
                    kernels with their float32 scales (int8)
config.json         architecture, inputs and labels (its "distill_jax" section); for
                    bert models also Hugging Face's BertConfig fields
README.md           the model card: teacher, data, method, test metrics, size, latency
model.stablehlo     jax.export of the inference function (stored inputs -> logits),
                    batch dimension symbolic, weights inside
predict.py          runs model.stablehlo with plain jax and NumPy
tokenizer.json ...  the tokenizer of a token-id model's data
modules.json, 1_Pooling/, 2_Dense/
                    sentence-transformers' layout of a mean-pooled bert (output: logits)
```

**Names in `model.safetensors`.** A `bert` model is written in Hugging Face's BERT layout
(`embeddings.*`, `encoder.layer.{i}.*`, `pooler.*`, the head as `classifier.*`), the
inverse of `models/hf_bert.py`'s conversion, so `transformers` loads it:
`AutoModelForSequenceClassification` gives the logits of a model whose head reads the
pooler (`head_input: pooled`), `SentenceTransformer` those of a mean-pooled one
(`head_input: mean`). Every other model's tensors are named by their path in the variables
tree joined with dots (`params.conv1.kernel`, `batch_stats.bn1.mean`; an int8 kernel is
`params.dense1.kernel.array.qvalue` (int8) and `....scale` (float32), qwix's layout).

**The function.** `model.stablehlo` takes the inputs as the dataset stores them (uint8
pixels `(B, H, W, C)`, scaled to [0, 1] inside as the evaluator does; int32 token ids
`(B, L)`, 0 = padding) and returns float32 logits `(B, classes)`, for any `B`. It is
lowered for CPU and, where this jax can, CUDA and TPU too.

`load_export(out)` reads the directory back into `(module, variables)`: the tests compare
its logits, and those of `model.stablehlo`, with the run's.

Refused before anything is written, in one line: a directory that holds no finished run
(no checkpoint, or one before the last step), a damaged checkpoint, an existing `out`
without `overwrite`. The export is assembled in a temporary directory beside `out` and
renamed into place: an interrupted export leaves no half-written `out`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.report import replace_dir

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STABLEHLO_FILE = "model.stablehlo"
PREDICT_FILE = "predict.py"
CARD_FILE = "README.md"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
FORMAT_VERSION = 1
# Model config keys that only say where the first weights came from: the export holds them.
_INIT_KEYS = ("init_from", "init_layers", "init_embeddings")

PREDICT = '''\
"""Runs model.stablehlo with plain jax and NumPy: python predict.py INPUTS.npy [LOGITS.npy]
INPUTS: an array (N, *input_shape) of input_dtype (config.json's "distill_jax" section)."""
import json, os, sys
import numpy as np
from jax import export
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "model.stablehlo"), "rb") as f:
    model = export.deserialize(bytearray(f.read()))
with open(os.path.join(here, "config.json")) as f:
    labels = json.load(f)["distill_jax"]["labels"]
logits = np.asarray(model.call(np.load(sys.argv[1])))
if len(sys.argv) > 2:
    np.save(sys.argv[2], logits)
print("\\n".join(labels[i] for i in logits.argmax(-1)))
'''


# ----------------------------------------------------------------------------- naming


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    raise TypeError(f"unsupported pytree key {key!r}")


def named_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Every leaf of a variables tree as a NumPy array, named by its path (dot-joined)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(_key_name(k) for k in path): np.asarray(leaf) for path, leaf in leaves}


def from_named_arrays(template: Any, tensors: dict[str, np.ndarray], source: str) -> Any:
    """The tree of `template` (arrays or ShapeDtypeStructs) filled from `tensors`.

    Raises:
        CheckpointError: a missing, unexpected, mis-shaped or mis-typed tensor (named).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [".".join(_key_name(k) for k in path) for path, _ in leaves]
    unexpected = sorted(set(tensors) - set(names))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor '{unexpected[0]}'")
    out = []
    for name, (_, want) in zip(names, leaves, strict=True):
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor '{name}' {tuple(want.shape)}")
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            raise CheckpointError(
                f"{source}: tensor '{name}' is {got.dtype}{tuple(got.shape)}, the model "
                f"expects {np.dtype(want.dtype)}{tuple(want.shape)}"
            )
        out.append(got)
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------- the run


def finished_run(workdir: str, which: str = "latest", member: int | None = None):
    """The trained model of a finished run: `(Teacher, spec, metadata)`.

    Raises:
        CheckpointError: no run, an unfinished one, or a damaged checkpoint (one line).
    """
    from distill_jax.train.checkpointing import Checkpointer, has_checkpoint
    from distill_jax.train.loop import CONFIG_FILE as RUN_CONFIG
    from distill_jax.train.loop import load_teacher, read_metrics
    from distill_jax.train.workdir import read_marker

    workdir = os.path.abspath(workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isfile(os.path.join(workdir, RUN_CONFIG)) or not has_checkpoint(ckpt_dir):
        marker = read_marker(workdir) if os.path.isdir(workdir) else None
        models = _model_runs(workdir) if os.path.isdir(workdir) else []
        if marker is not None or models:
            listed = ", ".join(os.path.relpath(m) for m in models[:6]) or "none finished yet"
            raise CheckpointError(
                f"{workdir} holds several trained models; export one of them: {listed}"
            )
        raise CheckpointError(
            f"{workdir} holds no distill-jax run (expected {RUN_CONFIG} and checkpoints/ "
            f"written by `distill-jax train`, `distill` or `run`)"
        )
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    step = ckpt.best_step() if which == "best" else ckpt.latest_step()
    latest = ckpt.latest_step()
    _, _, metadata, problems = ckpt.first_intact([latest])
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt_dir}/{latest} is damaged ({problems[latest]}); restore its "
            f"files or rerun the command that wrote it"
        )
    total = metadata.get("total_steps")
    if total is None:  # checkpoints written before total_steps was recorded
        train = [r for r in read_metrics(workdir) if r.get("split") == "train" and r["epoch"]]
        epochs = metadata.get("config", {}).get("train", {}).get("epochs")
        if train and epochs:
            total = round(epochs * train[-1]["step"] / train[-1]["epoch"])
    if total is not None and latest < total:
        raise CheckpointError(
            f"{workdir} is not finished: its last checkpoint is step {latest} of {total}; "
            f"run the same command again to finish it, then export"
        )
    if which == "best" and step != latest:
        _, _, _, problems = ckpt.first_intact([step])
        if problems:
            raise CheckpointError(
                f"checkpoint {ckpt_dir}/{step} (the best) is damaged ({problems[step]})"
            )
    teacher = load_teacher(workdir, which, what="run", member=member)
    return teacher, metadata["config"], metadata


def _model_runs(directory: str) -> list[str]:
    """The model run directories under an orchestrator's directory."""
    found = []
    for root, dirs, files in os.walk(directory):
        if "config.json" in files and "checkpoints" in dirs:
            found.append(root)
            dirs[:] = []
        dirs.sort()
    return sorted(found)


# ----------------------------------------------------------------------------- export


def export(
    workdir: str,
    out: str,
    *,
    which: str = "latest",
    member: int | None = None,
    int8: bool | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    data_dir: str | None = None,
    say=None,
) -> dict[str, Any]:
    """Exports the model of a finished run (see the module docstring).

    Args:
        workdir: a model's run directory (`train`, `distill`, or one model of `run`,
            `sweep`, `compress`).
        out: the directory to write (must not exist, unless `overwrite`).
        which: `latest` (the finished model) or `best` (by validation accuracy).
        member: which student of a vmapped run.
        int8: export int8 kernels (qwix PTQ, `compress/quantize.py`); default: a QAT
            run (`compress`'s `qat_kd`) is exported int8, others float32.
        overwrite: replace an existing `out`.
        evaluate: measure test metrics and latency for the model card.
        data_dir: where the run's dataset is prepared (as `distill-jax evaluate`).
        say: progress lines (default: stderr).

    Returns:
        What the model card says: `{"files": [...], "test": {...}, ...}`.
    """
    say = say or (lambda m: print(f"distill-jax: {m}", file=sys.stderr))
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"--out {out} exists; choose another directory or pass --overwrite")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file, not a directory")
    if os.path.abspath(workdir) == out or out.startswith(os.path.abspath(workdir) + os.sep):
        raise ConfigError(f"--out {out} is inside the run {workdir}; choose another directory")
    which_ok = ("latest", "best")
    if which not in which_ok:
        raise ConfigError(f"checkpoint must be one of {which_ok}, got {which!r}")
    run, spec, metadata = finished_run(workdir, which, member)
    if int8 is None:
        int8 = bool((spec.get("compress") or {}).get("qat"))
    num_classes = int(metadata["num_classes"])
    input_shape = tuple(int(d) for d in metadata["image_shape"])
    model_cfg = {k: v for k, v in run.identity["model"].items() if k not in _INIT_KEYS}
    from distill_jax.models import create_model

    model = create_model(model_cfg, num_classes)
    tokens = len(input_shape) == 1  # token ids (L,); images are (H, W, C)
    variables = jax.tree.map(np.asarray, run.variables)
    if int8:
        from distill_jax.compress.quantize import ptq

        example = np.zeros((1, *input_shape), np.float32 if not tokens else np.int32)
        model, variables = ptq(model, variables, example)
        variables = jax.tree.map(np.asarray, variables)
    info = _data_info(spec, data_dir)
    labels = list(info.class_names) if info is not None and info.class_names else None
    section = describe(
        model_cfg,
        num_classes,
        input_shape,
        labels=labels,
        int8=int8,
        source={
            "workdir": os.path.abspath(workdir),
            "step": run.identity["step"],
            "checkpoint": which,
            **({} if member is None else {"member": member}),
        },
    )
    card = {"spec": spec}
    if evaluate:
        say(f"evaluating {workdir} on its test split")
        card["test"] = _evaluate(model, variables, spec, data_dir, input_shape)
    card = write_export(out, model, variables, section, card, say=say)
    say(f"exported {workdir} to {out}: {', '.join(card['files'])}")
    return {k: v for k, v in card.items() if k != "spec"}


def describe(
    model_cfg: dict[str, Any],
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    labels: list[str] | None = None,
    int8: bool = False,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `distill_jax` section of an export's config.json: what `load_export` and
    `predict.py` need (architecture, inputs, labels, layout)."""
    tokens = len(input_shape) == 1  # token ids (L,); images are (H, W, C)
    return {
        "format_version": FORMAT_VERSION,
        "model": {k: v for k, v in model_cfg.items() if k not in _INIT_KEYS},
        "num_classes": num_classes,
        "labels": labels or [str(i) for i in range(num_classes)],
        "input_shape": list(input_shape),
        "input_dtype": "int32" if tokens else "uint8",
        "input_kind": "tokens" if tokens else "image",
        "layout": "hf_bert" if model_cfg["name"] == "bert" and not int8 else "flax",
        "int8": int8,
        "source": source or {},
    }


def write_export(
    out: str, model, variables, section: dict[str, Any], card: dict[str, Any], say=None
) -> dict[str, Any]:
    """Writes an export directory (see the module docstring) for `model` and its
    inference `variables` (int8 ones if `section["int8"]`), atomically: assembled in a
    temporary directory beside `out`, then renamed over it.

    Args:
        section: `describe(...)`.
        card: what the model card states besides the section: `spec` (the run's spec,
            may be empty) and `test` (measured metrics), both optional.

    Returns:
        `card` with `section`, `files`, `weights_bytes` and `platforms` added.
    """
    say = say or (lambda m: None)
    card = {**card, "section": section}
    input_shape = tuple(section["input_shape"])
    input_dtype = np.dtype(section["input_dtype"])
    out = os.path.abspath(out)
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
    try:
        _write_weights(tmp, model, variables, section["layout"], section)
        say(f"lowering the inference function to StableHLO ({STABLEHLO_FILE})")
        card["platforms"] = _write_stablehlo(tmp, model, variables, input_shape, input_dtype)
        with open(os.path.join(tmp, PREDICT_FILE), "w") as f:
            f.write(PREDICT)
        if section["input_kind"] == "tokens":
            _copy_tokenizer(tmp)
        card["weights_bytes"] = os.path.getsize(os.path.join(tmp, WEIGHTS_FILE))
        card["files"] = sorted([*_listing(tmp), CARD_FILE])
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            f.write(model_card(card))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def _data_info(spec: dict[str, Any], data_dir: str | None):
    from distill_jax.data import get_info

    try:
        return get_info(spec["data"]["name"], data_dir or spec["data"].get("data_dir"), False)
    except Exception:  # noqa: BLE001 (labels then are class indices)
        return None


def _evaluate(model, variables, spec, data_dir, input_shape) -> dict[str, Any]:
    from distill_jax.config import from_dict
    from distill_jax.evaluation import Evaluator, model_summary
    from distill_jax.train.inputs import load_run_split

    split = load_run_split(spec, "test", data_dir)
    batch_size = from_dict({"data": spec["data"]}).data.eval_batch_size
    from distill_jax.tasks import task_of

    task = task_of(split.info)  # classification, a tag per token, or next-token prediction
    metrics = Evaluator(model, task=task, batch_size=batch_size)(variables, split)
    metrics.update(model_summary(model, variables, input_shape, 64, task))
    metrics["examples"] = len(split)
    return metrics


def _write_weights(tmp, model, variables, layout, section) -> None:
    from safetensors.numpy import save_file

    if layout == "hf_bert":
        from distill_jax.models import hf_bert

        tensors = hf_bert.from_flax(variables["params"], model.num_layers)
        config = {**hf_bert.hf_config(model, section["labels"]), "distill_jax": section}
        if model.head_input == "mean":
            _write_sentence_transformers(tmp, model, variables["params"], section)
    else:
        tensors = named_arrays(variables)
        config = {"distill_jax": section}
    metadata = {"format": "pt" if layout == "hf_bert" else "flax", "distill_jax": "1"}
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        _path(tmp, WEIGHTS_FILE),
        metadata=metadata,
    )
    with open(_path(tmp, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)


def _write_sentence_transformers(tmp, model, params, section) -> None:
    """sentence-transformers' layout: BERT -> mean pooling -> the head as an identity-
    activation Dense, so `SentenceTransformer(out).encode(...)` returns the logits."""
    from safetensors.numpy import save_file

    D, C = model.hidden_size, section["num_classes"]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    pooling = {
        "word_embedding_dimension": D,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    dense = {
        "in_features": D,
        "out_features": C,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {
            "max_seq_length": section["input_shape"][0],
            "do_lower_case": False,
        },
        "1_Pooling/config.json": pooling,
        "2_Dense/config.json": dense,
    }
    for name, content in files.items():
        with open(_path(tmp, name), "w") as f:
            json.dump(content, f, indent=2)
    head = params["head"]
    save_file(
        {
            "linear.weight": np.ascontiguousarray(np.asarray(head["kernel"]).T),
            "linear.bias": np.asarray(head["bias"]),
        },
        _path(tmp, "2_Dense/model.safetensors"),
    )


def _path(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def inference_fn(model, variables):
    """Stored inputs -> float32 logits (pixels scaled as the evaluator scales them)."""
    from distill_jax.data.augment import to_float

    def logits(inputs):
        out, _ = model.apply(variables, to_float(inputs), train=False)
        return out.astype(jnp.float32)

    return logits


def _write_stablehlo(tmp, model, variables, input_shape, input_dtype) -> list[str]:
    from jax import export as jax_export

    (batch,) = jax_export.symbolic_shape("batch")
    arg = jax.ShapeDtypeStruct((batch, *input_shape), input_dtype)
    fn = jax.jit(inference_fn(model, variables))
    exported = None
    for platforms in (("cpu", "cuda", "tpu"), ("cpu", "cuda"), ("cpu",)):
        try:
            exported = jax_export.export(fn, platforms=platforms)(arg)
            break
        except Exception:  # noqa: BLE001 (this jax cannot lower for one of them)
            continue
    if exported is None:
        exported = jax_export.export(fn)(arg)  # raises the real error
    with open(_path(tmp, STABLEHLO_FILE), "wb") as f:
        f.write(exported.serialize())
    return list(exported.platforms)


def _copy_tokenizer(tmp) -> None:
    """The tokenizer files of the text datasets' tokenizer (all of ours use one)."""
    from distill_jax.data.text import DEFAULT_TOKENIZER
    from distill_jax.tokenizer import resolve_checkpoint_dir

    source = resolve_checkpoint_dir(DEFAULT_TOKENIZER)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, _path(tmp, name))


def _listing(directory: str) -> list[str]:
    out = []
    for root, _, files in os.walk(directory):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), directory))
    return sorted(out)


# ----------------------------------------------------------------------------- model card


def model_card(card: dict[str, Any]) -> str:
    """The export's README.md."""
    spec, section = card.get("spec") or {}, card["section"]
    model = section["model"]
    data = spec.get("data") or {}
    source = section.get("source") or {}
    teacher = spec.get("teacher")
    distill = spec.get("distill")
    if teacher:
        t = teacher.get("model", {})
        teacher_line = (
            f"`{t.get('name')}` ({_kwargs(t)}), {teacher.get('workdir')} step {teacher.get('step')}"
        )
    elif spec.get("teacher_cache"):
        teacher_line = (
            f"a teacher cache ({spec['teacher_cache'].get('teacher', {}).get('workdir', '?')})"
        )
    else:
        teacher_line = "none: trained alone"
    if distill and (teacher or spec.get("teacher_cache")):
        # No terms: Hinton's (1 - alpha) * KD (objective.py).
        losses = distill.get("losses") or {"kd": {"weight": 1.0 - distill["alpha"]}}
        method = (
            f"alpha = {distill['alpha']:g} x task loss + "
            + " + ".join(f"{v.get('weight', 1.0):g} x {k}" for k, v in losses.items())
            + f", T = {distill['temperature']:g}"
        )
    else:
        method = "cross-entropy on the labels"
    rows = [
        ("model", f"`{model['name']}` ({_kwargs(model)})"),
        (
            "weights",
            f"{'int8 kernels + float32 scales' if section['int8'] else 'float32'}, "
            f"{card['weights_bytes'] / 1e6:.2f} MB ({WEIGHTS_FILE})",
        ),
        ("teacher", teacher_line),
        (
            "data",
            f"`{data['name']}` (train split `{data.get('train_split', 'train')}`)"
            if data
            else "not recorded",
        ),
        ("method", method),
        ("training", _training(spec.get("train", {}))),
        (
            "source",
            f"{source['workdir']}, step {source['step']} ({source['checkpoint']} checkpoint)"
            if source
            else "not a training run",
        ),
    ]
    test = card.get("test")
    if test:
        rows += [
            ("test accuracy", f"{100 * test['accuracy']:.2f} % of {test['examples']} examples"),
            ("test NLL / ECE", f"{test['nll']:.4f} / {test['ece']:.4f}"),
            ("parameters", f"{test['params']:,}"),
            (
                "latency (this machine, at export)",
                f"{test['latency_ms_batch1']:.3f} ms at batch 1, "
                f"{test['latency_ms_per_example']:.4f} ms/example at batch 64",
            ),
        ]
    else:
        rows.append(("test metrics", "not measured (exported with evaluate=False)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    shape = ", ".join(str(d) for d in section["input_shape"])
    lines = [
        f"# {model['name']}, exported by distill-jax",
        "",
        "| | |",
        "|---|---|",
        table,
        "",
        "## Inputs and outputs",
        "",
        f"Inputs: `{section['input_dtype']}` arrays of shape `(batch, {shape})` "
        + (
            "(token ids of `tokenizer.json`, `[CLS] text [SEP]`, right-padded with 0)."
            if section["input_kind"] == "tokens"
            else "(pixels 0-255; scaled to [0, 1] inside)."
        )
        + f" Outputs: float32 logits over {section['num_classes']} classes "
        f"({', '.join(section['labels'][:10])}{', ...' if section['num_classes'] > 10 else ''}).",
        "",
        "## Use it",
        "",
        f"* Without any ML framework but jax: `python predict.py inputs.npy` runs "
        f"`{STABLEHLO_FILE}` (lowered for {', '.join(card['platforms'])}).",
        "* With distill-jax: `module, variables = distill_jax.export.load_export(DIR)`, then "
        "`module.apply(variables, inputs, train=False)`.",
    ]
    if section["layout"] == "hf_bert":
        if model.get("head_input") == "tokens":
            lines.append(
                "* With transformers: `AutoModelForTokenClassification.from_pretrained(DIR)` "
                "should give the same per-token logits (its architecture; not yet checked "
                "against transformers for a tagger)."
            )
        elif model.get("head_input", "pooled") == "pooled":
            lines.append(
                "* With transformers: `AutoModelForSequenceClassification.from_pretrained(DIR)` "
                "gives the same logits."
            )
        else:
            lines.append(
                "* With sentence-transformers: `SentenceTransformer(DIR).encode(texts)` gives "
                "the logits (mean pooling, then the head); `AutoModel.from_pretrained(DIR)` "
                "gives the encoder."
            )
    return "\n".join(lines) + "\n"


def _kwargs(cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name") or "defaults"


def _training(train: dict[str, Any]) -> str:
    keys = ("optimizer", "learning_rate", "schedule", "batch_size", "epochs")
    return ", ".join(f"{k} {train[k]}" for k in keys if k in train)


# ----------------------------------------------------------------------------- loading


def load_export(directory: str):
    """`(module, variables)` of an export (float32, or int8 as qwix PTQ variables).

    Raises:
        CheckpointError: not an export, or tensors that do not fit its config.
    """
    from safetensors.numpy import load_file

    from distill_jax.models import create_model

    config_path = os.path.join(directory, CONFIG_FILE)
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    try:
        with open(config_path) as f:
            section = json.load(f)["distill_jax"]
        tensors = load_file(weights_path)
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{directory} is not a distill-jax export ({e})") from None
    model = create_model(section["model"], section["num_classes"])
    example = np.zeros((1, *section["input_shape"]), np.float32)
    if section["input_kind"] == "tokens":
        example = example.astype(np.int32)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example, train=False))
    template = dict(template)
    if section["layout"] == "hf_bert":
        from distill_jax.models import hf_bert

        params = hf_bert.to_flax_with_head(tensors, directory)
        tensors = named_arrays({"params": params})
    if section["int8"]:
        from distill_jax.compress.quantize import ptq

        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
        model, qvars = ptq(model, zeros, example)
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), qvars)
    variables = from_named_arrays(template, tensors, weights_path)
    return model, variables
