"""The one report writer (report.py): the common meta block and atomic writes."""

import ast
import inspect
import json
import os
import platform
import time

import jax
import pytest

from distill_jax import pipeline, report, sweep
from distill_jax.compress import chain

COMMON_META = ["dataset", "test_examples", "wall_time_s", "device", "jax_version"]


def assert_common_meta(meta: dict) -> None:
    """An orchestrator's `meta` opens with `report.run_meta`'s block (used by the end-to-end
    tests of run, sweep and compress)."""
    assert list(meta)[: len(COMMON_META)] == COMMON_META
    assert meta["device"] == report.device_description()
    assert meta["jax_version"] == jax.__version__
    assert isinstance(meta["dataset"], str) and meta["dataset"]
    assert isinstance(meta["test_examples"], int) and meta["test_examples"] > 0
    assert meta["wall_time_s"] > 0


def test_run_meta_is_the_common_block_then_the_orchestrators_own():
    meta = report.run_meta("digits", time.time() - 5.0, test_examples=360, seeds=2, x={"a": 1})
    assert list(meta) == [*COMMON_META, "seeds", "x"]
    assert meta["dataset"] == "digits" and meta["test_examples"] == 360
    assert 5.0 <= meta["wall_time_s"] < 60.0
    assert meta["jax_version"] == jax.__version__
    kind = jax.devices()[0].device_kind
    assert meta["device"] == f"{jax.device_count()} x {kind} ({platform.machine()})"
    assert meta["device"] == report.device_description()
    line = report.describe_meta(meta)
    assert line.startswith(f"digits, 360 test examples; {meta['device']}, jax ")


@pytest.mark.parametrize("module", [pipeline, sweep, chain], ids=lambda m: m.__name__)
def test_orchestrators_write_only_through_report(module):
    """No orchestrator opens a file for writing, dumps JSON to a file, renames files or
    builds its own device string: report.py does all of it, one way."""
    source = inspect.getsource(module)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = getattr(node.func.value, "id", "")
            call = f"{owner}.{node.func.attr}"
            assert call not in ("json.dump", "os.replace", "os.rename"), ast.unparse(node)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
            modes = node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
            read_only = all(isinstance(m, ast.Constant) and "r" in m.value for m in modes)
            assert read_only, ast.unparse(node)
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("device_kind", "processor"), ast.unparse(node)
    assert "run_meta(" in source


def _plot(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\x89PNG new")


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_write_outputs_writes_json_markdown_and_the_plot(tmp_path):
    workdir = tmp_path / "new"  # created by the writer
    paths = report.write_outputs(str(workdir), "sweep", {"rows": [1]}, "| a |\n", plot=_plot)
    assert paths == {k: str(workdir / f"sweep.{k}") for k in ("json", "md", "png")}
    assert json.loads((workdir / "sweep.json").read_text()) == {"rows": [1]}
    assert (workdir / "sweep.md").read_text() == "| a |\n"
    assert (workdir / "sweep.png").read_bytes() == b"\x89PNG new"
    paths = report.write_outputs(str(workdir), "x", {}, "", plot=_plot, plot_file="curves.png")
    assert paths["png"] == str(workdir / "curves.png")
    written = {"sweep.json", "sweep.md", "sweep.png", "x.json", "x.md", "curves.png"}
    assert set(_files(workdir)) == written


def _fail_midway(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"half a fig")
    raise RuntimeError("plot failed")


@pytest.mark.parametrize("failure", ["plot", "json", "markdown"])
def test_a_failing_writer_leaves_the_previous_outputs_and_no_temporary_file(
    tmp_path, monkeypatch, failure
):
    report.write_outputs(str(tmp_path), "compression", {"v": 1}, "old\n", plot=_plot)
    before = _files(tmp_path)
    plot = _plot
    if failure == "plot":
        plot = _fail_midway
    elif failure == "json":

        def dumps(*args, **kwargs):
            raise TypeError("not JSON")

        monkeypatch.setattr(report.json, "dumps", dumps)
    markdown = object() if failure == "markdown" else "new\n"  # f.write(object()) raises
    with pytest.raises((RuntimeError, TypeError)):
        report.write_outputs(str(tmp_path), "compression", {"v": 2}, markdown, plot=plot)
    assert _files(tmp_path) == before  # every file as it was, no *.tmp* beside them


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "config.json"
    report.atomic_write(str(path), "old")
    with pytest.raises(RuntimeError):
        report.atomic_write_with(str(path), _fail_midway)
    assert _files(tmp_path) == {"config.json": b"old"}
    report.atomic_write_with(str(tmp_path / "fig.png"), _plot)  # temp file keeps the suffix
    report.atomic_write(str(path), "new")
    assert _files(tmp_path) == {"config.json": b"new", "fig.png": b"\x89PNG new"}


def test_plot_writers_get_a_temporary_path_with_the_target_suffix(tmp_path):
    seen = []
    report.atomic_write_with(
        str(tmp_path / "learning_curves.png"), lambda p: (seen.append(p), _plot(p))
    )
    assert seen == [str(tmp_path / "learning_curves.tmp.png")]
    assert os.listdir(tmp_path) == ["learning_curves.png"]
