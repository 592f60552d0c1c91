"""Seed MLP and CNN on MNIST: bmjax beside the same models written as a Keras user writes them.

    python -m benchmarks.seed_models --data_dir=DIR [--manual_dir=RAW_MNIST]

Each framework trains in its own process (Keras's backend is fixed at import) on
the same data: MNIST as bmjax loads it, 20% (MLP) or 10% (CNN) held out for
validation as `validation_split` does in Keras, evaluated each epoch. Prints
seconds per epoch, test accuracy and the ratios; writes benchmarks/results.json.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("bmjax", "keras_tensorflow", "keras_jax")
SETUPS = {  # model: (experiment, epochs, batch size, validation split)
    "mlp": ("mnist_mlp", 10, 64, 0.2),
    "cnn": ("mnist_cnn", 5, 32, 0.1),
}

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory holding (or receiving) mnist.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw MNIST files, to prepare mnist offline first.")
_MODELS = flags.DEFINE_list("models", list(SETUPS), "Which seed models to run.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Which frameworks to run.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results.json"), "Where to write the figures.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one Keras framework:model in this process.")


def run_bmjax(model: str, workdir: Path) -> dict:
    experiment, epochs, batch_size, split = SETUPS[model]
    args = [sys.executable, "-m", f"experiments.{experiment}", f"--workdir={workdir}", "--dataset=mnist",
            f"--epochs={epochs}", f"--batch_size={batch_size}", f"--validation_split={split}",
            "--log_every_steps=1000000"]
    if _DATA_DIR.value:
        args.append(f"--data_dir={_DATA_DIR.value}")
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    result = json.loads((workdir / "result.json").read_text())
    return {"epoch_seconds": result["epoch_seconds"], "test_accuracy": result["test"]["accuracy"]}


def keras_worker(framework: str, model_name: str) -> dict:
    """Runs inside a process whose KERAS_BACKEND is already set."""
    import keras
    from bmjax import data

    _, epochs, batch_size, split = SETUPS[model_name]
    mnist = data.load("mnist", data_dir=_DATA_DIR.value)
    x_train, y_train = mnist.train.x.astype("float32") / 255, mnist.train.y
    x_test, y_test = mnist.test.x.astype("float32") / 255, mnist.test.y
    if model_name == "mlp":
        layers = [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                  keras.layers.Dense(10)]
    else:
        layers = [keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                  keras.layers.MaxPooling2D(2), keras.layers.Conv2D(64, 3, activation="relu"),
                  keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seconds = []
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=split,
              callbacks=[EpochTimer()], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
    return {"epoch_seconds": seconds, "test_accuracy": float(accuracy), "keras": keras.__version__}


def run_keras(framework: str, model: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=framework.removeprefix("keras_"), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "benchmarks.seed_models", f"--worker={framework}:{model}",
                          *([f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else [])],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    if _WORKER.value:
        framework, model = _WORKER.value.split(":")
        print(json.dumps(keras_worker(framework, model)))
        return
    if _MANUAL_DIR.value:
        from bmjax import data
        data.prepare("mnist", data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)

    import tempfile
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in _MODELS.value:
            for framework in _FRAMEWORKS.value:
                print(f"training the seed {model} with {framework} ...", flush=True)
                figures[f"{model}/{framework}"] = (run_bmjax(model, Path(tmp) / model) if framework == "bmjax"
                                                   else run_keras(framework, model))

    print(f"\n{'model':5} {'framework':17} {'s/epoch':>8} {'s/epoch*':>9} {'test acc':>9} {'bmjax faster':>13}")
    for model in _MODELS.value:
        ours = figures.get(f"{model}/bmjax")
        for framework in _FRAMEWORKS.value:
            f = figures[f"{model}/{framework}"]
            f["mean_epoch_seconds"] = statistics.mean(f["epoch_seconds"])
            f["steady_epoch_seconds"] = statistics.median(f["epoch_seconds"][1:] or f["epoch_seconds"])
            ratio = f"{f['mean_epoch_seconds'] / statistics.mean(ours['epoch_seconds']):.2f}x" if ours else "-"
            print(f"{model:5} {framework:17} {f['mean_epoch_seconds']:8.3f} {f['steady_epoch_seconds']:9.3f} "
                  f"{f['test_accuracy']:9.4f} {ratio:>13}")
    print("s/epoch: mean over all epochs, compilation included; s/epoch*: median of epochs after the first.")
    Path(_OUT.value).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
