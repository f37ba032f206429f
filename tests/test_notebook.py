"""Every notebook in notebooks/ executes from top to bottom, at toy scale."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name: str) -> tuple[str, bool]:
    """Runs notebooks/NAME; returns its text outputs and whether it drew a figure."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    text += "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    return text, any("image/png" in o.get("data", {}) for o in outputs)


def test_every_notebook_is_tested():
    names = sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    assert names == sorted(NOTEBOOKS)


def test_notebooks_are_stored_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


NOTEBOOKS = {
    "quickstart.ipynb": ("QUICKSTART_WORKDIR", ["student_kd", "test acc="], "report.json"),
    "bring_your_own.ipynb": (
        "BYO_WORKDIR",
        ["student_kd", "model.stablehlo", "predicted:"],
        "export/predict.py",
    ),
    "text_distillation.ipynb": (
        "TEXT_WORKDIR",
        ["TextCNN distilled, transfer set", "teacher: test accuracy"],
        "kd_aug/metrics.jsonl",
    ),
    "compression.ipynb": (
        "COMPRESS_WORKDIR",
        ["distilled, int8 QAT (KD)", "int8: True"],
        "export_int8/model.stablehlo",
    ),
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, data_dir, tmp_path, monkeypatch):
    env, expected, written = NOTEBOOKS[name]
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # the kernel inherits the environment
    monkeypatch.setenv(env, str(tmp_path / "nb"))
    text, figure = _execute(name)
    for fragment in expected:
        assert fragment in text, (name, fragment)
    assert figure
    assert os.path.exists(tmp_path / "nb" / written)
