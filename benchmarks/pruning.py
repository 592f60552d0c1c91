"""Sparsity against accuracy: the seed MLP and CNN on MNIST, dense, magnitude-pruned while training, and 2:4.

    python -m benchmarks.pruning --data_dir=DIR [--manual_dir=RAW_MNIST] [--workdir=runs/pruning]

Each setting is one run of the seed experiment (`experiments.mnist_mlp`, `experiments.mnist_cnn`) with its own
defaults, plus --prune: magnitude pruning to each --sparsities value along the default schedule (10% to 75% of the
run) and --prune=2:4. Runs live in --workdir/MODEL/SETTING, so a rerun only reports the finished ones and resumes
the others. Prints a table, writes benchmarks/pruning_results.json and benchmarks/pruning.png (the test accuracy of
each setting against the sparsity its weight matrices reached, from each run's result.json).
"""

import json
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {"mlp": "mnist_mlp", "cnn": "mnist_cnn"}

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory holding (or receiving) mnist.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw MNIST files, to prepare mnist offline first.")
_WORKDIR = flags.DEFINE_string("workdir", str(ROOT / "runs" / "pruning"), "Where the runs live.")
_MODELS = flags.DEFINE_list("models", list(EXPERIMENTS), "Which seed models to run.")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.5", "0.75", "0.9", "0.95"], "Magnitude-pruning targets.")
_PATTERNS = flags.DEFINE_list("patterns", ["2:4"], "N:M patterns.")
_EPOCHS = flags.DEFINE_list("epochs", [], "MODEL:EPOCHS overrides of the seed experiments' epochs, e.g. cnn:3.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "pruning_results.json"), "Where to write the figures.")
_PLOT = flags.DEFINE_string("plot", str(ROOT / "benchmarks" / "pruning.png"), "Where to draw the curve.")


def settings() -> dict:
    """{name: extra flags}: dense first."""
    magnitude = {f"magnitude_{s}": ["--prune=magnitude", f"--prune_sparsity={s}"] for s in _SPARSITIES.value}
    return {"dense": [], **magnitude,
            **{p.replace(":", "of"): [f"--prune={p}"] for p in _PATTERNS.value}}


def train(model: str, name: str, extra: list) -> dict:
    workdir = Path(_WORKDIR.value) / model / name
    epochs = dict(e.split(":") for e in _EPOCHS.value)
    args = ["nice", "-n", "10", sys.executable, "-m", f"experiments.{EXPERIMENTS[model]}", f"--workdir={workdir}",
            "--dataset=mnist", "--log_every_steps=1000", *extra]
    args += [f"--epochs={epochs[model]}"] if model in epochs else []
    args += [f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else []
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result = json.loads((workdir / "result.json").read_text())
    return {"test_accuracy": result["test"]["accuracy"], "sparsity": result.get("sparsity", 0.0),
            "sparsity_per_layer": result.get("sparsity_per_layer", {}), "epochs": result["epochs"],
            "steps": result["steps"], "train_seconds": result["train_seconds"], "flags": extra}


def plot(figures: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 4), squeeze=False)
    for ax, (model, runs) in zip(axes[0], figures.items()):
        curve = sorted((r["sparsity"], r["test_accuracy"]) for n, r in runs.items() if not n[0].isdigit())
        ax.plot([100 * s for s, _ in curve], [100 * a for _, a in curve], "o-", label="magnitude (Zhu & Gupta)")
        for name, r in runs.items():
            if name[0].isdigit():
                ax.plot(100 * r["sparsity"], 100 * r["test_accuracy"], "s", label=name.replace("of", ":"))
        if "dense" in runs:
            ax.axhline(100 * runs["dense"]["test_accuracy"] - 1, color="grey", ls=":", label="dense - 1 point")
        ax.set(title=f"seed {model.upper()} on MNIST", xlabel="sparsity of the weight matrices (%)",
               ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    if _MANUAL_DIR.value:
        from bmjax import data

        data.prepare("mnist", data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
    previous = json.loads(Path(_OUT.value).read_text()) if Path(_OUT.value).exists() else {}
    figures = {}
    for model in _MODELS.value:
        figures[model] = {}
        for name, extra in settings().items():
            print(f"seed {model}, {name} ...", flush=True)
            figures[model][name] = train(model, name, extra)
        previous[model] = figures[model]
        Path(_OUT.value).write_text(json.dumps(previous, indent=2) + "\n")

    print(f"\n{'model':5} {'setting':15} {'epochs':>6} {'sparsity':>9} {'test acc':>9} {'vs dense':>9}")
    for model, runs in figures.items():
        dense = runs.get("dense", {}).get("test_accuracy")
        for name, r in runs.items():
            delta = f"{100 * (r['test_accuracy'] - dense):+.2f}" if dense is not None else "-"
            print(f"{model:5} {name:15} {r['epochs']:6} {r['sparsity']:9.4f} {r['test_accuracy']:9.4f} {delta:>9}")
    plot(previous, _PLOT.value)
    print(f"figures written to {_OUT.value}, curve to {_PLOT.value}")


if __name__ == "__main__":
    app.run(main)
