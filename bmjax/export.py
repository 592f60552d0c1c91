"""python -m bmjax.export: a trained run as a file that runs without bmjax's model code.

    python -m bmjax.export --workdir=RUN --format=stablehlo --out=DIR   # jax.export; the batch dimension symbolic
    python -m bmjax.export --workdir=RUN --format=onnx --out=DIR        # jax2onnx; runs with onnxruntime
    python -m bmjax.export --workdir=RUN --format=tflite --out=DIR      # jax2tf + TensorFlow's converter; LiteRT

    model = bmjax.export.load(DIR)        # a callable on numpy batches: jax alone, onnxruntime or LiteRT
    logits = model(x)                     # x as the run's dataset gives it (images as uint8), batch first

Every format takes inputs as the run's dataset gives them (images as uint8 are scaled inside the program) and
returns what the model does in evaluation mode. DIR/export.json says what the program takes and returns, the
dataset's class names, and how far its outputs were from bmjax's on a batch of generated inputs.
"""

import contextlib
import io
import json
import logging as std_logging
import os
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from bmjax.errors import UsageError, exit_on_usage_error

FORMATS = ("stablehlo", "onnx", "tflite")
META_FILE = "export.json"
FILES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx", "tflite": "model.tflite"}
PARAMS_FILE = "params.npz"  # the StableHLO program's parameters, in its argument order
CHECK_BATCH = 8
INSTALL = "pip install -e '.[export]'"


def export(run, out_dir: str, format: str = "stablehlo", *, platforms: tuple[str, ...] = ("cpu",)) -> dict:
    """Writes `run` (a `bmjax.restore` result) to `out_dir` in `format`; returns export.json's contents, which
    include the largest difference from bmjax's own outputs on a generated batch."""
    if format not in FORMATS:
        raise UsageError(f"--format={format} is not one of: {', '.join(FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    inputs = run.io.inputs
    if format != "stablehlo" and not isinstance(inputs, jax.ShapeDtypeStruct):
        raise UsageError(f"--format={format} exports models of one input array; this model takes "
                         f"{sorted(inputs)}: use --format=stablehlo")
    writer = {"stablehlo": _write_stablehlo, "onnx": _write_onnx, "tflite": _write_tflite}[format]
    writer(run, os.path.join(out_dir, FILES[format]), out_dir=out_dir, platforms=platforms)

    batch = example_batch(inputs, CHECK_BATCH, vocab_size=run.io.vocab_size)
    expected = jax.tree.map(np.asarray, run(batch))
    meta = {"format": format, "file": FILES[format], "inputs": run.io.to_json()["inputs"],
            "outputs": jax.tree.map(lambda a: {"shape": list(a.shape[1:]), "dtype": a.dtype.name}, expected),
            "vocab_size": run.io.vocab_size, "task": run.info.task if run.info else None,
            "classes": list(run.info.class_names) if run.info and run.info.class_names else None,
            "config_class": f"{type(run.config).__module__}:{type(run.config).__qualname__}",
            "step": run.step, "seed": run.seed, "platforms": list(platforms) if format == "stablehlo" else None}
    _write_json(out_dir, meta)
    actual = load(out_dir)(batch)
    gap = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)), initial=0.0))
              for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)))
    meta["check"] = {"examples": CHECK_BATCH, "max_abs_diff": gap}
    _write_json(out_dir, meta)
    return meta


def inference(run):
    """(variables, x) -> outputs: the model in evaluation mode on inputs as the dataset gives them."""
    from bmjax.data import preprocess

    return lambda variables, x: run.model.apply(variables, preprocess.to_float(x), train=False)


def example_batch(inputs, batch_size: int, vocab_size: Optional[int] = None, seed: int = 0):
    """Generated inputs of the model's shapes and dtypes: uint8 pixels, token ids below the vocabulary, floats."""
    rng = np.random.default_rng(seed)

    def draw(spec):
        shape, dtype = (batch_size, *spec.shape), np.dtype(spec.dtype)
        if dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        if np.issubdtype(dtype, np.integer):
            return rng.integers(0, vocab_size or 2, shape).astype(dtype)
        if dtype == np.bool_:
            return rng.random(shape) < 0.5
        return rng.standard_normal(shape).astype(dtype)

    return jax.tree.map(draw, inputs)


def _write_stablehlo(run, path, *, out_dir, platforms):
    leaves, treedef = jax.tree.flatten(run.variables)
    apply = inference(run)
    program = jax.jit(lambda leaves, x: apply(jax.tree.unflatten(treedef, leaves), x))
    (batch,) = jax.export.symbolic_shape("batch")
    x_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((batch, *s.shape), s.dtype), run.io.inputs)
    leaf_specs = [jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype) for leaf in leaves]
    try:
        exported = jax.export.export(program, platforms=platforms)(leaf_specs, x_spec)
    except ValueError as e:
        raise UsageError(f"--platforms={','.join(platforms)}: {e}") from None
    with open(path, "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(out_dir, PARAMS_FILE), *[np.asarray(leaf) for leaf in leaves])


def _write_onnx(run, path, **_):
    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise UsageError(f"--format=onnx needs jax2onnx and onnxruntime: {INSTALL}") from None
    apply, variables, spec = inference(run), run.variables, run.io.inputs
    for name in ("jax2onnx", "onnx_ir"):  # their notes on plugins for other libraries, on shapes left unnamed
        std_logging.getLogger(name).setLevel(std_logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its converters print what they found
        to_onnx(lambda x: apply(variables, x), [jax.ShapeDtypeStruct(("B", *spec.shape), spec.dtype)],
                model_name=type(run.model).__name__, return_mode="file", output_path=path,
                input_names=["x"], output_names=["outputs"])


def _write_tflite(run, path, **_):
    import tensorflow as tf
    from jax.experimental import jax2tf

    apply, variables, spec = inference(run), run.variables, run.io.inputs
    # jax2tf wraps the StableHLO program in one TensorFlow op, which TensorFlow's converter lowers to LiteRT's.
    program = tf.function(jax2tf.convert(lambda x: apply(variables, x), polymorphic_shapes=["(b, ...)"]),
                          autograph=False, input_signature=[tf.TensorSpec((None, *spec.shape), spec.dtype)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([program.get_concrete_function()], program)
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # the converter's errors are long MLIR dumps: the first line says which op failed
        raise UsageError(f"TensorFlow's LiteRT converter cannot convert {type(run.model).__name__}: "
                         f"{str(e).strip().splitlines()[0]}") from None
    with open(path, "wb") as f:
        f.write(flatbuffer)


def _write_json(out_dir, meta):
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


class Exported:
    """An exported model, loaded without bmjax's model code: `model(x)` -> numpy outputs for a batch `x`."""

    def __init__(self, directory: str):
        path = os.path.join(directory, META_FILE)
        if not os.path.exists(path):
            raise UsageError(f"{directory} holds no exported model ({META_FILE} is missing); write one with "
                             "python -m bmjax.export --workdir=RUN --out=DIR")
        with open(path) as f:
            self.meta = json.load(f)
        self.directory, self.format = directory, self.meta["format"]
        self.inputs = self.meta["inputs"]  # one example's {"shape", "dtype"}, or a dict of them
        opener = {"stablehlo": self._open_stablehlo, "onnx": self._open_onnx, "tflite": self._open_tflite}
        self._run = opener[self.format](os.path.join(directory, self.meta["file"]))

    def __call__(self, x) -> Any:
        is_spec = lambda s: isinstance(s, dict) and set(s) == {"shape", "dtype"}
        x = jax.tree.map(lambda s, a: np.asarray(a, s["dtype"]), self.inputs, x, is_leaf=is_spec)
        return self._run(x)

    def _open_stablehlo(self, path):
        with open(path, "rb") as f:
            program = jax.export.deserialize(bytearray(f.read()))
        with np.load(os.path.join(self.directory, PARAMS_FILE)) as saved:
            params = [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(saved.files))]
        call = jax.jit(program.call)
        return lambda x: jax.tree.map(np.asarray, call(params, x))

    def _open_onnx(self, path):
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(f"running an ONNX export needs onnxruntime: {INSTALL}") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: not its notes on shapes it merged
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})[0]

    def _open_tflite(self, path):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(f"running a LiteRT export needs ai-edge-litert: {INSTALL}") from None
        interpreter, lock = Interpreter(model_path=path), threading.Lock()
        (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()

        def run(x):
            with lock:  # one interpreter holds one batch's tensors at a time
                if tuple(source["shape"]) != x.shape:
                    interpreter.resize_tensor_input(source["index"], x.shape)
                    interpreter.allocate_tensors()
                    source.update(shape=np.array(x.shape))
                interpreter.set_tensor(source["index"], x)
                interpreter.invoke()
                return np.array(interpreter.get_tensor(sink["index"]))

        interpreter.allocate_tensors()
        return run


def load(directory: str) -> Exported:
    """The model `python -m bmjax.export` wrote to `directory`, as a callable on numpy batches."""
    return Exported(os.path.abspath(os.path.expanduser(directory)))


@exit_on_usage_error
def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; see --help")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required: the folder of a trained run")
    from bmjax.runs import restore

    run = restore(_WORKDIR.value, step=_STEP.value, seed=_SEED.value)
    out = _OUT.value or os.path.join(_WORKDIR.value, "export", _FORMAT.value)
    meta = export(run, out, _FORMAT.value, platforms=tuple(_PLATFORMS.value))
    print(f"wrote {os.path.join(out, meta['file'])} ({meta['format']}, step {meta['step']}); largest difference "
          f"from bmjax's outputs on {CHECK_BATCH} generated examples: {meta['check']['max_abs_diff']:.2e}")


if __name__ == "__main__":
    # Defined only when run as a program: a process that imports bmjax.export keeps its own --workdir and --seed.
    _WORKDIR = flags.DEFINE_string("workdir", None, "The run to export (its newest checkpoint).")
    _FORMAT = flags.DEFINE_enum("format", "stablehlo", FORMATS, "stablehlo: jax.export's serialised program and "
                                "its parameters; onnx: jax2onnx; tflite: LiteRT, through jax2tf and TensorFlow's "
                                "converter.")
    _OUT = flags.DEFINE_string("out", None, "Folder to write the exported model to (default: RUN/export/FORMAT).")
    _STEP = flags.DEFINE_integer("step", None, "Export this checkpoint step instead of the newest.")
    _SEED = flags.DEFINE_integer("seed", None, "For a many-seed run: the seed whose parameters to export.")
    _PLATFORMS = flags.DEFINE_list("platforms", ["cpu"], "StableHLO: the platforms the program is lowered for "
                                   "(cpu, cuda, rocm, tpu); it runs on any of them.")
    app.run(main)
