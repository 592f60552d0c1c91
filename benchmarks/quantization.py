"""Float32 against int8 with qwix: the seed CNN on MNIST, ResNet-20 on Fashion-MNIST and the character GPT on Tiny
Shakespeare, each trained in float32 and quantised after training (PTQ), and trained quantisation-aware (QAT).

    python -m benchmarks.quantization --data_dir=DIR [--workdir=runs/quantization] [--models=cnn,resnet20,gpt]

DIR is a TFDS data directory with mnist, fashion_mnist and tiny_shakespeare prepared (`python -m bmjax.data
prepare NAME --manual_dir=RAW`). Each model is trained twice by its experiment, in --workdir/MODEL/{float32,qat}
(a rerun reports finished runs and resumes the others), with the flags below (short runs on 2 CPU cores; CIFAR-10,
ResNet-20's own dataset, cannot be read offline). Then `bmjax.quantize.evaluate_run` evaluates on each run's
test split (the GPT's validation split), with its task's metrics: the float run as trained, its int8 PTQ forms
with static scales (calibrated on 16 training batches) and dynamic ones, and the QAT run as trained
(fake-quantised) and converted to int8 with the dynamic scales it trained with. Prints the table and writes
benchmarks/quantization_results.json.
"""

import json
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "cnn": ("mnist_cnn", ["--epochs=2"]),
    "resnet20": ("image_classification", ["--preset=resnet20_fashion_mnist", "--train_steps=400", "--batch_size=64",
                  "--warmup_steps=40"]),
    "gpt": ("gpt_shakespeare_char", ["--preset=cpu"]),
}

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory with the three datasets prepared.")
_WORKDIR = flags.DEFINE_string("workdir", str(ROOT / "runs" / "quantization"), "Where the runs live.")
_MODELS = flags.DEFINE_list("models", list(MODELS), "Which models to run.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "quantization_results.json"), "Where to write them.")


def train(model: str, setting: str) -> Path:
    experiment, extra = MODELS[model]
    workdir = Path(_WORKDIR.value) / model / setting
    args = ["nice", "-n", "10", sys.executable, "-m", f"experiments.{experiment}", f"--workdir={workdir}", *extra,
            *(["--quantize=int8"] if setting == "qat" else []),
            *([f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else [])]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return workdir


def row(form: dict, metric: str) -> dict:
    return {metric: form["metrics"][metric], "bytes": form["bytes"], "ms_per_batch": 1e3 * form["seconds_per_batch"]}


def measure(model: str) -> dict:
    from bmjax import quantize

    float_run, qat_run = train(model, "float32"), train(model, "qat")
    split = "validation" if model == "gpt" else "test"  # the language model's figure is its validation loss
    static = quantize.evaluate_run(str(float_run), activations="static", split=split, write=False)
    dynamic = quantize.evaluate_run(str(float_run), activations="dynamic", split=split, write=False)
    qat = quantize.evaluate_run(str(qat_run), activations="dynamic", split=split)
    metric = static["metric"]
    trained = {name: json.loads((run / "result.json").read_text()) for name, run in
               (("float32", float_run), ("qat", qat_run))}
    return {"metric": metric, "split": static["split"], "timing_batch_size": static["timing_batch_size"],
            "rows": {"float32": row(static["as_trained"], metric), "ptq_int8_static": row(static["int8"], metric),
                     "ptq_int8_dynamic": row(dynamic["int8"], metric),
                     "qat_fake_quantised": row(qat["as_trained"], metric), "qat_int8": row(qat["int8"], metric)},
            "runs": {name: {"steps": r["steps"], "train_seconds": r["train_seconds"], "flags": MODELS[model][1]}
                     for name, r in trained.items()}}


def main(argv):
    del argv
    import benchmarks
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax's and TFDS's notes

    out = Path(_OUT.value)
    figures = json.loads(out.read_text()) if out.exists() else {"models": {}}  # a rerun adds to or replaces models
    figures["cpu"] = benchmarks.cpu_name()
    for model in _MODELS.value:
        figures["models"][model] = measure(model)
        out.write_text(json.dumps(figures, indent=2) + "\n")
    for model, result in figures["models"].items():
        metric = result["metric"]
        print(f"\n{model} ({result['split']} {metric}; CPU time per batch of {result['timing_batch_size']})")
        print(f"{'':20} {metric:>9} {'bytes':>11} {'ms/batch':>9}")
        for name, r in result["rows"].items():
            print(f"{name:20} {r[metric]:9.4f} {r['bytes']:11,d} {r['ms_per_batch']:9.2f}")
    print(f"\nwrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
