"""The Colab notebook executes on CPU (offline: scikit-learn's digits instead of MNIST)."""

import os

import nbformat
from conftest import ROOT
from nbclient import NotebookClient


def test_quickstart_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("BMJAX_QUICKSTART_DATASET", "digits")
    monkeypatch.setenv("BMJAX_QUICKSTART_EPOCHS", "3")
    monkeypatch.setenv("BMJAX_QUICKSTART_WORKDIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "colab" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "8 CPU device(s)" in outputs, "pmap ran over every simulated device"
    assert outputs.count("precision    recall  f1-score   support") == 2
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3, "two curve plots and the confusion matrix"
    accuracy = float(outputs.rsplit("CNN ", 1)[1].split()[0])
    assert accuracy > 0.8
    assert (tmp_path / "mlp" / "result.json").exists() and (tmp_path / "cnn" / "result.json").exists()
