"""Int8 quantisation with qwix: training that sees int8 (--quantize=int8) and int8 after training.

Quantisation-aware training (`training_model`, the supervised program's model with --quantize=int8) wraps the model
in qwix's QT provider: every matmul, einsum and convolution computes on int8 fake-quantised weights (an absmax scale
per output channel) and activations (each example's own absmax scale, computed on the fly); gradients pass straight
through the rounding. Its parameters stay float32, so checkpoints, resume and every strategy work unchanged.

Post-training quantisation (`quantize`) turns a trained model into qwix's PTQ form: int8 weights with their float32
scales, and int8 activations with static scales (qwix's "quant_stats" collected by the model's QT form over
training batches, then `qwix.quantize_params`; attention's products of two activations stay float there), dynamic
scales, or float activations (weights only: matmuls and einsums, as qwix's PTQ convolution quantises its input
too). Embedding tables stay float throughout.

    python -m bmjax.quantize --workdir=RUN [--calibration_batches=16] [--weights_only] [--activation_scales=...]

evaluates the run as it trained and its int8 form on the run's test split (validation for a corpus without one)
with the run's own task metrics, and writes their accuracy (or loss), bytes and CPU time per batch to
RUN/quantization.json.
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from qwix._src.core import conv_general_qt

from bmjax.errors import UsageError

STATS = "quant_stats"  # qwix's collection of activation statistics
RESULT_FILE = "quantization.json"


# Embedding tables stay float (a name with "embed", as for pruning): a lookup multiplies nothing, and a table
# tied to the output head is read both ways.
EMBEDDINGS = ".*embed.*"


def _rules(provider, activations: str = "dynamic") -> list:
    """qwix's rules: embeddings untouched; every other op with int8 weights, and int8 activations with
    `activations` scales (static, dynamic) or float activations ("float": matmuls and einsums only, as qwix's PTQ
    convolution quantises its input too). Under static scales an einsum quantises only a weight operand: bmjax's
    einsums are attention's products of two activations, whose ranges follow each input (a static scale for the
    attention weights cost the character GPT 0.05 nats of loss; kept float, 0.007)."""
    rule = qwix.QtRule if provider is qwix.QtProvider else qwix.QuantizationRule
    rules = [rule(module_path=EMBEDDINGS)]
    if activations == "float":
        return rules + [rule(module_path=".*", op_names=("dot_general", "einsum"), weight_qtype=jnp.int8)]
    if activations == "static":
        rules.append(rule(module_path=".*", op_names=("einsum",), weight_qtype=jnp.int8))
    return rules + [rule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8,
                         act_static_scale=activations == "static")]


def qat_model(model: nn.Module, activations: str = "dynamic") -> nn.Module:
    """`model` with int8 fake quantisation of its weights and activations in the forward pass; with static
    activation scales it keeps their statistics in the "quant_stats" collection."""
    return qwix.quantize_model(model, qwix.QtProvider(_rules(qwix.QtProvider, activations)))


def training_model(config, model: nn.Module) -> nn.Module:
    """The model a run with --quantize trains (the supervised program's hook)."""
    if config.quantize != "int8":
        raise UsageError(f"--quantize={config.quantize} is not known; use none or int8")
    return qat_model(model)


@dataclasses.dataclass
class Quantized:
    """A model in qwix's PTQ form and its variables: int8 weights (`qwix.QArray`s) with their scales."""

    model: nn.Module
    params: Any
    model_state: dict  # batch statistics, as the float run had them
    _apply: Optional[Any] = dataclasses.field(default=None, repr=False)

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}

    def __call__(self, x):
        """The int8 model's outputs for a batch `x` as the run's dataset gives it, in evaluation mode (compiled)."""
        from bmjax.data import preprocess

        if self._apply is None:
            self._apply = jax.jit(lambda variables, x: self.model.apply(variables, x, train=False))
        return self._apply(self.variables, preprocess.to_float(x))


ACTIVATIONS = ("static", "dynamic", "float")


def quantize(model: nn.Module, params, model_state: dict, example_x, calibration=None, *,
             activations: str = "static") -> Quantized:
    """The float `model` (not its QAT form) with `params` quantised to int8 weights, and its activations to int8
    with static scales calibrated on the input batch `calibration` (activations="static"), with scales computed
    on the fly from each example (dynamic), or left in float32 (float)."""
    if activations not in ACTIVATIONS:
        raise UsageError(f"activations={activations!r} is not one of {', '.join(ACTIVATIONS)}")
    model_state = {k: v for k, v in model_state.items() if k != STATS}
    ptq = qwix.quantize_model(model, qwix.PtqProvider(_rules(qwix.PtqProvider, activations)))
    try:
        abstract = jax.eval_shape(lambda: ptq.init(jax.random.PRNGKey(0), example_x, train=False))["params"]
    except Exception as e:  # qwix meets an op it cannot take
        raise UsageError(f"qwix cannot quantise the model {type(model).__name__} "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    if not any(isinstance(leaf, qwix.QArray) for leaf in jax.tree.leaves(abstract, is_leaf=_is_qarray)):
        what = "matmul or einsum" if activations == "float" else "matmul, einsum or convolution"
        raise UsageError(f"the model {type(model).__name__} has no {what} for qwix to quantise")
    stats = {}
    if activations == "static":
        if calibration is None:
            raise UsageError("static activation scales need a calibration batch; pass --calibration_batches of 1 "
                             "or more, or choose dynamic or float activations")
        stats = calibrate(model, params, model_state, calibration)
    try:
        # compiled, with the statistics as constants (qwix checks their counts in Python)
        quantized = jax.jit(lambda params: qwix.quantize_params(params, abstract, stats))(nn.meta.unbox(params))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"qwix cannot quantise the parameters of {type(model).__name__} ({_first_line(e)})") from None
    return Quantized(ptq, quantized, model_state)


def calibrate(model: nn.Module, params, model_state: dict, x) -> dict:
    """qwix's activation statistics ("quant_stats": each op input's absmax, averaged over the examples) of the
    float `model`'s int8 QAT form over the input batch `x`."""
    qat = qat_model(model, "static")

    @jax.jit
    def statistics(variables, x):
        stats = qat.init(jax.random.PRNGKey(0), x, train=False)[STATS]  # zero counts: nothing recorded yet
        stats = jax.tree.map(jnp.zeros_like, stats)
        _, updated = qat.apply({**variables, STATS: stats}, x, train=False, mutable=[STATS])
        return updated[STATS]

    # qwix 0.1.8's QT convolution records its statistics inside its custom_vjp, which leaks a tracer under jit;
    # calibration takes no gradient, so it calls the convolution's forward pass itself.
    forward = lambda *args: conv_general_qt.conv_general_qt_fwd(*args)[0]
    try:
        with _replaced(conv_general_qt, "conv_general_qt", forward):
            return jax.device_get(statistics({"params": params, **model_state}, x))
    except Exception as e:
        raise UsageError(f"qwix cannot calibrate the model {type(model).__name__} "
                         f"({type(e).__name__}: {_first_line(e)})") from None


@contextlib.contextmanager
def _replaced(module, name: str, value):
    """`module.name` is `value` inside the block."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def model_bytes(tree) -> int:
    """Bytes of every array in `tree` (a QArray counts its int8 values and float32 scales)."""
    return int(sum(np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def int8_fraction(params) -> float:
    """The share of the parameters' values stored as int8."""
    leaves = jax.tree.leaves(params)
    total = sum(int(np.prod(x.shape)) for x in leaves)
    return sum(int(np.prod(x.shape)) for x in leaves if x.dtype == jnp.int8) / max(total, 1)


def seconds_per_batch(apply, variables, x, repeats: int = 5) -> float:
    """Median wall time of `repeats` compiled calls of `apply(variables, x)` on the CPU, after one to compile."""
    cpu = jax.devices("cpu")[0]
    variables, x = jax.device_put((variables, x), cpu)
    compiled = jax.jit(apply).lower(variables, x).compile()
    jax.block_until_ready(compiled(variables, x))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(compiled(variables, x))
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def evaluate_run(workdir: str, *, calibration_batches: int = 16, activations: Optional[str] = None,
                 split: Optional[str] = None, timing_repeats: int = 5, write: bool = True) -> dict:
    """The run in `workdir` as it trained (float32 weights; a QAT run fake-quantised) and quantised to int8, side
    by side on its `split` (default: test, or validation where it has none): the run's task metrics, bytes of
    weights and statistics, and CPU seconds per batch. `activations` (see `quantize`) defaults to the scales the
    run trained with: static for a float run (calibrated on its first `calibration_batches` training batches),
    dynamic for a QAT run. Written to WORKDIR/quantization.json (with `write`) and returned."""
    import bmjax
    from bmjax.data import preprocess
    from bmjax.train import feeds, strategy as strategy_lib
    from bmjax.train.program import Context
    from bmjax.train.state import TrainState
    from bmjax.train.supervised import Supervised

    restored = bmjax.restore(workdir)
    config = restored.config
    activations = activations or ("static" if config.quantize == "none" else "dynamic")
    plan = config.build_program(Context(os.path.abspath(workdir), None, 1, False))
    if not isinstance(plan.program, Supervised):
        raise UsageError(f"the run in {workdir} trains a {type(plan.program).__name__} program; int8 evaluation "
                         "takes supervised runs")
    dataset, program = plan.dataset, plan.program
    split = split or ("test" if dataset.test is not None else "validation")
    if split not in ("test", "validation"):
        raise UsageError(f"--split={split} is not one of test, validation")
    source = getattr(dataset, split)
    if source is None:
        raise UsageError(f"the run in {workdir} has no {split} split to evaluate on; choose another --split (or "
                         "train with --validation_split)")

    rows = lambda source, n: preprocess.to_float(source[np.arange(n) % len(source)]["x"])
    train_batch = min(config.batch_size, len(dataset.train))
    calibration = rows(dataset.train, train_batch * calibration_batches) \
        if calibration_batches and activations == "static" else None
    quantized = quantize(config.build_model(restored.io), restored.params, restored.model_state,
                         rows(dataset.train, 1), calibration, activations=activations)

    # The runner's own evaluation: the split's batches scanned on one device, the task's metric sums added up.
    strategy = strategy_lib.create("single")
    feed = feeds.create(config.replace(eval_batch_size=max(1, min(config.eval_batch_size, len(source)))),
                        dataset, program, strategy, (restored.seed,), None, [1])

    def evaluate(model, variables):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], opt_state=None, rng=None,
                           apply_fn=model.apply, tx=None,
                           model_state={k: v for k, v in variables.items() if k != "params"})
        return program.summarize(feed.evaluate(strategy.place_state(state), split))

    timing_x = rows(source, min(config.batch_size, len(source)))
    forms = {"as_trained": (restored.model, restored.variables), "int8": (quantized.model, quantized.variables)}
    result = {"workdir": os.path.abspath(workdir), "split": split,
              "trained": "qat_int8" if config.quantize != "none" else "float32",
              "activations": activations + (f" scales from {calibration_batches} training batches of {train_batch}"
                                            if activations == "static" else ""),
              "timing_batch_size": int(timing_x.shape[0]), "timing_backend": "cpu"}
    for name, (model, variables) in forms.items():
        stored = {k: v for k, v in variables.items() if k != STATS}  # a QAT run's statistics are not needed after
        result[name] = {"metrics": evaluate(model, variables), "bytes": model_bytes(stored),
                        "seconds_per_batch": seconds_per_batch(
                            lambda v, x, model=model: model.apply(v, x, train=False), variables, timing_x,
                            timing_repeats)}
    result["int8"]["int8_fraction"] = int8_fraction(quantized.params)
    metrics = result["as_trained"]["metrics"]  # a language model's headline is its loss
    result["metric"] = "accuracy" if "accuracy" in metrics and "perplexity" not in metrics else "loss"
    if write:
        with open(os.path.join(workdir, RESULT_FILE), "w") as f:
            json.dump(result, f, indent=2)
    return result


def table(result: dict) -> str:
    """The result of `evaluate_run` as a small text table."""
    metric = result["metric"]
    lines = [f"{'model':8} {metric:>10} {'bytes':>12} {'ms/batch':>9}  ({result['split']} split, "
             f"batch {result['timing_batch_size']} on CPU)"]
    for name, label in (("as_trained", "float32" if result["trained"] == "float32" else "QAT"), ("int8", "int8")):
        row = result[name]
        lines.append(f"{label:8} {row['metrics'][metric]:10.4f} {row['bytes']:12,d} "
                     f"{1e3 * row['seconds_per_batch']:9.2f}")
    return "\n".join(lines)


def _is_qarray(x) -> bool:
    return isinstance(x, qwix.QArray)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv):
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # TFDS's notes on the folders it reads
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; usage: python -m bmjax.quantize --workdir=RUN")
    FLAGS = flags.FLAGS
    if not FLAGS.workdir:
        raise UsageError("pass --workdir, the folder of a trained run")
    if FLAGS.calibration_batches < 0:
        raise UsageError(f"--calibration_batches={FLAGS.calibration_batches} must be 0 or more")
    activations = "float" if FLAGS.weights_only else FLAGS.activation_scales
    result = evaluate_run(FLAGS.workdir, calibration_batches=FLAGS.calibration_batches, activations=activations,
                          split=FLAGS.split)
    print(table(result))
    print(f"wrote {os.path.join(FLAGS.workdir, RESULT_FILE)}")


if __name__ == "__main__":
    from absl import app, flags

    from bmjax.errors import exit_on_usage_error

    flags.DEFINE_string("workdir", None, "The trained run's folder.")
    flags.DEFINE_integer("calibration_batches", 16, "Training batches that calibrate the activations' static "
                                                    "scales.")
    flags.DEFINE_enum("split", None, ["test", "validation"], "The split to evaluate on (default: test, or "
                      "validation where the run has no test split).")
    flags.DEFINE_bool("weights_only", False, "Quantise the weights only (of matmuls and einsums); activations stay "
                                             "float32.")
    flags.DEFINE_enum("activation_scales", None, ["static", "dynamic"], "int8 activations' scales: static "
                      "(calibrated on training batches) or dynamic (each example's own absmax, at inference); "
                      "default: static for a float run, dynamic (as it trained) for a --quantize=int8 run.")
    app.run(exit_on_usage_error(main))
