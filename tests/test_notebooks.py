"""The Colab notebooks execute on CPU, offline (the quickstart on scikit-learn's digits instead of MNIST)."""

import json
import sys

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient


def execute(name: str) -> tuple[str, list]:
    """Runs colab/NAME.ipynb from the repository root: (its code cells' text output, their images)."""
    notebook = nbformat.read(ROOT / "colab" / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    return "".join(o.get("text", "") for o in outputs), [o for o in outputs if "image/png" in o.get("data", {})]


def test_quickstart_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("BMJAX_QUICKSTART_DATASET", "digits")
    monkeypatch.setenv("BMJAX_QUICKSTART_EPOCHS", "3")
    monkeypatch.setenv("BMJAX_QUICKSTART_WORKDIR", str(tmp_path))
    outputs, images = execute("quickstart")
    assert "8 CPU device(s)" in outputs, "pmap ran over every simulated device"
    assert outputs.count("precision    recall  f1-score   support") == 2
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
    outputs, images = execute("gpt")
    assert "'num_layers': 4" in outputs and "'block_size': 64" in outputs, "nanoGPT's CPU setup on a CPU"
    loss = float(outputs.split("validation loss ", 1)[1].split()[0])
    assert loss < 3.3, "60 steps learn the character frequencies at least"
    assert outputs.count("--- sample ") == 2 and "ROMEO:" in outputs
    assert "greedy:  JULIET:" in outputs and "top-p:   JULIET:" in outputs
    assert len(images) == 1


def install_cell():
    """The notebooks' first code cell, the same in each."""
    cells = {nbformat.read(ROOT / "colab" / name, as_version=4).cells[1].source
             for name in ("quickstart.ipynb", "gpt.ipynb", "rl.ipynb", "sequences.ipynb", "deploy.ipynb",
                          "generative.ipynb")}
    assert len(cells) == 1, "the notebooks install bmjax alike"
    return cells.pop()


@pytest.mark.parametrize("source, first_command", [
    ("https://example.org/bmjax.git", ["git", "clone", "--depth=1", "https://example.org/bmjax.git", "bmjax"]),
    ("LOCAL", None),
    ("ARCHIVE", None),
])
def test_the_install_cell_installs_from_where_bmjax_source_says(tmp_path, monkeypatch, source, first_command):
    """Where bmjax is not installed, the first cell installs it from BMJAX_SOURCE (its pip and git commands are
    recorded, not run), with JAX's build for the runtime; with no source it stops and says what to set."""
    import importlib.util
    import shutil
    import subprocess

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: commands.append(command))
    for var in ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("BMJAX_SOURCE", raising=False)
    with pytest.raises(SystemExit, match="set BMJAX_SOURCE to its git URL, a folder holding it"):
        exec(install_cell(), {})

    if source == "LOCAL":
        source = str(ROOT)
    elif source == "ARCHIVE":
        (tmp_path / "src" / "bmjax-main").mkdir(parents=True)
        (tmp_path / "src" / "bmjax-main" / "pyproject.toml").write_text("[project]\nname = 'bmjax'\n")
        source = shutil.make_archive(str(tmp_path / "upload"), "zip", tmp_path / "src")
    monkeypatch.setenv("BMJAX_SOURCE", source)
    namespace = {}
    exec(install_cell(), namespace)
    installed = {"LOCAL": str(ROOT), "ARCHIVE": str(tmp_path / "bmjax_source" / "bmjax-main")}
    folder = str(tmp_path / "bmjax") if first_command else installed["ARCHIVE" if source.endswith(".zip") else "LOCAL"]
    if first_command:
        assert commands[0] == first_command
    assert commands[-1][-4:] == ["install", "-q", "-e", f"{folder}[cuda12]"], "JAX's GPU build on a GPU runtime"
    assert sys.path[0] == folder
    sys.path.remove(folder)


def test_vision_notebook_executes(tmp_path, monkeypatch):
    """The vision notebook on the digits: a ResNet-20 trained, its augmented samples, curves and confusion matrix,
    then a random (but zoo-shaped) Hugging Face ResNet-18 converted and fine-tuned from a local folder."""
    pytest.importorskip("torch", reason="the notebook's Hugging Face ResNet is made with torch: pip install torch")
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")
    hf_folder = tmp_path / "hf_resnet18"
    config = transformers.ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], embedding_size=64,
                                       layer_type="basic", num_labels=10)
    transformers.ResNetForImageClassification(config).save_pretrained(hf_folder)
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device: ResNet-18 compiles faster than on 8 simulated
    monkeypatch.setenv("BMJAX_VISION_DATASET", "digits")
    monkeypatch.setenv("BMJAX_VISION_STEPS", "20")
    monkeypatch.setenv("BMJAX_VISION_FINETUNE_STEPS", "10")
    monkeypatch.setenv("BMJAX_VISION_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BMJAX_VISION_HF_RESNET", str(hf_folder))
    outputs, images = execute("vision")
    with open(tmp_path / "runs" / "resnet20" / "result.json") as f:
        result = json.load(f)
    assert result["steps"] == 20 and 0 <= result["test"]["accuracy"] <= 1
    assert f"test accuracy {result['test']['accuracy']:.4f} after 20 steps" in outputs
    assert "--model=resnet18" in outputs, "a zoo-shaped Hugging Face ResNet-18 converts to the zoo's resnet18"
    restored = outputs.split("restored ", 1)[1].split("\n", 1)[0]
    assert restored.startswith("99 of 102 arrays"), restored
    assert "params/stem_conv/kernel" in restored and "params/head/kernel" in restored, "--reinit started them afresh"
    accuracy = float(outputs.split("fine-tuned resnet18 test accuracy ", 1)[1].split()[0])
    with open(tmp_path / "runs" / "finetune" / "result.json") as f:
        assert json.load(f)["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert len(images) == 3, "the augmented samples, the curves and the confusion matrix"


def test_rl_notebook_executes(tmp_path, monkeypatch):
    """PPO on CartPole for 4 seeds in one program, its return curves with their spread, the policy played."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("BMJAX_RL_SEEDS", "4")
    monkeypatch.setenv("BMJAX_RL_ENV_STEPS", "30720")
    monkeypatch.setenv("BMJAX_RL_WORKDIR", str(tmp_path))
    outputs, images = execute("rl")
    with open(tmp_path / "result.json") as f:
        result = json.load(f)
    assert result["seeds"] == [0, 1, 2, 3] and len(result["evaluation"]["seeds"]) == 4
    last100 = float(outputs.split("last-100 return ", 1)[1].split()[0])
    assert last100 == pytest.approx(result["evaluation"]["return_last100"], abs=0.05) and last100 > 60
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["episodes"] == 8 and len(report["seeds"]) == 4
    steps = int(outputs.split("one greedy episode of seed 0: ", 1)[1].split()[0])
    assert 1 <= steps <= 500
    assert len(images) == 2, "the return curves and the played episode"


def test_sequences_notebook_executes(tmp_path, monkeypatch):
    """MNIST-1D's three models in order and shuffled, a spoken-digit classifier and a WaveNet sample played, at a
    few steps, on FSDD's genuine recordings."""
    from conftest import SHARED_DATA

    fsdd = SHARED_DATA / "fsdd"
    if not fsdd.is_dir():
        pytest.skip(f"the genuine FSDD recordings are not in {fsdd}")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as the notebook's runs use
    monkeypatch.setenv("BMJAX_SEQ_WORKDIR", str(tmp_path))
    monkeypatch.setenv("BMJAX_FSDD_DIR", str(fsdd))
    monkeypatch.setenv("BMJAX_SEQ_MNIST1D_STEPS", "100")
    monkeypatch.setenv("BMJAX_SEQ_CLASSIFIER_STEPS", "4")
    monkeypatch.setenv("BMJAX_SEQ_SAMPLE_SECONDS", "0.1")
    monkeypatch.setenv("BMJAX_SEQ_WAVENET_STEPS", "2")
    outputs, images = execute("sequences")
    for name in ("mlp", "cnn", "gru"):
        for dataset in ("mnist1d", "mnist1d_shuffled"):
            assert f"{name} on {dataset}: test accuracy" in outputs
    gru = float(outputs.split("gru on mnist1d: test accuracy ", 1)[1].split()[0])
    assert gru > 0.3, "100 steps of the GRU learn more than chance"
    assert "precision    recall  f1-score   support" in outputs and "bits per test sample" in outputs
    assert "the classifier hears: [" in outputs
    assert len(images) == 2 and (tmp_path / "wavenet" / "samples" / "samples.json").exists()


def test_deploy_notebook_executes(tmp_path, monkeypatch):
    """The seed CNN trained a few steps on the 8x8 digits, exported to StableHLO and ONNX and run from both,
    quantised, pruned, compared, and explained by integrated gradients."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as the notebook's runs use
    monkeypatch.setenv("BMJAX_DEPLOY_WORKDIR", str(tmp_path))
    monkeypatch.setenv("BMJAX_DEPLOY_DATASET", "digits")
    monkeypatch.setenv("BMJAX_DEPLOY_STEPS", "60")
    outputs, images = execute("deploy")
    for format in ("stablehlo", "onnx"):
        gap = float(outputs.split(f"{format}: model.", 1)[1].split("bmjax on ", 1)[1].split()[3].rstrip(","))
        assert gap <= 1e-5
    assert "int8" in outputs and "sparsity reached 0.9" in outputs and "90% pruned" in outputs
    assert len(images) == 1


def test_generative_notebook_executes(tmp_path, monkeypatch):
    """A conditional DCGAN and the text-to-image model a few steps on the 8x8 digits: their samples, drawings, and
    captions of one's own drawn (a held-out pair among them) or refused."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as the notebook's runs use
    monkeypatch.setenv("BMJAX_GENERATIVE_WORKDIR", str(tmp_path))
    monkeypatch.setenv("BMJAX_GENERATIVE_DATASET", "digits")
    monkeypatch.setenv("BMJAX_GENERATIVE_STEPS", "40")
    outputs, images = execute("generative")
    gan = json.loads((tmp_path / "dcgan" / "result.json").read_text())
    assert f"{gan['test']['conditioned_accuracy']:.1%} of the test split's samples" in outputs
    t2i = json.loads((tmp_path / "t2i" / "result.json").read_text())
    assert f"{t2i['test']['pair_accuracy_held_out']:.1%} for pairs held out" in outputs and t2i["steps"] == 40
    assert outputs.count("the classifier reads") == 1 + 4, "the GAN's report, then four captions drawn"
    assert "error: unknown word 'above'; the captions use:" in outputs
    assert len(images) == 2 + 1 + 4, "samples and interpolation, drawings, four captions"
