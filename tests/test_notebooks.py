"""The Colab notebooks execute on CPU, offline (the quickstart on scikit-learn's digits instead of MNIST)."""

import json

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
    predicted, true = (json.loads(outputs.split(f"{name} ", 1)[1].split("\n", 1)[0]) for name in ("predicted", "true"))
    assert len(predicted) == len(true) == 12 and sum(p == t for p, t in zip(predicted, true)) >= 8, "restored CNN"


def test_gpt_notebook_executes(shakespeare_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BMJAX_GPT_DATA_DIR", shakespeare_dir)
    monkeypatch.setenv("BMJAX_GPT_STEPS", "60")
    monkeypatch.setenv("BMJAX_GPT_WORKDIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "colab" / "gpt.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "'num_layers': 4" in outputs and "'block_size': 64" in outputs, "nanoGPT's CPU setup on a CPU"
    loss = float(outputs.split("validation loss ", 1)[1].split()[0])
    assert loss < 3.3, "60 steps learn the character frequencies at least"
    assert outputs.count("--- sample ") == 2 and "ROMEO:" in outputs
    assert "greedy:  JULIET:" in outputs and "top-p:   JULIET:" in outputs
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
