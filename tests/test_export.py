"""`distill-jax export`: a finished run's model out of distill-jax, read back three ways
(our loader, the StableHLO with plain jax in a subprocess, and Hugging Face's layout
through our HF BERT converter), each compared with the run's own logits."""

import ast
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_overrides

from distill_jax.cli import main
from distill_jax.config import load_config
from distill_jax.errors import CheckpointError, ConfigError
from distill_jax.export import export, load_export
from distill_jax.train.loop import fit, load_teacher

BERT = {
    "name": "bert",
    "hidden_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 16,
    "max_position": 32,
    "head_input": "mean",
}


def _logits(module, variables, inputs):
    from distill_jax.export import inference_fn

    return np.asarray(jax.jit(inference_fn(module, variables))(inputs))


def _inputs(out, n, seed=0):
    with open(os.path.join(out, "config.json")) as f:
        section = json.load(f)["distill_jax"]
    rng = np.random.default_rng(seed)
    shape = (n, *section["input_shape"])
    if section["input_kind"] == "tokens":
        ids = rng.integers(1, 1000, shape).astype(np.int32)
        ids[:, shape[1] // 2 :] = 0  # padded tail
        return ids
    return rng.integers(0, 256, shape).astype(np.uint8)


def _predict(out, inputs, tmp_path):
    """Runs the export's predict.py in a fresh interpreter that cannot import
    distill_jax or flax (a stub on its path makes those imports fail)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    for name in ("distill_jax", "flax"):
        (blocker / f"{name}.py").write_text("raise ImportError('not available to predict.py')\n")
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_path, inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(blocker), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, os.path.join(out, "predict.py"), str(x_path), str(y_path)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return np.load(y_path), proc.stdout.split()


@pytest.fixture(scope="module")
def student_run(data_dir, tmp_path_factory):
    """A finished tiny CNN student (BatchNorm: params and batch_stats) on digits."""
    root = tmp_path_factory.mktemp("export")
    config = load_config(
        None,
        tiny_overrides(
            data_dir,
            **{"student.model": {"name": "cnn", "widths": [4, 8], "dense": 16, "batch_norm": True}},
        ),
    )
    fit(config, str(root / "student"), role="student")
    return str(root / "student")


def test_export_round_trips_and_runs_with_plain_jax(student_run, tmp_path):
    out = str(tmp_path / "out")
    card = export(student_run, out)
    assert set(card["files"]) == {
        "model.safetensors",
        "config.json",
        "README.md",
        "model.stablehlo",
        "predict.py",
    }
    run = load_teacher(student_run, what="run")
    module, variables = load_export(out)
    x = _inputs(out, 37)
    want = _logits(run.model, run.variables, x)
    np.testing.assert_array_equal(_logits(module, variables, x), want)
    # Names are the tree's paths; BatchNorm statistics are exported with the weights.
    from safetensors.numpy import load_file

    names = set(load_file(os.path.join(out, "model.safetensors")))
    assert any(n.startswith("batch_stats.") for n in names)
    assert all(n.startswith(("params.", "batch_stats.")) for n in names)
    # The StableHLO, run by predict.py with jax + NumPy only, for batch 1 and 37.
    for n in (1, 37):
        got, printed = _predict(out, x[:n], tmp_path)
        np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=1e-5)
        assert printed == [str(i) for i in want[:n].argmax(-1)]
    # predict.py imports nothing but the standard library, NumPy and jax.
    with open(os.path.join(out, "predict.py")) as f:
        tree = ast.parse(f.read())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported == {"json", "os", "sys", "numpy", "jax"}
    assert len(open(os.path.join(out, "predict.py")).read().splitlines()) <= 16
    # The model card states what was measured at export.
    readme = open(os.path.join(out, "README.md")).read()
    assert f"{100 * card['test']['accuracy']:.2f} %" in readme
    assert "none: trained alone" in readme and "`cnn`" in readme
    assert card["test"]["accuracy"] == pytest.approx(run_test_accuracy(student_run), abs=1e-9)


def run_test_accuracy(workdir):
    code = main(["evaluate", "--workdir", workdir])
    assert code == 0
    with open(os.path.join(workdir, "eval_test.json")) as f:
        return json.load(f)["accuracy"]


def test_int8_export_stores_int8_kernels_and_scales(student_run, tmp_path):
    from safetensors.numpy import load_file

    from distill_jax.compress.quantize import ptq

    out = str(tmp_path / "int8")
    export(student_run, out, int8=True, evaluate=False)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    qvalues = {n: t for n, t in tensors.items() if n.endswith(".qvalue")}
    assert qvalues and all(t.dtype == np.int8 for t in qvalues.values())
    for name in qvalues:
        assert tensors[name.removesuffix(".qvalue") + ".scale"].dtype == np.float32
    run = load_teacher(student_run, what="run")
    x = _inputs(out, 9)
    qmodel, qvars = ptq(run.model, run.variables, x.astype(np.float32))
    want = _logits(qmodel, qvars, x)
    module, variables = load_export(out)
    np.testing.assert_array_equal(_logits(module, variables, x), want)
    got, _ = _predict(out, x, tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    export(student_run, str(tmp_path / "float"), int8=False, evaluate=False)
    size = lambda d: os.path.getsize(os.path.join(d, "model.safetensors"))  # noqa: E731
    assert size(out) < size(str(tmp_path / "float"))  # headers dominate at this size


def test_bert_export_is_a_hugging_face_bert(data_dir, tmp_path):
    from safetensors.numpy import load_file

    from distill_jax.models import hf_bert

    overrides = [
        f"data.data_dir={data_dir!r}",
        "data.name='stdlib_docstrings/len32'",
        "data.train_split='train[:64]'",
        "data.validation_split='validation[:16]'",
        "data.test_split='test[:16]'",
        "data.eval_batch_size=16",
        f"student.model={BERT!r}",
        "student.train.epochs=1",
        "student.train.batch_size=16",
        "eval.latency_batch_size=4",
        "log.progress=False",
    ]
    workdir = str(tmp_path / "bert")
    fit(load_config(None, overrides), workdir, role="student")
    out = str(tmp_path / "out")
    card = export(workdir, out)
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert name in card["files"], name
    # Hugging Face names and config: our HF reader (the teacher's path) accepts them.
    tensors = load_file(os.path.join(out, "model.safetensors"))
    assert "bert.encoder.layer.1.attention.self.query.weight" in tensors
    assert tensors["classifier.weight"].shape == (16, 8)  # 16 module families x width 8
    cfg = hf_bert.read_config.__wrapped__(out)
    assert (cfg["num_layers"], cfg["hidden_size"], cfg["num_heads"]) == (2, 8, 2)
    hf_bert.checked_tensors(tensors, cfg)  # raises on a missing / extra / mis-shaped one
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "bert" and len(config["id2label"]) == 16
    # Same logits from the export as from the run, through our loader and predict.py.
    run = load_teacher(workdir, what="run")
    module, variables = load_export(out)
    x = _inputs(out, 5)
    want = _logits(run.model, run.variables, x)
    np.testing.assert_allclose(_logits(module, variables, x), want, rtol=1e-6, atol=1e-6)
    got, _ = _predict(out, x, tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # sentence-transformers' head: the classifier, transposed, identity activation.
    dense = load_file(os.path.join(out, "2_Dense", "model.safetensors"))
    np.testing.assert_array_equal(dense["linear.weight"], tensors["classifier.weight"])


def test_export_refusals_are_one_line_and_write_nothing(student_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists; choose another directory or pass --overwrite"):
        export(student_run, str(out))
    assert os.listdir(out) == ["keep.txt"]
    # --overwrite replaces it, atomically (no temporary directory left behind).
    export(student_run, str(out), overwrite=True, evaluate=False)
    assert "keep.txt" not in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left
    # Not a run.
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no distill-jax run"):
        export(str(tmp_path / "empty"), str(tmp_path / "o2"))
    # An orchestrator's directory: names the models in it.
    with pytest.raises(CheckpointError, match="export one of them: .*student"):
        export(os.path.dirname(student_run), str(tmp_path / "o3"))
    # The CLI: one line, exit code 2, nothing written.
    capsys.readouterr()
    code = main(["export", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o4")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds no distill-jax run" in err
    assert not (tmp_path / "o4").exists()


def test_unfinished_and_damaged_runs_are_refused(student_run, tmp_path):
    import shutil

    from distill_jax.train.checkpointing import Checkpointer

    # Unfinished: the final checkpoint removed, an earlier one remains.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(student_run, unfinished)
    ckpt = Checkpointer(str(unfinished / "checkpoints"), read_only=True)
    steps = ckpt.all_steps()
    shutil.rmtree(unfinished / "checkpoints" / str(steps[-1]))
    with pytest.raises(CheckpointError, match=f"not finished: .*step {steps[-2]} of {steps[-1]}"):
        export(str(unfinished), str(tmp_path / "o1"))
    # Damaged: a bit flipped in the final checkpoint's largest file.
    damaged = tmp_path / "damaged"
    shutil.copytree(student_run, damaged)
    step_dir = damaged / "checkpoints" / str(steps[-1])
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CheckpointError, match=f"checkpoints/{steps[-1]} is damaged"):
        export(str(damaged), str(tmp_path / "o2"))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bert_exports_give_hugging_face_s_logits(tmp_path):
    """transformers (pooler head) and sentence-transformers (mean pooling + head) loaded
    these exports and computed the logits in tests/fixtures/export_reference.npz
    (tests/fixtures/make_export_reference.py); the same exports, written again here,
    give them through our loader."""
    from distill_jax.config import import_file

    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    script = import_file(os.path.join(fixtures, "make_export_reference.py"))
    reference = np.load(os.path.join(fixtures, "export_reference.npz"))
    np.testing.assert_array_equal(reference["input_ids"], script.INPUT_IDS)
    paths = script.write_exports(str(tmp_path))
    for kind in ("pooled", "mean"):
        module, variables = load_export(paths[kind])
        got = _logits(module, variables, script.INPUT_IDS)
        np.testing.assert_allclose(got, reference[f"{kind}_logits"], rtol=1e-4, atol=2e-5)
        assert np.ptp(reference[f"{kind}_logits"]) > 0.1  # not a degenerate reference
    # The exported StableHLO, run by predict.py without distill_jax, gives them too.
    got, _ = _predict(paths["pooled"], script.INPUT_IDS, tmp_path)
    np.testing.assert_allclose(got, reference["pooled_logits"], rtol=1e-4, atol=2e-5)


def test_the_model_card_states_the_objective_that_trained_the_student(
    data_dir, student_run, tmp_path
):
    """Default terms: alpha * CE + (1 - alpha) * KD; explicit terms: their weights."""
    teacher = load_teacher(student_run, what="teacher")
    for losses, expected in (
        ({}, "alpha = 0.3 x task loss + 0.7 x kd, T = 2"),
        ({"kd": {"weight": 0.5}}, "alpha = 0.3 x task loss + 0.5 x kd, T = 2"),
    ):
        config = load_config(
            None,
            tiny_overrides(
                data_dir,
                **{
                    "student.model": {"name": "mlp", "hidden": [8]},
                    "student.train.epochs": 1,
                    "distill.alpha": 0.3,
                    "distill.temperature": 2.0,
                    "distill.losses": losses,
                },
            ),
        )
        run = str(tmp_path / f"kd{len(losses)}")
        fit(config, run, role="student", teacher=teacher)
        export(run, str(tmp_path / f"out{len(losses)}"), evaluate=False)
        assert expected in open(tmp_path / f"out{len(losses)}" / "README.md").read()
