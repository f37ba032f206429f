"""notebooks/quickstart.ipynb executes from top to bottom."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # the kernel inherits the environment
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "quickstart"))
    path = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "student_kd" in outputs and "test acc=" in outputs
    assert any(
        "image/png" in o.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert os.path.exists(tmp_path / "quickstart" / "report.json")
