"""Misuse that must never lose data: workdir ownership and a safe `--overwrite`.

Each case starts from a finished tiny `train` run and goes through the real CLI entry
point; every refusal is one line on stderr, exit code 2, and leaves every directory
byte-for-byte as it was.
"""

import json
import os

import pytest
from conftest import tiny_overrides

from distill_jax.cli import main
from distill_jax.train.checkpointing import step_digest
from distill_jax.train.teacher_cache import RECORDS_FILE
from distill_jax.train.workdir import MARKER_FILE, read_marker


def _cli(data_dir, *args, **overrides):
    return main([*args, *(f"--config.{o}" for o in tiny_overrides(data_dir, **overrides))])


def _snapshot(root) -> dict[str, str]:
    """Every file below `root` with the SHA-256 of its bytes."""
    return step_digest(str(root))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, data_dir):
    """A finished tiny `train` run (never modified by the tests: they copy it)."""
    workdir = tmp_path_factory.mktemp("misuse") / "teacher"
    assert _cli(data_dir, "train", "--workdir", str(workdir)) == 0
    return workdir


def _refused(capsys, code, *phrases):
    """Exit code 2 and one error line (a `note:` line about defaults may precede it)."""
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("distill-jax: error: ")]
    assert code == 2, text
    assert len(err) == 1 and "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in err[0], err[0]


def test_a_train_run_is_marked_with_its_kind(teacher_run):
    marker = read_marker(str(teacher_run))
    assert marker["kind"] == "train" and len(marker["config_sha256"]) == 64


def test_a_directory_distill_jax_did_not_write_is_never_overwritten(data_dir, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.json").write_text('{"hidden_size": 768}')
    before = _snapshot(project)
    for extra in ([], ["--overwrite"]):  # --overwrite never replaces a user's file either
        code = _cli(data_dir, "train", "--workdir", str(project), *extra)
        _refused(capsys, code, "was not written by distill-jax", "config.json")
        assert _snapshot(project) == before
    # Unrelated files: refused without --overwrite; with it the run is written beside them.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    _refused(capsys, _cli(data_dir, "train", "--workdir", str(notes)), "--overwrite")
    assert _cli(data_dir, "train", "--workdir", str(notes), "--overwrite") == 0
    assert (notes / "todo.txt").read_text() == "mine" and (notes / MARKER_FILE).exists()


def test_run_and_train_never_write_into_each_others_workdirs(
    data_dir, tmp_path, capsys, teacher_run
):
    before = _snapshot(teacher_run)
    code = _cli(data_dir, "run", "--workdir", str(teacher_run), "--overwrite")
    _refused(capsys, code, "`distill-jax train/distill`", "`run` would overwrite it")
    assert _snapshot(teacher_run) == before
    # A `run` root (marked at its start) refuses `train`.
    root = tmp_path / "root"
    root.mkdir()
    (root / MARKER_FILE).write_text(json.dumps({"kind": "run", "config_sha256": "0"}))
    code = _cli(data_dir, "train", "--workdir", str(root), "--overwrite")
    _refused(capsys, code, "`distill-jax run`", "`train/distill` would overwrite it")
    assert os.listdir(root) == [MARKER_FILE]


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_overwrite_never_deletes_the_teacher_being_distilled_from(
    data_dir, tmp_path, capsys, teacher_run, where
):
    import shutil

    teacher = tmp_path / "t"
    shutil.copytree(teacher_run, teacher)
    before = _snapshot(teacher)
    workdir = {"same": teacher, "inside": teacher / "student", "parent": tmp_path}[where]
    code = _cli(
        data_dir,
        "distill",
        "--workdir",
        str(workdir),
        "--teacher",
        str(teacher),
        "--overwrite",
    )
    _refused(capsys, code, "--teacher", "overwrite what it reads")
    assert _snapshot(teacher) == before


def test_a_workdir_path_that_is_a_file_is_one_line(data_dir, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    _refused(capsys, _cli(data_dir, "train", "--workdir", str(path)), "is a file")
    assert path.read_text() == "x"


# --------------------------------------------------------------------------------------
# Every bad input: one line, exit 2, nothing written. One case per class of cause.
# --------------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return str(path)


def _bad_configs(tmp_path):
    """(label, extra CLI args) of config files and overrides that must be refused."""
    return [
        (
            "get_config returns a list",
            ["--config", _write(tmp_path / "l.py", "def get_config():\n    return [1]\n")],
            "must give a dict",
        ),
        (
            "get_config returns None",
            ["--config", _write(tmp_path / "n.py", "def get_config():\n    return None\n")],
            "must give a dict",
        ),
        (
            "a YAML config",
            ["--config", _write(tmp_path / "c.yaml", "seed: 1\n")],
            "use a Python file",
        ),
        (
            "a JSON config that is not JSON",
            ["--config", _write(tmp_path / "c.json", "{seed: 1")],
            "is not valid JSON",
        ),
        (
            "NaN temperature (JSON)",
            ["--config", _write(tmp_path / "t.json", '{"distill": {"temperature": NaN}}')],
            "distill.temperature must be > 0",
        ),
        (
            "NaN loss weight (JSON)",
            [
                "--config",
                _write(tmp_path / "w.json", '{"distill": {"losses": {"kd": {"weight": NaN}}}}'),
            ],
            "weight must be a number >= 0",
        ),
        (
            "hidden sizes as a string",
            ["--config.teacher.model={'name': 'mlp', 'hidden': '32'}"],
            "must be a list of integers",
        ),
        (
            "negative hidden size",
            ["--config.teacher.model={'name': 'mlp', 'hidden': [-4]}"],
            "must be a list of integers >= 1",
        ),
        (
            "dropout of 1",
            ["--config.teacher.model={'name': 'mlp', 'dropout': 1.0}"],
            "dropout rate",
        ),
        (
            "features as a string",
            ["--config.distill.losses={'fitnet': {'weight': 1.0, 'student_features': 'hidden1'}}"],
            "must be a list",
        ),
        (
            "override without '='",
            ["--config.teacher.train.epochs", "2"],
            "--config.teacher.train.epochs=2",
        ),
    ]


def test_bad_configs_are_one_line_and_write_nothing(data_dir, tmp_path, capsys):
    for label, extra, phrase in _bad_configs(tmp_path):
        workdir = tmp_path / "w"
        code = main(["train", "--workdir", str(workdir), "--data_dir", data_dir, *extra])
        text = capsys.readouterr().err
        err = [x for x in text.splitlines() if x.startswith("distill-jax: error: ")]
        assert code == 2 and len(err) == 1 and phrase in err[0], (label, text)
        assert "Traceback" not in text, label
        assert not workdir.exists(), label


def test_a_config_whose_code_raises_names_the_file(data_dir, tmp_path, capsys):
    path = _write(tmp_path / "boom.py", "def get_config():\n    return 1 / 0\n")
    code = main(["train", "--workdir", str(tmp_path / "w"), "--config", path])
    err = capsys.readouterr().err
    assert code == 2 and "ZeroDivisionError" in err  # the user's own traceback
    assert err.strip().splitlines()[-1] == (
        f"distill-jax: error: config file {path} raised ZeroDivisionError: division by zero"
    )


def test_zero_students_or_seeds_are_refused_not_ignored(data_dir, tmp_path, capsys):
    code = _cli(data_dir, "distill", "--workdir", str(tmp_path / "s"), "--vmap_students", "0")
    _refused(capsys, code, "vmap.students must be > 0")
    code = _cli(data_dir, "run", "--workdir", str(tmp_path / "r"), "--seeds", "0")
    _refused(capsys, code, "--seeds must be >= 1")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def test_damaged_inputs_are_one_line(data_dir, tmp_path, capsys, teacher_run):
    import shutil

    # A teacher whose config.json is not JSON, or truncated.
    for label, text in (("not JSON", "hello"), ("truncated", '{"model": {"name": "ml')):
        teacher = tmp_path / f"t_{label[:3]}"
        shutil.copytree(teacher_run, teacher)
        (teacher / "config.json").write_text(text)
        code = _cli(
            data_dir, "distill", "--workdir", str(tmp_path / "s"), "--teacher", str(teacher)
        )
        _refused(capsys, code, "is not a distill-jax run config")
    # --data_dir pointing to a file.
    blocker = tmp_path / "data.txt"
    blocker.write_text("x")
    code = main(["train", "--workdir", str(tmp_path / "s"), "--data_dir", str(blocker)])
    _refused(capsys, code, "is a file, not a directory")
    # A prepared dataset whose files were truncated.
    damaged = tmp_path / "tfds"
    shutil.copytree(data_dir, damaged)
    for dirpath, _, files in os.walk(damaged):
        for name in files:
            if "digits-train.array_record" in name:
                path = os.path.join(dirpath, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    code = _cli(str(damaged), "train", "--workdir", str(tmp_path / "s"))
    _refused(capsys, code, "are damaged", "delete that directory")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_teacher_cache_is_one_line(data_dir, tmp_path, capsys, teacher_run, damage):
    cache = tmp_path / "cache"
    args = ["--workdir", str(cache), "--teacher", str(teacher_run)]
    assert _cli(data_dir, "cache-teacher", *args) == 0
    capsys.readouterr()
    records = cache / RECORDS_FILE
    blob = bytearray(records.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:
        for i in range(len(blob) // 3, len(blob) // 3 + 64):
            blob[i] ^= 0xFF
    records.write_bytes(bytes(blob))
    code = _cli(
        data_dir, "distill", "--workdir", str(tmp_path / "s"), "--teacher_cache", str(cache)
    )
    _refused(capsys, code, "teacher cache", "corrupt")
    assert not (tmp_path / "s").exists()


def test_a_method_that_cannot_run_on_the_models_fails_before_writing(
    data_dir, tmp_path, capsys, teacher_run
):
    losses = {"crd": {"weight": 1.0, "student_features": ["hidden1", "pre_logits"]}}
    code = _cli(
        data_dir,
        "distill",
        "--workdir",
        str(tmp_path / "s"),
        "--teacher",
        str(teacher_run),
        **{"distill.losses": losses},
    )
    _refused(capsys, code, "distill.losses (crd)", "exactly one student and one teacher feature")
    assert not (tmp_path / "s").exists()


def test_a_student_is_not_resumed_with_a_retrained_teacher(data_dir, tmp_path, capsys):
    teacher, student = tmp_path / "t", tmp_path / "s"
    assert _cli(data_dir, "train", "--workdir", str(teacher)) == 0
    distill = ["distill", "--workdir", str(student), "--teacher", str(teacher)]
    assert _cli(data_dir, *distill) == 0
    # The teacher is retrained in the same directory (another seed: other weights).
    assert _cli(data_dir, "train", "--workdir", str(teacher), "--overwrite", seed=1) == 0
    capsys.readouterr()
    before = _snapshot(student)
    _refused(capsys, _cli(data_dir, *distill), "changed since the run", "weights differ")
    assert _snapshot(student) == before
    assert _cli(data_dir, *distill, "--overwrite") == 0


def test_a_second_ctrl_c_is_one_line_and_exit_130(data_dir, tmp_path, capsys, monkeypatch):
    """The second SIGINT raises KeyboardInterrupt in the loop (train.hooks); the CLI turns
    it into one line instead of a traceback."""
    from distill_jax.train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    code = _cli(data_dir, "train", "--workdir", str(tmp_path / "w"))
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("distill-jax: interrupted")]


def test_evaluate_loads_only_known_datasets_from_a_foreign_workdir(
    data_dir, tmp_path, capsys, teacher_run
):
    """A crafted run directory cannot make `evaluate` load an unregistered TFDS dataset
    (whose metadata would name Python classes to import)."""
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(teacher_run, crafted)
    spec = json.loads((crafted / "config.json").read_text())
    spec["data"]["name"] = "tfds:my_plugin_dataset"
    (crafted / "config.json").write_text(json.dumps(spec))
    before = _snapshot(crafted)
    code = main(["evaluate", "--workdir", str(crafted), "--data_dir", data_dir])
    _refused(capsys, code, "neither embedded nor in the TFDS catalogue")
    assert _snapshot(crafted) == before


def test_a_full_disk_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    """Orbax reports a failed write several wrappers deep; the CLI says it in one line."""
    import errno

    from distill_jax.train.checkpointing import Checkpointer

    def full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "ckpt/ocdbt.process_0")
        except OSError as e:
            raise RuntimeError("async save failed: see the cause") from e

    monkeypatch.setattr(Checkpointer, "save", full)
    code = _cli(data_dir, "train", "--workdir", str(tmp_path / "w"))
    _refused(capsys, code, "no space left on device", "run the same command again")


def test_evaluate_never_writes_where_a_foreign_config_points(
    data_dir, tmp_path, capsys, teacher_run, monkeypatch
):
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(teacher_run, crafted)
    elsewhere = tmp_path / "elsewhere" / "tfds"
    spec = json.loads((crafted / "config.json").read_text())
    spec["data"]["data_dir"] = str(elsewhere)
    (crafted / "config.json").write_text(json.dumps(spec))
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # the user's default data dir
    assert main(["evaluate", "--workdir", str(crafted)]) == 0
    assert not (tmp_path / "elsewhere").exists()
    # The run's own data dir, where the dataset is prepared, is read as before.
    own = tmp_path / "own"
    shutil.copytree(teacher_run, own)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "unused"))
    assert main(["evaluate", "--workdir", str(own)]) == 0
    assert not (tmp_path / "unused").exists()
